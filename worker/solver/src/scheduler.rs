//! Runs the vertices a target needs, each once, as soon as its inputs are
//! ready, with bounded parallelism; answers vertices from the cache and
//! from equal vertices running at the same time.

use crate::cache::{cache_key, Flight, FlightControl, FlightError};
use crate::digest::Digest;
use crate::graph::{Graph, Vertex, VertexId};
use crate::{Result, SharedError, SolveError};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Executes one vertex and keeps its results. Implemented by the engine
/// over containerd, and by fakes in tests.
pub trait OpRunner: Send + Sync + 'static {
    /// What a vertex output is (a snapshot reference, ...).
    type Ref: Clone + Send + Sync + 'static;
    type Error: std::error::Error + Send + Sync + 'static;
    /// The right to run a key, held from [`OpRunner::claim`] until the run's
    /// outputs are saved or the run failed, then given to
    /// [`OpRunner::release`].
    type Claim: Send + 'static;

    /// A digest standing for input `index` (`input`) as `vertex` uses it:
    /// a content address of the input's result, never of its history.
    fn input_digest(
        &self,
        vertex: &Vertex,
        index: usize,
        input: &Self::Ref,
    ) -> impl Future<Output = std::result::Result<Digest, Self::Error>> + Send;

    /// The cached outputs for `key`, if the cache holds them. Ops that must
    /// always run (sources) answer `None`.
    fn load(
        &self,
        key: &Digest,
        vertex: &Vertex,
    ) -> impl Future<Output = std::result::Result<Option<Vec<Self::Ref>>, Self::Error>> + Send;

    /// Called on a cache miss, before running: makes this runner the one
    /// that runs `key` among every runner sharing its cache (other
    /// processes, other hosts), or waits while another one runs it and
    /// answers with the outputs that one saved. Equal keys of one
    /// [`Solver`] never get here twice at once (they share one flight).
    /// Must stop promptly when `cancel` fires.
    fn claim(
        &self,
        id: VertexId,
        key: &Digest,
        vertex: &Vertex,
        cancel: CancellationToken,
    ) -> impl Future<Output = std::result::Result<Claimed<Self::Ref, Self::Claim>, Self::Error>> + Send;

    /// Gives back a claim once its key's outputs are saved, or its run
    /// failed or was cancelled.
    fn release(&self, claim: Self::Claim) -> impl Future<Output = ()> + Send;

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

    /// Keeps the outputs of a run under `key`.
    fn save(
        &self,
        key: &Digest,
        vertex: &Vertex,
        outputs: &[Self::Ref],
    ) -> impl Future<Output = std::result::Result<(), Self::Error>> + Send;

    /// Told when `vertex` was answered without running: from the cache, or
    /// by an equal vertex that ran at the same time.
    fn cached(&self, id: VertexId, vertex: &Vertex) -> impl Future<Output = ()> + Send;

    /// Told the key and outputs of every vertex of this solve that
    /// succeeded, however it was answered (run, cache, or an equal vertex
    /// in flight): what a cache exporter needs to describe the build.
    fn solved(&self, _id: VertexId, _key: &Digest, _outputs: &[Self::Ref]) {}
}

/// What [`OpRunner::claim`] answers.
#[derive(Debug)]
pub enum Claimed<R, C> {
    /// This runner runs the key; the claim is released after the save.
    Ours(C),
    /// Another runner ran the key meanwhile: its saved outputs.
    Answered(Vec<R>),
}

/// The shared state of every solve of one process: dedup of equal work.
pub struct Solver<R: OpRunner> {
    flight: Arc<FlightControl<R::Ref, R::Error>>,
    parallelism: Arc<Semaphore>,
}

impl<R: OpRunner> Solver<R> {
    /// A solver running at most `parallelism` ops at once across all its
    /// solves.
    pub fn new(parallelism: usize) -> Self {
        Solver {
            flight: Arc::default(),
            parallelism: Arc::new(Semaphore::new(parallelism.max(1))),
        }
    }
}

impl<R: OpRunner> std::fmt::Debug for Solver<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Solver")
            .field("flight", &self.flight)
            .field("free_permits", &self.parallelism.available_permits())
            .finish()
    }
}

