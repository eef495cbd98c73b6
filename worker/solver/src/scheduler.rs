//! Runs the vertices a target needs, each once, as soon as its inputs are
//! ready, with bounded parallelism; answers vertices from the cache and
//! from equal vertices running at the same time. With an imported cache
//! that knows plan keys, the sources run first and a step answered by its
//! plan key stands for the steps only it reads, which are then only
//! loaded if cached, never run.

use crate::cache::{cache_key, plan_key, Flight, FlightControl, FlightError};
use crate::digest::Digest;
use crate::graph::{Graph, Op, Vertex, VertexId};
use crate::{Result, SharedError, SolveError};
use std::collections::{HashMap, HashSet};
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

    /// Told the key, plan key and outputs of every vertex of this solve
    /// that succeeded, however it was answered (run, cache, an equal
    /// vertex in flight, its plan key): what a cache exporter needs to
    /// describe the build.
    fn solved(&self, _id: VertexId, _key: &Digest, _plan: &Digest, _outputs: &[Self::Ref]) {}

    /// Whether [`OpRunner::load_planned`] may answer vertices (an imported
    /// cache is there): the solve then runs its sources first, computes
    /// every step's plan key, and runs only what the steps it cannot
    /// answer by plan need.
    fn answers_plans(&self) -> bool {
        false
    }

    /// Whether [`OpRunner::load_planned`] would find `plan`, without
    /// loading anything.
    fn plan_known(&self, plan: &Digest) -> bool {
        let _ = plan;
        false
    }

    /// The outputs an imported cache keeps for the step planned as `plan`
    /// (a plan key, [`crate::cache::plan_key`]), with the step's key, if
    /// any.
    #[allow(clippy::type_complexity)] // outputs and key, as `load` plus the key
    fn load_planned(
        &self,
        plan: &Digest,
        vertex: &Vertex,
    ) -> impl Future<Output = std::result::Result<Option<(Vec<Self::Ref>, Digest)>, Self::Error>> + Send
    {
        let _ = (plan, vertex);
        async { Ok(None) }
    }
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

/// What solving one vertex gave: its outputs and plan key, `None` for a
/// step that was only to be loaded and was not in the cache.
type Solved<R> = Option<(Vec<<R as OpRunner>::Ref>, Digest)>;

/// A vertex that finished, with what it gave or its error.
type Finished<R> = (
    VertexId,
    std::result::Result<Solved<R>, Arc<<R as OpRunner>::Error>>,
);

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
    plan_inputs: Vec<Option<String>>,
    load_only: bool,
    cancel: CancellationToken,
) -> std::result::Result<Solved<R>, Arc<R::Error>> {
    let mut digests = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        digests.push(runner.input_digest(&vertex, i, input).await?);
    }
    let op = Graph::op_digest(&vertex.op);
    let key = cache_key(&op, &digests);
    let parts: Vec<String> = plan_inputs
        .into_iter()
        .zip(&digests)
        .map(|(p, d)| p.unwrap_or_else(|| d.to_string()))
        .collect();
    let plan = plan_key(&op, &parts);
    let result = answer_vertex(
        &runner, &flight, &sem, &saves, id, &vertex, inputs, &key, load_only, cancel,
    )
    .await;
    if let Ok(Some(outs)) = &result {
        runner.solved(id, &key, &plan, outs);
    }
    result.map(|outs| outs.map(|o| (o, plan)))
}

/// What stands for each input of `v` in its plan key: `Some` of
/// `"<plan key>:<output>"` for a step's output, `None` for a source's (its
/// content digest stands in, as in the cache key).
fn plan_inputs(
    graph: &Graph,
    v: &Vertex,
    plans: &HashMap<VertexId, Digest>,
) -> Vec<Option<String>> {
    v.inputs
        .iter()
        .map(|e| {
            if matches!(graph.vertex(e.vertex).op, Op::Source(_)) {
                return None;
            }
            plans.get(&e.vertex).map(|p| format!("{p}:{}", e.output))
        })
        .collect()
}

