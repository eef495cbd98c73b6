//! The options (attributes) of BuildKit's exporters, and what kiln does
//! with each: works, works only with the value kiln always uses, or is not
//! supported yet. One table for `kiln build -o` (checked before an embedded
//! or `--addr` build) and for kilnd (checked before a Solve runs, whatever
//! client sent the request: buildx, buildctl, nerdctl), so an option is
//! never silently ignored.

use kiln_snapshot::diff::{Compression, Level};

/// Why an exporter option was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ExporterOptionError {
    /// The option exists in BuildKit, but kiln does not implement it.
    #[error("output option {key} is not supported yet")]
    NotYet { key: String },
    /// A boolean option set to the value kiln does not implement.
    #[error("output option {key} is not supported yet (kiln always uses {key}={always})")]
    OnlyBool { key: String, always: bool },
    /// BuildKit's exporter of this type has no such option.
    #[error("unknown output option {key:?} for type={kind}")]
    Unknown { kind: String, key: String },
    /// A boolean option with another value (BuildKit's text: Go's
    /// `strconv.ParseBool` error, wrapped as its exporters wrap it).
    #[error("{}", not_bool_text(key, value))]
    NotBool { key: String, value: String },
    /// An option Docker's media types cannot carry out (BuildKit's text).
    #[error("exporter option \"{option}\" conflicts with \"oci-mediatypes=false\"")]
    NeedsOciTypes { option: String },
    /// Index or descriptor annotations with Docker's media types.
    #[error("cannot export annotations with \"oci-mediatypes=false\"")]
    AnnotationsNeedOciTypes,
    /// A `source-date-epoch` that is not whole seconds (BuildKit's text).
    #[error("invalid source-date-epoch: strconv.ParseInt: parsing {value:?}: invalid syntax")]
    NotEpoch { value: String },
    /// Two options BuildKit's exporter cannot honour together.
    #[error("exporter option \"{one}\" conflicts with \"{other}\"")]
    Conflict { one: String, other: String },
    /// A `compression-level` the compression does not take.
    #[error("{reason}")]
    Level { reason: String },
}

/// How kiln treats one option of an exporter type.
#[derive(Debug, PartialEq, Eq)]
enum Support {
    /// Works with any value the option takes.
    Works,
    /// A boolean option that works with either value (a bare key is
    /// `true`).
    Bool,
    /// [`Support::Bool`] read strictly, as BuildKit reads some with Go's
    /// `strconv.ParseBool` alone: a bare key is not a value.
    StrictBool,
    /// Works only with this boolean value (what kiln always does); the
    /// other is not supported yet.
    OnlyBool(bool),
    /// Not implemented: refused by name whatever the value.
    NotYet,
}

