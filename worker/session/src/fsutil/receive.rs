//! The receiving half of DiffCopy: validate, create, request, write.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{
    fchmod, fchmodat, fstatat, futimens, makedev, mkdirat, mknodat, utimensat, FchmodatFlags,
    FileStat, Mode, SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;
use xattr::FileExt;

use super::send::send_err;
use super::{
    compare_paths, is_valid_path, mode, packet, posix_perm, wire_path, FsutilError, Packet,
    PacketType, Stat,
};

/// How a receiver applies what it receives.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReceiveOptions {
    /// Owner for every entry; `None` keeps the sender's uid and gid.
    pub chown: Option<(u32, u32)>,
    /// `dest` holds an earlier transfer (of the same source) to bring up to
    /// date: an entry whose type, size, mtime and link structure match
    /// keeps its content (only files that differ are requested), metadata
    /// that differs is set in place, and whatever the sender no longer
    /// lists is removed. The result is what a transfer into an empty
    /// directory would give. Without it, entries already in `dest` are
    /// replaced and directories merged, and nothing is removed.
    pub incremental: bool,
    /// Hash the content of every file that arrives
    /// ([`ReceiveStats::digests`]): the caller's hash cache then need not
    /// read the files again.
    pub digests: bool,
}

/// What a transfer delivered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReceiveStats {
    /// STAT entries, of every type.
    pub entries: u64,
    /// Regular files whose content was transferred.
    pub files: u64,
    /// Bytes of file content written.
    pub bytes: u64,
    /// Entries an incremental transfer kept from `dest` (their content
    /// unchanged; their metadata set again where it differed).
    pub kept: u64,
    /// Entries an incremental transfer removed from `dest` (a removed
    /// directory counts once).
    pub removed: u64,
    /// The sum of the listed regular files' sizes: the tree's size.
    pub tree_bytes: u64,
    /// The encoded size of every packet received, as fsutil's progress
    /// counts a transfer (BuildKit's `transferring NAME: 2B` for nothing
    /// sent is the FIN packet).
    pub wire_bytes: u64,
    /// Device nodes, FIFOs and set-user/group-id files in the tree (and
    /// hard links to those), in listing order: what a caller that keeps
    /// the tree may not want to keep.
    pub privileged: Vec<PathBuf>,
    /// With [`ReceiveOptions::digests`]: the SHA-256 of the content of
    /// each regular file whose content this transfer wrote, by path.
    pub digests: Vec<(PathBuf, [u8; 32])>,
}

/// How many files may be open for writing at once; a sender interleaving
/// more (upstream uses 4) costs reopens, not descriptors.
const MAX_OPEN_WRITERS: usize = 16;

/// The most entries one transfer may list. Each costs the receiver some
/// bookkeeping (its path, kind and, for directories, metadata: a few
/// hundred bytes), so this bounds that memory at a few hundred MiB, while
/// the largest real contexts (monorepos with their dependencies) stay well
/// under it.
pub const MAX_ENTRIES: u64 = 1_000_000;

/// The longest path (and symlink target) accepted, in bytes: the kernel's
/// `PATH_MAX`. A longer one could not be used by a step anyway.
pub const MAX_PATH_BYTES: usize = 4096;

/// The most file content one transfer may declare (the sum of its regular
/// files' sizes), and so write: 64 GiB. Content goes to disk, not memory;
/// the limit stops a sender from filling the daemon's disk with one
/// context, and no image build context comes near it.
pub const MAX_TOTAL_BYTES: u64 = 64 << 30;

/// How many bytes of received packets may wait for the file system: what
/// 64 full data packets (32 KiB each) held before, so a transfer's memory
/// stays the same. Counted in bytes, not packets, so that a listing's
/// thousands of small entries queue here rather than in the connection,
/// where h2 counts every small DATA frame it holds against a budget
/// (see `hijack::CONNECTION_WINDOW`).
const APPLY_BYTES: usize = 2 << 20;

/// What a queued packet counts for beyond its wire size (its place in the
/// queue and its decoded stat).
const PACKET_COST: usize = 256;

/// A received packet and its share of [`APPLY_BYTES`], given back once
/// applied.
type Queued = (Packet, tokio::sync::OwnedSemaphorePermit);

