//! [`Content`] on the in-memory containerd: blobs per namespace, written
//! through an ingest that commits with an expected digest.

use super::store::{rpc, Blob, MemContainerd};
use crate::containerd::{ContentInfo, LeaseId};
use crate::error::Result;
use crate::services::{Content, ContentWriter};
use async_trait::async_trait;
use kiln_types::Digest;
use kiln_types::ErrorKind;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Chunk size of [`Content::read_stream`], as the proxy's.
const CHUNK: usize = 1 << 20;

/// Applies a label update as containerd's `Content.Update` does with a
/// `labels.<key>` mask: each given key is set, and an empty value removes
/// it.
pub(crate) fn merge_labels(into: &mut HashMap<String, String>, labels: HashMap<String, String>) {
    for (k, v) in labels {
        if v.is_empty() {
            into.remove(&k);
        } else {
            into.insert(k, v);
        }
    }
}

impl MemContainerd {
    fn blob(&self, method: &'static str, digest: &str) -> Result<(Arc<Vec<u8>>, ContentInfo)> {
        self.injected(method, digest)?;
        self.with_ns(|ns| {
            ns.blobs
                .get(digest)
                .map(|b| {
                    (
                        b.data.clone(),
                        ContentInfo {
                            digest: digest.to_string(),
                            size: b.data.len() as i64,
                            labels: b.labels.clone(),
                        },
                    )
                })
                .ok_or_else(|| {
                    rpc(
                        method,
                        digest,
                        ErrorKind::NotFound,
                        &format!("content digest {digest}: not found"),
                    )
                })
        })
    }
}

/// An open ingest of the in-memory content store.
struct MemWriter {
    mem: MemContainerd,
    lease: LeaseId,
    data: Vec<u8>,
}

#[async_trait]
impl ContentWriter for MemWriter {
    async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.data.extend_from_slice(data);
        Ok(())
    }

    fn digest(&self) -> Option<Digest> {
        Some(Digest::of(&self.data))
    }

    async fn commit(
        self: Box<Self>,
        digest: &Digest,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        let MemWriter { mem, lease, data } = *self;
        mem.injected("Content.Write", digest.as_str())?;
        let actual = Digest::of(&data);
        if actual != *digest {
            return Err(rpc(
                "Content.Write",
                digest.as_str(),
                ErrorKind::FailedPrecondition,
                &format!("unexpected commit digest {actual}, expected {digest}"),
            ));
        }
        mem.with_ns(|ns| {
            ns.lease_mut("Content.Write", digest.as_str(), &lease)?
                .content
                .insert(digest.to_string());
            let blob = ns.blobs.entry(digest.to_string()).or_insert_with(|| Blob {
                data: Arc::new(data),
                labels: HashMap::new(),
            });
            merge_labels(&mut blob.labels, labels);
            Ok(())
        })
    }
}

#[async_trait]
impl Content for MemContainerd {
    async fn info(&self, digest: &str) -> Result<ContentInfo> {
        Ok(self.blob("Content.Info", digest)?.1)
    }

    async fn read(&self, digest: &str) -> Result<Vec<u8>> {
        Ok(self.blob("Content.Read", digest)?.0.as_ref().clone())
    }

    async fn read_stream(&self, digest: &str) -> Result<mpsc::Receiver<Result<Vec<u8>>>> {
        let (data, _) = self.blob("Content.Read", digest)?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            for chunk in data.chunks(CHUNK) {
                if tx.send(Ok(chunk.to_vec())).await.is_err() {
                    return;
                }
            }
        });
        Ok(rx)
    }

    async fn writer(&self, lease: &LeaseId) -> Result<Box<dyn ContentWriter>> {
        self.with_ns(|ns| {
            ns.lease_mut("Content.Write", lease.as_str(), lease)
                .map(|_| ())
        })?;
        Ok(Box::new(MemWriter {
            mem: self.clone(),
            lease: lease.clone(),
            data: Vec::new(),
        }))
    }

    async fn hold(&self, digest: &str, lease: &LeaseId) -> Result<()> {
        self.injected("Leases.AddResource", digest)?;
        self.with_ns(|ns| {
            if !ns.blobs.contains_key(digest) {
                return Err(rpc(
                    "Content.Info",
                    digest,
                    ErrorKind::NotFound,
                    &format!("content digest {digest}: not found"),
                ));
            }
            ns.lease_mut("Leases.AddResource", lease.as_str(), lease)?
                .content
                .insert(digest.to_string());
            Ok(())
        })
    }

    async fn set_labels(&self, digest: &str, labels: HashMap<String, String>) -> Result<()> {
        self.injected("Content.Update", digest)?;
        self.with_ns(|ns| match ns.blobs.get_mut(digest) {
            Some(b) => {
                merge_labels(&mut b.labels, labels);
                Ok(())
            }
            None => Err(rpc(
                "Content.Update",
                digest,
                ErrorKind::NotFound,
                &format!("content digest {digest}: not found"),
            )),
        })
    }
}
