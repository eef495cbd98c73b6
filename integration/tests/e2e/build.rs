//! Issue 2's acceptance: Dockerfiles built into a private containerd by the
//! `kiln` binary, checked with `ctr` and the content store.

use crate::common;

use common::image_config;
use kiln_integration::{Harness, KilnOutput, RunningKiln};

/// The config JSON of image `name`.
fn build(h: &Harness, ns: &str, args: &[&str]) -> KilnOutput {
    h.build(ns, args)
}

fn ok(out: KilnOutput) -> KilnOutput {
    out.ok()
}

#[tokio::test]
async fn every_instruction_builds_and_runs_unpacked() {
    let ns = "full";
    let h = Harness::with_busybox(ns).await;
    let ctx = common::full_context(&h, "full");
    let mut args = vec!["-t", "full:1"];
    args.extend_from_slice(common::FULL_ARGS);
    args.push(ctx.to_str().expect("utf8"));
    let out = ok(build(&h, ns, &args));
    assert!(
        out.stderr
            .contains(" naming to docker.io/library/full:1 done"),
        "{}",
        out.stderr
    );
    assert_eq!(
        out.exported_manifests(),
        [h.image_digest(ns, "docker.io/library/full:1")]
    );
    common::check_full_image(&h, ns, "docker.io/library/full:1");
}

#[tokio::test]
async fn multi_stage_builds_only_what_the_target_needs() {
    let ns = "multi";
    let h = Harness::with_busybox(ns).await;
    let df = "FROM busybox AS unused\nRUN echo UNUSED-STAGE-RAN\n\
              FROM busybox AS builder\nRUN echo BUILDER-RAN && echo built > /artifact\n\
              FROM busybox AS final\nCOPY --from=builder /artifact /artifact\nRUN echo FINAL-RAN\n\
              FROM final AS after\nRUN echo AFTER-RAN\n";
    let ctx = h.context("multi", &[("Dockerfile", df)]);
    let out = ok(build(
        &h,
        ns,
        &[
            "-t",
            "multi",
            "--target",
            "final",
            ctx.to_str().expect("utf8"),
        ],
    ));
    assert!(out.stderr.contains("BUILDER-RAN"), "{}", out.stderr);
    assert!(out.stderr.contains("FINAL-RAN"), "{}", out.stderr);
    assert!(!out.stderr.contains("UNUSED-STAGE-RAN"), "{}", out.stderr);
    assert!(!out.stderr.contains("AFTER-RAN"), "{}", out.stderr);
    let printed = h.run_image_expecting(
        ns,
        "docker.io/library/multi:latest",
        "multi-run",
        &["cat", "/artifact"],
        "built\n",
    );
    assert_eq!(printed, "built\n");
}

/// `FROM name@sha256:...` of an image the store has under its tag only:
/// the digest is read from the content store (as BuildKit does), nothing
/// is pulled.
#[tokio::test]
async fn a_base_by_digest_is_found_in_the_content_store() {
    let ns = "bydigest";
    let h = Harness::with_busybox(ns).await;
    let digest = h.image_digest(ns, "docker.io/library/busybox:latest");
    let dockerfile = format!("FROM busybox@{digest}\nRUN cat /etc/base-release > /out\n");
    let ctx = h.context("bydigest", &[("Dockerfile", dockerfile.as_str())]);
    h.build(ns, &["-t", "bydigest", ctx.to_str().expect("utf8")])
        .ok();
    let printed = h.run_image_expecting(
        ns,
        "docker.io/library/bydigest:latest",
        "bydigest-run",
        &["cat", "/out"],
        "busybox test base\n",
    );
    assert_eq!(printed, "busybox test base\n");
}

