//! Word lexing and variable substitution, after BuildKit's
//! `frontend/dockerfile/shell/lex.go` and the parser's `parseWords`.
//!
//! The builder expands `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
//! `${VAR:+alt}`, `${VAR+alt}`, `${VAR:?msg}`, `${VAR?msg}`, the pattern
//! forms `${VAR#p}`, `${VAR##p}`, `${VAR%p}`, `${VAR%%p}`, `${VAR/p/r}` and
//! `${VAR//p/r}` (globs of `*` and `?`), and removes quotes and escapes.
//! Unset variables expand to nothing. Errors carry BuildKit's texts,
//! wrapped as `failed to process "<word>": ...`.

use std::cell::RefCell;
use std::collections::BTreeSet;

use crate::convert::gocompat::go_quote;

/// How deeply `${…}` may nest inside a default or alternative word. The
/// expansion recurses once per level; this keeps a hostile Dockerfile far
/// from the stack's end (a daemon's runtime thread has 2 MiB) while no
/// real Dockerfile comes near it.
pub const MAX_EXPANSION_DEPTH: usize = 64;

/// How much longer than its own text an expanded word may be: the
/// kernel's limit for one argument or environment string
/// (`MAX_ARG_STRLEN`, 128 KiB). It stops `ENV B=$A$A$A$A` chains from
/// doubling their way through the daemon's memory, while a long literal
/// (a heredoc of a few MiB) expands as written, as in BuildKit.
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

/// The word as an error shows it: Go-quoted like BuildKit's, cut after
/// [`MAX_QUOTED_CHARS`] characters so a hostile word does not flood the
/// output.
fn quote_word(word: &str) -> String {
    match word.char_indices().nth(MAX_QUOTED_CHARS) {
        Some((cut, _)) => format!("{}...", go_quote(&word[..cut])),
        None => go_quote(word),
    }
}

/// See [`quote_word`].
const MAX_QUOTED_CHARS: usize = 200;

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
        self.process_word_matches(word, env).0
    }

    /// A step's vertex name as BuildKit shows it (`RUN echo $X` with `X`
    /// set shows its value): variables the env has expanded, quotes kept,
    /// unset ones left as written (BuildKit's `RawQuotes` and
    /// `SkipUnsetEnv`).
    pub fn process_name(&self, word: &str, env: &[String]) -> Result<String, String> {
        let mut w = Word {
            chars: word.chars().collect(),
            limit: word.len().saturating_add(MAX_WORD_BYTES),
            pos: 0,
            escape: self.escape,
            env,
            depth: 0,
            raw: false,
            for_name: true,
            matches: RefCell::default(),
        };
        w.process_stop_on(None)
    }

    /// [`Lex::process_word`], and the variables the word looked up, found
    /// or not (BuildKit's `ProcessWordWithMatches`, which the build checks
    /// read). The names are recorded even when the word fails.
    pub fn process_word_matches(
        &self,
        word: &str,
        env: &[String],
    ) -> (Result<String, String>, Matches) {
        let mut w = Word {
            chars: word.chars().collect(),
            limit: word.len().saturating_add(MAX_WORD_BYTES),
            pos: 0,
            escape: self.escape,
            env,
            depth: 0,
            raw: false,
            for_name: false,
            matches: RefCell::default(),
        };
        let out = w
            .process_stop_on(None)
            .map_err(|e| format!("failed to process {}: {e}", quote_word(word)));
        (out, w.matches.into_inner())
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

/// The variables one word looked up (see [`Lex::process_word_matches`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Matches {
    /// Names found in the env.
    pub matched: BTreeSet<String>,
    /// Names not in the env (`${X:-d}` looks `X` up too).
    pub unmatched: BTreeSet<String>,
}

