//! Cleaning up after kiln processes that died mid-build.
//!
//! A build's lease carries its process: pid, the process's start time and
//! the host. A later kiln on the same host finds leases whose process is
//! gone, kills and deletes their step containers, unmounts their host mount
//! points and deletes the lease, so a SIGKILLed build leaves nothing behind
//! (and, on another host, only a lease that expires).

use crate::error::Result;
use crate::services::Services;
use kiln_shim::Containers;
use kiln_snapshot::containerd::{LeaseId, LeaseInfo};
use std::collections::HashMap;
use std::path::Path;

const PID_LABEL: &str = "dev.kiln/pid";
pub(crate) const START_LABEL: &str = "dev.kiln/pid.start";
pub(crate) const HOST_LABEL: &str = "dev.kiln/host";

/// Below the state directory: one directory per kiln process
/// ([`owner_dir_name`]) holding its builds' received sources (kilnd).
pub const SESSIONS_DIR: &str = "sessions";
/// Below the state directory: one directory per kiln process holding its
/// running steps' private dirs (FIFOs, hosts, resolv.conf).
pub const EXEC_DIR: &str = "exec";

/// A process's start time in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`), which tells a live process from a reused pid; `None`
/// when there is no such process or it is only a zombie (it has exited and
/// waits to be reaped: it holds nothing and will run no more).
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    live_start_time(&stat)
}

/// The start time in one `/proc/<pid>/stat` line, unless its state says the
/// process is dead (`Z` zombie, `X` dead).
fn live_start_time(stat: &str) -> Option<String> {
    // The command name may hold spaces; fields restart after its ')'.
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace();
    if matches!(fields.next(), Some("Z" | "X" | "x")) {
        return None;
    }
    fields.nth(18).map(String::from)
}

/// Whether process `pid` started at `start` still runs.
fn process_alive(pid: u32, start: &str) -> bool {
    start_time(pid).is_some_and(|now| now == start)
}

/// The name of this process's directory below [`SESSIONS_DIR`] and
/// [`EXEC_DIR`]: `<pid>-<start time>`, so the sweep can tell a dead owner
/// from a live one (or a reused pid).
pub fn owner_dir_name() -> String {
    let pid = std::process::id();
    format!("{pid}-{}", start_time(pid).unwrap_or_default())
}

/// Whether the owner a [`owner_dir_name`] names is gone; `None` for a name
/// of another form.
fn owner_dir_is_dead(name: &str) -> Option<bool> {
    let (pid, start) = name.split_once('-')?;
    let pid = pid.parse::<u32>().ok()?;
    if start.is_empty() || !start.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(!process_alive(pid, start))
}

/// Creates `dir` and its missing parents with mode 0700: kiln's state holds
/// build contexts and step files that other users must not read (nor reach
/// setuid files or devices through).
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates kiln's state directory 0700, or tightens an existing one (and
/// its direct subdirectories) to 0700.
pub fn private_state_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    create_private_dir(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for e in std::fs::read_dir(dir)?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o700))?;
        }
    }
    Ok(())
}

