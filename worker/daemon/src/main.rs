//! The `kilnd` binary; everything is in the library.

fn main() -> std::process::ExitCode {
    kilnd::main()
}
