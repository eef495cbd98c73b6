//! Issue 8's sandbox acceptance, checked from inside a step run by
//! `ContainerdExecutor` on a private containerd: a sandboxed step cannot
//! `unshare -U`, use the kernel keyring, open a raw socket or fork past its
//! pids limit, and reads masked paths as empty. Each refusal is paired with
//! a control that runs the same probe where it must work (an insecure step,
//! a higher limit, an allowed socket type), so a broken probe cannot pass
//! for a working sandbox. The rootfs is mounted the way the engine mounts
//! snapshots (`nosuid,nodev` on the host), and setuid still works inside.

use kiln_integration::Harness;
use kiln_shim::{
    CancellationToken, ContainerdExecutor, ExecError, Executor, ExitStatus, Network, OutputStream,
    Security, StepIo, StepSpec,
};
use kiln_snapshot::containerd::LeaseId;
use kiln_snapshot::mount::{Mount, MountGuard};
use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

struct Fixture {
    // Dropped last: kills the private containerd.
    _harness: Harness,
    exec: ContainerdExecutor,
    lease: LeaseId,
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
    let exec = ContainerdExecutor::new(ctrd, harness.state_dir().join(format!("exec-{namespace}")));
    Fixture {
        _harness: harness,
        exec,
        lease,
    }
}

/// A busybox rootfs holding the probe (`/bin/kiln-probe`, with the shared
/// libraries it links, at their host paths) and a setuid-root copy of it
/// (`/bin/kiln-probe-suid`).
fn rootfs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).expect("chmod rootfs");
    kiln_integration::busybox_rootfs(root).expect("busybox rootfs");
    let probe = Path::new(env!("CARGO_BIN_EXE_kiln-probe"));
    std::fs::copy(probe, root.join("bin/kiln-probe")).expect("copy probe");
    std::fs::copy(probe, root.join("bin/kiln-probe-suid")).expect("copy probe");
    std::fs::set_permissions(
        root.join("bin/kiln-probe-suid"),
        std::fs::Permissions::from_mode(0o4755),
    )
    .expect("setuid probe");
    let ldd = Command::new("ldd").arg(probe).output().expect("run ldd");
    let ldd = String::from_utf8_lossy(&ldd.stdout);
    let mut copied = 0;
    for lib in ldd
        .split_whitespace()
        .filter(|w| w.starts_with('/') && Path::new(w).exists())
    {
        let dest = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().expect("a library has a parent")).expect("mkdir");
        std::fs::copy(lib, &dest).expect("copy library");
        copied += 1;
    }
    assert!(copied > 0, "ldd found no libraries for the probe:\n{ldd}");
    dir
}

/// The rootfs mounted the way the engine mounts a snapshot on the host.
fn mount_like_engine(src: &Path, target: &Path) -> MountGuard {
    let m = Mount {
        mount_type: "bind".into(),
        source: src.display().to_string(),
        target: String::new(),
        options: vec!["rbind".into(), "rw".into()],
    };
    MountGuard::mount(&[m], target.to_path_buf()).expect("bind the rootfs")
}

fn step(f: &Fixture, root: &Path, id: &str, script: &str, security: Security) -> StepSpec {
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
        network: Network::None,
        mounts: vec![],
        lease: f.lease.clone(),
        timeout: Some(Duration::from_secs(120)),
        security,
        pids_limit: Some(kiln_shim::DEFAULT_PIDS_LIMIT),
        resources: None,
    }
}

struct Output {
    code: u32,
    stdout: String,
    stderr: String,
}