/// A layerless image (`FROM scratch` and metadata) is written as BuildKit's
/// exporter writes it, `"layers": null`, and serves as a base again.
#[tokio::test]
async fn a_layerless_image_has_null_layers_and_is_a_base() {
    let ns = "layerless";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.context("layerless", &[("Dockerfile", "FROM scratch\nLABEL a=b\n")]);
    h.build(ns, &["-t", "layerless", ctx.to_str().expect("utf8")])
        .ok();
    let manifest = h.manifest(ns, "docker.io/library/layerless:latest");
    assert_eq!(
        manifest.get("layers"),
        Some(&serde_json::Value::Null),
        "{manifest}"
    );
    let on = h.context(
        "onlayerless",
        &[("Dockerfile", "FROM layerless\nLABEL c=d\n")],
    );
    h.build(ns, &["-t", "onlayerless", on.to_str().expect("utf8")])
        .ok();
    let config = image_config(&h, ns, "docker.io/library/onlayerless:latest");
    assert_eq!(
        config["config"]["Labels"],
        serde_json::json!({"a": "b", "c": "d"})
    );
    let manifest = h.manifest(ns, "docker.io/library/onlayerless:latest");
    assert_eq!(
        manifest.get("layers"),
        Some(&serde_json::Value::Null),
        "{manifest}"
    );
}

#[tokio::test]
async fn a_deleted_base_file_is_absent() {
    let ns = "whiteout";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.context(
        "wh",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN rm /etc/base-release && rm -r /home/app\n",
        )],
    );
    h.build(ns, &["-t", "wh", ctx.to_str().expect("utf8")]).ok();
    let printed = h.run_image(
        ns,
        "docker.io/library/wh:latest",
        "wh-run",
        &[
            "sh",
            "-c",
            "ls /etc/base-release /home/app 2>&1; echo; ls /etc",
        ],
    );
    assert!(printed.contains("No such file or directory"), "{printed}");
    assert!(!printed.contains("base-release\n"), "{printed}");
    assert!(printed.contains("passwd"), "{printed}");
}

#[tokio::test]
async fn a_failing_run_names_the_line_and_leaves_nothing() {
    let ns = "failing";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.context(
        "fail",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo before\nRUN echo about to fail; exit 3\n",
        )],
    );
    let out = build(&h, ns, &["-t", "fail", ctx.to_str().expect("utf8")]);
    assert!(!out.success);
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(last.contains("Dockerfile:3"), "{}", out.stderr);
    assert!(last.contains("echo about to fail; exit 3"), "{last}");
    assert!(last.contains("exit code: 3"), "{last}");
    assert_eq!(h.leftovers(ns).expect("ctr"), Vec::<String>::new());
    assert!(!h
        .ctr(ns, &["images", "ls", "-q"])
        .expect("ctr")
        .contains("fail"));
}

/// The entries of the newest layer of `image`.
fn top_layer_entries(h: &Harness, ns: &str, image: &str) -> Vec<String> {
    top_layer(h, ns, image)
        .into_iter()
        .map(|(p, _)| p)
        .collect()
}

/// The entries of the newest layer of `image`, each with the keys of its
/// PAX records.
fn top_layer(h: &Harness, ns: &str, image: &str) -> Vec<(String, Vec<String>)> {
    let images = h.ctr(ns, &["images", "ls"]).expect("ctr");
    let line = images
        .lines()
        .find(|l| l.starts_with(image))
        .expect("listed");
    let digest = line.split_whitespace().nth(2).expect("digest").to_string();
    let manifest: serde_json::Value =
        serde_json::from_str(&h.ctr(ns, &["content", "get", &digest]).expect("manifest"))
            .expect("json");
    let layer = manifest["layers"]
        .as_array()
        .and_then(|l| l.last())
        .and_then(|l| l["digest"].as_str())
        .expect("a layer")
        .to_string();
    let out = std::process::Command::new("ctr")
        .args([
            "--address",
            h.socket().to_str().expect("utf8"),
            "--namespace",
            ns,
            "content",
            "get",
            &layer,
        ])
        .output()
        .expect("ctr content get");
    let mut a = tar::Archive::new(flate2::read::MultiGzDecoder::new(&out.stdout[..]));
    a.entries()
        .expect("tar")
        .map(|e| {
            let mut e = e.expect("entry");
            let keys = e
                .pax_extensions()
                .expect("pax")
                .into_iter()
                .flatten()
                .map(|r| r.expect("record").key().expect("utf8 key").to_string())
                .collect();
            (e.path().expect("path").display().to_string(), keys)
        })
        .collect()
}

