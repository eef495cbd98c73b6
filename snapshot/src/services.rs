//! The containerd services kiln uses, as small traits named with
//! containerd's vocabulary: [`Snapshots`], [`Content`] (with
//! [`ContentWriter`]), [`Leases`], [`Images`] and [`Applier`] (the diff
//! service's Apply).
//!
//! Each trait is dyn-compatible, so the engine holds `Arc<dyn …>` and never
//! the concrete proxy: [`crate::Containerd`] implements all of them by
//! delegating to its per-service proxies (which translate, never decide),
//! and the fakes in [`crate::testing`] implement them in memory so the
//! engine's logic can be unit-tested without root or containerd. The method
//! docs restate containerd's contract; a fake that does not keep it (leases
//! included) is not a fake of containerd, which is what the conformance
//! suites in [`crate::testing`] check on both.
//!
//! Everything a method creates is held by the `lease` it is given, from the
//! call that creates it: nothing is ever unprotected between create and
//! reference.

use crate::containerd::{ContentInfo, ImageRecord, LeaseId, LeaseInfo, SnapshotInfo};
use crate::error::Result;
use crate::mount::Mount;
use async_trait::async_trait;
use kiln_types::Digest;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;

/// A snapshotter (containerd's `Snapshots` service, for one snapshotter).
///
/// Keys name active and view snapshots; names are committed snapshots.
/// Everything created is held by `lease`.
#[async_trait]
pub trait Snapshots: Send + Sync {
    /// The snapshotter's name (`overlayfs`), as leases and GC labels
    /// spell their resources: `snapshots/<name>`,
    /// `containerd.io/gc.ref.snapshot.<name>`.
    fn snapshotter(&self) -> &str;

    /// Creates an *active* (writable) snapshot `key` on top of the committed
    /// `parent` (`""` = empty) and returns its mounts. An existing `key` is
    /// `AlreadyExists`; a missing `parent` is `NotFound`.
    async fn prepare(&self, key: &str, parent: &str, lease: &LeaseId) -> Result<Vec<Mount>>;

    /// Creates a read-only *view* snapshot `key` of the committed `parent`
    /// and returns its mounts (same errors as [`Snapshots::prepare`]).
    async fn view(&self, key: &str, parent: &str, lease: &LeaseId) -> Result<Vec<Mount>>;

    /// The mounts of an existing active or view snapshot again; `NotFound`
    /// if there is none.
    async fn mounts(&self, key: &str) -> Result<Vec<Mount>>;

    /// Turns active `key` into committed `name` (the key is gone afterwards;
    /// an existing `name` is `AlreadyExists` and leaves `key` active). The
    /// lease's entry for `name` holds the result.
    async fn commit(&self, name: &str, key: &str, lease: &LeaseId) -> Result<()>;

    /// Deletes an active or view snapshot; a missing one is not an error.
    async fn remove(&self, key: &str) -> Result<()>;

    /// Describes a snapshot; `NotFound` if there is none.
    async fn stat(&self, key: &str) -> Result<SnapshotInfo>;

    /// Sets labels on an existing snapshot (containerd's `Update` with a
    /// `labels.<key>` field path per label): only the given keys change,
    /// an empty value removes the label. `NotFound` if there is none. A
    /// `containerd.io/gc.ref.*` label holds what it names for as long as
    /// the snapshot is reached by anything but a flat lease.
    async fn update_labels(&self, key: &str, labels: HashMap<String, String>) -> Result<()>;
}

