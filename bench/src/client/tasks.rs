//! glommio sockets, for the `herald-bench` generator: thousands of UAs in
//! one worker process, each a task.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{FromRawFd, IntoRawFd};

use glommio::net::TcpStream;

use super::Dial;

/// Connections from one of several 127.x source addresses (`None`: the
/// kernel's pick), so that big connection counts do not run out of
/// ephemeral ports.
#[derive(Clone, Copy, Debug)]
pub struct FromSource(pub Option<IpAddr>);

pub type Ua = super::Ua<TcpStream>;
pub type Pusher = super::Pusher<FromSource>;

impl Dial for FromSource {
    type Stream = TcpStream;

    fn dial(&self, target: SocketAddr) -> io::Result<TcpStream> {
        use socket2::{Domain, Protocol, Socket, Type};
        let socket = Socket::new(
            Domain::for_address(target),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        if let Some(ip) = self.0 {
            // The port is picked at connect(), per destination: picking it at
            // bind() searches every bound port for a conflict, which made the
            // generator's connects O(sockets).
            let on: libc::c_int = 1;
            // SAFETY: setsockopt on a socket we own, with an int option value.
            unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&socket),
                    libc::IPPROTO_IP,
                    libc::IP_BIND_ADDRESS_NO_PORT,
                    (&on as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
            socket.bind(&SocketAddr::new(ip, 0).into())?;
        }
        socket.set_nodelay(true)?;
        socket.set_nonblocking(true)?;
        match socket.connect(&target.into()) {
            Ok(()) => {}
            // The first write waits for the handshake to finish.
            Err(error) if error.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(error) => return Err(error),
        }
        // SAFETY: a fresh socket whose ownership passes to glommio.
        Ok(unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) })
    }
}
