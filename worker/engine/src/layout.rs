//! Images in OCI image layouts the client holds (`oci-layout://` named
//! contexts): resolving a tag as BuildKit's client does, reading an
//! image's config for the frontend, and importing its blobs into the
//! content store under the build's lease for the source op.
//!
//! A layout is a directory with `index.json` and `blobs/sha256/<hex>`;
//! the build names it by a store id (as buildx names the content stores
//! it serves), which [`OciStores`] maps to the directory.

use crate::base::{choose_platform, BaseImage};
use crate::error::{Result, WorkerError};
use crate::oci::{self, Descriptor, ImageConfigJson, ImageIndex, ImageManifest};
use crate::refs::Layer;
use crate::remotecache::export::blob_path;
use crate::services::Services;
use kiln_snapshot::containerd::LeaseId;
use kiln_snapshot::services::LeaseResource;
use kiln_snapshot::Digest;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The OCI layout stores of one build, by store id.
pub type OciStores = HashMap<String, PathBuf>;

/// containerd's image name annotation, which BuildKit's client looks a tag
/// up by first.
const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";

/// The largest index, manifest or config read from a layout.
pub const MAX_JSON: u64 = 16 << 20;

fn layout_error(dir: &Path, reason: impl Into<String>) -> WorkerError {
    WorkerError::OciLayout {
        layout: dir.display().to_string(),
        reason: reason.into(),
    }
}

/// The directory of store `id`: every layout a build reads is given to
/// it (the embedded CLI's `--build-context` directories, kilnd's copies
/// of what the client's session serves), so another id is an error of
/// the build's definition.
pub fn store<'a>(stores: &'a OciStores, id: &str) -> Result<&'a Path> {
    stores
        .get(id)
        .map(PathBuf::as_path)
        .ok_or_else(|| WorkerError::OciLayout {
            layout: id.to_string(),
            reason: "no such OCI layout store was given to the build".to_string(),
        })
}

#[derive(serde::Deserialize)]
struct IndexJson {
    #[serde(default)]
    manifests: Vec<IndexEntry>,
}

#[derive(serde::Deserialize)]
struct IndexEntry {
    digest: String,
    #[serde(default)]
    annotations: HashMap<String, String>,
}

