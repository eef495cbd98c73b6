//! The `kiln` CLI built as part of this test package, so that
//! `cargo test --workspace` builds it before the end-to-end tests run (cargo
//! builds a package's binaries for its own integration tests only).

fn main() -> std::process::ExitCode {
    kiln::main()
}
