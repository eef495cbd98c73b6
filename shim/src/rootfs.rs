//! A step's root filesystem, walked through directory file descriptors.
//!
//! Everything the shim does inside a rootfs before or after a step (create
//! the working directory, record and remove mount stubs, read
//! `/etc/passwd`) goes through here. A path is resolved one component at a
//! time with `openat(O_NOFOLLOW)` from a directory fd, symlinks are read
//! with `readlinkat` and followed as the container would see them (`..`
//! and absolute targets stay at the root), and every change is made with
//! an `*at` call on the fd of the directory it belongs to. So no symlink in
//! the rootfs, however it was placed or swapped, can make kiln create,
//! chown, read or remove anything outside the rootfs: the host kernel is
//! never handed a path below the root to resolve.

use kiln_context::path::{segments, Seg, MAX_SYMLINKS};
use nix::errno::Errno;
use nix::fcntl::{openat, readlinkat, OFlag};
use nix::sys::stat::{fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{fchownat, unlinkat, Gid, Uid, UnlinkatFlags};
use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

/// Flags of every directory opened during a walk: never through a symlink.
fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// A rootfs opened as a directory fd.
#[derive(Debug)]
pub struct RootDir {
    fd: OwnedFd,
    path: PathBuf,
}

/// A path resolved inside a [`RootDir`] as far as it exists.
#[derive(Debug)]
pub struct Walk {
    /// The existing directories below the root, outermost first, with
    /// their names. Empty when the deepest existing directory is the root.
    dirs: Vec<(OsString, OwnedFd)>,
    /// The final component when it exists and is not a directory.
    leaf: Option<OsString>,
    /// The components below the deepest existing directory that do not
    /// exist, in order.
    missing: Vec<OsString>,
}

impl RootDir {
    /// Opens the rootfs at `path` (a trusted host path: the engine's mount).
    pub fn open(path: &Path) -> io::Result<Self> {
        let fd = nix::fcntl::open(
            path,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        Ok(RootDir {
            fd,
            path: path.to_path_buf(),
        })
    }

    /// The host path the root was opened at, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Resolves `path` (absolute or not, inside the root), following
    /// symlinks in every component as the container would. Components
    /// after the first missing one are taken literally. More than
    /// [`MAX_SYMLINKS`] links is `ELOOP`; a non-directory followed by more
    /// components is `ENOTDIR`.
    pub fn walk(&self, path: &str) -> io::Result<Walk> {
        let mut queue: VecDeque<Seg> = segments(Path::new(path)).collect();
        let mut w = Walk {
            dirs: Vec::new(),
            leaf: None,
            missing: Vec::new(),
        };
        let mut links = 0usize;
        while let Some(seg) = queue.pop_front() {
            if !w.missing.is_empty() {
                match seg {
                    Seg::Parent => {
                        w.missing.pop();
                    }
                    Seg::Name(n) => w.missing.push(n),
                }
                continue;
            }
            if w.leaf.is_some() {
                return Err(Errno::ENOTDIR.into());
            }
            let name = match seg {
                Seg::Parent => {
                    w.dirs.pop();
                    continue;
                }
                Seg::Name(n) => n,
            };
            let dir = w.dir_fd(self);
            let st = match fstatat(
                dir,
                name.as_os_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            ) {
                Ok(st) => st,
                Err(Errno::ENOENT) => {
                    w.missing.push(name);
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            match file_type(&st) {
                SFlag::S_IFLNK => {
                    links += 1;
                    if links > MAX_SYMLINKS {
                        return Err(Errno::ELOOP.into());
                    }
                    let target = readlinkat(dir, name.as_os_str())?;
                    let target = Path::new(&target);
                    if target.has_root() {
                        w.dirs.clear();
                    }
                    let segs: Vec<Seg> = segments(target).collect();
                    for s in segs.into_iter().rev() {
                        queue.push_front(s);
                    }
                }
                SFlag::S_IFDIR => {
                    let fd = openat(dir, name.as_os_str(), dir_flags(), Mode::empty())?;
                    w.dirs.push((name, fd));
                }
                _ => w.leaf = Some(name),
            }
        }
        Ok(w)
    }

    /// Creates the directory `path` and its missing parents, each 0755
    /// (less the umask) and owned by `uid:gid`, as BuildKit creates a
    /// step's working directory. An existing non-directory is `ENOTDIR`.
    pub fn mkdir_all(&self, path: &str, uid: u32, gid: u32) -> io::Result<()> {
        let mut w = self.walk(path)?;
        if w.leaf.is_some() {
            return Err(Errno::ENOTDIR.into());
        }
        for name in std::mem::take(&mut w.missing) {
            let dir = w.dir_fd(self);
            match mkdirat(dir, name.as_os_str(), Mode::from_bits_truncate(0o755)) {
                Ok(()) => {}
                Err(Errno::EEXIST) => {}
                Err(e) => return Err(e.into()),
            }
            fchownat(
                dir,
                name.as_os_str(),
                Some(Uid::from_raw(uid)),
                Some(Gid::from_raw(gid)),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )?;
            // O_NOFOLLOW: what was just created is a directory, or this fails.
            let fd = openat(dir, name.as_os_str(), dir_flags(), Mode::empty())?;
            w.dirs.push((name, fd));
        }
        Ok(())
    }

    /// Reads the regular file at `path` inside the root, at most `limit`
    /// bytes. `None` when it does not exist or is not a regular file.
    pub fn read_file(&self, path: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
        let w = match self.walk(path) {
            Ok(w) => w,
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(leaf) = &w.leaf else {
            return Ok(None);
        };
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
        let fd = openat(w.dir_fd(self), leaf.as_os_str(), flags, Mode::empty())?;
        let st = nix::sys::stat::fstat(&fd)?;
        if file_type(&st) != SFlag::S_IFREG {
            return Ok(None);
        }
        let mut out = Vec::new();
        std::fs::File::from(fd).take(limit).read_to_end(&mut out)?;
        Ok(Some(out))
    }
}

impl Walk {
    /// The fd of the deepest existing directory.
    fn dir_fd<'a>(&'a self, root: &'a RootDir) -> BorrowedFd<'a> {
        match self.dirs.last() {
            Some((_, fd)) => fd.as_fd(),
            None => root.fd.as_fd(),
        }
    }

    /// The missing components, in order.
    pub fn missing(&self) -> &[OsString] {
        &self.missing
    }

    /// Whether the final component exists as a non-directory.
    pub fn has_leaf(&self) -> bool {
        self.leaf.is_some()
    }

    /// The resolved host path of the deepest existing directory, for
    /// messages and tests.
    pub fn existing_path(&self, root: &RootDir) -> PathBuf {
        let mut p = root.path.clone();
        for (n, _) in &self.dirs {
            p.push(n);
        }
        p
    }

    /// A duplicate of the deepest existing directory's fd.
    pub fn dup_dir(&self, root: &RootDir) -> io::Result<OwnedFd> {
        self.dir_fd(root).try_clone_to_owned()
    }
}

/// The file type bits of a stat result.
pub(crate) fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// What removing a stub did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Removed {
    /// Removed, or already gone.
    Gone,
    /// Kept: it holds data, or is not a directory or an empty file.
    Kept,
}

/// Removes `name` in `dir` if it is an empty directory or an empty regular
/// file; anything else (a symlink, data, a device) is kept. Never follows
/// a symlink: the removal is an `unlinkat` on `dir`.
pub(crate) fn remove_stub(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Removed> {
    let st = match fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(Removed::Gone),
        Err(e) => return Err(e.into()),
    };
    let res = match file_type(&st) {
        SFlag::S_IFDIR => unlinkat(dir, name, UnlinkatFlags::RemoveDir),
        SFlag::S_IFREG if st.st_size == 0 => unlinkat(dir, name, UnlinkatFlags::NoRemoveDir),
        _ => return Ok(Removed::Kept),
    };
    match res {
        Ok(()) | Err(Errno::ENOENT) => Ok(Removed::Gone),
        Err(Errno::ENOTEMPTY) | Err(Errno::EEXIST) => Ok(Removed::Kept),
        Err(e) => Err(e.into()),
    }
}

/// Opens the directory `name` in `dir` without following a symlink.
pub(crate) fn open_dir(dir: BorrowedFd<'_>, name: &OsStr) -> nix::Result<OwnedFd> {
    openat(dir, name, dir_flags(), Mode::empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn me() -> (u32, u32) {
        (
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    }

    #[test]
    fn walk_follows_links_inside_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/lib")).expect("mkdir");
        symlink("/usr", root.join("abs")).expect("symlink");
        symlink("../../../usr/lib", root.join("usr/up")).expect("symlink");
        let r = RootDir::open(root).expect("open root");
        let w = r.walk("/abs/lib/x/y").expect("walk");
        assert_eq!(w.existing_path(&r), root.join("usr/lib"));
        assert_eq!(w.missing(), ["x", "y"]);
        let w = r.walk("/usr/up/../../..").expect("walk");
        assert_eq!(w.existing_path(&r), root);
        assert!(w.missing().is_empty());
    }

    #[test]
    fn mkdir_all_never_leaves_the_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        // An absolute link to a host directory means the rootfs' own path.
        symlink(outside.path(), root.join("work")).expect("symlink");
        let (uid, gid) = me();
        let r = RootDir::open(root).expect("open root");
        r.mkdir_all("/work/app", uid, gid).expect("mkdir");
        let inside = root.join(outside.path().strip_prefix("/").expect("absolute"));
        assert!(inside.join("app").is_dir());
        assert!(!outside.path().join("app").exists());
    }

    #[test]
    fn mkdir_all_creates_owned_dirs_through_links() {
        if !kiln_types::testing::needs_root("chown to another user") {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr")).expect("mkdir");
        symlink("usr", root.join("link")).expect("symlink");
        let r = RootDir::open(root).expect("open root");
        r.mkdir_all("/link/src/app", 1234, 4321).expect("mkdir");
        assert!(root.join("usr/src/app").is_dir());
        for p in ["usr/src", "usr/src/app"] {
            let m = std::fs::metadata(root.join(p)).expect("stat");
            assert_eq!(
                (
                    std::os::unix::fs::MetadataExt::uid(&m),
                    std::os::unix::fs::MetadataExt::gid(&m)
                ),
                (1234, 4321),
                "{p}"
            );
        }
        // What existed keeps its owner.
        let usr = std::fs::metadata(root.join("usr")).expect("stat");
        assert_eq!(std::os::unix::fs::MetadataExt::uid(&usr), me().0);
        // A file in the way is not a directory.
        std::fs::write(root.join("usr/file"), "x").expect("write");
        let e = r.mkdir_all("/usr/file/x", 0, 0).expect_err("not a dir");
        assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR));
    }

    #[test]
    fn too_many_links_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        symlink("/b", root.join("a")).expect("symlink");
        symlink("/a", root.join("b")).expect("symlink");
        let r = RootDir::open(root).expect("open root");
        let e = r.walk("/a/x").expect_err("a loop");
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        let (uid, gid) = me();
        let e = r.mkdir_all("/a/x", uid, gid).expect_err("a loop");
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
    }

    #[test]
    fn read_file_reads_inside_the_root_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("passwd"), "host").expect("write");
        let root = dir.path();
        symlink(outside.path(), root.join("etc")).expect("symlink");
        let r = RootDir::open(root).expect("open root");
        assert_eq!(r.read_file("/etc/passwd", 1024).expect("read"), None);
        let inside = root.join(outside.path().strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(&inside).expect("mkdir");
        std::fs::write(inside.join("passwd"), "image").expect("write");
        assert_eq!(
            r.read_file("/etc/passwd", 1024).expect("read").as_deref(),
            Some(&b"image"[..])
        );
        assert_eq!(
            r.read_file("/etc/passwd", 2).expect("read").as_deref(),
            Some(&b"im"[..])
        );
    }
}
