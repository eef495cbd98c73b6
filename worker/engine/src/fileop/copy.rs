//! `COPY`/`ADD` of local trees: BuildKit's `docopy` over fsutil's `Copy`.

use super::reuse::{self, CopyOutcome, CopyReuse, Deferred, LayerLinks};
use super::root::{self, DirAttrs};
use super::{io_err, meta, owner, unpack, FileOpError, Result};
use kiln_context::ignore::{clean_path, PatternMatcher};
use kiln_context::select::{select, CopySelection, EntryFilter, Selection};
use kiln_context::walk::sorted_names;
use kiln_solver::chmod::SymbolicMode;
use kiln_solver::FileCopy;
use std::collections::{HashMap, HashSet};
use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Copies `op.src` from `src_root` to `op.dest` in `dest_root`, with docker
/// `COPY`/`ADD` semantics. Without `--chown` every written entry is owned by
/// 0:0, which is what `COPY` from the build context gives; use
/// [`copy_keep_owner`] for sources whose ownership must survive (`COPY
/// --from` a stage or image). `--chown` names are looked up in
/// `cwd_owner_root` (normally `dest_root`). `src_excludes` (the
/// `.dockerignore` matcher, relative to `src_root`) hides paths: they are
/// neither copied nor matched by wildcards.
pub fn copy(
    src_root: &Path,
    dest_root: &Path,
    cwd_owner_root: &Path,
    op: &FileCopy,
    src_excludes: Option<&PatternMatcher>,
) -> Result<()> {
    run(
        src_root,
        dest_root,
        cwd_owner_root,
        op,
        src_excludes,
        false,
        Defer::default(),
    )
}

/// Like [`copy`], but without `--chown` entries keep the uid/gid they have
/// in `src_root` (BuildKit's behaviour, right for `COPY --from`).
pub fn copy_keep_owner(
    src_root: &Path,
    dest_root: &Path,
    cwd_owner_root: &Path,
    op: &FileCopy,
    src_excludes: Option<&PatternMatcher>,
) -> Result<()> {
    run(
        src_root,
        dest_root,
        cwd_owner_root,
        op,
        src_excludes,
        true,
        Defer::default(),
    )
}

/// Like [`copy_keep_owner`] (`COPY --from`; with `keep_owner` false, like
/// [`copy`]), but a regular file that one of the directories in `links`
/// (the source's committed layers, or a context tree only its owner
/// writes, never in place) holds exactly as the copy would write it is not
/// written: it is returned, to be hard-linked from there by
/// [`super::reuse::place`] once `dest_root` is unmounted.
pub fn copy_linking(
    src_root: &Path,
    dest_root: &Path,
    cwd_owner_root: &Path,
    op: &FileCopy,
    src_excludes: Option<&PatternMatcher>,
    keep_owner: bool,
    links: &LayerLinks,
) -> Result<Vec<Deferred>> {
    let mut deferred = Vec::new();
    run(
        src_root,
        dest_root,
        cwd_owner_root,
        op,
        src_excludes,
        keep_owner,
        Defer {
            reuse: None,
            links: Some((links, &mut deferred)),
        },
    )?;
    Ok(deferred)
}

/// What `op` selects from its source root, as a typed request: the same
/// one the context hasher is given, so a cache key covers what is copied.
pub fn selection(op: &FileCopy) -> CopySelection {
    CopySelection {
        src: op.src.clone(),
        follow_symlink: op.follow_symlink,
        allow_wildcard: op.allow_wildcard,
        allow_empty_wildcard: op.allow_empty_wildcard,
        include_patterns: op.include_patterns.clone(),
        exclude_patterns: op.exclude_patterns.clone(),
    }
}

fn not_found(src: &str) -> FileOpError {
    FileOpError::NotFound {
        path: clean_path(&format!("/{src}")),
    }
}

