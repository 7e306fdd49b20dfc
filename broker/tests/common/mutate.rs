//! Seeded mutations of Kafka request frames, for the live-broker replay
//! (`tests/hostile_replay.rs`) and the in-process fuzzer (`src/fuzz.rs`,
//! which includes this file by path: it depends on nothing but std,
//! `bytes` and `fastrand`).
//!
//! A frame here is a request as a client writes it: the 4-byte size
//! prefix, then the header (api key, api version, correlation id, ...) and
//! the body. Most mutations keep the size prefix true, so the bytes reach
//! the request decoder; about one in ten makes it lie (bigger, smaller,
//! negative, huge). Every mutation is a pure function of the generator's
//! state and the input, so a seed replays a run exactly.

#![allow(dead_code)]

use bytes::BufMut;
use fastrand::Rng;

/// The request versions the broker serves, `(api key, min, max)`: a copy
/// of `SUPPORTED` in `src/handlers/mod.rs` (the replay test checks it
/// against the broker's ApiVersions answer).
pub const SERVED: &[(i16, i16, i16)] = &[
    (0, 0, 9),  // Produce
    (1, 0, 12), // Fetch
    (2, 0, 7),  // ListOffsets
    (3, 0, 12), // Metadata
    (18, 0, 3), // ApiVersions
    (19, 0, 7), // CreateTopics
    (20, 0, 6), // DeleteTopics
    (10, 0, 4), // FindCoordinator
    (11, 0, 9), // JoinGroup
    (14, 0, 5), // SyncGroup
    (12, 0, 4), // Heartbeat
    (13, 0, 5), // LeaveGroup
    (8, 0, 9),  // OffsetCommit
    (9, 0, 9),  // OffsetFetch
    (16, 0, 5), // ListGroups
    (15, 0, 5), // DescribeGroups
    (42, 0, 2), // DeleteGroups
    (47, 0, 0), // OffsetDelete
    (22, 0, 5), // InitProducerId
    (37, 0, 3), // CreatePartitions
    (32, 0, 4), // DescribeConfigs
    (33, 0, 2), // AlterConfigs
    (44, 0, 1), // IncrementalAlterConfigs
    (60, 0, 1), // DescribeCluster
    (21, 0, 2), // DeleteRecords
    (23, 0, 4), // OffsetForLeaderEpoch
    (34, 0, 2), // AlterReplicaLogDirs
    (35, 0, 4), // DescribeLogDirs
    (43, 0, 2), // ElectLeaders
    (45, 0, 0), // AlterPartitionReassignments
    (46, 0, 0), // ListPartitionReassignments
    (24, 0, 5), // AddPartitionsToTxn
    (25, 0, 4), // AddOffsetsToTxn
    (26, 0, 4), // EndTxn
    (27, 0, 1), // WriteTxnMarkers
    (28, 0, 4), // TxnOffsetCommit
    (65, 0, 0), // DescribeTransactions
    (66, 0, 1), // ListTransactions
    (17, 1, 1), // SaslHandshake
    (36, 0, 2), // SaslAuthenticate
    (29, 0, 3), // DescribeAcls
    (30, 0, 3), // CreateAcls
    (31, 0, 3), // DeleteAcls
    (48, 0, 1), // DescribeClientQuotas
    (49, 0, 1), // AlterClientQuotas
    (50, 0, 0), // DescribeUserScramCredentials
    (51, 0, 0), // AlterUserScramCredentials
];

/// Mutations stacked on one frame, at most.
pub const STACKED_MAX: usize = 3;
/// Bytes one mutation adds, at most (extension, duplicated span).
pub const GROWTH_BYTES_MAX: usize = 256;
/// In how many frames (one in N) the size prefix lies.
const PREFIX_LIE_ONE_IN: u32 = 10;

/// Writes a mutated copy of `frame` (with its size prefix) to `out`
/// (cleared first). `out` is at most `frame.len() + STACKED_MAX *
/// GROWTH_BYTES_MAX` bytes long.
pub fn mutate(rng: &mut Rng, frame: &[u8], out: &mut Vec<u8>) {
    mutate_with(rng, frame, None, out);
}

/// As [`mutate`], with a second frame that a splice may take its tail from.
pub fn mutate_pair(rng: &mut Rng, frame: &[u8], other: &[u8], out: &mut Vec<u8>) {
    mutate_with(rng, frame, Some(other), out);
}

