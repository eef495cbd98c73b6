//! Mount points: the empty dirs and files runc creates in the rootfs for
//! a step's mounts (`/etc/hosts`, a cache mount's target, …).
//!
//! They land in the step's upper layer and would show up in its diff, so,
//! like BuildKit's `MountStubsCleaner`, kiln records before the run which
//! mount destinations do not exist yet and removes afterwards those that
//! are still empty, deepest first, restoring the times of the directories
//! they were created in. The executor leaves out the standard mounts
//! (`/proc`, `/dev`, `/sys`): BuildKit keeps their points in the layer.
//!
//! Both halves work on directory fds ([`crate::rootfs`]): before the run the
//! deepest existing directory of each destination is opened and held; after
//! it, the recorded names are reopened from that fd with `O_NOFOLLOW` and
//! removed with `unlinkat`. A step that swaps a stub directory for a
//! symlink to a host path only stops the cleanup there: kiln never removes
//! through a link, so nothing outside the rootfs can be touched.

use crate::rootfs::{open_dir, remove_stub, RootDir};
use nix::sys::stat::fstat;
use nix::sys::time::TimeSpec;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;

/// One destination's missing components below an existing directory.
#[derive(Debug)]
struct Chain {
    /// The deepest existing directory, held open across the run.
    anchor: OwnedFd,
    /// Its host path when recorded, for messages.
    anchor_path: PathBuf,
    /// The missing names below it, outermost first.
    names: Vec<OsString>,
}

/// The stubs a run may create in one rootfs, recorded before the run.
#[derive(Debug)]
pub struct MountPoints {
    /// Longest chains first, so that deeper stubs go before their parents.
    chains: Vec<Chain>,
    /// The directories the stubs will be created in, with their times,
    /// one per inode.
    parents: Vec<(OwnedFd, PathBuf, TimeSpec, TimeSpec)>,
}

/// One stub that could not be removed or one time not restored.
#[derive(Debug)]
pub struct MountPointError {
    pub path: PathBuf,
    pub source: io::Error,
}