/// What kiln does with option `key` of an exporter of `kind` (`image`,
/// `oci`, `docker`, `local`, `tar`; BuildKit's `moby` is `image`); `None`
/// for an option BuildKit does not have.
fn support(kind: &str, key: &str) -> Option<Support> {
    use Support::*;
    let kind = if kind == "moby" { "image" } else { kind };
    let image_like = matches!(kind, "image" | "oci" | "docker");
    // Annotations of every kind and place (`annotation.K`,
    // `annotation-index.K`, `annotation-manifest-descriptor[P].K`, ...),
    // read by [`crate::annotations`]; a type it does not know is refused
    // there, before the build.
    if image_like && crate::annotations::is_annotation(key) {
        return Some(Works);
    }
    let s = match (kind, key) {
        (_, "dest") if kind != "image" => Works,
        ("image" | "oci" | "docker", "name") => Works,
        ("image", "push" | "push-by-digest" | "registry.insecure") => Bool,
        // kiln always unpacks into the snapshotter. `unpack=false` (what
        // buildx sends with every `--push`) only asks to skip that work:
        // the image stored and pushed is the same.
        ("image", "unpack") => Bool,
        // How the image is named in containerd's store (kilnd's
        // `export::Naming`; embedded builds refuse them, `kiln` outputs).
        ("image", "store" | "name-canonical" | "danging-name-empty-only") => Bool,
        ("image", "dangling-name-prefix") => Works,
        (_, "compression") if image_like => Works,
        // Converts layers that have a blob in another compression.
        (_, "force-compression") if image_like => Bool,
        // The level of the blobs made new ([`compression_level`]).
        (_, "compression-level") if image_like => Works,
        // OCI's media types, or Docker's ([`media_types`]).
        (_, "oci-mediatypes") if image_like => StrictBool,
        // Only how attestation manifests are written; kiln makes none
        // (BuildKit's default is true with OCI's media types). Checked
        // against Docker's types ([`media_types`]).
        (_, "oci-artifact" | "attestation-inline") if image_like => StrictBool,
        (_, "prefer-nondist-layers") if image_like => NotYet,
        // Layer file times clamped to SOURCE_DATE_EPOCH.
        (_, "rewrite-timestamp") if image_like => StrictBool,
        (_, "rewrite-timestamp") => OnlyBool(false),
        (_, "buildinfo" | "buildinfo-attrs") if image_like => OnlyBool(false),
        // Every file's time in the tree kilnd sends; an image's history
        // times and `created` (and its layers' with `rewrite-timestamp`).
        (_, "source-date-epoch") => Works,
        ("oci" | "docker", "tar") => Bool,
        ("docker", "context") => NotYet,
        ("local" | "tar", "platform-split") => StrictBool,
        (_, "attestation-prefix") => NotYet,
        _ => return None,
    };
    Some(s)
}

/// BuildKit's refusal of `key=value` for a boolean option: the local and
/// tar exporters' `platform-split` says it one way, the image exporters
/// another.
fn not_bool_text(key: &str, value: &str) -> String {
    let parse = format!("strconv.ParseBool: parsing {value:?}: invalid syntax");
    if key == "platform-split" {
        format!("non-bool value for {key}: {value}: {parse}")
    } else {
        format!("non-bool value specified for {key}: {parse}")
    }
}

/// A boolean option as BuildKit reads it: Go's `strconv.ParseBool`, and a
/// bare key is `true`.
pub fn bool_option(key: &str, value: &str) -> Result<bool, ExporterOptionError> {
    match value {
        "" | "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err(ExporterOptionError::NotBool {
            key: key.into(),
            value: value.into(),
        }),
    }
}

/// The media types an image exporter writes, by its `oci-mediatypes`
/// option (`option` reads the exporter's options; BuildKit's default at
/// the current compatibility version is OCI's, for every image exporter),
/// checked as BuildKit checks them before a build: Docker's types have no
/// zstd layer, no OCI artifact (`oci-artifact=true`), and no place for
/// index or descriptor annotations (`annotations` has some).
pub fn media_types<'a>(
    option: impl Fn(&str) -> Option<&'a str>,
    annotations: bool,
) -> Result<crate::oci::MediaTypes, ExporterOptionError> {
    let flag = |key: &str| option(key).map(|v| bool_option(key, v)).transpose();
    if flag("oci-mediatypes")?.unwrap_or(true) {
        return Ok(crate::oci::MediaTypes::Oci);
    }
    if let Some(c @ "zstd") = option("compression") {
        return Err(ExporterOptionError::NeedsOciTypes {
            option: format!("compression={c}"),
        });
    }
    if flag("oci-artifact")? == Some(true) {
        return Err(ExporterOptionError::NeedsOciTypes {
            option: "oci-artifact=true".into(),
        });
    }
    if annotations {
        return Err(ExporterOptionError::AnnotationsNeedOciTypes);
    }
    Ok(crate::oci::MediaTypes::Docker)
}

