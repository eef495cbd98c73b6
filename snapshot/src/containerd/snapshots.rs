//! The snapshotter: prepare, view, mounts, commit, remove, stat, update.

use super::{Containerd, LeaseId};
use crate::error::Result;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::snapshots::{
    CommitSnapshotRequest, ListSnapshotsRequest, MountsRequest, PrepareSnapshotRequest,
    RemoveSnapshotRequest, StatSnapshotRequest, UpdateSnapshotRequest, ViewSnapshotRequest,
};
use containerd_client::tonic::transport::Channel;
use containerd_client::types::Mount as PbMount;
use std::collections::HashMap;

/// A snapshot's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotKind {
    View,
    Active,
    Committed,
    Unknown,
}

/// What the snapshotter knows about a snapshot.
#[derive(Clone, Debug)]
pub struct SnapshotInfo {
    pub name: String,
    pub parent: String,
    pub kind: SnapshotKind,
    pub labels: HashMap<String, String>,
}

/// Converts containerd mounts to ours.
pub(crate) fn from_pb(mounts: Vec<PbMount>) -> Vec<crate::mount::Mount> {
    mounts
        .into_iter()
        .map(|m| crate::mount::Mount {
            mount_type: m.r#type,
            source: m.source,
            target: m.target,
            options: m.options,
        })
        .collect()
}

/// Converts our mounts to containerd's.
pub fn to_pb(mounts: &[crate::mount::Mount]) -> Vec<PbMount> {
    mounts
        .iter()
        .map(|m| PbMount {
            r#type: m.mount_type.clone(),
            source: m.source.clone(),
            target: m.target.clone(),
            options: m.options.clone(),
        })
        .collect()
}

impl Containerd {
    fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel()).max_decoding_message_size(super::MAX_MESSAGE)
    }

    /// Prepares an active snapshot `key` on `parent` ("" = empty) under
    /// `lease`, returning its mounts.
    pub async fn snapshot_prepare(
        &self,
        key: &str,
        parent: &str,
        lease: &LeaseId,
    ) -> Result<Vec<crate::mount::Mount>> {
        let r = self
            .snapshots()
            .prepare(self.request(
                PrepareSnapshotRequest {
                    snapshotter: self.config.snapshotter.clone(),
                    key: key.to_string(),
                    parent: parent.to_string(),
                    labels: HashMap::new(),
                },
                Some(lease),
            ))
            .await
            .map_err(|s| self.status_error("Snapshots.Prepare", key, s))?;
        Ok(from_pb(r.into_inner().mounts))
    }

    /// A read-only view `key` of `parent` under `lease`.
    pub async fn snapshot_view(
        &self,
        key: &str,
        parent: &str,
        lease: &LeaseId,
    ) -> Result<Vec<crate::mount::Mount>> {
        let r = self
            .snapshots()
            .view(self.request(
                ViewSnapshotRequest {
                    snapshotter: self.config.snapshotter.clone(),
                    key: key.to_string(),
                    parent: parent.to_string(),
                    labels: HashMap::new(),
                },
                Some(lease),
            ))
            .await
            .map_err(|s| self.status_error("Snapshots.View", key, s))?;
        Ok(from_pb(r.into_inner().mounts))
    }

    /// The mounts of an existing active or view snapshot.
    pub async fn snapshot_mounts(&self, key: &str) -> Result<Vec<crate::mount::Mount>> {
        let r = self
            .snapshots()
            .mounts(self.request(
                MountsRequest {
                    snapshotter: self.config.snapshotter.clone(),
                    key: key.to_string(),
                },
                None,
            ))
            .await
            .map_err(|s| self.status_error("Snapshots.Mounts", key, s))?;
        Ok(from_pb(r.into_inner().mounts))
    }

    /// Commits active `key` as `name` under `lease` (the lease entry moves
    /// to the committed name).
    pub async fn snapshot_commit(
        &self,
        name: &str,
        key: &str,
        labels: HashMap<String, String>,
        lease: &LeaseId,
    ) -> Result<()> {
        self.snapshots()
            .commit(self.request(
                CommitSnapshotRequest {
                    snapshotter: self.config.snapshotter.clone(),
                    name: name.to_string(),
                    key: key.to_string(),
                    labels,
                },
                Some(lease),
            ))
            .await
            .map_err(|s| self.status_error("Snapshots.Commit", name, s))?;
        Ok(())
    }

    /// Removes an active or view snapshot kiln created and no longer needs
    /// (never a committed one another client may use).
    pub async fn snapshot_remove(&self, key: &str) -> Result<()> {
        match self
            .snapshots()
            .remove(self.request(
                RemoveSnapshotRequest {
                    snapshotter: self.config.snapshotter.clone(),
                    key: key.to_string(),
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) => {
                let e = self.status_error("Snapshots.Remove", key, s);
                if e.is_not_found() {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Stat of a snapshot; `NotFound` if absent.
    pub async fn snapshot_stat(&self, key: &str) -> Result<SnapshotInfo> {
        let r = self
            .snapshots()
            .stat(self.request(
                StatSnapshotRequest {
                    snapshotter: self.config.snapshotter.clone(),
                    key: key.to_string(),
                },
                None,
            ))
            .await
            .map_err(|s| self.status_error("Snapshots.Stat", key, s))?;
        let i = r.into_inner().info.unwrap_or_default();
        Ok(convert_info(i))
    }

    /// Sets labels on a snapshot (only the given keys change; an empty
    /// value removes one).
    pub async fn snapshot_update_labels(
        &self,
        key: &str,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        self.snapshots()
            .update(self.request(
                UpdateSnapshotRequest {
                    snapshotter: self.config.snapshotter.clone(),
                    info: Some(containerd_client::services::v1::snapshots::Info {
                        name: key.to_string(),
                        labels,
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask { paths }),
                },
                None,
            ))
            .await
            .map_err(|s| self.status_error("Snapshots.Update", key, s))?;
        Ok(())
    }

    /// Whether a snapshot exists.
    pub async fn snapshot_exists(&self, key: &str) -> Result<bool> {
        match self.snapshot_stat(key).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Every snapshot of this namespace and snapshotter.
    pub async fn snapshot_list(&self) -> Result<Vec<SnapshotInfo>> {
        let mut stream = self
            .snapshots()
            .list(self.request(
                ListSnapshotsRequest {
                    snapshotter: self.config.snapshotter.clone(),
                    filters: vec![],
                },
                None,
            ))
            .await
            .map_err(|s| self.status_error("Snapshots.List", "", s))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(r) = stream
            .message()
            .await
            .map_err(|s| self.status_error("Snapshots.List", "", s))?
        {
            out.extend(r.info.into_iter().map(convert_info));
        }
        Ok(out)
    }
}

fn convert_info(i: containerd_client::services::v1::snapshots::Info) -> SnapshotInfo {
    let kind = match i.kind {
        1 => SnapshotKind::View,
        2 => SnapshotKind::Active,
        3 => SnapshotKind::Committed,
        _ => SnapshotKind::Unknown,
    };
    SnapshotInfo {
        name: i.name,
        parent: i.parent,
        kind,
        labels: i.labels,
    }
}
