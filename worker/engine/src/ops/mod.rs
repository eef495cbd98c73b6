//! The ops of the build graph over containerd: the engine's implementation
//! of the solver's `OpRunner`.

mod exec;
mod file;
mod layer;
mod source;

use crate::error::{Result, WorkerError};
use crate::progress::{Progress, ProgressEvent};
use crate::refs::Ref;
use kiln_shim::ContainerdExecutor;
use kiln_snapshot::containerd::LeaseId;
use kiln_snapshot::diff::Compression;
use kiln_snapshot::Containerd;
use kiln_solver::scheduler::OpRunner;
use kiln_solver::{Op, Vertex, VertexId};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Everything one build's ops share.
pub struct StepRunner {
    pub ctrd: Containerd,
    pub executor: Arc<ContainerdExecutor>,
    /// Where host mount points of this build go.
    pub mount_dir: PathBuf,
    pub lease: LeaseId,
    pub compression: Compression,
    /// Local sources by name (`context` -> directory).
    pub locals: HashMap<String, PathBuf>,
    pub progress: Progress,
}

/// `Dockerfile:12: ` for a vertex with a location, else empty.
pub(crate) fn location(v: &Vertex) -> String {
    v.location
        .as_ref()
        .map(|l| format!("{}:{}: ", l.file, l.line))
        .unwrap_or_default()
}

impl OpRunner for StepRunner {
    type Ref = Ref;
    type Error = WorkerError;

    async fn run(
        &self,
        id: VertexId,
        vertex: Vertex,
        inputs: Vec<Ref>,
        cancel: CancellationToken,
    ) -> Result<Vec<Ref>> {
        let span = tracing::info_span!("vertex", id = id.0, name = %vertex.name);
        async {
            self.progress.send(ProgressEvent::Started {
                vertex: id.0,
                name: vertex.name.clone(),
                at: SystemTime::now(),
            });
            let r = match &vertex.op {
                Op::Source(s) => self.source(&vertex, s).await,
                Op::Exec(e) => self.exec(id, &vertex, e, &inputs, cancel).await,
                Op::File(f) => self.file(&vertex, f, &inputs).await,
                // The frontend's way of saying "scratch".
                Op::Merge(m) if m.inputs.is_empty() => Ok(vec![Ref::scratch()]),
                Op::Merge(_) => Err(WorkerError::Unsupported {
                    location: location(&vertex),
                    what: "merge op".into(),
                }),
            };
            self.progress.send(ProgressEvent::Completed {
                vertex: id.0,
                name: vertex.name.clone(),
                cached: false,
                error: r.as_ref().err().map(|e| e.to_string()),
                at: SystemTime::now(),
            });
            r
        }
        .instrument(span)
        .await
    }
}
