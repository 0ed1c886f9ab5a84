//! How a UA lives in the cluster store: three Redis hashes under one hash
//! tag, so every script touches one slot.
//!
//! | key | fields |
//! | --- | --- |
//! | `{uaid}u` | `o`: the claim's token (`""`: released), `s`: last seen (ms), `w`: wakeup data |
//! | `{uaid}c` | channel id (16 bytes) → its registration record; `v` + channel id → newest SimplePush version |
//! | `{uaid}m` | channel id (16 bytes) + seq (8 bytes, big-endian) → the stored message |
//!
//! Values that are records are the WAL's own encoding (`format.rs`), so a
//! record means the same thing in both stores and one decoder reads both.

use herald_engine::record::Record;
use herald_engine::{ChannelId, Uaid};

use crate::format::{decode_record, encode_record};
use crate::StoreError;

/// A Redis hash as `HGETALL` gives it: (field, value) pairs.
pub type HashFields = Vec<(Vec<u8>, Vec<u8>)>;

/// The three keys of `uaid`, in the order the scripts take them.
pub fn ua_keys(uaid: &Uaid) -> [Vec<u8>; 3] {
    let tag = format!("{{{}}}", uaid.to_hex());
    ["u", "c", "m"].map(|suffix| format!("{tag}{suffix}").into_bytes())
}

/// The arguments of `write.lua` after token, mode and TTL: the operation
/// and its operands.
pub fn write_op(record: &Record) -> Result<Vec<Vec<u8>>, StoreError> {
    let encoded = || encode_record(record).map(|bytes| bytes.to_vec());
    Ok(match record {
        Record::UaidCreated { at_ms, .. } => vec![b"seen".to_vec(), at_ms.to_string().into()],
        Record::WakeupSet { wakeup, .. } => {
            let value = match wakeup {
                Some(_) => encoded()?,
                None => Vec::new(),
            };
            vec![b"wake".to_vec(), value]
        }
        Record::ChannelRegistered(registration) => {
            vec![
                b"chan".to_vec(),
                registration.channel.0.to_vec(),
                encoded()?,
            ]
        }
        Record::WebAppRegistered { channel, .. } => {
            vec![b"chan".to_vec(), channel.0.to_vec(), encoded()?]
        }
        Record::ChannelUnregistered { channel, .. } => {
            vec![b"unchan".to_vec(), channel.0.to_vec()]
        }
        Record::ChannelVersion {
            channel, version, ..
        } => vec![
            b"ver".to_vec(),
            channel.0.to_vec(),
            version.to_string().into(),
        ],
        Record::MessageStored(message) => vec![
            b"msg".to_vec(),
            message_field(&message.channel, message.seq),
            encoded()?,
        ],
        Record::MessageRemoved { channel, seq, .. } => {
            vec![b"unmsg".to_vec(), message_field(channel, *seq)]
        }
    })
}

fn message_field(channel: &ChannelId, seq: u64) -> Vec<u8> {
    let mut field = channel.0.to_vec();
    field.extend_from_slice(&seq.to_be_bytes());
    field
}

/// The UA's three hashes as `claim.lua` returned them (flat field/value
/// lists), as records that rebuild it: its last-seen time, channels,
/// versions, wakeup data, then messages in sequence order. Anything that
/// does not decode is an error: the store holds only what Herald wrote.
pub fn records_of(
    uaid: Uaid,
    ua: &[(Vec<u8>, Vec<u8>)],
    channels: &[(Vec<u8>, Vec<u8>)],
    messages: &[(Vec<u8>, Vec<u8>)],
) -> Result<Vec<Record>, String> {
    let mut records = Vec::with_capacity(1 + channels.len() + messages.len());
    for (field, value) in ua {
        if field.as_slice() == b"s" {
            let at_ms = std::str::from_utf8(value)
                .ok()
                .and_then(|text| text.parse().ok())
                .ok_or("a last-seen time that is not a number")?;
            records.push(Record::UaidCreated { uaid, at_ms });
        }
    }
    // Hashes come back in no order: channels by id, so a UA always loads
    // the same way.
    let mut channels: Vec<&(Vec<u8>, Vec<u8>)> = channels.iter().collect();
    channels.sort();
    for (field, value) in &channels {
        if field.len() == 16 {
            records.push(decode_for(uaid, value)?);
        }
    }
    for (field, value) in &channels {
        if field.len() == 17 && field[0] == b'v' {
            let channel = ChannelId(field[1..].try_into().expect("17-byte field"));
            let version = std::str::from_utf8(value)
                .ok()
                .and_then(|text| text.parse().ok())
                .ok_or("a channel version that is not a number")?;
            records.push(Record::ChannelVersion {
                uaid,
                channel,
                version,
            });
        }
    }
    for (field, value) in ua {
        if field.as_slice() == b"w" {
            records.push(decode_for(uaid, value)?);
        }
    }
    let mut stored: Vec<(&Vec<u8>, &Vec<u8>)> = messages.iter().map(|(f, v)| (f, v)).collect();
    // Field = channel + big-endian seq: sort by the seq part.
    stored.sort_by(|a, b| a.0.get(16..).cmp(&b.0.get(16..)));
    for (_, value) in stored {
        records.push(decode_for(uaid, value)?);
    }
    Ok(records)
}

/// Decodes a record kept under `uaid`'s keys; one naming another UA is
/// refused (the keys are the UA's own).
fn decode_for(uaid: Uaid, value: &[u8]) -> Result<Record, String> {
    let record = decode_record(value)?;
    if record.uaid() != uaid {
        return Err(format!(
            "a record of UA {} under the keys of {}",
            record.uaid().to_hex(),
            uaid.to_hex()
        ));
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_engine::message::{MessageBody, Registration, StoredMessage, Urgency};

    fn pairs(ops: &[Vec<Vec<u8>>]) -> HashFields {
        ops.iter()
            .map(|op| (op[1].clone(), op[2].clone()))
            .collect()
    }

    #[test]
    fn records_round_trip_through_the_hash_layout() {
        let uaid = Uaid([7; 16]);
        let channel = ChannelId([3; 16]);
        let registered = Record::ChannelRegistered(Registration {
            uaid,
            channel,
            key_hash: None,
        });
        let message = |seq| {
            Record::MessageStored(StoredMessage {
                uaid,
                channel,
                seq,
                arrived_ms: 5,
                expires_ms: 0,
                urgency: Urgency::Normal,
                topic: None,
                body: MessageBody::Version(seq),
            })
        };
        let channel_ops = [write_op(&registered).unwrap()];
        // Stored out of order: the layout must give them back by seq.
        let message_ops = [
            write_op(&message(0x200)).unwrap(),
            write_op(&message(0x1ff)).unwrap(),
        ];
        let ua = vec![
            (b"s".to_vec(), b"42".to_vec()),
            (b"o".to_vec(), b"x".to_vec()),
        ];
        let records = records_of(uaid, &ua, &pairs(&channel_ops), &pairs(&message_ops)).unwrap();
        assert_eq!(
            records,
            vec![
                Record::UaidCreated { uaid, at_ms: 42 },
                registered,
                message(0x1ff),
                message(0x200),
            ]
        );
    }

    #[test]
    fn a_record_of_another_ua_is_refused() {
        let other = Record::UaidCreated {
            uaid: Uaid([1; 16]),
            at_ms: 1,
        };
        let bytes = encode_record(&other).unwrap().to_vec();
        let channels = vec![([9u8; 16].to_vec(), bytes)];
        assert!(records_of(Uaid([2; 16]), &[], &channels, &[]).is_err());
    }
}
