//! The image exporter: config, manifest, GC labels and image records, so
//! the result is complete and already unpacked for other clients.

use crate::annotations::{ExportAnnotations, ManifestAnnotations};
use crate::error::Result;
use crate::error::WorkerError;
use crate::oci::{
    self, Config, Descriptor, History, ImageConfigJson, ImageConfiguration, ImageManifestBuilder,
    MediaType, RootFs, RunConfig,
};
use crate::refs::{self, Layer};
use crate::services::Services;
use kiln_snapshot::containerd::{ImageRecord, LeaseId};
use kiln_snapshot::services::write_blob;
use std::collections::HashMap;

/// How an image exporter writes an image's layers and manifests: its
/// options `compression`, `force-compression`, `rewrite-timestamp` (with
/// the epoch it clamps to) and `oci-mediatypes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageFormat {
    pub compression: kiln_snapshot::diff::Compression,
    /// Every layer in `compression`, converted if need be; BuildKit's
    /// default (false) keeps a layer's existing blob in any compression
    /// ([`crate::blobs::ensure`]).
    pub force_compression: bool,
    /// `compression-level`: the level of the blobs made new for this
    /// export (a layer's existing blob is kept, as in BuildKit).
    pub level: kiln_snapshot::diff::Level,
    /// The exporter's epoch (its `source-date-epoch`, else the frontend's
    /// `SOURCE_DATE_EPOCH`): history times after it, but the base
    /// image's, and the image's `created` are clamped to it.
    pub epoch: Option<i64>,
    /// `rewrite-timestamp=true`: layer file times after `epoch` are
    /// clamped to it too.
    pub rewrite_timestamp: bool,
    pub media: oci::MediaTypes,
}

impl ImageFormat {
    /// BuildKit's defaults with `compression`.
    pub fn new(compression: kiln_snapshot::diff::Compression) -> Self {
        ImageFormat {
            compression,
            force_compression: false,
            level: Default::default(),
            epoch: None,
            rewrite_timestamp: false,
            media: oci::MediaTypes::Oci,
        }
    }
}

/// How one image manifest is written: the media types of it, its config
/// and layers, and its annotations.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManifestShape {
    pub media: oci::MediaTypes,
    pub annotations: ManifestAnnotations,
}

/// What the exporter produced.
#[derive(Clone, Debug)]
pub struct Exported {
    pub manifest: Descriptor,
    pub config_digest: String,
    pub names: Vec<String>,
    /// When `manifest` is an index: each platform's manifest and config
    /// digest, in its order (empty for one image).
    pub children: Vec<(String, String)>,
}

/// Builds the OCI config for a chain and the frontend's image config.
///
/// Times follow BuildKit's exporter, so a rebuild from cache (local or
/// imported) gives the same config: a layer's history entry without a
/// time takes the layer's own (`Layer::created`, kept by its cache
/// record); an entry still without one takes the first new layer's time
/// before it, or the time of the entry before it after that; the image's
/// `created` is the last entry's. Base-image entries keep their times; an
/// entry made up for a base layer without one takes `SOURCE_DATE_EPOCH`
/// when it is set, and so does every other entry and `created` that is
/// later ([`image_config_at`] with the frontend's epoch). The image is for
/// `cfg.platform`, else the worker's platform.
pub fn image_config(layers: &[Layer], cfg: &kiln_solver::ImageConfig) -> ImageConfigJson {
    image_config_at(layers, cfg, cfg.source_date_epoch)
}

