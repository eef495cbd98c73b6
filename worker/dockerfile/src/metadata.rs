//! The arguments of `HEALTHCHECK` and `ONBUILD`, and the Go duration
//! syntax `HEALTHCHECK` flags are written in (and its history text is
//! printed in), following BuildKit's `instructions/parse.go`.
//!
//! Functions here return BuildKit's message; the caller adds the file and
//! line.

use crate::convert::gocompat::go_quote;
use crate::parser::Flag;
use kiln_solver::Healthcheck;

/// The flags of HEALTHCHECK, in the order [`healthcheck`] reads them.
pub(crate) const HEALTHCHECK_FLAGS: [&str; 5] = [
    "interval",
    "timeout",
    "start-period",
    "start-interval",
    "retries",
];

/// Parses `HEALTHCHECK [flags] NONE|CMD ...`; `rest` is what follows the
/// flags.
pub fn healthcheck(flags: &[Flag], rest: &str) -> Result<Healthcheck, String> {
    let rest = rest.trim();
    if rest.is_empty() {
        return Err("HEALTHCHECK requires at least one argument".into());
    }
    let (typ, args) = match rest.find(char::is_whitespace) {
        Some(p) => (&rest[..p], rest[p..].trim_start()),
        None => (rest, ""),
    };
    let typ = typ.to_uppercase();
    if typ == "NONE" {
        // BuildKit reads no flags for NONE.
        if !args.is_empty() {
            return Err("HEALTHCHECK NONE takes no arguments".into());
        }
        return Ok(Healthcheck {
            test: vec![typ],
            ..Healthcheck::default()
        });
    }
    let mut values: [Option<&str>; 5] = [None; 5];
    for f in flags {
        let Some(i) = HEALTHCHECK_FLAGS.iter().position(|n| *n == f.name) else {
            return Err(format!("unknown flag: {}", f.name));
        };
        if values[i].is_some() {
            return Err(format!("duplicate flag specified: --{}", f.name));
        }
        match f.value.as_deref() {
            Some(v) => values[i] = Some(v),
            None => return Err(format!("missing a value on flag: --{}", f.name)),
        }
    }
    let test = match typ.as_str() {
        "CMD" => {
            let mut test = Vec::new();
            match json_strings(args) {
                Some(v) => {
                    test.push(typ.clone());
                    test.extend(v);
                }
                None if !args.is_empty() => {
                    test.push("CMD-SHELL".to_string());
                    test.push(args.to_string());
                }
                None => {}
            }
            if test.len() < 2 {
                return Err("Missing command after HEALTHCHECK CMD".into());
            }
            test
        }
        _ => {
            return Err(format!(
                "Unknown type {} in HEALTHCHECK (try CMD)",
                go_quote(&typ)
            ))
        }
    };
    let mut durations = [0i64; 4];
    for (i, d) in durations.iter_mut().enumerate() {
        *d = interval(HEALTHCHECK_FLAGS[i], values[i].unwrap_or_default())?;
    }
    let retries = match values[4] {
        None | Some("") => 0,
        Some(v) => {
            let n: i64 = v.parse().map_err(|_| {
                let digits = v.strip_prefix(['-', '+']).unwrap_or(v);
                let why = if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) {
                    "value out of range"
                } else {
                    "invalid syntax"
                };
                format!("strconv.ParseInt: parsing {}: {why}", go_quote(v))
            })?;
            if i32::try_from(n).is_err() {
                return Err(format!(
                    "strconv.ParseInt: parsing {}: value out of range",
                    go_quote(v)
                ));
            }
            if n < 0 {
                return Err(format!("--retries cannot be negative ({n})"));
            }
            n
        }
    };
    Ok(Healthcheck {
        test,
        interval: durations[0],
        timeout: durations[1],
        start_period: durations[2],
        start_interval: durations[3],
        retries,
    })
}

