//! The build checks without a build: BuildKit's `frontend.lint` request
//! (`buildx build --check`, `--call=check`). Every stage is converted (or
//! the target's, when one is given), nothing runs, and the result is the
//! warnings, or the error that stopped the conversion, as BuildKit's
//! `lint.LintResults` JSON that buildx reads.

use crate::{plan_for, target_platforms, DockerfileSource, FrontendError, FrontendOptions};
use crate::{ImageConfigs, Result};
use base64::Engine as _;
use kiln_dockerfile::lint::{rule_description, rule_url};
use kiln_dockerfile::parser::Warning;

/// The `requestid` frontend attribute of the lint request.
pub const LINT_REQUEST: &str = "frontend.lint";

/// The lint request's `version` (BuildKit's `SubrequestLintDefinition`).
pub const LINT_VERSION: &str = "1.0.0";

/// What the lint request found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckReport {
    /// The Dockerfile's name, as in its errors.
    pub filename: String,
    /// The Dockerfile's text, for source snippets.
    pub source: String,
    /// The build checks' warnings, in line order.
    pub warnings: Vec<Warning>,
    /// The error that stopped the conversion, and its line when it has
    /// one (BuildKit reports it as `buildError`, not as a failure).
    pub error: Option<(String, Option<usize>)>,
}

impl CheckReport {
    /// `result.statuscode`: 1 when anything was found, as BuildKit's.
    pub fn status_code(&self) -> i32 {
        i32::from(!self.warnings.is_empty() || self.error.is_some())
    }

    /// `result.txt`: the warnings as BuildKit's `PrintLintViolations`
    /// prints them: `WARNING: Rule - URL`, the message, and the source
    /// snippet of its line (none for a warning about no line). The error
    /// that stopped the checks is not in it (it is `buildError` of
    /// [`CheckReport::json`]), as in BuildKit's.
    pub fn text(&self) -> String {
        let mut out = String::new();
        for w in &self.warnings {
            // As BuildKit: ` - URL` only for a rule with a page.
            let url = rule_url(&w.rule);
            let url = if url.is_empty() {
                url
            } else {
                format!(" - {url}")
            };
            out.push_str(&format!("\nWARNING: {}{url}\n{}\n", w.rule, w.message));
            out.push_str(&self.snippet(w.line));
        }
        out
    }

    /// The source snippet of `line` (nothing for line 0, no line).
    pub fn snippet(&self, line: usize) -> String {
        let l = i64::try_from(line).unwrap_or(i64::MAX);
        kiln_dockerfile::snippet::snippet(&self.filename, &self.source, &[(l, l)])
    }

    /// `result.json`: BuildKit's `lint.LintResults`, one source (the
    /// Dockerfile) and each warning at its line, with its rule's
    /// description and page.
    pub fn json(&self) -> String {
        let location = |line: usize| {
            let pos = serde_json::json!({ "line": line });
            serde_json::json!({ "ranges": [{ "start": pos, "end": pos }] })
        };
        let warnings: Vec<serde_json::Value> = self
            .warnings
            .iter()
            .map(|w| {
                let mut v = serde_json::json!({
                    "ruleName": w.rule,
                    "url": rule_url(&w.rule),
                    "detail": w.message,
                });
                let description = rule_description(&w.rule);
                if !description.is_empty() {
                    v["description"] = description.into();
                }
                if w.line > 0 {
                    v["location"] = location(w.line);
                } else {
                    v["location"] = serde_json::json!({ "sourceIndex": -1 });
                }
                v
            })
            .collect();
        // Go's nil slice: `null` when nothing was found, as BuildKit's.
        let warnings = if warnings.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::Value::Array(warnings)
        };
        let mut out = serde_json::json!({
            "warnings": warnings,
            "sources": [{
                "filename": self.filename,
                "language": "Dockerfile",
                "data": base64::engine::general_purpose::STANDARD.encode(&self.source),
            }],
        });
        if let Some((message, line)) = &self.error {
            let mut e = serde_json::json!({ "message": message, "location": {} });
            if let Some(l) = line {
                e["location"] = location(*l);
            }
            out["buildError"] = e;
        }
        serde_json::to_string_pretty(&out).unwrap_or_default()
    }
}