/// The digest `tag` names in the layout `dir`, as BuildKit's client
/// resolves an `oci-layout://` reference without a digest: the entry of
/// `index.json` whose `io.containerd.image.name`, else whose
/// `org.opencontainers.image.ref.name`, is `tag`; else the only entry.
pub fn resolve_tag(dir: &Path, tag: &str) -> Result<String> {
    let path = dir.join("index.json");
    let bytes = std::fs::read(&path).map_err(|source| WorkerError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let index: IndexJson = serde_json::from_slice(&bytes)
        .map_err(|e| layout_error(dir, format!("index.json: {e}")))?;
    let by = |key: &str| {
        index
            .manifests
            .iter()
            .find(|m| m.annotations.get(key).map(String::as_str) == Some(tag))
    };
    let entry = by(ANNOTATION_IMAGE_NAME)
        .or(by(crate::remotecache::export::ANNOTATION_REF_NAME))
        .or(match index.manifests.as_slice() {
            [only] => Some(only),
            _ => None,
        })
        .ok_or_else(|| layout_error(dir, format!("no image tagged {tag:?} in index.json")))?;
    Digest::parse(&entry.digest)
        .map(|d| d.to_string())
        .ok_or_else(|| layout_error(dir, format!("invalid digest {}", entry.digest)))
}

/// Reads blob `digest` of the layout (at most [`MAX_JSON`] bytes), checked
/// against its digest.
fn read_blob(dir: &Path, digest: &str) -> Result<Vec<u8>> {
    let path = blob_path(dir, digest)
        .ok_or_else(|| layout_error(dir, format!("invalid digest {digest}")))?;
    let f = std::fs::File::open(&path).map_err(|source| WorkerError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let mut bytes = Vec::new();
    f.take(MAX_JSON + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| WorkerError::Io {
            path: path.display().to_string(),
            source,
        })?;
    if bytes.len() as u64 > MAX_JSON {
        return Err(layout_error(
            dir,
            format!("blob {digest} is larger than {MAX_JSON} bytes"),
        ));
    }
    let got = Digest::of(&bytes);
    if got.as_str() != digest {
        return Err(layout_error(dir, format!("blob {digest} hashes to {got}")));
    }
    Ok(bytes)
}

/// One platform's image of a layout: the blobs it is made of.
struct Image {
    /// The index it was picked from (digest, bytes), if any.
    index: Option<(String, Vec<u8>)>,
    manifest: Descriptor,
    manifest_bytes: Vec<u8>,
    config_digest: String,
    config_bytes: Vec<u8>,
    config: ImageConfigJson,
    layers: Vec<Layer>,
}

/// Reads the image `digest` (an index or a manifest) of the layout `dir`
/// for `platform` (`None`: the worker's), by the one platform rule of base
/// images.
fn read_image(dir: &Path, digest: &str, platform: Option<&kiln_solver::Platform>) -> Result<Image> {
    let bytes = read_blob(dir, digest)?;
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType", default)]
        media_type: String,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    let probe: Probe =
        serde_json::from_slice(&bytes).map_err(|e| layout_error(dir, format!("{digest}: {e}")))?;
    let is_index = oci::is_index(&probe.media_type)
        || (probe.media_type.is_empty() && probe.manifests.is_some());
    let (index, manifest, manifest_bytes) = if is_index {
        let idx: ImageIndex = serde_json::from_slice(&bytes)
            .map_err(|e| layout_error(dir, format!("index {digest}: {e}")))?;
        let want = platform.cloned().unwrap_or_else(oci::worker_platform);
        let chosen = choose_platform(&idx, &want)
            .map_err(|present| {
                layout_error(
                    dir,
                    format!(
                        "no manifest for {want} in {digest} (it has: {})",
                        if present.is_empty() {
                            "none".to_string()
                        } else {
                            present.join(", ")
                        }
                    ),
                )
            })?
            .clone();
        let m = read_blob(dir, chosen.digest().as_ref())?;
        (Some((digest.to_string(), bytes)), chosen, m)
    } else {
        let size = i64::try_from(bytes.len()).unwrap_or(i64::MAX);
        let media = if probe.media_type.is_empty() {
            oci::MEDIA_OCI_MANIFEST
        } else {
            &probe.media_type
        };
        let desc = oci::descriptor(media, digest, size)
            .ok_or_else(|| layout_error(dir, format!("invalid digest {digest}")))?;
        (None, desc, bytes)
    };
    let m: ImageManifest = oci::manifest_from_slice(&manifest_bytes)
        .map_err(|e| layout_error(dir, format!("manifest {}: {e}", manifest.digest())))?;
    let config_digest = m.config().digest().to_string();
    let config_bytes = read_blob(dir, &config_digest)?;
    let config: ImageConfigJson = serde_json::from_slice(&config_bytes)
        .map_err(|e| layout_error(dir, format!("config {config_digest}: {e}")))?;
    let layers = crate::base::layers_of(&m, &config)
        .map_err(|e| layout_error(dir, format!("manifest {}: {e}", manifest.digest())))?;
    Ok(Image {
        index,
        manifest,
        manifest_bytes,
        config_digest,
        config_bytes,
        config,
        layers,
    })
}

/// The blobs an index or a manifest names that describe images, without
/// their layers: an index's manifests, a manifest's config. Walking them
/// from an image's digest gives every blob [`config`] may read, for each
/// platform, which is what a copy of a layout needs before the frontend
/// has picked platforms (kilnd copies a client's layout this way).
pub fn described_by(bytes: &[u8]) -> Vec<String> {
    #[derive(serde::Deserialize)]
    struct Named {
        digest: String,
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(default)]
        manifests: Vec<Named>,
        #[serde(default)]
        config: Option<Named>,
    }
    let Ok(p) = serde_json::from_slice::<Probe>(bytes) else {
        return Vec::new();
    };
    p.manifests
        .into_iter()
        .chain(p.config)
        .map(|n| n.digest)
        .collect()
}

/// The layer blobs of image `digest` of the layout `dir` for `platform`,
/// by the same platform rule as [`import`]: what an import copies.
pub fn layer_blobs(
    dir: &Path,
    digest: &str,
    platform: Option<&kiln_solver::Platform>,
) -> Result<Vec<crate::refs::Blob>> {
    Ok(read_image(dir, digest, platform)?
        .layers
        .into_iter()
        .filter_map(|l| l.blob)
        .collect())
}

/// The config of image `digest` of the layout `dir` for `platform`, for
/// the frontend.
pub fn config(
    dir: &Path,
    digest: &str,
    platform: Option<&kiln_solver::Platform>,
) -> Result<ImageConfigJson> {
    Ok(read_image(dir, digest, platform)?.config)
}

/// Imports image `digest` of the layout `dir` for `platform` into the
/// content store under `lease` (blobs already there are only added to
/// the lease) and returns it as a base image named `name`; the caller
/// unpacks its layers.
pub async fn import(
    svc: &Services,
    dir: &Path,
    name: &str,
    digest: &str,
    platform: Option<&kiln_solver::Platform>,
    lease: &LeaseId,
) -> Result<BaseImage> {
    let img = {
        let (d, digest, platform) = (dir.to_path_buf(), digest.to_string(), platform.cloned());
        tokio::task::spawn_blocking(move || read_image(&d, &digest, platform.as_ref()))
            .await
            .map_err(|e| layout_error(dir, e.to_string()))??
    };
    for l in img.layers.iter().filter_map(|l| l.blob.as_ref()) {
        copy_blob(svc, dir, &l.digest, lease).await?;
    }
    let mut small = vec![
        (img.config_digest.clone(), img.config_bytes.clone()),
        (
            img.manifest.digest().to_string(),
            img.manifest_bytes.clone(),
        ),
    ];
    small.extend(img.index.clone());
    for (d, bytes) in small {
        let written =
            kiln_snapshot::services::write_blob(&*svc.content, &bytes, HashMap::new(), lease)
                .await?;
        if written.as_str() != d {
            return Err(layout_error(dir, format!("blob {d} stored as {written}")));
        }
    }
    Ok(BaseImage {
        name: name.to_string(),
        target: digest.to_string(),
        manifest: img.manifest,
        config_digest: img.config_digest,
        config: img.config,
        layers: img.layers,
    })
}

/// Copies layer blob `digest` of the layout into the content store under
/// `lease`, unless the store has it (then the lease holds it).
async fn copy_blob(svc: &Services, dir: &Path, digest: &str, lease: &LeaseId) -> Result<()> {
    match svc.content.info(digest).await {
        Ok(_) => {
            svc.leases
                .add_resource(lease, &LeaseResource::Content(digest.to_string()))
                .await?;
            return Ok(());
        }
        Err(e) if e.is_not_found() => {}
        Err(e) => return Err(e.into()),
    }
    let path = blob_path(dir, digest)
        .ok_or_else(|| layout_error(dir, format!("invalid digest {digest}")))?;
    let expected = Digest::parse(digest)
        .ok_or_else(|| layout_error(dir, format!("invalid digest {digest}")))?;
    let io = |source| WorkerError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = tokio::fs::File::open(&path).await.map_err(io)?;
    let mut w = svc.content.writer(lease).await?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = tokio::io::AsyncReadExt::read(&mut f, &mut buf)
            .await
            .map_err(io)?;
        if n == 0 {
            break;
        }
        w.write(&buf[..n]).await?;
    }
    // containerd checks the bytes against the digest on commit.
    w.commit(&expected, HashMap::new()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(index: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::write(d.path().join("index.json"), index).expect("write index.json");
        d
    }

    const A: &str = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "sha256:bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn a_tag_is_found_by_image_name_then_ref_name_else_the_only_entry() {
        let two = format!(
            r#"{{"manifests":[
              {{"digest":"{A}","annotations":{{"org.opencontainers.image.ref.name":"v1"}}}},
              {{"digest":"{B}","annotations":{{"io.containerd.image.name":"v1"}}}}]}}"#
        );
        let d = layout(&two);
        assert_eq!(resolve_tag(d.path(), "v1").expect("found"), B);
        let e = resolve_tag(d.path(), "latest").expect_err("two entries, none tagged");
        assert!(
            e.to_string()
                .contains(r#"no image tagged "latest" in index.json"#),
            "{e}"
        );
        let one = layout(&format!(r#"{{"manifests":[{{"digest":"{A}"}}]}}"#));
        assert_eq!(resolve_tag(one.path(), "latest").expect("only entry"), A);
    }

    #[test]
    fn an_index_is_described_by_its_manifests_and_a_manifest_by_its_config() {
        let index = format!(r#"{{"manifests":[{{"digest":"{A}"}},{{"digest":"{B}"}}]}}"#);
        assert_eq!(described_by(index.as_bytes()), vec![A, B]);
        let manifest = format!(r#"{{"config":{{"digest":"{A}"}},"layers":[{{"digest":"{B}"}}]}}"#);
        assert_eq!(described_by(manifest.as_bytes()), vec![A]);
        assert!(described_by(b"not json").is_empty());
    }

    #[test]
    fn a_blob_that_does_not_hash_to_its_name_is_refused() {
        let d = layout("{}");
        let blobs = d.path().join("blobs/sha256");
        std::fs::create_dir_all(&blobs).expect("mkdir");
        std::fs::write(blobs.join(&A["sha256:".len()..]), b"{}").expect("write blob");
        let e = read_blob(d.path(), A).expect_err("wrong bytes");
        assert!(
            e.to_string()
                .contains(&format!("blob {A} hashes to sha256:")),
            "{e}"
        );
    }

    #[test]
    fn a_store_the_build_was_not_given_is_an_error() {
        let e = store(&OciStores::new(), "s1").expect_err("no stores");
        assert_eq!(
            e.to_string(),
            "oci-layout s1: no such OCI layout store was given to the build"
        );
    }
}
