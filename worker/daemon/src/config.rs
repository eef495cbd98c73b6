//! kilnd's configuration.
//!
//! Each setting is taken from the first source that has it: a flag, then
//! the environment (only the three containerd variables ctr and nerdctl
//! read), then `kilnd.toml`, then the built-in default. [`Config::resolve`]
//! is the pure part of that, so precedence is tested without touching the
//! process environment or `/etc`.

use kiln_engine::entitlements::{EntitlementError, Entitlements};
use kiln_engine::network::{CniConfig, NetworkError, NetworkMode};
use kiln_engine::sources::limits::FetchLimits;
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
    /// Plain TCP allowed beyond loopback (`--insecure-tcp`).
    pub insecure_tcp: bool,
    /// Tenant mappings; empty means one tenant, `containerd.namespace`.
    pub tenants: Vec<crate::tenants::TenantConfig>,
    /// Cache GC policies as ListWorkers reports them; empty means the
    /// defaults of [`crate::workers::default_gc_policies`].
    pub gc: Vec<GcPolicy>,
    /// Most build steps run at once; `None` leaves it to the engine.
    pub max_parallelism: Option<usize>,
    /// Debug logging.
    pub debug: bool,
    /// How RUN steps run: their network, the entitlements builds may get.
    pub worker: WorkerConfig,
    /// `[registry."HOST"]`: mirrors, plain HTTP, TLS trust and client
    /// certificates per registry (BuildKit's buildkitd.toml shape; the
    /// embedded CLI reads the same tables).
    pub registry: std::sync::Arc<kiln_registry::HostsConfig>,
    /// `[contexts]`: how long and how much of the clients' build contexts
    /// kilnd keeps between builds (`crate::contexts`).
    pub contexts: ContextsConfig,
    /// `[history]`: how many build records kilnd keeps, how long and how
    /// big (`crate::history`).
    pub history: crate::history::HistoryConfig,
    /// `[fetch]`: bounds on each HTTP(S) download and git fetch of a
    /// build (`ADD <url>`, remote contexts, git sources). A SIGHUP applies
    /// a new one to the builds that start after it (`Daemon::fetch`).
    pub fetch: FetchLimits,
    /// How log lines are written (`--log-format`, `[log] format`).
    pub log_format: LogFormat,
    /// The group that owns the unix sockets (`--group`, `[grpc] gid`);
    /// `None` leaves root's.
    pub group: Option<u32>,
    /// Where Prometheus metrics are served over HTTP (`--metrics-addr`,
    /// `[grpc] metrics-address`), `host:port`; `None` serves none.
    pub metrics_addr: Option<String>,
    /// The configuration file read, if any (SIGHUP reads it again).
    pub file: Option<PathBuf>,
    /// The configuration file that was asked for but does not exist (the
    /// defaults apply, as in buildkitd; logged at startup).
    pub missing_file: Option<PathBuf>,
}

/// The format of kilnd's log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line, its fields at the top level.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(ConfigError::LogFormat {
                value: other.to_string(),
            }),
        }
    }
}

/// The `[contexts]` section: limits on the build contexts kept so that a
/// rebuild transfers only what changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ContextsConfig {
    /// A context not used for this long is removed (`max-age`).
    pub max_age: Duration,
    /// The least recently used contexts are removed until the rest take at
    /// most this many bytes of file content (`max-size`); 0 keeps none.
    pub max_size: u64,
}

