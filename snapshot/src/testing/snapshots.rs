//! [`Snapshots`] on the in-memory containerd: every snapshot is a plain
//! directory (a child starts as a copy of its parent), handed out as a
//! bind mount, so code that reads and writes snapshots runs without root.

use super::store::{rpc, MemContainerd, Snap};
use crate::containerd::{LeaseId, SnapshotInfo, SnapshotKind};
use crate::error::{Result, SnapshotError};
use crate::mount::Mount;
use crate::services::Snapshots;
use async_trait::async_trait;
use kiln_types::ErrorKind;
use std::collections::HashMap;
use std::path::Path;

/// Copies a tree (files, dirs, symlinks) from `from` to `to`, keeping
/// modes, owners (when permitted) and times, so a view or a child of a
/// snapshot shows the same metadata as the snapshot, as a real
/// snapshotter's does (layer diffs read it).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    // Post-order: a directory's times are set after its children exist.
    for e in walkdir::WalkDir::new(from)
        .min_depth(1)
        .contents_first(true)
    {
        let e = e.map_err(std::io::Error::other)?;
        let rel = e.path().strip_prefix(from).map_err(std::io::Error::other)?;
        let dest = to.join(rel);
        let meta = e.path().symlink_metadata()?;
        let ft = e.file_type();
        if ft.is_dir() {
            std::fs::create_dir_all(&dest)?;
            std::fs::set_permissions(&dest, meta.permissions())?;
        } else {
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent)?;
            }
            if ft.is_symlink() {
                std::os::unix::fs::symlink(std::fs::read_link(e.path())?, &dest)?;
            } else {
                std::fs::copy(e.path(), &dest)?;
            }
        }
        // Without root only one's own files exist: nothing to change.
        let _ = std::os::unix::fs::lchown(&dest, Some(meta.uid()), Some(meta.gid()));
        if !ft.is_symlink() {
            std::fs::set_permissions(&dest, meta.permissions())?;
        }
        let ts = |s: i64, ns: i64| nix::sys::time::TimeSpec::new(s, ns);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &dest,
            &ts(meta.atime(), meta.atime_nsec()),
            &ts(meta.mtime(), meta.mtime_nsec()),
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .map_err(std::io::Error::from)?;
    }
    Ok(())
}

/// The bind mount of a snapshot directory (`ro` for views).
fn bind(dir: &Path, ro: bool) -> Vec<Mount> {
    vec![Mount {
        mount_type: "bind".into(),
        source: dir.display().to_string(),
        target: String::new(),
        options: vec!["rbind".into(), if ro { "ro" } else { "rw" }.into()],
    }]
}

fn not_found(method: &'static str, key: &str) -> SnapshotError {
    rpc(
        method,
        key,
        ErrorKind::NotFound,
        &format!("snapshot {key}: not found"),
    )
}

impl MemContainerd {
    fn create(
        &self,
        method: &'static str,
        key: &str,
        parent: &str,
        kind: SnapshotKind,
        lease: &LeaseId,
    ) -> Result<Vec<Mount>> {
        self.injected(method, key)?;
        let mut state = self.lock();
        let dir = self.new_dir(&mut state);
        let ns = state.namespaces.entry(self.namespace.clone()).or_default();
        ns.lease_mut(method, key, lease)?;
        if ns.snapshots.contains_key(key) {
            return Err(rpc(
                method,
                key,
                ErrorKind::AlreadyExists,
                &format!("snapshot {key}: already exists"),
            ));
        }
        let parent_dir = if parent.is_empty() {
            None
        } else {
            match ns.snapshots.get(parent) {
                Some(p) if p.kind == SnapshotKind::Committed => Some(p.dir.clone()),
                Some(_) => {
                    return Err(rpc(
                        method,
                        parent,
                        ErrorKind::InvalidArgument,
                        &format!("parent {parent:?} is not committed snapshot"),
                    ))
                }
                None => {
                    return Err(rpc(
                        method,
                        parent,
                        ErrorKind::NotFound,
                        &format!("parent snapshot {parent} does not exist"),
                    ))
                }
            }
        };
        let io = |e: std::io::Error| SnapshotError::Io {
            path: dir.display().to_string(),
            source: e,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        if let Some(p) = parent_dir {
            copy_tree(&p, &dir).map_err(io)?;
        }
        ns.lease_mut(method, key, lease)?
            .snapshots
            .insert(key.to_string());
        let mounts = bind(&dir, kind == SnapshotKind::View);
        ns.snapshots.insert(
            key.to_string(),
            Snap {
                parent: parent.to_string(),
                kind,
                dir,
                labels: HashMap::new(),
            },
        );
        Ok(mounts)
    }
}

#[async_trait]
impl Snapshots for MemContainerd {
    fn snapshotter(&self) -> &str {
        self.snapshotter_name()
    }

