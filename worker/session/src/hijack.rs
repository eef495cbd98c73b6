//! The session byte stream and the HTTP/2 connections on it
//! (buildkit-protocol.md §4).
//!
//! `Control.Session` carries `BytesMessage{data}` in both directions; the
//! concatenated `data` fields form a duplex byte stream whose message
//! boundaries mean nothing. [`HijackedConn`] is that stream as tokio
//! `AsyncRead + AsyncWrite`; shutting down its write half ends the outbound
//! message stream (the gRPC half-close).
//!
//! Over the stream the client is the HTTP/2 server ([`serve_session`]) and the
//! daemon the HTTP/2 client ([`connect_session`]), with prior knowledge (no
//! `Upgrade`).

use std::collections::HashMap;
use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use kiln_proto::control::BytesMessage;
use kiln_proto::health::health_check_response::ServingStatus;
use kiln_proto::health::health_server::{Health, HealthServer};
use kiln_proto::health::{HealthCheckRequest, HealthCheckResponse};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::{CancellationToken, PollSender};
use tonic::body::Body;
use tonic::codegen::http::{Request, Response, Uri};
use tonic::server::NamedService;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;
use tower::util::BoxCloneSyncService;
use tower::{Service, ServiceExt};

use crate::error::{Result, SessionError};

/// The largest `data` field this side writes. The peer's default gRPC
/// receive limit is 4 MiB; HTTP/2 writes are far smaller in practice.
const MAX_CHUNK: usize = 1 << 20;

/// How many outbound messages may wait for the gRPC stream.
const OUTBOUND_DEPTH: usize = 16;

/// The HTTP/2 connection window of every connection a session's frames
/// cross: kilnd's listeners, kiln's connection to kilnd, and the
/// connection tunnelled in the session itself. hyper's defaults are 1 MiB
/// (server) and 5 MiB (client). Session traffic is mostly tiny frames (a
/// buildctl sends one fsutil packet per file of a context's listing, about
/// 30 bytes each, and on the outer connection each tunnelled frame is a
/// message of its own), and h2 ends a connection (GOAWAY
/// `ENHANCE_YOUR_CALM`, "too_many_data_frames") once the small frames it
/// holds unread cost more than half this window, about 230 bytes each.
/// A sender may have a whole stream window (2 MiB on the tunnelled
/// connection) in flight while kiln writes files: some 70,000 frames of a
/// 50,000-file listing, which needs more than 32 MiB. The window only
/// raises what may be in flight across a connection's streams; each
/// stream keeps its own window, and the outer frames are drained at once,
/// up to 16 MiB ([`HijackedConn::from_parts`]).
pub const CONNECTION_WINDOW: u32 = 64 << 20;

/// The inbound half: the `data` of each received message, in order, each
/// with its share of [`DRAIN_BYTES`].
type Inbound = mpsc::UnboundedReceiver<(Result<Bytes, Status>, OwnedSemaphorePermit)>;

/// How much of the peer's messages the drain of [`HijackedConn::from_parts`]
/// holds unread (each message counting [`DRAIN_MESSAGE_COST`] more than its
/// data) before it waits, and the outer connection's flow control pushes
/// back on the peer again.
const DRAIN_BYTES: usize = 16 << 20;

/// What one drained message counts for beyond its data.
const DRAIN_MESSAGE_COST: usize = 64;

/// The session byte stream tunnelled through `Control.Session`.
pub struct HijackedConn {
    inbound: Inbound,
    /// Received bytes not yet read.
    pending: Bytes,
    /// `pending`'s share of the drain, given back when the next message is
    /// taken.
    held: Option<OwnedSemaphorePermit>,
    eof: bool,
    outbound: PollSender<Bytes>,
    /// Set once the peer's side of the stream has ended.
    peer_closed: Arc<AtomicBool>,
    /// Whether that end means the peer is closing the connection, so that
    /// nothing more may be written to it (the daemon's end: a BuildKit
    /// client ends its side only in `Close`); otherwise it is a half
    /// close, as on a socket.
    closes_on_peer_end: bool,
}

