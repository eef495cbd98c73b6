//! The conformance suites on containerd itself, through kiln's proxy: the
//! same named cases the in-memory fake passes in kiln-snapshot's unit
//! tests, each in a fresh namespace of a private containerd (overlayfs).
//! Where the two disagree, containerd is right and the fake is fixed.

use kiln_integration::Harness;
use kiln_snapshot::testing::{
    applier_conformance, content_conformance, images_conformance, leases_conformance,
    snapshotter_conformance, ConformanceError, Namespaces, Report,
};
use std::sync::Arc;

async fn containerd(h: &Harness) -> Arc<dyn Namespaces> {
    Arc::new(h.client("conformance").await.expect("connect"))
}

fn check(r: Result<Report, ConformanceError>) {
    match r {
        Ok(report) => {
            assert!(!report.passed.is_empty(), "{} ran no cases", report.suite);
            eprintln!("{}: passed {:?}", report.suite, report.passed);
        }
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn containerd_passes_the_content_suite() {
    let h = Harness::start().await.expect("private containerd starts");
    check(content_conformance(containerd(&h).await).await);
}

#[tokio::test]
async fn containerd_passes_the_leases_suite() {
    let h = Harness::start().await.expect("private containerd starts");
    check(leases_conformance(containerd(&h).await).await);
}

#[tokio::test]
async fn containerd_passes_the_images_suite() {
    let h = Harness::start().await.expect("private containerd starts");
    check(images_conformance(containerd(&h).await).await);
}

#[tokio::test]
async fn containerd_overlayfs_passes_the_snapshotter_suite() {
    let h = Harness::start().await.expect("private containerd starts");
    let scratch = h.state_dir().join("conformance");
    check(snapshotter_conformance(containerd(&h).await, &scratch).await);
}

#[tokio::test]
async fn containerd_passes_the_applier_suite() {
    let h = Harness::start().await.expect("private containerd starts");
    let scratch = h.state_dir().join("conformance");
    check(applier_conformance(containerd(&h).await, &scratch).await);
}
