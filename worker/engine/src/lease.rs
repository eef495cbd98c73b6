//! Build leases that live exactly as long as their build.
//!
//! containerd cannot change a lease's labels, so an expiry label cannot be
//! pushed back while a build runs. A build lease therefore carries no
//! expiry; instead it names a *keepalive*: a series of small expiring
//! leases (`kiln/keepalive/<build>/<n>`, holding nothing) that the build
//! renews every [`LeaseTiming::refresh`], each expiring after
//! [`LeaseTiming::expiry`]. While the build runs one of them is always
//! current; when its process dies they lapse, and the next kiln's sweep (on
//! any host) deletes the build lease whose keepalive lapsed, as it deletes
//! the lease of a dead process on its own host at once. The build lease is
//! its own first keepalive (it carries the lifetime label too), so a build
//! shorter than one refresh makes no keepalive lease at all: two write
//! transactions fewer in containerd's metadata store per build.

use crate::error::Result;
use kiln_snapshot::containerd::{LeaseId, LeaseInfo};
use kiln_snapshot::services::{LeaseResource, Leases};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// On a build lease: the ID prefix of its keepalive leases.
pub const KEEPALIVE_LABEL: &str = "dev.kiln/keepalive";
/// On a keepalive lease: its lifetime in seconds (with its creation time,
/// when it lapses; containerd may keep an expired one until its next GC).
pub(crate) const KEEPALIVE_SECS_LABEL: &str = "dev.kiln/keepalive.secs";

/// How long a build's protection lasts without renewal, and how often it is
/// renewed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    pub expiry: Duration,
    pub refresh: Duration,
}

impl Default for LeaseTiming {
    fn default() -> Self {
        LeaseTiming {
            expiry: crate::build::BUILD_LEASE_EXPIRY,
            refresh: Duration::from_secs(300),
        }
    }
}

/// What a build has added to its lease. Cache hits share resources (the
/// base image's blobs, the layers below each hit), and each addition is a
/// write transaction (an fsync) in containerd's metadata store: a build
/// adds each resource once (a second caller waits for the first's answer),
/// and the new ones of one call at once.
#[derive(Debug, Default)]
pub struct Added(std::sync::Mutex<HashMap<ResourceKey, Arc<tokio::sync::OnceCell<()>>>>);

/// A lease resource as containerd names it: (type, id).
type ResourceKey = (String, String);

impl Added {
    /// Adds to `lease` those of `resources` this build has not added yet.
    /// A resource counts as added once containerd has answered; after a
    /// failure the next caller tries again.
    pub async fn add(
        &self,
        leases: &dyn Leases,
        lease: &LeaseId,
        resources: &[LeaseResource],
    ) -> Result<()> {
        let cells: Vec<(&LeaseResource, Arc<tokio::sync::OnceCell<()>>)> = {
            let mut added = self.0.lock().unwrap_or_else(|p| p.into_inner());
            let mut seen = HashSet::new();
            resources
                .iter()
                .filter(|r| seen.insert((r.resource_type(), r.id().to_string())))
                .map(|r| {
                    let key = (r.resource_type(), r.id().to_string());
                    (r, added.entry(key).or_default().clone())
                })
                .collect()
        };
        futures_util::future::try_join_all(
            cells
                .iter()
                .map(|(r, cell)| cell.get_or_try_init(move || leases.add_resource(lease, r))),
        )
        .await?;
        Ok(())
    }
}

/// The keepalive prefix of build lease `lease`.
pub(crate) fn keepalive_prefix(lease: &LeaseId) -> String {
    let name = lease.as_str().rsplit('/').next().unwrap_or_default();
    format!("{}/", LeaseId::named("keepalive", name).as_str())
}

fn keepalive_id(prefix: &str, n: u64) -> LeaseId {
    LeaseId::named(
        "keepalive",
        &format!(
            "{}{n}",
            prefix.strip_prefix("kiln/keepalive/").unwrap_or(prefix)
        ),
    )
}