impl std::fmt::Debug for HijackedConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HijackedConn")
            .field("pending", &self.pending.len())
            .field("eof", &self.eof)
            .finish_non_exhaustive()
    }
}

impl HijackedConn {
    /// A connection reading the `data` of `inbound` and writing chunks to
    /// `outbound`; dropping or shutting down the connection closes
    /// `outbound`.
    ///
    /// `inbound` is drained at once by a task of its own, whatever the
    /// reader is doing: the peer's HTTP/2 layer writes each frame of the
    /// tunnelled connection as a message of its own, mostly tiny (an
    /// fsutil listing is one per file), and the HTTP/2 connection they
    /// arrive on ends itself (GOAWAY `ENHANCE_YOUR_CALM`,
    /// "too_many_data_frames") once a few thousand small frames wait
    /// unread. What waits here instead is at most 16 MiB; past
    /// it the drain waits for the reader. Must be called within a tokio
    /// runtime.
    pub fn from_parts<S>(inbound: S, outbound: mpsc::Sender<Bytes>) -> HijackedConn
    where
        S: Stream<Item = Result<Bytes, Status>> + Send + 'static,
    {
        let (tx, rx) = mpsc::unbounded_channel();
        let budget = Arc::new(Semaphore::new(DRAIN_BYTES));
        let peer_closed = Arc::new(AtomicBool::new(false));
        let ended = peer_closed.clone();
        tokio::spawn(async move {
            let mut inbound = Box::pin(inbound);
            loop {
                let item = tokio::select! {
                    () = tx.closed() => return,
                    item = inbound.next() => item,
                };
                let Some(item) = item else {
                    ended.store(true, Ordering::Release);
                    return;
                };
                if item.is_err() {
                    ended.store(true, Ordering::Release);
                }
                let cost = item
                    .as_ref()
                    .map_or(0, Bytes::len)
                    .saturating_add(DRAIN_MESSAGE_COST)
                    .min(DRAIN_BYTES);
                let permit = tokio::select! {
                    () = tx.closed() => return,
                    p = budget.clone().acquire_many_owned(cost as u32) => match p {
                        Ok(p) => p,
                        Err(_) => return,
                    },
                };
                let failed = item.is_err();
                if tx.send((item, permit)).is_err() || failed {
                    return;
                }
            }
        });
        HijackedConn {
            inbound: rx,
            pending: Bytes::new(),
            held: None,
            eof: false,
            outbound: PollSender::new(outbound),
            peer_closed,
            closes_on_peer_end: false,
        }
    }
}

impl HijackedConn {
    /// A handle on what this end has written and the connection has not
    /// taken yet.
    pub fn outbound(&self) -> Outbound {
        Outbound(
            self.outbound
                .get_ref()
                .map(|tx| (tx.downgrade(), self.peer_closed.clone())),
        )
    }
}

impl AsyncRead for HijackedConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.inbound.poll_recv(cx)) {
                Some((Ok(data), permit)) => {
                    self.pending = data;
                    self.held = Some(permit);
                }
                Some((Err(status), _)) => {
                    self.eof = true;
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::ConnectionReset,
                        status,
                    )));
                }
                None => self.eof = true,
            }
        }
    }
}

impl AsyncWrite for HijackedConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let closed = || io::Error::new(io::ErrorKind::BrokenPipe, "session stream closed");
        // A peer that ended its side is closing the connection, and
        // BuildKit's clients append stale buffer bytes to whatever they
        // still receive then (grpchijack's `Close` drain), which their
        // HTTP/2 server reads as a bad frame ("http2: server connection
        // error ... PROTOCOL_ERROR" on the user's terminal): write nothing
        // more.
        if self.closes_on_peer_end && self.peer_closed.load(Ordering::Acquire) {
            return Poll::Ready(Err(closed()));
        }
        ready!(self.outbound.poll_reserve(cx)).map_err(|_| closed())?;
        let n = buf.len().min(MAX_CHUNK);
        self.outbound
            .send_item(Bytes::copy_from_slice(&buf[..n]))
            .map_err(|_| closed())?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.outbound.close();
        Poll::Ready(Ok(()))
    }
}

