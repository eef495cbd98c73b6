//! Leases: what protects kiln's objects from containerd's GC.
//!
//! kiln's lease IDs start with [`LEASE_PREFIX`] and carry
//! [`LEASE_OWNER_LABEL`], so kiln never touches a lease it did not make.

use super::Containerd;
use crate::error::Result;
use containerd_client::services::v1::leases_client::LeasesClient;
use containerd_client::services::v1::{
    AddResourceRequest, CreateRequest, DeleteRequest, ListRequest, ListResourcesRequest, Resource,
};
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

/// Prefix of every lease kiln creates.
pub const LEASE_PREFIX: &str = "kiln/";
/// Label marking a lease as kiln's; its value names the purpose.
pub const LEASE_OWNER_LABEL: &str = "dev.kiln/owner";
pub(crate) const EXPIRE_LABEL: &str = "containerd.io/gc.expire";
pub(crate) const FLAT_LABEL: &str = "containerd.io/gc.flat";

/// A lease ID (always with the `kiln/` prefix).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct LeaseId(String);

impl LeaseId {
    /// A new unique lease ID `kiln/<kind>/<random>`.
    pub fn unique(kind: &str) -> Self {
        LeaseId(format!(
            "{LEASE_PREFIX}{kind}/{}",
            super::content::random_hex(12)
        ))
    }

    /// A lease ID derived from a name, e.g. a cache record key.
    pub fn named(kind: &str, name: &str) -> Self {
        LeaseId(format!("{LEASE_PREFIX}{kind}/{name}"))
    }

