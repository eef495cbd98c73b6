//! OCI annotations an image exporter writes (buildx `--annotation`,
//! exporter options `annotation[-TYPE][[PLATFORM]].KEY=VALUE`), read as
//! BuildKit's image exporters read them:
//!
//! - `annotation.K` / `annotation-manifest.K`: the image manifest;
//! - `annotation-manifest-descriptor.K`: the manifest's descriptor (in an
//!   index's `manifests`, an OCI layout's `index.json`, the image record);
//! - `annotation-index.K`: the image index of a multi-platform image;
//! - `annotation-index-descriptor.K`: the index's descriptor;
//! - `[PLATFORM]` (manifest kinds only) limits one to that platform's
//!   manifest.
//!
//! Index annotations on a single-platform image and a platform the build
//! does not make fail before anything is written.

use kiln_solver::Platform;
use std::collections::{BTreeMap, HashMap};

/// An exporter option that names an annotation badly, or one the built
/// image has no place for.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnnotationError {
    #[error("unrecognized annotation type {kind}")]
    UnknownType { kind: String },
    #[error("invalid annotation platform {platform:?} in {key}: {reason}")]
    Platform {
        key: String,
        platform: String,
        reason: String,
    },
    #[error("index annotations not supported for single platform export")]
    IndexOfSinglePlatform,
    #[error("invalid annotation: no platform {platform} found in source")]
    NoSuchPlatform { platform: String },
}

/// Annotations by where they go; the manifest kinds keyed by the
/// platform they are limited to (`None`: every manifest).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportAnnotations {
    index: BTreeMap<String, String>,
    index_descriptor: BTreeMap<String, String>,
    manifest: BTreeMap<Option<Platform>, BTreeMap<String, String>>,
    manifest_descriptor: BTreeMap<Option<Platform>, BTreeMap<String, String>>,
}

/// The annotations of one manifest ([`ExportAnnotations::for_manifest`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ManifestAnnotations {
    /// In the manifest itself.
    pub manifest: HashMap<String, String>,
    /// On the descriptor that points at it.
    pub descriptor: HashMap<String, String>,
}

/// The parts of an annotation option's key: type, platform, key.
type KeyParts<'a> = (&'a str, Option<&'a str>, &'a str);

/// Splits `annotation[-TYPE][[PLATFORM]].KEY` (BuildKit's pattern:
/// TYPE of `[a-z-]`, PLATFORM of `[A-Za-z0-9_/-]`, KEY without white
/// space); `None` for any other option.
fn split_key(option: &str) -> Option<KeyParts<'_>> {
    let rest = option.strip_prefix("annotation")?;
    let (kind, rest) = match rest.strip_prefix('-') {
        Some(r) => {
            let end = r.find(|c: char| !(c.is_ascii_lowercase() || c == '-'))?;
            if end == 0 {
                return None;
            }
            (&r[..end], &r[end..])
        }
        None => ("", rest),
    };
    let (platform, rest) = match rest.strip_prefix('[') {
        Some(r) => {
            let end = r.find(']')?;
            let p = &r[..end];
            let ok = !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_/-".contains(c));
            if !ok {
                return None;
            }
            (Some(p), &r[end + 1..])
        }
        None => (None, rest),
    };
    let key = rest.strip_prefix('.')?;
    if key.is_empty() || key.chars().any(char::is_whitespace) {
        return None;
    }
    Some((kind, platform, key))
}

/// Whether exporter option `option` is an annotation.
pub fn is_annotation(option: &str) -> bool {
    split_key(option).is_some()
}

impl ExportAnnotations {
    /// The annotations among an exporter's options (others are left to
    /// their own readers). A platform is read as containerd reads one.
    pub fn from_options<'a>(
        options: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<ExportAnnotations, AnnotationError> {
        let host = crate::oci::worker_platform();
        let mut out = ExportAnnotations::default();
        for (option, value) in options {
            let Some((kind, platform, key)) = split_key(option) else {
                continue;
            };
            let platform = platform
                .map(|p| {
                    Platform::parse(p, &host).map_err(|e| AnnotationError::Platform {
                        key: option.to_string(),
                        platform: p.to_string(),
                        reason: e.to_string(),
                    })
                })
                .transpose()?;
            let (key, value) = (key.to_string(), value.to_string());
            match kind {
                "" | "manifest" => {
                    out.manifest.entry(platform).or_default().insert(key, value);
                }
                "manifest-descriptor" => {
                    out.manifest_descriptor
                        .entry(platform)
                        .or_default()
                        .insert(key, value);
                }
                // BuildKit files a platform of these under the index too:
                // an index is one for every platform.
                "index" => {
                    out.index.insert(key, value);
                }
                "index-descriptor" => {
                    out.index_descriptor.insert(key, value);
                }
                other => {
                    return Err(AnnotationError::UnknownType {
                        kind: other.to_string(),
                    })
                }
            }
        }
        Ok(out)
    }

