//! `-o`/`--output` specs as buildx spells them, checked attribute by
//! attribute before anything runs: each attribute either works (in this
//! mode) or is refused by name. Embedded builds and `--addr` builds read
//! the specs through [`parse`], so both refuse the same things.

use anyhow::{anyhow, Result};
use std::collections::BTreeMap;

/// One `-o` output: its type and its other attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    pub kind: String,
    pub attrs: BTreeMap<String, String>,
}

impl Output {
    pub fn is_image(&self) -> bool {
        self.kind == "image"
    }

    /// buildx's `type=cacheonly`: no export at all, and none of the
    /// defaults a build without outputs gets (an image named by `-t`, the
    /// "No output specified" warning).
    pub fn is_cache_only(&self) -> bool {
        self.kind == CACHE_ONLY
    }
}

/// buildx's output type that exports nothing (buildx drops it before the
/// solve; kiln drops it before the exporters).
pub const CACHE_ONLY: &str = "cacheonly";

/// The output types buildx knows, and whether kiln exports them embedded
/// (`true`) or only through a daemon (`false`).
const TYPES: &[(&str, bool)] = &[
    ("image", true),
    ("registry", true),
    ("local", false),
    ("tar", false),
    ("oci", false),
    ("docker", false),
    (CACHE_ONLY, true),
];

/// A boolean attribute as BuildKit reads it (a bare key is `true`).
pub fn bool_attr(key: &str, value: &str) -> Result<bool> {
    Ok(kiln_engine::exporter_options::bool_option(key, value)?)
}

/// Checks one attribute of an output of `kind` against the table kilnd
/// checks too ([`kiln_engine::exporter_options`]).
fn check(kind: &str, key: &str, value: &str) -> Result<()> {
    Ok(kiln_engine::exporter_options::check(kind, key, value)?)
}

/// Whether option `k=v` of an image output is what an embedded build does:
/// kilnd's naming options (`store`, `name-canonical`, the dangling name;
/// its `export::Naming`) only at their defaults, every other option.
fn embedded_default(k: &str, v: &str) -> Result<bool> {
    Ok(match k {
        "store" => bool_attr(k, v)?,
        "name-canonical" | "danging-name-empty-only" => !bool_attr(k, v)?,
        "dangling-name-prefix" => v.is_empty(),
        _ => true,
    })
}

/// Splits one spec into key/value pairs (a bare key, e.g. `push`, has an
/// empty value; a lone value is buildx's `-o DIR`, `type=local,dest=DIR`).
fn pairs(spec: &str) -> Result<Vec<(String, String)>> {
    if !spec.contains('=') && !spec.is_empty() {
        // buildx's `-o -`: a tar of the result on stdout.
        if spec == "-" {
            return Ok(vec![
                ("type".into(), "tar".into()),
                ("dest".into(), "-".into()),
            ]);
        }
        return Ok(vec![
            ("type".into(), "local".into()),
            ("dest".into(), spec.into()),
        ]);
    }
    spec.split(',')
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => Ok((k.trim().to_string(), v.to_string())),
            None => Ok((kv.trim().to_string(), String::new())),
        })
        .collect()
}

