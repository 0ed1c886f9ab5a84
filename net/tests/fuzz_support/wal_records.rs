//! WAL decoding: one record body (`format::decode_record`), the frames of a
//! file (`format::read_frame`), and whole recovery (`Log::open` over
//! `MemStorage`) of segments and a snapshot built from fuzz-chosen records,
//! then damaged: bit flips, cuts, zeroed or inserted bytes, and forged frame
//! headers whose checksum holds (so their lengths, kinds and versions are
//! believed as far as the format lets them be).
//!
//! Arbitrary bytes give an error, never a panic, and never an allocation
//! above `RECORD_BODY_MAX_BYTES` (the driver measures it: see
//! [`super::peak_alloc`]). Beyond that: a record re-encodes to itself;
//! damage can only shorten what recovery returns, never change it; and
//! recovery leaves a log that opens again the same, without a cut, and
//! takes appends.

use futures_lite::future::block_on;
use herald_engine::message::{
    MessageBody, Registration, Removal, StoredMessage, Urgency, WakeupInfo,
};
use herald_engine::record::Record;
use herald_engine::{ChannelId, Uaid};
use herald_store::format::{self, FrameKind, Scan, FRAME_MAGIC};
use herald_store::limits::{FRAME_ALIGN_BYTES, FRAME_HEADER_BYTES, RECORD_BODY_MAX_BYTES};
use herald_store::recovery::{segment_name, snapshot_name};
use herald_store::{Log, LogOptions, MemStorage, StoreError};

use super::peak_alloc::largest_allocation;
use super::Input;

/// Byte 0 picks the input (`% 4 == 0`: the rest is one record body;
/// otherwise it describes a log to build, damage and recover).
pub fn wal_records(data: &[u8]) -> u32 {
    let mut input = Input::new(data);
    if input.one_in(4) {
        let body = input.rest();
        let (decoded, largest) = largest_allocation(|| format::decode_record(body));
        check_allocation(largest, body.len());
        match decoded {
            Ok(record) => {
                assert_eq!(reencoded(&record), record);
                1
            }
            Err(reason) => {
                assert!(!reason.is_empty());
                2
            }
        }
    } else {
        recover(&mut input)
    }
}

/// Hand-written inputs for the smoke test's corpus: record bodies that are
/// empty, all zeros, all ones, and a header-sized run of the frame magic.
pub fn seeds() -> Vec<Vec<u8>> {
    let body = |bytes: &[u8]| [&[0][..], bytes].concat();
    vec![
        body(b""),
        body(&[0; 64]),
        body(&[0xff; 64]),
        body(&FRAME_MAGIC.repeat(FRAME_HEADER_BYTES / 4)),
    ]
}

/// Allocations while decoding beyond a copy of the bytes themselves: the
/// recovered records and their bookkeeping (a driver's log holds a few).
const BOOKKEEPING_BYTES_MAX: usize = 16 << 10;

/// Decoding `input_bytes` bytes allocated at most `largest` at once: never
/// more than the format's limit, and never more than the bytes present
/// (plus bookkeeping), whatever length a header claims.
fn check_allocation(largest: usize, input_bytes: usize) {
    assert!(
        largest <= RECORD_BODY_MAX_BYTES,
        "a {largest}-byte allocation (limit {RECORD_BODY_MAX_BYTES})"
    );
    assert!(
        largest <= input_bytes + BOOKKEEPING_BYTES_MAX,
        "a {largest}-byte allocation to decode {input_bytes} bytes"
    );
}

fn reencoded(record: &Record) -> Record {
    let body = format::encode_record(record).expect("a small record encodes");
    format::decode_record(&body).expect("an encoded record decodes")
}

fn u64(input: &mut Input) -> u64 {
    u64::from(input.u32()) << 32 | u64::from(input.u32())
}

fn text(input: &mut Input) -> Option<String> {
    input.one_in(2).then(|| input.text())
}

