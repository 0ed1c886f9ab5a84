//! Identities (SPEC §6): self-authenticating UAIDs, opaque endpoint tokens and
//! message ids. All keys come from [`KeyMaterial`], never from constants.

use crate::{ChannelId, KeyHash, Uaid};

/// The server's secrets. Lists allow rotation: the first key encrypts/mints,
/// every key is tried when opening.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct KeyMaterial {
    pub uaid_keys: Vec<[u8; 16]>,
    pub token_keys: Vec<[u8; 32]>,
}

impl KeyMaterial {
    pub fn generate(rng: &mut impl rand::RngCore) -> KeyMaterial {
        let _ = rng;
        unimplemented!("identity helper")
    }

    /// The key file's text form (what `parse` reads back).
    pub fn to_file_text(&self) -> String {
        unimplemented!("identity helper")
    }

    pub fn parse(text: &str) -> Result<KeyMaterial, String> {
        let _ = text;
        unimplemented!("identity helper")
    }
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

#[derive(Clone)]
pub struct Keys {}

impl Keys {
    pub fn new(material: &KeyMaterial) -> Keys {
        let _ = material;
        unimplemented!("identity helper")
    }

    pub fn mint_uaid(&self, rng: &mut impl rand::RngCore, shard: usize, shards: usize) -> Uaid {
        let _ = (rng, shard, shards);
        unimplemented!("identity helper")
    }

    pub fn check_uaid(&self, text: &str) -> Option<Uaid> {
        let _ = text;
        unimplemented!("identity helper")
    }

    pub fn endpoint_token(&self, uaid: &Uaid, channel: &ChannelId, key_hash: Option<&KeyHash>) -> String {
        let _ = (uaid, channel, key_hash);
        unimplemented!("identity helper")
    }

    pub fn open_endpoint_token(&self, token: &str) -> Option<EndpointClaims> {
        let _ = token;
        unimplemented!("identity helper")
    }

    pub fn message_id(&self, uaid: &Uaid, channel: &ChannelId, seq: u64) -> String {
        let _ = (uaid, channel, seq);
        unimplemented!("identity helper")
    }

    pub fn open_message_id(&self, id: &str) -> Option<MessageClaims> {
        let _ = id;
        unimplemented!("identity helper")
    }
}
