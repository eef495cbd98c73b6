//! Content digests of build-context selections, the cache key of a `COPY`
//! from the local context (BuildKit's `cache/contenthash`, without its
//! radix tree).
//!
//! A digest covers, for every entry the copy would read, in a fixed order:
//! the path relative to the copied source, the file type, the permission
//! bits, the symlink target, the device number, which earlier entry a file
//! is a hard link of, a digest of the extended attributes (the copy carries
//! them over) and the content digest. It never covers mtimes, owners or
//! inode numbers, so a fresh checkout of the same tree hits the cache.
//!
//! The selection mirrors `fileop::copy`: the source is resolved inside the
//! context (symlinks followed per component, clamped to the root), the
//! `.dockerignore` matcher hides entries, and the op's include/exclude
//! patterns filter below the source. Where the copy's behaviour depends on
//! an option this module is not told (`follow_symlink`, `allow_wildcard`),
//! both readings are hashed: over-approximating costs a cache miss,
//! under-approximating would reuse a wrong layer.
//!
//! Reading 400 MB on every no-op rebuild is what the [`HashCache`] avoids:
//! a stat cache maps each path's (dev, ino, size, mtime, ctime, mode) to
//! its content and xattr digests, so a warm call only stats the tree. As in
//! git, an entry recorded within [`RACY_WINDOW`] of the file's mtime/ctime
//! is not trusted (a write in the same timestamp tick would go unseen) and
//! is re-read until it has aged.
//!
//! Architecture invariant: this module reads the context and its own state
//! file only; it never follows a symlink out of the context and never
//! writes into it.

use crate::fileop::root::{is_hidden, rel_string, segments, Seg};
use crate::ignore::{clean_path, contains_wildcards, glob_match, IgnoreError, PatternMatcher};
use kiln_solver::Digest;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long after a file's last change a recorded stat tuple stays
/// untrusted (the racy-git problem).
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// Linux's symlink limit, as in `fileop::root`.
const MAX_SYMLINKS: usize = 255;

/// Version of the state file; a file with another version is ignored.
const STATE_VERSION: u32 = 1;

/// Domain separator of the digest; bump it when the record layout changes.
const DIGEST_DOMAIN: &[u8] = b"kiln.contenthash.v1\0";

/// Read buffer for file contents: large files are streamed through it.
const READ_BUF: usize = 256 * 1024;

/// Errors of content hashing. Paths are host paths.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// A filesystem call on the context failed.
    #[error("failed to {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Walking the context failed (a directory could not be read).
    #[error("failed to walk {path}")]
    Walk {
        path: PathBuf,
        #[source]
        source: walkdir::Error,
    },
    /// Resolving the source exceeded 255 symlinks.
    #[error("too many levels of symbolic links resolving {path}")]
    SymlinkLoop { path: String },
    /// A file was replaced by something else while it was being hashed.
    #[error("{path} changed while hashing")]
    Changed { path: PathBuf },
    /// A `.dockerignore`, include or exclude pattern is malformed.
    #[error("invalid {which} pattern")]
    Pattern {
        which: &'static str,
        #[source]
        source: IgnoreError,
    },
    /// The stat cache could not be written.
    #[error("failed to save stat cache {path}")]
    Save {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = HashError> = std::result::Result<T, E>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> HashError + 'a {
    move |source| HashError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// One remembered entry: the stat tuple it was recorded with and what was
/// derived from the entry's data.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct StatEntry {
    #[serde(rename = "d")]
    dev: u64,
    #[serde(rename = "i")]
    ino: u64,
    #[serde(rename = "s")]
    size: u64,
    #[serde(rename = "m")]
    mtime_ns: i64,
    #[serde(rename = "c")]
    ctime_ns: i64,
    /// The full `st_mode`, type bits included.
    #[serde(rename = "o")]
    mode: u32,
    /// Wall-clock time (ns) of the call that recorded the entry.
    #[serde(rename = "r")]
    recorded_ns: i64,
    /// Hex SHA-256 of the content, for regular files.
    #[serde(rename = "h", default, skip_serializing_if = "Option::is_none")]
    content: Option<String>,
    /// Hex SHA-256 of the xattrs, when the entry has any.
    #[serde(rename = "x", default, skip_serializing_if = "Option::is_none")]
    xattrs: Option<String>,
    /// Generation of the last call that visited the entry (not persisted).
    #[serde(skip)]
    seen: u64,
}

impl StatEntry {
    fn same_stat(&self, md: &Metadata) -> bool {
        self.dev == md.dev()
            && self.ino == md.ino()
            && self.size == md.size()
            && self.mtime_ns == mtime_ns(md)
            && self.ctime_ns == ctime_ns(md)
            && self.mode == md.mode()
    }

    /// Whether the entry was recorded long enough after the file's last
    /// change that a later change must have moved mtime or ctime.
    fn trusted(&self, window_ns: i64) -> bool {
        self.recorded_ns
            .saturating_sub(self.mtime_ns.max(self.ctime_ns))
            >= window_ns
    }

    fn well_formed(&self) -> bool {
        let hex_ok = |h: &Option<String>| {
            h.as_ref().is_none_or(|h| {
                h.len() == 64
                    && h.bytes()
                        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            })
        };
        hex_ok(&self.content) && hex_ok(&self.xattrs)
    }
}

fn mtime_ns(md: &Metadata) -> i64 {
    md.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(md.mtime_nsec())
}

fn ctime_ns(md: &Metadata) -> i64 {
    md.ctime()
        .saturating_mul(1_000_000_000)
        .saturating_add(md.ctime_nsec())
}

/// The on-disk form of one context's stat cache.
#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u32,
    context: PathBuf,
    entries: BTreeMap<String, StatEntry>,
}

/// [`StateFile`] borrowed, for writing.
#[derive(Serialize)]
struct StateFileRef<'a> {
    version: u32,
    context: &'a Path,
    entries: &'a BTreeMap<String, StatEntry>,
}

