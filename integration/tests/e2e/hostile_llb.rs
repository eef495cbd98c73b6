//! Hostile LLB definitions sent straight to kilnd's Control.Solve, as a
//! client other than kiln's own could send them: bytes that do not decode,
//! inputs missing from the definition or not digests, edges and mounts
//! naming inputs or outputs that do not exist, and a chain of many
//! thousand ops. Each must fail with a clear error naming what is wrong,
//! never crash kilnd, and leave nothing behind (no lease, snapshot,
//! container, mount or state directory); kilnd then still builds.
//!
//! A cycle cannot be written: an op names its inputs by the digest of
//! their bytes, so an op would have to contain its own digest.

use kiln_integration::llbdef::{op_bytes, shell_exec};
use kiln_integration::{Harness, Kilnd};
use kiln_proto::control::control_client::ControlClient;
use kiln_proto::control::SolveRequest;
use kiln_proto::llb;
use std::collections::HashMap;
use std::time::Duration;

const BUSYBOX: &str = "docker-image://docker.io/library/busybox:latest";

fn input(digest: &str, index: i64) -> llb::Input {
    llb::Input {
        digest: digest.into(),
        index,
    }
}

fn busybox() -> (Vec<u8>, String) {
    op_bytes(&llb::Op {
        op: Some(llb::op::Op::Source(llb::SourceOp {
            identifier: BUSYBOX.into(),
            attrs: HashMap::new(),
        })),
        ..Default::default()
    })
}

/// `ops` followed by the terminal op naming output `index` of `result`.
fn definition(ops: Vec<Vec<u8>>, result: &str, index: i64) -> llb::Definition {
    let (term, _) = op_bytes(&llb::Op {
        inputs: vec![input(result, index)],
        ..Default::default()
    });
    let mut def = ops;
    def.push(term);
    llb::Definition {
        def,
        ..Default::default()
    }
}

/// An exec on busybox whose first mount is changed by `edit`.
fn exec_on_busybox(edit: impl FnOnce(&mut llb::ExecOp, &mut Vec<llb::Input>)) -> llb::Definition {
    let (src_b, src_d) = busybox();
    let mut exec = shell_exec("true");
    let mut inputs = vec![input(&src_d, 0)];
    edit(&mut exec, &mut inputs);
    let (exec_b, exec_d) = op_bytes(&llb::Op {
        inputs,
        op: Some(llb::op::Op::Exec(exec)),
        ..Default::default()
    });
    definition(vec![src_b, exec_b], &exec_d, 0)
}

fn mkdir(path: &str, input: i64) -> llb::FileAction {
    llb::FileAction {
        input,
        secondary_input: -1,
        output: 0,
        action: Some(llb::file_action::Action::Mkdir(llb::FileActionMkDir {
            path: path.into(),
            mode: 0o755,
            make_parents: true,
            ..Default::default()
        })),
    }
}

/// A file op on busybox with `actions`.
fn file_on_busybox(actions: Vec<llb::FileAction>) -> llb::Definition {
    let (src_b, src_d) = busybox();
    let (file_b, file_d) = op_bytes(&llb::Op {
        inputs: vec![input(&src_d, 0)],
        op: Some(llb::op::Op::File(llb::FileOp { actions })),
        ..Default::default()
    });
    definition(vec![src_b, file_b], &file_d, 0)
}

/// A chain of `n` mkdir ops on top of a source op with `identifier`.
fn chain(n: usize, identifier: &str) -> llb::Definition {
    let (mut prev_b, mut prev_d) = op_bytes(&llb::Op {
        op: Some(llb::op::Op::Source(llb::SourceOp {
            identifier: identifier.into(),
            attrs: HashMap::new(),
        })),
        ..Default::default()
    });
    let mut ops = Vec::with_capacity(n + 2);
    for i in 0..n {
        ops.push(prev_b);
        let (b, d) = op_bytes(&llb::Op {
            inputs: vec![input(&prev_d, 0)],
            op: Some(llb::op::Op::File(llb::FileOp {
                actions: vec![mkdir(&format!("/d{i}"), 0)],
            })),
            ..Default::default()
        });
        (prev_b, prev_d) = (b, d);
    }
    ops.push(prev_b);
    definition(ops, &prev_d, 0)
}