/// [`image_config`] with an exporter's `epoch` in place of the frontend's
/// `SOURCE_DATE_EPOCH`, as BuildKit's exporter patches the config: every
/// history entry but the base image's own without a time or with a later
/// one takes the epoch, and so does a later `created`.
pub fn image_config_at(
    layers: &[Layer],
    cfg: &kiln_solver::ImageConfig,
    epoch: Option<i64>,
) -> ImageConfigJson {
    let platform = cfg
        .platform
        .as_ref()
        .map_or_else(oci::host_platform, oci::to_oci);
    let entry = |h: Option<&kiln_solver::HistoryEntry>| {
        let mut e = History::default();
        if let Some(h) = h {
            e.set_created(h.created.clone());
            e.set_created_by((!h.created_by.is_empty()).then(|| h.created_by.clone()));
            e.set_comment((!h.comment.is_empty()).then(|| h.comment.clone()));
            e.set_empty_layer(h.empty_layer.then_some(true));
        }
        e
    };
    let mut history: Vec<History> = cfg.history.iter().map(|h| entry(Some(h))).collect();
    // Every layer needs a non-empty history entry; back-fill the bottom
    // when the base image shipped fewer.
    let with_layer = history
        .iter()
        .filter(|h| h.empty_layer() != Some(true))
        .count();
    if with_layer < layers.len() {
        let missing = layers.len() - with_layer;
        // These entries are not the base image's, so with SOURCE_DATE_EPOCH
        // BuildKit's exporter dates them with the epoch (and the image's
        // `created` follows when they are the last).
        let backfill = || {
            let mut e = entry(None);
            e.set_created(epoch.map(kiln_types::time::rfc3339_secs));
            e
        };
        let mut filled: Vec<History> = (0..missing).map(|_| backfill()).collect();
        filled.extend(history);
        history = filled;
    }
    let base = (history.len() - cfg.history.len())
        ..(history.len() - cfg.history.len() + cfg.base_history.min(cfg.history.len()));
    date_history(&mut history, layers);
    if let Some(epoch) = epoch {
        let at = kiln_types::time::rfc3339_secs(epoch);
        for (i, h) in history.iter_mut().enumerate() {
            let later = h.created().as_deref().is_some_and(|t| after(t, epoch));
            if !base.contains(&i) && (h.created().is_none() || later) {
                h.set_created(Some(at.clone()));
            }
        }
    }
    // The last entry's time; with an epoch, never a later one.
    let created = history
        .iter()
        .rev()
        .find_map(|h| h.created().clone())
        .map(|t| match epoch {
            Some(e) if after(&t, e) => kiln_types::time::rfc3339_secs(e),
            _ => t,
        });
    let nonempty = |s: &String| (!s.is_empty()).then(|| s.clone());
    let mut run = Config::default();
    run.set_user(nonempty(&cfg.user));
    run.set_exposed_ports((!cfg.exposed_ports.is_empty()).then(|| cfg.exposed_ports.clone()));
    run.set_env((!cfg.env.is_empty()).then(|| cfg.env.clone()));
    run.set_entrypoint(cfg.entrypoint.clone());
    run.set_cmd(cfg.cmd.clone());
    run.set_volumes((!cfg.volumes.is_empty()).then(|| cfg.volumes.clone()));
    run.set_working_dir(nonempty(&cfg.working_dir));
    run.set_labels((!cfg.labels.is_empty()).then(|| {
        cfg.labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }));
    run.set_stop_signal(cfg.stop_signal.clone().filter(|s| !s.is_empty()));
    let mut rootfs = RootFs::default();
    rootfs.set_diff_ids(layers.iter().map(|l| l.diff_id.to_string()).collect());
    let mut image = ImageConfiguration::default();
    image.set_created(created);
    image.set_author(nonempty(&cfg.author));
    image.set_architecture(platform.architecture().clone());
    image.set_os(platform.os().clone());
    // As BuildKit: the target platform's variant when it has one, else
    // the base image's; the base's OS version and features are kept.
    image.set_variant(
        platform
            .variant()
            .clone()
            .or_else(|| nonempty(&cfg.variant)),
    );
    image.set_os_version(nonempty(&cfg.os_version));
    image.set_os_features((!cfg.os_features.is_empty()).then(|| cfg.os_features.clone()));
    image.set_rootfs(rootfs);
    image.set_history((!history.is_empty()).then_some(history));
    ImageConfigJson {
        image,
        config: RunConfig {
            oci: run,
            shell: cfg.shell.clone(),
            args_escaped: cfg.args_escaped,
            healthcheck: cfg.healthcheck.as_ref().map(Into::into),
            on_build: (!cfg.on_build.is_empty()).then(|| cfg.on_build.clone()),
        },
        inline_cache: None,
    }
}

