//! From text to logical lines: parser directives (`# escape=`, `# syntax=`,
//! `# check=`), comments, blank lines, line continuations and heredoc
//! bodies. Follows BuildKit's `frontend/dockerfile/parser`.

use crate::directives::{self, CheckConfig, Directive};
use crate::heredoc::{self, Heredoc};
use crate::{ParseError, Result};

/// The longest line BuildKit's scanner reads (64 KiB with its newline).
pub const MAX_LINE: usize = 65535;

/// One logical line: an instruction keyword and its (joined) arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Line where the instruction starts (1-based).
    pub line: usize,
    /// Line where it ends (its last continuation or heredoc terminator).
    pub end_line: usize,
    /// The keyword, lowercased.
    pub keyword: String,
    /// The keyword as written (for `unknown instruction: foo`).
    pub word: String,
    /// Everything after the keyword (continuations joined, trimmed).
    pub rest: String,
    /// The whole logical line with the keyword uppercased, for vertex
    /// names (`RUN echo hi`).
    pub original: String,
    /// The heredocs the line opens, bodies read, in order.
    pub heredocs: Vec<Heredoc>,
    /// The comment lines right above the instruction (text after `#`,
    /// trimmed); a `# check=skip=...` among them scopes to it.
    pub comments: Vec<String>,
}

impl Node {
    /// `text` followed by each heredoc's body and terminator, as BuildKit
    /// stores an `ONBUILD` trigger (`RUN <<EOF\nbody\nEOF`), so that the
    /// trigger parses again with its heredocs.
    pub fn with_heredocs(&self, text: &str) -> String {
        let mut out = text.to_string();
        for h in &self.heredocs {
            out.push('\n');
            out.push_str(&h.content);
            out.push_str(&h.name);
        }
        out
    }
}

/// A build check's warning (`Rule: message (line N)`, BuildKit's short
/// form).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Warning {
    /// The build check's name, e.g. `NoEmptyContinuation`.
    pub rule: String,
    pub message: String,
    pub line: usize,
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.rule, self.message)?;
        if self.line > 0 {
            write!(f, " (line {})", self.line)?;
        }
        Ok(())
    }
}

/// The parsed file: directives and logical lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lines {
    pub escape: char,
    /// `# syntax=` (any form BuildKit detects), when present.
    pub syntax: Option<Directive>,
    /// `# check=`, parsed.
    pub check: CheckConfig,
    pub nodes: Vec<Node>,
    pub warnings: Vec<Warning>,
}

/// A `--name[=value]` flag in front of an instruction's arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flag {
    pub name: String,
    /// `None` for a bare `--name`.
    pub value: Option<String>,
}

/// Splits `src` into logical lines.
pub fn split(src: &str, file: &str) -> Result<Lines> {
    split_with_check(src, file, None)
}

/// [`split`], with `check` (when `Some`) in place of the `# check=`
/// directive (see [`crate::instructions::parse_with_check`]).
pub fn split_with_check(src: &str, file: &str, check: Option<&CheckConfig>) -> Result<Lines> {
    split_with(src, file, check, false)
}

