//! Ownership, mode, timestamps and xattrs of written entries. Every call
//! acts on the entry itself, never on a symlink's target.

use super::{io_err, Result};
use nix::sys::stat::{utimensat, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchownat, Gid, Uid};
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use xattr::FileExt as _;

/// Sets permission bits (including setuid/setgid/sticky) of a non-symlink.
pub(crate) fn chmod(root: &Path, host: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(host, std::fs::Permissions::from_mode(mode & 0o7777))
        .map_err(io_err("chmod", root, host))
}

/// Changes the owner of the entry itself (`lchown`).
pub(crate) fn lchown(root: &Path, host: &Path, uid: u32, gid: u32) -> Result<()> {
    fchownat(
        nix::fcntl::AT_FDCWD,
        host,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| io_err("chown", root, host)(std::io::Error::from(e)))
}

fn timespec(ns: i64) -> TimeSpec {
    TimeSpec::new(ns.div_euclid(1_000_000_000), ns.rem_euclid(1_000_000_000))
}

/// Sets access and modification times (nanoseconds since the epoch) of the
/// entry itself.
pub(crate) fn set_times(root: &Path, host: &Path, atime_ns: i64, mtime_ns: i64) -> Result<()> {
    utimensat(
        nix::fcntl::AT_FDCWD,
        host,
        &timespec(atime_ns),
        &timespec(mtime_ns),
        UtimensatFlags::NoFollowSymlink,
    )
    .map_err(|e| io_err("set times of", root, host)(std::io::Error::from(e)))
}

/// Copies extended attributes from `src` to `dst`, best effort like
/// BuildKit (which logs and goes on): filesystems without xattrs, or
/// namespaces the process may not write, are not errors.
pub(crate) fn copy_xattrs(src: &Path, dst: &Path) {
    let Ok(names) = xattr::list(src) else {
        return;
    };
    for name in names {
        match xattr::get(src, &name) {
            Ok(Some(value)) => {
                if let Err(e) = xattr::set(dst, &name, &value) {
                    tracing::debug!(path = %dst.display(), name = ?name, error = %e, "xattr not copied");
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(path = %src.display(), name = ?name, error = %e, "xattr not read");
            }
        }
    }
}

/// [`lchown`] of an open file (`path` only names it in errors).
pub(crate) fn fchown(root: &Path, path: &Path, f: &File, uid: u32, gid: u32) -> Result<()> {
    nix::unistd::fchown(f, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))
        .map_err(|e| io_err("chown", root, path)(std::io::Error::from(e)))
}

/// [`chmod`] of an open file.
pub(crate) fn fchmod(root: &Path, path: &Path, f: &File, mode: u32) -> Result<()> {
    f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
        .map_err(io_err("chmod", root, path))
}

/// [`set_times`] of an open file.
pub(crate) fn futimens(
    root: &Path,
    path: &Path,
    f: &File,
    atime_ns: i64,
    mtime_ns: i64,
) -> Result<()> {
    nix::sys::stat::futimens(f, &timespec(atime_ns), &timespec(mtime_ns))
        .map_err(|e| io_err("set times of", root, path)(std::io::Error::from(e)))
}

/// [`copy_xattrs`] between open files, best effort in the same way.
pub(crate) fn copy_fd_xattrs(src: &File, dst: &File, dst_path: &Path) {
    let Ok(names) = src.list_xattr() else {
        return;
    };
    for name in names {
        match src.get_xattr(&name) {
            Ok(Some(value)) => {
                if let Err(e) = dst.set_xattr(&name, &value) {
                    tracing::debug!(path = %dst_path.display(), name = ?name, error = %e, "xattr not copied");
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(path = %dst_path.display(), name = ?name, error = %e, "xattr not read");
            }
        }
    }
}
