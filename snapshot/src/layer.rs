//! A layer from a snapshot change straight into the content store: the
//! diff walk, tar, diffID hash and compression run on blocking threads
//! while the compressed bytes stream into `Content.Write`, so the layer is
//! read once and never held in memory or on disk; the blob's digest is the
//! one containerd computes as it stores the bytes.
//! [`hash_layer`] is the same walk and tar hashed only (the diffID of a
//! layer whose blob is made later, if ever).
//!
//! A gzip or zstd blob is committed with its member index (a small blob it holds
//! through [`MEMBERS_LABEL`], see [`crate::diff::members`]), so that the
//! blob of a later version of the layer ([`commit_layer_reusing`]) copies
//! the compressed members that did not change.

use crate::containerd::LeaseId;
use crate::diff::members::{Codec, MemberIndex, OldMembers};
use crate::diff::{
    stream_layer_reusing, Compression, DiffSource, LayerDescriptor, LayerHash, Level,
};
use crate::error::{Result, SnapshotError};
use crate::services::{write_blob, Content, ContentWriter, LeaseResource, Leases};
use kiln_types::Digest;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use tokio::sync::mpsc;

/// The label containerd reads for a compressed layer's diffID.
pub const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";

/// The label on a gzip or zstd layer blob naming its member index; as a GC
/// reference it keeps the index exactly as long as the blob.
pub const MEMBERS_LABEL: &str = "containerd.io/gc.ref.content.kiln.members";

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

impl LayerSource {
    fn diff_source(&self) -> DiffSource<'_> {
        match self {
            LayerSource::Overlay { upper, lower } => DiffSource::Overlay {
                upper: upper.as_path(),
                lower: lower.as_deref(),
            },
            LayerSource::Walk { lower, upper } => DiffSource::Walk {
                lower: lower.as_deref(),
                upper: upper.as_path(),
            },
        }
    }
}

/// The diffID (and uncompressed size) of the layer of `source`, computed
/// on a blocking thread from the same tar [`commit_layer`] would write,
/// without compressing it or writing anything to the content store.
pub async fn hash_layer(source: LayerSource) -> Result<LayerHash> {
    tokio::task::spawn_blocking(move || crate::diff::hash_layer(source.diff_source()))
        .await
        .map_err(|e| SnapshotError::Io {
            path: "layer hash".into(),
            source: std::io::Error::other(e.to_string()),
        })?
        .map_err(SnapshotError::from)
}

/// A `Write` that forwards 1 MiB chunks into a channel.
struct ChannelWriter {
    buf: Vec<u8>,
    tx: mpsc::Sender<Vec<u8>>,
}

/// A chunk's size: one `Content.Write` message (see
/// `containerd::content::BlobWriter::write_owned`).
const CHUNK: usize = 1 << 20;

