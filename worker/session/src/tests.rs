//! End to end: a "client" serving its session services and a "daemon"
//! calling them, over the session byte stream in memory.

use std::collections::HashMap;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use kiln_proto::filesync::file_send_server::{FileSend, FileSendServer};
use kiln_proto::filesync::BytesMessage;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::filesend::{send_bytes, send_local, FileSendReceiver, FileSendTarget};
use crate::filesync::{fetch_dir, FileSyncServerImpl};
use crate::fsutil::tests::{snapshot, write};
use crate::hijack::{client_side, connect_session, daemon_side, serve_session, SessionServices};
use crate::SessionError;

/// A session as kilnd and the kiln CLI hold it: the client's end of the
/// `Control.Session` call wired to the daemon's handler.
struct Session {
    channel: Channel,
    cancel: CancellationToken,
    server: JoinHandle<crate::Result<()>>,
}

impl Session {
    async fn start(services: SessionServices) -> Session {
        let (client_half, requests) = client_side();
        let (daemon_conn, responses) = daemon_side(requests.map(Ok));
        let client_conn = client_half.attach(responses);
        let cancel = CancellationToken::new();
        let server = tokio::spawn(serve_session(client_conn, services, cancel.clone()));
        let channel = connect_session(daemon_conn).await.expect("connect");
        Session {
            channel,
            cancel,
            server,
        }
    }

    async fn end(self) {
        drop(self.channel);
        self.cancel.cancel();
        self.server.await.expect("join").expect("serve");
    }
}

fn context_tree(root: &Path) {
    write(&root.join("Dockerfile"), b"FROM scratch\nCOPY . /\n");
    write(&root.join("README.md"), b"readme");
    write(&root.join("naïve.txt"), b"unicode name");
    write(&root.join("src/main.rs"), &vec![b'm'; 200_000]);
    write(&root.join("src/lib.rs"), b"lib");
    std::fs::hard_link(root.join("src/lib.rs"), root.join("src/lib-link.rs")).expect("link");
    symlink("src/main.rs", root.join("main-link")).expect("symlink");
    std::os::unix::fs::lchown(root.join("src/lib.rs"), Some(1234), Some(5678)).expect("chown");
}

fn file_sync(dirs: &[(&str, &Path)]) -> SessionServices {
    let dirs: HashMap<String, PathBuf> = dirs
        .iter()
        .map(|(n, p)| (n.to_string(), p.to_path_buf()))
        .collect();
    let mut services = SessionServices::new();
    services.add(
        FileSyncServerImpl::new(dirs).into_service(),
        FileSyncServerImpl::METHODS,
    );
    services
}

/// `name`'s whole tree from the client of `session` into `dest`, with no
/// filter and the receiver's defaults.
async fn fetch_whole(
    session: &Session,
    name: &str,
    dest: &Path,
) -> Result<crate::fsutil::ReceiveStats, SessionError> {
    fetch_dir(
        session.channel.clone(),
        name,
        &[],
        &[],
        &[],
        dest,
        Default::default(),
    )
    .await
}

