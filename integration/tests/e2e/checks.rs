//! Build checks through kilnd (issue 11): the Dockerfile frontend's lint
//! warnings reach the client as BuildKit's `VertexWarning`s (rule and
//! message, the Dockerfile as source info, the line as range), and `kiln
//! --addr` prints them as buildx does, like the embedded build. With
//! `# check=error=true` the build fails before any step.

use crate::common;

use common::remote;
use kiln_integration::Harness;

const DOCKERFILE: &str = "FROM busybox AS Build\nCMD echo hi\n";

#[tokio::test]
async fn warnings_reach_a_daemon_client_and_error_true_fails() {
    let ns = "checks";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ctx = h.context("checks", &[("Dockerfile", DOCKERFILE)]);
    let c = ctx.to_str().expect("utf8");
    let want = [
        " - StageNameCasing: Stage name 'Build' should be lowercase (line 1)",
        " - JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended behavior related to OS signals (line 2)",
    ];
    for (how, out) in [
        ("embedded", h.build(ns, &[c])),
        ("kilnd", remote(&h, &k, ns, &[c])),
    ] {
        let out = out.ok();
        assert!(
            out.stderr.contains(" 2 warnings found:"),
            "{how}: {}",
            out.stderr
        );
        for w in want {
            assert!(
                out.stderr.lines().any(|l| l == w),
                "{how}: no {w:?} in\n{}",
                out.stderr
            );
        }
    }

    let strict = format!("# check=error=true\n{DOCKERFILE}");
    let ctx = h.context("checks-strict", &[("Dockerfile", strict.as_str())]);
    let out = remote(&h, &k, ns, &[ctx.to_str().expect("utf8")]);
    assert!(!out.success, "check=error=true built");
    assert!(
        out.stderr
            .contains("lint violation found for rules: StageNameCasing, JSONArgsRecommended"),
        "{}",
        out.stderr
    );
}

/// `kiln build --check` (BuildKit's lint request, embedded): every stage
/// is checked, the target's or not, nothing is built, the result is
/// printed as buildx prints it, and the status is 1 when anything was
/// found. Through kilnd, `kiln --addr` asks it as buildx does (the lint
/// request over the gateway) and prints the answer as the embedded one.
#[tokio::test]
async fn check_lints_every_stage_without_building() {
    let ns = "checks-only";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let addr = k.addr();
    let src = "FROM busybox AS Build\nENV A=$NOPE\nFROM busybox\nLABEL ok=1\n";
    let ctx = h.context("check-only", &[("Dockerfile", src)]);
    let c = ctx.to_str().expect("utf8");
    let out = h
        .kiln(ns, &["build", "--check", "-t", "checked:latest", c])
        .expect("kiln runs");
    assert!(!out.success, "warnings must fail --check:\n{}", out.stdout);
    assert!(
        out.stdout
            .starts_with("Check complete, 2 warnings have been found!\n"),
        "{}",
        out.stdout
    );
    for w in [
        "\nWARNING: StageNameCasing - https://docs.docker.com/go/dockerfile/rule/stage-name-casing/\nStage name 'Build' should be lowercase\nDockerfile:1\n",
        // Stage `Build` is not the target's: a build would not check it.
        "\nWARNING: UndefinedVar - https://docs.docker.com/go/dockerfile/rule/undefined-var/\nUsage of undefined variable '$NOPE'\nDockerfile:2\n",
    ] {
        assert!(out.stdout.contains(w), "no {w:?} in\n{}", out.stdout);
    }
    let images = h.ctr(ns, &["images", "ls", "-q"]).expect("ctr images");
    assert!(!images.contains("checked"), "--check built: {images}");

    // The same file built: the stage that is not needed is not checked.
    let built = h.build(ns, &[c]).ok();
    assert!(
        built.stderr.contains(" 1 warning found:"),
        "{}",
        built.stderr
    );

    let clean = h.context(
        "check-clean",
        &[("Dockerfile", "FROM busybox\nLABEL ok=1\n")],
    );
    let out = h
        .kiln(
            ns,
            &["build", "--call", "check", clean.to_str().expect("utf8")],
        )
        .expect("kiln runs");
    assert!(out.success, "{}{}", out.stdout, out.stderr);
    assert_eq!(out.stdout, "Check complete, no warnings found.\n");

    // Through kilnd: the same text and status, and nothing built.
    let remote = remote(&h, &k, ns, &["--check", "-t", "checked-remote:latest", c]);
    assert!(
        !remote.success,
        "warnings must fail --check:\n{}",
        remote.stdout
    );
    assert_eq!(remote.stdout, out_embedded_check(&h, ns, c));
    let images = h.ctr(ns, &["images", "ls", "-q"]).expect("ctr images");
    assert!(!images.contains("checked"), "--check built: {images}");
    let remote = h
        .kiln(
            ns,
            &[
                "--addr",
                &addr,
                "build",
                "--call=check",
                clean.to_str().expect("utf8"),
            ],
        )
        .expect("kiln runs");
    assert!(remote.success, "{}{}", remote.stdout, remote.stderr);
    assert_eq!(remote.stdout, "Check complete, no warnings found.\n");

    // A Dockerfile the checks cannot convert: its error and line, printed
    // alike, and the status is 1; with the checks BuildKit's instruction
    // parser ran before it failed (the stage name's casing of line 1).
    let broken = h.context(
        "check-broken",
        &[("Dockerfile", "FROM busybox AS Build\nFOO bar\n")],
    );
    let b = broken.to_str().expect("utf8");
    let embedded = h.kiln(ns, &["build", "--check", b]).expect("kiln runs");
    let remote = h
        .kiln(ns, &["--addr", &addr, "build", "--check", b])
        .expect("kiln runs");
    assert!(!embedded.success && !remote.success);
    // buildx's words and streams, checked against buildx v0.36 with
    // buildkitd 73ed6825c: the warnings on stdout, the error on stderr,
    // its line in the snippet, not in the message.
    assert!(
        embedded.stderr.starts_with(
            "ERROR: dockerfile parse error on line 2: unknown instruction: FOO (did you mean FROM?)\nDockerfile:2\n"
        ) && embedded.stderr.contains(" 2 | >>> FOO bar\n"),
        "{}",
        embedded.stderr
    );
    // kilnd's client shows the request's progress first, as buildx.
    assert!(
        remote.stderr.ends_with(&embedded.stderr),
        "{}",
        remote.stderr
    );
    assert!(
        embedded
            .stdout
            .starts_with("Check complete, 1 warning has been found!\n")
            && embedded
                .stdout
                .contains("\nStage name 'Build' should be lowercase\nDockerfile:1\n"),
        "{}",
        embedded.stdout
    );
    assert_eq!(remote.stdout, embedded.stdout);
}

