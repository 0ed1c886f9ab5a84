//! The runtime, as the shard driver sees it: a clock, the rings to other
//! shards, local AS requests waiting for answers, and the wakeup core.
//! glommio implements it in `net/src/ctx.rs`; the whole-shard simulation
//! implements it with virtual time and in-memory rings.

use std::future::Future;

use herald_engine::message::{Urgency, WakeupInfo};
use herald_engine::push::HttpResponse;
use herald_engine::{Millis, Uaid};
use herald_store::{Claim, ClaimError};

use super::ring::RingMsg;

pub trait Runtime {
    /// A UA socket on its way to another shard.
    type Socket;
    /// Where a local AS request waits for its answer.
    type Waiter;

    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> Millis;

    /// Microseconds on the same clock, for latencies.
    fn now_us(&self) -> u64 {
        self.now_ms().saturating_mul(1000)
    }

    /// Puts `message` on the ring to `shard`, or gives it back when the ring
    /// is full (back-pressure: the caller refuses the request).
    #[allow(
        clippy::result_large_err,
        reason = "a refused message comes back whole, as a runtime channel hands it back"
    )]
    fn try_send(
        &self,
        shard: usize,
        message: RingMsg<Self::Socket>,
    ) -> Result<(), RingMsg<Self::Socket>>;

    /// Sends `message` to `shard` even if its ring is full now (the runtime
    /// waits for room): answers must not be dropped.
    fn send(&self, shard: usize, message: RingMsg<Self::Socket>);

    /// Gives a local AS request its answer.
    fn answer(&self, waiter: Self::Waiter, response: HttpResponse);

    /// A message waits for a sleeping UA: have the wakeup core wake it.
    fn wakeup(&self, uaid: Uaid, target: WakeupInfo, urgency: Urgency);

    /// The UA reconnected: stop any wakeup in flight for it.
    fn awake(&self, uaid: Uaid);

    /// Cluster mode: runs a claim of `uaid` (a future of the store), tells
    /// the node that held the UA before to let go, and gives the result to
    /// [`super::Driver::on_claimed`].
    fn load(&self, uaid: Uaid, claim: impl Future<Output = Result<Claim, ClaimError>> + 'static);
}
