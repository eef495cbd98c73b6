//! containerd's garbage collection over the in-memory state: mark from
//! the roots (live leases, images, `containerd.io/gc.root`), follow
//! `containerd.io/gc.ref.*` labels and snapshot parents, sweep the rest.

use super::store::{Lease, Namespace};
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::SystemTime;

/// Label that makes an object a GC root by itself.
const GC_ROOT: &str = "containerd.io/gc.root";
/// Prefix of labels referencing content (`…content`, `…content.<name>`
/// or `…content/<name>`).
const GC_REF_CONTENT: &str = "containerd.io/gc.ref.content";
/// Prefix of labels referencing a snapshot of a snapshotter
/// (`…snapshot.<snapshotter>` or `…snapshot.<snapshotter>/<name>`).
const GC_REF_SNAPSHOT: &str = "containerd.io/gc.ref.snapshot.";

/// A node of the GC graph; `flat` nodes (held by a flat lease) do not
/// follow their labels.
#[derive(Clone, PartialEq, Eq, Hash)]
enum Node {
    Content { digest: String, flat: bool },
    Snapshot { key: String, flat: bool },
}

/// The objects `labels` reference through `containerd.io/gc.ref.*`
/// (snapshots only of `snapshotter`, the one this containerd has).
fn label_refs(labels: &HashMap<String, String>, snapshotter: &str, out: &mut Vec<Node>) {
    for (k, v) in labels {
        if let Some(rest) = k.strip_prefix(GC_REF_CONTENT) {
            if rest.is_empty() || rest.starts_with('.') || rest.starts_with('/') {
                out.push(Node::Content {
                    digest: v.clone(),
                    flat: false,
                });
            }
        } else if let Some(rest) = k.strip_prefix(GC_REF_SNAPSHOT) {
            let name = rest.split('/').next().unwrap_or_default();
            if name == snapshotter {
                out.push(Node::Snapshot {
                    key: v.clone(),
                    flat: false,
                });
            }
        }
    }
}

/// Marks and sweeps one namespace; returns the directories of the
/// snapshots it removed.
pub(crate) fn collect_namespace(
    ns: &mut Namespace,
    snapshotter: &str,
    now: SystemTime,
) -> Vec<PathBuf> {
    let live = |l: &Lease| l.expires.is_none_or(|e| now <= e);
    let mut grey: Vec<Node> = Vec::new();
    for l in ns.leases.values().filter(|l| live(l)) {
        grey.extend(l.content.iter().map(|d| Node::Content {
            digest: d.clone(),
            flat: l.flat,
        }));
        grey.extend(l.snapshots.iter().map(|k| Node::Snapshot {
            key: k.clone(),
            flat: l.flat,
        }));
    }
    for img in ns.images.values() {
        grey.push(Node::Content {
            digest: img.digest.clone(),
            flat: false,
        });
        label_refs(&img.labels, snapshotter, &mut grey);
    }
    for (d, b) in &ns.blobs {
        if b.labels.contains_key(GC_ROOT) {
            grey.push(Node::Content {
                digest: d.clone(),
                flat: false,
            });
        }
    }
    for (k, s) in &ns.snapshots {
        if s.labels.contains_key(GC_ROOT) {
            grey.push(Node::Snapshot {
                key: k.clone(),
                flat: false,
            });
        }
    }

    let mut seen: HashSet<Node> = HashSet::new();
    let mut content: HashSet<String> = HashSet::new();
    let mut snapshots: HashSet<String> = HashSet::new();
    while let Some(n) = grey.pop() {
        if !seen.insert(n.clone()) {
            continue;
        }
        match n {
            Node::Content { digest, flat } => {
                // A reference to absent content is a dead edge.
                let Some(b) = ns.blobs.get(&digest) else {
                    continue;
                };
                if !flat {
                    label_refs(&b.labels, snapshotter, &mut grey);
                }
                content.insert(digest);
            }
            Node::Snapshot { key, flat } => {
                let Some(s) = ns.snapshots.get(&key) else {
                    continue;
                };
                if !s.parent.is_empty() {
                    grey.push(Node::Snapshot {
                        key: s.parent.clone(),
                        flat,
                    });
                }
                if !flat {
                    label_refs(&s.labels, snapshotter, &mut grey);
                }
                snapshots.insert(key);
            }
        }
    }

    ns.leases.retain(|_, l| live(l));
    ns.blobs.retain(|d, _| content.contains(d));
    let mut dirs = Vec::new();
    ns.snapshots.retain(|k, s| {
        let keep = snapshots.contains(k);
        if !keep {
            dirs.push(s.dir.clone());
        }
        keep
    });
    dirs
}
