//! The Dockerfile conformance cases under `testdata/dockerfile/`: one
//! directory per case (`Dockerfile`, optional `context/`, `case.toml`),
//! and the `FEATURES` list they cover. The format is described in
//! `testdata/dockerfile/README.md`; this module only reads it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The base image of the cases whose steps run under QEMU user emulation
/// (`FROM busybox-arm64` with `--platform linux/arm64`), beside `busybox`:
/// both the suite and the BuildKit comparison import it.
pub const ARM64_BASE: &str = "docker.io/library/busybox-arm64:latest";

/// The directory holding the cases.
pub fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/dockerfile")
}

/// One case, as `case.toml` states it.
#[derive(Clone, Debug)]
pub struct Case {
    /// The directory name.
    pub name: String,
    pub dir: PathBuf,
    /// FEATURES rows this case exercises.
    pub covers: Vec<String>,
    /// Who agreed with the expectation: `reference` or a BuildKit version.
    pub checked: String,
    /// Extra `kiln build` arguments.
    pub build: Vec<String>,
    /// The case fails in the parser or converter alone.
    pub parse_only: bool,
    pub expect: Expect,
}

/// What a case must show.
#[derive(Clone, Debug, Default)]
pub struct Expect {
    /// The build fails with this text in its error, before any step ran.
    pub error: Option<String>,
    /// A `sh -c` command run in the image, and its exact stdout.
    pub run: Option<String>,
    pub stdout: Option<String>,
    /// The platform `run` unpacks and runs the image for (`ctr run
    /// --platform`), for an image built for another platform whose
    /// binaries are the host's (a cross build's `FROM
    /// --platform=$BUILDPLATFORM` stage).
    pub run_platform: Option<String>,
    /// JSON pointer into the image config -> expected JSON value.
    pub config: BTreeMap<String, serde_json::Value>,
    /// JSON pointers that must be absent (or `null`) in the image config.
    pub absent: Vec<String>,
    /// JSON pointers that must be present (with any value).
    pub present: Vec<String>,
    /// Build check warnings the build prints (`Rule: message (line N)`).
    pub warnings: Vec<String>,
}

impl Case {
    /// The build context: `context/` when the case has one.
    pub fn context(&self) -> Option<PathBuf> {
        let c = self.dir.join("context");
        c.is_dir().then_some(c)
    }

    pub fn dockerfile(&self) -> PathBuf {
        self.dir.join("Dockerfile")
    }

    /// Whether the case shows a feature working as BuildKit's does: its
    /// expectation is BuildKit's result, which may be BuildKit's own error
    /// for bad input (`checked` says who agreed).
    pub fn works(&self) -> bool {
        !self.not_supported()
    }

    /// Whether the case shows a feature failing as not supported.
    pub fn not_supported(&self) -> bool {
        self.expect
            .error
            .as_deref()
            .is_some_and(|e| e.contains("not supported"))
    }
}