    /// A kiln lease ID from its text; `None` for leases kiln does not own.
    pub fn from_kiln(id: &str) -> Option<Self> {
        id.starts_with(LEASE_PREFIX)
            .then(|| LeaseId(id.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for LeaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One lease as containerd lists it.
#[derive(Clone, Debug)]
pub struct LeaseInfo {
    pub id: String,
    pub labels: HashMap<String, String>,
    /// Creation time, seconds since the epoch.
    pub created_secs: u64,
}

impl LeaseInfo {
    /// Whether the lease has an expiry label (and so cannot outlive it).
    pub fn expires(&self) -> bool {
        self.labels.contains_key(EXPIRE_LABEL)
    }
}

fn convert(l: containerd_client::services::v1::Lease) -> LeaseInfo {
    LeaseInfo {
        created_secs: l.created_at.map(|t| t.seconds.max(0) as u64).unwrap_or(0),
        id: l.id,
        labels: l.labels,
    }
}

impl Containerd {
    fn leases(&self) -> LeasesClient<containerd_client::tonic::transport::Channel> {
        LeasesClient::new(self.channel())
    }

    /// Creates a flat kiln lease; with `expire`, containerd drops it after
    /// that long even if kiln dies.
    pub async fn lease_create(
        &self,
        id: &LeaseId,
        purpose: &str,
        expire: Option<Duration>,
        extra_labels: HashMap<String, String>,
    ) -> Result<()> {
        self.lease_create_with(id, purpose, expire, true, extra_labels)
            .await
    }

    /// Creates a kiln lease without expiry that is *not* flat: containerd
    /// also holds what its objects' `containerd.io/gc.ref.*` labels
    /// reference (see [`crate::services::Leases::create_referencing`]).
    pub async fn lease_create_referencing(
        &self,
        id: &LeaseId,
        purpose: &str,
        extra_labels: HashMap<String, String>,
    ) -> Result<()> {
        self.lease_create_with(id, purpose, None, false, extra_labels)
            .await
    }

    async fn lease_create_with(
        &self,
        id: &LeaseId,
        purpose: &str,
        expire: Option<Duration>,
        flat: bool,
        extra_labels: HashMap<String, String>,
    ) -> Result<()> {
        let mut labels = extra_labels;
        labels.insert(LEASE_OWNER_LABEL.into(), purpose.into());
        if flat {
            labels.insert(FLAT_LABEL.into(), "true".into());
        } else {
            labels.remove(FLAT_LABEL);
        }
        if let Some(d) = expire {
            labels.insert(
                EXPIRE_LABEL.into(),
                crate::time::rfc3339(SystemTime::now() + d, false),
            );
        }
        self.leases()
            .create(self.request(
                CreateRequest {
                    id: id.0.clone(),
                    labels,
                },
                None,
            ))
            .await
            .map_err(|s| self.status_error("Leases.Create", id.as_str(), s))?;
        Ok(())
    }

    /// Deletes a kiln lease; with `sync`, waits for a GC run.
    pub async fn lease_delete(&self, id: &LeaseId, sync: bool) -> Result<()> {
        match self
            .leases()
            .delete(self.request(
                DeleteRequest {
                    id: id.0.clone(),
                    sync,
                },
                None,
            ))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) => {
                let e = self.status_error("Leases.Delete", id.as_str(), s);
                if e.is_not_found() {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Adds a resource (`content` with a digest, `snapshots/<snapshotter>`
    /// with a key) to a lease. containerd does not check the object exists.
    pub async fn lease_add_resource(&self, id: &LeaseId, rtype: &str, rid: &str) -> Result<()> {
        self.leases()
            .add_resource(self.request(
                AddResourceRequest {
                    id: id.0.clone(),
                    resource: Some(Resource {
                        id: rid.to_string(),
                        r#type: rtype.to_string(),
                    }),
                },
                None,
            ))
            .await
            .map_err(|s| self.status_error("Leases.AddResource", id.as_str(), s))?;
        Ok(())
    }

    /// The resources lease `id` holds, as containerd names them: `(type,
    /// id)` pairs (`content` with a digest, `snapshots/<snapshotter>` with
    /// a key, `ingests` with a ref). A missing lease is `NotFound`.
    pub async fn lease_list_resources(&self, id: &LeaseId) -> Result<Vec<(String, String)>> {
        let r = self
            .leases()
            .list_resources(self.request(ListResourcesRequest { id: id.0.clone() }, None))
            .await
            .map_err(|s| self.status_error("Leases.ListResources", id.as_str(), s))?;
        Ok(r.into_inner()
            .resources
            .into_iter()
            .map(|r| (r.r#type, r.id))
            .collect())
    }

    /// Lists the leases kiln owns in this namespace (others are ignored).
    pub async fn lease_list_kiln(&self) -> Result<Vec<LeaseInfo>> {
        let r = self
            .leases()
            .list(self.request(
                ListRequest {
                    filters: vec![format!("labels.\"{LEASE_OWNER_LABEL}\"")],
                },
                None,
            ))
            .await
            .map_err(|s| self.status_error("Leases.List", "", s))?;
        Ok(r.into_inner()
            .leases
            .into_iter()
            .filter(|l| l.id.starts_with(LEASE_PREFIX))
            .map(convert)
            .collect())
    }

    /// The kiln lease `id`, if it exists.
    pub async fn lease_get_kiln(&self, id: &LeaseId) -> Result<Option<LeaseInfo>> {
        let r = self
            .leases()
            .list(self.request(
                ListRequest {
                    filters: vec![format!("id==\"{}\"", id.as_str())],
                },
                None,
            ))
            .await
            .map_err(|s| self.status_error("Leases.List", id.as_str(), s))?;
        Ok(r.into_inner()
            .leases
            .into_iter()
            .find(|l| l.id == id.as_str() && l.labels.contains_key(LEASE_OWNER_LABEL))
            .map(convert))
    }

    /// Runs containerd's GC synchronously (create and sync-delete an empty
    /// lease, as BuildKit does).
    pub async fn gc(&self) -> Result<()> {
        let id = LeaseId::unique("gc");
        self.lease_create(&id, "gc", Some(Duration::from_secs(60)), HashMap::new())
            .await?;
        self.lease_delete(&id, true).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_carry_the_prefix() {
        assert!(LeaseId::unique("build").as_str().starts_with("kiln/build/"));
        assert_eq!(LeaseId::named("cache", "x").as_str(), "kiln/cache/x");
    }
}
