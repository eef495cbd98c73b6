//! The main build context from a URL (issue 13): `kiln build <git URL>`
//! embedded and through kilnd, `--opt context=<git URL>` as buildctl sends
//! it, and http(s) contexts (a tarball, a lone Dockerfile). Repositories
//! are served on loopback by `git daemon` and by `git http-backend` behind
//! a small CGI server in this file, which keeps one repository private
//! (a token is needed) and counts the fetches it serves.
//!
//! Checked: branch, tag, commit id, subdir (the Dockerfile read from it),
//! submodules, the query form, a private repository with a token from
//! `--secret` (embedded) and from the session (kilnd), that a second
//! build of the same commit fetches nothing, and that the image equals
//! the one built from the same files in a local directory.

use kiln_integration::gitdaemon::{git, GitDaemon};
use kiln_integration::{buildctl_like_binary, Harness};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const TOKEN: &str = "s3cret-t0ken";

fn write(path: &Path, body: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, body).expect("write");
}

/// What the HTTP server saw.
#[derive(Default)]
struct Seen {
    /// upload-pack requests that fetch objects (not ls-refs).
    fetches: AtomicUsize,
    /// Requests for a private repository refused for lack of the token.
    refused: AtomicUsize,
    /// Every Authorization header value, to check what was sent.
    authorizations: std::sync::Mutex<Vec<String>>,
}

/// An HTTP/1.1 server on loopback: `/git/…` runs `git http-backend` as a
/// CGI on the repositories under `root` (those under `private/` only with
/// the token as GitHub takes it, `basic base64(x-access-token:TOKEN)`),
/// `/files/NAME` serves `files/NAME` under `root`.
async fn http_server(root: PathBuf) -> (u16, Arc<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let port = listener.local_addr().expect("addr").port();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(serve(conn, root.clone(), s.clone()));
        }
    });
    (port, seen)
}

async fn serve(mut conn: tokio::net::TcpStream, root: PathBuf, seen: Arc<Seen>) {
    let mut req = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = req.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&req[..head_end]).to_string();
    let mut lines = head.lines();
    let mut first = lines.next().unwrap_or("").split_whitespace();
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |k: &str| {
        headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let length: usize = header("content-length").parse().unwrap_or(0);
    let mut body = req[head_end..].to_vec();
    while body.len() < length {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    let auth = header("authorization");
    if !auth.is_empty() {
        seen.authorizations.lock().expect("lock").push(auth.clone());
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let resp = if let Some(file) = path.strip_prefix("/files/") {
        match std::fs::read(root.join("files").join(file)) {
            Ok(data) => {
                let mut r = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    data.len()
                )
                .into_bytes();
                if method != "HEAD" {
                    r.extend_from_slice(&data);
                }
                r
            }
            Err(_) => {
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
            }
        }
    } else if let Some(git_path) = path.strip_prefix("/git") {
        use base64::Engine as _;
        let want = format!(
            "basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("x-access-token:{TOKEN}"))
        );
        if git_path.starts_with("/private/") && !auth.eq_ignore_ascii_case(&want) {
            seen.refused.fetch_add(1, Ordering::SeqCst);
            b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"git\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
        } else {
            if method == "POST"
                && git_path.ends_with("/git-upload-pack")
                && !body.windows(15).any(|w| w == b"command=ls-refs")
            {
                seen.fetches.fetch_add(1, Ordering::SeqCst);
            }
            cgi(&root, &method, git_path, query, &header, &body).await
        }
    } else {
        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec()
    };
    let _ = conn.write_all(&resp).await;
    let _ = conn.shutdown().await;
}

/// Runs `git http-backend` for one request; its CGI answer as HTTP.
async fn cgi(
    root: &Path,
    method: &str,
    path: &str,
    query: &str,
    header: &(dyn Fn(&str) -> String + Sync),
    body: &[u8],
) -> Vec<u8> {
    let mut child = tokio::process::Command::new("git")
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("REQUEST_METHOD", method)
        .env("PATH_INFO", path)
        .env("QUERY_STRING", query)
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("HTTP_GIT_PROTOCOL", header("git-protocol"))
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("git http-backend starts");
    let mut stdin = child.stdin.take().expect("stdin");
    let body = body.to_vec();
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
    });
    let out = child.wait_with_output().await.expect("http-backend runs");
    let _ = writer.await;
    let split = out
        .stdout
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4))
        .or_else(|| {
            out.stdout
                .windows(2)
                .position(|w| w == b"\n\n")
                .map(|i| (i, 2))
        });
    let Some((at, sep)) = split else {
        return b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec();
    };
    let cgi_head = String::from_utf8_lossy(&out.stdout[..at]).to_string();
    let mut status = "200 OK".to_string();
    let mut resp_headers = String::new();
    for l in cgi_head.lines() {
        match l.split_once(':') {
            Some((k, v)) if k.eq_ignore_ascii_case("status") => status = v.trim().to_string(),
            Some(_) => {
                resp_headers.push_str(l.trim_end());
                resp_headers.push_str("\r\n");
            }
            None => {}
        }
    }
    let payload = &out.stdout[at + sep..];
    let mut r = format!(
        "HTTP/1.1 {status}\r\n{resp_headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
        payload.len()
    )
    .into_bytes();
    r.extend_from_slice(payload);
    r
}

