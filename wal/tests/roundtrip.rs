//! Appends, reopens and reads back on the real file system.

mod common;

use std::os::unix::fs::FileExt;

use common::{check_payload, payload, read_all, run, small_config};
use futures::future::join_all;
use proptest::prelude::*;
use sluice_wal::{segment_paths, CrcSpan, Payload, Position, Wal, WalError};

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]

    /// Random sizes and counts, appended concurrently, survive close and reopen
    /// byte for byte, in call order, across segment boundaries.
    #[test]
    fn entries_survive_reopen(sizes in proptest::collection::vec(0usize..40_000, 1..120), kinds in proptest::collection::vec(0u8..0xF0, 1..8)) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = small_config(dir.path());
        let written = run({
            let cfg = cfg.clone();
            let sizes = sizes.clone();
            let kinds = kinds.clone();
            async move {
                let (wal, rec) = Wal::open(cfg).await.unwrap();
                assert_eq!(rec.torn_bytes_dropped, 0);
                let futs: Vec<_> = sizes.iter().enumerate()
                    .map(|(i, &n)| wal.append(kinds[i % kinds.len()], payload(i as u64, n)))
                    .collect();
                let positions: Vec<Position> = join_all(futs).await.into_iter().map(|r| r.unwrap()).collect();
                for (i, p) in positions.iter().enumerate() {
                    let e = wal.read(*p).await.unwrap();
                    assert_eq!(check_payload(&e.payload), Some(i as u64));
                }
                wal.close().await.unwrap();
                positions
            }
        });
        prop_assert!(written.windows(2).all(|w| w[0] < w[1]), "positions grow in call order");
        let entries = run(async move {
            let (wal, rec) = Wal::open(cfg).await.unwrap();
            assert_eq!(rec.torn_bytes_dropped, 0);
            let entries = read_all(&wal).await;
            for e in &entries {
                let again = wal.read(e.position).await.unwrap();
                assert_eq!(&again, e);
            }
            wal.close().await.unwrap();
            entries
        });
        prop_assert_eq!(entries.len(), sizes.len());
        for (i, e) in entries.iter().enumerate() {
            prop_assert_eq!(e.position, written[i]);
            prop_assert_eq!(e.kind, kinds[i % kinds.len()]);
            prop_assert_eq!(e.payload.len(), sizes[i].max(8));
            prop_assert_eq!(check_payload(&e.payload), Some(i as u64));
        }
    }
}

#[test]
fn appends_continue_after_reopen_and_segments_roll() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let n = 400u64;
    run({
        let cfg = cfg.clone();
        async move {
            let (wal, _) = Wal::open(cfg).await.unwrap();
            for i in 0..n / 2 {
                wal.append(1, payload(i, 5000)).await.unwrap();
            }
            wal.close().await.unwrap();
        }
    });
    run(async move {
        let (wal, rec) = Wal::open(cfg).await.unwrap();
        assert_eq!(rec.torn_bytes_dropped, 0);
        for i in n / 2..n {
            wal.append(1, payload(i, 5000)).await.unwrap();
        }
        let stats = wal.stats();
        assert!(
            stats.segments >= 2,
            "2 MB of entries span 1 MiB segments, got {}",
            stats.segments
        );
        let seqs: Vec<u64> = read_all(&wal)
            .await
            .iter()
            .map(|e| check_payload(&e.payload).unwrap())
            .collect();
        assert_eq!(seqs, (0..n).collect::<Vec<_>>());
        wal.close().await.unwrap();
    });
}

#[test]
fn group_commit_batches_concurrent_appends() {
    let dir = tempfile::tempdir().unwrap();
    run(async move {
        let (wal, _) = Wal::open(small_config(dir.path())).await.unwrap();
        let futs: Vec<_> = (0..1000).map(|i| wal.append(2, payload(i, 100))).collect();
        join_all(futs).await.into_iter().for_each(|r| {
            r.unwrap();
        });
        let s = wal.stats();
        assert_eq!(s.appends, 1000);
        assert!(
            s.commits < 100,
            "1000 concurrent appends took {} commits",
            s.commits
        );
        assert_eq!(s.commit_entries.len(), s.commits);
        wal.close().await.unwrap();
    });
}

