//! The push walk on the in-memory content store and a recording fake
//! registry: order, HEAD skip, cross-repository mounts, push-by-digest and
//! a refused login.

use super::*;
use crate::oci::{ImageManifestBuilder, MediaType};
use kiln_snapshot::containerd::LeaseId;
use kiln_snapshot::services::write_blob;
use kiln_snapshot::testing::MemContainerd;
use kiln_solver::Digest;
use std::sync::Mutex;

const REGISTRY: &str = "127.0.0.1:5000";
/// The source label key of blobs from [`REGISTRY`], as containerd spells it
/// (the host without its port).
const SOURCE_KEY: &str = "containerd.io/distribution.source.127.0.0.1";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// One registry call, as the fake saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Head {
        repo: String,
        digest: String,
    },
    Mount {
        repo: String,
        digest: String,
        from: String,
    },
    Upload {
        repo: String,
        digest: String,
    },
    Manifest {
        repo: String,
        reference: String,
    },
}

#[derive(Debug, Default)]
struct State {
    /// repository -> blob digests it holds.
    blobs: HashMap<String, BTreeSet<String>>,
    /// (repository, tag or digest) -> (media type, bytes).
    manifests: HashMap<(String, String), (String, Vec<u8>)>,
    calls: Vec<Call>,
    /// Every request is refused with a 401 (a wrong password).
    refuse: bool,
}

/// A registry in memory that records its calls.
#[derive(Debug, Default)]
struct FakeRegistry(Mutex<State>);

impl FakeRegistry {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, c: Call) -> std::result::Result<(), RegistryError> {
        let mut s = self.state();
        s.calls.push(c);
        if s.refuse {
            return Err(RegistryError::Unauthorized {
                host: REGISTRY.into(),
                credentials_sent: true,
            });
        }
        Ok(())
    }

    fn calls(&self) -> Vec<Call> {
        self.state().calls.clone()
    }

    fn holds(&self, repo: &str, digest: &str) -> bool {
        self.state()
            .blobs
            .get(repo)
            .is_some_and(|b| b.contains(digest))
    }
}

#[async_trait]
impl PushTarget for FakeRegistry {
    async fn blob_exists(
        &self,
        r: &Reference,
        digest: &str,
    ) -> std::result::Result<Option<u64>, RegistryError> {
        self.record(Call::Head {
            repo: r.path.clone(),
            digest: digest.into(),
        })?;
        Ok(self.holds(&r.path, digest).then_some(1))
    }

    async fn mount_blob(
        &self,
        r: &Reference,
        digest: &str,
        from_path: &str,
    ) -> std::result::Result<bool, RegistryError> {
        self.record(Call::Mount {
            repo: r.path.clone(),
            digest: digest.into(),
            from: from_path.into(),
        })?;
        if !self.holds(from_path, digest) {
            return Ok(false);
        }
        self.state()
            .blobs
            .entry(r.path.clone())
            .or_default()
            .insert(digest.into());
        Ok(true)
    }

    async fn push_blob(
        &self,
        r: &Reference,
        digest: &str,
        size: u64,
        mut body: mpsc::Receiver<std::io::Result<Bytes>>,
    ) -> std::result::Result<(), RegistryError> {
        self.record(Call::Upload {
            repo: r.path.clone(),
            digest: digest.into(),
        })?;
        let mut data = Vec::new();
        while let Some(chunk) = body.recv().await {
            let chunk = chunk.map_err(|source| RegistryError::Body {
                digest: digest.into(),
                source,
            })?;
            data.extend_from_slice(&chunk);
        }
        assert_eq!(data.len() as u64, size, "announced size of {digest}");
        assert_eq!(Digest::of(&data).to_string(), digest, "uploaded bytes");
        self.state()
            .blobs
            .entry(r.path.clone())
            .or_default()
            .insert(digest.into());
        Ok(())
    }

