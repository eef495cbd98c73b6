//! The source snippet BuildKit prints for a place in a file
//! (`errdefs.Source.Print`): `Dockerfile:3`, the lines around the marked
//! ones numbered, `>>>` on each marked line. buildx and buildctl print it
//! under a failed build, and the lint request's `result.txt` holds one per
//! warning.

/// The snippet of `text` (a file named `filename`) marking `ranges`, each
/// `(first line, last line)` counted from 1 (a last line before the first
/// marks only the first); empty when there is no range or the first line
/// is outside the file.
pub fn snippet(filename: &str, text: &str, ranges: &[(i64, i64)]) -> String {
    let lines: Vec<&str> = text.split('\n').collect();
    let Some(first) = ranges.iter().map(|r| r.0).min() else {
        return String::new();
    };
    let last = ranges.iter().map(|r| r.0.max(r.1)).max().unwrap_or(first);
    let n = i64::try_from(lines.len()).unwrap_or(i64::MAX);
    let (mut start, mut end) = (first, last);
    if start > n || start < 1 {
        return String::new();
    }
    end = end.min(n);
    // Four lines of context around one line, two around several: before
    // while there are lines before, after while there are lines after.
    let pad = if end == start { 4 } else { 2 };
    let mut p = 0;
    while p < pad {
        if start > 1 {
            start -= 1;
            p += 1;
        }
        if end != n {
            end += 1;
            p += 1;
        }
        p += 1;
    }
    let marked = |l: i64| ranges.iter().any(|r| r.0 <= l && r.0.max(r.1) >= l);
    let rule = "--------------------\n";
    let mut out = format!("{filename}:{first}\n{rule}");
    for l in start..=end {
        let pfx = if marked(l) { ">>>" } else { "   " };
        let line = usize::try_from(l - 1)
            .ok()
            .and_then(|i| lines.get(i))
            .copied()
            .unwrap_or("");
        out.push_str(&format!(" {l:>3} | {pfx} {line}\n"));
    }
    out.push_str(rule);
    out
}

/// The first and last line of the instruction of `text` that starts at
/// `line`, as BuildKit marks an error about it (`node.Location()`: its
/// continuation lines and heredoc bodies too; an unterminated heredoc runs
/// to the end of the file). `(line, line)` when no instruction starts
/// there.
pub fn instruction_lines(text: &str, line: usize) -> (usize, usize) {
    match crate::parser::split(text, "") {
        Ok(lines) => lines
            .nodes
            .iter()
            .find(|n| n.line == line)
            .map_or((line, line), |n| (line, n.end_line.max(line))),
        Err(crate::ParseError::Invalid {
            line: at, message, ..
        }) if at == line && message == "unterminated heredoc" => {
            (line, text.split_inclusive('\n').count().max(line))
        }
        Err(_) => (line, line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "FROM scratch as base\nENV A $FOO\nFROM base\ncopy a b\nMAINTAINER me\n";

    /// An instruction's lines, as BuildKit 73ed6825c marked them.
    #[test]
    fn an_instruction_spans_its_continuations_and_heredocs() {
        let file =
            "FROM busybox\nCOPY --chown=1 \\\n  --chown=2 a /p\nRUN <<EOF\necho\nEOF\nRUN x\n";
        assert_eq!(instruction_lines(file, 2), (2, 3));
        assert_eq!(instruction_lines(file, 4), (4, 6));
        assert_eq!(instruction_lines(file, 7), (7, 7));
        assert_eq!(instruction_lines(file, 3), (3, 3));
    }

    /// As buildkitd 73ed6825c printed them in a lint request's
    /// `result.txt`.
    #[test]
    fn lines_around_the_marked_one_as_buildkit_prints_them() {
        assert_eq!(
            snippet("Dockerfile", FILE, &[(1, 1)]),
            "Dockerfile:1\n--------------------\n   1 | >>> FROM scratch as base\n   2 |     ENV A $FOO\n   3 |     FROM base\n--------------------\n"
        );
        assert_eq!(
            snippet("Dockerfile", FILE, &[(4, 4)]),
            "Dockerfile:4\n--------------------\n   2 |     ENV A $FOO\n   3 |     FROM base\n   4 | >>> copy a b\n   5 |     MAINTAINER me\n   6 |     \n--------------------\n"
        );
        assert_eq!(
            snippet("Dockerfile", FILE, &[(5, 5)]),
            "Dockerfile:5\n--------------------\n   3 |     FROM base\n   4 |     copy a b\n   5 | >>> MAINTAINER me\n   6 |     \n--------------------\n"
        );
        assert_eq!(snippet("Dockerfile", FILE, &[]), "");
        // Several lines: two of context around them.
        let file = "FROM busybox\nRUN <<EOF\necho hi\n";
        assert_eq!(instruction_lines(file, 2), (2, 3));
        assert_eq!(
            snippet("Dockerfile", file, &[(2, 3)]),
            "Dockerfile:2\n--------------------\n   1 |     FROM busybox\n   2 | >>> RUN <<EOF\n   3 | >>> echo hi\n   4 |     \n--------------------\n"
        );
        assert_eq!(snippet("Dockerfile", FILE, &[(9, 9)]), "");
    }
}
