//! Remote sources of the graph: git repositories and HTTP(S) files, as
//! LLB names them (`git://host/path#ref:subdir` with `git.*` attributes,
//! `https://…` with `http.*` attributes), and the rule that tells a git
//! reference written by a user (`ADD <src>`, a build context) from a URL
//! or a local path.
//!
//! One place for both directions: the Dockerfile frontend builds a
//! [`SourceOp`] from a [`GitSource`] or [`HttpSource`], the LLB translation
//! and the engine read one back with [`GitSource::from_op`] /
//! [`HttpSource::from_op`], which refuse any attribute they do not know.

use crate::graph::SourceOp;
use std::collections::BTreeMap;

/// What is wrong with a git reference or a remote source op. The message
/// is BuildKit's where it has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("{0}")]
    Invalid(String),
    /// An attribute or option kiln does not handle.
    #[error("{0} is not supported yet")]
    Unsupported(String),
}

type Result<T> = std::result::Result<T, SourceError>;

fn invalid(m: impl Into<String>) -> SourceError {
    SourceError::Invalid(m.into())
}

/// The transport of a git remote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GitScheme {
    Http,
    Https,
    Ssh,
    Git,
}

/// A git reference as a user writes it, split (BuildKit's
/// `dfgitutil.GitRef`): `https://host/repo.git#ref:subdir`,
/// `git://host/repo?ref=v1&subdir=dir&keep-git-dir=1`, `git@host:repo`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GitRef {
    /// The remote without fragment and query.
    pub remote: String,
    /// Host and path (`host/path`), what the LLB identifier holds.
    pub host_path: String,
    pub scheme: Option<GitScheme>,
    /// A branch, tag (`refs/tags/…` from `?tag=`) or commit; empty is the
    /// remote's HEAD.
    pub reference: String,
    pub subdir: String,
    /// `?checksum=` / `?commit=`: the commit the ref must resolve to.
    pub checksum: String,
    pub keep_git_dir: Option<bool>,
    pub submodules: Option<bool>,
    /// `?mtime=checkout|commit`.
    pub mtime: String,
    pub fetch_by_commit: bool,
}

fn split_once_opt(s: &str, c: char) -> (&str, Option<&str>) {
    match s.split_once(c) {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    }
}

/// `path.Join("/", p)` without the leading slash: the subdir rule.
fn clean_subdir(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    out.join("/")
}

fn percent_decode(s: &str) -> Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s
                    .get(i + 1..i + 3)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| invalid(format!("invalid URL escape in {s:?}")))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| invalid(format!("invalid URL escape in {s:?}")))
}

fn parse_bool(v: Option<&str>, what: &str) -> Result<bool> {
    match v {
        None => Ok(true),
        Some("1" | "t" | "T" | "true" | "TRUE" | "True") => Ok(true),
        Some("0" | "f" | "F" | "false" | "FALSE" | "False") => Ok(false),
        Some(v) => Err(invalid(format!("invalid {what} value: {v:?}"))),
    }
}

/// Whether `s` starts with a scheme (`[a-zA-Z0-9]+://`); returns it.
fn scheme_of(s: &str) -> Option<&str> {
    let (scheme, _) = s.split_once("://")?;
    (!scheme.is_empty() && scheme.bytes().all(|c| c.is_ascii_alphanumeric())).then_some(scheme)
}

/// `user@host:path`, git's scp-like ssh form.
fn scp_like(s: &str) -> Option<(&str, &str)> {
    let (user, rest) = s.split_once('@')?;
    let (host, path) = rest.split_once(':')?;
    let user_ok = !user.is_empty()
        && user
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.');
    (user_ok && host_ok).then_some((host, path))
}

