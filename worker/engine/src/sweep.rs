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
const START_LABEL: &str = "dev.kiln/pid.start";
const HOST_LABEL: &str = "dev.kiln/host";

/// A process's start time in clock ticks since boot (field 22 of
/// `/proc/<pid>/stat`), which tells a live process from a reused pid.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; fields restart after its ')'.
    let rest = stat.rsplit_once(')')?.1;
    rest.split_whitespace().nth(19).map(String::from)
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

/// Whether the process that owns `lease` is known to be gone.
fn owner_is_dead(lease: &LeaseInfo) -> bool {
    let (Some(pid), Some(start), Some(host)) = (
        lease.labels.get(PID_LABEL),
        lease.labels.get(START_LABEL),
        lease.labels.get(HOST_LABEL),
    ) else {
        return false;
    };
    if *host != hostname() {
        return false;
    }
    match pid.parse::<u32>().ok().and_then(start_time) {
        Some(now) => now != *start,
        None => true,
    }
}

/// Lazily unmounts everything mounted at or below `dir`, deepest first.
pub fn unmount_below(dir: &Path) {
    let needle = dir.display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut targets: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(String::from))
        .filter(|t| t.starts_with(&needle))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        if let Err(e) = nix::mount::umount2(t.as_str(), nix::mount::MntFlags::MNT_DETACH) {
            tracing::warn!(target = %t, error = %e, "cannot unmount a dead build's mount");
        }
    }
}

/// Cleans up the builds of dead kiln processes in this namespace.
pub async fn sweep(svc: &Services, containers: &dyn Containers, state_dir: &Path) -> Result<()> {
    for lease in svc.leases.list().await? {
        if !lease.id.starts_with("kiln/build/") || !owner_is_dead(&lease) {
            continue;
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
}
