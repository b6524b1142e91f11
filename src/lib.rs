//! claimsmith: a token-enrichment reverse proxy.
//!
//! A request's story, module by module (docs/architecture.md): `server` accepts it,
//! the fast path (`h1`) or hyper reads it, the pipeline (`proxy`) routes it, [`verify`]
//! checks the caller's token, [`metadata`] finds the caller's app_metadata and
//! client_metadata through its cache, [`mint`] signs the internal token, and `proxy`
//! forwards it. `error` turns every failure into an answer; `admin` serves keys,
//! health and metrics; [`config`] is the file (docs/configuration.md); [`app`] builds
//! the state from it; [`demo`] is the whole loop on loopback.
//!
//! Modules are crate-private unless the binary, the tests, the benchmarks or the fuzz
//! targets need them.

#![forbid(unsafe_code)]

pub(crate) mod admin;
pub mod app;
pub(crate) mod clock;
pub mod config;
pub mod demo;
pub(crate) mod error;
pub(crate) mod h1;
pub mod host;
pub mod http_client;
pub mod keys;
pub mod log_writer;
pub mod metadata;
pub(crate) mod metrics;
pub mod mint;
pub(crate) mod proxy;
pub mod rules;
pub mod server;
pub(crate) mod store;
pub(crate) mod telemetry;
pub mod verify;
pub mod wire;

pub use app::{load_config, parse_config};
pub use config::Config;
pub use server::{Running, start};

/// Installs the process-wide crypto provider (aws-lc-rs) for rustls. Call once at
/// start; later calls are harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
