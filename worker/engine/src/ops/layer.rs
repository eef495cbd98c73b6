//! The life of a mutable snapshot in a step: prepare on the parent chain,
//! mount on the host, then either discard it or hash its diff (the diffID
//! only: no blob, see [`crate::blobs`]) and commit it under the new
//! chainID.

use super::StepRunner;
use crate::blobs::EagerBlob;
use crate::error::Result;
use crate::refs::{self, Layer};
use kiln_snapshot::diff::{Compression, LayerHash};
use kiln_snapshot::layer::{hash_layer, LayerSource};
use kiln_snapshot::mount::{overlay_dirs, Mount, MountGuard};
use kiln_snapshot::services::LeaseResource;
use kiln_snapshot::{Digest, SnapshotError};
use std::path::PathBuf;

/// An active snapshot prepared for one step.
pub(super) struct Active {
    pub key: String,
    pub mounts: Vec<Mount>,
    pub parent: Vec<Layer>,
}

/// The directories of a snapshot this build committed itself (containerd's
/// overlay snapshotter commits in place): read-only views of it and of its
/// parent mounted by the engine, with no View snapshot in containerd.
#[derive(Clone, Debug)]
pub(crate) struct Committed {
    /// A read-only view of the committed snapshot.
    pub view: Vec<Mount>,
    /// The layer's own directory (the active snapshot's upperdir).
    pub upper: PathBuf,
    /// A read-only view of its parent.
    pub parent_view: Option<Vec<Mount>>,
}

/// A snapshot's tree on the host: either mounted at a directory below the
/// build's mount dir (unmounted and removed when dropped), or, for a single
/// bind mount, its source used in place, with nothing mounted.
pub(super) struct HostMount {
    guard: Option<MountGuard>,
    /// The mount point this created, if any.
    dir: Option<PathBuf>,
    path: PathBuf,
}