/// What one end of a session has written and the connection has not
/// taken yet ([`HijackedConn::outbound`]).
#[derive(Clone, Debug, Default)]
pub struct Outbound(Option<(mpsc::WeakSender<Bytes>, Arc<AtomicBool>)>);

impl Outbound {
    /// Waits, at most `within`, until what was written before the call
    /// has left the queue for the connection carrying the session (or
    /// the connection is gone).
    ///
    /// A BuildKit client reads its session and a call's answer on two
    /// streams of its connection, and closes the session as soon as the
    /// answer of a build arrives. What the session still had to read
    /// then goes through grpchijack's `Close`, which appends stale bytes
    /// of its buffer to it: the client's HTTP/2 server reads them as a
    /// bad frame and prints "http2: server connection error ...
    /// PROTOCOL_ERROR". Answering after this wait puts the session's
    /// last bytes on the wire first.
    pub async fn drained(&self, within: std::time::Duration) {
        let Some((weak, peer_closed)) = &self.0 else {
            return;
        };
        let deadline = tokio::time::Instant::now() + within;
        loop {
            // A client that ended its side reads nothing more.
            if peer_closed.load(Ordering::Acquire) {
                return;
            }
            let Some(tx) = weak.upgrade() else { return };
            if tx.capacity() == tx.max_capacity() {
                return;
            }
            drop(tx);
            if tokio::time::Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }
}

/// Maps received `BytesMessage`s to their data.
fn inbound_data<S>(inbound: S) -> impl Stream<Item = Result<Bytes, Status>> + Send + 'static
where
    S: Stream<Item = Result<BytesMessage, Status>> + Send + 'static,
{
    inbound.map(|m| m.map(|m| Bytes::from(m.data)))
}

/// The daemon's end of `Control.Session`: `inbound` is the request stream of
/// the RPC; the returned stream is what the handler answers with.
pub fn daemon_side<S>(
    inbound: S,
) -> (
    HijackedConn,
    impl Stream<Item = Result<BytesMessage, Status>> + Send + 'static,
)
where
    S: Stream<Item = Result<BytesMessage, Status>> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(OUTBOUND_DEPTH);
    let mut conn = HijackedConn::from_parts(inbound_data(inbound), tx);
    conn.closes_on_peer_end = true;
    // What was queued when the client ended its side is not sent either
    // (see `poll_write`): the answer ends there.
    let peer_closed = conn.peer_closed.clone();
    let outbound = ReceiverStream::new(rx)
        .take_while(move |_| !peer_closed.load(Ordering::Acquire))
        .map(|data: Bytes| {
            Ok(BytesMessage {
                data: data.to_vec(),
            })
        });
    (conn, outbound)
}

/// BuildKit's `Control.Session` headers: the session's id, its name, the
/// shared key that kept contexts are matched by, and one per gRPC method
/// the client serves in the session.
pub const SESSION_ID_HEADER: &str = "x-docker-expose-session-uuid";
pub const SESSION_NAME_HEADER: &str = "x-docker-expose-session-name";
pub const SESSION_SHARED_KEY_HEADER: &str = "x-docker-expose-session-sharedkey";
pub const SESSION_METHOD_HEADER: &str = "x-docker-expose-session-grpc-method";

/// The `Control.Session` request of a client that serves `services` as
/// session `id` (named `name`, which may be empty), over `requests` (the
/// stream half of [`client_side`]). Fails on an id, name or method that is
/// not a valid header value.
pub fn session_request<S>(
    id: &str,
    name: &str,
    services: &SessionServices,
    requests: S,
) -> std::result::Result<tonic::Request<S>, tonic::metadata::errors::InvalidMetadataValue> {
    let mut req = tonic::Request::new(requests);
    let md = req.metadata_mut();
    md.insert(SESSION_ID_HEADER, id.parse()?);
    if !name.is_empty() {
        md.insert(SESSION_NAME_HEADER, name.parse()?);
    }
    md.insert(SESSION_SHARED_KEY_HEADER, "".parse()?);
    for m in services.methods() {
        md.append(SESSION_METHOD_HEADER, m.parse()?);
    }
    Ok(req)
}

