//! The admin listener (`admin_listen`, loopback by default): health,
//! `/metrics` and `/about` for the operator, no token asked. It needs only
//! what every shard shares, so a shard serves it from its first moment,
//! while its WAL still replays (readiness then says so).

use std::sync::Arc;

use glommio::net::TcpStream;

use herald_engine::limits::Limits;
use herald_engine::push::{errno, HttpResponse};

use crate::http::Head;
use crate::http_conn;
use crate::pages::{self, Page};
use crate::routes::Routes;
use crate::shared::Shared;

pub async fn serve(shared: Arc<Shared>, stream: TcpStream) {
    http_conn::serve(&AdminRoutes(shared), stream, Vec::new()).await;
}

struct AdminRoutes(Arc<Shared>);

impl Routes for AdminRoutes {
    fn limits(&self) -> &Limits {
        &self.0.config.limits
    }

    /// Its pages are all `GET`s.
    fn body_bytes_max(&self) -> usize {
        0
    }

    fn too_large(&self, _head: &Head) -> HttpResponse {
        HttpResponse::error(
            413,
            errno::PAYLOAD_TOO_LARGE,
            "the admin listener takes no request bodies",
        )
    }

    async fn route(&self, head: &Head, _body: &[u8]) -> HttpResponse {
        let path = head.path.split('?').next().unwrap_or_default();
        match Page::of(&head.method, path) {
            Some(page) => page.answer(&self.0),
            None => pages::not_found(),
        }
    }
}
