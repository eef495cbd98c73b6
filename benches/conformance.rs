//! The Dockerfile conformance cases (`testdata/dockerfile/`) against a real
//! BuildKit, to check that their expectations are BuildKit's: run as root
//! with `buildkitd` and `buildctl` on PATH,
//! `cargo bench -p kiln-integration --bench conformance`. Like the
//! workloads benchmark it starts a private containerd; BuildKit's
//! containerd worker builds every case there (base images from the local
//! store) and the case's `run`/`config` expectations are checked on
//! BuildKit's image, its `error` against BuildKit's error output.
//!
//! It is not a test: CI has no BuildKit. It prints one line per case
//! (`agree`, `differ: …`, or `BuildKit builds it` for a case kiln rejects
//! as not supported) and, with `KILN_CONFORMANCE_RECORD=1`, writes
//! `checked = "buildkit <version>"` into every case BuildKit agreed with.
//! `KILN_CONFORMANCE_ONLY=prefix` runs the cases whose name starts so;
//! `KILN_BUILDKIT_VERSION` names the BuildKit when `buildctl --version`
//! cannot.

#[allow(dead_code)] // the workloads benchmark uses the rest of it
mod daemon;

use daemon::{on_path, Daemon, DaemonKind};
use kiln_integration::cases::{load_cases, Case};
use kiln_integration::Harness;
use std::path::Path;
use std::process::Command;

const NAMESPACE: &str = "conformance-buildkit";

/// What BuildKit did with a case.
enum Outcome {
    Agree,
    Differ(String),
    /// kiln rejects it as not supported; BuildKit built it, or got past
    /// its frontend and failed for want of a network or a file.
    BuildKitBuilds(Option<String>),
    /// The case's extra build arguments have no buildctl equivalent here.
    Skipped(String),
}

/// The case's `kiln build` arguments as dockerfile frontend options.
fn frontend_opts(case: &Case) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut args = case.build.iter();
    while let Some(a) = args.next() {
        let value = args.next().ok_or_else(|| format!("{a} has no value"))?;
        match a.as_str() {
            "--build-arg" => out.push(format!("build-arg:{value}")),
            "--target" => out.push(format!("target={value}")),
            "--platform" => out.push(format!("platform={value}")),
            "--secret" => out.push(format!("--secret {value}")),
            // buildx joins repeated flags into one list attribute.
            "--add-host" => list(&mut out, "add-hosts", value),
            "--ulimit" => list(&mut out, "ulimit", value),
            "--shm-size" => out.push(format!("shm-size={value}")),
            "--ssh" => out.push(format!("--ssh {value}")),
            // As buildx sends them: a directory is a session local of the
            // context's name, anything else goes to the frontend as is.
            "--build-context" => {
                let (name, v) = value
                    .split_once('=')
                    .ok_or_else(|| format!("--build-context {value}: no ="))?;
                if v.contains("://")
                    || v.contains(':') && !v.starts_with('.') && !v.starts_with('/')
                {
                    out.push(format!("context:{name}={v}"));
                } else {
                    out.push(format!("--local {name}={v}"));
                    out.push(format!("context:{name}=local:{name}"));
                }
            }
            other => return Err(format!("no buildctl equivalent for {other}")),
        }
    }
    Ok(out)
}

/// Appends `value` to the comma list of option `key` (one `--opt` each).
fn list(out: &mut Vec<String>, key: &str, value: &str) {
    let prefix = format!("{key}=");
    match out.iter_mut().find(|o| o.starts_with(&prefix)) {
        Some(o) => {
            o.push(',');
            o.push_str(value);
        }
        None => out.push(format!("{prefix}{value}")),
    }
}

