//! Issue 9's push, end to end against Debian's docker-registry: kiln builds
//! and pushes (embedded and through kilnd), then a fresh containerd pulls
//! the image back with the real `ctr images pull` and runs it.

use base64::Engine as _;
use kiln_integration::registry::{Registry, RegistryOptions};
use kiln_integration::{Harness, KilnOutput, Kilnd};
use std::path::{Path, PathBuf};

const DF: &str =
    "FROM busybox\nRUN echo pushed-by-kiln > /pushed.txt\nCMD [\"cat\", \"/pushed.txt\"]\n";

/// The manifest digest the export step's progress showed.
fn manifest_digest(out: &KilnOutput) -> String {
    out.exported_manifests()
        .pop()
        .unwrap_or_else(|| panic!("no exported manifest in\n{}\n{}", out.stdout, out.stderr))
}

/// The digest `ctr images ls` lists for `name` in `ns`.
fn listed_digest(h: &Harness, ns: &str, name: &str) -> String {
    let images = h.ctr(ns, &["images", "ls"]).expect("ctr images ls");
    images
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or_else(|| panic!("{name} not in\n{images}"))
        .to_string()
}

/// Pulls `reference` with `ctr images pull --plain-http` (as `user`) into
/// a containerd that never saw the build, and runs it: (digest, output).
async fn pull_fresh_and_run(reference: &str, user: Option<&str>, id: &str) -> (String, String) {
    let ns = "pulled";
    let fresh = Harness::start_private()
        .await
        .expect("fresh containerd starts");
    let mut args = vec!["images", "pull", "--plain-http"];
    if let Some(u) = user {
        args.extend(["--user", u]);
    }
    args.push(reference);
    fresh.ctr(ns, &args).expect("ctr images pull");
    let digest = listed_digest(&fresh, ns, reference);
    let output = fresh.run_image(ns, reference, id, &[]);
    (digest, output)
}

/// A docker config directory whose config.json logs in to `host`.
fn docker_config(dir: &Path, host: &str, user: &str, password: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("mkdir");
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let json = serde_json::json!({"auths": {host: {"auth": auth}}});
    std::fs::write(dir.join("config.json"), json.to_string()).expect("config.json");
    dir.to_path_buf()
}

/// `kiln --addr KILND build --progress plain ARGS` with the client's
/// `DOCKER_CONFIG`.
fn remote_build(
    h: &Harness,
    k: &Kilnd,
    ns: &str,
    docker_config: &Path,
    args: &[&str],
) -> KilnOutput {
    let addr = k.addr();
    let mut cmd = h.kiln_command(ns).expect("kiln command");
    cmd.env("DOCKER_CONFIG", docker_config)
        .args(["--addr", addr.as_str(), "build", "--progress", "plain"])
        .args(args);
    let out = cmd.output().expect("kiln runs");
    KilnOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Manifests the registry stored (a PUT answered 2xx) for `repo`.
fn stored_manifests(reg: &Registry, repo: &str) -> Vec<String> {
    let prefix = format!("/v2/{repo}/manifests/");
    reg.requests()
        .into_iter()
        .filter(|r| r.method == "PUT" && (200..300).contains(&r.status))
        .filter_map(|r| r.path.strip_prefix(&prefix).map(String::from))
        .collect()
}

#[tokio::test]
async fn an_embedded_push_pulls_back_into_a_fresh_containerd_and_runs() {
    let ns = "push-embedded";
    let h = Harness::with_busybox(ns).await;
    let reg = Registry::start().await.expect("registry starts");
    // 3 MB of random bytes: kiln stores incompressible gzip members as
    // stored deflate blocks, which containerd's Go decompressor must read
    // when `ctr images pull` unpacks the image below.
    let df = "FROM busybox\nRUN echo pushed-by-kiln > /pushed.txt && head -c 3000000 /dev/urandom > /random.bin\n\
              CMD [\"sh\", \"-c\", \"cat /pushed.txt && md5sum /random.bin\"]\n";
    let ctx = h.context("push", &[("Dockerfile", df)]);
    let app = reg.reference("kiln/app:v1");
    let other = reg.reference("kiln/other:v2");
    let out = h
        .build(
            ns,
            &[
                "--push",
                "-t",
                &app,
                "-t",
                &other,
                ctx.to_str().expect("utf8"),
            ],
        )
        .ok();
    let digest = manifest_digest(&out);
    assert!(out.stderr.contains("pushing layers"), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!("pushing manifest for {app}")),
        "{}",
        out.stderr
    );
    // Both names, by their tags.
    assert_eq!(stored_manifests(&reg, "kiln/app"), ["v1"]);
    assert_eq!(stored_manifests(&reg, "kiln/other"), ["v2"]);
    // The second repository of the registry got its blobs by mount.
    let requests = reg.requests();
    let other_uploads: Vec<_> = requests
        .iter()
        .filter(|r| r.method == "POST" && r.path.starts_with("/v2/kiln/other/blobs/uploads/"))
        .collect();
    assert!(!other_uploads.is_empty(), "{}", reg.access_log());
    assert!(
        other_uploads
            .iter()
            .all(|r| r.path.contains("mount=") && r.status == 201),
        "{other_uploads:?}"
    );

    let here = h.run_image(ns, &app, "push-here", &[]);
    assert!(
        here.starts_with("pushed-by-kiln\n") && here.contains("/random.bin"),
        "{here}"
    );
    let (pulled, output) = pull_fresh_and_run(&app, None, "push-pulled").await;
    assert_eq!(pulled, digest, "same digest after the round trip");
    assert_eq!(output, here, "same output after the round trip");
}

