//! The sending half of DiffCopy: walk, list, then serve file requests.

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_context::ignore::PatternMatcher;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use super::{packet, FsutilError, Packet, PacketType, Stat, MAX_DATA_CHUNK};

/// How many files are streamed at the same time (upstream's worker count).
const FILE_WORKERS: usize = 4;

/// How long a failing side waits to hand its ERR packet to the transport.
const ERR_SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// What a sender lists.
#[derive(Clone, Debug, Default)]
pub struct SendOptions {
    /// When non-empty, only paths matching one of these (`.dockerignore`
    /// syntax, `!` excludes again) and the directories leading to them are
    /// sent.
    pub include_patterns: Vec<String>,
    /// Paths matching these (`.dockerignore` semantics) are not sent; an
    /// excluded directory is entered only if an exception may re-include
    /// something below it.
    pub exclude_patterns: Vec<String>,
    /// When non-empty, only these paths (and the directories leading to
    /// them) are sent; symlinks among them are followed inside the root and
    /// their targets sent too.
    pub follow_paths: Vec<String>,
    /// Sends uid and gid 0 for every entry, as buildctl and buildx do for
    /// build contexts.
    pub reset_owner: bool,
    /// Top-level directories that only group what is below them (an
    /// exporter's platform directories): sent as BuildKit's exporters
    /// describe them, mode 0755, owner 0:0, no time and no xattrs.
    pub synthetic_dirs: Vec<String>,
    /// Every entry's time in nanoseconds (an exporter's epoch, as
    /// BuildKit's local exporter sets it); `None` sends each file's own.
    pub mtime: Option<i64>,
    /// Groups the names of one inode: a later name is sent as a hard link
    /// of an earlier one only in the same group. `None`: one group.
    pub link_groups: Option<LinkGroups>,
}

/// The group of a name (its path as sent) for hard-link detection: the
/// daemon passes which layer of a result each name comes from, since it
/// shares inodes across layers where a copy would have made new files.
#[derive(Clone)]
pub struct LinkGroups(pub Arc<dyn Fn(&Path) -> usize + Send + Sync>);

impl std::fmt::Debug for LinkGroups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkGroups")
    }
}