/// A vertex's outputs, or the (shareable) error of the run that failed it.
type VertexResult<R> = std::result::Result<Vec<<R as OpRunner>::Ref>, Arc<<R as OpRunner>::Error>>;

/// A vertex that finished, with its outputs or its error.
type Finished<R> = (VertexId, VertexResult<R>);

/// The record saves of one solve still running, each with its claim's
/// release after it: a vertex's outputs go to its dependents as soon as it
/// ran, and the solve waits for these before it returns. A failed save
/// names its vertex.
type Saves<E> = Arc<std::sync::Mutex<JoinSet<std::result::Result<(), (String, Arc<E>)>>>>;

/// Computes the key of one vertex and answers it from the cache, from an
/// equal vertex in flight, or by running it (then saving the result).
#[allow(clippy::too_many_arguments)] // the parts of one vertex solve, passed once
async fn solve_vertex<R: OpRunner>(
    runner: Arc<R>,
    flight: Arc<FlightControl<R::Ref, R::Error>>,
    sem: Arc<Semaphore>,
    saves: Saves<R::Error>,
    id: VertexId,
    vertex: Vertex,
    inputs: Vec<R::Ref>,
    cancel: CancellationToken,
) -> VertexResult<R> {
    let mut digests = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        digests.push(runner.input_digest(&vertex, i, input).await?);
    }
    let key = cache_key(&Graph::op_digest(&vertex.op), &digests);
    let result = answer_vertex(
        &runner, &flight, &sem, &saves, id, &vertex, inputs, &key, cancel,
    )
    .await;
    if let Ok(outs) = &result {
        runner.solved(id, &key, outs);
    }
    result
}

/// Answers one vertex under `key`: from an equal vertex in flight, from the
/// cache, or by running it (then saving the result).
#[allow(clippy::too_many_arguments)] // the parts of one vertex solve, passed once
async fn answer_vertex<R: OpRunner>(
    runner: &Arc<R>,
    flight: &Arc<FlightControl<R::Ref, R::Error>>,
    sem: &Arc<Semaphore>,
    saves: &Saves<R::Error>,
    id: VertexId,
    vertex: &Vertex,
    inputs: Vec<R::Ref>,
    key: &Digest,
    cancel: CancellationToken,
) -> VertexResult<R> {
    let key = key.clone();
    loop {
        let leader = match flight.join(&key) {
            Flight::Leader(leader) => leader,
            Flight::Follower(f) => match f.wait().await {
                Ok(outs) => {
                    runner.cached(id, vertex).await;
                    return Ok(outs);
                }
                Err(FlightError::Failed(e)) => return Err(e),
                // The leader's build went away; the work itself may be
                // fine, so try again (leading it this time, if nobody else
                // took over).
                Err(FlightError::Abandoned) => continue,
            },
        };
        // A run hands its flight to its save: equal vertices that join
        // meanwhile wait for the record, as for any run; its own
        // dependents get the outputs at once.
        let mut leader = Some(leader);
        let result: std::result::Result<Vec<R::Ref>, R::Error> = async {
            let mut claim = None;
            if !vertex.ignore_cache {
                if let Some(outs) = runner.load(&key, vertex).await? {
                    runner.cached(id, vertex).await;
                    return Ok(outs);
                }
                // Waiting for another runner holds no permit: it runs
                // nothing here.
                match runner.claim(id, &key, vertex, cancel.clone()).await? {
                    Claimed::Answered(outs) => {
                        runner.cached(id, vertex).await;
                        return Ok(outs);
                    }
                    Claimed::Ours(c) => claim = Some(c),
                }
            }
            let ran = {
                let _permit = sem.clone().acquire_owned().await;
                runner.run(id, vertex.clone(), inputs, cancel).await
            };
            match ran {
                Ok(outs) => {
                    // Saved beside the dependents' runs; the claim is
                    // given back after the save, so whoever waited finds
                    // the record.
                    let (runner, key, vertex, saved) =
                        (runner.clone(), key.clone(), vertex.clone(), outs.clone());
                    let leader = leader.take();
                    saves
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .spawn(async move {
                            let r = runner.save(&key, &vertex, &saved).await;
                            if let Some(c) = claim {
                                runner.release(c).await;
                            }
                            if let Some(l) = leader {
                                l.finish(Ok(saved));
                            }
                            r.map_err(|e| (vertex.name.clone(), Arc::new(e)))
                        });
                    Ok(outs)
                }
                Err(e) => {
                    if let Some(c) = claim {
                        runner.release(c).await;
                    }
                    Err(e)
                }
            }
        }
        .await;
        let result = result.map_err(Arc::new);
        if let Some(l) = leader {
            l.finish(result.clone());
        }
        return result;
    }
}

