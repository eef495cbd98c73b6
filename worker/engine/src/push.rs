//! Pushing an image from the content store to a registry: the image
//! exporter's `push=true`, for the embedded CLI and kilnd alike.
//!
//! For each target name, bottom up, so a registry never holds a manifest
//! whose blobs are missing and a failed push leaves no tag behind:
//! 1. layers, at most [`PushOptions::concurrency`] at a time: `HEAD` first
//!    (present = skipped), then a cross-repository mount when the blob's
//!    `containerd.io/distribution.source.<registry>` label (or an earlier
//!    name of this push) names another repository of the same registry,
//!    else an upload streamed from the content store in bounded chunks;
//! 2. configs, the same way;
//! 3. manifests (by digest when they belong to an index);
//! 4. the index, or the single manifest, by the name's tag (by digest only
//!    for push-by-digest).
//!
//! Blobs are pushed as the content store holds them: the exporter has
//! already made every layer's blob in the requested compression (see
//! `blobs::ensure`), so a layer whose compressed blob did not exist yet
//! was compressed on the way here.
//!
//! The registry is behind [`PushTarget`] (implemented by
//! [`kiln_registry::Client`]), so the order and the skip/mount decisions
//! are tested on fakes.

use crate::error::{Result, WorkerError};
use crate::oci::{self, Descriptor, ImageIndex, ImageManifest};
use crate::progress::{LogStream, Progress, ProgressEvent};
use crate::services::Services;
use async_trait::async_trait;
use bytes::Bytes;
use kiln_registry::{HostsConfig, RegistryError};
use kiln_types::reference::Reference;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::{mpsc, Semaphore};

/// How many blobs upload at once by default (containerd's push default
/// is 3; BuildKit's is the same).
pub const DEFAULT_CONCURRENCY: usize = 3;

/// How many content-store chunks (1 MiB each) may wait for the network per
/// upload: bounds memory per blob.
const UPLOAD_QUEUE: usize = 4;

/// The registry verbs a push uses; [`kiln_registry::Client`] is the real
/// one.
#[async_trait]
pub trait PushTarget: Send + Sync + std::fmt::Debug {
    /// `HEAD` of a blob: its size when the repository has it.
    async fn blob_exists(
        &self,
        r: &Reference,
        digest: &str,
    ) -> std::result::Result<Option<u64>, RegistryError>;
    /// Mounts a blob from repository `from_path` of the same registry;
    /// `false` when the registry did not (the caller uploads instead).
    async fn mount_blob(
        &self,
        r: &Reference,
        digest: &str,
        from_path: &str,
    ) -> std::result::Result<bool, RegistryError>;
    /// Uploads a blob from `body`.
    async fn push_blob(
        &self,
        r: &Reference,
        digest: &str,
        size: u64,
        body: mpsc::Receiver<std::io::Result<Bytes>>,
    ) -> std::result::Result<(), RegistryError>;
    /// Puts a manifest or index under a tag or its digest; returns the
    /// digest the registry reports.
    async fn push_manifest(
        &self,
        r: &Reference,
        tag_or_digest: &str,
        media_type: &str,
        bytes: Vec<u8>,
    ) -> std::result::Result<String, RegistryError>;
}

#[async_trait]
impl PushTarget for kiln_registry::Client {
    async fn blob_exists(
        &self,
        r: &Reference,
        digest: &str,
    ) -> std::result::Result<Option<u64>, RegistryError> {
        kiln_registry::Client::blob_exists(self, r, digest).await
    }

    async fn mount_blob(
        &self,
        r: &Reference,
        digest: &str,
        from_path: &str,
    ) -> std::result::Result<bool, RegistryError> {
        kiln_registry::Client::mount_blob(self, r, digest, from_path).await
    }

    async fn push_blob(
        &self,
        r: &Reference,
        digest: &str,
        size: u64,
        body: mpsc::Receiver<std::io::Result<Bytes>>,
    ) -> std::result::Result<(), RegistryError> {
        kiln_registry::Client::push_blob(self, r, digest, size, body).await
    }

