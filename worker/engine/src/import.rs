//! Importing a root filesystem directory as a one-layer image, with kiln's
//! own layer writer: how tests and the quick start get a base image without
//! a registry.

use crate::error::Result;
use crate::export::{export_image, image_config};
use crate::refs::Layer;
use crate::services::Services;
use kiln_snapshot::containerd::LeaseId;
use kiln_snapshot::diff::Compression;
use kiln_snapshot::layer::{commit_layer, LayerSource};
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// Imports `dir` as image `name` (normalized) with one layer and the given
/// config. The layer is not unpacked: a build that uses it unpacks it.
/// Returns the manifest digest.
pub async fn import_rootfs(
    svc: &Services,
    dir: &Path,
    name: &str,
    config: &kiln_solver::ImageConfig,
) -> Result<String> {
    let lease = LeaseId::unique("import");
    svc.leases
        .create(
            &lease,
            "import",
            Some(Duration::from_secs(3600)),
            HashMap::new(),
        )
        .await?;
    let r = async {
        let desc = commit_layer(
            &*svc.content,
            LayerSource::Walk {
                lower: None,
                upper: dir.to_path_buf(),
            },
            Compression::Gzip,
            &lease,
        )
        .await?;
        let layers = vec![Layer::with_blob(
            desc.diff_id.clone(),
            desc.media_type,
            desc.digest.to_string(),
            desc.size as i64,
            Some(crate::oci::now_rfc3339()),
        )];
        let mut cfg = config.clone();
        cfg.history = vec![kiln_solver::HistoryEntry {
            created: None,
            created_by: format!("kiln import {}", dir.display()),
            comment: "imported by kiln".into(),
            empty_layer: false,
        }];
        let json = image_config(&layers, &cfg);
        // Not unpacked: the config must not claim a snapshot.
        let out = export_image(
            svc,
            &layers,
            &json,
            &[name.to_string()],
            false,
            &Default::default(),
            &lease,
        )
        .await?;
        Ok::<_, crate::error::WorkerError>(out.manifest.digest().to_string())
    }
    .await;
    if let Err(e) = svc.leases.delete(&lease, false).await {
        tracing::warn!(lease = %lease, error = %e, "cannot delete import lease");
    }
    r
}
