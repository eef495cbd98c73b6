//! Build contexts kept between builds, so that a rebuild through kilnd
//! transfers only what changed (BuildKit keeps local sources the same way:
//! one mutable directory per local name and session shared key).
//!
//! A kept context lives in a *slot*, `<root>/contexts/<key hash>-<n>/`:
//! `tree/` holds the received files, `size` the file content bytes of the
//! last complete receive, and `dirty` exists while a receive is under way.
//! The key hash covers the tenant of the session, the session's shared key
//! (`x-docker-expose-session-sharedkey`), the source's shared key hint and
//! the local name; the client-chosen parts only ever reach the file system
//! through the hash, so no key can name another tenant's slot or a path
//! outside `contexts/`.
//!
//! A slot is used by one build at a time: a second build with the same key
//! while the first one runs takes the next free slot (BuildKit makes a new
//! directory when the kept one is in use too), so builds never see each
//! other's transfers. A receive that fails or is cancelled (Ctrl-C, a
//! dropped connection) leaves a tree that is part old, part new: when the
//! build lets go of the slot its device nodes, FIFOs and set-id files are
//! removed (on a blocking thread: it walks the tree; a build of the same
//! key waits for it rather than start an empty slot) and the tree is
//! kept, so the next receive brings it up to date
//! like any other (a file is written under its name from its first byte,
//! but its size, mode and mtime are set only once its last byte is there,
//! so a partly written file never looks like the sender's). A slot whose
//! `dirty` marker survived (a crash during a receive, or a tree that could
//! not be cleaned) is emptied before use: its next receive is a full one.
//! The slot directory's mtime is its last use; [`Contexts::prune`] removes
//! dirty slots no build holds, slots unused for `max-age`, then the least
//! recently used until the rest hold at most `max-size`.
//!
//! Device nodes, FIFOs and set-id files are not kept: a build's context
//! holds them only while the build runs (kiln's state keeps none past a
//! build), and the next receive sends them again. Until they are gone the
//! slot stays marked dirty, so a crash cannot leave them behind for long.

use crate::config::ContextsConfig;
use kiln_solver::Digest;
use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::SystemTime;

/// The directory under kilnd's root that holds the slots.
pub const CONTEXTS_DIR: &str = "contexts";

const TREE: &str = "tree";
const DIRTY: &str = "dirty";
const SIZE: &str = "size";
/// Whose slot this is: the tenant (`-` for the default one, else `t` and
/// its name) on the first line, the local name on the second; written
/// when the slot is made, so its mtime is the slot's creation.
const OWNER: &str = "owner";

/// How long an `acquire` waits for the cleanup of its key's cut receive.
const SALVAGE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What identifies a kept context.
#[derive(Clone, Copy, Debug)]
pub struct ContextKey<'a> {
    /// The tenant the session belongs to (`None`: the default tenant).
    pub tenant: Option<&'a str>,
    /// The session's `x-docker-expose-session-sharedkey`.
    pub shared_key: &'a str,
    /// The source's `local.sharedkeyhint` (empty for the frontend's).
    pub hint: &'a str,
    /// The local name (`context`, a named context, an LLB local).
    pub name: &'a str,
}

impl ContextKey<'_> {
    /// The hex digest naming this key's slots. Every part is length-
    /// prefixed, so no two keys give the same input.
    fn hash(&self) -> String {
        let mut input = b"kiln.context.v1".to_vec();
        let tenant = match self.tenant {
            Some(t) => [b"t".as_slice(), t.as_bytes()].concat(),
            None => b"-".to_vec(),
        };
        for part in [
            tenant.as_slice(),
            self.shared_key.as_bytes(),
            self.hint.as_bytes(),
            self.name.as_bytes(),
        ] {
            input.extend_from_slice(&(part.len() as u64).to_le_bytes());
            input.extend_from_slice(part);
        }
        Digest::of(&input).hex()[..32].to_string()
    }
}

/// The kept contexts of one kilnd.
#[derive(Debug)]
pub struct Contexts {
    dir: PathBuf,
    limits: ContextsConfig,
    /// Slots held by a build (or being removed by a prune).
    busy: Mutex<Slots>,
    /// Told when a slot's partial tree has been cleaned.
    salvaged: Condvar,
}