/// Whether RFC 3339 UTC time `t` is after `epoch` (seconds). A time that
/// does not parse (one with a `+hh:mm` offset) counts as not after.
fn after(t: &str, epoch: i64) -> bool {
    let Ok(t) = humantime::parse_rfc3339_weak(t.trim_end_matches('Z')) else {
        return false;
    };
    let epoch =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(epoch).unwrap_or(0));
    t > epoch
}

/// Fills in history times as described at [`image_config`].
fn date_history(history: &mut [History], layers: &[Layer]) {
    let mut layer = 0;
    for h in history.iter_mut() {
        if h.empty_layer() == Some(true) {
            continue;
        }
        if h.created().is_none() {
            h.set_created(layers.get(layer).and_then(|l| l.created.clone()));
        }
        layer += 1;
    }
    // The first time after an entry without one (the first new layer), or
    // the last time when every later entry has none.
    let mut fill = None;
    let mut seen_gap = false;
    for h in history.iter() {
        match h.created() {
            Some(t) => {
                fill = Some(t.clone());
                if seen_gap {
                    break;
                }
            }
            None => seen_gap = true,
        }
    }
    let mut seen_gap = false;
    for h in history.iter_mut() {
        match h.created() {
            Some(t) if seen_gap => fill = Some(t.clone()),
            Some(_) => {}
            None => {
                seen_gap = true;
                h.set_created(fill.clone());
            }
        }
    }
}

fn result_invalid(reason: impl Into<String>) -> WorkerError {
    WorkerError::InvalidImage {
        image: "result".into(),
        reason: reason.into(),
    }
}

/// A descriptor for a blob kiln wrote or recorded itself.
fn own_descriptor(media_type: &str, digest: &str, size: i64) -> Result<Descriptor> {
    oci::descriptor(media_type, digest, size)
        .ok_or_else(|| result_invalid(format!("bad descriptor {digest} of {size} bytes")))
}

