//! Heredocs (`RUN <<EOF`, `COPY <<-"EOF" /dst`): recognizing the
//! `[n]<<[-]WORD` words of a line and the rules for their bodies, after
//! BuildKit's `frontend/dockerfile/parser`.
//!
//! Only a word of its own that starts with `<<` (after an optional file
//! descriptor) opens a heredoc: `$((1<<4))` and `"a<<b"` do not. Quoting
//! any part of WORD turns off variable expansion of the body; `<<-` strips
//! leading tabs from the body's lines and from the terminator.

/// One heredoc of an instruction, with its body once the parser read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Heredoc {
    /// The delimiter word, quotes removed (`EOF` for `<<"EOF"`).
    pub name: String,
    /// The file descriptor written before `<<` (0 when none).
    pub fd: u32,
    /// Whether the body is subject to variable expansion (no quotes in WORD).
    pub expand: bool,
    /// `<<-`: leading tabs are stripped.
    pub chomp: bool,
    /// The body as written, each line with its newline, without the
    /// terminator line. Tabs are not yet stripped (see [`chomp`]).
    pub content: String,
}

/// Parses one word as a heredoc opener: `^(\d*)<<(-?)\s*([^<]*)$` where the
/// rest must lex to exactly one word. `None` when it is not one.
pub fn parse_word(word: &str) -> Option<Heredoc> {
    let digits = word.len() - word.trim_start_matches(|c: char| c.is_ascii_digit()).len();
    let after = word[digits..].strip_prefix("<<")?;
    let (chomp, after) = match after.strip_prefix('-') {
        Some(a) => (true, a),
        None => (false, after),
    };
    let rest = after.trim_start();
    if rest.is_empty() || rest.contains('<') {
        return None;
    }
    let fd = if digits == 0 {
        0
    } else {
        word[..digits].parse().ok()?
    };
    let words = unquoted_words(rest);
    let [name] = words.as_slice() else {
        return None;
    };
    let raw = raw_words(rest, '\\');
    let quotes = |s: &str| s.chars().filter(|c| *c == '\'' || *c == '"').count();
    let expand = raw.first().map(|r| quotes(r)) == Some(quotes(name));
    Some(Heredoc {
        name: name.clone(),
        fd,
        expand,
        chomp,
        content: String::new(),
    })
}

/// The heredocs a logical line opens, in order. The line is split into
/// words the way the shell would (quotes and escapes kept), and each word
/// is tried with [`parse_word`].
pub fn in_line(line: &str) -> Vec<Heredoc> {
    raw_words(line, '\\')
        .iter()
        .filter_map(|w| parse_word(w))
        .collect()
}

/// Strips the leading tabs of every line (`<<-`).
pub fn chomp(content: &str) -> String {
    let mut out = String::with_capacity(content.len());
    for line in content.split_inclusive('\n') {
        out.push_str(line.trim_start_matches('\t'));
    }
    out
}

/// The first line of a body, with `...` when there are more; for vertex
/// names (`RUN <<EOF (echo hi...)`).
pub fn summarize(content: &str) -> String {
    let doc = content.trim().replace("\r\n", "\n");
    let mut lines = doc.split('\n');
    let first = lines.next().unwrap_or_default().to_string();
    if lines.next().is_some() {
        format!("{first}...")
    } else {
        first
    }
}

/// Expands the variables of a `COPY`/`ADD` heredoc body the way BuildKit
/// does: quotes are plain characters, `\` escapes the next character,
/// `$VAR` and `${VAR...}` are substituted from `env`. The names it does
/// not find come back too: BuildKit's UndefinedVar check covers them.
pub fn expand(data: &str, env: &[String]) -> (Result<String, String>, crate::shell::Matches) {
    // Escaping every quote makes the word lexer keep it literally.
    let mut word = String::with_capacity(data.len() + 8);
    let mut chars = data.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                word.push(c);
                if let Some(n) = chars.next() {
                    word.push(n);
                }
            }
            '\'' | '"' => {
                word.push('\\');
                word.push(c);
            }
            _ => word.push(c),
        }
    }
    crate::shell::Lex::new('\\').process_word_matches(&word, env)
}

/// Splits at unquoted whitespace, keeping quotes and escapes as written.
pub(crate) fn raw_words(s: &str, escape: char) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match quote {
            Some(q) => {
                cur.push(c);
                if c == q {
                    quote = None;
                } else if c == escape && q == '"' {
                    if let Some(n) = chars.next() {
                        cur.push(n);
                    }
                }
            }
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            None => {
                in_word = true;
                cur.push(c);
                if c == '\'' || c == '"' {
                    quote = Some(c);
                } else if c == escape {
                    if let Some(n) = chars.next() {
                        cur.push(n);
                    }
                }
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// Splits at unquoted whitespace, removing quotes and escapes (variables
/// are left as written: nothing is set while the file is parsed).
fn unquoted_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some('\'') if c == '\'' => quote = None,
            Some('"') if c == '"' => quote = None,
            Some('"') if c == '\\' => match chars.peek() {
                Some(n @ ('"' | '\\' | '$')) => {
                    cur.push(*n);
                    chars.next();
                }
                _ => cur.push(c),
            },
            Some(_) => cur.push(c),
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            None => {
                in_word = true;
                match c {
                    '\'' | '"' => quote = Some(c),
                    '\\' => {
                        if let Some(n) = chars.next() {
                            cur.push(n);
                        }
                    }
                    _ => cur.push(c),
                }
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(line: &str) -> Vec<(String, u32, bool, bool)> {
        in_line(line)
            .into_iter()
            .map(|h| (h.name, h.fd, h.expand, h.chomp))
            .collect()
    }

    #[test]
    fn only_standalone_words_open_heredocs() {
        assert!(names("RUN echo $((1<<4))").is_empty());
        assert!(names("RUN echo \"a<<b\"").is_empty());
        assert!(names("RUN echo a << b").is_empty());
        assert!(names("RUN cat<<EOF").is_empty());
        assert!(names("RUN echo '<<EOF'").is_empty());
        assert_eq!(
            names("RUN cat <<EOF"),
            vec![("EOF".to_string(), 0, true, false)]
        );
    }

    #[test]
    fn forms_of_the_delimiter() {
        assert_eq!(
            names("RUN 3<<-\"END\" cat <<'B' <<C\"\""),
            vec![
                ("END".to_string(), 3, false, true),
                ("B".to_string(), 0, false, false),
                ("C".to_string(), 0, false, false),
            ]
        );
        assert_eq!(
            names("COPY <<a.txt <<b.txt /dst/"),
            vec![
                ("a.txt".to_string(), 0, true, false),
                ("b.txt".to_string(), 0, true, false)
            ]
        );
        assert!(parse_word("<<").is_none());
        assert!(parse_word("<<-").is_none());
        assert!(parse_word("<<a<b").is_none());
        assert!(parse_word("x<<EOF").is_none());
    }

    #[test]
    fn expansion_keeps_quotes() {
        let env = vec!["A=1".to_string(), "B=two".to_string()];
        let (out, m) = expand("a=$A '$B' \"${B}\" \\$A $C\n", &env);
        assert_eq!(out.expect("parses"), "a=1 'two' \"two\" $A \n");
        assert_eq!(m.unmatched.into_iter().collect::<Vec<_>>(), ["C"]);
    }

    #[test]
    fn chomp_and_summary() {
        assert_eq!(chomp("\t\ta\n\tb\n c\n"), "a\nb\n c\n");
        assert_eq!(summarize("\necho hi\n"), "echo hi");
        assert_eq!(summarize("set -e\necho hi\n"), "set -e...");
    }
}