struct Word<'a> {
    /// Every name looked up, for [`Lex::process_word_matches`].
    matches: RefCell<Matches>,
    chars: Vec<char>,
    /// The most bytes the expansion may produce: the word's own length
    /// plus [`MAX_WORD_BYTES`].
    limit: usize,
    pos: usize,
    escape: char,
    env: &'a [String],
    /// How many `${…}` we are inside of.
    depth: usize,
    /// Keep escape characters in the output (the pattern of a `#`, `%`
    /// or `/` modifier, whose escapes quote glob characters).
    raw: bool,
    /// A vertex name ([`Lex::process_name`]): quotes kept, unset
    /// variables left as written.
    for_name: bool,
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

    fn too_long(&self, out: &str) -> Result<(), String> {
        if out.len() > self.limit {
            return Err(format!(
                "variable substitution produces more than {} bytes",
                self.limit
            ));
        }
        Ok(())
    }

    fn process_stop_on(&mut self, stop: Option<char>) -> Result<String, String> {
        let mut out = String::new();
        while let Some(ch) = self.peek() {
            self.too_long(&out)?;
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
                    if self.raw {
                        out.push(c);
                    }
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
        self.too_long(&out)?;
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
        if self.for_name {
            out.push('\'');
        }
        loop {
            match self.next() {
                None => {
                    return Err(
                        "unexpected end of statement while looking for matching single-quote"
                            .into(),
                    )
                }
                Some('\'') => {
                    if self.for_name {
                        out.push('\'');
                    }
                    return Ok(out);
                }
                Some(c) => out.push(c),
            }
        }
    }

    fn double_quote(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out = String::new();
        if self.for_name {
            out.push('"');
        }
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
                    if self.for_name {
                        out.push('"');
                    }
                    return Ok(out);
                }
                Some('$') => {
                    out.push_str(&self.dollar()?);
                    self.too_long(&out)?;
                }
                Some(c) if c == self.escape => {
                    self.pos += 1;
                    if self.raw {
                        out.push(c);
                    }
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
        let found = lookup(self.env, name).map(str::to_string);
        let mut m = self.matches.borrow_mut();
        if found.is_some() {
            m.matched.insert(name.to_string());
        } else {
            m.unmatched.insert(name.to_string());
        }
        found
    }

    /// Expands `$NAME` / `${NAME...}`, the cursor on the `$`. The
    /// modifiers and error texts follow BuildKit's `processDollar`.
    fn dollar(&mut self) -> Result<String, String> {
        self.pos += 1;
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".into());
            }
            return Ok(match self.get(&name) {
                None if self.for_name => format!("${name}"),
                v => v.unwrap_or_default(),
            });
        }
        self.pos += 1;
        match self.peek() {
            None => return Err(MISSING_BRACE.into()),
            Some('{' | '}' | ':') => return Err("syntax error: bad substitution".into()),
            Some(_) => {}
        }
        let name = self.name();
        let value = self.get(&name);
        if self.for_name && value.is_none() {
            return self.unset_as_written(&name);
        }
        match self.next() {
            Some('}') => Ok(value.unwrap_or_default()),
            Some(':') => {
                let m = self.next();
                let shown = format!(":{}", m.map_or(String::new(), String::from));
                if matches!(m, Some('#' | '%')) {
                    return Err(unsupported(&shown));
                }
                let word = self.nested(Some('}'), false, MISSING_BRACE)?;
                let set = value.as_deref().filter(|v| !v.is_empty());
                match m {
                    Some('-') => Ok(set.map_or(word, str::to_string)),
                    Some('+') => Ok(set.map_or(String::new(), |_| word)),
                    Some('?') => match (set, value.is_some()) {
                        (Some(v), _) => Ok(v.to_string()),
                        _ if !word.is_empty() => Err(format!("{name}: {word}")),
                        (None, true) => Err(format!("{name}: is not allowed to be empty")),
                        (None, false) => Err(format!("{name}: is not allowed to be unset")),
                    },
                    _ => Err(unsupported(&shown)),
                }
            }
            Some(m @ ('-' | '+' | '?')) => {
                let word = self.nested(Some('}'), false, MISSING_BRACE)?;
                match (m, value) {
                    ('-', Some(v)) | ('?', Some(v)) => Ok(v),
                    ('-', None) => Ok(word),
                    ('+', Some(_)) => Ok(word),
                    ('+', None) => Ok(String::new()),
                    _ if !word.is_empty() => Err(format!("{name}: {word}")),
                    _ => Err(format!("{name}: is not allowed to be unset")),
                }
            }
            Some(m @ ('#' | '%')) => {
                // The pattern keeps its escapes: they quote `*` and `?`.
                let word = self.nested(Some('}'), true, MISSING_BRACE)?;
                let (longest, pattern) = match word.strip_prefix(m) {
                    Some(rest) => (true, rest.to_string()),
                    None => (false, word),
                };
                let value = value.unwrap_or_default();
                let glob = Glob::parse(&pattern)
                    .map_err(|e| format!("invalid pattern ({pattern}) in substitution: {e}"))?;
                Ok(if m == '#' {
                    glob.trim_prefix(&value, longest)
                } else {
                    glob.trim_suffix(&value, longest)
                })
            }
            Some('/') => {
                let all = self.peek() == Some('/');
                if all {
                    self.pos += 1;
                }
                let pattern = self.nested(Some('/'), true, "syntax error: missing '/' in ${}")?;
                let replacement = self.nested(Some('}'), true, MISSING_BRACE)?;
                let value = value.unwrap_or_default();
                let glob = Glob::parse(&pattern)
                    .map_err(|e| format!("invalid pattern ({pattern}) in substitution: {e}"))?;
                Ok(glob.replace(&value, &replacement, all))
            }
            // Go's scanner gives EOF here, which BuildKit prints as U+FFFD.
            None => Err(unsupported("\u{FFFD}")),
            Some(m) => Err(unsupported(&m.to_string())),
        }
    }

    /// `${NAME...}` of an unset variable in a vertex name, the cursor after
    /// the name: as written, its modifier's word processed (BuildKit's
    /// `SkipUnsetEnv`).
    fn unset_as_written(&mut self, name: &str) -> Result<String, String> {
        let mut out = format!("${{{name}");
        match self.next() {
            Some('}') => {}
            Some(':') => {
                out.push(':');
                if let Some(m) = self.next() {
                    out.push(m);
                }
                out.push_str(&self.nested(Some('}'), false, MISSING_BRACE)?);
            }
            Some('/') => {
                out.push('/');
                if self.peek() == Some('/') {
                    self.pos += 1;
                    out.push('/');
                }
                out.push_str(&self.nested(Some('/'), true, "syntax error: missing '/' in ${}")?);
                out.push('/');
                out.push_str(&self.nested(Some('}'), true, MISSING_BRACE)?);
            }
            Some(m) => {
                out.push(m);
                out.push_str(&self.nested(Some('}'), m == '#' || m == '%', MISSING_BRACE)?);
            }
            None => return Err(unsupported("\u{FFFD}")),
        }
        out.push('}');
        Ok(out)
    }

    /// Processes the word of a modifier up to `stop`, one nesting level
    /// deeper; `raw` keeps escape characters in the result (patterns).
    /// Running out of input gives `eof_message`.
    fn nested(
        &mut self,
        stop: Option<char>,
        raw: bool,
        eof_message: &str,
    ) -> Result<String, String> {
        if self.depth >= MAX_EXPANSION_DEPTH {
            return Err(format!(
                "variable substitution nested deeper than {MAX_EXPANSION_DEPTH} levels"
            ));
        }
        self.depth += 1;
        let saved = std::mem::replace(&mut self.raw, raw);
        let word = self.process_stop_on(stop);
        self.raw = saved;
        self.depth -= 1;
        word.map_err(|e| {
            if self.peek().is_none()
                && e.starts_with("unexpected end of statement while looking for matching")
            {
                eof_message.to_string()
            } else {
                e
            }
        })
    }
}

