//! Helpers shared by the store's integration tests.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use herald_engine::message::{
    MessageBody, Registration, Removal, StoredMessage, Urgency, WakeupInfo,
};
use herald_engine::record::Record;
use herald_engine::{ChannelId, Lsn, Uaid};
use herald_store::format::{self, FrameKind};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub fn uaid(n: u64) -> Uaid {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&n.to_le_bytes());
    bytes[8] = 0xAB;
    Uaid(bytes)
}

pub fn channel(n: u64) -> ChannelId {
    let mut bytes = [0u8; 16];
    bytes[8..].copy_from_slice(&n.to_le_bytes());
    ChannelId(bytes)
}

/// One record of every kind and shape, chosen by `i`, with contents from `rng`.
// `is_multiple_of` is newer than the workspace's rust-version.
#[allow(clippy::manual_is_multiple_of)]
pub fn record(rng: &mut StdRng, i: u64) -> Record {
    let u = uaid(rng.gen_range(0..64));
    let ch = channel(rng.gen_range(0..16));
    match i % 9 {
        0 => Record::UaidCreated {
            uaid: u,
            at_ms: rng.gen::<u64>() >> 20,
        },
        1 => Record::ChannelRegistered(Registration {
            uaid: u,
            channel: ch,
            key_hash: if rng.gen_bool(0.5) {
                Some([7u8; 32])
            } else {
                None
            },
        }),
        2 => Record::ChannelUnregistered {
            uaid: u,
            channel: ch,
        },
        3 => Record::MessageStored(StoredMessage {
            uaid: u,
            channel: ch,
            seq: i,
            arrived_ms: 1_700_000_000_000 + i,
            expires_ms: 0,
            urgency: Urgency::Normal,
            topic: None,
            body: MessageBody::Version(rng.gen()),
        }),
        4 => Record::MessageStored(StoredMessage {
            uaid: u,
            channel: ch,
            seq: i,
            arrived_ms: 1_700_000_000_000 + i,
            expires_ms: 1_700_000_100_000 + i,
            urgency: Urgency::High,
            topic: Some(format!("topic-{}", i % 5)),
            body: MessageBody::WebPush {
                data: (0..rng.gen_range(0..300usize)).map(|b| b as u8).collect(),
                encoding: Some("aes128gcm".into()),
                encryption: None,
                crypto_key: if i % 2 == 0 {
                    Some("dh=abc".into())
                } else {
                    None
                },
            },
        }),
        5 => Record::MessageStored(StoredMessage {
            uaid: u,
            channel: ch,
            seq: i,
            arrived_ms: 1,
            expires_ms: 2,
            urgency: Urgency::VeryLow,
            topic: None,
            body: MessageBody::Desktop {
                body: format!("hello {i} ✓"),
                ttl_s: Some(60),
            },
        }),
        6 => Record::MessageRemoved {
            uaid: u,
            channel: ch,
            seq: i / 2,
            reason: Removal::from_u8((i % 6) as u8).unwrap_or(Removal::Acked),
        },
        7 => Record::WakeupSet {
            uaid: u,
            wakeup: Some(WakeupInfo {
                ip: if i % 2 == 0 {
                    IpAddr::V4(Ipv4Addr::new(10, 0, 0, (i % 250) as u8))
                } else {
                    IpAddr::V6(Ipv6Addr::LOCALHOST)
                },
                port: 2442,
                mcc: "310".into(),
                mnc: "410".into(),
                netid: "net".into(),
            }),
        },
        _ => Record::WakeupSet {
            uaid: u,
            wakeup: None,
        },
    }
}

pub fn records(seed: u64, count: u64) -> Vec<Record> {
    let mut rng = StdRng::seed_from_u64(seed);
    (0..count).map(|i| record(&mut rng, i)).collect()
}

/// Segment bytes holding `records` with LSNs from `first_lsn`.
pub fn segment_bytes(first_lsn: Lsn, records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, record) in records.iter().enumerate() {
        let body = format::encode_record(record).expect("encodes");
        format::encode_frame(&mut out, FrameKind::Record, first_lsn + i as u64, &body);
    }
    out
}

/// Offsets at which each frame of a segment built by `segment_bytes` starts.
pub fn frame_offsets(bytes: &[u8]) -> Vec<usize> {
    let mut offsets = Vec::new();
    let mut at = 0;
    while let format::Scan::Frame(frame) = format::read_frame(bytes, at) {
        offsets.push(at);
        at += frame.len_on_disk;
    }
    offsets
}

/// Where the frames of `bytes` end: a segment's records, without the zeros
/// the log writes ahead of them in the active segment.
pub fn frames_end(bytes: &[u8]) -> usize {
    let mut at = 0;
    while let format::Scan::Frame(frame) = format::read_frame(bytes, at) {
        at += frame.len_on_disk;
    }
    at
}

/// A complete snapshot covering `covers` holding `records`.
pub fn snapshot_bytes(covers: Lsn, records: &[Record], with_end: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, record) in records.iter().enumerate() {
        let body = format::encode_record(record).expect("encodes");
        format::encode_frame(&mut out, FrameKind::SnapshotRecord, i as u64 + 1, &body);
    }
    if with_end {
        format::encode_frame(
            &mut out,
            FrameKind::SnapshotEnd,
            covers,
            &format::encode_snapshot_end(records.len() as u64),
        );
    }
    out
}

/// Rewrites the header of the frame at `offset` with `edit` and fixes its
/// header checksum, so the frame passes the checksum but says something else.
pub fn patch_header(bytes: &mut [u8], offset: usize, edit: impl FnOnce(&mut [u8])) {
    edit(&mut bytes[offset..offset + 28]);
    let crc = crc32c::crc32c(&bytes[offset..offset + 28]);
    bytes[offset + 28..offset + 32].copy_from_slice(&crc.to_le_bytes());
}

/// A unique temp dir, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "herald-store-{tag}-{}-{n}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&path).expect("temp dir");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
