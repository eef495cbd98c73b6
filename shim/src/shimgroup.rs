//! The runc shim that one executor's steps share, and the rule that keeps
//! a step's task off a shim that is exiting.
//!
//! Starting a shim per step is most of a short step's cost, so steps name
//! a shim group (`io.containerd.runc.v2.group`) and one shim serves them
//! all. containerd asks that shim to shut down after every task delete,
//! and it exits once it serves no container; it keeps listening for a
//! moment while it goes. A create that reaches it then fails with
//! "ttrpc: closed" and may leave runc state under the step's id, so a
//! second try with that id fails too ("container with given ID already
//! exists").
//!
//! So creates run under a shared lock and deletes under the exclusive
//! one, and the delete that leaves the group empty renames the group for
//! every later create: those start a fresh shim instead of finding the
//! one that is going away.
//!
//! Two creates must not start one group's shim at once: each start binds
//! the group's socket, and one that finds the other's socket before it
//! listens removes it as stale, so both fail ("create new shim socket:
//! chmod ...: no such file or directory", containerd 1.6 and 2.x). The
//! first create of a group therefore goes alone; the creates that arrive
//! meanwhile wait for it and then join its shim together.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMutexGuard, OwnedRwLockReadGuard, RwLock};

/// The annotation the runc v2 shim groups containers by.
pub(crate) const GROUP_ANNOTATION: &str = "io.containerd.runc.v2.group";

/// Tells executors of one process apart: each has shims of its own.
static EXECUTORS: AtomicU64 = AtomicU64::new(0);

/// The shim group of one executor.
#[derive(Clone, Debug)]
pub(crate) struct ShimGroup {
    prefix: Arc<str>,
    state: Arc<RwLock<Generation>>,
    /// Held by the create that starts the current generation's shim.
    starting: Arc<Mutex<()>>,
}

/// The group's current name (by number) and its tasks created and not yet
/// deleted. Every live task is in the current generation: the number only
/// moves on when none is left.
#[derive(Default, Debug)]
struct Generation {
    number: u64,
    live: AtomicUsize,
}

/// A task on its way into the group: while this is held, no delete of the
/// group's tasks runs, so its shim does not exit under the create. The
/// create that starts the shim also holds the group's start.
pub(crate) struct Joining {
    generation: OwnedRwLockReadGuard<Generation>,
    prefix: Arc<str>,
    starter: Option<OwnedMutexGuard<()>>,
}

impl Joining {
    /// The group name to put in the step's spec.
    pub(crate) fn name(&self) -> String {
        format!("{}-{}", self.prefix, self.generation.number)
    }

    /// Whether this create starts the group's shim (the others wait).
    #[cfg(test)]
    fn starts(&self) -> bool {
        self.starter.is_some()
    }

    /// The task was created: it counts until its delete, and the creates
    /// waiting for the shim's start go on.
    pub(crate) fn created(self) {
        self.generation.live.fetch_add(1, Ordering::SeqCst);
        drop(self.starter);
    }
}

impl ShimGroup {
    pub(crate) fn new() -> Self {
        let n = EXECUTORS.fetch_add(1, Ordering::Relaxed);
        ShimGroup {
            prefix: format!("kiln-{}-{n}", std::process::id()).into(),
            state: Arc::default(),
            starting: Arc::default(),
        }
    }

    /// Waits for deletes under way and, in a group with no live task, for
    /// the create that starts its shim; then lets a create in.
    pub(crate) async fn join(&self) -> Joining {
        let generation = self.state.clone().read_owned().await;
        // The generation cannot move on while its read guard is held, so
        // "no live task" stays true until a create in it succeeds.
        let starter = if generation.live.load(Ordering::SeqCst) == 0 {
            let start = self.starting.clone().lock_owned().await;
            (generation.live.load(Ordering::SeqCst) == 0).then_some(start)
        } else {
            None
        };
        Joining {
            generation,
            prefix: self.prefix.clone(),
            starter,
        }
    }

