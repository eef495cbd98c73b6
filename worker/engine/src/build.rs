//! One build: a lease around everything it creates, the solve, the export,
//! and the cleanup that leaves only what the image record references.

use crate::contenthash::HashCache;
use crate::error::{Result, WorkerError};
use crate::export::{export_image, Exported};
use crate::ops::StepRunner;
use crate::progress::{Progress, ProgressEvent};
use crate::refs::Ref;
use crate::remotecache::BuildCache;
use crate::resolve::ResolveMode;
use crate::services::Services;
use kiln_shim::network::Cni;
use kiln_shim::{ContainerdExecutor, Containers, Executor};
use kiln_snapshot::containerd::LeaseId;
use kiln_snapshot::diff::Compression;
use kiln_snapshot::origin::LayerOrigin;
use kiln_snapshot::Containerd;
use kiln_solver::scheduler::Solver;
use kiln_solver::{Graph, ImageConfig, SolveError, VertexId};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How long a build's lease protects its objects after kiln stopped
/// renewing it (it died mid-build); see [`crate::lease`].
pub const BUILD_LEASE_EXPIRY: Duration = Duration::from_secs(3600);

/// Where an engine with state directory `state_dir` keeps its step
/// networks (namespaces, IPAM allocations): give it to
/// [`crate::network::NetworkMode::resolve`].
pub fn network_dir(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("net")
}

/// What to build and where the result goes.
#[derive(Clone, Debug)]
pub struct BuildRequest {
    pub graph: Graph,
    pub result: VertexId,
    /// The image config the frontend computed for the result.
    pub config: ImageConfig,
    /// Local sources by [`kiln_solver::SourceOp::local_key`] (`context` ->
    /// directory).
    pub locals: HashMap<String, PathBuf>,
    /// OCI layouts by store id (`oci-layout://` named contexts of the
    /// embedded CLI); kilnd gives none.
    pub oci_stores: crate::layout::OciStores,
    /// Image names to point at the result (normalized); may be empty.
    pub names: Vec<String>,
    pub compression: Compression,
    /// Caches read before the solve (`--cache-from`); a key the local
    /// cache misses but one of these holds is a hit.
    pub cache_imports: Vec<crate::remotecache::CacheImport>,
    /// Caches written after the solve (`--cache-to`), by
    /// [`Solved::export_image`] (inline) and [`Solved::export_cache`].
    pub cache_exports: Vec<crate::remotecache::CacheExport>,
    /// Registry credentials of whoever asked for the build (the client's
    /// session through kilnd, `~/.docker/config.json` in embedded mode);
    /// [`kiln_registry::Anonymous`] by default.
    pub credentials: Arc<dyn kiln_registry::Credentials>,
    /// When base images are pulled ([`crate::resolve`]); an LLB source's
    /// own `image.resolvemode` attribute wins.
    pub resolve_mode: ResolveMode,
    /// What the frontend resolved each base image to
    /// ([`BaseImages::pinned`]); empty for LLB from a client.
    pub pinned: crate::resolve::Pinned,
    /// Push the result to the registries of `names` after the export
    /// (`push=true`); `None` keeps it local.
    pub push: Option<crate::push::PushOptions>,
    /// The client's secrets; [`crate::secrets::NoSecrets`] by default.
    pub secrets: Arc<dyn crate::secrets::SecretSource>,
    /// The client's SSH agents; [`crate::ssh::NoSsh`] by default.
    pub ssh: Arc<dyn crate::ssh::SshSource>,
    /// The client's uploads (`http://buildkit-session/<id>` sources);
    /// [`crate::uploads::NoUploads`] by default.
    pub uploads: Arc<dyn crate::uploads::UploadSource>,
    /// The exporter's `rewrite-timestamp=true`: layer file times later
    /// than the config's `source_date_epoch` are clamped to it (nothing
    /// without an epoch).
    pub rewrite_timestamp: bool,
    /// An image exporter (image store, oci/docker tar, push) will read
    /// the result's layers in `compression`, unchanged: the steps on the
    /// result's chain make their blobs as they commit, in one pass with
    /// their diffID, instead of the export reading each layer again. False
    /// when nothing exports an image, or when the export rewrites the
    /// layers (`rewrite_timestamp`).
    pub export_blobs: bool,
    /// The image exporter's annotations (`annotation.*` options).
    pub annotations: crate::annotations::ExportAnnotations,
    /// The image exporter's media types (`oci-mediatypes`).
    pub media_types: crate::oci::MediaTypes,
    /// The image exporter's `force-compression`.
    pub force_compression: bool,
    /// The image exporter's `compression-level` (only blobs made new take
    /// it, so a build with one makes its blobs at the export, not as its
    /// steps commit).
    pub compression_level: kiln_snapshot::diff::Level,
}

/// One platform of a multi-platform build ([`Engine::build_index`]).
#[derive(Clone, Debug)]
pub struct PlatformTarget {
    pub platform: kiln_solver::Platform,
    /// The platform's result vertex in the build's graph.
    pub result: VertexId,
    /// Its image config, as the frontend computed it.
    pub config: ImageConfig,
}

/// The credentials of a build that has none.
pub fn anonymous() -> Arc<dyn kiln_registry::Credentials> {
    Arc::new(kiln_registry::Anonymous)
}

/// What a build produced.
#[derive(Clone, Debug)]
pub struct BuildResult {
    pub manifest_digest: String,
    /// The manifest's media type and size, for the result's descriptor
    /// (`containerimage.descriptor` in `kiln build --metadata-file`).
    pub manifest_media_type: String,
    pub manifest_size: i64,
    pub config_digest: String,
    pub names: Vec<String>,
    /// When the result is an index: each platform's manifest and config
    /// digest ([`Exported::children`]).
    pub children: Vec<(String, String)>,
}

/// The engine: containerd's services, an executor, a state directory for
/// mount points and FIFOs (never for data).
#[derive(Clone)]
pub struct Engine {
    svc: Services,
    executor: Arc<dyn Executor>,
    containers: Arc<dyn Containers>,
    state_dir: PathBuf,
    /// Where the steps' CNI state lives (shared by every engine on one
    /// bridge, so kilnd's tenants never get the same address).
    network_dir: PathBuf,
    /// Shared by every build of this engine: equal steps run once.
    solver: Arc<Solver<StepRunner>>,
    hashes: Arc<HashCache>,
    lease_timing: crate::lease::LeaseTiming,
    /// Registries: mirrors, TLS, plain HTTP (`[registry."host"]`).
    registry_hosts: Arc<kiln_registry::HostsConfig>,
    /// Bounds on each HTTP(S) download and git fetch (`[fetch]`), read
    /// when a build starts.
    fetch_limits: crate::sources::limits::SharedLimits,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("services", &self.svc)
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine on containerd: its services and its runc steps, which
    /// run on the host's network.
    pub fn new(ctrd: Containerd, state_dir: PathBuf) -> Self {
        Engine::with_network(ctrd, state_dir, None)
    }

