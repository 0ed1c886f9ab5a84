//! Identities (SPEC §6): self-authenticating UAIDs, opaque endpoint tokens and
//! message ids. All keys come from [`KeyMaterial`], never from constants.
//!
//! - UAID: one AES-128 block, `random(8) ‖ tag(8)` encrypted under the current
//!   UAID key, where `tag = SHA-256(domain ‖ key ‖ random)[..8]`. Decrypting and
//!   re-computing the tag tells a minted UAID from a guessed or altered one
//!   without any lookup (a forgery passes with probability 2^-64).
//! - Endpoint tokens and message ids: base64url (no padding) of
//!   `nonce(12) ‖ AES-256-GCM(plaintext, aad = domain)`. The nonce is synthetic
//!   (a keyed hash of the plaintext), so the same claims always give the same
//!   string: registering a channel twice yields the same endpoint (SPEC §3.2).
//!   Deterministic encryption only reveals equality of whole plaintexts, and the
//!   plaintext includes the channel, so one UA's endpoints stay unlinkable.
//!
//! Rotation: the first key of each list mints/encrypts, every key is tried when
//! opening, so a token made before a rotation keeps working while its key is
//! still listed.

use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use aes::Aes128;
use aes_gcm::aead::{Aead, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::{ChannelId, KeyHash, Uaid};

/// Domain-separation strings: each hash/AEAD use gets its own, so a value made
/// for one purpose can never be accepted for another (e.g. a message id opened
/// as an endpoint token).
const UAID_TAG_DOMAIN: &[u8] = b"herald/uaid-tag/v1\0";
const NONCE_KEY_DOMAIN: &[u8] = b"herald/siv-nonce-key/v1\0";
const NODE_LINK_DOMAIN: &[u8] = b"herald/node-link/v1\0";
const ENDPOINT_DOMAIN: &[u8] = b"herald/endpoint-token/v1\0";
const MESSAGE_DOMAIN: &[u8] = b"herald/message-id/v1\0";

const NONCE_LEN: usize = 12;
const GCM_TAG_LEN: usize = 16;
/// Longest string either opener will try to decode (an endpoint token with a
/// key hash is 123 characters); anything longer is refused before any work.
const MAX_OPAQUE_LEN: usize = 160;

/// Bound on `mint_uaid`'s draws. Each draw lands on the wanted shard with
/// probability 1/shards, so for shards ≤ 1024 failing this many times has
/// probability below e^-976: reaching it means a broken RNG.
const MINT_MAX_TRIES: u32 = 1_000_000;

/// The server's secrets. Lists allow rotation: the first key encrypts/mints,
/// every key is tried when opening.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct KeyMaterial {
    pub uaid_keys: Vec<[u8; 16]>,
    pub token_keys: Vec<[u8; 32]>,
}

impl KeyMaterial {
    pub fn generate(rng: &mut impl rand::RngCore) -> KeyMaterial {
        let mut uaid_key = [0u8; 16];
        let mut token_key = [0u8; 32];
        rng.fill_bytes(&mut uaid_key);
        rng.fill_bytes(&mut token_key);
        KeyMaterial {
            uaid_keys: vec![uaid_key],
            token_keys: vec![token_key],
        }
    }

    /// The bearer secret of the node-to-node link (cluster mode): every node
    /// has the same key file, so every node derives the same secret, and it
    /// reveals nothing of the keys themselves.
    pub fn node_link_secret(&self) -> String {
        let mut hasher = Sha256::new();
        hasher.update(NODE_LINK_DOMAIN);
        for key in &self.token_keys {
            hasher.update(key);
        }
        hex(&hasher.finalize())
    }

    /// The key file's text form (what `parse` reads back).
    pub fn to_file_text(&self) -> String {
        let mut out = String::new();
        out.push_str("# Herald identity keys: keep this file secret (mode 0600).\n");
        out.push_str("# The first key of each kind is current (mints UAIDs, encrypts tokens);\n");
        out.push_str("# keys listed after it are older ones, still accepted. To rotate, add a\n");
        out.push_str("# new line above the current one; drop old lines once unused.\n");
        for key in &self.uaid_keys {
            out.push_str("uaid_key = ");
            out.push_str(&hex(key));
            out.push('\n');
        }
        for key in &self.token_keys {
            out.push_str("token_key = ");
            out.push_str(&hex(key));
            out.push('\n');
        }
        out
    }

