//! Computing an OCI layer from a snapshot change, in one streaming pass.
//!
//! The pipeline is `walk -> tar -> sha256 (diffID) -> compressor -> sha256
//! (blob digest) -> out`; nothing holds more than a directory listing and a
//! few compression blocks in memory.
//!
//! Two walkers produce the same kind of change stream:
//! - [`DiffSource::Overlay`] reads only the overlay upperdir and looks at the
//!   lower tree just for the paths found there (cost grows with the change,
//!   not the image; moby/buildkit util/overlay).
//! - [`DiffSource::Walk`] compares two complete trees, for any snapshotter
//!   (containerd/continuity `fs.Changes`).
//!
//! Output rules, shared by both:
//! - Entries are written depth first, siblings sorted by name bytes (Go's
//!   `filepath.Walk` order), so parents always precede children and the
//!   result is deterministic. The root directory itself is never written,
//!   as with containerd's differ.
//! - A directory whose own metadata did not change is written only when
//!   something below it is (BuildKit and containerd `includeParents`).
//! - Numeric uid/gid, no user or group names, mtime in whole seconds, and
//!   of the extended attributes only `security.capability`, as a
//!   `SCHILY.xattr.security.capability` PAX record: containerd's archive
//!   writer (which BuildKit's differs use) and moby's keep no other, so a
//!   context file's `user.*` attribute or a host's SELinux label never
//!   reaches a layer.
//! - Hard links within the layer become tar links to the first path written.
//! - A deleted path becomes an empty regular file `.wh.<name>` (mode 0,
//!   uid/gid 0, mtime 0), also below an opaque directory (one per lower
//!   entry it no longer holds, as BuildKit writes it; never a
//!   `.wh..wh..opq` marker). Sockets are skipped.

mod compress;
pub mod epoch;
pub mod members;
mod recompress;
pub mod tar;
mod upper;
mod walk;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, Metadata};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use kiln_types::Digest;

use self::compress::{Compressor, CountWriter, HashWriter};
use self::members::{BlobMembers, OldMembers};
pub use self::recompress::{compression_of, recompress};
use self::tar::{CopyError, Entry, EntryKind, TarWriter};
use crate::origin::{LayerOrigin, LinkKey};

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    Gzip,
    Zstd,
    Uncompressed,
}

impl Compression {
    /// The OCI media type of a layer with this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
            Compression::Uncompressed => "application/vnd.oci.image.layer.v1.tar",
        }
    }

    /// The layer media type of this compression in Docker's names (an
    /// export with `oci-mediatypes=false`; zstd as BuildKit names it).
    pub fn docker_media_type(self) -> &'static str {
        match self {
            Compression::Gzip => "application/vnd.docker.image.rootfs.diff.tar.gzip",
            Compression::Zstd => "application/vnd.docker.image.rootfs.diff.tar.zstd",
            Compression::Uncompressed => "application/vnd.docker.image.rootfs.diff.tar",
        }
    }

    /// The name accepted by [`FromStr`] (BuildKit's `compression=` values).
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Uncompressed => "uncompressed",
        }
    }
}

impl FromStr for Compression {
    type Err = DiffError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            "uncompressed" => Ok(Compression::Uncompressed),
            _ => Err(DiffError::UnknownCompression {
                name: s.to_string(),
            }),
        }
    }
}

/// How hard new blobs are compressed: an exporter's `compression-level`,
/// or kiln's default (gzip 6, zstd 3: BuildKit's). Only blobs made new
/// take it; a layer's existing blob is kept, as in BuildKit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Level(Option<i32>);

