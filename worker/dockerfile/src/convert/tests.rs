use super::*;
use crate::parse;
use std::fmt::Write as _;

/// The config test base images have: PATH set, a CMD, one layer.
fn base_config(reference: &str) -> ImageConfig {
    ImageConfig {
        env: vec!["PATH=/usr/bin:/bin".into(), "HOME=/root".into()],
        cmd: Some(vec!["sh".into()]),
        working_dir: String::new(),
        labels: BTreeMap::from([("base".to_string(), reference.to_string())]),
        history: vec![HistoryEntry {
            created: Some("2024-01-01T00:00:00Z".into()),
            created_by: format!("ADD rootfs.tar / # {reference}"),
            comment: String::new(),
            empty_layer: false,
        }],
        ..ImageConfig::default()
    }
}

/// Parses and converts `src` with `opts`, giving every base image
/// [`base_config`].
fn build(src: &str, opts: &BuildOptions) -> Result<Build> {
    let df = parse(src, &opts.filename)?;
    let bases = df
        .base_images(opts)?
        .into_iter()
        .map(|r| {
            let c = base_config(&r);
            (r, c)
        })
        .collect();
    to_graph(&df, opts, &bases)
}

fn input(i: &FileInput) -> String {
    match i {
        FileInput::Scratch => "scratch".into(),
        FileInput::Input(n) => format!("in{n}"),
        FileInput::Action(n) => format!("act{n}"),
    }
}

fn owner(o: &Option<ChownOpt>) -> String {
    let one = |u: &Option<UserOpt>| match u {
        None => "-".to_string(),
        Some(UserOpt::ById(n)) => n.to_string(),
        Some(UserOpt::ByName(s)) => s.clone(),
    };
    match o {
        None => String::new(),
        Some(c) => format!(" owner={}:{}", one(&c.user), one(&c.group)),
    }
}

/// The vertices the result needs, then the image config.
fn render(b: &Build) -> String {
    let mut out = String::new();
    let needed = b.graph.needed_for(b.result);
    for id in &needed {
        let v = b.graph.vertex(*id);
        let loc = v
            .location
            .as_ref()
            .map(|l| format!(" @{}:{}", l.file, l.line))
            .unwrap_or_default();
        let ins: Vec<String> = v
            .inputs
            .iter()
            .map(|e| format!("v{}", e.vertex.0))
            .collect();
        let ins = if ins.is_empty() {
            String::new()
        } else {
            format!(" <- [{}]", ins.join(" "))
        };
        let nc = if v.ignore_cache { " no-cache" } else { "" };
        let _ = writeln!(out, "v{} {:?}{loc}{ins}{nc}", id.0, v.name);
        match &v.op {
            Op::Source(s) => {
                let _ = writeln!(out, "  source {} {:?}", s.identifier, s.attrs);
            }
            Op::Exec(e) => {
                let _ = writeln!(
                    out,
                    "  exec {:?} cwd={} user={:?} net={:?}\n  env {:?}",
                    e.meta.args, e.meta.cwd, e.meta.user, e.network, e.meta.env
                );
                for m in &e.mounts {
                    let src = m.input.map_or("scratch".to_string(), |i| format!("in{i}"));
                    let _ = writeln!(
                        out,
                        "  mount {} <- {src}{:?} out={:?} ro={} {:?}",
                        m.dest, m.selector, m.output, m.readonly, m.mount_type
                    );
                }
            }
            Op::File(f) => {
                for a in &f.actions {
                    let sec = a
                        .secondary_input
                        .as_ref()
                        .map(|s| format!(" from {}", input(s)))
                        .unwrap_or_default();
                    let what = match &a.action {
                        FileActionKind::Copy(c) => {
                            let mut s = format!(
                                "copy {} -> {} mode={:?}{} unpack={} excl={:?}",
                                c.src,
                                c.dest,
                                c.mode,
                                owner(&c.owner),
                                c.attempt_unpack_docker_compatibility,
                                c.exclude_patterns
                            );
                            if !c.include_patterns.is_empty() || !c.required_paths.is_empty() {
                                s.push_str(&format!(
                                    " incl={:?} req={:?}",
                                    c.include_patterns, c.required_paths
                                ));
                            }
                            s
                        }
                        FileActionKind::MkDir(m) => {
                            format!(
                                "mkdir {} {:o} parents={}{}",
                                m.path,
                                m.mode,
                                m.make_parents,
                                owner(&m.owner)
                            )
                        }
                        other => format!("{other:?}"),
                    };
                    let _ = writeln!(
                        out,
                        "  {} on {}{sec} out={:?}",
                        what,
                        input(&a.input),
                        a.output
                    );
                }
            }
            Op::Merge(m) => {
                let _ = writeln!(out, "  merge {:?}", m.inputs);
            }
        }
    }
    let c = &b.config;
    let _ = writeln!(out, "env {:?}", c.env);
    let _ = writeln!(
        out,
        "cmd {:?} entrypoint {:?} workdir {:?} user {:?} shell {:?} stop {:?}",
        c.cmd, c.entrypoint, c.working_dir, c.user, c.shell, c.stop_signal
    );
    let _ = writeln!(
        out,
        "labels {:?} ports {:?} volumes {:?}",
        c.labels, c.exposed_ports, c.volumes
    );
    for h in &c.history {
        let layer = if h.empty_layer { "empty" } else { "layer" };
        let _ = writeln!(out, "history {layer} {:?}", h.created_by);
    }
    let _ = writeln!(out, "built {:?}", b.stages_built);
    out
}

fn check_with(src: &str, opts: &BuildOptions, expect: &str) {
    let got = match build(src, opts) {
        Ok(b) => render(&b),
        Err(e) => format!("error: {e}\n"),
    };
    if got.trim() != expect.trim() {
        panic!("source:\n{src}\n--- got:\n{got}\n--- expected:\n{expect}\n");
    }
}

fn check(src: &str, expect: &str) {
    check_with(src, &BuildOptions::default(), expect);
}

fn opts() -> BuildOptions {
    BuildOptions::default()
}

fn vertex_names(b: &Build) -> Vec<String> {
    b.graph
        .needed_for(b.result)
        .iter()
        .map(|id| b.graph.vertex(*id).name.clone())
        .collect()
}

fn sources(b: &Build) -> Vec<String> {
    b.graph
        .needed_for(b.result)
        .iter()
        .filter_map(|id| match &b.graph.vertex(*id).op {
            Op::Source(s) => Some(s.identifier.clone()),
            _ => None,
        })
        .collect()
}

fn execs(b: &Build) -> Vec<&ExecOp> {
    b.graph
        .needed_for(b.result)
        .iter()
        .filter_map(|id| match &b.graph.vertex(*id).op {
            Op::Exec(e) => Some(e),
            _ => None,
        })
        .collect()
}

#[test]
fn single_stage_copy_run_cmd() {
    check(
        "FROM busybox\nCOPY hello.txt /hello.txt\nRUN echo hi\nCMD [\"cat\", \"/hello.txt\"]\n",
        r#"
v0 "[1/3] FROM docker.io/library/busybox:latest" @Dockerfile:1
  source docker-image://docker.io/library/busybox:latest {}
v1 "[internal] load build context"
  source local://context {"local.followpaths": "[\"hello.txt\"]"}
v2 "[2/3] COPY hello.txt /hello.txt" @Dockerfile:2 <- [v0 v1]
  copy /hello.txt -> /hello.txt mode=None unpack=false excl=[] on in0 from in1 out=Some(0)
v3 "[3/3] RUN echo hi" @Dockerfile:3 <- [v2]
  exec ["/bin/sh", "-c", "echo hi"] cwd=/ user="" net=Unset
  env ["PATH=/usr/bin:/bin", "HOME=/root"]
  mount / <- in0"" out=Some(0) ro=false Bind
env ["PATH=/usr/bin:/bin", "HOME=/root"]
cmd Some(["cat", "/hello.txt"]) entrypoint None workdir "" user "" shell None stop None
labels {"base": "docker.io/library/busybox:latest"} ports [] volumes []
history layer "ADD rootfs.tar / # docker.io/library/busybox:latest"
history layer "COPY hello.txt /hello.txt # buildkit"
history layer "RUN /bin/sh -c echo hi # buildkit"
history empty "CMD [\"cat\" \"/hello.txt\"]"
built ["0"]
"#,
    );
}

const MULTI: &str = r#"FROM golang:1.22 AS build
WORKDIR /src
COPY . .
RUN go build -o /out/app
FROM alpine AS test
RUN echo test
FROM scratch
COPY --from=build /out/app /app
ENTRYPOINT ["/app"]
"#;

