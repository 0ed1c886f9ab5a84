//! How a UA lives in the cluster store: two Redis hashes under one hash
//! tag, so every script touches one slot, and a UA at rest is one key.
//!
//! | key | fields |
//! | --- | --- |
//! | `{uaid}u` | `o`: the claim's token (`""`: released), `s`: last seen (ms), `w`: wakeup data; channel id (16 bytes) → its registration; `v` + channel id → newest SimplePush version |
//! | `{uaid}m` | channel id (16 bytes) + seq (8 bytes, big-endian) → the stored message (the key exists only while one is pending) |
//!
//! Field names differ by length (1, 16 or 17 bytes), so the UA's own fields
//! and its channels share one hash. Each Redis key costs ~200 B of
//! bookkeeping (main table, expires table, slot index) before any data: one
//! key per UA at rest is what keeps a registered UA near 400 B.
//!
//! A plain registration is stored compactly, `r` followed by the VAPID key
//! hash if it has one (1 or 33 bytes): small values keep the hash in Redis's
//! compact listpack encoding, which a value over 64 bytes ends for the whole
//! hash. Every other value that is a record is the WAL's own encoding
//! (`format.rs`), so a record means the same thing in both stores and one
//! decoder reads both; a registration of the extended protocol is `a`
//! followed by its record.

use herald_engine::message::Registration;
use herald_engine::record::Record;
use herald_engine::{ChannelId, Uaid};

use crate::format::{decode_record, encode_record};
use crate::StoreError;

/// A Redis hash as `HGETALL` gives it: (field, value) pairs.
pub type HashFields = Vec<(Vec<u8>, Vec<u8>)>;

/// The keys of `uaid` (its hash, its messages), in the order the scripts
/// take them.
pub fn ua_keys(uaid: &Uaid) -> [Vec<u8>; 2] {
    let tag = format!("{{{}}}", uaid.to_hex());
    ["u", "m"].map(|suffix| format!("{tag}{suffix}").into_bytes())
}

/// The key of the set of UAs that registered the extended protocol's web
/// app whose channel is `channel` (the same channel on every UA): any node
/// that takes a notification for the app reads it to reach them all. One
/// slot per app.
pub fn app_members_key(channel: &ChannelId) -> Vec<u8> {
    let hex: String = channel.0.iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{{a{hex}}}").into_bytes()
}

/// The command that keeps an app's members in step with `record`, if it
/// changes them: a registration adds its UA, an unregistration of any
/// channel removes the UA from the app of that channel, if there is one.
pub fn app_members_op(record: &Record) -> Option<(Vec<u8>, Vec<Vec<u8>>)> {
    let (verb, uaid, channel) = match record {
        Record::WebAppRegistered { uaid, channel, .. } => ("SADD", uaid, channel),
        Record::ChannelUnregistered { uaid, channel } => ("SREM", uaid, channel),
        _ => return None,
    };
    let key = app_members_key(channel);
    let argv = vec![verb.into(), key.clone(), uaid.0.to_vec()];
    Some((key, argv))
}

