//! DeleteRecords: advances a partition's log start offset, durably.
//!
//! The new log start is one small WAL entry of kind `KIND_LOG_START` (3):
//!
//! ```text
//! offset size field
//!      0    1 format version u8 (= 1)
//!      1   16 topic id [u8; 16]
//!     17    4 partition u32, big-endian
//!     21    8 log start offset i64, big-endian
//! ```
//!
//! The answer waits until the entry is durable; recovery replays it after
//! the batches it follows, so the log start survives a restart. Records
//! below the log start are no longer served (fetches below it get
//! OFFSET_OUT_OF_RANGE, ListOffsets EARLIEST answers it); the next
//! retention pass releases their index entries, and their WAL segments
//! once nothing live remains in them (`retention`). Retention moves log
//! starts with this same entry.

use std::rc::Rc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use futures::channel::oneshot;

use crate::engine::Engine;
use crate::entry::PartitionKey;
use crate::mesh::ShardMsg;
use crate::{DeleteRecordsPartition, DeleteRecordsResult, ShardError};

/// WAL entry kind of a partition's new log start offset.
pub const KIND_LOG_START: u8 = 3;
const LOG_START_ENTRY_BYTES: usize = 29;
const FORMAT_VERSION: u8 = 1;

pub fn encode(key: &PartitionKey, log_start_offset: i64) -> Bytes {
    let mut b = BytesMut::with_capacity(LOG_START_ENTRY_BYTES);
    b.put_u8(FORMAT_VERSION);
    b.put_slice(&key.topic_id);
    b.put_u32(key.partition);
    b.put_i64(log_start_offset);
    assert_eq!(b.len(), LOG_START_ENTRY_BYTES);
    b.freeze()
}

pub fn decode(payload: &[u8]) -> Result<(PartitionKey, i64), String> {
    if payload.len() != LOG_START_ENTRY_BYTES || payload[0] != FORMAT_VERSION {
        return Err(format!(
            "log start entry of {} bytes, version {:?}",
            payload.len(),
            payload.first()
        ));
    }
    let mut topic_id = [0u8; 16];
    topic_id.copy_from_slice(&payload[1..17]);
    let partition = u32::from_be_bytes([payload[17], payload[18], payload[19], payload[20]]);
    let mut offset = [0u8; 8];
    offset.copy_from_slice(&payload[21..29]);
    let key = PartitionKey {
        topic_id,
        partition,
    };
    Ok((key, i64::from_be_bytes(offset)))
}

impl Engine {
    pub async fn delete_records(
        self: &Rc<Self>,
        req: DeleteRecordsPartition,
    ) -> DeleteRecordsResult {
        let owner = match self.owner_of(&req.topic, req.partition) {
            Ok(o) => o,
            Err(e) => return Err(e),
        };
        let (tx, rx) = oneshot::channel();
        if owner == self.id() {
            self.delete_records_owner(req, tx);
            return rx.await.unwrap_or(Err(ShardError::ShuttingDown));
        }
        let deadline = Instant::now() + Duration::from_millis(self.cfg.remote_reply_timeout_ms);
        let msg = ShardMsg::DeleteRecords { req, reply: tx };
        self.call(owner, msg, rx, deadline).await.and_then(|r| r)
    }

    /// On the owning shard: checks the offset, logs the new log start and
    /// applies it once durable. -1 means the high watermark.
    pub fn delete_records_owner(
        self: &Rc<Self>,
        req: DeleteRecordsPartition,
        reply: oneshot::Sender<DeleteRecordsResult>,
    ) {
        let begun = self.begin_delete_records(&req);
        let (key, offset, append) = match begun {
            Ok(Some(x)) => x,
            Ok(None) | Err(_) => {
                let _ = reply.send(begun.map(|_| self.log_start_of(&req)).and_then(|r| r));
                return;
            }
        };
        let engine = self.clone();
        glommio::spawn_local(async move {
            let result = match append.await {
                Ok(_) => Ok(engine.apply_log_start(&key, offset)),
                Err(e) => Err(ShardError::Storage(e.to_string())),
            };
            let _ = reply.send(result);
        })
        .detach();
    }

    /// `None`: nothing to do (the log already starts at or after `offset`).
    fn begin_delete_records(
        &self,
        req: &DeleteRecordsPartition,
    ) -> Result<Option<(PartitionKey, i64, sluice_wal::Append)>, ShardError> {
        let key = Engine::key_of(&req.topic, req.partition)?;
        let parts = self.parts.borrow();
        let p = parts.get(&key).ok_or(ShardError::UnknownTopicOrPartition)?;
        if !p.is_leader {
            return Err(ShardError::NotLeader);
        }
        let offset = match req.offset {
            -1 => p.high_watermark,
            o if (0..=p.high_watermark).contains(&o) => o,
            _ => return Err(ShardError::OffsetOutOfRange),
        };
        if offset <= p.log_start_offset {
            return Ok(None);
        }
        drop(parts);
        let append = self.wal.append(KIND_LOG_START, encode(&key, offset));
        Ok(Some((key, offset, append)))
    }

    fn log_start_of(&self, req: &DeleteRecordsPartition) -> DeleteRecordsResult {
        let key = Engine::key_of(&req.topic, req.partition)?;
        let parts = self.parts.borrow();
        let p = parts.get(&key).ok_or(ShardError::UnknownTopicOrPartition)?;
        Ok(p.log_start_offset)
    }

    /// Recovery of a log start record. A record whose offset lies past every
    /// recovered entry of the partition was carried forward when the WAL
    /// segments holding those entries were removed (retention): the
    /// partition's offsets continue from it, they never go back.
    pub fn recover_log_start(&self, key: &PartitionKey, offset: i64) {
        {
            let mut parts = self.parts.borrow_mut();
            let Some(p) = parts.get_mut(key) else {
                return;
            };
            if offset > p.next_offset {
                p.next_offset = offset;
                p.high_watermark = offset;
                if let Some(r) = p.repl.as_deref_mut() {
                    r.durable_end = offset;
                }
            }
        }
        self.apply_log_start(key, offset);
    }

    /// Moves the log start forward (never back, never past the high
    /// watermark); returns the partition's log start. Also used by recovery.
    /// Aborted transactions whose marker is below it are forgotten; one
    /// that straddles it stays, so read_committed consumers starting there
    /// still filter its records.
    pub fn apply_log_start(&self, key: &PartitionKey, offset: i64) -> i64 {
        let mut parts = self.parts.borrow_mut();
        let Some(p) = parts.get_mut(key) else {
            return -1;
        };
        let before = p.log_start_offset;
        p.log_start_offset = p.log_start_offset.max(offset.min(p.high_watermark));
        assert!(p.log_start_offset <= p.high_watermark);
        let after = p.log_start_offset;
        let txn_bytes_before = p.txn_bytes();
        p.settle_txns();
        self.charge_txn_bytes(txn_bytes_before, p.txn_bytes());
        drop(parts);
        if after > before {
            self.search_log_start_moved(key);
        }
        after
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let key = PartitionKey {
            topic_id: [3; 16],
            partition: 9,
        };
        let b = encode(&key, 1234);
        assert_eq!(decode(&b), Ok((key, 1234)));
        assert!(decode(&b[..20]).is_err());
        let mut bad = b.to_vec();
        bad[0] = 7;
        assert!(decode(&bad).is_err());
    }
}
