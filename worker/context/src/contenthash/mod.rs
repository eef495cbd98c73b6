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
//! The selection is the copy's own: the hasher is given the copy's
//! [`CopySelection`] and resolves it through [`crate::select::select`] and
//! filters below each source with [`crate::select::EntryFilter`], exactly
//! as the copy does, so `follow_symlink` and `allow_wildcard` select the
//! same entries for both.
//!
//! Reading 400 MB on every no-op rebuild is what the [`HashCache`] avoids:
//! a stat cache (module `state`) maps each path's (dev, ino, size, mtime, ctime,
//! mode) to its content and xattr digests, so a warm call only stats the
//! tree. As in git, an entry recorded within [`RACY_WINDOW`] of the file's
//! mtime/ctime is not trusted (a write in the same timestamp tick would go
//! unseen) and is re-read until it has aged. The walk itself is in
//! module `tree`.
//!
//! Architecture invariant: this module reads the context and its own state
//! file only; it never follows a symlink out of the context and never
//! writes into it.

mod state;
mod tree;

#[cfg(test)]
mod tests;

use crate::ignore::PatternMatcher;
use crate::path::PathError;
use crate::select::{CopySelection, PatternError};
use kiln_types::Digest;
use sha2::{Digest as _, Sha256};
use state::ContextCache;
use std::collections::HashMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
#[cfg(test)]
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tree::TreeHasher;

/// How long after a file's last change a recorded stat tuple stays
/// untrusted (the racy-git problem).
pub const RACY_WINDOW: Duration = Duration::from_secs(2);