/// Receives a tree from the sender at the other end of `rx`/`tx` into
/// `dest`, an existing directory (buildkit-protocol.md §5). Entries already
/// in `dest` are replaced (directories are merged), or, with
/// [`ReceiveOptions::incremental`], brought up to date.
///
/// The sender is untrusted: a path that is not relative and clean, an entry
/// out of order or under anything but a directory of this transfer, a hard
/// link to anything but an earlier regular file, or DATA that was not asked
/// for ends the transfer with an error (also sent to the peer as ERR), and
/// nothing outside `dest` is touched.
pub async fn receive_dir<S>(
    dest: &Path,
    mut rx: S,
    tx: mpsc::Sender<Packet>,
    opts: ReceiveOptions,
) -> Result<ReceiveStats, FsutilError>
where
    S: Stream<Item = Result<Packet, Status>> + Unpin,
{
    let root = match nix::fcntl::open(
        dest,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(errno) => {
            let e = FsutilError::Io {
                op: "open destination",
                path: dest.to_path_buf(),
                source: errno.into(),
            };
            send_err(&tx, &e).await;
            return Err(e);
        }
    };
    let budget = Arc::new(tokio::sync::Semaphore::new(APPLY_BYTES));
    let (in_tx, in_rx) = mpsc::unbounded_channel::<Queued>();
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Packet>();
    // Dropping this future (a cancelled build) stops the applier at its
    // next packet, not after the ones queued: the caller may look at
    // `dest` as soon as it has let go.
    let abandoned = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(abandoned.clone());
    // The file system work runs on a blocking thread; it never waits on the
    // network (its output queue is unbounded), so reading never stalls. The
    // queue holds at most one small REQ per listed file, so MAX_ENTRIES
    // bounds it.
    let applier = tokio::task::spawn_blocking(move || {
        Applier::new(root, opts, out_tx).run(in_rx, &abandoned)
    });
    let reader = async move {
        loop {
            tokio::select! {
                () = in_tx.closed() => return Ok(()),
                item = rx.next() => match item {
                    Some(Ok(p)) => {
                        let cost = usize::try_from(super::wire::packet_len(&p))
                            .unwrap_or(APPLY_BYTES)
                            .saturating_add(PACKET_COST)
                            .min(APPLY_BYTES);
                        let permit = tokio::select! {
                            () = in_tx.closed() => return Ok(()),
                            permit = budget.clone().acquire_many_owned(cost as u32) => match permit {
                                Ok(permit) => permit,
                                Err(_) => return Ok(()),
                            },
                        };
                        if in_tx.send((p, permit)).is_err() {
                            return Ok(());
                        }
                    }
                    // Paths and link targets are bytes; an xattr's name
                    // is a string, which prost refuses unless UTF-8.
                    Some(Err(status))
                        if status.code() == tonic::Code::Internal
                            && status.message().contains("not UTF-8 encoded") =>
                    {
                        return Err(FsutilError::NonUtf8XattrReceived)
                    }
                    Some(Err(status)) => return Err(FsutilError::Transport { status }),
                    // Dropping `in_tx` tells the applier.
                    None => return Ok(()),
                },
            }
        }
    };
    let writer = async {
        while let Some(p) = out_rx.recv().await {
            if tx.send(p).await.is_err() {
                return Err(FsutilError::Closed);
            }
        }
        Ok(())
    };
    let (read, _written, applied) = tokio::join!(reader, writer, applier);
    match applied {
        Ok(Ok(stats)) => Ok(stats),
        // A broken transport is the cause of the applier's early end.
        Ok(Err(e)) => Err(read.err().unwrap_or(e)),
        Err(source) => Err(FsutilError::Task { source }),
    }
}

/// Sets its flag when dropped.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// What an earlier entry of this transfer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Dir,
    /// A regular file with content (a hard-link target candidate).
    File,
    Link,
    Symlink,
    Special,
}

/// A requested file whose DATA has not ended yet.
struct PendingFile {
    path: Vec<u8>,
    stat: Stat,
    /// The digest of what arrived so far ([`ReceiveOptions::digests`]).
    sha: Option<Sha256>,
}