impl Level {
    /// `compression-level=value` for blobs in `compression`, as BuildKit's
    /// compressors take it: gzip from -1 (its default) to 9 (Go's
    /// `gzip.NewWriterLevel`; -2, Huffman only, is not supported yet);
    /// zstd any level, on the four speeds of BuildKit's Go encoder
    /// (`zstd.EncoderLevelFromZstd`: below 3, below 6, below 10, the rest),
    /// which are here libzstd's levels 1, 3, 7 and 11 (the levels its
    /// authors give them); uncompressed, none. A level equal to the
    /// default is the default. An out-of-range gzip level is refused here;
    /// BuildKit's differs fail on it and its fallback compresses at the
    /// default (it only logs that), which kiln does not do silently.
    pub fn parse(value: &str, compression: Compression) -> Result<Level, DiffError> {
        let level: i64 = value.parse().map_err(|e: std::num::ParseIntError| {
            let why = match e.kind() {
                std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow => {
                    "value out of range"
                }
                _ => "invalid syntax",
            };
            DiffError::Level {
                reason: format!(
                    "non-integer value {value} specified for compression-level: strconv.ParseInt: parsing {value:?}: {why}"
                ),
            }
        })?;
        let level = match compression {
            Compression::Gzip => match level {
                -1 | 6 => None,
                0..=9 => Some(level as i32),
                -2 => {
                    return Err(DiffError::Level {
                        reason: "compression-level=-2 (Huffman-only gzip) is not supported yet"
                            .into(),
                    })
                }
                _ => {
                    return Err(DiffError::Level {
                        reason: format!(
                            "gzip: invalid compression level: {level} (gzip takes -1 to 9)"
                        ),
                    })
                }
            },
            Compression::Zstd => match level {
                ..3 => Some(1),
                3..6 => None,
                6..10 => Some(7),
                _ => Some(11),
            },
            Compression::Uncompressed => None,
        };
        Ok(Level(level))
    }

    /// Whether this is kiln's default level.
    pub fn is_default(self) -> bool {
        self.0.is_none()
    }

    /// The level asked for, `None` for the default (for labels naming
    /// blobs made at it).
    pub fn value(self) -> Option<i32> {
        self.0
    }

    /// The deflate level of gzip members.
    pub(crate) fn gzip(self) -> u32 {
        self.0.and_then(|l| u32::try_from(l).ok()).unwrap_or(6)
    }

    /// The libzstd level of zstd frames.
    pub(crate) fn zstd(self) -> i32 {
        self.0.unwrap_or(3)
    }
}

/// Where the change comes from.
#[derive(Debug, Clone, Copy)]
pub enum DiffSource<'a> {
    /// Overlay fast path: `upper` is the snapshot's overlay upperdir
    /// (whiteouts are 0/0 char devices, opaque dirs carry
    /// `trusted.overlay.opaque=y`), `lower` a mounted read-only view of the
    /// parent tree (`None`: no parent). The overlay should not be written to
    /// while this runs.
    Overlay {
        upper: &'a Path,
        lower: Option<&'a Path>,
    },
    /// Fallback for any snapshotter: compare two complete mounted trees.
    Walk {
        lower: Option<&'a Path>,
        upper: &'a Path,
    },
}

/// The result of [`write_layer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDescriptor {
    /// SHA-256 of the uncompressed tar.
    pub diff_id: Digest,
    /// SHA-256 of the blob written to `out`.
    pub digest: Digest,
    /// Bytes written to `out`.
    pub size: u64,
    /// Bytes of the uncompressed tar.
    pub uncompressed_size: u64,
    /// Tar entries written (PAX headers not counted); 0 means an empty layer,
    /// whose tar is just the end-of-archive marker.
    pub entries: usize,
    pub media_type: &'static str,
}

/// Errors from computing a layer diff.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    /// Reading the source trees failed.
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The upperdir uses overlay redirects or metacopy, so it does not hold
    /// the whole change; the caller must fall back to [`DiffSource::Walk`].
    #[error("overlay redirect or metacopy xattr on {path}; the upperdir diff cannot be used")]
    Redirect { path: PathBuf },
    /// A regular file was shorter than its size at the time it was stat'ed.
    #[error("{path} changed while the layer was being written")]
    FileChanged { path: PathBuf },
    /// Writing, compressing or hashing the output failed.
    #[error("writing the layer blob")]
    Output {
        #[source]
        source: io::Error,
    },
    /// A compression name other than gzip, zstd or uncompressed.
    #[error("unknown layer compression {name:?}")]
    UnknownCompression { name: String },
    /// A `compression-level` the compression does not take.
    #[error("{reason}")]
    Level { reason: String },
}

