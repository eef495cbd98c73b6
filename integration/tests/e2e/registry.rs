//! The registry client (`kiln-registry`) against a real registry: Debian's
//! `docker-registry` started by `kiln_integration::registry`, plain, with
//! htpasswd basic auth, with TLS from a test CA (and client certificates),
//! and as a mirror.
//!
//! Bearer tokens come from the harness's token server; the registry
//! verifies them itself (JWTs chained to the test CA).

use kiln_integration::registry::{LoggedRequest, Registry, RegistryOptions};
use kiln_integration::Harness;
use kiln_registry::{
    Anonymous, Client, Credential, Credentials, HostsConfig, Reference, RegistryError,
};
use sha2::Digest as _;
use std::path::Path;
use std::sync::Arc;

/// A fixed credential (what `docker login` or a session would give).
#[derive(Debug)]
struct Fixed(Credential);

#[async_trait::async_trait]
impl Credentials for Fixed {
    async fn get(&self, _host: &str) -> Result<Option<Credential>, RegistryError> {
        Ok(Some(self.0.clone()))
    }
}

fn basic(user: &str, password: &str) -> Arc<dyn Credentials> {
    Arc::new(Fixed(Credential::Basic {
        username: user.into(),
        password: password.into(),
    }))
}

fn hosts(toml: &str) -> Arc<HostsConfig> {
    Arc::new(HostsConfig::parse(toml, Path::new("kilnd.toml")).expect("hosts config parses"))
}

fn client(toml: &str, creds: Arc<dyn Credentials>) -> Client {
    Client::new(hosts(toml), creds)
}

fn reference(s: &str) -> Reference {
    Reference::parse(s).expect("reference parses")
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex(&sha2::Sha256::digest(data)))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// `n` bytes that do not repeat in any short period (xorshift).
fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The body of a push, in pieces of 1 MiB (as a content store reader
/// would hand them).
fn body(data: &[u8]) -> tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let chunks: Vec<bytes::Bytes> = data
        .chunks(1 << 20)
        .map(bytes::Bytes::copy_from_slice)
        .collect();
    tokio::spawn(async move {
        for c in chunks {
            if tx.send(Ok(c)).await.is_err() {
                return;
            }
        }
    });
    rx
}

async fn read_all(c: &Client, r: &Reference, digest: &str, offset: u64) -> (u64, Vec<u8>) {
    let mut reader = c.fetch_blob(r, digest, offset).await.expect("fetch_blob");
    let mut out = Vec::new();
    while let Some(chunk) = reader.chunk().await.expect("blob chunk") {
        out.extend_from_slice(&chunk);
    }
    (reader.offset, out)
}

/// Pushes a config blob, a layer blob and a manifest for `r`; returns the
/// manifest's digest.
async fn push_small_image(c: &Client, r: &Reference, layer: &[u8]) -> String {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    for blob in [&config[..], layer] {
        let d = sha256(blob);
        c.push_blob(r, &d, blob.len() as u64, body(blob))
            .await
            .expect("push blob");
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha256(config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": sha256(layer), "size": layer.len()}],
    });
    let bytes = serde_json::to_vec(&manifest).expect("json");
    let tag = r.tag.clone().expect("tagged reference");
    let digest = c
        .push_manifest(
            r,
            &tag,
            "application/vnd.oci.image.manifest.v1+json",
            bytes.clone(),
        )
        .await
        .expect("push manifest");
    assert_eq!(digest, sha256(&bytes));
    digest
}