/// Whether snapshot `key` exists ([`Snapshots::stat`] without `NotFound`).
pub async fn snapshot_exists(s: &dyn Snapshots, key: &str) -> Result<bool> {
    match s.stat(key).await {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

/// An open content ingest (containerd's `Content.Write` stream).
#[async_trait]
pub trait ContentWriter: Send {
    /// Appends bytes.
    async fn write(&mut self, data: &[u8]) -> Result<()>;

    /// Appends bytes the caller no longer needs: a writer that sends them
    /// on as they are takes the buffer instead of copying it (a layer
    /// stream's chunks, one copy fewer of each in flight).
    async fn write_owned(&mut self, data: Vec<u8>) -> Result<()> {
        self.write(&data).await
    }

    /// The digest of every byte written so far, as the store computed it:
    /// containerd answers each write with its running digest (and a
    /// commit with another digest fails), so a writer that commits with
    /// this one need not hash the bytes itself. `None` if the store did
    /// not say.
    fn digest(&self) -> Option<Digest>;

    /// Commits the blob as `digest` with `labels` set at commit (the
    /// race-free way to add GC references). Bytes that do not hash to
    /// `digest` fail the commit. If the blob already exists, the writer's
    /// lease is pointed at it and the labels are added: a commit is never
    /// an `AlreadyExists` error. `NotFound` when that existing blob was
    /// garbage collected before the lease held it (write it again).
    async fn commit(
        self: Box<Self>,
        digest: &Digest,
        labels: HashMap<String, String>,
    ) -> Result<()>;
}

/// The content store (containerd's `Content` service): blobs by digest.
#[async_trait]
pub trait Content: Send + Sync {
    /// What the store knows about a blob; `NotFound` if it is absent.
    async fn info(&self, digest: &str) -> Result<ContentInfo>;

    /// A whole blob (for configs, manifests, indexes, records), checked
    /// against its digest; `NotFound` if absent.
    async fn read(&self, digest: &str) -> Result<Vec<u8>>;

    /// A blob's bytes in chunks (for layers, which must not be held in
    /// memory whole). `NotFound` if absent; a later read error ends the
    /// stream with `Err`.
    async fn read_stream(&self, digest: &str) -> Result<mpsc::Receiver<Result<Vec<u8>>>>;

    /// Starts an ingest held by `lease`; see [`ContentWriter`].
    async fn writer(&self, lease: &LeaseId) -> Result<Box<dyn ContentWriter>>;

    /// Sets labels on an existing blob: only the given keys change.
    /// `NotFound` if the blob is absent.
    async fn set_labels(&self, digest: &str, labels: HashMap<String, String>) -> Result<()>;

    /// Points `lease` at an existing blob without writing it. `NotFound`
    /// if the blob or the lease is absent; once this returns, the lease
    /// holds the blob.
    async fn hold(&self, digest: &str, lease: &LeaseId) -> Result<()>;
}

/// Writes a small blob under `lease` with `labels`, and returns its digest
/// (an existing blob gets the lease and the labels).
pub async fn write_blob(
    content: &dyn Content,
    data: &[u8],
    labels: HashMap<String, String>,
    lease: &LeaseId,
) -> Result<Digest> {
    let digest = Digest::of(data);
    // A blob already there with these labels (the unchanged config or
    // manifest of a rebuild) is only held: a write would stream the bytes
    // into an ingest, fail on commit, then hold it and write its labels,
    // three write transactions in containerd's metadata store for one.
    if let Ok(info) = content.info(digest.as_str()).await {
        if info.has_labels(&labels) {
            match content.hold(digest.as_str(), lease).await {
                Ok(()) => return Ok(digest),
                // Collected meanwhile (or no such lease, which the write
                // below reports): write it.
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e),
            }
        }
    }
    // An unreferenced blob with the same bytes (e.g. the same image config
    // exported by an earlier build whose lease is gone) can be collected
    // between "already exists" and this lease holding it: the commit then
    // says NotFound, and writing again under the lease stores it for good.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let mut w = content.writer(lease).await?;
        w.write(data).await?;
        match w.commit(&digest, labels.clone()).await {
            Ok(()) => return Ok(digest),
            Err(e) if e.is_not_found() && attempt < 3 => continue,
            Err(e) => return Err(e),
        }
    }
}

/// A resource a lease can hold.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LeaseResource {
    /// A content blob by digest.
    Content(String),
    /// A snapshot of a snapshotter, by key or name.
    Snapshot { snapshotter: String, key: String },
}

impl LeaseResource {
    /// A snapshot of `snapshots`' snapshotter.
    pub fn snapshot(snapshots: &dyn Snapshots, key: &str) -> Self {
        LeaseResource::Snapshot {
            snapshotter: snapshots.snapshotter().to_string(),
            key: key.to_string(),
        }
    }

    /// The resource containerd names by `resource_type` and `id`; `None`
    /// for a kind kiln does not lease (ingests).
    pub fn from_containerd(resource_type: &str, id: &str) -> Option<Self> {
        match resource_type {
            "content" => Some(LeaseResource::Content(id.to_string())),
            t => t
                .strip_prefix("snapshots/")
                .map(|snapshotter| LeaseResource::Snapshot {
                    snapshotter: snapshotter.to_string(),
                    key: id.to_string(),
                }),
        }
    }