impl DiffError {
    fn io(path: &Path, source: io::Error) -> Self {
        DiffError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    fn output(source: io::Error) -> Self {
        DiffError::Output { source }
    }
}

/// Writes the layer tar for `src`, compressed, to `out` and returns its
/// digests. Streaming: walk -> tar -> sha256 (diffID) -> compressor ->
/// sha256 (blob) -> out. With [`Compression::Uncompressed`] the digest is the
/// diffID. `out` is flushed but not synced.
pub fn write_layer(
    src: DiffSource<'_>,
    compression: Compression,
    out: &mut dyn Write,
) -> Result<LayerDescriptor, DiffError> {
    let (blob, hash, _) = compress_layer(
        src,
        (compression, Level::default()),
        HashWriter::new(out),
        None,
    )?;
    let (out, digest, size) = blob.finish();
    out.flush().map_err(DiffError::output)?;
    let desc = LayerDescriptor {
        diff_id: hash.diff_id,
        digest: Digest::from_sha256(&digest),
        size,
        uncompressed_size: hash.uncompressed_size,
        entries: hash.entries,
        media_type: compression.media_type(),
    };
    tracing::debug!(
        diff_id = desc.diff_id.as_str(),
        digest = desc.digest.as_str(),
        size,
        uncompressed_size = desc.uncompressed_size,
        entries = desc.entries,
        "layer written"
    );
    Ok(desc)
}

/// How [`write_tree`] describes what it writes beside the files' stats.
#[derive(Clone, Debug, Default)]
pub struct TreeOptions {
    /// Top-level directories that only group what is below them (a
    /// multi-platform export's `linux_amd64/`, ...): each is written as
    /// BuildKit's exporters describe them, mode 0755, owner 0:0, no time
    /// (the `mtime` below if there is one), no xattrs.
    pub synthetic_dirs: Vec<String>,
    /// Every entry's time, in seconds (an exporter's epoch, as BuildKit's
    /// local and tar exporters set it): `None` keeps each file's own.
    pub mtime: Option<i64>,
    /// The layers under `root`: names of one inode are written as hard
    /// links only when they come from one layer.
    pub origin: LayerOrigin,
}

/// The tar of the whole tree under `root` (no parent, nothing compressed),
/// as an exporter sends a result's files, to `out`; returns the entries
/// written.
pub fn write_tree(
    root: &Path,
    opts: &TreeOptions,
    out: &mut dyn Write,
) -> Result<usize, DiffError> {
    let mut emitter = Emitter::new(TarWriter::new(BufWriter::with_capacity(256 * 1024, out)));
    emitter.synthetic = opts
        .synthetic_dirs
        .iter()
        .map(|d| d.as_bytes().to_vec())
        .collect();
    emitter.mtime = opts.mtime;
    emitter.origin = opts.origin.clone();
    walk::walk(&mut emitter, None, root)?;
    let entries = emitter.entries;
    let mut buffered = emitter.tar.finish().map_err(DiffError::output)?;
    buffered.flush().map_err(DiffError::output)?;
    Ok(entries)
}

/// [`write_layer`] into a store that hashes what it receives, as
/// containerd's content store does (it answers every write with its
/// running digest, and checks a commit against it): the compressed bytes
/// are not hashed a second time here. Returns the layer's diffID (the
/// uncompressed tar is still hashed, in the same pass that feeds the
/// compressor) and the blob's size; the blob's digest is the store's.
/// `out` is flushed but not synced.
pub fn stream_layer(
    src: DiffSource<'_>,
    compression: Compression,
    out: &mut dyn Write,
) -> Result<(LayerHash, u64), DiffError> {
    let (hash, size, _) = stream_layer_reusing(src, (compression, Level::default()), out, None)?;
    Ok((hash, size))
}

/// [`stream_layer`] at a compression `level`, copying the members `old`
/// (an earlier blob's members, of the same compression and level) already
/// holds instead of compressing them again: the bytes written are the
/// same as without it. Also returns, for gzip and zstd, where this blob's
/// members are (for the next blob to reuse).
pub fn stream_layer_reusing(
    src: DiffSource<'_>,
    compression: (Compression, Level),
    out: &mut dyn Write,
    old: Option<OldMembers>,
) -> Result<(LayerHash, u64, Option<BlobMembers>), DiffError> {
    let (blob, hash, members) = compress_layer(src, compression, CountWriter::new(out), old)?;
    let (out, size) = blob.finish();
    out.flush().map_err(DiffError::output)?;
    tracing::debug!(
        diff_id = hash.diff_id.as_str(),
        size,
        uncompressed_size = hash.uncompressed_size,
        entries = hash.entries,
        members = members.as_ref().map(|m| m.total),
        reused = members.as_ref().map(|m| m.reused),
        "layer streamed"
    );
    Ok((hash, size, members))
}

/// The tar of `src`, hashed (the diffID) and compressed into `blob`; the
/// shared middle of [`write_layer`] and [`stream_layer`].
fn compress_layer<B: Write>(
    src: DiffSource<'_>,
    (compression, level): (Compression, Level),
    blob: B,
    old: Option<OldMembers>,
) -> Result<(B, LayerHash, Option<BlobMembers>), DiffError> {
    // Members describe default-level bytes: never copied into another level.
    let old = old.filter(|_| level.is_default());
    let compressor =
        Compressor::reusing(compression, level, blob, old).map_err(DiffError::output)?;
    let (tar_hash, entries) = emit(src, HashWriter::new(compressor))?;
    let (compressor, diff_id, uncompressed_size) = tar_hash.finish();
    let (blob, members) = compressor.finish_indexed().map_err(DiffError::output)?;
    Ok((
        blob,
        LayerHash {
            diff_id: Digest::from_sha256(&diff_id),
            uncompressed_size,
            entries,
        },
        members,
    ))
}

/// Writes the tar of `src` to `out` (the one place the layer's tar bytes
/// are produced, for [`write_layer`] and [`hash_layer`] alike) and returns
/// `out` with the number of entries written.
fn emit<W: Write>(src: DiffSource<'_>, out: W) -> Result<(W, usize), DiffError> {
    let mut emitter = Emitter::new(TarWriter::new(BufWriter::with_capacity(256 * 1024, out)));
    match src {
        DiffSource::Overlay { upper, lower } => upper::walk(&mut emitter, upper, lower)?,
        DiffSource::Walk { lower, upper } => walk::walk(&mut emitter, lower, upper)?,
    }
    let entries = emitter.entries;
    let buffered = emitter.tar.finish().map_err(DiffError::output)?;
    let out = buffered
        .into_inner()
        .map_err(|e| DiffError::output(e.into_error()))?;
    Ok((out, entries))
}

/// What [`hash_layer`] found: the layer's identity without its blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerHash {
    /// SHA-256 of the uncompressed tar.
    pub diff_id: Digest,
    /// Bytes of the uncompressed tar.
    pub uncompressed_size: u64,
    /// Tar entries (as [`LayerDescriptor::entries`]).
    pub entries: usize,
}

