//! File ops: COPY, ADD, WORKDIR's mkdir and friends, run in-process on a
//! mounted snapshot (no container).

use super::{location, StepRunner};
use crate::error::{Result, WorkerError};
use crate::fileop;
use crate::fileop::reuse::{self, CopyReuse, Manifest};
use crate::ignore::PatternMatcher;
use crate::refs::{self, Layer, Ref};
use kiln_snapshot::mount::{layer_dirs, overlay_dirs};
use kiln_snapshot::Digest;
use kiln_solver::{FileAction, FileActionKind, FileInput, FileOp, Vertex, VertexId};
use std::collections::HashMap;
use std::path::PathBuf;

/// A source tree a copy reads from.
enum Source {
    Dir {
        dir: PathBuf,
        excludes: Option<PatternMatcher>,
    },
    /// A mounted read-only view, and the view snapshot to remove after the
    /// copy (none for a view of a snapshot this build committed, mounted
    /// from its directories), and the committed layer directories it shows
    /// (topmost first; empty when unknown).
    Mounted(super::layer::HostMount, Option<String>, Vec<PathBuf>),
    Empty(PathBuf),
}

impl Source {
    fn path(&self) -> &std::path::Path {
        match self {
            Source::Dir { dir, .. } => dir,
            Source::Mounted(m, _, _) => m.path(),
            Source::Empty(p) => p,
        }
    }
}

/// GC label on a copy's result snapshot naming its manifest blob.
const MANIFEST_LABEL: &str = "containerd.io/gc.ref.content.kiln.copy";

/// The label on a parent snapshot that names the last result of the copy
/// in `slot` on it.
fn slot_label(slot: &str) -> String {
    format!("kiln.copy.{slot}")
}

/// A copy that may run incrementally: where its previous result is found.
struct Incremental {
    /// The parent chain's top snapshot, which carries the slot label.
    parent_top: String,
    /// Names the copy on that parent: its options and its local source.
    slot: String,
    /// The context directory (for the hash cache's digests).
    dir: PathBuf,
    copy: kiln_solver::FileCopy,
    input: Option<FileInput>,
}

/// The previous result of a copy, held by a view.
struct Previous {
    view_key: String,
    /// The result snapshot's own directory.
    dir: PathBuf,
    manifest: Manifest,
}

/// Whether `op` is one `COPY` from a local source onto a non-empty parent,
/// the copy [`StepRunner::copy_incremental`] can run.
fn incremental_copy(op: &FileOp, inputs: &[Ref], parent: &[Layer]) -> Option<Incremental> {
    let [a] = op.actions.as_slice() else {
        return None;
    };
    let FileActionKind::Copy(c) = &a.action else {
        return None;
    };
    let Some(FileInput::Input(i)) = a.secondary_input else {
        return None;
    };
    let Some(Ref::Local { dir, excludes }) = inputs.get(i) else {
        return None;
    };
    if parent.is_empty() {
        return None;
    }
    let key = serde_json::to_vec(&(c, dir, excludes)).ok()?;
    let slot = Digest::of(&key).to_string();
    let slot = slot.strip_prefix("sha256:").unwrap_or(&slot)[..32].to_string();
    Some(Incremental {
        parent_top: refs::top_snapshot(parent),
        slot,
        dir: dir.clone(),
        copy: c.clone(),
        input: a.secondary_input,
    })
}

/// How a failed copy is reported. A missing source is worded as BuildKit
/// words it for the copy's source input: its cache key checksums that
/// input's content, which fails first, unless the source is scratch or
/// the very tree the copy writes to (the same vertex; no checksum is
/// computed then, and the copy's lstat fails).
struct CopyFail {
    location: String,
    /// The source input's name when BuildKit checksums it.
    checksummed: Option<String>,
}

impl CopyFail {
    /// For action `a` of `op`, a linear chain whose first action works on
    /// the tree the copy writes to.
    fn new(v: &Vertex, op: &FileOp, a: &FileAction, inputs: &[Ref]) -> Self {
        let source = match a.secondary_input {
            Some(FileInput::Input(j)) => Some(j),
            _ => None,
        };
        let dest = op.actions.first().map_or(FileInput::Scratch, |f| f.input);
        let checksummed = source.and_then(|j| {
            // The same vertex in BuildKit's graph: here the same edge, or
            // the same snapshot chain (kiln keeps an image's or a stage's
            // vertices apart where BuildKit merges equal ones).
            let same_tree = match dest {
                FileInput::Input(i) => {
                    i == j
                        || v.inputs.get(i) == v.inputs.get(j)
                        || matches!(
                            (inputs.get(i), inputs.get(j)),
                            (Some(Ref::Chain(a)), Some(Ref::Chain(b)))
                                if refs::top_snapshot(a) == refs::top_snapshot(b)
                        )
                }
                _ => false,
            };
            match inputs.get(j) {
                Some(Ref::Chain(l)) if l.is_empty() => None,
                Some(r) if !same_tree => Some(r.name()),
                _ => None,
            }
        });
        CopyFail {
            location: location(v),
            checksummed,
        }
    }

