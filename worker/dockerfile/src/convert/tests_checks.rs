//! The build checks the converter runs (see `checks`), with BuildKit's
//! rule names and texts.

use super::*;
use crate::parse;

/// The warnings of converting `src` (every base an empty config), as
/// `Rule: message (line N)`.
fn warnings_with(src: &str, opts: &BuildOptions) -> Vec<String> {
    let df = parse(src, &opts.filename).expect("parses");
    let bases = df
        .base_images(opts)
        .expect("bases")
        .into_iter()
        .map(|r| (r, ImageConfig::default()))
        .collect();
    let b = to_graph(&df, opts, &bases).expect("converts");
    b.warnings.iter().map(ToString::to_string).collect()
}

fn warnings(src: &str) -> Vec<String> {
    warnings_with(src, &BuildOptions::default())
}

#[test]
fn undefined_var_names_the_variable_and_a_close_one() {
    assert_eq!(
        warnings("FROM busybox\nENV APP_HOME=/x\nCOPY $APP_HOM /d\nRUN echo $NOT_CHECKED\n"),
        vec!["UndefinedVar: Usage of undefined variable '$APP_HOM' (did you mean $APP_HOME?) (line 3)"]
    );
    // Declared ARGs (with or without a value), ENV, the base's env, and the
    // default forms that still look the name up.
    assert_eq!(
        warnings(
            "FROM busybox\nARG A\nARG B=1\nENV C=2\nWORKDIR /$A$B$C$PATH\nUSER ${USERNAME:-root}\n"
        ),
        vec!["UndefinedVar: Usage of undefined variable '$USERNAME' (line 6)"]
    );
    // An ENV value sees the env from before the instruction.
    assert_eq!(
        warnings("FROM busybox\nENV X=1 Y=$X\n"),
        vec!["UndefinedVar: Usage of undefined variable '$X' (line 2)"]
    );
    // `--exclude` is not expanded by BuildKit, so not checked.
    assert!(warnings("FROM busybox\nCOPY --exclude=$E . /d\n").is_empty());
    // A mount option is.
    assert_eq!(
        warnings("FROM busybox\nRUN --mount=type=cache,target=/c$CACHE true\n"),
        vec!["UndefinedVar: Usage of undefined variable '$CACHE' (line 2)"]
    );
}

#[test]
fn from_args_must_be_declared() {
    assert_eq!(
        warnings("ARG IMAGE_SUFFIX\nFROM busybox$IMAGE_SUFIX\nFROM busybox${IMAGE_SUFFIX}\n"),
        vec![
            "UndefinedArgInFrom: FROM argument 'IMAGE_SUFIX' is not declared (did you mean IMAGE_SUFFIX?) (line 2)",
        ]
    );
    // Declared without a value: a --build-arg gives it; only the
    // default-value check warns.
    let mut o = BuildOptions::default();
    o.build_args.insert("TAG".into(), "latest".into());
    assert_eq!(
        warnings_with("ARG TAG\nFROM busybox:${TAG}\n", &o),
        vec!["InvalidDefaultArgInFrom: Default value for ARG busybox:${TAG} results in empty or invalid base image name (line 2)"]
    );
    assert!(warnings("FROM --platform=$BUILDPLATFORM busybox\n").is_empty());
}

#[test]
fn platform_flag_checks() {
    assert_eq!(
        warnings("FROM --platform=$TARGETPLATFORM busybox\n"),
        vec!["RedundantTargetPlatform: Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior (line 1)"]
    );
    let host = BuildOptions::default().build_platform();
    let constant = format!("{}/{}", host.os, host.architecture);
    assert_eq!(
        warnings(&format!("FROM --platform={constant} busybox AS build\n")),
        vec![format!(
            "FromPlatformFlagConstDisallowed: FROM --platform flag should not use constant value \"{constant}\" (line 1)"
        )]
    );
    // The stage's name says which platform: allowed.
    assert!(warnings(&format!(
        "FROM --platform={constant} busybox AS build-{}\n",
        host.architecture
    ))
    .is_empty());
}