/// Sends the tree under `root` to the receiver at the other end of
/// `rx`/`tx` (buildkit-protocol.md §5): one STAT per entry in walk order, an
/// empty STAT, then the requested files as DATA chunks, until the receiver's
/// FIN (answered with FIN).
pub async fn send_dir<S>(
    root: &Path,
    opts: &SendOptions,
    mut rx: S,
    tx: mpsc::Sender<Packet>,
) -> Result<(), FsutilError>
where
    S: Stream<Item = Result<Packet, Status>> + Unpin,
{
    let files = Arc::new(Mutex::new(HashMap::new()));
    let cancel = Arc::new(AtomicBool::new(false));
    let out = tx.clone();
    let listing: Listing = Box::new(move |p| out.blocking_send(p).map_err(|_| FsutilError::Closed));
    let walker = match Walker::new(root, opts, listing, files.clone(), cancel.clone()) {
        Ok(w) => w,
        Err(e) => {
            send_err(&tx, &e).await;
            return Err(e);
        }
    };
    let mut walk = tokio::task::spawn_blocking(move || walker.run());
    let mut walk_done = false;
    let permits = Arc::new(Semaphore::new(FILE_WORKERS));
    let mut workers: JoinSet<Result<(), FsutilError>> = JoinSet::new();

    let result = loop {
        tokio::select! {
            res = &mut walk, if !walk_done => {
                walk_done = true;
                match res {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => break Err(e),
                    Err(source) => break Err(FsutilError::Task { source }),
                }
            }
            Some(res) = workers.join_next() => match res {
                Ok(Ok(())) => {}
                Ok(Err(e)) => break Err(e),
                Err(source) => break Err(FsutilError::Task { source }),
            },
            item = rx.next() => {
                let p = match item {
                    None => break Err(FsutilError::UnexpectedEof),
                    Some(Err(status)) => break Err(FsutilError::Transport { status }),
                    Some(Ok(p)) => p,
                };
                match PacketType::try_from(p.r#type) {
                    Ok(PacketType::PacketReq) => {
                        let path = files.lock().map(|mut f| f.remove(&p.id)).unwrap_or_default();
                        let Some(path) = path else {
                            break Err(FsutilError::InvalidRequest { id: p.id });
                        };
                        workers.spawn(send_file(p.id, path, permits.clone(), tx.clone()));
                    }
                    Ok(PacketType::PacketFin) => {
                        break match tx.send(packet(PacketType::PacketFin)).await {
                            Ok(()) => Ok(()),
                            Err(_) => Err(FsutilError::Closed),
                        };
                    }
                    Ok(PacketType::PacketErr) => {
                        break Err(FsutilError::FromReceiver {
                            message: String::from_utf8_lossy(&p.data).into_owned(),
                        });
                    }
                    Ok(other) => break Err(FsutilError::UnexpectedPacket {
                        packet: other.as_str_name(),
                    }),
                    Err(_) => break Err(FsutilError::InvalidPacketType { value: p.r#type }),
                }
            }
        }
    };
    cancel.store(true, Ordering::Relaxed);
    workers.abort_all();
    if let Err(e) = &result {
        send_err(&tx, e).await;
    }
    result
}

/// Tells the peer about a local failure, unless the peer caused it or can
/// no longer hear it.
pub(super) async fn send_err(tx: &mpsc::Sender<Packet>, e: &FsutilError) {
    if matches!(
        e,
        FsutilError::FromReceiver { .. }
            | FsutilError::FromSender { .. }
            | FsutilError::Closed
            | FsutilError::Transport { .. }
            | FsutilError::UnexpectedEof
    ) {
        return;
    }
    let err = Packet {
        data: e.wire_message().into_bytes(),
        ..packet(PacketType::PacketErr)
    };
    // Best effort: a peer that stopped reading must not hang the error path.
    let _ = tokio::time::timeout(ERR_SEND_TIMEOUT, tx.send(err)).await;
}

/// Streams one requested file: DATA chunks, then an empty DATA. A file that
/// cannot be opened any more is sent as the empty DATA alone.
async fn send_file(
    id: u32,
    path: PathBuf,
    permits: Arc<Semaphore>,
    tx: mpsc::Sender<Packet>,
) -> Result<(), FsutilError> {
    let _permit = permits
        .acquire_owned()
        .await
        .map_err(|_| FsutilError::Closed)?;
    let data = |data: Vec<u8>| Packet {
        id,
        data,
        ..packet(PacketType::PacketData)
    };
    let opened = tokio::fs::OpenOptions::new()
        .read(true)
        // The entry was a regular file during the walk; never block on a
        // FIFO or follow a symlink that replaced it since.
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .await;
    if let Ok(mut f) = opened {
        let mut buf = vec![0u8; MAX_DATA_CHUNK];
        loop {
            let n = f.read(&mut buf).await.map_err(|source| FsutilError::Io {
                op: "read",
                path: path.clone(),
                source,
            })?;
            if n == 0 {
                break;
            }
            tx.send(data(buf[..n].to_vec()))
                .await
                .map_err(|_| FsutilError::Closed)?;
        }
    }
    tx.send(data(Vec::new()))
        .await
        .map_err(|_| FsutilError::Closed)
}

/// Where the walk's STAT packets go, in order: the transport (a slow
/// receiver never stalls the reading of requests), or
/// [`super::wire::wire_size`]'s count.
pub(super) type Listing = Box<dyn FnMut(Packet) -> Result<(), FsutilError> + Send>;

/// The directory walk, run on a blocking thread. It hands the STAT
/// packets to its [`Listing`] itself. Entry IDs are STAT numbers, from 0.
pub(super) struct Walker {
    root: PathBuf,
    /// Include patterns turned around (`**` then each include as an
    /// exception): "matched" means *not* included, and
    /// `might_include_children` tells whether a directory can hold an
    /// included path.
    not_included: Option<PatternMatcher>,
    exclude: Option<PatternMatcher>,
    reset_owner: bool,
    synthetic_dirs: Vec<String>,
    mtime: Option<i64>,
    out: Listing,
    /// Requestable regular files by entry ID, shared with the request loop.
    files: Arc<Mutex<HashMap<u32, PathBuf>>>,
    cancel: Arc<AtomicBool>,
    next_id: u32,
    /// The directories leading to the current one, and whether each has been
    /// sent (a directory that is not itself included is sent only when
    /// something inside it is).
    ancestors: Vec<(Stat, bool)>,
    /// (device, inode, link group) of multiply-linked files -> the first
    /// path sent.
    inodes: HashMap<(u64, u64, usize), Vec<u8>>,
    link_groups: Option<LinkGroups>,
}

impl Walker {
    pub(super) fn new(
        root: &Path,
        opts: &SendOptions,
        out: Listing,
        files: Arc<Mutex<HashMap<u32, PathBuf>>>,
        cancel: Arc<AtomicBool>,
    ) -> Result<Walker, FsutilError> {
        let compile =
            |p: &[String]| PatternMatcher::new(p).map_err(|source| FsutilError::Pattern { source });
        let mut includes = opts.include_patterns.clone();
        includes.extend(resolve_follow_paths(root, &opts.follow_paths));
        let not_included = if includes.is_empty() {
            None
        } else {
            let mut inverted = vec!["**".to_string()];
            inverted.extend(includes.iter().map(|p| match p.trim().strip_prefix('!') {
                Some(rest) => rest.to_string(),
                None => format!("!{}", p.trim()),
            }));
            Some(compile(&inverted)?)
        };
        let exclude = if opts.exclude_patterns.is_empty() {
            None
        } else {
            Some(compile(&opts.exclude_patterns)?)
        };
        Ok(Walker {
            root: root.to_path_buf(),
            not_included,
            exclude,
            reset_owner: opts.reset_owner,
            synthetic_dirs: opts.synthetic_dirs.clone(),
            mtime: opts.mtime,
            out,
            files,
            cancel,
            next_id: 0,
            ancestors: Vec::new(),
            inodes: HashMap::new(),
            link_groups: opts.link_groups.clone(),
        })
    }

    pub(super) fn run(mut self) -> Result<(), FsutilError> {
        let root = self.root.clone();
        let md = std::fs::metadata(&root).map_err(|source| FsutilError::Io {
            op: "stat",
            path: root.clone(),
            source,
        })?;
        if !md.is_dir() {
            return Err(FsutilError::Io {
                op: "walk",
                path: root.clone(),
                source: std::io::Error::from_raw_os_error(libc::ENOTDIR),
            });
        }
        self.walk(&root, b"")?;
        (self.out)(packet(PacketType::PacketStat))
    }

    fn walk(&mut self, dir: &Path, dir_rel: &[u8]) -> Result<(), FsutilError> {
        let io = |op, source| FsutilError::Io {
            op,
            path: dir.to_path_buf(),
            source,
        };
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io("read directory", e))? {
            names.push(entry.map_err(|e| io("read directory", e))?.file_name());
        }
        // OsString orders by bytes on Unix: Go's walk order.
        names.sort();
        for name in names {
            if self.cancel.load(Ordering::Relaxed) {
                return Err(FsutilError::Closed);
            }
            let abs = dir.join(&name);
            // A name is any bytes (Go's fsutil sends them as they are);
            // the patterns, text, match its lossy form (each invalid
            // sequence one U+FFFD, where Go's matcher sees one character
            // per invalid byte: a `?` can differ on such a name).
            let rel = if dir_rel.is_empty() {
                name.as_bytes().to_vec()
            } else {
                [dir_rel, b"/", name.as_bytes()].concat()
            };
            let text = String::from_utf8_lossy(&rel);
            let md = match std::fs::symlink_metadata(&abs) {
                Ok(md) => md,
                // Removed since the directory was read.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(FsutilError::Io {
                        op: "stat",
                        path: abs.clone(),
                        source,
                    })
                }
            };
            if md.file_type().is_socket() {
                continue;
            }
            let is_dir = md.is_dir();
            let mut include = true;
            let mut descend = is_dir;
            for m in [&self.not_included, &self.exclude].into_iter().flatten() {
                if m.matches(&text) {
                    include = false;
                    descend = descend && m.might_include_children(&text);
                }
            }
            if !include && !descend {
                continue;
            }
            let stat = self.stat_of(&abs, rel.clone(), &md)?;
            if include {
                self.send_ancestors()?;
                self.send(stat.clone(), &abs, &md)?;
            }
            if is_dir {
                self.ancestors.push((stat, include));
                let res = self.walk(&abs, &rel);
                self.ancestors.pop();
                res?;
            }
        }
        Ok(())
    }

    /// Sends the directories leading to an included entry that were held
    /// back because they are not included themselves.
    fn send_ancestors(&mut self) -> Result<(), FsutilError> {
        for i in 0..self.ancestors.len() {
            if !self.ancestors[i].1 {
                self.ancestors[i].1 = true;
                let stat = self.ancestors[i].0.clone();
                self.send_stat(stat)?;
            }
        }
        Ok(())
    }

    /// Sends one entry, turning later paths of a multiply-linked file into
    /// hard links and registering regular files as requestable.
    fn send(&mut self, mut stat: Stat, abs: &Path, md: &Metadata) -> Result<(), FsutilError> {
        let ft = md.file_type();
        if !ft.is_dir() && !ft.is_symlink() && md.nlink() > 1 {
            let group = self
                .link_groups
                .as_ref()
                .map_or(0, |g| (g.0)(super::wire_path(&stat.path)));
            let key = (md.dev(), md.ino(), group);
            match self.inodes.get(&key) {
                Some(first) => {
                    stat.linkname = first.clone();
                    stat.size = 0;
                }
                None => {
                    self.inodes.insert(key, stat.path.clone());
                }
            }
        }
        if ft.is_file() && stat.linkname.is_empty() {
            if let Ok(mut files) = self.files.lock() {
                files.insert(self.next_id, abs.to_path_buf());
            }
        }
        self.send_stat(stat)
    }

    fn send_stat(&mut self, stat: Stat) -> Result<(), FsutilError> {
        self.next_id += 1;
        (self.out)(Packet {
            stat: Some(stat),
            ..packet(PacketType::PacketStat)
        })
    }

    fn stat_of(&self, abs: &Path, rel: Vec<u8>, md: &Metadata) -> Result<Stat, FsutilError> {
        let mut stat = super::stat_of(abs, rel, md)?;
        if self.reset_owner {
            (stat.uid, stat.gid) = (0, 0);
        }
        if md.is_dir()
            && self
                .synthetic_dirs
                .iter()
                .any(|d| d.as_bytes() == stat.path)
        {
            stat = Stat {
                path: stat.path,
                mode: super::mode::DIR | 0o755,
                ..Stat::default()
            };
        }
        if let Some(t) = self.mtime {
            stat.mod_time = t;
        }
        Ok(stat)
    }
}

