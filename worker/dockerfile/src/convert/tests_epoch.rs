//! `SOURCE_DATE_EPOCH` naming a source (`context`, a named context, a
//! source-only stage): which source [`epoch_source`] finds, BuildKit's
//! refusals, and the resolved time used as the value.

use super::epoch::{epoch_source, EpochSource, ResolvedEpoch};
use super::*;
use crate::parse;
use kiln_solver::source::{GitSource, HttpSource};

fn with_arg(v: &str) -> BuildOptions {
    let mut o = BuildOptions::default();
    o.build_args.insert("SOURCE_DATE_EPOCH".into(), v.into());
    o
}

fn source(src: &str, opts: &BuildOptions) -> Result<Option<EpochSource>> {
    let df = parse(src, &opts.filename)?;
    epoch_source(&df, opts)
}

fn convert(src: &str, opts: &BuildOptions) -> Result<Build> {
    let df = parse(src, &opts.filename)?;
    let bases = df
        .base_images(opts)?
        .into_iter()
        .map(|r| (r, ImageConfig::default()))
        .collect();
    to_graph(&df, opts, &bases)
}

fn run_env(b: &Build) -> Vec<String> {
    b.graph
        .needed_for(b.result)
        .iter()
        .find_map(|id| match &b.graph.vertex(*id).op {
            Op::Exec(e) => Some(e.meta.env.clone()),
            _ => None,
        })
        .expect("a RUN step")
}

const STAGE: &str = "ARG SOURCE_DATE_EPOCH=mysource\n\
                     FROM scratch AS mysource\n\
                     ARG FILE=src.tar\n\
                     ADD http://127.0.0.1:8080/${FILE} /\n\
                     FROM busybox\n\
                     ARG SOURCE_DATE_EPOCH\n\
                     RUN echo -n \"$SOURCE_DATE_EPOCH\" >/epoch\n";

#[test]
fn a_source_stage_names_its_remote_add() {
    let opts = BuildOptions::default();
    let Some(EpochSource::Stage { name, op }) = source(STAGE, &opts).expect("source") else {
        panic!("a source stage");
    };
    assert_eq!(name, "mysource");
    let http = HttpSource::from_op(&op).expect("http").expect("http");
    // The stage's ARG expands in its ADD; the file keeps the URL's name.
    assert_eq!(http.url, "http://127.0.0.1:8080/src.tar");
    assert_eq!(http.filename, "src.tar");
    // A build argument reaches the stage's ARG.
    let mut o = BuildOptions::default();
    o.build_args.insert("FILE".into(), "other.tgz".into());
    let Some(EpochSource::Stage { op, .. }) = source(STAGE, &o).expect("source") else {
        panic!("a source stage");
    };
    let http = HttpSource::from_op(&op).expect("http").expect("http");
    assert_eq!(http.url, "http://127.0.0.1:8080/other.tgz");
    // A number given as a build argument wins: nothing to resolve.
    assert_eq!(source(STAGE, &with_arg("1700000502")).expect("none"), None);
    assert_eq!(source(STAGE, &with_arg("")).expect("none"), None);
}

#[test]
fn a_git_source_stage_keeps_its_ref_and_flags() {
    let src = "FROM scratch AS Src\n\
               ADD --keep-git-dir=true git://127.0.0.1/repo.git#v1:sub /\n\
               FROM scratch\n";
    let Some(EpochSource::Stage { op, .. }) = source(src, &with_arg("src")).expect("source") else {
        panic!("a source stage");
    };
    let git = GitSource::from_op(&op).expect("git").expect("git");
    assert_eq!(git.remote, "git://127.0.0.1/repo.git");
    assert_eq!(git.reference, "v1");
    assert_eq!(git.subdir, "sub");
    assert!(git.keep_git_dir);
    // Without a resolved time the converter alone cannot date the build.
    let err = convert(src, &with_arg("src")).expect_err("unresolved");
    assert_eq!(
        err.to_string(),
        "Dockerfile:1: SOURCE_DATE_EPOCH=src (the time of a remote ADD source, without a frontend to resolve it) is not supported yet"
    );
}

