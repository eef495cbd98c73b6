//! The builder store, as buildx keeps its instances: one JSON file per
//! builder under `<dir>/builders/`, the current builder's name in
//! `<dir>/current`, every change made under an exclusive lock on
//! `<dir>/lock` and written to a temporary file renamed into place, so
//! concurrent `kiln` invocations never see or leave a half-written
//! store. `<dir>` is `$KILN_CONFIG_DIR`, else `$HOME/.kiln`.
//!
//! The builder named `default` always exists and is the embedded engine
//! (buildx's `default` is the Docker engine's builder); it cannot be
//! removed or replaced. Which builder a command uses: `--builder`, else
//! `KILN_BUILDER`, else the current one.

use crate::kubedriver::opts::KubeOpts;
use anyhow::{anyhow, bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// The builder that always exists: the engine in this process.
pub const DEFAULT: &str = "default";

/// How a builder runs its builds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// The engine in the `kiln` process, against containerd.
    Embedded,
    /// A kilnd (or BuildKit) daemon at an address.
    Remote,
    /// kilnd pods of a Deployment on a Kubernetes cluster (`KUBECONFIG`).
    Kubernetes,
}

impl Driver {
    pub fn parse(s: &str) -> Result<Driver> {
        match s {
            "embedded" => Ok(Driver::Embedded),
            "remote" => Ok(Driver::Remote),
            "kubernetes" => Ok(Driver::Kubernetes),
            // buildx's other drivers: kiln does not create them (yet).
            "docker-container" | "docker" => {
                bail!("driver {s} is not supported yet (supported: embedded, remote, kubernetes)")
            }
            _ => bail!("failed to find driver {s:?} (supported: embedded, remote, kubernetes)"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Embedded => "embedded",
            Driver::Remote => "remote",
            Driver::Kubernetes => "kubernetes",
        }
    }
}

/// TLS files of a remote builder (buildx's remote driver options
/// `cacert`, `cert`, `key`, `servername`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tls {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// One stored builder.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Builder {
    pub name: String,
    pub driver: Driver,
    /// The daemon's address (`unix://…`, `tcp://…`) of a remote builder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Tls::is_empty")]
    pub tls: Tls,
    /// The kubernetes driver's settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubeOpts>,
    /// Seconds since the epoch.
    #[serde(default)]
    pub created: u64,
}

impl Tls {
    fn is_empty(&self) -> bool {
        *self == Tls::default()
    }
}

impl Builder {
    /// The builder `default`, never stored.
    pub fn embedded_default() -> Builder {
        Builder {
            name: DEFAULT.to_string(),
            driver: Driver::Embedded,
            endpoint: None,
            tls: Tls::default(),
            kubernetes: None,
            created: 0,
        }
    }

