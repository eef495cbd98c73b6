//! Image archives: an image in the content store written as an OCI image
//! layout tar (the `oci` exporter) or as that layout plus Docker's
//! `manifest.json` (the `docker` exporter, which `docker load` accepts).
//!
//! Headers come from the one tar writer, [`kiln_snapshot::diff::tar`], and
//! go straight into an async writer: layers go from containerd's read
//! stream to the output one chunk at a time, so no layer is ever held in
//! memory, and each blob is hashed on the way through so a corrupt content
//! store cannot produce an archive that silently differs from its
//! descriptors.
//!
//! The output is deterministic: entries in a fixed order, mode 0644 (0755
//! for directories), mtime 0, uid/gid 0, no user or group names.

use crate::error::{Result, WorkerError};
use crate::oci::{self, Descriptor, ImageIndex, ImageManifest, MediaType};
use crate::services::Services;
use kiln_snapshot::diff::tar::{padding, Entry, EntryKind, TarWriter, BLOCK};
use kiln_solver::Digest;
use sha2::{Digest as _, Sha256};
use std::collections::HashSet;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;

/// The annotation that carries the full image name (containerd's).
pub const ANNOTATION_IMAGE_NAME: &str = "io.containerd.image.name";
/// The annotation that carries the tag (OCI's reference name).
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The `io::Error` path used for failed writes to the archive output.
const OUTPUT: &str = "image archive output";

/// Which kind of archive to write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// An OCI image layout (`oci-layout`, `index.json`, `blobs/`).
    Oci,
    /// The OCI layout plus a Docker `manifest.json`, for `docker load`.
    Docker,
}

