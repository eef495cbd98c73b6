//! The client's build policy (`SolveRequest.SourcePolicySession`): buildx
//! serves one in its session when a build has a `Dockerfile.rego` or
//! `--policy`, and kilnd asks it about every source of the build before
//! anything of the build runs, as BuildKit does when it loads a
//! definition, and about every image before its config is looked up (a
//! Dockerfile's base, a frontend image, a frontend's `ResolveImageConfig`),
//! as BuildKit's bridge does before it resolves an image's metadata, and
//! about the client's directories before the Dockerfile frontend reads its
//! Dockerfile or a `.dockerignore` from them (`local://NAME`), as
//! BuildKit's frontend reads them through local sources.
//!
//! The policy's `ALLOW` lets the source through and `DENY` (or an action
//! kiln does not know) fails the build with BuildKit's text. A policy may
//! first ask to see more of a source: for an image, kilnd resolves its
//! digest and config (as `ResolveImageConfig` does, in the resolve mode the
//! policy asks for and with the client's registry logins) and asks again. A
//! policy that wants to rewrite a source (`CONVERT`), or asks for what
//! kilnd cannot resolve yet (an image's attestations and signatures, a
//! git or http source's metadata), fails the build as not supported yet:
//! kilnd never builds what the policy did not allow.

use crate::jobs::Job;
use crate::sessions::SessionHandle;
use kiln_proto::gateway::{
    ResolveSourceImageResponse, ResolveSourceMetaRequest, ResolveSourceMetaResponse,
};
use kiln_proto::policysession::check_policy_response::Result as Answer;
use kiln_proto::policysession::{CheckPolicyRequest, DecisionResponse};
use kiln_proto::sourcepolicy::PolicyAction;
use kiln_solver::graph::{Graph, Op, SourceOp};
use std::sync::Arc;
use tonic::Status;

/// How many times one source may be asked about (BuildKit's bound on a
/// policy that keeps asking for metadata).
const MAX_ROUNDS: usize = 10;

/// What a policy's metadata requests are resolved with: the build's engine
/// and the client's registry logins.
pub struct Resolver<'a> {
    pub engine: &'a kiln_engine::Engine,
    pub credentials: Arc<dyn kiln_registry::Credentials>,
}

/// Asks the job's policy session, if it has one, about each distinct
/// source of `graph`; the first source it does not allow fails the build,
/// worded as BuildKit words a definition it will not load.
pub async fn check(
    d: &crate::state::Daemon,
    job: &Job,
    resolver: &Resolver<'_>,
    graph: &Graph,
) -> Result<(), Status> {
    let sources = graph.vertices.iter().filter_map(|v| match &v.op {
        Op::Source(s) => Some(s),
        _ => None,
    });
    check_sources(d, job, resolver, sources)
        .await
        .map_err(not_loaded)
}

/// `s` as the error of a definition BuildKit's policy stopped it loading.
fn not_loaded(s: Status) -> Status {
    Status::new(
        s.code(),
        format!(
            "failed to load LLB: error evaluating the source policy: {}",
            s.message()
        ),
    )
}

/// [`check`] of `sources` (a remote context's source before the frontend
/// fetches its Dockerfile, as BuildKit's frontend solves it through the
/// policy too).
pub async fn check_sources<'s>(
    d: &crate::state::Daemon,
    job: &Job,
    resolver: &Resolver<'_>,
    sources: impl Iterator<Item = &'s SourceOp>,
) -> Result<(), Status> {
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
    if !session.exposes(kiln_session::policy::CHECK_POLICY_METHOD) {
        return Err(Status::failed_precondition(
            "the build names a policy session, but the client's session serves no PolicyVerifier",
        ));
    }
    // A build has few sources; each distinct one is asked once.
    let mut asked: Vec<&SourceOp> = Vec::new();
    for s in sources {
        if !asked.contains(&s) {
            asked.push(s);
            ask(&session, resolver, s).await?;
        }
    }
    Ok(())
}

