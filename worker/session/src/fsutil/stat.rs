//! An entry's fsutil `Stat`, as fsutil's `mkstat` builds it: the one
//! rule for every place kiln describes a file to a BuildKit client (the
//! DiffCopy sender, the gateway's ReadDir and StatFile).

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use super::{go_mode, mode, FsutilError, Stat};

/// The `Stat` of the entry at host path `abs` (not followed if a link),
/// recorded as `rel`: Go mode bits without the socket bit, owner, size
/// (0 for a directory), mtime in nanoseconds, a symlink's target, device
/// numbers and extended attributes. Hard links are the caller's: only a
/// walk knows which path came first.
pub fn stat_of(abs: &Path, rel: Vec<u8>, md: &Metadata) -> Result<Stat, FsutilError> {
    let ft = md.file_type();
    let linkname = if ft.is_symlink() {
        let target = std::fs::read_link(abs).map_err(|source| FsutilError::Io {
            op: "readlink",
            path: abs.to_path_buf(),
            source,
        })?;
        target.into_os_string().into_vec()
    } else {
        Vec::new()
    };
    let (devmajor, devminor) = if ft.is_block_device() || ft.is_char_device() {
        (
            nix::sys::stat::major(md.rdev()) as i64,
            nix::sys::stat::minor(md.rdev()) as i64,
        )
    } else {
        (0, 0)
    };
    let mut xattrs = HashMap::new();
    if let Ok(names) = xattr::list(abs) {
        for name in names {
            let (Some(key), Ok(Some(value))) = (name.to_str(), xattr::get(abs, &name)) else {
                continue;
            };
            xattrs.insert(key.to_string(), value);
        }
    }
    Ok(Stat {
        path: rel,
        mode: go_mode(md.mode()) & !mode::SOCKET,
        uid: md.uid(),
        gid: md.gid(),
        size: if ft.is_dir() { 0 } else { md.len() as i64 },
        mod_time: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
        linkname,
        devmajor,
        devminor,
        xattrs,
    })
}