#[test]
fn backpressure_waits_are_counted_and_keep_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.queue_bytes_max = cfg.commit_bytes_max;
    run(async move {
        let (wal, _) = Wal::open(cfg).await.unwrap();
        let futs: Vec<_> = (0..200)
            .map(|i| wal.append(3, payload(i, 10_000)))
            .collect();
        let positions: Vec<Position> = join_all(futs)
            .await
            .into_iter()
            .map(|r| r.unwrap())
            .collect();
        assert!(positions.windows(2).all(|w| w[0] < w[1]));
        assert!(wal.stats().backpressure_waits > 0);
        assert_eq!(wal.stats().queue_bytes, 0);
        wal.close().await.unwrap();
    });
}

#[test]
fn bad_appends_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    run(async move {
        let (wal, _) = Wal::open(small_config(dir.path())).await.unwrap();
        let too_big = bytes::Bytes::from(vec![0u8; (128 << 10) + 1]);
        assert!(matches!(
            wal.append(1, too_big).await,
            Err(WalError::EntryTooLarge { .. })
        ));
        assert!(matches!(
            wal.append(0xF0, payload(0, 8)).await,
            Err(WalError::ReservedKind(0xF0))
        ));
        assert!(matches!(
            wal.read(Position(1 << 40)).await,
            Err(WalError::OutOfRange { .. })
        ));
        let p = wal.append(1, payload(1, 8)).await.unwrap();
        assert!(matches!(
            wal.read(Position(p.0 + 8)).await,
            Err(WalError::Corrupt { .. } | WalError::OutOfRange { .. })
        ));
        let w2 = wal.clone();
        wal.close().await.unwrap();
        assert!(matches!(
            w2.append(1, payload(2, 8)).await,
            Err(WalError::Closed)
        ));
    });
}

#[test]
fn a_file_that_is_not_a_wal_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("00000000000000000000.wal"), vec![7u8; 8192]).unwrap();
    run(async move {
        let err = Wal::open(small_config(dir.path()))
            .await
            .err()
            .expect("garbage is refused");
        assert!(matches!(err, WalError::NotAWal { .. }), "{err}");
    });
}

#[test]
fn rolled_resolves_at_the_next_roll() {
    let dir = tempfile::tempdir().unwrap();
    run(async move {
        let (wal, _) = Wal::open(small_config(dir.path())).await.unwrap();
        let seen = wal.rolls();
        let writer = {
            let wal = wal.clone();
            glommio::spawn_local(async move {
                for i in 0..600 {
                    wal.append(1, payload(i, 10_000)).await.unwrap();
                    if wal.rolls() > seen {
                        return;
                    }
                }
                panic!("no roll after 600 entries");
            })
        };
        wal.rolled(seen).await;
        assert!(wal.rolls() > seen);
        writer.await;
        wal.close().await.unwrap();
    });
}

#[test]
fn remove_below_frees_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    run(async move {
        let (wal, _) = Wal::open(small_config(dir.path())).await.unwrap();
        let mut last = Position(0);
        for i in 0..600 {
            last = wal.append(1, payload(i, 10_000)).await.unwrap();
        }
        let before = wal.stats().segments;
        assert!(before >= 5);
        assert_eq!(wal.rolls(), before - 1);
        assert!(wal.active_base() <= last);
        assert_eq!(wal.removable_below(last), before - 1);
        assert_eq!(wal.removable_below(Position(0)), 0);
        let removed = wal.remove_below(last).await.unwrap();
        assert_eq!(removed, before - 1, "all but the segment holding {last:?}");
        assert_eq!(segment_paths(&wal).len(), 1);
        assert_eq!(wal.stats().segments_removed, removed);
        assert_eq!(wal.start(), wal.active_base());
        assert!(wal.start() <= last);
        // Positions of removed segments are out of range, not misread.
        assert!(matches!(
            wal.read(Position(0)).await,
            Err(WalError::OutOfRange { .. })
        ));
        assert_eq!(
            check_payload(&wal.read(last).await.unwrap().payload),
            Some(599)
        );
        wal.close().await.unwrap();
    });
}