/// fsutil's `FollowLinks`: each follow path, with every symlink on its
/// way (a directory symlink in the middle too, and those a wildcard
/// element matches) kept and followed to its target, as include patterns;
/// a target is clamped to the root. Empty when one path is the root: then
/// nothing is filtered.
fn resolve_follow_paths(root: &Path, paths: &[String]) -> Vec<String> {
    let mut resolved = std::collections::BTreeSet::new();
    for p in paths {
        follow_path(root, p, &mut resolved, 0);
    }
    // Sorted; a path below one already listed adds nothing.
    let mut out: Vec<String> = Vec::new();
    for p in resolved {
        if p == "." {
            return Vec::new();
        }
        if out.last().is_some_and(|l| p.starts_with(&format!("{l}/"))) {
            continue;
        }
        out.push(p);
    }
    out
}

/// Adds `p` to `resolved` element by element, following each symlink met.
fn follow_path(
    root: &Path,
    p: &str,
    resolved: &mut std::collections::BTreeSet<String>,
    depth: usize,
) {
    // fsutil stops at paths seen before; the bound is for link chains
    // that keep making new paths (`a -> a/a`).
    if depth > 40 {
        return;
    }
    let mut rest = clean(p);
    if rest.is_empty() {
        resolved.insert(".".to_string());
        return;
    }
    // Above the root: nothing of the directory matches it.
    if rest == ".." || rest.starts_with("../") {
        return;
    }
    let mut current = String::new();
    loop {
        let (head, tail) = rest.split_once('/').unwrap_or((&rest, ""));
        current = if current.is_empty() {
            head.to_string()
        } else {
            format!("{current}/{head}")
        };
        let tail = tail.to_string();
        let targets = symlink_targets(root, &current, true);
        if (tail.is_empty() || !targets.is_empty()) && resolved.contains(&current) {
            return;
        }
        if !targets.is_empty() {
            resolved.insert(current);
            for t in targets {
                follow_path(root, &format!("{t}/{tail}"), resolved, depth + 1);
            }
            return;
        }
        if tail.is_empty() {
            resolved.insert(current);
            return;
        }
        rest = tail;
    }
}

