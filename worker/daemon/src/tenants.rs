//! Tenants: who a client is, and which containerd namespace it builds in.
//!
//! A client's identity is what its connection proves: the uid of the peer
//! on a unix socket (`SO_PEERCRED`), or the subject CN and SANs of the
//! client certificate rustls verified against the client CA. `[[tenant]]`
//! tables in `kilnd.toml` map identities to a containerd namespace, with
//! optional limits. Without any table every client is the one default
//! tenant in the configured namespace (kilnd's single-namespace mode).
//! With tables, an identity no table matches is refused
//! (`PermissionDenied`, naming the identity), and so is one that matches
//! two tables.
//!
//! Everything a tenant builds lives in its own namespace, through its own
//! engine: builds, images, cache records, cache mounts, `du` and `prune`.
//! Jobs and sessions, which are keyed by client-chosen ids, are keyed by
//! tenant too ([`Tenant::scoped`]), so another tenant's ref or session id
//! is simply not found.

use kiln_engine::network::Cni;
use kiln_engine::Engine;
use kiln_snapshot::Containerd;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::Status;

/// What a connection proves about its client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Identity {
    /// The peer's uid on a unix socket.
    Uid(u32),
    /// A client certificate verified against the client CA.
    Cert(CertIdentity),
}

/// The names in a verified client certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CertIdentity {
    /// The subject's common name (the first, if several).
    pub cn: Option<String>,
    /// Subject alternative names: DNS names, e-mail addresses and URIs as
    /// written, IP addresses in their usual text form.
    pub sans: Vec<String>,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Uid(uid) => write!(f, "uid {uid}"),
            Identity::Cert(c) => {
                write!(
                    f,
                    "client certificate CN={:?}",
                    c.cn.as_deref().unwrap_or("")
                )?;
                if !c.sans.is_empty() {
                    write!(f, " SAN={:?}", c.sans.join(","))?;
                }
                Ok(())
            }
        }
    }
}

/// The CN and SANs of a DER certificate; `None` if it does not parse (it
/// was verified by rustls, so that does not happen in practice).
pub fn cert_identity(der: &[u8]) -> Option<CertIdentity> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .map(str::to_string);
    let mut sans = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                    sans.push(s.to_string())
                }
                GeneralName::IPAddress(b) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*b) {
                        sans.push(std::net::Ipv4Addr::from(v4).to_string());
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*b) {
                        sans.push(std::net::Ipv6Addr::from(v6).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Some(CertIdentity { cn, sans })
}

/// Which identities a `[[tenant]]` table takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    /// A client certificate whose subject CN is exactly this.
    Cn(String),
    /// A client certificate with exactly this subject alternative name.
    San(String),
    /// A unix-socket peer with this uid.
    Uid(u32),
}

impl Match {
    fn matches(&self, id: &Identity) -> bool {
        match (self, id) {
            (Match::Cn(cn), Identity::Cert(c)) => c.cn.as_deref() == Some(cn.as_str()),
            (Match::San(san), Identity::Cert(c)) => c.sans.iter().any(|s| s == san),
            (Match::Uid(uid), Identity::Uid(u)) => uid == u,
            _ => false,
        }
    }
}

impl fmt::Display for Match {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Match::Cn(s) => write!(f, "cn = {s:?}"),
            Match::San(s) => write!(f, "san = {s:?}"),
            Match::Uid(u) => write!(f, "uid = {u}"),
        }
    }
}

/// One `[[tenant]]` table, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TenantConfig {
    /// The tenant's name: logs, errors, its state directory.
    pub name: String,
    /// The containerd namespace of everything it builds.
    pub namespace: String,
    pub matcher: Match,
    /// Most builds it may run at once; another Solve is refused with
    /// `ResourceExhausted`.
    pub max_builds: Option<usize>,
    /// Its build cache is pruned (least recently used first) down to this
    /// many bytes after each of its builds.
    pub cache_max: Option<u64>,
}

/// Whether `s` is a containerd namespace name (containerd's rule: labels of
/// letters and digits joined by single `.`, `_` or `-`, at most 76 bytes).
pub fn valid_namespace(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 76
        && s.split(['.', '_', '-'])
            .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_alphanumeric()))
}

/// Whether `s` can name a tenant: 1 to 64 ASCII letters and digits. It
/// names a directory and prefixes job keys, whose directory names turn
/// every other character into `_`: with letters and digits only, two
/// tenants' keys never map to one directory.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric())
}