fn mutate_with(rng: &mut Rng, frame: &[u8], other: Option<&[u8]>, out: &mut Vec<u8>) {
    let mut body = body_of(frame).to_vec();
    let stacked = rng.usize(1..=STACKED_MAX);
    for _ in 0..stacked {
        mutate_body(rng, &mut body, other);
    }
    let len_max = frame.len() + STACKED_MAX * GROWTH_BYTES_MAX;
    body.truncate(len_max - 4);
    out.clear();
    out.put_i32(size_prefix(rng, body.len()));
    out.extend_from_slice(&body);
    debug_assert!(out.len() <= len_max);
}

/// The frame without its size prefix (all of it when shorter than one).
pub fn body_of(frame: &[u8]) -> &[u8] {
    frame.get(4..).unwrap_or(frame)
}

/// The `(api key, api version)` of a framed request, when it has them.
pub fn key_version(frame: &[u8]) -> Option<(i16, i16)> {
    let b = frame.get(4..8)?;
    Some((
        i16::from_be_bytes([b[0], b[1]]),
        i16::from_be_bytes([b[2], b[3]]),
    ))
}

/// The size prefix: true most of the time, else a lie.
fn size_prefix(rng: &mut Rng, len: usize) -> i32 {
    let len = i32::try_from(len).expect("a mutated frame fits an i32");
    if rng.u32(..PREFIX_LIE_ONE_IN) != 0 {
        return len;
    }
    match rng.u8(..7) {
        0 => len.saturating_add(rng.i32(1..=1024)),
        1 => len - rng.i32(1..=len.max(1)),
        2 => -1,
        3 => i32::MIN,
        4 => rng.i32(i32::MIN..0),
        5 => i32::MAX,
        _ => *pick(rng, &[0x0100_0000, 0x1000_0000, 100 << 20, 0x7fff_fff0]),
    }
}

/// One mutation of a frame without its size prefix.
fn mutate_body(rng: &mut Rng, body: &mut Vec<u8>, other: Option<&[u8]>) {
    match rng.u8(..13) {
        0 => flip_bits(rng, body),
        1 => overwrite_bytes(rng, body),
        2 => truncate(rng, body),
        3 => extend(rng, body),
        4 | 5 => set_int16(rng, body),
        6 | 7 => set_int32(rng, body),
        8 | 9 => set_varint(rng, body),
        10 => duplicate_or_remove_span(rng, body),
        11 => swap_key_version(rng, body),
        _ => splice(rng, body, other),
    }
}

/// An offset in `0..len`, half the time within the first 64 bytes, where
/// the header and the top-level counts are.
fn offset(rng: &mut Rng, len: usize) -> usize {
    debug_assert!(len > 0);
    if rng.bool() {
        rng.usize(..len.min(64))
    } else {
        rng.usize(..len)
    }
}

fn pick<'a, T>(rng: &mut Rng, values: &'a [T]) -> &'a T {
    &values[rng.usize(..values.len())]
}

fn flip_bits(rng: &mut Rng, body: &mut [u8]) {
    if body.is_empty() {
        return;
    }
    for _ in 0..rng.usize(1..=8) {
        let at = offset(rng, body.len());
        body[at] ^= 1 << rng.u8(..8);
    }
}

fn overwrite_bytes(rng: &mut Rng, body: &mut [u8]) {
    if body.is_empty() {
        return;
    }
    for _ in 0..rng.usize(1..=4) {
        let at = offset(rng, body.len());
        body[at] = if rng.bool() {
            *pick(rng, &[0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff])
        } else {
            rng.u8(..)
        };
    }
}

fn truncate(rng: &mut Rng, body: &mut Vec<u8>) {
    if !body.is_empty() {
        let keep = rng.usize(..body.len());
        body.truncate(keep);
    }
}

fn extend(rng: &mut Rng, body: &mut Vec<u8>) {
    let n = rng.usize(1..=GROWTH_BYTES_MAX.min(64));
    let fill = rng.u8(..4);
    for _ in 0..n {
        let byte = match fill {
            0 => 0x00,
            1 => 0xff,
            _ => rng.u8(..),
        };
        body.push(byte);
    }
}

