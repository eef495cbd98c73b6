//! The `kiln` binary as a buildx user meets it, against a private
//! containerd (and a kilnd for `--addr`): each buildx flag works, or fails
//! naming itself as not supported yet with exit code 1 before any step
//! runs; results (`-q`, `--iidfile`, `--metadata-file`), contexts from
//! stdin and tar files, the root check, `du`/`prune`/`inspect`, and the
//! basics (version, completion, man pages, a closed pipe).

use kiln_integration::{Harness, KilnOutput};
use std::io::Write;
use std::process::{Command, Stdio};

/// A Dockerfile whose only step prints a marker no flag or error text
/// contains, so "no step ran" is checkable.
const MARKER_DOCKERFILE: &str = "FROM busybox\nRUN echo step-$((40+2))-ran\n";
const MARKER: &str = "step-42-ran";

/// Runs `kiln ARGS` with `stdin` fed in; the exit code too.
fn kiln_stdin<S: AsRef<std::ffi::OsStr>>(
    h: &Harness,
    ns: &str,
    args: &[S],
    stdin: &[u8],
) -> (i32, KilnOutput) {
    let mut child = h
        .kiln_command(ns)
        .expect("kiln")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln starts");
    let mut input = child.stdin.take().expect("piped");
    input.write_all(stdin).expect("feed stdin");
    drop(input);
    let out = child.wait_with_output().expect("kiln ends");
    (
        out.status.code().unwrap_or(-1),
        KilnOutput {
            success: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        },
    )
}

fn kiln_code<S: AsRef<std::ffi::OsStr>>(h: &Harness, ns: &str, args: &[S]) -> (i32, KilnOutput) {
    kiln_stdin(h, ns, args, b"")
}

#[tokio::test]
async fn flags_and_output_options_not_built_yet_fail_before_any_step() {
    let ns = "cli-refuse";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ctx = h.context("refuse", &[("Dockerfile", MARKER_DOCKERFILE)]);
    let ctx = ctx.to_str().expect("utf8");
    let addr = k.addr();
    let refused: &[(&[&str], &str)] = &[
        (
            &["--annotation", "layer:a=b"],
            "unknown annotation type \"layer\"",
        ),
        (
            &["--call", "describe"],
            "--call=describe is not supported yet",
        ),
        (&["--sbom", "true"], "--sbom=true is not supported yet"),
        (
            &["--provenance", "mode=max"],
            "--provenance=mode=max is not supported yet",
        ),
        (
            &["--attest", "type=sbom"],
            "--attest type=sbom is not supported yet",
        ),
        (
            &["--cgroup-parent", "kiln"],
            "--cgroup-parent is not supported yet",
        ),
        (
            &["-o", "type=image,prefer-nondist-layers=true"],
            "output option prefer-nondist-layers is not supported yet",
        ),
        (
            &["-o", "type=image,compression-level=-2"],
            "compression-level=-2 (Huffman-only gzip) is not supported yet",
        ),
        (
            &[
                "-t",
                "x:1",
                "-o",
                "type=image,unpack=true,rewrite-timestamp=true",
            ],
            "exporter option \"rewrite-timestamp\" conflicts with \"unpack\"",
        ),
        (
            &["-o", "type=image,oci-mediatypes=false,compression=zstd"],
            "exporter option \"compression=zstd\" conflicts with \"oci-mediatypes=false\"",
        ),
        (
            &[
                "-o",
                "type=image,annotation-layer.org.opencontainers.image.title=x",
            ],
            "unrecognized annotation type layer",
        ),
        (
            &["-o", "type=local,dest=o,rewrite-timestamp=true"],
            "output option rewrite-timestamp is not supported yet (kiln always uses",
        ),
        (
            &["-o", "type=local,dest=o,attestation-prefix=p"],
            "output option attestation-prefix is not supported yet",
        ),
        (
            &["github.com/example/repo"],
            "the github.com/… short form is not supported yet",
        ),
    ];
    for (flags, want) in refused {
        for remote in [false, true] {
            let mut args = Vec::new();
            if remote {
                args.extend(["--addr", addr.as_str()]);
            }
            args.extend(["build", "--progress", "plain"]);
            args.extend_from_slice(flags);
            // A URL is the context itself.
            if !flags[0].contains("://") && !flags[0].starts_with("github.com/") {
                args.push(ctx);
            }
            let (code, out) = kiln_code(&h, ns, &args);
            assert_eq!(code, 1, "{args:?}: {}", out.stderr);
            assert!(out.stderr.contains(want), "{args:?}: {}", out.stderr);
            assert!(!out.stderr.contains(MARKER), "{args:?} ran a step");
        }
    }
    // Embedded, only a daemon writes files out.
    let (code, out) = kiln_code(&h, ns, &["build", "-o", "type=local,dest=o", ctx]);
    assert_eq!(code, 1);
    assert!(
        out.stderr
            .contains("output type=local is not supported yet without a daemon"),
        "{}",
        out.stderr
    );
    // Embedded, only kilnd names images other than by `-t`/`name`
    // (imagenames.rs proves them through kilnd).
    for o in [
        "type=image,store=false",
        "type=image,name-canonical=true",
        "type=image,dangling-name-prefix=<none>",
    ] {
        let (code, out) = kiln_code(&h, ns, &["build", "--progress", "plain", "-o", o, ctx]);
        assert_eq!(code, 1, "{o}: {}", out.stderr);
        assert!(
            out.stderr.contains("is not supported yet without a daemon"),
            "{o}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains(MARKER), "{o} ran a step");
    }
    // Accepted spellings of "nothing to add" build as usual.
    let (code, out) = kiln_code(
        &h,
        ns,
        &[
            "build",
            "--progress",
            "plain",
            "--sbom",
            "false",
            "--provenance",
            "false",
            "--call",
            "build",
            "--network",
            "default",
            "--load",
            "-o",
            "type=image,oci-mediatypes=true,unpack=true,force-compression=false",
            ctx,
        ],
    );
    assert_eq!(code, 0, "{}", out.stderr);
    assert!(out.stderr.contains(MARKER), "{}", out.stderr);
    assert!(h.leftovers(ns).expect("leftovers").is_empty());
}

fn json_file(p: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).expect("read")).expect("json")
}

