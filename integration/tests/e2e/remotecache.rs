//! Issue 9's cache acceptance: a build on containerd A exports its cache
//! (`--cache-to`), a build of the same context on a fresh containerd B
//! imports it (`--cache-from`) and runs no step whose result is in it.

use crate::common;
use common::remote;

use kiln_integration::registry::Registry;
use kiln_integration::{step_printed, Harness, KilnOutput};
use std::path::Path;

/// `kiln build` that must succeed.
fn build(h: &Harness, ns: &str, args: &[&str]) -> KilnOutput {
    h.build(ns, args).ok()
}

/// The manifest digest of image `name` and its layer digests: a build
/// from an imported cache gives the same image, not only the same layers.
fn image(h: &Harness, ns: &str, name: &str) -> (String, Vec<String>) {
    let layers = h.manifest(ns, name)["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().expect("digest").to_string())
        .collect();
    (h.image_digest(ns, name), layers)
}

fn cached(stderr: &str) -> usize {
    kiln_integration::cached_steps(stderr)
}

const DF: &str = "FROM busybox\nCOPY a /a\nRUN echo RUN1-RAN && cat /a > /r1\nRUN echo RUN2-RAN && echo two > /r2\n";

/// A fresh containerd (its own, even when the tests share one) with
/// busybox imported.
async fn fresh(ns: &str) -> Harness {
    Harness::with_busybox_private(ns).await
}

/// A second fresh containerd holding the same busybox image as `a` (the
/// test image is made per harness, with its own mtimes, while a base image
/// from a registry is the same everywhere): exported from `a` and imported
/// with containerd's own tools.
async fn fresh_like(a: &Harness, ns: &str) -> Harness {
    let b = Harness::start_private()
        .await
        .expect("private containerd starts");
    let tar = a.state_dir().join(format!("busybox-{ns}.tar"));
    let t = tar.to_str().expect("utf8");
    // containerd 2.x's `ctr images export` goes through the transfer
    // service, whose client copies the stream into the file in a goroutine
    // it does not wait for: the tar can be cut short (seen once, on
    // 2.3.4). `--local` (2.x only) writes it before ctr exits.
    let help = a
        .ctr(ns, &["images", "export", "--help"])
        .unwrap_or_default();
    let mut args = vec!["images", "export"];
    if help.contains("--local") {
        args.push("--local");
    }
    args.extend([t, "docker.io/library/busybox:latest"]);
    a.ctr(ns, &args).expect("ctr export busybox");
    b.ctr(ns, &["images", "import", t])
        .expect("ctr import busybox");
    b
}

#[tokio::test]
async fn a_local_cache_makes_every_step_cached_on_a_fresh_containerd() {
    let ns = "rcache-local";
    let a = fresh(ns).await;
    let ctx = a.context("local", &[("Dockerfile", DF), ("a", "a1\n")]);
    let c = ctx.to_str().expect("utf8");
    let dir = a.state_dir().join("cache-local");
    let to = format!("type=local,dest={}", dir.display());
    let first = build(&a, ns, &["--cache-to", &to, "-t", "out:1", c]);
    assert!(step_printed(&first.stderr, "RUN1-RAN") && step_printed(&first.stderr, "RUN2-RAN"));
    assert!(dir.join("index.json").is_file() && dir.join("oci-layout").is_file());
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("index.json"))
            .expect("json");
    assert_eq!(
        index["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        "latest"
    );

    let b = fresh_like(&a, ns).await;
    // The same files at another path: keys follow content, not paths.
    let ctx_b = b.context("local-b", &[("Dockerfile", DF), ("a", "a1\n")]);
    let c = ctx_b.to_str().expect("utf8");
    let from = format!("type=local,src={}", dir.display());
    let second = build(&b, ns, &["--cache-from", &from, "-t", "out:1", c]);
    assert!(
        !step_printed(&second.stderr, "RUN1-RAN") && !step_printed(&second.stderr, "RUN2-RAN"),
        "a step ran on B:\n{}",
        second.stderr
    );
    assert_eq!(
        cached(&second.stderr),
        3,
        "COPY and both RUNs:\n{}",
        second.stderr
    );
    assert_eq!(
        image(&a, ns, "docker.io/library/out:1"),
        image(&b, ns, "docker.io/library/out:1"),
        "the same image"
    );
    let out = b.run_image_expecting(
        ns,
        "docker.io/library/out:1",
        "rc-local",
        &["cat", "/r1", "/r2"],
        "a1\ntwo\n",
    );
    assert_eq!(out, "a1\ntwo\n");

    // The hits were saved as B's own records: without --cache-from too.
    let again = build(&b, ns, &["-t", "out:3", c]);
    assert_eq!(cached(&again.stderr), 3, "{}", again.stderr);
    assert_eq!(b.leftovers(ns).expect("ctr"), Vec::<String>::new());

    // A changed file misses from the COPY on, and only there.
    std::fs::write(ctx_b.join("a"), "a2\n").expect("write");
    let third = build(&b, ns, &["--cache-from", &from, "-t", "out:2", c]);
    assert!(step_printed(&third.stderr, "RUN1-RAN"), "{}", third.stderr);
}

// The builder writes a file the copy leaves out, different on every run
// (a re-run within the same second would otherwise give the very same
// layer, and whether the final stage hits would depend on the clock).
const MULTI: &str = "FROM busybox AS builder\nRUN echo BUILDER-RAN && echo built > /x && cat /proc/sys/kernel/random/uuid > /other\nFROM busybox\nCOPY --from=builder /x /x\nRUN echo FINAL-RAN && cat /x > /y\n";

type Image = (String, Vec<String>);

async fn multi_stage(ns: &str, mode: &str) -> (String, Image, Image) {
    let a = fresh(ns).await;
    let ctx = a.context("multi", &[("Dockerfile", MULTI)]);
    let c = ctx.to_str().expect("utf8");
    let dir = a.state_dir().join("cache-multi");
    let to = format!("type=local,dest={},mode={mode}", dir.display());
    let first = build(&a, ns, &["--cache-to", &to, "-t", "multi:1", c]);
    assert!(step_printed(&first.stderr, "BUILDER-RAN"));
    let b = fresh_like(&a, ns).await;
    let from = format!("type=local,src={}", dir.display());
    let second = build(&b, ns, &["--cache-from", &from, "-t", "multi:1", c]);
    (
        second.stderr,
        image(&a, ns, "docker.io/library/multi:1"),
        image(&b, ns, "docker.io/library/multi:1"),
    )
}

/// No step of the multi-stage build ran: the builder's RUN, the COPY and
/// the final RUN show CACHED (the FROM both stages share shows CACHED
/// too, and is not counted), and the image is the first build's.
fn assert_nothing_ran(stderr: &str, la: &Image, lb: &Image) {
    assert!(
        !step_printed(stderr, "BUILDER-RAN") && !step_printed(stderr, "FINAL-RAN"),
        "{stderr}"
    );
    assert_eq!(cached(stderr), 3, "{stderr}");
    assert_eq!(la, lb, "the same image");
}

#[tokio::test]
async fn mode_max_caches_every_stage_of_a_multi_stage_build() {
    let (stderr, la, lb) = multi_stage("rcache-max", "max").await;
    assert_nothing_ran(&stderr, &la, &lb);
}

#[tokio::test]
async fn mode_min_answers_the_final_stage_without_the_builder() {
    let (stderr, la, lb) = multi_stage("rcache-min", "min").await;
    // Only the final image's results were exported (its FROM, COPY and
    // RUN), each step with its plan key: the final RUN is answered by its
    // plan, so the builder stage it reads through the COPY is not run at
    // all, as with BuildKit's mode=min cache.
    assert!(
        stderr.contains("importing cache from local cache"),
        "{stderr}"
    );
    assert_nothing_ran(&stderr, &la, &lb);
}

/// A changed builder stage is another plan: a mode=min cache does not
/// answer the final stage, which runs on the new builder's output.
#[tokio::test]
async fn mode_min_misses_when_the_builder_changed() {
    let ns = "rcache-min-changed";
    let a = fresh(ns).await;
    let ctx = a.context("multi", &[("Dockerfile", MULTI)]);
    let c = ctx.to_str().expect("utf8");
    let dir = a.state_dir().join("cache-multi");
    let to = format!("type=local,dest={},mode=min", dir.display());
    build(&a, ns, &["--cache-to", &to, "-t", "multi:1", c]);
    let changed = MULTI.replace("echo built", "echo rebuilt");
    let ctx2 = a.context("multi2", &[("Dockerfile", &changed)]);
    let b = fresh_like(&a, ns).await;
    let from = format!("type=local,src={}", dir.display());
    let second = build(
        &b,
        ns,
        &[
            "--cache-from",
            &from,
            "-t",
            "multi:2",
            ctx2.to_str().expect("utf8"),
        ],
    );
    assert!(
        step_printed(&second.stderr, "BUILDER-RAN") && step_printed(&second.stderr, "FINAL-RAN"),
        "{}",
        second.stderr
    );
    let out = b.run_image(ns, "docker.io/library/multi:2", "mm-run", &["cat", "/y"]);
    assert_eq!(out, "rebuilt\n");
}

#[tokio::test]
async fn an_inline_cache_travels_in_the_image() {
    let ns = "rcache-inline";
    let a = fresh(ns).await;
    let ctx = a.context("inline", &[("Dockerfile", DF), ("a", "a1\n")]);
    let c = ctx.to_str().expect("utf8");
    build(&a, ns, &["--cache-to", "type=inline", "-t", "inl:1", c]);
    let manifest = a.manifest(ns, "docker.io/library/inl:1");
    let config_digest = manifest["config"]["digest"].as_str().expect("config");
    let config: serde_json::Value = serde_json::from_str(
        &a.ctr(ns, &["content", "get", config_digest])
            .expect("config"),
    )
    .expect("json");
    assert!(
        config["moby.buildkit.cache.v0"].is_string(),
        "the config carries the inline cache: {config}"
    );
    let from = inline_source(&a, ns, "inl:1");
    let b = fresh_like(&a, ns).await;
    // B writes its inline cache too: the config holds it either way.
    let second = build(
        &b,
        ns,
        &[
            "--cache-from",
            &from,
            "--cache-to",
            "type=inline",
            "-t",
            "inl:1",
            c,
        ],
    );
    assert!(
        !step_printed(&second.stderr, "RUN1-RAN") && !step_printed(&second.stderr, "RUN2-RAN"),
        "{}",
        second.stderr
    );
    assert_eq!(cached(&second.stderr), 3, "{}", second.stderr);
    assert_eq!(
        image(&a, ns, "docker.io/library/inl:1"),
        image(&b, ns, "docker.io/library/inl:1"),
        "the same image, inline cache included"
    );
}

/// `--cache-from` for the inline cache of image `name` (`inl:1`): the
/// image as an OCI layout (containerd's own export), read as the image
/// whose config holds the cache.
fn inline_source(a: &Harness, ns: &str, name: &str) -> String {
    let full = format!("docker.io/library/{name}");
    let stem = name.replace(':', "-");
    let tar = a.state_dir().join(format!("{stem}.tar"));
    a.ctr(
        ns,
        &["images", "export", tar.to_str().expect("utf8"), &full],
    )
    .expect("ctr export");
    let dir = a.state_dir().join(format!("{stem}-layout"));
    untar(&tar, &dir);
    let digest = a.image_digest(ns, &full);
    format!("type=local,src={},digest={digest}", dir.display())
}

/// `registry.insecure=true` on a registry cache, as buildx users add it:
/// a loopback registry serving TLS with a certificate kiln cannot verify
/// is then reached over HTTPS anyway (tried before plain HTTP, as
/// BuildKit does), for the export and the import; without it the export
/// speaks plain HTTP to it and fails naming the registry.
#[tokio::test]
async fn a_registry_cache_may_be_insecure() {
    use kiln_integration::registry::RegistryOptions;
    let ns = "rcache-insecure";
    let reg = Registry::start_with(RegistryOptions {
        tls: true,
        ..RegistryOptions::default()
    })
    .await
    .expect("registry starts");
    let cache_ref = reg.reference("kiln/cache:insecure");
    let a = fresh(ns).await;
    let ctx = a.context("reg-insecure", &[("Dockerfile", DF), ("a", "a1\n")]);
    let c = ctx.to_str().expect("utf8");
    let refused = a.build(
        ns,
        &["--cache-to", &format!("type=registry,ref={cache_ref}"), c],
    );
    // A loopback registry is plain HTTP by default: this one speaks TLS.
    assert!(!refused.success, "{}", refused.stderr);
    assert!(refused.stderr.contains(reg.host()), "{}", refused.stderr);
    let to = format!("type=registry,ref={cache_ref},registry.insecure=true");
    build(&a, ns, &["--cache-to", &to, "-t", "out:1", c]);

    let b = fresh_like(&a, ns).await;
    let from = format!("type=registry,ref={cache_ref},registry.insecure=true");
    let second = build(&b, ns, &["--cache-from", &from, "-t", "out:1", c]);
    assert_eq!(cached(&second.stderr), 3, "{}", second.stderr);
}

/// A cache export that fails with `ignore-error=true` lets the build
/// succeed but is not hidden: embedded it is a warning, through kilnd
/// the export step fails, as BuildKit shows the vertex.
#[tokio::test]
async fn an_ignored_cache_export_failure_is_shown() {
    let ns = "rcache-ignored";
    let a = fresh(ns).await;
    let ctx = a.context("ignored", &[("Dockerfile", DF), ("a", "a1\n")]);
    let c = ctx.to_str().expect("utf8");
    // Nothing listens on port 1.
    let to = "type=registry,ref=127.0.0.1:1/kiln/c:1,ignore-error=true";
    let embedded = build(&a, ns, &["--cache-to", to, c]);
    assert!(
        embedded
            .stderr
            .contains("WARNING: cache export to registry cache 127.0.0.1:1/kiln/c:1 failed: "),
        "{}",
        embedded.stderr
    );
    let k = a.start_kilnd(ns).await.expect("kilnd starts");
    let daemon = remote(&a, &k, ns, &["--cache-to", to, c]);
    assert!(daemon.success, "{}", daemon.stderr);
    assert!(
        daemon
            .stderr
            .contains("ERROR: cache export to registry cache 127.0.0.1:1/kiln/c:1 failed: "),
        "{}",
        daemon.stderr
    );
}

/// The inline cache of a multi-stage build holds only the final image's
/// steps, as BuildKit's: the final stage is answered by its plan, and the
/// builder stage is not run.
#[tokio::test]
async fn an_inline_cache_answers_a_multi_stage_build() {
    let ns = "rcache-inline-multi";
    let a = fresh(ns).await;
    let ctx = a.context("multi", &[("Dockerfile", MULTI)]);
    let c = ctx.to_str().expect("utf8");
    build(&a, ns, &["--cache-to", "type=inline", "-t", "inm:1", c]);
    let from = inline_source(&a, ns, "inm:1");
    let b = fresh_like(&a, ns).await;
    let second = build(&b, ns, &["--cache-from", &from, "-t", "inm:1", c]);
    assert!(
        !step_printed(&second.stderr, "BUILDER-RAN") && !step_printed(&second.stderr, "FINAL-RAN"),
        "{}",
        second.stderr
    );
    assert_eq!(cached(&second.stderr), 3, "{}", second.stderr);
    let out = b.run_image(ns, "docker.io/library/inm:1", "inm-run", &["cat", "/y"]);
    assert_eq!(out, "built\n");
}

fn untar(tar: &Path, dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let st = std::process::Command::new("tar")
        .arg("-xf")
        .arg(tar)
        .arg("-C")
        .arg(dir)
        .status()
        .expect("tar runs");
    assert!(st.success());
}

#[tokio::test]
async fn bad_cache_options_fail_before_the_build() {
    let ns = "rcache-bad";
    let h = fresh(ns).await;
    let ctx = h.context("bad", &[("Dockerfile", DF), ("a", "a1\n")]);
    let c = ctx.to_str().expect("utf8");
    let out = h.build(ns, &["--cache-to", "type=gha", c]);
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("--cache-to: cache type \"gha\" is not supported by kiln"),
        "{}",
        out.stderr
    );
    assert!(!step_printed(&out.stderr, "RUN1-RAN"));
    let out = h.build(
        ns,
        &["--cache-from", "type=local,src=/x,compression=zstd", c],
    );
    assert!(!out.success);
    assert!(
        out.stderr.contains("unsupported attribute compression"),
        "{}",
        out.stderr
    );
}

