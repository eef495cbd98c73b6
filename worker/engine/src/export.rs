//! The image exporter: config, manifest, GC labels and image records, so
//! the result is complete and already unpacked for other clients.

use crate::error::Result;
use crate::oci::{self, Descriptor, History, ImageConfigJson, Manifest, RootFs, RunConfig};
use crate::refs::{self, Layer};
use crate::services::Services;
use kiln_snapshot::containerd::{ImageRecord, LeaseId};
use kiln_snapshot::diff::{compression_of, Compression};
use kiln_snapshot::layer::convert_layer;
use kiln_snapshot::services::write_blob;
use std::collections::HashMap;

/// What the exporter produced.
#[derive(Clone, Debug)]
pub struct Exported {
    pub manifest: Descriptor,
    pub config_digest: String,
    pub names: Vec<String>,
}

/// Builds the OCI config for a chain and the frontend's image config.
pub fn image_config(layers: &[Layer], cfg: &kiln_solver::ImageConfig) -> ImageConfigJson {
    let platform = oci::host_platform();
    let created = oci::now_rfc3339();
    let mut history: Vec<History> = cfg
        .history
        .iter()
        .map(|h| History {
            created: Some(h.created.clone().unwrap_or_else(|| created.clone())),
            created_by: h.created_by.clone(),
            comment: h.comment.clone(),
            empty_layer: h.empty_layer,
        })
        .collect();
    // Every layer needs a non-empty history entry; back-fill the bottom
    // when the base image shipped fewer (as BuildKit's exporter does).
    let with_layer = history.iter().filter(|h| !h.empty_layer).count();
    if with_layer < layers.len() {
        let missing = layers.len() - with_layer;
        let mut filled: Vec<History> = (0..missing)
            .map(|_| History {
                created: Some(created.clone()),
                ..Default::default()
            })
            .collect();
        filled.extend(history);
        history = filled;
    }
    ImageConfigJson {
        created: Some(created),
        architecture: platform.architecture,
        os: platform.os,
        config: RunConfig {
            user: cfg.user.clone(),
            exposed_ports: cfg
                .exposed_ports
                .iter()
                .map(|p| (p.clone(), serde_json::json!({})))
                .collect(),
            env: cfg.env.clone(),
            entrypoint: cfg.entrypoint.clone(),
            cmd: cfg.cmd.clone(),
            volumes: cfg
                .volumes
                .iter()
                .map(|v| (v.clone(), serde_json::json!({})))
                .collect(),
            working_dir: cfg.working_dir.clone(),
            labels: cfg.labels.clone(),
            stop_signal: cfg.stop_signal.clone().unwrap_or_default(),
            shell: cfg.shell.clone(),
            args_escaped: false,
        },
        rootfs: RootFs {
            fs_type: "layers".into(),
            diff_ids: layers.iter().map(|l| l.diff_id.to_string()).collect(),
        },
        history,
    }
}

/// The chain with every layer in `compression` (re-compressed variants
/// where needed, reused when a blob names one) and OCI media type names.
/// `None` keeps the layers as they are.
async fn with_compression(
    svc: &Services,
    layers: &[Layer],
    compression: Option<Compression>,
    lease: &LeaseId,
) -> Result<Vec<Layer>> {
    let Some(to) = compression else {
        return Ok(layers.to_vec());
    };
    let mut out = Vec::with_capacity(layers.len());
    for l in layers {
        match compression_of(&l.media_type) {
            Some(from) if from == to => out.push(Layer {
                media_type: to.media_type().to_string(),
                ..l.clone()
            }),
            Some(from) => {
                let (digest, size) = convert_layer(
                    &*svc.content,
                    &*svc.leases,
                    &l.digest,
                    from,
                    &l.diff_id,
                    to,
                    lease,
                )
                .await?;
                out.push(Layer {
                    diff_id: l.diff_id.clone(),
                    media_type: to.media_type().to_string(),
                    digest: digest.to_string(),
                    size: size as i64,
                });
            }
            // A layer type kiln does not know (e.g. foreign): keep it.
            None => out.push(l.clone()),
        }
    }
    Ok(out)
}

/// Writes config and manifest under `lease` with the GC labels that tie
/// manifest -> config/layers and config -> unpacked snapshot, then points
/// every name at the manifest. `unpacked` says the chain's snapshots exist
/// (named by chainID) and should live as long as the image.
pub async fn export_image(
    svc: &Services,
    layers: &[Layer],
    config: &ImageConfigJson,
    names: &[String],
    unpacked: bool,
    compression: Option<Compression>,
    lease: &LeaseId,
) -> Result<Exported> {
    let layers = &with_compression(svc, layers, compression, lease).await?;
    let config_bytes =
        serde_json::to_vec(config).map_err(|e| crate::error::WorkerError::InvalidImage {
            image: "result".into(),
            reason: e.to_string(),
        })?;
    let mut cfg_labels = HashMap::new();
    let top = refs::top_snapshot(layers);
    if unpacked && !top.is_empty() {
        cfg_labels.insert(
            format!(
                "containerd.io/gc.ref.snapshot.{}",
                svc.snapshots.snapshotter()
            ),
            top,
        );
    }
    let config_digest = write_blob(&*svc.content, &config_bytes, cfg_labels, lease).await?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: oci::MEDIA_OCI_MANIFEST.into(),
        config: Descriptor {
            media_type: oci::MEDIA_OCI_CONFIG.into(),
            digest: config_digest.to_string(),
            size: config_bytes.len() as i64,
            ..Default::default()
        },
        layers: layers
            .iter()
            .map(|l| Descriptor {
                media_type: l.media_type.clone(),
                digest: l.digest.clone(),
                size: l.size,
                ..Default::default()
            })
            .collect(),
    };
    let manifest_bytes =
        serde_json::to_vec(&manifest).map_err(|e| crate::error::WorkerError::InvalidImage {
            image: "result".into(),
            reason: e.to_string(),
        })?;
    let mut m_labels = HashMap::new();
    m_labels.insert(
        "containerd.io/gc.ref.content.config".to_string(),
        config_digest.to_string(),
    );
    for (i, l) in layers.iter().enumerate() {
        m_labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            l.digest.clone(),
        );
    }
    let manifest_digest = write_blob(&*svc.content, &manifest_bytes, m_labels, lease).await?;
    let desc = Descriptor {
        media_type: oci::MEDIA_OCI_MANIFEST.into(),
        digest: manifest_digest.to_string(),
        size: manifest_bytes.len() as i64,
        ..Default::default()
    };
    for name in names {
        svc.images
            .put(
                &ImageRecord {
                    name: name.clone(),
                    media_type: desc.media_type.clone(),
                    digest: desc.digest.clone(),
                    size: desc.size,
                    labels: HashMap::new(),
                },
                Some(lease),
            )
            .await?;
    }
    Ok(Exported {
        manifest: desc,
        config_digest: config_digest.to_string(),
        names: names.to_vec(),
    })
}
