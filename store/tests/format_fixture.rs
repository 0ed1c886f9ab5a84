//! The on-disk record encoding, pinned by a byte fixture.
//!
//! `tests/fixtures/records-v<FORMAT_VERSION>.hex` holds a segment as this
//! format version writes it: one record frame (LSN 1, 2, ...) for each shape
//! in [`fixture_records`]. The round-trip tests elsewhere cannot see a format
//! change (a reordered field, a wider integer, a moved header byte), because
//! writer and reader change together; this test compares with bytes written
//! by an earlier build. The fixture must only change with a version bump
//! (store/WAL_FORMAT.md, "Format fixture").

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures_lite::future::block_on;
use herald_engine::message::{
    MessageBody, Registration, Removal, StoredMessage, Urgency, WakeupInfo,
};
use herald_engine::record::Record;
use herald_engine::{ChannelId, Uaid};
use herald_store::format::{self, FrameKind, Scan, FORMAT_VERSION};
use herald_store::recovery::segment_name;
use herald_store::{Log, LogOptions, MemStorage};

/// Hex bytes per line of the fixture file.
const HEX_BYTES_PER_LINE: usize = 32;

const UAID: Uaid = Uaid([
    0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF, 0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE,
]);
const CHANNEL: ChannelId = ChannelId([
    0xC0, 0xC1, 0xC2, 0xC3, 0xC4, 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA, 0xCB, 0xCC, 0xCD, 0xCE, 0xCF,
]);

fn message(seq: u64, urgency: Urgency, topic: Option<&str>, body: MessageBody) -> Record {
    Record::MessageStored(StoredMessage {
        uaid: UAID,
        channel: CHANNEL,
        seq,
        arrived_ms: 1_700_000_000_123,
        expires_ms: 1_700_000_060_123,
        urgency,
        topic: topic.map(str::to_owned),
        body,
    })
}

fn wakeup(ip: IpAddr) -> Record {
    Record::WakeupSet {
        uaid: UAID,
        wakeup: Some(WakeupInfo {
            ip,
            port: 2442,
            mcc: "214".into(),
            mnc: "07".into(),
            netid: "net-1".into(),
        }),
    }
}

/// Every `Record` variant, every message body, both IP families, and each
/// optional field both set and unset, with fixed values. Append only: the
/// fixture holds them in this order.
fn fixture_records() -> Vec<(&'static str, Record)> {
    vec![
        (
            "UaidCreated",
            Record::UaidCreated {
                uaid: UAID,
                at_ms: 1_700_000_000_000,
            },
        ),
        (
            "ChannelRegistered with a key hash",
            Record::ChannelRegistered(Registration {
                uaid: UAID,
                channel: CHANNEL,
                key_hash: Some([0x5A; 32]),
            }),
        ),
        (
            "ChannelRegistered without a key hash",
            Record::ChannelRegistered(Registration {
                uaid: UAID,
                channel: CHANNEL,
                key_hash: None,
            }),
        ),
        (
            "ChannelUnregistered",
            Record::ChannelUnregistered {
                uaid: UAID,
                channel: CHANNEL,
            },
        ),
        (
            "MessageStored, SimplePush version",
            message(1, Urgency::Normal, None, MessageBody::Version(42)),
        ),
        (
            "MessageStored, desktop body",
            message(
                2,
                Urgency::VeryLow,
                None,
                MessageBody::Desktop {
                    body: "hello ✓".into(),
                    ttl_s: Some(60),
                },
            ),
        ),
        (
            "MessageStored, desktop body without TTL",
            message(
                3,
                Urgency::Low,
                None,
                MessageBody::Desktop {
                    body: String::new(),
                    ttl_s: None,
                },
            ),
        ),
        (
            "MessageStored, Web Push with every header",
            message(
                4,
                Urgency::High,
                Some("topic-1"),
                MessageBody::WebPush {
                    data: (0u8..40).collect(),
                    encoding: Some("aesgcm".into()),
                    encryption: Some("salt=c2FsdA".into()),
                    crypto_key: Some("dh=a2V5".into()),
                },
            ),
        ),
        (
            "MessageStored, Web Push without data or headers",
            message(
                5,
                Urgency::Normal,
                None,
                MessageBody::WebPush {
                    data: Vec::new(),
                    encoding: None,
                    encryption: None,
                    crypto_key: None,
                },
            ),
        ),
        (
            "MessageStored, extended",
            message(
                6,
                Urgency::Low,
                Some("news"),
                MessageBody::Extended {
                    id: "id-7".into(),
                    message: "extended text".into(),
                    timestamp_ms: 1_700_000_000_456,
                    priority: 3,
                },
            ),
        ),
        (
            "MessageRemoved",
            Record::MessageRemoved {
                uaid: UAID,
                channel: CHANNEL,
                seq: 4,
                reason: Removal::Replaced,
            },
        ),
        (
            "WakeupSet, IPv4",
            wakeup(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3))),
        ),
        (
            "WakeupSet, IPv6",
            wakeup(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1))),
        ),
        (
            "WakeupSet, none",
            Record::WakeupSet {
                uaid: UAID,
                wakeup: None,
            },
        ),
        (
            "ChannelVersion",
            Record::ChannelVersion {
                uaid: UAID,
                channel: CHANNEL,
                version: 9_000_000_001,
            },
        ),
        (
            "WebAppRegistered",
            Record::WebAppRegistered {
                uaid: UAID,
                channel: CHANNEL,
                url_token: "dG9rZW4".into(),
                public_key_der: vec![0x30, 0x82, 0x01, 0x22, 0x30, 0x0D],
            },
        ),
    ]
}

