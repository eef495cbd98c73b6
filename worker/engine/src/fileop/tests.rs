//! Tests of the file actions on temp dirs. Most need root, because chown is
//! real: every COPY without `--chown` owns what it writes to uid 0. Those
//! start with `needs_root`; the parts that write no owner run everywhere.

use super::*;
use kiln_context::ignore::{parse_dockerignore, PatternMatcher};
use kiln_solver::{ChownOpt, FileCopy, FileMkDir, FileMkFile, FileRm, FileSymlink, UserOpt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use tempfile::TempDir;

struct Fx {
    _base: TempDir,
    ctx: PathBuf,
    dest: PathBuf,
}

/// A context dir and a destination rootfs side by side under one temp dir,
/// so escapes can be checked against the common parent too.
fn fx() -> Fx {
    let base = tempfile::tempdir().expect("tempdir");
    let ctx = base.path().join("ctx");
    let dest = base.path().join("rootfs");
    std::fs::create_dir(&ctx).expect("mkdir ctx");
    std::fs::create_dir(&dest).expect("mkdir rootfs");
    Fx {
        _base: base,
        ctx,
        dest,
    }
}

fn write(root: &Path, rel: &str, data: &str) -> PathBuf {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent).expect("mkdir -p");
    }
    std::fs::write(&p, data).expect("write");
    p
}