    /// Checks that the image made of `platforms`' manifests (one, or an
    /// index of several; `index` says which) has a place for every
    /// annotation.
    pub fn check(&self, platforms: &[&Platform], index: bool) -> Result<(), AnnotationError> {
        let has_index = !self.index.is_empty() || !self.index_descriptor.is_empty();
        if has_index && !index {
            return Err(AnnotationError::IndexOfSinglePlatform);
        }
        let limited = self.manifest.keys().chain(self.manifest_descriptor.keys());
        for p in limited.flatten() {
            if !platforms.contains(&p) {
                return Err(AnnotationError::NoSuchPlatform {
                    platform: p.to_string(),
                });
            }
        }
        Ok(())
    }

    /// What the manifest of `platform` and its descriptor carry: the
    /// annotations for every manifest, then that platform's own.
    pub fn for_manifest(&self, platform: &Platform) -> ManifestAnnotations {
        ManifestAnnotations {
            manifest: Self::for_platform(&self.manifest, platform),
            descriptor: Self::for_platform(&self.manifest_descriptor, platform),
        }
    }

    /// Whether any goes elsewhere than into a manifest: an index, or a
    /// descriptor (which Docker's media types have no place for).
    pub fn beyond_manifests(&self) -> bool {
        !self.index.is_empty()
            || !self.index_descriptor.is_empty()
            || self.manifest_descriptor.values().any(|m| !m.is_empty())
    }

    pub fn index(&self) -> HashMap<String, String> {
        self.index.clone().into_iter().collect()
    }

    pub fn index_descriptor(&self) -> HashMap<String, String> {
        self.index_descriptor.clone().into_iter().collect()
    }

    fn for_platform(
        by: &BTreeMap<Option<Platform>, BTreeMap<String, String>>,
        platform: &Platform,
    ) -> HashMap<String, String> {
        let mut out = HashMap::new();
        for key in [None, Some(platform.clone())] {
            if let Some(m) = by.get(&key) {
                out.extend(m.clone());
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(options: &[(&str, &str)]) -> Result<ExportAnnotations, AnnotationError> {
        ExportAnnotations::from_options(options.iter().copied())
    }

    #[test]
    fn keys_are_split_as_buildkit_matches_them() {
        assert_eq!(split_key("annotation.a.b"), Some(("", None, "a.b")));
        assert_eq!(
            split_key("annotation-manifest-descriptor[linux/arm64].k"),
            Some(("manifest-descriptor", Some("linux/arm64"), "k"))
        );
        assert_eq!(split_key("annotation-index.k"), Some(("index", None, "k")));
        // Not annotations: left to the other options' readers.
        for other in [
            "annotations.k",
            "annotation",
            "annotation.",
            "annotation-.k",
            "annotation-Index.k",
            "annotation[].k",
            "annotation[linux amd64].k",
            "annotation.a b",
            "name",
        ] {
            assert_eq!(split_key(other), None, "{other}");
        }
    }

    #[test]
    fn each_kind_goes_to_its_place_and_platforms_narrow_manifests() {
        let a = read(&[
            ("annotation.all", "1"),
            ("annotation-manifest[linux/arm64].arm", "2"),
            ("annotation-manifest-descriptor.d", "3"),
            ("annotation-index.i", "4"),
            ("annotation-index-descriptor.id", "5"),
            ("name", "x"),
        ])
        .expect("annotations");
        let amd64 = Platform::new("linux", "amd64", "");
        let arm64 = Platform::parse("linux/arm64", &amd64).expect("platform");
        assert_eq!(
            a.for_manifest(&amd64).manifest,
            HashMap::from([("all".into(), "1".into())])
        );
        let arm = a.for_manifest(&arm64);
        assert_eq!(
            arm.manifest,
            HashMap::from([("all".into(), "1".into()), ("arm".into(), "2".into())])
        );
        assert_eq!(arm.descriptor, HashMap::from([("d".into(), "3".into())]));
        assert_eq!(a.index(), HashMap::from([("i".into(), "4".into())]));
        assert_eq!(
            a.index_descriptor(),
            HashMap::from([("id".into(), "5".into())])
        );
        assert_eq!(a.check(&[&amd64, &arm64], true), Ok(()));
        assert_eq!(
            a.check(&[&amd64], false),
            Err(AnnotationError::IndexOfSinglePlatform)
        );
        assert_eq!(
            a.check(&[&amd64], true).map_err(|e| e.to_string()),
            Err(format!(
                "invalid annotation: no platform {arm64} found in source"
            ))
        );
    }

    #[test]
    fn a_bad_type_or_platform_is_an_error_naming_it() {
        assert_eq!(
            read(&[("annotation-layer.k", "v")]).map_err(|e| e.to_string()),
            Err("unrecognized annotation type layer".to_string())
        );
        let e = read(&[("annotation-manifest[linux/x/y/z].k", "v")])
            .expect_err("four parts")
            .to_string();
        assert!(e.contains("annotation-manifest[linux/x/y/z].k"), "{e}");
    }
}
