//! kilnd asks the client for only the context paths a Dockerfile reads,
//! as BuildKit's frontend does (its `FollowPaths`): the sources of `COPY`
//! and `ADD` and of `RUN --mount` binds, the whole context when one of
//! them is its root; and it reads the context's `.dockerignore` after the
//! base images' metadata, in BuildKit's order. The image is the one a
//! whole context gives: an embedded build of the same directory finds
//! every step cached and makes the same image.

use crate::common;
use common::remote;

use kiln_integration::registry::Registry;
use kiln_integration::Harness;
use std::path::Path;

/// A `key=value` field of a log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..].split_whitespace().next()
}

/// The `files` and `bytes` (content sent) of the last transfer of the
/// `context` local kilnd logged.
fn last_transfer(log: &Path) -> (u64, u64) {
    let text = std::fs::read_to_string(log).expect("kilnd log");
    let line = text
        .lines()
        .rfind(|l| {
            l.contains("received local directory")
                && field(l, "local").is_some_and(|v| v.trim_matches('"') == "context")
        })
        .unwrap_or_else(|| panic!("no context transfer in:\n{text}"))
        .to_string();
    let num = |k| {
        field(&line, k)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{k} in {line}"))
    };
    (num("files"), num("bytes"))
}

/// The bytes of `#N transferring context: 123B done` for the step `name`.
fn transferred(stderr: &str, name: &str) -> u64 {
    let n = stderr
        .lines()
        .find_map(|l| l.strip_suffix(&format!(" {name}")))
        .unwrap_or_else(|| panic!("no step {name}:\n{stderr}"));
    stderr
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{n} transferring context: ")))
        .and_then(|rest| rest.split('B').next())
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("no transfer for {name}:\n{stderr}"))
}