#[tokio::test]
async fn push_by_digest_leaves_no_tag() {
    let ns = "push-by-digest";
    let h = Harness::with_busybox(ns).await;
    let reg = Registry::start().await.expect("registry starts");
    let ctx = h.context("bydigest", &[("Dockerfile", DF)]);
    let name = reg.reference("kiln/bydigest:v1");
    let out = h
        .build(
            ns,
            &[
                "-o",
                &format!("type=image,name={name},push=true,push-by-digest=true"),
                ctx.to_str().expect("utf8"),
            ],
        )
        .ok();
    let digest = manifest_digest(&out);
    assert_eq!(
        stored_manifests(&reg, "kiln/bydigest"),
        vec![digest.clone()]
    );
    // The tag does not exist; the digest pulls.
    let tag = h.ctr(ns, &["images", "pull", "--plain-http", &name]);
    assert!(tag.is_err(), "{tag:?}");
    let pinned = format!("{}@{digest}", reg.reference("kiln/bydigest"));
    let (pulled, output) = pull_fresh_and_run(&pinned, None, "bydigest").await;
    assert_eq!(pulled, digest);
    assert_eq!(output, "pushed-by-kiln\n");
}

#[tokio::test]
async fn kilnd_pushes_with_the_credentials_of_the_clients_session() {
    let ns = "push-kilnd";
    let h = Harness::with_busybox(ns).await;
    let reg = Registry::start_with(RegistryOptions {
        basic_auth: Some(("kiln".into(), "s3cret".into())),
        ..Default::default()
    })
    .await
    .expect("registry starts");
    let host = reg.host().to_string();
    // kilnd's own HOME and DOCKER_CONFIG hold no credentials: whatever it
    // pushes with comes from the client.
    let daemon_home = h.state_dir().join("daemon-home");
    std::fs::create_dir_all(daemon_home.join(".docker")).expect("mkdir");
    let k = h
        .start_kilnd_env(
            ns,
            &[
                ("HOME", daemon_home.as_path()),
                ("DOCKER_CONFIG", daemon_home.join(".docker").as_path()),
            ],
        )
        .await
        .expect("kilnd starts");
    let ctx = h.context("kilnd-push", &[("Dockerfile", DF)]);
    let ctx = ctx.to_str().expect("utf8");

    // Without a login: the registry's 401, and no credentials were sent.
    let nobody = h.state_dir().join("client-anonymous");
    std::fs::create_dir_all(&nobody).expect("mkdir");
    let anon_name = reg.reference("kiln/anon:v1");
    let anon = remote_build(&h, &k, ns, &nobody, &["--push", "-t", &anon_name, ctx]);
    assert!(!anon.success, "{}", anon.stdout);
    assert!(
        anon.stderr.contains(&host) && anon.stderr.contains("401"),
        "{}",
        anon.stderr
    );

    // A wrong password: one clear line naming the registry and the 401,
    // and nothing tagged.
    let wrong = docker_config(&h.state_dir().join("client-wrong"), &host, "kiln", "wrong");
    let bad_name = reg.reference("kiln/app:bad");
    let bad = remote_build(&h, &k, ns, &wrong, &["--push", "-t", &bad_name, ctx]);
    assert!(!bad.success, "{}", bad.stdout);
    let errors: Vec<&str> = bad
        .stderr
        .lines()
        .filter(|l| kiln_integration::is_error_line(l))
        .collect();
    assert_eq!(errors.len(), 1, "{}", bad.stderr);
    assert!(
        errors[0].contains(&host) && errors[0].contains("401 Unauthorized"),
        "{}",
        errors[0]
    );
    assert!(stored_manifests(&reg, "kiln/app").is_empty());

    // The right one, from the client's docker config.
    let good = docker_config(&h.state_dir().join("client-good"), &host, "kiln", "s3cret");
    let name = reg.reference("kiln/app:v1");
    let out = remote_build(&h, &k, ns, &good, &["--push", "-t", &name, ctx]);
    assert!(out.success, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains(&format!("pushing manifest for {name}")),
        "{}",
        out.stderr
    );
    let digest = manifest_digest(&out);
    assert_eq!(stored_manifests(&reg, "kiln/app"), ["v1"]);
    let (pulled, output) = pull_fresh_and_run(&name, Some("kiln:s3cret"), "kilnd-pushed").await;
    assert_eq!(pulled, digest);
    assert_eq!(output, "pushed-by-kiln\n");
}

