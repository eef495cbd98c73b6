//! What a build record's result holds, as BuildKit's: the descriptor of
//! each image an exporter made (`image`, `oci`, `docker`), in the record's
//! `result.results` by exporter index (the first also in
//! `resultDeprecated`). `docker buildx history inspect` lists them as
//! attachments, `history inspect attachment` prints them and `history
//! export` bundles them, all read through kilnd's content service.
//!
//! The blobs stay in the tenant's containerd: a lease per record,
//! `kiln/history/<key>` (the key being the record's, the sha256 of its
//! ref), holds each result's manifest or index, and so what its
//! `containerd.io/gc.ref.*` labels reference (configs, layers), for as
//! long as the record is kept, as BuildKit leases a record's results. It
//! is taken before the build's own lease is released, and a lease whose
//! record is gone (removed by the history limits, deleted by a client, or
//! never written) is deleted by [`reconcile`]. Each lease names the
//! kilnd that took it (its worker id, [`OWNER_LABEL`]): several kilnd
//! with their own roots may share a namespace, and one only ever deletes
//! its own records' leases.
//!
//! The content service serves, besides a record's own blobs, only what a
//! kept record's result reaches: the result, an index's manifests, a
//! manifest's config and layers ([`reachable`]).

use crate::history::BuildHistory;
use kiln_engine::Services;
use kiln_proto::control::Descriptor;
use kiln_snapshot::containerd::{LeaseId, LEASE_PREFIX};
use kiln_snapshot::services::LeaseResource;
use std::collections::{HashMap, HashSet};

/// The lease kind of records' results.
const LEASE_KIND: &str = "history";
/// The label naming the worker id of the kilnd whose record a results
/// lease is for. A lease without it (from a kilnd before this label) is
/// taken for the reconciling kilnd's own, as before.
pub const OWNER_LABEL: &str = "dev.kiln/history.owner";
/// How deep [`reachable`] walks: index -> manifest -> config and layers.
const MAX_DEPTH: usize = 2;

/// The lease holding the results of the record of `ref`.
fn lease_of(key: &str) -> LeaseId {
    LeaseId::named(LEASE_KIND, key)
}

/// Holds `results` for the record of `ref` (before the build's lease goes).
/// A failure is logged: the build's result stands, its record just may not
/// keep the blobs.
/// `owner` is this kilnd's worker id.
pub async fn hold(svc: &Services, owner: &str, r#ref: &str, results: &HashMap<i64, Descriptor>) {
    if results.is_empty() {
        return;
    }
    let id = lease_of(&BuildHistory::key(r#ref));
    let labels = HashMap::from([(OWNER_LABEL.to_string(), owner.to_string())]);
    let held = async {
        match svc
            .leases
            .create_referencing(&id, "build history results", labels)
            .await
        {
            Err(e) if e.kind() != kiln_snapshot::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        for d in results.values() {
            svc.leases
                .add_resource(&id, &LeaseResource::Content(d.digest.clone()))
                .await?;
        }
        Ok(())
    };
    if let Err(e) = held.await {
        tracing::warn!("ref" = r#ref, error = %e, "cannot keep the build record's results");
    }
}

/// Deletes the results leases of the records of `refs`, which are gone:
/// removed by the history limits or a client, or never written. A lease
/// that is not there (a record without results) is no error.
pub async fn release(svc: &Services, refs: &[String]) {
    for r in refs {
        drop_lease(svc, &lease_of(&BuildHistory::key(r))).await;
    }
}

/// Deletes one results lease; one already gone is no error.
async fn drop_lease(svc: &Services, id: &LeaseId) {
    match svc.leases.delete(id, false).await {
        Ok(()) => {}
        Err(e) if e.is_not_found() => {}
        Err(e) => {
            tracing::warn!(lease = %id, error = %e, "cannot release a build record's results")
        }
    }
}

/// Deletes the results leases of every record that is no longer kept
/// (one listing of the namespace's leases): when a tenant is set up, for
/// what a stopped kilnd left between removing a record and its lease.
/// While kilnd runs, [`release`] deletes each as its record goes. Only
/// leases of `owner` (this kilnd's worker id) or of no owner are looked
/// at: another kilnd's records are in another root.
pub async fn reconcile(svc: &Services, history: &std::sync::Arc<BuildHistory>, owner: &str) {
    let h = history.clone();
    let kept = match tokio::task::spawn_blocking(move || h.keys()).await {
        Ok(Ok(k)) => k,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "cannot list build records");
            return;
        }
        Err(_) => return,
    };
    let leases = match svc.leases.list().await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list leases");
            return;
        }
    };
    let prefix = format!("{LEASE_PREFIX}{LEASE_KIND}/");
    for l in leases {
        let Some(key) = l.id.strip_prefix(&prefix) else {
            continue;
        };
        if kept.contains(key) || !owned_by(&l.labels, owner) {
            continue;
        }
        if let Some(id) = LeaseId::from_kiln(&l.id) {
            drop_lease(svc, &id).await;
        }
    }
}

