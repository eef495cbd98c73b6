//! Unit tests of the hasher and its stat cache.

use super::state::StateFile;
use super::*;
use std::os::unix::fs::PermissionsExt;
use tempfile::TempDir;

/// A context directory and a state directory, with small helpers.
struct Fixture {
    ctx: TempDir,
    state: TempDir,
}

impl Fixture {
    fn new(files: &[(&str, &str)]) -> Self {
        let f = Fixture {
            ctx: tempfile::tempdir().expect("temp context"),
            state: tempfile::tempdir().expect("temp state"),
        };
        for (path, content) in files {
            f.write(path, content);
        }
        f
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.ctx.path().join(rel)
    }

    fn write(&self, rel: &str, content: &str) {
        let p = self.path(rel);
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir).expect("mkdir");
        }
        std::fs::write(&p, content).expect("write");
    }

    fn symlink(&self, rel: &str, target: &str) {
        std::os::unix::fs::symlink(target, self.path(rel)).expect("symlink");
    }

    /// A cache that trusts entries at once (no racy window), so that
    /// read counts are deterministic in freshly written trees.
    fn cache(&self) -> HashCache {
        HashCache::open(self.state.path()).with_racy_window(Duration::ZERO)
    }

    fn state_file(&self) -> PathBuf {
        let canon = std::fs::canonicalize(self.ctx.path()).expect("canonical context");
        self.cache().state_file(&canon)
    }
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The selection of a Dockerfile `COPY <src>`: symlinks followed,
/// wildcards expanded.
fn sel(src: &str) -> CopySelection {
    CopySelection {
        src: src.into(),
        allow_wildcard: true,
        ..CopySelection::all()
    }
}

/// Digest of `COPY <src>` with only `.dockerignore` patterns.
fn dig(c: &HashCache, f: &Fixture, src: &str, excludes: &[&str]) -> Digest {
    c.digest(f.ctx.path(), &sel(src), &strings(excludes))
        .expect("digest")
}

fn set_mtime(path: &Path, secs_ago: u64) {
    let t = SystemTime::now() - Duration::from_secs(secs_ago);
    std::fs::File::options()
        .write(true)
        .open(path)
        .expect("open for mtime")
        .set_modified(t)
        .expect("set mtime");
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[test]
fn hash_cache_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<HashCache>();
    assert_send_sync::<Arc<HashCache>>();
}

#[test]
fn same_content_with_other_mtimes_gives_same_digest() {
    let f = Fixture::new(&[("a.txt", "hello"), ("dir/b.txt", "world")]);
    let d1 = dig(&f.cache(), &f, ".", &[]);
    set_mtime(&f.path("a.txt"), 3600);
    set_mtime(&f.path("dir/b.txt"), 7200);
    assert_eq!(dig(&f.cache(), &f, ".", &[]), d1);

    // The same tree written elsewhere (other inodes, times) agrees too.
    let g = Fixture::new(&[("dir/b.txt", "world"), ("a.txt", "hello")]);
    assert_eq!(dig(&g.cache(), &g, ".", &[]), d1);
}

#[test]
fn content_change_changes_digest_even_with_same_size_and_mtime() {
    let f = Fixture::new(&[("a.txt", "hello"), ("dir/b.txt", "world")]);
    let c = f.cache();
    let d1 = dig(&c, &f, ".", &[]);
    let md = std::fs::metadata(f.path("a.txt")).expect("stat");
    f.write("a.txt", "HELLO");
    std::fs::File::options()
        .write(true)
        .open(f.path("a.txt"))
        .expect("open")
        .set_modified(md.modified().expect("mtime"))
        .expect("restore mtime");
    // ctime moved, so the warm cache re-reads the file.
    let d2 = dig(&c, &f, ".", &[]);
    assert_ne!(d1, d2);
    assert_eq!(dig(&f.cache(), &f, ".", &[]), d2);
}

