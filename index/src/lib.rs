//! Full-text search over a shard's records, on Tantivy. Knows nothing of
//! the Kafka wire protocol: records arrive as `RecordRef`s decoded by the
//! caller's `Decoder`.
//!
//! - `schema`: the one schema of every shard index and how Elasticsearch
//!   field names map onto it;
//! - `doc`: a record as a document;
//! - `writer`: one shard's index, its helper thread and its commits;
//! - `query`: the Elasticsearch query DSL as Tantivy queries;
//! - `search`: a search over several shards' indexes, with Elasticsearch's
//!   request and response bodies and aggregations;
//! - `error`: the errors of a search, shaped like Elasticsearch's.

pub mod doc;
pub mod error;
pub mod query;
pub mod schema;
pub mod search;
pub mod writer;

pub use doc::{Origin, RecordRef};
pub use schema::{FieldRef, Fields};
pub use writer::{
    Decoder, IndexConfig, IndexError, IndexFigures, IndexStats, Op, Positions, ShardIndex, Shared,
};
