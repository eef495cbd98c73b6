//! Helpers that reproduce Go's and BuildKit's formatting and parsing rules
//! (`%q` quoting, `path.Clean`, `--chown`, sizes, signals, port ranges)
//! where kiln's output must match BuildKit's.

use super::*;

/// The platform part of a step's name in a multi-platform build, as
/// BuildKit's `prefixCommand` writes it: the stage's platform, then
/// `->ARCH` (same OS) or `->OS/ARCH` when the `TARGET*` arguments in the
/// step's environment `env` (`KEY=VALUE`) name another platform
/// (`formatTargetPlatform`); a FROM passes no environment.
pub(super) fn platform_prefix(stage: &kiln_solver::Platform, env: &[String]) -> String {
    let get = |k: &str| {
        env.iter()
            .find_map(|e| e.strip_prefix(k).and_then(|r| r.strip_prefix('=')))
    };
    let target = match get("TARGETPLATFORM") {
        Some(v) => kiln_solver::Platform::parse(v, stage).ok(),
        None => {
            let (os, arch, variant) = (get("TARGETOS"), get("TARGETARCH"), get("TARGETVARIANT"));
            if os.is_none() && arch.is_none() && variant.is_none() {
                None
            } else {
                let or =
                    |v: Option<&str>, d: &str| v.filter(|v| !v.is_empty()).unwrap_or(d).to_string();
                let mut spec = format!("{}/{}", or(os, &stage.os), or(arch, &stage.architecture));
                if let Some(v) = variant.filter(|v| !v.is_empty()) {
                    spec = format!("{spec}/{v}");
                }
                kiln_solver::Platform::parse(&spec, stage).ok()
            }
        }
    };
    let arrow = match target {
        Some(t) if t.os == stage.os && t.architecture != stage.architecture => {
            if t.variant.is_empty() {
                format!("->{}", t.architecture)
            } else {
                format!("->{}/{}", t.architecture, t.variant)
            }
        }
        Some(t) if t.os != stage.os => format!("->{t}"),
        _ => String::new(),
    };
    format!("{stage}{arrow}")
}

/// Go's `%q` of a `[]string`: `["a" "b"]`.
pub(super) fn go_quote_list(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", items.join(" "))
}

