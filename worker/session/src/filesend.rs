//! `FileSend.DiffCopy`: the daemon pushes exporter output to the client
//! (buildkit-protocol.md §6).
//!
//! tar, oci and docker exporters send `BytesMessage` chunks; the local
//! exporter sends fsutil packets on the same method, the daemon being the
//! sender. The method is declared with `BytesMessage`, so the daemon side
//! of the local export uses a prost codec for `Packet` on the same path,
//! and the client side ([`FileSendReceiver`]) takes raw frames and decodes
//! them as whichever kind its target for the exporter expects.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use kiln_proto::filesync::file_send_client::FileSendClient;
use kiln_proto::filesync::BytesMessage;
use kiln_proto::fsutil::Packet;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue, MetadataMap};
use tonic::server::{NamedService, StreamingService};
use tonic::transport::Channel;
use tonic::{Status, Streaming};

use crate::codec::RawCodec;
use crate::error::{Result, SessionError};
use crate::fsutil::{receive_dir, send_dir, ReceiveOptions, SendOptions};
use crate::respond::{spawn_response, status_of};

/// Metadata with the index of the exporter in `SolveRequest.Exporters`.
pub const EXPORTER_ID_KEY: &str = "buildkit-attachable-exporter-id";
/// Prefix of the metadata carrying exporter response entries.
pub const EXPORTER_MD_PREFIX: &str = "exporter-md-";
/// The full method path the daemon calls.
pub const DIFF_COPY_METHOD: &str = "/moby.filesync.v1.FileSend/DiffCopy";

/// Upstream's chunk size for byte exports.
const BYTES_CHUNK: usize = 3 << 20;

/// The largest message either side accepts (upstream's session limit).
const MAX_MESSAGE: usize = 16 << 20;

/// Metadata identifying the exporter and carrying its response entries.
fn export_metadata(
    md: &mut MetadataMap,
    exporter_id: Option<usize>,
    entries: &[(String, String)],
) -> Result<()> {
    let mut put = |key: String, value: &str| -> Result<()> {
        let bad = || SessionError::Metadata { key: key.clone() };
        let k: AsciiMetadataKey = key.to_ascii_lowercase().parse().map_err(|_| bad())?;
        let v: AsciiMetadataValue = value.parse().map_err(|_| bad())?;
        md.insert(k, v);
        Ok(())
    };
    if let Some(id) = exporter_id {
        put(EXPORTER_ID_KEY.to_string(), &id.to_string())?;
    }
    for (k, v) in entries {
        put(format!("{EXPORTER_MD_PREFIX}{k}"), v)?;
    }
    Ok(())
}

/// The daemon side for tar, oci and docker exporters: streams `data` to the
/// client in chunks of at most 3 MiB, half-closes, and waits for the client
/// to end the call. `AlreadyExists` from the client (target exists, skip)
/// counts as success.
pub async fn send_bytes<R>(
    channel: Channel,
    exporter_id: Option<usize>,
    md: Vec<(String, String)>,
    mut data: R,
) -> Result<()>
where
    R: AsyncRead + Unpin,
{
    let mut client = FileSendClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let (tx, rx) = mpsc::channel::<BytesMessage>(2);
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    export_metadata(req.metadata_mut(), exporter_id, &md)?;
    let call = async move {
        let mut resp = client.diff_copy(req).await?.into_inner();
        while resp.message().await?.is_some() {}
        Ok::<(), Status>(())
    };
    let pump = async move {
        let mut buf = vec![0u8; BYTES_CHUNK];
        loop {
            let mut n = 0;
            while n < buf.len() {
                let read = data.read(&mut buf[n..]).await?;
                if read == 0 {
                    break;
                }
                n += read;
            }
            if n == 0 {
                // Dropping `tx` half-closes the request stream.
                return Ok::<(), std::io::Error>(());
            }
            let last = n < buf.len();
            let msg = BytesMessage {
                data: buf[..n].to_vec(),
            };
            if tx.send(msg).await.is_err() || last {
                return Ok(());
            }
        }
    };
    tokio::pin!(call, pump);
    let mut pumped = false;
    loop {
        tokio::select! {
            res = &mut pump, if !pumped => {
                pumped = true;
                res.map_err(|source| SessionError::Read { source })?;
            }
            res = &mut call => {
                return match res {
                    Ok(()) => Ok(()),
                    Err(status) if status.code() == tonic::Code::AlreadyExists => Ok(()),
                    Err(status) => Err(SessionError::Call {
                        method: DIFF_COPY_METHOD,
                        status,
                    }),
                };
            }
        }
    }
}

