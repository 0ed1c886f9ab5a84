//! Identities read from untrusted strings: UAIDs (a hello, an extended UA
//! token), endpoint tokens (an AS's path), message ids (`/m/<id>`), channel
//! ids (a UA's frames) and extended app url tokens. Two kinds of input:
//!
//! - any string, to every opener: what one accepts is the canonical form of
//!   what it returns (the value encodes back to the same string, up to hex
//!   case), so no two strings name one endpoint, and no string is both an
//!   endpoint token and a message id;
//! - values minted from the input, then altered in one place: the original
//!   opens to exactly its claims (also after a key rotation, and only under
//!   its own domain); an altered one, a guessed UAID or another server's
//!   token opens to nothing.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use herald_engine::extended;
use herald_engine::identity::{EndpointClaims, KeyMaterial, Keys, MessageClaims};
use herald_engine::{ChannelId, Uaid};
use rand::rngs::StdRng;
use rand::SeedableRng;

use super::{keys, Input};

/// The fixed keys after a rotation: a new key first, the old one kept.
fn rotated_keys() -> Keys {
    Keys::new(&KeyMaterial {
        uaid_keys: vec![[0x33; 16], [0x11; 16]],
        token_keys: vec![[0x44; 32], [0x22; 32]],
    })
}

/// Another server's keys.
fn foreign_keys() -> Keys {
    Keys::new(&KeyMaterial {
        uaid_keys: vec![[0x55; 16]],
        token_keys: vec![[0x66; 32]],
    })
}

/// Byte 0 picks the input (`% 3 == 0`: the rest is a string; otherwise it
/// describes values to mint and alter).
pub fn tokens(data: &[u8]) -> u32 {
    let mut input = Input::new(data);
    if input.below(3) == 0 {
        untrusted(&keys(), &String::from_utf8_lossy(input.rest()))
    } else {
        minted(&mut input)
    }
}

/// A hand-written string for [`tokens`].
pub fn raw(text: &str) -> Vec<u8> {
    [&[0][..], text.as_bytes()].concat()
}

/// Strings of the right shapes, for the smoke test's corpus.
pub fn seeds() -> Vec<Vec<u8>> {
    [
        "0123456789abcdef0123456789ABCDEF",
        "00000000-0000-4000-8000-000000000001",
        "00000000000040008000000000000001",
        &"A".repeat(43),
        &"A".repeat(80),
        &"A".repeat(123),
        "",
    ]
    .iter()
    .map(|text| raw(text))
    .collect()
}

/// Every opener on `text`.
fn untrusted(keys: &Keys, text: &str) -> u32 {
    let lower = text.to_ascii_lowercase();
    let mut outcome = 0;
    if let Some(uaid) = keys.check_uaid(text) {
        assert_eq!(uaid.to_hex(), lower, "check_uaid({text:?})");
        outcome |= 1;
    }
    if let Some(uaid) = Uaid::from_hex(text) {
        assert_eq!(uaid.to_hex(), lower, "Uaid::from_hex({text:?})");
        outcome |= 2;
    }
    let endpoint = keys.open_endpoint_token(text);
    if let Some(claims) = endpoint {
        let canonical =
            keys.endpoint_token(&claims.uaid, &claims.channel, claims.key_hash.as_ref());
        assert_eq!(canonical, text, "a second spelling of an endpoint");
        outcome |= 4;
    }
    let message = keys.open_message_id(text);
    if let Some(claims) = message {
        assert_eq!(
            keys.message_id(&claims.uaid, &claims.channel, claims.seq),
            text,
            "a second spelling of a message id"
        );
        outcome |= 8;
    }
    assert!(
        endpoint.is_none() || message.is_none(),
        "{text:?} is both an endpoint token and a message id"
    );
    if let Some(channel) = ChannelId::parse(text) {
        assert_eq!(channel.to_text(), lower, "ChannelId::parse({text:?})");
        outcome |= 16;
    }
    if let Some(channel) = extended::channel_of(text) {
        // 32 bytes of digest in unpadded base64url: 43 characters, one way.
        let digest = URL_SAFE_NO_PAD.decode(text).expect("channel_of decoded it");
        assert_eq!(URL_SAFE_NO_PAD.encode(&digest), text);
        assert_eq!(channel.0[..], digest[..16]);
        outcome |= 32;
    }
    outcome
}

