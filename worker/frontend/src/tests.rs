use super::*;
use kiln_solver::{ExecOp, Op};
use std::sync::Mutex;

fn attrs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn attributes_become_options() {
    let o = FrontendOptions::from_attrs(&attrs(&[
        ("filename", "app.Dockerfile"),
        ("target", "final"),
        ("build-arg:VERSION", "1.2"),
        ("build-arg:EMPTY", ""),
        ("label:org.example.team", "infra"),
        ("no-cache", "deps, final"),
        ("contextkey", "ctx"),
    ]))
    .expect("supported attributes");
    assert_eq!(o.filename, "app.Dockerfile");
    assert_eq!(o.target.as_deref(), Some("final"));
    assert_eq!(o.context_key, "ctx");
    assert_eq!(o.dockerfile_key, "dockerfile");
    assert_eq!(
        o.build_args,
        BTreeMap::from([
            ("EMPTY".to_string(), String::new()),
            ("VERSION".to_string(), "1.2".to_string())
        ])
    );
    assert_eq!(
        o.labels.get("org.example.team").map(String::as_str),
        Some("infra")
    );
    assert!(!o.no_cache);
    assert_eq!(o.no_cache_filter, ["deps", "final"]);

    let all = FrontendOptions::from_attrs(&attrs(&[("no-cache", ""), ("target", "")]))
        .expect("supported attributes");
    assert!(all.no_cache);
    assert_eq!(all.target, None);
    assert_eq!(all.filename, DEFAULT_FILENAME);
}

#[test]
fn process_options_are_parsed_as_buildkit_does() {
    let o = FrontendOptions::from_attrs(&attrs(&[
        ("add-hosts", "DB=10.0.0.2,v6=::1"),
        ("ulimit", "nofile=100:200,nproc=50"),
        ("shm-size", "134217728"),
    ]))
    .expect("valid process options");
    let hosts: Vec<String> = o.extra_hosts.iter().map(|h| h.to_string()).collect();
    assert_eq!(hosts, ["10.0.0.2\tdb", "::1\tv6"]);
    let limits: Vec<String> = o.ulimits.iter().map(|u| u.to_string()).collect();
    assert_eq!(limits, ["nofile=100:200", "nproc=50:50"]);
    assert_eq!(o.shm_size, 134217728);
    let b = build_options(
        &DockerfileSource {
            filename: "Dockerfile".into(),
            text: String::new(),
            excludes: Vec::new(),
            policy_file: None,
        },
        &o,
    );
    assert_eq!(
        (b.extra_hosts.len(), b.ulimits.len(), b.shm_size),
        (2, 2, 134217728)
    );

    for (key, value, text) in [
        ("add-hosts", "db=10.0.0", "failed to parse IP 10.0.0"),
        ("add-hosts", "db", "invalid key-value pair db"),
        ("ulimit", "as=1", "invalid ulimit type: as"),
        (
            "shm-size",
            "64m",
            "failed to parse shm size: strconv.ParseInt: parsing \"64m\": invalid syntax",
        ),
    ] {
        let e = FrontendOptions::from_attrs(&attrs(&[(key, value)])).expect_err(value);
        assert!(e.to_string().contains(text), "{key}={value}: {e}");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    }
}

#[test]
fn unsupported_attributes_fail_naming_the_key() {
    let e = FrontendOptions::from_attrs(&attrs(&[("target", "x"), ("cgroup-parent", "/kiln")]))
        .expect_err("cgroup-parent is not implemented");
    assert_eq!(
        e.to_string(),
        "frontend option \"cgroup-parent\" is not supported by kiln"
    );
    assert_eq!(e.kind(), ErrorKind::Unimplemented);
}

#[test]
fn buildx_named_contexts_work_and_its_subrequests_are_refused_by_name() {
    // `docker buildx build --build-context extra=DIR`.
    let o = FrontendOptions::from_attrs(&attrs(&[
        ("frontend.caps", "moby.buildkit.frontend.contexts+forward"),
        ("context:extra", "local:extra"),
        ("sharedkey:localdir:extra", "extra"),
    ]))
    .expect("named local context");
    assert_eq!(o.named_contexts.len(), 1);
    // bake's targets reading one directory share a session.
    let o = FrontendOptions::from_attrs(&attrs(&[
        ("local-sessionid:context", "shared1"),
        ("local-sessionid:dockerfile", "shared1"),
        ("local-sessionid:empty", ""),
    ]))
    .expect("local-sessionid");
    assert_eq!(
        o.local_sessions.into_iter().collect::<Vec<_>>(),
        [
            ("context".to_string(), "shared1".to_string()),
            ("dockerfile".to_string(), "shared1".to_string()),
        ]
    );
    // The subrequests' description works; LLB conversion does not yet.
    let o = FrontendOptions::from_attrs(&attrs(&[
        (
            "frontend.caps",
            "moby.buildkit.frontend.subrequests+forward",
        ),
        ("requestid", "frontend.subrequests.describe"),
    ]))
    .expect("describe");
    assert!(o.describe);
    let e = FrontendOptions::from_attrs(&attrs(&[
        (
            "frontend.caps",
            "moby.buildkit.frontend.subrequests+forward",
        ),
        ("requestid", "frontend.convertllb"),
    ]))
    .expect_err("subrequests");
    assert_eq!(
        e.to_string(),
        "frontend request \"frontend.convertllb\" is not supported yet"
    );
    assert_eq!(e.kind(), ErrorKind::Unimplemented);
    let e = FrontendOptions::from_attrs(&attrs(&[("frontend.caps", "moby.buildkit.frontend.x")]))
        .expect_err("unknown capability");
    assert_eq!(
        e.to_string(),
        "frontend capability moby.buildkit.frontend.x is not supported yet"
    );
}

#[test]
fn what_buildx_and_nerdctl_send_by_default_is_accepted() {
    // `docker buildx build` in a git checkout, and `nerdctl build
    // --pull=false`: provenance-only metadata and a local resolve mode.
    let opts = FrontendOptions::from_attrs(&attrs(&[
        ("filename", "Dockerfile"),
        ("vcs:source", "https://example.invalid/repo.git"),
        ("vcs:revision", "0123456789abcdef"),
        ("vcs:localdir:context", "."),
        ("vcs:localdir:dockerfile", "."),
        ("image-resolve-mode", "local"),
    ]))
    .expect("accepted");
    assert_eq!(opts.filename, "Dockerfile");
    assert!(opts.build_args.is_empty() && opts.labels.is_empty());
}

