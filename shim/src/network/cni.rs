//! The CNI plugins, invoked directly as the CNI spec describes: the plugin
//! binary named by the config's `type`, the command and the container in
//! `CNI_*` environment variables, the network config as JSON on stdin, the
//! result (or an error object) as JSON on stdout.
//!
//! kiln runs exactly two plugins per step, `loopback` for `lo` and `bridge`
//! (with `host-local` IPAM) for `eth0`, so this is a few dozen lines rather
//! than a client library: no Rust CNI crate is well kept, and the plugin
//! protocol is small and stable.
//!
//! Each attached step has a directory `<state>/steps/<id>/` holding the
//! bind-mounted network namespace (`netns`), the configs it was added with
//! (`attachment.json`, so that DEL uses what ADD used even if kiln's config
//! changed since) and a `lock` file the attaching process holds with
//! `flock` for as long as the step is attached. A directory whose lock can
//! be taken belongs to a dead process: [`sweep`] deletes its network and
//! removes it.

use super::{netns, NetworkError};
use nix::fcntl::{Flock, FlockArg};
use serde_json::{json, Value};
use std::fs::File;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;

/// Where Debian's `containernetworking-plugins` installs the plugins.
pub const DEFAULT_PLUGIN_DIR: &str = "/usr/lib/cni";
/// The host-side bridge of kiln's steps.
pub const DEFAULT_BRIDGE: &str = "kiln0";
/// The steps' subnet: private, and not one Docker (172.17/16), podman or
/// containerd's CNI examples (10.88/16) or BuildKit (10.10/16) use.
pub const DEFAULT_SUBNET: &str = "10.231.0.0/16";
/// The CNI network name (host-local keeps its allocations under
/// `<ipam dir>/<name>/`).
pub const NETWORK_NAME: &str = "kiln";
/// The CNI spec version kiln speaks (plugins 1.0 and later support it).
pub const CNI_VERSION: &str = "1.0.0";
/// The plugins a CNI network of kiln needs in the plugin directory.
pub const PLUGINS: [&str; 3] = ["bridge", "host-local", "loopback"];
/// The step's interface on the bridge.
pub const IFNAME: &str = "eth0";

/// An IPv4 subnet in CIDR notation, `a.b.c.d/n`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Subnet {
    addr: Ipv4Addr,
    prefix: u8,
}