#[test]
fn secrets_in_arg_or_env() {
    assert_eq!(
        warnings(
            "FROM busybox\nARG GITHUB_TOKEN\nENV db_Password=x AUTH=y\nARG PUBLIC_KEY KEYS TOKENIZER\nENV SECRET_FILE=/s\n"
        ),
        vec![
            "SecretsUsedInArgOrEnv: Do not use ARG or ENV instructions for sensitive data (ARG \"GITHUB_TOKEN\") (line 2)",
            "SecretsUsedInArgOrEnv: Do not use ARG or ENV instructions for sensitive data (ENV \"db_Password\") (line 3)",
            "SecretsUsedInArgOrEnv: Do not use ARG or ENV instructions for sensitive data (ENV \"AUTH\") (line 3)",
        ]
    );
}

#[test]
fn expose_with_a_host_part() {
    assert_eq!(
        warnings("FROM busybox\nEXPOSE 80 8080:80 127.0.0.1:53:53/udp\n"),
        vec![
            "ExposeInvalidFormat: EXPOSE instruction should not define an IP address or host-port mapping, found '127.0.0.1:53:53/udp' (line 2)",
            "ExposeInvalidFormat: EXPOSE instruction should not define an IP address or host-port mapping, found '8080:80' (line 2)",
        ]
    );
}

#[test]
fn converter_checks_follow_check_directives() {
    assert!(warnings("# check=skip=UndefinedVar\nFROM busybox\nUSER $U\n").is_empty());
    assert!(warnings("FROM busybox\n# check=skip=UndefinedVar\nUSER $U\n").is_empty());
    assert_eq!(
        warnings("FROM busybox\n# check=skip=UndefinedVar\nUSER $U\nWORKDIR /$W\n"),
        vec!["UndefinedVar: Usage of undefined variable '$W' (line 4)"]
    );
    let df = parse("# check=error=true\nFROM busybox\nUSER $U\n", "Dockerfile").expect("parses");
    let bases = df
        .base_images(&BuildOptions::default())
        .expect("bases")
        .into_iter()
        .map(|r| (r, ImageConfig::default()))
        .collect();
    let err = to_graph(&df, &BuildOptions::default(), &bases).expect_err("fails");
    assert_eq!(
        err.to_string(),
        "Dockerfile: lint violation found for rules: UndefinedVar"
    );
}

#[test]
fn a_duplicate_stage_name_warns_and_references_take_the_last() {
    assert_eq!(
        warnings("FROM busybox AS b\nFROM scratch AS b\nFROM b\n"),
        vec![
            "DuplicateStageName: Duplicate stage name \"b\", stage names should be unique (line 2)"
        ]
    );
    // `FROM b` is the second `b` (scratch): no image but busybox's.
    let df = parse(
        "FROM busybox AS b\nFROM scratch AS b\nFROM b\n",
        "Dockerfile",
    )
    .expect("parses");
    assert_eq!(
        df.base_images(&BuildOptions::default()).expect("bases"),
        Vec::<String>::new()
    );
}

#[test]
fn a_base_image_for_another_platform_is_named() {
    let arm = kiln_solver::Platform::new("linux", "arm64", "");
    let layered = |p: Option<kiln_solver::Platform>| ImageConfig {
        base_platform: p,
        base_diff_ids: vec![format!("sha256:{}", "a".repeat(64))],
        ..ImageConfig::default()
    };
    let check = |src: &str, opts: &BuildOptions, cfg: ImageConfig| -> Vec<String> {
        let df = parse(src, &opts.filename).expect("parses");
        let bases = df
            .base_image_refs(opts)
            .expect("bases")
            .into_iter()
            .map(|r| (r.key(), cfg.clone()))
            .collect();
        let b = to_graph(&df, opts, &bases).expect("converts");
        b.warnings.iter().map(ToString::to_string).collect()
    };
    let opts = BuildOptions::default();
    let src = "ARG V=1.0\nFROM example.com/app:$V\nRUN true\n";
    assert_eq!(
        check(src, &opts, layered(Some(arm.clone()))),
        vec![
            "InvalidBaseImagePlatform: Base image example.com/app:1.0 was pulled with platform \"linux/arm64\", expected \"linux/amd64\" for current build (line 2)"
        ]
    );
    // The same OS and architecture (a variant alone does not count), an
    // image without layers, and a config naming no platform pass.
    let host = kiln_solver::Platform::new("linux", "amd64", "v2");
    assert!(check(src, &opts, layered(Some(host))).is_empty());
    let scratch = ImageConfig {
        base_platform: Some(arm.clone()),
        ..ImageConfig::default()
    };
    assert!(check(src, &opts, scratch).is_empty());
    assert!(check(src, &opts, layered(None)).is_empty());
    // A stage the target does not need, and a named context, are not
    // checked (BuildKit checks reachable images it resolved itself).
    assert!(check(
        "FROM example.com/app:1 AS unused\nFROM busybox AS last\n",
        &BuildOptions::default(),
        layered(Some(kiln_solver::Platform::new("linux", "amd64", "")))
    )
    .is_empty());
    let unused = check(
        "FROM example.com/other AS unused\nFROM busybox\n",
        &opts,
        layered(Some(arm.clone())),
    );
    assert_eq!(unused.len(), 1, "{unused:?}");
    assert!(unused[0].contains("Base image busybox"), "{unused:?}");
    let mut named = BuildOptions::default();
    named.named_contexts.insert(
        crate::context_key("base").expect("a name"),
        NamedContext::Image("docker.io/library/busybox:latest".into()),
    );
    assert!(check("FROM base\n", &named, layered(Some(arm))).is_empty());
}

