//! The private-containerd test harness for kiln's end-to-end tests.
//!
//! [`Harness::start`] runs a containerd of its own (temporary root, state
//! and socket, CRI disabled), waits until it answers, and kills it on drop,
//! so tests never touch the machine's containerd. `KILN_TEST_CONTAINERD`
//! may point at a running containerd socket instead. Each test uses its own
//! namespace so tests can run in parallel.
//!
//! [`registry`] runs a private `docker-registry` for the registry tests.
//!
//! Nothing here ships in a binary.

pub mod cases;
pub mod clientsession;
pub mod faultproxy;
pub mod gitdaemon;
pub mod httpserver;
pub mod kubeapi;
pub mod llbdef;
pub mod netns;
pub mod pki;
pub mod registry;
pub mod ssh;
pub mod token;

use kiln_snapshot::containerd::ContainerdConfig;
use kiln_snapshot::Containerd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Errors of the harness, as text: tests fail with them.
pub type HarnessResult<T> = Result<T, String>;

/// A private containerd for one test.
#[derive(Debug)]
pub struct Harness {
    dir: tempfile::TempDir,
    socket: PathBuf,
    child: Option<Child>,
}

impl Harness {
    /// Starts containerd (or uses `KILN_TEST_CONTAINERD`). Fails, never
    /// skips, when containerd cannot run: CI has root and containerd.
    pub async fn start() -> HarnessResult<Harness> {
        if let Ok(sock) = std::env::var("KILN_TEST_CONTAINERD") {
            return Ok(Harness {
                dir: Self::tempdir()?,
                socket: PathBuf::from(sock),
                child: None,
            });
        }
        Self::start_private().await
    }

