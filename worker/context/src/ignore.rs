//! `.dockerignore` patterns with the semantics of moby/patternmatcher, which
//! BuildKit and docker use for the build context, `COPY --exclude` and the
//! include/exclude patterns of a FileOp copy.
//!
//! Rules, in the order a reader meets them:
//! - patterns are anchored at the context root (`*.md` is top level only);
//! - `*` and `?` never cross `/`, `**` spans any number of directories,
//!   `[...]` is a character class (`[^...]` negates), `\` escapes;
//! - a pattern that matches a directory matches everything below it;
//! - the last matching pattern wins and `!pattern` re-includes.
//!
//! The matcher is written by hand rather than translated to a regex (as Go
//! does) so the crate needs no regex engine; the four match kinds of
//! patternmatcher (exact, prefix, suffix, general) are kept, quirks
//! included, so that a context sends the same files as with BuildKit.

/// Errors of pattern compilation.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IgnoreError {
    /// A lone `!` excludes nothing and is rejected, as by patternmatcher.
    #[error("illegal exclusion pattern: \"!\"")]
    IllegalExclusion,
    /// The pattern is malformed (an unclosed `[`, a bad range, a trailing
    /// `\` inside a class), like Go's `filepath.ErrBadPattern`.
    #[error("syntax error in pattern {pattern:?}")]
    BadPattern { pattern: String },
    /// A pattern longer than any path it could match ([`MAX_PATTERN_BYTES`]).
    #[error("pattern {prefix:?}... is longer than {MAX_PATTERN_BYTES} bytes")]
    PatternTooLong { prefix: String },
    /// More patterns than [`MAX_PATTERNS`].
    #[error("{count} patterns, more than the {MAX_PATTERNS} kiln matches")]
    TooManyPatterns { count: usize },
}

/// The longest pattern accepted: the kernel's `PATH_MAX`, the longest path
/// a pattern could be meant for. Matching costs pattern length times path
/// length for every file, so this also bounds that work.
pub const MAX_PATTERN_BYTES: usize = 4096;

/// The most patterns one matcher takes. Every file of a context is
/// matched against every pattern; real ignore files have tens to hundreds,
/// and this keeps a hostile one from turning a context walk (or a copy's
/// include/exclude filter in the daemon) into hours of work.
pub const MAX_PATTERNS: usize = 10_000;

/// Parses the text of a `.dockerignore` file into patterns, like moby's
/// `ignorefile.ReadAll`: a UTF-8 BOM is dropped, lines starting with `#`
/// (column 1 only) are comments, lines are trimmed and cleaned, a leading
/// `/` is dropped, and a leading `!` is kept (exceptions).
pub fn parse_dockerignore(text: &str) -> Vec<String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let mut pattern = line.trim();
        if pattern.is_empty() {
            continue;
        }
        let invert = pattern.starts_with('!');
        if invert {
            pattern = pattern[1..].trim();
        }
        let mut cleaned = String::new();
        if !pattern.is_empty() {
            cleaned = clean_path(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
        }
        if invert {
            cleaned.insert(0, '!');
        }
        out.push(cleaned);
    }
    out
}

/// Lexically cleans a slash-separated path like Go's `path.Clean`: repeated
/// slashes collapse, `.` elements go, `..` eats the element before it (and
/// stops at the root of an absolute path). The empty path cleans to `.`.
pub fn clean_path(p: &str) -> String {
    let rooted = p.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|l| *l != "..") {
                    parts.pop();
                } else if !rooted {
                    parts.push("..");
                }
            }
            other => parts.push(other),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_string(),
        (false, false) => joined,
    }
}

/// One element of a compiled general pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Lit(char),
    /// `*`: any run of characters except `/`.
    Star,
    /// `?`: one character except `/`.
    Any,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
    /// `**` followed by more pattern: empty, or anything ending in `/`.
    DoubleStarDir,
    /// `**` at the end: anything.
    DoubleStarEnd,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum MatchKind {
    Exact,
    /// Pattern ends in `**` and has no other special characters.
    Prefix(String),
    /// Pattern starts with `**` and has no other special characters.
    Suffix(String),
    General(Vec<Token>),
}

#[derive(Clone, Debug)]
struct Pattern {
    cleaned: String,
    exclusion: bool,
    kind: MatchKind,
}