    /// containerd's resource type (`content`, `snapshots/<snapshotter>`).
    pub fn resource_type(&self) -> String {
        match self {
            LeaseResource::Content(_) => "content".into(),
            LeaseResource::Snapshot { snapshotter, .. } => format!("snapshots/{snapshotter}"),
        }
    }

    /// The resource's id (digest or snapshot key).
    pub fn id(&self) -> &str {
        match self {
            LeaseResource::Content(d) => d,
            LeaseResource::Snapshot { key, .. } => key,
        }
    }
}

/// Leases (containerd's `Leases` service), limited to kiln's own: IDs
/// start with [`crate::containerd::LEASE_PREFIX`] and carry
/// [`crate::containerd::LEASE_OWNER_LABEL`], so kiln never touches a lease
/// it did not make. kiln's leases are flat (`containerd.io/gc.flat`): they
/// hold exactly their resources, not what those reference (except those of
/// [`Leases::create_referencing`]).
#[async_trait]
pub trait Leases: Send + Sync {
    /// Creates a flat kiln lease labelled with `purpose` (the owner label)
    /// and `labels`; with `expire`, the lease is dropped after that long
    /// even if kiln dies. An existing `id` is `AlreadyExists`.
    async fn create(
        &self,
        id: &LeaseId,
        purpose: &str,
        expire: Option<Duration>,
        labels: HashMap<String, String>,
    ) -> Result<()>;

    /// Creates a kiln lease without expiry that is *not* flat: it holds
    /// its resources and what their `containerd.io/gc.ref.*` labels
    /// reference (cache records, so a blob their snapshots name in a label
    /// lives as long as the snapshot). An existing `id` is `AlreadyExists`.
    async fn create_referencing(
        &self,
        id: &LeaseId,
        purpose: &str,
        labels: HashMap<String, String>,
    ) -> Result<()>;

    /// Deletes a lease (a missing one is not an error); what only it held
    /// becomes garbage. With `sync`, returns after a GC run.
    async fn delete(&self, id: &LeaseId, sync: bool) -> Result<()>;

    /// Adds a resource to a lease. The object need not exist yet, so a name
    /// can be leased before it is created. A missing lease is `NotFound`.
    async fn add_resource(&self, id: &LeaseId, resource: &LeaseResource) -> Result<()>;

    /// What lease `id` holds: its content and the snapshots of every
    /// snapshotter (containerd's other kinds, ingests, are left out). A
    /// missing lease is `NotFound`.
    async fn list_resources(&self, id: &LeaseId) -> Result<Vec<LeaseResource>>;

    /// Every kiln lease of the namespace (others are not listed).
    async fn list(&self) -> Result<Vec<LeaseInfo>>;

    /// The kiln lease `id`, if it exists.
    async fn get(&self, id: &LeaseId) -> Result<Option<LeaseInfo>>;

    /// Runs a garbage collection and waits for it: what no lease, image or
    /// GC label reaches is gone afterwards.
    async fn gc(&self) -> Result<()>;
}

/// The image store (containerd's `Images` service): names pointing at a
/// manifest or index. An image record holds its target (and what the
/// target's GC labels reach) alive.
#[async_trait]
pub trait Images: Send + Sync {
    /// The record `name` (fully normalized); `NotFound` if absent.
    async fn get(&self, name: &str) -> Result<ImageRecord>;

    /// Points `record.name` at its target, creating or updating the record;
    /// concurrent writers of one name both succeed (the last one wins).
    async fn put(&self, record: &ImageRecord, lease: Option<&LeaseId>) -> Result<()>;

    /// Deletes a record (with `sync`, after a GC run); `NotFound` if absent.
    async fn delete(&self, name: &str, sync: bool) -> Result<()>;

    /// Every record of the namespace, by name.
    async fn list(&self) -> Result<Vec<ImageRecord>>;
}

/// containerd's diff service, Apply: unpacks a layer blob onto mounts.
#[async_trait]
pub trait Applier: Send + Sync {
    /// Applies the layer blob `digest` (of `media_type`, `size` bytes)
    /// onto the mounts of an active snapshot and returns the uncompressed
    /// digest (diffID) of what was applied. A missing blob is `NotFound`.
    async fn apply(
        &self,
        media_type: &str,
        digest: &str,
        size: i64,
        mounts: &[Mount],
        lease: &LeaseId,
    ) -> Result<String>;
}
