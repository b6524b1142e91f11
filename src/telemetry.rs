//! Distributed tracing (docs/operations.md, "Tracing"): a request's W3C trace context
//! (`traceparent`, <https://www.w3.org/TR/trace-context/>) is continued, or started,
//! and passed to the upstream with claimsmith's own span as the parent; with
//! `[telemetry] otlp_endpoint` set, the request's span and one child span per phase
//! (verify, metadata, authorize, mint, upstream) are exported over OTLP/HTTP with
//! the JSON encoding (<https://opentelemetry.io/docs/specs/otlp/>).
//!
//! Why our own exporter and not the `opentelemetry` crates: claimsmith exports one
//! fixed shape of span from one place, and the OTLP/HTTP JSON encoding is a small,
//! stable document; the SDK, its exporter and their transport would add some forty
//! crates and a second HTTP stack to every build for that. Nothing here runs without
//! a `[telemetry]` table: the request path then only tests an `Option`.
//!
//! Export never slows a request: spans go to a bounded queue (a full queue drops the
//! span and counts it) that a background task sends in batches; a collector that is
//! down or slow loses spans, never requests. Spans carry no header value, token,
//! path or metadata: the method, the route's prefix, the status and the phase names.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use http_body_util::Full;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::TelemetryConfig;
use crate::http_client::{self, JsonClient};

pub(crate) static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

/// Spans waiting for export at most; past this they are dropped (and counted).
const QUEUE: usize = 8192;
/// Spans per export request at most.
const BATCH: usize = 512;
/// How long a span waits for its batch at most.
const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// One export request's time limit.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// The trace context of one request, as claimsmith continues it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// claimsmith's span for this request: the parent the upstream sees.
    pub span_id: [u8; 8],
    /// The caller's span, when the request came with a trace context.
    pub parent: Option<[u8; 8]>,
    /// Whether the trace is recorded (the `sampled` flag).
    pub sampled: bool,
}

impl TraceContext {
    /// The caller's context continued with a new span of ours, or a new trace
    /// (sampled with probability `ratio`) when there is none or it is malformed (the
    /// specification's rule: a `traceparent` that does not parse is ignored).
    pub fn continue_or_start(headers: &HeaderMap, ratio: f64) -> TraceContext {
        let span_id = nonzero();
        let mut values = headers.get_all(&TRACEPARENT).iter();
        if let (Some(v), None) = (values.next(), values.next())
            && let Some((trace_id, parent, flags)) = parse_traceparent(v.as_bytes())
        {
            return TraceContext { trace_id, span_id, parent: Some(parent), sampled: flags & 1 == 1 };
        }
        TraceContext { trace_id: nonzero(), span_id, parent: None, sampled: rand::random::<f64>() < ratio }
    }

    /// `traceparent` for the upstream: this trace, our span as its parent.
    pub fn traceparent(&self) -> HeaderValue {
        let mut s = String::with_capacity(55);
        s.push_str("00-");
        hex(&mut s, &self.trace_id);
        s.push('-');
        hex(&mut s, &self.span_id);
        s.push_str(if self.sampled { "-01" } else { "-00" });
        // Hex digits and dashes only.
        HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static(""))
    }

    pub fn trace_id_hex(&self) -> String {
        let mut s = String::with_capacity(32);
        hex(&mut s, &self.trace_id);
        s
    }
}

/// `version-traceid-parentid-flags`; version 00 exactly, a later version by its first
/// four fields (the specification's forward-compatibility rule). All-zero ids and
/// version `ff` are invalid.
fn parse_traceparent(v: &[u8]) -> Option<([u8; 16], [u8; 8], u8)> {
    if v.len() < 55 || (v.len() > 55 && (v[..2] == *b"00" || v[55] != b'-')) {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' || v[..2] == *b"ff" {
        return None;
    }
    let _version: [u8; 1] = unhex(&v[..2])?;
    let trace_id: [u8; 16] = unhex(&v[3..35])?;
    let parent: [u8; 8] = unhex(&v[36..52])?;
    let [flags]: [u8; 1] = unhex(&v[53..55])?;
    if trace_id == [0; 16] || parent == [0; 8] {
        return None;
    }
    Some((trace_id, parent, flags))
}

/// Lower-case hex only, as the specification writes ids.
fn unhex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

fn hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
}

/// Random, never all zero (which the specification reserves as invalid).
fn nonzero<const N: usize>() -> [u8; N] {
    loop {
        let id: [u8; N] = std::array::from_fn(|_| rand::random());
        if id != [0; N] {
            return id;
        }
    }
}

/// A request being traced: its context and the phases timed so far.
#[derive(Debug)]
pub struct Trace {
    pub ctx: TraceContext,
    /// When the request began, on the wall clock (spans carry Unix times) and on the
    /// monotonic one (phases are measured on it).
    began: (SystemTime, Instant),
    phases: Vec<(&'static str, Instant, Instant)>,
}

impl Trace {
    pub fn new(ctx: TraceContext) -> Trace {
        Trace { ctx, began: (SystemTime::now(), Instant::now()), phases: Vec::new() }
    }