    async fn push_manifest(
        &self,
        r: &Reference,
        tag_or_digest: &str,
        media_type: &str,
        bytes: Vec<u8>,
    ) -> std::result::Result<String, RegistryError> {
        kiln_registry::Client::push_manifest(self, r, tag_or_digest, media_type, bytes).await
    }
}

/// What to push and how.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushOptions {
    /// Push the image by digest only, leaving no tag (`push-by-digest`).
    pub by_digest: bool,
    /// Blobs uploading at once.
    pub concurrency: usize,
    /// `registry.insecure=true` (buildx's meaning): the registries of this
    /// push may be reached over plain HTTP or without verifying TLS,
    /// whatever kilnd.toml says about them.
    pub insecure: bool,
}

impl Default for PushOptions {
    fn default() -> Self {
        PushOptions {
            by_digest: false,
            concurrency: DEFAULT_CONCURRENCY,
            insecure: false,
        }
    }
}

/// How one blob got to the registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlobOutcome {
    /// The repository already had it (`HEAD`).
    Exists,
    /// Mounted from another repository of the registry.
    Mounted { from: String },
    /// Uploaded.
    Uploaded,
}

/// What a push did, per name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pushed {
    /// The names pushed (as given).
    pub names: Vec<String>,
    /// The digest of the pushed root (index or manifest).
    pub digest: String,
    /// Each blob of each name and how it got there.
    pub blobs: Vec<(String, String, BlobOutcome)>,
}

/// The image to push: the root descriptor and the blobs under it, in the
/// order they must reach a registry.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Plan {
    /// Layers (every manifest's, each once).
    layers: Vec<Descriptor>,
    /// Configs (each once).
    configs: Vec<Descriptor>,
    /// Manifests under an index, pushed by digest.
    children: Vec<(Descriptor, Vec<u8>)>,
    /// The root: an index, or the single manifest.
    root: (Descriptor, Vec<u8>),
}

/// `name` as a reference to push to.
fn parse_target(name: &str) -> Result<Reference> {
    Reference::parse(name).map_err(|e| WorkerError::BadInput {
        location: String::new(),
        reason: format!("push target {name:?}: {e}"),
    })
}

/// The registry configuration of a push to `names`: `hosts`, with the
/// registries of `names` marked `http` and `insecure` when the push is
/// (`registry.insecure=true`).
pub fn hosts_for(hosts: &HostsConfig, names: &[String], insecure: bool) -> Result<HostsConfig> {
    let mut out = hosts.clone();
    if insecure {
        for name in names {
            let host = out.hosts.entry(parse_target(name)?.domain).or_default();
            host.http = Some(true);
            host.insecure = true;
        }
    }
    Ok(out)
}

/// A registry error of the push to `r`.
fn push_error(r: &Reference) -> impl Fn(RegistryError) -> WorkerError + '_ {
    move |error| WorkerError::Push {
        name: r.to_string(),
        error: Box::new(error),
    }
}

fn invalid(digest: &str, reason: impl Into<String>) -> WorkerError {
    WorkerError::InvalidImage {
        image: digest.to_string(),
        reason: reason.into(),
    }
}

use oci::is_index;

/// Reads the image under `root` from the content store: index ->
/// manifests -> configs and layers.
async fn plan(svc: &Services, root: &Descriptor) -> Result<Plan> {
    let root_digest = root.digest().to_string();
    let root_bytes = svc.content.read(&root_digest).await?;
    let mut plan = Plan {
        layers: Vec::new(),
        configs: Vec::new(),
        children: Vec::new(),
        root: (root.clone(), root_bytes.clone()),
    };
    let manifests: Vec<(Descriptor, Vec<u8>)> = if is_index(root.media_type().as_ref()) {
        let index: ImageIndex = serde_json::from_slice(&root_bytes)
            .map_err(|e| invalid(&root_digest, format!("index: {e}")))?;
        let mut out = Vec::new();
        for m in index.manifests() {
            let bytes = svc.content.read(m.digest().as_ref()).await?;
            out.push((m.clone(), bytes));
        }
        plan.children = out.clone();
        out
    } else {
        vec![(root.clone(), root_bytes)]
    };
    let mut seen = BTreeSet::new();
    for (d, bytes) in &manifests {
        let digest = d.digest().to_string();
        let m: ImageManifest = oci::manifest_from_slice(bytes)
            .map_err(|e| invalid(&digest, format!("manifest: {e}")))?;
        for l in m.layers() {
            if seen.insert(l.digest().to_string()) {
                plan.layers.push(l.clone());
            }
        }
        if seen.insert(m.config().digest().to_string()) {
            plan.configs.push(m.config().clone());
        }
    }
    Ok(plan)
}

