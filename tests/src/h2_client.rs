//! An HTTP/2 application server (h2c with prior knowledge, on the `h2`
//! crate) over any async byte stream: the black-box HTTP/2 tests and
//! `herald-bench`'s HTTP/2 senders, both on glommio sockets.

use std::future::Future;

use bytes::Bytes;
use futures_lite::{AsyncRead, AsyncWrite};
use tokio_util::compat::FuturesAsyncReadCompatExt;

/// One HTTP/2 connection's sending side; clones share the connection, each
/// clone with a request in flight is one stream.
#[derive(Clone)]
pub struct H2Sender {
    requests: h2::client::SendRequest<Bytes>,
    /// `scheme://authority` of every request.
    origin: String,
}

/// A whole answer.
#[derive(Debug)]
pub struct H2Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl H2Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// Opens HTTP/2 on `stream` (a connection to `authority`, `host:port`).
/// The returned future runs the connection: poll it (spawn it) for as long
/// as the sender is used.
pub async fn handshake<S>(
    stream: S,
    authority: &str,
) -> Result<(H2Sender, impl Future<Output = ()>), h2::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
{
    let (requests, connection) = h2::client::handshake(stream.compat()).await?;
    let sender = H2Sender {
        requests,
        origin: format!("http://{authority}"),
    };
    Ok((sender, async move {
        let _ = connection.await;
    }))
}

impl H2Sender {
    /// Sends one request on a new stream (waiting for the server to allow
    /// one more) and reads its whole answer.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<H2Answer, String> {
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.origin));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(()).map_err(|error| error.to_string())?;
        let mut requests = self
            .requests
            .clone()
            .ready()
            .await
            .map_err(|error| format!("no stream: {error}"))?;
        let (answer, mut upload) = requests
            .send_request(request, body.is_empty())
            .map_err(|error| format!("send: {error}"))?;
        if !body.is_empty() {
            upload
                .send_data(Bytes::copy_from_slice(body), true)
                .map_err(|error| format!("send body: {error}"))?;
        }
        let answer = answer.await.map_err(|error| format!("answer: {error}"))?;
        let status = answer.status().as_u16();
        let headers = answer
            .headers()
            .iter()
            .map(|(name, value)| {
                let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                (name.as_str().to_owned(), value)
            })
            .collect();
        let mut download = answer.into_body();
        let mut body = Vec::new();
        while let Some(chunk) = download.data().await {
            let chunk = chunk.map_err(|error| format!("answer body: {error}"))?;
            let _ = download.flow_control().release_capacity(chunk.len());
            body.extend_from_slice(&chunk);
        }
        Ok(H2Answer {
            status,
            headers,
            body,
        })
    }
}
