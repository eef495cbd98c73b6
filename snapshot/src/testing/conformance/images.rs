//! The contract of [`crate::services::Images`]: records, and an image as
//! a GC root whose target's labels keep its blobs and snapshots.

use super::{
    blob, cases, ensure, fails, has_blob, has_snapshot, labels_of, lease, ok, run, CaseResult, Ctx,
};
use super::{ConformanceError, Namespaces, Report};
use crate::containerd::ImageRecord;
use kiln_types::Digest;
use kiln_types::ErrorKind;
use std::sync::Arc;

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Checks the image store of `namespaces` (no root needed).
pub async fn images_conformance(
    namespaces: Arc<dyn Namespaces>,
) -> Result<Report, ConformanceError> {
    let scratch = std::env::temp_dir();
    run(
        "images",
        cases![
            a_put_record_reads_back,
            a_second_put_replaces_target_and_labels,
            the_list_has_every_record_of_the_namespace,
            concurrent_puts_of_one_name_both_succeed,
            a_missing_image_is_not_found,
            an_invalid_record_is_invalid_argument,
            a_deleted_image_is_gone,
            images_are_per_namespace,
            an_image_outlives_the_lease_it_was_put_under,
            an_image_keeps_its_target_and_what_its_labels_reference,
            an_image_record_label_keeps_a_blob,
            an_image_keeps_a_snapshot_through_a_config_label,
            only_well_formed_gc_labels_reference,
        ],
        namespaces,
        &scratch,
    )
    .await
}

fn record(name: &str, digest: &Digest, size: i64, labels: &[(&str, &str)]) -> ImageRecord {
    ImageRecord {
        name: name.to_string(),
        media_type: MANIFEST.to_string(),
        digest: digest.to_string(),
        size,
        labels: labels_of(labels),
        annotations: Default::default(),
    }
}

async fn a_put_record_reads_back(c: Ctx) -> CaseResult {
    let s = &c.s;
    let mut r = record(
        "docker.io/library/conformance:one",
        &Digest::of(b"m1"),
        2,
        &[("dev.kiln/x", "1")],
    );
    r.annotations = labels_of(&[("dev.kiln/d", "2")]);
    ok(s.images.put(&r, None).await, "put")?;
    let got = ok(s.images.get(&r.name).await, "get")?;
    ensure(got.name == r.name, "the name")?;
    ensure(got.digest == r.digest, "the target digest")?;
    ensure(got.media_type == r.media_type, "the target media type")?;
    ensure(got.size == r.size, "the target size")?;
    ensure(
        got.labels.get("dev.kiln/x").map(String::as_str) == Some("1"),
        "the labels",
    )?;
    ensure(
        got.annotations == r.annotations,
        "the target descriptor's annotations",
    )
}

async fn a_second_put_replaces_target_and_labels(c: Ctx) -> CaseResult {
    let s = &c.s;
    let l = lease(s).await?;
    let name = "docker.io/library/conformance:two";
    let first = record(name, &Digest::of(b"m1"), 2, &[("old", "1")]);
    let second = record(name, &Digest::of(b"m2"), 3, &[("new", "1")]);
    ok(s.images.put(&first, Some(&l)).await, "put")?;
    ok(s.images.put(&second, Some(&l)).await, "put again")?;
    let got = ok(s.images.get(name).await, "get")?;
    ensure(
        got.digest == second.digest && got.size == 3,
        "the second target wins",
    )?;
    ensure(
        got.labels.contains_key("new") && !got.labels.contains_key("old"),
        "the second put's labels replace the first's",
    )
}

async fn the_list_has_every_record_of_the_namespace(c: Ctx) -> CaseResult {
    let s = &c.s;
    let names = [
        "docker.io/library/conformance:list-b",
        "docker.io/library/conformance:list-a",
    ];
    for (i, name) in names.iter().enumerate() {
        let r = record(name, &Digest::of(name.as_bytes()), 2 + i as i64, &[]);
        ok(s.images.put(&r, None).await, "put")?;
    }
    let listed = ok(s.images.list().await, "list")?;
    let ours: Vec<&ImageRecord> = listed
        .iter()
        .filter(|r| r.name.starts_with("docker.io/library/conformance:list-"))
        .collect();
    ensure(ours.len() == 2, "both records")?;
    ensure(
        ours.iter()
            .all(|r| r.digest == Digest::of(r.name.as_bytes()).to_string()),
        "each with its target",
    )?;
    ok(s.images.delete(names[0], false).await, "delete")?;
    let listed = ok(s.images.list().await, "list again")?;
    ensure(
        !listed.iter().any(|r| r.name == names[0]),
        "a deleted record is not listed",
    )
}

