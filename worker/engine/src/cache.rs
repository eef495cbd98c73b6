//! Cache records that live in containerd.
//!
//! A record is the result of one vertex under its cache key: a JSON blob
//! in the content store listing the output layer chains, held together
//! with the chains' top snapshots and the layer blobs it lists by one lease
//! without expiry, `kiln/cache/<key hex>`. A step's layer is recorded
//! without a blob (diffID only); when an exporter makes its blob
//! ([`crate::blobs::ensure`]) the layer's snapshot names it in a GC label,
//! and the record's lease is not flat, so the blob lives as long as the
//! record (or anything else holding the snapshot). The lease's labels say what the record
//! is (`dev.kiln/cache.record` = the blob's digest, type, size,
//! description); the blob's label `dev.kiln/cache.lastused` says when it
//! was last used. So a record is found again by its key through containerd
//! alone, by any kiln process on the namespace; kiln's state directory
//! holds no cache data.

use crate::error::Result;
use crate::refs::{self, Blob, Layer};
use crate::services::Services;
use kiln_snapshot::containerd::{LeaseId, LeaseInfo};
use kiln_snapshot::services::{snapshot_exists, write_blob, LeaseResource};
use kiln_snapshot::Digest;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

pub const RECORD_LABEL: &str = "dev.kiln/cache.record";
pub const TYPE_LABEL: &str = "dev.kiln/cache.type";
pub const SIZE_LABEL: &str = "dev.kiln/cache.size";
pub const DESCRIPTION_LABEL: &str = "dev.kiln/cache.description";
pub const LAST_USED_LABEL: &str = "dev.kiln/cache.lastused";
/// On the record blob beside the last use: how many builds have used the
/// record (the one that made it counts), as BuildKit's usage count.
pub const USAGE_COUNT_LABEL: &str = "dev.kiln/cache.usagecount";
/// The lease kind of cache records (`kiln/cache/...`).
pub const LEASE_KIND: &str = "cache";

/// A record's kind, as `kiln du` and `prune --filter type=` name it.
pub const TYPE_REGULAR: &str = "regular";
pub const TYPE_CACHE_MOUNT: &str = "exec.cachemount";

/// One layer as a record stores it. Version 3 records a step's layer
/// without a blob (`digest` etc. absent) and with its uncompressed size;
/// versions 1 and 2 always have a blob.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct RecordLayer {
    diff_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    digest: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    size: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    uncompressed_size: Option<u64>,
    /// When the layer was made (RFC 3339); records written before kiln
    /// kept it have none and take the record's own creation time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    created: Option<String>,
}

/// The record version this kiln writes.
const RECORD_VERSION: u32 = 3;

/// The record blob.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct RecordBlob {
    version: u32,
    key: String,
    outputs: Vec<Vec<RecordLayer>>,
}

