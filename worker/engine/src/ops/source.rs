//! Source ops: base images from the image store, local directories, and
//! remote files and git repositories (`remote.rs`).

use super::{location, StepRunner};
use crate::error::{Result, WorkerError};
use crate::refs::Ref;
use kiln_solver::{SourceOp, Vertex, VertexId};
use tokio_util::sync::CancellationToken;

impl StepRunner {
    pub(super) async fn source(
        &self,
        id: VertexId,
        v: &Vertex,
        s: &SourceOp,
        cancel: &CancellationToken,
    ) -> Result<(Vec<Ref>, bool)> {
        if let Some(name) = s.identifier.strip_prefix("docker-image://") {
            // LLB's per-image mode wins over the build's.
            let mode = match s.attrs.get(crate::resolve::LLB_ATTR) {
                Some(m) => {
                    crate::resolve::ResolveMode::parse(m).map_err(|e| WorkerError::BadInput {
                        location: location(v),
                        reason: format!("{}: {e}", crate::resolve::LLB_ATTR),
                    })?
                }
                None => self.resolve_mode,
            };
            let report = crate::pull::Reporter {
                progress: self.progress.clone(),
                vertex: Some(id.0),
            };
            let platform = s.platform.as_ref();
            let pin = self
                .pinned
                .get(&crate::resolve::Pinned::key(name, platform));
            let pull = crate::pull::base_image(
                &self.svc,
                &self.registry,
                name,
                platform,
                mode,
                pin.as_deref(),
                &self.lease,
                report,
            );
            let (base, stored) = tokio::select! {
                b = pull => b?,
                _ = cancel.cancelled() => return Err(WorkerError::Cancelled),
            };
            let unpacked =
                crate::base::ensure_unpacked(&self.svc, &base.layers, &self.lease).await?;
            crate::base::label_unpacked(&self.svc, &base).await?;
            // An image the store had, unpacked: BuildKit's cache hit.
            return Ok((vec![Ref::Chain(base.layers)], stored && !unpacked));
        }
        if let Some(reference) = s.identifier.strip_prefix("oci-layout://") {
            return self
                .oci_layout_source(v, s, reference, cancel)
                .await
                .map(|r| (r, false));
        }
        if let Some(name) = s.identifier.strip_prefix("local://") {
            let key = s.local_key().unwrap_or_else(|| name.to_string());
            let dir = self.locals.get(&key).ok_or_else(|| WorkerError::BadInput {
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
            return Ok((
                vec![Ref::Local {
                    dir: dir.clone(),
                    excludes,
                }],
                false,
            ));
        }
        let bad = |e: kiln_solver::source::SourceError| match e {
            kiln_solver::source::SourceError::Unsupported(what) => WorkerError::Unsupported {
                location: location(v),
                what,
            },
            e => WorkerError::BadInput {
                location: location(v),
                reason: e.to_string(),
            },
        };
        if let Some(g) = kiln_solver::source::GitSource::from_op(s).map_err(bad)? {
            return self.git_source(v, g, cancel).await.map(|r| (r, false));
        }
        if let Some(h) = kiln_solver::source::HttpSource::from_op(s).map_err(bad)? {
            return self.http_source(v, h, cancel).await.map(|r| (r, false));
        }
        Err(WorkerError::Unsupported {
            location: location(v),
            what: format!("source {}", s.identifier),
        })
    }

    /// An image of an OCI layout the client holds (`oci-layout://NAME@DIGEST`
    /// with the store in `oci.store`, as BuildKit's `llb.OCILayout`): its
    /// blobs imported under the build's lease, its layers unpacked.
    async fn oci_layout_source(
        &self,
        v: &Vertex,
        s: &SourceOp,
        reference: &str,
        cancel: &CancellationToken,
    ) -> Result<Vec<Ref>> {
        let bad = |reason: String| WorkerError::BadInput {
            location: location(v),
            reason,
        };
        let store = s
            .attrs
            .get(kiln_solver::source::ATTR_OCI_STORE)
            .ok_or_else(|| bad(format!("oci-layout://{reference}: no oci.store attribute")))?;
        let digest = reference
            .rsplit_once('@')
            .map(|(_, d)| d)
            .ok_or_else(|| bad(format!("oci-layout://{reference}: no digest")))?;
        let dir = crate::layout::store(&self.oci_stores, store)?;
        let import = crate::layout::import(
            &self.svc,
            dir,
            reference,
            digest,
            s.platform.as_ref(),
            &self.lease,
        );
        let base = tokio::select! {
            b = import => b?,
            _ = cancel.cancelled() => return Err(WorkerError::Cancelled),
        };
        crate::base::ensure_unpacked(&self.svc, &base.layers, &self.lease).await?;
        crate::base::label_unpacked(&self.svc, &base).await?;
        Ok(vec![Ref::Chain(base.layers)])
    }
}