impl GitRef {
    /// Parses `s` when it is a git reference; `Ok(None)` when it is
    /// something else (a local path, a plain URL, `github.com/…`, which
    /// BuildKit no longer takes as git for `ADD`); an error when it is one
    /// with a bad query.
    pub fn parse(s: &str) -> Result<Option<GitRef>> {
        if s.starts_with("./") || s.starts_with("../") || s.starts_with("github.com/") {
            return Ok(None);
        }
        let (scheme, host, path, query, fragment, remote) = if let Some(scheme) = scheme_of(s) {
            let scheme = match scheme.to_ascii_lowercase().as_str() {
                "http" => GitScheme::Http,
                "https" => GitScheme::Https,
                "ssh" => GitScheme::Ssh,
                "git" => GitScheme::Git,
                _ => return Ok(None),
            };
            let (rest, fragment) = split_once_opt(s, '#');
            let (rest, query) = split_once_opt(rest, '?');
            let after = &rest[rest.find("://").map(|i| i + 3).unwrap_or(0)..];
            let (authority, path) = match after.find('/') {
                Some(i) => (&after[..i], &after[i..]),
                None => (after, ""),
            };
            let host = authority.rsplit('@').next().unwrap_or(authority);
            if matches!(scheme, GitScheme::Http | GitScheme::Https) && !path.ends_with(".git") {
                return Ok(None);
            }
            (
                scheme,
                host.to_string(),
                path.to_string(),
                query,
                fragment,
                rest.to_string(),
            )
        } else if let Some((host, path)) = scp_like(s) {
            let (path, fragment) = split_once_opt(path, '#');
            let (path, query) = split_once_opt(path, '?');
            let remote = s[..s.len()
                - path.len()
                - query.map(|q| q.len() + 1).unwrap_or(0)
                - fragment.map(|f| f.len() + 1).unwrap_or(0)]
                .to_string()
                + path;
            (
                GitScheme::Ssh,
                host.to_string(),
                path.to_string(),
                query,
                fragment,
                remote,
            )
        } else {
            return Ok(None);
        };
        let mut r = GitRef {
            host_path: format!("{host}/{}", clean_subdir(&path)),
            remote,
            scheme: Some(scheme),
            ..GitRef::default()
        };
        if let Some(f) = fragment.filter(|f| !f.is_empty()) {
            let (reference, subdir) = split_once_opt(f, ':');
            r.reference = reference.to_string();
            r.subdir = clean_subdir(subdir.unwrap_or(""));
        }
        if let Some(q) = query.filter(|q| !q.is_empty()) {
            r.load_query(q)?;
        }
        Ok(Some(r))
    }

    fn load_query(&mut self, q: &str) -> Result<()> {
        let mut seen: BTreeMap<String, Option<String>> = BTreeMap::new();
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = split_once_opt(pair, '=');
            let k = percent_decode(k)?;
            let v = v.map(percent_decode).transpose()?;
            if seen.insert(k.clone(), v).is_some() {
                return Err(invalid(format!("query {k:?} has multiple values")));
            }
        }
        let (mut tag, mut branch) = (String::new(), String::new());
        for (k, v) in seen {
            let v = v.filter(|v| !v.is_empty());
            let value = || -> Result<String> {
                v.clone()
                    .ok_or_else(|| invalid(format!("query {k:?} has no value")))
            };
            match k.as_str() {
                "ref" => {
                    let v = value()?;
                    if !self.reference.is_empty() && self.reference != v {
                        return Err(invalid(format!(
                            "ref conflicts: {:?} vs {v:?}",
                            self.reference
                        )));
                    }
                    self.reference = v;
                }
                "tag" => tag = value()?,
                "branch" => branch = value()?,
                "subdir" => {
                    let v = value()?;
                    if !self.subdir.is_empty() && self.subdir != v {
                        return Err(invalid(format!(
                            "subdir conflicts: {:?} vs {v:?}",
                            self.subdir
                        )));
                    }
                    self.subdir = clean_subdir(&v);
                }
                "checksum" | "commit" => self.checksum = value()?,
                "keep-git-dir" => {
                    self.keep_git_dir = Some(parse_bool(v.as_deref(), "keep-git-dir")?)
                }
                "submodules" => self.submodules = Some(parse_bool(v.as_deref(), "submodules")?),
                "fetch-by-commit" => {
                    self.fetch_by_commit = parse_bool(v.as_deref(), "fetch-by-commit")?
                }
                "mtime" => match value()?.as_str() {
                    m @ ("checkout" | "commit") => self.mtime = m.to_string(),
                    m => {
                        return Err(invalid(format!(
                            "invalid mtime value: {m:?} (must be \"checkout\" or \"commit\")"
                        )))
                    }
                },
                _ => return Err(invalid(format!("unexpected query {k:?}"))),
            }
        }
        if !tag.is_empty() {
            if !tag.starts_with("refs/tags/") {
                tag = format!("refs/tags/{tag}");
            }
            if !self.reference.is_empty() && self.reference != tag {
                return Err(invalid(format!(
                    "ref conflicts: {:?} vs {tag:?}",
                    self.reference
                )));
            }
            self.reference = tag.clone();
        }
        if !branch.is_empty() {
            if !tag.is_empty() {
                return Err(invalid("branch conflicts with tag"));
            }
            if !branch.starts_with("refs/heads/") {
                branch = format!("refs/heads/{branch}");
            }
            if !self.reference.is_empty() && self.reference != branch {
                return Err(invalid(format!(
                    "ref conflicts: {:?} vs {branch:?}",
                    self.reference
                )));
            }
            self.reference = branch;
        }
        Ok(())
    }
}

