//! Hard links in file-tree exports (`-o type=tar`, `-o type=local`)
//! through kilnd, as BuildKit writes them: names a step linked (`RUN ln`)
//! stay links, and files that kiln shares between layers instead of
//! copying (two `COPY --from` of one committed file) are separate files,
//! as the copies BuildKit makes are.

use crate::common;
use common::remote;

use kiln_integration::Harness;
use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

const DF: &str = "FROM busybox AS src\n\
RUN echo made > /m && ln /m /m2\n\
FROM busybox\n\
COPY f /a\n\
COPY --from=src /m /fromstage\n\
COPY --from=src /m /fromstage2\n\
COPY --from=src /m /m2 /both/\n\
RUN ln /a /c && echo x > /d && ln /d /e\n";

/// The files of the tar at `path` outside the base's directories: name ->
/// the link target for a hard link, else `=` and the contents.
fn tar_files(path: &Path) -> BTreeMap<String, String> {
    let mut a = tar::Archive::new(std::fs::File::open(path).expect("tar"));
    let mut out = BTreeMap::new();
    for e in a.entries().expect("entries") {
        let mut e = e.expect("entry");
        let name = e.path().expect("path").display().to_string();
        if name.contains('/') && !name.starts_with("both/") && !name.starts_with("linux_") {
            continue;
        }
        let kind = e.header().entry_type();
        if kind.is_hard_link() {
            let target = e.link_name().expect("link").expect("target");
            out.insert(name, target.display().to_string());
        } else if kind.is_file() {
            let mut body = String::new();
            e.read_to_string(&mut body).expect("read entry");
            out.insert(name, format!("={body}"));
        }
    }
    out
}

fn inode(p: &Path) -> u64 {
    std::fs::symlink_metadata(p).expect("stat").ino()
}

#[tokio::test]
async fn only_the_links_a_step_made_are_exported_as_links() {
    let ns = "export-links";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ctx = h.context("export-links", &[("Dockerfile", DF), ("f", "hello\n")]);
    let c = ctx.to_str().expect("utf8");
    let out = h.state_dir().join("export-links-out");
    std::fs::create_dir_all(&out).expect("mkdir");

    let tarfile = out.join("fs.tar");
    remote(
        &h,
        &k,
        ns,
        &["-o", &format!("type=tar,dest={}", tarfile.display()), c],
    )
    .ok();
    let want: BTreeMap<String, String> = [
        ("a", "=hello\n"),
        ("c", "a"),
        ("d", "=x\n"),
        ("e", "d"),
        ("fromstage", "=made\n"),
        ("fromstage2", "=made\n"),
        ("both/m", "=made\n"),
        ("both/m2", "=made\n"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let got = tar_files(&tarfile);
    for (name, body) in &want {
        assert_eq!(got.get(name), Some(body), "{name} in {got:?}");
    }

    let local = out.join("local");
    remote(
        &h,
        &k,
        ns,
        &["-o", &format!("type=local,dest={}", local.display()), c],
    )
    .ok();
    assert_eq!(inode(&local.join("a")), inode(&local.join("c")));
    assert_eq!(inode(&local.join("d")), inode(&local.join("e")));
    let stage_copies =
        ["fromstage", "fromstage2", "both/m", "both/m2"].map(|n| inode(&local.join(n)));
    for (i, a) in stage_copies.iter().enumerate() {
        assert!(!stage_copies[i + 1..].contains(a), "{stage_copies:?}");
    }
    assert_eq!(
        std::fs::read_to_string(local.join("fromstage2")).expect("read"),
        "made\n"
    );
}

/// A multi-platform export's platform directories are each looked up in
/// their own platform's layers.
#[tokio::test]
async fn platform_directories_keep_their_copies_apart() {
    let ns = "export-links-platforms";
    let h = Harness::start().await.expect("private containerd starts");
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let df = "FROM scratch AS src\nCOPY f /m\nFROM scratch\n\
              COPY --from=src /m /x\nCOPY --from=src /m /y\nCOPY --from=src /m /z\n";
    let ctx = h.context(
        "export-links-platforms",
        &[("Dockerfile", df), ("f", "one\n")],
    );
    let tarfile = h.state_dir().join("export-links-platforms.tar");
    remote(
        &h,
        &k,
        ns,
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "-o",
            &format!("type=tar,dest={}", tarfile.display()),
            ctx.to_str().expect("utf8"),
        ],
    )
    .ok();
    let got = tar_files(&tarfile);
    for arch in ["amd64", "arm64"] {
        for name in ["x", "y", "z"] {
            let path = format!("linux_{arch}/{name}");
            assert_eq!(
                got.get(&path).map(String::as_str),
                Some("=one\n"),
                "{path} in {got:?}"
            );
        }
    }
}