#[test]
fn multi_stage_prunes_unneeded_stages() {
    let df = parse(MULTI, "Dockerfile").expect("parses");
    assert_eq!(
        df.base_images(&opts()).expect("plans"),
        vec!["docker.io/library/golang:1.22".to_string()]
    );
    let b = build(MULTI, &opts()).expect("builds");
    assert_eq!(b.stages_built, vec!["build", "2"]);
    assert_eq!(
        sources(&b),
        vec![
            "docker-image://docker.io/library/golang:1.22",
            "local://context"
        ]
    );
    let args: Vec<&Vec<String>> = execs(&b).iter().map(|e| &e.meta.args).collect();
    assert_eq!(
        args,
        vec![&vec![
            "/bin/sh".to_string(),
            "-c".into(),
            "go build -o /out/app".into()
        ]]
    );
    assert_eq!(
        vertex_names(&b),
        vec![
            "[build 1/4] FROM docker.io/library/golang:1.22",
            "[build 2/4] WORKDIR /src",
            "[internal] load build context",
            "[build 3/4] COPY . .",
            "[build 4/4] RUN go build -o /out/app",
            "[stage-2 1/1] COPY --from=build /out/app /app",
        ]
    );
    // The final stage is FROM scratch: no base history, default PATH.
    assert_eq!(b.config.env, vec![format!("PATH={DEFAULT_PATH}")]);
    assert_eq!(b.config.working_dir, "/");
    assert_eq!(b.config.entrypoint, Some(vec!["/app".to_string()]));
    let hist: Vec<&str> = b
        .config
        .history
        .iter()
        .map(|h| h.created_by.as_str())
        .collect();
    assert_eq!(
        hist,
        vec!["COPY /out/app /app # buildkit", "ENTRYPOINT [\"/app\"]"]
    );
}

#[test]
fn copy_from_stage_onto_scratch() {
    check(
            "FROM busybox AS b\nRUN make\nFROM scratch\nCOPY --from=b --chown=app:1 --chmod=0755 /x /y/ \n",
            r#"
v0 "[b 1/2] FROM docker.io/library/busybox:latest" @Dockerfile:1
  source docker-image://docker.io/library/busybox:latest {}
v1 "[b 2/2] RUN make" @Dockerfile:2 <- [v0]
  exec ["/bin/sh", "-c", "make"] cwd=/ user="" net=Unset
  env ["PATH=/usr/bin:/bin", "HOME=/root"]
  mount / <- in0"" out=Some(0) ro=false Bind
v2 "[stage-1 1/1] COPY --from=b --chown=app:1 --chmod=0755 /x /y/" @Dockerfile:4 <- [v1]
  copy /x -> /y/ mode=Some(493) owner=app:1 unpack=false excl=[] on scratch from in0 out=Some(0)
env ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
cmd None entrypoint None workdir "/" user "" shell None stop None
labels {} ports [] volumes []
history layer "COPY --chown=app:1 --chmod=0755 /x /y/ # buildkit"
built ["b", "1"]
"#,
        );
}

#[test]
fn target_selects_stage_and_its_deps_only() {
    let o = BuildOptions {
        target: Some("TEST".into()),
        ..opts()
    };
    let df = parse(MULTI, "Dockerfile").expect("parses");
    assert_eq!(
        df.base_images(&o).expect("plans"),
        vec!["docker.io/library/alpine:latest".to_string()]
    );
    let b = build(MULTI, &o).expect("builds");
    assert_eq!(b.stages_built, vec!["test"]);
    assert_eq!(
        sources(&b),
        vec!["docker-image://docker.io/library/alpine:latest"]
    );
    assert_eq!(execs(&b).len(), 1);
    assert_eq!(execs(&b)[0].meta.args[2], "echo test");

    let o = BuildOptions {
        target: Some("bulid".into()),
        ..opts()
    };
    check_with(
        MULTI,
        &o,
        "error: target stage \"bulid\" could not be found (did you mean build?)",
    );
}

#[test]
fn build_args_reach_run_env_and_change_the_key() {
    let src = "FROM busybox\nARG V=1\nARG UNSET\nRUN echo $V\n";
    let b1 = build(src, &opts()).expect("builds");
    let e = execs(&b1)[0];
    assert_eq!(e.meta.env, vec!["PATH=/usr/bin:/bin", "HOME=/root", "V=1"]);
    assert_eq!(e.meta.args, vec!["/bin/sh", "-c", "echo $V"]);
    // ARG values never reach the image config.
    assert_eq!(b1.config.env, vec!["PATH=/usr/bin:/bin", "HOME=/root"]);
    let hist: Vec<&str> = b1
        .config
        .history
        .iter()
        .skip(1)
        .map(|h| h.created_by.as_str())
        .collect();
    assert_eq!(
        hist,
        vec![
            "ARG V=1",
            "ARG UNSET",
            "RUN |2 V=1 UNSET= /bin/sh -c echo $V # buildkit"
        ]
    );

    let o = BuildOptions {
        build_args: BTreeMap::from([("V".to_string(), "2".to_string())]),
        ..opts()
    };
    let b2 = build(src, &o).expect("builds");
    assert_eq!(
        execs(&b2)[0].meta.env,
        vec!["PATH=/usr/bin:/bin", "HOME=/root", "V=2"]
    );
    let d1 = b1.graph.definition_digests();
    let d2 = b2.graph.definition_digests();
    assert_eq!(d1[0], d2[0], "the base is unchanged");
    assert_ne!(d1[b1.result.0], d2[b2.result.0], "the RUN is invalidated");
}

#[test]
fn global_args_and_platform_args() {
    let src = r#"ARG TAG=1.36
ARG IMG=busybox
FROM --platform=$BUILDPLATFORM ${IMG}:${TAG}
ARG TAG
ARG TARGETARCH
ARG IMG=other
RUN echo $TAG $TARGETARCH
"#;
    let df = parse(src, "Dockerfile").expect("parses");
    assert_eq!(
        df.base_images(&opts()).expect("plans"),
        vec!["docker.io/library/busybox:1.36".to_string()]
    );
    let b = build(src, &opts()).expect("builds");
    assert_eq!(
        execs(&b)[0].meta.env,
        vec![
            "PATH=/usr/bin:/bin",
            "HOME=/root",
            "TAG=1.36",
            "TARGETARCH=amd64",
            "IMG=other"
        ]
    );
    assert_eq!(
            b.config.history.last().map(|h| h.created_by.as_str()),
            Some("RUN |3 TAG=1.36 TARGETARCH=amd64 IMG=other /bin/sh -c echo $TAG $TARGETARCH # buildkit")
        );
    let o = BuildOptions {
        build_args: BTreeMap::from([("TAG".to_string(), "musl".to_string())]),
        ..opts()
    };
    assert_eq!(
        df.base_images(&o).expect("plans"),
        vec!["docker.io/library/busybox:musl".to_string()]
    );
}

/// The ops of `b` that carry a platform, as `identifier-or-args platform`.
fn op_platforms(b: &Build) -> Vec<String> {
    b.graph
        .vertices
        .iter()
        .filter_map(|v| match &v.op {
            Op::Source(s) => Some(format!(
                "{} {}",
                s.identifier,
                s.platform.as_ref().map_or("-".into(), ToString::to_string)
            )),
            Op::Exec(e) => Some(format!(
                "{} {}",
                e.meta.args.last().cloned().unwrap_or_default(),
                e.platform.as_ref().map_or("-".into(), ToString::to_string)
            )),
            _ => None,
        })
        .collect()
}

#[test]
fn a_foreign_target_platform_reaches_args_bases_and_ops() {
    let arm64 = kiln_solver::Platform::new("linux", "arm64", "");
    let o = BuildOptions {
        target_platform: Some(arm64.clone()),
        ..opts()
    };
    let src = r#"FROM --platform=$BUILDPLATFORM busybox AS tools
ARG TARGETPLATFORM BUILDPLATFORM
RUN echo tools $BUILDPLATFORM $TARGETPLATFORM
FROM tools AS more
RUN echo more
FROM busybox
ARG TARGETPLATFORM TARGETARCH TARGETVARIANT BUILDARCH
COPY --from=more /x /x
COPY --from=alpine /y /y
RUN echo $TARGETPLATFORM $TARGETARCH $BUILDARCH
"#;
    let df = parse(src, "Dockerfile").expect("parses");
    let refs = df.base_image_refs(&o).expect("plans");
    assert_eq!(
        refs,
        vec![
            crate::BaseRef {
                reference: "docker.io/library/busybox:latest".into(),
                platform: None
            },
            crate::BaseRef {
                reference: "docker.io/library/busybox:latest".into(),
                platform: Some(arm64.clone())
            },
            // The image a `--from` names, for the stage that reads it.
            crate::BaseRef {
                reference: "docker.io/library/alpine:latest".into(),
                platform: Some(arm64.clone())
            },
        ]
    );
    assert_eq!(
        df.base_images(&o).expect("plans"),
        [
            "docker.io/library/busybox:latest",
            "docker.io/library/busybox:latest linux/arm64",
            "docker.io/library/alpine:latest linux/arm64"
        ]
    );
    let b = build(src, &o).expect("builds");
    assert_eq!(
        op_platforms(&b),
        [
            "docker-image://docker.io/library/busybox:latest -",
            "echo tools $BUILDPLATFORM $TARGETPLATFORM -",
            "echo more -",
            "docker-image://docker.io/library/busybox:latest linux/arm64",
            "docker-image://docker.io/library/alpine:latest linux/arm64",
            "echo $TARGETPLATFORM $TARGETARCH $BUILDARCH linux/arm64",
        ]
    );
    let e = execs(&b);
    assert!(e[0]
        .meta
        .env
        .contains(&"TARGETPLATFORM=linux/arm64".to_string()));
    assert!(e[0]
        .meta
        .env
        .contains(&"BUILDPLATFORM=linux/amd64".to_string()));
    for kv in [
        "TARGETPLATFORM=linux/arm64",
        "TARGETARCH=arm64",
        "TARGETVARIANT=",
        "BUILDARCH=amd64",
    ] {
        assert!(e[2].meta.env.contains(&kv.to_string()), "{kv}");
    }
    // The same step for the host and for arm64: two cache keys.
    let host = build("FROM busybox\nRUN true\n", &opts()).expect("builds");
    let arm = build("FROM busybox\nRUN true\n", &o).expect("builds");
    assert_ne!(
        Graph::op_digest(&Op::Exec(execs(&host)[0].clone())),
        Graph::op_digest(&Op::Exec(execs(&arm)[0].clone()))
    );
    // Explicitly the host's platform is the host build, key for key.
    let same = BuildOptions {
        target_platform: Some(kiln_solver::Platform::new("linux", "amd64", "")),
        ..opts()
    };
    let explicit = build("FROM busybox\nRUN true\n", &same).expect("builds");
    assert_eq!(
        host.graph.definition_digests(),
        explicit.graph.definition_digests()
    );
}