    fn error(&self, e: fileop::FileOpError) -> WorkerError {
        let location = self.location.clone();
        match (e, &self.checksummed) {
            (fileop::FileOpError::NotFound { path }, Some(reference)) => {
                WorkerError::SourceNotFound {
                    location,
                    reference: reference.clone(),
                    path,
                }
            }
            (fileop::FileOpError::NotFound { path }, None) => {
                WorkerError::SourceMissing { location, path }
            }
            (e, _) => WorkerError::FileOp {
                location,
                message: crate::error::error_chain(&e),
            },
        }
    }

    /// `c` as BuildKit runs it: its required paths (`COPY --parents`
    /// without wildcards) are checked only by the source's checksum, so a
    /// copy whose source is not checksummed has none.
    fn as_run(&self, c: &kiln_solver::FileCopy) -> kiln_solver::FileCopy {
        let mut c = c.clone();
        if self.checksummed.is_none() {
            c.required_paths.clear();
        }
        c
    }

    fn joined(&self, e: tokio::task::JoinError) -> WorkerError {
        WorkerError::FileOp {
            location: self.location.clone(),
            message: e.to_string(),
        }
    }
}

impl StepRunner {
    pub(super) async fn file(
        &self,
        id: VertexId,
        v: &Vertex,
        op: &FileOp,
        inputs: &[Ref],
    ) -> Result<Vec<Ref>> {
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
        let incremental = incremental_copy(op, inputs, &parent);
        let active = self.prepare(&parent).await?;
        let upper = match overlay_dirs(&active.mounts) {
            Some((Some(upper), _)) => Some(upper),
            _ => None,
        };
        let linking = match op.actions.as_slice() {
            [a] => match (&a.action, a.secondary_input) {
                (FileActionKind::Copy(c), Some(FileInput::Input(i))) => inputs
                    .get(i)
                    .filter(|r| matches!(r, Ref::Chain(l) if !l.is_empty()))
                    .map(|_| (c, a.secondary_input)),
                _ => None,
            },
            _ => None,
        };
        let fail = match op.actions.as_slice() {
            [a] => CopyFail::new(v, op, a, inputs),
            _ => CopyFail {
                location: loc.clone(),
                checksummed: None,
            },
        };
        let applied = match (&incremental, upper, linking) {
            // The daemon's own context tree: its files are linked, as a
            // committed layer's are.
            (Some(inc), Some(upper), _) if self.hashes.owns(&inc.dir) => self
                .copy_linked(v, inputs, (&inc.copy, inc.input), &fail, &active, &upper)
                .await
                .map(|()| None),
            (Some(inc), Some(upper), _) => self
                .copy_incremental(v, inputs, inc, &fail, &active, &upper)
                .await
                .map(Some),
            (None, Some(upper), Some((c, input))) => self
                .copy_linked(v, inputs, (c, input), &fail, &active, &upper)
                .await
                .map(|()| None),
            _ => self
                .apply_actions(v, op, inputs, &active)
                .await
                .map(|()| None),
        };
        let manifest = match applied {
            Ok(m) => m,
            Err(e) => {
                self.discard(active).await;
                return Err(e);
            }
        };
        let layers = self.commit_step(active, id).await?;
        if let (Some(inc), Some(manifest)) = (incremental, manifest) {
            if let Err(e) = self.remember_copy(&inc, &layers, &manifest).await {
                tracing::warn!(error = %e, "copy manifest not kept; the next copy starts over");
            }
        }
        Ok(vec![Ref::Chain(layers)])
    }

