//! The git commit for kilnd's version line, by the same rule as kiln's.
include!("../cli/build.rs");
