//! SSH agents in a step: each ssh mount is a unix socket kiln listens on,
//! in a private directory of the build, bound into the step at the
//! target with the mount's owner and mode. Every connection the step makes
//! to it is forwarded to a fresh connection to the client's agent
//! ([`crate::ssh::SshSource::connect`]); the socket and its forwarder go
//! away with the step. Nothing of it reaches a snapshot or a log.

use super::bindmount::BindHold;
use super::StepRunner;
use crate::error::{Result, WorkerError};
use crate::ssh::SshSource;
use kiln_solver::SshMount;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A step's agent socket: its directory and the task accepting on it.
pub(crate) struct SshSocket {
    dir: PathBuf,
    stop: CancellationToken,
    accept: tokio::task::JoinHandle<()>,
}

impl SshSocket {
    /// Stops forwarding (open connections too) and removes the socket.
    pub(crate) fn close(self) {
        self.stop.cancel();
        self.accept.abort();
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot remove an ssh socket's directory");
        }
    }
}

impl StepRunner {
    /// The host socket for ssh mount `s` and what holds it; `None` when
    /// the agent is optional and not forwarded (the mount is skipped, as
    /// BuildKit skips it).
    pub(super) async fn ssh_socket(
        &self,
        loc: &str,
        s: &SshMount,
    ) -> Result<Option<(PathBuf, BindHold)>> {
        match self.ssh.check(&s.id).await {
            Ok(()) => {}
            Err(_) if s.optional => return Ok(None),
            Err(source) => {
                return Err(WorkerError::Ssh {
                    location: loc.to_string(),
                    source,
                })
            }
        }
        let dir = self
            .mount_dir
            .join(format!("ssh-{}", crate::base::rand_hex()));
        let path = dir.join("ssh_auth_sock");
        let io = |p: &std::path::Path, e: std::io::Error| WorkerError::Io {
            path: format!("{loc}{}", p.display()),
            source: e,
        };
        let listener = (|| {
            std::fs::create_dir_all(&dir)?;
            std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
            // A socket's path is limited to 107 bytes and the build's
            // mount dir may be deeper than that: bind through the
            // directory's descriptor, whose /proc path is short.
            let handle = std::fs::File::open(&dir)?;
            let short = format!(
                "/proc/self/fd/{}/ssh_auth_sock",
                std::os::fd::AsRawFd::as_raw_fd(&handle)
            );
            let listener = tokio::net::UnixListener::bind(&short)?;
            drop(handle);
            std::os::unix::fs::chown(&path, Some(s.uid), Some(s.gid))?;
            std::fs::set_permissions(
                &path,
                std::os::unix::fs::PermissionsExt::from_mode(s.mode & 0o777),
            )?;
            Ok(listener)
        })();
        let listener = match listener {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(io(&path, e));
            }
        };
        let stop = CancellationToken::new();
        let accept = tokio::spawn(forward(
            listener,
            self.ssh.clone(),
            s.agent_id().to_string(),
            stop.clone(),
        ));
        Ok(Some((path, BindHold::Ssh(SshSocket { dir, stop, accept }))))
    }
}

/// Accepts the step's connections until `stop`, each forwarded to its own
/// connection to agent `id`.
async fn forward(
    listener: tokio::net::UnixListener,
    source: Arc<dyn SshSource>,
    id: String,
    stop: CancellationToken,
) {
    loop {
        let conn = tokio::select! {
            _ = stop.cancelled() => return,
            c = listener.accept() => c,
        };
        let mut conn = match conn {
            Ok((c, _)) => c,
            Err(e) => {
                tracing::warn!(error = %e, "ssh socket: accept failed");
                return;
            }
        };
        let (source, id, stop) = (source.clone(), id.clone(), stop.clone());
        tokio::spawn(async move {
            let mut agent = match source.connect(&id).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "ssh socket: cannot reach the agent");
                    return;
                }
            };
            tokio::select! {
                _ = stop.cancelled() => {}
                r = tokio::io::copy_bidirectional(&mut conn, &mut agent) => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "ssh socket: a forwarded connection ended");
                    }
                }
            }
        });
    }
}
