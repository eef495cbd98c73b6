//! A build's secrets (`RUN --mount=type=secret`, secret env): asked of the
//! client through its session (`Secrets.GetSecret`) when a step needs one,
//! never stored by the daemon, never read from the daemon's environment.

use kiln_engine::secrets::{SecretError, SecretSource};
use tonic::transport::Channel;

/// The client's secrets, through its session. Without a session, or when
/// the client offers no Secrets service, the client has none.
#[derive(Clone, Debug)]
pub struct SessionSecrets {
    channel: Option<Channel>,
}

impl SessionSecrets {
    pub fn new(session: Option<&crate::sessions::SessionHandle>) -> SessionSecrets {
        SessionSecrets {
            channel: session
                .filter(|s| s.exposes(kiln_session::secrets::GET_SECRET_METHOD))
                .map(|s| s.channel.clone()),
        }
    }
}

#[async_trait::async_trait]
impl SecretSource for SessionSecrets {
    async fn get(&self, id: &str) -> Result<Option<Vec<u8>>, SecretError> {
        let Some(channel) = self.channel.clone() else {
            return Ok(None);
        };
        kiln_session::secrets::secret(channel, id)
            .await
            .map_err(|e| SecretError {
                id: id.to_string(),
                reason: format!("from the client's session: {e}"),
            })
    }
}