/// Renews a build's keepalive until stopped or dropped; then deletes it.
#[derive(Debug)]
pub struct Keepalive {
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Keepalive {
    /// Stops renewing and waits until the current keepalive is deleted.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for Keepalive {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn create_keepalive(
    leases: &dyn Leases,
    id: &LeaseId,
    timing: LeaseTiming,
    owner: &HashMap<String, String>,
) -> Result<()> {
    let mut labels = owner.clone();
    labels.insert(
        KEEPALIVE_SECS_LABEL.to_string(),
        timing.expiry.as_secs().max(1).to_string(),
    );
    leases
        .create(id, "keepalive", Some(timing.expiry), labels)
        .await?;
    Ok(())
}

/// Creates build lease `lease` (no expiry, owned by this process), current
/// as its own keepalive for `timing.expiry`, and starts renewing it with
/// keepalive leases from the first refresh on.
pub async fn create_build_lease(
    leases: Arc<dyn Leases>,
    lease: &LeaseId,
    timing: LeaseTiming,
) -> Result<Keepalive> {
    let owner = crate::sweep::owner_labels();
    let prefix = keepalive_prefix(lease);
    let mut labels = owner.clone();
    labels.insert(KEEPALIVE_LABEL.to_string(), prefix.clone());
    labels.insert(
        KEEPALIVE_SECS_LABEL.to_string(),
        timing.expiry.as_secs().max(1).to_string(),
    );
    leases.create(lease, "build", None, labels).await?;
    let stop = CancellationToken::new();
    let token = stop.clone();
    let task = tokio::spawn(async move {
        let mut current: Option<LeaseId> = None;
        let mut n = 0;
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tokio::time::sleep(timing.refresh) => {}
            }
            n += 1;
            let next = keepalive_id(&prefix, n);
            // The next one first, so one is always current.
            match create_keepalive(&*leases, &next, timing, &owner).await {
                Ok(()) => {
                    if let Some(old) = current.replace(next) {
                        if let Err(e) = leases.delete(&old, false).await {
                            tracing::warn!(lease = %old, error = %e, "cannot delete an old keepalive");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(lease = %next, error = %e, "cannot renew a build's keepalive")
                }
            }
        }
        if let Some(current) = current {
            if let Err(e) = leases.delete(&current, false).await {
                tracing::warn!(lease = %current, error = %e, "cannot delete a build's keepalive");
            }
        }
    });
    Ok(Keepalive {
        stop,
        task: Some(task),
    })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Whether keepalive lease `l` is still current.
fn keepalive_current(l: &LeaseInfo, now: u64) -> bool {
    let secs = l
        .labels
        .get(KEEPALIVE_SECS_LABEL)
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(0);
    l.created_secs.saturating_add(secs) >= now
}

/// Whether build lease `lease` is still within its own first lifetime
/// (before any keepalive lease is needed).
pub(crate) fn within_own_lifetime(lease: &LeaseInfo) -> bool {
    lease.labels.contains_key(KEEPALIVE_SECS_LABEL) && keepalive_current(lease, now_secs())
}

/// Whether build lease `lease` names a keepalive, is past its own first
/// lifetime, and none of whose keepalive leases in `all` is current.
/// Leases without a keepalive (older kiln) never lapse.
pub fn keepalive_lapsed(lease: &LeaseInfo, all: &[LeaseInfo]) -> bool {
    let Some(prefix) = lease.labels.get(KEEPALIVE_LABEL) else {
        return false;
    };
    let now = now_secs();
    !within_own_lifetime(lease)
        && !all
            .iter()
            .any(|l| l.id.starts_with(prefix.as_str()) && keepalive_current(l, now))
}

/// The keepalive leases in `all` that belong to build lease `lease`.
pub fn keepalives_of<'a>(lease: &LeaseInfo, all: &'a [LeaseInfo]) -> Vec<&'a LeaseInfo> {
    match lease.labels.get(KEEPALIVE_LABEL) {
        Some(prefix) => all
            .iter()
            .filter(|l| l.id.starts_with(prefix.as_str()))
            .collect(),
        None => Vec::new(),
    }
}

