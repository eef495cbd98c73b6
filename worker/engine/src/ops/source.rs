//! Source ops: base images from the image store, local directories.

use super::{location, StepRunner};
use crate::error::{Result, WorkerError};
use crate::refs::Ref;
use kiln_solver::{SourceOp, Vertex};

impl StepRunner {
    pub(super) async fn source(&self, v: &Vertex, s: &SourceOp) -> Result<Vec<Ref>> {
        if let Some(name) = s.identifier.strip_prefix("docker-image://") {
            let base = crate::base::load(&self.svc, name).await?;
            crate::base::ensure_unpacked(&self.svc, &base.layers, &self.lease).await?;
            crate::base::label_unpacked(&self.svc, &base).await?;
            return Ok(vec![Ref::Chain(base.layers)]);
        }
        if let Some(name) = s.identifier.strip_prefix("local://") {
            let dir = self.locals.get(name).ok_or_else(|| WorkerError::BadInput {
                location: location(v),
                reason: format!("no local source named {name:?} was given"),
            })?;
            let excludes = match s.attrs.get("local.excludepatterns") {
                Some(j) => serde_json::from_str(j).map_err(|e| WorkerError::BadInput {
                    location: location(v),
                    reason: format!("local.excludepatterns: {e}"),
                })?,
                None => Vec::new(),
            };
            return Ok(vec![Ref::Local {
                dir: dir.clone(),
                excludes,
            }]);
        }
        Err(WorkerError::Unsupported {
            location: location(v),
            what: format!("source {}", s.identifier),
        })
    }
}
