//! The exporters of a solved build: `image` (into containerd, unpacked),
//! `oci` / `docker` / `tar` (bytes over FileSend; `oci`/`docker` with
//! `tar=false` into the client's session content store), `local` (a file
//! tree over FileSend, the daemon as fsutil sender).

use crate::sessions::SessionHandle;
use crate::state::status_of;
use base64::Engine as _;
use kiln_engine::archive::ArchiveFormat;
use kiln_engine::build::Solved;
use kiln_proto::control::Exporter;
use kiln_snapshot::diff::{Compression, Level};
use kiln_solver::ImageConfig;
use std::collections::HashMap;
use tonic::Status;

const FILE_SEND: &str = "/moby.filesync.v1.FileSend/DiffCopy";

/// OCI's annotation of when an image was made.
const CREATED: &str = "org.opencontainers.image.created";

/// The exporter types kilnd runs.
const TYPES: &[&str] = &["image", "moby", "oci", "docker", "local", "tar"];

/// Refuses, before the build, an exporter kilnd does not have and every
/// option it would not act on ([`kiln_engine::exporter_options`], the
/// table `kiln build -o` checks too), naming it.
fn check_options(e: &Exporter) -> Result<(), Status> {
    use kiln_engine::exporter_options::ExporterOptionError as E;
    if !TYPES.contains(&e.r#type.as_str()) {
        return Err(Status::unimplemented(format!(
            "exporter {:?} is not supported yet (image, oci, docker, local, tar)",
            e.r#type
        )));
    }
    let mut attrs: Vec<_> = e.attrs.iter().collect();
    attrs.sort();
    for (k, v) in attrs {
        // Options kilnd acts on that `kiln build -o` does not have: a
        // client's own image config and its base's (buildctl, gateway
        // clients; read by `control::config_from_attrs`).
        let image_like = matches!(e.r#type.as_str(), "image" | "moby" | "oci" | "docker");
        if image_like
            && matches!(
                k.as_str(),
                "containerimage.config" | "containerimage.base.config"
            )
        {
            continue;
        }
        kiln_engine::exporter_options::check(&e.r#type, k, v).map_err(|err| match err {
            E::NotYet { .. } | E::OnlyBool { .. } => Status::unimplemented(err.to_string()),
            _ => Status::invalid_argument(err.to_string()),
        })?;
    }
    // An annotation of an unknown type or with a bad platform, and media
    // types the other options conflict with.
    annotations(&e.attrs)?;
    if matches!(e.r#type.as_str(), "image" | "moby" | "oci" | "docker") {
        media_types(&e.attrs)?;
        kiln_engine::exporter_options::check_together(&e.r#type, |k| {
            e.attrs.get(k).map(String::as_str)
        })
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    }
    Ok(())
}

/// How an image exporter writes the image: the build's `compression`,
/// its own `force-compression`, its epoch (its `source-date-epoch`, else
/// the `frontend`'s) with `rewrite-timestamp`, and its media types.
fn image_format(
    attrs: &HashMap<String, String>,
    compression: Compression,
    frontend: Option<i64>,
) -> Result<kiln_engine::export::ImageFormat, Status> {
    let force_compression = attrs
        .get("force-compression")
        .map(|v| kiln_engine::exporter_options::bool_option("force-compression", v))
        .transpose()
        .map_err(|e| Status::invalid_argument(e.to_string()))?
        .unwrap_or(false);
    Ok(kiln_engine::export::ImageFormat {
        compression,
        force_compression,
        level: level(attrs, compression)?,
        epoch: epoch_of(attrs, frontend)?,
        rewrite_timestamp: rewrite_epoch(attrs, Some(0))?.is_some(),
        media: media_types(attrs)?,
    })
}