impl Pattern {
    fn matches(&self, path: &str) -> bool {
        match &self.kind {
            MatchKind::Exact => path == self.cleaned,
            MatchKind::Prefix(p) => path.starts_with(p.as_str()),
            MatchKind::Suffix(s) => {
                path.ends_with(s.as_str()) || s.strip_prefix('/').is_some_and(|rest| path == rest)
            }
            MatchKind::General(tokens) => match_tokens(tokens, path),
        }
    }
}

/// A compiled list of ignore patterns.
#[derive(Clone, Debug, Default)]
pub struct PatternMatcher {
    patterns: Vec<Pattern>,
    exclusions: bool,
}

impl PatternMatcher {
    /// Compiles patterns (as returned by [`parse_dockerignore`], or the
    /// include/exclude patterns of a copy). Empty patterns are skipped.
    pub fn new(patterns: &[String]) -> Result<Self, IgnoreError> {
        let mut out = PatternMatcher::default();
        let count = patterns.iter().filter(|p| !p.trim().is_empty()).count();
        if count > MAX_PATTERNS {
            return Err(IgnoreError::TooManyPatterns { count });
        }
        for p in patterns {
            let p = p.trim();
            if p.is_empty() {
                continue;
            }
            if p.len() > MAX_PATTERN_BYTES {
                return Err(IgnoreError::PatternTooLong {
                    prefix: p.chars().take(32).collect(),
                });
            }
            let mut p = clean_path(p);
            let mut exclusion = false;
            if let Some(rest) = p.strip_prefix('!') {
                if rest.is_empty() {
                    return Err(IgnoreError::IllegalExclusion);
                }
                exclusion = true;
                out.exclusions = true;
                p = rest.to_string();
            }
            let kind = compile(&p)?;
            out.patterns.push(Pattern {
                cleaned: p,
                exclusion,
                kind,
            });
        }
        Ok(out)
    }

    /// True when there are no patterns at all.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// True when some pattern is an exception (`!...`).
    pub fn has_exclusions(&self) -> bool {
        self.exclusions
    }

    /// Whether `rel_path` (slash-separated, relative to the context root) is
    /// matched, i.e. ignored: the last pattern matching the path or one of
    /// its parent directories decides (patternmatcher's
    /// `MatchesOrParentMatches`).
    pub fn matches(&self, rel_path: &str) -> bool {
        let file = clean_path(rel_path.trim_start_matches('/'));
        if file == "." {
            // The root itself is never excluded.
            return false;
        }
        let parents: Vec<&str> = match file.rfind('/') {
            Some(i) => file[..i].split('/').collect(),
            None => Vec::new(),
        };
        let mut matched = false;
        for pattern in &self.patterns {
            if pattern.exclusion != matched {
                continue;
            }
            let mut hit = pattern.matches(&file);
            if !hit {
                for i in 1..=parents.len() {
                    if pattern.matches(&parents[..i].join("/")) {
                        hit = true;
                        break;
                    }
                }
            }
            if hit {
                matched = !pattern.exclusion;
            }
        }
        matched
    }

    /// Whether some path strictly below the directory `dir_rel` could be
    /// *not* matched. Walkers call it to skip a matched directory without
    /// reading it: `false` means everything below `dir_rel` is matched. The
    /// answer is conservative: `true` only means "look inside".
    pub fn might_include_children(&self, dir_rel: &str) -> bool {
        if !self.matches(dir_rel) {
            return true;
        }
        if !self.exclusions {
            return false;
        }
        let dir = clean_path(dir_rel.trim_start_matches('/'));
        let dir_parts: Vec<&str> = dir.split('/').collect();
        self.patterns
            .iter()
            .filter(|p| p.exclusion)
            .any(|p| exception_may_reach_below(&p.cleaned, &dir_parts))
    }
}

/// Whether an exception pattern could match a path below the directory
/// whose components are `dir_parts` (or the directory itself or a parent,
/// which re-includes everything below too).
fn exception_may_reach_below(pattern: &str, dir_parts: &[&str]) -> bool {
    let pat_parts: Vec<&str> = pattern.split('/').collect();
    for (i, dir_part) in dir_parts.iter().enumerate() {
        let Some(pat_part) = pat_parts.get(i) else {
            // The pattern is shorter and matched so far: it names a parent
            // of (or) the directory.
            return true;
        };
        if pat_part.contains("**") {
            return true;
        }
        match compile(pat_part) {
            Ok(MatchKind::Exact) => {
                if pat_part != dir_part {
                    return false;
                }
            }
            Ok(MatchKind::General(tokens)) => {
                if !match_tokens(&tokens, dir_part) {
                    return false;
                }
            }
            // Prefix/suffix kinds need `**`, handled above; be conservative.
            Ok(_) | Err(_) => return true,
        }
    }
    true
}

