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
//! - on the AS listener, a request whose connection address is a trusted
//!   proxy (no header, or one that named another trusted proxy) is from the
//!   right-most address of `X-Forwarded-For` that is not a trusted proxy;
//!   `Forwarded: for=` (RFC 7239) is read only when there is no
//!   `X-Forwarded-For`. See ARCHITECTURE.md, "Behind a proxy".

use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use glommio::net::TcpStream;

use crate::cidrs::Cidrs;
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

/// The client of one AS request that came over a connection from
/// `connection` (its [`Origin::client`]).
///
/// From a trusted proxy, the forwarding chain is walked from the right, the
/// hop nearest to Herald: each trusted proxy in it is stepped over, and the
/// first address that is not one is the client. An entry that is not an
/// address (`unknown`, an obfuscated `_name`, garbage) ends the walk at the
/// last address known, so nothing a client writes to the left of it counts.
///
/// `X-Forwarded-For` wins over `Forwarded` because it is what nearly every
/// proxy writes (nginx, HAProxy's `forwardfor`, cloud load balancers); most
/// pass a header they do not write through untouched, so reading the other
/// one would let a client name its own address.
pub fn of_request(trusted: &Cidrs, connection: IpAddr, headers: &[(String, Vec<u8>)]) -> IpAddr {
    if !trusted.contains(connection) {
        return connection;
    }
    let mut forwarded_for = entries(headers, "x-forwarded-for")
        .map(forwarded_for_hop)
        .peekable();
    if forwarded_for.peek().is_some() {
        walk(trusted, connection, forwarded_for)
    } else {
        let forwarded = entries(headers, "forwarded").map(forwarded_hop);
        walk(trusted, connection, forwarded)
    }
}

/// The comma-separated entries of every `name` header, last first (the
/// lines of a header are one list, in order).
fn entries<'a>(
    headers: &'a [(String, Vec<u8>)],
    name: &'static str,
) -> impl Iterator<Item = &'a [u8]> {
    headers
        .iter()
        .rev()
        .filter(move |(header, _)| header.eq_ignore_ascii_case(name))
        .flat_map(|(_, value)| value.rsplit(|byte| *byte == b','))
}

