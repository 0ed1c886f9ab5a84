//! Whose address a connection, and an AS request, come from. Every decision
//! Herald makes per source address (the cap on connections per IP, `GET
//! /token`'s limit, the rate limits) takes the address from here, never from
//! the socket: behind a TLS proxy the socket's peer is the proxy.
//!
//! Only peers in `--trusted-proxy` are believed (SPEC §2):
//!
//! - a connection from one may start with a PROXY protocol header (v1 or
//!   v2, `proxy_header.rs`) naming the client the proxy accepted; that
//!   client is then the connection's address. A bad header closes the
//!   connection; `LOCAL` (a v2 health check) and `UNKNOWN` keep the proxy's
//!   address. From anyone else nothing is looked for: the bytes are the
//!   protocol's, and a PROXY header there fails the protocol's handshake.

use std::net::IpAddr;
use std::time::Instant;

use glommio::net::TcpStream;

use crate::per_ip::IpSlot;
use crate::proxy_header;
use crate::shared::Shared;

/// Where a connection on the UA or AS listener comes from.
pub struct Origin {
    /// The TCP peer, or the client a trusted proxy's PROXY header named.
    pub client: IpAddr,
    /// The connection's place under `connections_per_ip_max` (`None` while
    /// the cap is off), counted for `client`.
    pub slot: Option<IpSlot>,
    /// Bytes read past the PROXY header: the protocol's first bytes.
    pub rest: Vec<u8>,
}

/// Resolves a freshly accepted connection's client and takes its place
/// under the cap on connections per IP. `None`: close the connection (a
/// bad or late PROXY header, or the client is at its cap).
pub async fn accept(
    shared: &Shared,
    shard: usize,
    stream: &mut TcpStream,
    deadline: Instant,
) -> Option<Origin> {
    let peer = stream.peer_addr().ok()?.ip().to_canonical();
    let limits = &shared.config.limits;
    let (client, rest) = if shared.config.trusted_proxies.contains(peer) {
        match proxy_header::read(stream, limits.proxy_header_bytes_max, deadline).await {
            Ok(read) => (read.source.map_or(peer, |ip| ip.to_canonical()), read.rest),
            Err(reason) => {
                shared.metrics.error(shard, "proxy_header", 1);
                tracing::debug!(%peer, reason, "connection from a trusted proxy refused");
                return None;
            }
        }
    } else {
        (peer, Vec::new())
    };
    let max = limits.connections_per_ip_max;
    let Ok(slot) = shared.connections_per_ip.acquire(client, max) else {
        shared.metrics.error(shard, "connections_per_ip", 1);
        return None;
    };
    Some(Origin { client, slot, rest })
}
