//! `RUN --mount=type=cache`: directories that persist across builds and
//! processes as containerd snapshots.
//!
//! Each cache id is one active snapshot, `kiln-cachemount-<hash>`, held by a
//! lease without expiry, `kiln/cache/mount-<hash>`, which `kiln du` lists
//! and `kiln prune` removes like any cache record, except while a build
//! that mounted it runs (its lease holds the snapshot too: `inuse.rs`).
//! Sharing modes use file locks in the state directory, so they hold
//! across kiln processes:
//! `shared` takes a shared lock, `locked` an exclusive one (waiting), and
//! `private` an exclusive one without waiting, falling back to a fresh
//! snapshot of its own when the cache is busy.
//!
//! A cache mount may have a base (LLB's mount input): BuildKit's frontend
//! gives one when the mount has `from=`, or `uid`/`gid`/`mode` (a
//! `/cache` directory made with them on scratch, mounted through the
//! selector `/cache`). As in BuildKit, a new cache starts as a copy of
//! its base, and each (id, base) pair is its own cache.

use super::layer::HostMount;
use super::StepRunner;
use crate::error::{Result, WorkerError};
use crate::refs::{self, Layer};
use kiln_snapshot::containerd::LeaseId;
use kiln_snapshot::Digest;
use kiln_solver::CacheSharing;
use nix::fcntl::{Flock, FlockArg};
use std::collections::HashMap;
use std::fs::File;
use std::path::PathBuf;

/// The lease name of a cache mount: `kiln/cache/mount-<hash>`.
const LEASE_NAME_PREFIX: &str = "mount-";
/// The snapshot key of a cache mount: `kiln-cachemount-<hash>`.
const SNAPSHOT_PREFIX: &str = "kiln-cachemount-";

/// The snapshot of the cache mount whose record lease is `lease`; `None`
/// for a lease that is not a cache mount's.
pub(crate) fn snapshot_of(lease: &str) -> Option<String> {
    let prefix = LeaseId::named(crate::cache::LEASE_KIND, LEASE_NAME_PREFIX);
    let hash = lease.strip_prefix(prefix.as_str())?;
    Some(format!("{SNAPSHOT_PREFIX}{hash}"))
}

/// What a step holds while it uses a cache mount.
pub(crate) struct HeldCacheMount {
    mount: Option<HostMount>,
    _lock: Option<Flock<File>>,
    /// A private fallback snapshot to remove afterwards.
    temporary: Option<String>,
}

impl StepRunner {
    /// Mounts the cache `id` on the host and returns the path to bind into
    /// the step (`selector` inside the cache), with what must be held
    /// until the step ends. A new cache starts as a copy of `base`.
    pub(super) async fn cache_mount(
        &self,
        id: &str,
        sharing: CacheSharing,
        base: &[Layer],
        selector: &str,
        location: &str,
    ) -> Result<(PathBuf, HeldCacheMount)> {
        let parent = refs::top_snapshot(base);
        // Without a base the key is the id alone, as before bases existed.
        let cache_key = if parent.is_empty() {
            id.to_string()
        } else {
            format!("{id}:{parent}")
        };
        let hash = Digest::of(cache_key.as_bytes()).hex()[..32].to_string();
        let lease = LeaseId::named(
            crate::cache::LEASE_KIND,
            &format!("{LEASE_NAME_PREFIX}{hash}"),
        );
        let key = format!("{SNAPSHOT_PREFIX}{hash}");
        let lock = self.lock_cache_mount(&hash, sharing).await?;
        let (key, temporary, lease_for_prepare) = match (&lock, sharing) {
            (None, CacheSharing::Private) => {
                // Busy: this user gets a fresh cache of its own.
                let k = format!("kiln-cachemount-private-{}", crate::base::rand_hex());
                (k.clone(), Some(k), self.lease.clone())
            }
            _ => (key, None, lease.clone()),
        };
        if temporary.is_none() {
            let mut labels = HashMap::new();
            labels.insert(
                crate::cache::TYPE_LABEL.to_string(),
                crate::cache::TYPE_CACHE_MOUNT.to_string(),
            );
            labels.insert(crate::cache::SIZE_LABEL.to_string(), "0".to_string());
            labels.insert(
                crate::cache::DESCRIPTION_LABEL.to_string(),
                format!("cached mount {id}"),
            );
            match self
                .svc
                .leases
                .create(&lease, crate::cache::LEASE_KIND, None, labels)
                .await
            {
                Ok(()) => {}
                Err(e) if e.is_already_exists() => {}
                Err(e) => return Err(e.into()),
            }
            // In use while the build runs (`inuse.rs`): a prune meanwhile
            // leaves the record alone, and could not take the snapshot
            // from under the step anyway.
            self.svc
                .leases
                .add_resource(
                    &self.lease,
                    &kiln_snapshot::services::LeaseResource::snapshot(&*self.svc.snapshots, &key),
                )
                .await?;
        }
        let mounts = match self
            .svc
            .snapshots
            .prepare(&key, &parent, &lease_for_prepare)
            .await
        {
            Ok(m) => m,
            Err(e) if e.is_already_exists() => self.svc.snapshots.mounts(&key).await?,
            Err(e) => return Err(e.into()),
        };
        let mount = self.mount(
            &format!("{key}-{}", crate::base::rand_hex()),
            &mounts,
            false,
        )?;
        let path = match within_cache(mount.path(), selector) {
            Ok(p) => p,
            Err(reason) => {
                drop(mount);
                if let Some(k) = &temporary {
                    if let Err(e) = self.svc.snapshots.remove(k).await {
                        tracing::warn!(key = %k, error = %e, "cannot remove private cache mount");
                    }
                }
                return Err(WorkerError::BadInput {
                    location: location.to_string(),
                    reason: format!("cache mount {id}: {reason}"),
                });
            }
        };
        Ok((
            path,
            HeldCacheMount {
                mount: Some(mount),
                _lock: lock,
                temporary,
            },
        ))
    }

