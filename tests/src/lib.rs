//! Black-box test harness for Herald.
//!
//! Everything here talks to a real `herald serve` process over loopback:
//! - [`server`]: [`Server`] starts one (own temp dir, own ports), restarts
//!   and crashes it;
//! - [`process`]: finding the binary, readiness waits, herald commands;
//! - [`ua`]: [`WsClient`] is a UA (WebSocket, hand-rolled handshake so that a
//!   server which does not echo the subprotocol is accepted, as Firefox
//!   does), and [`messages`] reads what it receives;
//! - [`as_client`]: [`http`] and the push requests of the AS side;
//!   [`http_raw`]: [`raw_http`], exact bytes for the malformed cases;
//! - [`metrics`]: `/metrics` parsed;
//! - [`proxy`]: PROXY protocol headers, connections from a chosen source
//!   address;
//! - [`ece`]: RFC 8291 decryption, the UA's side;
//! - [`h2_client`]: an HTTP/2 sender over any async stream;
//! - [`tls`]: a test CA and its server certificates, `wss://` and `https://` clients;
//! - [`redis_cluster`]: [`RedisCluster`], nine `redis-server` processes in
//!   three "data centres", for cluster mode;
//! - [`util`]: ids, base64url, ports, temp dirs, [`wait_until`].
//!
//! Everything is re-exported here, so tests say `use herald_tests::*;`.
//!
//! Rules for the tests built on this: no sleep that hopes. Every wait is a
//! loop on an event with a deadline; "nothing arrives" is checked with a read
//! timeout over a bounded window.

pub mod as_client;
pub mod ece;
pub mod h2_client;
pub mod http_raw;
pub mod messages;
pub mod metrics;
pub mod process;
pub mod proxy;
pub mod redis_cluster;
pub mod server;
pub mod tls;
pub mod ua;
pub mod util;

pub use as_client::*;
pub use http_raw::*;
pub use messages::*;
pub use metrics::*;
pub use process::*;
pub use proxy::*;
pub use redis_cluster::RedisCluster;
pub use serde_json;
pub use server::*;
pub use tls::*;
pub use ua::*;
pub use util::*;

use std::time::Duration;

/// Default deadline for something that must happen ("a notification arrives").
pub const DEADLINE: Duration = Duration::from_secs(5);
/// Window for bounded negative checks ("nothing more arrives").
pub const NEG_WINDOW: Duration = Duration::from_millis(1000);
/// Deadline for the server to become ready.
pub const READY_DEADLINE: Duration = Duration::from_secs(10);

/// The P-256 generator point, uncompressed (private key = 1): a valid VAPID
/// public key, base64url without padding.
pub const VAPID_KEY_G: &str =
    "BGsX0fLhLEJH-Lzm5WOkQPJ3A32BLeszoPShOUXYmMKWT-NC4v4af5uO5-tKfA-eFivOM1drMV7Oy7ZAaDe_UfU";
