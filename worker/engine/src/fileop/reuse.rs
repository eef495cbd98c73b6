//! An incremental `COPY` from the build context: files whose content and
//! metadata are what the previous result of the same copy holds are not
//! copied again but hard-linked from that committed snapshot's own
//! directory into the new snapshot's upper directory.
//!
//! Committed snapshots are immutable and a link shares the inode, so:
//! a file is linked only where the copy would create a *new* file (nothing
//! at the destination yet) with exactly the old inode's owner, mode, size,
//! mtime (nanoseconds) and content digest, and without xattrs; links are
//! made while the overlay is *not* mounted (after the copy, before the
//! diff), never through it; and nothing in the same file op writes after
//! them. A later step changes such a file only through overlayfs, whose
//! copy-up writes a new inode.
//!
//! The content digests are the context hash cache's (the same ones the
//! copy's cache key covers); the previous result's are its manifest
//! ([`Manifest`]), which the engine keeps as a content blob referenced by
//! that snapshot. This module only knows host directories.

use super::meta;
use super::{io_err, FileOpError, Result};
use kiln_context::KnownFile;
use std::collections::HashMap;
use std::fs::Metadata;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Destination path (relative to the copy's root, `/`-separated) -> hex
/// SHA-256 of the content of the regular file the copy put there.
pub type Manifest = HashMap<String, String>;

/// What an incremental copy may reuse.
#[derive(Debug, Default)]
pub struct CopyReuse {
    /// Content digests of the source files, by path relative to the
    /// source root ([`kiln_context::HashCache::known_files`]).
    pub known: HashMap<String, KnownFile>,
    /// The previous result of the same copy: the committed snapshot's own
    /// directory and its manifest.
    pub previous: Option<(PathBuf, Manifest)>,
}

/// A file the copy left to be linked from the previous result.
#[derive(Debug, Clone)]
pub struct Deferred {
    /// The source file (for a fallback copy).
    pub src: PathBuf,
    /// The destination relative to the copy's root.
    pub rel: PathBuf,
    /// The same file in the previous result's directory.
    pub old: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    /// The copy set the times of the file's parent directory (one it
    /// copied, or created at the op's timestamp), so placing the file
    /// keeps them; any other parent takes the time of the placement, as a
    /// file created in it through the mount gives it (BuildKit's copy
    /// leaves such a directory's times to the kernel).
    pub keep_parent_times: bool,
}

/// What an incremental copy did besides copying.
#[derive(Debug, Default)]
pub struct CopyOutcome {
    /// The new result's manifest: every copied (or deferred) regular file
    /// whose content digest is known.
    pub manifest: Manifest,
    /// Files to link with [`place`] once the destination is unmounted.
    pub deferred: Vec<Deferred>,
}

/// Encodes a manifest: one `<hex digest> <path>\n` line per file, sorted by
/// path (paths never hold a newline, see `record`).
pub fn encode_manifest(m: &Manifest) -> Vec<u8> {
    let mut lines: Vec<_> = m.iter().collect();
    lines.sort();
    let mut out = Vec::with_capacity(lines.len() * 100);
    for (path, digest) in lines {
        out.extend_from_slice(digest.as_bytes());
        out.push(b' ');
        out.extend_from_slice(path.as_bytes());
        out.push(b'\n');
    }
    out
}

/// Decodes [`encode_manifest`]'s form; malformed lines are skipped (a
/// skipped file is copied, never wrongly linked).
pub fn decode_manifest(data: &[u8]) -> Manifest {
    let Ok(text) = std::str::from_utf8(data) else {
        return Manifest::new();
    };
    text.lines()
        .filter_map(|l| {
            let (d, p) = l.split_once(' ')?;
            let hex_ok = d.len() == 64
                && d.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
            (hex_ok && !p.is_empty()).then(|| (p.to_string(), d.to_string()))
        })
        .collect()
}

/// The manifest key of a destination: `None` for a path a manifest line
/// cannot hold (not UTF-8, or with a newline).
pub(super) fn record(dest_root: &Path, dst: &Path) -> Option<String> {
    let rel = dst.strip_prefix(dest_root).ok()?.to_str()?;
    (!rel.is_empty() && !rel.contains('\n')).then(|| rel.to_string())
}

/// The intended metadata of a file the copy writes.
pub(super) struct Intended {
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
}

/// Whether `old` is a regular file with exactly the intended metadata and
/// `size`.
fn same_inode_meta(old: &Metadata, want: &Intended, size: u64) -> bool {
    old.file_type().is_file()
        && old.uid() == want.uid
        && old.gid() == want.gid
        && old.mode() & 0o7777 == want.mode
        && old.size() == size
        && old.mtime() * 1_000_000_000 + old.mtime_nsec() == want.mtime_ns
}

impl CopyReuse {
    /// The source's content digest, if the hash cache's record is still
    /// the file's (`md` is the source's current metadata).
    pub(super) fn content_of(&self, src_rel: &str, md: &Metadata) -> Option<&str> {
        if md.nlink() > 1 || !md.file_type().is_file() {
            return None;
        }
        let k = self.known.get(src_rel)?;
        k.matches(md).then_some(k.content.as_str())
    }

    /// The previous result's file to link for destination `key` (content
    /// digest `content`), if it holds exactly what the copy would write.
    pub(super) fn linkable(
        &self,
        key: &str,
        content: &str,
        want: &Intended,
        size: u64,
    ) -> Option<PathBuf> {
        let (dir, manifest) = self.previous.as_ref()?;
        if manifest.get(key).map(String::as_str) != Some(content) {
            return None;
        }
        let old = dir.join(key);
        let md = std::fs::symlink_metadata(&old).ok()?;
        same_inode_meta(&md, want, size).then_some(old)
    }
}

/// The committed layer directories a `COPY --from` reads, topmost first
/// (those of the mounted view of its source): a regular file the copy
/// would write exactly as a layer holds it is linked from that layer
/// (deferred and placed like a file of an incremental copy) instead of
/// copied. The same rules hold: committed layers are immutable, and the
/// link is made only where the copy would create a new file.
#[derive(Debug, Default)]
pub struct LayerLinks {
    pub layers: Vec<PathBuf>,
}

impl LayerLinks {
    /// The layer file the view shows at `rel` (overlayfs's lookup: the
    /// topmost layer holding it, unless an opaque or non-directory
    /// ancestor in a layer above hides the lower ones), if it is a regular
    /// file without xattrs holding exactly `want`'s metadata and `size`.
    pub(super) fn linkable(&self, rel: &Path, want: &Intended, size: u64) -> Option<PathBuf> {
        for dir in &self.layers {
            let p = dir.join(rel);
            match std::fs::symlink_metadata(&p) {
                Ok(md) => {
                    // overlayfs keeps its own state in xattrs (origin,
                    // metacopy): such a file is never linked elsewhere.
                    let bare = xattr::list(&p).is_ok_and(|mut n| n.next().is_none());
                    return (bare && same_inode_meta(&md, want, size)).then_some(p);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    if hides_lower(dir, rel) {
                        return None;
                    }
                }
                Err(_) => return None,
            }
        }
        None
    }
}

/// Whether an ancestor directory of `rel` in the layer `dir` hides the
/// layers below it: it is opaque, or is not a directory (a whiteout).
fn hides_lower(dir: &Path, rel: &Path) -> bool {
    let mut p = dir.to_path_buf();
    for c in rel.parent().into_iter().flat_map(Path::components) {
        p.push(c);
        match std::fs::symlink_metadata(&p) {
            Ok(md) if md.is_dir() => {
                let opaque = ["trusted.overlay.opaque", "user.overlay.opaque"]
                    .iter()
                    .any(|n| xattr::get(&p, n).ok().flatten().is_some());
                if opaque {
                    return true;
                }
            }
            Ok(_) => return true,
            Err(_) => return false,
        }
    }
    false
}

/// Puts deferred files below `base`: hard links from the previous result
/// with `link`, else (or when a link fails, e.g. too many links) fresh
/// copies of the source with the intended metadata. A parent directory
/// whose times the copy set keeps them ([`Deferred::keep_parent_times`]).
/// Call it on the unmounted upper directory to link; a copy may go
/// through a mount.
pub fn place(base: &Path, items: &[Deferred], link: bool) -> Result<()> {
    let mut parents: Vec<(PathBuf, Metadata)> = Vec::new();
    let mut seen: std::collections::HashSet<PathBuf> = std::collections::HashSet::new();
    for it in items {
        let dst = base.join(&it.rel);
        if let Some(parent) = dst.parent().filter(|_| it.keep_parent_times) {
            if seen.insert(parent.to_path_buf()) {
                let md = std::fs::symlink_metadata(parent).map_err(io_err("stat", base, parent))?;
                parents.push((parent.to_path_buf(), md));
            }
        }
        let linked = link && std::fs::hard_link(&it.old, &dst).is_ok();
        if !linked {
            copy_fresh(base, it, &dst)?;
        }
    }
    for (dir, md) in parents {
        meta::set_times(
            base,
            &dir,
            md.atime() * 1_000_000_000 + md.atime_nsec(),
            md.mtime() * 1_000_000_000 + md.mtime_nsec(),
        )?;
    }
    Ok(())
}

/// Writes a new inode at `dst` with the source's bytes and the intended
/// metadata (the same calls as the copy's own file copy).
fn copy_fresh(base: &Path, it: &Deferred, dst: &Path) -> Result<()> {
    let mut from = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&it.src)
        .map_err(|e| FileOpError::Io {
            op: "open",
            path: it.src.display().to_string(),
            source: e,
        })?;
    let mut to = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dst)
        .map_err(io_err("create", base, dst))?;
    std::io::copy(&mut from, &mut to).map_err(io_err("copy to", base, dst))?;
    to.flush().map_err(io_err("copy to", base, dst))?;
    meta::fchown(base, dst, &to, it.uid, it.gid)?;
    meta::fchmod(base, dst, &to, it.mode)?;
    meta::futimens(base, dst, &to, it.atime_ns, it.mtime_ns)?;
    Ok(())
}