/// The repositories of `r`'s registry a blob may be mounted from, per its
/// `containerd.io/distribution.source.<registry>` label (a comma-separated
/// list, as containerd writes it), excluding `r`'s own. A candidate of another port on the same host only
/// costs a refused mount: the upload follows.
fn mount_sources(labels: &HashMap<String, String>, r: &Reference) -> Vec<String> {
    let (key, _) = crate::pull::source_label(r, None);
    let mut out: Vec<String> = Vec::new();
    for p in labels.get(&key).into_iter().flat_map(|v| v.split(',')) {
        let p = p.trim();
        if !p.is_empty() && p != r.path && !out.iter().any(|o| o == p) {
            out.push(p.to_string());
        }
    }
    out
}

/// Pushes the image whose root `root` is in the content store to every
/// name of `names` (normalized references with a tag, or a digest for
/// push-by-digest). Progress: per name a `pushing layers` vertex with a
/// log line per blob, then `pushing manifest for NAME`; vertex numbers
/// start at `first_vertex`.
pub async fn push_image(
    svc: &Services,
    target: Arc<dyn PushTarget>,
    root: &Descriptor,
    names: &[String],
    opts: &PushOptions,
    progress: &Progress,
    first_vertex: usize,
) -> Result<Pushed> {
    let plan = plan(svc, root).await?;
    let root_digest = root.digest().to_string();
    let mut pushed = Pushed {
        names: names.to_vec(),
        digest: root_digest.clone(),
        blobs: Vec::new(),
    };
    // Repositories of this push that already hold every blob, per
    // registry: later names of the same registry mount from them.
    let mut done_repos: Vec<Reference> = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let r = parse_target(name)?;
        let layers_vertex = first_vertex + 2 * i;
        let manifest_vertex = layers_vertex + 1;
        let from_earlier: Vec<String> = done_repos
            .iter()
            .filter(|d| d.domain == r.domain && d.path != r.path)
            .map(|d| d.path.clone())
            .collect();

        let step = "pushing layers".to_string();
        let started = SystemTime::now();
        progress
            .send(ProgressEvent::Started {
                vertex: layers_vertex,
                name: step.clone(),
                at: started,
            })
            .await;
        let blobs = async {
            let mut out = push_blobs(
                svc,
                &target,
                &r,
                &plan.layers,
                &from_earlier,
                opts,
                progress,
                layers_vertex,
            )
            .await?;
            out.extend(
                push_blobs(
                    svc,
                    &target,
                    &r,
                    &plan.configs,
                    &from_earlier,
                    opts,
                    progress,
                    layers_vertex,
                )
                .await?,
            );
            Ok::<_, WorkerError>(out)
        }
        .await;
        completed(progress, layers_vertex, &step, blobs.as_ref().err()).await;
        pushed
            .blobs
            .extend(blobs?.into_iter().map(|(d, o)| (name.clone(), d, o)));

        let step = format!("pushing manifest for {name}");
        progress
            .send(ProgressEvent::Started {
                vertex: manifest_vertex,
                name: step.clone(),
                at: SystemTime::now(),
            })
            .await;
        let manifests = async {
            for (d, bytes) in &plan.children {
                put_manifest(&*target, &r, d, bytes, d.digest().as_ref()).await?;
            }
            let reference = match (&r.tag, opts.by_digest) {
                (Some(tag), false) => tag.clone(),
                _ => root_digest.clone(),
            };
            put_manifest(&*target, &r, &plan.root.0, &plan.root.1, &reference).await
        }
        .await;
        completed(progress, manifest_vertex, &step, manifests.as_ref().err()).await;
        manifests?;
        done_repos.push(r);
    }
    Ok(pushed)
}

