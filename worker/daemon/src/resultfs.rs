//! Reading a gateway result's files for LLBBridge's `ReadFile`, `ReadDir`
//! and `StatFile`, over the result's read-only root (BuildKit's
//! `cache/util` ReadFile/ReadDir/StatFile).
//!
//! Every path goes through the one clamped resolver
//! ([`kiln_context::path::resolve`], BuildKit's `fs.RootPath`): symlinks,
//! the final one included, are followed inside the root and `..` or an
//! absolute target never leaves it. Entries are described by the one fsutil
//! stat rule ([`kiln_session::fsutil::stat_of`]) and a `ReadDir` include
//! pattern by the one copy filter ([`kiln_context::EntryFilter`]). Errors
//! name the path as the client asked for it, never the host path.

use kiln_context::{CopySelection, EntryFilter, PathError};
use kiln_proto::fsutil::Stat;
use kiln_session::fsutil::{stat_of, FsutilError};
use kiln_snapshot::origin::{LayerOrigin, LinkKey};
use std::collections::HashMap;
use std::ffi::OsString;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use tonic::{Code, Status};

/// A part of a file: `length` bytes from `offset` (fewer at the end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileRange {
    pub offset: i64,
    pub length: i64,
}

/// Errors of reading a result's files.
#[derive(Debug, thiserror::Error)]
pub enum ResultFsError {
    /// Nothing at the path (after resolving it inside the root).
    #[error("{op} {path}: no such file or directory")]
    NotFound { op: &'static str, path: String },
    /// `ReadFile` of a directory, device, ...
    #[error("{path} is not a regular file")]
    NotRegular { path: String },
    /// `ReadDir` of something that is not a directory.
    #[error("walk {path}: not a directory")]
    NotDirectory { path: String },
    /// A negative offset or length.
    #[error("invalid range of {path}: offset {offset}, length {length}")]
    InvalidRange {
        path: String,
        offset: i64,
        length: i64,
    },
    /// The include pattern does not compile.
    #[error("invalid include pattern {pattern:?}")]
    Pattern {
        pattern: String,
        #[source]
        source: kiln_context::select::PatternError,
    },
    /// The path cannot be resolved (a symlink loop, an unreadable link).
    #[error("cannot resolve {path}")]
    Resolve {
        path: String,
        #[source]
        source: PathError,
    },
    /// An entry's stat cannot be built.
    #[error("cannot stat {path}")]
    Stat {
        path: String,
        #[source]
        source: FsutilError,
    },
    /// Any other file system error.
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl ResultFsError {
    fn code(&self) -> Code {
        match self {
            ResultFsError::NotFound { .. } => Code::NotFound,
            ResultFsError::NotRegular { .. } | ResultFsError::NotDirectory { .. } => {
                Code::FailedPrecondition
            }
            ResultFsError::InvalidRange { .. } | ResultFsError::Pattern { .. } => {
                Code::InvalidArgument
            }
            ResultFsError::Resolve { .. }
            | ResultFsError::Stat { .. }
            | ResultFsError::Io { .. } => Code::Unknown,
        }
    }
}

impl From<ResultFsError> for Status {
    /// The error's code, and its whole cause chain as the message.
    fn from(e: ResultFsError) -> Status {
        let mut msg = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            msg.push_str(": ");
            msg.push_str(&c.to_string());
            cause = c.source();
        }
        Status::new(e.code(), msg)
    }
}

type Result<T, E = ResultFsError> = std::result::Result<T, E>;

/// `path` resolved inside `root`, every symlink followed and clamped.
fn resolve(root: &Path, path: &str) -> Result<(PathBuf, Vec<u8>)> {
    let r = kiln_context::path::resolve(root, Path::new(path), true, None).map_err(|source| {
        ResultFsError::Resolve {
            path: path.to_string(),
            source,
        }
    })?;
    // The name's bytes, as `read_dir` lists it.
    let base = r
        .rel
        .last()
        .map(|n| std::ffi::OsStr::new(n).as_encoded_bytes().to_vec())
        .unwrap_or_else(|| b"/".to_vec());
    Ok((r.host, base))
}

/// Maps an IO error on the entry the client named.
fn io_err<'a>(
    op: &'static str,
    path: &'a str,
) -> impl FnOnce(std::io::Error) -> ResultFsError + 'a {
    move |source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            ResultFsError::NotFound {
                op,
                path: path.to_string(),
            }
        } else {
            ResultFsError::Io {
                op,
                path: path.to_string(),
                source,
            }
        }
    }
}