/// Like [`copy`] (files from the context, owned by 0:0 without
/// `--chown`), but incremental: a regular file that the previous result
/// in `reuse` holds with the same content and metadata is not written
/// but returned in [`CopyOutcome::deferred`], to be hard-linked by
/// [`super::reuse::place`] once `dest_root` is unmounted. The outcome's
/// manifest describes the new result for the next copy.
pub fn copy_reusing(
    src_root: &Path,
    dest_root: &Path,
    cwd_owner_root: &Path,
    op: &FileCopy,
    src_excludes: Option<&PatternMatcher>,
    reuse: &CopyReuse,
) -> Result<CopyOutcome> {
    let mut outcome = CopyOutcome::default();
    run(
        src_root,
        dest_root,
        cwd_owner_root,
        op,
        src_excludes,
        false,
        Defer {
            reuse: Some((reuse, &mut outcome)),
            links: None,
        },
    )?;
    Ok(outcome)
}

/// Where a copy may leave files to be linked instead of written: from
/// the previous result of an incremental copy, or from the source's layers.
#[derive(Default)]
struct Defer<'a> {
    reuse: Option<(&'a CopyReuse, &'a mut CopyOutcome)>,
    links: Option<(&'a LayerLinks, &'a mut Vec<Deferred>)>,
}

fn run(
    src_root: &Path,
    dest_root: &Path,
    owner_root: &Path,
    op: &FileCopy,
    src_excludes: Option<&PatternMatcher>,
    keep_owner: bool,
    defer: Defer<'_>,
) -> Result<()> {
    let Defer { reuse, links } = defer;
    let chown = owner::resolve(owner_root, op.owner.as_ref());
    let symbolic = match (&op.mode, &op.mode_str) {
        (None, Some(s)) => {
            Some(SymbolicMode::parse(s).map_err(|_| FileOpError::InvalidMode { mode: s.clone() })?)
        }
        _ => None,
    };
    let hide = src_excludes.filter(|m| !m.is_empty());
    let sel = selection(op);
    let filter =
        EntryFilter::new(&sel, hide).map_err(|e| FileOpError::Pattern { source: e.source })?;
    let mut copier = Copier {
        src_root,
        dest_root,
        chown,
        keep_owner,
        mode: op.mode,
        symbolic,
        timestamp: op.timestamp,
        filter,
        inodes: HashMap::new(),
        pending: Vec::new(),
        reuse,
        links,
        linked_inodes: HashMap::new(),
        deferred: HashSet::new(),
        stamped: Vec::new(),
    };

    // Each required path must exist (and not be hidden) on its own: an
    // include pattern that matches nothing would otherwise copy nothing.
    for required in &op.required_paths {
        let probe = CopySelection {
            src: required.clone(),
            follow_symlink: false,
            ..CopySelection::all()
        };
        match select(src_root, &probe, hide).map_err(root::path_err(src_root))? {
            Selection::Found { .. } => {}
            Selection::NoMatches | Selection::NotFound => return Err(not_found(required)),
        }
    }
    let sources = match select(src_root, &sel, hide).map_err(root::path_err(src_root))? {
        Selection::Found { sources, .. } => sources,
        Selection::NoMatches if op.allow_empty_wildcard => return Ok(()),
        Selection::NoMatches | Selection::NotFound => return Err(not_found(&op.src)),
    };
    let dest_is_dir = root::has_dir_suffix(&op.dest);
    let dest = Path::new(&op.dest);
    let dst = root::resolve(dest_root, dest, true, None)?;
    if !op.create_dest_path && std::fs::symlink_metadata(dst.parent(dest_root).host).is_err() {
        return Err(FileOpError::DestParentMissing {
            path: clean_path(&format!("/{}", op.dest)),
        });
    }
    let dir_attrs = DirAttrs {
        // fsutil creates directories with the octal --chmod or 0755; a
        // symbolic one applies to copied entries only.
        mode: op.mode.unwrap_or(0o755),
        owner: chown,
        timestamp: op.timestamp,
    };
    let ensure = if dest_is_dir {
        dst.clone()
    } else {
        dst.parent(dest_root)
    };
    // The first source makes the destination, as in BuildKit: an archive
    // it unpacks there gets a 0755 directory whatever --chmod says (the
    // mode is for the copied entries, which an unpack keeps as archived).
    let first_unpacks = op.attempt_unpack_docker_compatibility
        && sources
            .first()
            .is_some_and(|s| unpack::is_archive(&s.resolved.host));
    let top_attrs = if first_unpacks {
        DirAttrs {
            mode: 0o755,
            ..dir_attrs
        }
    } else {
        dir_attrs
    };
    let mut created = root::mkdir_all(dest_root, &ensure, top_attrs)?;

    for src in &sources {
        if op.attempt_unpack_docker_compatibility && unpack::is_archive(&src.resolved.host) {
            created.extend(unpack::extract(
                src_root,
                &src.resolved.host,
                dest_root,
                &dst,
                chown,
                op.timestamp,
            )?);
            continue;
        }
        let src_md = std::fs::symlink_metadata(&src.resolved.host).map_err(io_err(
            "stat",
            src_root,
            &src.resolved.host,
        ))?;
        let dest_md = std::fs::symlink_metadata(&dst.host).ok();
        let src_is_dir = src_md.is_dir();
        let mut target = dst.clone();
        let into_dir = match &dest_md {
            Some(d) => (!op.dir_copy_contents && src_is_dir) || (!src_is_dir && d.is_dir()),
            None => false,
        };
        if into_dir {
            if let Some(name) = &src.name {
                target.host.push(name);
                target.rel.push(name.clone());
            }
        }
        let parent = if op.dir_copy_contents && src_is_dir && dest_md.is_none() {
            target.clone()
        } else {
            target.parent(dest_root)
        };
        created.extend(root::mkdir_all(dest_root, &parent, dir_attrs)?);
        if op.timestamp.is_some() {
            copier.stamped.clone_from(&created);
        }
        let ign_rel = src.resolved.rel_str();
        copier.copy_entry(&src.resolved.host, &ign_rel, "", &target.host, false)?;
    }
    root::restamp(dest_root, &created, op.timestamp)
}