const MISSING_BRACE: &str = "syntax error: missing '}'";

fn unsupported(modifier: &str) -> String {
    format!("unsupported modifier ({modifier}) in substitution")
}

/// One element of a `${v#pattern}` glob.
#[derive(Clone, Copy, Debug, PartialEq)]
enum GlobItem {
    /// `*`: any run of characters.
    Star,
    /// `?`: any one character.
    Any,
    Char(char),
}

/// A shell pattern of the `#`, `%` and `/` modifiers: `*`, `?` and
/// literal characters, where the escape character quotes `*`, `?` and
/// itself (and is dropped before `}` and `/`). Bracket expressions are
/// plain characters, as in BuildKit.
#[derive(Debug)]
struct Glob(Vec<GlobItem>);

impl Glob {
    fn parse(pattern: &str) -> Result<Glob, String> {
        // BuildKit's pattern escape is always `\`, whatever the file's
        // escape directive says.
        let escape = '\\';
        let mut items = Vec::new();
        let mut chars = pattern.chars().peekable();
        while let Some(c) = chars.next() {
            items.push(match c {
                '*' => GlobItem::Star,
                '?' => GlobItem::Any,
                c if c == escape => match chars.peek().copied() {
                    Some('}' | '/') => continue,
                    Some(n @ ('*' | '?')) => {
                        chars.next();
                        GlobItem::Char(n)
                    }
                    Some(n) if n == escape => {
                        chars.next();
                        GlobItem::Char(n)
                    }
                    Some(n) => return Err(format!("invalid escape '{escape}{n}'")),
                    None => return Err(format!("invalid escape '{escape}'")),
                },
                c => GlobItem::Char(c),
            });
        }
        Ok(Glob(items))
    }

