//! "did you mean ...?" hints for mistyped instruction keywords, flags and
//! stage names. The rule is BuildKit's (`util/suggest`): the closest option
//! by Levenshtein distance, if that distance is below 3, and no hint when
//! the value is itself one of the options.

/// The option closest to `value`, or `None`. Case-insensitive matching
/// gives the hint in the case the user wrote (all upper or all lower).
pub fn search(value: &str, options: &[&str], case_sensitive: bool) -> Option<String> {
    let val = if case_sensitive {
        value.to_string()
    } else {
        value.to_lowercase()
    };
    let mut best: Option<String> = None;
    let mut min = 3;
    for opt in options {
        let opt = if case_sensitive {
            opt.to_string()
        } else {
            opt.to_lowercase()
        };
        if val == opt {
            return None;
        }
        let d = distance(&val, &opt);
        if d < min {
            min = d;
            best = Some(if case_sensitive {
                opt
            } else {
                match_case(&opt, value)
            });
        }
    }
    best
}

/// `message` with ` (did you mean X?)` appended when there is a hint.
pub fn wrap(message: String, value: &str, options: &[&str], case_sensitive: bool) -> String {
    match search(value, options, case_sensitive) {
        Some(m) => format!("{message} (did you mean {m}?)"),
        None => message,
    }
}

fn match_case(val: &str, orig: &str) -> String {
    if orig == orig.to_lowercase() {
        val.to_lowercase()
    } else if orig == orig.to_uppercase() {
        val.to_uppercase()
    } else {
        val.to_string()
    }
}

/// Levenshtein distance over characters.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j + 1] + 1).min(cur[j] + 1).min(prev[j] + cost);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closest_option_below_three_edits() {
        let opts = ["ENTRYPOINT", "RUN", "COPY"];
        assert_eq!(
            search("FNTRYPOINT", &opts, false).as_deref(),
            Some("ENTRYPOINT")
        );
        assert_eq!(
            search("fntrypoint", &opts, false).as_deref(),
            Some("entrypoint")
        );
        assert_eq!(search("CPY", &opts, false).as_deref(), Some("COPY"));
        assert_eq!(search("XYZZY", &opts, false), None);
        // An exact (case-insensitive) match is no typo.
        assert_eq!(search("run", &opts, false), None);
        assert_eq!(
            search("bulid", &["build", "test"], true).as_deref(),
            Some("build")
        );
        assert_eq!(search("Build", &["build"], true).as_deref(), Some("build"));
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("", "abc"), 3);
    }

    #[test]
    fn wrap_appends_hint() {
        assert_eq!(
            wrap(
                "unknown flag: --mont".into(),
                "mont",
                &["mount", "network"],
                true
            ),
            "unknown flag: --mont (did you mean mount?)"
        );
        assert_eq!(wrap("x".into(), "zzzz", &["mount"], true), "x");
    }
}
