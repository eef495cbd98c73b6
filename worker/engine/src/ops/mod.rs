//! The ops of the build graph over containerd: the engine's implementation
//! of the solver's `OpRunner`.

mod bindmount;
pub(crate) mod cachemount;
mod exec;
mod file;
mod layer;
mod loads;
pub use loads::Loads;
mod localfs;
mod merge;
mod remote;
mod secretmount;
mod source;
mod sshmount;

use crate::error::{Result, WorkerError};
use crate::progress::{Progress, ProgressEvent};
use crate::refs::Ref;
use crate::services::Services;
use kiln_shim::Executor;
use kiln_snapshot::containerd::LeaseId;
use kiln_solver::scheduler::{Claimed, OpRunner};
use kiln_solver::{Digest, FileActionKind, FileInput, Op, Vertex, VertexId};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Everything one build's ops share.
pub struct StepRunner {
    pub svc: Services,
    pub executor: Arc<dyn Executor>,
    /// Where host mount points of this build go.
    pub mount_dir: PathBuf,
    pub lease: LeaseId,
    /// What cache hits added to `lease` (each resource once).
    pub added: crate::lease::Added,
    /// The records the build hit, whose use is written at its end.
    pub uses: Arc<crate::cache::Uses>,
    /// Local sources by name (`context` -> directory).
    pub locals: HashMap<String, PathBuf>,
    /// OCI layouts by store id (`oci-layout://` sources).
    pub oci_stores: crate::layout::OciStores,
    pub progress: Progress,
    /// Content digests of local sources, kept between builds.
    pub hashes: Arc<crate::contenthash::HashCache>,
    /// Imported caches asked on a miss, and the answered vertices for
    /// cache export.
    pub remote: Arc<crate::remotecache::BuildCache>,
    /// The build's registry client (its credentials).
    pub registry: kiln_registry::Client,
    /// The build's resolve mode for base images.
    pub resolve_mode: crate::resolve::ResolveMode,
    /// The images the frontend resolved, by name.
    pub pinned: crate::resolve::Pinned,
    /// The client's secrets (`RUN --mount=type=secret`, secret env).
    pub secrets: Arc<dyn crate::secrets::SecretSource>,
    /// The client's SSH agents (`RUN --mount=type=ssh`).
    pub ssh: Arc<dyn crate::ssh::SshSource>,
    /// The client's uploads (an HTTP source of its session).
    pub uploads: Arc<dyn crate::uploads::UploadSource>,
    /// Bounds on each HTTP(S) download and git fetch.
    pub fetch_limits: crate::sources::limits::FetchLimits,
    /// Vertices already shown as started while they waited on another
    /// build's claim (`claim.rs`): not started twice.
    pub started: std::sync::Mutex<std::collections::HashSet<usize>>,
    /// The layers the build's image exporter will read, made into blobs
    /// as their steps commit; `None` when nothing exports an image.
    pub export_blobs: Option<crate::blobs::ExportBlobs>,
    /// Committed layers whose blob is made when their record is saved
    /// ([`crate::blobs::BlobPlan::AfterCommit`]), by top snapshot.
    pub blobs_after_commit: std::sync::Mutex<HashMap<String, kiln_snapshot::diff::Compression>>,
    /// The directories of the snapshots this build committed, by name.
    pub(crate) committed: std::sync::Mutex<HashMap<String, layer::Committed>>,
    /// When the sources that did no work show as done, and how.
    pub loads: loads::Loads,
}

impl std::fmt::Debug for StepRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepRunner")
            .field("lease", &self.lease)
            .field("mount_dir", &self.mount_dir)
            .finish_non_exhaustive()
    }
}

/// `Dockerfile:12: ` for a vertex with a location, else empty.
pub(crate) fn location(v: &Vertex) -> String {
    v.location
        .as_ref()
        .map(|l| format!("{}:{}: ", l.file, l.line))
        .unwrap_or_default()
}

impl StepRunner {
    /// Shows vertex `id` as started, unless it already is.
    /// Shows the completions of sources that answering `vertex` decided
    /// (`ran`: it runs, reading them).
    async fn answered(&self, vertex: &Vertex, ran: bool) {
        for shown in self.loads.answered(vertex, ran) {
            self.show_source(shown).await;
        }
    }

    async fn show_source(&self, (vertex, name, cached): loads::Shown) {
        self.progress
            .send(ProgressEvent::Completed {
                vertex,
                name,
                cached,
                error: None,
                at: SystemTime::now(),
            })
            .await;
    }

    /// The source completions no reader decided (one failed or the solve
    /// was cancelled first): `DONE`, as BuildKit ends them.
    pub async fn show_undecided_sources(&self) {
        for shown in self.loads.rest() {
            self.show_source(shown).await;
        }
    }

