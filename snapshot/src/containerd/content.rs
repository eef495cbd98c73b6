//! The content store: reading blobs, writing them with the Write protocol
//! (STAT, WRITE at offsets, COMMIT with offset = bytes written), labels.

use super::{Containerd, LeaseId};
use crate::error::{Result, SnapshotError};
use containerd_client::services::v1::content_client::ContentClient;
use containerd_client::services::v1::{
    Info, InfoRequest, ReadContentRequest, UpdateRequest, WriteAction, WriteContentRequest,
};
use containerd_client::tonic::transport::Channel;
use kiln_types::Digest;
use std::collections::HashMap;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Chunk size of content writes (the server accepts up to 16 MiB).
const CHUNK: usize = 1 << 20;

/// What the content store knows about a blob.
#[derive(Clone, Debug)]
pub struct ContentInfo {
    pub digest: String,
    pub size: i64,
    pub labels: HashMap<String, String>,
}

impl ContentInfo {
    /// Whether the blob carries every one of `labels` with its value
    /// (other labels may be there too).
    pub fn has_labels(&self, labels: &HashMap<String, String>) -> bool {
        labels.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

/// `n` random bytes as hex, for unique refs and IDs.
pub(crate) fn random_hex(n: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; n];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

impl Containerd {
    fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel())
            .max_decoding_message_size(super::MAX_MESSAGE)
            .max_encoding_message_size(super::MAX_MESSAGE)
    }

    /// Stat of a blob; `NotFound` if absent from this namespace.
    pub async fn content_info(&self, digest: &str) -> Result<ContentInfo> {
        let r = self
            .content()
            .info(self.request(
                InfoRequest {
                    digest: digest.to_string(),
                },
                None,
            ))
            .await
            .map_err(|s| self.status_error("Content.Info", digest, s))?;
        let info = r.into_inner().info.unwrap_or_default();
        Ok(ContentInfo {
            digest: info.digest,
            size: info.size,
            labels: info.labels,
        })
    }

    /// Reads a whole blob (for configs, manifests, indexes) and checks its
    /// digest.
    pub async fn content_read(&self, digest: &str) -> Result<Vec<u8>> {
        let mut stream = self
            .content()
            .read(self.request(
                ReadContentRequest {
                    digest: digest.to_string(),
                    offset: 0,
                    size: 0,
                },
                None,
            ))
            .await
            .map_err(|s| self.status_error("Content.Read", digest, s))?
            .into_inner();
        let mut out = Vec::new();
        while let Some(chunk) = stream
            .message()
            .await
            .map_err(|s| self.status_error("Content.Read", digest, s))?
        {
            out.extend_from_slice(&chunk.data);
        }
        let got = Digest::of(&out);
        if got.as_str() != digest {
            return Err(SnapshotError::InvalidBlob {
                digest: digest.to_string(),
                reason: format!("read back as {got}"),
            });
        }
        Ok(out)
    }

