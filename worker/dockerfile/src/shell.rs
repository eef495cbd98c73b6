//! Word lexing and variable substitution, after BuildKit's
//! `frontend/dockerfile/shell/lex.go` and the parser's `parseWords`.
//!
//! The builder expands `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
//! `${VAR:+alt}`, `${VAR+alt}`, `${VAR:?msg}` and `${VAR?msg}`, removes quotes
//! and escapes. Unset variables expand to nothing.

/// How deeply `${…}` may nest inside a default or alternative word. The
/// expansion recurses once per level; this keeps a hostile Dockerfile far
/// from the stack's end (a daemon's runtime thread has 2 MiB) while no
/// real Dockerfile comes near it.
pub const MAX_EXPANSION_DEPTH: usize = 64;

/// The longest word an expansion may produce: the kernel's limit for one
/// argument or environment string (`MAX_ARG_STRLEN`, 128 KiB), so nothing
/// longer could reach a step anyway. It stops `ENV B=$A$A$A$A` chains from
/// doubling their way through the daemon's memory.
pub const MAX_WORD_BYTES: usize = 128 << 10;

/// Looks `key` up in a `K=V` list; the last entry wins.
pub fn lookup<'a>(env: &'a [String], key: &str) -> Option<&'a str> {
    env.iter().rev().find_map(|kv| {
        kv.split_once('=')
            .filter(|(k, _)| *k == key)
            .map(|(_, v)| v)
    })
}

/// The largest environment (`ENV` and `ARG` values of a stage, as `K=V`
/// bytes) a Dockerfile may build up: half the usual kernel limit for a
/// process's arguments and environment together (`ARG_MAX`, 2 MiB), so
/// nothing larger could start a step anyway.
pub const MAX_ENV_BYTES: usize = 1 << 20;

/// Sets `key` in a `K=V` list: replaced in place when present, appended
/// otherwise (BuildKit's `addEnv`). Fails when the list would grow past
/// [`MAX_ENV_BYTES`].
pub fn add_env(env: &mut Vec<String>, key: &str, value: &str) -> Result<(), String> {
    let entry = format!("{key}={value}");
    let slot = env
        .iter()
        .position(|kv| kv.split_once('=').map_or(kv.as_str(), |(k, _)| k) == key);
    let total: usize =
        env.iter().map(String::len).sum::<usize>() + entry.len() - slot.map_or(0, |i| env[i].len());
    if total > MAX_ENV_BYTES {
        return Err(format!(
            "the environment (ENV and ARG values) grows past {MAX_ENV_BYTES} bytes"
        ));
    }
    match slot {
        Some(i) => env[i] = entry,
        None => env.push(entry),
    }
    Ok(())
}

/// The lexer, configured with the file's escape character.
#[derive(Clone, Copy, Debug)]
pub struct Lex {
    pub escape: char,
}

impl Lex {
    pub fn new(escape: char) -> Self {
        Lex { escape }
    }

    /// Expands variables and removes quotes and escapes in one word.
    /// The error is a message without location.
    pub fn process_word(&self, word: &str, env: &[String]) -> Result<String, String> {
        let mut w = Word {
            chars: word.chars().collect(),
            pos: 0,
            escape: self.escape,
            env,
            depth: 0,
        };
        w.process_stop_on(None)
    }

    /// Like [`Lex::process_word`], then split at whitespace (for `EXPOSE`).
    pub fn process_words(&self, word: &str, env: &[String]) -> Result<Vec<String>, String> {
        Ok(self
            .process_word(word, env)?
            .split_whitespace()
            .map(str::to_string)
            .collect())
    }
}

struct Word<'a> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    env: &'a [String],
    /// How many `${…}` we are inside of.
    depth: usize,
}

