//! [`Applier`] on the in-memory containerd: unpacks a layer blob of its
//! content store onto a snapshot's directory, with OCI whiteouts.

use super::store::{rpc, MemContainerd};
use crate::containerd::LeaseId;
use crate::diff::{compression_of, Compression};
use crate::error::{Result, SnapshotError};
use crate::mount::{direct_path, Mount};
use crate::services::{Applier, Content};
use async_trait::async_trait;
use kiln_types::Digest;
use kiln_types::ErrorKind;
use sha2::{Digest as _, Sha256};
use std::collections::HashSet;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Hashes what is read through it (the diffID of the tar stream).
struct HashRead<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for HashRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// The path of a tar entry below the root, or `None` if it would leave it.
fn clean(p: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

fn remove_any(p: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Unpacks an uncompressed layer tar onto `root`; returns its diffID.
fn unpack(input: &[u8], compression: Compression, root: &Path) -> io::Result<String> {
    let reader: Box<dyn Read + '_> = match compression {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(input)?),
        Compression::Uncompressed => Box::new(input),
    };
    let mut ar = tar::Archive::new(HashRead {
        inner: reader,
        hash: Sha256::new(),
    });
    ar.set_preserve_permissions(true);
    ar.set_unpack_xattrs(false);
    // Paths this layer wrote: an opaque marker hides only what was below.
    let mut written: HashSet<PathBuf> = HashSet::new();
    for entry in ar.entries()? {
        let mut entry = entry?;
        let Some(rel) = clean(&entry.path()?) else {
            continue;
        };
        let Some(name) = rel.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            continue;
        };
        let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
        if name == OPAQUE {
            let dir = root.join(&parent);
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    if !written.contains(&parent.join(e.file_name())) {
                        remove_any(&e.path())?;
                    }
                }
            }
            continue;
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT) {
            remove_any(&root.join(&parent).join(hidden))?;
            continue;
        }
        let dest = root.join(&rel);
        let is_dir = entry.header().entry_type().is_dir();
        if let Ok(m) = std::fs::symlink_metadata(&dest) {
            if !(is_dir && m.is_dir()) {
                remove_any(&dest)?;
            }
        }
        entry.unpack_in(root)?;
        written.insert(rel);
    }
    let mut rest = ar.into_inner();
    io::copy(&mut rest, &mut io::sink())?;
    Ok(Digest::from_sha256(rest.hash.finalize().as_slice()).to_string())
}

#[async_trait]
impl Applier for MemContainerd {
    async fn apply(
        &self,
        media_type: &str,
        digest: &str,
        _size: i64,
        mounts: &[Mount],
        _lease: &LeaseId,
    ) -> Result<String> {
        self.injected("Diff.Apply", digest)?;
        let compression = compression_of(media_type).ok_or_else(|| {
            rpc(
                "Diff.Apply",
                digest,
                ErrorKind::InvalidArgument,
                &format!("unsupported diff media type: {media_type}"),
            )
        })?;
        let root = direct_path(mounts).ok_or_else(|| {
            rpc(
                "Diff.Apply",
                digest,
                ErrorKind::InvalidArgument,
                "the in-memory applier needs the single read-write bind mount of an active snapshot",
            )
        })?;
        let data = self.read(digest).await.map_err(|e| match e {
            SnapshotError::Rpc {
                object,
                kind,
                message,
                ..
            } => SnapshotError::Rpc {
                method: "Diff.Apply",
                object,
                kind,
                message,
            },
            other => other,
        })?;
        let r = tokio::task::spawn_blocking(move || unpack(&data, compression, &root))
            .await
            .map_err(|e| rpc("Diff.Apply", digest, ErrorKind::Internal, &e.to_string()))?;
        r.map_err(|e| {
            rpc(
                "Diff.Apply",
                digest,
                ErrorKind::Internal,
                &format!("apply layer: {e}"),
            )
        })
    }
}
