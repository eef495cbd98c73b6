//! The build checks that need variables, after BuildKit's
//! `dockerfile2llb/validations.go` (rule names and texts are BuildKit's):
//! UndefinedArgInFrom, InvalidDefaultArgInFrom, RedundantTargetPlatform and
//! FromPlatformFlagConstDisallowed over every `FROM`, and UndefinedVar,
//! SecretsUsedInArgOrEnv, ExposeInvalidFormat and InvalidBaseImagePlatform
//! while a stage's instructions are dispatched. The rules that need only the parse tree
//! are in [`crate::lint`].

use super::*;
use crate::parser::Warning;
use crate::shell::Matches;

/// Words that make a build arg or env name look like a secret, and those
/// that clear it (`validateNoSecretKey`), compared with each `_`-separated
/// part of the name, in any case.
const SECRET_WORDS: [&str; 10] = [
    "apikey",
    "auth",
    "credential",
    "credentials",
    "key",
    "password",
    "pword",
    "passwd",
    "secret",
    "token",
];
const NOT_SECRET_WORDS: [&str; 3] = ["public", "file", "version"];

fn warning(rule: &str, line: usize, message: String) -> Warning {
    Warning {
        rule: rule.to_string(),
        message,
        line,
    }
}

/// `(did you mean X?)`-style hint text, or nothing.
fn did_you_mean(name: &str, options: &[&str], prefix: &str) -> String {
    crate::suggest::search(name, options, true)
        .map(|m| format!(" (did you mean {prefix}{m}?)"))
        .unwrap_or_default()
}

/// InvalidBaseImagePlatform for a stage whose base is the image `name`
/// (its `FROM` word, args expanded) built for `expected`: the image's own
/// config names another OS or architecture (BuildKit's
/// `validateBaseImagePlatform`; a variant alone does not count). An image
/// without layers (BuildKit's scratch) is not checked.
pub(super) fn base_image_platform(
    name: &str,
    expected: &kiln_solver::Platform,
    config: &ImageConfig,
    line: usize,
) -> Option<Warning> {
    let actual = config.base_platform.as_ref()?;
    let scratch = config.base_diff_ids.is_empty() && config.history.iter().all(|h| h.empty_layer);
    if scratch || (actual.os == expected.os && actual.architecture == expected.architecture) {
        return None;
    }
    Some(warning(
        "InvalidBaseImagePlatform",
        line,
        format!(
            "Base image {name} was pulled with platform {}, expected {} for current build",
            go_quote(&actual.to_string()),
            go_quote(&expected.to_string())
        ),
    ))
}

/// SecretsUsedInArgOrEnv for one `ARG` or `ENV` name.
pub(super) fn secret_key(instruction: &str, key: &str, line: usize) -> Option<Warning> {
    let parts: Vec<String> = key.split('_').map(str::to_lowercase).collect();
    let has = |words: &[&str]| parts.iter().any(|p| words.contains(&p.as_str()));
    (has(&SECRET_WORDS) && !has(&NOT_SECRET_WORDS)).then(|| {
        warning(
            "SecretsUsedInArgOrEnv",
            line,
            format!(
                "Do not use ARG or ENV instructions for sensitive data ({instruction} {})",
                go_quote(key)
            ),
        )
    })
}

/// WorkdirRelativePath for the first `WORKDIR` of a stage (and its in-file
/// parents) when its expanded path is relative.
pub(super) fn workdir_relative(path: &str, line: usize) -> Option<Warning> {
    (!path.starts_with('/')).then(|| {
        warning(
            "WorkdirRelativePath",
            line,
            format!(
                "Relative workdir {path:?} can have unexpected results if the base image changes"
            ),
        )
    })
}

/// ExposeProtoCasing and ExposeInvalidFormat for one expanded `EXPOSE`
/// word (BuildKit checks the expanded ports, in this order).
pub(super) fn expose_checks(port: &str, line: usize) -> Vec<Warning> {
    let mut out = Vec::new();
    let container = port.rsplit(':').next().unwrap_or(port);
    let proto = container.split('/').nth(1).unwrap_or_default();
    if proto != proto.to_lowercase() {
        out.push(warning(
            "ExposeProtoCasing",
            line,
            format!("Defined protocol '{port}' in EXPOSE instruction should be lowercase"),
        ));
    }
    if port.contains(':') {
        out.push(warning(
            "ExposeInvalidFormat",
            line,
            format!(
                "EXPOSE instruction should not define an IP address or host-port mapping, found '{port}'"
            ),
        ));
    }
    out
}