pub const ATTR_KEEP_GIT_DIR: &str = "git.keepgitdir";
pub const ATTR_FULL_URL: &str = "git.fullurl";
pub const ATTR_AUTH_TOKEN_SECRET: &str = "git.authtokensecret";
pub const ATTR_AUTH_HEADER_SECRET: &str = "git.authheadersecret";
pub const ATTR_GIT_CHECKSUM: &str = "git.checksum";
pub const ATTR_SKIP_SUBMODULES: &str = "git.skipsubmodules";
pub const ATTR_GIT_MTIME: &str = "git.mtime";
pub const ATTR_FETCH_BY_COMMIT: &str = "git.fetchbycommit";
/// `known_hosts` lines the ssh server's key must match (BuildKit's
/// `llb.KnownSSHHosts`).
pub const ATTR_KNOWN_SSH_HOSTS: &str = "git.knownsshhosts";
/// The id of the client's SSH agent git authenticates with.
pub const ATTR_MOUNT_SSH_SOCK: &str = "git.mountsshsock";
pub const ATTR_HTTP_CHECKSUM: &str = "http.checksum";
pub const ATTR_HTTP_FILENAME: &str = "http.filename";
/// The OCI layout store an `oci-layout://` source reads
/// (`pb.AttrOCILayoutStoreID`).
pub const ATTR_OCI_STORE: &str = "oci.store";
/// The client session that serves the store of an `oci-layout://`
/// source (`pb.AttrOCILayoutSessionID`); the build's own without it.
pub const ATTR_OCI_SESSION: &str = "oci.session";
pub const ATTR_HTTP_PERM: &str = "http.perm";
pub const ATTR_HTTP_UID: &str = "http.uid";
pub const ATTR_HTTP_GID: &str = "http.gid";

/// A git checkout as a source op: what to fetch and how to lay it out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GitSource {
    /// The URL handed to `git` (`git.fullurl`).
    pub remote: String,
    /// `host/path`, the identifier's part.
    pub host_path: String,
    pub reference: String,
    pub subdir: String,
    pub keep_git_dir: bool,
    /// The commit the reference must resolve to (`git.checksum`).
    pub checksum: String,
    pub skip_submodules: bool,
    /// `commit`: files take the commit's time; empty or `checkout`: now.
    pub mtime: String,
    /// Fetch `checksum` directly instead of resolving `reference`.
    pub fetch_by_commit: bool,
    /// Names of the client's secrets that may hold credentials for the
    /// remote (BuildKit's `GIT_AUTH_TOKEN`/`GIT_AUTH_HEADER`): issue 13's
    /// seam; the engine refuses a build that would need them.
    pub auth_token_secret: String,
    pub auth_header_secret: String,
    /// `known_hosts` lines for an ssh remote; empty: the server's key is
    /// not checked (BuildKit's `StrictHostKeyChecking=no`).
    pub known_ssh_hosts: String,
    /// The client's SSH agent (its id) an ssh remote is fetched with;
    /// `default` for every ssh remote a user writes, as `llb.Git` sets it.
    pub mount_ssh_sock: String,
}

/// Whether `remote` is reached over ssh: an `ssh://` URL or git's
/// scp-like `user@host:path`.
pub fn is_ssh_remote(remote: &str) -> bool {
    match scheme_of(remote) {
        Some(scheme) => scheme.eq_ignore_ascii_case("ssh"),
        None => scp_like(remote).is_some(),
    }
}