/// The receiver's file system side, run on a blocking thread.
struct Applier {
    root: OwnedFd,
    chown: Option<(u32, u32)>,
    incremental: bool,
    digests: bool,
    out: mpsc::UnboundedSender<Packet>,
    next_id: u32,
    previous: Option<Vec<u8>>,
    entries: HashMap<Vec<u8>, Kind>,
    /// Requested files by ID until their empty DATA.
    pending: HashMap<u32, PendingFile>,
    writers: HashMap<u32, File>,
    /// Directories in listing order; their metadata is applied last.
    dirs: Vec<Stat>,
    /// The last directory opened, as consecutive entries share parents.
    last_dir: Option<(Vec<u8>, Arc<OwnedFd>)>,
    listing_done: bool,
    fin_sent: bool,
    stats: ReceiveStats,
    /// The sum of the regular files' declared sizes.
    declared: u64,
    /// (dev, ino) of the kept regular files with other links, so that
    /// one inode is kept under one path of this transfer only.
    shared_kept: HashSet<(u64, u64)>,
}

/// Splits a valid wire path into its parent (empty for the root) and name.
fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&c| c == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

/// `parent/name`, or `name` in the root.
fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent.is_empty() {
        name.to_vec()
    } else {
        [parent, b"/", name].concat()
    }
}

/// A wire path as an error names it.
fn shown(path: &[u8]) -> PathBuf {
    wire_path(path).to_path_buf()
}

fn io_err<'a>(op: &'static str, path: &'a [u8]) -> impl FnOnce(Errno) -> FsutilError + 'a {
    move |errno| FsutilError::Io {
        op,
        path: shown(path),
        source: errno.into(),
    }
}

impl Applier {
    fn new(root: OwnedFd, opts: ReceiveOptions, out: mpsc::UnboundedSender<Packet>) -> Applier {
        Applier {
            root,
            chown: opts.chown,
            incremental: opts.incremental,
            digests: opts.digests,
            out,
            next_id: 0,
            previous: None,
            entries: HashMap::new(),
            pending: HashMap::new(),
            writers: HashMap::new(),
            dirs: Vec::new(),
            last_dir: None,
            listing_done: false,
            fin_sent: false,
            stats: ReceiveStats::default(),
            declared: 0,
            shared_kept: HashSet::new(),
        }
    }

    fn run(
        mut self,
        mut rx: mpsc::UnboundedReceiver<Queued>,
        abandoned: &AtomicBool,
    ) -> Result<ReceiveStats, FsutilError> {
        let res = self.drive(&mut rx, abandoned);
        if let Err(e) = &res {
            if !matches!(
                e,
                FsutilError::FromSender { .. } | FsutilError::UnexpectedEof
            ) {
                let _ = self.out.send(Packet {
                    data: e.wire_message().into_bytes(),
                    ..packet(PacketType::PacketErr)
                });
            }
        }
        res
    }