/// The stat cache of one context directory.
struct ContextCache {
    context: PathBuf,
    file: PathBuf,
    loaded: bool,
    dirty: bool,
    generation: u64,
    /// Keyed by the `/`-separated path relative to the context (`""` is
    /// the context itself). Entries with non-UTF-8 paths are not cached.
    entries: BTreeMap<String, StatEntry>,
}

impl ContextCache {
    fn load(&mut self) {
        if self.loaded {
            return;
        }
        self.loaded = true;
        let bytes = match std::fs::read(&self.file) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!(path = %self.file.display(), error = %e, "stat cache unreadable, rebuilding");
                return;
            }
        };
        match serde_json::from_slice::<StateFile>(&bytes) {
            Ok(state)
                if state.version == STATE_VERSION
                    && state.context == self.context
                    && state.entries.values().all(StatEntry::well_formed) =>
            {
                self.entries = state.entries;
            }
            Ok(_) => {
                tracing::warn!(path = %self.file.display(), "stat cache is stale or malformed, rebuilding");
            }
            Err(e) => {
                tracing::warn!(path = %self.file.display(), error = %e, "stat cache is corrupt, rebuilding");
            }
        }
    }

    fn save(&mut self) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let save_err = |source| HashError::Save {
            path: self.file.clone(),
            source,
        };
        let encoded = serde_json::to_vec(&StateFileRef {
            version: STATE_VERSION,
            context: &self.context,
            entries: &self.entries,
        })
        .map_err(|e| save_err(std::io::Error::other(e)))?;
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir).map_err(save_err)?;
        }
        static TMP_SEQ: AtomicU64 = AtomicU64::new(0);
        let mut tmp = self.file.clone().into_os_string();
        tmp.push(format!(
            ".tmp.{}.{}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp = PathBuf::from(tmp);
        let written = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&encoded)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.file)
        })();
        if let Err(e) = written {
            // Best effort: the temp file is garbage either way.
            let _ = std::fs::remove_file(&tmp);
            return Err(save_err(e));
        }
        self.dirty = false;
        Ok(())
    }
}

