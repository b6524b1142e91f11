//! A small Prometheus registry: lock-free counters on the hot path, text rendering
//! on the admin listener.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Upper bounds of the request latency histogram, in seconds.
const REQUEST_BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// Upper bounds of the event-loop turn histogram, in seconds: a turn is microseconds
/// when the loop keeps up, milliseconds when connections queue behind work.
const TURN_BUCKETS: [f64; 12] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0];

/// A Prometheus histogram over fixed bounds: one relaxed increment per observation,
/// summed into cumulative buckets only when rendered.
pub(crate) struct Histogram {
    bounds: &'static [f64; 12],
    /// Per bucket, not cumulative.
    buckets: [AtomicU64; 12],
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    const fn new(bounds: &'static [f64; 12]) -> Histogram {
        Histogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; 12],
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = self.bounds.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.sum_micros.fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            cumulative += self.buckets[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {}", self.sum_micros.load(Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count {count}");
    }
}

/// One counter per (route, status), looked up by `&str` so the hot path clones nothing.
type RequestCounters = HashMap<Arc<str>, HashMap<u16, Arc<AtomicU64>>>;

/// Refusals by an authorization rule, by (route, rule).
type DeniedCounters = BTreeMap<(Arc<str>, Arc<str>), u64>;

/// Calls to one metadata source, by result.
#[derive(Default)]
pub struct SourceCounters {
    pub ok: AtomicU64,
    pub not_found: AtomicU64,
    pub error: AtomicU64,
}

/// Request counters, the latency histogram, per-source call counters and reload
/// results. One registry lives for the whole process: a reload hands it to the new
/// state, so counters do not restart.
pub struct Metrics {
    /// Copy-on-write: a request only loads it (no lock, no shared write); a new
    /// (route, status) pair copies the map once.
    requests: arc_swap::ArcSwap<RequestCounters>,
    /// The same for forward-auth checks (docs/forward-auth.md), rendered with
    /// `mode="forward_auth"`.
    checks: arc_swap::ArcSwap<RequestCounters>,
    /// `claimsmith_request_duration_seconds`.
    durations: Histogram,
    /// `claimsmith_event_loop_turn_seconds` ([`Metrics::turn`]).
    turns: Histogram,
    sources: RwLock<BTreeMap<String, Arc<SourceCounters>>>,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// `claimsmith_invalidations_total`, by [`Hook`] then [`Invalidation`].
    invalidations: [[AtomicU64; Invalidation::ALL.len()]; Hook::ALL.len()],
    /// Refusals by an authorization rule, by (route, rule). A refusal is no hot path,
    /// so a lock is fine here.
    denied: std::sync::Mutex<DeniedCounters>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            requests: Default::default(),
            checks: Default::default(),
            durations: Histogram::new(&REQUEST_BUCKETS),
            turns: Histogram::new(&TURN_BUCKETS),
            sources: Default::default(),
            reloads_ok: Default::default(),
            reloads_failed: Default::default(),
            invalidations: Default::default(),
            denied: Default::default(),
        }
    }
}

/// A push-invalidation hook (docs/operations.md, "Push invalidation").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// Auth0 Event Streams.
    Events,
    /// Auth0 Log Streams.
    Logs,
}

impl Hook {
    pub const ALL: [Hook; 2] = [Hook::Events, Hook::Logs];
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Events => "events",
            Hook::Logs => "logs",
        }
    }
}

/// What a hook did with one event or log entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    /// The cached value was replaced by the pushed one.
    Replaced,
    /// The cached value was dropped (or remembered as not existing).
    Evicted,
    /// Nothing to do: another event type, or a tenant no source has.
    Ignored,
    /// An event id applied in the last minutes, delivered again.
    Duplicate,
}

impl Invalidation {
    pub const ALL: [Invalidation; 4] =
        [Invalidation::Replaced, Invalidation::Evicted, Invalidation::Ignored, Invalidation::Duplicate];
    pub fn as_str(self) -> &'static str {
        match self {
            Invalidation::Replaced => "replaced",
            Invalidation::Evicted => "evicted",
            Invalidation::Ignored => "ignored",
            Invalidation::Duplicate => "duplicate",
        }
    }
}

impl Metrics {
    /// Counts one finished request.
    pub fn record(&self, route: &Arc<str>, status: u16, elapsed: Duration) {
        Self::count(&self.requests, route, status);
        self.observe(elapsed);
    }

    /// Counts one finished forward-auth check.
    pub fn record_check(&self, route: &Arc<str>, status: u16, elapsed: Duration) {
        Self::count(&self.checks, route, status);
        self.observe(elapsed);
    }

    fn count(counters: &arc_swap::ArcSwap<RequestCounters>, route: &Arc<str>, status: u16) {
        let counted = {
            let map = counters.load();
            map.get(&**route).and_then(|m| m.get(&status)).map(|c| c.fetch_add(1, Relaxed)).is_some()
        };
        if !counted {
            counters.rcu(|m| {
                let mut m = RequestCounters::clone(m);
                m.entry(route.clone()).or_default().entry(status).or_default();
                m
            });
            if let Some(c) = counters.load().get(&**route).and_then(|m| m.get(&status)) {
                c.fetch_add(1, Relaxed);
            }
        }
    }