/// `--metadata-file` with `--call=check|outline|targets`: as buildx
/// (commands/build.go writes the response of any call), the answer's
/// metadata, `result.json` as JSON; buildx v0.36 against buildkitd
/// 73ed6825c wrote `result.json`, `result.txt`, `version` and, for a
/// check, `result.statuscode`, even when the check fails. Embedded and
/// through kilnd alike.
#[tokio::test]
async fn a_call_writes_its_answer_to_the_metadata_file() {
    let ns = "checks-metadata";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let addr = k.addr();
    let src = "FROM busybox AS Build\nENV A=$NOPE\nFROM busybox\nLABEL ok=1\n";
    let ctx = h.context("check-md", &[("Dockerfile", src)]);
    let c = ctx.to_str().expect("utf8");
    let dir = tempfile::tempdir().expect("dir");
    for call in ["check", "outline", "targets"] {
        let mut files = Vec::new();
        for remote in [false, true] {
            let md = dir.path().join(format!("{call}-{remote}.json"));
            let m = md.to_str().expect("utf8");
            let flag = format!("--call={call}");
            let mut args = Vec::new();
            if remote {
                args.extend(["--addr", addr.as_str()]);
            }
            args.extend(["build", flag.as_str(), "--metadata-file", m, c]);
            let out = h.kiln(ns, &args).expect("kiln runs");
            assert_eq!(
                out.success,
                call != "check",
                "{call} remote={remote}: {}{}",
                out.stdout,
                out.stderr
            );
            let written = std::fs::read(&md)
                .unwrap_or_else(|e| panic!("{call} remote={remote}: no metadata file: {e}"));
            let v: serde_json::Value = serde_json::from_slice(&written).expect("json");
            let mut keys: Vec<&str> = v
                .as_object()
                .expect("object")
                .keys()
                .map(String::as_str)
                .collect();
            keys.sort();
            let mut want = vec!["result.json", "result.txt", "version"];
            if call == "check" {
                want.insert(1, "result.statuscode");
                assert_eq!(v["result.statuscode"], "1", "{v}");
                let txt = v["result.txt"].as_str().unwrap_or_default();
                assert!(txt.contains("   1 | >>> FROM busybox AS Build\n"), "{v}");
            }
            assert_eq!(keys, want, "{call} remote={remote}: {v}");
            assert!(v["result.json"].is_object(), "{call} remote={remote}: {v}");
            assert_eq!(v["version"], "1.0.0");
            files.push(v);
        }
        assert_eq!(files[0], files[1], "{call}: embedded and through kilnd");
    }
}

