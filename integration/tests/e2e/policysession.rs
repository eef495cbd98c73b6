//! Build policies (buildx's `Dockerfile.rego` and `--policy`) through
//! kilnd: the client serves its policy in its session and names it in
//! `SourcePolicySession`; kilnd asks it about every source before any step
//! runs and builds only what it allows. The Solve request's other options
//! kiln cannot honour yet fail before the build; `kiln build` refuses a
//! policy file it cannot enforce.

use crate::common::{buildctl_like as buildctl, outputs as text};
use kiln_integration::gitdaemon::{git, GitDaemon};
use kiln_integration::Harness;

const DOCKERFILE: &str =
    "FROM busybox\nCOPY a.txt /a.txt\nRUN echo ran-the-step && cat /a.txt > /b.txt\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kilnd_builds_only_what_the_clients_policy_allows() {
    let ns = "policy-session";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ctx = h.context(
        "policy",
        &[("Dockerfile", DOCKERFILE), ("a.txt", "from the context\n")],
    );

    // Denied: the build fails naming the source and the policy's message,
    // and no step ran.
    let denied = buildctl(
        &k,
        &ctx,
        "docker.io/library/policy:denied",
        &[(
            "BUILDCTL_LIKE_POLICY",
            "deny=images must come from the mirror",
        )],
    );
    let (out, err) = text(&denied);
    assert!(
        !denied.status.success(),
        "a denied build succeeded:\n{out}\n{err}"
    );
    // Denied when the frontend looks the base image up, as BuildKit's
    // frontend is (its text).
    assert!(
        err.contains(
            "buildctl-like: solve: busybox: failed to resolve source metadata for \
             docker.io/library/busybox:latest: could not resolve image due to policy: source \
             \"docker-image://docker.io/library/busybox:latest\" not allowed by policy: action DENY"
        ),
        "{err}"
    );
    assert!(err.contains("code Unknown"), "{err}");
    assert!(
        !out.contains("ran-the-step"),
        "a step ran under a denying policy:\n{out}"
    );
    assert!(
        out.contains("buildctl-like: policy docker-image://docker.io/library/busybox:latest"),
        "the policy was not asked about the base:\n{out}"
    );
    let images = h.ctr(ns, &["images", "ls", "-q"]).expect("ctr images ls");
    assert!(!images.contains("policy:denied"), "{images}");

    // Allowed: every source was asked about (the base and the context),
    // and the image is built.
    let allowed = buildctl(
        &k,
        &ctx,
        "docker.io/library/policy:allowed",
        &[("BUILDCTL_LIKE_POLICY", "allow")],
    );
    let (out, err) = text(&allowed);
    assert!(allowed.status.success(), "{out}\n{err}");
    assert!(
        out.contains("buildctl-like: policy docker-image://docker.io/library/busybox:latest"),
        "{out}"
    );
    assert!(
        out.contains("buildctl-like: policy local://context"),
        "{out}"
    );
    assert!(
        out.contains("buildctl-like: policy local://dockerfile"),
        "{out}"
    );
    assert_eq!(
        h.run_image_expecting(
            ns,
            "docker.io/library/policy:allowed",
            "policy-allowed",
            &["cat", "/b.txt"],
            "from the context\n"
        ),
        "from the context\n"
    );

    // A policy that must see the image first gets its digest and config,
    // resolved as the build resolves it.
    let config = buildctl(
        &k,
        &ctx,
        "docker.io/library/policy:config",
        &[("BUILDCTL_LIKE_POLICY", "config")],
    );
    let (out, err) = text(&config);
    assert!(config.status.success(), "{out}\n{err}");
    let resolved = out
        .lines()
        .find(|l| l.contains(" digest sha256:"))
        .unwrap_or_else(|| panic!("the policy never saw the image resolved:\n{out}"));
    assert!(
        resolved
            .starts_with("buildctl-like: policy docker-image://docker.io/library/busybox:latest")
            && resolved.ends_with(" os linux"),
        "{resolved}"
    );
    // An image's attestations and signatures cannot be resolved yet.
    let attest = buildctl(
        &k,
        &ctx,
        "docker.io/library/policy:attest",
        &[("BUILDCTL_LIKE_POLICY", "attest")],
    );
    let (out, err) = text(&attest);
    assert!(!attest.status.success(), "{out}\n{err}");
    assert!(
        err.contains("the build policy asks for the attestations and signatures of source \"docker-image://docker.io/library/busybox:latest")
            && err.contains("that is not supported yet"),
        "{err}"
    );
    assert!(!out.contains("ran-the-step"), "{out}");

    // Without a policy session nothing is asked.
    let plain = buildctl(&k, &ctx, "docker.io/library/policy:plain", &[]);
    let (out, err) = text(&plain);
    assert!(plain.status.success(), "{out}\n{err}");
    assert!(!out.contains("buildctl-like: policy "), "{out}");
}