#[tokio::test]
async fn a_registry_cache_makes_every_step_cached_on_a_fresh_containerd() {
    let ns = "rcache-reg";
    let reg = Registry::start().await.expect("registry starts");
    let cache_ref = reg.reference("kiln/cache:app");
    let a = fresh(ns).await;
    let ctx = a.context("reg", &[("Dockerfile", DF), ("a", "a1\n")]);
    let c = ctx.to_str().expect("utf8");
    let to = format!("type=registry,ref={cache_ref}");
    let first = build(&a, ns, &["--cache-to", &to, "-t", "out:1", c]);
    assert!(step_printed(&first.stderr, "RUN1-RAN"));
    assert!(
        reg.count_requests("/manifests/app") > 0,
        "the cache manifest was pushed:\n{}",
        reg.access_log()
    );

    let b = fresh_like(&a, ns).await;
    // A bare reference is type=registry,ref=REF.
    let second = build(&b, ns, &["--cache-from", &cache_ref, "-t", "out:1", c]);
    assert!(
        !step_printed(&second.stderr, "RUN1-RAN") && !step_printed(&second.stderr, "RUN2-RAN"),
        "{}",
        second.stderr
    );
    assert_eq!(cached(&second.stderr), 3, "{}", second.stderr);
    assert_eq!(
        image(&a, ns, "docker.io/library/out:1"),
        image(&b, ns, "docker.io/library/out:1"),
        "the same image"
    );
}