#[test]
fn from_platform_picks_the_stage_platform() {
    let b = build(
        "FROM --platform=linux/arm64/v8 busybox\nRUN uname -m\n",
        &opts(),
    )
    .expect("builds");
    assert_eq!(
        op_platforms(&b),
        [
            "docker-image://docker.io/library/busybox:latest linux/arm64",
            "uname -m linux/arm64"
        ]
    );
    check(
        "FROM --platform=linux/ busybox\n",
        r#"error: Dockerfile:1: failed to parse platform linux/: "" is an invalid component of "linux/": platform specifier component must match "^[A-Za-z0-9_.-]+$": invalid argument"#,
    );
    // The value as written, before expansion; an empty one is BuildKit's
    // own error.
    check(
        "ARG P=linux/\nFROM --platform=$P busybox\n",
        r#"error: Dockerfile:2: failed to parse platform $P: "" is an invalid component of "linux/": platform specifier component must match "^[A-Za-z0-9_.-]+$": invalid argument"#,
    );
    check(
        "ARG P\nFROM --platform=$P busybox\n",
        "error: Dockerfile:2: empty platform value from expression $P",
    );
}

#[test]
fn env_inherits_base_and_metadata_history() {
    check(
        r#"FROM busybox
ENV HOME=/home/app NEW=$HOME/x
ENV LEGACY a b
LABEL a=b "c d"="e f"
USER app:app
WORKDIR app
WORKDIR ../srv
WORKDIR /
EXPOSE 8080 53/UDP 7000-7001
VOLUME ["/data", "/logs"]
STOPSIGNAL SIGKILL
SHELL ["/bin/bash", "-c"]
ENTRYPOINT exec server
MAINTAINER someone
"#,
        r#"
v0 "[1/4] FROM docker.io/library/busybox:latest" @Dockerfile:1
  source docker-image://docker.io/library/busybox:latest {}
v1 "[2/4] WORKDIR app" @Dockerfile:6 <- [v0]
  mkdir /app 755 parents=true owner=app:app on in0 out=Some(0)
v2 "[3/4] WORKDIR ../srv" @Dockerfile:7 <- [v1]
  mkdir /srv 755 parents=true owner=app:app on in0 out=Some(0)
env ["PATH=/usr/bin:/bin", "HOME=/home/app", "NEW=/root/x", "LEGACY=a b"]
cmd None entrypoint Some(["/bin/bash", "-c", "exec server"]) workdir "/" user "app:app" shell Some(["/bin/bash", "-c"]) stop Some("SIGKILL")
labels {"a": "b", "base": "docker.io/library/busybox:latest", "c d": "e f"} ports ["53/udp", "7000/tcp", "7001/tcp", "8080/tcp"] volumes ["/data", "/logs"]
history layer "ADD rootfs.tar / # docker.io/library/busybox:latest"
history empty "ENV HOME=/home/app NEW=/root/x"
history empty "ENV LEGACY=a b"
history empty "LABEL a=b c d=e f"
history empty "USER app:app"
history layer "WORKDIR /app"
history layer "WORKDIR /srv"
history empty "WORKDIR /"
history empty "EXPOSE [53/udp 7000/tcp 7001/tcp 8080/tcp]"
history empty "VOLUME [/data /logs]"
history empty "STOPSIGNAL SIGKILL"
history empty "SHELL [/bin/bash -c]"
history empty "ENTRYPOINT [\"/bin/bash\" \"-c\" \"exec server\"]"
history empty "MAINTAINER someone"
built ["0"]
"#,
    );
}

#[test]
fn entrypoint_resets_inherited_cmd_only() {
    let b = build("FROM busybox\nENTRYPOINT [\"/e\"]\n", &opts()).expect("builds");
    assert_eq!(b.config.cmd, None, "CMD from the base is dropped");
    let b = build("FROM busybox\nCMD [\"c\"]\nENTRYPOINT [\"/e\"]\n", &opts()).expect("builds");
    assert_eq!(b.config.cmd, Some(vec!["c".to_string()]));
    let b = build(
        "FROM busybox AS a\nCMD [\"c\"]\nFROM a\nENTRYPOINT [\"/e\"]\n",
        &opts(),
    )
    .expect("builds");
    assert_eq!(b.config.cmd, None, "CMD from the parent stage is dropped");
    let b = build(
        "FROM busybox\nSHELL [\"/bin/bash\", \"-c\"]\nCMD echo $HOME\nRUN echo\n",
        &opts(),
    )
    .expect("builds");
    assert_eq!(
        b.config.cmd,
        Some(vec![
            "/bin/bash".to_string(),
            "-c".into(),
            "echo $HOME".into()
        ])
    );
    assert_eq!(execs(&b)[0].meta.args, vec!["/bin/bash", "-c", "echo"]);
}

#[test]
fn copy_paths_against_workdir() {
    check(
        r#"FROM busybox
WORKDIR /app
COPY a.txt .
COPY ["x", "y", "dir"]
ADD --chown=1000 archive.tar sub/
COPY --exclude=*.md docs ./docs/.
"#,
        r#"
v0 "[1/6] FROM docker.io/library/busybox:latest" @Dockerfile:1
  source docker-image://docker.io/library/busybox:latest {}
v1 "[2/6] WORKDIR /app" @Dockerfile:2 <- [v0]
  mkdir /app 755 parents=true on in0 out=Some(0)
v2 "[internal] load build context"
  source local://context {"local.followpaths": "[\"a.txt\",\"archive.tar\",\"docs\",\"x\",\"y\"]"}
v3 "[3/6] COPY a.txt ." @Dockerfile:3 <- [v1 v2]
  copy /a.txt -> /app/ mode=None unpack=false excl=[] on in0 from in1 out=Some(0)
v4 "[4/6] COPY [x, y, dir]" @Dockerfile:4 <- [v3 v2]
  copy /x -> /app/dir mode=None unpack=false excl=[] on in0 from in1 out=None
  copy /y -> /app/dir mode=None unpack=false excl=[] on act0 from in1 out=Some(0)
v5 "[5/6] ADD --chown=1000 archive.tar sub/" @Dockerfile:5 <- [v4 v2]
  copy /archive.tar -> /app/sub/ mode=None owner=1000:- unpack=true excl=[] on in0 from in1 out=Some(0)
v6 "[6/6] COPY --exclude=*.md docs ./docs/." @Dockerfile:6 <- [v5 v2]
  copy /docs -> /app/docs/. mode=None unpack=false excl=["*.md"] on in0 from in1 out=Some(0)
env ["PATH=/usr/bin:/bin", "HOME=/root"]
cmd Some(["sh"]) entrypoint None workdir "/app" user "" shell None stop None
labels {"base": "docker.io/library/busybox:latest"} ports [] volumes []
history layer "ADD rootfs.tar / # docker.io/library/busybox:latest"
history layer "WORKDIR /app"
history layer "COPY a.txt . # buildkit"
history layer "COPY x y dir # buildkit"
history layer "ADD --chown=1000 archive.tar sub/ # buildkit"
history layer "COPY docs ./docs/. # buildkit"
built ["0"]
"#,
    );
}

#[test]
fn run_security_mode() {
    let b = build(
        "FROM busybox\nRUN --security=insecure a\nRUN --security=sandbox b\nRUN c\n",
        &opts(),
    )
    .expect("build");
    let modes: Vec<SecurityMode> = execs(&b).iter().map(|e| e.security).collect();
    assert_eq!(
        modes,
        [
            SecurityMode::Insecure,
            SecurityMode::Sandbox,
            SecurityMode::Sandbox
        ]
    );
}

