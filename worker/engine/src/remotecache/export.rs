//! From a build's records to a cache: which records and layers (`mode`),
//! the cache config, and writing it to a local OCI layout.

use super::format::{
    self, CacheConfig, CacheInput, CacheLayer, CacheRecord, CacheResult, Descriptor, ManifestStyle,
    ANNOTATION_UNCOMPRESSED, CACHE_CONFIG_MEDIA_TYPE,
};
use super::{CacheError, Mode, VertexRecord};
use crate::refs::{Blob, Layer};
use crate::services::Services;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

/// A cache ready to be written: its config and the layer blobs it lists.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub config: CacheConfig,
    /// Every layer blob the config names, in config order (each with its
    /// blob).
    pub layers: Vec<Layer>,
}

/// Whether `chain` is `result` or a prefix of it (by diffID).
pub(crate) fn is_prefix(chain: &[Layer], result: &[Layer]) -> bool {
    chain.len() <= result.len()
        && chain
            .iter()
            .zip(result)
            .all(|(a, b)| a.diff_id == b.diff_id)
}

/// The digest of a layer's blob (`""` for none; [`plan`] keeps only
/// chains whose layers all have blobs).
fn digest_of(l: &Layer) -> &str {
    l.blob
        .as_ref()
        .map(|b| b.digest.as_str())
        .unwrap_or_default()
}

/// Which records get results: every non-empty chain for `max`, only the
/// chains that are (prefixes of) the result's for `min`.
fn wanted(r: &VertexRecord, result: &[Layer], mode: Mode) -> Option<Vec<Layer>> {
    let chain = r.chain.as_ref().filter(|c| !c.is_empty())?;
    match mode {
        Mode::Max => Some(chain.clone()),
        Mode::Min => is_prefix(chain, result).then(|| chain.clone()),
    }
}

/// Links each record's inputs to the records of its input vertices; a
/// record with an input that has no record gets no links at all (BuildKit
/// rejects an empty link list for an input).
fn link(records: &[VertexRecord]) -> Vec<Vec<Vec<CacheInput>>> {
    let index: HashMap<_, usize> = records.iter().enumerate().map(|(i, r)| (r.id, i)).collect();
    records
        .iter()
        .map(|r| {
            let links: Option<Vec<Vec<CacheInput>>> = r
                .inputs
                .iter()
                .map(|i| {
                    let idx = index.get(&(*i)?)?;
                    Some(vec![CacheInput {
                        selector: String::new(),
                        link: *idx as i64,
                    }])
                })
                .collect();
            links.unwrap_or_default()
        })
        .collect()
}

/// A record for each plan key of a record with a result (deduplicated by
/// digest), linking that record through [`format::PLAN_SELECTOR`]: what
/// an import looks a step up by before the steps it reads have run, and
/// how it learns the step's key. `out` are the records written for
/// `records`, in order.
fn plan_records(records: &[VertexRecord], out: &[CacheRecord]) -> Vec<CacheRecord> {
    let mut seen: HashSet<String> = out.iter().map(|r| r.digest.clone()).collect();
    records
        .iter()
        .zip(out)
        .enumerate()
        .filter(|(_, (_, rec))| !rec.results.is_empty())
        .filter_map(|(i, (r, _))| {
            let plan = r.plan.as_ref()?.to_string();
            seen.insert(plan.clone()).then(|| CacheRecord {
                digest: plan,
                inputs: vec![vec![CacheInput {
                    selector: format::PLAN_SELECTOR.into(),
                    link: i as i64,
                }]],
                ..CacheRecord::default()
            })
        })
        .collect()
}

/// The cache of `records` for an export in `mode`: layers deduplicated by
/// chain (a blob with the same parent is one entry), one record per vertex.
/// Each result's `createdAt` is its top layer's time (Go's zero time for a
/// base-image layer, which has none).
pub fn plan(records: &[VertexRecord], result: &[Layer], mode: Mode) -> Plan {
    let mut layers: Vec<CacheLayer> = Vec::new();
    let mut blobs: Vec<Layer> = Vec::new();
    // (blob, parent index) -> layer index.
    let mut by_chain: HashMap<(String, i64), i64> = HashMap::new();
    let links = link(records);
    let mut out = Vec::with_capacity(records.len());
    for (r, inputs) in records.iter().zip(links) {
        let mut rec = CacheRecord {
            digest: r.key.to_string(),
            inputs,
            ..CacheRecord::default()
        };
        // A chain whose blobs were not made (see [`crate::blobs`]) has
        // nothing to export.
        let chain = wanted(r, result, mode).filter(|c| c.iter().all(|l| l.blob.is_some()));
        if let Some(chain) = chain {
            let mut parent = -1i64;
            for l in &chain {
                let k = (digest_of(l).to_string(), parent);
                parent = match by_chain.get(&k) {
                    Some(&i) => i,
                    None => {
                        let i = layers.len() as i64;
                        layers.push(CacheLayer {
                            blob: digest_of(l).to_string(),
                            parent,
                            annotations: None,
                        });
                        if !blobs.iter().any(|b| digest_of(b) == digest_of(l)) {
                            blobs.push(l.clone());
                        }
                        by_chain.insert(k, i);
                        i
                    }
                };
            }
            rec.results.push(CacheResult {
                layer: parent,
                created_at: created_at(&chain),
            });
        }
        out.push(rec);
    }
    let plans = plan_records(records, &out);
    out.extend(plans);
    Plan {
        config: CacheConfig {
            layers,
            records: out,
        },
        layers: blobs,
    }
}