#[test]
fn resolve_modes_are_buildkits_and_others_are_refused_by_name() {
    for (value, mode) in [
        ("default", ResolveMode::Default),
        ("pull", ResolveMode::Pull),
        ("local", ResolveMode::Local),
    ] {
        let opts = FrontendOptions::from_attrs(&attrs(&[("image-resolve-mode", value)]))
            .expect("a BuildKit mode");
        assert_eq!(opts.resolve_mode, mode);
    }
    assert_eq!(
        FrontendOptions::from_attrs(&attrs(&[]))
            .expect("no attrs")
            .resolve_mode,
        ResolveMode::Default
    );
    let e = FrontendOptions::from_attrs(&attrs(&[("image-resolve-mode", "sometimes")]))
        .expect_err("unknown mode");
    assert_eq!(
        e.to_string(),
        "invalid frontend option image-resolve-mode=\"sometimes\": expected default, pull or local"
    );
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn platforms_are_a_normalized_list() {
    let o = FrontendOptions::from_attrs(&attrs(&[(
        "platform",
        "linux/amd64, linux/aarch64,linux/arm64/v8",
    )]))
    .expect("platforms");
    let names: Vec<String> = o.platforms.iter().map(ToString::to_string).collect();
    assert_eq!(names, ["linux/amd64", "linux/arm64"]);
    assert!(is_multi_platform(&o));
    let one = FrontendOptions::from_attrs(&attrs(&[("platform", "linux/arm64")])).expect("one");
    assert!(!is_multi_platform(&one));
    assert_eq!(target_platforms(&one)[0].to_string(), "linux/arm64");
    let none = FrontendOptions::from_attrs(&attrs(&[])).expect("none");
    assert_eq!(
        target_platforms(&none),
        [kiln_engine::oci::worker_platform()]
    );
    let e =
        FrontendOptions::from_attrs(&attrs(&[("platform", "linux/")])).expect_err("not a platform");
    assert_eq!(
        e.to_string(),
        r#"failed to parse target platform linux/: "" is an invalid component of "linux/": platform specifier component must match "^[A-Za-z0-9_.-]+$": invalid argument"#
    );
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    for (key, value) in [
        ("build-arg:BUILDKIT_MULTI_PLATFORM", "1"),
        ("multi-platform", "true"),
    ] {
        let o = FrontendOptions::from_attrs(&attrs(&[(key, value)])).expect(key);
        assert!(is_multi_platform(&o), "{key}");
    }
}

/// Busybox as the only image, and options building for the worker's
/// platform and another one (`linux/arm64`, or `linux/amd64` on arm64).
fn two_platforms() -> (
    FakeImages,
    kiln_solver::Platform,
    &'static str,
    FrontendOptions,
) {
    let images = FakeImages {
        configs: BTreeMap::from([(
            "docker.io/library/busybox:latest".to_string(),
            ImageConfig::default(),
        )]),
        ..Default::default()
    };
    let host = kiln_engine::oci::worker_platform();
    let other = if host.architecture == "arm64" {
        "linux/amd64"
    } else {
        "linux/arm64"
    };
    let list = format!("{host},{other}");
    let opts =
        FrontendOptions::from_attrs(&attrs(&[("platform", list.as_str())])).expect("options");
    (images, host, other, opts)
}

#[tokio::test]
async fn each_platform_is_planned_with_its_own_bases() {
    let (images, host, other, opts) = two_platforms();
    let built = plan_all(&source("FROM busybox\nRUN true\n", &[]), &opts, &images)
        .await
        .expect("plans");
    let platforms: Vec<String> = built.iter().map(|(p, _)| p.to_string()).collect();
    assert_eq!(platforms, [host.to_string(), other.to_string()]);
    // The worker's own platform is left implicit in the graph; the other
    // is named on the image config.
    assert_eq!(built[0].1.config.platform, None);
    assert_eq!(
        built[1].1.config.platform.as_ref().map(ToString::to_string),
        Some(other.to_string())
    );
    let asked = images.asked.lock().expect("not poisoned").clone();
    assert_eq!(
        asked,
        [
            "docker.io/library/busybox:latest".to_string(),
            format!("docker.io/library/busybox:latest {other}")
        ]
    );
    // Each lookup is shown with the platform it is for, as BuildKit names
    // them in a multi-platform build (`[linux/arm64 internal] …`).
    let shown = images.shown.lock().expect("not poisoned").clone();
    assert_eq!(shown, [Some(host.to_string()), Some(other.to_string())]);
}

#[test]
fn buildkit_build_args_work_or_fail_by_name() {
    let o = FrontendOptions::from_attrs(&attrs(&[
        ("build-arg:BUILDKIT_SANDBOX_HOSTNAME", "box"),
        ("build-arg:BUILDKIT_MULTI_PLATFORM", "0"),
        ("build-arg:BUILDKIT_CONTEXT_KEEP_GIT_DIR", "false"),
        ("build-arg:BUILDKIT_INLINE_CACHE", "1"),
        ("build-arg:BUILDKIT_BUILD_NAME", "x"),
        ("build-arg:BUILDKIT_CACHE_MOUNT_NS", "ns"),
        ("hostname", "attr"),
    ]))
    .expect("implemented or without effect");
    assert_eq!(
        o.hostname, "box",
        "the build argument wins over the attribute"
    );
    assert_eq!(o.build_args["BUILDKIT_CACHE_MOUNT_NS"], "ns");
    let o = FrontendOptions::from_attrs(&attrs(&[("hostname", "attr")])).expect("hostname");
    assert_eq!(o.hostname, "attr");
    for (key, value, message) in [
        (
            "build-arg:BUILDKIT_SBOM_SCAN_STAGE",
            "true",
            "BUILDKIT_SBOM_SCAN_STAGE=true (SBOM attestations) is not supported yet",
        ),
        (
            "build-arg:BUILDKIT_SYNTAX",
            "example.com/frontend:1",
            "BUILDKIT_SYNTAX=example.com/frontend:1 (a frontend image) without kilnd (frontend images run only through kilnd: kiln build --addr) is not supported yet",
        ),
    ] {
        let e = FrontendOptions::from_attrs(&attrs(&[(key, value)])).expect_err(key);
        assert_eq!(e.to_string(), message);
        assert_eq!(e.kind(), ErrorKind::Unimplemented);
    }
    let e = FrontendOptions::from_attrs(&attrs(&[("build-arg:BUILDKIT_MULTI_PLATFORM", "yes")]))
        .expect_err("not a Go boolean");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).expect("write test file");
}

