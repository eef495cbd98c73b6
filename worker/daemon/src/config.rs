//! kilnd's configuration.
//!
//! Each setting is taken from the first source that has it: a flag, then
//! the environment (only the three containerd variables ctr and nerdctl
//! read), then `kilnd.toml`, then the built-in default. [`Config::resolve`]
//! is the pure part of that, so precedence is tested without touching the
//! process environment or `/etc`.

use kiln_engine::entitlements::{EntitlementError, Entitlements};
use kiln_engine::network::{CniConfig, NetworkError, NetworkMode};
use kiln_snapshot::containerd::ContainerdConfig;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where kilnd listens without `--addr` or `[grpc] address`.
pub const DEFAULT_ADDR: &str = "unix:///run/kiln/kilnd.sock";
/// The configuration file read when `--config` is not given (if it exists).
pub const DEFAULT_CONFIG: &str = "/etc/kiln/kilnd.toml";
/// kiln's state directory, the same default as `kiln --root`.
pub const DEFAULT_ROOT: &str = "/var/lib/kiln";

/// Everything kilnd runs with.
#[derive(Clone, Debug)]
pub struct Config {
    /// Listening addresses, `unix://PATH` or `tcp://HOST:PORT`.
    pub addrs: Vec<String>,
    /// kiln's state directory (worker id, mount points, FIFOs).
    pub root: PathBuf,
    pub containerd: ContainerdConfig,
    /// TLS for `tcp://` addresses (unix sockets are always plain).
    pub tls: Option<TlsConfig>,
    /// Cache GC policies as ListWorkers reports them; empty means the
    /// defaults of [`crate::workers::default_gc_policies`].
    pub gc: Vec<GcPolicy>,
    /// Most build steps run at once; `None` leaves it to the engine.
    pub max_parallelism: Option<usize>,
    /// Debug logging.
    pub debug: bool,
    /// How RUN steps run: their network, the entitlements builds may get.
    pub worker: WorkerConfig,
}

/// The `[worker]` section: the steps' sandbox network and the
/// entitlements a build may be granted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkerConfig {
    /// What LLB's default network is (`host`, `cni`, `auto`).
    pub network: NetworkMode,
    /// kiln's CNI network, used in `cni` mode (and `auto` when installed).
    pub cni: CniConfig,
    /// Entitlements a client may ask for (`network.host`,
    /// `security.insecure`); nothing by default, as in BuildKit.
    pub allow: Entitlements,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            addrs: vec![DEFAULT_ADDR.to_string()],
            root: PathBuf::from(DEFAULT_ROOT),
            containerd: ContainerdConfig::default(),
            tls: None,
            gc: Vec::new(),
            max_parallelism: None,
            debug: false,
            worker: WorkerConfig::default(),
        }
    }
}

/// Server certificate and key, and the CA that client certificates must
/// chain to (mutual TLS) when given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

/// One cache GC policy, BuildKit's `GCPolicy` in kiln's units.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GcPolicy {
    /// Also applies to internal records.
    pub all: bool,
    /// Keep records used within this long.
    pub keep_duration: Option<Duration>,
    /// Never prune the cache below this many bytes.
    pub reserved_space: Option<u64>,
    /// Prune until the cache is at most this many bytes.
    pub max_used_space: Option<u64>,
    /// Prune until the disk has this many bytes free.
    pub min_free_space: Option<u64>,
    /// BuildKit filters, e.g. `type==exec.cachemount`.
    pub filters: Vec<String>,
}

