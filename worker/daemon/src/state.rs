//! The daemon's shared state: the tenants and their engines, running jobs,
//! attached sessions.

use crate::config::Config;
use crate::jobs::Jobs;
use crate::listen::ConnInfo;
use crate::sessions::Sessions;
use crate::tenants::{Tenant, TenantConfig};
use kiln_snapshot::Containerd;
use std::collections::HashMap;
use std::os::unix::fs::DirBuilderExt;
use std::sync::{Arc, Mutex};
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

pub struct Daemon {
    /// The connection in the configured namespace (version, server uuid).
    pub ctrd: Containerd,
    /// The stable worker id (`workers::worker_id`), read once at startup.
    pub worker_id: String,
    pub config: Config,
    /// Cancelled on SIGTERM: every running build is cancelled with it.
    pub shutdown: CancellationToken,
    pub jobs: Arc<Jobs>,
    pub sessions: Sessions,
    /// Build contexts kept between builds (`[contexts]`).
    pub contexts: Arc<crate::contexts::Contexts>,
    /// The one tenant when no `[[tenant]]` is configured.
    default: Option<Arc<Tenant>>,
    /// Configured tenants by name, each set up (engine, sweep) on first use.
    tenants: Mutex<HashMap<String, Arc<OnceCell<Arc<Tenant>>>>>,
    /// The steps' sandbox network as ListWorkers reports it: `cni` or
    /// `host`.
    pub network: &'static str,
    /// The steps' CNI network, shared by every tenant's engine.
    cni: Option<kiln_engine::network::Cni>,
    /// `[fetch]` as last read (at start, then by each SIGHUP), shared by
    /// every tenant's engine; each build takes it when it starts
    /// ([`crate::jobs::Job::engine`]).
    pub fetch: kiln_engine::sources::limits::SharedLimits,
}

impl Daemon {
    /// Connects to containerd, cleans up after dead builds, and is ready.
    pub async fn new(config: Config, worker_id: String) -> anyhow::Result<Arc<Daemon>> {
        let ctrd = Containerd::connect(config.containerd.clone()).await?;
        let cni = config.worker.network.resolve(
            config.worker.cni.clone(),
            kiln_engine::build::network_dir(&config.root),
        )?;
        match &cni {
            Some(c) => tracing::info!(
                mode = %config.worker.network,
                bridge = %c.config().bridge,
                subnet = %c.config().subnet,
                "RUN steps get their own network namespace on the cni bridge"
            ),
            None => tracing::warn!(
                mode = %config.worker.network,
                "RUN steps share the host's network namespace"
            ),
        }
        let network = if cni.is_some() { "cni" } else { "host" };
        let fetch = kiln_engine::sources::limits::SharedLimits::from(config.fetch);
        let default = if config.tenants.is_empty() {
            let t = Tenant::new(
                None,
                ctrd.clone(),
                config.root.clone(),
                crate::tenants::Shared {
                    contexts: &crate::contexts::dir(&config.root),
                    cni: cni.clone(),
                    registry: config.registry.clone(),
                    fetch: fetch.clone(),
                    history: config.history,
                    owner: &worker_id,
                },
            );
            t.engine.sweep().await?;
            crate::historyresults::reconcile(t.engine.services(), &t.history, &t.owner).await;
            Some(Arc::new(t))
        } else {
            // Job directories live under the root whatever the tenant
            // (`solve::job_dir`); tenants' engines sweep only their own.
            kiln_engine::sweep::sweep_dirs(&config.root);
            None
        };
        let contexts = crate::contexts::Contexts::new(&config.root, config.contexts);
        let pruning = contexts.clone();
        tokio::task::spawn_blocking(move || pruning.prune()).await?;
        let d = Arc::new(Daemon {
            contexts,
            ctrd,
            worker_id,
            config,
            shutdown: CancellationToken::new(),
            jobs: Arc::new(Jobs::default()),
            sessions: Sessions::default(),
            default,
            network,
            cni,
            tenants: Mutex::new(HashMap::new()),
            fetch,
        });
        // Set up (and sweep) every tenant now, so that what a killed kilnd
        // left in a namespace goes at startup, not at that tenant's next
        // build. A tenant that fails here is retried on its first use.
        for t in &d.config.tenants {
            if let Err(e) = d.configured(t).await {
                tracing::warn!(tenant = %t.name, error = %e.message(), "tenant not ready yet");
            }
        }
        Ok(d)
    }

    /// The tenant of the client that sent `req` (see [`crate::tenants`]).
    pub async fn tenant<T>(&self, req: &tonic::Request<T>) -> Result<Arc<Tenant>, tonic::Status> {
        if let Some(t) = &self.default {
            return Ok(t.clone());
        }
        let identity = req
            .extensions()
            .get::<ConnInfo>()
            .and_then(|c| c.identity.as_ref());
        let config = crate::tenants::resolve(&self.config.tenants, identity)?;
        self.configured(config).await
    }