/// The diffID of the layer of `src`: the same tar [`write_layer`] writes,
/// hashed and dropped, with no compression and no blob. A blob written
/// later from the same change has this diffID.
pub fn hash_layer(src: DiffSource<'_>) -> Result<LayerHash, DiffError> {
    let (tar_hash, entries) = emit(src, HashWriter::new(io::sink()))?;
    let (_, diff_id, uncompressed_size) = tar_hash.finish();
    let h = LayerHash {
        diff_id: Digest::from_sha256(&diff_id),
        uncompressed_size,
        entries,
    };
    tracing::debug!(
        diff_id = h.diff_id.as_str(),
        uncompressed_size,
        entries,
        "layer hashed"
    );
    Ok(h)
}

/// The one extended attribute a layer carries (see the module doc).
const LAYER_XATTR: &str = "security.capability";

/// An lstat result plus the extended attributes that go into the tar.
pub(crate) struct Node {
    meta: Metadata,
    /// [`LAYER_XATTR`] if the entry has it.
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// Names of overlay-internal xattrs that were present.
    overlay_xattrs: Vec<OsString>,
}

impl Node {
    /// lstat + xattrs of `path`; `Ok(None)` if it does not exist.
    fn read_opt(path: &Path) -> Result<Option<Node>, DiffError> {
        match fs::symlink_metadata(path) {
            Ok(meta) => Node::with_meta(path, meta).map(Some),
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                Ok(None)
            }
            Err(e) => Err(DiffError::io(path, e)),
        }
    }

    fn read(path: &Path) -> Result<Node, DiffError> {
        let meta = fs::symlink_metadata(path).map_err(|e| DiffError::io(path, e))?;
        Node::with_meta(path, meta)
    }

    fn with_meta(path: &Path, meta: Metadata) -> Result<Node, DiffError> {
        let mut xattrs = Vec::new();
        let mut overlay_xattrs = Vec::new();
        let names = match xattr::list(path) {
            Ok(names) => names.collect::<Vec<_>>(),
            // Filesystems without xattr support have no xattrs.
            Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => Vec::new(),
            Err(e) => return Err(DiffError::io(path, e)),
        };
        for name in names {
            let bytes = name.as_bytes();
            if bytes.starts_with(b"trusted.overlay.") || bytes.starts_with(b"user.overlay.") {
                overlay_xattrs.push(name);
                continue;
            }
            // containerd's archive writer and BuildKit's overlay differ
            // keep (and compare) only the file capability; any other
            // attribute (`user.*`, `security.selinux`, ACLs) stays out of
            // the layer and does not make a file changed.
            if bytes != LAYER_XATTR.as_bytes() {
                continue;
            }
            // A value removed between list and get is simply not there.
            if let Some(value) = xattr::get(path, &name).map_err(|e| DiffError::io(path, e))? {
                xattrs.push((bytes.to_vec(), value));
            }
        }
        xattrs.sort();
        overlay_xattrs.sort();
        Ok(Node {
            meta,
            xattrs,
            overlay_xattrs,
        })
    }

    fn is_dir(&self) -> bool {
        self.meta.is_dir()
    }

    fn is_socket(&self) -> bool {
        self.meta.file_type().is_socket()
    }

    /// A whiteout: a character device 0/0.
    fn is_whiteout(&self) -> bool {
        self.meta.file_type().is_char_device() && self.meta.rdev() == 0
    }

    fn overlay_xattr(&self, path: &Path, suffix: &str) -> Result<Option<Vec<u8>>, DiffError> {
        for prefix in ["trusted.overlay.", "user.overlay."] {
            let name = format!("{prefix}{suffix}");
            if self.overlay_xattrs.iter().any(|n| n == name.as_str()) {
                return xattr::get(path, &name).map_err(|e| DiffError::io(path, e));
            }
        }
        Ok(None)
    }
}

