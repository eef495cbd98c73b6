//! The client's build policy (`SolveRequest.SourcePolicySession`): buildx
//! serves one in its session when a build has a `Dockerfile.rego` or
//! `--policy`, and kilnd asks it about every source of the build before
//! anything of the build runs, as BuildKit does when it loads a
//! definition.
//!
//! The policy's `ALLOW` lets the source through and `DENY` (or an action
//! kiln does not know) fails the build with BuildKit's text. A policy that wants to
//! rewrite a source (`CONVERT`) or needs to see more of it first (an
//! image's config, a git commit: a metadata request) fails the build as
//! not supported yet: kilnd never builds what the policy did not allow.

use crate::jobs::Job;
use crate::sessions::SessionHandle;
use kiln_proto::gateway::ResolveSourceMetaResponse;
use kiln_proto::policysession::check_policy_response::Result as Answer;
use kiln_proto::policysession::{CheckPolicyRequest, CheckPolicyResponse};
use kiln_proto::sourcepolicy::PolicyAction;
use kiln_solver::graph::{Graph, Op, SourceOp};
use std::collections::HashSet;
use tonic::Status;

/// Asks the job's policy session, if it has one, about each distinct
/// source of `graph`; the first source it does not allow fails the build.
pub async fn check(d: &crate::state::Daemon, job: &Job, graph: &Graph) -> Result<(), Status> {
    let Some(key) = job.policy_session() else {
        return Ok(());
    };
    let session = d
        .sessions
        .get(&key, crate::control::SESSION_WAIT)
        .await
        .ok_or_else(|| {
            Status::failed_precondition(format!(
                "the build's policy session {:?} is not attached",
                crate::tenants::unscoped(job.tenant().as_deref(), &key)
            ))
        })?;
    let mut asked = HashSet::new();
    for v in &graph.vertices {
        let Op::Source(s) = &v.op else { continue };
        if asked.insert(serde_json::to_string(s).unwrap_or_default()) {
            ask(&session, s).await?;
        }
    }
    Ok(())
}

async fn ask(session: &SessionHandle, s: &SourceOp) -> Result<(), Status> {
    if !session.exposes(kiln_session::policy::CHECK_POLICY_METHOD) {
        return Err(Status::failed_precondition(
            "the build names a policy session, but the client's session serves no PolicyVerifier",
        ));
    }
    let req = CheckPolicyRequest {
        platform: s.platform.as_ref().map(|p| kiln_proto::llb::Platform {
            architecture: p.architecture.clone(),
            os: p.os.clone(),
            variant: p.variant.clone(),
            ..Default::default()
        }),
        source: Some(ResolveSourceMetaResponse {
            source: Some(kiln_proto::llb::SourceOp {
                identifier: s.identifier.clone(),
                attrs: s
                    .attrs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            }),
            ..Default::default()
        }),
        caps: Default::default(),
    };
    let answer = kiln_session::policy::check(session.channel.clone(), req)
        .await
        .map_err(|e| Status::new(e.kind().code(), e.to_string()))?;
    decide(&s.identifier, answer)
}

/// What the policy's answer about the source `identifier` means for the
/// build.
fn decide(identifier: &str, answer: CheckPolicyResponse) -> Result<(), Status> {
    let decision = match answer.result {
        Some(Answer::Decision(d)) => d,
        Some(Answer::Request(_)) => {
            return Err(Status::unimplemented(format!(
                "the build policy asks for the metadata of source {identifier:?} before it \
                 decides; policies that need source metadata are not supported yet"
            )))
        }
        None => return Err(Status::internal("no decision in policy response")),
    };
    match PolicyAction::try_from(decision.action) {
        Ok(PolicyAction::Allow) => Ok(()),
        Ok(PolicyAction::Convert) => Err(Status::unimplemented(format!(
            "the build policy converts source {identifier:?}; policy conversions are not \
             supported yet"
        ))),
        action => {
            // BuildKit's text and code (Unknown, so clients print no code);
            // the policy's own messages are the client's to show (buildx
            // logs them under "loading policies").
            let name = action.map_or_else(
                |_| decision.action.to_string(),
                |a| a.as_str_name().to_string(),
            );
            Err(Status::unknown(format!(
                "source {identifier:?} not allowed by policy: action {name}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_proto::gateway::ResolveSourceMetaRequest;
    use kiln_proto::policysession::{DecisionResponse, DenyMessage};

    fn decision(action: PolicyAction, messages: &[&str]) -> CheckPolicyResponse {
        CheckPolicyResponse {
            result: Some(Answer::Decision(DecisionResponse {
                action: action as i32,
                deny_messages: messages
                    .iter()
                    .map(|m| DenyMessage {
                        message: m.to_string(),
                    })
                    .collect(),
                update: None,
            })),
        }
    }

    #[test]
    fn only_allow_lets_a_source_through() {
        let id = "docker-image://docker.io/library/busybox:latest";
        assert!(decide(id, decision(PolicyAction::Allow, &[])).is_ok());
        let denied =
            decide(id, decision(PolicyAction::Deny, &["untrusted base"])).expect_err("denied");
        assert_eq!(denied.code(), tonic::Code::Unknown);
        assert_eq!(
            denied.message(),
            "source \"docker-image://docker.io/library/busybox:latest\" not allowed by policy: \
             action DENY"
        );
        let converted = decide(id, decision(PolicyAction::Convert, &[])).expect_err("converted");
        assert_eq!(converted.code(), tonic::Code::Unimplemented);
        assert!(converted.message().contains("not supported yet"));
        let asks = CheckPolicyResponse {
            result: Some(Answer::Request(ResolveSourceMetaRequest::default())),
        };
        let asked = decide(id, asks).expect_err("asks for metadata");
        assert_eq!(asked.code(), tonic::Code::Unimplemented);
        assert!(asked.message().contains("not supported yet"));
        let unknown = CheckPolicyResponse {
            result: Some(Answer::Decision(DecisionResponse {
                action: 7,
                ..Default::default()
            })),
        };
        assert!(decide(id, unknown)
            .expect_err("an unknown action")
            .message()
            .contains("action 7"));
        assert!(decide(id, CheckPolicyResponse::default()).is_err());
    }
}
