//! Prometheus metrics on `--metrics-addr` (`GET /metrics`).
//!
//! A handful of counters, one gauge and one histogram, kept in atomics and
//! written in Prometheus' text exposition format (version 0.0.4) by a small
//! encoder here; the HTTP side is a minimal HTTP/1.1 responder over a TCP
//! listener. Both are a few dozen lines, so kilnd carries neither a metrics
//! crate nor an HTTP server crate for them.
//!
//! What is counted: builds (Control.Solve calls) running, finished and
//! failed; the duration of every build step that ran (not the cached
//! ones); steps taken from the cache and steps run; bytes streamed to
//! clients by the oci, docker and tar exporters; and, asked from
//! containerd at each scrape, the build leases this kilnd holds per
//! namespace.

use crate::state::Daemon;
use kiln_snapshot::services::Leases;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Upper bounds (seconds) of the step duration histogram's buckets.
pub const STEP_BUCKETS: [f64; 10] = [0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0];

/// kilnd's counters. One instance for the process ([`METRICS`]).
#[derive(Debug, Default)]
pub struct Metrics {
    pub builds_running: AtomicU64,
    pub builds_finished: AtomicU64,
    pub builds_failed: AtomicU64,
    pub cache_hits: AtomicU64,
    pub cache_misses: AtomicU64,
    pub exported_bytes: AtomicU64,
    /// Per bucket of [`STEP_BUCKETS`], then `+Inf`; not cumulative here.
    step_buckets: [AtomicU64; STEP_BUCKETS.len() + 1],
    step_count: AtomicU64,
    /// In microseconds.
    step_sum_us: AtomicU64,
}

/// The process's metrics.
pub static METRICS: Metrics = Metrics::new();

impl Metrics {
    pub const fn new() -> Metrics {
        Metrics {
            builds_running: AtomicU64::new(0),
            builds_finished: AtomicU64::new(0),
            builds_failed: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            exported_bytes: AtomicU64::new(0),
            step_buckets: [const { AtomicU64::new(0) }; STEP_BUCKETS.len() + 1],
            step_count: AtomicU64::new(0),
            step_sum_us: AtomicU64::new(0),
        }
    }

    /// A build started; the guard counts it finished (and failed unless
    /// [`BuildGuard::succeeded`] was called) when dropped.
    pub fn build_started(&'static self) -> BuildGuard {
        self.builds_running.fetch_add(1, Ordering::Relaxed);
        BuildGuard {
            metrics: self,
            ok: false,
        }
    }

    /// A step that ran (not cached) took `d`.
    pub fn step_ran(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = STEP_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(STEP_BUCKETS.len());
        self.step_buckets[i].fetch_add(1, Ordering::Relaxed);
        self.step_count.fetch_add(1, Ordering::Relaxed);
        let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.step_sum_us.fetch_add(us, Ordering::Relaxed);
        self.cache_misses.fetch_add(1, Ordering::Relaxed);
    }

    /// The text exposition of these metrics, with `leases` (namespace,
    /// count) as the leases gauge.
    pub fn render(&self, leases: &[(String, u64)]) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        let mut one = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
            );
        };
        one(
            "kilnd_builds_running",
            "gauge",
            "Builds (Solve calls) running now.",
            get(&self.builds_running),
        );
        one(
            "kilnd_builds_finished_total",
            "counter",
            "Builds finished, whatever their result.",
            get(&self.builds_finished),
        );
        one(
            "kilnd_builds_failed_total",
            "counter",
            "Builds that ended with an error (cancelled ones included).",
            get(&self.builds_failed),
        );
        one(
            "kilnd_cache_hits_total",
            "counter",
            "Build steps taken from the cache.",
            get(&self.cache_hits),
        );
        one(
            "kilnd_cache_misses_total",
            "counter",
            "Build steps that ran.",
            get(&self.cache_misses),
        );
        one(
            "kilnd_exported_bytes_total",
            "counter",
            "Bytes streamed to clients by the oci, docker and tar exporters.",
            get(&self.exported_bytes),
        );
        let name = "kilnd_step_duration_seconds";
        let _ = write!(
            out,
            "# HELP {name} How long the build steps that ran took.\n# TYPE {name} histogram\n"
        );
        let mut cumulative = 0;
        for (i, bound) in STEP_BUCKETS.iter().enumerate() {
            cumulative += get(&self.step_buckets[i]);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += get(&self.step_buckets[STEP_BUCKETS.len()]);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let sum = get(&self.step_sum_us) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {}", get(&self.step_count));
        let name = "kilnd_leases_held";
        let _ = write!(
            out,
            "# HELP {name} Build leases this kilnd holds in containerd.\n# TYPE {name} gauge\n"
        );
        for (ns, n) in leases {
            let _ = writeln!(out, "{name}{{namespace=\"{}\"}} {n}", escape(ns));
        }
        let name = "kilnd_build_info";
        let _ = write!(
            out,
            "# HELP {name} kilnd's version.\n# TYPE {name} gauge\n{name}{{version=\"{}\"}} 1\n",
            escape(kiln_engine::VERSION)
        );
        out
    }
}