async fn a_missing_image_is_not_found(c: Ctx) -> CaseResult {
    let s = &c.s;
    fails(
        s.images.get("docker.io/library/missing:x").await,
        ErrorKind::NotFound,
        "get",
    )?;
    fails(
        s.images.delete("docker.io/library/missing:x", false).await,
        ErrorKind::NotFound,
        "delete",
    )
}

async fn an_invalid_record_is_invalid_argument(c: Ctx) -> CaseResult {
    let s = &c.s;
    let good = record("docker.io/library/bad:x", &Digest::of(b"m"), 1, &[]);
    let mut no_size = good.clone();
    no_size.size = 0;
    fails(
        s.images.put(&no_size, None).await,
        ErrorKind::InvalidArgument,
        "a zero target size",
    )?;
    let mut no_type = good.clone();
    no_type.media_type.clear();
    fails(
        s.images.put(&no_type, None).await,
        ErrorKind::InvalidArgument,
        "an empty media type",
    )?;
    let mut bad_digest = good.clone();
    bad_digest.digest = "sha256:nothex".into();
    fails(
        s.images.put(&bad_digest, None).await,
        ErrorKind::InvalidArgument,
        "an invalid digest",
    )?;
    let mut no_name = good;
    no_name.name.clear();
    fails(
        s.images.put(&no_name, None).await,
        ErrorKind::InvalidArgument,
        "an empty name",
    )?;
    fails(
        s.images.get("docker.io/library/bad:x").await,
        ErrorKind::NotFound,
        "nothing was stored",
    )
}

async fn a_deleted_image_is_gone(c: Ctx) -> CaseResult {
    let s = &c.s;
    let r = record("docker.io/library/gone:x", &Digest::of(b"m"), 1, &[]);
    ok(s.images.put(&r, None).await, "put")?;
    ok(s.images.delete(&r.name, false).await, "delete")?;
    fails(
        s.images.get(&r.name).await,
        ErrorKind::NotFound,
        "get after delete",
    )
}

async fn images_are_per_namespace(c: Ctx) -> CaseResult {
    let other = ok(
        c.namespaces
            .namespace(&format!("{}-other", c.namespace))
            .await,
        "other namespace",
    )?;
    let r = record("docker.io/library/here:x", &Digest::of(b"m"), 1, &[]);
    ok(c.s.images.put(&r, None).await, "put")?;
    fails(
        other.images.get(&r.name).await,
        ErrorKind::NotFound,
        "get from another namespace",
    )
}

async fn an_image_outlives_the_lease_it_was_put_under(c: Ctx) -> CaseResult {
    let s = &c.s;
    let l = lease(s).await?;
    let r = record("docker.io/library/leased:x", &Digest::of(b"m"), 1, &[]);
    ok(s.images.put(&r, Some(&l)).await, "put under a lease")?;
    ok(s.leases.delete(&l, true).await, "release the lease")?;
    ensure(
        ok(s.images.get(&r.name).await, "get")?.digest == r.digest,
        "an image record is a root, not a leased object",
    )
}

async fn an_image_keeps_its_target_and_what_its_labels_reference(c: Ctx) -> CaseResult {
    let s = &c.s;
    let l = lease(s).await?;
    let layer = blob(s, b"layer", &[], &l).await?;
    let base = blob(s, b"referenced by the config", &[], &l).await?;
    let config = blob(
        s,
        b"config",
        &[("containerd.io/gc.ref.content.base", base.as_str())],
        &l,
    )
    .await?;
    let manifest_bytes = b"manifest";
    let manifest = blob(
        s,
        manifest_bytes,
        &[
            ("containerd.io/gc.ref.content.config", config.as_str()),
            ("containerd.io/gc.ref.content.l.0", layer.as_str()),
        ],
        &l,
    )
    .await?;
    let stray = blob(s, b"referenced by nothing", &[], &l).await?;
    let r = record(
        "docker.io/library/kept:x",
        &manifest,
        manifest_bytes.len() as i64,
        &[],
    );
    ok(s.images.put(&r, Some(&l)).await, "put")?;
    ok(s.leases.delete(&l, true).await, "release the lease")?;
    for (what, d) in [
        ("the target", &manifest),
        ("a blob the target's label references", &config),
        ("another", &layer),
        ("a blob referenced through two labels", &base),
    ] {
        ensure(has_blob(s, d).await?, &format!("the image keeps {what}"))?;
    }
    ensure(
        !has_blob(s, &stray).await?,
        "a blob nothing references is collected",
    )?;
    ok(s.images.delete(&r.name, true).await, "delete with sync")?;
    for d in [&manifest, &config, &layer, &base] {
        ensure(
            !has_blob(s, d).await?,
            "once the image is deleted its blobs are collected",
        )?;
    }
    Ok(())
}