impl Default for ContextsConfig {
    /// BuildKit's default GC keeps local sources for 48 hours too.
    fn default() -> Self {
        ContextsConfig {
            max_age: Duration::from_secs(48 * 3600),
            max_size: 4 << 30,
        }
    }
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
            insecure_tcp: false,
            tenants: Vec::new(),
            gc: Vec::new(),
            max_parallelism: None,
            debug: false,
            worker: WorkerConfig::default(),
            registry: Default::default(),
            contexts: ContextsConfig::default(),
            history: Default::default(),
            fetch: FetchLimits::default(),
            log_format: LogFormat::Text,
            group: None,
            metrics_addr: None,
            file: None,
            missing_file: None,
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
    #[error("invalid address {addr:?} (expected unix:///path, tcp://host:port or fd://)")]
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
    /// Plain TCP on an address that is not loopback, without the opt-in.
    #[error(
        "refusing to listen on {addr} without TLS: anyone who reaches it could build as root; \
         plain TCP is only for loopback addresses (127.0.0.1, [::1], localhost). Configure TLS \
         (--tlscert, --tlskey, --tlscacert) or opt in with --insecure-tcp \
         ([grpc] insecure-tcp = true)"
    )]
    InsecureTcp { addr: String },
    /// TLS without a client CA, without the opt-in.
    #[error(
        "refusing to listen on {addr} with TLS but without client certificates: any client \
         could build. Set a client CA (--tlscacert, [grpc.tls] ca) or opt in with \
         --tls-allow-no-client-auth ([grpc.tls] allow-no-client-auth = true)"
    )]
    NoClientAuth { addr: String },
    /// A `[registry."HOST"]` table is not usable (its message names the
    /// file, the host and the key).
    #[error("invalid [registry] table")]
    Registry {
        #[source]
        source: kiln_registry::RegistryError,
    },
    /// `--log-format` / `[log] format` is neither `text` nor `json`.
    #[error("invalid log format {value:?} (expected text or json)")]
    LogFormat { value: String },
    /// `--group` names no group of this host.
    #[error("unknown group {group:?} for the unix sockets (--group)")]
    Group { group: String },
    /// `--metrics-addr` is not `host:port`.
    #[error("invalid metrics address {addr:?} (expected host:port, e.g. 127.0.0.1:9333)")]
    MetricsAddr { addr: String },
    /// A `[[tenant]]` table is incomplete or contradicts another.
    #[error("invalid [[tenant]] {tenant:?}: {problem}")]
    Tenant { tenant: String, problem: String },
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
    /// Allow plain TCP (no TLS) on addresses that are not loopback; anyone
    /// who can reach them can build as root.
    #[arg(long)]
    pub insecure_tcp: bool,
    /// Allow TLS without --tlscacert: clients are not authenticated.
    #[arg(long)]
    pub tls_allow_no_client_auth: bool,
    /// Debug logging, with a line per build step.
    #[arg(long)]
    pub debug: bool,
    /// Log line format: text or json [default: text].
    #[arg(long, value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Group (name or gid) that owns the unix sockets, so its members can
    /// build without root (as buildkitd's --group).
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Serve Prometheus metrics on http://HOST:PORT/metrics.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics_addr: Option<String>,
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

impl Flags {
    /// The configuration file kilnd reads: `--config`, else
    /// [`DEFAULT_CONFIG`].
    pub fn config_file(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
    }
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
    tenant: Vec<TenantSection>,
    #[serde(default)]
    worker: WorkerSection,
    /// Parsed by `kiln-registry`, the one reader of these tables (the
    /// embedded CLI's `HostsConfig::from_kilnd_toml` too).
    #[serde(default)]
    registry: kiln_registry::HostsConfig,
    #[serde(default)]
    contexts: ContextsSection,
    #[serde(default)]
    history: HistorySection,
    #[serde(default)]
    fetch: FetchSection,
    #[serde(default)]
    log: LogSection,
}

/// `[fetch]`: bounds on remote fetches; 0 means no bound.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FetchSection {
    max_size: Option<Amount>,
    idle_timeout: Option<Amount>,
    timeout: Option<Amount>,
}

/// `[log]`: how log lines are written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct LogSection {
    format: Option<String>,
}

/// `[contexts]`: the build contexts kept between builds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct ContextsSection {
    max_age: Option<Amount>,
    max_size: Option<Amount>,
}