fn set_int16(rng: &mut Rng, body: &mut [u8]) {
    if body.len() < 2 {
        return;
    }
    let v: i16 = match rng.u8(..7) {
        0 => -1,
        1 => 0,
        2 => 1,
        3 => i16::MAX,
        4 => i16::MIN,
        5 => rng.i16(0x4000..=i16::MAX),
        _ => rng.i16(..),
    };
    let at = offset(rng, body.len() - 1);
    body[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

fn set_int32(rng: &mut Rng, body: &mut [u8]) {
    if body.len() < 4 {
        return;
    }
    let v: i32 = match rng.u8(..8) {
        0 => -1,
        1 => 0,
        2 => 1,
        3 => i32::MAX,
        4 => i32::MIN,
        5 => *pick(rng, &[0x0100_0000, 0x1000_0000, 0x4000_0000, 0x7fff_fff0]),
        6 => rng.i32(0x10000..0x7fff_ffff),
        _ => rng.i32(..),
    };
    let at = offset(rng, body.len() - 3);
    body[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// Replaces the unsigned varint at a random offset (the bytes up to the
/// first without its high bit, at most 5) by another one.
fn set_varint(rng: &mut Rng, body: &mut Vec<u8>) {
    if body.is_empty() {
        return;
    }
    let at = offset(rng, body.len());
    let old = body[at..]
        .iter()
        .take(5)
        .position(|&b| b < 0x80)
        .map_or((body.len() - at).min(5), |p| p + 1);
    let value: u32 = match rng.u8(..7) {
        0 => 0,
        1 => 1,
        2 => u32::MAX,
        3 => 0x7fff_ffff,
        4 => rng.u32(0x4000..0x0100_0000),
        5 => rng.u32(..0x80),
        _ => rng.u32(..),
    };
    let mut encoded = Vec::with_capacity(5);
    put_uvarint(&mut encoded, value);
    body.splice(at..at + old, encoded);
}

/// Kafka's unsigned varint: 7 bits a byte, least significant first.
pub fn put_uvarint(out: &mut Vec<u8>, mut value: u32) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

fn duplicate_or_remove_span(rng: &mut Rng, body: &mut Vec<u8>) {
    if body.is_empty() {
        return;
    }
    let start = offset(rng, body.len());
    let len = rng.usize(1..=(body.len() - start).min(GROWTH_BYTES_MAX));
    if rng.bool() {
        let span: Vec<u8> = body[start..start + len].to_vec();
        let at = rng.usize(..=body.len());
        body.splice(at..at, span);
    } else {
        body.drain(start..start + len);
    }
}

/// Sets the api key and/or version (the first 4 bytes of the body) to
/// another served pair, or a version just outside the served range.
fn swap_key_version(rng: &mut Rng, body: &mut Vec<u8>) {
    if body.len() < 4 {
        body.resize(4, 0);
    }
    let &(key, min, max) = pick(rng, SERVED);
    let current = i16::from_be_bytes([body[0], body[1]]);
    let (key, range) = match rng.u8(..3) {
        // Another key, a version it serves.
        0 => (key, (min, max)),
        // The same key, another version (of the key's range, when served).
        1 => {
            let range = SERVED
                .iter()
                .find(|(k, _, _)| *k == current)
                .map_or((min, max), |&(_, lo, hi)| (lo, hi));
            (current, range)
        }
        // Another key, a version it does not serve.
        _ => (key, (max + 1, max + 1)),
    };
    let version = if rng.u8(..8) == 0 {
        *pick(rng, &[-1, i16::MAX, range.1 + 1])
    } else {
        rng.i16(range.0..=range.1)
    };
    body[0..2].copy_from_slice(&key.to_be_bytes());
    body[2..4].copy_from_slice(&version.to_be_bytes());
}

/// The head of `body` up to a random point, then the tail of `other` (or
/// of `body` itself) from another random point.
fn splice(rng: &mut Rng, body: &mut Vec<u8>, other: Option<&[u8]>) {
    let tail_of: Vec<u8> = match other {
        Some(o) => body_of(o).to_vec(),
        None => body.clone(),
    };
    let cut = rng.usize(..=body.len());
    let from = rng.usize(..=tail_of.len());
    let tail = &tail_of[from..];
    let room = (body.len() + GROWTH_BYTES_MAX).saturating_sub(cut);
    body.truncate(cut);
    body.extend_from_slice(&tail[..tail.len().min(room)]);
}