/// The message of a panic payload.
fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_string(),
            Err(_) => "a panic without a message".into(),
        },
    }
}

/// Solves `target` of `graph` and returns the target's outputs. Every
/// needed vertex starts as soon as its inputs are ready; on the first
/// failure every running vertex is cancelled and awaited before the error
/// is returned.
pub async fn solve<R: OpRunner>(
    solver: &Solver<R>,
    graph: &Graph,
    target: VertexId,
    runner: Arc<R>,
    cancel: CancellationToken,
) -> Result<Vec<R::Ref>> {
    let order = graph.needed_for(target);
    if order.is_empty() {
        return Err(SolveError::Empty);
    }
    // A failure cancels this solve's vertices, never the caller's token
    // (which may stand for a whole build that outlives this solve).
    let cancel = cancel.child_token();
    let mut done: HashMap<VertexId, Vec<R::Ref>> = HashMap::new();
    let mut pending: Vec<VertexId> = order;
    let mut running: JoinSet<Finished<R>> = JoinSet::new();
    // Which vertex each task solves, to name it when the task panics.
    let mut tasks: HashMap<tokio::task::Id, VertexId> = HashMap::new();
    let mut first_error: Option<SolveError> = None;
    let saves: Saves<R::Error> = Arc::default();

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
                    let task = solve_vertex(
                        runner.clone(),
                        solver.flight.clone(),
                        solver.parallelism.clone(),
                        saves.clone(),
                        id,
                        v.clone(),
                        inputs,
                        cancel.child_token(),
                    );
                    let handle = running.spawn(async move { (id, task.await) });
                    tasks.insert(handle.id(), id);
                } else {
                    i += 1;
                }
            }
        }
        let next = tokio::select! {
            r = running.join_next_with_id() => r,
            _ = cancel.cancelled(), if first_error.is_none() => {
                first_error = Some(SolveError::Cancelled);
                continue;
            }
        };
        match next {
            None => break,
            Some(Ok((_, (id, Ok(outs))))) => {
                done.insert(id, outs);
            }
            Some(Ok((_, (id, Err(e))))) => {
                if first_error.is_none() {
                    first_error = Some(SolveError::Op {
                        name: graph.vertex(id).name.clone(),
                        source: Box::new(SharedError(e)),
                    });
                    cancel.cancel();
                }
            }
            Some(Err(join)) => {
                if first_error.is_none() {
                    let name = tasks
                        .get(&join.id())
                        .map_or_else(|| "scheduler".into(), |&v| graph.vertex(v).name.clone());
                    first_error = Some(if join.is_panic() {
                        SolveError::Panicked {
                            name,
                            message: panic_message(join.into_panic()),
                        }
                    } else {
                        // Tasks are never aborted; a task cancelled by the
                        // runtime shutting down ends the solve the same way.
                        SolveError::Cancelled
                    });
                    cancel.cancel();
                }
            }
        }
    }
    // Every run's record is saved (or failed) before the solve answers.
    let mut pending_saves = std::mem::take(&mut *saves.lock().unwrap_or_else(|p| p.into_inner()));
    while let Some(saved) = pending_saves.join_next().await {
        let err = match saved {
            Ok(Ok(())) => continue,
            Ok(Err((name, e))) => SolveError::Op {
                name,
                source: Box::new(SharedError(e)),
            },
            Err(join) if join.is_panic() => SolveError::Panicked {
                name: "saving a cache record".into(),
                message: panic_message(join.into_panic()),
            },
            Err(_) => SolveError::Cancelled,
        };
        first_error.get_or_insert(err);
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
    use std::time::Duration;

    /// A failure of the fake, carrying the failing op's identifier.
    #[derive(Debug, PartialEq, Eq, thiserror::Error)]
    #[error("fake failure of {0}")]
    struct FakeError(String);

    /// Counts runs per vertex name and keeps results in a map (the cache);
    /// fails vertices whose op identifier starts with "fail" (after 100 ms
    /// for "fail-slow"), panics on "panic"; a vertex named "meet" waits at a
    /// barrier shared by all "meet" vertices.
    #[derive(Default)]
    struct Fake {
        runs: Mutex<Vec<String>>,
        cached: Mutex<Vec<String>>,
        store: Mutex<HashMap<Digest, Vec<String>>>,
        meet: Option<tokio::sync::Barrier>,
        /// Every `solved` call: vertex, key, outputs.
        solved: Mutex<Vec<(VertexId, Digest, Vec<String>)>>,
        /// Every claim and release, in order (`claim a`, `release a`).
        claims: Mutex<Vec<String>>,
    }

    fn ident(v: &Vertex) -> String {
        match &v.op {
            Op::Source(s) => s.identifier.clone(),
            _ => String::new(),
        }
    }

    /// A vertex named `elsewhere...` is claimed by another runner, which
    /// answers it with `elsewhere`.
    impl OpRunner for Fake {
        type Ref = String;
        type Error = FakeError;
        type Claim = String;

        async fn claim(
            &self,
            _id: VertexId,
            _key: &Digest,
            vertex: &Vertex,
            _cancel: CancellationToken,
        ) -> std::result::Result<Claimed<String, String>, FakeError> {
            if vertex.name.starts_with("elsewhere") {
                return Ok(Claimed::Answered(vec!["elsewhere".into()]));
            }
            self.claims
                .lock()
                .expect("not poisoned")
                .push(format!("claim {}", vertex.name));
            Ok(Claimed::Ours(vertex.name.clone()))
        }

        async fn release(&self, claim: String) {
            self.claims
                .lock()
                .expect("not poisoned")
                .push(format!("release {claim}"));
        }

        async fn input_digest(
            &self,
            _vertex: &Vertex,
            _index: usize,
            input: &String,
        ) -> std::result::Result<Digest, FakeError> {
            Ok(Digest::of(input.as_bytes()))
        }

        async fn load(
            &self,
            key: &Digest,
            _vertex: &Vertex,
        ) -> std::result::Result<Option<Vec<String>>, FakeError> {
            Ok(self.store.lock().expect("not poisoned").get(key).cloned())
        }

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
            if vertex.name.starts_with("meet") {
                if let Some(b) = &self.meet {
                    b.wait().await;
                }
            }
            let op = ident(&vertex);
            if op.starts_with("fail-slow") {
                // Long enough for an equal vertex to join as a follower.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if op.starts_with("fail") {
                return Err(FakeError(op));
            }
            if op.starts_with("panic") {
                panic!("the fake op {op} panics");
            }
            Ok(vec![format!("{}({})", ident(&vertex), inputs.join(","))])
        }

        async fn save(
            &self,
            key: &Digest,
            vertex: &Vertex,
            outputs: &[String],
        ) -> std::result::Result<(), FakeError> {
            if vertex.name.starts_with("slowsave") {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            self.claims
                .lock()
                .expect("not poisoned")
                .push(format!("save {}", vertex.name));
            self.store
                .lock()
                .expect("not poisoned")
                .insert(key.clone(), outputs.to_vec());
            Ok(())
        }

        async fn cached(&self, _id: VertexId, vertex: &Vertex) {
            self.cached
                .lock()
                .expect("not poisoned")
                .push(vertex.name.clone());
        }

        fn solved(&self, id: VertexId, key: &Digest, outputs: &[String]) {
            self.solved
                .lock()
                .expect("not poisoned")
                .push((id, key.clone(), outputs.to_vec()));
        }
    }

    impl Fake {
        fn runs(&self) -> Vec<String> {
            self.runs.lock().expect("not poisoned").clone()
        }
        fn claims(&self) -> Vec<String> {
            self.claims.lock().expect("not poisoned").clone()
        }
        fn forget_runs(&self) {
            self.runs.lock().expect("not poisoned").clear();
            self.cached.lock().expect("not poisoned").clear();
        }
    }

    /// A vertex whose op is identified by `op` and named `name`.
    fn v(name: &str, op: &str, inputs: &[VertexId]) -> Vertex {
        Vertex {
            op: Op::Source(SourceOp {
                identifier: op.into(),
                attrs: BTreeMap::new(),
                platform: None,
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

    /// a <- b <- c, with a and b both inputs of c, and an unused vertex.
    fn chain(b_op: &str) -> (Graph, VertexId) {
        let mut g = Graph::default();
        let a = g.add(v("a", "a", &[])).expect("valid");
        let _unused = g.add(v("unused", "unused", &[])).expect("valid");
        let b = g.add(v("b", b_op, &[a])).expect("valid");
        let c = g.add(v("c", "c", &[a, b])).expect("valid");
        (g, c)
    }

    async fn run(
        solver: &Solver<Fake>,
        g: &Graph,
        t: VertexId,
        f: &Arc<Fake>,
    ) -> Result<Vec<String>> {
        solve(solver, g, t, f.clone(), CancellationToken::new()).await
    }

    #[tokio::test]
    async fn runs_needed_vertices_once_in_dependency_order() {
        let (g, c) = chain("b");
        let f = Arc::new(Fake::default());
        let out = run(&Solver::new(4), &g, c, &f).await.expect("solves");
        assert_eq!(out, vec!["c(a(),b(a()))".to_string()]);
        assert_eq!(f.runs(), vec!["a", "b", "c"]);
    }

    #[tokio::test]
    async fn a_failure_names_the_vertex_and_stops_dependents() {
        let mut g = Graph::default();
        let a = g.add(v("fail-a", "fail", &[])).expect("valid");
        let b = g.add(v("b", "b", &[a])).expect("valid");
        let f = Arc::new(Fake::default());
        let err = run(&Solver::new(1), &g, b, &f).await.expect_err("fails");
        assert_eq!(err.to_string(), "fail-a");
        assert_eq!(**fake_error(&err), FakeError("fail".into()));
        assert_eq!(f.runs(), vec!["fail-a"]);
    }

    /// The runner error behind a solve error.
    fn fake_error(err: &SolveError) -> &SharedError<FakeError> {
        match err {
            SolveError::Op { source, .. } => source
                .downcast_ref::<SharedError<FakeError>>()
                .expect("the runner's error type survives"),
            other => panic!("expected an op failure, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_runner_error_reaches_the_caller_typed() {
        let mut g = Graph::default();
        let a = g.add(v("fail-a", "fail-x", &[])).expect("valid");
        let f = Arc::new(Fake::default());
        let err = run(&Solver::new(1), &g, a, &f).await.expect_err("fails");
        let shared = fake_error(&err);
        assert_eq!(**shared, FakeError("fail-x".into()));
        assert_eq!(
            shared.0.to_string(),
            "fake failure of fail-x",
            "prints as the runner's error"
        );
    }

    #[tokio::test]
    async fn a_follower_of_a_failed_vertex_gets_the_leaders_error() {
        // Two builds with one equal vertex: the first leads and fails slowly,
        // the second follows it and must see the very same error.
        let mut g1 = Graph::default();
        let l = g1.add(v("leader", "fail-slow", &[])).expect("valid");
        let mut g2 = Graph::default();
        let fo = g2.add(v("follower", "fail-slow", &[])).expect("valid");
        let f = Arc::new(Fake::default());
        let solver = Solver::new(4);
        let (x, y) = tokio::join!(run(&solver, &g1, l, &f), run(&solver, &g2, fo, &f));
        let (x, y) = (x.expect_err("leader fails"), y.expect_err("follower fails"));
        assert_eq!(f.runs(), vec!["leader"], "the equal vertex ran once");
        assert_eq!(x.to_string(), "leader");
        assert_eq!(y.to_string(), "follower");
        let (lx, ly) = (fake_error(&x), fake_error(&y));
        assert!(Arc::ptr_eq(&lx.0, &ly.0), "one error, shared");
        assert_eq!(**ly, FakeError("fail-slow".into()));
    }

    #[tokio::test]
    async fn a_panicking_op_is_a_panic_naming_its_vertex() {
        let mut g = Graph::default();
        let a = g.add(v("a", "a", &[])).expect("valid");
        let p = g.add(v("boom", "panic", &[a])).expect("valid");
        let f = Arc::new(Fake::default());
        let solver = Solver::new(2);
        let err = run(&solver, &g, p, &f).await.expect_err("panics");
        match &err {
            SolveError::Panicked { name, message } => {
                assert_eq!(name, "boom");
                assert_eq!(message, "the fake op panic panics");
            }
            other => panic!("expected a panic, got {other:?}"),
        }
        // The panicked leader's key is free again: the next solve runs it
        // (and panics) instead of waiting forever.
        let again = tokio::time::timeout(Duration::from_secs(10), run(&solver, &g, p, &f))
            .await
            .expect("no follower left hanging");
        assert!(matches!(again, Err(SolveError::Panicked { .. })));
    }

    #[tokio::test]
    async fn a_failure_does_not_cancel_the_callers_token() {
        let mut g = Graph::default();
        let a = g.add(v("fail-a", "fail", &[])).expect("valid");
        let f = Arc::new(Fake::default());
        let token = CancellationToken::new();
        let err = solve(&Solver::new(1), &g, a, f, token.clone())
            .await
            .expect_err("fails");
        assert_eq!(err.to_string(), "fail-a");
        assert!(!token.is_cancelled());
    }

    #[tokio::test]
    async fn a_second_solve_is_all_cache_hits() {
        let (g, c) = chain("b");
        let f = Arc::new(Fake::default());
        let solver = Solver::new(4);
        let first = run(&solver, &g, c, &f).await.expect("solves");
        f.forget_runs();
        let second = run(&solver, &g, c, &f).await.expect("solves");
        assert_eq!(first, second);
        assert_eq!(
            f.runs(),
            Vec::<String>::new(),
            "a cache hit executes nothing"
        );
        assert_eq!(*f.cached.lock().expect("not poisoned"), vec!["a", "b", "c"]);
    }

    #[tokio::test]
    async fn every_answered_vertex_is_reported_with_its_key_and_outputs() {
        let (g, target) = chain("b");
        let f = Arc::new(Fake::default());
        let solver = Solver::new(4);
        run(&solver, &g, target, &f).await.expect("first solve");
        let first = std::mem::take(&mut *f.solved.lock().expect("not poisoned"));
        assert_eq!(first.len(), 3, "{first:?}");
        // A cached solve reports the same keys and outputs.
        run(&solver, &g, target, &f).await.expect("second solve");
        let mut second = f.solved.lock().expect("not poisoned").clone();
        let mut first = first;
        first.sort_by_key(|(id, _, _)| id.0);
        second.sort_by_key(|(id, _, _)| id.0);
        assert_eq!(first, second);
        assert_eq!(f.runs().len(), 3, "the second solve ran nothing");
        assert_eq!(second[2].2, vec!["c(a(),b(a()))".to_string()]);
        // Keys differ per vertex.
        assert_ne!(second[0].1, second[1].1);
    }

    #[tokio::test]
    async fn a_changed_op_reruns_it_and_what_depends_on_it() {
        let f = Arc::new(Fake::default());
        let solver = Solver::new(4);
        let (g, c) = chain("b");
        run(&solver, &g, c, &f).await.expect("solves");
        f.forget_runs();
        let (g2, c2) = chain("b-changed");
        run(&solver, &g2, c2, &f).await.expect("solves");
        assert_eq!(f.runs(), vec!["b", "c"]);
    }

    #[tokio::test]
    async fn ignore_cache_reruns_only_that_vertex() {
        let f = Arc::new(Fake::default());
        let solver = Solver::new(4);
        let (mut g, c) = chain("b");
        run(&solver, &g, c, &f).await.expect("solves");
        f.forget_runs();
        g.vertices[0].ignore_cache = true;
        run(&solver, &g, c, &f).await.expect("solves");
        // a re-ran and gave the same result, so b and c still hit.
        assert_eq!(f.runs(), vec!["a"]);
    }

    #[tokio::test]
    async fn a_dependent_runs_while_its_input_is_saved_and_the_solve_waits_for_the_save() {
        let mut g = Graph::default();
        let a = g.add(v("slowsave-a", "a", &[])).expect("valid");
        let b = g.add(v("b", "b", &[a])).expect("valid");
        let f = Arc::new(Fake::default());
        run(&Solver::new(4), &g, b, &f).await.expect("solves");
        let log = f.claims();
        let at = |e: &str| log.iter().position(|l| l == e).expect(e);
        assert!(at("claim b") < at("save slowsave-a"), "{log:?}");
        // Answered only once every record is saved and every claim given
        // back after its save.
        assert!(at("save slowsave-a") < at("release slowsave-a"), "{log:?}");
        assert_eq!(f.store.lock().expect("not poisoned").len(), 2);
    }

    #[tokio::test]
    async fn equal_vertices_run_once_in_one_build() {
        let mut g = Graph::default();
        let a1 = g.add(v("a1", "same", &[])).expect("valid");
        let a2 = g.add(v("a2", "same", &[])).expect("valid");
        let j = g.add(v("join", "join", &[a1, a2])).expect("valid");
        let f = Arc::new(Fake::default());
        run(&Solver::new(4), &g, j, &f).await.expect("solves");
        let runs = f.runs();
        assert_eq!(
            runs.iter().filter(|r| r.starts_with('a')).count(),
            1,
            "{runs:?}"
        );
    }

    #[tokio::test]
    async fn concurrent_solves_share_equal_work() {
        let (g, c) = chain("b");
        let f = Arc::new(Fake::default());
        let solver = Solver::new(4);
        let (x, y) = tokio::join!(run(&solver, &g, c, &f), run(&solver, &g, c, &f));
        assert_eq!(x.expect("solves"), y.expect("solves"));
        assert_eq!(f.runs(), vec!["a", "b", "c"]);
    }

    #[tokio::test]
    async fn independent_vertices_run_at_the_same_time() {
        // Both "meet" vertices wait for each other at a barrier: the solve
        // only finishes if they run concurrently.
        let mut g = Graph::default();
        let m1 = g.add(v("meet1", "m1", &[])).expect("valid");
        let m2 = g.add(v("meet2", "m2", &[])).expect("valid");
        let j = g.add(v("join", "join", &[m1, m2])).expect("valid");
        let f = Arc::new(Fake {
            meet: Some(tokio::sync::Barrier::new(2)),
            ..Default::default()
        });
        let solved =
            tokio::time::timeout(Duration::from_secs(10), run(&Solver::new(4), &g, j, &f)).await;
        assert!(
            matches!(solved, Ok(Ok(_))),
            "independent vertices did not overlap"
        );
    }

    #[tokio::test]
    async fn a_key_another_runner_claimed_is_answered_by_it_not_run() {
        let mut g = Graph::default();
        let a = g.add(v("elsewhere-a", "a", &[])).expect("valid");
        let b = g.add(v("b", "b", &[a])).expect("valid");
        let f = Arc::new(Fake::default());
        let out = run(&Solver::new(2), &g, b, &f).await.expect("solves");
        assert_eq!(out, vec!["b(elsewhere)".to_string()]);
        assert_eq!(f.runs(), vec!["b"], "the claimed vertex did not run here");
        assert_eq!(*f.cached.lock().expect("not poisoned"), vec!["elsewhere-a"]);
        assert_eq!(f.claims(), vec!["claim b", "save b", "release b"]);
    }

    #[tokio::test]
    async fn a_claim_is_released_after_the_save_or_the_failure_and_never_on_a_hit() {
        let (g, c) = chain("b");
        let f = Arc::new(Fake::default());
        let solver = Solver::new(1);
        run(&solver, &g, c, &f).await.expect("solves");
        assert_eq!(
            f.claims(),
            [
                "claim a",
                "save a",
                "release a",
                "claim b",
                "save b",
                "release b",
                "claim c",
                "save c",
                "release c"
            ]
        );
        // All hits: nothing is claimed.
        f.claims.lock().expect("not poisoned").clear();
        run(&solver, &g, c, &f).await.expect("solves");
        assert_eq!(f.claims(), Vec::<String>::new());

        let mut g = Graph::default();
        let x = g.add(v("fail-x", "fail", &[])).expect("valid");
        let f = Arc::new(Fake::default());
        run(&solver, &g, x, &f).await.expect_err("fails");
        assert_eq!(f.claims(), vec!["claim fail-x", "release fail-x"]);

        // A vertex that ignores the cache runs without a claim.
        let mut g = Graph::default();
        let mut nc = v("nocache", "nc", &[]);
        nc.ignore_cache = true;
        let n = g.add(nc).expect("valid");
        let f = Arc::new(Fake::default());
        run(&solver, &g, n, &f).await.expect("solves");
        assert_eq!(f.claims(), vec!["save nocache"]);
    }
}
