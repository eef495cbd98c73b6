//! Parser directives: `# escape=`, `# syntax=` and `# check=` at the top of
//! a Dockerfile, after BuildKit's `frontend/dockerfile/parser/directives.go`.
//!
//! Directives are `# key=value` lines before any other line (a blank line,
//! a comment or an instruction ends them); an unknown key ends them too;
//! a repeated key is an error. `syntax` is also found after a `#!` line,
//! as `// syntax=` and as a JSON `{"syntax": ...}` document, because
//! BuildKit looks for it there before it chooses a frontend. kiln is its
//! own Dockerfile frontend: `syntax` may name BuildKit's Dockerfile
//! frontend (any `1.x` version, labs too), anything else fails before the
//! build as not supported.

use crate::reference::Reference;

/// A directive's value and the (1-based) line it is on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Directive {
    /// The value's first word (BuildKit cuts it at the first space).
    pub value: String,
    /// The whole value: for `syntax`, the frontend image and its
    /// arguments, which BuildKit forwards to that image as its `cmdline`.
    pub cmdline: String,
    pub line: usize,
}

/// `# check=skip=A,B;error=true;experimental=C`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CheckConfig {
    /// Rules not reported (`skip=`).
    pub skip: Vec<String>,
    /// `skip=all`.
    pub skip_all: bool,
    /// Experimental rules turned on (`experimental=`).
    pub experimental: Vec<String>,
    /// `experimental=all`.
    pub experimental_all: bool,
    /// `error=true`: a build with warnings fails.
    pub error: bool,
}

impl CheckConfig {
    /// Parses the value of a `check` directive (or of the
    /// `BUILDKIT_DOCKERFILE_CHECK` build arg). The error is BuildKit's text.
    pub fn parse(value: &str) -> Result<CheckConfig, String> {
        let value = value.trim();
        let mut cfg = CheckConfig::default();
        if value.is_empty() {
            return Ok(cfg);
        }
        let list =
            |v: &str| -> Vec<String> { v.split(',').map(|r| r.trim().to_string()).collect() };
        // BuildKit splits into at most three options.
        for part in value.splitn(3, ';') {
            let Some((k, v)) = part.split_once('=') else {
                return Err(format!("invalid check option {part:?}"));
            };
            let v = v.trim();
            match k.trim() {
                "skip" if v == "all" => cfg.skip_all = true,
                "skip" => cfg.skip = list(v),
                "experimental" if v == "all" => cfg.experimental_all = true,
                "experimental" => cfg.experimental = list(v),
                "error" => {
                    cfg.error = match v {
                        "1" | "t" | "T" | "TRUE" | "true" | "True" => true,
                        "0" | "f" | "F" | "FALSE" | "false" | "False" => false,
                        _ => {
                            return Err(format!(
                                "failed to parse check option {part:?}: strconv.ParseBool: parsing {v:?}: invalid syntax"
                            ))
                        }
                    }
                }
                k => return Err(format!("invalid check option {k:?}")),
            }
        }
        Ok(cfg)
    }

    /// Whether rule `name` is reported.
    pub fn enabled(&self, name: &str) -> bool {
        !self.skip_all && !self.skip.iter().any(|s| s == name)
    }
}

/// The directive scanner of the main parse: fed every line (leading
/// whitespace removed) until it is done.
#[derive(Debug, Default)]
pub(crate) struct Scanner {
    done: bool,
    seen: Vec<String>,
}

impl Scanner {
    /// `Ok(Some((key, value)))` for a directive line; `Ok(None)` when the
    /// line is not one (then scanning is over); an error for a repeat.
    pub(crate) fn line(&mut self, line: &str) -> Result<Option<(String, String)>, String> {
        if self.done {
            return Ok(None);
        }
        let Some((key, value)) = parse_line(line, "#") else {
            self.done = true;
            return Ok(None);
        };
        if self.seen.contains(&key) {
            return Err(format!("only one {key} parser directive can be used"));
        }
        self.seen.push(key.clone());
        Ok(Some((key, value)))
    }
}

/// `<comment> key = value` with a known key (lowercased), else `None`.
fn parse_line(line: &str, comment: &str) -> Option<(String, String)> {
    let body = line.strip_prefix(comment)?.trim_start();
    let (key, value) = body.split_once('=')?;
    let key = key.trim_end_matches(char::is_whitespace);
    let mut chars = key.chars();
    if !chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        || !chars.all(|c| c.is_ascii_alphanumeric())
    {
        return None;
    }
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    let key = key.to_lowercase();
    matches!(key.as_str(), "syntax" | "escape" | "check").then(|| (key, value.to_string()))
}

/// All directives of `comment` form at the top of `src` (after an optional
/// `#!` line), each key once; scanning stops at the first other line or
/// at a repeated key.
fn scan_top(src: &str, comment: &str) -> Vec<(String, Directive)> {
    let mut out: Vec<(String, Directive)> = Vec::new();
    let mut lines = src.split('\n').enumerate().peekable();
    if lines.peek().is_some_and(|(_, l)| l.starts_with("#!")) {
        lines.next();
    }
    for (i, l) in lines {
        let l = l.strip_suffix('\r').unwrap_or(l);
        let Some((key, value)) = parse_line(l, comment) else {
            break;
        };
        if out.iter().any(|(k, _)| *k == key) {
            break;
        }
        out.push((
            key,
            Directive {
                cmdline: value.clone(),
                value,
                line: i + 1,
            },
        ));
    }
    out
}

/// BuildKit's `ParseDirective`: the `#` form of `key` at the top of the
/// file (after a `#!` line), its value cut at the first space.
pub fn find(src: &str, key: &str) -> Option<Directive> {
    let src = src.strip_prefix('\u{feff}').unwrap_or(src);
    scan_top(src, "#")
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, d)| first_word(d))
}

