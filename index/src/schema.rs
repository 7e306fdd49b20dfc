//! The one schema of every shard index, and how an Elasticsearch field
//! name maps onto it.
//!
//! A record is one document:
//! - its own fields: `_topic` (exact, fast), `_tid` and `_pk` (the topic id
//!   and topic id + partition, exact: deletes and topic filters use them),
//!   `_partition` and `_offset` (u64, fast), `@timestamp` (date, fast,
//!   milliseconds), `_key` (text) and `_key_kw` (exact), `_headers` and
//!   `_headers_kw` (JSON objects of the headers whose values are UTF-8,
//!   text and exact);
//! - its value: a JSON object value goes into `_json` (text, every string
//!   analysed; numbers and booleans as such) and `_json_kw` (every string
//!   under 256 bytes as one exact term, and numbers, all as fast columns:
//!   Elasticsearch's `FIELD.keyword` and numeric fields). Any other UTF-8
//!   value is the object `{"message": value}`. Every string of the value
//!   and the key also goes into `_all` (the default field of
//!   `query_string` and `multi_match` without fields);
//! - stored for hits: `_source` (the value's bytes), `_key_b` (the key's
//!   bytes), `_headers`, and the record's own numeric fields.

use tantivy::schema::{
    DateOptions, DateTimePrecision, Field, IndexRecordOption, JsonObjectOptions, NumericOptions,
    Schema, TextFieldIndexing, FAST, INDEXED, STORED, STRING, TEXT,
};

pub const TOPIC: &str = "_topic";
pub const TOPIC_ID: &str = "_tid";
pub const PARTITION_KEY: &str = "_pk";
pub const PARTITION: &str = "_partition";
pub const OFFSET: &str = "_offset";
pub const TIMESTAMP: &str = "@timestamp";
pub const KEY: &str = "_key";
pub const KEY_KEYWORD: &str = "_key_kw";
pub const KEY_BYTES: &str = "_key_b";
pub const HEADERS: &str = "_headers";
pub const HEADERS_KEYWORD: &str = "_headers_kw";
pub const JSON: &str = "_json";
pub const JSON_KEYWORD: &str = "_json_kw";
pub const ALL: &str = "_all";
pub const SOURCE: &str = "_source";

/// Strings longer than this are not indexed as exact keywords
/// (Elasticsearch's dynamic mapping: `ignore_above: 256`).
pub const KEYWORD_BYTES_MAX: usize = 256;

/// The tokenizer of the exact (keyword) fields.
pub const RAW: &str = "raw";

/// The fields of the schema, resolved once.
#[derive(Clone, Debug)]
pub struct Fields {
    pub schema: Schema,
    pub topic: Field,
    pub topic_id: Field,
    pub partition_key: Field,
    pub partition: Field,
    pub offset: Field,
    pub timestamp: Field,
    pub key: Field,
    pub key_keyword: Field,
    pub key_bytes: Field,
    pub headers: Field,
    pub headers_keyword: Field,
    pub json: Field,
    pub json_keyword: Field,
    pub all: Field,
    pub source: Field,
}

/// What an Elasticsearch field name designates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FieldRef {
    /// `@timestamp`: a date fast field (milliseconds).
    Timestamp(Field),
    /// `_offset` or `_partition`: a u64 fast field.
    Number(Field),
    /// An analysed text field (`_key`, `_all`, `message`-less text).
    Text(Field),
    /// An exact string field (`_key.keyword`, `_topic`, `_index`).
    Keyword(Field),
    /// A path of the record's value or headers. `text` is the analysed
    /// JSON field, `exact` the keyword-and-number JSON field (fast); both
    /// are addressed with `path`. A `.keyword` suffix gives `text: None`.
    Json {
        text: Option<Field>,
        exact: Field,
        path: String,
    },
}