#[derive(Debug, Default)]
struct Slots {
    /// Slots no other build may take.
    held: HashSet<String>,
    /// Held slots whose partial tree is being cleaned for reuse.
    salvaging: HashSet<String>,
}

/// A kept context as `du` shows it (BuildKit's `source.local` record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    /// The slot's directory name.
    pub id: String,
    /// The local name (`context`, a named context); empty for a slot
    /// made before kilnd recorded it.
    pub name: String,
    /// The file content bytes of its last complete receive.
    pub bytes: u64,
    pub created: SystemTime,
    /// Its last use (the slot directory's mtime).
    pub used: SystemTime,
    /// A build holds it now.
    pub in_use: bool,
}

/// What a prune removed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub slots: usize,
    pub bytes: u64,
}

/// A slot held by a build until dropped.
#[derive(Debug)]
pub struct Held {
    contexts: Arc<Contexts>,
    slot: String,
    dir: PathBuf,
    incremental: bool,
    /// Tree paths to remove when the build is done with the context.
    privileged: Vec<PathBuf>,
    /// What the last receive cost on the wire (fsutil's count).
    transferred: u64,
    /// When the last receive started and ended.
    span: Option<(std::time::SystemTime, std::time::SystemTime)>,
    /// A receive completed ([`Held::received`]); otherwise the tree may
    /// be part of one, cleaned when the slot is let go.
    complete: bool,
}

impl Held {
    /// Where the context's files go (and stay).
    pub fn tree(&self) -> PathBuf {
        self.dir.join(TREE)
    }

    /// The bytes the last receive into the tree took on the wire, for
    /// the `transferring NAME:` progress item.
    pub fn transferred(&self) -> u64 {
        self.transferred
    }

    /// When the last receive started and ended, if one was recorded.
    pub fn span(&self) -> Option<(std::time::SystemTime, std::time::SystemTime)> {
        self.span
    }

    /// Whether the tree holds a complete earlier receive to bring up to
    /// date (otherwise it is empty).
    pub fn incremental(&self) -> bool {
        self.incremental
    }

    /// Records a complete receive: the next build may receive
    /// incrementally (once the privileged entries are gone, at drop).
    /// `started` is when the receive began; it ends now.
    pub fn received(
        &mut self,
        stats: &kiln_session::fsutil::ReceiveStats,
        started: std::time::SystemTime,
    ) -> std::io::Result<()> {
        self.span = Some((started, std::time::SystemTime::now()));
        self.complete = true;
        std::fs::write(self.dir.join(SIZE), stats.tree_bytes.to_string())?;
        self.privileged = stats.privileged.clone();
        self.transferred = stats.wire_bytes;
        if self.privileged.is_empty() {
            remove_marker(&self.dir)?;
        }
        Ok(())
    }
}