    /// The ends `e` such that the pattern matches `s[start..e]`, as flags
    /// over `lo..lo + flags.len()`. One pass per pattern element over the
    /// positions still reachable (a window of the pattern's length until a
    /// `*` opens it to the end), so there is no backtracking.
    fn ends_from(&self, s: &[char], start: usize) -> (usize, Vec<bool>) {
        let n = s.len();
        let mut lo = start;
        let mut at = vec![true];
        for item in &self.0 {
            let Some(first) = at.iter().position(|b| *b) else {
                return (lo, Vec::new());
            };
            match item {
                GlobItem::Star => {
                    lo += first;
                    at = vec![true; n + 1 - lo];
                }
                GlobItem::Any | GlobItem::Char(_) => {
                    let next = at
                        .iter()
                        .enumerate()
                        .take_while(|(k, _)| lo + k < n)
                        .map(|(k, b)| {
                            *b && match item {
                                GlobItem::Char(c) => s[lo + k] == *c,
                                _ => true,
                            }
                        })
                        .collect();
                    lo += 1;
                    at = next;
                }
            }
        }
        (lo, at)
    }

    /// The starts `p` from which the pattern matches some `s[p..e]`,
    /// computed backwards in one pass per pattern element.
    fn match_starts(&self, s: &[char]) -> Vec<bool> {
        let n = s.len();
        let mut can = vec![true; n + 1];
        for item in self.0.iter().rev() {
            let mut prev = vec![false; n + 1];
            match item {
                GlobItem::Star => {
                    if let Some(last) = can.iter().rposition(|b| *b) {
                        prev[..=last].iter_mut().for_each(|b| *b = true);
                    }
                }
                GlobItem::Any | GlobItem::Char(_) => {
                    for p in 0..n {
                        let ok = match item {
                            GlobItem::Char(c) => s[p] == *c,
                            _ => true,
                        };
                        prev[p] = ok && can[p + 1];
                    }
                }
            }
            can = prev;
        }
        can
    }