/// Writes `n` entries as `n` separate commits and returns their positions.
fn write_commits(dir: &std::path::Path, n: u64) -> Vec<Position> {
    let cfg = small_config(dir);
    run(async move {
        let (wal, _) = Wal::open(cfg).await.unwrap();
        let mut ps = Vec::new();
        for i in 0..n {
            ps.push(wal.append(1, payload(i, 300)).await.unwrap());
        }
        wal.close().await.unwrap();
        ps
    })
}

fn flip_byte_at(dir: &std::path::Path, position: Position, delta: u64) {
    let seg = dir.join("00000000000000000000.wal");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(seg)
        .unwrap();
    let off = 4096 + position.0 + delta;
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, off).unwrap();
    b[0] ^= 0x5A;
    f.write_all_at(&b, off).unwrap();
    f.sync_all().unwrap();
}

#[test]
fn torn_tail_is_truncated_and_reported() {
    let dir = tempfile::tempdir().unwrap();
    let ps = write_commits(dir.path(), 10);
    flip_byte_at(dir.path(), ps[9], 100);
    let cfg = small_config(dir.path());
    run(async move {
        let (wal, rec) = Wal::open(cfg.clone()).await.unwrap();
        assert!(rec.torn_bytes_dropped > 0, "{rec:?}");
        let seqs: Vec<u64> = read_all(&wal)
            .await
            .iter()
            .map(|e| check_payload(&e.payload).unwrap())
            .collect();
        assert_eq!(seqs, (0..9).collect::<Vec<_>>());
        let p = wal.append(1, payload(9, 300)).await.unwrap();
        assert!(p.0 < ps[9].0 + 400, "the torn commit's space is reused");
        wal.close().await.unwrap();
        let (wal, rec) = Wal::open(cfg).await.unwrap();
        assert_eq!(
            rec.torn_bytes_dropped, 0,
            "the torn bytes were zeroed on disk"
        );
        assert_eq!(read_all(&wal).await.len(), 10);
        wal.close().await.unwrap();
    });
}

#[test]
fn truncated_file_tail_is_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let ps = write_commits(dir.path(), 6);
    let seg = dir.path().join("00000000000000000000.wal");
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    // Zero the last commit's second half, as a write cut short would.
    f.write_all_at(&[0u8; 200], 4096 + ps[5].0 + 120).unwrap();
    f.sync_all().unwrap();
    run(async move {
        let (wal, rec) = Wal::open(small_config(dir.path())).await.unwrap();
        assert!(rec.torn_bytes_dropped > 0);
        assert_eq!(read_all(&wal).await.len(), 5);
        wal.close().await.unwrap();
    });
}

#[test]
fn corruption_before_the_tail_is_an_error_naming_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let ps = write_commits(dir.path(), 10);
    flip_byte_at(dir.path(), ps[4], 50);
    run(async move {
        match Wal::open(small_config(dir.path())).await {
            Err(WalError::Corrupt { position, .. }) => assert_eq!(position, ps[4].0),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("corruption in the middle was silently accepted"),
        }
    });
}

/// `payload(seq, len)` with the CRC of all but its first 8 bytes given, as a
/// caller that verified a checksum over them hands it to the WAL.
fn spanned(seq: u64, len: usize) -> Payload {
    let bytes = payload(seq, len);
    let span = CrcSpan::compute(&bytes, 8, bytes.len() as u32 - 8);
    Payload::with_crc_spans(bytes, vec![span])
}

/// Writes `n` spanned entries as `n` separate commits; returns their positions.
fn write_spanned_commits(dir: &std::path::Path, n: u64) -> Vec<Position> {
    let cfg = small_config(dir);
    run(async move {
        let (wal, _) = Wal::open(cfg).await.unwrap();
        let mut ps = Vec::new();
        for i in 0..n {
            ps.push(wal.append_payload(1, spanned(i, 300)).await.unwrap());
        }
        wal.close().await.unwrap();
        ps
    })
}