/// The targets (clean, relative to the root, clamped to it) of the symlink
/// at `p`, or of the symlinks its last element matches when that is a
/// wildcard; empty for anything else, missing included.
fn symlink_targets(root: &Path, p: &str, wildcard: bool) -> Vec<String> {
    let (dir, base) = p.rsplit_once('/').unwrap_or(("", p));
    if wildcard && kiln_context::ignore::contains_wildcards(base) {
        let Ok(entries) = std::fs::read_dir(root.join(dir)) else {
            return Vec::new();
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| kiln_context::ignore::glob_match(base, n))
            .collect();
        names.sort();
        return names
            .iter()
            .flat_map(|n| {
                let child = if dir.is_empty() {
                    n.clone()
                } else {
                    format!("{dir}/{n}")
                };
                symlink_targets(root, &child, false)
            })
            .collect();
    }
    let is_link = std::fs::symlink_metadata(root.join(p)).is_ok_and(|m| m.file_type().is_symlink());
    if !is_link {
        return Vec::new();
    }
    let Ok(target) = std::fs::read_link(root.join(p)) else {
        return Vec::new();
    };
    let Some(target) = target.to_str() else {
        return Vec::new();
    };
    // An absolute target is the root's; `..` stops at the root.
    let joined = if target.starts_with('/') {
        target.to_string()
    } else {
        format!("/{dir}/{target}")
    };
    vec![clean(&joined)]
}

/// Lexically cleans a slash-separated path relative to the root: no leading
/// `/`, no `.` or empty elements, `..` eating the element before it (and
/// kept when it climbs above the root). The root itself is "".
fn clean(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                if matches!(parts.last(), Some(&l) if l != "..") {
                    parts.pop();
                } else if !p.starts_with('/') {
                    parts.push("..");
                }
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

#[cfg(test)]
mod tests {
    use super::clean;

    #[test]
    fn clean_matches_go_for_relative_and_absolute_targets() {
        for (input, want) in [
            ("a/b", "a/b"),
            ("/a/./b/", "a/b"),
            ("a/../b", "b"),
            ("../a", "../a"),
            ("/../a", "a"),
            ("a/../../b", "../b"),
            ("", ""),
        ] {
            assert_eq!(clean(input), want, "{input}");
        }
    }
}