#[tokio::test]
async fn anonymous_push_and_pull_of_blobs_and_manifests() {
    let reg = Registry::start().await.expect("registry starts");
    let c = client("", Arc::new(Anonymous));
    let r = reference(&reg.reference("kiln/roundtrip:v1"));

    // A small blob goes up in one PUT, a big one in PATCH chunks.
    let small = data(1000, 1);
    let big = data(20 << 20, 2);
    assert_eq!(c.blob_exists(&r, &sha256(&big)).await.expect("HEAD"), None);
    let manifest_digest = push_small_image(&c, &r, &small).await;
    let patches_before = reg
        .requests()
        .iter()
        .filter(|q| q.method == "PATCH")
        .count();
    assert_eq!(patches_before, 0, "small blobs are monolithic");
    c.push_blob(&r, &sha256(&big), big.len() as u64, body(&big))
        .await
        .expect("push big blob");
    let is_patch = |q: &LoggedRequest| q.method == "PATCH" && q.status == 202;
    let patches = reg
        .requests_when(|qs| qs.iter().filter(|q| is_patch(q)).count() >= 3)
        .await
        .iter()
        .filter(|q| is_patch(q))
        .count();
    assert_eq!(patches, 3, "20 MiB in 8 MiB chunks: {:?}", reg.requests());
    assert_eq!(
        c.blob_exists(&r, &sha256(&big)).await.expect("HEAD"),
        Some(big.len() as u64)
    );

    // Pull it back: the tag resolves to the manifest pushed, verified.
    let resolved = c.resolve(&r).await.expect("resolve");
    assert_eq!(resolved.digest, manifest_digest);
    assert_eq!(
        resolved.media_type,
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(resolved.size, resolved.bytes.len() as u64);
    let by_digest = c
        .fetch_manifest(&r, &manifest_digest)
        .await
        .expect("manifest by digest");
    assert_eq!(by_digest, resolved.bytes);
    // push-by-digest: the same bytes under their digest, and only those.
    let again = c
        .push_manifest(
            &r,
            &manifest_digest,
            &resolved.media_type,
            by_digest.clone(),
        )
        .await
        .expect("push by digest");
    assert_eq!(again, manifest_digest);
    let mut altered = by_digest.clone();
    altered.push(b'\n');
    let err = c
        .push_manifest(&r, &manifest_digest, &resolved.media_type, altered)
        .await
        .expect_err("bytes that are not the digest");
    assert!(
        err.to_string().contains(&format!(
            "digest mismatch for the manifest to push: expected {manifest_digest}"
        )),
        "{err}"
    );
    let (offset, whole) = read_all(&c, &r, &sha256(&big), 0).await;
    assert_eq!(offset, 0);
    assert_eq!(sha256(&whole), sha256(&big));

    // Resume: from an offset only the tail comes.
    let from = (big.len() - 12345) as u64;
    let (offset, tail) = read_all(&c, &r, &sha256(&big), from).await;
    assert_eq!(offset, from, "the registry honours Range");
    assert_eq!(tail, big[from as usize..]);
    let is_ranged = |q: &LoggedRequest| q.method == "GET" && q.status == 206;
    let ranged = reg
        .requests_when(|qs| qs.iter().any(is_ranged))
        .await
        .iter()
        .filter(|q| is_ranged(q))
        .count();
    assert_eq!(ranged, 1, "{:?}", reg.requests());

    // A tag that does not exist names the reference.
    let missing = reference(&reg.reference("kiln/roundtrip:nope"));
    let err = c.resolve(&missing).await.expect_err("unknown tag");
    assert_eq!(err.to_string(), format!("{}: not found", missing));
    assert_eq!(err.kind(), kiln_proto::ErrorKind::NotFound);

    // A body that is not the digest announced is refused before commit.
    let err = c
        .push_blob(&r, &sha256(b"other"), 5, body(b"abcde"))
        .await
        .expect_err("wrong body");
    assert!(
        err.to_string()
            .contains("digest mismatch for the blob body to push"),
        "{err}"
    );
    // ... and its upload is cancelled, not left half-written.
    let cancelled = |q: &LoggedRequest| q.method == "DELETE" && q.path.contains("/blobs/uploads/");
    let logged = reg.requests_when(|qs| qs.iter().any(cancelled)).await;
    assert!(
        logged.iter().any(|q| cancelled(q) && q.status == 204),
        "{logged:?}"
    );
}

#[tokio::test]
async fn transport_faults_name_the_host_and_the_fix() {
    // HTTPS asked of a plain-HTTP registry.
    let reg = Registry::start().await.expect("registry starts");
    let r = reference(&reg.reference("kiln/plain:v1"));
    let https = client(
        &format!("[registry.\"{}\"]\nhttp = false\n", reg.host()),
        Arc::new(Anonymous),
    );
    let err = https.resolve(&r).await.expect_err("TLS to a plain port");
    assert!(
        err.to_string()
            .starts_with(&format!("{}: TLS: ", reg.host()))
            && err.to_string().contains(&format!(
                "set `http = true` under [registry.\"{}\"] in kilnd.toml",
                reg.host()
            )),
        "{err}"
    );

    // Nothing listening: transient, and says so in one line.
    let port = kiln_integration::pki::free_port();
    let gone = reference(&format!("127.0.0.1:{port}/kiln/gone:v1"));
    let err = client("", Arc::new(Anonymous))
        .resolve(&gone)
        .await
        .expect_err("connection refused");
    assert_eq!(
        err.to_string(),
        format!(
            "127.0.0.1:{port}: fetching manifest v1: cannot connect: Connection refused (os \
             error 111)"
        )
    );
    assert!(err.is_transient());
}

#[tokio::test]
async fn a_manifest_altered_in_storage_is_refused() {
    let reg = Registry::start().await.expect("registry starts");
    let c = client("", Arc::new(Anonymous));
    let r = reference(&reg.reference("kiln/altered:v1"));
    let digest = push_small_image(&c, &r, b"altered layer").await;
    // The registry's own storage: blobs/sha256/<2 hex>/<hex>/data.
    let hex = digest.trim_start_matches("sha256:");
    let data = reg
        .data_dir()
        .join("docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut bytes = std::fs::read(&data).expect("manifest in storage");
    bytes.extend_from_slice(b"\n\n");
    std::fs::write(&data, &bytes).expect("alter manifest");
    let actual = sha256(&bytes);

    // By tag: the registry still announces the digest it stored.
    let err = c.resolve(&r).await.expect_err("altered manifest by tag");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: digest mismatch for manifest of {r}: expected {digest}, got {actual}",
            reg.host()
        )
    );
    assert_eq!(err.kind(), kiln_proto::ErrorKind::FailedPrecondition);
    // By digest: checked against the digest asked for.
    let err = c
        .fetch_manifest(&r, &digest)
        .await
        .expect_err("altered manifest by digest");
    assert!(
        err.to_string()
            .ends_with(&format!("expected {digest}, got {actual}")),
        "{err}"
    );
}

