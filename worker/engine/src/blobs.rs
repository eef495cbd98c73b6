//! Layer blobs on demand.
//!
//! A step commits its layer as a snapshot with only the diffID computed
//! (see `ops/layer.rs`): most layers (those of stages that only feed a
//! `COPY --from`, or of builds nobody exports) never need a blob, so they
//! never pay for compression. [`ensure`] is the one place a blob is made,
//! in the compression the consumer asks for, for every exporter: the image
//! exporter (and so push and the oci/docker tars, which read its manifest)
//! and the cache exports.
//!
//! For a layer without a blob in that compression, the layer's committed
//! snapshot is diffed against its parent again (a view of the snapshot has
//! the layer's own directory as the first overlay lowerdir, or is a bind
//! mount of it for a one-layer chain; any other snapshotter gets a full
//! walk of both trees), compressed into the content store and checked
//! against the recorded diffID. The snapshot then names the blob in a
//! `containerd.io/gc.ref.content.kiln.blob.<compression>` label: the blob
//! lives exactly as long as something holds the snapshot (a cache
//! record's lease, which is not flat, an image, a build), and the next
//! export finds it with one `Stat`.
//!
//! A gzip or zstd blob made here also names itself on the parent snapshot
//! ([`members_label`]): the next blob made for a child of the same parent
//! (typically the same `COPY` after a file changed) copies the compressed
//! members the two share from it (`kiln_snapshot::diff::members`) instead
//! of compressing them again. That label is not a GC reference: a blob
//! collected since is simply not reused.

use crate::error::{Result, WorkerError};
use crate::refs::{Blob, Layer};
use crate::services::Services;
use kiln_snapshot::containerd::LeaseId;
use kiln_snapshot::diff::{compression_of, Compression, DiffError, Level};
use kiln_snapshot::layer::{commit_layer_reusing, convert_layer, LayerSource};
use kiln_snapshot::mount::{overlay_dirs, Mount, MountGuard};
use kiln_snapshot::services::LeaseResource;
use kiln_snapshot::{Digest, SnapshotError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The snapshot label naming the layer's blob in `compression`.
pub fn blob_label(compression: Compression) -> String {
    format!(
        "containerd.io/gc.ref.content.kiln.blob.{}",
        compression.as_str()
    )
}

/// The label on a parent snapshot naming the last blob made in
/// `compression` for a child of it (a candidate to copy members from).
pub fn members_label(compression: Compression) -> String {
    format!("kiln.members.{}", compression.as_str())
}

/// `layers` with every layer's blob (made, converted or found again as
/// needed; held by `lease`), with OCI media type names. With `force`
/// every blob is in `compression`; without it (BuildKit's default for an
/// image export, `force-compression=false`) a layer that has a blob
/// already, in any compression, keeps it, and only a missing one is made
/// in `compression`. Of several blobs a layer has (an earlier forced
/// export made one more), the one in `compression` is taken where
/// BuildKit takes the layer's first. A layer of a type kiln does not know
/// (foreign) is kept as it is. A blob made new is compressed at `level`
/// (an existing one is kept at whatever level it has, as in BuildKit).
/// Host mounts go below `mount_dir`.
pub async fn ensure(
    svc: &Services,
    layers: &[Layer],
    (compression, level): (Compression, Level),
    force: bool,
    lease: &LeaseId,
    mount_dir: &Path,
) -> Result<Vec<Layer>> {
    let mut blobs = Blobs::new(svc, compression, lease, mount_dir);
    blobs.force = force;
    blobs.level = level;
    blobs.chain(layers).await
}

/// [`ensure`] for several chains that share layers (a cache export): each
/// layer is looked at once.
pub struct Blobs<'a> {
    svc: &'a Services,
    compression: Compression,
    /// Every blob in `compression` (converted if need be); else an
    /// existing blob of any compression is kept ([`ensure`]).
    force: bool,
    /// The level of the blobs made new.
    level: Level,
    lease: &'a LeaseId,
    mount_dir: &'a Path,
    /// By chainID.
    done: HashMap<Digest, Layer>,
}

