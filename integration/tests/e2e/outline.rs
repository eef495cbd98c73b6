//! `buildx build --call=outline` (issue 12): the outline request through
//! kilnd's gateway (`requestid=frontend.outline`) and embedded `kiln build
//! --call=outline`, answered with what BuildKit's Dockerfile frontend
//! answers for the same Dockerfile (checked against buildkitd v0.2x:
//! the same JSON and text).

use crate::common;

use kiln_integration::Harness;
use serde_json::json;

const DF: &str = "\
# GO_VERSION the Go toolchain
ARG GO_VERSION=1.22
ARG UNUSED=x
# BASE the base image
ARG BASE=busybox
ARG DERIVED=v${GO_VERSION}
FROM ${BASE} AS base
# MODE how to build
ARG MODE=release
RUN --mount=type=secret,id=token,required echo never-run
# build compiles things
FROM base AS build
ARG GO_VERSION
ARG DERIVED
ARG TARGETPLATFORM
ARG LOCAL
RUN --mount=type=ssh echo && echo
RUN --mount=type=secret,target=/run/npmrc echo
FROM scratch AS other
ARG OTHER
COPY --from=build /x /y
";

fn at(line: usize) -> serde_json::Value {
    json!({"ranges": [{"start": {"line": line}, "end": {"line": line}}]})
}

/// BuildKit's answer for `--target build --build-arg MODE=debug`.
fn expected() -> serde_json::Value {
    json!({
        "name": "build",
        "description": "compiles things",
        "args": [
            {"name": "GO_VERSION", "description": "the Go toolchain", "value": "1.22", "location": at(2)},
            {"name": "BASE", "description": "the base image", "value": "busybox", "location": at(5)},
            {"name": "DERIVED", "value": "v1.22", "location": at(6)},
            {"name": "MODE", "description": "how to build", "value": "debug", "location": at(9)},
            {"name": "LOCAL", "location": at(16)},
        ],
        "secrets": [
            {"name": "token", "required": true, "location": at(10)},
            {"name": "npmrc", "location": at(18)},
        ],
        "ssh": [{"name": "default", "location": at(17)}],
    })
}

const TEXT: &str = "TARGET:      build\nDESCRIPTION: compiles things\n\n\
BUILD ARG    VALUE     DESCRIPTION\n\
GO_VERSION   1.22      the Go toolchain\n\
BASE         busybox   the base image\n\
DERIVED      v1.22     \n\
MODE         debug     how to build\n\
LOCAL                  \n\n\
SECRET   REQUIRED\ntoken    true\nnpmrc    \n\n\
SSH       REQUIRED\ndefault   \n\n";

fn without_sources(mut v: serde_json::Value) -> serde_json::Value {
    let sources = v
        .as_object_mut()
        .and_then(|o| o.remove("sources"))
        .expect("sources");
    assert_eq!(sources.as_array().map(Vec::len), Some(1), "{sources}");
    v
}