/// The media types an image exporter writes (its `oci-mediatypes`),
/// checked against its other options.
fn media_types(attrs: &HashMap<String, String>) -> Result<kiln_engine::oci::MediaTypes, Status> {
    kiln_engine::exporter_options::media_types(
        |k| attrs.get(k).map(String::as_str),
        annotations(attrs)?.beyond_manifests(),
    )
    .map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The layer compression the exporters ask for (gzip by default).
/// Also checks, before the build, every exporter's type and options, and
/// the values of the options read after it (`rewrite-timestamp`,
/// `source-date-epoch`).
pub fn compression(exporters: &[Exporter]) -> Result<Compression, Status> {
    for e in exporters {
        rewrite_epoch(&e.attrs, None)?;
        check_options(e)?;
    }
    let compression = match exporters.iter().find_map(|e| e.attrs.get("compression")) {
        Some(c) => c
            .parse()
            .map_err(|_| Status::invalid_argument(format!("invalid compression {c:?}")))?,
        None => Compression::Gzip,
    };
    for e in exporters {
        level(&e.attrs, compression)?;
    }
    Ok(compression)
}

/// An exporter's `compression-level` for layers in `compression`.
fn level(attrs: &HashMap<String, String>, compression: Compression) -> Result<Level, Status> {
    kiln_engine::exporter_options::compression_level(
        |k| attrs.get(k).map(String::as_str),
        compression,
    )
    .map_err(|e| match e.to_string() {
        t if t.ends_with("not supported yet") => Status::unimplemented(t),
        t => Status::invalid_argument(t),
    })
}

/// The compression an image exporter among `exporters` (image store,
/// oci/docker tar, push) will read the result's layers in, unchanged, so
/// the solve makes their blobs as the steps commit (the engine's
/// `BuildRequest::export_blobs`). `None` when no exporter makes an image,
/// when one rewrites layer times or asks for a compression level (only
/// the blobs it makes take it), or when the options are invalid (the
/// build then fails on them before anything runs).
pub fn export_blobs(exporters: &[Exporter]) -> Option<Compression> {
    let images = exporters
        .iter()
        .any(|e| matches!(e.r#type.as_str(), "image" | "moby" | "oci" | "docker"));
    let compression = compression(exporters).ok().filter(|_| images)?;
    // Any epoch: does the exporter rewrite times when there is one?
    let rewrites = exporters.iter().any(|e| {
        !matches!(rewrite_epoch(&e.attrs, Some(0)), Ok(None))
            || !matches!(level(&e.attrs, compression), Ok(l) if l.is_default())
    });
    (!rewrites).then_some(compression)
}

/// The epoch an image exporter clamps layer times to: with
/// `rewrite-timestamp=true`, [`epoch_of`] (BuildKit's texts for bad
/// values).
fn rewrite_epoch(
    attrs: &HashMap<String, String>,
    frontend: Option<i64>,
) -> Result<Option<i64>, Status> {
    // Go's ParseBool, without the bare key (BuildKit's `parseBool`).
    let rewrite = match attrs.get("rewrite-timestamp") {
        None => false,
        Some(v) => match kiln_engine::exporter_options::bool_option("rewrite-timestamp", v) {
            Ok(b) if !v.is_empty() => b,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "non-bool value specified for rewrite-timestamp: strconv.ParseBool: parsing {v:?}: invalid syntax"
                )))
            }
        },
    };
    Ok(epoch_of(attrs, frontend)?.filter(|_| rewrite))
}

/// An exporter's epoch: its `source-date-epoch` option, else the
/// frontend's `SOURCE_DATE_EPOCH`. The local and tar exporters give every
/// file this time, as BuildKit's do.
fn epoch_of(attrs: &HashMap<String, String>, frontend: Option<i64>) -> Result<Option<i64>, Status> {
    let own = attrs
        .get("source-date-epoch")
        .map(|v| kiln_engine::exporter_options::source_date_epoch(v))
        .transpose()
        .map_err(|e| Status::invalid_argument(e.to_string()))?
        .flatten();
    Ok(own.or(frontend))
}

/// An image exporter's annotation options ([`kiln_engine::annotations`]);
/// [`check_options`] read them once before the build.
fn annotations(
    attrs: &HashMap<String, String>,
) -> Result<kiln_engine::annotations::ExportAnnotations, Status> {
    kiln_engine::annotations::ExportAnnotations::from_options(
        attrs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    )
    .map_err(|e| Status::invalid_argument(e.to_string()))
}

/// The `name` attribute's names as the client gave them.
fn given_names(attrs: &HashMap<String, String>) -> Vec<String> {
    attrs.get("name").map_or_else(Vec::new, |n| {
        n.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect()
    })
}

/// The `name` attribute's names normalized (`docker.io/library/a:1`): what
/// the image store and the archives hold, where nerdctl and the kubelet
/// look them up.
fn names(attrs: &HashMap<String, String>) -> Result<Vec<String>, Status> {
    given_names(attrs)
        .iter()
        .map(|name| {
            kiln_dockerfile::reference::normalize(name)
                .map_err(|e| Status::invalid_argument(e.to_string()))
        })
        .collect()
}

/// The session an exporter of `kind` sends to, which must accept files
/// when `files` (FileSend).
fn session_for<'a>(
    session: Option<&'a SessionHandle>,
    kind: &str,
    files: bool,
) -> Result<&'a SessionHandle, Status> {
    let s = session.ok_or_else(|| {
        Status::failed_precondition(format!("the {kind} exporter needs a session"))
    })?;
    if files && !s.exposes(FILE_SEND) {
        return Err(Status::failed_precondition(format!(
            "the {kind} exporter needs the client to accept files (FileSend)"
        )));
    }
    Ok(s)
}