impl Subnet {
    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies in the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - u32::from(self.prefix));
        u32::from(ip) & mask == u32::from(self.addr)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl FromStr for Subnet {
    type Err = NetworkError;

    fn from_str(s: &str) -> Result<Subnet, NetworkError> {
        let bad = |reason| NetworkError::Subnet {
            value: s.to_string(),
            reason,
        };
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| bad("expected an IPv4 CIDR like 10.231.0.0/16"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = prefix.parse().map_err(|_| bad("not a prefix length"))?;
        if !(8..=28).contains(&prefix) {
            return Err(bad("the prefix length must be between 8 and 28"));
        }
        if addr.is_loopback()
            || addr.is_link_local()
            || addr.is_multicast()
            || addr.is_unspecified()
            || addr.is_broadcast()
        {
            return Err(bad(
                "not a unicast network (loopback, link-local, multicast)",
            ));
        }
        let host_bits = u32::from(addr) & !(u32::MAX << (32 - u32::from(prefix)));
        if host_bits != 0 {
            return Err(bad("host bits are set (use the network address)"));
        }
        Ok(Subnet { addr, prefix })
    }
}

/// Checks a bridge name the way the kernel limits interface names.
pub fn check_bridge_name(name: &str) -> Result<(), NetworkError> {
    let bad = |reason| NetworkError::Bridge {
        value: name.to_string(),
        reason,
    };
    if name.is_empty() || name.len() > 15 {
        return Err(bad("an interface name has 1 to 15 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(bad("only letters, digits, '-', '_' and '.' are allowed"));
    }
    Ok(())
}

/// How kiln's CNI network is set up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CniConfig {
    /// Where the plugin binaries are (`CNI_PATH`).
    pub plugin_dir: PathBuf,
    /// The host-side bridge.
    pub bridge: String,
    pub subnet: Subnet,
    /// Whether the bridge plugin masquerades the steps' traffic (needs
    /// `iptables`); without it steps reach only the bridge's subnet.
    pub masquerade: bool,
}

impl Default for CniConfig {
    fn default() -> Self {
        CniConfig {
            plugin_dir: PathBuf::from(DEFAULT_PLUGIN_DIR),
            bridge: DEFAULT_BRIDGE.to_string(),
            subnet: DEFAULT_SUBNET.parse().expect("the default subnet is valid"),
            masquerade: true,
        }
    }
}

impl CniConfig {
    /// Whether everything the network needs is installed: the plugins in
    /// [`CniConfig::plugin_dir`], and `iptables` when masquerading.
    pub fn check_available(&self) -> Result<(), NetworkError> {
        check_bridge_name(&self.bridge)?;
        for p in PLUGINS {
            let path = self.plugin_dir.join(p);
            if !is_executable(&path) {
                return Err(NetworkError::MissingPlugin { path });
            }
        }
        if self.masquerade && find_in_path("iptables").is_none() {
            return Err(NetworkError::NoIptables);
        }
        Ok(())
    }

    /// The bridge plugin's network config, with host-local keeping its
    /// allocations in `ipam_dir`.
    pub fn bridge_conf(&self, ipam_dir: &Path) -> Value {
        json!({
            "cniVersion": CNI_VERSION,
            "name": NETWORK_NAME,
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": self.masquerade,
            "ipam": {
                "type": "host-local",
                "ranges": [[{ "subnet": self.subnet.to_string() }]],
                "routes": [{ "dst": "0.0.0.0/0" }],
                "dataDir": ipam_dir,
            },
        })
    }

    /// The loopback plugin's network config.
    pub fn loopback_conf() -> Value {
        json!({
            "cniVersion": CNI_VERSION,
            "name": format!("{NETWORK_NAME}-loopback"),
            "type": "loopback",
        })
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

/// kiln's CNI network: attaches steps to the bridge and detaches them.
#[derive(Clone, Debug)]
pub struct Cni {
    config: CniConfig,
    state_dir: PathBuf,
}

/// What a step was attached with, kept next to its namespace for DEL.
const RECORD: &str = "attachment.json";

impl Cni {
    /// kiln's network with `config`, keeping its state (namespaces, IPAM
    /// allocations) in `state_dir`. Fails when a plugin is missing.
    pub fn new(config: CniConfig, state_dir: PathBuf) -> Result<Cni, NetworkError> {
        config.check_available()?;
        Ok(Cni { config, state_dir })
    }

    pub fn config(&self) -> &CniConfig {
        &self.config
    }

    /// Where the network keeps its state (namespaces, IPAM allocations).
    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// host-local's data directory: one file per allocated address under
    /// `<ipam dir>/kiln/`.
    pub fn ipam_dir(&self) -> PathBuf {
        self.state_dir.join("ipam")
    }

    /// The directory of attached steps.
    pub fn steps_dir(&self) -> PathBuf {
        steps_dir(&self.state_dir)
    }

    /// Gives step `id` a new network namespace with `lo` up and `eth0` on
    /// the bridge. Whatever was set up is undone when a later part fails.
    pub fn attach(&self, id: &str) -> Result<Attachment, NetworkError> {
        if id.is_empty() || id.contains('/') || id.starts_with('.') {
            return Err(NetworkError::Plugin {
                plugin: "kiln".into(),
                command: "ADD",
                id: id.to_string(),
                message: "invalid step id".into(),
            });
        }
        let steps = self.steps_dir();
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| NetworkError::Io { op, path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&steps)
            .map_err(io("create", &steps))?;
        // Prepared under a temporary name and renamed once locked, so the
        // sweep never sees an attachment without its lock.
        let tmp = steps.join(format!(".new-{id}"));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&tmp)
            .map_err(io("create", &tmp))?;
        let prepared = (|| {
            let lock_path = tmp.join("lock");
            let file = File::create(&lock_path).map_err(io("create", &lock_path))?;
            let lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
                NetworkError::Io {
                    op: "lock",
                    path: lock_path.clone(),
                    source: e.into(),
                }
            })?;
            let record = Record {
                plugin_dir: self.config.plugin_dir.clone(),
                bridge: self.config.bridge_conf(&self.ipam_dir()),
                loopback: CniConfig::loopback_conf(),
            };
            let rec_path = tmp.join(RECORD);
            std::fs::write(&rec_path, record.to_json().to_string())
                .map_err(io("write", &rec_path))?;
            Ok((lock, record))
        })();
        let (lock, record) = match prepared {
            Ok(x) => x,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e);
            }
        };
        let dir = steps.join(id);
        if let Err(e) = std::fs::rename(&tmp, &dir) {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(NetworkError::Io {
                op: "rename",
                path: dir,
                source: e,
            });
        }
        let mut att = Attachment {
            id: id.to_string(),
            dir,
            record,
            address: None,
            _lock: lock,
        };
        match att.add() {
            Ok(address) => {
                att.address = address;
                Ok(att)
            }
            Err(e) => {
                if let Err(undo) = att.teardown() {
                    tracing::warn!(id, error = %undo, "cannot undo a failed cni attach");
                }
                Err(e)
            }
        }
    }
}

