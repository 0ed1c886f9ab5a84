//! The public AS listener's routes: decode pushes and send them to the
//! owning shard over its ring, operator broadcasts, and the operations
//! pages (the private ones only with the admin token).

use std::net::IpAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use glommio::net::TcpStream;

use herald_engine::extended;
use herald_engine::limits::Limits;
use herald_engine::push::{self, errno, DecodeContext, HttpRequest, HttpResponse};
use herald_engine::{ChannelId, Uaid};

use crate::client_addr;
use crate::ctx::{now_ms, Ctx};
use crate::http::Head;
use crate::http_conn;
use crate::metrics::{AsRoute, RateLimit};
use crate::node_link::NodeLink;
use crate::pages::Page;
use crate::routes::Routes;
use crate::shard::{refusal_response, Refusal};
use crate::{admin_token, broadcasts};

/// A form-encoded SimplePush body may spell each payload byte as `%XX`.
const FORM_ENCODING_EXPANSION: usize = 3;

pub async fn serve(ctx: Rc<Ctx>, mut stream: TcpStream) {
    let limits = &ctx.shared.config.limits;
    // A trusted proxy's PROXY header gets the time any request's head gets.
    let deadline = Instant::now() + Duration::from_millis(limits.http_read_timeout_ms);
    let Some(origin) = client_addr::accept(&ctx.shared, ctx.index, &mut stream, deadline).await
    else {
        return;
    };
    let routes = AsRoutes {
        ctx,
        connection: origin.client,
    };
    match &routes.ctx.shared.tls {
        None => http_conn::serve(&routes, stream, origin.rest).await,
        // Boxed: a TLS session's state is large, and inline it would make
        // every plain connection's task as large.
        Some(tls) => {
            Box::pin(async {
                let handshake = routes.ctx.shared.config.limits.handshake_timeout_ms;
                let deadline = Instant::now() + Duration::from_millis(handshake);
                if let Some(stream) = tls.accept_as(stream, origin.rest, deadline).await {
                    http_conn::serve(&routes, stream, Vec::new()).await;
                }
            })
            .await
        }
    }
    // The connection's place under the cap on connections per IP ends here.
    drop(origin.slot);
}

struct AsRoutes {
    ctx: Rc<Ctx>,
    /// The connection's client (`client_addr::accept`); each request's
    /// own may lie further behind a trusted proxy.
    connection: IpAddr,
}

impl Routes for AsRoutes {
    fn limits(&self) -> &Limits {
        &self.ctx.shared.config.limits
    }

    fn body_bytes_max(&self) -> usize {
        body_bytes_max(self.limits())
    }

    fn too_large(&self, head: &Head) -> HttpResponse {
        let response = if head.path.starts_with("/notify/") {
            extended::as_error(413, "Body too big")
        } else {
            HttpResponse::error(413, errno::PAYLOAD_TOO_LARGE, "body too large")
        };
        answered(&self.ctx, self.connection, head, &response, None);
        response
    }

    async fn route(&self, head: &Head, body: &[u8]) -> HttpResponse {
        let started = Instant::now();
        let trusted = &self.ctx.shared.config.trusted_proxies;
        let client = client_addr::of_request(trusted, self.connection, &head.headers);
        let response = route(&self.ctx, Some(client), head, body, false).await;
        answered(&self.ctx, client, head, &response, Some(started.elapsed()));
        response
    }
}

/// An AS request's answer is known: count it by route and status, time it
/// (`took`: from the whole request read to its answer; `None` for one
/// answered before its body was read), and write its access-log line at
/// debug level. The line names the route, never the path: a push path
/// holds the endpoint's token, which is all a sender needs.
pub fn answered(
    ctx: &Ctx,
    client: IpAddr,
    head: &Head,
    response: &HttpResponse,
    took: Option<Duration>,
) {
    let route = AsRoute::of(&head.path);
    ctx.meters.as_answered(route, response.status, took);
    tracing::debug!(
        target: "herald::access",
        shard = ctx.index,
        %client,
        method = %head.method,
        route = route.as_str(),
        status = response.status,
        request_bytes = head.head_bytes + head.body_bytes,
        response_bytes = response.body.len(),
        took_us = took.map(|took| took.as_micros() as u64),
        "AS request"
    );
}

/// The largest body an AS request may carry.
pub fn body_bytes_max(limits: &Limits) -> usize {
    limits.push_body_bytes_max * FORM_ENCODING_EXPANSION
}

