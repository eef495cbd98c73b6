//! The Dockerfile conformance suite (`testdata/dockerfile/`, format in its
//! README.md): every case is built by the real `kiln` binary on a private
//! containerd and its observable result checked (the exact error text,
//! the output of a command run in the image, fields of the image config);
//! the cases that fail in the parser or converter alone also run
//! in-process; and every row of `FEATURES` must be covered by a case that
//! either works or fails as not supported.

use kiln_dockerfile::{parse, to_graph, BuildOptions};
use kiln_integration::cases::{load_cases, load_features, Case, ARM64_BASE};
use kiln_integration::Harness;
use std::collections::BTreeMap;
use std::sync::Mutex;

const NAMESPACE: &str = "dockerfile-conformance";

#[test]
fn every_feature_works_or_is_not_supported() {
    let cases = load_cases().expect("cases load");
    let features = load_features().expect("FEATURES loads");
    let rows: Vec<&str> = features.iter().map(|(r, _)| r.as_str()).collect();
    let mut problems = Vec::new();
    for case in &cases {
        for c in &case.covers {
            if !rows.contains(&c.as_str()) {
                problems.push(format!(
                    "{}: covers {c:?}, which is not a FEATURES row",
                    case.name
                ));
            }
        }
    }
    let mut open = Vec::new();
    for (row, known_open) in &features {
        let settled = cases
            .iter()
            .any(|c| c.covers.contains(row) && (c.works() || c.not_supported()));
        match (settled, known_open) {
            (true, true) => problems.push(format!(
                "FEATURES row {row:?} is settled by a case now: drop its \"? \" mark"
            )),
            (false, false) => problems.push(format!(
                "FEATURES row {row:?} has no case that works or fails as not supported"
            )),
            (false, true) => open.push(row.as_str()),
            (true, false) => {}
        }
    }
    eprintln!(
        "{} cases; {} FEATURES rows, {} without a case yet: {open:?}",
        cases.len(),
        features.len(),
        open.len()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The `--build-arg`/`--target` of a parser-only case as build options.
fn options(case: &Case) -> BuildOptions {
    let mut opts = BuildOptions::default();
    let mut args = case.build.iter();
    while let Some(a) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| panic!("{}: {a} needs a value", case.name));
        match a.as_str() {
            "--build-arg" => {
                let (k, v) = value.split_once('=').unwrap_or((value, ""));
                opts.build_args.insert(k.to_string(), v.to_string());
            }
            "--target" => opts.target = Some(value.clone()),
            other => panic!(
                "{}: parse_only cases take only --build-arg and --target, not {other}",
                case.name
            ),
        }
    }
    opts
}

