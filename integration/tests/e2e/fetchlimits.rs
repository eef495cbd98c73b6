//! The bounds on remote fetches (`[fetch]` of kilnd.toml, `KILN_FETCH_*`
//! of embedded `kiln build`) against real servers on loopback: an HTTP
//! server whose bodies are over a small size bound (announced and not),
//! that never answers, that stops after the headers, that trickles; a
//! `git daemon` serving a repository over the bound; a listener that takes
//! git's connection (`git://` or ssh) and never answers, past the overall
//! and the idle bound. Each build fails naming the URL and
//! the bound, and leaves nothing: no containerd leftovers (active
//! snapshots, leases), no new content, no mount or step directory, no git
//! process.

use crate::common;

use common::remote;
use kiln_integration::gitdaemon::{git, GitDaemon};
use kiln_integration::{httpserver, state_leftovers, Harness, KilnOutput};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// 256 KiB: four times the bound the size tests set.
const BIG: usize = 256 << 10;
const LIMIT: &str = "64KB";
const LIMIT_SHOWN: &str = "65536 bytes (64.0 KiB)";

/// What the `/gated` answer of [`http_server`] waits on.
#[derive(Debug, Default)]
struct Gate {
    /// A GET of `/gated` arrived.
    asked: AtomicBool,
    /// It may be answered.
    open: AtomicBool,
}

/// An HTTP/1.1 server on loopback. GET `/big` sends [`BIG`] bytes with a
/// `Content-Length`, `/unannounced` the same without one, `/gated` the
/// same once its [`Gate`] is open; `/silent` (and below it) never
/// answers; `/stall`
/// sends the headers and then nothing; `/trickle` sends a byte every
/// 200 ms. HEAD answers at once without an `ETag`.
async fn http_server() -> (u16, Arc<Gate>) {
    let gate = Arc::new(Gate::default());
    let g = gate.clone();
    let port = httpserver::serve(move |req, mut conn| {
        let gate = g.clone();
        async move {
            if req.method == "HEAD" {
                return httpserver::respond(&mut conn, "200 OK", &[], b"").await;
            }
            let body = vec![b'x'; BIG];
            match req.target.as_str() {
                "/big" => httpserver::respond(&mut conn, "200 OK", &[], &body).await,
                "/unannounced" => {
                    let _ = conn
                        .write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
                        .await;
                    let _ = conn.write_all(&body).await;
                }
                "/gated" => {
                    gate.asked.store(true, Ordering::SeqCst);
                    while !gate.open.load(Ordering::SeqCst) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    httpserver::respond(&mut conn, "200 OK", &[], &body).await;
                }
                t if t.starts_with("/silent") => tokio::time::sleep(Duration::from_secs(600)).await,
                "/stall" => {
                    let _ = conn
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nab")
                        .await;
                    tokio::time::sleep(Duration::from_secs(600)).await;
                }
                "/trickle" => {
                    let _ = conn
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n")
                        .await;
                    while conn.write_all(b"t").await.is_ok() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
                _ => httpserver::respond(&mut conn, "404 Not Found", &[], b"").await,
            }
        }
    })
    .await;
    (port, gate)
}

/// A listener that accepts connections and never sends a byte.
async fn silent_listener() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    port
}

/// Runs embedded `kiln build` of a context holding `dockerfile` with
/// these `KILN_FETCH_*` settings; returns its output and how long it took.
fn build_with(
    h: &Harness,
    ns: &str,
    name: &str,
    dockerfile: &str,
    env: &[(&str, &str)],
) -> (KilnOutput, Duration) {
    let ctx = h.context(name, &[("Dockerfile", dockerfile)]);
    let mut cmd = h.kiln_command(ns).expect("kiln command");
    cmd.envs(env.iter().copied())
        .args(["build", "--progress", "plain"])
        .arg(&ctx);
    let start = Instant::now();
    let out: KilnOutput = cmd.output().expect("kiln runs").into();
    (out, start.elapsed())
}