/// The daemon side for the local exporter: sends the tree under `root` as
/// the fsutil sender and waits for the client to end the call.
pub async fn send_local(
    channel: Channel,
    exporter_id: Option<usize>,
    root: &Path,
    opts: &SendOptions,
) -> Result<()> {
    let call_err = |status| SessionError::Call {
        method: DIFF_COPY_METHOD,
        status,
    };
    let mut grpc = tonic::client::Grpc::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    grpc.ready()
        .await
        .map_err(|e| call_err(Status::unavailable(e.to_string())))?;
    let (tx, rx) = mpsc::channel::<Packet>(64);
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    export_metadata(req.metadata_mut(), exporter_id, &[])?;
    let codec = tonic_prost::ProstCodec::<Packet, Packet>::default();
    let path = http::uri::PathAndQuery::from_static(DIFF_COPY_METHOD);
    // The call resolves only when the client sends response headers, and a
    // Go gRPC server sends them with its first message, which its fsutil
    // receiver sends only after our STATs: so the call runs beside the
    // sender, forwarding what the client says through a channel.
    let (in_tx, in_rx) = mpsc::channel::<std::result::Result<Packet, Status>>(64);
    let call = tokio::spawn(async move {
        let mut inbound = match grpc.streaming(req, path, codec).await {
            Ok(r) => r.into_inner(),
            Err(s) => {
                let _ = in_tx.send(Err(s)).await;
                return;
            }
        };
        loop {
            match inbound.message().await {
                Ok(Some(p)) => {
                    if in_tx.send(Ok(p)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(s) => {
                    let _ = in_tx.send(Err(s)).await;
                    return;
                }
            }
        }
    });
    let mut inbound = ReceiverStream::new(in_rx);
    let sent = send_dir(root, opts, &mut inbound, tx)
        .await
        .map_err(|source| SessionError::Transfer {
            name: root.display().to_string(),
            source,
        });
    if let Err(e) = sent {
        call.abort();
        return Err(e);
    }
    while let Some(m) = inbound.next().await {
        m.map_err(call_err)?;
    }
    let _ = call.await;
    Ok(())
}

/// Where the client puts the output of one exporter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileSendTarget {
    /// Bytes (tar, oci, docker) written to a file, or to stdout for `None`.
    Bytes { dest: Option<PathBuf> },
    /// A tree (local exporter) received into a directory, merged with what
    /// is there and owned by the client's own uid and gid.
    Local { dir: PathBuf },
}

/// The client's FileSend service. Targets are indexed by exporter id
/// (metadata `buildkit-attachable-exporter-id`); a daemon that sends no id
/// gets the only target.
#[derive(Clone, Debug)]
pub struct FileSendReceiver {
    targets: Arc<Vec<FileSendTarget>>,
}

impl FileSendReceiver {
    /// The methods to announce for this service.
    pub const METHODS: &'static [&'static str] = &["DiffCopy"];

    /// A receiver with one target per exporter, in exporter order.
    pub fn new(targets: Vec<FileSendTarget>) -> FileSendReceiver {
        FileSendReceiver {
            targets: Arc::new(targets),
        }
    }

    /// A receiver writing bytes to `dest` (`None` = stdout).
    pub fn bytes(dest: Option<PathBuf>) -> FileSendReceiver {
        FileSendReceiver::new(vec![FileSendTarget::Bytes { dest }])
    }

    /// A receiver for a local export into `dir`.
    pub fn local(dir: PathBuf) -> FileSendReceiver {
        FileSendReceiver::new(vec![FileSendTarget::Local { dir }])
    }

    fn target(&self, md: &MetadataMap) -> Result<FileSendTarget, Status> {
        let id = match md.get(EXPORTER_ID_KEY) {
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|s| s.parse::<usize>().ok())
                    .ok_or_else(|| Status::invalid_argument("invalid exporter id"))?,
            ),
            None if self.targets.len() == 1 => Some(0),
            None => None,
        };
        id.and_then(|i| self.targets.get(i).cloned())
            .ok_or_else(|| {
                Status::invalid_argument(format!("no export target for exporter {id:?}"))
            })
    }

    /// Starts receiving one call; the response stream carries nothing but
    /// the final status.
    fn handle(
        &self,
        request: tonic::Request<Streaming<Bytes>>,
    ) -> Result<tonic::Response<ReceiverStream<Result<Bytes, Status>>>, Status> {
        let target = self.target(request.metadata())?;
        let inbound = request.into_inner();
        let stream = match target {
            FileSendTarget::Bytes { dest } => {
                spawn_response(move |_tx| receive_bytes(dest, inbound))
            }
            FileSendTarget::Local { dir } => {
                spawn_response(move |tx| receive_local(dir, inbound, tx))
            }
        };
        Ok(tonic::Response::new(stream))
    }
}

