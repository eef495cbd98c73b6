//! The kubernetes driver retries a pod exec that failed for a transient
//! reason, as buildx does (5 tries, waits doubling from 0.5 s): the
//! stand-in API server refuses the first exec upgrades as a real one does
//! while it cannot reach a new node's kubelet (500, `error dialing
//! backend: remote error: tls: internal error`). Two refusals: the
//! bootstrap and a build still succeed, each retry announced. Refusals
//! without end: the bootstrap fails after 5 tries with buildx's message.

use kiln_integration::kubeapi::{KubeApi, Setup};
use kiln_integration::{Harness, KilnOutput};
use std::path::Path;

/// `kiln` with this harness's store and the stand-in's kubeconfig.
fn kiln(h: &Harness, ns: &str, kubeconfig: &Path, args: &[&str]) -> KilnOutput {
    h.kiln_command(ns)
        .expect("kiln command")
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .output()
        .expect("kiln runs")
        .into()
}

/// The stand-in refusing the first `refuse` exec upgrades, on `kilnd`,
/// and a kubeconfig for it.
async fn standin(
    h: &Harness,
    kilnd: String,
    refuse: usize,
    name: &str,
) -> (KubeApi, std::path::PathBuf) {
    let setup = Setup {
        refuse_execs: refuse,
        ..Setup::new([kilnd]).expect("stand-in setup")
    };
    let api = KubeApi::start(setup).await.expect("stand-in starts");
    let kc = h.state_dir().join(format!("kubeconfig-{name}"));
    std::fs::write(&kc, api.kubeconfig(name)).expect("kubeconfig");
    (api, kc)
}

const CREATE: [&str; 7] = [
    "builder",
    "create",
    "--driver",
    "kubernetes",
    "--bootstrap",
    "--driver-opt",
    "namespace=buildkit",
];

// The stand-in serves on this runtime while `kiln` runs blocking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_exec_failures_are_retried_with_backoff() {
    let ns = "kube-retry";
    let dns = "kube-retry-d";
    let h = Harness::with_busybox(ns).await;
    h.import_busybox(dns, "docker.io/library/busybox:latest")
        .await
        .expect("busybox for kilnd");
    let k = h.start_kilnd(dns).await.expect("kilnd starts");
    let (api, kc) = standin(&h, k.addr(), 2, "retry").await;
    let kiln = |args: &[&str]| kiln(&h, ns, &kc, args);

    let mut create = CREATE.to_vec();
    create.extend(["--name", "kube"]);
    let out = kiln(&create);
    assert!(out.success, "{}", out.stderr);
    assert_eq!(api.refused_execs(), 2);
    for (attempt, wait) in [(1, "500ms"), (2, "1s")] {
        let want = format!("(attempt {attempt}/5): ");
        let line = out
            .stderr
            .lines()
            .find(|l| l.contains(&want))
            .unwrap_or_else(|| panic!("no retry {attempt} in:\n{}", out.stderr));
        assert!(
            line.starts_with("WARNING: transient connection error to pod buildkit/")
                && line.contains("500 Internal Server Error")
                && line.ends_with(&format!("retrying in {wait}")),
            "{line}"
        );
    }
    assert!(!out.stderr.contains("(attempt 3/5)"), "{}", out.stderr);
    let execs = api.execs().len();
    assert!(execs >= 1, "the third try ran dial-stdio");

    // A build through the builder works as well.
    let out = kiln(&["builder", "use", "kube"]);
    assert!(out.success, "{}", out.stderr);
    let ctx = h.context(
        "retry",
        &[("Dockerfile", "FROM busybox\nRUN echo built > /f\n")],
    );
    let out = kiln(&[
        "build",
        "--progress",
        "plain",
        "-t",
        "retried",
        ctx.to_str().expect("utf8"),
    ]);
    assert!(out.success, "{}", out.stderr);
    assert!(h
        .ctr(dns, &["images", "ls", "-q"])
        .expect("ctr images ls")
        .contains("docker.io/library/retried:latest"));
    assert!(api.execs().len() > execs, "the build went through an exec");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_that_keeps_failing_fails_after_five_tries() {
    let ns = "kube-noretry";
    let h = Harness::start().await.expect("containerd");
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let (api, kc) = standin(&h, k.addr(), usize::MAX, "noretry").await;
    let mut create = CREATE.to_vec();
    create.extend(["--name", "down"]);
    let started = std::time::Instant::now();
    let out = kiln(&h, ns, &kc, &create);
    assert!(!out.success, "{}", out.stdout);
    assert_eq!(api.refused_execs(), 5, "{}", out.stderr);
    assert!(api.execs().is_empty(), "nothing ran dial-stdio");
    assert!(
        out.stderr.contains("failed to connect to pod buildkit/")
            && out.stderr.contains(" after 5 attempts: ")
            && out.stderr.contains("500 Internal Server Error"),
        "{}",
        out.stderr
    );
    assert_eq!(
        out.stderr
            .matches("WARNING: transient connection error")
            .count(),
        4,
        "{}",
        out.stderr
    );
    // 0.5 + 1 + 2 + 4 s of waiting.
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(7500),
        "{:?}",
        started.elapsed()
    );
}
