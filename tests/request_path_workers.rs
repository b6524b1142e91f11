//! `tests/request_path.rs` with two worker threads, each with a runtime and a listening
//! socket of its own (`server::start_with`, docs/performance.md "Runtime"): the
//! harness starts two for a crate named `*_workers`.

#[path = "request_path.rs"]
mod suite;
