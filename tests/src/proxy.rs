//! A TLS proxy's side of Herald's listeners: PROXY protocol headers (v1
//! text, v2 binary, written from HAProxy's specification rather than with a
//! library, so that they check Herald's parser) and connections from a
//! chosen loopback source address, to be a trusted proxy or a stranger.

use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use socket2::{Domain, Socket, Type};

/// `PROXY TCP4|TCP6 <client> <server> <client port> <server port>\r\n`
pub fn proxy_v1(client: IpAddr, server: SocketAddr) -> Vec<u8> {
    let family = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    let server_ip = match (client, server.ip()) {
        (IpAddr::V6(_), IpAddr::V4(v4)) => IpAddr::V6(v4.to_ipv6_mapped()),
        (_, ip) => ip,
    };
    format!(
        "PROXY {family} {client} {server_ip} 40000 {}\r\n",
        server.port()
    )
    .into_bytes()
}

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

/// A v2 `PROXY` header over TCP naming `client`, with one NOOP TLV (as
/// senders may add) after the addresses.
pub fn proxy_v2(client: IpAddr, server: SocketAddr) -> Vec<u8> {
    let mut addresses = Vec::new();
    let family = match (client, server.ip()) {
        (IpAddr::V4(client), IpAddr::V4(server)) => {
            addresses.extend_from_slice(&client.octets());
            addresses.extend_from_slice(&server.octets());
            0x11
        }
        (client, server) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            addresses.extend_from_slice(&v6(client));
            addresses.extend_from_slice(&v6(server));
            0x21
        }
    };
    addresses.extend_from_slice(&40000u16.to_be_bytes());
    addresses.extend_from_slice(&server.port().to_be_bytes());
    addresses.extend_from_slice(&[0x04, 0x00, 0x01, 0x00]);
    v2_header(0x21, family, &addresses)
}

/// A v2 `LOCAL` header: the proxy's own connection (a health check).
pub fn proxy_v2_local() -> Vec<u8> {
    v2_header(0x20, 0x00, &[])
}

fn v2_header(version_command: u8, family: u8, rest: &[u8]) -> Vec<u8> {
    let mut header = V2_SIGNATURE.to_vec();
    header.push(version_command);
    header.push(family);
    header.extend_from_slice(&(rest.len() as u16).to_be_bytes());
    header.extend_from_slice(rest);
    header
}

/// A TCP connection to `addr` from the loopback address `source` (every
/// 127.0.0.0/8 address is this machine's).
pub fn connect_from(source: IpAddr, addr: &str) -> TcpStream {
    let target = addr
        .to_socket_addrs()
        .expect("address")
        .next()
        .expect("one");
    let socket = Socket::new(Domain::for_address(target), Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::new(source, 0).into())
        .unwrap_or_else(|error| panic!("bind {source}: {error}"));
    socket
        .connect_timeout(&target.into(), Duration::from_secs(5))
        .unwrap_or_else(|error| panic!("connect {addr} from {source}: {error}"));
    let stream: TcpStream = socket.into();
    stream.set_nodelay(true).ok();
    stream
}