fn content(h: &Harness, ns: &str) -> Vec<String> {
    let mut v: Vec<String> = h
        .ctr(ns, &["content", "ls", "-q"])
        .expect("ctr content ls")
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// The build failed with `want` in its error, and left nothing behind.
fn assert_failed_clean(h: &Harness, ns: &str, out: &KilnOutput, want: &str, before: &[String]) {
    assert!(!out.success, "the build must fail:\n{}", out.stderr);
    assert!(
        out.stderr.contains(want),
        "want {want:?} in:\n{}",
        out.stderr
    );
    let left = h.leftovers(ns).expect("leftovers");
    assert!(left.is_empty(), "left in containerd: {left:?}");
    let left = state_leftovers(&h.state_dir().join("kiln-root"));
    assert!(left.is_empty(), "left in kiln's root: {left:?}");
    // Nothing new (containerd's GC may have taken an earlier build's
    // unnamed result meanwhile).
    let new: Vec<String> = content(h, ns)
        .into_iter()
        .filter(|c| !before.contains(c))
        .collect();
    assert!(new.is_empty(), "new content: {new:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_downloads_stop_at_the_size_and_time_bounds() {
    let ns = "fetchlimits-http";
    let h = Harness::with_busybox(ns).await;
    let (port, _) = http_server().await;
    let before = content(&h, ns);
    let url = |p: &str| format!("http://127.0.0.1:{port}/{p}");

    // Over the size bound, refused by its Content-Length or as it streams.
    for path in ["big", "unannounced"] {
        let (out, _) = build_with(
            &h,
            ns,
            path,
            &format!("FROM busybox\nADD {} /got\n", url(path)),
            &[("KILN_FETCH_MAX_SIZE", LIMIT)],
        );
        let want = format!(
            "Dockerfile:2: fetching {} exceeds the size limit of {LIMIT_SHOWN}",
            url(path)
        );
        assert_failed_clean(&h, ns, &out, &want, &before);
    }

    // A server that never answers, and one that stops after the headers:
    // the idle bound.
    for path in ["silent", "stall"] {
        let (out, took) = build_with(
            &h,
            ns,
            path,
            &format!("FROM busybox\nADD {} /got\n", url(path)),
            &[("KILN_FETCH_IDLE_TIMEOUT", "2s")],
        );
        let want = format!(
            "Dockerfile:2: fetching {} received nothing for 2s (idle-timeout",
            url(path)
        );
        assert_failed_clean(&h, ns, &out, &want, &before);
        assert!(took < Duration::from_secs(60), "took {took:?}");
    }

    // A server that sends a byte at a time is never idle: the overall
    // bound stops it.
    let (out, took) = build_with(
        &h,
        ns,
        "trickle",
        &format!("FROM busybox\nADD {} /got\n", url("trickle")),
        &[
            ("KILN_FETCH_TIMEOUT", "3s"),
            ("KILN_FETCH_IDLE_TIMEOUT", "2s"),
        ],
    );
    let want = format!(
        "Dockerfile:2: fetching {} did not finish within the timeout of 3s (timeout",
        url("trickle")
    );
    assert_failed_clean(&h, ns, &out, &want, &before);
    assert!(took < Duration::from_secs(60), "took {took:?}");

    // An invalid setting is refused before anything runs.
    let (out, _) = build_with(
        &h,
        ns,
        "invalid",
        "FROM busybox\n",
        &[("KILN_FETCH_TIMEOUT", "soon")],
    );
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("invalid value \"soon\" for KILN_FETCH_TIMEOUT"),
        "{}",
        out.stderr
    );
}

/// `n` bytes that do not compress (xorshift), so git's pack is as large.
fn noise(n: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// Processes whose command line mentions `needle`.
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                found.push(cmd);
            }
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_fetches_stop_at_the_size_and_time_bounds() {
    let ns = "fetchlimits-git";
    let h = Harness::with_busybox(ns).await;
    let before = content(&h, ns);
    let base = h.state_dir().join("git");
    let repo = base.join("big");
    std::fs::create_dir_all(&repo).expect("mkdir");
    std::fs::write(repo.join("noise.bin"), noise(BIG)).expect("write");
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "big"]);
    let daemon = GitDaemon::start(&base, h.state_dir().join("git-daemon.log"));

    // The repository is over the bound.
    let url = daemon.url("big");
    let (out, _) = build_with(
        &h,
        ns,
        "git-big",
        &format!("FROM busybox\nADD {url} /src\n"),
        &[("KILN_FETCH_MAX_SIZE", LIMIT)],
    );
    let want = format!("Dockerfile:2: fetching {url} exceeds the size limit of {LIMIT_SHOWN}");
    assert_failed_clean(&h, ns, &out, &want, &before);
    // Under a larger bound the same repository is added.
    let (out, _) = build_with(
        &h,
        ns,
        "git-fits",
        &format!("FROM busybox\nADD {url} /src\n"),
        &[("KILN_FETCH_MAX_SIZE", "4MB")],
    );
    assert!(out.success, "{}", out.stderr);

    // A server that takes the connection and never answers: `git
    // ls-remote` is killed at the deadline, with everything it started.
    let port = silent_listener().await;
    let url = format!("git://127.0.0.1:{port}/r.git");
    let before = content(&h, ns);
    let (out, took) = build_with(
        &h,
        ns,
        "git-silent",
        &format!("FROM busybox\nADD {url} /src\n"),
        &[("KILN_FETCH_TIMEOUT", "3s")],
    );
    let want = format!("Dockerfile:2: fetching {url} did not finish within the timeout of 3s");
    assert!(took < Duration::from_secs(60), "took {took:?}");
    assert_failed_clean(&h, ns, &out, &want, &before);
    assert_eq!(
        processes_with(&url),
        Vec::<String>::new(),
        "git left running"
    );

    // Cancelled (SIGINT to kiln alone, not to git's process group) while
    // git waits on that server under the default bounds: git and what it
    // started are killed too.
    let ctx = h.context(
        "git-cancel",
        &[("Dockerfile", &format!("FROM busybox\nADD {url} /src\n"))],
    );
    let child = h
        .kiln_command(ns)
        .expect("kiln command")
        .args(["build", "--progress", "plain"])
        .arg(&ctx)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kiln starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while processes_with(&url).is_empty() {
        assert!(Instant::now() < deadline, "git never started");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).expect("pid"));
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).expect("SIGINT");
    let out: KilnOutput = child.wait_with_output().expect("kiln ends").into();
    assert_eq!(
        processes_with(&url),
        Vec::<String>::new(),
        "git left running"
    );
    assert_failed_clean(&h, ns, &out, "cancel", &before);
    drop(daemon);
}

