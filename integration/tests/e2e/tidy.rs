//! Tidy checks on the workspace itself, no containerd needed.
//!
//! The crate dependency graph is a design decision: every edge between
//! workspace crates must be listed in the "Crate dependencies" table of
//! `docs/ARCHITECTURE.md`, and every listed edge must exist. A crate that
//! gains an edge the map does not list fails this test until the map (and
//! so the design) says so.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

type Edges = BTreeMap<String, BTreeSet<String>>;

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ has a parent")
        .to_path_buf()
}

/// The normal (non-dev) dependencies between workspace crates, from
/// `cargo metadata`. Build dependencies count too: they are code the
/// crate's build runs.
fn metadata_edges(metadata: &Value) -> Edges {
    let packages = metadata["packages"].as_array().cloned().unwrap_or_default();
    let members: BTreeSet<String> = packages
        .iter()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect();
    let mut edges = Edges::new();
    for p in &packages {
        let Some(name) = p["name"].as_str() else {
            continue;
        };
        let deps = edges.entry(name.to_string()).or_default();
        for d in p["dependencies"].as_array().into_iter().flatten() {
            let Some(dep) = d["name"].as_str() else {
                continue;
            };
            if d["kind"].as_str() == Some("dev") || !members.contains(dep) {
                continue;
            }
            deps.insert(dep.to_string());
        }
    }
    edges
}

/// The edges the architecture map lists: the rows of the table under
/// `## Crate dependencies`, `| \`crate\` | \`dep\`, \`dep\` |` (a row
/// with no dependency says `—`).
fn documented_edges(doc: &str) -> Result<Edges, String> {
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with("Crate dependencies"))
        .ok_or("docs/ARCHITECTURE.md has no `## Crate dependencies` section")?;
    let mut edges = Edges::new();
    for line in section.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        let [krate, deps, ..] = cells.as_slice() else {
            continue;
        };
        let Some(krate) = krate.strip_prefix('`').and_then(|k| k.strip_suffix('`')) else {
            continue; // header or separator row
        };
        let listed = edges.entry(krate.to_string()).or_default();
        for dep in deps.split(',').map(str::trim) {
            if let Some(d) = dep.strip_prefix('`').and_then(|d| d.strip_suffix('`')) {
                listed.insert(d.to_string());
            }
        }
    }
    if edges.is_empty() {
        return Err("the `## Crate dependencies` table has no rows".into());
    }
    Ok(edges)
}

/// Every difference between the real graph and the documented one, as
/// one line each.
fn compare(real: &Edges, documented: &Edges) -> Vec<String> {
    let mut problems = Vec::new();
    for (krate, deps) in real {
        let Some(listed) = documented.get(krate) else {
            problems.push(format!(
                "crate {krate} has no row in docs/ARCHITECTURE.md's crate dependency table"
            ));
            continue;
        };
        for dep in deps.difference(listed) {
            problems.push(format!(
                "{krate} depends on {dep}, an edge docs/ARCHITECTURE.md does not list \
                 (a new edge is a design decision: add it to the map, or remove it)"
            ));
        }
        for dep in listed.difference(deps) {
            problems.push(format!(
                "docs/ARCHITECTURE.md lists {krate} -> {dep}, but {krate} does not depend on it \
                 (stale line)"
            ));
        }
    }
    for krate in documented.keys().filter(|k| !real.contains_key(*k)) {
        problems.push(format!(
            "docs/ARCHITECTURE.md lists crate {krate}, which is not in the workspace"
        ));
    }
    problems
}

fn cargo_metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(workspace_root())
        .output()
        .expect("cargo metadata runs");
    assert!(
        out.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON")
}

#[test]
fn crate_dependency_edges_match_the_architecture_map() {
    let doc = std::fs::read_to_string(workspace_root().join("docs/ARCHITECTURE.md"))
        .expect("docs/ARCHITECTURE.md is readable");
    let documented = documented_edges(&doc).unwrap_or_else(|e| panic!("{e}"));
    let real = metadata_edges(&cargo_metadata());
    assert!(
        real.len() >= 10,
        "cargo metadata listed only {} workspace crates",
        real.len()
    );
    let problems = compare(&real, &documented);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

const MAP: &str = "# x\n\n## Crate dependencies\n\n| crate | depends on |\n|---|---|\n\
| `a` | — |\n| `b` | `a` |\n\n## Next\n| `c` | `b` |\n";

fn graph(rows: &[(&str, &[&str])]) -> Edges {
    rows.iter()
        .map(|(k, ds)| (k.to_string(), ds.iter().map(|d| d.to_string()).collect()))
        .collect()
}

#[test]
fn the_map_is_read_from_its_own_section_only() {
    let documented = documented_edges(MAP).expect("table parses");
    assert_eq!(documented, graph(&[("a", &[]), ("b", &["a"])]));
}

#[test]
fn a_new_edge_the_map_does_not_list_is_reported() {
    let documented = documented_edges(MAP).expect("table parses");
    let real = graph(&[("a", &["b"]), ("b", &["a"])]);
    let problems = compare(&real, &documented);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].starts_with("a depends on b"), "{problems:?}");
}

#[test]
fn stale_lines_and_unlisted_crates_are_reported() {
    let documented = documented_edges(MAP).expect("table parses");
    let real = graph(&[("a", &[]), ("b", &[]), ("z", &[])]);
    let problems = compare(&real, &documented);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("lists b -> a")));
    assert!(problems.iter().any(|p| p.contains("crate z has no row")));
}

#[test]
fn a_map_without_the_section_is_an_error() {
    assert!(documented_edges("# x\n## Code map\n| `a` | `b` |\n").is_err());
}

#[test]
fn dev_dependencies_and_outside_crates_are_not_edges() {
    let metadata: Value = serde_json::json!({
        "packages": [
            {"name": "a", "dependencies": [
                {"name": "b", "kind": null},
                {"name": "b2", "kind": null},
                {"name": "c", "kind": "dev"}
            ]},
            {"name": "b", "dependencies": [{"name": "a", "kind": "build"}]},
            {"name": "c", "dependencies": []}
        ]
    });
    let edges = metadata_edges(&metadata);
    assert_eq!(edges, graph(&[("a", &["b"]), ("b", &["a"]), ("c", &[])]));
}