    fn tempdir() -> HarnessResult<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix("kiln-it-")
            .tempdir_in("/tmp")
            .map_err(|e| format!("tempdir: {e}"))
    }

    /// Starts a containerd of its own (the first `containerd` on `PATH`)
    /// even when `KILN_TEST_CONTAINERD` names one: for tests that need
    /// containerd, and so the steps' host network, in a network namespace
    /// the test made.
    pub async fn start_private() -> HarnessResult<Harness> {
        let dir = Self::tempdir()?;
        let root = dir.path().join("root");
        let state = dir.path().join("state");
        let socket = dir.path().join("containerd.sock");
        let config = dir.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{}\"\nstate = \"{}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{}\"\n[ttrpc]\n  address = \"{}.ttrpc\"\n[debug]\n  level = \"warn\"\n",
                root.display(),
                state.display(),
                socket.display(),
                socket.display()
            ),
        )
        .map_err(|e| format!("write {}: {e}", config.display()))?;
        let child = spawn_containerd(dir.path())?;
        let mut h = Harness {
            dir,
            socket,
            child: Some(child),
        };
        h.wait_answering().await?;
        Ok(h)
    }

    /// Waits until the private containerd answers Version (30 s at most).
    async fn wait_answering(&mut self) -> HarnessResult<()> {
        let h = self;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if h.socket.exists() {
                if let Ok(c) = Containerd::connect(h.config("default")).await {
                    if c.version().await.is_ok() {
                        break;
                    }
                }
            }
            if let Some(ch) = h.child.as_mut() {
                if let Ok(Some(status)) = ch.try_wait() {
                    return Err(format!("containerd exited with {status}: {}", h.log_tail()));
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "containerd did not answer in 30s: {}",
                    h.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// The end of containerd's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let s = std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// The private containerd's process id (`None` when it is not the
    /// harness's own).
    pub fn containerd_pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The containerd socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A temporary directory that lives as long as the harness.
    pub fn state_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The connection settings for `namespace` (overlayfs).
    pub fn config(&self, namespace: &str) -> ContainerdConfig {
        ContainerdConfig {
            address: self.socket.clone(),
            namespace: namespace.to_string(),
            snapshotter: "overlayfs".to_string(),
        }
    }

    /// A connection to `namespace`.
    pub async fn client(&self, namespace: &str) -> HarnessResult<Containerd> {
        Containerd::connect(self.config(namespace))
            .await
            .map_err(|e| e.to_string())
    }

    /// Runs `ctr` against this containerd and returns stdout; fails on a
    /// non-zero exit with stderr in the message.
    pub fn ctr(&self, namespace: &str, args: &[&str]) -> HarnessResult<String> {
        let out = Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(namespace)
            .args(args)
            .output()
            .map_err(|e| format!("ctr: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ctr {:?} failed: {}{}",
                args,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Ask containerd to stop cleanly first.
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
            // Shims and their containers outlive containerd. runc keeps
            // its state under one root for every containerd on the host,
            // so a container left there would make a later run's create
            // of the same ID fail with "already exists".
            delete_runc_containers(&self.dir.path().join("state"));
            kill_shims(self.dir.path());
            kiln_engine::sweep::unmount_below(self.dir.path());
        }
    }
}

/// Starts containerd with the config written in `dir` (log appended to
/// `dir/containerd.log`).
fn spawn_containerd(dir: &Path) -> HarnessResult<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("containerd.log"))
        .map_err(|e| format!("containerd.log: {e}"))?;
    Command::new("containerd")
        .arg("--config")
        .arg(dir.join("config.toml"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start containerd (is it installed? run .ci/run): {e}"))
}

impl Harness {
    /// Restarts the private containerd as an operator would: SIGTERM, wait
    /// for it to exit, start it again on the same root and socket, and wait
    /// until it answers. Shims (and the steps they run) survive, as they do
    /// in production.
    pub async fn restart_containerd(&mut self) -> HarnessResult<()> {
        let this = self;
        let mut child = this
            .child
            .take()
            .ok_or("containerd is not the harness's own (KILN_TEST_CONTAINERD)")?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        this.child = Some(spawn_containerd(this.dir.path())?);
        this.wait_answering().await
    }
}

/// `prefix` with a suffix unique to this run: for task IDs, which runc
/// keeps under one root for every containerd on the host, so a fixed ID
/// left by a crashed earlier run would fail this run's create.
pub fn unique_id(prefix: &str) -> String {
    let lease = kiln_snapshot::containerd::LeaseId::unique("id");
    let random = lease.as_str().rsplit('/').next().unwrap_or_default();
    format!("{prefix}-{random}")
}

/// runc's default state root, shared by every containerd on the host (the
/// runc v2 shim's default when a task's options name no root).
const RUNC_ROOT: &str = "/run/containerd/runc";

/// Force-deletes, with runc, every container that still has a bundle
/// under this containerd's `state` dir: kills its processes and removes its
/// runc state.
fn delete_runc_containers(state: &Path) {
    let Ok(runtimes) = std::fs::read_dir(state) else {
        return;
    };
    for runtime in runtimes.flatten() {
        if !runtime
            .file_name()
            .to_string_lossy()
            .starts_with("io.containerd.runtime.v2")
        {
            continue;
        }
        for ns in std::fs::read_dir(runtime.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            for bundle in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                let root = Path::new(RUNC_ROOT).join(ns.file_name());
                if !root.join(bundle.file_name()).exists() {
                    continue;
                }
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&root)
                    .args(["delete", "--force"])
                    .arg(bundle.file_name())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

/// Kills containerd-shim processes whose command line mentions `dir`.
fn kill_shims(dir: &Path) {
    let needle = dir.display().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmd.contains("containerd-shim") && cmd.contains(&needle) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// Writes a busybox root filesystem (Debian's static busybox, applet
/// symlinks, passwd and group with a non-root user) into `dir`.
pub fn busybox_rootfs(dir: &Path) -> HarnessResult<()> {
    let io = |what: &str, e: std::io::Error| format!("{what}: {e}");
    for d in ["bin", "etc", "tmp", "root", "home/app"] {
        std::fs::create_dir_all(dir.join(d)).map_err(|e| io(d, e))?;
    }
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777))
        .map_err(|e| io("chmod tmp", e))?;
    std::fs::copy("/bin/busybox", dir.join("bin/busybox"))
        .map_err(|e| io("copy /bin/busybox (install busybox-static)", e))?;
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .map_err(|e| io("busybox --list", e))?;
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if applet != "busybox" && !applet.is_empty() {
            let link = dir.join("bin").join(applet);
            if !link.exists() {
                std::os::unix::fs::symlink("busybox", &link).map_err(|e| io(applet, e))?;
            }
        }
    }
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )
    .map_err(|e| io("passwd", e))?;
    std::fs::write(
        dir.join("etc/group"),
        "root:x:0:\napp:x:1000:\nnogroup:x:65534:\n",
    )
    .map_err(|e| io("group", e))?;
    std::fs::write(dir.join("etc/base-release"), "busybox test base\n")
        .map_err(|e| io("base-release", e))?;
    Ok(())
}

/// Where `.ci/install` puts Debian's arm64 busybox-static
/// (`busybox-static:arm64`), for images whose steps run under QEMU user
/// emulation on an amd64 machine.
pub const ARM64_BUSYBOX: &str = "/usr/local/lib/kiln-test/arm64/busybox";

impl Harness {
    /// Imports a busybox image for the architecture `arch` named `name`
    /// into `namespace`: the host's busybox for the host's architecture,
    /// Debian's arm64 one ([`ARM64_BUSYBOX`]) for arm64 on another host;
    /// its config names the platform. Returns its manifest's digest.
    pub async fn import_busybox_for(
        &self,
        namespace: &str,
        name: &str,
        arch: &str,
    ) -> HarnessResult<String> {
        let rootfs = self.state_dir().join(format!("busybox-{namespace}-{arch}"));
        busybox_rootfs(&rootfs)?;
        if arch != kiln_engine::oci::worker_platform().architecture {
            if arch != "arm64" {
                return Err(format!("no busybox for {arch}: only arm64's is installed"));
            }
            std::fs::copy(ARM64_BUSYBOX, rootfs.join("bin/busybox")).map_err(|e| {
                format!("copy {ARM64_BUSYBOX} (.ci/install unpacks busybox-static:arm64): {e}")
            })?;
        }
        let platform = kiln_solver::Platform::new("linux", arch, "");
        self.import_busybox_rootfs(namespace, name, &rootfs, Some(platform))
            .await
    }

    /// Imports a busybox image named `name` into `namespace` with kiln's
    /// own importer (not unpacked, so builds exercise the unpacker).
    pub async fn import_busybox(&self, namespace: &str, name: &str) -> HarnessResult<()> {
        let rootfs = self.state_dir().join(format!("busybox-{namespace}"));
        busybox_rootfs(&rootfs)?;
        self.import_busybox_rootfs(namespace, name, &rootfs, None)
            .await?;
        Ok(())
    }

    /// Imports the busybox root filesystem `rootfs` as image `name` (for
    /// `platform`, else the worker's); returns its manifest's digest.
    async fn import_busybox_rootfs(
        &self,
        namespace: &str,
        name: &str,
        rootfs: &Path,
        platform: Option<kiln_solver::Platform>,
    ) -> HarnessResult<String> {
        let cfg = kiln_solver::ImageConfig {
            env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
            cmd: Some(vec!["sh".into()]),
            platform,
            ..Default::default()
        };
        let ctrd = self.client(namespace).await?;
        kiln_engine::import::import_rootfs(
            &kiln_engine::Services::containerd(&ctrd),
            rootfs,
            name,
            &cfg,
        )
        .await
        .map_err(|e| e.to_string())
    }

    /// A `kiln` command pointed at this containerd and `namespace`. Its
    /// steps use the host's network (`KILN_NETWORK_MODE=host`): a CNI
    /// bridge would change the host's network, so only tests that run in a
    /// network namespace of their own (`tests/e2e/network.rs`) use one.
    pub fn kiln_command(&self, namespace: &str) -> HarnessResult<Command> {
        let mut cmd = Command::new(kiln_binary()?);
        cmd.env("KILN_NETWORK_MODE", "host");
        // The builder store is the harness's own, so a builder made
        // current on this machine never redirects a test's build.
        cmd.env("KILN_CONFIG_DIR", self.state_dir().join("kiln-config"))
            .env_remove("KILN_BUILDER");
        cmd.arg("--containerd-address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(namespace)
            .arg("--root")
            .arg(self.state_dir().join("kiln-root"));
        Ok(cmd)
    }

    /// Runs the `kiln` binary against this containerd in `namespace`.
    pub fn kiln(&self, namespace: &str, args: &[&str]) -> HarnessResult<KilnOutput> {
        let out = self
            .kiln_command(namespace)?
            .args(args)
            .output()
            .map_err(|e| format!("run kiln: {e}"))?;
        Ok(out.into())
    }

    /// What `ctr` lists of kiln's leftovers in `namespace`: containers,
    /// tasks, active snapshots and kiln leases, except what kiln keeps on
    /// purpose: cache record leases (`kiln/cache/...`, which also hold the
    /// shared cache-mount snapshots `kiln-cachemount-<hash>`) and build
    /// records' results (`kiln/history/...`). A build lease
    /// counts whether or not it carries an expiry, so do a build's
    /// keepalive leases (`kiln/keepalive/...`), and so does a private
    /// cache-mount snapshot, which only lives as long as its build. See
    /// [`state_leftovers`] for what is left outside containerd.
    pub fn leftovers(&self, namespace: &str) -> HarnessResult<Vec<String>> {
        let mut out = Vec::new();
        for line in self.ctr(namespace, &["containers", "ls", "-q"])?.lines() {
            out.push(format!("container {line}"));
        }
        for line in self.ctr(namespace, &["tasks", "ls"])?.lines().skip(1) {
            out.push(format!("task {line}"));
        }
        for line in self.ctr(namespace, &["snapshots", "ls"])?.lines().skip(1) {
            let key = line.split_whitespace().next().unwrap_or_default();
            if line.split_whitespace().any(|w| w == "Active") && !is_kept_snapshot(key) {
                out.push(format!("active snapshot {line}"));
            }
        }
        for line in self.ctr(namespace, &["leases", "ls"])?.lines().skip(1) {
            let id = line.split_whitespace().next().unwrap_or_default();
            if id.starts_with("kiln/") && !is_kept_lease(id) {
                out.push(format!("lease {line}"));
            }
        }
        Ok(out)
    }
}

/// Active snapshots kiln keeps between builds: shared cache mounts (a
/// private one, `kiln-cachemount-private-...`, belongs to one build).
fn is_kept_snapshot(key: &str) -> bool {
    key.starts_with("kiln-cachemount-") && !key.starts_with("kiln-cachemount-private-")
}

/// kiln leases that may outlive a build: cache records, kilnd's build
/// records' results (`kiln/history/...`, kept as long as the record), and
/// the empty lease a GC run creates and deletes at once (it holds nothing,
/// and a daemon may be collecting while a test looks).
fn is_kept_lease(id: &str) -> bool {
    id.starts_with("kiln/cache/") || id.starts_with("kiln/gc/") || id.starts_with("kiln/history/")
}

/// Whether `line` is the error `kiln` ends a failed run with: `error: …`,
/// or buildx's `ERROR: failed to build: failed to solve: …` when the build
/// itself failed.
pub fn is_error_line(line: &str) -> bool {
    line.starts_with("error: ") || line.starts_with("ERROR: failed to build: failed to solve: ")
}

/// How many build steps the plain progress in `stderr` shows as
/// `CACHED`, `FROM` steps left out: a base image the store already had
/// shows `CACHED` too, as in BuildKit, but no step of the Dockerfile was
/// saved by it.
pub fn cached_steps(stderr: &str) -> usize {
    let mut names: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    let mut cached = 0;
    for line in stderr.lines() {
        let Some((id, rest)) = line.split_once(' ') else {
            continue;
        };
        if !id.starts_with('#') {
            continue;
        }
        if rest == "CACHED" {
            if !names.get(id).is_some_and(|n| n.contains("] FROM ")) {
                cached += 1;
            }
        } else {
            names.entry(id).or_insert(rest);
        }
    }
    cached
}

/// Whether a step printed `marker` as a whole output line (`#N SECS
/// marker` in the plain progress, `#N marker` without the time), as
/// opposed to the marker appearing in a step's name.
pub fn step_printed(stderr: &str, marker: &str) -> bool {
    stderr.lines().any(|l| {
        l.split_once(' ').is_some_and(|(n, rest)| {
            let timed = rest
                .split_once(' ')
                .filter(|(t, _)| !t.is_empty() && t.chars().all(|c| c.is_ascii_digit() || c == '.'))
                .map(|(_, r)| r);
            n.starts_with('#') && (rest == marker || timed == Some(marker))
        })
    })
}

/// A `kiln` run started in the background, stopped at a given point.
#[derive(Debug)]
pub struct RunningKiln {
    pub child: Child,
    /// The rest of its stderr, line by line.
    pub rest: std::io::Lines<std::io::BufReader<std::process::ChildStderr>>,
}

impl Harness {
    /// Starts `kiln ARGS` in `namespace` and returns once a step printed
    /// `marker` as an output line; fails the test if it never does.
    pub fn kiln_until(&self, namespace: &str, args: &[&str], marker: &str) -> RunningKiln {
        use std::io::BufRead;
        let mut child = self
            .kiln_command(namespace)
            .expect("kiln")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kiln starts");
        let stderr = child.stderr.take().expect("piped");
        let mut rest = std::io::BufReader::new(stderr).lines();
        let mut seen = Vec::new();
        for line in rest.by_ref() {
            let line = line.expect("utf8 output");
            if step_printed(&line, marker) {
                return RunningKiln { child, rest };
            }
            seen.push(line);
        }
        let _ = child.kill();
        let status = child.wait();
        panic!(
            "kiln never printed {marker:?} ({status:?}):\n{}",
            seen.join("\n")
        );
    }
}

/// The result of one `kiln` run.
#[derive(Debug)]
pub struct KilnOutput {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// The `kiln` CLI next to the test executable: `kiln-under-test`, which
/// cargo builds for this package's tests.
pub fn kiln_binary() -> HarnessResult<PathBuf> {
    test_binary("kiln-under-test")
}

/// `kilnd` next to the test executable (`kilnd-under-test`).
pub fn kilnd_binary() -> HarnessResult<PathBuf> {
    test_binary("kilnd-under-test")
}

fn test_binary(name: &str) -> HarnessResult<PathBuf> {
    let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let bin = dir.join(name);
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not found: run the tests with `cargo test --workspace`",
            bin.display()
        ))
    }
}

impl Harness {
    /// Starts a private containerd and imports busybox into `namespace`
    /// as `docker.io/library/busybox:latest`; panics (fails the test) if
    /// either cannot be done.
    pub async fn with_busybox(namespace: &str) -> Harness {
        let h = Harness::start().await.expect("private containerd starts");
        h.import_busybox(namespace, "docker.io/library/busybox:latest")
            .await
            .expect("busybox imports");
        h
    }

    /// [`Harness::with_busybox`] on [`Harness::start_private`].
    pub async fn with_busybox_private(namespace: &str) -> Harness {
        let h = Harness::start_private()
            .await
            .expect("private containerd starts");
        h.import_busybox(namespace, "docker.io/library/busybox:latest")
            .await
            .expect("busybox imports");
        h
    }

    /// A build context directory `ctx-<name>` holding `files`.
    pub fn context(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let dir = self.state_dir().join(format!("ctx-{name}"));
        for (path, body) in files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().expect("files have a parent")).expect("mkdir");
            std::fs::write(&p, body).expect("write context file");
        }
        dir
    }

    /// `kiln build --progress plain ARGS` in `namespace`.
    pub fn build(&self, namespace: &str, args: &[&str]) -> KilnOutput {
        let mut all = vec!["build", "--progress", "plain"];
        all.extend_from_slice(args);
        self.kiln(namespace, &all).expect("kiln runs")
    }

    /// The manifest digest that image `name` points at.
    pub fn image_digest(&self, namespace: &str, name: &str) -> String {
        let images = self
            .ctr(namespace, &["images", "ls"])
            .expect("ctr images ls");
        let line = images
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("{name} not in\n{images}"));
        line.split_whitespace()
            .nth(2)
            .expect("digest column")
            .to_string()
    }

    /// The manifest JSON that image `name` points at.
    pub fn manifest(&self, namespace: &str, name: &str) -> serde_json::Value {
        let digest = self.image_digest(namespace, name);
        serde_json::from_str(
            &self
                .ctr(namespace, &["content", "get", &digest])
                .expect("manifest"),
        )
        .expect("manifest JSON")
    }
}