#[test]
fn dockerfile_specific_ignore_file_wins_over_the_contexts() {
    let df_dir = tempfile::tempdir().expect("tempdir");
    let ctx = tempfile::tempdir().expect("tempdir");
    write(df_dir.path(), "app.Dockerfile", "FROM scratch\n");
    write(ctx.path(), ".dockerignore", "from-context\n");

    let s = read_dockerfile(df_dir.path(), "app.Dockerfile", ctx.path()).expect("read");
    assert_eq!(s.text, "FROM scratch\n");
    assert_eq!(s.filename, "app.Dockerfile");
    assert_eq!(s.excludes, ["from-context"]);

    write(
        df_dir.path(),
        "app.Dockerfile.dockerignore",
        "# own\nsecret\n!secret/keep\n",
    );
    let s = read_dockerfile(df_dir.path(), "app.Dockerfile", ctx.path()).expect("read");
    assert_eq!(s.excludes, ["secret", "!secret/keep"]);

    // Another Dockerfile in the same directory does not pick it up.
    write(df_dir.path(), "Dockerfile", "FROM scratch\n");
    let s = read_dockerfile(df_dir.path(), "Dockerfile", ctx.path()).expect("read");
    assert_eq!(s.excludes, ["from-context"]);
}

#[test]
fn a_policy_file_beside_the_dockerfile_is_noted_never_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    write(dir.path(), "Dockerfile", "FROM scratch\n");
    let s = read_dockerfile(dir.path(), "Dockerfile", dir.path()).expect("read");
    assert_eq!(s.policy_file, None);
    // Not UTF-8 and larger than any Dockerfile kiln reads: still only
    // noted, and the Dockerfile reads as before.
    let big = vec![0xff_u8; 2 * MAX_DEFINITION_FILE as usize];
    std::fs::write(dir.path().join("Dockerfile.rego"), big).expect("write");
    let s = read_dockerfile(dir.path(), "Dockerfile", dir.path()).expect("read");
    assert_eq!(s.policy_file.as_deref(), Some("Dockerfile.rego"));
    assert_eq!(s.text, "FROM scratch\n");
    // A directory of that name is no policy file.
    std::fs::create_dir(dir.path().join("other.Dockerfile.rego")).expect("mkdir");
    write(dir.path(), "other.Dockerfile", "FROM scratch\n");
    let s = read_dockerfile(dir.path(), "other.Dockerfile", dir.path()).expect("read");
    assert_eq!(s.policy_file, None);
}

#[test]
fn no_ignore_file_means_no_excludes_and_a_missing_dockerfile_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = read_dockerfile(dir.path(), "Dockerfile", dir.path()).expect_err("missing");
    assert_eq!(
        e.to_string(),
        "failed to read dockerfile: open Dockerfile: no such file or directory"
    );
    assert_eq!(e.kind(), ErrorKind::NotFound);
    write(dir.path(), "Dockerfile", "FROM scratch\n");
    let s = read_dockerfile(dir.path(), "Dockerfile", dir.path()).expect("read");
    assert!(s.excludes.is_empty());
}

#[test]
fn bytes_that_are_not_utf8_are_read_as_buildkit_reads_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("Dockerfile"),
        b"# Maintainer: Jos\xe9\nFROM scratch\nLABEL bad=\"\xff\xfeok\"\n",
    )
    .expect("write");
    std::fs::write(dir.path().join(".dockerignore"), b"# caf\xe9\n*.log\n").expect("write");
    let s = read_dockerfile(dir.path(), "Dockerfile", dir.path()).expect("read");
    assert!(
        s.text.contains("LABEL bad=\"\u{fffd}\u{fffd}ok\""),
        "{}",
        s.text
    );
    assert_eq!(s.excludes, ["*.log"]);
}

/// Answers image configs from a table and records what was asked.
#[derive(Default)]
struct FakeImages {
    configs: BTreeMap<String, ImageConfig>,
    asked: Mutex<Vec<String>>,
    /// The platform each lookup's progress step was to name.
    shown: Mutex<Vec<Option<String>>>,
}

impl ImageConfigs for FakeImages {
    fn image_config(
        &self,
        reference: &str,
        platform: Option<&kiln_solver::Platform>,
        shown: Option<&kiln_solver::Platform>,
    ) -> impl Future<Output = Result<ImageConfig, WorkerError>> + Send {
        if let Ok(mut s) = self.shown.lock() {
            s.push(shown.map(ToString::to_string));
        }
        if let Ok(mut asked) = self.asked.lock() {
            asked.push(match platform {
                None => reference.to_string(),
                Some(p) => format!("{reference} {p}"),
            });
        }
        let answer =
            self.configs
                .get(reference)
                .cloned()
                .ok_or_else(|| WorkerError::ImageNotFound {
                    image: reference.to_string(),
                    namespace: "test".to_string(),
                });
        async move { answer }
    }
}

fn source(text: &str, excludes: &[&str]) -> DockerfileSource {
    DockerfileSource {
        filename: "Dockerfile".to_string(),
        text: text.to_string(),
        excludes: excludes.iter().map(|s| s.to_string()).collect(),
        policy_file: None,
    }
}

#[tokio::test]
async fn plan_resolves_only_the_needed_bases_and_builds_for_the_host() {
    let images = FakeImages {
        configs: BTreeMap::from([(
            "docker.io/library/busybox:latest".to_string(),
            ImageConfig {
                env: vec!["PATH=/bin".to_string()],
                ..Default::default()
            },
        )]),
        ..Default::default()
    };
    let text = "FROM docker.io/library/alpine AS unused\nRUN true\n\
                FROM busybox\nARG TARGETARCH\nCOPY . /src\nRUN echo $TARGETARCH $V\n";
    let opts = FrontendOptions::from_attrs(&attrs(&[("build-arg:V", "v1"), ("label:a", "b")]))
        .expect("options");
    let build = plan(&source(text, &["secret"]), &opts, &images)
        .await
        .expect("plan");
    let asked = images.asked.lock().expect("not poisoned").clone();
    assert_eq!(asked, ["docker.io/library/busybox:latest"]);
    // One platform: `[internal] load metadata for …`, no platform.
    assert_eq!(*images.shown.lock().expect("not poisoned"), [None]);
    assert_eq!(build.config.labels.get("a").map(String::as_str), Some("b"));

    let context = build
        .graph
        .vertices
        .iter()
        .find_map(|v| match &v.op {
            Op::Source(s) if s.identifier.starts_with("local://") => Some(s),
            _ => None,
        })
        .expect("a context source");
    assert_eq!(context.identifier, format!("local://{CONTEXT_NAME}"));
    assert_eq!(
        context
            .attrs
            .get("local.excludepatterns")
            .map(String::as_str),
        Some("[\"secret\"]")
    );
    let run: Vec<&ExecOp> = build
        .graph
        .vertices
        .iter()
        .filter_map(|v| match &v.op {
            Op::Exec(e) => Some(e),
            _ => None,
        })
        .collect();
    assert_eq!(run.len(), 1, "the unused stage is not built");
    let arch = kiln_engine::oci::host_platform().architecture().to_string();
    assert!(
        run[0].meta.args.iter().any(|a| a == "echo $TARGETARCH $V")
            && run[0]
                .meta
                .env
                .iter()
                .any(|e| e == &format!("TARGETARCH={arch}")),
        "{:?}",
        run[0].meta
    );
}

