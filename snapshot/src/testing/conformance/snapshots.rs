//! The contract of [`crate::services::Snapshots`]: what the mounts show,
//! and the error kinds of every misuse.

use super::{cases, ensure, fails, has_snapshot, lease, ok, run, CaseResult, Ctx};
use super::{ConformanceError, Namespaces, Report};
use crate::containerd::{LeaseId, SnapshotKind};
use crate::mount::{Mount, MountGuard};
use kiln_types::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Checks the snapshotter of `namespaces`, mounting what it returns under
/// `scratch`. Without root, only a single bind mount can be used (read
/// through its source), which is what the in-memory fake returns.
pub async fn snapshotter_conformance(
    namespaces: Arc<dyn Namespaces>,
    scratch: &Path,
) -> Result<Report, ConformanceError> {
    run(
        "snapshots",
        cases![
            a_prepared_snapshot_commits_and_stats,
            a_child_sees_its_parent_and_does_not_change_it,
            a_view_shows_the_chain_and_is_read_only,
            an_existing_key_or_name_is_already_exists,
            a_missing_or_uncommitted_parent_is_refused,
            mounts_is_only_for_active_and_view_snapshots,
            only_an_active_snapshot_commits,
            remove_deletes_keys_but_not_parents,
            creating_under_a_missing_lease_is_not_found,
            keys_are_per_namespace,
            concurrent_commits_onto_one_name_let_one_win,
            update_labels_changes_only_the_given_labels,
        ],
        namespaces,
        scratch,
    )
    .await
}

/// Where a snapshot's files can be read and written: mounted (as root) or,
/// for a single bind mount, its source directory.
enum Access {
    Mounted(MountGuard),
    Direct(PathBuf),
}

impl Access {
    fn open(mounts: &[Mount], target: &Path) -> Result<Access, String> {
        if nix::unistd::geteuid().is_root() {
            return MountGuard::mount_or_direct(mounts, target.to_path_buf())
                .map(Access::Mounted)
                .map_err(|e| format!("mount: {e}"));
        }
        match mounts {
            [m] if m.mount_type == "bind" => Ok(Access::Direct(PathBuf::from(&m.source))),
            _ => Err(format!("cannot mount {mounts:?} without root")),
        }
    }

    fn path(&self) -> &Path {
        match self {
            Access::Mounted(g) => g.path(),
            Access::Direct(p) => p,
        }
    }
}

fn write(c: &Ctx, mounts: &[Mount], file: &str, body: &str) -> Result<(), String> {
    let a = Access::open(mounts, &c.scratch.join("mnt"))?;
    std::fs::write(a.path().join(file), body).map_err(|e| format!("write {file}: {e}"))
}

fn read(c: &Ctx, mounts: &[Mount], file: &str) -> Result<Option<String>, String> {
    let a = Access::open(mounts, &c.scratch.join("mnt"))?;
    Ok(std::fs::read_to_string(a.path().join(file)).ok())
}

/// Whether writing through `mounts` fails (as root, where the mounts are
/// really mounted) or, without root, whether the mounts say `ro`.
fn read_only(c: &Ctx, mounts: &[Mount]) -> Result<bool, String> {
    if nix::unistd::geteuid().is_root() {
        let g = MountGuard::mount(mounts, c.scratch.join("mnt")).map_err(|e| e.to_string())?;
        return Ok(std::fs::write(g.path().join("probe"), "x").is_err());
    }
    Ok(mounts.iter().all(|m| m.options.iter().any(|o| o == "ro")))
}

