#![no_main]
//! cargo fuzz run verify_claims — see fuzz/src/lib.rs for the invariants.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| claimsmith_fuzz::verify_claims(data));