#[test]
fn run_mounts_and_network() {
    check(
        r#"FROM busybox AS deps
RUN fetch
FROM busybox
WORKDIR /w
RUN --network=none --mount=type=cache,target=/root/.cache,sharing=locked \
    --mount=type=cache,target=cache,id=shared \
    --mount=type=tmpfs,target=/tmp,size=64m \
    --mount=type=bind,from=deps,source=/out,target=/deps \
    --mount=target=src,rw \
    make
"#,
        r#"
v0 "[deps 1/2] FROM docker.io/library/busybox:latest" @Dockerfile:1
  source docker-image://docker.io/library/busybox:latest {}
v1 "[deps 2/2] RUN fetch" @Dockerfile:2 <- [v0]
  exec ["/bin/sh", "-c", "fetch"] cwd=/ user="" net=Unset
  env ["PATH=/usr/bin:/bin", "HOME=/root"]
  mount / <- in0"" out=Some(0) ro=false Bind
v2 "[stage-1 2/3] WORKDIR /w" @Dockerfile:4 <- [v0]
  mkdir /w 755 parents=true on in0 out=Some(0)
v3 "[internal] load build context"
  source local://context {}
v4 "[stage-1 3/3] RUN --network=none --mount=type=cache,target=/root/.cache,sharing=locked     --mount=type=cache,target=cache,id=shared     --mount=type=tmpfs,target=/tmp,size=64m     --mount=type=bind,from=deps,source=/out,target=/deps     --mount=target=src,rw     make" @Dockerfile:5 <- [v2 v1 v3]
  exec ["/bin/sh", "-c", "make"] cwd=/w user="" net=None
  env ["PATH=/usr/bin:/bin", "HOME=/root"]
  mount / <- in0"" out=Some(0) ro=false Bind
  mount /root/.cache <- scratch"" out=None ro=false Cache { id: "//root/.cache", sharing: Locked }
  mount /w/cache <- scratch"" out=None ro=false Cache { id: "/shared", sharing: Shared }
  mount /tmp <- scratch"" out=None ro=false Tmpfs { size: 67108864 }
  mount /deps <- in1"/out" out=None ro=true Bind
  mount /w/src <- in2"" out=None ro=false Bind
env ["PATH=/usr/bin:/bin", "HOME=/root"]
cmd Some(["sh"]) entrypoint None workdir "/w" user "" shell None stop None
labels {"base": "docker.io/library/busybox:latest"} ports [] volumes []
history layer "ADD rootfs.tar / # docker.io/library/busybox:latest"
history layer "WORKDIR /w"
history layer "RUN /bin/sh -c make # buildkit"
built ["deps", "1"]
"#,
    );
}

#[test]
fn no_cache_filter_marks_only_the_named_stages() {
    let o = BuildOptions {
        no_cache_filter: vec!["deps".into()],
        ..opts()
    };
    check_with(
        "FROM scratch AS deps\nCOPY a /a\nFROM scratch\nCOPY --from=deps /a /b\nCOPY c /c\n",
        &o,
        r#"
v0 "[internal] load build context" no-cache
  source local://context {"local.followpaths": "[\"a\",\"c\"]"}
v1 "[deps 1/1] COPY a /a" @Dockerfile:2 <- [v0] no-cache
  copy /a -> /a mode=None unpack=false excl=[] on scratch from in0 out=Some(0)
v2 "[stage-1 1/2] COPY --from=deps /a /b" @Dockerfile:4 <- [v1]
  copy /a -> /b mode=None unpack=false excl=[] on scratch from in0 out=Some(0)
v3 "[stage-1 2/2] COPY c /c" @Dockerfile:5 <- [v2 v0]
  copy /c -> /c mode=None unpack=false excl=[] on in0 from in1 out=Some(0)
env ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
cmd None entrypoint None workdir "/" user "" shell None stop None
labels {} ports [] volumes []
history layer "COPY /a /b # buildkit"
history layer "COPY c /c # buildkit"
built ["deps", "1"]
"#,
    );
}

#[test]
fn options_no_cache_excludes_labels() {
    let o = BuildOptions {
        no_cache: true,
        excludes: vec!["*.md".into(), "!README.md".into()],
        labels: BTreeMap::from([("org.example".to_string(), "yes".to_string())]),
        context_name: "ctx".into(),
        ..opts()
    };
    check_with(
        "FROM scratch\nLABEL a=1\nCOPY x /\n",
        &o,
        r#"
v0 "[internal] load build context" no-cache
  source local://ctx {"local.excludepatterns": "[\"*.md\",\"!README.md\"]", "local.followpaths": "[\"x\"]"}
v1 "[1/1] COPY x /" @Dockerfile:3 <- [v0] no-cache
  copy /x -> / mode=None unpack=false excl=[] on scratch from in0 out=Some(0)
env ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
cmd None entrypoint None workdir "/" user "" shell None stop None
labels {"a": "1", "org.example": "yes"} ports [] volumes []
history empty "LABEL a=1"
history layer "COPY x / # buildkit"
built ["0"]
"#,
    );
    // A stage with no filesystem change is scratch: an empty merge.
    check(
        "FROM scratch\nCMD [\"x\"]\n",
        r#"
v0 "[internal] scratch"
  merge []
env ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
cmd Some(["x"]) entrypoint None workdir "/" user "" shell None stop None
labels {} ports [] volumes []
history empty "CMD [\"x\"]"
built ["0"]
"#,
    );
}

#[test]
fn copy_from_image_and_index() {
    let b = build(
            "FROM busybox\nCOPY --from=nginx:1 /etc/nginx /etc/nginx\nFROM scratch\nCOPY --from=0 /bin/sh /sh\n",
            &opts(),
        )
        .expect("builds");
    assert_eq!(
        sources(&b),
        vec![
            "docker-image://docker.io/library/busybox:latest",
            "docker-image://docker.io/library/nginx:1",
        ]
    );
    assert_eq!(
        vertex_names(&b),
        vec![
            "[stage-0 1/2] FROM docker.io/library/busybox:latest",
            "FROM docker.io/library/nginx:1",
            "[stage-0 2/2] COPY --from=nginx:1 /etc/nginx /etc/nginx",
            "[stage-1 1/1] COPY --from=0 /bin/sh /sh",
        ]
    );
    // A single stage that copies from an image still gets a stage label
    // (BuildKit counts the image as a stage).
    let b = build("FROM busybox\nCOPY --from=nginx /a /a\n", &opts()).expect("builds");
    assert_eq!(
        vertex_names(&b)[0],
        "[stage-0 1/2] FROM docker.io/library/busybox:latest"
    );
}

#[test]
fn escape_directive_in_a_build() {
    check(
        "# escape=`\nFROM busybox\nRUN echo a `\n  b\nCOPY C:\\x.txt `\n  /x\n",
        r#"
v0 "[1/3] FROM docker.io/library/busybox:latest" @Dockerfile:2
  source docker-image://docker.io/library/busybox:latest {}
v1 "[2/3] RUN echo a   b" @Dockerfile:3 <- [v0]
  exec ["/bin/sh", "-c", "echo a   b"] cwd=/ user="" net=Unset
  env ["PATH=/usr/bin:/bin", "HOME=/root"]
  mount / <- in0"" out=Some(0) ro=false Bind
v2 "[internal] load build context"
  source local://context {"local.followpaths": "[\"C:\\\\x.txt\"]"}
v3 "[3/3] COPY C:\\x.txt   /x" @Dockerfile:5 <- [v1 v2]
  copy /C:\x.txt -> /x mode=None unpack=false excl=[] on in0 from in1 out=Some(0)
env ["PATH=/usr/bin:/bin", "HOME=/root"]
cmd Some(["sh"]) entrypoint None workdir "" user "" shell None stop None
labels {"base": "docker.io/library/busybox:latest"} ports [] volumes []
history layer "ADD rootfs.tar / # docker.io/library/busybox:latest"
history layer "RUN /bin/sh -c echo a   b # buildkit"
history layer "COPY C:\\x.txt /x # buildkit"
built ["0"]
"#,
    );
}

#[test]
fn conversion_errors_name_the_line() {
    check("FROM busybox\nCOPY --chmod=64a a b\n", "error: Dockerfile:2: invalid chmod parameter: '64a'. it should be octal string and between 0 and 07777");
    check(
            "FROM busybox AS a\nCOPY --from=b x y\nFROM busybox AS b\nFROM a\n",
            "error: Dockerfile:2: cannot copy from stage \"b\", it needs to be defined before current stage \"a\"",
        );
    // A stage the target does not need may read a later one (BuildKit
    // checks only what it builds), but no stage may read itself.
    check(
        "FROM busybox AS a\nFROM a AS b\nCOPY --from=b x y\n",
        "error: Dockerfile:3: circular dependency detected on stage: b",
    );
    check(
            "FROM busybox\nCOPY --from=$X a b\n",
            "error: Dockerfile:2: variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround",
        );
    check(
        "FROM busybox\nCOPY https://example.com/a.tgz /\n",
        "error: Dockerfile:2: source can't be a URL for COPY",
    );
    check(
        "FROM busybox\nRUN --network=bridge x\n",
        "error: Dockerfile:2: dockerfile parse error on line 2: invalid network mode \"bridge\"",
    );
    check(
        "FROM busybox\nRUN --security=privileged x\n",
        "error: Dockerfile:2: dockerfile parse error on line 2: security \"privileged\" is not valid",
    );
    check(
        "FROM busybox\nENV A=\"${B:?must be set}\"\n",
        r#"error: Dockerfile:2: failed to process "\"${B:?must be set}\"": B: must be set"#,
    );
    check("FROM Busybox\n", "error: Dockerfile:1: failed to parse stage name \"Busybox\": invalid reference format: repository name (library/Busybox) must be lowercase");
    check(
        "ARG IMG\nFROM $IMG\n",
        "error: Dockerfile:2: base name ($IMG) should not be blank",
    );
    // A `--from`/`from=` image is a stage's base for BuildKit too.
    check(
        "FROM busybox\nCOPY --from=a:b:c /x /y\n",
        "error: Dockerfile:2: failed to parse stage name \"a:b:c\": invalid reference format",
    );
    check(
        "FROM busybox\nRUN --mount=from=Foo:1 true\n",
        "error: Dockerfile:2: failed to parse stage name \"Foo:1\": invalid reference format: repository name (library/Foo) must be lowercase",
    );
    check(
        "FROM busybox\nSTOPSIGNAL SIGNOPE\n",
        "error: Dockerfile:2: invalid signal: SIGNOPE",
    );
    check(
        "FROM busybox\nEXPOSE 80/tcp abc\n",
        "error: Dockerfile:2: invalid containerPort: abc",
    );
    let df = parse("FROM busybox\n", "Dockerfile").expect("parses");
    let err = to_graph(&df, &opts(), &BTreeMap::new())
        .map(|_| ())
        .map_err(|e| e.to_string());
    assert_eq!(
        err,
        Err(
            "Dockerfile:1: no image config for base image docker.io/library/busybox:latest"
                .to_string()
        )
    );
}

