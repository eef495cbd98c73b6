//! The contract of [`crate::services::Leases`], garbage collection
//! included: what a lease holds survives GC, what nothing holds does not.

use super::{
    blob, cases, ensure, fails, has_blob, has_snapshot, labels_of, lease, ok, run, CaseResult, Ctx,
};
use super::{ConformanceError, Namespaces, Report};
use crate::containerd::{LeaseId, LEASE_OWNER_LABEL};
use crate::services::LeaseResource;
use kiln_types::Digest;
use kiln_types::ErrorKind;
use std::sync::Arc;
use std::time::Duration;

/// Checks the leases and GC of `namespaces` (no root needed: snapshots
/// are created but never mounted).
pub async fn leases_conformance(
    namespaces: Arc<dyn Namespaces>,
) -> Result<Report, ConformanceError> {
    let scratch = std::env::temp_dir();
    run(
        "leases",
        cases![
            a_created_lease_is_listed_with_its_labels,
            creating_an_existing_lease_is_already_exists,
            deleting_a_missing_lease_is_not_an_error,
            adding_to_a_missing_lease_is_not_found,
            adding_an_invalid_digest_is_invalid_argument,
            a_lease_lists_what_it_holds,
            a_leased_blob_survives_gc_and_a_released_one_does_not,
            a_blob_in_two_leases_lives_until_both_are_released,
            a_resource_can_be_leased_before_it_exists,
            a_flat_lease_does_not_hold_what_labels_reference,
            a_referencing_lease_holds_what_its_snapshots_labels_name,
            a_gc_root_label_keeps_a_blob,
            an_expired_lease_holds_nothing_and_is_removed,
            a_leased_snapshot_survives_gc_and_a_released_one_does_not,
            a_committed_snapshot_holds_its_parent,
            a_snapshot_leased_by_add_resource_survives,
            gc_covers_every_namespace,
        ],
        namespaces,
        &scratch,
    )
    .await
}

async fn a_created_lease_is_listed_with_its_labels(c: Ctx) -> CaseResult {
    let s = &c.s;
    let id = LeaseId::unique("conformance");
    ok(
        s.leases
            .create(
                &id,
                "the-purpose",
                None,
                labels_of(&[("dev.kiln/extra", "x")]),
            )
            .await,
        "create",
    )?;
    let got = ok(s.leases.get(&id).await, "get")?.ok_or("get finds the lease")?;
    ensure(got.id == id.as_str(), "get names the lease")?;
    ensure(
        got.labels.get(LEASE_OWNER_LABEL).map(String::as_str) == Some("the-purpose"),
        "the owner label holds the purpose",
    )?;
    ensure(
        got.labels.get("dev.kiln/extra").map(String::as_str) == Some("x"),
        "extra labels are kept",
    )?;
    ensure(!got.expires(), "a lease without expiry has no expiry label")?;
    let listed = ok(s.leases.list().await, "list")?;
    ensure(
        listed.iter().any(|l| l.id == id.as_str()),
        "list shows the lease",
    )?;
    let other = LeaseId::unique("conformance");
    ensure(
        ok(s.leases.get(&other).await, "get missing")?.is_none(),
        "get of a missing lease is None",
    )?;
    ok(s.leases.delete(&id, false).await, "delete")?;
    ensure(
        ok(s.leases.get(&id).await, "get deleted")?.is_none(),
        "a deleted lease is gone",
    )?;
    ensure(
        !ok(s.leases.list().await, "list")?
            .iter()
            .any(|l| l.id == id.as_str()),
        "a deleted lease is not listed",
    )
}

async fn creating_an_existing_lease_is_already_exists(c: Ctx) -> CaseResult {
    let s = &c.s;
    let id = lease(s).await?;
    fails(
        s.leases
            .create(&id, "again", None, Default::default())
            .await,
        ErrorKind::AlreadyExists,
        "create twice",
    )
}

async fn deleting_a_missing_lease_is_not_an_error(c: Ctx) -> CaseResult {
    let s = &c.s;
    ok(
        s.leases.delete(&LeaseId::unique("missing"), false).await,
        "delete missing",
    )?;
    ok(
        s.leases.delete(&LeaseId::unique("missing"), true).await,
        "delete missing with sync",
    )
}

async fn adding_to_a_missing_lease_is_not_found(c: Ctx) -> CaseResult {
    let s = &c.s;
    let d = Digest::of(b"anything");
    fails(
        s.leases
            .add_resource(
                &LeaseId::unique("missing"),
                &LeaseResource::Content(d.to_string()),
            )
            .await,
        ErrorKind::NotFound,
        "add_resource to a missing lease",
    )
}