/// Whether `upper` is unchanged relative to `lower`, following
/// containerd/continuity `sameFile`: same inode, or same type, mode, uid,
/// gid, rdev and file capability, and for non-directories same size and mtime, with
/// contents (or symlink targets) compared when both mtimes have no
/// sub-second part (they may have been truncated by a tar round trip).
fn same_node(
    lower: &Node,
    lower_path: &Path,
    upper: &Node,
    upper_path: &Path,
) -> Result<bool, DiffError> {
    let (l, u) = (&lower.meta, &upper.meta);
    if l.dev() == u.dev() && l.ino() == u.ino() {
        return Ok(true);
    }
    if l.mode() != u.mode() || l.uid() != u.uid() || l.gid() != u.gid() || l.rdev() != u.rdev() {
        return Ok(false);
    }
    if lower.xattrs != upper.xattrs {
        return Ok(false);
    }
    if u.is_dir() {
        return Ok(true);
    }
    if l.size() != u.size() || l.mtime() != u.mtime() {
        return Ok(false);
    }
    if u.file_type().is_symlink() {
        let lt = fs::read_link(lower_path).map_err(|e| DiffError::io(lower_path, e))?;
        let ut = fs::read_link(upper_path).map_err(|e| DiffError::io(upper_path, e))?;
        return Ok(lt == ut);
    }
    if l.mtime_nsec() == 0 && u.mtime_nsec() == 0 {
        if !u.file_type().is_file() || u.size() == 0 {
            return Ok(true);
        }
        return same_content(lower_path, upper_path);
    }
    Ok(l.mtime_nsec() == u.mtime_nsec())
}