/// Removes what dead kiln processes left in `state_dir`'s per-process
/// directories ([`SESSIONS_DIR`], [`EXEC_DIR`]): received contexts, step
/// FIFOs and generated files, unmounting anything still mounted there.
pub fn sweep_dirs(state_dir: &Path) {
    for kind in [SESSIONS_DIR, EXEC_DIR] {
        let Ok(entries) = std::fs::read_dir(state_dir.join(kind)) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if owner_dir_is_dead(&name) != Some(true) {
                continue;
            }
            let path = e.path();
            tracing::info!(path = %path.display(), "removing a dead kiln process's files");
            unmount_below(&path);
            if let Err(err) = std::fs::remove_dir_all(&path) {
                tracing::warn!(path = %path.display(), error = %err, "cannot remove a dead kiln process's files");
            }
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The labels that tie a build's lease to this process.
pub fn owner_labels() -> HashMap<String, String> {
    let pid = std::process::id();
    let mut l = HashMap::new();
    l.insert(PID_LABEL.to_string(), pid.to_string());
    l.insert(START_LABEL.to_string(), start_time(pid).unwrap_or_default());
    l.insert(HOST_LABEL.to_string(), hostname());
    l
}

/// The process that owns a lease, as this host can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    /// No owner labels, or another host's process.
    Unknown,
    /// Running on this host now.
    Alive,
    /// Gone from this host (or a zombie, or an unreadable pid).
    Dead,
}

fn owner(lease: &LeaseInfo) -> Owner {
    let (Some(pid), Some(start), Some(host)) = (
        lease.labels.get(PID_LABEL),
        lease.labels.get(START_LABEL),
        lease.labels.get(HOST_LABEL),
    ) else {
        return Owner::Unknown;
    };
    if *host != hostname() {
        return Owner::Unknown;
    }
    match pid.parse::<u32>() {
        Ok(pid) if process_alive(pid, start) => Owner::Alive,
        _ => Owner::Dead,
    }
}

/// Whether the process that owns `lease` is known to be gone.
pub(crate) fn owner_is_dead(lease: &LeaseInfo) -> bool {
    owner(lease) == Owner::Dead
}

/// Whether the process that owns `lease` runs on this host right now.
pub(crate) fn owner_is_alive_here(lease: &LeaseInfo) -> bool {
    owner(lease) == Owner::Alive
}

/// Whether `lease` is a build lease (`kiln/build/...`).
pub(crate) fn is_build(lease: &LeaseInfo) -> bool {
    lease.id.starts_with("kiln/build/")
}

/// Whether build lease `lease` belongs to a build that is over without
/// having deleted it: its process is dead on this host, or (wherever it
/// ran) its keepalive was no longer renewed. `all` is every kiln lease of
/// the namespace. The sweep deletes such a lease; until then it holds
/// nothing in use ([`crate::inuse`]).
pub(crate) fn build_is_gone(lease: &LeaseInfo, all: &[LeaseInfo]) -> bool {
    owner_is_dead(lease)
        || (!owner_is_alive_here(lease) && crate::lease::keepalive_lapsed(lease, all))
}

/// Lazily unmounts everything mounted at or below `dir`, deepest first.
pub fn unmount_below(dir: &Path) {
    let needle = dir.display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut targets: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(String::from))
        .filter(|t| {
            t.strip_prefix(&needle)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        if let Err(e) = nix::mount::umount2(t.as_str(), nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(target = %t, error = %e, "cannot unmount a dead build's mount");
        }
    }
}

/// Cleans up the builds of dead kiln processes in this namespace, then
/// the files dead kiln processes left in `state_dir`.
pub async fn sweep(svc: &Services, containers: &dyn Containers, state_dir: &Path) -> Result<()> {
    sweep_leases(svc, containers, state_dir).await?;
    sweep_dirs(state_dir);
    Ok(())
}

async fn sweep_leases(svc: &Services, containers: &dyn Containers, state_dir: &Path) -> Result<()> {
    let all = svc.leases.list().await?;
    // Claims whose holder is gone, whether or not anyone waits on them.
    crate::claim::sweep(&*svc.leases, &all).await?;
    for lease in &all {
        // A dead process's keepalive: it holds nothing, but it is litter.
        if crate::lease::is_keepalive(lease) && owner_is_dead(lease) {
            if let Some(id) = LeaseId::from_kiln(&lease.id) {
                svc.leases.delete(&id, false).await?;
            }
            continue;
        }
        if !is_build(lease) || !build_is_gone(lease, &all) {
            continue;
        }
        for k in crate::lease::keepalives_of(lease, &all) {
            if let Some(id) = LeaseId::from_kiln(&k.id) {
                svc.leases.delete(&id, false).await?;
            }
        }
        let Some(id) = LeaseId::from_kiln(&lease.id) else {
            continue;
        };
        tracing::info!(lease = %id, "cleaning up after a dead build");
        match containers.list_of_lease(&id).await {
            Ok(ids) => {
                for c in ids {
                    if let Err(e) = containers.remove(&c).await {
                        tracing::warn!(container = %c, error = %e, "cannot remove a dead build's step");
                    }
                }
            }
            Err(e) => tracing::warn!(lease = %id, error = %e, "cannot list a dead build's steps"),
        }
        let mounts = state_dir.join("mounts").join(mount_dir_name(&id));
        unmount_below(&mounts);
        let _ = std::fs::remove_dir_all(&mounts);
        // Synchronous: what only the dead build held is gone when the sweep
        // returns, not whenever containerd next collects.
        svc.leases.delete(&id, true).await?;
    }
    Ok(())
}

/// The directory below `<state>/mounts` where a build mounts snapshots.
pub fn mount_dir_name(lease: &LeaseId) -> String {
    lease.as_str().replace('/', "-")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_reused_pid_is_not() {
        let mut labels = owner_labels();
        let me = LeaseInfo {
            id: "kiln/build/x".into(),
            labels: labels.clone(),
            created_secs: 0,
        };
        assert!(!owner_is_dead(&me));
        labels.insert(START_LABEL.into(), "1".into());
        let reused = LeaseInfo {
            id: "kiln/build/x".into(),
            labels,
            created_secs: 0,
        };
        assert!(owner_is_dead(&reused));
        let foreign = LeaseInfo {
            id: "kiln/build/y".into(),
            labels: HashMap::new(),
            created_secs: 0,
        };
        assert!(
            !owner_is_dead(&foreign),
            "leases without owner labels are left to expire"
        );
    }

    #[test]
    fn a_zombie_is_not_alive() {
        let running = "42 (kilnd (x)) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 777 0 0";
        assert_eq!(live_start_time(running).as_deref(), Some("777"));
        let zombie = running.replace(") S ", ") Z ");
        assert_eq!(live_start_time(&zombie), None);
        let dead = running.replace(") S ", ") X ");
        assert_eq!(live_start_time(&dead), None);
    }

    #[test]
    fn dead_owners_dirs_are_swept_and_live_ones_kept() {
        let root = tempfile::tempdir().expect("tempdir");
        let mine = owner_dir_name();
        assert_eq!(owner_dir_is_dead(&mine), Some(false));
        // pid 1 runs, but not since tick 1; a pid that cannot exist.
        let dead = ["1-1".to_string(), format!("{}-5", u32::MAX)];
        let other = "not-an-owner";
        for kind in [SESSIONS_DIR, EXEC_DIR] {
            for name in dead
                .iter()
                .map(String::as_str)
                .chain([mine.as_str(), other])
            {
                let d = root.path().join(kind).join(name).join("kiln-0123");
                create_private_dir(&d).expect("mkdir");
                std::fs::write(d.join("hosts"), "x").expect("write");
            }
        }
        sweep_dirs(root.path());
        for kind in [SESSIONS_DIR, EXEC_DIR] {
            for name in &dead {
                assert!(!root.path().join(kind).join(name).exists(), "{kind}/{name}");
            }
            assert!(root
                .path()
                .join(kind)
                .join(&mine)
                .join("kiln-0123/hosts")
                .exists());
            assert!(
                root.path().join(kind).join(other).exists(),
                "other names are not kiln's"
            );
        }
    }

    #[test]
    fn private_dirs_are_0700_and_existing_ones_tightened() {
        use std::os::unix::fs::PermissionsExt;
        let root = tempfile::tempdir().expect("tempdir");
        let state = root.path().join("state");
        std::fs::create_dir_all(state.join("sessions")).expect("mkdir");
        for d in [&state, &state.join("sessions")] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        }
        private_state_dir(&state).expect("private");
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("sessions")), 0o700);
        let fresh = root.path().join("a/b/c");
        create_private_dir(&fresh).expect("mkdir");
        assert_eq!(mode(&root.path().join("a")), 0o700);
        assert_eq!(mode(&fresh), 0o700);
    }
}