impl Write for ChannelWriter {
    /// Takes at most what fills the chunk: a compressed member (~1 MiB)
    /// written whole would grow a chunk to up to 2 MiB, and every chunk in
    /// flight is resident.
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(n)
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

/// Runs `produce` on a blocking thread, streaming what it writes into a new
/// content ingest under `lease`, and returns the open writer (for the
/// caller to commit with the digest `produce` computed) and its result.
async fn stream_blob<F, T>(
    content: &dyn Content,
    lease: &LeaseId,
    produce: F,
) -> Result<(Box<dyn ContentWriter>, T)>
where
    F: FnOnce(&mut dyn Write) -> std::result::Result<T, crate::diff::DiffError> + Send + 'static,
    T: Send + 'static,
{
    // One chunk queued (plus the one being filled and the one on its way
    // to containerd) keeps the producer and the ingest both busy; each
    // more is 1 MiB of resident memory for the whole blob.
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(1);
    let producer = tokio::task::spawn_blocking(move || {
        let mut w = ChannelWriter {
            buf: Vec::with_capacity(CHUNK),
            tx,
        };
        let desc = produce(&mut w)?;
        w.flush()
            .map_err(|e| crate::diff::DiffError::Output { source: e })?;
        Ok::<_, crate::diff::DiffError>(desc)
    });
    let mut writer = content.writer(lease).await?;
    let mut write_err = None;
    while let Some(chunk) = rx.recv().await {
        if let Err(e) = writer.write_owned(chunk).await {
            write_err = Some(e);
            break;
        }
    }
    // Closing the receiver makes a still-running producer fail fast.
    drop(rx);
    let produced = producer.await.map_err(|e| SnapshotError::Io {
        path: "layer stream".into(),
        source: std::io::Error::other(e.to_string()),
    })?;
    if let Some(e) = write_err {
        return Err(e);
    }
    Ok((writer, produced?))
}

/// Computes the layer of `source` and commits it to the content store under
/// `lease`, labeled with its diffID. Returns the descriptor. The blob's
/// digest is the one the store computed while receiving it (containerd
/// hashes every ingest anyway), so the compressed bytes are hashed once,
/// not twice; the uncompressed tar is hashed here for the diffID.
pub async fn commit_layer(
    content: &dyn Content,
    source: LayerSource,
    compression: Compression,
    lease: &LeaseId,
) -> Result<LayerDescriptor> {
    let (desc, _) = commit_layer_reusing(
        content,
        source,
        (compression, Level::default()),
        lease,
        None,
    )
    .await?;
    Ok(desc)
}

/// [`commit_layer`] at a compression level, copying from the blob
/// `previous` (an earlier version of the layer, or any layer blob, in
/// `compression`) the compressed members it holds with the same bytes,
/// when it has a member index. The blob is the same as without
/// `previous`. Also returns how many members were copied. Member indexes
/// are kept for kiln's default level only (their members are what a
/// default-level blob holds), so a blob at another level neither copies
/// members nor offers its own.
pub async fn commit_layer_reusing(
    content: &dyn Content,
    source: LayerSource,
    (compression, level): (Compression, Level),
    lease: &LeaseId,
    previous: Option<&str>,
) -> Result<(LayerDescriptor, usize)> {
    let codec = Codec::of(compression).filter(|_| level.is_default());
    let old = match (previous, codec) {
        (Some(p), Some(codec)) => old_members(content, p, codec).await,
        _ => None,
    };
    let (writer, (hash, size, members)) = stream_blob(content, lease, move |w| {
        stream_layer_reusing(source.diff_source(), (compression, level), w, old)
    })
    .await?;
    let digest = writer.digest().ok_or_else(|| SnapshotError::InvalidBlob {
        digest: hash.diff_id.to_string(),
        reason: "the content store did not report the digest of the layer it received".into(),
    })?;
    let mut labels = HashMap::new();
    labels.insert(UNCOMPRESSED_LABEL.to_string(), hash.diff_id.to_string());
    let reused = members.as_ref().map_or(0, |m| m.reused);
    if let (Some(m), Some(codec)) = (members, codec) {
        // The lease holds the index from its write until the blob's label
        // does; without it the next blob is only compressed in full.
        match write_blob(content, &m.index.encode(codec), HashMap::new(), lease).await {
            Ok(index) => {
                labels.insert(MEMBERS_LABEL.to_string(), index.to_string());
            }
            Err(e) => tracing::warn!(error = %e, "cannot keep a layer's member index"),
        }
    }
    writer.commit(&digest, labels).await?;
    Ok((
        LayerDescriptor {
            diff_id: hash.diff_id,
            digest,
            size,
            uncompressed_size: hash.uncompressed_size,
            entries: hash.entries,
            media_type: compression.media_type(),
        },
        reused,
    ))
}

/// The member index and a reader of `codec` blob `blob`, if it has an
/// index that this version of kiln reads and its members compress (copying
/// stored bytes out of the store and back costs more than storing them);
/// anything missing means no reuse.
async fn old_members(content: &dyn Content, blob: &str, codec: Codec) -> Option<OldMembers> {
    let info = content.info(blob).await.ok()?;
    let index = info.labels.get(MEMBERS_LABEL)?;
    let index = MemberIndex::decode(&content.read(index).await.ok()?, codec)?;
    if !index.worth_copying() {
        return None;
    }
    let rx = content.read_stream(blob).await.ok()?;
    Some(OldMembers {
        index,
        blob: Box::new(ChannelReader {
            rx,
            buf: Vec::new(),
            pos: 0,
        }),
    })
}

/// A blocking `Read` over a content stream.
struct ChannelReader {
    rx: mpsc::Receiver<Result<Vec<u8>>>,
    buf: Vec<u8>,
    pos: usize,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.blocking_recv() {
                Some(Ok(chunk)) => {
                    self.buf = chunk;
                    self.pos = 0;
                }
                Some(Err(e)) => return Err(std::io::Error::other(e.to_string())),
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The label on a layer blob whose times were clamped to an epoch, naming
/// the clamped blob (in the compression the label names) and its diffID.
fn clamped_label(epoch: i64, (to, level): (Compression, Level)) -> String {
    match level.value() {
        None => format!("dev.kiln/epoch.{epoch}.{}", to.as_str()),
        Some(l) => format!("dev.kiln/epoch.{epoch}.{}.level{l}", to.as_str()),
    }
}

/// A layer blob in the content store.
#[derive(Clone, Copy, Debug)]
pub struct StoredLayer<'a> {
    pub digest: &'a str,
    /// How the blob is compressed.
    pub compression: Compression,
    pub diff_id: &'a Digest,
}

/// The layer `stored` with every file time later than `epoch` clamped to
/// it, compressed as `to` ([`crate::diff::epoch`]): `None` when no time
/// was later (the layer is unchanged), else the new blob, written under
/// `lease` (or found again from an earlier export with the same epoch).
pub async fn clamp_layer_times(
    content: &dyn Content,
    leases: &dyn Leases,
    stored: StoredLayer<'_>,
    (to, level): (Compression, Level),
    epoch: i64,
    lease: &LeaseId,
) -> Result<Option<LayerDescriptor>> {
    let StoredLayer {
        digest,
        compression: from,
        diff_id,
    } = stored;
    let info = content.info(digest).await?;
    let label = clamped_label(epoch, (to, level));
    if let Some(v) = info.labels.get(&label) {
        if v == "unchanged" {
            return Ok(None);
        }
        if let Some((blob, clamped_id)) = v.split_once('@') {
            if let (Ok(bi), Some(d), Some(id)) = (
                content.info(blob).await,
                Digest::parse(blob),
                Digest::parse(clamped_id),
            ) {
                leases
                    .add_resource(lease, &LeaseResource::Content(blob.to_string()))
                    .await?;
                return Ok(Some(LayerDescriptor {
                    diff_id: id,
                    digest: d,
                    size: bi.size as u64,
                    uncompressed_size: 0,
                    entries: 0,
                    media_type: to.media_type(),
                }));
            }
        }
    }
    // First only the diffID of the clamped tar: most layers (those with
    // no later time) need no new blob at all.
    let rx = content.read_stream(digest).await?;
    let probe = tokio::task::spawn_blocking(move || {
        let mut input = ChannelReader {
            rx,
            buf: Vec::new(),
            pos: 0,
        };
        crate::diff::epoch::clamp_times(
            &mut input,
            from,
            (Compression::Uncompressed, Level::default()),
            epoch,
            &mut std::io::sink(),
        )
    })
    .await
    .map_err(|e| SnapshotError::Io {
        path: "layer stream".into(),
        source: std::io::Error::other(e.to_string()),
    })??;
    let remember = |value: String| async move {
        let mut l = HashMap::new();
        l.insert(label.clone(), value);
        if let Err(e) = content.set_labels(digest, l).await {
            tracing::warn!(digest, error = %e, "cannot record a clamped layer");
        }
    };
    if probe.diff_id == *diff_id {
        remember("unchanged".into()).await;
        return Ok(None);
    }
    let rx = content.read_stream(digest).await?;
    let (writer, desc) = stream_blob(content, lease, move |w| {
        let mut input = ChannelReader {
            rx,
            buf: Vec::new(),
            pos: 0,
        };
        crate::diff::epoch::clamp_times(&mut input, from, (to, level), epoch, w)
    })
    .await?;
    if desc.diff_id != probe.diff_id {
        return Err(SnapshotError::InvalidBlob {
            digest: digest.to_string(),
            reason: "the blob changed while its times were clamped".into(),
        });
    }
    let mut labels = HashMap::new();
    labels.insert(UNCOMPRESSED_LABEL.to_string(), desc.diff_id.to_string());
    writer.commit(&desc.digest, labels).await?;
    remember(format!("{}@{}", desc.digest, desc.diff_id)).await;
    Ok(Some(desc))
}

/// The label on a layer blob naming its variant in another compression,
/// so a second export in that compression reuses it.
fn variant_label(to: Compression) -> String {
    format!("dev.kiln/variant.{}", to.as_str())
}

/// The layer `digest` (compressed as `from`, diffID `diff_id`) in
/// compression `to`: an existing variant (at whatever level) when the blob
/// names one that is still there, else a new blob at `level` written
/// under `lease`.
pub async fn convert_layer(
    content: &dyn Content,
    leases: &dyn Leases,
    digest: &str,
    from: Compression,
    diff_id: &Digest,
    (to, level): (Compression, Level),
    lease: &LeaseId,
) -> Result<(Digest, u64)> {
    let info = content.info(digest).await?;
    if let Some(v) = info.labels.get(&variant_label(to)) {
        if let Ok(vi) = content.info(v).await {
            leases
                .add_resource(lease, &LeaseResource::Content(v.clone()))
                .await?;
            if let Some(d) = Digest::parse(v) {
                return Ok((d, vi.size as u64));
            }
        }
    }
    let rx = content.read_stream(digest).await?;
    let (writer, desc) = stream_blob(content, lease, move |w| {
        let mut input = ChannelReader {
            rx,
            buf: Vec::new(),
            pos: 0,
        };
        crate::diff::recompress(&mut input, from, (to, level), w)
    })
    .await?;
    if desc.diff_id != *diff_id {
        return Err(SnapshotError::InvalidBlob {
            digest: digest.to_string(),
            reason: format!("decompresses to {}, expected {diff_id}", desc.diff_id),
        });
    }
    let mut labels = HashMap::new();
    labels.insert(UNCOMPRESSED_LABEL.to_string(), desc.diff_id.to_string());
    writer.commit(&desc.digest, labels).await?;
    let mut link = HashMap::new();
    link.insert(variant_label(to), desc.digest.to_string());
    if let Err(e) = content.set_labels(digest, link).await {
        tracing::warn!(digest, error = %e, "cannot record a layer variant");
    }
    Ok((desc.digest, desc.size))
}