/// The lease of the record for `key`.
pub fn lease_for(key: &Digest) -> LeaseId {
    LeaseId::named(LEASE_KIND, key.hex())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The use of the records one build hit: last-use time and usage count,
/// written by [`Uses::write`] when the build lets go of its lease, not on
/// each hit's path (each write is a containerd write transaction, and a
/// no-op rebuild is made of hits). A record hit twice by one build counts
/// once.
#[derive(Debug, Default)]
pub struct Uses(std::sync::Mutex<HashMap<String, HashMap<String, String>>>);

impl Uses {
    fn note(&self, record: &str, labels: HashMap<String, String>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(record.to_string())
            .or_insert(labels);
    }

    /// Writes the uses noted so far (best effort, as the use time).
    pub async fn write(&self, svc: &Services) {
        let noted = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        for (record, labels) in noted {
            if let Err(e) = svc.content.set_labels(&record, labels).await {
                tracing::warn!(record = %record, error = %e, "cannot update cache record use time");
            }
        }
    }
}

/// Looks the record for `key` up. A hit is added to `build_lease` so it
/// cannot be pruned while the build uses it (`added`: what the build
/// added already, added once), and its use is noted in `uses`. A record
/// whose objects are gone is deleted and misses.
pub async fn load(
    svc: &Services,
    key: &Digest,
    build_lease: &LeaseId,
    added: &crate::lease::Added,
    uses: &Uses,
) -> Result<Option<Vec<Vec<Layer>>>> {
    let id = lease_for(key);
    let Some(lease) = svc.leases.get(&id).await? else {
        return Ok(None);
    };
    let Some(record) = lease.labels.get(RECORD_LABEL).cloned() else {
        return Ok(None);
    };
    // The lease, just read, names the blob and holds it: its bytes may
    // come from memory.
    let blob = match svc.read_small(&record).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => {
            forget(svc, &id, "record blob is gone").await;
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let Ok(parsed) = serde_json::from_slice::<RecordBlob>(&blob) else {
        forget(svc, &id, "record blob does not parse").await;
        return Ok(None);
    };
    // A version 1 record knows no layer times: its own creation stands
    // in. From version 2 a missing time means a base-image layer.
    let recorded = if lease.created_secs > 0 {
        UNIX_EPOCH + std::time::Duration::from_secs(lease.created_secs)
    } else {
        SystemTime::now()
    };
    let fallback = kiln_snapshot::time::rfc3339(recorded, true);
    let mut outputs = Vec::with_capacity(parsed.outputs.len());
    for chain in &parsed.outputs {
        let mut layers = Vec::with_capacity(chain.len());
        for l in chain {
            let Some(diff_id) = Digest::parse(&l.diff_id) else {
                forget(svc, &id, "record has a bad diffID").await;
                return Ok(None);
            };
            let blob = match (&l.media_type, &l.digest, l.size) {
                (Some(media_type), Some(digest), Some(size)) => Some(Blob {
                    media_type: media_type.clone(),
                    digest: digest.clone(),
                    size,
                }),
                (None, None, None) if parsed.version >= 3 => None,
                _ => {
                    forget(svc, &id, "record has a partial blob").await;
                    return Ok(None);
                }
            };
            layers.push(Layer {
                diff_id,
                blob,
                uncompressed_size: l.uncompressed_size,
                created: match (&l.created, parsed.version) {
                    (None, 1) => Some(fallback.clone()),
                    (c, _) => c.clone(),
                },
            });
        }
        outputs.push(layers);
    }
    // Protect the hit for the rest of the build, then check it is whole;
    // meanwhile bump its use.
    let protect = async {
        let mut resources = Vec::new();
        let mut tops = Vec::new();
        for chain in &outputs {
            let top = refs::top_snapshot(chain);
            if !top.is_empty() {
                resources.push(LeaseResource::snapshot(&*svc.snapshots, &top));
                tops.push(top);
            }
            for b in chain.iter().filter_map(|l| l.blob.as_ref()) {
                resources.push(LeaseResource::Content(b.digest.clone()));
            }
        }
        added.add(&*svc.leases, build_lease, &resources).await?;
        for top in &tops {
            if !snapshot_exists(&*svc.snapshots, top).await? {
                return Ok(false);
            }
        }
        Ok::<bool, crate::error::WorkerError>(true)
    };
    // The look at the record blob for its use count also tells whether
    // containerd still has it: its bytes may have come from memory.
    let bump = async {
        let mut labels = HashMap::new();
        labels.insert(LAST_USED_LABEL.to_string(), now_secs().to_string());
        // Best effort, as the use time: two builds hitting at once may
        // count one use.
        let used = match svc.content.info(&record).await {
            Ok(info) => usage_count(&info.labels),
            Err(e) if e.is_not_found() => {
                svc.memo.forget(&record);
                return false;
            }
            Err(_) => 0,
        };
        labels.insert(USAGE_COUNT_LABEL.to_string(), (used + 1).to_string());
        uses.note(&record, labels);
        true
    };
    let (whole, present) = tokio::join!(protect, bump);
    if !present {
        forget(svc, &id, "record blob is gone").await;
        return Ok(None);
    }
    if !whole? {
        forget(svc, &id, "snapshot is gone").await;
        return Ok(None);
    }
    Ok(Some(outputs))
}

/// How old a record must be before a missing part means it is broken
/// rather than still being written by another process.
const BROKEN_AFTER_SECS: u64 = 600;

/// Deletes a broken record's lease (kiln's own, by construction). A young
/// record may still be being written by another process: it is only
/// skipped (a miss), never deleted.
async fn forget(svc: &Services, id: &LeaseId, why: &str) {
    if let Ok(Some(info)) = svc.leases.get(id).await {
        if now_secs().saturating_sub(info.created_secs) < BROKEN_AFTER_SECS {
            tracing::debug!(lease = %id, why, "cache record incomplete (being written?); treated as a miss");
            return;
        }
    }
    tracing::warn!(lease = %id, why, "dropping broken cache record");
    if let Err(e) = svc.leases.delete(id, false).await {
        tracing::warn!(lease = %id, error = %e, "cannot delete broken cache record");
    }
}

/// Saves `outputs` as the record of `key`. When another build saved the
/// same key first, its record stays and this is a no-op: one record per
/// key, and neither build fails.
pub async fn save(
    svc: &Services,
    key: &Digest,
    outputs: &[Vec<Layer>],
    record_type: &str,
    description: &str,
) -> Result<()> {
    let blob = RecordBlob {
        version: RECORD_VERSION,
        key: key.to_string(),
        outputs: outputs
            .iter()
            .map(|chain| {
                chain
                    .iter()
                    .map(|l| RecordLayer {
                        diff_id: l.diff_id.to_string(),
                        media_type: l.blob.as_ref().map(|b| b.media_type.clone()),
                        digest: l.blob.as_ref().map(|b| b.digest.clone()),
                        size: l.blob.as_ref().map(|b| b.size),
                        uncompressed_size: l.uncompressed_size,
                        created: l.created.clone(),
                    })
                    .collect()
            })
            .collect(),
    };
    let bytes = serde_json::to_vec(&blob).map_err(|e| crate::error::WorkerError::BadInput {
        location: String::new(),
        reason: format!("cache record: {e}"),
    })?;
    let digest = Digest::of(&bytes);
    // The record's own layer is the top of its first output: its blob's
    // size, or for a layer without a blob (yet) the size of its
    // uncompressed tar, counted while its diffID was hashed. A blob made
    // later does not change the label: the record's size stays what it
    // was when the record was saved.
    let size = outputs
        .first()
        .and_then(|c| c.last())
        .map(|l| match (&l.blob, l.uncompressed_size) {
            (Some(b), _) => b.size,
            (None, Some(n)) => i64::try_from(n).unwrap_or(i64::MAX),
            (None, None) => 0,
        })
        .unwrap_or(0);
    let mut labels = HashMap::new();
    labels.insert(RECORD_LABEL.to_string(), digest.to_string());
    labels.insert(TYPE_LABEL.to_string(), record_type.to_string());
    labels.insert(SIZE_LABEL.to_string(), size.to_string());
    labels.insert(DESCRIPTION_LABEL.to_string(), truncate(description, 200));
    let id = lease_for(key);
    // Not flat: the snapshots' blob labels hold the blobs made later.
    match svc.leases.create_referencing(&id, LEASE_KIND, labels).await {
        Ok(()) => {}
        Err(e) if e.is_already_exists() => return Ok(()),
        Err(e) => return Err(e.into()),
    }
    let mut blob_labels = HashMap::new();
    blob_labels.insert(LAST_USED_LABEL.to_string(), now_secs().to_string());
    blob_labels.insert(USAGE_COUNT_LABEL.to_string(), "1".to_string());
    let digest = write_blob(&*svc.content, &bytes, blob_labels, &id).await?;
    // The next build's hit reads it by digest: from memory.
    svc.memo.put(digest.as_str(), bytes.into());
    for chain in outputs {
        let top = refs::top_snapshot(chain);
        if !top.is_empty() {
            svc.leases
                .add_resource(&id, &LeaseResource::snapshot(&*svc.snapshots, &top))
                .await?;
        }
        for b in chain.iter().filter_map(|l| l.blob.as_ref()) {
            svc.leases
                .add_resource(&id, &LeaseResource::Content(b.digest.clone()))
                .await?;
        }
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// A cache record as `kiln du` and `kiln prune` see it (and kilnd's
/// DiskUsage reports it).
#[derive(Clone, Debug)]
pub struct RecordInfo {
    pub lease: LeaseInfo,
    pub record_type: String,
    pub size: u64,
    pub description: String,
    /// Seconds since the epoch; the lease's creation when never used.
    pub last_used: u64,
    /// How many builds used it; 0 for a record that does not count (a
    /// cache mount) or was written before kiln counted.
    pub usage_count: u64,
    /// The lease IDs of the records whose layers this record's layer sits
    /// on (its parent chain's record, as BuildKit's parent refs); none
    /// when it sits on a base image or on scratch.
    pub parents: Vec<String>,
    /// What a build that uses the record holds in its lease: the committed
    /// snapshots of a step's outputs (each chain's top), or a cache
    /// mount's one snapshot.
    pub snapshots: Vec<String>,
    /// A running build holds it (or a record above it), in this process
    /// or another: BuildKit's `InUse`. Set by [`crate::prune::disk_usage`]
    /// ([`crate::inuse`]).
    pub in_use: bool,
    /// An image of the namespace has its layers (or a record above it is
    /// such a record): BuildKit's `Shared`. Set by
    /// [`crate::prune::disk_usage`] ([`crate::shared`]).
    pub shared: bool,
}

impl RecordInfo {
    /// A regular record `id` of `snapshots`, with nothing else set, for
    /// tests of the rules over records.
    #[cfg(test)]
    pub(crate) fn for_test(id: &str, snapshots: &[&str]) -> RecordInfo {
        RecordInfo {
            lease: kiln_snapshot::containerd::LeaseInfo {
                id: id.into(),
                labels: HashMap::new(),
                created_secs: 0,
            },
            record_type: TYPE_REGULAR.into(),
            size: 0,
            description: String::new(),
            last_used: 0,
            usage_count: 0,
            parents: Vec::new(),
            snapshots: snapshots.iter().map(|s| s.to_string()).collect(),
            in_use: false,
            shared: false,
        }
    }

    /// A cache mount is written in place by the steps that mount it
    /// (BuildKit's mutable refs); a step's result never changes.
    pub fn mutable(&self) -> bool {
        self.record_type == TYPE_CACHE_MOUNT
    }
}

fn usage_count(labels: &HashMap<String, String>) -> u64 {
    labels
        .get(USAGE_COUNT_LABEL)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The diffIDs of a record's first output, for finding its parent, and
/// the top snapshot of each output (none for an output on scratch).
fn outputs_of(blob: &[u8]) -> Option<(Vec<String>, Vec<String>)> {
    let parsed = serde_json::from_slice::<RecordBlob>(blob).ok()?;
    let tops = parsed
        .outputs
        .iter()
        .filter_map(|chain| {
            let ids: Option<Vec<Digest>> =
                chain.iter().map(|l| Digest::parse(&l.diff_id)).collect();
            Digest::chain_ids(&ids?).last().map(|d| d.to_string())
        })
        .collect();
    let first = parsed.outputs.into_iter().next()?;
    Some((first.into_iter().map(|l| l.diff_id).collect(), tops))
}

/// Each record's parents: the record whose first output is this one's
/// first output without its top layer. `chains[i]` is record `i`'s chain.
fn parents(chains: &[Option<Vec<String>>], ids: &[String]) -> Vec<Vec<String>> {
    let by_chain: HashMap<&[String], &String> = chains
        .iter()
        .zip(ids)
        .filter_map(|(c, id)| c.as_deref().map(|c| (c, id)))
        .filter(|(c, _)| !c.is_empty())
        .collect();
    chains
        .iter()
        .map(|c| {
            c.as_deref()
                .and_then(|c| c.split_last())
                .and_then(|(_, below)| by_chain.get(below))
                .map(|id| vec![(*id).clone()])
                .unwrap_or_default()
        })
        .collect()
}

/// Every cache record in the namespace.
pub async fn list(svc: &Services) -> Result<Vec<RecordInfo>> {
    list_of(svc, &svc.leases.list().await?).await
}

/// The cache records among `all` (every kiln lease of the namespace).
pub async fn list_of(svc: &Services, all: &[LeaseInfo]) -> Result<Vec<RecordInfo>> {
    let mut out = Vec::new();
    let mut chains = Vec::new();
    let prefix = format!("{}{LEASE_KIND}/", kiln_snapshot::containerd::LEASE_PREFIX);
    for lease in all.iter().filter(|l| l.id.starts_with(&prefix)).cloned() {
        let record_type = lease.labels.get(TYPE_LABEL).cloned().unwrap_or_default();
        let size = lease
            .labels
            .get(SIZE_LABEL)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let description = lease
            .labels
            .get(DESCRIPTION_LABEL)
            .cloned()
            .unwrap_or_default();
        let mut last_used = lease.created_secs;
        let mut used = 0;
        let mut chain = None;
        // A cache mount is its one snapshot; a step's record, its outputs.
        let mut snapshots: Vec<String> = crate::ops::cachemount::snapshot_of(&lease.id)
            .into_iter()
            .collect();
        if let Some(rec) = lease.labels.get(RECORD_LABEL) {
            if let Ok(info) = svc.content.info(rec).await {
                if let Some(t) = info
                    .labels
                    .get(LAST_USED_LABEL)
                    .and_then(|s| s.parse().ok())
                {
                    last_used = t;
                }
                used = usage_count(&info.labels);
            }
            // A record being written (or broken) has no parents to show.
            if let Some((first, tops)) = svc
                .content
                .read(rec)
                .await
                .ok()
                .and_then(|b| outputs_of(&b))
            {
                chain = Some(first);
                snapshots = tops;
            }
        }
        chains.push(chain);
        out.push(RecordInfo {
            lease,
            record_type,
            size,
            description,
            last_used,
            usage_count: used,
            parents: Vec::new(),
            snapshots,
            in_use: false,
            shared: false,
        });
    }
    let ids: Vec<String> = out.iter().map(|r| r.lease.id.clone()).collect();
    for (r, p) in out.iter_mut().zip(parents(&chains, &ids)) {
        r.parents = p;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_records_parent_is_the_record_of_the_chain_below_its_top_layer() {
        let chain = |ids: &[&str]| Some(ids.iter().map(|s| s.to_string()).collect());
        let chains = vec![
            chain(&["base", "a"]),
            chain(&["base", "a", "b"]),
            chain(&["base", "x"]),
            None,
            chain(&["other", "a", "b", "c"]),
        ];
        let ids: Vec<String> = ["A", "B", "X", "M", "C"].map(String::from).to_vec();
        assert_eq!(
            parents(&chains, &ids),
            [vec![], vec!["A".to_string()], vec![], vec![], vec![]]
        );
    }
}
