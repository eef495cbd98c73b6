//! containerd's `Content` service on kilnd's own socket, over the build
//! history's blobs, as buildkitd serves its content store: what a record
//! names by descriptor (`logs`, the progress; `externalError`, a failed
//! build's whole error) is read by digest, as `buildx history inspect`
//! reads a failed build's error with its Dockerfile lines. Read only
//! (`Info`, `Read`); each client sees its tenant's records only.

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

impl HistoryContent {
    /// The blob `digest` of one of the caller's tenant's records.
    async fn blob<T>(&self, request: &Request<T>, digest: &str) -> Result<Vec<u8>, Status> {
        let tenant = self.0.tenant(request).await?;
        let history = tenant.history.clone();
        let d = digest.to_string();
        tokio::task::spawn_blocking(move || history.blob(&d))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| e.status())?
            .ok_or_else(|| Status::not_found(format!("content {digest}: not found")))
    }
}

#[tonic::async_trait]
impl Content for HistoryContent {
    async fn info(&self, request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let digest = request.get_ref().digest.clone();
        let blob = self.blob(&request, &digest).await?;
        Ok(Response::new(InfoResponse {
            info: Some(Info {
                digest,
                size: i64::try_from(blob.len()).unwrap_or(i64::MAX),
                ..Default::default()
            }),
        }))
    }

    async fn read(
        &self,
        request: Request<ReadContentRequest>,
    ) -> Result<Response<ReadStream>, Status> {
        let r = request.get_ref().clone();
        let blob = self.blob(&request, &r.digest).await?;
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