#[test]
fn mode_change_changes_digest() {
    let f = Fixture::new(&[("run.sh", "echo hi"), ("d/x", "x")]);
    let c = f.cache();
    let d1 = dig(&c, &f, ".", &[]);
    chmod(&f.path("run.sh"), 0o755);
    let d2 = dig(&c, &f, ".", &[]);
    assert_ne!(d1, d2);
    chmod(&f.path("d"), 0o700);
    assert_ne!(dig(&c, &f, ".", &[]), d2);
}

#[test]
fn changes_to_ignored_or_excluded_files_keep_the_digest() {
    let f = Fixture::new(&[
        ("app.txt", "app"),
        ("debug.log", "1"),
        ("node_modules/m/index.js", "m"),
        ("src/tmp/scratch", "s"),
        ("src/main.go", "main"),
    ]);
    let c = f.cache();
    let ignore = ["*.log", "node_modules"];
    let d1 = dig(&c, &f, ".", &ignore);
    f.write("debug.log", "22");
    f.write("node_modules/m/index.js", "changed");
    f.write("node_modules/new.js", "new");
    assert_eq!(dig(&c, &f, ".", &ignore), d1);
    // Without the ignore file they count.
    assert_ne!(dig(&c, &f, ".", &[]), d1);

    // The op's exclude patterns are relative to the source.
    let by_op = |c: &HashCache| {
        let s = CopySelection {
            exclude_patterns: strings(&["tmp"]),
            ..sel("src")
        };
        c.digest(f.ctx.path(), &s, &[]).expect("digest")
    };
    let d3 = by_op(&c);
    f.write("src/tmp/scratch", "changed");
    assert_eq!(by_op(&c), d3);
    f.write("src/main.go", "changed");
    assert_ne!(by_op(&c), d3);
}

#[test]
fn include_patterns_select_below_the_source() {
    let f = Fixture::new(&[("src/a.go", "a"), ("src/b.md", "b"), ("src/x/c.go", "c")]);
    let c = f.cache();
    let go = |c: &HashCache| {
        let s = CopySelection {
            include_patterns: strings(&["*.go", "x"]),
            ..sel("src")
        };
        c.digest(f.ctx.path(), &s, &[]).expect("digest")
    };
    let d1 = go(&c);
    f.write("src/b.md", "changed");
    assert_eq!(go(&c), d1);
    f.write("src/x/c.go", "changed");
    assert_ne!(go(&c), d1);
}

#[test]
fn changes_outside_the_source_keep_the_digest() {
    let f = Fixture::new(&[("a.txt", "a"), ("dir/b.txt", "b"), ("other/c", "c")]);
    let c = f.cache();
    let d1 = dig(&c, &f, "dir/", &[]);
    f.write("a.txt", "changed");
    f.write("other/c", "changed");
    f.write("other/new", "new");
    assert_eq!(dig(&c, &f, "dir/", &[]), d1);
    assert_eq!(dig(&c, &f, "/dir", &[]), d1);
    f.write("dir/b.txt", "changed");
    assert_ne!(dig(&c, &f, "dir", &[]), d1);
}

#[test]
fn wildcard_sources_hash_their_matches() {
    let f = Fixture::new(&[
        ("a.txt", "a"),
        ("b.go", "b"),
        ("dir/p/x", "px"),
        ("dir/q/x", "qx"),
        ("dir/q/y", "qy"),
    ]);
    let c = f.cache();
    let d1 = dig(&c, &f, "*.txt", &[]);
    f.write("b.go", "changed");
    assert_eq!(dig(&c, &f, "*.txt", &[]), d1);
    f.write("a.txt", "changed");
    let d2 = dig(&c, &f, "*.txt", &[]);
    assert_ne!(d2, d1);
    f.write("c.txt", "new match");
    let d3 = dig(&c, &f, "*.txt", &[]);
    assert_ne!(d3, d2);
    // An ignored match is invisible, as it is to the copy.
    assert_eq!(dig(&c, &f, "*.txt", &["c.txt"]), d2);

    let e1 = dig(&c, &f, "dir/*/x", &[]);
    f.write("dir/q/y", "changed");
    assert_eq!(dig(&c, &f, "dir/*/x", &[]), e1);
    f.write("dir/q/x", "changed");
    assert_ne!(dig(&c, &f, "dir/*/x", &[]), e1);

    // No match is stable and differs from a match.
    let none = dig(&c, &f, "*.rs", &[]);
    assert_eq!(dig(&f.cache(), &f, "*.rs", &[]), none);
    assert_ne!(none, d3);
}