/// Whether a results lease with `labels` is `owner`'s to reconcile: it
/// names `owner`, or no owner at all.
fn owned_by(labels: &HashMap<String, String>, owner: &str) -> bool {
    labels.get(OWNER_LABEL).is_none_or(|o| o == owner)
}

/// Whether the blob `digest` is reachable from one of `results`: a result
/// itself, or (reading indexes and manifests from the content store) a
/// manifest of an index, or a config or layer of a manifest.
pub async fn reachable(svc: &Services, results: &[Descriptor], digest: &str) -> bool {
    let mut seen = HashSet::new();
    let mut todo: Vec<(String, String, usize)> = results
        .iter()
        .map(|d| (d.digest.clone(), d.media_type.clone(), 0))
        .collect();
    while let Some((d, media_type, depth)) = todo.pop() {
        if d == digest {
            return true;
        }
        if depth >= MAX_DEPTH || !seen.insert(d.clone()) || !is_json_doc(&media_type) {
            continue;
        }
        let Ok(blob) = svc.content.read(&d).await else {
            continue;
        };
        for (child, mt) in children(&blob) {
            todo.push((child, mt, depth + 1));
        }
    }
    false
}

/// Whether a blob of `media_type` is an index or a manifest.
fn is_json_doc(media_type: &str) -> bool {
    media_type.ends_with("image.index.v1+json")
        || media_type.ends_with("image.manifest.v1+json")
        || media_type.ends_with("distribution.manifest.list.v2+json")
        || media_type.ends_with("distribution.manifest.v2+json")
}

/// The descriptors an index (`manifests`) or a manifest (`config`,
/// `layers`) names, as (digest, media type).
fn children(blob: &[u8]) -> Vec<(String, String)> {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(blob) else {
        return Vec::new();
    };
    let desc = |d: &serde_json::Value| {
        Some((
            d.get("digest")?.as_str()?.to_string(),
            d.get("mediaType")
                .and_then(|m| m.as_str())
                .unwrap_or_default()
                .to_string(),
        ))
    };
    let mut out = Vec::new();
    for list in ["manifests", "layers"] {
        if let Some(a) = v.get(list).and_then(|a| a.as_array()) {
            out.extend(a.iter().filter_map(desc));
        }
    }
    if let Some(c) = v.get("config").and_then(desc) {
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_index_names_its_manifests_and_a_manifest_its_config_and_layers() {
        let index = br#"{"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:m"}]}"#;
        assert_eq!(
            children(index),
            [(
                "sha256:m".to_string(),
                "application/vnd.oci.image.manifest.v1+json".to_string()
            )]
        );
        let manifest = br#"{"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:c"},
            "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:l"}]}"#;
        let got: Vec<String> = children(manifest).into_iter().map(|c| c.0).collect();
        assert_eq!(got, ["sha256:l", "sha256:c"]);
        assert!(children(b"not json").is_empty());
        assert!(is_json_doc(
            "application/vnd.docker.distribution.manifest.v2+json"
        ));
        assert!(!is_json_doc("application/vnd.oci.image.config.v1+json"));
    }

    #[test]
    fn a_kilnd_reconciles_its_own_leases_and_those_of_no_owner() {
        let of = |o: Option<&str>| {
            o.map(|o| HashMap::from([(OWNER_LABEL.to_string(), o.to_string())]))
                .unwrap_or_default()
        };
        assert!(owned_by(&of(Some("me")), "me"));
        assert!(owned_by(&of(None), "me"));
        assert!(!owned_by(&of(Some("another")), "me"));
    }
}
