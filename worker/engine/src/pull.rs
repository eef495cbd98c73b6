//! Pulling a base image from a registry into containerd, leaving it as
//! `ctr images pull` (containerd's own pull and unpacker) would: the index
//! and the host platform's manifest, config and layers in the content
//! store, each blob labelled `containerd.io/distribution.source.<host>`,
//! the parents labelled with `containerd.io/gc.ref.content.*` for their
//! children, and an image record naming the index (or manifest).
//! Unpacking (chainID snapshots, `containerd.io/uncompressed`,
//! `containerd.io/gc.ref.snapshot.<snapshotter>`) is [`crate::base`]'s.
//!
//! Everything is written under the caller's lease from its first byte; the
//! image record comes last, so a pull that fails leaves nothing but what
//! the lease holds, and that goes with the lease. A blob already in the
//! store is not fetched again. Layers download three at a time (as
//! containerd), each streamed into a content ingest with its digest
//! checked on the way; a dropped connection is retried from the bytes
//! already written (an HTTP Range request).

use crate::base::{choose_platform, BaseImage};
use crate::error::{Result, WorkerError};
use crate::oci::{self, Descriptor, ImageConfigJson, ImageIndex, ImageManifest};
use crate::progress::{Progress, ProgressEvent};
use crate::resolve::{Decision, ResolveMode};
use crate::services::Services;
use kiln_registry::{Client, RegistryError};
use kiln_snapshot::containerd::{ImageRecord, LeaseId};
use kiln_snapshot::services::{write_blob, LeaseResource};
use kiln_types::reference::Reference;
use kiln_types::Digest;
use sha2::Digest as _;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Layers downloaded at once (containerd's default `max_concurrent_downloads`).
pub const PARALLEL_LAYERS: usize = 3;

/// How often one layer's download is retried after its connection dropped.
pub const RETRIES: usize = 3;

/// The least time between two progress updates of one layer.
const PROGRESS_EVERY: Duration = Duration::from_millis(200);

/// containerd's label of a blob's origin (`.<host>` = `<repo>[,<repo>...]`).
pub const SOURCE_LABEL_PREFIX: &str = "containerd.io/distribution.source.";

/// Where a pull reports its progress: statuses of one vertex.
#[derive(Clone, Debug)]
pub struct Reporter {
    pub progress: Progress,
    /// The vertex the statuses belong to; `None` reports nothing.
    pub vertex: Option<usize>,
}

impl Reporter {
    /// Reports nothing.
    pub fn none() -> Self {
        Reporter {
            progress: Progress::none(),
            vertex: None,
        }
    }

    async fn status(&self, id: &str, current: u64, total: u64, started: SystemTime, done: bool) {
        if let Some(vertex) = self.vertex {
            self.progress
                .send(ProgressEvent::Status {
                    vertex,
                    id: id.to_string(),
                    current,
                    total,
                    started,
                    completed: done.then(SystemTime::now),
                })
                .await;
        }
    }
}

fn registry_error(image: &str, source: RegistryError) -> WorkerError {
    if let RegistryError::ManifestUnknown { .. } = source {
        if let Ok(r) = Reference::parse(image) {
            return WorkerError::ManifestUnknown {
                image: image.to_string(),
                object: r.object().to_string(),
                registry: r.domain,
            };
        }
    }
    WorkerError::Registry {
        image: image.to_string(),
        error: Box::new(source),
    }
}

fn pull_error(image: &str, reason: impl Into<String>) -> WorkerError {
    WorkerError::Pull {
        image: image.to_string(),
        reason: reason.into(),
    }
}

/// The distribution source label of a blob from `r`, as containerd's
/// `AppendDistributionSourceLabel` spells it: the key names the registry's
/// host name (without the port), the value lists the repositories the
/// blob is known in, sorted, comma-separated; `existing` is the value
/// already on the blob.
pub fn source_label(r: &Reference, existing: Option<&str>) -> (String, String) {
    let host = match r.domain.rsplit_once(':') {
        // `[::1]:5000`, `127.0.0.1:5000`, `registry:5000`; a bare IPv6
        // address keeps its colons.
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(':') => h,
        _ => r.domain.as_str(),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let mut repos: Vec<&str> = existing
        .map(|v| v.split(',').filter(|s| !s.is_empty()).collect())
        .unwrap_or_default();
    repos.push(&r.path);
    repos.sort_unstable();
    repos.dedup();
    (format!("{SOURCE_LABEL_PREFIX}{host}"), repos.join(","))
}

/// containerd's `ChildGCLabels` for the children of one parent: configs
/// `containerd.io/gc.ref.content.config`, manifests `...m.<i>`, layers
/// `...l.<i>`, anything else `...<i>`, each counter running over the
/// children of its kind.
pub fn child_gc_labels(children: &[Descriptor]) -> HashMap<String, String> {
    let mut counters: HashMap<&str, usize> = HashMap::new();
    let mut labels = HashMap::new();
    for c in children {
        let mt = c.media_type().to_string();
        let prefix = if is_config(&mt) {
            "containerd.io/gc.ref.content.config"
        } else if mt == oci::MEDIA_OCI_MANIFEST || mt == oci::MEDIA_DOCKER_MANIFEST {
            "containerd.io/gc.ref.content.m."
        } else if is_layer(&mt) {
            "containerd.io/gc.ref.content.l."
        } else {
            "containerd.io/gc.ref.content."
        };
        let n = counters.entry(prefix).or_insert(0);
        let key = if *n > 0 || prefix.ends_with('.') {
            format!("{prefix}{n}")
        } else {
            prefix.to_string()
        };
        *n += 1;
        labels.insert(key, c.digest().to_string());
    }
    labels
}

fn is_config(mt: &str) -> bool {
    mt == oci::MEDIA_OCI_CONFIG || mt == "application/vnd.docker.container.image.v1+json"
}

fn is_layer(mt: &str) -> bool {
    mt.starts_with("application/vnd.oci.image.layer.")
        || mt.starts_with("application/vnd.docker.image.rootfs.")
}

use oci::is_index;

/// Everything one pull shares.
struct Puller {
    svc: Services,
    client: Client,
    reference: Reference,
    /// The name as the user wrote it after normalization, for messages.
    image: String,
    lease: LeaseId,
    report: Reporter,
    /// The platform picked from an index.
    platform: kiln_solver::Platform,
}

/// Pulls `reference` (normalized) into the store under `lease` and points
/// the image record `name` at it; from an index, the manifest for
/// `platform` (`None`: the worker's) and its blobs. Returns the record.
pub async fn pull(
    svc: &Services,
    client: &Client,
    reference: &Reference,
    name: &str,
    platform: Option<&kiln_solver::Platform>,
    lease: &LeaseId,
    report: Reporter,
) -> Result<ImageRecord> {
    let p = Arc::new(Puller {
        svc: svc.clone(),
        client: client.clone(),
        reference: reference.clone(),
        image: name.to_string(),
        lease: lease.clone(),
        report,
        platform: platform.cloned().unwrap_or_else(oci::worker_platform),
    });
    p.run().await
}

impl Puller {
    async fn run(self: &Arc<Self>) -> Result<ImageRecord> {
        let started = SystemTime::now();
        let resolve_id = format!("resolve {}", self.reference);
        self.report.status(&resolve_id, 0, 0, started, false).await;
        let resolved = self
            .client
            .resolve(&self.reference)
            .await
            .map_err(|e| registry_error(&self.image, e))?;
        self.report.status(&resolve_id, 0, 0, started, true).await;
        let top = Digest::parse(&resolved.digest).ok_or_else(|| {
            pull_error(
                &self.image,
                format!("the registry answered digest {:?}", resolved.digest),
            )
        })?;
        // Children are written before their parents, so a parent's GC
        // labels never point at something missing.
        let (manifest_digest, manifest_bytes, index) = if is_index(&resolved.media_type) {
            let index: ImageIndex = serde_json::from_slice(&resolved.bytes)
                .map_err(|e| pull_error(&self.image, format!("index {top}: {e}")))?;
            let chosen = choose_platform(&index, &self.platform)
                .map_err(|present| platform_missing(&self.image, &self.platform, &present))?
                .clone();
            let d = chosen.digest().to_string();
            let bytes = self.manifest(&d).await?;
            (d, bytes, Some(index))
        } else {
            (resolved.digest.clone(), resolved.bytes.clone(), None)
        };
        let manifest: ImageManifest = oci::manifest_from_slice(&manifest_bytes)
            .map_err(|e| pull_error(&self.image, format!("manifest {manifest_digest}: {e}")))?;
        let mt = manifest
            .media_type()
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_else(|| oci::MEDIA_OCI_MANIFEST.to_string());
        if mt != oci::MEDIA_OCI_MANIFEST && mt != oci::MEDIA_DOCKER_MANIFEST {
            return Err(pull_error(
                &self.image,
                format!("manifest {manifest_digest} has media type {mt}, which kiln cannot pull"),
            ));
        }

        // Config and layers, three at a time.
        let mut blobs = vec![manifest.config().clone()];
        blobs.extend(manifest.layers().iter().cloned());
        let limit = Arc::new(tokio::sync::Semaphore::new(PARALLEL_LAYERS));
        let mut tasks = tokio::task::JoinSet::new();
        for b in blobs {
            let p = self.clone();
            let limit = limit.clone();
            tasks.spawn(async move {
                let _permit = limit
                    .acquire()
                    .await
                    .map_err(|_| pull_error(&p.image, "download limiter closed"))?;
                p.blob(&b).await
            });
        }
        let mut first_error = None;
        while let Some(r) = tasks.join_next().await {
            let r =
                r.unwrap_or_else(|e| Err(pull_error(&self.image, format!("download task: {e}"))));
            if let Err(e) = r {
                if first_error.is_none() {
                    first_error = Some(e);
                    // The others stop: this pull fails anyway.
                    tasks.abort_all();
                }
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }

        let mut children = vec![manifest.config().clone()];
        children.extend(manifest.layers().iter().cloned());
        self.write_small(
            &manifest_digest,
            &manifest_bytes,
            child_gc_labels(&children),
        )
        .await?;
        if let Some(index) = &index {
            // containerd labels every child of the index, fetched or not.
            self.write_small(
                top.as_str(),
                &resolved.bytes,
                child_gc_labels(index.manifests()),
            )
            .await?;
        }
        let record = ImageRecord {
            name: self.image.clone(),
            media_type: resolved.media_type.clone(),
            digest: top.to_string(),
            size: i64::try_from(resolved.bytes.len()).unwrap_or(i64::MAX),
            labels: self.svc.image_labels(),
            annotations: HashMap::new(),
        };
        self.svc.images.put(&record, Some(&self.lease)).await?;
        Ok(record)
    }

    /// A platform manifest by digest: from the store if there, else the
    /// registry (which checks its digest).
    async fn manifest(&self, digest: &str) -> Result<Vec<u8>> {
        match self.svc.content.read(digest).await {
            Ok(b) => return Ok(b),
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        self.client
            .fetch_manifest(&self.reference, digest)
            .await
            .map_err(|e| registry_error(&self.image, e))
    }

    /// The labels a blob gets: its distribution source, merged with what
    /// it already says.
    async fn labels_for(
        &self,
        digest: &str,
        mut labels: HashMap<String, String>,
    ) -> Result<HashMap<String, String>> {
        let existing = match self.svc.content.info(digest).await {
            Ok(i) => Some(i.labels),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        };
        let (k, v) = source_label(
            &self.reference,
            existing
                .as_ref()
                .and_then(|l| {
                    l.get(&format!(
                        "{SOURCE_LABEL_PREFIX}{}",
                        host_key(&self.reference)
                    ))
                })
                .map(String::as_str),
        );
        labels.insert(k, v);
        Ok(labels)
    }

    /// Writes a manifest or index (already verified) with its labels.
    async fn write_small(
        &self,
        digest: &str,
        bytes: &[u8],
        gc: HashMap<String, String>,
    ) -> Result<()> {
        let labels = self.labels_for(digest, gc).await?;
        let written = write_blob(&*self.svc.content, bytes, labels, &self.lease).await?;
        if written.as_str() != digest {
            return Err(digest_mismatch(&self.reference, digest, written.as_str()));
        }
        Ok(())
    }

    /// One config or layer blob: kept if the store has it, else streamed
    /// from the registry with its digest checked.
    async fn blob(&self, desc: &Descriptor) -> Result<()> {
        let digest = desc.digest().to_string();
        let size = desc.size();
        let started = SystemTime::now();
        let show = is_layer(desc.media_type().as_ref());
        // Leased before it is looked at, so a blob found in the store
        // cannot be collected between the look and its use.
        self.svc
            .leases
            .add_resource(&self.lease, &LeaseResource::Content(digest.clone()))
            .await?;
        match self.svc.content.info(&digest).await {
            Ok(info) if u64::try_from(info.size).ok() == Some(size) => {
                let labels = self.labels_for(&digest, HashMap::new()).await?;
                self.svc.content.set_labels(&digest, labels).await?;
                if show {
                    self.report.status(&digest, size, size, started, true).await;
                }
                return Ok(());
            }
            Ok(_) => {}
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(e.into()),
        }
        let expected = Digest::parse(&digest)
            .ok_or_else(|| pull_error(&self.image, format!("bad digest {digest}")))?;
        let mut w = self.svc.content.writer(&self.lease).await?;
        let mut hasher = sha2::Sha256::new();
        let mut written: u64 = 0;
        let mut retries = 0;
        let mut last_report = Instant::now();
        'attempts: loop {
            let mut reader = match self
                .client
                .fetch_blob(&self.reference, &digest, written)
                .await
            {
                Ok(r) => r,
                Err(e) if retryable(&e) && retries < RETRIES => {
                    retries += 1;
                    tracing::info!(image = %self.image, blob = %digest, error = %e, retries, "retrying blob download");
                    tokio::time::sleep(backoff(retries)).await;
                    continue 'attempts;
                }
                Err(e) => return Err(registry_error(&self.image, e)),
            };
            // A registry that ignored the Range header sends from 0.
            let mut skip = written.saturating_sub(reader.offset);
            loop {
                match reader.chunk().await {
                    Ok(Some(mut chunk)) => {
                        if skip > 0 {
                            let n = usize::try_from(skip.min(chunk.len() as u64)).unwrap_or(0);
                            let _ = chunk.split_to(n);
                            skip -= n as u64;
                        }
                        if chunk.is_empty() {
                            continue;
                        }
                        written += chunk.len() as u64;
                        if written > size {
                            return Err(pull_error(
                                &self.image,
                                format!(
                                    "blob {digest} is longer than the {size} bytes its manifest says"
                                ),
                            ));
                        }
                        hasher.update(&chunk);
                        w.write(&chunk).await?;
                        if show && last_report.elapsed() >= PROGRESS_EVERY {
                            last_report = Instant::now();
                            self.report
                                .status(&digest, written, size, started, false)
                                .await;
                        }
                    }
                    Ok(None) if written == size => break 'attempts,
                    Ok(None) => {
                        // The body ended early: the connection dropped.
                        if retries < RETRIES {
                            retries += 1;
                            tracing::info!(image = %self.image, blob = %digest, written, retries, "blob body ended early; resuming");
                            tokio::time::sleep(backoff(retries)).await;
                            continue 'attempts;
                        }
                        return Err(pull_error(
                            &self.image,
                            format!(
                                "blob {digest}: the registry sent {written} of {size} bytes, \
                                 {RETRIES} retries did not finish it"
                            ),
                        ));
                    }
                    Err(e) if retryable(&e) && retries < RETRIES => {
                        retries += 1;
                        tracing::info!(image = %self.image, blob = %digest, written, error = %e, retries, "blob download dropped; resuming");
                        tokio::time::sleep(backoff(retries)).await;
                        continue 'attempts;
                    }
                    Err(e) => return Err(registry_error(&self.image, e)),
                }
            }
        }
        let got = format!("sha256:{}", hex::encode(hasher.finalize()));
        if got != digest {
            // The ingest is never committed; it goes with the lease.
            return Err(digest_mismatch(&self.reference, &digest, &got));
        }
        let labels = self.labels_for(&digest, HashMap::new()).await?;
        w.commit(&expected, labels).await?;
        if show {
            self.report.status(&digest, size, size, started, true).await;
        }
        Ok(())
    }
}

/// The largest image config kiln reads from a registry into memory.
pub const MAX_CONFIG: u64 = 16 << 20;

fn parse_reference(name: &str) -> Result<Reference> {
    Reference::parse(name).map_err(|e| pull_error(name, e.to_string()))
}

/// The image store's record of `name` with the manifest for `platform`,
/// if there is one. A record of an index whose manifest for `platform`
/// was never pulled (another platform's was) counts as missing.
async fn local(
    svc: &Services,
    name: &str,
    platform: Option<&kiln_solver::Platform>,
) -> Result<Option<BaseImage>> {
    match crate::base::load(svc, name, platform).await {
        Ok(b) => Ok(Some(b)),
        Err(WorkerError::ImageNotFound { .. }) => Ok(None),
        Err(e) if platform.is_some() && e.kind() == kiln_types::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Base image `name` (normalized) for `platform` (`None`: the worker's)
/// by the resolve rule ([`crate::resolve`]): from the store, or pulled
/// under `lease` first.
/// With `pin` (what the frontend resolved `name` to in this build) that
/// exact index or manifest is used: the store's if the record points at
/// it, else pulled by digest, with no second look at the tag.
/// Also says whether the store had it (nothing was pulled).
#[allow(
    clippy::too_many_arguments,
    reason = "one call site (the source op); a struct would only rename the same fields"
)]
pub async fn base_image(
    svc: &Services,
    client: &Client,
    name: &str,
    platform: Option<&kiln_solver::Platform>,
    mode: ResolveMode,
    pin: Option<&str>,
    lease: &LeaseId,
    report: Reporter,
) -> Result<(BaseImage, bool)> {
    let r = parse_reference(name)?;
    let started = SystemTime::now();
    let found = local(svc, name, platform).await?;
    // BuildKit's image source shows `resolve REF` in its step whether the
    // store or a registry answers; a pull shows it itself.
    let resolved_locally = |b: BaseImage| async {
        let shown = Reference {
            digest: pin.map(str::to_string).or_else(|| r.digest.clone()),
            ..r.clone()
        };
        let id = format!("resolve {shown}");
        report.status(&id, 0, 0, started, true).await;
        (b, true)
    };
    if let Some(digest) = pin {
        if let Some(b) = found.filter(|b| b.target == digest) {
            return Ok(resolved_locally(b).await);
        }
        let pinned = Reference {
            digest: Some(digest.to_string()),
            ..r
        };
        pull(svc, client, &pinned, name, platform, lease, report).await?;
        return Ok((crate::base::load(svc, name, platform).await?, false));
    }
    match (mode.decide(r.digest.is_some(), found.is_some()), found) {
        (Decision::UseLocal, Some(b)) => Ok(resolved_locally(b).await),
        (Decision::UseLocal | Decision::PullMissing | Decision::AskRegistry, _) => {
            pull(svc, client, &r, name, platform, lease, report).await?;
            Ok((crate::base::load(svc, name, platform).await?, false))
        }
    }
}

/// The config of base image `name` (normalized) for `platform` (`None`:
/// the worker's) by the resolve rule,
/// for the frontend: from the store, or read from the registry (manifest
/// and config only, stored nowhere; the source op pulls the image). Also
/// returns the index or manifest digest it came from, to pin.
/// The lookup shows as BuildKit's `[internal] load metadata for <name>`
/// vertex on `report` (its `vertex` is the id to use), whether the
/// registry was asked or not, as BuildKit shows every one; named with
/// platform `shown` when there is one (`[linux/arm64 internal] …`: BuildKit's
/// dockerfile frontend names it so in a multi-platform build).
pub async fn base_config(
    svc: &Services,
    client: &Client,
    name: &str,
    platform: Option<&kiln_solver::Platform>,
    mode: ResolveMode,
    report: &Reporter,
    shown: Option<&kiln_solver::Platform>,
) -> Result<(ImageConfigJson, String)> {
    let r = parse_reference(name)?;
    let step = match shown {
        Some(p) => format!("[{p} internal] load metadata for {name}"),
        None => format!("[internal] load metadata for {name}"),
    };
    let started = SystemTime::now();
    if let Some(vertex) = report.vertex {
        report
            .progress
            .send(ProgressEvent::Started {
                vertex,
                name: step.clone(),
                at: started,
            })
            .await;
    }
    let looked_up = async {
        let found = local(svc, name, platform).await?;
        match (mode.decide(r.digest.is_some(), found.is_some()), found) {
            (Decision::UseLocal, Some(b)) => Ok((b.config, b.target)),
            (Decision::UseLocal | Decision::PullMissing | Decision::AskRegistry, found) => {
                let want = platform.cloned().unwrap_or_else(oci::worker_platform);
                remote_config(client, &r, &want, found).await
            }
        }
    }
    .await;
    if let Some(vertex) = report.vertex {
        report
            .progress
            .send(ProgressEvent::Completed {
                vertex,
                name: step,
                cached: false,
                error: looked_up.as_ref().err().map(|e| e.to_string()),
                at: SystemTime::now(),
            })
            .await;
    }
    looked_up
}

/// Resolves `r` at the registry and reads its config for `platform` (and
/// the digest it resolved to); an unchanged image (`found` has the same
/// digest) is read from the store.
async fn remote_config(
    client: &Client,
    r: &Reference,
    platform: &kiln_solver::Platform,
    found: Option<BaseImage>,
) -> Result<(ImageConfigJson, String)> {
    let image = r.to_string();
    let resolved = client
        .resolve(r)
        .await
        .map_err(|e| registry_error(&image, e))?;
    if let Some(b) = found.filter(|b| b.target == resolved.digest) {
        return Ok((b.config, b.target));
    }
    let manifest_bytes = if is_index(&resolved.media_type) {
        let index: ImageIndex = serde_json::from_slice(&resolved.bytes)
            .map_err(|e| pull_error(&image, format!("index {}: {e}", resolved.digest)))?;
        let chosen = choose_platform(&index, platform)
            .map_err(|present| platform_missing(&image, platform, &present))?
            .digest()
            .to_string();
        client
            .fetch_manifest(r, &chosen)
            .await
            .map_err(|e| registry_error(&image, e))?
    } else {
        resolved.bytes.clone()
    };
    let manifest: ImageManifest = oci::manifest_from_slice(&manifest_bytes)
        .map_err(|e| pull_error(&image, format!("manifest: {e}")))?;
    let cfg = manifest.config();
    let digest = cfg.digest().to_string();
    if cfg.size() > MAX_CONFIG {
        return Err(pull_error(
            &image,
            format!(
                "config {digest} is {} bytes, more than kiln reads",
                cfg.size()
            ),
        ));
    }
    let mut reader = client
        .fetch_blob(r, &digest, 0)
        .await
        .map_err(|e| registry_error(&image, e))?;
    let mut bytes = Vec::new();
    while let Some(chunk) = reader
        .chunk()
        .await
        .map_err(|e| registry_error(&image, e))?
    {
        bytes.extend_from_slice(&chunk);
        if bytes.len() as u64 > cfg.size() {
            break;
        }
    }
    let got = Digest::of(&bytes);
    if got.as_str() != digest {
        return Err(digest_mismatch(r, &digest, got.as_str()));
    }
    let config = serde_json::from_slice(&bytes)
        .map_err(|e| pull_error(&image, format!("config {digest}: {e}")))?;
    Ok((config, resolved.digest))
}

/// The host part of the source label key for `r`.
fn host_key(r: &Reference) -> String {
    source_label(r, None)
        .0
        .trim_start_matches(SOURCE_LABEL_PREFIX)
        .to_string()
}

fn digest_mismatch(r: &Reference, want: &str, got: &str) -> WorkerError {
    pull_error(
        &r.to_string(),
        format!(
            "digest mismatch: {} sent content hashing to {got} for {want}; nothing was stored",
            r.domain
        ),
    )
}

fn platform_missing(image: &str, want: &kiln_solver::Platform, present: &[String]) -> WorkerError {
    let listed = if present.is_empty() {
        "none".to_string()
    } else {
        present.join(", ")
    };
    pull_error(
        image,
        format!("no manifest for platform {want} (the index has: {listed})"),
    )
}

/// Whether a failed request may succeed when repeated from where it
/// stopped: a dropped connection, not a refusal.
fn retryable(e: &RegistryError) -> bool {
    e.kind() == kiln_types::ErrorKind::Unavailable
}

fn backoff(retry: usize) -> Duration {
    Duration::from_millis(200 * (1 << retry.min(4)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(mt: &str, d: char) -> Descriptor {
        oci::descriptor(mt, &format!("sha256:{}", d.to_string().repeat(64)), 1).expect("valid")
    }

    #[test]
    fn children_are_labelled_as_containerd_does() {
        let labels = child_gc_labels(&[
            desc(oci::MEDIA_OCI_CONFIG, 'c'),
            desc("application/vnd.oci.image.layer.v1.tar+gzip", 'a'),
            desc("application/vnd.docker.image.rootfs.diff.tar.gzip", 'b'),
        ]);
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        assert_eq!(labels["containerd.io/gc.ref.content.config"], d('c'));
        assert_eq!(labels["containerd.io/gc.ref.content.l.0"], d('a'));
        assert_eq!(labels["containerd.io/gc.ref.content.l.1"], d('b'));
        assert_eq!(labels.len(), 3);
        let index = child_gc_labels(&[
            desc(oci::MEDIA_OCI_MANIFEST, 'a'),
            desc(oci::MEDIA_DOCKER_MANIFEST, 'b'),
        ]);
        assert_eq!(index["containerd.io/gc.ref.content.m.0"], d('a'));
        assert_eq!(index["containerd.io/gc.ref.content.m.1"], d('b'));
    }

    #[test]
    fn the_source_label_names_the_host_without_its_port_and_merges_repos() {
        let r = Reference::parse("127.0.0.1:5000/base/img:1").expect("ref");
        assert_eq!(
            source_label(&r, None),
            (
                "containerd.io/distribution.source.127.0.0.1".to_string(),
                "base/img".to_string()
            )
        );
        assert_eq!(source_label(&r, Some("z,a")).1, "a,base/img,z");
        assert_eq!(source_label(&r, Some("base/img")).1, "base/img");
        let hub = Reference::parse("busybox").expect("ref");
        assert_eq!(
            source_label(&hub, None),
            (
                "containerd.io/distribution.source.docker.io".to_string(),
                "library/busybox".to_string()
            )
        );
    }
}