/// The content of the regular file at `path`, or the part `range` names.
pub fn read_file(root: &Path, path: &str, range: Option<FileRange>) -> Result<Vec<u8>> {
    let (host, _) = resolve(root, path)?;
    // Every link is resolved already; one found now is refused.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&host)
        .map_err(io_err("open", path))?;
    let md = f.metadata().map_err(io_err("stat", path))?;
    if !md.is_file() {
        return Err(ResultFsError::NotRegular {
            path: path.to_string(),
        });
    }
    let mut out = Vec::new();
    match range {
        None => {
            f.read_to_end(&mut out).map_err(io_err("read", path))?;
        }
        Some(r) => {
            let (Ok(offset), Ok(length)) = (u64::try_from(r.offset), u64::try_from(r.length))
            else {
                return Err(ResultFsError::InvalidRange {
                    path: path.to_string(),
                    offset: r.offset,
                    length: r.length,
                });
            };
            f.seek(SeekFrom::Start(offset))
                .map_err(io_err("seek", path))?;
            f.take(length)
                .read_to_end(&mut out)
                .map_err(io_err("read", path))?;
        }
    }
    Ok(out)
}

/// The entry at `path` (a final symlink followed), recorded under its
/// base name.
pub fn stat_file(root: &Path, path: &str) -> Result<Stat> {
    let (host, base) = resolve(root, path)?;
    let md = std::fs::symlink_metadata(&host).map_err(io_err("lstat", path))?;
    stat_of(&host, base, &md).map_err(|source| ResultFsError::Stat {
        path: path.to_string(),
        source,
    })
}

/// The entries directly inside the directory at `path`, in name order,
/// each recorded under its name. With `include`, only entries it matches,
/// and directories with a matching entry somewhere below them (as fsutil's
/// walk sends the parents of what it includes). A later name for a file
/// listed earlier is a hard link to it if both come from one layer of
/// `origin` (the view's layers).
pub fn read_dir(root: &Path, origin: &LayerOrigin, path: &str, include: &str) -> Result<Vec<Stat>> {
    let (host, _) = resolve(root, path)?;
    let md = std::fs::symlink_metadata(&host).map_err(io_err("lstat", path))?;
    if !md.is_dir() {
        return Err(ResultFsError::NotDirectory {
            path: path.to_string(),
        });
    }
    let sel = CopySelection {
        include_patterns: if include.is_empty() {
            Vec::new()
        } else {
            vec![include.to_string()]
        },
        ..CopySelection::all()
    };
    let filter = EntryFilter::new(&sel, None).map_err(|source| ResultFsError::Pattern {
        pattern: include.to_string(),
        source,
    })?;
    let mut out = Vec::new();
    let mut inodes: HashMap<LinkKey, Vec<u8>> = HashMap::new();
    for (name, entry, md) in sorted_entries(&host, path)? {
        // The filter matches text: a name that is not UTF-8 as its lossy
        // form; the entry keeps its bytes.
        let text = name.to_string_lossy();
        let (included, _) = filter.decide(&text, &text, md.is_dir());
        let holds_included = || -> Result<bool> {
            Ok(md.is_dir() && has_included_below(&filter, &entry, &text, path)?)
        };
        if !included && !holds_included()? {
            continue;
        }
        let mut stat =
            stat_of(&entry, name.into_vec(), &md).map_err(|source| ResultFsError::Stat {
                path: path.to_string(),
                source,
            })?;
        if !md.is_dir() && !md.file_type().is_symlink() && md.nlink() > 1 {
            let key = origin.link_key(entry.strip_prefix(root).unwrap_or(&entry), &md);
            match inodes.get(&key) {
                Some(first) => stat.linkname = first.clone(),
                None => {
                    inodes.insert(key, stat.path.clone());
                }
            }
        }
        out.push(stat);
    }
    Ok(out)
}

