//! Mount points: the empty dirs and files runc creates in the rootfs for
//! a step's mounts (`/proc`, `/dev`, `/etc/hosts`, …).
//!
//! They land in the step's upper layer and would show up in its diff, so,
//! like BuildKit's `MountPointsCleaner`, kiln records before the run which
//! mount destinations do not exist yet and removes afterwards those that
//! are still empty, deepest first, restoring the mtimes of the directories
//! they were created in.

use kiln_context::path::PathError;
use std::fs::FileTimes;
use std::io;
use std::path::{Path, PathBuf};

/// Resolves `path` (absolute inside the container) to a host path under
/// `root`, following symlinks as the container would see them: `..` and
/// absolute link targets never leave `root`; missing components are kept
/// as they are. This is the one clamping resolver of kiln
/// ([`kiln_context::path::resolve`]); a link loop is an error (`ELOOP`),
/// never a path handed to the host kernel half-resolved.
pub fn resolve_in_root(root: &Path, path: &str) -> io::Result<PathBuf> {
    match kiln_context::path::resolve(root, Path::new(path), true, None) {
        Ok(r) => Ok(r.host),
        Err(PathError::SymlinkLoop { .. }) => Err(io::Error::from_raw_os_error(libc::ELOOP)),
        Err(PathError::Io { source, .. }) => Err(source),
    }
}

/// For each destination, the host paths under `root` that do not exist
/// yet: the first missing component of its resolved path and everything
/// below it. These are what runc will create. Sorted deepest first,
/// without duplicates.
pub fn missing_paths<'a>(root: &Path, dests: impl IntoIterator<Item = &'a str>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for dest in dests {
        // A destination that cannot be resolved fails the run in runc;
        // nothing of it is recorded to clean.
        let Ok(resolved) = resolve_in_root(root, dest) else {
            continue;
        };
        let Ok(rel) = resolved.strip_prefix(root) else {
            continue;
        };
        let mut p = root.to_path_buf();
        let mut missing = false;
        for c in rel.components() {
            p.push(c);
            if !missing && std::fs::symlink_metadata(&p).is_err() {
                missing = true;
            }
            if missing && !out.contains(&p) {
                out.push(p.clone());
            }
        }
    }
    sort_deepest_first(&mut out);
    out
}

/// Sorts paths so that children come before their parents.
pub fn sort_deepest_first(paths: &mut [PathBuf]) {
    paths.sort_by(|a, b| {
        b.components()
            .count()
            .cmp(&a.components().count())
            .then_with(|| a.cmp(b))
    });
}

/// The stubs a run may create in one rootfs, recorded before the run.
#[derive(Debug)]
pub struct MountPoints {
    /// Missing paths, deepest first.
    paths: Vec<PathBuf>,
    /// Existing directories the stubs will be created in, with their times.
    parents: Vec<(PathBuf, FileTimes)>,
}