#[test]
fn missing_source_gives_a_stable_not_found_digest() {
    let f = Fixture::new(&[("a.txt", "")]);
    let c = f.cache();
    let d1 = dig(&c, &f, "missing.txt", &[]);
    assert_eq!(dig(&f.cache(), &f, "missing.txt", &[]), d1);
    assert_eq!(dig(&c, &f, "a.txt/below", &[]), d1);
    // An ignored source is not found either.
    assert_eq!(dig(&c, &f, "a.txt", &["a.txt"]), d1);
    assert_ne!(dig(&c, &f, "a.txt", &[]), d1);
    let gone = f.ctx.path().join("no-such-context");
    let g1 = c.digest(&gone, &sel("."), &[]).expect("digest");
    assert_eq!(c.digest(&gone, &sel("."), &[]).expect("digest"), g1);
}

#[test]
fn symlinks_are_hashed_as_targets_and_never_leave_the_context() {
    let f = Fixture::new(&[("dir/a", "a"), ("real.txt", "real"), ("other", "o")]);
    f.symlink("dir/link", "../other");
    f.symlink("top", "real.txt");
    f.symlink("escape", "/etc/passwd");
    let c = f.cache();

    // Inside a copied tree a link is its target string.
    let d1 = dig(&c, &f, "dir", &[]);
    f.write("other", "changed");
    assert_eq!(dig(&c, &f, "dir", &[]), d1);
    std::fs::remove_file(f.path("dir/link")).expect("rm");
    f.symlink("dir/link", "../real.txt");
    assert_ne!(dig(&c, &f, "dir", &[]), d1);

    // A source that is a link may be followed by the copy: its target
    // counts too.
    let t1 = dig(&c, &f, "top", &[]);
    f.write("real.txt", "changed");
    assert_ne!(dig(&c, &f, "top", &[]), t1);

    // An absolute target is resolved inside the context, where
    // /etc/passwd does not exist; the host file is never read.
    c.take_reads();
    let e1 = dig(&c, &f, "escape", &[]);
    assert_eq!(c.take_reads(), 0);
    f.write("etc/passwd", "in context");
    assert_ne!(dig(&c, &f, "escape", &[]), e1);
}

#[test]
fn symlink_loops_and_special_files_do_not_fail_the_digest() {
    let f = Fixture::new(&[("d/a", "a")]);
    f.symlink("x", "y");
    f.symlink("y", "x");
    let c = f.cache();
    let l1 = dig(&c, &f, "x", &[]);
    assert_eq!(dig(&c, &f, "x/below", &[]), dig(&c, &f, "y/below", &[]));
    assert_eq!(dig(&f.cache(), &f, "x", &[]), l1);

    let sock = f.path("d/sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind socket");
    c.take_reads();
    let s1 = dig(&c, &f, "d", &[]);
    assert_eq!(c.take_reads(), 1, "only the regular file is read");
    assert_eq!(dig(&c, &f, "d", &[]), s1);
}

#[test]
fn hard_link_structure_counts() {
    let f = Fixture::new(&[("a", "same"), ("b", "same")]);
    let g = Fixture::new(&[("a", "same")]);
    std::fs::hard_link(g.path("a"), g.path("b")).expect("link");
    assert_ne!(dig(&f.cache(), &f, ".", &[]), dig(&g.cache(), &g, ".", &[]));
}

#[test]
fn warm_calls_read_no_content() {
    let f = Fixture::new(&[("a", "1"), ("b", "2"), ("d/c", "3")]);
    let c = f.cache();
    let d1 = dig(&c, &f, ".", &[]);
    assert_eq!(c.take_reads(), 3);
    assert_eq!(dig(&c, &f, ".", &[]), d1);
    assert_eq!(c.take_reads(), 0);
    f.write("d/c", "4");
    assert_ne!(dig(&c, &f, ".", &[]), d1);
    assert_eq!(c.take_reads(), 1);

    // The saved cache serves a new process.
    c.save().expect("save");
    let c2 = f.cache();
    dig(&c2, &f, ".", &[]);
    assert_eq!(c2.take_reads(), 0);
}

