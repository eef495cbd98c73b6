//! The three ways a workload is built, one driver each: kiln embedded
//! (`kiln build`), kilnd driven by a buildctl-compatible client, and
//! BuildKit (buildkitd's containerd worker driven by `buildctl`). A
//! [`Session`] is one engine on fresh state: a containerd namespace of its
//! own with busybox imported, its daemon started; closing it stops the
//! daemon and empties the namespace, so big workloads do not pile up on
//! disk.

use crate::daemon::{on_path, Daemon, DaemonKind};
use kiln_integration::Harness;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// When the last session's state was deleted (and written back).
static LAST_WIPE: Mutex<Option<Instant>> = Mutex::new(None);

/// How long ext4 without a journal (this machine's root file system)
/// passes over a deleted inode when it allocates one (`recently_deleted`
/// in the kernel: 30 s once the inode's table block is written back, 5.5
/// min while it is dirty). Each pass is a buffer lookup, so creating
/// thousands of files just after deleting thousands spends its time in
/// the kernel (23 % of kilnd's samples in a W3 cold build run straight
/// after another engine's state was deleted).
const INODE_SETTLE: Duration = Duration::from_secs(31);

/// Waits until the inodes the last wipe freed are allocated normally
/// again, so a cold run that creates many files does not pay for the run
/// before it (W1, W3).
pub fn settle_inodes() {
    let last = *LAST_WIPE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(t) = last {
        std::thread::sleep(INODE_SETTLE.saturating_sub(t.elapsed()));
    }
}

/// An engine under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Engine {
    Kiln,
    Kilnd,
    BuildKit,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Kiln => "kiln",
            Engine::Kilnd => "kilnd",
            Engine::BuildKit => "BuildKit",
        }
    }

    pub fn daemon(self) -> Option<DaemonKind> {
        match self {
            Engine::Kiln => None,
            Engine::Kilnd => Some(DaemonKind::Kilnd),
            Engine::BuildKit => Some(DaemonKind::Buildkitd),
        }
    }
}

/// The client that drives a daemon.
#[derive(Debug, Clone)]
pub enum Client {
    /// A real `buildctl` found on PATH.
    Buildctl(PathBuf),
    /// The harness's own `buildctl-like` (no buildctl on PATH).
    Like(PathBuf),
}

impl Client {
    /// `buildctl` from PATH, else the harness's buildctl-like.
    pub fn find() -> Result<Client, String> {
        match on_path("buildctl") {
            Some(p) => Ok(Client::Buildctl(p)),
            None => Ok(Client::Like(kiln_integration::buildctl_like_binary()?)),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Client::Buildctl(p) => format!("buildctl ({})", p.display()),
            Client::Like(_) => "the harness's buildctl-like (no buildctl on PATH)".into(),
        }
    }

    /// One Dockerfile build of `ctx` exported as image `image`, base images
    /// from the local store (image-resolve-mode=local), unpacked into the
    /// snapshotter as kiln's image exporter does.
    fn command(&self, addr: &str, ctx: &Path, image: &str, compression: Option<&str>) -> Command {
        let mut export = String::from("unpack=true");
        if let Some(c) = compression {
            export.push_str(&format!(",compression={c}"));
        }
        match self {
            Client::Buildctl(bin) => {
                let mut cmd = Command::new(bin);
                let ctx = ctx.display();
                cmd.args(["--addr", addr, "build", "--progress", "plain"])
                    .args(["--frontend", "dockerfile.v0"])
                    .args(["--local", &format!("context={ctx}")])
                    .args(["--local", &format!("dockerfile={ctx}")])
                    .args(["--opt", "image-resolve-mode=local"])
                    .args(["--output", &format!("type=image,name={image},{export}")]);
                cmd
            }
            Client::Like(bin) => {
                let mut cmd = Command::new(bin);
                cmd.arg(addr)
                    .arg(ctx)
                    .arg(image)
                    .env("BUILDCTL_LIKE_OPTS", "image-resolve-mode=local")
                    .env("BUILDCTL_LIKE_EXPORT", export);
                cmd
            }
        }
    }
}

/// One engine on fresh state.
#[derive(Debug)]
pub struct Session<'h> {
    h: &'h Harness,
    engine: Engine,
    ns: String,
    client: &'h Client,
    daemon: Option<Daemon>,
}

