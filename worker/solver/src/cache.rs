//! Cache keys and the in-process dedup of equal work.
//!
//! A vertex's cache key is the digest of its op's definition and of a
//! digest for each input, which the runner computes from the input's
//! *result* (a layer chainID, or the content of the context files a COPY
//! selects). Equal keys mean equal results, so a key found in the cache is
//! a result that need not be computed again, and two vertices with one key
//! (in one build or in concurrent builds of one process) run once.
//!
//! A vertex's *plan key* stands for the work as planned rather than for
//! its inputs' results: its op, and for each input either the source's
//! content digest (a source's result is cheap and always fetched) or the
//! plan key of the step it comes from. It can be known before any step
//! runs, so an imported cache that kept only the final stage's results
//! (`mode=min`, inline) answers that stage without running the stages it
//! copies from, as BuildKit's definition-based keys do.

use crate::digest::Digest;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The cache key of an op given its definition digest and its inputs'
/// digests (in input order).
pub fn cache_key(op_digest: &Digest, inputs: &[Digest]) -> Digest {
    let mut text = format!("kiln.cachekey.v1\n{op_digest}\n");
    for d in inputs {
        text.push_str(d.as_str());
        text.push('\n');
    }
    Digest::of(text.as_bytes())
}

/// The plan key of an op given its definition digest and, for each input
/// (in input order), a source's content digest or `"<plan key>:<output>"`
/// of the step it comes from.
pub fn plan_key(op_digest: &Digest, inputs: &[String]) -> Digest {
    let mut text = format!("kiln.plankey.v1\n{op_digest}\n");
    for d in inputs {
        text.push_str(d);
        text.push('\n');
    }
    Digest::of(text.as_bytes())
}

/// Why a follower did not get outputs from its leader.
#[derive(Debug)]
pub enum FlightError<E> {
    /// The leader's work failed with this error, shared with every
    /// follower so each reports the same kind of failure.
    Failed(Arc<E>),
    /// The leader went away without an outcome (its build was cancelled,
    /// or its task panicked): nothing is known about the work itself.
    Abandoned,
}

impl<E> Clone for FlightError<E> {
    fn clone(&self) -> Self {
        match self {
            FlightError::Failed(e) => FlightError::Failed(e.clone()),
            FlightError::Abandoned => FlightError::Abandoned,
        }
    }
}

/// What followers of a running key receive.
type Shared<T, E> = Option<Result<Vec<T>, FlightError<E>>>;

/// Dedup of equal keys in flight: the first caller of a key leads (runs
/// it), later callers wait for the leader's outcome.
pub struct FlightControl<T, E> {
    inflight: Mutex<HashMap<Digest, watch::Receiver<Shared<T, E>>>>,
}

impl<T, E> Default for FlightControl<T, E> {
    fn default() -> Self {
        FlightControl {
            inflight: Mutex::new(HashMap::new()),
        }
    }
}

impl<T, E> std::fmt::Debug for FlightControl<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.inflight.lock().map_or(0, |m| m.len());
        f.debug_struct("FlightControl")
            .field("in_flight", &n)
            .finish()
    }
}

/// The role a caller got for a key.
pub enum Flight<T: Clone, E> {
    /// Run the work, then [`Leader::finish`].
    Leader(Leader<T, E>),
    /// Wait with [`Follower::wait`].
    Follower(Follower<T, E>),
}

/// The caller that runs the work of a key.
pub struct Leader<T, E> {
    key: Digest,
    tx: watch::Sender<Shared<T, E>>,
    control: Arc<FlightControl<T, E>>,
}

/// A caller waiting for the leader of its key.
pub struct Follower<T, E> {
    rx: watch::Receiver<Shared<T, E>>,
}

impl<T: Clone, E> std::fmt::Debug for Flight<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Flight::Leader(l) => f.debug_tuple("Leader").field(l).finish(),
            Flight::Follower(w) => f.debug_tuple("Follower").field(w).finish(),
        }
    }
}

impl<T, E> std::fmt::Debug for Leader<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Leader")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl<T, E> std::fmt::Debug for Follower<T, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower").finish_non_exhaustive()
    }
}