/// Answers one vertex under `key`: from an equal vertex in flight, from the
/// cache, or by running it (then saving the result). With `load_only`, a
/// vertex the cache does not hold is not run: `None`.
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
    load_only: bool,
    cancel: CancellationToken,
) -> std::result::Result<Option<Vec<R::Ref>>, Arc<R::Error>> {
    let key = key.clone();
    loop {
        let leader = match flight.join(&key) {
            Flight::Leader(leader) => leader,
            Flight::Follower(f) => match f.wait().await {
                Ok(outs) => {
                    runner.cached(id, vertex).await;
                    return Ok(Some(outs));
                }
                // A step only to be loaded is not needed: an equal one's
                // failure is not its own.
                Err(FlightError::Failed(_)) if load_only => return Ok(None),
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
        if load_only {
            // Dropping the leadership lets an equal vertex that must run
            // lead it.
            return match runner.load(&key, vertex).await {
                Ok(Some(outs)) => {
                    runner.cached(id, vertex).await;
                    if let Some(l) = leader {
                        l.finish(Ok(outs.clone()));
                    }
                    Ok(Some(outs))
                }
                Ok(None) => Ok(None),
                // Not needed: a cache that cannot be read is a miss (the
                // runner says why in its own log).
                Err(_) => Ok(None),
            };
        }
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
        return result.map(Some);
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
/// is returned. When the runner answers plan keys (and no vertex ignores
/// the cache), the sources run first and the steps are looked up by plan
/// key from the target down: what an answered step alone needed does not
/// run.
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
    let mut run = Run {
        graph,
        solver,
        runner: runner.clone(),
        // A failure cancels this solve's vertices, never the caller's
        // token (which may stand for a whole build that outlives this
        // solve).
        cancel: cancel.child_token(),
        done: HashMap::new(),
        plans: HashMap::new(),
        saves: Arc::default(),
        first_error: None,
    };
    let planned = runner.answers_plans() && order.iter().all(|&id| !graph.vertex(id).ignore_cache);
    if planned {
        let (sources, steps): (Vec<VertexId>, Vec<VertexId>) = order
            .iter()
            .partition(|&&id| matches!(graph.vertex(id).op, Op::Source(_)));
        run.run(sources, None).await?;
        if run.first_error.is_none() {
            if let Err(e) = run.planned(steps, target).await {
                run.fail(e);
            }
        }
    } else {
        run.run(order, None).await?;
    }
    run.finish(target).await
}

/// The state of one solve.
struct Run<'a, R: OpRunner> {
    graph: &'a Graph,
    solver: &'a Solver<R>,
    runner: Arc<R>,
    cancel: CancellationToken,
    done: HashMap<VertexId, Vec<R::Ref>>,
    /// The plan key of every step answered or planned so far.
    plans: HashMap<VertexId, Digest>,
    saves: Saves<R::Error>,
    first_error: Option<SolveError>,
}

impl<R: OpRunner> Run<'_, R> {
    /// Keeps the first failure and cancels what still runs.
    fn fail(&mut self, e: SolveError) {
        if self.first_error.is_none() {
            self.first_error = Some(e);
            self.cancel.cancel();
        }
    }

    /// The failure of `id` with the runner's error `e`.
    fn op_error(&self, id: VertexId, e: Arc<R::Error>) -> SolveError {
        SolveError::Op {
            name: self.graph.vertex(id).name.clone(),
            source: Box::new(SharedError(e)),
        }
    }

    /// Solves `pending` (in dependency order), each as soon as its inputs
    /// are done, until none is left that can start or one failed. A step
    /// outside `may_run` (when given) is only loaded from the cache: if
    /// the cache does not hold it, it stays undone, as do the steps that
    /// read it.
    async fn run(
        &mut self,
        mut pending: Vec<VertexId>,
        may_run: Option<&HashSet<VertexId>>,
    ) -> Result<()> {
        let graph = self.graph;
        let mut running: JoinSet<Finished<R>> = JoinSet::new();
        // Which vertex each task solves, to name it when the task panics.
        let mut tasks: HashMap<tokio::task::Id, VertexId> = HashMap::new();
        loop {
            if self.first_error.is_none() && !self.cancel.is_cancelled() {
                // Start every pending vertex whose inputs are all done.
                let mut i = 0;
                while i < pending.len() {
                    let id = pending[i];
                    let v = graph.vertex(id);
                    if v.inputs.iter().all(|e| self.done.contains_key(&e.vertex)) {
                        pending.remove(i);
                        let mut inputs = Vec::with_capacity(v.inputs.len());
                        for e in &v.inputs {
                            let outs = &self.done[&e.vertex];
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
                            self.runner.clone(),
                            self.solver.flight.clone(),
                            self.solver.parallelism.clone(),
                            self.saves.clone(),
                            id,
                            v.clone(),
                            inputs,
                            plan_inputs(graph, v, &self.plans),
                            may_run.is_some_and(|m| !m.contains(&id)),
                            self.cancel.child_token(),
                        );
                        let handle = running.spawn(async move { (id, task.await) });
                        tasks.insert(handle.id(), id);
                    } else {
                        i += 1;
                    }
                }
            }
            // Cancellation first: with nothing running, joining answers
            // at once and would end the round as if all were done.
            let next = tokio::select! {
                biased;
                _ = self.cancel.cancelled(), if self.first_error.is_none() => {
                    self.first_error = Some(SolveError::Cancelled);
                    continue;
                }
                r = running.join_next_with_id() => r,
            };
            match next {
                None => return Ok(()),
                Some(Ok((_, (id, Ok(Some((outs, plan))))))) => {
                    self.done.insert(id, outs);
                    self.plans.insert(id, plan);
                }
                // Only to be loaded, and not in the cache.
                Some(Ok((_, (_, Ok(None))))) => {}
                Some(Ok((_, (id, Err(e))))) => {
                    let e = self.op_error(id, e);
                    self.fail(e);
                }
                Some(Err(join)) => {
                    let name = tasks
                        .get(&join.id())
                        .map_or_else(|| "scheduler".into(), |&v| graph.vertex(v).name.clone());
                    self.fail(if join.is_panic() {
                        SolveError::Panicked {
                            name,
                            message: panic_message(join.into_panic()),
                        }
                    } else {
                        // Tasks are never aborted; a task cancelled by the
                        // runtime shutting down ends the solve the same way.
                        SolveError::Cancelled
                    });
                }
            }
        }
    }

    /// [`OpRunner::load_planned`] for step `id`, given up when the solve is
    /// cancelled.
    async fn load_planned(
        &self,
        id: VertexId,
        plan: &Digest,
    ) -> Result<Option<(Vec<R::Ref>, Digest)>> {
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => Err(SolveError::Cancelled),
            r = self.runner.load_planned(plan, self.graph.vertex(id)) => {
                r.map_err(|err| self.op_error(id, Arc::new(err)))
            }
        }
    }

    /// With every source done: computes the plan key of each of `steps`
    /// (in dependency order).
    async fn compute_plans(&mut self, steps: &[VertexId]) -> Result<()> {
        let graph = self.graph;
        for &id in steps {
            if self.cancel.is_cancelled() {
                return Err(SolveError::Cancelled);
            }
            let v = graph.vertex(id);
            let mut parts = Vec::with_capacity(v.inputs.len());
            for (i, (part, e)) in plan_inputs(graph, v, &self.plans)
                .into_iter()
                .zip(&v.inputs)
                .enumerate()
            {
                if let Some(p) = part {
                    parts.push(p);
                    continue;
                }
                let input = self
                    .done
                    .get(&e.vertex)
                    .and_then(|outs| outs.get(e.output))
                    .ok_or(SolveError::BadInput {
                        vertex: id.0,
                        input: e.vertex.0,
                    })?;
                let d = self
                    .runner
                    .input_digest(v, i, input)
                    .await
                    .map_err(|err| self.op_error(id, Arc::new(err)))?;
                parts.push(d.to_string());
            }
            self.plans
                .insert(id, plan_key(&Graph::op_digest(&v.op), &parts));
        }
        Ok(())
    }

    /// Solves `steps` (in dependency order; the sources are done) running
    /// only what is needed. Walking down from `target`, a step whose plan
    /// the runner knows stands for its inputs; the steps below such a step
    /// are only loaded from the cache (a hit keeps its record, as before),
    /// never run. A known step whose inputs are not all done is then
    /// answered by its plan; if that fails after all, what it reads may
    /// run. What is left did no work and shows as cached.
    async fn planned(&mut self, steps: Vec<VertexId>, target: VertexId) -> Result<()> {
        let graph = self.graph;
        self.compute_plans(&steps).await?;
        let mut may_run: HashSet<VertexId> = HashSet::new();
        let mut known: HashSet<VertexId> = HashSet::new();
        let mut stack = vec![target];
        while let Some(id) = stack.pop() {
            if self.done.contains_key(&id) || !may_run.insert(id) {
                continue;
            }
            match self.plans.get(&id) {
                Some(p) if self.runner.plan_known(p) => {
                    known.insert(id);
                }
                _ => stack.extend(graph.vertex(id).inputs.iter().map(|e| e.vertex)),
            }
        }
        let mut left = steps;
        loop {
            self.run(left.clone(), Some(&may_run)).await?;
            if self.cancel.is_cancelled() {
                return Err(SolveError::Cancelled);
            }
            if self.first_error.is_some() {
                return Ok(());
            }
            left.retain(|id| !self.done.contains_key(id));
            let mut changed = false;
            for &id in &left {
                let v = graph.vertex(id);
                if !known.contains(&id)
                    || v.inputs.iter().all(|e| self.done.contains_key(&e.vertex))
                {
                    continue;
                }
                let Some(plan) = self.plans.get(&id).cloned() else {
                    continue;
                };
                let hit = self.load_planned(id, &plan).await?;
                known.remove(&id);
                changed = true;
                match hit {
                    Some((outs, key)) => {
                        self.runner.cached(id, v).await;
                        self.runner.solved(id, &key, &plan, &outs);
                        self.done.insert(id, outs);
                    }
                    // Its inputs run after all (and it, on them).
                    None => {
                        let mut below = vec![id];
                        while let Some(b) = below.pop() {
                            for e in &graph.vertex(b).inputs {
                                if !self.done.contains_key(&e.vertex) && may_run.insert(e.vertex) {
                                    below.push(e.vertex);
                                }
                            }
                        }
                    }
                }
            }
            if !changed {
                break;
            }
            left.retain(|id| !self.done.contains_key(id));
        }
        // What is left needs no work, but a step the import knows by plan
        // (a final stage's steps below the one answered: their layers are
        // its layers) is still loaded, so that the records this build
        // reports, and a cache it exports again, are whole.
        for &id in &left {
            let Some(plan) = self.plans.get(&id).cloned() else {
                continue;
            };
            if !self.runner.plan_known(&plan) {
                continue;
            }
            let hit = self.load_planned(id, &plan).await?;
            if let Some((outs, key)) = hit {
                self.runner.solved(id, &key, &plan, &outs);
                self.done.insert(id, outs);
            }
        }
        for id in left {
            self.runner.cached(id, graph.vertex(id)).await;
        }
        Ok(())
    }

    /// Waits for every run's record to be saved (or failed), then answers
    /// the target's outputs or the first failure.
    async fn finish(mut self, target: VertexId) -> Result<Vec<R::Ref>> {
        let mut pending_saves =
            std::mem::take(&mut *self.saves.lock().unwrap_or_else(|p| p.into_inner()));
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
            self.first_error.get_or_insert(err);
        }
        if let Some(e) = self.first_error {
            return Err(e);
        }
        match self.done.remove(&target) {
            Some(outs) => Ok(outs),
            None if self.cancel.is_cancelled() => Err(SolveError::Cancelled),
            None => Err(SolveError::Empty),
        }
    }
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
        /// An imported cache by plan key; `Some` makes the fake answer
        /// plans.
        imported: Option<Mutex<HashMap<Digest, Vec<String>>>>,
        /// Every `solved` call's plan key, by vertex.
        plans: Mutex<BTreeMap<usize, Digest>>,
        /// The imported plans are known but cannot be loaded (a blob
        /// that cannot be fetched).
        plans_broken: bool,
    }

    fn ident(v: &Vertex) -> String {
        match &v.op {
            Op::Source(s) => s.identifier.clone(),
            Op::Exec(e) => e.meta.args.join(" "),
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

        fn solved(&self, id: VertexId, key: &Digest, plan: &Digest, outputs: &[String]) {
            self.solved
                .lock()
                .expect("not poisoned")
                .push((id, key.clone(), outputs.to_vec()));
            self.plans
                .lock()
                .expect("not poisoned")
                .insert(id.0, plan.clone());
        }

        fn answers_plans(&self) -> bool {
            self.imported.is_some()
        }

        fn plan_known(&self, plan: &Digest) -> bool {
            self.imported
                .as_ref()
                .is_some_and(|m| m.lock().expect("not poisoned").contains_key(plan))
        }

        async fn load_planned(
            &self,
            plan: &Digest,
            _vertex: &Vertex,
        ) -> std::result::Result<Option<(Vec<String>, Digest)>, FakeError> {
            if self.plans_broken {
                return Ok(None);
            }
            let outs = self
                .imported
                .as_ref()
                .and_then(|m| m.lock().expect("not poisoned").get(plan).cloned());
            Ok(outs.map(|o| (o, Digest::of(format!("key of {plan}").as_bytes()))))
        }
    }

    impl Fake {
        fn runs(&self) -> Vec<String> {
            self.runs.lock().expect("not poisoned").clone()
        }
        fn claims(&self) -> Vec<String> {
            self.claims.lock().expect("not poisoned").clone()
        }
        /// The keys every `solved` call reported, sorted.
        fn solved_keys(&self) -> Vec<Digest> {
            let mut keys: Vec<Digest> = self
                .solved
                .lock()
                .expect("not poisoned")
                .iter()
                .map(|(_, k, _)| k.clone())
                .collect();
            keys.sort();
            keys
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

    /// A step (an exec whose args are `args`) named `name`.
    fn step(name: &str, args: &str, inputs: &[VertexId]) -> Vertex {
        Vertex {
            op: Op::Exec(ExecOp {
                meta: Meta {
                    args: vec![args.into()],
                    ..Meta::default()
                },
                mounts: Vec::new(),
                network: NetMode::default(),
                security: SecurityMode::default(),
                secret_env: Vec::new(),
                platform: None,
            }),
            ..v(name, "", inputs)
        }
    }

    /// Two stages as a Dockerfile makes them: `a` (two steps on `base`)
    /// and the final one, whose first step reads `a`'s result (`COPY
    /// --from=a`) and whose second reads the first. Returns the graph and
    /// the final step.
    fn stages(base: &str) -> (Graph, VertexId) {
        let mut g = Graph::default();
        let b = g.add(v("base", base, &[])).expect("valid");
        let a1 = g.add(step("a1", "a1", &[b])).expect("valid");
        let a2 = g.add(step("a2", "a2", &[a1])).expect("valid");
        let f1 = g.add(step("f1", "f1", &[b, a2])).expect("valid");
        let f2 = g.add(step("f2", "f2", &[f1])).expect("valid");
        (g, f2)
    }

    /// [`stages`] on `base`, solved once by a plain fake: the solver, the
    /// graph, its final step and the fake (which holds the plan keys and
    /// the records of that first build).
    async fn stages_solved() -> (Solver<Fake>, Graph, VertexId, Arc<Fake>) {
        let solver = Solver::new(4);
        let (g, f2) = stages("base");
        let first = Arc::new(Fake::default());
        run(&solver, &g, f2, &first).await.expect("solves");
        (solver, g, f2, first)
    }

    /// A fake answering plans from `imported`.
    fn importing(imported: HashMap<Digest, Vec<String>>) -> Arc<Fake> {
        Arc::new(Fake {
            imported: Some(Mutex::new(imported)),
            ..Fake::default()
        })
    }

    #[tokio::test]
    async fn a_step_answered_by_its_plan_key_runs_nothing_only_it_needed() {
        let (solver, g, f2, first) = stages_solved().await;
        let plans = first.plans.lock().expect("not poisoned").clone();
        assert_eq!(plans.len(), 5, "every vertex has a plan key: {plans:?}");

        // A cache that kept only the final stage (mode=min): the builder
        // stage is not run, its steps show as cached; the final stage's
        // first step, known too, is loaded for its record.
        let f1 = VertexId(f2.0 - 1);
        let f = importing(HashMap::from([
            (plans[&f2.0].clone(), vec!["kept".into()]),
            (plans[&f1.0].clone(), vec!["f1-kept".into()]),
        ]));
        let got = run(&solver, &g, f2, &f).await.expect("solves");
        assert_eq!(got, vec!["kept"]);
        assert_eq!(f.runs(), vec!["base"], "only the source runs");
        let mut cached = f.cached.lock().expect("not poisoned").clone();
        cached.sort();
        assert_eq!(cached, vec!["a1", "a2", "f1", "f2"]);
        let reported = f.plans.lock().expect("not poisoned").clone();
        assert_eq!(reported[&f2.0], plans[&f2.0]);
        assert_eq!(reported[&f1.0], plans[&f1.0], "f1's record is reported");
        assert!(!reported.contains_key(&1), "a1 was not loaded");

        // Another source (a changed context) is another plan: all runs.
        let (g2, t2) = stages("other-base");
        let f = importing(HashMap::from([(plans[&f2.0].clone(), vec!["kept".into()])]));
        let got = run(&solver, &g2, t2, &f).await.expect("solves");
        assert_ne!(got, vec!["kept"]);
        assert_eq!(f.runs(), vec!["base", "a1", "a2", "f1", "f2"]);
    }

    #[tokio::test]
    async fn a_plan_hit_below_the_target_feeds_the_steps_above_it() {
        let (solver, g, f2, first) = stages_solved().await;
        let plans = first.plans.lock().expect("not poisoned").clone();
        let f1 = VertexId(f2.0 - 1);
        let f = importing(HashMap::from([(
            plans[&f1.0].clone(),
            vec!["f1-kept".into()],
        )]));
        let got = run(&solver, &g, f2, &f).await.expect("solves");
        assert_eq!(got, vec!["f2(f1-kept)"]);
        assert_eq!(f.runs(), vec!["base", "f2"]);
        // A run's plan key is the one the planning computed.
        assert_eq!(f.plans.lock().expect("not poisoned")[&f2.0], plans[&f2.0]);
    }

    #[tokio::test]
    async fn a_vertex_ignoring_the_cache_turns_plan_lookups_off() {
        let (solver, g, f2, first) = stages_solved().await;
        let plans = first.plans.lock().expect("not poisoned").clone();

        // `--no-cache-filter a`: the stage must run, so nothing may be
        // answered by a plan that skips it.
        let a1 = VertexId(1);
        let mut copy = g.vertex(a1).clone();
        copy.ignore_cache = true;
        let mut g2 = Graph::default();
        for (i, vx) in (0..=f2.0).map(|i| (i, g.vertex(VertexId(i)).clone())) {
            g2.add(if i == a1.0 { copy.clone() } else { vx })
                .expect("valid");
        }
        let g = g2;
        let f = importing(HashMap::from([(plans[&f2.0].clone(), vec!["kept".into()])]));
        let got = run(&solver, &g, f2, &f).await.expect("solves");
        assert_ne!(got, vec!["kept"]);
        assert!(f.runs().contains(&"a1".to_string()), "{:?}", f.runs());
    }

    #[tokio::test]
    async fn steps_below_a_known_plan_are_still_loaded_when_cached() {
        let (solver, g, f2, first) = stages_solved().await;
        let plans = first.plans.lock().expect("not poisoned").clone();
        let keys = first.solved_keys();

        // The cache holds every step (a single-stage build's cache, or
        // mode=max): each step is loaded under its own key, so the
        // records this build reports are the first build's.
        let f = Arc::new(Fake {
            imported: Some(Mutex::new(HashMap::from([(
                plans[&f2.0].clone(),
                vec!["kept".into()],
            )]))),
            store: Mutex::new(first.store.lock().expect("not poisoned").clone()),
            ..Fake::default()
        });
        run(&solver, &g, f2, &f).await.expect("solves");
        assert_eq!(
            f.runs(),
            Vec::<String>::new(),
            "the fake's store has the source too"
        );
        assert_eq!(f.solved_keys(), keys);
    }

    #[tokio::test]
    async fn a_known_plan_that_cannot_be_loaded_runs_what_it_reads() {
        let solver = Solver::new(4);
        let (g, f2) = stages("base");
        let first = Arc::new(Fake::default());
        let want = run(&solver, &g, f2, &first).await.expect("solves");
        let plans = first.plans.lock().expect("not poisoned").clone();
        let f = Arc::new(Fake {
            imported: Some(Mutex::new(HashMap::from([(
                plans[&f2.0].clone(),
                vec!["kept".into()],
            )]))),
            plans_broken: true,
            ..Fake::default()
        });
        let got = run(&solver, &g, f2, &f).await.expect("solves");
        assert_eq!(got, want);
        assert_eq!(f.runs(), vec!["base", "a1", "a2", "f1", "f2"]);
    }

    #[tokio::test]
    async fn a_cancelled_planned_solve_says_cancelled() {
        let (solver, g, f2, first) = stages_solved().await;
        let plans = first.plans.lock().expect("not poisoned").clone();
        let f = importing(HashMap::from([(plans[&f2.0].clone(), vec!["kept".into()])]));
        let cancel = CancellationToken::new();
        cancel.cancel();
        let err = solve(&solver, &g, f2, f.clone(), cancel)
            .await
            .expect_err("cancelled");
        assert!(matches!(err, SolveError::Cancelled), "{err}");
    }
}
