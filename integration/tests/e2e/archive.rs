//! Image archives against a private containerd: an OCI and a Docker
//! archive of busybox import into another namespace with `ctr`, keep the
//! manifest digest, unpack and run; the Docker archive's `manifest.json`
//! names only files that are in the tar.

use kiln_engine::archive::{write_archive, ArchiveFormat};
use kiln_engine::oci::descriptor;
use kiln_integration::Harness;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

const NS: &str = "archive";
const IMAGE: &str = "docker.io/library/busybox:latest";

/// Every entry of the tar at `path`: name -> data.
fn tar_entries(path: &Path) -> (Vec<String>, HashMap<String, Vec<u8>>) {
    let f = std::fs::File::open(path).expect("open archive");
    let mut ar = tar::Archive::new(f);
    let mut order = Vec::new();
    let mut data = HashMap::new();
    for e in ar.entries().expect("tar entries") {
        let mut e = e.expect("tar entry");
        let name = String::from_utf8(e.path_bytes().into_owned()).expect("utf8 name");
        let mut body = Vec::new();
        e.read_to_end(&mut body).expect("read entry");
        order.push(name.clone());
        data.insert(name, body);
    }
    (order, data)
}

/// Imports `file` into a fresh namespace and checks the image is there
/// with `digest`, unpacked, and runs.
fn import_and_run(h: &Harness, ns: &str, file: &Path, digest: &str) {
    let file = file.to_str().expect("utf8 path");
    h.ctr(ns, &["images", "import", file])
        .unwrap_or_else(|e| panic!("import {file}: {e}"));
    let list = h.ctr(ns, &["images", "ls"]).expect("ctr images ls");
    let line = list
        .lines()
        .find(|l| l.split_whitespace().next() == Some(IMAGE))
        .unwrap_or_else(|| panic!("{IMAGE} not imported from {file}:\n{list}"));
    assert_eq!(
        line.split_whitespace().nth(2),
        Some(digest),
        "manifest digest after importing {file}:\n{list}"
    );
    let out = h
        .ctr(
            ns,
            &["run", "--rm", IMAGE, &format!("{ns}-t1"), "echo", "ok"],
        )
        .unwrap_or_else(|e| panic!("run the image imported from {file}: {e}"));
    assert_eq!(out.trim(), "ok", "{file}");
}

#[tokio::test]
async fn oci_and_docker_archives_import_and_run() {
    let h = Harness::with_busybox(NS).await;
    let ctrd = h.client(NS).await.expect("connect");
    let record = ctrd.image_get(IMAGE).await.expect("busybox record");
    let manifest = descriptor(&record.media_type, &record.digest, record.size)
        .expect("busybox record is a valid descriptor");
    let names = vec![IMAGE.to_string()];

    let mut paths = Vec::new();
    for (format, file) in [
        (ArchiveFormat::Oci, "busybox-oci.tar"),
        (ArchiveFormat::Docker, "busybox-docker.tar"),
    ] {
        let path = h.state_dir().join(file);
        let mut out = tokio::fs::File::create(&path)
            .await
            .expect("create archive");
        write_archive(
            &kiln_engine::Services::containerd(&ctrd),
            &manifest,
            &names,
            format,
            &mut out,
        )
        .await
        .unwrap_or_else(|e| panic!("write {format:?} archive: {e}"));
        drop(out);
        paths.push(path);
    }

    // Layout and order of the OCI archive; the same blobs in the Docker one.
    let manifest_json = h.manifest(NS, IMAGE);
    let hex = |d: &serde_json::Value| {
        format!(
            "blobs/sha256/{}",
            d["digest"]
                .as_str()
                .and_then(|d| d.strip_prefix("sha256:"))
                .expect("sha256 digest")
        )
    };
    let config_path = hex(&manifest_json["config"]);
    let layer_paths: Vec<String> = manifest_json["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(hex)
        .collect();
    let manifest_path = format!(
        "blobs/sha256/{}",
        record.digest.strip_prefix("sha256:").expect("sha256")
    );
    let mut want = vec![
        "oci-layout".to_string(),
        "blobs/".into(),
        "blobs/sha256/".into(),
        manifest_path.clone(),
        config_path.clone(),
    ];
    want.extend(layer_paths.iter().cloned());
    want.push("index.json".into());
    let (oci_order, oci) = tar_entries(&paths[0]);
    assert_eq!(oci_order, want);
    assert_eq!(oci["oci-layout"], br#"{"imageLayoutVersion":"1.0.0"}"#);
    let index: serde_json::Value = serde_json::from_slice(&oci["index.json"]).expect("index");
    let entries = index["manifests"].as_array().expect("index manifests");
    assert_eq!(entries.len(), 1, "{index}");
    assert_eq!(entries[0]["digest"], record.digest.as_str());
    assert_eq!(entries[0]["annotations"]["io.containerd.image.name"], IMAGE);
    assert_eq!(
        entries[0]["annotations"]["org.opencontainers.image.ref.name"],
        "latest"
    );

    let (docker_order, docker) = tar_entries(&paths[1]);
    want.push("manifest.json".into());
    assert_eq!(docker_order, want);
    let dm: serde_json::Value =
        serde_json::from_slice(&docker["manifest.json"]).expect("manifest.json");
    let images = dm.as_array().expect("manifest.json is a list");
    assert_eq!(images.len(), 1, "{dm}");
    assert_eq!(images[0]["RepoTags"], serde_json::json!(["busybox:latest"]));
    assert_eq!(images[0]["Config"], config_path.as_str());
    let listed: Vec<&str> = images[0]["Layers"]
        .as_array()
        .expect("Layers")
        .iter()
        .map(|l| l.as_str().expect("layer path"))
        .collect();
    assert_eq!(listed, layer_paths);
    for path in std::iter::once(config_path.as_str()).chain(listed.iter().copied()) {
        assert!(
            docker.contains_key(path),
            "{path} listed but not in the tar"
        );
    }

    import_and_run(&h, "other", &paths[0], &record.digest);
    import_and_run(&h, "other-docker", &paths[1], &record.digest);
}