#[tokio::test]
async fn kilnd_exports_and_imports_a_registry_cache_with_mode_max() {
    let ns = "rcache-kilnd";
    let reg = Registry::start().await.expect("registry starts");
    let cache_ref = reg.reference("kiln/cache:multi");
    let a = fresh(ns).await;
    let ka = a.start_kilnd(ns).await.expect("kilnd starts");
    let ctx = a.context("kilnd", &[("Dockerfile", MULTI)]);
    let c = ctx.to_str().expect("utf8");
    let to = format!("type=registry,ref={cache_ref},mode=max");
    let first = remote(&a, &ka, ns, &["--cache-to", &to, "-t", "multi:1", c]);
    assert!(first.success, "{}", first.stderr);
    assert!(
        step_printed(&first.stderr, "BUILDER-RAN"),
        "{}",
        first.stderr
    );

    let b = fresh_like(&a, ns).await;
    let kb = b.start_kilnd(ns).await.expect("kilnd starts");
    let from = format!("type=registry,ref={cache_ref}");
    let second = remote(&b, &kb, ns, &["--cache-from", &from, "-t", "multi:1", c]);
    assert!(second.success, "{}", second.stderr);
    assert!(
        !step_printed(&second.stderr, "BUILDER-RAN") && !step_printed(&second.stderr, "FINAL-RAN"),
        "{}",
        second.stderr
    );
    assert_eq!(
        image(&a, ns, "docker.io/library/multi:1"),
        image(&b, ns, "docker.io/library/multi:1"),
        "the same image through kilnd"
    );
    // What was imported shows in the client's progress, as embedded.
    assert!(
        second.stderr.contains(&format!(
            "importing cache from registry cache {cache_ref}: "
        )),
        "{}",
        second.stderr
    );
    // A cache that cannot be read is a warning the client sees, not
    // silence, and the build goes on.
    let none_ref = reg.reference("kiln/cache:none");
    let none = format!("type=registry,ref={none_ref}");
    let third = remote(&b, &kb, ns, &["--cache-from", &none, c]);
    assert!(third.success, "{}", third.stderr);
    assert!(
        third.stderr.contains(&format!(
            "WARNING: cache import from registry cache {none_ref} skipped"
        )),
        "{}",
        third.stderr
    );

    // A directory of the client's machine (type=local) goes through the
    // content store kiln's client attaches to its session: see
    // tests/e2e/clientlocalcache.rs.
}