    /// A single `COPY` from the context, run incrementally (module
    /// [`fileop::reuse`]): the previous result of the same copy (found
    /// through the parent snapshot's slot label) lends its unchanged files
    /// as hard links, placed in `upper` after the overlay is unmounted.
    /// Returns the new result's manifest.
    async fn copy_incremental(
        &self,
        v: &Vertex,
        inputs: &[Ref],
        inc: &Incremental,
        fail: &CopyFail,
        active: &super::layer::Active,
        upper: &std::path::Path,
    ) -> Result<Manifest> {
        let c = inc.copy.clone();
        let src = self.copy_source(v, inc.input, inputs).await?;
        let previous = self.previous_copy(&inc.parent_top, &inc.slot).await;
        let known = {
            let hashes = self.hashes.clone();
            let dir = inc.dir.clone();
            tokio::task::spawn_blocking(move || hashes.known_files(&dir))
                .await
                .unwrap_or_default()
        };
        let reuse = CopyReuse {
            known,
            previous: previous
                .as_ref()
                .map(|p| (p.dir.clone(), p.manifest.clone())),
        };
        let excludes = match &src {
            Source::Dir { excludes, .. } => excludes.clone(),
            _ => None,
        };
        let result = self
            .copy_then_link(fail, active, upper, src.path(), move |s, d| {
                let out = fileop::copy_reusing(s, d, d, &c, excludes.as_ref(), &reuse)?;
                Ok((out.deferred, out.manifest))
            })
            .await;
        self.release(src).await;
        if let Some(p) = previous {
            if let Err(e) = self.svc.snapshots.remove(&p.view_key).await {
                tracing::warn!(key = %p.view_key, error = %e, "cannot remove view snapshot");
            }
        }
        result
    }

    /// A copy that is the op's only action, from a stage or image (`COPY
    /// --from`) or from a context tree the daemon owns
    /// ([`crate::contenthash::HashCache::owns`]); module [`fileop::reuse`],
    /// [`reuse::LayerLinks`]: files the source's committed layers, or the
    /// owned tree, hold exactly as the copy would write them are
    /// hard-linked from there into `upper` after the overlay is unmounted,
    /// not copied.
    async fn copy_linked(
        &self,
        v: &Vertex,
        inputs: &[Ref],
        (copy, input): (&kiln_solver::FileCopy, Option<FileInput>),
        fail: &CopyFail,
        active: &super::layer::Active,
        upper: &std::path::Path,
    ) -> Result<()> {
        let src = self.copy_source(v, input, inputs).await?;
        // A context tree's files are owned by 0:0 in the copy (without
        // --chown); a stage's keep their owners.
        let (links, excludes, keep_owner, owned) = match &src {
            Source::Mounted(_, _, layers) => (layers.clone(), None, true, None),
            Source::Dir { dir, excludes } if self.hashes.owns(dir) => (
                vec![dir.clone()],
                excludes.clone(),
                false,
                Some(dir.clone()),
            ),
            Source::Dir { excludes, .. } => (Vec::new(), excludes.clone(), false, None),
            Source::Empty(_) => (Vec::new(), None, true, None),
        };
        let links = reuse::LayerLinks { layers: links };
        let c = fail.as_run(copy);
        let result = self
            .copy_then_link(fail, active, upper, src.path(), move |s, d| {
                let deferred =
                    fileop::copy_linking(s, d, d, &c, excludes.as_ref(), keep_owner, &links)?;
                let sources: Vec<PathBuf> = deferred.iter().map(|f| f.old.clone()).collect();
                Ok((deferred, sources))
            })
            .await;
        self.release(src).await;
        let linked = result?;
        if let Some(dir) = owned {
            // The links moved those files' ctimes: their hash records
            // follow, so the next build does not read them again.
            let hashes = self.hashes.clone();
            let _ = tokio::task::spawn_blocking(move || {
                let rels: Vec<String> = linked
                    .iter()
                    .filter_map(|p| p.strip_prefix(&dir).ok()?.to_str().map(str::to_string))
                    .collect();
                hashes.relinked(&dir, rels.iter().map(String::as_str));
            })
            .await;
        }
        Ok(())
    }

