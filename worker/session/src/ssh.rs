//! `moby.sshforward.v1.SSH`: the client's SSH agents, lent to the daemon
//! for `RUN --mount=type=ssh` (BuildKit's session/sshforward). The daemon
//! asks `CheckAgent` whether an id is forwarded, then opens one
//! `ForwardAgent` stream per connection a step makes, with the agent's id
//! in the `buildkit.ssh.id` metadata; the stream carries the agent
//! protocol's bytes both ways.
//!
//! The client side ([`ForwardedAgents`]) dials the agent's socket and lets
//! through only what reads keys and signs with them (listing identities,
//! signing); adding, removing, locking and extensions are refused with the
//! agent protocol's failure answer, as BuildKit's read-only agent refuses
//! them. Embedded kiln uses the same [`ForwardedAgents`], so a step sees
//! the same agent either way.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use kiln_proto::sshforward::ssh_client::SshClient;
use kiln_proto::sshforward::ssh_server::{Ssh, SshServer};
use kiln_proto::sshforward::{BytesMessage, CheckAgentRequest, CheckAgentResponse};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, DuplexStream};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt as _;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};

use crate::error::{Result, SessionError};

/// The full method path of the check the daemon makes first.
pub const CHECK_AGENT_METHOD: &str = "/moby.sshforward.v1.SSH/CheckAgent";
const FORWARD_AGENT_METHOD: &str = "/moby.sshforward.v1.SSH/ForwardAgent";
/// The metadata key naming the agent of a `ForwardAgent` stream.
pub const ID_KEY: &str = "buildkit.ssh.id";
/// The id of an agent not named otherwise.
pub const DEFAULT_ID: &str = "default";

/// The longest agent message passed on (OpenSSH's own limit).
const MAX_MESSAGE: usize = 256 * 1024;
/// Agent protocol message types a step may send: list identities, sign.
const ALLOWED: [u8; 2] = [11, 13];
/// `SSH_AGENT_FAILURE`.
const FAILURE: u8 = 5;
/// Bytes buffered per forwarded connection and direction.
const BUFFER: usize = 64 * 1024;

/// `""` is the default agent.
fn agent_id(id: &str) -> &str {
    if id.is_empty() {
        DEFAULT_ID
    } else {
        id
    }
}

/// The client's agents by id: the socket each one listens on.
#[derive(Clone, Debug, Default)]
pub struct ForwardedAgents {
    by_id: BTreeMap<String, PathBuf>,
}

/// Why an agent cannot be had on the client.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// No agent has this id (BuildKit's client's words).
    #[error("unset ssh forward key {id}")]
    Unset { id: String },
    /// The agent's socket does not answer.
    #[error("failed to connect to {}: {source}", path.display())]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ForwardedAgents {
    /// Agents by id, each its socket's path.
    pub fn new(by_id: BTreeMap<String, PathBuf>) -> ForwardedAgents {
        ForwardedAgents { by_id }
    }

    /// Whether no agent is forwarded.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Whether agent `id` (`""` is `default`) is forwarded.
    pub fn check(&self, id: &str) -> Result<(), AgentError> {
        let id = agent_id(id);
        match self.by_id.contains_key(id) {
            true => Ok(()),
            false => Err(AgentError::Unset { id: id.to_string() }),
        }
    }

    /// A new connection to agent `id`, read-only: the returned stream
    /// speaks the agent protocol, and requests other than listing
    /// identities and signing get a failure answer without reaching the
    /// agent.
    pub async fn connect(&self, id: &str) -> Result<DuplexStream, AgentError> {
        let id = agent_id(id);
        let path = self
            .by_id
            .get(id)
            .ok_or_else(|| AgentError::Unset { id: id.to_string() })?;
        let agent = tokio::net::UnixStream::connect(path)
            .await
            .map_err(|source| AgentError::Connect {
                path: path.clone(),
                source,
            })?;
        let (ours, theirs) = tokio::io::duplex(BUFFER);
        tokio::spawn(async move {
            if let Err(e) = read_only(ours, agent).await {
                tracing::debug!(error = %e, "ssh agent connection ended");
            }
        });
        Ok(theirs)
    }
}

