//! Build checks that need only the parse tree, after BuildKit's
//! `frontend/dockerfile/linter` rules (names and texts are BuildKit's):
//! StageNameCasing, FromAsCasing, ConsistentInstructionCasing,
//! ReservedStageName, JSONArgsRecommended, MaintainerDeprecated,
//! NoEmptyContinuation, MultipleInstructionsDisallowed,
//! and LegacyKeyValueFormat (ExposeProtoCasing and WorkdirRelativePath
//! need the expanded words: the converter's).
//!
//! Warnings are data: [`crate::Dockerfile::warnings`] holds those the
//! `# check=` directive does not skip, the frontend prints them, and
//! [`crate::to_graph`] fails with `lint violation found for rules: ...` when
//! the directive says `error=true`.

use crate::directives::CheckConfig;
use crate::parser::{extract_flags, Node, Warning};

/// Rules BuildKit checks over the whole file, which a comment above one
/// instruction does not scope.
const GLOBAL_RULES: [&str; 4] = [
    "ConsistentInstructionCasing",
    "ReservedStageName",
    "DuplicateStageName",
    "NoEmptyContinuation",
];

/// Rules BuildKit runs while it dispatches a stage's instructions, so a
/// build reports them only for the stages it needs (the converter filters
/// them; a lint of every stage keeps them all).
pub const DISPATCH_RULES: [&str; 3] = [
    "JSONArgsRecommended",
    "MultipleInstructionsDisallowed",
    "LegacyKeyValueFormat",
];

/// Stage names BuildKit reserves.
const RESERVED_STAGE_NAMES: [&str; 2] = ["context", "scratch"];

fn warn(out: &mut Vec<Warning>, rule: &str, line: usize, message: String) {
    out.push(Warning {
        rule: rule.to_string(),
        message,
        line,
    });
}

fn is_consistent(s: &str) -> bool {
    s == s.to_lowercase() || s == s.to_uppercase()
}

/// A `# check=` comment right above one instruction: its configuration
/// also applies to the warnings of lines `start..=end`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckScope {
    pub start: usize,
    pub end: usize,
    pub config: CheckConfig,
}

/// The `# check=` comments above instructions.
pub fn scopes(nodes: &[Node]) -> Vec<CheckScope> {
    let mut out = Vec::new();
    for n in nodes {
        for c in &n.comments {
            let Some(value) = c.strip_prefix("check").map(str::trim_start) else {
                continue;
            };
            let Some(value) = value.strip_prefix('=') else {
                continue;
            };
            let value = value.trim().split(' ').next().unwrap_or_default();
            if let Ok(config) = CheckConfig::parse(value) {
                out.push(CheckScope {
                    start: n.line,
                    end: n.end_line,
                    config,
                });
            }
        }
    }
    out
}

/// Whether a warning of `rule` at `line` is reported: the file's
/// configuration enables it and no `# check=` above its instruction skips
/// it (rules over the whole file are not scoped).
pub fn enabled(check: &CheckConfig, scopes: &[CheckScope], rule: &str, line: usize) -> bool {
    check.enabled(rule)
        && scopes.iter().all(|s| {
            line < s.start || line > s.end || GLOBAL_RULES.contains(&rule) || s.config.enabled(rule)
        })
}

/// The docs page of a build check: `StageNameCasing` ->
/// `https://docs.docker.com/go/dockerfile/rule/stage-name-casing/`;
/// empty for the rules BuildKit gives no page (`InvalidBaseImagePlatform`).
pub fn rule_url(rule: &str) -> String {
    if RULES_WITHOUT_PAGE.contains(&rule) {
        return String::new();
    }
    let mut kebab = String::new();
    let chars: Vec<char> = rule.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            let prev_lower = chars[i - 1].is_ascii_lowercase();
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_ascii_lowercase());
            if prev_lower || (next_lower && chars[i - 1].is_ascii_uppercase()) {
                kebab.push('-');
            }
        }
        kebab.push(c.to_ascii_lowercase());
    }
    format!("https://docs.docker.com/go/dockerfile/rule/{kebab}/")
}

