//! The Kubernetes manifests in deploy/kubernetes (issue 13): each one is
//! valid against the Kubernetes JSON schema (PyPI's kubernetes-validate,
//! installed by .ci/install, strict: unknown fields fail), and the
//! node-local DaemonSet keeps the properties docs/KUBERNETES.md promises.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn manifests() -> Vec<PathBuf> {
    let dir = repo().join("deploy/kubernetes");
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    out.sort();
    out
}

#[test]
fn every_manifest_passes_strict_schema_validation() {
    let files = manifests();
    assert!(!files.is_empty(), "no manifests in deploy/kubernetes");
    let (passed, text) = kiln_integration::kubernetes_validate(&files);
    assert!(passed, "{text}");
    for f in &files {
        let name = f.file_name().and_then(|n| n.to_str()).expect("name");
        assert!(
            text.contains(&format!("{name} passed")),
            "{name} not validated:\n{text}"
        );
    }
}

/// The validator rejects what it should: a field the schema lacks.
#[test]
fn the_validator_rejects_an_unknown_field() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: x\nnotAField: 1\n",
    )
    .expect("write");
    let (passed, text) = kiln_integration::kubernetes_validate(&[&bad]);
    assert!(!passed, "an unknown field passed: {text}");
}

#[test]
fn the_node_daemonset_builds_into_the_kubelets_namespace() {
    let text = std::fs::read_to_string(repo().join("deploy/kubernetes/kilnd-node.yaml"))
        .expect("kilnd-node.yaml");
    assert!(text.contains("kind: DaemonSet"));
    assert!(
        text.contains("namespace = \"k8s.io\""),
        "not the kubelet's namespace"
    );
    assert!(text.contains("automountServiceAccountToken: false"));
    // The shim started by the node's containerd must see kilnd's mounts
    // at the same paths.
    for p in ["/var/lib/containerd", "/var/lib/kiln"] {
        let mount = format!("mountPath: {p}\n              mountPropagation: Bidirectional");
        assert!(text.contains(&mount), "{p} is not shared with the node");
    }
}

/// In the kubelet's namespace an image kiln builds carries CRI's
/// `io.cri-containerd.image=managed`, as an image CRI pulled does, so the
/// kubelet treats it as its own; in any other namespace kiln adds no CRI
/// label.
#[tokio::test]
async fn images_built_in_k8s_io_are_marked_as_cri_managed() {
    let h = kiln_integration::Harness::with_busybox("k8s.io").await;
    h.import_busybox("plain", "docker.io/library/busybox:latest")
        .await
        .expect("busybox");
    let ctx = h.context(
        "cri",
        &[("Dockerfile", "FROM busybox\nRUN echo hi > /hi\n")],
    );
    let ctx = ctx.to_str().expect("utf8");
    for ns in ["k8s.io", "plain"] {
        let out = h.build(ns, &["-t", "cri-built", ctx]);
        assert!(out.success, "{ns}: {}", out.stderr);
        let list = h.ctr(ns, &["images", "ls"]).expect("ctr images ls");
        let line = list
            .lines()
            .find(|l| l.starts_with("docker.io/library/cri-built:latest"))
            .unwrap_or_else(|| panic!("{ns}: no built image in\n{list}"));
        assert_eq!(
            line.contains("io.cri-containerd.image=managed"),
            ns == "k8s.io",
            "{ns}: {line}"
        );
    }
}