/// The frame this build writes for record `index` (LSN `index + 1`).
fn encode(index: usize, record: &Record) -> Vec<u8> {
    let body = format::encode_record(record).expect("a fixture record encodes");
    let mut frame = Vec::new();
    format::encode_frame(&mut frame, FrameKind::Record, index as u64 + 1, &body);
    frame
}

fn encode_all(records: &[(&str, Record)]) -> Vec<Vec<u8>> {
    records
        .iter()
        .enumerate()
        .map(|(index, (_, record))| encode(index, record))
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut out, byte| {
        let _ = write!(out, "{byte:02x}");
        out
    })
}

/// The fixture file's text for `frames`: a comment naming each record, then
/// its bytes in hex.
fn render(records: &[(&str, Record)], frames: &[Vec<u8>]) -> String {
    let mut text = format!(
        "# Herald WAL format version {FORMAT_VERSION}: a segment with one record frame per\n\
         # line group (LSN 1, 2, ...), in hex. Written by store/tests/format_fixture.rs;\n\
         # changes only with a format version bump (store/WAL_FORMAT.md).\n"
    );
    for (index, ((name, _), frame)) in records.iter().zip(frames).enumerate() {
        let _ = writeln!(text, "# LSN {}: {name}", index + 1);
        for line in frame.chunks(HEX_BYTES_PER_LINE) {
            let _ = writeln!(text, "{}", hex(line));
        }
    }
    text
}

/// The bytes of a fixture file: hex lines, `#` comments and blank lines skipped.
fn parse(text: &str) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.len() % 2 != 0 || !line.is_ascii() {
            return Err(format!("line {}: not hex bytes", number + 1));
        }
        for pair in line.as_bytes().chunks(2) {
            let digits = std::str::from_utf8(pair).map_err(|err| err.to_string())?;
            let byte = u8::from_str_radix(digits, 16)
                .map_err(|err| format!("line {}: {digits:?}: {err}", number + 1))?;
            bytes.push(byte);
        }
    }
    Ok(bytes)
}

fn fixture_path() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("records-v{FORMAT_VERSION}.hex"))
}

/// The fixture's bytes; with none for this version (a bump), fails with the
/// text to commit as the new version's fixture.
fn fixture_bytes(records: &[(&str, Record)], frames: &[Vec<u8>]) -> Vec<u8> {
    let path = fixture_path();
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| {
        panic!(
            "no format fixture {} ({err}). If FORMAT_VERSION was bumped, review \
             and commit this as the new version's fixture:\n{}",
            path.display(),
            render(records, frames)
        )
    });
    parse(&text).unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

/// Offset of the first byte where `a` and `b` differ.
fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()))
}

#[test]
fn the_encoder_writes_the_fixture_bytes() {
    let records = fixture_records();
    let frames = encode_all(&records);
    let fixture = fixture_bytes(&records, &frames);
    let mut at = 0;
    for ((name, _), frame) in records.iter().zip(&frames) {
        let end = (at + frame.len()).min(fixture.len());
        let pinned = &fixture[at..end];
        assert!(
            pinned == &frame[..],
            "format version {FORMAT_VERSION} changed: the frame of {name:?} at fixture \
             offset {at} differs from its byte {} on (bytes 0..32 are the header).\n fixture: {}\n encoder: {}\n\
             A format change needs a version bump (store/WAL_FORMAT.md).",
            first_difference(pinned, frame),
            hex(pinned),
            hex(frame)
        );
        at = end;
    }
    assert_eq!(
        at,
        fixture.len(),
        "the fixture holds more frames than fixture_records"
    );
}

#[test]
fn the_reader_decodes_the_fixture_to_the_records() {
    let records = fixture_records();
    let frames = encode_all(&records);
    let fixture = fixture_bytes(&records, &frames);
    let mut at = 0;
    for (index, (name, record)) in records.iter().enumerate() {
        let frame = match format::read_frame(&fixture, at) {
            Scan::Frame(frame) => frame,
            other => panic!("{name}: no frame at fixture offset {at}: {other:?}"),
        };
        assert_eq!(frame.kind, FrameKind::Record, "{name}");
        assert_eq!(frame.lsn, index as u64 + 1, "{name}");
        let decoded = format::decode_record(frame.body)
            .unwrap_or_else(|err| panic!("{name}: the fixture's body does not decode: {err}"));
        assert_eq!(&decoded, record, "{name}");
        at += frame.len_on_disk;
    }
    assert!(
        matches!(format::read_frame(&fixture, at), Scan::End),
        "nothing after the last record"
    );

    // Recovery, as at startup, reads the fixture as a segment.
    let storage = MemStorage::from_files([(segment_name(1), fixture)]);
    let (log, recovered) =
        block_on(Log::open(storage, LogOptions::default())).expect("the fixture recovers");
    let expected: Vec<Record> = records.into_iter().map(|(_, record)| record).collect();
    assert_eq!(recovered.records, expected);
    assert!(recovered.report.cut.is_none());
    assert_eq!(log.last_lsn(), expected.len() as u64);
}