#[tokio::test]
async fn plan_passes_the_engines_error_through() {
    let images = FakeImages::default();
    let e = plan(
        &source("FROM busybox\n", &[]),
        &FrontendOptions::default(),
        &images,
    )
    .await
    .expect_err("no such image");
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert_eq!(
        e.to_string(),
        "busybox: failed to resolve source metadata for docker.io/library/busybox:latest: \
         image \"docker.io/library/busybox:latest\" not found in containerd namespace \"test\""
    );
}

#[test]
fn a_filename_outside_the_dockerfile_directory_is_refused() {
    for bad in ["../Dockerfile", "/etc/shadow", "sub/../../x"] {
        let e = FrontendOptions::from_attrs(&attrs(&[("filename", bad)]))
            .expect_err("escapes its directory");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{bad}: {e}");
        assert!(e.to_string().contains("filename"), "{e}");
    }
    for (inside, clean) in [
        ("sub/app.Dockerfile", "sub/app.Dockerfile"),
        ("sub/../Dockerfile", "Dockerfile"),
        ("./a/b/../c", "a/c"),
    ] {
        let ok = FrontendOptions::from_attrs(&attrs(&[("filename", inside)]))
            .expect("a path inside is fine");
        assert_eq!(ok.filename, clean);
    }
}

#[test]
fn symlinks_in_client_files_stay_beneath_their_directory() {
    let outside = tempfile::tempdir().expect("tempdir");
    write(outside.path(), "secret", "host-secret\n");
    let df = tempfile::tempdir().expect("tempdir");
    let ctx = tempfile::tempdir().expect("tempdir");
    write(df.path(), "secret", "FROM scratch\n");
    // An absolute link target is taken inside the directory, as a
    // container would see it: never the host's file.
    std::os::unix::fs::symlink(outside.path().join("secret"), df.path().join("Dockerfile"))
        .expect("symlink");
    let e = read_dockerfile(df.path(), "Dockerfile", ctx.path()).expect_err("no such file inside");
    assert!(matches!(e, FrontendError::DockerfileNotFound { .. }), "{e}");
    std::os::unix::fs::symlink("/secret", df.path().join("linked")).expect("symlink");
    let src = read_dockerfile(df.path(), "linked", ctx.path()).expect("clamped to the dir");
    assert_eq!(src.text, "FROM scratch\n");
    // The ignore file likewise.
    std::os::unix::fs::symlink(
        outside.path().join("secret"),
        ctx.path().join(".dockerignore"),
    )
    .expect("symlink");
    let src = read_dockerfile(df.path(), "linked", ctx.path()).expect("no ignore file inside");
    assert!(src.excludes.is_empty(), "{:?}", src.excludes);
}

#[test]
fn fifos_directories_and_huge_files_are_refused_without_reading() {
    let df = tempfile::tempdir().expect("tempdir");
    let ctx = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(df.path().join("Dockerfile")).expect("mkdir");
    mkfifo(&df.path().join("fifo"));
    let big = std::fs::File::create(df.path().join("big")).expect("create");
    big.set_len(MAX_DEFINITION_FILE + 1).expect("sparse file");
    for name in ["Dockerfile", "fifo", "big"] {
        let e = read_dockerfile(df.path(), name, ctx.path()).expect_err(name);
        assert!(matches!(e, FrontendError::BadFile { .. }), "{name}: {e}");
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(
            e.to_string().starts_with(&format!("cannot read {name}: ")),
            "{e}"
        );
    }
}

fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL");
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let r = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(r, 0, "mkfifo {}", path.display());
}

#[test]
fn an_ignore_file_with_unusable_patterns_is_refused_naming_it() {
    let df = tempfile::tempdir().expect("tempdir");
    let ctx = tempfile::tempdir().expect("tempdir");
    std::fs::write(df.path().join("Dockerfile"), "FROM scratch\n").expect("write");
    let many: String = (0..=kiln_context::ignore::MAX_PATTERNS)
        .map(|i| format!("p{i}\n"))
        .collect();
    std::fs::write(ctx.path().join(".dockerignore"), &many).expect("write");
    let e = read_dockerfile(df.path(), "Dockerfile", ctx.path()).expect_err("too many");
    assert_eq!(
        e.to_string(),
        "cannot read .dockerignore: 10001 patterns, more than the 10000 kiln matches"
    );
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    std::fs::write(df.path().join("Dockerfile.dockerignore"), "[\n").expect("write");
    let e = read_dockerfile(df.path(), "Dockerfile", ctx.path()).expect_err("bad pattern");
    assert_eq!(
        e.to_string(),
        "cannot read Dockerfile.dockerignore: syntax error in pattern \"[\""
    );
}