    /// Reads the key file: `uaid_key = <32 hex>` and `token_key = <64 hex>`
    /// lines, repeatable (file order = rotation order, first is current),
    /// blank lines and `#` comments allowed. At least one of each is required.
    pub fn parse(text: &str) -> Result<KeyMaterial, String> {
        let mut material = KeyMaterial {
            uaid_keys: Vec::new(),
            token_keys: Vec::new(),
        };
        for (index, raw_line) in text.lines().enumerate() {
            let line_no = index + 1;
            // Hex values never contain '#', so anything after one is a comment.
            let line = match raw_line.find('#') {
                Some(at) => &raw_line[..at],
                None => raw_line,
            }
            .trim();
            if line.is_empty() {
                continue;
            }
            let Some((name, value)) = line.split_once('=') else {
                return Err(format!(
                    "line {line_no}: expected `name = hex value`, found no `=`"
                ));
            };
            let (name, value) = (name.trim(), value.trim());
            match name {
                "uaid_key" => material
                    .uaid_keys
                    .push(parse_hex_key(line_no, name, value)?),
                "token_key" => material
                    .token_keys
                    .push(parse_hex_key(line_no, name, value)?),
                "" => return Err(format!("line {line_no}: missing a name before `=`")),
                other => {
                    return Err(format!(
                        "line {line_no}: unknown name `{}` (expected `uaid_key` or `token_key`)",
                        other.escape_debug()
                    ))
                }
            }
        }
        if material.uaid_keys.is_empty() {
            return Err("no `uaid_key` line: at least one is required".to_string());
        }
        if material.token_keys.is_empty() {
            return Err("no `token_key` line: at least one is required".to_string());
        }
        Ok(material)
    }
}

fn parse_hex_key<const N: usize>(
    line_no: usize,
    name: &str,
    value: &str,
) -> Result<[u8; N], String> {
    if value.chars().count() != 2 * N {
        return Err(format!(
            "line {line_no}: `{name}` must be {} hex characters ({N} bytes), found {}",
            2 * N,
            value.chars().count()
        ));
    }
    unhex::<N>(value).ok_or_else(|| {
        format!("line {line_no}: `{name}` holds a character that is not hex (0-9, a-f)")
    })
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EndpointClaims {
    pub uaid: Uaid,
    pub channel: ChannelId,
    pub key_hash: Option<KeyHash>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MessageClaims {
    pub uaid: Uaid,
    pub channel: ChannelId,
    pub seq: u64,
}

/// Ready-to-use ciphers built from [`KeyMaterial`] (key schedules are computed
/// once, not per token).
#[derive(Clone)]
pub struct Keys {
    uaid: Vec<UaidKey>,
    token: Vec<TokenKey>,
}

#[derive(Clone)]
struct UaidKey {
    cipher: Aes128,
    key: [u8; 16],
}

#[derive(Clone)]
struct TokenKey {
    aead: Aes256Gcm,
    /// Keys the synthetic nonce. Derived from, not equal to, the AEAD key, so
    /// the GCM key is used by GCM only.
    nonce_key: [u8; 32],
}

/// Never prints key bytes (a `{:?}` in a log line must not leak secrets).
impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keys")
            .field("uaid_keys", &self.uaid.len())
            .field("token_keys", &self.token.len())
            .finish_non_exhaustive()
    }
}

