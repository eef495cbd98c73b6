//! mkdir, mkfile, rm and symlink actions (BuildKit's `file/backend.go`).

use super::root::{self, DirAttrs};
use super::{io_err, meta, owner, FileOpError, Result};
use kiln_context::ignore::clean_path;
use kiln_context::walk::resolve_wildcards;
use kiln_solver::{FileMkDir, FileMkFile, FileRm, FileSymlink};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Creates a directory inside `root` with `op.mode` (permission bits only,
/// as BuildKit) and owner (names resolved in `root`). With `make_parents`
/// missing parents are created alike and an existing directory is fine;
/// without it the parent must exist, and an existing entry is left alone.
pub fn mkdir(root: &Path, op: &FileMkDir) -> Result<()> {
    let owner = owner::resolve(root, op.owner.as_ref());
    let target = root::resolve(root, Path::new(&op.path), true, None)?;
    let attrs = DirAttrs {
        mode: op.mode & 0o777,
        owner,
        timestamp: op.timestamp,
    };
    if op.make_parents {
        let created = root::mkdir_all(root, &target, attrs)?;
        return root::restamp(root, &created, op.timestamp);
    }
    match std::fs::create_dir(&target.host) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(io_err("mkdir", root, &target.host)(e)),
    }
    meta::chmod(root, &target.host, attrs.mode)?;
    if let Some((uid, gid)) = owner {
        meta::lchown(root, &target.host, uid, gid)?;
    }
    if let Some(ts) = op.timestamp {
        meta::set_times(root, &target.host, ts, ts)?;
    }
    Ok(())
}

/// Writes `op.data` to a file inside `root` (created or truncated; a
/// symlink at the path is followed inside the root), then sets its mode
/// (permission bits), owner and timestamp.
pub fn mkfile(root: &Path, op: &FileMkFile) -> Result<()> {
    let owner = owner::resolve(root, op.owner.as_ref());
    let target = root::resolve(root, Path::new(&op.path), true, None)?;
    let host = &target.host;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(host)
        .map_err(io_err("create", root, host))?;
    file.write_all(&op.data)
        .map_err(io_err("write", root, host))?;
    drop(file);
    if let Some((uid, gid)) = owner {
        meta::lchown(root, host, uid, gid)?;
    }
    meta::chmod(root, host, op.mode & 0o777)?;
    if let Some(ts) = op.timestamp {
        meta::set_times(root, host, ts, ts)?;
    }
    Ok(())
}

/// Removes a path inside `root` (recursively for directories, never
/// following a final symlink). With `allow_wildcard` the path may hold
/// wildcards, and matching nothing is fine.
pub fn rm(root: &Path, op: &FileRm) -> Result<()> {
    if op.allow_wildcard {
        if let Some(matches) =
            resolve_wildcards(root, &op.path, false, None).map_err(root::path_err(root))?
        {
            for m in matches {
                remove(root, &m.host, &op.path, op.allow_not_found)?;
            }
            return Ok(());
        }
    }
    let (parent, name) = root::resolve_parent(root, Path::new(&op.path))?;
    remove(root, &parent.host.join(name), &op.path, op.allow_not_found)
}

fn remove(root: &Path, host: &Path, shown: &str, allow_not_found: bool) -> Result<()> {
    let md = match std::fs::symlink_metadata(host) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if allow_not_found {
                return Ok(());
            }
            return Err(FileOpError::NotFound {
                path: clean_path(&format!("/{shown}")),
            });
        }
        Err(e) => return Err(io_err("stat", root, host)(e)),
    };
    if md.is_dir() {
        std::fs::remove_dir_all(host).map_err(io_err("remove", root, host))
    } else {
        std::fs::remove_file(host).map_err(io_err("remove", root, host))
    }
}

/// Creates the symlink `op.newpath` (inside `root`, parent must exist)
/// pointing at `op.oldpath`, which is stored as given.
pub fn symlink(root: &Path, op: &FileSymlink) -> Result<()> {
    let (parent, name) = root::resolve_parent(root, Path::new(&op.newpath))?;
    let host = parent.host.join(name);
    std::os::unix::fs::symlink(&op.oldpath, &host).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            FileOpError::AlreadyExists {
                path: root::display(root, &host),
            }
        } else {
            io_err("create symlink", root, &host)(e)
        }
    })
}