#[tokio::test]
async fn mount_from_another_repository() {
    let reg = Registry::start().await.expect("registry starts");
    let c = client("", Arc::new(Anonymous));
    let src = reference(&reg.reference("kiln/src:v1"));
    let dst = reference(&reg.reference("kiln/dst:v1"));
    let layer = data(5000, 3);
    push_small_image(&c, &src, &layer).await;
    let d = sha256(&layer);
    assert_eq!(c.blob_exists(&dst, &d).await.expect("HEAD"), None);
    assert!(c.mount_blob(&dst, &d, "kiln/src").await.expect("mount"));
    assert_eq!(
        c.blob_exists(&dst, &d).await.expect("HEAD"),
        Some(layer.len() as u64)
    );
    // A blob the source does not have is not mounted (upload instead).
    let absent = sha256(b"absent");
    assert!(!c
        .mount_blob(&dst, &absent, "kiln/src")
        .await
        .expect("mount"));
}

#[tokio::test]
async fn basic_auth_with_htpasswd() {
    let reg = Registry::start_with(RegistryOptions {
        basic_auth: Some(("kiln".into(), "s3cret".into())),
        ..Default::default()
    })
    .await
    .expect("registry starts");
    let r = reference(&reg.reference("kiln/auth:v1"));
    let ok = client("", basic("kiln", "s3cret"));
    let digest = push_small_image(&ok, &r, b"layer").await;
    assert_eq!(ok.resolve(&r).await.expect("resolve").digest, digest);

    let wrong = client("", basic("kiln", "wrong"));
    let err = wrong.resolve(&r).await.expect_err("wrong password");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: 401 Unauthorized (credentials were sent and refused)",
            reg.host()
        )
    );
    let anonymous = client("", Arc::new(Anonymous));
    let err = anonymous.resolve(&r).await.expect_err("no credentials");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: 401 Unauthorized (no credentials were sent: log in to this registry first)",
            reg.host()
        )
    );
}