async fn run(f: &Fixture, s: StepSpec) -> Output {
    // The output queue is bounded: read it while the step runs.
    let (tx, mut rx) =
        tokio::sync::mpsc::channel::<(OutputStream, Vec<u8>)>(kiln_shim::OUTPUT_QUEUE);
    let reader = tokio::spawn(async move {
        let (mut stdout, mut stderr) = (String::new(), String::new());
        while let Some((stream, chunk)) = rx.recv().await {
            let text = String::from_utf8_lossy(&chunk);
            match stream {
                OutputStream::Stdout => stdout.push_str(&text),
                OutputStream::Stderr => stderr.push_str(&text),
            }
        }
        (stdout, stderr)
    });
    let res: Result<ExitStatus, ExecError> = f
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
    let (stdout, stderr) = reader.await.expect("the output reader");
    Output {
        code: res.expect("the step runs").code,
        stdout,
        stderr,
    }
}

/// The value of `Field:` in the step's `/proc/self/status` dump.
fn status_field<'a>(stdout: &'a str, field: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(field).map(str::trim))
        .unwrap_or_else(|| panic!("no {field} in\n{stdout}"))
}

const SHOW_STATUS: &str = "grep -E '^(Seccomp|CapEff):' /proc/self/status";

#[tokio::test]
async fn sandboxed_steps_cannot_unshare_use_keyrings_or_raw_sockets() {
    let f = fixture("sandbox-deny").await;
    let src = rootfs();
    let mnt = tempfile::tempdir().expect("tempdir");
    let guard = mount_like_engine(src.path(), &mnt.path().join("rootfs"));
    let script = format!(
        "{SHOW_STATUS}; \
         unshare -U true; echo unshare-rc=$?; \
         kiln-probe unshare-user; kiln-probe keyctl; kiln-probe add-key; \
         kiln-probe raw-socket; kiln-probe udp-socket; \
         echo interrupts=$(wc -c < /proc/interrupts); \
         mknod /tmp/null c 1 3 && echo x > /tmp/null && echo mknod-ok; \
         touch /tmp/f && chown 1000:1000 /tmp/f && echo chown-ok; \
         chroot / true && echo chroot-ok; \
         [ -c /dev/fuse ] && echo fuse-dev; echo end"
    );

    let sandboxed = run(
        &f,
        step(&f, guard.path(), "kiln-deny", &script, Security::Sandbox),
    )
    .await;
    let out = &sandboxed.stdout;
    assert_eq!(sandboxed.code, 0, "{out}\n{}", sandboxed.stderr);
    assert!(out.ends_with("end\n"), "{out}\n{}", sandboxed.stderr);
    // Seccomp filter mode: the refusals below are the profile's.
    assert_eq!(status_field(out, "Seccomp:"), "2", "{out}");
    // busybox's unshare fails on unshare(2) itself, with the profile's EPERM.
    assert!(out.contains("unshare-rc=1"), "{out}");
    assert!(
        sandboxed.stderr.contains("Operation not permitted"),
        "{}",
        sandboxed.stderr
    );
    for probe in ["unshare-user", "keyctl", "add-key"] {
        assert!(
            out.contains(&format!("probe {probe}: errno 1 ")),
            "{probe}: {out}"
        );
    }
    // No CAP_NET_RAW (bit 13): the raw socket is refused for want of it,
    // while an ordinary socket opens.
    let cap_eff = u64::from_str_radix(status_field(out, "CapEff:"), 16).expect("CapEff is hex");
    assert_eq!(cap_eff & (1 << 13), 0, "CAP_NET_RAW granted: {cap_eff:x}");
    assert!(out.contains("probe raw-socket: errno 1 "), "{out}");
    assert!(out.contains("probe udp-socket: ok"), "{out}");
    assert!(
        out.contains("interrupts=0\n"),
        "/proc/interrupts not masked: {out}"
    );
    assert!(!out.contains("fuse-dev"), "{out}");
    // What builds do still works.
    for ok in ["mknod-ok", "chown-ok", "chroot-ok"] {
        assert!(out.contains(ok), "{ok}: {out}\n{}", sandboxed.stderr);
    }

    // The controls: the same probes work in an insecure step.
    let insecure = run(
        &f,
        step(&f, guard.path(), "kiln-allow", &script, Security::Insecure),
    )
    .await;
    let out = &insecure.stdout;
    assert_eq!(insecure.code, 0, "{out}\n{}", insecure.stderr);
    assert_eq!(status_field(out, "Seccomp:"), "0", "{out}");
    assert!(out.contains("unshare-rc=0"), "{out}\n{}", insecure.stderr);
    for probe in [
        "unshare-user",
        "keyctl",
        "add-key",
        "raw-socket",
        "udp-socket",
    ] {
        assert!(
            out.contains(&format!("probe {probe}: ok")),
            "{probe}: {out}"
        );
    }
    assert!(out.contains("fuse-dev"), "no /dev/fuse: {out}");
    assert!(
        !out.contains("interrupts=0\n"),
        "/proc/interrupts masked in an insecure step: {out}"
    );
    guard.unmount().expect("unmount");
}

