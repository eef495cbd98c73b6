//! Deep layer chains: an overlay of some 300 layers has a `lowerdir=` list
//! longer than the one page the kernel takes as mount data, which kiln's
//! own mounts (a step's file ops, a `COPY --from` view) and containerd's
//! (a `RUN` step's root, `ctr run`) shorten to paths relative to their
//! common parent. Past the 500 lower layers overlayfs can stack, a step
//! fails naming the count.

use kiln_integration::Harness;

/// `FROM busybox AS NAME` and `n` single-file `COPY` layers on it.
fn deep_stage(name: &str, n: usize) -> String {
    let mut df = format!("FROM busybox AS {name}\n");
    for i in 0..n {
        df.push_str(&format!("COPY f{i:03} /l/\n"));
    }
    df
}

/// A context with `df` as its Dockerfile and files `f000`.. (`n` of them).
fn deep_context(h: &Harness, name: &str, df: &str, n: usize) -> std::path::PathBuf {
    let mut files: Vec<(String, String)> = (0..n)
        .map(|i| (format!("f{i:03}"), format!("layer {i}\n")))
        .collect();
    files.push(("Dockerfile".into(), df.into()));
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_str()))
        .collect();
    h.context(name, &refs)
}

/// 300 layers on busybox: a `RUN` on them (containerd mounts the root), a
/// `COPY --from` of them (kiln mounts the view), and the image runs.
#[tokio::test]
async fn three_hundred_layers_run_copy_and_export() {
    let ns = "deep-layers";
    let h = Harness::with_busybox(ns).await;
    let n = 300;
    let mut df = deep_stage("deep", n);
    df.push_str("RUN ls /l | wc -l > /count && cat /l/f000 /l/f299 > /ends\n");
    df.push_str("FROM busybox\nCOPY --from=deep /count /ends /l/f150 /got/\n");
    let ctx = deep_context(&h, "deep-layers", &df, n);
    let c = ctx.to_str().expect("utf8");
    let out = h.build(ns, &["-t", "deep-copy", c]);
    assert!(out.success, "{}", out.stderr);
    let want = "300\nlayer 0\nlayer 299\nlayer 150\n";
    let shown = h.run_image_expecting(
        ns,
        "docker.io/library/deep-copy:latest",
        "deep-copy-run",
        &["cat", "/got/count", "/got/ends", "/got/f150"],
        want,
    );
    assert_eq!(shown, want);

    // The deep stage itself as an image: containerd mounts its 302 layers.
    let out = h.build(ns, &["--target", "deep", "-t", "deep", c]);
    assert!(out.success, "{}", out.stderr);
    let layers = h.manifest(ns, "docker.io/library/deep:latest")["layers"]
        .as_array()
        .expect("layers")
        .len();
    assert_eq!(layers, 1 + n + 1, "busybox, the copies and the RUN");
    let want = "300\n300\n";
    let shown = h.run_image_expecting(
        ns,
        "docker.io/library/deep:latest",
        "deep-run",
        &["sh", "-c", "ls /l | wc -l; cat /count"],
        want,
    );
    assert_eq!(shown, want);
}

/// Overlayfs's limit exactly: a `RUN` on a chain of 500 layers (busybox and
/// 499 copies) runs, and a `COPY` onto it makes a chain of 501 that cannot
/// be mounted: a `RUN` or a `COPY` on that fails naming the count and the
/// limit.
#[tokio::test]
async fn more_layers_than_overlayfs_stacks_fail_naming_the_count() {
    let ns = "deep-layers-over";
    let h = Harness::with_busybox(ns).await;
    let n = 499;
    let mut df = deep_stage("base", n);
    df.push_str("FROM base AS limit\nRUN ls /l | wc -l > /n\n");
    df.push_str(&format!("FROM base AS over\nCOPY f{n} /l/\n"));
    df.push_str("FROM over AS run\nRUN true\n");
    df.push_str("FROM over AS copy\nCOPY f000 /again\n");
    let ctx = deep_context(&h, "deep-layers-over", &df, n + 1);
    let c = ctx.to_str().expect("utf8");

    let out = h.build(ns, &["--target", "limit", "-t", "limit", c]);
    assert!(out.success, "{}", out.stderr);
    let layers = h.manifest(ns, "docker.io/library/limit:latest")["layers"]
        .as_array()
        .expect("layers")
        .len();
    assert_eq!(layers, 501, "busybox, the copies and the RUN");

    for (target, line) in [("run", n + 7), ("copy", n + 9)] {
        let out = h.build(ns, &["--target", target, c]);
        assert!(!out.success, "{target}: a 501-layer chain mounted");
        let error = out
            .stderr
            .lines()
            .find(|l| l.starts_with("ERROR: "))
            .unwrap_or_else(|| panic!("{target}: no error line in\n{}", out.stderr));
        assert!(
            error.contains(&format!("Dockerfile:{line}:"))
                && error.contains("an overlay of 501 layers")
                && error.contains("more than the 500 layers overlayfs can stack"),
            "{target}: {error}"
        );
    }
}