/// BuildKit's `DetectSyntax`: the `syntax` directive as `#`, `//` or JSON.
pub fn detect_syntax(src: &str) -> Option<Directive> {
    let src = src.strip_prefix('\u{feff}').unwrap_or(src);
    if let Some(d) = find(src, "syntax") {
        return Some(d);
    }
    if let Some((_, d)) = scan_top(src, "//").into_iter().find(|(k, _)| k == "syntax") {
        return Some(first_word(d));
    }
    let body = match src.split_once('\n') {
        Some((first, rest)) if first.starts_with("#!") => rest,
        _ => src,
    };
    let json: serde_json::Value = serde_json::from_str(body).ok()?;
    let v = json.as_object()?.get("syntax")?.as_str()?;
    Some(Directive {
        value: v.to_string(),
        cmdline: v.to_string(),
        line: 1,
    })
}

fn first_word(d: Directive) -> Directive {
    let value = d.value.split(' ').next().unwrap_or_default().to_string();
    Directive { value, ..d }
}

/// Whether a `syntax` value names BuildKit's own Dockerfile frontend
/// (`docker/dockerfile` or `docker/dockerfile-upstream`, version 1, labs
/// or not), whose language kiln implements.
pub fn is_dockerfile_frontend(value: &str) -> bool {
    let Ok(r) = Reference::parse(value) else {
        return false;
    };
    if r.domain != "docker.io"
        || !matches!(
            r.path.as_str(),
            "docker/dockerfile" | "docker/dockerfile-upstream"
        )
    {
        return false;
    }
    let Some(tag) = r.tag.as_deref() else {
        // Pinned by digest only.
        return true;
    };
    let version = tag.strip_suffix("-labs").unwrap_or(tag);
    if matches!(tag, "latest" | "labs" | "master" | "master-labs") {
        return true;
    }
    let mut parts = version.split('.');
    parts.next() == Some("1")
        && parts.clone().count() <= 2
        && parts.all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syntax_forms() {
        let d = |s: &str| detect_syntax(s).map(|d| (d.value, d.line));
        assert_eq!(
            d("# syntax=docker/dockerfile:1\nFROM a\n"),
            Some(("docker/dockerfile:1".into(), 1))
        );
        assert_eq!(
            d("#!/usr/bin/env x\n# escape=`\n#  SYNTAX = a/b:c extra\nFROM a\n"),
            Some(("a/b:c".into(), 3))
        );
        assert_eq!(d("// syntax=x/y\n"), Some(("x/y".into(), 1)));
        assert_eq!(d("{\"syntax\": \"x/z\"}"), Some(("x/z".into(), 1)));
        // The whole line is the frontend's command line (BuildKit's
        // DetectSyntax returns it as `cmdline`); the JSON form is one word.
        let cmdline = |s: &str| detect_syntax(s).map(|d| (d.value, d.cmdline));
        assert_eq!(
            cmdline("# syntax=a/b:c --flag x y\nFROM a\n"),
            Some(("a/b:c".into(), "a/b:c --flag x y".into()))
        );
        assert_eq!(
            cmdline("// syntax=x/y  z \n"),
            Some(("x/y".into(), "x/y  z".into()))
        );
        assert_eq!(
            cmdline("{\"syntax\": \"x/z w\"}"),
            Some(("x/z w".into(), "x/z w".into()))
        );
        // After a comment or an instruction it is a comment.
        assert_eq!(d("# hello\n# syntax=x/y\nFROM a\n"), None);
        assert_eq!(d("FROM a\n# syntax=x/y\n"), None);
    }

    #[test]
    fn dockerfile_frontend_refs() {
        for ok in [
            "docker/dockerfile:1",
            "docker/dockerfile:1.7",
            "docker/dockerfile:1.7.1",
            "docker.io/docker/dockerfile:1",
            "docker/dockerfile:1-labs",
            "docker/dockerfile:1.4-labs",
            "docker/dockerfile-upstream:master",
            "docker/dockerfile",
            "docker/dockerfile:labs",
            "docker/dockerfile@sha256:0000000000000000000000000000000000000000000000000000000000000000",
        ] {
            assert!(is_dockerfile_frontend(ok), "{ok}");
        }
        for bad in [
            "tonistiigi/dockerfile:1",
            "example.com/docker/dockerfile:1",
            "docker/dockerfile:0.5",
            "docker/dockerfile:2",
            "docker/dockerfile:1.x",
            "not a ref",
        ] {
            assert!(!is_dockerfile_frontend(bad), "{bad}");
        }
    }

    #[test]
    fn check_options() {
        let c = CheckConfig::parse("skip=JSONArgsRecommended, StageNameCasing;error=true")
            .expect("parses");
        assert_eq!(c.skip, vec!["JSONArgsRecommended", "StageNameCasing"]);
        assert!(c.error);
        assert!(!c.enabled("StageNameCasing"));
        assert!(c.enabled("FromAsCasing"));
        let c = CheckConfig::parse("skip=all;experimental=all").expect("parses");
        assert!(c.skip_all && c.experimental_all && !c.error);
        assert!(!c.enabled("FromAsCasing"));
        assert_eq!(
            CheckConfig::parse("nope").expect_err("an error"),
            "invalid check option \"nope\""
        );
        assert_eq!(
            CheckConfig::parse("foo=1").expect_err("an error"),
            "invalid check option \"foo\""
        );
        assert_eq!(
            CheckConfig::parse("error=yes").expect_err("an error"),
            "failed to parse check option \"error=yes\": strconv.ParseBool: parsing \"yes\": invalid syntax"
        );
        assert_eq!(
            find("# check=error=true\nFROM a", "check")
                .expect("parses")
                .value,
            "error=true"
        );
    }
}