/// BuildKit's `lint.LintResults` as [`CheckReport::json`] writes it and
/// buildx reads it: only the fields a report holds.
#[derive(serde::Deserialize)]
struct LintResultsJson {
    /// `null` when there are none (BuildKit's and kiln's answer).
    #[serde(default)]
    warnings: Option<Vec<WarningJson>>,
    #[serde(default)]
    sources: Vec<SourceJson>,
    #[serde(rename = "buildError")]
    build_error: Option<ErrorJson>,
}

#[derive(serde::Deserialize)]
struct WarningJson {
    #[serde(rename = "ruleName")]
    rule_name: String,
    #[serde(default)]
    detail: String,
    #[serde(default)]
    location: LocationJson,
}

#[derive(serde::Deserialize, Default)]
struct LocationJson {
    /// -1: the warning is about no line of a source.
    #[serde(rename = "sourceIndex", default)]
    source_index: i64,
    #[serde(default)]
    ranges: Vec<RangeJson>,
}

impl LocationJson {
    /// The first line of the first range; 0 for none.
    fn line(&self) -> usize {
        if self.source_index < 0 {
            return 0;
        }
        self.ranges
            .first()
            .map_or(0, |r| usize::try_from(r.start.line).unwrap_or(0))
    }
}

#[derive(serde::Deserialize)]
struct RangeJson {
    start: PositionJson,
}

#[derive(serde::Deserialize)]
struct PositionJson {
    #[serde(default)]
    line: i64,
}

#[derive(serde::Deserialize)]
struct SourceJson {
    #[serde(default)]
    filename: String,
    /// Go encodes a `[]byte` as base64.
    #[serde(default)]
    data: String,
}

#[derive(serde::Deserialize)]
struct ErrorJson {
    message: String,
    #[serde(default)]
    location: LocationJson,
}

impl CheckReport {
    /// The report a daemon answered as `result.json` (the inverse of
    /// [`CheckReport::json`]), so a client prints it as an embedded
    /// check's.
    pub fn from_json(json: &str) -> std::result::Result<CheckReport, serde_json::Error> {
        let r: LintResultsJson = serde_json::from_str(json)?;
        let source = r.sources.into_iter().next();
        let (filename, data) = source.map(|s| (s.filename, s.data)).unwrap_or_default();
        let source = base64::engine::general_purpose::STANDARD
            .decode(data.as_bytes())
            .map_err(|e| {
                <serde_json::Error as serde::de::Error>::custom(format!(
                    "the source's data is not base64: {e}"
                ))
            })?;
        Ok(CheckReport {
            filename,
            source: String::from_utf8_lossy(&source).into_owned(),
            warnings: r
                .warnings
                .unwrap_or_default()
                .into_iter()
                .map(|w| Warning {
                    line: w.location.line(),
                    rule: w.rule_name,
                    message: w.detail,
                })
                .collect(),
            error: r.build_error.map(|e| {
                let line = Some(e.location.line()).filter(|l| *l > 0);
                (e.message, line)
            }),
        })
    }
}

/// Runs the build checks of `source` for the first target platform;
/// `opts.lint` need not be set (this sets what it implies).
pub async fn check<I: ImageConfigs>(
    source: &DockerfileSource,
    opts: &FrontendOptions,
    images: &I,
) -> CheckReport {
    let mut opts = opts.clone();
    opts.lint = true;
    // No check reads SOURCE_DATE_EPOCH's value: a source it names (which
    // is still checked to be one) is not fetched for the checks.
    if opts.resolved_epoch.is_none() {
        opts.resolved_epoch = Some(kiln_dockerfile::ResolvedEpoch(None));
    }
    let first = target_platforms(&opts).swap_remove(0);
    let (warnings, error) = match plan_for(source, &opts, &first, images).await {
        Ok(build) => (build.warnings, None),
        Err(e) => {
            // BuildKit's `buildError`: its location apart from the message.
            let warnings = source.failure_warnings(&opts, &e);
            let (message, line) = match &e {
                FrontendError::Dockerfile(p) => (p.unlocated(), p.line()),
                _ => (e.to_string(), e.line()),
            };
            (warnings, Some((message, line)))
        }
    };
    CheckReport {
        filename: source.filename.clone(),
        source: source.text.clone(),
        warnings,
        error,
    }
}