/// Checks the options of an image exporter of `kind` together (`option`
/// reads them), as BuildKit's exporter does: a named image in the store
/// is unpacked from the build's own layers, so `unpack=true` cannot go
/// with `rewrite-timestamp=true` (BuildKit's text; it fails after the
/// build, kiln before).
pub fn check_together<'a>(
    kind: &str,
    option: impl Fn(&str) -> Option<&'a str>,
) -> Result<(), ExporterOptionError> {
    let flag = |key: &str, default: bool| {
        option(key)
            .map(|v| bool_option(key, v))
            .transpose()
            .map(|b| b.unwrap_or(default))
    };
    // A dangling name names the image too (BuildKit adds it first).
    let named = option("name").is_some_and(|n| n.split(',').any(|n| !n.trim().is_empty()))
        || option("dangling-name-prefix").is_some_and(|p| !p.is_empty());
    if matches!(kind, "image" | "moby")
        && named
        && flag("store", true)?
        && flag("unpack", false)?
        && flag("rewrite-timestamp", false)?
    {
        return Err(ExporterOptionError::Conflict {
            one: "rewrite-timestamp".into(),
            other: "unpack".into(),
        });
    }
    Ok(())
}

/// An image exporter's `compression-level` (`option` reads its options)
/// for layers in `compression` (its `compression`, else the build's), as
/// [`Level::parse`] reads it; the default when it has none.
pub fn compression_level<'a>(
    option: impl Fn(&str) -> Option<&'a str>,
    compression: Compression,
) -> Result<Level, ExporterOptionError> {
    match option("compression-level") {
        Some(v) => Level::parse(v, compression).map_err(|e| ExporterOptionError::Level {
            reason: e.to_string(),
        }),
        None => Ok(Level::default()),
    }
}

/// An exporter's `source-date-epoch` option: whole seconds, `None` when
/// empty (the frontend's epoch applies).
pub fn source_date_epoch(value: &str) -> Result<Option<i64>, ExporterOptionError> {
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse::<i64>()
        .map(Some)
        .map_err(|_| ExporterOptionError::NotEpoch {
            value: value.to_string(),
        })
}