    /// The end of the shortest or longest match starting at `start`.
    fn match_end(&self, s: &[char], start: usize, longest: bool) -> Option<usize> {
        let (lo, ends) = self.ends_from(s, start);
        let found = if longest {
            ends.iter().rposition(|b| *b)
        } else {
            ends.iter().position(|b| *b)
        };
        found.map(|k| lo + k)
    }

    /// The length of the shortest or longest match of the pattern
    /// starting at the beginning of `s`.
    fn prefix_len(&self, s: &[char], longest: bool) -> Option<usize> {
        self.match_end(s, 0, longest)
    }

    fn trim_prefix(&self, value: &str, longest: bool) -> String {
        let s: Vec<char> = value.chars().collect();
        match self.prefix_len(&s, longest) {
            Some(n) => s[n..].iter().collect(),
            None => value.to_string(),
        }
    }

    fn trim_suffix(&self, value: &str, longest: bool) -> String {
        // A suffix match is a prefix match of the reversed pattern on the
        // reversed value.
        let mut rev: Vec<char> = value.chars().collect();
        rev.reverse();
        let reversed = Glob(self.0.iter().rev().copied().collect());
        match reversed.prefix_len(&rev, longest) {
            Some(n) => rev[n..].iter().rev().collect(),
            None => value.to_string(),
        }
    }

    /// Replaces the first (or every) leftmost-longest match with
    /// `replacement`; an empty match is replaced too, but not right
    /// after a previous match (Go's `regexp` rules, which BuildKit uses).
    fn replace(&self, value: &str, replacement: &str, all: bool) -> String {
        let s: Vec<char> = value.chars().collect();
        let starts = self.match_starts(&s);
        let mut out = String::new();
        let mut i = 0;
        let mut last_end: Option<usize> = None;
        while i <= s.len() {
            // The next position a match starts from.
            let Some(start) = (i..=s.len()).find(|p| starts[*p]) else {
                break;
            };
            out.extend(&s[i..start]);
            i = start;
            let end = self.match_end(&s, i, true).unwrap_or(i);
            if end == i && last_end == Some(i) {
                // An empty match right after the previous one is skipped.
                if let Some(c) = s.get(i) {
                    out.push(*c);
                }
                i += 1;
                continue;
            }
            out.push_str(replacement);
            last_end = Some(end);
            if !all {
                i = end;
                break;
            }
            if end > i {
                i = end;
            } else {
                if let Some(c) = s.get(i) {
                    out.push(*c);
                }
                i += 1;
            }
        }
        if i < s.len() {
            out.extend(&s[i..]);
        }
        out
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
        let deeper = nest(MAX_EXPANSION_DEPTH + 1);
        check(
            &deeper,
            &format!(
                "error: failed to process {:?}...: variable substitution nested deeper than 64 levels",
                &deeper[..200]
            ),
        );
        // Deep enough to overflow any thread's stack if it recursed.
        let deep = "${a:-".repeat(200_000);
        let got = Lex::new('\\').process_word(&deep, &[]);
        assert!(
            got.as_ref().is_err_and(|e| e.ends_with(": variable substitution nested deeper than 64 levels")),
            "{:?}",
            got.map_err(|e| e.len())
        );
        let big = vec![format!("B={}", "b".repeat(MAX_WORD_BYTES / 2))];
        assert_eq!(
            Lex::new('\\').process_word("$B$B", &big).map(|w| w.len()),
            Ok(MAX_WORD_BYTES)
        );
        for word in ["$B$B$B", "\"$B$B$B\"", "${X:-$B$B$B}"] {
            let limit = 131072 + word.len();
            assert_eq!(
                Lex::new('\\').process_word(word, &big),
                Err(format!("failed to process {word:?}: variable substitution produces more than {limit} bytes")),
            );
        }
        // A long literal (a heredoc's body) is as long as it is written.
        let literal = "x".repeat(3 * MAX_WORD_BYTES);
        assert_eq!(
            Lex::new('\\')
                .process_word(&format!("{literal}$B"), &big)
                .map(|w| w.len()),
            Ok(3 * MAX_WORD_BYTES + MAX_WORD_BYTES / 2)
        );
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
        check("${UNSET-def}", "def");
        check("${A:-def}", "a");
        check("${A-def}", "a");
        check("${A:+alt}", "alt");
        check("${A+alt}", "alt");
        check("${UNSET:+alt}", "");
        check("${UNSET+alt}", "");
        check("${EMPTY:+alt}", "");
        check("${EMPTY+alt}", "alt");
        check("${UNSET:-$A/x}", "a/x");
        check("${UNSET:-${EMPTY:-y}}z", "yz");
        check("${A:?need it}", "a");
        check("${EMPTY?need it}", "");
        check("$1x ${999:-d} $@@", "x d @");
        check("$", "$");
        check("a$ b", "a$ b");
        check("${aaa:-bbb}}", "bbb}");
    }

