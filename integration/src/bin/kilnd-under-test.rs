//! `kilnd` built as part of this test package, so that
//! `cargo test --workspace` builds it before the end-to-end tests run.

fn main() -> std::process::ExitCode {
    kilnd::main()
}
