//! OCI annotations on exported images (buildx `--annotation`, exporter
//! options `annotation[-TYPE][[PLATFORM]].KEY`), against a real
//! containerd: in the image store (embedded), in an index (one platform
//! with `BUILDKIT_MULTI_PLATFORM`) and in an OCI archive's `index.json`
//! through kilnd, and refused where the image has no place for them.

use crate::common;
use common::remote;
use kiln_integration::Harness;
use serde_json::{json, Value};

const DF: &str = "FROM busybox\nRUN echo annotated > /a\n";

fn host() -> String {
    kiln_engine::oci::worker_platform().to_string()
}

fn blob(h: &Harness, ns: &str, digest: &str) -> Value {
    serde_json::from_str(&h.ctr(ns, &["content", "get", digest]).expect("blob")).expect("json")
}

#[tokio::test]
async fn annotations_go_where_their_type_says_or_fail_naming_why() {
    let ns = "annotations";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.context(ns, &[("Dockerfile", DF)]);
    let c = ctx.to_str().expect("utf8");

    // One platform: the manifest's own annotations, from the flag (for
    // every platform and for this one) and from `-o`.
    let narrowed = format!("manifest[{}]:only.here=1", host());
    h.build(
        ns,
        &[
            "--annotation",
            "org.opencontainers.image.title=kiln test",
            "--annotation",
            &narrowed,
            "--annotation",
            "manifest-descriptor:on.descriptor=d",
            "-o",
            "type=image,name=ann:1,annotation.from.output=o",
            c,
        ],
    )
    .ok();
    let m = h.manifest(ns, "docker.io/library/ann:1");
    assert_eq!(
        m["annotations"],
        json!({"org.opencontainers.image.title": "kiln test", "only.here": "1", "from.output": "o"})
    );
    // The descriptor's annotations are the image record's target's, as
    // BuildKit's image exporter stores them: containerd's own export of
    // the image shows them in its index.json.
    let tar = h.state_dir().join("ann-1.tar");
    h.ctr(
        ns,
        &[
            "images",
            "export",
            tar.to_str().expect("utf8"),
            "docker.io/library/ann:1",
        ],
    )
    .expect("ctr export");
    let mut archive = tar::Archive::new(std::fs::File::open(&tar).expect("tar"));
    let index: Value = archive
        .entries()
        .expect("entries")
        .filter_map(Result::ok)
        .find(|e| e.path().is_ok_and(|p| p.as_os_str() == "index.json"))
        .map(|e| serde_json::from_reader(e).expect("index.json"))
        .expect("index.json");
    assert_eq!(
        index["manifests"][0]["annotations"]["on.descriptor"], "d",
        "{index}"
    );
    // And, as BuildKit's record of a single-platform image, its config.
    assert_eq!(
        index["manifests"][0]["annotations"]["config.digest"], m["config"]["digest"],
        "{index}"
    );
    assert!(m["annotations"].get("on.descriptor").is_none());

    // An index of one platform: the index's, the manifest descriptor's in
    // it, the manifest's.
    h.build(
        ns,
        &[
            "--build-arg",
            "BUILDKIT_MULTI_PLATFORM=1",
            "--annotation",
            "index:idx=i",
            "--annotation",
            "manifest-descriptor,manifest:both=b",
            "-t",
            "ann:index",
            c,
        ],
    )
    .ok();
    let index = h.manifest(ns, "docker.io/library/ann:index");
    assert_eq!(index["annotations"], json!({"idx": "i"}));
    let child = &index["manifests"][0];
    assert_eq!(child["annotations"], json!({"both": "b"}));
    let m = blob(&h, ns, child["digest"].as_str().expect("digest"));
    assert_eq!(m["annotations"], json!({"both": "b"}));

    // Without annotations a manifest has none (not an empty object).
    h.build(ns, &["-t", "ann:plain", c]).ok();
    assert!(h.manifest(ns, "docker.io/library/ann:plain")["annotations"].is_null());

    // No place for them: index annotations on one image, a platform the
    // build does not make, a type BuildKit does not have.
    let refused = |args: &[&str], text: &str| {
        let mut all = args.to_vec();
        all.push(c);
        let out = h.build(ns, &all);
        assert!(!out.success, "{args:?} built");
        assert!(out.stderr.contains(text), "{args:?}:\n{}", out.stderr);
    };
    refused(
        &["--annotation", "index:k=v", "-t", "ann:bad"],
        "index annotations not supported for single platform export",
    );
    refused(
        &["--annotation", "manifest[linux/s390x]:k=v", "-t", "ann:bad"],
        "invalid annotation: no platform linux/s390x found in source",
    );
    refused(
        &["--annotation", "layer:k=v", "-t", "ann:bad"],
        "unknown annotation type \"layer\"",
    );
    refused(
        &["-o", "type=image,name=ann:bad,annotation-layer.k=v"],
        "unrecognized annotation type layer",
    );
    assert!(!h
        .ctr(ns, &["images", "ls", "-q"])
        .expect("ctr")
        .contains("ann:bad"));
}

#[tokio::test]
async fn kilnd_writes_annotations_into_an_oci_archive() {
    let ns = "annotations-kilnd";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ctx = h.context(ns, &[("Dockerfile", DF)]);
    let c = ctx.to_str().expect("utf8");
    let dir = h.state_dir().join("annotated");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let tar = dir.join("oci.tar");
    let out = format!("type=oci,dest={},name=ann:oci", tar.display());
    remote(
        &h,
        &k,
        ns,
        &[
            "--annotation",
            "manifest,manifest-descriptor:k=v",
            "-o",
            &out,
            c,
        ],
    )
    .ok();
    let mut archive = tar::Archive::new(std::fs::File::open(&tar).expect("tar"));
    let mut files = std::collections::HashMap::new();
    for e in archive.entries().expect("entries") {
        let mut e = e.expect("entry");
        let path = e.path().expect("path").to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(&mut e, &mut bytes).expect("read");
        files.insert(path, bytes);
    }
    let index: Value = serde_json::from_slice(&files["index.json"]).expect("index.json");
    let entry = &index["manifests"][0];
    // The descriptor's own, beside the name and time kilnd adds.
    assert_eq!(entry["annotations"]["k"], "v", "{index}");
    assert!(entry["annotations"]["org.opencontainers.image.created"].is_string());
    let digest = entry["digest"].as_str().expect("digest");
    let path = format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    let manifest: Value = serde_json::from_slice(&files[&path]).expect("manifest");
    assert_eq!(manifest["annotations"], json!({"k": "v"}));

    // kilnd refuses a bad one before the build, naming it.
    let bad = remote(
        &h,
        &k,
        ns,
        &["-o", "type=image,name=ann:bad,annotation-layer.k=v", c],
    );
    assert!(!bad.success);
    assert!(
        bad.stderr.contains("unrecognized annotation type layer"),
        "{}",
        bad.stderr
    );
}