    /// A new builder from `kiln builder create`'s arguments, checked as
    /// buildx checks them: the remote driver needs an endpoint, takes
    /// only its four options (absolute paths), and TLS needs a CA and
    /// both or neither of cert and key; the kubernetes driver takes its
    /// options ([`KubeOpts::parse`]) and no endpoint (the cluster is
    /// `KUBECONFIG`'s current context).
    pub fn new(
        name: &str,
        driver: Driver,
        endpoint: Option<&str>,
        opts: &BTreeMap<String, String>,
    ) -> Result<Builder> {
        let name = validate_name(name)?;
        if name == DEFAULT {
            bail!("builder name {DEFAULT:?} is reserved for the embedded engine");
        }
        let mut b = Builder {
            name,
            driver,
            endpoint: None,
            tls: Tls::default(),
            kubernetes: None,
            created: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        };
        match driver {
            Driver::Kubernetes => {
                if let Some(e) = endpoint {
                    bail!("the kubernetes driver takes no endpoint (got {e:?}): it uses KUBECONFIG's current context");
                }
                b.kubernetes = Some(KubeOpts::parse(&b.name, opts)?);
            }
            Driver::Embedded => {
                if let Some(e) = endpoint {
                    bail!("the embedded driver takes no endpoint (got {e:?})");
                }
                if let Some(k) = opts.keys().next() {
                    bail!("invalid driver option {k} for embedded driver");
                }
            }
            Driver::Remote => {
                let e = endpoint.filter(|e| !e.is_empty()).ok_or_else(|| {
                    anyhow!("the remote driver needs an endpoint (unix://… or tcp://…)")
                })?;
                if !(e.starts_with("unix://") || e.starts_with("tcp://")) {
                    bail!("endpoint {e:?}: kiln connects to unix:// and tcp:// addresses");
                }
                b.endpoint = Some(e.to_string());
                for (k, v) in opts {
                    let abs = |v: &str| -> Result<PathBuf> {
                        let p = PathBuf::from(v);
                        if !p.is_absolute() {
                            bail!("non-absolute path '{v}' provided for {k}");
                        }
                        Ok(p)
                    };
                    match k.as_str() {
                        "cacert" => b.tls.ca = Some(abs(v)?),
                        "cert" => b.tls.cert = Some(abs(v)?),
                        "key" => b.tls.key = Some(abs(v)?),
                        "servername" => b.tls.server_name = Some(v.clone()),
                        "default-load" => {
                            bail!("driver option default-load is not supported yet")
                        }
                        _ => bail!("invalid driver option {k} for remote driver"),
                    }
                }
                if !b.tls.is_empty() {
                    let mut missing = Vec::new();
                    if b.tls.ca.is_none() {
                        missing.push("cacert");
                    }
                    if b.tls.cert.is_some() && b.tls.key.is_none() {
                        missing.push("key");
                    }
                    if b.tls.key.is_some() && b.tls.cert.is_none() {
                        missing.push("cert");
                    }
                    if !missing.is_empty() {
                        bail!("tls enabled, but missing keys {}", missing.join(", "));
                    }
                }
            }
        }
        Ok(b)
    }
}

/// buildx's rule for names: a letter, then letters, digits and `._-`;
/// stored lower-case.
pub fn validate_name(s: &str) -> Result<String> {
    let mut chars = s.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !ok {
        bail!("invalid name {s}, name needs to start with a letter and may not contain symbols, except ._-");
    }
    Ok(s.to_ascii_lowercase())
}

/// The store in one directory.
pub struct Store {
    dir: PathBuf,
}

/// The store's lock, held for one read-modify-write.
struct Locked {
    _lock: Flock<File>,
}

impl Store {
    /// `$KILN_CONFIG_DIR`, else `$HOME/.kiln`.
    pub fn from_env() -> Result<Store> {
        if let Some(d) = std::env::var_os("KILN_CONFIG_DIR").filter(|d| !d.is_empty()) {
            return Ok(Store::at(PathBuf::from(d)));
        }
        let home = std::env::var_os("HOME")
            .filter(|h| !h.is_empty())
            .ok_or_else(|| {
                anyhow!("neither KILN_CONFIG_DIR nor HOME is set: no place for the builder store")
            })?;
        Ok(Store::at(PathBuf::from(home).join(".kiln")))
    }

    pub fn at(dir: PathBuf) -> Store {
        Store { dir }
    }

    fn builders_dir(&self) -> PathBuf {
        self.dir.join("builders")
    }

    fn file_of(&self, name: &str) -> PathBuf {
        self.builders_dir().join(format!("{name}.json"))
    }

