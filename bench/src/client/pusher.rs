//! One keep-alive HTTP/1.1 connection of an application server.

use std::io;
use std::net::SocketAddr;

use super::as_wire::{Answer, AsWire, Push};
use super::{wait_for, write_out, Dial};

pub struct Pusher<D: Dial> {
    dial: D,
    target: SocketAddr,
    stream: Option<D::Stream>,
    wire: AsWire,
}

impl<D: Dial> Pusher<D> {
    /// Connects at the first push.
    pub fn new(dial: D, target: SocketAddr) -> Pusher<D> {
        Pusher {
            dial,
            target,
            stream: None,
            wire: AsWire::default(),
        }
    }

    /// Sends one push to `path` and returns the answer's status. Reconnects
    /// if the server closed the previous connection; after an error the
    /// next push starts on a new one.
    pub async fn push(&mut self, path: &str, push: Push<'_>) -> io::Result<u16> {
        self.wire.start(self.target, path, push);
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => {
                self.wire.reconnected();
                self.stream.insert(self.dial.dial(self.target)?)
            }
        };
        match exchange(stream, &mut self.wire).await {
            Ok(answer) => {
                if answer.close {
                    self.stream = None;
                }
                Ok(answer.status)
            }
            Err(error) => {
                self.stream = None;
                Err(error)
            }
        }
    }
}

async fn exchange<S>(stream: &mut S, wire: &mut AsWire) -> io::Result<Answer>
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    write_out(stream, wire).await?;
    wait_for(stream, wire, AsWire::take_answer).await
}