/// The idle bound holds for every git transport: a `git://`, an
/// `ssh://` and an `http://` remote whose server takes the connection and
/// never answers fail at the idle timeout (far before the overall one),
/// naming the URL and the bound, and leave nothing (no git or ssh
/// process, no checkout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_fetches_stop_when_idle_over_any_transport() {
    let ns = "fetchlimits-git-idle";
    let h = Harness::with_busybox(ns).await;
    let before = content(&h, ns);
    let port = silent_listener().await;
    let (http_port, _) = http_server().await;
    // An agent for `--ssh default` (the ssh remote never gets to use it).
    let agent = kiln_integration::ssh::Agent::with_key(&h.state_dir().join("agent"));
    for (name, url) in [
        ("idle-git", format!("git://127.0.0.1:{port}/idle-git.git")),
        (
            "idle-ssh",
            format!("ssh://git@127.0.0.1:{port}/idle-ssh.git"),
        ),
        (
            "idle-http",
            format!("http://127.0.0.1:{http_port}/silent/idle-http.git"),
        ),
    ] {
        let ctx = h.context(
            name,
            &[("Dockerfile", &format!("FROM busybox\nADD {url} /src\n"))],
        );
        let mut cmd = h.kiln_command(ns).expect("kiln command");
        cmd.env("SSH_AUTH_SOCK", &agent.socket)
            .env("KILN_FETCH_IDLE_TIMEOUT", "2s")
            .env("KILN_FETCH_TIMEOUT", "90s")
            .args(["build", "--progress", "plain", "--ssh", "default"])
            .arg(&ctx);
        let start = Instant::now();
        let out: KilnOutput = cmd.output().expect("kiln runs").into();
        let took = start.elapsed();
        let want = format!(
            "Dockerfile:2: fetching {url} received nothing for 2s \
             (idle-timeout of kilnd's [fetch], KILN_FETCH_IDLE_TIMEOUT of kiln build)"
        );
        assert_failed_clean(&h, ns, &out, &want, &before);
        assert!(took < Duration::from_secs(60), "took {took:?}");
        // The repository's name is on git's command line and on ssh's.
        let needle = format!("/{name}.git");
        assert_eq!(
            processes_with(&needle),
            Vec::<String>::new(),
            "left running"
        );
    }
}

