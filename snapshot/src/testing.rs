//! Test doubles and conformance suites (feature `testing`).
//!
//! [`MemSnapshotter`] keeps every snapshot as a plain directory under a
//! temp root (a child starts as a copy of its parent) and hands out bind
//! mounts, so mount-level code can be tested without containerd.
//! [`snapshotter_conformance`] checks the contract of
//! [`crate::snapshotter::Snapshotter`]; it runs on the fake in unit tests
//! and on the containerd proxy in kiln's integration tests. A fake that has
//! not passed it is not trusted.

use crate::containerd::{LeaseId, SnapshotInfo, SnapshotKind};
use crate::error::{Result, SnapshotError};
use crate::mount::{Mount, MountGuard};
use crate::snapshotter::Snapshotter;
use kiln_types::ErrorKind;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

struct MemSnap {
    parent: String,
    kind: SnapshotKind,
    dir: PathBuf,
}

/// An in-memory snapshotter over plain directories.
pub struct MemSnapshotter {
    root: PathBuf,
    snaps: Mutex<HashMap<String, MemSnap>>,
    next: Mutex<u64>,
}

fn err(method: &'static str, object: &str, kind: ErrorKind, message: &str) -> SnapshotError {
    SnapshotError::Rpc {
        method,
        object: object.to_string(),
        kind,
        message: message.to_string(),
    }
}

/// Copies a tree (files, dirs, symlinks; modes kept) from `from` to `to`.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for e in walkdir::WalkDir::new(from).min_depth(1) {
        let e = e.map_err(std::io::Error::other)?;
        let rel = e.path().strip_prefix(from).map_err(std::io::Error::other)?;
        let dest = to.join(rel);
        let ft = e.file_type();
        if ft.is_dir() {
            std::fs::create_dir_all(&dest)?;
            std::fs::set_permissions(
                &dest,
                e.metadata().map_err(std::io::Error::other)?.permissions(),
            )?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path())?, &dest)?;
        } else {
            std::fs::copy(e.path(), &dest)?;
        }
    }
    Ok(())
}

impl MemSnapshotter {
    /// A snapshotter keeping its directories under `root`.
    pub fn new(root: &Path) -> Self {
        MemSnapshotter {
            root: root.to_path_buf(),
            snaps: Mutex::new(HashMap::new()),
            next: Mutex::new(0),
        }
    }

    fn bind(dir: &Path, ro: bool) -> Vec<Mount> {
        let mut options = vec!["rbind".to_string()];
        options.push(if ro { "ro" } else { "rw" }.to_string());
        vec![Mount {
            mount_type: "bind".into(),
            source: dir.display().to_string(),
            target: String::new(),
            options,
        }]
    }

    fn create(
        &self,
        method: &'static str,
        key: &str,
        parent: &str,
        kind: SnapshotKind,
    ) -> Result<Vec<Mount>> {
        let mut snaps = self.snaps.lock().unwrap_or_else(|p| p.into_inner());
        if snaps.contains_key(key) {
            return Err(err(
                method,
                key,
                ErrorKind::AlreadyExists,
                "snapshot already exists",
            ));
        }
        let dir = {
            let mut n = self.next.lock().unwrap_or_else(|p| p.into_inner());
            *n += 1;
            self.root.join(n.to_string())
        };
        let io = |e: std::io::Error| SnapshotError::Io {
            path: dir.display().to_string(),
            source: e,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        if !parent.is_empty() {
            match snaps.get(parent) {
                Some(p) if p.kind == SnapshotKind::Committed => {
                    copy_tree(&p.dir, &dir).map_err(io)?
                }
                Some(_) => {
                    return Err(err(
                        method,
                        parent,
                        ErrorKind::InvalidArgument,
                        "parent is not committed",
                    ))
                }
                None => {
                    return Err(err(
                        method,
                        parent,
                        ErrorKind::NotFound,
                        "parent snapshot does not exist",
                    ))
                }
            }
        }
        let mounts = Self::bind(&dir, kind == SnapshotKind::View);
        snaps.insert(
            key.to_string(),
            MemSnap {
                parent: parent.to_string(),
                kind,
                dir,
            },
        );
        Ok(mounts)
    }
}

impl Snapshotter for MemSnapshotter {
    async fn prepare(&self, key: &str, parent: &str, _lease: &LeaseId) -> Result<Vec<Mount>> {
        self.create("Snapshots.Prepare", key, parent, SnapshotKind::Active)
    }

