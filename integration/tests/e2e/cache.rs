//! Issue 3's acceptance: the build cache lives in containerd, survives kiln
//! processes and kiln's state directory, is shared by concurrent processes,
//! and is pruned back to nothing.

use kiln_integration::{step_printed, Harness, KilnOutput};

/// `kiln build` that must succeed.
fn build(h: &Harness, ns: &str, args: &[&str]) -> KilnOutput {
    h.build(ns, args).ok()
}

/// The layer digests of image `name`.
fn layers(h: &Harness, ns: &str, name: &str) -> Vec<String> {
    h.manifest(ns, name)["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().expect("digest").to_string())
        .collect()
}

/// kiln's cache record leases.
fn records(h: &Harness, ns: &str) -> Vec<String> {
    h.ctr(ns, &["leases", "ls"])
        .expect("ctr")
        .lines()
        .filter(|l| l.starts_with("kiln/cache/"))
        .map(|l| l.split_whitespace().next().unwrap_or_default().to_string())
        .collect()
}

/// Whether any RUN of [`DF`] executed.
fn ran_any(stderr: &str) -> bool {
    step_printed(stderr, "RUN1-RAN") || step_printed(stderr, "RUN2-RAN")
}

const DF: &str = "FROM busybox\nCOPY a /a\nRUN echo RUN1-RAN && cat /a > /r1\nCOPY b /b\nRUN echo RUN2-RAN && cat /b > /r2\n";

#[tokio::test]
async fn a_noop_rebuild_runs_nothing_and_keeps_digests() {
    let ns = "noop";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.context("noop", &[("Dockerfile", DF), ("a", "a1\n"), ("b", "b1\n")]);
    let c = ctx.to_str().expect("utf8");
    let first = build(&h, ns, &["-t", "noop:1", c]);
    assert!(step_printed(&first.stderr, "RUN1-RAN") && step_printed(&first.stderr, "RUN2-RAN"));
    let second = build(&h, ns, &["-t", "noop:2", c]);
    assert!(!ran_any(&second.stderr), "a step ran:\n{}", second.stderr);
    assert_eq!(
        kiln_integration::cached_steps(&second.stderr),
        4,
        "{}",
        second.stderr
    );
    assert_eq!(
        layers(&h, ns, "docker.io/library/noop:1"),
        layers(&h, ns, "docker.io/library/noop:2")
    );
    // Dated by the cache records, not by the clock: the same image.
    assert_eq!(
        h.image_digest(ns, "docker.io/library/noop:1"),
        h.image_digest(ns, "docker.io/library/noop:2")
    );

    // A changed file re-runs its COPY and what follows, nothing before.
    std::fs::write(ctx.join("b"), "b2\n").expect("write");
    let third = build(&h, ns, &["-t", "noop:3", c]);
    assert!(!step_printed(&third.stderr, "RUN1-RAN"), "{}", third.stderr);
    assert!(step_printed(&third.stderr, "RUN2-RAN"), "{}", third.stderr);
    let (l1, l3) = (
        layers(&h, ns, "docker.io/library/noop:1"),
        layers(&h, ns, "docker.io/library/noop:3"),
    );
    assert_eq!(
        l1[..3],
        l3[..3],
        "base, COPY a and RUN 1 keep their digests"
    );
    assert_ne!(l1[3], l3[3]);
    assert_ne!(l1[4], l3[4]);
    assert_ne!(
        h.image_digest(ns, "docker.io/library/noop:1"),
        h.image_digest(ns, "docker.io/library/noop:3")
    );

    // A new mtime alone changes nothing.
    let f = std::fs::File::options()
        .write(true)
        .open(ctx.join("a"))
        .expect("open");
    f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(5))
        .expect("touch");
    let fourth = build(&h, ns, &["-t", "noop:4", c]);
    assert!(!ran_any(&fourth.stderr), "{}", fourth.stderr);
    // (b is still b2: the image of the third build.)
    assert_eq!(
        h.image_digest(ns, "docker.io/library/noop:4"),
        h.image_digest(ns, "docker.io/library/noop:3")
    );

    // A changed build arg invalidates the first RUN that sees it.
    let df = "FROM busybox\nARG V=1\nCOPY a /a\nRUN echo ARGRUN-RAN\n";
    std::fs::write(ctx.join("Dockerfile"), df).expect("write");
    build(&h, ns, &["--build-arg", "V=1", c]);
    let same = build(&h, ns, &["--build-arg", "V=1", c]);
    assert!(!step_printed(&same.stderr, "ARGRUN-RAN"), "{}", same.stderr);
    let changed = build(&h, ns, &["--build-arg", "V=2", c]);
    assert!(
        step_printed(&changed.stderr, "ARGRUN-RAN"),
        "{}",
        changed.stderr
    );
}

