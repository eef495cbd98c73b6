//! The engine on in-memory fakes: builds, cache records, base images,
//! export, prune and sweep on `kiln_snapshot::testing::MemContainerd` and
//! `kiln_shim::testing::FakeExecutor`, with no containerd, no root and no
//! mount syscall (the fake snapshotter's mounts are single binds, used in
//! place).

mod claim;
mod inuse;
mod merge;
mod remotecache;
mod ssh;

use crate::cache;
use crate::error::WorkerError;
use crate::oci::{self, ImageConfigJson, ImageManifest as Manifest};
use crate::progress::Progress;
use crate::prune::{self, PruneOptions};
use crate::services::Services;
use crate::{BuildRequest, BuildResult, Engine};
use kiln_shim::testing::{FakeExecutor, FakeOutcome};
use kiln_snapshot::containerd::{ImageRecord, LeaseId};
use kiln_snapshot::diff::Compression;
use kiln_snapshot::layer::UNCOMPRESSED_LABEL;
use kiln_snapshot::services::write_blob;
use kiln_snapshot::testing::MemContainerd;
use kiln_solver::{
    Edge, ExecOp, Graph, ImageConfig, MergeOp, Meta, Mount, MountType, NetMode, Op, Vertex,
    VertexId,
};
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// One fake containerd namespace, shared by every engine made from it.
struct Fixture {
    dir: tempfile::TempDir,
    mem: MemContainerd,
    svc: Services,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let mem = MemContainerd::new(&dir.path().join("snapshots")).with_namespace("test");
    let s = Arc::new(mem.clone());
    let svc = Services {
        namespace: mem.namespace().to_string(),
        content: s.clone(),
        snapshots: s.clone(),
        leases: s.clone(),
        images: s.clone(),
        applier: s,
        memo: Default::default(),
    };
    Fixture { dir, mem, svc }
}

impl Fixture {
    /// An engine with its own state directory (as another kiln process
    /// would have) and executor.
    fn engine(&self, name: &str, exec: &FakeExecutor) -> Engine {
        Engine::with_services(
            self.svc.clone(),
            Arc::new(exec.clone()),
            Arc::new(exec.clone()),
            self.dir.path().join(name),
        )
    }

    async fn lease_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .svc
            .leases
            .list()
            .await
            .expect("list leases")
            .into_iter()
            .map(|l| l.id)
            .collect();
        ids.sort();
        ids
    }

    /// Writes a blob held by a test lease.
    async fn blob(&self, data: &[u8]) -> String {
        let lease = LeaseId::named("test", "seed");
        match self
            .svc
            .leases
            .create(&lease, "test", None, HashMap::new())
            .await
        {
            Ok(()) => {}
            Err(e) if e.is_already_exists() => {}
            Err(e) => panic!("seed lease: {e}"),
        }
        write_blob(&*self.svc.content, data, HashMap::new(), &lease)
            .await
            .expect("write blob")
            .to_string()
    }

    /// Points image `name` at a manifest of `manifest` bytes.
    async fn image(&self, name: &str, manifest: &[u8]) {
        let digest = self.blob(manifest).await;
        self.svc
            .images
            .put(
                &ImageRecord {
                    name: name.into(),
                    media_type: oci::MEDIA_OCI_MANIFEST.into(),
                    digest,
                    size: manifest.len() as i64,
                    labels: HashMap::new(),
                    annotations: HashMap::new(),
                },
                None,
            )
            .await
            .expect("put image");
    }
}

fn vertex(op: Op, inputs: Vec<Edge>, name: &str) -> Vertex {
    Vertex {
        op,
        inputs,
        name: name.into(),
        location: None,
        ignore_cache: false,
    }
}

/// scratch -> `RUN <args>`.
fn run_graph(args: &[&str]) -> (Graph, VertexId) {
    let mut g = Graph::default();
    let scratch = g
        .add(vertex(
            Op::Merge(MergeOp { inputs: vec![] }),
            vec![],
            "scratch",
        ))
        .expect("add scratch");
    let run = g
        .add(vertex(
            Op::Exec(ExecOp {
                meta: Meta {
                    args: args.iter().map(|a| a.to_string()).collect(),
                    env: vec!["PATH=/bin".into()],
                    cwd: "/".into(),
                    ..Default::default()
                },
                mounts: vec![Mount {
                    input: Some(0),
                    selector: String::new(),
                    dest: "/".into(),
                    output: Some(0),
                    readonly: false,
                    mount_type: MountType::Bind,
                }],
                network: NetMode::Unset,
                security: kiln_solver::SecurityMode::Sandbox,
                secret_env: Vec::new(),
                platform: None,
            }),
            vec![Edge {
                vertex: scratch,
                output: 0,
            }],
            "RUN",
        ))
        .expect("add run");
    (g, run)
}

fn request(args: &[&str], names: &[&str]) -> BuildRequest {
    let (graph, result) = run_graph(args);
    BuildRequest {
        graph,
        result,
        config: ImageConfig::default(),
        locals: HashMap::new(),
        oci_stores: HashMap::new(),
        names: names.iter().map(|n| n.to_string()).collect(),
        compression: Compression::Gzip,
        cache_imports: Vec::new(),
        cache_exports: Vec::new(),
        credentials: crate::build::anonymous(),
        resolve_mode: crate::resolve::ResolveMode::Default,
        pinned: Default::default(),
        push: None,
        secrets: crate::secrets::none(),
        ssh: crate::ssh::none(),
        uploads: crate::uploads::none(),
        rewrite_timestamp: false,
        export_blobs: false,
        annotations: Default::default(),
        media_types: Default::default(),
        force_compression: false,
        compression_level: Default::default(),
    }
}

async fn build(engine: &Engine, req: BuildRequest) -> crate::Result<BuildResult> {
    engine
        .build(req, Progress::none(), CancellationToken::new())
        .await
}

#[tokio::test]
async fn a_cache_hit_executes_nothing() {
    let fx = fixture();
    let exec = FakeExecutor::new();
    let engine = fx.engine("a", &exec);
    build(&engine, request(&["true"], &[]))
        .await
        .expect("first build");
    assert_eq!(exec.steps().len(), 1, "the first build runs its step");
    build(&engine, request(&["true"], &[]))
        .await
        .expect("second build");
    assert_eq!(exec.steps().len(), 1, "the second build runs nothing");
    build(&engine, request(&["false"], &[]))
        .await
        .expect("a different step");
    assert_eq!(exec.steps().len(), 2, "a different step is not a hit");
}