/// Streams an image archive of the manifest `manifest` (already in the
/// content store, with its config and layers) to `out`, which is flushed
/// but not shut down.
///
/// Entries, in order: `oci-layout`, `blobs/`, `blobs/sha256/`, the
/// manifest, config and layer blobs (each once), `index.json` (one entry
/// per name, annotated with [`ANNOTATION_IMAGE_NAME`] and
/// [`ANNOTATION_REF_NAME`]; one unannotated entry when `names` is empty)
/// and, for [`ArchiveFormat::Docker`], `manifest.json` with the familiar
/// forms of the tagged names as `RepoTags`.
///
/// Every blob is checked to exist with its descriptor's size before the
/// first byte is written, and hashed while it is streamed; a mismatch is
/// [`WorkerError::InvalidImage`] (the output is then incomplete). Only
/// single manifests can be archived: an index is
/// [`WorkerError::Unsupported`].
pub async fn write_archive(
    svc: &Services,
    manifest: &Descriptor,
    names: &[String],
    format: ArchiveFormat,
    out: &mut (dyn AsyncWrite + Unpin + Send),
) -> Result<()> {
    let image: &str = manifest.digest().as_ref();
    let media_type = manifest.media_type().to_string();
    let is_index = oci::is_index(&media_type);
    if is_index && format == ArchiveFormat::Docker {
        // BuildKit's docker exporter refuses an index the same way.
        return Err(WorkerError::Unsupported {
            location: String::new(),
            what: "the docker exporter for a multi-platform image (an image index; use oci)".into(),
        });
    }
    if !is_index
        && media_type != oci::MEDIA_OCI_MANIFEST
        && media_type != oci::MEDIA_DOCKER_MANIFEST
    {
        return Err(WorkerError::Unsupported {
            location: String::new(),
            what: format!("an image archive of {media_type}"),
        });
    }
    let ImageBlobs {
        root: manifest_bytes,
        children,
        manifests: parsed_all,
        blobs: streamed,
    } = read_image(svc, manifest).await?;
    let parsed = &parsed_all[0];

    // Blob paths are built from digests: only accept well-formed sha256
    // digests, which also keeps the paths inside `blobs/sha256/`.
    let manifest_hex = blob_hex(image, image)?;
    let config_hex = blob_hex(image, parsed.config().digest().as_ref())?;
    let mut layer_hexes = Vec::with_capacity(parsed.layers().len());
    for l in parsed.layers() {
        layer_hexes.push(blob_hex(image, l.digest().as_ref())?);
    }

    let index_json = index_json(manifest, names, image)?;
    let docker_json = match format {
        ArchiveFormat::Oci => None,
        ArchiveFormat::Docker => Some(docker_manifest_json(
            config_hex,
            &layer_hexes,
            names,
            image,
        )?),
    };

    let mut tar = TarStream::new(BufWriter::with_capacity(256 * 1024, out));
    tar.file("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)
        .await
        .map_err(output_error)?;
    tar.dir("blobs/").await.map_err(output_error)?;
    tar.dir("blobs/sha256/").await.map_err(output_error)?;
    tar.file(&format!("blobs/sha256/{manifest_hex}"), &manifest_bytes)
        .await
        .map_err(output_error)?;
    if is_index {
        for (digest, bytes) in &children {
            let hex = blob_hex(image, digest)?;
            tar.file(&format!("blobs/sha256/{hex}"), bytes)
                .await
                .map_err(output_error)?;
        }
    }
    for (d, size) in &streamed {
        let (digest, size): (&str, u64) = (d.digest().as_ref(), *size);
        let hex = blob_hex(image, digest)?;
        let rx = svc.content.read_stream(digest).await?;
        stream_blob(
            &mut tar,
            &format!("blobs/sha256/{hex}"),
            digest,
            size,
            rx,
            image,
        )
        .await?;
    }
    tar.file("index.json", &index_json)
        .await
        .map_err(output_error)?;
    if let Some(json) = docker_json {
        tar.file("manifest.json", &json)
            .await
            .map_err(output_error)?;
    }
    tar.finish().await.map_err(output_error)?;
    tracing::debug!(manifest = %image, ?format, names = ?names, "wrote image archive");
    Ok(())
}

/// The familiar form of a normalized name, as Docker shows it:
/// `docker.io/library/x:tag` -> `x:tag`, `docker.io/u/x:tag` -> `u/x:tag`;
/// other names are returned unchanged.
pub fn familiar_name(name: &str) -> String {
    let Some(rest) = name.strip_prefix("docker.io/") else {
        return name.to_string();
    };
    match rest.strip_prefix("library/") {
        // `library/` is only implied for single-component repositories.
        Some(short) if !repository_of(short).contains('/') => short.to_string(),
        _ => rest.to_string(),
    }
}

/// The repository part of a name without its domain: everything before
/// the tag or digest.
fn repository_of(name: &str) -> &str {
    let last = name.rfind('/').map_or(0, |i| i + 1);
    match name[last..].find([':', '@']) {
        Some(i) => &name[..last + i],
        None => name,
    }
}

/// The OCI reference name of `name`: what follows the repository (the tag,
/// or `@digest` for a digest reference), as containerd's exporter writes
/// it. `None` when the name has neither.
fn ref_name(name: &str) -> Option<&str> {
    let last = name.rfind('/').map_or(0, |i| i + 1);
    let i = name[last..].find([':', '@'])? + last;
    let object = name[i..].strip_prefix(':').unwrap_or(&name[i..]);
    (!object.is_empty()).then_some(object)
}

/// The tag of `name`, when it has one (`x:tag` or `x:tag@digest`).
fn tag_of(name: &str) -> Option<&str> {
    let object = ref_name(name)?;
    let tag = object.split('@').next().unwrap_or_default();
    (!tag.is_empty()).then_some(tag)
}

/// An `index.json` entry of `manifest`: with its own annotations (the
/// exporter's creation time) and, for a name, the name's.
fn index_entry(manifest: &Descriptor, name: Option<&str>) -> Descriptor {
    let mut d = Descriptor::new(
        manifest.media_type().clone(),
        manifest.size(),
        manifest.digest().clone(),
    );
    d.set_platform(manifest.platform().clone());
    let mut annotations = manifest.annotations().clone().unwrap_or_default();
    if let Some(name) = name {
        annotations.insert(ANNOTATION_IMAGE_NAME.to_string(), name.to_string());
        if let Some(r) = ref_name(name) {
            annotations.insert(ANNOTATION_REF_NAME.to_string(), r.to_string());
        }
    }
    d.set_annotations((!annotations.is_empty()).then_some(annotations));
    d
}

/// `index.json`: the manifest once per name, annotated with the name.
fn index_json(manifest: &Descriptor, names: &[String], image: &str) -> Result<Vec<u8>> {
    let manifests = if names.is_empty() {
        vec![index_entry(manifest, None)]
    } else {
        names
            .iter()
            .map(|n| index_entry(manifest, Some(n)))
            .collect()
    };
    let mut index = ImageIndex::default();
    index.set_schema_version(2);
    index.set_media_type(Some(MediaType::from(oci::MEDIA_OCI_INDEX)));
    index.set_manifests(manifests);
    oci::to_json(&index).map_err(|e| invalid(image, format!("index.json: {e}")))
}

/// Puts `manifest` into the `index.json` of the OCI layout `dir` (and
/// writes its `oci-layout`), as BuildKit's client does once a daemon has
/// exported an image into its store (`tar=false`): once per name,
/// annotated as in an archive, in place of an entry with the same name;
/// without names, tagged `latest`. Other entries stay.
pub fn put_index(dir: &std::path::Path, manifest: &Descriptor, names: &[String]) -> Result<()> {
    let io = |path: &std::path::Path| {
        let path = path.display().to_string();
        move |source| WorkerError::Io { path, source }
    };
    let path = dir.join("index.json");
    // A missing or empty `index.json` is an empty index; one without a
    // schema version or media type gets OCI's (as BuildKit's client).
    let mut index = match std::fs::read(&path) {
        Ok(bytes) if !bytes.is_empty() => {
            serde_json::from_slice::<ImageIndex>(&bytes).map_err(|e| WorkerError::OciLayout {
                layout: dir.display().to_string(),
                reason: format!("index.json: {e}"),
            })?
        }
        Ok(_) => ImageIndex::default(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ImageIndex::default(),
        Err(e) => return Err(io(&path)(e)),
    };
    index.set_schema_version(2);
    if index.media_type().is_none() {
        index.set_media_type(Some(MediaType::from(oci::MEDIA_OCI_INDEX)));
    }
    let entries: Vec<Descriptor> = if names.is_empty() {
        let mut latest = index_entry(manifest, None);
        let mut a = latest.annotations().clone().unwrap_or_default();
        a.insert(ANNOTATION_REF_NAME.to_string(), "latest".to_string());
        latest.set_annotations(Some(a));
        vec![latest]
    } else {
        names
            .iter()
            .map(|n| index_entry(manifest, Some(n)))
            .collect()
    };
    let key = |d: &Descriptor| {
        let a = d.annotations().clone().unwrap_or_default();
        (
            a.get(ANNOTATION_REF_NAME).cloned(),
            a.get(ANNOTATION_IMAGE_NAME).cloned(),
        )
    };
    let mut manifests = index.manifests().clone();
    for entry in entries {
        let k = key(&entry);
        manifests.retain(|m| key(m) != k);
        manifests.push(entry);
    }
    index.set_manifests(manifests);
    let bytes = oci::to_json(&index).map_err(|e| WorkerError::OciLayout {
        layout: dir.display().to_string(),
        reason: format!("index.json: {e}"),
    })?;
    let layout = dir.join("oci-layout");
    std::fs::write(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io(&layout))?;
    let tmp = dir.join(".index.json.kiln");
    std::fs::write(&tmp, &bytes).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))
}

