//! Named build contexts (`--build-context NAME=VALUE`, the `context:NAME`
//! frontend attributes) through both frontend paths: the embedded CLI
//! reads a named directory itself; through kilnd the client serves it in
//! its session (`context:NAME=local:NAME`, as buildx sends it) and kilnd
//! fetches its `.dockerignore` first, then its files with those patterns.

mod common;

use kiln_integration::{Harness, KilnOutput, Kilnd};

/// `kiln --addr <kilnd> build --progress plain ARGS`.
fn remote(h: &Harness, k: &Kilnd, ns: &str, args: &[&str]) -> KilnOutput {
    let addr = k.addr();
    let mut all = vec!["--addr", addr.as_str(), "build", "--progress", "plain"];
    all.extend_from_slice(args);
    h.kiln(ns, &all).expect("kiln runs")
}

/// The `deps` stage is replaced by a directory (with its own ignore
/// file), `alpine` by the local busybox image, and `tools` (read by
/// `RUN --mount=from=`) by a second directory.
const DF: &str = "FROM busybox AS deps\n\
RUN echo must not run > /from-stage\n\
FROM alpine\n\
COPY --from=deps / /deps/\n\
RUN --mount=from=tools,target=/t cat /t/tool.txt > /tool.txt\n\
CMD [\"sh\", \"-c\", \"ls -A /deps; cat /deps/a.txt /tool.txt /etc/base-release\"]\n";

#[tokio::test]
async fn named_contexts_replace_stages_images_and_sources_in_both_paths() {
    let ns = "named-ctx";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ctx = h.context(
        "named-main",
        &[
            ("Dockerfile", DF),
            // The main context's ignore file does not apply to the others.
            (".dockerignore", "a.txt\n"),
        ],
    );
    let deps = h.context(
        "named-deps",
        &[
            (".dockerignore", "*.log\n"),
            ("a.txt", "from the deps directory\n"),
            ("noise.log", "ignored\n"),
        ],
    );
    let tools = h.context("named-tools", &[("tool.txt", "tool\n")]);
    let deps_arg = format!("deps={}", deps.display());
    let tools_arg = format!("tools={}", tools.display());
    let c = ctx.to_str().expect("utf8");
    let want = ".dockerignore\na.txt\nfrom the deps directory\ntool\nbusybox test base\n";
    for (path, tag) in [("embedded", "nc:embedded"), ("kilnd", "nc:kilnd")] {
        let args = [
            "--build-context",
            deps_arg.as_str(),
            "--build-context",
            tools_arg.as_str(),
            "--build-context",
            "alpine=docker-image://busybox",
            "-t",
            tag,
            c,
        ];
        let out = if path == "embedded" {
            h.build(ns, &args)
        } else {
            remote(&h, &k, ns, &args)
        }
        .ok();
        assert!(
            !out.stderr.contains("must not run"),
            "{path}: the replaced stage ran:\n{}",
            out.stderr
        );
        let got = h.run_image(
            ns,
            &format!("docker.io/library/{tag}"),
            &format!("nc-{path}"),
            &[],
        );
        assert_eq!(got, want, "{path}");
    }
}

#[tokio::test]
async fn a_named_directory_must_exist_and_be_served() {
    let ns = "named-ctx-missing";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.context("named-missing", &[("Dockerfile", "FROM busybox\n")]);
    let c = ctx.to_str().expect("utf8");
    let out = h.build(ns, &["--build-context", "base=/nonexistent/dir", c]);
    assert!(!out.success, "{}", out.stdout);
    assert!(
        out.stderr.contains("build context base=/nonexistent/dir"),
        "{}",
        out.stderr
    );
}
