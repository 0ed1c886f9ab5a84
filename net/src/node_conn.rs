//! The node listener (cluster mode, `--node-listen`): calls from other
//! nodes of the cluster, each with the cluster's node secret. A forwarded AS
//! request is handled here as the AS listener would, and never sent on; a
//! "dropped" call says another node took a UA over.

use std::rc::Rc;

use herald_engine::extended;
use herald_engine::limits::Limits;
use herald_engine::push::{errno, HttpResponse};
use herald_engine::Uaid;

use crate::ctx::Ctx;
use crate::http::Head;
use crate::http_conn;
use crate::node_link::{self, APP_SHARE_PATH, DROPPED_PATH, SECRET_HEADER};
use crate::routes::Routes;

/// Serves one connection of the node listener.
pub async fn serve(ctx: Rc<Ctx>, stream: glommio::net::TcpStream) {
    http_conn::serve(&NodeRoutes(ctx), stream, Vec::new()).await;
}

struct NodeRoutes(Rc<Ctx>);

impl Routes for NodeRoutes {
    fn limits(&self) -> &Limits {
        &self.0.shared.config.limits
    }

    fn body_bytes_max(&self) -> usize {
        crate::as_conn::body_bytes_max(self.limits())
    }

    fn too_large(&self, _head: &Head) -> HttpResponse {
        HttpResponse::error(413, errno::PAYLOAD_TOO_LARGE, "body too large")
    }

    async fn route(&self, head: &Head, body: &[u8]) -> HttpResponse {
        let ctx = &self.0;
        let Some(cluster) = &ctx.cluster else {
            return node_link::unauthorized();
        };
        let secret = head
            .headers
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(SECRET_HEADER))
            .map(|(_, value)| value.as_slice());
        if !cluster.link.admits(secret) {
            return node_link::unauthorized();
        }
        if let Some(claim) = head.path.strip_prefix(DROPPED_PATH) {
            let parsed = claim
                .split_once('/')
                .and_then(|(uaid, nonce)| Some((Uaid::from_hex(uaid)?, nonce)));
            let Some((uaid, nonce)) = parsed.filter(|(_, nonce)| !nonce.is_empty()) else {
                return HttpResponse::error(
                    400,
                    errno::BAD_REQUEST,
                    "not /node/dropped/<uaid>/<nonce>",
                );
            };
            ctx.with_driver(|driver| driver.on_displaced(uaid, nonce.to_owned()));
            return HttpResponse::json(204, String::new());
        }
        if let Some(share) = head.path.strip_prefix(APP_SHARE_PATH) {
            return app_share(ctx, share, body).await;
        }
        // A request another node forwarded: handled here, never sent on;
        // its sender's address was rate-limited on the node that took it.
        crate::as_conn::route(ctx, None, head, body, true).await
    }
}

/// `<uaid>/<url token>` and the AS's body: one UA's share of an app
/// notification another node took, stored here (never sent on).
async fn app_share(ctx: &Rc<Ctx>, share: &str, body: &[u8]) -> HttpResponse {
    let parsed = share.split_once('/').and_then(|(uaid, url_token)| {
        Some((Uaid::from_hex(uaid)?, extended::channel_of(url_token)?))
    });
    let Some((uaid, channel)) = parsed else {
        return HttpResponse::error(400, errno::BAD_REQUEST, "not /node/app/<uaid>/<url token>");
    };
    let ttl_max_s = ctx.shared.config.limits.ttl_max_s;
    match extended::decode_notification(body, ttl_max_s) {
        Ok(notification) => crate::as_conn::app_share_here(ctx, uaid, channel, notification).await,
        Err(response) => response,
    }
}
