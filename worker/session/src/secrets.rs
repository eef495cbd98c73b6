//! `moby.buildkit.secrets.v1.Secrets`: the client's secrets, asked for by
//! the daemon one id at a time when a step mounts one (buildkit-protocol.md
//! §4). BuildKit's client answers `NotFound` for an id it has no secret
//! for, and so does [`SecretsServerImpl`]; [`secret`] turns that (and a
//! client without the service) into `None`.

use std::sync::Arc;

use kiln_proto::secrets::secrets_client::SecretsClient;
use kiln_proto::secrets::secrets_server::{Secrets, SecretsServer};
use kiln_proto::secrets::{GetSecretRequest, GetSecretResponse};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::error::{Result, SessionError};

/// The full method path the daemon calls.
pub const GET_SECRET_METHOD: &str = "/moby.buildkit.secrets.v1.Secrets/GetSecret";

/// Where the client reads its secrets.
pub trait SecretStore: Send + Sync + std::fmt::Debug + 'static {
    /// The secret `id`'s bytes; `Ok(None)` when there is no such secret.
    fn secret(&self, id: &str) -> std::io::Result<Option<Vec<u8>>>;
}

/// The client's Secrets service over a [`SecretStore`].
#[derive(Clone, Debug)]
pub struct SecretsServerImpl {
    store: Arc<dyn SecretStore>,
}

impl SecretsServerImpl {
    pub const METHODS: &'static [&'static str] = &["GetSecret"];

    pub fn new(store: Arc<dyn SecretStore>) -> SecretsServerImpl {
        SecretsServerImpl { store }
    }

    /// The service to add to the session's services.
    pub fn into_service(self) -> SecretsServer<SecretsServerImpl> {
        SecretsServer::new(self)
    }
}

#[tonic::async_trait]
impl Secrets for SecretsServerImpl {
    async fn get_secret(
        &self,
        request: Request<GetSecretRequest>,
    ) -> std::result::Result<Response<GetSecretResponse>, Status> {
        let id = request.into_inner().id;
        tracing::debug!(%id, "the daemon asks for a secret");
        match self.store.secret(&id) {
            Ok(Some(data)) => Ok(Response::new(GetSecretResponse { data })),
            Ok(None) => Err(Status::not_found(format!("secret {id}: not found"))),
            Err(e) => Err(Status::unavailable(format!("secret {id}: {e}"))),
        }
    }
}

/// The daemon side: the client's secret `id`, `None` when the client has
/// none (or serves no Secrets service).
pub async fn secret(channel: Channel, id: &str) -> Result<Option<Vec<u8>>> {
    let req = GetSecretRequest {
        id: id.to_string(),
        annotations: Default::default(),
    };
    match SecretsClient::new(channel).get_secret(req).await {
        Ok(resp) => Ok(Some(resp.into_inner().data)),
        Err(status) if matches!(status.code(), Code::NotFound | Code::Unimplemented) => Ok(None),
        Err(status) => Err(SessionError::Call {
            method: GET_SECRET_METHOD,
            status,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hijack::{connect_session, loopback, serve_session, SessionServices};
    use tokio_util::sync::CancellationToken;

    #[derive(Debug)]
    struct One;

    impl SecretStore for One {
        fn secret(&self, id: &str) -> std::io::Result<Option<Vec<u8>>> {
            Ok((id == "tok").then(|| b"s3cret".to_vec()))
        }
    }

    #[tokio::test]
    async fn the_daemon_gets_a_secret_through_the_session() {
        let (daemon, client) = loopback();
        let mut services = SessionServices::new();
        services.add(
            SecretsServerImpl::new(Arc::new(One)).into_service(),
            SecretsServerImpl::METHODS,
        );
        let cancel = CancellationToken::new();
        let served = tokio::spawn(serve_session(client, services, cancel.clone()));
        let channel = connect_session(daemon).await.expect("session connects");
        assert_eq!(
            secret(channel.clone(), "tok").await.expect("asked"),
            Some(b"s3cret".to_vec())
        );
        assert_eq!(secret(channel, "other").await.expect("asked"), None);
        cancel.cancel();
        let _ = served.await;
    }
}
