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
use std::sync::Arc;

/// How deep an image's target is followed: index -> manifest -> config.
const MAX_DEPTH: usize = 3;

/// The chainIDs of every layer chain (each prefix) of every image in the
/// namespace, each platform's.
pub async fn image_chains(svc: &Services) -> Result<HashSet<String>> {
    let roots = svc.images.list().await?.into_iter().map(|i| i.digest);
    Ok(chains_below(roots, |d| async move { svc.read_small(&d).await.ok() }).await)
}

/// The chainIDs reached from `roots` (image targets), reading each blob
/// once however many images share it (a namespace such as `k8s.io` has
/// many tags of one index, and indexes share their platforms' blobs).
/// Attestation manifests (`vnd.docker.reference.type`) hold no layers of
/// a file system and are not read.
async fn chains_below<F, Fut>(roots: impl Iterator<Item = String>, read: F) -> HashSet<String>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = Option<Arc<[u8]>>>,
{
    let mut chains = HashSet::new();
    let mut seen = HashSet::new();
    let mut todo: Vec<(String, usize)> = roots.map(|d| (d, 0)).collect();
    while let Some((digest, depth)) = todo.pop() {
        if depth >= MAX_DEPTH || !seen.insert(digest.clone()) {
            continue;
        }
        let Some(bytes) = read(digest).await else {
            continue;
        };
        let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            continue;
        };
        if let Some(ms) = doc.get("manifests").and_then(|m| m.as_array()) {
            todo.extend(
                ms.iter()
                    .filter(|m| m.pointer(ATTESTATION).is_none())
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
    chains
}

/// The annotation that marks an index entry as an attestation of another.
const ATTESTATION: &str = "/annotations/vnd.docker.reference.type";

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

    #[tokio::test]
    async fn each_blob_is_read_once_and_attestations_not_at_all() {
        use std::collections::HashMap;
        use std::sync::Mutex;
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let (l1, l2) = (d('1'), d('2'));
        let blobs: HashMap<String, String> = [
            (d('i'), format!(r#"{{"manifests":[{{"digest":"{}"}},{{"digest":"{}","annotations":{{"vnd.docker.reference.type":"attestation-manifest"}}}}]}}"#, d('m'), d('a'))),
            (d('m'), format!(r#"{{"config":{{"digest":"{}"}}}}"#, d('c'))),
            (d('c'), format!(r#"{{"rootfs":{{"diff_ids":["{l1}","{l2}"]}}}}"#)),
        ]
        .into();
        let reads = Mutex::new(Vec::new());
        // Three tags of one index, and the manifest tagged on its own.
        let roots = [d('i'), d('i'), d('m'), d('i')];
        let chains = chains_below(roots.into_iter(), |digest| {
            reads.lock().expect("reads").push(digest.clone());
            let b = blobs.get(&digest).map(|b| Arc::from(b.as_bytes()));
            async move { b }
        })
        .await;
        let mut reads = reads.into_inner().expect("reads");
        reads.sort();
        assert_eq!(reads, [d('c'), d('i'), d('m')]);
        let l1d = Digest::parse(&l1).expect("digest");
        let l2d = Digest::parse(&l2).expect("digest");
        let expected: HashSet<String> = Digest::chain_ids(&[l1d, l2d])
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(chains, expected);
        assert_eq!(chains.len(), 2);
    }
}