/// The repositories: `repo` (the public one, served by both servers) and
/// `private/repo` (a clone of it, over HTTP with the token only).
struct Repos {
    main: String,
    first: String,
    tag_commit: String,
}

const DOCKERFILE: &str = "FROM busybox\nCOPY . /ctx\nRUN cat /ctx/a.txt\n";
const SUB_DOCKERFILE: &str = "FROM busybox\nCOPY . /sub\n";

fn make_repos(base: &Path, sub_url: &str) -> Repos {
    let sub = base.join("sub");
    write(&sub.join("sub.txt"), "in the submodule\n");
    git(&sub, &["init", "-q"]);
    git(&sub, &["add", "."]);
    git(&sub, &["commit", "-q", "-m", "sub"]);
    let repo = base.join("repo");
    write(&repo.join("Dockerfile"), DOCKERFILE);
    write(&repo.join("a.txt"), "first\n");
    write(&repo.join("app/Dockerfile"), SUB_DOCKERFILE);
    write(&repo.join("app/b.txt"), "in app\n");
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    let first = git(&repo, &["rev-parse", "HEAD"]);
    git(&repo, &["tag", "-a", "v1", "-m", "v1"]);
    write(&repo.join("a.txt"), "second\n");
    git(&repo, &["submodule", "add", "-q", sub_url, "mod"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "two"]);
    let main = git(&repo, &["rev-parse", "HEAD"]);
    // Bare copies for http-backend: a public one and the private one.
    std::fs::create_dir_all(base.join("private")).expect("mkdir");
    for dest in ["repo.git", "private/repo.git"] {
        git(
            base,
            &["clone", "-q", "--bare", repo.to_str().expect("utf8"), dest],
        );
    }
    Repos {
        main,
        first: first.clone(),
        tag_commit: first,
    }
}

/// Asserts that `sh -c SCRIPT` in `image` prints `want`.
#[track_caller]
fn run_is(h: &Harness, ns: &str, image: &str, id: &str, script: &str, want: &str) {
    let cmd = ["sh", "-c", script];
    assert_eq!(h.run_image_expecting(ns, image, id, &cmd, want), want);
}

