//! One run of a cache key at a time, across processes: claims in
//! containerd.
//!
//! The solver runs equal keys of one process once; builds in other
//! processes (another `kiln build`, another kilnd on the same containerd)
//! would each run the step again, and since keys downstream follow each
//! run's output, their later steps would miss the cache too. So on a cache
//! miss a build *claims* the key: it creates the lease
//! `kiln/claim/<key hex>`, which holds nothing. containerd creates a lease
//! atomically, so one build holds the claim; the others get
//! `AlreadyExists` and wait, polling (50 ms, doubling up to 500 ms) for
//! the holder's cache record, which the holder saves before it deletes the
//! claim, and load it as a hit. A claim that vanishes without a record
//! (the holder's step failed or was cancelled) is claimed by the next one,
//! which then runs the step itself.
//!
//! A claim names its holder: the build lease, that build's keepalive
//! (`lease.rs`) and its process (`sweep::owner_labels`). It is *stale*
//! when the process is dead on this host or, wherever it ran, when the
//! build lease is gone or, past the build lease's own first lifetime, its
//! keepalive lapsed (read from the leases' own labels: containerd may not
//! have collected an expired one yet). A
//! waiter deletes a stale claim and takes over; the sweep deletes stale
//! claims nobody waits for. containerd has no compare-and-delete, so two
//! waiters taking over one stale claim at the same instant may both run
//! the step, as they would without claims; the later record save is then a
//! no-op.

use crate::error::{Result, WorkerError};
use kiln_snapshot::containerd::{LeaseId, LeaseInfo, LEASE_PREFIX};
use kiln_snapshot::services::Leases;
use kiln_solver::Digest;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The lease kind of claims (`kiln/claim/...`).
pub const LEASE_KIND: &str = "claim";
/// On a claim: the build lease of its holder.
const HOLDER_LABEL: &str = "dev.kiln/claim.holder";

/// The first wait between two looks at a claim held by another build.
const FIRST_POLL: Duration = Duration::from_millis(50);
/// The longest wait between two looks.
const MAX_POLL: Duration = Duration::from_millis(500);
/// How often a waiter lists the namespace's leases to see whether the
/// holder's build lease and keepalive still stand (a holder on this host
/// is checked at every look, by its process).
const LIST_EVERY: Duration = Duration::from_secs(5);

/// The claim lease of `key`.
pub fn lease_for(key: &Digest) -> LeaseId {
    LeaseId::named(LEASE_KIND, key.hex())
}

/// Whether `l` is a claim.
pub fn is_claim(l: &LeaseInfo) -> bool {
    l.id.strip_prefix(LEASE_PREFIX)
        .is_some_and(|rest| rest.starts_with(&format!("{LEASE_KIND}/")))
}

/// The labels of a claim held by build lease `build`, in this process.
pub(crate) fn holder_labels(build: &LeaseId) -> HashMap<String, String> {
    let mut labels = crate::sweep::owner_labels();
    labels.insert(
        crate::lease::KEEPALIVE_LABEL.to_string(),
        crate::lease::keepalive_prefix(build),
    );
    labels.insert(HOLDER_LABEL.to_string(), build.as_str().to_string());
    labels
}

/// Whether claim `claim`'s holder is gone: its process is dead on this
/// host, or (a process elsewhere) its build lease is not in `all` or is
/// past its own first lifetime with its keepalive lapsed. `all` is every
/// kiln lease of the namespace.
pub fn is_stale(claim: &LeaseInfo, all: &[LeaseInfo]) -> bool {
    if crate::sweep::owner_is_dead(claim) {
        return true;
    }
    if crate::sweep::owner_is_alive_here(claim) {
        return false;
    }
    let build = claim
        .labels
        .get(HOLDER_LABEL)
        .and_then(|b| all.iter().find(|l| l.id == *b));
    match build {
        None => true,
        Some(b) => {
            !crate::lease::within_own_lifetime(b) && crate::lease::keepalive_lapsed(claim, all)
        }
    }
}

