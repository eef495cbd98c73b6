//! Mounting containerd `Mount`s on the host.
//!
//! Options are turned into flags and data exactly as containerd does
//! (containerd v1.6.20 mount/mount_linux.go `parseMountOptions`, `Mount`):
//! known flag names become `MS_*` flags, propagation names are applied by a
//! second call, a read-only bind is remounted read-only, and everything else
//! is joined with `,` into the data string. Overlay options are passed
//! through unchanged, except that a lowerdir list too long for one page is
//! shortened to paths relative to their common parent, mounted from a thread
//! that has `chdir`ed there (containerd `compactLowerdirOption`, `mountAt`).
//! Where even that is more than a page (some 450 layers of a containerd
//! whose snapshot ids have four digits), the overlay is mounted through
//! the new mount API instead, each lowerdir given by itself
//! (`fsconfig` `lowerdir+`, Linux 6.8), which has no limit but
//! overlayfs's own: at most [`MAX_OVERLAY_LAYERS`] lower layers, checked
//! before any call so that the error names the count.
//!
//! One difference from containerd: every mount kiln makes on the host is
//! `nosuid,nodev` ([`HOST_FLAGS`]; a bind is remounted to apply them), so
//! a setuid binary or a device node in a snapshot never acts as one on
//! the host. A step that needs them inside its container gets a bind with
//! the flags cleared from the shim, for the moment containerd mounts it.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};

/// One containerd mount (containerd `types.Mount`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mount {
    /// `bind`, `overlay`, `tmpfs`, ...
    pub mount_type: String,
    pub source: String,
    /// Where to mount relative to the target root; usually empty.
    pub target: String,
    pub options: Vec<String>,
}

/// Errors from mounting and unmounting.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The mount(2) call failed.
    #[error("mounting {fstype} {mount_source} on {target}")]
    Mount {
        fstype: String,
        mount_source: String,
        target: PathBuf,
        #[source]
        errno: Errno,
    },
    /// Changing the propagation type or remounting read-only failed.
    #[error("setting flags {flags:?} on {target} (source {mount_source})")]
    Remount {
        mount_source: String,
        target: PathBuf,
        flags: MsFlags,
        #[source]
        errno: Errno,
    },
    /// umount2(2) failed, also with `MNT_DETACH`.
    #[error("unmounting {target}")]
    Unmount {
        target: PathBuf,
        #[source]
        errno: Errno,
    },
    /// The mount data does not fit in a page, even after shortening lowerdir.
    #[error("mount options for {mount_source} on {target} are {len} bytes, more than a page")]
    OptionsTooLong {
        mount_source: String,
        target: PathBuf,
        len: usize,
    },
    /// More lower layers than overlayfs stacks.
    #[error("an overlay of {count} layers on {target} is more than the {MAX_OVERLAY_LAYERS} layers overlayfs can stack")]
    TooManyLayers { count: usize, target: PathBuf },
    /// An option containerd supports only through helpers (`loop`).
    #[error("unsupported mount option {option:?} for {mount_source} on {target}")]
    UnsupportedOption {
        option: String,
        mount_source: String,
        target: PathBuf,
    },
    /// `Mount.target` contains `..`, which could leave the target root.
    #[error("mount target {sub:?} escapes {target}")]
    InvalidTarget { sub: String, target: PathBuf },
    /// Creating the mount point directory failed.
    #[error("creating mount point {target}")]
    CreateTarget {
        target: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The helper thread for a long lowerdir mount could not run.
    #[error("mount helper thread for {mount_source} on {target} failed")]
    Helper {
        mount_source: String,
        target: PathBuf,
        #[source]
        cause: Option<std::io::Error>,
    },
}

/// The most lower layers one overlay mount may have (the kernel's
/// `OVL_MAX_STACK`): a snapshot chain longer than this cannot be mounted.
pub const MAX_OVERLAY_LAYERS: usize = 500;

/// Flags kiln adds to every mount it makes on the host, whatever the
/// options say.
pub const HOST_FLAGS: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);

