//! Layer blobs made on demand: a step's layer is a snapshot with a diffID
//! and no blob until an exporter needs one; the blob then made is the one
//! a cold build gives, and it lives as long as a record holding it (the
//! cache record, or the build record of a build that exported it).

use crate::common;

use kiln_integration::{step_printed, Harness};
use std::collections::BTreeSet;

/// The generating stage only feeds the final stage's `COPY --from`. Its
/// `COPY` brings the mount points a step needs (`dev`, `proc`, `sys`,
/// which the test's busybox lacks), dated, so that the `RUN` layer holds
/// no directory runc makes at the time of the run: every build of it is
/// the same bytes.
const DF: &str = "FROM busybox AS gen\n\
COPY root/ /\n\
RUN echo GEN-RAN && mkdir /gen && cp /a /gen/b && touch -d '2001-02-03 04:05:06' /gen/b /gen\n\
FROM busybox\n\
COPY --from=gen /gen/b /b\n";

/// The context of [`DF`], its files dated so that every build (in any
/// namespace) reads the same tree.
fn context(h: &Harness, name: &str) -> std::path::PathBuf {
    let ctx = h.context(name, &[("Dockerfile", DF), ("root/a", "lazy\n")]);
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000_000);
    let root = ctx.join("root");
    for dir in ["dev", "proc", "sys"] {
        std::fs::create_dir(root.join(dir)).expect("mkdir");
    }
    for path in ["a", "dev", "proc", "sys", ""] {
        std::fs::File::open(root.join(path))
            .expect("open")
            .set_modified(when)
            .expect("date");
    }
    ctx
}

/// Every blob of the namespace that names a diffID (layer blobs), as
/// (blob digest, diffID).
fn layer_blobs(h: &Harness, ns: &str) -> BTreeSet<(String, String)> {
    let out = h.ctr(ns, &["content", "ls"]).expect("ctr content ls");
    out.lines()
        .skip(1)
        .filter_map(|l| {
            let digest = l.split_whitespace().next()?;
            let labels = l.split_whitespace().last()?;
            let diff_id = labels
                .split(',')
                .find_map(|kv| kv.strip_prefix("containerd.io/uncompressed="))?;
            Some((digest.to_string(), diff_id.to_string()))
        })
        .collect()
}

#[tokio::test]
async fn a_stage_that_only_feeds_copy_from_writes_no_blob() {
    let ns = "lazy-nocopy";
    let h = Harness::with_busybox(ns).await;
    let ctx = context(&h, "lazy-nocopy");
    let before = layer_blobs(&h, ns);
    let out = h
        .build(ns, &["-t", "final", ctx.to_str().expect("utf8")])
        .ok();
    assert!(step_printed(&out.stderr, "GEN-RAN"), "{}", out.stderr);
    let (digests, diff_ids) = common::layers(&h, ns, "docker.io/library/final:latest");
    let new: BTreeSet<(String, String)> =
        layer_blobs(&h, ns).difference(&before).cloned().collect();
    // Only the exported image's own layer got a blob: not the generating
    // stage's COPY and RUN layers.
    let want: BTreeSet<(String, String)> = digests
        .iter()
        .cloned()
        .zip(diff_ids.iter().cloned())
        .filter(|p| !before.contains(p))
        .collect();
    assert_eq!(want.len(), 1, "one new layer in the image: {want:?}");
    assert_eq!(new, want, "blobs written besides the image's layers");
}

#[tokio::test]
async fn an_image_of_steps_cached_without_blobs_is_a_cold_builds_image() {
    let (warm, cold) = ("lazy-warm", "lazy-cold");
    let h = Harness::with_busybox(warm).await;
    common::copy_busybox(&h, warm, cold);
    let ctx = context(&h, "lazy-same");
    let c = ctx.to_str().expect("utf8");
    // The gen stage's steps are cached without blobs by the first build.
    h.build(warm, &["-t", "final", c]).ok();
    let cached = h.build(warm, &["--target", "gen", "-t", "gen", c]).ok();
    assert!(
        !step_printed(&cached.stderr, "GEN-RAN"),
        "the gen stage came from the cache:\n{}",
        cached.stderr
    );
    let fresh = h.build(cold, &["--target", "gen", "-t", "gen", c]).ok();
    assert!(step_printed(&fresh.stderr, "GEN-RAN"), "{}", fresh.stderr);
    let (w, fresh) = (
        common::layers(&h, warm, "docker.io/library/gen:latest"),
        common::layers(&h, cold, "docker.io/library/gen:latest"),
    );
    assert_eq!(w.0.len(), 3, "busybox, COPY, RUN: {w:?}");
    assert_eq!(w, fresh, "layer digests and diffIDs");
    // The blobs made on demand decompress to the recorded diffIDs.
    let blobs = layer_blobs(&h, warm);
    for (d, id) in w.0.iter().zip(&w.1) {
        assert!(blobs.contains(&(d.clone(), id.clone())), "{d} {id}");
    }
    // And the same holds in zstd, for the same cached steps, when every
    // layer is made zstd (without force-compression, as BuildKit, the
    // cached steps would keep their gzip blobs).
    let zstd = "type=image,name=gen-z,compression=zstd,force-compression=true";
    h.build(warm, &["--target", "gen", "-o", zstd, c]).ok();
    h.build(cold, &["--target", "gen", "-o", zstd, c]).ok();
    assert_eq!(
        common::layers(&h, warm, "docker.io/library/gen-z:latest"),
        common::layers(&h, cold, "docker.io/library/gen-z:latest")
    );
}

