//! `moby.upload.v1.Upload`: bytes the client serves once for an
//! `http://buildkit-session/<id>` URL (buildx sends a tar context read
//! from stdin this way). The daemon names the upload in the call's
//! metadata (`urlpath`, `urlhost`, as BuildKit does) and reads the
//! stream of chunks the client answers with; the client forgets an
//! upload once it is pulled.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kiln_proto::upload::upload_client::UploadClient;
use kiln_proto::upload::upload_server::{Upload, UploadServer};
use kiln_proto::upload::BytesMessage;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{Result, SessionError};

/// The full method path the daemon calls.
pub const PULL_METHOD: &str = "/moby.upload.v1.Upload/Pull";

const PATH_KEY: &str = "urlpath";
const HOST_KEY: &str = "urlhost";

/// BuildKit's largest chunk of an upload.
const MAX_CHUNK: usize = 3 * 1024 * 1024;

/// One upload's bytes.
pub type UploadBody = Box<dyn AsyncRead + Send + Unpin>;

/// The client's uploads, each served to the first pull of its URL.
#[derive(Clone, Default)]
pub struct UploadServerImpl {
    uploads: Arc<Mutex<HashMap<String, UploadBody>>>,
}

impl std::fmt::Debug for UploadServerImpl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadServerImpl").finish_non_exhaustive()
    }
}

impl UploadServerImpl {
    pub const METHODS: &'static [&'static str] = &["Pull"];

    pub fn new() -> UploadServerImpl {
        UploadServerImpl::default()
    }

    /// Offers `body` under a new id; the URL to name it by (the `context`
    /// frontend attribute, as buildx sets it).
    pub fn add(&self, body: UploadBody) -> std::io::Result<String> {
        let id = new_id()?;
        self.uploads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), body);
        Ok(format!("http://buildkit-session/{id}"))
    }

    /// The service to add to the session's services.
    pub fn into_service(self) -> UploadServer<UploadServerImpl> {
        UploadServer::new(self)
    }
}

/// A random upload id (BuildKit's are random too: the URL must not be
/// guessable or reused).
fn new_id() -> std::io::Result<String> {
    let mut bytes = [0u8; 16];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut bytes)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

type BoxStream<T> = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = std::result::Result<T, Status>> + Send + 'static>,
>;

#[tonic::async_trait]
impl Upload for UploadServerImpl {
    async fn pull(
        &self,
        request: Request<Streaming<BytesMessage>>,
    ) -> std::result::Result<Response<BoxStream<BytesMessage>>, Status> {
        let path = request
            .metadata()
            .get(PATH_KEY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        // The last path element names the upload, as in BuildKit.
        let id = path.rsplit('/').next().unwrap_or_default().to_string();
        let body = self
            .uploads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        let Some(mut body) = body else {
            return Err(Status::not_found(format!(
                "no http response from session for {id}"
            )));
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                // Read into spare capacity: no zeroing of 3 MiB per chunk.
                let mut data = Vec::with_capacity(MAX_CHUNK);
                match body.read_buf(&mut data).await {
                    Ok(0) => return,
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Err(Status::unavailable(e.to_string()))).await;
                        return;
                    }
                }
                if tx.send(Ok(BytesMessage { data })).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// The daemon side: the bytes of the upload `url` names, as they come.
pub async fn pull(channel: Channel, url: &str) -> Result<impl AsyncRead + Send + Unpin> {
    let (host, path) = url
        .strip_prefix("http://")
        .map(|rest| match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        })
        .unwrap_or(("", url));
    let mut req = Request::new(tokio_stream::empty::<BytesMessage>());
    for (key, value) in [(PATH_KEY, path), (HOST_KEY, host)] {
        let v: AsciiMetadataValue = value.parse().map_err(|_| SessionError::Metadata {
            key: key.to_string(),
        })?;
        req.metadata_mut().insert(key, v);
    }
    let inbound = UploadClient::new(channel)
        .pull(req)
        .await
        .map_err(|status| SessionError::Call {
            method: PULL_METHOD,
            status,
        })?
        .into_inner();
    use tokio_stream::StreamExt as _;
    let chunks = inbound.map(|m| {
        m.map(|m| bytes::Bytes::from(m.data))
            .map_err(|s| std::io::Error::other(s.message().to_string()))
    });
    Ok(tokio_util::io::StreamReader::new(chunks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hijack::{connect_session, loopback, serve_session, SessionServices};
    use tokio_util::sync::CancellationToken;

    #[tokio::test]
    async fn the_daemon_pulls_an_upload_once() {
        let (daemon, client) = loopback();
        let uploads = UploadServerImpl::new();
        // Larger than one chunk, so it arrives in several.
        let body: Vec<u8> = (0..(MAX_CHUNK + 1000)).map(|i| (i % 251) as u8).collect();
        let url = uploads
            .add(Box::new(std::io::Cursor::new(body.clone())))
            .expect("an id");
        assert!(url.starts_with("http://buildkit-session/"), "{url}");
        let mut services = SessionServices::new();
        services.add(uploads.into_service(), UploadServerImpl::METHODS);
        let cancel = CancellationToken::new();
        let served = tokio::spawn(serve_session(client, services, cancel.clone()));
        let channel = connect_session(daemon).await.expect("session connects");

        let mut got = Vec::new();
        pull(channel.clone(), &url)
            .await
            .expect("pulled")
            .read_to_end(&mut got)
            .await
            .expect("read");
        assert_eq!(got.len(), body.len());
        assert!(got == body, "the bytes differ");

        let again = match pull(channel, &url).await {
            Ok(mut r) => r
                .read_to_end(&mut Vec::new())
                .await
                .map(|_| ())
                .err()
                .map(|e| e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        let again = again.expect("a second pull fails");
        assert!(
            again.contains("no http response from session for"),
            "{again}"
        );
        cancel.cancel();
        let _ = served.await;
    }
}