/// Asks the policy about the image `name` (normalized) for `platform`
/// before its config is looked up, as BuildKit does before it resolves any
/// image's metadata: so no registry is asked about an image the policy
/// denies, and the denial, not a failed pull, is what the client reads.
pub async fn check_image(
    d: &crate::state::Daemon,
    job: &Job,
    resolver: &Resolver<'_>,
    name: &str,
    platform: Option<&kiln_solver::Platform>,
) -> Result<(), Status> {
    let op = SourceOp {
        identifier: format!("docker-image://{name}"),
        attrs: Default::default(),
        platform: platform.cloned(),
    };
    check_sources(d, job, resolver, std::iter::once(&op))
        .await
        .map_err(|s| {
            Status::new(
                s.code(),
                format!("could not resolve image due to policy: {}", s.message()),
            )
        })
}

/// Asks the policy about the client's directory `name` before the
/// frontend reads `paths` of it: BuildKit's frontend reads the Dockerfile
/// and `.dockerignore` files through local sources, which a policy sees
/// as `local://NAME` (buildx's `input.local.name`); a denial is worded as
/// for a definition BuildKit will not load.
pub async fn check_local(
    d: &crate::state::Daemon,
    job: &Job,
    resolver: &Resolver<'_>,
    name: &str,
    paths: &[String],
) -> Result<(), Status> {
    let op = SourceOp {
        identifier: format!("local://{name}"),
        attrs: [
            (
                "local.followpaths".to_string(),
                serde_json::to_string(paths).unwrap_or_default(),
            ),
            ("local.sharedkeyhint".to_string(), name.to_string()),
        ]
        .into(),
        platform: None,
    };
    check_sources(d, job, resolver, std::iter::once(&op))
        .await
        .map_err(not_loaded)
}

/// The base images the Dockerfile frontend looks up, each asked of the
/// client's policy first ([`check_image`]; an OCI layout context's image
/// is local and asked about when the build is solved).
pub struct CheckedImages<'a, I> {
    d: &'a crate::state::Daemon,
    job: &'a Job,
    resolver: Resolver<'a>,
    inner: I,
    denied: std::sync::Mutex<Option<tonic::Code>>,
}

impl<'a, I> CheckedImages<'a, I> {
    pub fn new(
        d: &'a crate::state::Daemon,
        job: &'a Job,
        resolver: Resolver<'a>,
        inner: I,
    ) -> Self {
        CheckedImages {
            d,
            job,
            resolver,
            inner,
            denied: Default::default(),
        }
    }

    pub fn inner(&self) -> &I {
        &self.inner
    }