/// [`split_with_check`]; `syntax_arg` says the `BUILDKIT_SYNTAX` build
/// argument named the frontend, so the `# syntax=` directive names none.
pub fn split_with(
    src: &str,
    file: &str,
    check: Option<&CheckConfig>,
    syntax_arg: bool,
) -> Result<Lines> {
    let invalid = |line: usize, message: String| ParseError::Invalid {
        file: file.to_string(),
        line,
        message,
    };
    let src = src.strip_prefix('\u{feff}').unwrap_or(src);
    let raw: Vec<&str> = src.split_inclusive('\n').collect();
    for (i, l) in raw.iter().enumerate() {
        if l.strip_suffix('\n').unwrap_or(l).len() > MAX_LINE {
            return Err(invalid(
                i + 1,
                format!("dockerfile line greater than max allowed size of {MAX_LINE}"),
            ));
        }
    }
    let syntax = directives::detect_syntax(src);
    if let Some(d) = syntax.as_ref().filter(|_| !syntax_arg) {
        if !directives::is_dockerfile_frontend(&d.value) {
            return Err(ParseError::Unsupported {
                file: file.to_string(),
                line: d.line,
                feature: format!(
                    "the frontend image {:?} of the syntax directive without kilnd (frontend images run only through kilnd: kiln build --addr, buildctl, buildx)",
                    d.value
                ),
            });
        }
    }
    let check = match (check, directives::find(src, "check")) {
        (Some(c), _) => c.clone(),
        (None, Some(d)) => CheckConfig::parse(&d.value)
            .map_err(|m| invalid(d.line, format!("failed to parse check options: {m}")))?,
        (None, None) => CheckConfig::default(),
    };

    let mut escape = '\\';
    let mut scanner = directives::Scanner::default();
    let mut nodes = Vec::new();
    let mut warnings = Vec::new();
    let mut comments: Vec<String> = Vec::new();
    let mut i = 0;
    while i < raw.len() {
        let first = trim_newline(raw[i]).trim_start();
        if let Some(c) = first.strip_prefix('#') {
            // A bare `#` ends the comment block above an instruction.
            match c.trim() {
                "" => comments.clear(),
                c => comments.push(c.to_string()),
            }
        }
        let directive = scanner.line(first).map_err(|m| invalid(i + 1, m))?;
        if directive.is_some() {
            comments.pop();
        }
        match directive {
            Some((key, value)) if key == "escape" => {
                escape = match value.as_str() {
                    "\\" => '\\',
                    "`" => '`',
                    _ => {
                        return Err(invalid(
                            i + 1,
                            format!("invalid escape token '{value}' does not match ` or \\"),
                        ))
                    }
                }
            }
            _ => {}
        }
        let first = if first.starts_with('#') { "" } else { first };
        i += 1;
        let start = i;
        let (first, mut end_of_line) = trim_continuation(first, escape);
        if end_of_line && first.is_empty() {
            continue;
        }
        let mut text = first.to_string();
        let mut empty_continuation = false;
        while !end_of_line && i < raw.len() {
            let next = trim_newline(raw[i]);
            i += 1;
            // Comment lines inside a continuation are removed; empty ones
            // are dropped with a warning.
            if next.trim_start().starts_with('#') {
                continue;
            }
            if next.trim_start().is_empty() {
                empty_continuation = true;
                continue;
            }
            let (t, eol) = trim_continuation(next, escape);
            end_of_line = eol;
            text.push_str(t);
        }
        if empty_continuation {
            warnings.push(Warning {
                rule: "NoEmptyContinuation".into(),
                message: "Empty continuation line".into(),
                line: i,
            });
        }
        let trimmed = text.trim();
        let (word, rest) = match trimmed.find(char::is_whitespace) {
            Some(p) => (&trimmed[..p], trimmed[p..].trim()),
            None => (trimmed, ""),
        };
        let original = if rest.is_empty() {
            word.to_uppercase()
        } else {
            format!("{} {}", word.to_uppercase(), rest)
        };
        let keyword = word.to_lowercase();
        let mut heredocs = Vec::new();
        if text.contains("<<") && can_contain_heredoc(&keyword, rest) {
            for mut h in heredoc::in_line(&text) {
                let mut terminated = false;
                while i < raw.len() {
                    let line = raw[i];
                    i += 1;
                    let mut candidate = trim_newline(line);
                    if h.chomp {
                        candidate = candidate.trim_start_matches('\t');
                    }
                    if candidate == h.name {
                        terminated = true;
                        break;
                    }
                    h.content.push_str(line);
                }
                if !terminated {
                    return Err(invalid(start, "unterminated heredoc".into()));
                }
                heredocs.push(h);
            }
        }
        nodes.push(Node {
            line: start,
            end_line: i,
            keyword,
            word: word.to_string(),
            rest: rest.to_string(),
            original,
            heredocs,
            comments: std::mem::take(&mut comments),
        });
    }
    Ok(Lines {
        escape,
        syntax,
        check,
        nodes,
        warnings,
    })
}