#[tokio::test]
async fn a_buildctl_push_request_pushes_with_the_sessions_login() {
    let ns = "push-buildctl";
    let h = Harness::with_busybox(ns).await;
    let reg = Registry::start_with(RegistryOptions {
        basic_auth: Some(("ci".into(), "t0ken".into())),
        ..Default::default()
    })
    .await
    .expect("registry starts");
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ctx = h.context("buildctl-push", &[("Dockerfile", DF)]);
    let name = reg.reference("ci/app:1");
    // buildctl's gateway flow: Control.Solve with an image exporter
    // `name=...,push=true`, LLBBridge.Solve + Return, Auth in the session.
    let out = std::process::Command::new(
        kiln_integration::buildctl_like_binary().expect("buildctl-like"),
    )
    .args([
        format!("unix://{}", k.socket.display()),
        ctx.display().to_string(),
        name.clone(),
    ])
    .env("BUILDCTL_LIKE_PUSH", "1")
    .env("BUILDCTL_LIKE_AUTH", "ci:t0ken")
    .output()
    .expect("buildctl-like runs");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stored_manifests(&reg, "ci/app"), ["1"]);
    let (_, output) = pull_fresh_and_run(&name, Some("ci:t0ken"), "buildctl-pushed").await;
    assert_eq!(output, "pushed-by-kiln\n");
}

#[tokio::test]
async fn layers_of_a_base_pulled_from_the_registry_are_mounted_not_uploaded() {
    let ns = "push-mount-seed";
    let h = Harness::with_busybox(ns).await;
    let reg = Registry::start().await.expect("registry starts");
    let base = reg
        .push_image(&h, ns, "docker.io/library/busybox:latest", "library/base:1")
        .expect("ctr push");
    // The base, pulled by containerd itself into the build's namespace,
    // carries containerd's distribution.source label.
    let build_ns = "push-mount";
    h.ctr(build_ns, &["images", "pull", "--plain-http", &base])
        .expect("ctr pull");
    let base_layers: Vec<String> = h.manifest(build_ns, &base)["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().expect("digest").to_string())
        .collect();
    let ctx = h.context(
        "mount",
        &[(
            "Dockerfile",
            &format!("FROM {base}\nRUN echo on-top > /top.txt\nCMD [\"cat\", \"/top.txt\"]\n"),
        )],
    );
    let name = reg.reference("team/app:1");
    h.build(
        build_ns,
        &["--push", "-t", &name, ctx.to_str().expect("utf8")],
    )
    .ok();
    let requests = reg.requests();
    for layer in &base_layers {
        let mounted = requests.iter().any(|r| {
            r.method == "POST"
                && r.path.starts_with("/v2/team/app/blobs/uploads/")
                && r.path.contains(&format!("mount={layer}"))
                && r.path.contains("from=library/base")
                && r.status == 201
        });
        assert!(
            mounted,
            "{layer} not mounted:\n{}\n{}",
            reg.access_log(),
            h.ctr(build_ns, &["content", "ls"]).unwrap_or_default()
        );
        // Its bytes were never sent to the new repository.
        assert!(
            !requests.iter().any(|r| r.method == "PUT"
                && r.path.starts_with("/v2/team/app/blobs/uploads/")
                && r.path.contains(layer.as_str())),
            "{layer} uploaded:\n{}",
            reg.access_log()
        );
    }
    assert_eq!(stored_manifests(&reg, "team/app"), ["1"]);
    let (_, output) = pull_fresh_and_run(&name, None, "mounted").await;
    assert_eq!(output, "on-top\n");
}