/// Every file (not directory) below `dir`, relative, sorted.
fn files_below(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir") {
            let e = e.expect("entry");
            let t = e.file_type().expect("type");
            if t.is_dir() {
                todo.push(e.path());
            } else {
                let rel = e.path().strip_prefix(dir).expect("below").to_owned();
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

/// The files of the contexts kilnd keeps (one tree per slot).
fn kept_files(h: &Harness, ns: &str) -> Vec<String> {
    files_below(&h.kilnd_root(ns).join("contexts"))
        .into_iter()
        .filter_map(|p| p.split_once("/tree/").map(|(_, f)| f.to_string()))
        .collect()
}

const DF: &str = "FROM busybox\n\
COPY app/ /app/\n\
COPY lnk/x.txt /x.txt\n\
RUN --mount=type=bind,source=conf.txt,target=/c cat /c > /conf\n\
CMD [\"cat\", \"/conf\"]\n";

#[tokio::test]
async fn only_the_files_the_dockerfile_reads_cross_the_wire() {
    let ns = "ctxpaths";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let big = "unused ".repeat(200_000);
    let ctx = h.context(
        "ctxpaths",
        &[
            ("Dockerfile", DF),
            ("Dockerfile.all", "FROM busybox\nCOPY . /all/\n"),
            ("big.bin", &big),
            ("app/main.txt", "main\n"),
            ("app/sub/x.txt", "behind a link\n"),
            ("conf.txt", "configured\n"),
            ("other/unused.txt", "not read\n"),
        ],
    );
    // A link on the way to a COPY source is sent and followed (fsutil's
    // FollowLinks), by kiln's sender as by buildctl's.
    std::os::unix::fs::symlink("app/sub", ctx.join("lnk")).expect("symlink");
    let c = ctx.to_str().expect("utf8");

    let out = remote(&h, &k, ns, &["-t", "ctxpaths:remote", c]).ok();
    // Three files' content: app/main.txt, app/sub/x.txt, conf.txt.
    let (files, bytes) = last_transfer(&k.log);
    assert_eq!((files, bytes), (3, 5 + 14 + 11), "{}", out.stderr);
    let wire = transferred(&out.stderr, "[internal] load build context");
    assert!(wire < 1024, "{wire}B on the wire:\n{}", out.stderr);
    assert_eq!(
        kept_files(&h, ns),
        ["app/main.txt", "app/sub/x.txt", "conf.txt", "lnk"],
        "the unused files were never sent"
    );
    let image = "docker.io/library/ctxpaths:remote";
    let want = "configured\n";
    assert_eq!(
        h.run_image_expecting(ns, image, "ctxpaths-conf", &[], want),
        want
    );
    let want = "behind a link\n/app\n/app/main.txt\n/app/sub\n/app/sub/x.txt\n";
    let ls = ["sh", "-c", "cat /x.txt; find /app | sort"];
    assert_eq!(
        h.run_image_expecting(ns, image, "ctxpaths-ls", &ls, want),
        want
    );

    // The image is the whole context's: an embedded build of the client's
    // directory hits every step kilnd ran and makes the same image.
    common::embedded_build_is_kilnds(&h, ns, c, "ctxpaths:embedded", 3, "ctxpaths:remote");

    // `COPY .` reads the whole context: everything is sent (the kept
    // files again only in part: what the last build left is kept).
    let all = ctx.join("Dockerfile.all");
    let all = all.to_str().expect("utf8");
    let out = remote(&h, &k, ns, &["-f", all, "-t", "ctxpaths:all", c]).ok();
    let (files, _) = last_transfer(&k.log);
    assert_eq!(files, 4, "{}", out.stderr);
    assert!(kept_files(&h, ns).contains(&"big.bin".to_string()));
    let want = "./Dockerfile\n./Dockerfile.all\n./app/main.txt\n./app/sub/x.txt\n./big.bin\n./conf.txt\n./other/unused.txt\n";
    let listed = h.run_image_expecting(
        ns,
        "docker.io/library/ctxpaths:all",
        "ctxpaths-all",
        &["sh", "-c", "cd /all && find . -type f | sort"],
        want,
    );
    assert_eq!(listed, want);
    assert_eq!(h.leftovers(ns).expect("ctr"), Vec::<String>::new());
}

/// The order of the frontend's steps in a plain progress log.
fn step_order(stderr: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in stderr.lines() {
        let Some((n, name)) = l.split_once(' ') else {
            continue;
        };
        let numbered = n.starts_with('#') && n[1..].chars().all(|c| c.is_ascii_digit());
        if numbered && name.starts_with("[internal] load ") && !out.iter().any(|s| s == name) {
            out.push(name.to_string());
        }
    }
    out
}

#[tokio::test]
async fn the_context_ignore_file_is_read_after_the_base_images_metadata() {
    let src = "ctxorder-src";
    let h = Harness::with_busybox(src).await;
    let reg = Registry::start().await.expect("docker-registry starts");
    let base = reg
        .push_image(&h, src, "docker.io/library/busybox:latest", "base:1")
        .expect("ctr push");
    let ns = "ctxorder";
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ctx = h.context(
        "ctxorder",
        &[
            ("Dockerfile", &format!("FROM {base}\nCOPY hello.txt /\n")),
            ("hello.txt", "hello\n"),
            (".dockerignore", "*.md\n"),
        ],
    );
    let out = remote(
        &h,
        &k,
        ns,
        &["-t", "ctxorder:1", ctx.to_str().expect("utf8")],
    )
    .ok();
    assert_eq!(
        step_order(&out.stderr),
        [
            "[internal] load build definition from Dockerfile".to_string(),
            format!("[internal] load metadata for {base}"),
            "[internal] load .dockerignore".to_string(),
            "[internal] load build context".to_string(),
        ],
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn a_named_context_sends_only_what_is_copied_from_it() {
    let ns = "ctxpaths-named";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let big = "unused ".repeat(100_000);
    let extra = h.context(
        "ctxpaths-extra",
        &[("only.txt", "named\n"), ("big.bin", &big)],
    );
    let df = "FROM busybox\nCOPY --from=extra only.txt /only.txt\n";
    let ctx = h.context(
        "ctxpaths-named",
        &[("Dockerfile", df), ("unused.bin", &big)],
    );
    let named = format!("extra={}", extra.to_str().expect("utf8"));
    let c = ctx.to_str().expect("utf8");
    remote(
        &h,
        &k,
        ns,
        &["--build-context", &named, "-t", "named:remote", c],
    )
    .ok();
    // The main context is not read at all; of the named one, one file.
    assert_eq!(kept_files(&h, ns), ["only.txt"]);
    let embedded = h
        .build(ns, &["--build-context", &named, "-t", "named:embedded", c])
        .ok();
    assert_eq!(
        kiln_integration::cached_steps(&embedded.stderr),
        1,
        "{}",
        embedded.stderr
    );
    assert_eq!(
        h.image_digest(ns, "docker.io/library/named:embedded"),
        h.image_digest(ns, "docker.io/library/named:remote")
    );
}