/// What exporter `kind` did, as BuildKit's reports it under its vertex:
/// an image's layers (since the step began), manifest, config and each
/// name it stored (from the response), `sending tarball` for the
/// archives, `copying files` for a directory.
fn items(
    kind: &str,
    attrs: &HashMap<String, String>,
    resp: &HashMap<String, String>,
    children: &[(String, String)],
    started: std::time::SystemTime,
) -> Vec<(String, std::time::SystemTime, std::time::SystemTime)> {
    let now = std::time::SystemTime::now();
    let image = matches!(kind, "image" | "moby" | "oci" | "docker");
    let mut items = Vec::new();
    if image {
        items.push(("exporting layers".to_string(), started, now));
    }
    if let (true, Some(d)) = (image, resp.get("containerimage.digest")) {
        // The archives name nothing in the image store, nor does an image
        // exporter with `store=false`.
        let stored = Naming::of(attrs).is_ok_and(|n| n.store);
        let names: Vec<&str> = match (kind, resp.get("image.name")) {
            ("image" | "moby", Some(n)) if stored => n.split(',').collect(),
            _ => Vec::new(),
        };
        // kiln's images are always unpacked; with `unpack=true` (nerdctl
        // asks for it) each name's `unpacking to` follows its `naming to`.
        let unpack = attrs
            .get("unpack")
            .is_some_and(|v| kiln_engine::exporter_options::bool_option("unpack", v) == Ok(true));
        for item in kiln_engine::progress::image_export_items(
            d,
            resp.get("containerimage.config.digest").map(String::as_str),
            children,
            &names,
        ) {
            let unpacking = item
                .strip_prefix("naming to ")
                .filter(|_| unpack)
                .map(|n| format!("unpacking to {n}"));
            items.push((item, now, now));
            items.extend(unpacking.map(|u| (u, now, now)));
        }
    }
    let tarball = tar_output(attrs).unwrap_or(true);
    match kind {
        "oci" | "docker" if !tarball => {}
        "oci" | "docker" | "tar" => items.push(("sending tarball".to_string(), now, now)),
        "local" => items.push(("copying files".to_string(), started, now)),
        _ => {}
    }
    items
}

/// The vertex an exporter's work shows under, as BuildKit names it.
pub fn vertex_name(kind: &str) -> String {
    match kind {
        "image" | "moby" => "exporting to image".to_string(),
        "oci" | "docker" => format!("exporting to {kind} image format"),
        "local" => "exporting to client directory".to_string(),
        "tar" => "exporting to client tarball".to_string(),
        other => format!("exporting to {other}"),
    }
}

/// When an archive's image was made, as BuildKit's oci and docker
/// exporters annotate its manifest (`org.opencontainers.image.created`):
/// the exporter's `source-date-epoch`, else the frontend's
/// `SOURCE_DATE_EPOCH`, else now; whole seconds.
fn created_annotation(attrs: &HashMap<String, String>, frontend: Option<i64>) -> String {
    // The options were checked before the build (`compression`).
    match epoch_of(attrs, frontend).ok().flatten() {
        Some(secs) => kiln_snapshot::time::rfc3339_secs(secs),
        None => kiln_snapshot::time::rfc3339(std::time::SystemTime::now(), false),
    }
}

/// What the exporters did: their merged response, and the descriptor of
/// each image one made, by exporter index (a build record's result).
#[derive(Default)]
pub struct Exports {
    pub response: HashMap<String, String>,
    pub results: HashMap<i64, kiln_proto::control::Descriptor>,
}

/// A made image's descriptor as a build record keeps it.
fn result_of(out: &kiln_engine::export::Exported) -> kiln_proto::control::Descriptor {
    kiln_proto::control::Descriptor {
        media_type: out.manifest.media_type().to_string(),
        digest: out.manifest.digest().to_string(),
        size: i64::try_from(out.manifest.size()).unwrap_or(i64::MAX),
        annotations: out.manifest.annotations().clone().unwrap_or_default(),
    }
}

