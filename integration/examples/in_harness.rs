//! Runs commands against a private containerd, each in a fresh namespace
//! with busybox imported, and prints each command's wall time: for tracing
//! one build by hand (`KILN_LOG=debug`, `strace -f -r`, `perf record`)
//! with the setup the benchmark uses.
//!
//! Usage: `cargo run --release -p kiln-integration --example in_harness --
//! [--runs N] CMD [ARGS...]`. In CMD and ARGS, `{sock}` is containerd's
//! socket, `{ns}` the run's namespace, `{dir}` a scratch directory of the
//! harness (kept for the run).

use kiln_integration::Harness;
use std::process::Command;
use std::time::Instant;

type Error = Box<dyn std::error::Error>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut runs = 1;
    if args.first().map(String::as_str) == Some("--runs") {
        runs = args.get(1).ok_or("--runs needs a number")?.parse()?;
        args.drain(..2);
    }
    if args.is_empty() {
        return Err("usage: in_harness [--runs N] CMD [ARGS...]".into());
    }
    let h = Harness::start_private().await?;
    for run in 0..runs {
        let ns = format!("manual-{run}");
        h.import_busybox(&ns, "docker.io/library/busybox:latest")
            .await?;
        let dir = h.state_dir().to_path_buf();
        let subst = |s: &str| {
            s.replace("{sock}", &h.socket().display().to_string())
                .replace("{ns}", &ns)
                .replace("{dir}", &dir.display().to_string())
        };
        let argv: Vec<String> = args.iter().map(|a| subst(a)).collect();
        let t0 = Instant::now();
        let status = Command::new(&argv[0]).args(&argv[1..]).status()?;
        eprintln!("run {run}: {:.3} s, {status}", t0.elapsed().as_secs_f64());
    }
    Ok(())
}
