//! Base images from the namespace's image store: resolving a name to its
//! platform manifest, config and layers, and unpacking the layer chain
//! under chainID names when it is not unpacked yet.

use crate::error::{Result, WorkerError};
use crate::oci::{self, Descriptor, ImageConfigJson, ImageIndex, ImageManifest};
use crate::refs::Layer;
use crate::services::Services;
use kiln_snapshot::containerd::LeaseId;
use kiln_snapshot::services::{snapshot_exists, LeaseResource};
use kiln_snapshot::Digest;
use std::collections::HashMap;

/// A base image as found in containerd.
#[derive(Clone, Debug)]
pub struct BaseImage {
    pub name: String,
    /// The image record's target (index or manifest) digest.
    pub target: String,
    pub manifest: Descriptor,
    pub config_digest: String,
    pub config: ImageConfigJson,
    pub layers: Vec<Layer>,
}

fn invalid(name: &str, reason: impl Into<String>) -> WorkerError {
    WorkerError::InvalidImage {
        image: name.to_string(),
        reason: reason.into(),
    }
}

/// containerd's label of a layer blob's diffID, set when it is unpacked.
pub const UNCOMPRESSED_LABEL: &str = "containerd.io/uncompressed";

/// Looks `name` (normalized) up and reads its manifest and config; from
/// an index, the manifest for `platform` (`None`: the worker's). The image
/// record is read from containerd each time; the blobs it names, once per
/// digest ([`Services::read_small`]).
pub async fn load(
    svc: &Services,
    name: &str,
    platform: Option<&kiln_solver::Platform>,
) -> Result<BaseImage> {
    let (media_type, digest, size) = match svc.images.get(name).await {
        Ok(r) => (r.media_type, r.digest, r.size),
        Err(e) if e.is_not_found() => match by_digest(svc, name).await? {
            Some(found) => found,
            None => {
                return Err(WorkerError::ImageNotFound {
                    image: name.to_string(),
                    namespace: svc.namespace.to_string(),
                })
            }
        },
        Err(e) => return Err(e.into()),
    };
    let mut desc = oci::descriptor(&media_type, &digest, size)
        .ok_or_else(|| invalid(name, format!("bad record {digest} of {size} bytes")))?;
    let media_type = desc.media_type().to_string();
    if oci::is_index(&media_type) {
        let bytes = svc.read_small(desc.digest().as_ref()).await?;
        let index: ImageIndex = serde_json::from_slice(&bytes)
            .map_err(|e| invalid(name, format!("index {}: {e}", desc.digest())))?;
        let want = platform.cloned().unwrap_or_else(oci::worker_platform);
        let chosen = choose_platform(&index, &want).map_err(|present| {
            invalid(
                name,
                format!(
                    "no manifest for {want} (the index has: {})",
                    if present.is_empty() {
                        "none".to_string()
                    } else {
                        present.join(", ")
                    }
                ),
            )
        })?;
        desc = chosen.clone();
    }
    let bytes = svc.read_small(desc.digest().as_ref()).await?;
    let manifest: ImageManifest = oci::manifest_from_slice(&bytes)
        .map_err(|e| invalid(name, format!("manifest {}: {e}", desc.digest())))?;
    let config_digest = manifest.config().digest().to_string();
    let cfg_bytes = svc.read_small(&config_digest).await?;
    let config: ImageConfigJson = serde_json::from_slice(&cfg_bytes)
        .map_err(|e| invalid(name, format!("config {config_digest}: {e}")))?;
    let layers = layers_of(&manifest, &config).map_err(|m| invalid(name, m))?;
    Ok(BaseImage {
        name: name.to_string(),
        target: digest,
        manifest: desc,
        config_digest,
        config,
        layers,
    })
}