/// The client's end of `Control.Session` before the call is made: the
/// request stream to pass to `ControlClient::session`, and the half that
/// [`ClientSide::attach`] completes with the response stream.
pub fn client_side() -> (
    ClientSide,
    impl Stream<Item = BytesMessage> + Send + 'static,
) {
    let (tx, rx) = mpsc::channel(OUTBOUND_DEPTH);
    let requests = ReceiverStream::new(rx).map(|data: Bytes| BytesMessage {
        data: data.to_vec(),
    });
    (ClientSide { outbound: tx }, requests)
}

/// The client's end of a session whose `Control.Session` call is under way.
#[derive(Debug)]
pub struct ClientSide {
    outbound: mpsc::Sender<Bytes>,
}

impl ClientSide {
    /// Completes the connection with the response stream of the call.
    pub fn attach<S>(self, inbound: S) -> HijackedConn
    where
        S: Stream<Item = Result<BytesMessage, Status>> + Send + 'static,
    {
        HijackedConn::from_parts(inbound_data(inbound), self.outbound)
    }
}

/// Two connections wired to each other in memory, as if through
/// `Control.Session` (tests, embedded mode).
pub fn loopback() -> (HijackedConn, HijackedConn) {
    let (a_tx, a_rx) = mpsc::channel(OUTBOUND_DEPTH);
    let (b_tx, b_rx) = mpsc::channel(OUTBOUND_DEPTH);
    let a = HijackedConn::from_parts(ReceiverStream::new(b_rx).map(Ok), a_tx);
    let b = HijackedConn::from_parts(ReceiverStream::new(a_rx).map(Ok), b_tx);
    (a, b)
}

/// The daemon side: opens an HTTP/2 gRPC client connection (prior
/// knowledge) over the session. The channel cannot reconnect: once the
/// session ends, calls fail with `Unavailable`.
pub async fn connect_session(conn: HijackedConn) -> Result<Channel> {
    let slot = Arc::new(Mutex::new(Some(conn)));
    let connector = tower::service_fn(move |_: Uri| {
        let conn = slot.lock().map(|mut s| s.take()).unwrap_or_default();
        async move {
            conn.map(TokioIo::new)
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotConnected, "the session has ended"))
        }
    });
    // Upstream sends authority "localhost"; clients do not check it.
    Endpoint::from_static("http://localhost")
        .initial_connection_window_size(CONNECTION_WINDOW)
        .connect_with_connector(connector)
        .await
        .map_err(|source| SessionError::Connect { source })
}

/// A boxed gRPC service as the session server routes to it.
type BoxedService = BoxCloneSyncService<Request<Body>, Response<Body>, Infallible>;

/// The services a client exposes in its session, routed by service name
/// (the first path segment), plus the list of methods it announces in
/// `x-docker-expose-session-grpc-method`.
///
/// `grpc.health.v1.Health` answering `SERVING` is always present.
#[derive(Clone)]
pub struct SessionServices {
    routes: HashMap<&'static str, BoxedService>,
    methods: Vec<String>,
}

impl std::fmt::Debug for SessionServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionServices")
            .field("methods", &self.methods)
            .finish_non_exhaustive()
    }
}

impl Default for SessionServices {
    fn default() -> Self {
        Self::new()
    }
}

impl SessionServices {
    /// The health service alone.
    pub fn new() -> SessionServices {
        let mut s = SessionServices {
            routes: HashMap::new(),
            methods: Vec::new(),
        };
        s.add(HealthServer::new(SessionHealth), &["Check"]);
        s
    }

    /// Adds a gRPC service (a generated `...Server` or a hand-written one)
    /// whose `methods` (bare names, e.g. `DiffCopy`) are announced. A
    /// service of the same name is replaced.
    pub fn add<S>(&mut self, svc: S, methods: &[&str]) -> &mut SessionServices
    where
        S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let prefix = format!("/{}/", S::NAME);
        self.methods.retain(|m| !m.starts_with(&prefix));
        self.methods
            .extend(methods.iter().map(|m| format!("{prefix}{m}")));
        self.routes.insert(S::NAME, BoxCloneSyncService::new(svc));
        self
    }

    /// Full method paths to announce, one metadata value each.
    pub fn methods(&self) -> &[String] {
        &self.methods
    }
}