async fn solve(k: &Kilnd, r: &str, def: llb::Definition) -> Result<(), tonic::Status> {
    let ch = containerd_client::connect(&k.socket)
        .await
        .expect("connect to kilnd");
    ControlClient::new(ch)
        .solve(SolveRequest {
            r#ref: r.into(),
            definition: Some(def),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

#[tokio::test]
async fn hostile_llb_definitions_fail_clearly_and_leave_nothing() {
    let ns = "hostile-llb";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let (src_b, src_d) = busybox();
    let missing = format!("sha256:{}", "0".repeat(64));
    let cases: Vec<(&str, llb::Definition, String)> = vec![
        (
            "undecodable op",
            llb::Definition {
                def: vec![
                    vec![0x0a, 0xff, 0xff],
                    definition(vec![], &src_d, 0).def[0].clone(),
                ],
                ..Default::default()
            },
            "invalid LLB definition: op 0 does not decode".into(),
        ),
        (
            "terminal op not last",
            llb::Definition {
                def: vec![definition(vec![], &src_d, 0).def[0].clone(), src_b.clone()],
                ..Default::default()
            },
            "the last op must be a terminal op with exactly one input".into(),
        ),
        (
            "input missing from the definition",
            definition(vec![src_b.clone()], &missing, 0),
            format!("input {missing} is not in the definition"),
        ),
        (
            "exec input missing from the definition",
            exec_on_busybox(|_, inputs| inputs[0] = input(&missing, 0)),
            format!("input {missing} is not in the definition"),
        ),
        (
            "input that is not a digest",
            exec_on_busybox(|_, inputs| inputs[0] = input("../../etc/passwd", 0)),
            "input \"../../etc/passwd\" of op sha256:".into(),
        ),
        (
            "negative output index",
            exec_on_busybox(|_, inputs| inputs[0].index = -1),
            "reads output -1 of".into(),
        ),
        (
            "output the input op does not have",
            exec_on_busybox(|_, inputs| inputs[0].index = 7),
            format!("reads output 7 of {src_d}, which has 1"),
        ),
        (
            "exec mount input out of range",
            exec_on_busybox(|e, _| e.mounts[0].input = 3),
            "mount input 3 out of range".into(),
        ),
        (
            "terminal naming an output the exec does not have",
            {
                let (src_b, src_d) = busybox();
                let (exec_b, exec_d) = op_bytes(&llb::Op {
                    inputs: vec![input(&src_d, 0)],
                    op: Some(llb::op::Op::Exec(shell_exec("true"))),
                    ..Default::default()
                });
                definition(vec![src_b, exec_b], &exec_d, 9)
            },
            "reads output 9 of sha256:".into(),
        ),
        (
            // Kiln's graph result is a vertex's first output: another one
            // is refused rather than answered with the wrong tree.
            "result that is an exec's second output",
            {
                let (src_b, src_d) = busybox();
                let mut exec = shell_exec("true");
                exec.mounts.push(llb::Mount {
                    input: -1,
                    dest: "/out".into(),
                    output: 1,
                    ..Default::default()
                });
                let (exec_b, exec_d) = op_bytes(&llb::Op {
                    inputs: vec![input(&src_d, 0)],
                    op: Some(llb::op::Op::Exec(exec)),
                    ..Default::default()
                });
                definition(vec![src_b, exec_b], &exec_d, 1)
            },
            "a result that is output 1 of its op (only output 0) is not supported".into(),
        ),
        (
            "merge input out of range",
            {
                let (merge_b, merge_d) = op_bytes(&llb::Op {
                    inputs: vec![input(&src_d, 0)],
                    op: Some(llb::op::Op::Merge(llb::MergeOp {
                        inputs: vec![llb::MergeInput { input: 0 }, llb::MergeInput { input: 4 }],
                    })),
                    ..Default::default()
                });
                definition(vec![src_b.clone(), merge_b], &merge_d, 0)
            },
            "merge input 4 out of range".into(),
        ),
        (
            "file action on an action that does not exist",
            file_on_busybox(vec![mkdir("/a", 8)]),
            "file action 0's input 8 is neither one of the op's 1 inputs nor an earlier action"
                .into(),
        ),
        (
            "file action on a later action",
            file_on_busybox(vec![mkdir("/a", 2), mkdir("/b", 0)]),
            "file action 0's input 2 is neither".into(),
        ),
        (
            "file copy from a secondary input that does not exist",
            file_on_busybox(vec![llb::FileAction {
                input: 0,
                secondary_input: 9,
                output: 0,
                action: Some(llb::file_action::Action::Copy(llb::FileActionCopy {
                    src: "/etc/passwd".into(),
                    dest: "/x".into(),
                    mode: -1,
                    ..Default::default()
                })),
            }]),
            "file action 0's secondary input 9 is neither".into(),
        ),
        (
            // 40,000 ops (about 8 MB): translated without recursion, and
            // refused before anything runs for the source at its root.
            "forty thousand ops on an unknown source",
            chain(40_000, "frob://nowhere"),
            "frob://nowhere".into(),
        ),
    ];
    let mut failures = Vec::new();
    for (i, (name, def, want)) in cases.into_iter().enumerate() {
        let r = format!("hostilellb{i:016}");
        match solve(&k, &r, def).await {
            Ok(()) => failures.push(format!("{name}: built, want an error containing {want:?}")),
            Err(e) if !e.message().contains(&want) => failures.push(format!(
                "{name}: {:?} {:?}, want it to contain {want:?}",
                e.code(),
                e.message()
            )),
            // A refusal, answered as BuildKit answers a failed build.
            Err(e) if e.code() != tonic::Code::Unknown => {
                failures.push(format!("{name}: code {:?} ({})", e.code(), e.message()))
            }
            Err(_) => {}
        }
        assert!(
            k.pid()
                .is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists()),
            "kilnd died on {name}:\n{}",
            std::fs::read_to_string(&k.log).unwrap_or_default()
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    h.wait_no_leftovers(ns, &h.kilnd_root(ns), Duration::from_secs(20))
        .await
        .expect("hostile definitions leave nothing");

    // A chain of real ops deeper than overlayfs can stack fails at the op
    // that would mount 501 layers (busybox and 500 ops below it), naming
    // the count and the limit, and leaves nothing either.
    let err = solve(&k, "hostilellbdeep0000000001", chain(501, BUSYBOX))
        .await
        .expect_err("501 layers do not stack");
    assert!(
        err.message()
            .contains("more than the 500 layers overlayfs can stack"),
        "{}",
        err.message()
    );
    h.wait_no_leftovers(ns, &h.kilnd_root(ns), Duration::from_secs(20))
        .await
        .expect("a failed deep build leaves nothing");

    // A merge of one image 50,000 times would stack more layers than
    // overlayfs can: refused before any layer is applied.
    let wide = {
        let (merge_b, merge_d) = op_bytes(&llb::Op {
            inputs: vec![input(&src_d, 0)],
            op: Some(llb::op::Op::Merge(llb::MergeOp {
                inputs: vec![llb::MergeInput { input: 0 }; 50_000],
            })),
            ..Default::default()
        });
        definition(vec![src_b.clone(), merge_b], &merge_d, 0)
    };
    let err = solve(&k, "hostilellbwide0000000001", wide)
        .await
        .expect_err("50,000 layers do not stack");
    assert!(
        err.message().contains(
            "a merge of 50000 inputs makes 50000 layers, more than the 500 a snapshot can stack"
        ),
        "{}",
        err.message()
    );
    h.wait_no_leftovers(ns, &h.kilnd_root(ns), Duration::from_secs(20))
        .await
        .expect("a refused merge leaves nothing");

    // kilnd still builds, and a chain of many real ops runs.
    solve(&k, "hostilellbgood0000000001", chain(100, BUSYBOX))
        .await
        .expect("a 100-op chain builds");
    h.wait_no_leftovers(ns, &h.kilnd_root(ns), Duration::from_secs(20))
        .await
        .expect("a finished build leaves nothing");
}

fn action(input: i64, action: llb::file_action::Action) -> llb::FileAction {
    llb::FileAction {
        input,
        secondary_input: -1,
        output: 0,
        action: Some(action),
    }
}

/// File ops and exec mounts whose paths climb out with `..`, name a host
/// directory, or go through a symlink an earlier action made to one: each
/// lands inside the build's filesystem (as in BuildKit) and the host's
/// directory stays empty.
#[tokio::test]
async fn hostile_llb_paths_stay_inside_the_build() {
    use llb::file_action::Action;
    let ns = "hostile-llb-paths";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let canary = h.state_dir().join("canary");
    std::fs::create_dir_all(&canary).expect("canary");
    let c = canary.display().to_string();
    let climb = format!("../../../../../../..{c}");
    let mkfile = |path: &str| {
        Action::Mkfile(llb::FileActionMkFile {
            path: path.into(),
            mode: 0o644,
            data: b"planted\n".to_vec(),
            ..Default::default()
        })
    };
    // Action 0 makes the canary's path inside the build, so each later
    // action (reading action 0, LLB's input 1) has somewhere to land.
    let made = |actions: Vec<llb::FileAction>| {
        let mut all = vec![mkdir(&c, 0)];
        all.extend(actions);
        all
    };
    let cases: Vec<(&str, Vec<llb::FileAction>)> = vec![
        (
            "mkfile at the host path",
            made(vec![action(1, mkfile(&format!("{c}/a")))]),
        ),
        (
            "mkfile climbing out",
            made(vec![action(1, mkfile(&format!("{climb}/b")))]),
        ),
        (
            "mkdir climbing out",
            made(vec![action(
                1,
                Action::Mkdir(llb::FileActionMkDir {
                    path: format!("{climb}/d"),
                    mode: 0o755,
                    make_parents: true,
                    ..Default::default()
                }),
            )]),
        ),
        (
            "mkfile through a symlink to the host path",
            made(vec![
                action(
                    1,
                    Action::Symlink(llb::FileActionSymlink {
                        oldpath: c.clone(),
                        newpath: "/l".into(),
                        ..Default::default()
                    }),
                ),
                action(2, mkfile("/l/c")),
            ]),
        ),
        (
            "symlink created climbing out",
            made(vec![action(
                1,
                Action::Symlink(llb::FileActionSymlink {
                    oldpath: "/etc/passwd".into(),
                    newpath: format!("{climb}/s"),
                    ..Default::default()
                }),
            )]),
        ),
        (
            "rm climbing out",
            vec![action(
                0,
                Action::Rm(llb::FileActionRm {
                    path: format!("{climb}/keep"),
                    allow_not_found: true,
                    ..Default::default()
                }),
            )],
        ),
    ];
    std::fs::write(canary.join("keep"), "kept").expect("keep");
    for (i, (name, actions)) in cases.into_iter().enumerate() {
        let r = solve(
            &k,
            &format!("hostilepaths{i:012}"),
            file_on_busybox(actions),
        )
        .await;
        assert!(r.is_ok(), "{name}: {r:?}");
        let mut inside: Vec<_> = std::fs::read_dir(&canary)
            .expect("canary")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        inside.sort();
        assert_eq!(inside, vec!["keep"], "{name} ({r:?}) reached the host");
    }
    // An exec whose mount target climbs out mounts inside the rootfs.
    let def = exec_on_busybox(|e, _| {
        e.meta.as_mut().expect("meta").args = vec![
            "/bin/sh".into(),
            "-c".into(),
            format!("echo x > {c}/m/planted && cat {c}/m/planted"),
        ];
        e.mounts.push(llb::Mount {
            input: -1,
            dest: format!("/{climb}/m"),
            output: -1,
            mount_type: llb::MountType::Tmpfs as i32,
            ..Default::default()
        });
    });
    let r = solve(&k, "hostilepathsexec00000001", def).await;
    assert!(r.is_ok(), "exec mount climbing out: {r:?}");
    assert_eq!(
        std::fs::read_dir(&canary).expect("canary").count(),
        1,
        "an exec mount reached the host ({r:?})"
    );
    assert!(kilnd_alive(&k));
    h.wait_no_leftovers(ns, &h.kilnd_root(ns), Duration::from_secs(20))
        .await
        .expect("nothing left");
}

fn kilnd_alive(k: &Kilnd) -> bool {
    k.pid()
        .is_some_and(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
}