    /// Notes that phase `name` ran from `start` until now.
    pub fn phase(&mut self, name: &'static str, start: Instant) {
        self.phases.push((name, start, Instant::now()));
    }
}

/// Times a phase when the request is traced: `let t = clock(&trace); …;
/// mark(&mut trace, "verify", t)`. Reads no clock otherwise.
pub(crate) fn clock(trace: &Option<Box<Trace>>) -> Option<Instant> {
    trace.as_ref().map(|_| Instant::now())
}

pub(crate) fn mark(trace: &mut Option<Box<Trace>>, name: &'static str, start: Option<Instant>) {
    if let (Some(t), Some(s)) = (trace.as_mut(), start) {
        t.phase(name, s);
    }
}

/// What the request's span says about it, besides its phases.
pub struct Finished<'a> {
    pub method: &'a str,
    pub route: &'a str,
    pub mode: &'static str,
    pub status: u16,
    pub error: Option<&'static str>,
    pub elapsed: Duration,
}

/// One span, ready to encode.
struct Span {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    name: String,
    /// 1 internal, 2 server (OTLP `SpanKind`).
    kind: u8,
    start: SystemTime,
    end: SystemTime,
    attributes: Vec<(&'static str, Attr)>,
    error: bool,
}

enum Attr {
    Str(String),
    Int(i64),
}

/// Tracing as configured: the sampling ratio for new traces and, with an endpoint,
/// the export queue.
pub struct Telemetry {
    ratio: f64,
    queue: Option<mpsc::Sender<Span>>,
    /// Spans dropped because the queue was full (`claimsmith_spans_dropped_total`).
    pub dropped: Arc<AtomicU64>,
}

/// The export task's half: started with the state's other background work.
pub struct Exporter {
    rx: mpsc::Receiver<Span>,
    client: JsonClient,
    url: http::Uri,
    service_name: String,
}

impl Telemetry {
    pub fn new(config: &TelemetryConfig, client: JsonClient) -> (Telemetry, Option<Exporter>) {
        let dropped = Arc::new(AtomicU64::new(0));
        match &config.otlp_endpoint {
            None => (Telemetry { ratio: config.sample_ratio, queue: None, dropped }, None),
            Some(url) => {
                let (tx, rx) = mpsc::channel(QUEUE);
                let exporter = Exporter { rx, client, url: url.clone(), service_name: config.service_name.clone() };
                (Telemetry { ratio: config.sample_ratio, queue: Some(tx), dropped }, Some(exporter))
            }
        }
    }

    /// The trace of a request that arrived with `headers`.
    pub fn start(&self, headers: &HeaderMap) -> Box<Trace> {
        Box::new(Trace::new(TraceContext::continue_or_start(headers, self.ratio)))
    }

