//! `oci-mediatypes=false`: images written with Docker's schema 2 media
//! types (manifest, config, gzip layers; a manifest list for several
//! platforms), as BuildKit's exporters write them, embedded and through
//! kilnd, into containerd's store and into a `docker` archive; containerd
//! runs them. What Docker's types cannot carry (zstd layers, descriptor
//! annotations) fails before the build, with BuildKit's texts.

use crate::common;
use common::remote;

use kiln_integration::Harness;

const DF: &str = "FROM busybox\nRUN echo docker-types > /marker\nCMD [\"cat\", \"/marker\"]\n";

const MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const CONFIG: &str = "application/vnd.docker.container.image.v1+json";
const LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
const LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

/// Checks that `manifest` is a Docker schema 2 manifest throughout.
fn assert_docker_manifest(manifest: &serde_json::Value) {
    assert_eq!(manifest["schemaVersion"], 2, "{manifest}");
    assert_eq!(manifest["mediaType"], MANIFEST, "{manifest}");
    assert_eq!(manifest["config"]["mediaType"], CONFIG, "{manifest}");
    let layers = manifest["layers"].as_array().expect("layers");
    assert!(!layers.is_empty(), "{manifest}");
    for l in layers {
        assert_eq!(l["mediaType"], LAYER, "{manifest}");
    }
}

/// The TYPE column of `ctr images ls` for image `name`.
fn listed_type(h: &Harness, ns: &str, name: &str) -> String {
    let images = h.ctr(ns, &["images", "ls"]).expect("ctr images ls");
    images
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or_else(|| panic!("{name} not in\n{images}"))
        .to_string()
}

