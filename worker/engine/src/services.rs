//! The containerd services the engine runs on, as trait objects.
//!
//! [`Services`] is what every op, cache record, base-image lookup, export,
//! archive, import and prune dispatches through. [`Services::containerd`]
//! fills it from the real proxy; tests fill it with the in-memory fakes of
//! `kiln_snapshot::testing`, so the engine's logic runs without root.

use kiln_snapshot::services::{Applier, Content, Images, Leases, Snapshots};
use kiln_snapshot::Containerd;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

/// The storage services of one containerd namespace (and snapshotter).
#[derive(Clone)]
pub struct Services {
    /// The namespace, for messages (`image not found in namespace ...`).
    pub namespace: String,
    pub content: Arc<dyn Content>,
    pub snapshots: Arc<dyn Snapshots>,
    pub leases: Arc<dyn Leases>,
    pub images: Arc<dyn Images>,
    /// Unpacks base-image layers (`Diff.Apply`).
    pub applier: Arc<dyn Applier>,
    /// Small blobs already read, by digest ([`Services::read_small`]).
    pub memo: Arc<BlobMemo>,
}

impl Services {
    /// Every service from one containerd connection.
    pub fn containerd(ctrd: &Containerd) -> Self {
        let c = Arc::new(ctrd.clone());
        Services {
            namespace: ctrd.namespace().to_string(),
            content: c.clone(),
            snapshots: c.clone(),
            leases: c.clone(),
            images: c.clone(),
            applier: c,
            memo: Arc::default(),
        }
    }

    /// The bytes of a small blob (a cache record, an image index,
    /// manifest or config), read from containerd once per digest.
    ///
    /// A blob's bytes never change under its digest, so the copy in
    /// memory is as good as containerd's; what the memo cannot know is
    /// whether the blob is still *wanted*. So the caller reads first what
    /// names the digest (the record's lease, the image record) from
    /// containerd on every use, and only then the blob through here; one
    /// found gone in containerd is dropped with [`BlobMemo::forget`].
    pub async fn read_small(&self, digest: &str) -> kiln_snapshot::Result<Arc<[u8]>> {
        if let Some(b) = self.memo.get(digest) {
            return Ok(b);
        }
        let bytes: Arc<[u8]> = self.content.read(digest).await?.into();
        self.memo.put(digest, bytes.clone());
        Ok(bytes)
    }

    /// The labels of every image record kiln writes (exports, pulls):
    /// in the kubelet's namespace, CRI's own mark of an image it manages
    /// (`io.cri-containerd.image=managed`, what a CRI pull sets), so the
    /// kubelet lists, runs and garbage-collects a built image exactly as
    /// one it pulled; elsewhere none.
    pub fn image_labels(&self) -> std::collections::HashMap<String, String> {
        let mut labels = std::collections::HashMap::new();
        if self.namespace == CRI_NAMESPACE {
            labels.insert(CRI_IMAGE_LABEL.to_string(), CRI_MANAGED.to_string());
        }
        labels
    }
}

/// Bounded store of small immutable blobs by digest: at most
/// [`BlobMemo::MAX_BLOB`] bytes each and [`BlobMemo::MAX_TOTAL`] in all,
/// the oldest dropped first (a daemon's idle memory stays small).
#[derive(Debug, Default)]
pub struct BlobMemo(Mutex<MemoInner>);

#[derive(Debug, Default)]
struct MemoInner {
    blobs: HashMap<String, Arc<[u8]>>,
    order: VecDeque<String>,
    total: usize,
}

impl BlobMemo {
    /// The largest blob kept.
    pub const MAX_BLOB: usize = 64 << 10;
    /// What all kept blobs may take together.
    pub const MAX_TOTAL: usize = 1 << 20;

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoInner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, digest: &str) -> Option<Arc<[u8]>> {
        self.lock().blobs.get(digest).cloned()
    }

    /// Keeps `bytes`, the content of `digest` (read, or just written).
    pub(crate) fn put(&self, digest: &str, bytes: Arc<[u8]>) {
        if bytes.len() > Self::MAX_BLOB {
            return;
        }
        let mut m = self.lock();
        if m.blobs.contains_key(digest) {
            return;
        }
        m.total += bytes.len();
        m.blobs.insert(digest.to_string(), bytes);
        m.order.push_back(digest.to_string());
        while m.total > Self::MAX_TOTAL {
            let Some(old) = m.order.pop_front() else {
                break;
            };
            if let Some(b) = m.blobs.remove(&old) {
                m.total -= b.len();
            }
        }
    }

    /// Drops `digest` (containerd no longer has it).
    pub fn forget(&self, digest: &str) {
        let mut m = self.lock();
        if let Some(b) = m.blobs.remove(digest) {
            m.total -= b.len();
            m.order.retain(|d| d != digest);
        }
    }
}

/// The containerd namespace of Kubernetes' CRI plugin.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// CRI's label on the images it manages, and its value.
pub const CRI_IMAGE_LABEL: &str = "io.cri-containerd.image";
pub const CRI_MANAGED: &str = "managed";

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("namespace", &self.namespace)
            .field("snapshotter", &self.snapshots.snapshotter())
            .finish_non_exhaustive()
    }
}