    /// The code of the policy's answer that stopped a lookup (the
    /// frontend's error carries its text, worded as BuildKit's, but not
    /// its code).
    pub fn take_denied(&self) -> Option<tonic::Code> {
        self.denied.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

impl<I: kiln_frontend::ImageConfigs + Sync> kiln_frontend::ImageConfigs for CheckedImages<'_, I> {
    async fn image_config(
        &self,
        reference: &str,
        platform: Option<&kiln_solver::Platform>,
        shown: Option<&kiln_solver::Platform>,
    ) -> Result<kiln_solver::ImageConfig, kiln_engine::error::WorkerError> {
        if kiln_dockerfile::OciLayoutRef::from_key(reference).is_none() {
            if let Err(s) = check_image(self.d, self.job, &self.resolver, reference, platform).await
            {
                *self.denied.lock().unwrap_or_else(|p| p.into_inner()) = Some(s.code());
                return Err(kiln_engine::error::WorkerError::Source {
                    location: String::new(),
                    message: s.message().to_string(),
                });
            }
        }
        self.inner.image_config(reference, platform, shown).await
    }

    fn pinned_digest(
        &self,
        reference: &str,
        platform: Option<&kiln_solver::Platform>,
    ) -> Option<String> {
        self.inner.pinned_digest(reference, platform)
    }
}

async fn ask(session: &SessionHandle, resolver: &Resolver<'_>, s: &SourceOp) -> Result<(), Status> {
    // An image is asked about for a platform, the worker's when the source
    // names none (BuildKit's frontends always name one).
    let platform = s.platform.clone().or_else(|| {
        s.identifier
            .starts_with("docker-image://")
            .then(kiln_engine::oci::worker_platform)
    });
    let mut req = CheckPolicyRequest {
        platform: platform.as_ref().map(crate::definition::llb_platform),
        source: Some(ResolveSourceMetaResponse {
            source: Some(crate::definition::llb_source(s)),
            ..Default::default()
        }),
        caps: Default::default(),
    };
    for _ in 0..MAX_ROUNDS {
        let answer = kiln_session::policy::check(session.channel.clone(), req.clone())
            .await
            .map_err(|e| Status::new(e.kind().code(), e.to_string()))?;
        match answer.result {
            Some(Answer::Request(meta)) => {
                req.source = Some(resolve(resolver, s, meta).await?);
            }
            Some(Answer::Decision(d)) => return decide(&s.identifier, &d),
            None => return Err(Status::unknown("no decision in policy response")),
        }
    }
    Err(Status::unknown("too many policy requests"))
}

/// Resolves what the policy asked to see of the source `s` (BuildKit's
/// checks and texts where it has them).
async fn resolve(
    resolver: &Resolver<'_>,
    s: &SourceOp,
    meta: ResolveSourceMetaRequest,
) -> Result<ResolveSourceMetaResponse, Status> {
    let asked = meta.source.clone().unwrap_or_default();
    if asked.identifier != s.identifier {
        return Err(Status::unknown(format!(
            "policy requested different source identifier: {:?} != {:?}",
            asked.identifier, s.identifier
        )));
    }
    let same_attrs = asked.attrs.len() == s.attrs.len()
        && s.attrs.iter().all(|(k, v)| asked.attrs.get(k) == Some(v));
    if !same_attrs {
        return Err(Status::unknown("policy requested different source attrs"));
    }
    let not_yet = |what: &str| {
        Status::unimplemented(format!(
            "the build policy asks for {what} of source {:?} before it decides; that is not \
             supported yet",
            s.identifier
        ))
    };
    let Some(name) = s.identifier.strip_prefix("docker-image://") else {
        return Err(not_yet("the metadata"));
    };
    let image = meta.image.unwrap_or_default();
    if image.attestation_chain || !image.resolve_attestations.is_empty() {
        return Err(not_yet("the attestations and signatures"));
    }
    let mode = crate::gateway::resolve_mode(&meta.resolve_mode)?;
    let platform = match &meta.platform {
        Some(p) => Some(kiln_solver::Platform::new(
            &p.os,
            &p.architecture,
            &p.variant,
        )),
        None => s.platform.clone(),
    };
    let name = kiln_dockerfile::reference::normalize(name)
        .map_err(|e| Status::invalid_argument(format!("{name:?}: {e}")))?;
    let (config, digest) = resolver
        .engine
        .base_images(mode, resolver.credentials.clone())
        .image_config_json(&name, platform.as_ref())
        .await
        .map_err(|e| crate::state::status_of(&e))?;
    Ok(ResolveSourceMetaResponse {
        source: meta.source,
        image: Some(ResolveSourceImageResponse {
            digest,
            config: if image.no_config { Vec::new() } else { config },
        }),
        ..Default::default()
    })
}

/// What the policy's decision about the source `identifier` means for the
/// build.
fn decide(identifier: &str, decision: &DecisionResponse) -> Result<(), Status> {
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
    use kiln_proto::policysession::DenyMessage;

    fn decision(action: i32, messages: &[&str]) -> DecisionResponse {
        DecisionResponse {
            action,
            deny_messages: messages
                .iter()
                .map(|m| DenyMessage {
                    message: m.to_string(),
                })
                .collect(),
            update: None,
        }
    }

    #[test]
    fn only_allow_lets_a_source_through() {
        let id = "docker-image://docker.io/library/busybox:latest";
        assert!(decide(id, &decision(PolicyAction::Allow as i32, &[])).is_ok());
        let denied = decide(
            id,
            &decision(PolicyAction::Deny as i32, &["untrusted base"]),
        )
        .expect_err("denied");
        assert_eq!(denied.code(), tonic::Code::Unknown);
        assert_eq!(
            denied.message(),
            "source \"docker-image://docker.io/library/busybox:latest\" not allowed by policy: \
             action DENY"
        );
        let converted =
            decide(id, &decision(PolicyAction::Convert as i32, &[])).expect_err("converted");
        assert_eq!(converted.code(), tonic::Code::Unimplemented);
        assert!(converted.message().contains("not supported yet"));
        let unknown = decide(id, &decision(7, &[])).expect_err("an unknown action");
        assert!(unknown.message().ends_with("action 7"), "{unknown:?}");
    }
}