#[test]
fn parser_only_cases_fail_in_the_frontend() {
    let cases = load_cases().expect("cases load");
    let mut failures = Vec::new();
    let mut ran = 0;
    for case in cases.iter().filter(|c| c.parse_only) {
        ran += 1;
        let want = case.expect.error.as_deref().unwrap_or_default();
        let src = std::fs::read_to_string(case.dockerfile()).expect("Dockerfile reads");
        let opts = options(case);
        let result = parse(&src, &opts.filename).and_then(|df| {
            let bases: BTreeMap<_, _> = df
                .base_images(&opts)?
                .into_iter()
                .map(|r| (r, Default::default()))
                .collect();
            to_graph(&df, &opts, &bases).map(|_| ())
        });
        match result {
            Ok(()) => failures.push(format!("{}: converted, expected {want:?}", case.name)),
            Err(e) if e.to_string().contains(want) => {}
            Err(e) => failures.push(format!("{}: got {e:?}, expected {want:?}", case.name)),
        }
    }
    eprintln!("{ran} parser-only cases");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Whether a build step started: plain progress names steps `#N [stage
/// i/n] ...`.
fn a_step_started(stderr: &str) -> Option<&str> {
    stderr.lines().find(|l| {
        l.split_once(' ').is_some_and(|(n, rest)| {
            n.len() > 1
                && n.starts_with('#')
                && n[1..].bytes().all(|b| b.is_ascii_digit())
                && rest.starts_with('[')
                && !rest.starts_with("[internal]")
        })
    })
}

/// The build check warnings `kiln build` printed after the build: the
/// ` - Rule: message (line N)` lines under ` N warning(s) found:`.
fn printed_warnings(stderr: &str) -> Vec<String> {
    let mut lines = stderr.lines().skip_while(|l| {
        !(l.starts_with(' ') && (l.ends_with(" warning found:") || l.ends_with(" warnings found:")))
    });
    let _ = lines.next();
    lines
        .map_while(|l| l.strip_prefix(" - "))
        .map(str::to_string)
        .collect()
}

/// Builds `case` and checks what it expects; `Err` says what differed.
fn run_case(h: &Harness, case: &Case) -> Result<(), String> {
    let image = format!("docker.io/conformance/{}:latest", case.name);
    let empty = h.state_dir().join("empty-context");
    std::fs::create_dir_all(&empty).map_err(|e| e.to_string())?;
    let context = case.context().unwrap_or(empty);
    let dockerfile = case.dockerfile();
    let mut args = vec![
        "build".to_string(),
        "--progress".into(),
        "plain".into(),
        "-t".into(),
        image.clone(),
        "-f".into(),
        dockerfile.to_string_lossy().into_owned(),
    ];
    args.extend(case.build.iter().cloned());
    args.push(context.to_string_lossy().into_owned());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // Relative paths in a case's arguments (`--secret id=x,src=file`)
    // name files of the case directory.
    let out = h
        .kiln_command(NAMESPACE)?
        .args(&args)
        .current_dir(&case.dir)
        .output()
        .map_err(|e| format!("run kiln: {e}"))?;
    let out = kiln_integration::KilnOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    if let Some(want) = &case.expect.error {
        if out.success {
            return Err(format!("built, expected the error {want:?}"));
        }
        if !out.stderr.contains(want.as_str()) {
            return Err(format!("expected the error {want:?}, got:\n{}", out.stderr));
        }
        if case.not_supported() || case.parse_only {
            if let Some(line) = a_step_started(&out.stderr) {
                return Err(format!(
                    "a step ran before the error ({line:?}); it must fail first"
                ));
            }
        }
        return Ok(());
    }
    if !out.success {
        return Err(format!("build failed:\n{}", out.stderr));
    }
    // A case that lists warnings lists them all: the checks must not
    // warn where BuildKit does not.
    if !case.expect.warnings.is_empty() {
        let mut printed = printed_warnings(&out.stderr);
        let mut want = case.expect.warnings.clone();
        printed.sort();
        want.sort();
        if printed != want {
            return Err(format!(
                "warnings {printed:?}, expected {want:?}, in:\n{}",
                out.stderr
            ));
        }
    }
    if let Some(cmd) = &case.expect.run {
        let id = format!("conformance-{}", case.name);
        let want = case.expect.stdout.as_deref().unwrap_or_default();
        let got = match &case.expect.run_platform {
            Some(p) => h.ctr(
                NAMESPACE,
                &["run", "--rm", "--platform", p, &image, &id, "sh", "-c", cmd],
            )?,
            None => h.try_run_image_expecting(NAMESPACE, &image, &id, &["sh", "-c", cmd], want)?,
        };
        if got != want {
            return Err(format!("`{cmd}` printed {got:?}, expected {want:?}"));
        }
    }
    if !case.expect.config.is_empty()
        || !case.expect.absent.is_empty()
        || !case.expect.present.is_empty()
    {
        let manifest = h.manifest(NAMESPACE, &image);
        let digest = manifest["config"]["digest"]
            .as_str()
            .ok_or("manifest has no config digest")?;
        let config: serde_json::Value =
            serde_json::from_str(&h.ctr(NAMESPACE, &["content", "get", digest])?)
                .map_err(|e| format!("config JSON: {e}"))?;
        for (ptr, want) in &case.expect.config {
            let got = config
                .pointer(ptr)
                .cloned()
                .unwrap_or(serde_json::Value::Null);
            if &got != want {
                return Err(format!("config {ptr} is {got}, expected {want}"));
            }
        }
        for ptr in &case.expect.absent {
            if let Some(got) = config.pointer(ptr).filter(|v| !v.is_null()) {
                return Err(format!("config {ptr} is {got}, expected it absent"));
            }
        }
        for ptr in &case.expect.present {
            if config.pointer(ptr).is_none_or(|v| v.is_null()) {
                return Err(format!("config {ptr} is absent, expected it present"));
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn cases_build_on_containerd() {
    let h = Harness::with_busybox(NAMESPACE).await;
    h.import_busybox_for(NAMESPACE, ARM64_BASE, "arm64")
        .await
        .expect("the arm64 busybox imports");
    let mut cases = load_cases().expect("cases load");
    // While working on one area: `KILN_CASES=heredoc-` builds only the cases
    // whose name starts with it, `KILN_CASES=a,b` those starting with either
    // (CI never sets it: every case runs).
    if let Ok(only) = std::env::var("KILN_CASES") {
        let prefixes: Vec<&str> = only.split(',').collect();
        cases.retain(|c| prefixes.iter().any(|p| c.name.starts_with(p)));
        eprintln!("KILN_CASES={only}: building only {} cases", cases.len());
    }
    assert!(!cases.is_empty(), "no cases under testdata/dockerfile");
    let failures = Mutex::new(Vec::new());
    let next = Mutex::new(cases.iter());
    // Two builds at a time: each is mostly process start and containerd
    // round trips, and the cases share one namespace (and cache).
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| {
                while let Some(case) = next.lock().ok().and_then(|mut it| it.next()) {
                    if let Err(e) = run_case(&h, case) {
                        if let Ok(mut f) = failures.lock() {
                            f.push(format!("{} ({}): {e}", case.name, case.dir.display()));
                        }
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_default();
    eprintln!("{} cases, {} failed", cases.len(), failures.len());
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