async fn an_image_record_label_keeps_a_blob(c: Ctx) -> CaseResult {
    let s = &c.s;
    let l = lease(s).await?;
    let target = blob(s, b"target", &[], &l).await?;
    let extra = blob(s, b"extra", &[], &l).await?;
    let r = record(
        "docker.io/library/labelled:x",
        &target,
        6,
        &[("containerd.io/gc.ref.content.extra", extra.as_str())],
    );
    ok(s.images.put(&r, None).await, "put")?;
    ok(s.leases.delete(&l, true).await, "release the lease")?;
    ensure(
        has_blob(s, &extra).await?,
        "a blob the image record's label references survives",
    )
}

async fn an_image_keeps_a_snapshot_through_a_config_label(c: Ctx) -> CaseResult {
    let s = &c.s;
    let l = lease(s).await?;
    let sn = &s.snapshots;
    ok(sn.prepare("k1", "", &l).await, "prepare")?;
    ok(sn.commit("unpacked-1", "k1", &l).await, "commit")?;
    ok(sn.prepare("k2", "unpacked-1", &l).await, "prepare")?;
    ok(sn.commit("unpacked-2", "k2", &l).await, "commit")?;
    let label = format!("containerd.io/gc.ref.snapshot.{}", sn.snapshotter());
    let config = blob(s, b"unpacked config", &[(&label, "unpacked-2")], &l).await?;
    let manifest = blob(
        s,
        b"unpacked manifest",
        &[("containerd.io/gc.ref.content.config", config.as_str())],
        &l,
    )
    .await?;
    let r = record("docker.io/library/unpacked:x", &manifest, 17, &[]);
    ok(s.images.put(&r, None).await, "put")?;
    ok(s.leases.delete(&l, true).await, "release the lease")?;
    ensure(
        has_snapshot(s, "unpacked-2").await?,
        "the snapshot the config's label references survives",
    )?;
    ensure(
        has_snapshot(s, "unpacked-1").await?,
        "and so does its parent",
    )?;
    ok(s.images.delete(&r.name, true).await, "delete with sync")?;
    ensure(
        !has_snapshot(s, "unpacked-2").await? && !has_snapshot(s, "unpacked-1").await?,
        "once the image is deleted the snapshots are collected",
    )
}

async fn only_well_formed_gc_labels_reference(c: Ctx) -> CaseResult {
    let s = &c.s;
    let l = lease(s).await?;
    let sn = &s.snapshots;
    ok(sn.prepare("k1", "", &l).await, "prepare")?;
    ok(sn.commit("named-ref", "k1", &l).await, "commit")?;
    ok(sn.prepare("k2", "", &l).await, "prepare")?;
    ok(sn.commit("other-snapshotter", "k2", &l).await, "commit")?;
    let slash = blob(s, b"slash-named", &[], &l).await?;
    let glued = blob(s, b"glued name", &[], &l).await?;
    let own = format!("containerd.io/gc.ref.snapshot.{}/name", sn.snapshotter());
    let foreign = format!("containerd.io/gc.ref.snapshot.not-{}", sn.snapshotter());
    let manifest = blob(
        s,
        b"labels of every shape",
        &[
            ("containerd.io/gc.ref.content/name", slash.as_str()),
            ("containerd.io/gc.ref.contentname", glued.as_str()),
            (&own, "named-ref"),
            (&foreign, "other-snapshotter"),
        ],
        &l,
    )
    .await?;
    let r = record("docker.io/library/shapes:x", &manifest, 21, &[]);
    ok(s.images.put(&r, None).await, "put")?;
    ok(s.leases.delete(&l, true).await, "release the lease")?;
    ensure(
        has_blob(s, &slash).await?,
        "gc.ref.content/<name> references content",
    )?;
    ensure(
        !has_blob(s, &glued).await?,
        "gc.ref.content<name> (no separator) references nothing",
    )?;
    ensure(
        has_snapshot(s, "named-ref").await?,
        "gc.ref.snapshot.<snapshotter>/<name> references a snapshot",
    )?;
    ensure(
        !has_snapshot(s, "other-snapshotter").await?,
        "a reference for another snapshotter keeps nothing here",
    )
}

async fn concurrent_puts_of_one_name_both_succeed(c: Ctx) -> CaseResult {
    let s = &c.s;
    let name = "docker.io/library/raced:x";
    let first = record(name, &Digest::of(b"m1"), 2, &[]);
    let second = record(name, &Digest::of(b"m2"), 2, &[]);
    let (a, b) = tokio::join!(s.images.put(&first, None), s.images.put(&second, None));
    ok(a, "first put")?;
    ok(b, "second put")?;
    let got = ok(s.images.get(name).await, "get")?;
    ensure(
        got.digest == first.digest || got.digest == second.digest,
        "one of the two targets wins",
    )
}
