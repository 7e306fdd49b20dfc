//! Snapshot file of the metadata state machine.
//!
//! `data_dir/raft/snapshot` (replaced atomically: temp + fsync + rename +
//! directory fsync), integers little-endian:
//!
//! ```text
//! magic "SLSNAP05" (8 bytes)
//! frame: JSON of openraft's SnapshotMeta (last log id, membership, id)
//! frame: "SLSDAT05" and an rkyv 0.8 archive of
//!        SnapshotBody { topics: Vec<TopicMeta>,
//!        brokers: Vec<BrokerMeta> (with each listener's address),
//!        reassignments: Vec<(topic, partition, Reassignment)>,
//!        scram: Vec<(user, ScramCredential)>,
//!        acls: Vec<AclBinding>,
//!        quotas: Vec<(QuotaEntity, Vec<(key, f64)>)> }
//!        (the snapshot data proper)
//! ```
//!
//! Frames are `durable`'s length + CRC32C frames. The bytes openraft moves
//! around as `SnapshotData` (also to other nodes) are the data frame
//! (tag and archive); an untagged archive is format 4's, as a node of that
//! format sends it. A node of format 4 cannot read format 5's data: a
//! cluster is upgraded whole before it takes a snapshot. Files of the previous formats are read: "SLSNAP04" (brokers
//! without their listeners' addresses), "SLSNAP03" (a body without
//! security metadata), "SLSNAP02" (nor reassignments) and
//! "SLSNAP01" (an archive of `Vec<TopicMeta>` alone, written before
//! brokers were registered).

use std::io;
use std::path::Path;

use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::durable;
use crate::security::acl::AclBinding;
use crate::security::quota::QuotaEntity;
use crate::security::scram::ScramCredential;
use crate::types::{BrokerMeta, Reassignment, SnapshotMeta, TopicMeta};

const SNAPSHOT_FILE: &str = "snapshot";
const MAGIC: &[u8; 8] = b"SLSNAP05";
/// The format before brokers' listener addresses: a `SnapshotBodyV4`.
const MAGIC_V4: &[u8; 8] = b"SLSNAP04";
/// The format before security metadata: a `SnapshotBodyV3` archive.
const MAGIC_V3: &[u8; 8] = b"SLSNAP03";
/// The format before reassignments: a `SnapshotBodyV2` archive.
const MAGIC_V2: &[u8; 8] = b"SLSNAP02";
/// The format before brokers: the data is an archive of `Vec<TopicMeta>`.
const MAGIC_V1: &[u8; 8] = b"SLSNAP01";

/// The snapshot data: everything the state machine replicates.
#[derive(Debug, Clone, Default, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct SnapshotBody {
    pub topics: Vec<TopicMeta>,
    pub brokers: Vec<BrokerMeta>,
    /// Partition reassignments in progress: (topic, partition, state).
    pub reassignments: Vec<(String, u32, Reassignment)>,
    /// SCRAM credentials: (user, credential), at most one per user and
    /// mechanism.
    pub scram: Vec<(String, ScramCredential)>,
    pub acls: Vec<AclBinding>,
    /// Client quotas: (entity, its keys and values).
    pub quotas: Vec<(QuotaEntity, Vec<(String, f64)>)>,
}

/// A broker as formats 2 to 4 hold it: no listener addresses.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub(crate) struct BrokerMetaV4 {
    pub id: u64,
    pub host: String,
    pub port: u16,
    pub fenced: bool,
}

impl From<BrokerMetaV4> for BrokerMeta {
    fn from(b: BrokerMetaV4) -> BrokerMeta {
        BrokerMeta {
            id: b.id,
            host: b.host,
            port: b.port,
            fenced: b.fenced,
            endpoints: Vec::new(),
        }
    }
}

fn brokers_v4(old: Vec<BrokerMetaV4>) -> Vec<BrokerMeta> {
    old.into_iter().map(BrokerMeta::from).collect()
}

