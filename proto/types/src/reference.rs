//! Image reference normalization, as docker's `reference.ParseNormalizedNamed`
//! followed by `TagNameOnly`: `busybox` -> `docker.io/library/busybox:latest`,
//! and the parsed form, [`Reference`], that registry code addresses.
//!
//! It lives in this leaf crate because the Dockerfile frontend (names in
//! `FROM`), the exporters (names of results) and the registry client (where
//! to pull from and push to) must agree on one rule.

/// Why an image reference does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    /// The reference is empty.
    #[error("invalid reference format: empty reference")]
    Empty,
    /// The repository part has uppercase letters.
    #[error("invalid reference format: repository name ({repository}) must be lowercase")]
    Uppercase { repository: String },
    /// A bare 64-hex string, which docker reserves for image ids.
    #[error("invalid repository name ({reference}), cannot specify 64-byte hexadecimal strings")]
    HexName { reference: String },
    /// The repository path is longer than 255 characters.
    #[error("repository name must not be more than 255 characters")]
    TooLong,
    /// The digest after `@` has the reference grammar's shape but is not a
    /// valid digest; `reason` is go-digest's text (`invalid checksum digest
    /// length`, `invalid checksum digest format`, `unsupported digest
    /// algorithm`), which is all distribution/reference reports.
    #[error("{reason}")]
    Digest {
        digest: String,
        reason: &'static str,
    },
    /// Anything else that does not match the reference grammar.
    /// (distribution/reference's text: the reference is not repeated.)
    #[error("invalid reference format")]
    Invalid { reference: String },
}

const DEFAULT_DOMAIN: &str = "docker.io";

/// Normalizes `name` to `domain/path[:tag][@digest]`, adding `docker.io`,
/// `library/` and `:latest` the way docker does. A digest-pinned reference
/// keeps its digest and gets no `latest` tag.
pub fn normalize(name: &str) -> Result<String, RefError> {
    if name.is_empty() {
        return Err(RefError::Empty);
    }
    let invalid = || RefError::Invalid {
        reference: name.to_string(),
    };
    let (name_tag, digest) = match name.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (name, None),
    };
    if digest.is_some_and(|d| !digest_grammar(d)) {
        return Err(invalid());
    }
    if name_tag.is_empty() {
        return Err(invalid());
    }
    // A `:` after the last `/` separates the tag; one before it is a port.
    let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match name_tag[last_slash..].rfind(':') {
        Some(i) => (
            &name_tag[..last_slash + i],
            Some(&name_tag[last_slash + i + 1..]),
        ),
        None => (name_tag, None),
    };
    if let Some(t) = tag {
        if !valid_tag(t) {
            return Err(invalid());
        }
    }
    if repo.len() == 64
        && repo
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
    {
        return Err(RefError::HexName {
            reference: name.to_string(),
        });
    }
    let (mut domain, mut path) = match repo.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.to_lowercase() != first =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => (DEFAULT_DOMAIN.to_string(), repo.to_string()),
    };
    if domain == "index.docker.io" {
        domain = DEFAULT_DOMAIN.to_string();
    }
    if domain == DEFAULT_DOMAIN && !path.contains('/') {
        path = format!("library/{path}");
    }
    if path.to_lowercase() != path {
        return Err(RefError::Uppercase { repository: path });
    }
    if !valid_domain(&domain) || path.is_empty() || !path.split('/').all(valid_component) {
        return Err(invalid());
    }
    if path.len() > 255 {
        return Err(RefError::TooLong);
    }
    if let Some(d) = digest {
        if let Some(reason) = digest_error(d) {
            return Err(RefError::Digest {
                digest: d.to_string(),
                reason,
            });
        }
    }
    let mut out = format!("{domain}/{path}");
    match (tag, digest) {
        (Some(t), _) => {
            out.push(':');
            out.push_str(t);
        }
        (None, None) => out.push_str(":latest"),
        (None, Some(_)) => {}
    }
    if let Some(d) = digest {
        out.push('@');
        out.push_str(d);
    }
    Ok(out)
}

/// A normalized image reference split into its parts: `domain/path[:tag][@digest]`.
///
/// [`Reference::parse`] applies [`normalize`] first, so `busybox` has domain
/// `docker.io`, path `library/busybox` and tag `latest`; a digest-pinned
/// reference without a tag has no tag. `Display` prints the normalized
/// string.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// The registry host, with its port if any (`docker.io`, `127.0.0.1:5000`).
    pub domain: String,
    /// The repository path inside the registry (`library/busybox`).
    pub path: String,
    /// The tag, if the reference names one.
    pub tag: Option<String>,
    /// The digest (`sha256:<hex>`), if the reference pins one.
    pub digest: Option<String>,
}

