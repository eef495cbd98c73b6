//! [`Client`]: the distribution protocol's requests, with auth, mirrors and
//! verification.

use crate::auth::{parse_challenges, Challenge, Scopes, TokenAnswer};
use crate::credentials::{Credential, Credentials};
use crate::error::{RegistryError, Result};
use crate::hosts::{endpoints, Endpoint, HostsConfig};
use bytes::{Bytes, BytesMut};
use kiln_types::Reference;
use reqwest::header::{
    HeaderMap, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, LOCATION, RANGE,
    WWW_AUTHENTICATE,
};
use reqwest::StatusCode;
use sha2::Digest as _;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Media types of manifests and indexes, in the `Accept` header of every
/// manifest request (containerd's list, `*/*` last).
pub const MANIFEST_MEDIA_TYPES: &[&str] = &[
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

/// The largest manifest or index accepted (containerd's limit).
pub const MAX_MANIFEST_SIZE: u64 = 4 << 20;

/// Blobs up to this size are uploaded in one PUT; bigger ones in PATCH
/// chunks of [`CHUNK_SIZE`], so memory stays bounded.
pub const MONOLITHIC_MAX: u64 = 16 << 20;

/// The size of one PATCH of a chunked upload.
pub const CHUNK_SIZE: usize = 8 << 20;

/// Connect timeout when `KILN_REGISTRY_TIMEOUT` is not set.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait for the next bytes of an answer when `KILN_REGISTRY_TIMEOUT`
/// is not set.
pub const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// The environment variable that sets both timeouts, in seconds (for slow
/// links, and for tests of the timeout message).
pub const TIMEOUT_ENV: &str = "KILN_REGISTRY_TIMEOUT";

/// A manifest or index as a registry answered it for a reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The reference asked for.
    pub reference: Reference,
    /// The manifest's media type (its `Content-Type`, else its `mediaType`).
    pub media_type: String,
    /// The digest of `bytes`, verified against the reference's digest or the
    /// registry's `Docker-Content-Digest`.
    pub digest: String,
    /// `bytes.len()`.
    pub size: u64,
    /// The manifest as served.
    pub bytes: Vec<u8>,
}

/// A blob's bytes as they arrive. The caller verifies the digest when it
/// commits them (containerd's content writer does).
#[derive(Debug)]
pub struct BlobReader {
    /// The size of the whole blob, when the registry said.
    pub total: Option<u64>,
    /// Where in the blob the bytes start: the offset asked for, or 0 if the
    /// registry ignored the Range request.
    pub offset: u64,
    response: reqwest::Response,
    host: String,
    what: String,
    timeouts: Timeouts,
}

impl BlobReader {
    /// The next bytes; `None` at the end of the blob.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>> {
        self.response
            .chunk()
            .await
            .map_err(|e| transport_error(&self.host, &self.what, &self.timeouts, &e))
    }
}

#[derive(Clone, Copy, Debug)]
struct Timeouts {
    connect: Duration,
    read: Duration,
}

impl Timeouts {
    fn from_env() -> Timeouts {
        let defaults = Timeouts {
            connect: DEFAULT_CONNECT_TIMEOUT,
            read: DEFAULT_READ_TIMEOUT,
        };
        let Ok(value) = std::env::var(TIMEOUT_ENV) else {
            return defaults;
        };
        match value.trim().parse::<u64>() {
            Ok(s) if s > 0 => Timeouts {
                connect: Duration::from_secs(s),
                read: Duration::from_secs(s),
            },
            _ => {
                // Client::new cannot fail; say it loudly instead.
                tracing::warn!(
                    value = %value,
                    "{TIMEOUT_ENV} is not a positive number of seconds; using the default timeouts"
                );
                defaults
            }
        }
    }
}

/// An `Authorization` header value and until when it may be sent.
#[derive(Clone)]
struct CachedAuth {
    header: String,
    until: Option<Instant>,
}

