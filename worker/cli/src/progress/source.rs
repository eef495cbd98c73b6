//! The Dockerfile snippet buildx prints under a failed build
//! (`Dockerfile:3`, the lines around the failing ones numbered, `>>>` on
//! them), and where it comes from: BuildKit's `errdefs.Source` in a gRPC
//! status's details (remote builds), or the failing step's source location
//! (embedded builds).

use super::model::{range, Range, Source};
use prost::Message;
use std::io::Write;

/// `errdefs.Source` as BuildKit's protobuf encodes it (older daemons).
#[derive(Clone, PartialEq, prost::Message)]
struct SourceProto {
    #[prost(message, optional, tag = "1")]
    info: Option<kiln_proto::llb::SourceInfo>,
    #[prost(message, repeated, tag = "2")]
    ranges: Vec<kiln_proto::llb::Range>,
}

/// `errdefs.Source` as BuildKit's `grpcerrors` sends it today: Go's JSON
/// of the generated struct (`info` with base64 `data`, `ranges` of
/// `start`/`end` positions without zero fields), under
/// `…/errdefs.Source+json`.
fn from_json(value: &[u8]) -> Option<Source> {
    use base64::Engine as _;
    use serde_json::Value;
    let v: Value = serde_json::from_slice(value).ok()?;
    let info = v.get("info")?;
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let pos = |p: Option<&Value>| {
        let n = |k: &str| {
            p.and_then(|p| p.get(k))
                .and_then(Value::as_i64)
                .and_then(|n| i32::try_from(n).ok())
                .unwrap_or(0)
        };
        (n("line"), n("character"))
    };
    Some(Source {
        filename: text(info, "filename"),
        data: base64::engine::general_purpose::STANDARD
            .decode(text(info, "data"))
            .ok()?,
        language: text(info, "language"),
        ranges: v
            .get("ranges")
            .and_then(Value::as_array)
            .map(|rs| {
                rs.iter()
                    .map(|r| Range {
                        start: pos(r.get("start")),
                        end: pos(r.get("end")),
                    })
                    .collect()
            })
            .unwrap_or_default(),
    })
}

fn from_proto(value: &[u8]) -> Option<Source> {
    let s = SourceProto::decode(value).ok()?;
    let info = s.info?;
    Some(Source {
        filename: info.filename,
        data: info.data,
        language: info.language,
        ranges: s.ranges.iter().map(range).collect(),
    })
}

/// The sources a gRPC error carries in its details (`grpc-status-details-bin`,
/// a `google.rpc.Status`), in the order BuildKit attached them.
pub fn from_status(status: &tonic::Status) -> Vec<Source> {
    let Ok(st) = kiln_proto::rpc::Status::decode(status.details()) else {
        return Vec::new();
    };
    st.details
        .iter()
        .filter_map(|any| {
            let url = any.type_url.as_str();
            if url.ends_with("errdefs.Source+json") {
                from_json(&any.value)
            } else if url.ends_with("/errdefs.Source") || url == "errdefs.Source" {
                from_proto(&any.value)
            } else {
                None
            }
        })
        .collect()
}

/// The snippet for `src`, as BuildKit's `Source.Print`: the file and first
/// failing line, then the failing lines with up to 2 lines of context on
/// each side (4 for a single line, taken where the file has them), each
/// numbered and the failing ones marked `>>>`, between rules.
pub fn print(src: &Source, w: &mut dyn Write) {
    let text = String::from_utf8_lossy(&src.data);
    let ranges: Vec<(i64, i64)> = src
        .ranges
        .iter()
        .map(|r| (i64::from(r.start.0), i64::from(r.end.0)))
        .collect();
    let _ = write!(
        w,
        "{}",
        kiln_dockerfile::snippet::snippet(&src.filename, &text, &ranges)
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCKERFILE: &str =
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\",\"sh\",\"-c\",\"exit 3\"]\nCOPY b /b\n";

    fn source(lines: (i32, i32)) -> Source {
        Source {
            filename: "Dockerfile.fail".into(),
            data: DOCKERFILE.as_bytes().to_vec(),
            language: "Dockerfile".into(),
            ranges: vec![Range {
                start: (lines.0, 0),
                end: (lines.1, 0),
            }],
        }
    }

    fn printed(s: &Source) -> String {
        let mut out = Vec::new();
        print(s, &mut out);
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn the_snippet_is_buildkits() {
        // As buildx printed it for this file against BuildKit 73ed6825c.
        assert_eq!(
            printed(&source((3, 3))),
            "Dockerfile.fail:3\n--------------------\n   1 |     FROM scratch\n   2 |     COPY busybox /bin/busybox\n   3 | >>> RUN [\"/bin/busybox\",\"sh\",\"-c\",\"exit 3\"]\n   4 |     COPY b /b\n   5 |     \n--------------------\n"
        );
        let two = printed(&source((2, 3)));
        assert!(two.starts_with("Dockerfile.fail:2\n"), "{two}");
        assert!(
            two.contains("   2 | >>> COPY") && two.contains("   3 | >>> RUN"),
            "{two}"
        );
        assert!(printed(&source((9, 9))).is_empty());
    }

    fn status_with(any: prost_types::Any) -> tonic::Status {
        let st = kiln_proto::rpc::Status {
            code: 2,
            message: "process did not complete successfully".into(),
            details: vec![any],
        };
        tonic::Status::with_details(
            tonic::Code::Unknown,
            "process did not complete successfully",
            st.encode_to_vec().into(),
        )
    }

    #[test]
    fn buildkits_json_source_detail_decodes() {
        // What BuildKit's grpcerrors attaches: Go's JSON of errdefs.Source
        // (SourceInfo's data as base64, positions without zero fields).
        let value = br#"{"info":{"filename":"Dockerfile.fail","data":"RlJPTSBzY3JhdGNoCkNPUFkgYnVzeWJveCAvYmluL2J1c3lib3gKUlVOIFsiL2Jpbi9idXN5Ym94Iiwic2giLCItYyIsImV4aXQgMyJdCkNPUFkgYiAvYgo=","language":"Dockerfile"},"ranges":[{"start":{"line":3},"end":{"line":3}}]}"#;
        let status = status_with(prost_types::Any {
            type_url: "github.com/moby/buildkit/errdefs.Source+json".into(),
            value: value.to_vec(),
        });
        let got = from_status(&status);
        assert_eq!(got, vec![source((3, 3))]);
    }

    #[test]
    fn protobuf_source_detail_decodes_and_others_are_skipped() {
        let proto = SourceProto {
            info: Some(kiln_proto::llb::SourceInfo {
                filename: "Dockerfile.fail".into(),
                data: DOCKERFILE.as_bytes().to_vec(),
                definition: None,
                language: "Dockerfile".into(),
            }),
            ranges: vec![kiln_proto::llb::Range {
                start: Some(kiln_proto::llb::Position {
                    line: 3,
                    character: 0,
                }),
                end: Some(kiln_proto::llb::Position {
                    line: 3,
                    character: 0,
                }),
            }],
        };
        let status = status_with(prost_types::Any {
            type_url: "type.googleapis.com/errdefs.Source".into(),
            value: proto.encode_to_vec(),
        });
        assert_eq!(from_status(&status), vec![source((3, 3))]);
        let other = status_with(prost_types::Any {
            type_url: "github.com/moby/buildkit/errdefs.Vertex+json".into(),
            value: br#"{"digest":"sha256:a"}"#.to_vec(),
        });
        assert!(from_status(&other).is_empty());
    }
}