/// Multi-threaded: the HTTP server answers while the test blocks on kiln.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_contexts_embedded() {
    let ns = "gitcontext-embedded";
    let h = Harness::with_busybox(ns).await;
    let base = h.state_dir().join("git");
    std::fs::create_dir_all(&base).expect("mkdir");
    let daemon = GitDaemon::start(&base, h.state_dir().join("git-daemon.log"));
    let r = make_repos(&base, &daemon.url("sub"));
    let (port, seen) = http_server(base.clone()).await;
    let url = daemon.url("repo");

    // A branch, with the submodule checked out, and its Dockerfile.
    h.build(ns, &["-t", "gc:branch", &format!("{url}#main")])
        .ok();
    run_is(
        &h,
        ns,
        "docker.io/library/gc:branch",
        "b",
        "cat /ctx/a.txt /ctx/mod/sub.txt; ls -A /ctx",
        "second\nin the submodule\n.gitmodules\nDockerfile\na.txt\napp\nmod\n",
    );
    // A tag and a subdir: the Dockerfile is the subdir's, the context the
    // subdir (no .git, no submodule at v1).
    h.build(ns, &["-t", "gc:tag", &format!("{url}#v1:app")])
        .ok();
    run_is(
        &h,
        ns,
        "docker.io/library/gc:tag",
        "t",
        "ls -A /sub; cat /sub/b.txt",
        "Dockerfile\nb.txt\nin app\n",
    );
    // A commit id, and the query form with -f relative to the subdir.
    h.build(ns, &["-t", "gc:commit", &format!("{url}#{}", r.first)])
        .ok();
    run_is(
        &h,
        ns,
        "docker.io/library/gc:commit",
        "c",
        "cat /ctx/a.txt",
        "first\n",
    );
    h.build(
        ns,
        &[
            "-t",
            "gc:query",
            "-f",
            "Dockerfile",
            &format!("{url}?tag=v1&subdir=app"),
        ],
    )
    .ok();
    assert_eq!(
        h.image_digest(ns, "docker.io/library/gc:query"),
        h.image_digest(ns, "docker.io/library/gc:tag"),
        "the query form is the fragment form"
    );
    assert_eq!(r.tag_commit, r.first);

    // BUILDKIT_CONTEXT_KEEP_GIT_DIR keeps .git in the context.
    h.build(
        ns,
        &[
            "-t",
            "gc:kept",
            "--build-arg",
            "BUILDKIT_CONTEXT_KEEP_GIT_DIR=1",
            &format!("{url}#main"),
        ],
    )
    .ok();
    run_is(
        &h,
        ns,
        "docker.io/library/gc:kept",
        "k",
        "cat /ctx/.git/HEAD",
        "ref: refs/heads/main\n",
    );

    // Over HTTP (git http-backend): a second build of the same commit
    // fetches nothing, and gives the same image.
    let http_url = format!("http://127.0.0.1:{port}/git/repo.git#main");
    h.build(ns, &["-t", "gc:http1", &http_url]).ok();
    let fetched = seen.fetches.load(Ordering::SeqCst);
    assert!(fetched >= 1, "the first build fetched");
    let out = h.build(ns, &["-t", "gc:http2", &http_url]).ok();
    assert_eq!(
        seen.fetches.load(Ordering::SeqCst),
        fetched,
        "a second build of the same commit fetched:\n{}",
        out.stderr
    );
    assert_eq!(
        h.image_digest(ns, "docker.io/library/gc:http1"),
        h.image_digest(ns, "docker.io/library/gc:http2")
    );

    // The private repository: refused without the token, built with it
    // from --secret; the token is in no layer and no output.
    let private = format!("http://127.0.0.1:{port}/git/private/repo.git#main");
    let out = h.build(ns, &["-t", "gc:private", &private]);
    assert!(!out.success, "built a private repository without a token");
    assert!(seen.refused.load(Ordering::SeqCst) >= 1);
    let token = h.state_dir().join("token");
    std::fs::write(&token, TOKEN).expect("token file");
    let out = h
        .build(
            ns,
            &[
                "-t",
                "gc:private",
                "--secret",
                &format!("id=GIT_AUTH_TOKEN,src={}", token.display()),
                &private,
            ],
        )
        .ok();
    assert!(!out.stderr.contains(TOKEN) && !out.stdout.contains(TOKEN));
    run_is(
        &h,
        ns,
        "docker.io/library/gc:private",
        "p",
        "cat /ctx/a.txt; test -e /ctx/.git && echo has .git; grep -rl s3cret /ctx /etc || true",
        "second\n",
    );
    // A host-scoped secret wins over the plain one (BuildKit's order).
    let wrong = h.state_dir().join("wrong");
    std::fs::write(&wrong, "wrong").expect("file");
    h.build(
        ns,
        &[
            "--no-cache",
            "--secret",
            &format!("id=GIT_AUTH_TOKEN,src={}", wrong.display()),
            "--secret",
            &format!("id=GIT_AUTH_TOKEN.127.0.0.1:{port},src={}", token.display()),
            &private,
        ],
    )
    .ok();

    // The same files from a local directory make the same image, when
    // both have the commit's times (SOURCE_DATE_EPOCH sets a git
    // context's times to the commit's, as in BuildKit).
    let commit_time = git(&base.join("repo"), &["log", "-1", "--format=%ct", &r.first]);
    let local = h.state_dir().join("local-app");
    std::fs::create_dir_all(&local).expect("mkdir");
    write(&local.join("Dockerfile"), SUB_DOCKERFILE);
    write(&local.join("b.txt"), "in app\n");
    let stamp = format!("@{commit_time}");
    let touched = Command::new("find")
        .arg(&local)
        .args(["-exec", "touch", "-h", "-d", &stamp, "{}", "+"])
        .status()
        .expect("find runs");
    assert!(touched.success());
    let epoch = format!("SOURCE_DATE_EPOCH={commit_time}");
    h.build(
        ns,
        &[
            "-t",
            "gc:git-epoch",
            "--build-arg",
            &epoch,
            &format!("{url}#v1:app"),
        ],
    )
    .ok();
    h.build(
        ns,
        &[
            "-t",
            "gc:local-epoch",
            "--build-arg",
            &epoch,
            local.to_str().expect("utf8"),
        ],
    )
    .ok();
    assert_eq!(
        h.image_digest(ns, "docker.io/library/gc:git-epoch"),
        h.image_digest(ns, "docker.io/library/gc:local-epoch"),
        "a git context and a local directory of the same files differ"
    );
    assert_eq!(r.main.len(), 40);
}

