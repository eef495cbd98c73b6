//! SSH agents in a step: each ssh mount is an [`AgentSocket`] kiln
//! listens on, in a private directory of the build, bound into the step at
//! the target with the mount's owner and mode. Every connection the step
//! makes to it is forwarded to a fresh connection to the client's agent
//! ([`crate::ssh::SshSource::connect`]); the socket and its forwarder go
//! away with the step. Nothing of it reaches a snapshot or a log.

use super::bindmount::BindHold;
use super::StepRunner;
use crate::error::{Result, WorkerError};
use crate::ssh::AgentSocket;
use kiln_solver::SshMount;
use std::path::PathBuf;

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
        let socket = AgentSocket::listen(
            dir.clone(),
            self.ssh.clone(),
            s.agent_id(),
            (s.uid, s.gid, s.mode),
        )
        .map_err(|e| WorkerError::Io {
            path: format!("{loc}{}", dir.display()),
            source: e,
        })?;
        Ok(Some((socket.path().to_path_buf(), BindHold::Ssh(socket))))
    }
}
