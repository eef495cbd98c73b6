//! The service traits of [`crate::services`] on the proxy: each method
//! delegates to the proxy method that translates the call.

use super::{BlobWriter, Containerd, ContentInfo, ImageRecord, LeaseId, LeaseInfo, SnapshotInfo};
use crate::error::Result;
use crate::mount::Mount;
use crate::services::{Applier, Content, ContentWriter, Images, LeaseResource, Leases, Snapshots};
use async_trait::async_trait;
use kiln_types::Digest;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;

#[async_trait]
impl Snapshots for Containerd {
    fn snapshotter(&self) -> &str {
        Containerd::snapshotter(self)
    }

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

    async fn update_labels(&self, key: &str, labels: HashMap<String, String>) -> Result<()> {
        self.snapshot_update_labels(key, labels).await
    }
}

#[async_trait]
impl ContentWriter for BlobWriter {
    async fn write(&mut self, data: &[u8]) -> Result<()> {
        BlobWriter::write(self, data).await
    }

    async fn write_owned(&mut self, data: Vec<u8>) -> Result<()> {
        BlobWriter::write_owned(self, data).await
    }

    fn digest(&self) -> Option<Digest> {
        BlobWriter::digest(self)
    }

    async fn commit(
        self: Box<Self>,
        digest: &Digest,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        BlobWriter::commit(*self, digest, labels).await
    }
}

#[async_trait]
impl Content for Containerd {
    async fn info(&self, digest: &str) -> Result<ContentInfo> {
        self.content_info(digest).await
    }

    async fn read(&self, digest: &str) -> Result<Vec<u8>> {
        self.content_read(digest).await
    }

    async fn read_stream(&self, digest: &str) -> Result<mpsc::Receiver<Result<Vec<u8>>>> {
        self.content_read_stream(digest).await
    }

    async fn writer(&self, lease: &LeaseId) -> Result<Box<dyn ContentWriter>> {
        Ok(Box::new(self.content_writer(lease).await?))
    }

    async fn set_labels(&self, digest: &str, labels: HashMap<String, String>) -> Result<()> {
        self.content_set_labels(digest, labels).await
    }

    async fn hold(&self, digest: &str, lease: &LeaseId) -> Result<()> {
        // Held first, then checked: once the lease holds the digest the
        // blob cannot be collected between the two.
        self.lease_add_resource(lease, "content", digest).await?;
        self.content_info(digest).await.map(|_| ())
    }
}

#[async_trait]
impl Leases for Containerd {
    async fn create(
        &self,
        id: &LeaseId,
        purpose: &str,
        expire: Option<Duration>,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        self.lease_create(id, purpose, expire, labels).await
    }

    async fn create_referencing(
        &self,
        id: &LeaseId,
        purpose: &str,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        self.lease_create_referencing(id, purpose, labels).await
    }

    async fn delete(&self, id: &LeaseId, sync: bool) -> Result<()> {
        self.lease_delete(id, sync).await
    }

    async fn add_resource(&self, id: &LeaseId, resource: &LeaseResource) -> Result<()> {
        self.lease_add_resource(id, &resource.resource_type(), resource.id())
            .await
    }

    async fn list_resources(&self, id: &LeaseId) -> Result<Vec<LeaseResource>> {
        Ok(self
            .lease_list_resources(id)
            .await?
            .iter()
            .filter_map(|(t, r)| LeaseResource::from_containerd(t, r))
            .collect())
    }

    async fn list(&self) -> Result<Vec<LeaseInfo>> {
        self.lease_list_kiln().await
    }

    async fn get(&self, id: &LeaseId) -> Result<Option<LeaseInfo>> {
        self.lease_get_kiln(id).await
    }

    async fn gc(&self) -> Result<()> {
        Containerd::gc(self).await
    }
}

#[async_trait]
impl Images for Containerd {
    async fn get(&self, name: &str) -> Result<ImageRecord> {
        self.image_get(name).await
    }

    async fn put(&self, record: &ImageRecord, lease: Option<&LeaseId>) -> Result<()> {
        self.image_put(record, lease).await
    }

    async fn delete(&self, name: &str, sync: bool) -> Result<()> {
        self.image_delete(name, sync).await
    }

    async fn list(&self) -> Result<Vec<ImageRecord>> {
        self.image_list().await
    }
}

#[async_trait]
impl Applier for Containerd {
    async fn apply(
        &self,
        media_type: &str,
        digest: &str,
        size: i64,
        mounts: &[Mount],
        lease: &LeaseId,
    ) -> Result<String> {
        self.diff_apply(media_type, digest, size, mounts, lease)
            .await
    }
}
