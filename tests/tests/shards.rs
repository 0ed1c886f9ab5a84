//! Multi-shard behaviour (SPEC §8 socket hand-off, seen from outside): with
//! `--shards 4` a UA's socket lands on any shard and must be handed to the
//! shard owning its UAID. Every UA-visible rule must hold whatever shard a
//! socket was accepted by; these tests use many UAIDs so that most sockets
//! are handed off.

use herald_tests::serde_json::{json, Value};
use herald_tests::*;
use std::time::Duration;

const SHARDS: usize = 4;
const N: usize = 12;

fn sharded() -> Server {
    Server::start(ServerOptions::new().shards(SHARDS))
}

/// N UAs with one channel each, all disconnected: (uaid, channel, endpoint).
fn offline_uas(server: &Server, n: usize, webpush: bool) -> Vec<(String, String, String)> {
    (0..n)
        .map(|_| {
            let mut ua = server.ua();
            ua.hello(None, None, webpush);
            let uaid = ua.uaid();
            let (c, e) = ua.register_new();
            ua.close();
            (uaid, c, e)
        })
        .collect()
}

#[test]
fn many_uas_reconnecting_on_fresh_sockets_get_their_messages() {
    let server = sharded();
    let uas = offline_uas(&server, 32, true);
    for (i, (_u, _c, e)) in uas.iter().enumerate() {
        push_aes128gcm(e, format!("offline-{i}").as_bytes(), 60)
            .assert_status(201, "POST while offline");
    }
    let mut socks = vec![];
    for (i, (u, c, _e)) in uas.iter().enumerate() {
        let mut ua = server.ua_resume(u, true);
        let n = ua.recv_notification(DEADLINE);
        assert!(same_channel(&n["channelID"], c), "UA {i}: {n}");
        assert_eq!(
            notification_data(&n),
            format!("offline-{i}").as_bytes(),
            "UA {i} gets its own message"
        );
        ua.ack_notification(&n);
        socks.push(ua);
    }
    // live delivery to handed-off sockets
    for (i, (_u, _c, e)) in uas.iter().enumerate() {
        push_aes128gcm(e, format!("live-{i}").as_bytes(), 60)
            .assert_status(201, "POST while online");
    }
    for (i, ua) in socks.iter_mut().enumerate() {
        let n = ua.recv_notification(DEADLINE);
        assert_eq!(
            notification_data(&n),
            format!("live-{i}").as_bytes(),
            "UA {i} live"
        );
        ua.expect_silence(Duration::from_millis(50));
    }
    server.assert_hand_offs();
}

#[test]
fn frames_sent_right_after_hello_survive_the_hand_off() {
    let server = sharded();
    let uas = offline_uas(&server, N, true);
    for (u, _c, _e) in &uas {
        let mut ua = server.ua();
        // hello, ping and a register in one TCP write: the bytes after the
        // hello are buffered by the accepting shard and must follow the socket
        let c2 = new_channel_id();
        let mut bytes = masked_frame(
            0x1,
            json!({"messageType":"hello","uaid":u,"use_webpush":true})
                .to_string()
                .as_bytes(),
            true,
        );
        bytes.extend(masked_frame(0x1, b"{}", true));
        bytes.extend(masked_frame(
            0x1,
            json!({"messageType":"register","channelID":c2})
                .to_string()
                .as_bytes(),
            true,
        ));
        ua.send_raw_bytes(&bytes).unwrap();
        let h = ua.recv_type("hello", DEADLINE);
        assert_eq!(h["uaid"], u.as_str(), "{h}");
        assert_eq!(h["status"], 200);
        assert_eq!(
            ua.recv_json_with_deadline(DEADLINE),
            json!({}),
            "ping after hello answered"
        );
        let r = ua.recv_type("register", DEADLINE);
        assert_eq!(r["status"], 200, "{r}");
        let e2 = r["pushEndpoint"].as_str().unwrap().to_string();
        push_aes128gcm(&e2, b"x", 60).assert_status(201, "POST");
        assert_eq!(notification_data(&ua.recv_notification(DEADLINE)), b"x");
    }
    server.assert_hand_offs();
}

/// Writes `parts` one TCP write each (the client sets `TCP_NODELAY`), with a
/// pause between them so that the server reads them apart: the pause is the
/// condition under test, not a wait for something.
fn write_in_parts(ua: &mut WsClient, parts: &[Vec<u8>], pause: Duration) {
    for (index, part) in parts.iter().enumerate() {
        if index > 0 {
            std::thread::sleep(pause);
        }
        ua.send_raw_bytes(part).unwrap();
    }
}

