//! `--cache-to` / `--cache-from` entries: the one parser of their types
//! and attributes, for the CLI (buildx's CSV syntax) and kilnd (a Solve
//! request's `CacheOptionsEntry{Type, Attrs}`). An unknown type or
//! attribute fails before the build, naming it.

use super::format::ManifestStyle;
use super::CacheError;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Which results an export writes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Only the records whose result is part of the final image (default).
    #[default]
    Min,
    /// Every vertex's record, intermediate stages included.
    Max,
}

/// Where an export goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExportTarget {
    /// An OCI layout directory (on the machine running the engine),
    /// tagged `tag` in its `index.json`.
    Local { dest: PathBuf, tag: String },
    /// A registry reference; `insecure` (`registry.insecure=true`)
    /// reaches its registry over plain HTTP or unverified TLS.
    Registry { reference: String, insecure: bool },
    /// The records in the exported image's config.
    Inline,
}

/// One cache export.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheExport {
    pub target: ExportTarget,
    pub mode: Mode,
    pub style: ManifestStyle,
    /// A failed export is a warning instead of a failed build.
    pub ignore_error: bool,
    /// What progress calls it instead of its location (kilnd: the
    /// client's directory, not the daemon's staging copy of it).
    pub shown_as: Option<String>,
}

/// Where an import comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImportSource {
    /// An OCI layout directory: the manifest tagged `tag` in `index.json`,
    /// or the one named by `digest`.
    Local {
        src: PathBuf,
        tag: String,
        digest: Option<String>,
    },
    /// A registry reference: a cache manifest, or an image with an inline
    /// cache; `insecure` as for [`ExportTarget::Registry`].
    Registry { reference: String, insecure: bool },
}

/// One cache import.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheImport {
    pub source: ImportSource,
    /// What progress calls it instead of its location (kilnd: the
    /// client's directory, not the daemon's staging copy of it).
    pub shown_as: Option<String>,
}

/// Cache types BuildKit knows that kiln does not implement.
const KNOWN_ELSEWHERE: &[&str] = &["gha", "s3", "azblob"];

fn option(entry: &str, reason: impl Into<String>) -> CacheError {
    CacheError::Option {
        option: entry.to_string(),
        reason: reason.into(),
    }
}

fn unsupported_type(flag: &str, ty: &str, supported: &str) -> CacheError {
    let why = if KNOWN_ELSEWHERE.contains(&ty) {
        format!("cache type \"{ty}\" is not supported by kiln (supported: {supported})")
    } else if ty.is_empty() {
        format!("a cache type is required (supported: {supported})")
    } else {
        format!("unknown cache type \"{ty}\" (supported: {supported})")
    };
    option(flag, why)
}

fn boolean(flag: &str, key: &str, v: &str) -> Result<bool, CacheError> {
    match v {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(option(flag, format!("{key}={v}: expected true or false"))),
    }
}

/// The attribute that lets a registry cache use plain HTTP or unverified
/// TLS, as buildx and BuildKit spell it.
const INSECURE: &str = "registry.insecure";

/// `registry.insecure` of `attrs` (false when absent).
fn insecure(flag: &str, attrs: &BTreeMap<String, String>) -> Result<bool, CacheError> {
    match attrs.get(INSECURE) {
        Some(v) => boolean(flag, INSECURE, v),
        None => Ok(false),
    }
}

fn unknown_attrs(
    flag: &str,
    ty: &str,
    attrs: &BTreeMap<String, String>,
    allowed: &[&str],
) -> Result<(), CacheError> {
    let unknown: Vec<&str> = attrs
        .keys()
        .map(String::as_str)
        .filter(|k| !allowed.contains(k))
        .collect();
    if unknown.is_empty() {
        return Ok(());
    }
    Err(option(
        flag,
        format!(
            "unsupported attribute{} {} for type={ty} (supported: {})",
            if unknown.len() > 1 { "s" } else { "" },
            unknown.join(", "),
            allowed.join(", ")
        ),
    ))
}

fn required(
    flag: &str,
    ty: &str,
    attrs: &BTreeMap<String, String>,
    key: &str,
) -> Result<String, CacheError> {
    match attrs.get(key) {
        Some(v) if !v.is_empty() => Ok(v.clone()),
        _ => Err(option(flag, format!("type={ty} requires {key}="))),
    }
}