/// Parses and checks every `-o` spec. `type=registry` is buildx's
/// `type=image,push=true`; `push` (`--push`) marks the image output,
/// adding one if there is none; `load` (`--load`) asks for the image in
/// containerd's store, which is where kiln's image output puts it.
/// `embedded` refuses the types only a daemon exports.
pub fn parse(specs: &[String], push: bool, load: bool, embedded: bool) -> Result<Vec<Output>> {
    let mut out: Vec<Output> = Vec::new();
    for spec in specs {
        let mut kind = None;
        let mut attrs = BTreeMap::new();
        for (k, v) in pairs(spec)? {
            if k == "type" {
                kind = Some(v);
            } else {
                attrs.insert(k, v);
            }
        }
        let mut kind = kind.unwrap_or_else(|| "image".to_string());
        let Some((_, in_process)) = TYPES.iter().find(|(t, _)| *t == kind) else {
            return Err(anyhow!(
                "unknown output type {kind:?} (image, registry, local, tar, oci, docker, cacheonly)"
            ));
        };
        if kind == CACHE_ONLY {
            if let Some(k) = attrs.keys().next() {
                return Err(anyhow!(
                    "unknown output option {k:?} for type=cacheonly (it takes none)"
                ));
            }
            out.push(Output { kind, attrs });
            continue;
        }
        if kind == "registry" {
            kind = "image".into();
            attrs.insert("push".into(), "true".into());
        }
        for (k, v) in &attrs {
            check(&kind, k, v)?;
            if embedded && !embedded_default(k, v)? {
                return Err(anyhow!(
                    "output option {k} is not supported yet without a daemon (use --addr with kilnd)"
                ));
            }
        }
        kiln_engine::exporter_options::check_together(&kind, |k| attrs.get(k).map(String::as_str))?;
        if embedded && !in_process {
            return Err(anyhow!(
                "output type={kind} is not supported yet without a daemon (use --addr with kilnd)"
            ));
        }
        if kind != "image" && !attrs.contains_key("dest") {
            return Err(anyhow!("type={kind} needs dest=PATH"));
        }
        out.push(Output { kind, attrs });
    }
    if (push || load) && !out.iter().any(Output::is_image) {
        out.push(Output {
            kind: "image".into(),
            attrs: BTreeMap::new(),
        });
    }
    if push {
        for o in out.iter_mut().filter(|o| o.is_image()) {
            o.attrs.insert("push".into(), "true".into());
        }
    }
    for o in out.iter().filter(|o| o.is_image()) {
        let on = |k: &str| {
            o.attrs
                .get(k)
                .map(|v| bool_attr(k, v))
                .transpose()
                .map(|b| b.unwrap_or(false))
        };
        let pushing = on("push")?;
        for modifier in ["push-by-digest", "registry.insecure"] {
            if on(modifier)? && !pushing {
                return Err(anyhow!("{modifier}=true needs push=true (or --push)"));
            }
        }
    }
    Ok(out)
}

/// buildx's `--annotation` values as exporter options: `KEY=VALUE` is
/// `annotation.KEY`; `TYPES:KEY=VALUE` gives one option per type of the
/// comma-separated `TYPE[PLATFORM]` list (`manifest`, `index`,
/// `manifest-descriptor`, `index-descriptor`; a platform only narrows the
/// manifest kinds). buildx's error texts.
pub fn annotation_options(values: &[String]) -> Result<Vec<(String, String)>> {
    let host = kiln_engine::oci::worker_platform();
    let mut out = Vec::new();
    for given in values.iter().filter(|v| !v.is_empty()) {
        let (k, v) = given
            .split_once('=')
            .ok_or_else(|| anyhow!("invalid annotation {given:?}, expected key=value"))?;
        let Some((types, key)) = k.split_once(':') else {
            out.push((format!("annotation.{k}"), v.to_string()));
            continue;
        };
        for one in types.split(',') {
            let (kind, platform) = match one.split_once('[') {
                Some((kind, rest)) => match rest.strip_suffix(']') {
                    Some(p) if !p.is_empty() && !p.contains(['[', ']']) => (kind, Some(p)),
                    _ => (kind, None),
                },
                None => (one, None),
            };
            let well_formed = !kind.is_empty()
                && kind.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                && (one.len() == kind.len() || platform.is_some());
            if !well_formed {
                return Err(anyhow!(
                    "invalid annotation type {one:?}, expected type and optional platform in square brackets"
                ));
            }
            let manifest_kind = match kind {
                "manifest" | "manifest-descriptor" => true,
                "index" | "index-descriptor" => false,
                _ => return Err(anyhow!("unknown annotation type {kind:?}")),
            };
            let platform = platform
                .map(|p| {
                    kiln_solver::Platform::parse(p, &host)
                        .map_err(|e| anyhow!("invalid platform {p:?}: {e}"))
                })
                .transpose()?
                .filter(|_| manifest_kind);
            let option = match platform {
                Some(p) => format!("annotation-{kind}[{p}].{key}"),
                None => format!("annotation-{kind}.{key}"),
            };
            out.push((option, v.to_string()));
        }
    }
    Ok(out)
}