#[tokio::test]
async fn the_dockerfile_check_build_argument_replaces_the_check_directive() {
    let mut images = FakeImages::default();
    images.configs.insert(
        "docker.io/library/busybox:latest".to_string(),
        ImageConfig::default(),
    );
    // The file's one warning is MaintainerDeprecated.
    let text = "# check=skip=all\nFROM busybox\nMAINTAINER me\n";
    let quiet = plan(&source(text, &[]), &FrontendOptions::default(), &images)
        .await
        .expect("the directive skips every rule");
    assert!(quiet.warnings.is_empty(), "{:?}", quiet.warnings);

    let opts = FrontendOptions::from_attrs(&attrs(&[(
        "build-arg:BUILDKIT_DOCKERFILE_CHECK",
        "error=true",
    )]))
    .expect("a valid check configuration");
    let e = plan(&source(text, &[]), &opts, &images)
        .await
        .expect_err("the argument's error=true wins and nothing is skipped");
    assert_eq!(
        e.to_string(),
        "Dockerfile: lint violation found for rules: MaintainerDeprecated"
    );

    let skip = FrontendOptions::from_attrs(&attrs(&[(
        "build-arg:BUILDKIT_DOCKERFILE_CHECK",
        "skip=MaintainerDeprecated;error=true",
    )]))
    .expect("a valid check configuration");
    // A malformed directive is not even read when the argument is set.
    let bad_directive = "# check=bogus\nFROM busybox\nMAINTAINER me\n";
    let built = plan(&source(bad_directive, &[]), &skip, &images)
        .await
        .expect("the skipped rule does not fail the build");
    assert!(built.warnings.is_empty(), "{:?}", built.warnings);

    let e = FrontendOptions::from_attrs(&attrs(&[(
        "build-arg:BUILDKIT_DOCKERFILE_CHECK",
        "error=maybe",
    )]))
    .expect_err("not a boolean");
    assert_eq!(
        e.to_string(),
        "failed to parse build-arg:BUILDKIT_DOCKERFILE_CHECK: failed to parse check option \"error=maybe\": strconv.ParseBool: parsing \"maybe\": invalid syntax"
    );
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn named_contexts_are_directories_or_images_and_other_kinds_fail_by_value() {
    let o = FrontendOptions::from_attrs(&attrs(&[
        ("context:base", "docker-image://alpine:3.20"),
        ("context:docker.io/library/busybox:latest", "local:bb"),
        ("context:tools", "local:tools"),
        ("context:empty", "docker-image://scratch"),
    ]))
    .expect("supported kinds");
    let key = |n: &str| kiln_dockerfile::context_key(n).expect("a name");
    assert_eq!(
        o.named_contexts.get(&key("base")),
        Some(&NamedContext::Image(
            "docker.io/library/alpine:3.20".to_string()
        ))
    );
    // Keyed like BuildKit's familiar names: `busybox` finds it.
    assert_eq!(
        o.named_contexts.get(&key("busybox")),
        Some(&NamedContext::Local {
            local: "bb".to_string(),
            excludes: Vec::new()
        })
    );
    assert_eq!(
        o.named_contexts.get(&key("empty")),
        Some(&NamedContext::Scratch)
    );
    assert_eq!(local_contexts(&o), ["bb", "tools"]);
    let mut o = o;
    set_context_excludes(&mut o, "tools", &["*.log".to_string()]);
    assert_eq!(
        o.named_contexts.get(&key("tools")),
        Some(&NamedContext::Local {
            local: "tools".to_string(),
            excludes: vec!["*.log".to_string()]
        })
    );

    // A frontend input: a placeholder source the caller replaces; with
    // an image config in its metadata, an image whose config it is.
    let o = FrontendOptions::from_attrs(&attrs(&[("context:base", "input:other")]))
        .expect("an input context");
    assert!(matches!(
        o.named_contexts.get(&key("base")),
        Some(NamedContext::Remote { op, name }) if op.identifier == "input://other" && name == "base"
    ));
    let config = base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        br#"{"architecture":"amd64","os":"linux","config":{"Env":["A=1"]},"rootfs":{"type":"layers","diff_ids":[]}}"#,
    );
    let o = FrontendOptions::from_attrs(&attrs(&[
        ("context:base", "input:other"),
        (
            "input-metadata:other",
            &format!(r#"{{"containerimage.config":"{config}"}}"#),
        ),
    ]))
    .expect("an input context with a config");
    assert_eq!(
        o.named_contexts.get(&key("base")),
        Some(&NamedContext::Image("input://other".to_string()))
    );
    let e = FrontendOptions::from_attrs(&attrs(&[
        ("context:base", "input:other"),
        ("input-metadata:other", "not json"),
    ]))
    .expect_err("bad metadata");
    assert!(
        e.to_string().contains("failed to parse input metadata"),
        "{e}"
    );
    // `target:` is bake's: it sends the target as an input instead.
    let e = FrontendOptions::from_attrs(&attrs(&[("context:base", "target:build")]))
        .expect_err("target:");
    assert_eq!(
        e.to_string(),
        "named build context base=\"target:build\" is not supported yet"
    );
    assert_eq!(e.kind(), ErrorKind::Unimplemented);
    // An OCI layout store's image, pinned by digest as buildx sends it.
    let digest = format!("sha256:{}", "a".repeat(64));
    let o = FrontendOptions::from_attrs(&attrs(&[(
        "context:base",
        &format!("oci-layout://s1:v1@{digest}"),
    )]))
    .expect("an oci-layout context");
    let layout = kiln_dockerfile::OciLayoutRef {
        store: "s1".into(),
        name: "base".into(),
        digest: digest.clone(),
    };
    assert_eq!(
        o.named_contexts.get(&key("base")),
        Some(&NamedContext::OciLayout(layout.clone()))
    );
    // BuildKit's source: the normalized name pinned, the store apart.
    let op = layout.to_op(None);
    assert_eq!(
        op.identifier,
        format!("oci-layout://docker.io/library/base@{digest}")
    );
    assert_eq!(op.attrs.get("oci.store").map(String::as_str), Some("s1"));
    assert_eq!(
        kiln_dockerfile::OciLayoutRef::from_key(&layout.key()),
        Some(layout)
    );
    let e = FrontendOptions::from_attrs(&attrs(&[("context:base", "oci-layout://s1:v1")]))
        .expect_err("no digest");
    assert!(
        e.to_string()
            .contains(r#"oci-layout reference "s1:v1" has no digest"#),
        "{e}"
    );
    for (name, value) in [
        ("base", "git:/not/a/repo"),
        ("base", "nocolon"),
        ("base", "docker-image://UPPER"),
        ("context", "local:x"),
        ("Bad", "local:x"),
    ] {
        let e = FrontendOptions::from_attrs(&attrs(&[(&format!("context:{name}"), value)]))
            .expect_err(value);
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    }
    // A platform-specific name is kept apart from the plain one, under
    // its normalized platform.
    let o = FrontendOptions::from_attrs(&attrs(&[
        ("context:base::linux/aarch64", "local:b"),
        ("context:base", "local:c"),
    ]))
    .expect("per-platform contexts");
    let arm = kiln_solver::Platform::new("linux", "arm64", "");
    let local = |l: &str| NamedContext::Local {
        local: l.to_string(),
        excludes: Vec::new(),
    };
    assert_eq!(
        o.named_contexts
            .get(&kiln_dockerfile::platform_context_key(&key("base"), &arm)),
        Some(&local("b"))
    );
    assert_eq!(o.named_contexts.get(&key("base")), Some(&local("c")));
    let e = FrontendOptions::from_attrs(&attrs(&[("context:base::linux/", "local:b")]))
        .expect_err("a bad platform");
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
}

/// Git and HTTP named contexts are sources, as BuildKit's frontend makes
/// them: a git reference is a checkout, another URL one file `context`.
#[test]
fn named_contexts_from_git_and_http() {
    let o = FrontendOptions::from_attrs(&attrs(&[
        ("context:src", "https://example.invalid/repo.git#v1:sub"),
        ("context:plain", "git://example.invalid/team/repo.git"),
        ("context:file", "https://example.invalid/ctx.tar.gz"),
    ]))
    .expect("remote contexts");
    let key = |n: &str| kiln_dockerfile::context_key(n).expect("a name");
    let remote = |n: &str| match o.named_contexts.get(&key(n)) {
        Some(NamedContext::Remote { op, name }) => (op.clone(), name.clone()),
        other => panic!("{n}: {other:?}"),
    };
    let (op, name) = remote("src");
    assert_eq!(name, "src");
    assert_eq!(op.identifier, "git://example.invalid/repo.git#v1:sub");
    assert_eq!(
        op.attrs.get("git.fullurl").map(String::as_str),
        Some("https://example.invalid/repo.git")
    );
    let (op, _) = remote("plain");
    assert_eq!(op.identifier, "git://example.invalid/team/repo.git");
    let (op, _) = remote("file");
    assert_eq!(op.identifier, "https://example.invalid/ctx.tar.gz");
    assert_eq!(
        op.attrs.get("http.filename").map(String::as_str),
        Some("context")
    );
    assert!(local_contexts(&o).is_empty());
    // A git repository over ssh is fetched with the client's default
    // agent, as BuildKit's `llb.Git` asks for it.
    let value = "git@example.invalid:team/repo.git";
    let o = FrontendOptions::from_attrs(&attrs(&[("context:ssh", value)])).expect("ssh");
    match o.named_contexts.get(&key("ssh")) {
        Some(NamedContext::Remote { op, .. }) => {
            assert_eq!(op.identifier, "git://example.invalid/team/repo.git");
            assert_eq!(
                op.attrs.get("git.mountsshsock").map(String::as_str),
                Some("default")
            );
        }
        other => panic!("ssh: {other:?}"),
    }
}

#[test]
fn a_named_directory_has_its_own_ignore_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    assert!(read_context_ignore(dir.path()).expect("none").is_empty());
    write(dir.path(), ".dockerignore", "# comment\n*.log\n!keep.log\n");
    assert_eq!(
        read_context_ignore(dir.path()).expect("read"),
        ["*.log", "!keep.log"]
    );
    write(dir.path(), ".dockerignore", "[\n");
    let e = read_context_ignore(dir.path()).expect_err("an unusable pattern");
    assert!(
        e.to_string().starts_with("cannot read .dockerignore: "),
        "{e}"
    );
}

#[test]
fn the_context_attribute_names_a_git_or_http_context() {
    use crate::remote::RemoteKind;
    let o =
        FrontendOptions::from_attrs(&attrs(&[("context", "git://127.0.0.1:9/repo.git#v1:app")]))
            .expect("git");
    let r = o.remote_context.expect("remote");
    let RemoteKind::Git(g) = &r.kind else {
        panic!("not git: {r:?}")
    };
    assert_eq!((g.reference.as_str(), g.subdir.as_str()), ("v1", "app"));
    assert!(!g.keep_git_dir);
    assert_eq!(
        r.vertex_name(),
        "[internal] load git source git://127.0.0.1:9/repo.git#v1:app"
    );
    let o = FrontendOptions::from_attrs(&attrs(&[(
        "context",
        "https://example.com/r.git?ref=main&subdir=d&keep-git-dir=1",
    )]))
    .expect("query form");
    let Some(RemoteKind::Git(g)) = o.remote_context.map(|r| r.kind) else {
        panic!("not git")
    };
    assert_eq!(
        (g.reference.as_str(), g.subdir.as_str(), g.keep_git_dir),
        ("main", "d", true)
    );
    let o = FrontendOptions::from_attrs(&attrs(&[("context", "https://example.com/c.tgz")]))
        .expect("http");
    assert_eq!(
        o.remote_context.map(|r| r.kind),
        Some(RemoteKind::Http { archive: false })
    );
    let o = FrontendOptions::from_attrs(&attrs(&[("context", "git@example.com:o/r.git#v1")]))
        .expect("ssh");
    match o.remote_context.map(|r| r.kind) {
        Some(RemoteKind::Git(g)) => {
            assert_eq!(g.remote, "git@example.com:o/r.git");
            assert_eq!(g.mount_ssh_sock, "default");
        }
        other => panic!("ssh: {other:?}"),
    }
    let e = FrontendOptions::from_attrs(&attrs(&[("context", "some/dir")])).expect_err("a path");
    assert!(matches!(e, FrontendError::InvalidAttribute { .. }), "{e}");
}

#[test]
fn keep_git_dir_and_source_date_epoch_apply_to_a_git_context() {
    use crate::remote::RemoteKind;
    let git = |extra: &[(&str, &str)], url: &str| {
        let mut pairs = vec![("context", url)];
        pairs.extend_from_slice(extra);
        match FrontendOptions::from_attrs(&attrs(&pairs))
            .expect("options")
            .remote_context
            .map(|r| r.kind)
        {
            Some(RemoteKind::Git(g)) => g,
            other => panic!("not git: {other:?}"),
        }
    };
    let url = "git://h/r.git";
    let g = git(&[("build-arg:BUILDKIT_CONTEXT_KEEP_GIT_DIR", "true")], url);
    assert!(g.keep_git_dir);
    let g = git(&[("build-arg:BUILDKIT_CONTEXT_KEEP_GIT_DIR", "maybe")], url);
    assert!(!g.keep_git_dir, "not a boolean: no choice, as BuildKit");
    let g = git(&[("build-arg:SOURCE_DATE_EPOCH", "10")], url);
    assert_eq!(g.mtime, "commit");
    let g = git(
        &[("build-arg:SOURCE_DATE_EPOCH", "10")],
        "git://h/r.git?mtime=checkout",
    );
    assert_eq!(g.mtime, "checkout", "the URL's own mtime wins");
    // Without a git context the argument changes nothing.
    FrontendOptions::from_attrs(&attrs(&[("build-arg:BUILDKIT_CONTEXT_KEEP_GIT_DIR", "1")]))
        .expect("no effect on a local context");
}

#[tokio::test]
async fn a_remote_context_replaces_the_local_source_in_the_graph() {
    let images = FakeImages {
        configs: BTreeMap::from([(
            "docker.io/library/busybox:latest".to_string(),
            ImageConfig::default(),
        )]),
        ..Default::default()
    };
    let text = "FROM busybox\nCOPY . /src\nRUN ls /src\n";
    for (url, archive) in [
        ("git://h/r.git#main", false),
        ("https://h/ctx.tar.gz", true),
    ] {
        let mut opts = FrontendOptions::from_attrs(&attrs(&[("context", url)])).expect("opts");
        if let Some(r) = &mut opts.remote_context {
            if let crate::remote::RemoteKind::Http { archive: a } = &mut r.kind {
                *a = archive;
            }
        }
        let local = plan(&source(text, &[]), &FrontendOptions::default(), &images)
            .await
            .expect("local plan");
        let build = plan(&source(text, &[]), &opts, &images)
            .await
            .expect("remote plan");
        assert!(
            !build
                .graph
                .vertices
                .iter()
                .any(|v| matches!(&v.op, Op::Source(s) if s.identifier.starts_with("local://"))),
            "{url}: no local source left"
        );
        assert_eq!(
            build.graph.vertices.len(),
            local.graph.vertices.len() + usize::from(archive),
            "{url}"
        );
        // Every edge points backwards and the result is the last RUN.
        for (i, v) in build.graph.vertices.iter().enumerate() {
            assert!(v.inputs.iter().all(|e| e.vertex.0 < i), "{url}");
        }
        assert!(
            matches!(build.graph.vertex(build.result).op, Op::Exec(_)),
            "{url}"
        );
        let copy_input = build
            .graph
            .vertices
            .iter()
            .find(|v| v.name.contains("COPY . /src"))
            .expect("the COPY")
            .inputs
            .iter()
            .map(|e| build.graph.vertex(e.vertex).name.clone())
            .collect::<Vec<_>>();
        let want = if archive {
            "copy /context /"
        } else {
            "[internal] load git source git://h/r.git#main"
        };
        assert!(
            copy_input.iter().any(|n| n == want),
            "{url}: {copy_input:?}"
        );
        // The fetch before planning shows as the build's own vertices.
        let digests: Vec<String> = build
            .graph
            .definition_digests()
            .iter()
            .map(|d| d.to_string())
            .collect();
        let remote = opts.remote_context.as_ref().expect("remote");
        for (name, digest, _) in remote.vertices() {
            assert!(digests.contains(&digest), "{url}: {name} {digest}");
        }
    }
}

/// `contextsubdir` scopes a fetched context to one of its directories
/// with BuildKit's copy of the directory's contents onto scratch; it is
/// refused with the client's directory as the context (BuildKit passes
/// that over unscoped); a path is cleaned against the context's root.
#[tokio::test]
async fn contextsubdir_scopes_a_remote_context() {
    let images = FakeImages {
        configs: BTreeMap::from([(
            "docker.io/library/busybox:latest".to_string(),
            ImageConfig::default(),
        )]),
        ..Default::default()
    };
    let text = "FROM busybox\nCOPY . /src\n";
    let opts = FrontendOptions::from_attrs(&attrs(&[
        ("context", "git://h/r.git#main"),
        ("contextsubdir", "./sub//dir/"),
    ]))
    .expect("opts");
    assert_eq!(opts.context_subdir.as_deref(), Some("sub/dir"));
    let build = plan(&source(text, &[]), &opts, &images)
        .await
        .expect("plan");
    let copy = build
        .graph
        .vertices
        .iter()
        .find(|v| v.name.contains("COPY . /src"))
        .expect("the COPY");
    let scoped = copy
        .inputs
        .iter()
        .map(|e| build.graph.vertex(e.vertex))
        .find(|v| v.name == "copy /sub/dir /")
        .expect("the COPY reads the scoped context");
    let Op::File(f) = &scoped.op else {
        panic!("not a file op: {scoped:?}")
    };
    let kiln_solver::graph::FileActionKind::Copy(c) = &f.actions[0].action else {
        panic!("not a copy")
    };
    assert_eq!((c.src.as_str(), c.dest.as_str()), ("/sub/dir", "/"));
    assert!(c.dir_copy_contents);
    assert_eq!(
        build.graph.vertex(scoped.inputs[0].vertex).name,
        "[internal] load git source git://h/r.git#main"
    );

    let o = FrontendOptions::from_attrs(&attrs(&[
        ("context", "git://h/r.git"),
        ("contextsubdir", "a/../b"),
    ]))
    .expect("inside");
    assert_eq!(o.context_subdir.as_deref(), Some("b"));
    for whole in ["", ".", "/", "a/.."] {
        let o = FrontendOptions::from_attrs(&attrs(&[
            ("context", "git://h/r.git"),
            ("contextsubdir", whole),
        ]))
        .expect("the whole context");
        assert_eq!(o.context_subdir, None, "{whole:?}");
    }
    let e = FrontendOptions::from_attrs(&attrs(&[("contextsubdir", "sub")]))
        .expect_err("a local context");
    assert_eq!(
        e.to_string(),
        "contextsubdir with the client's directory as the context (it scopes a git or HTTP \
         context) is not supported yet"
    );
    let o = FrontendOptions::from_attrs(&attrs(&[
        ("context", "git://h/r.git"),
        ("contextsubdir", "../up"),
    ]))
    .expect("clamped");
    assert_eq!(o.context_subdir.as_deref(), Some("up"));
}

#[test]
fn archives_are_told_from_other_files_as_buildkit_does() {
    use crate::remote::is_archive;
    assert!(is_archive(&[0x1f, 0x8b, 0x08, 0]));
    assert!(is_archive(b"BZh91AY"));
    assert!(is_archive(&[0xfd, b'7', b'z', b'X', b'Z', 0, 1]));
    let mut h = vec![0u8; 512];
    h[..5].copy_from_slice(b"a.txt");
    h[100..107].copy_from_slice(b"0000644");
    h[124..135].copy_from_slice(b"00000000000");
    h[156] = b'0';
    let sum: u32 = h.iter().map(|&c| u32::from(c)).sum::<u32>() + 8 * 32;
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
    assert!(is_archive(&h), "a v7 tar header");
    assert!(!is_archive(b"FROM busybox\nRUN true\n"));
    assert!(!is_archive(&[0u8; 600]), "zeros are no header");
}

#[test]
fn required_frontend_caps_are_checked() {
    FrontendOptions::from_attrs(&attrs(&[(
        "frontend.caps",
        "moby.buildkit.frontend.contexts,moby.buildkit.frontend.gitquerystring,moby.buildkit.frontend.subrequests+forward",
    )]))
    .expect("caps kiln has");
    for caps in [
        "moby.buildkit.frontend.notexistcap+forward",
        "moby.buildkit.frontend.gitquerystring,moby.buildkit.frontend.notexistcap",
    ] {
        let e = FrontendOptions::from_attrs(&attrs(&[("frontend.caps", caps)])).expect_err(caps);
        assert!(
            matches!(&e, FrontendError::Unsupported { what } if what.starts_with("frontend capability moby.buildkit.frontend.")),
            "{e}"
        );
    }
}

/// Which source op `SOURCE_DATE_EPOCH` asks the engine about: the remote
/// main context's, a remote named context's, a source stage's ADD; none
/// for a local context or directory; a frontend input is refused.
#[test]
fn source_date_epoch_names_the_source_to_fetch() {
    use kiln_dockerfile::EpochSource;
    let df = source("FROM scratch\nCOPY a /a\n", &[]);
    let attrs = |pairs: &[(&str, &str)]| {
        FrontendOptions::from_attrs(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
        .expect("attrs")
    };
    // `context`, local: nothing to fetch.
    let local = attrs(&[("build-arg:SOURCE_DATE_EPOCH", "context")]);
    let named = crate::epoch::source(&df, &local).expect("source");
    assert_eq!(named, Some(EpochSource::Context));
    assert_eq!(
        crate::epoch::source_op(&EpochSource::Context, &local).expect("op"),
        None
    );
    // `context`, a git URL: its checkout, dated by its commit.
    let git = attrs(&[
        ("build-arg:SOURCE_DATE_EPOCH", "context"),
        ("context", "git://127.0.0.1/repo.git#main"),
    ]);
    let op = crate::epoch::source_op(&EpochSource::Context, &git)
        .expect("op")
        .expect("a git op");
    let g = kiln_solver::source::GitSource::from_op(&op)
        .expect("git")
        .expect("git");
    assert_eq!(g.remote, "git://127.0.0.1/repo.git");
    assert_eq!(g.mtime, "commit");
    // A named HTTP context; a named directory has no time.
    let http = attrs(&[
        ("build-arg:SOURCE_DATE_EPOCH", "src"),
        ("context:src", "https://example.com/src.tar"),
    ]);
    let named = crate::epoch::source(&df, &http)
        .expect("source")
        .expect("named");
    let op = crate::epoch::source_op(&named, &http)
        .expect("op")
        .expect("an http op");
    assert_eq!(op.identifier, "https://example.com/src.tar");
    let dir = attrs(&[
        ("build-arg:SOURCE_DATE_EPOCH", "src"),
        ("context:src", "local:srcdir"),
    ]);
    let named = crate::epoch::source(&df, &dir)
        .expect("source")
        .expect("named");
    assert_eq!(crate::epoch::source_op(&named, &dir).expect("op"), None);
    let input = attrs(&[
        ("build-arg:SOURCE_DATE_EPOCH", "src"),
        ("context:src", "input:src"),
    ]);
    let named = crate::epoch::source(&df, &input)
        .expect("source")
        .expect("named");
    assert_eq!(
        crate::epoch::source_op(&named, &input)
            .expect_err("refused")
            .to_string(),
        "SOURCE_DATE_EPOCH=src (the time of a frontend input) is not supported yet"
    );
}

/// The build checks do not fetch a source SOURCE_DATE_EPOCH names (no
/// check reads its value), but still refuse a stage that is not one.
#[tokio::test]
async fn checks_do_not_fetch_the_epochs_source() {
    let images = FakeImages::default();
    let opts = FrontendOptions::default();
    let ok = source(
        "ARG SOURCE_DATE_EPOCH=src\nFROM scratch AS src\nADD https://example.com/a.tar /\nFROM scratch\nCOPY a /a\n",
        &[],
    );
    let report = crate::check::check(&ok, &opts, &images).await;
    assert_eq!(report.error, None);
    let bad = source(
        "ARG SOURCE_DATE_EPOCH=src\nFROM scratch AS src\nRUN true\nFROM scratch\n",
        &[],
    );
    let report = crate::check::check(&bad, &opts, &images).await;
    assert_eq!(
        report.error,
        // BuildKit's `buildError`: the line apart from the message.
        Some((
            "SOURCE_DATE_EPOCH stage does not meet source-only requirements: unsupported RUN instruction".to_string(),
            Some(2)
        ))
    );
}

/// The steps of a multi-platform build are named with their stage's
/// platform (and the target's, for a `$BUILDPLATFORM` stage declaring
/// `TARGETARCH`), and a step equal in both platforms' builds is one
/// vertex, as in BuildKit.
#[tokio::test]
async fn multi_platform_steps_are_named_by_their_stage_and_merged_when_equal() {
    let (images, host, other, opts) = two_platforms();
    let other_arch = &other["linux/".len()..];
    let text = "FROM --platform=$BUILDPLATFORM busybox AS build\nARG TARGETARCH\n\
                RUN echo $TARGETARCH > /arch\n\
                FROM --platform=$BUILDPLATFORM busybox AS common\nRUN echo common > /c\n\
                FROM scratch\nCOPY --from=build /arch /arch\nCOPY --from=common /c /c\n";
    let built = plan_all(&source(text, &[]), &opts, &images)
        .await
        .expect("plans");
    let (graph, targets) = merge_platforms(built).expect("merges");
    assert_eq!(targets.len(), 2);
    assert_ne!(targets[0].result, targets[1].result);
    let mut names: Vec<String> = graph.vertices.iter().map(|v| v.name.clone()).collect();
    names.sort();
    let host_arch = &host.architecture;
    let mut want = vec![
        // Both stages' FROM: one vertex, named as BuildKit names it.
        format!("[{host} common 1/2] FROM docker.io/library/busybox:latest"),
        format!("[{host} build 2/2] RUN echo {host_arch} > /arch"),
        format!("[{host}->{other_arch} build 2/2] RUN echo {other_arch} > /arch"),
        format!("[{host} common 2/2] RUN echo common > /c"),
        format!("[{host} stage-2 1/2] COPY --from=build /arch /arch"),
        format!("[{host} stage-2 2/2] COPY --from=common /c /c"),
        format!("[{other} stage-2 1/2] COPY --from=build /arch /arch"),
        format!("[{other} stage-2 2/2] COPY --from=common /c /c"),
    ];
    want.sort();
    assert_eq!(names, want);
}