/// A record of any kind with contents from the input.
fn record(input: &mut Input) -> Record {
    let uaid = Uaid(input.array());
    let channel = ChannelId(input.array());
    match input.below(11) {
        0 => Record::UaidCreated {
            uaid,
            at_ms: u64(input),
        },
        1 => Record::ChannelRegistered(Registration {
            uaid,
            channel,
            key_hash: input.one_in(2).then(|| input.array()),
        }),
        2 => Record::ChannelUnregistered { uaid, channel },
        3..=6 => Record::MessageStored(StoredMessage {
            uaid,
            channel,
            seq: u64(input),
            arrived_ms: u64(input),
            expires_ms: u64(input),
            urgency: Urgency::from_u8(input.byte() % 4).unwrap_or_default(),
            topic: text(input),
            body: match input.below(4) {
                0 => MessageBody::Version(u64(input)),
                1 => MessageBody::Desktop {
                    body: input.text(),
                    ttl_s: input.one_in(2).then(|| u64(input)),
                },
                2 => MessageBody::WebPush {
                    data: input.chunk().to_vec(),
                    encoding: text(input),
                    encryption: text(input),
                    crypto_key: text(input),
                },
                _ => MessageBody::Extended {
                    id: input.text(),
                    message: input.text(),
                    timestamp_ms: u64(input),
                    priority: input.byte(),
                },
            },
        }),
        7 => Record::MessageRemoved {
            uaid,
            channel,
            seq: u64(input),
            reason: Removal::from_u8(input.byte() % 6).unwrap_or(Removal::Acked),
        },
        8 => Record::WakeupSet {
            uaid,
            wakeup: input.one_in(3).then(|| WakeupInfo {
                ip: if input.one_in(2) {
                    std::net::IpAddr::from(input.array::<4>())
                } else {
                    std::net::IpAddr::from(input.array::<16>())
                },
                port: u16::from_le_bytes(input.array()),
                mcc: input.text(),
                mnc: input.text(),
                netid: input.text(),
            }),
        },
        9 => Record::ChannelVersion {
            uaid,
            channel,
            version: u64(input),
        },
        _ => Record::WebAppRegistered {
            uaid,
            channel,
            url_token: input.text(),
            public_key_der: input.chunk().to_vec(),
        },
    }
}

fn frame(out: &mut Vec<u8>, kind: FrameKind, lsn: u64, record: &Record) {
    let body = format::encode_record(record).expect("a small record encodes");
    format::encode_frame(out, kind, lsn, &body);
}

/// A frame header whose checksum holds, every other field from the input:
/// the header is believed, so only the format's own checks stand between
/// its `body_len` and an allocation.
fn forged_frame(input: &mut Input) -> Vec<u8> {
    let body = input.chunk();
    let mut header = [0u8; FRAME_HEADER_BYTES];
    header[0..4].copy_from_slice(&FRAME_MAGIC);
    let version: u16 = if input.one_in(4) {
        input.byte().into()
    } else {
        1
    };
    header[4..6].copy_from_slice(&version.to_le_bytes());
    header[6] = if input.one_in(4) { input.byte() } else { 1 };
    if input.one_in(8) {
        header[7] = input.byte();
        header[12] = input.byte();
    }
    let limit = RECORD_BODY_MAX_BYTES as u32;
    let body_len = match input.below(5) {
        0 => body.len() as u32,
        // Longer than the bytes that follow, within the limit.
        1 => body.len() as u32 + 1 + u32::from(input.byte()),
        2 => input.u32() % (limit + 1),
        // At the limit and just past it.
        3 => limit + u32::from(input.byte()),
        _ => input.u32(),
    };
    header[8..12].copy_from_slice(&body_len.to_le_bytes());
    header[16..24].copy_from_slice(&u64::from(input.byte()).to_le_bytes());
    let body_crc = if input.one_in(2) {
        crc32c::crc32c(body)
    } else {
        input.u32()
    };
    header[24..28].copy_from_slice(&body_crc.to_le_bytes());
    let header_crc = crc32c::crc32c(&header[0..28]);
    header[28..32].copy_from_slice(&header_crc.to_le_bytes());
    let mut out = header.to_vec();
    out.extend_from_slice(body);
    out.resize(out.len().div_ceil(FRAME_ALIGN_BYTES) * FRAME_ALIGN_BYTES, 0);
    out
}

/// Damages one of `files`; true if it may have made a frame that passes
/// every check (a forged one), false if it can only destroy.
fn damage(input: &mut Input, files: &mut [(String, Vec<u8>)]) -> bool {
    let file = input.below(files.len());
    let bytes = &mut files[file].1;
    let at = (input.u32() as usize) % (bytes.len() + 1);
    let aligned = at / FRAME_ALIGN_BYTES * FRAME_ALIGN_BYTES;
    match input.below(6) {
        0 if !bytes.is_empty() => {
            let at = at.min(bytes.len() - 1);
            bytes[at] ^= 1 << input.below(8);
        }
        1 => bytes.truncate(at),
        2 => {
            let end = (at + input.below(64)).min(bytes.len());
            bytes[at..end].fill(0);
        }
        3 => {
            let junk = input.chunk().to_vec();
            bytes.splice(aligned..aligned, junk);
        }
        4 => bytes.resize(bytes.len() + input.below(64), 0),
        _ => {
            let forged = forged_frame(input);
            bytes.splice(aligned..aligned, forged);
            return true;
        }
    }
    false
}

