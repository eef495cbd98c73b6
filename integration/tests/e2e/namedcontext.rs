//! Named build contexts (`--build-context NAME=VALUE`, the `context:NAME`
//! frontend attributes) through both frontend paths: the embedded CLI
//! reads a named directory itself; through kilnd the client serves it in
//! its session (`context:NAME=local:NAME`, as buildx sends it) and kilnd
//! fetches its `.dockerignore` first, then its files with those patterns.

use crate::common;
use common::remote;

use kiln_integration::Harness;
use std::os::unix::fs::MetadataExt;

/// The `deps` stage is replaced by a directory (with its own ignore
/// file), `alpine` by the local busybox image, and `tools` (read by
/// `RUN --mount=from=`) by a second directory.
const DF: &str = "FROM busybox AS deps\n\
RUN echo must not run > /from-stage\n\
FROM alpine\n\
COPY --from=deps / /deps/\n\
RUN --mount=from=tools,target=/t cat /t/tool.txt > /tool.txt\n\
CMD [\"sh\", \"-c\", \"ls -A /deps; cat /deps/a.txt /tool.txt /etc/base-release\"]\n";

#[tokio::test]
async fn named_contexts_replace_stages_images_and_sources_in_both_paths() {
    let ns = "named-ctx";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ctx = h.context(
        "named-main",
        &[
            ("Dockerfile", DF),
            // The main context's ignore file does not apply to the others.
            (".dockerignore", "a.txt\n"),
        ],
    );
    let deps = h.context(
        "named-deps",
        &[
            (".dockerignore", "*.log\n"),
            ("a.txt", "from the deps directory\n"),
            ("noise.log", "ignored\n"),
        ],
    );
    let tools = h.context("named-tools", &[("tool.txt", "tool\n")]);
    let deps_arg = format!("deps={}", deps.display());
    let tools_arg = format!("tools={}", tools.display());
    let c = ctx.to_str().expect("utf8");
    let want = ".dockerignore\na.txt\nfrom the deps directory\ntool\nbusybox test base\n";
    for (path, tag) in [("embedded", "nc:embedded"), ("kilnd", "nc:kilnd")] {
        let args = [
            "--build-context",
            deps_arg.as_str(),
            "--build-context",
            tools_arg.as_str(),
            "--build-context",
            "alpine=docker-image://busybox",
            "-t",
            tag,
            c,
        ];
        let out = if path == "embedded" {
            h.build(ns, &args)
        } else {
            remote(&h, &k, ns, &args)
        }
        .ok();
        assert!(
            !out.stderr.contains("must not run"),
            "{path}: the replaced stage ran:\n{}",
            out.stderr
        );
        // Each named directory's own ignore file is read first, a step of
        // its own as in BuildKit (before the base image lookups).
        for local in ["deps", "tools"] {
            let step = format!("[context {local}] load .dockerignore");
            let at = |text: &str| {
                out.stderr
                    .lines()
                    .position(|l| l.split_once(' ').is_some_and(|(_, rest)| rest == text))
            };
            let (ignore, lookup) = (
                at(&step),
                at("[internal] load metadata for docker.io/library/busybox:latest"),
            );
            assert!(
                ignore.is_some() && ignore < lookup,
                "{path}: {step}:\n{}",
                out.stderr
            );
        }
        let got = h.run_image_expecting(
            ns,
            &format!("docker.io/library/{tag}"),
            &format!("nc-{path}"),
            &[],
            want,
        );
        assert_eq!(got, want, "{path}");
    }
}

#[tokio::test]
async fn a_named_directory_must_exist_and_be_served() {
    let ns = "named-ctx-missing";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.context("named-missing", &[("Dockerfile", "FROM busybox\n")]);
    let c = ctx.to_str().expect("utf8");
    let out = h.build(ns, &["--build-context", "base=/nonexistent/dir", c]);
    assert!(!out.success, "{}", out.stdout);
    assert!(
        out.stderr.contains("build context base=/nonexistent/dir"),
        "{}",
        out.stderr
    );
}