#[tokio::test]
async fn a_step_cannot_fork_past_its_pids_limit() {
    let f = fixture("sandbox-pids").await;
    let root = rootfs();
    // 40 background sleeps; the shell is the step's init, so they die with it.
    let script = "cat /sys/fs/cgroup/pids.max /sys/fs/cgroup/pids/pids.max 2>/dev/null; \
                  i=0; while [ $i -lt 40 ]; do sleep 1000 & i=$((i+1)); done; echo spawned=$i";

    let mut s = step(&f, root.path(), "kiln-pids", script, Security::Sandbox);
    s.pids_limit = Some(16);
    let limited = run(&f, s).await;
    assert_eq!(
        limited.stdout.lines().next(),
        Some("16"),
        "{}",
        limited.stdout
    );
    assert_ne!(limited.code, 0, "{}", limited.stdout);
    assert!(!limited.stdout.contains("spawned=40"), "{}", limited.stdout);
    assert!(
        limited.stderr.contains("can't fork")
            && limited.stderr.contains("Resource temporarily unavailable"),
        "{}",
        limited.stderr
    );

    // The control: the same script under a limit it stays below.
    let mut s = step(&f, root.path(), "kiln-pids-ok", script, Security::Sandbox);
    s.pids_limit = Some(100);
    let roomy = run(&f, s).await;
    assert_eq!(roomy.code, 0, "{}\n{}", roomy.stdout, roomy.stderr);
    assert_eq!(roomy.stdout.lines().next(), Some("100"), "{}", roomy.stdout);
    assert!(roomy.stdout.contains("spawned=40"), "{}", roomy.stdout);
}

/// kiln's host mount of a rootfs is nosuid,nodev, yet a setuid binary in
/// it still runs setuid inside the step (as in Docker and BuildKit).
#[tokio::test]
async fn host_mount_is_nosuid_but_setuid_works_in_the_step() {
    let f = fixture("sandbox-suid").await;
    let src = rootfs();
    let mnt = tempfile::tempdir().expect("tempdir");
    let guard = mount_like_engine(src.path(), &mnt.path().join("rootfs"));
    let canon = std::fs::canonicalize(guard.path()).expect("canonical");
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let host_opts: Vec<&str> = info
        .lines()
        .filter(|l| l.split(' ').nth(4) == canon.to_str())
        .filter_map(|l| l.split(' ').nth(5))
        .collect();
    assert!(
        host_opts
            .last()
            .is_some_and(|o| o.contains("nosuid") && o.contains("nodev")),
        "{host_opts:?}"
    );

    let mut s = step(
        &f,
        guard.path(),
        "kiln-suid",
        "kiln-probe euid; kiln-probe-suid euid",
        Security::Sandbox,
    );
    s.user = "app".into();
    let out = run(&f, s).await;
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        out.stdout, "probe euid: 1000\nprobe euid: 0\n",
        "{}",
        out.stderr
    );
    // Nothing of the step's rootfs bind is left mounted.
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !info.contains("/exec-sandbox-suid/"),
        "a rootfs bind is still mounted:\n{info}"
    );
    guard.unmount().expect("unmount");
}

