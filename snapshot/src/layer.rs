//! A layer from a snapshot change straight into the content store: the
//! diff walk, tar, diffID hash, compression and blob hash run on blocking
//! threads while the compressed bytes stream into `Content.Write`, so the
//! layer is read once and never held in memory or on disk.

use crate::containerd::{Containerd, LeaseId};
use crate::diff::{write_layer, Compression, DiffSource, LayerDescriptor};
use crate::error::{Result, SnapshotError};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use tokio::sync::mpsc;

/// The label containerd reads for a compressed layer's diffID.
pub const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";

/// Where the layer's change is read from (owned paths, so the walk can run
/// on a blocking thread).
#[derive(Clone, Debug)]
pub enum LayerSource {
    /// The overlay upper directory of the changed snapshot, and a mounted
    /// view of its parent (`None` = no parent).
    Overlay {
        upper: PathBuf,
        lower: Option<PathBuf>,
    },
    /// Two full trees compared entry by entry.
    Walk {
        lower: Option<PathBuf>,
        upper: PathBuf,
    },
}

/// A `Write` that forwards 1 MiB chunks into a channel.
struct ChannelWriter {
    buf: Vec<u8>,
    tx: mpsc::Sender<Vec<u8>>,
}

const CHUNK: usize = 1 << 20;

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx.blocking_send(chunk).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "content writer closed")
        })
    }
}

/// Computes the layer of `source` and commits it to the content store under
/// `lease`, labeled with its diffID. Returns the descriptor.
pub async fn commit_layer(
    ctrd: &Containerd,
    source: LayerSource,
    compression: Compression,
    lease: &LeaseId,
) -> Result<LayerDescriptor> {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(4);
    let producer = tokio::task::spawn_blocking(move || {
        let mut w = ChannelWriter {
            buf: Vec::with_capacity(CHUNK),
            tx,
        };
        let src = match &source {
            LayerSource::Overlay { upper, lower } => DiffSource::Overlay {
                upper: upper.as_path(),
                lower: lower.as_deref(),
            },
            LayerSource::Walk { lower, upper } => DiffSource::Walk {
                lower: lower.as_deref(),
                upper: upper.as_path(),
            },
        };
        let desc = write_layer(src, compression, &mut w)?;
        w.flush().map_err(|e| crate::diff::DiffError::Io {
            path: PathBuf::from("<content writer>"),
            source: e,
        })?;
        Ok::<_, crate::diff::DiffError>(desc)
    });
    let mut writer = ctrd.content_writer(lease).await?;
    let mut write_err = None;
    while let Some(chunk) = rx.recv().await {
        if let Err(e) = writer.write(&chunk).await {
            write_err = Some(e);
            break;
        }
    }
    // Closing the receiver makes a still-running producer fail fast.
    drop(rx);
    let produced = producer.await.map_err(|e| SnapshotError::Io {
        path: "layer diff".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    if let Some(e) = write_err {
        return Err(e);
    }
    let desc = produced?;
    let mut labels = HashMap::new();
    labels.insert(UNCOMPRESSED_LABEL.to_string(), desc.diff_id.to_string());
    writer.commit(&desc.digest, labels).await?;
    Ok(desc)
}