/// A hit's use is written when the build lets go of its lease, not on the
/// hit's path: a no-op rebuild's steps wait for no label write.
#[tokio::test]
async fn a_hits_use_is_written_when_the_build_is_released() {
    let fx = fixture();
    let exec = FakeExecutor::new();
    let engine = fx.engine("a", &exec);
    build(&engine, request(&["true"], &[]))
        .await
        .expect("first build");
    let count = || async {
        let records = prune::disk_usage(&fx.svc).await.expect("du");
        let run: Vec<_> = records.iter().filter(|r| r.description == "RUN").collect();
        assert_eq!(run.len(), 1, "{records:?}");
        run[0].usage_count
    };
    assert_eq!(count().await, 1, "the build that made it");
    let solved = engine
        .solve(
            &request(&["true"], &[]),
            Progress::none(),
            CancellationToken::new(),
        )
        .await
        .expect("a hit");
    assert_eq!(exec.steps().len(), 1, "nothing ran");
    assert_eq!(count().await, 1, "not written while the build holds it");
    solved.release(false).await;
    assert_eq!(count().await, 2);
}

/// The record a build saved is read from memory by the next build's hit
/// in the same process: the first no-op rebuild reads no record blob.
#[tokio::test]
async fn a_saved_record_is_hit_without_reading_its_blob_again() {
    let fx = fixture();
    let exec = FakeExecutor::new();
    let engine = fx.engine("a", &exec);
    build(&engine, request(&["true"], &[]))
        .await
        .expect("first build");
    fx.mem
        .fail_next("Content.Read", kiln_snapshot::ErrorKind::Unavailable, 100);
    build(&engine, request(&["true"], &[]))
        .await
        .expect("a rebuild that reads no blob");
    assert_eq!(exec.steps().len(), 1, "the rebuild hit");
}

#[tokio::test]
async fn a_cache_record_is_found_by_another_engine_on_the_same_namespace() {
    let fx = fixture();
    let first = FakeExecutor::new();
    build(&fx.engine("a", &first), request(&["true"], &[]))
        .await
        .expect("build in a");
    assert_eq!(first.steps().len(), 1);
    let second = FakeExecutor::new();
    build(&fx.engine("b", &second), request(&["true"], &[]))
        .await
        .expect("build in b");
    assert_eq!(
        second.steps().len(),
        0,
        "the other engine hits the record in containerd"
    );
}

#[tokio::test]
async fn a_failed_step_releases_its_build_lease() {
    let fx = fixture();
    let exec = FakeExecutor::new();
    exec.push(FakeOutcome::Exit {
        code: 3,
        stdout: vec![],
        stderr: b"boom".to_vec(),
    });
    let err = build(
        &fx.engine("a", &exec),
        request(&["false"], &["docker.io/library/x:latest"]),
    )
    .await
    .expect_err("the step fails");
    assert!(
        matches!(err, WorkerError::StepFailed { code: 3, ref command, .. } if command == "false"),
        "{err:?}"
    );
    let leases = fx.lease_ids().await;
    assert!(
        leases.iter().all(|l| !l.starts_with("kiln/build/")),
        "no build lease is left: {leases:?}"
    );
    assert!(
        fx.svc
            .images
            .get("docker.io/library/x:latest")
            .await
            .is_err(),
        "a failed build names no image"
    );
    assert!(
        fx.mem.list_snapshots().is_empty(),
        "the failed step's snapshot is removed and nothing else holds one"
    );
}

#[tokio::test]
async fn a_successful_build_releases_its_build_lease_too() {
    let fx = fixture();
    let exec = FakeExecutor::new();
    build(&fx.engine("a", &exec), request(&["true"], &[]))
        .await
        .expect("build");
    let leases = fx.lease_ids().await;
    assert!(
        leases.iter().all(|l| !l.starts_with("kiln/build/")),
        "{leases:?}"
    );
    assert!(
        leases.iter().any(|l| l.starts_with("kiln/cache/")),
        "the step's result is kept by a cache record: {leases:?}"
    );
}

#[tokio::test]
async fn an_export_writes_exactly_config_manifest_and_layers_with_gc_labels() {
    let fx = fixture();
    let exec = FakeExecutor::new();
    let name = "docker.io/library/out:latest";
    let r = build(&fx.engine("a", &exec), request(&["true"], &[name]))
        .await
        .expect("build");

    // The image record points at the manifest.
    let record = fx.svc.images.get(name).await.expect("image record");
    assert_eq!(record.digest, r.manifest_digest);
    assert_eq!(record.media_type, oci::MEDIA_OCI_MANIFEST);
    assert_eq!(r.names, [name]);
    // As BuildKit's record of a single-platform image, it names the config.
    assert_eq!(
        record.annotations.get("config.digest"),
        Some(&r.config_digest),
        "{:?}",
        record.annotations
    );

    // The manifest names the config and one layer.
    let content = &fx.svc.content;
    let manifest: Manifest =
        serde_json::from_slice(&content.read(&r.manifest_digest).await.expect("manifest"))
            .expect("manifest JSON");
    assert_eq!(manifest.config().digest().to_string(), r.config_digest);
    assert_eq!(
        manifest.config().media_type().to_string(),
        oci::MEDIA_OCI_CONFIG
    );
    assert_eq!(manifest.layers().len(), 1);
    let layer = &manifest.layers()[0];
    assert_eq!(
        layer.media_type().to_string(),
        Compression::Gzip.media_type()
    );

    // Labels: manifest -> config and layer; config -> unpacked snapshot;
    // layer -> its diffID.
    let m_info = content
        .info(&r.manifest_digest)
        .await
        .expect("manifest info");
    let expected: HashMap<String, String> = [
        (
            "containerd.io/gc.ref.content.config".to_string(),
            r.config_digest.clone(),
        ),
        (
            "containerd.io/gc.ref.content.l.0".to_string(),
            layer.digest().to_string(),
        ),
    ]
    .into();
    assert_eq!(m_info.labels, expected);
    let config: ImageConfigJson =
        serde_json::from_slice(&content.read(&r.config_digest).await.expect("config"))
            .expect("config JSON");
    assert_eq!(config.image.rootfs().diff_ids().len(), 1);
    let diff_id = &config.image.rootfs().diff_ids()[0];
    let chain_id = diff_id.clone(); // one layer: its chainID is its diffID
    let c_info = content.info(&r.config_digest).await.expect("config info");
    assert_eq!(
        c_info.labels,
        HashMap::from([(
            "containerd.io/gc.ref.snapshot.mem".to_string(),
            chain_id.clone()
        )])
    );
    let l_info = content
        .info(layer.digest().as_ref())
        .await
        .expect("layer info");
    assert_eq!(l_info.labels.get(UNCOMPRESSED_LABEL), Some(diff_id));
    assert_eq!(l_info.size, oci::size_of(layer));
    // The unpacked snapshot the config names exists.
    fx.svc
        .snapshots
        .stat(&chain_id)
        .await
        .expect("unpacked snapshot");

    // Nothing else was written but the cache records of the build.
    let mut expected_blobs: BTreeSet<String> = [
        r.manifest_digest.clone(),
        r.config_digest.clone(),
        layer.digest().to_string(),
    ]
    .into();
    for rec in cache::list(&fx.svc).await.expect("records") {
        expected_blobs.insert(rec.lease.labels[cache::RECORD_LABEL].clone());
    }
    // A gzip layer's member index, held by the layer blob's label.
    let index = l_info
        .labels
        .get(kiln_snapshot::layer::MEMBERS_LABEL)
        .expect("the layer names its member index");
    expected_blobs.insert(index.clone());
    let written: BTreeSet<String> = fx
        .mem
        .list_content()
        .into_iter()
        .map(|c| c.digest)
        .collect();
    assert_eq!(written, expected_blobs);
}

