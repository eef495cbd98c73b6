//! BuildKit's typed error details on a failed build's gRPC status, so that
//! buildctl and buildx print the failing step's source with `>>>` as they
//! do for buildkitd.
//!
//! BuildKit's server packs them into the status' `google.rpc.Status`
//! (trailer `grpc-status-details-bin`) as `Any` values whose type URL is
//! `github.com/moby/buildkit/errdefs.<Message>+json` and whose value is the
//! message as Go's `encoding/json` writes the generated struct: the proto
//! field names, `bytes` as base64, zero values and empty lists left out.
//! Clients decode a detail by its type URL and wrap the error with it;
//! buildctl then prints every `errdefs.Source` after the message.
//!
//! kilnd attaches, for the step that failed, an `errdefs.Vertex` (its
//! digest) and an `errdefs.Source` per source location of that step: from
//! the Dockerfile (the built-in frontend knows each step's line) or from
//! the source map (`Definition.source`) of an LLB definition a client
//! sent.

use kiln_proto::errdefs;
use kiln_proto::llb;
use kiln_solver::Graph;
use prost::Message;
use serde_json::{json, Map, Value};

/// The type URL of an `errdefs.Source` detail.
pub const SOURCE_TYPE_URL: &str = "github.com/moby/buildkit/errdefs.Source+json";
/// The type URL of an `errdefs.Vertex` detail.
pub const VERTEX_TYPE_URL: &str = "github.com/moby/buildkit/errdefs.Vertex+json";

/// Where each vertex of a graph came from: source files, and per vertex
/// the (file index, ranges) of its locations.
#[derive(Debug, Default)]
pub struct SourceMap {
    infos: Vec<llb::SourceInfo>,
    by_vertex: Vec<Vec<(usize, Vec<llb::Range>)>>,
}

impl SourceMap {
    /// The Dockerfile frontend's map: `info` is the Dockerfile, each vertex
    /// with a location points at its instruction's lines.
    pub fn dockerfile(info: llb::SourceInfo, graph: &Graph) -> SourceMap {
        let by_vertex = graph
            .vertices
            .iter()
            .map(|v| {
                v.location
                    .as_ref()
                    .and_then(range_of)
                    .map(|r| (0, vec![r]))
                    .into_iter()
                    .collect()
            })
            .collect();
        SourceMap {
            infos: vec![info],
            by_vertex,
        }
    }

    /// An LLB definition's own source map; `digests[i]` is vertex i's op
    /// digest, the key of `Definition.source.locations`.
    pub fn definition(def: &llb::Definition, digests: &[kiln_solver::Digest]) -> SourceMap {
        let Some(source) = &def.source else {
            return SourceMap::default();
        };
        let by_vertex = digests
            .iter()
            .map(|d| {
                source
                    .locations
                    .get(&d.to_string())
                    .map(|ls| {
                        ls.locations
                            .iter()
                            .filter_map(|l| {
                                let i = usize::try_from(l.source_index).ok()?;
                                (i < source.infos.len()).then(|| (i, l.ranges.clone()))
                            })
                            .collect()
                    })
                    .unwrap_or_default()
            })
            .collect();
        SourceMap {
            infos: source.infos.clone(),
            by_vertex,
        }
    }

    /// The `errdefs.Source` details of vertex `v`.
    pub fn sources(&self, v: usize) -> Vec<errdefs::Source> {
        self.by_vertex
            .get(v)
            .into_iter()
            .flatten()
            .filter_map(|(i, ranges)| {
                Some(errdefs::Source {
                    info: Some(self.infos.get(*i)?.clone()),
                    ranges: ranges.clone(),
                })
            })
            .collect()
    }
}

