//! The state every request's phases read: routes, verifier, metadata sources and
//! cache, minter, metrics. One value per configuration; `crate::app` builds it (the
//! only place that reads files for it), and a reload swaps in a new one while
//! requests in flight finish on the one they started with.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use crate::config::Config;
use crate::metadata::cache::MetadataCache;
use crate::metadata::{MetadataSource, NamedSource, StoredMetadata};
use crate::metrics::Metrics;
use crate::mint::Minter;
use crate::verify::Verifier;

use super::Route;

/// Everything a request needs, built once per configuration.
pub struct App {
    pub config: Arc<Config>,
    pub routes: Vec<Route>,
    pub verifier: Verifier,
    /// The metadata source of each issuer, by issuer index.
    pub sources: Vec<Option<Arc<dyn MetadataSource>>>,
    pub named_sources: Vec<NamedSource>,
    pub cache: MetadataCache,
    pub minter: Minter,
    /// Shared with the state a reload replaces, so counters survive reloads.
    pub metrics: Arc<Metrics>,
    /// `token.header` in canonical form, for hygiene.
    pub token_header_canonical: String,
    /// The shared empty metadata object (stable identity for token reuse).
    pub empty: Arc<StoredMetadata>,
    /// Set when shutdown starts: readiness answers 503.
    pub draining: AtomicBool,
    /// Event ids the push hooks applied lately (senders retry a delivery; docs/operations.md,
    /// "Push invalidation"). Shared with the state a reload replaces.
    pub seen_events: moka::sync::Cache<Box<str>, ()>,
    /// `[telemetry]`: trace context and span export; `None` costs the request path
    /// nothing but the check.
    pub telemetry: Option<crate::telemetry::Telemetry>,
    /// The span exporter, until `App::spawn_background` starts it.
    pub(crate) exporter: std::sync::Mutex<Option<crate::telemetry::Exporter>>,
}