/// Reads one agent message (length prefix included); `None` at a clean
/// end of stream.
async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let n = u32::from_be_bytes(len) as usize;
    if n == 0 || n > MAX_MESSAGE {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("agent message of {n} bytes"),
        ));
    }
    let mut msg = vec![0u8; 4 + n];
    msg[..4].copy_from_slice(&len);
    r.read_exact(&mut msg[4..]).await?;
    Ok(Some(msg))
}

/// Passes requests from `step` to `agent` and its answers back, one at a
/// time (the agent protocol is request/answer), refusing what is not
/// [`ALLOWED`].
async fn read_only<S, A>(mut step: S, mut agent: A) -> std::io::Result<()>
where
    S: AsyncRead + AsyncWrite + Unpin,
    A: AsyncRead + AsyncWrite + Unpin,
{
    while let Some(request) = read_message(&mut step).await? {
        if !ALLOWED.contains(&request[4]) {
            step.write_all(&[0, 0, 0, 1, FAILURE]).await?;
            continue;
        }
        agent.write_all(&request).await?;
        let Some(answer) = read_message(&mut agent).await? else {
            return Ok(());
        };
        step.write_all(&answer).await?;
    }
    Ok(())
}

/// The client's SSH service over [`ForwardedAgents`].
#[derive(Clone, Debug)]
pub struct SshServerImpl {
    agents: Arc<ForwardedAgents>,
}

impl SshServerImpl {
    pub const METHODS: &'static [&'static str] = &["CheckAgent", "ForwardAgent"];

    pub fn new(agents: ForwardedAgents) -> SshServerImpl {
        SshServerImpl {
            agents: Arc::new(agents),
        }
    }

    /// The service to add to the session's services.
    pub fn into_service(self) -> SshServer<SshServerImpl> {
        SshServer::new(self)
    }
}

type BoxStream<T> = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = std::result::Result<T, Status>> + Send + 'static>,
>;

#[tonic::async_trait]
impl Ssh for SshServerImpl {
    async fn check_agent(
        &self,
        request: Request<CheckAgentRequest>,
    ) -> std::result::Result<Response<CheckAgentResponse>, Status> {
        let id = request.into_inner().id;
        match self.agents.check(&id) {
            Ok(()) => Ok(Response::new(CheckAgentResponse {})),
            Err(e) => Err(Status::not_found(e.to_string())),
        }
    }

