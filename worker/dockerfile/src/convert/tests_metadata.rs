//! HEALTHCHECK, ONBUILD, MAINTAINER and CMD's config fields, and the
//! fields of a base image config the result keeps.

use super::*;
use crate::parse;

/// Converts `src` with every base image given `base`.
fn build_with(src: &str, base: &ImageConfig) -> Result<Build> {
    let opts = BuildOptions::default();
    let df = parse(src, &opts.filename)?;
    let bases = df
        .base_images(&opts)?
        .into_iter()
        .map(|r| (r, base.clone()))
        .collect();
    to_graph(&df, &opts, &bases)
}

fn names(b: &Build) -> Vec<String> {
    b.graph
        .needed_for(b.result)
        .iter()
        .map(|id| b.graph.vertex(*id).name.clone())
        .collect()
}

fn created_by(c: &ImageConfig) -> Vec<&str> {
    c.history.iter().map(|h| h.created_by.as_str()).collect()
}

#[test]
fn base_fields_are_kept_and_its_triggers_run_after_from() {
    let base = ImageConfig {
        env: vec!["PATH=/bin".into()],
        healthcheck: Some(kiln_solver::Healthcheck {
            test: vec!["CMD-SHELL".into(), "true".into()],
            interval: 5_000_000_000,
            ..Default::default()
        }),
        on_build: vec!["RUN echo one".into(), "ENV FROM_TRIGGER=yes".into()],
        args_escaped: true,
        author: "base author".into(),
        variant: "v8".into(),
        os_version: "1.0".into(),
        os_features: vec!["f".into()],
        ..Default::default()
    };
    let b = build_with("FROM img\nRUN echo two\n", &base).expect("builds");
    // The triggers come first, named ONBUILD, located at the FROM line.
    assert_eq!(
        names(&b),
        [
            "[1/3] FROM docker.io/library/img:latest",
            "[2/3] ONBUILD RUN echo one",
            "[3/3] RUN echo two"
        ]
    );
    let run = b.graph.vertex(VertexId(1));
    assert_eq!(run.location.as_ref().map(|l| l.line), Some(1));
    let Op::Exec(e) = &b.graph.vertex(b.result).op else {
        panic!("the result is the second RUN");
    };
    assert!(e.meta.env.contains(&"FROM_TRIGGER=yes".to_string()));
    let c = &b.config;
    assert_eq!(
        created_by(c),
        [
            "RUN /bin/sh -c echo one # buildkit",
            "ENV FROM_TRIGGER=yes",
            "RUN /bin/sh -c echo two # buildkit"
        ]
    );
    // Consumed triggers are not passed on; everything else is.
    assert!(c.on_build.is_empty());
    assert_eq!(c.healthcheck, base.healthcheck);
    assert!(c.args_escaped);
    assert_eq!(
        (c.author.as_str(), c.variant.as_str(), c.os_version.as_str()),
        ("base author", "v8", "1.0")
    );
    assert_eq!(c.os_features, ["f"]);
}

/// An image's MAINTAINER or ONBUILD trigger runs like any other (only
/// the ONBUILD line refuses them).
#[test]
fn a_base_images_maintainer_and_onbuild_triggers_run() {
    let base = ImageConfig {
        on_build: vec!["MAINTAINER me".into(), "ONBUILD ENV A=1".into()],
        ..Default::default()
    };
    let b = build_with("FROM img\n", &base).expect("converts");
    assert_eq!(b.config.author, "me");
    assert_eq!(b.config.on_build, ["ENV A=1"]);
}

