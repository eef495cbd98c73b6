//! Frontend images (issue 11): a Dockerfile's `# syntax=IMAGE` (or the
//! `BUILDKIT_SYNTAX` build argument) hands the build to that image, which
//! kilnd runs as a container speaking LLBBridge over its stdio, as
//! BuildKit's gateway does. The frontend here is `kiln-test-frontend`
//! (its binary and the libraries `ldd` lists, imported as an image): it
//! reads the Dockerfile through the session, writes `/hello` and `/opts`
//! on busybox and returns that with an image config. Checked through the
//! kiln CLI (Control.Solve with `dockerfile.v0`) and the buildctl-style
//! gateway client (LLBBridge.Solve with `dockerfile.v0`, the frontend
//! running inside that solve); frontends that exit, speak garbage or
//! return an error fail the build naming the image and leave nothing
//! behind; the embedded CLI refuses them, naming kilnd.

use kiln_integration::{buildctl_like_binary, Harness, Kilnd};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common;
use common::remote;

/// How long a finished build may take to remove what it made.
const SETTLE: Duration = Duration::from_secs(30);

/// The frontend image of each behaviour (`KILN_TEST_FRONTEND`).
fn image(mode: &str) -> String {
    format!("docker.io/kilntest/frontend:{mode}")
}

/// Imports the test frontend as one image per behaviour (`ok`, `exit`,
/// `garbage`, `error`): its binary, with the shared libraries it links at
/// their host paths, as the entrypoint.
async fn import_frontends(h: &Harness, ns: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let bin = Path::new(env!("CARGO_BIN_EXE_kiln-test-frontend"));
    std::fs::create_dir_all(root.join("bin")).expect("mkdir bin");
    std::fs::copy(bin, root.join("bin/kiln-test-frontend")).expect("copy frontend");
    let ldd = Command::new("ldd").arg(bin).output().expect("run ldd");
    let ldd = String::from_utf8_lossy(&ldd.stdout);
    let mut copied = 0;
    for lib in ldd
        .split_whitespace()
        .filter(|w| w.starts_with('/') && Path::new(w).exists())
    {
        let dest = root.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().expect("a library has a parent")).expect("mkdir");
        std::fs::copy(lib, &dest).expect("copy library");
        copied += 1;
    }
    assert!(
        copied > 0,
        "ldd found no libraries for the frontend:\n{ldd}"
    );
    let ctrd = h.client(ns).await.expect("containerd client");
    let svc = kiln_engine::Services::containerd(&ctrd);
    for mode in ["ok", "exit", "garbage", "error"] {
        let cfg = kiln_solver::ImageConfig {
            env: vec![format!("KILN_TEST_FRONTEND={mode}")],
            entrypoint: Some(vec!["/bin/kiln-test-frontend".into()]),
            // Not what a frontend image runs (BuildKit runs its
            // entrypoint only).
            cmd: Some(vec!["--not-an-argument".into()]),
            ..Default::default()
        };
        kiln_engine::import::import_rootfs(&svc, root, &image(mode), &cfg)
            .await
            .expect("import the frontend image");
    }
}

/// What the frontend wrote into image `name`: `/hello` and `/opts`.
/// `/hello` is expected to read `hello`.
fn written(h: &Harness, ns: &str, name: &str, id: &str, hello: &str) -> (String, String) {
    let cat_hello = ["/bin/cat", "/hello"];
    (
        h.run_image_expecting(ns, name, &format!("{id}-hello"), &cat_hello, hello),
        h.run_image(ns, name, &format!("{id}-opts"), &["/bin/cat", "/opts"]),
    )
}

/// kilnd's log so far, for a failure's message.
fn kilnd_log(k: &Kilnd) -> String {
    std::fs::read_to_string(&k.log).unwrap_or_default()
}