async fn completed(progress: &Progress, vertex: usize, name: &str, error: Option<&WorkerError>) {
    progress
        .send(ProgressEvent::Completed {
            vertex,
            name: name.to_string(),
            cached: false,
            error: error.map(ToString::to_string),
            at: SystemTime::now(),
        })
        .await;
}

/// Puts one manifest or index and checks the digest the registry reports.
async fn put_manifest(
    target: &dyn PushTarget,
    r: &Reference,
    d: &Descriptor,
    bytes: &[u8],
    reference: &str,
) -> Result<()> {
    let want = d.digest().to_string();
    let got = target
        .push_manifest(r, reference, d.media_type().as_ref(), bytes.to_vec())
        .await
        .map_err(push_error(r))?;
    if !got.is_empty() && got != want {
        return Err(invalid(
            &want,
            format!("the registry stored it as {got} (for {r})"),
        ));
    }
    Ok(())
}

/// Pushes `blobs` to `r`, at most `opts.concurrency` at a time; `earlier`
/// are repositories of the same registry this push already filled.
#[allow(
    clippy::too_many_arguments,
    reason = "one call site; a struct would only rename them"
)]
async fn push_blobs(
    svc: &Services,
    target: &Arc<dyn PushTarget>,
    r: &Reference,
    blobs: &[Descriptor],
    earlier: &[String],
    opts: &PushOptions,
    progress: &Progress,
    vertex: usize,
) -> Result<Vec<(String, BlobOutcome)>> {
    let limit = Arc::new(Semaphore::new(opts.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for (i, b) in blobs.iter().enumerate() {
        let (svc, target, r, b, limit) = (
            svc.clone(),
            target.clone(),
            r.clone(),
            b.clone(),
            limit.clone(),
        );
        let earlier = earlier.to_vec();
        let status = BlobStatus {
            progress: progress.clone(),
            vertex,
            id: b.digest().to_string(),
            total: b.size(),
            started: SystemTime::now(),
        };
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await;
            let outcome = push_blob(&svc, &*target, &r, &b, &earlier, &status).await;
            if outcome.is_ok() {
                status.send(status.total, true).await;
            }
            (i, b.digest().to_string(), b.size(), outcome)
        });
    }
    let mut out: Vec<Option<(String, BlobOutcome)>> = vec![None; blobs.len()];
    let mut first_err = None;
    while let Some(joined) = tasks.join_next().await {
        let (i, digest, size, outcome) = match joined {
            Ok(done) => done,
            // Aborted after another blob failed.
            Err(e) if e.is_cancelled() => continue,
            Err(e) => {
                return Err(WorkerError::Panicked {
                    step: "pushing layers".into(),
                    message: e.to_string(),
                })
            }
        };
        match outcome {
            Ok(o) => {
                let line = match &o {
                    BlobOutcome::Exists => format!("{digest}: already exists\n"),
                    BlobOutcome::Mounted { from } => format!("{digest}: mounted from {from}\n"),
                    BlobOutcome::Uploaded => format!(
                        "{digest}: pushed {}\n",
                        bytesize::ByteSize(size).display().iec()
                    ),
                };
                progress
                    .send(ProgressEvent::Log {
                        vertex,
                        stream: LogStream::Stdout,
                        data: line.into_bytes(),
                    })
                    .await;
                out[i] = Some((digest, o));
            }
            Err(e) => {
                // Stop starting new uploads; the first error is the one
                // reported.
                tasks.abort_all();
                first_err.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(out.into_iter().flatten().collect())
}

/// How often an upload reports its bytes.
const STATUS_EVERY: u64 = 8 << 20;

/// One blob's line in the progress (BuildKit's VertexStatus: the digest,
/// bytes sent of its size).
#[derive(Clone)]
struct BlobStatus {
    progress: Progress,
    vertex: usize,
    id: String,
    total: u64,
    started: SystemTime,
}

impl BlobStatus {
    async fn send(&self, current: u64, done: bool) {
        self.progress
            .send(ProgressEvent::Status {
                vertex: self.vertex,
                id: self.id.clone(),
                current,
                total: self.total,
                started: self.started,
                completed: done.then(SystemTime::now),
            })
            .await;
    }
}

/// One layer of something other than an image (a remote cache's layers),
/// by the same rule as an image's blobs ([`push_blob`]), without progress.
pub(crate) async fn push_layer(
    svc: &Services,
    target: &dyn PushTarget,
    r: &Reference,
    layer: &Descriptor,
) -> Result<BlobOutcome> {
    let status = BlobStatus {
        progress: Progress::none(),
        vertex: 0,
        id: layer.digest().to_string(),
        total: layer.size(),
        started: SystemTime::now(),
    };
    push_blob(svc, target, r, layer, &[], &status).await
}

/// One blob: HEAD, else mount, else upload; then the source label records
/// `r` so later pushes to the registry can mount from it.
async fn push_blob(
    svc: &Services,
    target: &dyn PushTarget,
    r: &Reference,
    b: &Descriptor,
    earlier: &[String],
    status: &BlobStatus,
) -> Result<BlobOutcome> {
    let digest = b.digest().to_string();
    if target
        .blob_exists(r, &digest)
        .await
        .map_err(push_error(r))?
        .is_some()
    {
        return Ok(BlobOutcome::Exists);
    }
    let info = svc.content.info(&digest).await?;
    if info.size != oci::size_of(b) {
        return Err(invalid(
            &digest,
            format!(
                "the content store holds {} bytes, the manifest says {}",
                info.size,
                b.size()
            ),
        ));
    }
    let mut sources = mount_sources(&info.labels, r);
    for e in earlier {
        if !sources.contains(e) {
            sources.push(e.clone());
        }
    }
    let mut outcome = BlobOutcome::Uploaded;
    for from in sources {
        if target
            .mount_blob(r, &digest, &from)
            .await
            .map_err(push_error(r))?
        {
            outcome = BlobOutcome::Mounted { from };
            break;
        }
    }
    if outcome == BlobOutcome::Uploaded {
        let mut chunks = svc.content.read_stream(&digest).await?;
        let (tx, rx) = mpsc::channel(UPLOAD_QUEUE);
        status.send(0, false).await;
        let reporter = status.clone();
        let feed = tokio::spawn(async move {
            let (mut sent, mut reported) = (0u64, 0u64);
            while let Some(c) = chunks.recv().await {
                let c = c
                    .map(Bytes::from)
                    .map_err(|e| std::io::Error::other(e.to_string()));
                let failed = c.is_err();
                sent += c.as_ref().map_or(0, |b| b.len() as u64);
                if tx.send(c).await.is_err() || failed {
                    return;
                }
                if sent - reported >= STATUS_EVERY {
                    reported = sent;
                    reporter.send(sent, false).await;
                }
            }
        });
        let res = target.push_blob(r, &digest, b.size(), rx).await;
        feed.abort();
        res.map_err(push_error(r))?;
    }
    record_source(svc, r, &digest, &info.labels).await;
    Ok(outcome)
}

/// Adds `r`'s repository to the blob's source label for its registry (as
/// containerd's pull does), so later pushes there can mount it. Only a
/// hint: a failure is logged.
async fn record_source(
    svc: &Services,
    r: &Reference,
    digest: &str,
    labels: &HashMap<String, String>,
) {
    let (key, _) = crate::pull::source_label(r, None);
    let existing = labels.get(&key).map(String::as_str);
    if existing.is_some_and(|v| v.split(',').any(|p| p == r.path)) {
        return;
    }
    let (key, value) = crate::pull::source_label(r, existing);
    if let Err(e) = svc
        .content
        .set_labels(digest, HashMap::from([(key, value)]))
        .await
    {
        tracing::debug!(%digest, error = %e, "cannot record the blob's distribution source");
    }
}

#[cfg(test)]
mod tests;