    async fn prepare(&self, key: &str, parent: &str, lease: &LeaseId) -> Result<Vec<Mount>> {
        self.create(
            "Snapshots.Prepare",
            key,
            parent,
            SnapshotKind::Active,
            lease,
        )
    }

    async fn view(&self, key: &str, parent: &str, lease: &LeaseId) -> Result<Vec<Mount>> {
        self.create("Snapshots.View", key, parent, SnapshotKind::View, lease)
    }

    async fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        self.injected("Snapshots.Mounts", key)?;
        self.with_ns(|ns| match ns.snapshots.get(key) {
            Some(s) if s.kind != SnapshotKind::Committed => {
                Ok(bind(&s.dir, s.kind == SnapshotKind::View))
            }
            Some(_) => Err(rpc(
                "Snapshots.Mounts",
                key,
                ErrorKind::FailedPrecondition,
                &format!("requested snapshot {key} not active or view"),
            )),
            None => Err(not_found("Snapshots.Mounts", key)),
        })
    }

    async fn commit(&self, name: &str, key: &str, lease: &LeaseId) -> Result<()> {
        self.injected("Snapshots.Commit", name)?;
        self.with_ns(|ns| {
            ns.lease_mut("Snapshots.Commit", name, lease)?;
            if ns.snapshots.contains_key(name) {
                return Err(rpc(
                    "Snapshots.Commit",
                    name,
                    ErrorKind::AlreadyExists,
                    &format!("snapshot {name}: already exists"),
                ));
            }
            match ns.snapshots.get(key) {
                Some(s) if s.kind == SnapshotKind::Active => {}
                Some(_) => {
                    return Err(rpc(
                        "Snapshots.Commit",
                        name,
                        ErrorKind::FailedPrecondition,
                        &format!("snapshot {key} is not active"),
                    ))
                }
                None => return Err(not_found("Snapshots.Commit", key)),
            }
            let l = ns.lease_mut("Snapshots.Commit", name, lease)?;
            l.snapshots.remove(key);
            l.snapshots.insert(name.to_string());
            let mut s = ns.snapshots.remove(key).expect("checked above");
            s.kind = SnapshotKind::Committed;
            ns.snapshots.insert(name.to_string(), s);
            Ok(())
        })
    }

    async fn remove(&self, key: &str) -> Result<()> {
        self.injected("Snapshots.Remove", key)?;
        let removed = self.with_ns(|ns| {
            if !ns.snapshots.contains_key(key) {
                return Ok(None);
            }
            if ns.snapshots.values().any(|s| s.parent == key) {
                return Err(rpc(
                    "Snapshots.Remove",
                    key,
                    ErrorKind::FailedPrecondition,
                    "cannot remove snapshot with child",
                ));
            }
            Ok(ns.snapshots.remove(key))
        })?;
        if let Some(s) = removed {
            let _ = std::fs::remove_dir_all(&s.dir);
        }
        Ok(())
    }

    async fn update_labels(&self, key: &str, labels: HashMap<String, String>) -> Result<()> {
        self.injected("Snapshots.Update", key)?;
        self.with_ns(|ns| match ns.snapshots.get_mut(key) {
            Some(s) => {
                super::content::merge_labels(&mut s.labels, labels);
                Ok(())
            }
            None => Err(not_found("Snapshots.Update", key)),
        })
    }

    async fn stat(&self, key: &str) -> Result<SnapshotInfo> {
        self.injected("Snapshots.Stat", key)?;
        self.with_ns(|ns| {
            let s = ns
                .snapshots
                .get(key)
                .ok_or_else(|| not_found("Snapshots.Stat", key))?;
            Ok(SnapshotInfo {
                name: key.to_string(),
                parent: s.parent.clone(),
                kind: s.kind,
                labels: s.labels.clone(),
            })
        })
    }
}