#[tokio::test]
async fn tls_with_the_registry_ca_configured_or_not() {
    let reg = Registry::start_with(RegistryOptions {
        tls: true,
        ..Default::default()
    })
    .await
    .expect("registry starts");
    let r = reference(&reg.reference("kiln/tls:v1"));
    let trusted = client(&reg.kilnd_toml(), Arc::new(Anonymous));
    let digest = push_small_image(&trusted, &r, b"tls layer").await;
    assert_eq!(trusted.resolve(&r).await.expect("resolve").digest, digest);

    // HTTPS without the CA: the message names the key that fixes it.
    let untrusted = client(
        &format!("[registry.\"{}\"]\nhttp = false\n", reg.host()),
        Arc::new(Anonymous),
    );
    let err = untrusted.resolve(&r).await.expect_err("unknown CA");
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "{}: TLS certificate signed by an unknown authority",
            reg.host()
        )),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "set `ca = [\"/path/ca.pem\"]` under [registry.\"{}\"] in kilnd.toml",
            reg.host()
        )),
        "{msg}"
    );

    // A loopback host is plain HTTP by default: the message says how to
    // switch it to HTTPS.
    let plain = client("", Arc::new(Anonymous));
    let err = plain.resolve(&r).await.expect_err("HTTP to an HTTPS port");
    assert!(
        err.to_string()
            .starts_with(&format!("{}: fetching manifest v1: 400", reg.host()))
            && err.to_string().contains(&format!(
                "(set `http = false` under [registry.\"{}\"] in kilnd.toml)",
                reg.host()
            )),
        "{err}"
    );

    // `insecure = true` skips verification.
    let insecure = client(
        &format!(
            "[registry.\"{}\"]\nhttp = false\ninsecure = true\n",
            reg.host()
        ),
        Arc::new(Anonymous),
    );
    assert_eq!(insecure.resolve(&r).await.expect("resolve").digest, digest);
}

#[tokio::test]
async fn tls_client_certificate_from_keypair() {
    let reg = Registry::start_with(RegistryOptions {
        tls: true,
        client_certs: true,
        ..Default::default()
    })
    .await
    .expect("registry starts");
    let r = reference(&reg.reference("kiln/mtls:v1"));
    let with_cert = client(&reg.kilnd_toml(), Arc::new(Anonymous));
    let digest = push_small_image(&with_cert, &r, b"mtls layer").await;
    assert_eq!(with_cert.resolve(&r).await.expect("resolve").digest, digest);

    let ca = reg.ca().expect("tls registry has a CA");
    let without = client(
        &format!(
            "[registry.\"{}\"]\nhttp = false\nca = [\"{ca}\"]\n",
            reg.host()
        ),
        Arc::new(Anonymous),
    );
    let err = without.resolve(&r).await.expect_err("no client cert");
    let msg = err.to_string();
    assert!(msg.starts_with(&format!("{}: ", reg.host())), "{msg}");
    assert!(msg.contains("keypair"), "{msg}");
}

