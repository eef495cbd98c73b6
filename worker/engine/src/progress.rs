//! Progress events of a build, in the shape of BuildKit's Status stream
//! (vertex started / log / completed) so the CLI renders them and the
//! daemon can forward them.

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
/// config, then `naming to` each name (the CLI and kilnd show the same).
pub fn image_export_items(manifest: &str, config: Option<&str>, names: &[&str]) -> Vec<String> {
    let mut items = vec![format!("exporting manifest {manifest}")];
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
    (Progress(Some(tx)), rx)
}

/// The sending side; a closed receiver is ignored.
#[derive(Clone, Debug)]
pub struct Progress(Option<mpsc::Sender<ProgressEvent>>);

impl Progress {
    pub fn new(tx: mpsc::Sender<ProgressEvent>) -> Self {
        Progress(Some(tx))
    }

    /// Progress that goes nowhere.
    pub fn none() -> Self {
        Progress(None)
    }

    /// Sends `e`, waiting while the queue is full.
    pub async fn send(&self, e: ProgressEvent) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(e).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_export_items_follow_buildkits_order() {
        assert_eq!(
            image_export_items("sha256:m", Some("sha256:c"), &["a:1", "", "b:2"]),
            [
                "exporting manifest sha256:m",
                "exporting config sha256:c",
                "naming to a:1",
                "naming to b:2"
            ]
        );
        assert_eq!(
            image_export_items("sha256:m", None, &[]),
            ["exporting manifest sha256:m"]
        );
    }
}