impl Word<'_> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    fn too_long(out: &str) -> Result<(), String> {
        if out.len() > MAX_WORD_BYTES {
            return Err(format!(
                "variable substitution produces more than {MAX_WORD_BYTES} bytes"
            ));
        }
        Ok(())
    }

    fn process_stop_on(&mut self, stop: Option<char>) -> Result<String, String> {
        let mut out = String::new();
        while let Some(ch) = self.peek() {
            Self::too_long(&out)?;
            if Some(ch) == stop {
                self.pos += 1;
                return Ok(out);
            }
            match ch {
                '\'' => out.push_str(&self.single_quote()?),
                '"' => out.push_str(&self.double_quote()?),
                '$' => out.push_str(&self.dollar()?),
                c if c == self.escape => {
                    self.pos += 1;
                    match self.next() {
                        Some(n) => out.push(n),
                        None => break,
                    }
                }
                c => {
                    self.pos += 1;
                    out.push(c);
                }
            }
        }
        Self::too_long(&out)?;
        match stop {
            Some(s) => Err(format!(
                "unexpected end of statement while looking for matching {s}"
            )),
            None => Ok(out),
        }
    }

    fn single_quote(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching single-quote"
                            .into(),
                    )
                }
                Some('\'') => return Ok(out),
                Some(c) => out.push(c),
            }
        }
    }

    fn double_quote(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching double-quote"
                            .into(),
                    )
                }
                Some('"') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some('$') => {
                    out.push_str(&self.dollar()?);
                    Self::too_long(&out)?;
                }
                Some(c) if c == self.escape => {
                    self.pos += 1;
                    match self.peek() {
                        None => {}
                        Some(n) if n == '"' || n == '$' || n == self.escape => {
                            self.pos += 1;
                            out.push(n);
                        }
                        Some(_) => out.push(c),
                    }
                }
                Some(c) => {
                    self.pos += 1;
                    out.push(c);
                }
            }
        }
    }

    fn name(&mut self) -> String {
        let mut name = String::new();
        if let Some(c) = self.peek() {
            if c.is_ascii_digit() {
                while let Some(d) = self.peek().filter(char::is_ascii_digit) {
                    self.pos += 1;
                    name.push(d);
                }
                return name;
            }
            if "*#@?-$!".contains(c) {
                self.pos += 1;
                return c.to_string();
            }
        }
        while let Some(c) = self.peek().filter(|c| c.is_alphanumeric() || *c == '_') {
            self.pos += 1;
            name.push(c);
        }
        name
    }

    fn get(&self, name: &str) -> Option<String> {
        lookup(self.env, name).map(str::to_string)
    }

    fn dollar(&mut self) -> Result<String, String> {
        self.pos += 1;
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(self.get(&name).unwrap_or_default());
        }
        self.pos += 1;
        let name = self.name();
        if name.is_empty() {
            return Err("bad substitution".into());
        }
        let value = self.get(&name);
        let colon = self.peek() == Some(':');
        if colon {
            self.pos += 1;
        }
        match self.next() {
            Some('}') if !colon => Ok(value.unwrap_or_default()),
            Some(m @ ('-' | '+' | '?')) => {
                if self.depth >= MAX_EXPANSION_DEPTH {
                    return Err(format!(
                        "variable substitution nested deeper than {MAX_EXPANSION_DEPTH} levels"
                    ));
                }
                self.depth += 1;
                let word = self.process_stop_on(Some('}'));
                self.depth -= 1;
                let word = word?;
                // With `:`, an empty value counts as unset.
                let set = value.as_deref().is_some_and(|v| !colon || !v.is_empty());
                match m {
                    '-' => Ok(if set { value.unwrap_or_default() } else { word }),
                    '+' => Ok(if set { word } else { String::new() }),
                    _ if set => Ok(value.unwrap_or_default()),
                    _ if !word.is_empty() => Err(format!("{name}: {word}")),
                    _ if colon => Err(format!("{name}: is not allowed to be unset or empty")),
                    _ => Err(format!("{name}: is not allowed to be unset")),
                }
            }
            Some(m) => Err(format!("unsupported modifier ({m}) in substitution")),
            None => Err(format!("missing '}}' in substitution of {name}")),
        }
    }
}