#[tokio::test]
async fn docker_media_types_embedded_and_through_kilnd() {
    let ns = "mediatypes";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.context("mt", &[("Dockerfile", DF)]);
    let c = ctx.to_str().expect("utf8");

    // Embedded, beside the same build with OCI's types: the layers are
    // the same blobs, named by Docker's type.
    let docker = "docker.io/library/mt:embedded";
    let oci = "docker.io/library/mt:oci";
    for (name, types) in [(docker, "false"), (oci, "true")] {
        let o = format!("type=image,name={name},oci-mediatypes={types}");
        let out = h.build(ns, &["-o", &o, c]);
        assert!(out.success, "{}", out.stderr);
    }
    let manifest = h.manifest(ns, docker);
    assert_docker_manifest(&manifest);
    assert_eq!(listed_type(&h, ns, docker), MANIFEST);
    let oci_manifest = h.manifest(ns, oci);
    assert_eq!(
        oci_manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    let digests = |m: &serde_json::Value| -> Vec<String> {
        m["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .map(|l| l["digest"].as_str().expect("digest").to_string())
            .collect()
    };
    assert_eq!(digests(&manifest), digests(&oci_manifest));
    assert_eq!(
        manifest["config"]["digest"],
        oci_manifest["config"]["digest"]
    );
    // `oci-artifact` and `attestation-inline` only shape attestation
    // manifests, which kiln does not make: the same image.
    let artifact = "docker.io/library/mt:artifact";
    let o = format!("type=image,name={artifact},oci-artifact=true,attestation-inline=true");
    h.build(ns, &["-o", &o, c]).ok();
    assert_eq!(h.image_digest(ns, artifact), h.image_digest(ns, oci));
    let want = "docker-types\n";
    let printed = h.run_image_expecting(ns, docker, "mt-embedded", &[], want);
    assert_eq!(printed, want);

    // A layer that keeps a zstd blob (made by an earlier zstd export; no
    // force-compression) is named with Docker's zstd type, as BuildKit's.
    let zctx = h.context(
        "mt-zstd",
        &[("Dockerfile", "FROM busybox\nRUN echo zstd > /z\n")],
    );
    let zc = zctx.to_str().expect("utf8");
    h.build(
        ns,
        &[
            "-o",
            "type=image,name=docker.io/library/mt:z,compression=zstd",
            zc,
        ],
    )
    .ok();
    let zd = "docker.io/library/mt:zd";
    h.build(
        ns,
        &[
            "-o",
            &format!("type=image,name={zd},oci-mediatypes=false"),
            zc,
        ],
    )
    .ok();
    let m = h.manifest(ns, zd);
    assert_eq!(m["layers"][0]["mediaType"], LAYER, "{m}");
    assert_eq!(
        m["layers"][1]["mediaType"], "application/vnd.docker.image.rootfs.diff.tar.zstd",
        "{m}"
    );
    assert_eq!(
        m["layers"][1]["digest"],
        h.manifest(ns, "docker.io/library/mt:z")["layers"][1]["digest"]
    );

    // Through kilnd: into the store, and as a docker archive that another
    // namespace imports and runs.
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let name = "docker.io/library/mt:kilnd";
    remote(
        &h,
        &k,
        ns,
        &[
            "-o",
            &format!("type=image,name={name},oci-mediatypes=false"),
            c,
        ],
    )
    .ok();
    assert_docker_manifest(&h.manifest(ns, name));
    assert_eq!(listed_type(&h, ns, name), MANIFEST);
    let file = h.state_dir().join("mt-docker.tar");
    let archived = "docker.io/library/mt:archive";
    remote(
        &h,
        &k,
        ns,
        &[
            "-o",
            &format!(
                "type=docker,dest={},name={archived},oci-mediatypes=false",
                file.display()
            ),
            c,
        ],
    )
    .ok();
    let ns2 = "mediatypes-imported";
    h.ctr(ns2, &["images", "import", file.to_str().expect("utf8")])
        .expect("ctr import");
    assert_docker_manifest(&h.manifest(ns2, archived));
    let printed = h.run_image_expecting(ns2, archived, "mt-archive", &[], want);
    assert_eq!(printed, want);

    // Several platforms: a Docker manifest list of Docker manifests (no
    // RUN, so no platform needs emulation).
    let multi = h.context(
        "mt-multi",
        &[
            (
                "Dockerfile",
                "FROM scratch\nARG TARGETARCH\nCOPY arch-${TARGETARCH}.txt /arch.txt\n",
            ),
            ("arch-amd64.txt", "amd64\n"),
            ("arch-arm64.txt", "arm64\n"),
        ],
    );
    let list = "docker.io/library/mt:list";
    remote(
        &h,
        &k,
        ns,
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "-o",
            &format!("type=image,name={list},oci-mediatypes=false"),
            multi.to_str().expect("utf8"),
        ],
    )
    .ok();
    let index = h.manifest(ns, list);
    assert_eq!(index["mediaType"], LIST, "{index}");
    assert_eq!(listed_type(&h, ns, list), LIST);
    let children = index["manifests"].as_array().expect("manifests");
    assert_eq!(children.len(), 2, "{index}");
    for child in children {
        assert_eq!(child["mediaType"], MANIFEST, "{index}");
        let digest = child["digest"].as_str().expect("digest");
        let m: serde_json::Value =
            serde_json::from_slice(&common::blob(&h, ns, digest)).expect("manifest JSON");
        assert_docker_manifest(&m);
    }

    // What Docker's types cannot carry fails before any step runs.
    for (o, want) in [
        (
            "type=image,name=x,oci-mediatypes=false,compression=zstd",
            "exporter option \"compression=zstd\" conflicts with \"oci-mediatypes=false\"",
        ),
        (
            "type=image,name=x,oci-mediatypes=false,annotation-manifest-descriptor.a=b",
            "cannot export annotations with \"oci-mediatypes=false\"",
        ),
        (
            "type=image,name=x,oci-mediatypes=false,oci-artifact=true",
            "exporter option \"oci-artifact=true\" conflicts with \"oci-mediatypes=false\"",
        ),
    ] {
        let marked = h.context(
            "mt-refused",
            &[("Dockerfile", "FROM busybox\nRUN echo REFUSED-STEP-RAN\n")],
        );
        let m = marked.to_str().expect("utf8");
        for out in [
            h.build(ns, &["-o", o, m]),
            h.kiln(
                ns,
                &[
                    "--addr",
                    &k.addr(),
                    "build",
                    "--progress",
                    "plain",
                    "-o",
                    o,
                    m,
                ],
            )
            .expect("kiln runs"),
        ] {
            assert!(!out.success, "{o}");
            assert!(out.stderr.contains(want), "{o}: {}", out.stderr);
            assert!(!out.stderr.contains("REFUSED-STEP-RAN"), "{}", out.stderr);
        }
    }
}

/// A Docker-typed image pushed to Debian's docker-registry: a fresh
/// containerd pulls the same manifest, sees Docker's type, and runs it.
#[tokio::test]
async fn a_docker_typed_push_pulls_back_and_runs() {
    use kiln_integration::registry::Registry;
    let ns = "mediatypes-push";
    let h = Harness::with_busybox(ns).await;
    let reg = Registry::start().await.expect("registry starts");
    let ctx = h.context("mt-push", &[("Dockerfile", DF)]);
    let name = reg.reference("kiln/dockertypes:v1");
    let out = h.build(
        ns,
        &[
            "-o",
            &format!("type=image,name={name},push=true,oci-mediatypes=false"),
            ctx.to_str().expect("utf8"),
        ],
    );
    assert!(out.success, "{}", out.stderr);
    let built = h.image_digest(ns, &name);
    let fresh = Harness::start_private()
        .await
        .expect("fresh containerd starts");
    let pulled_ns = "pulled";
    fresh
        .ctr(pulled_ns, &["images", "pull", "--plain-http", &name])
        .expect("ctr images pull");
    assert_eq!(fresh.image_digest(pulled_ns, &name), built);
    assert_eq!(listed_type(&fresh, pulled_ns, &name), MANIFEST);
    assert_docker_manifest(&fresh.manifest(pulled_ns, &name));
    assert_eq!(
        fresh.run_image(pulled_ns, &name, "mt-pulled", &[]),
        "docker-types\n"
    );
}
