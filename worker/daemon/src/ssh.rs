//! A build's SSH agents (`RUN --mount=type=ssh`): each connection a step
//! makes to its socket becomes a `ForwardAgent` stream to the client's
//! session, checked first with `CheckAgent`. kilnd never holds a key and
//! never dials an agent of its own host.

use kiln_engine::ssh::{AgentStream, SshError, SshSource};
use tonic::transport::Channel;

/// The client's agents, through its session. Without a session, or when
/// the client offers no SSH service, no agent is forwarded.
#[derive(Clone, Debug)]
pub struct SessionSsh {
    channel: Option<Channel>,
}

impl SessionSsh {
    pub fn new(session: Option<&crate::sessions::SessionHandle>) -> SessionSsh {
        SessionSsh {
            channel: session
                .filter(|s| s.exposes(kiln_session::ssh::CHECK_AGENT_METHOD))
                .map(|s| s.channel.clone()),
        }
    }
}

#[async_trait::async_trait]
impl SshSource for SessionSsh {
    async fn check(&self, id: &str) -> Result<(), SshError> {
        let Some(channel) = self.channel.clone() else {
            return Err(SshError::NotForwarded { id: id.to_string() });
        };
        match kiln_session::ssh::check_agent(channel, id).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(SshError::NotForwarded { id: id.to_string() }),
            // The client's own words (e.g. "unset ssh forward key x").
            Err(kiln_session::SessionError::Call { status, .. }) => Err(SshError::Agent {
                id: id.to_string(),
                reason: status.message().to_string(),
            }),
            Err(e) => Err(SshError::Agent {
                id: id.to_string(),
                reason: format!("from the client's session: {e}"),
            }),
        }
    }

    async fn connect(&self, id: &str) -> Result<Box<dyn AgentStream>, SshError> {
        let Some(channel) = self.channel.clone() else {
            return Err(SshError::NotForwarded { id: id.to_string() });
        };
        kiln_session::ssh::forward_agent(channel, id)
            .map(|s| Box::new(s) as Box<dyn AgentStream>)
            .map_err(|e| SshError::Agent {
                id: id.to_string(),
                reason: e.to_string(),
            })
    }
}
