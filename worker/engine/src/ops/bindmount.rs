//! RUN bind mounts (`--mount=type=bind`, LLB's bind mounts of an input):
//! the tree of an input (a stage's or image's snapshot, or the build
//! context), or one path in it, bound into the step. Read-only by
//! default; a writable one (`rw`) gets a throwaway copy, so its writes
//! are discarded as BuildKit discards them. The context is seen through
//! its ignore patterns: a path `.dockerignore` hides is not there.

use super::layer::HostMount;
use super::StepRunner;
use crate::error::{Result, WorkerError};
use crate::refs::{self, Ref};
use kiln_context::ignore::PatternMatcher;
use kiln_solver::{FileCopy, Mount};
use std::path::{Path, PathBuf};

/// What a bind mount holds while its step runs; released with
/// [`StepRunner::release_binds`].
pub(super) enum BindHold {
    /// A path used in place (the context, read-only, nothing hidden).
    InPlace,
    /// A directory kiln filled for this mount, removed afterwards.
    Copy(PathBuf),
    /// A snapshot (view, or an active one for `rw`), removed afterwards.
    Snapshot(HostMount, String),
    /// A tmpfs of a secret, unmounted and its mount point removed.
    Tmpfs(kiln_snapshot::mount::MountGuard, PathBuf),
    /// An SSH agent socket and its forwarder, stopped and removed.
    Ssh(crate::ssh::AgentSocket),
}

impl StepRunner {
    /// The host path to bind for `m`, and what holds it.
    pub(super) async fn bind_source(
        &self,
        loc: &str,
        m: &Mount,
        inputs: &[Ref],
    ) -> Result<(PathBuf, BindHold)> {
        let bad = |reason: String| WorkerError::BadInput {
            location: loc.to_string(),
            reason,
        };
        let input = match m.input {
            None => Ref::scratch(),
            Some(i) => inputs
                .get(i)
                .cloned()
                .ok_or_else(|| bad(format!("bind mount input {i} does not exist")))?,
        };
        let selector = if m.selector.is_empty() {
            "/"
        } else {
            m.selector.as_str()
        };
        let reference = input.name();
        match input {
            Ref::Local { dir, excludes } if excludes.is_empty() && m.readonly => {
                let path = self.resolve_in(loc, &reference, &dir, selector, None)?;
                Ok((path, BindHold::InPlace))
            }
            Ref::Local { dir, excludes } => {
                let hide = if excludes.is_empty() {
                    None
                } else {
                    Some(PatternMatcher::new(&excludes).map_err(|e| bad(e.to_string()))?)
                };
                // Fails as the mount would: the source must exist and be
                // visible.
                let source = self.resolve_in(loc, &reference, &dir, selector, hide.as_ref())?;
                let file_name = (!source.is_dir())
                    .then(|| source.file_name().map(|n| n.to_os_string()))
                    .flatten();
                let copy = self.fresh_dir(loc, "bind")?;
                let op = FileCopy {
                    src: selector.to_string(),
                    dest: "/".into(),
                    follow_symlink: true,
                    dir_copy_contents: true,
                    create_dest_path: true,
                    ..FileCopy::default()
                };
                let (src, dest, h) = (dir.clone(), copy.clone(), hide);
                let copied = tokio::task::spawn_blocking(move || {
                    crate::fileop::copy(&src, &dest, &dest, &op, h.as_ref())
                })
                .await
                .map_err(|e| bad(e.to_string()))?;
                if let Err(e) = copied {
                    let _ = std::fs::remove_dir_all(&copy);
                    return Err(WorkerError::FileOp {
                        location: loc.to_string(),
                        message: crate::error::error_chain(&e),
                    });
                }
                // A file source was copied into the directory by its name.
                let path = match file_name {
                    Some(n) => copy.join(n),
                    None => copy.clone(),
                };
                Ok((path, BindHold::Copy(copy)))
            }
            Ref::Chain(layers) if layers.is_empty() => {
                let dir = self.fresh_dir(loc, "bind")?;
                if selector != "/" {
                    let _ = std::fs::remove_dir(&dir);
                    return Err(WorkerError::SourceNotFound {
                        location: loc.to_string(),
                        reference,
                        path: format!("/{}", selector.trim_start_matches('/')),
                    });
                }
                Ok((dir.clone(), BindHold::Copy(dir)))
            }
            Ref::Chain(layers) => {
                let parent = refs::top_snapshot(&layers);
                let (key, mounts) = if m.readonly {
                    let key = format!("kiln-view-{}", crate::base::rand_hex());
                    let mounts = self.svc.snapshots.view(&key, &parent, &self.lease).await?;
                    (key, mounts)
                } else {
                    let key = format!("kiln-active-{}", crate::base::rand_hex());
                    let mounts = self
                        .svc
                        .snapshots
                        .prepare(&key, &parent, &self.lease)
                        .await?;
                    (key, mounts)
                };
                let mounted = match self.mount(&key, &mounts, m.readonly) {
                    Ok(h) => h,
                    Err(e) => {
                        let _ = self.svc.snapshots.remove(&key).await;
                        return Err(e);
                    }
                };
                match self.resolve_in(loc, &reference, mounted.path(), selector, None) {
                    Ok(path) => Ok((path, BindHold::Snapshot(mounted, key))),
                    Err(e) => {
                        self.release_binds(vec![BindHold::Snapshot(mounted, key)])
                            .await;
                        Err(e)
                    }
                }
            }
        }
    }

    /// Releases what [`StepRunner::bind_source`] holds.
    pub(super) async fn release_binds(&self, holds: Vec<BindHold>) {
        for h in holds {
            match h {
                BindHold::InPlace => {}
                BindHold::Copy(dir) => {
                    if let Err(e) = std::fs::remove_dir_all(&dir) {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a bind mount's copy");
                    }
                }
                BindHold::Tmpfs(guard, dir) => {
                    drop(guard);
                    if let Err(e) = std::fs::remove_dir(&dir) {
                        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a secret's mount point");
                    }
                }
                BindHold::Ssh(socket) => drop(socket),
                BindHold::Snapshot(mounted, key) => {
                    drop(mounted);
                    if let Err(e) = self.svc.snapshots.remove(&key).await {
                        tracing::warn!(key = %key, error = %e, "cannot remove a bind mount's snapshot");
                    }
                }
            }
        }
    }

    /// `path` inside `root` (the input named `reference`), symlinks
    /// resolved without leaving it; it must exist (and not be hidden).
    fn resolve_in(
        &self,
        loc: &str,
        reference: &str,
        root: &Path,
        path: &str,
        hide: Option<&PatternMatcher>,
    ) -> Result<PathBuf> {
        let not_found = || WorkerError::SourceNotFound {
            location: loc.to_string(),
            reference: reference.to_string(),
            path: format!("/{}", path.trim_start_matches('/')),
        };
        let r = kiln_context::path::resolve(root, Path::new(path), true, hide)
            .map_err(|_| not_found())?;
        if r.hidden || std::fs::symlink_metadata(&r.host).is_err() {
            return Err(not_found());
        }
        Ok(r.host)
    }

    /// A new empty directory below the build's mount dir.
    fn fresh_dir(&self, loc: &str, what: &str) -> Result<PathBuf> {
        let dir = self
            .mount_dir
            .join(format!("{what}-{}", crate::base::rand_hex()));
        std::fs::create_dir_all(&dir).map_err(|e| WorkerError::Io {
            path: format!("{loc}: {}", dir.display()),
            source: e,
        })?;
        Ok(dir)
    }
}