    fn drive(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<Queued>,
        abandoned: &AtomicBool,
    ) -> Result<ReceiveStats, FsutilError> {
        loop {
            let p = rx.blocking_recv();
            if abandoned.load(Ordering::Acquire) {
                return Err(FsutilError::Closed);
            }
            // The packet's share of the queue is given back once applied.
            let Some((p, _queued)) = p else {
                // After our FIN the peer may just close.
                return if self.fin_sent {
                    Ok(std::mem::take(&mut self.stats))
                } else {
                    Err(FsutilError::UnexpectedEof)
                };
            };
            self.stats.wire_bytes += super::wire::packet_len(&p);
            match PacketType::try_from(p.r#type) {
                Ok(PacketType::PacketStat) if !self.listing_done => match p.stat {
                    Some(stat) => self.entry(stat)?,
                    None => {
                        self.listing_done = true;
                        self.maybe_finish()?;
                    }
                },
                Ok(PacketType::PacketData) => {
                    self.data(p.id, p.data)?;
                    self.maybe_finish()?;
                }
                Ok(PacketType::PacketFin) if self.fin_sent => {
                    return Ok(std::mem::take(&mut self.stats))
                }
                Ok(PacketType::PacketErr) => {
                    return Err(FsutilError::FromSender {
                        message: String::from_utf8_lossy(&p.data).into_owned(),
                    })
                }
                Ok(other) => {
                    return Err(FsutilError::UnexpectedPacket {
                        packet: other.as_str_name(),
                    })
                }
                Err(_) => return Err(FsutilError::InvalidPacketType { value: p.r#type }),
            }
        }
    }

    /// One STAT entry: validate it, then create it.
    fn entry(&mut self, stat: Stat) -> Result<(), FsutilError> {
        let id = self.next_id;
        self.next_id += 1;
        self.stats.entries += 1;
        let path = stat.path.clone();
        if self.stats.entries > MAX_ENTRIES {
            return Err(FsutilError::TooLarge {
                path: shown(&path),
                what: "the number of entries",
                limit: MAX_ENTRIES,
            });
        }
        if path.len() > MAX_PATH_BYTES {
            return Err(FsutilError::TooLarge {
                path: shown(&path),
                what: "the path length",
                limit: MAX_PATH_BYTES as u64,
            });
        }
        if stat.linkname.len() > MAX_PATH_BYTES {
            return Err(FsutilError::TooLarge {
                path: shown(&path),
                what: "the link target length",
                limit: MAX_PATH_BYTES as u64,
            });
        }
        if !is_valid_path(&path) {
            return Err(FsutilError::InvalidPath { path: shown(&path) });
        }
        if let Some(previous) = &self.previous {
            if compare_paths(&path, previous) != std::cmp::Ordering::Greater {
                return Err(FsutilError::OutOfOrder {
                    path: shown(&path),
                    previous: shown(previous),
                });
            }
        }
        self.previous = Some(path.clone());
        let (parent, name) = split(&path);
        if !parent.is_empty() && self.entries.get(parent) != Some(&Kind::Dir) {
            return Err(FsutilError::ParentNotDirectory { path: shown(&path) });
        }
        let dir = self.open_dir(parent)?;
        // What an earlier transfer left at this path (incremental only).
        let old = if self.incremental {
            match fstatat(&*dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) => Some(st),
                Err(Errno::ENOENT) => None,
                Err(e) => return Err(io_err("stat", &path)(e)),
            }
        } else {
            None
        };
        let m = stat.mode;
        let kind = if m & mode::DIR != 0 {
            self.make_dir(&dir, name, &path)?;
            self.dirs.push(stat);
            Kind::Dir
        } else if m & mode::SYMLINK != 0 {
            if stat.linkname.is_empty() {
                return Err(FsutilError::EmptySymlink { path: shown(&path) });
            }
            if old.is_some_and(|st| self.same_symlink(&dir, name, &st, &stat)) {
                self.stats.kept += 1;
            } else {
                self.clear(&dir, name, &path)?;
                symlinkat(stat.linkname.as_slice(), &*dir, name)
                    .map_err(io_err("symlink", &path))?;
                self.apply_at(&dir, name, &stat, true)?;
            }
            Kind::Symlink
        } else if !stat.linkname.is_empty() {
            let target = stat.linkname.as_slice();
            if !is_valid_path(target) || self.entries.get(target) != Some(&Kind::File) {
                return Err(FsutilError::InvalidLink {
                    path: shown(&path),
                    target: shown(target),
                });
            }
            let (tparent, tname) = split(target);
            let tdir = self.open_dir(tparent)?;
            let linked = match (old, fstatat(&*tdir, tname, AtFlags::AT_SYMLINK_NOFOLLOW)) {
                (Some(o), Ok(t)) => o.st_dev == t.st_dev && o.st_ino == t.st_ino,
                _ => false,
            };
            if self
                .stats
                .privileged
                .iter()
                .any(|p| p.as_os_str().as_bytes() == target)
            {
                self.stats.privileged.push(shown(&path));
            }
            if linked {
                self.stats.kept += 1;
            } else {
                self.clear(&dir, name, &path)?;
                linkat(&*tdir, tname, &*dir, name, AtFlags::empty())
                    .map_err(io_err("link", &path))?;
            }
            Kind::Link
        } else if m & (mode::NAMED_PIPE | mode::DEVICE) != 0 {
            let kind = if m & mode::NAMED_PIPE != 0 {
                SFlag::S_IFIFO
            } else if m & mode::CHAR_DEVICE != 0 {
                SFlag::S_IFCHR
            } else {
                SFlag::S_IFBLK
            };
            let dev = makedev(stat.devmajor as u64, stat.devminor as u64);
            let same = old.is_some_and(|st| {
                st.st_mode & libc::S_IFMT == kind.bits()
                    && st.st_rdev == dev
                    && st.st_mode & 0o7777 == posix_perm(stat.mode)
                    && self.same_owner_and_mtime(&st, &stat)
            });
            if same {
                self.stats.kept += 1;
            } else {
                self.clear(&dir, name, &path)?;
                mknodat(&*dir, name, kind, Mode::from_bits_truncate(0o600), dev)
                    .map_err(io_err("mknod", &path))?;
                self.apply_at(&dir, name, &stat, false)?;
            }
            self.stats.privileged.push(shown(&path));
            Kind::Special
        } else if m & mode::TYPE != 0 {
            return Err(FsutilError::UnsupportedType {
                path: shown(&path),
                mode: m,
            });
        } else {
            let size = u64::try_from(stat.size).unwrap_or(0);
            if self.declared.saturating_add(size) > MAX_TOTAL_BYTES {
                return Err(FsutilError::TooLarge {
                    path: shown(&path),
                    what: "the context's total file size",
                    limit: MAX_TOTAL_BYTES,
                });
            }
            self.declared = self.declared.saturating_add(size);
            if m & (mode::SETUID | mode::SETGID) != 0 {
                self.stats.privileged.push(shown(&path));
            }
            // The content an earlier transfer wrote is kept when the size
            // and mtime agree (the rule fsutil's receivers use). A file
            // with other links (an earlier transfer's hard link, or a
            // snapshot its owner linked it into) is kept only under the
            // first path of this transfer that has it, and only if its
            // metadata needs no change: such an inode is never changed in
            // place, so whatever else links it keeps what it had.
            let keep = old.is_some_and(|st| {
                st.st_mode & libc::S_IFMT == libc::S_IFREG
                    && st.st_size == stat.size
                    && stat_mtime(&st) == stat.mod_time
                    && (st.st_nlink == 1 || self.keep_shared(&dir, name, &st, &stat))
            });
            if keep {
                self.refresh_file(&dir, name, &stat)?;
                self.stats.kept += 1;
            } else {
                self.clear(&dir, name, &path)?;
                let flags = OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_WRONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC;
                drop(
                    openat(&*dir, name, flags, Mode::from_bits_truncate(0o600))
                        .map_err(io_err("create", &path))?,
                );
                self.pending.insert(
                    id,
                    PendingFile {
                        path: path.clone(),
                        stat,
                        sha: self.digests.then(Sha256::new),
                    },
                );
                let _ = self.out.send(Packet {
                    id,
                    ..packet(PacketType::PacketReq)
                });
            }
            Kind::File
        };
        self.entries.insert(path, kind);
        Ok(())
    }

    /// One DATA packet: append it, or finish the file on the empty one.
    fn data(&mut self, id: u32, data: Vec<u8>) -> Result<(), FsutilError> {
        if !self.pending.contains_key(&id) {
            return Err(FsutilError::UnexpectedData { id });
        }
        if data.is_empty() {
            let Some(file) = self.pending.remove(&id) else {
                return Err(FsutilError::UnexpectedData { id });
            };
            let f = match self.writers.remove(&id) {
                Some(f) => f,
                None => self.open_file(&file.path, OFlag::empty())?,
            };
            self.apply_fd(&f, &file.stat, &file.path)?;
            self.stats.files += 1;
            if let Some(sha) = file.sha {
                let path = PathBuf::from(std::ffi::OsString::from_vec(file.path));
                self.stats.digests.push((path, sha.finalize().into()));
            }
            return Ok(());
        }
        if !self.writers.contains_key(&id) {
            if self.writers.len() >= MAX_OPEN_WRITERS {
                if let Some(&evict) = self.writers.keys().next() {
                    self.writers.remove(&evict);
                }
            }
            let path = self
                .pending
                .get(&id)
                .map(|f| f.path.clone())
                .unwrap_or_default();
            let f = self.open_file(&path, OFlag::O_APPEND)?;
            self.writers.insert(id, f);
        }
        let path = self
            .pending
            .get(&id)
            .map(|f| f.path.as_slice())
            .unwrap_or_default();
        // A file may grow while the sender reads it, so its own size is not
        // held to what it declared; the whole transfer is.
        if self.stats.bytes.saturating_add(data.len() as u64) > MAX_TOTAL_BYTES {
            return Err(FsutilError::TooLarge {
                path: shown(path),
                what: "the context's total file size",
                limit: MAX_TOTAL_BYTES,
            });
        }
        if let Some(f) = self.writers.get_mut(&id) {
            f.write_all(&data).map_err(|source| FsutilError::Io {
                op: "write",
                path: shown(path),
                source,
            })?;
        }
        if let Some(sha) = self.pending.get_mut(&id).and_then(|f| f.sha.as_mut()) {
            sha.update(&data);
        }
        self.stats.bytes += data.len() as u64;
        Ok(())
    }

    /// After the listing and the last file: directory metadata (children
    /// first, so their changes do not disturb a parent's mtime), then FIN.
    fn maybe_finish(&mut self) -> Result<(), FsutilError> {
        if !self.listing_done || !self.pending.is_empty() || self.fin_sent {
            return Ok(());
        }
        self.writers.clear();
        self.last_dir = None;
        let dirs = std::mem::take(&mut self.dirs);
        if self.incremental {
            // What the sender no longer lists goes before any directory's
            // metadata is set: removing changes a directory's mtime.
            self.remove_unlisted(b"")?;
            for stat in &dirs {
                self.remove_unlisted(&stat.path)?;
            }
        }
        for stat in dirs.iter().rev() {
            let fd = self.open_dir(&stat.path)?;
            let f = File::from(fd.try_clone().map_err(|source| FsutilError::Io {
                op: "dup",
                path: shown(&stat.path),
                source,
            })?);
            if self.incremental {
                // An unchanged directory is left alone (its ctime too, which
                // the context's stat cache looks at).
                let st = nix::sys::stat::fstat(f.as_fd()).map_err(io_err("stat", &stat.path))?;
                if self.same_owner_and_mtime(&st, stat)
                    && st.st_mode & 0o7777 == posix_perm(stat.mode)
                    && same_xattrs(&f, stat)
                {
                    continue;
                }
                drop_xattrs(&f, stat, &stat.path);
            }
            self.apply_fd(&f, stat, &stat.path)?;
        }
        self.stats.tree_bytes = self.declared;
        let _ = self.out.send(packet(PacketType::PacketFin));
        self.fin_sent = true;
        Ok(())
    }

    /// Removes every entry of the directory `rel` (of this transfer, or the
    /// root for "") that the sender did not list.
    fn remove_unlisted(&mut self, rel: &[u8]) -> Result<(), FsutilError> {
        let dir = self.open_dir(rel)?;
        let names = list_dir(&dir, rel)?;
        for name in names {
            let path = join(rel, &name);
            if !self.entries.contains_key(&path) {
                remove_entry(&dir, &name, &path)?;
                self.stats.removed += 1;
            }
        }
        Ok(())
    }

    /// Whether the symlink `st` at `name` is the one `stat` describes.
    fn same_symlink(&self, dir: &OwnedFd, name: &[u8], st: &FileStat, stat: &Stat) -> bool {
        st.st_mode & libc::S_IFMT == libc::S_IFLNK
            && self.same_owner_and_mtime(st, stat)
            && nix::fcntl::readlinkat(dir, name)
                .is_ok_and(|t| t.as_encoded_bytes() == stat.linkname.as_slice())
    }

    /// Whether `st` has the owner this transfer gives `stat` and its mtime.
    fn same_owner_and_mtime(&self, st: &FileStat, stat: &Stat) -> bool {
        let (uid, gid) = self.owner(stat);
        st.st_uid == uid.as_raw() && st.st_gid == gid.as_raw() && stat_mtime(st) == stat.mod_time
    }

    /// Whether the regular file `st` at `name`, which has other links, may
    /// be kept as `stat`: no other path of this transfer kept its inode,
    /// and its owner, mode and xattrs are already what `stat` says.
    fn keep_shared(&mut self, dir: &OwnedFd, name: &[u8], st: &FileStat, stat: &Stat) -> bool {
        let inode = (st.st_dev, st.st_ino);
        if self.shared_kept.contains(&inode) {
            return false;
        }
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let Ok(fd) = openat(dir, name, flags, Mode::empty()) else {
            return false;
        };
        let f = File::from(fd);
        let same = self.same_owner_and_mtime(st, stat)
            && st.st_mode & 0o7777 == posix_perm(stat.mode)
            && same_xattrs(&f, stat);
        if same {
            self.shared_kept.insert(inode);
        }
        same
    }

    /// Brings the metadata of a kept regular file to what `stat` says, if
    /// it differs (and leaves the file untouched otherwise).
    fn refresh_file(&self, dir: &OwnedFd, name: &[u8], stat: &Stat) -> Result<(), FsutilError> {
        let path = stat.path.as_slice();
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let f = File::from(openat(dir, name, flags, Mode::empty()).map_err(io_err("open", path))?);
        let st = nix::sys::stat::fstat(f.as_fd()).map_err(io_err("stat", path))?;
        if self.same_owner_and_mtime(&st, stat)
            && st.st_mode & 0o7777 == posix_perm(stat.mode)
            && same_xattrs(&f, stat)
        {
            return Ok(());
        }
        drop_xattrs(&f, stat, path);
        self.apply_fd(&f, stat, path)
    }

    /// Opens a directory of this transfer (or the root, for "") by walking
    /// from the root without following symlinks.
    fn open_dir(&mut self, rel: &[u8]) -> Result<Arc<OwnedFd>, FsutilError> {
        if let Some((p, fd)) = &self.last_dir {
            if p == rel {
                return Ok(fd.clone());
            }
        }
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let mut cur =
            openat(&self.root, ".", flags, Mode::empty()).map_err(io_err("open", b"."))?;
        if !rel.is_empty() {
            for c in rel.split(|&c| c == b'/') {
                cur = openat(&cur, c, flags, Mode::empty()).map_err(io_err("open", rel))?;
            }
        }
        let fd = Arc::new(cur);
        self.last_dir = Some((rel.to_vec(), fd.clone()));
        Ok(fd)
    }

    /// Opens a regular file of this transfer for writing, never through a
    /// symlink.
    fn open_file(&mut self, rel: &[u8], extra: OFlag) -> Result<File, FsutilError> {
        let (parent, name) = split(rel);
        let dir = self.open_dir(parent)?;
        let flags = OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | extra;
        let fd = openat(&*dir, name, flags, Mode::empty()).map_err(io_err("open", rel))?;
        Ok(File::from(fd))
    }

    /// Makes `name` a directory, keeping one that exists already (merge)
    /// and replacing anything else.
    fn make_dir(&self, dir: &OwnedFd, name: &[u8], path: &[u8]) -> Result<(), FsutilError> {
        match mkdirat(dir, name, Mode::from_bits_truncate(0o700)) {
            Ok(()) => Ok(()),
            Err(Errno::EEXIST) => {
                let st = fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .map_err(io_err("stat", path))?;
                if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
                    return Ok(());
                }
                unlinkat(dir, name, UnlinkatFlags::NoRemoveDir).map_err(io_err("remove", path))?;
                mkdirat(dir, name, Mode::from_bits_truncate(0o700)).map_err(io_err("mkdir", path))
            }
            Err(e) => Err(io_err("mkdir", path)(e)),
        }
    }

