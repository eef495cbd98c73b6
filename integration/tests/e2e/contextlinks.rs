//! kilnd owns the contexts it keeps (`contexts/` under its root): only its
//! receiver writes them, and never changes a file in place. A `COPY` from
//! such a tree links the files it would write exactly as the tree holds
//! them into the new layer instead of copying their bytes (issue 10). The
//! layer is the one a copy gives, and a later change in the client's
//! directory reaches the kept tree as a new inode, so an image built
//! earlier keeps what it had.

use crate::common;
use common::remote;

use kiln_integration::Harness;
use std::io::Read;

const DF: &str = "FROM busybox\nCOPY . /app/\n";

/// Prints `stat` and content of the files the tests look at.
const SHOW: [&str; 3] = [
    "sh",
    "-c",
    "for f in /app/same /app/mode /app/content /app/d/deep; do \
     echo \"$(stat -c '%n %h %u:%g %a' $f) $(cat $f)\"; done",
];

/// What [`SHOW`] prints inside image `image`.
fn shown(h: &Harness, ns: &str, image: &str, id: &str) -> String {
    h.run_image(ns, &format!("docker.io/library/{image}"), id, &SHOW)
}

/// Every entry of the gzip layer blob `digest`: path, type, mode, owner,
/// mtime, content.
fn listing(h: &Harness, ns: &str, digest: &str) -> Vec<String> {
    let blob = common::blob(h, ns, digest);
    let mut a = tar::Archive::new(flate2::read::MultiGzDecoder::new(&blob[..]));
    a.entries()
        .expect("tar")
        .map(|e| {
            let mut e = e.expect("entry");
            let hd = e.header().clone();
            let mut data = String::new();
            e.read_to_string(&mut data).expect("read entry");
            format!(
                "{} {} {:o} {}:{} {} {:?}",
                e.path().expect("path").display(),
                hd.entry_type().as_byte() as char,
                hd.mode().expect("mode"),
                hd.uid().expect("uid"),
                hd.gid().expect("gid"),
                hd.mtime().expect("mtime"),
                data,
            )
        })
        .collect()
}

#[tokio::test]
async fn copy_from_a_kept_context_links_its_files_and_later_changes_leave_them_alone() {
    let ns = "context-links";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ctx = h.context(
        "context-links",
        &[
            ("Dockerfile", DF),
            ("same", "unchanged\n"),
            ("mode", "mode changes\n"),
            ("content", "content changes\n"),
            ("d/deep", "deep\n"),
        ],
    );
    let set_mode = |rel: &str, mode: u32| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(ctx.join(rel), std::fs::Permissions::from_mode(mode))
            .expect("chmod");
    };
    set_mode("mode", 0o640);
    let c = ctx.to_str().expect("utf8");
    // Every time in the context in the past, so that a second boundary
    // during the test cannot tell the builds apart.
    let touched = std::process::Command::new("find")
        .args([
            c,
            "-exec",
            "touch",
            "-h",
            "-d",
            "2001-02-03 04:05:06",
            "{}",
            "+",
        ])
        .status()
        .expect("find runs");
    assert!(touched.success());

    let out = remote(&h, &k, ns, &["-t", "cl:1", c]);
    assert!(out.success, "{}", out.stderr);
    // Each file is in kilnd's kept tree and in the layer: two links.
    let want = "/app/same 2 0:0 644 unchanged\n\
         /app/mode 2 0:0 640 mode changes\n\
         /app/content 2 0:0 644 content changes\n\
         /app/d/deep 2 0:0 644 deep\n";
    let first = h.run_image_expecting(ns, "docker.io/library/cl:1", "cl-run1", &SHOW, want);
    assert_eq!(first, want);
    // The linked layer is the layer a copy makes: an embedded build of
    // the same directory (which copies) gives the very same layers.
    let embedded = h.build(ns, &["--no-cache", "-t", "cl:embedded", c]);
    assert!(embedded.success, "{}", embedded.stderr);
    let (copied, _) = common::layers(&h, ns, "docker.io/library/cl:embedded");
    let (linked, _) = common::layers(&h, ns, "docker.io/library/cl:1");
    // All but the entry of /app itself, which takes the mtime of the
    // context's root: the client's directory for an embedded build, the
    // time of the receive for kilnd (as for BuildKit's local sources).
    let below_app = |digest: &str| {
        let all = listing(&h, ns, digest);
        assert!(all[0].starts_with("app/ 5 755 0:0 "), "{all:?}");
        all[1..].to_vec()
    };
    assert_eq!(below_app(&linked[1]), below_app(&copied[1]));
    assert_eq!(below_app(&linked[1]).len(), 6);

    // A mode change and a content change in the client's directory.
    set_mode("mode", 0o600);
    std::fs::write(ctx.join("content"), "content CHANGED\n").expect("write");
    let out = remote(&h, &k, ns, &["-t", "cl:2", c]);
    assert!(out.success, "{}", out.stderr);
    let second = shown(&h, ns, "cl:2", "cl-run2");
    assert!(
        second.contains("/app/mode 2 0:0 600 mode changes\n"),
        "{second}"
    );
    assert!(
        second.contains("/app/content 2 0:0 644 content CHANGED\n"),
        "{second}"
    );
    // The unchanged files are the first image's inodes again: the kept
    // tree and both layers.
    assert!(
        second.contains("/app/same 3 0:0 644 unchanged\n"),
        "{second}"
    );
    // The first image did not change with them.
    let again = shown(&h, ns, "cl:1", "cl-run1-again");
    assert_eq!(
        again,
        first
            .replace("/app/same 2", "/app/same 3")
            .replace("/app/d/deep 2", "/app/d/deep 3")
            .replace("/app/mode 2", "/app/mode 1")
            .replace("/app/content 2", "/app/content 1"),
        "the first image's files kept their modes and content"
    );
    drop(k);
    assert_eq!(h.leftovers(ns).expect("ctr"), Vec::<String>::new());
}

/// A linked file placed in a directory the copy did not create or copy
/// (an existing `/x` of `COPY f /x/f`) gives that directory the time of
/// the copy, as the kernel does for BuildKit's copy; a directory the copy
/// copies keeps the source's time.
#[tokio::test]
async fn an_existing_directory_takes_the_time_of_a_linked_copy() {
    let ns = "context-links-times";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let df = "FROM busybox\n\
              RUN mkdir -p /x /y && touch -d '2010-01-01 00:00:00' /x /y\n\
              COPY f /x/f\n\
              COPY d /y/d\n\
              RUN stat -c 'mtime %n %Y' /x /y/d\n";
    let ctx = h.context(
        "links-times",
        &[("Dockerfile", df), ("f", "f\n"), ("d/g", "g\n")],
    );
    let d = ctx.join("d");
    let set = std::process::Command::new("touch")
        .args(["-d", "@1293840000"])
        .arg(&d)
        .status()
        .expect("touch");
    assert!(set.success());
    let out = remote(&h, &k, ns, &[ctx.to_str().expect("utf8")]).ok();
    let mtime = |path: &str| -> i64 {
        out.stderr
            .lines()
            .find_map(|l| l.split_once(&format!("mtime {path} ")))
            .and_then(|(_, t)| t.trim().parse().ok())
            .unwrap_or_else(|| panic!("{path}: {}", out.stderr))
    };
    // 2010-01-01 and 2011-01-01 UTC.
    assert!(mtime("/x") > 1_262_304_000 + 86_400, "{}", out.stderr);
    assert_eq!(mtime("/y/d"), 1_293_840_000, "{}", out.stderr);
}