impl Service<Request<Body>> for SessionServices {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<
        Box<
            dyn std::future::Future<Output = std::result::Result<Response<Body>, Infallible>>
                + Send,
        >,
    >;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::result::Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let name = req.uri().path().trim_start_matches('/');
        let name = name.split('/').next().unwrap_or_default();
        match self.routes.get(name) {
            Some(svc) => Box::pin(svc.clone().oneshot(req)),
            None => {
                let status = Status::unimplemented(format!("unknown service {name}"));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// The session's health service: the session is up while it answers.
#[derive(Clone, Copy, Debug, Default)]
struct SessionHealth;

#[tonic::async_trait]
impl Health for SessionHealth {
    async fn check(
        &self,
        _request: tonic::Request<HealthCheckRequest>,
    ) -> std::result::Result<tonic::Response<HealthCheckResponse>, Status> {
        Ok(tonic::Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        }))
    }
}

/// The client side: serves `services` over the session as an HTTP/2 server
/// until the daemon closes the connection or `cancel` fires (then the
/// connection shuts down gracefully).
pub async fn serve_session(
    conn: HijackedConn,
    services: SessionServices,
    cancel: CancellationToken,
) -> Result<()> {
    let svc = services.map_request(|req: Request<hyper::body::Incoming>| req.map(Body::new));
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    // Go's http2 server default, which BuildKit clients use.
    builder.max_concurrent_streams(250);
    let connection = builder.serve_connection(TokioIo::new(conn), TowerToHyperService::new(svc));
    tokio::pin!(connection);
    let res = tokio::select! {
        res = connection.as_mut() => res,
        () = cancel.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    match res {
        Ok(()) => Ok(()),
        // The daemon dropped the session: its end, not a failure.
        Err(e) if peer_gone(&e) => Ok(()),
        Err(source) => Err(SessionError::Serve { source }),
    }
}

/// Whether a connection error means the other end of the session went
/// away (the outbound half is closed).
fn peer_gone(e: &hyper::Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<io::Error>())
        .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_proto::health::health_client::HealthClient;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn loopback_carries_bytes_both_ways_and_shutdown_is_eof() {
        let (mut a, mut b) = loopback();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            a.write_all(&sent).await.expect("write");
            a.shutdown().await.expect("shutdown");
            let mut back = Vec::new();
            a.read_to_end(&mut back).await.expect("read back");
            back
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, big);
        b.write_all(b"pong").await.expect("write back");
        b.shutdown().await.expect("shutdown back");
        assert_eq!(writer.await.expect("join"), b"pong");
    }

    #[tokio::test]
    async fn daemon_and_client_sides_pair_up() {
        // What the daemon's Control.Session handler and the client's call
        // see, wired back to back.
        let (client_half, requests) = client_side();
        let (mut daemon_conn, responses) = daemon_side(requests.map(Ok));
        let mut client_conn = client_half.attach(responses);
        daemon_conn.write_all(b"hello").await.expect("write");
        daemon_conn.shutdown().await.expect("shutdown");
        let mut got = Vec::new();
        client_conn.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"hello");
    }

    #[tokio::test]
    async fn health_answers_serving_and_unknown_services_are_unimplemented() {
        let (daemon, client) = loopback();
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve_session(
            client,
            SessionServices::new(),
            cancel.clone(),
        ));
        let channel = connect_session(daemon).await.expect("connect");
        let mut health = HealthClient::new(channel.clone());
        let resp = health
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .expect("check")
            .into_inner();
        assert_eq!(resp.status, ServingStatus::Serving as i32);
        let mut fs = kiln_proto::filesync::file_send_client::FileSendClient::new(channel);
        let err = fs
            .diff_copy(tokio_stream::iter(
                Vec::<kiln_proto::filesync::BytesMessage>::new(),
            ))
            .await
            .expect_err("no FileSend registered");
        assert_eq!(err.code(), tonic::Code::Unimplemented);
        cancel.cancel();
        server.await.expect("join").expect("serve");
        assert_eq!(
            SessionServices::new().methods(),
            ["/grpc.health.v1.Health/Check".to_string()]
        );
    }
}