/// Splits `rest` into words at unquoted whitespace, keeping quotes and
/// escapes in the words (BuildKit's `parseWords`, used for `ENV`, `LABEL`,
/// `ARG`).
pub fn parse_words(rest: &str, escape: char) -> Vec<String> {
    #[derive(PartialEq)]
    enum Phase {
        Spaces,
        Word,
        Quote(char),
    }
    let chars: Vec<char> = rest.chars().collect();
    let mut words = Vec::new();
    let mut phase = Phase::Spaces;
    let mut word = String::new();
    let mut blank_ok = false;
    let mut i = 0;
    while i <= chars.len() {
        let eof = i == chars.len();
        let ch = chars.get(i).copied().unwrap_or('\0');
        if phase == Phase::Spaces {
            if eof {
                break;
            }
            if ch.is_whitespace() {
                i += 1;
                continue;
            }
            phase = Phase::Word;
        }
        if eof {
            if blank_ok || !word.is_empty() {
                words.push(std::mem::take(&mut word));
            }
            break;
        }
        match phase {
            Phase::Word if ch.is_whitespace() => {
                phase = Phase::Spaces;
                if blank_ok || !word.is_empty() {
                    words.push(std::mem::take(&mut word));
                }
                blank_ok = false;
                i += 1;
                continue;
            }
            Phase::Word if ch == '\'' || ch == '"' => {
                phase = Phase::Quote(ch);
                blank_ok = true;
            }
            Phase::Quote(q) if ch == q => phase = Phase::Word,
            _ => {}
        }
        // The escape works outside quotes and inside double quotes; it is
        // kept with the character it escapes (the words are lexed again
        // later), and dropped when nothing follows (closing an open quote).
        let escapes = match phase {
            Phase::Word => true,
            Phase::Quote(q) => q != '\'',
            Phase::Spaces => false,
        };
        if ch == escape && escapes {
            if i + 1 == chars.len() {
                phase = Phase::Word;
                i += 1;
                continue;
            }
            word.push(ch);
            word.push(chars[i + 1]);
            i += 2;
            continue;
        }
        word.push(ch);
        i += 1;
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Vec<String> {
        vec![
            "A=a".into(),
            "EMPTY=".into(),
            "PATH=/bin".into(),
            "SP=x y".into(),
        ]
    }

    /// `expect` is the expanded word, or `error: <message>`.
    fn check(word: &str, expect: &str) {
        let got = match Lex::new('\\').process_word(word, &env()) {
            Ok(s) => s,
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(got, expect, "process_word({word:?})");
    }

    #[test]
    fn nesting_and_size_are_bounded() {
        let nest = |n: usize| format!("{}x{}", "${A:+".repeat(n), "}".repeat(n));
        check(&nest(MAX_EXPANSION_DEPTH), "x");
        check(
            &nest(MAX_EXPANSION_DEPTH + 1),
            "error: variable substitution nested deeper than 64 levels",
        );
        // Deep enough to overflow any thread's stack if it recursed.
        let deep = "${a:-".repeat(200_000);
        let got = Lex::new('\\').process_word(&deep, &[]);
        assert_eq!(
            got,
            Err("variable substitution nested deeper than 64 levels".into())
        );
        let big = vec![format!("B={}", "b".repeat(MAX_WORD_BYTES / 2))];
        assert_eq!(
            Lex::new('\\').process_word("$B$B", &big).map(|w| w.len()),
            Ok(MAX_WORD_BYTES)
        );
        for word in ["$B$B$B", "\"$B$B$B\"", "${X:-$B$B$B}"] {
            assert_eq!(
                Lex::new('\\').process_word(word, &big),
                Err("variable substitution produces more than 131072 bytes".into()),
                "{word}"
            );
        }
    }

    #[test]
    fn substitution() {
        check("$A", "a");
        check("${A}b", "ab");
        check("$Ab", "");
        check("pre-$A-post", "pre-a-post");
        check("$UNSET", "");
        check("${UNSET:-def}", "def");
        check("${EMPTY:-def}", "def");
        check("${EMPTY-def}", "");
        check("${A:-def}", "a");
        check("${A:+alt}", "alt");
        check("${UNSET:+alt}", "");
        check("${EMPTY:+alt}", "");
        check("${EMPTY+alt}", "alt");
        check("${UNSET:-$A/x}", "a/x");
        check("${UNSET:?need it}", "error: UNSET: need it");
        check("${A#x}", "error: unsupported modifier (#) in substitution");
        check("${A", "error: missing '}' in substitution of A");
        check("$", "$");
        check("a$ b", "a$ b");
    }

    #[test]
    fn quotes_and_escapes() {
        check(r"\$A", "$A");
        check("'$A'", "$A");
        check("\"$A\"", "a");
        check(r#""\$A \"q\" \n""#, r#"$A "q" \n"#);
        check(r"a\ b", "a b");
        check("\"x y\"", "x y");
        check(
            "'unterminated",
            "error: unexpected end of statement while looking for matching single-quote",
        );
        assert_eq!(
            Lex::new('`').process_word("`$A $A", &env()),
            Ok("$A a".to_string())
        );
    }

    #[test]
    fn words_keep_quotes() {
        assert_eq!(
            parse_words(r#"a=1 b="x y" c='p q'"#, '\\'),
            vec!["a=1", r#"b="x y""#, "c='p q'"]
        );
        assert_eq!(parse_words(r"a=x\ y  b", '\\'), vec![r"a=x\ y", "b"]);
        assert_eq!(parse_words(r#"e="""#, '\\'), vec![r#"e="""#]);
        // Escapes inside double quotes are kept, inside single quotes they
        // are plain characters, and a trailing one is dropped.
        assert_eq!(
            parse_words(r#"a="x\" y" b='p\' q"#, '\\'),
            vec![r#"a="x\" y""#, r"b='p\'", "q"]
        );
        assert_eq!(parse_words(r"a\", '\\'), vec!["a"]);
        assert_eq!(parse_words(r#"a="x\"#, '\\'), vec![r#"a="x"#]);
        assert_eq!(parse_words("a=`` b", '`'), vec!["a=``", "b"]);
        assert_eq!(
            Lex::new('\\').process_words("80 $SP", &env()),
            Ok(vec!["80".into(), "x".into(), "y".into()])
        );
    }

    #[test]
    fn env_list_replaces_in_place() {
        let mut e = env();
        add_env(&mut e, "A", "new").expect("small");
        add_env(&mut e, "Z", "z").expect("small");
        assert_eq!(e, vec!["A=new", "EMPTY=", "PATH=/bin", "SP=x y", "Z=z"]);
        assert_eq!(lookup(&e, "Z"), Some("z"));
        assert_eq!(lookup(&e, "NOPE"), None);
        // Up to the limit, replacing counts the new value only.
        let big = "x".repeat(MAX_ENV_BYTES / 2);
        add_env(&mut e, "B1", &big).expect("half");
        add_env(&mut e, "B1", &big).expect("replaced, not added");
        assert_eq!(
            add_env(&mut e, "B2", &big),
            Err("the environment (ENV and ARG values) grows past 1048576 bytes".into())
        );
        assert_eq!(e.len(), 6);
    }
}