/// Checks option `key=value` of an exporter of `kind`: `Ok` when kiln does
/// what it asks.
pub fn check(kind: &str, key: &str, value: &str) -> Result<(), ExporterOptionError> {
    match support(kind, key) {
        Some(Support::Works) => Ok(()),
        Some(Support::Bool) => bool_option(key, value).map(drop),
        Some(Support::StrictBool) if value.is_empty() => Err(ExporterOptionError::NotBool {
            key: key.into(),
            value: value.into(),
        }),
        Some(Support::StrictBool) => bool_option(key, value).map(drop),
        Some(Support::OnlyBool(always)) => {
            if bool_option(key, value)? == always {
                Ok(())
            } else {
                Err(ExporterOptionError::OnlyBool {
                    key: key.into(),
                    always,
                })
            }
        }
        Some(Support::NotYet) => Err(ExporterOptionError::NotYet { key: key.into() }),
        None => Err(ExporterOptionError::Unknown {
            kind: kind.into(),
            key: key.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_media_types_are_asked_for_and_checked_as_buildkit_checks_them() {
        use crate::oci::MediaTypes;
        let of = |kv: &'static [(&'static str, &'static str)], annotations: bool| {
            media_types(
                |k| kv.iter().find(|(key, _)| *key == k).map(|(_, v)| *v),
                annotations,
            )
        };
        assert_eq!(of(&[], true), Ok(MediaTypes::Oci));
        assert_eq!(
            of(&[("oci-mediatypes", "true"), ("compression", "zstd")], true),
            Ok(MediaTypes::Oci)
        );
        assert_eq!(
            of(
                &[
                    ("oci-mediatypes", "false"),
                    ("compression", "gzip"),
                    ("oci-artifact", "false")
                ],
                false
            ),
            Ok(MediaTypes::Docker)
        );
        let conflict = |option: &str| {
            Err(format!(
                "exporter option \"{option}\" conflicts with \"oci-mediatypes=false\""
            ))
        };
        assert_eq!(
            of(
                &[("oci-mediatypes", "false"), ("compression", "zstd")],
                false
            )
            .map_err(|e| e.to_string()),
            conflict("compression=zstd")
        );
        assert_eq!(
            of(
                &[("oci-mediatypes", "false"), ("oci-artifact", "true")],
                false
            )
            .map_err(|e| e.to_string()),
            conflict("oci-artifact=true")
        );
        assert_eq!(
            of(&[("oci-mediatypes", "false")], true).map_err(|e| e.to_string()),
            Err("cannot export annotations with \"oci-mediatypes=false\"".into())
        );
        assert!(matches!(
            of(&[("oci-mediatypes", "maybe")], false),
            Err(ExporterOptionError::NotBool { .. })
        ));
    }

    #[test]
    fn rewriting_a_stored_image_cannot_unpack_it() {
        let of = |kind: &str, kv: &'static [(&'static str, &'static str)]| {
            check_together(kind, |k| {
                kv.iter().find(|(key, _)| *key == k).map(|(_, v)| *v)
            })
            .map_err(|e| e.to_string())
        };
        const BOTH: &[(&str, &str)] = &[
            ("name", "a"),
            ("unpack", "true"),
            ("rewrite-timestamp", "true"),
        ];
        assert_eq!(
            of("image", BOTH),
            Err("exporter option \"rewrite-timestamp\" conflicts with \"unpack\"".into())
        );
        assert!(of("moby", BOTH).is_err());
        assert_eq!(of("oci", BOTH), Ok(()));
        assert_eq!(
            of(
                "image",
                &[("unpack", "true"), ("rewrite-timestamp", "true")]
            ),
            Ok(()),
            "nothing named, nothing unpacked"
        );
        assert!(
            of(
                "image",
                &[
                    ("dangling-name-prefix", "<none>"),
                    ("unpack", "true"),
                    ("rewrite-timestamp", "true")
                ]
            )
            .is_err(),
            "nerdctl's dangling name"
        );
        assert_eq!(
            of(
                "image",
                &[
                    ("name", "a"),
                    ("store", "false"),
                    ("unpack", "true"),
                    ("rewrite-timestamp", "true")
                ]
            ),
            Ok(())
        );
        assert_eq!(
            of("image", &[("name", "a"), ("rewrite-timestamp", "true")]),
            Ok(())
        );
    }

    #[test]
    fn moby_is_the_image_exporter_and_unknown_kinds_know_nothing() {
        assert_eq!(check("moby", "push", "true"), Ok(()));
        assert_eq!(check("moby", "unpack", "false"), Ok(()), "buildx --push");
        assert_eq!(check("moby", "store", "false"), Ok(()));
        // A bare key is true where BuildKit's exporter says so (push,
        // store, …), not where it reads Go's ParseBool alone.
        assert_eq!(check("image", "push", ""), Ok(()));
        assert_eq!(check("image", "oci-mediatypes", "True"), Ok(()));
        assert_eq!(check("image", "force-compression", ""), Ok(()));
        for (kind, key) in [
            ("image", "oci-mediatypes"),
            ("image", "rewrite-timestamp"),
            ("local", "platform-split"),
        ] {
            assert!(
                matches!(
                    check(kind, key, ""),
                    Err(ExporterOptionError::NotBool { .. })
                ),
                "{key}"
            );
        }
        assert_eq!(check("moby", "dangling-name-prefix", "<none>"), Ok(()));
        assert!(matches!(
            check("image", "name-canonical", "sure"),
            Err(ExporterOptionError::NotBool { .. })
        ));
        assert_eq!(
            check("tar", "name", "x").map_err(|e| e.to_string()),
            Err("unknown output option \"name\" for type=tar".to_string())
        );
    }
}