impl Reference {
    /// Parses and normalizes `s` (see [`normalize`]).
    pub fn parse(s: &str) -> Result<Reference, RefError> {
        let normalized = normalize(s)?;
        let (rest, digest) = match normalized.split_once('@') {
            Some((r, d)) => (r, Some(d.to_string())),
            None => (normalized.as_str(), None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_string()),
            ),
            None => (rest, None),
        };
        let Some((domain, path)) = name.split_once('/') else {
            // `normalize` always emits `domain/path`.
            return Err(RefError::Invalid {
                reference: s.to_string(),
            });
        };
        Ok(Reference {
            domain: domain.to_string(),
            path: path.to_string(),
            tag,
            digest,
        })
    }

    /// `domain/path`, the repository without tag or digest.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The same repository pinned to `digest`, without a tag.
    pub fn with_digest(&self, digest: &str) -> Reference {
        Reference {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: None,
            digest: Some(digest.to_string()),
        }
    }

    /// The same repository with `tag` and no digest.
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            domain: self.domain.clone(),
            path: self.path.clone(),
            tag: Some(tag.to_string()),
            digest: None,
        }
    }

    /// What a registry's manifest endpoint is asked for: the digest when
    /// pinned (it wins over a tag, as in containerd), else the tag.
    pub fn object(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.domain, self.path)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Reference {
    type Err = RefError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Reference::parse(s)
    }
}

