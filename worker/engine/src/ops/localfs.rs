//! A local directory made a filesystem where an op needs one.
//!
//! A local source (`local://NAME`, a named context used as a stage) is a
//! directory on the host ([`Ref::Local`]): copies and bind mounts read it
//! in place. An exec's root or cache mount, a file op's base, a merge
//! input and an exported image need a snapshot instead, as in BuildKit,
//! whose local source always produces one. The directory's contents (its
//! exclude patterns applied) are copied onto scratch and committed as one
//! layer, the copy a context copy is (files owned by root, as BuildKit's
//! session resets the uid and gid of what it sends; modes and times
//! kept). The layer is cached by the contents' digest, so an unchanged
//! directory reuses it.

use super::{location, StepRunner};
use crate::error::{Result, WorkerError};
use crate::fileop;
use crate::ignore::PatternMatcher;
use crate::refs::{Layer, Ref};
use kiln_solver::{Digest, FileInput, MountType, Op, Vertex};
use std::path::Path;

/// Versions the cache key of a local directory's snapshot.
const KEY_PREFIX: &str = "kiln.local-snapshot.v1\n";

/// Whether `op` reads its input `index` as a whole filesystem (a snapshot)
/// rather than as a directory to copy or bind from.
pub(crate) fn needs_filesystem(op: &Op, index: usize) -> bool {
    match op {
        Op::Exec(e) => e.mounts.iter().any(|m| {
            m.input == Some(index)
                && (m.dest == "/" || matches!(m.mount_type, MountType::Cache { .. }))
        }),
        Op::File(f) => f.actions.iter().any(|a| a.input == FileInput::Input(index)),
        Op::Merge(m) => m.inputs.contains(&index),
        Op::Source(_) => false,
    }
}

/// The cache key of the snapshot of a directory whose (filtered) contents
/// hash to `content`.
fn snapshot_key(content: &Digest) -> Digest {
    Digest::of(format!("{KEY_PREFIX}{content}").as_bytes())
}

/// The copy that imports a whole directory: its contents onto `/`, links
/// kept as links.
fn import_copy() -> kiln_solver::FileCopy {
    kiln_solver::FileCopy {
        src: "/".into(),
        dest: "/".into(),
        dir_copy_contents: true,
        create_dest_path: true,
        ..Default::default()
    }
}

impl StepRunner {
    /// `inputs` with each local directory that `v` reads as a filesystem
    /// ([`needs_filesystem`]) replaced by its snapshot.
    pub(super) async fn filesystems(&self, v: &Vertex, mut inputs: Vec<Ref>) -> Result<Vec<Ref>> {
        for (i, input) in inputs.iter_mut().enumerate() {
            if let Ref::Local { dir, excludes } = &*input {
                if needs_filesystem(&v.op, i) {
                    let layers = self.local_snapshot(&location(v), dir, excludes).await?;
                    *input = Ref::Chain(layers);
                }
            }
        }
        Ok(inputs)
    }

