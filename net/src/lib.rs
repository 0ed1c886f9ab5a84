//! Herald's runtime: the only crate (with `store/`) that knows about glommio,
//! sockets and clocks. It runs one pinned executor per shard; each accepts on
//! both listeners (SO_REUSEPORT), drives its [`herald_engine::shard::Shard`]
//! and talks to the other shards only through bounded rings.

mod admin_conn;
mod admin_token;
mod as_conn;
mod boot;
mod broadcasts;
pub mod cidrs;
mod client_addr;
mod cluster;
mod compaction;
mod conn_io;
mod ctx;
mod health;
pub mod http;
mod http2_conn;
mod http_client;
mod http_conn;
pub mod metrics;
mod node_conn;
mod node_link;
mod pages;
mod per_ip;
pub mod process;
mod proxy_header;
mod rate_window;
mod routes;
mod runtime;
pub mod shard;
mod shared;
mod store;
mod tls;
mod ua_conn;
mod ua_stream;
mod ua_tls;
mod wakeup;
mod wakeup_client;
mod wakeup_http;
pub mod wakeup_metrics;
// Public (undocumented) only so `bench/` can time the wakeup core's parts.
#[doc(hidden)]
pub mod wakeup_udp;
pub mod websocket;

use std::net::SocketAddr;
use std::path::PathBuf;

use herald_engine::identity::KeyMaterial;
use herald_engine::limits::Limits;

pub use cidrs::Cidrs;
pub use herald_store::FsyncMode;
pub use runtime::serve;
pub use tls::TlsFiles;
pub use wakeup_http::ProxyUrl;

/// The running binary: its release and the git commit it was built from
/// (`tools/build.rs`), for `herald_build_info` and the operator pages.
#[derive(Clone, Copy, Debug)]
pub struct Build {
    pub version: &'static str,
    pub commit: &'static str,
}

/// Where a wakeup for one mobile network goes (SPEC §5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WakeupRoute {
    /// Herald sends the UDP datagram itself.
    Udp,
    /// A wakeup proxy inside the operator network: `POST <url>/wakeup`,
    /// with the bearer secret of [`ServerConfig::wakeup_proxy_secret`].
    Proxy(ProxyUrl),
}

/// A shared secret: compared and sent, never shown (`Debug` hides it).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(text: String) -> Secret {
        Secret(text)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        out.write_str("Secret(..)")
    }
}

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub ua_listen: SocketAddr,
    pub as_listen: SocketAddr,
    /// The operator's listener: health, `/metrics`, `/about`, no token asked.
    pub admin_listen: SocketAddr,
    /// Base of pushEndpoints; its origin is also the VAPID audience.
    pub endpoint_url: String,
    pub data_dir: PathBuf,
    pub shards: usize,
    pub fsync: FsyncMode,
    /// `MCC-MNC` → route.
    pub wakeup_routes: Vec<(String, WakeupRoute)>,
    /// Sent to wakeup proxies as `Authorization: Bearer` (SPEC §5,
    /// `wakeup_proxy_secret_file`).
    pub wakeup_proxy_secret: Option<Secret>,
    pub limits: Limits,
    pub keys: KeyMaterial,
    /// Bearer token for operator requests on the public AS listener
    /// (`PUT /v1/broadcasts/<id>`, `/metrics`, `/about`); `None` disables them
    /// there.
    pub admin_token: Option<String>,
    /// Cluster mode (`--cluster`); `None`: a single node with its own WAL.
    pub cluster: Option<ClusterConfig>,
    /// Peers whose PROXY headers (UA and AS listeners) and `Forwarded` /
    /// `X-Forwarded-For` headers (AS listener) name the client
    /// (`--trusted-proxy`); everyone else's are not believed.
    pub trusted_proxies: cidrs::Cidrs,
    /// `--tls-cert`/`--tls-key`: `wss://` and `https://` on the UA and AS
    /// listeners; None: plain text.
    pub tls: Option<TlsFiles>,
}

/// One node of a cluster whose state lives in a Redis Cluster (SPEC §2).
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// `redis://host:port` of every seed node (a dead one is skipped).
    pub seeds: Vec<String>,
    /// The node-to-node listener.
    pub node_listen: SocketAddr,
    /// How other nodes reach `node_listen` (`http://host:port`).
    pub node_url: String,
    /// Replicas that must acknowledge a write before it counts (`WAIT`).
    pub replicas: u32,
    pub wait_timeout_ms: u64,
    /// Redis calls per pipelined batch of a shard.
    pub pipeline_max: usize,
}

/// `scheme://host[:port]` of a URL: the VAPID `aud` Herald expects.
pub fn origin_of(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |index| index + 3);
    let end = url[after_scheme..]
        .find('/')
        .map_or(url.len(), |index| after_scheme + index);
    url[..end].to_owned()
}