/// Runs every exporter on `solved` and merges their responses.
pub async fn run(
    engine: &kiln_engine::Engine,
    job: &std::sync::Arc<crate::jobs::Job>,
    session: Option<&SessionHandle>,
    solved: &Solved,
    config: &ImageConfig,
    exporters: &[Exporter],
    compression: Compression,
) -> Result<Exports, Status> {
    let mut resp = HashMap::new();
    let mut results = HashMap::new();
    // The work shows under the first exporter's vertex (`control`
    // starts and ends it), as BuildKit's items of it.
    let vertex = vertex_name(exporters.first().map_or("image", |e| e.r#type.as_str()));
    let started = std::time::SystemTime::now();
    // An archived index's platforms, for the first exporter's items.
    let mut children = Vec::new();
    for (index, e) in exporters.iter().enumerate() {
        let attrs = &e.attrs;
        let kind = e.r#type.as_str();
        match kind {
            "image" | "moby" => {
                let push = crate::push::options(attrs)?;
                let names = names(attrs)?;
                let naming = Naming::of(attrs)?;
                let stored: &[String] = if naming.store { &names } else { &[] };
                let mut out = solved
                    .export_image_with(
                        config,
                        stored,
                        &image_format(attrs, compression, config.source_date_epoch)?,
                        &annotations(attrs)?,
                    )
                    .await
                    .map_err(|e| status_of(&e))?;
                // buildkitd's image exporter reports (and names in its
                // progress) the names as the client gave them (`a1:1`),
                // and the dangling name it added.
                let mut reported = given_names(attrs);
                let digest = out.manifest.digest().to_string();
                let (dangling, more) = naming.more_names(&names, &digest);
                reported.extend(dangling);
                if naming.store && !more.is_empty() {
                    kiln_engine::export::name_exported(engine.services(), &more, &out)
                        .await
                        .map_err(|e| status_of(&e))?;
                    out.names.extend(more);
                }
                image_response(&mut resp, &out, &reported);
                results.insert(i64::try_from(index).unwrap_or(i64::MAX), result_of(&out));
                if index == 0 {
                    let items = items(kind, attrs, &resp, &out.children, started);
                    crate::status::step_items(job, &vertex, &items);
                }
                if let Some(opts) = &push {
                    crate::push::run(job, &vertex, session, solved, &out, &names, opts).await?;
                }
            }
            kind @ ("oci" | "docker") => {
                let tar = tar_output(attrs)?;
                // `tar=false` writes into a content store, not a file.
                let s = session_for(session, kind, tar)?;
                if !tar && !s.exposes(kiln_session::content::WRITE_METHOD) {
                    return Err(Status::failed_precondition(
                        "an export with tar=false needs the client to serve its directory as a content store",
                    ));
                }
                let names = names(attrs)?;
                // Before anything is written, whatever `tar` says (the
                // archive writer refuses an index too).
                if kind == "docker" && !solved.platform_results().is_empty() {
                    return Err(Status::unimplemented(
                        "docker exporter does not currently support exporting manifest lists",
                    ));
                }
                let mut out = solved
                    .export_image_with(
                        config,
                        &[],
                        &image_format(attrs, compression, config.source_date_epoch)?,
                        &annotations(attrs)?,
                    )
                    .await
                    .map_err(|e| status_of(&e))?;
                let mut annotations = out.manifest.annotations().clone().unwrap_or_default();
                annotations
                    .entry(CREATED.to_string())
                    .or_insert_with(|| created_annotation(attrs, config.source_date_epoch));
                out.manifest.set_annotations(Some(annotations));
                // The names go into the archive (and the response), not
                // into the image store.
                // The OCI and Docker exporters report them normalized.
                out.names = names.clone();
                image_response(&mut resp, &out, &names);
                children.clone_from(&out.children);
                results.insert(i64::try_from(index).unwrap_or(i64::MAX), result_of(&out));
                if tar {
                    send_archive(engine, s, index, kind, &out.manifest, &names, &resp).await?;
                } else {
                    // `tar=false`: the blobs go into the client's store;
                    // the client writes its `index.json` from the answer.
                    copy_to_client(engine, s, &out.manifest).await?;
                }
            }
            "local" => {
                let s = session_for(session, "local", true)?;
                let epoch = epoch_of(attrs, config.source_date_epoch)?;
                let view = file_tree(solved, attrs, config).await?;
                // Platform directories as BuildKit's exporter makes them up.
                let origin = view.origin();
                let opts = kiln_session::fsutil::SendOptions {
                    synthetic_dirs: view.platform_dirs(),
                    mtime: epoch.map(|secs| secs.saturating_mul(1_000_000_000)),
                    link_groups: Some(kiln_session::fsutil::LinkGroups(std::sync::Arc::new(
                        move |p| origin.layer_of(std::path::Path::new(p)),
                    ))),
                    ..Default::default()
                };
                let r = kiln_session::filesend::send_local(
                    s.channel.clone(),
                    Some(index),
                    view.path(),
                    &opts,
                )
                .await;
                view.close().await;
                r.map_err(|e| Status::new(e.kind().code(), e.to_string()))?;
            }
            "tar" => {
                let s = session_for(session, "tar", true)?;
                let epoch = epoch_of(attrs, config.source_date_epoch)?;
                let view = file_tree(solved, attrs, config).await?;
                let root = view.path().to_path_buf();
                let opts = kiln_snapshot::diff::TreeOptions {
                    synthetic_dirs: view.platform_dirs(),
                    mtime: epoch,
                    origin: view.origin(),
                };
                let (w, r) = tokio::io::duplex(1 << 20);
                let writer = tokio::task::spawn_blocking(move || {
                    let mut sync = tokio_util::io::SyncIoBridge::new(w);
                    kiln_snapshot::diff::write_tree(&root, &opts, &mut sync)
                });
                let sent = kiln_session::filesend::send_bytes(
                    s.channel.clone(),
                    Some(index),
                    Vec::new(),
                    crate::metrics::CountingReader(r),
                )
                .await;
                let written = writer.await.map_err(|e| Status::internal(e.to_string()));
                view.close().await;
                written?.map_err(|e| Status::internal(e.to_string()))?;
                sent.map_err(|e| Status::new(e.kind().code(), e.to_string()))?;
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "exporter {other:?} is not supported (image, oci, docker, local, tar)"
                )))
            }
        }
        if index == 0 && !matches!(kind, "image" | "moby") {
            let items = items(kind, attrs, &resp, &children, started);
            crate::status::step_items(job, &vertex, &items);
        }
    }
    Ok(Exports {
        response: resp,
        results,
    })
}