/// Through kilnd: `kiln --addr build <git URL>` (the token from the
/// session's secrets) and the `context` attribute as buildctl sends it,
/// with no local context at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_contexts_through_kilnd() {
    let ns = "gitcontext-kilnd";
    let h = Harness::with_busybox(ns).await;
    let base = h.state_dir().join("git");
    std::fs::create_dir_all(&base).expect("mkdir");
    let daemon = GitDaemon::start(&base, h.state_dir().join("git-daemon.log"));
    let r = make_repos(&base, &daemon.url("sub"));
    let (port, seen) = http_server(base.clone()).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let addr = k.addr();
    let url = daemon.url("repo");

    let kiln = |args: &[&str]| {
        let mut all = vec!["--addr", &addr, "build", "--progress", "plain"];
        all.extend_from_slice(args);
        h.kiln(ns, &all).expect("kiln runs")
    };
    kiln(&["-t", "gk:tag", &format!("{url}#v1:app")]).ok();
    run_is(
        &h,
        ns,
        "docker.io/library/gk:tag",
        "t",
        "ls -A /sub; cat /sub/b.txt",
        "Dockerfile\nb.txt\nin app\n",
    );
    kiln(&["-t", "gk:branch", &format!("{url}#main")]).ok();
    run_is(
        &h,
        ns,
        "docker.io/library/gk:branch",
        "b",
        "cat /ctx/a.txt /ctx/mod/sub.txt",
        "second\nin the submodule\n",
    );

    // The private repository, the token lent by the client's session.
    let private = format!("http://127.0.0.1:{port}/git/private/repo.git#{}", r.first);
    let out = kiln(&["-t", "gk:private", &private]);
    assert!(!out.success, "built a private repository without a token");
    let token = h.state_dir().join("token");
    std::fs::write(&token, TOKEN).expect("token file");
    kiln(&[
        "-t",
        "gk:private",
        "--secret",
        &format!("id=GIT_AUTH_TOKEN,src={}", token.display()),
        &private,
    ])
    .ok();
    run_is(
        &h,
        ns,
        "docker.io/library/gk:private",
        "p",
        "cat /ctx/a.txt",
        "first\n",
    );
    let fetched = seen.fetches.load(Ordering::SeqCst);
    kiln(&[
        "-t",
        "gk:private2",
        "--secret",
        &format!("id=GIT_AUTH_TOKEN,src={}", token.display()),
        &private,
    ])
    .ok();
    assert_eq!(
        seen.fetches.load(Ordering::SeqCst),
        fetched,
        "a second build of the same commit fetched"
    );

    // `--opt context=git://…#v1:app` as buildctl sends it (the directory
    // the client serves is empty and never read).
    let empty = h.context("empty", &[]);
    std::fs::create_dir_all(&empty).expect("mkdir");
    let out = Command::new(buildctl_like_binary().expect("buildctl-like"))
        .arg(&addr)
        .arg(&empty)
        .arg("docker.io/library/gk:buildctl")
        .env("BUILDCTL_LIKE_OPTS", format!("context={url}#v1:app"))
        .output()
        .expect("buildctl-like runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        h.image_digest(ns, "docker.io/library/gk:buildctl"),
        h.image_digest(ns, "docker.io/library/gk:tag")
    );
}