/// `testdata/<case>/{Dockerfile,expected}`: `expected` is the
/// [`render`]ing of the build, or `error: <message>` for invalid input.
#[test]
fn testdata_cases() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .expect("testdata exists")
        .map(|e| e.expect("readable testdata").path())
        .collect();
    dirs.sort();
    let mut ran = 0;
    for dir in dirs {
        let src = std::fs::read_to_string(dir.join("Dockerfile")).expect("case has a Dockerfile");
        let expect =
            std::fs::read_to_string(dir.join("expected")).expect("case has an expected file");
        check(&src, &expect);
        ran += 1;
    }
    assert!(ran >= 5, "only {ran} testdata cases found");
}

/// A Dockerfile that multiplies a large environment into many steps, or
/// doubles a variable, or nests expansions past the limit, is an error
/// naming its line (this is how a 24 KB Dockerfile could exhaust kilnd).
#[test]
fn hostile_dockerfiles_are_bounded_errors() {
    let mut src = String::from("FROM busybox\nENV a0=0123456789abcdef\n");
    for i in 1..=13 {
        src.push_str(&format!("ENV a{i}=${{a{p}}}${{a{p}}}\n", p = i - 1));
    }
    // a13 is 128 KiB: five copies make a 0.9 MiB environment, a sixth
    // would pass the 1 MiB a stage may build up.
    let mut too_big_env = src.clone();
    for i in 0..6 {
        too_big_env.push_str(&format!("ENV b{i}=$a13\n"));
    }
    check(
        &too_big_env,
        "error: Dockerfile:21: the environment (ENV and ARG values) grows past 1048576 bytes",
    );
    for i in 0..5 {
        src.push_str(&format!("ENV b{i}=$a13\n"));
    }
    let first_run = src.lines().count() + 1;
    for _ in 0..100 {
        src.push_str("RUN true\n");
    }
    let e = build(&src, &opts()).expect_err("too big").to_string();
    let (at, msg) = e.split_once(": ").expect("located");
    assert_eq!(
        msg,
        "the build's steps exceed 67108864 bytes of environment and arguments"
    );
    // About 0.9 MiB per step: a RUN past the 70th crosses 64 MiB.
    let line: usize = at
        .strip_prefix("Dockerfile:")
        .and_then(|l| l.parse().ok())
        .expect("a line");
    assert!((first_run + 65..first_run + 80).contains(&line), "{e}");
    let mut doubling = String::from("FROM busybox\nENV a0=0123456789abcdef\n");
    for i in 1..=14 {
        doubling.push_str(&format!("ENV a{i}=${{a{p}}}${{a{p}}}\n", p = i - 1));
    }
    check(
        &doubling,
        r#"error: Dockerfile:16: failed to process "${a13}${a13}": variable substitution produces more than 131084 bytes"#,
    );
    let n = (24 << 10) / 6;
    check(
        &format!(
            "FROM busybox\nENV x={}v{}\n",
            "${a:-".repeat(n),
            "}".repeat(n)
        ),
        &format!(
            "error: Dockerfile:2: failed to process \"{}\"...: variable substitution nested deeper than 64 levels",
            "${a:-".repeat(40)
        ),
    );
    check(
        &format!(
            "ARG x={}v{}\nFROM busybox\n",
            "${a:-".repeat(n),
            "}".repeat(n)
        ),
        &format!(
            "error: Dockerfile:1: failed to process \"{}\"...: variable substitution nested deeper than 64 levels",
            "${a:-".repeat(40)
        ),
    );
}

#[test]
fn cache_mount_owner_mode_and_namespace() {
    let o = BuildOptions {
        build_args: BTreeMap::from([("BUILDKIT_CACHE_MOUNT_NS".to_string(), "ns".to_string())]),
        ..opts()
    };
    let b = build(
        "FROM busybox\nARG U=1000\nRUN --mount=type=cache,target=/c,uid=$U,gid=2000,mode=0750 \\\n  --mount=type=cache,target=/d,id=x true\n",
        &o,
    )
    .expect("converts");
    let exec = execs(&b)[0];
    let run = b
        .graph
        .vertices
        .iter()
        .find(|v| matches!(v.op, Op::Exec(_)))
        .expect("a run");
    let c = &exec.mounts[1];
    assert_eq!(
        c.mount_type,
        MountType::Cache {
            id: "ns//c".into(),
            sharing: CacheSharing::Shared
        }
    );
    assert_eq!(c.selector, "/cache");
    let base = run.inputs[c.input.expect("a base")];
    let v = b.graph.vertex(base.vertex);
    assert_eq!(v.name, "[internal] setting cache mount permissions");
    let Op::File(f) = &v.op else {
        panic!("a file op: {:?}", v.op)
    };
    assert_eq!(
        f.actions[0].action,
        FileActionKind::MkDir(FileMkDir {
            path: "/cache".into(),
            mode: 0o750,
            make_parents: false,
            owner: Some(ChownOpt {
                user: Some(UserOpt::ById(1000)),
                group: Some(UserOpt::ById(2000)),
            }),
            timestamp: None,
        })
    );
    assert_eq!(f.actions[0].input, FileInput::Scratch);
    // Without uid/gid/mode the cache has no base and mounts its root.
    let d = &exec.mounts[2];
    assert_eq!((d.input, d.selector.as_str()), (None, ""));
    assert_eq!(
        d.mount_type,
        MountType::Cache {
            id: "ns/x".into(),
            sharing: CacheSharing::Shared
        }
    );
    check(
        "FROM busybox\nRUN --mount=type=tmpfs,target=/t,uid=1 true\n",
        "error: Dockerfile:2: uid not allowed for \"tmpfs\" type mounts",
    );
    check(
        "FROM busybox\nRUN --mount=type=cache,target=/t,mode=9 true\n",
        "error: Dockerfile:2: invalid value 9 for mode",
    );
}

#[test]
fn proxy_args_reach_run_outside_history_and_definition() {
    let o = BuildOptions {
        build_args: BTreeMap::from([
            ("http_proxy".to_string(), "http://p:3128".to_string()),
            ("HTTPS_PROXY".to_string(), "http://s:3128".to_string()),
            ("OTHER".to_string(), "x".to_string()),
        ]),
        hostname: "box".into(),
        ..opts()
    };
    let src = "FROM busybox\nRUN a\nARG HTTPS_PROXY\nRUN b\n";
    let b = build(src, &o).expect("converts");
    let runs = execs(&b);
    let proxy = ProxyEnv {
        http_proxy: "http://p:3128".into(),
        https_proxy: "http://s:3128".into(),
        ..ProxyEnv::default()
    };
    for r in &runs {
        assert_eq!(r.meta.proxy_env.as_deref(), Some(&proxy));
        assert_eq!(r.meta.hostname, "box");
        assert!(!r.meta.env.iter().any(|e| e.starts_with("http_proxy")));
    }
    // Declared, a proxy variable is an ordinary ARG: in the env and the
    // history.
    assert!(!runs[0]
        .meta
        .env
        .iter()
        .any(|e| e.starts_with("HTTPS_PROXY=")));
    assert!(runs[1]
        .meta
        .env
        .contains(&"HTTPS_PROXY=http://s:3128".to_string()));
    let created: Vec<&str> = b
        .config
        .history
        .iter()
        .map(|h| h.created_by.as_str())
        .collect();
    assert_eq!(
        &created[created.len() - 3..],
        [
            "RUN /bin/sh -c a # buildkit",
            "ARG HTTPS_PROXY=http://s:3128",
            "RUN |1 HTTPS_PROXY=http://s:3128 /bin/sh -c b # buildkit"
        ]
    );
    // Proxy values are not part of the definition: a build with other
    // proxies has the same op digests.
    let plain = build(
        src,
        &BuildOptions {
            build_args: BTreeMap::from([("HTTPS_PROXY".to_string(), "http://s:3128".to_string())]),
            hostname: "box".into(),
            ..opts()
        },
    )
    .expect("converts");
    assert_eq!(
        Graph::op_digest(&Op::Exec(runs[0].clone())),
        Graph::op_digest(&Op::Exec(execs(&plain)[0].clone()))
    );
}