    async fn view(&self, key: &str, parent: &str, _lease: &LeaseId) -> Result<Vec<Mount>> {
        self.create("Snapshots.View", key, parent, SnapshotKind::View)
    }

    async fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        let snaps = self.snaps.lock().unwrap_or_else(|p| p.into_inner());
        match snaps.get(key) {
            Some(s) if s.kind != SnapshotKind::Committed => {
                Ok(Self::bind(&s.dir, s.kind == SnapshotKind::View))
            }
            Some(_) => Err(err(
                "Snapshots.Mounts",
                key,
                ErrorKind::FailedPrecondition,
                "snapshot is committed",
            )),
            None => Err(err(
                "Snapshots.Mounts",
                key,
                ErrorKind::NotFound,
                "snapshot does not exist",
            )),
        }
    }

    async fn commit(&self, name: &str, key: &str, _lease: &LeaseId) -> Result<()> {
        let mut snaps = self.snaps.lock().unwrap_or_else(|p| p.into_inner());
        if snaps.contains_key(name) {
            return Err(err(
                "Snapshots.Commit",
                name,
                ErrorKind::AlreadyExists,
                "snapshot already exists",
            ));
        }
        match snaps.get(key) {
            Some(s) if s.kind == SnapshotKind::Active => {}
            Some(_) => {
                return Err(err(
                    "Snapshots.Commit",
                    key,
                    ErrorKind::FailedPrecondition,
                    "snapshot is not active",
                ))
            }
            None => {
                return Err(err(
                    "Snapshots.Commit",
                    key,
                    ErrorKind::NotFound,
                    "snapshot does not exist",
                ))
            }
        }
        let mut s = snaps.remove(key).expect("checked above");
        s.kind = SnapshotKind::Committed;
        snaps.insert(name.to_string(), s);
        Ok(())
    }

    async fn remove(&self, key: &str) -> Result<()> {
        let removed = self
            .snaps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        if let Some(s) = removed {
            let _ = std::fs::remove_dir_all(&s.dir);
        }
        Ok(())
    }

    async fn stat(&self, key: &str) -> Result<SnapshotInfo> {
        let snaps = self.snaps.lock().unwrap_or_else(|p| p.into_inner());
        let s = snaps.get(key).ok_or_else(|| {
            err(
                "Snapshots.Stat",
                key,
                ErrorKind::NotFound,
                "snapshot does not exist",
            )
        })?;
        Ok(SnapshotInfo {
            name: key.to_string(),
            parent: s.parent.clone(),
            kind: s.kind,
            labels: HashMap::new(),
        })
    }
}

/// Why the conformance suite failed.
#[derive(Debug, thiserror::Error)]
#[error("snapshotter conformance: {0}")]
pub struct ConformanceError(String);

fn check(ok: bool, what: &str) -> std::result::Result<(), ConformanceError> {
    if ok {
        Ok(())
    } else {
        Err(ConformanceError(what.to_string()))
    }
}

fn kind_of<T>(r: &Result<T>) -> Option<ErrorKind> {
    r.as_ref().err().map(|e| e.kind())
}

