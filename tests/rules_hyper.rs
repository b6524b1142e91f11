//! `tests/rules.rs` over the other transport: hyper serves every connection
//! (`listen.fast_path = false`, set by the harness for a crate named `*_hyper`).

#[path = "rules.rs"]
mod suite;
