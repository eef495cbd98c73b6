//! `kiln --addr ADDR build`: the client of a kilnd (or any BuildKit) daemon.
//! It serves the session (FileSync for the context and Dockerfile, FileSend
//! for outputs), asks for a `dockerfile.v0` solve, and renders Status.

use anyhow::{anyhow, Context, Result};
use kiln_proto::control::control_client::ControlClient;
use kiln_proto::control::{CacheOptions, CacheOptionsEntry, Exporter, SolveRequest, StatusRequest};
use kiln_session::auth::{AuthServerImpl, CredentialSource, HostCredentials, SourceError};
use kiln_session::filesend::{FileSendReceiver, FileSendTarget};
use kiln_session::filesync::FileSyncServerImpl;
use kiln_session::hijack::{client_side, serve_session, SessionServices};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// The client's registry logins for the session's Auth service: Docker's
/// config (`DOCKER_CONFIG` or `~/.docker/config.json`: `auths`,
/// `credHelpers`, `credsStore`), as `docker login` and buildx leave it.
#[derive(Debug)]
pub struct DockerConfigSource(kiln_registry::DockerConfig);

impl DockerConfigSource {
    pub fn new() -> DockerConfigSource {
        DockerConfigSource(kiln_registry::DockerConfig)
    }
}

#[tonic::async_trait]
impl CredentialSource for DockerConfigSource {
    async fn credentials(
        &self,
        host: &str,
    ) -> std::result::Result<Option<HostCredentials>, SourceError> {
        use kiln_registry::{Credential, Credentials};
        // `DockerConfig` finds Docker Hub's key (its index) for
        // `registry-1.docker.io` itself.
        Ok(self.0.get(host).await?.map(|c| match c {
            Credential::Basic { username, password } => HostCredentials {
                username,
                secret: password,
            },
            // As BuildKit's clients send an identity token: no username.
            Credential::IdentityToken(token) => HostCredentials {
                username: String::new(),
                secret: token,
            },
        }))
    }
}

/// What `kiln build` asks of the daemon.
pub struct RemoteBuild {
    pub context: PathBuf,
    pub dockerfile: PathBuf,
    pub attrs: HashMap<String, String>,
    /// `--build-context NAME=DIR` directories, served under their names.
    pub named_dirs: HashMap<String, PathBuf>,
    /// `--build-context NAME=oci-layout://DIR` layouts by the store id the
    /// frontend attribute names, served as the content stores `oci:ID`
    /// (as buildx attaches them).
    pub oci_stores: kiln_engine::layout::OciStores,
    /// `-o` specs, parsed into key/value maps (with `type`).
    pub outputs: Vec<HashMap<String, String>>,
    /// `-t` names for the image exporter.
    pub tags: Vec<String>,
    /// `--allow` entitlements (`network.host`, `security.insecure`).
    pub entitlements: Vec<String>,
    /// `--cache-to` / `--cache-from` entries (type, attributes).
    pub cache_exports: Vec<crate::cacheflags::Entry>,
    pub cache_imports: Vec<crate::cacheflags::Entry>,
    /// `--secret` specs, served to the daemon through the session.
    pub secrets: crate::secrets::Secrets,
    /// `--ssh` agents, served to the daemon through the session (no SSH
    /// service without `--ssh`, as buildx).
    pub ssh: Option<kiln_session::ssh::ForwardedAgents>,
    /// `-q`: the build's warnings are not printed either (as buildx).
    pub quiet: bool,
}

/// TLS settings for `tcp://` daemons (buildctl's `--tlscacert`,
/// `--tlscert`, `--tlskey`, `--tlsservername`).
#[derive(Clone, Debug, Default)]
pub struct ClientTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub server_name: Option<String>,
}

impl ClientTls {
    fn enabled(&self) -> bool {
        self.ca.is_some() || self.cert.is_some()
    }

    fn config(&self) -> Result<rustls::ClientConfig> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        let ca = self
            .ca
            .as_ref()
            .ok_or_else(|| anyhow!("--tlscacert is needed to verify the daemon"))?;
        for c in
            CertificateDer::pem_file_iter(ca).with_context(|| format!("read {}", ca.display()))?
        {
            roots.add(c.with_context(|| format!("parse {}", ca.display()))?)?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots);
        let mut config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let certs = CertificateDer::pem_file_iter(cert)
                    .with_context(|| format!("read {}", cert.display()))?
                    .collect::<std::result::Result<Vec<_>, _>>()
                    .with_context(|| format!("parse {}", cert.display()))?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .with_context(|| format!("read {}", key.display()))?;
                builder.with_client_auth_cert(certs, key)?
            }
            (None, None) => builder.with_no_client_auth(),
            _ => return Err(anyhow!("--tlscert and --tlskey go together")),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// The `type=local` caches of a build through a daemon: the directories
