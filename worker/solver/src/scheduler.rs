//! Runs the vertices a target needs, each once, as soon as its inputs are
//! ready, with bounded parallelism.

use crate::graph::{Graph, Vertex, VertexId};
use crate::{Result, SolveError};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Executes one vertex. Implemented by the engine over containerd, and by
/// fakes in tests.
pub trait OpRunner: Send + Sync + 'static {
    /// What a vertex output is (a snapshot reference, ...).
    type Ref: Clone + Send + Sync + 'static;
    type Error: std::error::Error + Send + Sync + 'static;

    /// Runs `vertex` on its inputs (in `vertex.inputs` order) and returns its
    /// outputs, indexed by output number. Must stop promptly when `cancel`
    /// fires, after cleaning up what it created.
    fn run(
        &self,
        id: VertexId,
        vertex: Vertex,
        inputs: Vec<Self::Ref>,
        cancel: CancellationToken,
    ) -> impl Future<Output = std::result::Result<Vec<Self::Ref>, Self::Error>> + Send;
}

/// A vertex that finished, with its outputs or its error.
type Finished<R> = (
    VertexId,
    std::result::Result<Vec<<R as OpRunner>::Ref>, <R as OpRunner>::Error>,
);

/// Solves `target` of `graph` with at most `parallelism` vertices running at
/// once and returns the target's outputs. On the first failure every running
/// vertex is cancelled and awaited before the error is returned.
pub async fn solve<R: OpRunner>(
    graph: &Graph,
    target: VertexId,
    runner: Arc<R>,
    parallelism: usize,
    cancel: CancellationToken,
) -> Result<Vec<R::Ref>> {
    let order = graph.needed_for(target);
    if order.is_empty() {
        return Err(SolveError::Empty);
    }
    let sem = Arc::new(Semaphore::new(parallelism.max(1)));
    let mut done: HashMap<VertexId, Vec<R::Ref>> = HashMap::new();
    let mut pending: Vec<VertexId> = order;
    let mut running: JoinSet<Finished<R>> = JoinSet::new();
    let mut first_error: Option<SolveError> = None;

    loop {
        if first_error.is_none() && !cancel.is_cancelled() {
            // Start every pending vertex whose inputs are all done.
            let mut i = 0;
            while i < pending.len() {
                let id = pending[i];
                let v = graph.vertex(id);
                if v.inputs.iter().all(|e| done.contains_key(&e.vertex)) {
                    pending.remove(i);
                    let mut inputs = Vec::with_capacity(v.inputs.len());
                    for e in &v.inputs {
                        let outs = &done[&e.vertex];
                        match outs.get(e.output) {
                            Some(r) => inputs.push(r.clone()),
                            None => {
                                return Err(SolveError::BadInput {
                                    vertex: id.0,
                                    input: e.vertex.0,
                                })
                            }
                        }
                    }
                    let runner = runner.clone();
                    let sem = sem.clone();
                    let vertex = v.clone();
                    let token = cancel.child_token();
                    running.spawn(async move {
                        let _permit = sem.acquire_owned().await;
                        (id, runner.run(id, vertex, inputs, token).await)
                    });
                } else {
                    i += 1;
                }
            }
        }
        let next = tokio::select! {
            r = running.join_next() => r,
            _ = cancel.cancelled(), if first_error.is_none() => {
                first_error = Some(SolveError::Cancelled);
                continue;
            }
        };
        match next {
            None => break,
            Some(Ok((id, Ok(outs)))) => {
                done.insert(id, outs);
            }
            Some(Ok((id, Err(e)))) => {
                if first_error.is_none() {
                    first_error = Some(SolveError::Op {
                        name: graph.vertex(id).name.clone(),
                        source: Box::new(e),
                    });
                    cancel.cancel();
                }
            }
            Some(Err(join)) => {
                if first_error.is_none() {
                    first_error = Some(SolveError::Op {
                        name: "scheduler".into(),
                        source: Box::new(join),
                    });
                    cancel.cancel();
                }
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    done.remove(&target).ok_or(SolveError::Empty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::*;
    use std::collections::BTreeMap;
    use std::sync::Mutex;

    #[derive(Debug, thiserror::Error)]
    #[error("fake failure")]
    struct FakeError;

    /// Records the order of runs; fails vertices whose name starts with "fail".
    struct Counting {
        runs: Mutex<Vec<String>>,
    }

    impl OpRunner for Counting {
        type Ref = String;
        type Error = FakeError;
        async fn run(
            &self,
            _id: VertexId,
            vertex: Vertex,
            inputs: Vec<String>,
            _cancel: CancellationToken,
        ) -> std::result::Result<Vec<String>, FakeError> {
            self.runs
                .lock()
                .expect("not poisoned")
                .push(vertex.name.clone());
            if vertex.name.starts_with("fail") {
                return Err(FakeError);
            }
            Ok(vec![format!("{}({})", vertex.name, inputs.join(","))])
        }
    }

    fn v(name: &str, inputs: &[VertexId]) -> Vertex {
        Vertex {
            op: Op::Merge(MergeOp {
                inputs: (0..inputs.len()).collect(),
            }),
            inputs: inputs
                .iter()
                .map(|&vertex| Edge { vertex, output: 0 })
                .collect(),
            name: name.into(),
            location: None,
            ignore_cache: false,
        }
    }

    #[tokio::test]
    async fn runs_needed_vertices_once_in_dependency_order() {
        let mut g = Graph::default();
        let a = g.add(v("a", &[])).expect("valid");
        let _unused = g.add(v("unused", &[])).expect("valid");
        let b = g.add(v("b", &[a])).expect("valid");
        let c = g.add(v("c", &[a, b])).expect("valid");
        let runner = Arc::new(Counting {
            runs: Mutex::new(vec![]),
        });
        let out = solve(&g, c, runner.clone(), 4, CancellationToken::new())
            .await
            .expect("solves");
        assert_eq!(out, vec!["c(a(),b(a()))".to_string()]);
        assert_eq!(
            *runner.runs.lock().expect("not poisoned"),
            vec!["a", "b", "c"]
        );
    }

    #[tokio::test]
    async fn a_failure_names_the_vertex_and_stops_dependents() {
        let mut g = Graph::default();
        let a = g.add(v("fail-a", &[])).expect("valid");
        let b = g.add(v("b", &[a])).expect("valid");
        let runner = Arc::new(Counting {
            runs: Mutex::new(vec![]),
        });
        let err = solve(&g, b, runner.clone(), 1, CancellationToken::new())
            .await
            .expect_err("fails");
        assert_eq!(err.to_string(), "fail-a");
        assert_eq!(*runner.runs.lock().expect("not poisoned"), vec!["fail-a"]);
        let _ = BTreeMap::<u8, u8>::new();
    }
}
