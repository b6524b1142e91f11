//! Tracing (docs/operations.md, "Tracing"): the caller's W3C trace context continued
//! to the upstream with claimsmith's span as the parent, or a new one started, and
//! the request's span and its phases exported over OTLP/HTTP (JSON) to a collector on
//! loopback started here. Both transports: the fast path and hyper. And the event-loop
//! turn metric, which shows a stalled worker.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};
use support::*;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

/// An OTLP/HTTP collector: records every span posted to `/v1/traces`.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Value>>>,
    posts: Arc<Mutex<Vec<(String, String)>>>,
}

impl Collector {
    async fn start() -> Collector {
        let spans: Arc<Mutex<Vec<Value>>> = Arc::default();
        let posts: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
        let (s, p) = (spans.clone(), posts.clone());
        let addr = serve(move |req: Request<Incoming>| {
            let (spans, posts) = (s.clone(), p.clone());
            async move {
                let path = req.uri().path().to_string();
                let ctype = req.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
                let body = req.into_body().collect().await.unwrap().to_bytes();
                posts.lock().unwrap().push((path, ctype.unwrap_or_default()));
                let doc: Value = serde_json::from_slice(&body).expect("the export is JSON");
                for rs in doc["resourceSpans"].as_array().expect("resourceSpans") {
                    assert_eq!(rs["resource"]["attributes"][0]["key"], "service.name");
                    for ss in rs["scopeSpans"].as_array().unwrap() {
                        spans.lock().unwrap().extend(ss["spans"].as_array().unwrap().iter().cloned());
                    }
                }
                json_response(StatusCode::OK, &json!({}))
            }
        })
        .await;
        Collector { addr, spans, posts }
    }

