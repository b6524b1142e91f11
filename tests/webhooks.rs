//! Push invalidation (docs/operations.md, "Push invalidation") through the real proxy:
//! the Auth0 tenant on loopback (tests/support/auth0.rs) changes a user or client and
//! delivers the Event Streams event or Log Streams entry to claimsmith's hooks, as
//! Auth0 would; the next proxied request must carry the change, with the
//! Management API reads counted.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::auth0::*;
use support::*;
use tokio::time::Instant;

const PLAN_BEFORE: &str = "plan-before-change";

/// The tenant with USER_1, USER_2, CLIENT_1 and CLIENT_2, claimsmith in front of it
/// with the hooks on (or off), and one request made, so USER_1 and CLIENT_1 are cached.
async fn setup(webhooks: bool) -> (Auth0Mock, Harness) {
    let mock = Auth0Mock::start().await;
    mock.add_user(USER_1, json!({"plan": PLAN_BEFORE}));
    mock.add_user(USER_2, json!({"plan": "plan-of-user-two"}));
    mock.add_client(CLIENT_1, json!({"tenant_key": TENANT_KEY}));
    mock.add_client(CLIENT_2, json!({"tenant_key": "client-two-key"}));
    let h = start_harness(&mock, &TenantOpts { webhooks, ..TenantOpts::default() }).await;
    let r = h.get_with_token("/api/x", &h.issuer.token(USER_1)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(mock.count(Endpoint::User), 1);
    (mock, h)
}

fn claims_of_last(h: &Harness) -> Value {
    let t = h.last_internal_token().expect("no internal token");
    let payload = t.split('.').nth(1).unwrap();
    use base64::Engine;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// A request as USER_1 (client-1); its app_metadata as the internal token carried it.
async fn app_metadata_now(h: &Harness) -> Value {
    let r = h.get_with_token("/api/x", &h.issuer.token(USER_1)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    claims_of_last(h)["app_metadata"].clone()
}

/// `claimsmith_invalidations_total{hook,action}`.
async fn invalidations(h: &Harness, hook: &str, action: &str) -> u64 {
    let r = h.send(Method::GET, &h.admin_url("/metrics"), &[], Bytes::new()).await;
    let line = format!("claimsmith_invalidations_total{{hook=\"{hook}\",action=\"{action}\"}} ");
    let text = r.text();
    let v = text.lines().find_map(|l| l.strip_prefix(line.as_str())).unwrap_or_else(|| panic!("no {line} in {text}"));
    v.parse().unwrap()
}

async fn invalidations_total(h: &Harness) -> u64 {
    let mut n = 0;
    for hook in ["events", "logs"] {
        for action in ["replaced", "evicted", "ignored", "duplicate"] {
            n += invalidations(h, hook, action).await;
        }
    }
    n
}

#[tokio::test]
async fn an_updated_user_reaches_the_next_request_without_a_read() {
    let (mock, h) = setup(true).await;
    h.add_secret("plan-pushed-one");
    assert_eq!(mock.update_app_metadata(USER_1, json!({"plan": "plan-pushed-one"})).await, StatusCode::NO_CONTENT);
    assert_eq!(app_metadata_now(&h).await, json!({"plan": "plan-pushed-one"}));
    assert_eq!(mock.count(Endpoint::User), 1, "the pushed value was used, not read: {}", mock.summary());
    assert_eq!(invalidations(&h, "events", "replaced").await, 1);

    // A user not cached yet: the pushed value is held, and saves the first read too.
    h.add_secret("plan-pushed-two");
    assert_eq!(mock.update_app_metadata(USER_2, json!({"plan": "plan-pushed-two"})).await, StatusCode::NO_CONTENT);
    let r = h.get_with_token("/api/x", &h.issuer.token(USER_2)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(claims_of_last(&h)["app_metadata"], json!({"plan": "plan-pushed-two"}));
    assert_eq!(mock.count(Endpoint::User), 1, "{}", mock.summary());
    assert_eq!(invalidations(&h, "events", "replaced").await, 2);
}

#[tokio::test]
async fn an_event_older_than_the_cached_value_evicts_instead_of_replacing() {
    let (mock, h) = setup(true).await;
    // A value as of a minute ago: older than the read just made.
    let mut user = mock.state.lock().unwrap().users[USER_1].clone();
    user["app_metadata"] = json!({"plan": "plan-from-the-past"});
    user["updated_at"] = json!(rfc3339(now_ms() - 60_000));
    let event = user_updated_event(&mock.next_id("evt_"), &user);
    assert_eq!(mock.deliver_events(&event).await, StatusCode::NO_CONTENT);
    assert_eq!(invalidations(&h, "events", "evicted").await, 1);
    // Evicted: the next request reads the tenant again, and gets what it holds.
    assert_eq!(app_metadata_now(&h).await, json!({"plan": PLAN_BEFORE}));
    assert_eq!(mock.count(Endpoint::User), 2, "{}", mock.summary());
}

#[tokio::test]
async fn a_deleted_user_is_refused_without_a_read() {
    let (mock, h) = setup(true).await;
    assert_eq!(mock.delete_user(USER_1).await, StatusCode::NO_CONTENT);
    for _ in 0..3 {
        let r = h.get_with_token("/api/x", &h.issuer.token(USER_1)).await;
        r.assert_invalid_token();
    }
    assert_eq!(mock.count(Endpoint::User), 1, "remembered as not existing: {}", mock.summary());
    assert_eq!(h.upstream.requests().len(), 1, "nothing forwarded for a deleted user");
    assert_eq!(invalidations(&h, "events", "evicted").await, 1);
}

#[tokio::test]
async fn a_redelivered_event_is_applied_once() {
    let (mock, h) = setup(true).await;
    h.add_secret("plan-delivered-twice");
    let event = mock.change_app_metadata(USER_1, json!({"plan": "plan-delivered-twice"}));
    assert_eq!(mock.deliver_events(&event).await, StatusCode::NO_CONTENT);
    // A sender's retry: the same id. Applied again it would evict (not newer than
    // what it wrote), costing a read.
    assert_eq!(mock.deliver_events(&event).await, StatusCode::NO_CONTENT);
    assert_eq!(mock.deliver_events(&json!([event, event])).await, StatusCode::NO_CONTENT);
    assert_eq!(invalidations(&h, "events", "replaced").await, 1);
    assert_eq!(invalidations(&h, "events", "duplicate").await, 3);
    assert_eq!(invalidations(&h, "events", "evicted").await, 0);
    assert_eq!(app_metadata_now(&h).await, json!({"plan": "plan-delivered-twice"}));
    assert_eq!(mock.count(Endpoint::User), 1, "{}", mock.summary());
}

#[tokio::test]
async fn events_out_of_order_do_not_let_the_older_one_win() {
    let (mock, h) = setup(true).await;
    h.add_secret("plan-older-change");
    h.add_secret("plan-newer-change");
    let older = mock.change_app_metadata(USER_1, json!({"plan": "plan-older-change"}));
    let newer = mock.change_app_metadata(USER_1, json!({"plan": "plan-newer-change"}));
    assert!(older["data"]["object"]["updated_at"].as_str() < newer["data"]["object"]["updated_at"].as_str());
    assert_eq!(mock.deliver_events(&newer).await, StatusCode::NO_CONTENT);
    assert_eq!(mock.deliver_events(&older).await, StatusCode::NO_CONTENT);
    assert_eq!(invalidations(&h, "events", "replaced").await, 1);
    assert_eq!(invalidations(&h, "events", "evicted").await, 1);
    // The older one only evicted: the next request reads the tenant, which holds the newer.
    assert_eq!(app_metadata_now(&h).await, json!({"plan": "plan-newer-change"}));
    assert_eq!(mock.count(Endpoint::User), 2, "{}", mock.summary());

    // Both in one delivery, newer first: the same.
    let older = mock.change_app_metadata(USER_1, json!({"plan": "plan-older-change"}));
    let newer = mock.change_app_metadata(USER_1, json!({"plan": "plan-newer-change"}));
    assert_eq!(mock.deliver_events(&json!([newer, older])).await, StatusCode::NO_CONTENT);
    assert_eq!(app_metadata_now(&h).await, json!({"plan": "plan-newer-change"}));
}

#[tokio::test]
async fn a_client_change_reaches_the_next_request_through_one_single_client_read() {
    let (mock, h) = setup(true).await;
    h.add_secret("rotated-by-a-log-entry");
    assert_eq!(mock.count(Endpoint::ClientList), 1);
    assert_eq!(
        mock.update_client_metadata(CLIENT_1, json!({"tenant_key": "rotated-by-a-log-entry"})).await,
        StatusCode::NO_CONTENT
    );
    for _ in 0..3 {
        assert_eq!(h.get_with_token("/api/x", &h.issuer.token(USER_1)).await.status, StatusCode::OK);
    }
    assert_eq!(claims_of_last(&h)["client_metadata"], json!({"tenant_key": "rotated-by-a-log-entry"}));
    assert_eq!(
        mock.count_target(Endpoint::Client, "/api/v2/clients/client-1?fields=client_metadata&include_fields=true"),
        1,
        "{}",
        mock.summary()
    );
    assert_eq!(mock.count(Endpoint::Client), 1);
    assert_eq!(mock.count(Endpoint::ClientList), 1, "not the whole list");
    assert_eq!(invalidations(&h, "logs", "evicted").await, 1);
}

/// Writes log entries in one of Log Streams' formats.
type Encode = fn(&[Value]) -> String;

#[tokio::test]
async fn log_stream_deliveries_are_read_as_an_array_an_object_or_json_lines() {
    let (mock, h) = setup(true).await;
    let login = json!({"log_id": mock.next_id("9002"), "data": {"type": "s", "description": "Success Login",
                       "tenant_name": tenant_name(), "date": rfc3339(now_ms())}});
    let forms: [(&str, Encode); 3] = [
        ("array", |e| Value::Array(e.to_vec()).to_string()),
        ("object", |e| e[0].to_string()),
        ("lines", |e| e.iter().map(|v| format!("{v}\n")).collect()),
    ];
    for (i, (form, body)) in forms.iter().enumerate() {
        let key = format!("client-key-{form}");
        h.add_secret(&key);
        mock.set_client_metadata(CLIENT_1, json!({"tenant_key": key}));
        let mut entries = vec![client_update_log(&mock.next_id("9002"), CLIENT_1, &json!({"client_metadata": {}}))];
        if *form != "object" {
            entries.push(login.clone());
        }
        let (status, text) = mock.post_to("logs", Some(WEBHOOK_TOKEN), Bytes::from(body(&entries))).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{form}: {text}");
        assert_eq!(h.get_with_token("/api/x", &h.issuer.token(USER_1)).await.status, StatusCode::OK);
        assert_eq!(claims_of_last(&h)["client_metadata"], json!({"tenant_key": key}), "{form}");
        assert_eq!(mock.count(Endpoint::Client), i + 1, "{form}: {}", mock.summary());
    }
    assert_eq!(invalidations(&h, "logs", "evicted").await, 3);
    assert_eq!(invalidations(&h, "logs", "ignored").await, 2, "the logins");

    // A user changed through the Management API: evicted, read again.
    h.add_secret("plan-patched-via-api");
    mock.set_app_metadata(USER_1, json!({"plan": "plan-patched-via-api"}));
    let entry = user_update_log(&mock.next_id("9002"), USER_1, &json!({"app_metadata": {}}));
    assert!(entry["data"]["details"]["request"]["path"].as_str().unwrap().contains("%7C"));
    assert_eq!(mock.deliver_logs(Bytes::from(format!("{entry}\n"))).await, StatusCode::NO_CONTENT);
    assert_eq!(app_metadata_now(&h).await, json!({"plan": "plan-patched-via-api"}));
    assert_eq!(mock.count(Endpoint::User), 2);
}

/// Sends `body` with chunked framing (no Content-Length) to a hook; the status line.
async fn post_chunked(h: &Harness, path: &str, body_len: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(h.proxy.admin_addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {WEBHOOK_TOKEN}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b' '; 64 * 1024];
        let mut sent = 0;
        while sent < body_len {
            let n = chunk.len().min(body_len - sent);
            wr.write_all(format!("{n:x}\r\n").as_bytes()).await?;
            wr.write_all(&chunk[..n]).await?;
            wr.write_all(b"\r\n").await?;
            sent += n;
        }
        wr.write_all(b"0\r\n\r\n").await
    });
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(2).any(|w| w == b"\r\n") {
        match tokio::time::timeout(Duration::from_secs(10), rd.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    writer.abort();
    String::from_utf8_lossy(&buf).lines().next().unwrap_or("").to_string()
}

#[tokio::test]
async fn refused_deliveries_apply_nothing() {
    let (mock, h) = setup(true).await;
    h.add_secret("plan-must-not-apply");
    let event = mock.change_app_metadata(USER_1, json!({"plan": "plan-must-not-apply"}));
    let one = Bytes::from(event.to_string());
    let client_entry = client_update_log(&mock.next_id("9002"), CLIENT_1, &json!({}));

    // No token, a wrong one, another scheme: 401.
    for token in [None, Some("wrong-token"), Some(ADMIN_TOKEN)] {
        let (status, text) = mock.post_to("events", token, one.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
        assert!(!text.contains("plan-must"), "{text}");
        assert_eq!(
            mock.post_to("logs", token, Bytes::from(client_entry.to_string())).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    // Malformed: 400, the whole delivery.
    let malformed_events = [
        Bytes::from_static(b"{\"specversion\": \"1.0\", \"id\": "),
        Bytes::from(json!([event, {"specversion": "1.0", "type": "user.updated", "data": {}}]).to_string()),
        Bytes::from(json!([event, "not an event"]).to_string()),
    ];
    for body in malformed_events {
        let (status, text) = mock.post_to("events", Some(WEBHOOK_TOKEN), body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
        assert!(!text.contains("plan-must") && !text.contains("specversion"), "the body is not echoed: {text}");
    }
    let malformed_logs =
        [format!("{client_entry}\n{{\"log_id\": \"2\", \"data\": {{"), json!([client_entry, 5]).to_string()];
    for body in malformed_logs {
        let (status, text) = mock.post_to("logs", Some(WEBHOOK_TOKEN), Bytes::from(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    }
    // Over 1 MiB: 413, by Content-Length before reading, or counted while reading.
    let mut padded = event.clone();
    padded["data"]["object"]["user_metadata"] = json!({"pad": " ".repeat(1024 * 1024)});
    let (status, _) = mock.post_to("events", Some(WEBHOOK_TOKEN), Bytes::from(padded.to_string())).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let status_line = post_chunked(&h, "/hooks/auth0/events", 1024 * 1024 + 64 * 1024).await;
    assert!(status_line.starts_with("HTTP/1.1 413"), "{status_line}");
    let status_line = post_chunked(&h, "/hooks/auth0/logs", 1024 * 1024 + 64 * 1024).await;
    assert!(status_line.starts_with("HTTP/1.1 413"), "{status_line}");

    // Nothing of it was applied: no counter moved, the cached values are served.
    assert_eq!(invalidations_total(&h).await, 0);
    assert_eq!(app_metadata_now(&h).await, json!({"plan": PLAN_BEFORE}));
    assert_eq!(claims_of_last(&h)["client_metadata"], json!({"tenant_key": TENANT_KEY}));
    assert_eq!(mock.count(Endpoint::User), 1, "{}", mock.summary());
    assert_eq!(mock.count(Endpoint::Client), 0);

    // The same event, delivered properly, is applied (its id was not recorded).
    assert_eq!(mock.deliver_events(&event).await, StatusCode::NO_CONTENT);
    assert_eq!(app_metadata_now(&h).await, json!({"plan": "plan-must-not-apply"}));
}

#[tokio::test]
async fn the_hooks_are_off_without_a_webhook_token() {
    let (mock, h) = setup(false).await;
    mock.set_hooks(&h.admin_url(""), WEBHOOK_TOKEN);
    let event = mock.change_app_metadata(USER_1, json!({"plan": "plan-hooks-off"}));
    for hook in ["events", "logs"] {
        let (status, _) = mock.post_to(hook, Some(WEBHOOK_TOKEN), Bytes::from(event.to_string())).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{hook}");
        let r = h.send(Method::GET, &h.admin_url(&format!("/hooks/auth0/{hook}")), &[], Bytes::new()).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND);
    }
    assert_eq!(app_metadata_now(&h).await, json!({"plan": PLAN_BEFORE}));
}

#[tokio::test]
async fn only_post_is_answered_on_the_hooks() {
    let (_mock, h) = setup(true).await;
    for method in [Method::GET, Method::PUT, Method::DELETE] {
        for hook in ["events", "logs"] {
            let r = h.send(method.clone(), &h.admin_url(&format!("/hooks/auth0/{hook}")), &[], Bytes::new()).await;
            assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {hook}");
            assert_eq!(r.header("allow"), Some("POST"));
        }
    }
}

#[tokio::test]
async fn an_event_of_an_unknown_tenant_is_ignored_and_counted() {
    let (mock, h) = setup(true).await;
    let mut event = mock.change_app_metadata(USER_1, json!({"plan": "plan-other-tenant"}));
    event["source"] = json!("urn:auth0:other.test");
    event["a0tenant"] = json!("other");
    assert_eq!(mock.deliver_events(&event).await, StatusCode::NO_CONTENT);
    let mut entry = client_update_log(&mock.next_id("9002"), CLIENT_1, &json!({}));
    entry["data"]["tenant_name"] = json!("other");
    assert_eq!(mock.deliver_logs(Bytes::from(entry.to_string())).await, StatusCode::NO_CONTENT);
    assert_eq!(invalidations(&h, "events", "ignored").await, 1);
    assert_eq!(invalidations(&h, "logs", "ignored").await, 1);
    assert_eq!(invalidations(&h, "events", "replaced").await + invalidations(&h, "events", "evicted").await, 0);
    assert_eq!(app_metadata_now(&h).await, json!({"plan": PLAN_BEFORE}));
    assert_eq!(mock.count(Endpoint::User), 1);
    assert_eq!(mock.count(Endpoint::Client), 0);
}

/// The time from a delivery's start to the next request carrying the change, over
/// `WEBHOOK_TRIES` (default 200) changes. Run by benches/webhook_latency.sh; prints
/// p50/p99 and asserts nothing about time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: benches/webhook_latency.sh"]
async fn webhook_latency() {
    let tries: usize = std::env::var("WEBHOOK_TRIES").ok().and_then(|n| n.parse().ok()).unwrap_or(200);
    let (mock, h) = setup(true).await;
    let token = h.issuer.token(USER_1);
    // A plain client: the harness's leak audit would be timed too.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let get = || {
        let req = http::Request::get(h.proxy_url("/api/x"))
            .header("authorization", format!("Bearer {token}"))
            .body(http_body_util::Empty::new())
            .unwrap();
        client.request(req)
    };
    let mut samples = Vec::with_capacity(tries);
    for i in 0..tries {
        let plan = format!("plan-measured-{i:05}");
        let event = mock.change_app_metadata(USER_1, json!({ "plan": plan }));
        let t0 = Instant::now();
        assert_eq!(mock.deliver_events(&event).await, StatusCode::NO_CONTENT);
        loop {
            let r = get().await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            http_body_util::BodyExt::collect(r.into_body()).await.unwrap();
            if claims_of_last(&h)["app_metadata"]["plan"] == plan.as_str() {
                break;
            }
        }
        samples.push(t0.elapsed());
    }
    assert_eq!(mock.count(Endpoint::User), 1, "every change came by the hook: {}", mock.summary());
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1];
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "webhook_latency: {} changes, delivery start to the next request carrying the change: \
         p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        samples.len(),
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(samples[samples.len() - 1])
    );
}