/// Compiles a cleaned pattern (without its `!`) into its match kind, the
/// way patternmatcher's `compile` picks one.
fn compile(pattern: &str) -> Result<MatchKind, IgnoreError> {
    #[derive(PartialEq)]
    enum Detected {
        Exact,
        Prefix,
        Suffix,
        General,
    }
    let bad = || IgnoreError::BadPattern {
        pattern: pattern.to_string(),
    };
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut detected = Detected::Exact;
    let mut i = 0;
    while i < chars.len() {
        let ch = chars[i];
        let first = i == 0;
        i += 1;
        match ch {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                if i >= chars.len() {
                    if detected == Detected::Exact {
                        detected = Detected::Prefix;
                    } else {
                        tokens.push(Token::DoubleStarEnd);
                        detected = Detected::General;
                    }
                } else {
                    tokens.push(Token::DoubleStarDir);
                    detected = Detected::General;
                }
                if first {
                    detected = Detected::Suffix;
                }
            }
            '*' => {
                tokens.push(Token::Star);
                detected = Detected::General;
            }
            '?' => {
                tokens.push(Token::Any);
                detected = Detected::General;
            }
            '\\' => match chars.get(i) {
                Some(&next) => {
                    i += 1;
                    tokens.push(Token::Lit(next));
                    detected = Detected::General;
                }
                None => return Err(bad()),
            },
            '[' => {
                let (class, next) = parse_class(&chars, i).ok_or_else(bad)?;
                tokens.push(class);
                i = next;
                detected = Detected::General;
            }
            other => tokens.push(Token::Lit(other)),
        }
    }
    Ok(match detected {
        Detected::Exact => MatchKind::Exact,
        Detected::Prefix => {
            MatchKind::Prefix(pattern.strip_suffix("**").unwrap_or(pattern).to_string())
        }
        Detected::Suffix => {
            MatchKind::Suffix(pattern.strip_prefix("**").unwrap_or(pattern).to_string())
        }
        Detected::General => MatchKind::General(tokens),
    })
}

/// Parses a character class whose `[` is just before `start`; returns the
/// token and the index after the closing `]`.
fn parse_class(chars: &[char], start: usize) -> Option<(Token, usize)> {
    let mut i = start;
    let mut negated = false;
    if chars.get(i) == Some(&'^') {
        negated = true;
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    loop {
        let c = *chars.get(i)?;
        if c == ']' && !first {
            return Some((Token::Class { negated, ranges }, i + 1));
        }
        first = false;
        let lo = class_char(chars, &mut i)?;
        let hi = if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|c| *c != ']') {
            i += 1;
            class_char(chars, &mut i)?
        } else {
            lo
        };
        if lo > hi {
            return None;
        }
        ranges.push((lo, hi));
    }
}

fn class_char(chars: &[char], i: &mut usize) -> Option<char> {
    let c = *chars.get(*i)?;
    *i += 1;
    if c == '\\' {
        let e = *chars.get(*i)?;
        *i += 1;
        return Some(e);
    }
    Some(c)
}

/// Matches `path` against the whole token list (anchored at both ends), by
/// dynamic programming over (token, position) so that no pattern can take
/// exponential time.
fn match_tokens(tokens: &[Token], path: &str) -> bool {
    let p: Vec<char> = path.chars().collect();
    let n = p.len();
    // next[j]: tokens[i+1..] match p[j..]; cur[j]: tokens[i..] match p[j..].
    let mut next = vec![false; n + 1];
    next[n] = true;
    for tok in tokens.iter().rev() {
        let mut cur = vec![false; n + 1];
        match tok {
            Token::Star => {
                for j in (0..=n).rev() {
                    cur[j] = next[j] || (j < n && p[j] != '/' && cur[j + 1]);
                }
            }
            Token::DoubleStarEnd => {
                for j in (0..=n).rev() {
                    cur[j] = next[j] || (j < n && cur[j + 1]);
                }
            }
            Token::DoubleStarDir => {
                // (.*/)? : empty, or any run ending in '/'.
                let mut slash_then = false;
                for j in (0..=n).rev() {
                    if j < n && p[j] == '/' && next[j + 1] {
                        slash_then = true;
                    }
                    cur[j] = next[j] || slash_then;
                }
            }
            single => {
                for j in 0..n {
                    cur[j] = next[j + 1] && single_matches(single, p[j]);
                }
            }
        }
        next = cur;
    }
    next[0]
}

