//! `--cache-to type=local` / `--cache-from type=local` through kilnd, as
//! buildctl and buildx send them: the directory is the client's, attached
//! to its session as the content store `local:DIR`. kilnd writes the
//! cache's blobs into it and answers the manifest as `cache.manifest`
//! (which the client tags in `index.json`); an import names the manifest
//! by `digest` (the client resolved the tag) and kilnd reads it, its
//! config and layers from the store.

use crate::common;

use kiln_integration::clientsession::ClientSession;
use kiln_integration::Harness;
use kiln_proto::control::control_client::ControlClient;
use kiln_proto::control::{CacheOptions, CacheOptionsEntry, Exporter, SolveRequest};
use std::collections::HashMap;
use std::path::Path;

fn entry(ty: &str, attrs: &[(&str, &str)]) -> CacheOptionsEntry {
    CacheOptionsEntry {
        r#type: ty.into(),
        attrs: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

/// A Dockerfile build of `ctx` through kilnd on `socket`, exporting image
/// `name`, with the client's cache directory `cache` attached to the
/// session; the exporter response.
async fn build(
    socket: &Path,
    id: &str,
    ctx: &Path,
    cache: &Path,
    name: &str,
    opts: CacheOptions,
) -> HashMap<String, String> {
    let channel = containerd_client::connect(socket)
        .await
        .expect("connect to kilnd");
    let session_id = format!("{id}-session");
    let store = format!("local:{}", cache.display());
    let session = ClientSession::with_stores(
        channel.clone(),
        &session_id,
        &[
            ("context", ctx.to_path_buf()),
            ("dockerfile", ctx.to_path_buf()),
        ],
        &[(store, cache.to_path_buf())],
    )
    .await;
    let resp = ControlClient::new(channel)
        .solve(SolveRequest {
            r#ref: id.into(),
            session: session.id.clone(),
            frontend: "dockerfile.v0".into(),
            exporters: vec![Exporter {
                r#type: "image".into(),
                attrs: HashMap::from([("name".to_string(), name.to_string())]),
            }],
            cache: Some(opts),
            ..Default::default()
        })
        .await
        .expect("solve")
        .into_inner();
    resp.exporter_response
}

/// What buildctl does with `cache.manifest`: tags it in the directory's
/// `index.json`.
fn tag(cache: &Path, manifest: &serde_json::Value, tag: &str) {
    let mut m = manifest.clone();
    m["annotations"] = serde_json::json!({ "org.opencontainers.image.ref.name": tag });
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [m],
    });
    std::fs::write(cache.join("index.json"), index.to_string()).expect("write index.json");
}

fn blob(cache: &Path, digest: &str) -> Vec<u8> {
    let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
    std::fs::read(cache.join("blobs/sha256").join(hex)).expect("blob in the client's directory")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_cache_goes_through_the_clients_session_both_ways() {
    let (a, b) = ("localcache-a", "localcache-b");
    let h = Harness::with_busybox(a).await;
    common::copy_busybox(&h, a, b);
    let ctx = h.context(
        "localcache",
        &[
            ("f", "from the context\n"),
            (
                "Dockerfile",
                "FROM busybox\nCOPY f /f\nRUN cat /proc/sys/kernel/random/uuid > /stamp\n",
            ),
        ],
    );
    let cache = h.state_dir().join("client-cache");
    std::fs::create_dir_all(&cache).expect("mkdir cache");

    let ka = h.start_kilnd(a).await.expect("kilnd starts");
    let resp = build(
        &ka.socket,
        "localcache0000000000000a",
        &ctx,
        &cache,
        "localcache:a",
        CacheOptions {
            exports: vec![entry(
                "local",
                &[("dest", cache.to_str().expect("utf8")), ("mode", "max")],
            )],
            ..Default::default()
        },
    )
    .await;
    let desc: serde_json::Value =
        serde_json::from_str(resp.get("cache.manifest").expect("cache.manifest answered"))
            .expect("a descriptor");
    let digest = desc["digest"].as_str().expect("digest").to_string();
    assert_eq!(
        desc["mediaType"], "application/vnd.oci.image.manifest.v1+json",
        "{desc}"
    );
    // The manifest, its cache config and every layer are in the client's
    // directory.
    let manifest: serde_json::Value =
        serde_json::from_slice(&blob(&cache, &digest)).expect("manifest JSON");
    assert_eq!(
        manifest["config"]["mediaType"], "application/vnd.buildkit.cacheconfig.v0",
        "{manifest}"
    );
    let config: serde_json::Value = serde_json::from_slice(&blob(
        &cache,
        manifest["config"]["digest"].as_str().expect("config"),
    ))
    .expect("cache config JSON");
    assert!(
        config["records"].as_array().is_some_and(|r| r.len() >= 3),
        "{config}"
    );
    let layers = manifest["layers"].as_array().expect("layers");
    assert!(layers.len() >= 3, "busybox, COPY, RUN: {manifest}");
    for l in layers {
        let d = l["digest"].as_str().expect("layer digest");
        assert_eq!(
            blob(&cache, d).len() as u64,
            l["size"].as_u64().expect("size"),
            "{d}"
        );
    }
    tag(&cache, &desc, "latest");
    drop(ka);

    // A fresh namespace and kilnd: the import makes the steps hits, so the
    // RUN's random stamp (and every layer) is the first build's.
    let kb = h.start_kilnd(b).await.expect("kilnd starts");
    let resp = build(
        &kb.socket,
        "localcache0000000000000b",
        &ctx,
        &cache,
        "localcache:b",
        CacheOptions {
            imports: vec![entry(
                "local",
                &[("src", cache.to_str().expect("utf8")), ("digest", &digest)],
            )],
            ..Default::default()
        },
    )
    .await;
    assert!(!resp.contains_key("cache.manifest"), "{resp:?}");
    assert_eq!(
        common::layers(&h, b, "docker.io/library/localcache:b"),
        common::layers(&h, a, "docker.io/library/localcache:a"),
        "the imported cache answered every step"
    );
}

/// A client whose session serves no content store (an older client, or
/// one that did not attach the directory): the export is refused before
/// the solve starts, naming the option and the directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_cache_without_the_clients_store_fails_naming_it() {
    let ns = "localcache-nostore";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.context(
        "localcache-nostore",
        &[("Dockerfile", "FROM busybox\nRUN touch /ran\n")],
    );
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let channel = containerd_client::connect(&k.socket)
        .await
        .expect("connect to kilnd");
    let session =
        ClientSession::of_context(channel.clone(), "localcache-nostore-session", &ctx).await;
    let err = ControlClient::new(channel)
        .solve(SolveRequest {
            r#ref: "localcachenostore0000001".into(),
            session: session.id.clone(),
            frontend: "dockerfile.v0".into(),
            cache: Some(CacheOptions {
                exports: vec![entry("local", &[("dest", "/client/cache")])],
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .expect_err("no store to write to");
    assert_eq!(err.code(), tonic::Code::Unknown, "{err:?}");
    assert!(
        err.message().contains(
            "--export-cache type=local (/client/cache): the client's session serves no content store"
        ),
        "{}",
        err.message()
    );
}