async fn a_prepared_snapshot_commits_and_stats(c: Ctx) -> CaseResult {
    let s = &c.s.snapshots;
    let l = lease(&c.s).await?;
    let m = ok(s.prepare("a1", "", &l).await, "prepare on nothing")?;
    write(&c, &m, "one", "1")?;
    let info = ok(s.stat("a1").await, "stat active")?;
    ensure(
        info.kind == SnapshotKind::Active,
        "a prepared key is active",
    )?;
    ensure(info.parent.is_empty(), "it has no parent")?;
    let again = ok(s.mounts("a1").await, "mounts of active")?;
    ensure(
        read(&c, &again, "one")?.as_deref() == Some("1"),
        "mounts() of an active snapshot shows its files",
    )?;
    ok(s.commit("c1", "a1", &l).await, "commit")?;
    let info = ok(s.stat("c1").await, "stat committed")?;
    ensure(info.kind == SnapshotKind::Committed, "committed")?;
    ensure(info.name == "c1", "stat names the snapshot")?;
    fails(
        s.stat("a1").await,
        ErrorKind::NotFound,
        "the active key is gone after commit",
    )
}

async fn a_child_sees_its_parent_and_does_not_change_it(c: Ctx) -> CaseResult {
    let s = &c.s.snapshots;
    let l = lease(&c.s).await?;
    let m = ok(s.prepare("a1", "", &l).await, "prepare")?;
    write(&c, &m, "one", "1")?;
    ok(s.commit("c1", "a1", &l).await, "commit")?;
    let m = ok(s.prepare("a2", "c1", &l).await, "prepare on a parent")?;
    ensure(
        read(&c, &m, "one")?.as_deref() == Some("1"),
        "a child sees its parent's files",
    )?;
    write(&c, &m, "two", "2")?;
    write(&c, &m, "one", "changed")?;
    ok(s.commit("c2", "a2", &l).await, "commit child")?;
    ensure(
        ok(s.stat("c2").await, "stat child")?.parent == "c1",
        "the child's parent is recorded",
    )?;
    let v = ok(s.view("v1", "c1", &l).await, "view the parent")?;
    ensure(
        read(&c, &v, "two")?.is_none(),
        "a child's new files do not reach its parent",
    )?;
    ensure(
        read(&c, &v, "one")?.as_deref() == Some("1"),
        "a child's changes do not reach its parent",
    )
}

async fn a_view_shows_the_chain_and_is_read_only(c: Ctx) -> CaseResult {
    let s = &c.s.snapshots;
    let l = lease(&c.s).await?;
    let m = ok(s.prepare("a1", "", &l).await, "prepare")?;
    write(&c, &m, "one", "1")?;
    ok(s.commit("c1", "a1", &l).await, "commit")?;
    let m = ok(s.prepare("a2", "c1", &l).await, "prepare")?;
    write(&c, &m, "two", "2")?;
    ok(s.commit("c2", "a2", &l).await, "commit")?;
    let v = ok(s.view("v", "c2", &l).await, "view")?;
    ensure(
        read(&c, &v, "one")?.as_deref() == Some("1")
            && read(&c, &v, "two")?.as_deref() == Some("2"),
        "a view shows the whole chain",
    )?;
    ensure(read_only(&c, &v)?, "a view is read-only")?;
    let info = ok(s.stat("v").await, "stat view")?;
    ensure(info.kind == SnapshotKind::View, "a view stats as a view")?;
    ensure(info.parent == "c2", "a view's parent is recorded")?;
    let again = ok(s.mounts("v").await, "mounts of a view")?;
    ensure(
        read_only(&c, &again)?,
        "a view's mounts are read-only again",
    )
}

async fn an_existing_key_or_name_is_already_exists(c: Ctx) -> CaseResult {
    let s = &c.s.snapshots;
    let l = lease(&c.s).await?;
    ok(s.prepare("a1", "", &l).await, "prepare")?;
    ok(s.commit("c1", "a1", &l).await, "commit")?;
    ok(s.prepare("a2", "", &l).await, "prepare")?;
    fails(
        s.prepare("a2", "", &l).await,
        ErrorKind::AlreadyExists,
        "prepare of an existing key",
    )?;
    fails(
        s.view("c1", "", &l).await,
        ErrorKind::AlreadyExists,
        "view onto a committed name",
    )?;
    fails(
        s.commit("c1", "a2", &l).await,
        ErrorKind::AlreadyExists,
        "commit onto an existing name",
    )?;
    ensure(
        ok(s.stat("a2").await, "stat")?.kind == SnapshotKind::Active,
        "a failed commit leaves the key active",
    )
}