fn recover(input: &mut Input) -> u32 {
    let records: Vec<Record> = (0..input.below(6)).map(|_| record(input)).collect();
    for record in &records {
        assert_eq!(&reencoded(record), record);
    }
    // A snapshot covering the first `covered` records, and the log split
    // into two segments after `split` records (each 0: none).
    let covered = input.below(records.len() + 1);
    let split = input.below(records.len() + 1);
    let mut files = Vec::new();
    if covered > 0 {
        let mut snapshot = Vec::new();
        for (ordinal, record) in records[..covered].iter().enumerate() {
            frame(
                &mut snapshot,
                FrameKind::SnapshotRecord,
                ordinal as u64 + 1,
                record,
            );
        }
        let end = format::encode_snapshot_end(covered as u64);
        format::encode_frame(&mut snapshot, FrameKind::SnapshotEnd, covered as u64, &end);
        files.push((snapshot_name(covered as u64), snapshot));
    }
    let mut segments = vec![(1, Vec::new())];
    if split > 0 && split < records.len() {
        segments.push((split + 1, Vec::new()));
    }
    for (index, record) in records.iter().enumerate() {
        let lsn = index + 1;
        let segment = segments
            .iter()
            .rposition(|(first, _)| *first <= lsn)
            .unwrap_or(0);
        frame(
            &mut segments[segment].1,
            FrameKind::Record,
            lsn as u64,
            record,
        );
    }
    files.extend(
        segments
            .into_iter()
            .map(|(first, bytes)| (segment_name(first as u64), bytes)),
    );
    let mut damaged = false;
    let mut forged = false;
    for _ in 0..input.below(4) {
        damaged = true;
        forged |= damage(input, &mut files);
    }
    for (_, bytes) in &files {
        scan(bytes);
    }

    let file_bytes = files.iter().map(|(_, bytes)| bytes.len()).sum();
    let storage = MemStorage::from_files(files);
    let (opened, largest) =
        largest_allocation(|| block_on(Log::open(storage.clone(), LogOptions::default())));
    check_allocation(largest, file_bytes);
    let recovered = match opened {
        Err(error) => {
            assert!(damaged, "an undamaged log was refused: {error}");
            return 100 + refusal(&error);
        }
        Ok((log, recovered)) => {
            drop(log);
            recovered.records
        }
    };
    if !damaged {
        assert_eq!(recovered, records, "an undamaged log");
    } else if !forged {
        assert!(
            records.starts_with(&recovered),
            "recovery returned records that were not written"
        );
    }

    // Recovery's cuts and deletions leave a clean log: it opens again with
    // the same records and nothing to cut, and an append lands after them.
    let (log, again) = block_on(Log::open(storage.clone(), LogOptions::default()))
        .unwrap_or_else(|error| panic!("a recovered log does not open again: {error}"));
    assert_eq!(again.records, recovered, "a second recovery differs");
    assert_eq!(again.report.cut, None, "a second recovery cut again");
    // Rarely (and never once the input is used up, where every byte reads
    // 0): the append writes, and the reopen reads, the segment's 1 MiB of
    // zeros written ahead.
    let appended = input.below(8) == 1;
    if appended {
        let fresh = record(input);
        log.append(&fresh).expect("append after recovery");
        block_on(log.flush()).expect("flush after recovery");
        drop(log);
        let (_, after) = block_on(Log::open(storage, LogOptions::default()))
            .unwrap_or_else(|error| panic!("the log does not open after an append: {error}"));
        let mut expected = recovered.clone();
        expected.push(fresh);
        assert_eq!(after.records, expected, "the appended record");
    }
    let conditions = again
        .report
        .conditions
        .iter()
        .fold(0u32, |acc, condition| acc | 1 << (*condition as u32));
    200 + u32::from(appended) + 2 * recovered.len().min(7) as u32 + (conditions << 4)
}

/// The error of a refused log: it names damage, never an IO failure of the
/// storage (which recovery would cause by reading a file it deleted).
fn refusal(error: &StoreError) -> u32 {
    match error {
        StoreError::Corrupt { .. } => 1,
        StoreError::UnsupportedVersion { .. } => 2,
        StoreError::BadMagic { .. } => 3,
        other => panic!("recovery failed with {other:?}"),
    }
}

/// Every aligned offset of a file, read as a frame: what passes stays
/// inside the file and under the body limit, and its body either decodes
/// to a record that re-encodes to itself or is refused.
fn scan(bytes: &[u8]) {
    for offset in (0..=bytes.len()).step_by(FRAME_ALIGN_BYTES) {
        if let Scan::Frame(frame) = format::read_frame(bytes, offset) {
            assert!(frame.body.len() <= RECORD_BODY_MAX_BYTES);
            assert_eq!(frame.len_on_disk % FRAME_ALIGN_BYTES, 0);
            assert!(offset + frame.len_on_disk <= bytes.len());
            if let Ok(record) = format::decode_record(frame.body) {
                assert_eq!(reencoded(&record), record);
            }
        }
    }
}
