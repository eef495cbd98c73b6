//! Merge ops (`COPY --link`): a layer made on scratch and merged onto a
//! base keeps its blob whatever the base, and a base change does not run
//! it again.

use super::*;
use kiln_solver::{FileAction, FileActionKind, FileInput, FileMkFile, FileOp};

/// scratch -> `/base` holding `base` (the base), scratch -> `RUN link`
/// (the linked step), merged in that order.
fn merge_request(base: &str, name: &str) -> BuildRequest {
    let (mut graph, link) = run_graph(&["link"]);
    let base = graph
        .add(vertex(
            Op::File(FileOp {
                actions: vec![FileAction {
                    input: FileInput::Scratch,
                    secondary_input: None,
                    output: Some(0),
                    action: FileActionKind::MkFile(FileMkFile {
                        path: "/base".into(),
                        mode: 0o644,
                        data: base.as_bytes().to_vec(),
                        owner: None,
                        timestamp: None,
                    }),
                }],
            }),
            vec![],
            "base",
        ))
        .expect("add base");
    let edge = |vertex| Edge { vertex, output: 0 };
    let merged = graph
        .add(vertex(
            Op::Merge(MergeOp { inputs: vec![0, 1] }),
            vec![edge(base), edge(link)],
            "LINK",
        ))
        .expect("add merge");
    BuildRequest {
        graph,
        result: merged,
        ..request(&[], &[name])
    }
}

async fn layers_of(fx: &Fixture, r: &BuildResult) -> Vec<String> {
    let manifest: Manifest = serde_json::from_slice(
        &fx.svc
            .content
            .read(&r.manifest_digest)
            .await
            .expect("manifest"),
    )
    .expect("manifest JSON");
    manifest
        .layers()
        .iter()
        .map(|l| l.digest().to_string())
        .collect()
}

#[tokio::test]
async fn a_merged_layer_is_the_same_blob_on_another_base_and_runs_once() {
    let fx = fixture();
    let exec = FakeExecutor::new();
    let engine = fx.engine("a", &exec);
    let one = build(
        &engine,
        merge_request("one", "docker.io/library/one:latest"),
    )
    .await
    .expect("first base");
    let two = build(
        &engine,
        merge_request("two", "docker.io/library/two:latest"),
    )
    .await
    .expect("second base");
    assert_eq!(exec.steps().len(), 1, "the linked step runs once");
    let (one, two) = (layers_of(&fx, &one).await, layers_of(&fx, &two).await);
    assert_eq!(one.len(), 2, "base layer and linked layer: {one:?}");
    assert_eq!(two.len(), 2, "{two:?}");
    assert_ne!(one[0], two[0], "the bases differ");
    assert_eq!(one[1], two[1], "the linked layer's blob is the same");
}

#[tokio::test]
async fn a_merged_snapshot_holds_both_inputs() {
    let fx = fixture();
    let exec = FakeExecutor::new();
    let engine = fx.engine("a", &exec);
    let r = build(
        &engine,
        merge_request("one", "docker.io/library/one:latest"),
    )
    .await
    .expect("build");
    let config: ImageConfigJson =
        serde_json::from_slice(&fx.svc.content.read(&r.config_digest).await.expect("config"))
            .expect("config JSON");
    let diff_ids: Vec<kiln_snapshot::Digest> = config
        .image
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| kiln_snapshot::Digest::parse(&d.to_string()).expect("digest"))
        .collect();
    let top = kiln_snapshot::Digest::chain_ids(&diff_ids)
        .last()
        .expect("two layers")
        .to_string();
    assert!(
        kiln_snapshot::services::snapshot_exists(&*fx.svc.snapshots, &top)
            .await
            .expect("stat"),
        "the merged chain is unpacked under its chainID"
    );
}
