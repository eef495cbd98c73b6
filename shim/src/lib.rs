//! A build step as a containerd task.
//!
//! This crate owns the `Executor` trait, the pure `StepSpec` -> OCI runtime
//! spec conversion, stdio FIFOs, exit status and kill/timeout, and the
//! containerd Containers + Tasks proxy. It must not decide cache keys or
//! know about the solver's graph.
//!
//! The shape follows BuildKit's containerd executor:
//! - [`spec::build_spec`] is a pure function from a [`StepSpec`] and a
//!   resolved user to an OCI runtime spec, so everything a step can see is
//!   unit-testable without root or containerd.
//! - [`ContainerdExecutor`] runs that spec with the call order of
//!   `docs/containerd-worker.md` §1.4: FIFOs opened before `Tasks.Create`,
//!   `Wait` before `Start`, kill-and-still-wait on cancel, and an explicit
//!   cleanup stack (task -> container -> mount points -> step dir) that runs
//!   on every path.
//! - [`network`] gives a step its sandbox network: a fresh namespace on
//!   kiln's bridge through the real CNI plugins (set up before the task,
//!   deleted after it on every path, swept after a crash), or the host's.
//! - [`mountpoints`] removes the mount points runc created in the rootfs, so the
//!   layer diff the engine computes afterwards holds no `proc/`, `dev/` or
//!   `etc/hosts` stubs.
//! - [`emulation`] says whether a step of another architecture can run
//!   here (a binfmt_misc handler usable from a container), before it runs.
//! - [`rootfs`] is the only way the shim touches a rootfs: directory fds and
//!   `*at` calls, so no symlink in an image or placed by a step can make kiln
//!   act on a host path.
//!
//! Architecture invariant: a non-zero exit is data ([`ExitStatus`]), never
//! an `Err`. Only this crate builds OCI specs.

pub mod emulation;
pub mod error;
mod executor;
mod fifo;
pub mod mountpoints;
pub mod network;
pub mod rootfs;
pub mod seccomp;
mod shimgroup;
pub mod spec;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod user;

pub use error::{ExecError, Result};
pub use executor::{ContainerdExecutor, LEASE_LABEL, RUNTIME, SPEC_TYPE_URL, STEP_LABEL};
pub use spec::build_spec;
pub use tokio_util::sync::CancellationToken;

use kiln_snapshot::containerd::LeaseId;
pub use kiln_types::process::{HostIp, Ulimit};
use std::path::PathBuf;
use std::time::Duration;

/// Hostname of a step when [`StepSpec::hostname`] is empty, as in BuildKit.
pub const DEFAULT_HOSTNAME: &str = "buildkitsandbox";

/// The pids limit the engine gives a step ([`StepSpec::pids_limit`]):
/// Podman's documented default for containers (4096), enough for parallel
/// compilers and test runners, and a stop for a fork bomb.
pub const DEFAULT_PIDS_LIMIT: u64 = 4096;

/// Everything needed to run one build step.
#[derive(Clone, Debug)]
pub struct StepSpec {
    /// Container id, unique within the namespace (e.g. `kiln-<hex>`).
    pub id: String,
    /// Host path where the step's root filesystem is already mounted
    /// read-write by the engine.
    pub rootfs: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
    /// Absolute working directory; created in the rootfs if missing.
    pub cwd: String,
    /// `USER` value (`name`, `uid`, `name:group`, `uid:gid`); empty is root.
    pub user: String,
    /// Empty means [`DEFAULT_HOSTNAME`].
    pub hostname: String,
    /// Lines added to the step's `/etc/hosts` after the default ones.
    pub extra_hosts: Vec<HostIp>,
    /// Resource limits; empty keeps the default open-files limit.
    pub ulimits: Vec<Ulimit>,
    pub network: Network,
    /// Extra mounts, applied after the standard ones.
    pub mounts: Vec<ExtraMount>,
    /// The build's lease; containers and tasks are created under it.
    pub lease: LeaseId,
    /// Kill the step after this long.
    pub timeout: Option<Duration>,
    /// The sandbox the step runs in (LLB `ExecOp.security`).
    pub security: Security,
    /// Most tasks (processes and threads) the step may have at once
    /// (cgroup `pids.max`); `None` is unlimited.
    pub pids_limit: Option<u64>,
    /// cgroup memory and CPU limits (buildx `--resource`); `None` sets
    /// none.
    pub resources: Option<kiln_types::process::Resources>,
}

/// How much of the sandbox a step runs in (LLB `SecurityMode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Security {
    /// Default seccomp profile, masked and read-only paths, the default
    /// capability set without `CAP_NET_RAW`.
    #[default]
    Sandbox,
    /// BuildKit's `security.insecure`: every capability, no seccomp, nothing
    /// masked. The caller checks the entitlement before asking for it.
    Insecure,
}