#[test]
fn racy_entries_are_reread_until_they_age() {
    let f = Fixture::new(&[("a", "1"), ("b", "2")]);
    let c = HashCache::open(f.state.path()).with_racy_window(Duration::from_millis(300));
    let d1 = dig(&c, &f, ".", &[]);
    assert_eq!(c.take_reads(), 2);
    // Recorded too close to the files' mtime: not trusted.
    assert_eq!(dig(&c, &f, ".", &[]), d1);
    assert_eq!(c.take_reads(), 2);
    std::thread::sleep(Duration::from_millis(400));
    // Re-read once more, now recorded well after the last change.
    assert_eq!(dig(&c, &f, ".", &[]), d1);
    assert_eq!(c.take_reads(), 2);
    assert_eq!(dig(&c, &f, ".", &[]), d1);
    assert_eq!(c.take_reads(), 0);
}

#[test]
fn default_window_distrusts_fresh_files() {
    let f = Fixture::new(&[("a", "1")]);
    let c = HashCache::open(f.state.path());
    dig(&c, &f, ".", &[]);
    dig(&c, &f, ".", &[]);
    assert_eq!(c.take_reads(), 2);
}

#[test]
fn deleted_or_corrupt_cache_file_gives_same_digest() {
    let f = Fixture::new(&[("a", "1"), ("d/b", "2")]);
    let c = f.cache();
    let d1 = dig(&c, &f, ".", &[]);
    c.save().expect("save");
    let file = f.state_file();
    assert!(file.exists(), "{}", file.display());

    std::fs::remove_file(&file).expect("rm cache");
    let c2 = f.cache();
    assert_eq!(dig(&c2, &f, ".", &[]), d1);
    assert_eq!(c2.take_reads(), 2);
    c2.save().expect("save");

    for garbage in [
        &b"{not json"[..],
        b"",
        br#"{"version":1,"context":"/elsewhere","entries":{}}"#,
        br#"{"version":99,"context":"/","entries":{}}"#,
    ] {
        std::fs::write(&file, garbage).expect("corrupt");
        let c3 = f.cache();
        assert_eq!(dig(&c3, &f, ".", &[]), d1);
        assert_eq!(c3.take_reads(), 2);
        c3.save().expect("rewrite");
        let c4 = f.cache();
        assert_eq!(dig(&c4, &f, ".", &[]), d1);
        assert_eq!(c4.take_reads(), 0, "rebuilt file is used");
    }
}

#[test]
fn save_is_a_no_op_when_clean_and_drops_vanished_files() {
    let f = Fixture::new(&[("a", "1"), ("d/b", "2")]);
    let c = f.cache();
    dig(&c, &f, ".", &[]);
    c.save().expect("save");
    let file = f.state_file();
    std::fs::remove_file(&file).expect("rm");
    dig(&c, &f, ".", &[]);
    c.save().expect("save");
    assert!(!file.exists(), "clean cache is not rewritten");

    std::fs::remove_file(f.path("d/b")).expect("rm");
    dig(&c, &f, ".", &[]);
    c.save().expect("save");
    let state: StateFile =
        serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("parse");
    let keys: Vec<_> = state.entries.keys().cloned().collect();
    assert_eq!(keys, ["", "a", "d"]);
}

#[test]
fn twenty_thousand_files_warm_reads_nothing() {
    let f = Fixture::new(&[]);
    for d in 0..200 {
        let dir = f.path(&format!("d{d:03}"));
        std::fs::create_dir(&dir).expect("mkdir");
        for i in 0..100 {
            std::fs::write(dir.join(format!("f{i:03}")), format!("{d}/{i}")).expect("write");
        }
    }
    let c = f.cache();
    let d1 = dig(&c, &f, ".", &[]);
    assert_eq!(c.take_reads(), 20_000);
    assert_eq!(dig(&c, &f, ".", &[]), d1);
    assert_eq!(c.take_reads(), 0);
    c.save().expect("save");
    let c2 = f.cache();
    assert_eq!(dig(&c2, &f, ".", &[]), d1);
    assert_eq!(c2.take_reads(), 0);
}

