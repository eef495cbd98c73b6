//! BuildKit's `frontend.outline` request (`buildx build --call=outline`):
//! what the target stage takes from its caller. The build arguments it and
//! the stages it reads use (each with its doc comment `# NAME description`,
//! its value after the build's own `--build-arg`s, and the `ARG` line), the
//! secrets and ssh agents its `RUN --mount`s ask for (and whether they are
//! required), the stage's name and doc comment, and the Dockerfile, as
//! BuildKit's `outline.Outline` JSON and the text BuildKit prints.
//!
//! Which arguments are used follows BuildKit's frontend: a global `ARG`
//! when a `FROM` (its base or `--platform`) of a stage on the way names
//! it or a stage re-declares it, a stage's own `ARG`s, and the global
//! arguments their defaults read. A stage `ARG` without a default that
//! takes the global one is listed as the global one.

use crate::targets::{LocationJson, PositionJson, RangeJson};
use crate::{DockerfileSource, Result};
use base64::Engine as _;
use kiln_dockerfile::instructions::{Instruction, MountKind};
use kiln_dockerfile::shell::Lex;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// The `requestid` frontend attribute of the outline request.
pub const OUTLINE_REQUEST: &str = "frontend.outline";

/// The version of the answer's shape (BuildKit's outline request's).
pub const OUTLINE_VERSION: &str = "1.0.0";

/// The arguments every stage sees without declaring them globally:
/// `ARG TARGETPLATFORM` in a stage takes the frontend's value, so it is
/// not the caller's to set and is not listed.
const AUTOMATIC_ARGS: &[&str] = &[
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
    "TARGETSTAGE",
];

/// One build argument of the outline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlineArg {
    pub name: String,
    pub description: String,
    /// The value the build would use (its `--build-arg`, else its default,
    /// expanded).
    pub value: String,
    /// The `ARG` instruction's first and last lines.
    pub lines: (usize, usize),
}

/// A secret or ssh agent a `RUN --mount` of the target asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutlineMount {
    pub name: String,
    pub required: bool,
    /// The `RUN` instruction's first and last lines.
    pub lines: (usize, usize),
}

/// What the target stage takes from its caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outline {
    /// The stage's name (empty for an unnamed last stage).
    pub name: String,
    /// Its doc comment.
    pub description: String,
    pub args: Vec<OutlineArg>,
    pub secrets: Vec<OutlineMount>,
    pub ssh: Vec<OutlineMount>,
    /// The Dockerfile's text (BuildKit's `sources`).
    pub source: String,
}

/// What one stage uses (BuildKit's `outlineCapture`).
#[derive(Clone, Default)]
struct Capture {
    /// Every argument the stage may use, by name: the global ones, then
    /// its own declarations over them.
    all: HashMap<String, ArgInfo>,
    used: BTreeSet<String>,
    secrets: BTreeMap<String, OutlineMount>,
    ssh: BTreeMap<String, OutlineMount>,
    /// Stages it reads (its base, `COPY --from`, `RUN --mount from=`).
    deps: BTreeSet<usize>,
    base: Option<usize>,
}

#[derive(Clone)]
struct ArgInfo {
    arg: OutlineArg,
    /// The global arguments its default read.
    deps: BTreeSet<String>,
}