/// The snapshot data of format "SLSNAP04".
#[derive(Debug, Clone, Default, PartialEq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize)]
pub(crate) struct SnapshotBodyV4 {
    pub topics: Vec<TopicMeta>,
    pub brokers: Vec<BrokerMetaV4>,
    pub reassignments: Vec<(String, u32, Reassignment)>,
    pub scram: Vec<(String, ScramCredential)>,
    pub acls: Vec<AclBinding>,
    pub quotas: Vec<(QuotaEntity, Vec<(String, f64)>)>,
}

impl From<SnapshotBodyV4> for SnapshotBody {
    fn from(b: SnapshotBodyV4) -> SnapshotBody {
        SnapshotBody {
            topics: b.topics,
            brokers: brokers_v4(b.brokers),
            reassignments: b.reassignments,
            scram: b.scram,
            acls: b.acls,
            quotas: b.quotas,
        }
    }
}

/// The snapshot data of format "SLSNAP03".
#[derive(
    Debug, Clone, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub(crate) struct SnapshotBodyV3 {
    pub topics: Vec<TopicMeta>,
    pub brokers: Vec<BrokerMetaV4>,
    pub reassignments: Vec<(String, u32, Reassignment)>,
}

/// The snapshot data of format "SLSNAP02".
#[derive(
    Debug, Clone, Default, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub(crate) struct SnapshotBodyV2 {
    pub topics: Vec<TopicMeta>,
    pub brokers: Vec<BrokerMetaV4>,
}

/// The first bytes of the snapshot data since format 5 (an rkyv archive
/// follows): what tells it from format 4's untagged archive, which a node
/// of that format sends.
const DATA_TAG: &[u8; 8] = b"SLSDAT05";

/// Serializes a snapshot body to the snapshot data: `DATA_TAG` and the
/// rkyv archive.
pub(crate) fn encode(body: &SnapshotBody) -> io::Result<Vec<u8>> {
    let bytes = rkyv::to_bytes::<rancor::Error>(body).map_err(|e| invalid(e.to_string()))?;
    let mut data = Vec::with_capacity(DATA_TAG.len() + bytes.len());
    data.extend_from_slice(DATA_TAG);
    data.extend_from_slice(&bytes);
    Ok(data)
}