impl<T: Clone, E> FlightControl<T, E> {
    /// Joins the flight for `key`.
    pub fn join(self: &Arc<Self>, key: &Digest) -> Flight<T, E> {
        let mut map = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(rx) = map.get(key) {
            return Flight::Follower(Follower { rx: rx.clone() });
        }
        let (tx, rx) = watch::channel(None);
        map.insert(key.clone(), rx);
        Flight::Leader(Leader {
            key: key.clone(),
            tx,
            control: self.clone(),
        })
    }
}

impl<T, E> Leader<T, E> {
    /// Publishes the outcome to followers and ends the flight.
    pub fn finish(self, outcome: Result<Vec<T>, Arc<E>>) {
        let mut map = self
            .control
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.remove(&self.key);
        self.tx
            .send_replace(Some(outcome.map_err(FlightError::Failed)));
    }
}

impl<T, E> Drop for Leader<T, E> {
    fn drop(&mut self) {
        // A leader dropped without finishing (cancelled, or unwinding from
        // a panic) must not leave followers waiting forever, nor its key in
        // flight.
        if self.tx.borrow().is_none() {
            let mut map = self
                .control
                .inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if map
                .get(&self.key)
                .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
            {
                map.remove(&self.key);
            }
            let _ = self.tx.send(Some(Err(FlightError::Abandoned)));
        }
    }
}

impl<T: Clone, E> Follower<T, E> {
    /// The leader's outcome.
    pub async fn wait(mut self) -> Result<Vec<T>, FlightError<E>> {
        loop {
            if let Some(v) = self.rx.borrow().clone() {
                return v;
            }
            if self.rx.changed().await.is_err() {
                return Err(FlightError::Abandoned);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_depend_on_op_and_inputs_in_order() {
        let op = Digest::of(b"op");
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        assert_eq!(
            cache_key(&op, &[a.clone(), b.clone()]),
            cache_key(&op, &[a.clone(), b.clone()])
        );
        assert_ne!(
            cache_key(&op, &[a.clone(), b.clone()]),
            cache_key(&op, &[b, a.clone()])
        );
        assert_ne!(
            cache_key(&op, std::slice::from_ref(&a)),
            cache_key(&Digest::of(b"op2"), &[a])
        );
    }

    type Control = Arc<FlightControl<u32, std::io::Error>>;
    type Outcome = Result<Vec<u32>, FlightError<std::io::Error>>;

    /// A flight control with a leader and `n` followers of one key.
    fn flight(
        n: usize,
    ) -> (
        Control,
        Leader<u32, std::io::Error>,
        Vec<Follower<u32, std::io::Error>>,
    ) {
        let fc: Control = Arc::default();
        let key = Digest::of(b"k");
        let Flight::Leader(leader) = fc.join(&key) else {
            panic!("first caller leads")
        };
        let followers = (0..n)
            .map(|_| match fc.join(&key) {
                Flight::Follower(f) => f,
                Flight::Leader(_) => panic!("later callers follow"),
            })
            .collect();
        (fc, leader, followers)
    }

    fn led_again(fc: &Control) -> bool {
        matches!(fc.join(&Digest::of(b"k")), Flight::Leader(_))
    }

    async fn outcomes(followers: Vec<Follower<u32, std::io::Error>>) -> Vec<Outcome> {
        let mut out = Vec::new();
        for f in followers {
            out.push(f.wait().await);
        }
        out
    }

    #[tokio::test]
    async fn followers_get_the_leaders_outcome() {
        let (fc, leader, followers) = flight(2);
        leader.finish(Ok(vec![7]));
        for got in outcomes(followers).await {
            assert_eq!(got.expect("leader succeeded"), vec![7]);
        }
        assert!(led_again(&fc), "finished flights are gone");
    }

    #[tokio::test]
    async fn followers_share_the_leaders_error_itself() {
        let (_fc, leader, followers) = flight(1);
        let err = Arc::new(std::io::Error::from(std::io::ErrorKind::PermissionDenied));
        leader.finish(Err(err.clone()));
        match outcomes(followers).await.pop() {
            Some(Err(FlightError::Failed(got))) => {
                assert!(Arc::ptr_eq(&got, &err), "the same error, not a copy");
                assert_eq!(got.kind(), std::io::ErrorKind::PermissionDenied);
            }
            other => panic!("expected the leader's error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_followers() {
        let (fc, leader, followers) = flight(1);
        drop(leader);
        assert!(matches!(
            outcomes(followers).await.as_slice(),
            [Err(FlightError::Abandoned)]
        ));
        assert!(led_again(&fc), "an abandoned key can be led again");
    }
}
