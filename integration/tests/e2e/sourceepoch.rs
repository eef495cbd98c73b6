//! `SOURCE_DATE_EPOCH` naming a source (issue 11), as BuildKit reads it:
//! a source-only stage (`FROM scratch` + one remote `ADD`), a named
//! context, or `context` (the main context). The build then takes the
//! source's time as its epoch: a git commit's committer time, an HTTP
//! file's `Last-Modified`, else the latest file of the archive it is.
//! Checked embedded and through kilnd against a real `git daemon` and a
//! loopback HTTP server: the image config's `created`, the history's
//! times and the value a `RUN` step sees; and BuildKit's refusals.

use crate::common;

use common::image_config;
use kiln_integration::gitdaemon::GitDaemon;
use kiln_integration::Harness;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const COMMIT_TIME: i64 = 1_700_000_101;
const AUTHOR_TIME: i64 = 1_600_000_000;
const LAST_MODIFIED: &str = "Tue, 14 Nov 2023 22:16:41 GMT";
const LAST_MODIFIED_SECS: i64 = 1_700_000_201;
const ARCHIVE_TIME: i64 = 1_700_000_402;

/// A file the server serves: its body and `Last-Modified`, if any.
type Files = Arc<BTreeMap<String, (Vec<u8>, Option<&'static str>)>>;

/// An HTTP/1.1 server on loopback answering GET and HEAD for `files`.
async fn http_server(files: Files) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let files = files.clone();
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&req);
                let mut first = text.lines().next().unwrap_or("").split_whitespace();
                let (method, path) = (first.next().unwrap_or(""), first.next().unwrap_or(""));
                let resp = match files.get(path) {
                    Some((body, lm)) => {
                        let mut r = format!(
                            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nETag: \"{}\"\r\n{}Connection: close\r\n\r\n",
                            body.len(),
                            path.trim_start_matches('/'),
                            lm.map(|v| format!("Last-Modified: {v}\r\n")).unwrap_or_default()
                        )
                        .into_bytes();
                        if method != "HEAD" {
                            r.extend_from_slice(body);
                        }
                        r
                    }
                    None => {
                        b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_vec()
                    }
                };
                let _ = conn.write_all(&resp).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    port
}

/// A tar of `(name, mtime)` files holding `bar`, and a directory later
/// than all.
fn tar_of(files: &[(&str, u64)]) -> Vec<u8> {
    let with_body: Vec<(&str, &[u8], u64)> =
        files.iter().map(|(n, t)| (*n, &b"bar"[..], *t)).collect();
    tar_files(&with_body)
}

/// A tar of `(name, body, mtime)` files, and a directory later than all
/// (which does not count: only regular files date an archive).
fn tar_files(files: &[(&str, &[u8], u64)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, body, mtime) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(*mtime);
        h.set_cksum();
        b.append_data(&mut h, name, *body).expect("append");
    }
    let mut d = tar::Header::new_gnu();
    d.set_entry_type(tar::EntryType::Directory);
    d.set_size(0);
    d.set_mode(0o755);
    d.set_uid(0);
    d.set_gid(0);
    d.set_mtime(2_000_000_000);
    d.set_cksum();
    b.append_data(&mut d, "later/", &b""[..]).expect("append");
    b.into_inner().expect("tar")
}