    /// Runs `delete` of a task created through [`Joining::created`], with
    /// no create under way; the group moves on to a new shim when it was
    /// the last task, whatever `delete` returned.
    pub(crate) async fn leave<T>(&self, delete: impl Future<Output = T>) -> T {
        let mut state = self.state.write().await;
        let out = delete.await;
        let left = state.live.load(Ordering::SeqCst).saturating_sub(1);
        state.live.store(left, Ordering::SeqCst);
        if left == 0 {
            state.number += 1;
        }
        out
    }

    /// After a create that failed: containerd may have shut the shim down
    /// with it, so a group with no live task moves on to a new shim.
    pub(crate) async fn abandon(&self, joining: Joining) {
        drop(joining);
        let mut state = self.state.write().await;
        if state.live.load(Ordering::SeqCst) == 0 {
            state.number += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_delete_of_the_last_task_moves_later_creates_to_a_new_shim() {
        let g = ShimGroup::new();
        let a = g.join().await;
        let first = a.name();
        a.created();
        let b = g.join().await;
        assert_eq!(b.name(), first, "a second task shares the shim");
        b.created();
        g.leave(async {}).await;
        assert_eq!(g.join().await.name(), first, "one task is still in it");
        g.leave(async {}).await;
        let next = g.join().await.name();
        assert_ne!(next, first, "the emptied shim is exiting");
        assert!(next.starts_with(&format!("kiln-{}-", std::process::id())));
    }

    #[tokio::test]
    async fn a_delete_waits_for_the_create_under_way() {
        let g = ShimGroup::new();
        let a = g.join().await;
        a.created();
        let creating = g.join().await;
        let g2 = g.clone();
        let deleted = tokio::spawn(async move { g2.leave(async {}).await });
        tokio::task::yield_now().await;
        assert!(!deleted.is_finished(), "the delete ran during a create");
        let name = creating.name();
        creating.created();
        deleted.await.expect("the delete");
        assert_eq!(g.join().await.name(), name, "the new task keeps the shim");
    }

    #[tokio::test]
    async fn the_first_create_starts_the_shim_alone() {
        let g = ShimGroup::new();
        let first = g.join().await;
        assert!(
            first.starts(),
            "the empty group's first create starts its shim"
        );
        let g2 = g.clone();
        let second = tokio::spawn(async move { g2.join().await });
        tokio::task::yield_now().await;
        assert!(
            !second.is_finished(),
            "a second create ran beside the shim's start"
        );
        let name = first.name();
        first.created();
        let second = second.await.expect("the second create");
        assert!(
            !second.starts(),
            "the shim runs: the second create joins it"
        );
        assert_eq!(second.name(), name);
        let third = g.join().await;
        assert!(!third.starts(), "creates into a live group run together");
        second.created();
        third.created();
    }

    #[tokio::test]
    async fn a_failed_start_lets_the_next_create_start_the_shim() {
        let g = ShimGroup::new();
        let first = g.join().await;
        let g2 = g.clone();
        let second = tokio::spawn(async move { g2.join().await });
        tokio::task::yield_now().await;
        // The abandon's move to a new generation waits for the create
        // under way, so it runs beside this test's.
        let g3 = g.clone();
        let abandoned = tokio::spawn(async move { g3.abandon(first).await });
        let second = second.await.expect("the second create");
        assert!(
            second.starts(),
            "no shim runs yet: the next create starts it"
        );
        second.created();
        abandoned.await.expect("the abandon");
    }

    #[tokio::test]
    async fn a_failed_create_in_an_empty_group_moves_on() {
        let g = ShimGroup::new();
        let j = g.join().await;
        let first = j.name();
        g.abandon(j).await;
        assert_ne!(g.join().await.name(), first);
        let other = ShimGroup::new();
        assert_ne!(other.join().await.name(), g.join().await.name());
    }
}
