//! File ops: COPY, ADD, WORKDIR's mkdir and friends, run in-process on a
//! mounted snapshot (no container).

use super::{location, StepRunner};
use crate::error::{Result, WorkerError};
use crate::fileop;
use crate::ignore::PatternMatcher;
use crate::refs::Ref;
use kiln_solver::{FileActionKind, FileInput, FileOp, Vertex};
use std::path::PathBuf;

/// A source tree a copy reads from.
enum Source {
    Dir {
        dir: PathBuf,
        excludes: Option<PatternMatcher>,
    },
    /// A mounted view snapshot, removed after the copy.
    Mounted(super::layer::HostMount, String),
    Empty(PathBuf),
}

impl Source {
    fn path(&self) -> &std::path::Path {
        match self {
            Source::Dir { dir, .. } => dir,
            Source::Mounted(m, _) => m.path(),
            Source::Empty(p) => p,
        }
    }
}

impl StepRunner {
    pub(super) async fn file(&self, v: &Vertex, op: &FileOp, inputs: &[Ref]) -> Result<Vec<Ref>> {
        let loc = location(v);
        let bad = |reason: String| WorkerError::BadInput {
            location: loc.clone(),
            reason,
        };
        // kiln runs the linear chains the Dockerfile frontend emits: action
        // i modifies the result of action i-1 (the first one an input or
        // scratch), and the last action is the op's only output.
        for (i, a) in op.actions.iter().enumerate() {
            let ok = match (i, a.input) {
                (0, FileInput::Input(_)) | (0, FileInput::Scratch) => true,
                (i, FileInput::Action(p)) => p + 1 == i,
                _ => false,
            };
            if !ok {
                return Err(WorkerError::Unsupported {
                    location: loc,
                    what: "a file op that is not a linear chain of actions".into(),
                });
            }
        }
        let parent = match op.actions.first().map(|a| a.input) {
            Some(FileInput::Input(i)) => match inputs.get(i) {
                Some(Ref::Chain(l)) => l.clone(),
                _ => return Err(bad(format!("file op input {i} is not a snapshot"))),
            },
            _ => Vec::new(),
        };
        let active = self.prepare(&parent).await?;
        let applied = self.apply_actions(v, op, inputs, &active).await;
        if let Err(e) = applied {
            self.discard(active).await;
            return Err(e);
        }
        let layers = self.commit(active).await?;
        Ok(vec![Ref::Chain(layers)])
    }

    async fn apply_actions(
        &self,
        v: &Vertex,
        op: &FileOp,
        inputs: &[Ref],
        active: &super::layer::Active,
    ) -> Result<()> {
        let loc = location(v);
        let dest = self.mount(&active.key, &active.mounts, false)?;
        for a in &op.actions {
            let fail = |e: fileop::FileOpError| WorkerError::FileOp {
                location: loc.clone(),
                message: crate::error::error_chain(&e),
            };
            match &a.action {
                FileActionKind::Copy(c) => {
                    let src = self.copy_source(v, a.secondary_input, inputs).await?;
                    let excludes = match &src {
                        Source::Dir { excludes, .. } => excludes.as_ref(),
                        _ => None,
                    };
                    let (s, d, c2) = (
                        src.path().to_path_buf(),
                        dest.path().to_path_buf(),
                        c.clone(),
                    );
                    let ex = excludes.cloned();
                    // Files from the context become root's (host uids must
                    // not leak); files from a stage or image keep theirs.
                    let keep_owner = !matches!(src, Source::Dir { .. });
                    let r = tokio::task::spawn_blocking(move || {
                        if keep_owner {
                            fileop::copy_keep_owner(&s, &d, &d, &c2, ex.as_ref())
                        } else {
                            fileop::copy(&s, &d, &d, &c2, ex.as_ref())
                        }
                    })
                    .await
                    .map_err(|e| WorkerError::FileOp {
                        location: loc.clone(),
                        message: e.to_string(),
                    })
                    .and_then(|r| r.map_err(fail));
                    self.release(src).await;
                    r?;
                }
                FileActionKind::MkDir(m) => fileop::mkdir(dest.path(), m).map_err(fail)?,
                FileActionKind::MkFile(m) => fileop::mkfile(dest.path(), m).map_err(fail)?,
                FileActionKind::Rm(r) => fileop::rm(dest.path(), r).map_err(fail)?,
                FileActionKind::Symlink(s) => fileop::symlink(dest.path(), s).map_err(fail)?,
            }
        }
        drop(dest);
        Ok(())
    }

    /// Unmounts and removes what [`Self::copy_source`] set up.
    async fn release(&self, src: Source) {
        match src {
            Source::Dir { .. } => {}
            Source::Mounted(m, key) => {
                drop(m);
                if let Err(e) = self.svc.snapshots.remove(&key).await {
                    tracing::warn!(key = %key, error = %e, "cannot remove view snapshot");
                }
            }
            Source::Empty(p) => {
                let _ = std::fs::remove_dir(&p);
            }
        }
    }

    /// Opens the tree a copy reads: the context directory, a mounted view
    /// of another stage's snapshot, or an empty directory for scratch.
    async fn copy_source(
        &self,
        v: &Vertex,
        input: Option<FileInput>,
        inputs: &[Ref],
    ) -> Result<Source> {
        let loc = location(v);
        let r = match input {
            Some(FileInput::Input(i)) => {
                inputs
                    .get(i)
                    .cloned()
                    .ok_or_else(|| WorkerError::BadInput {
                        location: loc.clone(),
                        reason: format!("copy source input {i} does not exist"),
                    })?
            }
            Some(FileInput::Scratch) | None => Ref::scratch(),
            Some(FileInput::Action(_)) => {
                return Err(WorkerError::Unsupported {
                    location: loc,
                    what: "copying from an earlier action of the same file op".into(),
                })
            }
        };
        match r {
            Ref::Local { dir, excludes } => {
                let m = if excludes.is_empty() {
                    None
                } else {
                    Some(
                        PatternMatcher::new(&excludes).map_err(|e| WorkerError::BadInput {
                            location: loc,
                            reason: e.to_string(),
                        })?,
                    )
                };
                Ok(Source::Dir { dir, excludes: m })
            }
            Ref::Chain(layers) if layers.is_empty() => {
                let p = self
                    .mount_dir
                    .join(format!("empty-{}", crate::base::rand_hex()));
                std::fs::create_dir_all(&p).map_err(|e| WorkerError::Io {
                    path: p.display().to_string(),
                    source: e,
                })?;
                Ok(Source::Empty(p))
            }
            Ref::Chain(layers) => {
                let key = format!("kiln-view-{}", crate::base::rand_hex());
                let mounts = self
                    .svc
                    .snapshots
                    .view(&key, &crate::refs::top_snapshot(&layers), &self.lease)
                    .await?;
                match self.mount(&key, &mounts, true) {
                    Ok(m) => Ok(Source::Mounted(m, key)),
                    Err(e) => {
                        let _ = self.svc.snapshots.remove(&key).await;
                        Err(e)
                    }
                }
            }
        }
    }
}