fn remove_marker(slot: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(slot.join(DIRTY)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Removes from the tree under `dir` (not following symlinks) what a kept
/// context may not hold: device nodes, FIFOs, sockets and set-id files;
/// returns the bytes of the regular files left.
fn clean_partial_tree(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::FileTypeExt;
    let mut bytes = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let md = entry.path().symlink_metadata()?;
        let ft = md.file_type();
        let set_id = ft.is_file() && md.permissions().mode() & 0o6000 != 0;
        if ft.is_block_device() || ft.is_char_device() || ft.is_fifo() || ft.is_socket() || set_id {
            std::fs::remove_file(entry.path())?;
        } else if ft.is_dir() {
            bytes += clean_partial_tree(&entry.path())?;
        } else if ft.is_file() {
            bytes += md.len();
        }
    }
    Ok(bytes)
}

/// The file content bytes slot `dir` recorded for its last complete
/// receive (0 for one that never completed).
fn slot_bytes(dir: &Path) -> u64 {
    std::fs::read_to_string(dir.join(SIZE))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// After a receive into slot `dir` that did not complete: the tree is
/// kept for the next (incremental) receive once nothing privileged is in
/// it; the slot stays dirty (emptied at its next use) if that fails.
/// Blocking (walks the tree).
fn keep_partial(dir: &Path, slot: &str) {
    if !dir.join(DIRTY).exists() {
        return;
    }
    let kept = clean_partial_tree(&dir.join(TREE))
        .and_then(|bytes| std::fs::write(dir.join(SIZE), bytes.to_string()))
        .and_then(|()| remove_marker(dir));
    match kept {
        Ok(()) => tracing::debug!(slot, "kept a partly received context"),
        Err(e) => tracing::warn!(slot, error = %e, "cannot keep a partly received context"),
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if !self.complete {
            // Cleaning walks the tree: not on an async worker. The slot
            // stays held until it is done.
            let (contexts, slot, dir) =
                (self.contexts.clone(), self.slot.clone(), self.dir.clone());
            contexts.lock().salvaging.insert(slot.clone());
            let salvage = move || {
                keep_partial(&dir, &slot);
                let mut slots = contexts.lock();
                slots.salvaging.remove(&slot);
                slots.held.remove(&slot);
                contexts.salvaged.notify_all();
            };
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(salvage)),
                Err(_) => salvage(),
            }
            return;
        } else if !self.privileged.is_empty() {
            let tree = self.tree();
            // Wire paths the receiver checked: relative, clean, below
            // directories it made (never through a symlink).
            let removed = self.privileged.iter().all(|p| {
                match std::fs::remove_file(tree.join(p)) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        tracing::warn!(path = %p.display(), error = %e, "cannot remove from a kept context");
                        false
                    }
                    _ => true,
                }
            });
            if removed {
                if let Err(e) = remove_marker(&self.dir) {
                    tracing::warn!(slot = %self.slot, error = %e, "cannot mark a kept context clean");
                }
            }
        }
        self.contexts.lock().held.remove(&self.slot);
    }
}

/// The directory of the kept contexts of the kilnd whose state directory
/// is `root`, created if missing (engines are told it holds kilnd's own
/// trees before the first slot is made).
pub fn dir(root: &Path) -> PathBuf {
    let dir = root.join(CONTEXTS_DIR);
    if let Err(e) = std::fs::create_dir_all(&dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot create the contexts directory");
    }
    dir
}

