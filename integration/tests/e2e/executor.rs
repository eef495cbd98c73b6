//! `ContainerdExecutor` against a private containerd: output capture, exit
//! codes as data, USER resolution, network modes, cancel and timeout, and
//! a rootfs left without mount stubs.

use kiln_integration::Harness;
use kiln_shim::{
    CancellationToken, ContainerdExecutor, ExecError, Executor, ExitStatus, Network, OutputStream,
    Security, StepIo, StepSpec,
};
use kiln_snapshot::containerd::LeaseId;
use kiln_snapshot::Containerd;
use std::collections::HashMap;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const APPLETS: [&str; 8] = ["sh", "echo", "cat", "id", "sleep", "ls", "true", "hostname"];

/// A minimal rootfs: static busybox, a few applets, a passwd with `app`.
fn rootfs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).expect("chmod rootfs");
    std::fs::create_dir_all(root.join("bin")).expect("mkdir bin");
    std::fs::create_dir_all(root.join("etc")).expect("mkdir etc");
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("copy busybox");
    for a in APPLETS {
        symlink("busybox", root.join("bin").join(a)).expect("symlink applet");
    }
    std::fs::write(
        root.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1234:1234::/home/app:/bin/sh\n",
    )
    .expect("write passwd");
    std::fs::write(root.join("etc/group"), "root:x:0:\napp:x:1234:\n").expect("write group");
    dir
}

struct Fixture {
    // Dropped last: kills the private containerd.
    _harness: Harness,
    ctrd: Containerd,
    exec: ContainerdExecutor,
    lease: LeaseId,
    state: PathBuf,
}

async fn fixture(namespace: &str) -> Fixture {
    let harness = Harness::start().await.expect("start containerd");
    let ctrd = harness
        .client(namespace)
        .await
        .expect("connect to containerd");
    let lease = LeaseId::unique("test");
    ctrd.lease_create(
        &lease,
        "test",
        Some(Duration::from_secs(600)),
        HashMap::new(),
    )
    .await
    .expect("create lease");
    let state = harness.state_dir().join(format!("exec-{namespace}"));
    let exec = ContainerdExecutor::new(ctrd.clone(), state.clone());
    Fixture {
        _harness: harness,
        ctrd,
        exec,
        lease,
        state,
    }
}

fn step(f: &Fixture, root: &Path, id: &str, script: &str) -> StepSpec {
    StepSpec {
        id: kiln_integration::unique_id(id),
        rootfs: root.to_path_buf(),
        args: vec!["/bin/sh".into(), "-c".into(), script.into()],
        env: vec![],
        cwd: "/".into(),
        user: String::new(),
        hostname: String::new(),
        extra_hosts: Vec::new(),
        ulimits: Vec::new(),
        network: Network::Host,
        mounts: vec![],
        lease: f.lease.clone(),
        timeout: None,
        security: Security::Sandbox,
        pids_limit: Some(kiln_shim::DEFAULT_PIDS_LIMIT),
        resources: None,
    }
}

struct Output {
    stdout: String,
    stderr: String,
}

async fn run(f: &Fixture, s: StepSpec) -> (Result<ExitStatus, ExecError>, Output) {
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<(OutputStream, Vec<u8>)>(kiln_shim::OUTPUT_QUEUE);
    // Read while the step runs: the output channel is bounded.
    let shared = std::sync::Arc::new(std::sync::Mutex::new(Output {
        stdout: String::new(),
        stderr: String::new(),
    }));
    let sink = shared.clone();
    let collect = tokio::spawn(async move {
        while let Some((stream, chunk)) = rx.recv().await {
            let text = String::from_utf8_lossy(&chunk).into_owned();
            let mut out = sink.lock().expect("not poisoned");
            match stream {
                OutputStream::Stdout => out.stdout.push_str(&text),
                OutputStream::Stderr => out.stderr.push_str(&text),
            }
        }
    });
    let res = f
        .exec
        .run(
            s,
            StepIo {
                output: tx,
                stdin: None,
            },
            CancellationToken::new(),
        )
        .await;
    // Output written before the step ended is queued by now; a reader
    // left behind by the executor must not hang the test.
    let _ = tokio::time::timeout(Duration::from_secs(5), collect).await;
    let out = std::mem::replace(
        &mut *shared.lock().expect("not poisoned"),
        Output {
            stdout: String::new(),
            stderr: String::new(),
        },
    );
    (res, out)
}

