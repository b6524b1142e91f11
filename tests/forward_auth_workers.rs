//! `tests/forward_auth.rs` with two worker threads: the forward-auth listener, too,
//! has a socket per worker (`server::start_with`).

#[path = "forward_auth.rs"]
mod suite;