#[tokio::test]
async fn mirrors_are_asked_first_with_ns() {
    let upstream = Registry::start().await.expect("upstream starts");
    let mirror = Registry::start().await.expect("mirror starts");
    let direct = client("", Arc::new(Anonymous));
    // The mirror has v1 (as a pull-through cache would); upstream has v2.
    let in_mirror = reference(&mirror.reference("kiln/base:v1"));
    let mirrored_digest = push_small_image(&direct, &in_mirror, b"mirrored").await;
    let in_upstream = reference(&upstream.reference("kiln/base:v2"));
    let upstream_digest = push_small_image(&direct, &in_upstream, b"upstream").await;
    let upstream_manifest_requests = upstream.count_requests("/manifests/");
    let upstream_blob_requests = upstream.count_requests("/blobs/");

    let c = client(
        &format!(
            "[registry.\"{}\"]\nmirrors = [\"{}\"]\n",
            upstream.host(),
            mirror.host()
        ),
        Arc::new(Anonymous),
    );
    let v1 = reference(&upstream.reference("kiln/base:v1"));
    let resolved = c.resolve(&v1).await.expect("resolve through the mirror");
    assert_eq!(resolved.digest, mirrored_digest);
    let ns = format!("ns={}", upstream.host());
    let via_mirror =
        |q: &LoggedRequest| q.path.contains("/v2/kiln/base/manifests/v1") && q.path.contains(&ns);
    let logged = mirror.requests_when(|qs| qs.iter().any(via_mirror)).await;
    assert!(logged.iter().any(via_mirror), "{logged:?}");
    assert_eq!(
        upstream.count_requests("/manifests/"),
        upstream_manifest_requests,
        "the upstream was not asked: {:?}",
        upstream.requests()
    );
    let layer = b"mirrored";
    let (_, got) = read_all(&c, &v1, &sha256(layer), 0).await;
    assert_eq!(got, layer);
    assert_eq!(
        upstream.count_requests("/blobs/"),
        upstream_blob_requests,
        "the blob came from the mirror"
    );

    // What the mirror lacks comes from the registry itself.
    let v2 = reference(&upstream.reference("kiln/base:v2"));
    assert_eq!(
        c.resolve(&v2).await.expect("resolve").digest,
        upstream_digest
    );
    let missed = |q: &LoggedRequest| q.path.contains("/manifests/v2") && q.status == 404;
    let logged = mirror.requests_when(|qs| qs.iter().any(missed)).await;
    assert!(logged.iter().any(missed), "{logged:?}");
}

#[tokio::test]
async fn harness_fills_the_registry_with_ctr_push() {
    let ns = "registry-harness";
    let h = Harness::with_busybox(ns).await;
    let reg = Registry::start().await.expect("registry starts");
    let remote = reg
        .push_image(&h, ns, "docker.io/library/busybox:latest", "base/busybox:1")
        .expect("ctr push");
    assert!(
        reg.count_requests("/manifests/1") > 0,
        "{}",
        reg.access_log()
    );
    let local = h.ctr(ns, &["images", "ls"]).expect("ctr images ls");
    let local_digest = local
        .lines()
        .find(|l| l.starts_with("docker.io/library/busybox:latest"))
        .and_then(|l| l.split_whitespace().nth(2))
        .expect("busybox listed")
        .to_string();
    let c = client("", Arc::new(Anonymous));
    let resolved = c.resolve(&reference(&remote)).await.expect("resolve");
    assert_eq!(resolved.digest, local_digest);
}