/// A `name@sha256:...` with no image record of its own, from the content
/// store (as BuildKit's `imageutil.Config`): the blob's media type, digest
/// and size, or `None` when the name has no digest or the blob is absent.
async fn by_digest(svc: &Services, name: &str) -> Result<Option<(String, String, i64)>> {
    let Some((_, digest)) = name.rsplit_once('@') else {
        return Ok(None);
    };
    let bytes = match svc.content.read(digest).await {
        Ok(b) => b,
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    let probe: Probe = serde_json::from_slice(&bytes)
        .map_err(|e| invalid(name, format!("manifest {digest}: {e}")))?;
    let media_type = match (probe.media_type, probe.manifests) {
        (Some(m), _) => m,
        (None, Some(_)) => oci::MEDIA_OCI_INDEX.to_string(),
        (None, None) => oci::MEDIA_OCI_MANIFEST.to_string(),
    };
    let size = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
    Ok(Some((media_type, digest.to_string(), size)))
}

/// The manifest for `want` in `index` (or its only manifest when it names
/// no platform); else the platforms it has, as `os/arch[/variant]`. The
/// one platform rule of base images, for local images and pulls: the
/// same normalized platform first, else the same OS and architecture with
/// a variant the wanted one runs (`arm/v6` for `arm/v7`, none for any).
pub fn choose_platform<'a>(
    index: &'a ImageIndex,
    want: &kiln_solver::Platform,
) -> std::result::Result<&'a Descriptor, Vec<String>> {
    let of = |m: &Descriptor| m.platform().as_ref().map(oci::from_oci);
    let exact = index
        .manifests()
        .iter()
        .find(|m| of(m).as_ref() == Some(want));
    let compatible = || {
        index.manifests().iter().find(|m| {
            of(m).is_some_and(|p| {
                p.os == want.os
                    && p.architecture == want.architecture
                    && (p.variant.is_empty()
                        || want.variant.is_empty()
                        || p.variant <= want.variant)
            })
        })
    };
    exact
        .or_else(compatible)
        .or_else(|| {
            if index.manifests().len() == 1 && index.manifests()[0].platform().is_none() {
                index.manifests().first()
            } else {
                None
            }
        })
        .ok_or_else(|| {
            index
                .manifests()
                .iter()
                .filter_map(of)
                .map(|p| p.to_string())
                .collect()
        })
}

/// Makes sure every prefix of `layers` is a committed snapshot named by its
/// chainID, applying the missing layers with containerd's diff service.
/// Snapshots are leased before they are created. Says whether any layer
/// was applied.
pub async fn ensure_unpacked(svc: &Services, layers: &[Layer], lease: &LeaseId) -> Result<bool> {
    let chain = Digest::chain_ids(&crate::refs::diff_ids(layers));
    // Find the first missing prefix, from the top down.
    let mut first_missing = chain.len();
    for i in (0..chain.len()).rev() {
        svc.leases
            .add_resource(
                lease,
                &LeaseResource::snapshot(&*svc.snapshots, chain[i].as_str()),
            )
            .await?;
        if snapshot_exists(&*svc.snapshots, chain[i].as_str()).await? {
            break;
        }
        first_missing = i;
    }
    for i in first_missing..chain.len() {
        let parent = if i == 0 {
            String::new()
        } else {
            chain[i - 1].to_string()
        };
        let key = format!("kiln-extract-{}-{}", rand_hex(), chain[i].hex());
        let mounts = svc.snapshots.prepare(&key, &parent, lease).await?;
        let l = &layers[i];
        let Some(b) = &l.blob else {
            let _ = svc.snapshots.remove(&key).await;
            return Err(WorkerError::LayerBlob {
                diff_id: l.diff_id.to_string(),
                reason: "it has no blob and its snapshot is gone".into(),
            });
        };
        let applied = match svc
            .applier
            .apply(&b.media_type, &b.digest, b.size, &mounts, lease)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                let _ = svc.snapshots.remove(&key).await;
                return Err(e.into());
            }
        };
        if applied != l.diff_id.as_str() {
            let _ = svc.snapshots.remove(&key).await;
            return Err(WorkerError::InvalidImage {
                image: b.digest.clone(),
                reason: format!("layer unpacked to {applied}, config says {}", l.diff_id),
            });
        }
        match svc.snapshots.commit(chain[i].as_str(), &key, lease).await {
            Ok(()) => {
                // As containerd's unpacker: the layer's diffID, once apply
                // has verified it.
                let mut labels = HashMap::new();
                labels.insert(UNCOMPRESSED_LABEL.to_string(), applied.clone());
                svc.content.set_labels(&b.digest, labels).await?;
            }
            Err(e) if e.is_already_exists() => {
                // A concurrent unpacker won; its snapshot is equal.
                svc.snapshots.remove(&key).await?;
            }
            Err(e) => {
                let _ = svc.snapshots.remove(&key).await;
                return Err(e.into());
            }
        }
    }
    Ok(first_missing < chain.len())
}

/// Records the unpacked chain on the config blob, as containerd's own
/// unpacker does, so the snapshots live as long as the image.
pub async fn label_unpacked(svc: &Services, base: &BaseImage) -> Result<()> {
    let top = crate::refs::top_snapshot(&base.layers);
    if top.is_empty() {
        return Ok(());
    }
    let key = format!(
        "containerd.io/gc.ref.snapshot.{}",
        svc.snapshots.snapshotter()
    );
    let info = svc.content.info(&base.config_digest).await?;
    if info.labels.get(&key) == Some(&top) {
        return Ok(());
    }
    let mut labels = HashMap::new();
    labels.insert(key, top);
    svc.content.set_labels(&base.config_digest, labels).await?;
    Ok(())
}