/// An image the policy denies is never looked up: not a base image of the
/// Dockerfile, not a frontend image (`# syntax=`). Their registry here
/// does not exist, so a lookup before the policy's answer would fail the
/// build with a pull error instead of the denial.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_image_is_refused_before_it_is_looked_up() {
    let ns = "policy-lookup";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let deny = [(
        "BUILDCTL_LIKE_POLICY",
        "deny-prefix=docker-image://127.0.0.1:9/",
    )];

    let base = h.context(
        "policy-base",
        &[(
            "Dockerfile",
            "FROM busybox AS ok\nRUN echo ran-the-step\nFROM 127.0.0.1:9/denied/base\nCOPY --from=ok /etc/passwd /p\n",
        )],
    );
    let denied = buildctl(&k, &base, "docker.io/library/policy:base", &deny);
    let (out, err) = text(&denied);
    assert!(!denied.status.success(), "{out}\n{err}");
    assert!(
        err.contains(
            "buildctl-like: solve: 127.0.0.1:9/denied/base: failed to resolve source metadata \
             for 127.0.0.1:9/denied/base:latest: could not resolve image due to policy: source \
             \"docker-image://127.0.0.1:9/denied/base:latest\" not allowed by policy: action DENY"
        ),
        "{err}"
    );
    assert!(err.contains("code Unknown"), "{err}");
    assert!(!out.contains("ran-the-step"), "{out}");

    // The lint request (buildx `--check`) reports the denied base as the
    // report's error, as BuildKit's does, instead of failing the request.
    let mut lint_env = deny.to_vec();
    lint_env.push(("BUILDCTL_LIKE_OPTS", "requestid=frontend.lint"));
    let lint = buildctl(&k, &base, "docker.io/library/policy:lint", &lint_env);
    let (out, err) = text(&lint);
    assert!(lint.status.success(), "{out}\n{err}");
    assert!(
        out.contains(
            "127.0.0.1:9/denied/base: failed to resolve source metadata for \
             127.0.0.1:9/denied/base:latest: could not resolve image due to policy"
        ),
        "{out}"
    );
    assert!(out.contains("buildError"), "{out}");
    assert!(!out.contains("ran-the-step"), "{out}");

    let syntax = h.context(
        "policy-syntax",
        &[(
            "Dockerfile",
            "# syntax=127.0.0.1:9/denied/frontend\nFROM busybox\nRUN echo ran-the-step\n",
        )],
    );
    let denied = buildctl(&k, &syntax, "docker.io/library/policy:syntax", &deny);
    let (out, err) = text(&denied);
    assert!(!denied.status.success(), "{out}\n{err}");
    assert!(
        err.contains(
            "frontend image 127.0.0.1:9/denied/frontend: could not resolve image due to policy: \
             source \"docker-image://127.0.0.1:9/denied/frontend:latest\" not allowed by policy: \
             action DENY"
        ),
        "{err}"
    );
    assert!(!out.contains("ran-the-step"), "{out}");
}