/// Why kilnd's configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The configuration file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML or has unknown keys.
    #[error("invalid config file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    /// A size is neither a byte count nor like `10GB`.
    #[error("invalid size {value:?} for {key} (expected bytes or e.g. 512MB, 10GB)")]
    Size { key: &'static str, value: String },
    /// A duration is neither seconds nor like `48h`.
    #[error("invalid duration {value:?} for {key} (expected seconds or e.g. 48h, 7d)")]
    Duration { key: &'static str, value: String },
    /// A listening address has an unknown scheme or no path/port.
    #[error("invalid address {addr:?} (expected unix:///path or tcp://host:port)")]
    Addr { addr: String },
    /// Only one of the TLS certificate and key was given.
    #[error("TLS needs both a certificate (--tlscert) and a key (--tlskey)")]
    TlsIncomplete,
    /// A `[worker]` network setting (or `--network-mode`) is not usable.
    #[error("invalid [worker] network setting")]
    Network {
        #[source]
        source: NetworkError,
    },
    /// An entitlement in `[worker] allow` or `--allow-insecure-entitlement`
    /// is not one kiln knows.
    #[error("invalid entitlement in [worker] allow or --allow-insecure-entitlement")]
    Entitlement {
        #[source]
        source: EntitlementError,
    },
    /// A TLS CA was given without a server certificate.
    #[error("a TLS CA (--tlscacert {ca}) needs --tlscert and --tlskey too")]
    TlsCaWithoutCert { ca: PathBuf },
}

/// kilnd's flags. `main` flattens them into its command line.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Flags {
    /// Configuration file [default: /etc/kiln/kilnd.toml if it exists].
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on, unix:///path or tcp://host:port (repeatable)
    /// [default: unix:///run/kiln/kilnd.sock].
    #[arg(long = "addr", value_name = "ADDR")]
    pub addrs: Vec<String>,
    /// kiln's state directory [default: /var/lib/kiln].
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// containerd's socket [env: CONTAINERD_ADDRESS] [default:
    /// /run/containerd/containerd.sock].
    #[arg(long, value_name = "PATH")]
    pub containerd_address: Option<PathBuf>,
    /// containerd namespace for builds and images [env:
    /// CONTAINERD_NAMESPACE] [default: default].
    #[arg(long, value_name = "NS")]
    pub namespace: Option<String>,
    /// Snapshotter for build steps and unpacked images [env:
    /// CONTAINERD_SNAPSHOTTER] [default: overlayfs].
    #[arg(long, value_name = "NAME")]
    pub snapshotter: Option<String>,
    /// TLS server certificate (PEM) for tcp:// addresses.
    #[arg(long, value_name = "FILE")]
    pub tlscert: Option<PathBuf>,
    /// TLS server key (PEM) for tcp:// addresses.
    #[arg(long, value_name = "FILE")]
    pub tlskey: Option<PathBuf>,
    /// CA (PEM) that client certificates must chain to; makes client
    /// certificates mandatory.
    #[arg(long, value_name = "FILE")]
    pub tlscacert: Option<PathBuf>,
    /// Debug logging.
    #[arg(long)]
    pub debug: bool,
    /// The network of RUN steps without --network: cni (a namespace of
    /// their own on kiln's bridge), host, or auto (cni when the CNI plugins
    /// are installed, else host) [default: auto].
    #[arg(long, value_name = "MODE")]
    pub network_mode: Option<String>,
    /// Lets clients ask for an entitlement (network.host,
    /// security.insecure); repeatable; replaces `[worker] allow`.
    #[arg(long = "allow-insecure-entitlement", value_name = "NAME")]
    pub allow_insecure_entitlement: Vec<String>,
}

/// `kilnd.toml` as written; every key is optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    root: Option<PathBuf>,
    debug: Option<bool>,
    max_parallelism: Option<usize>,
    #[serde(default)]
    grpc: GrpcSection,
    #[serde(default)]
    containerd: ContainerdSection,
    #[serde(default)]
    gc: Vec<GcSection>,
    #[serde(default)]
    worker: WorkerSection,
}