pub(crate) fn rand_hex() -> String {
    use rand::RngCore;
    let mut b = [0u8; 8];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// The frontend's view of a base image config: every field BuildKit's
/// `DockerOCIImage` keeps except `created`, which the exporter sets (keys
/// Docker's engine writes but BuildKit drops, such as `Hostname`, are
/// dropped too). Port and volume sets come out sorted: oci-spec reads them into `HashMap`s, and the frontend's
/// config must not depend on their iteration order. Every history entry
/// is the base image's own (`base_history`).
pub fn frontend_config(cfg: &ImageConfigJson) -> kiln_solver::ImageConfig {
    let c = &cfg.config.oci;
    let sorted = |v: &Option<Vec<String>>| {
        let mut v = v.clone().unwrap_or_default();
        v.sort();
        v.dedup();
        v
    };
    kiln_solver::ImageConfig {
        env: c.env().clone().unwrap_or_default(),
        cmd: c.cmd().clone(),
        entrypoint: c.entrypoint().clone(),
        working_dir: c.working_dir().clone().unwrap_or_default(),
        user: c.user().clone().unwrap_or_default(),
        labels: c
            .labels()
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        exposed_ports: sorted(c.exposed_ports()),
        shell: cfg.config.shell.clone(),
        stop_signal: c.stop_signal().clone().filter(|s| !s.is_empty()),
        volumes: sorted(c.volumes()),
        history: cfg
            .image
            .history()
            .iter()
            .flatten()
            .map(|h| kiln_solver::HistoryEntry {
                created: h.created().clone(),
                created_by: h.created_by().clone().unwrap_or_default(),
                comment: h.comment().clone().unwrap_or_default(),
                empty_layer: h.empty_layer().unwrap_or(false),
            })
            .collect(),
        healthcheck: cfg.config.healthcheck.as_ref().map(Into::into),
        on_build: cfg.config.on_build.clone().unwrap_or_default(),
        args_escaped: cfg.config.args_escaped,
        author: cfg.image.author().clone().unwrap_or_default(),
        variant: cfg.image.variant().clone().unwrap_or_default(),
        os_version: cfg.image.os_version().clone().unwrap_or_default(),
        os_features: cfg.image.os_features().clone().unwrap_or_default(),
        source_date_epoch: None,
        base_diff_ids: cfg.image.rootfs().diff_ids().clone(),
        base_history: cfg.image.history().as_ref().map_or(0, Vec::len),
        platform: None,
        base_platform: {
            let (os, arch) = (
                cfg.image.os().to_string(),
                cfg.image.architecture().to_string(),
            );
            let variant = cfg.image.variant().clone().unwrap_or_default();
            (!os.is_empty() && !arch.is_empty())
                .then(|| kiln_solver::Platform::new(&os, &arch, &variant))
        },
    }
}

/// A result's image config that a client or a frontend image gave
/// (`containerimage.config`), with the base image config it named
/// (`containerimage.base.config`), as BuildKit's exporter reads them: the
/// history entries it shares with the base, from the first on, are the
/// base's own; without a base, none is.
pub fn client_config(
    cfg: &ImageConfigJson,
    base: Option<&ImageConfigJson>,
) -> kiln_solver::ImageConfig {
    let mut out = frontend_config(cfg);
    let theirs = base
        .map(frontend_config)
        .map(|b| b.history)
        .unwrap_or_default();
    out.base_history = out
        .history
        .iter()
        .zip(&theirs)
        .take_while(|(a, b)| a == b)
        .count();
    out
}

/// The layers of an image, each with its diffID from the config, in
/// order: the one pairing of manifest and config. The error is the reason
/// they do not pair, for the caller to say which image it is.
pub(crate) fn layers_of(
    manifest: &ImageManifest,
    config: &ImageConfigJson,
) -> std::result::Result<Vec<Layer>, String> {
    let diff_ids = config.image.rootfs().diff_ids();
    if diff_ids.len() != manifest.layers().len() {
        return Err(format!(
            "{} layers but {} diff_ids",
            manifest.layers().len(),
            diff_ids.len()
        ));
    }
    manifest
        .layers()
        .iter()
        .zip(diff_ids)
        .map(|(l, d)| {
            let diff_id = Digest::parse(d).ok_or_else(|| format!("bad diff_id {d}"))?;
            Ok(Layer::with_blob(
                diff_id,
                l.media_type().to_string(),
                l.digest().to_string(),
                oci::size_of(l),
                None,
            ))
        })
        .collect()
}