/// BuildKit's CopyIgnoredFile (`validateCopySourcePath`): a `COPY`/`ADD`
/// source of the main context that its ignore file excludes, checked
/// only when the file has no `!` exceptions (which make it undecidable
/// from the path alone). Here and not in `kiln-dockerfile` because the
/// ignore rules are `kiln-context`'s. With `check=error=true` a warning
/// fails the build, as the other checks do in `to_graph`.
pub(crate) fn copy_ignored(
    df: &kiln_dockerfile::Dockerfile,
    opts: &kiln_dockerfile::BuildOptions,
    build: &mut kiln_dockerfile::Build,
) -> Result<()> {
    const RULE: &str = "CopyIgnoredFile";
    let Ok(matcher) = kiln_context::ignore::PatternMatcher::new(&opts.excludes) else {
        // A bad pattern fails the context's transfer with its own error.
        return Ok(());
    };
    if matcher.is_empty() || matcher.has_exclusions() {
        return Ok(());
    }
    // `.` and `/` are excluded only by a pattern of every root entry.
    let root_ignored = opts
        .excludes
        .iter()
        .any(|p| matches!(p.trim(), "*" | "**" | "**/*"));
    let mut found = Vec::new();
    for read in &build.context_reads {
        let src = kiln_context::ignore::clean_path(&read.path);
        let ignored = match src.as_str() {
            "." | "/" => root_ignored,
            // BuildKit matches the path as written: a rooted one never
            // matches the context's relative patterns.
            s if s.starts_with('/') => false,
            s => matcher.matches(s),
        };
        if ignored && df.check_enabled(RULE, read.line) {
            let cmd = if read.add { "Add" } else { "Copy" };
            found.push(Warning {
                rule: RULE.to_string(),
                message: format!(
                    "Attempting to {cmd} file {} that is excluded by .dockerignore",
                    serde_json::Value::from(src.as_str())
                ),
                line: read.line,
            });
        }
    }
    if found.is_empty() {
        return Ok(());
    }
    build.warnings.extend(found);
    build.warnings.sort_by_key(|w| w.line);
    if df.check.error {
        // With the warnings found so far, as the converter's own lint
        // failure carries them.
        return Err(FrontendError::Dockerfile(
            kiln_dockerfile::ParseError::Checked {
                error: Box::new(kiln_dockerfile::ParseError::Lint {
                    file: opts.filename.clone(),
                    rules: RULE.to_string(),
                }),
                warnings: std::mem::take(&mut build.warnings),
            },
        ));
    }
    Ok(())
}

/// A subrequest's answer as BuildKit's frontend puts it in the result's
/// metadata, which is what buildx writes to `--metadata-file`:
/// `result.json`, `result.txt`, `version`, and for the lint request
/// `result.statuscode`.
pub fn answer_metadata(
    json: String,
    text: String,
    version: &str,
    status_code: Option<i32>,
) -> std::collections::BTreeMap<String, String> {
    let mut m = std::collections::BTreeMap::from([
        ("result.json".to_string(), json),
        ("result.txt".to_string(), text),
        ("version".to_string(), version.to_string()),
    ]);
    if let Some(c) = status_code {
        m.insert("result.statuscode".to_string(), c.to_string());
    }
    m
}

impl CheckReport {
    /// The lint request's answer ([`answer_metadata`]).
    pub fn metadata(&self) -> std::collections::BTreeMap<String, String> {
        answer_metadata(
            self.json(),
            self.text(),
            LINT_VERSION,
            Some(self.status_code()),
        )
    }
}

/// A subrequest `requestid` names: instead of a build, an answer in the
/// result's metadata.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Subrequest {
    /// No `requestid`: a build.
    None,
    /// [`LINT_REQUEST`].
    Lint,
    /// [`crate::targets::TARGETS_REQUEST`].
    Targets,
    /// [`crate::outline::OUTLINE_REQUEST`].
    Outline,
    /// [`crate::describe::DESCRIBE_REQUEST`].
    Describe,
}