/// `[worker]`: how RUN steps run.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct WorkerSection {
    network: Option<String>,
    #[serde(default)]
    allow: Vec<String>,
    cni_plugin_dir: Option<PathBuf>,
    cni_bridge: Option<String>,
    cni_subnet: Option<String>,
    cni_masquerade: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct GrpcSection {
    #[serde(default)]
    address: Vec<String>,
    tls: Option<TlsSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct TlsSection {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ContainerdSection {
    address: Option<PathBuf>,
    namespace: Option<String>,
    snapshotter: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct GcSection {
    #[serde(default)]
    all: bool,
    keep_duration: Option<Amount>,
    reserved_space: Option<Amount>,
    max_used_space: Option<Amount>,
    min_free_space: Option<Amount>,
    #[serde(default)]
    filters: Vec<String>,
}

/// A size or duration: a plain number (bytes, seconds) or text with a
/// unit (`10GB`, `48h`).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Amount {
    Number(u64),
    Text(String),
}

impl Amount {
    fn bytes(&self, key: &'static str) -> Result<u64, ConfigError> {
        match self {
            Amount::Number(n) => Ok(*n),
            Amount::Text(s) => kiln_engine::prune::parse_size(s).ok_or_else(|| ConfigError::Size {
                key,
                value: s.clone(),
            }),
        }
    }

    fn duration(&self, key: &'static str) -> Result<Duration, ConfigError> {
        match self {
            Amount::Number(n) => Ok(Duration::from_secs(*n)),
            Amount::Text(s) => {
                kiln_engine::prune::parse_duration(s).ok_or_else(|| ConfigError::Duration {
                    key,
                    value: s.clone(),
                })
            }
        }
    }
}

impl FileConfig {
    /// Parses the text of a `kilnd.toml`; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads `path`.
    pub fn read(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        FileConfig::parse(&text, path)
    }
}

impl Config {
    /// The configuration for these flags: reads `--config` (or
    /// [`DEFAULT_CONFIG`] if it exists) and the process environment.
    pub fn load(flags: &Flags) -> Result<Config, ConfigError> {
        let file = match &flags.config {
            Some(path) => FileConfig::read(path)?,
            None if Path::new(DEFAULT_CONFIG).exists() => {
                FileConfig::read(Path::new(DEFAULT_CONFIG))?
            }
            None => FileConfig::default(),
        };
        Config::resolve(file, flags, |k| {
            std::env::var(k).ok().filter(|v| !v.is_empty())
        })
    }

    /// Merges the sources, flags first, then `env`, then `file`, then the
    /// defaults, and checks the result.
    pub fn resolve(
        file: FileConfig,
        flags: &Flags,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let defaults = Config::default();
        let addrs = if !flags.addrs.is_empty() {
            flags.addrs.clone()
        } else if !file.grpc.address.is_empty() {
            file.grpc.address
        } else {
            defaults.addrs
        };
        for addr in &addrs {
            if crate::listen::ListenAddr::parse(addr).is_none() {
                return Err(ConfigError::Addr { addr: addr.clone() });
            }
        }

        let containerd = ContainerdConfig {
            address: flags
                .containerd_address
                .clone()
                .or_else(|| env("CONTAINERD_ADDRESS").map(PathBuf::from))
                .or(file.containerd.address)
                .unwrap_or(defaults.containerd.address),
            namespace: flags
                .namespace
                .clone()
                .or_else(|| env("CONTAINERD_NAMESPACE"))
                .or(file.containerd.namespace)
                .unwrap_or(defaults.containerd.namespace),
            snapshotter: flags
                .snapshotter
                .clone()
                .or_else(|| env("CONTAINERD_SNAPSHOTTER"))
                .or(file.containerd.snapshotter)
                .unwrap_or(defaults.containerd.snapshotter),
        };

        let file_tls = file.grpc.tls.unwrap_or_default();
        let cert = flags.tlscert.clone().or(file_tls.cert);
        let key = flags.tlskey.clone().or(file_tls.key);
        let ca = flags.tlscacert.clone().or(file_tls.ca);
        let tls = match (cert, key, ca) {
            (Some(cert), Some(key), ca) => Some(TlsConfig { cert, key, ca }),
            (None, None, None) => None,
            (None, None, Some(ca)) => return Err(ConfigError::TlsCaWithoutCert { ca }),
            _ => return Err(ConfigError::TlsIncomplete),
        };

        let gc = file
            .gc
            .iter()
            .map(|g| {
                Ok(GcPolicy {
                    all: g.all,
                    keep_duration: g
                        .keep_duration
                        .as_ref()
                        .map(|a| a.duration("gc.keep-duration"))
                        .transpose()?,
                    reserved_space: g
                        .reserved_space
                        .as_ref()
                        .map(|a| a.bytes("gc.reserved-space"))
                        .transpose()?,
                    max_used_space: g
                        .max_used_space
                        .as_ref()
                        .map(|a| a.bytes("gc.max-used-space"))
                        .transpose()?,
                    min_free_space: g
                        .min_free_space
                        .as_ref()
                        .map(|a| a.bytes("gc.min-free-space"))
                        .transpose()?,
                    filters: g.filters.clone(),
                })
            })
            .collect::<Result<Vec<_>, ConfigError>>()?;

        let network_err = |source| ConfigError::Network { source };
        let network = match flags
            .network_mode
            .as_deref()
            .or(file.worker.network.as_deref())
        {
            Some(m) => m.parse().map_err(network_err)?,
            None => NetworkMode::default(),
        };
        let cni_defaults = CniConfig::default();
        let cni = CniConfig {
            plugin_dir: file
                .worker
                .cni_plugin_dir
                .unwrap_or(cni_defaults.plugin_dir),
            bridge: file.worker.cni_bridge.unwrap_or(cni_defaults.bridge),
            subnet: match &file.worker.cni_subnet {
                Some(s) => s.parse().map_err(network_err)?,
                None => cni_defaults.subnet,
            },
            masquerade: file
                .worker
                .cni_masquerade
                .unwrap_or(cni_defaults.masquerade),
        };
        kiln_engine::network::cni::check_bridge_name(&cni.bridge).map_err(network_err)?;
        let allow = if flags.allow_insecure_entitlement.is_empty() {
            &file.worker.allow
        } else {
            &flags.allow_insecure_entitlement
        };
        let allow =
            Entitlements::parse(allow).map_err(|source| ConfigError::Entitlement { source })?;

        Ok(Config {
            addrs,
            root: flags.root.clone().or(file.root).unwrap_or(defaults.root),
            containerd,
            tls,
            gc,
            max_parallelism: file.max_parallelism,
            debug: flags.debug || file.debug.unwrap_or(false),
            worker: WorkerConfig {
                network,
                cni,
                allow,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::collections::HashMap;

    #[derive(Parser)]
    struct TestCli {
        #[command(flatten)]
        flags: Flags,
    }

    fn flags(args: &[&str]) -> Flags {
        TestCli::try_parse_from(std::iter::once("kilnd").chain(args.iter().copied()))
            .expect("valid flags")
            .flags
    }

    fn file(text: &str) -> FileConfig {
        FileConfig::parse(text, Path::new("kilnd.toml")).expect("valid file")
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    const FULL: &str = r#"
        root = "/srv/kiln"
        debug = true
        max-parallelism = 4

        [grpc]
        address = ["unix:///run/k.sock", "tcp://0.0.0.0:1234"]

        [grpc.tls]
        cert = "/etc/kiln/cert.pem"
        key = "/etc/kiln/key.pem"

        [containerd]
        address = "/run/file/containerd.sock"
        namespace = "file-ns"
        snapshotter = "native"

        [[gc]]
        filters = ["type==exec.cachemount"]
        keep-duration = "48h"
        max-used-space = "512MB"

        [[gc]]
        all = true
        reserved-space = 1024
        keep-duration = 60
    "#;

    #[test]
    fn defaults_without_any_source() {
        let c = Config::resolve(FileConfig::default(), &flags(&[]), env(&[])).expect("valid");
        assert_eq!(c.addrs, vec!["unix:///run/kiln/kilnd.sock"]);
        assert_eq!(c.root, PathBuf::from("/var/lib/kiln"));
        assert_eq!(
            c.containerd.address,
            PathBuf::from("/run/containerd/containerd.sock")
        );
        assert_eq!(c.containerd.namespace, "default");
        assert_eq!(c.containerd.snapshotter, "overlayfs");
        assert_eq!(c.tls, None);
        assert!(c.gc.is_empty());
        assert_eq!(c.max_parallelism, None);
        assert!(!c.debug);
        assert_eq!(c.worker, WorkerConfig::default());
        assert_eq!(c.worker.network, NetworkMode::Auto);
        assert_eq!(c.worker.allow, Entitlements::default());
    }

    #[test]
    fn worker_network_and_entitlements() {
        let text = r#"
            [worker]
            network = "cni"
            allow = ["network.host"]
            cni-plugin-dir = "/opt/cni/bin"
            cni-bridge = "kilnt0"
            cni-subnet = "10.50.0.0/24"
            cni-masquerade = false
        "#;
        let c = Config::resolve(file(text), &flags(&[]), env(&[])).expect("valid");
        assert_eq!(c.worker.network, NetworkMode::Cni);
        assert_eq!(c.worker.cni.plugin_dir, PathBuf::from("/opt/cni/bin"));
        assert_eq!(c.worker.cni.bridge, "kilnt0");
        assert_eq!(c.worker.cni.subnet.to_string(), "10.50.0.0/24");
        assert!(!c.worker.cni.masquerade);
        assert_eq!(
            c.worker.allow,
            Entitlements::parse(&["network.host"]).expect("known")
        );
        // Flags replace the file.
        let c = Config::resolve(
            file(text),
            &flags(&[
                "--network-mode",
                "host",
                "--allow-insecure-entitlement",
                "security.insecure",
            ]),
            env(&[]),
        )
        .expect("valid");
        assert_eq!(c.worker.network, NetworkMode::Host);
        assert_eq!(
            c.worker.allow,
            Entitlements::parse(&["security.insecure"]).expect("known")
        );
    }

    #[test]
    fn file_overrides_defaults() {
        let c = Config::resolve(file(FULL), &flags(&[]), env(&[])).expect("valid");
        assert_eq!(c.addrs, vec!["unix:///run/k.sock", "tcp://0.0.0.0:1234"]);
        assert_eq!(c.root, PathBuf::from("/srv/kiln"));
        assert_eq!(
            c.containerd.address,
            PathBuf::from("/run/file/containerd.sock")
        );
        assert_eq!(c.containerd.namespace, "file-ns");
        assert_eq!(c.containerd.snapshotter, "native");
        assert_eq!(
            c.tls,
            Some(TlsConfig {
                cert: "/etc/kiln/cert.pem".into(),
                key: "/etc/kiln/key.pem".into(),
                ca: None
            })
        );
        assert_eq!(c.max_parallelism, Some(4));
        assert!(c.debug);
        assert_eq!(
            c.gc,
            vec![
                GcPolicy {
                    filters: vec!["type==exec.cachemount".into()],
                    keep_duration: Some(Duration::from_secs(48 * 3600)),
                    max_used_space: Some(512 << 20),
                    ..Default::default()
                },
                GcPolicy {
                    all: true,
                    reserved_space: Some(1024),
                    keep_duration: Some(Duration::from_secs(60)),
                    ..Default::default()
                },
            ]
        );
    }

    #[test]
    fn env_overrides_file_for_containerd_only() {
        let c = Config::resolve(
            file(FULL),
            &flags(&[]),
            env(&[
                ("CONTAINERD_ADDRESS", "/run/env.sock"),
                ("CONTAINERD_NAMESPACE", "env-ns"),
                ("CONTAINERD_SNAPSHOTTER", "env-snap"),
                ("KILN_ROOT", "/ignored"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.containerd.address, PathBuf::from("/run/env.sock"));
        assert_eq!(c.containerd.namespace, "env-ns");
        assert_eq!(c.containerd.snapshotter, "env-snap");
        assert_eq!(c.root, PathBuf::from("/srv/kiln"), "root has no env");
    }

    #[test]
    fn flags_override_env_and_file() {
        let c = Config::resolve(
            file(FULL),
            &flags(&[
                "--addr",
                "tcp://127.0.0.1:9",
                "--addr=unix:///tmp/x.sock",
                "--root",
                "/flag/root",
                "--containerd-address",
                "/run/flag.sock",
                "--namespace",
                "flag-ns",
                "--snapshotter",
                "flag-snap",
                "--tlscert",
                "/f/cert.pem",
                "--tlscacert",
                "/f/ca.pem",
            ]),
            env(&[
                ("CONTAINERD_ADDRESS", "/run/env.sock"),
                ("CONTAINERD_NAMESPACE", "env-ns"),
                ("CONTAINERD_SNAPSHOTTER", "env-snap"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.addrs, vec!["tcp://127.0.0.1:9", "unix:///tmp/x.sock"]);
        assert_eq!(c.root, PathBuf::from("/flag/root"));
        assert_eq!(c.containerd.address, PathBuf::from("/run/flag.sock"));
        assert_eq!(c.containerd.namespace, "flag-ns");
        assert_eq!(c.containerd.snapshotter, "flag-snap");
        assert_eq!(
            c.tls,
            Some(TlsConfig {
                cert: "/f/cert.pem".into(),
                key: "/etc/kiln/key.pem".into(),
                ca: Some("/f/ca.pem".into()),
            }),
            "TLS merges per field"
        );
    }

    #[test]
    fn debug_flag_or_file() {
        let c =
            Config::resolve(file("debug = false"), &flags(&["--debug"]), env(&[])).expect("valid");
        assert!(c.debug);
    }

    #[test]
    fn invalid_settings_are_refused() {
        let err = |f: FileConfig, a: &[&str]| {
            Config::resolve(f, &flags(a), env(&[]))
                .expect_err("invalid")
                .to_string()
        };
        assert_eq!(
            err(FileConfig::default(), &["--addr", "fd://3"]),
            "invalid address \"fd://3\" (expected unix:///path or tcp://host:port)"
        );
        assert_eq!(
            err(FileConfig::default(), &["--tlscert", "/c.pem"]),
            "TLS needs both a certificate (--tlscert) and a key (--tlskey)"
        );
        assert_eq!(
            err(FileConfig::default(), &["--tlscacert", "/ca.pem"]),
            "a TLS CA (--tlscacert /ca.pem) needs --tlscert and --tlskey too"
        );
        assert_eq!(
            err(file("[[gc]]\nmax-used-space = \"lots\""), &[]),
            "invalid size \"lots\" for gc.max-used-space (expected bytes or e.g. 512MB, 10GB)"
        );
        assert_eq!(
            err(file("[[gc]]\nkeep-duration = \"soon\""), &[]),
            "invalid duration \"soon\" for gc.keep-duration (expected seconds or e.g. 48h, 7d)"
        );
        // Values past u64 are refused, not saturated or wrapped.
        assert_eq!(
            err(file("[[gc]]\nreserved-space = \"99999999999T\""), &[]),
            "invalid size \"99999999999T\" for gc.reserved-space (expected bytes or e.g. 512MB, 10GB)"
        );
        assert_eq!(
            err(file("[[gc]]\nkeep-duration = \"300000000000000d\""), &[]),
            "invalid duration \"300000000000000d\" for gc.keep-duration (expected seconds or e.g. 48h, 7d)"
        );
        let chain = |f: FileConfig, a: &[&str]| {
            let e = Config::resolve(f, &flags(a), env(&[])).expect_err("invalid");
            let mut s = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(c) = src {
                s.push_str(": ");
                s.push_str(&c.to_string());
                src = c.source();
            }
            s
        };
        assert_eq!(
            chain(FileConfig::default(), &["--network-mode", "bridge"]),
            "invalid [worker] network setting: unknown network mode \"bridge\" (host, cni or auto)"
        );
        assert_eq!(
            chain(file("[worker]\ncni-subnet = \"10.0.0.1/8\""), &[]),
            "invalid [worker] network setting: invalid cni subnet \"10.0.0.1/8\": host bits are set (use the network address)"
        );
        assert!(chain(file("[worker]\ncni-bridge = \"no/slash\""), &[])
            .contains("invalid cni bridge name \"no/slash\""));
        assert_eq!(
            chain(file("[worker]\nallow = [\"network.hots\"]"), &[]),
            "invalid entitlement in [worker] allow or --allow-insecure-entitlement: unknown entitlement network.hots"
        );
        assert!(chain(
            FileConfig::default(),
            &["--allow-insecure-entitlement", "device"]
        )
        .contains("unknown entitlement device"));
        let unknown =
            FileConfig::parse("rot = \"/x\"", Path::new("k.toml")).expect_err("unknown key");
        assert_eq!(unknown.to_string(), "invalid config file k.toml");
        assert!(
            std::error::Error::source(&unknown)
                .map(|s| s.to_string().contains("rot"))
                .unwrap_or(false),
            "the cause names the key"
        );
    }

    #[test]
    fn example_config_parses_as_shipped_and_uncommented() {
        let text = include_str!("../../../deploy/kilnd.toml");
        let c = Config::resolve(file(text), &flags(&[]), env(&[])).expect("valid example");
        assert_eq!(c.addrs, vec![DEFAULT_ADDR]);
        assert_eq!(c.tls, None);
        // Settings are commented as `#key`, prose as `# text`: enabling every
        // setting must still give a valid file.
        let enabled: String = text
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if !rest.starts_with(' ') => rest,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let c = Config::resolve(file(&enabled), &flags(&[]), env(&[])).expect("valid enabled");
        assert_eq!(c.addrs.len(), 2);
        assert_eq!(c.root, PathBuf::from(DEFAULT_ROOT));
        assert_eq!(c.max_parallelism, Some(4));
        assert!(c.tls.as_ref().and_then(|t| t.ca.as_ref()).is_some());
        assert_eq!(c.gc.len(), 2);
        assert_eq!(c.worker.network, NetworkMode::Auto);
        assert_eq!(c.worker.cni, CniConfig::default());
        assert!(c
            .worker
            .allow
            .contains(kiln_engine::entitlements::Entitlement::NetworkHost));
        assert_eq!(c.gc[1].min_free_space, Some(20 << 30));
        assert_eq!(
            c.gc[1].keep_duration,
            Some(Duration::from_secs(60 * 86_400))
        );
    }
}
