#![no_main]
//! cargo fuzz run chunked — see fuzz/src/lib.rs for the invariants.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| claimsmith_fuzz::chunked(data));
