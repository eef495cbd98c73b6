//! Which committed layer a file of a mounted view comes from, so that a
//! walk of the view counts as hard links only the links a build made.
//!
//! kiln shares one inode between snapshots where BuildKit copies: a
//! context file is linked into every layer that copies it, and a
//! `COPY --from` may link a committed file instead of copying it. A view
//! of several layers shows such names with one device and inode, as if
//! they were hard links of each other; the same build under BuildKit has
//! separate files there. A hard link that a build made (`RUN ln`, a
//! context's own links kept by `COPY`) always has both names in one
//! layer's directory (overlayfs copies a file up before linking it), so a
//! link counts only between names that come from the same layer.

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The layers below a view's root, to group its files by origin.
#[derive(Clone, Debug, Default)]
pub struct LayerOrigin {
    /// (where a tree is shown below the view's root, one of its layer
    /// directories), each tree's layers topmost first.
    layers: Vec<(PathBuf, PathBuf)>,
}

/// Identifies the file behind a name for hard-link detection: device,
/// inode and the index of the layer the name comes from.
pub type LinkKey = (u64, u64, usize);

impl LayerOrigin {
    /// Adds a tree shown at `at` below the view's root (empty: the root
    /// itself) made of `layers`, topmost first (a mount's lowerdirs, or
    /// the one directory a bind shows).
    pub fn add_tree(&mut self, at: &Path, layers: Vec<PathBuf>) {
        self.layers
            .extend(layers.into_iter().map(|l| (at.to_path_buf(), l)));
    }

    /// The index of the topmost layer holding the non-directory `rel`
    /// (relative to the view's root). A view of one layer is layer 0: its
    /// links are taken as they are. A name no layer holds (which a view
    /// of them never shows) is a group of its own, past the layers.
    pub fn layer_of(&self, rel: &Path) -> usize {
        if self.layers.len() < 2 {
            return 0;
        }
        self.layers
            .iter()
            .position(|(at, dir)| {
                rel.strip_prefix(at)
                    .is_ok_and(|below| std::fs::symlink_metadata(dir.join(below)).is_ok())
            })
            .unwrap_or_else(|| {
                tracing::debug!(path = %rel.display(), "a name of a view no layer holds");
                self.layers.len()
            })
    }

    /// The key under which the name `rel` with metadata `md` is the same
    /// file as an earlier name: only names of one layer share a key.
    pub fn link_key(&self, rel: &Path, md: &Metadata) -> LinkKey {
        (md.dev(), md.ino(), self.layer_of(rel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin_of(trees: &[(&str, &[PathBuf])]) -> LayerOrigin {
        let mut o = LayerOrigin::default();
        for (at, layers) in trees {
            o.add_tree(Path::new(at), layers.to_vec());
        }
        o
    }

    /// A name comes from the topmost layer that holds it; a view of one
    /// layer never looks.
    #[test]
    fn the_topmost_layer_holding_a_name_is_its_origin() {
        let t = tempfile::tempdir().expect("tempdir");
        let (top, low) = (t.path().join("top"), t.path().join("low"));
        for d in [&top, &low] {
            std::fs::create_dir_all(d.join("d")).expect("mkdir");
        }
        std::fs::write(low.join("d/a"), b"low").expect("write");
        std::fs::write(low.join("b"), b"low").expect("write");
        std::fs::write(top.join("d/a"), b"top").expect("write");
        let o = origin_of(&[("", &[top.clone(), low.clone()])]);
        assert_eq!(o.layer_of(Path::new("d/a")), 0);
        assert_eq!(o.layer_of(Path::new("b")), 1);
        assert_eq!(o.layer_of(Path::new("missing")), 2);
        let one = origin_of(&[("", &[low])]);
        assert_eq!(one.layer_of(Path::new("b")), 0);
    }

    /// Trees shown below the root (a multi-platform export's directories)
    /// are looked up below their own place only.
    #[test]
    fn trees_below_the_root_are_looked_up_at_their_place() {
        let t = tempfile::tempdir().expect("tempdir");
        let (amd, arm) = (t.path().join("amd"), t.path().join("arm"));
        for d in [&amd, &arm] {
            std::fs::create_dir_all(d).expect("mkdir");
            std::fs::write(d.join("f"), b"x").expect("write");
        }
        let o = origin_of(&[("linux_amd64", &[amd]), ("linux_arm64", &[arm])]);
        assert_eq!(o.layer_of(Path::new("linux_amd64/f")), 0);
        assert_eq!(o.layer_of(Path::new("linux_arm64/f")), 1);
    }

    /// Two names of one inode share a key only from one layer.
    #[test]
    fn one_inode_in_two_layers_is_two_files() {
        let t = tempfile::tempdir().expect("tempdir");
        let (top, low) = (t.path().join("top"), t.path().join("low"));
        for d in [&top, &low] {
            std::fs::create_dir_all(d).expect("mkdir");
        }
        std::fs::write(low.join("a"), b"x").expect("write");
        std::fs::hard_link(low.join("a"), low.join("b")).expect("link");
        std::fs::hard_link(low.join("a"), top.join("c")).expect("link");
        let o = origin_of(&[("", &[top, low.clone()])]);
        let md = std::fs::symlink_metadata(low.join("a")).expect("stat");
        let key = |name: &str| o.link_key(Path::new(name), &md);
        assert_eq!(key("a"), key("b"));
        assert_ne!(key("a"), key("c"));
    }
}
