//! What several end-to-end test files share: the Dockerfile that uses every
//! instruction of the engine's subset, and the checks of its image; the
//! frontend subrequests (`--call`) sent through kilnd's gateway; `kiln
//! build` through kilnd; buildctl-like runs.

#![allow(dead_code, reason = "each test file uses a different part")]

use kiln_integration::{buildctl_like_binary, Harness, KilnOutput, Kilnd};
use std::path::{Path, PathBuf};

/// Runs `buildctl-like` against `k` with the context `ctx`, naming the
/// image `image`, with its `BUILDCTL_LIKE_*` settings in `env`.
pub fn buildctl_like(
    k: &Kilnd,
    ctx: &Path,
    image: &str,
    env: &[(&str, &str)],
) -> std::process::Output {
    let mut cmd = std::process::Command::new(buildctl_like_binary().expect("buildctl-like"));
    cmd.arg(k.addr()).arg(ctx).arg(image);
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd.output().expect("buildctl-like runs")
}

/// A finished command's stdout and stderr, as text.
pub fn outputs(o: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

pub fn image_config(h: &Harness, ns: &str, name: &str) -> serde_json::Value {
    let manifest = h.manifest(ns, name);
    let cfg = manifest["config"]["digest"]
        .as_str()
        .expect("config digest");
    serde_json::from_str(&h.ctr(ns, &["content", "get", cfg]).expect("config")).expect("json")
}

pub const FULL: &str = r#"# every instruction of the engine's subset
ARG BASE=busybox
FROM ${BASE} AS base
ARG GREETING=hi
ENV APP_HOME=/srv/app MODE=test
WORKDIR $APP_HOME
COPY greeting.txt ./
ADD files.tar /srv/unpacked/
RUN echo "$GREETING from $MODE" > run.txt && chown app run.txt
USER app
RUN id -u > /tmp/whoami
LABEL org.example.kind="full test" version=1
EXPOSE 8080 53/udp
ENTRYPOINT ["sh", "-c"]
CMD ["cat /srv/app/greeting.txt /srv/app/run.txt /srv/unpacked/inside.txt /tmp/whoami"]
"#;

pub fn tar_with(name: &str, body: &str) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut hdr = tar::Header::new_gnu();
    hdr.set_size(body.len() as u64);
    hdr.set_mode(0o644);
    hdr.set_uid(0);
    hdr.set_gid(0);
    hdr.set_mtime(1_700_000_000);
    hdr.set_cksum();
    b.append_data(&mut hdr, name, body.as_bytes()).expect("tar");
    b.into_inner().expect("tar")
}

/// The arguments the FULL build is run with (before the context).
pub const FULL_ARGS: &[&str] = &["--build-arg", "GREETING=howdy", "--label", "extra=yes"];

/// A context holding FULL and its files.
pub fn full_context(h: &Harness, name: &str) -> PathBuf {
    let ctx = h.context(
        name,
        &[
            ("Dockerfile", FULL),
            ("greeting.txt", "hello from the context\n"),
        ],
    );
    std::fs::write(
        ctx.join("files.tar"),
        tar_with("inside.txt", "extracted by ADD\n"),
    )
    .expect("tar");
    ctx
}