/// An image read from the content store and checked against its
/// descriptors: the root's bytes; an index's manifests (digest, bytes),
/// or the root itself for one manifest; each of them parsed; and the
/// config and layer blobs, each once in manifest order, found in the
/// store with the size their manifest gives.
struct ImageBlobs {
    root: Vec<u8>,
    children: Vec<(String, Vec<u8>)>,
    manifests: Vec<ImageManifest>,
    blobs: Vec<(Descriptor, u64)>,
}

/// Reads the image `manifest` as [`ImageBlobs`] says.
async fn read_image(svc: &Services, manifest: &Descriptor) -> Result<ImageBlobs> {
    let image: &str = manifest.digest().as_ref();
    let root = svc.content.read(image).await?;
    if root.len() as u64 != manifest.size() {
        return Err(invalid(
            image,
            format!(
                "manifest is {} bytes, its descriptor says {}",
                root.len(),
                manifest.size()
            ),
        ));
    }
    let mut children: Vec<(String, Vec<u8>)> = Vec::new();
    if oci::is_index(manifest.media_type().as_ref()) {
        let index: ImageIndex = serde_json::from_slice(&root)
            .map_err(|e| invalid(image, format!("index JSON: {e}")))?;
        for m in index.manifests() {
            let digest: &str = m.digest().as_ref();
            let bytes = svc.content.read(digest).await?;
            if bytes.len() as u64 != m.size() {
                return Err(invalid(
                    image,
                    format!("manifest {digest} is not {} bytes", m.size()),
                ));
            }
            children.push((digest.to_string(), bytes));
        }
    } else {
        children.push((image.to_string(), root.clone()));
    }
    let mut manifests: Vec<ImageManifest> = Vec::with_capacity(children.len());
    for (digest, bytes) in &children {
        manifests.push(
            oci::manifest_from_slice(bytes)
                .map_err(|e| invalid(image, format!("manifest {digest} JSON: {e}")))?,
        );
    }
    let mut blobs: Vec<(Descriptor, u64)> = Vec::new();
    let mut seen = HashSet::from([image.to_string()]);
    let mut named: Vec<Descriptor> = Vec::new();
    for p in &manifests {
        named.push(p.config().clone());
        named.extend(p.layers().iter().cloned());
    }
    for d in named {
        let digest: &str = d.digest().as_ref();
        if !seen.insert(digest.to_string()) {
            continue;
        }
        let size = d.size();
        let info = svc.content.info(digest).await?;
        if u64::try_from(info.size).ok() != Some(size) {
            return Err(invalid(
                image,
                format!(
                    "blob {digest} is {} bytes in the content store, the manifest says {size}",
                    info.size
                ),
            ));
        }
        blobs.push((d, size));
    }
    Ok(ImageBlobs {
        root,
        children,
        manifests,
        blobs,
    })
}

