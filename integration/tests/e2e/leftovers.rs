//! The shared leftovers check must see what a build leaks: a build lease
//! (which always carries an expiry) and a private cache-mount snapshot,
//! while what kiln keeps on purpose (cache records and shared cache
//! mounts) is not reported.

use kiln_integration::Harness;
use kiln_snapshot::containerd::LeaseId;

#[tokio::test]
async fn a_leaked_build_lease_is_a_leftover() {
    let ns = "leftovers";
    let h = Harness::start().await.expect("containerd");
    let ctrd = h.client(ns).await.expect("client");
    assert_eq!(h.leftovers(ns).expect("ctr"), Vec::<String>::new());

    // What a build keeps on purpose: a cache record lease holding a shared
    // cache-mount snapshot.
    let record = LeaseId::named("cache", "mount-kept");
    ctrd.lease_create(&record, "cache", None, Default::default())
        .await
        .expect("cache lease");
    ctrd.snapshot_prepare("kiln-cachemount-kept", "", &record)
        .await
        .expect("shared cache mount");
    assert_eq!(
        h.leftovers(ns).expect("ctr"),
        Vec::<String>::new(),
        "cache records and shared cache mounts are kept on purpose"
    );

    // A build lease created exactly as a build creates it, with its expiry,
    // holding a private cache mount, and never released.
    let build = LeaseId::unique("build");
    ctrd.lease_create(
        &build,
        "build",
        Some(kiln_engine::build::BUILD_LEASE_EXPIRY),
        kiln_engine::sweep::owner_labels(),
    )
    .await
    .expect("build lease");
    ctrd.snapshot_prepare("kiln-cachemount-private-leak", "", &build)
        .await
        .expect("private cache mount");
    let left = h.leftovers(ns).expect("ctr");
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(
        left.iter()
            .any(|l| l.starts_with(&format!("lease {} ", build.as_str()))),
        "the build lease is reported: {left:?}"
    );
    assert!(
        left.iter()
            .any(|l| l.starts_with("active snapshot kiln-cachemount-private-leak ")),
        "the private cache mount is reported: {left:?}"
    );

    // Cleaned up, the check is quiet again.
    ctrd.snapshot_remove("kiln-cachemount-private-leak")
        .await
        .expect("remove snapshot");
    ctrd.lease_delete(&build, true).await.expect("delete lease");
    assert_eq!(h.leftovers(ns).expect("ctr"), Vec::<String>::new());
}