/// Mounts every mount in order on `target` (joined with each `Mount.target`).
/// On failure, mounts made so far are unmounted again.
pub fn mount_all(mounts: &[Mount], target: &Path) -> Result<(), MountError> {
    let mut done: Vec<PathBuf> = Vec::new();
    for m in mounts {
        let result = mount_target(m, target).and_then(|t| mount_one(m, &t).map(|()| t));
        match result {
            Ok(t) => done.push(t),
            Err(e) => {
                // Undo exactly the mounts made here, newest first.
                for t in done.iter().rev() {
                    if let Err(errno) = unmount_once(t) {
                        tracing::warn!(mount_point = %t.display(), error = %errno, "unmount after failed mount");
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Unmounts everything stacked on `target` (containerd `UnmountAll`). A
/// target that is not (or no longer) a mount point, or does not exist, is
/// fine. A busy mount is retried briefly, then detached (`MNT_DETACH`).
pub fn unmount(target: &Path) -> Result<(), MountError> {
    loop {
        match unmount_once(target) {
            Ok(()) => continue,
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => return Ok(()),
            Err(errno) => {
                return Err(MountError::Unmount {
                    target: target.to_path_buf(),
                    errno,
                })
            }
        }
    }
}

fn unmount_once(target: &Path) -> Result<(), Errno> {
    for _ in 0..10 {
        match nix::mount::umount2(target, MntFlags::empty()) {
            Err(Errno::EBUSY) => std::thread::sleep(Duration::from_millis(20)),
            other => return other,
        }
    }
    tracing::warn!(mount_point = %target.display(), "mount busy; detaching");
    nix::mount::umount2(target, MntFlags::MNT_DETACH)
}

/// The fast path that needs no mount: a single read-write bind mount is its
/// source directory (moby/buildkit snapshot/localmounter_linux.go).
pub fn direct_path(mounts: &[Mount]) -> Option<PathBuf> {
    match mounts {
        [m] if m.mount_type == "bind"
            && m.target.is_empty()
            && !m.options.iter().any(|o| o == "ro") =>
        {
            Some(PathBuf::from(&m.source))
        }
        _ => None,
    }
}

/// The committed layer directories a mounted view shows, topmost first:
/// an overlay's lowerdirs, or the directory a one-layer view binds. Empty
/// for anything else (a view with an upperdir, several mounts).
pub fn layer_dirs(mounts: &[Mount]) -> Vec<PathBuf> {
    match (overlay_dirs(mounts), mounts) {
        (Some((None, lowers)), _) => lowers,
        (None, [m]) if m.mount_type == "bind" => vec![PathBuf::from(&m.source)],
        _ => Vec::new(),
    }
}

/// For a single overlay mount, its `upperdir` (if any) and `lowerdir`s
/// (nearest parent first), for the upperdir diff fast path. `None` for
/// anything else.
pub fn overlay_dirs(mounts: &[Mount]) -> Option<(Option<PathBuf>, Vec<PathBuf>)> {
    let [m] = mounts else { return None };
    if m.mount_type != "overlay" {
        return None;
    }
    let mut upper = None;
    let mut lowers = Vec::new();
    for o in &m.options {
        if let Some(v) = o.strip_prefix("upperdir=") {
            upper = Some(PathBuf::from(v));
        } else if let Some(v) = o.strip_prefix("lowerdir=") {
            lowers = v
                .split(':')
                .filter(|s| !s.is_empty())
                .map(PathBuf::from)
                .collect();
        }
    }
    Some((upper, lowers))
}

/// The read-only view of an active overlay snapshot's parent, built from
/// the active mount's own options as containerd's overlay snapshotter
/// builds a View of that parent: a read-only bind of a single lowerdir, or
/// an overlay of the lowerdirs alone (with the snapshotter's other mount
/// options). No snapshot is made, so no write in containerd's metadata
/// store. `None` for anything but one overlay mount with lowerdirs.
pub fn overlay_parent_view(mounts: &[Mount]) -> Option<Vec<Mount>> {
    let [m] = mounts else { return None };
    let (_, lowers) = overlay_dirs(mounts)?;
    read_only_view(m, &lowers)
}

/// The read-only view of what an active overlay snapshot is once
/// committed: containerd's overlay snapshotter commits a snapshot in place
/// (its upperdir becomes the committed layer's directory), so a View of it
/// shows the upperdir above the lowerdirs. Built like
/// [`overlay_parent_view`], with no snapshot made. `None` for anything but
/// one overlay mount with an upperdir.
pub fn overlay_committed_view(mounts: &[Mount]) -> Option<Vec<Mount>> {
    let [m] = mounts else { return None };
    let (Some(upper), lowers) = overlay_dirs(mounts)? else {
        return None;
    };
    let dirs: Vec<PathBuf> = std::iter::once(upper).chain(lowers).collect();
    read_only_view(m, &dirs)
}

/// A read-only view of the layer directories `dirs` (topmost first) with
/// the other options of the overlay mount `m`: a read-only bind of a
/// single one, else an overlay of them all as lowerdirs.
fn read_only_view(m: &Mount, dirs: &[PathBuf]) -> Option<Vec<Mount>> {
    match dirs {
        [] => None,
        [only] => Some(vec![Mount {
            mount_type: "bind".into(),
            source: only.display().to_string(),
            target: String::new(),
            options: vec!["ro".into(), "rbind".into()],
        }]),
        _ => {
            let mut options: Vec<String> = m
                .options
                .iter()
                .filter(|o| {
                    !o.starts_with("upperdir=")
                        && !o.starts_with("workdir=")
                        && !o.starts_with("lowerdir=")
                        && o.as_str() != "rw"
                })
                .cloned()
                .collect();
            let dirs: Vec<String> = dirs.iter().map(|p| p.display().to_string()).collect();
            options.push(format!("lowerdir={}", dirs.join(":")));
            Some(vec![Mount {
                mount_type: "overlay".into(),
                source: "overlay".into(),
                target: String::new(),
                options,
            }])
        }
    }
}

/// Mounts on creation, unmounts on drop (failures are logged, never panic).
#[derive(Debug)]
pub struct MountGuard {
    path: PathBuf,
    mounted: bool,
}

impl MountGuard {
    /// Mounts `mounts` on `target`, creating the directory if needed (it is
    /// not removed on drop).
    pub fn mount(mounts: &[Mount], target: PathBuf) -> Result<Self, MountError> {
        std::fs::create_dir_all(&target).map_err(|source| MountError::CreateTarget {
            target: target.clone(),
            source,
        })?;
        mount_all(mounts, &target)?;
        Ok(MountGuard {
            path: target,
            mounted: true,
        })
    }

    /// Like [`MountGuard::mount`], but uses [`direct_path`] when it applies:
    /// then nothing is mounted and [`MountGuard::path`] is the bind source.
    pub fn mount_or_direct(mounts: &[Mount], target: PathBuf) -> Result<Self, MountError> {
        match direct_path(mounts) {
            Some(path) => Ok(MountGuard {
                path,
                mounted: false,
            }),
            None => Self::mount(mounts, target),
        }
    }

    /// Where the mounts can be read.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts now, returning the error that drop would only log.
    pub fn unmount(mut self) -> Result<(), MountError> {
        if !std::mem::replace(&mut self.mounted, false) {
            return Ok(());
        }
        unmount(&self.path)
    }
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if self.mounted {
            if let Err(e) = unmount(&self.path) {
                tracing::warn!(mount_point = %self.path.display(), error = %e, "unmount on drop failed");
            }
        }
    }
}

/// `target` joined with `m.target`, refusing `..`.
fn mount_target(m: &Mount, target: &Path) -> Result<PathBuf, MountError> {
    if m.target.is_empty() {
        return Ok(target.to_path_buf());
    }
    let sub = Path::new(&m.target);
    let mut out = target.to_path_buf();
    for c in sub.components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::CurDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                return Err(MountError::InvalidTarget {
                    sub: m.target.clone(),
                    target: target.to_path_buf(),
                })
            }
        }
    }
    Ok(out)
}

/// Flags and data from containerd-style options.
#[derive(Debug, PartialEq, Eq)]
struct ParsedOptions {
    flags: MsFlags,
    /// Propagation flags, applied by a separate call.
    propagation: MsFlags,
    data: Vec<String>,
}

fn parse_options(options: &[String]) -> Result<ParsedOptions, String> {
    let mut flags = MsFlags::empty();
    let mut propagation = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        // (clear, flag) as in containerd's table.
        let f = match o.as_str() {
            "async" => Some((true, MsFlags::MS_SYNCHRONOUS)),
            "atime" => Some((true, MsFlags::MS_NOATIME)),
            "bind" => Some((false, MsFlags::MS_BIND)),
            "defaults" => Some((false, MsFlags::empty())),
            "dev" => Some((true, MsFlags::MS_NODEV)),
            "diratime" => Some((true, MsFlags::MS_NODIRATIME)),
            "dirsync" => Some((false, MsFlags::MS_DIRSYNC)),
            "exec" => Some((true, MsFlags::MS_NOEXEC)),
            "mand" => Some((false, MsFlags::MS_MANDLOCK)),
            "noatime" => Some((false, MsFlags::MS_NOATIME)),
            "nodev" => Some((false, MsFlags::MS_NODEV)),
            "nodiratime" => Some((false, MsFlags::MS_NODIRATIME)),
            "noexec" => Some((false, MsFlags::MS_NOEXEC)),
            "nomand" => Some((true, MsFlags::MS_MANDLOCK)),
            "norelatime" => Some((true, MsFlags::MS_RELATIME)),
            "nostrictatime" => Some((true, MsFlags::MS_STRICTATIME)),
            "nosuid" => Some((false, MsFlags::MS_NOSUID)),
            "rbind" => Some((false, MsFlags::MS_BIND | MsFlags::MS_REC)),
            "relatime" => Some((false, MsFlags::MS_RELATIME)),
            "remount" => Some((false, MsFlags::MS_REMOUNT)),
            "ro" => Some((false, MsFlags::MS_RDONLY)),
            "rw" => Some((true, MsFlags::MS_RDONLY)),
            "strictatime" => Some((false, MsFlags::MS_STRICTATIME)),
            "suid" => Some((true, MsFlags::MS_NOSUID)),
            "sync" => Some((false, MsFlags::MS_SYNCHRONOUS)),
            _ => None,
        };
        let p = match o.as_str() {
            "private" => Some(MsFlags::MS_PRIVATE),
            "rprivate" => Some(MsFlags::MS_PRIVATE | MsFlags::MS_REC),
            "shared" => Some(MsFlags::MS_SHARED),
            "rshared" => Some(MsFlags::MS_SHARED | MsFlags::MS_REC),
            "slave" => Some(MsFlags::MS_SLAVE),
            "rslave" => Some(MsFlags::MS_SLAVE | MsFlags::MS_REC),
            "unbindable" => Some(MsFlags::MS_UNBINDABLE),
            "runbindable" => Some(MsFlags::MS_UNBINDABLE | MsFlags::MS_REC),
            _ => None,
        };
        match (f, p) {
            (Some((true, flag)), _) => flags.remove(flag),
            (Some((false, flag)), _) => flags.insert(flag),
            (None, Some(flag)) => propagation.insert(flag),
            (None, None) if o == "loop" => return Err(o.clone()),
            (None, None) => data.push(o.clone()),
        }
    }
    Ok(ParsedOptions {
        flags,
        propagation,
        data,
    })
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions and only reads system configuration.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
}

/// containerd `compactLowerdirOption`: if there are several lowerdirs with a
/// common parent other than `/`, returns that parent (with a trailing `/`)
/// and the options with lowerdir made relative to it.
fn compact_lowerdir(options: &[String]) -> Option<(String, Vec<String>)> {
    let idx = options.iter().position(|o| o.starts_with("lowerdir="))?;
    let dirs: Vec<&str> = options[idx]["lowerdir=".len()..].split(':').collect();
    if dirs.len() <= 1 {
        return None;
    }
    let first = dirs[0];
    let mut common = first.len();
    for d in &dirs[1..] {
        common = common.min(
            first
                .bytes()
                .zip(d.bytes())
                .take_while(|(a, b)| a == b)
                .count(),
        );
    }
    let prefix = &first[..common];
    // The directory part of the common string prefix (Go's path.Dir), since
    // the prefix may end inside a name ("snapshots/1"); a prefix that ends
    // in `/` ("snapshots/") is its own directory.
    let dir = match prefix.rfind('/') {
        Some(0) | None => return None,
        Some(i) => prefix[..i].trim_end_matches('/'),
    };
    if dir.is_empty() {
        return None;
    }
    let dir = format!("{dir}/");
    if dirs.iter().any(|d| d.len() <= dir.len()) {
        return None;
    }
    let rel: Vec<&str> = dirs.iter().map(|d| &d[dir.len()..]).collect();
    let mut opts: Vec<String> = options.to_vec();
    opts.remove(idx);
    opts.push(format!("lowerdir={}", rel.join(":")));
    Some((dir, opts))
}

/// The number of lower layers an overlay's options give.
fn lower_count(options: &[String]) -> usize {
    options
        .iter()
        .filter_map(|o| o.strip_prefix("lowerdir="))
        .map(|v| v.split(':').filter(|d| !d.is_empty()).count())
        .sum()
}

fn mount_one(m: &Mount, target: &Path) -> Result<(), MountError> {
    let mut options = m.options.clone();
    let mut chdir: Option<String> = None;
    if m.mount_type == "overlay" {
        let count = lower_count(&options);
        if count > MAX_OVERLAY_LAYERS {
            return Err(MountError::TooManyLayers {
                count,
                target: target.to_path_buf(),
            });
        }
        let len = options.iter().map(|o| o.len() + 1).sum::<usize>();
        if len >= page_size().saturating_sub(512) {
            if let Some((dir, opts)) = compact_lowerdir(&options) {
                chdir = Some(dir);
                options = opts;
            }
        }
    }
    let parsed = parse_options(&options).map_err(|option| MountError::UnsupportedOption {
        option,
        mount_source: m.source.clone(),
        target: target.to_path_buf(),
    })?;
    let data = parsed.data.join(",");
    let flags = parsed.flags | HOST_FLAGS;
    if data.len() >= page_size() {
        let too_long = || MountError::OptionsTooLong {
            mount_source: m.source.clone(),
            target: target.to_path_buf(),
            len: data.len(),
        };
        if m.mount_type != "overlay" || !parsed.propagation.is_empty() {
            return Err(too_long());
        }
        // The options one by one, relative to the common parent where
        // there is one (so that each path is short, as `fsconfig` wants).
        let call = || fsapi::mount_overlay(&m.source, &parsed.data, flags, target);
        let result = match &chdir {
            None => call(),
            Some(dir) => in_dir(dir, call).map_err(|cause| MountError::Helper {
                mount_source: m.source.clone(),
                target: target.to_path_buf(),
                cause,
            })?,
        };
        return match result {
            Ok(()) => Ok(()),
            Err(fsapi::Failure::Unsupported) => Err(too_long()),
            Err(fsapi::Failure::Errno(errno)) => Err(MountError::Mount {
                fstype: m.mount_type.clone(),
                mount_source: m.source.clone(),
                target: target.to_path_buf(),
                errno,
            }),
        };
    }
    if !flags.contains(MsFlags::MS_REMOUNT) || !data.is_empty() {
        let call = MountCall {
            source: &m.source,
            target,
            fstype: &m.mount_type,
            flags,
            data: &data,
        };
        let result = match &chdir {
            None => call.run(),
            Some(dir) => call.run_in(dir).map_err(|cause| MountError::Helper {
                mount_source: m.source.clone(),
                target: target.to_path_buf(),
                cause,
            })?,
        };
        result.map_err(|errno| MountError::Mount {
            fstype: m.mount_type.clone(),
            mount_source: m.source.clone(),
            target: target.to_path_buf(),
            errno,
        })?;
    }
    let remount = |flags: MsFlags| {
        nix::mount::mount(None::<&str>, target, None::<&str>, flags, None::<&str>).map_err(
            |errno| MountError::Remount {
                mount_source: m.source.clone(),
                target: target.to_path_buf(),
                flags,
                errno,
            },
        )
    };
    if !parsed.propagation.is_empty() {
        remount(parsed.propagation | MsFlags::MS_SILENT)?;
    }
    // A bind ignores every flag but MS_REC: apply read-only and
    // HOST_FLAGS with a remount of the bind.
    if flags.contains(MsFlags::MS_BIND) {
        remount(flags | MsFlags::MS_REMOUNT)?;
    }
    Ok(())
}

/// Overlay mounts through the new mount API (`fsopen`, `fsconfig`,
/// `fsmount`, `move_mount`), for a lowerdir list longer than mount(2)'s
/// one page of data. `fsconfig` takes strings of at most 255 bytes, so
/// each path must fit in that: the lowerdirs are given relative to their
/// common parent when they have one (a few bytes each for containerd's
/// snapshot directories), the upperdir and workdir as they are (about 80).
mod fsapi {
    use std::ffi::CString;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    use std::path::Path;

    use nix::errno::Errno;
    use nix::mount::MsFlags;

    /// Why the mount was not made.
    pub(super) enum Failure {
        /// The kernel lacks the new mount API, overlay's `lowerdir+` key
        /// (before Linux 6.8), or a way to express one of the flags.
        Unsupported,
        /// A call failed for another reason.
        Errno(Errno),
    }

    impl From<Errno> for Failure {
        fn from(errno: Errno) -> Self {
            Failure::Errno(errno)
        }
    }

    /// The mount attributes for `flags`, or `None` if one has none.
    fn attributes(flags: MsFlags) -> Option<u64> {
        let table = [
            (MsFlags::MS_RDONLY, libc::MOUNT_ATTR_RDONLY),
            (MsFlags::MS_NOSUID, libc::MOUNT_ATTR_NOSUID),
            (MsFlags::MS_NODEV, libc::MOUNT_ATTR_NODEV),
            (MsFlags::MS_NOEXEC, libc::MOUNT_ATTR_NOEXEC),
            (MsFlags::MS_NOATIME, libc::MOUNT_ATTR_NOATIME),
            (MsFlags::MS_STRICTATIME, libc::MOUNT_ATTR_STRICTATIME),
            (MsFlags::MS_NODIRATIME, libc::MOUNT_ATTR_NODIRATIME),
            (MsFlags::MS_RELATIME, libc::MOUNT_ATTR_RELATIME),
        ];
        let mut left = flags;
        let mut attrs = 0;
        for (flag, attr) in table {
            if flags.contains(flag) {
                left.remove(flag);
                attrs |= attr;
            }
        }
        left.is_empty().then_some(attrs)
    }

    fn cstring(s: &str) -> Result<CString, Failure> {
        CString::new(s).map_err(|_| Failure::Errno(Errno::EINVAL))
    }

    /// `fsconfig(fd, cmd, key, value, 0)`.
    fn fsconfig(
        fd: &OwnedFd,
        cmd: libc::c_uint,
        key: Option<&CString>,
        value: Option<&CString>,
    ) -> Result<(), Errno> {
        let key = key.map_or(std::ptr::null(), |k| k.as_ptr());
        let value = value.map_or(std::ptr::null(), |v| v.as_ptr());
        // SAFETY: the fd is open, key and value are NUL-terminated strings
        // (or null, as the command allows) that outlive the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                fd.as_raw_fd(),
                cmd,
                key,
                value,
                0 as libc::c_int,
            )
        };
        Errno::result(r).map(drop)
    }

    /// Takes ownership of the fd a syscall returned.
    fn owned(r: libc::c_long) -> Result<OwnedFd, Errno> {
        let fd = Errno::result(r)?;
        let fd = libc::c_int::try_from(fd).map_err(|_| Errno::EBADF)?;
        // SAFETY: the syscall succeeded, so `fd` is a new descriptor that
        // nothing else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    /// Mounts an overlay of `data` (mount options, `lowerdir=` a `:` list)
    /// with `flags` on `target`, giving each lowerdir by itself.
    pub(super) fn mount_overlay(
        source: &str,
        data: &[String],
        flags: MsFlags,
        target: &Path,
    ) -> Result<(), Failure> {
        let attrs = attributes(flags).ok_or(Failure::Unsupported)?;
        let fstype = cstring("overlay")?;
        // SAFETY: fstype is a NUL-terminated string that outlives the call.
        let r = unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), libc::FSOPEN_CLOEXEC) };
        let fs = owned(r).map_err(|errno| match errno {
            Errno::ENOSYS => Failure::Unsupported,
            e => Failure::Errno(e),
        })?;
        let set = |key: &str, value: Option<&str>| -> Result<(), Failure> {
            let k = cstring(key)?;
            let v = value.map(cstring).transpose()?;
            let cmd = match v {
                Some(_) => libc::FSCONFIG_SET_STRING,
                None => libc::FSCONFIG_SET_FLAG,
            };
            fsconfig(&fs, cmd, Some(&k), v.as_ref()).map_err(|errno| match errno {
                Errno::EINVAL if key == "lowerdir+" => Failure::Unsupported,
                e => Failure::Errno(e),
            })
        };
        set("source", Some(source))?;
        for option in data {
            match option.split_once('=') {
                Some(("lowerdir", dirs)) => {
                    for dir in dirs.split(':').filter(|d| !d.is_empty()) {
                        set("lowerdir+", Some(dir))?;
                    }
                }
                Some((key, value)) => set(key, Some(value))?,
                None => set(option, None)?,
            }
        }
        fsconfig(&fs, libc::FSCONFIG_CMD_CREATE, None, None)?;
        // SAFETY: the fs context fd is open; fsmount takes plain integers.
        let r = unsafe {
            libc::syscall(
                libc::SYS_fsmount,
                fs.as_raw_fd(),
                libc::FSMOUNT_CLOEXEC,
                attrs as libc::c_uint,
            )
        };
        let mnt = owned(r)?;
        let to = CString::new(target.as_os_str().as_bytes())
            .map_err(|_| Failure::Errno(Errno::EINVAL))?;
        let empty = cstring("")?;
        // SAFETY: the mount fd is open, both paths are NUL-terminated
        // strings that outlive the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                mnt.as_raw_fd(),
                empty.as_ptr(),
                libc::AT_FDCWD,
                to.as_ptr(),
                libc::MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        Errno::result(r)?;
        Ok(())
    }
}

