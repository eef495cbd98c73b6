//! Exec ops: a RUN step as a containerd task on a prepared snapshot.
//!
//! Everything a step holds until it ends (cache mounts, bind sources, the
//! active snapshot) goes into one [`Held`], released in one place on every
//! path, success or error, exactly once: the rootfs is unmounted first,
//! then cache mounts and bind sources are released, then the active
//! snapshot is committed (the step ran and exited as allowed) or discarded.

use super::bindmount::BindHold;
use super::cachemount::HeldCacheMount;
use super::layer::Active;
use super::{location, StepRunner};
use crate::error::{Result, WorkerError};
use crate::progress::{LogStream, ProgressEvent};
use crate::refs::{Layer, Ref};
use kiln_shim::{ExecError, ExtraMount, Network, OutputStream, Security, StepIo, StepSpec};
use kiln_solver::{ExecOp, Mount, MountType, NetMode, SecurityMode, Vertex, VertexId};
use tokio_util::sync::CancellationToken;

/// What an exec step holds until it ends; see the module docs.
#[derive(Default)]
struct Held {
    cache_mounts: Vec<HeldCacheMount>,
    binds: Vec<BindHold>,
    /// Set once the step's snapshot is prepared.
    active: Option<Active>,
}

impl StepRunner {
    pub(super) async fn exec(
        &self,
        id: VertexId,
        v: &Vertex,
        op: &ExecOp,
        inputs: &[Ref],
        cancel: CancellationToken,
    ) -> Result<Vec<Ref>> {
        let loc = location(v);
        if let Some(p) = &op.platform {
            check_emulation(&loc, p)?;
        }
        let root =
            op.mounts
                .iter()
                .find(|m| m.dest == "/")
                .ok_or_else(|| WorkerError::BadInput {
                    location: loc.clone(),
                    reason: "exec has no root mount".into(),
                })?;
        let parent = match root.input {
            None => Vec::new(),
            Some(i) => match inputs.get(i) {
                Some(Ref::Chain(layers)) => layers.clone(),
                Some(Ref::Local { .. }) => {
                    return Err(WorkerError::BadInput {
                        location: loc,
                        reason: "a local directory cannot be a root filesystem".into(),
                    })
                }
                None => {
                    return Err(WorkerError::BadInput {
                        location: loc,
                        reason: format!("root mount input {i} does not exist"),
                    })
                }
            },
        };
        let mut held = Held::default();
        let ran = self
            .run_held(id, op, inputs, &loc, &parent, cancel, &mut held)
            .await;
        let Held {
            cache_mounts,
            binds,
            active,
        } = held;
        self.release_cache_mounts(cache_mounts).await;
        self.release_binds(binds).await;
        if let Err(e) = ran {
            if let Some(active) = active {
                self.discard(active).await;
            }
            return Err(e);
        }
        let active = active.expect("a step that ran has prepared its snapshot");
        let layers = self.commit_step(active, id).await?;
        let n = root.output.map(|o| o + 1).unwrap_or(1);
        Ok(vec![Ref::Chain(layers); n])
    }