/// kilnd takes its bounds from `[fetch]` of its configuration file; here
/// an http build context (a URL, fetched by kilnd) over the size bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kilnd_reads_its_bounds_from_the_fetch_section() {
    let ns = "fetchlimits-kilnd";
    let h = Harness::with_busybox(ns).await;
    let (port, _) = http_server().await;
    let config = h.state_dir().join("kilnd-fetch.toml");
    std::fs::write(&config, format!("[fetch]\nmax-size = \"{LIMIT}\"\n")).expect("write config");
    let config = config.to_str().expect("utf8").to_string();
    let k = h
        .start_kilnd_with(ns, &["--config", &config])
        .await
        .expect("kilnd starts");
    let before = content(&h, ns);
    let url = format!("http://127.0.0.1:{port}/unannounced");
    let out = remote(&h, &k, ns, &[&url]);
    assert!(!out.success, "the build must fail:\n{}", out.stderr);
    let want = format!("fetching {url} exceeds the size limit of {LIMIT_SHOWN}");
    assert!(
        out.stderr.contains(&want),
        "want {want:?} in:\n{}",
        out.stderr
    );
    h.wait_no_leftovers(ns, &h.kilnd_root(ns), Duration::from_secs(10))
        .await
        .expect("nothing left");
    let new: Vec<String> = content(&h, ns)
        .into_iter()
        .filter(|c| !before.contains(c))
        .collect();
    assert!(new.is_empty(), "new content: {new:?}");
}

/// Waits (up to 60 s) until kilnd's log holds `needle` `n` times; returns
/// the log.
async fn wait_log(log: &std::path::Path, needle: &str, n: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if text.matches(needle).count() >= n {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} (x{n}) in:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGHUP applies a changed `[fetch]` to the builds that start after it:
/// a larger bound lets a download through, a smaller one stops it again,
/// while a build already running keeps the bound it started with; a file
/// that is not valid is logged with its name and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kilnd_applies_a_reloaded_fetch_section_to_later_builds() {
    let ns = "fetchlimits-reload";
    let h = Harness::with_busybox(ns).await;
    let (port, gate) = http_server().await;
    let config = h.state_dir().join("kilnd-reload.toml");
    let set = |max: &str| {
        std::fs::write(&config, format!("[fetch]\nmax-size = \"{max}\"\n")).expect("write config")
    };
    set(LIMIT);
    let k = h
        .start_kilnd_with(ns, &["--config", config.to_str().expect("utf8")])
        .await
        .expect("kilnd starts");
    let pid = nix::unistd::Pid::from_raw(i32::try_from(k.pid().expect("running")).expect("pid"));
    let hup = || nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    let url = format!("http://127.0.0.1:{port}/unannounced");
    let ctx = h.context(
        "reload-add",
        &[("Dockerfile", &format!("FROM busybox\nADD {url} /got\n"))],
    );
    let ctx = ctx.to_str().expect("utf8");
    let addr = k.addr();
    let build = |c: &str| remote(&h, &k, ns, &["--no-cache", c]);
    let too_large = format!("fetching {url} exceeds the size limit of {LIMIT_SHOWN}");
    let out = build(ctx);
    assert!(
        !out.success && out.stderr.contains(&too_large),
        "{}",
        out.stderr
    );

    // A larger bound: the same download goes through.
    set("1MB");
    hup();
    wait_log(&k.log, "configuration read again", 1).await;
    build(ctx).ok();

    // A build that started under 1MB keeps it while the bound drops back
    // to 64KB: its download, answered only after the reload, goes
    // through; the next build is stopped by the new bound.
    let gated = h.context(
        "reload-gated",
        &[(
            "Dockerfile",
            &format!("FROM busybox\nADD http://127.0.0.1:{port}/gated /got\n"),
        )],
    );
    let running = h
        .kiln_command(ns)
        .expect("kiln command")
        .args([
            "--addr",
            &addr,
            "build",
            "--progress",
            "plain",
            "--no-cache",
        ])
        .arg(&gated)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kiln starts");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !gate.asked.load(Ordering::SeqCst) {
        assert!(
            Instant::now() < deadline,
            "the gated download never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    set(LIMIT);
    hup();
    wait_log(&k.log, "configuration read again", 2).await;
    gate.open.store(true, Ordering::SeqCst);
    let out: KilnOutput = running.wait_with_output().expect("kiln ends").into();
    assert!(
        out.success,
        "the running build keeps its bound:\n{}",
        out.stderr
    );
    let out = build(ctx);
    assert!(
        !out.success && out.stderr.contains(&too_large),
        "{}",
        out.stderr
    );

    // A file that is not valid: logged with its name, the running
    // configuration (64KB) stays.
    std::fs::write(&config, "[fetch]\nmax-size = \"lots\"\n").expect("write config");
    hup();
    let log = wait_log(&k.log, "the configuration is invalid", 1).await;
    let line = log
        .lines()
        .find(|l| l.contains("the configuration is invalid"))
        .expect("logged");
    assert!(
        line.contains(&config.display().to_string()) && line.contains("fetch.max-size"),
        "{line}"
    );
    let out = build(ctx);
    assert!(
        !out.success && out.stderr.contains(&too_large),
        "{}",
        out.stderr
    );
}
