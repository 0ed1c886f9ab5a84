//! A WebSocket user agent speaking Herald's JSON protocol, over any stream.

use std::io;
use std::net::SocketAddr;

use futures_lite::{AsyncRead, AsyncWrite};
use serde_json::Value;

use super::ua_wire::UaWire;
use super::{read_into, wait_for, write_out, Dial};

pub struct Ua<S> {
    stream: S,
    wire: UaWire,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Ua<S> {
    /// Connects and completes the WebSocket upgrade.
    pub async fn open<D: Dial<Stream = S>>(dial: &D, target: SocketAddr) -> io::Result<Ua<S>> {
        let mut ua = Ua {
            stream: dial.dial(target)?,
            wire: UaWire::new(target),
        };
        ua.flush().await?;
        let upgraded = |wire: &mut UaWire| wire.take_upgrade().map(|done| done.then_some(()));
        wait_for(&mut ua.stream, &mut ua.wire, upgraded).await?;
        Ok(ua)
    }

    /// The socket (timeouts, non-blocking mode, polling).
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// Queues one text frame; `flush` writes everything queued.
    pub fn queue(&mut self, text: &str) {
        self.wire.queue(text);
    }

    /// Writes what is queued; on a non-blocking socket that fills up, the
    /// rest stays queued (`WouldBlock`).
    pub async fn flush(&mut self) -> io::Result<()> {
        write_out(&mut self.stream, &mut self.wire).await
    }

    pub async fn send(&mut self, message: &Value) -> io::Result<()> {
        self.queue(&message.to_string());
        self.flush().await
    }

    /// The next complete text message already read, if any (see
    /// [`UaWire::take_message`]).
    pub fn take_message(&mut self) -> io::Result<Option<Value>> {
        self.wire.take_message()
    }

    /// Reads once from the server (after `take_message` found nothing).
    pub async fn read(&mut self) -> io::Result<()> {
        read_into(&mut self.stream, &mut self.wire).await
    }

    /// The next text message, waiting for it.
    pub async fn receive(&mut self) -> io::Result<Value> {
        wait_for(&mut self.stream, &mut self.wire, UaWire::take_message).await
    }

    /// Sends a request and waits for the answer of the same `messageType`;
    /// other messages before it are dropped.
    pub async fn exchange(&mut self, message: &Value) -> io::Result<Value> {
        self.send(message).await?;
        let kind = &message["messageType"];
        let answer = |wire: &mut UaWire| loop {
            match wire.take_message()? {
                Some(answer) if answer["messageType"] == *kind => return Ok(Some(answer)),
                Some(_) => continue,
                None => return Ok(None),
            }
        };
        wait_for(&mut self.stream, &mut self.wire, answer).await
    }
}