#[test]
fn entries_with_given_crcs_read_back_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = small_config(dir.path());
    let sizes = [9usize, 300, 4096, 40_000, 100_000];
    run(async move {
        let (wal, _) = Wal::open(cfg.clone()).await.unwrap();
        let appends: Vec<_> = (0..40u64)
            .map(|i| {
                let len = sizes[i as usize % sizes.len()];
                if i % 3 == 0 {
                    wal.append(1, payload(i, len))
                } else {
                    wal.append_payload(1, spanned(i, len))
                }
            })
            .collect();
        join_all(appends).await;
        wal.close().await.unwrap();
        let (wal, rec) = Wal::open(cfg).await.unwrap();
        assert_eq!(rec.torn_bytes_dropped, 0);
        let seqs: Vec<u64> = read_all(&wal)
            .await
            .iter()
            .map(|e| check_payload(&e.payload).unwrap())
            .collect();
        assert_eq!(seqs, (0..40).collect::<Vec<_>>());
        wal.close().await.unwrap();
    });
}

#[test]
fn damage_inside_a_given_crc_run_is_caught_by_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let ps = write_spanned_commits(dir.path(), 10);
    // Byte 100 of the frame is payload byte 88, inside the given span.
    flip_byte_at(dir.path(), ps[4], 100);
    let cfg = small_config(dir.path());
    run(async move {
        match Wal::open(cfg).await {
            Err(WalError::Corrupt { position, .. }) => assert_eq!(position, ps[4].0),
            Err(e) => panic!("wrong error: {e}"),
            Ok(_) => panic!("damage inside a given CRC run was accepted"),
        }
    });
}

#[test]
fn damage_inside_a_given_crc_run_at_the_tail_is_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let ps = write_spanned_commits(dir.path(), 6);
    flip_byte_at(dir.path(), ps[5], 100);
    run(async move {
        let (wal, rec) = Wal::open(small_config(dir.path())).await.unwrap();
        assert!(rec.torn_bytes_dropped > 0, "{rec:?}");
        assert_eq!(read_all(&wal).await.len(), 5);
        match wal.read(ps[5]).await {
            Err(WalError::OutOfRange { .. }) => {}
            other => panic!("the damaged entry must be gone: {other:?}"),
        }
        wal.close().await.unwrap();
    });
}

#[test]
fn entries_read_alone_in_one_or_two_reads_and_damage_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = small_config(dir.path());
    cfg.segment_bytes = 8 << 20;
    cfg.commit_bytes_max = 1 << 20;
    cfg.entry_bytes_max = 512 << 10;
    let seg = dir.path().join("00000000000000000000.wal");
    run(async move {
        let (wal, _) = Wal::open(cfg).await.unwrap();
        let sizes = [10usize, 100_000, 131_060, 200_000, 400_000];
        let mut ps = Vec::new();
        for (i, &len) in sizes.iter().enumerate() {
            ps.push(wal.append(1, payload(i as u64, len)).await.unwrap());
        }
        // One more commit, so that none of the above is served from memory.
        wal.append(1, payload(99, 8)).await.unwrap();
        for (i, &p) in ps.iter().enumerate() {
            let e = wal.read(p).await.unwrap();
            assert_eq!(check_payload(&e.payload), Some(i as u64));
            assert_eq!(e.payload.len(), sizes[i]);
            let hinted = wal.read_sized(p, sizes[i] as u32).await.unwrap();
            assert_eq!(hinted, e);
        }
        // Damage the largest entry in the part its second read covers.
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&seg)
            .unwrap();
        let off = 4096 + ps[4].0 + 12 + 300_000;
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, off).unwrap();
        f.write_all_at(&[b[0] ^ 0x01], off).unwrap();
        f.sync_all().unwrap();
        for hint in [0, 400_000] {
            match wal.read_sized(ps[4], hint).await {
                Err(WalError::Corrupt { position, .. }) => assert_eq!(position, ps[4].0),
                other => panic!("damage was not caught: {other:?}"),
            }
        }
        assert!(wal.read(ps[3]).await.is_ok());
        wal.close().await.unwrap();
    });
}
