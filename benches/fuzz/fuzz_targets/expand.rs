//! Arbitrary words through the variable expander
//! (`kiln_dockerfile::testing::expand`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_dockerfile::testing::expand(data));
