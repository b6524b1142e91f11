//! A small Prometheus registry: lock-free counters on the hot path, text rendering
//! on the admin listener.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Upper bounds of the latency histogram, in seconds.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// One counter per (route, status).
type RequestCounters = HashMap<(Arc<str>, u16), Arc<AtomicU64>>;

/// Request counters and the latency histogram.
#[derive(Default)]
pub struct Metrics {
    requests: RwLock<RequestCounters>,
    buckets: [AtomicU64; BUCKETS.len()],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Metrics {
    /// Counts one finished request.
    pub fn record(&self, route: &Arc<str>, status: u16, elapsed: Duration) {
        let counter = {
            let map = self.requests.read().unwrap_or_else(|p| p.into_inner());
            map.get(&(route.clone(), status)).cloned()
        };
        let counter = match counter {
            Some(c) => c,
            None => {
                let mut map = self.requests.write().unwrap_or_else(|p| p.into_inner());
                map.entry((route.clone(), status)).or_default().clone()
            }
        };
        counter.fetch_add(1, Relaxed);
        let secs = elapsed.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.sum_micros.fetch_add(elapsed.as_micros() as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    /// Writes the request metrics in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        out.push_str("# HELP claimsmith_requests_total Proxied requests by route and status.\n");
        out.push_str("# TYPE claimsmith_requests_total counter\n");
        let map = self.requests.read().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<_> = map.iter().map(|((r, s), c)| (r.clone(), *s, c.load(Relaxed))).collect();
        rows.sort();
        for (route, status, n) in rows {
            let _ = writeln!(out, "claimsmith_requests_total{{route=\"{}\",status=\"{status}\"}} {n}", escape(&route));
        }
        out.push_str("# HELP claimsmith_request_duration_seconds Time from request to response head.\n");
        out.push_str("# TYPE claimsmith_request_duration_seconds histogram\n");
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "claimsmith_request_duration_seconds_bucket{{le=\"{b}\"}} {}",
                self.buckets[i].load(Relaxed)
            );
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "claimsmith_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "claimsmith_request_duration_seconds_sum {}", self.sum_micros.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "claimsmith_request_duration_seconds_count {count}");
    }
}

/// Escapes a label value.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Writes a counter family header and one sample.
pub fn counter(out: &mut String, name: &str, help: &str, samples: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} counter");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}