/// Validates and deserializes snapshot data: tagged (format 5), or format
/// 4's archive alone (sent by a node of that format).
pub(crate) fn decode(data: &[u8]) -> io::Result<SnapshotBody> {
    let (archive, current) = match data.strip_prefix(DATA_TAG.as_slice()) {
        Some(rest) => (rest, true),
        None => (data, false),
    };
    // rkyv reads in place and needs the archive aligned.
    let mut aligned = AlignedVec::<16>::with_capacity(archive.len());
    aligned.extend_from_slice(archive);
    if current {
        return rkyv::from_bytes::<SnapshotBody, rancor::Error>(&aligned)
            .map_err(|e| invalid(e.to_string()));
    }
    rkyv::from_bytes::<SnapshotBodyV4, rancor::Error>(&aligned)
        .map(SnapshotBody::from)
        .map_err(|e| invalid(e.to_string()))
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Serializes topics alone (the previous format's data).
#[cfg(test)]
#[allow(clippy::ptr_arg)] // rkyv serializes a sized `Vec`, not a slice.
pub(crate) fn encode_topics(topics: &Vec<TopicMeta>) -> io::Result<Vec<u8>> {
    let bytes = rkyv::to_bytes::<rancor::Error>(topics).map_err(|e| invalid(e.to_string()))?;
    Ok(bytes.to_vec())
}

/// Validates and deserializes the previous format's data.
fn decode_topics(data: &[u8]) -> io::Result<Vec<TopicMeta>> {
    // rkyv reads in place and needs the archive aligned.
    let mut aligned = AlignedVec::<16>::with_capacity(data.len());
    aligned.extend_from_slice(data);
    rkyv::from_bytes::<Vec<TopicMeta>, rancor::Error>(&aligned).map_err(|e| invalid(e.to_string()))
}

/// Writes the snapshot file durably.
pub(crate) fn write(dir: &Path, meta: &SnapshotMeta, data: &[u8]) -> io::Result<()> {
    let meta_json = serde_json::to_vec(meta).map_err(io::Error::other)?;
    let mut buf = Vec::with_capacity(MAGIC.len() + meta_json.len() + data.len() + 16);
    buf.extend_from_slice(MAGIC);
    durable::frame_encode(&mut buf, &meta_json);
    durable::frame_encode(&mut buf, data);
    durable::write_atomic(dir, SNAPSHOT_FILE, &buf)
}

/// Reads the snapshot file: `None` if there is none. Damage is an error:
/// the log before the snapshot may be purged, so it cannot be skipped.
pub(crate) fn read(dir: &Path) -> io::Result<Option<(SnapshotMeta, Vec<u8>)>> {
    let Some(bytes) = durable::read_optional(dir, SNAPSHOT_FILE)? else {
        return Ok(None);
    };
    let (rest, version) = if let Some(rest) = bytes.strip_prefix(MAGIC.as_slice()) {
        (rest, 5)
    } else if let Some(rest) = bytes.strip_prefix(MAGIC_V4.as_slice()) {
        (rest, 4)
    } else if let Some(rest) = bytes.strip_prefix(MAGIC_V3.as_slice()) {
        (rest, 3)
    } else if let Some(rest) = bytes.strip_prefix(MAGIC_V2.as_slice()) {
        (rest, 2)
    } else {
        let rest = bytes
            .strip_prefix(MAGIC_V1.as_slice())
            .ok_or_else(|| invalid("snapshot: bad magic"))?;
        (rest, 1)
    };
    let (meta_json, used) =
        durable::frame_decode(rest).ok_or_else(|| invalid("snapshot: bad meta frame"))?;
    let (data, used_data) =
        durable::frame_decode(&rest[used..]).ok_or_else(|| invalid("snapshot: bad data frame"))?;
    if used + used_data != rest.len() {
        return Err(invalid("snapshot: trailing bytes"));
    }
    let meta: SnapshotMeta =
        serde_json::from_slice(meta_json).map_err(|e| invalid(e.to_string()))?;
    if version == 1 {
        let body = SnapshotBody {
            topics: decode_topics(data)?,
            ..SnapshotBody::default()
        };
        return Ok(Some((meta, encode(&body)?)));
    }
    let mut aligned = AlignedVec::<16>::with_capacity(data.len());
    aligned.extend_from_slice(data);
    if version == 2 {
        let old = rkyv::from_bytes::<SnapshotBodyV2, rancor::Error>(&aligned)
            .map_err(|e| invalid(e.to_string()))?;
        let body = SnapshotBody {
            topics: old.topics,
            brokers: brokers_v4(old.brokers),
            ..SnapshotBody::default()
        };
        return Ok(Some((meta, encode(&body)?)));
    }
    if version == 3 {
        let old = rkyv::from_bytes::<SnapshotBodyV3, rancor::Error>(&aligned)
            .map_err(|e| invalid(e.to_string()))?;
        let body = SnapshotBody {
            topics: old.topics,
            brokers: brokers_v4(old.brokers),
            reassignments: old.reassignments,
            ..SnapshotBody::default()
        };
        return Ok(Some((meta, encode(&body)?)));
    }
    if version == 4 {
        let old = rkyv::from_bytes::<SnapshotBodyV4, rancor::Error>(&aligned)
            .map_err(|e| invalid(e.to_string()))?;
        return Ok(Some((meta, encode(&SnapshotBody::from(old))?)));
    }
    assert_eq!(version, 5);
    Ok(Some((meta, data.to_vec())))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::types::PartitionMeta;

    fn topic(name: &str) -> TopicMeta {
        let configs = BTreeMap::from([("retention.ms".to_string(), "1000".to_string())]);
        let partitions = vec![
            PartitionMeta {
                shard: 1,
                leader: 7,
                leader_epoch: 0,
                replicas: vec![7],
                isr: vec![7],
            },
            PartitionMeta {
                shard: 0,
                leader: 7,
                leader_epoch: 0,
                replicas: vec![7],
                isr: vec![7],
            },
        ];
        TopicMeta {
            name: name.into(),
            id: [9; 16],
            partitions,
            configs,
            created_ms: 1234,
        }
    }

    #[test]
    fn topics_round_trip_through_rkyv() {
        let topics = vec![topic("a"), topic("b")];
        let data = encode_topics(&topics).expect("encode");
        assert_eq!(decode_topics(&data).expect("decode"), topics);
        let mut bad = data.clone();
        bad.truncate(bad.len() / 2);
        assert!(decode_topics(&bad).is_err());
    }

    #[test]
    fn body_round_trip_and_previous_format_is_read() {
        let old_brokers = vec![BrokerMetaV4 {
            id: 7,
            host: "h".into(),
            port: 9092,
            fenced: true,
        }];
        let body = SnapshotBody {
            topics: vec![topic("a")],
            brokers: brokers_v4(old_brokers.clone()),
            reassignments: vec![(
                "a".into(),
                1,
                Reassignment {
                    target: vec![2, 3],
                    original: vec![7],
                    adding: vec![2, 3],
                    removing: vec![7],
                },
            )],
            ..SnapshotBody::default()
        };
        let data = encode(&body).expect("encode");
        assert_eq!(decode(&data).expect("decode"), body);
        // Listener addresses round-trip.
        let mut with_endpoints = body.clone();
        with_endpoints.brokers[0].endpoints = vec![crate::types::Endpoint {
            listener: "SASL_SSL".into(),
            host: "broker-7.example".into(),
            port: 9093,
        }];
        let data = encode(&with_endpoints).expect("encode");
        assert_eq!(decode(&data).expect("decode"), with_endpoints);
        // A file of format 4, and its data as a node of that format sends it.
        let dir4 = tempfile::tempdir().expect("tempdir");
        let v4 = SnapshotBodyV4 {
            topics: body.topics.clone(),
            brokers: old_brokers.clone(),
            reassignments: body.reassignments.clone(),
            ..SnapshotBodyV4::default()
        };
        let v4_data = rkyv::to_bytes::<rancor::Error>(&v4).expect("encode v4");
        assert_eq!(decode(&v4_data).expect("decode v4 data"), body);
        let meta_json = serde_json::to_vec(&SnapshotMeta::default()).expect("json");
        let mut buf = MAGIC_V4.to_vec();
        durable::frame_encode(&mut buf, &meta_json);
        durable::frame_encode(&mut buf, &v4_data);
        durable::write_atomic(dir4.path(), SNAPSHOT_FILE, &buf).expect("write");
        let (_, data) = read(dir4.path()).expect("read").expect("some");
        assert_eq!(decode(&data).expect("decode"), body, "format 4 read as 5");
        // A file of format 3: a body without security metadata.
        let dir3 = tempfile::tempdir().expect("tempdir");
        let v3 = SnapshotBodyV3 {
            topics: body.topics.clone(),
            brokers: old_brokers.clone(),
            reassignments: body.reassignments.clone(),
        };
        let v3_data = rkyv::to_bytes::<rancor::Error>(&v3).expect("encode v3");
        let meta_json = serde_json::to_vec(&SnapshotMeta::default()).expect("json");
        let mut buf = MAGIC_V3.to_vec();
        durable::frame_encode(&mut buf, &meta_json);
        durable::frame_encode(&mut buf, &v3_data);
        durable::write_atomic(dir3.path(), SNAPSHOT_FILE, &buf).expect("write");
        let (_, data) = read(dir3.path()).expect("read").expect("some");
        assert_eq!(decode(&data).expect("decode"), body, "format 3 read as 5");
        // A file of format 2: a body without reassignments.
        let dir2 = tempfile::tempdir().expect("tempdir");
        let v2 = SnapshotBodyV2 {
            topics: body.topics.clone(),
            brokers: old_brokers.clone(),
        };
        let v2_data = rkyv::to_bytes::<rancor::Error>(&v2).expect("encode v2");
        let meta_json = serde_json::to_vec(&SnapshotMeta::default()).expect("json");
        let mut buf = MAGIC_V2.to_vec();
        durable::frame_encode(&mut buf, &meta_json);
        durable::frame_encode(&mut buf, &v2_data);
        durable::write_atomic(dir2.path(), SNAPSHOT_FILE, &buf).expect("write");
        let (_, data) = read(dir2.path()).expect("read").expect("some");
        let back = decode(&data).expect("decode");
        assert_eq!(
            (back.topics, back.brokers),
            (v2.topics, brokers_v4(v2.brokers))
        );
        assert!(back.reassignments.is_empty());
        // A file written by the previous format: topics only.
        let dir = tempfile::tempdir().expect("tempdir");
        let old = encode_topics(&vec![topic("old")]).expect("encode");
        let meta_json = serde_json::to_vec(&SnapshotMeta::default()).expect("json");
        let mut buf = MAGIC_V1.to_vec();
        durable::frame_encode(&mut buf, &meta_json);
        durable::frame_encode(&mut buf, &old);
        durable::write_atomic(dir.path(), SNAPSHOT_FILE, &buf).expect("write");
        let (_, data) = read(dir.path()).expect("read").expect("some");
        let back = decode(&data).expect("decode");
        assert_eq!(back.topics, vec![topic("old")]);
        assert!(back.brokers.is_empty());
    }

    #[test]
    fn security_metadata_round_trips_through_the_file() {
        use crate::security::acl::{AclOperation, AclPatternType, AclPermission, AclResourceType};
        use crate::security::quota::QuotaName;
        use crate::security::scram::ScramMechanism;
        let credential = ScramCredential {
            mechanism: ScramMechanism::Sha512,
            iterations: 8192,
            salt: vec![1, 2, 3],
            stored_key: vec![4; 64],
            server_key: vec![5; 64],
        };
        let acl = AclBinding {
            resource_type: AclResourceType::Topic,
            resource_name: "app-".into(),
            pattern_type: AclPatternType::Prefixed,
            principal: "User:alice".into(),
            host: "*".into(),
            operation: AclOperation::Read,
            permission: AclPermission::Allow,
        };
        let entity = QuotaEntity {
            user: Some(QuotaName::Named("alice".into())),
            client_id: Some(QuotaName::Default),
            ip: None,
        };
        let body = SnapshotBody {
            topics: vec![topic("t")],
            scram: vec![("alice".into(), credential)],
            acls: vec![acl],
            quotas: vec![(entity, vec![("request_percentage".into(), 0.1 + 0.2)])],
            ..SnapshotBody::default()
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let data = encode(&body).expect("encode");
        write(dir.path(), &SnapshotMeta::default(), &data).expect("write");
        let bytes = std::fs::read(dir.path().join(SNAPSHOT_FILE)).expect("file");
        assert!(bytes.starts_with(b"SLSNAP05"));
        let (_, back) = read(dir.path()).expect("read").expect("some");
        let back = decode(&back).expect("decode");
        assert_eq!(back, body);
        assert_eq!(back.quotas[0].1[0].1.to_bits(), (0.1f64 + 0.2).to_bits());
    }

    #[test]
    fn file_round_trip_and_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(read(dir.path()).expect("read").is_none());
        let meta = SnapshotMeta::default();
        let body = SnapshotBody {
            topics: vec![topic("x")],
            ..SnapshotBody::default()
        };
        let data = encode(&body).expect("encode");
        write(dir.path(), &meta, &data).expect("write");
        let (meta2, data2) = read(dir.path()).expect("read").expect("some");
        assert_eq!(meta2, meta);
        assert_eq!(data2, data);
        let path = dir.path().join(SNAPSHOT_FILE);
        let mut bytes = std::fs::read(&path).expect("bytes");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).expect("write damaged");
        assert!(read(dir.path()).is_err());
    }
}
