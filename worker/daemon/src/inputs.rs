//! Frontend inputs of a `dockerfile.v0` solve (`SolveRequest.FrontendInputs`):
//! LLB definitions the client sends along, which named contexts read as
//! `context:NAME=input:X` (buildx bake turns a `target:` context into
//! one, with the target's image config in `input-metadata:X`). The
//! frontend plans with a placeholder source op `input://X` for each
//! (`kiln_dockerfile::INPUT_SCHEME`); here the placeholders are replaced
//! by the inputs' own vertices, as BuildKit's frontend reads the input's
//! state in their place.

use kiln_proto::llb;
use kiln_solver::{Graph, Op, VertexId};
use std::collections::HashMap;
use tonic::Status;

/// Every input the named contexts read (`context:NAME=input:X` in the
/// frontend attributes) must have been sent: BuildKit's error otherwise,
/// naming the context as the client did, before anything is planned.
pub fn check(
    attrs: &HashMap<String, String>,
    inputs: &HashMap<String, llb::Definition>,
) -> Result<(), Status> {
    let mut read: Vec<(&str, &str)> = attrs
        .iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("context:")?, v.strip_prefix("input:")?)))
        .collect();
    read.sort_unstable();
    for (context, input) in read {
        if !inputs.contains_key(input) {
            return Err(Status::invalid_argument(format!(
                "invalid input {input} for {context}"
            )));
        }
    }
    Ok(())
}

/// Replaces each `input://X` placeholder of `graph` with the vertices of
/// input `X` (added once, however many placeholders name it); returns the
/// new graph and where each vertex of the old one went, so callers can
/// move their results.
pub fn splice(
    graph: Graph,
    inputs: &HashMap<String, llb::Definition>,
) -> Result<(Graph, Vec<VertexId>), Status> {
    let mut out = Graph::default();
    let mut moved: Vec<VertexId> = Vec::with_capacity(graph.vertices.len());
    let mut added: HashMap<String, VertexId> = HashMap::new();
    let graph_err = |e: kiln_solver::SolveError| Status::internal(e.to_string());
    for mut v in graph.vertices {
        let input = match &v.op {
            Op::Source(s) => s.identifier.strip_prefix(kiln_dockerfile::INPUT_SCHEME),
            _ => None,
        };
        if let Some(name) = input {
            if let Some(at) = added.get(name) {
                moved.push(*at);
                continue;
            }
            let def = inputs
                .get(name)
                .ok_or_else(|| Status::invalid_argument(format!("invalid input {name}")))?;
            let t = crate::llb::translate(def)
                .map_err(|e| Status::invalid_argument(format!("frontend input {name}: {e}")))?;
            let result = t.result.ok_or_else(|| {
                Status::invalid_argument(format!(
                    "frontend input {name}: the definition has no result"
                ))
            })?;
            let offset = out.vertices.len();
            for mut iv in t.graph.vertices {
                for e in &mut iv.inputs {
                    e.vertex = VertexId(e.vertex.0 + offset);
                }
                out.add(iv).map_err(graph_err)?;
            }
            let at = VertexId(result.0 + offset);
            added.insert(name.to_string(), at);
            moved.push(at);
            continue;
        }
        for e in &mut v.inputs {
            e.vertex = moved[e.vertex.0];
        }
        moved.push(out.add(v).map_err(graph_err)?);
    }
    Ok((out, moved))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_solver::{Edge, SourceOp, Vertex};
    use prost::Message;

    fn source(identifier: &str) -> Op {
        Op::Source(SourceOp {
            identifier: identifier.into(),
            attrs: Default::default(),
            platform: None,
        })
    }

    fn vertex(op: Op, inputs: &[usize]) -> Vertex {
        Vertex {
            op,
            inputs: inputs
                .iter()
                .map(|i| Edge {
                    vertex: VertexId(*i),
                    output: 0,
                })
                .collect(),
            name: String::new(),
            location: None,
            ignore_cache: false,
        }
    }

    /// A definition of one image source.
    fn image_definition() -> llb::Definition {
        let op = llb::Op {
            op: Some(llb::op::Op::Source(llb::SourceOp {
                identifier: "docker-image://docker.io/library/busybox:latest".into(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let bytes = op.encode_to_vec();
        let digest = kiln_solver::Digest::of(&bytes).to_string();
        let last = llb::Op {
            inputs: vec![llb::Input { digest, index: 0 }],
            ..Default::default()
        };
        llb::Definition {
            def: vec![bytes, last.encode_to_vec()],
            ..Default::default()
        }
    }

    #[test]
    fn placeholders_become_the_inputs_vertices_once() {
        let mut g = Graph::default();
        let ctx = g.add(vertex(source("local://context"), &[])).expect("add");
        let p1 = g.add(vertex(source("input://base"), &[])).expect("add");
        let merge = g
            .add(vertex(
                Op::Merge(kiln_solver::MergeOp { inputs: vec![0, 1] }),
                &[p1.0, ctx.0],
            ))
            .expect("add");
        let p2 = g.add(vertex(source("input://base"), &[])).expect("add");
        let inputs = HashMap::from([("base".to_string(), image_definition())]);
        let (out, moved) = splice(g, &inputs).expect("spliced");
        assert_eq!(out.vertices.len(), 3, "{:?}", out.vertices);
        assert_eq!(moved[p1.0], moved[p2.0]);
        let Op::Source(s) = &out.vertex(moved[p1.0]).op else {
            panic!("the input's source");
        };
        assert_eq!(
            s.identifier,
            "docker-image://docker.io/library/busybox:latest"
        );
        let m = out.vertex(moved[merge.0]);
        assert_eq!(m.inputs[0].vertex, moved[p1.0]);
        assert_eq!(m.inputs[1].vertex, moved[ctx.0]);

        let mut g = Graph::default();
        g.add(vertex(source("input://other"), &[])).expect("add");
        let e = splice(g, &inputs).expect_err("no such input");
        assert_eq!(e.message(), "invalid input other");
    }
}