/// A `HEALTHCHECK` duration flag: empty or zero is 0 (inherit), anything
/// else must be at least 1ms.
fn interval(name: &str, value: &str) -> Result<i64, String> {
    if value.is_empty() {
        return Ok(0);
    }
    let d = parse_go_duration(value)?;
    if d == 0 {
        return Ok(0);
    }
    if d < 1_000_000 {
        return Err(format!(
            "Interval {} cannot be less than 1ms",
            go_quote(name)
        ));
    }
    Ok(d)
}

/// The history text BuildKit writes for a `HEALTHCHECK` (Go's `%+v` of its
/// config).
pub fn healthcheck_history(h: &Healthcheck) -> String {
    format!(
        "HEALTHCHECK {{Test:[{}] Interval:{} Timeout:{} StartPeriod:{} StartInterval:{} Retries:{}}}",
        h.test.join(" "),
        format_go_duration(h.interval),
        format_go_duration(h.timeout),
        format_go_duration(h.start_period),
        format_go_duration(h.start_interval),
        h.retries
    )
}

/// Checks an `ONBUILD` trigger and returns the text stored in the image's
/// `OnBuild`: the line after the keyword.
pub fn onbuild(rest: &str) -> Result<String, String> {
    let rest = rest.trim();
    let Some(first) = rest.split_whitespace().next() else {
        return Err("ONBUILD requires at least one argument".into());
    };
    let trigger = first.to_uppercase();
    match trigger.as_str() {
        "ONBUILD" => Err("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into()),
        "MAINTAINER" | "FROM" => Err(format!("{trigger} isn't allowed as an ONBUILD trigger")),
        _ => Ok(rest.to_string()),
    }
}

fn json_strings(s: &str) -> Option<Vec<String>> {
    let t = s.trim();
    if !t.starts_with('[') || !t.ends_with(']') {
        return None;
    }
    serde_json::from_str(t).ok()
}

/// Go's duration units in nanoseconds.
const UNITS: [(&str, u128); 8] = [
    ("ns", 1),
    ("us", 1_000),
    ("\u{b5}s", 1_000),
    ("\u{3bc}s", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Go's `time.ParseDuration`, in nanoseconds, with its error texts.
pub fn parse_go_duration(s: &str) -> Result<i64, String> {
    let invalid = || format!("time: invalid duration {}", go_quote(s));
    let mut rest = s;
    let mut neg = false;
    if let Some(r) = rest.strip_prefix('-') {
        neg = true;
        rest = r;
    } else if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    }
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_part = "";
        if let Some(r) = rest.strip_prefix('.') {
            let n = r.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &r[..n];
            rest = &r[n..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            // No digits at all (".s", "s").
            return Err(invalid());
        }
        let unit_len = rest
            .char_indices()
            .find(|(_, c)| *c == '.' || c.is_ascii_digit())
            .map_or(rest.len(), |(i, _)| i);
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        if unit.is_empty() {
            return Err(format!("time: missing unit in duration {}", go_quote(s)));
        }
        let Some(&(_, scale)) = UNITS.iter().find(|(u, _)| *u == unit) else {
            return Err(format!(
                "time: unknown unit {} in duration {}",
                go_quote(unit),
                go_quote(s)
            ));
        };
        let whole: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| invalid())?
        };
        let mut v = whole.checked_mul(scale).ok_or_else(invalid)?;
        if !frac_part.is_empty() {
            // Go keeps the fraction's leading digits and truncates.
            let digits = &frac_part[..frac_part.len().min(30)];
            let f: u128 = digits.parse().map_err(|_| invalid())?;
            let div = 10u128.pow(digits.len() as u32);
            v += f * scale / div;
        }
        total = total.checked_add(v).ok_or_else(invalid)?;
        if total > i64::MAX as u128 + u128::from(neg) {
            return Err(invalid());
        }
    }
    let total = i128::try_from(total).map_err(|_| invalid())?;
    let signed = if neg { -total } else { total };
    i64::try_from(signed).map_err(|_| invalid())
}

