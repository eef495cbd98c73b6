//! `COPY --from` a stage links the files the stage's committed layer holds
//! exactly as the copy writes them instead of copying their bytes: the
//! layer is the one a copy gives (every tar entry of the stage's files
//! again, hard links included), and a later step that changes such a file
//! changes only its own copy.

use crate::common;

use kiln_integration::Harness;
use std::io::Read;

/// Stage `a` writes files (one pair hard-linked to each other); stage `b`
/// copies them and changes one in a later step; the final image copies
/// from both.
const DF: &str = "FROM busybox AS a\n\
RUN mkdir /d && echo one > /d/f && ln /d/f /d/h && echo big > /d/g && echo p > /d/p && chown 5:6 /d/g\n\
FROM busybox AS b\n\
COPY --from=a /d /x\n\
RUN echo changed >> /x/g && chmod 600 /x/g\n\
FROM busybox\n\
COPY --from=a /d /y\n\
COPY --from=b /x /z\n";

/// Every entry of the gzip layer blob `digest` below `prefix`, renamed to
/// start with `as_prefix`: (path, type, mode, uid, gid, mtime, link
/// target, data).
type Entry = (String, u8, u32, u64, u64, u64, String, Vec<u8>);

fn entries(h: &Harness, ns: &str, digest: &str, prefix: &str, as_prefix: &str) -> Vec<Entry> {
    let blob = common::blob(h, ns, digest);
    let rename = |p: &str| p.strip_prefix(prefix).map(|r| format!("{as_prefix}{r}"));
    let mut a = tar::Archive::new(flate2::read::MultiGzDecoder::new(&blob[..]));
    let mut all = Vec::new();
    for e in a.entries().expect("tar") {
        let mut e = e.expect("entry");
        let path = e.path().expect("path").display().to_string();
        let Some(path) = rename(&path) else { continue };
        let hd = e.header().clone();
        let link = e
            .link_name()
            .expect("link name")
            .map(|l| rename(&l.display().to_string()).unwrap_or_default())
            .unwrap_or_default();
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("read entry");
        all.push((
            path,
            hd.entry_type().as_byte(),
            hd.mode().expect("mode"),
            hd.uid().expect("uid"),
            hd.gid().expect("gid"),
            hd.mtime().expect("mtime"),
            link,
            data,
        ));
    }
    all
}

#[tokio::test]
async fn copy_from_a_stage_links_its_files_and_keeps_them_apart() {
    let ns = "copyfrom-links";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.context("copyfrom-links", &[("Dockerfile", DF)]);
    let c = ctx.to_str().expect("utf8");
    let out = h.build(ns, &["-t", "links", c]);
    assert!(out.success, "{}", out.stderr);
    let image = "docker.io/library/links:latest";
    let shown = h.run_image(
        ns,
        image,
        "copyfrom-links-run",
        &[
            "sh",
            "-c",
            "cat /y/g /z/g; stat -c '%n %h %u:%g %a' /y/g /y/p /z/g; \
             [ $(stat -c %i /y/f) = $(stat -c %i /y/h) ] && echo twins",
        ],
    );
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines[..3], ["big", "big", "changed"], "{shown}");
    // Linked: stage a's /d/g is also b's /x/g (which b's RUN then copied
    // up) and the final /y/g; a's /d/p is b's /x/p, /y/p and /z/p.
    assert_eq!(lines[3], "/y/g 3 5:6 644", "{shown}");
    assert_eq!(lines[4], "/y/p 4 0:0 644", "{shown}");
    // b's RUN changed its own copy only.
    assert!(
        lines[5].starts_with("/z/g ") && lines[5].ends_with(" 5:6 600"),
        "{shown}"
    );
    assert_eq!(
        lines[6], "twins",
        "the copy keeps its own hard links: {shown}"
    );

    // The copy's layer holds stage a's files as a's own layer does: every
    // tar entry the same but for the name (the hard link too).
    let out = h.build(ns, &["--target", "a", "-t", "stage-a", c]);
    assert!(out.success, "{}", out.stderr);
    let (a_layers, _) = common::layers(&h, ns, "docker.io/library/stage-a:latest");
    let (layers, _) = common::layers(&h, ns, image);
    let want = entries(&h, ns, &a_layers[1], "d/", "y/");
    let got = entries(&h, ns, &layers[1], "y/", "y/");
    assert_eq!(want.len(), 5, "d/ and its four files: {want:?}");
    assert_eq!(got, want, "the linked copy's layer is not a copy's");
}

/// Sources that share a destination (a wildcard's matches, a directory
/// and a symlink to it) are copied in order, the last one winning, as in
/// BuildKit; kiln used to fail with "File exists" when the earlier one
/// was a file it meant to link and the later one another.
#[tokio::test]
async fn wildcard_sources_with_one_destination_end_with_the_last() {
    let ns = "copyfrom-dupdest";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.context(
        "copyfrom-dupdest",
        &[
            ("a1", "one\n"),
            ("a2", "two\n"),
            ("x1/f", "1\n"),
            ("x2/f", "2\n"),
            (
                "Dockerfile",
                "FROM busybox AS s\n\
                 RUN mkdir -p /real/d /real/e && echo rf > /real/d/f && echo rf2 > /real/e/f \
                 && ln -s /real /sl && ln -s d /real/dl\n\
                 FROM busybox\n\
                 COPY a* /dest\n\
                 COPY x* /b/\n\
                 COPY --from=s /real/* /c/\n\
                 COPY --from=s /sl/* /c8/\n\
                 RUN echo \"got=$(cat /dest /b/f /c/f /c8/f | tr '\\n' ,)\"\n",
            ),
        ],
    );
    let c = ctx.to_str().expect("utf8");
    let out = h.build(ns, &["--no-cache", c]);
    assert!(out.success, "embedded: {}", out.stderr);
    assert!(out.stderr.contains("got=two,2,rf2,rf2,"), "{}", out.stderr);
    // Through kilnd the context's files are linked from its kept tree.
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let out = common::remote(&h, &k, ns, &["--no-cache", c]);
    assert!(out.success, "through kilnd: {}", out.stderr);
    assert!(out.stderr.contains("got=two,2,rf2,rf2,"), "{}", out.stderr);
}