#[test]
fn platform_args_are_global_with_buildkits_values() {
    let o = BuildOptions {
        platform_arch: "arm".into(),
        platform_variant: "v7".into(),
        target: Some("final".into()),
        ..opts()
    };
    let b = build(
        "ARG PLAT=${TARGETPLATFORM}\nFROM busybox AS final\nARG TARGETPLATFORM TARGETOS TARGETARCH TARGETVARIANT BUILDPLATFORM BUILDVARIANT TARGETSTAGE PLAT\nARG BUILDKIT_SBOM_SCAN_STAGE=true\nRUN env\n",
        &o,
    )
    .expect("converts");
    let env = &execs(&b)[0].meta.env;
    for kv in [
        "TARGETPLATFORM=linux/arm/v7",
        "TARGETOS=linux",
        "TARGETARCH=arm",
        "TARGETVARIANT=v7",
        "BUILDPLATFORM=linux/arm/v7",
        "BUILDVARIANT=v7",
        "TARGETSTAGE=final",
        "PLAT=linux/arm/v7",
    ] {
        assert!(env.contains(&kv.to_string()), "{kv} in {env:?}");
    }
    assert!(
        !env.iter().any(|e| e.starts_with("BUILDKIT_SBOM")),
        "{env:?}"
    );
    // Not declared in the stage: not in the step's environment.
    let b = build("FROM busybox\nRUN env\n", &opts()).expect("converts");
    assert!(!execs(&b)[0]
        .meta
        .env
        .iter()
        .any(|e| e.starts_with("TARGET")));
    let b = build("FROM busybox\nARG TARGETSTAGE\nRUN env\n", &opts()).expect("converts");
    assert!(execs(&b)[0]
        .meta
        .env
        .contains(&"TARGETSTAGE=default".to_string()));
    // With no target, a named last stage is the target's name.
    let b = build(
        "FROM busybox\nRUN true\nFROM busybox AS named\nARG TARGETSTAGE\nRUN env\n",
        &opts(),
    )
    .expect("converts");
    let last = execs(&b).into_iter().last().expect("a step");
    assert!(
        last.meta.env.contains(&"TARGETSTAGE=named".to_string()),
        "{:?}",
        last.meta.env
    );
}

#[test]
fn copy_link_copies_onto_scratch_and_merges() {
    check(
        "FROM busybox\nCOPY --link --chown=1:root a /a\n",
        r#"
v0 "[1/2] FROM docker.io/library/busybox:latest" @Dockerfile:1
  source docker-image://docker.io/library/busybox:latest {}
v1 "[internal] load build context"
  source local://context {"local.followpaths": "[\"a\"]"}
v2 "[2/2] COPY --link --chown=1:root a /a" @Dockerfile:2 <- [v1]
  copy /a -> /a mode=None owner=1:0 unpack=false excl=[] on scratch from in0 out=Some(0)
v3 "[2/2] LINK COPY --link --chown=1:root a /a" @Dockerfile:2 <- [v0 v2]
  merge [0, 1]
env ["PATH=/usr/bin:/bin", "HOME=/root"]
cmd Some(["sh"]) entrypoint None workdir "" user "" shell None stop None
labels {"base": "docker.io/library/busybox:latest"} ports [] volumes []
history layer "ADD rootfs.tar / # docker.io/library/busybox:latest"
history layer "COPY --chown=1:root a /a # buildkit"
built ["0"]
"#,
    );
}

#[test]
fn copy_link_on_scratch_is_the_copy_itself() {
    check(
        "FROM scratch\nADD --link a b\n",
        r#"
v0 "[internal] load build context"
  source local://context {"local.followpaths": "[\"a\"]"}
v1 "[1/1] ADD --link a b" @Dockerfile:2 <- [v0]
  copy /a -> /b mode=None unpack=true excl=[] on scratch from in0 out=Some(0)
env ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
cmd None entrypoint None workdir "/" user "" shell None stop None
labels {} ports [] volumes []
history layer "ADD a b # buildkit"
built ["0"]
"#,
    );
}

#[test]
fn copy_link_with_chmod_is_a_plain_copy() {
    check(
        "FROM busybox\nCOPY --link --chmod=600 a /a\n",
        r#"
v0 "[1/2] FROM docker.io/library/busybox:latest" @Dockerfile:1
  source docker-image://docker.io/library/busybox:latest {}
v1 "[internal] load build context"
  source local://context {"local.followpaths": "[\"a\"]"}
v2 "[2/2] COPY --link --chmod=600 a /a" @Dockerfile:2 <- [v0 v1]
  copy /a -> /a mode=Some(384) unpack=false excl=[] on in0 from in1 out=Some(0)
env ["PATH=/usr/bin:/bin", "HOME=/root"]
cmd Some(["sh"]) entrypoint None workdir "" user "" shell None stop None
labels {"base": "docker.io/library/busybox:latest"} ports [] volumes []
history layer "ADD rootfs.tar / # docker.io/library/busybox:latest"
history layer "COPY --chmod=600 a /a # buildkit"
built ["0"]
"#,
    );
}

#[test]
fn copy_link_refuses_a_chown_name() {
    check(
        "FROM busybox\nCOPY --link --chown=app a /a\n",
        "error: Dockerfile:2: invalid user index: -1: --chown=app with --link: the name \"app\" cannot be resolved on the empty filesystem a linked copy is made on; use a numeric UID[:GID]",
    );
}

#[test]
fn copy_parents_keeps_parent_dirs_below_the_pivot() {
    check(
        "FROM busybox\nCOPY --parents --from=busybox x/./y/z.txt a/*/c /dst/\n",
        r#"
v0 "FROM docker.io/library/busybox:latest" @Dockerfile:2
  source docker-image://docker.io/library/busybox:latest {}
v1 "[stage-0 2/2] COPY --parents --from=busybox x/./y/z.txt a/*/c /dst/" @Dockerfile:2 <- [v0 v0]
  copy /x -> /dst/ mode=None unpack=false excl=[] incl=["y/z.txt"] req=["/x/y/z.txt"] on in0 from in1 out=None
  copy / -> /dst/ mode=None unpack=false excl=[] incl=["a/*/c"] req=[] on act0 from in1 out=Some(0)
env ["PATH=/usr/bin:/bin", "HOME=/root"]
cmd Some(["sh"]) entrypoint None workdir "" user "" shell None stop None
labels {"base": "docker.io/library/busybox:latest"} ports [] volumes []
history layer "ADD rootfs.tar / # docker.io/library/busybox:latest"
history layer "COPY --parents x/./y/z.txt a/*/c /dst/ # buildkit"
built ["0"]
"#,
    );
}

