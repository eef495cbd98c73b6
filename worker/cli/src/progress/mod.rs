//! Progress display, as buildx shows it. Both kinds of build feed one
//! model ([`model::SolveStatus`], BuildKit's `client.SolveStatus`): kilnd's
//! Status stream converts to it one to one and the embedded engine's
//! events through [`model::Embedded`]. The displays read only the model:
//! `plain` ([`plain`]), `tty` ([`tty`]), `rawjson` ([`json`]) and `quiet`.
//! After a failed build the plain and tty displays print BuildKit's recap
//! of the failed steps; [`source`] prints the Dockerfile snippet under it.

pub mod internal;
pub mod json;
pub mod model;
pub mod plain;
pub mod source;
pub mod tty;

use anyhow::{anyhow, Result};
use model::{SolveStatus, Trace};
use std::io::Write;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc::{Receiver, Sender};

/// How progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Plain,
    Tty,
    /// One `client.SolveStatus` JSON object per line on stderr.
    RawJson,
    /// Nothing (the failure recap neither).
    Quiet,
}

const MODES: &str = "auto, plain, tty, rawjson or quiet";

impl Mode {
    /// `auto` is `tty` when stderr is a terminal, else `plain`.
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
            // buildx's `none` shows nothing too.
            "quiet" | "none" => Ok(Mode::Quiet),
            other => Err(anyhow!("invalid --progress {other:?}: use {MODES}")),
        }
    }

    /// The `--progress` flag, else `BUILDKIT_PROGRESS` (as buildx), else
    /// `auto`.
    pub fn resolve(flag: Option<&str>, env: Option<&str>) -> Result<Mode> {
        match (flag, env.filter(|e| !e.is_empty())) {
            (Some(f), _) => Mode::parse(f),
            (None, Some(e)) => {
                Mode::parse(e).map_err(|_| anyhow!("invalid BUILDKIT_PROGRESS {e:?}: use {MODES}"))
            }
            (None, None) => Mode::parse("auto"),
        }
    }
}

/// How long the plain display gathers updates before printing them.
const BATCH: Duration = Duration::from_millis(100);

/// How many updates may wait for the display.
const QUEUE: usize = 256;

/// A channel of updates for [`render`].
pub fn channel() -> (Sender<SolveStatus>, Receiver<SolveStatus>) {
    tokio::sync::mpsc::channel(QUEUE)
}

/// The embedded engine's events, turned into updates for the display by
/// `embedded` (shared so the caller can add its own vertexes to it).
/// A local source's transfer (`transfers`) shows on its vertex when
/// that completes without error, as kilnd shows it.
pub async fn forward_engine(
    mut rx: Receiver<kiln_engine::ProgressEvent>,
    embedded: std::sync::Arc<std::sync::Mutex<model::Embedded>>,
    transfers: std::sync::Arc<internal::Transfers>,
    tx: Sender<SolveStatus>,
) {
    while let Some(e) = rx.recv().await {
        let transfer = match &e {
            kiln_engine::ProgressEvent::Completed {
                vertex,
                error: None,
                at,
                ..
            } => transfers
                .done(*vertex)
                .await
                .map(|(id, bytes)| (*vertex, id, bytes, *at)),
            _ => None,
        };
        let update = {
            let mut model = embedded.lock().unwrap_or_else(|p| p.into_inner());
            let mut update = model.event(e);
            if let Some((vertex, id, bytes, at)) = transfer {
                update
                    .statuses
                    .push(model.transferred(vertex, &id, bytes, at));
            }
            update
        };
        if tx.send(update).await.is_err() {
            return;
        }
    }
}

/// A build that failed in the solver: printed by [`crate::main`] after the
/// progress as buildx does (the Dockerfile snippets, then `ERROR: failed
/// to solve: …`).
#[derive(Debug)]
pub struct SolveFailed {
    pub message: String,
    pub sources: Vec<model::Source>,
}

impl std::fmt::Display for SolveFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SolveFailed {}

impl SolveFailed {
    /// What buildx prints after the progress for this error.
    pub fn print(&self, w: &mut dyn Write) {
        for s in &self.sources {
            source::print(s, w);
        }
        // Current buildx's wording (before v0.24: `ERROR: failed to solve`).
        let _ = writeln!(
            w,
            "ERROR: failed to build: failed to solve: {}",
            self.message
        );
    }
}