/// Of the mount points runc created, only the standard mounts' are left
/// in the rootfs, as BuildKit leaves them (empty root-owned 0755
/// directories); those of the generated /etc files are removed.
fn assert_no_stubs(root: &Path) {
    for stub in ["etc/hosts", "etc/resolv.conf"] {
        assert!(
            std::fs::symlink_metadata(root.join(stub)).is_err(),
            "mount stub {stub} left in the rootfs"
        );
    }
    for kept in ["proc", "sys", "dev"] {
        let meta = std::fs::symlink_metadata(root.join(kept))
            .unwrap_or_else(|e| panic!("mount point {kept} is not in the rootfs: {e}"));
        assert!(meta.is_dir(), "{kept} is not a directory");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o755, "{kept}'s mode");
        assert_eq!((meta.uid(), meta.gid()), (0, 0), "{kept}'s owner");
        let entries = std::fs::read_dir(root.join(kept)).map_or(0, |d| d.count());
        assert_eq!(entries, 0, "{kept} holds entries in the rootfs");
    }
}

/// After [`Executor::settle`] (a successful step's task and container
/// are collected after `run` returns), nothing of the steps is left.
async fn assert_nothing_left(f: &Fixture) {
    f.exec.settle(&f.lease).await;
    assert_eq!(
        f.exec.list_containers().await.expect("list containers"),
        Vec::<String>::new()
    );
    assert_eq!(
        f.exec.list_tasks().await.expect("list tasks"),
        Vec::<String>::new()
    );
    let left: Vec<_> = std::fs::read_dir(&f.state)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "step dirs left in the state dir: {left:?}");
}

#[tokio::test]
async fn stdout_and_stderr_are_captured() {
    let f = fixture("exec-output").await;
    let root = rootfs();
    let (res, out) = run(
        &f,
        step(&f, root.path(), "kiln-out", "echo out; echo err >&2"),
    )
    .await;
    assert_eq!(res.expect("run").code, 0);
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");
    assert_no_stubs(root.path());
    assert_nothing_left(&f).await;
    assert_eq!(f.ctrd.namespace(), "exec-output");
}

/// Steps started together in a group with no shim yet all run: their
/// creates do not start the group's shim side by side (two starts race on
/// its socket and both fail). Several rounds, each after every task of
/// the last was deleted, so each round starts a fresh shim.
#[tokio::test]
async fn steps_started_together_all_run() {
    let f = fixture("exec-together").await;
    let roots: Vec<_> = (0..6).map(|_| rootfs()).collect();
    for round in 0..4 {
        let runs = roots.iter().enumerate().map(|(i, r)| {
            let s = step(
                &f,
                r.path(),
                &format!("kiln-together-{i}"),
                &format!("echo {round}-{i}"),
            );
            run(&f, s)
        });
        for (i, (res, out)) in futures_util::future::join_all(runs)
            .await
            .into_iter()
            .enumerate()
        {
            let status = res.unwrap_or_else(|e| panic!("round {round}, step {i}: {e}"));
            assert_eq!(status.code, 0, "round {round}, step {i}: {}", out.stderr);
        }
        f.exec.settle(&f.lease).await;
    }
    assert_nothing_left(&f).await;
}

