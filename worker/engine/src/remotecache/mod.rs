//! Cache export and import in BuildKit's format (`--cache-to`,
//! `--cache-from`, a Solve request's `cache_exports`/`cache_imports`).
//!
//! A build's cache is described by its vertices' keys and results (what
//! the solver reports through `OpRunner::solved`): each vertex is a record
//! whose digest is kiln's cache key, whose result is the vertex's layer
//! chain, and whose inputs link the records of its input vertices.
//! Export writes that description and the layer blobs to a target (`local`:
//! an OCI layout directory; `inline`: the records in the image config;
//! `registry`: a ref in a registry). Import reads such a description
//! before the solve; during it, a key the local cache misses but an
//! imported cache holds is a hit: its blobs are copied into the content
//! store under the build's lease, unpacked under chainIDs, saved as a
//! local record, and the vertex shows as CACHED.
//!
//! kiln's keys are content based (op definition + input chainIDs/content
//! digests), so the same inputs give the same keys on another containerd.
//! Each step with a result is also written under its plan key (a record
//! linking the step's with the selector [`format::PLAN_SELECTOR`]), which
//! the solver looks up before the steps it reads have run
//! ([`BuildCache::planned`]): a `mode=min` cache answers a multi-stage
//! build's final stage without the stages it copies from.
//! BuildKit computes its keys differently: a cache written by either is
//! readable by the other, but only hits where keys agree.

pub mod export;
pub mod format;
pub mod import;
pub mod options;
pub mod registry;

pub use options::{CacheExport, CacheImport, ExportTarget, ImportSource, Mode};

use crate::refs::{Layer, Ref};
use kiln_proto::ErrorKind;
use kiln_solver::{Digest, Graph, Op, VertexId};
use std::collections::HashMap;
use std::sync::Mutex;

/// Errors of cache export and import.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A `--cache-to`/`--cache-from` option is wrong or not supported.
    #[error("{option}: {reason}")]
    Option { option: String, reason: String },
    /// A cache's JSON cannot be read.
    #[error("cache {location}: {source}")]
    Format {
        location: String,
        #[source]
        source: format::FormatError,
    },
    /// A file of a local cache cannot be read or written.
    #[error("cache {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A blob the cache lists is missing or does not match its digest.
    #[error("cache {location}: blob {digest}: {reason}")]
    Blob {
        location: String,
        digest: String,
        reason: String,
    },
    /// A registry refused or failed (its message names the host).
    #[error(transparent)]
    Registry(#[from] kiln_registry::RegistryError),
    /// The target is not reachable this way (yet).
    #[error("{what} is not supported {reason}")]
    Unsupported { what: String, reason: String },
}

impl CacheError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            CacheError::Option { .. } | CacheError::Format { .. } => ErrorKind::InvalidArgument,
            CacheError::Io { .. } => ErrorKind::Internal,
            CacheError::Blob { .. } => ErrorKind::FailedPrecondition,
            CacheError::Unsupported { .. } => ErrorKind::Unimplemented,
            CacheError::Registry(e) => e.kind(),
        }
    }
}

/// One vertex of the build as an export sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VertexRecord {
    pub id: VertexId,
    pub key: Digest,
    /// The step's plan key (`kiln_solver::cache::plan_key`; `None` for a
    /// source): exported as a record linking this one, so that an import
    /// answers the step before the steps it reads have run.
    pub plan: Option<Digest>,
    /// For each input, the vertex it came from (`None`: not describable,
    /// e.g. a second output).
    pub inputs: Vec<Option<VertexId>>,
    /// The vertex's single output chain (`None` for several outputs or a
    /// local directory).
    pub chain: Option<Vec<Layer>>,
    pub name: String,
}

/// A vertex the solver answered: its key, its plan key and its outputs.
type Answered = (Digest, Digest, Vec<Ref>);

/// The cache side of one build: the imported caches to consult on a
/// miss and the vertices answered so far (for export).
#[derive(Debug, Default)]
pub struct BuildCache {
    imports: Vec<import::Imported>,
    /// The input vertices of each vertex (output 0 only) and its name.
    shape: HashMap<VertexId, (Vec<Option<VertexId>>, String, bool)>,
    answered: Mutex<HashMap<VertexId, Answered>>,
}

impl BuildCache {
    /// The cache of a build of `graph` consulting `imports` on misses.
    pub fn new(graph: &Graph, target: VertexId, imports: Vec<import::Imported>) -> Self {
        let mut shape = HashMap::new();
        for id in graph.needed_for(target) {
            let v = graph.vertex(id);
            let inputs = v
                .inputs
                .iter()
                .map(|e| (e.output == 0).then_some(e.vertex))
                .collect();
            shape.insert(id, (inputs, v.name.clone(), matches!(v.op, Op::Source(_))));
        }
        BuildCache {
            imports,
            shape,
            answered: Mutex::new(HashMap::new()),
        }
    }

    /// The imported chain of `key`, with where its blobs come from.
    pub fn imported(&self, key: &Digest) -> Option<(&import::Imported, &Vec<format::ChainLayer>)> {
        self.imports
            .iter()
            .find_map(|i| i.chains.get(key.as_str()).map(|c| (i, c)))
    }

    /// Whether an import has plan records (kiln wrote it): only then is a
    /// solve planned, its sources first.
    pub fn has_plans(&self) -> bool {
        self.imports.iter().any(|i| !i.chains.plans.is_empty())
    }

    /// The key an imported cache's plan record stands for, whose result
    /// it holds.
    pub fn planned(&self, plan: &Digest) -> Option<Digest> {
        self.imports
            .iter()
            .find_map(|i| i.chains.planned(plan.as_str()))
            .and_then(Digest::parse)
    }

    /// Notes a vertex the solver answered.
    pub fn note(&self, id: VertexId, key: &Digest, plan: &Digest, outputs: &[Ref]) {
        let mut m = self.answered.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(id, (key.clone(), plan.clone(), outputs.to_vec()));
    }

    /// Every answered vertex, in vertex order.
    pub fn records(&self) -> Vec<VertexRecord> {
        let m = self.answered.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<VertexRecord> = m
            .iter()
            .map(|(id, (key, plan, outs))| {
                let (inputs, name, source) = self.shape.get(id).cloned().unwrap_or_default();
                let chain = match outs.as_slice() {
                    [Ref::Chain(l)] => Some(l.clone()),
                    _ => None,
                };
                VertexRecord {
                    id: *id,
                    key: key.clone(),
                    plan: (!source).then(|| plan.clone()),
                    inputs,
                    chain,
                    name,
                }
            })
            .collect();
        out.sort_by_key(|r| r.id.0);
        out
    }
}

#[cfg(test)]
mod tests;