#[tokio::test]
async fn daemon_fetches_the_client_context_over_the_session() {
    if !kiln_types::testing::needs_root(
        "the context has a file owned by uid 1234 and the daemon writes uid 0",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let (src, dest) = (tmp.path().join("ctx"), tmp.path().join("dest"));
    context_tree(&src);
    std::fs::create_dir_all(&dest).expect("mkdir");
    let session = Session::start(file_sync(&[("context", &src)])).await;

    let stats = fetch_whole(&session, "context", &dest)
        .await
        .expect("fetch");
    assert_eq!(stats.entries, 8);
    let (want, got) = (snapshot(&src), snapshot(&dest));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (path, w) in &want {
        let g = &got[path];
        assert_eq!((g.st_mode, g.mtime), (w.st_mode, w.mtime), "{path}");
        assert_eq!((&g.content, &g.target), (&w.content, &w.target), "{path}");
        assert_eq!(g.link_group, w.link_group, "{path}");
        // The client resets owners, as buildctl does.
        assert_eq!((g.uid, g.gid), (0, 0), "{path}");
    }

    // Patterns travel as repeated metadata; non-ASCII ones escaped.
    let dest2 = tmp.path().join("dest2");
    std::fs::create_dir_all(&dest2).expect("mkdir");
    let includes = vec![
        "naïve.txt".to_string(),
        "src".to_string(),
        "Dockerfile".to_string(),
    ];
    let excludes = vec!["src/lib*.rs".to_string(), "!src/lib.rs".to_string()];
    fetch_dir(
        session.channel.clone(),
        "context",
        &includes,
        &excludes,
        &[],
        &dest2,
        Default::default(),
    )
    .await
    .expect("fetch filtered");
    let got: Vec<String> = snapshot(&dest2).into_keys().collect();
    assert_eq!(
        got,
        [
            "Dockerfile",
            "naïve.txt",
            "src",
            "src/lib.rs",
            "src/main.rs"
        ]
    );

    let dest3 = tmp.path().join("dest3");
    std::fs::create_dir_all(&dest3).expect("mkdir");
    let follow = vec!["main-link".to_string()];
    fetch_dir(
        session.channel.clone(),
        "context",
        &[],
        &[],
        &follow,
        &dest3,
        Default::default(),
    )
    .await
    .expect("fetch follow paths");
    let got: Vec<String> = snapshot(&dest3).into_keys().collect();
    assert_eq!(got, ["main-link", "src", "src/main.rs"]);
    session.end().await;
}

#[tokio::test]
async fn a_dir_the_client_did_not_share_is_not_found() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (src, dest) = (tmp.path().join("ctx"), tmp.path().join("dest"));
    write(&src.join("Dockerfile"), b"FROM scratch\n");
    std::fs::create_dir_all(&dest).expect("mkdir");
    let session = Session::start(file_sync(&[("context", &src)])).await;
    let err = fetch_whole(&session, "secret", &dest)
        .await
        .expect_err("unknown dir");
    assert_eq!(err.kind(), kiln_proto::ErrorKind::NotFound);
    assert!(
        format!("{:?}", err).contains("no access allowed to dir"),
        "{err:?}"
    );
    assert!(snapshot(&dest).is_empty(), "nothing fetched");
    session.end().await;
}

/// A client with two export targets: exporter 0 receives bytes into
/// `tar_out`, exporter 1 a tree into `local_out`.
fn export_targets(tar_out: &Path, local_out: &Path) -> SessionServices {
    let mut services = SessionServices::new();
    services.add(
        FileSendReceiver::new(vec![
            FileSendTarget::Bytes {
                dest: Some(tar_out.to_path_buf()),
            },
            FileSendTarget::Local {
                dir: local_out.to_path_buf(),
            },
        ]),
        FileSendReceiver::METHODS,
    );
    services
}

#[tokio::test]
async fn exports_reach_the_client_as_bytes() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let tar_out = tmp.path().join("out.tar");
    let services = export_targets(&tar_out, &tmp.path().join("local-out"));
    assert_eq!(
        services.methods(),
        [
            "/grpc.health.v1.Health/Check".to_string(),
            "/moby.filesync.v1.FileSend/DiffCopy".to_string()
        ]
    );
    let session = Session::start(services).await;

    // More than two 3 MiB chunks.
    let data: Vec<u8> = (0..7_500_000u32).map(|i| (i % 253) as u8).collect();
    let md = vec![(
        "containerimage.digest".to_string(),
        "sha256:abc".to_string(),
    )];
    send_bytes(session.channel.clone(), Some(0), md, data.as_slice())
        .await
        .expect("send bytes");
    assert_eq!(std::fs::read(&tar_out).expect("read"), data);

    // An exporter id the client has no target for.
    let err = send_bytes(session.channel.clone(), Some(5), vec![], &b"x"[..])
        .await
        .expect_err("no target");
    assert!(matches!(err, SessionError::Call { .. }), "{err:?}");
    session.end().await;
}

