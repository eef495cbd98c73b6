//! BuildKit's `frontend.targets` request (`buildx build --call=targets`):
//! the Dockerfile's stages, each with its name, the doc comment above its
//! `FROM` (`# NAME description`), its base, its `--platform` and its
//! location, the last one the default, as BuildKit's `targets.List` JSON
//! that buildx prints from, and the table BuildKit prints itself.

use crate::{DockerfileSource, Result};
use base64::Engine as _;

/// The `requestid` frontend attribute of the targets request.
pub const TARGETS_REQUEST: &str = "frontend.targets";

/// The version of the answer's shape (BuildKit's targets request's).
pub const TARGETS_VERSION: &str = "1.0.0";

/// One stage, as a target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `AS name`, lowercased; empty for an unnamed stage.
    pub name: String,
    /// The last stage: what a build without `--target` builds.
    pub default: bool,
    /// The comment above `FROM` that starts with the stage's name, after
    /// the name.
    pub description: String,
    /// The base, unexpanded.
    pub base: String,
    /// `--platform`, unexpanded.
    pub platform: String,
    /// The `FROM` instruction's first and last lines.
    pub lines: (usize, usize),
}

/// The targets of one Dockerfile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetList {
    pub targets: Vec<Target>,
    /// The Dockerfile's text (BuildKit's `sources`).
    pub source: String,
}

/// The targets of `source`; a Dockerfile that does not parse fails as its
/// build would.
pub fn list(source: &DockerfileSource) -> Result<TargetList> {
    let df = kiln_dockerfile::parse(&source.text, &source.filename)?;
    let nodes = kiln_dockerfile::parser::split(&source.text, &source.filename)?.nodes;
    let count = df.stages.len();
    let targets = df
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let node = nodes.iter().find(|n| n.line == s.line);
            let name = s.name.clone().unwrap_or_default();
            let description = match (name.is_empty(), node) {
                (false, Some(n)) => n
                    .comments
                    .iter()
                    .find_map(|c| c.strip_prefix(&format!("{name} ")))
                    .unwrap_or_default()
                    .to_string(),
                _ => String::new(),
            };
            Target {
                name,
                default: i + 1 == count,
                description,
                base: s.base.clone(),
                platform: s.platform.clone().unwrap_or_default(),
                lines: (s.line, node.map_or(s.line, |n| n.end_line)),
            }
        })
        .collect();
    Ok(TargetList {
        targets,
        source: source.text.clone(),
    })
}

impl TargetList {
    /// `result.json`: BuildKit's `targets.List` (empty fields left out),
    /// its fields in BuildKit's order, so `--call=targets,format=json`
    /// prints the same text.
    pub fn json(&self) -> String {
        let targets = self
            .targets
            .iter()
            .map(|t| TargetJson {
                name: &t.name,
                default: t.default,
                description: &t.description,
                base: &t.base,
                platform: &t.platform,
                location: LocationJson {
                    ranges: [RangeJson {
                        start: PositionJson { line: t.lines.0 },
                        end: PositionJson { line: t.lines.1 },
                    }],
                },
            })
            .collect();
        let list = ListJson {
            targets,
            sources: [base64::engine::general_purpose::STANDARD.encode(&self.source)],
        };
        serde_json::to_string_pretty(&list).unwrap_or_default()
    }

    /// `result.txt`: the table BuildKit prints (`TARGET  DESCRIPTION`,
    /// the default marked), its first column padded to its widest cell
    /// plus one space.
    pub fn text(&self) -> String {
        let rows: Vec<(String, &str)> = self
            .targets
            .iter()
            .map(|t| {
                let name = match (t.name.is_empty(), t.default) {
                    (true, true) => "(default)".to_string(),
                    (false, true) => format!("{} (default)", t.name),
                    _ => t.name.clone(),
                };
                (name, t.description.as_str())
            })
            .collect();
        let width = rows
            .iter()
            .map(|(n, _)| n.chars().count())
            .chain(std::iter::once("TARGET".len()))
            .max()
            .unwrap_or(0)
            + 1;
        let mut out = format!("{:<width$}DESCRIPTION\n", "TARGET");
        for (name, description) in rows {
            out.push_str(&format!("{name:<width$}{description}\n"));
        }
        out
    }
}

/// `targets.List` as BuildKit writes it.
#[derive(serde::Serialize)]
struct ListJson<'a> {
    targets: Vec<TargetJson<'a>>,
    sources: [String; 1],
}

/// `targets.Target`: its `omitempty` fields left out when empty.
#[derive(serde::Serialize)]
struct TargetJson<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    default: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    description: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    base: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    platform: &'a str,
    location: LocationJson,
}

#[derive(serde::Serialize)]
pub(crate) struct LocationJson {
    pub(crate) ranges: [RangeJson; 1],
}

#[derive(serde::Serialize)]
pub(crate) struct RangeJson {
    pub(crate) start: PositionJson,
    pub(crate) end: PositionJson,
}

#[derive(serde::Serialize)]
pub(crate) struct PositionJson {
    pub(crate) line: usize,
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

    #[test]
    fn stages_become_targets_with_their_doc_comments() {
        let l = list(&source(
            "FROM busybox AS Base\n# build compiles things\nFROM --platform=$BUILDPLATFORM base AS build\nFROM scratch\n",
        ))
        .expect("lists");
        let names: Vec<(&str, bool, &str, &str, &str)> = l
            .targets
            .iter()
            .map(|t| {
                (
                    t.name.as_str(),
                    t.default,
                    t.description.as_str(),
                    t.base.as_str(),
                    t.platform.as_str(),
                )
            })
            .collect();
        assert_eq!(
            names,
            [
                ("base", false, "", "busybox", ""),
                ("build", false, "compiles things", "base", "$BUILDPLATFORM"),
                ("", true, "", "scratch", ""),
            ]
        );
        assert_eq!(
            l.text(),
            "TARGET    DESCRIPTION\nbase      \nbuild     compiles things\n(default) \n"
        );
        let j: serde_json::Value = serde_json::from_str(&l.json()).expect("json");
        assert_eq!(
            j["targets"][1],
            serde_json::json!({
                "name": "build",
                "description": "compiles things",
                "base": "base",
                "platform": "$BUILDPLATFORM",
                "location": {"ranges": [{"start": {"line": 3}, "end": {"line": 3}}]},
            })
        );
        assert_eq!(j["targets"][2]["default"], true);
        // BuildKit's field order, as Go's json.MarshalIndent writes it.
        let one = list(&source(
            "# app the app\nFROM --platform=linux/arm64 busybox AS app\n",
        ))
        .expect("lists");
        assert_eq!(
            one.json(),
            r#"{
  "targets": [
    {
      "name": "app",
      "default": true,
      "description": "the app",
      "base": "busybox",
      "platform": "linux/arm64",
      "location": {
        "ranges": [
          {
            "start": {
              "line": 2
            },
            "end": {
              "line": 2
            }
          }
        ]
      }
    }
  ],
  "sources": [
    "IyBhcHAgdGhlIGFwcApGUk9NIC0tcGxhdGZvcm09bGludXgvYXJtNjQgYnVzeWJveCBBUyBhcHAK"
  ]
}"#
        );
    }
}