/// The tenant `id` belongs to. `tenants` is not empty (without tables
/// there is only the default tenant and nothing to resolve).
pub fn resolve<'a>(
    tenants: &'a [TenantConfig],
    id: Option<&Identity>,
) -> Result<&'a TenantConfig, Status> {
    let Some(id) = id else {
        return Err(Status::permission_denied(
            "kilnd maps clients to tenants and this connection carries no identity \
             (use the unix socket, or TLS with a client certificate)",
        ));
    };
    let mut found = tenants.iter().filter(|t| t.matcher.matches(id));
    match (found.next(), found.next()) {
        (Some(t), None) => Ok(t),
        (None, _) => Err(Status::permission_denied(format!(
            "{id} is not mapped to a tenant in kilnd's configuration"
        ))),
        (Some(a), Some(b)) => Err(Status::permission_denied(format!(
            "{id} matches both tenants {:?} and {:?}; refusing to guess",
            a.name, b.name
        ))),
    }
}

/// The key of a client-chosen id inside tenant `tenant` (`None`: the
/// default tenant); see [`Tenant::scoped`].
pub fn scoped(tenant: Option<&str>, id: &str) -> String {
    match tenant {
        None => id.to_string(),
        Some(name) => format!("{name}/{id}"),
    }
}

/// A tenant at run time: its engine on its namespace and its limits.
pub struct Tenant {
    /// `None` for the default tenant (no `[[tenant]]` tables).
    pub name: Option<String>,
    pub ctrd: Containerd,
    /// Its engine, with its own state directory (mount points, FIFOs,
    /// cache-mount locks, the context hash cache).
    pub engine: Engine,
    /// See [`TenantConfig::cache_max`].
    pub cache_max: Option<u64>,
    /// Its build records (`<state dir>/history`).
    pub history: Arc<crate::history::BuildHistory>,
    /// This kilnd's worker id, which its records' results leases name
    /// (`historyresults::OWNER_LABEL`).
    pub owner: String,
    max_builds: Option<usize>,
    builds: Option<Arc<Semaphore>>,
}

/// What every tenant of one kilnd shares.
pub struct Shared<'a> {
    /// The kept contexts (kilnd's own trees: see
    /// [`Engine::with_owned_locals`]).
    pub contexts: &'a std::path::Path,
    /// The steps' network (`None`: the host's).
    pub cni: Option<Cni>,
    pub registry: Arc<kiln_registry::HostsConfig>,
    pub fetch: kiln_engine::sources::limits::SharedLimits,
    pub history: crate::history::HistoryConfig,
    /// This kilnd's worker id.
    pub owner: &'a str,
}

impl Tenant {
    /// The tenant on `ctrd` (already in its namespace) with state in
    /// `state_dir`; the caller sweeps its engine before first use.
    pub fn new(
        config: Option<&TenantConfig>,
        ctrd: Containerd,
        state_dir: PathBuf,
        shared: Shared<'_>,
    ) -> Tenant {
        let history = Arc::new(crate::history::BuildHistory::open(
            state_dir.join("history"),
            shared.history,
        ));
        let engine = Engine::with_network(ctrd.clone(), state_dir.clone(), shared.cni)
            .with_registry(shared.registry)
            .with_fetch_limits(shared.fetch)
            .with_owned_locals(shared.contexts);
        let max_builds = config.and_then(|c| c.max_builds);
        Tenant {
            name: config.map(|c| c.name.clone()),
            ctrd,
            engine,
            cache_max: config.and_then(|c| c.cache_max),
            history,
            owner: shared.owner.to_string(),
            max_builds,
            builds: max_builds.map(|n| Arc::new(Semaphore::new(n))),
        }
    }

    /// The key of a client-chosen id (build ref, session id) inside this
    /// tenant: the id itself for the default tenant, otherwise prefixed by
    /// the tenant's name, so equal ids of two tenants never meet.
    pub fn scoped(&self, id: &str) -> String {
        scoped(self.name.as_deref(), id)
    }

    /// Counts one more running build against `max-builds`; the permit
    /// ends it. Over the limit the build is refused, not queued: the
    /// client sees why at once rather than a build that does not start.
    pub fn start_build(&self) -> Result<Option<OwnedSemaphorePermit>, Status> {
        let Some(sem) = &self.builds else {
            return Ok(None);
        };
        sem.clone().try_acquire_owned().map(Some).map_err(|_| {
            Status::resource_exhausted(format!(
                "tenant {:?} already runs {} builds (max-builds in kilnd's configuration)",
                self.name.as_deref().unwrap_or_default(),
                self.max_builds.unwrap_or_default()
            ))
        })
    }

