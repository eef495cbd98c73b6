use super::*;

/// `sha256:` and 64 times `c`.
fn d(c: char) -> String {
    format!("sha256:{}", c.to_string().repeat(64))
}

/// A cache config as BuildKit writes it: layer 1's parent is 0, which Go's
/// `omitempty` leaves out; record 2 has no result of its own.
fn buildkit_config() -> String {
    format!(
        r#"{{"layers":[{{"blob":"{a}","parent":-1}},{{"blob":"{b}"}}],
"records":[{{"layers":[{{"layer":0,"createdAt":"2024-05-01T10:00:00.123456789Z"}}],"digest":"{k1}"}},
{{"layers":[{{"layer":1,"createdAt":"2024-05-01T10:00:01Z"}}],"digest":"{k2}","inputs":[[{{"selector":"","link":0}}]]}},
{{"digest":"{k3}","inputs":[[{{"link":1}}]]}}]}}"#,
        a = d('a'),
        b = d('b'),
        k1 = d('1'),
        k2 = d('2'),
        k3 = d('3'),
    )
}

fn layer_desc(c: char, diff: char) -> String {
    format!(
        r#"{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":{},"annotations":{{"buildkit/createdat":"2024-05-01T10:00:00Z","containerd.io/uncompressed":"{}"}}}}"#,
        d(c),
        100 + c as u32,
        d(diff)
    )
}

fn config_desc() -> String {
    format!(
        r#"{{"mediaType":"application/vnd.buildkit.cacheconfig.v0","digest":"{}","size":123}}"#,
        d('c')
    )
}

fn expect_chains(chains: &Chains) {
    let k1 = chains.get(&d('1')).expect("k1 has a result");
    assert_eq!(k1.len(), 1);
    assert_eq!(k1[0].digest, d('a'));
    assert_eq!(k1[0].diff_id, d('e'));
    assert_eq!(k1[0].size, 100 + 'a' as i64);
    assert_eq!(
        k1[0].media_type,
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let k2 = chains.get(&d('2')).expect("k2 has a result");
    let blobs: Vec<&str> = k2.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(blobs, [d('a'), d('b')], "bottom first, parent omitted = 0");
    assert_eq!(k2[1].diff_id, d('f'));
    assert!(chains.get(&d('3')).is_none(), "a record without results");
    assert_eq!(chains.len(), 2);
}

#[test]
fn reads_buildkits_index_form() {
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{},{},{}]}}"#,
        layer_desc('a', 'e'),
        layer_desc('b', 'f'),
        config_desc()
    );
    let Parsed::Cache { config, layers } =
        parse_manifest(index.as_bytes(), "sha256:m").expect("parses")
    else {
        panic!("an index with a cacheconfig is a cache");
    };
    assert_eq!(config.digest, d('c'));
    assert_eq!(layers.len(), 2);
    let chains = parse_config(buildkit_config().as_bytes(), &d('c'), &layers).expect("config");
    expect_chains(&chains);
}

#[test]
fn reads_buildkits_image_manifest_form() {
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{},"layers":[{},{}]}}"#,
        config_desc(),
        layer_desc('a', 'e'),
        layer_desc('b', 'f'),
    );
    let Parsed::Cache { config, layers } =
        parse_manifest(manifest.as_bytes(), "sha256:m").expect("parses")
    else {
        panic!("a manifest whose config is a cacheconfig is a cache");
    };
    assert_eq!(config.media_type, CACHE_CONFIG_MEDIA_TYPE);
    let chains = parse_config(buildkit_config().as_bytes(), &d('c'), &layers).expect("config");
    expect_chains(&chains);
}

#[test]
fn a_result_whose_blob_is_not_listed_is_skipped() {
    // Only layer a is in the manifest: k2's chain (a, b) is unusable.
    let layers: Vec<Descriptor> =
        vec![serde_json::from_str(&layer_desc('a', 'e')).expect("descriptor")];
    let chains = parse_config(buildkit_config().as_bytes(), &d('c'), &layers).expect("config");
    assert!(chains.get(&d('1')).is_some());
    assert!(chains.get(&d('2')).is_none());
}