/// A source directory whose destination is created only when something
/// inside it is copied (include patterns like `a/*/c`).
struct Pending {
    src: PathBuf,
    dst: PathBuf,
    copied: bool,
    created_late: bool,
}

struct Copier<'a> {
    src_root: &'a Path,
    dest_root: &'a Path,
    chown: Option<(u32, u32)>,
    keep_owner: bool,
    mode: Option<u32>,
    /// `--chmod` in symbolic form, applied to each entry's own mode.
    symbolic: Option<SymbolicMode>,
    timestamp: Option<i64>,
    /// `.dockerignore` and the op's include/exclude patterns.
    filter: EntryFilter<'a>,
    /// (device, inode) of multiply-linked source files -> first copy.
    inodes: HashMap<(u64, u64), PathBuf>,
    pending: Vec<Pending>,
    /// An incremental copy's inputs and what it records.
    reuse: Option<(&'a CopyReuse, &'a mut CopyOutcome)>,
    /// The source's layers to link from, and the files left to link.
    links: Option<(&'a LayerLinks, &'a mut Vec<Deferred>)>,
    /// (device, inode) of multiply-linked source files left to link ->
    /// (source, destination): written after all if the copy meets the
    /// inode again, so the copy's own hard links stay its own.
    linked_inodes: HashMap<(u64, u64), (PathBuf, PathBuf)>,
    /// Destinations of the files deferred to be linked: a later source
    /// for one of them (a wildcard's matches can share a destination)
    /// replaces it, as a later copy overwrites an earlier one.
    deferred: HashSet<PathBuf>,
    /// Directories this copy created whose times it sets afterwards (at
    /// the op's timestamp, [`root::restamp`]).
    stamped: Vec<PathBuf>,
}