    fn observe(&self, elapsed: Duration) {
        self.durations.observe(elapsed);
    }

    /// Counts one sample of a worker's event loop: how long the loop kept a task that
    /// was due (a timer, then a yield) waiting, which is how long a connection that
    /// just became ready waits before it is read (`server::watch_turns`).
    pub fn turn(&self, waited: Duration) {
        self.turns.observe(waited);
    }

    /// Counts one refusal by `rule` on `route` (`claimsmith_authz_denied_total`).
    pub fn denied(&self, route: &Arc<str>, rule: &Arc<str>) {
        let mut map = self.denied.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry((route.clone(), rule.clone())).or_default() += 1;
    }

    /// The call counters of the metadata source named `name` (created on first use).
    pub fn source(&self, name: &str) -> Arc<SourceCounters> {
        let mut map = self.sources.write().unwrap_or_else(|p| p.into_inner());
        map.entry(name.to_string()).or_default().clone()
    }

    /// `claimsmith_metadata_fetches_total{source,result}` for the sources in `names`.
    pub fn render_sources(&self, out: &mut String, names: &[&str]) {
        let map = self.sources.read().unwrap_or_else(|p| p.into_inner());
        let mut samples = Vec::new();
        for (name, c) in map.iter().filter(|(n, _)| names.contains(&n.as_str())) {
            let n = escape(name);
            samples.push((format!("source=\"{n}\",result=\"ok\""), c.ok.load(Relaxed)));
            samples.push((format!("source=\"{n}\",result=\"not_found\""), c.not_found.load(Relaxed)));
            samples.push((format!("source=\"{n}\",result=\"error\""), c.error.load(Relaxed)));
        }
        counter(out, "claimsmith_metadata_fetches_total", "Metadata source calls by source and result.", &samples);
    }

    /// Counts one event or log entry a hook handled.
    pub fn invalidated(&self, hook: Hook, action: Invalidation) {
        self.invalidations[hook as usize][action as usize].fetch_add(1, Relaxed);
    }

    /// `claimsmith_invalidations_total{hook,action}`, every pair (zeros included, so
    /// a rate over it exists before the first event).
    pub fn render_invalidations(&self, out: &mut String) {
        let mut samples = Vec::new();
        for hook in Hook::ALL {
            for action in Invalidation::ALL {
                samples.push((
                    format!("hook=\"{}\",action=\"{}\"", hook.as_str(), action.as_str()),
                    self.invalidations[hook as usize][action as usize].load(Relaxed),
                ));
            }
        }
        counter(out, "claimsmith_invalidations_total", "Pushed changes by hook and what was done.", &samples);
    }

    /// Writes the request metrics in Prometheus text format.
    pub fn render(&self, out: &mut String) {
        out.push_str(
            "# HELP claimsmith_requests_total Requests by route and status (proxied; forward-auth checks with mode=\"forward_auth\").\n",
        );
        out.push_str("# TYPE claimsmith_requests_total counter\n");
        for (counters, mode) in [(&self.requests, ""), (&self.checks, ",mode=\"forward_auth\"")] {
            let map = counters.load();
            let mut rows: Vec<_> =
                map.iter().flat_map(|(r, m)| m.iter().map(|(s, c)| (r.clone(), *s, c.load(Relaxed)))).collect();
            rows.sort();
            for (route, status, n) in rows {
                let route = escape(&route);
                let _ = writeln!(out, "claimsmith_requests_total{{route=\"{route}\",status=\"{status}\"{mode}}} {n}");
            }
        }
        self.durations.render(out, "claimsmith_request_duration_seconds", "Time from request to response head.");
        self.turns.render(
            out,
            "claimsmith_event_loop_turn_seconds",
            "How long a worker's event loop keeps a due task waiting (its timer's lateness plus one turn), sampled every 25 ms.",
        );
        let denied: Vec<(String, u64)> = {
            let map = self.denied.lock().unwrap_or_else(|p| p.into_inner());
            map.iter()
                .map(|((route, rule), n)| (format!("route=\"{}\",rule=\"{}\"", escape(route), escape(rule)), *n))
                .collect()
        };
        counter(
            out,
            "claimsmith_authz_denied_total",
            "Requests refused by an authorization rule, by route and rule.",
            &denied,
        );
    }
}

/// Escapes a label value.
pub fn escape(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Writes a counter family header and its samples.
pub fn counter(out: &mut String, name: &str, help: &str, samples: &[(String, u64)]) {
    family(out, name, help, "counter", samples);
}

/// Writes a gauge family header and its samples.
pub fn gauge<V: std::fmt::Display>(out: &mut String, name: &str, help: &str, samples: &[(String, V)]) {
    family(out, name, help, "gauge", samples);
}

fn family<V: std::fmt::Display>(out: &mut String, name: &str, help: &str, kind: &str, samples: &[(String, V)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {v}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    }
}