    #[test]
    fn substitution_errors() {
        let fail = |word: &str, message: &str| {
            check(
                word,
                &format!("error: failed to process {word:?}: {message}"),
            );
        };
        fail("${UNSET:?need it}", "UNSET: need it");
        fail("${UNSET?need it}", "UNSET: need it");
        fail("${UNSET:?}", "UNSET: is not allowed to be unset");
        fail("${UNSET?}", "UNSET: is not allowed to be unset");
        fail("${EMPTY:?}", "EMPTY: is not allowed to be empty");
        fail("${A:=x}", "unsupported modifier (:=) in substitution");
        fail("${A=x}", "unsupported modifier (=) in substitution");
        fail("${A:YYY}", "unsupported modifier (:Y) in substitution");
        fail("${A:#x}", "unsupported modifier (:#) in substitution");
        fail("${A:%%x}", "unsupported modifier (:%) in substitution");
        fail("${A.}", "unsupported modifier (.) in substitution");
        fail("${}", "syntax error: bad substitution");
        fail("${:-x}", "syntax error: bad substitution");
        fail("${{A}", "syntax error: bad substitution");
        fail("${", "syntax error: missing '}'");
        fail("${A", "unsupported modifier (\u{FFFD}) in substitution");
        fail("${A:-x", "syntax error: missing '}'");
        fail("${A//x}", "syntax error: missing '/' in ${}");
        fail("${A/x", "syntax error: missing '/' in ${}");
        fail(
            r"${A#\x}",
            r"invalid pattern (\x) in substitution: invalid escape '\x'",
        );
    }

    fn check_with(word: &str, env: &[(&str, &str)], expect: &str) {
        let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let got = Lex::new('\\')
            .process_word(word, &env)
            .unwrap_or_else(|e| format!("error: {e}"));
        assert_eq!(got, expect, "process_word({word:?})");
    }

