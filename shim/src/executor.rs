//! [`ContainerdExecutor`]: a step as a containerd container + task, and
//! the thin proxy over the Containers and Tasks services.
//!
//! The call order is BuildKit's (docs/containerd-worker.md §1.4): FIFOs
//! opened before `Tasks.Create`, `Wait` subscribed before `Start`, and on
//! cancel or timeout `Kill(SIGKILL, all)` followed by a bounded wait for
//! the exit before `Delete`. Everything created is pushed on an explicit
//! cleanup stack that unwinds on every path.

use crate::error::{ExecError, Result};
use crate::fifo::{self, FifoReader};
use crate::mountpoints::MountPoints;
use crate::network::{Attachment, Cni};
use crate::rootfs::RootDir;
use crate::shimgroup::{ShimGroup, GROUP_ANNOTATION};
use crate::spec::{self, build_spec};
use crate::user::resolve_user;
use crate::{Containers, Executor, ExitStatus, Network, OutputStream, StepIo, StepSpec};
use containerd_client::services::v1::container::Runtime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, KillRequest, ListContainersRequest, ListTasksRequest, StartRequest,
    WaitRequest, WaitResponse,
};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{Response, Status};
use containerd_client::types::Mount as CtrdMount;
use kiln_snapshot::containerd::LeaseId;
use kiln_snapshot::Containerd;
use kiln_types::ErrorKind;
use std::collections::HashMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// The runtime every step runs under (works on containerd 1.6 to 2.x).
pub const RUNTIME: &str = "io.containerd.runc.v2";
/// `Any.type_url` of an OCI runtime spec, as containerd's typeurl names it.
pub const SPEC_TYPE_URL: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
/// Label on every step container; its value is the step id.
pub const STEP_LABEL: &str = "dev.kiln/step";
/// Label on every step container naming the build's lease.
pub const LEASE_LABEL: &str = "dev.kiln/lease";

/// How long a killed step may take to exit.
const KILL_GRACE: Duration = Duration::from_secs(10);
/// How long to wait for the shim to close the stdio FIFOs after exit.
const OUTPUT_DRAIN: Duration = Duration::from_secs(10);
/// How long cleanup keeps retrying while containerd is unreachable (it is
/// restarting): a live process has no later sweep to leave the task to.
const CLEANUP_RECONNECT: Duration = Duration::from_secs(60);

/// Runs steps as containerd tasks with the runc v2 shim.
#[derive(Clone, Debug)]
pub struct ContainerdExecutor {
    ctrd: Containerd,
    state_dir: PathBuf,
    /// The sandbox network; `None` runs sandboxed steps on the host's.
    cni: Option<Cni>,
    /// Cleanups still running after their step returned, by build lease
    /// (see [`Executor::settle`]).
    pending: Arc<Mutex<HashMap<String, Vec<JoinHandle<()>>>>>,
    /// The shim the steps share.
    shims: ShimGroup,
}

/// Why a running step was stopped.
enum Stop {
    Cancelled,
    Timeout(Duration),
}

/// What the cleanup stack undoes, in reverse order of creation.
enum Undo {
    /// The step's private dir (FIFOs, hosts, resolv.conf).
    StepDir(PathBuf),
    /// Mount points runc may create in the rootfs.
    MountPoints(MountPoints),
    /// The rootfs bind handed to containerd (see [`task_rootfs`]).
    TaskRootfs(PathBuf),
    /// The step's CNI network (namespace, veth, address).
    Network(Attachment),
    /// FIFO reader threads.
    Readers(Vec<FifoReader>),
    /// The container record.
    Container,
    /// The task; `running` unless its exit was collected.
    Task { running: bool },
}

/// Aborts the spawned Wait call when dropped.
struct WaitCall(JoinHandle<std::result::Result<Response<WaitResponse>, Status>>);

impl Drop for WaitCall {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl ContainerdExecutor {
    /// An executor over `ctrd`'s namespace. `state_dir` holds one private
    /// dir per running step (FIFOs, generated `/etc/hosts` and
    /// `/etc/resolv.conf`); it is created when needed.
    pub fn new(ctrd: Containerd, state_dir: PathBuf) -> Self {
        ContainerdExecutor {
            ctrd,
            state_dir,
            cni: None,
            pending: Arc::default(),
            shims: ShimGroup::new(),
        }
    }