/// Whether `l` is a keepalive lease.
pub fn is_keepalive(l: &LeaseInfo) -> bool {
    l.id.starts_with("kiln/keepalive/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, labels: &[(&str, &str)], created_secs: u64) -> LeaseInfo {
        LeaseInfo {
            id: id.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            created_secs,
        }
    }

    #[test]
    fn a_keepalive_is_current_for_its_lifetime_only() {
        let build = info("kiln/build/b", &[(KEEPALIVE_LABEL, "kiln/keepalive/b/")], 0);
        let now = now_secs();
        let fresh = info(
            "kiln/keepalive/b/4",
            &[(KEEPALIVE_SECS_LABEL, "600")],
            now - 10,
        );
        let stale = info(
            "kiln/keepalive/b/3",
            &[(KEEPALIVE_SECS_LABEL, "600")],
            now - 3600,
        );
        let other = info("kiln/keepalive/bb/0", &[(KEEPALIVE_SECS_LABEL, "600")], now);
        assert!(!keepalive_lapsed(&build, &[fresh.clone(), stale.clone()]));
        assert!(keepalive_lapsed(&build, std::slice::from_ref(&stale)));
        assert!(
            keepalive_lapsed(&build, std::slice::from_ref(&other)),
            "another build's keepalive does not count"
        );
        assert!(keepalive_lapsed(&build, &[]));
        assert_eq!(keepalives_of(&build, &[fresh, stale, other]).len(), 2);
        let legacy = info("kiln/build/old", &[], 0);
        assert!(!keepalive_lapsed(&legacy, &[]), "no keepalive, no lapse");
        let young = info(
            "kiln/build/y",
            &[
                (KEEPALIVE_LABEL, "kiln/keepalive/y/"),
                (KEEPALIVE_SECS_LABEL, "600"),
            ],
            now - 10,
        );
        assert!(
            !keepalive_lapsed(&young, &[]),
            "a build lease is its own keepalive for its first lifetime"
        );
        let old_own = info(
            "kiln/build/o",
            &[
                (KEEPALIVE_LABEL, "kiln/keepalive/o/"),
                (KEEPALIVE_SECS_LABEL, "600"),
            ],
            now - 3600,
        );
        assert!(keepalive_lapsed(&old_own, &[]), "and no longer");
    }

    /// Counts additions; nothing else is asked of it.
    #[derive(Default)]
    struct CountingLeases(std::sync::Mutex<Vec<String>>);

    #[async_trait::async_trait]
    impl Leases for CountingLeases {
        async fn create(
            &self,
            _: &LeaseId,
            _: &str,
            _: Option<Duration>,
            _: HashMap<String, String>,
        ) -> kiln_snapshot::Result<()> {
            Ok(())
        }
        async fn create_referencing(
            &self,
            _: &LeaseId,
            _: &str,
            _: HashMap<String, String>,
        ) -> kiln_snapshot::Result<()> {
            Ok(())
        }
        async fn delete(&self, _: &LeaseId, _: bool) -> kiln_snapshot::Result<()> {
            Ok(())
        }
        async fn add_resource(&self, _: &LeaseId, r: &LeaseResource) -> kiln_snapshot::Result<()> {
            self.0.lock().expect("lock").push(r.id().to_string());
            Ok(())
        }
        async fn list_resources(&self, _: &LeaseId) -> kiln_snapshot::Result<Vec<LeaseResource>> {
            Ok(Vec::new())
        }
        async fn list(&self) -> kiln_snapshot::Result<Vec<LeaseInfo>> {
            Ok(Vec::new())
        }
        async fn get(&self, _: &LeaseId) -> kiln_snapshot::Result<Option<LeaseInfo>> {
            Ok(None)
        }
        async fn gc(&self) -> kiln_snapshot::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_build_adds_each_resource_to_its_lease_once() {
        let leases = CountingLeases::default();
        let lease = LeaseId::named("build", "b");
        let added = Added::default();
        let blob = LeaseResource::Content("sha256:base".into());
        let snap = |k: &str| LeaseResource::Snapshot {
            snapshotter: "overlayfs".into(),
            key: k.into(),
        };
        added
            .add(&leases, &lease, &[snap("a"), blob.clone(), blob.clone()])
            .await
            .expect("add");
        added
            .add(&leases, &lease, &[snap("b"), blob.clone(), snap("a")])
            .await
            .expect("add");
        let mut got = leases.0.lock().expect("lock").clone();
        got.sort();
        assert_eq!(got, ["a", "b", "sha256:base"]);
        // A snapshot and a blob of the same id are different resources.
        added
            .add(&leases, &lease, &[LeaseResource::Content("a".into())])
            .await
            .expect("add");
        assert_eq!(leases.0.lock().expect("lock").len(), 4);
    }

    #[test]
    fn keepalive_ids_follow_the_build_lease() {
        let l = LeaseId::named("build", "abc");
        let p = keepalive_prefix(&l);
        assert_eq!(p, "kiln/keepalive/abc/");
        assert_eq!(keepalive_id(&p, 7).as_str(), "kiln/keepalive/abc/7");
    }
}