/// The host and port (`None`: ssh's default) of an ssh remote, as a key
/// scan of it needs them: `ssh://[user@]host[:port]/path` (an IPv6 host in
/// brackets) or scp-like `user@host:path`. `None` for anything else.
pub fn ssh_host_port(remote: &str) -> Option<(String, Option<u16>)> {
    match scheme_of(remote) {
        Some(scheme) if scheme.eq_ignore_ascii_case("ssh") => {
            let rest = remote.split_once("://")?.1;
            let authority = rest.split('/').next()?;
            let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            let (host, port) = match hostport.strip_prefix('[') {
                Some(v6) => {
                    let (host, after) = v6.split_once(']')?;
                    (host, after.strip_prefix(':'))
                }
                None => match hostport.split_once(':') {
                    Some((h, p)) => (h, Some(p)),
                    None => (hostport, None),
                },
            };
            if host.is_empty() {
                return None;
            }
            let port = match port {
                Some(p) => Some(p.parse().ok()?),
                None => None,
            };
            Some((host.to_string(), port))
        }
        Some(_) => None,
        None => scp_like(remote).map(|(host, _)| (host.to_string(), None)),
    }
}

impl GitSource {
    /// The source of a parsed user reference.
    pub fn from_ref(r: &GitRef) -> GitSource {
        GitSource {
            remote: r.remote.clone(),
            host_path: r.host_path.clone(),
            reference: r.reference.clone(),
            subdir: r.subdir.clone(),
            keep_git_dir: r.keep_git_dir.unwrap_or(false),
            checksum: r.checksum.clone(),
            skip_submodules: r.submodules == Some(false),
            mtime: r.mtime.clone(),
            fetch_by_commit: r.fetch_by_commit,
            auth_token_secret: "GIT_AUTH_TOKEN".into(),
            auth_header_secret: "GIT_AUTH_HEADER".into(),
            known_ssh_hosts: String::new(),
            mount_ssh_sock: if r.scheme == Some(GitScheme::Ssh) {
                "default".into()
            } else {
                String::new()
            },
        }
    }

    /// The LLB source op (`git://host/path#ref:subdir` and attributes), as
    /// BuildKit's `llb.Git` writes it.
    pub fn to_op(&self) -> SourceOp {
        let mut id = format!("git://{}", self.host_path);
        if !self.reference.is_empty() || !self.subdir.is_empty() {
            id.push('#');
            id.push_str(&self.reference);
            if !self.subdir.is_empty() {
                id.push(':');
                id.push_str(&self.subdir);
            }
        }
        let mut attrs = BTreeMap::new();
        if self.keep_git_dir {
            attrs.insert(ATTR_KEEP_GIT_DIR.into(), "true".into());
        }
        attrs.insert(ATTR_FULL_URL.into(), self.remote.clone());
        if !self.auth_token_secret.is_empty() {
            attrs.insert(
                ATTR_AUTH_TOKEN_SECRET.into(),
                self.auth_token_secret.clone(),
            );
        }
        if !self.auth_header_secret.is_empty() {
            attrs.insert(
                ATTR_AUTH_HEADER_SECRET.into(),
                self.auth_header_secret.clone(),
            );
        }
        if !self.checksum.is_empty() {
            attrs.insert(ATTR_GIT_CHECKSUM.into(), self.checksum.clone());
        }
        if self.skip_submodules {
            attrs.insert(ATTR_SKIP_SUBMODULES.into(), "true".into());
        }
        if !self.mtime.is_empty() {
            attrs.insert(ATTR_GIT_MTIME.into(), self.mtime.clone());
        }
        if self.fetch_by_commit {
            attrs.insert(ATTR_FETCH_BY_COMMIT.into(), "true".into());
        }
        if !self.known_ssh_hosts.is_empty() {
            attrs.insert(ATTR_KNOWN_SSH_HOSTS.into(), self.known_ssh_hosts.clone());
        }
        if !self.mount_ssh_sock.is_empty() {
            attrs.insert(ATTR_MOUNT_SSH_SOCK.into(), self.mount_ssh_sock.clone());
        }
        SourceOp {
            identifier: id,
            attrs,
            platform: None,
        }
    }

