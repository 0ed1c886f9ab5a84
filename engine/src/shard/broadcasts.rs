//! Broadcasts (SPEC §3.5).

use super::*;

impl Shard {
    /// Subscribes `conn` to `wanted` (id → the version the UA has) and returns
    /// the subscribed broadcasts whose current version differs. Each
    /// subscription costs one set entry, whatever the number of broadcasts.
    pub(super) fn subscribe_broadcasts(
        &mut self,
        conn: ConnId,
        wanted: &[(String, String)],
    ) -> Vec<(String, String)> {
        let Some(state) = self.conns.get_mut(&conn) else {
            return Vec::new();
        };
        let mut changes = Vec::new();
        let mut subscribed = std::mem::take(&mut state.broadcasts).into_vec();
        for (id, have) in wanted {
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
            if let Some(current) = self.broadcasts.get(id).filter(|current| *current != have) {
                changes.push((id.clone(), current.clone()));
            }
        }
        state.broadcasts = subscribed.into_boxed_slice();
        changes
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
        let message = ua::broadcast_message(&[(id.to_owned(), version.to_owned())]);
        for conn in subscribers {
            self.send(conn, None, message.clone());
        }
    }
}
