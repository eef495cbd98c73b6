//! Per-step cgroup limits (buildx's `--resource`, the frontend attributes
//! `memory`, `cpuquota`, ...): a RUN step sees them in its cgroup, through
//! the embedded CLI and through kilnd; as in BuildKit they are not part of
//! the cache key.

use kiln_integration::{buildctl_like_binary, Harness};
use std::process::Command;

/// The step's memory limit and CFS quota as the kernel shows them inside
/// it (cgroup v1 or v2).
const DOCKERFILE: &str = "FROM busybox\n\
RUN (cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cut -d' ' -f1 /sys/fs/cgroup/memory.max) > /mem && \
(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us 2>/dev/null || cut -d' ' -f1 /sys/fs/cgroup/cpu.max) > /quota\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_step_runs_under_the_resource_limits_given() {
    let ns = "resources";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.context("resources", &[("Dockerfile", DOCKERFILE)]);
    let ctx = ctx.to_str().expect("utf-8");
    let built = h.build(
        ns,
        &[
            "--resource",
            "memory=64m",
            "--resource",
            "cpu-period=100000",
            "--resource",
            "cpu-quota=50000",
            "-t",
            "resources:1",
            ctx,
        ],
    );
    assert!(built.success, "{}", built.stderr);
    let read = |image: &str, id: &str, file: &str, want: &str| {
        h.run_image_expecting(ns, image, id, &["cat", file], want)
    };
    assert_eq!(
        read(
            "docker.io/library/resources:1",
            "res-mem",
            "/mem",
            "67108864\n"
        ),
        "67108864\n"
    );
    assert_eq!(
        read(
            "docker.io/library/resources:1",
            "res-quota",
            "/quota",
            "50000\n"
        ),
        "50000\n"
    );

    // Not part of the cache key: other limits find the step cached.
    let again = h.build(ns, &["--resource", "memory=32m", "-t", "resources:2", ctx]);
    assert!(again.success, "{}", again.stderr);
    assert_eq!(
        kiln_integration::cached_steps(&again.stderr),
        1,
        "{}",
        again.stderr
    );

    // buildx's texts for what it cannot read, before anything runs.
    let bad = h.build(ns, &["--resource", "memory=lots", ctx]);
    assert!(!bad.success);
    assert!(
        bad.stderr
            .contains("invalid value \"lots\" for resource memory: invalid size: 'lots'"),
        "{}",
        bad.stderr
    );
    assert!(!bad.stderr.contains("#2 "), "a step ran: {}", bad.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kilnd_applies_the_frontends_resource_attributes() {
    let ns = "resources-kilnd";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ctx = h.context("resources-kilnd", &[("Dockerfile", DOCKERFILE)]);
    let run = |opts: &str, image: &str| {
        Command::new(buildctl_like_binary().expect("buildctl-like"))
            .arg(k.addr())
            .arg(&ctx)
            .arg(image)
            .env("BUILDCTL_LIKE_OPTS", opts)
            .output()
            .expect("buildctl-like runs")
    };
    // As buildx sends `--resource memory=48m`.
    let o = run("memory=50331648", "docker.io/library/resources:kilnd");
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(
        h.run_image_expecting(
            ns,
            "docker.io/library/resources:kilnd",
            "res-kilnd",
            &["cat", "/mem"],
            "50331648\n"
        ),
        "50331648\n"
    );
    // BuildKit's check and text for a bad value.
    let bad = run("memory=0", "docker.io/library/resources:bad");
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("invalid memory value: 0: must be > 0"),
        "{err}"
    );
}