#[tokio::test]
async fn base_image_resolution_reads_manifest_and_config() {
    let fx = fixture();
    let config = br#"{"architecture":"amd64","os":"linux","config":{"Env":["A=1"],"WorkingDir":"/w"},"rootfs":{"type":"layers","diff_ids":[]},"history":[]}"#;
    let cfg_digest = fx.blob(config).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci::MEDIA_OCI_MANIFEST,
        "config": {"mediaType": oci::MEDIA_OCI_CONFIG, "digest": cfg_digest, "size": config.len()},
        "layers": []
    });
    fx.image("docker.io/library/base:1", manifest.to_string().as_bytes())
        .await;
    let engine = fx.engine("a", &FakeExecutor::new());
    let cfg = engine
        .image_config("docker.io/library/base:1")
        .await
        .expect("found");
    assert_eq!(cfg.env, ["A=1"]);
    assert_eq!(cfg.working_dir, "/w");
    let base = crate::base::load(&fx.svc, "docker.io/library/base:1", None)
        .await
        .expect("load");
    assert_eq!(base.config_digest, cfg_digest);
    assert!(base.layers.is_empty());
}

#[tokio::test]
async fn a_missing_base_image_is_asked_for_at_its_registry_by_default() {
    let fx = fixture();
    let engine = fx.engine("a", &FakeExecutor::new());
    // Nothing listens on port 1 of loopback: the registry request is made
    // and fails, naming the image.
    let err = engine
        .image_config("127.0.0.1:1/nope:1")
        .await
        .expect_err("no registry there");
    assert!(
        matches!(&err, WorkerError::Registry { image, .. } if image == "127.0.0.1:1/nope:1"),
        "{err:?}"
    );
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
}

#[tokio::test]
async fn a_base_image_with_a_bad_manifest_is_invalid() {
    let fx = fixture();
    fx.image("docker.io/library/bad:1", b"{not json").await;
    let err = fx
        .engine("a", &FakeExecutor::new())
        .image_config("docker.io/library/bad:1")
        .await
        .expect_err("bad manifest");
    assert!(
        matches!(&err, WorkerError::InvalidImage { image, reason }
            if image == "docker.io/library/bad:1" && reason.starts_with("manifest ")),
        "{err:?}"
    );
    assert_eq!(err.kind(), kiln_snapshot::ErrorKind::InvalidArgument);
}

#[tokio::test]
async fn prune_removes_the_records_and_the_next_build_runs_again() {
    let fx = fixture();
    let exec = FakeExecutor::new();
    let engine = fx.engine("a", &exec);
    build(&engine, request(&["true"], &[]))
        .await
        .expect("build");
    let before = prune::disk_usage(&fx.svc).await.expect("du");
    assert!(!before.is_empty(), "the build left cache records");
    let report = prune::prune(&fx.svc, &PruneOptions::default())
        .await
        .expect("prune");
    assert_eq!(report.removed.len(), before.len());
    assert!(prune::disk_usage(&fx.svc).await.expect("du").is_empty());
    assert!(
        fx.lease_ids()
            .await
            .iter()
            .all(|l| !l.starts_with("kiln/cache/")),
        "every record lease is gone"
    );
    build(&engine, request(&["true"], &[]))
        .await
        .expect("rebuild");
    assert_eq!(
        exec.steps().len(),
        2,
        "with the records gone, the step runs again"
    );
}

#[tokio::test]
async fn sweep_deletes_the_leases_of_dead_builds_only() {
    let fx = fixture();
    let engine = fx.engine("a", &FakeExecutor::new());
    let mut dead = crate::sweep::owner_labels();
    // This pid with another start time: a process that is gone.
    dead.insert("dev.kiln/pid.start".into(), "1".into());
    let leases = &fx.svc.leases;
    let dead_id = LeaseId::named("build", "dead");
    let live_id = LeaseId::named("build", "live");
    let other_id = LeaseId::named("cache", "record");
    leases
        .create(&dead_id, "build", None, dead.clone())
        .await
        .expect("dead lease");
    leases
        .create(&live_id, "build", None, crate::sweep::owner_labels())
        .await
        .expect("live lease");
    leases
        .create(&other_id, "cache", None, dead)
        .await
        .expect("other lease");
    engine.sweep().await.expect("sweep");
    assert_eq!(
        fx.lease_ids().await,
        [live_id.to_string(), other_id.to_string()]
    );
}