    async fn push_manifest(
        &self,
        r: &Reference,
        tag_or_digest: &str,
        media_type: &str,
        bytes: Vec<u8>,
    ) -> std::result::Result<String, RegistryError> {
        self.record(Call::Manifest {
            repo: r.path.clone(),
            reference: tag_or_digest.into(),
        })?;
        // A registry refuses a manifest whose blobs it does not have.
        let v: serde_json::Value = serde_json::from_slice(&bytes).expect("manifest json");
        let mut needed: Vec<String> = Vec::new();
        for key in ["layers", "manifests"] {
            for d in v[key].as_array().into_iter().flatten() {
                needed.push(d["digest"].as_str().expect("digest").into());
            }
        }
        if let Some(c) = v["config"]["digest"].as_str() {
            needed.push(c.into());
        }
        let s = self.state();
        for d in &needed {
            let present = s.blobs.get(&r.path).is_some_and(|b| b.contains(d))
                || s.manifests.contains_key(&(r.path.clone(), d.clone()));
            assert!(present, "{d} pushed before what needs it");
        }
        drop(s);
        let digest = Digest::of(&bytes).to_string();
        let mut s = self.state();
        s.manifests.insert(
            (r.path.clone(), tag_or_digest.into()),
            (media_type.into(), bytes.clone()),
        );
        s.manifests
            .insert((r.path.clone(), digest.clone()), (media_type.into(), bytes));
        Ok(digest)
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    svc: Services,
    lease: LeaseId,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let mem = MemContainerd::new(&dir.path().join("snapshots")).with_namespace("test");
    let s = Arc::new(mem.clone());
    let svc = Services {
        namespace: mem.namespace().to_string(),
        content: s.clone(),
        snapshots: s.clone(),
        leases: s.clone(),
        images: s.clone(),
        applier: s,
        memo: Default::default(),
    };
    let lease = LeaseId::named("test", "push");
    svc.leases
        .create(&lease, "test", None, HashMap::new())
        .await
        .expect("lease");
    Fixture {
        _dir: dir,
        svc,
        lease,
    }
}

impl Fixture {
    async fn blob(&self, data: &[u8], labels: HashMap<String, String>) -> Descriptor {
        let d = write_blob(&*self.svc.content, data, labels, &self.lease)
            .await
            .expect("write blob");
        oci::descriptor(LAYER, &d.to_string(), data.len() as i64).expect("descriptor")
    }

    /// A manifest over `layers` and a config of its own; returns its
    /// descriptor and the config's.
    async fn manifest(&self, layers: &[Descriptor], tag: &str) -> (Descriptor, Descriptor) {
        let cfg_bytes = format!("{{\"config\":{{}},\"tag\":\"{tag}\"}}");
        let cfg = self.blob(cfg_bytes.as_bytes(), HashMap::new()).await;
        let cfg = oci::descriptor(
            oci::MEDIA_OCI_CONFIG,
            cfg.digest().as_ref(),
            oci::size_of(&cfg),
        )
        .expect("config descriptor");
        let m = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::from(oci::MEDIA_OCI_MANIFEST))
            .config(cfg.clone())
            .layers(layers.to_vec())
            .build()
            .expect("manifest");
        let bytes = oci::to_json(&m).expect("json");
        let d = self.blob(&bytes, HashMap::new()).await;
        (
            oci::descriptor(
                oci::MEDIA_OCI_MANIFEST,
                d.digest().as_ref(),
                oci::size_of(&d),
            )
            .expect("manifest descriptor"),
            cfg,
        )
    }

    async fn index(&self, manifests: &[Descriptor]) -> Descriptor {
        let v = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": oci::MEDIA_OCI_INDEX,
            "manifests": manifests.iter().map(|m| serde_json::json!({
                "mediaType": m.media_type().to_string(),
                "digest": m.digest().to_string(),
                "size": m.size(),
            })).collect::<Vec<_>>(),
        });
        let bytes = serde_json::to_vec(&v).expect("json");
        let d = self.blob(&bytes, HashMap::new()).await;
        oci::descriptor(oci::MEDIA_OCI_INDEX, d.digest().as_ref(), oci::size_of(&d))
            .expect("index descriptor")
    }
}

fn name(repo: &str, tag: &str) -> String {
    format!("{REGISTRY}/{repo}:{tag}")
}

