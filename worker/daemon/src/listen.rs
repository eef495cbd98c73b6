//! Listening sockets: `unix://`, `tcp://` (plain h2c or TLS) and `fd://`
//! (sockets passed by systemd's socket activation, `sd_listen_fds`).
//!
//! A [`Listener`] is a stream of accepted connections for tonic's
//! `serve_with_incoming_shutdown`. Accepting and TLS handshakes run in
//! background tasks, so a slow or broken client never stalls the others and
//! never reaches tonic as an error. The accept task ends when tonic drops
//! the stream (on shutdown); a unix socket file is removed then.
//!
//! TLS offers ALPN `h2` but also accepts clients that offer no ALPN at all
//! (the buildx remote driver wraps TLS itself): the server speaks only
//! HTTP/2 either way.

use crate::config::TlsConfig;
use crate::tenants::{cert_identity, Identity};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Accepted connections waiting for tonic.
const BACKLOG: usize = 64;
/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
const SD_LISTEN_FDS_START: RawFd = 3;

/// A parsed listening address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Unix(PathBuf),
    /// `host:port`, as `TcpListener::bind` takes it.
    Tcp(String),
    /// `fd://`: every socket systemd passed; `fd://N`: that one.
    Fd(Option<RawFd>),
}

impl ListenAddr {
    /// Parses `unix://PATH`, `tcp://HOST:PORT`, `fd://` or `fd://N`; `None`
    /// for anything else.
    pub fn parse(s: &str) -> Option<ListenAddr> {
        if let Some(fd) = s.strip_prefix("fd://") {
            if fd.is_empty() {
                return Some(ListenAddr::Fd(None));
            }
            return fd
                .parse::<RawFd>()
                .ok()
                .filter(|n| *n >= SD_LISTEN_FDS_START)
                .map(|n| ListenAddr::Fd(Some(n)));
        }
        if let Some(path) = s.strip_prefix("unix://") {
            return (!path.is_empty()).then(|| ListenAddr::Unix(PathBuf::from(path)));
        }
        if let Some(hostport) = s.strip_prefix("tcp://") {
            let (host, port) = hostport.rsplit_once(':')?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return None;
            }
            return Some(ListenAddr::Tcp(hostport.to_string()));
        }
        None
    }
}

/// Why an address cannot be listened on.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Not `unix://PATH`, `tcp://HOST:PORT` or `fd://[N]`.
    #[error("invalid address {addr:?} (expected unix:///path, tcp://host:port or fd://)")]
    Addr { addr: String },
    /// `fd://` without sockets from systemd, or `fd://N` for one it did
    /// not pass.
    #[error("{addr}: {problem}")]
    Activation { addr: String, problem: String },
    /// Another process answers on the socket.
    #[error("{path} is in use: another daemon answers on it")]
    InUse { path: PathBuf },
    /// Something other than a socket sits where the socket should be.
    #[error("{path} exists and is not a socket")]
    NotSocket { path: PathBuf },
    /// Creating, binding or setting up the socket failed.
    #[error("cannot listen on {addr}")]
    Io {
        addr: String,
        #[source]
        source: io::Error,
    },
    /// A PEM file could not be read or holds nothing usable.
    #[error("cannot load TLS {what} from {path}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused the certificate, key or CA.
    #[error("invalid TLS {what}")]
    Tls {
        what: &'static str,
        #[source]
        source: rustls::Error,
    },
    /// The client CA cannot verify anything (e.g. empty).
    #[error("invalid TLS client CA {path}")]
    ClientCa {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
}