#[test]
fn the_resolved_time_is_the_value() {
    let mut opts = BuildOptions {
        resolved_epoch: Some(ResolvedEpoch(Some(1_700_000_402))),
        ..BuildOptions::default()
    };
    let b = convert(STAGE, &opts).expect("builds");
    assert_eq!(b.config.source_date_epoch, Some(1_700_000_402));
    assert!(
        run_env(&b).contains(&"SOURCE_DATE_EPOCH=1700000402".to_string()),
        "{:?}",
        run_env(&b)
    );
    let created: Vec<Option<&str>> = b
        .config
        .history
        .iter()
        .map(|h| h.created.as_deref())
        .collect();
    assert_eq!(
        created,
        [Some("2023-11-14T22:20:02Z"), Some("2023-11-14T22:20:02Z")]
    );
    // The source stage itself is not built for the target.
    assert_eq!(b.stages_built, ["1"]);
    // A source without a time unsets the variable, as BuildKit does.
    opts.resolved_epoch = Some(ResolvedEpoch(None));
    let b = convert(STAGE, &opts).expect("builds");
    assert_eq!(b.config.source_date_epoch, None);
    assert!(
        !run_env(&b)
            .iter()
            .any(|e| e.starts_with("SOURCE_DATE_EPOCH=")),
        "{:?}",
        run_env(&b)
    );
    assert_eq!(b.config.history[0].created_by, "ARG SOURCE_DATE_EPOCH");
    assert_eq!(b.config.history[0].created, None);
}

#[test]
fn context_without_a_remote_context_is_unset() {
    let src = "FROM busybox\nARG SOURCE_DATE_EPOCH\nRUN true\n";
    let opts = with_arg("context");
    assert_eq!(
        source(src, &opts).expect("source"),
        Some(EpochSource::Context)
    );
    let b = convert(src, &opts).expect("builds");
    assert_eq!(b.config.source_date_epoch, None);
    // Not the word `context`: the variable is gone.
    assert!(!run_env(&b)
        .iter()
        .any(|e| e.starts_with("SOURCE_DATE_EPOCH")));
    // Resolved (a git or HTTP context), it is the value.
    let opts = BuildOptions {
        resolved_epoch: Some(ResolvedEpoch(Some(1_700_000_101))),
        ..with_arg("context")
    };
    let b = convert(src, &opts).expect("builds");
    assert_eq!(b.config.source_date_epoch, Some(1_700_000_101));
    assert!(run_env(&b).contains(&"SOURCE_DATE_EPOCH=1700000101".to_string()));
}

#[test]
fn a_named_context_is_found_before_a_stage() {
    let src = "ARG SOURCE_DATE_EPOCH=mysource\nFROM scratch\nCOPY Dockerfile .\n";
    let op = HttpSource {
        url: "http://127.0.0.1:8080/src.tar".into(),
        filename: "context".into(),
        ..HttpSource::default()
    }
    .to_op();
    let mut opts = BuildOptions::default();
    opts.named_contexts.insert(
        context_key("mysource").expect("a context name"),
        NamedContext::Remote {
            op: op.clone(),
            name: "mysource".into(),
        },
    );
    assert_eq!(
        source(src, &opts).expect("source"),
        Some(EpochSource::Named {
            name: "mysource".into(),
            context: NamedContext::Remote {
                op,
                name: "mysource".into()
            }
        })
    );
    let err = convert(src, &opts).expect_err("unresolved");
    assert_eq!(
        err.to_string(),
        "Dockerfile:2: SOURCE_DATE_EPOCH=mysource (the time of a named context, without a frontend to resolve it) is not supported yet"
    );
    opts.resolved_epoch = Some(ResolvedEpoch(Some(1_700_000_601)));
    let b = convert(src, &opts).expect("builds");
    assert_eq!(b.config.source_date_epoch, Some(1_700_000_601));
    // A directory has no time of its own: unset.
    opts.resolved_epoch = None;
    opts.named_contexts.insert(
        context_key("mysource").expect("a context name"),
        NamedContext::Local {
            local: "dir".into(),
            excludes: Vec::new(),
        },
    );
    let b = convert(src, &opts).expect("builds");
    assert_eq!(b.config.source_date_epoch, None);
}

#[test]
fn a_name_that_is_nothing_is_refused() {
    let src = "ARG SOURCE_DATE_EPOCH=not-a-timestamp\nFROM scratch\nCOPY Dockerfile .\n";
    let opts = BuildOptions::default();
    assert_eq!(
        source(src, &opts).expect_err("invalid").to_string(),
        "Dockerfile:2: invalid SOURCE_DATE_EPOCH: not-a-timestamp"
    );
    assert_eq!(
        convert(src, &opts).expect_err("invalid").to_string(),
        "Dockerfile:2: invalid SOURCE_DATE_EPOCH: not-a-timestamp"
    );
}
