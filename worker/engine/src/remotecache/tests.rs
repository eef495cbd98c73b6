//! Export selection (min/max), links, and the round trip through our own
//! writer and reader.

use super::export::{inline, manifest_blobs, plan};
use super::format::{self, Parsed};
use super::options::split_spec;
use super::*;
use std::collections::BTreeMap;

fn layer(c: char) -> Layer {
    Layer::with_blob(
        Digest::of(format!("diff-{c}").as_bytes()),
        "application/vnd.oci.image.layer.v1.tar+gzip",
        Digest::of(format!("blob-{c}").as_bytes()).to_string(),
        10,
        // 'a' plays a base-image layer: no time of its own.
        (c != 'a').then(|| format!("2024-05-01T10:00:0{}Z", c as u32 % 10)),
    )
}

fn rec(id: usize, inputs: &[usize], chain: &[char]) -> VertexRecord {
    VertexRecord {
        id: VertexId(id),
        key: Digest::of(format!("key-{id}").as_bytes()),
        // Without a plan key (a source) no plan record is written (see
        // `plan_keys_are_records_linking_their_steps`).
        plan: None,
        inputs: inputs.iter().map(|&i| Some(VertexId(i))).collect(),
        chain: Some(chain.iter().map(|&c| layer(c)).collect()),
        name: format!("v{id}"),
    }
}

/// base (a) -> stage1 (a, b) ; side stage (s) ; result (a, b, c) from
/// stage1 and side.
fn build() -> (Vec<VertexRecord>, Vec<Layer>) {
    let records = vec![
        rec(0, &[], &['a']),
        rec(1, &[0], &['a', 'b']),
        rec(2, &[], &['s']),
        rec(3, &[1, 2], &['a', 'b', 'c']),
    ];
    let result = records[3].chain.clone().expect("chain");
    (records, result)
}

fn with_results(p: &export::Plan) -> Vec<usize> {
    p.config
        .records
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.results.is_empty())
        .map(|(i, _)| i)
        .collect()
}

#[test]
fn min_exports_the_results_chain_and_max_every_vertex() {
    let (records, result) = build();
    let min = plan(&records, &result, Mode::Min);
    assert_eq!(with_results(&min), [0, 1, 3], "the side stage is left out");
    let digest = |l: &Layer| l.blob.as_ref().expect("blob").digest.clone();
    let blobs: Vec<String> = min.layers.iter().map(digest).collect();
    assert_eq!(
        blobs,
        [digest(&result[0]), digest(&result[1]), digest(&result[2])]
    );
    assert_eq!(
        min.config.layers.len(),
        3,
        "shared prefixes are one layer entry"
    );
    let max = plan(&records, &result, Mode::Max);
    assert_eq!(with_results(&max), [0, 1, 2, 3]);
    assert_eq!(max.layers.len(), 4);
    // Every record is present with its links, results or not.
    assert_eq!(min.config.records.len(), 4);
    let links: Vec<Vec<i64>> = min.config.records[3]
        .inputs
        .iter()
        .map(|i| i.iter().map(|l| l.link).collect())
        .collect();
    assert_eq!(links, [[1], [2]]);
}

#[test]
fn an_input_without_a_record_drops_the_links() {
    let mut records = vec![rec(1, &[0], &['a'])];
    records[0].inputs = vec![None];
    let p = plan(&records, &[layer('a')], Mode::Max);
    assert!(p.config.records[0].inputs.is_empty());
}

#[test]
fn our_cache_reads_back_as_the_same_chains() {
    let (records, result) = build();
    for style in [
        format::ManifestStyle::default(),
        format::ManifestStyle {
            image_manifest: false,
            oci: true,
        },
    ] {
        let p = plan(&records, &result, Mode::Max);
        let (config, config_desc, manifest, manifest_desc) = manifest_blobs(&p, style);
        assert_eq!(manifest_desc.media_type, style.media_type());
        let Parsed::Cache { config: c, layers } =
            format::parse_manifest(&manifest, &manifest_desc.digest).expect("manifest")
        else {
            panic!("our manifest is a cache");
        };
        assert_eq!(c, config_desc);
        let chains = format::parse_config(&config, &c.digest, &layers).expect("config");
        for r in &records {
            let got = chains
                .get(r.key.as_str())
                .expect("every record has a result");
            let want = r.chain.as_ref().expect("chain");
            // Layer times travel too (by result and by descriptor).
            let got: Vec<(String, String, Option<String>)> = got
                .iter()
                .map(|l| (l.digest.clone(), l.diff_id.clone(), l.created.clone()))
                .collect();
            let want: Vec<(String, String, Option<String>)> = want
                .iter()
                .map(|l| {
                    (
                        l.blob.as_ref().expect("blob").digest.clone(),
                        l.diff_id.to_string(),
                        l.created.clone(),
                    )
                })
                .collect();
            assert_eq!(got, want, "{}", r.name);
        }
    }
}

/// The inline cache of `records` for an image of `result`, read back
/// from an image config.
fn inline_round_trip(records: &[VertexRecord], result: &[Layer]) -> format::Chains {
    let value = inline(records, result).expect("has results");
    let descs: Vec<format::Descriptor> = result.iter().map(export::layer_descriptor).collect();
    let config = serde_json::json!({
        "rootfs": {"type": "layers", "diff_ids": result.iter().map(|l| l.diff_id.to_string()).collect::<Vec<_>>()},
        format::INLINE_CONFIG_KEY: value,
    });
    format::parse_inline(
        &serde_json::to_vec(&config).expect("json"),
        "sha256:cfg",
        &descs,
    )
    .expect("parses")
    .expect("inline cache")
}