#[tokio::test]
async fn the_cache_survives_processes_and_the_state_directory() {
    let ns = "survive";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.context("survive", &[("Dockerfile", DF), ("a", "a\n"), ("b", "b\n")]);
    let c = ctx.to_str().expect("utf8");
    build(&h, ns, &["-t", "s:1", c]);
    std::fs::remove_dir_all(h.state_dir().join("kiln-root")).expect("delete kiln's state");
    let again = build(&h, ns, &["-t", "s:2", c]);
    assert!(!ran_any(&again.stderr), "{}", again.stderr);
    assert_eq!(
        layers(&h, ns, "docker.io/library/s:1"),
        layers(&h, ns, "docker.io/library/s:2")
    );
}

#[tokio::test]
async fn two_processes_at_once_make_one_record_per_step() {
    let ns = "twoproc";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.context("twoproc", &[("Dockerfile", DF), ("a", "a\n"), ("b", "b\n")]);
    let c = ctx.to_str().expect("utf8").to_string();
    std::thread::scope(|s| {
        let x = s.spawn(|| build(&h, ns, &["-t", "t:x", &c]));
        let y = s.spawn(|| build(&h, ns, &["-t", "t:y", &c]));
        x.join().expect("thread");
        y.join().expect("thread");
    });
    // COPY a, RUN 1, COPY b, RUN 2.
    assert_eq!(records(&h, ns).len(), 4, "{:?}", records(&h, ns));
    let again = build(&h, ns, &["-t", "t:z", &c]);
    assert!(!ran_any(&again.stderr), "{}", again.stderr);
}

