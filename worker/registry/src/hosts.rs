//! Per-registry settings (`[registry."HOST"]` in kilnd.toml, BuildKit's
//! buildkitd.toml shape) and the one rule for which endpoints a request
//! goes to, in which order, over which scheme.

use crate::error::{RegistryError, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The `[registry]` table of kilnd.toml: settings per registry host
/// (`docker.io`, `127.0.0.1:5000`, `[::1]:5000`). The embedded CLI reads the
/// same file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct HostsConfig {
    /// Settings keyed by host (with its port, if any).
    pub hosts: BTreeMap<String, HostConfig>,
}

/// The settings of one registry host: BuildKit's keys, unknown keys refused.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Hosts (optionally with a path, `mirror.example.com/docker`) asked
    /// first for pulls from this registry, in order, with `?ns=<host>`.
    /// Pushes always go to the registry itself.
    #[serde(default)]
    pub mirrors: Vec<String>,
    /// `true`: plain HTTP; `false`: HTTPS. Unset: HTTPS, except for
    /// `localhost` and loopback addresses (`127.0.0.1`, `::1`), which use
    /// plain HTTP as docker and BuildKit do (so a TLS registry on loopback
    /// needs `http = false`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<bool>,
    /// HTTPS without verifying the server's certificate. A host reached
    /// over plain HTTP (`http = true`, or loopback) is then tried over
    /// such HTTPS first, as BuildKit does.
    #[serde(default)]
    pub insecure: bool,
    /// PEM files of CAs trusted for this host, besides the system roots.
    #[serde(default)]
    pub ca: Vec<PathBuf>,
    /// A client certificate presented to this host (at most one).
    #[serde(default)]
    pub keypair: Vec<KeyPair>,
}

/// A client certificate and its private key, both PEM files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyPair {
    /// The private key (PKCS#8, PKCS#1 or SEC1 PEM).
    pub key: PathBuf,
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
}

/// kilnd.toml as this crate sees it: only the `[registry]` table; every
/// other key belongs to the daemon's own config.
#[derive(Deserialize)]
struct KilndToml {
    #[serde(default)]
    registry: HostsConfig,
}

impl HostsConfig {
    /// Reads the `[registry]` table of `path`; a missing file is an empty
    /// config (every registry with default settings).
    pub fn from_kilnd_toml(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(&text, path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(HostsConfig::default()),
            Err(e) => Err(RegistryError::Config {
                path: path.to_path_buf(),
                message: format!("reading: {e}"),
            }),
        }
    }

    /// Parses kilnd.toml's text (`path` names it in errors) and checks
    /// the `[registry]` table: unknown keys are refused by name, and every
    /// host and mirror must be a plain `host[:port]` (a mirror may add a
    /// path).
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let config_err = |message: String| RegistryError::Config {
            path: path.to_path_buf(),
            message,
        };
        let file: KilndToml =
            toml::from_str(text).map_err(|e| config_err(e.to_string().trim_end().to_string()))?;
        let hosts = file.registry;
        for (host, cfg) in &hosts.hosts {
            if !valid_host(host) {
                return Err(config_err(format!(
                    "[registry.\"{host}\"]: not a registry host: give `host` or `host:port`, \
                     without scheme or path"
                )));
            }
            for m in &cfg.mirrors {
                if !valid_host(split_mirror(m).0) {
                    return Err(config_err(format!(
                        "[registry.\"{host}\"] mirrors: {m:?} is not a registry host: give \
                         `host[:port][/path]` without scheme (set `http = true` under \
                         [registry.\"MIRROR\"] for plain HTTP)"
                    )));
                }
            }
            if cfg.keypair.len() > 1 {
                return Err(config_err(format!(
                    "[registry.\"{host}\"] keypair: {} key pairs given, kiln presents one client \
                     certificate per host",
                    cfg.keypair.len()
                )));
            }
        }
        Ok(hosts)
    }

    /// The settings of `host`, if any.
    pub fn get(&self, host: &str) -> Option<&HostConfig> {
        self.hosts.get(host)
    }

    /// The settings that apply to `host` as contacted: docker.io's
    /// settings apply to `registry-1.docker.io` too.
    pub(crate) fn settings(&self, host: &str) -> Option<&HostConfig> {
        self.hosts.get(host).or_else(|| {
            (host == "registry-1.docker.io")
                .then(|| self.hosts.get("docker.io"))
                .flatten()
        })
    }

    /// Loads every CA and key pair named in the config, so a bad file fails
    /// before a build starts rather than at its first pull.
    pub fn validate(&self) -> Result<()> {
        for host in self.hosts.keys() {
            crate::tls::client_config(self, host)?;
        }
        Ok(())
    }
}