    /// Sets up the step's mounts and snapshot (all kept in `held`, for
    /// [`StepRunner::exec`] to release) and runs it; `Ok` when it exited
    /// as allowed. The rootfs mount is dropped on return.
    #[allow(
        clippy::too_many_arguments,
        reason = "the step's parts, passed through once"
    )]
    async fn run_held(
        &self,
        id: VertexId,
        op: &ExecOp,
        inputs: &[Ref],
        loc: &str,
        parent: &[Layer],
        cancel: CancellationToken,
        held: &mut Held,
    ) -> Result<()> {
        let extra = self.extra_mounts(op, inputs, loc, held).await?;
        let secret_env = self.secret_env(loc, &op.secret_env).await?;
        let active = held.active.insert(self.prepare(parent).await?);
        let mounted = self.mount(&active.key, &active.mounts, false)?;
        let limits =
            crate::steplog::LogLimits::current().map_err(|source| WorkerError::LogLimit {
                location: loc.to_string(),
                source,
            })?;
        // Bounded: a reader that outruns us waits (the FIFO fills and the
        // step's write blocks) rather than queueing without limit. We read
        // as fast as chunks come and drop what is clipped, so a step that
        // floods its output still runs at full speed.
        let (tx, mut rx) =
            tokio::sync::mpsc::channel::<(OutputStream, Vec<u8>)>(kiln_shim::OUTPUT_QUEUE);
        let progress = self.progress.clone();
        let vertex = id.0;
        let forward = tokio::spawn(async move {
            let started = std::time::Instant::now();
            let mut stdout = crate::steplog::StreamClip::new(limits, started);
            let mut stderr = crate::steplog::StreamClip::new(limits, started);
            while let Some((stream, data)) = rx.recv().await {
                let (clip, stream) = match stream {
                    OutputStream::Stdout => (&mut stdout, LogStream::Stdout),
                    OutputStream::Stderr => (&mut stderr, LogStream::Stderr),
                };
                let Some(data) = clip.pass(&data, std::time::Instant::now()) else {
                    continue;
                };
                progress
                    .send(ProgressEvent::Log {
                        vertex,
                        stream,
                        data,
                    })
                    .await;
            }
        });
        let spec = StepSpec {
            id: format!("kiln-{}", crate::base::rand_hex()),
            rootfs: mounted.path().to_path_buf(),
            args: op.meta.args.clone(),
            // Proxy variables come after the step's own, as BuildKit's
            // executor appends them; they are not in the definition (nor
            // the cache key), and neither are secret env vars.
            env: op
                .meta
                .env
                .iter()
                .cloned()
                .chain(op.meta.proxy_env.iter().flat_map(|p| p.env()))
                .chain(secret_env)
                .collect(),
            cwd: if op.meta.cwd.is_empty() {
                "/".into()
            } else {
                op.meta.cwd.clone()
            },
            user: op.meta.user.clone(),
            hostname: op.meta.hostname.clone(),
            extra_hosts: op.meta.extra_hosts.clone(),
            ulimits: op.meta.ulimits.clone(),
            network: match op.network {
                NetMode::None => Network::None,
                NetMode::Host => Network::Host,
                NetMode::Unset => Network::Sandbox,
            },
            mounts: extra,
            lease: self.lease.clone(),
            timeout: None,
            // Granting insecure is the daemon's entitlement check, done
            // before the build reaches the engine.
            security: match op.security {
                SecurityMode::Sandbox => Security::Sandbox,
                SecurityMode::Insecure => Security::Insecure,
            },
            pids_limit: Some(kiln_shim::DEFAULT_PIDS_LIMIT),
            resources: op.meta.resources.as_deref().cloned(),
        };
        let status = self
            .executor
            .run(
                spec,
                StepIo {
                    output: tx,
                    stdin: None,
                },
                cancel,
            )
            .await;
        let _ = forward.await;
        drop(mounted);
        let status = match status {
            Ok(s) => s,
            Err(ExecError::Cancelled { .. }) => return Err(WorkerError::Cancelled),
            Err(ExecError::User { source, .. }) => {
                return Err(WorkerError::StepNotStarted {
                    location: loc.to_string(),
                    command: op.meta.args.join(" "),
                    reason: source.to_string(),
                })
            }
            // The runtime's refusal (no such binary, bad cwd): what it
            // said, without the containerd call and container id.
            Err(ExecError::Containerd(kiln_snapshot::SnapshotError::Rpc {
                method: "Tasks.Create" | "Tasks.Start",
                message,
                ..
            })) => {
                return Err(WorkerError::StepNotStarted {
                    location: loc.to_string(),
                    command: op.meta.args.join(" "),
                    reason: message,
                })
            }
            Err(e) => {
                return Err(WorkerError::Exec {
                    location: loc.to_string(),
                    error: e,
                })
            }
        };
        if !op.meta.exit_ok(status.code) {
            return Err(WorkerError::StepFailed {
                location: loc.to_string(),
                command: op.meta.args.join(" "),
                code: status.code,
            });
        }
        Ok(())
    }

    /// The step's mounts other than `/`; what they hold goes into `held`
    /// as it is acquired.
    async fn extra_mounts(
        &self,
        op: &ExecOp,
        inputs: &[Ref],
        loc: &str,
        held: &mut Held,
    ) -> Result<Vec<ExtraMount>> {
        let loc = loc.to_string();
        let mut extra = Vec::new();
        for m in op.mounts.iter().filter(|m| m.dest != "/") {
            match &m.mount_type {
                MountType::Tmpfs { size } => extra.push(ExtraMount::Tmpfs {
                    dest: m.dest.clone(),
                    size: Some(*size).filter(|s| *s > 0),
                }),
                MountType::Cache { id, sharing } => {
                    let base = match m.input.map(|i| inputs.get(i)) {
                        None => &[][..],
                        Some(Some(Ref::Chain(layers))) => layers.as_slice(),
                        Some(_) => {
                            return Err(WorkerError::BadInput {
                                location: loc,
                                reason: format!(
                                    "the base of cache mount {} is not a filesystem",
                                    m.dest
                                ),
                            });
                        }
                    };
                    let (source, mount) = self
                        .cache_mount(id, *sharing, base, &m.selector, &loc)
                        .await?;
                    held.cache_mounts.push(mount);
                    extra.push(ExtraMount::Bind {
                        source,
                        dest: m.dest.clone(),
                        readonly: m.readonly,
                    });
                }
                MountType::Bind => {
                    let (source, hold) = self
                        .bind_source(&loc, m, inputs)
                        .await
                        .map_err(|e| unchecked_bind_error(op, m, inputs, e))?;
                    held.binds.push(hold);
                    extra.push(ExtraMount::Bind {
                        source,
                        dest: m.dest.clone(),
                        readonly: m.readonly,
                    });
                }
                MountType::Ssh(s) => {
                    if let Some((source, hold)) = self.ssh_socket(&loc, s).await? {
                        held.binds.push(hold);
                        extra.push(ExtraMount::Bind {
                            source,
                            dest: m.dest.clone(),
                            readonly: false,
                        });
                    }
                }
                MountType::Secret(s) => {
                    if let Some((source, hold)) = self.secret_file(&loc, s).await? {
                        held.binds.push(hold);
                        extra.push(ExtraMount::Bind {
                            source,
                            dest: m.dest.clone(),
                            readonly: true,
                        });
                    }
                }
            }
        }
        Ok(extra)
    }
}