    /// The tenant named `name` (`None`: the default tenant), as a build
    /// records it (`Job::tenant`).
    pub async fn tenant_named(&self, name: Option<&str>) -> Result<Arc<Tenant>, tonic::Status> {
        if let Some(t) = &self.default {
            return Ok(t.clone());
        }
        let config = self
            .config
            .tenants
            .iter()
            .find(|t| Some(t.name.as_str()) == name)
            .ok_or_else(|| tonic::Status::not_found(format!("no tenant {name:?}")))?;
        self.configured(config).await
    }

    /// The engine of a configured tenant, created and swept on first use.
    async fn configured(&self, config: &TenantConfig) -> Result<Arc<Tenant>, tonic::Status> {
        let cell = self
            .tenants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(config.name.clone())
            .or_default()
            .clone();
        cell.get_or_try_init(|| async {
            let state_dir = self.config.root.join("tenants").join(&config.name);
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&state_dir)
                .map_err(|e| {
                    tonic::Status::internal(format!(
                        "cannot create tenant {:?}'s state directory {}: {e}",
                        config.name,
                        state_dir.display()
                    ))
                })?;
            let t = Tenant::new(
                Some(config),
                self.ctrd.with_namespace(&config.namespace),
                state_dir,
                crate::tenants::Shared {
                    contexts: &crate::contexts::dir(&self.config.root),
                    cni: self.cni.clone(),
                    registry: self.config.registry.clone(),
                    fetch: self.fetch.clone(),
                    history: self.config.history,
                    owner: &self.worker_id,
                },
            );
            t.engine.sweep().await.map_err(|e| status_of(&e))?;
            crate::historyresults::reconcile(t.engine.services(), &t.history, &t.owner).await;
            tracing::info!(
                tenant = %config.name,
                namespace = %config.namespace,
                "tenant ready"
            );
            Ok(Arc::new(t))
        })
        .await
        .cloned()
    }

    /// Waits until no build is running (after `shutdown` was cancelled,
    /// running builds end by releasing their leases).
    pub async fn wait_idle(&self) {
        self.jobs.wait_idle().await;
    }
}

/// A worker error as a gRPC status, with its kind's code and the whole
/// cause chain as message. What fails a step as it runs (its non-zero
/// exit, a copy source that is not there, a missing secret or SSH agent,
/// a file op, an emulator to start it with) is `Unknown`, as BuildKit
/// answers those: buildx and buildctl print any other code before the
/// message (`NotFound: lstat /x: no such file or directory`).
pub fn status_of(e: &kiln_engine::WorkerError) -> tonic::Status {
    tonic::Status::new(code_of(e), kiln_engine::error::error_chain(e))
}

fn code_of(e: &kiln_engine::WorkerError) -> tonic::Code {
    use kiln_engine::WorkerError;
    match e {
        WorkerError::StepFailed { .. }
        | WorkerError::StepNotStarted { .. }
        | WorkerError::NoEmulation { .. }
        | WorkerError::SourceNotFound { .. }
        | WorkerError::SourceMissing { .. }
        | WorkerError::FileOp { .. }
        | WorkerError::Secret { .. }
        | WorkerError::Ssh { .. } => tonic::Code::Unknown,
        WorkerError::Shared(inner) => code_of(inner),
        e => e.kind().code(),
    }
}

#[cfg(test)]
mod tests {
    use super::status_of;
    use kiln_engine::WorkerError;
    use std::sync::Arc;
    use tonic::Code;

    fn step_failed() -> WorkerError {
        WorkerError::StepFailed {
            location: "Dockerfile:2: ".into(),
            command: "exit 7".into(),
            code: 7,
        }
    }

    #[test]
    fn a_shared_or_panicked_step_keeps_its_code() {
        let own = status_of(&step_failed());
        assert_eq!(own.code(), Code::Unknown, "as BuildKit's exit errors");

        // What a build that waited for an equal step of another build gets.
        let shared = status_of(&WorkerError::Shared(Arc::new(step_failed())));
        assert_eq!(shared.code(), Code::Unknown);
        assert_eq!(shared.message(), own.message(), "the same text, once");

        let panicked = status_of(&WorkerError::Panicked {
            step: "RUN x".into(),
            message: "boom".into(),
        });
        assert_eq!(panicked.code(), Code::Internal);
    }

    #[test]
    fn what_fails_a_step_as_it_runs_is_unknown_as_in_buildkit() {
        let missing = status_of(&WorkerError::SourceMissing {
            location: "Dockerfile:2: ".into(),
            path: "/nope".into(),
        });
        assert_eq!(missing.code(), Code::Unknown);
        assert_eq!(
            missing.message(),
            "Dockerfile:2: lstat /nope: no such file or directory"
        );
        let not_found = status_of(&WorkerError::SourceNotFound {
            location: String::new(),
            reference: "r".into(),
            path: "/nope".into(),
        });
        assert_eq!(not_found.code(), Code::Unknown);
        // Not about a step: the kind's code.
        let image = status_of(&WorkerError::ImageNotFound {
            image: "x".into(),
            namespace: "n".into(),
        });
        assert_eq!(image.code(), Code::NotFound);
    }
}
