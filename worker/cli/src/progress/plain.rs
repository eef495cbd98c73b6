//! BuildKit's plain layout (`progressui`'s text printer): `#N name` when a
//! vertex is first shown (a blank line before each but the first), `#N
//! SECS line` per output line with its time since the vertex started,
//! `#N id bytes time done` per status item, `#N ...` when another vertex
//! interrupts a running one, and `#N DONE 0.4s` / `#N CACHED` / `#N
//! ERROR: …` / `#N CANCELED` when it ends.

use super::model::{Trace, VertexStatus};
use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, SystemTime};

/// Status items are reprinted while running only when they moved by 5%
/// or 5s, as BuildKit's printer does.
const MIN_PROGRESS: f64 = 0.05;
const MIN_TIME: Duration = Duration::from_secs(5);

/// The plain printer's own state over a [`Trace`].
#[derive(Debug, Default)]
pub struct Plain {
    next_index: usize,
    /// The vertex whose lines were printed last, while it runs.
    current: Option<usize>,
    not_first: bool,
    last: HashMap<String, (i64, SystemTime)>,
}

/// Bytes as BuildKit's `units.Bytes` with `%.2f`: decimal units with two
/// decimals (`1.98MB`), whole bytes under 1000 (`70B`).
pub fn human_bytes(n: i64) -> String {
    const UNITS: [&str; 6] = ["B", "kB", "MB", "GB", "TB", "PB"];
    let mut v = n as f64;
    let mut u = 0;
    while v.abs() >= 1000.0 && u + 1 < UNITS.len() {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.2}{}", UNITS[u])
    }
}

/// One status item, BuildKit's way: `id [cur / total] [time] [done]`.
pub fn status_line(s: &VertexStatus) -> String {
    let mut line = s.id.clone();
    if s.total != 0 {
        line += &format!(" {} / {}", human_bytes(s.current), human_bytes(s.total));
    } else if s.current != 0 {
        line += &format!(" {}", human_bytes(s.current));
    }
    let end = s.completed.unwrap_or(s.timestamp);
    if let Some(start) = s.started {
        let secs = end
            .duration_since(start)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        if secs > 0.01 {
            line += &format!(" {secs:.1}s");
        }
    }
    if s.completed.is_some() {
        line += " done";
    }
    line
}

impl Plain {
    /// Prints what the last update changed.
    pub fn print(&mut self, t: &mut Trace, w: &mut dyn Write) {
        let updated = std::mem::take(&mut t.updated);
        let (done, running): (Vec<usize>, Vec<usize>) = updated
            .into_iter()
            .filter(|&i| t.vertexes[i].is_started())
            .partition(|&i| t.vertexes[i].is_completed());
        // Finished vertexes first (the current one before others), in the
        // order they finished, then the running ones.
        let mut done = done;
        done.sort_by_key(|&i| {
            (
                Some(i) != self.current,
                t.vertexes[i].intervals.last().and_then(|iv| iv.1),
            )
        });
        for i in done.into_iter().chain(running) {
            self.print_vertex(t, i, w);
        }
    }

    /// Prints everything left and ends the open line, at the end.
    pub fn finish(&mut self, t: &mut Trace, w: &mut dyn Write) {
        for i in 0..t.vertexes.len() {
            if t.vertexes[i].partial.is_some() {
                t.flush_partial(i);
                t.updated.push(i);
            }
        }
        self.print(t, w);
    }

