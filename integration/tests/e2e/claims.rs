//! Issue 10: builds of one step in separate processes run it once. The
//! step claims its cache key in containerd (`kiln_engine::claim`); the
//! other builds wait for its record, so every image holds the one run's
//! layer and a rebuild afterwards finds every step cached.

use crate::common;
use common::remote;

use kiln_integration::{step_printed, Harness, KilnOutput};

/// A step whose output differs on every run (a fresh UUID), slow enough
/// that every build reaches it while the first one runs it, and a step
/// after it whose key follows that output.
const DF: &str = "FROM busybox\nRUN sleep 1 && cat /proc/sys/kernel/random/uuid > /id && echo UNIQUE-RAN\nCOPY a /a\nRUN cat /id /a > /both && echo AFTER-RAN\n";

/// How many builds run at once.
const N: usize = 6;

/// The layer digests of image `name`.
fn layers(h: &Harness, ns: &str, name: &str) -> Vec<String> {
    h.manifest(ns, name)["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().expect("digest").to_string())
        .collect()
}

/// Runs `build(i)` for every i < N at once; every build must succeed.
fn at_once(build: impl Fn(usize) -> KilnOutput + Sync) -> Vec<KilnOutput> {
    let build = &build;
    std::thread::scope(|s| {
        let builds: Vec<_> = (0..N).map(|i| s.spawn(move || build(i).ok())).collect();
        builds
            .into_iter()
            .map(|b| b.join().expect("build thread"))
            .collect()
    })
}

/// Every image holds the same layers, the unique step ran in one build
/// only, and a rebuild runs nothing.
fn check(h: &Harness, ns: &str, outs: &[KilnOutput], rebuild: KilnOutput) {
    let ran = outs
        .iter()
        .filter(|o| step_printed(&o.stderr, "UNIQUE-RAN"))
        .count();
    let all: String = outs.iter().map(|o| o.stderr.as_str()).collect();
    assert_eq!(ran, 1, "the shared step ran in {ran} builds:\n{all}");
    let first = layers(h, ns, "docker.io/library/claim:0");
    assert_eq!(first.len(), 4, "busybox, RUN, COPY, RUN: {first:?}");
    for i in 1..N {
        assert_eq!(
            layers(h, ns, &format!("docker.io/library/claim:{i}")),
            first,
            "image {i} holds another run's layers"
        );
    }
    let rebuild = rebuild.ok();
    assert!(
        !step_printed(&rebuild.stderr, "UNIQUE-RAN") && !step_printed(&rebuild.stderr, "AFTER-RAN"),
        "a rebuild ran a step:\n{}",
        rebuild.stderr
    );
    assert_eq!(
        kiln_integration::cached_steps(&rebuild.stderr),
        3,
        "{}",
        rebuild.stderr
    );
    assert_eq!(
        layers(h, ns, "docker.io/library/claim:again"),
        first,
        "the rebuild's image is the same"
    );
    assert_eq!(h.leftovers(ns).expect("ctr"), Vec::<String>::new());
}

#[tokio::test]
async fn concurrent_kiln_processes_run_a_shared_step_once() {
    let ns = "claims";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.context("claims", &[("Dockerfile", DF), ("a", "a\n")]);
    let c = ctx.to_str().expect("utf8");
    let outs = at_once(|i| h.build(ns, &["-t", &format!("claim:{i}"), c]));
    let rebuild = h.build(ns, &["-t", "claim:again", c]);
    check(&h, ns, &outs, rebuild);
}

#[tokio::test]
async fn builds_through_two_kilnd_on_one_containerd_run_a_shared_step_once() {
    let ns = "claimsd";
    let h = Harness::with_busybox(ns).await;
    let daemons = [
        h.start_kilnd_named(ns, "claims-a")
            .await
            .expect("kilnd a starts"),
        h.start_kilnd_named(ns, "claims-b")
            .await
            .expect("kilnd b starts"),
    ];
    let ctx = h.context("claimsd", &[("Dockerfile", DF), ("a", "a\n")]);
    let c = ctx.to_str().expect("utf8");
    let outs = at_once(|i| remote(&h, &daemons[i % 2], ns, &["-t", &format!("claim:{i}"), c]));
    let rebuild = remote(&h, &daemons[1], ns, &["-t", "claim:again", c]);
    check(&h, ns, &outs, rebuild);
}