#[tokio::test]
async fn a_blob_made_on_demand_lives_as_long_as_its_record() {
    let ns = "lazy-keep";
    let h = Harness::with_busybox(ns).await;
    let ctx = context(&h, "lazy-keep");
    let c = ctx.to_str().expect("utf8");
    let mut k = h.start_kilnd(ns).await.expect("kilnd starts");
    let addr = k.addr();
    let kiln = |args: &[&str]| {
        let mut all = vec!["--addr", addr.as_str()];
        all.extend_from_slice(args);
        let out = h.kiln(ns, &all).expect("kiln runs");
        assert!(out.success, "kiln {args:?}:\n{}", out.stderr);
        out
    };
    kiln(&[
        "build",
        "--progress",
        "plain",
        "--target",
        "gen",
        "-t",
        "gen",
        c,
    ]);
    let (digests, _) = common::layers(&h, ns, "docker.io/library/gen:latest");
    let run_blob = digests.last().expect("the RUN layer").clone();
    // Only the cache record holds the RUN layer's blob now.
    h.ctr(
        ns,
        &["images", "rm", "--sync", "docker.io/library/gen:latest"],
    )
    .expect("ctr images rm");
    let exists = |d: &str| {
        h.ctr(ns, &["content", "ls", "-q"])
            .expect("ctr content ls")
            .lines()
            .any(|l| l.trim() == d)
    };
    assert!(exists(&run_blob), "the record holds the blob");

    k.terminate().expect("kilnd stops");
    drop(k);
    let k = h.start_kilnd(ns).await.expect("kilnd starts again");
    let addr = k.addr();
    let kiln = |args: &[&str]| {
        let mut all = vec!["--addr", addr.as_str()];
        all.extend_from_slice(args);
        let out = h.kiln(ns, &all).expect("kiln runs");
        assert!(out.success, "kiln {args:?}:\n{}", out.stderr);
        out
    };
    // A prune that keeps every record (all were used just now).
    kiln(&["prune", "--keep-duration", "1h"]);
    assert!(
        exists(&run_blob),
        "a prune that keeps the record keeps the blob"
    );
    // The next export finds the blob again, without making it anew.
    let again = kiln(&[
        "build",
        "--progress",
        "plain",
        "--target",
        "gen",
        "-t",
        "gen2",
        c,
    ]);
    assert!(!step_printed(&again.stderr, "GEN-RAN"), "{}", again.stderr);
    assert_eq!(
        common::layers(&h, ns, "docker.io/library/gen2:latest").0,
        digests
    );
    h.ctr(
        ns,
        &["images", "rm", "--sync", "docker.io/library/gen2:latest"],
    )
    .expect("ctr images rm");
    kiln(&["prune", "--all"]);
    // kilnd's build records keep the images their exporters made, as
    // BuildKit's do (`buildx history inspect` reads them): the cache is
    // gone, the records still hold the blob.
    assert!(
        exists(&run_blob),
        "the build records keep their images' blobs"
    );
    delete_build_records(&k).await;
    kiln(&["prune", "--all"]);
    assert!(
        !exists(&run_blob),
        "the blob went with the last record holding it"
    );
}

/// Deletes every build record of `k`, as `buildx history rm --all` does.
async fn delete_build_records(k: &kiln_integration::Kilnd) {
    use kiln_proto::control::control_client::ControlClient;
    use kiln_proto::control::UpdateBuildHistoryRequest;
    let ch = containerd_client::connect(&k.socket)
        .await
        .expect("connect to kilnd");
    let refs: Vec<String> = common::build_records(ch.clone())
        .await
        .into_iter()
        .map(|r| r.r#ref)
        .collect();
    let mut c = ControlClient::new(ch);
    assert!(!refs.is_empty(), "the builds left records");
    for r in refs {
        c.update_build_history(UpdateBuildHistoryRequest {
            r#ref: r,
            delete: true,
            ..Default::default()
        })
        .await
        .expect("delete the record");
    }
}
