//! The PROXY protocol header (HAProxy's text v1 and binary v2) that a
//! trusted proxy puts before a connection's first byte to name the client it
//! accepted. Parsing is the `ppp` crate's; this module decides what a
//! header means to Herald and reads one from a socket with a bound on its
//! size and a deadline. Only connections from a trusted proxy are ever
//! looked at (`client_addr.rs`): anyone else's bytes belong to the protocol.

use std::net::IpAddr;
use std::time::Instant;

use futures_lite::AsyncReadExt;
use glommio::net::TcpStream;
use ppp::v2;
use ppp::PartialResult;

/// The v2 header's fixed part: signature, version and command, family and
/// protocol, and the length of what follows.
const V2_FIXED_BYTES: usize = 16;
/// v1 headers start with this (the v2 signature starts with `\r\n`, so the
/// two never share a first byte).
const V1_SIGNATURE: &[u8] = b"PROXY ";
/// The longest v1 header, CRLF included (HAProxy's specification).
const V1_BYTES_MAX: usize = 107;
const READ_CHUNK_BYTES: usize = 512;

/// What the start of a connection says.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A prefix of a header (or of a signature): read more.
    Incomplete,
    /// The bytes do not start with a PROXY signature.
    Absent,
    /// A complete header of `bytes` bytes. `source` is the client it names;
    /// `None` for v2 `LOCAL` (the proxy's own health check), v1 `UNKNOWN`
    /// and address families other than IPv4 and IPv6: the connection then
    /// keeps the proxy's address.
    Header {
        source: Option<IpAddr>,
        bytes: usize,
    },
    /// A signature followed by something that is not a valid header, or a
    /// header over the size bound.
    Bad(&'static str),
}

/// Reads what the start of `buffer` holds; a header longer than
/// `bytes_max` is `Bad` as soon as its length is known.
pub fn parse(buffer: &[u8], bytes_max: usize) -> Parsed {
    if buffer.starts_with(v2::PROTOCOL_PREFIX) {
        return parse_v2(buffer, bytes_max);
    }
    if buffer.starts_with(V1_SIGNATURE) {
        return parse_v1(buffer, bytes_max);
    }
    let prefix_of = |signature: &[u8]| signature.starts_with(buffer);
    if buffer.len() < v2::PROTOCOL_PREFIX.len()
        && (prefix_of(v2::PROTOCOL_PREFIX) || prefix_of(V1_SIGNATURE))
    {
        return Parsed::Incomplete;
    }
    Parsed::Absent
}

fn parse_v2(buffer: &[u8], bytes_max: usize) -> Parsed {
    if buffer.len() >= V2_FIXED_BYTES {
        let length = u16::from_be_bytes([buffer[V2_FIXED_BYTES - 2], buffer[V2_FIXED_BYTES - 1]]);
        if V2_FIXED_BYTES + usize::from(length) > bytes_max {
            return Parsed::Bad("PROXY v2 header too large");
        }
    }
    let header = v2::Header::try_from(buffer);
    if header.is_incomplete() {
        return Parsed::Incomplete;
    }
    let Ok(header) = header else {
        return Parsed::Bad("malformed PROXY v2 header");
    };
    let source = match (header.command, header.addresses) {
        (v2::Command::Local, _) => None,
        (v2::Command::Proxy, v2::Addresses::IPv4(addresses)) => {
            Some(IpAddr::V4(addresses.source_address))
        }
        (v2::Command::Proxy, v2::Addresses::IPv6(addresses)) => {
            Some(IpAddr::V6(addresses.source_address))
        }
        (v2::Command::Proxy, v2::Addresses::Unspecified | v2::Addresses::Unix(_)) => None,
    };
    Parsed::Header {
        source,
        bytes: header.header.len(),
    }
}