    /// Runs [`Network::Sandbox`] steps in a fresh network namespace on
    /// `cni`'s bridge instead of the host's network.
    pub fn with_cni(mut self, cni: Cni) -> Self {
        self.cni = Some(cni);
        self
    }

    fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.ctrd.channel())
    }

    fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.ctrd.channel())
    }

    /// Ids of the step containers (label [`STEP_LABEL`]) in the namespace,
    /// e.g. to find leftovers of a crashed engine.
    pub async fn list_containers(&self) -> Result<Vec<String>> {
        self.list_with_filter(format!("labels.\"{STEP_LABEL}\""))
            .await
    }

    /// Ids of the step containers a build's lease ran.
    pub async fn list_containers_of_lease(&self, lease: &str) -> Result<Vec<String>> {
        self.list_with_filter(format!("labels.\"{LEASE_LABEL}\"==\"{lease}\""))
            .await
    }

    async fn list_with_filter(&self, filter: String) -> Result<Vec<String>> {
        let req = ListContainersRequest {
            filters: vec![filter],
        };
        let r = self
            .containers()
            .list(self.ctrd.request(req, None))
            .await
            .map_err(|s| self.ctrd.status_error("Containers.List", "", s))?;
        Ok(r.into_inner()
            .containers
            .into_iter()
            .map(|c| c.id)
            .collect())
    }

    /// Container ids of all tasks in the namespace.
    pub async fn list_tasks(&self) -> Result<Vec<String>> {
        let req = ListTasksRequest {
            filter: String::new(),
        };
        let r = self
            .tasks()
            .list(self.ctrd.request(req, None))
            .await
            .map_err(|s| self.ctrd.status_error("Tasks.List", "", s))?;
        Ok(r.into_inner()
            .tasks
            .into_iter()
            .map(|p| {
                if p.container_id.is_empty() {
                    p.id
                } else {
                    p.container_id
                }
            })
            .collect())
    }

    /// Kills and deletes a step's task and container if they exist, e.g.
    /// leftovers found by [`ContainerdExecutor::list_containers`].
    pub async fn remove(&self, id: &str) -> Result<()> {
        self.stop(id).await?;
        self.delete_task(id, true).await?;
        self.delete_container(id).await
    }

    async fn run_step(
        &self,
        step: StepSpec,
        io: StepIo,
        cancel: CancellationToken,
    ) -> Result<ExitStatus> {
        let mut step = step;
        if step.network == Network::Sandbox && self.cni.is_none() {
            // The daemon's network mode is host.
            step.network = Network::Host;
        }
        let mut stack: Vec<Undo> = Vec::new();
        let res = self.run_inner(&step, &io, &cancel, &mut stack).await;
        let later = match &res {
            Ok(ExitStatus { code: 0 }) => deferrable(&mut stack),
            _ => Vec::new(),
        };
        self.unwind(&step.id, stack).await;
        if !later.is_empty() {
            self.defer(&step, later);
        }
        match &res {
            Ok(st) => tracing::debug!(id = %step.id, code = st.code, "step exited"),
            Err(e) => tracing::debug!(id = %step.id, error = %e, "step failed"),
        }
        res
    }

    async fn run_inner(
        &self,
        step: &StepSpec,
        io: &StepIo,
        cancel: &CancellationToken,
        stack: &mut Vec<Undo>,
    ) -> Result<ExitStatus> {
        let id = step.id.as_str();
        validate(step)?;
        if cancel.is_cancelled() {
            return Err(ExecError::Cancelled { id: id.to_string() });
        }
        let user = resolve_user(&step.rootfs, &step.user).map_err(|source| ExecError::User {
            id: id.to_string(),
            user: step.user.clone(),
            source,
        })?;
        let io_err = |op: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| ExecError::Io {
                id: id.to_string(),
                op,
                path,
                source,
            }
        };

        // The step's private dir: FIFOs and the generated /etc files.
        std::fs::create_dir_all(&self.state_dir).map_err(io_err("create", &self.state_dir))?;
        let dir = self.state_dir.join(id);
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(io_err("create", &dir))?;
        stack.push(Undo::StepDir(dir.clone()));
        let hosts = dir.join("hosts");
        std::fs::write(
            &hosts,
            spec::hosts_content(spec::hostname(step), &step.extra_hosts),
        )
        .map_err(io_err("write", &hosts))?;
        let resolv = dir.join("resolv.conf");
        let mut host_resolv = std::fs::read_to_string("/etc/resolv.conf").ok();
        if step.network == Network::Sandbox {
            host_resolv = host_resolv.and_then(|r| crate::network::isolated_resolv(&r));
        }
        std::fs::write(&resolv, spec::resolv_content(host_resolv.as_deref()))
            .map_err(io_err("write", &resolv))?;

        let cwd = if step.cwd.is_empty() {
            "/"
        } else {
            step.cwd.as_str()
        };
        let root = RootDir::open(&step.rootfs).map_err(io_err("open rootfs", &step.rootfs))?;
        root.mkdir_all(cwd, user.uid, user.gid)
            .map_err(io_err("create working directory", Path::new(cwd)))?;

        let mut oci = build_spec(step, &user, &hosts, &resolv);
        if let Some(bounding) = own_bounding_set() {
            let removed = spec::restrict_capabilities(&mut oci, bounding);
            if !removed.is_empty() {
                tracing::info!(
                    id,
                    ?removed,
                    "kiln does not hold these capabilities; the step does not get them"
                );
            }
        }
        if step.network == Network::Sandbox {
            let netns = self.attach_network(id, stack).await?;
            spec::join_network_namespace(&mut oci, &netns);
        }
        // From here to the task's create, no delete may empty the shim.
        let joining = self.shims.join().await;
        let mut annotations = oci.annotations().clone().unwrap_or_default();
        annotations.insert(GROUP_ANNOTATION.to_string(), joining.name());
        oci.set_annotations(Some(annotations));
        // The standard mounts' points stay in the layer, as in BuildKit's;
        // those of the step's own mounts go (a `shm-size` tmpfs on
        // /dev/shm is one: BuildKit's stub cleaner then removes a /dev the
        // run created). The standard mounts come first ([`spec::step_mounts`]).
        let dests: Vec<String> = oci
            .mounts()
            .iter()
            .flatten()
            .skip(spec::STANDARD_MOUNT_POINTS.len())
            .map(|m| m.destination().to_string_lossy().into_owned())
            .collect();
        stack.push(Undo::MountPoints(MountPoints::record(
            &root,
            dests.iter().map(String::as_str),
        )));
        let spec_json = serde_json::to_vec(&oci).map_err(|source| ExecError::Spec {
            id: id.to_string(),
            source,
        })?;

        // FIFOs: start our blocking opens now, await them only after Create.
        let stdout = dir.join(format!("{id}-stdout"));
        let stderr = dir.join(format!("{id}-stderr"));
        fifo::mkfifo(&stdout).map_err(io_err("mkfifo", &stdout))?;
        fifo::mkfifo(&stderr).map_err(io_err("mkfifo", &stderr))?;
        stack.push(Undo::Readers(vec![
            FifoReader::spawn(stdout.clone(), OutputStream::Stdout, io.output.clone()),
            FifoReader::spawn(stderr.clone(), OutputStream::Stderr, io.output.clone()),
        ]));
        // The shim opens the read end during Create; we write after it.
        let stdin = match io.stdin.as_ref().and_then(|s| s.take()) {
            Some(rx) => {
                let path = dir.join(format!("{id}-stdin"));
                fifo::mkfifo(&path).map_err(io_err("mkfifo", &path))?;
                Some((path, rx))
            }
            None => None,
        };

        let container = Container {
            id: id.to_string(),
            labels: HashMap::from([
                (STEP_LABEL.to_string(), id.to_string()),
                (LEASE_LABEL.to_string(), step.lease.to_string()),
            ]),
            runtime: Some(Runtime {
                name: RUNTIME.to_string(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE_URL.to_string(),
                value: spec_json,
            }),
            ..Default::default()
        };
        tracing::debug!(service = "Containers", method = "Create", id);
        self.containers()
            .create(self.ctrd.request(
                CreateContainerRequest {
                    container: Some(container),
                },
                Some(&step.lease),
            ))
            .await
            .map_err(|s| self.ctrd.status_error("Containers.Create", id, s))?;
        stack.push(Undo::Container);

        let task_root = dir.join("rootfs");
        task_rootfs(&step.rootfs, &task_root).map_err(io_err("bind rootfs", &task_root))?;
        stack.push(Undo::TaskRootfs(task_root.clone()));
        let create = CreateTaskRequest {
            container_id: id.to_string(),
            rootfs: vec![CtrdMount {
                r#type: "bind".to_string(),
                source: task_root.to_string_lossy().into_owned(),
                target: String::new(),
                options: vec!["rbind".to_string(), "rw".to_string()],
            }],
            stdin: stdin
                .as_ref()
                .map(|(p, _)| p.to_string_lossy().into_owned())
                .unwrap_or_default(),
            stdout: stdout.to_string_lossy().into_owned(),
            stderr: stderr.to_string_lossy().into_owned(),
            terminal: false,
            ..Default::default()
        };
        tracing::debug!(service = "Tasks", method = "Create", id);
        let created = self
            .tasks()
            .create(self.ctrd.request(create, Some(&step.lease)))
            .await;
        let pid = match created {
            Ok(r) => {
                joining.created();
                r.into_inner().pid
            }
            Err(s) => {
                self.shims.abandon(joining).await;
                return Err(self.ctrd.status_error("Tasks.Create", id, s).into());
            }
        };
        stack.push(Undo::Task { running: true });
        tracing::debug!(id, pid, "task created");
        if let Some((path, rx)) = stdin {
            let file = fifo::open_writer(&path).map_err(io_err("open", &path))?;
            fifo::spawn_writer(id.to_string(), file, rx);
        }
        // containerd has its own bind of it in the bundle now.
        if let Err(e) = kiln_snapshot::mount::unmount(&task_root) {
            tracing::warn!(id, path = %task_root.display(), error = %e, "unmounting the task's rootfs bind");
        }

        // Subscribe to the exit before starting.
        let mut tasks = self.tasks();
        let wait_req = self.ctrd.request(
            WaitRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            },
            None,
        );
        let mut wait = WaitCall(tokio::spawn(async move { tasks.wait(wait_req).await }));

        tracing::debug!(service = "Tasks", method = "Start", id);
        self.tasks()
            .start(self.ctrd.request(
                StartRequest {
                    container_id: id.to_string(),
                    exec_id: String::new(),
                },
                None,
            ))
            .await
            .map_err(|s| self.ctrd.status_error("Tasks.Start", id, s))?;

        let deadline = async {
            match step.timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let stop = tokio::select! {
            r = &mut wait.0 => {
                let code = self.wait_result(id, r)?.exit_status;
                mark_exited(stack);
                self.drain_output(id, stack).await;
                return Ok(ExitStatus { code });
            }
            _ = cancel.cancelled() => Stop::Cancelled,
            _ = deadline => Stop::Timeout(step.timeout.unwrap_or_default()),
        };

        tracing::debug!(id, "killing step");
        self.kill(id).await?;
        match tokio::time::timeout(KILL_GRACE, &mut wait.0).await {
            Ok(r) => {
                self.wait_result(id, r)?;
                mark_exited(stack);
                self.drain_output(id, stack).await;
            }
            Err(_) => return Err(ExecError::KillTimeout { id: id.to_string() }),
        }
        Err(match stop {
            Stop::Cancelled => ExecError::Cancelled { id: id.to_string() },
            Stop::Timeout(timeout) => ExecError::Timeout {
                id: id.to_string(),
                timeout,
            },
        })
    }

    /// Attaches the step to the CNI network (pushing the attachment on the
    /// cleanup stack) and returns its namespace.
    async fn attach_network(&self, id: &str, stack: &mut Vec<Undo>) -> Result<PathBuf> {
        let Some(cni) = self.cni.clone() else {
            return Err(ExecError::InvalidStep {
                id: id.to_string(),
                reason: "a sandbox network needs a cni executor",
            });
        };
        let owned = id.to_string();
        let attached = tokio::task::spawn_blocking(move || cni.attach(&owned))
            .await
            .map_err(|e| ExecError::Network {
                id: id.to_string(),
                source: Box::new(crate::network::NetworkError::Io {
                    op: "attach",
                    path: PathBuf::from(id),
                    source: std::io::Error::other(e.to_string()),
                }),
            })?
            .map_err(|source| ExecError::Network {
                id: id.to_string(),
                source: Box::new(source),
            })?;
        tracing::debug!(
            id,
            address = attached.address(),
            "step attached to the cni network"
        );
        let netns = attached.netns();
        stack.push(Undo::Network(attached));
        Ok(netns)
    }

    fn wait_result(
        &self,
        id: &str,
        r: std::result::Result<
            std::result::Result<Response<WaitResponse>, Status>,
            tokio::task::JoinError,
        >,
    ) -> Result<WaitResponse> {
        let r = r.map_err(|e| Status::internal(format!("wait call: {e}")));
        match r.and_then(|r| r) {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(self.ctrd.status_error("Tasks.Wait", id, s).into()),
        }
    }

    /// Waits (bounded) for the shim to close the FIFOs so that all output
    /// has been forwarded before the task is deleted.
    async fn drain_output(&self, id: &str, stack: &mut [Undo]) {
        for undo in stack.iter_mut() {
            if let Undo::Readers(readers) = undo {
                let mut pending = Vec::new();
                for r in readers.drain(..) {
                    match r.finish(OUTPUT_DRAIN).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::warn!(id, error = %e, "reading step output"),
                        Err(r) => pending.push(r),
                    }
                }
                *readers = pending;
            }
        }
    }

    /// Kills the task and waits (at most [`KILL_GRACE`]) until the shim has
    /// seen it exit: until then, Delete fails with "cannot delete a running
    /// process" (code Unknown in containerd 1.6, which the retry in
    /// [`Self::delete_task`] does not catch).
    async fn stop(&self, id: &str) -> Result<()> {
        self.kill(id).await?;
        let req = WaitRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        };
        match tokio::time::timeout(KILL_GRACE, self.tasks().wait(self.ctrd.request(req, None)))
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(s)) => {
                let e = self.ctrd.status_error("Tasks.Wait", id, s);
                if !e.is_not_found() {
                    tracing::debug!(id, error = %e, "wait before delete failed");
                }
            }
            Err(_) => tracing::warn!(id, "a killed step did not exit in time"),
        }
        Ok(())
    }

    async fn kill(&self, id: &str) -> Result<()> {
        tracing::debug!(service = "Tasks", method = "Kill", id);
        let req = KillRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
            signal: libc::SIGKILL as u32,
            all: true,
        };
        match self.tasks().kill(self.ctrd.request(req, None)).await {
            Ok(_) => Ok(()),
            Err(s) => {
                let e = self.ctrd.status_error("Tasks.Kill", id, s);
                // Already gone or already exited: nothing left to kill.
                if matches!(
                    e.kind(),
                    ErrorKind::NotFound | ErrorKind::FailedPrecondition
                ) {
                    Ok(())
                } else {
                    Err(e.into())
                }
            }
        }
    }

    /// Deletes the task; if it may be running, kills it first and retries
    /// while the shim still reports it running (bounded by the kill grace).
    async fn delete_task(&self, id: &str, running: bool) -> Result<()> {
        if running {
            self.kill(id).await?;
        }
        let start = tokio::time::Instant::now();
        loop {
            tracing::debug!(service = "Tasks", method = "Delete", id);
            let req = DeleteTaskRequest {
                container_id: id.to_string(),
            };
            let err = match self.tasks().delete(self.ctrd.request(req, None)).await {
                Ok(_) => return Ok(()),
                Err(s) => self.ctrd.status_error("Tasks.Delete", id, s),
            };
            match err.kind() {
                ErrorKind::NotFound => return Ok(()),
                ErrorKind::FailedPrecondition if running && start.elapsed() < KILL_GRACE => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                // containerd 1.6 answers Unknown "cannot delete a running
                // process"; after a containerd restart the first kill may
                // also have come before it re-attached the task: kill again.
                ErrorKind::Internal if running && start.elapsed() < KILL_GRACE => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    self.kill(id).await?;
                }
                _ => return Err(err.into()),
            }
        }
    }

    async fn delete_container(&self, id: &str) -> Result<()> {
        tracing::debug!(service = "Containers", method = "Delete", id);
        let req = DeleteContainerRequest { id: id.to_string() };
        match self.containers().delete(self.ctrd.request(req, None)).await {
            Ok(_) => Ok(()),
            Err(s) => {
                let e = self.ctrd.status_error("Containers.Delete", id, s);
                if e.is_not_found() {
                    Ok(())
                } else {
                    Err(e.into())
                }
            }
        }
    }

    /// Unwinds `later` (see [`deferrable`]) in a task of its own, which
    /// [`Executor::settle`] for the step's lease waits for.
    fn defer(&self, step: &StepSpec, later: Vec<Undo>) {
        let this = self.clone();
        let id = step.id.clone();
        let span = tracing::Span::current();
        let handle = tokio::spawn(
            async move {
                this.unwind(&id, later).await;
                tracing::debug!(id, "step collected");
            }
            .instrument(span),
        );
        let mut pending = self
            .pending
            .lock()
            .expect("no panic while holding the lock");
        let handles = pending.entry(step.lease.as_str().to_string()).or_default();
        handles.retain(|h| !h.is_finished());
        handles.push(handle);
    }

    /// Undoes everything on the stack, newest first. Failures are logged
    /// with ids; the primary result is the caller's.
    async fn unwind(&self, id: &str, mut stack: Vec<Undo>) {
        while let Some(undo) = stack.pop() {
            match undo {
                Undo::Task { running } => {
                    // A killed task dies before the group's lock is taken:
                    // no other step's create waits for that.
                    if running {
                        if let Err(e) = self.stop(id).await {
                            tracing::warn!(id, error = %e, "cleanup: stopping task");
                        }
                    }
                    let deleted = self
                        .shims
                        .leave(retry_unavailable(|| self.delete_task(id, running)))
                        .await;
                    if let Err(e) = deleted {
                        tracing::warn!(id, error = %e, "cleanup: deleting task");
                    }
                }
                Undo::Container => {
                    if let Err(e) = retry_unavailable(|| self.delete_container(id)).await {
                        tracing::warn!(id, error = %e, "cleanup: deleting container");
                    }
                }
                Undo::Readers(readers) => {
                    for r in readers {
                        r.unblock().await;
                        let path = r.path.clone();
                        match r.finish(OUTPUT_DRAIN).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => {
                                tracing::warn!(id, path = %path.display(), error = %e, "cleanup: reading step output")
                            }
                            Err(_) => {
                                tracing::warn!(id, path = %path.display(), "cleanup: output reader still blocked, leaving it")
                            }
                        }
                    }
                }
                Undo::MountPoints(stubs) => {
                    for e in stubs.clean() {
                        tracing::warn!(id, path = %e.path.display(), error = %e.source, "cleanup: removing mount stub");
                    }
                }
                Undo::TaskRootfs(path) => {
                    if let Err(e) = kiln_snapshot::mount::unmount(&path) {
                        tracing::warn!(id, path = %path.display(), error = %e, "cleanup: unmounting the task's rootfs bind");
                    }
                }
                Undo::Network(att) => {
                    let detached = tokio::task::spawn_blocking(move || att.detach()).await;
                    match detached {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(id, error = %e, "cleanup: detaching the step's network")
                        }
                        Err(e) => {
                            tracing::warn!(id, error = %e, "cleanup: detaching the step's network")
                        }
                    }
                }
                Undo::StepDir(dir) => {
                    // Never recurse into a rootfs bind that is still
                    // mounted: rmdir fails on a mount point.
                    let bind = dir.join("rootfs");
                    if let Err(e) = std::fs::remove_dir(&bind) {
                        if e.kind() != std::io::ErrorKind::NotFound {
                            tracing::warn!(id, path = %bind.display(), error = %e, "cleanup: rootfs bind still there; leaving the step dir");
                            continue;
                        }
                    }
                    if let Err(e) = std::fs::remove_dir_all(&dir) {
                        tracing::warn!(id, path = %dir.display(), error = %e, "cleanup: removing step dir");
                    }
                }
            }
        }
    }
}