async fn adding_an_invalid_digest_is_invalid_argument(c: Ctx) -> CaseResult {
    let s = &c.s;
    let l = lease(s).await?;
    fails(
        s.leases
            .add_resource(&l, &LeaseResource::Content("sha256:nothex".into()))
            .await,
        ErrorKind::InvalidArgument,
        "add_resource of content that is not a digest",
    )
}

async fn a_lease_lists_what_it_holds(c: Ctx) -> CaseResult {
    let s = &c.s;
    let l = lease(s).await?;
    ensure(
        ok(s.leases.list_resources(&l).await, "list_resources")?.is_empty(),
        "a new lease holds nothing",
    )?;
    let d = blob(s, b"listed", &[], &l).await?;
    let sn = &s.snapshots;
    ok(sn.prepare("listed-active", "", &l).await, "prepare")?;
    ok(sn.commit("listed", "listed-active", &l).await, "commit")?;
    let early = LeaseResource::snapshot(&**sn, "listed-later");
    ok(s.leases.add_resource(&l, &early).await, "add_resource")?;
    let mut got = ok(s.leases.list_resources(&l).await, "list_resources")?;
    got.sort_by(|a, b| (a.resource_type(), a.id()).cmp(&(b.resource_type(), b.id())));
    let want = vec![
        LeaseResource::Content(d.to_string()),
        LeaseResource::snapshot(&**sn, "listed"),
        early,
    ];
    ensure(
        got == want,
        &format!("the lease lists its blob, its committed snapshot (not the active key it came from) and a name leased early: {got:?}"),
    )?;
    ok(s.leases.delete(&l, true).await, "delete")?;
    fails(
        s.leases.list_resources(&l).await,
        ErrorKind::NotFound,
        "list_resources of a missing lease",
    )
}

async fn a_leased_blob_survives_gc_and_a_released_one_does_not(c: Ctx) -> CaseResult {
    let s = &c.s;
    let (keep, release) = (lease(s).await?, lease(s).await?);
    let kept = blob(s, b"kept", &[], &keep).await?;
    let released = blob(s, b"released", &[], &release).await?;
    ok(s.leases.delete(&release, true).await, "delete with sync")?;
    ensure(
        !has_blob(s, &released).await?,
        "a released blob is gone after a sync delete",
    )?;
    ensure(has_blob(s, &kept).await?, "a leased blob survives")?;
    ok(s.leases.delete(&keep, false).await, "delete without sync")?;
    ok(s.leases.gc().await, "gc")?;
    ensure(
        !has_blob(s, &kept).await?,
        "a released blob is gone after gc",
    )
}

async fn a_blob_in_two_leases_lives_until_both_are_released(c: Ctx) -> CaseResult {
    let s = &c.s;
    let (l1, l2) = (lease(s).await?, lease(s).await?);
    let d = blob(s, b"shared", &[], &l1).await?;
    blob(s, b"shared", &[], &l2).await?;
    ok(s.leases.delete(&l1, true).await, "delete first")?;
    ensure(
        has_blob(s, &d).await?,
        "the second writer's lease holds it too",
    )?;
    ok(s.leases.delete(&l2, true).await, "delete second")?;
    ensure(!has_blob(s, &d).await?, "gone once both are released")
}

async fn a_resource_can_be_leased_before_it_exists(c: Ctx) -> CaseResult {
    let s = &c.s;
    let (early, writer) = (lease(s).await?, lease(s).await?);
    let data = format!("leased early in {}", c.namespace);
    let d = Digest::of(data.as_bytes());
    ok(
        s.leases
            .add_resource(&early, &LeaseResource::Content(d.to_string()))
            .await,
        "add_resource before the blob exists",
    )?;
    blob(s, data.as_bytes(), &[], &writer).await?;
    ok(
        s.leases.delete(&writer, true).await,
        "delete the writer's lease",
    )?;
    ensure(
        has_blob(s, &d).await?,
        "the earlier lease holds the blob written later",
    )?;
    ok(s.leases.delete(&early, true).await, "delete")?;
    ensure(!has_blob(s, &d).await?, "gone once released")
}