/// Hello with a known UAID, then a register of a fresh channel, as frames.
fn hello_and_register(uaid: &str) -> (Vec<u8>, Vec<u8>) {
    let hello = json!({"messageType": "hello", "uaid": uaid, "use_webpush": true});
    let register = json!({"messageType": "register", "channelID": new_channel_id()});
    (
        masked_frame(0x1, hello.to_string().as_bytes(), true),
        masked_frame(0x1, register.to_string().as_bytes(), true),
    )
}

/// The next message, which must be a `message_type`; `what` names the case
/// when it does not come.
fn recv_for(ua: &mut WsClient, message_type: &str, what: &str) -> Value {
    let message = ua
        .try_recv_json(DEADLINE)
        .unwrap_or_else(|| panic!("{what}: no {message_type} reply within {DEADLINE:?}"));
    assert_eq!(message["messageType"], message_type, "{what}: {message}");
    message
}

/// The socket answers the hello with its UAID: it reached the owning shard.
fn assert_resumed(ua: &mut WsClient, uaid: &str, what: &str) {
    let hello = recv_for(ua, "hello", what);
    assert_eq!(hello["uaid"], uaid, "{what}: {hello}");
    assert_eq!(hello["status"], 200, "{what}: {hello}");
}

/// The register sent behind the hello is answered, and a push to its new
/// endpoint arrives on this socket.
fn assert_registered_and_pushed(ua: &mut WsClient, what: &str) {
    let register = recv_for(ua, "register", what);
    assert_eq!(register["status"], 200, "{what}: {register}");
    let endpoint = register["pushEndpoint"].as_str().unwrap().to_string();
    push_aes128gcm(&endpoint, what.as_bytes(), 60).assert_status(201, "POST");
    let notification = recv_for(ua, "notification", what);
    assert_eq!(notification_data(&notification), what.as_bytes(), "{what}");
}

#[test]
fn a_frame_split_across_tcp_writes_survives_the_hand_off() {
    let server = sharded();
    let uas = offline_uas(&server, N, true);
    for (index, (uaid, _c, _e)) in uas.iter().enumerate() {
        let (hello, register) = hello_and_register(uaid);
        // Where the bytes break: the accepting shard holds the first part
        // while it waits for the rest (a hello cut in its header or in its
        // payload), or hands the socket off holding the first half of the
        // register, whose second half reaches the owning shard directly.
        let (what, parts) = match index % 3 {
            0 => (
                "hello cut in its frame header",
                vec![hello[..1].to_vec(), [&hello[1..], &register[..]].concat()],
            ),
            1 => {
                let half = hello.len() / 2;
                (
                    "hello cut in its payload",
                    vec![
                        hello[..half].to_vec(),
                        [&hello[half..], &register[..]].concat(),
                    ],
                )
            }
            _ => {
                let half = register.len() / 2;
                (
                    "register cut across the hand-off",
                    vec![
                        [&hello[..], &register[..half]].concat(),
                        register[half..].to_vec(),
                    ],
                )
            }
        };
        let mut ua = server.ua();
        write_in_parts(&mut ua, &parts, Duration::from_millis(30));
        let what = format!("UA {index}: {what}");
        assert_resumed(&mut ua, uaid, &what);
        assert_registered_and_pushed(&mut ua, &what);
    }
    server.assert_hand_offs();
}

#[test]
fn frames_arriving_during_the_hand_off_follow_the_socket() {
    let server = sharded();
    let uas = offline_uas(&server, N, true);
    for (index, (uaid, _c, _e)) in uas.iter().enumerate() {
        let (hello, register) = hello_and_register(uaid);
        let ping = masked_frame(0x1, b"{}", true);
        // The hello alone, then a ping and a register in writes of their
        // own, right behind it. Without a pause they mostly reach the
        // accepting shard with the hello and must travel in the hand-off's
        // buffer; with one, they wait in the socket while it travels (or once
        // it is there) for the owning shard to read.
        let pause = [0, 250, 1000, 3000][index % 4];
        let pause = Duration::from_micros(pause);
        let mut ua = server.ua();
        write_in_parts(&mut ua, &[hello, ping, register], pause);
        let what = format!("UA {index}: ping and register {pause:?} apart behind the hello");
        assert_resumed(&mut ua, uaid, &what);
        let pong = ua
            .try_recv_json(DEADLINE)
            .unwrap_or_else(|| panic!("{what}: no answer to the ping within {DEADLINE:?}"));
        assert_eq!(pong, json!({}), "{what}: ping answered");
        assert_registered_and_pushed(&mut ua, &what);
    }
    server.assert_hand_offs();
}

