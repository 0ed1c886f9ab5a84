//! The on-disk format: frames and the rkyv-encoded record bodies inside them.
//! `WAL_FORMAT.md` (next to `Cargo.toml`) is the reference; the layout is
//! repeated at [`encode_frame`].
//!
//! The record types persisted are store's own mirror types (`Disk*`), not the
//! engine's: the engine may rename or reshape its types freely; only the
//! conversion here has to follow, and the bytes on disk stay what they were.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use herald_engine::message::{
    MessageBody, Registration, Removal, StoredMessage, Urgency, WakeupInfo,
};
use herald_engine::record::Record;
use herald_engine::{ChannelId, Uaid};
use rkyv::util::AlignedVec;

use crate::limits::{FRAME_ALIGN_BYTES, FRAME_HEADER_BYTES, RECORD_BODY_MAX_BYTES};
use crate::StoreError;

/// First four bytes of every frame.
pub const FRAME_MAGIC: [u8; 4] = *b"HWAL";
/// The frame/record format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 1;

/// What a frame holds; byte 6 of the header.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FrameKind {
    /// A log record in a segment; the header's LSN is the record's LSN.
    Record = 1,
    /// A record of a snapshot; the header's LSN field is its ordinal (1, 2, ...).
    SnapshotRecord = 2,
    /// Last frame of a complete snapshot; LSN field = the LSN the snapshot
    /// covers, body = record count (u64 LE).
    SnapshotEnd = 3,
}

impl FrameKind {
    fn from_u8(value: u8) -> Option<FrameKind> {
        match value {
            1 => Some(FrameKind::Record),
            2 => Some(FrameKind::SnapshotRecord),
            3 => Some(FrameKind::SnapshotEnd),
            _ => None,
        }
    }
}

/// A frame that passed every check.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    pub kind: FrameKind,
    pub lsn: u64,
    pub body: &'a [u8],
    pub offset: usize,
    /// Header + body + padding: where the next frame starts, relative to `offset`.
    pub len_on_disk: usize,
    pub body_crc: u32,
}

/// Damage of the kind a torn or partly lost write leaves (or bit rot). Whether
/// it is cut or refused depends on what follows (see the recovery table).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Damage {
    ShortHeader,
    BadMagic,
    HeaderChecksum,
    ShortBody,
    BodyChecksum,
    NonZeroPadding,
}

impl Damage {
    pub fn describe(self) -> &'static str {
        match self {
            Damage::ShortHeader => "incomplete frame header",
            Damage::BadMagic => "bad frame magic",
            Damage::HeaderChecksum => "frame header checksum mismatch",
            Damage::ShortBody => "incomplete record body",
            Damage::BodyChecksum => "record body checksum mismatch",
            Damage::NonZeroPadding => "non-zero frame padding",
        }
    }
}

/// A header that checks out (magic and checksum) but says something this build
/// cannot accept: never a torn write, so never cut.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fatal {
    /// A file's first bytes are neither a frame nor zeros.
    BadMagicAtStart,
    UnsupportedVersion(u16),
    BadField(&'static str),
}