async fn a_missing_or_uncommitted_parent_is_refused(c: Ctx) -> CaseResult {
    let s = &c.s.snapshots;
    let l = lease(&c.s).await?;
    fails(
        s.prepare("a1", "missing", &l).await,
        ErrorKind::NotFound,
        "prepare on a missing parent",
    )?;
    fails(
        s.view("v1", "missing", &l).await,
        ErrorKind::NotFound,
        "view of a missing parent",
    )?;
    ok(s.prepare("active", "", &l).await, "prepare")?;
    fails(
        s.prepare("a2", "active", &l).await,
        ErrorKind::InvalidArgument,
        "prepare on an active parent",
    )?;
    ensure(
        !has_snapshot(&c.s, "a1").await? && !has_snapshot(&c.s, "a2").await?,
        "nothing was created",
    )
}

async fn mounts_is_only_for_active_and_view_snapshots(c: Ctx) -> CaseResult {
    let s = &c.s.snapshots;
    let l = lease(&c.s).await?;
    ok(s.prepare("a1", "", &l).await, "prepare")?;
    ok(s.commit("c1", "a1", &l).await, "commit")?;
    fails(
        s.mounts("c1").await,
        ErrorKind::FailedPrecondition,
        "mounts of a committed snapshot",
    )?;
    fails(
        s.mounts("missing").await,
        ErrorKind::NotFound,
        "mounts of a missing key",
    )?;
    fails(
        s.stat("missing").await,
        ErrorKind::NotFound,
        "stat of a missing key",
    )?;
    fails(
        s.commit("c2", "missing", &l).await,
        ErrorKind::NotFound,
        "commit of a missing key",
    )
}

async fn only_an_active_snapshot_commits(c: Ctx) -> CaseResult {
    let s = &c.s.snapshots;
    let l = lease(&c.s).await?;
    ok(s.prepare("a1", "", &l).await, "prepare")?;
    ok(s.commit("c1", "a1", &l).await, "commit")?;
    ok(s.view("v1", "c1", &l).await, "view")?;
    fails(
        s.commit("c2", "v1", &l).await,
        ErrorKind::FailedPrecondition,
        "commit of a view",
    )?;
    fails(
        s.commit("c3", "c1", &l).await,
        ErrorKind::FailedPrecondition,
        "commit of a committed snapshot",
    )?;
    ensure(
        !has_snapshot(&c.s, "c2").await? && !has_snapshot(&c.s, "c3").await?,
        "nothing was committed",
    )?;
    ensure(
        ok(s.stat("v1").await, "stat")?.kind == SnapshotKind::View,
        "the view is unchanged",
    )
}

async fn remove_deletes_keys_but_not_parents(c: Ctx) -> CaseResult {
    let s = &c.s.snapshots;
    let l = lease(&c.s).await?;
    ok(s.prepare("a1", "", &l).await, "prepare")?;
    ok(s.commit("c1", "a1", &l).await, "commit")?;
    ok(s.prepare("a2", "c1", &l).await, "prepare")?;
    ok(s.view("v1", "c1", &l).await, "view")?;
    fails(
        s.remove("c1").await,
        ErrorKind::FailedPrecondition,
        "remove of a snapshot with children",
    )?;
    for k in ["a2", "v1"] {
        ok(s.remove(k).await, "remove")?;
        ensure(
            !has_snapshot(&c.s, k).await?,
            &format!("removed {k} is gone"),
        )?;
    }
    ok(s.remove("c1").await, "remove of a childless committed")?;
    ensure(!has_snapshot(&c.s, "c1").await?, "removed c1 is gone")?;
    ok(s.remove("never-existed").await, "remove of a missing key")
}