/// A registry client for one build: tokens and credentials are cached
/// inside, per host and scope. Cheap to clone (clones share the caches).
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    hosts: Arc<HostsConfig>,
    creds: Arc<dyn Credentials>,
    timeouts: Timeouts,
    http: Mutex<HashMap<String, reqwest::Client>>,
    /// Keyed by (host, scopes); scopes "" is a host-wide Basic header.
    auth: Mutex<HashMap<(String, String), CachedAuth>>,
    credentials: Mutex<HashMap<String, Option<Credential>>>,
    /// The scheme each probed insecure host answered on.
    schemes: Mutex<HashMap<String, &'static str>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("hosts", &self.inner.hosts)
            .field("credentials", &self.inner.creds)
            .field("timeouts", &self.inner.timeouts)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client for `hosts`' settings, asking `creds` when a registry
    /// demands authentication. Timeouts: 30 s to connect, 60 s between
    /// bytes of an answer, or `KILN_REGISTRY_TIMEOUT` seconds for both.
    pub fn new(hosts: Arc<HostsConfig>, creds: Arc<dyn Credentials>) -> Self {
        Client {
            inner: Arc::new(Inner {
                hosts,
                creds,
                timeouts: Timeouts::from_env(),
                http: Mutex::new(HashMap::new()),
                auth: Mutex::new(HashMap::new()),
                credentials: Mutex::new(HashMap::new()),
                schemes: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The registry settings this client follows.
    pub fn hosts(&self) -> &Arc<HostsConfig> {
        &self.inner.hosts
    }

    /// The same credentials and timeouts over other registry settings
    /// (`registry.insecure=true` for one registry); caches start empty.
    pub fn with_hosts(&self, hosts: Arc<HostsConfig>) -> Self {
        Client {
            inner: Arc::new(Inner {
                hosts,
                creds: self.inner.creds.clone(),
                timeouts: self.inner.timeouts,
                http: Mutex::new(HashMap::new()),
                auth: Mutex::new(HashMap::new()),
                credentials: Mutex::new(HashMap::new()),
                schemes: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The same settings with other timeouts: `connect` to open a
    /// connection, `read` between bytes of an answer. Call it before the
    /// first request (the caches start empty).
    pub fn with_timeouts(self, connect: Duration, read: Duration) -> Self {
        Client {
            inner: Arc::new(Inner {
                hosts: self.inner.hosts.clone(),
                creds: self.inner.creds.clone(),
                timeouts: Timeouts { connect, read },
                http: Mutex::new(HashMap::new()),
                auth: Mutex::new(HashMap::new()),
                credentials: Mutex::new(HashMap::new()),
                schemes: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Resolves a tag or digest to its manifest or index (mirrors first),
    /// verified against the reference's digest or the registry's
    /// `Docker-Content-Digest`.
    pub async fn resolve(&self, r: &Reference) -> Result<Resolved> {
        let (bytes, media_type, digest) = self.get_manifest(r, r.object()).await?;
        Ok(Resolved {
            reference: r.clone(),
            media_type,
            digest,
            size: bytes.len() as u64,
            bytes,
        })
    }

    /// Fetches a manifest or index of `r`'s repository by digest, verified.
    pub async fn fetch_manifest(&self, r: &Reference, digest: &str) -> Result<Vec<u8>> {
        Ok(self.get_manifest(&r.with_digest(digest), digest).await?.0)
    }

    /// Starts reading blob `digest` of `r`'s repository (mirrors first),
    /// from `offset` with a Range request when `offset > 0`.
    pub async fn fetch_blob(&self, r: &Reference, digest: &str, offset: u64) -> Result<BlobReader> {
        check_digest(digest)?;
        let scopes = Scopes::pull(&r.path);
        let what = format!("fetching blob {digest}");
        let eps = self.endpoints(&r.domain, true).await;
        let mut last = None;
        for ep in &eps {
            let url = ep.url(&format!("{}/blobs/{digest}", r.path), &[]);
            let result = self
                .send(ep, &scopes, &what, &|c: &reqwest::Client| {
                    let rb = c.get(&url);
                    if offset > 0 {
                        rb.header(RANGE, format!("bytes={offset}-"))
                    } else {
                        rb
                    }
                })
                .await;
            let err = match result {
                Ok(resp) if resp.status() == StatusCode::PARTIAL_CONTENT => {
                    let (start, total) = content_range(resp.headers()).unwrap_or((offset, None));
                    return Ok(self.blob_reader(ep, &what, resp, start, total));
                }
                Ok(resp) if resp.status().is_success() => {
                    let total = header_str(resp.headers(), CONTENT_LENGTH.as_str())
                        .and_then(|v| v.parse().ok());
                    return Ok(self.blob_reader(ep, &what, resp, 0, total));
                }
                Ok(resp) if resp.status() == StatusCode::NOT_FOUND => RegistryError::BlobUnknown {
                    host: ep.host.clone(),
                    repository: r.path.clone(),
                    digest: digest.to_string(),
                },
                Ok(resp) => status_error(ep, &what, resp).await,
                Err(e) => e,
            };
            if ep.ns.is_some() {
                tracing::debug!(mirror = %ep.host, error = %err, "mirror failed, trying the next host");
            }
            last = Some(err);
        }
        Err(last.unwrap_or_else(|| no_endpoint(r)))
    }

    /// Whether blob `digest` is in `r`'s repository (HEAD, on the registry
    /// itself): its size if so.
    pub async fn blob_exists(&self, r: &Reference, digest: &str) -> Result<Option<u64>> {
        check_digest(digest)?;
        let ep = self.push_endpoint(r).await;
        let url = ep.url(&format!("{}/blobs/{digest}", r.path), &[]);
        let what = format!("checking blob {digest}");
        let resp = self
            .send(
                &ep,
                &Scopes::push(&r.path),
                &what,
                &|c: &reqwest::Client| c.head(&url),
            )
            .await?;
        match resp.status() {
            // A HEAD answer has no body: the size is in the header only.
            s if s.is_success() => Ok(Some(
                header_str(resp.headers(), CONTENT_LENGTH.as_str())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
            )),
            StatusCode::NOT_FOUND => Ok(None),
            _ => Err(status_error(&ep, &what, resp).await),
        }
    }

    /// Asks the registry to mount blob `digest` from repository
    /// `from_path` (same registry) into `r`'s repository. `true`: mounted;
    /// `false`: the registry declined, upload it.
    pub async fn mount_blob(&self, r: &Reference, digest: &str, from_path: &str) -> Result<bool> {
        check_digest(digest)?;
        let ep = self.push_endpoint(r).await;
        let url = ep.url(
            &format!("{}/blobs/uploads/", r.path),
            &[("mount", digest), ("from", from_path)],
        );
        let what = format!("mounting blob {digest} from {from_path}");
        let resp = self
            .send(
                &ep,
                &Scopes::mount(&r.path, from_path),
                &what,
                &|c: &reqwest::Client| c.post(&url).header(CONTENT_LENGTH, 0),
            )
            .await?;
        match resp.status() {
            StatusCode::CREATED => Ok(true),
            StatusCode::ACCEPTED => {
                // The registry opened an upload instead; close it.
                if let Some(loc) = location(&ep, resp.headers()) {
                    let cancel = self
                        .send(
                            &ep,
                            &Scopes::push(&r.path),
                            &what,
                            &|c: &reqwest::Client| c.delete(&loc),
                        )
                        .await;
                    if let Err(e) = cancel {
                        tracing::debug!(error = %e, "cancelling an unused upload");
                    }
                }
                Ok(false)
            }
            s if s.is_client_error() && s != StatusCode::UNAUTHORIZED => {
                tracing::debug!(status = %s, from = from_path, "cross-repository mount refused");
                Ok(false)
            }
            _ => Err(status_error(&ep, &what, resp).await),
        }
    }

    /// Uploads blob `digest` of `size` bytes read from `body`: one PUT up
    /// to [`MONOLITHIC_MAX`], PATCH chunks of [`CHUNK_SIZE`] above. The
    /// body is hashed on the way and must match `digest` and `size`.
    pub async fn push_blob(
        &self,
        r: &Reference,
        digest: &str,
        size: u64,
        mut body: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    ) -> Result<()> {
        let hasher = Hasher::new(digest)?;
        let ep = self.push_endpoint(r).await;
        let scopes = Scopes::push(&r.path);
        let what = format!("pushing blob {digest}");
        let start_url = ep.url(&format!("{}/blobs/uploads/", r.path), &[]);
        let resp = self
            .send(&ep, &scopes, &what, &|c: &reqwest::Client| {
                c.post(&start_url).header(CONTENT_LENGTH, 0)
            })
            .await?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(status_error(&ep, &what, resp).await);
        }
        let loc = location(&ep, resp.headers()).ok_or_else(|| no_location(&ep, &what))?;
        let result = self
            .upload(
                &ep,
                &scopes,
                &what,
                loc.clone(),
                digest,
                size,
                &mut body,
                hasher,
            )
            .await;
        if result.is_err() {
            // Leave no half-written upload behind in the registry.
            let cancel = self
                .send(&ep, &scopes, &what, &|c: &reqwest::Client| c.delete(&loc))
                .await;
            if let Err(e) = cancel {
                tracing::debug!(error = %e, "cancelling a failed upload");
            }
        }
        result
    }

    /// The body of an upload started at `loc`: one PUT, or PATCHes and a
    /// closing PUT.
    #[allow(clippy::too_many_arguments)] // one call site, all of it context
    async fn upload(
        &self,
        ep: &Endpoint,
        scopes: &Scopes,
        what: &str,
        mut loc: String,
        digest: &str,
        size: u64,
        body: &mut tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
        mut hasher: Hasher,
    ) -> Result<()> {
        let mut pending: Option<Bytes> = None;
        let limit = if size <= MONOLITHIC_MAX {
            size as usize
        } else {
            CHUNK_SIZE
        };
        let mut sent: u64 = 0;
        loop {
            let buf = next_chunk(body, &mut pending, limit.max(1), digest).await?;
            let done = buf.is_empty() || size <= MONOLITHIC_MAX;
            if !buf.is_empty() {
                hasher.update(&buf);
            }
            let len = buf.len() as u64;
            if sent + len > size {
                return Err(RegistryError::SizeMismatch {
                    digest: digest.to_string(),
                    expected: size,
                    actual: sent + len,
                });
            }
            if done {
                // The final PUT carries what is left (everything, for a
                // small blob).
                let actual = sent + len + drain_len(body, &mut pending, digest).await?;
                if actual != size {
                    return Err(RegistryError::SizeMismatch {
                        digest: digest.to_string(),
                        expected: size,
                        actual,
                    });
                }
                let got = hasher.finish();
                if got != digest {
                    return Err(RegistryError::DigestMismatch {
                        host: ep.host.clone(),
                        what: "the blob body to push".into(),
                        expected: digest.to_string(),
                        actual: got,
                    });
                }
                let url = with_query(&loc, "digest", digest);
                let resp = self
                    .send(ep, scopes, what, &|c: &reqwest::Client| {
                        c.put(&url)
                            .header(CONTENT_TYPE, "application/octet-stream")
                            .header(CONTENT_LENGTH, len)
                            .body(buf.clone())
                    })
                    .await?;
                if resp.status() != StatusCode::CREATED {
                    return Err(status_error(ep, what, resp).await);
                }
                return Ok(());
            }
            let range = format!("{}-{}", sent, sent + len - 1);
            let resp = self
                .send(ep, scopes, what, &|c: &reqwest::Client| {
                    c.patch(&loc)
                        .header(CONTENT_TYPE, "application/octet-stream")
                        .header(CONTENT_RANGE, &range)
                        .header(CONTENT_LENGTH, len)
                        .body(buf.clone())
                })
                .await?;
            if resp.status() != StatusCode::ACCEPTED {
                return Err(status_error(ep, what, resp).await);
            }
            loc = location(ep, resp.headers()).unwrap_or(loc);
            sent += len;
        }
    }

    /// Puts a manifest or index under `tag_or_digest` in `r`'s repository;
    /// returns its digest.
    pub async fn push_manifest(
        &self,
        r: &Reference,
        tag_or_digest: &str,
        media_type: &str,
        bytes: Vec<u8>,
    ) -> Result<String> {
        let ep = self.push_endpoint(r).await;
        let what = format!("pushing manifest {tag_or_digest}");
        // A tag has no `:`; anything else must be the manifest's digest.
        let digest = if tag_or_digest.contains(':') {
            check_digest(tag_or_digest)?;
            let actual = hash_hex(algorithm(tag_or_digest)?, &bytes)?;
            if actual != tag_or_digest {
                return Err(RegistryError::DigestMismatch {
                    host: ep.host.clone(),
                    what: "the manifest to push".into(),
                    expected: tag_or_digest.to_string(),
                    actual,
                });
            }
            actual
        } else {
            hash_hex("sha256", &bytes)?
        };
        let url = ep.url(&format!("{}/manifests/{tag_or_digest}", r.path), &[]);
        let body = Bytes::from(bytes);
        let resp = self
            .send(
                &ep,
                &Scopes::push(&r.path),
                &what,
                &|c: &reqwest::Client| {
                    c.put(&url)
                        .header(CONTENT_TYPE, media_type)
                        .body(body.clone())
                },
            )
            .await?;
        if !resp.status().is_success() {
            return Err(status_error(&ep, &what, resp).await);
        }
        if let Some(announced) = header_str(resp.headers(), "docker-content-digest") {
            if announced.split(':').next() == digest.split(':').next() && announced != digest {
                return Err(RegistryError::DigestMismatch {
                    host: ep.host.clone(),
                    what: format!("manifest {tag_or_digest} as stored"),
                    expected: digest,
                    actual: announced.to_string(),
                });
            }
        }
        Ok(digest)
    }

    /// [`endpoints`] of `domain`, each with the scheme it answers on: an
    /// `insecure` host that would be reached over plain HTTP (`http =
    /// true`, or a loopback registry by default) is tried over HTTPS
    /// without verification first, as BuildKit's resolver does, and stays
    /// on HTTP only when that fails. Decided once per host and client.
    async fn endpoints(&self, domain: &str, pull: bool) -> Vec<Endpoint> {
        let mut eps = endpoints(&self.inner.hosts, domain, pull);
        for ep in &mut eps {
            let insecure = self
                .inner
                .hosts
                .settings(&ep.host)
                .is_some_and(|c| c.insecure);
            if ep.scheme == "http" && insecure {
                ep.scheme = self.probe_scheme(&ep.host).await;
            }
        }
        eps
    }

    /// `https` if `host` completes a TLS handshake, else `http`.
    async fn probe_scheme(&self, host: &str) -> &'static str {
        let known = |c: &Self| {
            c.inner
                .schemes
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .get(host)
                .copied()
        };
        if let Some(s) = known(self) {
            return s;
        }
        let Ok(c) = self.http(host) else {
            return "https";
        };
        let scheme = match c.get(format!("https://{host}/v2/")).send().await {
            Ok(_) => "https",
            Err(e) if speaks_plain_http(host, &e) => {
                tracing::debug!(host, error = %error_chain(&e), "no TLS here: using plain HTTP");
                "http"
            }
            // Anything else (a name that does not resolve, a refused
            // client certificate, a dead port) is not a reason to send
            // the requests unencrypted; the requests themselves will say.
            Err(e) => {
                tracing::debug!(host, error = %error_chain(&e), "HTTPS probe failed");
                return "https";
            }
        };
        self.inner
            .schemes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(host.to_string(), scheme);
        scheme
    }

    async fn push_endpoint(&self, r: &Reference) -> Endpoint {
        self.endpoints(&r.domain, false)
            .await
            .pop()
            .unwrap_or_else(|| Endpoint {
                host: r.domain.clone(),
                scheme: "https",
                root: "/v2".into(),
                ns: None,
            })
    }

    fn blob_reader(
        &self,
        ep: &Endpoint,
        what: &str,
        response: reqwest::Response,
        offset: u64,
        total: Option<u64>,
    ) -> BlobReader {
        BlobReader {
            total,
            offset,
            response,
            host: ep.host.clone(),
            what: what.to_string(),
            timeouts: self.inner.timeouts,
        }
    }

    /// GET a manifest by tag or digest, mirrors first; verified.
    async fn get_manifest(&self, r: &Reference, object: &str) -> Result<(Vec<u8>, String, String)> {
        let scopes = Scopes::pull(&r.path);
        let what = format!("fetching manifest {object}");
        let accept = MANIFEST_MEDIA_TYPES
            .iter()
            .copied()
            .chain(["*/*"])
            .collect::<Vec<_>>()
            .join(", ");
        let eps = self.endpoints(&r.domain, true).await;
        let mut last = None;
        for ep in &eps {
            let url = ep.url(&format!("{}/manifests/{object}", r.path), &[]);
            let result = self
                .send(ep, &scopes, &what, &|c: &reqwest::Client| {
                    c.get(&url).header(ACCEPT, &accept)
                })
                .await;
            let err = match result {
                Ok(resp) if resp.status().is_success() => {
                    return self.read_manifest(ep, r, object, &what, resp).await;
                }
                Ok(resp) if resp.status() == StatusCode::NOT_FOUND => {
                    RegistryError::ManifestUnknown {
                        reference: r.to_string(),
                    }
                }
                Ok(resp) => status_error(ep, &what, resp).await,
                Err(e) => e,
            };
            if ep.ns.is_some() {
                tracing::debug!(mirror = %ep.host, error = %err, "mirror failed, trying the next host");
            }
            last = Some(err);
        }
        Err(last.unwrap_or_else(|| no_endpoint(r)))
    }

    async fn read_manifest(
        &self,
        ep: &Endpoint,
        r: &Reference,
        object: &str,
        what: &str,
        mut resp: reqwest::Response,
    ) -> Result<(Vec<u8>, String, String)> {
        let headers = resp.headers().clone();
        let mut bytes = Vec::new();
        while let Some(c) = resp
            .chunk()
            .await
            .map_err(|e| transport_error(&ep.host, what, &self.inner.timeouts, &e))?
        {
            if (bytes.len() + c.len()) as u64 > MAX_MANIFEST_SIZE {
                return Err(RegistryError::TooLarge {
                    host: ep.host.clone(),
                    what: format!("manifest {object}"),
                    limit: MAX_MANIFEST_SIZE,
                });
            }
            bytes.extend_from_slice(&c);
        }
        let expected = match (&r.digest, header_str(&headers, "docker-content-digest")) {
            (Some(d), _) => Some(d.clone()),
            (None, Some(h)) if algorithm(h).is_ok() => Some(h.to_string()),
            _ => None,
        };
        let digest = match expected {
            Some(expected) => {
                let actual = hash_hex(algorithm(&expected)?, &bytes)?;
                if actual != expected {
                    return Err(RegistryError::DigestMismatch {
                        host: ep.host.clone(),
                        what: format!("manifest of {r}"),
                        expected,
                        actual,
                    });
                }
                expected
            }
            None => hash_hex("sha256", &bytes)?,
        };
        let media_type = media_type(&headers, &bytes);
        Ok((bytes, media_type, digest))
    }

    /// A plain HTTP(S) client for `host` with the TLS settings the hosts
    /// config gives it (system roots plus its CAs, its client
    /// certificate): what the engine downloads `ADD <url>` files with. It
    /// sends no registry credentials.
    pub fn http_client(&self, host: &str) -> Result<reqwest::Client> {
        self.http(host)
    }

    /// The reqwest client for `host` (its TLS settings), built once.
    fn http(&self, host: &str) -> Result<reqwest::Client> {
        let mut clients = self
            .inner
            .http
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = clients.get(host) {
            return Ok(c.clone());
        }
        let tls = crate::tls::client_config(&self.inner.hosts, host)?;
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(self.inner.timeouts.connect)
            .read_timeout(self.inner.timeouts.read)
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RegistryError::Tls {
                host: host.to_string(),
                detail: error_chain(&e),
            })?;
        clients.insert(host.to_string(), client.clone());
        Ok(client)
    }

    fn cached_auth(&self, host: &str, scopes: &Scopes) -> Option<String> {
        let auth = self
            .inner
            .auth
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        [scopes.key(), String::new()]
            .into_iter()
            .filter_map(|k| auth.get(&(host.to_string(), k)))
            .find(|a| a.until.is_none_or(|u| u > now))
            .map(|a| a.header.clone())
    }

    fn store_auth(&self, host: &str, key: String, header: String, until: Option<Instant>) {
        self.inner
            .auth
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((host.to_string(), key), CachedAuth { header, until });
    }

    async fn credential(&self, host: &str) -> Result<Option<Credential>> {
        if let Some(c) = self
            .inner
            .credentials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(host)
        {
            return Ok(c.clone());
        }
        let c = self.inner.creds.get(host).await?;
        self.inner
            .credentials
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(host.to_string(), c.clone());
        Ok(c)
    }

    /// Sends the request `make` builds, with the cached authorization for
    /// the host and scopes; on a 401, follows the challenge (token or
    /// basic) and sends it once more. A second 401 is
    /// [`RegistryError::Unauthorized`].
    async fn send(
        &self,
        ep: &Endpoint,
        scopes: &Scopes,
        what: &str,
        make: &(dyn Fn(&reqwest::Client) -> reqwest::RequestBuilder + Sync),
    ) -> Result<reqwest::Response> {
        let http = self.http(&ep.host)?;
        let mut credentials_sent = false;
        for attempt in 0..2 {
            let mut rb = make(&http);
            if let Some(h) = self.cached_auth(&ep.host, scopes) {
                rb = rb.header(AUTHORIZATION, h);
            }
            tracing::debug!(host = %ep.host, what, attempt, "registry request");
            let resp = rb
                .send()
                .await
                .map_err(|e| transport_error(&ep.host, what, &self.inner.timeouts, &e))?;
            if resp.status() != StatusCode::UNAUTHORIZED || attempt == 1 {
                if resp.status() == StatusCode::UNAUTHORIZED {
                    break;
                }
                return Ok(resp);
            }
            let challenges: Vec<Challenge> = resp
                .headers()
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(parse_challenges)
                .collect();
            credentials_sent = self.authorize(ep, scopes, &challenges).await?;
        }
        Err(RegistryError::Unauthorized {
            host: ep.host.clone(),
            credentials_sent,
        })
    }

    /// Answers a 401's challenges: a token for a Bearer challenge, the
    /// credentials for Basic. Returns whether credentials will be sent.
    async fn authorize(
        &self,
        ep: &Endpoint,
        scopes: &Scopes,
        challenges: &[Challenge],
    ) -> Result<bool> {
        let cred = self.credential(&ep.host).await?;
        let bearer = challenges.iter().find_map(|c| match c {
            Challenge::Bearer { realm, service, .. } => Some((realm, service)),
            Challenge::Basic => None,
        });
        if let Some((realm, service)) = bearer {
            let (token, ttl) = self
                .fetch_token(ep, realm, service.as_deref(), scopes, cred.as_ref())
                .await?;
            // Refresh a little before the server's expiry.
            let ttl = Duration::from_secs(ttl.saturating_sub(ttl.min(10) / 2).max(1));
            self.store_auth(
                &ep.host,
                scopes.key(),
                format!("Bearer {token}"),
                Some(Instant::now() + ttl),
            );
            return Ok(cred.is_some());
        }
        if challenges.contains(&Challenge::Basic) {
            if let Some(Credential::Basic { username, password }) = cred {
                use base64::Engine as _;
                let b64 = base64::engine::general_purpose::STANDARD
                    .encode(format!("{username}:{password}"));
                self.store_auth(&ep.host, String::new(), format!("Basic {b64}"), None);
                return Ok(true);
            }
        }
        Err(RegistryError::Unauthorized {
            host: ep.host.clone(),
            credentials_sent: false,
        })
    }

    /// Gets a token from `realm`: an identity token as an OAuth2
    /// `refresh_token` grant (POST, as docker does), else a GET with the
    /// basic credentials, if any.
    async fn fetch_token(
        &self,
        ep: &Endpoint,
        realm: &str,
        service: Option<&str>,
        scopes: &Scopes,
        cred: Option<&Credential>,
    ) -> Result<(String, u64)> {
        let what = "fetching a token";
        let mut url = reqwest::Url::parse(realm).map_err(|e| RegistryError::Status {
            host: ep.host.clone(),
            what: format!("token realm {realm:?}"),
            status: 401,
            message: format!("not a URL: {e}"),
        })?;
        let realm_host = match (url.host_str(), url.port()) {
            (Some(h), Some(p)) => format!("{h}:{p}"),
            (Some(h), None) => h.to_string(),
            (None, _) => ep.host.clone(),
        };
        let http = self.http(&realm_host)?;
        let rb = match cred {
            Some(Credential::IdentityToken(token)) => {
                // A URL only to encode the form with its query encoder.
                let mut form =
                    reqwest::Url::parse("http://form.invalid/").expect("a constant URL parses");
                {
                    let mut q = form.query_pairs_mut();
                    q.append_pair("grant_type", "refresh_token");
                    q.append_pair("refresh_token", token);
                    q.append_pair("client_id", "kiln");
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                    q.append_pair("scope", &scopes.as_slice().join(" "));
                }
                http.post(url)
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(form.query().unwrap_or_default().to_string())
            }
            _ => {
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                    for s in scopes.as_slice() {
                        q.append_pair("scope", s);
                    }
                }
                let rb = http.get(url);
                match cred {
                    Some(Credential::Basic { username, password }) => {
                        rb.basic_auth(username, Some(password))
                    }
                    _ => rb,
                }
            }
        };
        let mut resp = rb
            .send()
            .await
            .map_err(|e| transport_error(&realm_host, what, &self.inner.timeouts, &e))?;
        if resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN {
            return Err(RegistryError::Unauthorized {
                host: ep.host.clone(),
                credentials_sent: cred.is_some(),
            });
        }
        if !resp.status().is_success() {
            let realm_ep = Endpoint {
                host: realm_host,
                scheme: "https",
                root: String::new(),
                ns: None,
            };
            return Err(status_error(&realm_ep, what, resp).await);
        }
        let mut body = Vec::new();
        while let Some(c) = resp
            .chunk()
            .await
            .map_err(|e| transport_error(&realm_host, what, &self.inner.timeouts, &e))?
        {
            if body.len() + c.len() > 1 << 20 {
                return Err(RegistryError::TooLarge {
                    host: realm_host,
                    what: "token answer".into(),
                    limit: 1 << 20,
                });
            }
            body.extend_from_slice(&c);
        }
        serde_json::from_slice::<TokenAnswer>(&body)
            .ok()
            .and_then(TokenAnswer::token)
            .ok_or_else(|| RegistryError::Status {
                host: realm_host,
                what: what.into(),
                status: 200,
                message: "the answer has no token".into(),
            })
    }
}

/// Fills up to `limit` bytes from `body` (and what is `pending` from the
/// previous call); empty at the end.
async fn next_chunk(
    body: &mut tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    pending: &mut Option<Bytes>,
    limit: usize,
    digest: &str,
) -> Result<Bytes> {
    let mut buf = BytesMut::new();
    loop {
        let mut next = match pending.take() {
            Some(b) => b,
            None => match body.recv().await {
                Some(Ok(b)) => b,
                Some(Err(source)) => {
                    return Err(RegistryError::Body {
                        digest: digest.to_string(),
                        source,
                    })
                }
                None => return Ok(buf.freeze()),
            },
        };
        let room = limit - buf.len();
        if next.len() > room {
            *pending = Some(next.split_off(room));
        }
        if buf.is_empty() && pending.is_some() {
            return Ok(next); // a whole chunk in one piece: no copy
        }
        buf.extend_from_slice(&next);
        if buf.len() >= limit {
            return Ok(buf.freeze());
        }
    }
}

/// How many bytes are left in `body`: any are too many, so only counted.
async fn drain_len(
    body: &mut tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>,
    pending: &mut Option<Bytes>,
    digest: &str,
) -> Result<u64> {
    let mut n = pending.take().map_or(0, |b| b.len() as u64);
    while let Some(b) = body.recv().await {
        n += b
            .map_err(|source| RegistryError::Body {
                digest: digest.to_string(),
                source,
            })?
            .len() as u64;
    }
    Ok(n)
}

/// An incremental hash in the algorithm of a digest.
enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn new(digest: &str) -> Result<Hasher> {
        check_digest(digest)?;
        Ok(match algorithm(digest)? {
            "sha512" => Hasher::Sha512(sha2::Sha512::new()),
            _ => Hasher::Sha256(sha2::Sha256::new()),
        })
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    fn finish(self) -> String {
        match self {
            Hasher::Sha256(h) => format!("sha256:{}", hex::encode(h.finalize())),
            Hasher::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize())),
        }
    }
}

/// The algorithm of `digest`, if this client can compute it.
fn algorithm(digest: &str) -> Result<&str> {
    match digest.split_once(':') {
        Some((a @ ("sha256" | "sha512"), _)) => Ok(a),
        _ => Err(RegistryError::UnsupportedDigest {
            digest: digest.to_string(),
        }),
    }
}

/// `digest` is `sha256:<64 hex>` or `sha512:<128 hex>`, lowercase; it goes
/// into URLs, so nothing else passes.
fn check_digest(digest: &str) -> Result<()> {
    let ok = match digest.split_once(':') {
        Some(("sha256", h)) => h.len() == 64,
        Some(("sha512", h)) => h.len() == 128,
        _ => false,
    } && digest.split_once(':').is_some_and(|(_, h)| {
        h.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if ok {
        Ok(())
    } else {
        Err(RegistryError::UnsupportedDigest {
            digest: digest.to_string(),
        })
    }
}

fn hash_hex(algorithm: &str, data: &[u8]) -> Result<String> {
    match algorithm {
        "sha256" => Ok(format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(data))
        )),
        "sha512" => Ok(format!(
            "sha512:{}",
            hex::encode(sha2::Sha512::digest(data))
        )),
        a => Err(RegistryError::UnsupportedDigest {
            digest: format!("{a}:"),
        }),
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// The media type of a manifest: its `Content-Type` unless that is
/// generic, else its `mediaType` field, else guessed from its shape.
fn media_type(headers: &HeaderMap, bytes: &[u8]) -> String {
    let ct = header_str(headers, CONTENT_TYPE.as_str())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
        .filter(|v| {
            !v.is_empty()
                && !matches!(
                    v.as_str(),
                    "application/json" | "text/plain" | "application/octet-stream"
                )
        });
    if let Some(ct) = ct {
        return ct;
    }
    #[derive(serde::Deserialize)]
    struct Shape {
        #[serde(rename = "mediaType", default)]
        media_type: Option<String>,
        #[serde(default)]
        manifests: Option<serde_json::Value>,
    }
    match serde_json::from_slice::<Shape>(bytes) {
        Ok(Shape {
            media_type: Some(m),
            ..
        }) if !m.is_empty() => m,
        Ok(Shape {
            manifests: Some(_), ..
        }) => MANIFEST_MEDIA_TYPES[1].to_string(),
        _ => MANIFEST_MEDIA_TYPES[0].to_string(),
    }
}

/// `Content-Range: bytes <start>-<end>/<total|*>` -> (start, total).
fn content_range(headers: &HeaderMap) -> Option<(u64, Option<u64>)> {
    let v = header_str(headers, CONTENT_RANGE.as_str())?;
    let v = v.strip_prefix("bytes").unwrap_or(v).trim();
    let (range, total) = v.split_once('/')?;
    let start = range.split_once('-')?.0.trim().parse().ok()?;
    Some((start, total.trim().parse().ok()))
}

/// The absolute URL of an upload's `Location` header.
fn location(ep: &Endpoint, headers: &HeaderMap) -> Option<String> {
    let loc = header_str(headers, LOCATION.as_str())?;
    if loc.starts_with("http://") || loc.starts_with("https://") {
        Some(loc.to_string())
    } else if loc.starts_with('/') {
        Some(format!("{}{loc}", ep.origin()))
    } else {
        None
    }
}

fn with_query(url: &str, key: &str, value: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{key}={}", crate::hosts::query_escape(value))
}

fn no_location(ep: &Endpoint, what: &str) -> RegistryError {
    RegistryError::Status {
        host: ep.host.clone(),
        what: what.to_string(),
        status: 202,
        message: "the answer has no upload Location".into(),
    }
}

fn no_endpoint(r: &Reference) -> RegistryError {
    RegistryError::ManifestUnknown {
        reference: r.to_string(),
    }
}

/// Whether a failed HTTPS request shows that `host` speaks plain HTTP, as
/// BuildKit's fallback decides: what answered the TLS hello was not TLS
/// (a plain HTTP server's reply), or, for a host without a port, the
/// connection was refused (HTTPS's 443 closed; HTTP's 80 may be open).
fn speaks_plain_http(host: &str, e: &reqwest::Error) -> bool {
    let chain = error_chain(e);
    let not_tls = chain.contains("InvalidContentType") || chain.contains("corrupt message");
    let refused = chain.contains("Connection refused") || chain.contains("connection refused");
    let has_port = host
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.ends_with(':') && p.bytes().all(|b| b.is_ascii_digit()));
    not_tls || (refused && !has_port)
}

/// A non-success answer as an error, with the registry's error codes and
/// messages from its JSON body (bounded).
async fn status_error(ep: &Endpoint, what: &str, mut resp: reqwest::Response) -> RegistryError {
    let status = resp.status();
    let mut body = Vec::new();
    while let Ok(Some(c)) = resp.chunk().await {
        body.extend_from_slice(&c);
        if body.len() > 64 << 10 {
            break;
        }
    }
    #[derive(serde::Deserialize)]
    struct Errors {
        #[serde(default)]
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let message = serde_json::from_slice::<Errors>(&body)
        .map(|e| {
            e.errors
                .iter()
                .map(|e| match (e.code.is_empty(), e.message.is_empty()) {
                    (false, false) => format!("{}: {}", e.code, e.message),
                    (false, true) => e.code.clone(),
                    _ => e.message.clone(),
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .unwrap_or_else(|_| {
            String::from_utf8_lossy(&body[..body.len().min(200)])
                .trim()
                .to_string()
        });
    // Go's answer to plain HTTP on a TLS port: a loopback registry is
    // reached over HTTP unless its settings say `http = false`.
    // A HEAD answer has no body to say so: a bare 400 over plain HTTP
    // is the same mistake as far as can be told.
    let message = if message.is_empty() && status == StatusCode::BAD_REQUEST && ep.scheme == "http"
    {
        "Bad Request to plain HTTP: a registry serving TLS?".to_string()
    } else {
        message
    };
    let message = if message.contains("HTTP request to an HTTPS server")
        || message.starts_with("Bad Request to plain HTTP")
    {
        format!(
            "{message} (set `http = false` under [registry.\"{}\"] in kilnd.toml)",
            ep.host
        )
    } else {
        message
    };
    if status == StatusCode::FORBIDDEN {
        return RegistryError::Denied {
            host: ep.host.clone(),
            message: if message.is_empty() {
                what.to_string()
            } else {
                message
            },
        };
    }
    RegistryError::Status {
        host: ep.host.clone(),
        what: what.to_string(),
        status: status.as_u16(),
        message,
    }
}

/// Every error of a chain, joined by `: `, each once.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur = Some(e);
    while let Some(c) = cur {
        let s = c.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = c.source();
    }
    parts.join(": ")
}

/// The rustls error in a chain (io errors hide their inner error from
/// `source()`, so they are opened explicitly).
fn rustls_error(e: &(dyn std::error::Error + 'static)) -> Option<rustls::Error> {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if let Some(r) = c.downcast_ref::<rustls::Error>() {
            return Some(r.clone());
        }
        if let Some(inner) = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(r) = inner.downcast_ref::<rustls::Error>() {
                return Some(r.clone());
            }
            cur = Some(inner);
            continue;
        }
        cur = c.source();
    }
    None
}

/// A failed request as the error that says what to do about it.
fn transport_error(host: &str, what: &str, t: &Timeouts, e: &reqwest::Error) -> RegistryError {
    if let Some(tls) = rustls_error(e) {
        return match tls {
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
                RegistryError::UnknownCa {
                    host: host.to_string(),
                    detail: tls.to_string(),
                }
            }
            rustls::Error::AlertReceived(
                rustls::AlertDescription::CertificateRequired
                | rustls::AlertDescription::BadCertificate
                | rustls::AlertDescription::UnknownCA,
            ) => RegistryError::Tls {
                host: host.to_string(),
                detail: format!(
                    "{tls} (the registry wants a client certificate it trusts: set \
                     `keypair = [{{ key = \"...\", cert = \"...\" }}]` under [registry.\"{host}\"] \
                     in kilnd.toml)"
                ),
            },
            rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => {
                RegistryError::Tls {
                    host: host.to_string(),
                    detail: format!(
                        "{tls} (the registry does not speak TLS: if it serves plain HTTP, set \
                         `http = true` under [registry.\"{host}\"] in kilnd.toml)"
                    ),
                }
            }
            other => RegistryError::Tls {
                host: host.to_string(),
                detail: other.to_string(),
            },
        };
    }
    if e.is_timeout() {
        let secs = if e.is_connect() { t.connect } else { t.read }.as_secs();
        return RegistryError::Timeout {
            host: host.to_string(),
            what: what.to_string(),
            secs,
        };
    }
    let detail = if e.is_connect() {
        // The innermost cause ("Connection refused") is the news; the
        // layers above it only repeat the URL.
        let mut cause: &(dyn std::error::Error + 'static) = e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        format!("cannot connect: {cause}")
    } else {
        error_chain(e)
    };
    RegistryError::Transport {
        host: host.to_string(),
        what: what.to_string(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("header value"));
        }
        h
    }

    /// An insecure loopback host is tried over HTTPS first: a plain HTTP
    /// server is recognized by its answer and remembered; a closed port
    /// is not a reason to fall back.
    #[tokio::test]
    async fn an_insecure_host_falls_back_to_http_only_when_it_speaks_http() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let plain = l.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            while let Ok((mut c, _)) = l.accept().await {
                let mut buf = [0u8; 1024];
                let _ = c.read(&mut buf).await;
                let _ = c
                    .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    .await;
            }
        });
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").to_string()
        };
        let text = format!(
            "[registry.\"{plain}\"]\ninsecure = true\n[registry.\"{closed}\"]\ninsecure = true\n"
        );
        let hosts = HostsConfig::parse(&text, std::path::Path::new("kilnd.toml")).expect("config");
        let c = Client::new(Arc::new(hosts), Arc::new(crate::Anonymous));
        assert_eq!(c.probe_scheme(&plain).await, "http");
        assert_eq!(c.probe_scheme(&closed).await, "https");
        assert_eq!(
            c.endpoints(&plain, false).await[0].scheme,
            "http",
            "remembered"
        );
    }

    /// A TLS registry spoken to over plain HTTP answers a bare 400 to a
    /// HEAD (no body to say why): the error says what to set.
    #[tokio::test]
    async fn a_bare_400_over_plain_http_names_the_setting() {
        let ep = |scheme| Endpoint {
            host: "127.0.0.1:5056".into(),
            scheme,
            root: "/v2".into(),
            ns: None,
        };
        let bare = || {
            reqwest::Response::from(
                http::Response::builder()
                    .status(400)
                    .body(Vec::<u8>::new())
                    .expect("response"),
            )
        };
        let e = status_error(&ep("http"), "checking blob sha256:x", bare()).await;
        assert_eq!(
            e.to_string(),
            "127.0.0.1:5056: checking blob sha256:x: 400: Bad Request to plain HTTP: a registry \
             serving TLS? (set `http = false` under [registry.\"127.0.0.1:5056\"] in kilnd.toml)"
        );
        let e = status_error(&ep("https"), "checking blob sha256:x", bare()).await;
        assert_eq!(e.to_string(), "127.0.0.1:5056: checking blob sha256:x: 400");
    }

    #[test]
    fn media_type_from_header_or_body() {
        assert_eq!(
            media_type(
                &headers(&[("content-type", "application/vnd.oci.image.index.v1+json")]),
                b"{}"
            ),
            "application/vnd.oci.image.index.v1+json"
        );
        assert_eq!(
            media_type(
                &headers(&[("content-type", "application/json; charset=utf-8")]),
                br#"{"mediaType":"application/vnd.docker.distribution.manifest.v2+json"}"#
            ),
            "application/vnd.docker.distribution.manifest.v2+json"
        );
        assert_eq!(
            media_type(&HeaderMap::new(), br#"{"manifests":[]}"#),
            "application/vnd.oci.image.index.v1+json"
        );
        assert_eq!(
            media_type(&HeaderMap::new(), br#"{"layers":[]}"#),
            "application/vnd.oci.image.manifest.v1+json"
        );
    }

    #[test]
    fn content_ranges() {
        assert_eq!(
            content_range(&headers(&[("content-range", "bytes 100-199/200")])),
            Some((100, Some(200)))
        );
        assert_eq!(
            content_range(&headers(&[("content-range", "bytes 5-9/*")])),
            Some((5, None))
        );
        assert_eq!(content_range(&headers(&[("content-range", "junk")])), None);
    }

    #[test]
    fn locations_resolve_against_the_endpoint() {
        let ep = endpoints(&HostsConfig::default(), "127.0.0.1:5000", false)
            .pop()
            .expect("one");
        assert_eq!(
            location(
                &ep,
                &headers(&[("location", "/v2/a/blobs/uploads/u?_state=x")])
            ),
            Some("http://127.0.0.1:5000/v2/a/blobs/uploads/u?_state=x".to_string())
        );
        assert_eq!(
            location(&ep, &headers(&[("location", "https://s.example/u")])),
            Some("https://s.example/u".to_string())
        );
        assert_eq!(
            with_query("http://h/u?_state=x", "digest", "sha256:ab"),
            "http://h/u?_state=x&digest=sha256:ab"
        );
        assert_eq!(
            with_query("http://h/u", "digest", "sha256:ab"),
            "http://h/u?digest=sha256:ab"
        );
    }

    #[test]
    fn digests_are_checked_before_they_reach_a_url() {
        let hex = "a".repeat(64);
        assert!(check_digest(&format!("sha256:{hex}")).is_ok());
        for bad in [
            "sha256:abc".to_string(),
            format!("sha256:{}", "A".repeat(64)),
            format!("md5:{hex}"),
            format!("sha256:{}/../x", &hex[..58]),
        ] {
            assert_eq!(
                check_digest(&bad).map_err(|e| e.to_string()),
                Err(format!(
                    "unsupported digest {bad:?} (sha256 and sha512 are supported)"
                ))
            );
        }
    }

    #[tokio::test]
    async fn chunks_are_bounded_and_split() {
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        for part in [&b"abc"[..], b"defgh", b"i"] {
            tx.send(Ok(Bytes::from_static(part))).await.expect("send");
        }
        drop(tx);
        let mut pending = None;
        let mut got = Vec::new();
        loop {
            let c = next_chunk(&mut rx, &mut pending, 4, "d")
                .await
                .expect("chunk");
            if c.is_empty() {
                break;
            }
            got.push(String::from_utf8(c.to_vec()).expect("utf8"));
        }
        assert_eq!(got, ["abcd", "efgh", "i"]);
    }
}
