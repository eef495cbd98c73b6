//! containerd's `Content` service on kilnd's own socket, over the build
//! history's blobs, as buildkitd serves its content store: what a record
//! names by descriptor (`logs`, the progress; `externalError`, a failed
//! build's whole error) is read by digest, as `buildx history inspect`
//! reads a failed build's error with its Dockerfile lines, and so is what
//! a record's result reaches in the tenant's content store (the images the
//! exporters made: `crate::historyresults`), which `history inspect
//! attachment` and `history export` read. Read only (`Info`, `Read`);
//! each client sees its tenant's records only.

use crate::history::Named;
use crate::state::Daemon;
use kiln_proto::content::content_server::Content;
use kiln_proto::content::{
    Info, InfoRequest, InfoResponse, ReadContentRequest, ReadContentResponse,
};
use std::pin::Pin;
use std::sync::Arc;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// How many bytes one `Read` answer carries.
const CHUNK: usize = 1 << 20;

pub struct HistoryContent(pub Arc<Daemon>);

type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadContentResponse, Status>> + Send>>;

/// Where a served blob is.
enum Found {
    /// Beside a record, read whole.
    Blob(Vec<u8>),
    /// In the tenant's content store, reached from a record's result.
    Stored(Arc<crate::tenants::Tenant>, i64),
}

impl HistoryContent {
    /// The blob `digest` of one of the caller's tenant's records, or
    /// reached from one's result.
    async fn find<T>(&self, request: &Request<T>, digest: &str) -> Result<Found, Status> {
        let tenant = self.0.tenant(request).await?;
        let history = tenant.history.clone();
        let d = digest.to_string();
        let named = tokio::task::spawn_blocking(move || history.blob(&d))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| e.status())?;
        let not_found = || Status::not_found(format!("content {digest}: not found"));
        match named {
            Named::Blob(b) => Ok(Found::Blob(b)),
            Named::Results(results) => {
                let svc = tenant.engine.services();
                if !crate::historyresults::reachable(svc, &results, digest).await {
                    return Err(not_found());
                }
                let info = svc.content.info(digest).await.map_err(|e| {
                    if e.kind() == kiln_snapshot::ErrorKind::NotFound {
                        not_found()
                    } else {
                        Status::new(e.kind().code(), e.to_string())
                    }
                })?;
                Ok(Found::Stored(tenant.clone(), info.size))
            }
        }
    }
}

#[tonic::async_trait]
impl Content for HistoryContent {
    async fn info(&self, request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let digest = request.get_ref().digest.clone();
        let size = match self.find(&request, &digest).await? {
            Found::Blob(b) => i64::try_from(b.len()).unwrap_or(i64::MAX),
            Found::Stored(_, size) => size,
        };
        Ok(Response::new(InfoResponse {
            info: Some(Info {
                digest,
                size,
                ..Default::default()
            }),
        }))
    }

    async fn read(
        &self,
        request: Request<ReadContentRequest>,
    ) -> Result<Response<ReadStream>, Status> {
        let r = request.get_ref().clone();
        let blob = match self.find(&request, &r.digest).await? {
            Found::Blob(b) => b,
            Found::Stored(tenant, _) => return stored(&tenant, &r).await,
        };
        let start = usize::try_from(r.offset)
            .map_err(|_| Status::invalid_argument(format!("negative offset {}", r.offset)))?
            .min(blob.len());
        // As containerd: size 0 reads to the end.
        let end = match usize::try_from(r.size) {
            Ok(s) if s > 0 => start.saturating_add(s).min(blob.len()),
            _ => blob.len(),
        };
        let chunks: Vec<Result<ReadContentResponse, Status>> = blob[start..end]
            .chunks(CHUNK)
            .enumerate()
            .map(|(i, data)| {
                Ok(ReadContentResponse {
                    offset: i64::try_from(start + i * CHUNK).unwrap_or(i64::MAX),
                    data: data.to_vec(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }
}

/// A window of a stored blob (`offset`, `size` as containerd's `Read`),
/// streamed chunk by chunk as the content store gives it.
async fn stored(
    tenant: &crate::tenants::Tenant,
    r: &ReadContentRequest,
) -> Result<Response<ReadStream>, Status> {
    let mut chunks = tenant
        .engine
        .services()
        .content
        .read_stream(&r.digest)
        .await
        .map_err(|e| Status::new(e.kind().code(), e.to_string()))?;
    let start = u64::try_from(r.offset)
        .map_err(|_| Status::invalid_argument(format!("negative offset {}", r.offset)))?;
    // As containerd: size 0 reads to the end.
    let end = u64::try_from(r.size)
        .ok()
        .filter(|s| *s > 0)
        .map_or(u64::MAX, |s| start.saturating_add(s));
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let mut at = 0u64;
        while let Some(chunk) = chunks.recv().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx
                        .send(Err(Status::new(e.kind().code(), e.to_string())))
                        .await;
                    return;
                }
            };
            let len = chunk.len() as u64;
            let (from, to) = (start.max(at), end.min(at + len));
            if from < to {
                let data = chunk[(from - at) as usize..(to - at) as usize].to_vec();
                let offset = i64::try_from(from).unwrap_or(i64::MAX);
                if tx
                    .send(Ok(ReadContentResponse { offset, data }))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            at += len;
            if at >= end {
                return;
            }
        }
    });
    Ok(Response::new(Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    )))
}