fn read(root: &Path, rel: &str) -> String {
    std::fs::read_to_string(root.join(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn lstat(root: &Path, rel: &str) -> std::fs::Metadata {
    std::fs::symlink_metadata(root.join(rel)).unwrap_or_else(|e| panic!("stat {rel}: {e}"))
}

fn exists(root: &Path, rel: &str) -> bool {
    std::fs::symlink_metadata(root.join(rel)).is_ok()
}

fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn chown(p: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(p, Some(uid), Some(gid)).expect("chown");
}

/// A Dockerfile-like `COPY src dest`.
fn cp(src: &str, dest: &str) -> FileCopy {
    FileCopy {
        src: src.into(),
        dest: dest.into(),
        follow_symlink: true,
        dir_copy_contents: true,
        create_dest_path: true,
        allow_wildcard: true,
        allow_empty_wildcard: false,
        ..FileCopy::default()
    }
}

fn run(f: &Fx, op: &FileCopy) -> Result<()> {
    copy(&f.ctx, &f.dest, &f.dest, op, None)
}

#[test]
fn file_to_file_keeps_mode_and_mtime_and_resets_owner() {
    if !kiln_types::testing::needs_root("chown of the source to uid 1234") {
        return;
    }
    let f = fx();
    let a = write(&f.ctx, "a.txt", "hello");
    chown(&a, 1234, 1234);
    set_mode(&a, 0o4751);
    let mtime = 1_600_000_000_123_456_789;
    meta::set_times(&f.ctx, &a, mtime, mtime).expect("utime");
    run(&f, &cp("a.txt", "/out/b.txt")).expect("copy");
    assert_eq!(read(&f.dest, "out/b.txt"), "hello");
    let md = lstat(&f.dest, "out/b.txt");
    assert_eq!(md.mode() & 0o7777, 0o4751);
    assert_eq!((md.uid(), md.gid()), (0, 0));
    assert_eq!(md.mtime() * 1_000_000_000 + md.mtime_nsec(), mtime);
    assert_eq!(lstat(&f.dest, "out").mode() & 0o7777, 0o755);
}

#[test]
fn copy_keep_owner_preserves_source_ids() {
    if !kiln_types::testing::needs_root("chown of the source to uid 1234") {
        return;
    }
    let f = fx();
    let a = write(&f.ctx, "d/a.txt", "x");
    chown(&a, 1234, 4321);
    copy_keep_owner(&f.ctx, &f.dest, &f.dest, &cp("/d", "/out/"), None).expect("copy");
    let md = lstat(&f.dest, "out/a.txt");
    assert_eq!((md.uid(), md.gid()), (1234, 4321));
}

#[test]
fn file_into_directory() {
    if !kiln_types::testing::needs_root("COPY chowns what it writes to uid 0") {
        return;
    }
    let f = fx();
    write(&f.ctx, "a.txt", "a");
    run(&f, &cp("/a.txt", "/app/")).expect("copy to dir/");
    assert_eq!(read(&f.dest, "app/a.txt"), "a");
    // An existing directory without trailing slash receives the file too.
    std::fs::create_dir(f.dest.join("existing")).expect("mkdir");
    run(&f, &cp("a.txt", "existing")).expect("copy to existing dir");
    assert_eq!(read(&f.dest, "existing/a.txt"), "a");
    // Existing files are replaced.
    write(&f.ctx, "a.txt", "new");
    run(&f, &cp("a.txt", "/app/a.txt")).expect("replace");
    assert_eq!(read(&f.dest, "app/a.txt"), "new");
}

#[test]
fn directory_contents_are_copied_and_merged() {
    if !kiln_types::testing::needs_root("COPY chowns what it writes to uid 0") {
        return;
    }
    let f = fx();
    write(&f.ctx, "dir/x", "x");
    write(&f.ctx, "dir/sub/y", "y");
    set_mode(&f.ctx.join("dir/sub"), 0o750);
    run(&f, &cp("dir", "/dest")).expect("copy dir");
    assert_eq!(read(&f.dest, "dest/x"), "x");
    assert_eq!(read(&f.dest, "dest/sub/y"), "y");
    assert_eq!(lstat(&f.dest, "dest/sub").mode() & 0o7777, 0o750);
    assert_eq!(lstat(&f.dest, "dest").mode() & 0o7777, 0o755);

    // Merging into an existing dir keeps its owner and mode.
    let existing = f.dest.join("merge");
    std::fs::create_dir(&existing).expect("mkdir");
    write(&f.dest, "merge/old", "old");
    set_mode(&existing, 0o700);
    chown(&existing, 42, 42);
    run(&f, &cp("dir/", "/merge")).expect("merge");
    let md = lstat(&f.dest, "merge");
    assert_eq!((md.mode() & 0o7777, md.uid()), (0o700, 42));
    assert_eq!(read(&f.dest, "merge/old"), "old");
    assert_eq!(read(&f.dest, "merge/sub/y"), "y");

    // Without dir_copy_contents an existing destination receives the dir.
    let mut op = cp("dir", "/merge");
    op.dir_copy_contents = false;
    run(&f, &op).expect("copy dir itself");
    assert_eq!(read(&f.dest, "merge/dir/sub/y"), "y");
}

#[test]
fn wildcard_matches_copy_in_turn_and_single_match_to_file() {
    if !kiln_types::testing::needs_root("COPY chowns what it writes to uid 0") {
        return;
    }
    let f = fx();
    write(&f.ctx, "a.txt", "a");
    write(&f.ctx, "b.txt", "b");
    write(&f.ctx, "c.md", "c");
    write(&f.ctx, "sub/d.txt", "d");
    run(&f, &cp("/*.txt", "/out/")).expect("copy");
    assert_eq!(read(&f.dest, "out/a.txt"), "a");
    assert_eq!(read(&f.dest, "out/b.txt"), "b");
    assert!(!exists(&f.dest, "out/c.md"));
    assert!(!exists(&f.dest, "out/d.txt"), "* must not cross /");
    // Without a trailing slash each match is copied onto the path in
    // turn (fsutil): the last one stays, a file.
    run(&f, &cp("/*.txt", "/last")).expect("copy");
    assert_eq!(read(&f.dest, "last"), "b");
    run(&f, &cp("/a*.txt", "/single")).expect("copy");
    assert_eq!(read(&f.dest, "single"), "a");
    run(&f, &cp("/s?b/*.txt", "/nested/")).expect("copy");
    assert_eq!(read(&f.dest, "nested/d.txt"), "d");
}

#[test]
fn missing_source_and_empty_wildcard_are_not_found() {
    let f = fx();
    let e = run(&f, &cp("missing.txt", "/")).expect_err("missing");
    assert_eq!(e.to_string(), "\"/missing.txt\": not found");
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let e = run(&f, &cp("/*.nope", "/out/")).expect_err("empty wildcard");
    assert_eq!(e.to_string(), "\"/*.nope\": not found");
    let mut op = cp("/*.nope", "/out/");
    op.allow_empty_wildcard = true;
    run(&f, &op).expect("allowed");
    assert!(!exists(&f.dest, "out"));
    let mut op = cp("/a.txt", "/no/parent/x");
    op.create_dest_path = false;
    write(&f.ctx, "a.txt", "a");
    assert!(matches!(
        run(&f, &op),
        Err(FileOpError::DestParentMissing { .. })
    ));
}

fn passwd(root: &Path) {
    write(
        root,
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
    );
    write(root, "etc/group", "root:x:0:\napp:x:1001:\ngrp:x:2000:\n");
}

fn chown_op(src: &str, dest: &str, user: Option<UserOpt>, group: Option<UserOpt>) -> FileCopy {
    let mut op = cp(src, dest);
    op.owner = Some(ChownOpt { user, group });
    op
}

#[test]
fn chown_by_name_and_id() {
    if !kiln_types::testing::needs_root("COPY --chown to uid 1000") {
        return;
    }
    let f = fx();
    passwd(&f.dest);
    write(&f.ctx, "d/a", "a");
    let op = chown_op("d", "/new/deep/", Some(UserOpt::ByName("app".into())), None);
    run(&f, &op).expect("chown app");
    for rel in ["new", "new/deep", "new/deep/a"] {
        let md = lstat(&f.dest, rel);
        assert_eq!((md.uid(), md.gid()), (1000, 1001), "{rel}");
    }
    let op = chown_op(
        "d/a",
        "/g",
        Some(UserOpt::ByName("app".into())),
        Some(UserOpt::ByName("grp".into())),
    );
    run(&f, &op).expect("chown app:grp");
    let md = lstat(&f.dest, "g");
    assert_eq!((md.uid(), md.gid()), (1000, 2000));
    run(&f, &chown_op("d/a", "/i", Some(UserOpt::ById(42)), None)).expect("by id");
    let md = lstat(&f.dest, "i");
    assert_eq!((md.uid(), md.gid()), (42, 42));
    run(
        &f,
        &chown_op("d/a", "/j", Some(UserOpt::ById(42)), Some(UserOpt::ById(7))),
    )
    .expect("by ids");
    let md = lstat(&f.dest, "j");
    assert_eq!((md.uid(), md.gid()), (42, 7));
    run(
        &f,
        &chown_op("d/a", "/k", Some(UserOpt::ByName("nobody".into())), None),
    )
    .expect("unknown user");
    // BuildKit's readUser: an unknown user is 0:0, an unknown group keeps
    // the user's gid.
    let md = lstat(&f.dest, "k");
    assert_eq!((md.uid(), md.gid()), (0, 0));
    run(
        &f,
        &chown_op(
            "d/a",
            "/l",
            Some(UserOpt::ById(42)),
            Some(UserOpt::ByName("nosuchgroup".into())),
        ),
    )
    .expect("unknown group");
    let md = lstat(&f.dest, "l");
    assert_eq!((md.uid(), md.gid()), (42, 42));
}

#[test]
fn chmod_applies_to_everything_copied_and_created() {
    if !kiln_types::testing::needs_root("COPY chowns what it writes to uid 0") {
        return;
    }
    let f = fx();
    write(&f.ctx, "d/a", "a");
    write(&f.ctx, "d/s/b", "b");
    let mut op = cp("d", "/p/q/");
    op.mode = Some(0o700);
    run(&f, &op).expect("copy");
    for rel in ["p", "p/q", "p/q/a", "p/q/s", "p/q/s/b"] {
        assert_eq!(lstat(&f.dest, rel).mode() & 0o7777, 0o700, "{rel}");
    }
}

#[test]
fn timestamp_override_applies_to_files_dirs_and_created_parents() {
    if !kiln_types::testing::needs_root("COPY chowns what it writes to uid 0") {
        return;
    }
    let f = fx();
    write(&f.ctx, "d/s/a", "a");
    let ts = 1_234_567_890_000_000_123;
    let mut op = cp("d", "/p/q");
    op.timestamp = Some(ts);
    run(&f, &op).expect("copy");
    for rel in ["p", "p/q", "p/q/s", "p/q/s/a"] {
        let md = lstat(&f.dest, rel);
        assert_eq!(md.mtime() * 1_000_000_000 + md.mtime_nsec(), ts, "{rel}");
    }
}

#[test]
fn symlinks_inside_trees_stay_symlinks() {
    if !kiln_types::testing::needs_root("COPY chowns what it writes to uid 0") {
        return;
    }
    let f = fx();
    write(&f.ctx, "a.txt", "a");
    write(&f.ctx, "d/f", "f");
    std::os::unix::fs::symlink("../a.txt", f.ctx.join("d/rel")).expect("symlink");
    std::os::unix::fs::symlink("/etc/passwd", f.ctx.join("d/abs")).expect("symlink");
    std::os::unix::fs::symlink("nowhere", f.ctx.join("d/dangling")).expect("symlink");
    run(&f, &cp("d", "/out")).expect("copy");
    for (rel, target) in [
        ("out/rel", "../a.txt"),
        ("out/abs", "/etc/passwd"),
        ("out/dangling", "nowhere"),
    ] {
        assert!(lstat(&f.dest, rel).file_type().is_symlink(), "{rel}");
        assert_eq!(
            std::fs::read_link(f.dest.join(rel)).expect("readlink"),
            PathBuf::from(target)
        );
    }

    // A top-level symlink source is followed only with follow_symlink.
    std::os::unix::fs::symlink("a.txt", f.ctx.join("top")).expect("symlink");
    run(&f, &cp("top", "/followed")).expect("copy");
    assert!(lstat(&f.dest, "followed").file_type().is_file());
    assert_eq!(read(&f.dest, "followed"), "a");
    let mut op = cp("top", "/kept");
    op.follow_symlink = false;
    run(&f, &op).expect("copy");
    assert!(lstat(&f.dest, "kept").file_type().is_symlink());
}

#[test]
fn hardlinks_are_preserved() {
    if !kiln_types::testing::needs_root("COPY chowns what it writes to uid 0") {
        return;
    }
    let f = fx();
    write(&f.ctx, "d/h1", "same");
    std::fs::hard_link(f.ctx.join("d/h1"), f.ctx.join("d/h2")).expect("link");
    write(&f.ctx, "d/other", "other");
    run(&f, &cp("d", "/out")).expect("copy");
    let (a, b) = (lstat(&f.dest, "out/h1"), lstat(&f.dest, "out/h2"));
    assert_eq!(a.ino(), b.ino());
    assert_eq!(a.nlink(), 2);
    assert_eq!(lstat(&f.dest, "out/other").nlink(), 1);
}

/// The source-side escapes that end in an error write nothing, so no owner
/// either: this part runs without root.
#[test]
fn escaping_source_symlinks_and_loops_fail_without_reading_outside() {
    let f = fx();
    // A context symlink to /etc resolves to <ctx>/etc, which is missing.
    std::os::unix::fs::symlink("/etc", f.ctx.join("evil")).expect("symlink");
    let e = run(&f, &cp("evil/passwd", "/stolen")).expect_err("must not read host /etc");
    assert!(matches!(e, FileOpError::NotFound { .. }), "{e}");
    assert!(!exists(&f.dest, "stolen"));
    // `..` links and `..` in the source are clamped too.
    write(f.ctx.parent().expect("parent"), "outside", "host file");
    std::os::unix::fs::symlink("../../../..", f.ctx.join("up")).expect("symlink");
    assert!(run(&f, &cp("../outside", "/s2")).is_err());
    assert!(run(&f, &cp("up/outside", "/s3")).is_err());
    // Nothing was written (a failed chown would leave the file behind).
    assert!(!exists(&f.dest, "s2") && !exists(&f.dest, "s3"));

    // Symlink loops end in an error, not a hang.
    std::os::unix::fs::symlink("loop", f.ctx.join("loop")).expect("symlink");
    let e = run(&f, &cp("loop/x", "/l")).expect_err("loop");
    assert!(matches!(e, FileOpError::SymlinkLoop { .. }), "{e}");
}

#[test]
fn escaping_symlinks_are_clamped_to_their_roots() {
    if !kiln_types::testing::needs_root("COPY chowns what it writes to uid 0") {
        return;
    }
    let f = fx();
    // Source side: a context symlink to /etc resolves to <ctx>/etc.
    std::os::unix::fs::symlink("/etc", f.ctx.join("evil")).expect("symlink");
    write(&f.ctx, "etc/passwd", "ctx passwd");
    run(&f, &cp("evil/passwd", "/ok")).expect("clamped copy");
    assert_eq!(read(&f.dest, "ok"), "ctx passwd");
    // `..` links are clamped too.
    write(&f.ctx, "secret", "inside");
    std::os::unix::fs::symlink("../../../..", f.ctx.join("up")).expect("symlink");
    run(&f, &cp("up/secret", "/s1")).expect("copy");
    assert_eq!(read(&f.dest, "s1"), "inside");

    // Destination side: a symlink in the rootfs to /etc writes into the
    // rootfs' etc, never the host's.
    write(&f.ctx, "a.txt", "a");
    std::os::unix::fs::symlink("/etc", f.dest.join("target")).expect("symlink");
    run(&f, &cp("a.txt", "/target/")).expect("copy");
    assert_eq!(read(&f.dest, "etc/a.txt"), "a");
    assert!(!Path::new("/etc/a.txt").exists());
    run(&f, &cp("a.txt", "../../../escaped.txt")).expect("copy");
    assert_eq!(read(&f.dest, "escaped.txt"), "a");
    assert!(!exists(f.ctx.parent().expect("parent"), "escaped.txt"));
    // A symlink at the destination is followed inside the rootfs.
    std::os::unix::fs::symlink("/etc/hostname", f.dest.join("ln")).expect("symlink");
    run(&f, &cp("a.txt", "/ln")).expect("copy");
    assert_eq!(read(&f.dest, "etc/hostname"), "a");
}

/// Builds a tar with raw names (so `..` and absolute paths can be tested).
fn tar_bytes(entries: &[(&str, tar::EntryType, &str, u64)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, data_or_link, uid) in entries {
        let mut h = tar::Header::new_old();
        let raw = &mut h.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        h.set_entry_type(*kind);
        h.set_uid(*uid);
        h.set_gid(*uid);
        h.set_mtime(1_000_000_000);
        let data: &[u8] = match kind {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let raw = &mut h.as_old_mut().linkname;
                raw[..data_or_link.len()].copy_from_slice(data_or_link.as_bytes());
                h.set_mode(0o777);
                &[]
            }
            tar::EntryType::Directory => {
                h.set_mode(0o750);
                &[]
            }
            _ => {
                h.set_mode(0o640);
                data_or_link.as_bytes()
            }
        };
        h.set_size(data.len() as u64);
        h.set_cksum();
        b.append(&h, data).expect("append");
    }
    b.into_inner().expect("finish")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

#[test]
fn add_extracts_archives_and_clamps_traversal() {
    if !kiln_types::testing::needs_root("ADD gives extracted entries the archive's uids") {
        return;
    }
    use tar::EntryType as T;
    let f = fx();
    let archive = tar_bytes(&[
        ("dir/", T::Directory, "", 0),
        ("dir/f.txt", T::Regular, "inside", 1234),
        ("../../escape.txt", T::Regular, "esc", 0),
        ("/abs.txt", T::Regular, "abs", 0),
        ("link", T::Symlink, "/", 0),
        ("link/through.txt", T::Regular, "through", 0),
        ("up", T::Symlink, "../../..", 0),
        ("up/up.txt", T::Regular, "up", 0),
        ("hl", T::Link, "dir/f.txt", 0),
        ("hl2", T::Link, "../../../dir/f.txt", 0),
    ]);
    std::fs::write(f.ctx.join("a.tar.gz"), gzip(&archive)).expect("write");
    std::fs::write(f.ctx.join("plain.tar"), &archive).expect("write");
    write(&f.ctx, "notes.txt", "not an archive");
    let mut op = cp("a.tar.gz", "/app");
    op.attempt_unpack_docker_compatibility = true;
    run(&f, &op).expect("add");
    assert_eq!(read(&f.dest, "app/dir/f.txt"), "inside");
    let md = lstat(&f.dest, "app/dir/f.txt");
    assert_eq!(
        (md.uid(), md.mode() & 0o7777, md.mtime()),
        (1234, 0o640, 1_000_000_000)
    );
    assert_eq!(lstat(&f.dest, "app/dir").mode() & 0o7777, 0o750);
    assert_eq!(lstat(&f.dest, "app/dir").mtime(), 1_000_000_000);
    assert_eq!(read(&f.dest, "app/escape.txt"), "esc");
    assert_eq!(read(&f.dest, "app/abs.txt"), "abs");
    assert_eq!(read(&f.dest, "app/through.txt"), "through");
    assert_eq!(read(&f.dest, "app/up.txt"), "up");
    assert_eq!(lstat(&f.dest, "app/hl").ino(), md.ino());
    assert_eq!(lstat(&f.dest, "app/hl2").ino(), md.ino());
    let base = f.ctx.parent().expect("parent");
    for outside in ["escape.txt", "through.txt", "up.txt", "rootfs/escape.txt"] {
        assert!(!exists(base, outside), "{outside} escaped");
    }
    assert!(!Path::new("/through.txt").exists());

    // Plain tar with --chown: entries are chowned.
    let mut op = chown_op("plain.tar", "/plain", Some(UserOpt::ById(77)), None);
    op.attempt_unpack_docker_compatibility = true;
    run(&f, &op).expect("add plain");
    assert_eq!(lstat(&f.dest, "plain/dir/f.txt").uid(), 77);
    assert_eq!(lstat(&f.dest, "plain").uid(), 77);

    // --chmod is for what is copied: the directory an unpack makes is
    // 0755 (BuildKit's), with or without the trailing slash; the
    // archive's entries keep their own modes.
    for dest in ["/m1/", "/m2"] {
        let mut op = cp("plain.tar", dest);
        op.mode = Some(0o700);
        op.attempt_unpack_docker_compatibility = true;
        run(&f, &op).expect("add with chmod");
        let top = dest.trim_matches('/');
        assert_eq!(lstat(&f.dest, top).mode() & 0o7777, 0o755, "{dest}");
        assert_eq!(
            lstat(&f.dest, &format!("{top}/dir/f.txt")).mode() & 0o7777,
            0o640
        );
    }

    // A non-archive is copied as a file.
    let mut op = cp("notes.txt", "/n/");
    op.attempt_unpack_docker_compatibility = true;
    run(&f, &op).expect("add file");
    assert_eq!(read(&f.dest, "n/notes.txt"), "not an archive");
    // COPY never extracts.
    run(&f, &cp("a.tar.gz", "/copied.tgz")).expect("copy archive");
    assert!(lstat(&f.dest, "copied.tgz").is_file());
}

/// An archive written without owners or times (the numeric fields all
/// NULs, as the tar crate's own fresh headers leave them) unpacks with
/// 0 for each, as Go's archive/tar reads it in BuildKit.
#[test]
fn add_reads_empty_numeric_fields_as_zero() {
    if !kiln_types::testing::needs_root("ADD gives extracted entries the archive's uids") {
        return;
    }
    let f = fx();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(5);
    h.set_entry_type(tar::EntryType::Regular);
    h.as_old_mut().mode.copy_from_slice(b"0000644\0");
    h.set_cksum();
    b.append_data(&mut h, "f.txt", &b"hello"[..])
        .expect("append");
    let archive = b.into_inner().expect("tar");
    assert!(tar::Archive::new(&archive[..])
        .entries()
        .expect("entries")
        .next()
        .expect("one")
        .expect("entry")
        .header()
        .uid()
        .is_err());
    std::fs::write(f.ctx.join("e.tar"), &archive).expect("write");
    let mut op = cp("e.tar", "/e");
    op.attempt_unpack_docker_compatibility = true;
    run(&f, &op).expect("add");
    assert_eq!(read(&f.dest, "e/f.txt"), "hello");
    let md = lstat(&f.dest, "e/f.txt");
    assert_eq!(
        (md.uid(), md.gid(), md.mode() & 0o7777, md.mtime()),
        (0, 0, 0o644, 0)
    );
}

/// As BuildKit's untar: an entry's missing parents are created only when
/// the parent path is absent; through an existing symlink to a missing
/// directory the entry fails (never a directory made for it), and through
/// one to an existing directory it is written there.
#[test]
fn add_does_not_create_parents_through_a_symlink() {
    if !kiln_types::testing::needs_root("ADD gives extracted entries the archive's uids") {
        return;
    }
    use tar::EntryType as T;
    let f = fx();
    let archive = tar_bytes(&[
        ("ln", T::Symlink, "/etc", 0),
        ("ln/planted", T::Regular, "p", 0),
    ]);
    std::fs::write(f.ctx.join("bad.tar"), &archive).expect("write");
    let mut op = cp("bad.tar", "/x/");
    op.attempt_unpack_docker_compatibility = true;
    let err = run(&f, &op).expect_err("no parent");
    assert_eq!(
        err.to_string(),
        "open /ln/planted: no such file or directory"
    );
    assert!(!exists(&f.dest, "x/etc"));

    let archive = tar_bytes(&[
        ("d/", T::Directory, "", 0),
        ("ln", T::Symlink, "d", 0),
        ("ln/f", T::Regular, "through", 0),
        ("file", T::Regular, "f", 0),
        ("file/under", T::Regular, "u", 0),
    ]);
    std::fs::write(f.ctx.join("good.tar"), &archive).expect("write");
    let mut op = cp("good.tar", "/y/");
    op.attempt_unpack_docker_compatibility = true;
    let err = run(&f, &op).expect_err("a file is no parent");
    assert_eq!(err.to_string(), "open /file/under: not a directory");
    assert_eq!(read(&f.dest, "y/d/f"), "through");
}

#[test]
fn symbolic_chmod_applies_to_each_entry_mode() {
    if !kiln_types::testing::needs_root("COPY chowns what it writes to uid 0") {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let f = fx();
    write(&f.ctx, "d/plain", "p");
    write(&f.ctx, "d/tool", "t");
    let set = |p: &str, mode: u32| {
        std::fs::set_permissions(f.ctx.join(p), std::fs::Permissions::from_mode(mode))
            .expect("chmod")
    };
    set("d/plain", 0o600);
    set("d/tool", 0o700);
    set("d", 0o700);
    let mut op = cp("d", "/new/sub/");
    op.mode_str = Some("u=rwX,go=rX".into());
    run(&f, &op).expect("copy");
    let mode = |p: &str| lstat(&f.dest, p).mode() & 0o7777;
    assert_eq!(mode("new/sub/plain"), 0o644);
    assert_eq!(mode("new/sub/tool"), 0o755);
    assert_eq!(
        mode("new/sub"),
        0o755,
        "a created destination dir is 0755, as fsutil makes it"
    );
    let mut op = cp("d/plain", "/x");
    op.mode_str = Some("u+q".into());
    assert!(matches!(run(&f, &op), Err(FileOpError::InvalidMode { .. })));
}

#[test]
fn add_detects_every_compression_by_content() {
    if !kiln_types::testing::needs_root("ADD gives extracted entries the archive's uids") {
        return;
    }
    use std::io::Write;
    let f = fx();
    let archive = tar_bytes(&[("hello.txt", tar::EntryType::Regular, "hi", 0)]);
    let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
    bz.write_all(&archive).expect("bzip2");
    let mut xz =
        lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::with_preset(1)).expect("xz");
    xz.write_all(&archive).expect("xz");
    let zst = zstd::encode_all(archive.as_slice(), 3).expect("zstd");
    // Names that say nothing (or the wrong thing) about the content.
    let files = [
        ("bz", bz.finish().expect("bzip2")),
        ("xz.tar.gz", xz.finish().expect("xz")),
        ("zst.txt", zst),
        ("gz", gzip(&archive)),
        ("plain.zip", archive),
    ];
    for (name, bytes) in &files {
        std::fs::write(f.ctx.join(name), bytes).expect("write");
        let mut op = cp(name, &format!("/out/{name}"));
        op.attempt_unpack_docker_compatibility = true;
        run(&f, &op).expect("add");
        assert_eq!(
            read(&f.dest, &format!("out/{name}/hello.txt")),
            "hi",
            "{name}"
        );
    }
    // A compressed file that is not a tar is copied as it is.
    let not_tar = zstd::encode_all(&b"just text"[..], 3).expect("zstd");
    std::fs::write(f.ctx.join("text.zst"), &not_tar).expect("write");
    let mut op = cp("text.zst", "/t/");
    op.attempt_unpack_docker_compatibility = true;
    run(&f, &op).expect("add");
    assert_eq!(
        std::fs::read(f.dest.join("t/text.zst")).expect("read"),
        not_tar
    );
}

#[test]
fn dockerignore_and_op_patterns_hide_paths() {
    if !kiln_types::testing::needs_root("COPY chowns what it writes to uid 0") {
        return;
    }
    let f = fx();
    write(&f.ctx, "app.log", "log");
    write(&f.ctx, "main.rs", "main");
    write(&f.ctx, "dir/secret/other", "no");
    write(&f.ctx, "dir/secret/keep", "yes");
    write(&f.ctx, "dir/readme.md", "md");
    write(&f.ctx, "dir/sub/a.txt", "a");
    write(&f.ctx, "dir/sub/b.bin", "b");
    let ignore = PatternMatcher::new(&parse_dockerignore("*.log\ndir/secret\n!dir/secret/keep\n"))
        .expect("patterns");
    let go = |op: &FileCopy| copy(&f.ctx, &f.dest, &f.dest, op, Some(&ignore));
    go(&cp(".", "/all")).expect("copy all");
    assert!(!exists(&f.dest, "all/app.log"));
    assert_eq!(read(&f.dest, "all/main.rs"), "main");
    assert!(!exists(&f.dest, "all/dir/secret/other"));
    assert_eq!(read(&f.dest, "all/dir/secret/keep"), "yes");
    assert!(matches!(
        go(&cp("app.log", "/x")),
        Err(FileOpError::NotFound { .. })
    ));
    assert!(matches!(
        go(&cp("*.log", "/x")),
        Err(FileOpError::NotFound { .. })
    ));
    assert!(matches!(
        go(&cp("dir/secret/other", "/x")),
        Err(FileOpError::NotFound { .. })
    ));
    go(&cp("dir/secret/keep", "/kept")).expect("re-included");

    // Op patterns are relative to the copied source.
    let mut op = cp("dir", "/ex");
    op.exclude_patterns = vec!["*.md".into(), "sub/*.bin".into()];
    go(&op).expect("copy");
    assert!(!exists(&f.dest, "ex/readme.md"));
    assert!(!exists(&f.dest, "ex/sub/b.bin"));
    assert_eq!(read(&f.dest, "ex/sub/a.txt"), "a");
    let mut op = cp("dir", "/in");
    op.include_patterns = vec!["sub/*.txt".into()];
    go(&op).expect("copy");
    assert_eq!(read(&f.dest, "in/sub/a.txt"), "a");
    assert!(!exists(&f.dest, "in/readme.md"));
    assert!(
        !exists(&f.dest, "in/secret"),
        "dirs without included files are not created"
    );
}

/// A copied file replaces a file or a symlink already at its destination
/// (never writing through the link) and carries the source's xattrs.
#[test]
fn files_replace_existing_entries_and_keep_xattrs() {
    if !kiln_types::testing::needs_root("COPY chowns what it writes to uid 0") {
        return;
    }
    let f = fx();
    let a = write(&f.ctx, "d/a", "new a");
    write(&f.ctx, "d/b", "new b");
    let outside = write(&f.dest, "outside", "untouched");
    write(&f.dest, "out/a", "old contents, longer than the new ones");
    std::os::unix::fs::symlink(&outside, f.dest.join("out/b")).expect("symlink");
    let has_xattrs = xattr::set(&a, "user.kiln.test", b"v1").is_ok();
    run(&f, &cp("d", "/out")).expect("copy over existing entries");
    assert_eq!(read(&f.dest, "out/a"), "new a");
    assert!(lstat(&f.dest, "out/b").file_type().is_file());
    assert_eq!(read(&f.dest, "out/b"), "new b");
    assert_eq!(read(&f.dest, "outside"), "untouched");
    if has_xattrs {
        let got = xattr::get(f.dest.join("out/a"), "user.kiln.test").expect("getxattr");
        assert_eq!(got.as_deref(), Some(b"v1".as_slice()));
    }
}

#[test]
fn type_conflicts_follow_fsutil() {
    let f = fx();
    write(&f.ctx, "d/x", "file");
    std::fs::create_dir_all(f.dest.join("out/x")).expect("mkdir");
    let e = run(&f, &cp("d", "/out")).expect_err("file onto dir");
    assert_eq!(
        e.to_string(),
        "cannot replace to directory /out/x with file"
    );
    write(&f.ctx, "e/y/z", "z");
    write(&f.dest, "o2/y", "a file");
    let e = run(&f, &cp("e", "/o2")).expect_err("dir onto file");
    assert_eq!(e.to_string(), "cannot copy to non-directory: /o2/y");
}

#[test]
fn mkdir_modes_owners_and_parents() {
    if !kiln_types::testing::needs_root("mkdir --chown to uid 1000") {
        return;
    }
    let f = fx();
    passwd(&f.dest);
    let op = FileMkDir {
        path: "/a/b/c".into(),
        mode: 0o750,
        make_parents: true,
        owner: Some(ChownOpt {
            user: Some(UserOpt::ByName("app".into())),
            group: None,
        }),
        timestamp: Some(5_000_000_000),
    };
    mkdir(&f.dest, &op).expect("mkdir -p");
    for rel in ["a", "a/b", "a/b/c"] {
        let md = lstat(&f.dest, rel);
        assert_eq!(
            (md.mode() & 0o7777, md.uid(), md.gid()),
            (0o750, 1000, 1001),
            "{rel}"
        );
        assert_eq!(md.mtime(), 5, "{rel}");
    }
    mkdir(&f.dest, &op).expect("existing is fine");
}

/// Without an owner mkdir chowns nothing, so this runs without root.
#[test]
fn mkdir_without_parents_or_owner_stays_in_the_root() {
    let f = fx();
    let flat = FileMkDir {
        path: "/x/y".into(),
        mode: 0o700,
        make_parents: false,
        owner: None,
        timestamp: None,
    };
    let e = mkdir(&f.dest, &flat).expect_err("missing parent");
    assert_eq!(e.kind(), ErrorKind::NotFound);
    let flat = FileMkDir {
        path: "/x".into(),
        ..flat
    };
    mkdir(&f.dest, &flat).expect("mkdir");
    assert_eq!(lstat(&f.dest, "x").mode() & 0o7777, 0o700);
    // Through a symlink pointing out of the root.
    std::os::unix::fs::symlink("/", f.dest.join("escape")).expect("symlink");
    let op = FileMkDir {
        path: "/escape/kiln-mkdir-test".into(),
        ..flat
    };
    mkdir(&f.dest, &op).expect("mkdir");
    assert!(exists(&f.dest, "kiln-mkdir-test"));
    assert!(!Path::new("/kiln-mkdir-test").exists());
}

#[test]
fn mkfile_writes_data_mode_owner() {
    if !kiln_types::testing::needs_root("mkfile --chown to uid 5") {
        return;
    }
    let f = fx();
    let op = FileMkFile {
        path: "/f".into(),
        mode: 0o644,
        data: b"data".to_vec(),
        owner: Some(ChownOpt {
            user: Some(UserOpt::ById(5)),
            group: Some(UserOpt::ById(6)),
        }),
        timestamp: None,
    };
    mkfile(&f.dest, &op).expect("mkfile");
    assert_eq!(read(&f.dest, "f"), "data");
    let md = lstat(&f.dest, "f");
    assert_eq!((md.mode() & 0o7777, md.uid(), md.gid()), (0o644, 5, 6));
}

/// Without an owner mkfile chowns nothing, so this runs without root.
#[test]
fn mkfile_through_a_symlink_writes_inside_the_root() {
    let f = fx();
    // A symlink to a host file writes inside the root instead.
    std::fs::create_dir(f.dest.join("etc")).expect("mkdir");
    std::os::unix::fs::symlink("/etc/kiln-mkfile-test", f.dest.join("l")).expect("symlink");
    let op = FileMkFile {
        path: "/l".into(),
        mode: 0o644,
        data: b"data".to_vec(),
        owner: None,
        timestamp: None,
    };
    mkfile(&f.dest, &op).expect("mkfile");
    assert_eq!(read(&f.dest, "etc/kiln-mkfile-test"), "data");
    assert!(!Path::new("/etc/kiln-mkfile-test").exists());
}

#[test]
fn rm_files_dirs_wildcards_and_missing() {
    let f = fx();
    write(&f.dest, "a.txt", "a");
    write(&f.dest, "b.txt", "b");
    write(&f.dest, "d/x", "x");
    write(&f.dest, "etc/passwd", "rootfs passwd");
    let rm_op = |path: &str, allow_not_found, allow_wildcard| FileRm {
        path: path.into(),
        allow_not_found,
        allow_wildcard,
    };
    rm(&f.dest, &rm_op("/d", false, false)).expect("rm dir");
    assert!(!exists(&f.dest, "d"));
    rm(&f.dest, &rm_op("/*.txt", false, true)).expect("rm wildcard");
    assert!(!exists(&f.dest, "a.txt") && !exists(&f.dest, "b.txt"));
    rm(&f.dest, &rm_op("/*.none", false, true)).expect("empty wildcard is fine");
    let e = rm(&f.dest, &rm_op("/gone", false, false)).expect_err("missing");
    assert_eq!(e.to_string(), "\"/gone\": not found");
    rm(&f.dest, &rm_op("/gone", true, false)).expect("allowed");
    assert!(matches!(
        rm(&f.dest, &rm_op("/", false, false)),
        Err(FileOpError::InvalidPath { .. })
    ));
    // A symlinked parent is resolved inside the root; a final symlink is
    // removed itself.
    std::os::unix::fs::symlink("/etc", f.dest.join("e")).expect("symlink");
    std::os::unix::fs::symlink("/etc/passwd", f.dest.join("p")).expect("symlink");
    rm(&f.dest, &rm_op("/p", false, false)).expect("rm link");
    assert!(!exists(&f.dest, "p"));
    assert!(exists(&f.dest, "etc/passwd"));
    rm(&f.dest, &rm_op("/e/passwd", false, false)).expect("rm through link");
    assert!(!exists(&f.dest, "etc/passwd"));
    assert!(Path::new("/etc/passwd").exists());
}

#[test]
fn symlink_creates_links_once() {
    let f = fx();
    std::fs::create_dir(f.dest.join("bin")).expect("mkdir");
    let op = FileSymlink {
        oldpath: "/usr/bin/busybox".into(),
        newpath: "/bin/sh".into(),
    };
    symlink(&f.dest, &op).expect("symlink");
    assert_eq!(
        std::fs::read_link(f.dest.join("bin/sh")).expect("readlink"),
        PathBuf::from("/usr/bin/busybox")
    );
    let e = symlink(&f.dest, &op).expect_err("exists");
    assert_eq!(e.kind(), ErrorKind::AlreadyExists);
}

/// What a copy wrote below `root`: each path with its type and its link
/// target or content (not times or owners, which the context digest leaves
/// out by design).
fn written(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(root).min_depth(1).sort_by_file_name() {
        let e = e.expect("walk");
        let rel = e.path().strip_prefix(root).expect("below root");
        let ft = e.file_type();
        let what = if ft.is_symlink() {
            format!(
                "-> {}",
                std::fs::read_link(e.path()).expect("link").display()
            )
        } else if ft.is_dir() {
            "dir".to_owned()
        } else {
            format!("= {}", std::fs::read_to_string(e.path()).expect("file"))
        };
        out.push(format!("{} {what}", rel.display()));
    }
    out
}

/// A named change to a context directory.
type Edit = (&'static str, fn(&Path));

#[test]
fn the_context_digest_changes_exactly_when_the_copy_does() {
    if !kiln_types::testing::needs_root("COPY chowns what it writes to uid 0") {
        return;
    }
    let no_follow = FileCopy {
        follow_symlink: false,
        ..cp("link", "/out")
    };
    let literal = FileCopy {
        allow_wildcard: false,
        ..cp("*.txt", "/out")
    };
    let go_only = FileCopy {
        include_patterns: vec!["*.go".into()],
        ..cp("dir", "/out")
    };
    let ops = [
        cp("link", "/out"),
        no_follow,
        cp("*.txt", "/out/"),
        literal,
        go_only,
    ];
    let edits: [Edit; 5] = [
        ("link target content", |c| {
            write(c, "real.txt", "real, edited");
        }),
        ("a wildcard match", |c| {
            write(c, "a.txt", "a, edited");
        }),
        ("a file the include skips", |c| {
            write(c, "dir/y.md", "y, edited");
        }),
        ("a file the include keeps", |c| {
            write(c, "dir/x.go", "x, edited");
        }),
        ("the link itself", |c| {
            std::fs::remove_file(c.join("link")).expect("rm link");
            std::os::unix::fs::symlink("a.txt", c.join("link")).expect("relink");
        }),
    ];
    for (i, op) in ops.iter().enumerate() {
        for (what, edit) in &edits {
            let f = fx();
            for (rel, data) in [
                ("real.txt", "real"),
                ("a.txt", "a"),
                ("*.txt", "literally named"),
                ("dir/x.go", "x"),
                ("dir/y.md", "y"),
            ] {
                write(&f.ctx, rel, data);
            }
            std::os::unix::fs::symlink("real.txt", f.ctx.join("link")).expect("symlink");
            let state = tempfile::tempdir().expect("state dir");
            let hash = || {
                crate::contenthash::HashCache::open(state.path())
                    .digest(&f.ctx, &selection(op), &[])
                    .expect("digest")
            };
            let out = |n: &str| {
                let dest = f.dest.join(n);
                std::fs::create_dir(&dest).expect("mkdir dest");
                copy(&f.ctx, &dest, &dest, op, None).expect("copy");
                written(&dest)
            };
            let (before, h1) = (out("before"), hash());
            edit(&f.ctx);
            let (after, h2) = (out("after"), hash());
            assert_eq!(
                before != after,
                h1 != h2,
                "op {i} ({} follow={} wildcard={}), edit: {what}\n{before:?}\n{after:?}",
                op.src,
                op.follow_symlink,
                op.allow_wildcard
            );
        }
    }
}

/// `COPY --parents`: the source root with an include pattern keeps the
/// matched paths' parents; a required path that is missing (or hidden by
/// the ignore file) fails the copy instead of copying nothing.
#[test]
fn required_paths_must_exist_and_includes_keep_parents() {
    if !kiln_types::testing::needs_root("COPY chowns what it writes to uid 0") {
        return;
    }
    let f = fx();
    write(&f.ctx, "x/y/z.txt", "z");
    write(&f.ctx, "x/y/w.txt", "w");
    write(&f.ctx, "x/hidden.txt", "h");
    let mut op = cp("/x", "/dst/");
    op.include_patterns = vec!["y/z.txt".into()];
    op.required_paths = vec!["/x/y/z.txt".into()];
    run(&f, &op).expect("copy");
    assert_eq!(read(&f.dest, "dst/y/z.txt"), "z");
    assert!(!exists(&f.dest, "dst/y/w.txt"));

    let mut missing = op.clone();
    missing.include_patterns = vec!["y/nope.txt".into()];
    missing.required_paths = vec!["/x/y/nope.txt".into()];
    let err = run(&f, &missing).expect_err("a missing required path");
    assert_eq!(err.to_string(), "\"/x/y/nope.txt\": not found");

    let ignore = PatternMatcher::new(&parse_dockerignore("x/hidden.txt\n")).expect("patterns");
    let mut hidden = op.clone();
    hidden.include_patterns = vec!["hidden.txt".into()];
    hidden.required_paths = vec!["/x/hidden.txt".into()];
    assert!(matches!(
        copy(&f.ctx, &f.dest, &f.dest, &hidden, Some(&ignore)),
        Err(FileOpError::NotFound { .. })
    ));
}

/// A `COPY --from` whose files a source layer holds as the copy would
/// write them links them (after the destination is placed), copies the
/// rest, and gives the same tree as a plain copy.
#[test]
fn a_linking_copy_links_unchanged_files_from_the_source_layer() {
    if !kiln_types::testing::needs_root("files keep their owner, as COPY --from does") {
        return;
    }
    let f = fx();
    // The source is one committed layer shown as itself (a one-layer view).
    write(&f.ctx, "d/big", "big data");
    write(&f.ctx, "d/small", "s");
    std::fs::hard_link(f.ctx.join("d/small"), f.ctx.join("d/twin")).expect("link");
    chown(&f.ctx.join("d/big"), 1000, 1000);
    let links = reuse::LayerLinks {
        layers: vec![f.ctx.clone()],
    };
    let deferred = copy_linking(
        &f.ctx,
        &f.dest,
        &f.dest,
        &cp("d", "/out"),
        None,
        true,
        &links,
    )
    .expect("copy");
    let rels: Vec<_> = deferred.iter().map(|d| d.rel.clone()).collect();
    assert_eq!(
        rels,
        vec![PathBuf::from("out/big")],
        "the copy's own hard links are written"
    );
    assert!(
        !exists(&f.dest, "out/big"),
        "a deferred file is not written by the copy"
    );
    reuse::place(&f.dest, &deferred, true).expect("place");
    let (src, dst) = (lstat(&f.ctx, "d/big"), lstat(&f.dest, "out/big"));
    assert_eq!(src.ino(), dst.ino(), "linked from the layer");
    assert_eq!((dst.uid(), dst.gid()), (1000, 1000));
    assert_eq!(read(&f.dest, "out/big"), "big data");
    // The copy's own hard links are its own, as a plain copy makes them.
    let (a, b) = (lstat(&f.dest, "out/small"), lstat(&f.dest, "out/twin"));
    assert_eq!(a.ino(), b.ino());
    assert_ne!(a.ino(), lstat(&f.ctx, "d/small").ino());
    // A file linked elsewhere already (nlink 2) is linked again when the
    // copy meets one name of it.
    let again = copy_linking(
        &f.ctx,
        &f.dest,
        &f.dest,
        &cp("d/big", "/again"),
        None,
        true,
        &links,
    )
    .expect("copy");
    assert_eq!(again.len(), 1);
    reuse::place(&f.dest, &again, true).expect("place");
    assert_eq!(lstat(&f.dest, "again").ino(), src.ino());
    assert_eq!(lstat(&f.ctx, "d/big").nlink(), 3);
}

/// What the copy would change is copied, never linked: a `--chmod`, a
/// `--chown`, a file already at the destination.
#[test]
fn a_linking_copy_copies_what_it_changes() {
    if !kiln_types::testing::needs_root("COPY --chown writes an owner") {
        return;
    }
    let f = fx();
    write(&f.ctx, "d/a", "a");
    set_mode(&f.ctx.join("d/a"), 0o644);
    let links = reuse::LayerLinks {
        layers: vec![f.ctx.clone()],
    };
    let mut chmod = cp("d", "/m");
    chmod.mode = Some(0o600);
    let chowned = chown_op("d", "/o", Some(UserOpt::ById(7)), None);
    write(&f.dest, "e/a", "old");
    for op in [chmod, chowned, cp("d", "/e")] {
        let deferred =
            copy_linking(&f.ctx, &f.dest, &f.dest, &op, None, true, &links).expect("copy");
        assert!(deferred.is_empty(), "{} linked", op.dest);
    }
    assert_eq!(lstat(&f.dest, "m/a").mode() & 0o7777, 0o600);
    assert_eq!(lstat(&f.dest, "o/a").uid(), 7);
    assert_eq!(read(&f.dest, "e/a"), "a");
    assert_eq!(
        lstat(&f.ctx, "d/a").nlink(),
        1,
        "the layer's file is untouched"
    );
}

/// The layer lookup is overlayfs's: the topmost layer holding a path, and
/// no lower layer under an opaque directory or a whiteout.
#[test]
fn the_layer_lookup_stops_at_opaque_directories_and_whiteouts() {
    if !kiln_types::testing::needs_root("trusted.overlay.* xattrs need root") {
        return;
    }
    let base = tempfile::tempdir().expect("tempdir");
    let (top, low) = (base.path().join("top"), base.path().join("low"));
    write(&low, "o/f", "low");
    write(&low, "w/f", "low");
    write(&low, "plain/f", "low");
    write(&top, "plain/g", "top");
    std::fs::create_dir_all(top.join("o")).expect("mkdir");
    xattr::set(top.join("o"), "trusted.overlay.opaque", b"y").expect("opaque");
    nix::sys::stat::mknod(
        &top.join("w"),
        nix::sys::stat::SFlag::S_IFCHR,
        nix::sys::stat::Mode::empty(),
        0,
    )
    .expect("whiteout");
    let links = reuse::LayerLinks {
        layers: vec![top.clone(), low.clone()],
    };
    let want = |p: &Path| {
        let md = std::fs::symlink_metadata(p).expect("stat");
        reuse::Intended {
            uid: md.uid(),
            gid: md.gid(),
            mode: md.mode() & 0o7777,
            atime_ns: 0,
            mtime_ns: md.mtime() * 1_000_000_000 + md.mtime_nsec(),
        }
    };
    let found =
        |rel: &str, layer: &Path| links.linkable(Path::new(rel), &want(&layer.join(rel)), 3);
    assert_eq!(found("plain/f", &low), Some(low.join("plain/f")));
    assert_eq!(found("plain/g", &top), Some(top.join("plain/g")));
    assert_eq!(found("o/f", &low), None, "under an opaque directory");
    assert_eq!(found("w/f", &low), None, "under a whiteout");
}

/// An incremental copy keeps the context's hard links, as a plain copy
/// does (BuildKit's layer has the second name as a link to the first).
#[test]
fn an_incremental_copy_keeps_hard_links_of_the_context() {
    if !kiln_types::testing::needs_root("COPY owns what it writes to 0:0") {
        return;
    }
    let f = fx();
    write(&f.ctx, "d/a", "shared");
    std::fs::hard_link(f.ctx.join("d/a"), f.ctx.join("d/hl")).expect("link");
    write(&f.ctx, "d/z", "alone");
    let out = copy_reusing(
        &f.ctx,
        &f.dest,
        &f.dest,
        &cp("d", "/x/y/"),
        None,
        &reuse::CopyReuse::default(),
    )
    .expect("copy");
    assert!(out.deferred.is_empty());
    assert_eq!(
        lstat(&f.dest, "x/y/a").ino(),
        lstat(&f.dest, "x/y/hl").ino()
    );
    assert_eq!(lstat(&f.dest, "x/y/a").nlink(), 2);
    assert_eq!(read(&f.dest, "x/y/hl"), "shared");
    assert_eq!(lstat(&f.dest, "x/y/z").nlink(), 1);
}