#[test]
fn second_socket_of_a_uaid_wins_across_shards() {
    let server = sharded();
    let uas = offline_uas(&server, N, true);
    for (i, (u, c, e)) in uas.iter().enumerate() {
        let mut first = server.ua_resume(u, true);
        let mut second = server.ua_resume(u, true);
        assert_eq!(
            first.expect_close_with_deadline(DEADLINE),
            1000,
            "UA {i}: older socket closed 1000"
        );
        push_aes128gcm(e, b"to-second", 60).assert_status(201, "POST");
        let n = second.recv_notification(DEADLINE);
        assert!(same_channel(&n["channelID"], c));
        assert_eq!(notification_data(&n), b"to-second");
    }
    server.assert_hand_offs();
}

#[test]
fn register_is_idempotent_across_shards() {
    let server = sharded();
    let uas = offline_uas(&server, N, true);
    for (u, c, e) in &uas {
        let mut ua = server.ua_resume(u, true);
        assert_eq!(
            &ua.register(c),
            e,
            "same channelID, same endpoint after reconnect"
        );
        assert_eq!(&ua.register(&c.to_ascii_uppercase()), e);
    }
    server.assert_hand_offs();
}

#[test]
fn unregister_gives_410_across_shards() {
    let server = sharded();
    let uas = offline_uas(&server, N, true);
    for (u, c, e) in &uas {
        let mut ua = server.ua_resume(u, true);
        assert_eq!(ua.unregister(c)["status"], 200);
        push_aes128gcm(e, b"x", 60).assert_json_error(410);
        put_version(e, 1).assert_json_error(410);
    }
    server.assert_hand_offs();
}

#[test]
fn channel_ids_sync_across_shards() {
    let server = sharded();
    for _ in 0..N {
        let mut ua = server.ua_webpush();
        let uaid = ua.uaid();
        let (a, ea) = ua.register_new();
        let (_b, eb) = ua.register_new();
        ua.close();
        let mut ua = server.ua();
        let r = ua.hello(Some(&uaid), Some(std::slice::from_ref(&a)), true);
        assert_eq!(r["uaid"], uaid.as_str());
        push_aes128gcm(&eb, b"x", 60).assert_json_error(410);
        push_aes128gcm(&ea, b"kept", 60).assert_status(201, "POST to kept channel");
        assert_eq!(notification_data(&ua.recv_notification(DEADLINE)), b"kept");
    }
    server.assert_hand_offs();
}

#[test]
fn forged_uaids_get_fresh_distinct_uaids_across_shards() {
    let server = sharded();
    let mut seen = std::collections::HashSet::new();
    for _ in 0..(N * 2) {
        let forged = random_hex(16);
        let mut ua = server.ua();
        let r = ua.hello(Some(&forged), None, true);
        let got = r["uaid"].as_str().unwrap().to_string();
        assert_ne!(got, forged);
        assert!(seen.insert(got), "fresh UAIDs are distinct");
        // the fresh UAID works after reconnect (it is routed to its shard)
        let (_c, e) = ua.register_new();
        ua.close();
        let mut ua = server.ua_resume(r["uaid"].as_str().unwrap(), true);
        push_empty(&e, 60).assert_status(201, "POST");
        ua.recv_notification(DEADLINE);
    }
    server.assert_hand_offs();
}

#[test]
fn cross_mode_delivery_across_shards() {
    let server = sharded();
    let uas = offline_uas(&server, N, true);
    for (u, c, e) in &uas {
        // Web Push message, SimplePush socket
        push_aes128gcm(e, b"wp", 60).assert_status(201, "POST");
        let mut sp = server.ua_resume(u, false);
        let msgs = sp.collect_until_quiet(Duration::from_millis(300));
        let ups = sp_updates(&msgs);
        assert_eq!(ups.len(), 1, "{msgs:?}");
        assert_eq!(&ups[0].0, c);
        assert!(ups[0].1.is_u64(), "{msgs:?}");
        sp.ack(c, ups[0].1.clone());
        sp.send_json(&json!({}));
        assert_eq!(sp.recv_json_with_deadline(DEADLINE), json!({}));
        sp.close();
        // SimplePush version, Web Push socket
        let mut wp = server.ua_resume(u, true);
        put_version(e, 4242).assert_status(200, "PUT");
        let n = wp.recv_notification(DEADLINE);
        assert_eq!(n["version"], "4242", "{n}");
        assert!(absent(&n["data"]), "{n}");
    }
    server.assert_hand_offs();
}