async fn setup(ns: &str) -> (Harness, Kilnd) {
    let h = Harness::with_busybox(ns).await;
    import_frontends(&h, ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    (h, k)
}

#[tokio::test]
async fn a_syntax_directive_runs_the_frontend_image_through_kilnd() {
    let ns = "feimage-ok";
    let (h, k) = setup(ns).await;
    let ctx = h.context(
        "feimage-ok",
        &[(
            "Dockerfile",
            "# syntax=kilntest/frontend:ok --flag a\nFROM busybox\n# read by the frontend\n",
        )],
    );
    let c = ctx.to_str().expect("utf8");
    let out = remote(&h, &k, ns, &["-t", "fe-out:directive", c]);
    assert!(out.success, "{}\nkilnd: {}", out.stderr, kilnd_log(&k));
    // The frontend's lookup is a step of the build, named as it asked.
    let lookup = out
        .stderr
        .lines()
        .find_map(|l| {
            l.strip_suffix(" [internal] load metadata for docker.io/library/busybox:latest")
        })
        .unwrap_or_else(|| panic!("no lookup step:\n{}", out.stderr));
    let done = format!("{lookup} DONE ");
    assert!(
        out.stderr.lines().any(|l| l.starts_with(&done)),
        "{}",
        out.stderr
    );
    let name = "docker.io/library/fe-out:directive";
    let want = "hello from a frontend image\n# read by the frontend\n";
    let (hello, opts) = written(&h, ns, name, "fe-directive", want);
    assert_eq!(hello, want);
    // The directive as BuildKit's Dockerfile frontend forwards it: the
    // image, and the whole line (its arguments too) as `cmdline`.
    assert!(
        opts.lines().any(|l| l == "source=kilntest/frontend:ok"),
        "{opts}"
    );
    assert!(
        opts.lines()
            .any(|l| l == "cmdline=kilntest/frontend:ok --flag a"),
        "{opts}"
    );
    // The image config the frontend returned.
    let cfg = common::image_config(&h, ns, name);
    // Busybox's Env, as the frontend resolved it, then its own.
    assert_eq!(
        cfg["config"]["Env"],
        serde_json::json!([
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "MADE_BY=kiln-test-frontend"
        ])
    );
    assert_eq!(cfg["config"]["Cmd"], serde_json::json!(["/hello"]));
    h.wait_no_leftovers(ns, &h.kilnd_root(ns), SETTLE)
        .await
        .expect("nothing left behind");

    // BUILDKIT_SYNTAX picks the frontend over the file.
    let plain = h.context(
        "feimage-arg",
        &[("Dockerfile", "FROM busybox\n# the arg's build\n")],
    );
    let out = remote(
        &h,
        &k,
        ns,
        &[
            "--build-arg",
            "BUILDKIT_SYNTAX=kilntest/frontend:ok",
            "-t",
            "fe-out:arg",
            plain.to_str().expect("utf8"),
        ],
    );
    assert!(out.success, "{}\nkilnd: {}", out.stderr, kilnd_log(&k));
    let want = "hello from a frontend image\n# the arg's build\n";
    let (hello, opts) = written(&h, ns, "docker.io/library/fe-out:arg", "fe-arg", want);
    assert_eq!(hello, want);
    assert!(
        opts.lines()
            .any(|l| l == "build-arg:BUILDKIT_SYNTAX=kilntest/frontend:ok"),
        "{opts}"
    );

    // The embedded CLI has no bridge to give the frontend.
    let out = h.build(ns, &["-t", "fe-out:embedded", c]);
    assert!(!out.success);
    assert!(
        out.stderr.contains(
            "the frontend image \"kilntest/frontend:ok\" of the syntax directive without kilnd"
        ),
        "{}",
        out.stderr
    );
    h.wait_no_leftovers(ns, &h.kilnd_root(ns), SETTLE)
        .await
        .expect("nothing left behind");
}

#[tokio::test]
async fn a_gateway_client_build_forwards_to_the_frontend_image() {
    let ns = "feimage-gw";
    let (h, k) = setup(ns).await;
    let ctx = h.context(
        "feimage-gw",
        &[(
            "Dockerfile",
            "# syntax=kilntest/frontend:ok\nFROM busybox\n# through the gateway\n",
        )],
    );
    let out = Command::new(buildctl_like_binary().expect("buildctl-like"))
        .arg(k.addr())
        .arg(&ctx)
        .arg("fe-gw:latest")
        .output()
        .expect("buildctl-like runs");
    assert!(
        out.status.success(),
        "{}\n{}\nkilnd: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        kilnd_log(&k)
    );
    let want = "hello from a frontend image\n# through the gateway\n";
    let (hello, _) = written(&h, ns, "docker.io/library/fe-gw:latest", "fe-gw", want);
    assert_eq!(hello, want);
    h.wait_no_leftovers(ns, &h.kilnd_root(ns), SETTLE)
        .await
        .expect("nothing left behind");
}

/// A frontend image's own lookups go through the client's policy
/// (`ResolveImageConfig`, as BuildKit's bridge checks them): the frontend
/// image itself is allowed and runs, its lookup of the denied busybox
/// fails with the policy's answer, and no result is built.
#[tokio::test]
async fn a_frontend_images_lookups_ask_the_clients_policy() {
    let ns = "feimage-policy";
    let (h, k) = setup(ns).await;
    let ctx = h.context(
        "feimage-policy",
        &[(
            "Dockerfile",
            "# syntax=kilntest/frontend:ok\nFROM busybox\n",
        )],
    );
    let out = Command::new(buildctl_like_binary().expect("buildctl-like"))
        .arg(k.addr())
        .arg(&ctx)
        .arg("fe-policy:latest")
        .env(
            "BUILDCTL_LIKE_POLICY",
            "deny-prefix=docker-image://docker.io/library/busybox:",
        )
        .output()
        .expect("buildctl-like runs");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("buildctl-like: policy docker-image://docker.io/kilntest/frontend:ok"),
        "the frontend image was not asked about:\n{stdout}"
    );
    // (The frontend quotes kilnd's status in its own error.)
    assert!(
        stderr.contains("resolve busybox:")
            && stderr.contains("could not resolve image due to policy: source")
            && stderr.contains("docker-image://docker.io/library/busybox:latest")
            && stderr.contains("not allowed by policy: action DENY"),
        "{stderr}\nkilnd: {}",
        kilnd_log(&k)
    );
    let images = h.ctr(ns, &["images", "ls", "-q"]).expect("ctr images ls");
    assert!(!images.contains("fe-policy"), "{images}");
    h.wait_no_leftovers(ns, &h.kilnd_root(ns), SETTLE)
        .await
        .expect("nothing left behind");
}

#[tokio::test]
async fn a_frontend_that_fails_fails_the_build_naming_it() {
    let ns = "feimage-fail";
    let (h, k) = setup(ns).await;
    for (mode, want) in [
        (
            "exit",
            "frontend image kilntest/frontend:exit exited with code 3 without returning a result: the test frontend gives up",
        ),
        (
            "garbage",
            "frontend image kilntest/frontend:garbage closed its LLBBridge connection (stdin/stdout) without returning a result",
        ),
        ("error", "the test frontend refuses this Dockerfile"),
    ] {
        let ctx = h.context(
            &format!("feimage-{mode}"),
            &[(
                "Dockerfile",
                &format!("# syntax=kilntest/frontend:{mode}\nFROM busybox\n"),
            )],
        );
        let out = remote(&h, &k, ns, &[ctx.to_str().expect("utf8")]);
        assert!(!out.success, "{mode}: {}", out.stderr);
        assert!(
            out.stderr.contains(want),
            "{mode}: {}\nkilnd: {}",
            out.stderr,
            kilnd_log(&k)
        );
        h.wait_no_leftovers(ns, &h.kilnd_root(ns), SETTLE)
            .await
            .unwrap_or_else(|e| panic!("{mode}: {e}"));
    }
}
