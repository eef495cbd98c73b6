//! BuildKit's cache format, `application/vnd.buildkit.cacheconfig.v0`.
//!
//! A cache is a *config* blob (layers, each naming its blob and the index
//! of its parent layer, and records, each a cache key with results that
//! point at a layer, the top of a chain) plus the layer blobs, tied
//! together by either an image manifest whose `config` is the cache config
//! (BuildKit's default since v0.21, `image-manifest=true`) or an index
//! listing every layer and the config (`image-manifest=false`). Layer
//! descriptors carry their diffID in the `containerd.io/uncompressed`
//! annotation. The *inline* form is the records alone, base64 JSON under
//! `moby.buildkit.cache.v0` in an image config, whose results index the
//! image's own layers.
//!
//! Parsing follows BuildKit's reader: an omitted `parent` is layer 0 (Go's
//! `omitempty` drops a zero), `-1` is "no parent"; a result whose chain
//! names a blob the manifest does not list is skipped, not an error.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

pub const CACHE_CONFIG_MEDIA_TYPE: &str = "application/vnd.buildkit.cacheconfig.v0";
/// The annotation (and containerd label) holding a layer's diffID.
pub const ANNOTATION_UNCOMPRESSED: &str = "containerd.io/uncompressed";
/// The image config key of an inline cache.
pub const INLINE_CONFIG_KEY: &str = "moby.buildkit.cache.v0";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// What Go writes for a zero `time.Time`.
pub const ZERO_TIME: &str = "0001-01-01T00:00:00Z";
/// The layer descriptor annotation BuildKit dates a cached layer with.
pub const ANNOTATION_CREATED_AT: &str = "buildkit/createdat";

/// A cache time as a layer time: `None` when empty or Go's zero time.
pub fn layer_time(t: &str) -> Option<String> {
    (!t.is_empty() && !t.starts_with("0001-01-01T")).then(|| t.to_string())
}

/// Why a cache cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// A blob is not the JSON it should be.
    #[error("{what} {digest}: {reason}")]
    Json {
        what: &'static str,
        digest: String,
        reason: String,
    },
    /// The JSON is well formed but does not describe a cache.
    #[error("{what} {digest}: {reason}")]
    Invalid {
        what: &'static str,
        digest: String,
        reason: String,
    },
}

fn is_zero(n: &i64) -> bool {
    *n == 0
}

/// The cache config blob.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<CacheLayer>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<CacheRecord>,
}

/// A layer: its blob and the index of its parent layer (-1: none).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheLayer {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub blob: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub parent: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<LayerAnnotations>,
}

/// What gha/s3/azblob caches write next to a layer (no manifest there).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerAnnotations {
    #[serde(
        rename = "mediaType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub media_type: String,
    #[serde(rename = "diffID", default, skip_serializing_if = "String::is_empty")]
    pub diff_id: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub size: i64,
    #[serde(rename = "createdAt", default)]
    pub created_at: String,
}

/// A cache key with its results and the records its inputs came from.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheRecord {
    #[serde(rename = "layers", default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<CacheResult>,
    #[serde(rename = "chains", default, skip_serializing_if = "Vec::is_empty")]
    pub chained_results: Vec<ChainedResult>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub digest: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<Vec<CacheInput>>,
}

/// A result: the top layer of its chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheResult {
    pub layer: i64,
    #[serde(rename = "createdAt", default)]
    pub created_at: String,
}

/// A result given as its layers, bottom first (inline caches use it when a
/// result's layers are not a prefix of the image's).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainedResult {
    pub layers: Vec<i64>,
    #[serde(rename = "createdAt", default)]
    pub created_at: String,
}

/// A link from an input of a record to the record it came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheInput {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub selector: String,
    pub link: i64,
}

/// A content descriptor as manifests and indexes hold them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType", default)]
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// An image manifest (the cache's, or an image's for inline caches).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(
        rename = "mediaType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub media_type: String,
    pub config: Descriptor,
    #[serde(default)]
    pub layers: Vec<Descriptor>,
}

/// An index (manifest list).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Index {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(
        rename = "mediaType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub media_type: String,
    #[serde(default)]
    pub manifests: Vec<Descriptor>,
}

