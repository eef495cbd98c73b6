//! `moby.filesync.v1.Auth`: registry credentials that the client lends the
//! daemon one request at a time (buildkit-protocol.md §4), so a daemon
//! pushes and pulls as the user without ever holding the user's secrets.
//!
//! The daemon asks `Credentials{Host}` whenever a registry wants them; the
//! client answers from its own store (the kiln CLI: `~/.docker/config.json`
//! and its helpers). An empty username and secret means anonymous, and so
//! does a client without the service. Docker Hub is asked for as
//! `registry-1.docker.io`, as BuildKit's daemon does.
//!
//! `FetchToken`, `GetTokenAuthority` and `VerifyTokenAuthority` (BuildKit's
//! token-authority mode, where the client signs tokens itself) are answered
//! `Unimplemented`, which BuildKit's daemon takes to mean "use
//! `Credentials`"; kilnd never calls them.

use std::sync::Arc;

use kiln_proto::filesync::auth_client::AuthClient;
use kiln_proto::filesync::auth_server::{Auth, AuthServer};
use kiln_proto::filesync::{CredentialsRequest, CredentialsResponse};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::error::{Result, SessionError};

/// The full method path the daemon calls.
pub const CREDENTIALS_METHOD: &str = "/moby.filesync.v1.Auth/Credentials";

/// The host Docker Hub's credentials are asked for on the wire.
pub const DOCKER_HUB_HOST: &str = "registry-1.docker.io";

/// A registry login the client lends for one request.
#[derive(Clone, PartialEq, Eq)]
pub struct HostCredentials {
    pub username: String,
    /// A password or an identity token.
    pub secret: String,
}

impl std::fmt::Debug for HostCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret, even in a failed assertion or a log.
        f.debug_struct("HostCredentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// The error a [`CredentialSource`] may answer with (a credential helper
/// that failed); its message reaches the daemon.
pub type SourceError = Box<dyn std::error::Error + Send + Sync>;

/// Where the client finds credentials for a registry host.
#[tonic::async_trait]
pub trait CredentialSource: Send + Sync + std::fmt::Debug + 'static {
    /// The login for `host` as the daemon names it (`registry-1.docker.io`
    /// for Docker Hub, else `host[:port]`); `None` = anonymous.
    async fn credentials(
        &self,
        host: &str,
    ) -> std::result::Result<Option<HostCredentials>, SourceError>;
}

/// The client's Auth service over a [`CredentialSource`].
#[derive(Clone, Debug)]
pub struct AuthServerImpl {
    source: Arc<dyn CredentialSource>,
}

impl AuthServerImpl {
    /// The methods to announce: all of the service's, as BuildKit clients
    /// do, so a daemon that probes the token-authority calls gets the
    /// `Unimplemented` it tolerates.
    pub const METHODS: &'static [&'static str] = &[
        "Credentials",
        "FetchToken",
        "GetTokenAuthority",
        "VerifyTokenAuthority",
    ];

    /// Serves the logins of `source`.
    pub fn new(source: Arc<dyn CredentialSource>) -> AuthServerImpl {
        AuthServerImpl { source }
    }

    /// The service to add to the session's services.
    pub fn into_service(self) -> AuthServer<AuthServerImpl> {
        AuthServer::new(self)
    }
}

#[tonic::async_trait]
impl Auth for AuthServerImpl {
    async fn credentials(
        &self,
        request: Request<CredentialsRequest>,
    ) -> std::result::Result<Response<CredentialsResponse>, Status> {
        let host = request.into_inner().host;
        tracing::debug!(%host, "the daemon asks for registry credentials");
        match self.source.credentials(&host).await {
            Ok(Some(c)) => Ok(Response::new(CredentialsResponse {
                username: c.username,
                secret: c.secret,
            })),
            Ok(None) => Ok(Response::new(CredentialsResponse::default())),
            Err(e) => Err(Status::unavailable(format!(
                "cannot get credentials for {host}: {e}"
            ))),
        }
    }
}

/// The host to ask the client for: Docker Hub's aliases become
/// [`DOCKER_HUB_HOST`], every other host stays as it is.
pub fn wire_host(host: &str) -> &str {
    match host {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB_HOST,
        other => other,
    }
}