#[tokio::test]
async fn large_output_arrives_complete() {
    let f = fixture("exec-large").await;
    let root = rootfs();
    let script = "i=0; while [ $i -lt 20000 ]; do echo line$i; i=$((i+1)); done";
    let (res, out) = run(&f, step(&f, root.path(), "kiln-large", script)).await;
    assert_eq!(res.expect("run").code, 0, "stderr: {}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 20000);
    assert_eq!(lines[19999], "line19999");
    assert_nothing_left(&f).await;
}

#[tokio::test]
async fn extra_mounts_are_applied_and_leave_no_stubs() {
    let f = fixture("exec-mounts").await;
    let root = rootfs();
    let cache = tempfile::tempdir().expect("tempdir");
    std::fs::write(cache.path().join("hello"), "from host\n").expect("write");
    let mut s = step(
        &f,
        root.path(),
        "kiln-mounts",
        "cat /cache/hello; echo x > /cache/new || echo ro; echo t > /scratch/t && cat /scratch/t",
    );
    s.mounts = vec![
        kiln_shim::ExtraMount::Bind {
            source: cache.path().to_path_buf(),
            dest: "/cache".into(),
            readonly: true,
        },
        kiln_shim::ExtraMount::Tmpfs {
            dest: "/scratch".into(),
            size: Some(1 << 20),
        },
    ];
    let (res, out) = run(&f, s).await;
    assert_eq!(res.expect("run").code, 0, "stderr: {}", out.stderr);
    assert_eq!(out.stdout, "from host\nro\nt\n");
    assert!(!cache.path().join("new").exists());
    assert_no_stubs(root.path());
    for stub in ["cache", "scratch"] {
        assert!(!root.path().join(stub).exists(), "mount stub {stub} left");
    }
    assert_nothing_left(&f).await;
}

#[tokio::test]
async fn non_zero_exit_is_data() {
    let f = fixture("exec-exit").await;
    let root = rootfs();
    let (res, _) = run(&f, step(&f, root.path(), "kiln-exit", "exit 3")).await;
    assert_eq!(res.expect("a non-zero exit is Ok").code, 3);
    assert_no_stubs(root.path());
    assert_nothing_left(&f).await;
}

#[tokio::test]
async fn user_is_resolved_and_cwd_created_for_it() {
    let f = fixture("exec-user").await;
    let root = rootfs();
    let mut s = step(
        &f,
        root.path(),
        "kiln-user",
        "id -u; id -g; pwd; echo $HOME",
    );
    s.user = "app".into();
    s.cwd = "/work/dir".into();
    let (res, out) = run(&f, s).await;
    assert_eq!(res.expect("run").code, 0, "stderr: {}", out.stderr);
    assert_eq!(out.stdout, "1234\n1234\n/work/dir\n/home/app\n");
    let meta = std::fs::metadata(root.path().join("work/dir")).expect("cwd kept");
    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 1234);

    let mut s = step(&f, root.path(), "kiln-nouser", "true");
    s.user = "nosuchuser".into();
    let (res, _) = run(&f, s).await;
    let err = res.expect_err("unknown user");
    assert!(matches!(err, ExecError::User { .. }), "{err}");
    assert!(err.to_string().contains("nosuchuser"), "{err}");
    assert_no_stubs(root.path());
    assert_nothing_left(&f).await;
}

#[tokio::test]
async fn network_none_has_only_loopback() {
    let f = fixture("exec-net").await;
    let root = rootfs();
    let mut s = step(
        &f,
        root.path(),
        "kiln-net",
        "cat /proc/net/dev; echo ---; cat /etc/hosts; hostname",
    );
    s.network = Network::None;
    let (res, out) = run(&f, s).await;
    assert_eq!(res.expect("run").code, 0, "stderr: {}", out.stderr);
    let (netdev, rest) = out.stdout.split_once("---\n").expect("marker");
    // Interface lines are `  name: counters…`; the two header lines have no colon.
    let ifaces: Vec<&str> = netdev
        .lines()
        .filter_map(|l| l.split_once(':').map(|(name, _)| name.trim()))
        .collect();
    assert_eq!(ifaces, ["lo"], "{netdev}");
    assert!(rest.ends_with("buildkitsandbox\n"), "{rest}");
    assert!(
        rest.contains("127.0.0.1\tlocalhost buildkitsandbox"),
        "{rest}"
    );
    assert_no_stubs(root.path());
    assert_nothing_left(&f).await;
}

#[tokio::test]
async fn cancel_kills_promptly_and_cleans_up() {
    let f = fixture("exec-cancel").await;
    let root = rootfs();
    let cancel = CancellationToken::new();
    let (tx, _rx) = tokio::sync::mpsc::channel(kiln_shim::OUTPUT_QUEUE);
    let started = Instant::now();
    let canceller = {
        let cancel = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            cancel.cancel();
        })
    };
    let res = f
        .exec
        .run(
            step(&f, root.path(), "kiln-cancel", "sleep 100"),
            StepIo {
                output: tx,
                stdin: None,
            },
            cancel,
        )
        .await;
    canceller.await.expect("canceller");
    let err = res.expect_err("cancelled");
    assert!(matches!(err, ExecError::Cancelled { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert_no_stubs(root.path());
    assert_nothing_left(&f).await;

    let mut s = step(&f, root.path(), "kiln-timeout", "sleep 100");
    s.timeout = Some(Duration::from_millis(500));
    let (res, _) = run(&f, s).await;
    let err = res.expect_err("timed out");
    assert!(matches!(err, ExecError::Timeout { .. }), "{err}");
    assert_no_stubs(root.path());
    assert_nothing_left(&f).await;
}