    /// Reads a `git://` source op back; `Ok(None)` for another scheme. An
    /// attribute kiln does not handle is refused, naming it.
    pub fn from_op(op: &SourceOp) -> Result<Option<GitSource>> {
        let Some(rest) = op.identifier.strip_prefix("git://") else {
            return Ok(None);
        };
        let (host_path, fragment) = split_once_opt(rest, '#');
        let mut s = GitSource {
            host_path: host_path.to_string(),
            remote: format!("https://{host_path}"),
            ..GitSource::default()
        };
        if let Some(f) = fragment {
            let (reference, subdir) = split_once_opt(f, ':');
            s.reference = reference.to_string();
            s.subdir = clean_subdir(subdir.unwrap_or(""));
        }
        let flag = |k: &str, v: &str| -> Result<bool> {
            parse_bool(Some(v), k).map_err(|_| invalid(format!("invalid value {v:?} for {k}")))
        };
        for (k, v) in &op.attrs {
            match k.as_str() {
                ATTR_KEEP_GIT_DIR => s.keep_git_dir = flag(k, v)?,
                ATTR_FULL_URL => s.remote = v.clone(),
                ATTR_AUTH_TOKEN_SECRET => s.auth_token_secret = v.clone(),
                ATTR_AUTH_HEADER_SECRET => s.auth_header_secret = v.clone(),
                ATTR_GIT_CHECKSUM => s.checksum = v.clone(),
                ATTR_SKIP_SUBMODULES => s.skip_submodules = flag(k, v)?,
                ATTR_FETCH_BY_COMMIT => s.fetch_by_commit = flag(k, v)?,
                ATTR_KNOWN_SSH_HOSTS => s.known_ssh_hosts = v.clone(),
                ATTR_MOUNT_SSH_SOCK => s.mount_ssh_sock = v.clone(),
                ATTR_GIT_MTIME => match v.as_str() {
                    "" | "checkout" | "commit" => s.mtime = v.clone(),
                    m => return Err(invalid(format!("invalid mtime value: {m:?}"))),
                },
                _ => {
                    return Err(SourceError::Unsupported(format!(
                        "git source attribute {k}"
                    )))
                }
            }
        }
        if s.fetch_by_commit && !is_commit_id(&s.checksum) {
            return Err(invalid("fetch-by-commit requires a commit checksum"));
        }
        Ok(Some(s))
    }
}

/// A full commit id (40 or 64 lower-case hex digits).
pub fn is_commit_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'))
}

/// An HTTP(S) file as a source op.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpSource {
    pub url: String,
    /// The file's name in the source's tree; empty: from the response
    /// (`Content-Disposition`) or the URL's last path element.
    pub filename: String,
    /// `sha256:…` the content must have.
    pub checksum: String,
    /// The file's mode; 0 is BuildKit's default, 0600.
    pub perm: u32,
    pub uid: u32,
    pub gid: u32,
}

impl HttpSource {
    pub fn to_op(&self) -> SourceOp {
        let mut attrs = BTreeMap::new();
        if !self.checksum.is_empty() {
            attrs.insert(ATTR_HTTP_CHECKSUM.into(), self.checksum.clone());
        }
        if !self.filename.is_empty() {
            attrs.insert(ATTR_HTTP_FILENAME.into(), self.filename.clone());
        }
        if self.perm != 0 {
            attrs.insert(ATTR_HTTP_PERM.into(), format!("0{:o}", self.perm));
        }
        if self.uid != 0 {
            attrs.insert(ATTR_HTTP_UID.into(), self.uid.to_string());
        }
        if self.gid != 0 {
            attrs.insert(ATTR_HTTP_GID.into(), self.gid.to_string());
        }
        SourceOp {
            identifier: self.url.clone(),
            attrs,
            platform: None,
        }
    }

    /// Reads an `http://`/`https://` source op back; `Ok(None)` for
    /// another scheme.
    pub fn from_op(op: &SourceOp) -> Result<Option<HttpSource>> {
        if !(op.identifier.starts_with("http://") || op.identifier.starts_with("https://")) {
            return Ok(None);
        }
        let mut s = HttpSource {
            url: op.identifier.clone(),
            ..HttpSource::default()
        };
        let num = |k: &str, v: &str, radix: u32| -> Result<u32> {
            u32::from_str_radix(v, radix).map_err(|_| invalid(format!("invalid {k} {v:?}")))
        };
        for (k, v) in &op.attrs {
            match k.as_str() {
                ATTR_HTTP_CHECKSUM => {
                    parse_sha256(v)?;
                    s.checksum = v.clone()
                }
                ATTR_HTTP_FILENAME => s.filename = v.clone(),
                ATTR_HTTP_PERM => s.perm = num(k, v, 8)?,
                ATTR_HTTP_UID => s.uid = num(k, v, 10)?,
                ATTR_HTTP_GID => s.gid = num(k, v, 10)?,
                _ => {
                    return Err(SourceError::Unsupported(format!(
                        "http source attribute {k}"
                    )))
                }
            }
        }
        Ok(Some(s))
    }
}

