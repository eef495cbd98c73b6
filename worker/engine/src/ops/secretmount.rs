//! Secrets in a step: a secret mount is a file on a small tmpfs of its
//! own, bound read-only at the target, so the value never touches a disk
//! or a snapshot; a secret env var is added to the step's process only.
//! Neither is part of the step's cache key (the graph holds ids only).

use super::bindmount::BindHold;
use super::StepRunner;
use crate::error::{Result, WorkerError};
use crate::secrets::{SecretError, MAX_SECRET_SIZE};
use kiln_snapshot::mount::{Mount, MountGuard};
use kiln_solver::{SecretEnv, SecretMount};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;

impl StepRunner {
    /// The secret's bytes: `None` when the client has none and `optional`.
    async fn secret(&self, loc: &str, id: &str, optional: bool) -> Result<Option<Vec<u8>>> {
        let fail = |reason: String| WorkerError::Secret {
            location: loc.to_string(),
            source: SecretError {
                id: id.to_string(),
                reason,
            },
        };
        match self.secrets.get(id).await {
            Ok(Some(v)) if v.len() > MAX_SECRET_SIZE => Err(fail(format!(
                "too big ({} bytes; at most {MAX_SECRET_SIZE})",
                v.len()
            ))),
            Ok(Some(v)) => Ok(Some(v)),
            Ok(None) if optional => Ok(None),
            Ok(None) => Err(fail("not found".into())),
            Err(e) => Err(WorkerError::Secret {
                location: loc.to_string(),
                source: e,
            }),
        }
    }

    /// The host file holding secret `s` (on its own tmpfs) and what holds
    /// it; `None` when the secret is optional and the client has none.
    pub(super) async fn secret_file(
        &self,
        loc: &str,
        s: &SecretMount,
    ) -> Result<Option<(PathBuf, BindHold)>> {
        let Some(value) = self.secret(loc, &s.id, s.optional).await? else {
            return Ok(None);
        };
        let io = |path: &std::path::Path, e: std::io::Error| WorkerError::Io {
            path: format!("{loc}{}", path.display()),
            source: e,
        };
        let dir = self
            .mount_dir
            .join(format!("secret-{}", crate::base::rand_hex()));
        std::fs::create_dir_all(&dir).map_err(|e| io(&dir, e))?;
        let tmpfs = Mount {
            mount_type: "tmpfs".into(),
            source: "tmpfs".into(),
            target: String::new(),
            options: vec![
                "nodev".into(),
                "nosuid".into(),
                "noexec".into(),
                "mode=0755".into(),
                format!("size={}", value.len() + 64 * 1024),
            ],
        };
        let guard = match MountGuard::mount(&[tmpfs], dir.clone()) {
            Ok(g) => g,
            Err(e) => {
                let _ = std::fs::remove_dir(&dir);
                return Err(kiln_snapshot::SnapshotError::from(e).into());
            }
        };
        let file = dir.join("secret");
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&file)?;
            f.write_all(&value)?;
            drop(f);
            std::os::unix::fs::chown(&file, Some(s.uid), Some(s.gid))?;
            std::fs::set_permissions(
                &file,
                std::os::unix::fs::PermissionsExt::from_mode(s.mode & 0o7777),
            )
        })();
        let hold = BindHold::Tmpfs(guard, dir);
        if let Err(e) = written {
            let err = io(&file, e);
            self.release_binds(vec![hold]).await;
            return Err(err);
        }
        Ok(Some((file, hold)))
    }

    /// `NAME=value` for each secret env var the client has.
    pub(super) async fn secret_env(&self, loc: &str, envs: &[SecretEnv]) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for e in envs {
            if let Some(v) = self.secret(loc, &e.id, e.optional).await? {
                out.push(format!("{}={}", e.name, String::from_utf8_lossy(&v)));
            }
        }
        Ok(out)
    }
}
