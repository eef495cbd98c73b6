//! File-tree exports (`-o type=local`, `-o type=tar`) of a multi-platform
//! build through kilnd: as BuildKit's exporters, one directory per
//! platform (`linux_amd64/`, `linux_arm64/`) holding that platform's
//! tree; a single platform's tree is written as it is. `platform-split`
//! changes that as in BuildKit: `true` puts a single platform on its
//! directory too, `false` gives the platforms' trees in one, where a file
//! of two platforms is an error. The Dockerfiles have no `RUN`, so no
//! platform needs emulation.

use crate::common;
use common::remote;

use kiln_integration::Harness;
use std::collections::BTreeMap;
use std::io::Read;

const DF: &str = "FROM scratch\n\
ARG TARGETARCH\n\
COPY common.txt /\n\
COPY arch-${TARGETARCH}.txt /arch.txt\n\
WORKDIR /dir-${TARGETARCH}\n";

/// Every file below `root` (relative path -> contents) and every directory
/// (relative path -> `<dir>`).
fn tree(root: &std::path::Path) -> BTreeMap<String, String> {
    fn walk(root: &std::path::Path, dir: &std::path::Path, out: &mut BTreeMap<String, String>) {
        for e in std::fs::read_dir(dir).expect("read_dir") {
            let p = e.expect("entry").path();
            let rel = p
                .strip_prefix(root)
                .expect("below root")
                .display()
                .to_string();
            if p.is_dir() {
                out.insert(rel, "<dir>".into());
                walk(root, &p, out);
            } else {
                out.insert(rel, std::fs::read_to_string(&p).expect("read"));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The same map from a tar file (directories' names without their `/`).
fn tar_tree(path: &std::path::Path) -> BTreeMap<String, String> {
    let mut a = tar::Archive::new(std::fs::File::open(path).expect("tar"));
    let mut out = BTreeMap::new();
    for e in a.entries().expect("entries") {
        let mut e = e.expect("entry");
        let name = e
            .path()
            .expect("path")
            .display()
            .to_string()
            .trim_end_matches('/')
            .to_string();
        if e.header().entry_type().is_dir() {
            out.insert(name, "<dir>".into());
        } else {
            let mut body = String::new();
            e.read_to_string(&mut body).expect("read entry");
            out.insert(name, body);
        }
    }
    out
}

/// What one platform's tree holds, below `prefix`.
fn platform_tree(prefix: &str, arch: &str) -> BTreeMap<String, String> {
    [
        ("common.txt".to_string(), "common\n".to_string()),
        ("arch.txt".to_string(), format!("built for {arch}\n")),
        (format!("dir-{arch}"), "<dir>".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (format!("{prefix}{k}"), v))
    .collect()
}

/// The context of [`DF`], named `name`.
fn context(h: &Harness, name: &str) -> std::path::PathBuf {
    h.context(
        name,
        &[
            ("Dockerfile", DF),
            ("common.txt", "common\n"),
            ("arch-amd64.txt", "built for amd64\n"),
            ("arch-arm64.txt", "built for arm64\n"),
        ],
    )
}

#[tokio::test]
async fn multi_platform_file_trees_get_a_directory_per_platform() {
    let ns = "local-multiplatform";
    let h = Harness::start().await.expect("private containerd starts");
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ctx = context(&h, "local-multiplatform");
    let c = ctx.to_str().expect("utf8");
    let out_dir = h.state_dir().join("local-multiplatform-out");

    let local = out_dir.join("multi");
    remote(
        &h,
        &k,
        ns,
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "-o",
            &format!("type=local,dest={}", local.display()),
            c,
        ],
    )
    .ok();
    let mut want = BTreeMap::new();
    for arch in ["amd64", "arm64"] {
        want.insert(format!("linux_{arch}"), "<dir>".to_string());
        want.extend(platform_tree(&format!("linux_{arch}/"), arch));
    }
    assert_eq!(tree(&local), want);
    // Each platform's directory as BuildKit's exporter makes it up: mode
    // 0755, no time (the epoch), whatever the image's root says.
    for arch in ["amd64", "arm64"] {
        let md = std::fs::metadata(local.join(format!("linux_{arch}"))).expect("platform dir");
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&md.permissions()) & 0o7777,
            0o755
        );
        assert_eq!(md.modified().expect("mtime"), std::time::UNIX_EPOCH);
    }

    let tarfile = out_dir.join("multi.tar");
    remote(
        &h,
        &k,
        ns,
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "-o",
            &format!("type=tar,dest={}", tarfile.display()),
            c,
        ],
    )
    .ok();
    assert_eq!(tar_tree(&tarfile), want);
    // The platform directories' headers, as BuildKit's tar exporter writes
    // them: mode 0755, owner 0:0, time 0.
    let mut a = tar::Archive::new(std::fs::File::open(&tarfile).expect("tar"));
    let mut seen = 0;
    for e in a.entries().expect("entries") {
        let e = e.expect("entry");
        let name = e.path().expect("path").display().to_string();
        if name == "linux_amd64/" || name == "linux_arm64/" {
            let h = e.header();
            assert_eq!(h.mode().expect("mode") & 0o7777, 0o755, "{name}");
            assert_eq!(h.mtime().expect("mtime"), 0, "{name}");
            assert_eq!((h.uid().expect("uid"), h.gid().expect("gid")), (0, 0));
            seen += 1;
        }
    }
    assert_eq!(seen, 2);

    // One platform: its tree as it is, in both.
    let single = out_dir.join("single");
    remote(
        &h,
        &k,
        ns,
        &[
            "--platform",
            "linux/arm64",
            "-o",
            &format!("type=local,dest={}", single.display()),
            c,
        ],
    )
    .ok();
    assert_eq!(tree(&single), platform_tree("", "arm64"));
    let tarfile = out_dir.join("single.tar");
    remote(
        &h,
        &k,
        ns,
        &[
            "--platform",
            "linux/arm64",
            "-o",
            &format!("type=tar,dest={}", tarfile.display()),
            c,
        ],
    )
    .ok();
    assert_eq!(tar_tree(&tarfile), platform_tree("", "arm64"));

    // platform-split=true: a single platform on its directory too.
    let split1 = out_dir.join("split1");
    remote(
        &h,
        &k,
        ns,
        &[
            "--platform",
            "linux/arm64",
            "-o",
            &format!("type=local,dest={},platform-split=true", split1.display()),
            c,
        ],
    )
    .ok();
    let mut want1 = platform_tree("linux_arm64/", "arm64");
    want1.insert("linux_arm64".into(), "<dir>".into());
    assert_eq!(tree(&split1), want1);

    // platform-split=false: the platforms' trees in one, where a file of
    // two platforms is BuildKit's error.
    let out = remote(
        &h,
        &k,
        ns,
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "-o",
            &format!(
                "type=local,dest={},platform-split=false",
                out_dir.join("clash").display()
            ),
            c,
        ],
    );
    assert!(!out.success, "{}", out.stderr);
    assert!(
        out.stderr
            .contains("from linux/amd64 with linux/arm64 when split option is disabled"),
        "{}",
        out.stderr
    );
    let apart = h.context(
        "local-multiplatform-apart",
        &[
            (
                "Dockerfile",
                "FROM scratch\nARG TARGETARCH\nCOPY arch-${TARGETARCH}.txt /${TARGETARCH}/arch.txt\n",
            ),
            ("arch-amd64.txt", "built for amd64\n"),
            ("arch-arm64.txt", "built for arm64\n"),
        ],
    );
    let joined = out_dir.join("joined.tar");
    remote(
        &h,
        &k,
        ns,
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "-o",
            &format!("type=tar,dest={},platform-split=false", joined.display()),
            apart.to_str().expect("utf8"),
        ],
    )
    .ok();
    let want: BTreeMap<String, String> = [
        ("amd64", "<dir>"),
        ("amd64/arch.txt", "built for amd64\n"),
        ("arm64", "<dir>"),
        ("arm64/arch.txt", "built for arm64\n"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(tar_tree(&joined), want);

    // kilnd leaves no view mounted or behind.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let root = h.kilnd_root(ns).display().to_string();
    assert!(
        !mounts.lines().any(|l| l.contains(&root)),
        "views still mounted under {root}"
    );
}

/// With an epoch (the build's `SOURCE_DATE_EPOCH`, or the exporter's
/// `source-date-epoch`), every file the local and tar exporters write has
/// that time, as BuildKit's exporters give it, platform directories too.
#[tokio::test]
async fn an_epoch_is_every_exported_files_time() {
    let ns = "local-epoch";
    let h = Harness::start().await.expect("private containerd starts");
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ctx = context(&h, "local-epoch");
    let c = ctx.to_str().expect("utf8");
    let out_dir = h.state_dir().join("local-epoch-out");
    let epoch = 1_000_000_000;
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(epoch);

    let local = out_dir.join("multi");
    remote(
        &h,
        &k,
        ns,
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "--build-arg",
            &format!("SOURCE_DATE_EPOCH={epoch}"),
            "-o",
            &format!("type=local,dest={}", local.display()),
            c,
        ],
    )
    .ok();
    fn times(dir: &std::path::Path, out: &mut Vec<(String, std::time::SystemTime)>) {
        for e in std::fs::read_dir(dir).expect("read_dir") {
            let p = e.expect("entry").path();
            let md = std::fs::symlink_metadata(&p).expect("stat");
            out.push((p.display().to_string(), md.modified().expect("mtime")));
            if md.is_dir() {
                times(&p, out);
            }
        }
    }
    let mut seen = Vec::new();
    times(&local, &mut seen);
    assert!(seen.len() >= 8, "{seen:?}");
    assert!(seen.iter().all(|(_, t)| *t == at), "{seen:?}");

    // The exporter's own option, for a tar of one platform.
    let tarfile = out_dir.join("single.tar");
    remote(
        &h,
        &k,
        ns,
        &[
            "--platform",
            "linux/arm64",
            "-o",
            &format!(
                "type=tar,dest={},source-date-epoch={epoch}",
                tarfile.display()
            ),
            c,
        ],
    )
    .ok();
    let mut a = tar::Archive::new(std::fs::File::open(&tarfile).expect("tar"));
    let mut seen = 0;
    for e in a.entries().expect("entries") {
        let e = e.expect("entry");
        let name = e.path().expect("path").display().to_string();
        assert_eq!(e.header().mtime().expect("mtime"), epoch, "{name}");
        seen += 1;
    }
    assert!(seen >= 3, "{seen}");
}