/// `[history]`: the build records kept.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct HistorySection {
    max_age: Option<Amount>,
    max_entries: Option<usize>,
    max_size: Option<Amount>,
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
    insecure_tcp: Option<bool>,
    tls: Option<TlsSection>,
    /// The unix sockets' group id (buildkitd's `[grpc] gid`).
    gid: Option<u32>,
    metrics_address: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct TlsSection {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    allow_no_client_auth: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct TenantSection {
    name: String,
    namespace: String,
    #[serde(rename = "match")]
    matcher: MatchSection,
    max_builds: Option<usize>,
    cache_max: Option<Amount>,
}

/// Exactly one of the keys.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchSection {
    cn: Option<String>,
    san: Option<String>,
    uid: Option<u32>,
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
        let mut file: FileConfig = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        // The `[registry]` tables have one reader, shared with the embedded
        // CLI: it also checks hosts, mirrors and key pairs.
        file.registry = kiln_registry::HostsConfig::parse(text, path)
            .map_err(|source| ConfigError::Registry { source })?;
        Ok(file)
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
    ///
    /// A file that does not exist gives the defaults, as in buildkitd: the
    /// default path quietly, a `--config` path with a warning at startup
    /// ([`Config::missing_file`]). A file that exists but cannot be read or
    /// parsed is an error.
    pub fn load(flags: &Flags) -> Result<Config, ConfigError> {
        let path = flags.config_file();
        let (file, read, missing) = match FileConfig::read(&path) {
            Ok(f) => (f, Some(path), None),
            Err(ConfigError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                let missing = flags.config.is_some().then_some(path);
                (FileConfig::default(), None, missing)
            }
            Err(e) => return Err(e),
        };
        let mut c = Config::resolve(file, flags, |k| {
            std::env::var(k).ok().filter(|v| !v.is_empty())
        })?;
        c.file = read;
        c.missing_file = missing;
        if let Some(g) = &flags.group {
            c.group = Some(group_id(g)?);
        }
        Ok(c)
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
        let insecure_tcp = flags.insecure_tcp || file.grpc.insecure_tcp.unwrap_or(false);
        let no_client_auth =
            flags.tls_allow_no_client_auth || file_tls.allow_no_client_auth.unwrap_or(false);
        check_network_surface(&addrs, tls.as_ref(), insecure_tcp, no_client_auth)?;
        let tenants = tenants(&file.tenant)?;

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

        let log_format = match flags.log_format.as_deref().or(file.log.format.as_deref()) {
            Some(f) => f.parse()?,
            None => LogFormat::Text,
        };
        let metrics_addr = flags
            .metrics_addr
            .clone()
            .or(file.grpc.metrics_address.clone());
        if let Some(a) = &metrics_addr {
            let valid = a
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
            if !valid {
                return Err(ConfigError::MetricsAddr { addr: a.clone() });
            }
        }
        // A numeric --group is taken here; a name is looked up by `load`.
        let group = match flags.group.as_deref().map(str::parse::<u32>) {
            Some(Ok(gid)) => Some(gid),
            _ => file.grpc.gid,
        };

        Ok(Config {
            log_format,
            group,
            metrics_addr,
            file: None,
            missing_file: None,
            addrs,
            root: flags.root.clone().or(file.root).unwrap_or(defaults.root),
            containerd,
            tls,
            insecure_tcp,
            tenants,
            gc,
            max_parallelism: file.max_parallelism,
            debug: flags.debug || file.debug.unwrap_or(false),
            worker: WorkerConfig {
                network,
                cni,
                allow,
            },
            registry: std::sync::Arc::new(file.registry),
            contexts: ContextsConfig {
                max_age: match &file.contexts.max_age {
                    Some(a) => a.duration("contexts.max-age")?,
                    None => defaults.contexts.max_age,
                },
                max_size: match &file.contexts.max_size {
                    Some(a) => a.bytes("contexts.max-size")?,
                    None => defaults.contexts.max_size,
                },
            },
            history: crate::history::HistoryConfig {
                max_age: match &file.history.max_age {
                    Some(a) => a.duration("history.max-age")?,
                    None => defaults.history.max_age,
                },
                max_entries: file
                    .history
                    .max_entries
                    .unwrap_or(defaults.history.max_entries),
                max_size: match &file.history.max_size {
                    Some(a) => a.bytes("history.max-size")?,
                    None => defaults.history.max_size,
                },
            },
            fetch: FetchLimits {
                max_size: match &file.fetch.max_size {
                    Some(a) => a.bytes("fetch.max-size")?,
                    None => defaults.fetch.max_size,
                },
                idle_timeout: match &file.fetch.idle_timeout {
                    Some(a) => a.duration("fetch.idle-timeout")?,
                    None => defaults.fetch.idle_timeout,
                },
                timeout: match &file.fetch.timeout {
                    Some(a) => a.duration("fetch.timeout")?,
                    None => defaults.fetch.timeout,
                },
            },
        })
    }
}