#[test]
fn bad_patterns_and_error_messages() {
    let f = Fixture::new(&[("a", "1")]);
    let err = f
        .cache()
        .digest(f.ctx.path(), &sel("."), &strings(&["[abc"]))
        .expect_err("bad pattern");
    assert_eq!(err.to_string(), "invalid dockerignore pattern");
    let err = HashError::Changed {
        path: PathBuf::from("/ctx/a"),
    };
    assert_eq!(err.to_string(), "/ctx/a changed while hashing");
}

#[test]
fn the_copy_options_decide_what_is_hashed() {
    let f = Fixture::new(&[("real.txt", "real"), ("a.txt", "a")]);
    f.symlink("top", "real.txt");
    let c = f.cache();
    let digest = |s: &CopySelection| c.digest(f.ctx.path(), s, &[]).expect("digest");

    // Without follow_symlink the copy takes the link, not its target.
    let no_follow = CopySelection {
        follow_symlink: false,
        ..sel("top")
    };
    let (n1, y1) = (digest(&no_follow), digest(&sel("top")));
    assert_ne!(n1, y1);
    f.write("real.txt", "changed");
    assert_eq!(digest(&no_follow), n1);
    assert_ne!(digest(&sel("top")), y1);

    // Without allow_wildcard a source is a literal name.
    let literal = CopySelection {
        allow_wildcard: false,
        ..sel("*.txt")
    };
    let l1 = digest(&literal);
    let w1 = digest(&sel("*.txt"));
    f.write("a.txt", "changed");
    assert_eq!(digest(&literal), l1, "no file is named *.txt");
    assert_ne!(digest(&sel("*.txt")), w1);
    f.write("*.txt", "a literal name");
    assert_ne!(digest(&literal), l1);
}

/// A tree below the owned root (kilnd's kept contexts) is trusted as soon
/// as it is hashed, and a hard link its owner makes (which moves the
/// inode's ctime) does not make the next hash read the file again; a
/// change of the file still does.
#[test]
fn owned_trees_are_trusted_at_once_and_survive_their_owners_links() {
    let root = tempfile::tempdir().expect("root");
    let state = tempfile::tempdir().expect("state");
    let ctx = root.path().join("slot/tree");
    std::fs::create_dir_all(&ctx).expect("mkdir");
    std::fs::write(ctx.join("a"), "1").expect("write");
    std::fs::write(ctx.join("b"), "2").expect("write");
    let owned = || HashCache::open(state.path()).with_owned_root(root.path());
    let c = owned();
    assert!(c.owns(&ctx));
    assert!(!c.owns(root.path()), "the root itself is not a tree");
    assert!(!c.owns(state.path()));
    let d1 = c.digest(&ctx, &sel("."), &[]).expect("digest");
    assert_eq!(c.take_reads(), 2);
    // No racy window for an owned tree (the default cache re-reads).
    assert_eq!(c.digest(&ctx, &sel("."), &[]).expect("digest"), d1);
    assert_eq!(c.take_reads(), 0);
    assert_eq!(c.known_files(&ctx).len(), 2);

    // The owner links `a` elsewhere: its ctime moves.
    let elsewhere = root.path().join("snapshot-a");
    std::fs::hard_link(ctx.join("a"), &elsewhere).expect("link");
    c.relinked(&ctx, ["a", "missing"]);
    c.save().expect("save");
    let c2 = owned();
    assert_eq!(c2.digest(&ctx, &sel("."), &[]).expect("digest"), d1);
    assert_eq!(c2.take_reads(), 0, "the link did not make `a` unknown");
    assert_eq!(c2.known_files(&ctx).len(), 2);

    // Without `relinked`, the moved ctime means a read.
    std::fs::hard_link(ctx.join("b"), root.path().join("snapshot-b")).expect("link");
    assert_eq!(c2.digest(&ctx, &sel("."), &[]).expect("digest"), d1);
    assert_eq!(c2.take_reads(), 1);

    // A tree outside the root is not relinked.
    let other = tempfile::tempdir().expect("other");
    std::fs::write(other.path().join("x"), "x").expect("write");
    let plain = HashCache::open(state.path()).with_racy_window(Duration::ZERO);
    plain.digest(other.path(), &sel("."), &[]).expect("digest");
    std::fs::hard_link(other.path().join("x"), other.path().join("y")).expect("link");
    plain.relinked(other.path(), ["x"]);
    std::fs::remove_file(other.path().join("y")).expect("rm");
    let _ = plain.take_reads();
    plain.digest(other.path(), &sel("."), &[]).expect("digest");
    assert_eq!(
        plain.take_reads(),
        1,
        "ctime still counts outside the owned root"
    );
}