struct MountCall<'a> {
    source: &'a str,
    target: &'a Path,
    fstype: &'a str,
    flags: MsFlags,
    data: &'a str,
}

impl MountCall<'_> {
    fn run(&self) -> Result<(), Errno> {
        let data = (!self.data.is_empty()).then_some(self.data);
        nix::mount::mount(
            Some(self.source),
            self.target,
            Some(self.fstype),
            self.flags,
            data,
        )
    }

    /// Runs the mount from a thread whose working directory is `dir`, so
    /// that relative paths in the data resolve there.
    fn run_in(&self, dir: &str) -> Result<Result<(), Errno>, Option<std::io::Error>> {
        in_dir(dir, || self.run())
    }
}

/// Runs `f` on a thread whose working directory is `dir`:
/// `unshare(CLONE_FS)` gives the thread its own cwd, leaving the
/// process's untouched. `None` if the thread panicked.
fn in_dir<T: Send>(dir: &str, f: impl FnOnce() -> T + Send) -> Result<T, Option<std::io::Error>> {
    std::thread::scope(|s| {
        let handle = std::thread::Builder::new()
            .name("kiln-mount".into())
            .spawn_scoped(s, || -> Result<T, Option<std::io::Error>> {
                nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)
                    .map_err(|e| Some(e.into()))?;
                nix::unistd::chdir(dir).map_err(|e| Some(e.into()))?;
                Ok(f())
            })
            .map_err(Some)?;
        handle.join().map_err(|_| None)?
    })
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    fn opts(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn bind(source: &Path, options: &[&str]) -> Mount {
        Mount {
            mount_type: "bind".into(),
            source: source.display().to_string(),
            target: String::new(),
            options: opts(options),
        }
    }

    fn is_mount_point(path: &Path) -> bool {
        let canon = fs::canonicalize(path).expect("canonical path");
        let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        info.lines()
            .any(|l| l.split(' ').nth(4) == Some(canon.to_str().expect("utf-8 temp path")))
    }

    #[test]
    fn options_become_flags_and_data_as_in_containerd() {
        let p = parse_options(&opts(&[
            "ro",
            "rbind",
            "rprivate",
            "index=off",
            "nosuid",
            "suid",
            "rw",
        ]))
        .expect("no loop option");
        assert_eq!(p.flags, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert_eq!(p.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(p.data, vec!["index=off".to_string()]);
        assert_eq!(parse_options(&opts(&["loop"])), Err("loop".to_string()));
    }

    /// One overlay mount with `opts`, as an active snapshot's.
    fn active(opts: &[&str]) -> Vec<Mount> {
        vec![Mount {
            mount_type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: opts.iter().map(|s| s.to_string()).collect(),
        }]
    }

    #[test]
    fn the_parent_view_of_an_overlay_is_its_lowerdirs_alone() {
        let two = overlay_parent_view(&active(&[
            "index=off",
            "workdir=/s/9/work",
            "upperdir=/s/9/fs",
            "lowerdir=/s/2/fs:/s/1/fs",
        ]))
        .expect("a view");
        assert_eq!(two.len(), 1);
        assert_eq!(two[0].mount_type, "overlay");
        assert_eq!(two[0].options, ["index=off", "lowerdir=/s/2/fs:/s/1/fs"]);
        let one = overlay_parent_view(&active(&[
            "workdir=/s/9/work",
            "upperdir=/s/9/fs",
            "lowerdir=/s/1/fs",
        ]))
        .expect("a view");
        assert_eq!(one[0].mount_type, "bind");
        assert_eq!(one[0].source, "/s/1/fs");
        assert_eq!(one[0].options, ["ro", "rbind"]);
        let bind = vec![Mount {
            mount_type: "bind".into(),
            source: "/s/1/fs".into(),
            target: String::new(),
            options: vec!["rw".into()],
        }];
        assert!(overlay_parent_view(&bind).is_none(), "no parent");
        assert!(overlay_parent_view(&active(&["upperdir=/u", "workdir=/w"])).is_none());
    }

    #[test]
    fn the_committed_view_of_an_overlay_puts_its_upperdir_on_top() {
        let two = overlay_committed_view(&active(&[
            "index=off",
            "workdir=/s/9/work",
            "upperdir=/s/9/fs",
            "lowerdir=/s/1/fs",
        ]))
        .expect("a view");
        assert_eq!(two[0].mount_type, "overlay");
        assert_eq!(two[0].options, ["index=off", "lowerdir=/s/9/fs:/s/1/fs"]);
        let bind = vec![Mount {
            mount_type: "bind".into(),
            source: "/s/1/fs".into(),
            target: String::new(),
            options: vec!["rw".into()],
        }];
        assert!(overlay_committed_view(&bind).is_none(), "not an overlay");
        assert!(
            overlay_committed_view(&active(&["lowerdir=/a:/b"])).is_none(),
            "no upperdir"
        );
    }

    #[test]
    fn compact_lowerdir_uses_the_parent_of_the_common_prefix() {
        let o = opts(&[
            "index=off",
            "lowerdir=/var/lib/c/snapshots/12/fs:/var/lib/c/snapshots/13/fs:/var/lib/c/snapshots/1/fs",
            "upperdir=/var/lib/c/snapshots/20/fs",
        ]);
        let (dir, new) = compact_lowerdir(&o).expect("compactable");
        assert_eq!(dir, "/var/lib/c/snapshots/");
        assert_eq!(
            new,
            opts(&[
                "index=off",
                "upperdir=/var/lib/c/snapshots/20/fs",
                "lowerdir=12/fs:13/fs:1/fs"
            ])
        );
        // A common prefix that ends in `/` is the directory itself.
        let (dir, new) =
            compact_lowerdir(&opts(&["lowerdir=/c/snapshots/12/fs:/c/snapshots/23/fs"]))
                .expect("compactable");
        assert_eq!(dir, "/c/snapshots/");
        assert_eq!(new, opts(&["lowerdir=12/fs:23/fs"]));
        assert_eq!(compact_lowerdir(&opts(&["lowerdir=/a/x:/b/y"])), None);
        assert_eq!(compact_lowerdir(&opts(&["lowerdir=/a/x"])), None);
    }

    #[test]
    fn direct_path_and_overlay_dirs() {
        let rw = bind(Path::new("/s"), &["rw", "rbind"]);
        assert_eq!(
            direct_path(std::slice::from_ref(&rw)),
            Some(PathBuf::from("/s"))
        );
        assert_eq!(
            direct_path(&[bind(Path::new("/s"), &["ro", "rbind"])]),
            None
        );
        assert_eq!(direct_path(&[rw.clone(), rw]), None);
        let ov = Mount {
            mount_type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: opts(&["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/l1:/l2"]),
        };
        assert_eq!(
            overlay_dirs(&[ov]),
            Some((
                Some(PathBuf::from("/u")),
                vec![PathBuf::from("/l1"), PathBuf::from("/l2")]
            ))
        );
        assert_eq!(overlay_dirs(&[bind(Path::new("/s"), &["rbind"])]), None);
    }

    #[test]
    fn sub_target_may_not_escape() {
        let mut m = bind(Path::new("/s"), &["rbind"]);
        m.target = "../x".into();
        let err = mount_all(&[m], Path::new("/tmp")).expect_err("escapes");
        assert!(matches!(err, MountError::InvalidTarget { .. }), "{err:?}");
    }

    #[test]
    fn bind_mount_shows_source_and_guard_unmounts() {
        if !kiln_types::testing::needs_root("bind mounts") {
            return;
        }
        let src = tempfile::tempdir().expect("tempdir");
        let dst = tempfile::tempdir().expect("tempdir");
        fs::write(src.path().join("hello"), b"hi").expect("write");
        let target = dst.path().join("mnt");
        {
            let guard = MountGuard::mount(&[bind(src.path(), &["rw", "rbind"])], target.clone())
                .expect("bind mount (root required)");
            assert_eq!(guard.path(), target);
            assert!(is_mount_point(&target));
            assert_eq!(fs::read(target.join("hello")).expect("read"), b"hi");
        }
        assert!(!is_mount_point(&target));
        assert!(!target.join("hello").exists());
        // Unmounting something not mounted is fine.
        unmount(&target).expect("idempotent unmount");
    }

    /// The options field (6th) of the mountinfo line of `path`.
    fn mount_options(path: &Path) -> Vec<String> {
        let canon = fs::canonicalize(path).expect("canonical path");
        let info = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let line = info
            .lines()
            .rev()
            .find(|l| l.split(' ').nth(4) == Some(canon.to_str().expect("utf-8 temp path")))
            .expect("a mount point");
        line.split(' ')
            .nth(5)
            .expect("options field")
            .split(',')
            .map(str::to_string)
            .collect()
    }

    /// A setuid file or a device node in a mounted snapshot must not act
    /// as one on the host: every host mount is nosuid,nodev, even when the
    /// options ask for suid and dev.
    #[test]
    fn host_mounts_are_nosuid_nodev() {
        if !kiln_types::testing::needs_root("bind and overlay mounts") {
            return;
        }
        let src = tempfile::tempdir().expect("tempdir");
        let dst = tempfile::tempdir().expect("tempdir");
        for options in [&["rbind", "rw"][..], &["bind", "ro", "suid", "dev"][..]] {
            let target = dst.path().join("bind");
            let guard = MountGuard::mount(&[bind(src.path(), options)], target.clone())
                .expect("bind mount");
            let got = mount_options(&target);
            assert!(got.iter().any(|o| o == "nosuid"), "{options:?}: {got:?}");
            assert!(got.iter().any(|o| o == "nodev"), "{options:?}: {got:?}");
            guard.unmount().expect("unmount");
        }
        let lower = tempfile::tempdir().expect("tempdir");
        let upper = tempfile::tempdir().expect("tempdir");
        let work = tempfile::tempdir().expect("tempdir");
        let target = dst.path().join("overlay");
        let m = Mount {
            mount_type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec![
                format!("lowerdir={}", lower.path().display()),
                format!("upperdir={}", upper.path().display()),
                format!("workdir={}", work.path().display()),
            ],
        };
        let guard = MountGuard::mount(&[m], target.clone()).expect("overlay mount");
        let got = mount_options(&target);
        assert!(got.iter().any(|o| o == "nosuid"), "{got:?}");
        assert!(got.iter().any(|o| o == "nodev"), "{got:?}");
        guard.unmount().expect("unmount");
    }

    #[test]
    fn read_only_bind_refuses_writes() {
        if !kiln_types::testing::needs_root("bind mounts") {
            return;
        }
        let src = tempfile::tempdir().expect("tempdir");
        let dst = tempfile::tempdir().expect("tempdir");
        let guard = MountGuard::mount(
            &[bind(src.path(), &["ro", "rbind"])],
            dst.path().to_path_buf(),
        )
        .expect("ro bind mount (root required)");
        let err = fs::write(guard.path().join("x"), b"x").expect_err("read-only");
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        // The source itself stays writable.
        fs::write(src.path().join("y"), b"y").expect("source writable");
        guard.unmount().expect("unmount");
    }

    #[test]
    fn overlay_with_two_lowers() {
        if !kiln_types::testing::needs_root("overlay mounts") {
            return;
        }
        let root = tempfile::tempdir().expect("tempdir");
        let d = |n: &str| {
            let p = root.path().join(n);
            fs::create_dir_all(&p).expect("mkdir");
            p
        };
        let (near, far, upper, work, mnt) = (d("near"), d("far"), d("upper"), d("work"), d("mnt"));
        fs::write(near.join("a"), b"near").expect("write");
        fs::write(far.join("a"), b"far").expect("write");
        fs::write(far.join("b"), b"far-b").expect("write");
        let m = Mount {
            mount_type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec![
                "index=off".into(),
                format!("workdir={}", work.display()),
                format!("upperdir={}", upper.display()),
                format!("lowerdir={}:{}", near.display(), far.display()),
            ],
        };
        let guard = MountGuard::mount(&[m], mnt).expect("overlay mount (root required)");
        assert_eq!(fs::read(guard.path().join("a")).expect("read a"), b"near");
        assert_eq!(fs::read(guard.path().join("b")).expect("read b"), b"far-b");
        fs::write(guard.path().join("new"), b"n").expect("write through overlay");
        drop(guard);
        assert_eq!(fs::read(upper.join("new")).expect("in upper"), b"n");
    }

    #[test]
    fn long_lowerdir_is_compacted_and_mounts() {
        if !kiln_types::testing::needs_root("overlay mounts") {
            return;
        }
        let root = tempfile::tempdir().expect("tempdir");
        let snaps = root
            .path()
            .join("io.containerd.snapshotter.v1.overlayfs")
            .join("snapshots");
        let mut lowers = Vec::new();
        for i in 0..80 {
            let dir = snaps
                .join(format!(
                    "{i:03}-{}",
                    "a-rather-long-snapshot-directory-name"
                ))
                .join("fs");
            fs::create_dir_all(&dir).expect("mkdir");
            lowers.push(dir);
        }
        let lowest = lowers.last().expect("80 lowers");
        fs::write(lowest.join("bottom"), b"lowest layer").expect("write");
        fs::write(lowers[0].join("top"), b"top layer").expect("write");
        let (upper, work, mnt) = (
            root.path().join("u"),
            root.path().join("w"),
            root.path().join("m"),
        );
        for p in [&upper, &work, &mnt] {
            fs::create_dir_all(p).expect("mkdir");
        }
        let lowerdir = lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        let options = vec![
            "index=off".to_string(),
            format!("workdir={}", work.display()),
            format!("upperdir={}", upper.display()),
            format!("lowerdir={lowerdir}"),
        ];
        assert!(options.iter().map(|o| o.len() + 1).sum::<usize>() > page_size());
        let cwd = std::env::current_dir().expect("cwd");
        let m = Mount {
            mount_type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options,
        };
        let guard = MountGuard::mount(&[m], mnt).expect("long overlay mount (root required)");
        assert_eq!(
            fs::read(guard.path().join("bottom")).expect("read"),
            b"lowest layer"
        );
        assert_eq!(
            fs::read(guard.path().join("top")).expect("read"),
            b"top layer"
        );
        assert_eq!(
            std::env::current_dir().expect("cwd"),
            cwd,
            "process cwd unchanged"
        );
        guard.unmount().expect("unmount");
    }

    /// `n` lower directories under `root` whose names are long enough that
    /// even relative to their parent they are more than a page; the
    /// lowest holds `bottom`, the topmost `top`.
    fn long_lowers(root: &Path, n: usize) -> Vec<PathBuf> {
        let lowers: Vec<PathBuf> = (0..n)
            .map(|i| {
                root.join("snapshots")
                    .join(format!("{i:03}-{}", "a-long-layer-directory-name"))
            })
            .collect();
        for dir in &lowers {
            fs::create_dir_all(dir).expect("mkdir");
        }
        fs::write(lowers[n - 1].join("bottom"), b"lowest layer").expect("write");
        fs::write(lowers[0].join("top"), b"top layer").expect("write");
        lowers
    }

    fn overlay_of(lowers: &[PathBuf], upper: &Path, work: &Path) -> Mount {
        let lowerdir = lowers
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(":");
        Mount {
            mount_type: "overlay".into(),
            source: "overlay".into(),
            target: String::new(),
            options: vec![
                "index=off".to_string(),
                format!("workdir={}", work.display()),
                format!("upperdir={}", upper.display()),
                format!("lowerdir={lowerdir}"),
            ],
        }
    }

    /// 500 lower layers (overlayfs's limit) whose lowerdir list is more
    /// than a page even when compacted mount through `lowerdir+`; one more
    /// fails naming the count, before any mount call.
    #[test]
    fn as_many_layers_as_overlayfs_stacks_mount_and_one_more_is_refused() {
        if !kiln_types::testing::needs_root("overlay mounts") {
            return;
        }
        let root = tempfile::tempdir().expect("tempdir");
        // Each lowerdir's path is longer than the 255 bytes `fsconfig`
        // takes; relative to their parent they are short.
        let deep = root
            .path()
            .join(["a-deep-directory-of-layers"; 10].join("/"));
        let lowers = long_lowers(&deep, MAX_OVERLAY_LAYERS + 1);
        assert!(lowers.iter().all(|l| l.as_os_str().len() > 255));
        let (upper, work, mnt) = (
            root.path().join("u"),
            root.path().join("w"),
            root.path().join("m"),
        );
        for p in [&upper, &work, &mnt] {
            fs::create_dir_all(p).expect("mkdir");
        }
        let over = overlay_of(&lowers, &upper, &work);
        let err = MountGuard::mount(&[over], mnt.clone()).expect_err("501 layers");
        assert!(
            matches!(err, MountError::TooManyLayers { count: 501, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("501 layers"), "{err}");
        assert!(!is_mount_point(&mnt));

        let m = overlay_of(&lowers[1..], &upper, &work);
        let compacted = compact_lowerdir(&m.options).expect("a common parent").1;
        assert!(compacted.iter().map(|o| o.len() + 1).sum::<usize>() > page_size());
        let guard = MountGuard::mount(&[m], mnt.clone()).expect("500 layers mount");
        assert_eq!(
            fs::read(guard.path().join("bottom")).expect("read"),
            b"lowest layer"
        );
        assert!(!guard.path().join("top").exists(), "the 501st is not in it");
        fs::write(guard.path().join("new"), b"n").expect("write through overlay");
        let got = mount_options(&mnt);
        assert!(got.iter().any(|o| o == "nosuid"), "{got:?}");
        assert!(got.iter().any(|o| o == "nodev"), "{got:?}");
        guard.unmount().expect("unmount");
        assert_eq!(fs::read(upper.join("new")).expect("in upper"), b"n");

        // Read-only, without an upperdir: a view of a deep chain.
        let mut view = overlay_of(&lowers[1..], &upper, &work);
        view.options.retain(|o| o.starts_with("lowerdir="));
        view.options.push("ro".into());
        let guard = MountGuard::mount(&[view], mnt.clone()).expect("500-layer view");
        let err = fs::write(guard.path().join("x"), b"x").expect_err("read-only");
        assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
        assert!(guard.path().join("bottom").exists());
        guard.unmount().expect("unmount");
    }

    /// Without root the mount fails too (EPERM), and names the same paths.
    #[test]
    fn failed_mount_names_source_and_target() {
        let dst = tempfile::tempdir().expect("tempdir");
        let err = mount_all(
            &[bind(Path::new("/nonexistent/kiln"), &["rbind"])],
            dst.path(),
        )
        .expect_err("missing source");
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/kiln") && msg.contains(&dst.path().display().to_string()),
            "{msg}"
        );
    }

    #[test]
    fn a_missing_bind_source_is_enoent() {
        if !kiln_types::testing::needs_root("bind mounts (without root every mount is EPERM)") {
            return;
        }
        let dst = tempfile::tempdir().expect("tempdir");
        let err = mount_all(
            &[bind(Path::new("/nonexistent/kiln"), &["rbind"])],
            dst.path(),
        )
        .expect_err("missing source");
        assert!(
            matches!(
                err,
                MountError::Mount {
                    errno: Errno::ENOENT,
                    ..
                }
            ),
            "{err:?}"
        );
    }
}