#[test]
fn inline_results_index_the_images_layers() {
    let (records, result) = build();
    let chains = inline_round_trip(&records, &result);
    assert_eq!(chains.get(records[1].key.as_str()).map(Vec::len), Some(2));
    assert_eq!(chains.get(records[3].key.as_str()).map(Vec::len), Some(3));
    assert!(
        chains.get(records[2].key.as_str()).is_none(),
        "not in the image"
    );
}

#[test]
fn plan_keys_are_records_linking_their_steps() {
    let (mut records, result) = build();
    for r in &mut records {
        r.plan = Some(Digest::of(format!("plan-{}", r.id.0).as_bytes()));
    }
    // Two steps planned alike are one record.
    records[2].plan = records[1].plan.clone();
    let plan_of = |i: usize| records[i].plan.clone().expect("plan").to_string();
    let min = plan(&records, &result, Mode::Min);
    let digests: Vec<String> = min
        .config
        .records
        .iter()
        .map(|r| r.digest.clone())
        .collect();
    let want: Vec<String> = [0, 1, 2, 3]
        .iter()
        .map(|&i| records[i].key.to_string())
        .chain([0, 1, 3].iter().map(|&i| plan_of(i)))
        .collect();
    assert_eq!(digests, want, "the side stage had no result in min mode");
    for (rec, link) in min.config.records[4..].iter().zip([0, 1, 3]) {
        assert!(rec.results.is_empty());
        assert_eq!(
            rec.inputs,
            [[format::CacheInput {
                selector: format::PLAN_SELECTOR.into(),
                link,
            }]]
        );
    }
    let (config, config_desc, _, _) = manifest_blobs(&min, format::ManifestStyle::default());
    let layers: Vec<format::Descriptor> = min.layers.iter().map(export::layer_descriptor).collect();
    let chains = format::parse_config(&config, &config_desc.digest, &layers).expect("config");
    for i in [0, 1, 3] {
        assert_eq!(
            chains.planned(&plan_of(i)),
            Some(records[i].key.as_str()),
            "the plan record of {i} names its key"
        );
    }
    assert_eq!(chains.len(), 3, "plan records add no result");

    let chains = inline_round_trip(&records, &result);
    assert_eq!(chains.planned(&plan_of(3)), Some(records[3].key.as_str()));
    assert_eq!(chains.plans.len(), 3, "the side stage is not in the image");
}

fn attrs(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn options_parse_as_buildx_writes_them() {
    let (ty, a) =
        split_spec("--cache-to", "type=local,dest=/tmp/c,mode=min,mode=max").expect("spec");
    let e = CacheExport::parse(&ty, &a).expect("local");
    assert_eq!(
        e.target,
        ExportTarget::Local {
            dest: "/tmp/c".into(),
            tag: "latest".into()
        }
    );
    assert_eq!(e.mode, Mode::Max, "the last of a repeated key wins");
    assert!(e.style.image_manifest && e.style.oci, "BuildKit's defaults");
    let (ty, a) = split_spec("--cache-from", "localhost:5000/app:cache").expect("bare ref");
    assert_eq!(
        CacheImport::parse(&ty, &a).expect("registry").source,
        ImportSource::Registry {
            reference: "localhost:5000/app:cache".into(),
            insecure: false,
        }
    );
    // buildx's registry.insecure, both ways.
    let (ty, a) = split_spec(
        "--cache-from",
        "type=registry,ref=r:1,registry.insecure=true",
    )
    .expect("spec");
    assert_eq!(
        CacheImport::parse(&ty, &a).expect("insecure import").source,
        ImportSource::Registry {
            reference: "r:1".into(),
            insecure: true,
        }
    );
    let (ty, a) =
        split_spec("--cache-to", "type=registry,ref=r:1,registry.insecure=true").expect("spec");
    assert_eq!(
        CacheExport::parse(&ty, &a).expect("insecure export").target,
        ExportTarget::Registry {
            reference: "r:1".into(),
            insecure: true,
        }
    );
    let e = CacheExport::parse(
        "registry",
        &attrs(&[("ref", "r"), ("oci-mediatypes", "false")]),
    )
    .expect("docker media types");
    assert!(!e.style.image_manifest, "an index without OCI media types");
}

#[test]
fn bad_options_fail_naming_them() {
    let err = |r: Result<CacheExport, CacheError>| r.expect_err("fails").to_string();
    assert_eq!(
        err(CacheExport::parse("gha", &attrs(&[]))),
        "--cache-to: cache type \"gha\" is not supported by kiln (supported: local, registry, inline)"
    );
    assert_eq!(
        err(CacheExport::parse("local", &attrs(&[("dest", "d"), ("compression", "zstd")]))),
        "--cache-to: unsupported attribute compression for type=local (supported: mode, image-manifest, oci-mediatypes, ignore-error, dest, tag)"
    );
    assert_eq!(
        err(CacheExport::parse("local", &attrs(&[]))),
        "--cache-to: type=local requires dest="
    );
    assert_eq!(
        err(CacheExport::parse(
            "registry",
            &attrs(&[("ref", "r"), ("mode", "all")])
        )),
        "--cache-to: mode=all: expected min or max"
    );
    assert_eq!(
        err(CacheExport::parse("inline", &attrs(&[("mode", "max")]))),
        "--cache-to: type=inline supports only mode=min (use type=registry for mode=max)"
    );
    assert_eq!(
        CacheImport::parse("s3", &attrs(&[]))
            .expect_err("s3")
            .to_string(),
        "--cache-from: cache type \"s3\" is not supported by kiln (supported: local, registry)"
    );
    assert_eq!(
        split_spec("--cache-to", "type=local,dest")
            .expect_err("bad csv")
            .to_string(),
        "--cache-to: \"dest\" is not key=value (in \"type=local,dest\")"
    );
}
