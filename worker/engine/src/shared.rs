//! Which cache records the namespace's images also use, for `du`'s
//! `Shared` (BuildKit's prune ref checker: a record whose layers an image
//! in the store has is shared with that image, and so are the records
//! below it; its space is not freed by removing the record alone).
//!
//! A record's snapshot is named by its chain's chainID
//! ([`crate::refs::top_snapshot`]); an image has every chainID of its
//! config's `rootfs.diff_ids`. Read from containerd's image store and
//! content (small blobs by digest, [`Services::read_small`]); an image
//! whose content is missing or unreadable shares nothing.

use crate::cache::RecordInfo;
use crate::error::Result;
use crate::services::Services;
use kiln_solver::Digest;
use std::collections::HashSet;

/// How deep an image's target is followed: index -> manifest -> config.
const MAX_DEPTH: usize = 3;

/// The chainIDs of every layer chain (each prefix) of every image in the
/// namespace, each platform's.
pub async fn image_chains(svc: &Services) -> Result<HashSet<String>> {
    let mut chains = HashSet::new();
    for image in svc.images.list().await? {
        let mut todo = vec![(image.digest.clone(), 0)];
        while let Some((digest, depth)) = todo.pop() {
            if depth >= MAX_DEPTH {
                continue;
            }
            let Ok(bytes) = svc.read_small(&digest).await else {
                continue;
            };
            let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
                continue;
            };
            if let Some(ms) = doc.get("manifests").and_then(|m| m.as_array()) {
                todo.extend(
                    ms.iter()
                        .filter_map(|m| m.get("digest")?.as_str())
                        .map(|d| (d.to_string(), depth + 1)),
                );
            } else if let Some(cfg) = doc.pointer("/config/digest").and_then(|d| d.as_str()) {
                todo.push((cfg.to_string(), depth + 1));
            } else if let Some(ids) = doc.pointer("/rootfs/diff_ids").and_then(|d| d.as_array()) {
                let diff_ids: Vec<Digest> = ids
                    .iter()
                    .filter_map(|d| Digest::parse(d.as_str()?))
                    .collect();
                if diff_ids.len() == ids.len() {
                    chains.extend(Digest::chain_ids(&diff_ids).iter().map(|c| c.to_string()));
                }
            }
        }
    }
    Ok(chains)
}

/// Sets `shared` on the records one of whose snapshots is in `chains`,
/// and on the records below them, to the bottom of each chain.
pub fn mark_shared(records: &mut [RecordInfo], chains: &HashSet<String>) {
    let mut todo: Vec<String> = records
        .iter()
        .filter(|r| r.snapshots.iter().any(|s| chains.contains(s)))
        .map(|r| r.lease.id.clone())
        .collect();
    while let Some(id) = todo.pop() {
        if let Some(r) = records.iter_mut().find(|r| r.lease.id == id && !r.shared) {
            r.shared = true;
            todo.extend(r.parents.iter().cloned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, snapshot: &str, parents: &[&str]) -> RecordInfo {
        RecordInfo {
            parents: parents.iter().map(|p| p.to_string()).collect(),
            ..RecordInfo::for_test(id, &[snapshot])
        }
    }

    #[test]
    fn a_record_an_image_has_is_shared_with_the_records_below_it() {
        // c sits on b on a; d is another stage's; the image has b's chain.
        let mut records = vec![
            record("a", "chain-a", &[]),
            record("b", "chain-b", &["a"]),
            record("c", "chain-c", &["b"]),
            record("d", "chain-d", &[]),
        ];
        mark_shared(&mut records, &HashSet::from(["chain-b".to_string()]));
        let shared: Vec<&str> = records
            .iter()
            .filter(|r| r.shared)
            .map(|r| r.lease.id.as_str())
            .collect();
        assert_eq!(shared, ["a", "b"]);
    }
}