/// `host[/path]` of a mirror entry.
fn split_mirror(m: &str) -> (&str, &str) {
    match m.split_once('/') {
        Some((h, p)) => (h, p.trim_matches('/')),
        None => (m, ""),
    }
}

/// `name[:port]` or `[ipv6][:port]`, nothing else.
fn valid_host(h: &str) -> bool {
    if h.is_empty() || h.contains(['/', '@', '?', '#', ' ']) || h.contains("://") {
        return false;
    }
    let (name, port) = if let Some(rest) = h.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, tail)) => (ip, tail.strip_prefix(':')),
            None => return false,
        }
    } else {
        match h.rsplit_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (h, None),
        }
    };
    !name.is_empty() && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether `host` (with an optional port) is a loopback address or
/// `localhost`, which docker and containerd reach over plain HTTP.
pub fn is_localhost(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split_once(']').map_or(rest, |(ip, _)| ip)
    } else if host.matches(':').count() > 1 {
        host // a bare IPv6 address
    } else {
        host.split_once(':').map_or(host, |(n, _)| n)
    };
    if name == "localhost" {
        return true;
    }
    name.parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_loopback())
}

/// One place a request for a repository of a registry may go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// The host contacted (`host[:port]`): for credentials, TLS settings
    /// and messages.
    pub host: String,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// The API root path, `/v2` or `/v2/<mirror path>`.
    pub root: String,
    /// The registry the request is for, sent as `?ns=` to a mirror.
    pub ns: Option<String>,
}

impl Endpoint {
    /// The URL of `path` (after `/v2/`) on this endpoint, with `?ns=` for
    /// mirrors; `query` pairs are appended.
    pub fn url(&self, path: &str, query: &[(&str, &str)]) -> String {
        let mut url = format!("{}://{}{}/{}", self.scheme, self.host, self.root, path);
        let mut pairs: Vec<(&str, &str)> = query.to_vec();
        if let Some(ns) = &self.ns {
            pairs.push(("ns", ns));
        }
        for (i, (k, v)) in pairs.iter().enumerate() {
            url.push(if i == 0 && !url.contains('?') {
                '?'
            } else {
                '&'
            });
            url.push_str(k);
            url.push('=');
            url.push_str(&query_escape(v));
        }
        url
    }

    /// `scheme://host`, what relative `Location` headers resolve against.
    pub fn origin(&self) -> String {
        format!("{}://{}", self.scheme, self.host)
    }
}

/// Percent-encodes what may not appear raw in a query value.
pub(crate) fn query_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~:/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The registry host a domain's API lives on: docker.io's is
/// `registry-1.docker.io`.
pub fn api_host(domain: &str) -> &str {
    if domain == "docker.io" {
        "registry-1.docker.io"
    } else {
        domain
    }
}

fn scheme_for(hosts: &HostsConfig, host: &str) -> &'static str {
    match hosts.settings(host).and_then(|c| c.http) {
        Some(true) => "http",
        Some(false) => "https",
        None if is_localhost(host) => "http",
        None => "https",
    }
}

