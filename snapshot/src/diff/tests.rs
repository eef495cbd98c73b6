//! Layer diff tests on real trees. Many need root (they create 0/0
//! character devices, set `trusted.*` xattrs, chown and mount overlays) and
//! start with `needs_root`; the rest run everywhere.

use std::fs;
use std::io::Read;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use sha2::{Digest as _, Sha256};

use super::*;
use crate::mount::{Mount, MountGuard};

/// One tar entry as read back by the `tar` crate.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Got {
    path: String,
    kind: char,
    link: Option<String>,
    data: Vec<u8>,
    xattrs: Vec<(String, Vec<u8>)>,
    uid: u64,
    mode: u32,
}

fn read_tar(bytes: &[u8]) -> Vec<Got> {
    let mut ar = ::tar::Archive::new(bytes);
    let mut out = Vec::new();
    for e in ar.entries().expect("tar entries") {
        let mut e = e.expect("tar entry");
        let path = String::from_utf8_lossy(&e.path_bytes()).into_owned();
        let kind = char::from(e.header().entry_type().as_byte());
        let link = e
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned());
        let mut xattrs = Vec::new();
        if let Some(pax) = e.pax_extensions().expect("pax") {
            for r in pax {
                let r = r.expect("pax record");
                if let Some(name) = r.key().expect("utf-8 key").strip_prefix("SCHILY.xattr.") {
                    xattrs.push((name.to_string(), r.value_bytes().to_vec()));
                }
            }
        }
        let uid = e.header().uid().expect("uid");
        let mode = e.header().mode().expect("mode");
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("entry data");
        out.push(Got {
            path,
            kind,
            link,
            data,
            xattrs,
            uid,
            mode,
        });
    }
    out
}

fn paths(entries: &[Got]) -> Vec<&str> {
    entries.iter().map(|e| e.path.as_str()).collect()
}

/// Writes an uncompressed layer and returns it with its descriptor.
fn layer(src: DiffSource<'_>) -> (LayerDescriptor, Vec<u8>) {
    let mut out = Vec::new();
    let desc = write_layer(src, Compression::Uncompressed, &mut out).expect("write_layer");
    (desc, out)
}

fn mkdirs(root: &Path, rels: &[&str]) {
    for r in rels {
        fs::create_dir_all(root.join(r)).expect("mkdir");
    }
}

fn write(root: &Path, rel: &str, data: &[u8]) {
    fs::write(root.join(rel), data).expect("write file");
}

fn set_mtime(path: &Path, secs: u64) {
    fs::File::open(path)
        .expect("open for utimes")
        .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        .expect("set mtime");
}

