//! Batched UDP sends for the wakeup core: one `sendmmsg(2)` per address family
//! per turn instead of one syscall per datagram.
//!
//! The sockets are plain non-blocking kernel sockets used from the core's
//! executor thread: a send either goes into the socket buffer at once or
//! fails with EAGAIN, so it never parks the executor. EAGAIN hands the
//! datagram back to the planner (sent next turn); any other error counts the
//! wakeup as failed for this attempt (its retry timer still runs).
//!
//! Payload: the 13 ASCII bytes `herald-wakeup`. SPEC §5: any datagram wakes
//! the UA, so the payload carries nothing identifying — no UAID, no token —
//! and an observer on the path learns only that *some* push server pinged
//! this address.

use std::io;
use std::mem;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;

pub const PAYLOAD: &[u8] = b"herald-wakeup";

/// What happened to one datagram of a batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sent {
    Ok,
    /// The socket buffer is full: try again next turn.
    Again,
    /// The kernel refused it (no route, no socket for the family…).
    Failed,
}

pub struct UdpSender {
    v4: Option<UdpSocket>,
    v6: Option<UdpSocket>,
    /// sendmmsg calls made, for the batch-size metric.
    pub syscalls: u64,
}

impl UdpSender {
    /// One unconnected socket per family. A host without IPv6 still runs: its
    /// IPv6 wakeups fail and are counted.
    pub fn new() -> Result<UdpSender, String> {
        let v4 = bind("0.0.0.0:0");
        let v6 = bind("[::]:0");
        if let Err(error) = &v6 {
            tracing::warn!(%error, "no IPv6 socket for UDP wakeups; IPv6 targets will fail");
        }
        match (v4, v6) {
            (Err(error), Err(_)) => Err(format!("cannot open a UDP socket for wakeups: {error}")),
            (v4, v6) => Ok(UdpSender {
                v4: v4.ok(),
                v6: v6.ok(),
                syscalls: 0,
            }),
        }
    }

    /// Sends [`PAYLOAD`] to every address; `results[i]` tells what became of
    /// `addrs[i]`.
    pub fn send_batch(&mut self, addrs: &[SocketAddr], results: &mut Vec<Sent>) {
        results.clear();
        results.resize(addrs.len(), Sent::Failed);
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (index, addr) in addrs.iter().enumerate() {
            match addr {
                SocketAddr::V4(_) => v4.push(index),
                SocketAddr::V6(_) => v6.push(index),
            }
        }
        if let Some(socket) = &self.v4 {
            self.syscalls += send_family(socket, addrs, &v4, results);
        }
        if let Some(socket) = &self.v6 {
            self.syscalls += send_family(socket, addrs, &v6, results);
        }
    }
}

fn bind(addr: &str) -> io::Result<UdpSocket> {
    let socket = UdpSocket::bind(addr)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// sendmmsg over `indices` of `addrs`; returns the number of syscalls made.
fn send_family(
    socket: &UdpSocket,
    addrs: &[SocketAddr],
    indices: &[usize],
    results: &mut [Sent],
) -> u64 {
    if indices.is_empty() {
        return 0;
    }
    let mut names: Vec<libc::sockaddr_storage> = indices
        .iter()
        .map(|&index| sockaddr(&addrs[index]).0)
        .collect();
    let lengths: Vec<libc::socklen_t> = indices
        .iter()
        .map(|&index| sockaddr(&addrs[index]).1)
        .collect();
    // The kernel only reads the payload; the cast to *mut is what iovec wants.
    let mut iov = libc::iovec {
        iov_base: PAYLOAD.as_ptr() as *mut libc::c_void,
        iov_len: PAYLOAD.len(),
    };
    // SAFETY: mmsghdr is plain old data; all-zero is a valid empty header.
    let mut headers: Vec<libc::mmsghdr> = (0..indices.len())
        .map(|_| unsafe { mem::zeroed::<libc::mmsghdr>() })
        .collect();
    for (header, (name, length)) in headers.iter_mut().zip(names.iter_mut().zip(&lengths)) {
        header.msg_hdr.msg_name = name as *mut libc::sockaddr_storage as *mut libc::c_void;
        header.msg_hdr.msg_namelen = *length;
        header.msg_hdr.msg_iov = &mut iov;
        header.msg_hdr.msg_iovlen = 1;
    }
    let mut syscalls = 0;
    let mut done = 0;
    while done < headers.len() {
        let remaining = (headers.len() - done).min(1024) as libc::c_uint;
        // SAFETY: `headers[done..]` point at `names`, `iov` and PAYLOAD, all of
        // which outlive the call; `remaining` is within the vector.
        let sent = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr().add(done),
                remaining,
                libc::MSG_DONTWAIT,
            )
        };
        syscalls += 1;
        if sent > 0 {
            for &index in &indices[done..done + sent as usize] {
                results[index] = Sent::Ok;
            }
            done += sent as usize;
            continue;
        }
        let error = io::Error::last_os_error();
        match error.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) | Some(libc::ENOBUFS) => {
                for &index in &indices[done..] {
                    results[index] = Sent::Again;
                }
                break;
            }
            _ => {
                // sendmmsg reports an error on the first message it could not
                // send: that one fails, the rest get their own try.
                tracing::debug!(%error, addr = %addrs[indices[done]], "wakeup datagram refused");
                results[indices[done]] = Sent::Failed;
                done += 1;
            }
        }
    }
    syscalls
}

fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data, large and aligned enough for
    // both sockaddr_in and sockaddr_in6, which are written into it below.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(v4.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: see above; the sizes are checked by the type system.
            unsafe {
                std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin);
            }
            (
                storage,
                mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: as for IPv4.
            unsafe {
                std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6);
            }
            (
                storage,
                mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn batch_reaches_ipv4_and_ipv6_listeners() {
        let mut sender = UdpSender::new().unwrap();
        let v4 = UdpSocket::bind("127.0.0.1:0").unwrap();
        v4.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let v6 = UdpSocket::bind("[::1]:0").ok();
        let mut addrs = vec![v4.local_addr().unwrap(), v4.local_addr().unwrap()];
        if let Some(v6) = &v6 {
            v6.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            addrs.push(v6.local_addr().unwrap());
        }
        let mut results = vec![];
        sender.send_batch(&addrs, &mut results);
        assert!(results.iter().all(|r| *r == Sent::Ok), "{results:?}");
        let mut buf = [0u8; 64];
        for _ in 0..2 {
            let n = v4.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], PAYLOAD);
        }
        if let Some(v6) = &v6 {
            let n = v6.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], PAYLOAD);
        }
        assert!(sender.syscalls <= 2);
    }
}
