//! A record as a document of the schema (`schema.rs`).

use std::collections::BTreeMap;

use tantivy::schema::OwnedValue;
use tantivy::{DateTime, TantivyDocument};

use crate::schema::{Fields, KEYWORD_BYTES_MAX};

/// One record of a partition's log, borrowed from its (decompressed) batch.
#[derive(Clone, Copy, Debug)]
pub struct RecordRef<'a> {
    pub offset: i64,
    pub timestamp_ms: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// Header names and values, as many as the record has (`headers_at`).
    pub headers: &'a [(&'a [u8], Option<&'a [u8]>)],
}

/// Where a document comes from: the topic, its id and the partition.
#[derive(Clone, Debug)]
pub struct Origin {
    pub topic: String,
    pub topic_id: [u8; 16],
    pub partition: i32,
}

/// Builds the document of `record`.
pub fn document(f: &Fields, origin: &Origin, record: &RecordRef<'_>) -> TantivyDocument {
    let mut doc = TantivyDocument::default();
    doc.add_text(f.topic, &origin.topic);
    doc.add_text(f.topic_id, crate::schema::topic_id_term(&origin.topic_id));
    doc.add_text(
        f.partition_key,
        crate::schema::partition_term(&origin.topic_id, origin.partition),
    );
    doc.add_u64(f.partition, origin.partition.max(0) as u64);
    doc.add_u64(f.offset, record.offset.max(0) as u64);
    // Tantivy keeps nanoseconds in an i64: clamp what a producer may send.
    const MS_MAX: i64 = i64::MAX / 1_000_000;
    let ms = record.timestamp_ms.clamp(-MS_MAX, MS_MAX);
    doc.add_date(f.timestamp, DateTime::from_timestamp_millis(ms));
    if let Some(key) = record.key {
        doc.add_bytes(f.key_bytes, key);
        if let Ok(k) = std::str::from_utf8(key) {
            doc.add_text(f.key, k);
            doc.add_text(f.all, k);
            if k.len() <= KEYWORD_BYTES_MAX {
                doc.add_text(f.key_keyword, k);
            }
        }
    }
    if !record.headers.is_empty() {
        let mut text = BTreeMap::new();
        let mut exact = BTreeMap::new();
        for (name, value) in record.headers {
            let (Ok(name), Some(Ok(value))) =
                (std::str::from_utf8(name), value.map(std::str::from_utf8))
            else {
                continue;
            };
            text.insert(name.to_string(), OwnedValue::Str(value.to_string()));
            if value.len() <= KEYWORD_BYTES_MAX {
                exact.insert(name.to_string(), OwnedValue::Str(value.to_string()));
            }
        }
        if !text.is_empty() {
            doc.add_object(f.headers, text);
        }
        if !exact.is_empty() {
            doc.add_object(f.headers_keyword, exact);
        }
    }
    if let Some(value) = record.value {
        doc.add_bytes(f.source, value);
        if let Some(object) = value_object(value) {
            let mut all = String::new();
            collect_text(&object, &mut all);
            if !all.is_empty() {
                doc.add_text(f.all, &all);
            }
            let exact = keyword_copy(&object);
            if let OwnedValue::Object(fields) = object {
                doc.add_object(f.json, fields.into_iter().collect());
            }
            if let OwnedValue::Object(fields) = exact {
                doc.add_object(f.json_keyword, fields.into_iter().collect());
            }
        }
    }
    doc
}

/// The value as a JSON object: itself when it is one, `{"message": text}`
/// when it is other UTF-8, `None` otherwise.
fn value_object(value: &[u8]) -> Option<OwnedValue> {
    if value.first() == Some(&b'{') {
        if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(value) {
            return Some(OwnedValue::from(serde_json::Value::Object(map)));
        }
    }
    let text = std::str::from_utf8(value).ok()?;
    Some(OwnedValue::Object(vec![(
        "message".to_string(),
        OwnedValue::Str(text.to_string()),
    )]))
}

/// Appends every string of `v` to `out`, space separated.
fn collect_text(v: &OwnedValue, out: &mut String) {
    match v {
        OwnedValue::Str(s) => {
            if !out.is_empty() {
                out.push(' ');
            }
            out.push_str(s);
        }
        OwnedValue::Array(items) => items.iter().for_each(|i| collect_text(i, out)),
        OwnedValue::Object(fields) => fields.iter().for_each(|(_, v)| collect_text(v, out)),
        _ => {}
    }
}

/// `v` without the strings too long to be keywords.
fn keyword_copy(v: &OwnedValue) -> OwnedValue {
    match v {
        OwnedValue::Str(s) if s.len() > KEYWORD_BYTES_MAX => OwnedValue::Null,
        OwnedValue::Array(items) => OwnedValue::Array(items.iter().map(keyword_copy).collect()),
        OwnedValue::Object(fields) => OwnedValue::Object(
            fields
                .iter()
                .map(|(k, v)| (k.clone(), keyword_copy(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tantivy::schema::Value;

    #[test]
    fn a_json_value_is_the_document_and_text_is_a_message() {
        let f = Fields::new();
        let origin = Origin {
            topic: "logs".into(),
            topic_id: [1; 16],
            partition: 2,
        };
        let headers = [(&b"trace"[..], Some(&b"abc"[..]))];
        let r = RecordRef {
            offset: 7,
            timestamp_ms: 1_700_000_000_123,
            key: Some(b"k1"),
            value: Some(br#"{"user":"ann","n":3,"payload":{"id":"x"}}"#),
            headers: &headers,
        };
        let doc = document(&f, &origin, &r);
        assert_eq!(doc.get_first(f.offset).and_then(|v| v.as_u64()), Some(7));
        assert!(doc.get_first(f.json).is_some());
        assert!(doc.get_first(f.json_keyword).is_some());
        assert!(doc.get_first(f.headers).is_some());

        let plain = RecordRef {
            value: Some(b"hello world"),
            key: None,
            headers: &[],
            ..r
        };
        let doc = document(&f, &origin, &plain);
        assert!(doc.get_first(f.json).is_some());
        assert!(doc.get_first(f.key).is_none());

        // Past what nanoseconds in an i64 hold: clamped, not overflowed.
        let late = RecordRef {
            timestamp_ms: i64::MAX,
            ..plain
        };
        let doc = document(&f, &origin, &late);
        let ts = doc.get_first(f.timestamp).and_then(|v| v.as_datetime());
        assert!(ts.is_some_and(|t| t.into_timestamp_millis() > 9_000_000_000_000_000 / 1_000));

        let binary = RecordRef {
            value: Some(&[0xff, 0xfe]),
            ..plain
        };
        let doc = document(&f, &origin, &binary);
        assert!(doc.get_first(f.json).is_none());
        assert!(doc.get_first(f.source).is_some());
    }
}
