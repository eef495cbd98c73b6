//! Registry credentials of a build: borrowed from the client through its
//! session (`Auth.Credentials`, asked again whenever a registry wants
//! them), never stored by the daemon and never read from the daemon's own
//! environment.

use kiln_registry::{Credential, Credentials, RegistryError};
use tonic::transport::Channel;

/// The client's logins, through its session. Without a session, or when
/// the client does not offer the Auth service, every registry is
/// anonymous.
#[derive(Clone, Debug)]
pub struct SessionCredentials {
    channel: Option<Channel>,
}

impl SessionCredentials {
    /// Credentials asked of the client of `session`.
    pub fn new(session: Option<&crate::sessions::SessionHandle>) -> SessionCredentials {
        SessionCredentials {
            channel: session
                .filter(|s| s.exposes(kiln_session::auth::CREDENTIALS_METHOD))
                .map(|s| s.channel.clone()),
        }
    }
}

#[async_trait::async_trait]
impl Credentials for SessionCredentials {
    async fn get(&self, host: &str) -> Result<Option<Credential>, RegistryError> {
        let Some(channel) = self.channel.clone() else {
            return Ok(None);
        };
        let got = kiln_session::auth::credentials(channel, host)
            .await
            .map_err(|e| RegistryError::Credentials {
                host: host.to_string(),
                message: format!("from the client's session: {e}"),
            })?;
        Ok(got.map(|c| {
            // BuildKit's clients send an identity token as a secret
            // without a username.
            if c.username.is_empty() {
                Credential::IdentityToken(c.secret)
            } else {
                Credential::Basic {
                    username: c.username,
                    password: c.secret,
                }
            }
        }))
    }
}