/// Adds `--annotation`'s `options` ([`annotation_options`]) to every image
/// output (`image`, `oci`, `docker`), as buildx adds them to its outputs.
/// With no output at all they go to the image output kiln makes by
/// default; with outputs but no image among them they would change
/// nothing, which is an error.
pub fn annotate(outputs: &mut Vec<Output>, options: &[(String, String)]) -> Result<()> {
    if options.is_empty() {
        return Ok(());
    }
    let image_like = |o: &Output| matches!(o.kind.as_str(), "image" | "oci" | "docker");
    if outputs.is_empty() {
        outputs.push(Output {
            kind: "image".into(),
            attrs: BTreeMap::new(),
        });
    }
    if !outputs.iter().any(image_like) {
        return Err(anyhow!(
            "--annotation applies to image outputs (type=image, registry, oci or docker), and no output is one"
        ));
    }
    for o in outputs.iter_mut().filter(|o| image_like(o)) {
        for (k, v) in options {
            check(&o.kind, k, v)?;
            o.attrs.insert(k.clone(), v.clone());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(spec: &str) -> Result<Vec<Output>> {
        parse(&[spec.to_string()], false, false, false)
    }

    /// Every attribute buildx documents for each output type: works in kiln
    /// (`Ok`), or fails naming the attribute as not supported yet.
    #[test]
    fn every_output_attribute_works_or_is_refused_by_name() {
        let works = [
            "type=image,name=r/x:1",
            "type=image,name=r/x:1,push=true",
            "type=image,push=true,push-by-digest=true",
            "type=image,push=true,registry.insecure=true",
            "type=image,compression=zstd",
            "type=image,compression=gzip,force-compression=false",
            "type=image,compression=zstd,force-compression=true",
            "type=image,compression=zstd,compression-level=19",
            "type=docker,dest=o.tar,compression-level=1",
            "type=image,oci-mediatypes=true",
            "type=image,oci-mediatypes=false",
            "type=docker,dest=out.tar,oci-mediatypes=false",
            "type=image,oci-artifact=false",
            "type=image,oci-artifact=true,attestation-inline=true",
            "type=image,unpack=true",
            "type=image,push=true,unpack=false",
            "type=image,store=true",
            "type=image,name=a,store=false,push=true",
            "type=image,name=a,name-canonical=true",
            "type=image,dangling-name-prefix=<none>,danging-name-empty-only=true",
            "type=image,rewrite-timestamp=false",
            "type=image,rewrite-timestamp=true",
            "type=image,source-date-epoch=0",
            "type=image,buildinfo=false",
            "type=registry,name=r/x:1",
            "type=local,dest=out",
            "type=tar,dest=out.tar",
            "type=oci,dest=out.tar,name=r/x:1,compression=gzip",
            "type=docker,dest=out.tar,name=r/x:1",
            "type=oci,dest=-,tar=true",
            "type=oci,dest=layout,tar=false",
            "type=docker,dest=layout,tar=false",
            "type=image,annotation.org.opencontainers.image.title=x",
            "type=image,annotation-index.a=b",
            "type=image,annotation-manifest-descriptor[linux/arm64].a=b",
            "type=oci,dest=o.tar,annotation.a=b",
            "out-dir",
        ];
        for spec in works {
            one(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
        }
        let refused = [
            (
                "type=image,prefer-nondist-layers=true",
                "prefer-nondist-layers",
            ),
            (
                "type=local,dest=o,rewrite-timestamp=true",
                "rewrite-timestamp=true",
            ),
            ("type=image,buildinfo=true", "buildinfo=true"),
            ("type=image,buildinfo-attrs=true", "buildinfo-attrs=true"),
            ("type=image,attestation-prefix=x", "attestation-prefix"),
            ("type=docker,dest=o.tar,context=x", "context"),
        ];
        for (spec, name) in refused {
            let e = one(spec).expect_err(spec).to_string();
            let key = name.split('=').next().unwrap_or(name);
            match name.split_once('=') {
                // A value kiln does not do: the one it does is named.
                Some((key, bad)) => {
                    let ok = if bad == "true" { "false" } else { "true" };
                    assert_eq!(
                        e,
                        format!(
                            "output option {key} is not supported yet (kiln always uses {key}={ok})"
                        ),
                        "{spec}"
                    );
                }
                None => assert_eq!(e, format!("output option {key} is not supported yet")),
            }
        }
    }

    #[test]
    fn annotation_flags_become_buildx_s_exporter_options() {
        let given =
            |v: &[&str]| annotation_options(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(
            given(&[
                "a=1",
                "index,manifest[linux/arm64]:b=2",
                "manifest-descriptor:c=x=y"
            ])
            .expect("options"),
            [
                ("annotation.a".to_string(), "1".to_string()),
                ("annotation-index.b".into(), "2".into()),
                ("annotation-manifest[linux/arm64].b".into(), "2".into()),
                ("annotation-manifest-descriptor.c".into(), "x=y".into()),
            ]
        );
        // A platform only narrows the manifest kinds.
        assert_eq!(
            given(&["index[linux/arm64]:k=v"]).expect("index"),
            [("annotation-index.k".to_string(), "v".to_string())]
        );
        for (bad, text) in [
            ("novalue", "invalid annotation \"novalue\", expected key=value"),
            ("layer:k=v", "unknown annotation type \"layer\""),
            (
                "Manifest:k=v",
                "invalid annotation type \"Manifest\", expected type and optional platform in square brackets",
            ),
        ] {
            assert_eq!(
                given(&[bad]).expect_err(bad).to_string(),
                text,
                "{bad}"
            );
        }
    }

    #[test]
    fn annotations_go_to_image_outputs_only() {
        let opts = annotation_options(&["k=v".to_string()]).expect("options");
        let mut none = Vec::new();
        annotate(&mut none, &opts).expect("default output");
        assert_eq!(none.len(), 1);
        assert!(none[0].is_image());
        assert_eq!(
            none[0].attrs.get("annotation.k").map(String::as_str),
            Some("v")
        );

        let mut mixed = parse(
            &[
                "type=local,dest=d".to_string(),
                "type=oci,dest=o.tar".to_string(),
            ],
            false,
            false,
            false,
        )
        .expect("outputs");
        annotate(&mut mixed, &opts).expect("oci output");
        assert!(
            !mixed[0].attrs.contains_key("annotation.k"),
            "local: no place"
        );
        assert!(mixed[1].attrs.contains_key("annotation.k"));

        let mut local =
            parse(&["type=local,dest=d".to_string()], false, false, false).expect("outputs");
        let e = annotate(&mut local, &opts).expect_err("no image output");
        assert!(
            e.to_string()
                .contains("--annotation applies to image outputs"),
            "{e}"
        );
    }

    #[test]
    fn unknown_types_and_attributes_are_errors() {
        assert_eq!(
            one("type=image,frobnicate=1")
                .expect_err("unknown")
                .to_string(),
            "unknown output option \"frobnicate\" for type=image"
        );
        assert_eq!(
            one("type=fancy").expect_err("type").to_string(),
            "unknown output type \"fancy\" (image, registry, local, tar, oci, docker, cacheonly)"
        );
        assert_eq!(
            one("type=cacheonly,dest=x").expect_err("attr").to_string(),
            "unknown output option \"dest\" for type=cacheonly (it takes none)"
        );
        assert_eq!(
            one("type=local").expect_err("no dest").to_string(),
            "type=local needs dest=PATH"
        );
        assert_eq!(
            one("type=image,push=maybe").expect_err("bool").to_string(),
            "non-bool value specified for push: strconv.ParseBool: parsing \"maybe\": invalid syntax"
        );
    }

    /// buildx's shorthands: `-o DIR` and `-o -` (a tar on stdout).
    #[test]
    fn lone_values_are_buildx_shorthands() {
        let attrs = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        assert_eq!(
            one("-").expect("stdout"),
            vec![Output {
                kind: "tar".into(),
                attrs: attrs(&[("dest", "-")])
            }]
        );
        assert_eq!(
            one("out").expect("dir"),
            vec![Output {
                kind: "local".into(),
                attrs: attrs(&[("dest", "out")])
            }]
        );
    }

    /// `type=cacheonly` is kept as itself (the callers drop it), in both
    /// modes, and gets no image output added unless `--push`/`--load`.
    #[test]
    fn cacheonly_exports_nothing() {
        for embedded in [false, true] {
            let o = parse(&["type=cacheonly".into()], false, false, embedded).expect("cacheonly");
            assert_eq!(o.len(), 1);
            assert!(o[0].is_cache_only() && !o[0].is_image());
        }
    }

    /// How kilnd names an image in containerd's store (`store`,
    /// `name-canonical`, the dangling name): embedded builds do what the
    /// defaults say and refuse the rest by name.
    #[test]
    fn embedded_builds_refuse_the_daemons_naming_options() {
        let embedded = |spec: &str| parse(&[spec.to_string()], false, false, true);
        for spec in [
            "type=image,store=true",
            "type=image,name-canonical=false",
            "type=image,danging-name-empty-only=false",
        ] {
            embedded(spec).unwrap_or_else(|e| panic!("{spec}: {e}"));
        }
        for (spec, key) in [
            ("type=image,store=false,push=true", "store"),
            ("type=image,name-canonical=true", "name-canonical"),
            (
                "type=image,dangling-name-prefix=<none>",
                "dangling-name-prefix",
            ),
            (
                "type=image,danging-name-empty-only",
                "danging-name-empty-only",
            ),
        ] {
            assert_eq!(
                embedded(spec).expect_err(spec).to_string(),
                format!(
                    "output option {key} is not supported yet without a daemon (use --addr with kilnd)"
                )
            );
        }
    }

    #[test]
    fn embedded_builds_refuse_the_daemons_types() {
        let e = parse(&["type=local,dest=o".into()], false, false, true).expect_err("embedded");
        assert_eq!(
            e.to_string(),
            "output type=local is not supported yet without a daemon (use --addr with kilnd)"
        );
        let reg =
            parse(&["type=registry,name=r/x:1".into()], false, false, true).expect("registry");
        assert_eq!(reg[0].kind, "image");
        assert_eq!(reg[0].attrs.get("push").map(String::as_str), Some("true"));
    }

    #[test]
    fn push_and_load_add_or_mark_the_image_output() {
        let o = parse(&["type=local,dest=o".into()], true, false, false).expect("push");
        assert_eq!(o.len(), 2);
        assert_eq!(o[1].attrs.get("push").map(String::as_str), Some("true"));
        let o = parse(&[], false, true, true).expect("load");
        assert_eq!(o.len(), 1);
        assert!(o[0].is_image() && o[0].attrs.is_empty());
        assert!(parse(&[], false, false, true).expect("none").is_empty());
        assert_eq!(
            parse(
                &["type=image,push-by-digest=true".into()],
                false,
                false,
                true
            )
            .expect_err("modifier")
            .to_string(),
            "push-by-digest=true needs push=true (or --push)"
        );
    }
}