#[test]
fn a_bad_base_trigger_fails_at_the_from_line() {
    for (trigger, want) in [
        ("NOPE x", "Dockerfile:2: unknown instruction: NOPE"),
        (
            "COPY x",
            "Dockerfile:2: COPY requires at least two arguments",
        ),
        // BuildKit's parser finds no instruction in these ...
        ("", "Dockerfile:2: file with no instructions"),
        (
            "# only a comment",
            "Dockerfile:2: file with no instructions",
        ),
        // ... more than one here ...
        (
            "ENV A=1\nENV B=2",
            "Dockerfile:2: onbuild trigger should be a single expression",
        ),
        (
            "FROM a\nENV B=2",
            "Dockerfile:2: onbuild trigger should be a single expression",
        ),
        // ... and a FROM, a stage, is no command (the ONBUILD line refuses
        // one; an image made by other tools may carry it).
        (
            "FROM busybox",
            "Dockerfile:2: *instructions.Stage is not a command type",
        ),
    ] {
        let base = ImageConfig {
            on_build: vec![trigger.into()],
            ..Default::default()
        };
        let err = build_with("ARG A\nFROM img\n", &base).expect_err(trigger);
        assert!(err.to_string().starts_with(want), "{trigger}: {err}");
    }
}

#[test]
fn onbuild_is_stored_and_runs_in_child_stages_only() {
    let src =
        "FROM img AS parent\nONBUILD RUN echo child\nONBUILD LABEL from=trigger\nRUN echo parent\n\
               FROM parent AS child\nRUN echo after\n";
    // The parent stage as target keeps its triggers in OnBuild and has no
    // history entry for them.
    let df = parse(src, "Dockerfile").expect("parses");
    let opts = BuildOptions {
        target: Some("parent".into()),
        ..BuildOptions::default()
    };
    let bases = df
        .base_images(&opts)
        .expect("bases")
        .into_iter()
        .map(|r| (r, ImageConfig::default()))
        .collect();
    let p = to_graph(&df, &opts, &bases).expect("builds");
    assert_eq!(p.config.on_build, ["RUN echo child", "LABEL from=trigger"]);
    assert_eq!(
        created_by(&p.config),
        ["RUN /bin/sh -c echo parent # buildkit"]
    );
    assert!(p.config.labels.is_empty());
    // The child runs them right after its FROM and does not pass them on.
    let c = build_with(src, &ImageConfig::default()).expect("builds");
    assert!(c.config.on_build.is_empty());
    assert_eq!(
        created_by(&c.config),
        [
            "RUN /bin/sh -c echo parent # buildkit",
            "RUN /bin/sh -c echo child # buildkit",
            "LABEL from=trigger",
            "RUN /bin/sh -c echo after # buildkit"
        ]
    );
    assert_eq!(
        c.config.labels.get("from").map(String::as_str),
        Some("trigger")
    );
    assert_eq!(
        names(&c),
        [
            "[parent 1/2] FROM docker.io/library/img:latest",
            "[parent 2/2] RUN echo parent",
            "[child 1/2] ONBUILD RUN echo child",
            "[child 2/2] RUN echo after"
        ]
    );
}

#[test]
fn healthcheck_maintainer_and_cmd_set_config() {
    let src = "FROM img\nMAINTAINER Jane <j@example.com>\n\
               HEALTHCHECK --interval=30s --retries=3 CMD wget -q localhost || exit 1\n\
               CMD [\"sh\"]\n";
    let b = build_with(src, &ImageConfig::default()).expect("builds");
    let c = &b.config;
    assert_eq!(c.author, "Jane <j@example.com>");
    assert!(c.args_escaped);
    assert_eq!(
        c.healthcheck,
        Some(kiln_solver::Healthcheck {
            test: vec!["CMD-SHELL".into(), "wget -q localhost || exit 1".into()],
            interval: 30_000_000_000,
            retries: 3,
            ..Default::default()
        })
    );
    assert_eq!(
        created_by(c),
        [
            "MAINTAINER Jane <j@example.com>",
            "HEALTHCHECK {Test:[CMD-SHELL wget -q localhost || exit 1] Interval:30s Timeout:0s StartPeriod:0s StartInterval:0s Retries:3}",
            "CMD [\"sh\"]"
        ]
    );
    assert!(c.history.iter().all(|h| h.empty_layer));
    // HEALTHCHECK NONE replaces an inherited check.
    let base = ImageConfig {
        healthcheck: c.healthcheck.clone(),
        ..Default::default()
    };
    let none = build_with("FROM img\nHEALTHCHECK NONE\n", &base).expect("builds");
    assert_eq!(
        none.config.healthcheck.map(|h| h.test),
        Some(vec!["NONE".to_string()])
    );
    // No CMD, no ArgsEscaped of our own.
    let plain =
        build_with("FROM img\nENTRYPOINT [\"a\"]\n", &ImageConfig::default()).expect("builds");
    assert!(!plain.config.args_escaped);
}