fn whiteout(path: &Path) {
    mknod(path, SFlag::S_IFCHR, Mode::empty(), makedev(0, 0))
        .expect("mknod 0/0 whiteout (root required)");
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

#[test]
fn overlay_whiteouts_opaque_dirs_and_copy_up_parents() {
    if !kiln_types::testing::needs_root("0/0 character device whiteouts and trusted.overlay xattrs")
    {
        return;
    }
    let (lower, upper) = (tmp(), tmp());
    let (l, u) = (lower.path(), upper.path());
    mkdirs(l, &["a", "c", "d/sub"]);
    write(l, "a/keep", b"k");
    write(l, "a/gone", b"g");
    write(l, "c/same", b"same");
    write(l, "d/old", b"o");
    write(l, "d/sub/older", b"o");
    set_mtime(&l.join("c/same"), 1_600_000_000);

    // The upperdir as overlayfs would leave it.
    mkdirs(u, &["a", "c", "d", "newdir"]);
    whiteout(&u.join("a/gone"));
    whiteout(&u.join("nothere"));
    write(u, "c/same", b"same");
    set_mtime(&u.join("c/same"), 1_600_000_000);
    xattr::set(u.join("d"), "trusted.overlay.opaque", b"y")
        .expect("set trusted xattr (root required)");
    write(u, "d/new", b"n");
    // Whiteouts met below an opaque directory mark deletions, once each.
    whiteout(&u.join("d/old"));
    whiteout(&u.join("d/ghost"));
    write(u, "newdir/f", b"f");

    let (desc, tar) = layer(DiffSource::Overlay {
        upper: u,
        lower: Some(l),
    });
    let got = read_tar(&tar);
    assert_eq!(
        paths(&got),
        [
            "a/",
            "a/.wh.gone",
            "d/",
            "d/new",
            "d/.wh.old",
            "d/.wh.sub",
            "newdir/",
            "newdir/f"
        ]
    );
    assert_eq!(desc.entries, 8);
    let wh = &got[1];
    assert_eq!((wh.kind, wh.data.len(), wh.mode), ('0', 0, 0));
    assert!(
        got.iter().all(|e| e.xattrs.is_empty()),
        "overlay xattrs must not leak: {got:?}"
    );
    assert_eq!(got[3].data, b"n");

    // Without a parent, whiteouts and opaque markers are dropped.
    let (_, tar) = layer(DiffSource::Overlay {
        upper: u,
        lower: None,
    });
    assert_eq!(
        paths(&read_tar(&tar)),
        ["a/", "c/", "c/same", "d/", "d/new", "newdir/", "newdir/f"]
    );
}

#[test]
fn overlay_redirect_or_metacopy_asks_for_fallback() {
    if !kiln_types::testing::needs_root("trusted.overlay xattrs") {
        return;
    }
    for name in ["trusted.overlay.redirect", "trusted.overlay.metacopy"] {
        let upper = tmp();
        mkdirs(upper.path(), &["x/moved"]);
        xattr::set(upper.path().join("x/moved"), name, b"/orig")
            .expect("set trusted xattr (root required)");
        let err = write_layer(
            DiffSource::Overlay {
                upper: upper.path(),
                lower: None,
            },
            Compression::Uncompressed,
            &mut Vec::new(),
        )
        .expect_err("redirect must fail");
        match err {
            DiffError::Redirect { path } => assert_eq!(path, upper.path().join("x/moved")),
            other => panic!("expected Redirect, got {other:?}"),
        }
    }
}

#[test]
fn hardlinks_become_tar_links_and_specials_are_kept() {
    if !kiln_types::testing::needs_root("mknod of a character device") {
        return;
    }
    let upper = tmp();
    let u = upper.path();
    mkdirs(u, &["bin", "dev"]);
    write(u, "bin/a", b"payload");
    fs::hard_link(u.join("bin/a"), u.join("bin/b")).expect("hard link");
    fs::hard_link(u.join("bin/a"), u.join("z")).expect("hard link");
    symlink("a", u.join("bin/c")).expect("symlink");
    mknod(
        &u.join("dev/null"),
        SFlag::S_IFCHR,
        Mode::from_bits_truncate(0o666),
        makedev(1, 3),
    )
    .expect("mknod (root required)");
    nix::unistd::mkfifo(&u.join("dev/fifo"), Mode::from_bits_truncate(0o600)).expect("mkfifo");
    let _sock = std::os::unix::net::UnixListener::bind(u.join("dev/sock")).expect("socket");

    for src in [
        DiffSource::Overlay {
            upper: u,
            lower: None,
        },
        DiffSource::Walk {
            lower: None,
            upper: u,
        },
    ] {
        let (_, tar) = layer(src);
        let got = read_tar(&tar);
        assert_eq!(
            paths(&got),
            ["bin/", "bin/a", "bin/b", "bin/c", "dev/", "dev/fifo", "dev/null", "z"]
        );
        assert_eq!(
            (got[1].kind, got[1].data.as_slice()),
            ('0', b"payload".as_slice())
        );
        assert_eq!((got[2].kind, got[2].link.as_deref()), ('1', Some("bin/a")));
        assert_eq!((got[3].kind, got[3].link.as_deref()), ('2', Some("a")));
        assert_eq!(got[5].kind, '6');
        assert_eq!(got[6].kind, '3');
        assert_eq!((got[7].kind, got[7].link.as_deref()), ('1', Some("bin/a")));
    }
    let (_, tar) = layer(DiffSource::Walk {
        lower: None,
        upper: u,
    });
    let mut ar = ::tar::Archive::new(&tar[..]);
    let null = ar
        .entries()
        .expect("entries")
        .map(|e| e.expect("entry"))
        .find(|e| &*e.path_bytes() == b"dev/null")
        .expect("dev/null present");
    assert_eq!(null.header().device_major().expect("major"), Some(1));
    assert_eq!(null.header().device_minor().expect("minor"), Some(3));
}

/// A VFS_CAP_REVISION_2 `security.capability` value: effective,
/// permitted = CAP_NET_BIND_SERVICE (bit 10).
const CAP_NET_BIND_SERVICE: [u8; 20] = [1, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

#[test]
fn walk_mode_compares_metadata_and_content() {
    if !kiln_types::testing::needs_root("a security.capability xattr") {
        return;
    }
    let (lower, upper) = (tmp(), tmp());
    let (l, u) = (lower.path(), upper.path());
    for root in [l, u] {
        mkdirs(root, &["etc", "same"]);
        write(root, "same/f", b"unchanged");
        set_mtime(&root.join("same/f"), 1_600_000_000);
        write(root, "etc/keep", b"k");
        set_mtime(&root.join("etc/keep"), 1_600_000_000);
    }
    // Deleted tree: only the top-most path gets a whiteout.
    mkdirs(l, &["gone/deep/er"]);
    write(l, "gone/deep/er/f", b"x");
    // Same size and whole-second mtime, different content.
    write(l, "etc/conf", b"aaaa");
    write(u, "etc/conf", b"bbbb");
    set_mtime(&l.join("etc/conf"), 1_600_000_000);
    set_mtime(&u.join("etc/conf"), 1_600_000_000);
    // A directory replaced by a file, and a file by a directory.
    mkdirs(l, &["swap1"]);
    write(u, "swap1", b"now a file");
    write(l, "swap2", b"was a file");
    mkdirs(u, &["swap2"]);
    write(u, "swap2/inner", b"i");
    // Mode and xattr changes on otherwise identical files.
    for root in [l, u] {
        write(root, "perm", b"p");
        set_mtime(&root.join("perm"), 1_600_000_000);
        write(root, "attr", b"a");
        set_mtime(&root.join("attr"), 1_600_000_000);
    }
    fs::set_permissions(
        u.join("perm"),
        std::os::unix::fs::PermissionsExt::from_mode(0o4755),
    )
    .expect("chmod");
    xattr::set(u.join("attr"), "security.capability", &CAP_NET_BIND_SERVICE)
        .expect("set capability (root required)");
    xattr::set(u.join("attr"), "user.note", b"hi").expect("set user xattr");
    // Only the file capability counts, as in containerd's and BuildKit's
    // differs: a file whose other attributes changed is the same file.
    for root in [l, u] {
        write(root, "uattr", b"u");
        set_mtime(&root.join("uattr"), 1_600_000_000);
    }
    xattr::set(u.join("uattr"), "user.note", b"hi").expect("set user xattr");

    let (desc, tar) = layer(DiffSource::Walk {
        lower: Some(l),
        upper: u,
    });
    let got = read_tar(&tar);
    assert_eq!(
        paths(&got),
        [
            "attr",
            "etc/",
            "etc/conf",
            ".wh.gone",
            "perm",
            "swap1",
            "swap2/",
            "swap2/inner"
        ]
    );
    assert_eq!(desc.entries, 8);
    assert_eq!(got[2].data, b"bbbb");
    assert_eq!(
        got[0].xattrs,
        [(
            "security.capability".to_string(),
            CAP_NET_BIND_SERVICE.to_vec()
        )],
        "no attribute but the capability goes into a layer"
    );
    assert_eq!(got[4].mode, 0o4755);

    // Identical trees give an empty layer.
    let (desc, tar) = layer(DiffSource::Walk {
        lower: Some(l),
        upper: l,
    });
    assert_eq!(desc.entries, 0);
    assert_eq!(tar, vec![0u8; 1024]);
}

#[test]
fn long_names_and_targets_round_trip() {
    let upper = tmp();
    let long_dir = "d".repeat(120);
    let long_file = format!("{long_dir}/{}", "f".repeat(200));
    let target = "t/".repeat(80);
    mkdirs(upper.path(), &[&long_dir]);
    write(upper.path(), &long_file, b"x");
    symlink(&target, upper.path().join("link")).expect("symlink");
    let (_, tar) = layer(DiffSource::Walk {
        lower: None,
        upper: upper.path(),
    });
    let got = read_tar(&tar);
    assert_eq!(
        paths(&got),
        [format!("{long_dir}/").as_str(), long_file.as_str(), "link"]
    );
    assert_eq!(got[2].link.as_deref(), Some(target.as_str()));
}

#[test]
fn layers_are_deterministic_and_compressions_share_the_diff_id() {
    let upper = tmp();
    let u = upper.path();
    mkdirs(u, &["x/y", "b"]);
    for i in 0..50 {
        write(u, &format!("x/y/f{i}"), format!("file {i}").as_bytes());
    }
    // Big enough for several 1 MiB gzip members.
    let mut state: u32 = 7;
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 123)
        .map(|i| {
            state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            if i % 4 == 0 {
                b'z'
            } else {
                (state >> 16) as u8
            }
        })
        .collect();
    write(u, "b/big", &big);

    let src = DiffSource::Walk {
        lower: None,
        upper: u,
    };
    let (plain, tar) = layer(src);
    let (again, tar2) = layer(src);
    assert_eq!(plain, again);
    assert_eq!(tar, tar2);
    assert_eq!(plain.digest, plain.diff_id);
    assert_eq!(plain.size, plain.uncompressed_size);
    assert_eq!(plain.size, tar.len() as u64);
    assert_eq!(plain.diff_id, Digest::from_sha256(&Sha256::digest(&tar)));
    assert_eq!(plain.media_type, "application/vnd.oci.image.layer.v1.tar");
    let got = read_tar(&tar);
    assert_eq!(
        got.iter().find(|e| e.path == "b/big").expect("b/big").data,
        big
    );

    // Hashing alone gives the diffID of the very tar the blob holds.
    let hashed = crate::diff::hash_layer(src).expect("hash layer");
    assert_eq!(hashed.diff_id, plain.diff_id);
    assert_eq!(hashed.uncompressed_size, plain.uncompressed_size);
    assert_eq!(hashed.entries, plain.entries);

    let sha = |b: &[u8]| Digest::from_sha256(&Sha256::digest(b));
    let mut gz = Vec::new();
    let gz_desc = write_layer(src, Compression::Gzip, &mut gz).expect("gzip layer");
    assert_eq!(gz_desc.diff_id, plain.diff_id);
    assert_eq!(gz_desc.digest, sha(&gz));
    assert_eq!(gz_desc.size, gz.len() as u64);
    assert_eq!(gz_desc.uncompressed_size, plain.uncompressed_size);
    assert_eq!(
        gz_desc.media_type,
        "application/vnd.oci.image.layer.v1.tar+gzip"
    );
    let mut back = Vec::new();
    flate2::read::MultiGzDecoder::new(&gz[..])
        .read_to_end(&mut back)
        .expect("gunzip");
    assert_eq!(sha(&back), plain.diff_id);
    let mut gz2 = Vec::new();
    assert_eq!(
        write_layer(src, Compression::Gzip, &mut gz2).expect("gzip layer"),
        gz_desc
    );

    // gzip(1) reads every member.
    let dir = tmp();
    let file = dir.path().join("layer.tar.gz");
    fs::write(&file, &gz).expect("write gz");
    let status = std::process::Command::new("gzip")
        .arg("-t")
        .arg(&file)
        .status()
        .expect("run gzip -t");
    assert!(status.success());
    let zcat = std::process::Command::new("zcat")
        .arg(&file)
        .output()
        .expect("run zcat");
    assert!(zcat.status.success());
    assert_eq!(sha(&zcat.stdout), plain.diff_id);

    let mut zst = Vec::new();
    let zst_desc = write_layer(src, Compression::Zstd, &mut zst).expect("zstd layer");
    assert_eq!(zst_desc.diff_id, plain.diff_id);
    assert_eq!(zst_desc.digest, sha(&zst));
    assert_eq!(
        zst_desc.media_type,
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );
    let back = zstd::stream::decode_all(&zst[..]).expect("unzstd");
    assert_eq!(sha(&back), plain.diff_id);
}

#[test]
fn entries_keep_their_owner() {
    if !kiln_types::testing::needs_root("chown to uid 1000") {
        return;
    }
    let upper = tmp();
    let u = upper.path();
    mkdirs(u, &["b"]);
    write(u, "b/f", b"f");
    nix::unistd::chown(&u.join("b"), Some(1000.into()), Some(1000.into())).expect("chown");
    let (_, tar) = layer(DiffSource::Walk {
        lower: None,
        upper: u,
    });
    let got = read_tar(&tar);
    assert_eq!(got.iter().find(|e| e.path == "b/").expect("b/").uid, 1000);
    assert_eq!(got.iter().find(|e| e.path == "b/f").expect("b/f").uid, 0);
}

#[test]
fn compression_names() {
    assert_eq!(
        "gzip".parse::<Compression>().expect("gzip"),
        Compression::Gzip
    );
    assert_eq!(
        "zstd".parse::<Compression>().expect("zstd"),
        Compression::Zstd
    );
    assert_eq!(
        "uncompressed".parse::<Compression>().expect("uncompressed"),
        Compression::Uncompressed
    );
    let err = "lz4".parse::<Compression>().expect_err("unknown");
    assert_eq!(err.to_string(), "unknown layer compression \"lz4\"");
}

fn overlay(lowerdir: String, upper: Option<(&Path, &Path)>) -> Mount {
    let mut options = vec!["index=off".to_string()];
    if let Some((upper, work)) = upper {
        options.push(format!("workdir={}", work.display()));
        options.push(format!("upperdir={}", upper.display()));
    }
    options.push(format!("lowerdir={lowerdir}"));
    Mount {
        mount_type: "overlay".into(),
        source: "overlay".into(),
        target: String::new(),
        options,
    }
}

#[test]
fn mounted_overlay_delete_and_new_dir() {
    if !kiln_types::testing::needs_root("overlay mounts") {
        return;
    }
    let root = tmp();
    let d = |n: &str| -> PathBuf {
        let p = root.path().join(n);
        fs::create_dir_all(&p).expect("mkdir");
        p
    };
    let (lower, upper, work, merged, view) =
        (d("lower"), d("upper"), d("work"), d("merged"), d("view"));
    mkdirs(&lower, &["etc", "usr/bin"]);
    write(&lower, "etc/passwd", b"root:x:0:0::/root:/bin/sh\n");
    write(&lower, "etc/hosts", b"127.0.0.1 localhost\n");
    write(&lower, "usr/bin/tool", b"#!/bin/sh\n");

    let rw = MountGuard::mount(
        &[overlay(lower.display().to_string(), Some((&upper, &work)))],
        merged,
    )
    .expect("overlay mount (root required)");
    fs::remove_file(rw.path().join("etc/hosts")).expect("delete lower file");
    fs::create_dir_all(rw.path().join("newdir/sub")).expect("mkdir through overlay");
    fs::write(rw.path().join("newdir/sub/file"), b"new").expect("write through overlay");
    // Read, but do not change, a lower file.
    fs::read(rw.path().join("usr/bin/tool")).expect("read");
    rw.unmount().expect("unmount");

    let expected = [
        "etc/",
        "etc/.wh.hosts",
        "newdir/",
        "newdir/sub/",
        "newdir/sub/file",
    ];
    let (fast, tar) = layer(DiffSource::Overlay {
        upper: &upper,
        lower: Some(&lower),
    });
    assert_eq!(paths(&read_tar(&tar)), expected);

    // The walking differ over the merged view (overlay without an upperdir)
    // finds the same change and the same bytes.
    let ro = MountGuard::mount(
        &[overlay(
            format!("{}:{}", upper.display(), lower.display()),
            None,
        )],
        view,
    )
    .expect("read-only overlay view (root required)");
    let (walked, tar) = layer(DiffSource::Walk {
        lower: Some(&lower),
        upper: ro.path(),
    });
    assert_eq!(paths(&read_tar(&tar)), expected);
    assert_eq!(walked.diff_id, fast.diff_id);
}

/// A tree export writes a later name of one inode as a hard link only when
/// both names come from one layer of the view: across layers (kiln's shared
/// inodes) each name is a file with its data.
#[test]
fn tree_links_only_names_of_one_layer() {
    let t = tempfile::tempdir().expect("tempdir");
    let (root, top) = (t.path().join("root"), t.path().join("top"));
    fs::create_dir_all(&root).expect("mkdir");
    fs::create_dir_all(&top).expect("mkdir");
    fs::write(root.join("a"), b"data").expect("write");
    for name in ["b", "c"] {
        fs::hard_link(root.join("a"), root.join(name)).expect("link");
    }
    fs::write(top.join("c"), b"").expect("write");
    let mut origin = crate::origin::LayerOrigin::default();
    origin.add_tree(Path::new(""), vec![top, root.clone()]);
    let opts = TreeOptions {
        origin,
        ..TreeOptions::default()
    };
    let mut out = Vec::new();
    write_tree(&root, &opts, &mut out).expect("tree");
    let got: Vec<(String, char, Option<String>, Vec<u8>)> = read_tar(&out)
        .into_iter()
        .filter(|g| g.kind != '5')
        .map(|g| (g.path, g.kind, g.link, g.data))
        .collect();
    assert_eq!(
        got,
        [
            ("a".to_string(), '0', None, b"data".to_vec()),
            ("b".to_string(), '1', Some("a".to_string()), Vec::new()),
            ("c".to_string(), '0', None, b"data".to_vec()),
        ]
    );
}

/// `compression-level` as BuildKit's compressors take it: gzip's levels
/// from -1 to 9 (its default is the default), zstd's on the Go encoder's
/// four speeds, none uncompressed.
#[test]
fn compression_levels_are_read_as_buildkit_reads_them() {
    let level = |v: &str, c: Compression| Level::parse(v, c).map_err(|e| e.to_string());
    assert!(level("-1", Compression::Gzip)
        .expect("default")
        .is_default());
    assert!(level("6", Compression::Gzip).expect("default").is_default());
    assert_eq!(level("9", Compression::Gzip).expect("9").gzip(), 9);
    assert_eq!(level("0", Compression::Gzip).expect("0").gzip(), 0);
    assert_eq!(
        level("10", Compression::Gzip),
        Err("gzip: invalid compression level: 10 (gzip takes -1 to 9)".to_string())
    );
    assert_eq!(
        level("-2", Compression::Gzip),
        Err("compression-level=-2 (Huffman-only gzip) is not supported yet".to_string())
    );
    assert_eq!(
        level("x", Compression::Zstd),
        Err("non-integer value x specified for compression-level: strconv.ParseInt: parsing \"x\": invalid syntax".to_string())
    );
    for (v, want) in [
        ("-5", 1),
        ("2", 1),
        ("3", 3),
        ("5", 3),
        ("6", 7),
        ("9", 7),
        ("10", 11),
        ("22", 11),
    ] {
        assert_eq!(
            level(v, Compression::Zstd).expect(v).zstd(),
            want,
            "zstd {v}"
        );
    }
    assert!(level("5", Compression::Zstd).expect("default").is_default());
    assert!(level("99", Compression::Uncompressed)
        .expect("none")
        .is_default());
}

/// A layer written at another level is another blob of the same tar.
#[test]
fn a_level_changes_the_blob_not_the_layer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text: String = (0..20_000)
        .map(|i| format!("line {i} of a text file\n"))
        .collect();
    fs::write(dir.path().join("a.txt"), &text).expect("write");
    let src = DiffSource::Walk {
        lower: None,
        upper: dir.path(),
    };
    for c in [Compression::Gzip, Compression::Zstd] {
        let blob = |level: &str| {
            let mut out = Vec::new();
            let level = Level::parse(level, c).expect("level");
            let (hash, size, _) =
                stream_layer_reusing(src, (c, level), &mut out, None).expect("layer");
            assert_eq!(size as usize, out.len());
            (hash.diff_id, out)
        };
        let (fast_id, fast) = blob("1");
        let (best_id, best) = blob("9");
        assert_eq!(fast_id, best_id, "{c:?}");
        assert_ne!(fast, best, "{c:?}");
        for bytes in [fast, best] {
            let tar = match c {
                Compression::Gzip => {
                    let mut t = Vec::new();
                    flate2::read::MultiGzDecoder::new(&bytes[..])
                        .read_to_end(&mut t)
                        .expect("gunzip");
                    t
                }
                _ => zstd::decode_all(&bytes[..]).expect("unzstd"),
            };
            assert_eq!(Digest::of(&tar), fast_id);
        }
    }
}