/// The gid of `group`, a number or a group name of this host.
fn group_id(group: &str) -> Result<u32, ConfigError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        _ => Err(ConfigError::Group {
            group: group.to_string(),
        }),
    }
}

/// Whether a listening host is a loopback address: an IP literal in
/// 127.0.0.0/8 or `::1`, or `localhost`. A name that needs resolving is
/// not trusted to stay loopback.
fn is_loopback_host(host: &str) -> bool {
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The network rules for `tcp://` addresses: plain TCP only on loopback
/// unless `insecure_tcp`; TLS only with a client CA unless
/// `no_client_auth`.
fn check_network_surface(
    addrs: &[String],
    tls: Option<&TlsConfig>,
    insecure_tcp: bool,
    no_client_auth: bool,
) -> Result<(), ConfigError> {
    for addr in addrs {
        let Some(crate::listen::ListenAddr::Tcp(hostport)) = crate::listen::ListenAddr::parse(addr)
        else {
            continue;
        };
        match tls {
            None => {
                let host = hostport
                    .rsplit_once(':')
                    .map(|(h, _)| h)
                    .unwrap_or_default();
                if !insecure_tcp && !is_loopback_host(host) {
                    return Err(ConfigError::InsecureTcp { addr: addr.clone() });
                }
            }
            Some(t) if t.ca.is_none() && !no_client_auth => {
                return Err(ConfigError::NoClientAuth { addr: addr.clone() })
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// The `[[tenant]]` tables, checked: valid and unique names and
/// namespaces, exactly one match key, no identity matched twice.
fn tenants(sections: &[TenantSection]) -> Result<Vec<crate::tenants::TenantConfig>, ConfigError> {
    use crate::tenants::{valid_name, valid_namespace, Match, TenantConfig};
    let mut out: Vec<TenantConfig> = Vec::new();
    for t in sections {
        let bad = |problem: String| ConfigError::Tenant {
            tenant: t.name.clone(),
            problem,
        };
        if !valid_name(&t.name) {
            return Err(bad("name must be 1 to 64 ASCII letters and digits".into()));
        }
        if !valid_namespace(&t.namespace) {
            return Err(bad(format!(
                "namespace {:?} is not a containerd namespace name",
                t.namespace
            )));
        }
        let m = &t.matcher;
        let matcher = match (&m.cn, &m.san, m.uid) {
            (Some(cn), None, None) if !cn.is_empty() => Match::Cn(cn.clone()),
            (None, Some(san), None) if !san.is_empty() => Match::San(san.clone()),
            (None, None, Some(uid)) => Match::Uid(uid),
            _ => {
                return Err(bad(
                    "match needs exactly one of cn = \"NAME\", san = \"NAME\" or uid = N".into(),
                ))
            }
        };
        if t.max_builds == Some(0) {
            return Err(bad("max-builds must be at least 1".into()));
        }
        let cache_max = t
            .cache_max
            .as_ref()
            .map(|a| a.bytes("tenant.cache-max"))
            .transpose()?;
        for other in &out {
            if other.name == t.name {
                return Err(bad("another [[tenant]] has the same name".into()));
            }
            if other.namespace == t.namespace {
                return Err(bad(format!(
                    "namespace {:?} is also tenant {:?}'s: tenants must not share a namespace",
                    t.namespace, other.name
                )));
            }
            if other.matcher == matcher {
                return Err(bad(format!(
                    "match {{ {matcher} }} is also tenant {:?}'s",
                    other.name
                )));
            }
        }
        out.push(TenantConfig {
            name: t.name.clone(),
            namespace: t.namespace.clone(),
            matcher,
            max_builds: t.max_builds,
            cache_max,
        });
    }
    Ok(out)
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
        allow-no-client-auth = true

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
    fn operations_settings_from_flags_or_file() {
        let c = Config::resolve(FileConfig::default(), &flags(&[]), env(&[])).expect("valid");
        assert_eq!(
            (c.log_format, c.group, c.metrics_addr),
            (LogFormat::Text, None, None)
        );
        let text =
            "[log]\nformat = \"json\"\n[grpc]\ngid = 1001\nmetrics-address = \"127.0.0.1:9333\"\n";
        let c = Config::resolve(file(text), &flags(&[]), env(&[])).expect("valid");
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.group, Some(1001));
        assert_eq!(c.metrics_addr.as_deref(), Some("127.0.0.1:9333"));
        let c = Config::resolve(
            file(text),
            &flags(&[
                "--log-format",
                "text",
                "--group",
                "7",
                "--metrics-addr",
                "[::1]:1",
                "--addr",
                "fd://",
            ]),
            env(&[]),
        )
        .expect("valid");
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.group, Some(7));
        assert_eq!(c.metrics_addr.as_deref(), Some("[::1]:1"));
        assert_eq!(c.addrs, vec!["fd://"]);
    }

    #[test]
    fn a_missing_config_file_means_the_defaults() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("nope.toml");
        let c =
            Config::load(&flags(&["--config", missing.to_str().expect("utf8")])).expect("defaults");
        assert_eq!(c.missing_file.as_deref(), Some(missing.as_path()));
        assert_eq!(c.file, None);
        assert_eq!(c.addrs, vec![DEFAULT_ADDR]);
        // One that exists but is a directory is still an error.
        let err = Config::load(&flags(&["--config", dir.path().to_str().expect("utf8")]))
            .expect_err("unreadable");
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
        // A group name this host does not have.
        let err = Config::load(&flags(&[
            "--config",
            missing.to_str().expect("utf8"),
            "--group",
            "no-such-group-kiln",
        ]))
        .expect_err("unknown group");
        assert_eq!(
            err.to_string(),
            "unknown group \"no-such-group-kiln\" for the unix sockets (--group)"
        );
        let root = Config::load(&flags(&[
            "--config",
            missing.to_str().expect("utf8"),
            "--group",
            "root",
        ]))
        .expect("root exists");
        assert_eq!(root.group, Some(0));
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
            err(FileConfig::default(), &["--addr", "fd://2"]),
            "invalid address \"fd://2\" (expected unix:///path, tcp://host:port or fd://)"
        );
        assert_eq!(
            err(FileConfig::default(), &["--log-format", "xml"]),
            "invalid log format \"xml\" (expected text or json)"
        );
        assert_eq!(
            err(file("[log]\nformat = \"yaml\""), &[]),
            "invalid log format \"yaml\" (expected text or json)"
        );
        assert_eq!(
            err(FileConfig::default(), &["--metrics-addr", "9333"]),
            "invalid metrics address \"9333\" (expected host:port, e.g. 127.0.0.1:9333)"
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
    fn plain_tcp_is_for_loopback_unless_opted_in() {
        let resolve = |a: &[&str], f: &str| Config::resolve(file(f), &flags(a), env(&[]));
        for ok in [
            "tcp://127.0.0.1:1234",
            "tcp://127.8.0.1:1",
            "tcp://[::1]:1234",
            "tcp://localhost:1234",
            "unix:///run/k.sock",
        ] {
            let c = resolve(&["--addr", ok], "").expect(ok);
            assert!(!c.insecure_tcp);
        }
        for bad in [
            "tcp://0.0.0.0:1234",
            "tcp://[::]:1234",
            "tcp://10.0.0.1:1",
            "tcp://build.example:1",
        ] {
            let e = resolve(&["--addr", "unix:///k.sock", "--addr", bad], "").expect_err(bad);
            assert!(
                matches!(&e, ConfigError::InsecureTcp { addr } if addr == bad),
                "{e}"
            );
            let text = e.to_string();
            assert!(
                text.starts_with(&format!("refusing to listen on {bad} without TLS"))
                    && text.contains("--insecure-tcp")
                    && text.contains("[grpc] insecure-tcp = true"),
                "{text}"
            );
            // The opt-in, as a flag or in the file.
            let c = resolve(&["--addr", bad, "--insecure-tcp"], "").expect("flag opt-in");
            assert!(c.insecure_tcp);
            let c = resolve(&["--addr", bad], "[grpc]\ninsecure-tcp = true").expect("file opt-in");
            assert!(c.insecure_tcp);
            // TLS with a client CA needs no opt-in.
            resolve(
                &[
                    "--addr",
                    bad,
                    "--tlscert=/c",
                    "--tlskey=/k",
                    "--tlscacert=/ca",
                ],
                "",
            )
            .expect("mutual TLS");
        }
    }

    #[test]
    fn tls_without_a_client_ca_needs_an_opt_in() {
        let resolve = |a: &[&str], f: &str| Config::resolve(file(f), &flags(a), env(&[]));
        let tls = ["--tlscert=/c", "--tlskey=/k"];
        let with = |extra: &[&'static str]| {
            let mut v = vec!["--addr", "tcp://127.0.0.1:1234"];
            v.extend_from_slice(&tls);
            v.extend_from_slice(extra);
            v
        };
        let e = resolve(&with(&[]), "").expect_err("no client auth");
        assert_eq!(
            e.to_string(),
            "refusing to listen on tcp://127.0.0.1:1234 with TLS but without client \
             certificates: any client could build. Set a client CA (--tlscacert, [grpc.tls] ca) \
             or opt in with --tls-allow-no-client-auth ([grpc.tls] allow-no-client-auth = true)"
        );
        resolve(&with(&["--tls-allow-no-client-auth"]), "").expect("flag opt-in");
        resolve(&with(&[]), "[grpc.tls]\nallow-no-client-auth = true").expect("file opt-in");
        // TLS settings with only unix sockets listen on nothing with TLS.
        resolve(&["--addr", "unix:///k.sock", tls[0], tls[1]], "").expect("unix only");
    }

    #[test]
    fn tenants_are_read_and_checked() {
        use crate::tenants::{Match, TenantConfig};
        let c = Config::resolve(
            file(
                r#"
                [[tenant]]
                name = "alice"
                namespace = "kiln-alice"
                match = { cn = "alice" }
                max-builds = 2
                cache-max = "10GB"

                [[tenant]]
                name = "bob"
                namespace = "kiln-bob"
                match = { uid = 1001 }

                [[tenant]]
                name = "ci"
                namespace = "kiln.ci"
                match = { san = "ci.example" }
            "#,
            ),
            &flags(&[]),
            env(&[]),
        )
        .expect("valid");
        assert_eq!(
            c.tenants,
            vec![
                TenantConfig {
                    name: "alice".into(),
                    namespace: "kiln-alice".into(),
                    matcher: Match::Cn("alice".into()),
                    max_builds: Some(2),
                    cache_max: Some(10 << 30),
                },
                TenantConfig {
                    name: "bob".into(),
                    namespace: "kiln-bob".into(),
                    matcher: Match::Uid(1001),
                    max_builds: None,
                    cache_max: None,
                },
                TenantConfig {
                    name: "ci".into(),
                    namespace: "kiln.ci".into(),
                    matcher: Match::San("ci.example".into()),
                    max_builds: None,
                    cache_max: None,
                },
            ]
        );

        let err = |tables: &str| {
            Config::resolve(file(tables), &flags(&[]), env(&[]))
                .expect_err(tables)
                .to_string()
        };
        let t = |name: &str, ns: &str, m: &str, extra: &str| {
            format!("[[tenant]]\nname = \"{name}\"\nnamespace = \"{ns}\"\nmatch = {m}\n{extra}\n")
        };
        let a = t("a", "ns-a", "{ cn = \"a\" }", "");
        assert_eq!(
            err(&t("a/b", "ns", "{ uid = 1 }", "")),
            "invalid [[tenant]] \"a/b\": name must be 1 to 64 ASCII letters and digits"
        );
        assert_eq!(
            err(&t("a", "bad/ns", "{ uid = 1 }", "")),
            "invalid [[tenant]] \"a\": namespace \"bad/ns\" is not a containerd namespace name"
        );
        let exactly_one = "invalid [[tenant]] \"a\": match needs exactly one of cn = \"NAME\", \
                           san = \"NAME\" or uid = N";
        assert_eq!(err(&t("a", "ns", "{}", "")), exactly_one);
        assert_eq!(
            err(&t("a", "ns", "{ cn = \"a\", uid = 1 }", "")),
            exactly_one
        );
        assert_eq!(err(&t("a", "ns", "{ cn = \"\" }", "")), exactly_one);
        assert_eq!(
            err(&t("a", "ns", "{ uid = 1 }", "max-builds = 0")),
            "invalid [[tenant]] \"a\": max-builds must be at least 1"
        );
        assert_eq!(
            err(&t("a", "ns", "{ uid = 1 }", "cache-max = \"big\"")),
            "invalid size \"big\" for tenant.cache-max (expected bytes or e.g. 512MB, 10GB)"
        );
        assert_eq!(
            err(&format!("{a}{}", t("a", "ns-b", "{ uid = 1 }", ""))),
            "invalid [[tenant]] \"a\": another [[tenant]] has the same name"
        );
        assert_eq!(
            err(&format!("{a}{}", t("b", "ns-a", "{ uid = 1 }", ""))),
            "invalid [[tenant]] \"b\": namespace \"ns-a\" is also tenant \"a\"'s: tenants \
             must not share a namespace"
        );
        assert_eq!(
            err(&format!("{a}{}", t("b", "ns-b", "{ cn = \"a\" }", ""))),
            "invalid [[tenant]] \"b\": match { cn = \"a\" } is also tenant \"a\"'s"
        );
        // Unknown keys in a table or its match are refused, as everywhere.
        let unknown = FileConfig::parse(&t("a", "ns", "{ user = \"a\" }", ""), Path::new("k.toml"))
            .expect_err("unknown match key");
        assert!(
            std::error::Error::source(&unknown)
                .map(|s| s.to_string().contains("user"))
                .unwrap_or(false),
            "{unknown:?}"
        );
    }

    #[test]
    fn registry_tables_refuse_unknown_keys_and_bad_hosts_by_name() {
        let c = Config::resolve(
            file("[registry.\"127.0.0.1:5000\"]\nhttp = true\ninsecure = true\n"),
            &flags(&[]),
            env(&[]),
        )
        .expect("valid");
        let h = &c.registry.hosts["127.0.0.1:5000"];
        assert!(h.http == Some(true) && h.insecure);
        let chain = |e: &ConfigError| {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(e);
            while let Some(c) = src {
                s.push_str(&format!(": {c}"));
                src = c.source();
            }
            s
        };
        let unknown = FileConfig::parse(
            "[registry.\"r.example\"]\nmirror = [\"m.example\"]\n",
            Path::new("k.toml"),
        )
        .expect_err("unknown key");
        assert!(chain(&unknown).contains("mirror"), "{}", chain(&unknown));
        let bad = FileConfig::parse(
            "[registry.\"https://r.example\"]\nhttp = true\n",
            Path::new("k.toml"),
        )
        .expect_err("a URL, not a host");
        assert!(chain(&bad).contains("https://r.example"), "{}", chain(&bad));
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
        assert!(!c.insecure_tcp, "the example keeps the safe default");
        assert_eq!(c.tenants.len(), 2);
        assert_eq!(c.tenants[0].cache_max, Some(10 << 30));
        assert_eq!(c.worker.network, NetworkMode::Auto);
        assert_eq!(c.worker.cni, CniConfig::default());
        assert!(c
            .worker
            .allow
            .contains(kiln_engine::entitlements::Entitlement::NetworkHost));
        assert_eq!(c.gc[1].min_free_space, Some(20 << 30));
        // The embedded CLI's reader sees the same registries.
        assert_eq!(
            *c.registry,
            kiln_registry::HostsConfig::parse(&enabled, Path::new("kilnd.toml")).expect("hosts")
        );
        let example = &c.registry.hosts["registry.example.com:5000"];
        assert_eq!(example.ca, [PathBuf::from("/etc/kiln/registry-ca.pem")]);
        assert_eq!(example.keypair.len(), 1);
        assert_eq!(
            c.registry.hosts["docker.io"].mirrors,
            ["mirror.example.com", "cache.example.com/docker"]
        );
        assert_eq!(
            c.gc[1].keep_duration,
            Some(Duration::from_secs(60 * 86_400))
        );
        assert_eq!(c.contexts, ContextsConfig::default());
        assert_eq!(c.history, crate::history::HistoryConfig::default());
    }

    #[test]
    fn history_limits_parse() {
        let c = Config::resolve(
            file("[history]\nmax-age = \"2h\"\nmax-entries = 5\nmax-size = \"1MB\""),
            &flags(&[]),
            env(&[]),
        )
        .expect("valid");
        assert_eq!(c.history.max_age, Duration::from_secs(7200));
        assert_eq!(c.history.max_entries, 5);
        assert_eq!(c.history.max_size, 1 << 20);
        let unknown = FileConfig::parse("[history]\nmaxEntries = 3", Path::new("k.toml"));
        assert!(unknown.is_err());
    }

    #[test]
    fn contexts_limits_parse_and_bad_ones_are_refused() {
        let c = Config::resolve(file(""), &flags(&[]), env(&[])).expect("valid");
        assert_eq!(c.contexts.max_age, Duration::from_secs(48 * 3600));
        assert_eq!(c.contexts.max_size, 4 << 30);
        let c = Config::resolve(
            file("[contexts]\nmax-age = \"2h\"\nmax-size = \"512MB\""),
            &flags(&[]),
            env(&[]),
        )
        .expect("valid");
        assert_eq!(c.contexts.max_age, Duration::from_secs(7200));
        assert_eq!(c.contexts.max_size, 512 << 20);
        let c = Config::resolve(file("[contexts]\nmax-size = 0"), &flags(&[]), env(&[]))
            .expect("valid");
        assert_eq!(c.contexts.max_size, 0);
        let err = Config::resolve(
            file("[contexts]\nmax-age = \"soon\""),
            &flags(&[]),
            env(&[]),
        )
        .expect_err("invalid");
        assert_eq!(
            err.to_string(),
            "invalid duration \"soon\" for contexts.max-age (expected seconds or e.g. 48h, 7d)"
        );
        let unknown = FileConfig::parse("[contexts]\nmax-count = 3", Path::new("k.toml"))
            .expect_err("unknown key");
        assert!(std::error::Error::source(&unknown)
            .is_some_and(|s| s.to_string().contains("max-count")));
    }

    #[test]
    fn fetch_limits_parse_and_bad_ones_are_refused() {
        let c = Config::resolve(file(""), &flags(&[]), env(&[])).expect("valid");
        assert_eq!(c.fetch, FetchLimits::default());
        let c = Config::resolve(
            file("[fetch]\nmax-size = \"1MB\"\nidle-timeout = \"5s\"\ntimeout = 0"),
            &flags(&[]),
            env(&[]),
        )
        .expect("valid");
        assert_eq!(
            c.fetch,
            FetchLimits {
                max_size: 1 << 20,
                idle_timeout: Duration::from_secs(5),
                timeout: Duration::ZERO,
            }
        );
        let err = Config::resolve(file("[fetch]\nmax-size = \"lots\""), &flags(&[]), env(&[]))
            .expect_err("invalid");
        assert_eq!(
            err.to_string(),
            "invalid size \"lots\" for fetch.max-size (expected bytes or e.g. 512MB, 10GB)"
        );
    }
}
