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

/// A platform that cannot be read; the message is containerd's
/// (`platforms.Parse`), which BuildKit prints after its own context.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    /// The first component is not an OS name.
    #[error("{part:?} is an invalid OS component of {specifier:?}: OSAndVersion specifier component must match {OS_RE:?}: invalid argument")]
    InvalidOs { specifier: String, part: String },
    /// A later component has a character outside `[A-Za-z0-9_.-]`, or is
    /// empty.
    #[error("{part:?} is an invalid component of {specifier:?}: platform specifier component must match {COMPONENT_RE:?}: invalid argument")]
    InvalidComponent { specifier: String, part: String },
    /// One word that is neither a known OS nor a known architecture.
    #[error("{specifier:?}: unknown operating system or architecture: invalid argument")]
    Unknown { specifier: String },
    /// More than `os/arch/variant`.
    #[error("{specifier:?}: cannot parse platform specifier: invalid argument")]
    TooLong { specifier: String },
    /// A `*` in the specifier.
    #[error("{specifier:?}: wildcards not yet supported: invalid argument")]
    Wildcard { specifier: String },
    /// `os(version+feature)`: valid for containerd, not read by kiln.
    #[error(
        "{specifier:?}: an OS version or OS features (os(version+feature)) is not supported yet"
    )]
    OsOptions { specifier: String },
}

impl PlatformError {
    /// The text that did not parse.
    pub fn specifier(&self) -> &str {
        match self {
            PlatformError::InvalidOs { specifier, .. }
            | PlatformError::InvalidComponent { specifier, .. }
            | PlatformError::Unknown { specifier }
            | PlatformError::TooLong { specifier }
            | PlatformError::Wildcard { specifier }
            | PlatformError::OsOptions { specifier } => specifier,
        }
    }
}

/// The patterns containerd names in its errors.
const OS_RE: &str = r"^([A-Za-z0-9_-]+)(?:\(([A-Za-z0-9_.%-]*)((?:\+[A-Za-z0-9_.%-]+)*)\))?$";
const COMPONENT_RE: &str = "^[A-Za-z0-9_.-]+$";

/// Architectures containerd knows (a one-word platform naming neither one
/// of these nor a [`KNOWN_OS`] is an error).
const KNOWN_ARCH: &[&str] = &[
    "386",
    "amd64",
    "amd64p32",
    "arm",
    "armbe",
    "arm64",
    "arm64be",
    "ppc64",
    "ppc64le",
    "loong64",
    "mips",
    "mipsle",
    "mips64",
    "mips64le",
    "mips64p32",
    "mips64p32le",
    "ppc",
    "riscv",
    "riscv64",
    "s390",
    "s390x",
    "sparc",
    "sparc64",
    "wasm",
];

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
        let specifier = || value.to_string();
        if value.contains('*') {
            return Err(PlatformError::Wildcard {
                specifier: specifier(),
            });
        }
        let parts: Vec<&str> = value.splitn(4, '/').collect();
        let component = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
        };
        for (i, part) in parts.iter().enumerate() {
            if i == 0 {
                if !os_component(part) {
                    return Err(PlatformError::InvalidOs {
                        specifier: specifier(),
                        part: part.to_string(),
                    });
                }
                if part.contains('(') {
                    return Err(PlatformError::OsOptions {
                        specifier: specifier(),
                    });
                }
            } else if !component(part) {
                return Err(PlatformError::InvalidComponent {
                    specifier: specifier(),
                    part: part.to_string(),
                });
            }
        }
        match parts.as_slice() {
            [one] => {
                let os = normalize_os(one);
                if KNOWN_OS.contains(&os.as_str()) {
                    return Ok(Platform {
                        os,
                        ..default.clone()
                    });
                }
                let p = Platform::new(&default.os, one, "");
                if KNOWN_ARCH.contains(&p.architecture.as_str()) {
                    Ok(p)
                } else {
                    Err(PlatformError::Unknown {
                        specifier: specifier(),
                    })
                }
            }
            [os, arch] => Ok(Platform::new(os, arch, "")),
            [os, arch, variant] => Ok(Platform::new(os, arch, variant)),
            _ => Err(PlatformError::TooLong {
                specifier: specifier(),
            }),
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

/// Whether `part` matches containerd's OS component pattern: a name,
/// optionally followed by `(version+feature...)`.
fn os_component(part: &str) -> bool {
    let name_char = |c: char| c.is_ascii_alphanumeric() || "_-".contains(c);
    let option_char = |c: char| c.is_ascii_alphanumeric() || "_.%-".contains(c);
    let (name, options) = match part.split_once('(') {
        Some((name, rest)) => match rest.strip_suffix(')') {
            Some(options) => (name, Some(options)),
            None => return false,
        },
        None => (part, None),
    };
    if name.is_empty() || !name.chars().all(name_char) {
        return false;
    }
    let Some(options) = options else {
        return true;
    };
    let mut pieces = options.split('+');
    let version = pieces.next().unwrap_or_default();
    version.chars().all(option_char) && pieces.all(|f| !f.is_empty() && f.chars().all(option_char))
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
        for bad in ["", "linux/", "a/b/c/d", "linux/arm 64", "/amd64", "amd65"] {
            assert!(Platform::parse(bad, &host()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn errors_in_containerds_words() {
        let err = |text: &str| Platform::parse(text, &host()).expect_err(text).to_string();
        assert_eq!(
            err("linux/"),
            r#""" is an invalid component of "linux/": platform specifier component must match "^[A-Za-z0-9_.-]+$": invalid argument"#
        );
        assert_eq!(
            err("/amd64"),
            r#""" is an invalid OS component of "/amd64": OSAndVersion specifier component must match "^([A-Za-z0-9_-]+)(?:\\(([A-Za-z0-9_.%-]*)((?:\\+[A-Za-z0-9_.%-]+)*)\\))?$": invalid argument"#
        );
        assert_eq!(
            err("amd65"),
            r#""amd65": unknown operating system or architecture: invalid argument"#
        );
        assert_eq!(
            err("linux/amd64/v1/x"),
            r#""linux/amd64/v1/x": cannot parse platform specifier: invalid argument"#
        );
        assert_eq!(
            err("linux/*"),
            r#""linux/*": wildcards not yet supported: invalid argument"#
        );
        // containerd's OS version syntax parses; kiln does not read it.
        assert_eq!(
            err("windows(10.0.17763+win32k)/amd64"),
            r#""windows(10.0.17763+win32k)/amd64": an OS version or OS features (os(version+feature)) is not supported yet"#
        );
        assert!(matches!(
            Platform::parse("windows(10/amd64", &host()),
            Err(PlatformError::InvalidOs { .. })
        ));
        assert_eq!(
            Platform::parse("linux/", &host())
                .expect_err("bad")
                .specifier(),
            "linux/"
        );
    }

    #[test]
    fn lists_keep_order_without_repeats() {
        let l =
            Platform::parse_list("linux/amd64, linux/arm64,linux/x86_64", &host()).expect("list");
        let s: Vec<String> = l.iter().map(ToString::to_string).collect();
        assert_eq!(s, ["linux/amd64", "linux/arm64"]);
    }
}