/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*`
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    loop {
        let start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

/// Host labels separated by dots, an optional `:port`; or `[ipv6]:port`.
fn valid_domain(d: &str) -> bool {
    let (host, port) = if let Some(rest) = d.strip_prefix('[') {
        let Some((ip, tail)) = rest.split_once(']') else {
            return false;
        };
        if ip.is_empty()
            || !ip
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return false;
        }
        let port = match tail {
            "" => None,
            t => match t.strip_prefix(':') {
                Some(p) => Some(p),
                None => return false,
            },
        };
        (None, port)
    } else {
        match d.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(d), None),
        }
    };
    if let Some(p) = port {
        if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            return false;
        }
    }
    host.is_none_or(|h| {
        h.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
    })
}

/// `[\w][\w.-]{0,127}`
fn valid_tag(t: &str) -> bool {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b.iter().all(|&x| word(x) || x == b'.' || x == b'-')
}

/// `algorithm:hex`; sha256 and sha512 must have their exact lowercase length.
/// distribution/reference's digest grammar inside a reference:
/// `[A-Za-z][A-Za-z0-9]*([-_+.][A-Za-z][A-Za-z0-9]*)*:[[:xdigit:]]{32,}`.
/// A digest outside it makes the whole reference `invalid reference format`.
fn digest_grammar(d: &str) -> bool {
    let Some((algo, hex)) = d.split_once(':') else {
        return false;
    };
    let component = |c: &str| {
        c.bytes().next().is_some_and(|b| b.is_ascii_alphabetic())
            && c.bytes().all(|b| b.is_ascii_alphanumeric())
    };
    algo.split(['-', '_', '+', '.']).all(component)
        && hex.len() >= 32
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// go-digest's validation of a digest that has the grammar's shape: the
/// algorithm must be one it knows, the hex its exact length in lower case.
fn digest_error(d: &str) -> Option<&'static str> {
    const FORMAT: &str = "invalid checksum digest format";
    let (algo, hex) = d.split_once(':')?;
    let len = match algo {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        // An unknown algorithm in go-digest's own grammar (lower case) is
        // unsupported; anything else is a malformed digest.
        _ if algo.bytes().any(|b| b.is_ascii_uppercase()) => return Some(FORMAT),
        _ => return Some("unsupported digest algorithm"),
    };
    if hex.len() != len {
        return Some("invalid checksum digest length");
    }
    if hex.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some(FORMAT);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `expect` is the normalized name, or `error: <message>`.
    fn check(input: &str, expect: &str) {
        let got = match normalize(input) {
            Ok(s) => s,
            Err(e) => format!("error: {e}"),
        };
        assert_eq!(got, expect, "normalize({input:?})");
    }

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn official_and_user_images() {
        check("busybox", "docker.io/library/busybox:latest");
        check("busybox:1.36", "docker.io/library/busybox:1.36");
        check("foo/bar", "docker.io/foo/bar:latest");
        check("docker.io/busybox", "docker.io/library/busybox:latest");
        check(
            "index.docker.io/library/alpine:3",
            "docker.io/library/alpine:3",
        );
        check("a/b/c:v1.0-rc_1", "docker.io/a/b/c:v1.0-rc_1");
    }

    #[test]
    fn registries_keep_their_host() {
        check("localhost:5000/x", "localhost:5000/x:latest");
        check("localhost/x:1", "localhost/x:1");
        check("ghcr.io/owner/img:tag", "ghcr.io/owner/img:tag");
        check(
            "registry.example.com:443/a/b",
            "registry.example.com:443/a/b:latest",
        );
        check("[::1]:5000/x", "[::1]:5000/x:latest");
    }

    #[test]
    fn digests_stay_pinned() {
        check(
            &format!("name@sha256:{HEX}"),
            &format!("docker.io/library/name@sha256:{HEX}"),
        );
        check(
            &format!("name:tag@sha256:{HEX}"),
            &format!("docker.io/library/name:tag@sha256:{HEX}"),
        );
        // distribution/reference's texts, as BuildKit prints them for
        // `FROM` (checked with BuildKit 73ed6825c).
        check("name@sha256:abc", "error: invalid reference format");
        let a40 = "a".repeat(40);
        check(
            &format!("name@sha256:{a40}"),
            "error: invalid checksum digest length",
        );
        check(
            &format!("name@sha256:{}", HEX.to_uppercase()),
            "error: invalid checksum digest format",
        );
        check(
            &format!("name@md5:{a40}"),
            "error: unsupported digest algorithm",
        );
        check(
            &format!("name@sha512:{HEX}{HEX}"),
            &format!("docker.io/library/name@sha512:{HEX}{HEX}"),
        );
    }

    fn parsed(s: &str) -> (String, String, Option<String>, Option<String>) {
        let r = Reference::parse(s).expect("parses");
        assert_eq!(r.to_string(), normalize(s).expect("normalizes"), "{s}");
        (r.domain, r.path, r.tag, r.digest)
    }

    #[test]
    fn references_split_into_parts() {
        let s = |x: &str| x.to_string();
        assert_eq!(
            parsed("busybox"),
            (
                s("docker.io"),
                s("library/busybox"),
                Some(s("latest")),
                None
            )
        );
        assert_eq!(
            parsed("127.0.0.1:5000/a/b:v1"),
            (s("127.0.0.1:5000"), s("a/b"), Some(s("v1")), None)
        );
        assert_eq!(
            parsed(&format!("localhost:5000/x@sha256:{HEX}")),
            (
                s("localhost:5000"),
                s("x"),
                None,
                Some(format!("sha256:{HEX}"))
            )
        );
        assert_eq!(
            parsed(&format!("[::1]:5000/x:t@sha256:{HEX}")),
            (
                s("[::1]:5000"),
                s("x"),
                Some(s("t")),
                Some(format!("sha256:{HEX}"))
            )
        );
        let r = Reference::parse("ghcr.io/o/i:t").expect("parses");
        assert_eq!(r.repository(), "ghcr.io/o/i");
        assert_eq!(r.object(), "t");
        let pinned = r.with_digest(&format!("sha256:{HEX}"));
        assert_eq!(pinned.to_string(), format!("ghcr.io/o/i@sha256:{HEX}"));
        assert_eq!(pinned.object(), format!("sha256:{HEX}"));
        assert_eq!(
            Reference::parse("Bad").map_err(|e| e.to_string()),
            Err(s(
                "invalid reference format: repository name (library/Bad) must be lowercase"
            ))
        );
    }

    #[test]
    fn invalid_references() {
        check("", "error: invalid reference format: empty reference");
        check(
            "Busybox",
            "error: invalid reference format: repository name (library/Busybox) must be lowercase",
        );
        check("foo//bar", "error: invalid reference format");
        check("foo:bad tag", "error: invalid reference format");
        check("-foo", "error: invalid reference format");
        check(
            &"a".repeat(300),
            "error: repository name must not be more than 255 characters",
        );
        check(
            HEX,
            &format!("error: invalid repository name ({HEX}), cannot specify 64-byte hexadecimal strings"),
        );
    }
}