/// Where in `calls` the first call satisfying `f` is.
fn position(calls: &[Call], f: impl Fn(&Call) -> bool) -> usize {
    calls.iter().position(f).expect("call made")
}

#[tokio::test]
async fn an_index_is_pushed_blobs_first_then_configs_manifests_and_the_index() {
    let f = fixture().await;
    let shared = f.blob(&vec![7u8; 3 << 20], HashMap::new()).await;
    let a = f.blob(b"layer a", HashMap::new()).await;
    let b = f.blob(b"layer b", HashMap::new()).await;
    let (m1, c1) = f.manifest(&[shared.clone(), a.clone()], "amd64").await;
    let (m2, c2) = f.manifest(&[shared.clone(), b.clone()], "arm64").await;
    let index = f.index(&[m1.clone(), m2.clone()]).await;
    let reg = Arc::new(FakeRegistry::default());
    let (progress, mut rx) = crate::progress::channel();
    let pushed = push_image(
        &f.svc,
        reg.clone(),
        &index,
        &[name("app", "v1")],
        &PushOptions::default(),
        &progress,
        10,
    )
    .await
    .expect("push");
    drop(progress);
    assert_eq!(pushed.digest, index.digest().to_string());

    let calls = reg.calls();
    let uploads: Vec<String> = calls
        .iter()
        .filter_map(|c| match c {
            Call::Upload { digest, .. } => Some(digest.clone()),
            _ => None,
        })
        .collect();
    // Each blob once, the shared layer too.
    assert_eq!(uploads.len(), 5, "{calls:?}");
    let digest_of = |d: &Descriptor| d.digest().to_string();
    let upload_at = |d: &Descriptor| {
        position(
            &calls,
            |c| matches!(c, Call::Upload { digest, .. } if *digest == digest_of(d)),
        )
    };
    let manifest_at = |reference: &str| {
        position(
            &calls,
            |c| matches!(c, Call::Manifest { reference: r, .. } if r == reference),
        )
    };
    let last_layer = [&shared, &a, &b].map(upload_at).into_iter().max();
    let first_config = [&c1, &c2].map(upload_at).into_iter().min();
    let last_config = [&c1, &c2].map(upload_at).into_iter().max();
    assert!(
        last_layer < first_config,
        "layers before configs: {calls:?}"
    );
    let children = [manifest_at(&digest_of(&m1)), manifest_at(&digest_of(&m2))];
    assert!(
        last_config < children.iter().min().copied(),
        "configs before manifests: {calls:?}"
    );
    // The manifests by digest, the index last and by its tag.
    assert!(children.iter().all(|&c| c < manifest_at("v1")), "{calls:?}");
    assert_eq!(
        calls.last(),
        Some(&Call::Manifest {
            repo: "app".into(),
            reference: "v1".into()
        })
    );
    // Every upload was preceded by its HEAD.
    for d in &uploads {
        let head = position(
            &calls,
            |c| matches!(c, Call::Head { digest, .. } if digest == d),
        );
        let up = position(
            &calls,
            |c| matches!(c, Call::Upload { digest, .. } if digest == d),
        );
        assert!(head < up, "HEAD before upload of {d}");
    }

    // Progress: "pushing layers" then "pushing manifest for NAME", from
    // the vertex number given, with a line per blob.
    let mut names = Vec::new();
    let mut lines = 0;
    let mut done: HashMap<String, (u64, u64)> = HashMap::new();
    while let Some(e) = rx.recv().await {
        match e {
            ProgressEvent::Started { vertex, name, .. } => names.push((vertex, name)),
            ProgressEvent::Log {
                vertex: 10, data, ..
            } => {
                assert!(String::from_utf8_lossy(&data).contains(": pushed "));
                lines += 1;
            }
            ProgressEvent::Status {
                vertex: 10,
                id,
                current,
                total,
                completed: Some(_),
                ..
            } => {
                done.insert(id, (current, total));
            }
            _ => {}
        }
    }
    // A finished byte status per blob: all of it sent.
    assert_eq!(done.len(), 5, "{done:?}");
    assert_eq!(
        done.get(&shared.digest().to_string()),
        Some(&(3 << 20, 3 << 20))
    );
    assert_eq!(
        names,
        [
            (10, "pushing layers".to_string()),
            (11, format!("pushing manifest for {}", name("app", "v1")))
        ]
    );
    assert_eq!(lines, 5);
}