impl Contexts {
    /// The kept contexts under `root` (kilnd's state directory).
    pub fn new(root: &Path, limits: ContextsConfig) -> Arc<Contexts> {
        Arc::new(Contexts {
            dir: dir(root),
            limits,
            busy: Mutex::default(),
            salvaged: Condvar::new(),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.busy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the first slot of `key` no build holds, creating it if
    /// needed, emptied if its last receive did not complete, and marked
    /// dirty until [`Held::received`]. Blocking (file system).
    pub fn acquire(self: &Arc<Self>, key: &ContextKey<'_>) -> std::io::Result<Held> {
        let base = key.hash();
        let slot = {
            let mut busy = self.lock();
            // A slot of this key being cleaned after a cut receive holds
            // its latest tree: wait for it rather than start an empty one.
            let of_key = |s: &String| {
                s.strip_prefix(base.as_str())
                    .is_some_and(|n| n.starts_with('-'))
            };
            // Bounded: a cleanup the runtime never ran (it was shutting
            // down) must not hold the key forever; another slot is taken.
            let deadline = std::time::Instant::now() + SALVAGE_WAIT;
            while busy.salvaging.iter().any(of_key) {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                busy = self
                    .salvaged
                    .wait_timeout(busy, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            let slot = (0..)
                .map(|n| format!("{base}-{n}"))
                .find(|s| !busy.held.contains(s))
                .expect("an unbounded range has a free slot");
            busy.held.insert(slot.clone());
            slot
        };
        let dir = self.dir.join(&slot);
        let mut held = Held {
            contexts: self.clone(),
            slot,
            dir,
            incremental: false,
            privileged: Vec::new(),
            transferred: 0,
            complete: false,
            span: None,
        };
        kiln_engine::sweep::create_private_dir(&held.dir)?;
        let owner = held.dir.join(OWNER);
        if !owner.exists() {
            let tenant = match key.tenant {
                Some(t) => format!("t{t}"),
                None => "-".to_string(),
            };
            std::fs::write(&owner, format!("{tenant}\n{}\n", key.name))?;
        }
        let tree = held.tree();
        let clean = tree.is_dir() && !held.dir.join(DIRTY).exists();
        if !clean {
            match std::fs::remove_dir_all(&tree) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
            let _ = std::fs::remove_file(held.dir.join(SIZE));
            // The root of a context is 0755 as a client's directory
            // usually is (`COPY .` copies its mode, and the context's
            // hash covers it); the slot around it keeps others out.
            std::fs::create_dir(&tree)?;
            std::fs::set_permissions(&tree, std::fs::Permissions::from_mode(0o755))?;
        }
        // Creating the marker also moves the slot's mtime: its last use.
        std::fs::write(held.dir.join(DIRTY), b"")?;
        held.incremental = clean;
        Ok(held)
    }

    /// The slots of `tenant` (`None`: the default tenant), most recently
    /// used first. A slot made before kilnd recorded its owner counts as
    /// the default tenant's. Blocking (file system).
    pub fn list(&self, tenant: Option<&str>) -> Vec<Slot> {
        let held = self.lock().held.clone();
        self.list_held(tenant, &held)
    }

    /// [`Contexts::list`] with the slots `held` in use.
    fn list_held(&self, tenant: Option<&str>, held: &HashSet<String>) -> Vec<Slot> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<Slot> = entries
            .flatten()
            .filter_map(|e| {
                let id = e.file_name().into_string().ok()?;
                let used = e.metadata().and_then(|m| m.modified()).ok()?;
                let owner = std::fs::read_to_string(e.path().join(OWNER)).unwrap_or_default();
                let mut lines = owner.lines();
                let whose = match lines.next().unwrap_or("-") {
                    "-" => None,
                    t => Some(t.strip_prefix('t').unwrap_or(t)),
                };
                if whose != tenant {
                    return None;
                }
                let created = std::fs::metadata(e.path().join(OWNER))
                    .and_then(|m| m.modified())
                    .unwrap_or(used);
                Some(Slot {
                    name: lines.next().unwrap_or_default().to_string(),
                    bytes: slot_bytes(&e.path()),
                    created,
                    used,
                    in_use: held.contains(&id),
                    id,
                })
            })
            .collect();
        out.sort_by(|a, b| b.used.cmp(&a.used).then_with(|| a.id.cmp(&b.id)));
        out
    }

    /// Removes the slots of `tenant` that no build holds and `select`
    /// picks (a client's prune), and returns them. Blocking (file system).
    pub fn remove(&self, tenant: Option<&str>, select: impl Fn(&Slot) -> bool) -> Vec<Slot> {
        // Listed outside the lock (a walk of the directory), then taken
        // under it if no build took them meanwhile.
        let candidates: Vec<Slot> = self
            .list(tenant)
            .into_iter()
            .filter(|s| !s.in_use && select(s))
            .collect();
        let picked: Vec<Slot> = {
            let mut busy = self.lock();
            candidates
                .into_iter()
                .filter(|s| busy.held.insert(s.id.clone()))
                .collect()
        };
        let mut removed = Vec::new();
        for s in picked {
            match std::fs::remove_dir_all(self.dir.join(&s.id)) {
                Ok(()) => removed.push(s.clone()),
                Err(e) => tracing::warn!(slot = %s.id, error = %e, "cannot remove a kept context"),
            }
            self.lock().held.remove(&s.id);
        }
        removed
    }

    /// Removes slots no build holds that were last used more than
    /// `max-age` ago, then the least recently used until the others hold
    /// at most `max-size` bytes. Blocking (file system).
    pub fn prune(&self) -> Pruned {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Pruned::default();
        };
        let now = SystemTime::now();
        // (last use, slot, bytes, dirty); a slot without a size never
        // completed.
        let mut slots: Vec<(SystemTime, String, u64, bool)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let used = e.metadata().and_then(|m| m.modified()).ok()?;
                let bytes = slot_bytes(&e.path());
                let dirty = e.path().join(DIRTY).exists();
                Some((used, name, bytes, dirty))
            })
            .collect();
        slots.sort();
        let mut total: u64 = slots.iter().map(|s| s.2).sum();
        let mut doomed = Vec::new();
        {
            let mut busy = self.lock();
            for (used, name, bytes, dirty) in &slots {
                if busy.held.contains(name) {
                    continue;
                }
                let old = now
                    .duration_since(*used)
                    .is_ok_and(|age| age > self.limits.max_age);
                if *dirty || old || total > self.limits.max_size {
                    busy.held.insert(name.clone());
                    doomed.push((name.clone(), *bytes));
                    total = total.saturating_sub(*bytes);
                }
            }
        }
        let mut pruned = Pruned::default();
        for (name, bytes) in doomed {
            match std::fs::remove_dir_all(self.dir.join(&name)) {
                Ok(()) => {
                    pruned.slots += 1;
                    pruned.bytes += bytes;
                }
                Err(e) => tracing::warn!(slot = %name, error = %e, "cannot remove a kept context"),
            }
            self.lock().held.remove(&name);
        }
        if pruned.slots > 0 {
            tracing::info!(
                slots = pruned.slots,
                bytes = pruned.bytes,
                "removed kept build contexts"
            );
        }
        pruned
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key<'a>(tenant: Option<&'a str>, shared: &'a str, name: &'a str) -> ContextKey<'a> {
        ContextKey {
            tenant,
            shared_key: shared,
            hint: "",
            name,
        }
    }