impl CacheExport {
    /// An export from its type and attributes (`--cache-to` names it in
    /// errors).
    pub fn parse(ty: &str, attrs: &BTreeMap<String, String>) -> Result<Self, CacheError> {
        let flag = "--cache-to";
        let common = ["mode", "image-manifest", "oci-mediatypes", "ignore-error"];
        let target = match ty {
            "local" => {
                let mut allowed = common.to_vec();
                allowed.extend(["dest", "tag"]);
                unknown_attrs(flag, ty, attrs, &allowed)?;
                ExportTarget::Local {
                    dest: PathBuf::from(required(flag, ty, attrs, "dest")?),
                    tag: attrs.get("tag").cloned().unwrap_or_else(|| "latest".into()),
                }
            }
            "registry" => {
                let mut allowed = common.to_vec();
                allowed.extend(["ref", INSECURE]);
                unknown_attrs(flag, ty, attrs, &allowed)?;
                ExportTarget::Registry {
                    reference: required(flag, ty, attrs, "ref")?,
                    insecure: insecure(flag, attrs)?,
                }
            }
            "inline" => {
                unknown_attrs(flag, ty, attrs, &["mode", "ignore-error"])?;
                ExportTarget::Inline
            }
            other => return Err(unsupported_type(flag, other, "local, registry, inline")),
        };
        let mode = match attrs.get("mode").map(String::as_str) {
            None | Some("min") => Mode::Min,
            Some("max") if target != ExportTarget::Inline => Mode::Max,
            Some("max") => {
                return Err(option(
                    flag,
                    "type=inline supports only mode=min (use type=registry for mode=max)",
                ))
            }
            Some(m) => return Err(option(flag, format!("mode={m}: expected min or max"))),
        };
        let oci = match attrs.get("oci-mediatypes") {
            Some(v) => boolean(flag, "oci-mediatypes", v)?,
            None => true,
        };
        let image_manifest = match attrs.get("image-manifest") {
            Some(v) => boolean(flag, "image-manifest", v)?,
            // As BuildKit: without OCI media types the default is an index.
            None => oci,
        };
        if image_manifest && !oci {
            return Err(option(
                flag,
                "image-manifest=true requires oci-mediatypes=true",
            ));
        }
        let ignore_error = match attrs.get("ignore-error") {
            Some(v) => boolean(flag, "ignore-error", v)?,
            None => false,
        };
        Ok(CacheExport {
            target,
            mode,
            style: ManifestStyle {
                image_manifest,
                oci,
            },
            ignore_error,
            shown_as: None,
        })
    }

    /// What the export is, for progress lines.
    pub fn describe(&self) -> String {
        if let Some(s) = &self.shown_as {
            return s.clone();
        }
        match &self.target {
            ExportTarget::Local { dest, .. } => format!("local cache {}", dest.display()),
            ExportTarget::Registry { reference, .. } => format!("registry cache {reference}"),
            ExportTarget::Inline => "inline cache".into(),
        }
    }
}

impl CacheImport {
    /// An import from its type and attributes (`--cache-from` names it in
    /// errors).
    pub fn parse(ty: &str, attrs: &BTreeMap<String, String>) -> Result<Self, CacheError> {
        let flag = "--cache-from";
        let source = match ty {
            "local" => {
                unknown_attrs(flag, ty, attrs, &["src", "tag", "digest"])?;
                ImportSource::Local {
                    src: PathBuf::from(required(flag, ty, attrs, "src")?),
                    tag: attrs.get("tag").cloned().unwrap_or_else(|| "latest".into()),
                    digest: attrs.get("digest").filter(|d| !d.is_empty()).cloned(),
                }
            }
            "registry" => {
                unknown_attrs(flag, ty, attrs, &["ref", INSECURE])?;
                ImportSource::Registry {
                    reference: required(flag, ty, attrs, "ref")?,
                    insecure: insecure(flag, attrs)?,
                }
            }
            other => return Err(unsupported_type(flag, other, "local, registry")),
        };
        Ok(CacheImport {
            source,
            shown_as: None,
        })
    }

    /// What the import is, for progress lines.
    pub fn describe(&self) -> String {
        if let Some(s) = &self.shown_as {
            return s.clone();
        }
        match &self.source {
            ImportSource::Local { src, .. } => format!("local cache {}", src.display()),
            ImportSource::Registry { reference, .. } => format!("registry cache {reference}"),
        }
    }
}

/// A cache entry as a Solve request carries it: a type and attributes.
pub type Entry = (String, BTreeMap<String, String>);

/// Splits one buildx `--cache-to`/`--cache-from` entry into a type and
/// attributes: `type=local,dest=DIR`, or a bare reference meaning
/// `type=registry,ref=REF` (see [`split_specs`] for several). `flag`
/// names the option in errors.
pub fn split_spec(
    flag: &str,
    spec: &str,
) -> Result<(String, BTreeMap<String, String>), CacheError> {
    let spec = spec.trim();
    if spec.is_empty() {
        return Err(option(flag, "empty value"));
    }
    if !spec.contains('=') {
        let mut attrs = BTreeMap::new();
        attrs.insert("ref".to_string(), spec.to_string());
        return Ok(("registry".into(), attrs));
    }
    let mut ty = None;
    let mut attrs = BTreeMap::new();
    for field in spec.split(',') {
        let Some((k, v)) = field.split_once('=') else {
            return Err(option(
                flag,
                format!("\"{field}\" is not key=value (in \"{spec}\")"),
            ));
        };
        let k = k.trim().to_ascii_lowercase();
        // A repeated key: the last one wins, as in buildx.
        if k == "type" {
            ty = Some(v.trim().to_string());
        } else {
            attrs.insert(k, v.to_string());
        }
    }
    let ty = ty.ok_or_else(|| option(flag, format!("\"{spec}\" has no type=")))?;
    Ok((ty, attrs))
}

/// Splits a whole `--cache-to`/`--cache-from` value: as buildx, a value
/// without `=` is a comma-separated list of references, each its own
/// `type=registry` entry.
pub fn split_specs(flag: &str, spec: &str) -> Result<Vec<Entry>, CacheError> {
    if spec.contains('=') {
        return Ok(vec![split_spec(flag, spec)?]);
    }
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|r| split_spec(flag, r))
        .collect()
}