impl Harness {
    /// `ctr run --rm IMAGE ID CMD...` and its stdout. ctr 1.6 now and then
    /// exits before it has copied a short-lived task's output (the task ran
    /// and exited 0, stdout came back empty); an empty answer is retried
    /// with a fresh container ID, up to three times, before it is returned.
    pub fn run_image(&self, namespace: &str, image: &str, id: &str, cmd: &[&str]) -> String {
        self.try_run_image(namespace, image, id, cmd)
            .expect("ctr run succeeds")
    }

    /// [`Harness::run_image`] for a command whose whole output is known.
    /// The same ctr race can also drop only the *last* chunk of a
    /// short-lived task's output (seen once in CI: `two\n` for
    /// `cat /base; wc -c < /app/big`, ctr exiting 0), so an answer that
    /// differs from `expected` is retried with a fresh container ID, up to
    /// three times. The image does not change between tries, so a right
    /// answer on any try is the image's answer; the last answer is
    /// returned for the caller to assert on, and a wrong image fails all
    /// three.
    pub fn run_image_expecting(
        &self,
        namespace: &str,
        image: &str,
        id: &str,
        cmd: &[&str],
        expected: &str,
    ) -> String {
        self.try_run_image_expecting(namespace, image, id, cmd, expected)
            .expect("ctr run succeeds")
    }

