//! Which cache records running builds use, for `du`'s "in use"
//! (BuildKit's `InUse`: a record with an open reference) and so that a
//! prune leaves them alone. One rule, read from containerd alone, so
//! kilnd's `DiskUsage`/`Prune` and the embedded `kiln du`/`kiln prune`
//! see the same thing whichever process runs the build.
//!
//! A build holds what it uses in its build lease (`kiln/build/<id>`,
//! `lease.rs`): the snapshot of every step it ran (leased before the
//! commit), of every record it loaded (`cache::load` adds it) and of
//! every cache mount it mounted (`ops/cachemount.rs`). That
//! lease lives exactly as long as the build's result: it is deleted when
//! the result is released or the build fails. So a record is in use while
//! a live build lease holds one of its snapshots
//! ([`crate::cache::RecordInfo::snapshots`]), and with it the records
//! below it (`prune::mark_in_use`). Reading that costs one
//! `Leases.ListResources` per running build; the builds write nothing.
//!
//! A crashed process cannot keep a record in use: a build lease whose
//! process is dead on this host, or whose keepalive lapsed wherever it ran,
//! holds nothing in use (`sweep::build_is_gone`, the rule by which the
//! sweep deletes it).

use crate::cache::RecordInfo;
use crate::error::Result;
use kiln_snapshot::containerd::{LeaseId, LeaseInfo};
use kiln_snapshot::services::{LeaseResource, Leases};
use std::collections::HashSet;

/// The snapshots the live builds among `all` (every kiln lease of the
/// namespace) hold, by key. Every snapshotter counts: a record's snapshot
/// is named by its chainID, the same for any snapshotter, and a client
/// configured for another snapshotter than the daemon's must still see
/// the daemon's builds (at worst a record is kept that could go).
pub async fn held_snapshots(leases: &dyn Leases, all: &[LeaseInfo]) -> Result<HashSet<String>> {
    let mut held = HashSet::new();
    for build in all
        .iter()
        .filter(|l| crate::sweep::is_build(l) && !crate::sweep::build_is_gone(l, all))
    {
        let Some(id) = LeaseId::from_kiln(&build.id) else {
            continue;
        };
        let resources = match leases.list_resources(&id).await {
            Ok(r) => r,
            // It ended since the list.
            Err(e) if e.is_not_found() => continue,
            Err(e) => return Err(e.into()),
        };
        held.extend(resources.into_iter().filter_map(|r| match r {
            LeaseResource::Snapshot { key, .. } => Some(key),
            LeaseResource::Content(_) => None,
        }));
    }
    Ok(held)
}

/// The lease IDs of the records one of whose snapshots is in `held`.
pub fn records_holding(records: &[RecordInfo], held: &HashSet<String>) -> HashSet<String> {
    records
        .iter()
        .filter(|r| r.snapshots.iter().any(|s| held.contains(s)))
        .map(|r| r.lease.id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, snapshots: &[&str]) -> RecordInfo {
        RecordInfo::for_test(id, snapshots)
    }

    #[test]
    fn a_record_is_held_by_any_of_its_outputs_snapshots() {
        let records = [
            record("kiln/cache/a", &["sha256:a"]),
            record("kiln/cache/b", &["sha256:b1", "sha256:b2"]),
            record("kiln/cache/scratch", &[]),
            record("kiln/cache/c", &["sha256:c"]),
        ];
        let held = HashSet::from(["sha256:a".to_string(), "sha256:b2".to_string()]);
        assert_eq!(
            records_holding(&records, &held),
            HashSet::from(["kiln/cache/a".to_string(), "kiln/cache/b".to_string()])
        );
        assert!(records_holding(&records, &HashSet::new()).is_empty());
    }
}
