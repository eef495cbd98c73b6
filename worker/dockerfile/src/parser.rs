//! From text to logical lines: parser directives (`# escape=`, `# syntax=`),
//! comments, blank lines, line continuations and leading `--flags`.
//! Follows BuildKit's `frontend/dockerfile/parser`.

use crate::{ParseError, Result};

/// One logical line: an instruction keyword and its (joined) arguments.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// Line where the instruction starts (1-based).
    pub line: usize,
    /// The keyword, lowercased.
    pub keyword: String,
    /// Everything after the keyword (continuations joined, trimmed).
    pub rest: String,
    /// The whole logical line with the keyword uppercased, for vertex
    /// names (`RUN echo hi`).
    pub original: String,
}

/// The parsed file: escape character and logical lines.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lines {
    pub escape: char,
    pub nodes: Vec<Node>,
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
    let src = src.strip_prefix('\u{feff}').unwrap_or(src);
    let lines: Vec<&str> = src
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let mut escape = '\\';
    let mut seen: Vec<String> = Vec::new();
    let mut i = 0;
    // Directives: `# key=value` lines at the very top.
    while i < lines.len() {
        let Some((key, value)) = directive(lines[i]) else {
            break;
        };
        match key.as_str() {
            "escape" | "syntax" | "check" => {}
            _ => break,
        }
        if seen.contains(&key) {
            return Err(ParseError::Invalid {
                file: file.to_string(),
                line: i + 1,
                message: format!("only one {key} parser directive can be used"),
            });
        }
        if key == "escape" {
            escape = match value.as_str() {
                "\\" => '\\',
                "`" => '`',
                _ => {
                    return Err(ParseError::Invalid {
                        file: file.to_string(),
                        line: i + 1,
                        message: format!("invalid escape token '{value}' does not match ` or \\"),
                    })
                }
            };
        }
        seen.push(key);
        i += 1;
    }

    let mut nodes = Vec::new();
    while i < lines.len() {
        let start = i + 1;
        let first = lines[i].trim_start();
        i += 1;
        if first.trim().is_empty() || first.starts_with('#') {
            continue;
        }
        let mut text = first.to_string();
        while let Some(stripped) = strip_continuation(&text, escape) {
            text = stripped;
            // Comment and empty lines inside a continuation are dropped.
            while i < lines.len()
                && (lines[i].trim().is_empty() || lines[i].trim_start().starts_with('#'))
            {
                i += 1;
            }
            match lines.get(i) {
                Some(next) => {
                    text.push_str(next);
                    i += 1;
                }
                None => break,
            }
        }
        let text = text.trim();
        let (word, rest) = match text.find(char::is_whitespace) {
            Some(p) => (&text[..p], text[p..].trim()),
            None => (text, ""),
        };
        let original = if rest.is_empty() {
            word.to_uppercase()
        } else {
            format!("{} {}", word.to_uppercase(), rest)
        };
        nodes.push(Node {
            line: start,
            keyword: word.to_lowercase(),
            rest: rest.to_string(),
            original,
        });
    }
    Ok(Lines { escape, nodes })
}

/// `# key=value` (key lowercased), or `None` when the line is not one.
fn directive(line: &str) -> Option<(String, String)> {
    let body = line.trim_start().strip_prefix('#')?;
    let (key, value) = body.split_once('=')?;
    let key = key.trim();
    if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    Some((key.to_lowercase(), value.trim().to_string()))
}

/// The text without its trailing escape character (and blanks after it)
/// when the line continues.
fn strip_continuation(text: &str, escape: char) -> Option<String> {
    let trimmed = text.trim_end_matches([' ', '\t']);
    trimmed.strip_suffix(escape).map(str::to_string)
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
