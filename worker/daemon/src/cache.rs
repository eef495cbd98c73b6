//! A Solve request's cache exports and imports (`Cache.Exports`,
//! `Cache.Imports`, and the `cache-imports` frontend attribute buildctl
//! repeats them in), checked by the engine's one parser before the build
//! starts, and the export after it.
//!
//! `type=local` names a directory of the *client's* machine, which the
//! client (buildctl, buildx) attaches to its session as the content store
//! `local:DIR` (BuildKit's `cache/remotecache/local`). kilnd stages such a
//! cache in a directory of the job, where the engine reads and writes OCI
//! layouts as it does for the embedded CLI (one format, one set of
//! rules): an import's manifest, config and the layers containerd lacks
//! are copied from the client's store before the solve (the client has
//! resolved its tag to the `digest` attribute); an export's blobs are
//! written into the client's store after it, and its manifest descriptor
//! is answered as `cache.manifest`, which the client tags in its
//! `index.json`.

use crate::jobs::Job;
use crate::sessions::SessionHandle;
use kiln_engine::build::Solved;
use kiln_engine::remotecache::format::{self, Parsed};
use kiln_engine::remotecache::{CacheExport, CacheImport, ExportTarget, ImportSource};
use kiln_proto::control::{CacheOptionsEntry, SolveRequest};
use kiln_session::content;
use kiln_solver::Digest;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tonic::Status;

/// The exporter response key of a local cache export's manifest
/// descriptor (BuildKit's `ExporterResponseManifestDesc`).
pub const RESPONSE_MANIFEST: &str = "cache.manifest";

/// The most manifests and configs one imported cache may name.
const MAX_DESCRIBING: usize = 1024;

/// The checked cache options of one build.
#[derive(Clone, Debug, Default)]
pub struct CacheOptions {
    pub exports: Vec<CacheExport>,
    pub imports: Vec<CacheImport>,
}

