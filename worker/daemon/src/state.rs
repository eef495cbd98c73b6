//! The daemon's shared state: the engine, running jobs, attached sessions.

use crate::config::Config;
use crate::jobs::Jobs;
use crate::sessions::Sessions;
use kiln_engine::Engine;
use kiln_snapshot::Containerd;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub struct Daemon {
    pub engine: Engine,
    pub ctrd: Containerd,
    pub config: Config,
    /// Cancelled on SIGTERM: every running build is cancelled with it.
    pub shutdown: CancellationToken,
    pub jobs: Arc<Jobs>,
    pub sessions: Sessions,
    /// The steps' sandbox network as ListWorkers reports it: `cni` or
    /// `host`.
    pub network: &'static str,
}

impl Daemon {
    /// Connects to containerd, cleans up after dead builds, and is ready.
    pub async fn new(config: Config) -> anyhow::Result<Arc<Daemon>> {
        let ctrd = Containerd::connect(config.containerd.clone()).await?;
        std::fs::create_dir_all(&config.root)?;
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
        let engine = Engine::with_network(ctrd.clone(), config.root.clone(), cni);
        engine.sweep().await?;
        Ok(Arc::new(Daemon {
            engine,
            ctrd,
            config,
            shutdown: CancellationToken::new(),
            jobs: Arc::new(Jobs::default()),
            sessions: Sessions::default(),
            network,
        }))
    }

    /// Waits until no build is running (after `shutdown` was cancelled,
    /// running builds end by releasing their leases).
    pub async fn wait_idle(&self) {
        self.jobs.wait_idle().await;
    }
}

/// A worker error as a gRPC status, with its kind's code and the whole
/// cause chain as message.
pub fn status_of(e: &kiln_engine::WorkerError) -> tonic::Status {
    tonic::Status::new(e.kind().code(), kiln_engine::error::error_chain(e))
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
        assert_eq!(own.code(), Code::FailedPrecondition);

        // What a build that waited for an equal step of another build gets.
        let shared = status_of(&WorkerError::Shared(Arc::new(step_failed())));
        assert_eq!(shared.code(), Code::FailedPrecondition);
        assert_eq!(shared.message(), own.message(), "the same text, once");

        let panicked = status_of(&WorkerError::Panicked {
            step: "RUN x".into(),
            message: "boom".into(),
        });
        assert_eq!(panicked.code(), Code::Internal);
    }
}