/// RUN, COPY and ADD (also as an `ONBUILD` trigger) take heredocs, never
/// in JSON form.
fn can_contain_heredoc(keyword: &str, rest: &str) -> bool {
    let (keyword, rest) = if keyword == "onbuild" {
        let (_, r) = extract_flags(rest);
        let r = r.trim();
        match r.find(char::is_whitespace) {
            Some(p) => (r[..p].to_lowercase(), r[p..].trim()),
            None => (r.to_lowercase(), ""),
        }
    } else {
        (keyword.to_string(), rest)
    };
    if !matches!(keyword.as_str(), "run" | "copy" | "add") {
        return false;
    }
    let (_, args) = extract_flags(rest);
    !is_json_array(args)
}

/// Whether the arguments are exec form (a JSON array of strings).
pub(crate) fn is_json_array(args: &str) -> bool {
    let t = args.trim();
    t.starts_with('[') && t.ends_with(']') && serde_json::from_str::<Vec<String>>(t).is_ok()
}

fn trim_newline(line: &str) -> &str {
    line.trim_end_matches(['\r', '\n'])
}

/// The line without its continuation escape (the escape as last non-blank
/// character, not itself escaped), and whether the logical line ends here.
fn trim_continuation(text: &str, escape: char) -> (&str, bool) {
    let trimmed = text.trim_end_matches([' ', '\t']);
    match trimmed.strip_suffix(escape) {
        Some(before) if !before.ends_with(escape) => (before, false),
        _ => (text, true),
    }
}