impl std::fmt::Debug for Blobs<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blobs")
            .field("compression", &self.compression)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl<'a> Blobs<'a> {
    pub fn new(
        svc: &'a Services,
        compression: Compression,
        lease: &'a LeaseId,
        mount_dir: &'a Path,
    ) -> Self {
        Blobs {
            svc,
            compression,
            force: true,
            level: Level::default(),
            lease,
            mount_dir,
            done: HashMap::new(),
        }
    }

    /// `layers` with blobs, as [`ensure`]. The missing blobs are made
    /// concurrently, at most one big one per core (those of layers known
    /// to be under 1 MiB all at once): each is its own diff walk, tar,
    /// hash and compression into its own content ingest, so they share
    /// nothing but the cores, and a chain's result is the same as made one
    /// after the other (each blob depends only on its own layer).
    pub async fn chain(&mut self, layers: &[Layer]) -> Result<Vec<Layer>> {
        let chain_ids = Digest::chain_ids(&crate::refs::diff_ids(layers));
        let todo: Vec<usize> = (0..layers.len())
            .filter(|&i| !self.done.contains_key(&chain_ids[i]))
            .collect();
        let permits = tokio::sync::Semaphore::new(concurrency());
        let made = {
            let this = &*self;
            let (chain_ids, permits) = (&chain_ids, &permits);
            futures_util::future::join_all(todo.iter().map(|&i| async move {
                // Never closed, so acquire cannot fail; without a permit
                // the blob is still made, only less bounded.
                let _permit = match takes_a_core(&layers[i]) {
                    true => permits.acquire().await.ok(),
                    false => None,
                };
                this.layer(chain_ids, i, &layers[i]).await
            }))
            .await
        };
        // Every blob was waited for (none is left half-written when one
        // fails); the first error in chain order is the answer.
        let mut made = made.into_iter();
        let mut out = Vec::with_capacity(layers.len());
        for (i, l) in layers.iter().enumerate() {
            if let Some(done) = self.done.get(&chain_ids[i]) {
                out.push(Layer {
                    created: l.created.clone(),
                    ..done.clone()
                });
                continue;
            }
            let blob = made
                .next()
                .expect("one result per layer that was not done before")?;
            let with = Layer {
                blob: Some(blob),
                ..l.clone()
            };
            self.done.insert(chain_ids[i].clone(), with.clone());
            out.push(with);
        }
        Ok(out)
    }

    /// The blob of `layers[i]` (whose chainIDs are `chain_ids`).
    async fn layer(&self, chain_ids: &[Digest], i: usize, l: &Layer) -> Result<Blob> {
        let to = self.compression;
        if let Some(b) = &l.blob {
            return match compression_of(&b.media_type) {
                Some(from) if from == to || !self.force => Ok(Blob {
                    media_type: from.media_type().to_string(),
                    ..b.clone()
                }),
                Some(from) => {
                    let (digest, size) = convert_layer(
                        &*self.svc.content,
                        &*self.svc.leases,
                        &b.digest,
                        from,
                        &l.diff_id,
                        (to, self.level),
                        self.lease,
                    )
                    .await?;
                    Ok(Blob {
                        media_type: to.media_type().to_string(),
                        digest: digest.to_string(),
                        size: size as i64,
                    })
                }
                // A layer type kiln does not know (e.g. foreign): keep it.
                None => Ok(b.clone()),
            };
        }
        let name = chain_ids[i].as_str();
        if let Some(b) = self.labelled(name, l).await? {
            return Ok(b);
        }
        self.make(chain_ids, i, l).await
    }

    /// The blob the snapshot `name` names for this compression (without
    /// `force`, else for any other), if it is still there (then held by
    /// the lease from before the check on). At a level other than the
    /// default, one in this compression is made again: kiln's own blobs
    /// (an earlier export's, or a merge's, which BuildKit would not have)
    /// are at whatever level they were made.
    async fn labelled(&self, name: &str, l: &Layer) -> Result<Option<Blob>> {
        let info = match self.svc.snapshots.stat(name).await {
            Ok(i) => i,
            Err(e) if e.is_not_found() => return Err(no_snapshot(l)),
            Err(e) => return Err(e.into()),
        };
        let others = [
            Compression::Gzip,
            Compression::Zstd,
            Compression::Uncompressed,
        ]
        .into_iter()
        .filter(|c| !self.force && *c != self.compression);
        let own = Some(self.compression).filter(|_| self.level.is_default());
        for c in own.into_iter().chain(others) {
            if let Some(digest) = info.labels.get(&blob_label(c)) {
                if let Some(b) = self.found(name, l, digest, c).await? {
                    return Ok(Some(b));
                }
            }
        }
        Ok(None)
    }

    /// The blob `digest` in `compression` a snapshot's label names, if it
    /// is still there and is the layer's (held by the lease from before
    /// the check on).
    async fn found(
        &self,
        name: &str,
        l: &Layer,
        digest: &str,
        compression: Compression,
    ) -> Result<Option<Blob>> {
        self.svc
            .leases
            .add_resource(self.lease, &LeaseResource::Content(digest.to_string()))
            .await?;
        match self.svc.content.info(digest).await {
            Ok(ci) => {
                let diff_id = ci.labels.get(kiln_snapshot::layer::UNCOMPRESSED_LABEL);
                if diff_id.map(String::as_str) != Some(l.diff_id.as_str()) {
                    tracing::warn!(snapshot = name, blob = %digest, "the blob a snapshot names has another diffID; making it again");
                    return Ok(None);
                }
                Ok(Some(Blob {
                    media_type: compression.media_type().to_string(),
                    digest: digest.to_string(),
                    size: ci.size,
                }))
            }
            // Collected (an older record's flat lease did not hold it).
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Diffs the committed snapshot of `layers[i]` against its parent into
    /// a blob, checks its diffID and labels the snapshot with it.
    async fn make(&self, chain_ids: &[Digest], i: usize, l: &Layer) -> Result<Blob> {
        let name = chain_ids[i].as_str();
        let own = View::open(self.svc, name, self.lease, self.mount_dir).await?;
        let parent = match i {
            0 => None,
            _ => match View::open(
                self.svc,
                chain_ids[i - 1].as_str(),
                self.lease,
                self.mount_dir,
            )
            .await
            {
                Ok(p) => Some(p),
                Err(e) => {
                    own.close(self.svc).await;
                    return Err(e);
                }
            },
        };
        let parent_name = i.checked_sub(1).map(|p| chain_ids[p].as_str());
        let previous = match self.level.is_default() {
            true => previous_members(self.svc, parent_name, self.compression).await,
            false => None,
        };
        let r = self.diff(&own, parent.as_ref(), previous.as_deref()).await;
        if let Some(p) = parent {
            p.close(self.svc).await;
        }
        own.close(self.svc).await;
        let desc = r?;
        if desc.diff_id != l.diff_id {
            return Err(WorkerError::LayerBlob {
                diff_id: l.diff_id.to_string(),
                reason: format!(
                    "snapshot {name} now diffs to {}, its record says {}",
                    desc.diff_id, l.diff_id
                ),
            });
        }
        // Only a default-level blob offers its members to the next one.
        let parent_name = parent_name.filter(|_| self.level.is_default());
        label_made(self.svc, name, parent_name, self.compression, &desc).await;
        tracing::debug!(snapshot = name, blob = %desc.digest, "layer blob made on demand");
        Ok(Blob {
            media_type: desc.media_type.to_string(),
            digest: desc.digest.to_string(),
            size: desc.size as i64,
        })
    }

    /// The layer of `own` over `parent`: the layer's own directory as the
    /// overlay upper when the view shows it, else a full walk.
    async fn diff(
        &self,
        own: &View,
        parent: Option<&View>,
        previous: Option<&str>,
    ) -> Result<kiln_snapshot::diff::LayerDescriptor> {
        let lower = match parent {
            Some(p) => Some(p.tree()?),
            None => None,
        };
        let upper = match (overlay_dirs(&own.mounts), own.mounts.as_slice()) {
            // A view's first lowerdir is the viewed snapshot's own.
            (Some((None, lowers)), _) => lowers.first().cloned(),
            // A one-layer chain: a bind of the layer's own directory.
            (None, [m]) if m.mount_type == "bind" && parent.is_none() => {
                Some(PathBuf::from(&m.source))
            }
            _ => None,
        };
        let content = &*self.svc.content;
        if let Some(upper) = upper {
            let r = commit_layer_reusing(
                content,
                LayerSource::Overlay {
                    upper,
                    lower: lower.clone(),
                },
                (self.compression, self.level),
                self.lease,
                previous,
            )
            .await;
            match r {
                Err(SnapshotError::Diff(DiffError::Redirect { .. })) => {
                    tracing::info!(snapshot = %own.parent, "overlay redirect found, falling back to a full walk");
                }
                other => return Ok(reported(other?)),
            }
        }
        let upper = own.tree()?;
        Ok(reported(
            commit_layer_reusing(
                content,
                LayerSource::Walk { lower, upper },
                (self.compression, self.level),
                self.lease,
                previous,
            )
            .await?,
        ))
    }
}

/// The blob to copy compressed members from for a new child of
/// `parent` (the last one made for a child of it, named by its
/// [`members_label`]); none for a first layer or uncompressed blobs.
async fn previous_members(
    svc: &Services,
    parent: Option<&str>,
    compression: Compression,
) -> Option<String> {
    if compression == Compression::Uncompressed {
        return None;
    }
    let info = svc.snapshots.stat(parent?).await.ok()?;
    info.labels.get(&members_label(compression)).cloned()
}

/// Records a blob just made for the committed snapshot `name`: the
/// snapshot names it ([`blob_label`]; the blob is the lease's already,
/// and without the label the next export only makes it again) and the
/// parent names it as the members to copy from ([`members_label`]).
async fn label_made(
    svc: &Services,
    name: &str,
    parent: Option<&str>,
    compression: Compression,
    desc: &kiln_snapshot::diff::LayerDescriptor,
) {
    let labels = HashMap::from([(blob_label(compression), desc.digest.to_string())]);
    if let Err(e) = svc.snapshots.update_labels(name, labels).await {
        tracing::warn!(snapshot = name, error = %e, "cannot label a snapshot with its blob");
    }
    if let (Some(parent), false) = (parent, compression == Compression::Uncompressed) {
        let labels = HashMap::from([(members_label(compression), desc.digest.to_string())]);
        if let Err(e) = svc.snapshots.update_labels(parent, labels).await {
            tracing::warn!(snapshot = parent, error = %e, "cannot name a blob on its parent snapshot");
        }
    }
}

/// A step's layer made into its blob as the step commits, in one pass with
/// its diffID, for a layer an exporter will read (see
/// [`exported_vertices`]): the export then finds it by the label and never
/// reads the layer again. `parent` is the chainID of the layer's parent
/// (`None` for a first layer); `name`, its own chainID, is labelled once
/// the caller committed the snapshot under it ([`EagerBlob::label`]).
pub(crate) struct EagerBlob {
    pub desc: kiln_snapshot::diff::LayerDescriptor,
    compression: Compression,
    parent: Option<String>,
}

impl EagerBlob {
    /// Writes the blob of the layer `source` gives (held by `lease`),
    /// copying members from the parent's last blob as [`ensure`] does.
    pub(crate) async fn make(
        svc: &Services,
        source: LayerSource,
        parent: Option<&str>,
        compression: Compression,
        lease: &LeaseId,
    ) -> std::result::Result<Self, SnapshotError> {
        let previous = previous_members(svc, parent, compression).await;
        let made = commit_layer_reusing(
            &*svc.content,
            source,
            (compression, Level::default()),
            lease,
            previous.as_deref(),
        )
        .await?;
        Ok(EagerBlob {
            desc: reported(made),
            compression,
            parent: parent.map(str::to_string),
        })
    }

    /// Names the blob on the committed snapshot `name` and its parent.
    pub(crate) async fn label(&self, svc: &Services, name: &str) {
        label_made(
            svc,
            name,
            self.parent.as_deref(),
            self.compression,
            &self.desc,
        )
        .await;
    }
}

/// A build's eager blobs: the compression its image exporter will ask for,
/// the vertices whose layers it will read ([`exported_vertices`]) and the
/// build's result among them.
#[derive(Clone, Debug)]
pub struct ExportBlobs {
    pub compression: Compression,
    pub vertices: std::collections::HashSet<usize>,
    pub result: usize,
}

/// When a step's layer becomes its blob ([`ExportBlobs::plan`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlobPlan {
    /// Nothing exports the layer: only on demand, if ever.
    Lazy,
    /// The result's own layer: in the same pass as its diffID, since the
    /// export waits for it anyway and a second pass would read it again.
    SamePass(Compression),
    /// A layer below the result: after the step committed, beside the
    /// steps that depend on it (its cache record's save), so they do not
    /// wait for its compression and containerd write.
    AfterCommit(Compression),
}

impl ExportBlobs {
    /// When vertex `id`'s blob is made.
    pub fn plan(this: Option<&Self>, id: usize) -> BlobPlan {
        match this {
            Some(e) if e.vertices.contains(&id) && id == e.result => {
                BlobPlan::SamePass(e.compression)
            }
            Some(e) if e.vertices.contains(&id) => BlobPlan::AfterCommit(e.compression),
            _ => BlobPlan::Lazy,
        }
    }
}

/// Makes the blob of the last layer of `layers` in `compression` (held by
/// `lease`, labelled on its snapshot as [`ensure`] does), unless the
/// snapshot names one already: for a layer whose blob is made after its
/// step committed ([`BlobPlan::AfterCommit`]), so the export finds it.
pub async fn ensure_last(
    svc: &Services,
    layers: &[Layer],
    compression: Compression,
    lease: &LeaseId,
    mount_dir: &Path,
) -> Result<()> {
    let Some((last, _)) = layers.split_last() else {
        return Ok(());
    };
    let chain_ids = Digest::chain_ids(&crate::refs::diff_ids(layers));
    Blobs::new(svc, compression, lease, mount_dir)
        .layer(&chain_ids, layers.len() - 1, last)
        .await
        .map(drop)
}

/// The vertices of `graph` whose committed layer is part of `result`'s
/// chain, so an image exporter of `result` reads its blob: from the result
/// down the root filesystem an exec runs on, the base a file op changes,
/// and every input of a merge; source ops end the walk (an image's layers
/// have their blobs, a local or remote source is copied by a file op).
/// Stages that only feed a `COPY --from` are not in it.
pub fn exported_vertices(
    graph: &kiln_solver::graph::Graph,
    result: kiln_solver::graph::VertexId,
) -> std::collections::HashSet<usize> {
    use kiln_solver::graph::{FileInput, Op};
    let mut out = std::collections::HashSet::new();
    let mut todo = vec![result.0];
    while let Some(v) = todo.pop() {
        let Some(vertex) = graph.vertices.get(v) else {
            continue;
        };
        if !out.insert(v) {
            continue;
        }
        let input = |i: usize| vertex.inputs.get(i).map(|e| e.vertex.0);
        match &vertex.op {
            Op::Source(_) => {
                out.remove(&v);
            }
            Op::Exec(e) => todo.extend(
                e.mounts
                    .iter()
                    .find(|m| m.dest == "/")
                    .and_then(|m| m.input)
                    .and_then(input),
            ),
            Op::File(f) => {
                if let Some(FileInput::Input(i)) = f.actions.first().map(|a| a.input) {
                    todo.extend(input(i));
                }
            }
            Op::Merge(m) => todo.extend(m.inputs.iter().filter_map(|&i| input(i))),
        }
    }
    out
}

/// The descriptor of a blob just made, after logging what it reused.
fn reported(
    (desc, reused): (kiln_snapshot::diff::LayerDescriptor, usize),
) -> kiln_snapshot::diff::LayerDescriptor {
    if reused > 0 {
        tracing::debug!(blob = %desc.digest, reused, "compressed members copied from an earlier blob");
    }
    desc
}

/// Below this many uncompressed bytes a layer's blob costs round trips
/// (two views, their mounts, an ingest, labels), not CPU or memory.
const SMALL_LAYER: u64 = 1 << 20;

/// Whether making `l`'s blob waits for one of [`concurrency`]'s permits:
/// yes unless kiln knows the layer is small. Four 100-byte layers of a
/// `COPY --from` each were made two at a time on two cores, 0.5 s of
/// export spent waiting on containerd.
fn takes_a_core(l: &Layer) -> bool {
    l.uncompressed_size.is_none_or(|n| n >= SMALL_LAYER)
}

/// How many big blobs [`Blobs::chain`] makes at once: one per core.
fn concurrency() -> usize {
    std::thread::available_parallelism()
        .map(std::num::NonZeroUsize::get)
        .unwrap_or(1)
}

fn no_snapshot(l: &Layer) -> WorkerError {
    WorkerError::LayerBlob {
        diff_id: l.diff_id.to_string(),
        reason: "it has no blob and its snapshot is gone".into(),
    }
}

/// A read-only view of a committed snapshot, mounted on demand.
struct View {
    key: String,
    parent: String,
    mounts: Vec<Mount>,
    dir: PathBuf,
    guard: std::sync::Mutex<Option<MountGuard>>,
}

impl View {
    async fn open(svc: &Services, parent: &str, lease: &LeaseId, mount_dir: &Path) -> Result<Self> {
        let key = format!("kiln-view-{}", crate::base::rand_hex());
        let mounts = svc.snapshots.view(&key, parent, lease).await?;
        Ok(View {
            dir: mount_dir.join(&key),
            key,
            parent: parent.to_string(),
            mounts,
            guard: std::sync::Mutex::new(None),
        })
    }

    /// The whole tree on the host (a bind source as it is, else mounted).
    fn tree(&self) -> Result<PathBuf> {
        let mut g = self.guard.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(m) = g.as_ref() {
            return Ok(m.path().to_path_buf());
        }
        let m = MountGuard::mount_or_direct(&self.mounts, self.dir.clone())
            .map_err(SnapshotError::from)?;
        let path = m.path().to_path_buf();
        *g = Some(m);
        Ok(path)
    }

    async fn close(self, svc: &Services) {
        let guard = self.guard.lock().unwrap_or_else(|p| p.into_inner()).take();
        drop(guard);
        let _ = std::fs::remove_dir(&self.dir);
        if let Err(e) = svc.snapshots.remove(&self.key).await {
            tracing::warn!(key = %self.key, error = %e, "cannot remove view snapshot");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(uncompressed_size: Option<u64>) -> Layer {
        Layer {
            diff_id: Digest::of(b"layer"),
            blob: None,
            uncompressed_size,
            created: None,
        }
    }

    #[test]
    fn only_layers_known_to_be_small_skip_the_per_core_limit() {
        assert!(!takes_a_core(&layer(Some(2048))));
        assert!(!takes_a_core(&layer(Some(SMALL_LAYER - 1))));
        assert!(takes_a_core(&layer(Some(SMALL_LAYER))));
        assert!(takes_a_core(&layer(Some(100 << 20))));
        assert!(takes_a_core(&layer(None)));
    }
}