/// Whether the copy sets the times of `dst`'s parent: a directory it
/// copies (its times applied once its entries are written) or one it
/// created to be restamped (`stamped`).
fn parent_stamped(pending: &[Pending], stamped: &[PathBuf], dst: &Path) -> bool {
    let Some(parent) = dst.parent() else {
        return false;
    };
    pending
        .iter()
        .any(|p| p.dst == parent && (p.copied || p.created_late))
        || stamped.iter().any(|d| d == parent)
}

impl Copier<'_> {
    /// Copies one entry (fsutil's `copier.copy`). `ign_rel` is the path
    /// relative to the source root (for `.dockerignore`), `pat_rel` relative
    /// to the copied source (for the op's include/exclude patterns; empty
    /// for the source itself, which they never filter).
    fn copy_entry(
        &mut self,
        src: &Path,
        ign_rel: &str,
        pat_rel: &str,
        dst: &Path,
        overwrite_meta: bool,
    ) -> Result<()> {
        let md = std::fs::symlink_metadata(src).map_err(io_err("stat", self.src_root, src))?;
        let is_dir = md.is_dir();
        let (include, descend) = self.filter.decide(ign_rel, pat_rel, is_dir);
        if !include && (!is_dir || !descend) {
            return Ok(());
        }
        if include {
            self.create_pending()?;
        }

        let ft = md.file_type();
        if !is_dir {
            self.forget_deferred(dst);
        }
        if is_dir {
            let created = if include {
                self.copy_dir_only(dst)?
            } else {
                false
            };
            self.pending.push(Pending {
                src: src.to_path_buf(),
                dst: dst.to_path_buf(),
                copied: include,
                created_late: false,
            });
            let result = self.copy_children(src, ign_rel, pat_rel, dst);
            let done = self.pending.pop();
            result?;
            if include && (overwrite_meta || created) {
                self.apply_info(src, &md, dst)?;
            } else if include {
                // An existing top-level destination keeps owner and mode
                // but takes the source's (or the forced) timestamps.
                self.apply_times(&md, dst)?;
            } else if done.is_some_and(|p| p.created_late) {
                self.apply_times(&md, dst)?;
            }
            return Ok(());
        }

        if ft.is_file() {
            let key = (md.dev(), md.ino());
            if md.nlink() > 1 {
                self.write_linked(key)?;
            }
            let first = if md.nlink() > 1 {
                self.inodes.get(&key).cloned()
            } else {
                None
            };
            match first {
                Some(first) => {
                    self.ensure_empty_file_target(dst)?;
                    std::fs::hard_link(&first, dst).map_err(io_err(
                        "create hard link",
                        self.dest_root,
                        dst,
                    ))?;
                }
                None => {
                    if self.reuse.is_some() {
                        // A file with other links is always copied here
                        // (`CopyReuse::content_of`): its later names link
                        // to this copy, as in a plain copy.
                        self.copy_or_defer(src, ign_rel, &md, dst)?;
                        if md.nlink() > 1 {
                            self.inodes.insert(key, dst.to_path_buf());
                        }
                        return Ok(());
                    }
                    if self.defer_link(src, &md, dst) {
                        if md.nlink() > 1 {
                            self.linked_inodes
                                .insert(key, (src.to_path_buf(), dst.to_path_buf()));
                        }
                        return Ok(());
                    }
                    self.copy_file(src, &md, dst)?;
                    if md.nlink() > 1 {
                        self.inodes.insert(key, dst.to_path_buf());
                    }
                    // Owner, mode, times and xattrs were set on the open file.
                    return Ok(());
                }
            }
        } else if ft.is_symlink() {
            self.ensure_empty_file_target(dst)?;
            let link = std::fs::read_link(src).map_err(io_err("read link", self.src_root, src))?;
            std::os::unix::fs::symlink(&link, dst).map_err(io_err(
                "create symlink",
                self.dest_root,
                dst,
            ))?;
        } else if ft.is_char_device() || ft.is_block_device() || ft.is_fifo() {
            self.ensure_empty_file_target(dst)?;
            let kind = nix::sys::stat::SFlag::from_bits_truncate(md.mode() & libc::S_IFMT);
            let perm = nix::sys::stat::Mode::from_bits_truncate(md.mode() & 0o7777);
            nix::sys::stat::mknod(dst, kind, perm, md.rdev())
                .map_err(|e| io_err("create device", self.dest_root, dst)(e.into()))?;
        } else {
            // Sockets (and anything unknown) become empty regular files,
            // as with BuildKit's context transfer.
            self.ensure_empty_file_target(dst)?;
            self.create_file(dst)?;
        }
        self.apply_info(src, &md, dst)
    }

    fn copy_children(
        &mut self,
        src: &Path,
        ign_rel: &str,
        pat_rel: &str,
        dst: &Path,
    ) -> Result<()> {
        for name in sorted_names(src).map_err(root::path_err(self.src_root))? {
            let lossy = name.to_string_lossy();
            let join = |base: &str| {
                if base.is_empty() {
                    lossy.to_string()
                } else {
                    format!("{base}/{lossy}")
                }
            };
            let (child_ign, child_pat) = (join(ign_rel), join(pat_rel));
            self.copy_entry(
                &src.join(&name),
                &child_ign,
                &child_pat,
                &dst.join(&name),
                true,
            )?;
        }
        Ok(())
    }

    /// Creates the destinations of directories skipped so far because only
    /// something inside them is included.
    fn create_pending(&mut self) -> Result<()> {
        for i in 0..self.pending.len() {
            if self.pending[i].copied {
                continue;
            }
            let (src, dst) = (self.pending[i].src.clone(), self.pending[i].dst.clone());
            let md =
                std::fs::symlink_metadata(&src).map_err(io_err("stat", self.src_root, &src))?;
            if self.copy_dir_only(&dst)? {
                self.apply_info(&src, &md, &dst)?;
                self.pending[i].created_late = true;
            }
            self.pending[i].copied = true;
        }
        Ok(())
    }

    /// Makes `dst` a directory; true if it was created. An existing
    /// non-directory is an error, as in fsutil.
    fn copy_dir_only(&self, dst: &Path) -> Result<bool> {
        match std::fs::symlink_metadata(dst) {
            Ok(m) if m.is_dir() => Ok(false),
            Ok(_) => Err(FileOpError::NotADirectory {
                path: root::display(self.dest_root, dst),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir(dst).map_err(io_err("mkdir", self.dest_root, dst))?;
                Ok(true)
            }
            Err(e) => Err(io_err("stat", self.dest_root, dst)(e)),
        }
    }

    /// Removes whatever non-directory is at `dst` (never following it).
    fn ensure_empty_file_target(&self, dst: &Path) -> Result<()> {
        match std::fs::symlink_metadata(dst) {
            Ok(m) if m.is_dir() => Err(FileOpError::IsADirectory {
                path: root::display(self.dest_root, dst),
            }),
            Ok(_) => std::fs::remove_file(dst).map_err(io_err("remove", self.dest_root, dst)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("stat", self.dest_root, dst)(e)),
        }
    }

    fn create_file(&self, dst: &Path) -> Result<std::fs::File> {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(dst)
            .map_err(io_err("create", self.dest_root, dst))
    }

    /// Copies a regular file and gives the copy its owner, mode, times and
    /// xattrs (as [`Self::apply_info`] does) through the open descriptors,
    /// so the destination path is resolved once, not once per call.
    fn copy_file(&self, src: &Path, md: &Metadata, dst: &Path) -> Result<std::fs::File> {
        let mut from = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(src)
            .map_err(io_err("open", self.src_root, src))?;
        // Usually nothing is there yet; otherwise make room and retry.
        let mut to = match self.create_file(dst) {
            Ok(f) => f,
            Err(FileOpError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                self.ensure_empty_file_target(dst)?;
                self.create_file(dst)?
            }
            Err(e) => return Err(e),
        };
        std::io::copy(&mut from, &mut to).map_err(io_err("copy to", self.dest_root, dst))?;
        let (uid, gid) = self.owner_of(md);
        meta::fchown(self.dest_root, dst, &to, uid, gid)?;
        let mode = self.mode_of(md);
        meta::fchmod(self.dest_root, dst, &to, mode)?;
        let (atime, mtime) = self.times_of(md);
        meta::futimens(self.dest_root, dst, &to, atime, mtime)?;
        meta::copy_fd_xattrs(&from, &to, dst);
        Ok(from)
    }

    /// A regular file of an incremental copy: deferred when the previous
    /// result holds it as the copy would write it, else copied; recorded
    /// in the new manifest when its content digest is known and the source
    /// did not change while it was copied.
    fn copy_or_defer(
        &mut self,
        src: &Path,
        src_rel: &str,
        md: &Metadata,
        dst: &Path,
    ) -> Result<()> {
        let content = match &self.reuse {
            Some((r, _)) => r.content_of(src_rel, md).map(str::to_string),
            None => None,
        };
        let key = reuse::record(self.dest_root, dst);
        let (Some(content), Some(key)) = (content, key) else {
            self.copy_file(src, md, dst)?;
            return Ok(());
        };
        let (uid, gid) = self.owner_of(md);
        let (atime_ns, mtime_ns) = self.times_of(md);
        let want = reuse::Intended {
            uid,
            gid,
            mode: self.mode.unwrap_or(md.mode()) & 0o7777,
            atime_ns,
            mtime_ns,
        };
        let old = match &self.reuse {
            Some((r, _)) => r.linkable(&key, &content, &want, md.size()),
            None => None,
        };
        // Only where the copy would create a new file: never replace
        // (or link over) what the parent chain has there.
        let old = old.filter(|_| {
            matches!(std::fs::symlink_metadata(dst), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
        });
        if let Some(old) = old {
            if let (Some((_, out)), Ok(rel)) =
                (self.reuse.as_mut(), dst.strip_prefix(self.dest_root))
            {
                let keep_parent_times = parent_stamped(&self.pending, &self.stamped, dst);
                self.deferred.insert(dst.to_path_buf());
                out.deferred.push(Deferred {
                    src: src.to_path_buf(),
                    rel: rel.to_path_buf(),
                    old,
                    uid: want.uid,
                    gid: want.gid,
                    mode: want.mode,
                    atime_ns: want.atime_ns,
                    mtime_ns: want.mtime_ns,
                    keep_parent_times,
                });
                out.manifest.insert(key, content);
                return Ok(());
            }
        }
        let from = self.copy_file(src, md, dst)?;
        let unchanged = from.metadata().is_ok_and(|after| {
            self.reuse
                .as_ref()
                .and_then(|(r, _)| r.known.get(src_rel))
                .is_some_and(|k| k.matches(&after))
        });
        if let (true, Some((_, out))) = (unchanged, self.reuse.as_mut()) {
            out.manifest.insert(key, content);
        }
        Ok(())
    }

    /// A regular file of a linking copy: deferred when a layer of the
    /// source holds it exactly as the copy would write it (and nothing is
    /// at the destination yet).
    fn defer_link(&mut self, src: &Path, md: &Metadata, dst: &Path) -> bool {
        let (uid, gid) = self.owner_of(md);
        let (atime_ns, mtime_ns) = self.times_of(md);
        let want = reuse::Intended {
            uid,
            gid,
            mode: self.mode_of(md),
            atime_ns,
            mtime_ns,
        };
        let (Some((links, out)), Ok(rel), Ok(dst_rel)) = (
            self.links.as_mut(),
            src.strip_prefix(self.src_root),
            dst.strip_prefix(self.dest_root),
        ) else {
            return false;
        };
        let free = matches!(std::fs::symlink_metadata(dst), Err(e) if e.kind() == std::io::ErrorKind::NotFound);
        let Some(old) = free
            .then(|| links.linkable(rel, &want, md.size()))
            .flatten()
        else {
            return false;
        };
        let keep_parent_times = parent_stamped(&self.pending, &self.stamped, dst);
        self.deferred.insert(dst.to_path_buf());
        out.push(Deferred {
            src: src.to_path_buf(),
            rel: dst_rel.to_path_buf(),
            old,
            uid,
            gid,
            mode: want.mode,
            atime_ns,
            mtime_ns,
            keep_parent_times,
        });
        true
    }

    /// Drops what an earlier source of this copy left for `dst`: the file
    /// deferred there, if any, and an incremental copy's record of its
    /// content (what is written there now comes later in the copy and
    /// wins, and records itself).
    fn forget_deferred(&mut self, dst: &Path) {
        let deferred = self.deferred.remove(dst);
        let rel = dst.strip_prefix(self.dest_root).unwrap_or(dst);
        if let Some((_, out)) = self.reuse.as_mut() {
            if let Some(key) = reuse::record(self.dest_root, dst) {
                out.manifest.remove(&key);
            }
            if deferred {
                out.deferred.retain(|d| d.rel != rel);
            }
        }
        if !deferred {
            return;
        }
        if let Some((_, out)) = self.links.as_mut() {
            out.retain(|d| d.rel != rel);
        }
        self.linked_inodes.retain(|_, (_, d)| d != dst);
    }

    /// Writes the file left to link for source inode `key`, if any: the
    /// copy met another name of it, which must become a hard link to this
    /// copy's own file, as a copy without links gives.
    fn write_linked(&mut self, key: (u64, u64)) -> Result<()> {
        let Some((src, dst)) = self.linked_inodes.remove(&key) else {
            return Ok(());
        };
        self.deferred.remove(&dst);
        if let Some((_, out)) = self.links.as_mut() {
            let rel = dst
                .strip_prefix(self.dest_root)
                .unwrap_or(&dst)
                .to_path_buf();
            out.retain(|d| d.rel != rel);
        }
        let md = std::fs::symlink_metadata(&src).map_err(io_err("stat", self.src_root, &src))?;
        self.copy_file(&src, &md, &dst)?;
        self.inodes.insert(key, dst);
        Ok(())
    }

    /// The permission bits a written entry gets: `--chmod` (octal, or
    /// symbolic over the source's mode), else the source's.
    fn mode_of(&self, md: &Metadata) -> u32 {
        match (&self.mode, &self.symbolic) {
            (Some(m), _) => *m & 0o7777,
            (None, Some(s)) => s.apply(md.mode(), md.is_dir()),
            (None, None) => md.mode() & 0o7777,
        }
    }

    /// The owner a written entry gets.
    fn owner_of(&self, md: &Metadata) -> (u32, u32) {
        match self.chown {
            Some(ids) => ids,
            None if self.keep_owner => (md.uid(), md.gid()),
            None => (0, 0),
        }
    }

    /// The (atime, mtime) in nanoseconds a written entry gets.
    fn times_of(&self, md: &Metadata) -> (i64, i64) {
        match self.timestamp {
            Some(ts) => (ts, ts),
            None => (
                md.atime() * 1_000_000_000 + md.atime_nsec(),
                md.mtime() * 1_000_000_000 + md.mtime_nsec(),
            ),
        }
    }

    /// Owner, mode, times and xattrs of a written entry (fsutil's
    /// `copyFileInfo` + `copyXAttrs`). Owner first: chown clears setuid bits.
    fn apply_info(&self, src: &Path, md: &Metadata, dst: &Path) -> Result<()> {
        let (uid, gid) = self.owner_of(md);
        meta::lchown(self.dest_root, dst, uid, gid)?;
        if !md.file_type().is_symlink() {
            meta::chmod(self.dest_root, dst, self.mode_of(md))?;
        }
        self.apply_times(md, dst)?;
        meta::copy_xattrs(src, dst);
        Ok(())
    }

    fn apply_times(&self, md: &Metadata, dst: &Path) -> Result<()> {
        let (atime, mtime) = self.times_of(md);
        meta::set_times(self.dest_root, dst, atime, mtime)
    }
}