/// Go's `time.Duration.String()`.
pub fn format_go_duration(d: i64) -> String {
    if d == 0 {
        return "0s".into();
    }
    let neg = d < 0;
    let u = d.unsigned_abs();
    let mut out = String::new();
    if u < 1_000_000_000 {
        let (unit, scale) = if u < 1_000 {
            ("ns", 1)
        } else if u < 1_000_000 {
            ("\u{b5}s", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        out.push_str(&fraction(u, scale));
        out.push_str(unit);
    } else {
        let h = u / 3_600_000_000_000;
        let m = (u / 60_000_000_000) % 60;
        let s = u % 60_000_000_000;
        if h > 0 {
            out.push_str(&format!("{h}h"));
        }
        if h > 0 || m > 0 {
            out.push_str(&format!("{m}m"));
        }
        out.push_str(&fraction(s, 1_000_000_000));
        out.push('s');
    }
    if neg {
        out.insert(0, '-');
    }
    out
}

/// `v / scale` with the fraction's trailing zeros (and a bare dot) left
/// out.
fn fraction(v: u64, scale: u64) -> String {
    let whole = v / scale;
    let frac = v % scale;
    if frac == 0 {
        return whole.to_string();
    }
    let width = scale.ilog10() as usize;
    let f = format!("{frac:0width$}");
    format!("{whole}.{}", f.trim_end_matches('0'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(list: &[(&str, Option<&str>)]) -> Vec<Flag> {
        list.iter()
            .map(|(n, v)| Flag {
                name: n.to_string(),
                value: v.map(String::from),
            })
            .collect()
    }

    #[test]
    fn go_durations_parse_as_go_does() {
        let ok = [
            ("0", 0),
            ("1s", 1_000_000_000),
            ("1.5s", 1_500_000_000),
            ("100ms", 100_000_000),
            ("1h30m", 5_400_000_000_000),
            ("2us", 2_000),
            ("2\u{b5}s", 2_000),
            ("3ns", 3),
            (".5m", 30_000_000_000),
            ("1m0.25s", 60_250_000_000),
            ("-2s", -2_000_000_000),
        ];
        for (s, want) in ok {
            assert_eq!(parse_go_duration(s), Ok(want), "{s}");
        }
        assert_eq!(
            parse_go_duration("abc"),
            Err("time: invalid duration \"abc\"".to_string())
        );
        assert_eq!(
            parse_go_duration("5"),
            Err("time: missing unit in duration \"5\"".to_string())
        );
        assert_eq!(
            parse_go_duration("5x"),
            Err("time: unknown unit \"x\" in duration \"5x\"".to_string())
        );
        assert_eq!(
            parse_go_duration(""),
            Err("time: invalid duration \"\"".to_string())
        );
        assert!(parse_go_duration("99999999999h").is_err());
    }

    #[test]
    fn go_durations_print_as_go_does() {
        let cases = [
            (0, "0s"),
            (1, "1ns"),
            (1_500, "1.5\u{b5}s"),
            (100_000_000, "100ms"),
            (1_000_000_000, "1s"),
            (1_500_000_000, "1.5s"),
            (90_000_000_000, "1m30s"),
            (3_600_000_000_000, "1h0m0s"),
            (5_400_000_000_000, "1h30m0s"),
            (-2_000_000_000, "-2s"),
        ];
        for (d, want) in cases {
            assert_eq!(format_go_duration(d), want, "{d}");
        }
    }

    #[test]
    fn healthcheck_forms() {
        let h = healthcheck(
            &flags(&[
                ("interval", Some("30s")),
                ("timeout", Some("5s")),
                ("start-period", Some("1m")),
                ("start-interval", Some("100ms")),
                ("retries", Some("3")),
            ]),
            "CMD curl -f http://localhost/ || exit 1",
        )
        .expect("valid");
        assert_eq!(
            h,
            Healthcheck {
                test: vec![
                    "CMD-SHELL".into(),
                    "curl -f http://localhost/ || exit 1".into()
                ],
                interval: 30_000_000_000,
                timeout: 5_000_000_000,
                start_period: 60_000_000_000,
                start_interval: 100_000_000,
                retries: 3,
            }
        );
        assert_eq!(
            healthcheck_history(&h),
            "HEALTHCHECK {Test:[CMD-SHELL curl -f http://localhost/ || exit 1] Interval:30s Timeout:5s StartPeriod:1m0s StartInterval:100ms Retries:3}"
        );
        let exec = healthcheck(&[], r#"cmd ["/bin/check", "-q"]"#).expect("valid");
        assert_eq!(exec.test, ["CMD", "/bin/check", "-q"]);
        assert_eq!(exec.interval, 0);
        let none = healthcheck(&[], "none").expect("valid");
        assert_eq!(none.test, ["NONE"]);
        assert_eq!(
            healthcheck_history(&none),
            "HEALTHCHECK {Test:[NONE] Interval:0s Timeout:0s StartPeriod:0s StartInterval:0s Retries:0}"
        );
    }

    #[test]
    fn healthcheck_errors_are_buildkits() {
        let err = |f: &[(&str, Option<&str>)], rest: &str| {
            healthcheck(&flags(f), rest).expect_err("must fail")
        };
        assert_eq!(err(&[], ""), "HEALTHCHECK requires at least one argument");
        assert_eq!(err(&[], "NONE x"), "HEALTHCHECK NONE takes no arguments");
        assert_eq!(err(&[], "CMD"), "Missing command after HEALTHCHECK CMD");
        assert_eq!(err(&[], "CMD []"), "Missing command after HEALTHCHECK CMD");
        assert_eq!(
            err(&[], "RUN true"),
            "Unknown type \"RUN\" in HEALTHCHECK (try CMD)"
        );
        assert_eq!(
            err(&[("interval", Some("10us"))], "CMD true"),
            "Interval \"interval\" cannot be less than 1ms"
        );
        assert_eq!(
            err(&[("timeout", Some("-1s"))], "CMD true"),
            "Interval \"timeout\" cannot be less than 1ms"
        );
        assert_eq!(
            err(&[("interval", Some("5"))], "CMD true"),
            "time: missing unit in duration \"5\""
        );
        assert_eq!(
            err(&[("retries", Some("-1"))], "CMD true"),
            "--retries cannot be negative (-1)"
        );
        assert_eq!(
            err(&[("retries", Some("x"))], "CMD true"),
            "strconv.ParseInt: parsing \"x\": invalid syntax"
        );
        assert_eq!(
            err(&[("retries", Some("99999999999"))], "CMD true"),
            "strconv.ParseInt: parsing \"99999999999\": value out of range"
        );
        assert_eq!(err(&[("foo", Some("1"))], "CMD true"), "unknown flag: foo");
        assert_eq!(
            err(&[("interval", None)], "CMD true"),
            "missing a value on flag: --interval"
        );
        assert_eq!(
            err(
                &[("retries", Some("1")), ("retries", Some("2"))],
                "CMD true"
            ),
            "duplicate flag specified: --retries"
        );
        // Zero means inherit and is allowed.
        let h = healthcheck(&flags(&[("interval", Some("0s"))]), "CMD true").expect("valid");
        assert_eq!(h.interval, 0);
    }

    #[test]
    fn onbuild_triggers() {
        assert_eq!(onbuild("RUN echo hi"), Ok("RUN echo hi".to_string()));
        assert_eq!(onbuild("run  a"), Ok("run  a".to_string()));
        assert_eq!(
            onbuild("onbuild RUN x"),
            Err("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".to_string())
        );
        assert_eq!(
            onbuild("from busybox"),
            Err("FROM isn't allowed as an ONBUILD trigger".to_string())
        );
        assert_eq!(
            onbuild("MAINTAINER me"),
            Err("MAINTAINER isn't allowed as an ONBUILD trigger".to_string())
        );
        assert_eq!(
            onbuild(""),
            Err("ONBUILD requires at least one argument".to_string())
        );
    }
}
