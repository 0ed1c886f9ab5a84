//! Cluster mode on one shard (SPEC §8, issue 11): where a UA is held, and
//! the operator's broadcasts, which every node serves.
//!
//! An AS request for a UA reaches whichever node the AS picked. That node
//! asks Redis which node holds the UA (`{uaid}u`'s `o` field, a claim
//! token naming a node URL). If another node does, the request goes there
//! over the node link and its answer comes back; if none does, or the
//! holder cannot be reached, this node takes the request itself: its shard
//! claims the UA, loads it, stores the message and lets go
//! (`engine/src/shard/residency.rs`).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use glommio::channels::local_channel::{self, LocalSender};
use herald_engine::{ChannelId, Uaid};
use herald_store::cluster::{app_members_key, ua_keys};
use herald_store::redis::{ClusterClient, Command, RedisError, Reply};

use crate::node_link::NodeLink;

/// Every broadcast of the cluster: one hash (one slot), id → version.
const BROADCASTS_KEY: &[u8] = b"{herald}broadcasts";

/// What a shard of a cluster node has besides its store.
pub struct ClusterNode {
    /// Reads where UAs are held (the store's own client carries writes).
    pub reader: Rc<ClusterClient>,
    lookups: Rc<Lookups>,
    pub link: Rc<NodeLink>,
    /// AS requests sent to the node holding their UA, and those whose
    /// holder could not be reached (for `/metrics`).
    pub forwards: Cell<u64>,
    pub forward_failures: Cell<u64>,
}

/// Where a lookup's answer goes: the claim token in `o`, if any.
type TokenSender = LocalSender<Option<Vec<u8>>>;

/// A shard's holder lookups waiting for the next Redis round trip. The
/// lookups that arrive while one batch is out go together in the next: one
/// at a time, a shard admitted one push per round trip, and its writer's
/// group commit found almost nothing to group. The queue is as long as the
/// shard's AS requests in flight, which the listener's limits bound.
#[derive(Default)]
struct Lookups {
    waiting: RefCell<Vec<(Command, TokenSender)>>,
    /// A task is sending batches; it stops once the queue is empty.
    sending: Cell<bool>,
}

impl ClusterNode {
    pub fn new(reader: ClusterClient, link: NodeLink) -> ClusterNode {
        ClusterNode {
            reader: Rc::new(reader),
            lookups: Rc::default(),
            link: Rc::new(link),
            forwards: Cell::new(0),
            forward_failures: Cell::new(0),
        }
    }

    /// The node URL of the other node that holds `uaid`, if one does. Redis
    /// unreachable reads as "none": the shard's own claim then fails too,
    /// and the AS gets its 503 from there.
    pub async fn holder_elsewhere(&self, uaid: &Uaid) -> Option<String> {
        let [ua_key, ..] = ua_keys(uaid);
        let lookup = Command::new(
            &ua_key,
            vec![b"HGET".to_vec(), ua_key.clone(), b"o".to_vec()],
        );
        let (answer, token) = local_channel::new_bounded(1);
        self.lookups.waiting.borrow_mut().push((lookup, answer));
        if !self.lookups.sending.replace(true) {
            // A task of its own, not this request: a request whose AS hangs
            // up is dropped mid-await, and must not strand the others.
            glommio::spawn_local(send_lookups(self.reader.clone(), self.lookups.clone())).detach();
        }
        let token = String::from_utf8(token.recv().await.flatten()?).ok()?;
        let node = token.split(' ').next().unwrap_or_default();
        (!node.is_empty() && node != self.link.own_url).then(|| node.to_owned())
    }

    /// Every UA that registered the app whose channel is `channel`, as the
    /// cluster store keeps them (a UA that left the app since may still be
    /// named: its share then finds no registration).
    pub async fn app_members(&self, channel: &ChannelId) -> Result<Vec<Uaid>, RedisError> {
        let key = app_members_key(channel);
        let members = Command::new(&key, vec![b"SMEMBERS".to_vec(), key.clone()]);
        let reply = self.reader.run(&[members], false).await?.into_iter().next();
        let Some(Reply::Array(items)) = reply else {
            return Ok(Vec::new());
        };
        Ok(items
            .into_iter()
            .filter_map(|item| match item {
                Reply::Bulk(bytes) => Some(Uaid(bytes.try_into().ok()?)),
                _ => None,
            })
            .collect())
    }

    /// Stores a broadcast's version, acknowledged by the configured replicas
    /// like any record.
    pub async fn store_broadcast(&self, id: &str, version: &str) -> Result<(), RedisError> {
        let set = Command::new(
            BROADCASTS_KEY,
            vec![
                b"HSET".to_vec(),
                BROADCASTS_KEY.to_vec(),
                id.as_bytes().to_vec(),
                version.as_bytes().to_vec(),
            ],
        );
        match self.reader.run(&[set], true).await?.into_iter().next() {
            Some(Reply::Error(error)) => Err(RedisError::Protocol(error)),
            _ => Ok(()),
        }
    }

    /// Every broadcast the cluster holds (each shard reads them once a
    /// second: an operator's change reaches every node within about that).
    pub async fn broadcasts(&self) -> Result<Vec<(String, String)>, RedisError> {
        let all = Command::new(
            BROADCASTS_KEY,
            vec![b"HGETALL".to_vec(), BROADCASTS_KEY.to_vec()],
        );
        let reply = self.reader.run(&[all], false).await?.into_iter().next();
        let Some(Reply::Array(items)) = reply else {
            return Ok(Vec::new());
        };
        let text = |item: Reply| match item {
            Reply::Bulk(bytes) => String::from_utf8(bytes).ok(),
            _ => None,
        };
        let mut items = items.into_iter();
        let mut broadcasts = Vec::new();
        while let (Some(id), Some(version)) = (items.next(), items.next()) {
            if let (Some(id), Some(version)) = (text(id), text(version)) {
                broadcasts.push((id, version));
            }
        }
        Ok(broadcasts)
    }
}

/// Sends the queued lookups, all of them per batch, until none is left.
async fn send_lookups(reader: Rc<ClusterClient>, lookups: Rc<Lookups>) {
    loop {
        let batch = std::mem::take(&mut *lookups.waiting.borrow_mut());
        if batch.is_empty() {
            lookups.sending.set(false);
            return;
        }
        let (commands, answers): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
        let mut replies = reader
            .run(&commands, false)
            .await
            .ok()
            .into_iter()
            .flatten();
        for answer in answers {
            let token = match replies.next() {
                Some(Reply::Bulk(token)) => Some(token),
                _ => None,
            };
            let _ = answer.try_send(token);
        }
    }
}