/// A build check's description, BuildKit's (`linter.Rule.Description`),
/// which its lint result carries with each warning; empty for a name that
/// is no rule.
pub fn rule_description(rule: &str) -> &'static str {
    match rule {
        "StageNameCasing" => "Stage names should be lowercase",
        "FromAsCasing" => "The 'as' keyword should match the case of the 'from' keyword",
        "NoEmptyContinuation" => "Empty continuation lines will become errors in a future release",
        "ConsistentInstructionCasing" => {
            "All commands within the Dockerfile should use the same casing (either upper or lower)"
        }
        "DuplicateStageName" => "Stage names should be unique",
        "ReservedStageName" => "Reserved words should not be used as stage names",
        "JSONArgsRecommended" => {
            "JSON arguments recommended for ENTRYPOINT/CMD to prevent unintended behavior related to OS signals"
        }
        "MaintainerDeprecated" => {
            "The MAINTAINER instruction is deprecated, use a label instead to define an image author"
        }
        "UndefinedArgInFrom" => "FROM command must use declared ARGs",
        "WorkdirRelativePath" => {
            "Relative workdir without an absolute workdir declared within the build can have unexpected results if the base image changes"
        }
        "UndefinedVar" => "Variables should be defined before their use",
        "MultipleInstructionsDisallowed" => {
            "Multiple instructions of the same type should not be used in the same stage"
        }
        "LegacyKeyValueFormat" => {
            "Legacy key/value format with whitespace separator should not be used"
        }
        "InvalidBaseImagePlatform" => {
            "Base image platform does not match expected target platform"
        }
        "RedundantTargetPlatform" => {
            "Setting platform to predefined $TARGETPLATFORM in FROM is redundant as this is the default behavior"
        }
        "SecretsUsedInArgOrEnv" => "Sensitive data should not be used in the ARG or ENV commands",
        "InvalidDefaultArgInFrom" => {
            "Default value for global ARG results in an empty or invalid base image name"
        }
        "FromPlatformFlagConstDisallowed" => {
            "FROM --platform flag should not use a constant value"
        }
        "CopyIgnoredFile" => "Attempting to Copy file that is excluded by .dockerignore",
        "InvalidDefinitionDescription" => {
            "Comment for build stage or argument should follow the format: `# <arg/stage name> <description>`. If this is not intended to be a description comment, add an empty line or comment between the instruction and the comment."
        }
        "ExposeProtoCasing" => "Protocol in EXPOSE instruction should be lowercase",
        "ExposeInvalidFormat" => {
            "IP address and host-port mapping should not be used in EXPOSE instruction. This will become an error in a future release"
        }
        _ => "",
    }
}

/// Build checks BuildKit's linter has no docs page for.
const RULES_WITHOUT_PAGE: [&str; 1] = ["InvalidBaseImagePlatform"];

/// Per-stage state of the rules that look back within a stage.
#[derive(Default)]
struct StageLint {
    name: Option<String>,
    /// `SHELL` set in this stage or an in-file parent.
    shell_set: bool,
    /// Line of the last CMD / ENTRYPOINT / HEALTHCHECK.
    last: [Option<usize>; 3],
}

/// The rules BuildKit's instruction parser runs on each instruction as it
/// parses it (before parsing it: an instruction that then fails to parse
/// has had them); the others run once the whole file parsed, or on the
/// build steps.
pub const PARSE_TIME_RULES: [&str; 3] = ["MaintainerDeprecated", "StageNameCasing", "FromAsCasing"];