/// The inline cache of `records` for an image whose layers are `result`:
/// the records whose chain is a prefix of the image's, their results
/// indexing the image's layers. `None` when no record has a result.
pub fn inline(records: &[VertexRecord], result: &[Layer]) -> Option<String> {
    let links = link(records);
    let mut out = Vec::with_capacity(records.len());
    let mut any = false;
    for (r, inputs) in records.iter().zip(links) {
        let mut rec = CacheRecord {
            digest: r.key.to_string(),
            inputs,
            ..CacheRecord::default()
        };
        if let Some(chain) = wanted(r, result, Mode::Min) {
            any = true;
            rec.results.push(CacheResult {
                layer: chain.len() as i64 - 1,
                created_at: created_at(&chain),
            });
        }
        out.push(rec);
    }
    let plans = plan_records(records, &out);
    out.extend(plans);
    any.then(|| format::inline_value(&out))
}

/// The `createdAt` of a result: its top layer's time.
fn created_at(chain: &[Layer]) -> String {
    chain
        .last()
        .and_then(|l| l.created.clone())
        .unwrap_or_else(|| format::ZERO_TIME.to_string())
}

/// A layer as a cache manifest lists it (diffID annotated, and its time
/// when it has one, as BuildKit does).
pub fn layer_descriptor(l: &Layer) -> Descriptor {
    let mut annotations = BTreeMap::new();
    annotations.insert(ANNOTATION_UNCOMPRESSED.to_string(), l.diff_id.to_string());
    if let Some(t) = &l.created {
        annotations.insert(format::ANNOTATION_CREATED_AT.to_string(), t.clone());
    }
    let b = l.blob.clone().unwrap_or(Blob {
        media_type: String::new(),
        digest: String::new(),
        size: 0,
    });
    Descriptor {
        media_type: b.media_type,
        digest: b.digest,
        size: b.size,
        annotations,
    }
}

/// The config and manifest blobs of a plan, in `style`: (config bytes,
/// config descriptor, manifest bytes, manifest descriptor).
pub fn manifest_blobs(
    plan: &Plan,
    style: ManifestStyle,
) -> (Vec<u8>, Descriptor, Vec<u8>, Descriptor) {
    let config = serde_json::to_value(&plan.config)
        .and_then(|v| serde_json::to_vec(&v))
        .unwrap_or_else(|_| b"{}".to_vec());
    let config_desc = Descriptor {
        media_type: CACHE_CONFIG_MEDIA_TYPE.into(),
        digest: kiln_solver::Digest::of(&config).to_string(),
        size: config.len() as i64,
        annotations: BTreeMap::new(),
    };
    let layers: Vec<Descriptor> = plan.layers.iter().map(layer_descriptor).collect();
    let manifest = style.write(&config_desc, &layers);
    let manifest_desc = Descriptor {
        media_type: style.media_type().into(),
        digest: kiln_solver::Digest::of(&manifest).to_string(),
        size: manifest.len() as i64,
        annotations: BTreeMap::new(),
    };
    (config, config_desc, manifest, manifest_desc)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CacheError + '_ {
    move |source| CacheError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// `DIR/blobs/sha256/<hex>` of `digest`, if it is a sha256 digest.
pub fn blob_path(dir: &Path, digest: &str) -> Option<PathBuf> {
    let d = kiln_solver::Digest::parse(digest)?;
    Some(dir.join("blobs").join("sha256").join(d.hex()))
}

/// Writes `bytes` to `path` through a temporary file in the same dir.
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CacheError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile_in(dir)?;
    tmp.1.write_all(bytes).map_err(io(&tmp.0))?;
    tmp.1.sync_all().map_err(io(&tmp.0))?;
    std::fs::rename(&tmp.0, path).map_err(io(path))
}