#[tokio::test]
async fn blobs_the_repository_has_are_skipped_after_head() {
    let f = fixture().await;
    let have = f.blob(b"base layer", HashMap::new()).await;
    let new = f.blob(b"new layer", HashMap::new()).await;
    let (m, _) = f.manifest(&[have.clone(), new.clone()], "x").await;
    let reg = Arc::new(FakeRegistry::default());
    reg.state()
        .blobs
        .entry("app".into())
        .or_default()
        .insert(have.digest().to_string());
    let pushed = push_image(
        &f.svc,
        reg.clone(),
        &m,
        &[name("app", "latest")],
        &PushOptions::default(),
        &Progress::none(),
        0,
    )
    .await
    .expect("push");
    let calls = reg.calls();
    assert!(calls.contains(&Call::Head {
        repo: "app".into(),
        digest: have.digest().to_string()
    }));
    assert!(
        !calls.iter().any(
            |c| matches!(c, Call::Upload { digest, .. } if *digest == have.digest().to_string())
        ),
        "{calls:?}"
    );
    let outcome = |d: &Descriptor| {
        pushed
            .blobs
            .iter()
            .find(|(_, digest, _)| *digest == d.digest().to_string())
            .map(|(_, _, o)| o.clone())
    };
    assert_eq!(outcome(&have), Some(BlobOutcome::Exists));
    assert_eq!(outcome(&new), Some(BlobOutcome::Uploaded));
    // A single manifest goes up by its tag.
    assert!(reg
        .state()
        .manifests
        .contains_key(&("app".to_string(), "latest".to_string())));
}

#[tokio::test]
async fn a_blob_pulled_from_the_same_registry_is_mounted_not_uploaded() {
    let f = fixture().await;
    let same = f
        .blob(
            b"from base",
            HashMap::from([(SOURCE_KEY.to_string(), "library/base".to_string())]),
        )
        .await;
    let other = f
        .blob(
            b"from elsewhere",
            HashMap::from([(
                "containerd.io/distribution.source.docker.io".to_string(),
                "library/base".to_string(),
            )]),
        )
        .await;
    let (m, _) = f.manifest(&[same.clone(), other.clone()], "x").await;
    let reg = Arc::new(FakeRegistry::default());
    for d in [&same, &other] {
        reg.state()
            .blobs
            .entry("library/base".into())
            .or_default()
            .insert(d.digest().to_string());
    }
    push_image(
        &f.svc,
        reg.clone(),
        &m,
        &[name("team/app", "1")],
        &PushOptions::default(),
        &Progress::none(),
        0,
    )
    .await
    .expect("push");
    let calls = reg.calls();
    assert!(calls.contains(&Call::Mount {
        repo: "team/app".into(),
        digest: same.digest().to_string(),
        from: "library/base".into()
    }));
    let uploaded = |d: &Descriptor| {
        calls
            .iter()
            .any(|c| matches!(c, Call::Upload { digest, .. } if *digest == d.digest().to_string()))
    };
    assert!(!uploaded(&same), "{calls:?}");
    // A source on another registry is no mount source here.
    assert!(uploaded(&other), "{calls:?}");
    assert!(!calls
        .iter()
        .any(|c| matches!(c, Call::Mount { digest, .. } if *digest == other.digest().to_string())));
    // The push is recorded as a source for later pushes.
    let labels = f
        .svc
        .content
        .info(other.digest().as_ref())
        .await
        .expect("info")
        .labels;
    assert_eq!(labels.get(SOURCE_KEY).map(String::as_str), Some("team/app"));
}

