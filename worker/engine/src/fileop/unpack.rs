//! `ADD` of a local archive: detection by content and extraction clamped to
//! the destination directory (BuildKit's `file/unpack.go` over containerd's
//! `archive.Apply`, without whiteout handling).
//!
//! Plain, gzip, bzip2, xz and zstd tars are recognised by their first
//! bytes, as BuildKit's `DetectCompression` does; the file's name does not
//! matter.

use super::root::{self, DirAttrs, Resolved};
use super::{io_err, meta, FileOpError, Result};
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b, 0x08];
const BZIP2_MAGIC: &[u8] = b"BZh";
const XZ_MAGIC: &[u8] = &[0xfd, b'7', b'z', b'X', b'Z', 0];
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// The most memory (KiB) the xz decoder may use for one block: far above
/// what `xz -9` needs (a 64 MiB dictionary), so only a hostile archive
/// hits it.
const XZ_MEMORY_LIMIT_KIB: u32 = 1 << 20;

/// Opens a possibly compressed archive as its decompressed bytes.
fn open_stream(path: &Path) -> std::io::Result<Box<dyn Read>> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let mut reader = BufReader::new(file);
    let head = reader.fill_buf()?;
    Ok(if head.starts_with(GZIP_MAGIC) {
        Box::new(flate2::bufread::MultiGzDecoder::new(reader))
    } else if head.starts_with(BZIP2_MAGIC) {
        Box::new(bzip2::bufread::MultiBzDecoder::new(reader))
    } else if head.starts_with(XZ_MAGIC) {
        Box::new(lzma_rust2::XzReader::new_mem_limit(
            reader,
            true,
            XZ_MEMORY_LIMIT_KIB,
        ))
    } else if head.starts_with(ZSTD_MAGIC) {
        Box::new(zstd::stream::read::Decoder::with_buffer(reader)?)
    } else {
        Box::new(reader)
    })
}

/// Whether `path` is a regular file holding a tar archive with a valid
/// first header (the name does not matter).
pub(crate) fn is_archive(path: &Path) -> bool {
    let is_file = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_file());
    if !is_file {
        return false;
    }
    let Ok(stream) = open_stream(path) else {
        return false;
    };
    let mut archive = tar::Archive::new(stream);
    let Ok(mut entries) = archive.entries() else {
        return false;
    };
    matches!(entries.next(), Some(Ok(_)))
}

/// The latest modification time of a regular file in the archive at
/// `path` (BuildKit's `archiveMaxTimeFromRef` with non-archives allowed):
/// `None` when it is not an archive, has no regular file, or does not
/// read to its end.
pub(crate) fn latest_file_time(path: &Path) -> Option<i64> {
    let stream = open_stream(path).ok()?;
    let mut archive = tar::Archive::new(stream);
    let mut latest: Option<i64> = None;
    for entry in archive.entries().ok()? {
        let entry = entry.ok()?;
        let header = entry.header();
        if !matches!(
            header.entry_type(),
            tar::EntryType::Regular | tar::EntryType::Continuous
        ) {
            continue;
        }
        let t = i64::try_from(numeric(header.mtime(), &header.as_old().mtime).ok()?).ok()?;
        latest = Some(latest.map_or(t, |l| l.max(t)));
    }
    latest
}

/// A numeric header field as Go's archive/tar (BuildKit's) reads it: a
/// field of only NULs and spaces is 0, where the tar crate refuses it
/// (archives written without owners leave the fields empty). Used for
/// the fields unpacking reads itself: mode, mtime, uid and gid (the
/// size is the tar crate's to read).
fn numeric(value: std::io::Result<u64>, raw: &[u8]) -> std::io::Result<u64> {
    match value {
        Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
        v => v,
    }
}

