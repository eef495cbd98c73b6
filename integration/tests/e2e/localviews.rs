//! The read-only views kiln mounts itself instead of asking containerd for
//! a View snapshot (no write in its metadata store) are the mounts
//! containerd's overlay snapshotter gives for that View: of an active
//! snapshot's parent (`mount::overlay_parent_view`) and of what the
//! active snapshot is once committed (`mount::overlay_committed_view`).

use kiln_integration::Harness;
use kiln_snapshot::containerd::LeaseId;
use kiln_snapshot::mount::Mount;
use kiln_snapshot::mount::{overlay_committed_view, overlay_parent_view};
use kiln_snapshot::services::{Leases, Snapshots};
use std::collections::HashMap;

/// A mount with its options in a fixed order: containerd 2 puts
/// `lowerdir=` before the snapshotter's own options, 1.6 after them.
fn same(mounts: &[Mount]) -> Vec<(String, String, Vec<String>)> {
    mounts
        .iter()
        .map(|m| {
            let mut o = m.options.clone();
            o.sort();
            (m.mount_type.clone(), m.source.clone(), o)
        })
        .collect()
}

#[tokio::test]
async fn local_views_are_containerds_views() {
    let ns = "local-views";
    let h = Harness::start().await.expect("private containerd starts");
    let c = h.client(ns).await.expect("connect");
    let lease = LeaseId::unique("test");
    c.create(&lease, "local views test", None, HashMap::new())
        .await
        .expect("lease");
    // Three layers: a bind for the first active, overlays after it.
    let mut parent = String::new();
    for (i, name) in ["one", "two", "three"].into_iter().enumerate() {
        let key = format!("active-{name}");
        let active = Snapshots::prepare(&c, &key, &parent, &lease)
            .await
            .expect("prepare");
        if i > 0 {
            let local = overlay_parent_view(&active).expect("an overlay with lowerdirs");
            let view = Snapshots::view(&c, &format!("view-parent-{name}"), &parent, &lease)
                .await
                .expect("view of the parent");
            assert_eq!(same(&local), same(&view), "the parent view of {name}");
        }
        let committed = overlay_committed_view(&active);
        Snapshots::commit(&c, name, &key, &lease)
            .await
            .expect("commit");
        let view = Snapshots::view(&c, &format!("view-{name}"), name, &lease)
            .await
            .expect("view of the committed snapshot");
        match committed {
            Some(local) => assert_eq!(same(&local), same(&view), "the committed view of {name}"),
            None => assert_eq!(i, 0, "only the first layer is a bind, not an overlay"),
        }
        parent = name.to_string();
    }
    c.delete(&lease, true).await.expect("drop the lease");
}
