//! This machine's physical limits, measured in the same run as the
//! workloads so docs/PERFORMANCE.md can show them next to the targets:
//! disk write throughput (dd with fsync), SHA-256 (the sha2 crate kiln
//! uses), `gzip -6` and `zstd -3` on incompressible data, and a memory copy;
//! and the two costs a cold layer cannot avoid on this containerd: writing
//! random data (what W5's step does) and containerd receiving a blob into
//! its content store (what every engine's image export does).

use sha2::Digest;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// Incompressible bytes from a xorshift generator seeded with `seed`.
pub fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    // xorshift needs a non-zero state; `2n + 1` keeps distinct seeds
    // distinct (`seed | 1` made n and n + 1 give the same bytes).
    seed = (seed << 1) | 1;
    for chunk in buf.chunks_mut(8) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        chunk.copy_from_slice(&seed.to_le_bytes()[..chunk.len()]);
    }
    buf
}

fn mib_per_s(bytes: usize, secs: f64) -> String {
    format!(
        "{:.0} MiB/s",
        bytes as f64 / (1 << 20) as f64 / secs.max(1e-9)
    )
}

/// Runs `sh -c script` and returns its wall time in seconds, or None when
/// it fails (e.g. the tool is missing).
fn timed_sh(script: &str) -> Option<f64> {
    let start = Instant::now();
    let ok = Command::new("sh")
        .arg("-c")
        .arg(script)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then(|| start.elapsed().as_secs_f64())
}

/// `(limit, value)` rows, measured in `dir` (its files removed after):
/// `disk_mib` MiB written for the disk, `data_mib` MiB of random data for
/// the rest.
pub fn limits(dir: &Path, disk_mib: usize, data_mib: usize) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    let dd = dir.join("dd.bin");
    let disk = timed_sh(&format!(
        "dd if=/dev/zero of='{}' bs=1M count={disk_mib} conv=fsync",
        dd.display()
    ));
    let _ = std::fs::remove_file(&dd);
    rows.push((
        format!("disk write, dd {disk_mib} MiB conv=fsync"),
        disk.map_or("failed".into(), |s| mib_per_s(disk_mib << 20, s)),
    ));

    let data = random_bytes(data_mib << 20, 0x2545_f491_4f6c_dd1d);
    let start = Instant::now();
    let digest = sha2::Sha256::digest(&data);
    let sha = start.elapsed().as_secs_f64();
    std::hint::black_box(digest);
    rows.push((
        "sha256 (sha2 crate, one core)".into(),
        mib_per_s(data.len(), sha),
    ));

    let rand = dir.join("random.bin");
    if std::fs::write(&rand, &data).is_ok() {
        let r = rand.display();
        for (name, script) in [
            (
                "gzip -6 (the gzip binary, one core), random data",
                format!("gzip -6 -c '{r}' > /dev/null"),
            ),
            (
                "zstd -3 (the zstd binary, one core), random data",
                format!("zstd -3 -T1 -q -c '{r}' > /dev/null"),
            ),
        ] {
            let v = timed_sh(&script).map_or("not measured (tool missing)".into(), |s| {
                mib_per_s(data.len(), s)
            });
            rows.push((name.into(), v));
        }
    }
    let _ = std::fs::remove_file(&rand);

    let mut copy = vec![0u8; data.len()];
    let start = Instant::now();
    for _ in 0..4 {
        copy.copy_from_slice(std::hint::black_box(&data));
        std::hint::black_box(&mut copy);
    }
    let mc = start.elapsed().as_secs_f64();
    rows.push((
        "memory copy (one core)".into(),
        mib_per_s(4 * data.len(), mc),
    ));
    rows
}

/// CPU seconds (user + system) process `pid` has used so far.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The fields after the command name, which may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // /proc reports clock ticks in USER_HZ, which Linux fixes at 100.
    Some(ticks / 100.0)
}

/// The floor rows for a layer of `mib` MiB of random data, measured in
/// `dir` against the containerd at `socket` (process `containerd`) in
/// namespace `ns`: `dd` from /dev/urandom (W5's step, outside a
/// container), and `ctr content ingest` of those bytes (containerd's
/// `Content.Write`, which hashes and writes every byte; the same for every
/// engine), with the CPU time containerd spent on it.
pub fn layer_floor(
    dir: &Path,
    socket: &Path,
    containerd: Option<u32>,
    ns: &str,
    mib: usize,
) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    let file = dir.join("layer-floor.bin");
    let f = file.display();
    let dd = timed_sh(&format!(
        "dd if=/dev/urandom of='{f}' bs=1M count={mib} 2>/dev/null"
    ));
    rows.push((
        format!("dd {mib} MiB from /dev/urandom (W5's step)"),
        dd.map_or("failed".into(), |s| {
            format!("{:.2} s ({})", s, mib_per_s(mib << 20, s))
        }),
    ));
    let before = containerd.and_then(cpu_secs);
    let ingest = timed_sh(&format!(
        "ctr -a '{}' -n '{ns}' content ingest layer-floor < '{f}'",
        socket.display()
    ));
    let spent = match (before, containerd.and_then(cpu_secs)) {
        (Some(a), Some(b)) => format!(", containerd {:.2} s CPU", b - a),
        _ => String::new(),
    };
    rows.push((
        format!("containerd receiving {mib} MiB (`ctr content ingest`)"),
        ingest.map_or("failed".into(), |s| {
            format!("{:.2} s ({}{spent})", s, mib_per_s(mib << 20, s))
        }),
    ));
    let _ = std::fs::remove_file(&file);
    rows
}