    async fn start(&self, id: VertexId, vertex: &Vertex) {
        let shown = self
            .started
            .lock()
            .map(|mut s| !s.insert(id.0))
            .unwrap_or(false);
        if !shown {
            self.progress
                .send(ProgressEvent::Started {
                    vertex: id.0,
                    name: vertex.name.clone(),
                    at: SystemTime::now(),
                })
                .await;
        }
    }
}

impl OpRunner for StepRunner {
    type Ref = Ref;
    type Error = WorkerError;
    /// Only steps and merges are claimed: sources run in every build (they
    /// are not cached) and scratch costs nothing.
    type Claim = Option<crate::claim::Claim>;

    async fn claim(
        &self,
        id: VertexId,
        key: &Digest,
        vertex: &Vertex,
        cancel: CancellationToken,
    ) -> Result<Claimed<Ref, Self::Claim>> {
        let works = match &vertex.op {
            Op::Exec(_) | Op::File(_) => true,
            Op::Merge(m) => !m.inputs.is_empty(),
            Op::Source(_) => false,
        };
        if !works {
            return Ok(Claimed::Ours(None));
        }
        let got = crate::claim::acquire(
            &self.svc.leases,
            key,
            &self.lease,
            &cancel,
            || self.start(id, vertex),
            || self.load(key, vertex),
        )
        .await?;
        Ok(match got {
            crate::claim::Acquired::Ours(c) => Claimed::Ours(Some(c)),
            crate::claim::Acquired::Answered(outs) => Claimed::Answered(outs),
        })
    }

    async fn release(&self, claim: Self::Claim) {
        if let Some(c) = claim {
            c.release().await;
        }
    }

    async fn input_digest(&self, vertex: &Vertex, index: usize, input: &Ref) -> Result<Digest> {
        match input {
            Ref::Chain(layers) => Ok(Digest::of(
                format!("chain:{}", crate::refs::top_snapshot(layers)).as_bytes(),
            )),
            Ref::Local { dir, excludes } => {
                // The content of what the op's copies select from this
                // input (the copies' own typed selections, so hashing
                // follows links and expands wildcards exactly as the copy
                // does), not of the whole directory.
                let mut selections: Vec<kiln_context::CopySelection> = Vec::new();
                if let Op::File(f) = &vertex.op {
                    for a in &f.actions {
                        if let (FileActionKind::Copy(c), Some(FileInput::Input(i))) =
                            (&a.action, a.secondary_input)
                        {
                            if i == index {
                                selections.push(crate::fileop::selection(c));
                            }
                        }
                    }
                }
                if let Op::Exec(e) = &vertex.op {
                    // A bind mount sees its selector's subtree.
                    for m in e.mounts.iter().filter(|m| m.input == Some(index)) {
                        let mut sel = kiln_context::CopySelection::all();
                        if !m.selector.is_empty() {
                            sel.src = m.selector.clone();
                        }
                        selections.push(sel);
                    }
                }
                // An op that reads the input as a filesystem sees all of it.
                if localfs::needs_filesystem(&vertex.op, index) {
                    selections.clear();
                }
                if selections.is_empty() {
                    selections.push(kiln_context::CopySelection::all());
                }
                let hashes = self.hashes.clone();
                let (dir, excludes) = (dir.clone(), excludes.clone());
                let loc = location(vertex);
                tokio::task::spawn_blocking(move || {
                    let mut text = String::from("local\n");
                    for sel in &selections {
                        let d = hashes.digest(&dir, sel, &excludes).map_err(|e| {
                            WorkerError::BadInput {
                                location: loc.clone(),
                                reason: crate::error::error_chain(&e),
                            }
                        })?;
                        text.push_str(d.as_str());
                        text.push('\n');
                    }
                    Ok(Digest::of(text.as_bytes()))
                })
                .await
                .map_err(|e| WorkerError::BadInput {
                    location: location(vertex),
                    reason: e.to_string(),
                })?
            }
        }
    }

    async fn load(&self, key: &Digest, vertex: &Vertex) -> Result<Option<Vec<Ref>>> {
        if matches!(vertex.op, Op::Source(_)) {
            return Ok(None);
        }
        if let Some(outs) =
            crate::cache::load(&self.svc, key, &self.lease, &self.added, &self.uses).await?
        {
            return Ok(Some(outs.into_iter().map(Ref::Chain).collect()));
        }
        Ok(crate::remotecache::import::load(
            &self.svc,
            &self.remote,
            key,
            &self.lease,
            &vertex.name,
        )
        .await?
        .map(|chain| vec![Ref::Chain(chain)]))
    }

    fn solved(&self, id: VertexId, key: &Digest, plan: &Digest, outputs: &[Ref]) {
        self.remote.note(id, key, plan, outputs);
    }

    fn answers_plans(&self) -> bool {
        self.remote.has_plans()
    }

