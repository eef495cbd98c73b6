//! `ADD <url>` and `ADD <git repository>` end to end (issue 11, and the
//! git source of issue 13): a tiny HTTP server in the test and `git
//! daemon`, both on loopback, serve what embedded kiln adds into busybox
//! images. Checked: contents, modes, Last-Modified as mtime, `--chmod`,
//! `--checksum` (and BuildKit's mismatch errors), refs by branch, tag,
//! commit id and query form, subdirs, submodules, `--keep-git-dir`, and
//! that a second build fetches nothing (the server's GET count, the git
//! daemon's upload-pack log), and that an offered token does not stop a
//! git:// fetch.

use crate::common;

use common::remote;
use kiln_integration::gitdaemon::{git, GitDaemon};
use kiln_integration::{httpserver, Harness};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const BODY: &str = "hello from http\n";
const LAST_MODIFIED: &str = "Wed, 21 Oct 2015 07:28:00 GMT";
const LAST_MODIFIED_SECS: u64 = 1_445_412_480;

/// An HTTP/1.1 server answering GET and HEAD for `/hello.txt` (with an
/// ETag and Last-Modified) and 404 otherwise; counts the GETs.
async fn http_server() -> (u16, Arc<AtomicUsize>) {
    let gets = Arc::new(AtomicUsize::new(0));
    let counter = gets.clone();
    let port = httpserver::serve(move |req, mut conn| {
        let counter = counter.clone();
        async move {
            if req.method == "GET" {
                counter.fetch_add(1, Ordering::SeqCst);
            }
            if req.target != "/hello.txt" {
                return httpserver::respond(&mut conn, "404 Not Found", &[], b"").await;
            }
            let length = BODY.len().to_string();
            let body = if req.method == "HEAD" { "" } else { BODY };
            let headers = [
                ("Content-Length", length.as_str()),
                ("ETag", "\"v1\""),
                ("Last-Modified", LAST_MODIFIED),
            ];
            httpserver::respond(&mut conn, "200 OK", &headers, body.as_bytes()).await;
        }
    })
    .await;
    (port, gets)
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    format!("{:x}", sha2::Sha256::digest(data))
}

/// Multi-threaded: the server answers while the test blocks on `kiln`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_from_http_urls() {
    let ns = "addremote-http";
    let h = Harness::with_busybox(ns).await;
    let (port, gets) = http_server().await;
    let url = format!("http://127.0.0.1:{port}/hello.txt");
    let dockerfile = format!(
        "FROM busybox\n\
ADD {url} /web/\n\
ADD --chmod=755 {url} /web/tool\n\
ADD --checksum=sha256:{} {url} /web/checked\n",
        sha256_hex(BODY.as_bytes())
    );
    let ctx = h.context("http", &[("Dockerfile", &dockerfile)]);
    let c = ctx.to_str().expect("utf8");
    h.build(ns, &["-t", "web:one", c]).ok();
    let image = "docker.io/library/web:one";
    let want = format!(
        "{BODY}{BODY}/web/hello.txt 600 0:0 {LAST_MODIFIED_SECS}\n/web/tool 755 0:0 {LAST_MODIFIED_SECS}\n/web/checked 600 0:0 {LAST_MODIFIED_SECS}\n"
    );
    assert_eq!(
        h.run_image_expecting(
            ns,
            image,
            "web-1",
            &[
                "sh",
                "-c",
                "cat /web/hello.txt /web/checked; stat -c '%n %a %u:%g %Y' /web/hello.txt /web/tool /web/checked"
            ],
            &want
        ),
        want
    );
    let first = gets.load(Ordering::SeqCst);
    assert!(first >= 1, "the file was downloaded");

    // Again: the ETag (one HEAD) or the checksum finds the file in the
    // cache, and no GET is sent.
    let out = h.build(ns, &["-t", "web:two", c]).ok();
    assert_eq!(
        gets.load(Ordering::SeqCst),
        first,
        "a second build downloaded again:\n{}",
        out.stderr
    );
    assert_eq!(
        h.image_digest(ns, "docker.io/library/web:one"),
        h.image_digest(ns, "docker.io/library/web:two")
    );

    // A wrong checksum fails with BuildKit's message, naming the line.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let bad = format!("FROM busybox\nADD --checksum={wrong} {url} /x\n");
    let ctx = h.context("http-bad", &[("Dockerfile", &bad)]);
    let out = h.build(ns, &[ctx.to_str().expect("utf8")]);
    assert!(!out.success, "a wrong checksum must fail");
    let want = format!(
        "Dockerfile:2: digest mismatch for {url}: sha256:{} (expected: {wrong})",
        sha256_hex(BODY.as_bytes())
    );
    assert!(
        out.stderr.contains(&want),
        "want {want:?} in:\n{}",
        out.stderr
    );

    // A missing file fails with the status.
    let missing = format!("FROM busybox\nADD http://127.0.0.1:{port}/nope /x\n");
    let ctx = h.context("http-missing", &[("Dockerfile", &missing)]);
    let out = h.build(ns, &[ctx.to_str().expect("utf8")]);
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("Dockerfile:2: invalid response status 404"),
        "{}",
        out.stderr
    );
}

fn write(path: &Path, body: &str) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    std::fs::write(path, body).expect("write");
}

