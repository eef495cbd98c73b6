//! Progress display: BuildKit's plain style (`#N name`, output lines
//! prefixed with `#N`, `#N DONE 0.3s`), a live terminal view (finished
//! steps scroll up, running steps stay at the bottom with their elapsed
//! time), and raw JSON events.

use anyhow::{anyhow, Result};
use kiln_engine::ProgressEvent;
use std::collections::HashMap;
use std::io::Write;
use std::time::SystemTime;
use tokio::sync::mpsc::Receiver;

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
            "tty" => Ok(Mode::Tty),
            "auto" => Ok(if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                Mode::Tty
            } else {
                Mode::Plain
            }),
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
async fn render_json(mut rx: Receiver<ProgressEvent>) {
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
                "stream": if stream == kiln_engine::LogStream::Stdout { 1 } else { 2 },
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
            ProgressEvent::Status {
                vertex,
                id,
                current,
                total,
                started,
                completed,
            } => serde_json::json!({
                "vertex": vertex, "status": id, "current": current, "total": total,
                "started": nanos(started), "completed": completed.map(nanos),
            }),
        };
        let _ = writeln!(out.lock(), "{v}");
    }
}

/// A step the live view shows.
struct LiveStep {
    n: usize,
    name: String,
    started: std::time::Instant,
}

/// The bottom block of the live view: a header and one line per running
/// step, each cut to `width` columns.
fn live_block(
    running: &[LiveStep],
    done: usize,
    total: usize,
    elapsed: f64,
    now: std::time::Instant,
    width: usize,
) -> Vec<String> {
    let cut = |s: String| -> String {
        if s.chars().count() <= width {
            s
        } else {
            s.chars().take(width.saturating_sub(1)).collect::<String>() + "…"
        }
    };
    let mut lines = vec![cut(format!("[+] Building {elapsed:.1}s ({done}/{total})"))];
    for s in running {
        let t = now.duration_since(s.started).as_secs_f64();
        lines.push(cut(format!(" => #{} {}  {t:.1}s", s.n, s.name)));
    }
    lines
}

/// The live terminal view.
async fn render_tty(mut rx: Receiver<ProgressEvent>) {
    let width = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(100usize)
        .max(20);
    let began = std::time::Instant::now();
    let mut running: Vec<LiveStep> = Vec::new();
    let mut numbers: HashMap<usize, usize> = HashMap::new();
    let mut partial: HashMap<usize, Vec<u8>> = HashMap::new();
    let (mut next, mut done) = (1usize, 0usize);
    let mut drawn = 0usize;
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
    let out = std::io::stderr();
    loop {
        let event = tokio::select! {
            e = rx.recv() => match e { Some(e) => Some(e), None => break },
            _ = tick.tick() => None,
        };
        let mut o = out.lock();
        // Erase the previous live block.
        for _ in 0..drawn {
            let _ = write!(o, "\x1b[1A\x1b[2K");
        }
        match event {
            Some(ProgressEvent::Started { vertex, name, .. }) => {
                numbers.insert(vertex, next);
                running.push(LiveStep {
                    n: next,
                    name,
                    started: std::time::Instant::now(),
                });
                next += 1;
            }
            Some(ProgressEvent::Log { vertex, data, .. }) => {
                let n = numbers.get(&vertex).copied().unwrap_or(0);
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
            Some(ProgressEvent::Completed {
                vertex,
                name,
                cached,
                error,
                ..
            }) => {
                let n = numbers.get(&vertex).copied().unwrap_or(0);
                let secs = running
                    .iter()
                    .find(|s| s.n == n)
                    .map(|s| s.started.elapsed().as_secs_f64())
                    .unwrap_or(0.0);
                running.retain(|s| s.n != n);
                done += 1;
                let status = match (&error, cached) {
                    (Some(e), _) => format!("ERROR: {e}"),
                    (None, true) => "CACHED".to_string(),
                    (None, false) => format!("DONE {secs:.1}s"),
                };
                let _ = writeln!(o, " => #{n} {name}  {status}");
            }
            Some(ProgressEvent::Info { message }) => {
                let _ = writeln!(o, " => {message}");
            }
            Some(ProgressEvent::Status {
                vertex,
                id,
                current,
                total,
                started,
                completed: Some(at),
            }) => {
                let n = numbers.get(&vertex).copied().unwrap_or(0);
                let _ = writeln!(
                    o,
                    " => #{n} {}",
                    status_line(&id, current, total, started, Some(at))
                );
            }
            Some(ProgressEvent::Status { .. }) | None => {}
        }
        let block = live_block(
            &running,
            done,
            next - 1,
            began.elapsed().as_secs_f64(),
            std::time::Instant::now(),
            width,
        );
        for l in &block {
            let _ = writeln!(o, "{l}");
        }
        drawn = block.len();
        let _ = o.flush();
    }
    let mut o = out.lock();
    for _ in 0..drawn {
        let _ = write!(o, "\x1b[1A\x1b[2K");
    }
    let _ = writeln!(
        o,
        "[+] Building {:.1}s ({done}/{}) FINISHED",
        began.elapsed().as_secs_f64(),
        next - 1
    );
}

/// Renders events until the sender is dropped.
pub async fn render(rx: Receiver<ProgressEvent>, mode: Mode) {
    if mode == Mode::RawJson {
        return render_json(rx).await;
    }
    if mode == Mode::Tty {
        return render_tty(rx).await;
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
            // As BuildKit's plain output: one line per finished item.
            ProgressEvent::Status {
                vertex,
                id,
                current,
                total,
                started,
                completed: Some(at),
            } => {
                let n = numbers.get(&vertex).map(|v| v.0).unwrap_or(0);
                let _ = writeln!(
                    o,
                    "#{n} {}",
                    status_line(&id, current, total, started, Some(at))
                );
            }
            ProgressEvent::Status { .. } => {}
        }
    }
}

