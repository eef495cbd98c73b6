//! Platforms (`os/arch[/variant]`) as ops name them: what an image source
//! picks from an index and what an exec runs as. The parse and normalize
//! rules are containerd's (`platforms.Parse`/`Normalize`), which BuildKit
//! and its clients use, so `linux/aarch64`, `arm64` and `linux/arm64/v8`
//! are one platform.

use std::fmt;

/// One OCI platform, normalized.
#[derive(
    Clone,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    /// Empty when the architecture has none.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
}

/// A platform that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid platform {value:?}: {reason}")]
pub struct PlatformError {
    pub value: String,
    pub reason: &'static str,
}

/// OS names containerd knows (a one-word platform naming one of these is
/// an OS, anything else an architecture).
const KNOWN_OS: &[&str] = &[
    "aix",
    "android",
    "darwin",
    "dragonfly",
    "freebsd",
    "hurd",
    "illumos",
    "ios",
    "js",
    "linux",
    "nacl",
    "netbsd",
    "openbsd",
    "plan9",
    "solaris",
    "wasip1",
    "windows",
    "zos",
];

impl Platform {
    /// A platform from its parts, normalized.
    pub fn new(os: &str, architecture: &str, variant: &str) -> Platform {
        let (architecture, variant) = normalize_arch(architecture, variant);
        Platform {
            os: normalize_os(os),
            architecture,
            variant,
        }
    }

    /// Reads `os/arch[/variant]`, `arch` (on `default`'s OS) or `os` (with
    /// `default`'s architecture), as containerd's `platforms.Parse` does
    /// with `default` as the running platform.
    pub fn parse(value: &str, default: &Platform) -> Result<Platform, PlatformError> {
        let bad = |reason| PlatformError {
            value: value.to_string(),
            reason,
        };
        let v = value.trim();
        if v.is_empty() {
            return Err(bad("empty"));
        }
        let parts: Vec<&str> = v.split('/').collect();
        if parts.iter().any(|p| {
            p.is_empty()
                || !p
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        }) {
            return Err(bad("expected os/arch[/variant]"));
        }
        match parts.as_slice() {
            [one] => {
                let lower = one.to_ascii_lowercase();
                if KNOWN_OS.contains(&lower.as_str()) || lower == "macos" {
                    Ok(Platform {
                        os: normalize_os(&lower),
                        ..default.clone()
                    })
                } else {
                    Ok(Platform::new(&default.os, one, ""))
                }
            }
            [os, arch] => Ok(Platform::new(os, arch, "")),
            [os, arch, variant] => Ok(Platform::new(os, arch, variant)),
            _ => Err(bad("expected os/arch[/variant]")),
        }
    }

    /// Reads a comma-separated list of platforms (`--platform a,b`), each
    /// once, in order.
    pub fn parse_list(value: &str, default: &Platform) -> Result<Vec<Platform>, PlatformError> {
        let mut out: Vec<Platform> = Vec::new();
        for p in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let p = Platform::parse(p, default)?;
            if !out.contains(&p) {
                out.push(p);
            }
        }
        Ok(out)
    }

    /// `os/arch`, without the variant.
    pub fn short(&self) -> String {
        format!("{}/{}", self.os, self.architecture)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.variant.is_empty() {
            write!(f, "{}/{}", self.os, self.architecture)
        } else {
            write!(f, "{}/{}/{}", self.os, self.architecture, self.variant)
        }
    }
}

fn normalize_os(os: &str) -> String {
    match os.to_ascii_lowercase().as_str() {
        "macos" => "darwin".into(),
        o => o.into(),
    }
}

fn normalize_arch(arch: &str, variant: &str) -> (String, String) {
    let arch = arch.to_ascii_lowercase();
    let variant = variant.to_ascii_lowercase();
    let (a, v) = match (arch.as_str(), variant.as_str()) {
        ("i386", _) => ("386", ""),
        ("x86_64" | "x86-64" | "amd64", "v1") => ("amd64", ""),
        ("x86_64" | "x86-64" | "amd64", v) => ("amd64", v),
        ("aarch64" | "arm64", "8" | "v8" | "v8.0") => ("arm64", ""),
        ("aarch64" | "arm64", "9" | "9.0" | "v9.0") => ("arm64", "v9"),
        ("aarch64" | "arm64", v) => ("arm64", v),
        ("armhf", _) => ("arm", "v7"),
        ("armel", _) => ("arm", "v6"),
        ("arm", "" | "7") => ("arm", "v7"),
        ("arm", "5") => ("arm", "v5"),
        ("arm", "6") => ("arm", "v6"),
        ("arm", "8") => ("arm", "v8"),
        (a, v) => (a, v),
    };
    (a.to_string(), v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> Platform {
        Platform::new("linux", "amd64", "")
    }

    #[test]
    fn parses_as_containerd() {
        for (text, want) in [
            ("linux/arm64", "linux/arm64"),
            ("linux/aarch64", "linux/arm64"),
            ("linux/arm64/v8", "linux/arm64"),
            ("arm64", "linux/arm64"),
            ("linux/arm", "linux/arm/v7"),
            ("linux/armhf", "linux/arm/v7"),
            ("linux/arm/6", "linux/arm/v6"),
            ("linux/x86_64", "linux/amd64"),
            ("LINUX/AMD64", "linux/amd64"),
            ("linux", "linux/amd64"),
            ("linux/riscv64", "linux/riscv64"),
            ("windows/amd64", "windows/amd64"),
        ] {
            assert_eq!(
                Platform::parse(text, &host()).expect(text).to_string(),
                want,
                "{text}"
            );
        }
        for bad in ["", "linux/", "a/b/c/d", "linux/arm 64", "/amd64"] {
            assert!(Platform::parse(bad, &host()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lists_keep_order_without_repeats() {
        let l =
            Platform::parse_list("linux/amd64, linux/arm64,linux/x86_64", &host()).expect("list");
        let s: Vec<String> = l.iter().map(ToString::to_string).collect();
        assert_eq!(s, ["linux/amd64", "linux/arm64"]);
    }
}
