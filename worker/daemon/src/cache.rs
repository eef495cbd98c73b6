//! A Solve request's cache exports and imports (`Cache.Exports`,
//! `Cache.Imports`, and the `cache-imports` frontend attribute buildctl
//! repeats them in), checked by the engine's one parser before the build
//! starts, and the export after it.
//!
//! `type=local` names a directory of the *client's* machine; BuildKit
//! reaches it through the session's content store, which kilnd does not
//! serve yet, so it is refused before the build rather than written on
//! the daemon's disk.

use crate::jobs::Job;
use kiln_engine::build::Solved;
use kiln_engine::remotecache::{CacheExport, CacheImport, ExportTarget, ImportSource};
use kiln_proto::control::{CacheOptionsEntry, SolveRequest};
use std::collections::BTreeMap;
use tonic::Status;

/// The checked cache options of one build.
#[derive(Clone, Debug, Default)]
pub struct CacheOptions {
    pub exports: Vec<CacheExport>,
    pub imports: Vec<CacheImport>,
}

fn invalid(e: impl std::fmt::Display) -> Status {
    Status::invalid_argument(e.to_string())
}

fn local_refused(flag: &str) -> Status {
    Status::unimplemented(format!(
        "{flag}: type=local is not supported through kilnd yet (the directory is on the client); \
         use type=registry, or build with the embedded kiln"
    ))
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
            if matches!(ex.target, ExportTarget::Local { .. }) {
                return Err(local_refused("--export-cache"));
            }
            out.exports.push(ex);
        }
        for e in &cache.imports {
            out.push_import(&e.r#type, &attrs(e))?;
        }
        Self::with_attr_imports(out, r)
    }

    fn push_import(&mut self, ty: &str, attrs: &BTreeMap<String, String>) -> Result<(), Status> {
        let im = CacheImport::parse(ty, attrs).map_err(invalid)?;
        if matches!(im.source, ImportSource::Local { .. }) {
            return Err(local_refused("--import-cache"));
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

/// Writes the job's cache exports (all but inline, which the image
/// exporter wrote into the config), as a step of its own in Status.
pub async fn export(job: &Job, solved: &Solved) -> Result<(), Status> {
    let wanted: Vec<String> = job
        .cache
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .exports
        .iter()
        .filter(|e| e.target != ExportTarget::Inline)
        .map(|e| e.describe())
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let name = format!("exporting cache to {}", wanted.join(", "));
    let started = std::time::SystemTime::now();
    crate::status::step(job, &name, started, None, None);
    let r = solved
        .export_cache(&kiln_engine::Progress::none())
        .await
        .map_err(|e| crate::state::status_of(&e));
    crate::status::step(
        job,
        &name,
        started,
        Some(std::time::SystemTime::now()),
        r.as_ref().err().map(|e| e.message().to_string()),
    );
    r
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
                ..Default::default()
            }),
            ..Default::default()
        };
        let err = CacheOptions::from_request(&local).expect_err("local");
        assert_eq!(err.code(), tonic::Code::Unimplemented);
        assert!(
            err.message().contains("not supported through kilnd yet"),
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