#[tokio::test]
async fn independent_stages_run_at_the_same_time() {
    let ns = "parallel";
    let h = Harness::with_busybox(ns).await;
    let df = "FROM busybox AS s1\nRUN sleep 2 && echo 1 > /o\n\
              FROM busybox AS s2\nRUN sleep 2 && echo 2 > /o\n\
              FROM busybox AS s3\nRUN sleep 2 && echo 3 > /o\n\
              FROM busybox AS s4\nRUN sleep 2 && echo 4 > /o\n\
              FROM busybox\nCOPY --from=s1 /o /o1\nCOPY --from=s2 /o /o2\nCOPY --from=s3 /o /o3\nCOPY --from=s4 /o /o4\n";
    let ctx = h.context("parallel", &[("Dockerfile", df)]);
    let out = h
        .kiln(
            ns,
            &[
                "build",
                "--progress",
                "rawjson",
                "-t",
                "par",
                ctx.to_str().expect("utf8"),
            ],
        )
        .expect("kiln runs");
    assert!(out.success, "{}", out.stderr);
    // rawjson is BuildKit's SolveStatus: vertexes with RFC 3339 times.
    let nanos = |t: &str| -> u128 {
        let (day, time) = t.split_once('T').expect("a time");
        let d: u128 = day[8..10].parse().expect("day");
        let time = time.trim_end_matches('Z');
        let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
        let secs = hms
            .split(':')
            .fold(d, |acc, p| acc * 60 + p.parse::<u128>().expect("number"));
        let frac: u128 = format!("{frac:0<9}")[..9].parse().expect("fraction");
        secs * 1_000_000_000 + frac
    };
    let mut intervals: std::collections::HashMap<String, (u128, u128)> = Default::default();
    for line in out.stderr.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        for v in v["vertexes"].as_array().into_iter().flatten() {
            let name = v["name"].as_str().unwrap_or_default();
            if !name.contains("RUN sleep") {
                continue;
            }
            let id = v["digest"].as_str().expect("digest").to_string();
            let e = intervals.entry(id).or_default();
            if let Some(s) = v["started"].as_str() {
                e.0 = nanos(s);
            }
            if let Some(c) = v["completed"].as_str() {
                e.1 = nanos(c);
            }
        }
    }
    assert_eq!(intervals.len(), 4, "{}", out.stderr);
    // Every pair of RUN steps overlapped in time.
    let iv: Vec<(u128, u128)> = intervals.values().copied().collect();
    for i in 0..iv.len() {
        for j in 0..iv.len() {
            if i != j {
                assert!(
                    iv[i].0 < iv[j].1 && iv[j].0 < iv[i].1,
                    "steps {i} and {j} did not overlap: {iv:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn cache_mounts_persist_and_locked_serializes() {
    let ns = "cachemount";
    let h = Harness::with_busybox(ns).await;
    let df = |tag: &str| {
        format!(
            "FROM busybox\nRUN --mount=type=cache,target=/cache,sharing=locked \
             echo start-{tag} >> /cache/log && sleep 1 && echo end-{tag} >> /cache/log && cat /cache/log\n"
        )
    };
    let a = h.context("cm-a", &[("Dockerfile", &df("a"))]);
    let b = h.context("cm-b", &[("Dockerfile", &df("b"))]);
    let (pa, pb) = (
        a.to_str().expect("utf8").to_string(),
        b.to_str().expect("utf8").to_string(),
    );
    std::thread::scope(|s| {
        let x = s.spawn(|| build(&h, ns, &[&pa]));
        let y = s.spawn(|| build(&h, ns, &[&pb]));
        x.join().expect("thread");
        y.join().expect("thread");
    });
    let c = h.context(
        "cm-c",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=cache,target=/cache cat /cache/log\n",
        )],
    );
    let out = build(&h, ns, &[c.to_str().expect("utf8")]);
    let log: Vec<&str> = out
        .stderr
        .lines()
        // `#N 0.123 start-a`: the output line's last word.
        .filter_map(|l| l.split_whitespace().last())
        .filter(|w| w.starts_with("start-") || w.starts_with("end-"))
        .collect();
    assert_eq!(log.len(), 4, "{}", out.stderr);
    // Locked: each user's start and end are adjacent.
    assert_eq!(
        log[0].trim_start_matches("start-"),
        log[1].trim_start_matches("end-"),
        "{log:?}"
    );
    assert_eq!(
        log[2].trim_start_matches("start-"),
        log[3].trim_start_matches("end-"),
        "{log:?}"
    );
    // The cache's files are not in the image.
    // (The record type is in the verbose view, as in buildx's.)
    let du = h.kiln(ns, &["du", "--verbose"]).expect("kiln du");
    assert!(du.stdout.contains("exec.cachemount"), "{}", du.stdout);
}

#[tokio::test]
async fn prune_all_leaves_no_kiln_lease_and_images_still_run() {
    let ns = "prune";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.context(
        "prune",
        &[
            ("Dockerfile", "FROM busybox AS tmp\nRUN echo tmp > /t\nFROM busybox\nCOPY --from=tmp /t /t\nRUN --mount=type=cache,target=/c echo kept > /k\n"),
        ],
    );
    build(&h, ns, &["-t", "pruned", ctx.to_str().expect("utf8")]);
    assert!(!records(&h, ns).is_empty());
    let du = h.kiln(ns, &["du", "--verbose"]).expect("kiln du");
    assert!(
        du.success && du.stdout.contains("kiln/cache/"),
        "{}",
        du.stdout
    );
    let out = h.kiln(ns, &["prune", "--all"]).expect("kiln prune");
    assert!(out.success, "{}", out.stderr);
    let leases = h.ctr(ns, &["leases", "ls"]).expect("ctr");
    assert!(!leases.contains("kiln/"), "{leases}");
    // Only the images' snapshots are left: the busybox chain and the image's.
    let snaps = h.ctr(ns, &["snapshots", "ls"]).expect("ctr");
    assert_eq!(snaps.lines().skip(1).count(), 3, "{snaps}");
    let want = "tmp\nkept\n";
    let printed = h.run_image_expecting(
        ns,
        "docker.io/library/pruned:latest",
        "pruned-run",
        &["cat", "/t", "/k"],
        want,
    );
    assert_eq!(printed, want);
}

#[tokio::test]
async fn a_killed_build_leaves_only_expiring_leases_and_the_next_build_works() {
    let ns = "sigkill";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.context(
        "kill",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo STEP-STARTED && sleep 120\n",
        )],
    );
    let mut child = h
        .kiln_until(
            ns,
            &["build", "--progress", "plain", ctx.to_str().expect("utf8")],
            "STEP-STARTED",
        )
        .child;
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
    // What a dead build leaves is held by leases that expire, or by its
    // build lease, which lives only as long as its own first lifetime
    // (`dev.kiln/keepalive.secs`) or an expiring keepalive renewed after
    // it (a later kiln's sweep deletes it once that lapsed).
    let leases = h.ctr(ns, &["leases", "ls"]).expect("ctr");
    for line in leases.lines().skip(1) {
        let keepalive = line
            .split(|c: char| c == ',' || c.is_whitespace())
            .find_map(|l| l.strip_prefix("dev.kiln/keepalive="));
        match keepalive {
            Some(prefix) => assert!(
                leases.lines().any(|k| {
                    (k.starts_with(prefix) && k.contains("containerd.io/gc.expire"))
                        || (k.starts_with("kiln/build/")
                            && k.contains(&format!("dev.kiln/keepalive={prefix}"))
                            && k.contains("dev.kiln/keepalive.secs="))
                }),
                "a build lease without an expiring keepalive: {line}\n{leases}"
            ),
            None => assert!(
                line.contains("containerd.io/gc.expire"),
                "a lease that never expires: {line}"
            ),
        }
    }
    // The next kiln cleans up after the dead one and builds.
    let ok = h.context(
        "after",
        &[("Dockerfile", "FROM busybox\nRUN echo fine > /f\n")],
    );
    build(&h, ns, &["-t", "after", ok.to_str().expect("utf8")]);
    assert_eq!(h.leftovers(ns).expect("ctr"), Vec::<String>::new());
    let tasks = h.ctr(ns, &["tasks", "ls"]).expect("ctr");
    assert_eq!(
        tasks.lines().count(),
        1,
        "the killed step's task is gone: {tasks}"
    );
}
