//! `kilnd`, the BuildKit-compatible daemon: not built yet (issue 4). It
//! refuses to start rather than pretend to serve.

fn main() -> std::process::ExitCode {
    eprintln!("kilnd: the BuildKit-compatible daemon is not implemented yet; use `kiln build` (embedded mode)");
    std::process::ExitCode::from(2)
}