/// The tag byte of a plain registration's value.
const PLAIN_REGISTRATION: u8 = b'r';
/// The tag byte of an extended-protocol registration's value.
const APP_REGISTRATION: u8 = b'a';

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
            let mut value = vec![PLAIN_REGISTRATION];
            value.extend(registration.key_hash.iter().flatten());
            vec![b"chan".to_vec(), registration.channel.0.to_vec(), value]
        }
        Record::WebAppRegistered { channel, .. } => {
            let mut value = vec![APP_REGISTRATION];
            value.extend(encoded()?);
            vec![b"chan".to_vec(), channel.0.to_vec(), value]
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

/// The UA's two hashes as `claim.lua` returned them (flat field/value
/// lists), as records that rebuild it: its last-seen time, channels,
/// versions, wakeup data, then messages in sequence order. Anything that
/// does not decode is an error: the store holds only what Herald wrote.
pub fn records_of(
    uaid: Uaid,
    ua: &[(Vec<u8>, Vec<u8>)],
    messages: &[(Vec<u8>, Vec<u8>)],
) -> Result<Vec<Record>, String> {
    let mut records = Vec::with_capacity(ua.len() + messages.len());
    // Hashes come back in no order: fields sorted, so a UA always loads
    // the same way.
    let mut ua: Vec<&(Vec<u8>, Vec<u8>)> = ua.iter().collect();
    ua.sort();
    if let Some((_, value)) = ua.iter().find(|(field, _)| field.as_slice() == b"s") {
        let at_ms = std::str::from_utf8(value)
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or("a last-seen time that is not a number")?;
        records.push(Record::UaidCreated { uaid, at_ms });
    }
    for (field, value) in &ua {
        if let Ok(channel) = <[u8; 16]>::try_from(field.as_slice()) {
            records.push(registration_of(uaid, ChannelId(channel), value)?);
        }
    }
    for (field, value) in &ua {
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
    if let Some((_, value)) = ua.iter().find(|(field, _)| field.as_slice() == b"w") {
        records.push(decode_for(uaid, value)?);
    }
    let mut stored: Vec<(&Vec<u8>, &Vec<u8>)> = messages.iter().map(|(f, v)| (f, v)).collect();
    // Field = channel + big-endian seq: sort by the seq part.
    stored.sort_by(|a, b| a.0.get(16..).cmp(&b.0.get(16..)));
    for (_, value) in stored {
        records.push(decode_for(uaid, value)?);
    }
    Ok(records)
}

/// A channel field's value as the record that registered the channel.
fn registration_of(uaid: Uaid, channel: ChannelId, value: &[u8]) -> Result<Record, String> {
    match value.split_first() {
        Some((&PLAIN_REGISTRATION, key_hash)) => {
            let key_hash = match key_hash.len() {
                0 => None,
                _ => Some(
                    key_hash
                        .try_into()
                        .map_err(|_| "a key hash that is not 32 bytes")?,
                ),
            };
            Ok(Record::ChannelRegistered(Registration {
                uaid,
                channel,
                key_hash,
            }))
        }
        Some((&APP_REGISTRATION, encoded)) => match decode_for(uaid, encoded)? {
            record @ Record::WebAppRegistered { channel: named, .. } if named == channel => {
                Ok(record)
            }
            _ => Err("a channel field holding another channel's registration".into()),
        },
        _ => Err("a channel field that is not a registration".into()),
    }
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
    use herald_engine::message::{MessageBody, StoredMessage, Urgency};

    /// Redis keeps a hash compact (listpack) while every value is at most
    /// this long (`hash-max-listpack-value`'s default).
    const LISTPACK_VALUE_MAX: usize = 64;

    fn pairs(ops: &[Vec<Vec<u8>>]) -> HashFields {
        ops.iter()
            .map(|op| (op[1].clone(), op[2].clone()))
            .collect()
    }

    fn registered(uaid: Uaid, channel: u8, key_hash: Option<[u8; 32]>) -> Record {
        Record::ChannelRegistered(Registration {
            uaid,
            channel: ChannelId([channel; 16]),
            key_hash,
        })
    }

    #[test]
    fn records_round_trip_through_the_hash_layout() {
        let uaid = Uaid([7; 16]);
        let channel = ChannelId([3; 16]);
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
        let app = Record::WebAppRegistered {
            uaid,
            channel: ChannelId([9; 16]),
            url_token: "token".into(),
            public_key_der: vec![1, 2, 3],
        };
        let version = Record::ChannelVersion {
            uaid,
            channel: ChannelId([4; 16]),
            version: 12,
        };
        let channels = [
            registered(uaid, 4, None),
            registered(uaid, 3, Some([0xab; 32])),
            app.clone(),
        ];
        let mut ua = pairs(&channels.each_ref().map(|r| write_op(r).unwrap()));
        // write.lua names a version's field `v` + channel id.
        ua.push(([&b"v"[..], &[4; 16]].concat(), b"12".to_vec()));
        ua.push((b"s".to_vec(), b"42".to_vec()));
        ua.push((b"o".to_vec(), b"x".to_vec()));
        // Stored out of order: the layout must give them back by seq.
        let message_ops = [
            write_op(&message(0x200)).unwrap(),
            write_op(&message(0x1ff)).unwrap(),
        ];
        let records = records_of(uaid, &ua, &pairs(&message_ops)).unwrap();
        assert_eq!(
            records,
            vec![
                Record::UaidCreated { uaid, at_ms: 42 },
                registered(uaid, 3, Some([0xab; 32])),
                registered(uaid, 4, None),
                app,
                version,
                message(0x1ff),
                message(0x200),
            ]
        );
    }

    #[test]
    fn a_plain_registration_keeps_the_hash_compact() {
        for key_hash in [None, Some([0xff; 32])] {
            let op = write_op(&registered(Uaid([1; 16]), 2, key_hash)).unwrap();
            assert!(op[2].len() <= LISTPACK_VALUE_MAX, "{} bytes", op[2].len());
        }
    }

    #[test]
    fn a_record_of_another_ua_or_channel_is_refused() {
        let other = Record::UaidCreated {
            uaid: Uaid([1; 16]),
            at_ms: 1,
        };
        let bytes = encode_record(&other).unwrap().to_vec();
        let ua = vec![(b"w".to_vec(), bytes)];
        assert!(records_of(Uaid([2; 16]), &ua, &[]).is_err());

        let uaid = Uaid([2; 16]);
        let app = Record::WebAppRegistered {
            uaid,
            channel: ChannelId([9; 16]),
            url_token: "token".into(),
            public_key_der: vec![],
        };
        let mut value = write_op(&app).unwrap().remove(2);
        let misfiled = vec![([8; 16].to_vec(), value.clone())];
        assert!(records_of(uaid, &misfiled, &[]).is_err());
        value[0] = b'?';
        let untagged = vec![([9; 16].to_vec(), value)];
        assert!(records_of(uaid, &untagged, &[]).is_err());
    }
}
