//! What a vertex output is: a layer chain committed in containerd, a local
//! directory (the build context), or nothing (scratch).

use kiln_solver::Digest;
use std::path::PathBuf;

/// A layer's blob in the content store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
}

/// One layer of a chain: its diffID and, when one exists yet, its blob.
///
/// A step's layer is committed as a snapshot with only its diffID
/// computed: its blob is made when an exporter needs it
/// ([`crate::blobs::ensure`]). Base-image and imported layers always come
/// with their blobs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    pub diff_id: Digest,
    /// `None` until a blob is needed (a step's layer).
    pub blob: Option<Blob>,
    /// Bytes of the uncompressed tar, when kiln made the layer itself
    /// (`kiln du` counts it for a layer without a blob).
    pub uncompressed_size: Option<u64>,
    /// When the step that made this layer finished (RFC 3339), kept with
    /// the cache record so a cached rebuild dates its history the same
    /// way; `None` for base-image layers (their history has the times).
    pub created: Option<String>,
}

impl Layer {
    /// A layer with a blob (base image, pulled or imported).
    pub fn with_blob(
        diff_id: Digest,
        media_type: impl Into<String>,
        digest: impl Into<String>,
        size: i64,
        created: Option<String>,
    ) -> Self {
        Layer {
            diff_id,
            blob: Some(Blob {
                media_type: media_type.into(),
                digest: digest.into(),
                size,
            }),
            uncompressed_size: None,
            created,
        }
    }
}

/// A vertex output.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ref {
    /// A committed snapshot chain; the top snapshot is named by the chainID
    /// of the layers, so an empty chain is scratch.
    Chain(Vec<Layer>),
    /// A directory on the host (the build context), with the exclude
    /// patterns that hide parts of it.
    Local { dir: PathBuf, excludes: Vec<String> },
}

impl Ref {
    /// The empty filesystem.
    pub fn scratch() -> Self {
        Ref::Chain(Vec::new())
    }

    /// The ref as error messages name it: the chain's top snapshot
    /// (`scratch` for none) or the local source's directory name.
    pub fn name(&self) -> String {
        match self {
            Ref::Chain(layers) if layers.is_empty() => "scratch".to_string(),
            Ref::Chain(layers) => top_snapshot(layers),
            Ref::Local { dir, .. } => dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| dir.display().to_string()),
        }
    }
}

/// The diffIDs of a chain.
pub fn diff_ids(layers: &[Layer]) -> Vec<Digest> {
    layers.iter().map(|l| l.diff_id.clone()).collect()
}

/// The committed snapshot name of a chain's top: its chainID; `""` (no
/// parent) for scratch.
pub fn top_snapshot(layers: &[Layer]) -> String {
    Digest::chain_ids(&diff_ids(layers))
        .last()
        .map(|d| d.to_string())
        .unwrap_or_default()
}