/// One AS request from `client` (`client_addr::of_request`, for the
/// per-address rate limit; `None` counts nothing). In cluster mode, one for a UA another node holds goes
/// there (`cluster.rs`), unless another node already `forwarded` it here.
pub async fn route(
    ctx: &Rc<Ctx>,
    client: Option<IpAddr>,
    head: &Head,
    body: &[u8],
    forwarded: bool,
) -> HttpResponse {
    let path = head.path.split('?').next().unwrap_or_default();
    if let Some(page) = Page::of(&head.method, path) {
        return public_page(ctx, head, page);
    }
    if let Some(refusal) = over_address_rate(ctx, client, path) {
        return refusal;
    }
    match (head.method.as_str(), path) {
        ("POST", _) if path.starts_with("/notify/") => {
            return app_notify(ctx, &path["/notify/".len()..], body).await;
        }
        ("PUT", _) if path.starts_with("/v1/broadcasts/") => {
            let id = &path["/v1/broadcasts/".len()..];
            let authorization = admin_token::authorization(head);
            return broadcasts::set(ctx, id, authorization, body).await;
        }
        _ => {}
    }
    let headers: Vec<(&str, &[u8])> = head
        .headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_slice()))
        .collect();
    let request = HttpRequest {
        method: &head.method,
        path: &head.path,
        headers: &headers,
        body,
    };
    let config = &ctx.shared.config;
    let audience = crate::origin_of(&config.endpoint_url);
    let context = DecodeContext {
        keys: &ctx.keys,
        limits: &config.limits,
        audience: &audience,
        now_ms: now_ms(),
    };
    let push = match push::decode(&context, &request) {
        Ok(push) => push,
        Err(response) => return response,
    };
    if !forwarded {
        let to_holder =
            async |link: &NodeLink, holder: &str| link.forward(holder, head, body).await;
        if let Some(response) = answered_by_holder(ctx, push.uaid(), to_holder).await {
            return response;
        }
    }
    dispatch(ctx, push).await
}

/// Cluster mode: the answer of the node that holds `uaid`, if another node
/// does and could be reached (`forward` sends it the request). None: this
/// node takes the request itself, claiming the UA if need be (from a holder
/// that is down or cut off, too).
async fn answered_by_holder(
    ctx: &Ctx,
    uaid: Uaid,
    forward: impl AsyncFnOnce(&NodeLink, &str) -> Result<HttpResponse, String>,
) -> Option<HttpResponse> {
    let cluster = ctx.cluster.as_ref()?;
    if ctx.shared.holds(&uaid) {
        return None;
    }
    let holder = cluster.holder_elsewhere(&uaid).await?;
    cluster.forwards.set(cluster.forwards.get() + 1);
    match forward(&cluster.link, &holder).await {
        Ok(response) => Some(response),
        Err(error) => {
            cluster
                .forward_failures
                .set(cluster.forward_failures.get() + 1);
            tracing::warn!(%error, "forwarding to the UA's node failed");
            None
        }
    }
}

/// The per-address rate limit, checked before a request costs a decode
/// (token, VAPID) or a ring slot. Health checks are not counted (above): a
/// load balancer must not read a sender's flood as the node being down.
fn over_address_rate(ctx: &Ctx, client: Option<IpAddr>, path: &str) -> Option<HttpResponse> {
    let limited = ctx.address_rates.as_request(client?).err()?;
    ctx.shared.metrics.rate_limited(RateLimit::as_address, 1);
    let reason = "too many requests from this address";
    Some(if path.starts_with("/notify/") {
        extended::as_error(429, reason).with_retry_after(limited)
    } else {
        HttpResponse::rate_limited(reason, limited)
    })
}

/// Health is public (load balancers poll it here); the private pages need
/// the admin token on this listener (the admin listener asks none).
fn public_page(ctx: &Ctx, head: &Head, page: Page) -> HttpResponse {
    if page.is_private() {
        let authorization = admin_token::authorization(head);
        let admin_token = ctx.shared.config.admin_token.as_deref();
        let what =
            "/metrics and /about are served on the admin listener; here they need the admin token";
        if let Err(refusal) = admin_token::check(admin_token, authorization, what) {
            return refusal;
        }
    }
    page.answer(&ctx.shared)
}