    fn plan_known(&self, plan: &Digest) -> bool {
        self.remote.planned(plan).is_some()
    }

    /// An imported cache's plan record names the key it stands for; that
    /// key is then loaded as any other (the local cache first).
    async fn load_planned(
        &self,
        plan: &Digest,
        vertex: &Vertex,
    ) -> Result<Option<(Vec<Ref>, Digest)>> {
        let Some(key) = self.remote.planned(plan) else {
            return Ok(None);
        };
        Ok(self.load(&key, vertex).await?.map(|outs| (outs, key)))
    }

    async fn save(&self, key: &Digest, vertex: &Vertex, outputs: &[Ref]) -> Result<()> {
        if matches!(vertex.op, Op::Source(_)) {
            return Ok(());
        }
        let mut chains = Vec::with_capacity(outputs.len());
        for o in outputs {
            match o {
                Ref::Chain(l) => chains.push(l.clone()),
                Ref::Local { .. } => return Ok(()),
            }
        }
        for chain in &chains {
            self.blob_after_commit(chain).await;
        }
        // A record that cannot be saved costs a future rebuild, not this
        // build: the result itself is safe under the build's lease.
        if let Err(e) = crate::cache::save(
            &self.svc,
            key,
            &chains,
            crate::cache::TYPE_REGULAR,
            &vertex.name,
        )
        .await
        {
            tracing::warn!(vertex = %vertex.name, error = %e, "cannot save a cache record");
        }
        Ok(())
    }

    async fn cached(&self, id: VertexId, vertex: &Vertex) {
        self.answered(vertex, false).await;
        self.start(id, vertex).await;
        // A source answered by an equal one in flight (the same base image
        // for two platforms) did no work either: its readers decide.
        if matches!(vertex.op, Op::Source(_)) {
            if let Some(cached) = self.loads.defer(id.0, &vertex.name) {
                self.show_source((id.0, vertex.name.clone(), cached)).await;
            }
            return;
        }
        let at = SystemTime::now();
        self.progress
            .send(ProgressEvent::Completed {
                vertex: id.0,
                name: vertex.name.clone(),
                cached: true,
                error: None,
                at,
            })
            .await;
    }

    async fn run(
        &self,
        id: VertexId,
        vertex: Vertex,
        inputs: Vec<Ref>,
        cancel: CancellationToken,
    ) -> Result<Vec<Ref>> {
        let span = tracing::info_span!("vertex", id = id.0, name = %vertex.name);
        async {
            self.answered(&vertex, true).await;
            self.start(id, &vertex).await;
            let r = async {
                let inputs = self.filesystems(&vertex, inputs).await?;
                // Whether it was a cache hit: only a source can tell (a
                // base image the store had, unpacked); a step's hits are
                // found before it runs.
                match &vertex.op {
                    Op::Source(s) => self.source(id, &vertex, s, &cancel).await,
                    Op::Exec(e) => self
                        .exec(id, &vertex, e, &inputs, cancel)
                        .await
                        .map(|r| (r, false)),
                    Op::File(f) => self.file(id, &vertex, f, &inputs).await.map(|r| (r, false)),
                    Op::Merge(m) => self
                        .merge(&vertex, m, &inputs, &cancel)
                        .await
                        .map(|r| (r, false)),
                }
            }
            .await;
            let cached = matches!(r, Ok((_, true)));
            let r = r.map(|(refs, _)| refs);
            // A source that did no work shows as its readers decide.
            if cached && matches!(vertex.op, Op::Source(_)) {
                if let Some(cached) = self.loads.defer(id.0, &vertex.name) {
                    self.show_source((id.0, vertex.name.clone(), cached)).await;
                }
                return r;
            }
            // containerd or disk trouble in a step (a full disk while its
            // layer is written) names the step's line too.
            let r = r.map_err(|e| match e {
                WorkerError::Snapshot(error) if vertex.location.is_some() => WorkerError::AtStep {
                    location: location(&vertex),
                    error,
                },
                e => e,
            });
            self.progress
                .send(ProgressEvent::Completed {
                    vertex: id.0,
                    name: vertex.name.clone(),
                    cached,
                    // The vertex's own error as BuildKit shows it on the
                    // vertex: without the `Dockerfile:N: ` that names the
                    // vertex's line in the build's error; a cancelled step
                    // as BuildKit's `context canceled`, which clients show
                    // as CANCELED rather than as a failure.
                    error: r.as_ref().err().map(|e| {
                        if e.kind() == kiln_proto::ErrorKind::Cancelled {
                            return "context canceled".to_string();
                        }
                        let m = e.to_string();
                        m.strip_prefix(location(&vertex).as_str())
                            .map_or_else(|| m.clone(), str::to_string)
                    }),
                    at: SystemTime::now(),
                })
                .await;
            r
        }
        .instrument(span)
        .await
    }
}