/// The outline of `target` (the last stage when `None`) of `source`, with
/// the build's `--build-arg` values.
pub fn outline(
    source: &DockerfileSource,
    target: Option<&str>,
    build_args: &BTreeMap<String, String>,
) -> Result<Outline> {
    let df = kiln_dockerfile::parse(&source.text, &source.filename)?;
    let nodes = kiln_dockerfile::parser::split(&source.text, &source.filename)?.nodes;
    let lex = Lex::new(df.escape);
    let span = |line: usize| {
        nodes
            .iter()
            .find(|n| n.line == line)
            .map_or((line, line), |n| (n.line, n.end_line))
    };
    let doc = |line: usize, name: &str| -> String {
        nodes
            .iter()
            .find(|n| n.line == line)
            .and_then(|n| {
                n.comments
                    .iter()
                    .find_map(|c| c.strip_prefix(&format!("{name} ")))
            })
            .unwrap_or_default()
            .to_string()
    };

    // The global arguments, evaluated in order as BuildKit's meta args.
    let mut global_env: Vec<String> = Vec::new();
    let mut global: HashMap<String, ArgInfo> = HashMap::new();
    for c in &df.global_args {
        let Instruction::Arg(decls) = &c.instruction else {
            continue;
        };
        for a in decls {
            let mut deps = BTreeSet::new();
            let value = match (build_args.get(&a.key), &a.default) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(d)) => {
                    let (r, m) = lex.process_word_matches(d, &global_env);
                    deps = m.matched;
                    if deps.remove(&a.key) {
                        if let Some(old) = global.get(&a.key) {
                            deps.extend(old.deps.iter().cloned());
                        }
                    }
                    Some(r.unwrap_or_default())
                }
                (None, None) => None,
            };
            if let Some(v) = &value {
                let _ = kiln_dockerfile::shell::add_env(&mut global_env, &a.key, v);
            }
            global.insert(
                a.key.clone(),
                ArgInfo {
                    arg: OutlineArg {
                        name: a.key.clone(),
                        description: doc(c.line, &a.key),
                        value: value.unwrap_or_default(),
                        lines: span(c.line),
                    },
                    deps,
                },
            );
        }
    }

    let names: Vec<Option<String>> = df.stages.iter().map(|s| s.name.clone()).collect();
    let stage_of = |name: &str, before: usize| -> Option<usize> {
        let lower = name.to_ascii_lowercase();
        names[..before]
            .iter()
            .position(|n| n.as_deref() == Some(lower.as_str()))
            .or_else(|| name.parse::<usize>().ok().filter(|i| *i < before))
    };
    let mut captures: Vec<Capture> = Vec::with_capacity(df.stages.len());
    for (i, stage) in df.stages.iter().enumerate() {
        let mut cap = Capture {
            all: global.clone(),
            ..Default::default()
        };
        for word in std::iter::once(&stage.base).chain(stage.platform.as_ref()) {
            cap.used
                .extend(lex.process_word_matches(word, &global_env).1.matched);
        }
        let base = lex
            .process_word(&stage.base, &global_env)
            .unwrap_or_else(|_| stage.base.clone());
        cap.base = stage_of(&base, i);
        let mut env = Vec::new();
        for c in &stage.commands {
            match &c.instruction {
                Instruction::Arg(decls) => {
                    for a in decls {
                        let given = build_args.get(&a.key);
                        let inherited = given.is_none()
                            && a.default.is_none()
                            && (global.get(&a.key).is_some_and(|g| {
                                kiln_dockerfile::shell::lookup(&global_env, &g.arg.name).is_some()
                            }) || AUTOMATIC_ARGS.contains(&a.key.as_str()));
                        let value = match (given, &a.default) {
                            (Some(v), _) => Some(v.clone()),
                            (None, Some(d)) => Some(lex.process_word(d, &env).unwrap_or_default()),
                            (None, None) => kiln_dockerfile::shell::lookup(&global_env, &a.key)
                                .map(str::to_string),
                        };
                        if let Some(v) = &value {
                            let _ = kiln_dockerfile::shell::add_env(&mut env, &a.key, v);
                        }
                        if !inherited {
                            cap.all.insert(
                                a.key.clone(),
                                ArgInfo {
                                    arg: OutlineArg {
                                        name: a.key.clone(),
                                        description: doc(c.line, &a.key),
                                        value: value.unwrap_or_default(),
                                        lines: span(c.line),
                                    },
                                    deps: BTreeSet::new(),
                                },
                            );
                        }
                        cap.used.insert(a.key.clone());
                    }
                }
                Instruction::Copy(copy) => {
                    if let Some(s) = copy.from.as_deref().and_then(|f| stage_of(f, i)) {
                        cap.deps.insert(s);
                    }
                }
                Instruction::Run(run) => {
                    for m in &run.mounts {
                        if let Some(s) = m.from.as_deref().and_then(|f| stage_of(f, i)) {
                            cap.deps.insert(s);
                        }
                        let required = m
                            .required
                            .as_deref()
                            .is_some_and(|v| v.is_empty() || v.eq_ignore_ascii_case("true"));
                        let entry = |name: String| OutlineMount {
                            name,
                            required,
                            lines: span(c.line),
                        };
                        match m.kind {
                            Some(MountKind::Secret) => {
                                let id = m.source.clone().or_else(|| m.id.clone()).or_else(|| {
                                    m.target.as_deref().map(|t| {
                                        t.rsplit('/').next().unwrap_or_default().to_string()
                                    })
                                });
                                if let Some(id) = id {
                                    cap.secrets.entry(id.clone()).or_insert_with(|| entry(id));
                                }
                            }
                            Some(MountKind::Ssh) => {
                                let id = m.id.clone().unwrap_or_else(|| "default".to_string());
                                cap.ssh.entry(id.clone()).or_insert_with(|| entry(id));
                            }
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        captures.push(cap);
    }

    let target_index = match target.filter(|t| !t.is_empty()) {
        None => df.stages.len().checked_sub(1),
        Some(t) => {
            let lower = t.to_ascii_lowercase();
            let found = names
                .iter()
                .position(|n| n.as_deref() == Some(lower.as_str()));
            if found.is_none() {
                return Err(kiln_dockerfile::ParseError::TargetNotFound {
                    target: t.to_string(),
                    hint: String::new(),
                }
                .into());
            }
            found
        }
    };
    let Some(ti) = target_index else {
        return Ok(Outline {
            name: String::new(),
            description: String::new(),
            args: Vec::new(),
            secrets: Vec::new(),
            ssh: Vec::new(),
            source: source.text.clone(),
        });
    };

    // BuildKit's walk: the stage, then its base, then what it reads, each
    // name taken from the first stage that has it.
    let mut args = Vec::new();
    let mut secrets = Vec::new();
    let mut ssh = Vec::new();
    let (mut seen_args, mut seen_secrets, mut seen_ssh) =
        (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    let mut stack = vec![ti];
    let mut visited = BTreeSet::new();
    while let Some(s) = stack.pop() {
        if !visited.insert(s) {
            continue;
        }
        let cap = &captures[s];
        // Mark what the used arguments' defaults read as used too.
        let mut used = cap.used.clone();
        let mut todo: Vec<String> = used.iter().cloned().collect();
        while let Some(k) = todo.pop() {
            if let Some(a) = cap.all.get(&k) {
                for d in &a.deps {
                    if used.insert(d.clone()) {
                        todo.push(d.clone());
                    }
                }
            }
        }
        for k in &used {
            if let Some(a) = cap.all.get(k) {
                if seen_args.insert(k.clone()) {
                    args.push(a.arg.clone());
                }
            }
        }
        for (k, m) in &cap.secrets {
            if seen_secrets.insert(k.clone()) {
                secrets.push(m.clone());
            }
        }
        for (k, m) in &cap.ssh {
            if seen_ssh.insert(k.clone()) {
                ssh.push(m.clone());
            }
        }
        // Depth first: the base before the other stages it reads.
        stack.extend(cap.deps.iter().rev());
        stack.extend(cap.base);
    }
    args.sort_by_key(|a| a.lines.0);
    secrets.sort_by_key(|m| m.lines.0);
    ssh.sort_by_key(|m| m.lines.0);

    let stage_line = df.stages[ti].line;
    let name = df.stages[ti].name.clone().unwrap_or_default();
    let description = if name.is_empty() {
        String::new()
    } else {
        doc(stage_line, &name)
    };
    Ok(Outline {
        name,
        description,
        args,
        secrets,
        ssh,
        source: source.text.clone(),
    })
}

fn location(lines: (usize, usize)) -> LocationJson {
    LocationJson {
        ranges: [RangeJson {
            start: PositionJson { line: lines.0 },
            end: PositionJson { line: lines.1 },
        }],
    }
}

impl Outline {
    /// `result.json`: BuildKit's `outline.Outline` (empty fields left
    /// out), its fields in BuildKit's order.
    pub fn json(&self) -> String {
        let mounts = |v: &[OutlineMount]| -> Vec<MountJson> {
            v.iter()
                .map(|m| MountJson {
                    name: m.name.clone(),
                    required: m.required,
                    location: location(m.lines),
                })
                .collect()
        };
        let o = OutlineJson {
            name: &self.name,
            description: &self.description,
            args: self
                .args
                .iter()
                .map(|a| ArgJson {
                    name: &a.name,
                    description: &a.description,
                    value: &a.value,
                    location: location(a.lines),
                })
                .collect(),
            secrets: mounts(&self.secrets),
            ssh: mounts(&self.ssh),
            sources: [base64::engine::general_purpose::STANDARD.encode(&self.source)],
        };
        serde_json::to_string_pretty(&o).unwrap_or_default()
    }

    /// `result.txt`: the tables BuildKit prints (Go's tabwriter: columns
    /// padded to their widest cell plus the padding, each table followed by
    /// an empty line).
    pub fn text(&self) -> String {
        let mut out = String::new();
        if !self.name.is_empty() || !self.description.is_empty() {
            let name = if self.name.is_empty() {
                "(default)"
            } else {
                &self.name
            };
            let mut rows = vec![vec!["TARGET:".to_string(), name.to_string()]];
            if !self.description.is_empty() {
                rows.push(vec!["DESCRIPTION:".into(), self.description.clone()]);
            }
            out.push_str(&table(&rows, 1));
            out.push('\n');
        }
        if !self.args.is_empty() {
            let mut rows = vec![vec![
                "BUILD ARG".to_string(),
                "VALUE".into(),
                "DESCRIPTION".into(),
            ]];
            for a in &self.args {
                rows.push(vec![a.name.clone(), a.value.clone(), a.description.clone()]);
            }
            out.push_str(&table(&rows, 3));
            out.push('\n');
        }
        for (title, list) in [("SECRET", &self.secrets), ("SSH", &self.ssh)] {
            if list.is_empty() {
                continue;
            }
            let mut rows = vec![vec![title.to_string(), "REQUIRED".into()]];
            for m in list {
                rows.push(vec![
                    m.name.clone(),
                    if m.required { "true" } else { "" }.to_string(),
                ]);
            }
            out.push_str(&table(&rows, 3));
            out.push('\n');
        }
        out
    }
}

/// Rows as Go's tabwriter aligns them: every cell but a row's last is
/// padded to its column's widest cell plus `padding` spaces.
fn table(rows: &[Vec<String>], padding: usize) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns.saturating_sub(1))
        .map(|c| {
            rows.iter()
                .filter(|r| c + 1 < r.len())
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
                + padding
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        for (c, cell) in r.iter().enumerate() {
            if c + 1 < r.len() {
                out.push_str(&format!("{cell:<w$}", w = widths[c]));
            } else {
                out.push_str(cell);
            }
        }
        out.push('\n');
    }
    out
}

/// `outline.Outline` as BuildKit writes it.
#[derive(serde::Serialize)]
struct OutlineJson<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    description: &'a str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    args: Vec<ArgJson<'a>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    secrets: Vec<MountJson>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    ssh: Vec<MountJson>,
    sources: [String; 1],
}

#[derive(serde::Serialize)]
struct ArgJson<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    description: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    value: &'a str,
    location: LocationJson,
}

#[derive(serde::Serialize)]
struct MountJson {
    name: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    required: bool,
    location: LocationJson,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(text: &str) -> DockerfileSource {
        DockerfileSource {
            filename: "Dockerfile".into(),
            text: text.into(),
            excludes: Vec::new(),
            policy_file: None,
        }
    }

    const DF: &str = "\
# GO_VERSION the Go toolchain
ARG GO_VERSION=1.22
ARG UNUSED=x
ARG BASE=busybox
FROM ${BASE}:${GO_VERSION} AS base
# MODE how to build
ARG MODE=release
RUN --mount=type=secret,id=token,required echo
# build compiles things
FROM base AS build
ARG GO_VERSION
RUN --mount=type=ssh echo && echo
RUN --mount=type=secret,target=/run/npmrc echo
FROM scratch AS other
ARG OTHER
";

    #[test]
    fn the_target_its_args_secrets_and_ssh() {
        let o = outline(&source(DF), Some("build"), &BTreeMap::new()).expect("outline");
        assert_eq!(o.name, "build");
        assert_eq!(o.description, "compiles things");
        let args: Vec<(&str, &str, &str, usize)> = o
            .args
            .iter()
            .map(|a| {
                (
                    a.name.as_str(),
                    a.value.as_str(),
                    a.description.as_str(),
                    a.lines.0,
                )
            })
            .collect();
        assert_eq!(
            args,
            [
                ("GO_VERSION", "1.22", "the Go toolchain", 2),
                ("BASE", "busybox", "", 4),
                ("MODE", "release", "how to build", 7),
            ]
        );
        let secrets: Vec<(&str, bool)> = o
            .secrets
            .iter()
            .map(|m| (m.name.as_str(), m.required))
            .collect();
        assert_eq!(secrets, [("token", true), ("npmrc", false)]);
        assert_eq!(o.ssh[0].name, "default");
        assert_eq!(
            o.text(),
            "TARGET:      build\nDESCRIPTION: compiles things\n\n\
             BUILD ARG    VALUE     DESCRIPTION\n\
             GO_VERSION   1.22      the Go toolchain\n\
             BASE         busybox   \n\
             MODE         release   how to build\n\n\
             SECRET   REQUIRED\ntoken    true\nnpmrc    \n\n\
             SSH       REQUIRED\ndefault   \n\n"
        );
        let json: serde_json::Value = serde_json::from_str(&o.json()).expect("json");
        assert_eq!(json["args"][0]["name"], "GO_VERSION");
        assert_eq!(json["args"][1].get("description"), None);
        assert_eq!(json["args"][0]["location"]["ranges"][0]["start"]["line"], 2);
        assert_eq!(json["secrets"][0]["required"], true);
        assert_eq!(json["secrets"][1].get("required"), None);
    }

    #[test]
    fn build_args_set_values_and_the_last_stage_is_the_default() {
        let given = BTreeMap::from([("OTHER".to_string(), "given".to_string())]);
        let o = outline(&source(DF), None, &given).expect("outline");
        assert_eq!(o.name, "other");
        assert_eq!(o.args.len(), 1);
        assert_eq!(
            (o.args[0].name.as_str(), o.args[0].value.as_str()),
            ("OTHER", "given")
        );
        let e = outline(&source(DF), Some("nope"), &BTreeMap::new()).expect_err("no stage");
        assert_eq!(e.to_string(), "target stage \"nope\" could not be found");
    }
}