/// Of a file's extended attributes, only its capability goes into a
/// layer, as with containerd's archive writer that BuildKit uses: a
/// context file's `user.*` attribute stays out.
#[tokio::test]
async fn layers_carry_no_user_xattrs() {
    let ns = "xattrs";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.context(
        "xattrs",
        &[("Dockerfile", "FROM busybox\nCOPY f /f\n"), ("f", "f\n")],
    );
    xattr::set(ctx.join("f"), "user.kiln", b"1").expect("set a user xattr");
    ok(build(
        &h,
        ns,
        &["-t", "xattrs", ctx.to_str().expect("utf8")],
    ));
    let layer = top_layer(&h, ns, "docker.io/library/xattrs:latest");
    let f = layer
        .iter()
        .find(|(p, _)| p == "f")
        .expect("f in the layer");
    assert!(
        !f.1.iter().any(|k| k.starts_with("SCHILY.xattr.")),
        "{layer:?}"
    );
}

#[tokio::test]
async fn layers_hold_no_stubs_and_copies_are_reproducible() {
    let ns = "stubs";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.context(
        "stubs",
        &[
            (
                "Dockerfile",
                "FROM busybox\nCOPY data /data\nRUN echo x > /made-by-run\n",
            ),
            ("data/a.txt", "a\n"),
            ("data/sub/b.txt", "b\n"),
        ],
    );
    ok(build(
        &h,
        ns,
        &["-t", "stubs:1", ctx.to_str().expect("utf8")],
    ));
    let entries = top_layer_entries(&h, ns, "docker.io/library/stubs:1");
    // No stubs of the files a step's mounts cover (/etc/hosts, resolv.conf);
    // the mount points runc made because the base lacks them stay, empty,
    // as in BuildKit's RUN layers.
    assert_eq!(
        entries,
        vec!["dev/", "made-by-run", "proc/", "sys/"],
        "RUN layer entries"
    );
    ok(build(
        &h,
        ns,
        &["-t", "stubs:2", "--no-cache", ctx.to_str().expect("utf8")],
    ));
    let d1 = image_config(&h, ns, "docker.io/library/stubs:1")["rootfs"]["diff_ids"].clone();
    let d2 = image_config(&h, ns, "docker.io/library/stubs:2")["rootfs"]["diff_ids"].clone();
    // base, COPY equal; the RUN layer differs only by file times.
    assert_eq!(d1[0], d2[0]);
    assert_eq!(d1[1], d2[1], "COPY diffIDs differ");
}

#[tokio::test]
async fn two_builds_at_once_both_succeed() {
    let ns = "concurrent";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.context(
        "conc",
        &[
            (
                "Dockerfile",
                "FROM busybox\nCOPY f /f\nRUN sleep 1 && cat /f > /g\n",
            ),
            ("f", "same\n"),
        ],
    );
    let c = ctx.to_str().expect("utf8").to_string();
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| build(&h, ns, &["-t", "conc:a", &c]));
        let b = s.spawn(|| build(&h, ns, &["-t", "conc:b", &c]));
        (a.join().expect("thread"), b.join().expect("thread"))
    });
    ok(a);
    ok(b);
    for tag in ["a", "b"] {
        let printed = h.run_image_expecting(
            ns,
            &format!("docker.io/library/conc:{tag}"),
            &format!("conc-{tag}"),
            &["cat", "/g"],
            "same\n",
        );
        assert_eq!(printed, "same\n");
    }
    assert!(h.leftovers(ns).expect("ctr").is_empty());
}

