//! A client session as buildx and buildctl attach one over
//! `Control.Session`: it serves directories over FileSync by name, for the
//! tests that drive kilnd's gateway themselves, and content stores over
//! containerd's content API (`local:DIR` of a `type=local` cache, read and
//! written as buildctl's `contentlocal` store serves it).

use kiln_proto::content::content_server::{Content, ContentServer};
use kiln_proto::content::{
    Info, InfoRequest, InfoResponse, ReadContentRequest, ReadContentResponse, WriteAction,
    WriteContentRequest, WriteContentResponse,
};
use kiln_proto::control::control_client::ControlClient;
use kiln_session::content::{layout_blob_path, STORE_HEADER};
use kiln_session::filesync::FileSyncServerImpl;
use kiln_session::hijack::{client_side, serve_session, SessionServices};
use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

/// An attached session; closed when dropped.
#[derive(Debug)]
pub struct ClientSession {
    pub id: String,
    done: CancellationToken,
}

impl ClientSession {
    /// Attaches session `id` over `channel`, serving each `(name, dir)`.
    pub async fn open(channel: Channel, id: &str, dirs: &[(&str, PathBuf)]) -> ClientSession {
        ClientSession::with_stores(channel, id, dirs, &[]).await
    }

    /// As [`ClientSession::open`], also serving each `(store id, dir)` as
    /// a content store (OCI layout blobs, writable).
    pub async fn with_stores(
        channel: Channel,
        id: &str,
        dirs: &[(&str, PathBuf)],
        stores: &[(String, PathBuf)],
    ) -> ClientSession {
        let mut services = SessionServices::new();
        if !stores.is_empty() {
            services.add(
                ContentServer::new(DirStores {
                    stores: stores.iter().cloned().collect(),
                }),
                &["Info", "Read", "Status", "Write"],
            );
        }
        services.add(
            FileSyncServerImpl::new(
                dirs.iter()
                    .map(|(n, d)| (n.to_string(), d.clone()))
                    .collect::<HashMap<_, _>>(),
            )
            .into_service(),
            FileSyncServerImpl::METHODS,
        );
        let (side, requests) = client_side();
        let req = kiln_session::hijack::session_request(id, "", &services, requests)
            .expect("session request");
        let responses = ControlClient::new(channel)
            .session(req)
            .await
            .expect("session")
            .into_inner();
        let done = CancellationToken::new();
        tokio::spawn(serve_session(
            side.attach(responses),
            services,
            done.clone(),
        ));
        ClientSession {
            id: id.to_string(),
            done,
        }
    }

    /// A session serving `dir` as both `context` and `dockerfile`.
    pub async fn of_context(channel: Channel, id: &str, dir: &std::path::Path) -> ClientSession {
        ClientSession::open(
            channel,
            id,
            &[
                ("context", dir.to_path_buf()),
                ("dockerfile", dir.to_path_buf()),
            ],
        )
        .await
    }
}

impl Drop for ClientSession {
    fn drop(&mut self) {
        self.done.cancel();
    }
}

/// Content stores over OCI layout directories: blobs by digest, written
/// in memory and committed (digest checked) by rename, as containerd's
/// content service answers (one response per write request).
#[derive(Clone, Debug)]
struct DirStores {
    stores: HashMap<String, PathBuf>,
}

impl DirStores {
    fn blob<T>(&self, r: &Request<T>, digest: &str) -> Result<PathBuf, Status> {
        let id = r
            .metadata()
            .get(STORE_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Status::invalid_argument("no store id"))?;
        let dir = self
            .stores
            .get(id)
            .ok_or_else(|| Status::not_found(format!("unknown store {id}")))?;
        layout_blob_path(dir, digest).ok_or_else(|| Status::invalid_argument("bad digest"))
    }
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl Content for DirStores {
    async fn info(&self, r: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let digest = r.get_ref().digest.clone();
        let meta = std::fs::metadata(self.blob(&r, &digest)?)
            .map_err(|_| Status::not_found(format!("content {digest}: not found")))?;
        Ok(Response::new(InfoResponse {
            info: Some(Info {
                digest,
                size: meta.len() as i64,
                ..Default::default()
            }),
        }))
    }

    async fn read(
        &self,
        r: Request<ReadContentRequest>,
    ) -> Result<Response<Boxed<ReadContentResponse>>, Status> {
        let digest = r.get_ref().digest.clone();
        let data = std::fs::read(self.blob(&r, &digest)?)
            .map_err(|_| Status::not_found(format!("content {digest}: not found")))?;
        let chunks: Vec<Result<ReadContentResponse, Status>> = data
            .chunks(1 << 20)
            .enumerate()
            .map(|(i, c)| {
                Ok(ReadContentResponse {
                    offset: (i << 20) as i64,
                    data: c.to_vec(),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }

    async fn write(
        &self,
        r: Request<Streaming<WriteContentRequest>>,
    ) -> Result<Response<Boxed<WriteContentResponse>>, Status> {
        let probe = self.blob(
            &r,
            "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        )?;
        let dir = probe.parent().expect("blobs/sha256").to_path_buf();
        let mut requests = r.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut data = Vec::new();
            while let Some(Ok(req)) = tokio_stream::StreamExt::next(&mut requests).await {
                data.extend_from_slice(&req.data);
                let mut answer = WriteContentResponse {
                    action: req.action,
                    offset: data.len() as i64,
                    ..Default::default()
                };
                if req.action == WriteAction::Commit as i32 {
                    let got = kiln_solver::Digest::of(&data);
                    if got.as_str() != req.expected {
                        let _ = tx
                            .send(Err(Status::failed_precondition(format!(
                                "unexpected commit digest {got}, expected {}",
                                req.expected
                            ))))
                            .await;
                        return;
                    }
                    std::fs::create_dir_all(&dir).expect("mkdir blobs");
                    std::fs::write(dir.join(got.hex()), &data).expect("write blob");
                    answer.digest = got.to_string();
                    let _ = tx.send(Ok(answer)).await;
                    return;
                }
                if tx.send(Ok(answer)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
