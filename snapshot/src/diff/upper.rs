//! The overlay fast path: walk only the upperdir.
//!
//! Follows moby/buildkit util/overlay/overlay_linux.go: whiteouts (0/0 char
//! devices) become `.wh.` entries when the lower has the path, an opaque
//! directory is compared with its lower one by the walking differ (each
//! lower entry it no longer holds becomes a `.wh.` entry of its own, as in
//! BuildKit's layers, not a `.wh..wh..opq` marker), and entries identical
//! to the lower one (copy-up parents) are skipped, except that a directory
//! is still written before any changed child.

use std::path::Path;

use super::{join_rel, sorted_names, DiffError, Emitter, Lower, Node};

pub(crate) fn walk<W: std::io::Write>(
    em: &mut Emitter<W>,
    upper: &Path,
    lower: Option<&Path>,
) -> Result<(), DiffError> {
    walk_dir(em, upper, lower, b"")
}

/// Walks upper directory `dir` (tar path `rel`); `lower` is the same
/// directory in the lower tree if it is visible through the overlay there.
fn walk_dir<W: std::io::Write>(
    em: &mut Emitter<W>,
    dir: &Path,
    lower: Option<&Path>,
    rel: &[u8],
) -> Result<(), DiffError> {
    for name in sorted_names(dir)? {
        let abs = dir.join(&name);
        let node = Node::read(&abs)?;
        if node.overlay_xattr(&abs, "redirect")?.is_some()
            || node.overlay_xattr(&abs, "metacopy")?.is_some()
        {
            return Err(DiffError::Redirect { path: abs });
        }
        if node.is_whiteout() {
            if let Some(lower) = lower {
                if Node::read_opt(&lower.join(&name))?.is_some() {
                    em.whiteout(rel, &name)?;
                }
            }
            continue;
        }
        if node.is_socket() {
            continue;
        }
        let lower_entry = Lower::of(lower, &name)?;
        let child_rel = join_rel(rel, &name);
        if node.is_dir() {
            let opaque = node.overlay_xattr(&abs, "opaque")?.as_deref() == Some(b"y".as_slice());
            let lower_dir = Lower::dir(&lower_entry);
            let changed = match lower_dir {
                Some(l) => !l.same_as(&node, &abs)?,
                None => true,
            };
            em.enter_dir(child_rel.clone(), node, changed)?;
            match lower_dir {
                // The opaque directory holds all of the directory: what
                // the lower one has beyond it was deleted.
                Some(l) if opaque => super::walk::walk_dir(em, Some(&l.path), &abs, &child_rel)?,
                _ => walk_dir(em, &abs, lower_dir.map(|l| l.path.as_path()), &child_rel)?,
            }
            em.leave_dir();
        } else {
            em.changed_file(&child_rel, &abs, &node, lower_entry.as_ref())?;
        }
    }
    Ok(())
}