#[tokio::test]
async fn a_hung_registry_times_out_naming_the_host() {
    let reg = Registry::start().await.expect("registry starts");
    let r = reference(&reg.reference("kiln/slow:v1"));
    // 32 MiB: more than loopback socket buffers hold, so the answer
    // cannot have arrived whole before the registry froze. Pushed with the
    // default limits: on a busy machine the registry may take more than the
    // 2 s the frozen-registry checks below use to store it.
    let layer = data(32 << 20, 4);
    let digest = push_small_image(&client("", Arc::new(Anonymous)), &r, &layer).await;
    let c = client("", Arc::new(Anonymous)).with_timeouts(
        std::time::Duration::from_secs(2),
        std::time::Duration::from_secs(2),
    );
    let layer_digest = sha256(&layer);

    // A blob whose answer stops mid-way: the reader times out.
    let mut reader = c
        .fetch_blob(&r, &layer_digest, 0)
        .await
        .expect("fetch_blob");
    let first = reader
        .chunk()
        .await
        .expect("first bytes")
        .expect("not empty");
    reg.pause().expect("SIGSTOP");
    let mut got = first.len();
    let err = loop {
        match reader.chunk().await {
            Ok(Some(chunk)) => got += chunk.len(),
            Ok(None) => panic!("a frozen registry sent the whole blob"),
            Err(e) => break e,
        }
    };
    assert!(got < layer.len());
    assert_eq!(
        err.to_string(),
        format!(
            "{}: no answer within 2s while fetching blob {layer_digest} (the registry is slow \
             or unreachable; KILN_REGISTRY_TIMEOUT=<seconds> changes the limit)",
            reg.host()
        )
    );

    let err = c.resolve(&r).await.expect_err("hung registry");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: no answer within 2s while fetching manifest v1 (the registry is slow or \
             unreachable; KILN_REGISTRY_TIMEOUT=<seconds> changes the limit)",
            reg.host()
        )
    );
    assert_eq!(err.kind(), kiln_proto::ErrorKind::DeadlineExceeded);
    assert!(err.is_transient());
    reg.resume().expect("SIGCONT");
    assert_eq!(c.resolve(&r).await.expect("answers again").digest, digest);
}

#[tokio::test]
async fn bearer_tokens_from_the_realm_cached_per_scope() {
    let reg = Registry::start_with(RegistryOptions {
        token_auth: Some(("kiln".into(), "t0ken-pass".into())),
        ..Default::default()
    })
    .await
    .expect("registry starts");
    let tokens = reg.token_server().expect("token server");
    let r = reference(&reg.reference("kiln/tok:v1"));

    // Basic credentials at the realm: one token for the push scope serves
    // every request of the push, one more for the pull scope.
    let c = client("", basic("kiln", "t0ken-pass"));
    let digest = push_small_image(&c, &r, b"token layer").await;
    assert_eq!(c.resolve(&r).await.expect("resolve").digest, digest);
    let asked = tokens.requests();
    assert_eq!(
        asked,
        [
            "GET service=kiln-test-registry&scope=repository%3Akiln%2Ftok%3Apull%2Cpush",
            "GET service=kiln-test-registry&scope=repository%3Akiln%2Ftok%3Apull",
        ],
        "{asked:?}"
    );

    // A mount asks for pull on the source repository in the same token.
    let dst = reference(&reg.reference("kiln/tok-copy:v1"));
    assert!(c
        .mount_blob(&dst, &sha256(b"token layer"), "kiln/tok")
        .await
        .expect("mount"));
    assert!(
        tokens.requests().last().is_some_and(|q| q.ends_with(
            "scope=repository%3Akiln%2Ftok-copy%3Apull%2Cpush&scope=repository%3Akiln%2Ftok%3Apull"
        )),
        "{:?}",
        tokens.requests()
    );

    // An identity token is exchanged with a refresh_token grant (POST).
    let identity: Arc<dyn Credentials> = Arc::new(Fixed(Credential::IdentityToken(
        reg.identity_token().expect("identity token"),
    )));
    let by_identity = client("", identity);
    assert_eq!(
        by_identity.resolve(&r).await.expect("resolve").digest,
        digest
    );
    let last = tokens.requests().last().cloned().unwrap_or_default();
    assert!(last.starts_with("POST grant_type=refresh_token&"), "{last}");

    // A wrong password is refused by the token server: one line, the 401.
    let wrong = client("", basic("kiln", "nope"));
    let err = wrong.resolve(&r).await.expect_err("wrong password");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: 401 Unauthorized (credentials were sent and refused)",
            reg.host()
        )
    );
    // Anonymous gets a token without access, and the registry says no.
    let anonymous = client("", Arc::new(Anonymous));
    let err = anonymous.resolve(&r).await.expect_err("anonymous");
    assert_eq!(
        err.to_string(),
        format!(
            "{}: 401 Unauthorized (no credentials were sent: log in to this registry first)",
            reg.host()
        )
    );
}
