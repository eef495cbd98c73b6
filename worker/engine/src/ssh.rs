//! The client's SSH agents, for `RUN --mount=type=ssh` and for git
//! remotes over ssh: the engine asks an [`SshSource`] whether an agent id
//! is forwarded before the step or the fetch, and for a fresh connection
//! to it each time the step (or `ssh`) connects to the `AgentSocket` the
//! engine listens on. Embedded kiln dials the `--ssh` sockets; kilnd opens
//! a `ForwardAgent` stream to the client's session. No key, socket path or
//! agent byte enters the graph, a cache key, a layer or a log.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

/// One connection to an agent: bytes in both directions.
pub trait AgentStream: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> AgentStream for T {}

/// Where a build's SSH agents are.
#[async_trait::async_trait]
pub trait SshSource: Send + Sync + std::fmt::Debug {
    /// Whether agent `id` (`""` is `default`) is forwarded; the error says
    /// why not, in BuildKit's words.
    async fn check(&self, id: &str) -> Result<(), SshError>;

    /// A new connection to agent `id`.
    async fn connect(&self, id: &str) -> Result<Box<dyn AgentStream>, SshError>;
}

/// Why an agent cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// The client forwards no agent at all (BuildKit's text, with the id
    /// as the step names it).
    #[error("no SSH key {id:?} forwarded from the client")]
    NotForwarded { id: String },
    /// The client forwards agents, but not this one.
    #[error("unset ssh forward key {id}")]
    Unset { id: String },
    /// The agent is forwarded but cannot be reached.
    #[error("ssh agent {id}: {reason}")]
    Agent { id: String, reason: String },
}

/// A build that forwards no agent.
#[derive(Debug, Default)]
pub struct NoSsh;

#[async_trait::async_trait]
impl SshSource for NoSsh {
    async fn check(&self, id: &str) -> Result<(), SshError> {
        Err(SshError::NotForwarded { id: id.to_string() })
    }

    async fn connect(&self, id: &str) -> Result<Box<dyn AgentStream>, SshError> {
        Err(SshError::NotForwarded { id: id.to_string() })
    }
}

/// The agents of a build that forwards none.
pub fn none() -> std::sync::Arc<dyn SshSource> {
    std::sync::Arc::new(NoSsh)
}

/// A unix socket the engine listens on in a private directory of its own
/// (mode 0700), each connection to it forwarded to a fresh connection to
/// one of the client's agents. Dropping it stops forwarding (open
/// connections too) and removes the directory.
pub(crate) struct AgentSocket {
    dir: PathBuf,
    path: PathBuf,
    stop: CancellationToken,
    accept: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for AgentSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentSocket")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl AgentSocket {
    /// Listens at `dir/ssh_auth_sock` (`dir` is made) for agent `id`, the
    /// socket owned by `uid`:`gid` with `mode`.
    pub(crate) fn listen(
        dir: PathBuf,
        source: Arc<dyn SshSource>,
        id: &str,
        (uid, gid, mode): (u32, u32, u32),
    ) -> std::io::Result<AgentSocket> {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join("ssh_auth_sock");
        let listener = (|| {
            std::fs::create_dir_all(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
            // A socket's path is limited to 107 bytes and `dir` may be
            // deeper than that: bind through the directory's descriptor,
            // whose /proc path is short.
            let handle = std::fs::File::open(&dir)?;
            let short = format!(
                "/proc/self/fd/{}/ssh_auth_sock",
                std::os::fd::AsRawFd::as_raw_fd(&handle)
            );
            let listener = tokio::net::UnixListener::bind(&short)?;
            drop(handle);
            std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o777))?;
            Ok(listener)
        })();
        let listener = match listener {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let stop = CancellationToken::new();
        let accept = tokio::spawn(forward(listener, source, id.to_string(), stop.clone()));
        Ok(AgentSocket {
            dir,
            path,
            stop,
            accept,
        })
    }

    /// The socket's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for AgentSocket {
    fn drop(&mut self) {
        self.stop.cancel();
        self.accept.abort();
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove an ssh socket's directory");
            }
        }
    }
}

/// Accepts connections until `stop`, each forwarded to its own connection
/// to agent `id`.
async fn forward(
    listener: tokio::net::UnixListener,
    source: Arc<dyn SshSource>,
    id: String,
    stop: CancellationToken,
) {
    loop {
        let conn = tokio::select! {
            _ = stop.cancelled() => return,
            c = listener.accept() => c,
        };
        let mut conn = match conn {
            Ok((c, _)) => c,
            Err(e) => {
                tracing::warn!(error = %e, "ssh socket: accept failed");
                return;
            }
        };
        let (source, id, stop) = (source.clone(), id.clone(), stop.clone());
        tokio::spawn(async move {
            let mut agent = match source.connect(&id).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "ssh socket: cannot reach the agent");
                    return;
                }
            };
            tokio::select! {
                _ = stop.cancelled() => {}
                r = tokio::io::copy_bidirectional(&mut conn, &mut agent) => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "ssh socket: a forwarded connection ended");
                    }
                }
            }
        });
    }
}
