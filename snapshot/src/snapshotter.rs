//! The snapshotter contract kiln relies on, as a trait, so that it can be
//! checked the same way on containerd and on the in-memory fake
//! ([`crate::testing::MemSnapshotter`]) by one conformance suite
//! ([`crate::testing::snapshotter_conformance`]).
//!
//! The methods restate containerd's snapshotter semantics:
//! - `prepare(key, parent)` creates an *active* (writable) snapshot on top
//!   of the committed `parent` (`""` = empty) and returns its mounts;
//! - `view(key, parent)` creates a read-only snapshot of `parent`;
//! - `mounts(key)` returns the mounts of an active or view snapshot again;
//! - `commit(name, key)` turns active `key` into committed `name` (the key
//!   is gone afterwards; an existing `name` is `AlreadyExists`);
//! - `remove(key)` deletes an active or view snapshot (a missing one is
//!   not an error);
//! - `stat(key)` describes a snapshot, `NotFound` if there is none.
//!
//! Everything created is held by `lease`.

use crate::containerd::{LeaseId, SnapshotInfo};
use crate::error::Result;
use crate::mount::Mount;
use crate::Containerd;
use std::collections::HashMap;
use std::future::Future;

/// A snapshotter (see the module docs for the contract).
pub trait Snapshotter: Send + Sync {
    fn prepare(
        &self,
        key: &str,
        parent: &str,
        lease: &LeaseId,
    ) -> impl Future<Output = Result<Vec<Mount>>> + Send;
    fn view(
        &self,
        key: &str,
        parent: &str,
        lease: &LeaseId,
    ) -> impl Future<Output = Result<Vec<Mount>>> + Send;
    fn mounts(&self, key: &str) -> impl Future<Output = Result<Vec<Mount>>> + Send;
    fn commit(
        &self,
        name: &str,
        key: &str,
        lease: &LeaseId,
    ) -> impl Future<Output = Result<()>> + Send;
    fn remove(&self, key: &str) -> impl Future<Output = Result<()>> + Send;
    fn stat(&self, key: &str) -> impl Future<Output = Result<SnapshotInfo>> + Send;
}

impl Snapshotter for Containerd {
    async fn prepare(&self, key: &str, parent: &str, lease: &LeaseId) -> Result<Vec<Mount>> {
        self.snapshot_prepare(key, parent, lease).await
    }

    async fn view(&self, key: &str, parent: &str, lease: &LeaseId) -> Result<Vec<Mount>> {
        self.snapshot_view(key, parent, lease).await
    }

    async fn mounts(&self, key: &str) -> Result<Vec<Mount>> {
        self.snapshot_mounts(key).await
    }

    async fn commit(&self, name: &str, key: &str, lease: &LeaseId) -> Result<()> {
        self.snapshot_commit(name, key, HashMap::new(), lease).await
    }

    async fn remove(&self, key: &str) -> Result<()> {
        self.snapshot_remove(key).await
    }

    async fn stat(&self, key: &str) -> Result<SnapshotInfo> {
        self.snapshot_stat(key).await
    }
}
