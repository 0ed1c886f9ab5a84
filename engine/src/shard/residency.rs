//! Cluster mode (SPEC §8, issue 11): which UAs this shard holds in memory.
//!
//! A single node's shard holds every UA of its hash range, all replayed from
//! its WAL. A cluster node's shard holds only the UAs it *owns*: the ones
//! connected to it, and, for the length of one request, a disconnected UA an
//! AS request named. Owning a UA is a claim in the cluster store, made by
//! [`Action::Load`] (the last claim wins: a socket's hello takes its UA
//! over from any other node); the store answers with the UA's records, which
//! [`Shard::on_loaded`] applies, and every write the shard then makes for
//! the UA is fenced by that claim in the store. A UA leaves memory with
//! [`Action::Release`] once nothing here needs it, or at once, without a
//! release, when the store says another node took it over
//! ([`Shard::on_dropped`]).
//!
//! While a UA loads, what named it waits here: hellos (the socket stays open
//! under its hello deadline) and AS requests (their answers wait).

use super::*;

/// Work waiting for a UA's records.
#[derive(Default)]
pub(super) struct Parked {
    hellos: Vec<(ConnId, String)>,
    requests: Vec<(RequestId, PushRequest)>,
}

impl Shard {
    /// Whether this shard holds only the UAs it loaded (cluster mode).
    pub(super) fn resident_only(&self) -> bool {
        self.config.resident_only
    }

    /// Whether `uaid`'s state must be loaded before it is used here.
    pub(super) fn needs_load(&self, uaid: Uaid) -> bool {
        self.resident_only() && !self.resident.contains(&uaid)
    }

    /// A hello named a UA this shard does not hold: claim it and replay the
    /// hello once its records are here.
    pub(super) fn park_hello(&mut self, conn: ConnId, uaid: Uaid, hello: &str) {
        let parked = self.loading.entry(uaid).or_default();
        let first = parked.hellos.is_empty() && parked.requests.is_empty();
        parked.hellos.push((conn, hello.to_owned()));
        if first {
            self.actions.push_back(Action::Load { uaid });
        }
    }

    /// An AS request named a UA this shard does not hold: claim it, and
    /// take the request once its records are here. (The AS listener sent
    /// the request to the node holding the UA if there was one it could
    /// reach; a claim here takes the UA from any other.)
    pub(super) fn park_request(&mut self, request: RequestId, push: PushRequest) {
        let uaid = push.uaid();
        let parked = self.loading.entry(uaid).or_default();
        let first = parked.hellos.is_empty() && parked.requests.is_empty();
        parked.requests.push((request, push));
        if first {
            self.actions.push_back(Action::Load { uaid });
        }
    }

    /// A UAID this shard minted: nobody else can hold it, nothing to load.
    pub(super) fn mark_resident(&mut self, uaid: Uaid) {
        if self.resident_only() {
            self.resident.insert(uaid);
        }
    }

    /// The store gave `uaid` to this shard, with its records: apply them,
    /// then run what waited for them.
    pub fn on_loaded(&mut self, now_ms: Millis, uaid: Uaid, records: &[Record]) {
        let parked = self.loading.remove(&uaid).unwrap_or_default();
        for record in records {
            self.apply(record);
        }
        self.resident.insert(uaid);
        for (conn, hello) in parked.hellos {
            self.on_text(now_ms, conn, &hello);
        }
        for (request, push) in parked.requests {
            self.on_push(now_ms, request, push);
        }
        self.release_if_unused(uaid);
    }

    /// The UA could not be loaded (the cluster store did not answer): its
    /// hellos close, its requests get 503.
    pub fn on_load_failed(&mut self, uaid: Uaid) {
        let Some(parked) = self.loading.remove(&uaid) else {
            return;
        };
        for (request, _) in parked.requests {
            self.actions.push_back(Action::Reply {
                request,
                after: None,
                response: HttpResponse::error(
                    503,
                    errno::STORAGE_FAILED,
                    "cluster store unavailable",
                ),
            });
        }
        for (conn, _) in parked.hellos {
            self.close(conn, close::INTERNAL, "storage unavailable");
        }
    }

    /// Another node took `uaid` over (its socket reconnected there, or the
    /// store fenced a write of ours): close its socket here and forget it,
    /// without a release (the claim is no longer ours).
    pub fn on_dropped(&mut self, uaid: Uaid) {
        if !self.resident.remove(&uaid) {
            return;
        }
        let conn = self.uas.get(&uaid).and_then(|ua| ua.conn);
        self.forget_user_agent(uaid);
        if let Some(conn) = conn {
            self.close(conn, close::NORMAL, "another socket took over this UAID");
        }
    }

    /// Once nothing here needs `uaid` (no socket, nothing loading), it
    /// leaves memory and its claim is given back.
    pub(super) fn release_if_unused(&mut self, uaid: Uaid) {
        if !self.resident_only() || self.loading.contains_key(&uaid) {
            return;
        }
        if self.uas.get(&uaid).is_some_and(|ua| ua.conn.is_some()) {
            return;
        }
        if self.resident.remove(&uaid) {
            self.forget_user_agent(uaid);
            self.actions.push_back(Action::Release { uaid });
        }
    }

    /// Drops `uaid` from memory, and from the web apps it registered.
    pub(super) fn forget_user_agent(&mut self, uaid: Uaid) {
        let Some(ua) = self.uas.remove(&uaid) else {
            return;
        };
        for channel in ua.channels.keys() {
            if let Some(app) = self.web_apps.get_mut(channel) {
                app.uaids.remove(&uaid);
                if app.uaids.is_empty() {
                    self.web_apps.remove(channel);
                }
            }
        }
    }

    /// UAs this shard holds (cluster mode).
    pub fn resident_user_agents(&self) -> usize {
        self.resident.len()
    }
}
