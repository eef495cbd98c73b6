//! The shared state of the in-memory containerd: per-namespace content,
//! images, leases and snapshots.

use crate::containerd::{ContentInfo, ImageRecord, LeaseId, SnapshotInfo, SnapshotKind};
use crate::error::SnapshotError;
use crate::services::LeaseResource;
use kiln_types::ErrorKind;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

/// A committed blob of one namespace.
pub(crate) struct Blob {
    pub(crate) data: Arc<Vec<u8>>,
    pub(crate) labels: HashMap<String, String>,
}

/// A lease of one namespace.
pub(crate) struct Lease {
    pub(crate) labels: HashMap<String, String>,
    pub(crate) created_secs: u64,
    /// When the lease stops protecting anything (whole seconds, as the
    /// RFC 3339 label containerd parses).
    pub(crate) expires: Option<SystemTime>,
    /// `containerd.io/gc.flat`: held objects' labels are not followed.
    pub(crate) flat: bool,
    pub(crate) content: HashSet<String>,
    pub(crate) snapshots: HashSet<String>,
}

/// A snapshot of one namespace: a plain directory.
pub(crate) struct Snap {
    pub(crate) parent: String,
    pub(crate) kind: SnapshotKind,
    pub(crate) dir: PathBuf,
    pub(crate) labels: HashMap<String, String>,
}

/// Everything one namespace holds.
#[derive(Default)]
pub(crate) struct Namespace {
    pub(crate) blobs: BTreeMap<String, Blob>,
    pub(crate) images: BTreeMap<String, ImageRecord>,
    pub(crate) leases: BTreeMap<String, Lease>,
    pub(crate) snapshots: BTreeMap<String, Snap>,
}

impl Namespace {
    /// The lease a create call names; containerd refuses to create
    /// anything under a lease that does not exist.
    pub(crate) fn lease_mut(
        &mut self,
        method: &'static str,
        object: &str,
        lease: &LeaseId,
    ) -> crate::Result<&mut Lease> {
        self.leases.get_mut(lease.as_str()).ok_or_else(|| {
            rpc(
                method,
                object,
                ErrorKind::NotFound,
                &format!("lease {lease} does not exist"),
            )
        })
    }
}

pub(crate) struct State {
    pub(crate) namespaces: HashMap<String, Namespace>,
    next_dir: u64,
    /// Injected failures: method -> (kind, calls left to fail).
    faults: HashMap<String, (ErrorKind, usize)>,
}

pub(crate) struct Shared {
    root: PathBuf,
    snapshotter: String,
    state: Mutex<State>,
}

/// An in-memory containerd: content store, image store, leases, one
/// snapshotter (directories under a root, handed out as bind mounts) and
/// the diff service's Apply, with containerd's garbage collection.
///
/// A `MemContainerd` is one namespace's view; clones and
/// [`MemContainerd::with_namespace`] share the same state, so content and
/// images are per namespace exactly as in containerd. Everything is held
/// by the lease it was created under; [`crate::services::Leases::gc`] (and
/// a `sync` lease or image delete) removes content and snapshots that no
/// live lease, image, `containerd.io/gc.root` label or
/// `containerd.io/gc.ref.*` label chain reaches. kiln's leases are flat,
/// as containerd treats them: a lease holds exactly its resources (and a
/// snapshot's parents), not what their labels reference. Deleting a lease
/// without `sync` collects nothing until the next GC (containerd runs it
/// later, on its own schedule).
#[derive(Clone)]
pub struct MemContainerd {
    pub(crate) shared: Arc<Shared>,
    pub(crate) namespace: String,
}

impl std::fmt::Debug for MemContainerd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemContainerd")
            .field("root", &self.shared.root)
            .field("namespace", &self.namespace)
            .field("snapshotter", &self.shared.snapshotter)
            .finish()
    }
}

/// A typed error as the proxy produces it for a containerd status.
pub(crate) fn rpc(
    method: &'static str,
    object: &str,
    kind: ErrorKind,
    message: &str,
) -> SnapshotError {
    SnapshotError::Rpc {
        method,
        object: object.to_string(),
        kind,
        message: message.to_string(),
    }
}

impl MemContainerd {
    /// An empty containerd whose snapshots live under `root` (created on
    /// demand), in namespace `default`, with snapshotter `mem`.
    pub fn new(root: &Path) -> Self {
        MemContainerd {
            shared: Arc::new(Shared {
                root: root.to_path_buf(),
                snapshotter: "mem".to_string(),
                state: Mutex::new(State {
                    namespaces: HashMap::new(),
                    next_dir: 0,
                    faults: HashMap::new(),
                }),
            }),
            namespace: "default".to_string(),
        }
    }