#[tokio::test]
async fn a_build_from_a_base_image_unpacks_it_under_its_chain_id() {
    let fx = fixture();
    // A one-layer base image, written with kiln's own layer writer.
    let rootfs = fx.dir.path().join("rootfs");
    std::fs::create_dir_all(rootfs.join("etc")).expect("mkdir");
    std::fs::write(rootfs.join("etc/hello"), "hi\n").expect("write");
    fx.blob(b"seed").await; // creates the seed lease
    let layer = kiln_snapshot::layer::commit_layer(
        &*fx.svc.content,
        kiln_snapshot::layer::LayerSource::Walk {
            lower: None,
            upper: rootfs,
        },
        Compression::Gzip,
        &LeaseId::named("test", "seed"),
    )
    .await
    .expect("layer");
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id.to_string()]},
        "history": [{"created_by": "base"}]
    })
    .to_string();
    let config_digest = fx.blob(config.as_bytes()).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": oci::MEDIA_OCI_MANIFEST,
        "config": {"mediaType": oci::MEDIA_OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": layer.media_type, "digest": layer.digest.to_string(), "size": layer.size}]
    });
    let base = "docker.io/library/base:1";
    fx.image(base, manifest.to_string().as_bytes()).await;

    // FROM base, RUN true.
    let mut req = request(&["true"], &["docker.io/library/child:1"]);
    req.graph.vertices[0] = vertex(
        Op::Source(kiln_solver::SourceOp {
            identifier: format!("docker-image://{base}"),
            attrs: Default::default(),
            platform: None,
        }),
        vec![],
        "FROM base",
    );
    let exec = FakeExecutor::new();
    let r = build(&fx.engine("a", &exec), req).await.expect("build");
    assert_eq!(exec.steps().len(), 1);

    // The base is unpacked under its chainID (one layer: its diffID) and
    // its config names that snapshot, so it lives as long as the image.
    let chain = layer.diff_id.to_string();
    let info = fx.svc.snapshots.stat(&chain).await.expect("unpacked");
    assert_eq!(
        info.kind,
        kiln_snapshot::containerd::SnapshotKind::Committed
    );
    let labels = fx
        .svc
        .content
        .info(&config_digest)
        .await
        .expect("config")
        .labels;
    assert_eq!(
        labels.get("containerd.io/gc.ref.snapshot.mem"),
        Some(&chain)
    );
    // The result stacks one layer on the base's.
    let m: Manifest =
        serde_json::from_slice(&fx.svc.content.read(&r.manifest_digest).await.expect("read"))
            .expect("manifest JSON");
    assert_eq!(m.layers().len(), 2);
    assert_eq!(m.layers()[0].digest().to_string(), layer.digest.to_string());
}

#[tokio::test]
async fn a_step_leaves_no_blob_and_an_export_makes_it_once() {
    let fx = fixture();
    let engine = fx.engine("a", &FakeExecutor::new());
    let req = request(&["true"], &[]);
    let solved = engine
        .solve(&req, Progress::none(), CancellationToken::new())
        .await
        .expect("solve");
    let layer = solved.layers[0].clone();
    assert_eq!(layer.blob, None, "a step's layer has no blob");
    assert!(layer.uncompressed_size.is_some_and(|n| n > 0));
    let of_layer = |diff_id: &str| {
        fx.mem
            .list_content()
            .into_iter()
            .filter(|c| c.labels.get(UNCOMPRESSED_LABEL).map(String::as_str) == Some(diff_id))
            .count()
    };
    assert_eq!(
        of_layer(layer.diff_id.as_str()),
        0,
        "the step wrote no blob of its layer"
    );
    let first = solved
        .export_image(&ImageConfig::default(), &[], Compression::Zstd)
        .await
        .expect("zstd export");
    let read_manifest = |digest: String| {
        let content = fx.svc.content.clone();
        async move {
            serde_json::from_slice::<Manifest>(&content.read(&digest).await.expect("read"))
                .expect("manifest JSON")
        }
    };
    let m = read_manifest(first.manifest.digest().to_string()).await;
    let zstd = &m.layers()[0];
    assert_eq!(
        zstd.media_type().to_string(),
        Compression::Zstd.media_type()
    );
    let zstd_digest = zstd.digest().to_string();
    // The blob decompresses to the recorded diffID and the layer's
    // snapshot names it, so it lives as long as the snapshot.
    let v = fx.svc.content.info(&zstd_digest).await.expect("blob");
    assert_eq!(
        v.labels.get(UNCOMPRESSED_LABEL),
        Some(&layer.diff_id.to_string())
    );
    let snap = fx
        .svc
        .snapshots
        .stat(layer.diff_id.as_str())
        .await
        .expect("the layer's snapshot");
    assert_eq!(
        snap.labels
            .get(&crate::blobs::blob_label(Compression::Zstd)),
        Some(&zstd_digest)
    );
    // Making a blob again would need a view of the snapshot: the second
    // export must take the one the label names.
    fx.mem
        .fail_next("Snapshots.View", kiln_snapshot::ErrorKind::Unavailable, 1);
    let second = solved
        .export_image(&ImageConfig::default(), &[], Compression::Zstd)
        .await
        .expect("second zstd export reuses the blob");
    assert!(
        fx.svc
            .snapshots
            .view("probe", "", &solved.lease().clone())
            .await
            .is_err(),
        "the export made no view, so the injected failure is still pending"
    );
    let m2 = read_manifest(second.manifest.digest().to_string()).await;
    assert_eq!(m2.layers()[0].digest().to_string(), zstd_digest);
    assert_eq!(of_layer(layer.diff_id.as_str()), 1, "one blob, made once");
    // Another compression keeps the layer's blob (BuildKit's default,
    // force-compression=false)...
    let kept = solved
        .export_image(&ImageConfig::default(), &[], Compression::Gzip)
        .await
        .expect("gzip export");
    let kept = read_manifest(kept.manifest.digest().to_string()).await;
    assert_eq!(kept.layers()[0].digest().to_string(), zstd_digest);
    assert_eq!(of_layer(layer.diff_id.as_str()), 1);
    // ...and with force-compression=true is another blob of the same
    // diffID.
    let gz = solved
        .export_image_with(
            &ImageConfig::default(),
            &[],
            &crate::export::ImageFormat {
                force_compression: true,
                ..crate::export::ImageFormat::new(Compression::Gzip)
            },
            &Default::default(),
        )
        .await
        .expect("gzip export");
    let m3 = read_manifest(gz.manifest.digest().to_string()).await;
    assert_eq!(
        m3.layers()[0].media_type().to_string(),
        Compression::Gzip.media_type()
    );
    assert_ne!(m3.layers()[0].digest().to_string(), zstd_digest);
    assert_eq!(of_layer(layer.diff_id.as_str()), 2);
    solved.release(true).await;
    assert!(
        fx.lease_ids()
            .await
            .iter()
            .all(|l| !l.starts_with("kiln/build/")),
        "released"
    );
}

