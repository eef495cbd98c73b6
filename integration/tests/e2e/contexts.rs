//! kilnd keeps each client's build context between builds: a rebuild
//! transfers only the files that changed (issue 10). What crossed the wire
//! is read from kilnd's `received local directory` log line, whose `files`
//! counts the files whose content the client sent.

use crate::common;
use common::remote;

use kiln_integration::Harness;
use std::path::Path;

/// One transfer of the `context` local as kilnd logged it.
#[derive(Debug, PartialEq, Eq)]
struct Transfer {
    incremental: bool,
    files: u64,
    removed: u64,
}

/// A `key=value` field of a log line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..].split_whitespace().next()
}

/// Every transfer of the `context` local so far, oldest first.
fn transfers(log: &Path) -> Vec<Transfer> {
    std::fs::read_to_string(log)
        .expect("kilnd log")
        .lines()
        .filter(|l| l.contains("received local directory"))
        .filter(|l| field(l, "local").is_some_and(|v| v.trim_matches('"') == "context"))
        .map(|l| {
            let num = |k| {
                field(l, k)
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{k} in {l}"))
            };
            Transfer {
                incremental: field(l, "incremental") == Some("true"),
                files: num("files"),
                removed: num("removed"),
            }
        })
        .collect()
}

#[tokio::test]
async fn a_rebuild_through_kilnd_sends_only_what_changed() {
    let ns = "kept-context";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let df = "FROM busybox\nCOPY . /ctx/\nCMD [\"cat\", \"/ctx/d2/f0007.txt\"]\n";
    let mut files: Vec<(String, String)> = (0..200)
        .map(|i| (format!("d{}/f{i:04}.txt", i % 5), format!("file {i}\n")))
        .collect();
    files.push(("Dockerfile".into(), df.into()));
    files.push(("gone.txt".into(), "removed before the last build\n".into()));
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_str()))
        .collect();
    let ctx = h.context("kept", &refs);
    let c = ctx.to_str().expect("utf8");

    remote(&h, &k, ns, &["-t", "kept:1", c]).ok();
    let first = transfers(&k.log);
    assert_eq!(
        first,
        [Transfer {
            incremental: false,
            files: 202,
            removed: 0
        }]
    );

    // Nothing changed: no file content crosses the wire.
    let out = remote(&h, &k, ns, &["-t", "kept:2", c]).ok();
    assert_eq!(
        transfers(&k.log).last(),
        Some(&Transfer {
            incremental: true,
            files: 0,
            removed: 0
        })
    );
    assert_eq!(
        kiln_integration::cached_steps(&out.stderr),
        1,
        "{}",
        out.stderr
    );

    // One file changed, one deleted: exactly that is sent and removed,
    // and the image has the new content.
    std::fs::write(ctx.join("d2/f0007.txt"), "changed content\n").expect("write");
    std::fs::remove_file(ctx.join("gone.txt")).expect("rm");
    remote(&h, &k, ns, &["-t", "kept:3", c]).ok();
    assert_eq!(
        transfers(&k.log).last(),
        Some(&Transfer {
            incremental: true,
            files: 1,
            removed: 1
        })
    );
    let image = "docker.io/library/kept:3";
    let want = "changed content\n";
    let printed = h.run_image_expecting(ns, image, "kept-run", &[], want);
    assert_eq!(printed, want);
    let want = "Dockerfile\nd0\nd1\nd2\nd3\nd4\n";
    let listed = h.run_image_expecting(ns, image, "kept-ls", &["ls", "/ctx"], want);
    assert_eq!(listed, want);
    // A rewrite that keeps the size is seen too (its mtime moved).
    std::fs::write(ctx.join("d2/f0007.txt"), "CHANGED content\n").expect("write");
    remote(&h, &k, ns, &["-t", "kept:4", c]).ok();
    assert_eq!(transfers(&k.log).last().map(|t| t.files), Some(1));
    let want = "CHANGED content\n";
    let printed = h.run_image_expecting(ns, "docker.io/library/kept:4", "kept-run4", &[], want);
    assert_eq!(printed, want);
    // The kept context hashes like the client's own directory: an embedded
    // build of that directory finds the `COPY .` kilnd cached.
    common::embedded_build_is_kilnds(&h, ns, c, "kept:embedded", 1, "kept:4");
    assert_eq!(h.leftovers(ns).expect("ctr"), Vec::<String>::new());
}

/// How many regular files of kilnd's kept contexts have content (the
/// receiver creates each file as its STAT arrives, and fills it later).
fn kept_files(k_root: &Path) -> usize {
    fn count(dir: &Path) -> usize {
        std::fs::read_dir(dir).map_or(0, |rd| {
            rd.flatten()
                .map(|e| match e.file_type() {
                    Ok(t) if t.is_dir() => count(&e.path()),
                    Ok(t) if t.is_file() => usize::from(e.metadata().is_ok_and(|m| m.len() > 0)),
                    _ => 0,
                })
                .sum()
        })
    }
    count(&k_root.join("contexts"))
}

