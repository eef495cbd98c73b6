//! The networks a build step can run on.
//!
//! A step asks for [`crate::Network::Sandbox`] (LLB's default), `Host` or
//! `None`. What the sandbox is, the executor decides from its
//! [`NetworkMode`], as BuildKit's worker does:
//! - `cni`: every step gets a fresh network namespace joined to kiln's
//!   bridge by the real CNI plugins ([`cni`]); it cannot reach the host's
//!   loopback (`127.0.0.1` inside is its own);
//! - `host`: the step shares the host's network namespace;
//! - `auto` (the default): `cni` when the plugins are installed, else
//!   `host`, with a warning.

pub mod cni;
pub mod netns;

pub use cni::{sweep, Attachment, Cni, CniConfig, Subnet};

use std::path::PathBuf;
use std::str::FromStr;

/// Errors of setting up a step's network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// A subnet in the configuration is not usable.
    #[error("invalid cni subnet {value:?}: {reason}")]
    Subnet { value: String, reason: &'static str },
    /// A bridge name in the configuration is not an interface name.
    #[error("invalid cni bridge name {value:?}: {reason}")]
    Bridge { value: String, reason: &'static str },
    /// A network mode in the configuration is not one kiln knows.
    #[error("unknown network mode {value:?} (host, cni or auto)")]
    Mode { value: String },
    /// A CNI plugin is not installed.
    #[error("cni plugin {path} is missing (install containernetworking-plugins or set the cni plugin dir)")]
    MissingPlugin { path: PathBuf },
    /// Masquerading was asked for but `iptables` is not installed.
    #[error("cni masquerade needs iptables, which is not in PATH")]
    NoIptables,
    /// A local file operation failed.
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A plugin failed; the message is the plugin's own.
    #[error("cni plugin {plugin} {command} for {id} failed: {message}")]
    Plugin {
        plugin: String,
        command: &'static str,
        id: String,
        message: String,
    },
}

/// What the sandbox network of a step is, as configured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NetworkMode {
    /// The host's network namespace.
    Host,
    /// A fresh namespace on kiln's CNI bridge.
    Cni,
    /// `Cni` when the plugins are installed, else `Host`.
    #[default]
    Auto,
}

impl FromStr for NetworkMode {
    type Err = NetworkError;

    fn from_str(s: &str) -> Result<NetworkMode, NetworkError> {
        match s {
            "host" => Ok(NetworkMode::Host),
            "cni" => Ok(NetworkMode::Cni),
            "auto" => Ok(NetworkMode::Auto),
            _ => Err(NetworkError::Mode {
                value: s.to_string(),
            }),
        }
    }
}

impl std::fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NetworkMode::Host => "host",
            NetworkMode::Cni => "cni",
            NetworkMode::Auto => "auto",
        })
    }
}

impl NetworkMode {
    /// The CNI network steps run on, or `None` for the host's network.
    /// `Cni` fails when the plugins are missing; `Auto` then warns and
    /// falls back to the host's network. `state_dir` is where kiln keeps
    /// the namespaces and IPAM allocations (`<root>/net`).
    pub fn resolve(
        self,
        config: CniConfig,
        state_dir: PathBuf,
    ) -> Result<Option<Cni>, NetworkError> {
        match self {
            NetworkMode::Host => Ok(None),
            NetworkMode::Cni => Cni::new(config, state_dir).map(Some),
            NetworkMode::Auto => match Cni::new(config, state_dir) {
                Ok(c) => Ok(Some(c)),
                Err(e @ (NetworkError::Subnet { .. } | NetworkError::Bridge { .. })) => Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "network mode auto: cni is not available, RUN steps use the host's network");
                    Ok(None)
                }
            },
        }
    }
}

/// The resolv.conf of a step in its own network namespace: the host's
/// without loopback nameservers (`127.0.0.53` of systemd-resolved is the
/// step's own loopback there). `None` when no nameserver is left, so the
/// caller falls back to public resolvers as for a host without one.
pub fn isolated_resolv(host: &str) -> Option<String> {
    let mut kept = Vec::new();
    let mut servers = 0;
    for line in host.lines() {
        let mut words = line.split_whitespace();
        if words.next() == Some("nameserver") {
            let Some(addr) = words.next() else { continue };
            let addr = addr.split('%').next().unwrap_or(addr);
            if addr
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
            {
                continue;
            }
            servers += 1;
        }
        kept.push(line);
    }
    (servers > 0).then(|| {
        let mut s = kept.join("\n");
        s.push('\n');
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        for m in ["host", "cni", "auto"] {
            assert_eq!(m.parse::<NetworkMode>().expect(m).to_string(), m);
        }
        let err = "bridge".parse::<NetworkMode>().expect_err("unknown");
        assert_eq!(
            err.to_string(),
            "unknown network mode \"bridge\" (host, cni or auto)"
        );
        assert_eq!(NetworkMode::default(), NetworkMode::Auto);
    }

    #[test]
    fn auto_falls_back_to_host_without_plugins_and_cni_fails() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = CniConfig {
            plugin_dir: dir.path().join("none"),
            ..CniConfig::default()
        };
        let state = dir.path().join("net");
        assert!(NetworkMode::Auto
            .resolve(cfg.clone(), state.clone())
            .expect("auto")
            .is_none());
        assert!(NetworkMode::Host
            .resolve(cfg.clone(), state.clone())
            .expect("host")
            .is_none());
        let err = NetworkMode::Cni
            .resolve(cfg.clone(), state.clone())
            .expect_err("cni without plugins");
        assert!(err.to_string().contains("is missing"), "{err}");
        let bad = CniConfig {
            bridge: "way-too-long-bridge".into(),
            ..cfg
        };
        assert!(
            NetworkMode::Auto.resolve(bad, state).is_err(),
            "a bad config is not ignored"
        );
    }

    #[test]
    fn loopback_nameservers_are_dropped_in_a_sandbox() {
        let host = "# systemd\nnameserver 127.0.0.53\noptions edns0 trust-ad\nsearch lan\n";
        assert_eq!(isolated_resolv(host), None);
        let mixed = "nameserver ::1\nnameserver 192.168.1.1\nsearch lan\n";
        assert_eq!(
            isolated_resolv(mixed).as_deref(),
            Some("nameserver 192.168.1.1\nsearch lan\n")
        );
    }
}