/// An http(s) context: a tarball is the context; another file is the
/// Dockerfile, with an empty context.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_contexts() {
    let ns = "gitcontext-http";
    let h = Harness::with_busybox(ns).await;
    let root = h.state_dir().join("web");
    std::fs::create_dir_all(root.join("files")).expect("mkdir");
    let src = h.context(
        "tarball",
        &[
            ("Dockerfile", "FROM busybox\nCOPY . /t\n"),
            ("dir/c.txt", "from the tarball\n"),
        ],
    );
    let tarred = Command::new("tar")
        .arg("-czf")
        .arg(root.join("files/ctx.tar.gz"))
        .arg("-C")
        .arg(&src)
        .arg(".")
        .status()
        .expect("tar runs");
    assert!(tarred.success());
    std::fs::write(
        root.join("files/Dockerfile.txt"),
        "FROM busybox\nRUN echo lone > /lone\n",
    )
    .expect("write");
    let (port, _) = http_server(root.clone()).await;
    h.build(
        ns,
        &[
            "-t",
            "hc:tar",
            &format!("http://127.0.0.1:{port}/files/ctx.tar.gz"),
        ],
    )
    .ok();
    run_is(
        &h,
        ns,
        "docker.io/library/hc:tar",
        "t",
        "cat /t/dir/c.txt",
        "from the tarball\n",
    );
    h.build(
        ns,
        &[
            "-t",
            "hc:lone",
            &format!("http://127.0.0.1:{port}/files/Dockerfile.txt"),
        ],
    )
    .ok();
    run_is(
        &h,
        ns,
        "docker.io/library/hc:lone",
        "l",
        "cat /lone",
        "lone\n",
    );

    // An absolute -f is the client's Dockerfile beside the fetched
    // context (as buildx sends it: `dockerfilekey`), embedded and through
    // kilnd; the tarball's own Dockerfile is not built.
    let local = h.context(
        "external-dockerfile",
        &[("Dockerfile.ext", "FROM busybox\nCOPY dir/c.txt /ext\n")],
    );
    let external = local.join("Dockerfile.ext");
    let url = format!("http://127.0.0.1:{port}/files/ctx.tar.gz");
    h.build(
        ns,
        &[
            "-t",
            "hc:ext",
            "-f",
            external.to_str().expect("utf-8"),
            &url,
        ],
    )
    .ok();
    run_is(
        &h,
        ns,
        "docker.io/library/hc:ext",
        "e",
        "cat /ext; ls /t 2>&1 || true",
        "from the tarball\nls: /t: No such file or directory\n",
    );
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    h.kiln(
        ns,
        &[
            "build",
            "--addr",
            &k.addr(),
            "-t",
            "hc:ext-kilnd",
            "-f",
            external.to_str().expect("utf-8"),
            &url,
        ],
    )
    .expect("kiln runs")
    .ok();
    assert_eq!(
        h.image_digest(ns, "docker.io/library/hc:ext-kilnd"),
        h.image_digest(ns, "docker.io/library/hc:ext")
    );

    // `-f -`: the Dockerfile from stdin beside the fetched context.
    for addr in [None, Some(k.addr())] {
        let mut cmd = h.kiln_command(ns).expect("kiln");
        cmd.arg("build");
        if let Some(a) = &addr {
            cmd.args(["--addr", a]);
        }
        let tag = if addr.is_some() {
            "hc:stdin-kilnd"
        } else {
            "hc:stdin"
        };
        cmd.args(["-t", tag, "-f", "-", &url])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("kiln starts");
        {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin
                .write_all(b"FROM busybox\nCOPY dir/c.txt /stdin\n")
                .expect("write the Dockerfile");
        }
        let out = child.wait_with_output().expect("kiln ends");
        assert!(
            out.status.success(),
            "{addr:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        run_is(
            &h,
            ns,
            &format!("docker.io/library/{tag}"),
            "s",
            "cat /stdin",
            "from the tarball\n",
        );
    }
}
