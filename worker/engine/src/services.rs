//! The containerd services the engine runs on, as trait objects.
//!
//! [`Services`] is what every op, cache record, base-image lookup, export,
//! archive, import and prune dispatches through. [`Services::containerd`]
//! fills it from the real proxy; tests fill it with the in-memory fakes of
//! `kiln_snapshot::testing`, so the engine's logic runs without root.

use kiln_snapshot::services::{Applier, Content, Images, Leases, Snapshots};
use kiln_snapshot::Containerd;
use std::sync::Arc;

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
        }
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