fn parse_v1(buffer: &[u8], bytes_max: usize) -> Parsed {
    // A v1 header is one line: parsed only once it has ended (ppp's own
    // "incomplete" misjudges some prefixes, such as one ending in a space).
    let Some(end) = buffer.iter().position(|byte| *byte == b'\n') else {
        let stray_return = buffer.iter().position(|byte| *byte == b'\r');
        return if stray_return.is_some_and(|at| at + 1 < buffer.len()) {
            Parsed::Bad("malformed PROXY v1 header")
        } else if buffer.len() >= bytes_max.min(V1_BYTES_MAX) {
            Parsed::Bad("PROXY v1 header too large")
        } else {
            Parsed::Incomplete
        };
    };
    let line = &buffer[..=end];
    if line.len() > bytes_max.min(V1_BYTES_MAX) {
        return Parsed::Bad("PROXY v1 header too large");
    }
    let header = match ppp::v1::Header::try_from(line) {
        Ok(header) if header.header.len() == line.len() => header,
        _ => return Parsed::Bad("malformed PROXY v1 header"),
    };
    let source = match header.addresses {
        ppp::v1::Addresses::Tcp4(addresses) => Some(IpAddr::V4(addresses.source_address)),
        ppp::v1::Addresses::Tcp6(addresses) => Some(IpAddr::V6(addresses.source_address)),
        ppp::v1::Addresses::Unknown => None,
    };
    Parsed::Header {
        source,
        bytes: line.len(),
    }
}

/// What a trusted proxy's connection started with.
#[derive(Debug)]
pub struct Read {
    /// The client the header named; `None` when there was no header or it
    /// named none (see [`Parsed::Header`]).
    pub source: Option<IpAddr>,
    /// Bytes read past the header: the start of the protocol's own bytes.
    pub rest: Vec<u8>,
}