/// Shows updates until every sender is dropped, then the recap of failed
/// steps (plain and tty); returns what the build reported.
pub async fn render(mut rx: Receiver<SolveStatus>, mode: Mode) -> Trace {
    let mut t = Trace::default();
    let err = std::io::stderr();
    match mode {
        Mode::Quiet => {
            while let Some(u) = rx.recv().await {
                t.update(&u);
            }
            return t;
        }
        Mode::RawJson => {
            while let Some(u) = rx.recv().await {
                t.update(&u);
                // An update with nothing in it (the embedded engine's
                // bookkeeping) is not printed: BuildKit never sends one.
                if u != SolveStatus::default() {
                    let _ = writeln!(err.lock(), "{}", json::line(&u));
                }
            }
            return t;
        }
        Mode::Plain => {
            // Updates are printed in batches, as BuildKit's display does
            // on its refresh tick: a vertex reported done and restarted in
            // two messages is then one step, not two.
            let mut p = plain::Plain::default();
            while let Some(u) = rx.recv().await {
                t.update(&u);
                let tick = tokio::time::Instant::now() + BATCH;
                while let Ok(Some(u)) = tokio::time::timeout_at(tick, rx.recv()).await {
                    t.update(&u);
                }
                p.print(&mut t, &mut err.lock());
            }
            p.finish(&mut t, &mut err.lock());
        }
        Mode::Tty => render_tty(&mut rx, &mut t).await,
    }
    plain::recap(&mut t, &mut err.lock());
    t
}

async fn render_tty(rx: &mut Receiver<SolveStatus>, t: &mut Trace) {
    let began = SystemTime::now();
    let mut screen = tty::Screen::default();
    let mut tick = tokio::time::interval(Duration::from_millis(150));
    let err = std::io::stderr();
    let size = || tty::size(2).unwrap_or((80, 24));
    let draw = |t: &Trace, screen: &mut tty::Screen, all: bool| {
        let (w, h) = size();
        let start = t.first_start.map_or(began, |f| f.min(began));
        let f = tty::frame(t, start, SystemTime::now(), w, h, all);
        screen.draw(&f, &mut err.lock());
    };
    loop {
        tokio::select! {
            u = rx.recv() => match u {
                Some(u) => {
                    t.update(&u);
                    t.updated.clear();
                    for v in &mut t.vertexes {
                        v.pending.clear();
                        v.status_updates.clear();
                    }
                }
                None => break,
            },
            _ = tick.tick() => {
                if !t.order.is_empty() {
                    draw(t, &mut screen, false);
                }
            }
        }
    }
    // A build that ended before any step (a Dockerfile error) shows none.
    if !t.order.is_empty() {
        draw(t, &mut screen, true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_the_flag_wins_over_the_environment() {
        assert_eq!(Mode::parse("plain").expect("plain"), Mode::Plain);
        assert_eq!(Mode::parse("tty").expect("tty"), Mode::Tty);
        assert_eq!(Mode::parse("rawjson").expect("rawjson"), Mode::RawJson);
        assert_eq!(Mode::parse("quiet").expect("quiet"), Mode::Quiet);
        assert!(Mode::parse("fancy").is_err());
        let m = |f, e| Mode::resolve(f, e).expect("valid");
        assert_eq!(m(Some("plain"), Some("rawjson")), Mode::Plain);
        assert_eq!(m(None, Some("rawjson")), Mode::RawJson);
        let bad = Mode::resolve(None, Some("x")).expect_err("invalid env");
        assert!(bad.to_string().contains("BUILDKIT_PROGRESS"), "{bad}");
    }

    #[test]
    fn a_failure_prints_the_snippet_then_the_error() {
        let f = SolveFailed {
            message: "process \"/bin/sh -c false\" did not complete successfully: exit code: 1"
                .into(),
            sources: vec![model::Source {
                filename: "Dockerfile".into(),
                data: b"FROM busybox\nRUN false\n".to_vec(),
                language: "Dockerfile".into(),
                ranges: vec![model::Range {
                    start: (2, 0),
                    end: (2, 0),
                }],
            }],
        };
        let mut out = Vec::new();
        f.print(&mut out);
        assert_eq!(
            String::from_utf8(out).expect("utf8"),
            "Dockerfile:2\n--------------------\n   1 |     FROM busybox\n   2 | >>> RUN false\n   3 |     \n--------------------\nERROR: failed to build: failed to solve: process \"/bin/sh -c false\" did not complete successfully: exit code: 1\n"
        );
    }
}