    #[test]
    fn pattern_modifiers() {
        let v = [("V", "file.tar.gz"), ("P", "/a/b/c")];
        check_with("${V#*.}", &v, "tar.gz");
        check_with("${V##*.}", &v, "gz");
        check_with("${V%.*}", &v, "file.tar");
        check_with("${V%%.*}", &v, "file");
        check_with("${V#nomatch}", &v, "file.tar.gz");
        check_with("${V%}", &v, "file.tar.gz");
        check_with("${V#?i}", &v, "le.tar.gz");
        check_with("${P#/}", &v, "a/b/c");
        check_with("${P%/*}", &v, "/a/b");
        check_with("${UNSET#x}", &v, "");
        check_with("${V/./-}", &v, "file-tar.gz");
        check_with("${V//./-}", &v, "file-tar-gz");
        check_with("${V/t*./}", &v, "file.gz");
        check_with("${V//[a]/x}", &v, "file.tar.gz");
        check_with(r"${P//\//_}", &v, "_a_b_c");
        let p = [("P", "/usr/local/lib")];
        check_with(
            "${P/l*l/X} ${P//?o/.} ${P/#/x}",
            &p,
            "/usr/Xib /usr/.cal/lib /usr/local/lib",
        );
        // BuildKit's own cases (frontend/dockerfile/shell/lex_test.go).
        let foo = |value: &str| [("FOO", value.to_string())];
        let cases: &[(&str, &str, &str)] = &[
            (r"${FOO#()[]{\}^$.\*\?|\\}", r"()[]{}^$.*?|\x", "x"),
            (r"${FOO%%\**}", "xx**", "xx"),
            ("${FOO#*x*y}", "xxyy", "y"),
            ("${FOO#*}", "xxyy", "xxyy"),
            ("${FOO##*x}", "xxyy", "yy"),
            ("${FOO##}", "xxyy", "xxyy"),
            (r"${FOO#?\?}", "???y", "?y"),
            (r"${FOO%%\**\*}", "a***yy*", "a"),
            ("${FOO///}", "xxyy", "xxyy"),
            (r"${FOO//\//\/}", "/tmp/foo.txt", r"\/tmp\/foo.txt"),
        ];
        for (word, value, expect) in cases {
            let env = foo(value);
            check_with(word, &[("FOO", env[0].1.as_str())], expect);
        }
        let e = [("FOO", "xxyy"), ("BAR", "")];
        check_with("${FOO/$BAR/ww}", &e, "wwxxyy");
        check_with("${FOO//$BAR/w}", &e, "wxwxwywyw");
        check_with("${FOO%%$BAR}", &e, "xxyy");
        let e = [("FOO", "/foo*/*/*.txt"), ("NEEDLE", r"\*/")];
        check_with(
            "${FOO/$NEEDLE/.} - ${FOO//$NEEDLE/.}",
            &e,
            "/foo.*/*.txt - /foo..*.txt",
        );
        let e = [("FOO", "/a/foo/b/c.txt"), ("NEEDLE", "/?/"), ("R", "/")];
        check_with(
            "${FOO/$NEEDLE/$R} - ${FOO//$NEEDLE/$R}",
            &e,
            "/foo/b/c.txt - /foo/c.txt",
        );
    }

    #[test]
    fn pattern_work_is_bounded() {
        // Half the word limit of one character, replaced one by one, and
        // a pattern that never matches: quadratic or backtracking work
        // would take minutes here.
        let long = "a".repeat(MAX_WORD_BYTES / 2);
        let env = [("L", long.as_str())];
        let lex = |w: &str| {
            let env: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
            Lex::new('\\').process_word(w, &env).map(|r| r.len())
        };
        assert_eq!(lex("${L//a/b}"), Ok(long.len()));
        assert_eq!(lex("${L//*b/x}"), Ok(long.len()));
        assert_eq!(lex("${L%%a*b}"), Ok(long.len()));
        assert_eq!(lex("${L##*a}"), Ok(0));
        assert_eq!(lex("${L#a?a}"), Ok(long.len() - 3));
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
            "error: failed to process \"'unterminated\": unexpected end of statement while looking for matching single-quote",
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

    /// What buildkitd showed for the same RUN line (its `RawQuotes` and
    /// `SkipUnsetEnv` expansion of vertex names).
    #[test]
    fn vertex_names_expand_set_variables_only_and_keep_quotes() {
        let env = vec!["NAME=world".to_string(), "DIR=/opt/world".to_string()];
        let lex = Lex::new('\\');
        assert_eq!(
            lex.process_name(
                r#"RUN echo $NAME ${DIR} "$NAME" '$NAME' $UNSET ${UNSET} ${UNSET:-d} ${NAME:-x} ${UNSET/a/b} \$NAME a\ b"#,
                &env
            ),
            Ok(r#"RUN echo world /opt/world "world" '$NAME' $UNSET ${UNSET} ${UNSET:-d} world ${UNSET/a/b} $NAME a b"#.to_string())
        );
        assert!(lex.process_name("RUN echo ${NAME", &env).is_err());
    }
}
