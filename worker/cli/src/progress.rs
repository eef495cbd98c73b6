//! Progress display: BuildKit's plain style (`#N name`, output lines
//! prefixed with `#N`, `#N DONE 0.3s`).

use anyhow::{anyhow, Result};
use kiln_worker::ProgressEvent;
use std::collections::HashMap;
use std::io::Write;
use std::time::SystemTime;
use tokio::sync::mpsc::UnboundedReceiver;

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Plain,
    Tty,
    /// One JSON object per event on stderr, with times, for tools.
    RawJson,
}

impl Mode {
    pub fn parse(s: &str) -> Result<Mode> {
        match s {
            "plain" => Ok(Mode::Plain),
            // Live line rewriting comes later; a terminal gets the same
            // stream for now.
            "tty" | "auto" => Ok(Mode::Tty),
            "rawjson" => Ok(Mode::RawJson),
            other => Err(anyhow!(
                "invalid --progress {other:?}: use auto, plain, tty or rawjson"
            )),
        }
    }
}

fn nanos(t: SystemTime) -> u128 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Writes events as JSON lines until the sender is dropped.
async fn render_json(mut rx: UnboundedReceiver<ProgressEvent>) {
    let out = std::io::stderr();
    while let Some(e) = rx.recv().await {
        let v = match e {
            ProgressEvent::Started { vertex, name, at } => serde_json::json!({
                "vertex": vertex, "name": name, "started": nanos(at),
            }),
            ProgressEvent::Log {
                vertex,
                stream,
                data,
            } => serde_json::json!({
                "vertex": vertex,
                "stream": if stream == kiln_worker::LogStream::Stdout { 1 } else { 2 },
                "data": String::from_utf8_lossy(&data),
            }),
            ProgressEvent::Completed {
                vertex,
                name,
                cached,
                error,
                at,
            } => serde_json::json!({
                "vertex": vertex, "name": name, "completed": nanos(at), "cached": cached, "error": error,
            }),
            ProgressEvent::Info { message } => serde_json::json!({ "info": message }),
        };
        let _ = writeln!(out.lock(), "{v}");
    }
}

/// Renders events until the sender is dropped.
pub async fn render(rx: UnboundedReceiver<ProgressEvent>, mode: Mode) {
    if mode == Mode::RawJson {
        return render_json(rx).await;
    }
    let mut rx = rx;
    let mut numbers: HashMap<usize, (usize, SystemTime)> = HashMap::new();
    let mut next = 1;
    let mut partial: HashMap<usize, Vec<u8>> = HashMap::new();
    let out = std::io::stderr();
    while let Some(e) = rx.recv().await {
        let mut o = out.lock();
        match e {
            ProgressEvent::Started { vertex, name, at } => {
                numbers.insert(vertex, (next, at));
                let _ = writeln!(o, "#{next} {name}");
                next += 1;
            }
            ProgressEvent::Log { vertex, data, .. } => {
                let n = numbers.get(&vertex).map(|v| v.0).unwrap_or(0);
                let buf = partial.entry(vertex).or_default();
                buf.extend_from_slice(&data);
                while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=pos).collect();
                    let _ = writeln!(
                        o,
                        "#{n} {}",
                        String::from_utf8_lossy(&line[..line.len() - 1])
                    );
                }
            }
            ProgressEvent::Completed {
                vertex,
                cached,
                error,
                at,
                ..
            } => {
                let (n, start) = numbers.get(&vertex).copied().unwrap_or((0, at));
                if let Some(rest) = partial.remove(&vertex) {
                    if !rest.is_empty() {
                        let _ = writeln!(o, "#{n} {}", String::from_utf8_lossy(&rest));
                    }
                }
                let secs = at
                    .duration_since(start)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0);
                match (error, cached) {
                    (Some(err), _) => {
                        let _ = writeln!(o, "#{n} ERROR: {err}");
                    }
                    (None, true) => {
                        let _ = writeln!(o, "#{n} CACHED");
                    }
                    (None, false) => {
                        let _ = writeln!(o, "#{n} DONE {secs:.1}s");
                    }
                }
            }
            ProgressEvent::Info { message } => {
                let _ = writeln!(o, "#{next} {message}");
                next += 1;
            }
        }
    }
}
