//! An incremental `COPY .`: after one file of the context changed, the
//! rebuild links the unchanged files from the previous result's snapshot
//! instead of copying them, writes the changed one as a new inode, and its
//! layer is byte for byte the layer a cold build of the changed context
//! gives (gzip and zstd).

use crate::common;

use kiln_integration::Harness;
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const DF: &str = "FROM busybox\nCOPY . /app\n";

/// The inode numbers of `rel` in every overlayfs snapshot's own
/// directory of the harness's containerd, one per snapshot that has it.
fn inodes(snapshots: &Path, rel: &str) -> Vec<u64> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(snapshots).expect("snapshots dir") {
        let p = e.expect("entry").path().join("fs").join(rel);
        if let Ok(md) = std::fs::symlink_metadata(&p) {
            out.push(md.ino());
        }
    }
    out
}

#[tokio::test]
async fn a_one_file_change_links_the_rest_and_gives_a_cold_builds_layer() {
    let (warm, cold) = ("incr-warm", "incr-cold");
    let h = Harness::with_busybox_private(warm).await;
    common::copy_busybox(&h, warm, cold);
    let big = "0123456789abcdef".repeat(4096);
    let ctx = h.context(
        "incr",
        &[
            ("Dockerfile", DF),
            ("keep/one.txt", "one\n"),
            ("keep/deep/big.bin", &big),
            ("changed.txt", "before\n"),
        ],
    );
    let c = ctx.to_str().expect("utf8");
    h.build(warm, &["-t", "v1", c]).ok();

    // Same size, new bytes.
    std::fs::write(ctx.join("changed.txt"), "after!\n").expect("change");
    h.build(warm, &["-t", "v2", c]).ok();

    // The unchanged files of the two results share their inode; the
    // changed file is a new one in the new result.
    let snaps = h
        .state_dir()
        .join("root/io.containerd.snapshotter.v1.overlayfs/snapshots");
    for rel in ["app/keep/one.txt", "app/keep/deep/big.bin"] {
        let found = inodes(&snaps, rel);
        let distinct: BTreeSet<_> = found.iter().collect();
        assert_eq!(
            (found.len(), distinct.len()),
            (2, 1),
            "{rel}: two results, one inode: {found:?}"
        );
    }
    let changed = inodes(&snaps, "app/changed.txt");
    let distinct: BTreeSet<_> = changed.iter().collect();
    assert_eq!(
        (changed.len(), distinct.len()),
        (2, 2),
        "changed.txt: two inodes: {changed:?}"
    );

    // The new image holds the new bytes, and the old one still the old.
    let cat = ["cat", "/app/changed.txt", "/app/keep/one.txt"];
    for (image, id, want) in [
        ("docker.io/library/v2:latest", "incr-v2", "after!\none\n"),
        ("docker.io/library/v1:latest", "incr-v1", "before\none\n"),
    ] {
        assert_eq!(h.run_image_expecting(warm, image, id, &cat, want), want);
    }
    let md5 = ["md5sum", "/app/keep/deep/big.bin"];
    assert_eq!(
        h.run_image(warm, "docker.io/library/v2:latest", "incr-md5", &md5),
        h.run_image(warm, "docker.io/library/v1:latest", "incr-md5-1", &md5)
    );

    // A cold build of the changed context in a fresh namespace gives the
    // same layers, in gzip and in zstd.
    h.build(cold, &["-t", "v2", c]).ok();
    assert_eq!(
        common::layers(&h, warm, "docker.io/library/v2:latest"),
        common::layers(&h, cold, "docker.io/library/v2:latest")
    );
    let zstd = ["-o", "type=image,name=v2z,compression=zstd", c];
    h.build(warm, &zstd).ok();
    h.build(cold, &zstd).ok();
    assert_eq!(
        common::layers(&h, warm, "docker.io/library/v2z:latest"),
        common::layers(&h, cold, "docker.io/library/v2z:latest")
    );
}
