#![no_main]
//! cargo fuzz run h1_differential — see fuzz/src/lib.rs for the invariants.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| claimsmith_fuzz::h1_differential(data));