    /// Takes the file lock that implements `sharing` (None when a private
    /// user found the cache busy).
    async fn lock_cache_mount(
        &self,
        hash: &str,
        sharing: CacheSharing,
    ) -> Result<Option<Flock<File>>> {
        let dir = self
            .mount_dir
            .parent()
            .map(|p| p.join("cachemount-locks"))
            .unwrap_or_default();
        std::fs::create_dir_all(&dir).map_err(|e| WorkerError::Io {
            path: dir.display().to_string(),
            source: e,
        })?;
        let path = dir.join(format!("{hash}.lock"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| WorkerError::Io {
                path: path.display().to_string(),
                source: e,
            })?;
        let arg = match sharing {
            CacheSharing::Shared => FlockArg::LockShared,
            CacheSharing::Locked => FlockArg::LockExclusive,
            CacheSharing::Private => FlockArg::LockExclusiveNonblock,
        };
        let locked = tokio::task::spawn_blocking(move || Flock::lock(file, arg))
            .await
            .map_err(|e| WorkerError::Io {
                path: path.display().to_string(),
                source: std::io::Error::other(e.to_string()),
            })?;
        match locked {
            Ok(l) => Ok(Some(l)),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) if sharing == CacheSharing::Private => {
                Ok(None)
            }
            Err((_, errno)) => Err(WorkerError::Io {
                path: path.display().to_string(),
                source: std::io::Error::from(errno),
            }),
        }
    }

    /// Unmounts cache mounts after a step and removes private fallbacks.
    pub(super) async fn release_cache_mounts(&self, held: Vec<HeldCacheMount>) {
        for mut h in held {
            drop(h.mount.take());
            if let Some(k) = h.temporary.take() {
                if let Err(e) = self.svc.snapshots.remove(&k).await {
                    tracing::warn!(key = %k, error = %e, "cannot remove private cache mount");
                }
            }
        }
    }
}

/// The directory `selector` names inside a mounted cache: it must exist
/// and be a directory there, reached without following a symlink (a base
/// image could otherwise point the mount anywhere on the host).
fn within_cache(root: &std::path::Path, selector: &str) -> std::result::Result<PathBuf, String> {
    let mut path = root.to_path_buf();
    for part in selector.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            return Err(format!("selector {selector:?} leaves the cache"));
        }
        path.push(part);
        match std::fs::symlink_metadata(&path) {
            Ok(md) if md.file_type().is_dir() => {}
            Ok(_) => return Err(format!("{selector:?} is not a directory in the cache")),
            Err(e) => return Err(format!("{selector:?}: {e}")),
        }
    }
    Ok(path)
}