/// Streams the `kind` (`oci` or `docker`) archive of the image `manifest`,
/// named `names`, to the client as exporter `index`'s FileSend, with the
/// response so far as its metadata.
async fn send_archive(
    engine: &kiln_engine::Engine,
    s: &SessionHandle,
    index: usize,
    kind: &str,
    manifest: &kiln_engine::oci::Descriptor,
    names: &[String],
    resp: &HashMap<String, String>,
) -> Result<(), Status> {
    let format = if kind == "docker" {
        ArchiveFormat::Docker
    } else {
        ArchiveFormat::Oci
    };
    let (mut w, r) = tokio::io::duplex(1 << 20);
    let svc = engine.services().clone();
    let (manifest, names) = (manifest.clone(), names.to_vec());
    let writer = tokio::spawn(async move {
        let r = kiln_engine::archive::write_archive(&svc, &manifest, &names, format, &mut w).await;
        drop(w);
        r
    });
    let md: Vec<(String, String)> = resp
        .iter()
        .map(|(k, v)| (format!("exporter-md-{k}"), v.clone()))
        .collect();
    let sent = kiln_session::filesend::send_bytes(
        s.channel.clone(),
        Some(index),
        md,
        crate::metrics::CountingReader(r),
    )
    .await;
    let written = writer.await.map_err(|e| Status::internal(e.to_string()))?;
    written.map_err(|e| status_of(&e))?;
    sent.map_err(|e| Status::new(e.kind().code(), e.to_string()))
}

/// An `oci` or `docker` exporter's `tar` option: a tarball (the default),
/// or the blobs into the client's store ([`copy_to_client`]).
fn tar_output(attrs: &HashMap<String, String>) -> Result<bool, Status> {
    attrs
        .get("tar")
        .map(|v| kiln_engine::exporter_options::bool_option("tar", v))
        .transpose()
        .map(|t| t.unwrap_or(true))
        .map_err(|e| Status::invalid_argument(e.to_string()))
}

/// Copies every blob of the image `manifest` into the client's export
/// store (BuildKit's `CopyChain` into the session's content store), the
/// root last; what the store has already is not sent again.
async fn copy_to_client(
    engine: &kiln_engine::Engine,
    s: &SessionHandle,
    manifest: &kiln_engine::oci::Descriptor,
) -> Result<(), Status> {
    use kiln_session::content;
    use tokio_stream::StreamExt as _;
    let svc = engine.services();
    let blobs = kiln_engine::archive::chain_blobs(svc, manifest)
        .await
        .map_err(|e| status_of(&e))?;
    let status = |e: kiln_session::SessionError| Status::new(e.kind().code(), e.to_string());
    for (digest, size) in blobs {
        // Asked first, so a blob the directory has is not read at all.
        if content::has(s.channel.clone(), content::EXPORT_STORE, &digest)
            .await
            .map_err(status)?
        {
            continue;
        }
        let rx = svc
            .content
            .read_stream(&digest)
            .await
            .map_err(|e| Status::new(e.kind().code(), format!("read {digest}: {e}")))?;
        let chunks = tokio_stream::wrappers::ReceiverStream::new(rx).map(|chunk| {
            chunk
                .map(std::io::Cursor::new)
                .map_err(|e| std::io::Error::other(e.to_string()))
        });
        let reader = tokio_util::io::StreamReader::new(chunks);
        content::write_missing(
            s.channel.clone(),
            content::EXPORT_STORE,
            &digest,
            &digest,
            size,
            reader,
        )
        .await
        .map_err(status)?;
    }
    Ok(())
}