/// One accepted connection.
#[derive(Debug)]
pub enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// What tonic puts in each request's extensions about its connection.
#[derive(Clone, Debug, Default)]
#[allow(
    dead_code,
    reason = "read by services through Request::extensions when they need it"
)]
pub struct ConnInfo {
    /// The peer's address (tcp only).
    pub remote_addr: Option<SocketAddr>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The negotiated ALPN protocol; `None` for clients that offered none.
    pub alpn: Option<Vec<u8>>,
    /// Who the client is, as far as the connection proves it: the peer
    /// uid on a unix socket, the verified client certificate's names on
    /// mutual TLS; `None` on plain TCP and server-only TLS.
    pub identity: Option<Identity>,
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        match self {
            Conn::Unix(s) => ConnInfo {
                identity: s.peer_cred().ok().map(|c| Identity::Uid(c.uid())),
                ..ConnInfo::default()
            },
            Conn::Tcp(s) => ConnInfo {
                remote_addr: s.peer_addr().ok(),
                ..ConnInfo::default()
            },
            Conn::Tls(s) => {
                let (tcp, session) = s.get_ref();
                // rustls only completes the handshake with a certificate
                // that chains to the client CA (when one is configured).
                let identity = session
                    .peer_certificates()
                    .and_then(|certs| certs.first())
                    .and_then(|leaf| cert_identity(leaf))
                    .map(Identity::Cert);
                ConnInfo {
                    remote_addr: tcp.peer_addr().ok(),
                    tls: true,
                    alpn: session.alpn_protocol().map(<[u8]>::to_vec),
                    identity,
                }
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Unix(s) => s.is_write_vectored(),
            Conn::Tcp(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Unix(s) => Pin::new(s).poll_flush(cx),
            Conn::Tcp(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The accepted connections of one address, for
/// `Server::serve_with_incoming_shutdown`. It never yields an error:
/// accept and handshake failures are logged and skipped.
#[derive(Debug)]
pub struct Listener {
    addr: String,
    local_addr: Option<SocketAddr>,
    incoming: ReceiverStream<io::Result<Conn>>,
}

impl Listener {
    /// The address as configured.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The bound TCP address (useful with port 0); `None` for unix.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }
}

impl Stream for Listener {
    type Item = io::Result<Conn>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.incoming).poll_next(cx)
    }
}

/// Binds `addr`; `tls` applies to TCP sockets only, `group` (a gid) owns
/// the unix sockets kilnd creates. Must be called within a tokio runtime.
pub async fn bind(
    addr: &str,
    tls: Option<&TlsConfig>,
    group: Option<u32>,
) -> Result<Listener, ListenError> {
    let parsed = ListenAddr::parse(addr).ok_or_else(|| ListenError::Addr {
        addr: addr.to_string(),
    })?;
    let io_err = |source| ListenError::Io {
        addr: addr.to_string(),
        source,
    };
    let (tx, rx) = mpsc::channel(BACKLOG);
    let local_addr = match parsed {
        ListenAddr::Fd(which) => {
            let fds = activated(addr, which)?;
            let acceptor = tls.map(server_config).transpose()?.map(TlsAcceptor::from);
            let mut local = None;
            for fd in fds {
                match socket_family(fd).map_err(io_err)? {
                    libc::AF_UNIX => {
                        // SAFETY: systemd passed this descriptor to this
                        // process as a listening socket; it is taken once
                        // (`activated` hands each out a single time).
                        let std = unsafe { std::os::unix::net::UnixListener::from_raw_fd(fd) };
                        std.set_nonblocking(true).map_err(io_err)?;
                        let l = UnixListener::from_std(std).map_err(io_err)?;
                        tokio::spawn(accept_activated_unix(l, addr.to_string(), tx.clone()));
                    }
                    libc::AF_INET | libc::AF_INET6 => {
                        // SAFETY: as above, a TCP listening socket.
                        let std = unsafe { std::net::TcpListener::from_raw_fd(fd) };
                        std.set_nonblocking(true).map_err(io_err)?;
                        let l = TcpListener::from_std(std).map_err(io_err)?;
                        local = local.or(l.local_addr().ok());
                        tokio::spawn(accept_tcp(l, acceptor.clone(), tx.clone()));
                    }
                    family => {
                        return Err(ListenError::Activation {
                            addr: addr.to_string(),
                            problem: format!(
                                "descriptor {fd} is not a unix or TCP socket (family {family})"
                            ),
                        })
                    }
                }
            }
            local
        }
        ListenAddr::Unix(path) => {
            let listener = bind_unix(&path, group).map_err(|e| match e {
                UnixBindError::Listen(e) => e,
                UnixBindError::Io(source) => io_err(source),
            })?;
            tokio::spawn(accept_unix(listener, path, tx));
            None
        }
        ListenAddr::Tcp(hostport) => {
            let acceptor = tls.map(server_config).transpose()?.map(TlsAcceptor::from);
            let listener = TcpListener::bind(&hostport).await.map_err(io_err)?;
            let local = listener.local_addr().map_err(io_err)?;
            if acceptor.is_none() && !local.ip().is_loopback() {
                // Configuration refuses this without --insecure-tcp.
                tracing::warn!(
                    addr,
                    "INSECURE: listening on plain TCP beyond loopback (--insecure-tcp): anyone \
                     who can reach {addr} can build as root on this host"
                );
            }
            tokio::spawn(accept_tcp(listener, acceptor, tx));
            Some(local)
        }
    };
    Ok(Listener {
        addr: addr.to_string(),
        local_addr,
        incoming: ReceiverStream::new(rx),
    })
}

enum UnixBindError {
    Listen(ListenError),
    Io(io::Error),
}

impl From<io::Error> for UnixBindError {
    fn from(e: io::Error) -> Self {
        UnixBindError::Io(e)
    }
}

/// Creates the parent directory (0711), clears a stale socket, binds and
/// makes the socket 0660, owned by `group` when given.
fn bind_unix(path: &Path, group: Option<u32>) -> Result<UnixListener, UnixBindError> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(parent)?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => {
            // Only a socket nobody answers on is stale.
            match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => {
                    return Err(UnixBindError::Listen(ListenError::InUse {
                        path: path.to_path_buf(),
                    }))
                }
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "removing stale socket");
                    std::fs::remove_file(path)?;
                }
            }
        }
        Ok(_) => {
            return Err(UnixBindError::Listen(ListenError::NotSocket {
                path: path.to_path_buf(),
            }))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e.into()),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(gid) = group {
        std::os::unix::fs::lchown(path, None, Some(gid))?;
    }
    Ok(listener)
}