/// are this machine's, attached to the session; the daemon never reads
/// their `index.json`.
struct LocalCaches {
    /// The imports to send: a local one with the digest its tag names
    /// here (BuildKit's client rule), one whose tag names nothing left out
    /// with a warning, as buildctl does.
    imports: Vec<crate::cacheflags::Entry>,
    /// Stores the daemon reads (`local:SRC` of an import).
    read: Vec<(String, PathBuf)>,
    /// Export directories and the tag their manifest gets.
    written: Vec<(PathBuf, String)>,
}

impl LocalCaches {
    fn of(
        exports: &[crate::cacheflags::Entry],
        imports: &[crate::cacheflags::Entry],
    ) -> Result<LocalCaches> {
        let tag = |a: &std::collections::BTreeMap<String, String>| {
            a.get("tag")
                .cloned()
                .unwrap_or_else(|| "latest".to_string())
        };
        let mut out = LocalCaches {
            imports: Vec::new(),
            read: Vec::new(),
            written: Vec::new(),
        };
        for (t, a) in exports.iter().filter(|(t, _)| t == "local") {
            let dest = a
                .get("dest")
                .ok_or_else(|| anyhow!("--cache-to type={t} needs dest=DIR"))?;
            std::fs::create_dir_all(dest).with_context(|| format!("create {dest}"))?;
            out.written.push((PathBuf::from(dest), tag(a)));
        }
        for (t, a) in imports {
            let Some(src) = a.get("src").filter(|_| t == "local") else {
                out.imports.push((t.clone(), a.clone()));
                continue;
            };
            let mut a = a.clone();
            if a.get("digest").is_none_or(String::is_empty) {
                match kiln_engine::remotecache::import::tagged_manifest(Path::new(src), &tag(&a)) {
                    Ok(d) => {
                        a.insert("digest".into(), d);
                    }
                    Err(e) => {
                        eprintln!("WARNING: local cache import at {src} skipped: {e}");
                        continue;
                    }
                }
            }
            out.read.push((
                kiln_session::content::local_store_id(src),
                PathBuf::from(src),
            ));
            out.imports.push((t.clone(), a));
        }
        Ok(out)
    }

    /// Tags the manifest the daemon answered (`cache.manifest`) in each
    /// export directory's `index.json`.
    fn tag_exports(&self, response: &HashMap<String, String>) -> Result<()> {
        if self.written.is_empty() {
            return Ok(());
        }
        let Some(json) = response.get("cache.manifest") else {
            return Err(anyhow!(
                "the daemon answered no cache.manifest for the --cache-to type=local export"
            ));
        };
        let desc: kiln_engine::remotecache::format::Descriptor = serde_json::from_str(json)
            .with_context(|| format!("the daemon's cache.manifest {json:?}"))?;
        for (dir, tag) in &self.written {
            kiln_engine::remotecache::export::tag_local(dir, &desc, tag)?;
        }
        Ok(())
    }
}

/// One cache record, with the fields of BuildKit's UsageRecord that
/// buildx shows: from kilnd (DiskUsage, Prune) or from the engine
/// (embedded `du`/`prune`), so both modes print the same.
pub struct Record {
    pub id: String,
    pub record_type: String,
    pub size: u64,
    /// Seconds since the epoch; 0 if unknown.
    pub created: u64,
    /// Seconds since the epoch; 0 if never.
    pub last_used: u64,
    pub usage_count: u64,
    pub description: String,
    /// Written in place by the steps that use it (a cache mount).
    pub mutable: bool,
    /// A build is using it now (not reclaimable).
    pub in_use: bool,
    /// Other records share some of its data.
    pub shared: bool,
    /// The records it sits on.
    pub parents: Vec<String>,
}