impl Fields {
    pub fn new() -> Fields {
        let mut b = Schema::builder();
        let raw_exact = TextFieldIndexing::default()
            .set_tokenizer(RAW)
            .set_index_option(IndexRecordOption::Basic)
            .set_fieldnorms(false);
        let topic = b.add_text_field(TOPIC, STRING | FAST | STORED);
        let topic_id = b.add_text_field(TOPIC_ID, STRING);
        let partition_key = b.add_text_field(PARTITION_KEY, STRING);
        let partition = b.add_u64_field(
            PARTITION,
            NumericOptions::default() | INDEXED | FAST | STORED,
        );
        let offset = b.add_u64_field(OFFSET, NumericOptions::default() | INDEXED | FAST | STORED);
        let timestamp = b.add_date_field(
            TIMESTAMP,
            DateOptions::default()
                .set_indexed()
                .set_fast()
                .set_stored()
                .set_precision(DateTimePrecision::Milliseconds),
        );
        let key = b.add_text_field(KEY, TEXT);
        let key_keyword = b.add_text_field(KEY_KEYWORD, STRING | FAST);
        let key_bytes = b.add_bytes_field(KEY_BYTES, STORED);
        let headers = b.add_json_field(HEADERS, JsonObjectOptions::from(TEXT | STORED));
        let headers_keyword = b.add_json_field(
            HEADERS_KEYWORD,
            JsonObjectOptions::default()
                .set_indexing_options(raw_exact.clone())
                .set_fast(RAW),
        );
        let json = b.add_json_field(
            JSON,
            JsonObjectOptions::from(TEXT).set_expand_dots_enabled(),
        );
        let json_keyword = b.add_json_field(
            JSON_KEYWORD,
            JsonObjectOptions::default()
                .set_indexing_options(raw_exact)
                .set_fast(RAW)
                .set_expand_dots_enabled(),
        );
        let all = b.add_text_field(ALL, TEXT);
        let source = b.add_bytes_field(SOURCE, STORED);
        Fields {
            schema: b.build(),
            topic,
            topic_id,
            partition_key,
            partition,
            offset,
            timestamp,
            key,
            key_keyword,
            key_bytes,
            headers,
            headers_keyword,
            json,
            json_keyword,
            all,
            source,
        }
    }

    /// Maps an Elasticsearch field name onto the schema. Every name maps:
    /// an unknown path is a path of the record's value (it matches nothing
    /// until a record has it).
    pub fn resolve(&self, name: &str) -> FieldRef {
        match name {
            TIMESTAMP | "_timestamp" | "timestamp" => FieldRef::Timestamp(self.timestamp),
            OFFSET => FieldRef::Number(self.offset),
            PARTITION => FieldRef::Number(self.partition),
            KEY => FieldRef::Text(self.key),
            "_key.keyword" => FieldRef::Keyword(self.key_keyword),
            TOPIC | "_index" => FieldRef::Keyword(self.topic),
            "*" | ALL => FieldRef::Text(self.all),
            _ => {
                let (path, keyword) = match name.strip_suffix(".keyword") {
                    Some(p) => (p, true),
                    None => (name, false),
                };
                let (text, exact, path) = match path.strip_prefix("_headers.") {
                    Some(h) => (self.headers, self.headers_keyword, h),
                    None => (self.json, self.json_keyword, path),
                };
                FieldRef::Json {
                    text: (!keyword).then_some(text),
                    exact,
                    path: path.to_string(),
                }
            }
        }
    }

    /// The tantivy name of a fast column for an Elasticsearch field name
    /// (aggregations and sorts): `None` for analysed text, which has none.
    pub fn fast_column(&self, name: &str) -> Option<String> {
        match self.resolve(name) {
            FieldRef::Timestamp(_) => Some(TIMESTAMP.to_string()),
            FieldRef::Number(f) | FieldRef::Keyword(f) => {
                Some(self.schema.get_field_name(f).to_string())
            }
            FieldRef::Text(_) => None,
            FieldRef::Json { exact, path, .. } => {
                Some(format!("{}.{}", self.schema.get_field_name(exact), path))
            }
        }
    }
}

impl Default for Fields {
    fn default() -> Fields {
        Fields::new()
    }
}

/// The exact term of a topic id (`_tid`).
pub fn topic_id_term(id: &[u8; 16]) -> String {
    let mut s = String::with_capacity(32);
    for b in id {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// The exact term of a partition (`_pk`).
pub fn partition_term(id: &[u8; 16], partition: i32) -> String {
    format!("{}/{partition}", topic_id_term(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_onto_the_schema() {
        let f = Fields::new();
        assert_eq!(f.resolve("@timestamp"), FieldRef::Timestamp(f.timestamp));
        assert_eq!(f.resolve("_offset"), FieldRef::Number(f.offset));
        assert_eq!(f.resolve("_key.keyword"), FieldRef::Keyword(f.key_keyword));
        assert_eq!(
            f.resolve("user.keyword"),
            FieldRef::Json {
                text: None,
                exact: f.json_keyword,
                path: "user".into()
            }
        );
        assert_eq!(
            f.resolve("payload.id"),
            FieldRef::Json {
                text: Some(f.json),
                exact: f.json_keyword,
                path: "payload.id".into()
            }
        );
        assert_eq!(
            f.resolve("_headers.trace"),
            FieldRef::Json {
                text: Some(f.headers),
                exact: f.headers_keyword,
                path: "trace".into()
            }
        );
        assert_eq!(
            f.fast_column("user.keyword").as_deref(),
            Some("_json_kw.user")
        );
        assert_eq!(f.fast_column("user"), Some("_json_kw.user".to_string()));
        assert_eq!(f.fast_column("_key"), None);
        assert_eq!(
            partition_term(&[0xab; 16], 3),
            format!("{}/3", "ab".repeat(16))
        );
    }
}