    fn print_vertex(&mut self, t: &mut Trace, i: usize, w: &mut dyn Write) {
        let completed = t.vertexes[i].is_completed();
        if completed {
            t.flush_partial(i);
        }
        let has_news = {
            let v = &t.vertexes[i];
            !v.pending.is_empty()
                || !v.status_updates.is_empty()
                || v.warnings_shown < v.warnings.len()
                || completed
                || v.index == 0
        };
        if !has_news {
            return;
        }
        if self.current != Some(i) {
            if let Some(old) = self.current {
                if !t.vertexes[old].is_completed() {
                    let _ = writeln!(w, "#{} ...", t.vertexes[old].index);
                }
            }
            if self.not_first {
                let _ = writeln!(w);
            }
            self.not_first = true;
            let v = &mut t.vertexes[i];
            if v.index == 0 {
                self.next_index += 1;
                v.index = self.next_index;
            }
            let _ = writeln!(w, "#{} {}", v.index, v.vertex.name);
        }
        let v = &mut t.vertexes[i];
        let n = v.index;
        let mut open_status = false;
        for id in std::mem::take(&mut v.status_updates) {
            let Some(s) = v.statuses.iter().find(|s| s.id == id) else {
                continue;
            };
            if s.completed.is_none() {
                open_status = true;
                if let Some((cur, at)) = self.last.get(&s.id) {
                    let moved = if s.total > 0 {
                        (s.current - cur) as f64 / s.total as f64
                    } else {
                        0.0
                    };
                    let waited = s.timestamp.duration_since(*at).unwrap_or_default();
                    if moved < MIN_PROGRESS && waited < MIN_TIME {
                        continue;
                    }
                }
            }
            self.last.insert(s.id.clone(), (s.current, s.timestamp));
            let _ = writeln!(w, "#{n} {}", status_line(s));
        }
        for warn in &v.warnings[v.warnings_shown..] {
            let _ = writeln!(w, "#{n} WARN: {}", String::from_utf8_lossy(&warn.short));
        }
        v.warnings_shown = v.warnings.len();
        for line in std::mem::take(&mut v.pending) {
            let _ = writeln!(w, "#{n} {line}");
        }
        self.current = Some(i);
        if completed && !open_status {
            self.current = None;
            let e = &v.vertex.error;
            if !e.is_empty() {
                if v.is_canceled() {
                    let _ = writeln!(w, "#{n} CANCELED");
                } else {
                    let _ = writeln!(w, "#{n} ERROR: {e}");
                }
            } else if v.vertex.cached {
                let _ = writeln!(w, "#{n} CACHED");
            } else {
                let secs = v.duration(SystemTime::now()).as_secs_f64();
                let _ = writeln!(w, "#{n} DONE {secs:.1}s");
            }
        }
    }
}