/// docker build's legacy flags (`docker build --rm --squash -t x .`)
/// build, each warned about by name, as buildx builds with them.
#[tokio::test]
async fn docker_builds_legacy_flags_build_with_a_warning() {
    let ns = "cli-legacy";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.context(
        "legacy",
        &[("Dockerfile", "FROM busybox\nRUN echo built > /b\n")],
    );
    let args = [
        "build",
        "--rm",
        "--force-rm=false",
        "--squash",
        "--security-opt",
        "seccomp=unconfined",
        "-t",
        "legacy:1",
        ctx.to_str().expect("utf8"),
    ];
    let (code, out) = kiln_code(&h, ns, &args);
    assert_eq!(code, 0, "{}", out.stderr);
    for want in [
        "WARNING: --rm and --force-rm have no effect",
        "WARNING: experimental flag squash is removed with BuildKit.",
        "WARNING: security-opt flag is deprecated.",
    ] {
        assert!(out.stderr.contains(want), "{want}: {}", out.stderr);
    }
    assert_eq!(
        h.run_image(
            ns,
            "docker.io/library/legacy:1",
            "legacy-run",
            &["cat", "/b"]
        ),
        "built\n"
    );
}

/// buildx's `--network none` (frontend attribute `force-network-mode`):
/// RUN steps without their own `--network` see only loopback, embedded
/// and through kilnd; a step's own `--network` still wins.
#[tokio::test]
async fn network_none_takes_the_steps_off_the_network() {
    let ns = "cli-netnone";
    let h = Harness::with_busybox(ns).await;
    // The step with its own --network=host needs the entitlement.
    let k = h
        .start_kilnd_with(ns, &["--allow-insecure-entitlement", "network.host"])
        .await
        .expect("kilnd starts");
    let addr = k.addr();
    let df = "FROM busybox\n\
              RUN echo ifaces=$(ls /sys/class/net | tr '\\n' ' ')\n\
              RUN --network=host echo host-ifaces=$(ls /sys/class/net | wc -l)\n";
    let ctx = h.context("netnone", &[("Dockerfile", df)]);
    let ctx = ctx.to_str().expect("utf8");
    for remote in [false, true] {
        let mut args = Vec::new();
        if remote {
            args.extend(["--addr", addr.as_str()]);
        }
        args.extend([
            "build",
            "--progress",
            "plain",
            "--no-cache",
            "--allow",
            "network.host",
            "--network",
            "none",
            ctx,
        ]);
        let (code, out) = kiln_code(&h, ns, &args);
        assert_eq!(code, 0, "{args:?}: {}", out.stderr);
        assert!(
            kiln_integration::step_printed(&out.stderr, "ifaces=lo"),
            "{args:?}: {}",
            out.stderr
        );
        assert!(
            !kiln_integration::step_printed(&out.stderr, "host-ifaces=1"),
            "the step's own --network=host: {}",
            out.stderr
        );
    }
    let (code, out) = kiln_code(&h, ns, &["build", "--network", "bridge", ctx]);
    assert_eq!(code, 1);
    assert!(
        out.stderr
            .contains("network mode \"bridge\" not supported by kiln"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn stdout_stays_clean_and_the_names_are_items_of_the_export_step() {
    let ns = "cli-stdout";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ctx = h.context("stdout", &[("Dockerfile", MARKER_DOCKERFILE)]);
    let ctx = ctx.to_str().expect("utf8");
    let addr = k.addr();
    for (remote, name) in [(false, "cli-stdout:embedded"), (true, "cli-stdout:remote")] {
        let mut args = Vec::new();
        if remote {
            args.extend(["--addr", addr.as_str()]);
        }
        args.extend(["build", "--progress", "plain", "-t", name, ctx]);
        let (code, out) = kiln_code(&h, ns, &args);
        assert_eq!(code, 0, "{}", out.stderr);
        // buildx prints nothing on stdout without -q.
        assert_eq!(out.stdout, "", "remote={remote}");
        let full = format!("docker.io/library/{name}");
        let digest = h.image_digest(ns, &full);
        let manifest = h.manifest(ns, &full);
        let config = manifest["config"]["digest"].as_str().expect("config");
        // The export step's items, in BuildKit's order, all in the step.
        let step = out
            .stderr
            .lines()
            .find_map(|l| l.strip_suffix(" exporting to image"))
            .unwrap_or_else(|| panic!("no export step in\n{}", out.stderr));
        let items: Vec<&str> = out
            .stderr
            .lines()
            .filter_map(|l| l.strip_prefix(step))
            .filter_map(|l| l.strip_prefix(' '))
            .filter(|l| !l.starts_with("exporting layers"))
            .collect();
        let expected = [
            "exporting to image".to_string(),
            format!("exporting manifest {digest} done"),
            format!("exporting config {config} done"),
            format!("naming to {full} done"),
        ];
        assert!(
            items.len() == 5 && items[..4] == expected && items[4].starts_with("DONE "),
            "remote={remote}\n{}",
            out.stderr
        );
    }
}

#[tokio::test]
async fn quiet_iidfile_and_metadata_file_say_what_was_built() {
    let ns = "cli-results";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    // `as` in lower case: a build check warning, which -q does not print.
    let ctx = h.context(
        "results",
        &[(
            "Dockerfile",
            "FROM busybox as base\nRUN echo results > /r\n",
        )],
    );
    let ctx = ctx.to_str().expect("utf8");
    let dir = tempfile::tempdir().expect("dir");
    let addr = k.addr();
    for (remote, name) in [
        (false, "cli-results:embedded"),
        (true, "cli-results:remote"),
    ] {
        let iid = dir.path().join(format!("{remote}.iid"));
        let md = dir.path().join(format!("{remote}.json"));
        let mut args = Vec::new();
        if remote {
            args.extend(["--addr", addr.as_str()]);
        }
        let (iid_s, md_s) = (iid.to_str().expect("utf8"), md.to_str().expect("utf8"));
        args.extend([
            "build",
            "-q",
            "-t",
            name,
            "--iidfile",
            iid_s,
            "--metadata-file",
            md_s,
            ctx,
        ]);
        let (code, out) = kiln_code(&h, ns, &args);
        assert_eq!(code, 0, "{}", out.stderr);
        // -q: the image ID alone, no progress and no warnings.
        assert!(out.stderr.is_empty(), "quiet wrote: {}", out.stderr);
        let full = format!("docker.io/library/{name}");
        let manifest = h.manifest(ns, &full);
        let config = manifest["config"]["digest"].as_str().expect("config");
        assert_eq!(out.stdout, format!("{config}\n"));
        assert_eq!(std::fs::read_to_string(&iid).expect("iid"), config);
        let md = json_file(&md);
        let digest = h.image_digest(ns, &full);
        assert_eq!(md["containerimage.digest"], digest.as_str());
        assert_eq!(md["containerimage.config.digest"], config);
        assert_eq!(md["containerimage.descriptor"]["digest"], digest.as_str());
        assert_eq!(
            md["containerimage.descriptor"]["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert!(
            md["containerimage.descriptor"]["size"]
                .as_u64()
                .unwrap_or(0)
                > 0
        );
        assert_eq!(md["image.name"], full.as_str());
        if remote {
            let r = md["buildx.build.ref"].as_str().expect("build ref");
            assert!(r.starts_with(&format!("kiln/{addr}/")), "{r}");
        }

        // kiln inspect shows the same image.
        let (code, out) = kiln_code(&h, ns, &["inspect", name]);
        assert_eq!(code, 0, "{}", out.stderr);
        let doc: serde_json::Value = serde_json::from_str(&out.stdout).expect("inspect json");
        assert_eq!(doc["id"], config);
        assert_eq!(doc["digest"], digest.as_str());
        let layers = doc["layers"].as_array().expect("layers");
        assert_eq!(layers.len(), 2, "busybox and the RUN");
        let sum: u64 = layers.iter().filter_map(|l| l["size"].as_u64()).sum();
        assert_eq!(doc["size"], sum);
    }
    let out = h.build(ns, &["-t", "cli-results:loud", ctx]);
    assert!(out.stderr.contains("FromAsCasing"), "{}", out.stderr);

    // kiln images lists both, with docker's short IDs.
    let (code, out) = kiln_code(&h, ns, &["images"]);
    assert_eq!(code, 0, "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["NAME", "IMAGE", "ID", "CREATED", "SIZE"]
    );
    for tag in ["embedded", "remote"] {
        let name = format!("docker.io/library/cli-results:{tag}");
        let config = h.manifest(ns, &name)["config"]["digest"]
            .as_str()
            .expect("config")
            .to_string();
        let line = lines
            .iter()
            .find(|l| l.split_whitespace().next() == Some(name.as_str()))
            .unwrap_or_else(|| panic!("{name} not in\n{}", out.stdout));
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(cols[1], &config["sha256:".len()..][..12]);
        assert!(line.contains(" ago "), "{line}");
        assert!(cols.last().expect("size").ends_with('B'), "{line}");
    }
    let (code, out) = kiln_code(&h, ns, &["inspect", "cli-results:none"]);
    assert_eq!(code, 1);
    assert!(
        out.stderr
            .contains("image docker.io/library/cli-results:none not found in containerd namespace \"cli-results\""),
        "{}",
        out.stderr
    );
}

fn gz_tar(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, body) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, body.as_bytes()).expect("tar");
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&b.into_inner().expect("tar")).expect("gzip");
    gz.finish().expect("gzip")
}

#[tokio::test]
async fn contexts_come_from_stdin_and_tar_files() {
    let ns = "cli-contexts";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let addr = k.addr();
    let copy_df = "FROM busybox\nCOPY a.txt /a.txt\nRUN cat /a.txt\n";
    let dir = h.context("ctx-dir", &[("a.txt", "from-the-dir-ctx\n")]);
    let dir = dir.to_str().expect("utf8");
    let tarball = gz_tar(&[("Dockerfile", copy_df), ("a.txt", "from-the-tar-ctx\n")]);
    let tar_file = h.state_dir().join("ctx.tar.gz");
    std::fs::write(&tar_file, &tarball).expect("write tar");
    let tar_file = tar_file.to_str().expect("utf8");
    for remote in [false, true] {
        let base: Vec<&str> = if remote {
            vec![
                "--addr",
                addr.as_str(),
                "build",
                "--progress",
                "plain",
                "--no-cache",
            ]
        } else {
            vec!["build", "--progress", "plain", "--no-cache"]
        };
        let with = |rest: &[&str]| -> Vec<String> {
            base.iter().chain(rest).map(|s| s.to_string()).collect()
        };
        // -f -: the Dockerfile from stdin, the context a directory.
        let (code, out) = kiln_stdin(&h, ns, &with(&["-f", "-", dir]), copy_df.as_bytes());
        assert_eq!(code, 0, "-f - ({remote}): {}", out.stderr);
        assert!(out.stderr.contains("from-the-dir-ctx"), "{}", out.stderr);
        // -: a gzipped tar on stdin is the context.
        let (code, out) = kiln_stdin(&h, ns, &with(&["-"]), &tarball);
        assert_eq!(code, 0, "- tar ({remote}): {}", out.stderr);
        assert!(out.stderr.contains("from-the-tar-ctx"), "{}", out.stderr);
        // -: a Dockerfile on stdin builds with an empty context.
        let (code, out) = kiln_stdin(&h, ns, &with(&["-"]), MARKER_DOCKERFILE.as_bytes());
        assert_eq!(code, 0, "- Dockerfile ({remote}): {}", out.stderr);
        assert!(out.stderr.contains(MARKER), "{}", out.stderr);
        let (code, out) = kiln_stdin(&h, ns, &with(&["-"]), b"FROM busybox\nCOPY a.txt /a.txt\n");
        assert_eq!(code, 1, "an empty context has no a.txt: {}", out.stderr);
        // A local .tar.gz file.
        let (code, out) = kiln_code(&h, ns, &with(&[tar_file]));
        assert_eq!(code, 0, "tar file ({remote}): {}", out.stderr);
        assert!(out.stderr.contains("from-the-tar-ctx"), "{}", out.stderr);
    }
    let (code, out) = kiln_stdin(&h, ns, &["build", "-f", "-", "-"], b"");
    assert_eq!(code, 1);
    assert!(
        out.stderr
            .contains("can't use stdin for both build context and dockerfile"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn preconditions_are_said_in_plain_language() {
    let ns = "cli-pre";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.context("pre", &[("Dockerfile", MARKER_DOCKERFILE)]);
    let ctx = ctx.to_str().expect("utf8");

    // Not root: said before anything else (the context is not even read).
    let kiln = kiln_integration::kiln_binary().expect("kiln");
    for args in [
        vec!["build", "/nonexistent-context"],
        vec!["du"],
        vec!["prune", "-f"],
    ] {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&kiln)
            .args(&args)
            .output()
            .expect("setpriv runs");
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr),
            "error: kiln must run as root (or use kilnd via --addr)\n",
            "{args:?}"
        );
    }

    // No -t and no -o: buildx's warning; with -t none.
    let out = h.build(ns, &[ctx]);
    assert!(out.success, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "WARNING: No output specified. Build result will only remain in the build cache."
        ),
        "{}",
        out.stderr
    );
    let out = h.build(ns, &["-t", "cli-pre:1", ctx]);
    assert!(out.success, "{}", out.stderr);
    assert!(
        !out.stderr.contains("No output specified"),
        "{}",
        out.stderr
    );
    // buildx's `-o type=cacheonly`: no warning, and `-t` names nothing.
    let out = h.build(
        ns,
        &["-t", "cli-pre:cacheonly", "-o", "type=cacheonly", ctx],
    );
    assert!(out.success, "{}", out.stderr);
    assert!(
        !out.stderr.contains("No output specified"),
        "{}",
        out.stderr
    );
    let images = h.ctr(ns, &["images", "ls", "-q"]).expect("ctr");
    assert!(images.contains("cli-pre:1"), "{images}");
    assert!(!images.contains("cli-pre:cacheonly"), "{images}");

    // A base image neither in the store nor pullable (a registry on a
    // loopback port nothing listens on): what to run.
    let missing = h.context(
        "missing",
        &[("Dockerfile", "FROM 127.0.0.1:1/nothing:1\nRUN true\n")],
    );
    let (code, out) = kiln_code(&h, ns, &["build", missing.to_str().expect("utf8")]);
    assert_eq!(code, 1, "{}", out.stderr);
    assert!(
        out.stderr.contains(
            "base image 127.0.0.1:1/nothing:1 is not in containerd namespace \"cli-pre\" and could not be pulled; pull it (`ctr -n cli-pre images pull 127.0.0.1:1/nothing:1`)"
        ),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn du_and_prune_look_like_buildx_embedded_and_through_kilnd() {
    let ns = "cli-du";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let addr = k.addr();
    let ctx = h.context("du", &[("Dockerfile", "FROM busybox\nRUN echo du > /du\n")]);
    let ctx = ctx.to_str().expect("utf8");
    // buildx's layout: docker's table formatter (three spaces, columns at
    // least ten wide), the summary and prune's total aligned with tabs.
    let header = "ID        RECLAIMABLE   SIZE      LAST ACCESSED";
    for remote in [false, true] {
        let pre: Vec<&str> = if remote {
            vec!["--addr", addr.as_str()]
        } else {
            vec![]
        };
        let with = |rest: &[&str]| -> Vec<String> {
            pre.iter().chain(rest).map(|s| s.to_string()).collect()
        };
        let (code, out) = kiln_code(&h, ns, &with(&["build", "-t", "cli-du:1", ctx]));
        assert_eq!(code, 0, "{}", out.stderr);
        let (code, out) = kiln_code(&h, ns, &with(&["du"]));
        assert_eq!(code, 0, "{}", out.stderr);
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert!(
            lines[0].starts_with("ID ") && lines[0].contains(" RECLAIMABLE "),
            "{}",
            out.stdout
        );
        assert!(lines.len() > 2, "a record after the build: {}", out.stdout);
        assert!(
            lines.iter().any(|l| l.starts_with("Reclaimable:")),
            "{}",
            out.stdout
        );
        // The RUN's record is in the image cli-du:1: shared, marked `*`.
        assert!(
            lines.iter().any(|l| l.starts_with("Shared:"))
                && lines.iter().any(|l| l.starts_with("Private:"))
                && lines.iter().any(|l| l.contains("B*")),
            "{}",
            out.stdout
        );
        let total = lines.last().expect("total");
        assert!(
            total.starts_with("Total:") && total.ends_with('B'),
            "{}",
            out.stdout
        );
        assert!(lines[1].contains(" ago"), "{}", out.stdout);

        // --filter until=... keeps what was used since; -f needs no prompt.
        let (code, out) = kiln_code(&h, ns, &with(&["prune", "-f", "--filter", "until=24h"]));
        assert_eq!(code, 0, "{}", out.stderr);
        assert_eq!(out.stdout, "Total:\t0B\n", "nothing is a day old");
        let (code, out) = kiln_code(&h, ns, &with(&["prune", "-f"]));
        assert_eq!(code, 0, "{}", out.stderr);
        let lines: Vec<&str> = out.stdout.lines().collect();
        assert_eq!(
            lines[0].split_whitespace().collect::<Vec<_>>(),
            ["ID", "RECLAIMABLE", "SIZE", "LAST", "ACCESSED"],
            "{}",
            out.stdout
        );
        assert!(lines.len() > 2, "{}", out.stdout);
        let (code, out) = kiln_code(&h, ns, &with(&["du"]));
        assert_eq!(code, 0);
        assert_eq!(
            out.stdout,
            format!("{header}\nReclaimable:\t0B\nTotal:\t\t0B\n")
        );
    }
    let (code, out) = kiln_code(&h, ns, &["prune", "-f", "--filter", "until=soon"]);
    assert_eq!(code, 1);
    assert!(
        out.stderr
            .contains("\"until\" filter expects a duration (e.g., '24h')"),
        "{}",
        out.stderr
    );

    // A reader that goes away: kiln stops quietly.
    let (code, _) = kiln_code(&h, ns, &["build", "-t", "cli-du:2", ctx]);
    assert_eq!(code, 0);
    let mut child = h
        .kiln_command(ns)
        .expect("kiln")
        .args(["du"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln du");
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("kiln du ends");
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "no panic, no error"
    );
}

/// `kiln du --verbose` without its `Last used:` lines (their "N seconds
/// ago" moves between two runs).
fn du_verbose(h: &Harness, ns: &str, pre: &[&str]) -> String {
    let args: Vec<&str> = pre.iter().copied().chain(["du", "--verbose"]).collect();
    let (code, out) = kiln_code(h, ns, &args);
    assert_eq!(code, 0, "{}", out.stderr);
    out.stdout
        .lines()
        .filter(|l| !l.starts_with("Last used:"))
        .map(|l| format!("{l}\n"))
        .collect()
}

#[tokio::test]
async fn du_through_kilnd_shows_the_embedded_records_with_buildkits_fields() {
    use kiln_proto::control::{control_client::ControlClient, DiskUsageRequest};
    let ns = "cli-du-fields";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let addr = k.addr();
    let ctx = h.context(
        "du-fields",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo a > /a\nRUN echo b > /b\n\
             RUN --mount=type=cache,target=/c echo c > /c/c\n",
        )],
    );
    let ctx = ctx.to_str().expect("utf8");
    // Built embedded, then again through kilnd from the cache.
    let (code, out) = kiln_code(&h, ns, &["build", "-t", "du-fields:1", ctx]);
    assert_eq!(code, 0, "{}", out.stderr);
    let (code, out) = kiln_code(
        &h,
        ns,
        &["--addr", &addr, "build", "-t", "du-fields:2", ctx],
    );
    assert_eq!(code, 0, "{}", out.stderr);

    // The same records either way, with buildx's every field.
    let embedded = du_verbose(&h, ns, &[]);
    assert_eq!(embedded, du_verbose(&h, ns, &["--addr", &addr]));
    for field in [
        "Parents:\n - kiln/cache/",
        "Created at:   20",
        "Mutable:      true",
        "Mutable:      false",
        "Usage count:  2",
        "Type:         exec.cachemount",
        "Type:         regular",
    ] {
        assert!(embedded.contains(field), "{field:?} in\n{embedded}");
    }
    let table = |pre: &[&str]| {
        let args: Vec<&str> = pre.iter().copied().chain(["du"]).collect();
        let (code, out) = kiln_code(&h, ns, &args);
        assert_eq!(code, 0, "{}", out.stderr);
        // ID, RECLAIMABLE, SIZE (LAST ACCESSED moves).
        out.stdout
            .lines()
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
    };
    let rows = table(&[]);
    assert_eq!(rows, table(&["--addr", &addr]));
    // Whole IDs, `*` after the cache mount's, as buildx shows them.
    assert!(
        rows.iter().any(|r| r.starts_with("kiln/cache/mount-")
            && r.split(' ').next().is_some_and(|id| id.ends_with('*'))),
        "{rows:?}"
    );

    // What buildctl and buildx read: BuildKit's UsageRecord fields.
    let ch = containerd_client::connect(&k.socket)
        .await
        .expect("connect to kilnd");
    let records = ControlClient::new(ch)
        .disk_usage(DiskUsageRequest::default())
        .await
        .expect("DiskUsage")
        .into_inner()
        .record;
    assert_eq!(
        records.len(),
        4,
        "three steps and the cache mount: {records:?}"
    );
    let by_description = |d: &str| {
        records
            .iter()
            .find(|r| r.description.ends_with(d))
            .unwrap_or_else(|| panic!("no record {d:?} in {records:?}"))
    };
    let (a, b) = (
        by_description("RUN echo a > /a"),
        by_description("RUN echo b > /b"),
    );
    assert_eq!(b.parents, std::slice::from_ref(&a.id), "b sits on a");
    assert!(a.parents.is_empty(), "a sits on the base image");
    for r in &records {
        assert!(r.id.starts_with("kiln/cache/"), "{r:?}");
        assert!(r.created_at.is_some() && r.last_used_at.is_some(), "{r:?}");
        assert!(!r.in_use && r.size >= 0, "{r:?}");
        let mount = r.record_type == "exec.cachemount";
        assert_eq!(r.mutable, mount, "{r:?}");
        if !mount {
            assert_eq!(r.record_type, "regular");
            assert_eq!(r.usage_count, 2, "built, then a cache hit: {r:?}");
        }
    }
}

#[test]
fn completion_man_pages_and_version() {
    let kiln = kiln_integration::kiln_binary().expect("kiln");
    let run = |args: &[&str]| {
        let out = Command::new(&kiln).args(args).output().expect("kiln runs");
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8(out.stdout).expect("utf8")
    };
    let bash = run(&["completion", "bash"]);
    assert!(
        bash.contains("complete -F") && bash.contains("--metadata-file"),
        "{bash}"
    );
    assert!(run(&["completion", "zsh"]).contains("#compdef kiln"));
    assert!(run(&["completion", "fish"]).contains("complete -c kiln"));
    let dir = tempfile::tempdir().expect("dir");
    run(&["man", dir.path().to_str().expect("utf8")]);
    for page in ["kiln.1", "kiln-build.1", "kiln-du.1", "kiln-prune.1"] {
        let text = std::fs::read_to_string(dir.path().join(page)).expect(page);
        assert!(text.starts_with(".ie") || text.contains(".TH"), "{page}");
    }
    let build = std::fs::read_to_string(dir.path().join("kiln-build.1")).expect("page");
    assert!(build.contains("iidfile"), "{build}");
    // `kiln version` and `--version` print one line.
    let line = run(&["version"]);
    assert_eq!(run(&["--version"]), line);
    assert!(
        line.starts_with(&format!("kiln {}", kiln_engine::VERSION)),
        "{line}"
    );
}