/// Runs the rules over the logical lines of a file; `parser_warnings` are
/// those the parser found (NoEmptyContinuation). Only rules `check` enables
/// are kept, in line order.
pub fn run(nodes: &[Node], parser_warnings: &[Warning], check: &CheckConfig) -> Vec<Warning> {
    let mut out: Vec<Warning> = parser_warnings.to_vec();

    // ConsistentInstructionCasing: the majority over FROM lines and the
    // instructions of stages (global ARGs do not count).
    let first_from = nodes.iter().position(|n| n.keyword == "from");
    let in_stages = first_from.map_or(&nodes[..0], |i| &nodes[i..]);
    let (mut lower, mut upper) = (0, 0);
    for n in in_stages.iter().filter(|n| is_consistent(&n.word)) {
        if n.word == n.word.to_lowercase() {
            lower += 1;
        } else {
            upper += 1;
        }
    }
    let majority_lower = lower > upper;
    for n in in_stages {
        let wrong = if majority_lower {
            (n.word != n.word.to_lowercase()).then_some("lowercase")
        } else {
            (n.word != n.word.to_uppercase()).then_some("uppercase")
        };
        if let Some(casing) = wrong {
            warn(
                &mut out,
                "ConsistentInstructionCasing",
                n.line,
                format!(
                    "Command '{}' should match the case of the command majority ({casing})",
                    n.word
                ),
            );
        }
    }

    let mut stages: Vec<StageLint> = Vec::new();
    for n in nodes {
        if n.keyword == "from" {
            stages.push(from_rules(n, &stages, &mut out));
            continue;
        }
        let Some(stage) = stages.last_mut() else {
            continue;
        };
        let (_, args) = extract_flags(&n.rest);
        let exec_form = crate::parser::is_json_array(args);
        match n.keyword.as_str() {
            "shell" => stage.shell_set = true,
            "maintainer" => warn(
                &mut out,
                "MaintainerDeprecated",
                n.line,
                "Maintainer instruction is deprecated in favor of using label".into(),
            ),
            "cmd" | "entrypoint" | "healthcheck" => {
                let slot = match n.keyword.as_str() {
                    "cmd" => 0,
                    "entrypoint" => 1,
                    _ => 2,
                };
                if let Some(prev) = stage.last[slot] {
                    // The earlier one is reported: it is the one ignored.
                    warn(
                        &mut out,
                        "MultipleInstructionsDisallowed",
                        prev,
                        format!(
                            "Multiple {} instructions should not be used in the same stage because only the last one will be used",
                            n.word
                        ),
                    );
                }
                stage.last[slot] = Some(n.line);
                if slot < 2 && !exec_form && !stage.shell_set {
                    warn(
                        &mut out,
                        "JSONArgsRecommended",
                        n.line,
                        format!(
                            "JSON arguments recommended for {} to prevent unintended behavior related to OS signals",
                            n.word
                        ),
                    );
                }
            }
            "env" | "label" => {
                let first = args.split_whitespace().next().unwrap_or_default();
                if !first.is_empty() && !first.contains('=') {
                    warn(
                        &mut out,
                        "LegacyKeyValueFormat",
                        n.line,
                        format!(
                            "\"{0} key=value\" should be used instead of legacy \"{0} key value\" format",
                            n.word
                        ),
                    );
                }
            }
            _ => {}
        }
    }
    let scopes = scopes(nodes);
    out.retain(|w| enabled(check, &scopes, &w.rule, w.line));
    out.sort_by_key(|w| w.line);
    out
}

/// The rules of a `FROM` line; returns the new stage's state.
fn from_rules(n: &Node, stages: &[StageLint], out: &mut Vec<Warning>) -> StageLint {
    let (_, args) = extract_flags(&n.rest);
    let words: Vec<&str> = args.split_whitespace().collect();
    let mut stage = StageLint::default();
    if let [base, as_kw, name] = words.as_slice() {
        if *name != name.to_lowercase() {
            warn(
                out,
                "StageNameCasing",
                n.line,
                format!("Stage name '{name}' should be lowercase"),
            );
        }
        let from_lower = n.word == n.word.to_lowercase();
        let as_matches = if from_lower {
            *as_kw == as_kw.to_lowercase()
        } else {
            *as_kw == as_kw.to_uppercase()
        };
        if !as_matches {
            warn(
                out,
                "FromAsCasing",
                n.line,
                format!("'{as_kw}' and '{}' keywords' casing do not match", n.word),
            );
        }
        let lower = name.to_lowercase();
        if stages.iter().any(|s| s.name.as_deref() == Some(&lower)) {
            warn(
                out,
                "DuplicateStageName",
                n.line,
                format!("Duplicate stage name {lower:?}, stage names should be unique"),
            );
        }
        if RESERVED_STAGE_NAMES.contains(&lower.as_str()) {
            warn(
                out,
                "ReservedStageName",
                n.line,
                format!("Stage name should not use the same name as reserved stage {lower:?}"),
            );
        }
        stage.name = Some(lower);
        // A stage built on an earlier one inherits its SHELL.
        let base = base.to_lowercase();
        if let Some(parent) = stages.iter().rfind(|s| s.name.as_deref() == Some(&base)) {
            stage.shell_set = parent.shell_set;
        }
    } else if let [base] = words.as_slice() {
        let base = base.to_lowercase();
        if let Some(parent) = stages.iter().rfind(|s| s.name.as_deref() == Some(&base)) {
            stage.shell_set = parent.shell_set;
        }
    }
    stage
}

