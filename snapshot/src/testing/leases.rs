//! [`Leases`] on the in-memory containerd: what holds objects, and GC.

use super::store::{rpc, Lease, MemContainerd};
use crate::containerd::{LeaseId, LeaseInfo, LEASE_OWNER_LABEL, LEASE_PREFIX};
use crate::containerd::{EXPIRE_LABEL, FLAT_LABEL};
use crate::error::Result;
use crate::services::{LeaseResource, Leases};
use async_trait::async_trait;
use kiln_types::Digest;
use kiln_types::ErrorKind;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

fn secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

fn info(id: &str, l: &Lease) -> LeaseInfo {
    LeaseInfo {
        id: id.to_string(),
        labels: l.labels.clone(),
        created_secs: l.created_secs,
    }
}

fn is_kiln(id: &str, l: &Lease) -> bool {
    id.starts_with(LEASE_PREFIX) && l.labels.contains_key(LEASE_OWNER_LABEL)
}

impl MemContainerd {
    fn create_lease(
        &self,
        id: &LeaseId,
        purpose: &str,
        expire: Option<Duration>,
        flat: bool,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        self.injected("Leases.Create", id.as_str())?;
        let now = SystemTime::now();
        let mut labels = labels;
        labels.insert(LEASE_OWNER_LABEL.into(), purpose.into());
        if flat {
            labels.insert(FLAT_LABEL.into(), "true".into());
        } else {
            labels.remove(FLAT_LABEL);
        }
        // The label has whole seconds, and containerd reads the label.
        let expires = expire.map(|d| UNIX_EPOCH + Duration::from_secs(secs(now + d)));
        if let Some(e) = expires {
            labels.insert(EXPIRE_LABEL.into(), crate::time::rfc3339(e, false));
        }
        self.with_ns(|ns| {
            if ns.leases.contains_key(id.as_str()) {
                return Err(rpc(
                    "Leases.Create",
                    id.as_str(),
                    ErrorKind::AlreadyExists,
                    &format!("lease {id}: already exists"),
                ));
            }
            ns.leases.insert(
                id.as_str().to_string(),
                Lease {
                    labels,
                    created_secs: secs(now),
                    expires,
                    flat,
                    content: HashSet::new(),
                    snapshots: HashSet::new(),
                },
            );
            Ok(())
        })
    }
}

#[async_trait]
impl Leases for MemContainerd {
    async fn create(
        &self,
        id: &LeaseId,
        purpose: &str,
        expire: Option<Duration>,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        self.create_lease(id, purpose, expire, true, labels)
    }

    async fn create_referencing(
        &self,
        id: &LeaseId,
        purpose: &str,
        labels: HashMap<String, String>,
    ) -> Result<()> {
        self.create_lease(id, purpose, None, false, labels)
    }

    async fn delete(&self, id: &LeaseId, sync: bool) -> Result<()> {
        self.injected("Leases.Delete", id.as_str())?;
        // containerd answers NotFound (which the proxy ignores) before any GC.
        let existed = self.with_ns(|ns| ns.leases.remove(id.as_str())).is_some();
        if sync && existed {
            self.collect();
        }
        Ok(())
    }

    async fn add_resource(&self, id: &LeaseId, resource: &LeaseResource) -> Result<()> {
        self.injected("Leases.AddResource", id.as_str())?;
        let snapshotter = self.snapshotter_name().to_string();
        self.with_ns(|ns| {
            let lease = ns.lease_mut("Leases.AddResource", id.as_str(), id)?;
            match resource {
                LeaseResource::Content(d) => {
                    if Digest::parse(d).is_none() {
                        return Err(rpc(
                            "Leases.AddResource",
                            id.as_str(),
                            ErrorKind::InvalidArgument,
                            &format!("invalid content digest {d:?}"),
                        ));
                    }
                    lease.content.insert(d.clone());
                }
                // A snapshot of another snapshotter is recorded by
                // containerd but holds nothing here: there is none.
                LeaseResource::Snapshot {
                    snapshotter: s,
                    key,
                } if *s == snapshotter => {
                    lease.snapshots.insert(key.clone());
                }
                LeaseResource::Snapshot { .. } => {}
            }
            Ok(())
        })
    }

    async fn list_resources(&self, id: &LeaseId) -> Result<Vec<LeaseResource>> {
        self.injected("Leases.ListResources", id.as_str())?;
        MemContainerd::list_resources(self, id).ok_or_else(|| {
            rpc(
                "Leases.ListResources",
                id.as_str(),
                ErrorKind::NotFound,
                &format!("lease {id:?}: not found"),
            )
        })
    }

    async fn list(&self) -> Result<Vec<LeaseInfo>> {
        self.injected("Leases.List", "")?;
        Ok(self.with_ns(|ns| {
            ns.leases
                .iter()
                .filter(|(id, l)| is_kiln(id, l))
                .map(|(id, l)| info(id, l))
                .collect()
        }))
    }

    async fn get(&self, id: &LeaseId) -> Result<Option<LeaseInfo>> {
        self.injected("Leases.List", id.as_str())?;
        Ok(self.with_ns(|ns| {
            ns.leases
                .get(id.as_str())
                .filter(|l| is_kiln(id.as_str(), l))
                .map(|l| info(id.as_str(), l))
        }))
    }

    async fn gc(&self) -> Result<()> {
        self.injected("Leases.Delete", "")?;
        self.collect();
        Ok(())
    }
}