/// Every case, sorted by name; a malformed `case.toml` is an error naming
/// its file.
pub fn load_cases() -> Result<Vec<Case>, String> {
    let dir = cases_dir();
    let mut out = Vec::new();
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let entry = entry.map_err(|e| format!("{}: {e}", dir.display()))?;
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        out.push(load_case(&path)?);
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

fn load_case(dir: &Path) -> Result<Case, String> {
    let file = dir.join("case.toml");
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    let bad = |what: &str| format!("{}: {what}", file.display());
    let table: toml::Table = text.parse().map_err(|e| bad(&format!("{e}")))?;
    for key in table.keys() {
        if !matches!(
            key.as_str(),
            "covers" | "checked" | "build" | "parse_only" | "expect"
        ) {
            return Err(bad(&format!("unknown key {key:?}")));
        }
    }
    let strings = |v: Option<&toml::Value>, what: &str| -> Result<Vec<String>, String> {
        match v {
            None => Ok(Vec::new()),
            Some(toml::Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_string)
                        .ok_or_else(|| bad(&format!("{what} must be a list of strings")))
                })
                .collect(),
            Some(_) => Err(bad(&format!("{what} must be a list of strings"))),
        }
    };
    let covers = strings(table.get("covers"), "covers")?;
    if covers.is_empty() {
        return Err(bad("covers must name at least one FEATURES row"));
    }
    let checked = table
        .get("checked")
        .and_then(toml::Value::as_str)
        .ok_or_else(|| bad("checked must say who agreed: \"reference\" or a BuildKit version"))?
        .to_string();
    let build = strings(table.get("build"), "build")?;
    let parse_only = match table.get("parse_only") {
        None => false,
        Some(v) => v
            .as_bool()
            .ok_or_else(|| bad("parse_only must be true or false"))?,
    };
    let mut expect = Expect::default();
    let e = table
        .get("expect")
        .and_then(toml::Value::as_table)
        .ok_or_else(|| bad("missing [expect]"))?;
    for (key, value) in e {
        let s = || {
            value
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| bad(&format!("expect.{key} must be a string")))
        };
        match key.as_str() {
            "error" => expect.error = Some(s()?),
            "run" => expect.run = Some(s()?),
            "stdout" => expect.stdout = Some(s()?),
            "run_platform" => expect.run_platform = Some(s()?),
            "absent" | "present" => {
                let what = format!("expect.{key} must be a list of JSON pointers");
                let list = value.as_array().ok_or_else(|| bad(&what))?;
                for p in list {
                    match p.as_str() {
                        Some(p) if p.starts_with('/') => {
                            let into = if key == "absent" {
                                &mut expect.absent
                            } else {
                                &mut expect.present
                            };
                            into.push(p.to_string());
                        }
                        _ => return Err(bad(&what)),
                    }
                }
            }
            "warnings" => {
                let list = value
                    .as_array()
                    .ok_or_else(|| bad("expect.warnings must be a list of strings"))?;
                for w in list {
                    let w = w
                        .as_str()
                        .ok_or_else(|| bad("expect.warnings must be a list of strings"))?;
                    expect.warnings.push(w.to_string());
                }
            }
            "config" => {
                let t = value
                    .as_table()
                    .ok_or_else(|| bad("expect.config must be a table"))?;
                for (ptr, v) in t {
                    if !ptr.starts_with('/') {
                        return Err(bad(&format!(
                            "expect.config key {ptr:?} is not a JSON pointer"
                        )));
                    }
                    let json = serde_json::to_value(v).map_err(|e| bad(&e.to_string()))?;
                    expect.config.insert(ptr.clone(), json);
                }
            }
            k => return Err(bad(&format!("unknown key expect.{k}"))),
        }
    }
    let observes = expect.run.is_some()
        || !expect.config.is_empty()
        || !expect.absent.is_empty()
        || !expect.present.is_empty()
        || !expect.warnings.is_empty();
    if expect.error.is_some() && observes {
        return Err(bad("expect.error excludes run/stdout/config/absent"));
    }
    if expect.error.is_none() && !observes {
        return Err(bad("expect needs error, or run/stdout, or config/absent"));
    }
    if expect.run.is_some() != expect.stdout.is_some() {
        return Err(bad("expect.run and expect.stdout go together"));
    }
    if parse_only && expect.error.is_none() {
        return Err(bad("parse_only cases expect an error"));
    }
    if !dir.join("Dockerfile").is_file() {
        return Err(format!("{}: no Dockerfile", dir.display()));
    }
    Ok(Case {
        name: dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        dir: dir.to_path_buf(),
        covers,
        checked,
        build,
        parse_only,
        expect,
    })
}

/// The FEATURES rows: `(row, known_uncovered)`; comments and blank lines
/// dropped, a `? ` prefix marks a row known to have no case yet.
pub fn load_features() -> Result<Vec<(String, bool)>, String> {
    let file = cases_dir().join("FEATURES");
    let text = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| match l.strip_prefix("? ") {
            Some(row) => (row.to_string(), true),
            None => (l.to_string(), false),
        })
        .collect())
}