    /// An engine whose sandboxed steps (LLB's default network) run on
    /// `cni`, or on the host's network when it is `None` (see
    /// [`crate::network::NetworkMode::resolve`]).
    pub fn with_network(ctrd: Containerd, state_dir: PathBuf, cni: Option<Cni>) -> Self {
        // One exec dir per process, so a later sweep can tell a dead
        // process's step files from a live one's.
        let mut executor = ContainerdExecutor::new(
            ctrd.clone(),
            state_dir
                .join(crate::sweep::EXEC_DIR)
                .join(crate::sweep::owner_dir_name()),
        );
        let mut network_dir = network_dir(&state_dir);
        if let Some(cni) = cni {
            network_dir = cni.state_dir().to_path_buf();
            executor = executor.with_cni(cni);
        }
        let executor = Arc::new(executor);
        let mut engine = Engine::with_services(
            Services::containerd(&ctrd),
            executor.clone(),
            executor,
            state_dir,
        );
        engine.network_dir = network_dir;
        engine
    }

    /// An engine on any implementation of the services (the in-memory
    /// fakes in tests). `containers` lists and removes what `executor`
    /// leaves behind when a build dies.
    pub fn with_services(
        svc: Services,
        executor: Arc<dyn Executor>,
        containers: Arc<dyn Containers>,
        state_dir: PathBuf,
    ) -> Self {
        let parallelism = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
            .max(4);
        let hashes = Arc::new(HashCache::open(&state_dir.join("contenthash")));
        Engine {
            svc,
            executor,
            containers,
            network_dir: network_dir(&state_dir),
            state_dir,
            solver: Arc::new(Solver::new(parallelism)),
            hashes,
            lease_timing: crate::lease::LeaseTiming::default(),
            registry_hosts: Arc::new(kiln_registry::HostsConfig::default()),
            fetch_limits: Default::default(),
        }
    }

    /// The same engine, told that the local sources below `root` are the
    /// caller's own trees (kilnd's kept contexts; see
    /// [`HashCache::with_owned_root`]): their hash records are trusted as
    /// soon as they are made, and a `COPY` from one hard-links the files
    /// it would write exactly as the tree holds them instead of copying
    /// their bytes. Call it before the first build.
    pub fn with_owned_locals(mut self, root: &std::path::Path) -> Self {
        self.hashes =
            Arc::new(HashCache::open(&self.state_dir.join("contenthash")).with_owned_root(root));
        self
    }

    /// The hash cache of local sources (to record what the caller's own
    /// trees received: [`HashCache::record_received`]).
    pub fn hash_cache(&self) -> &Arc<HashCache> {
        &self.hashes
    }

    /// The same engine with these registry settings (kilnd.toml's
    /// `[registry."host"]` tables); without, every registry is reached
    /// over HTTPS with the system roots (plain HTTP for localhost).
    pub fn with_registry(mut self, hosts: Arc<kiln_registry::HostsConfig>) -> Self {
        self.registry_hosts = hosts;
        self
    }

    /// The same engine with these bounds on remote fetches (kilnd.toml's
    /// `[fetch]`, `KILN_FETCH_*` of embedded builds); without, the
    /// defaults of [`crate::sources::limits::FetchLimits`]. Given
    /// [`crate::sources::limits::SharedLimits`], a build takes what they
    /// hold when it starts.
    pub fn with_fetch_limits(
        mut self,
        limits: impl Into<crate::sources::limits::SharedLimits>,
    ) -> Self {
        self.fetch_limits = limits.into();
        self
    }

    /// The registry settings builds use.
    pub fn registry_hosts(&self) -> &Arc<kiln_registry::HostsConfig> {
        &self.registry_hosts
    }

    /// A registry client for one build, with its credentials (one token
    /// cache per build).
    pub fn registry_client(
        &self,
        credentials: Arc<dyn kiln_registry::Credentials>,
    ) -> kiln_registry::Client {
        kiln_registry::Client::new(self.registry_hosts.clone(), credentials)
    }

    /// Base image configs for the frontend, resolved by `mode` with
    /// `credentials` (see [`BaseImages`]).
    pub fn base_images(
        &self,
        mode: ResolveMode,
        credentials: Arc<dyn kiln_registry::Credentials>,
    ) -> BaseImages {
        BaseImages {
            svc: self.svc.clone(),
            client: self.registry_client(credentials),
            mode,
            pinned: crate::resolve::Pinned::default(),
            progress: Progress::none(),
            next_vertex: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
            oci_stores: Arc::new(crate::layout::OciStores::new()),
            answered: Arc::default(),
        }
    }

    /// The same engine with other build lease timing (tests use seconds).
    pub fn with_lease_timing(mut self, timing: crate::lease::LeaseTiming) -> Self {
        self.lease_timing = timing;
        self
    }

    /// The services the engine runs on.
    pub fn services(&self) -> &Services {
        &self.svc
    }

    /// Every cache record, most recently used first, those running builds
    /// use (of this engine or any other process, [`crate::inuse`]) and the
    /// records below them in use.
    pub async fn disk_usage(&self) -> Result<Vec<crate::cache::RecordInfo>> {
        crate::prune::disk_usage(&self.svc).await
    }

    /// [`crate::prune::prune`], leaving alone the records in use.
    pub async fn prune(
        &self,
        opts: &crate::prune::PruneOptions,
    ) -> Result<crate::prune::PruneReport> {
        crate::prune::prune(&self.svc, opts).await
    }

    /// Cleans up after kiln processes that died mid-build (their step
    /// containers, host mounts and leases).
    /// The state directory is made (or tightened to) 0700 first.
    pub async fn sweep(&self) -> Result<()> {
        crate::sweep::private_state_dir(&self.state_dir).map_err(|source| WorkerError::Io {
            path: self.state_dir.display().to_string(),
            source,
        })?;
        crate::sweep::sweep(&self.svc, &*self.containers, &self.state_dir).await?;
        // The networks of dead steps (their containers are gone by now).
        let net = self.network_dir.clone();
        let _ = tokio::task::spawn_blocking(move || kiln_shim::network::sweep(&net)).await;
        Ok(())
    }

    /// The frontend's view of base image `name` (normalized), by kiln's
    /// default resolve rule without credentials.
    pub async fn image_config(&self, name: &str) -> Result<ImageConfig> {
        self.base_images(ResolveMode::Default, anonymous())
            .image_config(name, None, None)
            .await
    }

    /// Runs a build into the image store: solve, export an image named by
    /// `req.names`, release. Everything the build creates is under one
    /// expiring lease, deleted once the image records hold the result (or
    /// on failure), so nothing outlives the build but the image.
    pub async fn build(
        &self,
        req: BuildRequest,
        progress: Progress,
        cancel: CancellationToken,
    ) -> Result<BuildResult> {
        let solved = self.solve(&req, progress.clone(), cancel).await?;
        let epoch = req.config.source_date_epoch;
        self.export_built(solved, &req, epoch, &progress).await
    }