#[tokio::test]
async fn a_cache_mount_is_a_leased_snapshot_that_du_lists_and_prune_removes() {
    let fx = fixture();
    let exec = FakeExecutor::new();
    let mut req = request(&["true"], &[]);
    if let Op::Exec(e) = &mut req.graph.vertices[1].op {
        e.mounts.push(Mount {
            input: None,
            selector: String::new(),
            dest: "/cache".into(),
            output: None,
            readonly: false,
            mount_type: MountType::Cache {
                id: "go-build".into(),
                sharing: kiln_solver::CacheSharing::Locked,
            },
        });
    }
    build(&fx.engine("a", &exec), req).await.expect("build");
    // The step got the cache directory bound in.
    let steps = exec.steps();
    let binds: Vec<_> = steps[0]
        .mounts
        .iter()
        .filter(|m| m.dest() == "/cache")
        .collect();
    assert_eq!(binds.len(), 1, "{:?}", steps[0].mounts);
    let mounts = prune::disk_usage(&fx.svc).await.expect("du");
    let cache_mounts: Vec<_> = mounts
        .iter()
        .filter(|r| r.record_type == cache::TYPE_CACHE_MOUNT)
        .collect();
    assert_eq!(cache_mounts.len(), 1);
    assert_eq!(cache_mounts[0].description, "cached mount go-build");
    let snapshot = |snaps: Vec<kiln_snapshot::containerd::SnapshotInfo>| {
        snaps
            .into_iter()
            .filter(|s| s.name.starts_with("kiln-cachemount-"))
            .count()
    };
    assert_eq!(
        snapshot(fx.mem.list_snapshots()),
        1,
        "it outlives the build"
    );
    prune::prune(
        &fx.svc,
        &PruneOptions {
            types: vec![cache::TYPE_CACHE_MOUNT.into()],
            ..Default::default()
        },
    )
    .await
    .expect("prune");
    assert_eq!(snapshot(fx.mem.list_snapshots()), 0, "pruned and collected");
    let after = prune::disk_usage(&fx.svc).await.expect("du");
    assert_eq!(
        after.len(),
        mounts.len() - 1,
        "only the cache mount's record is gone"
    );
    assert!(after
        .iter()
        .all(|r| r.record_type != cache::TYPE_CACHE_MOUNT));
}

#[tokio::test]
async fn a_failed_layer_write_names_the_steps_dockerfile_line() {
    let fx = fixture();
    let exec = FakeExecutor::new();
    let engine = fx.engine("a", &exec);
    let mut req = request(&["fill-the-disk"], &[]);
    let run = req.result;
    req.graph.vertices[run.0].location = Some(kiln_solver::SourceLocation {
        file: "Dockerfile".into(),
        line: 7,
        end_line: 7,
    });
    // What a full disk looks like from here: containerd refuses the
    // commit of the step's layer.
    fx.mem
        .fail_next("Snapshots.Commit", kiln_snapshot::ErrorKind::Internal, 1);
    let err = build(&engine, req).await.expect_err("the commit fails");
    let text = err.to_string();
    assert!(text.starts_with("Dockerfile:7: "), "{text}");
    assert!(text.contains("injected failure"), "{text}");
    assert_eq!(err.kind(), kiln_snapshot::ErrorKind::Internal);
    assert!(
        fx.lease_ids()
            .await
            .iter()
            .all(|l| !l.starts_with("kiln/build/")),
        "released"
    );
}

#[tokio::test]
async fn a_build_running_past_the_lease_expiry_keeps_its_protection() {
    use crate::lease::{keepalive_lapsed, LeaseTiming};
    let fx = fixture();
    let exec = FakeExecutor::new();
    exec.push(FakeOutcome::Hang);
    // The fake (like containerd) keeps expiry labels in whole seconds, so a
    // keepalive lives between 1 and 2 s: one renewed every 100 ms is always
    // current.
    let timing = LeaseTiming {
        expiry: std::time::Duration::from_secs(2),
        refresh: std::time::Duration::from_millis(100),
    };
    let engine = fx.engine("a", &exec).with_lease_timing(timing);
    let cancel = CancellationToken::new();
    let build = tokio::spawn({
        let (engine, cancel) = (engine.clone(), cancel.clone());
        async move {
            engine
                .build(request(&["sleep", "long"], &[]), Progress::none(), cancel)
                .await
        }
    });
    while exec.steps().is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // Well past the expiry of the first keepalive, then a GC.
    tokio::time::sleep(std::time::Duration::from_millis(3500)).await;
    fx.svc.leases.gc().await.expect("gc");
    let all = fx.svc.leases.list().await.expect("list");
    let build_lease = all
        .iter()
        .find(|l| l.id.starts_with("kiln/build/"))
        .expect("the build lease survives the GC");
    assert!(
        !build_lease.expires(),
        "the build lease itself never expires"
    );
    assert!(
        !keepalive_lapsed(build_lease, &all),
        "its keepalive was renewed: {all:?}"
    );
    assert!(
        !fx.mem.list_snapshots().is_empty(),
        "the running step's snapshot is still held"
    );
    // Another kiln's sweep leaves a live build alone.
    fx.engine("b", &FakeExecutor::new())
        .sweep()
        .await
        .expect("sweep");
    assert!(fx.lease_ids().await.contains(&build_lease.id));

    cancel.cancel();
    let r = build.await.expect("joined");
    assert!(matches!(r, Err(WorkerError::Cancelled)), "{r:?}");
    let left = fx.lease_ids().await;
    assert!(
        left.iter()
            .all(|l| !l.starts_with("kiln/build/") && !l.starts_with("kiln/keepalive/")),
        "the lease and its keepalive are gone: {left:?}"
    );
}

#[tokio::test]
async fn sweep_deletes_a_build_lease_whose_keepalive_lapsed_wherever_it_ran() {
    let fx = fixture();
    let engine = fx.engine("a", &FakeExecutor::new());
    let leases = &fx.svc.leases;
    let mut elsewhere = crate::sweep::owner_labels();
    elsewhere.insert("dev.kiln/host".into(), "another-host".into());
    // Renewed: a current keepalive exists.
    let kept = LeaseId::named("build", "kept");
    let mut labels = elsewhere.clone();
    labels.insert(
        crate::lease::KEEPALIVE_LABEL.into(),
        "kiln/keepalive/kept/".into(),
    );
    leases
        .create(&kept, "build", None, labels)
        .await
        .expect("kept");
    let mut k = elsewhere.clone();
    k.insert("dev.kiln/keepalive.secs".into(), "3600".into());
    leases
        .create(
            &LeaseId::named("keepalive", "kept/3"),
            "keepalive",
            Some(std::time::Duration::from_secs(3600)),
            k,
        )
        .await
        .expect("keepalive");
    // Lapsed: nothing renews it any more.
    let lapsed = LeaseId::named("build", "lapsed");
    let mut labels = elsewhere.clone();
    labels.insert(
        crate::lease::KEEPALIVE_LABEL.into(),
        "kiln/keepalive/lapsed/".into(),
    );
    leases
        .create(&lapsed, "build", None, labels)
        .await
        .expect("lapsed");
    // An older kiln's lease (no keepalive) on another host: left to expire.
    let old = LeaseId::named("build", "old");
    leases
        .create(
            &old,
            "build",
            Some(std::time::Duration::from_secs(3600)),
            elsewhere,
        )
        .await
        .expect("old");
    engine.sweep().await.expect("sweep");
    assert_eq!(
        fx.lease_ids().await,
        [
            kept.to_string(),
            old.to_string(),
            "kiln/keepalive/kept/3".to_string()
        ]
    );
}

