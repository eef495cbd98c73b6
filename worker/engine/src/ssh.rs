//! The client's SSH agents for `RUN --mount=type=ssh`: the engine asks an
//! [`SshSource`] whether an agent id is forwarded before the step, and for
//! a fresh connection to it each time the step connects to its socket.
//! Embedded kiln dials the `--ssh` sockets; kilnd opens a `ForwardAgent`
//! stream to the client's session. No key, socket path or agent byte
//! enters the graph, a cache key, a layer or a log.

use tokio::io::{AsyncRead, AsyncWrite};

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