#[tokio::test]
async fn a_transfer_cut_short_is_kept_and_the_next_build_sends_the_rest() {
    let ns = "kept-partial";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let total = 3000;
    let mut files: Vec<(String, String)> = (0..total)
        .map(|i| {
            let line = format!("file {i} ");
            (
                format!("d{}/f{i:04}", i % 10),
                line.repeat(64 * 1024 / line.len()),
            )
        })
        .collect();
    files.push(("Dockerfile".into(), "FROM busybox\nCOPY . /ctx/\n".into()));
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(p, b)| (p.as_str(), b.as_str()))
        .collect();
    let ctx = h.context("partial", &refs);
    let c = ctx.to_str().expect("utf8");
    let root = h.state_dir().join(format!("kilnd-root-{ns}"));

    // The client goes away once part of the context has arrived.
    let addr = k.addr();
    let mut child = h
        .kiln_command(ns)
        .expect("kiln")
        .args([
            "--addr",
            &addr,
            "build",
            "--progress",
            "plain",
            "-t",
            "partial:cut",
            c,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("kiln starts");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while kept_files(&root) < 200 {
        assert!(std::time::Instant::now() < deadline, "nothing arrived");
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "the transfer ended before it could be cut"
        );
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().expect("SIGKILL the client");
    child.wait().expect("reaped");
    // kilnd lets go of the slot once the build has ended (failed: its
    // session is gone).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let log = std::fs::read_to_string(&k.log).expect("log");
        if log.lines().any(|l| l.contains("build finished")) {
            assert!(
                log.lines()
                    .any(|l| l.contains("build finished") && !l.contains("result=\"ok\"")),
                "{log}"
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never ended:\n{log}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let arrived = kept_files(&root);
    assert!(
        arrived < total + 1,
        "all arrived ({arrived}): nothing was cut"
    );

    // The next build brings the kept part up to date: only the rest (and
    // any file cut in the middle) is sent, and the image is what the
    // client's directory gives.
    remote(&h, &k, ns, &["-t", "partial:1", c]).ok();
    let last = transfers(&k.log).pop().expect("a transfer");
    assert!(last.incremental, "{last:?}");
    assert!(
        last.files > 0 && last.files < (total + 1) as u64,
        "{last:?}, {arrived} files had arrived"
    );
    common::embedded_build_is_kilnds(&h, ns, c, "partial:embedded", 1, "partial:1");
}

/// The contexts kilnd keeps are build cache a client sees and frees, as
/// BuildKit's local sources: `du` lists each as a reclaimable
/// `source.local` record with its size, and a prune removes it (here with
/// `--filter type=source.local`, which leaves every other record alone),
/// so the next build sends the whole context again.
#[tokio::test]
async fn kept_contexts_show_in_du_and_go_with_a_prune() {
    let ns = "kept-context-du";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ctx = h.context(
        "kept-du",
        &[
            ("Dockerfile", "FROM busybox\nCOPY . /ctx/\n"),
            ("payload.txt", &"x".repeat(10_000)),
        ],
    );
    let c = ctx.to_str().expect("utf8");
    remote(&h, &k, ns, &["-t", "kept-du:1", c]).ok();
    let addr = k.addr();
    let du = |h: &Harness| {
        h.kiln(ns, &["--addr", &addr, "du", "--verbose"])
            .expect("kiln du")
            .ok()
            .stdout
    };
    let listed = du(&h);
    let block = listed
        .split("\n\n")
        .find(|b| b.contains("local source for context"))
        .unwrap_or_else(|| panic!("no kept context in:\n{listed}"));
    assert!(block.contains("source.local"), "{block}");
    assert!(
        block
            .lines()
            .any(|l| l.starts_with("Reclaimable:") && l.trim_end().ends_with("true")),
        "{block}"
    );
    let size = block
        .lines()
        .find_map(|l| l.strip_prefix("Size:"))
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    assert!(size.ends_with("kB"), "10 kB of context: {block}");
    let (records, kept) = (
        listed.matches("ID:").count(),
        listed.matches("local source for").count(),
    );

    let out = h
        .kiln(
            ns,
            &[
                "--addr",
                &addr,
                "prune",
                "--force",
                "--filter",
                "type=source.local",
            ],
        )
        .expect("kiln prune")
        .ok();
    assert!(out.stdout.contains("kiln/context/"), "{}", out.stdout);
    let after = du(&h);
    assert!(!after.contains("local source for"), "{after}");
    assert_eq!(after.matches("ID:").count(), records - kept, "{after}");
    assert!(after.contains("COPY . /ctx/"), "the cache stays: {after}");
    remote(&h, &k, ns, &["-t", "kept-du:2", c]).ok();
    let last = transfers(&k.log).pop().expect("a transfer");
    assert!(!last.incremental && last.files == 2, "{last:?}");
}
