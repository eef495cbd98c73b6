//! `kiln inspect NAME`: an image of containerd's store as JSON (name,
//! manifest digest, the host platform's manifest, config, layers with
//! their sizes and total), read through the engine's content and image
//! services.

use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value};

fn is_index(media_type: &str) -> bool {
    media_type == kiln_engine::oci::MEDIA_OCI_INDEX
        || media_type == kiln_engine::oci::MEDIA_DOCKER_LIST
}

async fn read_json(svc: &kiln_engine::Services, digest: &str) -> Result<Value> {
    let bytes = svc
        .content
        .read(digest)
        .await
        .with_context(|| format!("read {digest}"))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parse {digest}"))
}

/// The JSON document `kiln inspect` prints (pretty, one trailing newline).
pub async fn inspect(svc: &kiln_engine::Services, name: &str) -> Result<String> {
    let record = svc.images.get(name).await.map_err(|e| {
        if e.is_not_found() {
            anyhow!(
                "image {name} not found in containerd namespace {:?}",
                svc.namespace
            )
        } else {
            anyhow::Error::new(e)
        }
    })?;
    let mut manifest_digest = record.digest.clone();
    let mut manifest = read_json(svc, &record.digest).await?;
    if is_index(&record.media_type) || manifest.get("manifests").is_some() {
        let host = kiln_engine::oci::host_platform();
        let want_os = host.os().to_string();
        let want_arch = host.architecture().to_string();
        let entry = manifest["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| {
                m["platform"]["os"].as_str() == Some(want_os.as_str())
                    && m["platform"]["architecture"].as_str() == Some(want_arch.as_str())
            })
            .cloned()
            .ok_or_else(|| anyhow!("image {name} has no manifest for {want_os}/{want_arch}"))?;
        manifest_digest = entry["digest"].as_str().unwrap_or_default().to_string();
        manifest = read_json(svc, &manifest_digest).await?;
    }
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .ok_or_else(|| anyhow!("image {name}: manifest {manifest_digest} has no config"))?
        .to_string();
    let config = read_json(svc, &config_digest).await?;
    let layers: Vec<Value> = manifest["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| {
            json!({
                "digest": l["digest"],
                "mediaType": l["mediaType"],
                "size": l["size"],
            })
        })
        .collect();
    let total: u64 = layers.iter().filter_map(|l| l["size"].as_u64()).sum();
    let doc = json!({
        "name": name,
        "digest": record.digest,
        "mediaType": record.media_type,
        "manifest": manifest_digest,
        "id": config_digest,
        "created": config["created"],
        "architecture": config["architecture"],
        "os": config["os"],
        "config": config["config"],
        "layers": layers,
        "size": total,
        "history": config["history"],
    });
    Ok(format!("{}\n", serde_json::to_string_pretty(&doc)?))
}
