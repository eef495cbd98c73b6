//! `--progress=rawjson`: each update as one line of BuildKit's
//! `client.SolveStatus` JSON, encoded as Go's `encoding/json` writes it
//! (its field names and `omitempty` rules, RFC 3339 times with trimmed
//! nanoseconds, bytes as base64, `<>&` escaped), so tools written for
//! buildx read it.

use super::model::{Range, SolveStatus, Source};
use base64::Engine as _;
use std::time::SystemTime;

/// A time as Go's `time.Time` marshals (UTC): `2024-01-02T03:04:05.1Z`.
pub fn go_time(t: SystemTime) -> String {
    let s = humantime::format_rfc3339_nanos(t).to_string();
    // `...05.123000000Z` -> `...05.123Z`; `...05.000000000Z` -> `...05Z`.
    match s.strip_suffix('Z').and_then(|s| s.split_once('.')) {
        Some((whole, frac)) => {
            let frac = frac.trim_end_matches('0');
            if frac.is_empty() {
                format!("{whole}Z")
            } else {
                format!("{whole}.{frac}Z")
            }
        }
        None => s,
    }
}

/// A JSON object whose keys keep Go's field order; values are JSON text.
#[derive(Default)]
struct Obj(Vec<(&'static str, String)>);

impl Obj {
    /// Always sets `key`.
    fn set(&mut self, key: &'static str, json: String) -> &mut Self {
        self.0.push((key, json));
        self
    }

    /// Sets `key` to a string unless it is empty (`omitempty`).
    fn str(&mut self, key: &'static str, v: &str) -> &mut Self {
        if !v.is_empty() {
            self.set(key, string(v));
        }
        self
    }

    /// Sets `key` to a number unless it is 0 (`omitempty`).
    fn num(&mut self, key: &'static str, v: i64) -> &mut Self {
        if v != 0 {
            self.set(key, v.to_string());
        }
        self
    }

    fn time(&mut self, key: &'static str, t: Option<SystemTime>) -> &mut Self {
        if let Some(t) = t {
            self.set(key, string(&go_time(t)));
        }
        self
    }

    /// Sets `key` to an array unless it has no items (`omitempty`).
    fn list(&mut self, key: &'static str, items: Vec<String>) -> &mut Self {
        if !items.is_empty() {
            self.set(key, format!("[{}]", items.join(",")));
        }
        self
    }

    fn done(&mut self) -> String {
        let fields: Vec<String> = self
            .0
            .iter()
            .map(|(k, v)| format!("{}:{v}", string(k)))
            .collect();
        format!("{{{}}}", fields.join(","))
    }
}

fn string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

fn b64(b: &[u8]) -> String {
    string(&base64::engine::general_purpose::STANDARD.encode(b))
}

fn range(r: &Range) -> String {
    let pos = |(line, character): (i32, i32)| {
        Obj::default()
            .num("line", line.into())
            .num("character", character.into())
            .done()
    };
    Obj::default()
        .set("start", pos(r.start))
        .set("end", pos(r.end))
        .done()
}

fn source_info(s: &Source) -> String {
    let mut o = Obj::default();
    o.str("filename", &s.filename);
    if !s.data.is_empty() {
        o.set("data", b64(&s.data));
    }
    o.str("language", &s.language).done()
}

/// The JSON object of one update, keys in BuildKit's order.
pub fn encode(s: &SolveStatus) -> String {
    let vertexes = s
        .vertexes
        .iter()
        .map(|v| {
            let mut o = Obj::default();
            o.str("digest", &v.digest)
                .list("inputs", v.inputs.iter().map(|i| string(i)).collect())
                .str("name", &v.name)
                .time("started", v.started)
                .time("completed", v.completed);
            if v.cached {
                o.set("cached", "true".into());
            }
            o.str("error", &v.error).done()
        })
        .collect();
    let statuses = s
        .statuses
        .iter()
        .map(|st| {
            Obj::default()
                .set("id", string(&st.id))
                .str("vertex", &st.vertex)
                .str("name", &st.name)
                .num("total", st.total)
                .set("current", st.current.to_string())
                .set("timestamp", string(&go_time(st.timestamp)))
                .time("started", st.started)
                .time("completed", st.completed)
                .done()
        })
        .collect();
    let logs = s
        .logs
        .iter()
        .map(|l| {
            Obj::default()
                .str("vertex", &l.vertex)
                .num("stream", l.stream)
                .set("data", b64(&l.data))
                .set("timestamp", string(&go_time(l.timestamp)))
                .done()
        })
        .collect();
    let warnings = s
        .warnings
        .iter()
        .map(|w| {
            let mut o = Obj::default();
            o.str("vertex", &w.vertex).num("level", w.level);
            if !w.short.is_empty() {
                o.set("short", b64(&w.short));
            }
            o.list("detail", w.detail.iter().map(|d| b64(d)).collect())
                .str("url", &w.url);
            if let Some(src) = &w.source {
                o.set("sourceInfo", source_info(src))
                    .list("range", src.ranges.iter().map(range).collect());
            }
            o.done()
        })
        .collect();
    Obj::default()
        .list("vertexes", vertexes)
        .list("statuses", statuses)
        .list("logs", logs)
        .list("warnings", warnings)
        .done()
}

/// One update as the line `json.Encoder` writes (without the newline).
pub fn line(s: &SolveStatus) -> String {
    // Go escapes these for HTML safety; they only occur inside strings.
    encode(s)
        .replace('<', "\\u003c")
        .replace('>', "\\u003e")
        .replace('&', "\\u0026")
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

#[cfg(test)]
mod tests {
    use super::super::model::{Vertex, VertexLog, VertexStatus};
    use super::*;
    use std::time::Duration;

    fn at(secs: u64, nanos: u32) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::new(secs, nanos)
    }

    #[test]
    fn times_are_gos() {
        assert_eq!(go_time(at(0, 0)), "1970-01-01T00:00:00Z");
        assert_eq!(go_time(at(1, 54_183_095)), "1970-01-01T00:00:01.054183095Z");
        assert_eq!(go_time(at(1, 500_000_000)), "1970-01-01T00:00:01.5Z");
    }

    #[test]
    fn an_update_is_buildkits_solve_status() {
        let s = SolveStatus {
            vertexes: vec![
                Vertex {
                    digest: "sha256:a".into(),
                    name: "[internal] load build definition from Dockerfile".into(),
                    ..Default::default()
                },
                Vertex {
                    digest: "sha256:b".into(),
                    inputs: vec!["sha256:a".into()],
                    name: "[2/3] RUN echo 1 >&2".into(),
                    started: Some(at(1, 0)),
                    completed: Some(at(2, 100)),
                    cached: false,
                    error: "exit code: 3".into(),
                },
            ],
            statuses: vec![VertexStatus {
                id: "exporting layers".into(),
                vertex: "sha256:b".into(),
                name: "exporting layers".into(),
                total: 0,
                current: 0,
                timestamp: at(2, 0),
                started: Some(at(1, 0)),
                completed: None,
            }],
            logs: vec![VertexLog {
                vertex: "sha256:b".into(),
                stream: 1,
                data: b"out\n".to_vec(),
                timestamp: at(1, 5),
            }],
            warnings: Vec::new(),
        };
        assert_eq!(
            line(&s),
            concat!(
                r#"{"vertexes":[{"digest":"sha256:a","name":"[internal] load build definition from Dockerfile"},"#,
                r#"{"digest":"sha256:b","inputs":["sha256:a"],"name":"[2/3] RUN echo 1 \u003e\u00262","#,
                r#""started":"1970-01-01T00:00:01Z","completed":"1970-01-01T00:00:02.0000001Z","error":"exit code: 3"}],"#,
                r#""statuses":[{"id":"exporting layers","vertex":"sha256:b","name":"exporting layers","current":0,"#,
                r#""timestamp":"1970-01-01T00:00:02Z","started":"1970-01-01T00:00:01Z"}],"#,
                r#""logs":[{"vertex":"sha256:b","stream":1,"data":"b3V0Cg==","timestamp":"1970-01-01T00:00:01.000000005Z"}]}"#
            )
        );
    }
}