/// The lines of `l` as BuildKit's Dockerfile frontend gives an
/// instruction's place (`node.Location()`: its first and last line);
/// `None` without a line.
pub fn range_of(l: &kiln_solver::SourceLocation) -> Option<llb::Range> {
    let line = i32::try_from(l.line).ok().filter(|line| *line > 0)?;
    let end = i32::try_from(l.end_line).unwrap_or(line).max(line);
    Some(llb::Range {
        start: Some(llb::Position { line, character: 0 }),
        end: Some(llb::Position {
            line: end,
            character: 0,
        }),
    })
}

/// `message` without the `FILE:LINE: ` that names one of `sources`
/// (clients print the source itself, with its name and line, as they do
/// for BuildKit, whose messages never carry it).
fn without_location<'a>(message: &'a str, sources: &[errdefs::Source]) -> &'a str {
    sources
        .iter()
        .filter_map(|s| Some((&s.info.as_ref()?.filename, s.ranges.first()?.start?.line)))
        .find_map(|(file, line)| message.strip_prefix(&format!("{file}:{line}: ")))
        .unwrap_or(message)
}

/// `status` with the failed vertex and its sources as BuildKit's typed
/// details (replacing any details it had); a step's message no longer
/// names the source location the details carry.
pub fn with_details(
    status: tonic::Status,
    vertex: Option<&errdefs::Vertex>,
    sources: &[errdefs::Source],
) -> tonic::Status {
    if status.code() == tonic::Code::Ok || (vertex.is_none() && sources.is_empty()) {
        return status;
    }
    // A step's error (its vertex's source) or a Dockerfile's (its line):
    // the detail says where, the message is BuildKit's text alone.
    let message = without_location(status.message(), sources);
    let mut details = Vec::new();
    if let Some(v) = vertex {
        details.push(prost_types::Any {
            type_url: VERTEX_TYPE_URL.into(),
            value: vertex_json(v).to_string().into_bytes(),
        });
    }
    for s in sources {
        details.push(prost_types::Any {
            type_url: SOURCE_TYPE_URL.into(),
            value: source_json(s).to_string().into_bytes(),
        });
    }
    let rpc = kiln_proto::rpc::Status {
        code: status.code() as i32,
        message: message.to_string(),
        details,
    };
    tonic::Status::with_details(status.code(), message, rpc.encode_to_vec().into())
}

/// A failed build's answer as BuildKit gives it: BuildKit's build errors
/// are plain Go errors in which `grpcerrors.Code` finds no code, so they
/// travel as `Unknown`, which buildctl and buildx print as the message
/// alone (`failed to solve: failed to read dockerfile: open nope: ...`);
/// any other code is printed in front of it (`NotFound: failed to
/// read ...`). Only what concerns the call, not the build, keeps its
/// code: a cancellation, a deadline, the caller's identity or rights, a
/// tenant at its build limit. The typed details keep the same code, as
/// gRPC clients require.
pub fn build_failure(status: tonic::Status) -> tonic::Status {
    use tonic::Code;
    if matches!(
        status.code(),
        Code::Ok
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::ResourceExhausted
    ) {
        return status;
    }
    if status.details().is_empty() {
        return tonic::Status::new(Code::Unknown, status.message());
    }
    match kiln_proto::rpc::Status::decode(status.details()) {
        Ok(mut rpc) => {
            rpc.code = Code::Unknown as i32;
            tonic::Status::with_details(Code::Unknown, status.message(), rpc.encode_to_vec().into())
        }
        Err(_) => tonic::Status::new(Code::Unknown, status.message()),
    }
}