    /// Queues the request's span and its phases for export, if the trace is sampled.
    pub fn finish(&self, trace: &Trace, done: Finished<'_>) {
        let Some(queue) = &self.queue else { return };
        if !trace.ctx.sampled {
            return;
        }
        let (wall, mono) = trace.began;
        let at = |i: Instant| wall + i.saturating_duration_since(mono);
        let ctx = &trace.ctx;
        let mut attributes = vec![
            ("http.request.method", Attr::Str(done.method.to_string())),
            ("http.route", Attr::Str(done.route.to_string())),
            ("http.response.status_code", Attr::Int(i64::from(done.status))),
            ("claimsmith.mode", Attr::Str(done.mode.to_string())),
        ];
        if let Some(e) = done.error {
            attributes.push(("error.type", Attr::Str(e.to_string())));
        }
        let mut spans = vec![Span {
            trace_id: ctx.trace_id,
            span_id: ctx.span_id,
            parent: ctx.parent,
            name: format!("{} {}", done.method, done.route),
            kind: 2,
            start: wall,
            end: wall + done.elapsed,
            attributes,
            error: done.status >= 500,
        }];
        for (name, start, end) in &trace.phases {
            spans.push(Span {
                trace_id: ctx.trace_id,
                span_id: nonzero(),
                parent: Some(ctx.span_id),
                name: (*name).to_string(),
                kind: 1,
                start: at(*start),
                end: at(*end),
                attributes: Vec::new(),
                error: false,
            });
        }
        for s in spans {
            if queue.try_send(s).is_err() {
                self.dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

impl Exporter {
    /// Sends queued spans in batches until the state that queued them is gone.
    pub async fn run(mut self) {
        let mut batch = Vec::with_capacity(BATCH);
        let mut failing = false;
        loop {
            let first = match self.rx.recv().await {
                Some(s) => s,
                None => return,
            };
            batch.push(first);
            let deadline = Instant::now() + FLUSH_EVERY;
            while batch.len() < BATCH {
                match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                    Ok(Some(s)) => batch.push(s),
                    Ok(None) | Err(_) => break,
                }
            }
            let body = encode(&self.service_name, &batch);
            batch.clear();
            let ok = self.post(body).await;
            // Once per outage: a collector that is down must not flood the log.
            match (ok, failing) {
                (Err(e), false) => {
                    tracing::warn!(error = %e, "cannot export spans to the OTLP collector; dropping them until it answers");
                    failing = true;
                }
                (Ok(()), true) => {
                    tracing::info!("the OTLP collector answers again");
                    failing = false;
                }
                _ => {}
            }
        }
    }

    async fn post(&self, body: String) -> Result<(), String> {
        let req = http::Request::post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, concat!("claimsmith/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| e.to_string())?;
        let resp = http_client::fetch(&self.client, req, EXPORT_TIMEOUT, 64 * 1024).await.map_err(|e| e.to_string())?;
        match resp.status.is_success() {
            true => Ok(()),
            false => Err(format!("the collector answered {}", resp.status)),
        }
    }
}

/// An OTLP/HTTP JSON `ExportTraceServiceRequest`: ids in hex, times as strings of
/// Unix nanoseconds, enums as numbers.
fn encode(service_name: &str, spans: &[Span]) -> String {
    use serde_json::{Value, json};
    let nanos = |t: SystemTime| t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()).to_string();
    let ids = |b: &[u8]| {
        let mut s = String::with_capacity(2 * b.len());
        hex(&mut s, b);
        s
    };
    let spans: Vec<Value> = spans
        .iter()
        .map(|s| {
            let attributes: Vec<Value> = s
                .attributes
                .iter()
                .map(|(k, v)| match v {
                    Attr::Str(x) => json!({"key": k, "value": {"stringValue": x}}),
                    Attr::Int(n) => json!({"key": k, "value": {"intValue": n.to_string()}}),
                })
                .collect();
            let mut span = json!({
                "traceId": ids(&s.trace_id),
                "spanId": ids(&s.span_id),
                "name": s.name,
                "kind": s.kind,
                "startTimeUnixNano": nanos(s.start),
                "endTimeUnixNano": nanos(s.end),
                "attributes": attributes,
                "status": {"code": if s.error { 2 } else { 0 }},
            });
            if let Some(p) = s.parent {
                span["parentSpanId"] = Value::String(ids(&p));
            }
            span
        })
        .collect();
    json!({"resourceSpans": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service_name}}]},
        "scopeSpans": [{"scope": {"name": "claimsmith", "version": env!("CARGO_PKG_VERSION")}, "spans": spans}],
    }]})
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(&TRACEPARENT, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn a_callers_trace_is_continued() {
        let h = with("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let ctx = TraceContext::continue_or_start(&h, 0.0);
        assert_eq!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.parent, Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7]));
        assert!(ctx.sampled, "the caller's sampled flag is followed, whatever the ratio");
        let out = ctx.traceparent();
        let out = out.to_str().unwrap();
        assert!(out.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-") && out.ends_with("-01"), "{out}");
        assert_ne!(&out[36..52], "00f067aa0ba902b7", "our own span is the upstream's parent");
        let unsampled =
            TraceContext::continue_or_start(&with("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"), 1.0);
        assert!(!unsampled.sampled);
        // A later version: its first four fields.
        let v2 = with("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra");
        assert_eq!(TraceContext::continue_or_start(&v2, 0.0).trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn a_malformed_traceparent_starts_a_new_trace() {
        for bad in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            let ctx = TraceContext::continue_or_start(&with(bad), 1.0);
            assert_eq!(ctx.parent, None, "{bad}");
            assert_ne!(ctx.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736", "{bad}");
            assert!(ctx.sampled);
        }
        let none = TraceContext::continue_or_start(&HeaderMap::new(), 0.0);
        assert!(!none.sampled && none.parent.is_none());
    }

    #[test]
    fn spans_encode_as_otlp_json() {
        let ctx = TraceContext { trace_id: [1; 16], span_id: [2; 8], parent: Some([3; 8]), sampled: true };
        let now = SystemTime::now();
        let span = Span {
            trace_id: ctx.trace_id,
            span_id: ctx.span_id,
            parent: ctx.parent,
            name: "GET /api/".into(),
            kind: 2,
            start: now,
            end: now + Duration::from_millis(3),
            attributes: vec![("http.response.status_code", Attr::Int(200))],
            error: false,
        };
        let v: serde_json::Value = serde_json::from_str(&encode("claimsmith", &[span])).unwrap();
        let s = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(s["traceId"], "01010101010101010101010101010101");
        assert_eq!(s["spanId"], "0202020202020202");
        assert_eq!(s["parentSpanId"], "0303030303030303");
        let (a, b): (u128, u128) = (
            s["startTimeUnixNano"].as_str().unwrap().parse().unwrap(),
            s["endTimeUnixNano"].as_str().unwrap().parse().unwrap(),
        );
        assert_eq!(b - a, 3_000_000);
        assert_eq!(s["attributes"][0]["value"]["intValue"], "200");
        assert_eq!(v["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"], "claimsmith");
    }
}
