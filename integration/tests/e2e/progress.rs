//! Issue 12's progress and failure display, from real embedded builds:
//! the plain layout and the rawjson stream compared with BuildKit's
//! (times and digests masked), the failure recap with the Dockerfile
//! snippet, and the terminal view under tmux at 80×24 and 200×50.

use crate::common;

use common::remote;
use kiln_integration::{Harness, KilnOutput};

/// No COPY: the context load would run beside the FROM and interleave.
const DF: &str = "FROM busybox\nRUN echo hello && usleep 200000 && echo world >&2\n";

/// `kiln build --progress MODE ARGS` (MODE empty: no flag).
fn build(h: &Harness, ns: &str, mode: &str, env: &[(&str, &str)], args: &[&str]) -> KilnOutput {
    let mut cmd = h.kiln_command(ns).expect("kiln");
    cmd.env_remove("BUILDKIT_PROGRESS");
    cmd.envs(env.iter().copied());
    cmd.arg("build");
    if !mode.is_empty() {
        cmd.args(["--progress", mode]);
    }
    let out = cmd.args(args).output().expect("kiln runs");
    KilnOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Masks what changes between runs: times (`0.123`, `0.4s`) and digests.
fn mask(s: &str) -> String {
    let mut out = String::new();
    for line in s.lines() {
        let words: Vec<String> = line
            .split(' ')
            .map(|w| {
                if let Some(d) = w.strip_prefix("sha256:") {
                    if d.len() == 64 {
                        return "sha256:D".to_string();
                    }
                }
                let num = w.strip_suffix('s').unwrap_or(w);
                let is_time = !num.is_empty()
                    && num.contains('.')
                    && num.chars().all(|c| c.is_ascii_digit() || c == '.');
                if is_time {
                    if w.ends_with('s') {
                        "Ts".into()
                    } else {
                        "T".into()
                    }
                } else {
                    w.to_string()
                }
            })
            .collect();
        out += &words.join(" ");
        out.push('\n');
    }
    out
}

#[tokio::test]
async fn plain_is_buildkits_layout() {
    let ns = "progress-plain";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.context("plain", &[("Dockerfile", DF)]);
    let out = build(
        &h,
        ns,
        "plain",
        &[],
        &["-t", "plain:1", ctx.to_str().expect("utf8")],
    )
    .ok();
    // BuildKit's rules: `#N name` once per vertex with a blank line
    // between vertexes, output lines timed from the vertex's start, a
    // status line per export item, `DONE` for every vertex. The
    // frontend's internal steps are kilnd's (and their bytes: see
    // `embedded_internal_steps_and_bytes_are_kilnds`).
    let expected = "\
#1 [internal] load build definition from Dockerfile
#1 transferring dockerfile: NB done
#1 DONE Ts

#2 [internal] load metadata for docker.io/library/busybox:latest
#2 DONE Ts

#3 [internal] load .dockerignore
#3 transferring context: NB done
#3 DONE Ts

#4 [1/2] FROM docker.io/library/busybox:latest@BUSYBOX
#4 resolve docker.io/library/busybox:latest@BUSYBOX done
#4 DONE Ts

#5 [2/2] RUN echo hello && usleep 200000 && echo world >&2
#5 T hello
#5 T world
#5 DONE Ts

#6 exporting to image
#6 exporting layers done
#6 exporting manifest sha256:D done
#6 exporting config sha256:D done
#6 naming to docker.io/library/plain:1 done
#6 DONE Ts
";
    // The FROM step is named by the digest the base was pinned to.
    let busybox = h.image_digest(ns, "docker.io/library/busybox:latest");
    assert_eq!(
        mask_transfers(&out.stderr.replace(&busybox, "BUSYBOX")),
        expected,
        "{}",
        out.stderr
    );
    // A rebuild is all cached.
    let again = build(
        &h,
        ns,
        "plain",
        &[],
        &["-t", "plain:1", ctx.to_str().expect("utf8")],
    )
    .ok();
    assert!(
        mask(&again.stderr)
            .contains("#5 [2/2] RUN echo hello && usleep 200000 && echo world >&2\n#5 CACHED\n"),
        "{}",
        again.stderr
    );
    // Nothing ran, so nothing loaded the base: its step is DONE, as
    // BuildKit shows a source no running step read (CACHED when one does).
    let from = format!(
        "#4 [1/2] FROM docker.io/library/busybox:latest@{busybox}\n\
         #4 resolve docker.io/library/busybox:latest@{busybox} done\n#4 DONE "
    );
    assert!(
        mask_transfers(&again.stderr).contains(&from),
        "{}",
        again.stderr
    );
    // A change to the step: it runs and reads the base, now CACHED.
    let changed = h.context(
        "plain-changed",
        &[("Dockerfile", &DF.replace("hello", "hi"))],
    );
    let third = build(
        &h,
        ns,
        "plain",
        &[],
        &["-t", "plain:2", changed.to_str().expect("utf8")],
    )
    .ok();
    let from = format!(
        "#4 [1/2] FROM docker.io/library/busybox:latest@{busybox}\n\
         #4 resolve docker.io/library/busybox:latest@{busybox} done\n#4 CACHED\n"
    );
    assert!(
        mask_transfers(&third.stderr).contains(&from),
        "{}",
        third.stderr
    );
}

/// Two platforms on one base built for the build platform: the base and
/// the step are one vertex each (one digest), and the base's state is
/// decided by its readers for both platforms, as in a single-platform
/// build: DONE in a no-op rebuild (buildkitd 73ed6825c prints the same).
#[tokio::test]
async fn a_base_shared_by_two_platforms_is_done_in_a_no_op_rebuild() {
    let ns = "progress-platforms";
    let h = Harness::with_busybox(ns).await;
    let df = "FROM --platform=$BUILDPLATFORM busybox\nRUN echo hi > /x\n";
    let ctx = h.context("platforms", &[("Dockerfile", df)]);
    let args = [
        "--platform",
        "linux/amd64,linux/arm64",
        "-t",
        "platforms:1",
        ctx.to_str().expect("utf8"),
    ];
    // The first build unpacks the base: work, DONE.
    build(&h, ns, "plain", &[], &args).ok();
    let busybox = h.image_digest(ns, "docker.io/library/busybox:latest");
    let from = |state: &str| {
        format!(
            "] FROM docker.io/library/busybox:latest@{busybox}\n\
             #4 resolve docker.io/library/busybox:latest@{busybox} done\n#4 {state}"
        )
    };
    // Nothing runs: nothing loads the base, for either platform.
    let again = build(&h, ns, "plain", &[], &args).ok();
    assert!(again.stderr.contains(&from("DONE ")), "{}", again.stderr);
    assert_eq!(
        again.stderr.matches("] FROM ").count(),
        1,
        "{}",
        again.stderr
    );
    assert!(
        again.stderr.contains("RUN echo hi > /x\n#5 CACHED\n"),
        "{}",
        again.stderr
    );
    // The step runs again and loads the base: CACHED.
    let mut no_cache = vec!["--no-cache"];
    no_cache.extend(args);
    let third = build(&h, ns, "plain", &[], &no_cache).ok();
    assert!(third.stderr.contains(&from("CACHED\n")), "{}", third.stderr);
}

#[tokio::test]
async fn rawjson_is_buildkits_solve_status_and_buildkit_progress_selects_it() {
    use base64::Engine as _;
    let ns = "progress-json";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.context("json", &[("Dockerfile", DF)]);
    let c = ctx.to_str().expect("utf8");
    // The environment chooses when no flag does; the flag wins over it.
    // Named, so no "No output specified" warning comes first.
    let out = build(
        &h,
        ns,
        "",
        &[("BUILDKIT_PROGRESS", "rawjson")],
        &["-t", "json:1", c],
    )
    .ok();
    let plain = build(
        &h,
        ns,
        "plain",
        &[("BUILDKIT_PROGRESS", "rawjson")],
        &["--no-cache", "-t", "json:1", c],
    )
    .ok();
    assert!(
        plain
            .stderr
            .starts_with("#1 [internal] load build definition"),
        "{}",
        plain.stderr
    );
    let mut run = (false, false);
    let mut output = Vec::new();
    // Besides the updates, only buildx's no-output warning (after them).
    let (updates, others): (Vec<&str>, Vec<&str>) =
        out.stderr.lines().partition(|l| l.starts_with('{'));
    assert!(
        others
            .iter()
            .all(|l| l.starts_with("WARNING: No output specified.")),
        "{}",
        out.stderr
    );
    for line in updates {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let obj = v.as_object().expect("an object per line");
        assert!(!obj.is_empty(), "{line}");
        for (k, items) in obj {
            let allowed: &[&str] = match k.as_str() {
                "vertexes" => &[
                    "digest",
                    "inputs",
                    "name",
                    "started",
                    "completed",
                    "cached",
                    "error",
                ],
                "statuses" => &[
                    "id",
                    "vertex",
                    "name",
                    "total",
                    "current",
                    "timestamp",
                    "started",
                    "completed",
                ],
                "logs" => &["vertex", "stream", "data", "timestamp"],
                "warnings" => &[
                    "vertex",
                    "level",
                    "short",
                    "detail",
                    "url",
                    "sourceInfo",
                    "range",
                ],
                other => panic!("key {other:?} in {line}"),
            };
            for item in items.as_array().expect("a list") {
                for f in item.as_object().expect("an object").keys() {
                    assert!(allowed.contains(&f.as_str()), "{k}.{f} in {line}");
                }
                if k == "vertexes" {
                    assert!(
                        item["digest"]
                            .as_str()
                            .is_some_and(|d| d.starts_with("sha256:")),
                        "{line}"
                    );
                    if item["name"]
                        == "[2/2] RUN echo hello && usleep 200000 && echo world >\u{26}2"
                    {
                        run.0 |= item["started"].is_string();
                        run.1 |= item["completed"].is_string();
                    }
                }
                if k == "logs" {
                    let data = base64::engine::general_purpose::STANDARD
                        .decode(item["data"].as_str().expect("data"))
                        .expect("base64");
                    output.extend(data);
                    assert!(
                        item["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
                        "{line}"
                    );
                }
            }
        }
    }
    assert_eq!(run, (true, true), "{}", out.stderr);
    let output = String::from_utf8(output).expect("utf8");
    assert!(
        output.contains("hello\n") && output.contains("world\n"),
        "{output}"
    );
    // Go's encoder escapes `&` and `>`.
    assert!(
        out.stderr.contains(r"echo world \u003e\u00262"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn a_failing_run_shows_the_recap_and_the_dockerfile_snippet() {
    let ns = "progress-fail";
    let h = Harness::with_busybox(ns).await;
    let df = "FROM busybox\nRUN echo one\nRUN echo out && usleep 100000 && echo err >&2 && exit 3\nRUN echo never\n";
    let ctx = h.context("fail", &[("Dockerfile", df)]);
    let out = build(&h, ns, "plain", &[], &[ctx.to_str().expect("utf8")]);
    assert!(!out.success, "{}", out.stderr);
    let tail = mask(
        out.stderr
            .split_once("#6 ERROR: ")
            .expect("the step failed")
            .1,
    );
    // As buildx shows a failed step: the vertex's error without the line
    // (the snippet names it), the recap, the snippet, the build's error.
    let expected = "\
process \"/bin/sh -c echo out && usleep 100000 && echo err >&2 && exit 3\" did not complete successfully: exit code: 3
------
 > [3/4] RUN echo out && usleep 100000 && echo err >&2 && exit 3:
T out
T err
------
WARNING: No output specified. Build result will only remain in the build cache. To name the image use -t NAME, to push it into a registry use --push
Dockerfile:3
--------------------
   1 |     FROM busybox
   2 |     RUN echo one
   3 | >>> RUN echo out && usleep 100000 && echo err >&2 && exit 3
   4 |     RUN echo never
   5 |     
--------------------
ERROR: failed to build: failed to solve: Dockerfile:3: process \"/bin/sh -c echo out && usleep 100000 && echo err >&2 && exit 3\" did not complete successfully: exit code: 3
";
    assert_eq!(tail, expected, "{}", out.stderr);
    // The step after the failing one never started.
    assert!(
        !out.stderr.contains("[4/4] RUN echo never"),
        "{}",
        out.stderr
    );
}

/// An error about a multi-line instruction marks all its lines, as
/// BuildKit's source ranges do (`node.Location()`): a failing `RUN` with
/// continuation lines, a failing heredoc `RUN`, and a parse error of a
/// continued `COPY`, embedded and through kilnd (the details' ranges).
#[tokio::test]
async fn a_multi_line_instruction_is_marked_whole() {
    let ns = "progress-lines";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let cases = [
        (
            "run",
            "FROM busybox\nRUN echo a && \\\n    false\nRUN echo after\n",
            "Dockerfile:2\n--------------------\n   1 |     FROM busybox\n   2 | >>> RUN echo a && \\\n   3 | >>>     false\n   4 |     RUN echo after\n--------------------\n",
        ),
        (
            "heredoc",
            "FROM busybox\nRUN <<EOF\necho hi\nexit 3\nEOF\n",
            "Dockerfile:2\n--------------------\n   1 |     FROM busybox\n   2 | >>> RUN <<EOF\n   3 | >>> echo hi\n   4 | >>> exit 3\n   5 | >>> EOF\n   6 |     \n--------------------\n",
        ),
        (
            "parse",
            "FROM busybox\nCOPY --chown=1 \\\n  --chown=2 f /p\n",
            "Dockerfile:2\n--------------------\n   1 |     FROM busybox\n   2 | >>> COPY --chown=1 \\\n   3 | >>>   --chown=2 f /p\n   4 |     \n--------------------\n",
        ),
    ];
    for (name, df, snippet) in cases {
        let ctx = h.context(&format!("lines-{name}"), &[("Dockerfile", df), ("f", "x")]);
        let c = ctx.to_str().expect("utf8");
        for (how, out) in [
            ("embedded", build(&h, ns, "plain", &[], &[c])),
            ("kilnd", remote(&h, &k, ns, &[c])),
        ] {
            assert!(!out.success, "{name} {how}: {}", out.stderr);
            assert!(out.stderr.contains(snippet), "{name} {how}: {}", out.stderr);
        }
    }
}

/// An image a `COPY --from` names is resolved with the bases, as BuildKit
/// resolves it (a stage of its own): `[internal] load metadata for …`,
/// embedded and through kilnd.
#[tokio::test]
async fn an_image_copied_from_is_looked_up_like_a_base() {
    let ns = "progress-copy-from";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let df = "FROM scratch\nCOPY --from=busybox /bin/busybox /bb\n";
    let ctx = h.context("copy-from-image", &[("Dockerfile", df)]);
    let c = ctx.to_str().expect("utf8");
    for (how, out) in [
        ("embedded", build(&h, ns, "plain", &[], &[c]).ok()),
        ("kilnd", remote(&h, &k, ns, &[c]).ok()),
    ] {
        assert!(
            out.stderr
                .contains("[internal] load metadata for docker.io/library/busybox:latest\n"),
            "{how}: {}",
            out.stderr
        );
    }
}

/// Runs `kiln build --progress tty` in a tmux window of `w`×`h` and
/// returns the screen once it exits.
fn tty_screen(h: &Harness, ns: &str, ctx: &std::path::Path, w: u32, rows: u32) -> String {
    let cmd = h.kiln_command(ns).expect("kiln");
    let mut line: Vec<String> = vec![cmd.get_program().to_string_lossy().into_owned()];
    line.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    line.extend(["build", "--no-cache", "--progress", "tty"].map(String::from));
    line.push(ctx.to_string_lossy().into_owned());
    let session = format!("kiln-{ns}-{w}");
    // A tmux server of this run's own: another run's session of the same
    // name on the shared default server would make new-session fail.
    let socket = std::env::temp_dir().join(format!("kiln-tmux-{}-{w}", std::process::id()));
    let tmux = || {
        let mut c = std::process::Command::new("tmux");
        c.arg("-S").arg(&socket);
        c
    };
    let done = h.state_dir().join(format!("tty-{w}.done"));
    let shell = format!(
        "cd / && KILN_NETWORK_MODE=host {} >/dev/null; echo $? > {}; sleep 600",
        line.join(" "),
        done.display()
    );
    let status = tmux()
        .args([
            "new-session",
            "-d",
            "-s",
            &session,
            "-x",
            &w.to_string(),
            "-y",
            &rows.to_string(),
            &shell,
        ])
        .status()
        .expect("tmux runs (apt-get install tmux)");
    assert!(status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
    while !done.exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let screen = tmux()
        .args(["capture-pane", "-p", "-t", &session])
        .output()
        .expect("capture-pane");
    let _ = tmux().arg("kill-server").status();
    let _ = std::fs::remove_file(&socket);
    let code = std::fs::read_to_string(&done).unwrap_or_default();
    let screen = String::from_utf8_lossy(&screen.stdout).into_owned();
    assert_eq!(code.trim(), "0", "{screen}");
    screen
}

#[tokio::test]
async fn the_terminal_view_is_redrawn_in_place_at_80x24_and_200x50() {
    let ns = "progress-tty";
    let h = Harness::with_busybox(ns).await;
    // Enough steps and output lines for many redraws and a cut block;
    // few enough that the finished view (the FROM step's `resolve` line
    // too) fits 24 rows with its header.
    let mut df = String::from("FROM busybox\n");
    for i in 0..9 {
        df += &format!("RUN for n in 1 2 3 4 5 6 7 8; do echo step {i} line $n of a long output line that is wider than eighty columns for sure; usleep 30000; done\n");
    }
    let ctx = h.context("tty", &[("Dockerfile", &df)]);
    for (w, rows) in [(80u32, 24u32), (200, 50)] {
        let screen = tty_screen(&h, ns, &ctx, w, rows);
        let lines: Vec<&str> = screen.lines().collect();
        // One header: frames never piled up.
        assert_eq!(
            screen.matches("[+] Building").count(),
            1,
            "{w}x{rows}:\n{screen}"
        );
        let head = lines
            .iter()
            .position(|l| l.starts_with("[+] Building"))
            .expect("header");
        assert!(
            lines[head].contains("(14/14) FINISHED"),
            "{w}x{rows}:\n{screen}"
        );
        for l in &lines {
            assert!(l.chars().count() < w as usize, "{w}x{rows}: {l:?}");
        }
        // Every step is listed once, after the header, with its time.
        for i in 0..9 {
            let step = format!(" => [{:>2}/10] RUN for n in", i + 2);
            let n = lines.iter().filter(|l| l.starts_with(&step)).count();
            if rows == 50 {
                assert_eq!(n, 1, "{w}x{rows}: {step}\n{screen}");
            } else {
                assert!(n <= 1, "{w}x{rows}: {step}\n{screen}");
            }
        }
        // The window of a running step is gone once it finished.
        assert!(!screen.contains(" => => # "), "{w}x{rows}:\n{screen}");
        // Below the view only buildx's no-output warning, printed once
        // the view is done, as buildx does.
        assert!(
            lines[head + 1..]
                .iter()
                .take_while(|l| !l.starts_with("WARNING: No output specified."))
                .all(|l| l.starts_with(" => ") || l.trim().is_empty()),
            "{w}x{rows}:\n{screen}"
        );
    }
}

#[tokio::test]
async fn through_kilnd_the_layout_and_the_recap_are_the_same() {
    let ns = "progress-remote";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let addr = k.addr();
    let df = "FROM busybox\nRUN echo out && usleep 100000 && echo err >&2 && exit 3\n";
    let ctx = h.context("remote", &[("Dockerfile", df)]);
    let out = remote(&h, &k, ns, &["-t", "remote:1", ctx.to_str().expect("utf8")]);
    assert!(!out.success, "{}", out.stderr);
    let masked = mask(&out.stderr);
    // Output lines timed from the step's start, the step's end, then the
    // recap of its last lines and the error, as buildx prints them.
    let step = "[2/2] RUN echo out && usleep 100000 && echo err >&2 && exit 3";
    let n = masked
        .lines()
        .find_map(|l| l.strip_suffix(&format!(" {step}")))
        .unwrap_or_else(|| panic!("no step line:\n{}", out.stderr))
        .to_string();
    // The step's error as buildkitd's: no `Dockerfile:2: ` (the snippet
    // from the error's source details names the line).
    assert!(
        masked.contains(&format!("{n} T out\n{n} T err\n{n} ERROR: process \"")),
        "{}",
        out.stderr
    );
    assert!(
        masked.contains(&format!("------\n > {step}:\nT out\nT err\n------\n")),
        "{}",
        out.stderr
    );
    assert!(
        masked.contains("\n\n#1 [internal] load build definition")
            || masked.starts_with("#1 [internal] load build definition"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("\nDockerfile:2\n--------------------\n"),
        "{}",
        out.stderr
    );
    assert_eq!(
        out.stderr.lines().last(),
        Some(
            "ERROR: failed to build: failed to solve: process \"/bin/sh -c echo out && usleep 100000 && echo err >&2 && exit 3\" did not complete successfully: exit code: 3"
        ),
        "{}",
        out.stderr
    );

    // rawjson through kilnd: one non-empty SolveStatus per line (BuildKit
    // never sends an empty update; buildx would print it as `{}`).
    let json = h
        .kiln(
            ns,
            &[
                "--addr",
                &addr,
                "build",
                "--progress",
                "rawjson",
                ctx.to_str().expect("utf8"),
            ],
        )
        .expect("kiln runs");
    let updates: Vec<&str> = json.stderr.lines().filter(|l| l.starts_with('{')).collect();
    assert!(updates.len() > 2, "{}", json.stderr);
    for line in updates {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v.as_object().is_some_and(|o| !o.is_empty()),
            "an empty update: {}",
            json.stderr
        );
    }
}

/// Masks the byte counts (and times) of `transferring NAME: 123B done`
/// lines too.
fn mask_transfers(s: &str) -> String {
    mask(s)
        .lines()
        .map(|l| match l.split_once(": ") {
            // A slow transfer also shows its time (`76B 0.1s done`).
            Some((head, tail)) if head.contains(" transferring ") && tail.ends_with(" done") => {
                format!("{head}: NB done\n")
            }
            // Any status item shows its time only when it took over 10 ms
            // (BuildKit's rule, unit-tested in the printer), which the
            // machine's load decides: a base's resolve, the layers' export.
            _ if l.ends_with(" Ts done") => {
                format!("{} done\n", l.trim_end_matches(" Ts done"))
            }
            _ => format!("{l}\n"),
        })
        .collect()
}

/// From scratch: no base image step runs beside the context's load.
const INTERNAL_DF: &str = "FROM scratch\nCOPY hello.txt /hello.txt\n";

/// The context of the internal-steps tests.
fn internal_context(h: &Harness) -> std::path::PathBuf {
    h.context(
        "internal",
        &[
            ("Dockerfile", INTERNAL_DF),
            ("hello.txt", "hello from the context\n"),
        ],
    )
}

/// BuildKit's dockerfile frontend: the definition, then the context's
/// ignore file, then the context when the graph reads it, each with its
/// transfer (fsutil's bytes on the wire), for [`INTERNAL_DF`] tagged
/// `internal:1` (transfers masked by [`mask_transfers`]).
const INTERNAL_STEPS: &str = "\
#1 [internal] load build definition from Dockerfile
#1 transferring dockerfile: NB done
#1 DONE Ts

#2 [internal] load .dockerignore
#2 transferring context: NB done
#2 DONE Ts

#3 [internal] load build context
#3 transferring context: NB done
#3 DONE Ts

#4 [1/1] COPY hello.txt /hello.txt
#4 DONE Ts

#5 exporting to image
#5 exporting layers done
#5 exporting manifest sha256:D done
#5 exporting config sha256:D done
#5 naming to docker.io/library/internal:1 done
#5 DONE Ts
";

/// The bytes of the `transferring …: NB` line of step `#step`.
fn transfer_bytes(stderr: &str, step: &str) -> u64 {
    stderr
        .lines()
        .find(|l| l.starts_with(&format!("#{step} transferring ")))
        .and_then(|l| l.rsplit_once(": "))
        .and_then(|(_, n)| n.split('B').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no bytes for #{step}:\n{stderr}"))
}

#[tokio::test]
async fn through_kilnd_the_frontends_internal_steps_are_buildkits() {
    let ns = "progress-internal";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ctx = internal_context(&h);
    let c = ctx.to_str().expect("utf8");
    let run = |extra: &[&str]| {
        let mut args = extra.to_vec();
        args.extend(["-t", "internal:1", c]);
        remote(&h, &k, ns, &args).ok()
    };
    let out = run(&[]);
    assert_eq!(
        mask_transfers(&out.stderr),
        INTERNAL_STEPS,
        "{}",
        out.stderr
    );
    let bytes = |step: &str| transfer_bytes(&out.stderr, step);
    // Nothing to send is fsutil's FIN packet, which BuildKit shows as 2B;
    // a file costs its content and its metadata.
    assert_eq!(bytes("2"), 2, "{}", out.stderr);
    assert!(bytes("1") > INTERNAL_DF.len() as u64, "{}", out.stderr);
    assert!(bytes("3") > 23, "{}", out.stderr);

    // A Dockerfile's own ignore file comes with it: no context ignore step.
    std::fs::write(ctx.join("Dockerfile.dockerignore"), "*.md\n").expect("write");
    let out = run(&["--no-cache"]);
    assert!(!out.stderr.contains("load .dockerignore"), "{}", out.stderr);
    assert!(
        mask_transfers(&out.stderr).starts_with(
            "#1 [internal] load build definition from Dockerfile\n\
             #1 transferring dockerfile: NB done\n#1 DONE Ts\n\n\
             #2 [internal] load build context\n#2 transferring context: NB done\n"
        ),
        "{}",
        out.stderr
    );
}

/// An embedded build shows kilnd's internal steps in kilnd's order, with
/// the bytes kilnd's first fetch of the same files takes on the wire
/// (nothing is transferred: the count is fsutil's, over the same walk),
/// in the plain and rawjson displays; a Dockerfile's own ignore file
/// drops the context's ignore step in both paths.
#[tokio::test]
async fn embedded_internal_steps_and_bytes_are_kilnds() {
    let ns = "progress-internal-kilnd";
    let h = Harness::start().await.expect("private containerd starts");
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ctx = internal_context(&h);
    let c = ctx.to_str().expect("utf8");
    let through = remote(&h, &k, ns, &["-t", "internal:1", c]).ok();
    // Another namespace: no cache record of kilnd's build.
    let embedded_ns = "progress-internal-embedded";
    let embedded = build(&h, embedded_ns, "plain", &[], &["-t", "internal:1", c]).ok();
    assert_eq!(
        mask_transfers(&embedded.stderr),
        INTERNAL_STEPS,
        "{}",
        embedded.stderr
    );
    for step in ["1", "2", "3"] {
        assert_eq!(
            transfer_bytes(&embedded.stderr, step),
            transfer_bytes(&through.stderr, step),
            "#{step}\nembedded:\n{}\nkilnd:\n{}",
            embedded.stderr,
            through.stderr
        );
    }

    // rawjson carries the same items with their bytes.
    let json = build(
        &h,
        embedded_ns,
        "rawjson",
        &[],
        &["--no-cache", "-t", "internal:1", c],
    )
    .ok();
    let mut items = Vec::new();
    for line in json.stderr.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        for st in v["statuses"].as_array().into_iter().flatten() {
            let name = st["name"].as_str().unwrap_or_default();
            if name.starts_with("transferring ") {
                items.push((name.to_string(), st["current"].as_u64().unwrap_or(0)));
            }
        }
    }
    let want: Vec<(String, u64)> = [
        ("transferring dockerfile:", "1"),
        ("transferring context:", "2"),
        ("transferring context:", "3"),
    ]
    .iter()
    .map(|(n, step)| (n.to_string(), transfer_bytes(&through.stderr, step)))
    .collect();
    assert_eq!(items, want, "{}", json.stderr);

    // A Dockerfile's own ignore file comes with it: no context ignore step.
    std::fs::write(ctx.join("Dockerfile.dockerignore"), "*.md\n").expect("write");
    let own = build(
        &h,
        embedded_ns,
        "plain",
        &[],
        &["--no-cache", "-t", "internal:1", c],
    )
    .ok();
    assert!(!own.stderr.contains("load .dockerignore"), "{}", own.stderr);
    assert!(
        mask_transfers(&own.stderr).starts_with(
            "#1 [internal] load build definition from Dockerfile\n\
             #1 transferring dockerfile: NB done\n#1 DONE Ts\n\n\
             #2 [internal] load build context\n#2 transferring context: NB done\n"
        ),
        "{}",
        own.stderr
    );
    // The ignore file is part of the definition's transfer.
    assert!(
        transfer_bytes(&own.stderr, "1") > transfer_bytes(&through.stderr, "1"),
        "{}",
        own.stderr
    );
}