#[test]
fn expose_words_as_buildkit_reads_them() {
    let ok = |w: &str| parse_ports(w).unwrap_or_else(|e| panic!("{w}: {e}"));
    assert_eq!(ok("80"), ["80/tcp"]);
    assert_eq!(ok("53/UDP"), ["53/udp"]);
    assert_eq!(
        ok("9000-9002/sctp"),
        ["9000/sctp", "9001/sctp", "9002/sctp"]
    );
    assert_eq!(ok("8080:80"), ["80/tcp"]);
    assert_eq!(ok("127.0.0.1:8080:80/udp"), ["80/udp"]);
    assert_eq!(ok("[::1]:8080:80"), ["80/tcp"]);
    assert_eq!(ok("5-5"), ["5/tcp"]);
    let err = |w: &str| parse_ports(w).expect_err(w);
    assert_eq!(
        err("80/foo"),
        "invalid port: \"80/foo\": invalid proto: foo"
    );
    assert_eq!(err("/tcp"), "invalid port: \"/tcp\": no port specified");
    assert_eq!(err("abc"), "invalid containerPort: abc");
    assert_eq!(err("70000"), "invalid containerPort: 70000");
    assert_eq!(err("9-8"), "invalid containerPort: 9-8");
    assert_eq!(err("x:80"), "invalid hostPort: x");
    assert_eq!(err("nope:1:80"), "invalid IP address: nope");
    assert_eq!(
        err("1-3:5-6"),
        "invalid ranges specified for container and host Ports: 5-6 and 1-3"
    );
}

#[test]
fn expose_history_follows_the_sorted_words() {
    let b = build_with(
        "FROM img\nEXPOSE 9 10 80/udp 80 80\n",
        &ImageConfig::default(),
    )
    .expect("builds");
    assert_eq!(
        created_by(&b.config),
        ["EXPOSE [10/tcp 80/tcp 80/tcp 80/udp 9/tcp]"]
    );
    assert_eq!(
        b.config.exposed_ports,
        ["10/tcp", "80/tcp", "80/udp", "9/tcp"]
    );
}

#[test]
fn source_date_epoch_dates_new_history_and_workdir() {
    assert_eq!(kiln_types::time::rfc3339_secs(0), "1970-01-01T00:00:00Z");
    assert_eq!(
        kiln_types::time::rfc3339_secs(1_700_000_000),
        "2023-11-14T22:13:20Z"
    );
    assert_eq!(
        kiln_types::time::rfc3339_secs(951_782_400),
        "2000-02-29T00:00:00Z"
    );
    let base = ImageConfig {
        history: vec![HistoryEntry {
            created: Some("2020-01-01T00:00:00Z".into()),
            created_by: "base".into(),
            comment: String::new(),
            empty_layer: false,
        }],
        ..Default::default()
    };
    let src = "ARG SOURCE_DATE_EPOCH=1700000000\nFROM img\nWORKDIR /app\nENV A=1\n";
    let df = parse(src, "Dockerfile").expect("parses");
    let convert = |opts: &BuildOptions| {
        let bases = df
            .base_images(opts)
            .expect("bases")
            .into_iter()
            .map(|r| (r, base.clone()))
            .collect();
        to_graph(&df, opts, &bases)
    };
    let b = convert(&BuildOptions::default()).expect("builds");
    let times: Vec<Option<&str>> = b
        .config
        .history
        .iter()
        .map(|h| h.created.as_deref())
        .collect();
    assert_eq!(
        times,
        [
            Some("2020-01-01T00:00:00Z"),
            Some("2023-11-14T22:13:20Z"),
            Some("2023-11-14T22:13:20Z")
        ]
    );
    let Op::File(f) = &b.graph.vertex(b.result).op else {
        panic!("WORKDIR is the last step");
    };
    let FileActionKind::MkDir(m) = &f.actions[0].action else {
        panic!("WORKDIR makes a directory");
    };
    assert_eq!(m.timestamp, Some(1_700_000_000_000_000_000));
    // A --build-arg wins over the ARG default; without either nothing is
    // dated here.
    let mut opts = BuildOptions::default();
    opts.build_args
        .insert("SOURCE_DATE_EPOCH".into(), "0".into());
    let b = convert(&opts).expect("builds");
    assert_eq!(
        b.config.history[2].created.as_deref(),
        Some("1970-01-01T00:00:00Z")
    );
    let plain = build_with("FROM img\nENV A=1\n", &base).expect("builds");
    assert_eq!(plain.config.history[1].created, None);
    // Other forms are refused before anything runs.
    opts.build_args
        .insert("SOURCE_DATE_EPOCH".into(), "builder".into());
    let err = convert(&opts).expect_err("not supported");
    assert_eq!(
        err.to_string(),
        "Dockerfile:2: invalid SOURCE_DATE_EPOCH: builder"
    );
}