/// An image exported as an OCI archive, unpacked into a layout
/// directory, is a named context (`oci-layout://DIR`, `:TAG`, `@DIGEST`)
/// of a build in another namespace, whose content store has none of its
/// blobs: they are imported from the layout, and the layout's config is
/// the base's (kilnd writes the archive). Through kilnd the kiln CLI
/// attaches the layout to its session as a content store, as buildx
/// does, and the same flags build the same image.
#[tokio::test]
async fn an_oci_layout_is_a_named_context() {
    let ns = "named-ctx-layout";
    let h = Harness::with_busybox(ns).await;
    // The embedded CLI writes no OCI archive: kilnd exports it.
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let src = h.context(
        "layout-src",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo from the layout > /layout.txt\nENV FROM_LAYOUT=yes\n",
        )],
    );
    let tar_path = h.state_dir().join("layout.tar");
    let out_arg = format!("type=oci,dest={},name=layout:v1", tar_path.display());
    remote(&h, &k, ns, &["-o", &out_arg, src.to_str().expect("utf8")]).ok();
    let layout = h.state_dir().join("layout");
    let file = std::fs::File::open(&tar_path).expect("archive written");
    tar::Archive::new(file)
        .unpack(&layout)
        .expect("archive unpacks");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index.json"))
            .expect("index JSON");
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .expect("a manifest digest")
        .to_string();

    let other = "named-ctx-layout-use";
    let ctx = h.context(
        "layout-use",
        &[(
            "Dockerfile",
            "FROM base\nCOPY --from=extra /layout.txt /copied.txt\n\
             CMD [\"sh\", \"-c\", \"cat /layout.txt /copied.txt; echo $FROM_LAYOUT\"]\n",
        )],
    );
    let c = ctx.to_str().expect("utf8");
    let dir = layout.display().to_string();
    let forms = [
        format!("oci-layout://{dir}"),
        format!("oci-layout://{dir}:v1"),
        format!("oci-layout://{dir}@{digest}"),
    ];
    for (i, form) in forms.iter().enumerate() {
        let base = format!("base={form}");
        let extra = format!("extra={form}");
        let tag = format!("from-layout:{i}");
        let out = h
            .build(
                other,
                &[
                    "--build-context",
                    &base,
                    "--build-context",
                    &extra,
                    "-t",
                    &tag,
                    c,
                ],
            )
            .ok();
        assert!(
            out.stderr.contains("[context base] OCI load from client"),
            "{form}:\n{}",
            out.stderr
        );
        let got = h.run_image_expecting(
            other,
            &format!("docker.io/library/{tag}"),
            &format!("layout-run-{i}"),
            &[],
            "from the layout\nfrom the layout\nyes\n",
        );
        assert_eq!(got, "from the layout\nfrom the layout\nyes\n", "{form}");
    }

    // Through a kilnd of a third namespace, which has none of the
    // layout's blobs either: kilnd reads them from the CLI's session.
    let through = "named-ctx-layout-kilnd";
    let k2 = h
        .start_kilnd_named(through, "layout-use")
        .await
        .expect("kilnd starts");
    for (i, form) in forms.iter().enumerate() {
        let base = format!("base={form}");
        let extra = format!("extra={form}");
        let tag = format!("from-layout-kilnd:{i}");
        let out = remote(
            &h,
            &k2,
            through,
            &[
                "--build-context",
                &base,
                "--build-context",
                &extra,
                "-t",
                &tag,
                c,
            ],
        )
        .ok();
        assert!(
            !out.stderr.contains("serves no content store"),
            "{form}:\n{}",
            out.stderr
        );
        let got = h.run_image_expecting(
            through,
            &format!("docker.io/library/{tag}"),
            &format!("layout-kilnd-run-{i}"),
            &[],
            "from the layout\nfrom the layout\nyes\n",
        );
        assert_eq!(got, "from the layout\nfrom the layout\nyes\n", "{form}");
    }
}

/// The mtime given to the named directory's `/f`, kept in its layer.
const F_MTIME: i64 = 1_600_000_000;

/// A named directory that is a whole root filesystem (busybox) with `/f`
/// (content `f`, owned by uid 1234 on the host, an old mtime), an ignored `skip.log`
/// and its own `.dockerignore`.
fn rootfs_context(h: &Harness, name: &str, f: &str) -> std::path::PathBuf {
    let dir = h.context(
        name,
        &[
            ("f", f),
            ("skip.log", "ignored\n"),
            (".dockerignore", "*.log\n"),
        ],
    );
    kiln_integration::busybox_rootfs(&dir).expect("busybox rootfs");
    let f = dir.join("f");
    std::os::unix::fs::chown(&f, Some(1234), Some(1234)).expect("chown f");
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(F_MTIME as u64);
    std::fs::File::options()
        .write(true)
        .open(&f)
        .expect("open f")
        .set_modified(t)
        .expect("set mtime");
    assert_eq!(std::fs::metadata(&f).expect("stat f").uid(), 1234);
    dir
}

/// (path, uid, gid, mtime) of every entry of the gzip layer blob `digest`.
fn layer_entries(h: &Harness, ns: &str, digest: &str) -> Vec<(String, u64, u64, u64)> {
    let blob = common::blob(h, ns, digest);
    let mut a = tar::Archive::new(flate2::read::MultiGzDecoder::new(&blob[..]));
    a.entries()
        .expect("tar")
        .map(|e| {
            let e = e.expect("entry");
            let hd = e.header();
            (
                e.path().expect("path").display().to_string(),
                hd.uid().expect("uid"),
                hd.gid().expect("gid"),
                hd.mtime().expect("mtime"),
            )
        })
        .collect()
}