    /// Removes a non-directory at `name` so it can be created afresh. An
    /// existing directory is not replaced by a non-directory, except in an
    /// incremental transfer (where it is what an earlier one left).
    fn clear(&self, dir: &OwnedFd, name: &[u8], path: &[u8]) -> Result<(), FsutilError> {
        match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(io_err("stat", path)(e)),
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR && self.incremental => {
                remove_entry(dir, name, path)
            }
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                Err(io_err("replace directory", path)(Errno::EISDIR))
            }
            Ok(_) => {
                unlinkat(dir, name, UnlinkatFlags::NoRemoveDir).map_err(io_err("remove", path))
            }
        }
    }

    fn owner(&self, stat: &Stat) -> (Uid, Gid) {
        let (uid, gid) = self.chown.unwrap_or((stat.uid, stat.gid));
        (Uid::from_raw(uid), Gid::from_raw(gid))
    }

    /// Owner, mode, xattrs and mtime of an open file or directory. The owner
    /// goes first: chown clears set-id bits and file capabilities.
    fn apply_fd(&self, f: &File, stat: &Stat, path: &[u8]) -> Result<(), FsutilError> {
        let (uid, gid) = self.owner(stat);
        fchown(f.as_fd(), Some(uid), Some(gid)).map_err(io_err("chown", path))?;
        fchmod(f.as_fd(), Mode::from_bits_truncate(posix_perm(stat.mode)))
            .map_err(io_err("chmod", path))?;
        for (key, value) in &stat.xattrs {
            if let Err(e) = f.set_xattr(key, value) {
                // Some namespaces need privileges or support this file
                // system may lack; like upstream, that does not fail a copy.
                tracing::debug!(path = %wire_path(path).display(), key, error = %e, "skipping xattr");
            }
        }
        let t = timespec(stat.mod_time);
        futimens(f.as_fd(), &t, &t).map_err(io_err("set times", path))
    }

    /// Owner, mode and mtime of a symlink or special file just created in
    /// `dir` (xattrs are not applied to these).
    fn apply_at(
        &self,
        dir: &OwnedFd,
        name: &[u8],
        stat: &Stat,
        symlink: bool,
    ) -> Result<(), FsutilError> {
        let path = stat.path.as_slice();
        let (uid, gid) = self.owner(stat);
        fchownat(
            dir,
            name,
            Some(uid),
            Some(gid),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(io_err("chown", path))?;
        if !symlink {
            // `name` was just created by mknodat in a directory only this
            // transfer writes, so it is not a symlink.
            fchmodat(
                dir,
                name,
                Mode::from_bits_truncate(posix_perm(stat.mode)),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(io_err("chmod", path))?;
        }
        let t = timespec(stat.mod_time);
        utimensat(dir, name, &t, &t, UtimensatFlags::NoFollowSymlink)
            .map_err(io_err("set times", path))
    }
}

/// The mtime of `st` in Unix nanoseconds, as `Stat.mod_time` carries it.
fn stat_mtime(st: &FileStat) -> i64 {
    st.st_mtime
        .saturating_mul(1_000_000_000)
        .saturating_add(st.st_mtime_nsec)
}

/// Whether the extended attributes of `f` are exactly those of `stat`.
fn same_xattrs(f: &File, stat: &Stat) -> bool {
    let Ok(names) = f.list_xattr() else {
        return stat.xattrs.is_empty();
    };
    let mut n = 0;
    for key in names {
        n += 1;
        let Some(want) = key.to_str().and_then(|k| stat.xattrs.get(k)) else {
            return false;
        };
        if f.get_xattr(&key).ok().flatten().as_ref() != Some(want) {
            return false;
        }
    }
    n == stat.xattrs.len()
}

/// Removes the extended attributes of `f` that `stat` does not have (a
/// fresh file has none of them).
fn drop_xattrs(f: &File, stat: &Stat, path: &[u8]) {
    let Ok(names) = f.list_xattr() else { return };
    for key in names {
        if key.to_str().is_some_and(|k| stat.xattrs.contains_key(k)) {
            continue;
        }
        if let Err(e) = f.remove_xattr(&key) {
            tracing::debug!(path = %wire_path(path).display(), key = ?key, error = %e, "cannot remove xattr");
        }
    }
}

/// The names in the open directory `dir` (without `.` and `..`).
fn list_dir(dir: &OwnedFd, path: &[u8]) -> Result<Vec<Vec<u8>>, FsutilError> {
    let fd = dir.try_clone().map_err(|source| FsutilError::Io {
        op: "dup",
        path: shown(path),
        source,
    })?;
    let mut d = nix::dir::Dir::from_fd(fd).map_err(io_err("read directory", path))?;
    let mut names = Vec::new();
    for e in d.iter() {
        let e = e.map_err(io_err("read directory", path))?;
        let name = e.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        names.push(name.to_vec());
    }
    Ok(names)
}

/// Removes `name` in `dir` whatever it is, a directory with everything in
/// it, never following a symlink.
fn remove_entry(dir: &OwnedFd, name: &[u8], path: &[u8]) -> Result<(), FsutilError> {
    let st = match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(io_err("stat", path)(e)),
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return unlinkat(dir, name, UnlinkatFlags::NoRemoveDir).map_err(io_err("remove", path));
    }
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let sub = openat(dir, name, flags, Mode::empty()).map_err(io_err("open", path))?;
    for child in list_dir(&sub, path)? {
        remove_entry(&sub, &child, &join(path, &child))?;
    }
    unlinkat(dir, name, UnlinkatFlags::RemoveDir).map_err(io_err("remove", path))
}

/// Unix nanoseconds as a timespec.
fn timespec(nanos: i64) -> TimeSpec {
    TimeSpec::new(
        nanos.div_euclid(1_000_000_000),
        nanos.rem_euclid(1_000_000_000),
    )
}