/// Characters an attacker would swap in: base64url, base64, padding, hex of
/// either case, a sign, whitespace, percent-encoding, non-ASCII.
const SWAPS: &[char] = &[
    'A', 'a', 'z', '0', '9', 'f', 'F', 'g', '-', '_', '+', '/', '=', ' ', '%', '.', 'é',
];

const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// `text` changed in one place (sometimes not at all: a swap may put back
/// the same character).
fn altered(input: &mut Input, text: &str) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let at = input.below(chars.len() + 1);
    let swap = input.pick(SWAPS);
    match input.below(6) {
        0 if at < chars.len() => chars[at] = swap,
        1 if at < chars.len() => {
            chars.remove(at);
        }
        2 => chars.insert(at, swap),
        3 => chars.truncate(at),
        4 => {
            // The last character with its low bits changed: in unpadded
            // base64 they can be bits past the data, which must be zero
            // for a token to have one spelling.
            if let Some(last) = chars.last_mut() {
                if let Some(index) = BASE64URL.iter().position(|&c| char::from(c) == *last) {
                    *last = char::from(BASE64URL[index ^ (1 + input.below(3))]);
                }
            }
        }
        _ => chars.push(swap),
    }
    chars.into_iter().collect()
}

fn u64(input: &mut Input) -> u64 {
    u64::from(input.u32()) << 32 | u64::from(input.u32())
}

fn minted(input: &mut Input) -> u32 {
    let keys = keys();
    let rotated = rotated_keys();
    let foreign = foreign_keys();
    let shards = 1 + input.below(4);
    let shard = input.below(shards);
    let mut rng = StdRng::seed_from_u64(input.u32().into());
    let uaid = keys.mint_uaid(&mut rng, shard, shards);
    assert_eq!(uaid.shard(shards), shard);
    let channel = ChannelId(input.array());
    let key_hash = input.one_in(2).then(|| input.array::<32>());
    let seq = u64(input);

    let hex = uaid.to_hex();
    assert_eq!(keys.check_uaid(&hex), Some(uaid));
    assert_eq!(keys.check_uaid(&hex.to_ascii_uppercase()), Some(uaid));
    assert_eq!(rotated.check_uaid(&hex), Some(uaid), "after a rotation");
    assert_eq!(
        foreign.check_uaid(&hex),
        None,
        "under another server's keys"
    );
    let guess = Uaid(input.array());
    assert_eq!(keys.check_uaid(&guess.to_hex()), None, "a guessed UAID");

    let token = keys.endpoint_token(&uaid, &channel, key_hash.as_ref());
    let endpoint = EndpointClaims {
        uaid,
        channel,
        key_hash,
    };
    assert_eq!(keys.open_endpoint_token(&token), Some(endpoint));
    assert_eq!(rotated.open_endpoint_token(&token), Some(endpoint));
    assert_eq!(foreign.open_endpoint_token(&token), None);
    assert_eq!(
        keys.open_message_id(&token),
        None,
        "an endpoint as a message id"
    );

    let id = keys.message_id(&uaid, &channel, seq);
    let message = MessageClaims { uaid, channel, seq };
    assert_eq!(keys.open_message_id(&id), Some(message));
    assert_eq!(rotated.open_message_id(&id), Some(message));
    assert_eq!(foreign.open_message_id(&id), None);
    assert_eq!(
        keys.open_endpoint_token(&id),
        None,
        "a message id as an endpoint"
    );

    let mut outcome = 64 * u32::from(key_hash.is_some());
    let changed_hex = altered(input, &hex);
    if !changed_hex.eq_ignore_ascii_case(&hex) {
        assert_eq!(keys.check_uaid(&changed_hex), None, "{changed_hex:?}");
    }
    outcome |= untrusted(&keys, &changed_hex);
    let changed_token = altered(input, &token);
    if changed_token != token {
        assert_eq!(
            keys.open_endpoint_token(&changed_token),
            None,
            "{changed_token:?}"
        );
    }
    outcome |= untrusted(&keys, &changed_token);
    let changed_id = altered(input, &id);
    if changed_id != id {
        assert_eq!(keys.open_message_id(&changed_id), None, "{changed_id:?}");
    }
    outcome | untrusted(&keys, &changed_id) | 128
}
