//! Cache keys and the in-process dedup of equal work.
//!
//! A vertex's cache key is the digest of its op's definition and of a
//! digest for each input, which the runner computes from the input's
//! *result* (a layer chainID, or the content of the context files a COPY
//! selects). Equal keys mean equal results, so a key found in the cache is
//! a result that need not be computed again, and two vertices with one key
//! (in one build or in concurrent builds of one process) run once.

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

/// What followers of a running key receive.
type Shared<T> = Option<Result<Vec<T>, String>>;

/// Dedup of equal keys in flight: the first caller of a key leads (runs
/// it), later callers wait for the leader's outcome.
pub struct FlightControl<T> {
    inflight: Mutex<HashMap<Digest, watch::Receiver<Shared<T>>>>,
}

impl<T> Default for FlightControl<T> {
    fn default() -> Self {
        FlightControl {
            inflight: Mutex::new(HashMap::new()),
        }
    }
}

/// The role a caller got for a key.
pub enum Flight<T: Clone> {
    /// Run the work, then [`Leader::finish`].
    Leader(Leader<T>),
    /// Wait with [`Follower::wait`].
    Follower(Follower<T>),
}

pub struct Leader<T> {
    key: Digest,
    tx: watch::Sender<Shared<T>>,
    control: Arc<FlightControl<T>>,
}

pub struct Follower<T> {
    rx: watch::Receiver<Shared<T>>,
}

impl<T: Clone> FlightControl<T> {
    /// Joins the flight for `key`.
    pub fn join(self: &Arc<Self>, key: &Digest) -> Flight<T> {
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

impl<T: Clone> Leader<T> {
    /// Publishes the outcome to followers and ends the flight.
    pub fn finish(self, outcome: Result<Vec<T>, String>) {
        let mut map = self
            .control
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        map.remove(&self.key);
        self.tx.send_replace(Some(outcome));
    }
}

impl<T> Drop for Leader<T> {
    fn drop(&mut self) {
        // A leader dropped without finishing (cancelled) must not leave
        // followers waiting forever, nor its key in flight.
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
            let _ = self.tx.send(Some(Err(
                "the equal step it waited for was cancelled".into()
            )));
        }
    }
}

impl<T: Clone> Follower<T> {
    /// The leader's outcome.
    pub async fn wait(mut self) -> Result<Vec<T>, String> {
        loop {
            if let Some(v) = self.rx.borrow().clone() {
                return v;
            }
            if self.rx.changed().await.is_err() {
                return Err("the equal step it waited for went away".into());
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

    #[tokio::test]
    async fn followers_get_the_leaders_outcome() {
        let fc: Arc<FlightControl<u32>> = Arc::default();
        let key = Digest::of(b"k");
        let Flight::Leader(leader) = fc.join(&key) else {
            panic!("first caller leads")
        };
        let Flight::Follower(f) = fc.join(&key) else {
            panic!("second caller follows")
        };
        leader.finish(Ok(vec![7]));
        assert_eq!(f.wait().await, Ok(vec![7]));
        assert!(
            matches!(fc.join(&key), Flight::Leader(_)),
            "finished flights are gone"
        );
    }

    #[tokio::test]
    async fn a_dropped_leader_releases_followers() {
        let fc: Arc<FlightControl<u32>> = Arc::default();
        let key = Digest::of(b"k");
        let leader = fc.join(&key);
        let Flight::Follower(f) = fc.join(&key) else {
            panic!("second caller follows")
        };
        drop(leader);
        assert!(f.wait().await.is_err());
    }
}