/// Through `kiln build`: a RUN step gets the sandbox and the default pids
/// limit from the engine, and `unshare -U` fails naming the line.
#[tokio::test]
async fn dockerfile_run_steps_are_sandboxed() {
    let ns = "sandbox-build";
    let h = Harness::with_busybox(ns).await;
    let facts = "FROM busybox\n\
                 RUN echo seccomp=$(grep '^Seccomp:' /proc/self/status | tr -dc 0-9) && \
                 echo pids=$(cat /sys/fs/cgroup/pids.max /sys/fs/cgroup/pids/pids.max 2>/dev/null)\n";
    let ctx = h.context("facts", &[("Dockerfile", facts)]);
    let out = h
        .build(ns, &["-t", "facts", ctx.to_str().expect("utf8")])
        .ok();
    assert!(
        kiln_integration::step_printed(&out.stderr, "seccomp=2"),
        "{}",
        out.stderr
    );
    assert!(
        kiln_integration::step_printed(
            &out.stderr,
            &format!("pids={}", kiln_shim::DEFAULT_PIDS_LIMIT)
        ),
        "{}",
        out.stderr
    );

    // Without --ulimit a step keeps the runtime's open files limit, as in
    // BuildKit (which drops containerd's default 1024): the hard limit is
    // containerd's own, through its shim and runc.
    let hard = std::fs::read_to_string(format!(
        "/proc/{}/limits",
        h.containerd_pid().expect("the harness's containerd")
    ))
    .expect("limits")
    .lines()
    .find(|l| l.starts_with("Max open files"))
    .and_then(|l| l.split_whitespace().nth(4).map(str::to_string))
    .expect("open files hard limit");
    let ctx = h.context(
        "nofile",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo nofile-hard=$(ulimit -Hn)\n",
        )],
    );
    let out = h.build(ns, &[ctx.to_str().expect("utf8")]).ok();
    assert!(
        kiln_integration::step_printed(&out.stderr, &format!("nofile-hard={hard}")),
        "{hard}: {}",
        out.stderr
    );

    let ctx = h.context(
        "unshare",
        &[("Dockerfile", "FROM busybox\nRUN unshare -U true\n")],
    );
    let out = h.build(ns, &["-t", "unshare", ctx.to_str().expect("utf8")]);
    assert!(!out.success, "{}", out.stderr);
    assert!(
        out.stderr.contains("Operation not permitted"),
        "{}",
        out.stderr
    );
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(last.contains("Dockerfile:2"), "{}", out.stderr);

    // BuildKit's insecure mode is an entitlement: refused before any step
    // runs unless asked for, and then without seccomp.
    let insecure = "FROM busybox\n\
                    RUN --security=insecure echo insecure-seccomp=$(grep '^Seccomp:' /proc/self/status | tr -dc 0-9)\n";
    let ctx = h.context("insecure", &[("Dockerfile", insecure)]);
    let out = h.build(ns, &["-t", "insecure", ctx.to_str().expect("utf8")]);
    assert!(!out.success, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("Dockerfile:2: security.insecure is not allowed"),
        "{}",
        out.stderr
    );
    assert!(
        !kiln_integration::step_printed(&out.stderr, "insecure-seccomp="),
        "the step ran: {}",
        out.stderr
    );
    let out = h
        .build(
            ns,
            &[
                "--allow",
                "security.insecure",
                "-t",
                "insecure",
                ctx.to_str().expect("utf8"),
            ],
        )
        .ok();
    assert!(
        kiln_integration::step_printed(&out.stderr, "insecure-seccomp=0"),
        "{}",
        out.stderr
    );
    assert_eq!(h.leftovers(ns).expect("ctr"), Vec::<String>::new());
}