/// Checks a `sha256:<64 hex>` digest, BuildKit's message for a bad one.
pub fn parse_sha256(d: &str) -> Result<()> {
    let Some((algo, hex)) = d.split_once(':') else {
        return Err(invalid("invalid checksum digest format"));
    };
    match algo {
        "sha256" => {}
        "sha384" | "sha512" => {
            return Err(SourceError::Unsupported(format!(
                "checksum algorithm {algo}"
            )))
        }
        _ => return Err(invalid("unsupported digest algorithm")),
    }
    if hex.len() != 64 || !hex.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(invalid("invalid checksum digest length"));
    }
    Ok(())
}

/// The file name an `ADD <url>` gives its file: the URL path's last
/// element, or `__unnamed__` (BuildKit's rule).
pub fn url_file_name(url: &str) -> String {
    let no_frag = url.split('#').next().unwrap_or(url);
    let no_query = no_frag.split('?').next().unwrap_or(no_frag);
    let path = match no_query.find("://") {
        Some(i) => {
            let after = &no_query[i + 3..];
            after.find('/').map(|j| &after[j..]).unwrap_or("")
        }
        None => no_query,
    };
    let path = percent_decode(path).unwrap_or_else(|_| path.to_string());
    // Like `path.Base`: a trailing slash is dropped first.
    match path.trim_end_matches('/').rsplit('/').next() {
        Some(base) if !base.is_empty() && base != "." => base.to_string(),
        _ => "__unnamed__".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(s: &str) -> GitRef {
        GitRef::parse(s).expect("valid").expect("a git ref")
    }

    #[test]
    fn git_refs_and_their_parts() {
        let r = git("https://github.com/foo/bar.git#baz/qux:quux/quuz");
        assert_eq!(r.remote, "https://github.com/foo/bar.git");
        assert_eq!(r.host_path, "github.com/foo/bar.git");
        assert_eq!(r.reference, "baz/qux");
        assert_eq!(r.subdir, "quux/quuz");
        let r = git("git://127.0.0.1:9418/repo?tag=v1&subdir=/a/../b&keep-git-dir");
        assert_eq!(r.remote, "git://127.0.0.1:9418/repo");
        assert_eq!(r.reference, "refs/tags/v1");
        assert_eq!(r.subdir, "b");
        assert_eq!(r.keep_git_dir, Some(true));
        let r = git("git@github.com:foo/bar.git#main");
        assert_eq!(r.scheme, Some(GitScheme::Ssh));
        assert_eq!(r.remote, "git@github.com:foo/bar.git");
        assert_eq!(r.reference, "main");
    }

    #[test]
    fn not_git() {
        for s in [
            "https://example.com/file.txt",
            "./a.git",
            "github.com/foo/bar",
            "ftp://x/y.git",
            "dir/file",
        ] {
            assert_eq!(GitRef::parse(s), Ok(None), "{s}");
        }
    }

    #[test]
    fn bad_queries_say_what() {
        let e = |s: &str| GitRef::parse(s).expect_err("invalid").to_string();
        assert_eq!(e("git://h/r?foo=1"), "unexpected query \"foo\"");
        assert_eq!(e("git://h/r?ref="), "query \"ref\" has no value");
        assert_eq!(
            e("git://h/r?ref=a&ref=b"),
            "query \"ref\" has multiple values"
        );
        assert_eq!(e("git://h/r?ref=b#a"), "ref conflicts: \"a\" vs \"b\"");
        assert_eq!(e("git://h/r?tag=a&branch=b"), "branch conflicts with tag");
        assert_eq!(
            e("git://h/r?keep-git-dir=maybe"),
            "invalid keep-git-dir value: \"maybe\""
        );
    }

    #[test]
    fn git_ops_round_trip_and_refuse_unknown_attrs() {
        let s = GitSource::from_ref(&git("git://h:1/r.git?ref=v1&subdir=d&keep-git-dir=true"));
        let op = s.to_op();
        assert_eq!(op.identifier, "git://h:1/r.git#v1:d");
        assert_eq!(
            op.attrs.get(ATTR_FULL_URL).map(String::as_str),
            Some("git://h:1/r.git")
        );
        assert_eq!(GitSource::from_op(&op), Ok(Some(s)));
        let mut bad = op.clone();
        bad.attrs.insert("git.sig.pubkey".into(), "k".into());
        assert_eq!(
            GitSource::from_op(&bad)
                .expect_err("unknown attr")
                .to_string(),
            "git source attribute git.sig.pubkey is not supported yet"
        );
    }

    #[test]
    fn ssh_host_port_of_each_ssh_form() {
        let hp = |r: &str| ssh_host_port(r);
        assert_eq!(
            hp("ssh://git@example.com:2222/o/r.git"),
            Some(("example.com".to_string(), Some(2222)))
        );
        assert_eq!(
            hp("ssh://example.com/o/r.git"),
            Some(("example.com".to_string(), None))
        );
        assert_eq!(
            hp("ssh://git@[::1]:22/r.git"),
            Some(("::1".to_string(), Some(22)))
        );
        assert_eq!(
            hp("git@github.com:o/r.git"),
            Some(("github.com".to_string(), None))
        );
        assert_eq!(hp("https://example.com/r.git"), None);
        assert_eq!(hp("ssh://git@example.com:x/r.git"), None);
    }

    #[test]
    fn ssh_remotes_use_the_default_agent_and_keep_known_hosts() {
        for (r, id) in [
            ("git@github.com:foo/bar.git", "git://github.com/foo/bar.git"),
            ("ssh://git@h:2222/srv/r.git#v1", "git://h:2222/srv/r.git#v1"),
        ] {
            assert!(is_ssh_remote(&git(r).remote), "{r}");
            let mut s = GitSource::from_ref(&git(r));
            assert_eq!(s.mount_ssh_sock, "default");
            s.known_ssh_hosts = "[h]:2222 ssh-ed25519 AAAA\n".into();
            let op = s.to_op();
            assert_eq!(op.identifier, id);
            assert_eq!(
                op.attrs.get(ATTR_MOUNT_SSH_SOCK).map(String::as_str),
                Some("default")
            );
            assert_eq!(op.attrs.get(ATTR_KNOWN_SSH_HOSTS), Some(&s.known_ssh_hosts));
            assert_eq!(GitSource::from_op(&op), Ok(Some(s)));
        }
        for r in ["https://h/r.git", "git://h/r"] {
            assert!(!is_ssh_remote(r), "{r}");
            let op = GitSource::from_ref(&git(r)).to_op();
            assert!(!op.attrs.contains_key(ATTR_MOUNT_SSH_SOCK), "{r}");
        }
    }

    #[test]
    fn http_ops_round_trip() {
        let s = HttpSource {
            url: "https://h/x".into(),
            filename: "x".into(),
            checksum: format!("sha256:{}", "a".repeat(64)),
            perm: 0o644,
            uid: 1,
            gid: 2,
        };
        assert_eq!(HttpSource::from_op(&s.to_op()), Ok(Some(s)));
        let mut bad = HttpSource {
            url: "https://h/x".into(),
            ..HttpSource::default()
        }
        .to_op();
        bad.attrs.insert("http.header.accept".into(), "x".into());
        assert!(matches!(
            HttpSource::from_op(&bad),
            Err(SourceError::Unsupported(_))
        ));
    }

    #[test]
    fn url_file_names() {
        assert_eq!(url_file_name("https://h/a/b.tar.gz?x=1"), "b.tar.gz");
        assert_eq!(url_file_name("https://h/"), "__unnamed__");
        assert_eq!(url_file_name("https://h"), "__unnamed__");
        assert_eq!(url_file_name("https://h/dir/"), "dir");
    }

    #[test]
    fn checksums() {
        assert!(parse_sha256(&format!("sha256:{}", "0".repeat(64))).is_ok());
        assert_eq!(
            parse_sha256("abc").expect_err("bad").to_string(),
            "invalid checksum digest format"
        );
    }
}