async fn a_flat_lease_does_not_hold_what_labels_reference(c: Ctx) -> CaseResult {
    let s = &c.s;
    let (child_lease, parent_lease) = (lease(s).await?, lease(s).await?);
    let child = blob(s, b"child", &[], &child_lease).await?;
    let parent = blob(
        s,
        b"parent",
        &[("containerd.io/gc.ref.content.x", child.as_str())],
        &parent_lease,
    )
    .await?;
    ok(s.leases.delete(&child_lease, true).await, "delete")?;
    ensure(has_blob(s, &parent).await?, "the leased blob survives")?;
    ensure(
        !has_blob(s, &child).await?,
        "kiln's leases are flat: a blob only a leased blob's label references is collected",
    )
}

async fn a_referencing_lease_holds_what_its_snapshots_labels_name(c: Ctx) -> CaseResult {
    let s = &c.s;
    let work = lease(s).await?;
    let (flat, deep) = (
        LeaseId::unique("conformance"),
        LeaseId::unique("conformance"),
    );
    ok(
        s.leases
            .create(&flat, "conformance", None, Default::default())
            .await,
        "create flat",
    )?;
    ok(
        s.leases
            .create_referencing(&deep, "conformance", Default::default())
            .await,
        "create referencing",
    )?;
    let got = ok(s.leases.get(&deep).await, "get")?.ok_or("get finds the lease")?;
    ensure(
        !got.labels.contains_key("containerd.io/gc.flat"),
        "a referencing lease is not flat",
    )?;
    // parent <- child, each with a blob named by a label on it.
    ok(s.snapshots.prepare("a1", "", &work).await, "prepare")?;
    ok(s.snapshots.commit("p", "a1", &work).await, "commit")?;
    ok(s.snapshots.prepare("a2", "p", &work).await, "prepare")?;
    ok(s.snapshots.commit("c", "a2", &work).await, "commit")?;
    let (pb, cb) = (
        blob(s, b"parent's blob", &[], &work).await?,
        blob(s, b"child's blob", &[], &work).await?,
    );
    for (snap, b) in [("p", &pb), ("c", &cb)] {
        ok(
            s.snapshots
                .update_labels(
                    snap,
                    labels_of(&[("containerd.io/gc.ref.content.kiln.test", b.as_str())]),
                )
                .await,
            "label the snapshot",
        )?;
    }
    let child = LeaseResource::snapshot(&*s.snapshots, "c");
    ok(s.leases.add_resource(&flat, &child).await, "hold flat")?;
    ok(s.leases.add_resource(&deep, &child).await, "hold deep")?;
    ok(
        s.leases.delete(&work, false).await,
        "release the work lease",
    )?;
    ok(s.leases.gc().await, "gc")?;
    ensure(
        has_blob(s, &pb).await? && has_blob(s, &cb).await?,
        "a referencing lease holds the blobs its snapshot chain's labels name",
    )?;
    ok(s.leases.delete(&deep, true).await, "delete referencing")?;
    ensure(
        has_snapshot(s, "c").await? && has_snapshot(s, "p").await?,
        "the flat lease still holds the chain",
    )?;
    ensure(
        !has_blob(s, &pb).await? && !has_blob(s, &cb).await?,
        "a flat lease does not hold what its snapshots' labels name",
    )?;
    ok(s.leases.delete(&flat, true).await, "delete flat")
}

async fn a_gc_root_label_keeps_a_blob(c: Ctx) -> CaseResult {
    let s = &c.s;
    let l = lease(s).await?;
    let root = blob(s, b"a root", &[("containerd.io/gc.root", "x")], &l).await?;
    let child = blob(s, b"a root's child", &[], &l).await?;
    ok(
        s.content
            .set_labels(
                root.as_str(),
                labels_of(&[("containerd.io/gc.ref.content.c", child.as_str())]),
            )
            .await,
        "label the root",
    )?;
    ok(s.leases.delete(&l, true).await, "delete")?;
    ensure(has_blob(s, &root).await?, "a gc.root blob survives")?;
    ensure(
        has_blob(s, &child).await?,
        "what a root's labels reference survives",
    )?;
    ok(
        s.content
            .set_labels(root.as_str(), labels_of(&[("containerd.io/gc.root", "")]))
            .await,
        "unlabel",
    )?;
    ok(s.leases.gc().await, "gc")?;
    ensure(
        !has_blob(s, &root).await? && !has_blob(s, &child).await?,
        "without the root label both are collected",
    )
}