#[tokio::test]
async fn exports_reach_the_client_as_trees() {
    if !kiln_types::testing::needs_root("the exported tree has a file owned by uid 1234") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let local_out = tmp.path().join("local-out");
    let services = export_targets(&tmp.path().join("out.tar"), &local_out);
    let session = Session::start(services).await;

    let src = tmp.path().join("rootfs");
    context_tree(&src);
    send_local(session.channel.clone(), Some(1), &src, &Default::default())
        .await
        .expect("send local");
    let (want, got) = (snapshot(&src), snapshot(&local_out));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    let me = (
        nix::unistd::getuid().as_raw(),
        nix::unistd::getgid().as_raw(),
    );
    for (path, w) in &want {
        let g = &got[path];
        assert_eq!(
            (g.st_mode, g.mtime, &g.content),
            (w.st_mode, w.mtime, &w.content)
        );
        assert_eq!((g.uid, g.gid), me, "{path} re-owned to the client");
    }
    session.end().await;
}

/// A client that already has the export target.
struct Exists;

#[tonic::async_trait]
impl FileSend for Exists {
    async fn diff_copy(
        &self,
        _request: tonic::Request<tonic::Streaming<BytesMessage>>,
    ) -> Result<tonic::Response<tonic::codegen::BoxStream<BytesMessage>>, tonic::Status> {
        Err(tonic::Status::already_exists("target exists"))
    }
}

#[tokio::test]
async fn already_exists_from_the_client_counts_as_success() {
    let mut services = SessionServices::new();
    services.add(FileSendServer::new(Exists), &["DiffCopy"]);
    let session = Session::start(services).await;
    send_bytes(session.channel.clone(), None, vec![], &b"ignored"[..])
        .await
        .expect("skip is success");
    session.end().await;
}

/// A client whose fsutil sender writes one tiny packet per HTTP/2 frame
/// and all of them at once, as buildctl's does for a context's listing:
/// `count` directories, the end of the listing, then FIN. A raw HTTP/2
/// body: tonic's own encoder would gather the packets into large frames.
#[derive(Clone)]
struct TinyFrames {
    count: usize,
}

impl tonic::server::NamedService for TinyFrames {
    const NAME: &'static str = "moby.filesync.v1.FileSync";
}

/// The response body: each gRPC message a frame of its own, then the
/// trailers of a successful call.
struct Frames(std::collections::VecDeque<bytes::Bytes>);

impl tonic::codegen::Body for Frames {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(Some(Ok(match self.0.pop_front() {
            Some(data) => hyper::body::Frame::data(data),
            None if self.0.capacity() > 0 => {
                self.0 = std::collections::VecDeque::new();
                let mut trailers = tonic::codegen::http::HeaderMap::new();
                trailers.insert(
                    "grpc-status",
                    tonic::codegen::http::HeaderValue::from_static("0"),
                );
                hyper::body::Frame::trailers(trailers)
            }
            None => return std::task::Poll::Ready(None),
        })))
    }
}