impl<'h> Session<'h> {
    /// Imports busybox into the new namespace `ns` and starts the engine's
    /// daemon there with a fresh state directory.
    pub async fn open(
        h: &'h Harness,
        engine: Engine,
        ns: &str,
        client: &'h Client,
    ) -> Result<Session<'h>, String> {
        h.import_busybox(ns, "docker.io/library/busybox:latest")
            .await?;
        let daemon = match engine.daemon() {
            Some(kind) => {
                let root = h.state_dir().join(format!("{ns}-root"));
                Some(Daemon::start(h, kind, ns, &root).await?.0)
            }
            None => None,
        };
        Ok(Session {
            h,
            engine,
            ns: ns.to_string(),
            client,
            daemon,
        })
    }

    /// The daemon's process id (none for kiln embedded).
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().and_then(Daemon::pid)
    }

    /// Builds `ctx` into image `name` (`compression` as the image exporter's
    /// attribute; None: the default, gzip) and returns the wall time, or
    /// the end of the build's output when it fails.
    pub fn build(
        &self,
        ctx: &Path,
        name: &str,
        compression: Option<&str>,
    ) -> Result<Duration, String> {
        let image = format!("docker.io/library/{name}:latest");
        let mut cmd = match &self.daemon {
            Some(d) => self.client.command(&d.addr(), ctx, &image, compression),
            None => {
                let mut cmd = self.h.kiln_command(&self.ns).expect("kiln binary");
                let mut out = format!("type=image,name={image}");
                if let Some(c) = compression {
                    out.push_str(&format!(",compression={c}"));
                }
                cmd.args(["build", "--progress", "plain", "-o", &out])
                    .arg(ctx);
                cmd
            }
        };
        let start = Instant::now();
        let out = cmd
            .output()
            .map_err(|e| format!("{} build: {e}", self.engine.name()))?;
        let took = start.elapsed();
        if !out.status.success() {
            let tail = |b: &[u8]| {
                let s = String::from_utf8_lossy(b).into_owned();
                let mut cut = s.len().saturating_sub(4000);
                while !s.is_char_boundary(cut) {
                    cut += 1;
                }
                s[cut..].to_string()
            };
            // A daemon's side of a failed build: its log is removed when
            // the session ends, so it is kept with the failure.
            let daemon = self
                .daemon
                .as_ref()
                .map(|d| format!("\n{}", d.report()))
                .unwrap_or_default();
            return Err(format!(
                "{} build of {} failed ({}):\n{}\n{}{daemon}",
                self.engine.name(),
                ctx.display(),
                out.status,
                tail(&out.stdout),
                tail(&out.stderr)
            ));
        }
        Ok(took)
    }

    /// The media type of image `name`'s last layer (through an index's
    /// first manifest if the image is an index).
    pub fn top_layer_type(&self, name: &str) -> String {
        let image = format!("docker.io/library/{name}:latest");
        let mut doc = self.h.manifest(&self.ns, &image);
        if let Some(d) = doc["manifests"][0]["digest"].as_str() {
            let body = self
                .h
                .ctr(&self.ns, &["content", "get", d])
                .expect("manifest");
            doc = serde_json::from_str(&body).expect("manifest JSON");
        }
        let layers = doc["layers"].as_array().cloned().unwrap_or_default();
        layers
            .last()
            .and_then(|l| l["mediaType"].as_str())
            .unwrap_or_default()
            .to_string()
    }

    /// Stops the daemon (removing its state) and empties the namespace.
    pub fn close(mut self) {
        if let Some(d) = self.daemon.take() {
            d.stop();
        }
        wipe_namespace(self.h, &self.ns);
        let _ = std::fs::remove_dir_all(self.h.state_dir().join(format!("busybox-{}", self.ns)));
        // Written back, the freed inodes wait 30 s, not 5.5 min.
        nix::unistd::sync();
        *LAST_WIPE.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
    }
}

/// Deletes everything in containerd namespace `ns` (images, leases, then
/// whatever the synchronous garbage collection left) and the namespace.
pub fn wipe_namespace(h: &Harness, ns: &str) {
    let ctr = |args: &[&str]| h.ctr(ns, args).unwrap_or_default();
    let first_column = |out: String, skip: usize| -> Vec<String> {
        out.lines()
            .skip(skip)
            .filter_map(|l| l.split_whitespace().next().map(String::from))
            .collect()
    };
    for c in first_column(ctr(&["containers", "ls", "-q"]), 0) {
        let _ = h.ctr(ns, &["tasks", "kill", "-s", "SIGKILL", &c]);
        let _ = h.ctr(ns, &["tasks", "delete", &c]);
        let _ = h.ctr(ns, &["containers", "delete", &c]);
    }
    for i in first_column(ctr(&["images", "ls", "-q"]), 0) {
        let _ = h.ctr(ns, &["images", "rm", &i]);
    }
    for l in first_column(ctr(&["leases", "ls", "-q"]), 0) {
        let _ = h.ctr(ns, &["leases", "rm", "--sync", &l]);
    }
    // What no lease held but GC kept (e.g. gc.root labels): children first.
    for _ in 0..32 {
        let snaps = first_column(ctr(&["snapshots", "ls"]), 1);
        if snaps.is_empty() {
            break;
        }
        for s in snaps {
            let _ = h.ctr(ns, &["snapshots", "rm", &s]);
        }
    }
    for c in first_column(ctr(&["content", "ls", "-q"]), 0) {
        let _ = h.ctr(ns, &["content", "rm", &c]);
    }
    if let Err(e) = h.ctr("default", &["namespaces", "rm", ns]) {
        eprintln!("note: namespace {ns} not fully removed: {e}");
    }
}