/// The configs a step was attached with.
#[derive(Clone, Debug)]
struct Record {
    plugin_dir: PathBuf,
    bridge: Value,
    loopback: Value,
}

impl Record {
    fn to_json(&self) -> Value {
        json!({
            "pluginDir": self.plugin_dir,
            "bridge": self.bridge,
            "loopback": self.loopback,
        })
    }

    fn from_json(v: &Value) -> Option<Record> {
        Some(Record {
            plugin_dir: PathBuf::from(v.get("pluginDir")?.as_str()?),
            bridge: v.get("bridge")?.clone(),
            loopback: v.get("loopback")?.clone(),
        })
    }
}

/// A step attached to kiln's network. Detach it with
/// [`Attachment::detach`]; if the process dies first, [`sweep`] does.
#[derive(Debug)]
pub struct Attachment {
    id: String,
    dir: PathBuf,
    record: Record,
    address: Option<String>,
    /// Held until the attachment is gone: a live owner.
    _lock: Flock<File>,
}

impl Attachment {
    /// The bind-mounted network namespace, for the runtime spec.
    pub fn netns(&self) -> PathBuf {
        self.dir.join("netns")
    }

    /// The step's address on the bridge (`10.231.0.2/16`), as IPAM gave it.
    pub fn address(&self) -> Option<&str> {
        self.address.as_deref()
    }

    fn add(&self) -> Result<Option<String>, NetworkError> {
        let ns = self.netns();
        netns::create(&ns).map_err(|source| NetworkError::Io {
            op: "create network namespace",
            path: ns.clone(),
            source,
        })?;
        invoke(
            &self.record.plugin_dir,
            &self.record.loopback,
            "ADD",
            &self.id,
            &ns,
            "lo",
        )?;
        let result = invoke(
            &self.record.plugin_dir,
            &self.record.bridge,
            "ADD",
            &self.id,
            &ns,
            IFNAME,
        )?;
        Ok(result
            .pointer("/ips/0/address")
            .and_then(Value::as_str)
            .map(String::from))
    }

    /// Deletes the step's network (its veth and its address), unmounts
    /// the namespace and removes the step's directory. When a plugin's DEL
    /// fails the directory stays, so that the next sweep retries.
    pub fn detach(self) -> Result<(), NetworkError> {
        self.teardown()
    }

    fn teardown(&self) -> Result<(), NetworkError> {
        teardown(&self.id, &self.dir, &self.record)
    }
}