impl tower::Service<tonic::codegen::http::Request<tonic::body::Body>> for TinyFrames {
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        use crate::fsutil::{Packet, PacketType, Stat};
        use prost::Message as _;
        // The receiver's packets (its FIN) are read and dropped.
        let mut inbound = req.into_body();
        tokio::spawn(async move {
            while let Some(Ok(_)) = std::future::poll_fn(|cx| {
                tonic::codegen::Body::poll_frame(std::pin::Pin::new(&mut inbound), cx)
            })
            .await
            {}
        });
        let grpc = |p: Packet| {
            let body = p.encode_to_vec();
            let mut m = Vec::with_capacity(5 + body.len());
            m.push(0);
            m.extend_from_slice(&(body.len() as u32).to_be_bytes());
            m.extend_from_slice(&body);
            bytes::Bytes::from(m)
        };
        let kind = |t: PacketType| Packet {
            r#type: t as i32,
            ..Packet::default()
        };
        let mut frames: std::collections::VecDeque<bytes::Bytes> = (0..self.count)
            .map(|i| {
                grpc(Packet {
                    stat: Some(Stat {
                        path: format!("d{i:06}").into_bytes(),
                        mode: 0o755 | (1 << 31),
                        ..Stat::default()
                    }),
                    ..kind(PacketType::PacketStat)
                })
            })
            .collect();
        frames.push_back(grpc(kind(PacketType::PacketStat)));
        frames.push_back(grpc(kind(PacketType::PacketFin)));
        let resp = tonic::codegen::http::Response::builder()
            .header("content-type", "application/grpc")
            .body(tonic::body::Body::new(Frames(frames)))
            .expect("a response");
        std::future::ready(Ok(resp))
    }
}

/// Tens of thousands of tiny frames arriving at once: h2 ends a
/// connection once too many small frames wait unread, which a connection
/// window sized for it (`hijack::CONNECTION_WINDOW`) keeps from happening
/// (before it, a buildctl sending a 10,000-file context failed at once).
#[tokio::test]
async fn a_listing_in_tiny_frames_keeps_the_session() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let mut services = SessionServices::new();
    services.add(TinyFrames { count: 60_000 }, &["DiffCopy"]);
    let session = Session::start(services).await;
    let stats = fetch_whole(&session, "context", tmp.path())
        .await
        .expect("the whole listing arrives");
    assert_eq!(stats.entries, 60_000);
    assert!(tmp.path().join("d059999").is_dir());
    session.end().await;
}

/// Once the peer has ended its side of the session (a BuildKit client's
/// `Close`), nothing more is written to it: the write fails and the
/// answer stream ends without what was queued after that.
#[tokio::test]
async fn nothing_is_written_after_the_peer_ended_its_side() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (peer_tx, peer_rx) = tokio::sync::mpsc::channel::<Result<_, tonic::Status>>(4);
    let (mut conn, outbound) = daemon_side(tokio_stream::wrappers::ReceiverStream::new(peer_rx));
    conn.write_all(b"before")
        .await
        .expect("the peer still reads");
    drop(peer_tx);
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).await.expect("eof");
    assert!(rest.is_empty());
    let e = conn
        .write_all(b"after")
        .await
        .expect_err("the peer has gone");
    assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe);
    drop(conn);
    let sent: Vec<Vec<u8>> = outbound.map(|m| m.expect("message").data).collect().await;
    assert!(
        sent.iter().all(|m| m != b"after"),
        "{sent:?}: nothing after the end"
    );
}

/// `Outbound::drained` returns once what was written has been taken by
/// the connection that carries the session.
#[tokio::test]
async fn drained_waits_until_the_connection_took_the_bytes() {
    use tokio::io::AsyncWriteExt;
    let (_peer_tx, peer_rx) = tokio::sync::mpsc::channel::<Result<_, tonic::Status>>(4);
    let (mut conn, outbound) = daemon_side(tokio_stream::wrappers::ReceiverStream::new(peer_rx));
    for chunk in [b"one".as_slice(), b"two", b"three"] {
        conn.write_all(chunk).await.expect("queued");
    }
    let probe = conn.outbound();
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = taken.clone();
    let reader = tokio::spawn(async move {
        tokio::task::yield_now().await;
        let mut outbound = Box::pin(outbound);
        while let Some(m) = outbound.next().await {
            m.expect("message");
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    probe.drained(std::time::Duration::from_secs(30)).await;
    assert_eq!(taken.load(std::sync::atomic::Ordering::SeqCst), 3);
    drop(conn);
    reader.await.expect("reader");
}
