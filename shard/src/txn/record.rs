//! Transaction records in `__transaction_state`.
//!
//! Each state change of a transactional id is one record batch (magic 2,
//! uncompressed, one record) in the id's partition. The record's key is
//! `TXN_KEY_PREFIX` followed by the id (so compaction keeps the latest
//! state of each id); its value is the encoding below, or null (a
//! tombstone) once the id expired.
//!
//! ```text
//! u8  format version (= 1)
//! i64 producer id, i16 producer epoch, i32 timeout (ms), u8 state,
//! i64 transaction start (ms, -1), i64 last update (ms)
//! u32 count, then per partition: str topic, i32 partition
//!     (str = u16 big-endian length + UTF-8)
//! ```
//!
//! All integers are big-endian. Decoding checks every length.

use std::collections::BTreeSet;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::state::{TxnMeta, TxnState};

/// The key prefix of every transaction record.
pub const TXN_KEY_PREFIX: &[u8] = b"sluice.txn.v1:";
const FORMAT_VERSION: u8 = 1;
/// Fixed bytes of a value before its partitions.
const VALUE_FIXED_BYTES: usize = 1 + 8 + 2 + 4 + 1 + 8 + 8 + 4;

pub fn key(transactional_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(TXN_KEY_PREFIX.len() + transactional_id.len());
    k.extend_from_slice(TXN_KEY_PREFIX);
    k.extend_from_slice(transactional_id.as_bytes());
    k
}

/// The id of a record key, `None` for keys that are not transaction
/// records.
pub fn id_of(key: &[u8]) -> Option<&str> {
    key.strip_prefix(TXN_KEY_PREFIX)
        .and_then(|id| std::str::from_utf8(id).ok())
}

pub fn encode(m: &TxnMeta) -> Bytes {
    let parts: usize = m.partitions.iter().map(|(t, _)| t.len() + 6).sum();
    let mut b = BytesMut::with_capacity(VALUE_FIXED_BYTES + parts);
    b.put_u8(FORMAT_VERSION);
    b.put_i64(m.producer_id);
    b.put_i16(m.producer_epoch);
    b.put_i32(m.timeout_ms);
    b.put_u8(m.state.code());
    b.put_i64(m.start_ms);
    b.put_i64(m.update_ms);
    b.put_u32(m.partitions.len() as u32);
    for (topic, partition) in &m.partitions {
        let len = u16::try_from(topic.len()).expect("topic names are validated below 250 bytes");
        b.put_u16(len);
        b.put_slice(topic.as_bytes());
        b.put_i32(*partition);
    }
    b.freeze()
}

pub fn decode(value: &[u8]) -> Result<TxnMeta, String> {
    let mut r = value;
    if r.remaining() < VALUE_FIXED_BYTES {
        return Err(format!("transaction record of {} bytes", value.len()));
    }
    let version = r.get_u8();
    if version != FORMAT_VERSION {
        return Err(format!("unknown transaction record version {version}"));
    }
    let producer_id = r.get_i64();
    let producer_epoch = r.get_i16();
    let timeout_ms = r.get_i32();
    let code = r.get_u8();
    let state =
        TxnState::from_code(code).ok_or_else(|| format!("unknown transaction state {code}"))?;
    let start_ms = r.get_i64();
    let update_ms = r.get_i64();
    let count = r.get_u32() as usize;
    // Each partition takes at least 6 bytes: the count cannot outgrow them.
    if count.saturating_mul(6) > r.remaining() {
        return Err(format!(
            "transaction record count {count} exceeds its payload"
        ));
    }
    let mut partitions = BTreeSet::new();
    for _ in 0..count {
        if r.remaining() < 2 {
            return Err("transaction record truncated".into());
        }
        let len = usize::from(r.get_u16());
        if r.remaining() < len + 4 {
            return Err("transaction record truncated".into());
        }
        let topic = std::str::from_utf8(&r[..len])
            .map_err(|_| "transaction record topic is not UTF-8".to_string())?
            .to_string();
        r.advance(len);
        partitions.insert((topic, r.get_i32()));
    }
    Ok(TxnMeta {
        producer_id,
        producer_epoch,
        timeout_ms,
        state,
        partitions,
        start_ms,
        update_ms,
    })
}

/// The record batch of one state change (`None`: the id's tombstone).
pub fn encode_batch(transactional_id: &str, meta: Option<&TxnMeta>, now_ms: i64) -> Bytes {
    let value = meta.map(encode);
    crate::group::keyed_batch(&key(transactional_id), value.as_deref(), now_ms, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let mut m = super::super::state::fresh(42, 60_000, 123);
        m.state = TxnState::PrepareCommit;
        m.partitions.insert(("orders".into(), 3));
        m.partitions.insert(("__consumer_offsets".into(), 7));
        let v = encode(&m);
        assert_eq!(decode(&v), Ok(m));
        for cut in 0..v.len() {
            assert!(decode(&v[..cut]).is_err(), "cut at {cut}");
        }
        assert_eq!(id_of(&key("tx-1")), Some("tx-1"));
        assert_eq!(id_of(b"sluice.group.v1"), None);
    }
}