/// Steps from `connection` over trusted hops, nearest first.
fn walk(trusted: &Cidrs, connection: IpAddr, hops: impl Iterator<Item = Option<IpAddr>>) -> IpAddr {
    let mut client = connection;
    for hop in hops {
        if !trusted.contains(client) {
            break;
        }
        match hop {
            Some(address) => client = address.to_canonical(),
            None => break,
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, perhaps with a port.
fn forwarded_for_hop(entry: &[u8]) -> Option<IpAddr> {
    node_address(std::str::from_utf8(entry).ok()?.trim())
}

/// One `Forwarded` element: its `for=` node (RFC 7239 §4, §6).
fn forwarded_hop(element: &[u8]) -> Option<IpAddr> {
    let element = std::str::from_utf8(element).ok()?;
    let node = element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then_some(value.trim())
    })?;
    let node = node
        .strip_prefix('"')
        .and_then(|node| node.strip_suffix('"'))
        .unwrap_or(node);
    node_address(node)
}

/// `192.0.2.1`, `192.0.2.1:8080`, `2001:db8::1`, `[2001:db8::1]`,
/// `[2001:db8::1]:8080`; anything else (`unknown`, `_hidden`) is no address.
fn node_address(node: &str) -> Option<IpAddr> {
    if let Ok(address) = node.parse::<IpAddr>() {
        return Some(address);
    }
    if let Ok(address) = node.parse::<SocketAddr>() {
        return Some(address.ip());
    }
    node.strip_prefix('[')?
        .strip_suffix(']')?
        .parse::<std::net::Ipv6Addr>()
        .ok()
        .map(IpAddr::V6)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("literal")
    }

    fn trusted() -> Cidrs {
        Cidrs::parse(&["10.0.0.0/8", "2001:db8:ffff::/48"]).expect("literal")
    }

    fn headers(list: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        list.iter()
            .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
            .collect()
    }

    fn client(connection: &str, list: &[(&str, &str)]) -> IpAddr {
        of_request(&trusted(), ip(connection), &headers(list))
    }

    #[test]
    fn untrusted_connections_keep_their_address() {
        let forged = [
            ("X-Forwarded-For", "198.51.100.1"),
            ("Forwarded", "for=198.51.100.2"),
        ];
        assert_eq!(client("203.0.113.9", &forged), ip("203.0.113.9"));
        assert_eq!(
            client("::ffff:203.0.113.9", &forged),
            ip("::ffff:203.0.113.9")
        );
    }

    #[test]
    fn x_forwarded_for_right_most_untrusted() {
        // The client wrote the first entry itself; the proxies appended.
        let list = [("X-Forwarded-For", "1.1.1.1, 203.0.113.7, 10.0.0.2")];
        assert_eq!(client("10.0.0.1", &list), ip("203.0.113.7"));
        // Several header lines are one list, in order.
        let split = [
            ("X-Forwarded-For", "1.1.1.1"),
            ("x-forwarded-for", "203.0.113.7:5555 , 10.0.0.2"),
        ];
        assert_eq!(client("10.0.0.1", &split), ip("203.0.113.7"));
        let v6 = [("X-Forwarded-For", "2001:db8::7, [2001:db8:ffff::1]:443")];
        assert_eq!(client("10.0.0.1", &v6), ip("2001:db8::7"));
        let mapped = [("X-Forwarded-For", "::ffff:203.0.113.8")];
        assert_eq!(client("10.0.0.1", &mapped), ip("203.0.113.8"));
    }

    #[test]
    fn a_chain_of_proxies_only_is_its_farthest_proxy() {
        let list = [("X-Forwarded-For", "10.9.9.9, 10.0.0.2")];
        assert_eq!(client("10.0.0.1", &list), ip("10.9.9.9"));
        assert_eq!(client("10.0.0.1", &[]), ip("10.0.0.1"));
    }

    #[test]
    fn an_entry_that_is_no_address_ends_the_walk() {
        let list = [("X-Forwarded-For", "203.0.113.7, unknown, 10.0.0.2")];
        assert_eq!(client("10.0.0.1", &list), ip("10.0.0.2"));
        let list = [("X-Forwarded-For", "203.0.113.7, \u{fffd}")];
        assert_eq!(client("10.0.0.1", &list), ip("10.0.0.1"));
        let list = [("X-Forwarded-For", "")];
        assert_eq!(client("10.0.0.1", &list), ip("10.0.0.1"));
    }

    #[test]
    fn forwarded_when_there_is_no_x_forwarded_for() {
        let list = [(
            "Forwarded",
            "for=1.1.1.1, for=203.0.113.7;proto=https;by=10.0.0.1, For=\"[2001:db8:ffff::3]:80\"",
        )];
        assert_eq!(client("10.0.0.1", &list), ip("203.0.113.7"));
        let list = [("Forwarded", "for=\"[2001:db8::5]\"")];
        assert_eq!(client("10.0.0.1", &list), ip("2001:db8::5"));
        let list = [("Forwarded", "for=\"203.0.113.7:4711\"")];
        assert_eq!(client("10.0.0.1", &list), ip("203.0.113.7"));
        for opaque in ["for=_hidden", "for=unknown", "proto=https", "for=\"[::1\""] {
            let list = [("Forwarded", opaque)];
            assert_eq!(client("10.0.0.1", &list), ip("10.0.0.1"), "{opaque}");
        }
        // Both: X-Forwarded-For is the one read.
        let both = [
            ("Forwarded", "for=198.51.100.1"),
            ("X-Forwarded-For", "203.0.113.7"),
        ];
        assert_eq!(client("10.0.0.1", &both), ip("203.0.113.7"));
    }

    #[test]
    fn node_addresses() {
        for (node, address) in [
            ("192.0.2.1", Some("192.0.2.1")),
            ("192.0.2.1:8080", Some("192.0.2.1")),
            ("2001:db8::1", Some("2001:db8::1")),
            ("[2001:db8::1]", Some("2001:db8::1")),
            ("[2001:db8::1]:8080", Some("2001:db8::1")),
            ("[192.0.2.1]", None),
            ("unknown", None),
            ("_hidden", None),
            ("", None),
        ] {
            assert_eq!(node_address(node), address.map(ip), "{node}");
        }
    }
}