/// Every blob of the image `manifest` (a manifest or an index of them) in
/// the content store, in the order an exporter copies them into a store:
/// configs and layers, then an index's manifests, the root last; each
/// once, with its size, checked as [`write_archive`] checks them.
pub async fn chain_blobs(svc: &Services, manifest: &Descriptor) -> Result<Vec<(String, u64)>> {
    let image = read_image(svc, manifest).await?;
    let root: &str = manifest.digest().as_ref();
    let mut out: Vec<(String, u64)> = image
        .blobs
        .iter()
        .map(|(d, size)| (d.digest().to_string(), *size))
        .collect();
    out.extend(
        image
            .children
            .iter()
            .filter(|(d, _)| d != root)
            .map(|(d, bytes)| (d.clone(), bytes.len() as u64)),
    );
    out.push((root.to_string(), image.root.len() as u64));
    Ok(out)
}

/// One entry of Docker's `manifest.json`.
#[derive(serde::Serialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags")]
    repo_tags: Vec<String>,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// Docker's `manifest.json`: one image, its tagged names in familiar form
/// (digest-only names cannot be tags and are left out).
fn docker_manifest_json(
    config_hex: &str,
    layer_hexes: &[&str],
    names: &[String],
    image: &str,
) -> Result<Vec<u8>> {
    let mut repo_tags: Vec<String> = Vec::new();
    for n in names {
        let Some(tag) = tag_of(n) else { continue };
        let familiar = format!("{}:{tag}", familiar_name(repository_of(n)));
        if !repo_tags.contains(&familiar) {
            repo_tags.push(familiar);
        }
    }
    let entry = DockerManifestEntry {
        config: format!("blobs/sha256/{config_hex}"),
        repo_tags,
        layers: layer_hexes
            .iter()
            .map(|h| format!("blobs/sha256/{h}"))
            .collect(),
    };
    serde_json::to_vec(&[entry]).map_err(|e| invalid(image, format!("manifest.json: {e}")))
}

/// The hex part of a sha256 digest; anything else is an invalid image.
fn blob_hex<'a>(image: &str, digest: &'a str) -> Result<&'a str> {
    match Digest::parse(digest) {
        Some(_) => Ok(&digest["sha256:".len()..]),
        None => Err(invalid(
            image,
            format!("unsupported or malformed digest {digest:?}"),
        )),
    }
}