#[test]
fn copy_chmod_octal_and_symbolic() {
    let b = build(
        "FROM busybox\nARG M=go-w\nCOPY --chmod=u=rwX,$M a /a\nCOPY --chmod=0755 b /b\n",
        &opts(),
    )
    .expect("converts");
    let copies: Vec<(Option<u32>, Option<String>)> = b
        .graph
        .vertices
        .iter()
        .filter_map(|v| match &v.op {
            Op::File(f) => match &f.actions[0].action {
                FileActionKind::Copy(c) => Some((c.mode, c.mode_str.clone())),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(
        copies,
        [(None, Some("u=rwX,go-w".to_string())), (Some(0o755), None)]
    );
    check(
        "FROM busybox\nCOPY --chmod=64a a /a\n",
        "error: Dockerfile:2: invalid chmod parameter: '64a'. it should be octal string and between 0 and 07777",
    );
    check(
        "FROM busybox\nCOPY --chmod=10000 a /a\n",
        "error: Dockerfile:2: invalid chmod parameter: '10000'. it should be octal string and between 0 and 07777",
    );
    check(
        "FROM busybox\nCOPY --chmod=u+q a /a\n",
        "error: Dockerfile:2: invalid syntax",
    );
}

#[test]
fn check_error_true_fails_on_warnings() {
    check(
        "# check=error=true\nFROM busybox AS Build\nCMD echo hi\n",
        "error: Dockerfile: lint violation found for rules: StageNameCasing, JSONArgsRecommended",
    );
    let df = crate::parse(
        "# check=skip=StageNameCasing\nFROM busybox AS Build\nCMD echo hi\n",
        "Dockerfile",
    )
    .expect("parses");
    let bases = [(
        "docker.io/library/busybox:latest".to_string(),
        kiln_solver::ImageConfig::default(),
    )]
    .into_iter()
    .collect();
    let b = to_graph(&df, &BuildOptions::default(), &bases).expect("builds");
    let got: Vec<String> = b.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        got,
        vec!["JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended behavior related to OS signals (line 3)"]
    );
}

#[test]
fn misspelt_stage_in_from_gets_a_hint() {
    let df = crate::parse(
        "FROM busybox AS build\nRUN true\nFROM bulid\n",
        "Dockerfile",
    )
    .expect("parses");
    assert_eq!(
        df.base_image_hint("docker.io/library/bulid:latest")
            .as_deref(),
        Some("build")
    );
    assert_eq!(df.base_image_hint("docker.io/library/busybox:latest"), None);
}

#[test]
fn add_from_url_and_git_are_source_ops() {
    check(
        "FROM busybox\nADD --chmod=644 https://h.example/a/f.txt?x=1 /f\nADD --keep-git-dir git://127.0.0.1:9/repo.git?tag=v1&subdir=sub /src\n",
        r#"v0 "[1/3] FROM docker.io/library/busybox:latest" @Dockerfile:1
  source docker-image://docker.io/library/busybox:latest {}
v1 "ADD --chmod=644 https://h.example/a/f.txt?x=1 /f" @Dockerfile:2
  source https://h.example/a/f.txt?x=1 {"http.filename": "f.txt"}
v2 "[2/3] ADD --chmod=644 https://h.example/a/f.txt?x=1 /f" @Dockerfile:2 <- [v0 v1]
  copy /f.txt -> /f mode=Some(420) unpack=false excl=[] on in0 from in1 out=Some(0)
v3 "ADD --keep-git-dir git://127.0.0.1:9/repo.git?tag=v1&subdir=sub /src" @Dockerfile:3
  source git://127.0.0.1:9/repo.git#refs/tags/v1:sub {"git.authheadersecret": "GIT_AUTH_HEADER", "git.authtokensecret": "GIT_AUTH_TOKEN", "git.fullurl": "git://127.0.0.1:9/repo.git", "git.keepgitdir": "true"}
v4 "[3/3] ADD --keep-git-dir git://127.0.0.1:9/repo.git?tag=v1&subdir=sub /src" @Dockerfile:3 <- [v2 v3]
  copy / -> /src mode=None unpack=false excl=[] on in0 from in1 out=Some(0)
env ["PATH=/usr/bin:/bin", "HOME=/root"]
cmd Some(["sh"]) entrypoint None workdir "" user "" shell None stop None
labels {"base": "docker.io/library/busybox:latest"} ports [] volumes []
history layer "ADD rootfs.tar / # docker.io/library/busybox:latest"
history layer "ADD --chmod=644 https://h.example/a/f.txt?x=1 /f # buildkit"
history layer "ADD git://127.0.0.1:9/repo.git?tag=v1&subdir=sub /src # buildkit"
built ["0"]"#,
    );
    for (src, err) in [
        (
            "FROM busybox\nADD --checksum=sha256:x https://h/f /f\n",
            "error: Dockerfile:2: invalid checksum digest length",
        ),
        (
            "FROM busybox\nADD --checksum=sha256:x f /f\n",
            "error: Dockerfile:2: checksum requires HTTP(S) or Git sources",
        ),
        (
            "FROM busybox\nADD --checksum=abc git://h/r.git git://h/s.git /d/\n",
            "error: Dockerfile:2: checksum can't be specified for multiple sources",
        ),
        (
            "FROM busybox\nADD --keep-git-dir=false git://h/r?keep-git-dir=1 /d\n",
            "error: Dockerfile:2: inconsistent keep-git-dir configuration",
        ),
        (
            "FROM busybox\nADD git://h/r?color=red /d\n",
            "error: Dockerfile:2: unexpected query \"color\"",
        ),
        (
            "FROM busybox\nCOPY git://h/r /d\n",
            "error: Dockerfile:2: source can't be a git ref for COPY",
        ),
    ] {
        check(src, err);
    }
}

fn with_contexts(pairs: &[(&str, NamedContext)]) -> BuildOptions {
    BuildOptions {
        named_contexts: pairs
            .iter()
            .map(|(n, c)| (context_key(n).expect("a context name"), c.clone()))
            .collect(),
        ..opts()
    }
}

fn local(name: &str, excludes: &[&str]) -> NamedContext {
    NamedContext::Local {
        local: name.to_string(),
        excludes: excludes.iter().map(|s| s.to_string()).collect(),
    }
}

#[test]
fn a_named_context_replaces_the_stage_of_its_name() {
    let src = "FROM busybox AS base\nRUN echo must not run\nONBUILD RUN no\n\
               FROM base\nCOPY --from=base /a /b\nRUN cat /b\n";
    let b = build(src, &with_contexts(&[("base", local("base", &["*.tmp"]))])).expect("build");
    // The stage's base image and RUN are gone; FROM base and COPY
    // --from=base both read the directory, with its own excludes.
    assert_eq!(sources(&b), ["local://base"]);
    assert_eq!(b.stages_built, ["base", "1"]);
    let src_op = b
        .graph
        .vertices
        .iter()
        .find_map(|v| match &v.op {
            Op::Source(s) => Some(s),
            _ => None,
        })
        .expect("a source");
    assert_eq!(
        src_op
            .attrs
            .get("local.excludepatterns")
            .map(String::as_str),
        Some("[\"*.tmp\"]")
    );
    let runs: Vec<&Vec<String>> = execs(&b).iter().map(|e| &e.meta.args).collect();
    assert_eq!(
        runs,
        [&vec!["/bin/sh".to_string(), "-c".into(), "cat /b".into()]]
    );

    // An image context: its config is the stage's, and the image is the
    // one resolved.
    let b = build(
        src,
        &with_contexts(&[(
            "base",
            NamedContext::Image("docker.io/library/alpine:3.20".into()),
        )]),
    )
    .expect("build");
    assert_eq!(
        sources(&b),
        ["docker-image://docker.io/library/alpine:3.20"]
    );
    assert_eq!(
        b.config.labels.get("base").map(String::as_str),
        Some("docker.io/library/alpine:3.20")
    );
}

#[test]
fn a_named_context_replaces_an_image_by_its_reference() {
    // `busybox` finds the context given as `docker.io/library/busybox`,
    // for FROM, COPY --from and RUN --mount=from alike.
    let src = "FROM docker.io/library/busybox:latest\n\
               COPY --from=busybox /x /x\n\
               RUN --mount=from=busybox:latest,target=/m cat /m/x\n";
    let o = with_contexts(&[("docker.io/library/busybox", local("bb", &[]))]);
    let b = build(src, &o).expect("build");
    assert_eq!(sources(&b), ["local://bb"]);
    // A directory has no config: the stage starts as on scratch.
    assert_eq!(b.config.env, [format!("PATH={DEFAULT_PATH}")]);
    assert_eq!(
        vertex_names(&b)[0],
        "[context bb] load from client",
        "{:?}",
        vertex_names(&b)
    );
    let dfile = parse(src, "Dockerfile").expect("parse");
    assert!(
        dfile.base_images(&o).expect("bases").is_empty(),
        "no base image is resolved for a directory"
    );

    // An image context in place of another image.
    let o = with_contexts(&[(
        "busybox",
        NamedContext::Image(format!(
            "docker.io/library/busybox@sha256:{}",
            "a".repeat(64)
        )),
    )]);
    let dfile = parse(src, "Dockerfile").expect("parse");
    let want = format!("docker.io/library/busybox@sha256:{}", "a".repeat(64));
    assert_eq!(
        dfile.base_images(&o).expect("bases"),
        std::slice::from_ref(&want)
    );
    let b = build(src, &o).expect("build");
    let mut read = sources(&b);
    read.dedup();
    assert_eq!(read, [format!("docker-image://{want}")]);

    // scratch is never looked up; docker-image://scratch is empty.
    let b = build(
        "FROM scratch\nCOPY --from=tools / /\n",
        &with_contexts(&[("tools", NamedContext::Scratch)]),
    )
    .expect("build");
    assert!(sources(&b).is_empty(), "{:?}", sources(&b));
}

/// A git or HTTP named context is its source op: a stage of its name
/// starts from it (with no config), and `COPY --from` reads it.
#[test]
fn a_remote_named_context_is_its_source() {
    let git = NamedContext::Remote {
        op: SourceOp {
            identifier: "git://example.invalid/repo.git#v1".into(),
            attrs: BTreeMap::new(),
            platform: None,
        },
        name: "src".into(),
    };
    let b = build(
        "FROM busybox AS src\nRUN must not run\nFROM src AS user\nRUN ls\n\
         FROM busybox\nCOPY --from=src /a /b\nCOPY --from=user /c /d\n",
        &with_contexts(&[("src", git)]),
    )
    .expect("build");
    let mut read = sources(&b);
    read.sort();
    read.dedup();
    assert_eq!(
        read,
        [
            "docker-image://docker.io/library/busybox:latest",
            "git://example.invalid/repo.git#v1"
        ]
    );
    assert!(b
        .graph
        .vertices
        .iter()
        .any(|v| v.name == "[context src] git://example.invalid/repo.git#v1"));
    assert!(!render(&b).contains("must not run"));
}

#[test]
fn stages_without_a_named_context_are_unchanged() {
    let src = "FROM busybox AS base\nRUN true\nFROM base\n";
    let plain = build(src, &opts()).expect("build");
    let other = build(src, &with_contexts(&[("unrelated", local("u", &[]))])).expect("build");
    assert_eq!(render(&plain), render(&other));
}

#[test]
fn ssh_mounts_forward_agents_by_id() {
    let b = build(
        "FROM busybox\nWORKDIR /w\n\
         RUN --mount=type=ssh --mount=type=ssh,id=gh,target=s,required,uid=1,gid=2,mode=0640 a\n\
         ENV SSH_AUTH_SOCK=/mine\n\
         RUN --mount=type=ssh,required=false b\n\
         RUN c\n",
        &opts(),
    )
    .expect("converts");
    let runs = execs(&b);
    let ssh = |r: &ExecOp| -> Vec<(String, MountType)> {
        r.mounts
            .iter()
            .filter(|m| matches!(m.mount_type, MountType::Ssh(_)))
            .map(|m| (m.dest.clone(), m.mount_type.clone()))
            .collect()
    };
    let mount = |id: &str, optional, uid, gid, mode| {
        MountType::Ssh(kiln_solver::SshMount {
            id: id.into(),
            optional,
            uid,
            gid,
            mode,
        })
    };
    assert_eq!(
        ssh(runs[0]),
        vec![
            (
                "/run/buildkit/ssh_agent.0".to_string(),
                mount("", true, 0, 0, 0o600)
            ),
            ("/w/s".to_string(), mount("gh", false, 1, 2, 0o640)),
        ]
    );
    // The first socket is SSH_AUTH_SOCK, unless the step sets it.
    assert!(runs[0]
        .meta
        .env
        .contains(&"SSH_AUTH_SOCK=/run/buildkit/ssh_agent.0".to_string()));
    assert_eq!(
        ssh(runs[1]),
        vec![(
            "/run/buildkit/ssh_agent.0".to_string(),
            mount("", true, 0, 0, 0o600)
        )]
    );
    let socks: Vec<&String> = runs[1]
        .meta
        .env
        .iter()
        .filter(|e| e.starts_with("SSH_AUTH_SOCK="))
        .collect();
    assert_eq!(socks, vec!["SSH_AUTH_SOCK=/mine"]);
    assert!(ssh(runs[2]).is_empty());
    assert!(!runs[2]
        .meta
        .env
        .iter()
        .any(|e| e.starts_with("SSH_AUTH_SOCK=/run")));
    // The image never sees the socket's variable.
    assert!(!b.config.env.iter().any(|e| e.contains("ssh_agent")));
    for (src, err) in [
        (
            "RUN --mount=type=ssh,source=x true",
            "ssh does not support source",
        ),
        (
            "RUN --mount=type=ssh,sharing=locked true",
            "invalid cache sharing set for ssh mount",
        ),
        (
            "RUN --mount=type=ssh,from=x true",
            "unexpected key 'from' for mount type 'ssh'",
        ),
        (
            "RUN --mount=type=ssh,required=maybe true",
            "invalid value for required: maybe",
        ),
        (
            "RUN --mount=type=ssh,mode=9 true",
            "invalid value 9 for mode",
        ),
        (
            "RUN --mount=type=ssh,target=/ true",
            "invalid mount target \"/\"",
        ),
    ] {
        check(
            &format!("FROM busybox\n{src}\n"),
            &format!("error: Dockerfile:2: {err}"),
        );
    }
}

#[test]
fn a_named_context_for_one_platform_is_read_by_stages_built_for_it() {
    let arm = kiln_solver::Platform::new("linux", "arm64", "");
    let key = context_key("base").expect("a context name");
    let mut o = opts();
    o.named_contexts.insert(
        crate::platform_context_key(&key, &arm),
        NamedContext::Image("docker.io/library/arm-base:1".into()),
    );
    o.named_contexts.insert(
        key,
        NamedContext::Image("docker.io/library/plain-base:1".into()),
    );
    let src = "FROM base\nFROM --platform=linux/arm64 base AS arm\nCOPY --from=base /a /b\n\
               FROM scratch\nCOPY --from=0 / /x\nCOPY --from=arm / /y\n";
    let b = build(src, &o).expect("build");
    // The arm64 stage and its --from (one vertex: the same image op) read
    // the arm64 context; the target-platform stage reads the plain one.
    assert_eq!(
        sources(&b),
        [
            "docker-image://docker.io/library/plain-base:1",
            "docker-image://docker.io/library/arm-base:1",
        ]
    );
    // Without a plain one, a stage for another platform reads the image.
    o.named_contexts
        .remove(&context_key("base").expect("a context name"));
    let b = build("FROM base\n", &o).expect("build");
    assert_eq!(
        sources(&b),
        ["docker-image://docker.io/library/base:latest"]
    );
}

/// A step's platform in a multi-platform build is named as BuildKit's
/// `prefixCommand` names it: the stage's, then the `TARGET*` arguments'
/// when they name another.
#[test]
fn step_platforms_are_named_as_buildkits() {
    let amd64 = kiln_solver::Platform {
        os: "linux".into(),
        architecture: "amd64".into(),
        variant: String::new(),
    };
    let env = |e: &[&str]| e.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for (vars, want) in [
        (env(&[]), "linux/amd64"),
        (
            env(&["PATH=/bin", "TARGETARCH=arm64"]),
            "linux/amd64->arm64",
        ),
        (env(&["TARGETPLATFORM=linux/arm/v7"]), "linux/amd64->arm/v7"),
        (
            env(&["TARGETPLATFORM=linux/arm64", "TARGETARCH=s390x"]),
            "linux/amd64->arm64",
        ),
        (
            env(&["TARGETPLATFORM=windows/amd64"]),
            "linux/amd64->windows/amd64",
        ),
        (
            env(&["TARGETPLATFORM=linux/amd64", "TARGETOS=linux"]),
            "linux/amd64",
        ),
        (env(&["TARGETOS=linux"]), "linux/amd64"),
        (env(&["TARGETPLATFORM=not a platform"]), "linux/amd64"),
        (env(&["TARGETARCHX=arm64"]), "linux/amd64"),
    ] {
        assert_eq!(
            super::gocompat::platform_prefix(&amd64, &vars),
            want,
            "{vars:?}"
        );
    }
}

/// A heredoc `RUN`'s name shows its script's summary with the step's
/// variables expanded, the quoted heredoc's too (as BuildKit 73ed6825c
/// named them).
#[test]
fn a_heredoc_runs_name_expands_its_summary() {
    let src = "FROM busybox\nARG V=val\nENV E=env\nRUN <<'EOF'\necho \"q $V $E\"\nEOF\nRUN <<EOF\necho \"u $V $E\"\nEOF\n";
    let b = build(src, &opts()).expect("converts");
    let names = vertex_names(&b);
    assert!(
        names.contains(&"[2/3] RUN <<'EOF' (echo \"q val env\")".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"[3/3] RUN <<EOF (echo \"u val env\")".to_string()),
        "{names:?}"
    );
}

/// An unquoted heredoc longer than the expansion's margin (128 KiB) is
/// written as it is, as BuildKit writes it.
#[test]
fn a_long_unquoted_heredoc_expands_whole() {
    let body = "line of plain text\n".repeat(12_000);
    let src = format!("FROM busybox\nCOPY <<EOF /big\n{body}EOF\n");
    let b = build(&src, &opts()).expect("converts");
    let written: Vec<usize> = b
        .graph
        .vertices
        .iter()
        .filter_map(|v| match &v.op {
            Op::File(f) => Some(f),
            _ => None,
        })
        .flat_map(|f| &f.actions)
        .filter_map(|a| match &a.action {
            kiln_solver::FileActionKind::MkFile(m) => Some(m.data.len()),
            _ => None,
        })
        .collect();
    assert_eq!(written, [body.len()]);
}

/// An image a `--from` names is a stage of its own in BuildKit, with no
/// `FROM --platform`: it is read for the target platform even by a stage
/// built for the build platform (BuildKit 73ed6825c's `unregistered`
/// stages take the target platform).
#[test]
fn an_image_a_from_names_is_read_for_the_target_platform() {
    let arm64 = kiln_solver::Platform::new("linux", "arm64", "");
    let o = BuildOptions {
        target_platform: Some(arm64.clone()),
        ..opts()
    };
    let src = "FROM --platform=$BUILDPLATFORM busybox AS tools\nCOPY --from=alpine /x /x\n";
    let df = parse(src, "Dockerfile").expect("parses");
    assert_eq!(
        df.base_image_refs(&o).expect("plans"),
        vec![
            crate::BaseRef {
                reference: "docker.io/library/busybox:latest".into(),
                platform: None
            },
            crate::BaseRef {
                reference: "docker.io/library/alpine:latest".into(),
                platform: Some(arm64.clone())
            },
        ]
    );
    let b = build(src, &o).expect("converts");
    let alpine = b
        .graph
        .vertices
        .iter()
        .find_map(|v| match &v.op {
            Op::Source(s) if s.identifier.contains("alpine") => Some(s.platform.clone()),
            _ => None,
        })
        .expect("the alpine source");
    assert_eq!(alpine, Some(arm64));
}

/// `--chown` values as BuildKit's `llb.WithUser` reads them: 32-bit
/// signed numbers are ids (a negative one wraps, as Go's `uint32`
/// conversion), `root` and an empty part are 0, and anything else, a
/// number past 32 bits too, is a name looked up in the image.
#[test]
fn chown_values_are_read_as_buildkits_with_user() {
    let ids = |spec: &str| {
        let o = gocompat::chown_opt(spec);
        (o.user, o.group)
    };
    let id = |n: u32| Some(UserOpt::ById(n));
    let name = |s: &str| Some(UserOpt::ByName(s.to_string()));
    assert_eq!(ids("-5"), (id(4_294_967_291), None));
    assert_eq!(ids("+7:-1"), (id(7), id(u32::MAX)));
    assert_eq!(ids("root:root"), (id(0), id(0)));
    assert_eq!(ids(":5"), (id(0), id(5)));
    assert_eq!(ids("5:"), (id(5), id(0)));
    assert_eq!(ids("2147483647"), (id(2_147_483_647), None));
    assert_eq!(ids("2147483648"), (name("2147483648"), None));
    assert_eq!(ids("4294967295:app"), (name("4294967295"), name("app")));
}
