//! Arbitrary bytes through the Dockerfile parser and converter
//! (`kiln_dockerfile::testing::dockerfile_parse`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| kiln_dockerfile::testing::dockerfile_parse(data));
