//! The broker's only door to the shard data plane (`sluice-shard`).
//!
//! Handlers use the names re-exported here, never the crate directly, so the
//! data plane can be swapped in one place. `shard_config` is the single spot
//! that turns node settings into a `ShardConfig`.

pub use stub::{
    new_mesh, FetchPartition, FetchPartitionResult, FetchRequest, ListOffsetsPartition, ProducePartition, Shard,
    ShardConfig, ShardError, ShardMesh,
};

use crate::config::Settings;

/// Builds the configuration of shard `shard_id` from the node settings.
pub fn shard_config(settings: &Settings, shard_id: u32) -> ShardConfig {
    let memory_bytes_max = settings.shard_memory_bytes();
    ShardConfig {
        shard_id,
        shards: settings.shards,
        data_dir: settings.data_dir.clone(),
        tail_cache_bytes_max: memory_bytes_max / 4,
        memory_bytes_max,
    }
}

/// Stand-in for `sluice-shard` until that crate lands: same API, in-memory
/// logs in one process-wide map. Not durable; replaced wholesale by the
/// real crate (this module then disappears).
#[allow(dead_code)]
mod stub {
    use std::collections::HashMap;
    use std::path::PathBuf;
    use std::rc::Rc;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

    use bytes::{Bytes, BytesMut};
    use sluice_raft::{Metadata, MetadataView, TopicMeta};

    pub struct ShardConfig {
        pub shard_id: u32,
        pub shards: u32,
        pub data_dir: PathBuf,
        pub tail_cache_bytes_max: u64,
        pub memory_bytes_max: u64,
    }

    #[derive(Clone)]
    pub struct ShardMesh;

    pub fn new_mesh(_shards: u32) -> ShardMesh {
        ShardMesh
    }

    #[derive(Debug, Clone, thiserror::Error)]
    pub enum ShardError {
        #[error("unknown topic or partition")]
        UnknownTopicOrPartition,
        #[error("corrupt message: {0}")]
        CorruptMessage(String),
        #[error("message too large: {size} > {max}")]
        MessageTooLarge { size: u64, max: u64 },
        #[error("invalid record: {0}")]
        InvalidRecord(String),
        #[error("offset out of range")]
        OffsetOutOfRange,
        #[error("not leader")]
        NotLeader,
        #[error("timeout")]
        Timeout,
        #[error("storage: {0}")]
        Storage(String),
        #[error("busy")]
        Busy,
        #[error("closed")]
        Closed,
    }

    pub struct ProducePartition {
        pub topic: Arc<TopicMeta>,
        pub partition: i32,
        pub records: Bytes,
        pub acks: i16,
    }
    pub struct ProducePartitionResult {
        pub error: Option<ShardError>,
        pub base_offset: i64,
        pub log_append_time_ms: i64,
        pub log_start_offset: i64,
    }
    pub struct FetchRequest {
        pub partitions: Vec<FetchPartition>,
        pub max_wait_ms: u32,
        pub min_bytes: u32,
        pub max_bytes: u32,
        pub isolation_level: i8,
    }
    pub struct FetchPartition {
        pub topic: Arc<TopicMeta>,
        pub partition: i32,
        pub fetch_offset: i64,
        pub partition_max_bytes: u32,
    }
    pub struct FetchPartitionResult {
        pub error: Option<ShardError>,
        pub high_watermark: i64,
        pub last_stable_offset: i64,
        pub log_start_offset: i64,
        pub records: Vec<Bytes>,
    }
    pub struct ListOffsetsPartition {
        pub topic: Arc<TopicMeta>,
        pub partition: i32,
        pub timestamp: i64,
    }
    pub struct ListOffsetsResult {
        pub error: Option<ShardError>,
        pub offset: i64,
        pub timestamp: i64,
    }

    const BATCH_BYTES_MAX: usize = 1 << 20;

    struct Batch {
        base: i64,
        next: i64,
        max_ts: i64,
        bytes: Bytes,
    }

    type Logs = HashMap<([u8; 16], i32), Vec<Batch>>;
    static LOGS: Mutex<Option<Logs>> = Mutex::new(None);

    fn with_logs<T>(f: impl FnOnce(&mut Logs) -> T) -> T {
        let mut guard = LOGS.lock().unwrap_or_else(|p| p.into_inner());
        f(guard.get_or_insert_with(HashMap::new))
    }

    pub struct Shard {
        id: u32,
        meta: Metadata,
    }