/// Which subrequest `requestid` names; any other request fails as
/// BuildKit's frontend does.
pub(crate) fn request(value: &str) -> Result<Subrequest> {
    match value {
        "" => Ok(Subrequest::None),
        LINT_REQUEST => Ok(Subrequest::Lint),
        crate::targets::TARGETS_REQUEST => Ok(Subrequest::Targets),
        crate::outline::OUTLINE_REQUEST => Ok(Subrequest::Outline),
        crate::describe::DESCRIBE_REQUEST => Ok(Subrequest::Describe),
        other => Err(FrontendError::Unsupported {
            what: format!("frontend request {other:?}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn warning(rule: &str, message: &str, line: usize) -> Warning {
        Warning {
            rule: rule.into(),
            message: message.into(),
            line,
        }
    }

    /// `result.txt` and `result.json` as buildkitd 73ed6825c answered the
    /// lint request for this file (through buildx v0.36 --call=check
    /// --metadata-file): each warning's source snippet in the text, each
    /// rule's description in the JSON, `"warnings": null` for none.
    #[test]
    fn the_lint_result_is_buildkits() {
        let report = CheckReport {
            filename: "Dockerfile".into(),
            source: "FROM scratch as base\nENV A $FOO\nFROM base\ncopy a b\nMAINTAINER me\n".into(),
            warnings: vec![
                warning(
                    "FromAsCasing",
                    "'as' and 'FROM' keywords' casing do not match",
                    1,
                ),
                warning(
                    "ConsistentInstructionCasing",
                    "Command 'copy' should match the case of the command majority (uppercase)",
                    4,
                ),
            ],
            error: Some(("Dockerfile:9: bad".into(), Some(9))),
        };
        assert_eq!(
            report.text(),
            "\nWARNING: FromAsCasing - https://docs.docker.com/go/dockerfile/rule/from-as-casing/\n\
             'as' and 'FROM' keywords' casing do not match\n\
             Dockerfile:1\n\
             --------------------\n   \
             1 | >>> FROM scratch as base\n   \
             2 |     ENV A $FOO\n   \
             3 |     FROM base\n\
             --------------------\n\
             \nWARNING: ConsistentInstructionCasing - https://docs.docker.com/go/dockerfile/rule/consistent-instruction-casing/\n\
             Command 'copy' should match the case of the command majority (uppercase)\n\
             Dockerfile:4\n\
             --------------------\n   \
             2 |     ENV A $FOO\n   \
             3 |     FROM base\n   \
             4 | >>> copy a b\n   \
             5 |     MAINTAINER me\n   \
             6 |     \n\
             --------------------\n"
        );
        let json: serde_json::Value = serde_json::from_str(&report.json()).expect("json");
        assert_eq!(
            json["warnings"][0]["description"],
            "The 'as' keyword should match the case of the 'from' keyword"
        );
        assert_eq!(
            CheckReport::from_json(&report.json()).expect("reads"),
            report
        );
        let clean = CheckReport {
            warnings: Vec::new(),
            error: None,
            ..report
        };
        let json: serde_json::Value = serde_json::from_str(&clean.json()).expect("json");
        assert_eq!(json["warnings"], serde_json::Value::Null);
        assert_eq!(CheckReport::from_json(&clean.json()).expect("reads"), clean);
        assert_eq!(clean.text(), "");
    }

    #[test]
    fn the_lint_request_is_read_and_other_requests_are_refused() {
        let attrs = |v: &str| {
            HashMap::from([
                ("requestid".to_string(), v.to_string()),
                (
                    "frontend.caps".to_string(),
                    "moby.buildkit.frontend.subrequests".to_string(),
                ),
            ])
        };
        let opts = FrontendOptions::from_attrs(&attrs(LINT_REQUEST)).expect("lint is read");
        assert!(opts.lint);
        assert!(
            FrontendOptions::from_attrs(&attrs("frontend.outline"))
                .expect("outline is read")
                .outline
        );
        assert!(
            FrontendOptions::from_attrs(&attrs("frontend.subrequests.describe"))
                .expect("describe is read")
                .describe
        );
        let e = FrontendOptions::from_attrs(&attrs("frontend.convertllb")).expect_err("refused");
        assert_eq!(
            e.to_string(),
            "frontend request \"frontend.convertllb\" is not supported yet"
        );
    }

    /// `src` converted with `excludes` as the context's ignore patterns,
    /// then CopyIgnoredFile: the warnings' texts, or the error.
    fn copy_ignored_of(src: &str, excludes: &[&str]) -> std::result::Result<Vec<String>, String> {
        let df = kiln_dockerfile::parse(src, "Dockerfile").expect("parses");
        let opts = kiln_dockerfile::BuildOptions {
            excludes: excludes.iter().map(|e| e.to_string()).collect(),
            ..Default::default()
        };
        let bases = df
            .base_images(&opts)
            .expect("bases")
            .into_iter()
            .map(|r| (r, Default::default()))
            .collect();
        let mut b = kiln_dockerfile::to_graph(&df, &opts, &bases).expect("converts");
        copy_ignored(&df, &opts, &mut b).map_err(|e| e.to_string())?;
        Ok(b.warnings.iter().map(ToString::to_string).collect())
    }

    #[test]
    fn copy_ignored_file() {
        let src = "FROM busybox\nCOPY Dockerfile keep ./\nADD build/out /o\nCOPY --from=busybox Dockerfile /\n";
        assert_eq!(
            copy_ignored_of(src, &["Dockerfile", "build"]),
            Ok(vec![
                "CopyIgnoredFile: Attempting to Copy file \"Dockerfile\" that is excluded by .dockerignore (line 2)".to_string(),
                "CopyIgnoredFile: Attempting to Add file \"build/out\" that is excluded by .dockerignore (line 3)".to_string(),
            ])
        );
        // An exception makes the patterns undecidable from a path.
        assert_eq!(
            copy_ignored_of(src, &["Dockerfile", "!keep"]),
            Ok(Vec::new())
        );
        // The root only when every root entry is excluded.
        let root = "FROM busybox\nCOPY . /c/\n";
        assert_eq!(copy_ignored_of(root, &[".*"]), Ok(Vec::new()));
        assert_eq!(copy_ignored_of(root, &["**"]).map(|w| w.len()), Ok(1));
        assert_eq!(
            copy_ignored_of(&format!("# check=error=true\n{root}"), &["*"]),
            Err("Dockerfile: lint violation found for rules: CopyIgnoredFile".to_string())
        );
    }

    #[test]
    fn the_result_is_buildkits_lint_results() {
        let report = CheckReport {
            filename: "Dockerfile".into(),
            source: "FROM a\n".into(),
            warnings: vec![Warning {
                rule: "UndefinedVar".into(),
                message: "Usage of undefined variable '$X'".into(),
                line: 1,
            }],
            error: Some(("Dockerfile:1: bad".into(), Some(1))),
        };
        let v: serde_json::Value = serde_json::from_str(&report.json()).expect("JSON");
        assert_eq!(v["warnings"][0]["ruleName"], "UndefinedVar");
        assert_eq!(
            v["warnings"][0]["url"],
            "https://docs.docker.com/go/dockerfile/rule/undefined-var/"
        );
        assert_eq!(
            v["warnings"][0]["location"]["ranges"][0]["start"]["line"],
            1
        );
        // Go encodes a []byte as base64.
        assert_eq!(v["sources"][0]["data"], "RlJPTSBhCg==");
        assert_eq!(v["buildError"]["message"], "Dockerfile:1: bad");
        assert_eq!(report.status_code(), 1);
        // What a client reads back is what was written.
        assert_eq!(
            CheckReport::from_json(&report.json()).expect("reads"),
            report
        );
        let lineless = CheckReport {
            warnings: vec![Warning {
                rule: "InvalidBaseImagePlatform".into(),
                message: "no line".into(),
                line: 0,
            }],
            error: Some(("no line either".into(), None)),
            ..report.clone()
        };
        assert_eq!(
            CheckReport::from_json(&lineless.json()).expect("reads"),
            lineless
        );
        let clean = CheckReport {
            warnings: Vec::new(),
            error: None,
            ..report
        };
        assert_eq!(clean.status_code(), 0);
        assert_eq!(CheckReport::from_json(&clean.json()).expect("reads"), clean);
        assert!(CheckReport::from_json("{\"warnings\": 1}").is_err());
    }
}
