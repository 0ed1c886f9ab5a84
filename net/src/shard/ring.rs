//! What crosses the rings between shards.

use herald_engine::extended::AppNotification;
use herald_engine::push::{HttpResponse, PushRequest};
use herald_engine::{ChannelId, RequestId, Uaid};

/// A message from one shard to another. `S` is a UA socket in transit, as
/// the runtime represents it (a descriptor and what was read from it).
pub enum RingMsg<S> {
    /// A UA socket whose hello named a UAID of the receiving shard.
    HandOff(S),
    /// AS requests for UAIDs the receiver owns: all those one turn of the
    /// sending shard took for it (a batch of pipelined requests, or of
    /// HTTP/2 streams) travel together, each under the sender's id.
    Pushes {
        origin: usize,
        pushes: Vec<(RequestId, PushRequest)>,
    },
    /// An AS posted to an extended-protocol app url (SPEC §3.6): every shard
    /// stores it for its own UAs of that app.
    AppNotify {
        origin: usize,
        request: RequestId,
        channel: ChannelId,
        notification: AppNotification,
    },
    /// Cluster mode: another node displaced the claim `nonce` on this UA
    /// (it says so over the node link, to whichever shard took the call).
    Displaced { uaid: Uaid, nonce: String },
    /// An operator changed a broadcast on another shard.
    Broadcast { id: String, version: String },
    /// The owner's answers, already durable: all those one durable point
    /// released for the receiving shard travel together.
    Replies(Vec<(RequestId, HttpResponse)>),
}
