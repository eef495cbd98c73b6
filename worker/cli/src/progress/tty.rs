//! `--progress=tty`: buildx's live view. A fixed block (`[+] Building 1.2s
//! (5/7)`, then one line per vertex with its time on the right, its status
//! items under it, and a few-line window of a running step's output) is
//! redrawn in place: the cursor goes back up over the last frame and every
//! line is rewritten and cleared to its end. Lines are cut to the
//! terminal's width (asked with `TIOCGWINSZ` each frame) so none wraps,
//! and the block is cut to its height, which is what keeps frames from
//! piling up on a small terminal.

use super::model::{Trace, WINDOW_LINES};
use super::plain::human_bytes;
use std::io::Write;
use std::time::SystemTime;

/// The width and height of the terminal on `fd`, if it is one.
pub fn size(fd: i32) -> Option<(usize, usize)> {
    // SAFETY: TIOCGWINSZ writes a `winsize` into the struct we pass; a
    // bad or non-terminal fd makes it fail, which we check.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: `ws` is a valid, writable winsize for the whole call.
    let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_col > 0 && ws.ws_row > 0).then(|| (ws.ws_col.into(), ws.ws_row.into()))
}

/// Text a terminal line can hold: tabs as spaces, without control
/// characters and escape sequences.
fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\t' => out.push(' '),
            '\x1b' => {
                // CSI: ESC [ params final-byte; others: ESC + one char.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

fn cut(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// `l` padded to leave room for `r` so the line is `w - 1` columns (as
/// BuildKit's `align`, whose right part carries the newline).
fn align(l: &str, r: &str, w: usize) -> String {
    let pad = w.saturating_sub(r.chars().count() + 2);
    format!("{l:<pad$} {r}")
}

/// One line of the block before alignment.
struct Job {
    name: String,
    status: String,
    secs: f64,
    running: bool,
    /// Output lines shown under it (a running step).
    window: Vec<String>,
    bytes: usize,
}

/// The block for the trace at `now`, `width` × `height`; `all` for the
/// final frame (every vertex, `FINISHED`).
pub fn frame(
    t: &Trace,
    start: SystemTime,
    now: SystemTime,
    width: usize,
    height: usize,
    all: bool,
) -> Vec<String> {
    let width = width.max(20);
    let total = t.vertexes.len();
    let done = t.vertexes.iter().filter(|v| v.is_completed()).count();
    let mut jobs: Vec<Job> = Vec::new();
    for &i in &t.order {
        let v = &t.vertexes[i];
        let mut name = clean(&v.vertex.name);
        if !v.vertex.error.is_empty() {
            name = if v.is_canceled() {
                format!("CANCELED {name}")
            } else {
                format!("ERROR {name}")
            };
        }
        if v.vertex.cached {
            name = format!("CACHED {name}");
        }
        jobs.push(Job {
            name,
            status: String::new(),
            secs: v.duration(now).as_secs_f64(),
            running: !v.is_completed(),
            window: if v.is_completed() {
                Vec::new()
            } else {
                v.window.iter().map(|l| clean(l)).collect()
            },
            bytes: v.output_bytes,
        });
        for s in &v.statuses {
            let Some(started) = s.started else { continue };
            let status = if s.total != 0 {
                format!("{} / {}", human_bytes(s.current), human_bytes(s.total))
            } else if s.current != 0 {
                human_bytes(s.current)
            } else {
                String::new()
            };
            jobs.push(Job {
                name: format!("=> {}", clean(&s.id)),
                status,
                secs: s
                    .completed
                    .unwrap_or(now)
                    .duration_since(started)
                    .map(|d| d.as_secs_f64())
                    .unwrap_or(0.0),
                running: s.completed.is_none(),
                window: Vec::new(),
                bytes: 0,
            });
        }
        for w in &v.warnings {
            jobs.push(Job {
                name: format!("WARN: {}", clean(&String::from_utf8_lossy(&w.short))),
                status: String::new(),
                secs: 0.0,
                running: false,
                window: Vec::new(),
                bytes: 0,
            });
        }
    }
    // Windows for the running steps with the most output, while the
    // terminal has room for them (as BuildKit: 6 lines plus 3 spare each).
    let running = jobs.iter().filter(|j| j.running).count();
    let mut free = height.saturating_sub(2 + running) as isize;
    let limit = (WINDOW_LINES + 3) as isize;
    let mut by_output: Vec<usize> = (0..jobs.len())
        .filter(|&i| jobs[i].running && !jobs[i].window.is_empty())
        .collect();
    by_output.sort_by_key(|&i| std::cmp::Reverse(jobs[i].bytes));
    let mut shown = vec![false; jobs.len()];
    let mut window_lines = 0;
    for i in by_output {
        if free <= limit {
            break;
        }
        shown[i] = true;
        window_lines += jobs[i].window.len();
        free -= limit;
    }
    // Cut to the height: drop finished lines from the top first.
    let mut keep: Vec<usize> = (0..jobs.len()).collect();
    if !all {
        let room = height.saturating_sub(2 + window_lines);
        while keep.len() > room {
            match keep.iter().position(|&i| !jobs[i].running) {
                Some(p) => keep.remove(p),
                None => keep.remove(0),
            };
        }
    }

    let mut lines = Vec::new();
    let head = format!(
        "[+] Building {:.1}s ({done}/{total}){}",
        now.duration_since(start)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        if all && done > 0 && done == total {
            " FINISHED"
        } else {
            ""
        }
    );
    lines.push(cut(&head, width - 1));
    for i in keep {
        let j = &jobs[i];
        let secs = if j.secs < 0.05 { 0.0 } else { j.secs };
        let timer = format!(" {secs:3.1}s");
        let pfx = " => ";
        let mut left = width as isize - pfx.len() as isize - timer.len() as isize - 2;
        let mut show_status = false;
        if !j.status.is_empty() && left + j.status.len() as isize > 20 {
            show_status = true;
            left -= j.status.len() as isize + 1;
        }
        if left < 12 {
            continue;
        }
        let mut out = format!("{pfx}{}", cut(&j.name, left as usize));
        if show_status {
            out = format!("{out} {}", j.status);
        }
        lines.push(align(&out, timer.trim_start(), width));
        if shown[i] {
            for l in &j.window {
                lines.push(cut(&format!(" => => # {l}"), width - 1));
            }
        }
    }
    lines
}

/// Draws frames over each other on a terminal.
#[derive(Debug, Default)]
pub struct Screen {
    lines: usize,
}

impl Screen {
    /// Replaces the last frame with `frame`.
    pub fn draw(&mut self, frame: &[String], w: &mut dyn Write) {
        let mut out = String::new();
        if self.lines > 0 {
            out += &format!("\x1b[{}A\r", self.lines);
        }
        // Hide the cursor while drawing.
        out += "\x1b[?25l";
        for l in frame {
            out += l;
            out += "\x1b[K\n";
        }
        // Whatever the last frame had below this one.
        out += "\x1b[J\x1b[?25h";
        let _ = w.write_all(out.as_bytes());
        let _ = w.flush();
        self.lines = frame.len();
    }
}

#[cfg(test)]
mod tests {
    use super::super::model::{SolveStatus, Vertex, VertexLog};
    use super::*;
    use std::time::Duration;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_000_000 + ms)
    }

    fn trace(n: usize) -> Trace {
        let mut t = Trace::default();
        for i in 0..n {
            t.update(&SolveStatus {
                vertexes: vec![Vertex {
                    digest: format!("d{i}"),
                    name: format!("[{}/{n}] RUN a long command line number {i} that goes on and on and on for a while", i + 1),
                    started: Some(at(i as u64 * 100)),
                    completed: (i + 1 < n).then(|| at(i as u64 * 100 + 50)),
                    ..Default::default()
                }],
                ..Default::default()
            });
        }
        let last = format!("d{}", n - 1);
        for k in 0..10 {
            t.update(&SolveStatus {
                logs: vec![VertexLog {
                    vertex: last.clone(),
                    stream: 1,
                    data: format!("output line {k} \x1b[1mbold\x1b[0m\tand tab\n").into_bytes(),
                    timestamp: at(5000),
                }],
                ..Default::default()
            });
        }
        t
    }

    #[test]
    fn every_line_fits_the_width_and_the_block_fits_the_height() {
        let t = trace(30);
        for (w, h) in [(80, 24), (200, 50), (40, 10)] {
            let f = frame(&t, at(0), at(6000), w, h, false);
            assert!(f.len() < h, "{w}x{h}: {} lines", f.len());
            for l in &f {
                assert!(l.chars().count() < w, "{w}x{h}: {l:?}");
            }
            assert!(f[0].starts_with("[+] Building 6.0s (29/30)"), "{}", f[0]);
            // The running step is kept and its window shown when there is room.
            assert!(f.iter().any(|l| l.starts_with(" => [30/30] RUN")), "{f:?}");
            let window = f.iter().filter(|l| l.starts_with(" => => # ")).count();
            assert_eq!(
                window,
                if h > 20 { WINDOW_LINES } else { 0 },
                "{w}x{h}: {f:?}"
            );
        }
        let f = frame(&t, at(0), at(6000), 80, 24, false);
        assert!(
            f.contains(&" => => # output line 9 bold and tab".to_string()),
            "{f:?}"
        );
        // Time on the right, the line one column short of the width.
        assert!(
            f[1].ends_with(" 0.1s") && f[1].chars().count() == 79,
            "{:?}",
            f[1]
        );
    }

    #[test]
    fn the_final_frame_lists_every_step_and_says_finished() {
        let mut t = trace(3);
        t.update(&SolveStatus {
            vertexes: vec![Vertex {
                digest: "d2".into(),
                name: "x".into(),
                started: Some(at(200)),
                completed: Some(at(900)),
                cached: true,
                ..Default::default()
            }],
            ..Default::default()
        });
        let f = frame(&t, at(0), at(1000), 80, 24, true);
        assert_eq!(f[0], "[+] Building 1.0s (3/3) FINISHED");
        assert_eq!(f.len(), 4);
        assert!(f[3].starts_with(" => CACHED x "), "{:?}", f[3]);
        assert!(!f.iter().any(|l| l.contains(" => => # ")));
    }

    #[test]
    fn a_redraw_goes_back_over_the_last_frame() {
        let mut s = Screen::default();
        let mut out = Vec::new();
        s.draw(&["a".into(), "b".into()], &mut out);
        s.draw(&["c".into()], &mut out);
        let out = String::from_utf8(out).expect("utf8");
        assert_eq!(
            out,
            "\x1b[?25la\x1b[K\nb\x1b[K\n\x1b[J\x1b[?25h\x1b[2A\r\x1b[?25lc\x1b[K\n\x1b[J\x1b[?25h"
        );
    }
}