/// SOURCE_DATE_EPOCH naming a stage: BuildKit's checks of a source stage,
/// and the one form that passes them (one remote ADD) needs its time
/// resolved by the frontend.
#[test]
fn source_date_epoch_stage_forms() {
    let check = |src: &str| {
        let df = parse(src, "Dockerfile").expect("parses");
        let mut opts = BuildOptions::default();
        opts.build_args
            .insert("SOURCE_DATE_EPOCH".into(), "Src".into());
        let bases = df
            .base_images(&opts)
            .expect("bases")
            .into_iter()
            .map(|r| (r, ImageConfig::default()))
            .collect();
        to_graph(&df, &opts, &bases)
            .expect_err("refused")
            .to_string()
    };
    assert_eq!(
        check("FROM scratch AS src\nARG V=1\nADD https://example.com/a.tar /a\nFROM img\n"),
        "Dockerfile:1: SOURCE_DATE_EPOCH=Src (the time of a remote ADD source, without a frontend to resolve it) is not supported yet"
    );
    assert_eq!(
        check("FROM scratch\nFROM scratch AS src\nADD https://example.com/a /a\nFROM img\n"),
        "Dockerfile:2: SOURCE_DATE_EPOCH=Src (the time of a remote ADD source, without a frontend to resolve it) is not supported yet"
    );
    assert_eq!(
        check("FROM img AS src\nADD https://example.com/a /a\nFROM img\n"),
        "Dockerfile:1: SOURCE_DATE_EPOCH stage must use FROM scratch"
    );
    assert_eq!(
        check("FROM scratch AS src\nRUN true\nFROM img\n"),
        "Dockerfile:1: SOURCE_DATE_EPOCH stage does not meet source-only requirements: unsupported RUN instruction"
    );
    // BuildKit names the instruction as the Dockerfile spells it.
    assert_eq!(
        check("FROM scratch AS src\ncopy a /a\nFROM img\n"),
        "Dockerfile:1: SOURCE_DATE_EPOCH stage does not meet source-only requirements: unsupported copy instruction"
    );
    assert_eq!(
        check("FROM scratch AS src\nFROM img\n"),
        "Dockerfile:1: SOURCE_DATE_EPOCH stage must contain exactly one remote ADD"
    );
    assert_eq!(
        check("FROM scratch AS src\nADD a b /c/\nFROM img\n"),
        "Dockerfile:1: SOURCE_DATE_EPOCH stage must contain exactly one remote ADD source"
    );
    assert_eq!(
        check("FROM scratch AS src\nADD a /c\nFROM img\n"),
        "Dockerfile:1: SOURCE_DATE_EPOCH stage source must be a single HTTP(S) or Git ADD"
    );
}

