//! Which cache records the running builds of an engine hold, for `du`'s
//! "in use" (BuildKit's `InUse`: a record with an open reference) and so
//! that a prune leaves them alone.
//!
//! A build holds the record of every vertex its solve has answered (a hit
//! it loaded, a step it ran and saved) from that moment until its result
//! is released: its [`BuildCache`] lists them, and lives exactly that long
//! (the runner holds it during the solve, [`crate::build::Solved`] until
//! release). The engine keeps a weak reference to each build's; what no
//! longer upgrades has ended. So nothing has to be unregistered, and a
//! build that fails or is cancelled stops holding its records when its
//! cache is dropped.
//!
//! This is what one engine (one kilnd tenant, one `kiln build`) knows;
//! another process's builds are not seen.

use crate::remotecache::BuildCache;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};

/// The builds of one engine whose records are in use.
#[derive(Debug, Default)]
pub struct InUse {
    builds: Mutex<Vec<Weak<BuildCache>>>,
}

impl InUse {
    /// Counts the records `cache` answers as in use while it lives.
    pub fn track(&self, cache: &Arc<BuildCache>) {
        let mut b = self.builds.lock().unwrap_or_else(|p| p.into_inner());
        b.retain(|w| w.strong_count() > 0);
        b.push(Arc::downgrade(cache));
    }

    /// The lease IDs of the records the running builds hold.
    pub fn record_ids(&self) -> HashSet<String> {
        let live: Vec<Arc<BuildCache>> = {
            let mut b = self.builds.lock().unwrap_or_else(|p| p.into_inner());
            b.retain(|w| w.strong_count() > 0);
            b.iter().filter_map(Weak::upgrade).collect()
        };
        live.iter()
            .flat_map(|c| c.answered_keys())
            .map(|k| crate::cache::lease_for(&k).to_string())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_solver::{Digest, Graph, VertexId};

    #[test]
    fn a_builds_answered_records_are_held_until_its_cache_is_dropped() {
        let inuse = InUse::default();
        let graph = Graph::default();
        let cache = Arc::new(BuildCache::new(&graph, VertexId(0), Vec::new()));
        inuse.track(&cache);
        assert!(inuse.record_ids().is_empty());
        let key = Digest::of(b"step");
        cache.note(VertexId(0), &key, &[]);
        let id = crate::cache::lease_for(&key).to_string();
        assert_eq!(inuse.record_ids(), HashSet::from([id]));
        drop(cache);
        assert!(inuse.record_ids().is_empty());
    }
}