    /// The spans of trace `trace_id`, once `n` have arrived.
    async fn wait_for(&self, trace_id: &str, n: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let got: Vec<Value> =
                self.spans.lock().unwrap().iter().filter(|s| s["traceId"] == trace_id).cloned().collect();
            if got.len() >= n {
                return got;
            }
            assert!(tokio::time::Instant::now() < deadline, "{} of {n} spans arrived: {got:?}", got.len());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span["attributes"].as_array()?.iter().find(|a| a["key"] == key).map(|a| &a["value"])
}

async fn start(collector: &Collector, fast_path: bool) -> Harness {
    let toml = format!(
        "{}\n[telemetry]\notlp_endpoint = \"http://{}/\"\nservice_name = \"claimsmith-test\"\n",
        DEFAULT_TOML.replacen("[listen]\n", &format!("[listen]\nfast_path = {fast_path}\n"), 1),
        collector.addr
    );
    Harness::start_with(&toml, default_metadata()).await
}

#[tokio::test]
async fn a_callers_trace_is_continued_and_exported_with_its_phases() {
    let collector = Collector::start().await;
    for fast_path in [true, false] {
        collector.spans.lock().unwrap().clear();
        let h = start(&collector, fast_path).await;
        let token = h.issuer.token(USER_1);
        let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
        let r =
            h.get("/api/orders", &[("authorization", &format!("Bearer {token}")), ("traceparent", &traceparent)]).await;
        assert_eq!(r.status, StatusCode::OK);
        // The upstream's parent is claimsmith's span, in the caller's trace.
        let sent = h.upstream.last().headers["traceparent"].to_str().unwrap().to_string();
        let parts: Vec<&str> = sent.split('-').collect();
        assert_eq!((parts[0], parts[1], parts[3]), ("00", TRACE_ID, "01"), "{sent}");
        let ours = parts[2].to_string();
        assert_ne!(ours, CALLER_SPAN);

        let spans = collector.wait_for(TRACE_ID, 6).await;
        let server = spans.iter().find(|s| s["spanId"] == ours.as_str()).expect("the request's span");
        assert_eq!(server["parentSpanId"], CALLER_SPAN);
        assert_eq!(server["kind"], 2);
        assert_eq!(server["name"], "GET /api/");
        assert_eq!(attr(server, "http.response.status_code").unwrap()["intValue"], "200");
        assert_eq!(attr(server, "http.route").unwrap()["stringValue"], "/api/");
        let (start, end): (u128, u128) = (
            server["startTimeUnixNano"].as_str().unwrap().parse().unwrap(),
            server["endTimeUnixNano"].as_str().unwrap().parse().unwrap(),
        );
        assert!(end >= start);
        let mut phases: Vec<&str> =
            spans.iter().filter(|s| s["parentSpanId"] == ours.as_str()).map(|s| s["name"].as_str().unwrap()).collect();
        phases.sort();
        assert_eq!(phases, ["authorize", "metadata", "mint", "upstream", "verify"], "fast_path = {fast_path}");
        for s in spans.iter().filter(|s| s["parentSpanId"] == ours.as_str()) {
            let (a, b): (u128, u128) = (
                s["startTimeUnixNano"].as_str().unwrap().parse().unwrap(),
                s["endTimeUnixNano"].as_str().unwrap().parse().unwrap(),
            );
            assert!(a >= start && b <= end + 1_000_000 && a <= b, "a phase lies within the request: {s}");
        }
        // Nothing of the request but its method, route and status is in a span.
        let text = serde_json::to_string(&spans).unwrap();
        for secret in [token.as_str(), "/api/orders", TENANT_KEY, USER_NOTE] {
            assert!(!text.contains(secret), "a span holds {secret}");
        }
        assert!(collector.posts.lock().unwrap().iter().all(|(p, c)| p == "/v1/traces" && c == "application/json"));
    }
}

#[tokio::test]
async fn a_trace_is_started_for_a_caller_without_one_and_refusals_are_traced_too() {
    let collector = Collector::start().await;
    let h = start(&collector, true).await;
    let r = h.get_with_token("/api/x", &h.issuer.token(USER_1)).await;
    assert_eq!(r.status, StatusCode::OK);
    let sent = h.upstream.last().headers["traceparent"].to_str().unwrap().to_string();
    let trace_id = sent.split('-').nth(1).unwrap().to_string();
    assert_eq!(trace_id.len(), 32);
    let spans = collector.wait_for(&trace_id, 6).await;
    assert!(spans.iter().any(|s| s["parentSpanId"].is_null() && s["kind"] == 2), "a root span: {spans:?}");

    // A refused request: its span says 401 and the phase that ran.
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let r = h.get("/api/x", &[("authorization", "Bearer not.a.token"), ("traceparent", &traceparent)]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let spans = collector.wait_for(TRACE_ID, 2).await;
    let server = spans.iter().find(|s| s["kind"] == 2).unwrap();
    assert_eq!(attr(server, "http.response.status_code").unwrap()["intValue"], "401");
    assert!(attr(server, "error.type").is_some());
    assert!(spans.iter().any(|s| s["name"] == "verify"));
}

#[tokio::test]
async fn an_unsampled_trace_is_passed_on_and_not_exported() {
    let collector = Collector::start().await;
    let h = start(&collector, true).await;
    let token = h.issuer.token(USER_1);
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-00");
    let r = h.get("/api/x", &[("authorization", &format!("Bearer {token}")), ("traceparent", &traceparent)]).await;
    assert_eq!(r.status, StatusCode::OK);
    let sent = h.upstream.last().headers["traceparent"].to_str().unwrap().to_string();
    assert!(sent.starts_with(&format!("00-{TRACE_ID}-")) && sent.ends_with("-00"), "{sent}");
    // A sampled request after it is exported; the unsampled one never is.
    let r = h.get_with_token("/api/y", &token).await;
    assert_eq!(r.status, StatusCode::OK);
    let other = h.upstream.last().headers["traceparent"].to_str().unwrap().split('-').nth(1).unwrap().to_string();
    collector.wait_for(&other, 6).await;
    assert!(collector.spans.lock().unwrap().iter().all(|s| s["traceId"] != TRACE_ID));
}

#[tokio::test]
async fn without_telemetry_the_callers_traceparent_passes_untouched() {
    let h = Harness::start().await;
    let traceparent = format!("00-{TRACE_ID}-{CALLER_SPAN}-01");
    let token = h.issuer.token(USER_1);
    let r = h.get("/api/x", &[("authorization", &format!("Bearer {token}")), ("traceparent", &traceparent)]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(h.upstream.last().headers["traceparent"], traceparent.as_str());
    let r = h.get_with_token("/api/x", &token).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(h.upstream.last().headers.get("traceparent").is_none(), "nothing is started without [telemetry]");
}

#[tokio::test]
async fn a_collector_that_is_down_fails_no_request() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let toml = format!("{DEFAULT_TOML}\n[telemetry]\notlp_endpoint = \"http://{addr}\"\n");
    let h = Harness::start_with(&toml, default_metadata()).await;
    let token = h.issuer.token(USER_1);
    for _ in 0..20 {
        assert_eq!(h.get_with_token("/api/x", &token).await.status, StatusCode::OK);
    }
    let m = h.send(Method::GET, &h.admin_url("/metrics"), &[], Bytes::new()).await.text();
    assert!(m.contains("claimsmith_spans_dropped_total 0"), "the queue has room; spans are lost at export: {m}");
}

/// The value of the sample line starting with `series` in a `/metrics` text.
fn sample(m: &str, series: &str) -> u64 {
    let line = m.lines().find(|l| l.starts_with(series)).unwrap_or_else(|| panic!("no {series} in:\n{m}"));
    line.rsplit(' ').next().and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("bad line {line}"))
}

/// Turns sampled that took longer than 50 ms.
fn slow_turns(m: &str) -> u64 {
    sample(m, "claimsmith_event_loop_turn_seconds_bucket{le=\"+Inf\"} ")
        - sample(m, "claimsmith_event_loop_turn_seconds_bucket{le=\"0.05\"} ")
}

/// Something that holds a worker's event loop shows in
/// `claimsmith_event_loop_turn_seconds` (docs/operations.md, "Metrics"): here a
/// blocking sleep on the runtime the proxy shares with this test. The sampling timer
/// comes due during the stall, so the sample taken after it holds the stall's length.
#[tokio::test]
async fn a_stalled_event_loop_shows_in_the_turn_histogram() {
    let h = Harness::start().await;
    let before = slow_turns(&h.metrics_with("claimsmith_event_loop_turn_seconds_count").await);
    // Holds the thread that every task of this runtime, the proxy's included, runs on.
    tokio::spawn(async { std::thread::sleep(Duration::from_millis(150)) }).await.unwrap();
    let mut after = before;
    for _ in 0..100 {
        after = slow_turns(&h.metrics_with("claimsmith_event_loop_turn_seconds_count").await);
        if after > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(after > before, "a 150 ms stall left no turn over 50 ms ({before} before, {after} after)");
}