/// `status` with the Dockerfile `data` (named `filename`) and the
/// instruction at `line` (all its lines) as an `errdefs.Source` detail.
/// Without a line (an error about the whole file) there is no detail, and
/// the message is BuildKit's text alone, without kiln's `FILE: `.
pub fn with_line(
    status: tonic::Status,
    filename: &str,
    data: &[u8],
    line: Option<usize>,
) -> tonic::Status {
    let Some(line) = line.and_then(|l| i32::try_from(l).ok()).filter(|l| *l > 0) else {
        return match status.message().strip_prefix(&format!("{filename}: ")) {
            Some(text) if status.details().is_empty() => tonic::Status::new(status.code(), text),
            _ => status,
        };
    };
    let first = usize::try_from(line).unwrap_or(0);
    let (_, end) =
        kiln_dockerfile::snippet::instruction_lines(&String::from_utf8_lossy(data), first);
    let source = errdefs::Source {
        info: Some(llb::SourceInfo {
            filename: filename.to_string(),
            data: data.to_vec(),
            definition: None,
            language: "Dockerfile".into(),
        }),
        ranges: vec![llb::Range {
            start: Some(llb::Position { line, character: 0 }),
            end: Some(llb::Position {
                line: i32::try_from(end).unwrap_or(line),
                character: 0,
            }),
        }],
    };
    with_details(status, None, &[source])
}

/// Lines kept on each side of a detail's ranges: buildx and buildctl
/// print at most four around them.
const CONTEXT_LINES: i32 = 5;
/// The most bytes kept of one line of a detail's source.
const MAX_LINE: usize = 512;

/// A source's data as a detail carries it. Details ride in an HTTP/2
/// trailer, which clients cap (tonic's at 16 KiB): a whole large
/// Dockerfile (or one 64 KiB line) would make the error itself fail as an
/// h2 protocol error. The lines the client prints are kept (each cut at
/// [`MAX_LINE`] bytes); the others are emptied, so line numbers stay.
fn detail_data(data: &[u8], ranges: &[llb::Range]) -> Vec<u8> {
    let lines = |r: &llb::Range| {
        let start = r.start.map_or(0, |p| p.line);
        let end = r.end.map_or(start, |p| p.line).max(start);
        (start - CONTEXT_LINES)..=(end + CONTEXT_LINES)
    };
    let mut out = Vec::with_capacity(data.len().min(16 << 10));
    for (i, line) in data.split(|b| *b == b'\n').enumerate() {
        let n = i32::try_from(i + 1).unwrap_or(i32::MAX);
        if i > 0 {
            out.push(b'\n');
        }
        if ranges.iter().any(|r| lines(r).contains(&n)) {
            out.extend_from_slice(&line[..line.len().min(MAX_LINE)]);
        }
    }
    out
}

/// An `errdefs.Vertex` as Go's JSON.
fn vertex_json(v: &errdefs::Vertex) -> Value {
    let mut m = Map::new();
    if !v.digest.is_empty() {
        m.insert("digest".into(), json!(v.digest));
    }
    Value::Object(m)
}

/// An `errdefs.Source` as Go's JSON (the definition of an LLB source file
/// is not sent: clients print the data only).
pub fn source_json(s: &errdefs::Source) -> Value {
    use base64::Engine as _;
    let mut m = Map::new();
    if let Some(info) = &s.info {
        let mut i = Map::new();
        if !info.filename.is_empty() {
            i.insert("filename".into(), json!(info.filename));
        }
        if !info.data.is_empty() {
            i.insert(
                "data".into(),
                json!(base64::engine::general_purpose::STANDARD
                    .encode(detail_data(&info.data, &s.ranges))),
            );
        }
        if !info.language.is_empty() {
            i.insert("language".into(), json!(info.language));
        }
        m.insert("info".into(), Value::Object(i));
    }
    if !s.ranges.is_empty() {
        let ranges: Vec<Value> = s
            .ranges
            .iter()
            .map(|r| {
                let mut o = Map::new();
                if let Some(p) = &r.start {
                    o.insert("start".into(), position_json(p));
                }
                if let Some(p) = &r.end {
                    o.insert("end".into(), position_json(p));
                }
                Value::Object(o)
            })
            .collect();
        m.insert("ranges".into(), Value::Array(ranges));
    }
    Value::Object(m)
}

