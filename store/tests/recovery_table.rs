//! Walks every row of the recovery decision table with a log built to hit it.

mod common;

use futures_lite::future::block_on;
use herald_engine::record::Record;
use herald_store::recovery::{
    action_for, segment_name, snapshot_name, snapshot_temp_name, Action, Condition, RECOVERY_TABLE,
};
use herald_store::{Log, LogOptions, MemStorage, Recovered, StoreError};

fn recover(storage: &MemStorage) -> Result<Recovered, StoreError> {
    block_on(Log::open(storage.clone(), LogOptions::default())).map(|(_, recovered)| recovered)
}

fn recover_ok(storage: &MemStorage, condition: Condition) -> Recovered {
    let recovered = recover(storage).unwrap_or_else(|err| panic!("{condition:?}: {err}"));
    assert!(
        recovered.report.conditions.contains(&condition),
        "{condition:?} not met: {:?}",
        recovered.report
    );
    recovered
}

fn names(storage: &MemStorage) -> Vec<String> {
    storage.files().into_iter().map(|(name, _)| name).collect()
}

/// A one-segment log of 5 records.
fn five() -> (MemStorage, Vec<Record>, Vec<u8>) {
    let records = common::records(100, 5);
    let bytes = common::segment_bytes(1, &records);
    let storage = MemStorage::from_files([(segment_name(1), bytes.clone())]);
    (storage, records, bytes)
}

fn expect_corrupt(
    result: Result<Recovered, StoreError>,
    condition: Condition,
    segment: &str,
    offset: u64,
) {
    match result {
        Err(StoreError::Corrupt {
            segment: got_segment,
            offset: got_offset,
            reason,
        }) => {
            assert_eq!(got_segment, segment, "{condition:?}: {reason}");
            assert_eq!(got_offset, offset, "{condition:?}: {reason}");
        }
        other => panic!("{condition:?}: expected Corrupt, got {other:?}"),
    }
}

