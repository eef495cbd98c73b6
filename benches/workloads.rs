//! kiln's benchmark workloads (issue 3), run with
//! `cargo bench -p kiln-integration --bench workloads` (root; it starts a
//! private containerd like the tests do).
//!
//! W1 cold 3-stage build (two stages each write 2,000 small files and a
//! 100 MB file, the last copies both); W2 no-op rebuild of W1; W3
//! `COPY . /app` of a 20,000-file, 400 MB context: cold, no-op, one file
//! changed; W4 four independent `RUN sleep 3` stages joined by a final
//! stage. Every figure is the median of `KILN_BENCH_RUNS` runs (default 3),
//! printed with a ratio against its baseline in the same run: W2 and W3's
//! rebuilds against their cold build, W4 against the 12 s its sleeps take
//! in sequence, W1 against a plain `tar | gzip` of the same bytes.
//! W5 runs kilnd and a step that prints 2 GB (`yes | head -c`), sampling
//! kilnd's VmRSS from /proc: its peak against kilnd's RSS when idle (the
//! step's output is clipped, so the peak should stay near idle).
//! `KILN_BENCH_ONLY=W5` (a comma-separated list) runs only those.

use kiln_integration::Harness;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn runs() -> usize {
    std::env::var("KILN_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
        .max(1)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn secs(d: Duration) -> String {
    format!("{:.2}s", d.as_secs_f64())
}

/// Runs one build and returns its wall time; panics on failure.
fn timed_build(h: &Harness, ns: &str, ctx: &Path, extra: &[&str]) -> Duration {
    let mut args = vec!["build", "--progress", "plain"];
    args.extend_from_slice(extra);
    let c = ctx.to_str().expect("utf8 path");
    args.push(c);
    let start = Instant::now();
    let out = h.kiln(ns, &args).expect("kiln runs");
    let took = start.elapsed();
    assert!(out.success, "build failed:\n{}", out.stderr);
    took
}

const W1: &str = r#"FROM busybox AS a
RUN mkdir /d && i=0; while [ $i -lt 2000 ]; do echo a$i > /d/f$i; i=$((i+1)); done && dd if=/dev/urandom of=/d/big bs=1M count=100 2>/dev/null
FROM busybox AS b
RUN mkdir /d && i=0; while [ $i -lt 2000 ]; do echo b$i > /d/f$i; i=$((i+1)); done && dd if=/dev/urandom of=/d/big bs=1M count=100 2>/dev/null
FROM busybox
COPY --from=a /d /a
COPY --from=b /d /b
"#;

const W4: &str = "FROM busybox AS s1\nRUN sleep 3 && echo 1 > /o\nFROM busybox AS s2\nRUN sleep 3 && echo 2 > /o\n\
FROM busybox AS s3\nRUN sleep 3 && echo 3 > /o\nFROM busybox AS s4\nRUN sleep 3 && echo 4 > /o\n\
FROM busybox\nCOPY --from=s1 /o /o1\nCOPY --from=s2 /o /o2\nCOPY --from=s3 /o /o3\nCOPY --from=s4 /o /o4\n";

fn write_context(dir: &Path, dockerfile: &str) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join("Dockerfile"), dockerfile).expect("write");
}

/// 20,000 files totalling 400 MB (20 KiB each) of incompressible data, in
/// 100 directories.
fn w3_context(dir: &Path) {
    write_context(dir, "FROM busybox\nCOPY . /app\n");
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; 20 * 1024];
    for d in 0..100 {
        let sub = dir.join(format!("d{d:03}"));
        std::fs::create_dir_all(&sub).expect("mkdir");
        for f in 0..200 {
            for chunk in buf.chunks_mut(8) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
            }
            std::fs::write(sub.join(format!("f{f:03}")), &buf).expect("write");
        }
    }
}