/// A persistent stat cache: path -> (dev, ino, size, mtime_ns, ctime_ns,
/// mode) -> content digest. Stored as one file under `state_dir` per
/// context directory (name derived from the context's absolute path),
/// loaded lazily, saved atomically (write temp + rename). It is only an
/// accelerator: deleting it loses nothing but time; a corrupt file is
/// ignored (logged) and rebuilt.
///
/// Calls for different contexts run in parallel; calls for the same
/// context are serialized (the second one then finds a warm cache).
pub struct HashCache {
    state_dir: PathBuf,
    contexts: Mutex<HashMap<PathBuf, Arc<Mutex<ContextCache>>>>,
    racy_window_ns: i64,
    /// Number of regular files whose content was read (test-only probe).
    #[cfg(test)]
    reads: std::sync::atomic::AtomicUsize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every entry is replaced whole, so a panic elsewhere cannot leave a
    // half-written entry behind: the data is still usable.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl HashCache {
    /// A cache whose state files live in `state_dir` (created on save).
    /// Nothing is read until a context is first hashed.
    pub fn open(state_dir: &Path) -> Self {
        HashCache {
            state_dir: state_dir.to_path_buf(),
            contexts: Mutex::new(HashMap::new()),
            racy_window_ns: i64::try_from(RACY_WINDOW.as_nanos()).unwrap_or(i64::MAX),
            #[cfg(test)]
            reads: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The state file used for a (canonical) context directory.
    fn state_file(&self, context: &Path) -> PathBuf {
        let h = Sha256::digest(context.as_os_str().as_bytes());
        self.state_dir
            .join(format!("contenthash-{}.json", hex::encode(&h[..16])))
    }

    fn context_cache(&self, context: &Path) -> Arc<Mutex<ContextCache>> {
        let mut map = lock(&self.contexts);
        map.entry(context.to_path_buf())
            .or_insert_with(|| {
                Arc::new(Mutex::new(ContextCache {
                    context: context.to_path_buf(),
                    file: self.state_file(context),
                    loaded: false,
                    dirty: false,
                    generation: 0,
                    entries: BTreeMap::new(),
                }))
            })
            .clone()
    }

    /// Digest of what `COPY <src>` would read from `context`, honouring
    /// `excludes` (.dockerignore patterns, same semantics as
    /// [`PatternMatcher`]) and the op's include/exclude patterns.
    ///
    /// `src` is the COPY source as written in the graph (e.g. "/app.txt",
    /// "src/", ".", "*.go", "dir/*/x"). A wildcard source hashes the entries
    /// its pattern matches below the literal prefix, as the copy expands it,
    /// and the literal path too if it exists. A missing (or ignored) source
    /// gives a stable "not found" digest; the copy itself reports the error.
    pub fn digest(
        &self,
        context: &Path,
        src: &str,
        excludes: &[String],
        include_patterns: &[String],
        exclude_patterns: &[String],
    ) -> Result<Digest, HashError> {
        let filters = Filters {
            hide: compile("dockerignore", excludes)?,
            include: compile("include", include_patterns)?,
            exclude: compile("exclude", exclude_patterns)?,
        };
        let mut out = Sha256::new();
        out.update(DIGEST_DOMAIN);
        let context = match std::fs::canonicalize(context) {
            Ok(c) if c.is_dir() => c,
            _ => {
                // No context, nothing to copy: the copy fails the same way.
                put(&mut out, b'!', b"context not found");
                return Ok(Digest::from_sha256(&out.finalize()));
            }
        };
        let cache = self.context_cache(&context);
        let mut cache = lock(&cache);
        cache.load();
        cache.generation += 1;
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let mut hasher = TreeHasher {
            owner: self,
            root: &context,
            filters: &filters,
            cache: &mut cache,
            now_ns,
            out,
            links: HashMap::new(),
            buf: Vec::new(),
        };
        hasher.source(src)?;
        Ok(Digest::from_sha256(&hasher.out.finalize()))
    }

    /// Writes the stat cache back if it changed.
    pub fn save(&self) -> Result<(), HashError> {
        let caches: Vec<_> = lock(&self.contexts).values().cloned().collect();
        let mut first_err = None;
        for c in caches {
            if let Err(e) = lock(&c).save() {
                tracing::warn!(error = %e, "stat cache not saved");
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    #[cfg(test)]
    fn with_racy_window(mut self, window: Duration) -> Self {
        self.racy_window_ns = i64::try_from(window.as_nanos()).unwrap_or(i64::MAX);
        self
    }

    #[cfg(test)]
    fn take_reads(&self) -> usize {
        self.reads.swap(0, Ordering::SeqCst)
    }
}

fn compile(which: &'static str, patterns: &[String]) -> Result<Option<PatternMatcher>> {
    let m = PatternMatcher::new(patterns).map_err(|source| HashError::Pattern { which, source })?;
    Ok((!m.is_empty()).then_some(m))
}

struct Filters {
    /// `.dockerignore`, matched against context-relative paths.
    hide: Option<PatternMatcher>,
    /// The op's patterns, matched against source-relative paths.
    include: Option<PatternMatcher>,
    exclude: Option<PatternMatcher>,
}

/// Writes one length-prefixed field, so that no two record streams can
/// collide by shifting bytes between fields.
fn put(h: &mut Sha256, tag: u8, bytes: &[u8]) {
    h.update([tag]);
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// Where a source resolved inside the context.
struct Resolved {
    rel: Vec<OsString>,
    /// Some existing component on the way is hidden by `.dockerignore`.
    hidden: bool,
}

/// One digest computation over a locked context cache.
struct TreeHasher<'a> {
    owner: &'a HashCache,
    root: &'a Path,
    filters: &'a Filters,
    cache: &'a mut ContextCache,
    now_ns: i64,
    out: Sha256,
    /// (dev, ino) of multiply-linked files -> the first record path, so
    /// hard-link structure (which the copy keeps) is hashed without inode
    /// numbers.
    links: HashMap<(u64, u64), Vec<u8>>,
    buf: Vec<u8>,
}

impl TreeHasher<'_> {
    fn host(&self, rel: &[OsString]) -> PathBuf {
        let mut p = self.root.to_path_buf();
        p.extend(rel);
        p
    }

    /// Mirrors `fileop::root::resolve`: symlinks in every component but
    /// the last (and in the last when `follow_final`) are followed, `..`
    /// and absolute targets are clamped to the context root.
    fn resolve(&self, path: &Path, follow_final: bool) -> Result<Resolved> {
        let mut queue: VecDeque<Seg> = segments(path).collect();
        let mut rel: Vec<OsString> = Vec::new();
        let mut links = 0;
        let mut hidden = false;
        while let Some(seg) = queue.pop_front() {
            let name = match seg {
                Seg::Parent => {
                    rel.pop();
                    continue;
                }
                Seg::Name(n) => n,
            };
            let mut host = self.host(&rel);
            host.push(&name);
            let is_last = queue.is_empty();
            let Ok(md) = std::fs::symlink_metadata(&host) else {
                rel.push(name);
                continue;
            };
            if let Some(h) = &self.filters.hide {
                let mut r = rel.clone();
                r.push(name.clone());
                if is_hidden(h, &rel_string(&r), md.is_dir()) {
                    hidden = true;
                }
            }
            if md.file_type().is_symlink() && (!is_last || follow_final) {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(HashError::SymlinkLoop {
                        path: path.to_string_lossy().into_owned(),
                    });
                }
                let target = std::fs::read_link(&host).map_err(io_err("read link", &host))?;
                if target.has_root() {
                    rel.clear();
                }
                let segs: Vec<Seg> = segments(&target).collect();
                for s in segs.into_iter().rev() {
                    queue.push_front(s);
                }
                continue;
            }
            rel.push(name);
        }
        Ok(Resolved { rel, hidden })
    }

    fn source(&mut self, src: &str) -> Result<()> {
        let cleaned = clean_path(&format!("/{src}"));
        let comps: Vec<&str> = cleaned.split('/').filter(|c| !c.is_empty()).collect();
        match comps.iter().position(|c| contains_wildcards(c)) {
            None => {
                put(&mut self.out, b'S', b"literal");
                self.literal(Path::new(src))
            }
            Some(k) => {
                put(&mut self.out, b'S', b"wildcard");
                self.wildcard(&comps[..k].join("/"), &comps[k..].join("/"))?;
                // Without `allow_wildcard` the copy takes the path literally.
                put(&mut self.out, b'S', b"as-literal");
                self.literal(Path::new(src))
            }
        }
    }

    /// A source path taken literally: the entry itself, and when it is a
    /// symlink also what it leads to (the copy follows it or not depending
    /// on `follow_symlink`, which is not known here).
    fn literal(&mut self, path: &Path) -> Result<()> {
        let Some(entry) = self.resolve_or_mark(path, false)? else {
            return Ok(());
        };
        if !self.selected(&entry)? {
            return Ok(());
        }
        let host = self.host(&entry.rel);
        let md = std::fs::symlink_metadata(&host).map_err(io_err("stat", &host))?;
        if !md.file_type().is_symlink() {
            return self.tree(&entry.rel);
        }
        self.tree(&entry.rel)?;
        put(&mut self.out, b'S', b"followed");
        if let Some(followed) = self.resolve_or_mark(path, true)? {
            if self.selected(&followed)? {
                self.tree(&followed.rel)?;
            }
        }
        Ok(())
    }

    /// [`Self::resolve`], with a symlink loop hashed as a marker: the copy
    /// reports that error, the cache key need not.
    fn resolve_or_mark(&mut self, path: &Path, follow_final: bool) -> Result<Option<Resolved>> {
        match self.resolve(path, follow_final) {
            Ok(r) => Ok(Some(r)),
            Err(HashError::SymlinkLoop { .. }) => {
                put(&mut self.out, b'!', b"symlink loop");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Records whether a resolved source exists and is visible; hashes a
    /// "not found" marker otherwise.
    fn selected(&mut self, r: &Resolved) -> Result<bool> {
        let host = self.host(&r.rel);
        let exists = match std::fs::symlink_metadata(&host) {
            Ok(_) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => false,
            Err(e) => return Err(io_err("stat", &host)(e)),
        };
        if r.hidden || !exists {
            put(&mut self.out, b'!', b"not found");
            return Ok(false);
        }
        Ok(true)
    }

    /// Mirrors `fileop::copy::resolve_wildcards`: the prefix is resolved,
    /// then the tree below it is matched component-wise; a matched entry
    /// is hashed whole and not searched further.
    fn wildcard(&mut self, prefix: &str, pattern: &str) -> Result<()> {
        let Some(base) = self.resolve_or_mark(Path::new(prefix), true)? else {
            return Ok(());
        };
        let base_host = self.host(&base.rel);
        let is_dir = std::fs::symlink_metadata(&base_host).is_ok_and(|m| m.is_dir());
        if base.hidden || !is_dir {
            put(&mut self.out, b'!', b"no matches");
            return Ok(());
        }
        let depth = pattern.split('/').count();
        let mut matches = Vec::new();
        self.walk_matches(&base.rel, "", depth, pattern, &mut matches)?;
        if matches.is_empty() {
            put(&mut self.out, b'!', b"no matches");
        }
        for (rel, name) in matches {
            put(&mut self.out, b'W', name.as_bytes());
            let path: PathBuf = rel.iter().collect();
            self.literal(&path)?;
        }
        Ok(())
    }

    fn walk_matches(
        &self,
        dir_rel: &[OsString],
        rel: &str,
        depth: usize,
        pattern: &str,
        out: &mut Vec<(Vec<OsString>, String)>,
    ) -> Result<()> {
        let dir = self.host(dir_rel);
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(io_err("read directory", &dir))? {
            names.push(entry.map_err(io_err("read directory", &dir))?.file_name());
        }
        names.sort();
        for name in names {
            let host = dir.join(&name);
            let md = std::fs::symlink_metadata(&host).map_err(io_err("stat", &host))?;
            let mut child = dir_rel.to_vec();
            child.push(name.clone());
            if let Some(h) = &self.filters.hide {
                if is_hidden(h, &rel_string(&child), md.is_dir()) {
                    continue;
                }
            }
            let lossy = name.to_string_lossy();
            let child_rel = if rel.is_empty() {
                lossy.into_owned()
            } else {
                format!("{rel}/{lossy}")
            };
            if glob_match(pattern, &child_rel) {
                out.push((child, child_rel));
                continue;
            }
            if md.is_dir() && depth > 1 {
                self.walk_matches(&child, &child_rel, depth - 1, pattern, out)?;
            }
        }
        Ok(())
    }

    /// Hashes the entry at `rel` and, for a directory, everything below it
    /// that the copy would take (mirrors `Copier::copy_entry`). Symlinks
    /// below the source are recorded as links, never followed.
    fn tree(&mut self, rel: &[OsString]) -> Result<()> {
        let host = self.host(rel);
        let base_key = rel_string(rel);
        let generation = self.cache.generation;
        let mut pruned: HashSet<String> = HashSet::new();
        let mut walk = walkdir::WalkDir::new(&host)
            .follow_links(false)
            .follow_root_links(false)
            .sort_by_file_name()
            .into_iter();
        while let Some(entry) = walk.next() {
            let entry = entry.map_err(|source| HashError::Walk {
                path: source.path().unwrap_or(&host).to_path_buf(),
                source,
            })?;
            let md = entry.metadata().map_err(|source| HashError::Walk {
                path: entry.path().to_path_buf(),
                source,
            })?;
            let rel_path = entry.path().strip_prefix(&host).unwrap_or(Path::new(""));
            let pat_rel = rel_path.to_string_lossy();
            let ign_rel = match (base_key.is_empty(), pat_rel.is_empty()) {
                (_, true) => base_key.clone(),
                (true, false) => pat_rel.to_string(),
                (false, false) => format!("{base_key}/{pat_rel}"),
            };
            let is_dir = md.is_dir();
            let (include, descend) = self.filter(&pat_rel, &ign_rel, is_dir);
            if !include && (!is_dir || !descend) {
                if is_dir {
                    walk.skip_current_dir();
                    pruned.insert(ign_rel);
                } else if let Some(e) = self.cache.entries.get_mut(&ign_rel) {
                    // Not copied, but still there: keep its entry.
                    e.seen = generation;
                }
                continue;
            }
            self.entry(
                entry.path(),
                rel_path.as_os_str(),
                &ign_rel,
                &md,
                include,
                generation,
            )?;
        }
        self.forget_missing(&base_key, &pruned, generation);
        Ok(())
    }

    /// Whether an entry below the source is copied, and whether its
    /// children must be looked at.
    fn filter(&self, pat_rel: &str, ign_rel: &str, is_dir: bool) -> (bool, bool) {
        if pat_rel.is_empty() {
            return (true, true);
        }
        let (mut include, mut descend) = (true, true);
        if let Some(h) = &self.filters.hide {
            if h.matches(ign_rel) {
                include = false;
                descend &= is_dir && h.might_include_children(ign_rel);
            }
        }
        if let Some(inc) = &self.filters.include {
            if !inc.matches(pat_rel) {
                include = false;
            }
        }
        if let Some(exc) = &self.filters.exclude {
            if exc.matches(pat_rel) {
                include = false;
                descend &= is_dir && exc.might_include_children(pat_rel);
            }
        }
        (include, descend)
    }

    /// Hashes one entry's record.
    fn entry(
        &mut self,
        host: &Path,
        rec_path: &OsStr,
        key: &str,
        md: &Metadata,
        include: bool,
        generation: u64,
    ) -> Result<()> {
        let ft = md.file_type();
        let kind: u8 = if ft.is_dir() {
            b'd'
        } else if ft.is_file() {
            b'f'
        } else if ft.is_symlink() {
            b'l'
        } else if ft.is_char_device() {
            b'c'
        } else if ft.is_block_device() {
            b'b'
        } else if ft.is_fifo() {
            b'p'
        } else {
            b's'
        };
        let (content, xattrs) = self.data(host, key, md, generation)?;
        let out = &mut self.out;
        put(out, b'P', rec_path.as_bytes());
        put(out, b'T', &[kind]);
        put(out, b'I', &[u8::from(include)]);
        put(out, b'M', &(md.mode() & 0o7777).to_le_bytes());
        match kind {
            b'f' => {
                put(out, b'C', content.as_deref().unwrap_or_default().as_bytes());
                if md.nlink() > 1 && include {
                    match self.links.get(&(md.dev(), md.ino())) {
                        Some(first) => put(out, b'H', first),
                        None => {
                            self.links
                                .insert((md.dev(), md.ino()), rec_path.as_bytes().to_vec());
                        }
                    }
                }
            }
            b'l' => {
                let target = std::fs::read_link(host).map_err(io_err("read link", host))?;
                put(out, b'L', target.as_os_str().as_bytes());
            }
            b'c' | b'b' => put(out, b'R', &md.rdev().to_le_bytes()),
            _ => {}
        }
        if let Some(x) = xattrs {
            put(out, b'X', x.as_bytes());
        }
        put(out, b'E', &[]);
        Ok(())
    }

    /// The content digest (regular files) and xattr digest of an entry,
    /// from the stat cache when its entry is current and trusted.
    fn data(
        &mut self,
        host: &Path,
        key: &str,
        md: &Metadata,
        generation: u64,
    ) -> Result<(Option<String>, Option<String>)> {
        let window = self.owner.racy_window_ns;
        if let Some(e) = self.cache.entries.get_mut(key) {
            if e.same_stat(md) && e.trusted(window) {
                e.seen = generation;
                return Ok((e.content.clone(), e.xattrs.clone()));
            }
        }
        let content = if md.file_type().is_file() {
            let (digest, stable) = self.read_content(host, md)?;
            if !stable {
                // Written to while being read: use it, remember nothing.
                return Ok((Some(digest), xattr_digest(host)));
            }
            Some(digest)
        } else {
            None
        };
        let xattrs = xattr_digest(host);
        if host_name_is_utf8(host) {
            let fresh = StatEntry {
                dev: md.dev(),
                ino: md.ino(),
                size: md.size(),
                mtime_ns: mtime_ns(md),
                ctime_ns: ctime_ns(md),
                mode: md.mode(),
                recorded_ns: self.now_ns,
                content: content.clone(),
                xattrs: xattrs.clone(),
                seen: generation,
            };
            self.cache.entries.insert(key.to_string(), fresh);
            self.cache.dirty = true;
        }
        Ok((content, xattrs))
    }

    /// Streams a regular file through SHA-256. Returns the hex digest and
    /// whether the file's stat tuple was the same before and after.
    fn read_content(&mut self, host: &Path, md: &Metadata) -> Result<(String, bool)> {
        #[cfg(test)]
        self.owner.reads.fetch_add(1, Ordering::SeqCst);
        // O_NOFOLLOW: a file swapped for a symlink is not followed out of
        // the context; O_NONBLOCK: one swapped for a FIFO does not hang.
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(host)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => HashError::Changed {
                    path: host.to_path_buf(),
                },
                _ => io_err("open", host)(e),
            })?;
        let before = f.metadata().map_err(io_err("stat", host))?;
        if !before.is_file() || before.dev() != md.dev() || before.ino() != md.ino() {
            return Err(HashError::Changed {
                path: host.to_path_buf(),
            });
        }
        if self.buf.is_empty() {
            self.buf = vec![0; READ_BUF];
        }
        let mut h = Sha256::new();
        loop {
            match f.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => h.update(&self.buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err("read", host)(e)),
            }
        }
        let after = f.metadata().map_err(io_err("stat", host))?;
        let stable = after.size() == md.size()
            && mtime_ns(&after) == mtime_ns(md)
            && ctime_ns(&after) == ctime_ns(md);
        Ok((hex::encode(h.finalize()), stable))
    }

    /// Drops cache entries below `base_key` that this walk should have
    /// visited but did not: the files are gone. Entries under pruned
    /// (ignored or excluded) directories are kept for other sources.
    fn forget_missing(&mut self, base_key: &str, pruned: &HashSet<String>, generation: u64) {
        let under_pruned = |key: &str| {
            if pruned.contains(key) {
                return true;
            }
            let mut k = key;
            while let Some(i) = k.rfind('/') {
                k = &k[..i];
                if pruned.contains(k) {
                    return true;
                }
            }
            false
        };
        let prefix = if base_key.is_empty() {
            String::new()
        } else {
            format!("{base_key}/")
        };
        let stale: Vec<String> = self
            .cache
            .entries
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .filter(|(k, e)| e.seen != generation && !k.is_empty() && !under_pruned(k))
            .map(|(k, _)| k.clone())
            .collect();
        if !stale.is_empty() {
            self.cache.dirty = true;
            for k in stale {
                self.cache.entries.remove(&k);
            }
        }
    }
}

/// Only paths whose every component is UTF-8 are cached (the state file is
/// JSON and a lossy key could alias another path).
fn host_name_is_utf8(host: &Path) -> bool {
    host.to_str().is_some()
}

/// A digest of an entry's extended attributes (sorted names and values),
/// which the copy carries over; `None` when there are none or the
/// filesystem has no xattrs. Never follows symlinks.
fn xattr_digest(host: &Path) -> Option<String> {
    let names = match xattr::list(host) {
        Ok(names) => names,
        Err(e) => {
            tracing::trace!(path = %host.display(), error = %e, "xattrs not listed");
            return None;
        }
    };
    let mut pairs: Vec<(OsString, Vec<u8>)> = Vec::new();
    for name in names {
        match xattr::get(host, &name) {
            Ok(Some(v)) => pairs.push((name, v)),
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(path = %host.display(), name = ?name, error = %e, "xattr not read");
            }
        }
    }
    if pairs.is_empty() {
        return None;
    }
    pairs.sort();
    let mut h = Sha256::new();
    for (name, value) in &pairs {
        put(&mut h, b'N', name.as_bytes());
        put(&mut h, b'V', value);
    }
    Some(hex::encode(h.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use tempfile::TempDir;

    /// A context directory and a state directory, with small helpers.
    struct Fixture {
        ctx: TempDir,
        state: TempDir,
    }

    impl Fixture {
        fn new(files: &[(&str, &str)]) -> Self {
            let f = Fixture {
                ctx: tempfile::tempdir().expect("temp context"),
                state: tempfile::tempdir().expect("temp state"),
            };
            for (path, content) in files {
                f.write(path, content);
            }
            f
        }

        fn path(&self, rel: &str) -> PathBuf {
            self.ctx.path().join(rel)
        }

        fn write(&self, rel: &str, content: &str) {
            let p = self.path(rel);
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir).expect("mkdir");
            }
            std::fs::write(&p, content).expect("write");
        }

        fn symlink(&self, rel: &str, target: &str) {
            std::os::unix::fs::symlink(target, self.path(rel)).expect("symlink");
        }

        /// A cache that trusts entries at once (no racy window), so that
        /// read counts are deterministic in freshly written trees.
        fn cache(&self) -> HashCache {
            HashCache::open(self.state.path()).with_racy_window(Duration::ZERO)
        }

        fn state_file(&self) -> PathBuf {
            let canon = std::fs::canonicalize(self.ctx.path()).expect("canonical context");
            self.cache().state_file(&canon)
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    /// Digest with only `.dockerignore` patterns.
    fn dig(c: &HashCache, f: &Fixture, src: &str, excludes: &[&str]) -> Digest {
        c.digest(f.ctx.path(), src, &strings(excludes), &[], &[])
            .expect("digest")
    }

    fn set_mtime(path: &Path, secs_ago: u64) {
        let t = SystemTime::now() - Duration::from_secs(secs_ago);
        std::fs::File::options()
            .write(true)
            .open(path)
            .expect("open for mtime")
            .set_modified(t)
            .expect("set mtime");
    }

    fn chmod(path: &Path, mode: u32) {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }

    #[test]
    fn hash_cache_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<HashCache>();
        assert_send_sync::<Arc<HashCache>>();
    }

    #[test]
    fn same_content_with_other_mtimes_gives_same_digest() {
        let f = Fixture::new(&[("a.txt", "hello"), ("dir/b.txt", "world")]);
        let d1 = dig(&f.cache(), &f, ".", &[]);
        set_mtime(&f.path("a.txt"), 3600);
        set_mtime(&f.path("dir/b.txt"), 7200);
        assert_eq!(dig(&f.cache(), &f, ".", &[]), d1);

        // The same tree written elsewhere (other inodes, times) agrees too.
        let g = Fixture::new(&[("dir/b.txt", "world"), ("a.txt", "hello")]);
        assert_eq!(dig(&g.cache(), &g, ".", &[]), d1);
    }

    #[test]
    fn content_change_changes_digest_even_with_same_size_and_mtime() {
        let f = Fixture::new(&[("a.txt", "hello"), ("dir/b.txt", "world")]);
        let c = f.cache();
        let d1 = dig(&c, &f, ".", &[]);
        let md = std::fs::metadata(f.path("a.txt")).expect("stat");
        f.write("a.txt", "HELLO");
        std::fs::File::options()
            .write(true)
            .open(f.path("a.txt"))
            .expect("open")
            .set_modified(md.modified().expect("mtime"))
            .expect("restore mtime");
        // ctime moved, so the warm cache re-reads the file.
        let d2 = dig(&c, &f, ".", &[]);
        assert_ne!(d1, d2);
        assert_eq!(dig(&f.cache(), &f, ".", &[]), d2);
    }

    #[test]
    fn mode_change_changes_digest() {
        let f = Fixture::new(&[("run.sh", "echo hi"), ("d/x", "x")]);
        let c = f.cache();
        let d1 = dig(&c, &f, ".", &[]);
        chmod(&f.path("run.sh"), 0o755);
        let d2 = dig(&c, &f, ".", &[]);
        assert_ne!(d1, d2);
        chmod(&f.path("d"), 0o700);
        assert_ne!(dig(&c, &f, ".", &[]), d2);
    }

    #[test]
    fn changes_to_ignored_or_excluded_files_keep_the_digest() {
        let f = Fixture::new(&[
            ("app.txt", "app"),
            ("debug.log", "1"),
            ("node_modules/m/index.js", "m"),
            ("src/tmp/scratch", "s"),
            ("src/main.go", "main"),
        ]);
        let c = f.cache();
        let ignore = ["*.log", "node_modules"];
        let d1 = dig(&c, &f, ".", &ignore);
        f.write("debug.log", "22");
        f.write("node_modules/m/index.js", "changed");
        f.write("node_modules/new.js", "new");
        assert_eq!(dig(&c, &f, ".", &ignore), d1);
        // Without the ignore file they count.
        assert_ne!(dig(&c, &f, ".", &[]), d1);

        // The op's exclude patterns are relative to the source.
        let by_op = |c: &HashCache| {
            c.digest(f.ctx.path(), "src", &[], &[], &strings(&["tmp"]))
                .expect("digest")
        };
        let d3 = by_op(&c);
        f.write("src/tmp/scratch", "changed");
        assert_eq!(by_op(&c), d3);
        f.write("src/main.go", "changed");
        assert_ne!(by_op(&c), d3);
    }

    #[test]
    fn include_patterns_select_below_the_source() {
        let f = Fixture::new(&[("src/a.go", "a"), ("src/b.md", "b"), ("src/x/c.go", "c")]);
        let c = f.cache();
        let go = |c: &HashCache| {
            c.digest(f.ctx.path(), "src", &[], &strings(&["*.go", "x"]), &[])
                .expect("digest")
        };
        let d1 = go(&c);
        f.write("src/b.md", "changed");
        assert_eq!(go(&c), d1);
        f.write("src/x/c.go", "changed");
        assert_ne!(go(&c), d1);
    }

    #[test]
    fn changes_outside_the_source_keep_the_digest() {
        let f = Fixture::new(&[("a.txt", "a"), ("dir/b.txt", "b"), ("other/c", "c")]);
        let c = f.cache();
        let d1 = dig(&c, &f, "dir/", &[]);
        f.write("a.txt", "changed");
        f.write("other/c", "changed");
        f.write("other/new", "new");
        assert_eq!(dig(&c, &f, "dir/", &[]), d1);
        assert_eq!(dig(&c, &f, "/dir", &[]), d1);
        f.write("dir/b.txt", "changed");
        assert_ne!(dig(&c, &f, "dir", &[]), d1);
    }

    #[test]
    fn wildcard_sources_hash_their_matches() {
        let f = Fixture::new(&[
            ("a.txt", "a"),
            ("b.go", "b"),
            ("dir/p/x", "px"),
            ("dir/q/x", "qx"),
            ("dir/q/y", "qy"),
        ]);
        let c = f.cache();
        let d1 = dig(&c, &f, "*.txt", &[]);
        f.write("b.go", "changed");
        assert_eq!(dig(&c, &f, "*.txt", &[]), d1);
        f.write("a.txt", "changed");
        let d2 = dig(&c, &f, "*.txt", &[]);
        assert_ne!(d2, d1);
        f.write("c.txt", "new match");
        let d3 = dig(&c, &f, "*.txt", &[]);
        assert_ne!(d3, d2);
        // An ignored match is invisible, as it is to the copy.
        assert_eq!(dig(&c, &f, "*.txt", &["c.txt"]), d2);

        let e1 = dig(&c, &f, "dir/*/x", &[]);
        f.write("dir/q/y", "changed");
        assert_eq!(dig(&c, &f, "dir/*/x", &[]), e1);
        f.write("dir/q/x", "changed");
        assert_ne!(dig(&c, &f, "dir/*/x", &[]), e1);

        // No match is stable and differs from a match.
        let none = dig(&c, &f, "*.rs", &[]);
        assert_eq!(dig(&f.cache(), &f, "*.rs", &[]), none);
        assert_ne!(none, d3);
    }

    #[test]
    fn missing_source_gives_a_stable_not_found_digest() {
        let f = Fixture::new(&[("a.txt", "")]);
        let c = f.cache();
        let d1 = dig(&c, &f, "missing.txt", &[]);
        assert_eq!(dig(&f.cache(), &f, "missing.txt", &[]), d1);
        assert_eq!(dig(&c, &f, "a.txt/below", &[]), d1);
        // An ignored source is not found either.
        assert_eq!(dig(&c, &f, "a.txt", &["a.txt"]), d1);
        assert_ne!(dig(&c, &f, "a.txt", &[]), d1);
        let gone = f.ctx.path().join("no-such-context");
        let g1 = c.digest(&gone, ".", &[], &[], &[]).expect("digest");
        assert_eq!(c.digest(&gone, ".", &[], &[], &[]).expect("digest"), g1);
    }

    #[test]
    fn symlinks_are_hashed_as_targets_and_never_leave_the_context() {
        let f = Fixture::new(&[("dir/a", "a"), ("real.txt", "real"), ("other", "o")]);
        f.symlink("dir/link", "../other");
        f.symlink("top", "real.txt");
        f.symlink("escape", "/etc/passwd");
        let c = f.cache();

        // Inside a copied tree a link is its target string.
        let d1 = dig(&c, &f, "dir", &[]);
        f.write("other", "changed");
        assert_eq!(dig(&c, &f, "dir", &[]), d1);
        std::fs::remove_file(f.path("dir/link")).expect("rm");
        f.symlink("dir/link", "../real.txt");
        assert_ne!(dig(&c, &f, "dir", &[]), d1);

        // A source that is a link may be followed by the copy: its target
        // counts too.
        let t1 = dig(&c, &f, "top", &[]);
        f.write("real.txt", "changed");
        assert_ne!(dig(&c, &f, "top", &[]), t1);

        // An absolute target is resolved inside the context, where
        // /etc/passwd does not exist; the host file is never read.
        c.take_reads();
        let e1 = dig(&c, &f, "escape", &[]);
        assert_eq!(c.take_reads(), 0);
        f.write("etc/passwd", "in context");
        assert_ne!(dig(&c, &f, "escape", &[]), e1);
    }

    #[test]
    fn symlink_loops_and_special_files_do_not_fail_the_digest() {
        let f = Fixture::new(&[("d/a", "a")]);
        f.symlink("x", "y");
        f.symlink("y", "x");
        let c = f.cache();
        let l1 = dig(&c, &f, "x", &[]);
        assert_eq!(dig(&c, &f, "x/below", &[]), dig(&c, &f, "y/below", &[]));
        assert_eq!(dig(&f.cache(), &f, "x", &[]), l1);

        let sock = f.path("d/sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind socket");
        c.take_reads();
        let s1 = dig(&c, &f, "d", &[]);
        assert_eq!(c.take_reads(), 1, "only the regular file is read");
        assert_eq!(dig(&c, &f, "d", &[]), s1);
    }

    #[test]
    fn hard_link_structure_counts() {
        let f = Fixture::new(&[("a", "same"), ("b", "same")]);
        let g = Fixture::new(&[("a", "same")]);
        std::fs::hard_link(g.path("a"), g.path("b")).expect("link");
        assert_ne!(dig(&f.cache(), &f, ".", &[]), dig(&g.cache(), &g, ".", &[]));
    }

    #[test]
    fn warm_calls_read_no_content() {
        let f = Fixture::new(&[("a", "1"), ("b", "2"), ("d/c", "3")]);
        let c = f.cache();
        let d1 = dig(&c, &f, ".", &[]);
        assert_eq!(c.take_reads(), 3);
        assert_eq!(dig(&c, &f, ".", &[]), d1);
        assert_eq!(c.take_reads(), 0);
        f.write("d/c", "4");
        assert_ne!(dig(&c, &f, ".", &[]), d1);
        assert_eq!(c.take_reads(), 1);

        // The saved cache serves a new process.
        c.save().expect("save");
        let c2 = f.cache();
        dig(&c2, &f, ".", &[]);
        assert_eq!(c2.take_reads(), 0);
    }

    #[test]
    fn racy_entries_are_reread_until_they_age() {
        let f = Fixture::new(&[("a", "1"), ("b", "2")]);
        let c = HashCache::open(f.state.path()).with_racy_window(Duration::from_millis(300));
        let d1 = dig(&c, &f, ".", &[]);
        assert_eq!(c.take_reads(), 2);
        // Recorded too close to the files' mtime: not trusted.
        assert_eq!(dig(&c, &f, ".", &[]), d1);
        assert_eq!(c.take_reads(), 2);
        std::thread::sleep(Duration::from_millis(400));
        // Re-read once more, now recorded well after the last change.
        assert_eq!(dig(&c, &f, ".", &[]), d1);
        assert_eq!(c.take_reads(), 2);
        assert_eq!(dig(&c, &f, ".", &[]), d1);
        assert_eq!(c.take_reads(), 0);
    }

    #[test]
    fn default_window_distrusts_fresh_files() {
        let f = Fixture::new(&[("a", "1")]);
        let c = HashCache::open(f.state.path());
        dig(&c, &f, ".", &[]);
        dig(&c, &f, ".", &[]);
        assert_eq!(c.take_reads(), 2);
    }

    #[test]
    fn deleted_or_corrupt_cache_file_gives_same_digest() {
        let f = Fixture::new(&[("a", "1"), ("d/b", "2")]);
        let c = f.cache();
        let d1 = dig(&c, &f, ".", &[]);
        c.save().expect("save");
        let file = f.state_file();
        assert!(file.exists(), "{}", file.display());

        std::fs::remove_file(&file).expect("rm cache");
        let c2 = f.cache();
        assert_eq!(dig(&c2, &f, ".", &[]), d1);
        assert_eq!(c2.take_reads(), 2);
        c2.save().expect("save");

        for garbage in [
            &b"{not json"[..],
            b"",
            br#"{"version":1,"context":"/elsewhere","entries":{}}"#,
            br#"{"version":99,"context":"/","entries":{}}"#,
        ] {
            std::fs::write(&file, garbage).expect("corrupt");
            let c3 = f.cache();
            assert_eq!(dig(&c3, &f, ".", &[]), d1);
            assert_eq!(c3.take_reads(), 2);
            c3.save().expect("rewrite");
            let c4 = f.cache();
            assert_eq!(dig(&c4, &f, ".", &[]), d1);
            assert_eq!(c4.take_reads(), 0, "rebuilt file is used");
        }
    }

    #[test]
    fn save_is_a_no_op_when_clean_and_drops_vanished_files() {
        let f = Fixture::new(&[("a", "1"), ("d/b", "2")]);
        let c = f.cache();
        dig(&c, &f, ".", &[]);
        c.save().expect("save");
        let file = f.state_file();
        std::fs::remove_file(&file).expect("rm");
        dig(&c, &f, ".", &[]);
        c.save().expect("save");
        assert!(!file.exists(), "clean cache is not rewritten");

        std::fs::remove_file(f.path("d/b")).expect("rm");
        dig(&c, &f, ".", &[]);
        c.save().expect("save");
        let state: StateFile =
            serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("parse");
        let keys: Vec<_> = state.entries.keys().cloned().collect();
        assert_eq!(keys, ["", "a", "d"]);
    }

    #[test]
    fn twenty_thousand_files_warm_reads_nothing() {
        let f = Fixture::new(&[]);
        for d in 0..200 {
            let dir = f.path(&format!("d{d:03}"));
            std::fs::create_dir(&dir).expect("mkdir");
            for i in 0..100 {
                std::fs::write(dir.join(format!("f{i:03}")), format!("{d}/{i}")).expect("write");
            }
        }
        let c = f.cache();
        let d1 = dig(&c, &f, ".", &[]);
        assert_eq!(c.take_reads(), 20_000);
        assert_eq!(dig(&c, &f, ".", &[]), d1);
        assert_eq!(c.take_reads(), 0);
        c.save().expect("save");
        let c2 = f.cache();
        assert_eq!(dig(&c2, &f, ".", &[]), d1);
        assert_eq!(c2.take_reads(), 0);
    }

    #[test]
    fn bad_patterns_and_error_messages() {
        let f = Fixture::new(&[("a", "1")]);
        let err = f
            .cache()
            .digest(f.ctx.path(), ".", &strings(&["[abc"]), &[], &[])
            .expect_err("bad pattern");
        assert_eq!(err.to_string(), "invalid dockerignore pattern");
        let err = HashError::Changed {
            path: PathBuf::from("/ctx/a"),
        };
        assert_eq!(err.to_string(), "/ctx/a changed while hashing");
    }
}