/// Counts one build as running until dropped.
#[derive(Debug)]
pub struct BuildGuard {
    metrics: &'static Metrics,
    ok: bool,
}

impl BuildGuard {
    /// The build succeeded.
    pub fn succeeded(&mut self) {
        self.ok = true;
    }
}

impl Drop for BuildGuard {
    fn drop(&mut self) {
        let m = self.metrics;
        m.builds_running.fetch_sub(1, Ordering::Relaxed);
        m.builds_finished.fetch_add(1, Ordering::Relaxed);
        if !self.ok {
            m.builds_failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The build leases this process holds, per namespace it builds in.
async fn leases_held(d: &Daemon) -> Vec<(String, u64)> {
    let namespaces: Vec<String> = if d.config.tenants.is_empty() {
        vec![d.ctrd.namespace().to_string()]
    } else {
        d.config
            .tenants
            .iter()
            .map(|t| t.namespace.clone())
            .collect()
    };
    let owner = kiln_engine::sweep::owner_labels();
    let mut out = Vec::new();
    for ns in namespaces {
        let ctrd = d.ctrd.with_namespace(&ns);
        match Leases::list(&ctrd).await {
            Ok(all) => {
                let n = all
                    .iter()
                    .filter(|l| l.id.starts_with("kiln/build/"))
                    .filter(|l| owner.iter().all(|(k, v)| l.labels.get(k) == Some(v)))
                    .count();
                out.push((ns, n as u64));
            }
            Err(e) => {
                tracing::debug!(namespace = %ns, error = %e, "cannot list leases for metrics")
            }
        }
    }
    out
}

/// Binds the metrics address (`host:port`).
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `/metrics` on `listener` until `stop`.
pub async fn serve(listener: TcpListener, d: Arc<Daemon>, stop: CancellationToken) {
    loop {
        let (conn, _) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let d = d.clone();
        tokio::spawn(async move {
            if let Err(e) = answer(conn, &d).await {
                tracing::debug!(error = %e, "metrics: request failed");
            }
        });
    }
}

/// The longest request head read.
const MAX_HEAD: usize = 8 << 10;

/// Reads one request head and answers it; the connection is then closed.
async fn answer(mut conn: TcpStream, d: &Daemon) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            let n = conn.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return Ok(());
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            METRICS.render(&leases_held(d).await),
        ),
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "kilnd serves /metrics only\n".to_string(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "GET /metrics\n".to_string(),
        ),
    };
    let mut resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    if method != "HEAD" {
        resp.push_str(&body);
    }
    conn.write_all(resp.as_bytes()).await?;
    conn.shutdown().await
}

/// Counts the bytes read through it into [`Metrics::exported_bytes`].
#[derive(Debug)]
pub struct CountingReader<R>(pub R);

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for CountingReader<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.0).poll_read(cx, buf);
        let n = buf.filled().len().saturating_sub(before);
        METRICS
            .exported_bytes
            .fetch_add(n as u64, Ordering::Relaxed);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_is_cumulative_and_counts_steps() {
        let m = Metrics::new();
        m.step_ran(Duration::from_millis(20));
        m.step_ran(Duration::from_millis(700));
        m.step_ran(Duration::from_secs(4000));
        let text = m.render(&[("default".into(), 2)]);
        assert!(
            text.contains("kilnd_step_duration_seconds_bucket{le=\"0.05\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("kilnd_step_duration_seconds_bucket{le=\"1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("kilnd_step_duration_seconds_bucket{le=\"1800\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("kilnd_step_duration_seconds_bucket{le=\"+Inf\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("kilnd_step_duration_seconds_count 3\n"),
            "{text}"
        );
        assert!(text.contains("kilnd_cache_misses_total 3\n"), "{text}");
        assert!(
            text.contains("kilnd_leases_held{namespace=\"default\"} 2\n"),
            "{text}"
        );
    }

    #[test]
    fn builds_count_as_failed_unless_they_succeed() {
        static M: Metrics = Metrics::new();
        let mut ok = M.build_started();
        let failed = M.build_started();
        assert_eq!(M.builds_running.load(Ordering::Relaxed), 2);
        ok.succeeded();
        drop(ok);
        drop(failed);
        assert_eq!(M.builds_running.load(Ordering::Relaxed), 0);
        assert_eq!(M.builds_finished.load(Ordering::Relaxed), 2);
        assert_eq!(M.builds_failed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