    /// Streams a blob's bytes in chunks (for layers, which must not be read
    /// into memory whole). A read error ends the stream with `Err`.
    pub async fn content_read_stream(
        &self,
        digest: &str,
    ) -> Result<mpsc::Receiver<Result<Vec<u8>>>> {
        let mut stream = self
            .content()
            .read(self.request(
                ReadContentRequest {
                    digest: digest.to_string(),
                    offset: 0,
                    size: 0,
                },
                None,
            ))
            .await
            .map_err(|s| self.status_error("Content.Read", digest, s))?
            .into_inner();
        let (tx, rx) = mpsc::channel(4);
        let this = self.clone();
        let digest = digest.to_string();
        tokio::spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(chunk)) => {
                        if tx.send(Ok(chunk.data)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(s) => {
                        let _ = tx
                            .send(Err(this.status_error("Content.Read", &digest, s)))
                            .await;
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }

    /// Sets labels on an existing blob (only the given keys change).
    pub async fn content_set_labels(
        &self,
        digest: &str,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        let paths = labels.keys().map(|k| format!("labels.{k}")).collect();
        self.content()
            .update(self.request(
                UpdateRequest {
                    info: Some(Info {
                        digest: digest.to_string(),
                        labels,
                        ..Default::default()
                    }),
                    update_mask: Some(prost_types::FieldMask { paths }),
                },
                None,
            ))
            .await
            .map_err(|s| self.status_error("Content.Update", digest, s))?;
        Ok(())
    }

    /// Writes a small blob in one message under `lease`, with `labels` set at
    /// commit (the race-free way to add GC references). An existing blob
    /// gets the labels added. Returns the digest.
    pub async fn content_write_small(
        &self,
        data: &[u8],
        labels: HashMap<String, String>,
        lease: &LeaseId,
    ) -> Result<Digest> {
        let digest = Digest::of(data);
        let total = data.len() as i64;
        let reqs = vec![
            WriteContentRequest {
                action: WriteAction::Stat as i32,
                r#ref: format!("kiln-{}", digest.hex()),
                total,
                expected: digest.to_string(),
                ..Default::default()
            },
            WriteContentRequest {
                action: WriteAction::Commit as i32,
                r#ref: format!("kiln-{}", digest.hex()),
                total,
                expected: digest.to_string(),
                offset: 0,
                data: data.to_vec(),
                labels: labels.clone(),
            },
        ];
        let outcome = self.write_requests(reqs, digest.as_str(), lease).await;
        match outcome {
            Ok(()) => Ok(digest),
            Err(e) if e.is_already_exists() => {
                // Another writer (or an earlier build) committed it: make
                // sure this lease holds it and the labels are there.
                self.lease_add_resource(lease, "content", digest.as_str())
                    .await?;
                if !labels.is_empty() {
                    self.content_set_labels(digest.as_str(), labels).await?;
                }
                Ok(digest)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends a fixed list of write requests in lockstep.
    async fn write_requests(
        &self,
        reqs: Vec<WriteContentRequest>,
        object: &str,
        lease: &LeaseId,
    ) -> Result<()> {
        let (tx, rx) = mpsc::channel(2);
        let mut client = self.content();
        let call = client.write(self.request(ReceiverStream::new(rx), Some(lease)));
        let mut reqs = reqs.into_iter();
        let first = reqs.next();
        if let Some(f) = first {
            // The channel has room for the first message, so the call can
            // start (and send it) before any response is awaited.
            let _ = tx.send(f).await;
        }
        let mut responses = call
            .await
            .map_err(|s| self.status_error("Content.Write", object, s))?
            .into_inner();
        let _ = responses
            .message()
            .await
            .map_err(|s| self.status_error("Content.Write", object, s))?;
        for r in reqs {
            if tx.send(r).await.is_err() {
                break;
            }
            let _ = responses
                .message()
                .await
                .map_err(|s| self.status_error("Content.Write", object, s))?;
        }
        drop(tx);
        // Drain the duplicate final response the server may send.
        while let Ok(Some(_)) = responses.message().await {}
        Ok(())
    }

    /// Starts a streaming blob write under `lease`. Feed it bytes, then
    /// [`BlobWriter::commit`] with the digest and size computed on the way.
    pub async fn content_writer(&self, lease: &LeaseId) -> Result<BlobWriter> {
        let r#ref = format!("kiln-ingest-{}", random_hex(12));
        let (tx, rx) = mpsc::channel::<WriteContentRequest>(4);
        let mut client = self.content();
        tx.send(WriteContentRequest {
            action: WriteAction::Stat as i32,
            r#ref: r#ref.clone(),
            ..Default::default()
        })
        .await
        .map_err(|_| SnapshotError::Unavailable {
            address: self.config.address.display().to_string(),
            method: "Content.Write",
            message: "request stream closed".into(),
        })?;
        let responses = client
            .write(self.request(ReceiverStream::new(rx), Some(lease)))
            .await
            .map_err(|s| self.status_error("Content.Write", &r#ref, s))?
            .into_inner();
        let mut w = BlobWriter {
            ctrd: self.clone(),
            lease: lease.clone(),
            r#ref,
            tx,
            responses,
            offset: 0,
            digest: None,
        };
        w.next_response().await?;
        Ok(w)
    }
}

/// An open `Content.Write` stream.
pub struct BlobWriter {
    ctrd: Containerd,
    lease: LeaseId,
    r#ref: String,
    tx: mpsc::Sender<WriteContentRequest>,
    responses:
        containerd_client::tonic::Streaming<containerd_client::services::v1::WriteContentResponse>,
    offset: i64,
    /// containerd's running digest of what it received, from its last
    /// answer.
    digest: Option<Digest>,
}

impl std::fmt::Debug for BlobWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobWriter")
            .field("lease", &self.lease)
            .field("ref", &self.r#ref)
            .field("offset", &self.offset)
            .finish_non_exhaustive()
    }
}

impl BlobWriter {
    async fn next_response(&mut self) -> Result<()> {
        match self.responses.message().await {
            Ok(Some(r)) => {
                self.digest = Digest::parse(&r.digest);
                Ok(())
            }
            Ok(None) => Err(self.ctrd.status_error(
                "Content.Write",
                &self.r#ref,
                containerd_client::tonic::Status::aborted("write stream ended early"),
            )),
            Err(s) => Err(self.ctrd.status_error("Content.Write", &self.r#ref, s)),
        }
    }

    async fn send(&mut self, req: WriteContentRequest) -> Result<()> {
        if self.tx.send(req).await.is_err() {
            // The server closed the stream; its status explains why.
            return match self.responses.message().await {
                Err(s) => Err(self.ctrd.status_error("Content.Write", &self.r#ref, s)),
                Ok(_) => Err(self.ctrd.status_error(
                    "Content.Write",
                    &self.r#ref,
                    containerd_client::tonic::Status::aborted("write stream closed"),
                )),
            };
        }
        self.next_response().await
    }

    /// containerd's digest of every byte written so far (each answer
    /// carries its running digest); `None` if it sent none.
    pub fn digest(&self) -> Option<Digest> {
        self.digest.clone()
    }

    /// Appends bytes (split into 1 MiB messages).
    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        for chunk in data.chunks(CHUNK) {
            self.write_message(chunk.to_vec()).await?;
        }
        Ok(())
    }

    /// Appends bytes, sending `data` itself as the message when it fits
    /// in one (1 MiB), without a copy.
    pub async fn write_owned(&mut self, data: Vec<u8>) -> Result<()> {
        if data.len() > CHUNK {
            return self.write(&data).await;
        }
        self.write_message(data).await
    }

    async fn write_message(&mut self, data: Vec<u8>) -> Result<()> {
        let len = data.len() as i64;
        let req = WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: self.r#ref.clone(),
            offset: self.offset,
            data,
            ..Default::default()
        };
        self.send(req).await?;
        self.offset += len;
        Ok(())
    }

    /// Commits the blob with its digest, size and labels. If the blob
    /// already exists, the lease is pointed at it and the labels added.
    pub async fn commit(mut self, digest: &Digest, labels: HashMap<String, String>) -> Result<()> {
        let req = WriteContentRequest {
            action: WriteAction::Commit as i32,
            r#ref: self.r#ref.clone(),
            offset: self.offset,
            total: self.offset,
            expected: digest.to_string(),
            labels: labels.clone(),
            ..Default::default()
        };
        match self.send(req).await {
            Ok(()) => {
                while let Ok(Some(_)) = self.responses.message().await {}
                Ok(())
            }
            Err(e) if e.is_already_exists() => {
                self.ctrd
                    .lease_add_resource(&self.lease, "content", digest.as_str())
                    .await?;
                if labels.is_empty() {
                    // An empty update mask would replace every label; still
                    // say NotFound when the blob was collected before the
                    // lease held it.
                    return self.ctrd.content_info(digest.as_str()).await.map(|_| ());
                }
                self.ctrd.content_set_labels(digest.as_str(), labels).await
            }
            Err(e) => Err(e),
        }
    }
}
