//! Merge ops (`pb.MergeOp`, `COPY --link`): the inputs' layers applied one
//! after the other, the result being the concatenation of their chains.
//!
//! A layer keeps its identity across merges: the layer of an input that
//! is not the first one gets its blob from that input's own snapshot (a
//! link copy's layer is made on scratch, so its tar, diffID and blob do
//! not depend on what it is merged onto), and the merged snapshot is that
//! blob applied (`Diff.Apply`) onto the snapshot below it, committed
//! under the merged chain's chainID. The exporter then finds the blob on
//! the layer and never diffs the merged snapshot against another parent.

use super::StepRunner;
use crate::error::{Result, WorkerError};
use crate::refs::{Layer, Ref};
use kiln_snapshot::diff::Compression;
use kiln_solver::{MergeOp, Vertex};
use tokio_util::sync::CancellationToken;

/// The compression of the blobs a merge applies: the exporters' default,
/// so an image export reuses them as they are.
const APPLY_COMPRESSION: Compression = Compression::Gzip;

/// The most layers a merged chain may have: overlayfs stacks at most
/// this many lower directories, so a longer chain could never be mounted.
/// A merge past it fails before it applies any layer, rather than
/// applying them all first.
pub(crate) const MAX_MERGED_LAYERS: usize = kiln_snapshot::mount::MAX_OVERLAY_LAYERS;

/// The merged chain of `inputs` (each a chain): the first input's layers
/// as they are, then every other input's layers. Layers of an input
/// after the first must come with a blob (see [`StepRunner::merge`]).
pub(crate) fn merged_chain(inputs: &[Vec<Layer>]) -> Vec<Layer> {
    inputs.iter().flatten().cloned().collect()
}

impl StepRunner {
    pub(super) async fn merge(
        &self,
        v: &Vertex,
        op: &MergeOp,
        inputs: &[Ref],
        cancel: &CancellationToken,
    ) -> Result<Vec<Ref>> {
        let mut chains: Vec<Vec<Layer>> = Vec::with_capacity(op.inputs.len());
        for &i in &op.inputs {
            match inputs.get(i) {
                Some(Ref::Chain(layers)) => chains.push(layers.clone()),
                _ => {
                    return Err(WorkerError::BadInput {
                        location: super::location(v),
                        reason: format!("merge input {i} is not a snapshot"),
                    })
                }
            }
        }
        // Scratch inputs add nothing; the first real one is the base.
        chains.retain(|c| !c.is_empty());
        let layers: usize = chains.iter().map(Vec::len).sum();
        if layers > MAX_MERGED_LAYERS {
            return Err(WorkerError::BadInput {
                location: super::location(v),
                reason: format!(
                    "a merge of {} inputs makes {layers} layers, more than the {MAX_MERGED_LAYERS} a snapshot can stack",
                    op.inputs.len()
                ),
            });
        }
        let mut it = chains.into_iter();
        let Some(mut merged) = it.next() else {
            return Ok(vec![Ref::scratch()]);
        };
        // The blobs made here only to apply layers: the result does not
        // carry them, so an export makes its own as it asks (a level, a
        // compression), as for any step's layer; the snapshots still name
        // them for the next use at kiln's defaults.
        let mut made = std::collections::HashSet::new();
        for chain in it {
            if cancel.is_cancelled() {
                return Err(WorkerError::Cancelled);
            }
            let with_blobs = crate::blobs::ensure(
                &self.svc,
                &chain,
                (APPLY_COMPRESSION, Default::default()),
                true,
                &self.lease,
                &self.mount_dir,
            )
            .await?;
            for (before, after) in chain.iter().zip(&with_blobs) {
                if let (None, Some(b)) = (&before.blob, &after.blob) {
                    made.insert(b.digest.clone());
                }
            }
            merged = merged_chain(&[merged, with_blobs]);
        }
        crate::base::ensure_unpacked(&self.svc, &merged, &self.lease).await?;
        for l in &mut merged {
            if l.blob.as_ref().is_some_and(|b| made.contains(&b.digest)) {
                l.blob = None;
            }
        }
        Ok(vec![Ref::Chain(merged)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_snapshot::Digest;

    fn layer(n: &str) -> Layer {
        Layer {
            diff_id: Digest::of(n.as_bytes()),
            blob: None,
            uncompressed_size: None,
            created: None,
        }
    }

    #[test]
    fn merged_chain_is_the_inputs_in_order() {
        let m = merged_chain(&[vec![layer("a"), layer("b")], vec![layer("c")]]);
        let names: Vec<_> = m.iter().map(|l| l.diff_id.clone()).collect();
        assert_eq!(
            names,
            vec![Digest::of(b"a"), Digest::of(b"b"), Digest::of(b"c")]
        );
    }
}