/// The daemon side: asks the client for its login to `host`. A client
/// without the Auth service, or one that answers an empty username and
/// secret, means anonymous (`None`).
pub async fn credentials(channel: Channel, host: &str) -> Result<Option<HostCredentials>> {
    let req = CredentialsRequest {
        host: wire_host(host).to_string(),
    };
    match AuthClient::new(channel).credentials(req).await {
        Ok(resp) => {
            let resp = resp.into_inner();
            if resp.username.is_empty() && resp.secret.is_empty() {
                Ok(None)
            } else {
                Ok(Some(HostCredentials {
                    username: resp.username,
                    secret: resp.secret,
                }))
            }
        }
        Err(status) if status.code() == Code::Unimplemented => Ok(None),
        Err(status) => Err(SessionError::Call {
            method: CREDENTIALS_METHOD,
            status,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hijack::{connect_session, loopback, serve_session, SessionServices};
    use kiln_proto::filesync::{FetchTokenRequest, GetTokenAuthorityRequest};
    use std::sync::Mutex;
    use tokio_util::sync::CancellationToken;

    /// Answers from a fixed table and records the hosts asked for.
    #[derive(Debug, Default)]
    struct Table {
        asked: Mutex<Vec<String>>,
    }

    #[tonic::async_trait]
    impl CredentialSource for Table {
        async fn credentials(
            &self,
            host: &str,
        ) -> std::result::Result<Option<HostCredentials>, SourceError> {
            self.asked
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(host.to_string());
            match host {
                "registry-1.docker.io" => Ok(Some(HostCredentials {
                    username: "hub".into(),
                    secret: "hubpass".into(),
                })),
                "127.0.0.1:5000" => Ok(Some(HostCredentials {
                    username: "me".into(),
                    secret: "pw".into(),
                })),
                "broken.example" => Err("docker-credential-pass: not initialized".into()),
                _ => Ok(None),
            }
        }
    }

    async fn session(services: SessionServices) -> (Channel, CancellationToken) {
        let (daemon, client) = loopback();
        let cancel = CancellationToken::new();
        tokio::spawn(serve_session(client, services, cancel.clone()));
        (connect_session(daemon).await.expect("connect"), cancel)
    }

    #[tokio::test]
    async fn the_daemon_gets_the_clients_login_per_host() {
        let table = Arc::new(Table::default());
        let mut services = SessionServices::new();
        services.add(
            AuthServerImpl::new(table.clone()).into_service(),
            AuthServerImpl::METHODS,
        );
        assert!(services.methods().iter().any(|m| m == CREDENTIALS_METHOD));
        let (channel, cancel) = session(services).await;

        let got = credentials(channel.clone(), "127.0.0.1:5000")
            .await
            .expect("credentials");
        assert_eq!(
            got,
            Some(HostCredentials {
                username: "me".into(),
                secret: "pw".into()
            })
        );
        // Docker Hub is asked for under BuildKit's wire name.
        let hub = credentials(channel.clone(), "docker.io")
            .await
            .expect("hub");
        assert_eq!(hub.map(|c| c.username).as_deref(), Some("hub"));
        // No login: anonymous.
        assert_eq!(
            credentials(channel.clone(), "other.example:443")
                .await
                .expect("anonymous"),
            None
        );
        // A failing helper is an error naming the host and the cause.
        let err = credentials(channel.clone(), "broken.example")
            .await
            .expect_err("helper failed");
        assert_eq!(err.kind(), kiln_proto::ErrorKind::Unavailable);
        assert!(
            err.to_string()
                .contains("cannot get credentials for broken.example: docker-credential-pass"),
            "{err}"
        );
        assert_eq!(
            *table.asked.lock().expect("lock"),
            [
                "127.0.0.1:5000",
                "registry-1.docker.io",
                "other.example:443",
                "broken.example"
            ]
        );

        // The token-authority calls are Unimplemented.
        let mut client = AuthClient::new(channel.clone());
        let fetch = client
            .fetch_token(FetchTokenRequest::default())
            .await
            .expect_err("no FetchToken");
        assert_eq!(fetch.code(), Code::Unimplemented);
        let authority = client
            .get_token_authority(GetTokenAuthorityRequest::default())
            .await
            .expect_err("no GetTokenAuthority");
        assert_eq!(authority.code(), Code::Unimplemented);
        cancel.cancel();
    }

    #[tokio::test]
    async fn a_client_without_the_auth_service_is_anonymous() {
        let (channel, cancel) = session(SessionServices::new()).await;
        assert_eq!(
            credentials(channel, "127.0.0.1:5000")
                .await
                .expect("anonymous"),
            None
        );
        cancel.cancel();
    }

    #[test]
    fn secrets_are_not_printed() {
        let c = HostCredentials {
            username: "me".into(),
            secret: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