#[tokio::test]
async fn bad_input_gives_one_line_and_leaves_nothing() {
    let ns = "bad";
    let h = Harness::with_busybox(ns).await;
    let cases: Vec<(&str, &str, &str)> = vec![
        ("empty", "", "Dockerfile"),
        (
            "unknown",
            "FROM busybox\nFOO bar\n",
            "Dockerfile:2: dockerfile parse error on line 2: unknown instruction: FOO",
        ),
        (
            "missing-src",
            "FROM busybox\nCOPY nothere.txt /x\n",
            "nothere.txt",
        ),
        // A missing base is pulled; nothing listens on loopback port 1,
        // so the pull fails (tests never reach beyond loopback).
        (
            "missing-base",
            "FROM 127.0.0.1:1/nosuchimage:1\n",
            "cannot pull 127.0.0.1:1/nosuchimage:1: 127.0.0.1:1: ",
        ),
    ];
    for (name, df, needle) in cases {
        let ctx = h.context(name, &[("Dockerfile", df)]);
        let out = build(&h, ns, &["-t", name, ctx.to_str().expect("utf8")]);
        assert!(!out.success, "{name} succeeded");
        let errors: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| kiln_integration::is_error_line(l))
            .collect();
        assert_eq!(errors.len(), 1, "{name}: {}", out.stderr);
        assert!(errors[0].contains(needle), "{name}: {}", errors[0]);
        assert_eq!(
            h.leftovers(ns).expect("ctr"),
            Vec::<String>::new(),
            "{name}"
        );
    }
    // An unreachable containerd.
    let ctx = h.context("unreachable", &[("Dockerfile", "FROM busybox\n")]);
    let out = std::process::Command::new(kiln_integration::kiln_binary().expect("kiln"))
        .args([
            "--containerd-address",
            "/tmp/kiln-no-such.sock",
            "build",
            ctx.to_str().expect("utf8"),
        ])
        .output()
        .expect("kiln runs");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("/tmp/kiln-no-such.sock"), "{stderr}");
}

#[tokio::test]
async fn ctrl_c_kills_the_step_and_leaves_nothing() {
    let ns = "interrupt";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.context(
        "int",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo STEP-STARTED && sleep 60\n",
        )],
    );
    let RunningKiln {
        mut child,
        rest: lines,
    } = h.kiln_until(
        ns,
        &[
            "build",
            "--progress",
            "plain",
            "-t",
            "int",
            ctx.to_str().expect("utf8"),
        ],
        "STEP-STARTED",
    );
    let started = std::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("signal");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().expect("kiln exits");
    assert!(!status.success());
    // The 60 s sleep was killed, not waited for (a generous bound that
    // still tells "killed" from "ran to the end").
    assert!(started.elapsed() < std::time::Duration::from_secs(45));
    assert!(rest.iter().any(|l| l.contains("cancelled")), "{rest:#?}");
    assert_eq!(h.leftovers(ns).expect("ctr"), Vec::<String>::new());
}