#[test]
fn simplepush_collapse_and_not_newer_across_shards() {
    let server = sharded();
    let uas = offline_uas(&server, N, false);
    for (u, c, e) in &uas {
        put_version(e, 5).assert_status(200, "PUT 5");
        put_version(e, 9).assert_status(200, "PUT 9");
        let mut ua = server.ua_resume(u, false);
        let msgs = ua.collect_until_quiet(Duration::from_millis(300));
        assert_eq!(
            sp_updates(&msgs),
            vec![(c.clone(), Value::from(9u64))],
            "{msgs:?}"
        );
        ua.ack(c, Value::from(9u64));
        put_version(e, 9).assert_status(200, "PUT 9 again");
        put_version(e, 3).assert_status(200, "PUT 3");
        ua.expect_silence(Duration::from_millis(300));
    }
    server.assert_hand_offs();
}

#[test]
fn desktop_notification_across_shards() {
    let server = sharded();
    let uas = offline_uas(&server, N, false);
    for (u, c, e) in &uas {
        let mut ua = server.ua_resume(u, false);
        put_form(e, "body=hello&ttl=30").assert_status(200, "PUT body=");
        let n = ua.recv_type("desktop-notification", DEADLINE);
        let up = &n["updates"][0];
        assert!(same_channel(&up["channelID"], c), "{n}");
        assert_eq!(up["body"], "hello");
        assert_eq!(up["ttl"], 30);
    }
    server.assert_hand_offs();
}

#[test]
fn retry_timer_and_ack_across_shards() {
    let server = Server::start(
        ServerOptions::new()
            .shards(SHARDS)
            .limit("retry_interval_ms", 300),
    );
    let uas = offline_uas(&server, 6, true);
    let mut socks: Vec<WsClient> = uas
        .iter()
        .map(|(u, _, _)| server.ua_resume(u, true))
        .collect();
    for (i, (_u, _c, e)) in uas.iter().enumerate() {
        push_aes128gcm(e, format!("r{i}").as_bytes(), 60).assert_status(201, "POST");
    }
    for (i, ua) in socks.iter_mut().enumerate() {
        let n1 = ua.recv_notification(DEADLINE);
        let n2 = ua.recv_notification(Duration::from_secs(3));
        assert_eq!(
            n1["version"], n2["version"],
            "UA {i}: re-sent by the retry timer"
        );
        ua.ack_notification(&n2);
    }
    for ua in socks.iter_mut() {
        // drain a re-send that raced with the ack, then nothing more
        let extra = ua.collect_until_quiet(Duration::from_millis(900));
        assert!(extra.len() <= 1, "no re-send after ack: {extra:?}");
    }
    drop(socks);
    for (u, _c, _e) in &uas {
        let mut ua = server.ua_resume(u, true);
        ua.expect_silence(Duration::from_millis(300));
    }
    server.assert_hand_offs();
}

#[test]
fn pings_work_on_handed_off_sockets() {
    let server = sharded();
    let uas = offline_uas(&server, N, true);
    for (u, _c, _e) in &uas {
        let mut ua = server.ua_resume(u, true);
        ua.send_json(&json!({}));
        assert_eq!(ua.recv_json_with_deadline(DEADLINE), json!({}));
        ua.send_text("PING");
        assert_eq!(ua.next_event(DEADLINE), WsEvent::Text("PONG".into()));
        ua.send_ping(b"p");
        assert_eq!(ua.next_event(DEADLINE), WsEvent::Pong(b"p".to_vec()));
    }
    server.assert_hand_offs();
}

#[test]
fn concurrent_uas_reconnecting_in_threads() {
    let server = Server::start(ServerOptions::new().shards(2));
    let uas = offline_uas(&server, 8, true);
    let ua_addr = server.ua_addr();
    std::thread::scope(|s| {
        for (i, (u, c, e)) in uas.iter().enumerate() {
            let ua_addr = ua_addr.clone();
            s.spawn(move || {
                for round in 0..5 {
                    let mut ua = WsClient::connect(&ua_addr);
                    let r = ua.hello(Some(u), None, true);
                    assert_eq!(r["uaid"], u.as_str());
                    let body = format!("{i}-{round}");
                    push_aes128gcm(e, body.as_bytes(), 60).assert_status(201, "POST");
                    let n = ua.recv_notification(DEADLINE);
                    assert!(same_channel(&n["channelID"], c));
                    assert_eq!(
                        notification_data(&n),
                        body.as_bytes(),
                        "UA {i} round {round}"
                    );
                    ua.ack_notification(&n);
                    ua.send_json(&json!({}));
                    assert_eq!(ua.recv_json_with_deadline(DEADLINE), json!({}));
                    ua.close();
                }
            });
        }
    });
    server.assert_hand_offs();
}