    fn stats(tree_bytes: u64, privileged: &[&str]) -> kiln_session::fsutil::ReceiveStats {
        kiln_session::fsutil::ReceiveStats {
            tree_bytes,
            privileged: privileged.iter().map(PathBuf::from).collect(),
            ..Default::default()
        }
    }

    fn limits(max_age: Duration, max_size: u64) -> ContextsConfig {
        ContextsConfig { max_age, max_size }
    }

    #[test]
    fn keys_of_other_tenants_or_names_never_share_a_slot_and_stay_inside() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let c = Contexts::new(tmp.path(), ContextsConfig::default());
        let hostile = "../../etc/x\0/..";
        let keys = [
            key(None, "k", "context"),
            key(Some("alice"), "k", "context"),
            key(Some("bob"), "k", "context"),
            key(Some("alice"), "k", "other"),
            key(Some("alice"), "", "kcontext"),
            key(Some("alice"), hostile, "context"),
            key(Some(""), "k", "context"),
        ];
        let mut dirs = HashSet::new();
        for k in &keys {
            let h = c.acquire(k).expect("acquire");
            let tree = h.tree();
            assert!(tree.starts_with(tmp.path().join(CONTEXTS_DIR)), "{tree:?}");
            assert_eq!(
                tree.components().count(),
                tmp.path().components().count() + 3
            );
            assert!(dirs.insert(tree), "a slot shared by two keys");
        }
    }

    #[test]
    fn a_clean_slot_is_reused_a_busy_one_is_not_and_a_dirty_one_is_emptied() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let c = Contexts::new(tmp.path(), ContextsConfig::default());
        let k = key(None, "", "context");
        let first = c.acquire(&k).expect("acquire");
        assert!(!first.incremental(), "a new slot is empty");
        std::fs::write(first.tree().join("f"), b"x").expect("write");
        // A concurrent build of the same key gets a slot of its own.
        let second = c.acquire(&k).expect("acquire");
        assert_ne!(first.tree(), second.tree());
        let mut first = first;
        first
            .received(&stats(1, &[]), std::time::SystemTime::now())
            .expect("received");
        let tree = first.tree();
        drop(first);
        drop(second);
        let again = c.acquire(&k).expect("acquire");
        assert_eq!(again.tree(), tree);
        assert!(again.incremental());
        assert!(tree.join("f").exists(), "the earlier receive is kept");
        // This receive never completes (a failed or cancelled build): what
        // it left is kept for the next one to bring up to date.
        std::fs::write(tree.join("g"), b"part").expect("write");
        drop(again);
        let after_failure = c.acquire(&k).expect("acquire");
        assert_eq!(after_failure.tree(), tree);
        assert!(after_failure.incremental());
        assert!(tree.join("f").exists() && tree.join("g").exists());
        // A slot still marked dirty when taken (kilnd crashed during a
        // receive) starts empty.
        let slot = tree.parent().expect("slot").to_path_buf();
        std::mem::forget(after_failure);
        c.lock().held.clear();
        assert!(slot.join(DIRTY).exists());
        let after_crash = c.acquire(&k).expect("acquire");
        assert!(!after_crash.incremental());
        assert!(!tree.join("f").exists(), "a dirty slot starts empty");
    }

    #[test]
    fn a_partly_received_tree_is_kept_without_special_or_set_id_files() {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let tmp = tempfile::tempdir().expect("tempdir");
        let c = Contexts::new(tmp.path(), ContextsConfig::default());
        let k = key(None, "", "context");
        let h = c.acquire(&k).expect("acquire");
        let tree = h.tree();
        std::fs::create_dir_all(tree.join("d/e")).expect("mkdir");
        std::fs::write(tree.join("d/e/plain"), b"12345").expect("write");
        std::fs::write(tree.join("d/suid"), b"x").expect("write");
        std::fs::set_permissions(tree.join("d/suid"), std::fs::Permissions::from_mode(0o4755))
            .expect("chmod");
        nix::unistd::mkfifo(&tree.join("d/e/fifo"), nix::sys::stat::Mode::S_IRUSR).expect("mkfifo");
        std::os::unix::fs::symlink("/dev/null", tree.join("to-null")).expect("symlink");
        drop(h);
        assert!(!tree.join("d/suid").exists() && !tree.join("d/e/fifo").exists());
        assert!(tree.join("d/e/plain").exists());
        // A symlink is kept as a link: what it points at is not looked at.
        let link = std::fs::symlink_metadata(tree.join("to-null")).expect("link");
        assert!(link.file_type().is_symlink());
        assert!(std::fs::metadata("/dev/null")
            .expect("null")
            .file_type()
            .is_char_device());
        assert_eq!(
            std::fs::read_to_string(tree.parent().expect("slot").join(SIZE)).expect("size"),
            "5"
        );
        assert!(c.acquire(&k).expect("acquire").incremental());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cut_receive_is_cleaned_off_the_async_thread_and_waited_for() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        let c = Contexts::new(tmp.path(), ContextsConfig::default());
        let k = key(None, "", "context");
        let h = c.acquire(&k).expect("acquire");
        let tree = h.tree();
        for i in 0..300 {
            std::fs::write(tree.join(format!("f{i}")), b"x").expect("write");
        }
        std::fs::write(tree.join("suid"), b"x").expect("write");
        std::fs::set_permissions(tree.join("suid"), std::fs::Permissions::from_mode(0o4755))
            .expect("chmod");
        drop(h);
        // Taken at once: the same slot, once it is clean.
        let c2 = c.clone();
        let next = tokio::task::spawn_blocking(move || c2.acquire(&key(None, "", "context")))
            .await
            .expect("join")
            .expect("acquire");
        assert_eq!(next.tree(), tree);
        assert!(next.incremental());
        assert!(!tree.join("suid").exists() && tree.join("f299").exists());
        assert!(c.lock().salvaging.is_empty());
    }

    /// `du` sees a tenant's own slots, with their size and whether a
    /// build holds them; a client's prune removes only the free ones it
    /// selects, of its own tenant.
    #[test]
    fn slots_are_listed_and_removed_per_tenant() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let c = Contexts::new(tmp.path(), ContextsConfig::default());
        let mut a = c.acquire(&key(None, "s", "context")).expect("acquire");
        a.received(&stats(7, &[]), std::time::SystemTime::now())
            .expect("received");
        drop(a);
        let held = c.acquire(&key(None, "s", "dockerfile")).expect("acquire");
        let mut t = c
            .acquire(&key(Some("team"), "s", "context"))
            .expect("acquire");
        t.received(&stats(5, &[]), std::time::SystemTime::now())
            .expect("received");
        drop(t);
        let mine = c.list(None);
        let names: Vec<(&str, u64, bool)> = mine
            .iter()
            .map(|s| (s.name.as_str(), s.bytes, s.in_use))
            .collect();
        assert_eq!(names.len(), 2, "{mine:?}");
        assert!(names.contains(&("context", 7, false)), "{names:?}");
        assert!(names.contains(&("dockerfile", 0, true)), "{names:?}");
        let theirs = c.list(Some("team"));
        assert_eq!(theirs.len(), 1);
        assert_eq!((theirs[0].name.as_str(), theirs[0].bytes), ("context", 5));

        let gone = c.remove(None, |_| true);
        assert_eq!(gone.len(), 1, "the held slot stays: {gone:?}");
        assert_eq!(gone[0].name, "context");
        assert!(!tmp.path().join(CONTEXTS_DIR).join(&gone[0].id).exists());
        assert_eq!(c.list(None).len(), 1);
        assert_eq!(c.list(Some("team")).len(), 1, "another tenant's stays");
        drop(held);
        assert_eq!(c.remove(None, |s| s.name == "nothing").len(), 0);
        assert_eq!(c.remove(None, |_| true).len(), 1);
    }

    #[test]
    fn prune_removes_old_slots_then_the_least_recently_used_over_the_size() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let c = Contexts::new(tmp.path(), limits(Duration::from_secs(3600), 250));
        let mut trees = Vec::new();
        for (i, name) in ["old", "lru", "recent", "held"].iter().enumerate() {
            let mut h = c.acquire(&key(None, "", name)).expect("acquire");
            h.received(&stats(100, &[]), std::time::SystemTime::now())
                .expect("received");
            let slot = h.tree().parent().expect("slot").to_path_buf();
            // Last uses: 2 h ago, then 30, 20 and 10 minutes ago.
            let ago = [7200, 1800, 1200, 600][i];
            let t = SystemTime::now() - Duration::from_secs(ago);
            std::fs::File::open(&slot)
                .and_then(|f| f.set_modified(t))
                .expect("set mtime");
            trees.push((slot, h));
        }
        let held = trees.pop().expect("held");
        drop(trees);
        // "old" by age (300 left of 400); "lru" by size (200 left, with
        // "held", which is in use and never removed).
        let pruned = c.prune();
        assert_eq!(
            pruned,
            Pruned {
                slots: 2,
                bytes: 200
            }
        );
        let left: HashSet<String> = std::fs::read_dir(tmp.path().join(CONTEXTS_DIR))
            .expect("read_dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        let slot_of = |name: &str| format!("{}-0", key(None, "", name).hash());
        assert_eq!(left, HashSet::from([slot_of("recent"), slot_of("held")]));
        assert!(held.0.exists());
        drop(held);
        // With nothing allowed, everything not in use goes.
        let none = Contexts::new(tmp.path(), limits(Duration::from_secs(3600), 0));
        assert_eq!(none.prune().slots, 2);
    }

    #[test]
    fn privileged_entries_go_when_the_build_is_done_and_dirty_slots_are_pruned() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let c = Contexts::new(tmp.path(), ContextsConfig::default());
        let k = key(None, "", "context");
        let mut h = c.acquire(&k).expect("acquire");
        let tree = h.tree();
        std::fs::create_dir(tree.join("d")).expect("mkdir");
        for f in ["d/suid", "d/plain", "link"] {
            std::fs::write(tree.join(f), b"x").expect("write");
        }
        h.received(&stats(3, &["d/suid", "link"]), std::time::SystemTime::now())
            .expect("received");
        assert!(tree.join("d/suid").exists(), "kept while the build runs");
        drop(h);
        assert!(!tree.join("d/suid").exists() && !tree.join("link").exists());
        assert!(tree.join("d/plain").exists());
        let h = c.acquire(&k).expect("acquire");
        assert!(h.incremental(), "clean once they are gone");
        // Still dirty and free (kilnd crashed during its receive): pruned.
        std::mem::forget(h);
        c.lock().held.clear();
        let other = c.acquire(&key(None, "", "other")).expect("acquire");
        assert_eq!(c.prune().slots, 1, "the dirty, free slot");
        assert!(!tree.exists());
        assert!(other.tree().exists(), "a held slot stays");
    }
}