/// `tar -c dir | gzip -6` time: what a single-threaded exporter pays for
/// the same bytes.
fn tar_gzip(dir: &Path) -> Duration {
    let start = Instant::now();
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C '{}' -cf - . | gzip -6 > /dev/null",
            dir.display()
        ))
        .status()
        .expect("tar | gzip");
    assert!(status.success());
    start.elapsed()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let h = rt
        .block_on(Harness::start())
        .expect("private containerd starts");
    let n = runs();
    let work: PathBuf = h.state_dir().join("bench");
    println!(
        "kiln benchmarks: {n} runs each, medians; {} cores",
        std::thread::available_parallelism()
            .map(|p| p.get())
            .unwrap_or(1)
    );

    // KILN_BENCH_ONLY=W5 (or W1,W3,...) runs only those workloads.
    let only = std::env::var("KILN_BENCH_ONLY").ok();
    let want = |w: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|x| x.trim() == w))
    };
    if want("W1") || want("W2") {
        // W1 and W2: each run in a fresh namespace, so W1 is cold.
        let w1 = work.join("w1");
        write_context(&w1, W1);
        let (mut cold, mut noop) = (Vec::new(), Vec::new());
        for i in 0..n {
            let ns = format!("w1-{i}");
            rt.block_on(h.import_busybox(&ns, "docker.io/library/busybox:latest"))
                .expect("busybox");
            cold.push(timed_build(&h, &ns, &w1, &["-t", "w1"]));
            noop.push(timed_build(&h, &ns, &w1, &["-t", "w1"]));
        }
        let (w1_t, w2_t) = (median(cold), median(noop));
        // Baseline for W1: tar|gzip of a tree like the one W1 writes.
        let like = work.join("w1-like");
        std::fs::create_dir_all(&like).expect("mkdir");
        for s in ["a", "b"] {
            let d = like.join(s);
            std::fs::create_dir_all(&d).expect("mkdir");
            for i in 0..2000 {
                std::fs::write(d.join(format!("f{i}")), format!("{s}{i}\n")).expect("write");
            }
            let st = std::process::Command::new("dd")
                .args([
                    "if=/dev/urandom",
                    &format!("of={}", d.join("big").display()),
                    "bs=1M",
                    "count=100",
                ])
                .stderr(std::process::Stdio::null())
                .status()
                .expect("dd");
            assert!(st.success());
        }
        let tg = tar_gzip(&like);
        println!(
            "W1 cold 3-stage build           {:>8}   (tar|gzip of the same bytes: {}, ratio {:.2})",
            secs(w1_t),
            secs(tg),
            w1_t.as_secs_f64() / tg.as_secs_f64()
        );
        println!(
            "W2 no-op rebuild of W1          {:>8}   (ratio to W1 cold: {:.3})",
            secs(w2_t),
            w2_t.as_secs_f64() / w1_t.as_secs_f64()
        );
    }
    if want("W3") {
        // W3: cold, no-op, one file changed.
        let w3 = work.join("w3");
        w3_context(&w3);
        let (mut cold, mut noop, mut one) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..n {
            let ns = format!("w3-{i}");
            rt.block_on(h.import_busybox(&ns, "docker.io/library/busybox:latest"))
                .expect("busybox");
            cold.push(timed_build(&h, &ns, &w3, &["-t", "w3"]));
            noop.push(timed_build(&h, &ns, &w3, &["-t", "w3"]));
            std::fs::write(w3.join("d050/f100"), format!("changed {i}\n")).expect("write");
            one.push(timed_build(&h, &ns, &w3, &["-t", "w3"]));
        }
        let (c, z, o) = (median(cold), median(noop), median(one));
        println!("W3 COPY 20k files/400MB cold    {:>8}", secs(c));
        println!(
            "W3 no-op rebuild                {:>8}   (ratio to cold: {:.3})",
            secs(z),
            z.as_secs_f64() / c.as_secs_f64()
        );
        println!(
            "W3 one file changed             {:>8}   (ratio to cold: {:.3})",
            secs(o),
            o.as_secs_f64() / c.as_secs_f64()
        );
    }
    if want("W4") {
        // W4: four 3 s sleeps in parallel stages.
        let w4 = work.join("w4");
        write_context(&w4, W4);
        let mut t = Vec::new();
        for i in 0..n {
            let ns = format!("w4-{i}");
            rt.block_on(h.import_busybox(&ns, "docker.io/library/busybox:latest"))
                .expect("busybox");
            t.push(timed_build(&h, &ns, &w4, &["-t", "w4"]));
        }
        let w4_t = median(t);
        println!(
            "W4 4 x RUN sleep 3 in parallel  {:>8}   (ratio to 12 s in sequence: {:.2})",
            secs(w4_t),
            w4_t.as_secs_f64() / 12.0
        );
    }
    if want("W5") {
        // W5: kilnd's peak memory while a step prints 2 GB.
        let ns = "w5";
        rt.block_on(h.import_busybox(ns, "docker.io/library/busybox:latest"))
            .expect("busybox");
        let kilnd = rt.block_on(h.start_kilnd(ns)).expect("kilnd starts");
        let pid = kilnd.pid().expect("kilnd runs");
        let idle = rss_kib(pid).unwrap_or(0);
        let w5 = work.join("w5");
        write_context(&w5, "FROM busybox\nRUN yes | head -c 2000000000\n");
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let sampler = {
            let done = done.clone();
            std::thread::spawn(move || {
                let mut max = 0;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    max = max.max(rss_kib(pid).unwrap_or(0));
                    std::thread::sleep(Duration::from_millis(20));
                }
                max
            })
        };
        let addr = kilnd.addr();
        let start = Instant::now();
        let out = h
            .kiln(
                ns,
                &[
                    "--addr",
                    &addr,
                    "build",
                    "--progress",
                    "plain",
                    w5.to_str().expect("utf8 path"),
                ],
            )
            .expect("kiln runs");
        let took = start.elapsed();
        assert!(out.success, "W5 build failed:\n{}", out.stderr);
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let peak = sampler.join().expect("sampler");
        println!(
            "W5 kilnd peak RSS, step prints 2 GB {:>6} MiB   (idle {} MiB; build {})",
            peak / 1024,
            idle / 1024,
            secs(took)
        );
    }
}

/// VmRSS of `pid` in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}
