//! Cache export and import on the fakes: a build on one fake containerd
//! exports to a local layout, a build of the same graph on a fresh one
//! imports it.

use super::*;
use crate::progress::{self, ProgressEvent};
use crate::remotecache::{CacheExport, CacheImport, ExportTarget, ImportSource, Mode};
use kiln_solver::{FileAction, FileActionKind, FileCopy, FileInput, FileMkFile, FileOp};
use std::path::Path;

fn mkfile(path: &str, data: &str) -> FileAction {
    FileAction {
        input: FileInput::Scratch,
        secondary_input: None,
        output: Some(0),
        action: FileActionKind::MkFile(FileMkFile {
            path: path.into(),
            mode: 0o644,
            data: data.as_bytes().to_vec(),
            owner: None,
            timestamp: Some(0),
        }),
    }
}

/// `first` (a file on scratch) and a side stage `side`; the result copies
/// the side stage's file onto `first`, so `side`'s own chain is not part
/// of the result's.
fn two_stage_graph() -> (Graph, VertexId) {
    let mut g = Graph::default();
    let first = g
        .add(vertex(
            Op::File(FileOp {
                actions: vec![mkfile("/a", "first")],
            }),
            vec![],
            "first",
        ))
        .expect("add first");
    let side = g
        .add(vertex(
            Op::File(FileOp {
                actions: vec![mkfile("/s", "side")],
            }),
            vec![],
            "side",
        ))
        .expect("add side");
    let copy = g
        .add(vertex(
            Op::File(FileOp {
                actions: vec![FileAction {
                    input: FileInput::Input(0),
                    secondary_input: Some(FileInput::Input(1)),
                    output: Some(0),
                    action: FileActionKind::Copy(FileCopy {
                        src: "/s".into(),
                        // Another path: the copy's layer must not be the
                        // side stage's own (same tar, same blob).
                        dest: "/from-side".into(),
                        follow_symlink: true,
                        create_dest_path: true,
                        timestamp: Some(0),
                        ..Default::default()
                    }),
                }],
            }),
            vec![
                Edge {
                    vertex: first,
                    output: 0,
                },
                Edge {
                    vertex: side,
                    output: 0,
                },
            ],
            "copy",
        ))
        .expect("add copy");
    (g, copy)
}