fn single_matches(tok: &Token, c: char) -> bool {
    match tok {
        Token::Lit(l) => *l == c,
        Token::Any => c != '/',
        Token::Class { negated, ranges } => {
            ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *negated
        }
        Token::Star | Token::DoubleStarDir | Token::DoubleStarEnd => false,
    }
}

/// Whether a path component contains glob metacharacters (`*`, `?`, `[`),
/// skipping `\`-escaped characters, like fsutil's `containsWildcards`.
pub fn contains_wildcards(s: &str) -> bool {
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '*' | '?' | '[' => return true,
            _ => {}
        }
    }
    false
}

/// Go's `filepath.Match` on whole slash-separated paths: `*` and `?` never
/// cross `/`, there is no `**`. Used for `COPY` source wildcards. A
/// malformed pattern matches nothing.
pub fn glob_match(pattern: &str, path: &str) -> bool {
    let mut tokens = Vec::new();
    let chars: Vec<char> = pattern.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let ch = chars[i];
        i += 1;
        match ch {
            '*' => {
                // Go's Match treats consecutive stars as one.
                if tokens.last() != Some(&Token::Star) {
                    tokens.push(Token::Star);
                }
            }
            '?' => tokens.push(Token::Any),
            '\\' => match chars.get(i) {
                Some(&next) => {
                    i += 1;
                    tokens.push(Token::Lit(next));
                }
                None => return false,
            },
            '[' => match parse_class(&chars, i) {
                Some((class, next)) => {
                    tokens.push(class);
                    i = next;
                }
                _ => return false,
            },
            other => tokens.push(Token::Lit(other)),
        }
    }
    match_tokens(&tokens, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pm(patterns: &[&str]) -> PatternMatcher {
        let owned: Vec<String> = patterns.iter().map(|s| s.to_string()).collect();
        PatternMatcher::new(&owned).expect("valid patterns")
    }

    /// Each case: patterns, path, whether the path is ignored.
    fn check(cases: &[(&[&str], &str, bool)]) {
        for (patterns, path, want) in cases {
            assert_eq!(
                pm(patterns).matches(path),
                *want,
                "patterns {patterns:?} path {path:?}"
            );
        }
    }

    #[test]
    fn parse_strips_comments_cleans_and_keeps_exceptions() {
        let text =
            "\u{feff}# comment\n  \n/foo/bar/\n!  /keep/./me\n ./a//b \n #not a comment\n*.md\n";
        assert_eq!(
            parse_dockerignore(text),
            vec!["foo/bar", "!keep/me", "a/b", "#not a comment", "*.md"]
        );
        // A lone "!" survives parsing and fails at compile time, promptly.
        assert_eq!(parse_dockerignore("!\n"), vec!["!"]);
        assert_eq!(
            PatternMatcher::new(&parse_dockerignore("!\n")).expect_err("lone !"),
            IgnoreError::IllegalExclusion
        );
        assert_eq!(
            IgnoreError::IllegalExclusion.to_string(),
            "illegal exclusion pattern: \"!\""
        );
    }

    #[test]
    fn clean_path_matches_go() {
        for (input, want) in [
            ("", "."),
            ("a/../..", ".."),
            ("/../a", "/a"),
            ("a//b/./c/", "a/b/c"),
            ("/", "/"),
            ("./", "."),
        ] {
            assert_eq!(clean_path(input), want, "{input}");
        }
    }

    #[test]
    fn exact_and_anchored() {
        check(&[
            (&["foo"], "foo", true),
            (&["foo"], "a/foo", false),
            (&["*.md"], "README.md", true),
            (&["*.md"], "docs/README.md", false),
            (&["docs/*.md"], "docs/a.md", true),
        ]);
    }

    #[test]
    fn star_and_question_do_not_cross_slash() {
        check(&[
            (&["a*"], "abc", true),
            (&["a*c"], "ab/c", false),
            (&["a?c"], "abc", true),
            (&["a?c"], "a/c", false),
            (&["*/b"], "a/b", true),
            (&["*/b"], "x/a/b", false),
        ]);
    }

    #[test]
    fn double_star_spans_directories() {
        check(&[
            (&["**/foo"], "foo", true),
            (&["**/foo"], "a/b/foo", true),
            (&["**/foo"], "a/xfoo", false),
            (&["**"], "anything/at/all", true),
            (&["a/**"], "a/b/c", true),
            (&["a/**/z"], "a/z", true),
            (&["a/**/z"], "a/b/c/z", true),
            (&["a/**/z"], "a/b/c/y", false),
            (&["**/*.go"], "x/y/main.go", true),
            (&["x/**/*.go"], "x/y/main.go", true),
            (&["x/**/*.go"], "main.go", false),
        ]);
    }

    #[test]
    fn classes_and_escapes() {
        check(&[
            (&["[abc].txt"], "b.txt", true),
            (&["[abc].txt"], "d.txt", false),
            (&["[^abc].txt"], "d.txt", true),
            (&["[a-c]x"], "bx", true),
            (&["[a-c]x"], "dx", false),
            (&["\\*"], "*", true),
            (&["\\*"], "a", false),
            (&["a+b(c)"], "a+b(c)", true),
        ]);
        for bad in ["[abc", "a\\", "[z-a]"] {
            assert!(
                matches!(
                    PatternMatcher::new(&[bad.to_string()]),
                    Err(IgnoreError::BadPattern { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn directory_match_covers_descendants() {
        check(&[
            (&["node_modules"], "node_modules/x/y.js", true),
            (&["build/*"], "build/out/bin", true),
            (&["*/tmp"], "a/tmp/file", true),
            (&["*/tmp"], "a/b/tmp/file", false),
        ]);
    }

    #[test]
    fn last_match_wins_and_exceptions_reinclude() {
        check(&[
            (&["*.md", "!README.md"], "README.md", false),
            (&["*.md", "!README.md"], "CHANGES.md", true),
            (&["!README.md", "*.md"], "README.md", true),
            (&["subdir", "!*/sub1*"], "subdir/sub1.txt", false),
            (&["subdir", "!*/sub1*"], "subdir/sub2.txt", true),
            (
                &["docs", "!docs/keep", "docs/keep/no"],
                "docs/keep/no/x",
                true,
            ),
            (
                &["docs", "!docs/keep", "docs/keep/no"],
                "docs/keep/yes",
                false,
            ),
        ]);
    }

    #[test]
    fn pattern_count_and_length_are_bounded() {
        let long = "a".repeat(MAX_PATTERN_BYTES + 1);
        assert_eq!(
            PatternMatcher::new(&[long]).err().map(|e| e.to_string()),
            Some(format!(
                "pattern {:?}... is longer than 4096 bytes",
                "a".repeat(32)
            ))
        );
        assert!(PatternMatcher::new(&["a".repeat(MAX_PATTERN_BYTES)]).is_ok());
        let many: Vec<String> = (0..=MAX_PATTERNS).map(|i| format!("p{i}")).collect();
        assert_eq!(
            PatternMatcher::new(&many).err(),
            Some(IgnoreError::TooManyPatterns { count: 10_001 })
        );
        assert!(PatternMatcher::new(&many[1..]).is_ok());
    }

    #[test]
    fn root_is_never_matched() {
        check(&[(&["**"], ".", false), (&["*"], "", false)]);
    }

    #[test]
    fn might_include_children_prunes_only_safe_dirs() {
        let m = pm(&["node_modules"]);
        assert!(!m.might_include_children("node_modules"));
        assert!(m.might_include_children("src"));
        let m = pm(&["subdir", "!*/sub1*"]);
        assert!(m.might_include_children("subdir"));
        let m = pm(&["a", "!b/keep"]);
        assert!(!m.might_include_children("a"));
        let m = pm(&["a", "!**/keep"]);
        assert!(m.might_include_children("a"));
        let m = pm(&["a", "!a/b/keep"]);
        assert!(m.might_include_children("a"));
        assert!(m.might_include_children("a/b"));
        assert!(!m.might_include_children("a/c"));
    }

    #[test]
    fn glob_match_is_filepath_match() {
        assert!(glob_match("*.txt", "a.txt"));
        assert!(!glob_match("*.txt", "d/a.txt"));
        assert!(glob_match("d/*.txt", "d/a.txt"));
        assert!(glob_match("[[]x", "[x"));
        assert!(glob_match("\\?", "?"));
        assert!(glob_match("[^a]", "b"));
        assert!(!glob_match("[a", "a"));
        assert!(contains_wildcards("a*"));
        assert!(!contains_wildcards("a\\*"));
    }
}