/// The entries of the host directory `dir` as (name, host path, metadata
/// not following links), sorted by name like Go's walk.
fn sorted_entries(dir: &Path, path: &str) -> Result<Vec<(OsString, PathBuf, std::fs::Metadata)>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io_err("readdir", path))? {
        let e = e.map_err(io_err("readdir", path))?;
        let md = std::fs::symlink_metadata(e.path()).map_err(io_err("lstat", path))?;
        out.push((e.file_name(), e.path(), md));
    }
    // OsString orders by bytes on Unix, as Go's walk does.
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Whether some entry below the directory `dir` (at `rel` below the listed
/// directory) is included; links are not followed.
fn has_included_below(filter: &EntryFilter<'_>, dir: &Path, rel: &str, path: &str) -> Result<bool> {
    for (name, entry, md) in sorted_entries(dir, path)? {
        let rel = format!("{rel}/{}", name.to_string_lossy());
        if filter.decide(&rel, &rel, md.is_dir()).0 {
            return Ok(true);
        }
        if md.is_dir() && has_included_below(filter, &entry, &rel, path)? {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A listed name that the test knows is UTF-8.
    fn text(name: &[u8]) -> &str {
        std::str::from_utf8(name).expect("UTF-8")
    }

    /// A root with a file, a directory, links that try to leave the root
    /// and a hard link; beside it, outside the root, a file of the same
    /// name that must never be read.
    fn tree() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().join("root");
        std::fs::create_dir_all(root.join("data/sub")).expect("mkdir");
        std::fs::create_dir_all(root.join("empty")).expect("mkdir");
        std::fs::write(d.path().join("secret"), "outside").expect("write");
        std::fs::write(root.join("secret"), "inside").expect("write");
        std::fs::write(root.join("data/hello.txt"), "hello world").expect("write");
        std::fs::write(root.join("data/sub/deep.txt"), "deep").expect("write");
        std::fs::write(root.join("data/b.bin"), "b").expect("write");
        std::fs::hard_link(root.join("data/b.bin"), root.join("data/c.bin")).expect("link");
        symlink("../../../../../../secret", root.join("data/up")).expect("symlink");
        // The same absolute path exists inside the root.
        let mirror = root.join(d.path().strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(&mirror).expect("mkdir");
        std::fs::write(mirror.join("secret"), "inside, at the host's path").expect("write");
        symlink(d.path().join("secret"), root.join("data/abs")).expect("symlink");
        symlink("..", root.join("data/parent")).expect("symlink");
        (d, root)
    }

    fn check_read(root: &Path, path: &str, expect: &str) {
        let got = read_file(root, path, None).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(String::from_utf8_lossy(&got), expect, "{path}");
    }

    #[test]
    fn paths_are_resolved_inside_the_root() {
        let (d, root) = tree();
        for (path, expect) in [
            ("data/hello.txt", "hello world"),
            ("/data/hello.txt", "hello world"),
            ("data/up", "inside"),
            ("data/abs", "inside, at the host's path"),
            ("../../../secret", "inside"),
            ("data/parent/data/parent/secret", "inside"),
            ("data/../../data/sub/../hello.txt", "hello world"),
        ] {
            check_read(&root, path, expect);
        }
        // The host path the absolute link names is outside and unread.
        let outside = d.path().join("secret");
        check_read(
            &root,
            outside.to_str().expect("utf8"),
            "inside, at the host's path",
        );
    }

    #[test]
    fn ranges_read_part_of_a_file() {
        let (_d, root) = tree();
        let part = |offset, length| {
            read_file(&root, "data/hello.txt", Some(FileRange { offset, length }))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
        };
        assert_eq!(part(6, 3).expect("middle"), "wor");
        assert_eq!(part(6, 100).expect("to the end"), "world");
        assert_eq!(part(100, 5).expect("past the end"), "");
        assert_eq!(part(0, 0).expect("nothing"), "");
        let e = part(-1, 2).expect_err("negative");
        assert_eq!(Status::from(e).code(), Code::InvalidArgument);
    }

    #[test]
    fn errors_name_the_path_as_asked() {
        let (_d, root) = tree();
        let e = Status::from(read_file(&root, "data/nope", None).expect_err("missing"));
        assert_eq!(e.code(), Code::NotFound);
        assert_eq!(e.message(), "open data/nope: no such file or directory");
        let e = Status::from(stat_file(&root, "nope").expect_err("missing"));
        assert_eq!(e.code(), Code::NotFound);
        assert_eq!(e.message(), "lstat nope: no such file or directory");
        let e = Status::from(
            read_dir(&root, &LayerOrigin::default(), "nope", "").expect_err("missing"),
        );
        assert_eq!(e.code(), Code::NotFound);
        let e = Status::from(read_file(&root, "data", None).expect_err("dir"));
        assert_eq!(e.message(), "data is not a regular file");
        let e = Status::from(
            read_dir(&root, &LayerOrigin::default(), "data/hello.txt", "").expect_err("file"),
        );
        assert_eq!(e.message(), "walk data/hello.txt: not a directory");
        symlink("loop2", root.join("loop1")).expect("symlink");
        symlink("loop1", root.join("loop2")).expect("symlink");
        let e = Status::from(stat_file(&root, "loop1").expect_err("loop"));
        assert_eq!(
            e.message(),
            "cannot resolve loop1: too many levels of symbolic links resolving loop1"
        );
    }

    #[test]
    fn stat_follows_the_final_link_and_uses_the_base_name() {
        let (_d, root) = tree();
        let st = stat_file(&root, "data/up").expect("stat");
        assert_eq!(st.path, b"secret");
        assert_eq!(st.size, 6);
        assert_eq!(st.mode & kiln_session::fsutil::mode::TYPE, 0, "a file");
        let st = stat_file(&root, "data/sub").expect("stat dir");
        assert_eq!(st.path, b"sub");
        assert_ne!(st.mode & kiln_session::fsutil::mode::DIR, 0);
        assert_eq!(st.size, 0, "directories have no size, as in fsutil");
        assert_eq!(stat_file(&root, "/").expect("root").path, b"/");
    }

    /// Names of one inode from two layers of the view are two files (kiln
    /// shares inodes across layers where a copy makes new ones); names
    /// from one layer stay a hard link.
    #[test]
    fn read_dir_links_only_names_of_one_layer() {
        let (d, root) = tree();
        std::fs::hard_link(root.join("data/b.bin"), root.join("data/d.bin")).expect("link");
        let top = d.path().join("top");
        std::fs::create_dir_all(top.join("data")).expect("mkdir");
        std::fs::write(top.join("data/d.bin"), "").expect("write");
        let mut origin = LayerOrigin::default();
        origin.add_tree(Path::new(""), vec![top, root.clone()]);
        let all = read_dir(&root, &origin, "data", "").expect("list");
        let links: Vec<(&str, &str)> = all
            .iter()
            .filter(|s| s.path.ends_with(b".bin"))
            .map(|s| (text(&s.path), text(&s.linkname)))
            .collect();
        assert_eq!(links, [("b.bin", ""), ("c.bin", "b.bin"), ("d.bin", "")]);
    }

    #[test]
    fn read_dir_lists_one_level_with_links_unfollowed() {
        let (d, root) = tree();
        let all = read_dir(&root, &LayerOrigin::default(), "data", "").expect("list");
        let names: Vec<&str> = all.iter().map(|s| text(&s.path)).collect();
        assert_eq!(
            names,
            ["abs", "b.bin", "c.bin", "hello.txt", "parent", "sub", "up"]
        );
        let up = &all[6];
        assert_ne!(up.mode & kiln_session::fsutil::mode::SYMLINK, 0);
        assert_eq!(up.linkname, b"../../../../../../secret");
        assert_eq!(all[2].linkname, b"b.bin", "the second name is a hard link");
        // A listing through a link that climbs out lists the root.
        let top: Vec<String> = read_dir(
            &root,
            &LayerOrigin::default(),
            "data/parent/data/parent",
            "",
        )
        .expect("root")
        .into_iter()
        .map(|s| String::from_utf8(s.path).expect("UTF-8"))
        .collect();
        let mirror_top = d
            .path()
            .components()
            .nth(1)
            .expect("a temp dir below /")
            .as_os_str()
            .to_string_lossy()
            .into_owned();
        let mut expect = vec![
            "data".to_string(),
            "empty".into(),
            "secret".into(),
            mirror_top,
        ];
        expect.sort();
        assert_eq!(top, expect);
        assert!(read_dir(&root, &LayerOrigin::default(), "empty", "")
            .expect("empty")
            .is_empty());
    }

    /// A name that is not UTF-8 is listed with its bytes, as Go's fsutil
    /// lists it, and in byte order.
    #[test]
    fn read_dir_keeps_names_that_are_not_utf8() {
        use std::os::unix::ffi::OsStrExt;
        let (_d, root) = tree();
        let latin1 = std::ffi::OsStr::from_bytes(b"caf\xe9");
        std::fs::write(root.join("empty").join(latin1), "x").expect("write");
        std::fs::write(root.join("empty/cafe"), "y").expect("write");
        let all = read_dir(&root, &LayerOrigin::default(), "empty", "").expect("list");
        let names: Vec<&[u8]> = all.iter().map(|s| s.path.as_slice()).collect();
        assert_eq!(names, [b"cafe".as_slice(), b"caf\xe9"]);
        assert_eq!(all[1].size, 1);
    }

    #[test]
    fn an_include_pattern_keeps_matches_and_the_directories_holding_them() {
        let (_d, root) = tree();
        let names = |pattern: &str| -> Vec<String> {
            read_dir(&root, &LayerOrigin::default(), "data", pattern)
                .expect("list")
                .into_iter()
                .map(|s| String::from_utf8(s.path).expect("UTF-8"))
                .collect()
        };
        assert_eq!(names("*.txt"), ["hello.txt"]);
        assert_eq!(names("sub/*.txt"), ["sub"]);
        assert_eq!(names("sub/*.go"), Vec::<String>::new());
        assert_eq!(names("*.bin"), ["b.bin", "c.bin"]);
        let e = read_dir(&root, &LayerOrigin::default(), "data", "!").expect_err("bad pattern");
        assert_eq!(Status::from(e).code(), Code::InvalidArgument);
    }
}