fn same_content(a: &Path, b: &Path) -> Result<bool, DiffError> {
    let mut fa = File::open(a).map_err(|e| DiffError::io(a, e))?;
    let mut fb = File::open(b).map_err(|e| DiffError::io(b, e))?;
    let mut ba = vec![0u8; 64 * 1024];
    let mut bb = vec![0u8; 64 * 1024];
    loop {
        let na = read_full(&mut fa, &mut ba).map_err(|e| DiffError::io(a, e))?;
        let nb = read_full(&mut fb, &mut bb).map_err(|e| DiffError::io(b, e))?;
        if na != nb || ba[..na] != bb[..nb] {
            return Ok(false);
        }
        if na == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The names in `dir`, sorted by bytes.
fn sorted_names(dir: &Path) -> Result<Vec<OsString>, DiffError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| DiffError::io(dir, e))? {
        names.push(entry.map_err(|e| DiffError::io(dir, e))?.file_name());
    }
    names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
    Ok(names)
}

/// `parent/name` as a tar path (no leading slash; `parent` empty = root).
fn join_rel(parent: &[u8], name: &OsStr) -> Vec<u8> {
    let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
    if !parent.is_empty() {
        p.extend_from_slice(parent);
        p.push(b'/');
    }
    p.extend_from_slice(name.as_bytes());
    p
}

/// A path of the upper tree as it is in the lower tree.
pub(crate) struct Lower {
    path: PathBuf,
    node: Node,
}

impl Lower {
    /// `name` in lower directory `dir`; `None` when there is no lower
    /// directory or no such entry in it.
    fn of(dir: Option<&Path>, name: &OsStr) -> Result<Option<Lower>, DiffError> {
        let Some(dir) = dir else { return Ok(None) };
        let path = dir.join(name);
        Ok(Node::read_opt(&path)?.map(|node| Lower { path, node }))
    }

    /// The lower entry if it is a directory (whose children are compared).
    fn dir(this: &Option<Lower>) -> Option<&Lower> {
        this.as_ref().filter(|l| l.node.is_dir())
    }

    /// Whether upper `node` at `path` is unchanged from this entry.
    fn same_as(&self, node: &Node, path: &Path) -> Result<bool, DiffError> {
        same_node(&self.node, &self.path, node, path)
    }
}

/// A directory on the current walk path whose header may not be written yet.
struct OpenDir {
    rel: Vec<u8>,
    node: Node,
    written: bool,
}

/// Turns the walkers' change stream into tar entries: writes pending parent
/// directories before any entry below them, detects hard links and counts
/// entries.
pub(crate) struct Emitter<W: Write> {
    tar: TarWriter<W>,
    open: Vec<OpenDir>,
    /// Multiply-linked non-directories (by [`LayerOrigin::link_key`]) ->
    /// first tar path.
    links: HashMap<LinkKey, Vec<u8>>,
    /// Where the walked tree's files come from ([`write_tree`]); a layer's
    /// own directory is one layer.
    origin: LayerOrigin,
    entries: usize,
    /// Directories written with a bare stat ([`write_tree`]).
    synthetic: Vec<Vec<u8>>,
    /// Every entry's time ([`TreeOptions::mtime`]).
    mtime: Option<i64>,
}

impl<W: Write> Emitter<W> {
    fn new(tar: TarWriter<W>) -> Self {
        Emitter {
            tar,
            open: Vec::new(),
            links: HashMap::new(),
            origin: LayerOrigin::default(),
            entries: 0,
            synthetic: Vec::new(),
            mtime: None,
        }
    }

    /// Enters directory `rel`; it is written now if `changed`, else only
    /// once something below it is written.
    fn enter_dir(&mut self, rel: Vec<u8>, node: Node, changed: bool) -> Result<(), DiffError> {
        self.open.push(OpenDir {
            rel,
            node,
            written: false,
        });
        if changed {
            self.flush_parents()?;
        }
        Ok(())
    }

    fn leave_dir(&mut self) {
        self.open.pop();
    }

    fn flush_parents(&mut self) -> Result<(), DiffError> {
        for i in 0..self.open.len() {
            if self.open[i].written {
                continue;
            }
            let mut path = self.open[i].rel.clone();
            path.push(b'/');
            let dir = &self.open[i];
            let mut entry = if self.synthetic.contains(&dir.rel) {
                Entry {
                    path: &path,
                    size: 0,
                    kind: EntryKind::Dir,
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    mtime: 0,
                    xattrs: &[],
                }
            } else {
                entry_for(&path, &dir.node, EntryKind::Dir)
            };
            if let Some(t) = self.mtime {
                entry.mtime = t;
            }
            self.tar.append_header(&entry).map_err(DiffError::output)?;
            self.entries += 1;
            self.open[i].written = true;
        }
        Ok(())
    }