/// What a manifest blob turned out to be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// A remote cache: its config and the layer blobs it lists.
    Cache {
        config: Descriptor,
        layers: Vec<Descriptor>,
    },
    /// An image manifest without a cache config: an inline cache may be
    /// in its image config.
    Image(Manifest),
    /// An index of images (inline caches of each may be read).
    Images(Vec<Descriptor>),
}

/// Reads a manifest or index blob (`digest` names it in errors) the way
/// BuildKit does: an index with a cacheconfig entry, or an image manifest
/// whose config is a cacheconfig, is a cache; anything else is images.
pub fn parse_manifest(bytes: &[u8], digest: &str) -> Result<Parsed, FormatError> {
    let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| FormatError::Json {
        what: "cache manifest",
        digest: digest.to_string(),
        reason: e.to_string(),
    })?;
    let json_err = |e: serde_json::Error| FormatError::Json {
        what: "cache manifest",
        digest: digest.to_string(),
        reason: e.to_string(),
    };
    if v.get("manifests").is_some() {
        let index: Index = serde_json::from_value(v).map_err(json_err)?;
        if let Some(config) = index
            .manifests
            .iter()
            .find(|m| m.media_type == CACHE_CONFIG_MEDIA_TYPE)
            .cloned()
        {
            let layers = index
                .manifests
                .into_iter()
                .filter(|m| m.media_type != CACHE_CONFIG_MEDIA_TYPE)
                .collect();
            return Ok(Parsed::Cache { config, layers });
        }
        return Ok(Parsed::Images(index.manifests));
    }
    if v.get("config").is_some() {
        let m: Manifest = serde_json::from_value(v).map_err(json_err)?;
        if m.config.media_type == CACHE_CONFIG_MEDIA_TYPE {
            return Ok(Parsed::Cache {
                config: m.config,
                layers: m.layers,
            });
        }
        return Ok(Parsed::Image(m));
    }
    Err(FormatError::Invalid {
        what: "cache manifest",
        digest: digest.to_string(),
        reason: "neither an image manifest nor an index".into(),
    })
}

/// One layer of an imported chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainLayer {
    pub digest: String,
    pub media_type: String,
    pub size: i64,
    pub diff_id: String,
    /// When the layer was made, from its result's `createdAt` or the
    /// descriptor's `buildkit/createdat`.
    pub created: Option<String>,
}

/// The selector of the one link of a plan record: it names the record
/// (by index) whose key the plan key stands for. A plan record has no
/// result of its own; BuildKit never matches its digest.
pub const PLAN_SELECTOR: &str = "kiln.plan";

/// A parsed cache: each key's results as layer chains (bottom first).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chains {
    pub by_key: HashMap<String, Vec<Vec<ChainLayer>>>,
    /// Plan key -> the key of the record it stands for.
    pub plans: HashMap<String, String>,
}

impl Chains {
    /// The key whose record a plan key stands for, if it has a result.
    pub fn planned(&self, plan: &str) -> Option<&str> {
        self.plans
            .get(plan)
            .map(String::as_str)
            .filter(|k| self.get(k).is_some())
    }

    /// Adds `other`'s keys and plans.
    pub fn extend(&mut self, other: Chains) {
        for (k, v) in other.by_key {
            self.by_key.entry(k).or_default().extend(v);
        }
        self.plans.extend(other.plans);
    }

    /// The first usable chain of `key`.
    pub fn get(&self, key: &str) -> Option<&Vec<ChainLayer>> {
        self.by_key.get(key).and_then(|c| c.first())
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }

    fn add(&mut self, key: &str, chain: Vec<ChainLayer>) {
        let v = self.by_key.entry(key.to_string()).or_default();
        if !v.contains(&chain) {
            v.push(chain);
        }
    }
}

/// A layer descriptor as an imported chain layer; `None` without a diffID.
fn chain_layer(d: &Descriptor, annotations: Option<&LayerAnnotations>) -> Option<ChainLayer> {
    let diff_id = d
        .annotations
        .get(ANNOTATION_UNCOMPRESSED)
        .cloned()
        .or_else(|| {
            annotations
                .map(|a| a.diff_id.clone())
                .filter(|s| !s.is_empty())
        })?;
    let created = d
        .annotations
        .get(ANNOTATION_CREATED_AT)
        .and_then(|t| layer_time(t))
        .or_else(|| annotations.and_then(|a| layer_time(&a.created_at)));
    Some(ChainLayer {
        digest: d.digest.clone(),
        media_type: d.media_type.clone(),
        size: d.size,
        diff_id,
        created,
    })
}

