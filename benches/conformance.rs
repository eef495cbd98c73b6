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
//! `KILN_CONFORMANCE_ONLY=prefix[,prefix…]` runs the cases whose name
//! starts with one of the prefixes;
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

/// What buildctl is given for a case: frontend options (`--opt`), other
/// buildctl flags as `(flag, value)`, and attributes added to the image
/// output.
#[derive(Default)]
struct Invocation {
    opts: Vec<String>,
    flags: Vec<(&'static str, String)>,
    output: Vec<String>,
}

/// The case's `kiln build` arguments as buildctl receives them from
/// buildx: frontend options, plus what buildx does on the client (an
/// inline cache export for `BUILDKIT_INLINE_CACHE`, an OCI layout's tag
/// resolved to a digest and the layout passed as a session store).
fn invocation(case: &Case) -> Result<Invocation, String> {
    let mut inv = Invocation::default();
    let mut layouts = 0;
    let mut args = case.build.iter();
    while let Some(a) = args.next() {
        let value = args.next().ok_or_else(|| format!("{a} has no value"))?;
        match a.as_str() {
            "--build-arg" => {
                inv.opts.push(format!("build-arg:{value}"));
                // buildx: a true BUILDKIT_INLINE_CACHE adds --cache-to type=inline.
                if value
                    .strip_prefix("BUILDKIT_INLINE_CACHE=")
                    .is_some_and(go_bool_true)
                {
                    inv.flags.push(("--export-cache", "type=inline".into()));
                }
            }
            "--target" => inv.opts.push(format!("target={value}")),
            "--platform" => inv.opts.push(format!("platform={value}")),
            "--secret" => inv.flags.push(("--secret", value.clone())),
            // buildx joins repeated flags into one list attribute.
            "--add-host" => list(&mut inv.opts, "add-hosts", value),
            "--ulimit" => list(&mut inv.opts, "ulimit", value),
            "--shm-size" => inv.opts.push(format!("shm-size={value}")),
            "--ssh" => inv.flags.push(("--ssh", value.clone())),
            "--allow" => inv.flags.push(("--allow", value.clone())),
            // The image output's own attributes (rewrite-timestamp, …).
            "-o" | "--output" => {
                let mut attrs = value.split(',');
                if attrs.next() != Some("type=image") {
                    return Err(format!("{a} {value}: only type=image outputs are compared"));
                }
                inv.output.extend(attrs.map(str::to_string));
            }
            // As buildx sends them: a directory is a session local of the
            // context's name, anything else goes to the frontend as is.
            "--build-context" => {
                let (name, v) = value
                    .split_once('=')
                    .ok_or_else(|| format!("--build-context {value}: no ="))?;
                if v.starts_with("oci-layout://") {
                    let store = format!("kilnlayout{layouts}");
                    layouts += 1;
                    let (dir, reference) = oci_layout(case, v, &store)?;
                    inv.flags
                        .push(("--oci-layout", format!("{store}={}", dir.display())));
                    inv.opts.push(format!("context:{name}={reference}"));
                } else if v.contains("://")
                    || v.contains(':') && !v.starts_with('.') && !v.starts_with('/')
                {
                    inv.opts.push(format!("context:{name}={v}"));
                } else {
                    inv.flags.push(("--local", format!("{name}={v}")));
                    inv.opts.push(format!("context:{name}=local:{name}"));
                }
            }
            other => return Err(format!("no buildctl equivalent for {other}")),
        }
    }
    // A syntax naming BuildKit's own Dockerfile frontend would make
    // BuildKit pull that image (no registry here) and run it with
    // `cmdline` set; setting `cmdline` runs this BuildKit's built-in
    // frontend in its place, as that image would run.
    let syntax = case
        .build
        .iter()
        .find_map(|a| a.strip_prefix("BUILDKIT_SYNTAX="))
        .map(str::to_string)
        .or_else(|| {
            let src = std::fs::read_to_string(case.dockerfile()).ok()?;
            kiln_dockerfile::directives::detect_syntax(&src).map(|d| d.value)
        });
    if let Some(syntax) = syntax.filter(|s| kiln_dockerfile::directives::is_dockerfile_frontend(s))
    {
        inv.opts.push(format!("cmdline={syntax}"));
    }
    Ok(inv)
}

/// The image output: unpacked (so `ctr run` starts at once), unless the
/// case's attributes rewrite timestamps, which BuildKit refuses to
/// combine with unpacking (`ctr run` unpacks it then).
fn output(image: &str, attrs: &[String]) -> String {
    let mut out = vec![format!("type=image,name={image}")];
    if !attrs.iter().any(|a| a.starts_with("rewrite-timestamp=")) {
        out.push("unpack=true".into());
    }
    out.extend(attrs.iter().cloned());
    out.join(",")
}

/// Go's `strconv.ParseBool` true values.
fn go_bool_true(v: &str) -> bool {
    matches!(v, "1" | "t" | "T" | "TRUE" | "true" | "True")
}

/// An `oci-layout://PATH[:TAG][@DIGEST]` context as buildx passes it: the
/// directory (relative to the case) and `oci-layout://STORE[:TAG]@DIGEST`,
/// the tag (`latest` when neither is given) resolved in the layout's
/// index.json when there is no digest. An unresolvable tag is buildx's
/// error, raised before BuildKit sees the build: nothing to compare.
fn oci_layout(
    case: &Case,
    value: &str,
    store: &str,
) -> Result<(std::path::PathBuf, String), String> {
    let mut path = value.trim_start_matches("oci-layout://");
    let mut digest = None;
    if let Some((p, d)) = path.rsplit_once('@') {
        if d.starts_with("sha256:") {
            path = p;
            digest = Some(d.to_string());
        }
    }
    let mut tag = None;
    if let Some((p, t)) = path.rsplit_once(':') {
        if !t.is_empty() && !t.contains('/') {
            path = p;
            tag = Some(t.to_string());
        }
    }
    if tag.is_none() && digest.is_none() {
        tag = Some("latest".into());
    }
    let dir = case.dir.join(path);
    let digest = match digest {
        Some(d) => d,
        None => {
            let tag = tag.as_deref().unwrap_or_default();
            let index = dir.join("index.json");
            let text =
                std::fs::read_to_string(&index).map_err(|e| format!("{}: {e}", index.display()))?;
            let index: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", index.display()))?;
            let manifests = index["manifests"].as_array().cloned().unwrap_or_default();
            let named = |key: &str| {
                manifests
                    .iter()
                    .find(|m| m["annotations"][key].as_str() == Some(tag))
            };
            named("io.containerd.image.name")
                .or_else(|| named("org.opencontainers.image.ref.name"))
                .or_else(|| (manifests.len() == 1).then(|| &manifests[0]))
                .and_then(|m| m["digest"].as_str())
                .map(str::to_string)
                .ok_or_else(|| {
                    format!("{value}: buildx resolves the tag before BuildKit sees the build, and finds none")
                })?
        }
    };
    let reference = match tag {
        Some(t) => format!("oci-layout://{store}:{t}@{digest}"),
        None => format!("oci-layout://{store}@{digest}"),
    };
    Ok((dir, reference))
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
    let inv = match invocation(case) {
        Ok(i) => i,
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
        .arg("--output")
        .arg(output(&image, &inv.output));
    for o in &inv.opts {
        cmd.args(["--opt", o]);
    }
    for (flag, value) in &inv.flags {
        cmd.arg(flag).arg(value);
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
        // kiln prefixes `Dockerfile:N: `; BuildKit puts the location in
        // the error's source (the snippet buildctl prints), so the message
        // after the location is compared; but BuildKit's own words for
        // the line, `dockerfile parse error on line N: `, before it and not
        // in kiln's message, are a difference.
        let located = want
            .split_once(": ")
            .filter(|(loc, _)| loc.contains(':'))
            .map(|(loc, rest)| (loc.trim_start_matches(|c: char| c != ':'), rest));
        let message = located.map_or(want.as_str(), |(_, rest)| rest);
        let unsaid_prefix = located.is_some_and(|(line, rest)| {
            let line = line.trim_start_matches(':');
            stderr.contains(&format!("dockerfile parse error on line {line}: {rest}"))
        });
        if stderr.contains(message) && !unsaid_prefix {
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
        let id = format!("bk-{}", case.name);
        let ran = match &case.expect.run_platform {
            Some(p) => h.ctr(
                NAMESPACE,
                &["run", "--rm", "--platform", p, &image, &id, "sh", "-c", cmd],
            ),
            None => h.try_run_image(NAMESPACE, &image, &id, &["sh", "-c", cmd]),
        };
        match ran {
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
    let only: Vec<&str> = only.split(',').collect();
    let write = std::env::var("KILN_CONFORMANCE_RECORD").is_ok_and(|v| v == "1");
    let h = Harness::start().await?;
    h.import_busybox(NAMESPACE, "docker.io/library/busybox:latest")
        .await?;
    h.import_busybox_for(NAMESPACE, kiln_integration::cases::ARM64_BASE, "arm64")
        .await?;
    let root = h.state_dir().join("buildkitd-root");
    let (d, _) = Daemon::start(&h, DaemonKind::Buildkitd, NAMESPACE, &root).await?;
    let cases = load_cases()?;
    let (mut agree, mut differ, mut builds, mut skipped) = (0, 0, 0, 0);
    println!("BuildKit {version}");
    for case in cases
        .iter()
        .filter(|c| only.iter().any(|p| c.name.starts_with(p)))
    {
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
