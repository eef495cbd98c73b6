//! The image exporter's `rewrite-timestamp=true`: the result's layers with
//! every file time later than `SOURCE_DATE_EPOCH` clamped to it, so two
//! builds of the same inputs at different times give the same layers.
//!
//! As BuildKit's exporter: the layers the result shares with its base image
//! (the leading layers whose diffIDs are the base's) are kept as they are;
//! from the first layer that differs on, each layer is rewritten, and one
//! that has no later time keeps its blob. A rewritten layer has a new
//! diffID, so its image is not backed by the build's unpacked snapshots.

use crate::error::Result;
use crate::refs::{Blob, Layer};
use crate::services::Services;
use kiln_snapshot::containerd::LeaseId;
use kiln_snapshot::diff::{compression_of, Compression, Level};
use kiln_snapshot::layer::{clamp_layer_times, StoredLayer};

/// `layers` (which all have blobs, see [`crate::blobs::ensure`]) with their
/// times clamped to `epoch`, the new blobs in `compression` and held by
/// `lease`; `base` is the base image's diffIDs. Also says whether any
/// layer changed.
pub async fn clamp_layers(
    svc: &Services,
    layers: &[Layer],
    base: &[String],
    epoch: i64,
    compression: (Compression, Level),
    lease: &LeaseId,
) -> Result<(Vec<Layer>, bool)> {
    let shared = layers
        .iter()
        .zip(base)
        .take_while(|(l, b)| l.diff_id.as_str() == b.as_str())
        .count();
    let mut out = layers.to_vec();
    let mut changed = false;
    for l in out.iter_mut().skip(shared) {
        let Some(blob) = &l.blob else {
            continue;
        };
        // A layer type kiln does not know (foreign) is kept, as the
        // compression conversion keeps it.
        let Some(from) = compression_of(&blob.media_type) else {
            continue;
        };
        let clamped = clamp_layer_times(
            &*svc.content,
            &*svc.leases,
            StoredLayer {
                digest: &blob.digest,
                compression: from,
                diff_id: &l.diff_id,
            },
            compression,
            epoch,
            lease,
        )
        .await?;
        if let Some(d) = clamped {
            l.diff_id = d.diff_id;
            l.blob = Some(Blob {
                media_type: d.media_type.to_string(),
                digest: d.digest.to_string(),
                size: d.size as i64,
            });
            l.uncompressed_size = None;
            changed = true;
        }
    }
    Ok((out, changed))
}
