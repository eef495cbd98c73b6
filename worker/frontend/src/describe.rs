//! BuildKit's `frontend.subrequests.describe` request (`buildx build
//! --call=subrequests.describe`): the subrequests this frontend answers,
//! with their definitions as BuildKit's Dockerfile frontend lists them
//! (outline, targets and describe itself; BuildKit leaves its lint out of
//! the list too), as `result.json` (Go's indented JSON) and `result.txt`
//! (its table).

use serde::Serialize;
use std::collections::BTreeMap;

/// The request's `requestid`.
pub const DESCRIBE_REQUEST: &str = "frontend.subrequests.describe";
/// Its `version`.
pub const DESCRIBE_VERSION: &str = "1.0.0";

/// One named option, input or metadata key of a subrequest.
#[derive(Serialize)]
struct Named {
    name: &'static str,
    description: &'static str,
}

/// A subrequest's definition (BuildKit's `subrequests.Request`; a field
/// Go leaves nil is `null`).
#[derive(Serialize)]
struct Request {
    name: &'static str,
    version: &'static str,
    r#type: &'static str,
    description: &'static str,
    opts: Option<Vec<Named>>,
    inputs: Option<Vec<Named>>,
    metadata: Option<Vec<Named>>,
    refs: Option<Vec<Named>>,
}

fn metadata() -> Option<Vec<Named>> {
    Some(vec![
        Named {
            name: "result.json",
            description: "",
        },
        Named {
            name: "result.txt",
            description: "",
        },
    ])
}

fn definitions() -> Vec<Request> {
    vec![
        Request {
            name: crate::outline::OUTLINE_REQUEST,
            version: crate::outline::OUTLINE_VERSION,
            r#type: "rpc",
            description: "List all parameters current build target supports",
            opts: Some(vec![Named {
                name: "target",
                description: "Target build stage",
            }]),
            inputs: None,
            metadata: metadata(),
            refs: None,
        },
        Request {
            name: crate::targets::TARGETS_REQUEST,
            version: crate::targets::TARGETS_VERSION,
            r#type: "rpc",
            description: "List all targets current build supports",
            opts: Some(Vec::new()),
            inputs: None,
            metadata: metadata(),
            refs: None,
        },
        Request {
            name: DESCRIBE_REQUEST,
            version: DESCRIBE_VERSION,
            r#type: "rpc",
            description: "List available subrequest types",
            opts: None,
            inputs: None,
            metadata: metadata(),
            refs: None,
        },
    ]
}

/// The answer's metadata ([`crate::check::answer_metadata`]): the list as
/// JSON and as BuildKit's table (Go's tabwriter, one space of padding).
pub fn answer() -> BTreeMap<String, String> {
    let all = definitions();
    let json = serde_json::to_string_pretty(&all).unwrap_or_else(|_| "[]".into());
    let rows: Vec<[&str; 3]> = std::iter::once(["NAME", "VERSION", "DESCRIPTION"])
        .chain(all.iter().map(|r| {
            [
                r.name.strip_prefix("frontend.").unwrap_or(r.name),
                r.version,
                r.description,
            ]
        }))
        .collect();
    let width = |i: usize| rows.iter().map(|r| r[i].len()).max().unwrap_or(0) + 1;
    let (name, version) = (width(0), width(1));
    let text: String = rows
        .iter()
        .map(|[n, v, d]| format!("{n:<name$}{v:<version$}{d}\n"))
        .collect();
    crate::check::answer_metadata(json, text, DESCRIBE_VERSION, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What BuildKit 73ed6825c's Dockerfile frontend answers (its
    /// `MarshalIndent` and `PrintDescribe`).
    #[test]
    fn the_answer_is_buildkits() {
        let a = answer();
        assert_eq!(
            a["result.txt"],
            "NAME                 VERSION DESCRIPTION\n\
             outline              1.0.0   List all parameters current build target supports\n\
             targets              1.0.0   List all targets current build supports\n\
             subrequests.describe 1.0.0   List available subrequest types\n"
        );
        let json: serde_json::Value = serde_json::from_str(&a["result.json"]).expect("JSON");
        assert_eq!(json[0]["name"], "frontend.outline");
        assert_eq!(json[0]["opts"][0]["name"], "target");
        assert_eq!(json[1]["opts"], serde_json::json!([]));
        assert_eq!(json[2]["opts"], serde_json::Value::Null);
        assert_eq!(json[2]["inputs"], serde_json::Value::Null);
        assert_eq!(
            json[2]["metadata"],
            serde_json::json!([
                {"name": "result.json", "description": ""},
                {"name": "result.txt", "description": ""}
            ])
        );
        assert!(a["result.json"].starts_with("[\n  {\n    \"name\": \"frontend.outline\",\n    \"version\": \"1.0.0\",\n    \"type\": \"rpc\","));
        assert_eq!(a["version"], "1.0.0");
    }
}