    /// [`Harness::run_image_expecting`], with a failed `ctr run` as an error.
    pub fn try_run_image_expecting(
        &self,
        namespace: &str,
        image: &str,
        id: &str,
        cmd: &[&str],
        expected: &str,
    ) -> HarnessResult<String> {
        let mut out = String::new();
        for attempt in 0..3 {
            out = self.try_run_image(namespace, image, &format!("{id}-x{attempt}"), cmd)?;
            if out == expected {
                break;
            }
            eprintln!("ctr run {image} (try {attempt}) gave {out:?}, not {expected:?}");
        }
        Ok(out)
    }

    /// [`Harness::run_image`], with a failed `ctr run` as an error.
    pub fn try_run_image(
        &self,
        namespace: &str,
        image: &str,
        id: &str,
        cmd: &[&str],
    ) -> HarnessResult<String> {
        let mut out = String::new();
        for attempt in 0..3 {
            let cid = format!("{id}-{attempt}");
            let mut args = vec!["run", "--rm", image, cid.as_str()];
            args.extend_from_slice(cmd);
            out = self.ctr(namespace, &args)?;
            if !out.is_empty() {
                break;
            }
        }
        Ok(out)
    }
}

impl From<std::process::Output> for KilnOutput {
    fn from(out: std::process::Output) -> KilnOutput {
        KilnOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

impl KilnOutput {
    /// The digests the plain progress shows under `exporting to image`
    /// (`#N exporting manifest sha256:… done`), in order; kiln, like
    /// buildx, prints nothing about them on stdout.
    pub fn exported_manifests(&self) -> Vec<String> {
        self.stderr
            .lines()
            .filter_map(|l| l.split_once(" exporting manifest ").map(|(_, r)| r))
            .filter_map(|r| r.split_whitespace().next())
            .filter(|d| d.starts_with("sha256:"))
            .map(str::to_string)
            .collect()
    }

    /// Fails the test unless the run succeeded.
    pub fn ok(self) -> KilnOutput {
        assert!(
            self.success,
            "kiln failed:\n{}\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// A kilnd started for a test on a private containerd; SIGTERM on drop.
#[derive(Debug)]
pub struct Kilnd {
    child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
}

impl Kilnd {
    /// `unix://<socket>`, for `--addr`.
    pub fn addr(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// The daemon's process id while it runs (for /proc sampling).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends SIGTERM and waits (up to 30 s) for the exit status.
    pub fn terminate(&mut self) -> HarnessResult<std::process::ExitStatus> {
        let Some(mut child) = self.child.take() else {
            return Err("kilnd already stopped".into());
        };
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return Ok(s);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err("kilnd did not exit within 30 s of SIGTERM".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Kilnd {
    /// Kills kilnd with SIGKILL (a crash) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Kilnd {
    fn drop(&mut self) {
        let _ = self.terminate();
    }
}

impl Harness {
    /// Starts kilnd with extra flags (e.g. a TLS `--addr tcp://...`) besides
    /// its unix socket, and waits until it listens on every address.
    pub async fn start_kilnd_with(&self, namespace: &str, extra: &[&str]) -> HarnessResult<Kilnd> {
        self.spawn_kilnd(namespace, namespace, extra, &[]).await
    }

    /// Starts kilnd with these environment variables set (e.g. a `HOME`
    /// and `DOCKER_CONFIG` without credentials).
    pub async fn start_kilnd_env(
        &self,
        namespace: &str,
        env: &[(&str, &Path)],
    ) -> HarnessResult<Kilnd> {
        self.spawn_kilnd(namespace, namespace, &[], env).await
    }

    /// Starts kilnd on this containerd in `namespace` and waits until its
    /// socket answers.
    pub async fn start_kilnd(&self, namespace: &str) -> HarnessResult<Kilnd> {
        self.spawn_kilnd(namespace, namespace, &[], &[]).await
    }

    /// Starts another kilnd on `namespace`, with its own socket, log and
    /// root named after `name` (several daemons sharing one containerd).
    pub async fn start_kilnd_named(&self, namespace: &str, name: &str) -> HarnessResult<Kilnd> {
        self.spawn_kilnd(namespace, name, &[], &[]).await
    }

    async fn spawn_kilnd(
        &self,
        namespace: &str,
        name: &str,
        extra: &[&str],
        env: &[(&str, &Path)],
    ) -> HarnessResult<Kilnd> {
        let socket = self.state_dir().join(format!("kilnd-{name}.sock"));
        let log = self.state_dir().join(format!("kilnd-{name}.log"));
        let logf = std::fs::File::create(&log).map_err(|e| format!("kilnd log: {e}"))?;
        let child = Command::new(kilnd_binary()?)
            .arg("--addr")
            .arg(format!("unix://{}", socket.display()))
            .arg("--root")
            .arg(self.state_dir().join(format!("kilnd-root-{name}")))
            .arg("--containerd-address")
            .arg(&self.socket)
            .arg("--namespace")
            .arg(namespace)
            // The host's network unless the test chooses (see kiln_command).
            .args(
                (!extra.contains(&"--network-mode"))
                    .then_some(["--network-mode", "host"])
                    .into_iter()
                    .flatten(),
            )
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .map_err(|e| format!("start kilnd: {e}"))?;
        let k = Kilnd {
            child: Some(child),
            socket,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let listening = std::fs::read_to_string(&k.log)
                .unwrap_or_default()
                .matches("listening")
                .count();
            if k.socket.exists()
                && containerd_client::connect(&k.socket).await.is_ok()
                && listening > extra.iter().filter(|a| **a == "--addr").count()
            {
                return Ok(k);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(format!(
            "kilnd did not listen within 30 s: {}",
            std::fs::read_to_string(&k.log).unwrap_or_default()
        ))
    }
}

/// What kiln left in its state directory `root` (a kilnd's or a CLI's
/// `--root`): mounts at or below it, received build contexts
/// (`sessions/<process>/<build>`) and step dirs (`exec/<process>/<step>`).
/// A process's empty directory is not a leftover; anything in it is.
pub fn state_leftovers(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let needle = root.display().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for target in mounts.lines().filter_map(|l| l.split(' ').nth(4)) {
        if target
            .strip_prefix(&needle)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        {
            out.push(format!("mount {target}"));
        }
    }
    for kind in [
        kiln_engine::sweep::SESSIONS_DIR,
        kiln_engine::sweep::EXEC_DIR,
    ] {
        let Ok(owners) = std::fs::read_dir(root.join(kind)) else {
            continue;
        };
        for owner in owners.flatten() {
            let Ok(entries) = std::fs::read_dir(owner.path()) else {
                out.push(format!("{kind} entry {}", owner.path().display()));
                continue;
            };
            for e in entries.flatten() {
                out.push(format!("{kind} dir {}", e.path().display()));
            }
        }
    }
    out
}

impl Harness {
    /// The state directory of the kilnd that [`Harness::start_kilnd`] runs
    /// for `namespace`.
    pub fn kilnd_root(&self, namespace: &str) -> PathBuf {
        self.state_dir().join(format!("kilnd-root-{namespace}"))
    }

    /// [`Harness::leftovers`] in `namespace` plus [`state_leftovers`] of
    /// `root`: everything a finished or cancelled build must not leave.
    pub fn all_leftovers(&self, namespace: &str, root: &Path) -> HarnessResult<Vec<String>> {
        let mut out = self.leftovers(namespace)?;
        out.extend(state_leftovers(root));
        Ok(out)
    }

    /// Waits up to `wait` for [`Harness::all_leftovers`] to be empty; the
    /// leftovers still there at the deadline are the error.
    pub async fn wait_no_leftovers(
        &self,
        namespace: &str,
        root: &Path,
        wait: Duration,
    ) -> HarnessResult<()> {
        let deadline = Instant::now() + wait;
        loop {
            let left = self.all_leftovers(namespace, root)?;
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("left after {wait:?}:\n{}", left.join("\n")));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The buildctl-style client (`buildctl-like`) next to the test executable.
pub fn buildctl_like_binary() -> HarnessResult<PathBuf> {
    test_binary("buildctl-like")
}

impl Kilnd {
    /// SIGKILLs kilnd and returns its process without reaping it: until the
    /// caller waits for it, it stays a zombie (as a daemon that was just
    /// killed may still be when its successor starts).
    pub fn kill_unreaped(&mut self) -> HarnessResult<Child> {
        let child = self.child.take().ok_or("kilnd already stopped")?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL)
            .map_err(|e| format!("kill kilnd: {e}"))?;
        Ok(child)
    }
}

/// Runs PyPI's kubernetes-validate, as `.ci/install` puts it (or
/// `$KILN_KUBERNETES_VALIDATE`), strictly (unknown fields fail) over
/// `files`: the schema check of every Kubernetes manifest kiln ships or
/// generates. Whether all passed, and what it said (stdout, then stderr).
pub fn kubernetes_validate<P: AsRef<std::ffi::OsStr>>(files: &[P]) -> (bool, String) {
    let out = Command::new(kubernetes_validator())
        .arg("--strict")
        .args(files)
        .output()
        .expect("kubernetes-validate runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn kubernetes_validator() -> PathBuf {
    let p = std::env::var_os("KILN_KUBERNETES_VALIDATE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from("/opt/kiln-ci/kubernetes-validate/bin/kubernetes-validate")
        });
    assert!(
        p.exists(),
        "{} is missing: run .ci/install (it installs kubernetes-validate)",
        p.display()
    );
    p
}