/// SPEC §3.6: an AS posts a signed notification to an app url. The UAs that
/// registered the app may live on any shard, so every shard gets it and
/// answers; the AS gets 200 if any shard stored it (all durably), else the
/// most telling refusal (a bad signature before "no such app"). In cluster
/// mode they may live on any node: see [`app_fan_out`].
async fn app_notify(ctx: &Rc<Ctx>, url_token: &str, body: &[u8]) -> HttpResponse {
    let config = &ctx.shared.config;
    let notification = match extended::decode_notification(body, config.limits.ttl_max_s) {
        Ok(notification) => notification,
        Err(response) => return response,
    };
    let Some(channel) = extended::channel_of(url_token) else {
        return extended::as_error(404, "No valid AppToken");
    };
    if ctx.cluster.is_some() {
        return app_fan_out(ctx, url_token, channel, notification, body).await;
    }
    let mut answers = Vec::with_capacity(config.shards);
    for shard in 0..config.shards {
        let (answer, answered) = Ctx::answer_slot();
        let notification = notification.clone();
        let submitted = ctx
            .with_driver(|driver| driver.submit_app_notify(shard, channel, notification, answer));
        if let Err(refusal) = submitted {
            count_refusal(ctx, refusal);
            return refusal_response(refusal, true);
        }
        answers.push(answered);
    }
    let mut best = None;
    for answered in answers {
        let response = answered
            .recv()
            .await
            .unwrap_or_else(|| extended::as_error(503, "Try again later"));
        best = Some(most_telling(best, response));
    }
    best.unwrap_or_else(|| extended::as_error(404, "No valid AppToken"))
}

/// Of two answers to shares of one app notification, the one the AS gets:
/// a 200 (stored somewhere), else a bad signature, else any other refusal,
/// and "no such app" last.
fn most_telling(best: Option<HttpResponse>, response: HttpResponse) -> HttpResponse {
    let rank = |response: &HttpResponse| match response.status {
        200 => 3,
        401 => 2,
        404 => 0,
        _ => 1,
    };
    match best {
        Some(best) if rank(&best) >= rank(&response) => best,
        _ => response,
    }
}

/// Cluster mode: the app's members, as the cluster store keeps them, each
/// given its share where it is held (forwarded to its node, or stored here,
/// claiming it, if no node holds it), `app_shares_in_flight_max` at a time.
async fn app_fan_out(
    ctx: &Rc<Ctx>,
    url_token: &str,
    channel: ChannelId,
    notification: extended::AppNotification,
    body: &[u8],
) -> HttpResponse {
    let Some(cluster) = &ctx.cluster else {
        return extended::as_error(404, "No valid AppToken");
    };
    let Ok(members) = cluster.app_members(&channel).await else {
        return extended::as_error(503, "Try again later");
    };
    let at_once = ctx.shared.config.limits.app_shares_in_flight_max.max(1);
    let notification = &notification;
    let mut best = None;
    for some in members.chunks(at_once) {
        let shares = some.iter().map(|&uaid| async move {
            let to_holder = async |link: &NodeLink, holder: &str| {
                link.forward_app_share(holder, uaid, url_token, body).await
            };
            match answered_by_holder(ctx, uaid, to_holder).await {
                Some(response) => response,
                None => app_share_here(ctx, uaid, channel, notification.clone()).await,
            }
        });
        for response in futures_util::future::join_all(shares).await {
            best = Some(most_telling(best, response));
        }
    }
    best.unwrap_or_else(|| extended::as_error(404, "No valid AppToken"))
}

/// `uaid`'s share of an app notification, stored by this node.
pub async fn app_share_here(
    ctx: &Rc<Ctx>,
    uaid: Uaid,
    channel: ChannelId,
    notification: extended::AppNotification,
) -> HttpResponse {
    let share = push::PushRequest::AppShare {
        uaid,
        channel,
        notification,
    };
    dispatch(ctx, share).await
}

/// Sends a decoded push to its owning shard and waits for the durable answer.
async fn dispatch(ctx: &Rc<Ctx>, push: push::PushRequest) -> HttpResponse {
    let (answer, answered) = Ctx::answer_slot();
    if let Err(refusal) = ctx.with_driver(|driver| driver.submit_push(push, answer)) {
        count_refusal(ctx, refusal);
        return refusal_response(refusal, false);
    }
    answered
        .recv()
        .await
        .unwrap_or_else(|| HttpResponse::error(500, errno::INTERNAL, "request lost"))
}

fn count_refusal(ctx: &Ctx, refusal: Refusal) {
    if refusal == Refusal::RingFull {
        ctx.shared.metrics.error(ctx.index, "ring_full", 1);
    }
}
