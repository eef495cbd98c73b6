//! The client's build policy (`PolicyVerifier.CheckPolicy`): the daemon
//! half asks it about one source; the client half serves a decision.
//!
//! buildx serves this service when a build has a policy (a
//! `Dockerfile.rego` beside the Dockerfile, `--policy`) and names its
//! session in `SolveRequest.SourcePolicySession`.

use crate::error::{Result, SessionError};
use kiln_proto::policysession::policy_verifier_client::PolicyVerifierClient;
use kiln_proto::policysession::policy_verifier_server::{PolicyVerifier, PolicyVerifierServer};
use kiln_proto::policysession::{CheckPolicyRequest, CheckPolicyResponse};
use std::sync::Arc;
use tonic::transport::Channel;

/// The full method path the client announces.
pub const CHECK_POLICY_METHOD: &str =
    "/moby.buildkit.v1.sourcepolicy.policysession.PolicyVerifier/CheckPolicy";

/// Asks the client's policy about `req`'s source.
pub async fn check(channel: Channel, req: CheckPolicyRequest) -> Result<CheckPolicyResponse> {
    PolicyVerifierClient::new(channel)
        .check_policy(req)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|status| SessionError::Call {
            method: CHECK_POLICY_METHOD,
            status,
        })
}

/// What a client's policy answers, one source at a time.
pub trait Policy: Send + Sync + std::fmt::Debug + 'static {
    fn check(&self, req: &CheckPolicyRequest) -> std::result::Result<CheckPolicyResponse, String>;
}

/// The client's PolicyVerifier service over a [`Policy`].
#[derive(Clone, Debug)]
pub struct PolicyServerImpl {
    policy: Arc<dyn Policy>,
}

impl PolicyServerImpl {
    pub const METHODS: &'static [&'static str] = &["CheckPolicy"];

    pub fn new(policy: Arc<dyn Policy>) -> PolicyServerImpl {
        PolicyServerImpl { policy }
    }

    /// The service to add to the session's services.
    pub fn into_service(self) -> PolicyVerifierServer<PolicyServerImpl> {
        PolicyVerifierServer::new(self)
    }
}

#[tonic::async_trait]
impl PolicyVerifier for PolicyServerImpl {
    async fn check_policy(
        &self,
        request: tonic::Request<CheckPolicyRequest>,
    ) -> std::result::Result<tonic::Response<CheckPolicyResponse>, tonic::Status> {
        self.policy
            .check(request.get_ref())
            .map(tonic::Response::new)
            .map_err(tonic::Status::invalid_argument)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hijack::{connect_session, loopback, serve_session, SessionServices};
    use kiln_proto::gateway::ResolveSourceMetaResponse;
    use kiln_proto::llb::SourceOp;
    use kiln_proto::policysession::check_policy_response::Result as Answer;
    use kiln_proto::policysession::DecisionResponse;
    use kiln_proto::sourcepolicy::PolicyAction;
    use tokio_util::sync::CancellationToken;

    /// Denies every image, allows the rest.
    #[derive(Debug)]
    struct NoImages;

    impl Policy for NoImages {
        fn check(
            &self,
            req: &CheckPolicyRequest,
        ) -> std::result::Result<CheckPolicyResponse, String> {
            let id = req
                .source
                .as_ref()
                .and_then(|s| s.source.as_ref())
                .map(|s| s.identifier.clone())
                .ok_or("no source")?;
            let action = if id.starts_with("docker-image://") {
                PolicyAction::Deny
            } else {
                PolicyAction::Allow
            };
            Ok(CheckPolicyResponse {
                result: Some(Answer::Decision(DecisionResponse {
                    action: action as i32,
                    ..Default::default()
                })),
            })
        }
    }

    fn asking(id: &str) -> CheckPolicyRequest {
        CheckPolicyRequest {
            source: Some(ResolveSourceMetaResponse {
                source: Some(SourceOp {
                    identifier: id.to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn action(r: CheckPolicyResponse) -> Option<i32> {
        match r.result {
            Some(Answer::Decision(d)) => Some(d.action),
            _ => None,
        }
    }

    #[tokio::test]
    async fn the_daemon_gets_the_clients_decision_per_source() {
        let (daemon_io, client_io) = loopback();
        let mut services = SessionServices::new();
        services.add(
            PolicyServerImpl::new(Arc::new(NoImages)).into_service(),
            PolicyServerImpl::METHODS,
        );
        let stop = CancellationToken::new();
        let served = tokio::spawn(serve_session(client_io, services.clone(), stop.clone()));
        let channel = connect_session(daemon_io).await.expect("connect");
        assert!(services.methods().iter().any(|m| m == CHECK_POLICY_METHOD));
        let image = check(
            channel.clone(),
            asking("docker-image://docker.io/library/a:1"),
        )
        .await
        .expect("check");
        assert_eq!(action(image), Some(PolicyAction::Deny as i32));
        let local = check(channel.clone(), asking("local://context"))
            .await
            .expect("check");
        assert_eq!(action(local), Some(PolicyAction::Allow as i32));
        let bad = check(channel, CheckPolicyRequest::default()).await;
        assert!(
            matches!(&bad, Err(SessionError::Call { status, .. }) if status.message() == "no source"),
            "{bad:?}"
        );
        stop.cancel();
        let _ = served.await;
    }
}