/// Reads a cache config whose layer blobs are described by `layers` (the
/// manifest's descriptors). `digest` names the config in errors.
pub fn parse_config(
    bytes: &[u8],
    digest: &str,
    layers: &[Descriptor],
) -> Result<Chains, FormatError> {
    let config: CacheConfig = serde_json::from_slice(bytes).map_err(|e| FormatError::Json {
        what: "cache config",
        digest: digest.to_string(),
        reason: e.to_string(),
    })?;
    let by_blob: HashMap<&str, &Descriptor> =
        layers.iter().map(|d| (d.digest.as_str(), d)).collect();
    chains_of(&config, digest, |l| {
        let d = by_blob.get(l.blob.as_str())?;
        chain_layer(d, l.annotations.as_ref())
    })
}

/// Resolves every record's results into chains; `layer` maps a config
/// layer to its descriptor (`None`: the blob is not in the cache, and the
/// result is skipped, as BuildKit does).
fn chains_of(
    config: &CacheConfig,
    digest: &str,
    layer: impl Fn(&CacheLayer) -> Option<ChainLayer>,
) -> Result<Chains, FormatError> {
    let invalid = |reason: String| FormatError::Invalid {
        what: "cache config",
        digest: digest.to_string(),
        reason,
    };
    let at = |i: i64| -> Result<&CacheLayer, FormatError> {
        usize::try_from(i)
            .ok()
            .and_then(|i| config.layers.get(i))
            .ok_or_else(|| invalid(format!("invalid layer index {i}")))
    };
    // A result's createdAt dates its top layer, whichever record uses it.
    let mut times: HashMap<i64, String> = HashMap::new();
    for r in &config.records {
        for res in &r.results {
            if let Some(t) = layer_time(&res.created_at) {
                times.entry(res.layer).or_insert(t);
            }
        }
        for res in &r.chained_results {
            if let (Some(&top), Some(t)) = (res.layers.last(), layer_time(&res.created_at)) {
                times.entry(top).or_insert(t);
            }
        }
    }
    let layer = |i: i64, l: &CacheLayer| {
        let mut c = layer(l)?;
        if let Some(t) = times.get(&i) {
            c.created = Some(t.clone());
        }
        Some(c)
    };
    let mut out = Chains::default();
    for (ri, r) in config.records.iter().enumerate() {
        if r.digest.is_empty() {
            return Err(invalid(format!("record {ri} has no digest")));
        }
        if let [links] = r.inputs.as_slice() {
            if let [CacheInput { selector, link }] = links.as_slice() {
                let to = usize::try_from(*link)
                    .ok()
                    .and_then(|i| config.records.get(i));
                if let (true, Some(to)) = (selector == PLAN_SELECTOR, to) {
                    out.plans.insert(r.digest.clone(), to.digest.clone());
                }
            }
        }
        for res in &r.results {
            // Walk parents to the root, then flip to bottom-first.
            let mut chain = Vec::new();
            let mut idx = res.layer;
            let mut usable = true;
            let mut seen = 0usize;
            while idx != -1 {
                let l = at(idx)?;
                seen += 1;
                if seen > config.layers.len() {
                    return Err(invalid("invalid looping layer".into()));
                }
                match layer(idx, l) {
                    Some(c) => chain.push(c),
                    None => usable = false,
                }
                idx = l.parent;
            }
            if usable && !chain.is_empty() {
                chain.reverse();
                out.add(&r.digest, chain);
            }
        }
        for res in &r.chained_results {
            let mut chain = Vec::new();
            let mut usable = true;
            for &i in &res.layers {
                match layer(i, at(i)?) {
                    Some(c) => chain.push(c),
                    None => usable = false,
                }
            }
            if usable && !chain.is_empty() {
                out.add(&r.digest, chain);
            }
        }
    }
    Ok(out)
}