/// The network a step sees.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Network {
    /// The executor's sandbox network (LLB's default): a fresh network
    /// namespace on kiln's CNI bridge when the executor has one
    /// ([`ContainerdExecutor::with_cni`]), else the host's network.
    #[default]
    Sandbox,
    /// The host's network namespace and resolv.conf (`RUN --network=host`,
    /// which needs the `network.host` entitlement).
    Host,
    /// A new network namespace with only loopback.
    None,
}

/// An extra mount of a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExtraMount {
    /// A bind mount of a host path.
    Bind {
        source: PathBuf,
        dest: String,
        readonly: bool,
    },
    /// A fresh tmpfs; `size` in bytes, `None` for the kernel default.
    Tmpfs { dest: String, size: Option<u64> },
}

impl ExtraMount {
    /// The absolute path inside the container.
    pub fn dest(&self) -> &str {
        match self {
            ExtraMount::Bind { dest, .. } | ExtraMount::Tmpfs { dest, .. } => dest,
        }
    }
}

/// How a step's process ended. A non-zero code is data, not an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitStatus {
    /// The exit code; 128+n for a signal n, 255 when containerd does not
    /// know it.
    pub code: u32,
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        self.code == 0
    }
}

/// Which output stream a chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// How many output chunks (of at most 32 KiB) may wait for the receiver of
/// a [`StepIo`] before the reader stops reading (and the step's writes
/// block on the full pipe): what bounds a step's output in flight.
pub const OUTPUT_QUEUE: usize = 16;

/// Where a step's live output goes. Chunks arrive as the process writes
/// them; the channel is bounded (see [`OUTPUT_QUEUE`]), so a receiver that
/// does not keep up slows the step down. A closed receiver only drops
/// output, it does not stop the step.
#[derive(Clone, Debug)]
pub struct StepIo {
    pub output: tokio::sync::mpsc::Sender<(OutputStream, Vec<u8>)>,
    /// What the process reads on its stdin, chunk by chunk; the stdin
    /// closes when the sender is dropped. `None`: no stdin (steps).
    pub stdin: Option<Stdin>,
}

/// The process's stdin: the receiving end of its chunks, taken by the one
/// run that writes them (a [`StepIo`] is cloned, its stdin is not shared).
#[derive(Clone, Debug)]
pub struct Stdin(std::sync::Arc<std::sync::Mutex<Option<tokio::sync::mpsc::Receiver<Vec<u8>>>>>);

impl Stdin {
    pub fn new(rx: tokio::sync::mpsc::Receiver<Vec<u8>>) -> Self {
        Stdin(std::sync::Arc::new(std::sync::Mutex::new(Some(rx))))
    }

    /// The receiver, for the first caller only.
    pub fn take(&self) -> Option<tokio::sync::mpsc::Receiver<Vec<u8>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Runs build steps. BuildKit's `Executor` minus interactive exec.
#[async_trait::async_trait]
pub trait Executor: Send + Sync {
    /// Runs `step` to completion and returns its exit status.
    ///
    /// Output is streamed to `io` while the step runs. When `cancel` fires
    /// or the step's timeout passes, the step's processes are killed, their
    /// exit is still collected, every resource is cleaned up and the result
    /// is [`ExecError::Cancelled`] or [`ExecError::Timeout`]. A non-zero
    /// exit is `Ok`.
    async fn run(
        &self,
        step: StepSpec,
        io: StepIo,
        cancel: CancellationToken,
    ) -> Result<ExitStatus, ExecError>;

    /// Waits until what `run` left to clean up after steps of `lease`
    /// that exited 0 is gone (their task and container records), so that
    /// nothing of the build outlives it. `run` returns as soon as a
    /// successful step's rootfs is final (output read, mount points
    /// removed); collecting its task is off the build's critical path.
    /// Executors that clean up before `run` returns have nothing to wait
    /// for.
    async fn settle(&self, _lease: &LeaseId) {}
}

/// The step containers in a namespace (containerd's `Containers` and
/// `Tasks` services, as far as cleaning up after a dead build needs them).
/// Step containers carry [`STEP_LABEL`] and, naming their build's lease,
/// [`LEASE_LABEL`].
#[async_trait::async_trait]
pub trait Containers: Send + Sync {
    /// Ids of every step container in the namespace.
    async fn list(&self) -> Result<Vec<String>, ExecError>;

    /// Ids of the step containers that ran under the build lease `lease`.
    async fn list_of_lease(&self, lease: &LeaseId) -> Result<Vec<String>, ExecError>;

    /// Kills and deletes a step's task (if any) and container; a missing
    /// container is not an error.
    async fn remove(&self, id: &str) -> Result<(), ExecError>;
}