    /// The one-layer snapshot of `dir`'s contents without what `excludes`
    /// hides: a cached one when the contents are unchanged, else a copy
    /// committed and recorded. `loc` names the step it is made for, in
    /// errors.
    pub(crate) async fn local_snapshot(
        &self,
        loc: &str,
        dir: &Path,
        excludes: &[String],
    ) -> Result<Vec<Layer>> {
        let loc = loc.to_string();
        let bad = |reason: String| WorkerError::BadInput {
            location: loc.clone(),
            reason,
        };
        let content = {
            let hashes = self.hashes.clone();
            let (d, ex) = (dir.to_path_buf(), excludes.to_vec());
            tokio::task::spawn_blocking(move || {
                hashes.digest(&d, &kiln_context::CopySelection::all(), &ex)
            })
            .await
            .map_err(|e| bad(e.to_string()))?
            .map_err(|e| bad(crate::error::error_chain(&e)))?
        };
        let key = snapshot_key(&content);
        if let Some(mut outs) =
            crate::cache::load(&self.svc, &key, &self.lease, &self.added, &self.uses).await?
        {
            if outs.len() == 1 {
                tracing::debug!(dir = %dir.display(), "local directory's snapshot reused");
                return Ok(outs.remove(0));
            }
        }
        let matcher = if excludes.is_empty() {
            None
        } else {
            Some(PatternMatcher::new(excludes).map_err(|e| bad(e.to_string()))?)
        };
        let active = self.prepare(&[]).await?;
        let copied = match self.mount(&active.key, &active.mounts, false) {
            Ok(dest) => {
                let (src, to) = (dir.to_path_buf(), dest.path().to_path_buf());
                let r = tokio::task::spawn_blocking(move || {
                    fileop::copy(&src, &to, &to, &import_copy(), matcher.as_ref())
                })
                .await;
                drop(dest);
                match r {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(WorkerError::FileOp {
                        location: loc.clone(),
                        message: crate::error::error_chain(&e),
                    }),
                    Err(e) => Err(bad(e.to_string())),
                }
            }
            Err(e) => Err(e),
        };
        if let Err(e) = copied {
            self.discard(active).await;
            return Err(e);
        }
        let layers = self.commit(active, None).await?;
        // A record that cannot be saved costs a copy next time, not this
        // build.
        let what = format!("local directory {}", dir.display());
        if let Err(e) = crate::cache::save(
            &self.svc,
            &key,
            std::slice::from_ref(&layers),
            crate::cache::TYPE_REGULAR,
            &what,
        )
        .await
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot save a cache record");
        }
        Ok(layers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_solver::{
        ExecOp, FileAction, FileActionKind, FileCopy, FileMkDir, FileOp, MergeOp, Meta, Mount,
        NetMode, SecurityMode, SourceOp,
    };
    use std::path::PathBuf;

    fn mount(input: Option<usize>, dest: &str, mount_type: MountType) -> Mount {
        Mount {
            input,
            selector: String::new(),
            dest: dest.into(),
            output: None,
            readonly: false,
            mount_type,
        }
    }

    fn exec(mounts: Vec<Mount>) -> Op {
        Op::Exec(ExecOp {
            meta: Meta::default(),
            mounts,
            network: NetMode::Unset,
            security: SecurityMode::Sandbox,
            secret_env: Vec::new(),
            platform: None,
        })
    }

    #[test]
    fn an_exec_needs_a_filesystem_for_its_root_and_cache_mounts_only() {
        let op = exec(vec![
            mount(Some(0), "/", MountType::Bind),
            mount(Some(1), "/ctx", MountType::Bind),
            mount(
                Some(2),
                "/cache",
                MountType::Cache {
                    id: "c".into(),
                    sharing: Default::default(),
                },
            ),
        ]);
        assert!(needs_filesystem(&op, 0));
        assert!(
            !needs_filesystem(&op, 1),
            "a bind mount reads the directory"
        );
        assert!(needs_filesystem(&op, 2));
        assert!(!needs_filesystem(&op, 3));
    }

    #[test]
    fn a_file_op_needs_a_filesystem_for_its_base_not_its_copy_source() {
        let op = Op::File(FileOp {
            actions: vec![
                FileAction {
                    input: FileInput::Input(0),
                    secondary_input: Some(FileInput::Input(1)),
                    output: None,
                    action: FileActionKind::Copy(FileCopy::default()),
                },
                FileAction {
                    input: FileInput::Action(0),
                    secondary_input: None,
                    output: Some(0),
                    action: FileActionKind::MkDir(FileMkDir {
                        path: "/x".into(),
                        mode: 0o755,
                        make_parents: true,
                        owner: None,
                        timestamp: None,
                    }),
                },
            ],
        });
        assert!(needs_filesystem(&op, 0));
        assert!(!needs_filesystem(&op, 1));
    }

    #[test]
    fn a_merge_needs_a_filesystem_for_each_input() {
        let op = Op::Merge(MergeOp { inputs: vec![0, 2] });
        assert!(needs_filesystem(&op, 0));
        assert!(!needs_filesystem(&op, 1));
        assert!(needs_filesystem(&op, 2));
        let src = Op::Source(SourceOp {
            identifier: "local://ctx".into(),
            attrs: Default::default(),
            platform: None,
        });
        assert!(!needs_filesystem(&src, 0));
    }

    #[test]
    fn the_snapshot_key_follows_the_contents() {
        let a = snapshot_key(&Digest::of(b"a"));
        assert_eq!(a, snapshot_key(&Digest::of(b"a")));
        assert_ne!(a, snapshot_key(&Digest::of(b"b")));
        assert_ne!(a, Digest::of(b"a"), "not an op's own key");
    }

    #[test]
    fn the_import_copies_the_whole_tree_onto_root() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (src, dest) = (dir.path().join("src"), dir.path().join("dest"));
        std::fs::create_dir_all(src.join("sub")).expect("mkdir");
        std::fs::create_dir_all(&dest).expect("mkdir");
        std::fs::write(src.join("sub/f"), "f").expect("write");
        std::fs::write(src.join("skip.log"), "x").expect("write");
        std::os::unix::fs::symlink("sub/f", src.join("link")).expect("symlink");
        let m = PatternMatcher::new(&["*.log".to_string()]).expect("patterns");
        fileop::copy(&src, &dest, &dest, &import_copy(), Some(&m)).expect("copy");
        assert_eq!(
            std::fs::read_to_string(dest.join("sub/f")).expect("read"),
            "f"
        );
        assert!(!dest.join("skip.log").exists(), "excluded file copied");
        assert_eq!(
            std::fs::read_link(dest.join("link")).expect("a link"),
            PathBuf::from("sub/f")
        );
    }
}