impl MountPoints {
    /// Records which of `dests` (absolute container paths) are missing in
    /// `root`. A destination that cannot be resolved (a link loop) is not
    /// recorded: runc fails the run on it.
    pub fn record<'a>(root: &RootDir, dests: impl IntoIterator<Item = &'a str>) -> Self {
        let mut chains: Vec<Chain> = Vec::new();
        let mut parents: Vec<(OwnedFd, PathBuf, TimeSpec, TimeSpec)> = Vec::new();
        let mut seen: Vec<(u64, u64)> = Vec::new();
        for dest in dests {
            let Ok(w) = root.walk(dest) else { continue };
            if w.missing().is_empty() {
                continue;
            }
            let Ok(anchor) = w.dup_dir(root) else {
                continue;
            };
            let anchor_path = w.existing_path(root);
            if let Ok(st) = fstat(&anchor) {
                let key = (st.st_dev, st.st_ino);
                if !seen.contains(&key) {
                    if let Ok(fd) = anchor.try_clone() {
                        seen.push(key);
                        parents.push((
                            fd,
                            anchor_path.clone(),
                            TimeSpec::new(st.st_atime, st.st_atime_nsec),
                            TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
                        ));
                    }
                }
            }
            chains.push(Chain {
                anchor,
                anchor_path,
                names: w.missing().to_vec(),
            });
        }
        chains.sort_by_key(|c| std::cmp::Reverse(c.names.len()));
        MountPoints { chains, parents }
    }

    /// The recorded missing paths as host paths at record time, deepest
    /// first, without duplicates.
    pub fn paths(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        for c in &self.chains {
            let mut p = c.anchor_path.clone();
            for n in &c.names {
                p.push(n);
                if !out.contains(&p) {
                    out.push(p.clone());
                }
            }
        }
        out.sort_by(|a, b| {
            b.components()
                .count()
                .cmp(&a.components().count())
                .then_with(|| a.cmp(b))
        });
        out
    }

    /// Removes the recorded stubs that are now empty directories or empty
    /// files, deepest first, then restores the parents' times. Paths that
    /// hold data (the step wrote there) are kept, and so is anything the
    /// step replaced with a symlink. Returns what failed.
    pub fn clean(&self) -> Vec<MountPointError> {
        let mut errors = Vec::new();
        for c in &self.chains {
            // Reopen the chain from its anchor, never through a link.
            let mut fds: Vec<OwnedFd> = Vec::new();
            let mut path = c.anchor_path.clone();
            for n in &c.names[..c.names.len().saturating_sub(1)] {
                let dir = fds.last().map(|f| f.as_fd()).unwrap_or(c.anchor.as_fd());
                match open_dir(dir, n) {
                    Ok(fd) => {
                        path.push(n);
                        fds.push(fd);
                    }
                    // Gone, or no longer a directory (a symlink, a file):
                    // nothing below it is a stub of ours.
                    Err(nix::errno::Errno::ENOENT)
                    | Err(nix::errno::Errno::ENOTDIR)
                    | Err(nix::errno::Errno::ELOOP) => break,
                    Err(e) => {
                        let mut p = path.clone();
                        p.push(n);
                        errors.push(MountPointError {
                            path: p,
                            source: e.into(),
                        });
                        break;
                    }
                }
            }
            // fds[i] is the directory holding names[i + 1]; the anchor holds
            // names[0]. Remove from the deepest reachable name up.
            for i in (0..=fds.len()).rev() {
                let Some(name) = c.names.get(i) else { continue };
                let dir = if i == 0 {
                    c.anchor.as_fd()
                } else {
                    fds[i - 1].as_fd()
                };
                if let Err(source) = remove_stub(dir, name) {
                    let mut p = c.anchor_path.clone();
                    p.extend(&c.names[..=i]);
                    errors.push(MountPointError { path: p, source });
                }
            }
        }
        for (fd, path, atime, mtime) in &self.parents {
            if let Err(e) = nix::sys::stat::futimens(fd, atime, mtime) {
                errors.push(MountPointError {
                    path: path.clone(),
                    source: e.into(),
                });
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::FileTimes;
    use std::os::unix::fs::symlink;
    use std::path::Path;

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

    fn record(root: &Path, dests: &[&str]) -> MountPoints {
        let r = RootDir::open(root).expect("open root");
        MountPoints::record(&r, dests.iter().copied())
    }

    #[test]
    fn missing_components_deepest_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc")).expect("mkdir");
        std::fs::create_dir_all(root.join("dev")).expect("mkdir");
        std::fs::write(root.join("etc/hosts"), "x").expect("write");
        let got = record(
            root,
            &[
                "/proc",
                "/dev",
                "/dev/pts",
                "/sys",
                "/sys/fs/cgroup",
                "/etc/hosts",
                "/etc/resolv.conf",
                "/a/b/c",
            ],
        )
        .paths();
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
        assert_eq!(
            rel(root, &record(root, &["/etc/resolv.conf"]).paths()),
            ["run/systemd/resolv.conf", "run/systemd", "run"]
        );
        assert_eq!(rel(root, &record(root, &["/etc/up/x"]).paths()), ["x"]);
        assert_eq!(rel(root, &record(root, &["/../../y"]).paths()), ["y"]);
    }

    #[test]
    fn a_symlink_loop_records_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        symlink("/b", root.join("a")).expect("symlink");
        symlink("/a", root.join("b")).expect("symlink");
        assert!(record(root, &["/a/x"]).paths().is_empty());
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
        let stubs = record(root, &["/proc", "/etc/hosts", "/data/x", "/dev/pts"]);
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

    /// A step that swaps a stub directory (or the directory holding a
    /// stub) for a symlink to a host path must not make kiln remove the
    /// host path.
    #[test]
    fn clean_never_removes_through_a_swapped_symlink() {
        let dir = tempfile::tempdir().expect("tempdir");
        let host = tempfile::tempdir().expect("tempdir");
        let root = dir.path();
        std::fs::create_dir_all(host.path().join("pts")).expect("mkdir");
        std::fs::write(host.path().join("hosts"), "").expect("write");
        std::fs::create_dir_all(root.join("etc")).expect("mkdir");
        let stubs = record(root, &["/dev/pts", "/etc/hosts", "/sys"]);
        // runc creates the stubs ...
        std::fs::create_dir_all(root.join("dev/pts")).expect("mkdir");
        std::fs::write(root.join("etc/hosts"), "").expect("write");
        std::fs::create_dir_all(root.join("sys")).expect("mkdir");
        // ... and the step swaps them for links to the host.
        std::fs::remove_dir_all(root.join("dev")).expect("rm");
        symlink(host.path(), root.join("dev")).expect("symlink");
        std::fs::remove_file(root.join("etc/hosts")).expect("rm");
        symlink(host.path().join("hosts"), root.join("etc/hosts")).expect("symlink");
        std::fs::remove_dir(root.join("sys")).expect("rm");
        symlink(host.path().join("pts"), root.join("sys")).expect("symlink");

        let errors = stubs.clean();
        assert!(errors.is_empty(), "{errors:?}");
        assert!(host.path().join("pts").is_dir(), "host dir removed");
        assert!(host.path().join("hosts").is_file(), "host file removed");
        // The step's own links are its data.
        assert!(root.join("dev").is_symlink());
        assert!(root.join("etc/hosts").is_symlink());
        assert!(root.join("sys").is_symlink());
    }
}