    /// Writes a non-directory `rel` read from `abs`, unless it is unchanged
    /// from its `lower` entry.
    fn changed_file(
        &mut self,
        rel: &[u8],
        abs: &Path,
        node: &Node,
        lower: Option<&Lower>,
    ) -> Result<(), DiffError> {
        match lower {
            Some(l) if l.same_as(node, abs)? => Ok(()),
            _ => self.file(rel, abs, node),
        }
    }

    /// Writes a non-directory `rel` read from `abs`.
    fn file(&mut self, rel: &[u8], abs: &Path, node: &Node) -> Result<(), DiffError> {
        self.flush_parents()?;
        let meta = &node.meta;
        let ft = meta.file_type();
        let mut kind = if ft.is_file() {
            EntryKind::Regular
        } else if ft.is_symlink() {
            let target = fs::read_link(abs).map_err(|e| DiffError::io(abs, e))?;
            EntryKind::Symlink(target.into_os_string().into_vec())
        } else if ft.is_char_device() {
            EntryKind::Char {
                major: nix::sys::stat::major(meta.rdev()),
                minor: nix::sys::stat::minor(meta.rdev()),
            }
        } else if ft.is_block_device() {
            EntryKind::Block {
                major: nix::sys::stat::major(meta.rdev()),
                minor: nix::sys::stat::minor(meta.rdev()),
            }
        } else if ft.is_fifo() {
            EntryKind::Fifo
        } else {
            // Sockets (and anything unknown) cannot be represented in a tar.
            return Ok(());
        };
        if meta.nlink() > 1 {
            let key = self
                .origin
                .link_key(Path::new(OsStr::from_bytes(rel)), meta);
            match self.links.get(&key) {
                Some(first) => kind = EntryKind::HardLink(first.clone()),
                None => {
                    self.links.insert(key, rel.to_vec());
                }
            }
        }
        let is_data = kind == EntryKind::Regular && meta.size() > 0;
        let mut file = if is_data {
            Some(File::open(abs).map_err(|e| DiffError::io(abs, e))?)
        } else {
            None
        };
        let mut entry = entry_for(rel, node, kind);
        if let Some(t) = self.mtime {
            entry.mtime = t;
        }
        self.tar.append_header(&entry).map_err(DiffError::output)?;
        self.entries += 1;
        if let Some(f) = file.as_mut() {
            self.tar.copy_data(f, meta.size()).map_err(|e| match e {
                CopyError::Read(e) => DiffError::io(abs, e),
                CopyError::Write(e) => DiffError::output(e),
                CopyError::Short => DiffError::FileChanged {
                    path: abs.to_path_buf(),
                },
            })?;
        }
        Ok(())
    }

    /// Writes the whiteout `<parent>/.wh.<name>`.
    fn whiteout(&mut self, parent: &[u8], name: &OsStr) -> Result<(), DiffError> {
        let mut wh = OsString::from(".wh.");
        wh.push(name);
        self.marker(&join_rel(parent, &wh))
    }

    fn marker(&mut self, path: &[u8]) -> Result<(), DiffError> {
        self.flush_parents()?;
        let entry = Entry {
            path,
            kind: EntryKind::Regular,
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            xattrs: &[],
        };
        self.tar.append_header(&entry).map_err(DiffError::output)?;
        self.entries += 1;
        Ok(())
    }
}

fn entry_for<'a>(path: &'a [u8], node: &'a Node, kind: EntryKind) -> Entry<'a> {
    let meta = &node.meta;
    Entry {
        path,
        size: if kind == EntryKind::Regular {
            meta.size()
        } else {
            0
        },
        kind,
        mode: meta.mode() & 0o7777,
        uid: u64::from(meta.uid()),
        gid: u64::from(meta.gid()),
        mtime: meta.mtime(),
        xattrs: &node.xattrs,
    }
}

#[cfg(test)]
mod tests;