/// The result as the local and tar exporters send it, by their
/// `platform-split` option.
async fn file_tree(
    solved: &Solved,
    attrs: &HashMap<String, String>,
    config: &ImageConfig,
) -> Result<kiln_engine::build::ResultView, Status> {
    let split = attrs
        .get("platform-split")
        .map(|v| kiln_engine::exporter_options::bool_option("platform-split", v))
        .transpose()
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    solved
        .file_tree(split, config.platform.as_ref())
        .await
        .map_err(|e| status_of(&e))
}

/// The image exporter's naming options, as BuildKit's reads them.
#[derive(Debug, Default, PartialEq, Eq)]
struct Naming {
    /// `store` (default true): name the image in containerd's store at
    /// all (`store=false` only pushes).
    store: bool,
    /// `name-canonical=true`: each name also as `NAME@DIGEST`.
    canonical: bool,
    /// `dangling-name-prefix=P` (nerdctl sends `<none>`): the image is
    /// also named `P@DIGEST` (not pushed: BuildKit tries to push it with
    /// `push=true` and fails on the name)...
    dangling_prefix: Option<String>,
    /// ...only when it has no other name (`danging-name-empty-only`,
    /// BuildKit's spelling).
    dangling_empty_only: bool,
}

impl Naming {
    fn of(attrs: &HashMap<String, String>) -> Result<Self, Status> {
        let flag = |key: &str, default: bool| {
            attrs
                .get(key)
                .map(|v| kiln_engine::exporter_options::bool_option(key, v))
                .transpose()
                .map(|b| b.unwrap_or(default))
                .map_err(|e| Status::invalid_argument(e.to_string()))
        };
        Ok(Naming {
            store: flag("store", true)?,
            canonical: flag("name-canonical", false)?,
            dangling_prefix: attrs
                .get("dangling-name-prefix")
                .filter(|p| !p.is_empty())
                .cloned(),
            dangling_empty_only: flag("danging-name-empty-only", false)?,
        })
    }

    /// The names of the image `digest` beyond `names`: the dangling name
    /// (also reported as a name), then the canonical ones. A dangling name
    /// that is the only name turns the canonical ones off, as BuildKit's.
    fn more_names(&self, names: &[String], digest: &str) -> (Option<String>, Vec<String>) {
        let dangling = self
            .dangling_prefix
            .as_ref()
            .filter(|_| !self.dangling_empty_only || names.is_empty())
            .map(|p| format!("{p}@{digest}"));
        let mut more: Vec<String> = dangling.iter().cloned().collect();
        if self.canonical && !names.is_empty() {
            more.extend(
                names
                    .iter()
                    .filter(|n| !n.contains('@'))
                    .map(|n| format!("{n}@{digest}")),
            );
        }
        (dangling, more)
    }
}