/// The descriptors systemd passed and no `fd://` address took yet; `None`
/// until [`take_activation`] ran.
static PASSED: std::sync::Mutex<Option<Vec<RawFd>>> = std::sync::Mutex::new(None);

/// Reads the sockets systemd passed to this process (`LISTEN_PID`,
/// `LISTEN_FDS`, as `sd_listen_fds` does), marks them close-on-exec so
/// build steps never inherit them, and removes the variables. Called once
/// at the start of `main`, before any other thread exists (changing the
/// environment is only sound then).
pub fn take_activation() {
    let fds = listen_fds(
        std::env::var("LISTEN_PID").ok().as_deref(),
        std::env::var("LISTEN_FDS").ok().as_deref(),
        std::process::id(),
    );
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    // Only descriptors that are open are taken (a wrong LISTEN_FDS must
    // not make kilnd adopt whatever it opens next under that number).
    // SAFETY: fcntl on a descriptor number only reads or sets its flags.
    let fds: Vec<RawFd> = fds
        .into_iter()
        .filter(|fd| unsafe { libc::fcntl(*fd, libc::F_SETFD, libc::FD_CLOEXEC) } == 0)
        .collect();
    *PASSED.lock().unwrap_or_else(|p| p.into_inner()) = Some(fds);
}