#[cfg(test)]
mod tests {
    use crate::parse;

    #[test]
    fn rule_pages_are_kebab_case() {
        assert_eq!(
            super::rule_url("StageNameCasing"),
            "https://docs.docker.com/go/dockerfile/rule/stage-name-casing/"
        );
        assert_eq!(
            super::rule_url("JSONArgsRecommended"),
            "https://docs.docker.com/go/dockerfile/rule/json-args-recommended/"
        );
        assert_eq!(super::rule_url("InvalidBaseImagePlatform"), "");
    }

    fn warnings(src: &str) -> String {
        match parse(src, "Dockerfile") {
            Ok(df) => df
                .warnings
                .iter()
                .map(|w| format!("{w}\n"))
                .collect::<String>(),
            Err(e) => format!("error: {e}\n"),
        }
    }

    #[test]
    fn parse_tree_rules() {
        let src = "FROM busybox as Build\nMAINTAINER me\nENV A 1\nLABEL b=2\nWORKDIR app\nWORKDIR sub\nCMD echo a\nCMD [\"b\"]\nEXPOSE 80/TCP 81/udp\nrun true\nFROM Build AS scratch\nENTRYPOINT run\nRUN a \\\n\n  b\n";
        assert_eq!(
            warnings(src),
            "StageNameCasing: Stage name 'Build' should be lowercase (line 1)\n\
             FromAsCasing: 'as' and 'FROM' keywords' casing do not match (line 1)\n\
             MaintainerDeprecated: Maintainer instruction is deprecated in favor of using label (line 2)\n\
             LegacyKeyValueFormat: \"ENV key=value\" should be used instead of legacy \"ENV key value\" format (line 3)\n\
             JSONArgsRecommended: JSON arguments recommended for CMD to prevent unintended behavior related to OS signals (line 7)\n\
             MultipleInstructionsDisallowed: Multiple CMD instructions should not be used in the same stage because only the last one will be used (line 7)\n\
             ConsistentInstructionCasing: Command 'run' should match the case of the command majority (uppercase) (line 10)\n\
             ReservedStageName: Stage name should not use the same name as reserved stage \"scratch\" (line 11)\n\
             JSONArgsRecommended: JSON arguments recommended for ENTRYPOINT to prevent unintended behavior related to OS signals (line 12)\n\
             NoEmptyContinuation: Empty continuation line (line 15)\n"
        );
    }

    #[test]
    fn check_directive_skips_rules() {
        assert_eq!(
            warnings("# check=skip=JSONArgsRecommended,MaintainerDeprecated\nFROM busybox\nMAINTAINER x\nCMD a\n"),
            ""
        );
        assert_eq!(warnings("# check=skip=all\nFROM a AS B\n"), "");
        // A check comment right above an instruction scopes to it.
        assert_eq!(
            warnings("FROM busybox\n# check=skip=JSONArgsRecommended\nCMD a\n\nENTRYPOINT b\n"),
            "JSONArgsRecommended: JSON arguments recommended for ENTRYPOINT to prevent unintended behavior related to OS signals (line 5)\n"
        );
        // SHELL set (here or in the parent stage) silences JSONArgsRecommended.
        assert_eq!(
            warnings("FROM a AS p\nSHELL [\"/bin/bash\", \"-c\"]\nFROM p\nCMD x\n"),
            ""
        );
    }
}
