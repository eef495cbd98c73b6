//! Progress events of a build, in the shape of BuildKit's Status stream
//! (vertex started / log / completed) so the CLI renders them and the
//! daemon can forward them.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::sync::mpsc;

/// Which output stream a log chunk came from (1 = stdout, 2 = stderr, as
/// in BuildKit's VertexLog).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// One progress event.
#[derive(Clone, Debug)]
pub enum ProgressEvent {
    Started {
        vertex: usize,
        name: String,
        at: SystemTime,
    },
    Log {
        vertex: usize,
        stream: LogStream,
        data: Vec<u8>,
    },
    Completed {
        vertex: usize,
        name: String,
        cached: bool,
        error: Option<String>,
        at: SystemTime,
    },
    /// A message not tied to a vertex (exporting, naming).
    Info { message: String },
    /// Progress of one item inside a vertex, as BuildKit's VertexStatus:
    /// a pull reports one per layer (`id` = the layer digest, bytes
    /// `current` of `total`) and one for resolving the reference.
    Status {
        vertex: usize,
        id: String,
        current: u64,
        /// 0 when unknown.
        total: u64,
        started: SystemTime,
        completed: Option<SystemTime>,
    },
}

/// The items BuildKit's image exporter reports under `exporting to
/// image` once its layers are done, in its order: the manifest, the
/// config (for an index: each platform's manifest and config, `children`,
/// then `exporting manifest list`), then `naming to` each name (the CLI
/// and kilnd show the same).
pub fn image_export_items(
    manifest: &str,
    config: Option<&str>,
    children: &[(String, String)],
    names: &[&str],
) -> Vec<String> {
    let mut items = Vec::new();
    for (m, c) in children {
        items.push(format!("exporting manifest {m}"));
        items.push(format!("exporting config {c}"));
    }
    if children.is_empty() {
        items.push(format!("exporting manifest {manifest}"));
    } else {
        items.push(format!("exporting manifest list {manifest}"));
    }
    if let Some(c) = config.filter(|c| !c.is_empty()) {
        items.push(format!("exporting config {c}"));
    }
    items.extend(
        names
            .iter()
            .filter(|n| !n.is_empty())
            .map(|n| format!("naming to {n}")),
    );
    items
}

/// How many events may wait for the consumer before senders wait: a slow
/// consumer (a terminal, a Status client) slows the build down instead of
/// growing the queue. Step output is clipped before it gets here
/// ([`crate::steplog`]), so this bounds memory, not what is shown.
pub const QUEUE: usize = 256;

/// A bounded channel for one build's progress.
pub fn channel() -> (Progress, mpsc::Receiver<ProgressEvent>) {
    let (tx, rx) = mpsc::channel(QUEUE);
    (Progress::new(tx), rx)
}

/// The sending side; a closed receiver is ignored.
#[derive(Clone, Debug)]
pub struct Progress {
    tx: Option<mpsc::Sender<ProgressEvent>>,
    /// Set by [`Progress::once_per_vertex`]: the vertices started and
    /// completed so far.
    once: Option<Arc<Mutex<Shown>>>,
}

/// Which vertices a [`Progress::once_per_vertex`] has shown.
#[derive(Debug, Default)]
struct Shown {
    started: HashSet<usize>,
    completed: HashSet<usize>,
}

impl Progress {
    pub fn new(tx: mpsc::Sender<ProgressEvent>) -> Self {
        Progress {
            tx: Some(tx),
            once: None,
        }
    }

    /// Progress that goes nowhere.
    pub fn none() -> Self {
        Progress {
            tx: None,
            once: None,
        }
    }

    /// The same progress, showing each vertex started and completed once
    /// however many solves reach it: the platforms of a multi-platform
    /// build share their equal vertices, which BuildKit shows once.
    pub fn once_per_vertex(&self) -> Self {
        Progress {
            tx: self.tx.clone(),
            once: Some(Arc::default()),
        }
    }

    /// Sends `e`, waiting while the queue is full.
    pub async fn send(&self, e: ProgressEvent) {
        if let Some(once) = &self.once {
            let mut shown = once.lock().unwrap_or_else(|p| p.into_inner());
            let first = match &e {
                ProgressEvent::Started { vertex, .. } => shown.started.insert(*vertex),
                ProgressEvent::Completed { vertex, .. } => shown.completed.insert(*vertex),
                _ => true,
            };
            if !first {
                return;
            }
        }
        if let Some(tx) = &self.tx {
            let _ = tx.send(e).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A vertex two solves reach is started and completed once; its logs
    /// and other vertices pass.
    #[tokio::test]
    async fn once_per_vertex_shows_a_shared_vertex_once() {
        let (sender, mut rx) = channel();
        let p = sender.once_per_vertex();
        drop(sender);
        let at = SystemTime::now();
        let started = |vertex| ProgressEvent::Started {
            vertex,
            name: "v".into(),
            at,
        };
        let completed = |vertex, cached| ProgressEvent::Completed {
            vertex,
            name: "v".into(),
            cached,
            error: None,
            at,
        };
        let log = ProgressEvent::Log {
            vertex: 7,
            stream: LogStream::Stdout,
            data: b"x".to_vec(),
        };
        for e in [
            started(7),
            log.clone(),
            completed(7, false),
            started(7),
            completed(7, true),
            started(8),
            completed(8, true),
        ] {
            p.send(e).await;
        }
        drop(p);
        let mut seen = Vec::new();
        while let Some(e) = rx.recv().await {
            seen.push(match e {
                ProgressEvent::Started { vertex, .. } => format!("start {vertex}"),
                ProgressEvent::Completed { vertex, cached, .. } => {
                    format!("done {vertex} {cached}")
                }
                ProgressEvent::Log { vertex, .. } => format!("log {vertex}"),
                other => format!("{other:?}"),
            });
        }
        assert_eq!(
            seen,
            ["start 7", "log 7", "done 7 false", "start 8", "done 8 true"]
        );
    }

    #[test]
    fn image_export_items_follow_buildkits_order() {
        assert_eq!(
            image_export_items("sha256:m", Some("sha256:c"), &[], &["a:1", "", "b:2"]),
            [
                "exporting manifest sha256:m",
                "exporting config sha256:c",
                "naming to a:1",
                "naming to b:2"
            ]
        );
        assert_eq!(
            image_export_items("sha256:m", None, &[], &[]),
            ["exporting manifest sha256:m"]
        );
        let children = [
            ("sha256:m1".to_string(), "sha256:c1".to_string()),
            ("sha256:m2".to_string(), "sha256:c2".to_string()),
        ];
        assert_eq!(
            image_export_items("sha256:i", None, &children, &["a:1"]),
            [
                "exporting manifest sha256:m1",
                "exporting config sha256:c1",
                "exporting manifest sha256:m2",
                "exporting config sha256:c2",
                "exporting manifest list sha256:i",
                "naming to a:1"
            ]
        );
    }
}