/// The exported config of a build's manifest.
async fn config_of(fx: &Fixture, manifest_digest: &str) -> ImageConfigJson {
    let m: Manifest = serde_json::from_slice(
        &fx.svc
            .content
            .read(manifest_digest)
            .await
            .expect("manifest"),
    )
    .expect("manifest JSON");
    serde_json::from_slice(
        &fx.svc
            .content
            .read(m.config().digest().as_ref())
            .await
            .expect("config"),
    )
    .expect("config JSON")
}

fn dated_request(args: &[&str]) -> BuildRequest {
    let mut req = request(args, &["docker.io/library/dated:1"]);
    req.config.history = vec![kiln_solver::HistoryEntry {
        created: None,
        created_by: format!("RUN {}", args.join(" ")),
        comment: String::new(),
        empty_layer: false,
    }];
    req
}

/// The image's times come from the layers' cache records, so a rebuild
/// that hits the cache gives the same image digest; a changed step gets
/// its own time and so another digest.
#[tokio::test]
async fn a_cached_rebuild_gives_the_same_image_digest() {
    let fx = fixture();
    let exec = FakeExecutor::new();
    let engine = fx.engine("a", &exec);
    let first = build(&engine, dated_request(&["true"]))
        .await
        .expect("first build");
    let second = build(&engine, dated_request(&["true"]))
        .await
        .expect("second build");
    assert_eq!(exec.steps().len(), 1, "the second build is a cache hit");
    assert_eq!(first.manifest_digest, second.manifest_digest);
    // The image is dated by its one layer's history entry.
    let cfg = config_of(&fx, &first.manifest_digest).await;
    let history = cfg.image.history().clone().expect("history");
    assert_eq!(history.len(), 1);
    assert!(history[0].created().is_some());
    assert_eq!(cfg.image.created(), history[0].created());

    let changed = build(&engine, dated_request(&["false"]))
        .await
        .expect("a changed step");
    assert_eq!(exec.steps().len(), 2, "the changed step runs");
    assert_ne!(changed.manifest_digest, first.manifest_digest);
    let cfg2 = config_of(&fx, &changed.manifest_digest).await;
    assert_ne!(
        cfg2.image.created(),
        cfg.image.created(),
        "a step that ran again has its own time"
    );
}

/// The `created` of every history entry of an exported config.
fn history_times(json: &crate::oci::ImageConfigJson) -> Vec<Option<String>> {
    json.image
        .history()
        .iter()
        .flatten()
        .map(|h| h.created().clone())
        .collect()
}

/// BuildKit's history times: base entries keep theirs, a layer's entry
/// takes its layer's time, an empty entry before the first new layer
/// takes that layer's time and one after takes the entry before it; the
/// image is as old as its last entry.
#[test]
fn history_times_follow_the_layers() {
    let layer = |n: &str, created: Option<&str>| {
        crate::refs::Layer::with_blob(
            kiln_solver::Digest::of(n.as_bytes()),
            Compression::Gzip.media_type(),
            kiln_solver::Digest::of(format!("blob {n}").as_bytes()).to_string(),
            1,
            created.map(String::from),
        )
    };
    let entry = |by: &str, created: Option<&str>, empty: bool| kiln_solver::HistoryEntry {
        created: created.map(String::from),
        created_by: by.into(),
        comment: String::new(),
        empty_layer: empty,
    };
    let cfg = ImageConfig {
        history: vec![
            entry("base", Some("2020-01-01T00:00:00Z"), false),
            entry("ENV", None, true),
            entry("RUN a", None, false),
            entry("LABEL", None, true),
            entry("RUN b", None, false),
            entry("CMD", None, true),
        ],
        ..Default::default()
    };
    let layers = [
        // A base layer's own time is never used: its entry has one.
        layer("base", Some("2019-01-01T00:00:00Z")),
        layer("a", Some("2024-05-01T10:00:01Z")),
        layer("b", Some("2024-05-01T10:00:02Z")),
    ];
    let json = crate::export::image_config(&layers, &cfg);
    let times = history_times(&json);
    let t = |s: &str| Some(s.to_string());
    assert_eq!(
        times,
        [
            t("2020-01-01T00:00:00Z"),
            t("2024-05-01T10:00:01Z"),
            t("2024-05-01T10:00:01Z"),
            t("2024-05-01T10:00:01Z"),
            t("2024-05-01T10:00:02Z"),
            t("2024-05-01T10:00:02Z"),
        ]
    );
    assert_eq!(json.image.created(), &t("2024-05-01T10:00:02Z"));

    // A base image with fewer history entries than layers: the entry made
    // up for it takes SOURCE_DATE_EPOCH when set (BuildKit's exporter
    // clamps every entry that is not the base's), and so does `created`.
    let bare = ImageConfig {
        source_date_epoch: Some(1_700_000_000),
        ..Default::default()
    };
    let json = crate::export::image_config(&layers[..1], &bare);
    let created = history_times(&json);
    assert_eq!(created, [t("2023-11-14T22:13:20Z")]);
    assert_eq!(json.image.created(), &t("2023-11-14T22:13:20Z"));
    let json = crate::export::image_config(&layers[..1], &ImageConfig::default());
    assert_eq!(json.image.created(), &t("2019-01-01T00:00:00Z"));
}