    fn now_ms() -> i64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
    }

    fn produce_error(e: ShardError) -> ProducePartitionResult {
        ProducePartitionResult { error: Some(e), base_offset: -1, log_append_time_ms: -1, log_start_offset: -1 }
    }

    fn validate(b: &[u8]) -> Result<(i64, i64), ShardError> {
        if b.len() > BATCH_BYTES_MAX {
            return Err(ShardError::MessageTooLarge { size: b.len() as u64, max: BATCH_BYTES_MAX as u64 });
        }
        if b.len() < 61 || b[16] != 2 {
            return Err(ShardError::CorruptMessage("not a v2 record batch".into()));
        }
        let len = i32::from_be_bytes([b[8], b[9], b[10], b[11]]);
        if len < 49 || len as usize + 12 != b.len() {
            return Err(ShardError::CorruptMessage("batch length".into()));
        }
        let crc = u32::from_be_bytes([b[17], b[18], b[19], b[20]]);
        if crc32c::crc32c(&b[21..]) != crc {
            return Err(ShardError::CorruptMessage("crc mismatch".into()));
        }
        let last_delta = i32::from_be_bytes([b[23], b[24], b[25], b[26]]);
        let max_ts = i64::from_be_bytes(b[35..43].try_into().unwrap_or([0; 8]));
        Ok((i64::from(last_delta) + 1, max_ts))
    }

    impl Shard {
        pub async fn start(cfg: ShardConfig, _mesh: ShardMesh, meta: Metadata) -> Result<Rc<Shard>, ShardError> {
            Ok(Rc::new(Shard { id: cfg.shard_id, meta }))
        }
        pub fn id(&self) -> u32 {
            self.id
        }
        pub fn metadata(&self) -> Arc<MetadataView> {
            self.meta.view()
        }
        pub async fn await_topic_ready(&self, _topic: &Arc<TopicMeta>) -> Result<(), ShardError> {
            Ok(())
        }
        pub async fn produce(&self, req: ProducePartition) -> ProducePartitionResult {
            if req.partition < 0 || req.partition as usize >= req.topic.partitions.len() {
                return produce_error(ShardError::UnknownTopicOrPartition);
            }
            // A request may hold several batches back to back.
            let mut rest = req.records.clone();
            let mut batches = Vec::new();
            while !rest.is_empty() {
                if rest.len() < 12 {
                    return produce_error(ShardError::CorruptMessage("truncated batch".into()));
                }
                let len = i32::from_be_bytes([rest[8], rest[9], rest[10], rest[11]]).max(0) as usize + 12;
                let one = rest.split_to(len.min(rest.len()));
                match validate(&one) {
                    Ok((count, ts)) => batches.push((one, count, ts)),
                    Err(e) => return produce_error(e),
                }
            }
            let key = (req.topic.id, req.partition);
            let base_offset = with_logs(|logs| {
                let log = logs.entry(key).or_default();
                let base = log.last().map(|b| b.next).unwrap_or(0);
                let mut next = base;
                for (bytes, count, max_ts) in batches {
                    let mut patched = BytesMut::from(&bytes[..]);
                    patched[0..8].copy_from_slice(&next.to_be_bytes());
                    log.push(Batch { base: next, next: next + count, max_ts, bytes: patched.freeze() });
                    next += count;
                }
                base
            });
            ProducePartitionResult { error: None, base_offset, log_append_time_ms: -1, log_start_offset: 0 }
        }
        pub async fn fetch(&self, req: FetchRequest) -> Vec<FetchPartitionResult> {
            let deadline = Instant::now() + Duration::from_millis(u64::from(req.max_wait_ms));
            loop {
                let results: Vec<_> = req.partitions.iter().map(fetch_one).collect();
                let bytes: usize = results.iter().flat_map(|r| r.records.iter()).map(|b| b.len()).sum();
                let errors = results.iter().any(|r| r.error.is_some());
                if errors || bytes >= req.min_bytes.max(1) as usize || Instant::now() >= deadline {
                    return results;
                }
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
        }
        pub async fn list_offsets(&self, req: ListOffsetsPartition) -> ListOffsetsResult {
            if req.partition < 0 || req.partition as usize >= req.topic.partitions.len() {
                return ListOffsetsResult { error: Some(ShardError::UnknownTopicOrPartition), offset: -1, timestamp: -1 };
            }
            with_logs(|logs| {
                let log = logs.get(&(req.topic.id, req.partition));
                let end = log.and_then(|l| l.last()).map(|b| b.next).unwrap_or(0);
                let (offset, timestamp) = match req.timestamp {
                    -2 => (0, -1),
                    -1 => (end, -1),
                    ts => log
                        .and_then(|l| l.iter().find(|b| b.max_ts >= ts))
                        .map(|b| (b.base, b.max_ts))
                        .unwrap_or((-1, -1)),
                };
                ListOffsetsResult { error: None, offset, timestamp }
            })
        }
        pub async fn close(&self) {}
    }

    fn fetch_one(p: &FetchPartition) -> FetchPartitionResult {
        let err = |e| FetchPartitionResult {
            error: Some(e),
            high_watermark: -1,
            last_stable_offset: -1,
            log_start_offset: -1,
            records: vec![],
        };
        if p.partition < 0 || p.partition as usize >= p.topic.partitions.len() {
            return err(ShardError::UnknownTopicOrPartition);
        }
        with_logs(|logs| {
            let empty = Vec::new();
            let log = logs.get(&(p.topic.id, p.partition)).unwrap_or(&empty);
            let hw = log.last().map(|b| b.next).unwrap_or(0);
            if p.fetch_offset < 0 || p.fetch_offset > hw {
                return err(ShardError::OffsetOutOfRange);
            }
            let mut records = Vec::new();
            let mut size = 0usize;
            for b in log.iter().filter(|b| b.next > p.fetch_offset) {
                if size > 0 && size + b.bytes.len() > p.partition_max_bytes as usize {
                    break;
                }
                size += b.bytes.len();
                records.push(b.bytes.clone());
            }
            FetchPartitionResult { error: None, high_watermark: hw, last_stable_offset: hw, log_start_offset: 0, records }
        })
    }
}