/// Writes config and manifest under `lease` with the GC labels that tie
/// manifest -> config/layers and config -> unpacked snapshot, then points
/// every name at the manifest. `unpacked` says the chain's snapshots exist
/// (named by chainID) and should live as long as the image. Every layer
/// must have its blob ([`crate::blobs::ensure`] makes them).
/// `shape` names the media types, and its annotations go into the
/// manifest and onto its descriptor.
pub async fn export_image(
    svc: &Services,
    layers: &[Layer],
    config: &ImageConfigJson,
    names: &[String],
    unpacked: bool,
    shape: &ManifestShape,
    lease: &LeaseId,
) -> Result<Exported> {
    let (media, annotations) = (shape.media, &shape.annotations);
    let blobs = layers
        .iter()
        .map(|l| {
            let b = l.blob.as_ref().ok_or_else(|| {
                result_invalid(format!("layer {} has no blob to export", l.diff_id))
            })?;
            Ok((b, media.layer(&b.media_type)))
        })
        .collect::<Result<Vec<_>>>()?;
    let config_bytes = oci::to_json(config).map_err(|e| result_invalid(e.to_string()))?;
    let mut cfg_labels = HashMap::new();
    let top = refs::top_snapshot(layers);
    if unpacked && !top.is_empty() {
        cfg_labels.insert(
            format!(
                "containerd.io/gc.ref.snapshot.{}",
                svc.snapshots.snapshotter()
            ),
            top,
        );
    }
    // The manifest names the config by digest only, so both are written
    // at once (each held by the lease as it lands; the image record that
    // makes them reachable comes after both). Both writes end before an
    // error of either is returned: none is left half-written.
    let config_digest = kiln_snapshot::Digest::of(&config_bytes);
    let mut manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::from(media.manifest()))
        .config(own_descriptor(
            media.config(),
            &config_digest.to_string(),
            config_bytes.len() as i64,
        )?)
        .layers(
            blobs
                .iter()
                .map(|(b, media_type)| own_descriptor(media_type, &b.digest, b.size))
                .collect::<Result<Vec<_>>>()?,
        )
        .build()
        .map_err(|e| result_invalid(e.to_string()))?;
    if !annotations.manifest.is_empty() {
        manifest.set_annotations(Some(annotations.manifest.clone()));
    }
    let manifest_bytes =
        oci::manifest_to_json(&manifest).map_err(|e| result_invalid(e.to_string()))?;
    let mut m_labels = HashMap::new();
    m_labels.insert(
        "containerd.io/gc.ref.content.config".to_string(),
        config_digest.to_string(),
    );
    for (i, (b, _)) in blobs.iter().enumerate() {
        m_labels.insert(
            format!("containerd.io/gc.ref.content.l.{i}"),
            b.digest.clone(),
        );
    }
    let manifest_digest = kiln_snapshot::Digest::of(&manifest_bytes);
    let mut desc = own_descriptor(
        media.manifest(),
        &manifest_digest.to_string(),
        manifest_bytes.len() as i64,
    )?;
    // As BuildKit's exporters describe a single-platform image: with the
    // platform its config is for (clients read it from the descriptor).
    desc.set_platform(Some(oci::config_platform(&config.image)));
    if !annotations.descriptor.is_empty() {
        desc.set_annotations(Some(annotations.descriptor.clone()));
    }
    let record = record_target(&desc, config_digest.as_str());
    let blobs = [
        (config_digest.as_str(), &cfg_labels),
        (manifest_digest.as_str(), &m_labels),
    ];
    if !already_named(svc, names, &record, blobs).await {
        let (config_written, manifest_written) = tokio::join!(
            write_blob(&*svc.content, &config_bytes, cfg_labels.clone(), lease),
            write_blob(&*svc.content, &manifest_bytes, m_labels.clone(), lease),
        );
        config_written?;
        manifest_written?;
        name_image(svc, names, &record, lease).await?;
    } else {
        tracing::debug!(manifest = %manifest_digest, "the image is named already; nothing written");
    }
    Ok(Exported {
        manifest: desc,
        config_digest: config_digest.to_string(),
        names: names.to_vec(),
        children: Vec::new(),
    })
}

/// The annotation on a single-platform image record's target naming its
/// config, as BuildKit's image exporter stores it.
pub const CONFIG_DIGEST_ANNOTATION: &str = "config.digest";

/// What an image record of `desc` points at: BuildKit's record of a
/// single-platform image also names the config (the writer's
/// `config.digest`, dropped from the descriptor it answers with); an
/// index's (no `config_digest`) is `desc` itself.
fn record_target(desc: &Descriptor, config_digest: &str) -> Descriptor {
    let mut record = desc.clone();
    if !config_digest.is_empty() {
        let mut with_config = record.annotations().clone().unwrap_or_default();
        with_config.insert(
            CONFIG_DIGEST_ANNOTATION.to_string(),
            config_digest.to_string(),
        );
        record.set_annotations(Some(with_config));
    }
    record
}

/// Points more `names` at the image `out` (already held by its own
/// records or the build), with the same record as its own names: the
/// exporter options' extra names (a dangling name, canonical names).
pub async fn name_exported(svc: &Services, names: &[String], out: &Exported) -> Result<()> {
    let target = record_target(&out.manifest, &out.config_digest);
    for name in names {
        svc.images
            .put(&image_record(svc, name, &target), None)
            .await?;
    }
    Ok(())
}

/// The record naming `desc` as `name`.
fn image_record(svc: &Services, name: &str, desc: &Descriptor) -> ImageRecord {
    ImageRecord {
        name: name.to_string(),
        media_type: desc.media_type().to_string(),
        digest: desc.digest().to_string(),
        size: oci::size_of(desc),
        labels: svc.image_labels(),
        // As BuildKit's image exporter: the target descriptor keeps the
        // manifest (or index) descriptor's own.
        annotations: desc.annotations().clone().unwrap_or_default(),
    }
}

