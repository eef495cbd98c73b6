//! TEMPORARY: a minimal in-memory content store, lease store and image
//! store so the engine tests can run before the shared fakes of
//! `kiln_snapshot::testing` exist. No GC, one namespace. To be replaced by
//! those fakes (which pass the conformance suites) when they land.

use async_trait::async_trait;
use kiln_snapshot::containerd::{ContentInfo, ImageRecord, LeaseId, LeaseInfo};
use kiln_snapshot::mount::Mount;
use kiln_snapshot::services::{Applier, Content, ContentWriter, Images, LeaseResource, Leases};
use kiln_snapshot::{Digest, ErrorKind, Result, SnapshotError};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

fn err(method: &'static str, object: &str, kind: ErrorKind) -> SnapshotError {
    SnapshotError::Rpc {
        method,
        object: object.to_string(),
        kind,
        message: format!("{kind:?}"),
    }
}

#[derive(Default)]
struct State {
    blobs: HashMap<String, (Vec<u8>, HashMap<String, String>)>,
    leases: HashMap<String, (LeaseInfo, Vec<LeaseResource>)>,
    images: HashMap<String, ImageRecord>,
}

/// Content, leases and images over one shared state.
#[derive(Clone, Default)]
pub struct MemStore(Arc<Mutex<State>>);

impl MemStore {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().expect("store lock")
    }

    fn hold(&self, lease: &LeaseId, r: LeaseResource) {
        if let Some(l) = self.state().leases.get_mut(lease.as_str()) {
            l.1.push(r);
        }
    }
}

struct Writer {
    store: MemStore,
    lease: LeaseId,
    data: Vec<u8>,
}

#[async_trait]
impl ContentWriter for Writer {
    async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.data.extend_from_slice(data);
        Ok(())
    }

    async fn commit(
        self: Box<Self>,
        digest: &Digest,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        if Digest::of(&self.data) != *digest {
            return Err(err(
                "Content.Write",
                digest.as_str(),
                ErrorKind::FailedPrecondition,
            ));
        }
        {
            let mut st = self.store.state();
            let e = st
                .blobs
                .entry(digest.to_string())
                .or_insert_with(|| (self.data.clone(), HashMap::new()));
            e.1.extend(labels);
        }
        self.store
            .hold(&self.lease, LeaseResource::Content(digest.to_string()));
        Ok(())
    }
}

#[async_trait]
impl Content for MemStore {
    async fn info(&self, digest: &str) -> Result<ContentInfo> {
        let st = self.state();
        let (data, labels) = st
            .blobs
            .get(digest)
            .ok_or_else(|| err("Content.Info", digest, ErrorKind::NotFound))?;
        Ok(ContentInfo {
            digest: digest.to_string(),
            size: data.len() as i64,
            labels: labels.clone(),
        })
    }

    async fn read(&self, digest: &str) -> Result<Vec<u8>> {
        let st = self.state();
        st.blobs
            .get(digest)
            .map(|b| b.0.clone())
            .ok_or_else(|| err("Content.Read", digest, ErrorKind::NotFound))
    }

    async fn read_stream(&self, digest: &str) -> Result<mpsc::Receiver<Result<Vec<u8>>>> {
        let data = self.read(digest).await?;
        let (tx, rx) = mpsc::channel(1);
        let _ = tx.send(Ok(data)).await;
        Ok(rx)
    }

    async fn writer(&self, lease: &LeaseId) -> Result<Box<dyn ContentWriter>> {
        Ok(Box::new(Writer {
            store: self.clone(),
            lease: lease.clone(),
            data: Vec::new(),
        }))
    }

    async fn set_labels(&self, digest: &str, labels: HashMap<String, String>) -> Result<()> {
        let mut st = self.state();
        let b = st
            .blobs
            .get_mut(digest)
            .ok_or_else(|| err("Content.Update", digest, ErrorKind::NotFound))?;
        b.1.extend(labels);
        Ok(())
    }
}

#[async_trait]
impl Leases for MemStore {
    async fn create(
        &self,
        id: &LeaseId,
        purpose: &str,
        _expire: Option<Duration>,
        mut labels: HashMap<String, String>,
    ) -> Result<()> {
        let mut st = self.state();
        if st.leases.contains_key(id.as_str()) {
            return Err(err("Leases.Create", id.as_str(), ErrorKind::AlreadyExists));
        }
        labels.insert(
            kiln_snapshot::containerd::LEASE_OWNER_LABEL.into(),
            purpose.into(),
        );
        let info = LeaseInfo {
            id: id.to_string(),
            labels,
            created_secs: 0,
        };
        st.leases.insert(id.to_string(), (info, Vec::new()));
        Ok(())
    }

    async fn delete(&self, id: &LeaseId, _sync: bool) -> Result<()> {
        self.state().leases.remove(id.as_str());
        Ok(())
    }

    async fn add_resource(&self, id: &LeaseId, resource: &LeaseResource) -> Result<()> {
        let mut st = self.state();
        let l = st
            .leases
            .get_mut(id.as_str())
            .ok_or_else(|| err("Leases.AddResource", id.as_str(), ErrorKind::NotFound))?;
        l.1.push(resource.clone());
        Ok(())
    }

    async fn list(&self) -> Result<Vec<LeaseInfo>> {
        Ok(self.state().leases.values().map(|l| l.0.clone()).collect())
    }

    async fn get(&self, id: &LeaseId) -> Result<Option<LeaseInfo>> {
        Ok(self.state().leases.get(id.as_str()).map(|l| l.0.clone()))
    }

    async fn gc(&self) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl Images for MemStore {
    async fn get(&self, name: &str) -> Result<ImageRecord> {
        self.state()
            .images
            .get(name)
            .cloned()
            .ok_or_else(|| err("Images.Get", name, ErrorKind::NotFound))
    }

    async fn put(&self, record: &ImageRecord, _lease: Option<&LeaseId>) -> Result<()> {
        self.state()
            .images
            .insert(record.name.clone(), record.clone());
        Ok(())
    }

    async fn delete(&self, name: &str, _sync: bool) -> Result<()> {
        self.state()
            .images
            .remove(name)
            .map(|_| ())
            .ok_or_else(|| err("Images.Delete", name, ErrorKind::NotFound))
    }
}

#[async_trait]
impl Applier for MemStore {
    async fn apply(
        &self,
        _media_type: &str,
        digest: &str,
        _size: i64,
        _mounts: &[Mount],
        _lease: &LeaseId,
    ) -> Result<String> {
        Err(err("Diff.Apply", digest, ErrorKind::Unimplemented))
    }
}

impl MemStore {
    /// Every blob's digest.
    pub fn digests(&self) -> std::collections::BTreeSet<String> {
        self.state().blobs.keys().cloned().collect()
    }
}