    /// A multi-platform build into an image index ([`Engine::solve_index`],
    /// then the index export, the push, the cache and the release), as
    /// [`Engine::build`] is for one platform.
    pub async fn build_index(
        &self,
        req: BuildRequest,
        targets: Vec<PlatformTarget>,
        progress: Progress,
        cancel: CancellationToken,
    ) -> Result<BuildResult> {
        // Every platform's config has the frontend's one SOURCE_DATE_EPOCH.
        let epoch = targets.first().and_then(|t| t.config.source_date_epoch);
        let solved = self
            .solve_index(&req, targets, progress.clone(), cancel)
            .await?;
        self.export_built(solved, &req, epoch, &progress).await
    }

    /// What follows a build's solve: the image export (layer times clamped
    /// to `epoch` with `rewrite-timestamp`), the push, the cache export
    /// (after the exporters, as BuildKit does), then the release.
    async fn export_built(
        &self,
        solved: Solved,
        req: &BuildRequest,
        epoch: Option<i64>,
        progress: &Progress,
    ) -> Result<BuildResult> {
        progress
            .send(ProgressEvent::Info {
                message: "exporting to image".into(),
            })
            .await;
        if req.rewrite_timestamp && epoch.is_none() {
            // BuildKit's exporter says the same and exports unchanged.
            progress
                .send(ProgressEvent::Info {
                    message: "rewrite-timestamp is specified, but no source-date-epoch was found"
                        .into(),
                })
                .await;
        }
        let mut r = solved
            .export_image_with(
                &req.config,
                &req.names,
                &crate::export::ImageFormat {
                    compression: req.compression,
                    force_compression: req.force_compression,
                    level: req.compression_level,
                    epoch,
                    rewrite_timestamp: req.rewrite_timestamp,
                    media: req.media_types,
                },
                &req.annotations,
            )
            .await;
        if let (Ok(out), Some(opts)) = (&r, &req.push) {
            // After the graph's vertices, in the same progress stream.
            let first = req.graph.vertices.len();
            if let Err(e) = solved
                .push(
                    out,
                    &req.names,
                    opts,
                    req.credentials.clone(),
                    progress,
                    first,
                )
                .await
            {
                r = Err(e);
            }
        }
        if r.is_ok() {
            // An ignored failure was shown on `progress`.
            if let Err(e) = solved.export_cache(progress).await {
                r = Err(e);
            }
        }
        solved.release(r.is_err()).await;
        let Exported {
            manifest,
            config_digest,
            names,
            children,
        } = r?;
        Ok(BuildResult {
            manifest_digest: manifest.digest().to_string(),
            manifest_media_type: manifest.media_type().to_string(),
            manifest_size: crate::oci::size_of(&manifest),
            config_digest,
            names,
            children,
        })
    }