fn request(exports: Vec<CacheExport>, imports: Vec<CacheImport>) -> BuildRequest {
    let (graph, result) = two_stage_graph();
    BuildRequest {
        graph,
        result,
        config: ImageConfig::default(),
        locals: HashMap::new(),
        oci_stores: HashMap::new(),
        names: vec!["docker.io/library/out:latest".into()],
        compression: Compression::Gzip,
        cache_imports: imports,
        cache_exports: exports,
        credentials: crate::build::anonymous(),
        resolve_mode: crate::resolve::ResolveMode::Default,
        push: None,
        pinned: Default::default(),
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

fn local_export(dir: &Path, mode: Mode) -> CacheExport {
    CacheExport {
        target: ExportTarget::Local {
            dest: dir.to_path_buf(),
            tag: "latest".into(),
        },
        mode,
        style: Default::default(),
        ignore_error: false,
        shown_as: None,
    }
}

fn local_import(dir: &Path) -> CacheImport {
    CacheImport {
        source: ImportSource::Local {
            src: dir.to_path_buf(),
            tag: "latest".into(),
            digest: None,
        },
        shown_as: None,
    }
}

/// Builds and returns the names of the vertices that were CACHED, the
/// info lines, and the result.
async fn build_collecting(
    engine: &Engine,
    req: BuildRequest,
) -> (BTreeSet<String>, Vec<String>, crate::Result<BuildResult>) {
    let (tx, mut rx) = progress::channel();
    let collect = tokio::spawn(async move {
        let mut cached = BTreeSet::new();
        let mut info = Vec::new();
        while let Some(e) = rx.recv().await {
            match e {
                ProgressEvent::Completed {
                    name, cached: true, ..
                } => {
                    cached.insert(name);
                }
                ProgressEvent::Info { message } => info.push(message),
                _ => {}
            }
        }
        (cached, info)
    });
    let r = engine.build(req, tx, CancellationToken::new()).await;
    let (cached, info) = collect.await.expect("collector");
    (cached, info, r)
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

type Image = (String, Vec<String>);

/// What [`export_then_import`] saw: the hits on the importing side, its
/// progress messages, both images, and how many layer blobs the exporting
/// namespace ended up with.
type Exchanged = (BTreeSet<String>, Vec<String>, Image, Image, usize);

async fn export_then_import(mode: Mode) -> Exchanged {
    let cache = tempfile::tempdir().expect("cache dir");
    let a = fixture();
    let (cached, _, r) = build_collecting(
        &a.engine("a", &FakeExecutor::new()),
        request(vec![local_export(cache.path(), mode)], vec![]),
    )
    .await;
    r.expect("build on a");
    assert!(
        cached.is_empty(),
        "a fresh namespace has no cache: {cached:?}"
    );
    assert!(cache.path().join("index.json").is_file());
    assert!(cache.path().join("oci-layout").is_file());
    let layers_a = layer_digests(&a, "docker.io/library/out:latest").await;
    let blobs_a = a
        .mem
        .list_content()
        .iter()
        .filter(|c| c.labels.contains_key(UNCOMPRESSED_LABEL))
        .count();

    let b = fixture();
    let (cached, info, r) = build_collecting(
        &b.engine("b", &FakeExecutor::new()),
        request(vec![], vec![local_import(cache.path())]),
    )
    .await;
    r.expect("build on b");
    let layers_b = layer_digests(&b, "docker.io/library/out:latest").await;
    (cached, info, layers_a, layers_b, blobs_a)
}

/// The image's manifest digest and its layer digests.
async fn layer_digests(fx: &Fixture, name: &str) -> (String, Vec<String>) {
    let rec = fx.svc.images.get(name).await.expect("image");
    let m: Manifest =
        serde_json::from_slice(&fx.svc.content.read(&rec.digest).await.expect("manifest"))
            .expect("manifest json");
    (
        rec.digest.clone(),
        m.layers().iter().map(|l| l.digest().to_string()).collect(),
    )
}

#[tokio::test]
async fn max_mode_makes_every_step_of_a_fresh_namespace_a_hit() {
    let (cached, info, layers_a, layers_b, blobs_a) = export_then_import(Mode::Max).await;
    assert_eq!(blobs_a, 3, "the image's two layers and the side stage's");
    assert_eq!(cached, set(&["first", "side", "copy"]));
    assert!(
        info.iter()
            .any(|m| m.starts_with("importing cache from local cache")),
        "{info:?}"
    );
    assert_eq!(
        layers_a, layers_b,
        "the imported blobs are the image's layers, dated by the cache: same image digest"
    );
}

#[tokio::test]
async fn min_mode_leaves_the_side_stage_out() {
    let (cached, _, layers_a, layers_b, blobs_a) = export_then_import(Mode::Min).await;
    assert_eq!(blobs_a, 2, "no blob for the side stage that min leaves out");
    // The copy is answered by its plan key, so the side stage it reads
    // does not run: shown as cached, as in BuildKit.
    assert_eq!(cached, set(&["first", "side", "copy"]));
    assert_eq!(layers_a, layers_b, "same layers and same image digest");
}

#[tokio::test]
async fn a_missing_import_is_a_warning_and_the_build_runs() {
    let missing = tempfile::tempdir().expect("dir");
    let fx = fixture();
    let (cached, info, r) = build_collecting(
        &fx.engine("a", &FakeExecutor::new()),
        request(vec![], vec![local_import(&missing.path().join("nope"))]),
    )
    .await;
    r.expect("the build runs without the cache");
    assert!(cached.is_empty());
    assert!(
        info.iter()
            .any(|m| m.starts_with("WARNING: cache import from local cache")
                && m.contains("index.json")),
        "{info:?}"
    );
}

#[tokio::test]
async fn an_inline_cache_is_in_the_image_config() {
    let fx = fixture();
    let inline = CacheExport {
        target: ExportTarget::Inline,
        mode: Mode::Min,
        style: Default::default(),
        ignore_error: false,
        shown_as: None,
    };
    let (_, _, r) = build_collecting(
        &fx.engine("a", &FakeExecutor::new()),
        request(vec![inline], vec![]),
    )
    .await;
    let r = r.expect("build");
    let m: Manifest = serde_json::from_slice(
        &fx.svc
            .content
            .read(&r.manifest_digest)
            .await
            .expect("manifest"),
    )
    .expect("manifest json");
    let cfg = fx.svc.content.read(&r.config_digest).await.expect("config");
    let descs: Vec<crate::remotecache::format::Descriptor> = m
        .layers()
        .iter()
        .map(|l| crate::remotecache::format::Descriptor {
            media_type: l.media_type().to_string(),
            digest: l.digest().to_string(),
            size: l.size() as i64,
            annotations: Default::default(),
        })
        .collect();
    let chains = crate::remotecache::format::parse_inline(&cfg, &r.config_digest, &descs)
        .expect("parses")
        .expect("the config carries an inline cache");
    // first (1 layer) and copy (2 layers) are in the image; side is not.
    let mut lens: Vec<usize> = chains.by_key.values().map(|c| c[0].len()).collect();
    lens.sort();
    assert_eq!(lens, [1, 2]);
    assert_eq!(chains.plans.len(), 2, "each with its plan key");
}

#[tokio::test]
async fn a_failed_export_fails_the_build_unless_errors_are_ignored() {
    // A file where the layout directory should be.
    let tmp = tempfile::tempdir().expect("dir");
    let not_a_dir = tmp.path().join("file");
    std::fs::write(&not_a_dir, "x").expect("write");
    let fx = fixture();
    let engine = fx.engine("a", &FakeExecutor::new());
    let (_, _, r) = build_collecting(
        &engine,
        request(vec![local_export(&not_a_dir, Mode::Min)], vec![]),
    )
    .await;
    let err = r.expect_err("the export fails");
    assert!(matches!(err, WorkerError::RemoteCache(_)), "{err:?}");
    assert!(
        err.to_string().contains(&not_a_dir.display().to_string()),
        "{err}"
    );
    let mut ignored = local_export(&not_a_dir, Mode::Min);
    ignored.ignore_error = true;
    let (_, info, r) = build_collecting(&engine, request(vec![ignored], vec![])).await;
    r.expect("ignore-error=true keeps the build");
    assert!(
        info.iter()
            .any(|m| m.starts_with("WARNING: cache export to local cache")
                && m.contains("ignore-error=true")),
        "{info:?}"
    );
}

#[tokio::test]
async fn a_corrupt_blob_in_an_imported_cache_is_a_miss() {
    let cache = tempfile::tempdir().expect("cache dir");
    let a = fixture();
    let (_, _, r) = build_collecting(
        &a.engine("a", &FakeExecutor::new()),
        request(vec![local_export(cache.path(), Mode::Max)], vec![]),
    )
    .await;
    r.expect("build on a");
    // The image's layer blobs get other bytes (JSON blobs stay intact).
    let (_, layers) = layer_digests(&a, "docker.io/library/out:latest").await;
    for d in &layers {
        let p = crate::remotecache::export::blob_path(cache.path(), d).expect("path");
        std::fs::write(&p, b"not the layer").expect("corrupt");
    }
    let b = fixture();
    let (cached, _, r) = build_collecting(
        &b.engine("b", &FakeExecutor::new()),
        request(vec![], vec![local_import(cache.path())]),
    )
    .await;
    r.expect("the build runs its steps instead");
    // Only the side stage, whose blob is not in the image, still hits.
    assert_eq!(cached, set(&["side"]));
}