async fn creating_under_a_missing_lease_is_not_found(c: Ctx) -> CaseResult {
    let s = &c.s.snapshots;
    let missing = LeaseId::unique("missing");
    fails(
        s.prepare("a1", "", &missing).await,
        ErrorKind::NotFound,
        "prepare under a missing lease",
    )?;
    fails(
        s.view("v1", "", &missing).await,
        ErrorKind::NotFound,
        "view under a missing lease",
    )?;
    let l = lease(&c.s).await?;
    ok(s.prepare("a2", "", &l).await, "prepare")?;
    fails(
        s.commit("c2", "a2", &missing).await,
        ErrorKind::NotFound,
        "commit under a missing lease",
    )?;
    ensure(
        !has_snapshot(&c.s, "a1").await? && !has_snapshot(&c.s, "c2").await?,
        "nothing was created",
    )
}

async fn keys_are_per_namespace(c: Ctx) -> CaseResult {
    let other = ok(
        c.namespaces
            .namespace(&format!("{}-other", c.namespace))
            .await,
        "other namespace",
    )?;
    let (l, lo) = (lease(&c.s).await?, lease(&other).await?);
    ok(c.s.snapshots.prepare("a1", "", &l).await, "prepare here")?;
    ok(c.s.snapshots.commit("c1", "a1", &l).await, "commit here")?;
    ensure(
        !has_snapshot(&other, "c1").await?,
        "a snapshot of one namespace is absent from another",
    )?;
    fails(
        other.snapshots.prepare("a2", "c1", &lo).await,
        ErrorKind::NotFound,
        "another namespace's snapshot as parent",
    )?;
    ok(
        other.snapshots.prepare("a1", "", &lo).await,
        "the same key in another namespace",
    )?;
    Ok(())
}

async fn concurrent_commits_onto_one_name_let_one_win(c: Ctx) -> CaseResult {
    let s = &c.s.snapshots;
    let l = lease(&c.s).await?;
    ok(s.prepare("a1", "", &l).await, "prepare")?;
    ok(s.prepare("a2", "", &l).await, "prepare")?;
    let (x, y) = tokio::join!(s.commit("c", "a1", &l), s.commit("c", "a2", &l));
    let won = [&x, &y].iter().filter(|r| r.is_ok()).count();
    ensure(won == 1, "exactly one commit succeeds")?;
    let lost = if x.is_ok() { y } else { x };
    fails(lost, ErrorKind::AlreadyExists, "the other commit")?;
    ensure(
        ok(s.stat("c").await, "stat")?.kind == SnapshotKind::Committed,
        "the name is committed",
    )
}

async fn update_labels_changes_only_the_given_labels(c: Ctx) -> CaseResult {
    let s = &c.s.snapshots;
    let l = lease(&c.s).await?;
    ok(s.prepare("a1", "", &l).await, "prepare")?;
    ok(s.commit("c1", "a1", &l).await, "commit")?;
    let set = |pairs: &[(&str, &str)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<std::collections::HashMap<_, _>>()
    };
    ok(
        s.update_labels("c1", set(&[("dev.kiln/a", "1"), ("dev.kiln/b", "2")]))
            .await,
        "label a committed snapshot",
    )?;
    ok(
        s.update_labels("c1", set(&[("dev.kiln/a", "3"), ("dev.kiln/b", "")]))
            .await,
        "change one label, remove another",
    )?;
    let labels = ok(s.stat("c1").await, "stat")?.labels;
    ensure(
        labels.get("dev.kiln/a").map(String::as_str) == Some("3"),
        "a given label is set",
    )?;
    ensure(
        !labels.contains_key("dev.kiln/b"),
        "an empty value removes a label",
    )?;
    fails(
        s.update_labels("nothing", set(&[("dev.kiln/a", "1")]))
            .await,
        ErrorKind::NotFound,
        "labelling a missing snapshot",
    )
}