    /// Runs `copy` (source root, mounted destination) in a blocking task;
    /// of the files it left to link, those whose directory overlayfs has
    /// not copied up are copied through the mount, and the rest are linked
    /// into `upper` once the destination is unmounted. Returns what `copy`
    /// gave besides.
    async fn copy_then_link<T: Send + 'static>(
        &self,
        fail: &CopyFail,
        active: &super::layer::Active,
        upper: &std::path::Path,
        src: &std::path::Path,
        copy: impl FnOnce(&std::path::Path, &std::path::Path) -> fileop::Result<(Vec<reuse::Deferred>, T)>
            + Send
            + 'static,
    ) -> Result<T> {
        let joined = |e| fail.joined(e);
        let dest = self.mount(&active.key, &active.mounts, false)?;
        let (s, d, up) = (
            src.to_path_buf(),
            dest.path().to_path_buf(),
            upper.to_path_buf(),
        );
        let (deferred, other) = tokio::task::spawn_blocking(move || {
            let (mut deferred, other) = copy(&s, &d)?;
            let rest = reuse::not_in_upper(&up, &mut deferred);
            reuse::place(&d, &rest, false)?;
            Ok::<_, fileop::FileOpError>((deferred, other))
        })
        .await
        .map_err(joined)?
        .map_err(|e| fail.error(e))?;
        drop(dest);
        if !deferred.is_empty() {
            tracing::debug!(linked = deferred.len(), "copy links files it did not write");
        }
        let up = upper.to_path_buf();
        tokio::task::spawn_blocking(move || reuse::place(&up, &deferred, true))
            .await
            .map_err(joined)?
            .map_err(|e| fail.error(e))?;
        Ok(other)
    }

    /// The previous result of the copy in `slot` on `parent_top`, held by a
    /// view while its files are linked. Anything missing (no label, the
    /// snapshot or its manifest gone) means there is none: the copy then
    /// copies everything.
    async fn previous_copy(&self, parent_top: &str, slot: &str) -> Option<Previous> {
        let info = self.svc.snapshots.stat(parent_top).await.ok()?;
        let name = info.labels.get(&slot_label(slot))?.clone();
        let child = self.svc.snapshots.stat(&name).await.ok()?;
        let manifest = child.labels.get(MANIFEST_LABEL)?.clone();
        let view_key = format!("kiln-view-{}", crate::base::rand_hex());
        let mounts = self
            .svc
            .snapshots
            .view(&view_key, &name, &self.lease)
            .await
            .ok()?;
        let dir = match mounts.as_slice() {
            [m] if m.mount_type == "bind" => Some(std::path::PathBuf::from(&m.source)),
            _ => overlay_dirs(&mounts).and_then(|(_, lowers)| lowers.into_iter().next()),
        };
        let data = match dir {
            Some(_) => self.svc.content.read(&manifest).await.ok(),
            None => None,
        };
        match (dir, data) {
            (Some(dir), Some(data)) => Some(Previous {
                view_key,
                dir,
                manifest: reuse::decode_manifest(&data),
            }),
            _ => {
                let _ = self.svc.snapshots.remove(&view_key).await;
                None
            }
        }
    }

    /// Keeps `manifest` as a content blob referenced by the copy's result
    /// snapshot, and names that snapshot in the parent's slot label, for
    /// the next run of the same copy.
    async fn remember_copy(
        &self,
        inc: &Incremental,
        layers: &[Layer],
        manifest: &Manifest,
    ) -> Result<()> {
        let name = refs::top_snapshot(layers);
        let data = reuse::encode_manifest(manifest);
        let digest = kiln_snapshot::services::write_blob(
            &*self.svc.content,
            &data,
            HashMap::new(),
            &self.lease,
        )
        .await?;
        self.svc
            .snapshots
            .update_labels(
                &name,
                HashMap::from([(MANIFEST_LABEL.to_string(), digest.to_string())]),
            )
            .await?;
        self.svc
            .snapshots
            .update_labels(
                &inc.parent_top,
                HashMap::from([(slot_label(&inc.slot), name)]),
            )
            .await?;
        Ok(())
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
                    let copy_fail = CopyFail::new(v, op, a, inputs);
                    let src = self.copy_source(v, a.secondary_input, inputs).await?;
                    let excludes = match &src {
                        Source::Dir { excludes, .. } => excludes.as_ref(),
                        _ => None,
                    };
                    let (s, d, c2) = (
                        src.path().to_path_buf(),
                        dest.path().to_path_buf(),
                        copy_fail.as_run(c),
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
                    .map_err(|e| copy_fail.joined(e))
                    .and_then(|r| r.map_err(|e| copy_fail.error(e)));
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
            Source::Mounted(m, key, _) => {
                drop(m);
                if let Some(key) = key {
                    if let Err(e) = self.svc.snapshots.remove(&key).await {
                        tracing::warn!(key = %key, error = %e, "cannot remove view snapshot");
                    }
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
                let top = crate::refs::top_snapshot(&layers);
                if let Some(c) = self.committed_dirs(&top) {
                    let m = self.mount(&key, &c.view, true)?;
                    return Ok(Source::Mounted(m, None, layer_dirs(&c.view)));
                }
                let mounts = self
                    .svc
                    .snapshots
                    .view(&key, &crate::refs::top_snapshot(&layers), &self.lease)
                    .await?;
                match self.mount(&key, &mounts, true) {
                    Ok(m) => Ok(Source::Mounted(m, Some(key), layer_dirs(&mounts))),
                    Err(e) => {
                        let _ = self.svc.snapshots.remove(&key).await;
                        Err(e)
                    }
                }
            }
        }
    }
}