/// Checks the image FULL built as `name`: what it prints, its config and
/// history, that it is unpacked, and that no build leftovers remain.
pub fn check_full_image(h: &Harness, ns: &str, name: &str) {
    let want = "hello from the context\nhowdy from test\nextracted by ADD\n1000\n";
    let printed = h.run_image_expecting(ns, name, &format!("{ns}-full-run"), &[], want);
    assert_eq!(printed, want);

    let cfg = image_config(h, ns, name);
    let c = &cfg["config"];
    assert_eq!(c["User"], "app");
    assert_eq!(c["WorkingDir"], "/srv/app");
    assert_eq!(c["Entrypoint"], serde_json::json!(["sh", "-c"]));
    assert_eq!(
        c["Cmd"],
        serde_json::json!([
            "cat /srv/app/greeting.txt /srv/app/run.txt /srv/unpacked/inside.txt /tmp/whoami"
        ])
    );
    assert_eq!(
        c["Env"],
        serde_json::json!([
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "APP_HOME=/srv/app",
            "MODE=test"
        ])
    );
    assert_eq!(
        c["Labels"],
        serde_json::json!({"org.example.kind": "full test", "version": "1", "extra": "yes"})
    );
    assert_eq!(
        c["ExposedPorts"],
        serde_json::json!({"8080/tcp": {}, "53/udp": {}})
    );
    let history: Vec<(String, bool)> = cfg["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|e| {
            (
                e["created_by"].as_str().unwrap_or("").to_string(),
                e["empty_layer"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    let expected: Vec<(String, bool)> = vec![
        ("kiln import ".to_string(), false),
        ("ARG GREETING=howdy".into(), true),
        ("ENV APP_HOME=/srv/app MODE=test".into(), true),
        ("WORKDIR /srv/app".into(), false),
        ("COPY greeting.txt ./ # buildkit".into(), false),
        ("ADD files.tar /srv/unpacked/ # buildkit".into(), false),
        ("RUN |1 GREETING=howdy /bin/sh -c echo \"$GREETING from $MODE\" > run.txt && chown app run.txt # buildkit".into(), false),
        ("USER app".into(), true),
        ("RUN |1 GREETING=howdy /bin/sh -c id -u > /tmp/whoami # buildkit".into(), false),
        ("LABEL org.example.kind=full test version=1".into(), true),
        ("EXPOSE [53/udp 8080/tcp]".into(), true),
        ("ENTRYPOINT [\"sh\" \"-c\"]".into(), true),
        ("CMD [\"cat /srv/app/greeting.txt /srv/app/run.txt /srv/unpacked/inside.txt /tmp/whoami\"]".into(), true),
    ];
    assert_eq!(history.len(), expected.len(), "history: {history:#?}");
    for (got, want) in history.iter().zip(&expected) {
        if want.0 == "kiln import " {
            assert!(got.0.starts_with("kiln import "), "{got:?}");
            assert_eq!(got.1, want.1);
        } else {
            assert_eq!(got, want);
        }
    }
    let layers = history.iter().filter(|(_, empty)| !empty).count();
    assert_eq!(
        cfg["rootfs"]["diff_ids"]
            .as_array()
            .expect("diff_ids")
            .len(),
        layers
    );

    let check = h.ctr(ns, &["images", "check"]).expect("ctr images check");
    let line = check
        .lines()
        .find(|l| l.starts_with(name))
        .expect("image listed");
    assert!(line.contains("complete"), "{line}");
    assert!(line.contains("true"), "not unpacked: {line}");
    assert!(h.leftovers(ns).expect("ctr").is_empty());
}

/// (layer digests, diffIDs) of image `name`.
pub fn layers(h: &Harness, ns: &str, name: &str) -> (Vec<String>, Vec<String>) {
    let digests = h.manifest(ns, name)["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().expect("digest").to_string())
        .collect();
    let diff_ids = image_config(h, ns, name)["rootfs"]["diff_ids"]
        .as_array()
        .expect("diff_ids")
        .iter()
        .map(|d| d.as_str().expect("diffID").to_string())
        .collect();
    (digests, diff_ids)
}

/// Copies the very same busybox image from namespace `from` into `to`
/// (export and import with ctr), for a cold build to compare with. The
/// tar is named after both namespaces: tests of one binary share the
/// harness's state directory and run at once.
pub fn copy_busybox(h: &Harness, from: &str, to: &str) {
    let bb = h.state_dir().join(format!("busybox-image-{from}-{to}.tar"));
    let bb = bb.to_str().expect("utf8");
    h.ctr(
        from,
        &["images", "export", bb, "docker.io/library/busybox:latest"],
    )
    .expect("ctr images export");
    h.ctr(to, &["images", "import", bb])
        .expect("ctr images import");
}

/// The bytes of content blob `digest` (`ctr content get`), e.g. a layer
/// to read with `tar` and `flate2`.
pub fn blob(h: &Harness, ns: &str, digest: &str) -> Vec<u8> {
    let out = std::process::Command::new("ctr")
        .arg("--address")
        .arg(h.socket())
        .args(["--namespace", ns, "content", "get", digest])
        .output()
        .expect("ctr runs");
    assert!(out.status.success(), "ctr content get {digest}");
    out.stdout
}

/// The answer to a frontend subrequest sent through kilnd's gateway: what
/// `buildctl-like` printed, each metadata entry as `buildctl-like:
/// metadata KEY` on a line and its value after it.
pub struct Subrequest {
    pub stdout: String,
}

/// Sends the subrequest `requestid` (`frontend.outline`,
/// `frontend.targets`, `frontend.lint`) for the context `ctx` to kilnd at
/// `addr` as buildx's `--call` sends it, with the frontend options
/// `opts` (`k=v,...`, may be empty) after the request's own; the request
/// must succeed.
pub fn subrequest(addr: &str, ctx: &Path, requestid: &str, opts: &str) -> Subrequest {
    let mut all = format!("requestid={requestid},frontend.caps=moby.buildkit.frontend.subrequests");
    if !opts.is_empty() {
        all.push(',');
        all.push_str(opts);
    }
    let out = std::process::Command::new(buildctl_like_binary().expect("buildctl-like"))
        .env("BUILDCTL_LIKE_OPTS", all)
        .arg(addr)
        .arg(ctx)
        .output()
        .expect("buildctl-like runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Subrequest { stdout }
}

impl Subrequest {
    /// The value of metadata entry `key`; fails the test without it.
    pub fn value(&self, key: &str) -> String {
        let marker = format!("buildctl-like: metadata {key}\n");
        let rest = self
            .stdout
            .split_once(&marker)
            .map(|(_, r)| r)
            .unwrap_or_else(|| panic!("no {key} in\n{}", self.stdout));
        rest.split("buildctl-like: ")
            .next()
            .unwrap_or_default()
            .to_string()
    }
}

/// `kiln --addr ADDR build --progress plain ARGS...`: a build through
/// kilnd `k`, as [`Harness::build`] runs one embedded.
pub fn remote(h: &Harness, k: &Kilnd, ns: &str, args: &[&str]) -> KilnOutput {
    let addr = k.addr();
    let mut all = vec!["--addr", addr.as_str(), "build", "--progress", "plain"];
    all.extend_from_slice(args);
    h.kiln(ns, &all).expect("kiln runs")
}

/// Every build record a client of kilnd may see over `ch`, in the order
/// kilnd sends them (`ListenBuildHistory` with `early_exit`, as `buildx
/// history ls` reads them).
pub async fn build_records(
    ch: tonic::transport::Channel,
) -> Vec<kiln_proto::control::BuildHistoryRecord> {
    use kiln_proto::control::control_client::ControlClient;
    use kiln_proto::control::BuildHistoryRequest;
    let mut s = ControlClient::new(ch)
        .listen_build_history(BuildHistoryRequest {
            early_exit: true,
            ..Default::default()
        })
        .await
        .expect("ListenBuildHistory")
        .into_inner();
    let mut out = Vec::new();
    while let Some(e) = s.message().await.expect("event") {
        out.extend(e.record);
    }
    out
}

/// An embedded build of the client's directory `ctx` (named `tag`) hits
/// `steps` steps kilnd ran and makes kilnd's image `kilnd_image` (both
/// names normalized from `docker.io/library/`): what kilnd received and
/// kept hashes like the directory itself.
pub fn embedded_build_is_kilnds(
    h: &Harness,
    ns: &str,
    ctx: &str,
    tag: &str,
    steps: usize,
    kilnd_image: &str,
) {
    let embedded = h.build(ns, &["-t", tag, ctx]).ok();
    assert_eq!(
        kiln_integration::cached_steps(&embedded.stderr),
        steps,
        "{}",
        embedded.stderr
    );
    assert_eq!(
        h.image_digest(ns, &format!("docker.io/library/{tag}")),
        h.image_digest(ns, &format!("docker.io/library/{kilnd_image}"))
    );
}
