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
        let mut answers = Vec::with_capacity(1);
        self.push_pipelined(&[(path, push)], &mut answers).await?;
        answers
            .first()
            .map(|answer| answer.status)
            .ok_or_else(|| io::ErrorKind::UnexpectedEof.into())
    }

    /// Sends `pushes` pipelined, in one write, and puts their answers into
    /// `answers`, in order: fewer than `pushes` if the server closed the
    /// connection after answering some.
    pub async fn push_pipelined(
        &mut self,
        pushes: &[(&str, Push<'_>)],
        answers: &mut Vec<Answer>,
    ) -> io::Result<()> {
        answers.clear();
        self.wire.start(self.target, pushes);
        let stream = match &mut self.stream {
            Some(stream) => stream,
            None => {
                self.wire.reconnected();
                self.stream.insert(self.dial.dial(self.target)?)
            }
        };
        match exchange(stream, &mut self.wire, pushes.len(), answers).await {
            Ok(closed) => {
                if closed {
                    self.stream = None;
                }
                Ok(())
            }
            Err(error) => {
                self.stream = None;
                Err(error)
            }
        }
    }
}

/// Writes what `wire` holds and reads up to `count` answers into
/// `answers`; true if the server closes the connection after the last.
async fn exchange<S>(
    stream: &mut S,
    wire: &mut AsWire,
    count: usize,
    answers: &mut Vec<Answer>,
) -> io::Result<bool>
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    write_out(stream, wire).await?;
    while answers.len() < count {
        let answer: Answer = wait_for(stream, wire, AsWire::take_answer).await?;
        answers.push(answer);
        if answer.close {
            return Ok(true);
        }
    }
    Ok(false)
}