/// Takes the leading `--flag[=value]` words off `rest` (quotes in values
/// are removed; `--` alone ends the flags). Returns the flags and the rest.
pub fn extract_flags(rest: &str) -> (Vec<Flag>, &str) {
    let mut flags = Vec::new();
    let mut s = rest.trim_start();
    while s.starts_with("--") {
        let mut word = String::new();
        let mut quote: Option<char> = None;
        let mut end = s.len();
        for (idx, c) in s.char_indices() {
            match quote {
                Some(q) if c == q => quote = None,
                Some(_) => word.push(c),
                None if c == '"' || c == '\'' => quote = Some(c),
                None if c.is_whitespace() => {
                    end = idx;
                    break;
                }
                None => word.push(c),
            }
        }
        s = s[end..].trim_start();
        if word == "--" {
            break;
        }
        let body = &word[2..];
        let flag = match body.split_once('=') {
            Some((n, v)) => Flag {
                name: n.to_string(),
                value: Some(v.to_string()),
            },
            None => Flag {
                name: body.to_string(),
                value: None,
            },
        };
        flags.push(flag);
    }
    (flags, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `expect` lists one `line keyword|rest` per node, or `error: ...`.
    fn check(src: &str, expect: &str) {
        let got = match split(src, "Dockerfile") {
            Ok(l) => {
                let mut out = format!("escape {}\n", l.escape);
                for n in l.nodes {
                    out.push_str(&format!("{} {}|{}\n", n.line, n.keyword, n.rest));
                }
                out
            }
            Err(e) => format!("error: {e}\n"),
        };
        assert_eq!(got.trim_end(), expect.trim_end(), "source:\n{src}");
    }

    #[test]
    fn continuation_keeps_next_line_indent() {
        check(
            "FROM busybox\nRUN echo hello\\\n  world \\  \n# comment inside\n\n  again\n",
            "escape \\\n1 from|busybox\n2 run|echo hello  world   again",
        );
    }

    #[test]
    fn comments_blank_lines_and_case() {
        check(
            "# syntax=docker/dockerfile:1\n\n# a comment\nfrom busybox\n  Run   echo # not a comment\n",
            "escape \\\n4 from|busybox\n5 run|echo # not a comment",
        );
    }

    #[test]
    fn escape_directive_backtick() {
        check(
            "# escape=`\nFROM busybox\nRUN dir c:\\ `\n  && echo\n",
            "escape `\n2 from|busybox\n3 run|dir c:\\   && echo",
        );
        check(
            "# escape=x\nFROM a\n",
            "error: Dockerfile:1: invalid escape token 'x' does not match ` or \\",
        );
        check(
            "# escape=`\n# escape=\\\nFROM a\n",
            "error: Dockerfile:2: only one escape parser directive can be used",
        );
        // A directive after an instruction is a comment.
        check(
            "FROM a\n# escape=`\nRUN x \\\n y\n",
            "escape \\\n1 from|a\n3 run|x  y",
        );
    }

    #[test]
    fn continuation_at_eof_and_crlf() {
        check("FROM a\r\nRUN x \\\r\n", "escape \\\n1 from|a\n2 run|x");
    }

    /// Renders nodes with their heredocs (`name fd expand chomp content`).
    fn heredocs(src: &str) -> String {
        match split(src, "Dockerfile") {
            Ok(l) => {
                let mut out = String::new();
                for n in l.nodes {
                    out.push_str(&format!(
                        "{}-{} {}|{}\n",
                        n.line, n.end_line, n.keyword, n.rest
                    ));
                    for h in n.heredocs {
                        out.push_str(&format!(
                            "  {} {} {} {} {:?}\n",
                            h.name, h.fd, h.expand, h.chomp, h.content
                        ));
                    }
                }
                out
            }
            Err(e) => format!("error: {e}\n"),
        }
    }

    #[test]
    fn heredoc_bodies_in_order() {
        assert_eq!(
            heredocs(
                "FROM a\nRUN cat <<A 2<<-'B' && echo \"x<<y\" $((1<<4))\n# not a comment\n$X\nA\n\tb\n\tB\nRUN echo done\n"
            ),
            "1-1 from|a\n2-7 run|cat <<A 2<<-'B' && echo \"x<<y\" $((1<<4))\n  A 0 true false \"# not a comment\\n$X\\n\"\n  B 2 false true \"\\tb\\n\"\n8-8 run|echo done\n"
        );
        // Only RUN, COPY and ADD (also under ONBUILD) take heredocs, never in
        // JSON form; a lone `<<` word is not one.
        assert_eq!(
            heredocs("FROM a\nCMD cat <<EOF\nRUN [\"cat\", \"<<EOF\"]\nRUN a << b\n"),
            "1-1 from|a\n2-2 cmd|cat <<EOF\n3-3 run|[\"cat\", \"<<EOF\"]\n4-4 run|a << b\n"
        );
        assert_eq!(
            heredocs("FROM a\nONBUILD RUN <<X\nhi\nX\n"),
            "1-1 from|a\n2-4 onbuild|RUN <<X\n  X 0 true false \"hi\\n\"\n"
        );
        // CRLF bodies keep their line ends; the terminator matches without.
        assert_eq!(
            heredocs("FROM a\r\nCOPY <<E /x\r\nhi\r\nE\r\n"),
            "1-1 from|a\n2-4 copy|<<E /x\n  E 0 true false \"hi\\r\\n\"\n"
        );
        assert_eq!(
            heredocs("FROM a\nRUN <<EOF\necho\n EOF\n"),
            "error: Dockerfile:2: unterminated heredoc\n"
        );
    }

    #[test]
    fn onbuild_trigger_keeps_heredocs() {
        let l = split("FROM a\nONBUILD RUN <<X\nhi\nX\n", "Dockerfile").expect("parses");
        let n = &l.nodes[1];
        assert_eq!(n.with_heredocs(&n.rest), "RUN <<X\nhi\nX");
        let again = split(
            &format!("FROM a\n{}\n", n.with_heredocs(&n.rest)),
            "Dockerfile",
        )
        .expect("parses");
        assert_eq!(again.nodes[1].heredocs[0].content, "hi\n");
    }

    #[test]
    fn continuation_rules() {
        // An escaped escape does not continue the line.
        check(
            "FROM a\nRUN echo \\\\\nRUN b\n",
            "escape \\\n1 from|a\n2 run|echo \\\\\n3 run|b",
        );
        // A lone escape continues; empty continuation lines are dropped
        // with a warning.
        let l = split("FROM a\nRUN a \\\n\n  b\n", "Dockerfile").expect("parses");
        assert_eq!(l.nodes[1].rest, "a   b");
        assert_eq!(
            l.warnings,
            vec![Warning {
                rule: "NoEmptyContinuation".into(),
                message: "Empty continuation line".into(),
                line: 4
            }]
        );
        // BOM stripped.
        check("\u{feff}FROM a\n", "escape \\\n1 from|a");
        let long = format!("FROM a\nRUN {}\n", "x".repeat(MAX_LINE));
        check(
            &long,
            "error: Dockerfile:2: dockerfile line greater than max allowed size of 65535",
        );
        let fits = format!("FROM a\nRUN {}\n", "x".repeat(MAX_LINE - 4));
        assert!(split(&fits, "Dockerfile").is_ok());
    }

    /// The `BUILDKIT_SYNTAX` build argument names the frontend in place
    /// of the directive, whose image is then neither run nor refused.
    #[test]
    fn syntax_arg_replaces_the_directive() {
        let src = "# syntax=foo/bar:1\nFROM a\n";
        assert!(split(src, "Dockerfile").is_err());
        let lines = split_with(src, "Dockerfile", None, true).expect("split");
        assert_eq!(lines.nodes.len(), 1);
    }

    #[test]
    fn directives() {
        check(
            "# syntax=foo/bar:1\nFROM a\n",
            "error: Dockerfile:1: the frontend image \"foo/bar:1\" of the syntax directive without kilnd (frontend images run only through kilnd: kiln build --addr, buildctl, buildx) is not supported yet",
        );
        check(
            "#!/bin/kiln\n# syntax=other/frontend\nFROM a\n",
            "error: Dockerfile:2: the frontend image \"other/frontend\" of the syntax directive without kilnd (frontend images run only through kilnd: kiln build --addr, buildctl, buildx) is not supported yet",
        );
        check(
            "# syntax=docker/dockerfile:1.7-labs\n# Check = skip=all\nFROM a\n",
            "escape \\\n3 from|a",
        );
        check(
            "# syntax=docker/dockerfile:1\n# syntax=docker/dockerfile:1\nFROM a\n",
            "error: Dockerfile:2: only one syntax parser directive can be used",
        );
        check(
            "# check=bogus\nFROM a\n",
            "error: Dockerfile:1: failed to parse check options: invalid check option \"bogus\"",
        );
        let l = split(
            "# check=skip=StageNameCasing;error=true\nFROM a\n",
            "Dockerfile",
        )
        .expect("parses");
        assert!(l.check.error);
        assert_eq!(l.check.skip, vec!["StageNameCasing"]);
        // An unknown key ends the directives: the escape below is a comment.
        check(
            "# foo=bar\n# escape=`\nFROM a\nRUN x \\\n y\n",
            "escape \\\n3 from|a\n4 run|x  y",
        );
    }

    #[test]
    fn flags() {
        let (f, rest) = extract_flags("--from=build --chown=\"a b\" --link  src dst");
        assert_eq!(
            f,
            vec![
                Flag {
                    name: "from".into(),
                    value: Some("build".into())
                },
                Flag {
                    name: "chown".into(),
                    value: Some("a b".into())
                },
                Flag {
                    name: "link".into(),
                    value: None
                },
            ]
        );
        assert_eq!(rest, "src dst");
        let (f, rest) = extract_flags("-- --notaflag x");
        assert!(f.is_empty());
        assert_eq!(rest, "--notaflag x");
    }
}