fn tempfile_in(dir: &Path) -> Result<(PathBuf, std::fs::File), CacheError> {
    let path = dir.join(format!(".tmp-{}", crate::base::rand_hex()));
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io(&path))?;
    Ok((path, f))
}

/// Copies one layer blob from the content store into the layout, unless
/// a file of the right size is there already.
async fn copy_blob(svc: &Services, dir: &Path, l: &Blob) -> Result<(), CacheError> {
    let path = blob_path(dir, &l.digest).ok_or_else(|| CacheError::Blob {
        location: dir.display().to_string(),
        digest: l.digest.clone(),
        reason: "not a sha256 digest".into(),
    })?;
    if let Ok(m) = std::fs::metadata(&path) {
        if m.len() as i64 == l.size {
            return Ok(());
        }
    }
    let mut rx = svc
        .content
        .read_stream(&l.digest)
        .await
        .map_err(|e| CacheError::Blob {
            location: "content store".into(),
            digest: l.digest.clone(),
            reason: crate::error::error_chain(&e),
        })?;
    let (tmp, mut f) = tempfile_in(path.parent().unwrap_or(dir))?;
    let r = async {
        let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
        while let Some(chunk) = rx.recv().await {
            let chunk = chunk.map_err(|e| CacheError::Blob {
                location: "content store".into(),
                digest: l.digest.clone(),
                reason: crate::error::error_chain(&e),
            })?;
            sha2::Digest::update(&mut hasher, &chunk);
            f.write_all(&chunk).map_err(io(&tmp))?;
        }
        let got = format!("sha256:{}", hex::encode(sha2::Digest::finalize(hasher)));
        if got != l.digest {
            return Err(CacheError::Blob {
                location: "content store".into(),
                digest: l.digest.clone(),
                reason: format!("read back as {got}"),
            });
        }
        f.sync_all().map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }
    .await;
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// The `org.opencontainers.image.ref.name` annotation.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Writes `plan` to the OCI layout `dir` (created if needed): layer blobs,
/// config, manifest, `oci-layout`, and `index.json` with the manifest
/// tagged `tag` (replacing what the tag named before, keeping other
/// entries), as BuildKit's client does for `type=local`. Returns the
/// manifest's descriptor.
pub async fn write_local(
    svc: &Services,
    plan: &Plan,
    style: ManifestStyle,
    dir: &Path,
    tag: &str,
) -> Result<Descriptor, CacheError> {
    let blobs = dir.join("blobs").join("sha256");
    std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
    for b in plan.layers.iter().filter_map(|l| l.blob.as_ref()) {
        copy_blob(svc, dir, b).await?;
    }
    let (config, config_desc, manifest, manifest_desc) = manifest_blobs(plan, style);
    for (bytes, desc) in [(&config, &config_desc), (&manifest, &manifest_desc)] {
        let path = blob_path(dir, &desc.digest).ok_or_else(|| CacheError::Blob {
            location: dir.display().to_string(),
            digest: desc.digest.clone(),
            reason: "not a sha256 digest".into(),
        })?;
        write_atomic(&path, bytes)?;
    }
    tag_local(dir, &manifest_desc, tag)?;
    Ok(manifest_desc)
}

/// Tags `manifest` as `tag` in the layout `dir`'s `index.json` (replacing
/// what the tag named before, keeping other entries) and writes its
/// `oci-layout`, as BuildKit's client does after a `type=local` cache
/// export (kiln's client does it with kilnd's `cache.manifest`).
pub fn tag_local(dir: &Path, manifest: &Descriptor, tag: &str) -> Result<(), CacheError> {
    let layout = dir.join("oci-layout");
    write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let index_path = dir.join("index.json");
    let mut index = match std::fs::read(&index_path) {
        Ok(b) => serde_json::from_slice::<format::Index>(&b).map_err(|e| CacheError::Format {
            location: index_path.display().to_string(),
            source: format::FormatError::Json {
                what: "index",
                digest: "index.json".into(),
                reason: e.to_string(),
            },
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => format::Index {
            schema_version: 2,
            media_type: format::MEDIA_OCI_INDEX.into(),
            manifests: Vec::new(),
        },
        Err(e) => return Err(io(&index_path)(e)),
    };
    index
        .manifests
        .retain(|m| m.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) != Some(tag));
    let mut entry = manifest.clone();
    entry
        .annotations
        .insert(ANNOTATION_REF_NAME.to_string(), tag.to_string());
    index.manifests.push(entry);
    let bytes = serde_json::to_value(&index)
        .and_then(|v| serde_json::to_vec(&v))
        .unwrap_or_else(|_| b"{}".to_vec());
    write_atomic(&index_path, &bytes)
}