#[tokio::test]
async fn zstd_and_uncompressed_layers_export_and_run() {
    let ns = "compress";
    let h = Harness::with_busybox(ns).await;
    for (compression, media) in [
        ("zstd", "application/vnd.oci.image.layer.v1.tar+zstd"),
        ("uncompressed", "application/vnd.oci.image.layer.v1.tar"),
    ] {
        // A layer of its own per compression: a layer with a blob already
        // keeps it, in whatever compression.
        let content = format!("compressed {compression}\n");
        let ctx = h.context(
            compression,
            &[("Dockerfile", "FROM busybox\nCOPY f /f\n"), ("f", &content)],
        );
        let name = format!("docker.io/library/c:{compression}");
        let out = format!("type=image,name={name},compression={compression}");
        h.build(ns, &["-o", &out, ctx.to_str().expect("utf8")]).ok();
        let images = h.ctr(ns, &["images", "ls"]).expect("ctr");
        let line = images
            .lines()
            .find(|l| l.starts_with(&name))
            .expect("listed");
        let digest = line.split_whitespace().nth(2).expect("digest");
        let manifest: serde_json::Value =
            serde_json::from_str(&h.ctr(ns, &["content", "get", digest]).expect("manifest"))
                .expect("json");
        assert_eq!(manifest["layers"][1]["mediaType"], media);
        // As BuildKit's exporter without force-compression: the base
        // layer keeps its own blob (gzip); with it, it is converted.
        let base = h.manifest(ns, "docker.io/library/busybox:latest");
        assert_eq!(manifest["layers"][0], base["layers"][0]);
        let forced = format!("{name}-forced");
        h.build(
            ns,
            &[
                "-o",
                &format!(
                    "type=image,name={forced},compression={compression},force-compression=true"
                ),
                ctx.to_str().expect("utf8"),
            ],
        )
        .ok();
        let m = h.manifest(ns, &forced);
        assert_eq!(m["layers"][0]["mediaType"], media);
        assert_eq!(m["layers"][1], manifest["layers"][1]);
        let printed = h.run_image_expecting(
            ns,
            &forced,
            &format!("c-forced-{compression}"),
            &["cat", "/f"],
            &content,
        );
        assert_eq!(printed, content);
        let printed = h.run_image_expecting(
            ns,
            &name,
            &format!("c-{compression}"),
            &["cat", "/f"],
            &content,
        );
        assert_eq!(printed, content);
    }
}

/// The entries of the newest layer of `image`, directories without
/// their `/`.
fn top_layer_names(h: &Harness, ns: &str, image: &str) -> Vec<String> {
    top_layer_entries(h, ns, image)
        .into_iter()
        .map(|p| p.trim_end_matches('/').to_string())
        .collect()
}

/// `--shm-size` is a tmpfs mount of the step's own on /dev/shm, as in
/// BuildKit: its mount point is removed after the run like any step
/// mount's, so a /dev the run created is not in the layer (the standard
/// mounts' points, /proc and /sys, stay, as in BuildKit's).
#[tokio::test]
async fn a_shm_size_mount_leaves_no_dev_in_the_layer() {
    let ns = "shm-layer";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.context(
        "shm-layer",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN df -k /dev/shm | tail -n 1 > /s\n",
        )],
    );
    let c = ctx.to_str().expect("utf8");
    h.build(ns, &["-t", "shm:sized", "--shm-size", "67108864", c])
        .ok();
    let sized = top_layer_names(&h, ns, "docker.io/library/shm:sized");
    assert!(
        sized.contains(&"s".to_string()) && sized.contains(&"proc".to_string()),
        "{sized:?}"
    );
    assert!(!sized.contains(&"dev".to_string()), "{sized:?}");
    h.build(ns, &["-t", "shm:plain", "--no-cache", c]).ok();
    let plain = top_layer_names(&h, ns, "docker.io/library/shm:plain");
    assert!(plain.contains(&"dev".to_string()), "{plain:?}");
}

/// A `RUN --mount=type=tmpfs` is mounted as BuildKit mounts it: `nosuid`
/// and its size, nothing else (no `nodev`, no `noexec`).
#[tokio::test]
async fn a_tmpfs_mount_has_buildkits_options() {
    let ns = "tmpfs-opts";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.context(
        "tmpfs-opts",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=tmpfs,target=/t,size=1m \
             o=\"$(grep ' /t ' /proc/mounts | cut -d' ' -f4)\" && echo \"opts=$o\" \
             && case \",$o,\" in *,nosuid,*size=1024k*) ;; *) exit 3;; esac \
             && case \",$o,\" in *,nodev,*|*,noexec,*) exit 4;; esac \
             && echo tmpfs-$((1+1))-ok\n",
        )],
    );
    let out = h.build(ns, &["--no-cache", ctx.to_str().expect("utf8")]);
    assert!(out.success, "{}", out.stderr);
    assert!(out.stderr.contains("tmpfs-2-ok"), "{}", out.stderr);
}
