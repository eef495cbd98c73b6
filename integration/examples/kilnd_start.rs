//! Measures kilnd's start: the time from spawning it to its first answered
//! `ListWorkers`, and its resident memory once idle, on a private
//! containerd. With several binaries they are run alternately (A/B), so a
//! noisy machine affects each alike; prints the median of each.
//!
//! Usage: `cargo run --release -p kiln-integration --example kilnd_start --
//! [--runs N] [--] KILND [KILND...] [-- EXTRA KILND FLAGS]`.

use kiln_integration::Harness;
use kiln_proto::control::control_client::ControlClient;
use kiln_proto::control::ListWorkersRequest;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

type Error = Box<dyn std::error::Error>;

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Spawns `kilnd`, waits for its first answered ListWorkers; returns that
/// latency and the idle RSS one second later.
async fn once(
    h: &Harness,
    kilnd: &Path,
    dir: &Path,
    extra: &[String],
) -> Result<(Duration, u64), Error> {
    let socket = dir.join("kilnd.sock");
    let _ = std::fs::remove_file(&socket);
    let t0 = Instant::now();
    let mut child = Command::new(kilnd)
        .arg("--addr")
        .arg(format!("unix://{}", socket.display()))
        .arg("--root")
        .arg(dir.join("root"))
        .arg("--containerd-address")
        .arg(h.socket())
        .arg("--namespace")
        .arg("startup")
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let latency = loop {
        if t0.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            return Err("kilnd did not answer within 30 s".into());
        }
        if socket.exists() {
            if let Ok(ch) = containerd_client::connect(&socket).await {
                if ControlClient::new(ch)
                    .list_workers(ListWorkersRequest::default())
                    .await
                    .is_ok()
                {
                    break t0.elapsed();
                }
            }
        }
        tokio::time::sleep(Duration::from_micros(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss = rss_kib(child.id()).unwrap_or(0);
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    );
    child.wait()?;
    Ok((latency, rss))
}

fn median<T: Ord + Copy>(v: &mut [T]) -> T {
    v.sort();
    v[v.len() / 2]
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1).peekable();
    let mut runs = 7;
    let mut bins: Vec<PathBuf> = Vec::new();
    let mut extra: Vec<String> = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().ok_or("--runs needs a number")?.parse()?,
            "--" if bins.is_empty() => {}
            "--" => extra.extend(args.by_ref()),
            _ => bins.push(PathBuf::from(a)),
        }
    }
    if bins.is_empty() {
        return Err("usage: kilnd_start [--runs N] KILND... [-- FLAGS]".into());
    }
    let h = Harness::start_private().await?;
    let dir = tempfile::tempdir()?;
    let mut results: Vec<(Vec<Duration>, Vec<u64>)> = vec![Default::default(); bins.len()];
    // One unmeasured start each: page cache, containerd's first requests.
    for b in &bins {
        once(&h, b, dir.path(), &extra).await?;
    }
    for _ in 0..runs {
        for (b, r) in bins.iter().zip(results.iter_mut()) {
            let (lat, rss) = once(&h, b, dir.path(), &extra).await?;
            r.0.push(lat);
            r.1.push(rss);
        }
    }
    for (b, (mut lat, mut rss)) in bins.iter().zip(results) {
        println!(
            "{}: start -> ListWorkers median {:.1} ms (min {:.1}, max {:.1}); idle RSS median {:.1} MiB (min {:.1}); {runs} runs",
            b.display(),
            median(&mut lat).as_secs_f64() * 1e3,
            lat[0].as_secs_f64() * 1e3,
            lat[lat.len() - 1].as_secs_f64() * 1e3,
            median(&mut rss) as f64 / 1024.0,
            rss[0] as f64 / 1024.0,
        );
    }
    Ok(())
}