/// Splits off the deferred files whose parent directory is not in `upper`
/// (an existing lower directory the copy never touched): they cannot be
/// linked there and are returned to be copied through the mount.
pub fn not_in_upper(upper: &Path, items: &mut Vec<Deferred>) -> Vec<Deferred> {
    let (keep, rest): (Vec<_>, Vec<_>) = std::mem::take(items).into_iter().partition(|it| {
        it.rel
            .parent()
            .map(|p| upper.join(p))
            .and_then(|p| std::fs::symlink_metadata(p).ok())
            .is_some_and(|m| m.is_dir())
    });
    *items = keep;
    rest
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_context::{CopySelection, HashCache};
    use kiln_solver::FileCopy;

    fn write(root: &Path, rel: &str, data: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, data).expect("write");
    }

    fn ino(root: &Path, rel: &str) -> u64 {
        std::fs::symlink_metadata(root.join(rel))
            .expect("stat")
            .ino()
    }

    fn known(cache: &HashCache, ctx: &Path) -> HashMap<String, KnownFile> {
        cache
            .digest(ctx, &CopySelection::all(), &[])
            .expect("digest");
        cache.known_files(ctx)
    }

    /// A copy by `op` of the context `files` into `one`, then, after
    /// `change` edits the context, its rerun into `two` with the first as
    /// the previous result.
    struct Rerun {
        base: tempfile::TempDir,
        ctx: PathBuf,
        cache: HashCache,
        one: PathBuf,
        two: PathBuf,
        first: CopyOutcome,
        second: CopyOutcome,
    }

    fn rerun(op: &FileCopy, files: &[(&str, &str)], change: impl FnOnce(&Path)) -> Rerun {
        let base = tempfile::tempdir().expect("tempdir");
        let (ctx, one, two) = (
            base.path().join("ctx"),
            base.path().join("one"),
            base.path().join("two"),
        );
        for d in [&one, &two] {
            std::fs::create_dir(d).expect("mkdir");
        }
        // One fixed mtime for every file: a copy links a file only where
        // the previous one has its metadata, and files written a tick
        // apart would not (matches sharing a destination compare so).
        for (rel, data) in files {
            write(&ctx, rel, data);
            meta::set_times(&ctx, &ctx.join(rel), 1_000_000_000, 1_000_000_000).expect("times");
        }
        let cache = HashCache::open(&base.path().join("state"));
        let reuse = CopyReuse {
            known: known(&cache, &ctx),
            previous: None,
        };
        let first = super::super::copy_reusing(&ctx, &one, &one, op, None, &reuse).expect("copy");
        change(&ctx);
        let reuse = CopyReuse {
            known: known(&cache, &ctx),
            previous: Some((one.clone(), first.manifest.clone())),
        };
        let second = super::super::copy_reusing(&ctx, &two, &two, op, None, &reuse).expect("copy");
        Rerun {
            base,
            ctx,
            cache,
            one,
            two,
            first,
            second,
        }
    }

    /// A placed file's parent keeps the times the copy gave it, and only
    /// those: a directory the copy did not stamp takes the placement's
    /// time, as a file created in it would give it.
    #[test]
    fn a_parent_keeps_only_the_times_the_copy_set() {
        let base = tempfile::tempdir().expect("tempdir");
        let (old, up) = (base.path().join("old"), base.path().join("up"));
        for d in ["kept", "bumped"] {
            std::fs::create_dir_all(up.join(d)).expect("mkdir");
            meta::set_times(&up, &up.join(d), 1_000_000_000, 1_000_000_000).expect("times");
        }
        write(&old, "f", "x");
        let item = |dir: &str, keep: bool| Deferred {
            src: old.join("f"),
            rel: PathBuf::from(dir).join("f"),
            old: old.join("f"),
            uid: 0,
            gid: 0,
            mode: 0o644,
            atime_ns: 0,
            mtime_ns: 0,
            keep_parent_times: keep,
        };
        place(&up, &[item("kept", true), item("bumped", false)], true).expect("placed");
        let mtime = |d: &str| std::fs::metadata(up.join(d)).expect("stat").mtime();
        assert_eq!(mtime("kept"), 1);
        assert!(mtime("bumped") > 1_000_000, "{}", mtime("bumped"));
        assert_eq!(ino(&up, "kept/f"), ino(&old, "f"));
    }

    /// Wildcard matches with one destination (`*/VERSION` of two
    /// directories with the same content): on a rerun, the first match's
    /// link gives way to the second's, as a copy overwrites, so one file
    /// is placed there and the manifest holds its content.
    #[test]
    fn a_rerun_of_matches_with_one_destination_places_one_file() {
        if !kiln_types::testing::needs_root("the copy owns files to 0:0") {
            return;
        }
        let op = FileCopy {
            src: "*/VERSION".into(),
            dest: "/app/".into(),
            follow_symlink: true,
            create_dest_path: true,
            allow_wildcard: true,
            ..FileCopy::default()
        };
        let r = rerun(&op, &[("a/VERSION", "same"), ("b/VERSION", "same")], |_| {});
        assert_eq!(r.first.manifest.len(), 1, "{:?}", r.first.manifest);
        let deferred: Vec<_> = r.second.deferred.iter().map(|d| d.rel.clone()).collect();
        assert_eq!(deferred, [PathBuf::from("app/VERSION")]);
        assert_eq!(r.second.manifest, r.first.manifest);
        place(&r.two, &r.second.deferred, true).expect("place");
        assert_eq!(ino(&r.one, "app/VERSION"), ino(&r.two, "app/VERSION"));
    }

    #[test]
    fn a_rerun_links_unchanged_files_and_copies_the_changed_one() {
        if !kiln_types::testing::needs_root("the copy owns files to 0:0") {
            return;
        }
        let op = FileCopy {
            src: ".".into(),
            dest: "/app/".into(),
            follow_symlink: true,
            dir_copy_contents: true,
            create_dest_path: true,
            allow_wildcard: true,
            ..FileCopy::default()
        };
        let files = [("a.txt", "aaa"), ("d/b.txt", "bbb"), ("c.txt", "ccc")];
        let r = rerun(&op, &files, |ctx| write(ctx, "c.txt", "CCC"));
        let (one, two, out1, out2) = (r.one.clone(), r.two.clone(), &r.first, &r.second);
        let (base, ctx, cache) = (r.base.path(), r.ctx.clone(), r.cache);
        assert!(out1.deferred.is_empty(), "{:?}", out1.deferred);
        assert_eq!(out1.manifest.len(), 3, "{:?}", out1.manifest);
        // The manifest survives its encoding.
        assert_eq!(
            decode_manifest(&encode_manifest(&out1.manifest)),
            out1.manifest
        );
        let d_times = |root: &Path| {
            let m = std::fs::symlink_metadata(root.join("app/d")).expect("stat");
            (m.mtime(), m.mtime_nsec())
        };
        let mut deferred: Vec<_> = out2.deferred.iter().map(|d| d.rel.clone()).collect();
        deferred.sort();
        assert_eq!(
            deferred,
            [PathBuf::from("app/a.txt"), PathBuf::from("app/d/b.txt")]
        );
        assert_eq!(
            std::fs::read_to_string(two.join("app/c.txt")).expect("c"),
            "CCC"
        );
        assert_ne!(out2.manifest["app/c.txt"], out1.manifest["app/c.txt"]);
        let before = d_times(&two);
        place(&two, &out2.deferred, true).expect("place");
        assert_eq!(ino(&one, "app/a.txt"), ino(&two, "app/a.txt"));
        assert_eq!(ino(&one, "app/d/b.txt"), ino(&two, "app/d/b.txt"));
        assert_ne!(ino(&one, "app/c.txt"), ino(&two, "app/c.txt"));
        assert_eq!(d_times(&two), before, "linking kept the directory's times");
        assert_eq!(
            std::fs::read_to_string(two.join("app/d/b.txt")).expect("b"),
            "bbb"
        );

        // A file whose previous copy has other metadata is copied, and a
        // fallback copy (no link) writes a new inode with the intended
        // metadata.
        let three = base.join("three");
        std::fs::create_dir(&three).expect("mkdir");
        std::fs::set_permissions(
            one.join("app/a.txt"),
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("chmod");
        let third = CopyReuse {
            known: known(&cache, &ctx),
            previous: Some((one.clone(), out1.manifest.clone())),
        };
        let out3 =
            super::super::copy_reusing(&ctx, &three, &three, &op, None, &third).expect("copy");
        let deferred: Vec<_> = out3.deferred.iter().map(|d| d.rel.clone()).collect();
        assert_eq!(deferred, [PathBuf::from("app/d/b.txt")]);
        place(&three, &out3.deferred, false).expect("place");
        assert_ne!(ino(&one, "app/d/b.txt"), ino(&three, "app/d/b.txt"));
        let a = std::fs::symlink_metadata(three.join("app/d/b.txt")).expect("stat");
        let b = std::fs::symlink_metadata(one.join("app/d/b.txt")).expect("stat");
        assert_eq!(
            (
                a.mode(),
                a.uid(),
                a.gid(),
                a.mtime(),
                a.mtime_nsec(),
                a.size()
            ),
            (
                b.mode(),
                b.uid(),
                b.gid(),
                b.mtime(),
                b.mtime_nsec(),
                b.size()
            )
        );
    }
}
