//! One digest computation: the selected sources of a copy, walked in name
//! order, one length-prefixed record per entry the copy would take.

use super::state::{ctime_ns, mtime_ns, ContextCache, Sha, StatEntry};
use super::{io_err, HashCache, HashError, Result};
use crate::ignore::PatternMatcher;
use crate::path::{rel_string, PathError};
use crate::select::{select, CopySelection, EntryFilter, Selection};
use sha2::{Digest as _, Sha256};
use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fs::Metadata;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;
#[cfg(test)]
use std::sync::atomic::Ordering;

/// Read buffer for file contents: large files are streamed through it.
const READ_BUF: usize = 256 * 1024;

/// Writes one length-prefixed field, so that no two record streams can
/// collide by shifting bytes between fields.
pub(super) fn put(h: &mut Sha256, tag: u8, bytes: &[u8]) {
    h.update([tag]);
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// One digest computation over a locked context cache.
pub(super) struct TreeHasher<'a> {
    pub(super) owner: &'a HashCache,
    pub(super) root: &'a Path,
    pub(super) cache: &'a mut ContextCache,
    pub(super) now_ns: i64,
    pub(super) out: Sha256,
    /// (dev, ino) of multiply-linked files -> the first record path, so
    /// hard-link structure (which the copy keeps) is hashed without inode
    /// numbers.
    pub(super) links: HashMap<(u64, u64), Vec<u8>>,
    pub(super) buf: Vec<u8>,
}

impl TreeHasher<'_> {
    /// Hashes what the copy selects: the outcome of [`select`] (a marker
    /// when the copy would fail or copy nothing) and each source's tree,
    /// under the name it takes at the destination.
    pub(super) fn selection(
        &mut self,
        sel: &CopySelection,
        hide: Option<&PatternMatcher>,
    ) -> Result<()> {
        let hide = hide.filter(|m| !m.is_empty());
        let filter = EntryFilter::new(sel, hide)?;
        let (sources, from_wildcard) = match select(self.root, sel, hide) {
            Ok(Selection::Found {
                sources,
                from_wildcard,
            }) => (sources, from_wildcard),
            Ok(Selection::NotFound) => {
                put(&mut self.out, b'!', b"not found");
                return Ok(());
            }
            Ok(Selection::NoMatches) => {
                put(&mut self.out, b'!', b"no matches");
                return Ok(());
            }
            // The copy reports that error; the cache key need not.
            Err(PathError::SymlinkLoop { .. }) => {
                put(&mut self.out, b'!', b"symlink loop");
                return Ok(());
            }
            Err(e) => return Err(e.into()),
        };
        put(&mut self.out, b'S', &[u8::from(from_wildcard)]);
        for s in sources {
            let name = s.name.as_ref().map(|n| n.as_bytes()).unwrap_or_default();
            put(&mut self.out, b'W', name);
            self.tree(&s.resolved.rel, &filter)?;
        }
        Ok(())
    }

    /// Hashes the entry at `rel` and, for a directory, everything below it
    /// that the copy would take: `filter` is the [`EntryFilter`] the copy
    /// applies too. Symlinks below the source are recorded as links, never
    /// followed (the copy recreates them as links).
    fn tree(&mut self, rel: &[OsString], filter: &EntryFilter<'_>) -> Result<()> {
        let mut host = self.root.to_path_buf();
        host.extend(rel);
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
            let (include, descend) = filter.decide(&ign_rel, &pat_rel, is_dir);
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
                let hex = content.map(|c| c.hex());
                put(out, b'C', hex.as_ref().map_or(&[][..], |h| &h[..]));
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
            put(out, b'X', &x.hex());
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
    ) -> Result<(Option<Sha>, Option<Sha>)> {
        let window = self.owner.window_for(self.root);
        if let Some(e) = self.cache.entries.get_mut(key) {
            if e.same_stat(md) && e.trusted(window) {
                e.seen = generation;
                return Ok((e.content, e.xattrs.as_deref().copied()));
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
                content,
                xattrs: xattrs.map(Box::new),
                seen: generation,
            };
            self.cache.entries.insert(key.to_string(), fresh);
            self.cache.dirty = true;
        }
        Ok((content, xattrs))
    }

    /// Streams a regular file through SHA-256. Returns the digest and
    /// whether the file's stat tuple was the same before and after.
    fn read_content(&mut self, host: &Path, md: &Metadata) -> Result<(Sha, bool)> {
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
        Ok((Sha(h.finalize().into()), stable))
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
pub(super) fn xattr_digest(host: &Path) -> Option<Sha> {
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
    Some(Sha(h.finalize().into()))
}