fn invalid(image: &str, reason: String) -> WorkerError {
    WorkerError::InvalidImage {
        image: image.to_string(),
        reason,
    }
}

fn output_error(source: std::io::Error) -> WorkerError {
    WorkerError::Io {
        path: OUTPUT.into(),
        source,
    }
}

/// Copies one blob from a content read stream into a tar entry of `size`
/// bytes at `path`, hashing it on the way: too many or too few bytes, or a
/// different digest, is [`WorkerError::InvalidImage`] for `image`.
async fn stream_blob<W: AsyncWrite + Unpin>(
    tar: &mut TarStream<W>,
    path: &str,
    digest: &str,
    size: u64,
    mut rx: mpsc::Receiver<kiln_snapshot::Result<Vec<u8>>>,
    image: &str,
) -> Result<()> {
    tar.begin_file(path, size).await.map_err(output_error)?;
    let mut hasher = Sha256::new();
    let mut got: u64 = 0;
    while let Some(chunk) = rx.recv().await {
        let chunk = chunk?;
        got += chunk.len() as u64;
        if got > size {
            return Err(invalid(
                image,
                format!("blob {digest} is longer than its {size} bytes"),
            ));
        }
        hasher.update(&chunk);
        tar.write_data(&chunk).await.map_err(output_error)?;
    }
    if got != size {
        return Err(invalid(
            image,
            format!("blob {digest} ended after {got} of its {size} bytes"),
        ));
    }
    let actual = Digest::from_sha256(hasher.finalize().as_slice());
    if actual.as_str() != digest {
        return Err(invalid(
            image,
            format!("blob {digest} read back as {actual}"),
        ));
    }
    tar.end_file().await.map_err(output_error)
}

/// A tar archive written entry by entry into an async writer. A file is
/// either written whole ([`TarStream::file`]) or streamed
/// ([`TarStream::begin_file`], [`TarStream::write_data`],
/// [`TarStream::end_file`]), in which case its size must be known up front
/// and exactly that many bytes must follow. Headers are encoded by a
/// [`TarWriter`] into a buffer and moved on from there.
struct TarStream<W> {
    out: W,
    headers: TarWriter<Vec<u8>>,
    /// Bytes still owed to the current streamed entry.
    remaining: u64,
    /// The size of the current streamed entry, for its padding.
    current: u64,
}

impl<W: AsyncWrite + Unpin> TarStream<W> {
    fn new(out: W) -> Self {
        TarStream {
            out,
            headers: TarWriter::new(Vec::new()),
            remaining: 0,
            current: 0,
        }
    }

    /// Writes the header of `entry` (mode, owner and mtime fixed).
    async fn header(&mut self, path: &str, kind: EntryKind, size: u64) -> std::io::Result<()> {
        self.check_idle()?;
        self.headers
            .append_header(&Entry::fixed(path.as_bytes(), kind, size))?;
        let bytes = self.headers.take();
        self.out.write_all(&bytes).await
    }

    fn check_idle(&self) -> std::io::Result<()> {
        if self.remaining != 0 {
            return Err(std::io::Error::other(format!(
                "tar entry is missing {} bytes",
                self.remaining
            )));
        }
        Ok(())
    }

    /// A directory entry; `path` ends with `/`.
    async fn dir(&mut self, path: &str) -> std::io::Result<()> {
        self.header(path, EntryKind::Dir, 0).await
    }

    /// A regular file holding `data`.
    async fn file(&mut self, path: &str, data: &[u8]) -> std::io::Result<()> {
        self.begin_file(path, data.len() as u64).await?;
        self.write_data(data).await?;
        self.end_file().await
    }

    /// Starts a regular file of `size` bytes.
    async fn begin_file(&mut self, path: &str, size: u64) -> std::io::Result<()> {
        self.header(path, EntryKind::Regular, size).await?;
        self.remaining = size;
        self.current = size;
        Ok(())
    }

    /// Part of the current file's data.
    async fn write_data(&mut self, data: &[u8]) -> std::io::Result<()> {
        if data.len() as u64 > self.remaining {
            return Err(std::io::Error::other(format!(
                "tar entry data exceeds its size by {} bytes",
                data.len() as u64 - self.remaining
            )));
        }
        self.out.write_all(data).await?;
        self.remaining -= data.len() as u64;
        Ok(())
    }

