//! `tests/tls_ws.rs` over the other transport: hyper serves every connection
//! (`listen.fast_path = false`, set by the harness for a crate named `*_hyper`).

#[path = "tls_ws.rs"]
mod suite;