/// Digests recorded for files an owned tree received are used as they
/// are: the next hash reads nothing and gives the digest a read gives.
#[test]
fn received_digests_spare_the_first_read_of_an_owned_tree() {
    use sha2::Digest as _;
    let root = tempfile::tempdir().expect("root");
    let state = tempfile::tempdir().expect("state");
    let ctx = root.path().join("slot/tree");
    std::fs::create_dir_all(ctx.join("d")).expect("mkdir");
    std::fs::write(ctx.join("a"), "1").expect("write");
    std::fs::write(ctx.join("d/b"), "2").expect("write");
    // A name that is not UTF-8 is not cached (the hasher reads it).
    let latin1 = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(b"d/caf\xe9"));
    std::fs::write(ctx.join(&latin1), "3").expect("write");
    let sha = |s: &str| -> [u8; 32] { Sha256::digest(s.as_bytes()).into() };
    let c = HashCache::open(state.path()).with_owned_root(root.path());
    c.record_received(
        &ctx,
        &[
            ("a".into(), sha("1")),
            ("d/b".into(), sha("2")),
            (latin1, sha("3")),
        ],
    );
    let d = c.digest(&ctx, &sel("."), &[]).expect("digest");
    assert_eq!(c.take_reads(), 1, "only the file whose name is not UTF-8");
    // The same digest as a cache that reads the files.
    let fresh = tempfile::tempdir().expect("state");
    let reader = HashCache::open(fresh.path()).with_racy_window(Duration::ZERO);
    assert_eq!(reader.digest(&ctx, &sel("."), &[]).expect("digest"), d);
    assert_eq!(reader.take_reads(), 3);

    // Outside the owned root nothing is recorded.
    let plain = HashCache::open(state.path());
    let other = tempfile::tempdir().expect("other");
    std::fs::write(other.path().join("x"), "x").expect("write");
    plain.record_received(other.path(), &[("x".into(), sha("not x"))]);
    let _ = plain.digest(other.path(), &sel("."), &[]).expect("digest");
    assert_eq!(plain.take_reads(), 1);
}

/// Digests are kept as bytes but the state file still holds them as
/// lowercase hex (files written before stay readable), and an entry whose
/// digest is not 64 lowercase hex digits makes the file be rebuilt.
#[test]
fn state_file_digests_are_lowercase_hex() {
    let f = Fixture::new(&[("a", "1")]);
    let c = f.cache();
    let d1 = dig(&c, &f, ".", &[]);
    c.save().expect("save");
    let file = f.state_file();
    let saved: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).expect("read")).expect("json");
    assert_eq!(
        saved["entries"]["a"]["h"],
        hex::encode(Sha256::digest(b"1")),
        "{saved}"
    );

    let text = std::fs::read_to_string(&file).expect("read");
    let upper = text.replace(
        &hex::encode(Sha256::digest(b"1")),
        &hex::encode_upper(Sha256::digest(b"1")),
    );
    assert_ne!(upper, text);
    std::fs::write(&file, upper).expect("write");
    let c2 = f.cache();
    assert_eq!(dig(&c2, &f, ".", &[]), d1);
    assert_eq!(c2.take_reads(), 1, "an upper-case digest is not trusted");
}