impl Keys {
    /// Panics if either key list is empty: a server without keys cannot mint
    /// anything, and failing at startup beats failing on the first hello.
    pub fn new(material: &KeyMaterial) -> Keys {
        assert!(
            !material.uaid_keys.is_empty() && !material.token_keys.is_empty(),
            "KeyMaterial needs at least one uaid key and one token key"
        );
        let uaid = material
            .uaid_keys
            .iter()
            .map(|key| UaidKey {
                cipher: Aes128::new(&(*key).into()),
                key: *key,
            })
            .collect();
        let token = material
            .token_keys
            .iter()
            .map(|key| {
                let mut hasher = Sha256::new();
                hasher.update(NONCE_KEY_DOMAIN);
                hasher.update(key);
                TokenKey {
                    aead: Aes256Gcm::new(&(*key).into()),
                    nonce_key: hasher.finalize().into(),
                }
            })
            .collect();
        Keys { uaid, token }
    }

    /// Mints a fresh UAID under the current key whose public bytes route to
    /// `shard` out of `shards` (SPEC §6: the shard that accepted the socket owns
    /// the new UA). Expected `shards` draws.
    pub fn mint_uaid(&self, rng: &mut impl rand::RngCore, shard: usize, shards: usize) -> Uaid {
        assert!(
            shard < shards.max(1),
            "mint_uaid: shard {shard} out of range for {shards} shards"
        );
        let current = &self.uaid[0];
        for _ in 0..MINT_MAX_TRIES {
            let mut random = [0u8; 8];
            rng.fill_bytes(&mut random);
            let uaid = current.seal(random);
            if uaid.shard(shards) == shard {
                return uaid;
            }
        }
        panic!("mint_uaid: no UAID for shard {shard} of {shards} after {MINT_MAX_TRIES} draws (broken RNG?)");
    }

    /// Accepts the hex form of a UAID this server minted (under any listed key);
    /// `None` for anything else: wrong length, non-hex, guessed or altered.
    pub fn check_uaid(&self, text: &str) -> Option<Uaid> {
        let uaid = Uaid::from_hex(text)?;
        self.uaid
            .iter()
            .any(|key| key.verifies(&uaid))
            .then_some(uaid)
    }

    pub fn endpoint_token(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        key_hash: Option<&KeyHash>,
    ) -> String {
        let mut plain = Vec::with_capacity(64);
        plain.extend_from_slice(&uaid.0);
        plain.extend_from_slice(&channel.0);
        if let Some(hash) = key_hash {
            plain.extend_from_slice(hash);
        }
        self.token[0].seal(ENDPOINT_DOMAIN, &plain)
    }

    pub fn open_endpoint_token(&self, token: &str) -> Option<EndpointClaims> {
        let plain = self.open(ENDPOINT_DOMAIN, token)?;
        let (uaid, channel, rest) = split_uaid_channel(&plain)?;
        let key_hash = match rest.len() {
            0 => None,
            32 => Some(rest.try_into().ok()?),
            _ => return None,
        };
        Some(EndpointClaims {
            uaid,
            channel,
            key_hash,
        })
    }

    pub fn message_id(&self, uaid: &Uaid, channel: &ChannelId, seq: u64) -> String {
        let mut plain = Vec::with_capacity(40);
        plain.extend_from_slice(&uaid.0);
        plain.extend_from_slice(&channel.0);
        plain.extend_from_slice(&seq.to_be_bytes());
        self.token[0].seal(MESSAGE_DOMAIN, &plain)
    }

    pub fn open_message_id(&self, id: &str) -> Option<MessageClaims> {
        let plain = self.open(MESSAGE_DOMAIN, id)?;
        let (uaid, channel, rest) = split_uaid_channel(&plain)?;
        let seq = u64::from_be_bytes(rest.try_into().ok()?);
        Some(MessageClaims { uaid, channel, seq })
    }

    /// Decodes and authenticates under every token key; the plaintext of the
    /// first that verifies. Never panics: every failure is `None`.
    fn open(&self, domain: &[u8], text: &str) -> Option<Vec<u8>> {
        if text.len() > MAX_OPAQUE_LEN {
            return None;
        }
        let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
        if bytes.len() < NONCE_LEN + GCM_TAG_LEN {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::from_slice(nonce);
        self.token.iter().find_map(|key| {
            key.aead
                .decrypt(
                    nonce,
                    Payload {
                        msg: sealed,
                        aad: domain,
                    },
                )
                .ok()
        })
    }
}

impl UaidKey {
    fn tag(&self, random: &[u8; 8]) -> [u8; 8] {
        let mut hasher = Sha256::new();
        hasher.update(UAID_TAG_DOMAIN);
        hasher.update(self.key);
        hasher.update(random);
        let digest = hasher.finalize();
        let mut tag = [0u8; 8];
        tag.copy_from_slice(&digest[..8]);
        tag
    }

