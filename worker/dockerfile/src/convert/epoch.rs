//! `SOURCE_DATE_EPOCH`, from `--build-arg` or a global `ARG` default, as
//! BuildKit's frontend reads it: seconds since the epoch, empty (unset),
//! or a name whose source's time the build takes:
//! - `context`: the main build context (a git commit's time, an HTTP
//!   download's `Last-Modified`; a local directory has none);
//! - a named context: its source's time the same way (a directory or an
//!   image has none);
//! - a source-only stage (`FROM scratch` with exactly one remote `ADD` of
//!   a git or HTTP(S) source, and `ARG`s): that source's time.
//!
//! This crate does no IO: [`epoch_source`] says which source to ask, the
//! caller (`kiln-frontend`) asks the engine and passes the answer back as
//! [`BuildOptions::resolved_epoch`]; [`to_graph`](super::to_graph) then
//! uses it in place of the name, as if it had been given as the value
//! (BuildKit's `setBuildArgValue`: an unset result removes the variable).

use super::plan::{global_env, named_context};
use crate::instructions::{Copy, Dockerfile, Instruction, Stage};
use crate::shell::{add_env, lookup, Lex};
use crate::{BuildOptions, NamedContext, ParseError, Result};
use kiln_solver::source::{self as remote, GitRef, GitSource, HttpSource};
use kiln_solver::SourceOp;
use std::collections::BTreeMap;

/// The build argument.
pub const KEY: &str = "SOURCE_DATE_EPOCH";

/// The source a `SOURCE_DATE_EPOCH` name stands for, whose time the
/// caller resolves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EpochSource {
    /// `context`: the main build context.
    Context,
    /// A named context of that name.
    Named { name: String, context: NamedContext },
    /// A source-only stage: the source op of its one remote `ADD`.
    Stage { name: String, op: SourceOp },
}

impl EpochSource {
    /// The progress name of resolving it (BuildKit's).
    pub fn log_name(&self) -> String {
        match self {
            EpochSource::Context => "[internal] resolve main build context metadata".into(),
            EpochSource::Named { name, .. } => {
                format!("[internal] resolve SOURCE_DATE_EPOCH named context {name}")
            }
            EpochSource::Stage { name, .. } => {
                format!("[internal] resolve SOURCE_DATE_EPOCH source stage {name}")
            }
        }
    }
}

/// The time of an [`EpochSource`] as the caller resolved it, in seconds;
/// `None` when the source has none (a local directory, an image, an HTTP
/// file without `Last-Modified` that is not an archive).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResolvedEpoch(pub Option<i64>);

/// BuildKit's `getBuildArgValue`: the build argument (even empty), else
/// the global `ARG`'s value when not empty.
fn raw<'a>(opts: &'a BuildOptions, env: &'a [String]) -> Option<&'a str> {
    match opts.build_args.get(KEY) {
        Some(v) => Some(v.as_str()),
        None => lookup(env, KEY).filter(|v| !v.is_empty()),
    }
}

/// Which source `SOURCE_DATE_EPOCH` names in the build `opts` describes,
/// if it names one (a number, empty or unset name none); BuildKit's errors
/// for a name that is neither a context nor a source-only stage.
pub fn epoch_source(df: &Dockerfile, opts: &BuildOptions) -> Result<Option<EpochSource>> {
    let env = global_env(df, opts, &opts.build_args)?;
    Ok(source_of(df, opts, &env)?.map(|(s, _)| s))
}

/// [`epoch_source`] with the Dockerfile line a refusal names.
fn source_of(
    df: &Dockerfile,
    opts: &BuildOptions,
    env: &[String],
) -> Result<Option<(EpochSource, usize)>> {
    let Some(v) = raw(opts, env) else {
        return Ok(None);
    };
    if v.is_empty() || v.parse::<i64>().is_ok() {
        return Ok(None);
    }
    let first = df.stages.first().map_or(1, |s| s.line);
    if v == "context" {
        return Ok(Some((EpochSource::Context, first)));
    }
    if let Some(ctx) = named_context(opts, v, &opts.target_platform()) {
        let src = EpochSource::Named {
            name: v.to_string(),
            context: ctx.clone(),
        };
        return Ok(Some((src, first)));
    }
    let Some(stage) = df
        .stages
        .iter()
        .find(|s| s.name.as_deref().is_some_and(|n| n.eq_ignore_ascii_case(v)))
    else {
        return Err(invalid(
            opts,
            first,
            format!("invalid SOURCE_DATE_EPOCH: {v}"),
        ));
    };
    // The stage's own words see the global scope without the variable
    // being resolved.
    let env: Vec<String> = env
        .iter()
        .filter(|kv| !kv.starts_with(&format!("{KEY}=")))
        .cloned()
        .collect();
    let op = stage_source(df, opts, stage, env)?;
    let src = EpochSource::Stage {
        name: stage.name.clone().unwrap_or_default(),
        op,
    };
    Ok(Some((src, stage.line)))
}

fn invalid(opts: &BuildOptions, line: usize, message: String) -> ParseError {
    ParseError::Invalid {
        file: opts.filename.clone(),
        line,
        message,
    }
}

