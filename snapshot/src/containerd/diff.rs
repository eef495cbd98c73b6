//! The diff service's Apply, used to unpack base-image layers that are not
//! yet unpacked for kiln's snapshotter.

use super::{Containerd, LeaseId};
use crate::error::Result;
use containerd_client::services::v1::diff_client::DiffClient;
use containerd_client::services::v1::ApplyRequest;
use containerd_client::types::Descriptor;
use std::collections::HashMap;

impl Containerd {
    /// Applies the layer blob onto the mounts of an active snapshot and
    /// returns the uncompressed digest (diffID) containerd computed.
    pub async fn diff_apply(
        &self,
        media_type: &str,
        digest: &str,
        size: i64,
        mounts: &[crate::mount::Mount],
        lease: &LeaseId,
    ) -> Result<String> {
        let r = DiffClient::new(self.channel())
            .apply(self.request(
                ApplyRequest {
                    diff: Some(Descriptor {
                        media_type: media_type.to_string(),
                        digest: digest.to_string(),
                        size,
                        annotations: HashMap::new(),
                    }),
                    mounts: super::snapshots::to_pb(mounts),
                    payloads: HashMap::new(),
                    sync_fs: false,
                },
                Some(lease),
            ))
            .await
            .map_err(|s| self.status_error("Diff.Apply", digest, s))?;
        Ok(r.into_inner().applied.map(|d| d.digest).unwrap_or_default())
    }
}