async fn an_expired_lease_holds_nothing_and_is_removed(c: Ctx) -> CaseResult {
    let s = &c.s;
    let id = LeaseId::unique("conformance");
    ok(
        s.leases
            .create(&id, "expiring", Some(Duration::ZERO), Default::default())
            .await,
        "create",
    )?;
    let got = ok(s.leases.get(&id).await, "get")?.ok_or("the lease exists")?;
    ensure(got.expires(), "a lease with expiry has the expiry label")?;
    let d = blob(s, b"expiring", &[], &id).await?;
    // The expiry has whole seconds: make sure it has passed.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ok(s.leases.gc().await, "gc")?;
    ensure(!has_blob(s, &d).await?, "an expired lease holds nothing")?;
    ensure(
        ok(s.leases.get(&id).await, "get")?.is_none(),
        "gc removes an expired lease",
    )
}

async fn a_leased_snapshot_survives_gc_and_a_released_one_does_not(c: Ctx) -> CaseResult {
    let s = &c.s;
    let (keep, release) = (lease(s).await?, lease(s).await?);
    let sn = &s.snapshots;
    ok(sn.prepare("kept-active", "", &keep).await, "prepare")?;
    ok(sn.prepare("tmp", "", &keep).await, "prepare")?;
    ok(sn.commit("kept", "tmp", &keep).await, "commit")?;
    ok(sn.prepare("gone-active", "", &release).await, "prepare")?;
    ok(sn.view("gone-view", "kept", &release).await, "view")?;
    ok(sn.prepare("tmp2", "", &release).await, "prepare")?;
    ok(sn.commit("gone", "tmp2", &release).await, "commit")?;
    ok(s.leases.delete(&release, true).await, "delete")?;
    for k in ["kept-active", "kept"] {
        ensure(has_snapshot(s, k).await?, &format!("leased {k} survives"))?;
    }
    for k in ["gone-active", "gone-view", "gone"] {
        ensure(!has_snapshot(s, k).await?, &format!("released {k} is gone"))?;
    }
    ok(s.leases.delete(&keep, true).await, "delete")?;
    for k in ["kept-active", "kept"] {
        ensure(!has_snapshot(s, k).await?, &format!("released {k} is gone"))?;
    }
    Ok(())
}

async fn a_committed_snapshot_holds_its_parent(c: Ctx) -> CaseResult {
    let s = &c.s;
    let (base, top) = (lease(s).await?, lease(s).await?);
    let sn = &s.snapshots;
    ok(sn.prepare("a", "", &base).await, "prepare")?;
    ok(sn.commit("base", "a", &base).await, "commit")?;
    ok(sn.prepare("b", "base", &top).await, "prepare child")?;
    ok(sn.commit("top", "b", &top).await, "commit child")?;
    ok(
        s.leases.delete(&base, true).await,
        "delete the parent's lease",
    )?;
    ensure(has_snapshot(s, "top").await?, "the leased child survives")?;
    ensure(
        has_snapshot(s, "base").await?,
        "a leased snapshot's parent survives with it",
    )?;
    ok(
        s.leases.delete(&top, true).await,
        "delete the child's lease",
    )?;
    ensure(
        !has_snapshot(s, "top").await? && !has_snapshot(s, "base").await?,
        "both are gone once nothing holds the child",
    )
}

async fn a_snapshot_leased_by_add_resource_survives(c: Ctx) -> CaseResult {
    let s = &c.s;
    let (creator, holder) = (lease(s).await?, lease(s).await?);
    let sn = &s.snapshots;
    ok(
        s.leases
            .add_resource(&holder, &LeaseResource::snapshot(&**sn, "held"))
            .await,
        "lease the name before it exists",
    )?;
    ok(sn.prepare("k", "", &creator).await, "prepare")?;
    ok(sn.commit("held", "k", &creator).await, "commit")?;
    ok(s.leases.delete(&creator, true).await, "delete the creator")?;
    ensure(
        has_snapshot(s, "held").await?,
        "the snapshot held through add_resource survives",
    )?;
    ok(s.leases.delete(&holder, true).await, "delete the holder")?;
    ensure(!has_snapshot(s, "held").await?, "gone once released")
}

async fn gc_covers_every_namespace(c: Ctx) -> CaseResult {
    let s = &c.s;
    let other = ok(
        c.namespaces
            .namespace(&format!("{}-other", c.namespace))
            .await,
        "other namespace",
    )?;
    let (here, there) = (lease(s).await?, lease(&other).await?);
    let kept = blob(s, b"kept here", &[], &here).await?;
    let released = blob(&other, b"released there", &[], &there).await?;
    ok(other.leases.delete(&there, false).await, "delete there")?;
    ok(s.leases.gc().await, "gc from here")?;
    ensure(
        !has_blob(&other, &released).await?,
        "a gc started from one namespace collects another's garbage",
    )?;
    ensure(has_blob(s, &kept).await?, "and keeps what is leased")
}
