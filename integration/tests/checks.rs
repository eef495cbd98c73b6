//! Build checks through kilnd (issue 11): the Dockerfile frontend's lint
//! warnings reach the client as BuildKit's `VertexWarning`s (rule and
//! message, the Dockerfile as source info, the line as range), and `kiln
//! --addr` prints them as buildx does, like the embedded build. With
//! `# check=error=true` the build fails before any step.

use kiln_integration::Harness;

const DOCKERFILE: &str = "FROM busybox AS Build\nCMD echo hi\n";

#[tokio::test]
async fn warnings_reach_a_daemon_client_and_error_true_fails() {
    let ns = "checks";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let addr = k.addr();
    let ctx = h.context("checks", &[("Dockerfile", DOCKERFILE)]);
    let c = ctx.to_str().expect("utf8");
    let want = [
        " - StageNameCasing: Stage name 'Build' should be lowercase (line 1)",
        " - JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended behavior related to OS signals (line 2)",
    ];
    for (how, out) in [
        ("embedded", h.build(ns, &[c])),
        (
            "kilnd",
            h.kiln(ns, &["--addr", &addr, "build", "--progress", "plain", c])
                .expect("kiln runs"),
        ),
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
    let out = h
        .kiln(
            ns,
            &[
                "--addr",
                &addr,
                "build",
                "--progress",
                "plain",
                ctx.to_str().expect("utf8"),
            ],
        )
        .expect("kiln runs");
    assert!(!out.success, "check=error=true built");
    assert!(
        out.stderr
            .contains("lint violation found for rules: StageNameCasing, JSONArgsRecommended"),
        "{}",
        out.stderr
    );
}
