//! `kiln inspect NAME`: an image of containerd's store as JSON (name,
//! manifest digest, the host platform's manifest, config, layers with
//! their sizes and total), read through the engine's content and image
//! services; `kiln images`: one line per image of the namespace (name,
//! ID, created, size).

use anyhow::{anyhow, Context, Result};
use serde_json::{json, Value};

use kiln_engine::oci::is_index;

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
    Ok(format!(
        "{}\n",
        serde_json::to_string_pretty(&document(svc, name).await?)?
    ))
}

/// `kiln images`: NAME, IMAGE ID (the config digest's first 12 hex
/// digits, as docker shows it), CREATED and SIZE (the layers' blobs) of
/// every image of the namespace. An image whose content is not all here
/// (another platform's, a pull in progress) shows `-`.
pub async fn images(
    svc: &kiln_engine::Services,
    names: &[String],
    now: std::time::SystemTime,
) -> Result<String> {
    let mut rows = vec![vec![
        "NAME".to_string(),
        "IMAGE ID".into(),
        "CREATED".into(),
        "SIZE".into(),
    ]];
    for name in names {
        let row = match document(svc, name).await {
            Ok(doc) => {
                let id = doc["id"].as_str().unwrap_or_default();
                let id = id.strip_prefix("sha256:").unwrap_or(id);
                let created = doc["created"]
                    .as_str()
                    .and_then(|c| {
                        humantime::parse_rfc3339_weak(c.trim_end_matches('Z').split('.').next()?)
                            .ok()
                    })
                    .and_then(|t| now.duration_since(t).ok())
                    .map(|d| format!("{} ago", crate::usage::human_duration(d.as_secs())))
                    .unwrap_or_else(|| "-".into());
                vec![
                    name.clone(),
                    id.chars().take(12).collect(),
                    created,
                    crate::usage::human_size(doc["size"].as_u64().unwrap_or(0)),
                ]
            }
            Err(_) => vec![name.clone(), "-".into(), "-".into(), "-".into()],
        };
        rows.push(row);
    }
    Ok(crate::usage::table(&rows))
}

async fn document(svc: &kiln_engine::Services, name: &str) -> Result<Value> {
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
    Ok(doc)
}
