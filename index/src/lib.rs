//! Full-text search over a shard's records, on Tantivy. Knows nothing of
//! the Kafka wire protocol: records arrive as `RecordRef`s decoded by the
//! caller's `Decoder`.
//!
//! - `schema`: the one schema of every shard index and how Elasticsearch
//!   field names map onto it;
//! - `doc`: a record as a document;
//! - `writer`: one shard's index, its helper thread and its commits.

pub mod doc;
pub mod schema;
pub mod writer;

pub use doc::{Origin, RecordRef};
pub use schema::{FieldRef, Fields};
pub use writer::{
    Decoder, IndexConfig, IndexError, IndexFigures, IndexStats, Op, Positions, ShardIndex, Shared,
};
