//! Test doubles and conformance suites (feature `testing`).
//!
//! [`MemContainerd`] is an in-memory containerd behind every trait of
//! [`crate::services`]: content and images per namespace, leases, one
//! snapshotter whose snapshots are plain directories handed out as bind
//! mounts, the diff service's Apply, and containerd's garbage collection
//! over all of them (a fake that ignores leases is not a fake of
//! containerd). The engine's unit tests run on it without root.
//!
//! The conformance suites ([`content_conformance`], [`leases_conformance`],
//! [`images_conformance`], [`snapshotter_conformance`],
//! [`applier_conformance`]) are lists of named cases, each run in a fresh
//! namespace of a [`Namespaces`] implementation. They run on the fake in
//! this crate's unit tests and on the containerd proxy in kiln's
//! integration tests; where the two disagree, containerd is right. A fake
//! that has not passed them is not trusted.

mod applier;
mod conformance;
mod content;
mod leases;
mod snapshots;
mod store;

pub use conformance::{
    applier_conformance, content_conformance, images_conformance, leases_conformance,
    snapshotter_conformance, CaseFailure, ConformanceError, Namespaces, Report, Subject,
};
pub use store::MemContainerd;

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn fake(dir: &tempfile::TempDir) -> Arc<dyn Namespaces> {
        Arc::new(MemContainerd::new(&dir.path().join("snapshots")))
    }

    #[tokio::test]
    async fn the_fake_passes_the_content_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = content_conformance(fake(&dir)).await;
        assert!(
            r.is_ok(),
            "{}",
            r.err().map(|e| e.to_string()).unwrap_or_default()
        );
    }

    #[tokio::test]
    async fn the_fake_passes_the_leases_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = leases_conformance(fake(&dir)).await;
        assert!(
            r.is_ok(),
            "{}",
            r.err().map(|e| e.to_string()).unwrap_or_default()
        );
    }

    #[tokio::test]
    async fn the_fake_passes_the_images_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = images_conformance(fake(&dir)).await;
        assert!(
            r.is_ok(),
            "{}",
            r.err().map(|e| e.to_string()).unwrap_or_default()
        );
    }

    #[tokio::test]
    async fn the_fake_passes_the_snapshotter_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = snapshotter_conformance(fake(&dir), &dir.path().join("scratch")).await;
        assert!(
            r.is_ok(),
            "{}",
            r.err().map(|e| e.to_string()).unwrap_or_default()
        );
    }

    #[tokio::test]
    async fn the_fake_passes_the_applier_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = applier_conformance(fake(&dir), &dir.path().join("scratch")).await;
        assert!(
            r.is_ok(),
            "{}",
            r.err().map(|e| e.to_string()).unwrap_or_default()
        );
    }
}