    /// Solves a multi-platform build: `req.graph` holds every platform's
    /// vertices (the frontend's merged graph) and `targets` says which
    /// vertex is each platform's result and what its config is
    /// (`req.result` and `req.config` are not used). Each platform is
    /// solved under a lease of its own, all at once (equal steps of two
    /// platforms run once); the result's image exports are an index of
    /// one manifest per platform ([`Solved::export_image`]), each chain
    /// unpacked, since the steps committed it.
    pub async fn solve_index(
        &self,
        req: &BuildRequest,
        targets: Vec<PlatformTarget>,
        progress: Progress,
        cancel: CancellationToken,
    ) -> Result<Solved> {
        use crate::remotecache::ExportTarget;
        if targets.is_empty() {
            return Err(WorkerError::BadInput {
                location: String::new(),
                reason: "a multi-platform build with no platform".into(),
            });
        }
        if req
            .cache_exports
            .iter()
            .any(|e| e.target != ExportTarget::Inline)
        {
            return Err(WorkerError::Unsupported {
                location: String::new(),
                what: "a cache export (--cache-to) of a multi-platform build".into(),
            });
        }
        // A step two platforms share runs once and shows once.
        let progress = progress.once_per_vertex();
        let solves = targets.iter().map(|t| {
            let mut r = req.clone();
            r.result = t.result;
            r.config = t.config.clone();
            r.names = Vec::new();
            let (progress, cancel) = (progress.clone(), cancel.clone());
            async move { self.solve(&r, progress, cancel).await }
        });
        let outcomes = futures_util::future::join_all(solves).await;
        let mut solved = Vec::with_capacity(outcomes.len());
        let mut failed = None;
        for o in outcomes {
            match o {
                Ok(s) => solved.push(s),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failed {
            for s in solved {
                s.release(true).await;
            }
            return Err(e);
        }
        let mut first = solved.remove(0);
        first.others = solved;
        first.platforms = targets
            .into_iter()
            .map(|t| (t.platform, t.config))
            .collect();
        Ok(first)
    }

    /// Solves the graph and keeps the result under the build's lease until
    /// [`Solved::release`], so exporters can read it. On failure the lease
    /// is already gone.
    pub async fn solve(
        &self,
        req: &BuildRequest,
        progress: Progress,
        cancel: CancellationToken,
    ) -> Result<Solved> {
        let lease = LeaseId::unique("build");
        let span = tracing::info_span!("build", lease = %lease);
        async {
            let keepalive = crate::lease::create_build_lease(
                self.svc.leases.clone(),
                &lease,
                self.lease_timing,
            )
            .await?;
            let uses = Arc::new(crate::cache::Uses::default());
            match self
                .solve_leased(req, &lease, &uses, progress, cancel)
                .await
            {
                Ok((layers, cache)) => Ok(Solved {
                    engine: self.clone(),
                    lease: lease.clone(),
                    keepalive,
                    uses,
                    layers,
                    cache,
                    cache_exports: req.cache_exports.clone(),
                    compression: req.compression,
                    registry: self.registry_client(req.credentials.clone()),
                    platforms: Vec::new(),
                    others: Vec::new(),
                }),
                Err(e) => {
                    uses.write(&self.svc).await;
                    if let Err(d) = self.svc.leases.delete(&lease, true).await {
                        tracing::warn!(lease = %lease, error = %d, "cannot delete build lease");
                    }
                    keepalive.stop().await;
                    Err(e)
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn solve_leased(
        &self,
        req: &BuildRequest,
        lease: &LeaseId,
        uses: &Arc<crate::cache::Uses>,
        progress: Progress,
        cancel: CancellationToken,
    ) -> Result<(Vec<crate::refs::Layer>, Arc<BuildCache>)> {
        let registry = self.registry_client(req.credentials.clone());
        let imports = read_cache_imports(&req.cache_imports, &registry, &progress).await;
        let cache = Arc::new(BuildCache::new(&req.graph, req.result, imports));
        let mount_dir = self
            .state_dir
            .join("mounts")
            .join(crate::sweep::mount_dir_name(lease));
        std::fs::create_dir_all(&mount_dir).map_err(|e| WorkerError::Io {
            path: mount_dir.display().to_string(),
            source: e,
        })?;
        let runner = Arc::new(StepRunner {
            svc: self.svc.clone(),
            executor: self.executor.clone(),
            mount_dir: mount_dir.clone(),
            lease: lease.clone(),
            locals: req.locals.clone(),
            oci_stores: req.oci_stores.clone(),
            progress: progress.clone(),
            hashes: self.hashes.clone(),
            remote: cache.clone(),
            registry: registry.clone(),
            resolve_mode: req.resolve_mode,
            pinned: req.pinned.clone(),
            secrets: req.secrets.clone(),
            ssh: req.ssh.clone(),
            uploads: req.uploads.clone(),
            fetch_limits: self.fetch_limits.current(),
            added: Default::default(),
            uses: uses.clone(),
            started: Default::default(),
            blobs_after_commit: Default::default(),
            committed: Default::default(),
            loads: crate::ops::Loads::new(req.result),
            export_blobs: (req.export_blobs
                && !req.rewrite_timestamp
                && req.compression_level.is_default())
            .then(|| crate::blobs::ExportBlobs {
                compression: req.compression,
                vertices: crate::blobs::exported_vertices(&req.graph, req.result),
                result: req.result.0,
            }),
        });
        let solved = kiln_solver::scheduler::solve(
            &self.solver,
            &req.graph,
            req.result,
            runner.clone(),
            cancel,
        )
        .await;
        runner.show_undecided_sources().await;
        // Steps' task records are collected in the background while later
        // steps run; none outlives the solve.
        self.executor.settle(lease).await;
        // A result that is a local directory (a stage that is a named
        // context) is exported as its snapshot.
        let result = match solved {
            Ok(o) => match o.into_iter().next() {
                Some(Ref::Chain(l)) => Ok(l),
                Some(Ref::Local { dir, excludes }) => {
                    runner.local_snapshot("", &dir, &excludes).await
                }
                None => Ok(Vec::new()),
            },
            Err(e) => Err(solve_error(e)),
        };
        drop(runner);
        if let Err(e) = self.hashes.save() {
            tracing::warn!(error = %e, "cannot save the context hash cache");
        }
        let _ = std::fs::remove_dir_all(&mount_dir);
        Ok((result?, cache))
    }
}

/// Reads the build's cache imports; one that cannot be read is a warning
/// in the progress (as in BuildKit), not a failed build.
async fn read_cache_imports(
    imports: &[crate::remotecache::CacheImport],
    registry: &kiln_registry::Client,
    progress: &Progress,
) -> Vec<crate::remotecache::import::Imported> {
    let mut out = Vec::new();
    for (what, r) in crate::remotecache::import::read_all(imports, registry).await {
        match r {
            Ok(i) => {
                progress
                    .send(ProgressEvent::Info {
                        message: format!("importing cache from {what}: {} keys", i.chains.len()),
                    })
                    .await;
                out.push(i);
            }
            Err(e) => {
                tracing::warn!(cache = %what, error = %e, "cache import skipped");
                progress
                    .send(ProgressEvent::Info {
                        message: format!("WARNING: cache import from {what} skipped: {e}"),
                    })
                    .await;
            }
        }
    }
    out
}

/// Base image configs as the frontend asks for them: one build's resolve
/// mode and registry client (its credentials). A pull it needs reads the
/// manifest and config only; the build's source op pulls the layers.
#[derive(Clone, Debug)]
pub struct BaseImages {
    svc: Services,
    client: kiln_registry::Client,
    mode: ResolveMode,
    pinned: crate::resolve::Pinned,
    progress: Progress,
    /// Registry lookups are numbered down from [`METADATA_VERTICES`].
    next_vertex: Arc<std::sync::atomic::AtomicUsize>,
    /// OCI layouts by store id (`oci-layout://` named contexts).
    oci_stores: Arc<crate::layout::OciStores>,
    /// What [`BaseImages::image_config`] answered, by
    /// [`crate::resolve::Pinned::key`]: an image and platform is looked up
    /// (and shown) once per build, as BuildKit's resolver caches it (the
    /// platforms of a multi-platform build share a `FROM
    /// --platform=$BUILDPLATFORM` base).
    answered: Arc<std::sync::Mutex<HashMap<String, ImageConfig>>>,
}

/// Progress vertex ids of the frontend's registry lookups count down from
/// here, far above any graph's vertex index.
pub const METADATA_VERTICES: usize = usize::MAX;

impl BaseImages {
    /// The same lookups, reporting each registry request as a vertex
    /// (`[internal] load metadata for <name>`, as BuildKit shows it) on
    /// `progress`.
    pub fn with_progress(mut self, progress: Progress) -> Self {
        self.progress = progress;
        self
    }

    /// The frontend's view of base image `name` (normalized) for
    /// `platform` (`None`: the worker's); the image it came from is pinned
    /// for the build. Its lookup step names platform `shown`, if any (see
    /// [`crate::pull::base_config`]).
    pub async fn image_config(
        &self,
        name: &str,
        platform: Option<&kiln_solver::Platform>,
        shown: Option<&kiln_solver::Platform>,
    ) -> Result<ImageConfig> {
        let key = crate::resolve::Pinned::key(name, platform);
        let known = self
            .answered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned();
        if let Some(c) = known {
            return Ok(c);
        }
        let n = self
            .next_vertex
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let report = crate::pull::Reporter {
            progress: self.progress.clone(),
            vertex: Some(METADATA_VERTICES - n),
        };
        let (cfg, _) = self.look_up(name, platform, &report, shown).await?;
        let cfg = crate::base::frontend_config(&cfg);
        self.answered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, cfg.clone());
        Ok(cfg)
    }

    /// Base image `name`'s config for `platform` by the build's resolve
    /// rule ([`crate::pull::base_config`], shown on `report`) and the
    /// digest it was found by, which the build's image is pinned to.
    async fn look_up(
        &self,
        name: &str,
        platform: Option<&kiln_solver::Platform>,
        report: &crate::pull::Reporter,
        shown: Option<&kiln_solver::Platform>,
    ) -> Result<(crate::oci::ImageConfigJson, String)> {
        let (cfg, digest) = crate::pull::base_config(
            &self.svc,
            &self.client,
            name,
            platform,
            self.mode,
            report,
            shown,
        )
        .await?;
        self.pinned
            .insert(&crate::resolve::Pinned::key(name, platform), &digest);
        Ok((cfg, digest))
    }

    /// Base image `name`'s config as JSON and the digest it was found
    /// by, as BuildKit's `ResolveImageConfig` answers a gateway frontend;
    /// the image is pinned as by [`BaseImages::image_config`].
    pub async fn image_config_json(
        &self,
        name: &str,
        platform: Option<&kiln_solver::Platform>,
    ) -> Result<(Vec<u8>, String)> {
        let report = crate::pull::Reporter {
            progress: self.progress.clone(),
            vertex: None,
        };
        let (cfg, digest) = self.look_up(name, platform, &report, None).await?;
        let json = serde_json::to_vec(&cfg).map_err(|e| WorkerError::BadInput {
            location: String::new(),
            reason: format!("the config of {name} cannot be written as JSON: {e}"),
        })?;
        Ok((json, digest))
    }

    /// The same lookups, with these OCI layouts to read `oci-layout://`
    /// images from ([`BuildRequest::oci_stores`]).
    pub fn with_oci_stores(mut self, stores: crate::layout::OciStores) -> Self {
        self.oci_stores = Arc::new(stores);
        self
    }

    /// The frontend's view of image `digest` (an index or a manifest) of
    /// the OCI layout store `store`, for `platform` (`None`: the
    /// worker's). A store the build was not given is an error (kilnd
    /// gives its copies of the client's session stores).
    pub async fn layout_config(
        &self,
        store: &str,
        digest: &str,
        platform: Option<&kiln_solver::Platform>,
    ) -> Result<ImageConfig> {
        let dir = crate::layout::store(&self.oci_stores, store)?.to_path_buf();
        let (digest, platform) = (digest.to_string(), platform.cloned());
        let cfg = tokio::task::spawn_blocking(move || {
            crate::layout::config(&dir, &digest, platform.as_ref())
        })
        .await
        .map_err(|e| WorkerError::Panicked {
            step: format!("oci-layout store {store}"),
            message: e.to_string(),
        })??;
        Ok(crate::base::frontend_config(&cfg))
    }

    /// The images resolved so far, for [`BuildRequest::pinned`].
    pub fn pinned(&self) -> crate::resolve::Pinned {
        self.pinned.clone()
    }
}

/// The engine error for a failed solve: a step's own error keeps its kind
/// whether the step ran or waited for an equal one, a panic is internal.
fn solve_error(e: SolveError) -> WorkerError {
    match e {
        SolveError::Op { source, .. } => {
            match source.downcast::<kiln_solver::SharedError<WorkerError>>() {
                Ok(shared) => shared.into_inner().unwrap_or_else(WorkerError::Shared),
                Err(other) => WorkerError::BadInput {
                    location: String::new(),
                    reason: other.to_string(),
                },
            }
        }
        SolveError::Panicked { name, message } => WorkerError::Panicked {
            step: name,
            message,
        },
        SolveError::Cancelled => WorkerError::Cancelled,
        e @ (SolveError::BadInput { .. } | SolveError::Empty) => WorkerError::BadInput {
            location: String::new(),
            reason: e.to_string(),
        },
    }
}

/// A solved build whose result is still held by its lease.
pub struct Solved {
    engine: Engine,
    lease: LeaseId,
    /// Renews the lease's protection until release.
    keepalive: crate::lease::Keepalive,
    /// The records the solve hit, whose use is written at release.
    uses: Arc<crate::cache::Uses>,
    /// The result's layer chain (empty = scratch).
    pub layers: Vec<crate::refs::Layer>,
    /// The build's answered vertices, for cache export.
    cache: Arc<BuildCache>,
    cache_exports: Vec<crate::remotecache::CacheExport>,
    /// The build's layer compression, for cache exports (an image export
    /// names its own).
    compression: Compression,
    /// The build's registry client (its credentials), for cache exports.
    registry: kiln_registry::Client,
    /// A multi-platform solve ([`Engine::solve_index`]): every platform
    /// with its image config, this one's first, and the other platforms'
    /// solves (each under its own lease). Its image exports are an index.
    platforms: Vec<(kiln_solver::Platform, ImageConfig)>,
    others: Vec<Solved>,
}

impl std::fmt::Debug for Solved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Solved")
            .field("lease", &self.lease)
            .field("layers", &self.layers)
            .finish_non_exhaustive()
    }
}

/// Every path below `dir` that is not a directory, relative to `root`.
fn files_below(
    root: &std::path::Path,
    dir: &std::path::Path,
    out: &mut Vec<PathBuf>,
) -> Result<()> {
    let io = |e| WorkerError::Io {
        path: dir.display().to_string(),
        source: e,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let path = entry.path();
        if entry.file_type().map_err(io)?.is_dir() {
            files_below(root, &path, out)?;
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_path_buf());
        }
    }
    Ok(())
}

/// A process [`Solved::run_process`] runs: what an image config's
/// Entrypoint, Env, WorkingDir and User give.
#[derive(Clone, Debug, Default)]
pub struct Process {
    pub args: Vec<String>,
    pub env: Vec<String>,
    /// Empty is `/`.
    pub cwd: String,
    /// Empty is root.
    pub user: String,
}

/// A read-only mount of a build result on the host.
pub struct ResultView {
    mount: Option<kiln_snapshot::mount::MountGuard>,
    key: Option<String>,
    svc: Services,
    path: PathBuf,
    /// A multi-platform result's platforms, each mounted on its
    /// directory below `path`.
    parts: Vec<ResultView>,
    /// The committed layer directories the view's own mount shows,
    /// topmost first (empty for a view made of `parts`).
    layers: Vec<PathBuf>,
}

impl std::fmt::Debug for ResultView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResultView")
            .field("key", &self.key)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ResultView {
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The directories below [`ResultView::path`] that hold one
    /// platform's tree each (`linux_amd64`, ...): made up by the export,
    /// not part of any result, so BuildKit describes them alone (mode
    /// 0755, owner 0:0, no time). Empty when the view is one tree.
    pub fn platform_dirs(&self) -> Vec<String> {
        if self.mount.is_some() {
            return Vec::new();
        }
        self.parts
            .iter()
            .filter_map(|p| p.path.strip_prefix(&self.path).ok())
            .filter_map(|p| p.to_str().map(str::to_string))
            .collect()
    }

    /// Where the view's files come from, so that its walks count only
    /// the hard links a build made ([`kiln_snapshot::origin`]). A split
    /// view shows each platform's part at its directory; a joined view
    /// (mounted over a split one) shows them all at its root.
    pub fn origin(&self) -> LayerOrigin {
        let mut origin = LayerOrigin::default();
        let (split, joined) = match (&self.mount, self.parts.as_slice()) {
            (_, []) => {
                origin.add_tree(Path::new(""), self.layers.clone());
                return origin;
            }
            (Some(_), [split]) => (split, true),
            _ => (self, false),
        };
        for part in &split.parts {
            let at = match joined {
                true => Path::new(""),
                false => part.path.strip_prefix(&split.path).unwrap_or(Path::new("")),
            };
            origin.add_tree(at, part.layers.clone());
        }
        origin
    }

    /// Unmounts and removes the view snapshot.
    pub async fn close(mut self) {
        // Its own mount first: a joined view's overlay stands on its parts.
        drop(self.mount.take());
        for part in std::mem::take(&mut self.parts) {
            Box::pin(part.close()).await;
        }
        if let Some(k) = self.key.take() {
            if let Err(e) = self.svc.snapshots.remove(&k).await {
                tracing::warn!(key = %k, error = %e, "cannot remove result view");
            }
        }
        let _ = std::fs::remove_dir(&self.path);
    }
}

impl Solved {
    /// A multi-platform solve's parts: each platform, its image config and
    /// its result's layers, in order; empty for one platform.
    pub fn platform_results(
        &self,
    ) -> Vec<(&kiln_solver::Platform, &ImageConfig, &[crate::refs::Layer])> {
        let parts = std::iter::once(self).chain(&self.others);
        self.platforms
            .iter()
            .zip(parts)
            .map(|((p, c), s)| (p, c, s.layers.as_slice()))
            .collect()
    }

    /// The lease holding the result.
    pub fn lease(&self) -> &LeaseId {
        &self.lease
    }

    /// Where this build mounts snapshots on the host.
    fn mount_dir(&self) -> PathBuf {
        self.engine
            .state_dir
            .join("mounts")
            .join(crate::sweep::mount_dir_name(&self.lease))
    }

    /// Writes config and manifest for the result (under the lease) and
    /// points `names` at it; with no names the image exists only as content
    /// until [`Solved::release`]. The layers' blobs are made here, in
    /// `compression`, where they do not exist yet ([`crate::blobs`]).
    ///
    /// A multi-platform solve exports one manifest per platform, each with
    /// its own config (`config` is not used), and an index of them that
    /// `names` point at.
    pub async fn export_image(
        &self,
        config: &ImageConfig,
        names: &[String],
        compression: Compression,
    ) -> Result<Exported> {
        self.export_image_with(
            config,
            names,
            &crate::export::ImageFormat::new(compression),
            &Default::default(),
        )
        .await
    }

    /// [`Solved::export_image`] with the exporter's options (`format`):
    /// its `rewrite-timestamp` epoch clamps the layers' file times
    /// ([`crate::epoch`]; an image whose layers changed is not backed by
    /// the build's snapshots, containerd unpacks it when it is run).
    /// `annotations` are checked against the image's platforms before
    /// anything is written.
    pub async fn export_image_with(
        &self,
        config: &ImageConfig,
        names: &[String],
        format: &crate::export::ImageFormat,
        annotations: &crate::annotations::ExportAnnotations,
    ) -> Result<Exported> {
        let media = format.media;
        if !self.platforms.is_empty() {
            let platforms: Vec<_> = self.platforms.iter().map(|(p, _)| p).collect();
            annotations.check(&platforms, true)?;
            let mut manifests = Vec::with_capacity(self.platforms.len());
            let mut children = Vec::with_capacity(self.platforms.len());
            let parts = std::iter::once(self).chain(&self.others);
            for ((platform, cfg), s) in self.platforms.iter().zip(parts) {
                let own = crate::export::ManifestShape {
                    media,
                    annotations: annotations.for_manifest(platform),
                };
                let out = s.export_manifest(cfg, &[], format, &own).await?;
                children.push((out.manifest.digest().to_string(), out.config_digest));
                manifests.push((platform.clone(), out.manifest));
            }
            let mut out = crate::export::export_index(
                &self.engine.svc,
                &manifests,
                names,
                annotations,
                media,
                &self.lease,
            )
            .await?;
            out.children = children;
            return Ok(out);
        }
        let platform = config
            .platform
            .clone()
            .unwrap_or_else(crate::oci::worker_platform);
        annotations.check(&[&platform], false)?;
        let own = crate::export::ManifestShape {
            media,
            annotations: annotations.for_manifest(&platform),
        };
        self.export_manifest(config, names, format, &own).await
    }

    /// [`Solved::export_image_with`] of this solve's own result.
    async fn export_manifest(
        &self,
        config: &ImageConfig,
        names: &[String],
        format: &crate::export::ImageFormat,
        shape: &crate::export::ManifestShape,
    ) -> Result<Exported> {
        let compression = format.compression;
        let layers = crate::blobs::ensure(
            &self.engine.svc,
            &self.layers,
            (compression, format.level),
            format.force_compression,
            &self.lease,
            &self.mount_dir(),
        )
        .await?;
        let rewrite = format.epoch.filter(|_| format.rewrite_timestamp);
        let (layers, rewritten) = match rewrite {
            Some(epoch) => {
                crate::epoch::clamp_layers(
                    &self.engine.svc,
                    &layers,
                    &config.base_diff_ids,
                    epoch,
                    (compression, format.level),
                    &self.lease,
                )
                .await?
            }
            None => (layers, false),
        };
        let mut json = crate::export::image_config_at(&layers, config, format.epoch);
        if self
            .cache_exports
            .iter()
            .any(|e| e.target == crate::remotecache::ExportTarget::Inline)
        {
            json.inline_cache =
                crate::remotecache::export::inline(&self.cache.records(), &self.layers);
        }
        export_image(
            &self.engine.svc,
            &layers,
            &json,
            names,
            !rewritten,
            shape,
            &self.lease,
        )
        .await
    }

    /// Writes the build's cache to every `--cache-to` target but inline
    /// (which [`Solved::export_image`] writes into the image config). An
    /// export with `ignore-error=true` that fails is a warning on
    /// `progress` and returned with its message (kilnd marks its export
    /// step failed with them, as BuildKit shows the vertex, while the
    /// build succeeds).
    pub async fn export_cache(
        &self,
        progress: &Progress,
    ) -> Result<Vec<(crate::remotecache::CacheExport, String)>> {
        use crate::remotecache::{export, registry, ExportTarget};
        if self
            .cache_exports
            .iter()
            .all(|e| e.target == ExportTarget::Inline)
        {
            return Ok(Vec::new());
        }
        if !self.platforms.is_empty() {
            return Err(WorkerError::Unsupported {
                location: String::new(),
                what: "a cache export (--cache-to) of a multi-platform build".into(),
            });
        }
        // Every exported layer needs its blob, in the build's compression:
        // with only `mode=min` exports, those of the result's chain alone.
        let max = self
            .cache_exports
            .iter()
            .any(|e| e.target != ExportTarget::Inline && e.mode == crate::remotecache::Mode::Max);
        let mut records = self.cache.records();
        let mount_dir = self.mount_dir();
        let mut blobs =
            crate::blobs::Blobs::new(&self.engine.svc, self.compression, &self.lease, &mount_dir);
        for r in &mut records {
            if let Some(chain) = &r.chain {
                if max || export::is_prefix(chain, &self.layers) {
                    r.chain = Some(blobs.chain(chain).await?);
                }
            }
        }
        let result = blobs.chain(&self.layers).await?;
        let mut ignored = Vec::new();
        for e in &self.cache_exports {
            if e.target == ExportTarget::Inline {
                continue;
            }
            progress
                .send(ProgressEvent::Info {
                    message: format!("exporting cache to {}", e.describe()),
                })
                .await;
            let plan = export::plan(&records, &result, e.mode);
            let svc = &self.engine.svc;
            let r = match &e.target {
                ExportTarget::Local { dest, tag } => {
                    export::write_local(svc, &plan, e.style, dest, tag).await
                }
                ExportTarget::Registry {
                    reference,
                    insecure,
                } => match registry::client_for(&self.registry, reference, *insecure) {
                    Ok(client) => registry::push(svc, &client, reference, &plan, e.style).await,
                    Err(err) => Err(err),
                },
                ExportTarget::Inline => continue,
            };
            match r {
                Ok(_) => {}
                Err(err) if e.ignore_error => {
                    let message = format!("cache export to {} failed: {err}", e.describe());
                    progress
                        .send(ProgressEvent::Info {
                            message: format!("WARNING: {message} (ignore-error=true)"),
                        })
                        .await;
                    ignored.push((e.clone(), message));
                }
                Err(err) => return Err(err.into()),
            }
        }
        Ok(ignored)
    }

    /// Pushes an exported image to every name of `names` with `creds`
    /// (see [`crate::push`]), over the engine's registry configuration
    /// (made insecure for those registries by `opts.insecure`). Vertex
    /// numbers of the progress start at `first_vertex`.
    pub async fn push(
        &self,
        exported: &Exported,
        names: &[String],
        opts: &crate::push::PushOptions,
        creds: Arc<dyn kiln_registry::Credentials>,
        progress: &Progress,
        first_vertex: usize,
    ) -> Result<crate::push::Pushed> {
        if names.is_empty() {
            return Err(WorkerError::BadInput {
                location: String::new(),
                reason: "push=true needs a name to push to (-t REGISTRY/REPOSITORY:TAG)".into(),
            });
        }
        let hosts = crate::push::hosts_for(self.engine.registry_hosts(), names, opts.insecure)?;
        let client = kiln_registry::Client::new(Arc::new(hosts), creds);
        crate::push::push_image(
            &self.engine.svc,
            Arc::new(client),
            &exported.manifest,
            names,
            opts,
            progress,
            first_vertex,
        )
        .await
    }

    /// Mounts the result read-only (an empty directory for scratch); a
    /// multi-platform result's platforms each on a directory of the view.
    pub async fn view(&self) -> Result<ResultView> {
        self.file_tree(None, None).await
    }

    /// The view the local and tar exporters send, as BuildKit's lay it out
    /// by their `platform-split` option: split (the default of a
    /// multi-platform result), each platform's tree on a directory named
    /// after it with `_` for `/` (`linux_amd64`, `linux_arm_v7`); not
    /// split, the trees side by side in one, where two platforms holding
    /// the same file path is an error. `platform` names a single-platform
    /// result's directory (`None`: the worker's platform).
    pub async fn file_tree(
        &self,
        split: Option<bool>,
        platform: Option<&kiln_solver::Platform>,
    ) -> Result<ResultView> {
        let multi = !self.platforms.is_empty();
        match (multi, split.unwrap_or(multi)) {
            (false, false) => self.view_layers(None).await,
            (false, true) => {
                let dir = self.view_dir()?;
                let p = platform
                    .cloned()
                    .unwrap_or_else(crate::oci::worker_platform);
                let sub = dir.join(p.to_string().replace('/', "_"));
                match self.view_layers(Some(sub)).await {
                    Ok(part) => Ok(ResultView {
                        mount: None,
                        key: None,
                        svc: self.engine.svc.clone(),
                        path: dir,
                        parts: vec![part],
                        layers: Vec::new(),
                    }),
                    Err(e) => {
                        let _ = std::fs::remove_dir(&dir);
                        Err(e)
                    }
                }
            }
            (true, true) => self.split_view().await,
            (true, false) => self.joined_view().await,
        }
    }

    /// A multi-platform result with each platform's tree on a directory of
    /// its own.
    async fn split_view(&self) -> Result<ResultView> {
        let dir = self.view_dir()?;
        let mut view = ResultView {
            mount: None,
            key: None,
            svc: self.engine.svc.clone(),
            path: dir,
            parts: Vec::new(),
            layers: Vec::new(),
        };
        let parts = std::iter::once(self).chain(&self.others);
        for ((platform, _), part) in self.platforms.iter().zip(parts) {
            let sub = view.path.join(platform.to_string().replace('/', "_"));
            match part.view_layers(Some(sub)).await {
                Ok(v) => view.parts.push(v),
                Err(e) => {
                    view.close().await;
                    return Err(e);
                }
            }
        }
        Ok(view)
    }

    /// A multi-platform result's trees in one: [`Solved::split_view`]'s
    /// directories below it, as the lower layers of a read-only overlay,
    /// once no file path is in two of them (BuildKit's error names the
    /// path and both platforms).
    async fn joined_view(&self) -> Result<ResultView> {
        let parts = self.split_view().await?;
        let mut seen: std::collections::HashMap<PathBuf, String> = Default::default();
        let mut lowers = Vec::new();
        for ((platform, _), part) in self.platforms.iter().zip(&parts.parts) {
            let name = platform.to_string();
            let mut files = Vec::new();
            if let Err(e) = files_below(&part.path, &part.path, &mut files) {
                parts.close().await;
                return Err(e);
            }
            for f in files {
                if let Some(first) = seen.get(&f) {
                    let reason = format!(
                        "cannot overwrite {} from {first} with {name} when split option is disabled",
                        f.display()
                    );
                    parts.close().await;
                    return Err(WorkerError::BadInput {
                        location: String::new(),
                        reason,
                    });
                }
                seen.insert(f, name.clone());
            }
            lowers.push(part.path.display().to_string());
        }
        let dir = match self.view_dir() {
            Ok(d) => d,
            Err(e) => {
                parts.close().await;
                return Err(e);
            }
        };
        // An overlay needs two lower layers; one is a read-only bind.
        let mount = if lowers.len() == 1 {
            kiln_snapshot::mount::Mount {
                mount_type: "bind".into(),
                source: lowers.remove(0),
                target: String::new(),
                options: vec!["ro".into(), "rbind".into()],
            }
        } else {
            kiln_snapshot::mount::Mount {
                mount_type: "overlay".into(),
                source: "overlay".into(),
                target: String::new(),
                options: vec![format!("lowerdir={}", lowers.join(":"))],
            }
        };
        match kiln_snapshot::mount::MountGuard::mount(&[mount], dir.clone()) {
            Ok(m) => Ok(ResultView {
                mount: Some(m),
                key: None,
                svc: self.engine.svc.clone(),
                path: dir,
                parts: vec![parts],
                layers: Vec::new(),
            }),
            Err(e) => {
                parts.close().await;
                let _ = std::fs::remove_dir(&dir);
                Err(WorkerError::from(kiln_snapshot::SnapshotError::from(e)))
            }
        }
    }

    /// Mounts platform `index` of a multi-platform result read-only (in
    /// the order of [`Solved::platform_results`]), as BuildKit's gateway
    /// reads one platform's ref; `None` when there is no such platform.
    pub async fn platform_view(&self, index: usize) -> Option<Result<ResultView>> {
        if index >= self.platforms.len() {
            return None;
        }
        let part = std::iter::once(self).chain(&self.others).nth(index)?;
        Some(part.view_layers(None).await)
    }

    /// A new directory for a view.
    fn view_dir(&self) -> Result<PathBuf> {
        let dir = self
            .engine
            .state_dir
            .join("mounts")
            .join(format!("view-{}", crate::base::rand_hex()));
        std::fs::create_dir_all(&dir).map_err(|e| WorkerError::Io {
            path: dir.display().to_string(),
            source: e,
        })?;
        Ok(dir)
    }

    /// Mounts this solve's own layers read-only, on `at` (created) or a
    /// new directory.
    async fn view_layers(&self, at: Option<PathBuf>) -> Result<ResultView> {
        let svc = self.engine.svc.clone();
        let top = crate::refs::top_snapshot(&self.layers);
        let dir = match at {
            Some(dir) => {
                std::fs::create_dir_all(&dir).map_err(|e| WorkerError::Io {
                    path: dir.display().to_string(),
                    source: e,
                })?;
                dir
            }
            None => self.view_dir()?,
        };
        if top.is_empty() {
            return Ok(ResultView {
                mount: None,
                key: None,
                svc,
                path: dir,
                parts: Vec::new(),
                layers: Vec::new(),
            });
        }
        let key = format!("kiln-view-{}", crate::base::rand_hex());
        let mounts = svc.snapshots.view(&key, &top, &self.lease).await?;
        match kiln_snapshot::mount::MountGuard::mount(&mounts, dir.clone())
            .map_err(|e| WorkerError::from(kiln_snapshot::SnapshotError::from(e)))
        {
            Ok(m) => Ok(ResultView {
                mount: Some(m),
                key: Some(key),
                svc,
                path: dir,
                parts: Vec::new(),
                layers: kiln_snapshot::mount::layer_dirs(&mounts),
            }),
            Err(e) => {
                let _ = svc.snapshots.remove(&key).await;
                let _ = std::fs::remove_dir(&dir);
                Err(e)
            }
        }
    }

    /// Runs a process on a writable copy of the result (an active
    /// snapshot of it under the result's lease, discarded after), as
    /// BuildKit runs a gateway frontend image: `io` carries its stdio. A
    /// non-zero exit is data; the task, its container and the snapshot
    /// are gone when this returns, whatever happened.
    pub async fn run_process(
        &self,
        process: Process,
        io: kiln_shim::StepIo,
        cancel: CancellationToken,
    ) -> Result<kiln_shim::ExitStatus> {
        if !self.platforms.is_empty() {
            return Err(WorkerError::Unsupported {
                location: String::new(),
                what: "running a process on a multi-platform result".into(),
            });
        }
        let svc = &self.engine.svc;
        let key = format!("kiln-active-{}", crate::base::rand_hex());
        let mounts = svc
            .snapshots
            .prepare(&key, &crate::refs::top_snapshot(&self.layers), &self.lease)
            .await?;
        let dir = self.mount_dir().join(&key);
        let ran = async {
            std::fs::create_dir_all(&dir).map_err(|e| WorkerError::Io {
                path: dir.display().to_string(),
                source: e,
            })?;
            let mounted = kiln_snapshot::mount::MountGuard::mount(&mounts, dir.clone())
                .map_err(|e| WorkerError::from(kiln_snapshot::SnapshotError::from(e)))?;
            let spec = kiln_shim::StepSpec {
                id: format!("kiln-{}", crate::base::rand_hex()),
                rootfs: dir.clone(),
                args: process.args,
                env: process.env,
                cwd: if process.cwd.is_empty() {
                    "/".into()
                } else {
                    process.cwd
                },
                user: process.user,
                hostname: String::new(),
                extra_hosts: Vec::new(),
                ulimits: Vec::new(),
                network: kiln_shim::Network::None,
                mounts: Vec::new(),
                lease: self.lease.clone(),
                timeout: None,
                security: kiln_shim::Security::Sandbox,
                pids_limit: Some(kiln_shim::DEFAULT_PIDS_LIMIT),
                resources: None,
            };
            let status = self.engine.executor.run(spec, io, cancel).await;
            drop(mounted);
            status.map_err(|error| match error {
                kiln_shim::ExecError::Cancelled { .. } => WorkerError::Cancelled,
                error => WorkerError::Exec {
                    location: String::new(),
                    error,
                },
            })
        }
        .await;
        let _ = std::fs::remove_dir(&dir);
        if let Err(e) = svc.snapshots.remove(&key).await {
            tracing::warn!(key, error = %e, "cannot remove a process's active snapshot");
        }
        ran
    }

    /// Deletes the build's lease; `sync` waits for containerd's GC.
    pub async fn release(mut self, sync: bool) {
        for o in std::mem::take(&mut self.others) {
            Box::pin(o.release(sync)).await;
        }
        // The exporters' mount points are gone; their directory may stay.
        let _ = std::fs::remove_dir(self.mount_dir());
        self.uses.write(&self.engine.svc).await;
        if let Err(e) = self.engine.svc.leases.delete(&self.lease, sync).await {
            tracing::warn!(lease = %self.lease, error = %e, "cannot delete build lease");
        }
        self.keepalive.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_proto::ErrorKind;

    fn step_failed() -> WorkerError {
        WorkerError::StepFailed {
            location: "Dockerfile:3: ".into(),
            command: "false".into(),
            code: 1,
        }
    }

    fn op_error(e: Arc<WorkerError>) -> SolveError {
        SolveError::Op {
            name: "RUN false".into(),
            source: Box::new(kiln_solver::SharedError(e)),
        }
    }

    #[test]
    fn solve_errors_keep_the_kind_of_the_step_error() {
        // The step ran for this build alone: its own error comes back.
        let own = solve_error(op_error(Arc::new(step_failed())));
        assert!(
            matches!(own, WorkerError::StepFailed { code: 1, .. }),
            "{own:?}"
        );

        // An equal step of another build still holds the error: shared, with
        // the same kind and message (not InvalidArgument).
        let leader = Arc::new(step_failed());
        let follower = solve_error(op_error(leader.clone()));
        assert!(matches!(follower, WorkerError::Shared(_)), "{follower:?}");
        assert_eq!(follower.kind(), ErrorKind::FailedPrecondition);
        assert_eq!(follower.to_string(), leader.to_string());

        let panicked = solve_error(SolveError::Panicked {
            name: "RUN x".into(),
            message: "boom".into(),
        });
        assert_eq!(panicked.kind(), ErrorKind::Internal);
        assert_eq!(
            panicked.to_string(),
            "RUN x: internal error: the step panicked: boom"
        );
        assert_eq!(
            solve_error(SolveError::Cancelled).kind(),
            ErrorKind::Cancelled
        );
    }
}
