//! claimsmith: a token-enrichment reverse proxy.
//!
//! A request's story, module by module: [`server`] accepts it, [`proxy`] normalises
//! and routes it, [`verify`] checks the caller's token, [`metadata`] finds the
//! caller's app_metadata and client_metadata through its cache, [`mint`] signs the
//! internal token, and [`proxy`] forwards it. [`error`] turns every failure into an
//! answer; [`admin`] serves keys, health and metrics; [`config`] is the contract of
//! docs/configuration.md; [`demo`] is the whole loop on loopback.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod clock;
pub mod config;
pub mod demo;
pub mod error;
pub mod h1;
pub mod http_client;
pub mod keys;
pub mod metadata;
pub mod metrics;
pub mod mint;
pub mod proxy;
pub mod server;
pub mod store;
pub mod verify;
pub mod wire;

pub use config::Config;
pub use server::{Running, start};

/// Installs the process-wide crypto provider (aws-lc-rs) for rustls. Call once at
/// start; later calls are harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