/// Bytes as BuildKit shows them: decimal units, up to 2 decimals.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    let num = format!("{v:.2}");
    let num = num.trim_end_matches('0').trim_end_matches('.');
    format!("{num}{}", UNITS[u])
}

/// One status of a vertex, BuildKit's way: `sha256:… 1.2MB / 3.4MB 0.3s done`
/// (only the id and the time when there is no byte count).
fn status_line(
    id: &str,
    current: u64,
    total: u64,
    started: SystemTime,
    completed: Option<SystemTime>,
) -> String {
    let mut line = id.to_string();
    if total > 0 {
        line += &format!(" {} / {}", human_bytes(current), human_bytes(total));
    } else if current > 0 {
        line += &format!(" {}", human_bytes(current));
    }
    if let Some(at) = completed {
        let secs = at
            .duration_since(started)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        line += &format!(" {secs:.1}s done");
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn the_live_block_shows_running_steps_with_their_time_cut_to_width() {
        let now = Instant::now();
        let running = vec![
            LiveStep {
                n: 3,
                name: "RUN make".into(),
                started: now - Duration::from_millis(1500),
            },
            LiveStep {
                n: 4,
                name: "RUN a very long command line that goes on and on".into(),
                started: now,
            },
        ];
        let b = live_block(&running, 2, 4, 2.0, now, 30);
        assert_eq!(b[0], "[+] Building 2.0s (2/4)");
        assert_eq!(b[1], " => #3 RUN make  1.5s");
        assert_eq!(b[2].chars().count(), 30);
        assert!(b[2].ends_with('…'));
    }

    #[test]
    fn a_finished_layer_reads_as_buildkit_shows_it() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let line = status_line(
            "sha256:abc",
            3_400_000,
            3_400_000,
            t0,
            Some(t0 + Duration::from_millis(300)),
        );
        assert_eq!(line, "sha256:abc 3.4MB / 3.4MB 0.3s done");
        assert_eq!(human_bytes(999), "999B");
        assert_eq!(human_bytes(1_234_567), "1.23MB");
        assert_eq!(
            status_line("resolve x", 0, 0, t0, Some(t0)),
            "resolve x 0.0s done"
        );
    }

    #[test]
    fn modes_parse() {
        assert_eq!(Mode::parse("plain").expect("plain"), Mode::Plain);
        assert_eq!(Mode::parse("tty").expect("tty"), Mode::Tty);
        assert_eq!(Mode::parse("rawjson").expect("rawjson"), Mode::RawJson);
        assert!(Mode::parse("fancy").is_err());
    }
}