/// Domain separator of the digest; bump it when the record layout changes.
/// v2: the selection is the copy's own (no "both readings" records).
const DIGEST_DOMAIN: &[u8] = b"kiln.contenthash.v2\0";

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
    /// Resolving a path exceeded 255 symlinks (a source that loops is
    /// hashed as a marker instead; this is any other resolution).
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
        source: crate::ignore::IgnoreError,
    },
    /// The stat cache could not be written.
    #[error("failed to save stat cache {path}")]
    Save {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl From<PatternError> for HashError {
    fn from(e: PatternError) -> Self {
        HashError::Pattern {
            which: e.which,
            source: e.source,
        }
    }
}

impl From<PathError> for HashError {
    fn from(e: PathError) -> Self {
        match e {
            PathError::Io { op, path, source } => HashError::Io { op, path, source },
            PathError::SymlinkLoop { path } => HashError::SymlinkLoop { path },
        }
    }
}

pub type Result<T, E = HashError> = std::result::Result<T, E>;

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> HashError + 'a {
    move |source| HashError::Io {
        op,
        path: path.to_path_buf(),
        source,
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
    /// Where the caller's own context trees live ([`HashCache::with_owned_root`]).
    owned_root: Option<PathBuf>,
    /// Number of regular files whose content was read (test-only probe).
    #[cfg(test)]
    reads: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for HashCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashCache")
            .field("state_dir", &self.state_dir)
            .field("racy_window_ns", &self.racy_window_ns)
            .finish_non_exhaustive()
    }
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
            owned_root: None,
            #[cfg(test)]
            reads: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// The same cache, told that the context directories below `root`
    /// belong to the caller (kilnd's kept contexts): only the caller
    /// writes them, never while a build reads them, and never changes a
    /// file in place (a changed file is a new inode). A record of such a
    /// tree is trusted as soon as it is made (no [`RACY_WINDOW`]: nothing
    /// writes during the hash), and its files may be hard-linked into
    /// snapshots ([`HashCache::owns`], [`HashCache::relinked`]).
    pub fn with_owned_root(mut self, root: &Path) -> Self {
        self.owned_root = Some(std::fs::canonicalize(root).unwrap_or_else(|_| root.to_path_buf()));
        self
    }

    /// Whether `dir` is one of the caller's own trees (below the root of
    /// [`HashCache::with_owned_root`]).
    pub fn owns(&self, dir: &Path) -> bool {
        let Some(root) = &self.owned_root else {
            return false;
        };
        std::fs::canonicalize(dir).is_ok_and(|d| d != *root && d.starts_with(root))
    }

    /// The racy window for records of the canonical `context`.
    fn window_for(&self, context: &Path) -> i64 {
        match &self.owned_root {
            Some(root) if context != root && context.starts_with(root) => i64::MIN,
            _ => self.racy_window_ns,
        }
    }

    /// Records the content digests of files the caller just wrote into
    /// one of its own trees ([`HashCache::owns`]; kilnd's receiver hashes
    /// what arrives): `files` holds each file's path relative to
    /// `context` (`/`-separated) and the SHA-256 of its content. The
    /// next hash of the tree finds them by their stat and reads nothing.
    /// Anything else (a tree the caller does not own, a path that is not
    /// a regular file now) is left out.
    pub fn record_received(&self, context: &Path, files: &[(PathBuf, [u8; 32])]) {
        use std::os::unix::fs::MetadataExt;
        let Ok(context) = std::fs::canonicalize(context) else {
            return;
        };
        if files.is_empty() || self.window_for(&context) != i64::MIN {
            return;
        }
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        let cache = self.context_cache(&context);
        let mut cache = lock(&cache);
        cache.load();
        for (rel, digest) in files {
            let host = context.join(rel);
            let Ok(md) = std::fs::symlink_metadata(&host) else {
                continue;
            };
            // Only UTF-8 paths are cached, as the tree hasher caches them
            // (the state file is JSON and a lossy key could alias another).
            let Some(key) = rel.to_str() else {
                continue;
            };
            if !md.file_type().is_file() || key.is_empty() || rel.is_absolute() {
                continue;
            }
            let entry = state::StatEntry {
                dev: md.dev(),
                ino: md.ino(),
                size: md.size(),
                mtime_ns: state::mtime_ns(&md),
                ctime_ns: state::ctime_ns(&md),
                mode: md.mode(),
                recorded_ns: now_ns,
                content: Some(state::Sha(*digest)),
                xattrs: tree::xattr_digest(&host).map(Box::new),
                seen: 0,
            };
            cache.entries.insert(key.to_string(), entry);
            cache.dirty = true;
        }
    }

    /// Tells the cache that the files at `paths` (relative to `context`,
    /// `/`-separated) were just hard-linked elsewhere by the caller: a
    /// link moves an inode's ctime, and the record of a file whose stat
    /// is otherwise the recorded one takes the new ctime instead of being
    /// read again. Only for the caller's own trees ([`HashCache::owns`]);
    /// anything else is left as it is.
    pub fn relinked<'a>(&self, context: &Path, paths: impl IntoIterator<Item = &'a str>) {
        use std::os::unix::fs::MetadataExt;
        let Ok(context) = std::fs::canonicalize(context) else {
            return;
        };
        if self.window_for(&context) != i64::MIN {
            return;
        }
        let cache = self.context_cache(&context);
        let mut cache = lock(&cache);
        cache.load();
        let mut moved = false;
        for rel in paths {
            let Some(e) = cache.entries.get_mut(rel) else {
                continue;
            };
            let Ok(md) = std::fs::symlink_metadata(context.join(rel)) else {
                continue;
            };
            let same_but_ctime = e.dev == md.dev()
                && e.ino == md.ino()
                && e.size == md.size()
                && e.mtime_ns == state::mtime_ns(&md)
                && e.mode == md.mode();
            if same_but_ctime && e.ctime_ns != state::ctime_ns(&md) {
                e.ctime_ns = state::ctime_ns(&md);
                moved = true;
            }
        }
        if moved {
            cache.dirty = true;
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
                Arc::new(Mutex::new(ContextCache::new(
                    context,
                    self.state_file(context),
                )))
            })
            .clone()
    }

    /// Digest of what a copy with `selection` would read from `context`,
    /// with `excludes` (.dockerignore patterns, same semantics as
    /// [`PatternMatcher`]) hiding entries. The sources are resolved as the
    /// copy resolves them; a missing (or ignored) source, or a wildcard
    /// without matches, gives a stable marker digest (the copy itself
    /// reports the error).
    pub fn digest(
        &self,
        context: &Path,
        selection: &CopySelection,
        excludes: &[String],
    ) -> Result<Digest, HashError> {
        let hide = PatternMatcher::new(excludes).map_err(|source| HashError::Pattern {
            which: "dockerignore",
            source,
        })?;
        let mut out = Sha256::new();
        out.update(DIGEST_DOMAIN);
        let context = match std::fs::canonicalize(context) {
            Ok(c) if c.is_dir() => c,
            _ => {
                // No context, nothing to copy: the copy fails the same way.
                tree::put(&mut out, b'!', b"context not found");
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
            cache: &mut cache,
            now_ns,
            out,
            links: HashMap::new(),
            buf: Vec::new(),
        };
        hasher.selection(selection, Some(&hide))?;
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

/// A regular file's content digest as the stat cache knows it, with the
/// stat tuple it holds for: [`KnownFile::matches`] says whether a file's
/// current metadata is still that tuple.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownFile {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    mode: u32,
    /// Hex SHA-256 of the content.
    pub content: String,
}

impl KnownFile {
    /// Whether `md` (of the same path) is still the recorded stat tuple.
    pub fn matches(&self, md: &std::fs::Metadata) -> bool {
        use std::os::unix::fs::MetadataExt;
        self.dev == md.dev()
            && self.ino == md.ino()
            && self.size == md.size()
            && self.mtime_ns == state::mtime_ns(md)
            && self.ctime_ns == state::ctime_ns(md)
            && self.mode == md.mode()
    }
}

impl HashCache {
    /// The regular files of `context` without extended attributes whose
    /// content digest is as good as a cache key's: recorded by the last
    /// [`HashCache::digest`] of this context, or trusted (aged past
    /// [`RACY_WINDOW`]). Keyed by `/`-separated path relative to the
    /// context. A caller must still check [`KnownFile::matches`] against
    /// the file it reads. Empty for a context never hashed.
    pub fn known_files(&self, context: &Path) -> HashMap<String, KnownFile> {
        let Ok(context) = std::fs::canonicalize(context) else {
            return HashMap::new();
        };
        let window = self.window_for(&context);
        let cache = self.context_cache(&context);
        let mut cache = lock(&cache);
        cache.load();
        let generation = cache.generation;
        cache
            .entries
            .iter()
            .filter(|(_, e)| {
                e.xattrs.is_none()
                    && (e.mode & libc::S_IFMT) == libc::S_IFREG
                    && ((generation > 0 && e.seen == generation) || e.trusted(window))
            })
            .filter_map(|(k, e)| {
                Some((
                    k.clone(),
                    KnownFile {
                        dev: e.dev,
                        ino: e.ino,
                        size: e.size,
                        mtime_ns: e.mtime_ns,
                        ctime_ns: e.ctime_ns,
                        mode: e.mode,
                        content: e.content?.to_hex_string(),
                    },
                ))
            })
            .collect()
    }
}