/// As BuildKit's exporter patches a config with its epoch: the base
/// image's entries keep their times (even later ones), every other entry
/// and `created` are clamped; an earlier time stays.
#[test]
fn an_exporters_epoch_clamps_every_time_but_the_bases() {
    let layer = |n: u8, created: Option<&str>| {
        crate::refs::Layer::with_blob(
            kiln_solver::Digest::of(&[n]),
            Compression::Gzip.media_type(),
            kiln_solver::Digest::of(&[n, n]).to_string(),
            1,
            created.map(String::from),
        )
    };
    let entry = |by: &str, created: Option<&str>| kiln_solver::HistoryEntry {
        created: created.map(String::from),
        created_by: by.into(),
        comment: String::new(),
        empty_layer: false,
    };
    let cfg = ImageConfig {
        history: vec![
            entry("base", Some("2030-01-01T00:00:00Z")),
            entry("early", Some("2001-01-01T00:00:00Z")),
            entry("late", None),
        ],
        base_history: 1,
        ..Default::default()
    };
    let layers = [
        layer(1, None),
        layer(2, None),
        layer(3, Some("2029-05-05T10:00:00.5Z")),
    ];
    let times = |epoch: Option<i64>| {
        let json = crate::export::image_config_at(&layers, &cfg, epoch);
        (history_times(&json), json.image.created().clone())
    };
    let at = |s: &str| Some(s.to_string());
    // No epoch: the layer's own time.
    assert_eq!(
        times(None),
        (
            vec![
                at("2030-01-01T00:00:00Z"),
                at("2001-01-01T00:00:00Z"),
                at("2029-05-05T10:00:00.5Z")
            ],
            at("2029-05-05T10:00:00.5Z")
        )
    );
    // 2020-01-01T00:00:00Z.
    assert_eq!(
        times(Some(1_577_836_800)),
        (
            vec![
                at("2030-01-01T00:00:00Z"),
                at("2001-01-01T00:00:00Z"),
                at("2020-01-01T00:00:00Z")
            ],
            at("2020-01-01T00:00:00Z")
        )
    );
}

/// A record written before layers could lack a blob (version 2) still
/// loads with its blobs; one of this version records a step's layer
/// without one, and sizes it by its uncompressed tar.
#[tokio::test]
async fn records_of_both_shapes_load() {
    let fx = fixture();
    let diff_id = kiln_solver::Digest::of(b"old layer");
    let blob = fx.blob(b"old layer blob").await;
    // The record's snapshot, as the build that saved it left it.
    let seed = LeaseId::named("test", "seed");
    fx.svc
        .snapshots
        .prepare("a", "", &seed)
        .await
        .expect("prepare");
    fx.svc
        .snapshots
        .commit(diff_id.as_str(), "a", &seed)
        .await
        .expect("commit");
    let old_key = kiln_solver::Digest::of(b"old key");
    let old = serde_json::json!({
        "version": 2,
        "key": old_key.to_string(),
        "outputs": [[{
            "diff_id": diff_id.to_string(),
            "media_type": Compression::Gzip.media_type(),
            "digest": blob,
            "size": 14,
        }]],
    });
    let bytes = serde_json::to_vec(&old).expect("json");
    let record = write_blob(&*fx.svc.content, &bytes, HashMap::new(), &seed)
        .await
        .expect("record blob");
    let mut labels = HashMap::new();
    labels.insert(crate::cache::RECORD_LABEL.to_string(), record.to_string());
    fx.svc
        .leases
        .create(&crate::cache::lease_for(&old_key), "cache", None, labels)
        .await
        .expect("record lease");
    let build = LeaseId::named("test", "build");
    fx.svc
        .leases
        .create(&build, "build", None, HashMap::new())
        .await
        .expect("build lease");
    let got = crate::cache::load(
        &fx.svc,
        &old_key,
        &build,
        &Default::default(),
        &Default::default(),
    )
    .await
    .expect("load")
    .expect("a hit");
    let want = crate::refs::Layer::with_blob(
        diff_id.clone(),
        Compression::Gzip.media_type(),
        blob,
        14,
        None,
    );
    assert_eq!(got, vec![vec![want]]);

    let new_key = kiln_solver::Digest::of(b"new key");
    let lazy = crate::refs::Layer {
        diff_id,
        blob: None,
        uncompressed_size: Some(3072),
        created: Some("2024-05-01T10:00:00Z".into()),
    };
    crate::cache::save(&fx.svc, &new_key, &[vec![lazy.clone()]], "regular", "RUN x")
        .await
        .expect("save");
    let got = crate::cache::load(
        &fx.svc,
        &new_key,
        &build,
        &Default::default(),
        &Default::default(),
    )
    .await
    .expect("load")
    .expect("a hit");
    assert_eq!(got, vec![vec![lazy]]);
    let listed = crate::cache::list(&fx.svc).await.expect("list");
    let rec = listed
        .iter()
        .find(|r| r.lease.id == crate::cache::lease_for(&new_key).as_str())
        .expect("listed");
    assert_eq!(rec.size, 3072, "a layer without a blob counts its tar");
    assert!(
        !rec.lease.labels.contains_key("containerd.io/gc.flat"),
        "a record's lease follows its snapshots' blob labels"
    );
}

#[tokio::test]
async fn a_layer_an_image_exporter_reads_gets_its_blob_as_it_commits() {
    let fx = fixture();
    let engine = fx.engine("a", &FakeExecutor::new());
    let req = BuildRequest {
        export_blobs: true,
        ..request(&["true"], &[])
    };
    let solved = engine
        .solve(&req, Progress::none(), CancellationToken::new())
        .await
        .expect("solve");
    let layer = solved.layers[0].clone();
    let snap = fx
        .svc
        .snapshots
        .stat(layer.diff_id.as_str())
        .await
        .expect("the layer's snapshot");
    let label = crate::blobs::blob_label(Compression::Gzip);
    let eager = snap
        .labels
        .get(&label)
        .cloned()
        .expect("the committed snapshot names its blob");
    let info = fx.svc.content.info(&eager).await.expect("the blob exists");
    assert_eq!(
        info.labels.get(UNCOMPRESSED_LABEL),
        Some(&layer.diff_id.to_string())
    );
    // The export takes that blob: it never views the layer again.
    fx.mem
        .fail_next("Snapshots.View", kiln_snapshot::ErrorKind::Unavailable, 1);
    let first = solved
        .export_image(&ImageConfig::default(), &[], Compression::Gzip)
        .await
        .expect("export");
    assert!(
        fx.svc
            .snapshots
            .view("probe", "", &solved.lease().clone())
            .await
            .is_err(),
        "the export made no view"
    );
    let layer_digest = |manifest: String| {
        let content = fx.svc.content.clone();
        async move {
            let m: Manifest = serde_json::from_slice(&content.read(&manifest).await.expect("read"))
                .expect("manifest JSON");
            m.layers()[0].digest().to_string()
        }
    };
    assert_eq!(
        layer_digest(first.manifest.digest().to_string()).await,
        eager
    );
    // Made on demand from the committed snapshot instead, the blob is the
    // same bytes.
    fx.svc
        .snapshots
        .update_labels(
            layer.diff_id.as_str(),
            HashMap::from([(label.clone(), String::new())]),
        )
        .await
        .expect("drop the label");
    let again = solved
        .export_image(&ImageConfig::default(), &[], Compression::Gzip)
        .await
        .expect("export on demand");
    assert_eq!(
        layer_digest(again.manifest.digest().to_string()).await,
        eager
    );
    solved.release(true).await;
}

