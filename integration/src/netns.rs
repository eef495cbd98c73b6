//! Named network namespaces a test makes for itself (`ip netns add`,
//! loopback up), for daemons that must each have a network of their own:
//! the kubernetes driver's stand-in pods (`tests/e2e/kubedriver.rs`).
//!
//! A namespace is named `kiln-it-<pid>-<tag>-<n>`: unique per test process
//! and per call, so parallel tests and concurrent runs never share one. It
//! is deleted on drop, a failed test's included (drop runs on unwind); a
//! run that was killed outright leaves its namespaces behind, and the next
//! [`NetNs::create`] deletes those of test processes that no longer exist
//! (only names of this pattern, made by this module).
//!
//! Processes go in by inheritance ([`NetNs::run`]: a thread that entered
//! the namespace starts them) or by [`enter_on_exec`] (a child enters it
//! between fork and exec).

use crate::HarnessResult;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";
/// The prefix of every namespace this module makes.
const PREFIX: &str = "kiln-it-";

/// A network namespace of this test process; deleted on drop.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    path: PathBuf,
}

/// Runs `ip ARGS`, its stderr in the error.
fn ip(args: &[&str]) -> HarnessResult<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {args:?}: {e} (iproute2 installed?)"))?;
    if !out.status.success() {
        return Err(format!(
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Deletes the namespaces of earlier test processes that are gone (killed
/// before their namespaces' drop ran).
fn sweep_orphans() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "delete", &name]);
        }
    }
}

impl NetNs {
    /// Makes a namespace named after `tag` (letters, digits, `-`) with its
    /// loopback up.
    pub fn create(tag: &str) -> HarnessResult<NetNs> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        sweep_orphans();
        let name = format!(
            "{PREFIX}{}-{tag}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        let ns = NetNs {
            path: Path::new(NETNS_DIR).join(&name),
            name,
        };
        // On failure `ns` drops here and deletes the namespace.
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Its name, for `ip netns exec` and messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its file under /run/netns, for [`enter_on_exec`].
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its identity: the inode a process inside shows as
    /// `/proc/PID/ns/net -> net:[INODE]`.
    pub fn inode(&self) -> HarnessResult<u64> {
        std::fs::metadata(&self.path)
            .map(|m| m.ino())
            .map_err(|e| format!("{}: {e}", self.path.display()))
    }

    /// Runs `body` on a current-thread runtime on a thread of its own in
    /// this namespace, so every process it starts (containerd, kilnd, and
    /// theirs) lives in it; its value comes back once it is done. A panic
    /// in `body` is the caller's.
    pub async fn run<F, Fut, T>(&self, body: F) -> HarnessResult<T>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = T>,
        T: Send + 'static,
    {
        let file =
            std::fs::File::open(&self.path).map_err(|e| format!("{}: {e}", self.path.display()))?;
        let name = self.name.clone();
        let (tx, rx) = tokio::sync::oneshot::channel();
        // A thread of its own: entering a namespace is per thread, and a
        // pooled one (spawn_blocking) would carry it into unrelated work.
        let thread = std::thread::spawn(move || -> HarnessResult<()> {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("enter network namespace {name}: {e}"))?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| format!("runtime: {e}"))?;
            let _ = tx.send(rt.block_on(body()));
            Ok(())
        });
        match rx.await {
            Ok(v) => Ok(v),
            // The thread ended without a value: it failed or panicked.
            Err(_) => match thread.join() {
                Ok(Ok(())) => Err("the namespace's thread sent nothing".into()),
                Ok(Err(e)) => Err(e),
                Err(panic) => std::panic::resume_unwind(panic),
            },
        }
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "delete", &self.name]) {
            eprintln!("cannot delete network namespace {}: {e}", self.name);
        }
    }
}

/// Makes `cmd`'s child enter the network namespace at `path` (a
/// /run/netns file or /proc/PID/ns/net) before it execs.
pub fn enter_on_exec(cmd: &mut Command, path: &Path) -> std::io::Result<()> {
    let file = std::fs::File::open(path)?;
    // SAFETY: the closure runs in the forked child before exec; it only
    // makes the setns(2) system call on a descriptor opened before the
    // fork (no allocation, no locks), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)
        });
    }
    Ok(())
}

/// The network namespace (its inode) process `pid` is in.
pub fn of_pid(pid: u32) -> HarnessResult<u64> {
    let p = format!("/proc/{pid}/ns/net");
    std::fs::metadata(&p)
        .map(|m| m.ino())
        .map_err(|e| format!("{p}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A namespace left by a test process that is gone is deleted by the
    /// next create; the new one is there until it drops.
    #[test]
    fn a_gone_processs_namespaces_are_swept_and_ours_deleted_on_drop() {
        let mut child = Command::new("true").spawn().expect("true runs");
        let dead = child.id();
        child.wait().expect("true exits");
        let stale = format!("{PREFIX}{dead}-stale-0");
        ip(&["netns", "add", &stale]).expect("ip netns add");
        let ns = NetNs::create("sweep").expect("namespace");
        assert!(
            !Path::new(NETNS_DIR).join(&stale).exists(),
            "{stale} was not swept"
        );
        assert!(ns
            .name()
            .starts_with(&format!("{PREFIX}{}-sweep-", std::process::id())));
        assert_ne!(ns.inode(), of_pid(std::process::id()));
        let path = ns.path().to_path_buf();
        assert!(path.exists());
        drop(ns);
        assert!(!path.exists(), "{} left behind", path.display());
    }
}