/// Runs the scenario for one row and checks the row's action happened.
fn walk(condition: Condition) {
    let action = action_for(condition);
    match condition {
        Condition::NoFiles => {
            let recovered = recover_ok(&MemStorage::new(), condition);
            assert!(recovered.records.is_empty());
            assert_eq!(action, Action::StartEmpty);
        }
        Condition::ValidRecord | Condition::EndOfFile => {
            let (storage, records, _) = five();
            let recovered = recover_ok(&storage, condition);
            assert_eq!(recovered.records, records);
            assert!(recovered.report.cut.is_none());
        }
        Condition::ZeroFilledTail => {
            let (storage, records, mut bytes) = five();
            let good_len = bytes.len();
            bytes.resize(good_len + 8192, 0);
            storage.put(&segment_name(1), bytes);
            let recovered = recover_ok(&storage, condition);
            assert_eq!(recovered.records, records);
            assert!(
                recovered.report.cut.is_none(),
                "zeros are the end of the log, not damage"
            );
            assert_eq!(
                storage.files()[0].1.len(),
                good_len,
                "the zeros are dropped before appending"
            );
        }
        Condition::DamagedTail => {
            let (_, records, bytes) = five();
            let offsets = common::frame_offsets(&bytes);
            let last = offsets[4];
            // Each way a last write can be torn.
            let damages: Vec<(&str, Vec<u8>)> = vec![
                ("partial header", bytes[..last + 10].to_vec()),
                ("partial body", bytes[..bytes.len() - 3].to_vec()),
                ("bad body checksum", {
                    let mut b = bytes.clone();
                    b[last + 40] ^= 0x55;
                    b
                }),
                ("bad header checksum", {
                    let mut b = bytes.clone();
                    b[last + 17] ^= 0x01;
                    b
                }),
                ("zeroed header then body", {
                    let mut b = bytes.clone();
                    b[last..last + 32].fill(0);
                    b
                }),
            ];
            for (label, damaged) in damages {
                let storage = MemStorage::from_files([(segment_name(1), damaged)]);
                let recovered = recover_ok(&storage, condition);
                assert_eq!(recovered.records, records[..4], "{label}");
                let cut = recovered.report.cut.clone().expect("cut reported");
                assert_eq!(cut.offset, last as u64, "{label}");
                assert_eq!(storage.files()[0].1.len(), last, "{label}: truncated");
                // The log continues at LSN 5 and a second recovery is clean.
                let (log, _) =
                    block_on(Log::open(storage.clone(), LogOptions::default())).expect("reopen");
                assert_eq!(log.append(&records[4]), Ok(5));
                block_on(log.flush()).expect("flush");
                let again = recover(&storage).expect("clean");
                assert_eq!(again.records, records, "{label}");
                assert!(again.report.cut.is_none());
            }
            // A torn tail in one segment followed only by an empty segment.
            let storage = MemStorage::from_files([
                (segment_name(1), bytes[..bytes.len() - 3].to_vec()),
                (segment_name(6), Vec::new()),
            ]);
            let recovered = recover_ok(&storage, condition);
            assert_eq!(recovered.records, records[..4]);
            assert_eq!(names(&storage), vec![segment_name(1)]);
            assert_eq!(action, Action::CutTail);
        }
        Condition::DamagedMiddle => {
            let (_, _, bytes) = five();
            let offsets = common::frame_offsets(&bytes);
            let mut damaged = bytes.clone();
            damaged[offsets[2] + 40] ^= 0xFF;
            let storage = MemStorage::from_files([(segment_name(1), damaged)]);
            expect_corrupt(
                recover(&storage),
                condition,
                &segment_name(1),
                offsets[2] as u64,
            );
            // Damage at the end of one segment with valid records in the next.
            let more = common::records(101, 3);
            let storage = MemStorage::from_files([
                (segment_name(1), bytes[..bytes.len() - 3].to_vec()),
                (segment_name(6), common::segment_bytes(6, &more)),
            ]);
            expect_corrupt(
                recover(&storage),
                condition,
                &segment_name(1),
                offsets[4] as u64,
            );
            assert_eq!(names(&storage).len(), 2, "nothing deleted on refusal");
        }
        Condition::BadMagic => {
            let storage = MemStorage::from_files([(
                segment_name(1),
                b"this is not a Herald write-ahead log file at all".to_vec(),
            )]);
            assert!(matches!(
                recover(&storage),
                Err(StoreError::BadMagic { offset: 0, .. })
            ));
        }
        Condition::UnsupportedVersion => {
            let (_, _, mut bytes) = five();
            let offsets = common::frame_offsets(&bytes);
            // Even on the last record: a version is never a torn write.
            common::patch_header(&mut bytes, offsets[4], |h| {
                h[4..6].copy_from_slice(&2u16.to_le_bytes())
            });
            let storage = MemStorage::from_files([(segment_name(1), bytes)]);
            match recover(&storage) {
                Err(StoreError::UnsupportedVersion {
                    found: 2,
                    supported: 1,
                    offset,
                    ..
                }) => {
                    assert_eq!(offset, offsets[4] as u64)
                }
                other => panic!("{other:?}"),
            }
        }
        Condition::InvalidFrameField => {
            let (_, _, mut bytes) = five();
            let offsets = common::frame_offsets(&bytes);
            common::patch_header(&mut bytes, offsets[1], |h| h[6] = 9);
            let storage = MemStorage::from_files([(segment_name(1), bytes)]);
            expect_corrupt(
                recover(&storage),
                condition,
                &segment_name(1),
                offsets[1] as u64,
            );
            // A snapshot frame inside a segment.
            let (_, _, mut bytes) = five();
            common::patch_header(&mut bytes, offsets[3], |h| h[6] = 2);
            let storage = MemStorage::from_files([(segment_name(1), bytes)]);
            expect_corrupt(
                recover(&storage),
                condition,
                &segment_name(1),
                offsets[3] as u64,
            );
        }
        Condition::UndecodableRecord => {
            let records = common::records(100, 2);
            let mut bytes = common::segment_bytes(1, &records);
            let junk = [0xEEu8; 24];
            herald_store::format::encode_frame(
                &mut bytes,
                herald_store::format::FrameKind::Record,
                3,
                &junk,
            );
            let offset = common::frame_offsets(&bytes)[2];
            let storage = MemStorage::from_files([(segment_name(1), bytes)]);
            expect_corrupt(
                recover(&storage),
                condition,
                &segment_name(1),
                offset as u64,
            );
        }
        Condition::LsnOutOfOrder => {
            let records = common::records(100, 3);
            let mut bytes = common::segment_bytes(1, &records[..2]);
            bytes.extend(common::segment_bytes(4, &records[2..]));
            let offset = common::frame_offsets(&bytes)[2];
            let storage = MemStorage::from_files([(segment_name(1), bytes)]);
            expect_corrupt(
                recover(&storage),
                condition,
                &segment_name(1),
                offset as u64,
            );
            // A gap between segments.
            let storage = MemStorage::from_files([
                (segment_name(1), common::segment_bytes(1, &records[..2])),
                (segment_name(5), common::segment_bytes(5, &records[2..])),
            ]);
            expect_corrupt(recover(&storage), condition, &segment_name(5), 0);
        }
        Condition::MissingHistory => {
            let records = common::records(100, 3);
            let storage =
                MemStorage::from_files([(segment_name(4), common::segment_bytes(4, &records))]);
            expect_corrupt(recover(&storage), condition, &segment_name(4), 0);
            // With a snapshot covering 5, a log starting at 8 misses 6 and 7.
            let storage = MemStorage::from_files([
                (snapshot_name(5), common::snapshot_bytes(5, &records, true)),
                (segment_name(8), common::segment_bytes(8, &records)),
            ]);
            expect_corrupt(recover(&storage), condition, &segment_name(8), 0);
        }
        Condition::RecordCoveredBySnapshot => {
            // Snapshot covers 3; the one segment holds 1..=5.
            let log_records = common::records(100, 5);
            let live = common::records(200, 2);
            let storage = MemStorage::from_files([
                (snapshot_name(3), common::snapshot_bytes(3, &live, true)),
                (segment_name(1), common::segment_bytes(1, &log_records)),
            ]);
            let recovered = recover_ok(&storage, condition);
            let mut expected = live.clone();
            expected.extend_from_slice(&log_records[3..]);
            assert_eq!(recovered.records, expected);
            assert_eq!(recovered.report.skipped_records, 3);
            assert_eq!(recovered.report.last_lsn, 5);
        }
        Condition::SegmentCoveredBySnapshot => {
            let log_records = common::records(100, 8);
            let live = common::records(200, 2);
            let storage = MemStorage::from_files([
                (snapshot_name(5), common::snapshot_bytes(5, &live, true)),
                (segment_name(1), common::segment_bytes(1, &log_records[..5])),
                (segment_name(6), common::segment_bytes(6, &log_records[5..])),
            ]);
            let recovered = recover_ok(&storage, condition);
            let mut expected = live.clone();
            expected.extend_from_slice(&log_records[5..]);
            assert_eq!(recovered.records, expected);
            assert_eq!(names(&storage), vec![snapshot_name(5), segment_name(6)]);
        }
        Condition::SnapshotTempFile => {
            let (storage, records, _) = five();
            storage.put(
                &snapshot_temp_name(5),
                common::snapshot_bytes(5, &records[..2], false),
            );
            let recovered = recover_ok(&storage, condition);
            assert_eq!(recovered.records, records);
            assert_eq!(names(&storage), vec![segment_name(1)]);
        }
        Condition::IncompleteSnapshot => {
            let (storage, records, _) = five();
            // Newer snapshot without its end frame: ignored; an older
            // complete one is used; the segments still cover the rest.
            storage.put(
                &snapshot_name(4),
                common::snapshot_bytes(4, &records[..1], false),
            );
            storage.put(
                &snapshot_name(2),
                common::snapshot_bytes(2, &records[..2], true),
            );
            let recovered = recover_ok(&storage, condition);
            assert_eq!(recovered.records, records);
            assert_eq!(
                recovered.report.snapshot.as_ref().map(|s| s.covers_lsn),
                Some(2)
            );
            // Without an older snapshot, the segments alone.
            let (storage, records, _) = five();
            storage.put(
                &snapshot_name(4),
                common::snapshot_bytes(4, &records[..1], false),
            );
            let recovered = recover_ok(&storage, condition);
            assert_eq!(recovered.records, records);
            assert!(recovered.report.snapshot.is_none());
        }
        Condition::UnknownFile => {
            let (storage, records, _) = five();
            storage.put("notes.txt", b"hello".to_vec());
            let recovered = recover_ok(&storage, condition);
            assert_eq!(recovered.records, records);
            assert!(names(&storage).contains(&"notes.txt".to_string()));
        }
    }
}

#[test]
fn every_row_of_the_recovery_table() {
    let mut seen = Vec::new();
    for (condition, action, why) in RECOVERY_TABLE {
        assert!(!why.is_empty());
        assert!(!seen.contains(condition), "{condition:?} has two rows");
        seen.push(*condition);
        assert_eq!(action_for(*condition), *action);
        walk(*condition);
    }
    assert_eq!(
        seen.len(),
        17,
        "every Condition has a row (walk's match is exhaustive)"
    );
}