    async fn forward_agent(
        &self,
        request: Request<Streaming<BytesMessage>>,
    ) -> std::result::Result<Response<BoxStream<BytesMessage>>, Status> {
        let id = request
            .metadata()
            .get(ID_KEY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let conn = match self.agents.connect(&id).await {
            Ok(c) => c,
            Err(e @ AgentError::Unset { .. }) => return Err(Status::not_found(e.to_string())),
            Err(e) => return Err(Status::unavailable(e.to_string())),
        };
        let inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        pump(conn, inbound, tx);
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// Copies `inbound` messages into `conn` and what `conn` says into `out`,
/// until either side ends.
fn pump<E: Send + 'static>(
    conn: DuplexStream,
    mut inbound: impl tokio_stream::Stream<Item = std::result::Result<BytesMessage, E>>
        + Send
        + Unpin
        + 'static,
    out: tokio::sync::mpsc::Sender<std::result::Result<BytesMessage, Status>>,
) where
    BytesMessage: Send,
{
    let (mut r, mut w) = tokio::io::split(conn);
    tokio::spawn(async move {
        while let Some(Ok(msg)) = inbound.next().await {
            if w.write_all(&msg.data).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; BUFFER];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let msg = BytesMessage {
                        data: buf[..n].to_vec(),
                    };
                    if out.send(Ok(msg)).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
}

/// The daemon side: whether the client forwards agent `id`. `Ok(false)`
/// when the client serves no SSH service at all.
pub async fn check_agent(channel: Channel, id: &str) -> Result<bool> {
    let req = CheckAgentRequest { id: id.to_string() };
    match SshClient::new(channel).check_agent(req).await {
        Ok(_) => Ok(true),
        Err(status) if status.code() == Code::Unimplemented => Ok(false),
        Err(status) => Err(SessionError::Call {
            method: CHECK_AGENT_METHOD,
            status,
        }),
    }
}

/// The daemon side: a new connection to the client's agent `id`, as a
/// byte stream. The call is made in the background (a Go client sends the
/// stream's headers only with its first answer, after the step's first
/// request), so a failure shows as the stream's end.
pub fn forward_agent(channel: Channel, id: &str) -> Result<DuplexStream> {
    let value = id.parse().map_err(|_| SessionError::Metadata {
        key: ID_KEY.to_string(),
    })?;
    let (ours, theirs) = tokio::io::duplex(BUFFER);
    let (mut r, mut w) = tokio::io::split(ours);
    let (tx, rx) = tokio::sync::mpsc::channel::<BytesMessage>(16);
    tokio::spawn(async move {
        let mut buf = vec![0u8; BUFFER];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let msg = BytesMessage {
                        data: buf[..n].to_vec(),
                    };
                    if tx.send(msg).await.is_err() {
                        break;
                    }
                }
            }
        }
    });
    tokio::spawn(async move {
        let mut req = Request::new(ReceiverStream::new(rx));
        req.metadata_mut().insert(ID_KEY, value);
        let mut inbound = match SshClient::new(channel).forward_agent(req).await {
            Ok(resp) => resp.into_inner(),
            Err(status) => {
                tracing::warn!(method = FORWARD_AGENT_METHOD, error = %status.message(), "cannot forward the client's ssh agent");
                return;
            }
        };
        while let Ok(Some(msg)) = inbound.message().await {
            if w.write_all(&msg.data).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    });
    Ok(theirs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hijack::{connect_session, loopback, serve_session, SessionServices};
    use tokio_util::sync::CancellationToken;

    /// An agent on a unix socket that answers every request with
    /// `SSH_AGENT_SUCCESS` followed by the request type, and counts them.
    async fn fake_agent(dir: &std::path::Path) -> (PathBuf, Arc<std::sync::Mutex<Vec<u8>>>) {
        let path = dir.join("agent.sock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    while let Ok(Some(m)) = read_message(&mut c).await {
                        log.lock().expect("lock").push(m[4]);
                        if c.write_all(&[0, 0, 0, 2, 6, m[4]]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (path, seen)
    }

    async fn ask<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, kind: u8) -> Vec<u8> {
        s.write_all(&[0, 0, 0, 1, kind]).await.expect("write");
        read_message(s).await.expect("read").expect("an answer")
    }

    #[tokio::test]
    async fn a_forwarded_agent_lists_and_signs_but_cannot_be_changed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (sock, seen) = fake_agent(dir.path()).await;
        let agents = ForwardedAgents::new(BTreeMap::from([("default".to_string(), sock)]));
        assert!(agents.check("").is_ok());
        assert_eq!(
            agents.check("gh").expect_err("unset").to_string(),
            "unset ssh forward key gh"
        );

        let (daemon, client) = loopback();
        let mut services = SessionServices::new();
        services.add(
            SshServerImpl::new(agents).into_service(),
            SshServerImpl::METHODS,
        );
        let cancel = CancellationToken::new();
        let served = tokio::spawn(serve_session(client, services, cancel.clone()));
        let channel = connect_session(daemon).await.expect("session connects");
        assert!(check_agent(channel.clone(), "").await.expect("checked"));
        let err = check_agent(channel.clone(), "gh").await.expect_err("unset");
        assert!(
            err.to_string().contains("unset ssh forward key gh"),
            "{err}"
        );

        let mut conn = forward_agent(channel.clone(), "default").expect("forwards");
        // List identities and sign reach the agent ...
        assert_eq!(ask(&mut conn, 11).await, vec![0, 0, 0, 2, 6, 11]);
        assert_eq!(ask(&mut conn, 13).await, vec![0, 0, 0, 2, 6, 13]);
        // ... adding a key, removing all and locking do not.
        for kind in [17, 19, 22, 27] {
            assert_eq!(ask(&mut conn, kind).await, vec![0, 0, 0, 1, FAILURE]);
        }
        assert_eq!(*seen.lock().expect("lock"), vec![11, 13]);
        // Closing our end ends the stream, so the session can end.
        drop(conn);
        cancel.cancel();
        let _ = served.await;
    }

    #[tokio::test]
    async fn a_client_without_the_service_forwards_nothing() {
        let (daemon, client) = loopback();
        let cancel = CancellationToken::new();
        let served = tokio::spawn(serve_session(
            client,
            SessionServices::new(),
            cancel.clone(),
        ));
        let channel = connect_session(daemon).await.expect("session connects");
        assert!(!check_agent(channel, "default").await.expect("checked"));
        cancel.cancel();
        let _ = served.await;
    }
}