/// Checks `s` against the snapshotter contract kiln relies on. Needs root
/// (it mounts what the snapshotter returns under `scratch`). `prefix` keeps
/// the keys of concurrent runs apart.
pub async fn snapshotter_conformance<S: Snapshotter>(
    s: &S,
    lease: &LeaseId,
    scratch: &Path,
    prefix: &str,
) -> std::result::Result<(), ConformanceError> {
    let k = |n: &str| format!("{prefix}-{n}");
    let fail = |what: &str, e: SnapshotError| ConformanceError(format!("{what}: {e}"));
    let mnt = scratch.join("mnt");
    let write =
        |mounts: &[Mount], file: &str, body: &str| -> std::result::Result<(), ConformanceError> {
            let g = MountGuard::mount(mounts, mnt.clone())
                .map_err(|e| ConformanceError(format!("mount: {e}")))?;
            std::fs::write(g.path().join(file), body)
                .map_err(|e| ConformanceError(format!("write {file}: {e}")))?;
            drop(g);
            Ok(())
        };
    let read =
        |mounts: &[Mount], file: &str| -> std::result::Result<Option<String>, ConformanceError> {
            let g = MountGuard::mount(mounts, mnt.clone())
                .map_err(|e| ConformanceError(format!("mount: {e}")))?;
            let r = std::fs::read_to_string(g.path().join(file)).ok();
            drop(g);
            Ok(r)
        };

    // An active snapshot on nothing, written and committed.
    let m = s
        .prepare(&k("a1"), "", lease)
        .await
        .map_err(|e| fail("prepare on empty", e))?;
    write(&m, "one", "1")?;
    let again = s
        .mounts(&k("a1"))
        .await
        .map_err(|e| fail("mounts of active", e))?;
    check(
        read(&again, "one")?.as_deref() == Some("1"),
        "mounts() of an active snapshot shows its files",
    )?;
    s.commit(&k("c1"), &k("a1"), lease)
        .await
        .map_err(|e| fail("commit", e))?;
    let info = s
        .stat(&k("c1"))
        .await
        .map_err(|e| fail("stat committed", e))?;
    check(
        info.kind == SnapshotKind::Committed,
        "a committed snapshot stats as committed",
    )?;
    check(
        kind_of(&s.stat(&k("a1")).await) == Some(ErrorKind::NotFound),
        "the active key is gone after commit",
    )?;

    // A child sees its parent's files and adds its own.
    let m = s
        .prepare(&k("a2"), &k("c1"), lease)
        .await
        .map_err(|e| fail("prepare on parent", e))?;
    check(
        read(&m, "one")?.as_deref() == Some("1"),
        "a child sees its parent's files",
    )?;
    write(&m, "two", "2")?;
    s.commit(&k("c2"), &k("a2"), lease)
        .await
        .map_err(|e| fail("commit child", e))?;
    check(
        s.stat(&k("c2"))
            .await
            .map_err(|e| fail("stat child", e))?
            .parent
            == k("c1"),
        "the child's parent is recorded",
    )?;

    // A view shows the committed tree and cannot be written.
    let v = s
        .view(&k("v1"), &k("c2"), lease)
        .await
        .map_err(|e| fail("view", e))?;
    check(
        read(&v, "one")?.as_deref() == Some("1") && read(&v, "two")?.as_deref() == Some("2"),
        "a view shows the whole chain",
    )?;
    check(write(&v, "three", "3").is_err(), "a view is read-only")?;
    check(
        s.stat(&k("v1"))
            .await
            .map_err(|e| fail("stat view", e))?
            .kind
            == SnapshotKind::View,
        "a view stats as a view",
    )?;

    // The parent is unchanged by its child.
    let v0 = s
        .view(&k("v0"), &k("c1"), lease)
        .await
        .map_err(|e| fail("view parent", e))?;
    check(
        read(&v0, "two")?.is_none(),
        "a child's writes do not reach its parent",
    )?;

    // Errors and removal.
    let m = s
        .prepare(&k("a3"), &k("c1"), lease)
        .await
        .map_err(|e| fail("prepare again", e))?;
    let _ = m;
    check(
        kind_of(&s.commit(&k("c1"), &k("a3"), lease).await) == Some(ErrorKind::AlreadyExists),
        "commit onto an existing name is AlreadyExists",
    )?;
    check(
        kind_of(&s.prepare(&k("a4"), &k("missing"), lease).await) == Some(ErrorKind::NotFound),
        "a missing parent is NotFound",
    )?;
    for key in ["v1", "v0", "a3"] {
        s.remove(&k(key)).await.map_err(|e| fail("remove", e))?;
        check(
            kind_of(&s.stat(&k(key)).await) == Some(ErrorKind::NotFound),
            "a removed snapshot is gone",
        )?;
    }
    s.remove(&k("never-existed"))
        .await
        .map_err(|e| fail("remove of a missing key", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_fake_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = MemSnapshotter::new(&dir.path().join("snaps"));
        let lease = LeaseId::named("test", "mem");
        snapshotter_conformance(&s, &lease, dir.path(), "mem")
            .await
            .expect("MemSnapshotter conforms");
    }
}
