//! Named network namespaces: a fresh namespace kept alive by a bind mount
//! of its nsfs file onto a file under kiln's state directory, so the CNI
//! plugins and runc can both name it by path before any process lives in
//! it.

use std::path::Path;

/// Creates a new network namespace and bind-mounts it onto `target` (which
/// must not exist yet; it is created as an empty file).
///
/// The namespace is made on a short-lived thread of its own: `unshare`
/// moves only the calling thread, and that thread ends right after the bind
/// mount, so no thread of this process stays in the new namespace.
pub fn create(target: &Path) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(target)?;
    let path = target.to_path_buf();
    let made = std::thread::Builder::new()
        .name("kiln-netns".into())
        .spawn(move || -> std::io::Result<()> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
            nix::mount::mount(
                Some("/proc/thread-self/ns/net"),
                &path,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )?;
            Ok(())
        })?
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the netns thread panicked")));
    if let Err(e) = made {
        let _ = std::fs::remove_file(target);
        return Err(e);
    }
    Ok(())
}

/// Unmounts a namespace made by [`create`] and removes its file. A file that
/// is missing or not mounted is not an error.
pub fn remove(target: &Path) -> std::io::Result<()> {
    match nix::mount::umount2(target, nix::mount::MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    match std::fs::remove_file(target) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Whether `target` is a mounted network namespace (its inode lives on
/// nsfs, whose magic number statfs reports).
pub fn is_mounted(target: &Path) -> bool {
    const NSFS_MAGIC: nix::sys::statfs::FsType = nix::sys::statfs::FsType(0x6e73_6673);
    nix::sys::statfs::statfs(target).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_namespace_is_mounted_and_removed() {
        if !kiln_types::testing::needs_root("mounting a network namespace") {
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let ns = dir.path().join("netns");
        create(&ns).expect("create netns");
        assert!(is_mounted(&ns));
        // This process's namespace is a different one.
        let own = std::fs::metadata("/proc/self/ns/net").expect("own netns");
        let made = std::fs::metadata(&ns).expect("made netns");
        use std::os::unix::fs::MetadataExt;
        assert_ne!(own.ino(), made.ino());
        remove(&ns).expect("remove netns");
        assert!(!ns.exists());
        remove(&ns).expect("removing twice is fine");
    }
}