#[tokio::test]
async fn several_names_and_push_by_digest() {
    let f = fixture().await;
    let l = f.blob(b"only layer", HashMap::new()).await;
    let (m, _) = f.manifest(std::slice::from_ref(&l), "x").await;
    let reg = Arc::new(FakeRegistry::default());
    let opts = PushOptions {
        by_digest: true,
        ..Default::default()
    };
    push_image(
        &f.svc,
        reg.clone(),
        &m,
        &[name("one", "a"), name("two", "b")],
        &opts,
        &Progress::none(),
        0,
    )
    .await
    .expect("push");
    let calls = reg.calls();
    let digest = m.digest().to_string();
    let manifests: Vec<&Call> = calls
        .iter()
        .filter(|c| matches!(c, Call::Manifest { .. }))
        .collect();
    // By digest only: no tag anywhere.
    assert_eq!(
        manifests,
        [
            &Call::Manifest {
                repo: "one".into(),
                reference: digest.clone()
            },
            &Call::Manifest {
                repo: "two".into(),
                reference: digest.clone()
            }
        ]
    );
    // The second repository of the registry mounts from the first.
    assert!(calls.contains(&Call::Mount {
        repo: "two".into(),
        digest: l.digest().to_string(),
        from: "one".into()
    }));
    assert_eq!(
        calls
            .iter()
            .filter(|c| matches!(c, Call::Upload { .. }))
            .count(),
        2,
        "layer and config once, into the first repository: {calls:?}"
    );
}

#[tokio::test]
async fn a_refused_login_fails_with_the_registry_and_tags_nothing() {
    let f = fixture().await;
    let l = f.blob(b"layer", HashMap::new()).await;
    let (m, _) = f.manifest(&[l], "x").await;
    let reg = Arc::new(FakeRegistry::default());
    reg.state().refuse = true;
    let err = push_image(
        &f.svc,
        reg.clone(),
        &m,
        &[name("app", "v1")],
        &PushOptions::default(),
        &Progress::none(),
        0,
    )
    .await
    .expect_err("401");
    assert_eq!(err.kind(), kiln_proto::ErrorKind::FailedPrecondition);
    let msg = err.to_string();
    assert!(msg.contains(REGISTRY) && msg.contains("401"), "{msg}");
    assert!(
        !reg.calls()
            .iter()
            .any(|c| matches!(c, Call::Manifest { .. } | Call::Upload { .. })),
        "{:?}",
        reg.calls()
    );
    assert!(reg.state().manifests.is_empty());
}

#[test]
fn mount_sources_come_from_the_registrys_label_only() {
    let r = Reference::parse(&name("team/app", "1")).expect("reference");
    let labels = HashMap::from([
        (
            SOURCE_KEY.to_string(),
            "library/base,team/app,,other/x".to_string(),
        ),
        (
            "containerd.io/distribution.source.docker.io".to_string(),
            "library/busybox".to_string(),
        ),
    ]);
    assert_eq!(mount_sources(&labels, &r), ["library/base", "other/x"]);
    assert!(mount_sources(&HashMap::new(), &r).is_empty());
    // containerd's own pull writes the host without its port.
    let pulled_by_ctr = HashMap::from([(
        "containerd.io/distribution.source.127.0.0.1".to_string(),
        "library/base".to_string(),
    )]);
    assert_eq!(mount_sources(&pulled_by_ctr, &r), ["library/base"]);
}

#[test]
fn registry_insecure_marks_only_the_pushed_registries() {
    let mut hosts = HostsConfig::default();
    hosts.hosts.insert(
        "other.example".into(),
        kiln_registry::HostConfig {
            ca: vec!["/ca.pem".into()],
            ..Default::default()
        },
    );
    let names = [name("app", "1"), "registry.example:5000/x/y:2".to_string()];
    let same = hosts_for(&hosts, &names, false).expect("hosts");
    assert_eq!(same, hosts, "without registry.insecure nothing changes");
    let insecure = hosts_for(&hosts, &names, true).expect("hosts");
    for host in [REGISTRY, "registry.example:5000"] {
        let h = insecure.get(host).expect("marked");
        assert_eq!((h.http, h.insecure), (Some(true), true), "{host}");
    }
    assert_eq!(insecure.get("other.example"), hosts.get("other.example"));
    let bad = hosts_for(&hosts, &["Not A Name".to_string()], true).expect_err("bad name");
    assert!(bad.to_string().contains("push target"), "{bad}");
}