/// Reads the inline cache of an image config (`None` when it has none).
/// `layers` are the image manifest's layers: inline results index them,
/// each layer's parent is the one below it, and the diffIDs come from the
/// config's `rootfs`.
pub fn parse_inline(
    config_bytes: &[u8],
    digest: &str,
    layers: &[Descriptor],
) -> Result<Option<Chains>, FormatError> {
    #[derive(Deserialize)]
    struct RootFs {
        // `null` for a layerless image, as BuildKit (and kiln) write it.
        #[serde(default)]
        diff_ids: Option<Vec<String>>,
    }
    #[derive(Deserialize)]
    struct Image {
        #[serde(default)]
        rootfs: Option<RootFs>,
        #[serde(rename = "moby.buildkit.cache.v0", default)]
        cache: Option<String>,
    }
    let json = |e: String| FormatError::Json {
        what: "image config",
        digest: digest.to_string(),
        reason: e,
    };
    let img: Image = serde_json::from_slice(config_bytes).map_err(|e| json(e.to_string()))?;
    let Some(cache) = img.cache else {
        return Ok(None);
    };
    let diff_ids = img.rootfs.and_then(|r| r.diff_ids).unwrap_or_default();
    if diff_ids.len() != layers.len() {
        // BuildKit skips such an image too.
        return Ok(None);
    }
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(cache.as_bytes())
        .map_err(|e| json(format!("{INLINE_CONFIG_KEY}: {e}")))?;
    let records: Vec<CacheRecord> =
        serde_json::from_slice(&raw).map_err(|e| json(format!("{INLINE_CONFIG_KEY}: {e}")))?;
    let mut config = CacheConfig {
        layers: Vec::with_capacity(layers.len()),
        records,
    };
    let mut described = Vec::with_capacity(layers.len());
    for (i, (d, diff_id)) in layers.iter().zip(&diff_ids).enumerate() {
        config.layers.push(CacheLayer {
            blob: d.digest.clone(),
            parent: i as i64 - 1,
            annotations: None,
        });
        described.push(ChainLayer {
            digest: d.digest.clone(),
            media_type: d.media_type.clone(),
            size: d.size,
            diff_id: diff_id.clone(),
            created: None,
        });
    }
    let by_blob: HashMap<String, ChainLayer> = described
        .into_iter()
        .map(|c| (c.digest.clone(), c))
        .collect();
    chains_of(&config, digest, |l| by_blob.get(&l.blob).cloned()).map(Some)
}

/// The inline form of `records` (whose results index the image's layers):
/// base64 of their JSON, the value of [`INLINE_CONFIG_KEY`].
pub fn inline_value(records: &[CacheRecord]) -> String {
    use base64::Engine as _;
    let json = serde_json::to_vec(records).unwrap_or_else(|_| b"[]".to_vec());
    base64::engine::general_purpose::STANDARD.encode(json)
}

/// How the cache's blobs are tied together when written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ManifestStyle {
    /// An image manifest whose config is the cache config (BuildKit's
    /// default), else an index.
    pub image_manifest: bool,
    /// OCI media types (default), else Docker's.
    pub oci: bool,
}

impl Default for ManifestStyle {
    fn default() -> Self {
        ManifestStyle {
            image_manifest: true,
            oci: true,
        }
    }
}

impl ManifestStyle {
    /// The media type of the manifest written in this style.
    pub fn media_type(&self) -> &'static str {
        match (self.image_manifest, self.oci) {
            (true, _) => MEDIA_OCI_MANIFEST,
            (false, true) => MEDIA_OCI_INDEX,
            (false, false) => MEDIA_DOCKER_LIST,
        }
    }

    /// The manifest (or index) JSON for a cache config and its layers.
    pub fn write(&self, config: &Descriptor, layers: &[Descriptor]) -> Vec<u8> {
        let v = if self.image_manifest {
            serde_json::to_value(Manifest {
                schema_version: 2,
                media_type: self.media_type().into(),
                config: config.clone(),
                layers: layers.to_vec(),
            })
        } else {
            let mut manifests = layers.to_vec();
            manifests.push(config.clone());
            serde_json::to_value(Index {
                schema_version: 2,
                media_type: self.media_type().into(),
                manifests,
            })
        };
        // Sorted keys (through Value) so equal caches are equal bytes.
        v.and_then(|v| serde_json::to_vec(&v))
            .unwrap_or_else(|_| b"{}".to_vec())
    }
}

#[cfg(test)]
mod tests;