    fn lock(&self) -> Result<Locked> {
        fs::create_dir_all(self.builders_dir())
            .with_context(|| format!("cannot create the builder store {}", self.dir.display()))?;
        let path = self.dir.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let lock = Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| anyhow!("cannot lock {}: {e}", path.display()))?;
        Ok(Locked { _lock: lock })
    }

    /// Writes `bytes` to `path` through a temporary file in the same
    /// directory, so a reader sees the old or the new file, never half.
    fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(
            ".{}.{}.tmp",
            path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
            std::process::id()
        ));
        let mut f =
            File::create(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }

    fn read(&self, name: &str) -> Result<Option<Builder>> {
        let path = self.file_of(name);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .with_context(|| format!("builder file {} is not valid", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Stores a new builder; a name in use fails (buildx's `existing
    /// instance` error), as does `default`.
    pub fn create(&self, b: &Builder, make_current: bool) -> Result<()> {
        let _l = self.lock()?;
        if b.name == DEFAULT || self.read(&b.name)?.is_some() {
            bail!(
                "existing instance for {:?}, remove it first or pick another name",
                b.name
            );
        }
        Self::write_atomic(&self.file_of(&b.name), &serde_json::to_vec_pretty(b)?)?;
        if make_current {
            Self::write_atomic(&self.dir.join("current"), b.name.as_bytes())?;
        }
        Ok(())
    }

    /// A builder by name (`default` included).
    pub fn get(&self, name: &str) -> Result<Builder> {
        let name = validate_name(name)?;
        if name == DEFAULT {
            return Ok(Builder::embedded_default());
        }
        self.read(&name)?
            .ok_or_else(|| anyhow!("no builder {name:?} found"))
    }

    /// Every builder, `default` first, then by name.
    pub fn list(&self) -> Result<Vec<Builder>> {
        let mut out = vec![Builder::embedded_default()];
        let dir = self.builders_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                e.file_name()
                    .to_str()?
                    .strip_suffix(".json")
                    .map(str::to_string)
            })
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort();
        for n in names {
            if let Some(b) = self.read(&n)? {
                out.push(b);
            }
        }
        Ok(out)
    }

    /// The current builder's name (`default` when none was chosen, or
    /// when the chosen one was removed by another process).
    pub fn current(&self) -> Result<String> {
        let path = self.dir.join("current");
        let name = match fs::read_to_string(&path) {
            Ok(s) => s.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DEFAULT.to_string()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        if name.is_empty() || (name != DEFAULT && self.read(&name)?.is_none()) {
            return Ok(DEFAULT.to_string());
        }
        Ok(name)
    }

    /// Makes `name` the current builder.
    pub fn use_builder(&self, name: &str) -> Result<()> {
        let _l = self.lock()?;
        let name = validate_name(name)?;
        if name != DEFAULT && self.read(&name)?.is_none() {
            bail!("run `kiln builder create --name {name}` first: no builder {name:?} found");
        }
        Self::write_atomic(&self.dir.join("current"), name.as_bytes())
    }

    /// Removes a builder's record (only: a kubernetes builder's objects
    /// are deleted by `kiln builder rm` before). The current builder falls
    /// back to `default`.
    pub fn remove(&self, name: &str) -> Result<()> {
        let _l = self.lock()?;
        let name = validate_name(name)?;
        if name == DEFAULT {
            bail!("default builder cannot be removed");
        }
        let path = self.file_of(&name);
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("no builder {name:?} found")
            }
            Err(e) => return Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
        let current = self.dir.join("current");
        if fs::read_to_string(&current).is_ok_and(|c| c.trim() == name) {
            Self::write_atomic(&current, DEFAULT.as_bytes())?;
        }
        Ok(())
    }

    /// The builder a command uses: `--builder`, else `KILN_BUILDER`,
    /// else the current one.
    pub fn selected(&self, flag: Option<&str>) -> Result<Builder> {
        let env = std::env::var("KILN_BUILDER").ok().filter(|s| !s.is_empty());
        match flag.map(str::to_string).or(env) {
            Some(n) => self.get(&n),
            None => self.get(&self.current()?),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn remote(name: &str) -> Builder {
        Builder::new(
            name,
            Driver::Remote,
            Some("unix:///run/kilnd.sock"),
            &opts(&[]),
        )
        .expect("must succeed")
    }

    #[test]
    fn create_use_list_inspect_remove_round_trip() {
        let d = tempfile::tempdir().expect("must succeed");
        let s = Store::at(d.path().to_path_buf());
        assert_eq!(s.current().expect("must succeed"), "default");
        assert_eq!(s.list().expect("must succeed").len(), 1);
        s.create(&remote("Kube"), false).expect("must succeed");
        assert_eq!(s.current().expect("must succeed"), "default");
        s.use_builder("kube").expect("must succeed");
        assert_eq!(s.current().expect("must succeed"), "kube");
        let got = s.get("kube").expect("must succeed");
        assert_eq!(got.endpoint.as_deref(), Some("unix:///run/kilnd.sock"));
        assert_eq!(got.driver, Driver::Remote);
        let names: Vec<_> = s
            .list()
            .expect("must succeed")
            .into_iter()
            .map(|b| b.name)
            .collect();
        assert_eq!(names, ["default", "kube"]);
        let err = s
            .create(&remote("kube"), false)
            .expect_err("must fail")
            .to_string();
        assert!(err.contains("existing instance"), "{err}");
        s.remove("kube").expect("must succeed");
        assert_eq!(s.current().expect("must succeed"), "default");
        assert!(s.get("kube").is_err());
        assert!(s
            .remove("kube")
            .expect_err("must fail")
            .to_string()
            .contains("no builder"));
        assert!(s
            .remove("default")
            .expect_err("must fail")
            .to_string()
            .contains("cannot be removed"));
    }

    #[test]
    fn names_and_driver_options_are_checked_as_buildx_checks_them() {
        let bad = |name: &str| validate_name(name).expect_err("must fail").to_string();
        assert!(bad("1abc").contains("needs to start with a letter"));
        assert!(bad("a b").contains("may not contain symbols"));
        assert_eq!(
            validate_name("My.Builder_1-x").expect("must succeed"),
            "my.builder_1-x"
        );
        let err = |d: Driver, e: Option<&str>, o: &[(&str, &str)]| {
            Builder::new("b", d, e, &opts(o))
                .expect_err("must fail")
                .to_string()
        };
        assert!(err(Driver::Remote, None, &[]).contains("needs an endpoint"));
        assert!(err(
            Driver::Remote,
            Some("tcp://h:1"),
            &[("cacert", "rel/ca.pem")]
        )
        .contains("non-absolute path 'rel/ca.pem' provided for cacert"));
        assert!(err(Driver::Remote, Some("tcp://h:1"), &[("cert", "/c")])
            .contains("tls enabled, but missing keys cacert, key"));
        assert!(err(Driver::Remote, Some("tcp://h:1"), &[("foo", "1")])
            .contains("invalid driver option foo for remote driver"));
        assert!(err(
            Driver::Remote,
            Some("tcp://h:1"),
            &[("default-load", "true")]
        )
        .contains("not supported yet"));
        assert!(err(Driver::Embedded, Some("tcp://h:1"), &[]).contains("takes no endpoint"));
        assert!(Driver::parse("docker-container")
            .expect_err("must fail")
            .to_string()
            .contains("not supported yet"));
        assert_eq!(
            Driver::parse("kubernetes").expect("kubernetes"),
            Driver::Kubernetes
        );
        assert!(err(Driver::Kubernetes, Some("ctx"), &[]).contains("takes no endpoint"));
        assert!(err(Driver::Kubernetes, None, &[("cacert", "/ca")])
            .contains("invalid driver option cacert for driver kubernetes"));
        assert!(Driver::parse("nope")
            .expect_err("must fail")
            .to_string()
            .contains("failed to find driver"));
        let ok = Builder::new(
            "b",
            Driver::Remote,
            Some("tcp://h:1"),
            &opts(&[
                ("cacert", "/ca"),
                ("cert", "/c"),
                ("key", "/k"),
                ("servername", "s"),
            ]),
        )
        .expect("must succeed");
        assert_eq!(ok.tls.server_name.as_deref(), Some("s"));
    }

    /// Many processes' worth of writers at once (threads here; each takes
    /// the same file lock a process would): every builder lands, every
    /// file parses, the current one is one of them.
    #[test]
    fn concurrent_changes_do_not_corrupt_the_store() {
        let d = tempfile::tempdir().expect("must succeed");
        let dir = d.path().to_path_buf();
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let dir = dir.clone();
                std::thread::spawn(move || {
                    let s = Store::at(dir);
                    let name = format!("b{i}");
                    s.create(&remote(&name), true).expect("must succeed");
                    for _ in 0..20 {
                        s.use_builder(&name).expect("must succeed");
                        s.list().expect("must succeed");
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("must succeed");
        }
        let s = Store::at(dir);
        assert_eq!(s.list().expect("must succeed").len(), 17);
        assert!(s.current().expect("must succeed").starts_with('b'));
    }

    #[test]
    fn a_removed_current_builder_falls_back_to_default() {
        let d = tempfile::tempdir().expect("must succeed");
        let s = Store::at(d.path().to_path_buf());
        s.create(&remote("x"), true).expect("must succeed");
        fs::remove_file(s.file_of("x")).expect("must succeed");
        assert_eq!(s.current().expect("must succeed"), "default");
        assert_eq!(
            s.selected(None).expect("must succeed").driver,
            Driver::Embedded
        );
        assert_eq!(
            s.selected(Some("default")).expect("must succeed").name,
            "default"
        );
        assert!(s.selected(Some("x")).is_err());
    }
}