/// BuildKit's checks of a source stage, in its order, and the source op
/// of its one remote `ADD`. Errors name the stage's line.
fn stage_source(
    df: &Dockerfile,
    opts: &BuildOptions,
    stage: &Stage,
    mut env: Vec<String>,
) -> Result<SourceOp> {
    let err = |m: String| invalid(opts, stage.line, m);
    let lex = Lex::new(df.escape);
    let base = lex.process_word(&stage.base, &env).map_err(err)?;
    if base != "scratch" {
        return Err(err("SOURCE_DATE_EPOCH stage must use FROM scratch".into()));
    }
    let mut add: Option<&Copy> = None;
    for c in &stage.commands {
        match &c.instruction {
            Instruction::Arg(args) => {
                for a in args {
                    let value = match (opts.build_args.get(&a.key), &a.default) {
                        (Some(v), _) => v.clone(),
                        (None, Some(d)) => lex.process_word(d, &env).map_err(err)?,
                        (None, None) => continue,
                    };
                    add_env(&mut env, &a.key, &value).map_err(err)?;
                }
            }
            Instruction::Copy(cp) if cp.add => {
                if add.is_some() {
                    return Err(err(
                        "SOURCE_DATE_EPOCH stage must contain exactly one remote ADD".into(),
                    ));
                }
                add = Some(cp);
            }
            _ => {
                return Err(err(format!(
                    "SOURCE_DATE_EPOCH stage does not meet source-only requirements: unsupported {} instruction",
                    c.word
                )))
            }
        }
    }
    let Some(add) = add else {
        return Err(err(
            "SOURCE_DATE_EPOCH stage must contain exactly one remote ADD".into(),
        ));
    };
    if !add.contents.is_empty() || add.srcs.len() != 1 {
        return Err(err(
            "SOURCE_DATE_EPOCH stage must contain exactly one remote ADD source".into(),
        ));
    }
    let src = lex.process_word(&add.srcs[0], &env).map_err(err)?;
    let checksum = match &add.checksum {
        Some(c) => Some(lex.process_word(c, &env).map_err(err)?),
        None => None,
    };
    if src.starts_with("http://") || src.starts_with("https://") {
        if let Some(c) = &checksum {
            remote::parse_sha256(c).map_err(|e| err(e.to_string()))?;
        }
        return Ok(HttpSource {
            url: src.clone(),
            filename: remote::url_file_name(&src),
            checksum: checksum.unwrap_or_default(),
            ..HttpSource::default()
        }
        .to_op());
    }
    let Some(g) = GitRef::parse(&src).map_err(|e| err(e.to_string()))? else {
        return Err(err(
            "SOURCE_DATE_EPOCH stage source must be a single HTTP(S) or Git ADD".into(),
        ));
    };
    let mut s = GitSource::from_ref(&g);
    s.keep_git_dir = add.keep_git_dir == Some(true) || g.keep_git_dir == Some(true);
    if let Some(c) = checksum {
        s.checksum = c;
    }
    let op = s.to_op();
    // What the engine would refuse is refused now, before any step.
    GitSource::from_op(&op).map_err(|e| match e {
        remote::SourceError::Unsupported(what) => ParseError::Unsupported {
            file: opts.filename.clone(),
            line: stage.line,
            feature: format!("SOURCE_DATE_EPOCH from an ADD of {what}"),
        },
        e => err(e.to_string()),
    })?;
    Ok(op)
}

/// The build's `SOURCE_DATE_EPOCH` in seconds, and whether the variable
/// was set at all (then its value becomes the result, see [`apply`]).
/// A name whose source the caller did not resolve is refused, except
/// `context`, which without a caller is the local context (no time), and
/// a named context that is not a remote source (no time either).
pub(super) fn resolve(
    df: &Dockerfile,
    opts: &BuildOptions,
    env: &[String],
) -> Result<(bool, Option<i64>)> {
    let Some(v) = raw(opts, env) else {
        return Ok((false, None));
    };
    if v.is_empty() {
        return Ok((true, None));
    }
    if let Ok(secs) = v.parse::<i64>() {
        return Ok((true, Some(secs)));
    }
    let Some((src, line)) = source_of(df, opts, env)? else {
        return Ok((true, None));
    };
    if let Some(r) = opts.resolved_epoch {
        return Ok((true, r.0));
    }
    let unsupported = |what: &str| ParseError::Unsupported {
        file: opts.filename.clone(),
        line,
        feature: format!("SOURCE_DATE_EPOCH={v} ({what})"),
    };
    match src {
        EpochSource::Context => Ok((true, None)),
        EpochSource::Named {
            context: NamedContext::Remote { .. },
            ..
        } => Err(unsupported(
            "the time of a named context, without a frontend to resolve it",
        )),
        EpochSource::Named { .. } => Ok((true, None)),
        EpochSource::Stage { .. } => Err(unsupported(
            "the time of a remote ADD source, without a frontend to resolve it",
        )),
    }
}

/// Puts the resolved value in place of the one given, where it was given
/// (BuildKit's `setBuildArgValue`): in the build arguments and in the
/// global scope, as seconds, or removed when the source has no time.
pub(super) fn apply(
    build_args: &mut BTreeMap<String, String>,
    global_env: &mut Vec<String>,
    secs: Option<i64>,
) -> std::result::Result<(), String> {
    let prefix = format!("{KEY}=");
    match secs {
        Some(s) => {
            if build_args.contains_key(KEY) {
                build_args.insert(KEY.into(), s.to_string());
            }
            if global_env.iter().any(|kv| kv.starts_with(&prefix)) {
                add_env(global_env, KEY, &s.to_string())?;
            }
        }
        None => {
            build_args.remove(KEY);
            global_env.retain(|kv| !kv.starts_with(&prefix));
        }
    }
    Ok(())
}