#[tokio::test]
async fn the_outline_request_answers_as_buildkit_does() {
    let ns = "outline";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ctx = h.context("outline", &[("Dockerfile", DF)]);

    // Through kilnd's gateway, as buildx sends it.
    let answer = common::subrequest(
        &k.addr(),
        &ctx,
        "frontend.outline",
        "target=build,build-arg:MODE=debug",
    );
    let stdout = &answer.stdout;
    assert!(!stdout.contains("never-run"), "{stdout}");
    let value = |key: &str| answer.value(key);
    assert_eq!(value("version").trim(), "1.0.0");
    let json: serde_json::Value =
        serde_json::from_str(&value("result.json")).expect("result.json is JSON");
    assert_eq!(without_sources(json.clone()), expected());
    assert_eq!(
        value("result.txt").strip_suffix('\n').unwrap_or_default(),
        TEXT
    );

    // Embedded: the same answer, printed as buildx prints it.
    let c = ctx.to_str().expect("utf8");
    let embedded = h
        .kiln(
            ns,
            &[
                "build",
                "--call=outline,format=json",
                "--target",
                "build",
                "--build-arg",
                "MODE=debug",
                c,
            ],
        )
        .expect("kiln runs")
        .ok();
    let ejson: serde_json::Value = serde_json::from_str(&embedded.stdout).expect("JSON");
    assert_eq!(ejson, json);
    let text = h
        .kiln(
            ns,
            &[
                "build",
                "--call=outline",
                "--target=build",
                "--build-arg=MODE=debug",
                c,
            ],
        )
        .expect("kiln runs")
        .ok();
    assert_eq!(text.stdout, TEXT);
    // kiln's own client through kilnd: asked as buildx asks, printed as
    // the embedded answer.
    let addr = k.addr();
    let remote = |call: &str| {
        h.kiln(
            ns,
            &[
                "--addr",
                &addr,
                "build",
                "--progress=plain",
                call,
                "--target=build",
                "--build-arg=MODE=debug",
                c,
            ],
        )
        .expect("kiln runs")
        .ok()
    };
    let rjson = remote("--call=outline,format=json");
    assert_eq!(rjson.stdout, embedded.stdout);
    assert!(
        !rjson.stderr.contains("No output specified"),
        "{}",
        rjson.stderr
    );
    assert_eq!(remote("--call=outline").stdout, TEXT);
    // The default target reads `build` through its COPY --from.
    let other = h
        .kiln(ns, &["build", "--call=outline,format=json", c])
        .expect("kiln runs")
        .ok();
    let o: serde_json::Value = serde_json::from_str(&other.stdout).expect("JSON");
    assert_eq!(o["name"], "other");
    let names: Vec<&str> = o["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(
        names,
        ["GO_VERSION", "BASE", "DERIVED", "MODE", "LOCAL", "OTHER"]
    );
    // Nothing ran.
    assert!(h
        .ctr(ns, &["containers", "ls", "-q"])
        .expect("ctr")
        .trim()
        .is_empty());
}

/// `buildx build --call=subrequests.describe`: the subrequests the
/// frontend answers (outline, targets, describe), through kilnd's gateway
/// as buildx asks, and from `kiln build` embedded and through kilnd, as
/// BuildKit's Dockerfile frontend lists them.
#[tokio::test]
async fn the_describe_request_lists_the_subrequests() {
    let ns = "describe";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ctx = h.context("describe", &[("Dockerfile", DF)]);
    let text = "NAME                 VERSION DESCRIPTION\n\
                outline              1.0.0   List all parameters current build target supports\n\
                targets              1.0.0   List all targets current build supports\n\
                subrequests.describe 1.0.0   List available subrequest types\n";
    let answer = common::subrequest(&k.addr(), &ctx, "frontend.subrequests.describe", "");
    assert_eq!(answer.value("version").trim(), "1.0.0");
    assert_eq!(answer.value("result.txt").strip_suffix('\n'), Some(text));
    let json: serde_json::Value =
        serde_json::from_str(&answer.value("result.json")).expect("result.json is JSON");
    let names: Vec<&str> = json
        .as_array()
        .expect("a list")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(
        names,
        [
            "frontend.outline",
            "frontend.targets",
            "frontend.subrequests.describe"
        ]
    );
    let c = ctx.to_str().expect("utf8");
    let addr = k.addr();
    for addr in [None, Some(addr.as_str())] {
        let run = |call: &str| {
            let mut args = Vec::new();
            if let Some(a) = addr {
                args.extend(["--addr", a]);
            }
            args.extend(["build", "--progress=plain", call, c]);
            h.kiln(ns, &args).expect("kiln runs").ok()
        };
        assert_eq!(run("--call=subrequests.describe").stdout, text, "{addr:?}");
        let j: serde_json::Value =
            serde_json::from_str(&run("--call=subrequests.describe,format=json").stdout)
                .expect("JSON");
        assert_eq!(j, json, "{addr:?}");
        // As BuildKit's frontend, the Dockerfile is read first.
        let empty = h.context("describe-empty", &[("other.txt", "x\n")]);
        let mut args = Vec::new();
        if let Some(a) = addr {
            args.extend(["--addr", a]);
        }
        args.extend([
            "build",
            "--progress=plain",
            "--call=subrequests.describe",
            empty.to_str().expect("utf8"),
        ]);
        let out = h.kiln(ns, &args).expect("kiln runs");
        assert!(!out.success, "{addr:?}: {}", out.stdout);
        assert!(
            out.stderr.contains("Dockerfile"),
            "{addr:?}: {}",
            out.stderr
        );
    }
}
