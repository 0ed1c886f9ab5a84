//! What an HTTP listener (AS, admin, node) answers, whichever protocol
//! carries its requests.

use herald_engine::limits::Limits;
use herald_engine::push::HttpResponse;

use crate::http::Head;

/// How much of a body over the limit is read and dropped around its 413:
/// a client still sending when the answer comes may take a closed
/// connection (HTTP/1.1) or a reset stream (HTTP/2) for an error instead.
pub const UNREAD_BODY_DISCARD_BYTES_MAX: usize = 1024 * 1024;

/// What one listener answers, over HTTP/1.1 (`http_conn.rs`) or HTTP/2
/// (`http2_conn.rs`) alike: its bounds and its routes.
pub trait Routes {
    fn limits(&self) -> &Limits;
    /// The largest body a request may carry.
    fn body_bytes_max(&self) -> usize;
    /// The answer to a body over it (each protocol has its error format).
    fn too_large(&self, head: &Head) -> HttpResponse;
    /// The answer to one whole request.
    async fn route(&self, head: &Head, body: &[u8]) -> HttpResponse;
}