fn invalid(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

/// `{"Type": ..., "Attrs": {...}}`, as buildctl writes `cache-imports`.
#[derive(serde::Deserialize)]
struct JsonEntry {
    #[serde(rename = "Type", default)]
    r#type: String,
    #[serde(rename = "Attrs", default)]
    attrs: BTreeMap<String, String>,
}

fn attrs(e: &CacheOptionsEntry) -> BTreeMap<String, String> {
    e.attrs
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

impl CacheOptions {
    /// The options of `r`; an unknown type or attribute, or a local
    /// directory, fails here.
    pub fn from_request(r: &SolveRequest) -> Result<Self, Status> {
        let mut out = CacheOptions::default();
        let Some(cache) = &r.cache else {
            return Self::with_attr_imports(out, r);
        };
        if !cache.export_ref_deprecated.is_empty() || !cache.import_refs_deprecated.is_empty() {
            return Err(invalid(
                "cache options: the pre-v0.4 ExportRef/ImportRefs fields are not supported; use Exports/Imports",
            ));
        }
        for e in &cache.exports {
            let ex = CacheExport::parse(&e.r#type, &attrs(e)).map_err(invalid)?;
            out.exports.push(ex);
        }
        for e in &cache.imports {
            out.push_import(&e.r#type, &attrs(e))?;
        }
        Self::with_attr_imports(out, r)
    }

    fn push_import(&mut self, ty: &str, attrs: &BTreeMap<String, String>) -> Result<(), Status> {
        let im = CacheImport::parse(ty, attrs).map_err(invalid)?;
        if let ImportSource::Local { src, digest, .. } = &im.source {
            // The client resolves the tag in its index.json (BuildKit's
            // rule: the daemon never reads the client's index).
            if digest.as_deref().is_none_or(str::is_empty) {
                return Err(invalid(format!(
                    "--import-cache type=local,src={}: the client must resolve the cache's \
                     tag to a digest= attribute (buildctl and buildx do)",
                    src.display()
                )));
            }
        }
        if !self.imports.contains(&im) {
            self.imports.push(im);
        }
        Ok(())
    }

    /// Adds the imports of the `cache-imports` attribute (the same ones,
    /// from buildctl; deduplicated).
    fn with_attr_imports(mut out: Self, r: &SolveRequest) -> Result<Self, Status> {
        if let Some(json) = r.frontend_attrs.get("cache-imports") {
            let list: Vec<JsonEntry> = serde_json::from_str(json)
                .map_err(|e| invalid(format!("frontend attribute cache-imports: {e}")))?;
            for e in list {
                out.push_import(&e.r#type, &e.attrs)?;
            }
        }
        Ok(out)
    }
}

/// The staging directory of the client's cache directory `client_dir`
/// below the job directory (`what`: `cache-export` or `cache-import`); a
/// client's path reaches the file system only through its hash.
fn staging(job_dir: &Path, what: &str, client_dir: &Path) -> PathBuf {
    job_dir
        .join(what)
        .join(Digest::of(client_dir.as_os_str().as_encoded_bytes()).hex())
}

fn session_status(dir: &Path, e: kiln_session::SessionError) -> Status {
    Status::new(
        e.kind().code(),
        format!("local cache {}: the client's store: {e}", dir.display()),
    )
}

/// The store of the client's directory `dir`, which the session must
/// serve with `method`.
fn client_store(
    session: Option<&SessionHandle>,
    flag: &str,
    dir: &Path,
    method: &str,
) -> Result<(SessionHandle, String), Status> {
    match session {
        Some(s) if s.exposes(method) => {
            Ok((s.clone(), content::local_store_id(&dir.to_string_lossy())))
        }
        _ => Err(Status::failed_precondition(format!(
            "{flag} type=local ({}): the client's session serves no content store \
             (the client attaches the directory to its session, as buildctl and buildx do)",
            dir.display()
        ))),
    }
}

/// The job's cache options as the engine takes them: each local
/// directory of the client replaced by its staging directory below
/// `job_dir`, an import's blobs copied there from the client's store
/// first (manifests and configs; layers only where containerd lacks
/// them).
pub async fn stage(
    opts: CacheOptions,
    engine: &kiln_engine::Engine,
    session: Option<&SessionHandle>,
    job_dir: &Path,
) -> Result<CacheOptions, Status> {
    let mut out = CacheOptions::default();
    for mut e in opts.exports {
        let shown = e.describe();
        if let ExportTarget::Local { dest, .. } = &mut e.target {
            e.shown_as = Some(shown);
            client_store(session, "--export-cache", dest, content::WRITE_METHOD)?;
            let dir = staging(job_dir, "cache-export", dest);
            // A fresh directory: what is sent is what this export wrote.
            let _ = std::fs::remove_dir_all(&dir);
            *dest = dir;
        }
        out.exports.push(e);
    }
    for mut i in opts.imports {
        let shown = i.describe();
        if let ImportSource::Local { src, digest, .. } = &mut i.source {
            i.shown_as = Some(shown);
            let (s, store) = client_store(session, "--import-cache", src, content::READ_METHOD)?;
            let dir = staging(job_dir, "cache-import", src);
            let wanted = digest.clone().unwrap_or_default();
            // An import that cannot be copied is the engine's warning
            // (BuildKit builds without it), not a failed build.
            if let Err(e) = copy_import(engine, &s, &store, &wanted, &dir).await {
                tracing::warn!(cache = %src.display(), error = %e, "cannot copy a local cache import from the client");
            }
            *src = dir;
        }
        out.imports.push(i);
    }
    Ok(out)
}

/// Copies the cache `digest` of the client's store into the layout `dir`.
async fn copy_import(
    engine: &kiln_engine::Engine,
    session: &SessionHandle,
    store: &str,
    digest: &str,
    dir: &Path,
) -> Result<(), Status> {
    let blob = |d: &str| {
        Digest::parse(d)
            .and_then(|_| content::layout_blob_path(dir, d))
            .ok_or_else(|| Status::invalid_argument(format!("{store}: invalid digest {d:?}")))
    };
    std::fs::create_dir_all(dir.join("blobs/sha256"))
        .map_err(|e| Status::internal(format!("create {}: {e}", dir.display())))?;
    let mut json = vec![digest.to_string()];
    let mut layers: Vec<format::Descriptor> = Vec::new();
    let mut seen = 0usize;
    while let Some(d) = json.pop() {
        seen += 1;
        if seen > MAX_DESCRIBING {
            return Err(Status::invalid_argument(format!(
                "{store}: more than {MAX_DESCRIBING} manifests and configs"
            )));
        }
        let path = blob(&d)?;
        let mut bytes = Vec::new();
        content::copy(
            session.channel.clone(),
            store,
            &d,
            kiln_engine::layout::MAX_JSON,
            &mut bytes,
        )
        .await
        .map_err(|e| session_status(Path::new(store), e))?;
        if Digest::of(&bytes).as_str() != d {
            return Err(Status::invalid_argument(format!(
                "{store}: blob {d} does not match its digest"
            )));
        }
        std::fs::write(&path, &bytes)
            .map_err(|e| Status::internal(format!("write {}: {e}", path.display())))?;
        // The manifest's config and layers, an index's manifests; a
        // config names nothing.
        match format::parse_manifest(&bytes, &d) {
            Ok(Parsed::Cache { config, layers: l }) => {
                json.push(config.digest);
                layers.extend(l);
            }
            Ok(Parsed::Image(m)) => {
                json.push(m.config.digest);
                layers.extend(m.layers);
            }
            Ok(Parsed::Images(list)) => json.extend(list.into_iter().map(|m| m.digest)),
            Err(_) => {}
        }
    }
    for l in layers {
        let path = blob(&l.digest)?;
        if path.exists() {
            continue;
        }
        match engine.services().content.info(&l.digest).await {
            Ok(_) => continue,
            Err(e) if e.is_not_found() => {}
            Err(e) => return Err(Status::new(e.kind().code(), e.to_string())),
        }
        let partial = path.with_extension("partial");
        let io = |e: std::io::Error| Status::internal(format!("write {}: {e}", partial.display()));
        let mut f = tokio::fs::File::create(&partial).await.map_err(io)?;
        let size = u64::try_from(l.size).unwrap_or(0);
        let n = content::copy(session.channel.clone(), store, &l.digest, size, &mut f)
            .await
            .map_err(|e| session_status(Path::new(store), e))?;
        drop(f);
        if n != size {
            let _ = std::fs::remove_file(&partial);
            return Err(Status::invalid_argument(format!(
                "{store}: blob {} has {n} bytes, its descriptor says {size}",
                l.digest
            )));
        }
        // containerd checks the digest when the engine imports it.
        std::fs::rename(&partial, &path).map_err(io)?;
    }
    Ok(())
}

/// Sends what the engine wrote to the staging directory of the client's
/// `dest`, tagged `tag`, into the client's store; the manifest's
/// descriptor.
async fn send_export(
    session: Option<&SessionHandle>,
    dest: &Path,
    staged: &Path,
    tag: &str,
) -> Result<format::Descriptor, Status> {
    let (s, store) = client_store(session, "--export-cache", dest, content::WRITE_METHOD)?;
    let internal = |p: &Path, e: &dyn std::fmt::Display| {
        Status::internal(format!(
            "local cache {}: {}: {e}",
            dest.display(),
            p.display()
        ))
    };
    let index_path = staged.join("index.json");
    let index: format::Index = std::fs::read(&index_path)
        .map_err(|e| internal(&index_path, &e))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| internal(&index_path, &e)))?;
    let mut manifest = index
        .manifests
        .into_iter()
        .find(|m| {
            m.annotations
                .get(kiln_engine::remotecache::export::ANNOTATION_REF_NAME)
                .is_some_and(|t| t == tag)
        })
        .ok_or_else(|| internal(&index_path, &format!("no manifest tagged {tag:?}")))?;
    manifest.annotations.clear();
    let blobs = staged.join("blobs/sha256");
    let entries = std::fs::read_dir(&blobs).map_err(|e| internal(&blobs, &e))?;
    let mut names: Vec<(String, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| internal(&blobs, &e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        names.push((format!("sha256:{name}"), entry.path()));
    }
    // The manifest last: a reader that finds it finds what it names.
    names.sort_by_key(|(d, _)| *d == manifest.digest);
    for (digest, path) in names {
        let f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| internal(&path, &e))?;
        let size = f.metadata().await.map_err(|e| internal(&path, &e))?.len();
        content::write(s.channel.clone(), &store, &digest, &digest, size, f)
            .await
            .map_err(|e| session_status(dest, e))?;
    }
    Ok(manifest)
}

/// Writes the job's cache exports (all but inline, which the image
/// exporter wrote into the config), as a step of its own in Status; a
/// local export's blobs go to the client's store, and the answer holds
/// its manifest descriptor ([`RESPONSE_MANIFEST`]).
pub async fn export(
    job: &Job,
    solved: &Solved,
    session: Option<&SessionHandle>,
    job_dir: &Path,
) -> Result<HashMap<String, String>, Status> {
    let exports: Vec<CacheExport> = job
        .cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .exports
        .iter()
        .filter(|e| e.target != ExportTarget::Inline)
        .cloned()
        .collect();
    let mut resp = HashMap::new();
    if exports.is_empty() {
        return Ok(resp);
    }
    let wanted: Vec<String> = exports.iter().map(CacheExport::describe).collect();
    let name = format!("exporting cache to {}", wanted.join(", "));
    let started = std::time::SystemTime::now();
    crate::status::step(job, &name, started, None, None);
    let mut ignored = Vec::new();
    let mut r = solved
        .export_cache(&kiln_engine::Progress::none())
        .await
        .map(|failed| ignored = failed)
        .map_err(|e| crate::state::status_of(&e));
    for e in &exports {
        if r.is_err() {
            break;
        }
        let ExportTarget::Local { dest, tag } = &e.target else {
            continue;
        };
        // Its write already failed (and was let pass): nothing to send.
        // The engine's copy names the staging directory but is shown as
        // the client's.
        if ignored
            .iter()
            .any(|(failed, _)| failed.describe() == e.describe())
        {
            continue;
        }
        let staged = staging(job_dir, "cache-export", dest);
        match send_export(session, dest, &staged, tag).await {
            Ok(desc) => {
                let json =
                    serde_json::to_string(&desc).map_err(|e| Status::internal(e.to_string()))?;
                resp.insert(RESPONSE_MANIFEST.to_string(), json);
            }
            Err(err) if e.ignore_error => {
                tracing::warn!(cache = %dest.display(), error = %err, "local cache export failed (ignore-error=true)");
                let message = format!("cache export to {} failed: {}", e.describe(), err.message());
                ignored.push((e.clone(), message));
            }
            Err(err) => r = Err(err),
        }
    }
    // A failure ignore-error=true let pass still fails the step, as
    // BuildKit shows it, while the build succeeds.
    let shown = match &r {
        Err(e) => Some(e.message().to_string()),
        Ok(()) if !ignored.is_empty() => Some(
            ignored
                .iter()
                .map(|(_, m)| m.as_str())
                .collect::<Vec<_>>()
                .join("; "),
        ),
        Ok(()) => None,
    };
    crate::status::step(
        job,
        &name,
        started,
        Some(std::time::SystemTime::now()),
        shown,
    );
    r.map(|()| resp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_proto::control::CacheOptions as Wire;

    fn entry(t: &str, kv: &[(&str, &str)]) -> CacheOptionsEntry {
        CacheOptionsEntry {
            r#type: t.into(),
            attrs: kv
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn requests_are_checked_before_the_build() {
        let mut r = SolveRequest {
            cache: Some(Wire {
                exports: vec![entry(
                    "registry",
                    &[("ref", "localhost:5000/c"), ("mode", "max")],
                )],
                imports: vec![entry("registry", &[("ref", "localhost:5000/c")])],
                ..Default::default()
            }),
            ..Default::default()
        };
        r.frontend_attrs.insert(
            "cache-imports".into(),
            r#"[{"Type":"registry","Attrs":{"ref":"localhost:5000/c"}}]"#.into(),
        );
        let o = CacheOptions::from_request(&r).expect("valid");
        assert_eq!(o.exports.len(), 1);
        assert_eq!(
            o.imports.len(),
            1,
            "the attribute repeats the request's import"
        );

        let local = SolveRequest {
            cache: Some(Wire {
                exports: vec![entry("local", &[("dest", "/tmp/x")])],
                imports: vec![entry(
                    "local",
                    &[("src", "/tmp/x"), ("digest", "sha256:abc")],
                )],
                ..Default::default()
            }),
            ..Default::default()
        };
        let o = CacheOptions::from_request(&local).expect("local");
        assert_eq!((o.exports.len(), o.imports.len()), (1, 1));
        // The client resolves the tag: an import without a digest is its
        // mistake, named before the build.
        let unresolved = SolveRequest {
            cache: Some(Wire {
                imports: vec![entry("local", &[("src", "/tmp/x")])],
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = CacheOptions::from_request(&unresolved).expect_err("no digest");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message()
                .contains("src=/tmp/x: the client must resolve"),
            "{}",
            err.message()
        );

        let gha = SolveRequest {
            cache: Some(Wire {
                exports: vec![entry("gha", &[])],
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = CacheOptions::from_request(&gha).expect_err("gha");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("\"gha\" is not supported"),
            "{}",
            err.message()
        );
    }
}