#[tokio::test]
async fn add_from_git_repositories() {
    let ns = "addremote-git";
    let h = Harness::with_busybox(ns).await;
    let base = h.state_dir().join("git");
    std::fs::create_dir_all(&base).expect("mkdir");
    let daemon = GitDaemon::start(&base, h.state_dir().join("git-daemon.log"));

    // A submodule repository, and the main one: commit 1 (tagged v1,
    // annotated), then commit 2 on main with the submodule.
    let sub = base.join("sub");
    write(&sub.join("sub.txt"), "in the submodule\n");
    git(&sub, &["init", "-q"]);
    git(&sub, &["add", "."]);
    git(&sub, &["commit", "-q", "-m", "sub"]);
    let repo = base.join("repo");
    write(&repo.join("a.txt"), "first\n");
    write(&repo.join("dir/b.txt"), "in dir\n");
    write(&repo.join("run.sh"), "#!/bin/sh\necho ran\n");
    std::fs::set_permissions(
        repo.join("run.sh"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    let first = git(&repo, &["rev-parse", "HEAD"]);
    git(&repo, &["tag", "-a", "v1", "-m", "v1"]);
    write(&repo.join("a.txt"), "second\n");
    git(
        &repo,
        &["submodule", "add", "-q", &daemon.url("sub"), "mod"],
    );
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "two"]);
    let second = git(&repo, &["rev-parse", "HEAD"]);

    let url = daemon.url("repo");
    let dockerfile = format!(
        "FROM busybox\n\
ADD {url} /src\n\
ADD {url}#v1:dir /tag\n\
ADD {url}?branch=main&subdir=dir /query\n\
ADD --keep-git-dir=true {url}#{first} /kept\n\
ADD --checksum={second} {url}#main /checked\n"
    );
    let ctx = h.context("git", &[("Dockerfile", &dockerfile)]);
    let c = ctx.to_str().expect("utf8");
    let before = daemon.requests();
    h.build(ns, &["-t", "git:one", c]).ok();
    let first_build = daemon.requests() - before;
    let image = "docker.io/library/git:one";
    let script =
        "cat /src/a.txt /src/mod/sub.txt /tag/b.txt /query/b.txt /kept/a.txt /checked/a.txt; \
        stat -c '%n %a' /src/run.sh; ls -A /src /tag; test -d /kept/.git && echo kept .git; \
        test -e /kept/mod || echo no mod at v1";
    let want = "second\nin the submodule\nin dir\nin dir\nfirst\nsecond\n\
/src/run.sh 755\n\
/src:\n.gitmodules\na.txt\ndir\nmod\nrun.sh\n\n/tag:\nb.txt\n\
kept .git\nno mod at v1\n";
    assert_eq!(
        h.run_image_expecting(ns, image, "git-1", &["sh", "-c", script], want),
        want
    );
    // The kept .git is a repository at the commit.
    let want = format!("{first}\n");
    assert_eq!(
        h.run_image_expecting(ns, image, "git-head", &["cat", "/kept/.git/HEAD"], &want),
        want
    );

    // Again: each named ref is resolved with one ls-remote, the commit id
    // not at all, and nothing is fetched.
    let before = daemon.requests();
    let out = h.build(ns, &["-t", "git:two", c]).ok();
    let second_build = daemon.requests() - before;
    assert_eq!(second_build, 4, "one ls-remote per named ref, no fetch");
    assert!(first_build > second_build, "the first build fetched");
    assert_eq!(
        h.image_digest(ns, "docker.io/library/git:one"),
        h.image_digest(ns, "docker.io/library/git:two"),
        "{}",
        out.stderr
    );
    let only_commit = format!("FROM busybox\nADD {url}#{first} /c\n");
    let ctx = h.context("git-commit", &[("Dockerfile", &only_commit)]);
    h.build(ns, &[ctx.to_str().expect("utf8")]).ok();
    let before = daemon.requests();
    h.build(ns, &[ctx.to_str().expect("utf8")]).ok();
    assert_eq!(
        daemon.requests(),
        before,
        "a cached commit asks the remote nothing"
    );

    // Through kilnd, fetching again (--no-cache).
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let tagged = format!("FROM busybox\nADD {url}?tag=v1&mtime=commit /t\n");
    let ctx = h.context("git-kilnd", &[("Dockerfile", &tagged)]);
    let before = daemon.requests();
    remote(
        &h,
        &k,
        ns,
        &[
            "--no-cache",
            "-t",
            "git:remote",
            ctx.to_str().expect("utf8"),
        ],
    )
    .ok();
    assert!(daemon.requests() >= before + 2, "--no-cache fetched again");
    let commit_time = git(&repo, &["log", "-1", "--format=%ct", &first]);
    let want = format!("first\n{commit_time}\n{commit_time}\n");
    assert_eq!(
        h.run_image_expecting(
            ns,
            "docker.io/library/git:remote",
            "git-r",
            &["sh", "-c", "cat /t/a.txt; stat -c %Y /t/a.txt /t/dir/b.txt"],
            &want
        ),
        want
    );

    // A token is an HTTP header: a git:// remote builds with it offered
    // (tests/e2e/gitcontext.rs checks a private repository over HTTP).
    let token = h.state_dir().join("token");
    std::fs::write(&token, "t0ken").expect("token file");
    let ctx = h.context("git-token", &[("Dockerfile", &tagged)]);
    h.build(
        ns,
        &[
            "--secret",
            &format!("id=GIT_AUTH_TOKEN,src={}", token.display()),
            ctx.to_str().expect("utf8"),
        ],
    )
    .ok();

    // A checksum that is not the ref's commit fails with BuildKit's text.
    let bad = format!("FROM busybox\nADD --checksum=deadbeef {url}#main /x\n");
    let ctx = h.context("git-bad", &[("Dockerfile", &bad)]);
    let out = h.build(ns, &[ctx.to_str().expect("utf8")]);
    assert!(!out.success);
    let want = format!("Dockerfile:2: expected checksum to match deadbeef, got {second}");
    assert!(
        out.stderr.contains(&want),
        "want {want:?} in:\n{}",
        out.stderr
    );
}