    fn seal(&self, random: [u8; 8]) -> Uaid {
        let mut block = aes::Block::default();
        block[..8].copy_from_slice(&random);
        block[8..].copy_from_slice(&self.tag(&random));
        self.cipher.encrypt_block(&mut block);
        Uaid(block.into())
    }

    fn verifies(&self, uaid: &Uaid) -> bool {
        let mut block = aes::Block::from(uaid.0);
        self.cipher.decrypt_block(&mut block);
        let mut random = [0u8; 8];
        random.copy_from_slice(&block[..8]);
        constant_time_eq(&block[8..], &self.tag(&random))
    }
}

impl TokenKey {
    /// `base64url(nonce ‖ ciphertext ‖ tag)` with the synthetic nonce
    /// `SHA-256(nonce_key ‖ domain ‖ plaintext)[..12]`: deterministic, and
    /// distinct plaintexts get distinct nonces (up to a hash collision).
    fn seal(&self, domain: &[u8], plain: &[u8]) -> String {
        let mut hasher = Sha256::new();
        hasher.update(self.nonce_key);
        hasher.update(domain);
        hasher.update(plain);
        let digest = hasher.finalize();
        let nonce = Nonce::from_slice(&digest[..NONCE_LEN]);
        let sealed = self
            .aead
            .encrypt(
                nonce,
                Payload {
                    msg: plain,
                    aad: domain,
                },
            )
            // aes-gcm only fails for plaintexts near 2^36 bytes; ours are ≤ 64.
            .expect("AES-GCM encryption of a short plaintext");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(nonce);
        out.extend_from_slice(&sealed);
        URL_SAFE_NO_PAD.encode(out)
    }
}

fn split_uaid_channel(plain: &[u8]) -> Option<(Uaid, ChannelId, &[u8])> {
    if plain.len() < 32 {
        return None;
    }
    let (uaid, rest) = plain.split_at(16);
    let (channel, rest) = rest.split_at(16);
    Some((
        Uaid(uaid.try_into().ok()?),
        ChannelId(channel.try_into().ok()?),
        rest,
    ))
}

/// Compares without an early exit, so timing does not tell an attacker how
/// many leading tag bytes were right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0x0f)] as char);
    }
    out
}

