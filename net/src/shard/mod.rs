//! One shard's core, free of any runtime: the [`Driver`] that turns the
//! engine's actions into effects, the [`Outbox`] of each UA socket, the
//! messages that cross the rings, and the [`Runtime`] seam the driver
//! reaches the world through. Nothing here imports glommio, a socket or a
//! listener; `net/src/ctx.rs` and `net/src/boot.rs` put it on glommio.

mod driver;
mod outbox;
mod ring;
mod seam;

pub use driver::{refusal_response, Driver, Refusal, STORE_FAILED_CLOSE};
pub use outbox::{Next, Outbox, Outgoing};
pub use ring::RingMsg;
pub use seam::Runtime;