/// UndefinedVar for the names one instruction looked up and did not find
/// in `env` (the stage's env before it), one per word that used them:
/// declared `ARG`s without a value and the args BuildKit reads itself do
/// not count.
pub(super) fn undefined_vars(
    unmatched: &[String],
    args: &[(String, Option<String>)],
    env: &[String],
    line: usize,
) -> Vec<Warning> {
    let keys: Vec<&str> = env
        .iter()
        .filter_map(|e| e.split_once('='))
        .map(|(k, _)| k)
        .collect();
    unmatched
        .iter()
        .filter(|n| !args.iter().any(|(k, _)| k == *n))
        .filter(|n| !NON_ENV_ARGS.contains(&n.as_str()))
        .map(|n| {
            warning(
                "UndefinedVar",
                line,
                format!(
                    "Usage of undefined variable '${n}'{}",
                    did_you_mean(n, &keys, "$")
                ),
            )
        })
        .collect()
}

/// The rules of every `FROM` line (all stages, needed or not, as BuildKit
/// checks them before it picks the target's).
pub(super) fn from_checks(df: &Dockerfile, opts: &BuildOptions, env: &[String]) -> Vec<Warning> {
    let lex = Lex::new(df.escape);
    let mut out = Vec::new();
    // InvalidDefaultArgInFrom: each base as the ARG defaults alone make it.
    // BuildKit checks these first, before it looks at each stage.
    if let Ok(defaults) = global_env(df, opts, &BTreeMap::new()) {
        for s in &df.stages {
            let Ok(name) = lex.process_word(&s.base, &defaults) else {
                break;
            };
            if normalize(&name).is_err() {
                out.push(warning(
                    "InvalidDefaultArgInFrom",
                    s.line,
                    format!(
                        "Default value for ARG {} results in empty or invalid base image name",
                        s.base
                    ),
                ));
            }
        }
    }
    // BuildKit's `unusedFromArgsCheckKeys`: every global ARG declared, with
    // a value or not, and the platform args.
    let mut declared: Vec<&str> = env
        .iter()
        .filter_map(|e| e.split_once('='))
        .map(|(k, _)| k)
        .collect();
    for c in &df.global_args {
        if let Instruction::Arg(args) = &c.instruction {
            declared.extend(args.iter().map(|a| a.key.as_str()));
        }
    }
    let undeclared = |m: &Matches, line: usize, out: &mut Vec<Warning>| {
        for n in m
            .unmatched
            .iter()
            .filter(|n| !declared.contains(&n.as_str()))
        {
            out.push(warning(
                "UndefinedArgInFrom",
                line,
                format!(
                    "FROM argument '{n}' is not declared{}",
                    did_you_mean(n, &declared, "")
                ),
            ));
        }
    };
    for s in &df.stages {
        let (_, m) = lex.process_word_matches(&s.base, env);
        undeclared(&m, s.line, &mut out);
        let Some(p) = &s.platform else {
            continue;
        };
        let (result, m) = lex.process_word_matches(p, env);
        undeclared(&m, s.line, &mut out);
        let Ok(result) = result else {
            continue;
        };
        if m.unmatched.is_empty()
            && m.matched.len() == 1
            && m.matched.contains("TARGETPLATFORM")
            && lookup(env, "TARGETPLATFORM") == Some(result.as_str())
        {
            out.push(warning(
                "RedundantTargetPlatform",
                s.line,
                format!(
                    "Setting platform to predefined {p} in FROM is redundant as this is the default behavior"
                ),
            ));
        }
        if m.matched.is_empty() && m.unmatched.is_empty() {
            // A constant platform, unless the stage's name says which.
            if let Ok(parsed) = kiln_solver::Platform::parse(&result, &opts.build_platform()) {
                let name = s.name.as_deref().unwrap_or_default();
                if !name.contains(&parsed.os) && !name.contains(&parsed.architecture) {
                    out.push(warning(
                        "FromPlatformFlagConstDisallowed",
                        s.line,
                        format!(
                            "FROM --platform flag should not use constant value {}",
                            go_quote(&result)
                        ),
                    ));
                }
            }
        }
    }
    out
}
