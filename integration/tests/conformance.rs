//! The snapshotter conformance suite on containerd's overlayfs
//! snapshotter, through kiln's proxy: the same checks the in-memory fake
//! passes in kiln-snapshot's unit tests.

use kiln_integration::Harness;
use kiln_snapshot::containerd::LeaseId;
use kiln_snapshot::testing::snapshotter_conformance;
use std::collections::HashMap;
use std::time::Duration;

#[tokio::test]
async fn containerd_overlayfs_passes_the_snapshotter_conformance_suite() {
    let h = Harness::start().await.expect("private containerd starts");
    let ctrd = h.client("conformance").await.expect("connect");
    let lease = LeaseId::unique("conformance");
    ctrd.lease_create(
        &lease,
        "test",
        Some(Duration::from_secs(600)),
        HashMap::new(),
    )
    .await
    .expect("lease");
    let scratch = h.state_dir().join("conformance");
    std::fs::create_dir_all(&scratch).expect("mkdir");
    snapshotter_conformance(&ctrd, &lease, &scratch, "ctrd")
        .await
        .expect("containerd conforms");
    ctrd.lease_delete(&lease, true).await.expect("release");
}