#[test]
fn bad_configs_are_errors_naming_the_blob() {
    let looping = format!(
        r#"{{"layers":[{{"blob":"{a}","parent":1}},{{"blob":"{a}","parent":0}}],"records":[{{"digest":"{k}","layers":[{{"layer":0}}]}}]}}"#,
        a = d('a'),
        k = d('1')
    );
    let layers: Vec<Descriptor> =
        vec![serde_json::from_str(&layer_desc('a', 'e')).expect("descriptor")];
    let err = parse_config(looping.as_bytes(), "sha256:cfg", &layers).expect_err("a loop");
    assert_eq!(
        err.to_string(),
        "cache config sha256:cfg: invalid looping layer"
    );
    let out_of_range = format!(
        r#"{{"layers":[],"records":[{{"digest":"{k}","layers":[{{"layer":4}}]}}]}}"#,
        k = d('1')
    );
    let err = parse_config(out_of_range.as_bytes(), "sha256:cfg", &layers).expect_err("range");
    assert_eq!(
        err.to_string(),
        "cache config sha256:cfg: invalid layer index 4"
    );
    let err = parse_manifest(b"[1]", "sha256:m").expect_err("not a manifest");
    assert_eq!(
        err.to_string(),
        "cache manifest sha256:m: neither an image manifest nor an index"
    );
}

#[test]
fn an_image_manifest_without_cacheconfig_is_an_image() {
    let manifest = format!(
        r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":1}},"layers":[{}]}}"#,
        d('c'),
        layer_desc('a', 'e')
    );
    assert!(matches!(
        parse_manifest(manifest.as_bytes(), "sha256:m").expect("parses"),
        Parsed::Image(_)
    ));
}

#[test]
fn reads_an_inline_cache_from_an_image_config() {
    // The records as BuildKit's inline exporter writes them: results index
    // the image's layers; the value is base64 (Go's []byte in JSON).
    let records = format!(
        r#"[{{"layers":[{{"layer":0,"createdAt":"2024-05-01T10:00:00Z"}}],"digest":"{k1}"}},{{"layers":[{{"layer":1,"createdAt":"2024-05-01T10:00:00Z"}}],"digest":"{k2}","inputs":[[{{"link":0}}]]}}]"#,
        k1 = d('1'),
        k2 = d('2')
    );
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(records);
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}","{}"]}},"moby.buildkit.cache.v0":"{b64}"}}"#,
        d('e'),
        d('f')
    );
    let layers: Vec<Descriptor> = vec![
        serde_json::from_str(&layer_desc('a', '0')).expect("descriptor"),
        serde_json::from_str(&layer_desc('b', '0')).expect("descriptor"),
    ];
    let chains = parse_inline(config.as_bytes(), "sha256:cfg", &layers)
        .expect("parses")
        .expect("has a cache");
    let k2 = chains.get(&d('2')).expect("k2");
    // diffIDs come from the config's rootfs, not the descriptors.
    let diffs: Vec<&str> = k2.iter().map(|l| l.diff_id.as_str()).collect();
    assert_eq!(diffs, [d('e'), d('f')]);
    let plain = r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    assert!(parse_inline(plain.as_bytes(), "sha256:cfg", &[])
        .expect("parses")
        .is_none());
    // A layerless image as BuildKit and kiln write it.
    let layerless =
        r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":null}}"#;
    assert!(parse_inline(layerless.as_bytes(), "sha256:cfg", &[])
        .expect("parses")
        .is_none());
}

#[test]
fn written_manifests_have_buildkits_shape() {
    let config = Descriptor {
        media_type: CACHE_CONFIG_MEDIA_TYPE.into(),
        digest: d('c'),
        size: 10,
        annotations: BTreeMap::new(),
    };
    let layer: Descriptor = serde_json::from_str(&layer_desc('a', 'e')).expect("descriptor");
    let m: serde_json::Value = serde_json::from_slice(
        &ManifestStyle::default().write(&config, std::slice::from_ref(&layer)),
    )
    .expect("json");
    assert_eq!(m["schemaVersion"], 2);
    assert_eq!(m["mediaType"], MEDIA_OCI_MANIFEST);
    assert_eq!(m["config"]["mediaType"], CACHE_CONFIG_MEDIA_TYPE);
    assert_eq!(
        m["layers"][0]["annotations"][ANNOTATION_UNCOMPRESSED],
        d('e')
    );
    let style = ManifestStyle {
        image_manifest: false,
        oci: false,
    };
    let i: serde_json::Value =
        serde_json::from_slice(&style.write(&config, &[layer])).expect("json");
    assert_eq!(i["mediaType"], MEDIA_DOCKER_LIST);
    assert_eq!(i["manifests"][1]["digest"], d('c'), "config listed last");
    // Layer parents: -1 is written, 0 is left out as Go does.
    let cfg = CacheConfig {
        layers: vec![
            CacheLayer {
                blob: d('a'),
                parent: -1,
                annotations: None,
            },
            CacheLayer {
                blob: d('b'),
                parent: 0,
                annotations: None,
            },
        ],
        records: vec![],
    };
    let v = serde_json::to_value(&cfg).expect("json");
    assert_eq!(v["layers"][0]["parent"], -1);
    assert!(v["layers"][1].get("parent").is_none());
}