/// Fails a step for platform `p` that nothing on this machine can run,
/// before it runs (else runc would fail with a bare "exec format error").
fn check_emulation(loc: &str, p: &kiln_solver::Platform) -> Result<()> {
    use kiln_shim::emulation::{qemu_name, support, Support};
    let host = crate::oci::worker_platform();
    let reason = match support(&host.architecture, &p.os, &p.architecture) {
        Support::Native | Support::Emulated { .. } => return Ok(()),
        _ if p.os != "linux" => format!("kiln runs steps of {} only", host.os),
        Support::NotFixed { handler } => format!(
            "the binfmt_misc handler {handler:?} matches it but lacks the F (fix binary) flag, \
             so it cannot run inside a container; register it again with flags F \
             (as Debian's qemu-user-static package does)"
        ),
        Support::Missing => format!(
            "no binfmt_misc handler for it is registered (QEMU user emulation: install \
             Debian's qemu-user-static package, which registers qemu-{} with flags F)",
            qemu_name(&p.architecture)
        ),
    };
    Err(WorkerError::NoEmulation {
        location: loc.to_string(),
        platform: p.to_string(),
        host: host.to_string(),
        reason,
    })
}

/// A bind mount's missing source as BuildKit reports it. BuildKit
/// checksums the mount's source for the cache key, and that fails first,
/// unless the source is scratch or the very tree the step runs on; then
/// the runtime's open of the source fails the step.
fn unchecked_bind_error(op: &ExecOp, m: &Mount, inputs: &[Ref], e: WorkerError) -> WorkerError {
    let WorkerError::SourceNotFound { location, path, .. } = e else {
        return e;
    };
    let source = m.input.and_then(|i| inputs.get(i));
    let root = op
        .mounts
        .iter()
        .find(|r| r.dest == "/")
        .and_then(|r| r.input.and_then(|i| inputs.get(i)));
    let unchecked = match (source, root) {
        (None, _) => true,
        (Some(Ref::Chain(s)), _) if s.is_empty() => true,
        (Some(Ref::Chain(s)), Some(Ref::Chain(r))) => {
            crate::refs::top_snapshot(s) == crate::refs::top_snapshot(r)
        }
        _ => false,
    };
    if !unchecked {
        return WorkerError::SourceNotFound {
            location,
            reference: source.map(Ref::name).unwrap_or_default(),
            path,
        };
    }
    WorkerError::StepNotStarted {
        location,
        command: op.meta.args.join(" "),
        reason: format!("open {path}: no such file or directory"),
    }
}
