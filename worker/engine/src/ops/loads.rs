//! When a source that did no work (a base image the store already had)
//! shows as done, and how, as BuildKit shows it: decided by the first
//! step that reads it, before that step shows: `CACHED` if the step runs
//! (BuildKit then loads the source's result from its cache), `DONE` if
//! the step was answered without running (nothing loaded the source). A
//! source that is the solve's result is `CACHED`: the export loads it.

use kiln_solver::{Vertex, VertexId};
use std::collections::HashMap;
use std::sync::Mutex;

/// A completion to show now: vertex, name, and whether it is `CACHED`.
pub type Shown = (usize, String, bool);

/// The deferred completions of one solve.
#[derive(Debug)]
pub struct Loads {
    result: usize,
    /// Names of the sources whose completion waits for a reader.
    pending: Mutex<HashMap<usize, String>>,
}

impl Loads {
    /// For the solve of `result`.
    pub fn new(result: VertexId) -> Loads {
        Loads {
            result: result.0,
            pending: Mutex::default(),
        }
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<usize, String>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Source `id` completed without work: `Some(cached)` to show now
    /// (it is the result), or `None` until a reader is answered.
    pub fn defer(&self, id: usize, name: &str) -> Option<bool> {
        if id == self.result {
            return Some(true);
        }
        self.pending().insert(id, name.to_string());
        None
    }

    /// `vertex` was answered, by running it (`ran`) or not: the
    /// completions of its inputs this decides.
    pub fn answered(&self, vertex: &Vertex, ran: bool) -> Vec<Shown> {
        let mut pending = self.pending();
        let mut out = Vec::new();
        for e in &vertex.inputs {
            if let Some(name) = pending.remove(&e.vertex.0) {
                out.push((e.vertex.0, name, ran));
            }
        }
        out
    }

    /// What is still to be shown when the solve ends (its readers failed
    /// or were cancelled before they were answered): `DONE`.
    pub fn rest(&self) -> Vec<Shown> {
        let mut rest: Vec<Shown> = self
            .pending()
            .drain()
            .map(|(id, name)| (id, name, false))
            .collect();
        rest.sort();
        rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_solver::graph::Edge;
    use kiln_solver::{Op, SourceOp};

    fn vertex(name: &str, inputs: &[usize]) -> Vertex {
        Vertex {
            op: Op::Source(SourceOp {
                identifier: format!("docker-image://{name}"),
                attrs: Default::default(),
                platform: None,
            }),
            inputs: inputs
                .iter()
                .map(|&v| Edge {
                    vertex: VertexId(v),
                    output: 0,
                })
                .collect(),
            name: name.to_string(),
            location: None,
            ignore_cache: false,
        }
    }

    /// 0: an image read by 1 and 2 (2 reads it twice); 3 reads 1 and 2.
    fn readers() -> Vec<Vertex> {
        vec![
            vertex("a", &[0]),
            vertex("b", &[0, 0]),
            vertex("result", &[1, 2]),
        ]
    }

    #[test]
    fn the_first_reader_decides_done_or_cached_once() {
        let r = readers();
        let loads = Loads::new(VertexId(3));
        assert_eq!(loads.defer(0, "base"), None);
        assert_eq!(
            loads.answered(&r[0], false),
            [(0, "base".to_string(), false)],
            "a hit: DONE"
        );
        assert!(loads.answered(&r[1], true).is_empty(), "shown once");

        let loads = Loads::new(VertexId(3));
        assert_eq!(loads.defer(0, "base"), None);
        assert_eq!(
            loads.answered(&r[1], true),
            [(0, "base".to_string(), true)],
            "b runs: CACHED, once for its two reads"
        );
        assert!(loads.answered(&r[2], false).is_empty(), "not an input of 3");
        assert!(loads.rest().is_empty());

        // No reader answered (it failed first): DONE when the solve ends.
        let loads = Loads::new(VertexId(3));
        assert_eq!(loads.defer(0, "base"), None);
        assert_eq!(loads.rest(), [(0, "base".to_string(), false)]);
    }

    #[test]
    fn a_source_that_is_the_result_is_cached_at_once() {
        assert_eq!(Loads::new(VertexId(0)).defer(0, "base"), Some(true));
    }
}