/// Extracts the archive at `archive` into the directory `dst` of
/// `dest_root` (created 0755, with `chown`), like `tar -x`: existing
/// directories are merged, other existing entries replaced. Entry paths,
/// hard link targets and symlinks met on the way are clamped inside `dst`.
/// Entries keep the archive's uid/gid unless `chown` is given, and the
/// archive's modes and mtimes. Returns the directories created for `dst`.
pub(crate) fn extract(
    src_root: &Path,
    archive: &Path,
    dest_root: &Path,
    dst: &Resolved,
    chown: Option<(u32, u32)>,
    timestamp: Option<i64>,
) -> Result<Vec<PathBuf>> {
    let created = root::mkdir_all(
        dest_root,
        dst,
        DirAttrs {
            mode: 0o755,
            owner: chown,
            timestamp,
        },
    )?;
    let shown = root::display(src_root, archive);
    let bad = |source: std::io::Error| FileOpError::Archive {
        path: shown.clone(),
        source,
    };
    let stream = open_stream(archive).map_err(bad)?;
    let base = dst.host.as_path();
    let mut tar = tar::Archive::new(stream);
    let mut dirs: Vec<(PathBuf, i64)> = Vec::new();
    for entry in tar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let name = entry.path().map_err(bad)?.into_owned();
        let Ok((parent, last)) = root::resolve_parent(base, &name) else {
            // "", ".", "/": the destination itself, left as it is.
            continue;
        };
        let header = entry.header().clone();
        let kind = header.entry_type();
        // As BuildKit's untar: missing parents are created only when the
        // parent path itself is absent; one that exists (a symlink, even
        // to a missing directory) is opened through, never created.
        let lexical = root::resolve(base, name.parent().unwrap_or(Path::new("")), false, None)?;
        if std::fs::symlink_metadata(&lexical.host).is_ok() {
            if let Some(reason) = not_a_dir(&parent.host) {
                return Err(FileOpError::EntryParent {
                    op: if kind.is_dir() { "mkdir" } else { "open" },
                    path: format!("/{}", clean(&name)),
                    reason,
                });
            }
        } else {
            root::mkdir_all(
                base,
                &parent,
                DirAttrs {
                    mode: 0o755,
                    owner: chown,
                    timestamp: None,
                },
            )?;
        }
        let target = parent.host.join(&last);
        let xattrs = pax_xattrs(&mut entry);
        let old = header.as_old();
        let mode = numeric(header.mode().map(u64::from), &old.mode).map_err(bad)? as u32;
        let mtime = numeric(header.mtime(), &old.mtime).map_err(bad)? as i64;
        let (uid, gid) = match chown {
            Some(ids) => ids,
            None => (
                numeric(header.uid(), &old.uid).map_err(bad)? as u32,
                numeric(header.gid(), &old.gid).map_err(bad)? as u32,
            ),
        };
        let existing = std::fs::symlink_metadata(&target).ok();
        if let Some(m) = &existing {
            if !(m.is_dir() && kind.is_dir()) {
                let removed = if m.is_dir() {
                    std::fs::remove_dir_all(&target)
                } else {
                    std::fs::remove_file(&target)
                };
                removed.map_err(io_err("remove", base, &target))?;
            }
        }
        match kind {
            tar::EntryType::Directory => {
                if !std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_dir()) {
                    std::fs::create_dir(&target).map_err(io_err("mkdir", base, &target))?;
                }
                dirs.push((target.clone(), mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&target)
                    .map_err(io_err("create", base, &target))?;
                std::io::copy(&mut entry, &mut out).map_err(bad)?;
            }
            tar::EntryType::Symlink => {
                let link = entry
                    .link_name()
                    .map_err(bad)?
                    .ok_or_else(|| bad(std::io::Error::other("symlink without target")))?;
                std::os::unix::fs::symlink(&link, &target).map_err(io_err(
                    "create symlink",
                    base,
                    &target,
                ))?;
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(bad)?
                    .ok_or_else(|| bad(std::io::Error::other("hard link without target")))?
                    .into_owned();
                let (lp, ll) = root::resolve_parent(base, &link)?;
                let source = lp.host.join(ll);
                std::fs::hard_link(&source, &target).map_err(io_err(
                    "create hard link",
                    base,
                    &target,
                ))?;
                // A hard link shares the inode: nothing more to set.
                continue;
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let sflag = match kind {
                    tar::EntryType::Char => nix::sys::stat::SFlag::S_IFCHR,
                    tar::EntryType::Block => nix::sys::stat::SFlag::S_IFBLK,
                    _ => nix::sys::stat::SFlag::S_IFIFO,
                };
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                let dev = libc::makedev(major, minor);
                let perm = nix::sys::stat::Mode::from_bits_truncate(mode & 0o7777);
                if let Err(e) = nix::sys::stat::mknod(&target, sflag, perm, dev) {
                    tracing::debug!(path = %target.display(), error = %e, "device node not created");
                    continue;
                }
            }
            // PAX/GNU metadata entries are folded in by the reader; other
            // kinds (sparse, volume labels) are skipped.
            _ => continue,
        }
        meta::lchown(base, &target, uid, gid)?;
        if kind != tar::EntryType::Symlink {
            meta::chmod(base, &target, mode)?;
        }
        for (key, value) in xattrs {
            if let Err(e) = xattr::set(&target, &key, &value) {
                tracing::debug!(path = %target.display(), name = %key, error = %e, "xattr not set");
            }
        }
        if !kind.is_dir() {
            let ns = mtime * 1_000_000_000;
            meta::set_times(base, &target, ns, ns)?;
        }
    }
    // Directory times last: writing their contents moved them.
    for (dir, mtime) in dirs.iter().rev() {
        let ns = mtime * 1_000_000_000;
        meta::set_times(base, dir, ns, ns)?;
    }
    Ok(created)
}

/// `SCHILY.xattr.*` records of an entry's PAX header.
/// Why a resolved parent directory is none, in Go's words (`None` when
/// it is a directory).
fn not_a_dir(host: &Path) -> Option<&'static str> {
    match std::fs::symlink_metadata(host) {
        Ok(m) if m.is_dir() => None,
        Ok(_) => Some("not a directory"),
        Err(_) => Some("no such file or directory"),
    }
}

/// An entry name cleaned as Go's `filepath.Join("/", name)` does: `.`
/// dropped, `..` taking off a name (none above the root).
fn clean(name: &Path) -> String {
    let mut out: Vec<String> = Vec::new();
    for s in kiln_context::path::segments(name) {
        match s {
            kiln_context::path::Seg::Parent => {
                out.pop();
            }
            kiln_context::path::Seg::Name(n) => out.push(n.to_string_lossy().into_owned()),
        }
    }
    out.join("/")
}

fn pax_xattrs<R: Read>(entry: &mut tar::Entry<'_, R>) -> Vec<(String, Vec<u8>)> {
    let Ok(Some(exts)) = entry.pax_extensions() else {
        return Vec::new();
    };
    exts.filter_map(|e| e.ok())
        .filter_map(|e| {
            let key = e.key().ok()?.strip_prefix("SCHILY.xattr.")?.to_string();
            Some((key, e.value_bytes().to_vec()))
        })
        .collect()
}