fn check(h: &Harness, buildctl: &Path, addr: &str, case: &Case) -> Outcome {
    let opts = match frontend_opts(case) {
        Ok(o) => o,
        Err(e) => return Outcome::Skipped(e),
    };
    let image = format!("docker.io/bkconformance/{}:latest", case.name);
    let empty = h.state_dir().join("empty-context");
    let _ = std::fs::create_dir_all(&empty);
    let context = case.context().unwrap_or(empty);
    let mut cmd = Command::new(buildctl);
    cmd.args(["--addr", addr, "build", "--progress", "plain"])
        .args(["--frontend", "dockerfile.v0"])
        .arg("--local")
        .arg(format!("context={}", context.display()))
        .arg("--local")
        .arg(format!("dockerfile={}", case.dir.display()))
        .args(["--opt", "image-resolve-mode=local"])
        .args(["--output", &format!("type=image,name={image},unpack=true")]);
    for o in &opts {
        match o.split_once(' ') {
            Some((flag @ ("--secret" | "--ssh" | "--local"), spec)) => cmd.args([flag, spec]),
            _ => cmd.args(["--opt", o]),
        };
    }
    // Relative paths in the case's arguments name files of the case.
    cmd.current_dir(&case.dir);
    let out = match cmd.output() {
        Ok(o) => o,
        Err(e) => return Outcome::Differ(format!("buildctl: {e}")),
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    if let Some(want) = &case.expect.error {
        if out.status.success() {
            return if case.not_supported() {
                Outcome::BuildKitBuilds(None)
            } else {
                Outcome::Differ(format!("BuildKit built it; kiln expects {want:?}"))
            };
        }
        // kiln prefixes `Dockerfile:N: `; BuildKit words the location its
        // own way, so the message after the location is compared.
        let message = want.split_once(": ").map_or(want.as_str(), |(loc, rest)| {
            if loc.contains(':') {
                rest
            } else {
                want.as_str()
            }
        });
        if stderr.contains(message) {
            return Outcome::Agree;
        }
        let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
        let tail = tail.into_iter().rev().collect::<Vec<_>>().join(" | ");
        if case.not_supported() && !tail.contains("supported") {
            return Outcome::BuildKitBuilds(Some(tail));
        }
        return Outcome::Differ(format!("expected {message:?}; BuildKit said {tail:?}"));
    }
    if !out.status.success() {
        let tail: Vec<&str> = stderr.lines().rev().take(3).collect();
        return Outcome::Differ(format!(
            "BuildKit failed: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        ));
    }
    let mut differ = Vec::new();
    // BuildKit's plain progress prints each build check as
    // `#N WARN: Rule: message (line N)`; a case lists them all. Its plain
    // printer now and then drops a vertex's warnings (seen for
    // MaintainerDeprecated on a build of metadata instructions only): a
    // `differ` here is worth a second run before it is believed.
    if !case.expect.warnings.is_empty() {
        let mut got: Vec<&str> = stderr
            .lines()
            .filter_map(|l| l.split_once(" WARN: ").map(|(_, w)| w))
            .collect();
        got.sort_unstable();
        got.dedup();
        let mut want: Vec<&str> = case.expect.warnings.iter().map(String::as_str).collect();
        want.sort_unstable();
        if got != want {
            differ.push(format!("BuildKit warned {got:?}, kiln expects {want:?}"));
        }
    }
    if let Some(cmd) = &case.expect.run {
        let want = case.expect.stdout.as_deref().unwrap_or_default();
        match h.try_run_image(
            NAMESPACE,
            &image,
            &format!("bk-{}", case.name),
            &["sh", "-c", cmd],
        ) {
            Ok(got) if got == want => {}
            Ok(got) => differ.push(format!("`{cmd}` printed {got:?}, kiln expects {want:?}")),
            Err(e) => differ.push(e),
        }
    }
    if !case.expect.config.is_empty()
        || !case.expect.absent.is_empty()
        || !case.expect.present.is_empty()
    {
        let manifest = h.manifest(NAMESPACE, &image);
        let config = manifest["config"]["digest"]
            .as_str()
            .and_then(|d| h.ctr(NAMESPACE, &["content", "get", d]).ok())
            .and_then(|body| serde_json::from_str::<serde_json::Value>(&body).ok())
            .unwrap_or_default();
        for (ptr, want) in &case.expect.config {
            let got = config.pointer(ptr).cloned().unwrap_or_default();
            if &got != want {
                differ.push(format!("config {ptr} is {got}, kiln expects {want}"));
            }
        }
        for ptr in &case.expect.absent {
            if let Some(got) = config.pointer(ptr).filter(|v| !v.is_null()) {
                differ.push(format!("config {ptr} is {got}, kiln expects it absent"));
            }
        }
        for ptr in &case.expect.present {
            if config.pointer(ptr).is_none_or(|v| v.is_null()) {
                differ.push(format!("config {ptr} is absent, kiln expects it present"));
            }
        }
    }
    if differ.is_empty() {
        Outcome::Agree
    } else {
        Outcome::Differ(differ.join("; "))
    }
}

/// `buildctl --version`'s version and commit, e.g. `v0.32.0 73ed682…`;
/// `KILN_BUILDKIT_VERSION` names it instead (a build without version
/// ldflags says `v0.0.0+unknown`).
fn buildkit_version(buildctl: &Path) -> String {
    if let Ok(v) = std::env::var("KILN_BUILDKIT_VERSION") {
        return v;
    }
    let out = Command::new(buildctl).arg("--version").output();
    let text = out
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    // "buildctl github.com/moby/buildkit v0.x.y commit"
    let words: Vec<&str> = text.split_whitespace().collect();
    match words.as_slice() {
        [_, _, version, commit, ..] => format!("{version} {commit}"),
        _ => text.trim().to_string(),
    }
}

/// Sets `checked = "buildkit …"` in the case's case.toml.
fn record(case: &Case, version: &str) -> Result<(), String> {
    let file = case.dir.join("case.toml");
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let line = format!("checked = \"buildkit {version}\"");
    let new: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("checked = ") {
                line.clone()
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(&file, new.join("\n") + "\n").map_err(|e| format!("{}: {e}", file.display()))
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let buildctl = on_path("buildctl").ok_or("buildctl is not on PATH")?;
    on_path("buildkitd").ok_or("buildkitd is not on PATH")?;
    let version = buildkit_version(&buildctl);
    let only = std::env::var("KILN_CONFORMANCE_ONLY").unwrap_or_default();
    let write = std::env::var("KILN_CONFORMANCE_RECORD").is_ok_and(|v| v == "1");
    let h = Harness::start().await?;
    h.import_busybox(NAMESPACE, "docker.io/library/busybox:latest")
        .await?;
    let root = h.state_dir().join("buildkitd-root");
    let (d, _) = Daemon::start(&h, DaemonKind::Buildkitd, NAMESPACE, &root).await?;
    let cases = load_cases()?;
    let (mut agree, mut differ, mut builds, mut skipped) = (0, 0, 0, 0);
    println!("BuildKit {version}");
    for case in cases.iter().filter(|c| c.name.starts_with(&only)) {
        match check(&h, &buildctl, &d.addr(), case) {
            Outcome::Agree => {
                agree += 1;
                println!("agree          {}", case.name);
                if write {
                    record(case, &version)?;
                }
            }
            Outcome::Differ(why) => {
                differ += 1;
                println!("differ         {}: {why}", case.name);
            }
            Outcome::BuildKitBuilds(failed) => {
                builds += 1;
                match failed {
                    None => println!("BuildKit builds {} (kiln: not supported)", case.name),
                    Some(why) => println!(
                        "BuildKit takes  {} (kiln: not supported); it failed later here: {why}",
                        case.name
                    ),
                }
            }
            Outcome::Skipped(why) => {
                skipped += 1;
                println!("skipped        {}: {why}", case.name);
            }
        }
    }
    println!("{agree} agree, {differ} differ, {builds} not supported by kiln, {skipped} skipped");
    d.stop();
    Ok(())
}