/// What sits at one offset of a file.
#[derive(Clone, Copy, Debug)]
pub enum Scan<'a> {
    Frame(Frame<'a>),
    /// Exactly at the end of the bytes.
    End,
    /// Everything from here on is zero bytes (preallocated or zero-extended).
    ZeroTail,
    Damaged(Damage),
    Fatal(Fatal),
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    let mut word = [0u8; 2];
    word.copy_from_slice(&bytes[at..at + 2]);
    u16::from_le_bytes(word)
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Bytes a frame with a body of `body_len` bytes takes on disk.
pub fn frame_len_on_disk(body_len: usize) -> usize {
    FRAME_HEADER_BYTES + body_len.div_ceil(FRAME_ALIGN_BYTES) * FRAME_ALIGN_BYTES
}

/// Appends one frame to `out`.
///
/// ```text
/// offset size field        meaning
///  0      4   magic        b"HWAL"
///  4      2   version      u16 LE, FORMAT_VERSION (1)
///  6      1   kind         1 record, 2 snapshot record, 3 snapshot end
///  7      1   flags        0 (reserved; non-zero is refused)
///  8      4   body_len     u32 LE, body bytes without padding, <= RECORD_BODY_MAX_BYTES
/// 12      4   reserved     0
/// 16      8   lsn          u64 LE: record LSN / snapshot ordinal / snapshot covered LSN
/// 24      4   body_crc     crc32c of the body_len body bytes
/// 28      4   header_crc   crc32c of header bytes 0..28
/// 32      n   body         rkyv archive of a DiskRecord (snapshot end: u64 LE count)
/// 32+n    p   padding      zeros up to the next multiple of 8
/// ```
pub fn encode_frame(out: &mut Vec<u8>, kind: FrameKind, lsn: u64, body: &[u8]) {
    debug_assert!(body.len() <= RECORD_BODY_MAX_BYTES);
    debug_assert!(out.len() % FRAME_ALIGN_BYTES == 0);
    let mut header = [0u8; FRAME_HEADER_BYTES];
    header[0..4].copy_from_slice(&FRAME_MAGIC);
    header[4..6].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    header[6] = kind as u8;
    header[7] = 0;
    header[8..12].copy_from_slice(&(body.len() as u32).to_le_bytes());
    header[16..24].copy_from_slice(&lsn.to_le_bytes());
    header[24..28].copy_from_slice(&crc32c::crc32c(body).to_le_bytes());
    let header_crc = crc32c::crc32c(&header[0..28]);
    header[28..32].copy_from_slice(&header_crc.to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(body);
    let padded = frame_len_on_disk(body.len()) - FRAME_HEADER_BYTES;
    out.resize(out.len() + (padded - body.len()), 0);
}

/// Reads whatever is at `offset` of `bytes`. Never panics, whatever the bytes.
/// The order of checks is part of the recovery rules (see WAL_FORMAT.md).
pub fn read_frame(bytes: &[u8], offset: usize) -> Scan<'_> {
    if offset >= bytes.len() {
        return Scan::End;
    }
    let rest = &bytes[offset..];
    // Only a zero first byte can start a zero tail, which keeps this check
    // from turning a scan quadratic.
    if rest[0] == 0 && rest.iter().all(|&b| b == 0) {
        return Scan::ZeroTail;
    }
    if rest.len() < FRAME_HEADER_BYTES {
        return Scan::Damaged(Damage::ShortHeader);
    }
    let header = &rest[..FRAME_HEADER_BYTES];
    if header[0..4] != FRAME_MAGIC {
        // A torn write leaves a prefix of what was written, then zeros (or
        // nothing). Only other bytes at the start of a file mean "not a WAL".
        let torn_magic = (0..=4)
            .any(|k| header[..k] == FRAME_MAGIC[..k] && header[k..4].iter().all(|&b| b == 0));
        if offset == 0 && !torn_magic {
            return Scan::Fatal(Fatal::BadMagicAtStart);
        }
        return Scan::Damaged(Damage::BadMagic);
    }
    if crc32c::crc32c(&header[0..28]) != u32_at(header, 28) {
        return Scan::Damaged(Damage::HeaderChecksum);
    }
    let version = u16_at(header, 4);
    if version != FORMAT_VERSION {
        return Scan::Fatal(Fatal::UnsupportedVersion(version));
    }
    let Some(kind) = FrameKind::from_u8(header[6]) else {
        return Scan::Fatal(Fatal::BadField("unknown frame kind"));
    };
    if header[7] != 0 || u32_at(header, 12) != 0 {
        return Scan::Fatal(Fatal::BadField("reserved header bytes are not zero"));
    }
    let body_len = u32_at(header, 8) as usize;
    if body_len > RECORD_BODY_MAX_BYTES {
        return Scan::Fatal(Fatal::BadField("body length above RECORD_BODY_MAX_BYTES"));
    }
    let len_on_disk = frame_len_on_disk(body_len);
    if rest.len() < len_on_disk {
        return Scan::Damaged(Damage::ShortBody);
    }
    let body = &rest[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + body_len];
    let body_crc = u32_at(header, 24);
    if crc32c::crc32c(body) != body_crc {
        return Scan::Damaged(Damage::BodyChecksum);
    }
    if rest[FRAME_HEADER_BYTES + body_len..len_on_disk]
        .iter()
        .any(|&b| b != 0)
    {
        return Scan::Damaged(Damage::NonZeroPadding);
    }
    Scan::Frame(Frame {
        kind,
        lsn: u64_at(header, 16),
        body,
        offset,
        len_on_disk,
        body_crc,
    })
}

/// The first offset at or after `from` (rounded up to the frame alignment)
/// where a frame with valid magic and both checksums starts, if any. Used to
/// tell a torn tail (nothing valid after the damage) from corruption in the
/// middle (valid records after it).
pub fn find_valid_frame(bytes: &[u8], from: usize) -> Option<usize> {
    let mut at = from.div_ceil(FRAME_ALIGN_BYTES) * FRAME_ALIGN_BYTES;
    while at + FRAME_HEADER_BYTES <= bytes.len() {
        if bytes[at..at + 4] == FRAME_MAGIC {
            match read_frame(bytes, at) {
                Scan::Frame(_) | Scan::Fatal(_) => return Some(at),
                _ => {}
            }
        }
        at += FRAME_ALIGN_BYTES;
    }
    None
}

// ---------------------------------------------------------------------------
// Record bodies: store's own rkyv types, mapped to and from the engine's.

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
pub enum DiskRecord {
    UaidCreated {
        uaid: [u8; 16],
        at_ms: u64,
    },
    ChannelRegistered {
        uaid: [u8; 16],
        channel: [u8; 16],
        key_hash: Option<[u8; 32]>,
    },
    ChannelUnregistered {
        uaid: [u8; 16],
        channel: [u8; 16],
    },
    MessageStored(DiskMessage),
    MessageRemoved {
        uaid: [u8; 16],
        channel: [u8; 16],
        seq: u64,
        /// `Removal::to_u8`.
        reason: u8,
    },
    WakeupSet {
        uaid: [u8; 16],
        wakeup: Option<DiskWakeup>,
    },
    /// Added after the first release of format 1: new variants go last so
    /// that every earlier record keeps its discriminant.
    ChannelVersion {
        uaid: [u8; 16],
        channel: [u8; 16],
        version: u64,
    },
    WebAppRegistered {
        uaid: [u8; 16],
        channel: [u8; 16],
        url_token: String,
        public_key_der: Vec<u8>,
    },
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
pub struct DiskMessage {
    pub uaid: [u8; 16],
    pub channel: [u8; 16],
    pub seq: u64,
    pub arrived_ms: u64,
    pub expires_ms: u64,
    /// `Urgency::to_u8`.
    pub urgency: u8,
    pub topic: Option<String>,
    pub body: DiskBody,
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
pub enum DiskBody {
    Version(u64),
    Desktop {
        body: String,
        ttl_s: Option<u64>,
    },
    WebPush {
        data: Vec<u8>,
        encoding: Option<String>,
        encryption: Option<String>,
        crypto_key: Option<String>,
    },
    Extended {
        id: String,
        message: String,
        timestamp_ms: u64,
        priority: u8,
    },
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
pub enum DiskIp {
    V4([u8; 4]),
    V6([u8; 16]),
}

#[derive(rkyv::Archive, rkyv::Serialize, rkyv::Deserialize, Debug, PartialEq)]
pub struct DiskWakeup {
    pub ip: DiskIp,
    pub port: u16,
    pub mcc: String,
    pub mnc: String,
    pub netid: String,
}

impl From<&Record> for DiskRecord {
    fn from(record: &Record) -> DiskRecord {
        match record {
            Record::UaidCreated { uaid, at_ms } => DiskRecord::UaidCreated {
                uaid: uaid.0,
                at_ms: *at_ms,
            },
            Record::ChannelRegistered(registration) => DiskRecord::ChannelRegistered {
                uaid: registration.uaid.0,
                channel: registration.channel.0,
                key_hash: registration.key_hash,
            },
            Record::ChannelUnregistered { uaid, channel } => DiskRecord::ChannelUnregistered {
                uaid: uaid.0,
                channel: channel.0,
            },
            Record::MessageStored(message) => DiskRecord::MessageStored(DiskMessage {
                uaid: message.uaid.0,
                channel: message.channel.0,
                seq: message.seq,
                arrived_ms: message.arrived_ms,
                expires_ms: message.expires_ms,
                urgency: message.urgency.to_u8(),
                topic: message.topic.clone(),
                body: match &message.body {
                    MessageBody::Version(version) => DiskBody::Version(*version),
                    MessageBody::Desktop { body, ttl_s } => DiskBody::Desktop {
                        body: body.clone(),
                        ttl_s: *ttl_s,
                    },
                    MessageBody::WebPush {
                        data,
                        encoding,
                        encryption,
                        crypto_key,
                    } => DiskBody::WebPush {
                        data: data.clone(),
                        encoding: encoding.clone(),
                        encryption: encryption.clone(),
                        crypto_key: crypto_key.clone(),
                    },
                    MessageBody::Extended {
                        id,
                        message,
                        timestamp_ms,
                        priority,
                    } => DiskBody::Extended {
                        id: id.clone(),
                        message: message.clone(),
                        timestamp_ms: *timestamp_ms,
                        priority: *priority,
                    },
                },
            }),
            Record::MessageRemoved {
                uaid,
                channel,
                seq,
                reason,
            } => DiskRecord::MessageRemoved {
                uaid: uaid.0,
                channel: channel.0,
                seq: *seq,
                reason: reason.to_u8(),
            },
            Record::WakeupSet { uaid, wakeup } => DiskRecord::WakeupSet {
                uaid: uaid.0,
                wakeup: wakeup.as_ref().map(|info| DiskWakeup {
                    ip: match info.ip {
                        IpAddr::V4(ip) => DiskIp::V4(ip.octets()),
                        IpAddr::V6(ip) => DiskIp::V6(ip.octets()),
                    },
                    port: info.port,
                    mcc: info.mcc.clone(),
                    mnc: info.mnc.clone(),
                    netid: info.netid.clone(),
                }),
            },
            Record::ChannelVersion {
                uaid,
                channel,
                version,
            } => DiskRecord::ChannelVersion {
                uaid: uaid.0,
                channel: channel.0,
                version: *version,
            },
            Record::WebAppRegistered {
                uaid,
                channel,
                url_token,
                public_key_der,
            } => DiskRecord::WebAppRegistered {
                uaid: uaid.0,
                channel: channel.0,
                url_token: url_token.clone(),
                public_key_der: public_key_der.clone(),
            },
        }
    }
}

impl TryFrom<DiskRecord> for Record {
    type Error = String;

    fn try_from(disk: DiskRecord) -> Result<Record, String> {
        Ok(match disk {
            DiskRecord::UaidCreated { uaid, at_ms } => Record::UaidCreated {
                uaid: Uaid(uaid),
                at_ms,
            },
            DiskRecord::ChannelRegistered {
                uaid,
                channel,
                key_hash,
            } => Record::ChannelRegistered(Registration {
                uaid: Uaid(uaid),
                channel: ChannelId(channel),
                key_hash,
            }),
            DiskRecord::ChannelUnregistered { uaid, channel } => Record::ChannelUnregistered {
                uaid: Uaid(uaid),
                channel: ChannelId(channel),
            },
            DiskRecord::MessageStored(message) => Record::MessageStored(StoredMessage {
                uaid: Uaid(message.uaid),
                channel: ChannelId(message.channel),
                seq: message.seq,
                arrived_ms: message.arrived_ms,
                expires_ms: message.expires_ms,
                urgency: Urgency::from_u8(message.urgency)
                    .ok_or_else(|| format!("unknown urgency {}", message.urgency))?,
                topic: message.topic,
                body: match message.body {
                    DiskBody::Version(version) => MessageBody::Version(version),
                    DiskBody::Desktop { body, ttl_s } => MessageBody::Desktop { body, ttl_s },
                    DiskBody::WebPush {
                        data,
                        encoding,
                        encryption,
                        crypto_key,
                    } => MessageBody::WebPush {
                        data,
                        encoding,
                        encryption,
                        crypto_key,
                    },
                    DiskBody::Extended {
                        id,
                        message,
                        timestamp_ms,
                        priority,
                    } => MessageBody::Extended {
                        id,
                        message,
                        timestamp_ms,
                        priority,
                    },
                },
            }),
            DiskRecord::MessageRemoved {
                uaid,
                channel,
                seq,
                reason,
            } => Record::MessageRemoved {
                uaid: Uaid(uaid),
                channel: ChannelId(channel),
                seq,
                reason: Removal::from_u8(reason)
                    .ok_or_else(|| format!("unknown removal reason {reason}"))?,
            },
            DiskRecord::WakeupSet { uaid, wakeup } => Record::WakeupSet {
                uaid: Uaid(uaid),
                wakeup: wakeup.map(|info| WakeupInfo {
                    ip: match info.ip {
                        DiskIp::V4(octets) => IpAddr::V4(Ipv4Addr::from(octets)),
                        DiskIp::V6(octets) => IpAddr::V6(Ipv6Addr::from(octets)),
                    },
                    port: info.port,
                    mcc: info.mcc,
                    mnc: info.mnc,
                    netid: info.netid,
                }),
            },
            DiskRecord::ChannelVersion {
                uaid,
                channel,
                version,
            } => Record::ChannelVersion {
                uaid: Uaid(uaid),
                channel: ChannelId(channel),
                version,
            },
            DiskRecord::WebAppRegistered {
                uaid,
                channel,
                url_token,
                public_key_der,
            } => Record::WebAppRegistered {
                uaid: Uaid(uaid),
                channel: ChannelId(channel),
                url_token,
                public_key_der,
            },
        })
    }
}

/// The rkyv body of `record`; errors if it would exceed the body limit.
pub fn encode_record(record: &Record) -> Result<AlignedVec, StoreError> {
    let disk = DiskRecord::from(record);
    let bytes =
        rkyv::to_bytes::<rkyv::rancor::Error>(&disk).map_err(|err| StoreError::Corrupt {
            segment: String::new(),
            offset: 0,
            reason: format!("record does not encode: {err}"),
        })?;
    if bytes.len() > RECORD_BODY_MAX_BYTES {
        return Err(StoreError::RecordTooLarge {
            bytes: bytes.len(),
            max_bytes: RECORD_BODY_MAX_BYTES,
        });
    }
    Ok(bytes)
}

/// Decodes a record body (validated by rkyv's bytecheck: never panics, never
/// trusts an offset inside the body).
pub fn decode_record(body: &[u8]) -> Result<Record, String> {
    // Copy to an aligned buffer: rkyv reads archived fields in place and wants
    // them aligned; frames are 8-aligned in the file but not necessarily in
    // whatever buffer the file was read into.
    let mut aligned: AlignedVec<16> = AlignedVec::with_capacity(body.len());
    aligned.extend_from_slice(body);
    let disk = rkyv::from_bytes::<DiskRecord, rkyv::rancor::Error>(&aligned)
        .map_err(|err| format!("record body does not decode: {err}"))?;
    Record::try_from(disk)
}

/// Body of a snapshot end frame.
pub fn encode_snapshot_end(count: u64) -> [u8; 8] {
    count.to_le_bytes()
}

pub fn decode_snapshot_end(body: &[u8]) -> Option<u64> {
    if body.len() != 8 {
        return None;
    }
    Some(u64_at(body, 0))
}

/// A short human summary of a record, for `wal inspect`.
pub fn describe_record(record: &Record) -> String {
    fn channel(channel: &ChannelId) -> String {
        channel.to_text()
    }
    match record {
        Record::UaidCreated { uaid, at_ms } => {
            format!("UaidCreated uaid={} at_ms={at_ms}", uaid.to_hex())
        }
        Record::ChannelRegistered(registration) => format!(
            "ChannelRegistered uaid={} channel={} vapid={}",
            registration.uaid.to_hex(),
            channel(&registration.channel),
            if registration.key_hash.is_some() {
                "yes"
            } else {
                "no"
            }
        ),
        Record::ChannelUnregistered { uaid, channel: ch } => {
            format!(
                "ChannelUnregistered uaid={} channel={}",
                uaid.to_hex(),
                channel(ch)
            )
        }
        Record::MessageStored(message) => {
            let body = match &message.body {
                MessageBody::Version(version) => format!("version={version}"),
                MessageBody::Desktop { body, ttl_s } => {
                    format!("desktop body_bytes={} ttl_s={ttl_s:?}", body.len())
                }
                MessageBody::WebPush { data, encoding, .. } => format!(
                    "webpush data_bytes={} encoding={}",
                    data.len(),
                    encoding.as_deref().unwrap_or("-")
                ),
                MessageBody::Extended {
                    message, priority, ..
                } => {
                    format!(
                        "extended message_bytes={} priority={priority}",
                        message.len()
                    )
                }
            };
            format!(
                "MessageStored uaid={} channel={} seq={} urgency={} expires_ms={} topic={} {body}",
                message.uaid.to_hex(),
                channel(&message.channel),
                message.seq,
                message.urgency.as_str(),
                message.expires_ms,
                message.topic.as_deref().unwrap_or("-"),
            )
        }
        Record::MessageRemoved {
            uaid,
            channel: ch,
            seq,
            reason,
        } => format!(
            "MessageRemoved uaid={} channel={} seq={seq} reason={reason:?}",
            uaid.to_hex(),
            channel(ch)
        ),
        Record::WakeupSet { uaid, wakeup } => match wakeup {
            Some(info) => format!(
                "WakeupSet uaid={} ip={} port={} mcc={} mnc={}",
                uaid.to_hex(),
                info.ip,
                info.port,
                info.mcc,
                info.mnc
            ),
            None => format!("WakeupSet uaid={} none", uaid.to_hex()),
        },
        Record::ChannelVersion {
            uaid,
            channel: ch,
            version,
        } => format!(
            "ChannelVersion uaid={} channel={} version={version}",
            uaid.to_hex(),
            channel(ch)
        ),
        Record::WebAppRegistered {
            uaid,
            channel: ch,
            url_token,
            public_key_der,
        } => format!(
            "WebAppRegistered uaid={} channel={} url_token={url_token} key_bytes={}",
            uaid.to_hex(),
            channel(ch),
            public_key_der.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The byte layout documented at `encode_frame` and in WAL_FORMAT.md.
    #[test]
    fn frame_layout_matches_the_documentation() {
        let body = [1u8, 2, 3, 4, 5];
        let mut out = Vec::new();
        encode_frame(&mut out, FrameKind::Record, 0x0102_0304_0506_0708, &body);
        assert_eq!(out.len(), 40, "32-byte header + 5 body bytes + 3 padding");
        assert_eq!(&out[0..4], b"HWAL");
        assert_eq!(&out[4..6], &[1, 0]);
        assert_eq!(out[6], 1);
        assert_eq!(out[7], 0);
        assert_eq!(&out[8..12], &[5, 0, 0, 0]);
        assert_eq!(&out[12..16], &[0, 0, 0, 0]);
        assert_eq!(&out[16..24], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&out[24..28], &crc32c::crc32c(&body).to_le_bytes());
        assert_eq!(&out[28..32], &crc32c::crc32c(&out[0..28]).to_le_bytes());
        assert_eq!(&out[32..37], &body);
        assert_eq!(&out[37..40], &[0, 0, 0]);
        match read_frame(&out, 0) {
            Scan::Frame(frame) => {
                assert_eq!(frame.lsn, 0x0102_0304_0506_0708);
                assert_eq!(frame.body, &body);
                assert_eq!(frame.len_on_disk, 40);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(read_frame(&out, 40), Scan::End));
    }

    #[test]
    fn torn_magic_at_the_start_is_damage_not_a_foreign_file() {
        let mut bytes = vec![0u8; 64];
        bytes[..2].copy_from_slice(b"HW");
        assert!(matches!(
            read_frame(&bytes, 0),
            Scan::Damaged(Damage::BadMagic)
        ));
        bytes[..4].copy_from_slice(b"ELF\x7f");
        assert!(matches!(
            read_frame(&bytes, 0),
            Scan::Fatal(Fatal::BadMagicAtStart)
        ));
    }
}