impl HostMount {
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for HostMount {
    fn drop(&mut self) {
        drop(self.guard.take());
        if let Some(dir) = &self.dir {
            if let Err(e) = std::fs::remove_dir(dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove mount point");
            }
        }
    }
}

/// The source of a single bind mount, which the engine can use in place of
/// mounting it. A read-only bind qualifies only where the engine just reads
/// (`read_only`): a view is never written.
fn bind_source(mounts: &[Mount], read_only: bool) -> Option<PathBuf> {
    match mounts {
        [m] if m.mount_type == "bind"
            && m.target.is_empty()
            && (read_only || !m.options.iter().any(|o| o == "ro")) =>
        {
            Some(PathBuf::from(&m.source))
        }
        _ => None,
    }
}

impl StepRunner {
    /// The tree of `mounts` on the host: a single bind mount's source as it
    /// is (no mount syscall, as BuildKit's local mounter does), else mounted
    /// at a fresh directory below the build's mount dir. With `read_only`
    /// the caller promises not to write.
    pub(super) fn mount(&self, name: &str, mounts: &[Mount], read_only: bool) -> Result<HostMount> {
        if let Some(path) = bind_source(mounts, read_only) {
            return Ok(HostMount {
                guard: None,
                dir: None,
                path,
            });
        }
        let dir = self.mount_dir.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| crate::error::WorkerError::Io {
            path: dir.display().to_string(),
            source: e,
        })?;
        match MountGuard::mount(mounts, dir.clone()) {
            Ok(g) => Ok(HostMount {
                guard: Some(g),
                path: dir.clone(),
                dir: Some(dir),
            }),
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                Err(SnapshotError::from(e).into())
            }
        }
    }

    /// Commits a step's layer; its blob, when the build's image exporter
    /// will read it, is made in the same pass (the result) or noted to be
    /// made beside the dependents ([`crate::blobs::BlobPlan`]).
    pub(super) async fn commit_step(
        &self,
        active: Active,
        id: kiln_solver::graph::VertexId,
    ) -> Result<Vec<Layer>> {
        use crate::blobs::BlobPlan;
        match crate::blobs::ExportBlobs::plan(self.export_blobs.as_ref(), id.0) {
            BlobPlan::Lazy => self.commit(active, None).await,
            BlobPlan::SamePass(c) => self.commit(active, Some(c)).await,
            BlobPlan::AfterCommit(c) => {
                let layers = self.commit(active, None).await?;
                if let Ok(mut later) = self.blobs_after_commit.lock() {
                    later.insert(refs::top_snapshot(&layers), c);
                }
                Ok(layers)
            }
        }
    }

    /// Makes the blob noted by [`Self::commit_step`] for `chain`, if any.
    /// A blob that cannot be made now is only a warning: the export makes
    /// it on demand.
    pub(super) async fn blob_after_commit(&self, chain: &[Layer]) {
        let top = refs::top_snapshot(chain);
        let noted = self
            .blobs_after_commit
            .lock()
            .ok()
            .and_then(|mut later| later.remove(&top));
        let Some(compression) = noted else {
            return;
        };
        let made = match self.committed_dirs(&top) {
            Some(c) => self.blob_from_dirs(chain, &top, &c, compression).await,
            None => {
                crate::blobs::ensure_last(
                    &self.svc,
                    chain,
                    compression,
                    &self.lease,
                    &self.mount_dir,
                )
                .await
            }
        };
        if let Err(e) = made {
            tracing::warn!(snapshot = %top, error = %e, "layer blob not made after its step; the export makes it");
        }
    }

    /// What this build knows of the directories of the snapshot `name` it
    /// committed.
    pub(super) fn committed_dirs(&self, name: &str) -> Option<Committed> {
        self.committed.lock().ok()?.get(name).cloned()
    }

    /// The blob of the top layer of `chain` (committed by this build as
    /// `name`) from its own directory over a read-only mount of its
    /// parent, as it would have been made at its commit, then labelled.
    async fn blob_from_dirs(
        &self,
        chain: &[Layer],
        name: &str,
        c: &Committed,
        compression: Compression,
    ) -> Result<()> {
        let parent = refs::top_snapshot(&chain[..chain.len().saturating_sub(1)]);
        let lower = match &c.parent_view {
            Some(v) => Some(self.mount(&format!("{name}-blob-lower"), v, true)?),
            None => None,
        };
        let source = LayerSource::Overlay {
            upper: c.upper.clone(),
            lower: lower.as_ref().map(|m| m.path().to_path_buf()),
        };
        let parent_name = (!parent.is_empty()).then_some(parent.as_str());
        let blob = EagerBlob::make(&self.svc, source, parent_name, compression, &self.lease).await;
        drop(lower);
        let blob = blob?;
        let want = chain.last().map(|l| &l.diff_id);
        if want != Some(&blob.desc.diff_id) {
            return Err(crate::error::WorkerError::LayerBlob {
                diff_id: want.map(|d| d.to_string()).unwrap_or_default(),
                reason: format!("snapshot {name} now diffs to {}", blob.desc.diff_id),
            });
        }
        blob.label(&self.svc, name).await;
        Ok(())
    }

    /// Prepares an active snapshot on top of `parent` under the build lease.
    pub(super) async fn prepare(&self, parent: &[Layer]) -> Result<Active> {
        let key = format!("kiln-active-{}", crate::base::rand_hex());
        let mounts = self
            .svc
            .snapshots
            .prepare(&key, &refs::top_snapshot(parent), &self.lease)
            .await?;
        Ok(Active {
            key,
            mounts,
            parent: parent.to_vec(),
        })
    }

    /// Removes an active snapshot that produced nothing (failed step).
    pub(super) async fn discard(&self, active: Active) {
        if let Err(e) = self.svc.snapshots.remove(&active.key).await {
            tracing::warn!(key = %active.key, error = %e, "cannot remove active snapshot");
        }
    }

    /// Hashes the diff of the (unmounted) active snapshot against its
    /// parent (its diffID) and commits it as the new chain's chainID. The
    /// layer's blob is made only when an exporter asks for it, unless
    /// `eager` names the compression an exporter of this build will ask
    /// for: then the blob is made in the same pass as the diffID
    /// ([`crate::blobs::EagerBlob`]). Discards the snapshot on error.
    pub(super) async fn commit(
        &self,
        active: Active,
        eager: Option<Compression>,
    ) -> Result<Vec<Layer>> {
        match self.commit_inner(&active, eager).await {
            Ok(l) => Ok(l),
            Err(e) => {
                self.discard(active).await;
                Err(e)
            }
        }
    }

    async fn commit_inner(
        &self,
        active: &Active,
        eager: Option<Compression>,
    ) -> Result<Vec<Layer>> {
        let parent_top = refs::top_snapshot(&active.parent);
        // A read-only view of the parent to compare against: from the
        // active overlay's own lowerdirs when it has them (no View and
        // Remove in containerd), else a View snapshot.
        let mut view_key = None;
        let local_view = kiln_snapshot::mount::overlay_parent_view(&active.mounts);
        let lower = if parent_top.is_empty() {
            None
        } else if let Some(mounts) = local_view {
            let key = format!("{}-lower", active.key);
            Some(self.mount(&key, &mounts, true)?)
        } else {
            let key = format!("kiln-view-{}", crate::base::rand_hex());
            let mounts = self
                .svc
                .snapshots
                .view(&key, &parent_top, &self.lease)
                .await?;
            view_key = Some(key.clone());
            match self.mount(&key, &mounts, true) {
                Ok(m) => Some(m),
                Err(e) => {
                    let _ = self.svc.snapshots.remove(&key).await;
                    return Err(e);
                }
            }
        };
        let parent_name = (!parent_top.is_empty()).then_some(parent_top.as_str());
        let result = self
            .diff(
                active,
                lower.as_ref().map(|m| m.path().to_path_buf()),
                eager.map(|c| (c, parent_name)),
            )
            .await;
        drop(lower);
        if let Some(k) = view_key {
            if let Err(e) = self.svc.snapshots.remove(&k).await {
                tracing::warn!(key = %k, error = %e, "cannot remove view snapshot");
            }
        }
        let (hash, blob) = result?;
        let mut layers = active.parent.clone();
        layers.push(Layer {
            diff_id: hash.diff_id,
            blob: None,
            uncompressed_size: Some(hash.uncompressed_size),
            created: Some(crate::oci::now_rfc3339()),
        });
        let chain = Digest::chain_ids(&refs::diff_ids(&layers));
        let name = chain.last().map(|d| d.to_string()).unwrap_or_default();
        // Lease the name before it exists so it is never unprotected.
        self.svc
            .leases
            .add_resource(
                &self.lease,
                &LeaseResource::snapshot(&*self.svc.snapshots, &name),
            )
            .await?;
        match self
            .svc
            .snapshots
            .commit(&name, &active.key, &self.lease)
            .await
        {
            Ok(()) => {
                let committed = kiln_snapshot::mount::overlay_committed_view(&active.mounts)
                    .zip(overlay_dirs(&active.mounts).and_then(|(upper, _)| upper))
                    .map(|(view, upper)| Committed {
                        view,
                        upper,
                        parent_view: kiln_snapshot::mount::overlay_parent_view(&active.mounts),
                    });
                if let (Some(c), Ok(mut known)) = (committed, self.committed.lock()) {
                    known.insert(name.clone(), c);
                }
            }
            // Another build's snapshot, in directories of its own: not
            // known here (the active one is removed).
            Err(e) if e.is_already_exists() => {
                // The same layer was committed by another build: reuse it.
                self.svc.snapshots.remove(&active.key).await?;
            }
            Err(e) => return Err(e.into()),
        }
        if let Some(blob) = blob {
            blob.label(&self.svc, &name).await;
        }
        Ok(layers)
    }

    /// Picks the diff strategy: the overlay upperdir when the snapshotter
    /// gives one, else a full walk of the mounted trees. With `eager`
    /// (a compression and the parent's chainID) the diff is also written
    /// as the layer's blob.
    async fn diff(
        &self,
        active: &Active,
        lower: Option<PathBuf>,
        eager: Option<(Compression, Option<&str>)>,
    ) -> Result<(LayerHash, Option<EagerBlob>)> {
        let upper = match overlay_dirs(&active.mounts) {
            Some((Some(upper), _)) => Some(upper),
            _ => match active.mounts.as_slice() {
                // No parent: overlayfs hands out a bind of the empty upper.
                [m] if m.mount_type == "bind" && active.parent.is_empty() => {
                    Some(PathBuf::from(&m.source))
                }
                _ => None,
            },
        };
        if let Some(upper) = upper {
            let r = self
                .diff_source(
                    LayerSource::Overlay {
                        upper,
                        lower: lower.clone(),
                    },
                    eager,
                )
                .await;
            match r {
                Err(SnapshotError::Diff(kiln_snapshot::diff::DiffError::Redirect { .. })) => {
                    tracing::info!(key = %active.key, "overlay redirect found, falling back to a full walk");
                }
                other => return Ok(other?),
            }
        }
        let mounted = self.mount(&format!("{}-diff", active.key), &active.mounts, true)?;
        let r = self
            .diff_source(
                LayerSource::Walk {
                    lower,
                    upper: mounted.path().to_path_buf(),
                },
                eager,
            )
            .await;
        drop(mounted);
        Ok(r?)
    }

    /// The layer of `source`: hashed only, or with `eager` made into its
    /// blob in the same pass.
    async fn diff_source(
        &self,
        source: LayerSource,
        eager: Option<(Compression, Option<&str>)>,
    ) -> std::result::Result<(LayerHash, Option<EagerBlob>), SnapshotError> {
        match eager {
            None => Ok((hash_layer(source).await?, None)),
            Some((compression, parent)) => {
                let blob =
                    EagerBlob::make(&self.svc, source, parent, compression, &self.lease).await?;
                let hash = LayerHash {
                    diff_id: blob.desc.diff_id.clone(),
                    uncompressed_size: blob.desc.uncompressed_size,
                    entries: blob.desc.entries,
                };
                Ok((hash, Some(blob)))
            }
        }
    }
}