/// Runs a cleanup call again while containerd is unreachable, for up to
/// [`CLEANUP_RECONNECT`].
async fn retry_unavailable<F, Fut>(mut call: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let start = tokio::time::Instant::now();
    loop {
        match call().await {
            Err(e) if e.kind() == ErrorKind::Unavailable && start.elapsed() < CLEANUP_RECONNECT => {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            r => return r,
        }
    }
}

#[async_trait::async_trait]
impl Executor for ContainerdExecutor {
    async fn run(
        &self,
        step: StepSpec,
        io: StepIo,
        cancel: CancellationToken,
    ) -> Result<ExitStatus> {
        let span = tracing::info_span!("step", id = %step.id);
        self.run_step(step, io, cancel).instrument(span).await
    }

    async fn settle(&self, lease: &LeaseId) {
        let handles = self
            .pending
            .lock()
            .expect("no panic while holding the lock")
            .remove(lease.as_str())
            .unwrap_or_default();
        for h in handles {
            if let Err(e) = h.await {
                tracing::warn!(lease = %lease, error = %e, "cleanup of a step did not finish");
            }
        }
    }
}

#[async_trait::async_trait]
impl Containers for ContainerdExecutor {
    async fn list(&self) -> Result<Vec<String>> {
        self.list_containers().await
    }

    async fn list_of_lease(&self, lease: &LeaseId) -> Result<Vec<String>> {
        self.list_containers_of_lease(lease.as_str()).await
    }

    async fn remove(&self, id: &str) -> Result<()> {
        ContainerdExecutor::remove(self, id).await
    }
}

/// Takes from the cleanup stack of a step that exited 0 what may be
/// undone after its rootfs is handed back: the task (its processes are
/// gone: they all die with the pid namespace's init, whose exit the wait
/// saw), its rootfs bind, the container record, its network attachment
/// and the step dir. Output readers and mount point stubs stay (the stubs
/// are in the rootfs, which is diffed next), and so does everything of a
/// task whose exit was not collected. Order is kept.
fn deferrable(stack: &mut Vec<Undo>) -> Vec<Undo> {
    if stack
        .iter()
        .any(|u| matches!(u, Undo::Task { running: true }))
    {
        return Vec::new();
    }
    let (later, now): (Vec<Undo>, Vec<Undo>) = std::mem::take(stack).into_iter().partition(|u| {
        matches!(
            u,
            Undo::Task { .. }
                | Undo::TaskRootfs(_)
                | Undo::Container
                | Undo::Network(_)
                | Undo::StepDir(_)
        )
    });
    *stack = now;
    later
}

fn mark_exited(stack: &mut [Undo]) {
    for undo in stack.iter_mut() {
        if let Undo::Task { running } = undo {
            *running = false;
        }
    }
}

/// kiln's own capability bounding set (`CapBnd` in `/proc/self/status`).
fn own_bounding_set() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status.lines().find_map(|l| l.strip_prefix("CapBnd:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

/// Binds the step's rootfs at `target` (in the step's 0700 dir) without
/// `nosuid,nodev`, for containerd to mount as the task's rootfs.
///
/// kiln mounts snapshots on the host `nosuid,nodev`, and a bind inherits
/// those flags, so the step would see no setuid binaries work (`sudo` as a
/// `USER`). This bind clears them for the moment containerd binds it into
/// the bundle (as BuildKit has containerd mount the snapshot itself); it is
/// private, so containerd's copy is independent of it, and kiln unmounts
/// it as soon as the task exists.
fn task_rootfs(rootfs: &Path, target: &Path) -> std::io::Result<()> {
    use nix::mount::{mount, MsFlags};
    std::fs::DirBuilder::new().mode(0o700).create(target)?;
    let none = None::<&str>;
    mount(
        Some(rootfs),
        target,
        none,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        none,
    )?;
    let res = mount(
        none,
        target,
        none,
        MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        none,
    )
    .and_then(|()| {
        // Without MS_NOSUID and MS_NODEV in the flags, the remount
        // clears them on this bind only.
        mount(
            none,
            target,
            none,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND,
            none,
        )
    });
    if let Err(e) = res {
        let _ = kiln_snapshot::mount::unmount(target);
        return Err(e.into());
    }
    Ok(())
}

/// Rejects steps runc would reject later with a worse message.
fn validate(step: &StepSpec) -> Result<()> {
    let invalid = |reason| {
        Err(ExecError::InvalidStep {
            id: step.id.clone(),
            reason,
        })
    };
    if step.id.is_empty() || step.id.contains('/') || step.id.starts_with('.') {
        return invalid("container id must be a non-empty name without '/'");
    }
    if step.args.is_empty() {
        return invalid("no command to run");
    }
    if !step.cwd.is_empty() && !step.cwd.starts_with('/') {
        return invalid("working directory must be absolute");
    }
    if step.mounts.iter().any(|m| !m.dest().starts_with('/')) {
        return invalid("mount destination must be absolute");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::{ExtraMount, Network};
    use kiln_snapshot::containerd::LeaseId;

    /// A short name per cleanup item, to compare stacks.
    fn names(stack: &[Undo]) -> Vec<&'static str> {
        stack
            .iter()
            .map(|u| match u {
                Undo::StepDir(_) => "dir",
                Undo::MountPoints(_) => "stubs",
                Undo::TaskRootfs(_) => "bind",
                Undo::Network(_) => "net",
                Undo::Readers(_) => "readers",
                Undo::Container => "container",
                Undo::Task { running: true } => "running task",
                Undo::Task { running: false } => "task",
            })
            .collect()
    }

    #[test]
    fn only_records_of_an_exited_task_are_left_for_later() {
        let mut stack = vec![
            Undo::StepDir("/s".into()),
            Undo::Readers(Vec::new()),
            Undo::Container,
            Undo::TaskRootfs("/s/rootfs".into()),
            Undo::Task { running: false },
        ];
        let later = deferrable(&mut stack);
        assert_eq!(names(&later), ["dir", "container", "bind", "task"]);
        assert_eq!(names(&stack), ["readers"]);

        // A task whose exit was not collected is cleaned up now, whole.
        let mut stack = vec![Undo::Container, Undo::Task { running: true }];
        let later = deferrable(&mut stack);
        assert!(later.is_empty());
        assert_eq!(names(&stack), ["container", "running task"]);
    }

    #[test]
    fn malformed_steps_are_rejected_before_any_io() {
        let ok = StepSpec {
            id: "kiln-1".into(),
            rootfs: "/nonexistent".into(),
            args: vec!["true".into()],
            env: vec![],
            cwd: "/".into(),
            user: String::new(),
            hostname: String::new(),
            extra_hosts: Vec::new(),
            ulimits: Vec::new(),
            network: Network::Host,
            mounts: vec![],
            lease: LeaseId::named("build", "v"),
            timeout: None,
            security: crate::Security::Sandbox,
            pids_limit: None,
            resources: None,
        };
        assert!(validate(&ok).is_ok());
        let check = |f: &dyn Fn(&mut StepSpec), reason: &str| {
            let mut s = ok.clone();
            f(&mut s);
            let err = validate(&s).expect_err(reason);
            assert_eq!(err.kind(), ErrorKind::InvalidArgument);
            assert!(err.to_string().contains(reason), "{err}");
        };
        check(&|s| s.args.clear(), "no command to run");
        check(&|s| s.id = "a/b".into(), "container id");
        check(
            &|s| s.cwd = "work".into(),
            "working directory must be absolute",
        );
        check(
            &|s| {
                s.mounts.push(ExtraMount::Tmpfs {
                    dest: "tmp".into(),
                    size: None,
                })
            },
            "mount destination must be absolute",
        );
    }
}