/// The right to run one key, held until [`Claim::release`]. Dropped
/// without a release (a panicking step), it is deleted in the background.
pub struct Claim {
    leases: Arc<dyn Leases>,
    id: LeaseId,
    holder: String,
    released: bool,
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim")
            .field("id", &self.id)
            .field("holder", &self.holder)
            .finish_non_exhaustive()
    }
}

impl Claim {
    /// Deletes the claim: the waiting builds look for the record (saved
    /// by now, if the step succeeded) or claim the key themselves.
    pub async fn release(mut self) {
        self.released = true;
        delete_held(&*self.leases, &self.id, &self.holder).await;
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let (leases, id, holder) = (self.leases.clone(), self.id.clone(), self.holder.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { delete_held(&*leases, &id, &holder).await });
            }
            Err(_) => {
                tracing::warn!(lease = %id, "a claim outlived its runtime; the sweep removes it")
            }
        }
    }
}

/// Deletes claim `id` if `holder` still holds it: a claim another build
/// took over (ours looked stale) is theirs now.
async fn delete_held(leases: &dyn Leases, id: &LeaseId, holder: &str) {
    match leases.get(id).await {
        Ok(Some(l)) if l.labels.get(HOLDER_LABEL).map(String::as_str) == Some(holder) => {
            if let Err(e) = leases.delete(id, false).await {
                tracing::warn!(lease = %id, error = %e, "cannot release a claim");
            }
        }
        Ok(_) => tracing::debug!(lease = %id, "claim already gone or taken over"),
        Err(e) => tracing::warn!(lease = %id, error = %e, "cannot release a claim"),
    }
}

/// What [`acquire`] got.
#[derive(Debug)]
pub enum Acquired<T> {
    /// This build runs the key.
    Ours(Claim),
    /// Another build ran it meanwhile: what `lookup` found.
    Answered(T),
}