    /// The same containerd seen from `namespace`.
    pub fn with_namespace(&self, namespace: &str) -> Self {
        MemContainerd {
            shared: self.shared.clone(),
            namespace: namespace.to_string(),
        }
    }

    /// The namespace this view works in.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Every blob of this namespace, by digest (containerd's
    /// `Content.List`), for tests that check exactly what was written.
    pub fn list_content(&self) -> Vec<ContentInfo> {
        self.with_ns(|ns| {
            ns.blobs
                .iter()
                .map(|(d, b)| ContentInfo {
                    digest: d.clone(),
                    size: b.data.len() as i64,
                    labels: b.labels.clone(),
                })
                .collect()
        })
    }

    /// Every image record of this namespace, by name (`Images.List`).
    pub fn list_images(&self) -> Vec<ImageRecord> {
        self.with_ns(|ns| ns.images.values().cloned().collect())
    }

    /// Every snapshot of this namespace, by key (`Snapshots.List`).
    pub fn list_snapshots(&self) -> Vec<SnapshotInfo> {
        self.with_ns(|ns| {
            ns.snapshots
                .iter()
                .map(|(k, s)| SnapshotInfo {
                    name: k.clone(),
                    parent: s.parent.clone(),
                    kind: s.kind,
                    labels: s.labels.clone(),
                })
                .collect()
        })
    }

    /// What lease `id` holds (`Leases.ListResources`), sorted; `None` if
    /// there is no such lease.
    pub fn list_resources(&self, id: &LeaseId) -> Option<Vec<LeaseResource>> {
        let snapshotter = self.shared.snapshotter.clone();
        self.with_ns(|ns| {
            let l = ns.leases.get(id.as_str())?;
            let mut out: Vec<LeaseResource> = l
                .content
                .iter()
                .map(|d| LeaseResource::Content(d.clone()))
                .chain(l.snapshots.iter().map(|k| LeaseResource::Snapshot {
                    snapshotter: snapshotter.clone(),
                    key: k.clone(),
                }))
                .collect();
            out.sort_by(|a, b| (a.resource_type(), a.id()).cmp(&(b.resource_type(), b.id())));
            Some(out)
        })
    }

    /// Makes the next `times` calls of `method` fail with `kind` (in any
    /// namespace), for tests of error paths. Methods are named as the
    /// proxy names them in errors: `Content.Info`, `Content.Read` (both
    /// reads), `Content.Write` (a writer's commit), `Content.Update`
    /// (set_labels), `Leases.Create`, `Leases.Delete` (and gc),
    /// `Leases.AddResource`, `Leases.List` (list and get), `Images.Get`,
    /// `Images.Create` (put), `Images.Delete`, `Snapshots.Prepare`, `.View`,
    /// `.Mounts`, `.Commit`, `.Remove`, `.Stat`, and `Diff.Apply`. A failed
    /// call changes nothing.
    pub fn fail_next(&self, method: &str, kind: ErrorKind, times: usize) {
        self.lock().faults.insert(method.to_string(), (kind, times));
    }

    /// The injected failure of `method`, if one is due.
    pub(crate) fn injected(&self, method: &'static str, object: &str) -> crate::Result<()> {
        let mut state = self.lock();
        match state.faults.get_mut(method) {
            Some((kind, left)) if *left > 0 => {
                *left -= 1;
                // The proxy's own variant for a containerd that went away.
                if *kind == ErrorKind::Unavailable {
                    return Err(SnapshotError::Unavailable {
                        address: "mem".into(),
                        method,
                        message: "injected failure".into(),
                    });
                }
                Err(rpc(method, object, *kind, "injected failure"))
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn snapshotter_name(&self) -> &str {
        &self.shared.snapshotter
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on this view's namespace.
    pub(crate) fn with_ns<T>(&self, f: impl FnOnce(&mut Namespace) -> T) -> T {
        let mut state = self.lock();
        let ns = state.namespaces.entry(self.namespace.clone()).or_default();
        f(ns)
    }

    /// A fresh directory for a snapshot (not yet created).
    pub(crate) fn new_dir(&self, state: &mut State) -> PathBuf {
        state.next_dir += 1;
        self.shared.root.join(state.next_dir.to_string())
    }

    /// containerd's garbage collection over every namespace: mark from the
    /// roots, sweep the rest (and expired leases). The removed snapshots'
    /// directories are deleted after the lock is released.
    pub(crate) fn collect(&self) {
        let dirs = {
            let mut state = self.lock();
            let now = SystemTime::now();
            let mut dirs = Vec::new();
            for ns in state.namespaces.values_mut() {
                dirs.extend(super::gc::collect_namespace(
                    ns,
                    &self.shared.snapshotter,
                    now,
                ));
            }
            dirs
        };
        for d in dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}