impl From<kiln_proto::control::UsageRecord> for Record {
    fn from(r: kiln_proto::control::UsageRecord) -> Record {
        let secs = |t: Option<prost_types::Timestamp>| {
            t.and_then(|t| u64::try_from(t.seconds).ok()).unwrap_or(0)
        };
        let mut parents = r.parents;
        // A BuildKit before v0.10 names its one parent in Parent.
        #[allow(deprecated, reason = "older daemons send only Parent")]
        if parents.is_empty() && !r.parent.is_empty() {
            parents.push(r.parent);
        }
        Record {
            id: r.id,
            record_type: r.record_type,
            size: u64::try_from(r.size).unwrap_or(0),
            created: secs(r.created_at),
            last_used: secs(r.last_used_at),
            usage_count: u64::try_from(r.usage_count).unwrap_or(0),
            description: r.description,
            mutable: r.mutable,
            in_use: r.in_use,
            shared: r.shared,
            parents,
        }
    }
}

impl From<kiln_engine::cache::RecordInfo> for Record {
    fn from(r: kiln_engine::cache::RecordInfo) -> Record {
        Record {
            mutable: r.mutable(),
            id: r.lease.id,
            record_type: r.record_type,
            size: r.size,
            created: r.lease.created_secs,
            last_used: r.last_used,
            usage_count: r.usage_count,
            description: r.description,
            in_use: r.in_use,
            shared: r.shared,
            parents: r.parents,
        }
    }
}

/// The daemon's cache records (Control.DiskUsage) as this client is
/// allowed to see them (its tenant's, on a kilnd with tenants).
pub async fn disk_usage(channel: Channel) -> Result<Vec<Record>> {
    let resp = ControlClient::new(channel)
        .disk_usage(kiln_proto::control::DiskUsageRequest::default())
        .await
        .map_err(|s| anyhow!("disk usage: {}", s.message()))?;
    Ok(resp
        .into_inner()
        .record
        .into_iter()
        .map(Record::from)
        .collect())
}

/// Control.Prune; the records the daemon removed.
pub async fn prune(
    channel: Channel,
    req: kiln_proto::control::PruneRequest,
) -> Result<Vec<Record>> {
    let mut stream = ControlClient::new(channel)
        .prune(req)
        .await
        .map_err(|s| anyhow!("prune: {}", s.message()))?
        .into_inner();
    let mut removed = Vec::new();
    while let Some(r) = stream
        .message()
        .await
        .map_err(|s| anyhow!("prune: {}", s.message()))?
    {
        removed.push(Record::from(r));
    }
    Ok(removed)
}

/// Connects to `addr`: `unix:///path` or `tcp://host:port` (with TLS when
/// `tls` says so), or a kubernetes builder's pod (`kubernetes://…`).
pub async fn connect(addr: &str, tls: &ClientTls) -> Result<Channel> {
    if addr.starts_with(crate::kubedriver::SCHEME) {
        return crate::kubedriver::connect(addr).await;
    }
    if let Some(path) = addr.strip_prefix("unix://") {
        let path = path.to_string();
        return endpoint("http://localhost")?
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    let unix = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(unix))
                }
            }))
            .await
            .with_context(|| format!("cannot connect to kilnd at {addr}"));
    }
    if let Some(hp) = addr.strip_prefix("tcp://") {
        if !tls.enabled() {
            return endpoint(&format!("http://{hp}"))?
                .connect()
                .await
                .with_context(|| format!("cannot connect to kilnd at {addr}"));
        }
        let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls.config()?));
        let host = hp
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(hp)
            .to_string();
        let name = tls.server_name.clone().unwrap_or(host);
        let server_name = rustls::pki_types::ServerName::try_from(name.clone())
            .with_context(|| format!("invalid TLS server name {name:?}"))?;
        let target = hp.to_string();
        return endpoint(&format!("http://{hp}"))?
            .connect_with_connector(tower::service_fn(move |_| {
                let (connector, server_name, target) =
                    (connector.clone(), server_name.clone(), target.clone());
                async move {
                    let tcp = tokio::net::TcpStream::connect(target).await?;
                    let tls = connector.connect(server_name, tcp).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
                }
            }))
            .await
            .with_context(|| format!("cannot connect to kilnd at {addr} over TLS"));
    }
    Err(anyhow!(
        "unsupported address {addr:?}: use unix:///path or tcp://host:port"
    ))
}

/// The largest header list kiln accepts from a daemon: grpc-go's client
/// default (buildctl's, buildx's). An error's `grpc-status-details-bin`
/// carries Dockerfile source as BuildKit's detail (buildkitd sends whole
/// files), which hyper's 16 KiB default would refuse as a protocol error.
const MAX_HEADER_LIST: u32 = 16 << 20;