/// Go's `%q` of a string (also what `%#v` prints for one).
pub(crate) fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `path.Clean` for absolute slash paths.
pub(super) fn clean(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

/// `p` against directory `dir`, cleaned; a trailing `/` or `/.` of `p` is
/// kept (BuildKit's `NormalizePath(dir, p, keepSlash=true)`).
pub(super) fn resolve_keep_slash(dir: &str, p: &str) -> String {
    let p = if p.is_empty() || p == "." { "./" } else { p };
    let joined = if p.starts_with('/') {
        p.to_string()
    } else {
        format!("{dir}/{p}")
    };
    let mut out = clean(&joined);
    if p.ends_with('/') && !out.ends_with('/') {
        out.push('/');
    } else if p.ends_with("/.") {
        if out != "/" {
            out.push('/');
        }
        out.push('.');
    }
    out
}

/// `user[:group]` as an LLB chown, as BuildKit's `llb.WithUser` makes
/// it: `root` and what Go's `ParseInt(s, 10, 32)` reads are ids (a
/// negative one wraps to 32 bits, `-5` is 4294967291, as its marshalling
/// to `uint32` gives), an empty part is id 0, anything else (a number
/// past 32 bits too) a name.
pub(super) fn chown_opt(spec: &str) -> ChownOpt {
    let one = |s: &str| match s {
        "root" | "" => UserOpt::ById(0),
        _ => match s.parse::<i32>() {
            // The two's complement bits, as Go's uint32(int) conversion.
            Ok(id) => UserOpt::ById(id as u32),
            Err(_) => UserOpt::ByName(s.to_string()),
        },
    };
    match spec.split_once(':') {
        Some((u, "")) => ChownOpt {
            user: Some(one(u)),
            group: Some(UserOpt::ById(0)),
        },
        Some((u, g)) => ChownOpt {
            user: Some(one(u)),
            group: Some(one(g)),
        },
        None => ChownOpt {
            user: Some(one(spec)),
            group: None,
        },
    }
}

/// Go's `strconv.ParseBool` (what BuildKit reads mount flags with).
pub(super) fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `units.RAMInBytes` (one rule, in `kiln-types`).
pub use kiln_types::process::ram_in_bytes;

pub(super) fn valid_signal(s: &str) -> bool {
    const SIGNALS: &[&str] = &[
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
        "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
        "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
    ];
    if let Ok(n) = s.parse::<u32>() {
        return n > 0 && n < 65;
    }
    let upper = s.to_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if SIGNALS.contains(&name) {
        return true;
    }
    // RTMIN, RTMIN+3, RTMAX-2
    ["RTMIN", "RTMAX"].iter().any(|rt| {
        name.strip_prefix(rt).is_some_and(|tail| {
            tail.is_empty()
                || (tail.starts_with(['+', '-'])
                    && tail.len() > 1
                    && tail[1..].bytes().all(|b| b.is_ascii_digit()))
        })
    })
}

/// One `EXPOSE` word (`[ip:][host:]port[-end][/proto]`) as the
/// `port/proto` entries it exposes, with BuildKit's checks and messages
/// (`convert_expose.go`): the protocol must be tcp, udp or sctp (any case,
/// written lowercase), a range expands to its ports, an IP or host part is
/// checked and then dropped.
pub(super) fn parse_ports(raw: &str) -> std::result::Result<Vec<String>, String> {
    let parts: Vec<&str> = raw.split(':').collect();
    let n = parts.len();
    let (ip, host, container) = match n {
        1 => (String::new(), "", parts[0]),
        2 => (String::new(), parts[0], parts[1]),
        _ => (parts[..n - 2].join(":"), parts[n - 2], parts[n - 1]),
    };
    let (port, proto) = container.split_once('/').unwrap_or((container, ""));
    let bad = |why: String| format!("invalid port: {}: {why}", go_quote(raw));
    if port.is_empty() {
        return Err(bad("no port specified".into()));
    }
    let proto = match proto.to_lowercase().as_str() {
        "" => "tcp".to_string(),
        p @ ("tcp" | "udp" | "sctp") => p.to_string(),
        _ => return Err(bad(format!("invalid proto: {proto}"))),
    };
    if !ip.is_empty() {
        let bare = match ip.strip_prefix('[') {
            Some(r) => match r.strip_suffix(']') {
                Some(inner) => inner.to_string(),
                None => return Err(format!("invalid IP address {ip}: missing ']' in address")),
            },
            None => ip.clone(),
        };
        if bare.parse::<std::net::IpAddr>().is_err() {
            return Err(format!("invalid IP address: {bare}"));
        }
    }
    let (start, end) = port_range(port).ok_or_else(|| format!("invalid containerPort: {port}"))?;
    if !host.is_empty() {
        let (hs, he) = port_range(host).ok_or_else(|| format!("invalid hostPort: {host}"))?;
        if end - start != he - hs && end != start {
            return Err(format!(
                "invalid ranges specified for container and host Ports: {port} and {host}"
            ));
        }
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

/// `start[-end]` of ports 0-65535, as Go's `strconv.ParseInt` reads them.
fn port_range(s: &str) -> Option<(u32, u32)> {
    let num = |t: &str| -> Option<u32> {
        let v: i64 = t.parse().ok()?;
        u32::try_from(v).ok().filter(|p| *p <= 65535)
    };
    if s.is_empty() {
        return None;
    }
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let start = num(a)?;
    match b {
        None => Some((start, start)),
        Some(b) if b == a => Some((start, start)),
        Some(b) => {
            let end = num(b)?;
            (end >= start).then_some((start, end))
        }
    }
}
