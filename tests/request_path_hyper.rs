//! `tests/request_path.rs` over the other transport: hyper serves every connection
//! (`listen.fast_path = false`, set by the harness for a crate named `*_hyper`).

#[path = "request_path.rs"]
mod suite;
