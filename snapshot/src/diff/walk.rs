//! The walking differ: compare two complete trees, for any snapshotter.
//!
//! Follows containerd/continuity `fs.Changes` (double walk): a path only in
//! `lower` becomes a whiteout (only the top-most deleted path, not its
//! children), a path only in `upper` is written with everything below it,
//! and a path in both is written when [`same_node`] says it changed.

use std::path::Path;

use super::{join_rel, sorted_names, DiffError, Emitter, Lower, Node};

pub(crate) fn walk<W: std::io::Write>(
    em: &mut Emitter<W>,
    lower: Option<&Path>,
    upper: &Path,
) -> Result<(), DiffError> {
    walk_dir(em, lower, upper, b"")
}

/// Compares `upper` (tar path `rel`) with `lower`; also the overlay
/// walk's way through an opaque directory.
pub(super) fn walk_dir<W: std::io::Write>(
    em: &mut Emitter<W>,
    lower: Option<&Path>,
    upper: &Path,
    rel: &[u8],
) -> Result<(), DiffError> {
    let upper_names = sorted_names(upper)?;
    let lower_names = match lower {
        Some(l) => sorted_names(l)?,
        None => Vec::new(),
    };
    let (mut u, mut l) = (0, 0);
    while u < upper_names.len() || l < lower_names.len() {
        let order = match (upper_names.get(u), lower_names.get(l)) {
            (Some(un), Some(ln)) => un.as_encoded_bytes().cmp(ln.as_encoded_bytes()),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, _) => std::cmp::Ordering::Greater,
        };
        if order == std::cmp::Ordering::Greater {
            // Only in lower: deleted.
            em.whiteout(rel, &lower_names[l])?;
            l += 1;
            continue;
        }
        let name = &upper_names[u];
        u += 1;
        let in_lower = order == std::cmp::Ordering::Equal;
        if in_lower {
            l += 1;
        }
        let abs = upper.join(name);
        let node = Node::read(&abs)?;
        // An overlay whiteout (a 0/0 char device) met through an opaque
        // directory of the overlay walk marks a deletion, never a device.
        if node.is_whiteout() {
            if in_lower {
                em.whiteout(rel, name)?;
            }
            continue;
        }
        if node.is_socket() {
            continue;
        }
        let lower_entry = if in_lower {
            Lower::of(lower, name)?
        } else {
            None
        };
        let child_rel = join_rel(rel, name);
        if node.is_dir() {
            let lower_dir = Lower::dir(&lower_entry);
            let changed = match lower_dir {
                Some(l) => !l.same_as(&node, &abs)?,
                None => true,
            };
            em.enter_dir(child_rel.clone(), node, changed)?;
            walk_dir(em, lower_dir.map(|l| l.path.as_path()), &abs, &child_rel)?;
            em.leave_dir();
        } else {
            em.changed_file(&child_rel, &abs, &node, lower_entry.as_ref())?;
        }
    }
    Ok(())
}