/// Exactly `2 * N` hex digits (either case) into `N` bytes; nothing else
/// (`from_str_radix` would also take a sign: "+f" as 0x0f).
pub(crate) fn unhex<const N: usize>(text: &str) -> Option<[u8; N]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
    let text = text.as_bytes();
    if text.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (byte, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *byte = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    fn setup(seed: u64) -> (KeyMaterial, Keys) {
        let material = KeyMaterial::generate(&mut StdRng::seed_from_u64(seed));
        let keys = Keys::new(&material);
        (material, keys)
    }

    fn channel(n: u8) -> ChannelId {
        ChannelId([n; 16])
    }

    /// Flips one character to another base64url character.
    fn alter_char(text: &str, at: usize) -> String {
        let mut chars: Vec<char> = text.chars().collect();
        chars[at] = if chars[at] == 'A' { 'B' } else { 'A' };
        chars.into_iter().collect()
    }

    #[test]
    fn generate_gives_distinct_random_keys() {
        let (a, _) = setup(1);
        let (b, _) = setup(2);
        assert_eq!(a.uaid_keys.len(), 1);
        assert_eq!(a.token_keys.len(), 1);
        assert_ne!(a, b);
    }

    #[test]
    fn key_file_round_trip() {
        let (mut material, _) = setup(3);
        let (older, _) = setup(4);
        material.uaid_keys.extend(older.uaid_keys);
        material.token_keys.extend(older.token_keys);
        let text = material.to_file_text();
        assert_eq!(KeyMaterial::parse(&text), Ok(material));
    }

    #[test]
    fn key_file_comments_blank_lines_case_and_spacing() {
        let text = "# comment\n\n  uaid_key=000102030405060708090A0B0C0D0E0F  # current\n\
                    token_key   =   "
            .to_string()
            + &"ab".repeat(32)
            + "\r\n";
        let material = KeyMaterial::parse(&text).expect("valid file");
        assert_eq!(
            material.uaid_keys,
            vec![[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]]
        );
        assert_eq!(material.token_keys, vec![[0xab; 32]]);
    }

    #[test]
    fn key_file_errors_name_the_line_and_problem() {
        let uaid = format!("uaid_key = {}\n", "00".repeat(16));
        let token = format!("token_key = {}\n", "11".repeat(32));

        let err = KeyMaterial::parse(&token).unwrap_err();
        assert!(err.contains("uaid_key"), "{err}");
        let err = KeyMaterial::parse(&uaid).unwrap_err();
        assert!(err.contains("token_key"), "{err}");
        let err = KeyMaterial::parse("").unwrap_err();
        assert!(err.contains("at least one"), "{err}");

        let err = KeyMaterial::parse(&format!("{uaid}uaid_key = 0011\n{token}")).unwrap_err();
        assert!(
            err.starts_with("line 2:") && err.contains("32 hex characters"),
            "{err}"
        );
        let err = KeyMaterial::parse(&format!("{uaid}{token}token_key = {}\n", "zz".repeat(32)))
            .unwrap_err();
        assert!(
            err.starts_with("line 3:") && err.contains("not hex"),
            "{err}"
        );
        let err = KeyMaterial::parse(&format!("# c\n{uaid}secret = 00\n{token}")).unwrap_err();
        assert!(
            err.starts_with("line 3:") && err.contains("unknown name `secret`"),
            "{err}"
        );
        let err = KeyMaterial::parse(&format!("{uaid}just some words\n{token}")).unwrap_err();
        assert!(
            err.starts_with("line 2:") && err.contains("no `=`"),
            "{err}"
        );
        let err = KeyMaterial::parse(&format!("= 00\n{uaid}{token}")).unwrap_err();
        assert!(
            err.starts_with("line 1:") && err.contains("missing a name"),
            "{err}"
        );
        // Multi-byte characters must give an error, not a slicing panic.
        let err = KeyMaterial::parse(&format!("{uaid}{token}uaid_key = {}\n", "é".repeat(32)))
            .unwrap_err();
        assert!(err.starts_with("line 3:"), "{err}");
    }

    #[test]
    fn mint_uaid_lands_on_the_asked_shard_and_checks() {
        let (_, keys) = setup(5);
        let mut rng = StdRng::seed_from_u64(6);
        for shards in 1..=8 {
            for shard in 0..shards {
                let uaid = keys.mint_uaid(&mut rng, shard, shards);
                assert_eq!(uaid.shard(shards), shard);
                assert_eq!(keys.check_uaid(&uaid.to_hex()), Some(uaid));
                assert_eq!(keys.check_uaid(&uaid.to_hex().to_uppercase()), Some(uaid));
            }
        }
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn mint_uaid_refuses_a_shard_out_of_range() {
        let (_, keys) = setup(5);
        keys.mint_uaid(&mut StdRng::seed_from_u64(1), 4, 4);
    }

    #[test]
    fn minted_uaids_differ() {
        let (_, keys) = setup(7);
        let mut rng = StdRng::seed_from_u64(8);
        let a = keys.mint_uaid(&mut rng, 0, 1);
        let b = keys.mint_uaid(&mut rng, 0, 1);
        assert_ne!(a, b);
    }

    #[test]
    fn check_uaid_rejects_random_altered_and_malformed() {
        let (_, keys) = setup(9);
        let mut rng = StdRng::seed_from_u64(10);
        for _ in 0..500 {
            let mut bytes = [0u8; 16];
            rng.fill(&mut bytes);
            assert_eq!(keys.check_uaid(&Uaid(bytes).to_hex()), None);
        }
        let uaid = keys.mint_uaid(&mut rng, 0, 1);
        for byte in 0..16 {
            for bit in 0..8 {
                let mut altered = uaid;
                altered.0[byte] ^= 1 << bit;
                assert_eq!(
                    keys.check_uaid(&altered.to_hex()),
                    None,
                    "byte {byte} bit {bit}"
                );
            }
        }
        let hex = uaid.to_hex();
        assert_eq!(keys.check_uaid(&hex[..31]), None);
        assert_eq!(keys.check_uaid(&format!("{hex}0")), None);
        assert_eq!(keys.check_uaid(&format!("+{}", &hex[1..])), None);
        assert_eq!(keys.check_uaid(""), None);
        assert_eq!(keys.check_uaid(&"é".repeat(16)), None);
        // Another server's UAID is a forgery here.
        let (_, other) = setup(11);
        assert_eq!(other.check_uaid(&hex), None);
    }

    #[test]
    fn endpoint_token_round_trips_with_and_without_key_hash() {
        let (_, keys) = setup(12);
        let uaid = keys.mint_uaid(&mut StdRng::seed_from_u64(13), 0, 1);
        let hash = [7u8; 32];
        let plain = keys.endpoint_token(&uaid, &channel(1), None);
        let vapid = keys.endpoint_token(&uaid, &channel(1), Some(&hash));
        assert_eq!(
            keys.open_endpoint_token(&plain),
            Some(EndpointClaims {
                uaid,
                channel: channel(1),
                key_hash: None
            })
        );
        assert_eq!(
            keys.open_endpoint_token(&vapid),
            Some(EndpointClaims {
                uaid,
                channel: channel(1),
                key_hash: Some(hash)
            })
        );
        for token in [&plain, &vapid] {
            assert!(
                token
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
                "{token}"
            );
        }
    }

    #[test]
    fn endpoint_token_is_deterministic_and_unlinkable() {
        let (_, keys) = setup(14);
        let uaid = keys.mint_uaid(&mut StdRng::seed_from_u64(15), 0, 1);
        let a = keys.endpoint_token(&uaid, &channel(1), None);
        assert_eq!(a, keys.endpoint_token(&uaid, &channel(1), None));
        let b = keys.endpoint_token(&uaid, &channel(2), None);
        assert_ne!(a, b);
        // No common prefix beyond chance: the nonce differs, so do all bytes.
        assert_ne!(a[..16], b[..16]);
        assert_ne!(a, keys.endpoint_token(&uaid, &channel(1), Some(&[0; 32])));
        // Neither the UAID nor the channel appears in the clear.
        let raw = URL_SAFE_NO_PAD.decode(&a).unwrap();
        assert!(!raw.windows(16).any(|w| w == uaid.0 || w == channel(1).0));
    }

    #[test]
    fn tampered_tokens_and_ids_fail() {
        let (_, keys) = setup(16);
        let uaid = keys.mint_uaid(&mut StdRng::seed_from_u64(17), 0, 1);
        let token = keys.endpoint_token(&uaid, &channel(3), Some(&[9; 32]));
        for at in 0..token.len() {
            let altered = alter_char(&token, at);
            assert_eq!(keys.open_endpoint_token(&altered), None, "char {at}");
        }
        let id = keys.message_id(&uaid, &channel(3), 42);
        for at in 0..id.len() {
            assert_eq!(
                keys.open_message_id(&alter_char(&id, at)),
                None,
                "char {at}"
            );
        }
        assert_eq!(keys.open_endpoint_token(&token[..token.len() - 1]), None);
        assert_eq!(keys.open_endpoint_token(&format!("{token}A")), None);
        assert_eq!(keys.open_endpoint_token(&format!("{token}=")), None);
    }

    #[test]
    fn tokens_from_another_key_set_fail() {
        let (_, ours) = setup(18);
        let (_, theirs) = setup(19);
        let uaid = Uaid([5; 16]);
        let token = theirs.endpoint_token(&uaid, &channel(1), None);
        let id = theirs.message_id(&uaid, &channel(1), 1);
        assert_eq!(ours.open_endpoint_token(&token), None);
        assert_eq!(ours.open_message_id(&id), None);
    }

    #[test]
    fn rotation_keeps_old_tokens_and_uaids_valid() {
        let (old, old_keys) = setup(20);
        let (new, _) = setup(21);
        let rotated = KeyMaterial {
            uaid_keys: vec![new.uaid_keys[0], old.uaid_keys[0]],
            token_keys: vec![new.token_keys[0], old.token_keys[0]],
        };
        let rotated_keys = Keys::new(&rotated);
        let uaid = old_keys.mint_uaid(&mut StdRng::seed_from_u64(22), 1, 2);
        let token = old_keys.endpoint_token(&uaid, &channel(1), None);
        let id = old_keys.message_id(&uaid, &channel(1), 77);
        assert_eq!(rotated_keys.check_uaid(&uaid.to_hex()), Some(uaid));
        assert_eq!(
            rotated_keys.open_endpoint_token(&token).map(|c| c.uaid),
            Some(uaid)
        );
        assert_eq!(rotated_keys.open_message_id(&id).map(|c| c.seq), Some(77));
        // New values are made under the new key: the old set cannot open them.
        let fresh = rotated_keys.endpoint_token(&uaid, &channel(1), None);
        assert_ne!(fresh, token);
        assert_eq!(old_keys.open_endpoint_token(&fresh), None);
        let fresh_uaid = rotated_keys.mint_uaid(&mut StdRng::seed_from_u64(23), 0, 1);
        assert_eq!(old_keys.check_uaid(&fresh_uaid.to_hex()), None);
    }

    #[test]
    fn message_id_round_trips_and_is_distinct_from_tokens() {
        let (_, keys) = setup(24);
        let uaid = Uaid([1; 16]);
        for seq in [0, 1, 255, 1 << 40, u64::MAX] {
            let id = keys.message_id(&uaid, &channel(2), seq);
            assert_eq!(
                keys.open_message_id(&id),
                Some(MessageClaims {
                    uaid,
                    channel: channel(2),
                    seq
                })
            );
            assert_eq!(id, keys.message_id(&uaid, &channel(2), seq));
            assert!(
                id.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'),
                "{id}"
            );
            // Domain separation: an id is never accepted as an endpoint token.
            assert_eq!(keys.open_endpoint_token(&id), None);
        }
        assert_ne!(
            keys.message_id(&uaid, &channel(2), 1),
            keys.message_id(&uaid, &channel(2), 2)
        );
        let token = keys.endpoint_token(&uaid, &channel(2), None);
        assert_eq!(keys.open_message_id(&token), None);
    }

    #[test]
    fn random_strings_never_panic_or_open() {
        let (_, keys) = setup(25);
        let mut rng = StdRng::seed_from_u64(26);
        let alphabet: Vec<char> =
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/.é€ \0"
                .chars()
                .collect();
        for round in 0..600 {
            let len = match round % 3 {
                0 => rng.gen_range(0..200),
                1 => [32, 80, 91, 123][rng.gen_range(0..4)],
                _ => rng.gen_range(0..40),
            };
            let text: String = (0..len)
                .map(|_| alphabet[rng.gen_range(0..alphabet.len())])
                .collect();
            assert_eq!(keys.open_endpoint_token(&text), None, "{text:?}");
            assert_eq!(keys.open_message_id(&text), None, "{text:?}");
            assert_eq!(keys.check_uaid(&text), None, "{text:?}");
            let _ = KeyMaterial::parse(&text);
        }
    }

    #[test]
    fn debug_hides_keys() {
        let (material, keys) = setup(27);
        let shown = format!("{keys:?}");
        assert!(!shown.contains(&hex(&material.uaid_keys[0])), "{shown}");
        assert!(shown.contains("Keys"));
    }
}