#[test]
fn undefined_vars_in_copy_heredocs_are_named_as_buildkit_does() {
    // BuildKit expands a COPY/ADD heredoc with an unquoted delimiter and
    // checks what it looks up; a quoted one is copied as written, and a
    // RUN heredoc is left to the shell.
    assert_eq!(
        warnings("FROM busybox\nARG A=1\nENV HOME_DIR=/h\nCOPY <<EOF /f\n$A $HOME_DIRR\nEOF\n"),
        vec!["UndefinedVar: Usage of undefined variable '$HOME_DIRR' (did you mean $HOME_DIR?) (line 4)"]
    );
    assert!(warnings("FROM busybox\nCOPY <<\"EOF\" /f\n$NOPE\nEOF\n").is_empty());
    assert!(warnings("FROM busybox\nRUN <<EOF\necho $NOPE\nEOF\n").is_empty());
    assert_eq!(
        warnings("FROM busybox\nADD <<EOF /f\n${NOPE:-x}\nEOF\n"),
        vec!["UndefinedVar: Usage of undefined variable '$NOPE' (line 2)"]
    );
}

#[test]
fn without_a_target_platform_a_stage_is_built_for_its_images_platform_when_the_worker_runs_it() {
    let arm = kiln_solver::Platform::new("linux", "arm64", "");
    let amd = kiln_solver::Platform::new("linux", "amd64", "");
    let cfg = ImageConfig {
        base_platform: Some(arm.clone()),
        base_diff_ids: vec![format!("sha256:{}", "a".repeat(64))],
        ..ImageConfig::default()
    };
    // As the frontend resolves bases: until no new one appears.
    let convert = |o: &BuildOptions, src: &str| {
        let df = parse(src, &o.filename).expect("parses");
        let mut bases = BTreeMap::new();
        loop {
            let new: Vec<_> = df
                .base_image_refs_with(o, &bases)
                .expect("bases")
                .into_iter()
                .filter(|b| !bases.contains_key(&b.key()))
                .collect();
            if new.is_empty() {
                break;
            }
            for b in new {
                bases.insert(b.key(), cfg.clone());
            }
        }
        to_graph(&df, o, &bases).expect("converts")
    };
    let source_platform = |b: &Build| {
        b.graph
            .vertices
            .iter()
            .find_map(|v| match &v.op {
                Op::Source(s) => Some(s.platform.clone()),
                _ => None,
            })
            .expect("a source")
    };
    let src = "FROM example.com/arm-only\nLABEL a=b\n";
    let runs_arm = BuildOptions {
        worker_platforms: vec![amd.clone(), arm.clone()],
        ..BuildOptions::default()
    };
    let b = convert(&runs_arm, src);
    assert_eq!(source_platform(&b), Some(arm.clone()));
    assert_eq!(b.config.platform, Some(arm.clone()));
    assert!(b.warnings.is_empty(), "{:?}", b.warnings);
    // A worker that cannot run it builds for its own platform, and says so.
    let b = convert(
        &BuildOptions {
            worker_platforms: vec![amd.clone()],
            ..BuildOptions::default()
        },
        src,
    );
    assert_eq!(source_platform(&b), None);
    assert_eq!(b.config.platform, None);
    assert_eq!(b.warnings.len(), 1, "{:?}", b.warnings);
    // An explicit platform, of the build or of FROM, is kept.
    let explicit = BuildOptions {
        target_platform: Some(amd.clone()),
        ..runs_arm.clone()
    };
    assert_eq!(source_platform(&convert(&explicit, src)), None);
    let from = convert(
        &runs_arm,
        "FROM --platform=linux/amd64 example.com/arm-only\n",
    );
    assert_eq!(source_platform(&from), None);
}

