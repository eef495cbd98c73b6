//! kilnd as an operable service (issue 12): the health service, Prometheus
//! metrics, the build log lines (JSON), SIGHUP, socket activation and
//! readiness, the socket's group, the systemd units, and BuildKit's error
//! details on a failed build.

use crate::common;
use common::remote;

use kiln_integration::llbdef::op_bytes;
use kiln_integration::{buildctl_like_binary, kilnd_binary, Harness, Kilnd};
use kiln_proto::control::control_client::ControlClient;
use kiln_proto::control::SolveRequest;
use kiln_proto::health::health_check_response::ServingStatus;
use kiln_proto::health::health_client::HealthClient;
use kiln_proto::health::HealthCheckRequest;
use kiln_proto::llb;
use prost::Message;
use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const SOURCE_URL: &str = "github.com/moby/buildkit/errdefs.Source+json";
const VERTEX_URL: &str = "github.com/moby/buildkit/errdefs.Vertex+json";

async fn health(socket: &Path, service: &str) -> Result<i32, tonic::Status> {
    let ch = containerd_client::connect(socket)
        .await
        .expect("connect to kilnd");
    HealthClient::new(ch)
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .map(|r| r.into_inner().status)
}

/// Waits (up to 30 s) until kilnd's log contains `needle` `n` times.
fn wait_log(log: &Path, needle: &str, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.matches(needle).count() >= n {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "kilnd never logged {needle:?} {n} times:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn health_answers_serving_and_the_socket_has_its_group() {
    let ns = "ops-health";
    let h = Harness::with_busybox(ns).await;
    let k = h
        .start_kilnd_with(ns, &["--group", "4242"])
        .await
        .expect("kilnd starts");
    assert_eq!(
        health(&k.socket, "").await.expect("Check"),
        ServingStatus::Serving as i32
    );
    assert_eq!(
        health(&k.socket, "moby.buildkit.v1.Control")
            .await
            .expect("Check"),
        ServingStatus::Serving as i32
    );
    let unknown = health(&k.socket, "no.such.Service")
        .await
        .expect_err("unknown service");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    let md = std::fs::metadata(&k.socket).expect("socket");
    assert_eq!(md.gid(), 4242, "--group owns the socket");
    assert_eq!(md.mode() & 0o777, 0o660);
}

// ---------------------------------------------------------------------------
// Prometheus text format, parsed strictly.

/// One scrape: samples by `name{labels}` (labels sorted), and each
/// family's declared type.
#[derive(Debug, Default)]
struct Scrape {
    samples: BTreeMap<String, f64>,
    types: HashMap<String, String>,
}

impl Scrape {
    fn get(&self, key: &str) -> f64 {
        *self
            .samples
            .get(key)
            .unwrap_or_else(|| panic!("no sample {key} in {:?}", self.samples))
    }
}

fn valid_name(n: &str) -> bool {
    let mut chars = n.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn parse_value(v: &str) -> Result<f64, String> {
    match v {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => v.parse().map_err(|_| format!("bad value {v:?}")),
    }
}

/// Parses text exposition format 0.0.4: `# HELP`/`# TYPE` lines, samples
/// `name{l="v",...} value [timestamp]`; every sample's family must have
/// been typed first; histogram buckets must be cumulative and end in
/// `+Inf` equal to `_count`.
fn parse_prometheus(text: &str) -> Result<Scrape, String> {
    let mut s = Scrape::default();
    if !text.ends_with('\n') {
        return Err("the exposition must end with a newline".into());
    }
    for (no, line) in text.lines().enumerate() {
        let err = |m: String| format!("line {}: {m}: {line:?}", no + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('#') {
            let mut parts = rest.trim_start().splitn(3, ' ');
            match (parts.next(), parts.next(), parts.next()) {
                (Some("HELP"), Some(name), _) if valid_name(name) => {}
                (Some("TYPE"), Some(name), Some(kind)) if valid_name(name) => {
                    if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind) {
                        return Err(err(format!("unknown type {kind}")));
                    }
                    if s.types.insert(name.into(), kind.into()).is_some() {
                        return Err(err("type declared twice".into()));
                    }
                }
                (Some("HELP" | "TYPE"), _, _) => return Err(err("malformed".into())),
                _ => {}
            }
            continue;
        }
        let (name, rest) = match line.find(['{', ' ']) {
            Some(i) => line.split_at(i),
            None => return Err(err("no value".into())),
        };
        if !valid_name(name) {
            return Err(err("bad metric name".into()));
        }
        let mut labels = Vec::new();
        let rest = if let Some(body) = rest.strip_prefix('{') {
            let bytes = body.as_bytes();
            let mut i = 0;
            loop {
                if bytes.get(i) == Some(&b'}') {
                    i += 1;
                    break;
                }
                let eq = body[i..].find('=').ok_or_else(|| err("label".into()))? + i;
                let lname = &body[i..eq];
                if !valid_name(lname) {
                    return Err(err(format!("bad label name {lname:?}")));
                }
                if bytes.get(eq + 1) != Some(&b'"') {
                    return Err(err("label value not quoted".into()));
                }
                let mut value = String::new();
                i = eq + 2;
                loop {
                    match bytes.get(i) {
                        None => return Err(err("unterminated label value".into())),
                        Some(b'\\') => {
                            match bytes.get(i + 1) {
                                Some(b'\\') => value.push('\\'),
                                Some(b'"') => value.push('"'),
                                Some(b'n') => value.push('\n'),
                                _ => return Err(err("bad escape".into())),
                            }
                            i += 2;
                        }
                        Some(b'"') => break,
                        Some(_) => {
                            let c = body[i..].chars().next().expect("in bounds");
                            value.push(c);
                            i += c.len_utf8();
                        }
                    }
                }
                labels.push((lname.to_string(), value));
                i += 1;
                match bytes.get(i) {
                    Some(b',') => i += 1,
                    Some(b'}') => {}
                    _ => return Err(err("expected , or }".into())),
                }
            }
            &body[i..]
        } else {
            rest
        };
        let mut fields = rest.split_whitespace();
        let value =
            parse_value(fields.next().ok_or_else(|| err("no value".into()))?).map_err(&err)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| err("bad timestamp".into()))?;
        }
        if fields.next().is_some() {
            return Err(err("trailing text".into()));
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suf| {
                name.strip_suffix(suf)
                    .filter(|f| s.types.get(*f).map(String::as_str) == Some("histogram"))
            })
            .unwrap_or(name);
        if !s.types.contains_key(family) {
            return Err(err(format!("sample of {family} before its TYPE")));
        }
        labels.sort();
        let key = if labels.is_empty() {
            name.to_string()
        } else {
            let l: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
            format!("{name}{{{}}}", l.join(","))
        };
        if s.samples.insert(key, value).is_some() {
            return Err(err("duplicate sample".into()));
        }
    }
    for (family, kind) in &s.types {
        if kind != "histogram" {
            continue;
        }
        let prefix = format!("{family}_bucket{{le=");
        let mut buckets: Vec<(f64, f64)> = s
            .samples
            .iter()
            .filter_map(|(k, v)| {
                let le = k.strip_prefix(&prefix)?.strip_suffix('}')?;
                let le: String = serde_json::from_str(le).ok()?;
                Some((parse_value(&le).ok()?, *v))
            })
            .collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        if buckets.last().map(|b| b.0) != Some(f64::INFINITY) {
            return Err(format!("{family}: no +Inf bucket"));
        }
        if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
            return Err(format!("{family}: buckets are not cumulative"));
        }
        let count = s.samples.get(&format!("{family}_count"));
        if count != buckets.last().map(|b| &b.1) {
            return Err(format!("{family}: +Inf bucket differs from _count"));
        }
    }
    Ok(s)
}

