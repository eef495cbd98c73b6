//! `type=registry` caches: the cache manifest under a reference, its
//! config and layers as blobs of the same repository. Import also reads an
//! image reference, whose configs may carry inline caches.

use super::export::{manifest_blobs, Plan};
use super::format::{Chains, Descriptor, ManifestStyle};
use super::import::{read_manifest, BlobSource, Imported, Kind};
use super::CacheError;
use crate::refs::Blob;
use crate::services::Services;
use bytes::Bytes;
use kiln_registry::Client;
use kiln_snapshot::containerd::LeaseId;
use kiln_types::reference::Reference;
use std::collections::HashMap;

fn parse_ref(flag: &str, reference: &str) -> Result<Reference, CacheError> {
    Reference::parse(reference).map_err(|e| CacheError::Option {
        option: flag.into(),
        reason: format!("ref={reference}: {e}"),
    })
}

/// The tag (or digest) a reference names; `latest` when it names none.
fn tag_of(r: &Reference) -> String {
    r.digest
        .clone()
        .or_else(|| r.tag.clone())
        .unwrap_or_else(|| "latest".into())
}

/// A small blob (config) by digest, whole.
async fn blob_bytes(client: &Client, r: &Reference, digest: &str) -> Result<Vec<u8>, CacheError> {
    let mut rd = client.fetch_blob(r, digest, 0).await?;
    let mut out = Vec::new();
    while let Some(c) = rd.chunk().await? {
        out.extend_from_slice(&c);
        if out.len() > 16 << 20 {
            return Err(CacheError::Blob {
                location: r.to_string(),
                digest: digest.into(),
                reason: "larger than 16 MiB".into(),
            });
        }
    }
    let got = kiln_solver::Digest::of(&out);
    if got.as_str() != digest {
        return Err(CacheError::Blob {
            location: r.to_string(),
            digest: digest.into(),
            reason: format!("content hashes to {got}"),
        });
    }
    Ok(out)
}

/// `client`, or with `insecure` (`registry.insecure=true`) the same over
/// settings that reach `reference`'s registry over plain HTTP or
/// unverified TLS, as a push with that option does.
pub fn client_for(client: &Client, reference: &str, insecure: bool) -> Result<Client, CacheError> {
    if !insecure {
        return Ok(client.clone());
    }
    let hosts =
        crate::push::hosts_for(client.hosts(), &[reference.to_string()], true).map_err(|e| {
            CacheError::Option {
                option: "registry.insecure".into(),
                reason: crate::error::error_chain(&e),
            }
        })?;
    Ok(client.with_hosts(std::sync::Arc::new(hosts)))
}

/// Reads the cache (or the inline caches of the image) that `reference`
/// names.
pub async fn read(client: &Client, reference: &str) -> Result<Imported, CacheError> {
    let r = parse_ref("--cache-from", reference)?;
    let resolved = client.resolve(&r).await?;
    let location = r.to_string();
    let chains: Chains = read_manifest(&location, &resolved.digest, resolved.bytes, |d, kind| {
        let (client, r) = (client.clone(), r.clone());
        async move {
            match kind {
                Kind::Manifest => Ok(client.fetch_manifest(&r, &d).await?),
                Kind::Blob => blob_bytes(&client, &r, &d).await,
            }
        }
    })
    .await?;
    Ok(Imported {
        chains,
        source: BlobSource::Registry {
            client: client.clone(),
            reference: r,
        },
        describe: format!("registry cache {location}"),
    })
}

/// Copies one layer blob from the registry into the content store under
/// `lease` (the content writer checks the digest at commit).
pub async fn fetch_layer(
    svc: &Services,
    client: &Client,
    r: &Reference,
    l: &Blob,
    lease: &LeaseId,
) -> Result<(), CacheError> {
    let blob = |reason: String| CacheError::Blob {
        location: r.to_string(),
        digest: l.digest.clone(),
        reason,
    };
    let digest =
        kiln_solver::Digest::parse(&l.digest).ok_or_else(|| blob("not a sha256 digest".into()))?;
    let mut rd = client.fetch_blob(r, &l.digest, 0).await?;
    let mut w = svc
        .content
        .writer(lease)
        .await
        .map_err(|e| blob(crate::error::error_chain(&e)))?;
    let size = u64::try_from(l.size).unwrap_or(0);
    let mut written: u64 = 0;
    while let Some(c) = rd.chunk().await? {
        // A registry is not trusted to stop: never ingest more than the
        // cache says the layer holds.
        written += c.len() as u64;
        if written > size {
            return Err(blob(format!(
                "the registry sent more than the {size} bytes the cache names"
            )));
        }
        w.write(&c)
            .await
            .map_err(|e| blob(crate::error::error_chain(&e)))?;
    }
    w.commit(&digest, HashMap::new())
        .await
        .map_err(|e| blob(crate::error::error_chain(&e)))
}

/// Uploads one layer from the content store unless the repository has it
/// (or can mount it), by the image push's rule.
async fn push_layer(
    svc: &Services,
    client: &Client,
    r: &Reference,
    l: &Blob,
) -> Result<(), CacheError> {
    let blob = |reason: String| CacheError::Blob {
        location: r.to_string(),
        digest: l.digest.clone(),
        reason,
    };
    let desc = crate::oci::descriptor(&l.media_type, &l.digest, l.size)
        .ok_or_else(|| blob(format!("bad descriptor ({} bytes)", l.size)))?;
    crate::push::push_layer(svc, client, r, &desc)
        .await
        .map(|_| ())
        .map_err(|e| blob(crate::error::error_chain(&e)))
}

/// Uploads a small blob held in memory.
async fn push_bytes(
    client: &Client,
    r: &Reference,
    desc: &Descriptor,
    bytes: &[u8],
) -> Result<(), CacheError> {
    if client.blob_exists(r, &desc.digest).await?.is_some() {
        return Ok(());
    }
    let (tx, body) = tokio::sync::mpsc::channel(1);
    let _ = tx.send(Ok(Bytes::copy_from_slice(bytes))).await;
    drop(tx);
    Ok(client
        .push_blob(r, &desc.digest, bytes.len() as u64, body)
        .await?)
}

/// Pushes `plan` to `reference`: layers (those the repository lacks),
/// config, then the manifest under the reference's tag. Returns the
/// manifest's descriptor.
pub async fn push(
    svc: &Services,
    client: &Client,
    reference: &str,
    plan: &Plan,
    style: ManifestStyle,
) -> Result<Descriptor, CacheError> {
    let r = parse_ref("--cache-to", reference)?;
    for b in plan.layers.iter().filter_map(|l| l.blob.as_ref()) {
        push_layer(svc, client, &r, b).await?;
    }
    let (config, config_desc, manifest, manifest_desc) = manifest_blobs(plan, style);
    push_bytes(client, &r, &config_desc, &config).await?;
    client
        .push_manifest(&r, &tag_of(&r), &manifest_desc.media_type, manifest)
        .await?;
    Ok(manifest_desc)
}