#[test]
fn dispatch_rules_are_reported_for_the_stages_built_only() {
    let src =
        "FROM busybox AS a\nCMD x\nFROM busybox AS b\nCMD x\nCMD y\nLABEL k v\nMAINTAINER me\n";
    let only_a = BuildOptions {
        target: Some("a".into()),
        ..Default::default()
    };
    // Stage b is not built: its CMD and LABEL rules are BuildKit's
    // dispatch-time ones; MaintainerDeprecated is a parse-time one.
    assert_eq!(
        warnings_with(src, &only_a),
        vec![
            "JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended behavior related to OS signals (line 2)",
            "MaintainerDeprecated: Maintainer instruction is deprecated in favor of using label (line 7)",
        ]
    );
    // A lint of every stage reports them all.
    let all = BuildOptions {
        all_stages: true,
        ..Default::default()
    };
    assert_eq!(warnings_with(src, &all).len(), 6);
}

/// The warnings a failed conversion carries ([`ParseError::Checked`]),
/// as `Rule: message (line N)`, and the error.
fn failure(src: &str) -> (Vec<String>, String) {
    let opts = BuildOptions::default();
    let df = parse(src, &opts.filename).expect("parses");
    let bases: BTreeMap<String, ImageConfig> = match df.base_images(&opts) {
        Ok(refs) => refs
            .into_iter()
            .map(|r| (r, ImageConfig::default()))
            .collect(),
        Err(e) => return split(e),
    };
    split(to_graph(&df, &opts, &bases).expect_err("fails"))
}

fn split(e: ParseError) -> (Vec<String>, String) {
    let text = e.to_string();
    let warnings = match e {
        ParseError::Checked { warnings, .. } => warnings.iter().map(ToString::to_string).collect(),
        _ => Vec::new(),
    };
    (warnings, text)
}

/// A build that fails reports the checks BuildKit ran before the failure
/// (it prints each as it finds it): those of every `FROM` line and of the
/// file before a base name fails, and the converter's up to a failing
/// instruction; a lint failure lists what it failed for.
#[test]
fn a_failure_carries_the_warnings_found_before_it() {
    let (w, e) = failure(
        "ARG BASEX\nFROM busybox as Builder\nFROM --platform=linux/amd64 busybox AS plat\nFROM $UNDEFARG AS last\n",
    );
    assert_eq!(e, "Dockerfile:4: base name ($UNDEFARG) should not be blank");
    assert_eq!(
        w,
        [
            "StageNameCasing: Stage name 'Builder' should be lowercase (line 2)",
            "FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 2)",
            "FromPlatformFlagConstDisallowed: FROM --platform flag should not use constant value \"linux/amd64\" (line 3)",
            "InvalidDefaultArgInFrom: Default value for ARG $UNDEFARG results in empty or invalid base image name (line 4)",
            "UndefinedArgInFrom: FROM argument 'UNDEFARG' is not declared (line 4)",
        ]
    );
    let (w, e) =
        failure("FROM busybox\nWORKDIR /$NOPE\nENV h2=\"${u:?is unset}\"\nWORKDIR /$LATER\n");
    assert_eq!(
        e,
        "Dockerfile:3: failed to process \"\\\"${u:?is unset}\\\"\": u: is unset"
    );
    // The failing line's own lookups too, as BuildKit reports them.
    assert_eq!(
        w,
        [
            "UndefinedVar: Usage of undefined variable '$NOPE' (line 2)",
            "UndefinedVar: Usage of undefined variable '$u' (line 3)"
        ]
    );
    // The checks of a stage the target does not need are not reported.
    let (w, _) = failure("FROM busybox AS unused\nCMD echo hi\nFROM busybox\nENV h=\"${u:?x}\"\n");
    assert_eq!(
        w,
        ["UndefinedVar: Usage of undefined variable '$u' (line 4)"]
    );
    let (w, e) = failure("# check=error=true\nFROM busybox as x\n");
    assert_eq!(
        e,
        "Dockerfile: lint violation found for rules: FromAsCasing"
    );
    assert_eq!(
        w,
        ["FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 2)"]
    );
}