/// Writes the `data` of every BytesMessage to `dest` or stdout.
async fn receive_bytes(dest: Option<PathBuf>, mut inbound: Streaming<Bytes>) -> Result<(), Status> {
    let io = |e: std::io::Error| Status::internal(format!("writing export output: {e}"));
    let mut out: Box<dyn AsyncWrite + Unpin + Send> = match &dest {
        Some(path) => Box::new(tokio::fs::File::create(path).await.map_err(io)?),
        None => Box::new(tokio::io::stdout()),
    };
    while let Some(frame) = inbound.message().await? {
        let msg = BytesMessage::decode(frame)
            .map_err(|e| Status::invalid_argument(format!("invalid BytesMessage: {e}")))?;
        out.write_all(&msg.data).await.map_err(io)?;
    }
    out.flush().await.map_err(io)?;
    Ok(())
}

/// Runs the fsutil receiver over raw frames, into `dir` as the client's own
/// uid and gid.
async fn receive_local(
    dir: PathBuf,
    inbound: Streaming<Bytes>,
    tx: mpsc::Sender<Bytes>,
) -> Result<(), Status> {
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| Status::internal(format!("creating {}: {e}", dir.display())))?;
    let packets = inbound.map(|frame| {
        frame.and_then(|b| {
            Packet::decode(b).map_err(|e| Status::invalid_argument(format!("invalid packet: {e}")))
        })
    });
    let (ptx, mut prx) = mpsc::channel::<Packet>(64);
    let encode = async move {
        while let Some(p) = prx.recv().await {
            if tx.send(Bytes::from(p.encode_to_vec())).await.is_err() {
                break;
            }
        }
    };
    let owner = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    let opts = ReceiveOptions {
        chown: Some(owner),
        ..ReceiveOptions::default()
    };
    let (res, ()) = tokio::join!(receive_dir(&dir, packets, ptx, opts), encode);
    res.map(|_| ()).map_err(|e| status_of(&e))
}

/// The raw-codec DiffCopy handler.
struct RawDiffCopy(FileSendReceiver);

impl StreamingService<Bytes> for RawDiffCopy {
    type Response = Bytes;
    type ResponseStream = ReceiverStream<Result<Bytes, Status>>;
    type Future = std::future::Ready<Result<tonic::Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, request: tonic::Request<Streaming<Bytes>>) -> Self::Future {
        std::future::ready(self.0.handle(request))
    }
}

impl NamedService for FileSendReceiver {
    const NAME: &'static str = "moby.filesync.v1.FileSend";
}

impl tower::Service<http::Request<Body>> for FileSendReceiver {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future =
        Pin<Box<dyn std::future::Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            if req.uri().path() != DIFF_COPY_METHOD {
                return Ok(Status::unimplemented(req.uri().path().to_string()).into_http());
            }
            let mut grpc = tonic::server::Grpc::new(RawCodec)
                .apply_max_message_size_config(Some(MAX_MESSAGE), Some(MAX_MESSAGE));
            Ok(grpc.streaming(RawDiffCopy(this), req).await)
        })
    }
}
