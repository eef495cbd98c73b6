//! Reading a cache (before the solve) and turning an imported key into a
//! local cache hit (during it).

use super::export::{blob_path, ANNOTATION_REF_NAME};
use super::format::{self, ChainLayer, Chains, Parsed};
use super::{CacheError, CacheImport, ImportSource};
use crate::error::{Result, WorkerError};
use crate::refs::{Blob, Layer};
use crate::services::Services;
use kiln_snapshot::containerd::LeaseId;
use kiln_snapshot::services::LeaseResource;
use kiln_solver::Digest;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where an imported cache's blobs are read from.
#[derive(Clone)]
pub enum BlobSource {
    /// An OCI layout directory.
    Local(PathBuf),
    /// A registry repository.
    Registry {
        client: kiln_registry::Client,
        reference: kiln_types::reference::Reference,
    },
}

impl std::fmt::Debug for BlobSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BlobSource::Local(p) => f.debug_tuple("Local").field(p).finish(),
            BlobSource::Registry { reference, .. } => f
                .debug_tuple("Registry")
                .field(&reference.to_string())
                .finish(),
        }
    }
}

/// One imported cache: its keys' chains and where the blobs are.
#[derive(Clone, Debug)]
pub struct Imported {
    pub chains: Chains,
    pub source: BlobSource,
    /// For messages (`local cache DIR`).
    pub describe: String,
}

/// How big a manifest or config may be (as BuildKit: 1 MiB... times a
/// margin for caches of many records).
const MAX_JSON: u64 = 16 << 20;

fn read_small(dir: &Path, digest: &str) -> std::result::Result<Vec<u8>, CacheError> {
    let blob = |reason: String| CacheError::Blob {
        location: dir.display().to_string(),
        digest: digest.to_string(),
        reason,
    };
    let path = blob_path(dir, digest).ok_or_else(|| blob("not a sha256 digest".into()))?;
    let f = std::fs::File::open(&path).map_err(|e| blob(e.to_string()))?;
    let mut bytes = Vec::new();
    f.take(MAX_JSON + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| blob(e.to_string()))?;
    if bytes.len() as u64 > MAX_JSON {
        return Err(blob(format!("larger than {MAX_JSON} bytes")));
    }
    let got = Digest::of(&bytes);
    if got.as_str() != digest {
        return Err(blob(format!("content hashes to {got}")));
    }
    Ok(bytes)
}

/// What a fetched blob is: registries serve manifests and blobs apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Manifest,
    Blob,
}

/// Reads the cache a manifest (or index) blob describes; `fetch` reads a
/// small blob by digest. Image manifests contribute their inline caches.
pub async fn read_manifest<F, Fut>(
    location: &str,
    digest: &str,
    bytes: Vec<u8>,
    fetch: F,
) -> std::result::Result<Chains, CacheError>
where
    F: Fn(String, Kind) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<Vec<u8>, CacheError>>,
{
    let fmt = |source| CacheError::Format {
        location: location.to_string(),
        source,
    };
    match format::parse_manifest(&bytes, digest).map_err(fmt)? {
        Parsed::Cache { config, layers } => {
            let cfg = fetch(config.digest.clone(), Kind::Blob).await?;
            format::parse_config(&cfg, &config.digest, &layers).map_err(fmt)
        }
        Parsed::Image(m) => {
            let cfg = fetch(m.config.digest.clone(), Kind::Blob).await?;
            Ok(format::parse_inline(&cfg, &m.config.digest, &m.layers)
                .map_err(fmt)?
                .unwrap_or_default())
        }
        Parsed::Images(list) => {
            let mut all = Chains::default();
            for d in list {
                let b = fetch(d.digest.clone(), Kind::Manifest).await?;
                if let Parsed::Image(m) = format::parse_manifest(&b, &d.digest).map_err(fmt)? {
                    let cfg = fetch(m.config.digest.clone(), Kind::Blob).await?;
                    if let Some(c) =
                        format::parse_inline(&cfg, &m.config.digest, &m.layers).map_err(fmt)?
                    {
                        all.extend(c);
                    }
                }
            }
            Ok(all)
        }
    }
}

/// Reads a local cache: `index.json`'s manifest tagged `tag` (or the one
/// named by `digest`).
pub async fn read_local(
    src: &Path,
    tag: &str,
    digest: Option<&str>,
) -> std::result::Result<Imported, CacheError> {
    let location = src.display().to_string();
    let manifest = match digest {
        Some(d) => d.to_string(),
        None => tagged_manifest(src, tag)?,
    };
    let bytes = read_small(src, &manifest)?;
    let chains = read_manifest(&location, &manifest, bytes, |d, _| async move {
        read_small(src, &d)
    })
    .await?;
    Ok(Imported {
        chains,
        source: BlobSource::Local(src.to_path_buf()),
        describe: format!("local cache {location}"),
    })
}