    /// Prunes the tenant's cache down to `cache-max`, if set (after each
    /// of its builds).
    pub async fn enforce_cache_max(&self) {
        let Some(max) = self.cache_max else { return };
        let opts = kiln_engine::prune::PruneOptions {
            keep_storage: Some(max),
            ..Default::default()
        };
        match self.engine.prune(&opts).await {
            Ok(r) if !r.removed.is_empty() => tracing::info!(
                tenant = self.name.as_deref().unwrap_or_default(),
                removed = r.removed.len(),
                reclaimed = r.reclaimed,
                cache_max = max,
                "pruned the tenant's cache to cache-max"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(
                tenant = self.name.as_deref().unwrap_or_default(),
                error = %kiln_engine::error::error_chain(&e),
                "cannot prune the tenant's cache to cache-max"
            ),
        }
    }
}

/// The client's own id of a key [`scoped`] made for `tenant`.
pub fn unscoped<'a>(tenant: Option<&str>, key: &'a str) -> &'a str {
    match tenant {
        None => key,
        Some(name) => key
            .strip_prefix(name)
            .and_then(|k| k.strip_prefix('/'))
            .unwrap_or(key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scoped_id_gives_the_clients_id_back() {
        assert_eq!(scoped(None, "s1"), "s1");
        assert_eq!(scoped(Some("alice"), "s1"), "alice/s1");
        assert_eq!(unscoped(Some("alice"), "alice/s1"), "s1");
        assert_eq!(unscoped(None, "alice/s1"), "alice/s1");
        // An id with a slash of its own keeps it.
        assert_eq!(unscoped(Some("a"), &scoped(Some("a"), "b/c")), "b/c");
    }

    fn tenant(name: &str, m: Match) -> TenantConfig {
        TenantConfig {
            name: name.into(),
            namespace: format!("kiln-{name}"),
            matcher: m,
            max_builds: None,
            cache_max: None,
        }
    }

    fn cert(cn: &str, sans: &[&str]) -> Identity {
        Identity::Cert(CertIdentity {
            cn: Some(cn.into()),
            sans: sans.iter().map(|s| s.to_string()).collect(),
        })
    }

    #[test]
    fn identities_resolve_to_exactly_one_tenant() {
        let ts = vec![
            tenant("alice", Match::Cn("alice".into())),
            tenant("bob", Match::San("bob.example".into())),
            tenant("carol", Match::Uid(1001)),
        ];
        let name = |id: Option<&Identity>| resolve(&ts, id).map(|t| t.name.clone());
        assert_eq!(name(Some(&cert("alice", &[]))).expect("alice"), "alice");
        assert_eq!(
            name(Some(&cert("x", &["a", "bob.example"]))).expect("bob"),
            "bob"
        );
        assert_eq!(name(Some(&Identity::Uid(1001))).expect("carol"), "carol");

        // A CN is not a SAN, a uid is not a certificate, case matters.
        for id in [
            cert("bob.example", &[]),
            cert("x", &["alice"]),
            cert("Alice", &[]),
            Identity::Uid(0),
        ] {
            let e = name(Some(&id)).expect_err("unmapped");
            assert_eq!(e.code(), tonic::Code::PermissionDenied);
            assert!(e.message().contains(&id.to_string()), "{}", e.message());
        }
        assert_eq!(
            name(None).expect_err("anonymous").code(),
            tonic::Code::PermissionDenied
        );
        let both = name(Some(&cert("alice", &["bob.example"]))).expect_err("ambiguous");
        assert_eq!(both.code(), tonic::Code::PermissionDenied);
        assert!(both.message().contains("\"alice\" and \"bob\""), "{both:?}");
    }

    #[test]
    fn identities_are_shown_as_they_match() {
        assert_eq!(Identity::Uid(7).to_string(), "uid 7");
        assert_eq!(
            cert("alice", &["a.example", "10.0.0.1"]).to_string(),
            "client certificate CN=\"alice\" SAN=\"a.example,10.0.0.1\""
        );
    }

    #[test]
    fn certificate_names_are_read() {
        let mut params =
            rcgen::CertificateParams::new(vec!["alice.example".to_string(), "10.1.2.3".into()])
                .expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "alice");
        let key = rcgen::KeyPair::generate().expect("key");
        let c = params.self_signed(&key).expect("cert");
        assert_eq!(
            cert_identity(c.der()).expect("parses"),
            CertIdentity {
                cn: Some("alice".into()),
                sans: vec!["alice.example".into(), "10.1.2.3".into()],
            }
        );
        assert_eq!(cert_identity(b"not a certificate"), None);
    }

    #[test]
    fn names_and_namespaces_are_checked() {
        for ok in ["kiln-alice", "a", "a.b_c-d", "ns1"] {
            assert!(valid_namespace(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a..b", "a/b", "ä", &"a".repeat(77)] {
            assert!(!valid_namespace(bad), "{bad}");
        }
        for ok in ["alice", "Team1"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a/b", "../x", "a b", "a.b", "a_b", "a-b"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
