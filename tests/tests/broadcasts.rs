//! SPEC §3.5: broadcasts set by an operator reach every subscribed UA on
//! every shard, survive a restart, and need the admin token.

use herald_tests::*;
use serde_json::json;

const ID: &str = "remote-settings/monitor_changes";
const TOKEN: &str = "test-admin-token";

fn start() -> Server {
    Server::start(
        ServerOptions::new()
            .shards(2)
            .env("HERALD_ADMIN_TOKEN", TOKEN),
    )
}

fn put_broadcast(server: &Server, version: &str, token: Option<&str>) -> HttpResponse {
    let url = format!("{}/v1/broadcasts/{ID}", server.as_url());
    let authorization = token.map(|token| format!("Bearer {token}"));
    let headers: Vec<(&str, &str)> = authorization
        .iter()
        .map(|value| ("Authorization", value.as_str()))
        .collect();
    http(
        "PUT",
        &url,
        &headers,
        Some(format!("version={version}").as_bytes()),
    )
}

fn subscribed_ua(server: &Server, have: &str) -> (WsClient, serde_json::Value) {
    let mut ua = server.ua();
    let reply = ua.hello_raw(&json!({
        "messageType": "hello",
        "use_webpush": true,
        "broadcasts": {ID: have},
    }));
    (ua, reply)
}

#[test]
fn operator_broadcast_reaches_subscribers_on_every_shard() {
    let server = start();
    // Enough UAs that both shards hold some (new UAIDs stay on the accepting shard).
    let mut uas: Vec<WsClient> = (0..8).map(|_| subscribed_ua(&server, "v0").0).collect();
    put_broadcast(&server, "v1", Some(TOKEN)).assert_status(200, "PUT broadcast");
    for ua in &mut uas {
        let message = ua.recv_type("broadcast", DEADLINE);
        assert_eq!(
            message["broadcasts"][ID], "v1",
            "broadcast message: {message}"
        );
    }
}

#[test]
fn hello_and_subscribe_report_only_changed_versions() {
    let server = start();
    put_broadcast(&server, "v7", Some(TOKEN)).assert_status(200, "PUT broadcast");
    let (_current, reply) = subscribed_ua(&server, "v7");
    assert_eq!(reply["broadcasts"], json!({}), "UA already has v7: {reply}");
    let (_stale, reply) = subscribed_ua(&server, "v6");
    assert_eq!(reply["broadcasts"][ID], "v7", "UA has v6: {reply}");

    let mut late = server.ua_webpush();
    late.send_json(&json!({"messageType": "broadcast_subscribe", "broadcasts": {ID: "v1"}}));
    let message = late.recv_type("broadcast", DEADLINE);
    assert_eq!(
        message["broadcasts"][ID], "v7",
        "broadcast_subscribe answer: {message}"
    );
}

#[test]
fn broadcasts_need_the_admin_token_and_valid_input() {
    let server = start();
    let missing = put_broadcast(&server, "v1", None);
    missing.assert_status(401, "no token");
    put_broadcast(&server, "v1", Some("wrong")).assert_status(401, "wrong token");
    put_broadcast(&server, "", Some(TOKEN)).assert_status(400, "empty version");
    let (mut ua, _) = subscribed_ua(&server, "v0");
    ua.expect_silence(NEG_WINDOW);

    let disabled = Server::start(ServerOptions::new());
    put_broadcast(&disabled, "v1", Some(TOKEN)).assert_status(403, "no admin token configured");
}

#[test]
fn broadcasts_survive_a_restart() {
    let mut server = start();
    put_broadcast(&server, "v3", Some(TOKEN)).assert_status(200, "PUT broadcast");
    server.restart();
    let (_ua, reply) = subscribed_ua(&server, "v0");
    assert_eq!(reply["broadcasts"][ID], "v3", "after restart: {reply}");
}

/// A UA may name broadcasts Herald has no version for (never set, or ids it
/// cannot read): the answer names them in `errors` ("Broadcast not found",
/// as autopush answers) beside the known ones, and the socket stays open.
#[test]
fn unknown_broadcast_ids_are_answered_in_errors_not_with_a_close() {
    let server = start();
    put_broadcast(&server, "v7", Some(TOKEN)).assert_status(200, "PUT broadcast");
    // Megaphone's `service:id` form is an id like any other.
    let colon_id = "kinto:123";
    let url = format!("{}/v1/broadcasts/{colon_id}", server.as_url());
    let authorization = format!("Bearer {TOKEN}");
    http(
        "PUT",
        &url,
        &[("Authorization", authorization.as_str())],
        Some(b"version=k1"),
    )
    .assert_status(200, "PUT a megaphone-style id");

    let mut ua = server.ua();
    let reply = ua.hello_raw(&json!({
        "messageType": "hello",
        "use_webpush": true,
        "broadcasts": {ID: "v1", colon_id: "k0", "kinto:456": "v1", "not an id!": "v1"},
    }));
    assert_eq!(reply["status"], 200, "{reply}");
    assert_eq!(
        reply["broadcasts"],
        json!({
            ID: "v7",
            colon_id: "k1",
            "errors": {"kinto:456": "Broadcast not found", "not an id!": "Broadcast not found"},
        }),
        "hello answer: {reply}"
    );

    ua.send_json(&json!({
        "messageType": "broadcast_subscribe",
        "broadcasts": {"kinto:789": "v1", "bad-version": 5},
    }));
    let message = ua.recv_type("broadcast", DEADLINE);
    assert_eq!(
        message["broadcasts"],
        json!({"errors": {"kinto:789": "Broadcast not found", "bad-version": "Broadcast not found"}}),
        "broadcast_subscribe answer: {message}"
    );
    // Still a working push connection.
    ua.register_new();

    // An id without a version yet stays subscribed: when an operator sets it,
    // the UA hears of it.
    http(
        "PUT",
        &format!("{}/v1/broadcasts/kinto:789", server.as_url()),
        &[("Authorization", authorization.as_str())],
        Some(b"version=v2"),
    )
    .assert_status(200, "PUT the id the UA asked for");
    let message = ua.recv_type("broadcast", DEADLINE);
    assert_eq!(
        message["broadcasts"],
        json!({"kinto:789": "v2"}),
        "{message}"
    );
}
