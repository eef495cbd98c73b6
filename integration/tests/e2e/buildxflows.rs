//! buildx's and buildctl's everyday flows against kilnd, answered as
//! BuildKit answers them (issues 12 and 13): the exporters' response keys
//! a `--metadata-file` is made of (the descriptor with its platform, the
//! archives' creation time and names, no config digest for an index), the
//! `index.json` of an OCI archive, each exporter's vertex with BuildKit's
//! name and items, and `--call=targets` through the gateway.

use crate::common;

use common::remote;
use kiln_integration::{buildctl_like_binary, Harness};

fn json_file(p: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(p).expect("read")).expect("json")
}

/// The lines of the vertex named `name` in plain progress after its name,
/// without their `#N ` prefix.
fn vertex_lines(stderr: &str, name: &str) -> Vec<String> {
    let Some(step) = stderr
        .lines()
        .find_map(|l| l.strip_suffix(name).and_then(|p| p.strip_suffix(' ')))
    else {
        return Vec::new();
    };
    let prefix = format!("{step} ");
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter(|l| *l != name)
        .map(str::to_string)
        .collect()
}

/// An item line without its trailing time (`0.1s done` -> `done`).
fn without_time(l: &str) -> String {
    l.split(' ')
        .filter(|w| !(w.ends_with('s') && w[..w.len() - 1].parse::<f64>().is_ok()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The host's OCI architecture, as the worker builds for it.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => panic!("no OCI name for {other} in this test"),
    }
}

/// Seconds-precision RFC 3339 in UTC, as BuildKit's `time.RFC3339`.
fn is_rfc3339_seconds(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() == 20
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'Z'
}

#[tokio::test]
async fn an_oci_archive_answers_and_shows_what_buildkits_oci_exporter_does() {
    let ns = "buildxflows-oci";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ctx = h.context(
        "oci",
        &[("Dockerfile", "FROM busybox\nRUN echo oci > /o\n")],
    );
    let dir = tempfile::tempdir().expect("dir");
    let tar = dir.path().join("img.tar");
    let md = dir.path().join("md.json");
    let output = format!("type=oci,dest={},name=exp/oci:1", tar.display());
    let out = remote(
        &h,
        &k,
        ns,
        &[
            "-o",
            &output,
            "--metadata-file",
            md.to_str().expect("utf8"),
            ctx.to_str().expect("utf8"),
        ],
    )
    .ok();
    let md = json_file(&md);
    // The name the archive carries is in the response, as BuildKit's.
    assert_eq!(md["image.name"], "docker.io/exp/oci:1", "{md}");
    let desc = &md["containerimage.descriptor"];
    assert_eq!(desc["digest"], md["containerimage.digest"]);
    assert_eq!(
        desc["platform"],
        serde_json::json!({"architecture": host_arch(), "os": "linux"}),
        "{md}"
    );
    let created = desc["annotations"]["org.opencontainers.image.created"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(is_rfc3339_seconds(&created), "{md}");

    // index.json names the manifest with the same platform and time.
    let listing = std::process::Command::new("tar")
        .arg("-xOf")
        .arg(&tar)
        .arg("index.json")
        .output()
        .expect("tar runs");
    assert!(listing.status.success());
    let index: serde_json::Value = serde_json::from_slice(&listing.stdout).expect("index.json");
    let entry = &index["manifests"][0];
    assert_eq!(entry["digest"], md["containerimage.digest"]);
    assert_eq!(entry["platform"], desc["platform"]);
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.created"],
        created.as_str()
    );
    assert_eq!(
        entry["annotations"]["io.containerd.image.name"],
        "docker.io/exp/oci:1"
    );
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"],
        "1"
    );
    // An archive names nothing in the image store.
    let images = h.ctr(ns, &["images", "ls", "-q"]).expect("ctr");
    assert!(!images.contains("exp/oci"), "{images}");

    // The vertex as BuildKit's: its name, the image's items, the tarball.
    let lines: Vec<String> = vertex_lines(&out.stderr, "exporting to oci image format")
        .iter()
        .map(|l| without_time(l))
        .collect();
    let digest = md["containerimage.digest"].as_str().expect("digest");
    let config = md["containerimage.config.digest"].as_str().expect("config");
    assert_eq!(
        lines
            .iter()
            .filter(|l| !l.starts_with("DONE"))
            .collect::<Vec<_>>(),
        [
            "exporting layers done".to_string(),
            format!("exporting manifest {digest} done"),
            format!("exporting config {config} done"),
            "sending tarball done".to_string(),
        ]
        .iter()
        .collect::<Vec<_>>(),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn the_image_exporter_describes_its_platform_and_an_index_has_no_config() {
    let ns = "buildxflows-image";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ctx = h.context(
        "image",
        &[("Dockerfile", "FROM busybox\nRUN echo img > /i\n")],
    );
    let dir = tempfile::tempdir().expect("dir");
    let md = dir.path().join("md.json");
    remote(
        &h,
        &k,
        ns,
        &[
            "-t",
            "exp-image:1",
            "--metadata-file",
            md.to_str().expect("utf8"),
            ctx.to_str().expect("utf8"),
        ],
    )
    .ok();
    let md = json_file(&md);
    let desc = &md["containerimage.descriptor"];
    assert_eq!(
        desc["platform"],
        serde_json::json!({"architecture": host_arch(), "os": "linux"}),
        "{md}"
    );
    // The image exporter does not annotate the manifest's time.
    assert!(desc.get("annotations").is_none(), "{md}");
    assert_eq!(md["image.name"], "docker.io/library/exp-image:1");

    // Two platforms: an index, without a config digest key (BuildKit
    // leaves it out) and without a platform on the index's descriptor.
    let ctx = h.context(
        "index",
        &[(
            "Dockerfile",
            "FROM scratch\nARG TARGETARCH\nCOPY Dockerfile /d\n",
        )],
    );
    let md = dir.path().join("index.json");
    remote(
        &h,
        &k,
        ns,
        &[
            "--platform",
            "linux/amd64,linux/arm64",
            "-t",
            "exp-index:1",
            "--metadata-file",
            md.to_str().expect("utf8"),
            ctx.to_str().expect("utf8"),
        ],
    )
    .ok();
    let md = json_file(&md);
    assert_eq!(
        md["containerimage.descriptor"]["mediaType"], "application/vnd.oci.image.index.v1+json",
        "{md}"
    );
    assert!(md.get("containerimage.config.digest").is_none(), "{md}");
    assert!(
        md["containerimage.descriptor"].get("platform").is_none(),
        "{md}"
    );
}

#[tokio::test]
async fn local_and_tar_exports_show_under_buildkits_names() {
    let ns = "buildxflows-files";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ctx = h.context(
        "files",
        &[("Dockerfile", "FROM scratch\nCOPY Dockerfile /d\n")],
    );
    let dir = tempfile::tempdir().expect("dir");
    for (output, vertex, item) in [
        (
            format!("type=local,dest={}", dir.path().join("local").display()),
            "exporting to client directory",
            "copying files done",
        ),
        (
            format!("type=tar,dest={}", dir.path().join("fs.tar").display()),
            "exporting to client tarball",
            "sending tarball done",
        ),
    ] {
        let out = remote(&h, &k, ns, &["-o", &output, ctx.to_str().expect("utf8")]).ok();
        let lines: Vec<String> = vertex_lines(&out.stderr, vertex)
            .iter()
            .map(|l| without_time(l))
            .collect();
        assert!(
            lines.first().map(String::as_str) == Some(item)
                && lines.last().is_some_and(|l| l.starts_with("DONE")),
            "{output}: {lines:?}\n{}",
            out.stderr
        );
    }
    assert!(dir.path().join("local/d").exists());
    assert!(dir.path().join("fs.tar").exists());
}

/// `buildx build --call=targets` sends the targets request through the
/// gateway (`requestid=frontend.targets`): the answer is BuildKit's
/// `targets.List` as metadata, which buildx prints from, and nothing is
/// built.
#[tokio::test]
async fn the_targets_request_lists_the_stages() {
    let ns = "buildxflows-targets";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let src = "FROM busybox AS base\nRUN echo never-run\n# final what ships\nFROM base AS final\n";
    let ctx = h.context("targets", &[("Dockerfile", src)]);
    let answer = common::subrequest(&k.addr(), &ctx, "frontend.targets", "");
    let stdout = &answer.stdout;
    assert!(!stdout.contains("never-run"), "{stdout}");
    let value = |key: &str| answer.value(key);
    assert_eq!(value("version").trim(), "1.0.0");
    let json: serde_json::Value =
        serde_json::from_str(&value("result.json")).expect("result.json is JSON");
    assert_eq!(
        json["targets"],
        serde_json::json!([
            {
                "name": "base",
                "base": "busybox",
                "location": {"ranges": [{"start": {"line": 1}, "end": {"line": 1}}]},
            },
            {
                "name": "final",
                "default": true,
                "description": "what ships",
                "base": "base",
                "location": {"ranges": [{"start": {"line": 4}, "end": {"line": 4}}]},
            },
        ])
    );
    assert_eq!(
        value("result.txt").strip_suffix('\n').unwrap_or_default(),
        "TARGET          DESCRIPTION\nbase            \nfinal (default) what ships\n"
    );
    // kiln's own client asks the same way and prints what the embedded
    // `--call=targets` prints.
    let (addr, c) = (k.addr(), ctx.to_str().expect("utf8"));
    for call in ["--call=targets", "--call=targets,format=json"] {
        let remote = h
            .kiln(ns, &["--addr", &addr, "build", "--progress=plain", call, c])
            .expect("kiln runs")
            .ok();
        let embedded = h.kiln(ns, &["build", call, c]).expect("kiln runs").ok();
        assert_eq!(remote.stdout, embedded.stdout, "{call}");
        if call == "--call=targets" {
            assert_eq!(
                remote.stdout,
                "TARGET          DESCRIPTION\nbase            \nfinal (default) what ships\n"
            );
        } else {
            let v: serde_json::Value = serde_json::from_str(&remote.stdout).expect("JSON");
            assert_eq!(v["targets"], json["targets"]);
        }
    }
    // Nothing ran: no step's container or snapshot was made.
    assert!(h
        .ctr(ns, &["containers", "ls", "-q"])
        .expect("ctr")
        .trim()
        .is_empty());
}

/// Ctrl-C in a client mid-step (buildctl's, buildx's): kilnd ends the
/// step's vertex with BuildKit's `context canceled`, which the clients
/// show as `CANCELED` rather than as a failed step with its recap, and
/// leaves nothing behind.
#[tokio::test]
async fn an_interrupted_step_shows_as_canceled_and_leaves_nothing() {
    use std::io::BufRead;
    let ns = "buildxflows-cancel";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ctx = h.context(
        "cancel",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo STEP-STARTED && sleep 60\n",
        )],
    );
    let mut child = std::process::Command::new(buildctl_like_binary().expect("buildctl-like"))
        .arg(k.addr())
        .arg(&ctx)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("buildctl-like starts");
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("piped")).lines();
    let started = lines
        .by_ref()
        .map_while(Result::ok)
        .any(|l| l.trim() == "STEP-STARTED");
    assert!(started, "the step never started");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("signal");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(!child.wait().expect("client exits").success());
    let errors: Vec<&String> = rest
        .iter()
        .filter(|l| l.starts_with("buildctl-like: vertex "))
        .collect();
    assert_eq!(
        errors,
        ["buildctl-like: vertex [2/2] RUN echo STEP-STARTED && sleep 60 error context canceled"],
        "{rest:#?}"
    );
    h.wait_no_leftovers(ns, &h.kilnd_root(ns), std::time::Duration::from_secs(20))
        .await
        .expect("nothing left");
}