/// GET http://addr/metrics, parsed.
fn scrape(addr: &str) -> Scrape {
    let mut c = std::net::TcpStream::connect(addr).expect("connect to metrics");
    c.write_all(b"GET /metrics HTTP/1.1\r\nHost: kilnd\r\n\r\n")
        .expect("request");
    let mut resp = String::new();
    c.read_to_string(&mut resp).expect("response");
    let (head, body) = resp.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    parse_prometheus(body).unwrap_or_else(|e| panic!("{e}\n{body}"))
}

#[test]
fn the_prometheus_parser_refuses_what_it_must() {
    let ok = "# TYPE a counter\na 1\n# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 3\nh_count 2\n";
    let s = parse_prometheus(ok).expect("valid");
    assert_eq!(s.get("a"), 1.0);
    assert_eq!(s.get("h_bucket{le=\"+Inf\"}"), 2.0);
    for bad in [
        "a 1\n",                                                                          // no TYPE
        "# TYPE a counter\na{x=1} 1\n",            // unquoted label
        "# TYPE a counter\na one\n",               // bad value
        "# TYPE a counter\na 1",                   // no final newline
        "# TYPE a counter\n# TYPE a gauge\na 1\n", // typed twice
        "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_count 1\n", // not cumulative
        "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_count 1\n", // count differs
    ] {
        assert!(parse_prometheus(bad).is_err(), "accepted {bad:?}");
    }
}