/// Claims `key` for build lease `build`, or waits while another build
/// holds it. `lookup` looks for the key's cache record (a hit ends the
/// wait); `on_wait` is called once, when this build starts waiting.
/// Stops with [`WorkerError::Cancelled`] when `cancel` fires.
pub async fn acquire<T, W, WF, L, LF>(
    leases: &Arc<dyn Leases>,
    key: &Digest,
    build: &LeaseId,
    cancel: &CancellationToken,
    on_wait: W,
    mut lookup: L,
) -> Result<Acquired<T>>
where
    W: FnOnce() -> WF,
    WF: Future<Output = ()>,
    L: FnMut() -> LF,
    LF: Future<Output = Result<Option<T>>>,
{
    let id = lease_for(key);
    let labels = holder_labels(build);
    let mut on_wait = Some(on_wait);
    let mut delay = FIRST_POLL;
    let mut next_list = Instant::now();
    loop {
        if cancel.is_cancelled() {
            return Err(WorkerError::Cancelled);
        }
        match leases.create(&id, LEASE_KIND, None, labels.clone()).await {
            Ok(()) => {
                let claim = Claim {
                    leases: leases.clone(),
                    id: id.clone(),
                    holder: build.as_str().to_string(),
                    released: false,
                };
                // The previous holder may have saved its record and let go
                // between the caller's miss and this claim.
                return match lookup().await {
                    Ok(Some(found)) => {
                        claim.release().await;
                        Ok(Acquired::Answered(found))
                    }
                    Ok(None) => Ok(Acquired::Ours(claim)),
                    Err(e) => {
                        claim.release().await;
                        Err(e)
                    }
                };
            }
            Err(e) if e.is_already_exists() => {}
            Err(e) => return Err(e.into()),
        }
        // The holder saves its record before it lets go.
        if let Some(found) = lookup().await? {
            return Ok(Acquired::Answered(found));
        }
        if let Some(held) = leases.get(&id).await? {
            let stale = if crate::sweep::owner_is_dead(&held) {
                true
            } else if !crate::sweep::owner_is_alive_here(&held) && Instant::now() >= next_list {
                next_list = Instant::now() + LIST_EVERY;
                is_stale(&held, &leases.list().await?)
            } else {
                false
            };
            if stale {
                tracing::info!(lease = %id, holder = ?held.labels.get(HOLDER_LABEL), "taking over a stale claim");
                let holder = held.labels.get(HOLDER_LABEL).cloned().unwrap_or_default();
                delete_held(&**leases, &id, &holder).await;
                continue;
            }
        }
        if let Some(f) = on_wait.take() {
            tracing::debug!(lease = %id, "waiting for another build running this step");
            f().await;
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(WorkerError::Cancelled),
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(MAX_POLL);
    }
}

/// Deletes the stale claims in `all` (every kiln lease of the namespace).
pub async fn sweep(leases: &dyn Leases, all: &[LeaseInfo]) -> Result<()> {
    for claim in all.iter().filter(|l| is_claim(l)) {
        if !is_stale(claim, all) {
            continue;
        }
        let holder = claim.labels.get(HOLDER_LABEL).cloned().unwrap_or_default();
        if let Some(id) = LeaseId::from_kiln(&claim.id) {
            tracing::info!(lease = %id, "deleting a stale claim");
            delete_held(leases, &id, &holder).await;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, labels: HashMap<String, String>, created_secs: u64) -> LeaseInfo {
        LeaseInfo {
            id: id.into(),
            labels,
            created_secs,
        }
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
    }

    #[test]
    fn claims_are_told_from_other_leases() {
        let key = Digest::of(b"k");
        let id = lease_for(&key);
        assert_eq!(id.as_str(), format!("kiln/claim/{}", key.hex()));
        assert!(is_claim(&info(id.as_str(), HashMap::new(), 0)));
        assert!(!is_claim(&info("kiln/cache/abc", HashMap::new(), 0)));
        assert!(!is_claim(&info("kiln/claimx/abc", HashMap::new(), 0)));
    }

    #[test]
    fn a_claim_is_stale_when_its_holder_is_gone() {
        let build = LeaseId::named("build", "b1");
        let mine = holder_labels(&build);
        let claim_id = "kiln/claim/k";
        let build_info = info(build.as_str(), HashMap::new(), now());

        // This process holds it: never stale, whatever else is listed.
        assert!(!is_stale(&info(claim_id, mine.clone(), now()), &[]));

        // A dead process on this host: stale at once.
        let mut dead = mine.clone();
        dead.insert(crate::sweep::START_LABEL.into(), "1".into());
        assert!(is_stale(
            &info(claim_id, dead, now()),
            std::slice::from_ref(&build_info)
        ));

        // Another host: stale when its build lease is gone or its
        // keepalive lapsed, current otherwise.
        let mut elsewhere = mine.clone();
        elsewhere.insert(crate::sweep::HOST_LABEL.into(), "another-host".into());
        let claim = info(claim_id, elsewhere, now());
        let keepalive = |created: u64| {
            let mut l = HashMap::new();
            l.insert(
                crate::lease::KEEPALIVE_SECS_LABEL.to_string(),
                "600".to_string(),
            );
            info("kiln/keepalive/b1/0", l, created)
        };
        assert!(!is_stale(&claim, &[build_info.clone(), keepalive(now())]));
        assert!(is_stale(
            &claim,
            &[build_info.clone(), keepalive(now() - 3600)]
        ));
        assert!(is_stale(&claim, &[keepalive(now())]), "no build lease");
        assert!(is_stale(&claim, std::slice::from_ref(&build_info)));
        // A build lease is its own keepalive for its first lifetime.
        let young_build = |created: u64| {
            let mut l = HashMap::new();
            l.insert(
                crate::lease::KEEPALIVE_SECS_LABEL.to_string(),
                "600".to_string(),
            );
            info(build.as_str(), l, created)
        };
        assert!(!is_stale(&claim, &[young_build(now())]));
        assert!(is_stale(&claim, &[young_build(now() - 3600)]));
    }
}