/// An endpoint for `uri` with kiln's HTTP/2 limits and a session's
/// connection window.
fn endpoint(uri: &str) -> Result<tonic::transport::Endpoint> {
    Ok(tonic::transport::Endpoint::from_shared(uri.to_string())?
        .http2_max_header_list_size(MAX_HEADER_LIST)
        .initial_connection_window_size(kiln_session::hijack::CONNECTION_WINDOW))
}

/// An `oci`/`docker` output's `tar` option (true by default).
fn tar_attr(attrs: &HashMap<String, String>) -> Result<bool> {
    attrs
        .get("tar")
        .map(|v| crate::outputs::bool_attr("tar", v))
        .transpose()
        .map(|t| t.unwrap_or(true))
}

/// Puts the image the daemon exported into the `tar=false` directory
/// `dir` into its `index.json`, as buildctl does: the descriptor it
/// answered, once per name it answered (else tagged `latest`).
fn put_export_index(dir: &Path, response: &HashMap<String, String>) -> Result<()> {
    use base64::Engine as _;
    let encoded = response.get("containerimage.descriptor").ok_or_else(|| {
        anyhow!(
            "the daemon answered no containerimage.descriptor for {}",
            dir.display()
        )
    })?;
    let json = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .context("the daemon's containerimage.descriptor")?;
    let desc: kiln_engine::oci::Descriptor =
        serde_json::from_slice(&json).context("the daemon's containerimage.descriptor")?;
    // The answer merges every exporter's: it must be the image the daemon
    // wrote here.
    let written = kiln_session::content::layout_blob_path(dir, desc.digest().as_ref())
        .is_some_and(|p| p.is_file());
    if !written {
        return Err(anyhow!(
            "the daemon answered image {} for {}, which it did not write there (one image output with tar=false only)",
            desc.digest(),
            dir.display()
        ));
    }
    let names: Vec<String> = response
        .get("image.name")
        .map(|n| {
            n.split(',')
                .filter(|n| !n.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    Ok(kiln_engine::archive::put_index(dir, &desc, &names)?)
}

fn random_id(len: usize) -> String {
    use rand::Rng;
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut r = rand::thread_rng();
    (0..len)
        .map(|_| CHARS[r.gen_range(0..CHARS.len())] as char)
        .collect()
}

/// Runs a build through the daemon and returns its exporter response.
pub async fn build(
    channel: Channel,
    b: RemoteBuild,
    progress: tokio::sync::mpsc::Sender<crate::progress::model::SolveStatus>,
) -> Result<HashMap<String, String>> {
    let mut control = ControlClient::new(channel.clone())
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20);
    // A subrequest (`--call`, `--check`) is asked as buildx asks it:
    // through the gateway, its answer in the result's metadata; nothing
    // is exported (as embedded, outputs and cache exports have nothing to
    // take).
    let call = b.attrs.contains_key(REQUEST_ID);
    let outputs: &[HashMap<String, String>] = if call { &[] } else { &b.outputs };
    let cache_exports: &[crate::cacheflags::Entry] = if call { &[] } else { &b.cache_exports };
    // Exporters and where FileSend output goes, in exporter order.
    let mut exporters = Vec::new();
    let mut targets = Vec::new();
    let mut names: Vec<String> = b.tags.clone();
    let mut image_attrs: HashMap<String, String> = HashMap::new();
    // The directory an `oci`/`docker` output with `tar=false` fills.
    let mut export_dir: Option<PathBuf> = None;
    for o in outputs {
        let kind = o.get("type").cloned().unwrap_or_else(|| "image".into());
        let mut attrs = o.clone();
        attrs.remove("type");
        match kind.as_str() {
            "image" => {
                if let Some(n) = attrs.remove("name") {
                    names.extend(n.split(',').map(String::from));
                }
                image_attrs.extend(attrs);
            }
            "local" => {
                let dest = attrs
                    .remove("dest")
                    .ok_or_else(|| anyhow!("type=local needs dest=DIR"))?;
                std::fs::create_dir_all(&dest).with_context(|| format!("create {dest}"))?;
                exporters.push(Exporter {
                    r#type: kind,
                    attrs,
                });
                targets.push(FileSendTarget::Local {
                    dir: PathBuf::from(dest),
                });
            }
            "oci" | "docker" if !tar_attr(&attrs)? => {
                // The daemon writes the blobs into this directory, served
                // as the session's export store; `index.json` is written
                // here from its answer (`put_export_index`).
                let dest = attrs
                    .remove("dest")
                    .ok_or_else(|| anyhow!("type={kind},tar=false needs dest=DIR"))?;
                if export_dir.is_some() {
                    return Err(anyhow!(
                        "only one output with tar=false can be written (BuildKit's one export store)"
                    ));
                }
                std::fs::create_dir_all(&dest).with_context(|| format!("create {dest}"))?;
                export_dir = Some(PathBuf::from(dest));
                if !attrs.contains_key("name") && !b.tags.is_empty() {
                    attrs.insert("name".into(), b.tags.join(","));
                }
                exporters.push(Exporter {
                    r#type: kind,
                    attrs,
                });
                targets.push(FileSendTarget::Bytes { dest: None });
            }
            "tar" | "oci" | "docker" => {
                let dest = attrs
                    .remove("dest")
                    .ok_or_else(|| anyhow!("type={kind} needs dest=FILE or dest=-"))?;
                let dest = (dest != "-").then(|| PathBuf::from(dest));
                if dest.is_none() && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                    return Err(anyhow!(
                        "refusing to write a {kind} archive to a terminal; use dest=FILE"
                    ));
                }
                if let Some(n) = attrs.remove("name") {
                    attrs.insert("name".into(), n);
                } else if !b.tags.is_empty() {
                    attrs.insert("name".into(), b.tags.join(","));
                }
                exporters.push(Exporter {
                    r#type: kind,
                    attrs,
                });
                targets.push(FileSendTarget::Bytes { dest });
            }
            // Exports nothing, and keeps the default image export off.
            crate::outputs::CACHE_ONLY => {}
            other => {
                return Err(anyhow!(
                    "unknown output type {other:?} (image, local, tar, oci, docker, cacheonly)"
                ))
            }
        }
    }
    // The image exporter runs when asked for, or when no output was given
    // (a build into containerd is kiln's default); `-t` names go to it.
    if !call
        && (outputs.is_empty()
            || outputs
                .iter()
                .any(|o| o.get("type").is_none_or(|t| t == "image")))
    {
        let mut attrs = image_attrs;
        if !names.is_empty() {
            attrs.insert("name".into(), names.join(","));
        }
        exporters.insert(
            0,
            Exporter {
                r#type: "image".into(),
                attrs,
            },
        );
        // The image exporter never sends files; its slot keeps the indexes.
        targets.insert(0, FileSendTarget::Bytes { dest: None });
    }

    let session_id = random_id(25);
    let df_dir = b
        .dockerfile
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| b.context.clone());
    let mut services = SessionServices::new();
    let mut dirs = b.named_dirs.clone();
    dirs.insert("context".to_string(), b.context.clone());
    dirs.insert("dockerfile".to_string(), df_dir);
    services.add(
        FileSyncServerImpl::new(dirs).into_service(),
        FileSyncServerImpl::METHODS,
    );
    // The user's registry logins, lent per request: the daemon never
    // holds them.
    services.add(
        AuthServerImpl::new(Arc::new(DockerConfigSource::new())).into_service(),
        AuthServerImpl::METHODS,
    );
    // Secrets too are lent per request, by id.
    services.add(
        kiln_session::secrets::SecretsServerImpl::new(Arc::new(b.secrets.clone())).into_service(),
        kiln_session::secrets::SecretsServerImpl::METHODS,
    );
    // The OCI layouts of `oci-layout://` named contexts, read by the
    // daemon through containerd's Content service, and the `type=local`
    // caches: this machine's directories, attached as the stores
    // `local:DIR` (read for an import, written for an export), as
    // buildctl and buildx attach them.
    let local = LocalCaches::of(cache_exports, &b.cache_imports)?;
    let mut stores: HashMap<String, PathBuf> = b
        .oci_stores
        .iter()
        .map(|(id, dir)| (kiln_session::content::oci_store_id(id), dir.clone()))
        .collect();
    stores.extend(local.read.iter().cloned());
    if !stores.is_empty() || !local.written.is_empty() || export_dir.is_some() {
        let mut stores = kiln_session::content::LayoutStores::new(stores);
        if let Some(dir) = &export_dir {
            stores =
                stores.with_writable(kiln_session::content::EXPORT_STORE.to_string(), dir.clone());
        }
        for (dir, _) in &local.written {
            stores = stores.with_writable(
                kiln_session::content::local_store_id(&dir.to_string_lossy()),
                dir.clone(),
            );
        }
        let methods = stores.methods();
        services.add(stores.into_service(), methods);
    }
    if let Some(agents) = b.ssh.clone() {
        services.add(
            kiln_session::ssh::SshServerImpl::new(agents).into_service(),
            kiln_session::ssh::SshServerImpl::METHODS,
        );
    }
    if targets
        .iter()
        .any(|t| !matches!(t, FileSendTarget::Bytes { dest: None }))
        || exporters.iter().any(|e| e.r#type != "image")
    {
        services.add(FileSendReceiver::new(targets), FileSendReceiver::METHODS);
    }
    let (side, requests) = client_side();
    let req = kiln_session::hijack::session_request(&session_id, "kiln", &services, requests)?;
    let responses = control
        .session(req)
        .await
        .context("cannot open a session with kilnd")?
        .into_inner();
    let conn = side.attach(responses);
    let cancel = CancellationToken::new();
    let serving = tokio::spawn(serve_session(conn, services, cancel.clone()));

    let build_ref = random_id(25);
    let solve_ref = build_ref.clone();
    // The attributes already name the Dockerfile (`filename`).
    let mut attrs = b.attrs.clone();
    let entry = |(t, a): &crate::cacheflags::Entry| CacheOptionsEntry {
        r#type: t.clone(),
        attrs: a.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
    };
    let cache_imports: Vec<CacheOptionsEntry> = local.imports.iter().map(entry).collect();
    if !cache_imports.is_empty() {
        // As buildctl: the frontend gets the imports too.
        let json: Vec<serde_json::Value> = local
            .imports
            .iter()
            .map(|(t, a)| serde_json::json!({"Type": t, "Attrs": a}))
            .collect();
        attrs.insert(
            "cache-imports".into(),
            serde_json::Value::Array(json).to_string(),
        );
    }
    let cache = CacheOptions {
        exports: cache_exports.iter().map(entry).collect(),
        imports: cache_imports,
        ..Default::default()
    };
    // A subrequest: Control.Solve without a frontend (not a build of the
    // history either, as buildx marks it), the Dockerfile frontend driven
    // over LLBBridge.
    let gateway = call.then(|| {
        let mut opts = attrs.clone();
        let caps = opts.entry("frontend.caps".to_string()).or_default();
        if !caps.is_empty() {
            caps.push(',');
        }
        caps.push_str(SUBREQUEST_CAPS);
        tokio::spawn(call_frontend(channel, build_ref.clone(), opts))
    });
    let (frontend, frontend_attrs) = if call {
        (String::new(), HashMap::new())
    } else {
        ("dockerfile.v0".to_string(), attrs)
    };
    let solve = SolveRequest {
        r#ref: build_ref.clone(),
        session: session_id,
        frontend,
        frontend_attrs,
        internal: call,
        exporter_deprecated: exporters
            .first()
            .map(|e| e.r#type.clone())
            .unwrap_or_default(),
        exporter_attrs_deprecated: exporters
            .first()
            .map(|e| e.attrs.clone())
            .unwrap_or_default(),
        exporters,
        entitlements: b.entitlements.clone(),
        cache: Some(cache),
        ..Default::default()
    };
    let mut status_client = control.clone();
    let status = tokio::spawn(async move {
        let mut stream = match status_client
            .status(StatusRequest { r#ref: build_ref })
            .await
        {
            Ok(s) => s.into_inner(),
            Err(e) => return Err(anyhow!("status: {}", e.message())),
        };
        let mut warnings = Vec::new();
        while let Some(msg) = stream
            .message()
            .await
            .map_err(|e| anyhow!("status: {}", e.message()))?
        {
            for w in &msg.warnings {
                let mut text = String::from_utf8_lossy(&w.short).into_owned();
                // BuildKit's frontend (and kilnd) end the text with the
                // line already; another frontend's may not.
                if let Some(line) = w.ranges.first().and_then(|r| r.start.as_ref()) {
                    let suffix = format!(" (line {})", line.line);
                    if !text.ends_with(&suffix) {
                        text.push_str(&suffix);
                    }
                }
                warnings.push(text);
            }
            // The daemon's updates are the display's model as they are.
            let _ = progress.send(msg.into()).await;
        }
        Ok(warnings)
    });
    let solved = control.solve(solve).await;
    // The subrequest's answer, or why the frontend failed (which the
    // Solve's own error says too, with the Dockerfile lines).
    let answered = match gateway {
        Some(g) => Some(g.await.map_err(|e| anyhow!("the frontend's task: {e}"))),
        None => None,
    };
    // BuildKit ends a failed job's Status stream only when the client
    // goes away (buildctl cancels it): after a failure, take what is
    // already on its way and stop listening.
    let warnings = if solved.is_ok() {
        status.await.ok().and_then(|r| r.ok())
    } else {
        let abort = status.abort_handle();
        let r = tokio::time::timeout(std::time::Duration::from_secs(1), status).await;
        abort.abort();
        r.ok().and_then(|r| r.ok()).and_then(|r| r.ok())
    }
    .unwrap_or_default();
    cancel.cancel();
    // A BuildKit daemon may keep a failed build's session open.
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), serving).await;
    if !b.quiet {
        crate::print_warnings(&warnings);
    }
    // BuildKit's errors carry the Dockerfile lines they are about.
    let resp = solved
        .map_err(|e| crate::progress::SolveFailed {
            message: e.message().to_string(),
            sources: crate::progress::source::from_status(&e),
        })?
        .into_inner();
    let mut out = resp.exporter_response;
    if let Some(answer) = answered {
        // As buildx: the answer's metadata is the response (no ref).
        out.extend(answer??);
        return Ok(out);
    }
    local.tag_exports(&out)?;
    if let Some(dir) = &export_dir {
        put_export_index(dir, &out)?;
    }
    // The solve's ref, for `--metadata-file` (`buildx.build.ref`).
    out.insert(BUILD_REF_KEY.into(), solve_ref);
    Ok(out)
}

/// The frontend attribute that names a subrequest (`frontend.lint`, …).
const REQUEST_ID: &str = "requestid";

/// The capability buildx adds for a subrequest: the frontend may answer
/// it (and forward it to another frontend).
const SUBREQUEST_CAPS: &str = "moby.buildkit.frontend.subrequests+forward";

/// The gateway half of a subrequest, as buildx drives it: LLBBridge.Solve
/// with the Dockerfile frontend and `opts`, then Return of its result
/// (or of its error, which fails the waiting Control.Solve). The answer is
/// the result's metadata as text.
async fn call_frontend(
    channel: Channel,
    build_ref: String,
    opts: HashMap<String, String>,
) -> Result<HashMap<String, String>> {
    use kiln_proto::gateway::llb_bridge_client::LlbBridgeClient;
    use kiln_proto::gateway::{ReturnRequest, SolveRequest as GatewaySolve};
    let mut bridge = LlbBridgeClient::new(channel)
        .max_decoding_message_size(16 << 20)
        .max_encoding_message_size(16 << 20);
    fn of_build<T>(msg: T, build_ref: &str) -> Result<tonic::Request<T>> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut()
            .insert("buildkit-controlapi-buildid", build_ref.parse()?);
        Ok(r)
    }
    let solved = bridge
        .solve(of_build(
            GatewaySolve {
                frontend: "dockerfile.v0".into(),
                frontend_opt: opts,
                allow_result_return: true,
                ..Default::default()
            },
            &build_ref,
        )?)
        .await;
    let (answer, ret) = match solved {
        Ok(r) => {
            let result = r.into_inner().result;
            let metadata = result
                .iter()
                .flat_map(|r| r.metadata.iter())
                .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect();
            (
                Ok(metadata),
                ReturnRequest {
                    result,
                    error: None,
                },
            )
        }
        Err(s) => (
            Err(anyhow!("{}", s.message())),
            ReturnRequest {
                result: None,
                error: Some(kiln_proto::rpc::Status {
                    code: s.code() as i32,
                    message: s.message().to_string(),
                    details: <kiln_proto::rpc::Status as prost::Message>::decode(s.details())
                        .map(|st| st.details)
                        .unwrap_or_default(),
                }),
            },
        ),
    };
    bridge
        .r#return(of_build(ret, &build_ref)?)
        .await
        .map_err(|s| anyhow!("return: {}", s.message()))?;
    answer
}

/// The response key under which [`build`] returns its solve ref.
pub const BUILD_REF_KEY: &str = "buildx.build.ref";