/// A stage that is a named directory (`FROM ctx`) is a filesystem like
/// any other, embedded and through kilnd: another stage copies from it, a
/// `RUN` runs on it, copies (linked or not) add to it, and a final stage that is only the directory exports
/// it as one layer of its contents (files root's, times kept, ignored
/// files left out). A rebuild with the same files runs nothing again.
#[tokio::test]
async fn a_stage_from_a_named_directory_is_a_filesystem() {
    let ns = "named-ctx-stage";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let copy = h.context(
        "named-stage-copy",
        &[(
            "Dockerfile",
            "FROM ctx AS base\nFROM busybox\nCOPY --from=base /f /f\nCMD [\"cat\", \"/f\"]\n",
        )],
    );
    let run = h.context(
        "named-stage-run",
        &[(
            "Dockerfile",
            "FROM ctx\nRUN echo RAN-ON-$((1+1)) && cat /f > /seen && stat -c %u:%g /f >> /seen \
             && ls /skip.log >> /seen 2>&1 || true\nCMD [\"cat\", \"/seen\"]\n",
        )],
    );
    // A linked copy merges onto it, a plain copy copies onto it.
    let onto = h.context(
        "named-stage-onto",
        &[
            ("Dockerfile", "FROM ctx\nCOPY --link g /g\nCOPY h /h\n"),
            ("g", "linked\n"),
            ("h", "copied\n"),
        ],
    );
    let last = h.context(
        "named-stage-last",
        &[("Dockerfile", "FROM busybox AS unused\nFROM ctx\n")],
    );
    for path in ["embedded", "kilnd"] {
        // Each path its own files: nothing is answered by the other's cache.
        let want_f = format!("from ctx {path}\n");
        let root = rootfs_context(&h, &format!("named-stage-root-{path}"), &want_f);
        let ctx_arg = format!("ctx={}", root.display());
        let build = |dir: &std::path::Path, tag: &str| {
            let args = [
                "--build-context",
                &ctx_arg,
                "-t",
                tag,
                dir.to_str().expect("utf8"),
            ];
            if path == "embedded" {
                h.build(ns, &args)
            } else {
                remote(&h, &k, ns, &args)
            }
        };
        // Another stage copies from it.
        let tag = format!("stage-copy:{path}");
        build(&copy, &tag).ok();
        let got = h.run_image_expecting(
            ns,
            &format!("docker.io/library/{tag}"),
            &format!("stage-copy-{path}"),
            &[],
            &want_f,
        );
        assert_eq!(got, want_f, "{path}");

        // A step runs on it; the rebuild is all cache hits.
        let tag = format!("stage-run:{path}");
        let first = build(&run, &tag).ok();
        assert!(
            first.stderr.contains("RAN-ON-2"),
            "{path}:\n{}",
            first.stderr
        );
        let want = format!("{want_f}0:0\nls: /skip.log: No such file or directory\n");
        let got = h.run_image_expecting(
            ns,
            &format!("docker.io/library/{tag}"),
            &format!("stage-run-{path}"),
            &[],
            &want,
        );
        assert_eq!(got, want, "{path}");
        let again = build(&run, &tag).ok();
        assert!(
            !again.stderr.contains("RAN-ON-2"),
            "{path}: the step ran again:\n{}",
            again.stderr
        );
        assert!(again.stderr.contains("CACHED"), "{path}:\n{}", again.stderr);

        let tag = format!("stage-onto:{path}");
        build(&onto, &tag).ok();
        let want = format!("{want_f}linked\ncopied\n");
        let got = h.run_image_expecting(
            ns,
            &format!("docker.io/library/{tag}"),
            &format!("stage-onto-{path}"),
            &["cat", "/f", "/g", "/h"],
            &want,
        );
        assert_eq!(got, want, "{path}");

        // The final stage is the directory: its image is one layer of it.
        let tag = format!("stage-last:{path}");
        build(&last, &tag).ok();
        let name = format!("docker.io/library/{tag}");
        let manifest = h.manifest(ns, &name);
        let layers = manifest["layers"].as_array().expect("layers");
        assert_eq!(layers.len(), 1, "{path}: {manifest}");
        let digest = layers[0]["digest"].as_str().expect("digest");
        let entries = layer_entries(&h, ns, digest);
        let f = entries
            .iter()
            .find(|e| e.0.trim_start_matches("./") == "f")
            .unwrap_or_else(|| panic!("{path}: no f in {entries:?}"));
        assert_eq!((f.1, f.2, f.3), (0, 0, F_MTIME as u64), "{path}: {f:?}");
        assert!(
            entries.iter().all(|e| e.1 == 0 && e.2 == 0),
            "{path}: a file not root's: {entries:?}"
        );
        assert!(
            entries
                .iter()
                .any(|e| e.0.trim_start_matches("./") == "bin/busybox"),
            "{path}: {entries:?}"
        );
        assert!(
            !entries.iter().any(|e| e.0.contains("skip.log")),
            "{path}: an ignored file exported: {entries:?}"
        );
        let id = format!("stage-last-{path}");
        let got = h.run_image_expecting(ns, &name, &id, &["cat", "/f"], &want_f);
        assert_eq!(got, want_f, "{path}");
        // The same files again: the same image.
        let digest_before = h.image_digest(ns, &name);
        build(&last, &tag).ok();
        assert_eq!(h.image_digest(ns, &name), digest_before, "{path}");
    }
}