/// One stub that could not be removed or one mtime not restored.
#[derive(Debug)]
pub struct MountPointError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl MountPoints {
    /// Records which of `dests` (absolute container paths) are missing in
    /// `root`.
    pub fn record<'a>(root: &Path, dests: impl IntoIterator<Item = &'a str>) -> Self {
        let paths = missing_paths(root, dests);
        let mut parents: Vec<(PathBuf, FileTimes)> = Vec::new();
        for p in &paths {
            let Some(parent) = p.parent() else { continue };
            if paths.iter().any(|q| q == parent) || parents.iter().any(|(q, _)| q == parent) {
                continue;
            }
            if let Ok(m) = std::fs::metadata(parent) {
                let mut t = FileTimes::new();
                if let Ok(a) = m.accessed() {
                    t = t.set_accessed(a);
                }
                if let Ok(mt) = m.modified() {
                    t = t.set_modified(mt);
                }
                parents.push((parent.to_path_buf(), t));
            }
        }
        MountPoints { paths, parents }
    }

    /// The recorded missing paths, deepest first.
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }

    /// Removes the recorded paths that are now empty directories or empty
    /// files, deepest first, then restores the parents' times. Paths that
    /// hold data (the step wrote there) are kept. Returns what failed.
    pub fn clean(&self) -> Vec<MountPointError> {
        let mut errors = Vec::new();
        for p in &self.paths {
            let Ok(m) = std::fs::symlink_metadata(p) else {
                continue;
            };
            let res = if m.is_dir() {
                match std::fs::read_dir(p).map(|mut entries| entries.next().is_none()) {
                    Ok(true) => std::fs::remove_dir(p),
                    Ok(false) => Ok(()),
                    Err(e) => Err(e),
                }
            } else if m.is_file() && m.len() == 0 {
                std::fs::remove_file(p)
            } else {
                Ok(())
            };
            if let Err(source) = res {
                errors.push(MountPointError {
                    path: p.clone(),
                    source,
                });
            }
        }
        for (dir, times) in &self.parents {
            let res = std::fs::File::open(dir).and_then(|f| f.set_times(*times));
            if let Err(source) = res {
                if source.kind() != io::ErrorKind::NotFound {
                    errors.push(MountPointError {
                        path: dir.clone(),
                        source,
                    });
                }
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn rel(root: &Path, paths: &[PathBuf]) -> Vec<String> {
        paths
            .iter()
            .map(|p| {
                p.strip_prefix(root)
                    .expect("under root")
                    .display()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn missing_components_deepest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).expect("mkdir");
        std::fs::create_dir_all(root.join("dev")).expect("mkdir");
        std::fs::write(root.join("etc/hosts"), "x").expect("write");
        let got = missing_paths(
            root,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/sys",
                "/sys/fs/cgroup",
                "/etc/hosts",
                "/etc/resolv.conf",
                "/a/b/c",
            ],
        );
        assert_eq!(
            rel(root, &got),
            [
                "a/b/c",
                "sys/fs/cgroup",
                "a/b",
                "dev/pts",
                "etc/resolv.conf",
                "sys/fs",
                "a",
                "proc",
                "sys"
            ]
        );
    }

    #[test]
    fn symlinks_resolve_inside_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).expect("mkdir");
        symlink("/run/systemd/resolv.conf", root.join("etc/resolv.conf")).expect("symlink");
        symlink("../../..", root.join("etc/up")).expect("symlink");
        let resolve = |p: &str| resolve_in_root(root, p).expect("resolves");
        assert_eq!(
            resolve("/etc/resolv.conf"),
            root.join("run/systemd/resolv.conf")
        );
        assert_eq!(resolve("/etc/up/x"), root.join("x"));
        assert_eq!(resolve("/../../x"), root.join("x"));
        let got = missing_paths(root, ["/etc/resolv.conf"]);
        assert_eq!(
            rel(root, &got),
            ["run/systemd/resolv.conf", "run/systemd", "run"]
        );
    }

    #[test]
    fn a_symlink_loop_is_an_error_and_records_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        symlink("/b", root.join("a")).expect("symlink");
        symlink("/a", root.join("b")).expect("symlink");
        let e = resolve_in_root(root, "/a/x").expect_err("a loop");
        assert_eq!(e.raw_os_error(), Some(libc::ELOOP));
        assert!(missing_paths(root, ["/a/x"]).is_empty());
    }

    #[test]
    fn clean_removes_only_empty_stubs_and_restores_parent_mtime() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).expect("mkdir");
        let old = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        std::fs::File::open(root.join("etc"))
            .and_then(|f| f.set_times(FileTimes::new().set_modified(old)))
            .expect("set mtime");
        let stubs = MountPoints::record(root, ["/proc", "/etc/hosts", "/data/x", "/dev/pts"]);
        // What runc and the step would do.
        std::fs::create_dir_all(root.join("proc")).expect("mkdir");
        std::fs::write(root.join("etc/hosts"), "").expect("write");
        std::fs::create_dir_all(root.join("data/x")).expect("mkdir");
        std::fs::write(root.join("data/kept"), "data").expect("write");
        std::fs::create_dir_all(root.join("dev")).expect("mkdir");
        std::fs::write(root.join("dev/null"), "").expect("write");

        let errors = stubs.clean();
        assert!(errors.is_empty(), "{errors:?}");
        assert!(!root.join("proc").exists());
        assert!(!root.join("etc/hosts").exists());
        assert!(!root.join("data/x").exists());
        assert!(root.join("data/kept").exists());
        assert!(root.join("dev").exists(), "non-empty dir is kept");
        let mtime = std::fs::metadata(root.join("etc"))
            .and_then(|m| m.modified())
            .expect("mtime");
        assert_eq!(mtime, old);
    }
}