/// A base image's trigger that copies from a stage is resolved against
/// the child's stages (as BuildKit does): the stage, and its own base
/// image, become needed once the base image's config is known.
#[test]
fn a_base_images_trigger_reads_the_childs_stage() {
    let src = "FROM tools-img AS tools\nRUN echo tool > /tool\nFROM parent-img\nRUN cat /tool\n";
    let df = parse(src, "Dockerfile").expect("parses");
    let opts = BuildOptions::default();
    let parent = ImageConfig {
        on_build: vec!["COPY --from=tools /tool /tool".into()],
        ..ImageConfig::default()
    };
    let first = df.base_images(&opts).expect("bases");
    assert_eq!(first, ["docker.io/library/parent-img:latest"]);
    let mut bases: BTreeMap<String, ImageConfig> = BTreeMap::new();
    bases.insert(first[0].clone(), parent);
    let second = df.base_images_with(&opts, &bases).expect("bases");
    assert_eq!(
        second,
        [
            "docker.io/library/tools-img:latest",
            "docker.io/library/parent-img:latest"
        ]
    );
    bases.insert(second[0].clone(), ImageConfig::default());
    let b = to_graph(&df, &opts, &bases).expect("builds");
    assert_eq!(b.stages_built, ["tools", "1"]);
    assert!(
        names(&b)
            .iter()
            .any(|n| n == "[stage-1 2/3] ONBUILD COPY --from=tools /tool /tool"),
        "{:?}",
        names(&b)
    );
}

/// A parent's trigger that copies from another stage makes that stage
/// needed by the child, and only by it.
#[test]
fn a_triggers_from_stage_is_built_for_the_child() {
    let src = "FROM img AS tools\nRUN echo tool > /tool\n\
               FROM img AS parent\nONBUILD COPY --from=tools /tool /tool\n\
               FROM parent\nRUN cat /tool\n";
    let b = build_with(src, &ImageConfig::default()).expect("builds");
    assert_eq!(b.stages_built, ["tools", "parent", "2"]);
    assert!(
        names(&b)
            .iter()
            .any(|n| n == "[stage-2 1/2] ONBUILD COPY --from=tools /tool /tool"),
        "{:?}",
        names(&b)
    );
    let df = parse(src, "Dockerfile").expect("parses");
    let opts = BuildOptions {
        target: Some("parent".into()),
        ..BuildOptions::default()
    };
    let bases = df
        .base_images(&opts)
        .expect("bases")
        .into_iter()
        .map(|r| (r, ImageConfig::default()))
        .collect();
    let p = to_graph(&df, &opts, &bases).expect("builds");
    assert_eq!(p.stages_built, ["parent"]);
}

#[test]
fn an_absolute_workdir_is_kept_as_written_and_a_relative_one_cleaned() {
    // BuildKit's NormalizeWorkdir: the config and the history say what was
    // written; the directory made is the clean path.
    let b = build_with(
        "FROM img\nWORKDIR //x//y/\nWORKDIR ../z/\nWORKDIR /a/b/\n",
        &ImageConfig::default(),
    )
    .expect("converts");
    assert_eq!(b.config.working_dir, "/a/b/");
    assert_eq!(
        created_by(&b.config)[..3],
        ["WORKDIR //x//y/", "WORKDIR /x/z", "WORKDIR /a/b/"]
    );
    let mkdirs: Vec<String> = b
        .graph
        .needed_for(b.result)
        .iter()
        .filter_map(|id| match &b.graph.vertex(*id).op {
            Op::File(f) => match &f.actions[0].action {
                FileActionKind::MkDir(m) => Some(m.path.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(mkdirs, ["/x/y", "/x/z", "/a/b"]);
}

#[test]
fn an_onbuild_trigger_keeps_its_heredoc_bodies() {
    let b = build_with(
        "FROM img\nONBUILD RUN <<EOF\necho trig\nEOF\nONBUILD COPY <<-X /f\n\tx\n\tX\n",
        &ImageConfig::default(),
    )
    .expect("converts");
    assert_eq!(
        b.config.on_build,
        ["RUN <<EOF\necho trig\nEOF", "COPY <<-X /f\n\tx\nX"]
    );
    // ... and a child runs them as written.
    let base = ImageConfig {
        on_build: b.config.on_build.clone(),
        ..Default::default()
    };
    let child = build_with("FROM img\n", &base).expect("a child converts");
    assert!(child.config.on_build.is_empty());
}
