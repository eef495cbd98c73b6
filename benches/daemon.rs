//! The daemons under test, kilnd and buildkitd, on the harness's private
//! containerd: how each is started (one place per daemon), the time from
//! its start to its first `ListWorkers` answer, its resident memory, and
//! stopping it with its state directory removed.

use kiln_integration::Harness;
use kiln_proto::control::control_client::ControlClient;
use kiln_proto::control::ListWorkersRequest;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DaemonKind {
    Kilnd,
    Buildkitd,
}

impl DaemonKind {
    pub fn name(self) -> &'static str {
        match self {
            DaemonKind::Kilnd => "kilnd",
            DaemonKind::Buildkitd => "buildkitd",
        }
    }
}

/// A running daemon; killed on drop if [`Daemon::stop`] was not called.
#[derive(Debug)]
pub struct Daemon {
    child: Option<Child>,
    socket: PathBuf,
    root: PathBuf,
    log: PathBuf,
}

/// The first executable `name` on `PATH`.
pub fn on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// buildkitd's settings, kept comparable with kiln's: only the containerd
/// worker, on the harness's containerd and overlayfs, steps on the host's
/// network (as the harness runs kiln's steps), `network.host` granted to
/// builds that ask for it (as kiln grants it on `--allow`), no garbage
/// collection while a workload runs (kiln's CLI collects nothing between
/// builds either), a state directory of its own.
fn buildkitd_command(h: &Harness, bin: &Path, ns: &str, root: &Path, socket: &Path) -> Command {
    let mut cmd = Command::new(bin);
    // An empty config file, so /etc/buildkit/buildkitd.toml never applies.
    let config = root.join("buildkitd.toml");
    let _ = std::fs::write(&config, "");
    cmd.arg("--config")
        .arg(&config)
        .arg("--root")
        .arg(root)
        .arg("--addr")
        .arg(format!("unix://{}", socket.display()))
        .args(["--oci-worker=false", "--containerd-worker=true"])
        .arg("--containerd-worker-addr")
        .arg(h.socket())
        .arg("--containerd-worker-namespace")
        .arg(ns)
        .args([
            "--containerd-worker-snapshotter=overlayfs",
            "--containerd-worker-net=host",
            "--containerd-worker-gc=false",
            "--allow-insecure-entitlement=network.host",
        ]);
    cmd
}

/// kilnd as the harness starts it: host network for steps.
fn kilnd_command(h: &Harness, ns: &str, root: &Path, socket: &Path) -> Result<Command, String> {
    let mut cmd = Command::new(kiln_integration::kilnd_binary()?);
    cmd.arg("--addr")
        .arg(format!("unix://{}", socket.display()))
        .arg("--root")
        .arg(root)
        .arg("--containerd-address")
        .arg(h.socket())
        .arg("--namespace")
        .arg(ns)
        .args(["--network-mode", "host"]);
    // Connection-level failures (tonic logs them at debug) are in the log
    // a failed build's report carries.
    if std::env::var_os("KILND_LOG").is_none() {
        cmd.env("KILND_LOG", "info,tonic=debug");
    }
    Ok(cmd)
}

impl Daemon {
    /// Starts `kind` in containerd namespace `ns` with its state in `root`
    /// and returns it with the time from spawning it to its first
    /// `ListWorkers` answer.
    pub async fn start(
        h: &Harness,
        kind: DaemonKind,
        ns: &str,
        root: &Path,
    ) -> Result<(Daemon, Duration), String> {
        std::fs::create_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
        let socket = h.state_dir().join(format!("{ns}.sock"));
        let log = h.state_dir().join(format!("{ns}.log"));
        let mut cmd = match kind {
            DaemonKind::Kilnd => kilnd_command(h, ns, root, &socket)?,
            DaemonKind::Buildkitd => {
                let bin = on_path("buildkitd").ok_or("buildkitd is not on PATH")?;
                buildkitd_command(h, &bin, ns, root, &socket)
            }
        };
        let logf = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let started = Instant::now();
        let child = cmd
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .map_err(|e| format!("start {}: {e}", kind.name()))?;
        let mut d = Daemon {
            child: Some(child),
            socket,
            root: root.to_path_buf(),
            log,
        };
        d.wait_answering(kind).await?;
        Ok((d, started.elapsed()))
    }

    /// Polls `ListWorkers` every millisecond, 60 s at most.
    async fn wait_answering(&mut self, kind: DaemonKind) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(ch) = containerd_client::connect(&self.socket).await {
                let mut c = ControlClient::new(ch);
                if c.list_workers(ListWorkersRequest::default()).await.is_ok() {
                    return Ok(());
                }
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                return Err(format!(
                    "{} exited with {status}: {}",
                    kind.name(),
                    self.log_tail()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not answer in 60 s: {}",
                    kind.name(),
                    self.log_tail()
                ));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    fn log_tail(&self) -> String {
        self.log_lines(15)
    }

    fn log_lines(&self, n: usize) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Whether the daemon still runs, and the end of its log: what a
    /// failed build's report carries from the daemon's side.
    pub fn report(&self) -> String {
        let state = match self.pid() {
            // An exited child not yet waited for is a zombie ("Z").
            Some(pid) => match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Ok(stat) if stat.rsplit(") ").next().is_some_and(|r| r.starts_with('Z')) => {
                    "has exited"
                }
                Ok(_) => "is running",
                Err(_) => "is gone",
            },
            None => "was stopped",
        };
        format!(
            "daemon {state}; the end of its log ({}):\n{}",
            self.log.display(),
            self.log_lines(60)
        )
    }

    /// `unix://<socket>`.
    pub fn addr(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Stops the daemon and removes its state directory, socket and log.
    pub fn stop(mut self) {
        self.halt();
        kiln_engine::sweep::unmount_below(&self.root);
        let _ = std::fs::remove_dir_all(&self.root);
        let _ = std::fs::remove_file(&self.log);
    }

    /// SIGTERM and wait (30 s at most, then SIGKILL); the state directory
    /// stays for the next start.
    pub fn halt(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(30);
            while !matches!(child.try_wait(), Ok(Some(_))) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        // So the next start's wait never reaches a stale socket.
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// VmRSS of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// Samples a process's VmRSS every 50 ms in a thread until stopped.
#[derive(Debug)]
pub struct RssSampler {
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let done = Arc::new(AtomicBool::new(false));
        let flag = done.clone();
        let thread = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid).unwrap_or(0));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak.max(rss_kib(pid).unwrap_or(0))
        });
        RssSampler { done, thread }
    }

    /// The peak VmRSS seen, in KiB.
    pub fn stop(self) -> u64 {
        self.done.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0)
    }
}