/// `git` in `dir` with a fixed identity and the commit's dates.
fn git(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=kiln",
            "-c",
            "user.email=kiln@example.invalid",
            "-c",
            "init.defaultBranch=main",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_AUTHOR_DATE", format!("@{AUTHOR_TIME} +0000"))
        .env("GIT_COMMITTER_DATE", format!("@{COMMIT_TIME} +0000"))
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A repository `name` under `base` holding `files`, one commit.
fn repo(base: &Path, name: &str, files: &[(&str, &str)]) {
    let dir = base.join(name);
    std::fs::create_dir_all(&dir).expect("mkdir");
    for (f, body) in files {
        std::fs::write(dir.join(f), body).expect("write");
    }
    git(&dir, &["init", "-q"]);
    git(&dir, &["add", "."]);
    git(&dir, &["commit", "-q", "-m", "one"]);
}

fn rfc3339(secs: i64) -> String {
    kiln_types::time::rfc3339_secs(secs)
}

/// The image's `created`, its last history entry's time, and `/epoch`
/// as a RUN step wrote it.
fn dated(h: &Harness, ns: &str, image: &str, id: &str) -> (String, String, String) {
    let cfg = image_config(h, ns, image);
    let created = cfg["created"].as_str().unwrap_or("").to_string();
    let history = cfg["history"].as_array().expect("history");
    let last = history
        .last()
        .and_then(|e| e["created"].as_str())
        .unwrap_or("")
        .to_string();
    let epoch = h.run_image(ns, image, id, &["cat", "/epoch"]);
    (created, last, epoch)
}

const USE_EPOCH: &str = "FROM busybox\n\
ARG SOURCE_DATE_EPOCH\n\
RUN echo -n \"$SOURCE_DATE_EPOCH\" > /epoch\n";

/// Multi-threaded: the server answers while the test blocks on `kiln`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_source_dates_the_build() {
    let ns = "source-epoch";
    let h = Harness::with_busybox(ns).await;
    let base = h.state_dir().join("git");
    std::fs::create_dir_all(&base).expect("mkdir");
    let daemon = GitDaemon::start(&base, h.state_dir().join("git-daemon.log"));
    repo(&base, "src", &[("a.txt", "a\n")]);
    repo(&base, "ctx", &[("Dockerfile", USE_EPOCH)]);
    let mut files = BTreeMap::new();
    files.insert(
        "/lm.tar".to_string(),
        (tar_of(&[("foo", ARCHIVE_TIME as u64)]), Some(LAST_MODIFIED)),
    );
    files.insert(
        "/src.tar".to_string(),
        (
            tar_of(&[("foo", ARCHIVE_TIME as u64), ("old", 1_000)]),
            None,
        ),
    );
    files.insert("/plain.txt".to_string(), (b"plain\n".to_vec(), None));
    // HTTP main contexts: a tarball with the Dockerfile, older than `foo`.
    let context_tar = tar_files(&[
        (
            "Dockerfile",
            USE_EPOCH.as_bytes(),
            ARCHIVE_TIME as u64 - 3600,
        ),
        ("foo", b"bar", ARCHIVE_TIME as u64),
    ]);
    files.insert(
        "/ctx-lm.tar".to_string(),
        (context_tar.clone(), Some(LAST_MODIFIED)),
    );
    files.insert("/ctx.tar".to_string(), (context_tar, None));
    let port = http_server(Arc::new(files)).await;
    let http = |p: &str| format!("http://127.0.0.1:{port}{p}");

    let cases = [
        ("git-stage", daemon.url("src"), COMMIT_TIME),
        ("http-stage", http("/lm.tar"), LAST_MODIFIED_SECS),
        ("archive-stage", http("/src.tar"), ARCHIVE_TIME),
    ];
    for (name, src, want) in &cases {
        let dockerfile = format!(
            "ARG SOURCE_DATE_EPOCH=mysource\n\
FROM scratch AS mysource\n\
ADD {src} /\n\
{USE_EPOCH}"
        );
        let ctx = h.context(name, &[("Dockerfile", &dockerfile)]);
        let tag = format!("docker.io/library/epoch:{name}");
        let out = h.build(ns, &["-t", &tag, ctx.to_str().expect("utf8")]).ok();
        let (created, last, epoch) = dated(&h, ns, &tag, name);
        assert_eq!(created, rfc3339(*want), "{name}: {}", out.stderr);
        assert_eq!(last, rfc3339(*want), "{name}");
        assert_eq!(epoch, want.to_string(), "{name}");
    }

    // A named context (`--build-context`): its source's time.
    let ctx = h.context(
        "named",
        &[(
            "Dockerfile",
            &format!("ARG SOURCE_DATE_EPOCH=mysource\n{USE_EPOCH}"),
        )],
    );
    let lm = format!("mysource={}", http("/lm.tar"));
    h.build(
        ns,
        &[
            "--build-context",
            &lm,
            "-t",
            "epoch:named",
            ctx.to_str().expect("utf8"),
        ],
    )
    .ok();
    let (created, _, epoch) = dated(&h, ns, "docker.io/library/epoch:named", "named");
    assert_eq!(created, rfc3339(LAST_MODIFIED_SECS));
    assert_eq!(epoch, LAST_MODIFIED_SECS.to_string());

    // `context` of a git main context: the commit's (committer) time.
    let git_ctx = daemon.url("ctx");
    h.build(
        ns,
        &[
            "--build-arg",
            "SOURCE_DATE_EPOCH=context",
            "-t",
            "epoch:context",
            &git_ctx,
        ],
    )
    .ok();
    let (created, last, epoch) = dated(&h, ns, "docker.io/library/epoch:context", "context");
    assert_eq!(created, rfc3339(COMMIT_TIME));
    assert_eq!(last, rfc3339(COMMIT_TIME));
    assert_eq!(epoch, COMMIT_TIME.to_string());

    // `context` of an HTTP main context: its Last-Modified, else the
    // latest file of the archive.
    for (name, path, want) in [
        ("http-context-lm", "/ctx-lm.tar", LAST_MODIFIED_SECS),
        ("http-context", "/ctx.tar", ARCHIVE_TIME),
    ] {
        let tag = format!("docker.io/library/epoch:{name}");
        let out = h
            .build(
                ns,
                &[
                    "--build-arg",
                    "SOURCE_DATE_EPOCH=context",
                    "-t",
                    &tag,
                    &http(path),
                ],
            )
            .ok();
        let (created, last, epoch) = dated(&h, ns, &tag, name);
        assert_eq!(created, rfc3339(want), "{name}: {}", out.stderr);
        assert_eq!(last, rfc3339(want), "{name}");
        assert_eq!(epoch, want.to_string(), "{name}");
    }

    // `context` of a local directory, and a plain file without
    // Last-Modified: no time, the variable unset (BuildKit's).
    let local = h.context("local", &[("Dockerfile", USE_EPOCH)]);
    h.build(
        ns,
        &[
            "--build-arg",
            "SOURCE_DATE_EPOCH=context",
            "-t",
            "epoch:local",
            local.to_str().expect("utf8"),
        ],
    )
    .ok();
    let (created, _, epoch) = dated(&h, ns, "docker.io/library/epoch:local", "local");
    assert_ne!(created, rfc3339(COMMIT_TIME));
    assert!(created.starts_with("20"), "a build time: {created}");
    assert_eq!(epoch, "");
    let plain = format!(
        "ARG SOURCE_DATE_EPOCH=mysource\nFROM scratch AS mysource\nADD {} /\n{USE_EPOCH}",
        http("/plain.txt")
    );
    let ctx = h.context("plain", &[("Dockerfile", &plain)]);
    h.build(ns, &["-t", "epoch:plain", ctx.to_str().expect("utf8")])
        .ok();
    let (_, _, epoch) = dated(&h, ns, "docker.io/library/epoch:plain", "plain");
    assert_eq!(epoch, "");

    // A number given as a build argument wins over the stage.
    let dockerfile = format!(
        "ARG SOURCE_DATE_EPOCH=mysource\nFROM scratch AS mysource\nADD {} /\n{USE_EPOCH}",
        daemon.url("src")
    );
    let ctx = h.context("override", &[("Dockerfile", &dockerfile)]);
    h.build(
        ns,
        &[
            "--build-arg",
            "SOURCE_DATE_EPOCH=1700000502",
            "-t",
            "epoch:override",
            ctx.to_str().expect("utf8"),
        ],
    )
    .ok();
    let (created, _, epoch) = dated(&h, ns, "docker.io/library/epoch:override", "override");
    assert_eq!(created, rfc3339(1_700_000_502));
    assert_eq!(epoch, "1700000502");

    // BuildKit's refusals, before anything runs.
    let bad = "ARG SOURCE_DATE_EPOCH=mysource\nFROM scratch AS mysource\nCOPY Dockerfile /Dockerfile\nFROM scratch\n";
    let ctx = h.context("bad-stage", &[("Dockerfile", bad)]);
    let out = h.build(ns, &[ctx.to_str().expect("utf8")]);
    assert!(!out.success);
    assert!(
        out.stderr.contains(
            "SOURCE_DATE_EPOCH stage does not meet source-only requirements: unsupported COPY instruction"
        ),
        "{}",
        out.stderr
    );
    let bad = "ARG SOURCE_DATE_EPOCH=not-a-timestamp\nFROM scratch\nCOPY Dockerfile .\n";
    let ctx = h.context("bad-value", &[("Dockerfile", bad)]);
    let out = h.build(ns, &[ctx.to_str().expect("utf8")]);
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("invalid SOURCE_DATE_EPOCH: not-a-timestamp"),
        "{}",
        out.stderr
    );

    // Through kilnd: the frontend there resolves the same sources.
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let addr = k.addr();
    let remote = |tag: &str, extra: &[&str], ctx: &str| {
        let out_opt = format!("type=image,name=docker.io/library/epoch:{tag}");
        let mut args = vec!["--addr", addr.as_str(), "build", "--progress", "plain"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["-o", &out_opt, ctx]);
        let out = h.kiln(ns, &args).expect("kiln runs");
        assert!(out.success, "{tag}: {}", out.stderr);
        out
    };
    let dockerfile = format!(
        "ARG SOURCE_DATE_EPOCH=mysource\nFROM scratch AS mysource\nADD {} /\n{USE_EPOCH}",
        daemon.url("src")
    );
    let ctx = h.context("kilnd-git", &[("Dockerfile", &dockerfile)]);
    let out = remote("kilnd-git", &["--no-cache"], ctx.to_str().expect("utf8"));
    assert!(
        out.stderr
            .contains("[internal] resolve SOURCE_DATE_EPOCH source stage mysource"),
        "{}",
        out.stderr
    );
    let (created, last, epoch) = dated(&h, ns, "docker.io/library/epoch:kilnd-git", "kilnd-git");
    assert_eq!(created, rfc3339(COMMIT_TIME));
    assert_eq!(last, rfc3339(COMMIT_TIME));
    assert_eq!(epoch, COMMIT_TIME.to_string());
    let ctx = h.context(
        "kilnd-named",
        &[(
            "Dockerfile",
            &format!("ARG SOURCE_DATE_EPOCH=mysource\n{USE_EPOCH}"),
        )],
    );
    let archive = format!("mysource={}", http("/src.tar"));
    remote(
        "kilnd-named",
        &["--build-context", &archive],
        ctx.to_str().expect("utf8"),
    );
    let (created, _, epoch) = dated(&h, ns, "docker.io/library/epoch:kilnd-named", "kilnd-named");
    assert_eq!(created, rfc3339(ARCHIVE_TIME));
    assert_eq!(epoch, ARCHIVE_TIME.to_string());
    remote(
        "kilnd-context",
        &["--build-arg", "SOURCE_DATE_EPOCH=context"],
        &git_ctx,
    );
    let (created, _, epoch) = dated(
        &h,
        ns,
        "docker.io/library/epoch:kilnd-context",
        "kilnd-context",
    );
    assert_eq!(created, rfc3339(COMMIT_TIME));
    assert_eq!(epoch, COMMIT_TIME.to_string());
}