/// Where requests for `domain` go: for pulls (`pull = true`) its mirrors
/// first, in order, then the registry itself; for pushes only the registry.
pub fn endpoints(hosts: &HostsConfig, domain: &str, pull: bool) -> Vec<Endpoint> {
    let mut out = Vec::new();
    if pull {
        for m in hosts
            .get(domain)
            .map(|c| c.mirrors.as_slice())
            .unwrap_or(&[])
        {
            let (host, path) = split_mirror(m);
            out.push(Endpoint {
                host: host.to_string(),
                scheme: scheme_for(hosts, host),
                root: if path.is_empty() {
                    "/v2".to_string()
                } else {
                    format!("/v2/{path}")
                },
                ns: Some(domain.to_string()),
            });
        }
    }
    let host = api_host(domain);
    out.push(Endpoint {
        host: host.to_string(),
        scheme: scheme_for(hosts, host),
        root: "/v2".to_string(),
        ns: None,
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> std::result::Result<HostsConfig, String> {
        HostsConfig::parse(text, Path::new("/etc/kiln/kilnd.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn buildkit_keys_parse_and_other_tables_are_not_ours() {
        let cfg = parse(
            r#"
root = "/var/lib/kiln"
[grpc]
address = ["unix:///run/kiln.sock"]

[registry."docker.io"]
mirrors = ["mirror.example.com", "127.0.0.1:5001/cache/hub"]

[registry."reg.example.com:5000"]
http = false
insecure = true
ca = ["/etc/kiln/ca.pem"]
[[registry."reg.example.com:5000".keypair]]
key = "/etc/kiln/key.pem"
cert = "/etc/kiln/cert.pem"
"#,
        )
        .expect("parses");
        assert_eq!(cfg.hosts.len(), 2);
        let hub = cfg.get("docker.io").expect("docker.io");
        assert_eq!(
            hub.mirrors,
            ["mirror.example.com", "127.0.0.1:5001/cache/hub"]
        );
        let reg = cfg.get("reg.example.com:5000").expect("reg");
        assert!(reg.insecure);
        assert_eq!(reg.http, Some(false));
        assert_eq!(hub.http, None);
        assert_eq!(reg.ca, [PathBuf::from("/etc/kiln/ca.pem")]);
        assert_eq!(
            reg.keypair,
            [KeyPair {
                key: "/etc/kiln/key.pem".into(),
                cert: "/etc/kiln/cert.pem".into()
            }]
        );
        assert_eq!(parse("").expect("empty"), HostsConfig::default());
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = parse("[registry.\"docker.io\"]\nmirror = [\"x\"]\n").expect_err("unknown key");
        assert!(err.starts_with("/etc/kiln/kilnd.toml: "), "{err}");
        assert!(err.contains("unknown field `mirror`"), "{err}");
        assert!(err.contains("line 2"), "{err}");
        let err = parse("[registry.\"h\"]\ntlsconfigdir = [\"/d\"]\n").expect_err("unknown key");
        assert!(err.contains("unknown field `tlsconfigdir`"), "{err}");
        let err = parse("[[registry.\"h\".keypair]]\nkey = \"k\"\ncrt = \"c\"\n")
            .expect_err("unknown key");
        assert!(err.contains("unknown field `crt`"), "{err}");
        let err = parse("[registry.\"h\"]\nhttp = \"yes\"\n").expect_err("bad type");
        assert!(err.contains("invalid type"), "{err}");
    }

    #[test]
    fn hosts_and_mirrors_must_be_hosts() {
        let err = parse("[registry.\"https://x\"]\nhttp = true\n").expect_err("scheme");
        assert_eq!(
            err,
            "/etc/kiln/kilnd.toml: [registry.\"https://x\"]: not a registry host: give `host` or \
             `host:port`, without scheme or path"
        );
        let err =
            parse("[registry.\"docker.io\"]\nmirrors = [\"http://m\"]\n").expect_err("scheme");
        assert!(
            err.contains("mirrors: \"http://m\" is not a registry host"),
            "{err}"
        );
        let err = parse(
            "[[registry.\"h\".keypair]]\nkey = \"a\"\ncert = \"b\"\n\
             [[registry.\"h\".keypair]]\nkey = \"c\"\ncert = \"d\"\n",
        )
        .expect_err("two keypairs");
        assert!(err.contains("2 key pairs given"), "{err}");
        assert!(parse("[registry.\"[::1]:5000\"]\nhttp = true\n").is_ok());
    }

    #[test]
    fn validate_loads_every_tls_file() {
        let cfg = parse(
            "[registry.\"ok.example.com\"]\nhttp = true\n\
             [registry.\"r.example.com\"]\nca = [\"/nonexistent/kiln/ca.pem\"]\n",
        )
        .expect("parses");
        let err = cfg.validate().expect_err("missing CA file");
        assert!(
            err.to_string()
                .starts_with("/nonexistent/kiln/ca.pem: ca of [registry.\"r.example.com\"]: "),
            "{err}"
        );
        assert!(HostsConfig::default().validate().is_ok());
    }

    #[test]
    fn missing_file_is_empty_config() {
        let dir = std::env::temp_dir().join("kiln-registry-no-such-dir");
        let cfg = HostsConfig::from_kilnd_toml(&dir.join("kilnd.toml")).expect("missing is ok");
        assert!(cfg.hosts.is_empty());
    }

    #[test]
    fn localhost_is_plain_http() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1",
            "127.0.0.1:5000",
            "127.1.2.3:80",
            "[::1]:5000",
            "::1",
        ] {
            assert!(is_localhost(h), "{h}");
        }
        for h in [
            "example.com",
            "10.0.0.1:5000",
            "[::2]:5000",
            "localhost.example.com",
        ] {
            assert!(!is_localhost(h), "{h}");
        }
    }

    #[test]
    fn endpoints_put_mirrors_first_with_ns() {
        let cfg = parse(
            r#"
[registry."docker.io"]
mirrors = ["mirror.example.com", "127.0.0.1:5001/cache/hub/"]
[registry."plain.example.com"]
http = true
[registry."mirror.example.com"]
insecure = true
[registry."localhost:5443"]
http = false
"#,
        )
        .expect("parses");
        let eps = endpoints(&cfg, "docker.io", true);
        let urls: Vec<String> = eps
            .iter()
            .map(|e| e.url("library/busybox/manifests/latest", &[]))
            .collect();
        assert_eq!(
            urls,
            [
                "https://mirror.example.com/v2/library/busybox/manifests/latest?ns=docker.io",
                "http://127.0.0.1:5001/v2/cache/hub/library/busybox/manifests/latest?ns=docker.io",
                "https://registry-1.docker.io/v2/library/busybox/manifests/latest",
            ]
        );
        assert_eq!(eps[0].host, "mirror.example.com");
        assert_eq!(eps[2].host, "registry-1.docker.io");
        // Pushes never go to mirrors.
        let push = endpoints(&cfg, "docker.io", false);
        assert_eq!(push.len(), 1);
        assert_eq!(push[0].origin(), "https://registry-1.docker.io");
        assert_eq!(
            endpoints(&cfg, "plain.example.com", true)[0].url("a/blobs/uploads/", &[]),
            "http://plain.example.com/v2/a/blobs/uploads/"
        );
        assert_eq!(
            endpoints(&cfg, "127.0.0.1:5000", false)[0].url(
                "a/b/blobs/uploads/",
                &[("mount", "sha256:ab"), ("from", "c/d e")]
            ),
            "http://127.0.0.1:5000/v2/a/b/blobs/uploads/?mount=sha256:ab&from=c/d%20e"
        );
        // A loopback registry is plain HTTP unless told otherwise.
        assert_eq!(endpoints(&cfg, "localhost:5443", true)[0].scheme, "https");
        assert_eq!(endpoints(&cfg, "localhost:5444", true)[0].scheme, "http");
        assert_eq!(
            endpoints(&cfg, "ghcr.io", true)[0].url("o/i/manifests/v1", &[]),
            "https://ghcr.io/v2/o/i/manifests/v1"
        );
    }
}
