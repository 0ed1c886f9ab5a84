//! Broadcasts (SPEC §3.5).

use super::*;

impl Shard {
    /// Subscribes `conn` to `request` (id → the version the UA has) and
    /// answers with the subscribed broadcasts whose current version differs,
    /// and the ids Herald has no version for. An id not set yet is still
    /// subscribed (an operator may set it later, and the UA then hears of
    /// it); it is also named in the answer's errors, as autopush does, since
    /// there is no version to give. Each subscription costs one set entry,
    /// whatever the number of broadcasts.
    pub(super) fn subscribe_broadcasts(
        &mut self,
        conn: ConnId,
        request: &BroadcastRequest,
    ) -> BroadcastReply {
        let mut reply = BroadcastReply {
            changes: Vec::new(),
            not_found: request.malformed.clone(),
        };
        let Some(state) = self.conns.get_mut(&conn) else {
            return reply;
        };
        let mut subscribed = std::mem::take(&mut state.broadcasts).into_vec();
        for (id, have) in &request.wanted {
            if !subscribed.contains(id) {
                if subscribed.len() >= self.config.limits.broadcasts_per_ua_max {
                    continue;
                }
                subscribed.push(id.clone());
                self.broadcast_subscribers
                    .entry(id.clone())
                    .or_default()
                    .insert(conn);
            }
            match self.broadcasts.get(id) {
                None => reply.not_found.push(id.clone()),
                Some(current) if current != have => {
                    reply.changes.push((id.clone(), current.clone()))
                }
                Some(_) => {}
            }
        }
        state.broadcasts = subscribed.into_boxed_slice();
        reply
    }

    /// An operator set broadcast `id` to `version` (on any shard; every shard
    /// hears it): tell this shard's subscribers.
    pub fn on_broadcast(&mut self, id: &str, version: &str) {
        if self
            .broadcasts
            .get(id)
            .is_some_and(|current| current == version)
        {
            return;
        }
        self.broadcasts.insert(id.to_owned(), version.to_owned());
        let subscribers: Vec<ConnId> = self
            .broadcast_subscribers
            .get(id)
            .map(|conns| conns.iter().copied().collect())
            .unwrap_or_default();
        let message = ua::broadcast_message(&BroadcastReply {
            changes: vec![(id.to_owned(), version.to_owned())],
            not_found: Vec::new(),
        });
        for conn in subscribers {
            self.send(conn, None, message.clone());
        }
    }
}