/// Whether a rebuild's image is there already: every one of `names` (at
/// least one) is the very record [`name_image`] would write, and each of
/// `blobs` (digest, labels) is in the store with those labels. Those
/// records hold the blobs, and through their labels the layers and the
/// unpacked snapshot, so nothing is written: no lease holds, no record
/// update (three write transactions of containerd's metadata store, each
/// with its fsync, on every no-op rebuild). Any read that fails or differs
/// says no, and the export writes as for a new image.
async fn already_named(
    svc: &Services,
    names: &[String],
    desc: &Descriptor,
    blobs: [(&str, &HashMap<String, String>); 2],
) -> bool {
    if names.is_empty() {
        return false;
    }
    let records = async {
        for name in names {
            match svc.images.get(name).await {
                Ok(r) if r == image_record(svc, name, desc) => {}
                _ => return false,
            }
        }
        true
    };
    let [config, manifest] = blobs;
    let (records, config, manifest) = tokio::join!(
        records,
        has_blob(svc, config.0, config.1),
        has_blob(svc, manifest.0, manifest.1)
    );
    records && config && manifest
}

/// Whether the blob `digest` is in the store with `labels` (and maybe more).
async fn has_blob(svc: &Services, digest: &str, labels: &HashMap<String, String>) -> bool {
    svc.content
        .info(digest)
        .await
        .is_ok_and(|info| info.has_labels(labels))
}

/// Points every name of `names` at `desc`, held by `lease` until the
/// records hold it.
async fn name_image(
    svc: &Services,
    names: &[String],
    desc: &Descriptor,
    lease: &LeaseId,
) -> Result<()> {
    for name in names {
        svc.images
            .put(&image_record(svc, name, desc), Some(lease))
            .await?;
    }
    Ok(())
}

/// Writes an OCI image index of `manifests` (each with the platform it is
/// for) under `lease`, with the GC labels that tie it to each manifest,
/// and points every name at it. The manifests were exported first
/// ([`export_image`] without names), so each already holds its config,
/// layers and unpacked snapshots. The index carries `annotations`'
/// index annotations, its descriptor the index-descriptor ones; `media`
/// names its media type.
pub async fn export_index(
    svc: &Services,
    manifests: &[(kiln_solver::Platform, Descriptor)],
    names: &[String],
    annotations: &ExportAnnotations,
    media: oci::MediaTypes,
    lease: &LeaseId,
) -> Result<Exported> {
    let mut descs = Vec::with_capacity(manifests.len());
    let mut labels = HashMap::new();
    for (i, (p, m)) in manifests.iter().enumerate() {
        let mut d = m.clone();
        d.set_platform(Some(oci::to_oci(p)));
        descs.push(d);
        labels.insert(
            format!("containerd.io/gc.ref.content.m.{i}"),
            m.digest().to_string(),
        );
    }
    let mut index = oci::ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::from(media.index()))
        .manifests(descs)
        .build()
        .map_err(|e| result_invalid(e.to_string()))?;
    let index_annotations = annotations.index();
    if !index_annotations.is_empty() {
        index.set_annotations(Some(index_annotations));
    }
    let bytes = oci::to_json(&index).map_err(|e| result_invalid(e.to_string()))?;
    let digest = write_blob(&*svc.content, &bytes, labels, lease).await?;
    let mut desc = own_descriptor(media.index(), &digest.to_string(), bytes.len() as i64)?;
    let on_descriptor = annotations.index_descriptor();
    if !on_descriptor.is_empty() {
        desc.set_annotations(Some(on_descriptor));
    }
    name_image(svc, names, &desc, lease).await?;
    Ok(Exported {
        manifest: desc,
        config_digest: String::new(),
        names: names.to_vec(),
        children: Vec::new(),
    })
}