/// The passed sockets an `fd://` address takes: all those left for
/// `fd://`, the one asked for with `fd://N`. Each is handed out once.
fn activated(addr: &str, which: Option<RawFd>) -> Result<Vec<RawFd>, ListenError> {
    let err = |problem: String| ListenError::Activation {
        addr: addr.to_string(),
        problem,
    };
    let mut passed = PASSED.lock().unwrap_or_else(|p| p.into_inner());
    let fds = passed.get_or_insert_with(Vec::new);
    match which {
        None if fds.is_empty() => Err(err(
            "no sockets were passed by socket activation (LISTEN_FDS); start kilnd through its \
             systemd socket unit, or listen on unix:// or tcp://"
                .into(),
        )),
        None => Ok(std::mem::take(fds)),
        Some(n) => match fds.iter().position(|f| *f == n) {
            Some(i) => Ok(vec![fds.remove(i)]),
            None => Err(err(format!(
                "descriptor {n} was not passed by socket activation (or is already in use)"
            ))),
        },
    }
}

/// The descriptors `LISTEN_PID`/`LISTEN_FDS` pass to process `pid`: from 3
/// on, `LISTEN_FDS` of them; none when the variables are missing, invalid
/// or meant for another process.
fn listen_fds(listen_pid: Option<&str>, listen_fds: Option<&str>, pid: u32) -> Vec<RawFd> {
    let for_us = listen_pid.and_then(|p| p.parse::<u32>().ok()) == Some(pid);
    let n = listen_fds
        .and_then(|n| n.parse::<RawFd>().ok())
        .filter(|n| *n > 0 && *n < 1024);
    match (for_us, n) {
        (true, Some(n)) => (SD_LISTEN_FDS_START..SD_LISTEN_FDS_START + n).collect(),
        _ => Vec::new(),
    }
}

/// The address family of socket `fd` (`AF_UNIX`, `AF_INET`, ...).
fn socket_family(fd: RawFd) -> io::Result<libc::c_int> {
    // SAFETY: an all-zero sockaddr_storage is a valid value; getsockname
    // writes at most `len` bytes into it.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: the pointers are to live locals of the right size.
    let r = unsafe {
        libc::getsockname(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(libc::c_int::from(storage.ss_family))
}

/// Accepts on a unix socket systemd owns: its file is left in place.
async fn accept_activated_unix(
    listener: UnixListener,
    addr: String,
    tx: mpsc::Sender<io::Result<Conn>>,
) {
    loop {
        tokio::select! {
            _ = tx.closed() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    if tx.send(Ok(Conn::Unix(s))).await.is_err() {
                        break;
                    }
                }
                Err(e) => accept_backoff(&addr, &e).await,
            },
        }
    }
}

/// Sleeps a little after an accept error so that a full file table does
/// not turn into a busy loop.
async fn accept_backoff(addr: &str, e: &io::Error) {
    tracing::warn!(addr, error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

async fn accept_unix(listener: UnixListener, path: PathBuf, tx: mpsc::Sender<io::Result<Conn>>) {
    let addr = format!("unix://{}", path.display());
    let inode = std::fs::metadata(&path).map(|m| (m.dev(), m.ino())).ok();
    loop {
        tokio::select! {
            _ = tx.closed() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => {
                    if tx.send(Ok(Conn::Unix(s))).await.is_err() {
                        break;
                    }
                }
                Err(e) => accept_backoff(&addr, &e).await,
            },
        }
    }
    drop(listener);
    // Remove the socket unless someone has replaced it since.
    let now = std::fs::metadata(&path).map(|m| (m.dev(), m.ino())).ok();
    if inode.is_some() && now == inode {
        if let Err(e) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove socket");
        }
    }
}