/// The metrics address kilnd logged (`--metrics-addr 127.0.0.1:0`).
fn metrics_addr(log: &Path) -> String {
    let text = wait_log(log, "serving metrics", 1);
    let line = text
        .lines()
        .find(|l| l.contains("serving metrics"))
        .expect("the line");
    let v: serde_json::Value = serde_json::from_str(line).expect("a JSON log line");
    let local = v["local"].as_str().expect("local field");
    local
        .trim_start_matches("Some(")
        .trim_end_matches(')')
        .to_string()
}

#[tokio::test]
async fn metrics_count_builds_and_each_build_logs_json_lines() {
    let ns = "ops-metrics";
    let h = Harness::with_busybox(ns).await;
    let k = h
        .start_kilnd_with(
            ns,
            &["--metrics-addr", "127.0.0.1:0", "--log-format", "json"],
        )
        .await
        .expect("kilnd starts");
    let addr = metrics_addr(&k.log);
    let before = scrape(&addr);
    assert_eq!(before.get("kilnd_builds_running"), 0.0);
    assert_eq!(before.get("kilnd_builds_finished_total"), 0.0);
    assert_eq!(before.types["kilnd_step_duration_seconds"], "histogram");

    let ctx = h.context(
        "ops-metrics",
        &[("Dockerfile", "FROM busybox\nRUN echo counted > /c\n")],
    );
    remote(&h, &k, ns, &["-t", "ops:1", ctx.to_str().expect("utf8")]).ok();
    let after = scrape(&addr);
    assert_eq!(after.get("kilnd_builds_finished_total"), 1.0);
    assert_eq!(after.get("kilnd_builds_failed_total"), 0.0);
    assert_eq!(after.get("kilnd_builds_running"), 0.0);
    assert!(after.get("kilnd_cache_misses_total") >= 1.0, "{after:?}");
    assert!(
        after.get("kilnd_step_duration_seconds_count") >= 1.0,
        "{after:?}"
    );
    assert_eq!(
        after.get(&format!("kilnd_leases_held{{namespace={ns:?}}}")),
        0.0,
        "the build's lease is gone"
    );

    // The same build again: its steps come from the cache.
    remote(&h, &k, ns, &["-t", "ops:2", ctx.to_str().expect("utf8")]).ok();
    let cached = scrape(&addr);
    assert_eq!(cached.get("kilnd_builds_finished_total"), 2.0);
    assert!(
        cached.get("kilnd_cache_hits_total") > after.get("kilnd_cache_hits_total"),
        "{cached:?}"
    );

    let bad = h.context(
        "ops-metrics-bad",
        &[("Dockerfile", "FROM busybox\nRUN exit 3\n")],
    );
    let out = remote(&h, &k, ns, &[bad.to_str().expect("utf8")]);
    assert!(!out.success);
    let failed = scrape(&addr);
    assert_eq!(failed.get("kilnd_builds_finished_total"), 3.0);
    assert_eq!(failed.get("kilnd_builds_failed_total"), 1.0);

    // One JSON object per line; a start and an end line per build.
    let text = wait_log(&k.log, "build finished", 3);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let finished: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| v["message"] == "build finished")
        .collect();
    assert_eq!(finished.len(), 3, "{text}");
    let ok = finished[0];
    assert_eq!(ok["level"], "INFO");
    assert_eq!(ok["result"], "ok");
    assert_eq!(ok["client"], "uid 0");
    assert_eq!(ok["frontend"], "dockerfile.v0");
    assert!(ok["duration_ms"].is_u64(), "{ok}");
    let r#ref = ok["ref"].as_str().expect("ref");
    assert!(!r#ref.is_empty());
    assert!(
        lines
            .iter()
            .any(|v| v["message"] == "build started" && v["ref"] == r#ref),
        "{text}"
    );
    let bad = finished[2];
    assert_eq!(bad["result"], "failed");
    assert!(
        bad["error"]
            .as_str()
            .is_some_and(|e| e.contains("exit code: 3")),
        "{bad}"
    );
}

#[tokio::test]
async fn sighup_keeps_kilnd_running_and_reloads_the_log_level() {
    let ns = "ops-sighup";
    let h = Harness::with_busybox(ns).await;
    let config = h.state_dir().join("kilnd-sighup.toml");
    std::fs::write(&config, "debug = false\n").expect("config");
    let k = h
        .start_kilnd_with(ns, &["--config", config.to_str().expect("utf8")])
        .await
        .expect("kilnd starts");
    let pid = nix::unistd::Pid::from_raw(k.pid().expect("running") as i32);
    let hup = || nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");

    // An invalid file: logged, nothing changes, kilnd serves on.
    std::fs::write(&config, "no-such-key = 1\n").expect("config");
    hup();
    wait_log(&k.log, "the configuration is invalid", 1);
    assert_eq!(
        health(&k.socket, "").await.expect("still serving"),
        ServingStatus::Serving as i32
    );

    // debug = true: applied at once, so the next build logs its steps.
    std::fs::write(&config, "debug = true\n").expect("config");
    hup();
    wait_log(&k.log, "configuration read again", 1);
    let before = std::fs::read_to_string(&k.log).unwrap_or_default();
    assert!(!before.contains("step done"), "{before}");
    let ctx = h.context(
        "ops-sighup",
        &[("Dockerfile", "FROM busybox\nRUN echo reloaded\n")],
    );
    remote(&h, &k, ns, &[ctx.to_str().expect("utf8")]).ok();
    let text = wait_log(&k.log, "step done", 1);
    assert!(text.contains("RUN echo reloaded"), "{text}");
    assert_eq!(
        health(&k.socket, "").await.expect("still serving"),
        ServingStatus::Serving as i32
    );
}

#[tokio::test]
async fn socket_activation_and_readiness_as_systemd_does_them() {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let ns = "ops-activation";
    let h = Harness::with_busybox(ns).await;
    let dir = h.state_dir();
    let socket = dir.join("activated.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    let notify_path = dir.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let log = dir.join("kilnd-activation.log");
    let fd = listener.as_raw_fd();
    let mut cmd = Command::new("/bin/sh");
    // LISTEN_PID is the shell's pid, which exec hands to kilnd.
    cmd.arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$@\"")
        .arg("sh")
        .arg(kilnd_binary().expect("kilnd"))
        .args(["--addr", "fd://", "--root"])
        .arg(dir.join("kilnd-root-activation"))
        .arg("--containerd-address")
        .arg(h.socket())
        .args(["--namespace", ns, "--network-mode", "host"])
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"));
    // SAFETY: dup2 and fcntl are async-signal-safe; they put the listening
    // socket at descriptor 3 (SD_LISTEN_FDS_START) without close-on-exec
    // (dup2 onto itself keeps the flag, so it is cleared explicitly).
    unsafe {
        cmd.pre_exec(move || {
            if fd != 3 && libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().expect("kilnd starts");

    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).unwrap_or_else(|e| {
        let _ = child.kill();
        panic!(
            "no READY=1 ({e}): {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        )
    });
    assert_eq!(&buf[..n], b"READY=1");
    // Answers on the socket it was handed, not one it made.
    assert_eq!(
        health(&socket, "").await.expect("Check over fd://"),
        ServingStatus::Serving as i32
    );
    let c = containerd_client::connect(&socket).await.expect("connect");
    ControlClient::new(c)
        .list_workers(kiln_proto::control::ListWorkersRequest::default())
        .await
        .expect("Control over fd://");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let n = notify.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1");
    let status = child.wait().expect("exit");
    assert!(status.success(), "{status:?}");
    assert!(socket.exists(), "systemd's socket is not kilnd's to remove");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(text.contains("listening"), "{text}");
    drop(listener);
}

#[tokio::test]
async fn fd_without_sockets_fails_naming_the_address() {
    let h = Harness::start().await.expect("containerd");
    let out = Command::new(kilnd_binary().expect("kilnd"))
        .args(["--addr", "fd://", "--network-mode", "host", "--root"])
        .arg(h.state_dir().join("kilnd-root-nofd"))
        .arg("--containerd-address")
        .arg(h.socket())
        .args(["--namespace", "ops-nofd"])
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_PID")
        .output()
        .expect("kilnd runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        "kilnd: fd://: no sockets were passed by socket activation (LISTEN_FDS); start kilnd \
         through its systemd socket unit, or listen on unix:// or tcp://",
        "{err}"
    );
}

#[test]
fn the_systemd_units_verify() {
    let dir = tempfile::tempdir().expect("temp dir");
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd");
    let kilnd = kilnd_binary().expect("kilnd");
    let mut paths = Vec::new();
    for name in ["kilnd.socket", "kilnd.service"] {
        let text = std::fs::read_to_string(units.join(name)).expect("unit");
        // systemd-analyze checks that ExecStart's program exists.
        let text = text.replace("/usr/local/bin/kilnd", kilnd.to_str().expect("utf8"));
        let p = dir.path().join(name);
        std::fs::write(&p, text).expect("write unit");
        paths.push(p);
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(&paths)
        .output()
        .expect("systemd-analyze runs (install systemd)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let about_ours: Vec<&str> = err.lines().filter(|l| l.contains("kilnd.")).collect();
    assert!(about_ours.is_empty(), "{err}");
    let service = std::fs::read_to_string(units.join("kilnd.service")).expect("unit");
    assert!(service.contains("Type=notify"), "readiness via sd_notify");
    assert!(service.contains("--addr fd://"), "socket activation");
}

// ---------------------------------------------------------------------------
// BuildKit's error details.

/// The typed details of a Solve error: (type URL, JSON value).
fn details(s: &tonic::Status) -> Vec<(String, serde_json::Value)> {
    let rpc = kiln_proto::rpc::Status::decode(s.details()).expect("google.rpc.Status");
    assert_eq!(rpc.code, s.code() as i32);
    rpc.details
        .into_iter()
        .map(|d| {
            let v = serde_json::from_slice(&d.value).expect("a JSON detail");
            (d.type_url, v)
        })
        .collect()
}

#[tokio::test]
async fn a_failed_step_carries_buildkit_source_details() {
    let ns = "ops-errdetails";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");

    // (1) LLB with a source map, as buildctl's own LLB carries.
    let (src_b, src_d) = op_bytes(&llb::Op {
        op: Some(llb::op::Op::Source(llb::SourceOp {
            identifier: "docker-image://docker.io/library/busybox:latest".into(),
            attrs: HashMap::new(),
        })),
        ..Default::default()
    });
    let (exec_b, exec_d) = op_bytes(&llb::Op {
        inputs: vec![llb::Input {
            digest: src_d.clone(),
            index: 0,
        }],
        op: Some(llb::op::Op::Exec(llb::ExecOp {
            meta: Some(llb::Meta {
                args: vec!["/bin/sh".into(), "-c".into(), "exit 5".into()],
                cwd: "/".into(),
                env: vec!["PATH=/bin".into()],
                ..Default::default()
            }),
            mounts: vec![llb::Mount {
                input: 0,
                dest: "/".into(),
                output: 0,
                ..Default::default()
            }],
            ..Default::default()
        })),
        ..Default::default()
    });
    let (term_b, _) = op_bytes(&llb::Op {
        inputs: vec![llb::Input {
            digest: exec_d.clone(),
            index: 0,
        }],
        ..Default::default()
    });
    let program = "image = busybox\nrun('exit 5')\n";
    let range = llb::Range {
        start: Some(llb::Position {
            line: 2,
            character: 1,
        }),
        end: Some(llb::Position {
            line: 2,
            character: 12,
        }),
    };
    let def = llb::Definition {
        def: vec![src_b, exec_b, term_b],
        source: Some(llb::Source {
            locations: HashMap::from([(
                exec_d.clone(),
                llb::Locations {
                    locations: vec![llb::Location {
                        source_index: 0,
                        ranges: vec![range],
                    }],
                },
            )]),
            infos: vec![llb::SourceInfo {
                filename: "build.star".into(),
                data: program.as_bytes().to_vec(),
                definition: None,
                language: "starlark".into(),
            }],
        }),
        ..Default::default()
    };
    let ch = containerd_client::connect(&k.socket)
        .await
        .expect("connect");
    let err = ControlClient::new(ch)
        .solve(SolveRequest {
            r#ref: "opserrdetails000000000001".into(),
            definition: Some(def.clone()),
            ..Default::default()
        })
        .await
        .expect_err("exit 5 fails the build");
    assert!(err.message().contains("exit code: 5"), "{}", err.message());
    // As buildkitd answers an exit: code Unknown, so buildx and buildctl
    // print the message without a code before it.
    assert_eq!(err.code(), tonic::Code::Unknown, "{}", err.message());

    // An exporter option kilnd would not act on fails before the build,
    // whatever client sent it (buildx passes `-o` attributes through).
    let refused = |attrs: &[(&str, &str)]| SolveRequest {
        r#ref: "opserrdetails000000000002".into(),
        definition: Some(def.clone()),
        exporters: vec![kiln_proto::control::Exporter {
            r#type: "image".into(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }],
        ..Default::default()
    };
    let ch = containerd_client::connect(&k.socket)
        .await
        .expect("connect");
    // A client asks the Status of its ref beside the Solve (buildctl and
    // buildx do): for a refused build it ends, empty and OK, instead of
    // waiting for a build that never starts and failing "no such job".
    let status_of_refused = || {
        let mut c = ControlClient::new(ch.clone());
        async move {
            let mut s = c
                .status(kiln_proto::control::StatusRequest {
                    r#ref: "opserrdetails000000000002".into(),
                })
                .await
                .expect("the status of a refused build")
                .into_inner();
            s.message().await.expect("ends OK")
        }
    };
    let beside = tokio::spawn(status_of_refused());
    for (attrs, want) in [
        (
            &[
                ("name", "x"),
                ("oci-mediatypes", "false"),
                ("annotation-manifest-descriptor.a", "b"),
            ][..],
            "cannot export annotations with \"oci-mediatypes=false\"",
        ),
        (
            &[("prefer-nondist-layers", "true")][..],
            "output option prefer-nondist-layers is not supported yet",
        ),
        (
            &[("compression-level", "-2")][..],
            "compression-level=-2 (Huffman-only gzip) is not supported yet",
        ),
        (
            &[("annotation-layer.org.opencontainers.image.title", "t")][..],
            "unrecognized annotation type layer",
        ),
        (
            &[("frobnicate", "1")][..],
            "unknown output option \"frobnicate\" for type=image",
        ),
        (
            &[("name", "x"), ("unpack", "maybe")][..],
            "non-bool value specified for unpack: strconv.ParseBool: parsing \"maybe\": invalid syntax",
        ),
    ] {
        let err = ControlClient::new(ch.clone())
            .solve(refused(attrs))
            .await
            .expect_err("refused before the build");
        // Unknown, as BuildKit answers a failed build: clients print the
        // text alone.
        assert_eq!(
            (err.code(), err.message()),
            (tonic::Code::Unknown, want),
            "{attrs:?}"
        );
    }
    // Before the build: no job ever existed, so no record either (a
    // client driving its own frontend would have started its transfers).
    let records = common::build_records(ch.clone()).await;
    assert!(
        records
            .iter()
            .all(|r| r.r#ref != "opserrdetails000000000002"),
        "a refused build left a record"
    );
    assert_eq!(beside.await.expect("status task"), None, "nothing to show");
    assert_eq!(status_of_refused().await, None, "asked after the answer");
    let d = details(&err);
    let urls: Vec<&str> = d.iter().map(|(u, _)| u.as_str()).collect();
    assert_eq!(urls, vec![VERTEX_URL, SOURCE_URL], "{d:?}");
    assert_eq!(d[0].1, serde_json::json!({ "digest": exec_d }));
    let data = base64_std(program.as_bytes());
    assert_eq!(
        d[1].1,
        serde_json::json!({
            "info": {"filename": "build.star", "data": data, "language": "starlark"},
            "ranges": [{"start": {"line": 2, "character": 1}, "end": {"line": 2, "character": 12}}],
        })
    );

    // (2) The Dockerfile frontend through the gateway flow, as buildctl
    // drives it: the error Solve returns carries the Dockerfile and line.
    let dockerfile = "FROM busybox\nRUN echo about to fail && exit 4\n";
    let stderr = failing_dockerfile_build(&h, &k, "ops-errdetails", dockerfile);
    let source: serde_json::Value = stderr
        .lines()
        .find_map(|l| l.strip_prefix(&format!("buildctl-like: detail {SOURCE_URL} ")))
        .map(|j| serde_json::from_str(j).expect("JSON"))
        .unwrap_or_else(|| panic!("no source detail:\n{stderr}"));
    assert_eq!(
        source,
        serde_json::json!({
            "info": {
                "filename": "Dockerfile",
                "data": base64_std(dockerfile.as_bytes()),
                "language": "Dockerfile",
            },
            "ranges": [{"start": {"line": 2}, "end": {"line": 2}}],
        })
    );
    assert!(
        stderr.contains(&format!("buildctl-like: detail {VERTEX_URL} ")),
        "{stderr}"
    );

    // (3) A Dockerfile that does not parse: its line, before any step.
    let unparsable = "FROM busybox\nRUNN echo typo\n";
    let stderr = failing_dockerfile_build(&h, &k, "ops-errdetails-parse", unparsable);
    let source: serde_json::Value = stderr
        .lines()
        .find_map(|l| l.strip_prefix(&format!("buildctl-like: detail {SOURCE_URL} ")))
        .map(|j| serde_json::from_str(j).expect("JSON"))
        .unwrap_or_else(|| panic!("no source detail:\n{stderr}"));
    assert_eq!(
        source["ranges"],
        serde_json::json!([{"start": {"line": 2}, "end": {"line": 2}}])
    );
    assert_eq!(source["info"]["data"], base64_std(unparsable.as_bytes()));
    // As BuildKit's frontend: no code, so clients print the message alone
    // (not "InvalidArgument: Dockerfile:2: ..."), in BuildKit's words.
    assert!(stderr.contains("buildctl-like: code Unknown\n"), "{stderr}");
    assert!(
        stderr.contains(
            "buildctl-like: solve: dockerfile parse error on line 2: unknown instruction: RUNN (did you mean RUN?)\n"
        ),
        "{stderr}"
    );

    // (4) An error about the whole file and (5) a copy source that is not
    // there: BuildKit's text alone, code Unknown, so clients print no
    // "NotFound: " or file name before it.
    for (name, dockerfile, text) in [
        (
            "ops-errdetails-empty",
            "# only a comment\n",
            "file with no instructions",
        ),
        (
            "ops-errdetails-missing",
            "FROM busybox AS s\nFROM busybox\nCOPY --from=s /nope /x\n",
            "lstat /nope: no such file or directory",
        ),
    ] {
        let stderr = failing_dockerfile_build(&h, &k, name, dockerfile);
        assert!(stderr.contains("buildctl-like: code Unknown\n"), "{stderr}");
        assert!(
            stderr.contains(&format!("buildctl-like: solve: {text}\n")),
            "{stderr}"
        );
    }
    // (6) A source that cannot be fetched: kiln's reason is its own, but
    // the code is BuildKit's Unknown, not "FailedPrecondition: " in front.
    let stderr = failing_dockerfile_build(
        &h,
        &k,
        "ops-errdetails-fetch",
        "FROM busybox\nADD http://127.0.0.1:1/x /x\n",
    );
    assert!(stderr.contains("buildctl-like: code Unknown\n"), "{stderr}");
    assert!(
        stderr.contains("buildctl-like: solve: failed to fetch http://127.0.0.1:1/x"),
        "{stderr}"
    );
}

/// The stderr of `buildctl-like` building `dockerfile` (in a context
/// named `name`) through `k`, a build that must fail.
fn failing_dockerfile_build(h: &Harness, k: &Kilnd, name: &str, dockerfile: &str) -> String {
    let ctx = h.context(name, &[("Dockerfile", dockerfile)]);
    let out = Command::new(buildctl_like_binary().expect("buildctl-like"))
        .arg(k.addr())
        .arg(&ctx)
        .output()
        .expect("buildctl-like runs");
    assert!(!out.status.success(), "{name} built");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Standard base64 with padding, written out here so the test does not
/// share the daemon's encoder.
fn base64_std(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}
