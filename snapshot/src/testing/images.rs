//! [`Images`] on the in-memory containerd: names pointing at a target,
//! each record a GC root.

use super::store::{rpc, MemContainerd};
use crate::containerd::{ImageRecord, LeaseId};
use crate::error::Result;
use crate::services::Images;
use async_trait::async_trait;
use kiln_types::Digest;
use kiln_types::ErrorKind;

/// containerd's checks of an image record (`validateImage`).
fn validate(record: &ImageRecord) -> Result<()> {
    let bad = |what: &str| {
        Err(rpc(
            "Images.Create",
            &record.name,
            ErrorKind::InvalidArgument,
            what,
        ))
    };
    if record.name.is_empty() {
        return bad("image name must not be empty");
    }
    if Digest::parse(&record.digest).is_none() {
        return bad(&format!("Target.Digest {:?} invalid", record.digest));
    }
    if record.size <= 0 {
        return bad("Target.Size must be greater than zero");
    }
    if record.media_type.is_empty() {
        return bad("Target.MediaType must be set");
    }
    Ok(())
}

#[async_trait]
impl Images for MemContainerd {
    async fn get(&self, name: &str) -> Result<ImageRecord> {
        self.injected("Images.Get", name)?;
        self.with_ns(|ns| {
            ns.images.get(name).cloned().ok_or_else(|| {
                rpc(
                    "Images.Get",
                    name,
                    ErrorKind::NotFound,
                    &format!("image {name:?}: not found"),
                )
            })
        })
    }

    /// Images are GC roots themselves; the lease is not needed for them.
    async fn put(&self, record: &ImageRecord, _lease: Option<&LeaseId>) -> Result<()> {
        self.injected("Images.Create", &record.name)?;
        validate(record)?;
        self.with_ns(|ns| {
            ns.images.insert(record.name.clone(), record.clone());
        });
        Ok(())
    }

    async fn delete(&self, name: &str, sync: bool) -> Result<()> {
        self.injected("Images.Delete", name)?;
        self.with_ns(|ns| match ns.images.remove(name) {
            Some(_) => Ok(()),
            None => Err(rpc(
                "Images.Delete",
                name,
                ErrorKind::NotFound,
                &format!("image {name:?}: not found"),
            )),
        })?;
        if sync {
            self.collect();
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<ImageRecord>> {
        self.injected("Images.List", "")?;
        Ok(self.with_ns(|ns| ns.images.values().cloned().collect()))
    }
}