/// The manifest `tag` names in the local cache `src`'s `index.json` (the
/// embedded import reads it; kiln's client resolves it for kilnd, which
/// never reads the client's index).
pub fn tagged_manifest(src: &Path, tag: &str) -> std::result::Result<String, CacheError> {
    let location = src.display().to_string();
    let path = src.join("index.json");
    let bytes = std::fs::read(&path).map_err(|source| CacheError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let index: format::Index = serde_json::from_slice(&bytes).map_err(|e| CacheError::Format {
        location: path.display().to_string(),
        source: format::FormatError::Json {
            what: "index",
            digest: "index.json".into(),
            reason: e.to_string(),
        },
    })?;
    index
        .manifests
        .iter()
        .find(|m| m.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) == Some(tag))
        .map(|m| m.digest.clone())
        .ok_or_else(|| CacheError::Option {
            option: "--cache-from".into(),
            reason: format!("{location}: index.json has no manifest tagged \"{tag}\""),
        })
}

/// Reads every import (the blocking reads off the runtime). A cache that
/// cannot be read is a warning, as in BuildKit: the build runs without it.
/// `client` is the build's registry client (its credentials).
pub async fn read_all(
    imports: &[CacheImport],
    client: &kiln_registry::Client,
) -> Vec<(String, std::result::Result<Imported, CacheError>)> {
    let mut out = Vec::with_capacity(imports.len());
    for i in imports {
        let what = i.describe();
        let r = match &i.source {
            // Small JSON files: read in place.
            ImportSource::Local { src, tag, digest } => {
                read_local(src, tag, digest.as_deref()).await
            }
            ImportSource::Registry {
                reference,
                insecure,
            } => match super::registry::client_for(client, reference, *insecure) {
                Ok(c) => super::registry::read(&c, reference).await,
                Err(e) => Err(e),
            },
        };
        out.push((what, r));
    }
    out
}

/// The engine's layer for an imported one.
fn layer_of(l: &ChainLayer) -> Option<Layer> {
    Some(Layer::with_blob(
        Digest::parse(&l.diff_id)?,
        l.media_type.clone(),
        l.digest.clone(),
        l.size,
        l.created.clone(),
    ))
}

/// Copies one blob from a source into the content store under `lease`.
async fn fetch_blob(
    svc: &Services,
    source: &BlobSource,
    l: &Blob,
    lease: &LeaseId,
) -> std::result::Result<(), CacheError> {
    match source {
        BlobSource::Local(dir) => {
            let blob = |reason: String| CacheError::Blob {
                location: dir.display().to_string(),
                digest: l.digest.clone(),
                reason,
            };
            let path =
                blob_path(dir, &l.digest).ok_or_else(|| blob("not a sha256 digest".into()))?;
            let digest =
                Digest::parse(&l.digest).ok_or_else(|| blob("not a sha256 digest".into()))?;
            let mut f = tokio::fs::File::open(&path)
                .await
                .map_err(|e| blob(e.to_string()))?;
            let mut w = svc
                .content
                .writer(lease)
                .await
                .map_err(|e| blob(crate::error::error_chain(&e)))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = tokio::io::AsyncReadExt::read(&mut f, &mut buf)
                    .await
                    .map_err(|e| blob(e.to_string()))?;
                if n == 0 {
                    break;
                }
                w.write(&buf[..n])
                    .await
                    .map_err(|e| blob(crate::error::error_chain(&e)))?;
            }
            w.commit(&digest, HashMap::new())
                .await
                .map_err(|e| blob(crate::error::error_chain(&e)))
        }
        BlobSource::Registry { client, reference } => {
            super::registry::fetch_layer(svc, client, reference, l, lease).await
        }
    }
}

/// Makes the imported chain of `key` a local cache hit: blobs into the
/// content store (those missing) and onto the build's lease, layers
/// unpacked under chainIDs, a local record saved. `None` when no import
/// holds the key, or its chain cannot be used (a warning says why).
pub async fn load(
    svc: &Services,
    cache: &super::BuildCache,
    key: &Digest,
    lease: &LeaseId,
    description: &str,
) -> Result<Option<Vec<Layer>>> {
    let Some((imported, chain)) = cache.imported(key) else {
        return Ok(None);
    };
    let Some(layers) = chain.iter().map(layer_of).collect::<Option<Vec<_>>>() else {
        tracing::warn!(key = %key, cache = %imported.describe, "imported result has a bad diffID; running the step");
        return Ok(None);
    };
    for l in layers.iter().filter_map(|l| l.blob.as_ref()) {
        match svc.content.info(&l.digest).await {
            Ok(_) => {
                svc.leases
                    .add_resource(lease, &LeaseResource::Content(l.digest.clone()))
                    .await?;
            }
            Err(e) if e.is_not_found() => {
                if let Err(e) = fetch_blob(svc, &imported.source, l, lease).await {
                    tracing::warn!(key = %key, error = %e, "cannot fetch an imported layer; running the step");
                    return Ok(None);
                }
            }
            Err(e) => return Err(WorkerError::from(e)),
        }
    }
    // A cache whose layers do not unpack to what it claims is a miss (the
    // step runs), not a failed build; what was written is the lease's.
    if let Err(e) = crate::base::ensure_unpacked(svc, &layers, lease).await {
        if matches!(e, WorkerError::Cancelled) {
            return Err(e);
        }
        tracing::warn!(key = %key, cache = %imported.describe, error = %e, "cannot unpack an imported result; running the step");
        return Ok(None);
    }
    if let Err(e) = crate::cache::save(
        svc,
        key,
        std::slice::from_ref(&layers),
        crate::cache::TYPE_REGULAR,
        description,
    )
    .await
    {
        tracing::warn!(key = %key, error = %e, "cannot save an imported cache record");
    }
    Ok(Some(layers))
}