fn position_json(p: &llb::Position) -> Value {
    let mut o = Map::new();
    if p.line != 0 {
        o.insert("line".into(), json!(p.line));
    }
    if p.character != 0 {
        o.insert("character".into(), json!(p.character));
    }
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_solver::{Op, SourceLocation, SourceOp, Vertex};

    fn vertex(line: Option<usize>) -> Vertex {
        Vertex {
            op: Op::Source(SourceOp {
                identifier: "docker-image://busybox".into(),
                attrs: Default::default(),
                platform: None,
            }),
            inputs: Vec::new(),
            name: "x".into(),
            location: line.map(|line| SourceLocation {
                file: "Dockerfile".into(),
                line,
                end_line: line,
            }),
            ignore_cache: false,
        }
    }

    fn dockerfile() -> llb::SourceInfo {
        llb::SourceInfo {
            filename: "Dockerfile".into(),
            data: b"FROM busybox\nRUN exit 3\n".to_vec(),
            definition: None,
            language: "Dockerfile".into(),
        }
    }

    #[test]
    fn a_dockerfile_step_points_at_its_line() {
        let graph = Graph {
            vertices: vec![vertex(None), vertex(Some(2))],
        };
        let map = SourceMap::dockerfile(dockerfile(), &graph);
        assert!(map.sources(0).is_empty(), "no location, no source");
        let s = map.sources(1);
        assert_eq!(s.len(), 1);
        assert_eq!(
            source_json(&s[0]),
            json!({
                "info": {
                    "filename": "Dockerfile",
                    "data": "RlJPTSBidXN5Ym94ClJVTiBleGl0IDMK",
                    "language": "Dockerfile",
                },
                "ranges": [{"start": {"line": 2}, "end": {"line": 2}}],
            })
        );
    }

    #[test]
    fn the_details_ride_in_the_status() {
        let s = SourceMap::dockerfile(
            dockerfile(),
            &Graph {
                vertices: vec![vertex(Some(2))],
            },
        )
        .sources(0);
        let st = with_details(
            tonic::Status::failed_precondition("Dockerfile:2: process failed"),
            Some(&errdefs::Vertex {
                digest: "sha256:ab".into(),
            }),
            &s,
        );
        assert_eq!(st.code(), tonic::Code::FailedPrecondition);
        // The snippet the client prints from the details names the line.
        assert_eq!(st.message(), "process failed");
        let rpc = kiln_proto::rpc::Status::decode(st.details()).expect("google.rpc.Status");
        assert_eq!(rpc.code, tonic::Code::FailedPrecondition as i32);
        let urls: Vec<&str> = rpc.details.iter().map(|d| d.type_url.as_str()).collect();
        assert_eq!(urls, vec![VERTEX_TYPE_URL, SOURCE_TYPE_URL]);
        let v: Value = serde_json::from_slice(&rpc.details[0].value).expect("json");
        assert_eq!(v, json!({"digest": "sha256:ab"}));
    }

    #[test]
    fn a_detail_keeps_the_lines_clients_print_and_stays_small() {
        let at = |line| llb::Range {
            start: Some(llb::Position { line, character: 0 }),
            end: Some(llb::Position { line, character: 0 }),
        };
        let mut text: Vec<String> = (1..=40).map(|n| format!("line {n}")).collect();
        text[19] = "x".repeat(100_000);
        let data = text.join("\n").into_bytes();
        let kept = String::from_utf8(detail_data(&data, &[at(20)])).expect("utf8");
        let lines: Vec<&str> = kept.split('\n').collect();
        assert_eq!(lines.len(), 40, "line numbers stay");
        assert_eq!(lines[14], "line 15");
        assert_eq!(lines[19].len(), MAX_LINE);
        assert_eq!(lines[24], "line 25");
        assert_eq!((lines[13], lines[25]), ("", ""));
        assert!(kept.len() < 2_000, "{}", kept.len());
        let small = b"FROM busybox\nRUN exit 3\n";
        assert_eq!(detail_data(small, &[at(2)]), small.to_vec());
    }

    #[test]
    fn a_frontend_error_names_its_line() {
        let st = with_line(
            tonic::Status::invalid_argument(
                "Dockerfile:2: dockerfile parse error on line 2: unknown instruction: RUNN",
            ),
            "Dockerfile",
            b"FROM busybox\nRUNN x\n",
            Some(2),
        );
        // What BuildKit says: the location rides in the details.
        assert_eq!(
            st.message(),
            "dockerfile parse error on line 2: unknown instruction: RUNN"
        );
        let rpc = kiln_proto::rpc::Status::decode(st.details()).expect("google.rpc.Status");
        assert_eq!(rpc.details.len(), 1);
        assert_eq!(rpc.details[0].type_url, SOURCE_TYPE_URL);
        let v: Value = serde_json::from_slice(&rpc.details[0].value).expect("json");
        assert_eq!(
            v["ranges"],
            json!([{"start": {"line": 2}, "end": {"line": 2}}])
        );
        let none = with_line(tonic::Status::internal("x"), "Dockerfile", b"", None);
        assert!(none.details().is_empty());
        let whole = with_line(
            tonic::Status::unknown("Dockerfile: file with no instructions"),
            "Dockerfile",
            b"# only a comment\n",
            None,
        );
        assert_eq!(whole.message(), "file with no instructions");
        assert_eq!(whole.code(), tonic::Code::Unknown);
    }

    #[test]
    fn an_llb_source_map_is_followed_by_digest() {
        let d0 = kiln_solver::Digest::of(b"op0");
        let d1 = kiln_solver::Digest::of(b"op1");
        let range = llb::Range {
            start: Some(llb::Position {
                line: 4,
                character: 1,
            }),
            end: Some(llb::Position {
                line: 5,
                character: 0,
            }),
        };
        let def = llb::Definition {
            source: Some(llb::Source {
                locations: [(
                    d1.to_string(),
                    llb::Locations {
                        locations: vec![
                            llb::Location {
                                source_index: 0,
                                ranges: vec![range],
                            },
                            // Out of range: skipped, not a panic.
                            llb::Location {
                                source_index: 9,
                                ranges: Vec::new(),
                            },
                        ],
                    },
                )]
                .into_iter()
                .collect(),
                infos: vec![dockerfile()],
            }),
            ..Default::default()
        };
        let map = SourceMap::definition(&def, &[d0, d1]);
        assert!(map.sources(0).is_empty());
        let s = map.sources(1);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].ranges, vec![range]);
        assert_eq!(
            source_json(&s[0])["ranges"],
            json!([{"start": {"line": 4, "character": 1}, "end": {"line": 5}}])
        );
    }

    /// A failed build answers `Unknown`, so clients print BuildKit's text
    /// without a code in front; its details say the same code. What
    /// concerns the call keeps its code.
    #[test]
    fn a_build_failure_is_unknown_as_buildkits_are() {
        let st = build_failure(tonic::Status::not_found(
            "failed to read dockerfile: open nope: no such file or directory",
        ));
        assert_eq!(st.code(), tonic::Code::Unknown);
        assert_eq!(
            st.message(),
            "failed to read dockerfile: open nope: no such file or directory"
        );
        let located = with_line(
            tonic::Status::invalid_argument("Dockerfile:1: unknown instruction: FROOM"),
            "Dockerfile",
            b"FROOM x\n",
            Some(1),
        );
        let st = build_failure(located);
        assert_eq!(st.code(), tonic::Code::Unknown);
        let rpc = kiln_proto::rpc::Status::decode(st.details()).expect("details");
        assert_eq!(rpc.code, tonic::Code::Unknown as i32);
        assert_eq!(rpc.details.len(), 1, "the source detail stays");
        for code in [
            tonic::Code::Cancelled,
            tonic::Code::PermissionDenied,
            tonic::Code::ResourceExhausted,
        ] {
            assert_eq!(build_failure(tonic::Status::new(code, "x")).code(), code);
        }
    }
}