fn teardown(id: &str, dir: &Path, record: &Record) -> Result<(), NetworkError> {
    let ns = dir.join("netns");
    // DEL works without the namespace too (it then only frees the address).
    let ns_arg = if netns::is_mounted(&ns) {
        ns.clone()
    } else {
        PathBuf::new()
    };
    invoke(
        &record.plugin_dir,
        &record.bridge,
        "DEL",
        id,
        &ns_arg,
        IFNAME,
    )?;
    invoke(
        &record.plugin_dir,
        &record.loopback,
        "DEL",
        id,
        &ns_arg,
        "lo",
    )?;
    netns::remove(&ns).map_err(|source| NetworkError::Io {
        op: "unmount",
        path: ns.clone(),
        source,
    })?;
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(NetworkError::Io {
            op: "remove",
            path: dir.to_path_buf(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn steps_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("steps")
}

/// Runs one plugin command and returns its JSON result (`Null` when it
/// printed nothing, as DEL does).
fn invoke(
    plugin_dir: &Path,
    conf: &Value,
    command: &'static str,
    id: &str,
    netns: &Path,
    ifname: &str,
) -> Result<Value, NetworkError> {
    let plugin = conf
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let fail = |message: String| NetworkError::Plugin {
        plugin: plugin.clone(),
        command,
        id: id.to_string(),
        message,
    };
    let path = plugin_dir.join(&plugin);
    let mut child = Command::new(&path)
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", ifname)
        .env("CNI_PATH", plugin_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run {}: {e}", path.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(conf.to_string().as_bytes())
            .map_err(|e| fail(format!("cannot write its config: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| fail(format!("cannot wait for it: {e}")))?;
    let parsed: Option<Value> = serde_json::from_slice(&out.stdout).ok();
    if !out.status.success() {
        // The spec's error object: {"code", "msg", "details"}.
        let msg = parsed
            .as_ref()
            .and_then(|v| {
                let msg = v.get("msg")?.as_str()?;
                Some(match v.get("details").and_then(Value::as_str) {
                    Some(d) if !d.is_empty() => format!("{msg}: {d}"),
                    _ => msg.to_string(),
                })
            })
            .unwrap_or_else(|| {
                let text = String::from_utf8_lossy(&out.stderr).trim().to_string();
                if text.is_empty() {
                    format!("exited with {}", out.status)
                } else {
                    text
                }
            });
        return Err(fail(msg));
    }
    Ok(parsed.unwrap_or(Value::Null))
}

/// Detaches every step whose attaching process is gone (its lock is free):
/// DEL through the plugins with the configs it was added with, unmount,
/// remove. Returns how many it cleaned; failures are logged with the step
/// id and left for the next sweep.
pub fn sweep(state_dir: &Path) -> usize {
    let steps = steps_dir(state_dir);
    let Ok(entries) = std::fs::read_dir(&steps) else {
        return 0;
    };
    let mut cleaned = 0;
    for entry in entries.flatten() {
        let dir = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let lock = match File::open(dir.join("lock")) {
            Ok(f) => match Flock::lock(f, FlockArg::LockExclusiveNonblock) {
                Ok(l) => Some(l),
                // Held: a live process owns it.
                Err(_) => continue,
            },
            // A `.new-` directory without its lock yet may be a live
            // attach between mkdir and lock; anything else without a lock
            // is dead.
            Err(_) if name.starts_with(".new-") => continue,
            Err(_) => None,
        };
        let id = name.strip_prefix(".new-").unwrap_or(&name).to_string();
        let record = std::fs::read(dir.join(RECORD))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .and_then(|v| Record::from_json(&v));
        let res = match &record {
            Some(r) => teardown(&id, &dir, r),
            // Never got as far as the namespace.
            None => netns::remove(&dir.join("netns"))
                .and_then(|()| std::fs::remove_dir_all(&dir))
                .map_err(|source| NetworkError::Io {
                    op: "remove",
                    path: dir.clone(),
                    source,
                }),
        };
        drop(lock);
        match res {
            Ok(()) => {
                tracing::info!(id, "removed the network of a dead step");
                cleaned += 1;
            }
            Err(e) => tracing::warn!(id, error = %e, "cannot remove the network of a dead step"),
        }
    }
    cleaned
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_are_checked() {
        let s: Subnet = "10.231.0.0/16".parse().expect("valid");
        assert_eq!(s.to_string(), "10.231.0.0/16");
        assert!(s.contains("10.231.7.9".parse().expect("ip")));
        assert!(!s.contains("10.232.0.1".parse().expect("ip")));
        for (bad, why) in [
            ("10.231.0.0", "expected an IPv4 CIDR"),
            ("10.231.0.1/16", "host bits are set"),
            ("127.0.0.0/8", "not a unicast network"),
            ("169.254.0.0/16", "not a unicast network"),
            ("10.0.0.0/30", "between 8 and 28"),
            ("fd00::/64", "not an IPv4 address"),
            ("10.0.0.0/x", "not a prefix length"),
        ] {
            let err = bad.parse::<Subnet>().expect_err(bad).to_string();
            assert!(err.contains(why), "{bad}: {err}");
            assert!(err.contains(bad), "{err} names the value");
        }
    }

    #[test]
    fn bridge_names_are_interface_names() {
        assert!(check_bridge_name("kiln0").is_ok());
        assert!(check_bridge_name("").is_err());
        assert!(check_bridge_name("a-very-long-bridge").is_err());
        assert!(check_bridge_name("br/0").is_err());
    }

    #[test]
    fn the_bridge_config_is_what_the_plugins_expect() {
        let cfg = CniConfig {
            plugin_dir: "/usr/lib/cni".into(),
            bridge: "kilntest0".into(),
            subnet: "10.99.0.0/24".parse().expect("subnet"),
            masquerade: false,
        };
        let conf = cfg.bridge_conf(Path::new("/var/lib/kiln/net/ipam"));
        assert_eq!(
            conf,
            json!({
                "cniVersion": "1.0.0",
                "name": "kiln",
                "type": "bridge",
                "bridge": "kilntest0",
                "isGateway": true,
                "ipMasq": false,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{ "subnet": "10.99.0.0/24" }]],
                    "routes": [{ "dst": "0.0.0.0/0" }],
                    "dataDir": "/var/lib/kiln/net/ipam",
                },
            })
        );
        assert_eq!(CniConfig::loopback_conf()["type"], "loopback");
        let rec = Record {
            plugin_dir: cfg.plugin_dir.clone(),
            bridge: conf.clone(),
            loopback: CniConfig::loopback_conf(),
        };
        let back = Record::from_json(&rec.to_json()).expect("round trip");
        assert_eq!(back.bridge, conf);
        assert_eq!(back.plugin_dir, cfg.plugin_dir);
    }

    #[test]
    fn missing_plugins_are_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = CniConfig {
            plugin_dir: dir.path().to_path_buf(),
            masquerade: false,
            ..CniConfig::default()
        };
        let err = cfg.check_available().expect_err("no plugins").to_string();
        assert!(
            err.contains(&dir.path().join("bridge").display().to_string()),
            "{err}"
        );
    }

    #[test]
    fn a_plugin_error_object_becomes_the_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let plugin = dir.path().join("failing");
        std::fs::write(
            &plugin,
            "#!/bin/sh\ncat >/dev/null\necho '{\"code\":11,\"msg\":\"no luck\",\"details\":\"for '$CNI_CONTAINERID' on '$CNI_IFNAME'\"}'\nexit 1\n",
        )
        .expect("write plugin");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let conf = json!({"cniVersion": CNI_VERSION, "name": "t", "type": "failing"});
        let err = invoke(dir.path(), &conf, "ADD", "kiln-x", Path::new(""), "eth0")
            .expect_err("fails")
            .to_string();
        assert!(err.contains("no luck: for kiln-x on eth0"), "{err}");
        assert!(err.contains("failing ADD"), "{err}");
    }

    #[test]
    fn the_sweep_leaves_live_steps_and_removes_dead_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let steps = steps_dir(dir.path());
        // A live one: its lock is held.
        let live = steps.join("kiln-live");
        std::fs::create_dir_all(&live).expect("mkdir");
        let held = Flock::lock(
            File::create(live.join("lock")).expect("lock file"),
            FlockArg::LockExclusiveNonblock,
        )
        .map_err(|(_, e)| e)
        .expect("lock");
        // A dead one that never got a namespace or a record.
        let dead = steps.join("kiln-dead");
        std::fs::create_dir_all(&dead).expect("mkdir");
        File::create(dead.join("lock")).expect("lock file");
        assert_eq!(sweep(dir.path()), 1);
        assert!(live.exists());
        assert!(!dead.exists());
        drop(held);
        assert_eq!(sweep(dir.path()), 1);
        assert!(!live.exists());
    }

    /// Runs `f` on a thread in a network namespace of its own (with `lo`
    /// up), so that the bridge, veths and iptables rules the plugins make
    /// never touch the host's network.
    fn in_private_netns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare netns");
            let up = Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .expect("ip");
            assert!(up.success());
            f()
        })
        .join()
        .expect("test thread")
    }

    fn links() -> String {
        let out = Command::new("ip")
            .args(["-o", "link"])
            .output()
            .expect("ip link");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    #[test]
    fn real_plugins_attach_and_detach_without_leftovers() {
        if !kiln_types::testing::needs_root("creating network namespaces") {
            return;
        }
        let cfg = CniConfig {
            bridge: "kilnut0".into(),
            subnet: "10.77.0.0/24".parse().expect("subnet"),
            masquerade: false,
            ..CniConfig::default()
        };
        if let Err(e) = cfg.check_available() {
            panic!("the CNI plugins must be installed (.ci/install): {e}");
        }
        in_private_netns(move || {
            let dir = tempfile::tempdir().expect("tempdir");
            let cni = Cni::new(cfg.clone(), dir.path().join("net")).expect("cni");
            let att = cni.attach("kiln-unit").expect("attach");
            let addr = att.address().expect("an address").to_string();
            let ip: Ipv4Addr = addr
                .split('/')
                .next()
                .unwrap_or_default()
                .parse()
                .expect("ip");
            assert!(cfg.subnet.contains(ip), "{addr}");
            let inside = Command::new("nsenter")
                .arg(format!("--net={}", att.netns().display()))
                .args(["ip", "-o", "addr"])
                .output()
                .expect("nsenter");
            let inside = String::from_utf8_lossy(&inside.stdout).into_owned();
            assert!(inside.contains(&format!("eth0    inet {addr}")), "{inside}");
            assert!(inside.contains("lo    inet 127.0.0.1/8"), "{inside}");
            assert!(
                links().contains("veth"),
                "the host side exists while attached"
            );
            let ipam = cni.ipam_dir().join(NETWORK_NAME);
            assert!(
                ipam.join(ip.to_string()).exists(),
                "host-local recorded the address"
            );

            att.detach().expect("detach");
            assert!(!links().contains("veth"), "{}", links());
            assert!(
                !ipam.join(ip.to_string()).exists(),
                "the address was released"
            );
            let left: Vec<_> = std::fs::read_dir(cni.steps_dir())
                .expect("steps dir")
                .flatten()
                .map(|e| e.file_name())
                .collect();
            assert!(left.is_empty(), "{left:?}");
        });
    }

    #[test]
    fn the_sweep_deletes_a_dead_attachment_through_the_plugins() {
        if !kiln_types::testing::needs_root("creating network namespaces") {
            return;
        }
        let cfg = CniConfig {
            bridge: "kilnut1".into(),
            subnet: "10.78.0.0/24".parse().expect("subnet"),
            masquerade: false,
            ..CniConfig::default()
        };
        in_private_netns(move || {
            let dir = tempfile::tempdir().expect("tempdir");
            let cni = Cni::new(cfg, dir.path().join("net")).expect("cni");
            let att = cni.attach("kiln-dead").expect("attach");
            let ns = att.netns();
            // The owner dies without detaching: only its lock goes away.
            std::mem::forget(att._lock.unlock().expect("unlock"));
            assert_eq!(sweep(dir.path().join("net").as_path()), 1);
            assert!(!ns.exists());
            assert!(!links().contains("veth"), "{}", links());
            let ipam = cni.ipam_dir().join(NETWORK_NAME);
            let allocations: Vec<_> = std::fs::read_dir(&ipam)
                .expect("ipam dir")
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<Ipv4Addr>().is_ok())
                .collect();
            assert!(allocations.is_empty(), "{allocations:?}");
        });
    }
}
