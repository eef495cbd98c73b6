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
mod gc;
mod images;
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
    async fn the_listings_show_exactly_what_a_namespace_holds() {
        use crate::containerd::{ImageRecord, LeaseId};
        use crate::services::{write_blob, Images, LeaseResource, Leases, Snapshots};
        let dir = tempfile::tempdir().expect("tempdir");
        let mem = MemContainerd::new(&dir.path().join("snapshots"));
        let other = mem.with_namespace("other");
        let l = LeaseId::unique("test");
        Leases::create(&mem, &l, "test", None, Default::default())
            .await
            .expect("lease");
        let mut labels = std::collections::HashMap::new();
        labels.insert("k".to_string(), "v".to_string());
        let d = write_blob(&mem, b"blob", labels, &l).await.expect("write");
        mem.prepare("key", "", &l).await.expect("prepare");
        let img = ImageRecord {
            name: "docker.io/library/x:y".into(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: d.to_string(),
            size: 4,
            labels: Default::default(),
            annotations: Default::default(),
        };
        Images::put(&mem, &img, None).await.expect("put");

        let content = mem.list_content();
        assert_eq!(content.len(), 1);
        assert_eq!(content[0].digest, d.as_str());
        assert_eq!(content[0].size, 4);
        assert_eq!(content[0].labels.get("k").map(String::as_str), Some("v"));
        assert_eq!(mem.list_images(), vec![img]);
        let snaps = mem.list_snapshots();
        assert_eq!(snaps.len(), 1);
        assert_eq!(snaps[0].name, "key");
        assert_eq!(
            mem.list_resources(&l),
            Some(vec![
                LeaseResource::Content(d.to_string()),
                LeaseResource::Snapshot {
                    snapshotter: "mem".into(),
                    key: "key".into()
                },
            ])
        );
        assert!(other.list_content().is_empty() && other.list_images().is_empty());
        assert_eq!(other.list_resources(&l), None);

        Leases::delete(&mem, &l, true).await.expect("delete");
        assert!(
            mem.list_snapshots().is_empty(),
            "the unleased snapshot is collected"
        );
        assert_eq!(mem.list_content().len(), 1, "the image keeps its target");
        assert_eq!(mem.list_resources(&l), None);
    }

    #[tokio::test]
    async fn an_injected_failure_fails_that_many_calls_and_changes_nothing() {
        use crate::containerd::LeaseId;
        use crate::services::{write_blob, Content, Leases, Snapshots};
        use crate::ErrorKind;
        let dir = tempfile::tempdir().expect("tempdir");
        let mem = MemContainerd::new(&dir.path().join("snapshots"));
        let l = LeaseId::unique("test");
        Leases::create(&mem, &l, "test", None, Default::default())
            .await
            .expect("lease");
        mem.fail_next("Content.Write", ErrorKind::Unavailable, 2);
        mem.fail_next("Snapshots.Prepare", ErrorKind::AlreadyExists, 1);
        for _ in 0..2 {
            let e = write_blob(&mem, b"x", Default::default(), &l)
                .await
                .expect_err("injected");
            assert_eq!(e.kind(), ErrorKind::Unavailable);
            assert!(matches!(e, crate::SnapshotError::Unavailable { .. }));
        }
        assert!(
            mem.list_content().is_empty(),
            "a failed commit stores nothing"
        );
        let e = mem.prepare("k", "", &l).await.expect_err("injected");
        assert_eq!(e.kind(), ErrorKind::AlreadyExists);
        assert!(
            mem.list_snapshots().is_empty(),
            "a failed prepare creates nothing"
        );
        let d = write_blob(&mem, b"x", Default::default(), &l)
            .await
            .expect("the third write succeeds");
        assert_eq!(mem.info(d.as_str()).await.expect("info").size, 1);
        mem.prepare("k", "", &l)
            .await
            .expect("the second prepare succeeds");
    }

    #[tokio::test]
    async fn gc_and_remove_delete_the_snapshot_directories() {
        use crate::containerd::LeaseId;
        use crate::services::{Leases, Snapshots};
        let dir = tempfile::tempdir().expect("tempdir");
        let mem = MemContainerd::new(&dir.path().join("snapshots"));
        let l = LeaseId::unique("test");
        Leases::create(&mem, &l, "test", None, Default::default())
            .await
            .expect("lease");
        let source = |m: &[crate::mount::Mount]| std::path::PathBuf::from(&m[0].source);
        let removed = source(&mem.prepare("removed", "", &l).await.expect("prepare"));
        let collected = source(&mem.prepare("collected", "", &l).await.expect("prepare"));
        std::fs::write(collected.join("f"), "x").expect("write");
        assert!(removed.is_dir() && collected.is_dir());
        mem.remove("removed").await.expect("remove");
        assert!(!removed.exists(), "remove deletes the directory");
        Leases::delete(&mem, &l, true).await.expect("delete");
        assert!(!collected.exists(), "gc deletes the directory");
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

    /// A blob collected between "already exists" and the lease holding it
    /// (the commit says NotFound) is written again, not an error.
    #[tokio::test]
    async fn write_blob_writes_again_when_the_existing_blob_was_collected() {
        use crate::containerd::LeaseId;
        use crate::services::{write_blob, Content, Leases};
        use crate::ErrorKind;
        let dir = tempfile::tempdir().expect("tempdir");
        let mem = MemContainerd::new(&dir.path().join("snapshots"));
        let l = LeaseId::unique("test");
        Leases::create(&mem, &l, "test", None, Default::default())
            .await
            .expect("lease");
        mem.fail_next("Content.Write", ErrorKind::NotFound, 1);
        let d = write_blob(&mem, b"config", Default::default(), &l)
            .await
            .expect("written on the second attempt");
        assert_eq!(mem.read(d.as_str()).await.expect("stored"), b"config");
        // It gives up after a few attempts rather than looping.
        mem.fail_next("Content.Write", ErrorKind::NotFound, 3);
        let e = write_blob(&mem, b"other", Default::default(), &l)
            .await
            .expect_err("still missing");
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }
}