    /// Ends the current file: all its bytes written, padded to a block.
    async fn end_file(&mut self) -> std::io::Result<()> {
        self.check_idle()?;
        let pad = padding(self.current);
        self.current = 0;
        self.out.write_all(&[0u8; BLOCK][..pad]).await
    }

    /// Two zero blocks end the archive; then everything is flushed and
    /// the writer handed back.
    async fn finish(mut self) -> std::io::Result<W> {
        self.check_idle()?;
        let end = self.headers.finish()?;
        self.out.write_all(&end).await?;
        self.out.flush().await?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// `put_index` as BuildKit's client puts an exported image into a
    /// layout: `latest` without names, an entry of the same name
    /// replaced, others kept, an empty `index.json` read as none.
    #[test]
    fn put_index_adds_replaces_and_keeps_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = |c: u8| {
            oci::descriptor(oci::MEDIA_OCI_MANIFEST, &digest_of(&[c]), 1).expect("descriptor")
        };
        let read = || -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).expect("read"))
                .expect("JSON")
        };
        let refs = |v: &serde_json::Value| -> Vec<(String, String)> {
            v["manifests"]
                .as_array()
                .expect("manifests")
                .iter()
                .map(|e| {
                    (
                        e["digest"].as_str().unwrap_or_default().to_string(),
                        e["annotations"][ANNOTATION_REF_NAME]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    )
                })
                .collect()
        };
        std::fs::write(dir.path().join("index.json"), b"").expect("empty");
        put_index(dir.path(), &m(1), &[]).expect("latest");
        put_index(dir.path(), &m(2), &["docker.io/library/x:v1".into()]).expect("v1");
        put_index(dir.path(), &m(3), &["docker.io/library/x:v1".into()]).expect("v1 again");
        let v = read();
        assert_eq!(v["mediaType"], oci::MEDIA_OCI_INDEX);
        assert_eq!(v["schemaVersion"], 2);
        assert_eq!(
            refs(&v),
            [
                (digest_of(&[1]), "latest".to_string()),
                (digest_of(&[3]), "v1".to_string())
            ]
        );
        assert_eq!(
            v["manifests"][1]["annotations"][ANNOTATION_IMAGE_NAME],
            "docker.io/library/x:v1"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("oci-layout")).expect("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#
        );
    }

    #[test]
    fn familiar_names() {
        for (name, want) in [
            ("docker.io/library/hello:latest", "hello:latest"),
            ("docker.io/library/busybox:1.36", "busybox:1.36"),
            ("docker.io/u/x:tag", "u/x:tag"),
            ("docker.io/library/a/b:1", "library/a/b:1"),
            ("example.com/x:1", "example.com/x:1"),
            ("localhost:5000/a/b:2", "localhost:5000/a/b:2"),
            ("docker.io/library/x", "x"),
            (
                "docker.io/library/x@sha256:0000000000000000000000000000000000000000000000000000000000000000",
                "x@sha256:0000000000000000000000000000000000000000000000000000000000000000",
            ),
        ] {
            assert_eq!(familiar_name(name), want, "{name}");
        }
    }

    #[test]
    fn ref_names_and_tags() {
        assert_eq!(ref_name("docker.io/library/x:latest"), Some("latest"));
        assert_eq!(ref_name("localhost:5000/x:1"), Some("1"));
        assert_eq!(ref_name("localhost:5000/x"), None);
        assert_eq!(ref_name("example.com/x@sha256:ab"), Some("@sha256:ab"));
        assert_eq!(ref_name("example.com/x:t@sha256:ab"), Some("t@sha256:ab"));
        assert_eq!(tag_of("example.com/x:t@sha256:ab"), Some("t"));
        assert_eq!(tag_of("example.com/x@sha256:ab"), None);
        assert_eq!(repository_of("localhost:5000/x:1"), "localhost:5000/x");
    }

    fn digest_of(data: &[u8]) -> String {
        Digest::of(data).to_string()
    }

    #[test]
    fn index_has_one_annotated_entry_per_name() {
        let m = oci::descriptor(oci::MEDIA_OCI_MANIFEST, &digest_of(b"m"), 1).expect("descriptor");
        let names = vec![
            "docker.io/library/hello:latest".to_string(),
            "example.com/x:1".to_string(),
        ];
        let v: serde_json::Value =
            serde_json::from_slice(&index_json(&m, &names, "t").expect("index")).expect("json");
        assert_eq!(v["schemaVersion"], 2);
        assert_eq!(v["mediaType"], oci::MEDIA_OCI_INDEX);
        let ms = v["manifests"].as_array().expect("manifests");
        assert_eq!(ms.len(), 2);
        assert_eq!(ms[0]["digest"], m.digest().to_string());
        assert_eq!(
            ms[0]["annotations"][ANNOTATION_IMAGE_NAME],
            "docker.io/library/hello:latest"
        );
        assert_eq!(ms[0]["annotations"][ANNOTATION_REF_NAME], "latest");
        assert_eq!(
            ms[1]["annotations"][ANNOTATION_IMAGE_NAME],
            "example.com/x:1"
        );
        assert_eq!(ms[1]["annotations"][ANNOTATION_REF_NAME], "1");

        let v: serde_json::Value =
            serde_json::from_slice(&index_json(&m, &[], "t").expect("index")).expect("json");
        let ms = v["manifests"].as_array().expect("manifests");
        assert_eq!(ms.len(), 1);
        assert!(ms[0].get("annotations").is_none(), "{v}");
    }

    #[test]
    fn docker_manifest_lists_familiar_tags() {
        let names = vec![
            "docker.io/library/hello:latest".to_string(),
            "example.com/x:1".to_string(),
            "example.com/x@sha256:ab".to_string(),
        ];
        let json = docker_manifest_json("cc", &["l1", "l2"], &names, "t").expect("json");
        let v: serde_json::Value = serde_json::from_slice(&json).expect("json");
        assert_eq!(
            v,
            serde_json::json!([{
                "Config": "blobs/sha256/cc",
                "RepoTags": ["hello:latest", "example.com/x:1"],
                "Layers": ["blobs/sha256/l1", "blobs/sha256/l2"],
            }])
        );
    }

    /// Entries as `(path, data)`; a path ending in `/` is a directory.
    async fn write_entries(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
        let mut tar = TarStream::new(Vec::new());
        for (path, data) in entries {
            if path.ends_with('/') {
                tar.dir(path).await.expect("dir");
            } else {
                tar.file(path, data).await.expect("file");
            }
        }
        tar.finish().await.expect("finish")
    }

    #[tokio::test]
    async fn tar_layout_parses_back_in_order() {
        let big: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let long_path = format!("blobs/sha256/{}", "a".repeat(64));
        let entries: Vec<(&str, Vec<u8>)> = vec![
            ("oci-layout", b"{}".to_vec()),
            ("blobs/", vec![]),
            ("blobs/sha256/", vec![]),
            ("empty", vec![]),
            ("exact", vec![7u8; 1024]),
            ("big", big.clone()),
            (&long_path, b"x".to_vec()),
        ];
        let bytes = write_entries(&entries).await;

        // Layout: each entry is a header plus data padded to 512; two zero
        // blocks end it.
        let want_len: usize = entries
            .iter()
            .map(|(_, d)| BLOCK + d.len() + padding(d.len() as u64))
            .sum::<usize>()
            + 2 * BLOCK;
        assert_eq!(bytes.len(), want_len);
        assert!(bytes[bytes.len() - 2 * BLOCK..].iter().all(|b| *b == 0));

        let mut ar = tar::Archive::new(&bytes[..]);
        let mut seen = Vec::new();
        for e in ar.entries().expect("entries") {
            let mut e = e.expect("entry");
            let h = e.header().clone();
            let path = String::from_utf8(e.path_bytes().into_owned()).expect("utf8");
            assert_eq!(h.mtime().expect("mtime"), 0, "{path}");
            assert_eq!(h.uid().expect("uid"), 0, "{path}");
            assert_eq!(h.gid().expect("gid"), 0, "{path}");
            assert!(h.as_ustar().is_some(), "{path} is ustar");
            let mut data = Vec::new();
            e.read_to_end(&mut data).expect("read");
            if path.ends_with('/') {
                assert_eq!(h.entry_type(), tar::EntryType::Directory, "{path}");
                assert_eq!(h.mode().expect("mode"), 0o755, "{path}");
            } else {
                assert_eq!(h.entry_type(), tar::EntryType::Regular, "{path}");
                assert_eq!(h.mode().expect("mode"), 0o644, "{path}");
            }
            assert_eq!(h.size().expect("size"), data.len() as u64, "{path}");
            seen.push((path, data));
        }
        let want: Vec<(String, Vec<u8>)> = entries
            .iter()
            .map(|(p, d)| (p.to_string(), d.clone()))
            .collect();
        assert_eq!(seen, want);
    }

    #[tokio::test]
    async fn streamed_entry_must_get_its_declared_size() {
        let mut tar = TarStream::new(Vec::new());
        tar.begin_file("f", 3).await.expect("begin");
        tar.write_data(b"ab").await.expect("write");
        assert!(tar.end_file().await.is_err(), "one byte short");
        assert!(tar.write_data(b"cd").await.is_err(), "one byte too many");
        tar.write_data(b"c").await.expect("last byte");
        tar.end_file().await.expect("end");
        tar.finish().await.expect("finish");
    }

    /// A content read stream that yields `chunks`.
    fn chunks(chunks: Vec<Vec<u8>>) -> mpsc::Receiver<kiln_snapshot::Result<Vec<u8>>> {
        let (tx, rx) = mpsc::channel(chunks.len().max(1));
        for c in chunks {
            tx.try_send(Ok(c)).expect("channel has room");
        }
        rx
    }

    #[tokio::test]
    async fn stream_blob_verifies_digest_and_size() {
        let data = b"hello layer".to_vec();
        let digest = digest_of(&data);
        let split = vec![data[..4].to_vec(), data[4..].to_vec()];

        let mut tar = TarStream::new(Vec::new());
        stream_blob(
            &mut tar,
            "b",
            &digest,
            data.len() as u64,
            chunks(split),
            "img",
        )
        .await
        .expect("matching blob streams");
        let bytes = tar.finish().await.expect("finish");
        let mut ar = tar::Archive::new(&bytes[..]);
        let mut e = ar
            .entries()
            .expect("entries")
            .next()
            .expect("one")
            .expect("entry");
        let mut back = Vec::new();
        e.read_to_end(&mut back).expect("read");
        assert_eq!(back, data);

        for (got, size, why) in [
            (b"hello layeR".to_vec(), data.len() as u64, "read back as"),
            (b"hello layer!".to_vec(), data.len() as u64, "longer than"),
            (b"hello".to_vec(), data.len() as u64, "ended after 5"),
        ] {
            let mut tar = TarStream::new(Vec::new());
            let err = stream_blob(&mut tar, "b", &digest, size, chunks(vec![got]), "img")
                .await
                .expect_err(why);
            assert!(
                matches!(&err, WorkerError::InvalidImage { reason, .. } if reason.contains(why)),
                "{why}: {err}"
            );
        }

        // A read error from containerd ends the copy with that error.
        let (tx, rx) = mpsc::channel(1);
        tx.try_send(Err(kiln_snapshot::SnapshotError::InvalidBlob {
            digest: digest.clone(),
            reason: "boom".into(),
        }))
        .expect("room");
        let mut tar = TarStream::new(Vec::new());
        let err = stream_blob(&mut tar, "b", &digest, 11, rx, "img")
            .await
            .expect_err("read error");
        assert!(matches!(err, WorkerError::Snapshot(_)), "{err}");
    }

    #[tokio::test]
    async fn long_paths_go_through_pax() {
        let dir = format!("{}/", "d".repeat(120));
        let file = format!("{dir}{}", "f".repeat(200));
        let bytes = write_entries(&[(&dir, vec![]), (&file, b"x".to_vec())]).await;
        let mut ar = tar::Archive::new(&bytes[..]);
        let paths: Vec<String> = ar
            .entries()
            .expect("entries")
            .map(|e| String::from_utf8(e.expect("entry").path_bytes().into_owned()).expect("utf8"))
            .collect();
        assert_eq!(paths, [dir, file]);
    }
}