#[tokio::test]
async fn an_inline_cache_pushed_with_the_image_is_imported_from_the_registry() {
    let ns = "rcache-inline-reg";
    let reg = Registry::start().await.expect("registry starts");
    let image_ref = reg.reference("kiln/app:inline");
    let a = fresh(ns).await;
    let ctx = a.context("inline-reg", &[("Dockerfile", DF), ("a", "a1\n")]);
    let c = ctx.to_str().expect("utf8");
    build(
        &a,
        ns,
        &["--cache-to", "type=inline", "--push", "-t", &image_ref, c],
    );

    let b = fresh_like(&a, ns).await;
    // The image's own reference: its config holds the inline cache.
    let second = build(
        &b,
        ns,
        &[
            "--cache-from",
            &image_ref,
            "--cache-to",
            "type=inline",
            "-t",
            "out:1",
            c,
        ],
    );
    assert!(
        !step_printed(&second.stderr, "RUN1-RAN") && !step_printed(&second.stderr, "RUN2-RAN"),
        "{}",
        second.stderr
    );
    assert_eq!(cached(&second.stderr), 3, "{}", second.stderr);
    assert_eq!(
        image(&a, ns, &image_ref),
        image(&b, ns, "docker.io/library/out:1"),
        "B's image is the pushed one"
    );
}