/// The frontend's reads of the client's directories are sources the
/// policy decides on too, as BuildKit's frontend reads them through local
/// sources (texts as BuildKit 73ed6825c gives them through buildx): the
/// Dockerfile (`local://dockerfile`) is denied before it is read; the
/// context's `.dockerignore` is then not read, and, as in BuildKit (which
/// reads it lazily and ignores a failed read), the build fails only if it
/// uses the context.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_decides_on_the_frontends_reads_of_the_client() {
    let ns = "policy-locals";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ctx = h.context(
        "policy-locals",
        &[("Dockerfile", DOCKERFILE), ("a.txt", "from the context\n")],
    );
    for (prefix, want) in [
        (
            "local://dockerfile",
            "buildctl-like: solve: failed to read dockerfile: failed to load LLB: error \
             evaluating the source policy: source \"local://dockerfile\" not allowed by policy: \
             action DENY",
        ),
        (
            "local://context",
            "buildctl-like: solve: failed to load LLB: error evaluating the source policy: \
             source \"local://context\" not allowed by policy: action DENY",
        ),
    ] {
        let denied = buildctl(
            &k,
            &ctx,
            "docker.io/library/policy:locals",
            &[("BUILDCTL_LIKE_POLICY", &format!("deny-prefix={prefix}"))],
        );
        let (out, err) = text(&denied);
        assert!(!denied.status.success(), "{prefix}: {out}\n{err}");
        assert!(err.contains(want), "{prefix}: {err}");
        assert!(!out.contains("ran-the-step"), "{prefix}: {out}");
    }

    // A build that never reads its context is not stopped by a denied
    // `.dockerignore` read.
    let unused = h.context(
        "policy-locals-unused",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo ran-the-step && echo x > /x\n",
        )],
    );
    let built = buildctl(
        &k,
        &unused,
        "docker.io/library/policy:unused",
        &[("BUILDCTL_LIKE_POLICY", "deny-prefix=local://context")],
    );
    let (out, err) = text(&built);
    assert!(built.status.success(), "{out}\n{err}");
    assert!(
        out.contains("buildctl-like: policy local://context"),
        "the .dockerignore read was not put to the policy:\n{out}"
    );
    assert!(out.contains("ran-the-step"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn solve_options_kiln_cannot_honour_fail_before_the_build() {
    let ns = "policy-request";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ctx = h.context("request", &[("Dockerfile", DOCKERFILE), ("a.txt", "x\n")]);
    let refused = [
        ("compat=10", "compatibility-version 10 is not supported yet"),
        (
            "compat=99",
            "unsupported compatibility-version 99: upgrade buildkit (max supported: 30)",
        ),
        (
            "compat=5",
            "unsupported compatibility-version 5 (supported: [10 20 30])",
        ),
        (
            "proxy-network",
            "the policy's network proxy for steps (ProxyNetwork) is not supported yet",
        ),
        (
            "session-exporter",
            "exporters chosen through the session (EnableSessionExporter) are not supported yet",
        ),
    ];
    for (request, want) in refused {
        let o = buildctl(
            &k,
            &ctx,
            "docker.io/library/policy:request",
            &[("BUILDCTL_LIKE_REQUEST", request)],
        );
        let (out, err) = text(&o);
        assert!(!o.status.success(), "{request}: {out}\n{err}");
        assert!(err.contains(want), "{request}: {err}");
        assert!(
            !out.contains("ran-the-step"),
            "{request}: a step ran:\n{out}"
        );
    }
    // The current version is what kiln builds as; v0.15's (20) differs
    // only in the image exporter's default media types: Docker's.
    for (request, media_type) in [
        ("compat=30", "application/vnd.oci.image.manifest.v1+json"),
        (
            "compat=20",
            "application/vnd.docker.distribution.manifest.v2+json",
        ),
    ] {
        let name = "docker.io/library/policy:request";
        let o = buildctl(&k, &ctx, name, &[("BUILDCTL_LIKE_REQUEST", request)]);
        let (out, err) = text(&o);
        assert!(o.status.success(), "{request}: {out}\n{err}");
        assert_eq!(h.manifest(ns, name)["mediaType"], media_type, "{request}");
    }
}

/// `kiln build CONTEXT` fails naming the policy file `file` before any
/// step runs, and builds with `--policy disabled=true`.
fn refused_unless_disabled(h: &Harness, ns: &str, context: &str, file: &str) {
    let refused = h.build(ns, &["-t", "policy:refused", context]);
    assert!(!refused.success, "{}", refused.stderr);
    let want = format!(
        "{file}: build policies are not supported yet (--policy disabled=true builds without it)"
    );
    assert!(refused.stderr.contains(&want), "{}", refused.stderr);
    assert!(
        !refused.stderr.contains("ran-the-step"),
        "{}",
        refused.stderr
    );
    let off = h.build(
        ns,
        &["--policy", "disabled=true", "-t", "policy:refused", context],
    );
    assert!(off.success, "{}", off.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kiln_build_refuses_a_policy_file_it_cannot_enforce() {
    let ns = "policy-file";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.context(
        "policyfile",
        &[
            (
                "Dockerfile",
                "FROM busybox\nRUN echo ran-the-step && echo x > /x\n",
            ),
            (
                "Dockerfile.rego",
                "package docker\n\ndefault allow := false\n",
            ),
        ],
    );
    let ctx = ctx.to_str().expect("utf-8");
    refused_unless_disabled(&h, ns, ctx, &format!("{}/Dockerfile.rego", ctx));
}

/// A git repository `repo` whose Dockerfile runs one step (with a
/// `Dockerfile.rego` beside it when `policy`), served by a git daemon:
/// the daemon and the repository's URL.
fn git_repo(h: &Harness, policy: bool) -> (GitDaemon, String) {
    let base = h.state_dir().join("git");
    let repo = base.join("repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    std::fs::write(
        repo.join("Dockerfile"),
        "FROM busybox\nRUN echo ran-the-step && echo x > /x\n",
    )
    .expect("write");
    if policy {
        std::fs::write(repo.join("Dockerfile.rego"), "package docker\n").expect("write");
    }
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "a Dockerfile"]);
    let daemon = GitDaemon::start(&base, h.state_dir().join("git-daemon.log"));
    let url = daemon.url("repo");
    (daemon, url)
}

/// buildx reads the policy file of a git context too; so does the
/// embedded CLI, once the context is fetched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kiln_build_refuses_a_policy_file_in_a_git_context() {
    let ns = "policy-git";
    let h = Harness::with_busybox(ns).await;
    let (_daemon, url) = git_repo(&h, true);
    refused_unless_disabled(&h, ns, &url, &format!("{url}: Dockerfile.rego"));
}

/// A git context is the policy's to allow before kilnd fetches it for its
/// Dockerfile, as BuildKit's frontend reads it through the policy too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kilnd_asks_the_policy_before_fetching_a_git_context() {
    let ns = "policy-git-kilnd";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let (daemon, url) = git_repo(&h, false);
    let empty = h.context("policy-git-kilnd", &[]);
    let opts = format!("context={url}");
    let denied = buildctl(
        &k,
        &empty,
        "docker.io/library/policy:git",
        &[
            ("BUILDCTL_LIKE_POLICY", "deny-prefix=git://"),
            ("BUILDCTL_LIKE_OPTS", &opts),
        ],
    );
    let (out, err) = text(&denied);
    assert!(!denied.status.success(), "{out}\n{err}");
    assert!(
        err.contains(&format!("source \"{url}"))
            && err.contains("not allowed by policy: action DENY"),
        "{err}"
    );
    assert_eq!(daemon.requests(), 0, "the denied repository was fetched");
    assert!(!out.contains("ran-the-step"), "{out}");
    // The lint, outline and targets requests read the Dockerfile of the
    // context too: the policy is asked first, and nothing is fetched.
    for request in ["frontend.lint", "frontend.outline", "frontend.targets"] {
        let opts = format!("context={url},requestid={request}");
        let denied = buildctl(
            &k,
            &empty,
            "docker.io/library/policy:git-call",
            &[
                ("BUILDCTL_LIKE_POLICY", "deny-prefix=git://"),
                ("BUILDCTL_LIKE_OPTS", &opts),
            ],
        );
        let (out, err) = text(&denied);
        assert!(!denied.status.success(), "{request}: {out}\n{err}");
        assert!(
            err.contains("not allowed by policy: action DENY"),
            "{request}: {err}"
        );
        assert_eq!(
            daemon.requests(),
            0,
            "{request}: the repository was fetched"
        );
    }
    // Allowed, the same build fetches and runs.
    let allowed = buildctl(
        &k,
        &empty,
        "docker.io/library/policy:git",
        &[
            ("BUILDCTL_LIKE_POLICY", "allow"),
            ("BUILDCTL_LIKE_OPTS", &opts),
        ],
    );
    let (out, err) = text(&allowed);
    assert!(allowed.status.success(), "{out}\n{err}");
    assert!(
        out.contains(&format!("buildctl-like: policy {url}")),
        "{out}"
    );
    assert!(daemon.requests() > 0);
}