/// A layer below the result gets its blob after its step committed
/// (beside the steps on it); the result's own, in the same pass. The solve
/// answers once both are there, and the export finds them.
#[tokio::test]
async fn a_layer_below_the_result_gets_its_blob_after_it_commits() {
    use crate::blobs::{BlobPlan, ExportBlobs};
    let fx = fixture();
    let engine = fx.engine("a", &FakeExecutor::new());
    let mut req = BuildRequest {
        export_blobs: true,
        ..request(&["first"], &[])
    };
    let first = req.result;
    let mut second = req.graph.vertices[first.0].clone();
    let Op::Exec(exec) = &mut second.op else {
        panic!("run_graph ends in an exec")
    };
    exec.meta.args = vec!["second".into()];
    second.inputs = vec![Edge {
        vertex: first,
        output: 0,
    }];
    req.result = req.graph.add(second).expect("second");
    let plans = ExportBlobs {
        compression: Compression::Gzip,
        vertices: crate::blobs::exported_vertices(&req.graph, req.result),
        result: req.result.0,
    };
    assert_eq!(
        ExportBlobs::plan(Some(&plans), first.0),
        BlobPlan::AfterCommit(Compression::Gzip)
    );
    assert_eq!(
        ExportBlobs::plan(Some(&plans), req.result.0),
        BlobPlan::SamePass(Compression::Gzip)
    );
    assert_eq!(ExportBlobs::plan(None, req.result.0), BlobPlan::Lazy);
    let solved = engine
        .solve(&req, Progress::none(), CancellationToken::new())
        .await
        .expect("solve");
    assert_eq!(solved.layers.len(), 2);
    let chain = kiln_snapshot::Digest::chain_ids(&crate::refs::diff_ids(&solved.layers));
    let label = crate::blobs::blob_label(Compression::Gzip);
    for (name, layer) in chain.iter().zip(&solved.layers) {
        let snap = fx
            .svc
            .snapshots
            .stat(name.as_str())
            .await
            .expect("snapshot");
        let blob = snap
            .labels
            .get(&label)
            .unwrap_or_else(|| panic!("{name} names no blob after the solve"));
        let info = fx.svc.content.info(blob).await.expect("the blob exists");
        assert_eq!(
            info.labels.get(UNCOMPRESSED_LABEL),
            Some(&layer.diff_id.to_string())
        );
    }
    fx.mem
        .fail_next("Snapshots.View", kiln_snapshot::ErrorKind::Unavailable, 1);
    solved
        .export_image(&ImageConfig::default(), &[], Compression::Gzip)
        .await
        .expect("the export makes no blob, so no view");
    solved.release(true).await;
}

#[test]
fn only_the_results_own_chain_is_made_into_blobs_as_it_commits() {
    // scratch(0) -> a(1); scratch -> b(2) -> c(3), c also mounting a at /a:
    // an image of c holds the layers of b and c, not a's.
    let (mut g, b) = run_graph(&["b"]);
    let a = g
        .add(g.vertices[b.0].clone())
        .expect("a, the same exec on scratch");
    let mut c = g.vertices[b.0].clone();
    let Op::Exec(exec) = &mut c.op else {
        panic!("run_graph ends in an exec")
    };
    exec.mounts[0].input = Some(0);
    exec.mounts.push(Mount {
        input: Some(1),
        dest: "/a".into(),
        output: None,
        readonly: true,
        ..exec.mounts[0].clone()
    });
    c.inputs = vec![
        Edge {
            vertex: b,
            output: 0,
        },
        Edge {
            vertex: a,
            output: 0,
        },
    ];
    let c = g.add(c).expect("c");
    let out = crate::blobs::exported_vertices(&g, c);
    assert!(out.contains(&c.0) && out.contains(&b.0), "{out:?}");
    assert!(!out.contains(&a.0), "a only feeds a mount: {out:?}");
}

/// The image store, counting record writes.
struct CountingImages {
    inner: Arc<MemContainerd>,
    puts: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl kiln_snapshot::services::Images for CountingImages {
    async fn get(&self, name: &str) -> kiln_snapshot::Result<ImageRecord> {
        self.inner.get(name).await
    }
    async fn put(
        &self,
        record: &ImageRecord,
        lease: Option<&LeaseId>,
    ) -> kiln_snapshot::Result<()> {
        self.puts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.inner.put(record, lease).await
    }
    async fn delete(&self, name: &str, sync: bool) -> kiln_snapshot::Result<()> {
        kiln_snapshot::services::Images::delete(&*self.inner, name, sync).await
    }
    async fn list(&self) -> kiln_snapshot::Result<Vec<ImageRecord>> {
        kiln_snapshot::services::Images::list(&*self.inner).await
    }
}

/// A no-op rebuild finds its image already named: no record write and no
/// hold on its config or manifest (its lease would hold nothing the
/// record does not). An image record moved elsewhere meanwhile is
/// written again.
#[tokio::test]
async fn a_no_op_rebuild_leaves_its_image_record_as_it_is() {
    let mut fx = fixture();
    let images = Arc::new(CountingImages {
        inner: Arc::new(fx.mem.clone()),
        puts: Default::default(),
    });
    fx.svc.images = images.clone();
    let puts = || images.puts.load(std::sync::atomic::Ordering::SeqCst);
    let exec = FakeExecutor::new();
    let engine = fx.engine("a", &exec);
    let name = "docker.io/library/out:latest";
    let first = build(&engine, request(&["true"], &[name]))
        .await
        .expect("first build");
    assert_eq!(puts(), 1, "the first build names its image");

    let second = build(&engine, request(&["true"], &[name]))
        .await
        .expect("no-op rebuild");
    assert_eq!(second.manifest_digest, first.manifest_digest);
    assert_eq!(puts(), 1, "the unchanged record is not written again");
    let record = fx.svc.images.get(name).await.expect("image record");
    assert_eq!(record.digest, first.manifest_digest);

    // Someone points the name elsewhere: the rebuild names it again.
    fx.svc
        .images
        .put(
            &ImageRecord {
                digest: first.config_digest.clone(),
                ..record.clone()
            },
            None,
        )
        .await
        .expect("move the name");
    let before = puts();
    let third = build(&engine, request(&["true"], &[name]))
        .await
        .expect("rebuild after the move");
    assert_eq!(third.manifest_digest, first.manifest_digest);
    assert_eq!(puts(), before + 1, "the moved record is written");
    let record = fx.svc.images.get(name).await.expect("image record");
    assert_eq!(record.digest, first.manifest_digest);
}