async fn accept_tcp(
    listener: TcpListener,
    acceptor: Option<TlsAcceptor>,
    tx: mpsc::Sender<io::Result<Conn>>,
) {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    loop {
        let (stream, peer) = tokio::select! {
            _ = tx.closed() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    accept_backoff(&addr, &e).await;
                    continue;
                }
            },
        };
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%peer, error = %e, "cannot set TCP_NODELAY");
        }
        let Some(acceptor) = acceptor.clone() else {
            if tx.send(Ok(Conn::Tcp(stream))).await.is_err() {
                break;
            }
            continue;
        };
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => {
                    // The receiver is gone only when shutting down.
                    let _ = tx.send(Ok(Conn::Tls(Box::new(tls)))).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

fn load_certs(
    path: &Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, ListenError> {
    let pem = |source| ListenError::Pem {
        what,
        path: path.to_path_buf(),
        source,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(pem)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem)?;
    if certs.is_empty() {
        return Err(pem(rustls::pki_types::pem::Error::NoItemsFound));
    }
    Ok(certs)
}

/// The rustls server configuration for `tls`, on the ring provider.
pub fn server_config(tls: &TlsConfig) -> Result<Arc<rustls::ServerConfig>, ListenError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = load_certs(&tls.cert, "certificate")?;
    let key = PrivateKeyDer::from_pem_file(&tls.key).map_err(|source| ListenError::Pem {
        what: "key",
        path: tls.key.clone(),
        source,
    })?;
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|source| ListenError::Tls {
            what: "protocol versions",
            source,
        })?;
    let builder = match &tls.ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in load_certs(ca, "CA")? {
                roots.add(cert).map_err(|source| ListenError::Tls {
                    what: "CA certificate",
                    source,
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|source| ListenError::ClientCa {
                path: ca.clone(),
                source,
            })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|source| ListenError::Tls {
            what: "certificate or key",
            source,
        })?;
    // Offered, not required: a client without ALPN still gets HTTP/2.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::{self, TraceService};
    use hyper_util::rt::TokioIo;
    use std::sync::Mutex;
    use tokio_util::sync::CancellationToken;
    use tonic::transport::{Endpoint, Server};

    #[test]
    fn addresses_parse() {
        assert_eq!(
            ListenAddr::parse("unix:///run/kiln/kilnd.sock"),
            Some(ListenAddr::Unix("/run/kiln/kilnd.sock".into()))
        );
        assert_eq!(
            ListenAddr::parse("tcp://0.0.0.0:1234"),
            Some(ListenAddr::Tcp("0.0.0.0:1234".into()))
        );
        assert_eq!(
            ListenAddr::parse("tcp://[::1]:1234"),
            Some(ListenAddr::Tcp("[::1]:1234".into()))
        );
        for bad in [
            "unix://",
            "tcp://host",
            "tcp://:80",
            "tcp://h:x",
            "fd://2",
            "fd://x",
            "/x.sock",
        ] {
            assert_eq!(ListenAddr::parse(bad), None, "{bad}");
        }
    }

    /// Serves the trace no-op on `listener` until the token is cancelled.
    fn serve(listener: Listener) -> (CancellationToken, tokio::task::JoinHandle<()>) {
        let stop = CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            Server::builder()
                .add_service(TraceService)
                .serve_with_incoming_shutdown(listener, s.cancelled_owned())
                .await
                .expect("server runs");
        });
        (stop, task)
    }

    #[tokio::test]
    async fn unix_socket_serves_grpc_and_is_cleaned_up() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("sub/kilnd.sock");
        // A stale socket file nobody answers on is replaced.
        std::fs::create_dir_all(dir.path().join("sub")).expect("mkdir");
        drop(std::os::unix::net::UnixListener::bind(&path).expect("stale socket"));
        let addr = format!("unix://{}", path.display());
        let listener = bind(&addr, None, None).await.expect("bind");
        let mode = std::fs::metadata(&path)
            .expect("socket")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o660);

        // A second daemon on the same socket is refused.
        let again = bind(&addr, None, None).await.expect_err("in use");
        assert!(matches!(again, ListenError::InUse { .. }), "{again}");

        let (stop, task) = serve(listener);
        let p = path.clone();
        let channel = Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_| {
                let p = p.clone();
                async move { UnixStream::connect(p).await.map(TokioIo::new) }
            }))
            .await
            .expect("connect");
        trace::export(channel).await.expect("export answers OK");

        stop.cancel();
        task.await.expect("server stops");
        // The accept task removes the socket once tonic drops the stream.
        for _ in 0..50 {
            if !path.exists() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!path.exists(), "socket removed on shutdown");
    }

    #[tokio::test]
    async fn a_file_in_the_way_is_not_removed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("kilnd.sock");
        std::fs::write(&path, "data").expect("write");
        let err = bind(&format!("unix://{}", path.display()), None, None)
            .await
            .expect_err("not a socket");
        assert!(matches!(err, ListenError::NotSocket { .. }), "{err}");
        assert_eq!(std::fs::read(&path).expect("still there"), b"data");
    }

    #[tokio::test]
    async fn plain_tcp_speaks_h2c() {
        let listener = bind("tcp://127.0.0.1:0", None, None).await.expect("bind");
        let port = listener.local_addr().expect("tcp").port();
        let (stop, task) = serve(listener);
        let channel = Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
            .expect("uri")
            .connect()
            .await
            .expect("connect");
        trace::export(channel).await.expect("export answers OK");
        stop.cancel();
        task.await.expect("server stops");
    }

    /// A CA, a server certificate for 127.0.0.1/localhost and a client
    /// certificate, written as PEM files.
    struct Pki {
        _dir: tempfile::TempDir,
        ca: PathBuf,
        cert: PathBuf,
        key: PathBuf,
        ca_der: CertificateDer<'static>,
        client_cert: CertificateDer<'static>,
        client_key: PrivateKeyDer<'static>,
    }

    fn pki() -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().expect("server key");
        let server_cert =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .expect("server params")
                .signed_by(&server_key, &issuer)
                .expect("server cert");
        let client_key = KeyPair::generate().expect("client key");
        let client_cert = CertificateParams::new(vec!["client".to_string()])
            .expect("client params")
            .signed_by(&client_key, &issuer)
            .expect("client cert");

        let write = |name: &str, pem: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, pem).expect("write pem");
            p
        };
        Pki {
            ca: write("ca.pem", ca_cert.pem()),
            cert: write("cert.pem", server_cert.pem()),
            key: write("key.pem", server_key.serialize_pem()),
            ca_der: ca_cert.der().clone(),
            client_cert: client_cert.der().clone(),
            client_key: PrivateKeyDer::try_from(client_key.serialize_der())
                .expect("client key der"),
            _dir: dir,
        }
    }

    /// Calls the trace no-op over TLS with the given client identity and
    /// ALPN offer; returns the ALPN the server chose.
    async fn call_tls(
        port: u16,
        pki: &Pki,
        client_auth: bool,
        alpn: Vec<Vec<u8>>,
    ) -> Result<Option<Vec<u8>>, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der.clone()).expect("ca root");
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots);
        let mut config = if client_auth {
            builder
                .with_client_auth_cert(vec![pki.client_cert.clone()], pki.client_key.clone_key())
                .expect("client cert")
        } else {
            builder.with_no_client_auth()
        };
        config.alpn_protocols = alpn;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let negotiated = Arc::new(Mutex::new(None));
        let seen = negotiated.clone();
        let channel = Endpoint::from_static("http://localhost")
            .connect_with_connector(tower::service_fn(move |_| {
                let connector = connector.clone();
                let seen = seen.clone();
                async move {
                    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
                    let name = rustls::pki_types::ServerName::try_from("localhost")
                        .map_err(io::Error::other)?;
                    let tls = connector.connect(name, tcp).await?;
                    *seen.lock().expect("lock") =
                        tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
                    Ok::<_, io::Error>(TokioIo::new(tls))
                }
            }))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        trace::export(channel)
            .await
            .map_err(|e| format!("call: {e}"))?;
        let alpn = negotiated.lock().expect("lock").clone();
        Ok(alpn)
    }

    #[tokio::test]
    async fn mutual_tls_requires_a_client_certificate_and_accepts_no_alpn() {
        let pki = pki();
        let tls = TlsConfig {
            cert: pki.cert.clone(),
            key: pki.key.clone(),
            ca: Some(pki.ca.clone()),
        };
        let listener = bind("tcp://127.0.0.1:0", Some(&tls), None)
            .await
            .expect("bind");
        let port = listener.local_addr().expect("tcp").port();
        let (stop, task) = serve(listener);

        // (a) No client certificate: the server rejects the handshake.
        let no_cert = call_tls(port, &pki, false, vec![b"h2".to_vec()]).await;
        assert!(
            no_cert.is_err(),
            "a client without a certificate got {no_cert:?}"
        );

        // (b) With a certificate and ALPN h2.
        let alpn = call_tls(port, &pki, true, vec![b"h2".to_vec()])
            .await
            .expect("a client with a certificate connects");
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));

        // (c) No ALPN at all (the buildx remote driver): still HTTP/2.
        let alpn = call_tls(port, &pki, true, Vec::new())
            .await
            .expect("a client offering no ALPN completes a gRPC call");
        assert_eq!(alpn, None);

        stop.cancel();
        task.await.expect("server stops");
    }

    #[tokio::test]
    async fn connections_carry_the_peer_identity() {
        use tokio_stream::StreamExt;
        use tonic::transport::server::Connected;

        // Unix socket: the peer's uid.
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("id.sock");
        let mut listener = bind(&format!("unix://{}", path.display()), None, None)
            .await
            .expect("bind");
        let _client = UnixStream::connect(&path).await.expect("connect");
        let conn = listener.next().await.expect("a connection").expect("ok");
        assert_eq!(
            conn.connect_info().identity,
            Some(Identity::Uid(nix::unistd::getuid().as_raw()))
        );

        // Mutual TLS: the names of the client certificate.
        let pki = pki();
        let tls = TlsConfig {
            cert: pki.cert.clone(),
            key: pki.key.clone(),
            ca: Some(pki.ca.clone()),
        };
        let mut listener = bind("tcp://127.0.0.1:0", Some(&tls), None)
            .await
            .expect("bind");
        let port = listener.local_addr().expect("tcp").port();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der.clone()).expect("ca root");
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(vec![pki.client_cert.clone()], pki.client_key.clone_key())
            .expect("client cert");
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.expect("tcp");
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let _tls = connector.connect(name, tcp).await.expect("handshake");
        let conn = listener.next().await.expect("a connection").expect("ok");
        let Some(Identity::Cert(c)) = conn.connect_info().identity else {
            panic!("no certificate identity");
        };
        assert_eq!(c.sans, vec!["client".to_string()]);

        // Plain TCP proves nothing.
        let mut listener = bind("tcp://127.0.0.1:0", None, None).await.expect("bind");
        let port = listener.local_addr().expect("tcp").port();
        let _tcp = TcpStream::connect(("127.0.0.1", port)).await.expect("tcp");
        let conn = listener.next().await.expect("a connection").expect("ok");
        assert_eq!(conn.connect_info().identity, None);
    }

    #[tokio::test]
    async fn server_only_tls_needs_no_client_certificate() {
        let pki = pki();
        let tls = TlsConfig {
            cert: pki.cert.clone(),
            key: pki.key.clone(),
            ca: None,
        };
        let listener = bind("tcp://127.0.0.1:0", Some(&tls), None)
            .await
            .expect("bind");
        let port = listener.local_addr().expect("tcp").port();
        let (stop, task) = serve(listener);
        call_tls(port, &pki, false, Vec::new())
            .await
            .expect("server-only TLS without a client certificate");
        stop.cancel();
        task.await.expect("server stops");
    }

    #[tokio::test]
    async fn bad_tls_files_name_the_file() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = TlsConfig {
            cert: dir.path().join("nope.pem"),
            key: dir.path().join("nope.key"),
            ca: None,
        };
        let err = bind("tcp://127.0.0.1:0", Some(&missing), None)
            .await
            .expect_err("missing cert");
        assert_eq!(
            err.to_string(),
            format!(
                "cannot load TLS certificate from {}",
                missing.cert.display()
            )
        );
    }
}