/// The image exporters' response keys; `names` is what `image.name` says.
fn image_response(
    resp: &mut HashMap<String, String>,
    out: &kiln_engine::export::Exported,
    names: &[String],
) {
    resp.insert(
        "containerimage.digest".into(),
        out.manifest.digest().to_string(),
    );
    // An index has no config of its own: BuildKit leaves the key out.
    if !out.config_digest.is_empty() {
        resp.insert(
            "containerimage.config.digest".into(),
            out.config_digest.clone(),
        );
    }
    // The descriptor as BuildKit's: with the platform of a single
    // platform's manifest and the annotations the exporter gave it.
    let mut desc = serde_json::json!({
        "mediaType": out.manifest.media_type().to_string(),
        "digest": out.manifest.digest().to_string(),
        "size": out.manifest.size(),
    });
    if let Some(a) = out
        .manifest
        .annotations()
        .as_ref()
        .filter(|a| !a.is_empty())
    {
        desc["annotations"] = serde_json::json!(a);
    }
    if let Some(p) = out.manifest.platform() {
        let mut platform = serde_json::json!({
            "architecture": p.architecture().to_string(),
            "os": p.os().to_string(),
        });
        if let Some(v) = p.variant().as_ref().filter(|v| !v.is_empty()) {
            platform["variant"] = serde_json::json!(v);
        }
        desc["platform"] = platform;
    }
    resp.insert(
        "containerimage.descriptor".into(),
        base64::engine::general_purpose::STANDARD.encode(desc.to_string()),
    );
    if !names.is_empty() {
        resp.insert("image.name".into(), names.join(","));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exporter(attrs: &[(&str, &str)]) -> Exporter {
        Exporter {
            r#type: "image".into(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn images_are_named_as_buildkits_image_exporter_names_them() {
        let naming = |kv: &[(&str, &str)]| Naming::of(&exporter(kv).attrs).expect("naming");
        let names = [
            "docker.io/library/a:1".to_string(),
            "r/b@sha256:x".to_string(),
        ];
        assert_eq!(
            naming(&[]),
            Naming {
                store: true,
                ..Default::default()
            }
        );
        assert_eq!(naming(&[]).more_names(&names, "sha256:d"), (None, vec![]));
        // Canonical names for the names without a digest.
        let canonical = naming(&[("name-canonical", "true")]);
        assert_eq!(
            canonical.more_names(&names, "sha256:d"),
            (None, vec!["docker.io/library/a:1@sha256:d".to_string()])
        );
        // The dangling name, beside names too, unless asked otherwise;
        // alone, it turns the canonical names off.
        let dangling = naming(&[("dangling-name-prefix", "<none>"), ("name-canonical", "")]);
        let d = Some("<none>@sha256:d".to_string());
        assert_eq!(
            dangling.more_names(&[], "sha256:d"),
            (d.clone(), vec!["<none>@sha256:d".to_string()])
        );
        assert_eq!(
            dangling.more_names(&names[..1], "sha256:d"),
            (
                d.clone(),
                vec![
                    "<none>@sha256:d".to_string(),
                    "docker.io/library/a:1@sha256:d".to_string()
                ]
            )
        );
        let only = naming(&[
            ("dangling-name-prefix", "<none>"),
            ("danging-name-empty-only", "true"),
        ]);
        assert_eq!(only.more_names(&names, "sha256:d"), (None, vec![]));
        assert_eq!(only.more_names(&[], "sha256:d").0, d);
        assert!(!naming(&[("store", "false")]).store);
        assert!(Naming::of(&exporter(&[("store", "no")]).attrs).is_err());
    }

    #[test]
    fn the_image_exporter_reports_its_work_as_buildkits() {
        let t = std::time::SystemTime::UNIX_EPOCH;
        let resp = HashMap::from([
            ("containerimage.digest".to_string(), "sha256:m".to_string()),
            ("containerimage.config.digest".into(), "sha256:c".into()),
            ("image.name".into(), "a:1,b:2".into()),
        ]);
        let ids: Vec<String> = items("image", &HashMap::new(), &resp, &[], t)
            .into_iter()
            .map(|i| i.0)
            .collect();
        assert_eq!(
            ids,
            [
                "exporting layers",
                "exporting manifest sha256:m",
                "exporting config sha256:c",
                "naming to a:1",
                "naming to b:2"
            ]
        );
        // nerdctl's `unpack=true`: each name is unpacked after naming.
        let unpack = HashMap::from([("unpack".to_string(), "true".to_string())]);
        let ids: Vec<String> = items("image", &unpack, &resp, &[], t)
            .into_iter()
            .map(|i| i.0)
            .skip(3)
            .collect();
        assert_eq!(
            ids,
            [
                "naming to a:1",
                "unpacking to a:1",
                "naming to b:2",
                "unpacking to b:2"
            ]
        );
    }

    #[test]
    fn rewrite_timestamp_takes_the_exporters_epoch_or_the_frontends() {
        let attrs = |kv: &[(&str, &str)]| exporter(kv).attrs;
        let on = attrs(&[("rewrite-timestamp", "true")]);
        assert_eq!(rewrite_epoch(&on, Some(5)).expect("valid"), Some(5));
        assert_eq!(rewrite_epoch(&on, None).expect("valid"), None);
        let own = attrs(&[("rewrite-timestamp", "1"), ("source-date-epoch", "7")]);
        assert_eq!(rewrite_epoch(&own, Some(5)).expect("valid"), Some(7));
        let off = attrs(&[("rewrite-timestamp", "false"), ("source-date-epoch", "7")]);
        assert_eq!(rewrite_epoch(&off, Some(5)).expect("valid"), None);
        // Bad values fail before the build, with BuildKit's texts.
        let e = compression(&[exporter(&[("rewrite-timestamp", "yes")])]).expect_err("bad");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            e.message(),
            "non-bool value specified for rewrite-timestamp: strconv.ParseBool: parsing \"yes\": invalid syntax"
        );
        let e = compression(&[exporter(&[("source-date-epoch", "x")])]).expect_err("bad");
        assert_eq!(
            e.message(),
            "invalid source-date-epoch: strconv.ParseInt: parsing \"x\": invalid syntax"
        );
        let ok = compression(&[exporter(&[
            ("rewrite-timestamp", "false"),
            ("compression", "zstd"),
        ])])
        .expect("false is the default");
        assert_eq!(ok, Compression::Zstd);
    }

    /// What buildx, buildctl and nerdctl send that kilnd would not act on
    /// fails before the build, naming the option; what it does works.
    #[test]
    fn every_exporter_option_works_or_is_refused_by_name() {
        let with = |kind: &str, kv: &[(&str, &str)]| Exporter {
            r#type: kind.into(),
            ..exporter(kv)
        };
        for ok in [
            with(
                "image",
                &[("name", "a,b"), ("push", "true"), ("unpack", "true")],
            ),
            with("moby", &[("name", "a")]),
            with("image", &[("containerimage.config", "{}")]),
            with(
                "image",
                &[("unpack", "true"), ("dangling-name-prefix", "<none>")],
            ),
            with(
                "image",
                &[("rewrite-timestamp", "true"), ("source-date-epoch", "5")],
            ),
            with(
                "oci",
                &[("name", "a"), ("tar", "true"), ("compression", "zstd")],
            ),
            with("image", &[("oci-mediatypes", "false")]),
            with(
                "docker",
                &[("oci-mediatypes", "false"), ("annotation.a", "b")],
            ),
            with("local", &[]),
            with("local", &[("source-date-epoch", "5")]),
            with(
                "tar",
                &[("rewrite-timestamp", "false"), ("source-date-epoch", "5")],
            ),
        ] {
            compression(std::slice::from_ref(&ok)).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        let refused = |e: Exporter| compression(&[e]).expect_err("refused");
        let e = refused(with(
            "image",
            &[("oci-mediatypes", "false"), ("compression", "zstd")],
        ));
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            e.message(),
            "exporter option \"compression=zstd\" conflicts with \"oci-mediatypes=false\""
        );
        let e = refused(with(
            "oci",
            &[("oci-mediatypes", "false"), ("annotation-index.a", "b")],
        ));
        assert_eq!(
            e.message(),
            "cannot export annotations with \"oci-mediatypes=false\""
        );
        for (kind, key) in [
            ("image", "prefer-nondist-layers"),
            ("local", "attestation-prefix"),
        ] {
            let e = refused(with(kind, &[(key, "1")]));
            assert_eq!(e.code(), tonic::Code::Unimplemented, "{kind} {key}");
            assert_eq!(
                e.message(),
                format!("output option {key} is not supported yet")
            );
        }
        // A compression level the build's compression does not take fails
        // before the build; any zstd level is one of BuildKit's speeds.
        for (attrs, code, text) in [
            (
                &[("compression-level", "10")][..],
                tonic::Code::InvalidArgument,
                "gzip: invalid compression level: 10 (gzip takes -1 to 9)",
            ),
            (
                &[("compression-level", "fast")],
                tonic::Code::InvalidArgument,
                "non-integer value fast specified for compression-level: strconv.ParseInt: parsing \"fast\": invalid syntax",
            ),
            (
                &[("compression-level", "-2")],
                tonic::Code::Unimplemented,
                "compression-level=-2 (Huffman-only gzip) is not supported yet",
            ),
        ] {
            let e = refused(with("image", attrs));
            assert_eq!((e.code(), e.message()), (code, text));
        }
        for ok in [
            with("image", &[("compression-level", "9")]),
            with(
                "oci",
                &[("compression", "zstd"), ("compression-level", "22")],
            ),
            with(
                "docker",
                &[("compression", "uncompressed"), ("compression-level", "99")],
            ),
        ] {
            compression(std::slice::from_ref(&ok)).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        // Only the blobs an export makes take a level: none as steps commit.
        assert_eq!(
            export_blobs(&[with("image", &[("compression-level", "9")])]),
            None
        );
        assert_eq!(
            export_blobs(&[with("image", &[("compression-level", "6")])]),
            Some(Compression::Gzip)
        );
        // Annotations are read before the build: a bad type fails then.
        for ok in [
            with("image", &[("annotation.a", "1")]),
            with("docker", &[("annotation-index.b", "2")]),
            with("oci", &[("annotation-manifest[linux/arm64].c", "3")]),
        ] {
            compression(std::slice::from_ref(&ok)).unwrap_or_else(|e| panic!("{ok:?}: {e}"));
        }
        let e = refused(with("image", &[("annotation-layer.a", "1")]));
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(e.message(), "unrecognized annotation type layer");
        let e = refused(with("tar", &[("source-date-epoch", "soon")]));
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            e.message(),
            "invalid source-date-epoch: strconv.ParseInt: parsing \"soon\": invalid syntax"
        );
        let e = refused(with("local", &[("annotation.a", "1")]));
        assert_eq!(
            e.message(),
            "unknown output option \"annotation.a\" for type=local"
        );
        let e = refused(with("image", &[("frobnicate", "1")]));
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            e.message(),
            "unknown output option \"frobnicate\" for type=image"
        );
        let e = refused(with("cacheonly", &[]));
        assert_eq!(
            e.message(),
            "exporter \"cacheonly\" is not supported yet (image, oci, docker, local, tar)"
        );
    }
}