/// Reads a connection's PROXY header, if it has one, by `deadline`. An
/// error (a bad header, a timeout, EOF before the header ends) means the
/// connection must be closed.
pub async fn read(
    stream: &mut TcpStream,
    bytes_max: usize,
    deadline: Instant,
) -> Result<Read, &'static str> {
    let mut buffer = Vec::new();
    loop {
        match parse(&buffer, bytes_max) {
            Parsed::Header { source, bytes } => {
                buffer.drain(..bytes);
                return Ok(Read {
                    source,
                    rest: buffer,
                });
            }
            Parsed::Absent if !buffer.is_empty() => {
                return Ok(Read {
                    source: None,
                    rest: buffer,
                })
            }
            Parsed::Bad(reason) => return Err(reason),
            Parsed::Absent | Parsed::Incomplete => {}
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() || stream.set_read_timeout(Some(remaining)).is_err() {
            return Err("no complete PROXY header in time");
        }
        let mut chunk = [0u8; READ_CHUNK_BYTES];
        match stream.read(&mut chunk).await {
            Ok(0) => return Err("connection closed before its first bytes were complete"),
            Ok(read) => buffer.extend_from_slice(&chunk[..read]),
            Err(_) => return Err("no complete PROXY header in time"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    const MAX: usize = 4096;

    /// A v2 header built by hand (not with ppp's builder, so that the
    /// parser is checked against the specification's byte layout).
    fn v2_header(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut bytes = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        bytes.push(0x20 | command);
        bytes.push(family);
        let length = (addresses.len() + tlvs.len()) as u16;
        bytes.extend_from_slice(&length.to_be_bytes());
        bytes.extend_from_slice(addresses);
        bytes.extend_from_slice(tlvs);
        bytes
    }

    fn v4_addresses(source: [u8; 4]) -> Vec<u8> {
        let mut bytes = source.to_vec();
        bytes.extend_from_slice(&[10, 0, 0, 1, 0x30, 0x39, 0x1f, 0x90]);
        bytes
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("literal")
    }

    #[test]
    fn v1_names_the_client_and_leaves_the_rest() {
        let mut input = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 8080\r\n".to_vec();
        let header_bytes = input.len();
        input.extend_from_slice(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            parse(&input, MAX),
            Parsed::Header {
                source: Some(ip("203.0.113.7")),
                bytes: header_bytes
            }
        );
        let v6 = b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 8080\r\n";
        assert_eq!(
            parse(v6, MAX),
            Parsed::Header {
                source: Some(ip("2001:db8::7")),
                bytes: v6.len()
            }
        );
        let unknown = b"PROXY UNKNOWN\r\n";
        assert_eq!(
            parse(unknown, MAX),
            Parsed::Header {
                source: None,
                bytes: unknown.len()
            }
        );
    }

    #[test]
    fn v2_names_the_client_local_keeps_the_proxy() {
        let tlv = [0x04, 0x00, 0x02, 0xab, 0xcd]; // a NOOP TLV
        let header = v2_header(0x1, 0x11, &v4_addresses([198, 51, 100, 9]), &tlv);
        let mut input = header.clone();
        input.extend_from_slice(b"GET /");
        assert_eq!(
            parse(&input, MAX),
            Parsed::Header {
                source: Some(ip("198.51.100.9")),
                bytes: header.len()
            }
        );
        let mut v6 = ip_bytes("2001:db8::9");
        v6.extend_from_slice(&ip_bytes("2001:db8::1"));
        v6.extend_from_slice(&[0, 1, 0, 2]);
        let header = v2_header(0x1, 0x21, &v6, &[]);
        assert_eq!(
            parse(&header, MAX),
            Parsed::Header {
                source: Some(ip("2001:db8::9")),
                bytes: header.len()
            }
        );
        let local = v2_header(0x0, 0x00, &[], &[]);
        assert_eq!(
            parse(&local, MAX),
            Parsed::Header {
                source: None,
                bytes: V2_FIXED_BYTES
            }
        );
    }

    fn ip_bytes(text: &str) -> Vec<u8> {
        match ip(text) {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        }
    }

    #[test]
    fn every_prefix_of_a_header_is_incomplete() {
        let v1 = b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 8080\r\n".to_vec();
        let v2 = v2_header(0x1, 0x11, &v4_addresses([198, 51, 100, 9]), &[]);
        for header in [v1, v2] {
            for end in 0..header.len() {
                assert_eq!(
                    parse(&header[..end], MAX),
                    Parsed::Incomplete,
                    "{:?}",
                    &header[..end]
                );
            }
        }
    }

    #[test]
    fn other_protocols_are_absent() {
        for input in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /wpush/v1/x HTTP/1.1\r\n",
            b"\r\n\r\nGET",
            b"PROX\r\n",
            b"G",
        ] {
            assert_eq!(parse(input, MAX), Parsed::Absent, "{input:?}");
        }
    }

    #[test]
    fn bad_headers_are_refused() {
        let too_long_v2 = v2_header(0x1, 0x11, &v4_addresses([1, 2, 3, 4]), &[0u8; 200]);
        for (input, max) in [
            (&b"PROXY TCP4 300.0.0.1 10.0.0.1 1 2\r\n"[..], MAX),
            (b"PROXY TCP4 1.2.3.4 10.0.0.1 1\r\n", MAX),
            (b"PROXY TCP4 1.2.3.4\r\nGET / HTTP/1.1\r\n", MAX),
            (b"PROXY TCP4 1.2.3.4 10.0.0.1 1 2\n", MAX),
            (b"PROXY TCP5 1.2.3.4 10.0.0.1 1 2\r\n", MAX),
            (b"PROXY TCP4 1.2.3.4 10.0.0.1 1 2\rX", MAX),
            (b"PROXY AAAAAAAAAAAAAAAAAAAA\r\n", MAX),
            (&too_long_v2[..V2_FIXED_BYTES], 100),
            // a PROXY command whose length cannot hold its IPv4 addresses
            (&v2_header(0x1, 0x11, &[1, 2, 3], &[]), MAX),
            // version 1 in a binary header, and an unknown command
            (b"\r\n\r\n\0\r\nQUIT\n\x11\x11\x00\x00", MAX),
            (b"\r\n\r\n\0\r\nQUIT\n\x2f\x11\x00\x00", MAX),
        ] {
            assert!(
                matches!(parse(input, max), Parsed::Bad(_)),
                "{input:?}: {:?}",
                parse(input, max)
            );
        }
        let long_v1 = [&b"PROXY "[..], &[b'7'; 200]].concat();
        assert!(matches!(parse(&long_v1, 64), Parsed::Bad(_)));
        assert!(matches!(parse(&long_v1, MAX), Parsed::Bad(_)));
    }

    /// No input makes the parser panic, and whatever it takes as a header
    /// lies within the input.
    #[test]
    fn any_bytes_parse_without_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let starts: [&[u8]; 3] = [b"", b"PROXY ", b"\r\n\r\n\0\r\nQUIT\n"];
        for round in 0..20_000 {
            let mut input = starts[round % starts.len()].to_vec();
            let extra = rng.gen_range(0..64);
            for _ in 0..extra {
                // Mostly header-like bytes, so that deep paths are reached.
                let byte = match rng.gen_range(0..4) {
                    0 => rng.gen(),
                    1 => b"0123456789.: "[rng.gen_range(0..13)],
                    2 => b"\r\nTCP46UNKOW"[rng.gen_range(0..11)],
                    _ => [0x20, 0x21, 0x11, 0x21, 0x00, 0x0c][rng.gen_range(0..6)],
                };
                input.push(byte);
            }
            if let Parsed::Header { bytes, .. } = parse(&input, MAX) {
                assert!(bytes <= input.len(), "{input:?}");
            }
        }
    }
}
