//! Claims (`claim.rs`): two engines on one fake containerd stand for two
//! kiln processes building the same step at once.

use super::{build, fixture, request, Fixture};
use crate::claim;
use crate::error::WorkerError;
use crate::progress::{self, ProgressEvent};
use crate::prune::{self, PruneOptions};
use kiln_shim::testing::{FakeExecutor, FakeOutcome};
use kiln_snapshot::containerd::LeaseId;
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

/// The vertex of [`request`]'s RUN step.
const RUN: usize = 1;

/// Waits (without a deadline of its own) until `f` holds.
async fn until(mut f: impl FnMut() -> bool) {
    while !f() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Receives events until the RUN vertex is shown as started; returns
/// every event seen.
async fn until_started(rx: &mut mpsc::Receiver<ProgressEvent>) -> Vec<ProgressEvent> {
    let mut seen = Vec::new();
    while let Some(e) = rx.recv().await {
        let started = matches!(e, ProgressEvent::Started { vertex: RUN, .. });
        seen.push(e);
        if started {
            return seen;
        }
    }
    panic!("the progress stream ended before the step started: {seen:?}");
}

async fn claims(fx: &Fixture) -> Vec<String> {
    fx.lease_ids()
        .await
        .into_iter()
        .filter(|l| l.starts_with("kiln/claim/"))
        .collect()
}

/// A gated first step for `exec`: it runs until the gate opens, then exits
/// with `code`.
fn gated(exec: &FakeExecutor, code: u32) -> Arc<Notify> {
    let gate = Arc::new(Notify::new());
    exec.push(FakeOutcome::Gated {
        gate: gate.clone(),
        code,
    });
    gate
}

#[tokio::test]
async fn a_step_two_builds_need_at_once_runs_once_and_the_waiter_gets_its_result() {
    let fx = fixture();
    let (ea, eb) = (FakeExecutor::new(), FakeExecutor::new());
    let gate = gated(&ea, 0);
    let a = fx.engine("a", &ea);
    let ta =
        tokio::spawn(
            async move { build(&a, request(&["date"], &["docker.io/library/a:1"])).await },
        );
    until(|| ea.steps().len() == 1).await;
    assert_eq!(claims(&fx).await.len(), 1, "the running step is claimed");

    let b = fx.engine("b", &eb);
    let (tx, mut rx) = progress::channel();
    let tb = tokio::spawn(async move {
        b.build(
            request(&["date"], &["docker.io/library/b:1"]),
            tx,
            CancellationToken::new(),
        )
        .await
    });
    // The waiting build shows the step as started while the other runs it.
    let mut events = until_started(&mut rx).await;
    assert!(eb.steps().is_empty(), "the waiter runs nothing");
    gate.notify_one();
    let ra = ta.await.expect("task").expect("build a");
    let rb = tb.await.expect("task").expect("build b");
    while let Some(e) = rx.recv().await {
        events.push(e);
    }

    assert_eq!(ea.steps().len(), 1);
    assert!(eb.steps().is_empty(), "the step ran once, in a");
    assert_eq!(
        ra.manifest_digest, rb.manifest_digest,
        "both images hold the one run's layer"
    );
    let of_run: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            ProgressEvent::Started { vertex: RUN, .. } => Some("started".to_string()),
            ProgressEvent::Completed {
                vertex: RUN,
                cached,
                error,
                ..
            } => Some(format!("completed cached={cached} error={error:?}")),
            _ => None,
        })
        .collect();
    assert_eq!(of_run, ["started", "completed cached=true error=None"]);
    assert_eq!(claims(&fx).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_failed_holder_lets_go_and_the_waiter_runs_the_step_itself() {
    let fx = fixture();
    let (ea, eb) = (FakeExecutor::new(), FakeExecutor::new());
    let gate = gated(&ea, 7);
    let a = fx.engine("a", &ea);
    let ta = tokio::spawn(async move { build(&a, request(&["date"], &[])).await });
    until(|| ea.steps().len() == 1).await;
    let b = fx.engine("b", &eb);
    let (tx, mut rx) = progress::channel();
    let tb = tokio::spawn(async move {
        b.build(request(&["date"], &[]), tx, CancellationToken::new())
            .await
    });
    until_started(&mut rx).await;
    gate.notify_one();
    let err = ta.await.expect("task").expect_err("a's step fails");
    assert!(
        matches!(err, WorkerError::StepFailed { code: 7, .. }),
        "{err:?}"
    );
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    // A claim left behind would keep b waiting (its holder, this
    // process, is alive): bounded, so that fails instead of hanging.
    tokio::time::timeout(std::time::Duration::from_secs(60), tb)
        .await
        .expect("the waiter is not left waiting")
        .expect("task")
        .expect("b runs the step itself");
    assert_eq!(eb.steps().len(), 1);
    assert_eq!(claims(&fx).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_waiting_build_is_cancelled_and_leaves_the_claim_to_its_holder() {
    let fx = fixture();
    let (ea, eb) = (FakeExecutor::new(), FakeExecutor::new());
    let gate = gated(&ea, 0);
    let a = fx.engine("a", &ea);
    let ta = tokio::spawn(async move { build(&a, request(&["date"], &[])).await });
    until(|| ea.steps().len() == 1).await;
    let held = claims(&fx).await;
    let b = fx.engine("b", &eb);
    let (tx, mut rx) = progress::channel();
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let tb = tokio::spawn(async move { b.build(request(&["date"], &[]), tx, stop).await });
    until_started(&mut rx).await;
    cancel.cancel();
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let err = tb.await.expect("task").expect_err("cancelled");
    assert!(matches!(err, WorkerError::Cancelled), "{err:?}");
    assert!(eb.steps().is_empty());
    assert_eq!(claims(&fx).await, held, "the holder still holds it");
    gate.notify_one();
    ta.await.expect("task").expect("a finishes");
    assert_eq!(claims(&fx).await, Vec::<String>::new());
    assert!(
        fx.lease_ids()
            .await
            .iter()
            .all(|l| !l.starts_with("kiln/build/")),
        "no build lease is left"
    );
}

/// The claim lease of [`request`]'s RUN step (`args`): a build in another
/// namespace finds the key through its cache record.
async fn run_claim(args: &[&str]) -> LeaseId {
    let other = fixture();
    build(&other.engine("x", &FakeExecutor::new()), request(args, &[]))
        .await
        .expect("build");
    let records = prune::disk_usage(&other.svc).await.expect("du");
    let run = records
        .iter()
        .find(|r| r.description == "RUN")
        .expect("the RUN step's record");
    let hex = run
        .lease
        .id
        .rsplit('/')
        .next()
        .expect("a record lease has a key");
    LeaseId::named(claim::LEASE_KIND, hex)
}

/// Labels of a claim held by build `build` of a process that is gone.
fn dead_holder(build: &LeaseId) -> std::collections::HashMap<String, String> {
    let mut labels = claim::holder_labels(build);
    // This pid with another start time: a process that is gone.
    labels.insert(crate::sweep::START_LABEL.into(), "1".into());
    labels
}

#[tokio::test]
async fn a_stale_claim_is_taken_over_here_and_from_another_host() {
    let id = run_claim(&["date"]).await;
    let fx = fixture();
    let leases = &fx.svc.leases;
    let build_lease = LeaseId::named("build", "gone");

    // Its process died on this host.
    leases
        .create(&id, claim::LEASE_KIND, None, dead_holder(&build_lease))
        .await
        .expect("claim");
    let exec = FakeExecutor::new();
    let engine = fx.engine("a", &exec);
    build(&engine, request(&["date"], &[]))
        .await
        .expect("the build takes the claim over");
    assert_eq!(exec.steps().len(), 1);
    assert_eq!(claims(&fx).await, Vec::<String>::new());

    // Another host's build whose lease is gone.
    prune::prune(&fx.svc, &PruneOptions::default())
        .await
        .expect("prune");
    let mut elsewhere = claim::holder_labels(&build_lease);
    elsewhere.insert(crate::sweep::HOST_LABEL.into(), "another-host".into());
    leases
        .create(&id, claim::LEASE_KIND, None, elsewhere)
        .await
        .expect("claim");
    build(&engine, request(&["date"], &[]))
        .await
        .expect("the build takes the claim over");
    assert_eq!(exec.steps().len(), 2);
    assert_eq!(claims(&fx).await, Vec::<String>::new());
}

#[tokio::test]
async fn sweep_and_prune_delete_stale_claims_and_keep_live_ones() {
    let fx = fixture();
    let engine = fx.engine("a", &FakeExecutor::new());
    let leases = &fx.svc.leases;
    let live_build = LeaseId::named("build", "live");
    let (dead, live) = (
        LeaseId::named(claim::LEASE_KIND, "dead"),
        LeaseId::named(claim::LEASE_KIND, "live"),
    );
    let create_dead = || async {
        leases
            .create(
                &dead,
                claim::LEASE_KIND,
                None,
                dead_holder(&LeaseId::named("build", "dead")),
            )
            .await
            .expect("dead claim");
    };
    create_dead().await;
    leases
        .create(
            &live,
            claim::LEASE_KIND,
            None,
            claim::holder_labels(&live_build),
        )
        .await
        .expect("live claim");
    engine.sweep().await.expect("sweep");
    assert_eq!(claims(&fx).await, [live.to_string()]);
    create_dead().await;
    let report = prune::prune(&fx.svc, &PruneOptions::default())
        .await
        .expect("prune");
    assert!(report.removed.is_empty(), "claims are not cache records");
    assert!(prune::disk_usage(&fx.svc).await.expect("du").is_empty());
    assert_eq!(claims(&fx).await, [live.to_string()]);
}