/// What embedded `kiln build --check CONTEXT` prints.
fn out_embedded_check(h: &Harness, ns: &str, c: &str) -> String {
    h.kiln(ns, &["build", "--check", c])
        .expect("kiln runs")
        .stdout
}

/// The lint request through kilnd's gateway, as buildx `--check` sends it
/// (`requestid=frontend.lint`): the answer is BuildKit's lint result as
/// metadata (`result.json`, `result.statuscode`), nothing is built, and
/// every stage is checked.
#[tokio::test]
async fn the_lint_request_through_the_gateway() {
    let ns = "checks-gateway";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let src = "FROM busybox AS Build\nENV A=$NOPE\nFROM busybox\nLABEL ok=1\n";
    let ctx = h.context("check-gateway", &[("Dockerfile", src)]);
    let answer = common::subrequest(&k.addr(), &ctx, "frontend.lint", "");
    let value = |key: &str| answer.value(key);
    assert_eq!(value("result.statuscode").trim(), "1");
    let json: serde_json::Value =
        serde_json::from_str(&value("result.json")).expect("result.json is JSON");
    let warnings: Vec<(String, String, i64)> = json["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .map(|w| {
            (
                w["ruleName"].as_str().unwrap_or_default().to_string(),
                w["detail"].as_str().unwrap_or_default().to_string(),
                w["location"]["ranges"][0]["start"]["line"]
                    .as_i64()
                    .unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        warnings,
        [
            (
                "StageNameCasing".to_string(),
                "Stage name 'Build' should be lowercase".to_string(),
                1
            ),
            (
                "UndefinedVar".to_string(),
                "Usage of undefined variable '$NOPE'".to_string(),
                2
            ),
        ]
    );
    assert_eq!(json["sources"][0]["filename"], "Dockerfile");
    assert!(json.get("buildError").is_none(), "{json}");
    // Each warning with its rule's description, and `result.txt` with the
    // source snippet of each, as buildkitd 73ed6825c answers.
    assert_eq!(
        json["warnings"][0]["description"],
        "Stage names should be lowercase"
    );
    assert_eq!(
        // (the helper ends each value with a newline)
        value("result.txt").strip_suffix('\n').unwrap_or_default(),
        "\nWARNING: StageNameCasing - https://docs.docker.com/go/dockerfile/rule/stage-name-casing/\n\
         Stage name 'Build' should be lowercase\n\
         Dockerfile:1\n\
         --------------------\n   \
         1 | >>> FROM busybox AS Build\n   \
         2 |     ENV A=$NOPE\n   \
         3 |     FROM busybox\n\
         --------------------\n\
         \nWARNING: UndefinedVar - https://docs.docker.com/go/dockerfile/rule/undefined-var/\n\
         Usage of undefined variable '$NOPE'\n\
         Dockerfile:2\n\
         --------------------\n   \
         1 |     FROM busybox AS Build\n   \
         2 | >>> ENV A=$NOPE\n   \
         3 |     FROM busybox\n   \
         4 |     LABEL ok=1\n\
         --------------------\n"
    );
}

/// A lint request whose conversion fails answers the warnings found
/// before the failure beside it (`buildError`), as BuildKit's does (buildx
/// prints "Check complete, N warnings have been found!" above the error);
/// so does the embedded check.
#[tokio::test]
async fn a_failed_check_keeps_the_warnings_found_before_it() {
    let ns = "checks-failed";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let src = "FROM busybox as Base\nARG X\nCMD echo hi\nFROM $MISSING_ARG\n";
    let ctx = h.context("check-failed", &[("Dockerfile", src)]);
    let answer = common::subrequest(&k.addr(), &ctx, "frontend.lint", "");
    let json: serde_json::Value =
        serde_json::from_str(&answer.value("result.json")).expect("result.json is JSON");
    let rules: Vec<&str> = json["warnings"]
        .as_array()
        .expect("warnings")
        .iter()
        .map(|w| w["ruleName"].as_str().unwrap_or_default())
        .collect();
    // BuildKit 73ed6825c's answer for this file, in its order.
    assert_eq!(
        rules,
        [
            "StageNameCasing",
            "FromAsCasing",
            "InvalidDefaultArgInFrom",
            "UndefinedArgInFrom"
        ],
        "{json}"
    );
    assert_eq!(
        json["buildError"]["message"],
        "base name ($MISSING_ARG) should not be blank"
    );
    let out = out_embedded_check(&h, ns, ctx.to_str().expect("utf8"));
    for rule in rules {
        assert!(out.contains(&format!("WARNING: {rule}")), "{out}");
    }
}