/// BuildKit's recap of failed vertexes after the build: for each, its name
/// and its last output lines between `------` rules.
pub fn recap(t: &mut Trace, w: &mut dyn Write) {
    for i in 0..t.vertexes.len() {
        t.flush_partial(i);
    }
    for v in t.failed() {
        let _ = writeln!(w, "------");
        let _ = writeln!(w, " > {}:", v.vertex.name);
        for l in &v.recent {
            let _ = writeln!(w, "{l}");
        }
        let _ = writeln!(w, "------");
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::{SolveStatus, Vertex, VertexLog};
    use super::*;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_000 + ms)
    }

    fn vertex(d: &str, name: &str, started: Option<u64>, completed: Option<u64>) -> Vertex {
        Vertex {
            digest: d.into(),
            name: name.into(),
            started: started.map(at),
            completed: completed.map(at),
            ..Default::default()
        }
    }

    fn log(d: &str, ms: u64, data: &str) -> VertexLog {
        VertexLog {
            vertex: d.into(),
            stream: 1,
            data: data.as_bytes().to_vec(),
            timestamp: at(ms),
        }
    }

    fn run(updates: Vec<SolveStatus>) -> (String, Trace) {
        let mut t = Trace::default();
        let mut p = Plain::default();
        let mut out = Vec::new();
        for u in updates {
            t.update(&u);
            p.print(&mut t, &mut out);
        }
        p.finish(&mut t, &mut out);
        (String::from_utf8(out).expect("utf8"), t)
    }

    fn vs(v: Vec<Vertex>) -> SolveStatus {
        SolveStatus {
            vertexes: v,
            ..Default::default()
        }
    }

    fn logs(l: Vec<VertexLog>) -> SolveStatus {
        SolveStatus {
            logs: l,
            ..Default::default()
        }
    }

    #[test]
    fn steps_print_as_buildkit_plain() {
        let (out, _) = run(vec![
            // Announced, not started: not shown.
            vs(vec![vertex("a", "[1/2] RUN echo hi", None, None)]),
            vs(vec![vertex("a", "[1/2] RUN echo hi", Some(0), None)]),
            logs(vec![log("a", 102, "hi\nthere")]),
            logs(vec![log("a", 1500, " you\n")]),
            vs(vec![vertex("a", "[1/2] RUN echo hi", Some(0), Some(400))]),
            vs(vec![Vertex {
                cached: true,
                ..vertex("b", "[2/2] COPY x /x", Some(500), Some(500))
            }]),
        ]);
        assert_eq!(
            out,
            "#1 [1/2] RUN echo hi\n#1 0.102 hi\n#1 0.102 there you\n#1 DONE 0.4s\n\n#2 [2/2] COPY x /x\n#2 CACHED\n"
        );
    }

    #[test]
    fn an_interrupted_step_is_continued_with_its_number() {
        let (out, _) = run(vec![
            vs(vec![vertex("a", "A", Some(0), None)]),
            logs(vec![log("a", 10, "one\n")]),
            vs(vec![vertex("b", "B", Some(20), None)]),
            logs(vec![log("a", 12_345, "two\n")]),
            vs(vec![Vertex {
                error: "process \"false\" did not complete successfully: exit code: 1".into(),
                ..vertex("a", "A", Some(0), Some(13_000))
            }]),
            vs(vec![Vertex {
                error: "context canceled".into(),
                ..vertex("b", "B", Some(20), Some(13_000))
            }]),
        ]);
        assert_eq!(
            out,
            "#1 A\n#1 0.010 one\n#1 ...\n\n#2 B\n#2 ...\n\n#1 A\n#1 12.35 two\n\
             #1 ERROR: process \"false\" did not complete successfully: exit code: 1\n\n\
             #2 B\n#2 CANCELED\n"
        );
    }

    #[test]
    fn the_recap_shows_the_failed_steps_last_lines() {
        let mut updates = vec![vs(vec![vertex("a", "[2/3] RUN make", Some(0), None)])];
        for n in 0..12 {
            updates.push(logs(vec![log("a", 100 + n, &format!("line {n}\n"))]));
        }
        updates.push(vs(vec![Vertex {
            error: "exit code: 2".into(),
            ..vertex("a", "[2/3] RUN make", Some(0), Some(200))
        }]));
        let (_, mut t) = run(updates);
        let mut out = Vec::new();
        recap(&mut t, &mut out);
        let out = String::from_utf8(out).expect("utf8");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "------");
        assert_eq!(lines[1], " > [2/3] RUN make:");
        assert_eq!(lines[2], "0.102 line 2");
        assert_eq!(lines[11], "0.111 line 11");
        assert_eq!(lines[12], "------");
        assert_eq!(lines.len(), 13);
    }

    #[test]
    fn status_items_read_as_buildkit_shows_them() {
        let s = VertexStatus {
            id: "sha256:abc".into(),
            vertex: "a".into(),
            name: "sha256:abc".into(),
            total: 3_400_000,
            current: 3_400_000,
            timestamp: at(300),
            started: Some(at(0)),
            completed: Some(at(300)),
        };
        assert_eq!(status_line(&s), "sha256:abc 3.40MB / 3.40MB 0.3s done");
        assert_eq!(human_bytes(999), "999B");
        assert_eq!(human_bytes(1_982_256), "1.98MB");
        let quick = VertexStatus {
            id: "naming to x".into(),
            total: 0,
            current: 0,
            started: Some(at(0)),
            completed: Some(at(5)),
            ..s
        };
        assert_eq!(status_line(&quick), "naming to x done");
    }
}
