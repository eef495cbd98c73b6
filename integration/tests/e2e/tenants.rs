//! Issue 8's tenants and network surface through the real binaries: two
//! tenants on one kilnd by client certificate (and by unix peer uid), each
//! confined to its own containerd namespace; a kilnd that refuses to
//! listen where it should not.

use crate::common;

use kiln_integration::pki::{free_port, write, Pki};
use kiln_integration::{cached_steps, kilnd_binary, Harness, KilnOutput};
use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::path::Path;

/// One client of the mTLS kilnd.
struct Client<'a> {
    h: &'a Harness,
    addr: String,
    ca: String,
    cert: (String, String),
}

impl Client<'_> {
    fn run(&self, args: &[&str]) -> KilnOutput {
        let mut all = vec![
            "--addr",
            self.addr.as_str(),
            "--tlscacert",
            self.ca.as_str(),
            "--tlsservername",
            "localhost",
            "--tlscert",
            self.cert.0.as_str(),
            "--tlskey",
            self.cert.1.as_str(),
        ];
        all.extend_from_slice(args);
        // The namespace flag is for embedded mode; remote builds land in
        // whatever namespace kilnd picks for the client.
        self.h.kiln("unused", &all).expect("kiln runs")
    }

    fn build(&self, tag: &str, ctx: &Path) -> KilnOutput {
        self.run(&[
            "build",
            "--progress",
            "plain",
            "-t",
            tag,
            ctx.to_str().expect("utf8"),
        ])
    }

    /// `kiln du -v`: (record id, the record's block) per record (buildx's
    /// verbose layout: an `ID:` line first, a blank line after).
    fn du(&self) -> BTreeSet<(String, String)> {
        let out = self.run(&["du", "-v"]).ok();
        out.stdout
            .split("\n\n")
            .filter_map(|block| {
                let id = block.lines().next()?.strip_prefix("ID:")?.trim();
                Some((id.to_string(), block.to_string()))
            })
            .collect()
    }
}

/// The kiln cache-record leases in `ns`, as ctr lists them.
fn cache_leases(h: &Harness, ns: &str) -> BTreeSet<String> {
    h.ctr(ns, &["leases", "ls"])
        .expect("ctr leases")
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|id| id.starts_with("kiln/cache/") && !id.contains("mount-"))
        .map(String::from)
        .collect()
}

fn ids(du: &BTreeSet<(String, String)>) -> BTreeSet<String> {
    du.iter()
        .map(|(id, _)| id.clone())
        .filter(|id| !id.contains("mount-"))
        .collect()
}

fn images(h: &Harness, ns: &str) -> String {
    h.ctr(ns, &["images", "ls", "-q"]).expect("ctr images")
}

const COMMON: &str = "FROM busybox\nRUN echo same-step > /same\n";

#[tokio::test]
async fn two_tenants_by_client_certificate_share_nothing() {
    let h = Harness::with_busybox("kiln-alice").await;
    h.import_busybox("kiln-bob", "docker.io/library/busybox:latest")
        .await
        .expect("busybox for bob");
    let pki = Pki::new(h.state_dir().join("pki"));
    let config = write(
        h.state_dir(),
        "kilnd-tenants.toml",
        r#"
[[tenant]]
name = "alice"
namespace = "kiln-alice"
match = { cn = "alice" }

[[tenant]]
name = "bob"
namespace = "kiln-bob"
match = { cn = "bob" }
"#
        .to_string(),
    );
    let addr = format!("tcp://127.0.0.1:{}", free_port());
    let _k = h
        .start_kilnd_with(
            "tenants-default",
            &[
                "--config",
                &config,
                "--addr",
                &addr,
                "--tlscert",
                &pki.server.0,
                "--tlskey",
                &pki.server.1,
                "--tlscacert",
                &pki.ca,
            ],
        )
        .await
        .expect("kilnd with tenants starts");
    let client = |cn: &str| Client {
        h: &h,
        addr: addr.clone(),
        ca: pki.ca.clone(),
        cert: pki.client(cn),
    };
    let (alice, bob, mallory) = (client("alice"), client("bob"), client("mallory"));

    // A certificate the CA signed but no tenant maps is refused by name.
    let ctx = h.context("common", &[("Dockerfile", COMMON)]);
    let refused = mallory.build("mallory:1", &ctx);
    assert!(!refused.success, "an unmapped client built");
    assert!(
        refused.stderr.contains("CN=")
            && refused.stderr.contains("mallory")
            && refused.stderr.contains("is not mapped to a tenant"),
        "{}",
        refused.stderr
    );
    let refused = mallory.run(&["du"]);
    assert!(!refused.success, "an unmapped client read du");

    // Alice builds; her repeat hits her cache; bob's identical build runs
    // the step itself.
    alice.build("common:alice", &ctx).ok();
    let again = alice.build("common:alice2", &ctx).ok();
    assert!(cached_steps(&again.stderr) > 0, "{}", again.stderr);
    let bobs = bob.build("common:bob", &ctx).ok();
    assert!(
        cached_steps(&bobs.stderr) == 0,
        "bob hit alice's cache:\n{}",
        bobs.stderr
    );

    // A cache mount alice writes is empty for bob (and still full for
    // alice, so the mount does persist).
    let writer = h.context(
        "writer",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=cache,target=/c,id=shared echo alice-data > /c/f\n",
        )],
    );
    let reader = h.context(
        "reader",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN --mount=type=cache,target=/c,id=shared ls -A /c > /seen\n",
        )],
    );
    alice.build("writer:alice", &writer).ok();
    alice.build("reader:alice", &reader).ok();
    bob.build("reader:bob", &reader).ok();
    assert_eq!(
        h.run_image_expecting(
            "kiln-alice",
            "docker.io/library/reader:alice",
            "ra",
            &["cat", "/seen"],
            "f\n"
        ),
        "f\n"
    );
    assert_eq!(
        h.run_image(
            "kiln-bob",
            "docker.io/library/reader:bob",
            "rb",
            &["cat", "/seen"]
        ),
        "",
        "bob saw alice's cache mount"
    );

    // The same image name in both tenants: each keeps its own.
    for (who, c) in [("alice", &alice), ("bob", &bob)] {
        let ctx = h.context(
            &format!("named-{who}"),
            &[(
                "Dockerfile",
                format!("FROM busybox\nRUN echo made-by-{who} > /who\n").as_str(),
            )],
        );
        c.build("same:name", &ctx).ok();
    }
    for who in ["alice", "bob"] {
        let ns = format!("kiln-{who}");
        let want = format!("made-by-{who}\n");
        let image = "docker.io/library/same:name";
        assert_eq!(
            h.run_image_expecting(&ns, image, "who", &["cat", "/who"], &want),
            want
        );
    }
    let (a_images, b_images) = (images(&h, "kiln-alice"), images(&h, "kiln-bob"));
    assert!(
        a_images.contains("writer:alice") && !a_images.contains(":bob"),
        "{a_images}"
    );
    assert!(
        b_images.contains("reader:bob") && !b_images.contains(":alice"),
        "{b_images}"
    );

    // du: each sees exactly the records of its own namespace.
    let (a_du, b_du) = (alice.du(), bob.du());
    assert_eq!(ids(&a_du), cache_leases(&h, "kiln-alice"));
    assert_eq!(ids(&b_du), cache_leases(&h, "kiln-bob"));
    assert!(
        a_du.iter().any(|(_, l)| l.contains("alice-data")),
        "{a_du:?}"
    );
    assert!(
        !b_du.iter().any(|(_, l)| l.contains("alice-data")),
        "bob sees alice's record: {b_du:?}"
    );

    // Alice prunes everything; bob's cache stays and still hits.
    let pruned = alice.run(&["prune", "--all"]).ok();
    assert!(pruned.stdout.contains("Total:"), "{}", pruned.stdout);
    assert!(
        cache_leases(&h, "kiln-alice").is_empty(),
        "alice's prune left records"
    );
    assert!(ids(&alice.du()).is_empty(), "alice's du after prune");
    assert_eq!(
        ids(&bob.du()),
        ids(&b_du),
        "alice's prune touched bob's records"
    );
    let bob_again = bob.build("common:bob2", &ctx).ok();
    assert!(cached_steps(&bob_again.stderr) > 0, "{}", bob_again.stderr);
    // And alice now runs the step again: her cache is gone, not bob's.
    let alice_again = alice.build("common:alice3", &ctx).ok();
    assert!(
        cached_steps(&alice_again.stderr) == 0,
        "{}",
        alice_again.stderr
    );

    // Build records are a tenant's own too: alice's failed build keeps its
    // whole error as a blob of kilnd's content service, which she reads
    // and bob can neither list nor read by its digest.
    let failing = h.context("failing", &[("Dockerfile", "FROM busybox\nRUN exit 3\n")]);
    assert!(!alice.build("fails:alice", &failing).success);
    let port: u16 = addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let (a_ch, b_ch) = (
        tls_channel(port, &pki, &pki.client("alice")).await,
        tls_channel(port, &pki, &pki.client("bob")).await,
    );
    let (a_refs, a_error) = history_of(a_ch.clone()).await;
    let (b_refs, _) = history_of(b_ch.clone()).await;
    let digest = a_error.expect("alice's failed build names its error blob");
    assert!(
        a_refs.is_disjoint(&b_refs),
        "records seen by both: {a_refs:?} {b_refs:?}"
    );
    use kiln_proto::content::content_client::ContentClient;
    use kiln_proto::content::{InfoRequest, ReadContentRequest};
    let info = |ch: tonic::transport::Channel| {
        let digest = digest.clone();
        async move { ContentClient::new(ch).info(InfoRequest { digest }).await }
    };
    let size = info(a_ch.clone())
        .await
        .expect("alice reads her error's Info")
        .into_inner()
        .info
        .expect("info")
        .size;
    assert!(size > 0);
    let e = info(b_ch.clone()).await.expect_err("bob read alice's Info");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let read = ContentClient::new(b_ch)
        .read(ReadContentRequest {
            digest: digest.clone(),
            offset: 0,
            size,
        })
        .await;
    let e = match read {
        Err(e) => e,
        Ok(stream) => stream
            .into_inner()
            .message()
            .await
            .expect_err("bob read alice's error blob"),
    };
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
}

/// The refs of the build records a client lists (as `buildx history ls`)
/// and the digest of the first failed record's `externalError`.
async fn history_of(ch: tonic::transport::Channel) -> (BTreeSet<String>, Option<String>) {
    let (mut refs, mut error) = (BTreeSet::new(), None);
    for r in common::build_records(ch).await {
        if error.is_none() {
            error = r.external_error.map(|d| d.digest);
        }
        refs.insert(r.r#ref);
    }
    (refs, error)
}

#[tokio::test]
async fn unix_socket_clients_are_tenants_by_uid() {
    const UID: u32 = 4242;
    let h = Harness::with_busybox("kiln-u4242").await;
    let config = write(
        h.state_dir(),
        "kilnd-uid.toml",
        format!(
            "[[tenant]]\nname = \"u{UID}\"\nnamespace = \"kiln-u{UID}\"\nmatch = {{ uid = {UID} }}\n\
             cache-max = 1\n"
        ),
    );
    let k = h
        .start_kilnd_with("uid-default", &["--config", &config])
        .await
        .expect("kilnd starts");
    // Let the unprivileged client reach the socket and read the context.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(h.state_dir(), std::fs::Permissions::from_mode(0o711))
        .expect("chmod state dir");
    std::fs::set_permissions(&k.socket, std::fs::Permissions::from_mode(0o666))
        .expect("chmod socket");
    let ctx = h.context(
        "uid",
        &[("Dockerfile", "FROM busybox\nRUN echo by-uid > /u\n")],
    );
    let c = ctx.to_str().expect("utf8");
    let addr = k.addr();
    let args = [
        "--addr",
        addr.as_str(),
        "build",
        "--progress",
        "plain",
        "-t",
        "uid:1",
        c,
    ];

    // root (uid 0) is not mapped.
    let refused = h.kiln("unused", &args).expect("kiln runs");
    assert!(!refused.success, "root built without a mapping");
    assert!(
        refused.stderr.contains("uid 0 is not mapped"),
        "{}",
        refused.stderr
    );

    let mut cmd = h.kiln_command("unused").expect("kiln");
    cmd.args(args).env("HOME", "/tmp");
    // SAFETY: setgid/setuid are async-signal-safe; nothing else runs
    // between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setgid(nix::unistd::Gid::from_raw(UID)).map_err(std::io::Error::from)?;
            nix::unistd::setuid(nix::unistd::Uid::from_raw(UID)).map_err(std::io::Error::from)
        });
    }
    let out = cmd.output().expect("kiln runs as uid 4242");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        h.run_image_expecting(
            "kiln-u4242",
            "docker.io/library/uid:1",
            "u",
            &["cat", "/u"],
            "by-uid\n"
        ),
        "by-uid\n"
    );
    assert!(
        !images(&h, "uid-default").contains("uid:1"),
        "the build landed in the default namespace"
    );
    // cache-max = 1 byte: the tenant's cache was pruned after the build
    // (the image keeps what it needs).
    assert_eq!(cache_leases(&h, "kiln-u4242"), BTreeSet::new());
}

/// Starts kilnd with `args` (no containerd needed: the configuration is
/// refused first) and returns its exit status and stderr.
fn kilnd_refuses(args: &[&str]) -> String {
    let out = std::process::Command::new(kilnd_binary().expect("kilnd"))
        .args(args)
        .output()
        .expect("kilnd runs");
    assert!(!out.status.success(), "kilnd started with {args:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn kilnd_refuses_plain_tcp_beyond_loopback_and_tls_without_client_auth() {
    let dir = tempfile::tempdir().expect("tmp");
    let root = dir.path().join("root");
    let root = root.to_str().expect("utf8");
    let port = free_port();
    let addr = format!("tcp://0.0.0.0:{port}");
    let err = kilnd_refuses(&["--root", root, "--addr", &addr]);
    assert!(
        err.contains(&format!("refusing to listen on {addr} without TLS"))
            && err.contains("--insecure-tcp"),
        "{err}"
    );
    // Nothing listens on the port.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());

    let pki = Pki::new(dir.path().join("pki"));
    let err = kilnd_refuses(&[
        "--root",
        root,
        "--addr",
        &addr,
        "--tlscert",
        &pki.server.0,
        "--tlskey",
        &pki.server.1,
    ]);
    assert!(
        err.contains(&format!(
            "refusing to listen on {addr} with TLS but without client certificates"
        )) && err.contains("--tls-allow-no-client-auth"),
        "{err}"
    );
}

/// A raw gRPC channel to kilnd over mutual TLS with `cert`.
async fn tls_channel(port: u16, pki: &Pki, cert: &(String, String)) -> tonic::transport::Channel {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::sync::Arc;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&pki.ca).expect("ca") {
        roots.add(c.expect("ca cert")).expect("root");
    }
    let chain = CertificateDer::pem_file_iter(&cert.0)
        .expect("cert")
        .collect::<Result<Vec<_>, _>>()
        .expect("cert chain");
    let key = PrivateKeyDer::from_pem_file(&cert.1).expect("key");
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .expect("client cert");
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_| {
            let connector = connector.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
                let name = rustls::pki_types::ServerName::try_from("localhost")
                    .map_err(std::io::Error::other)?;
                let tls = connector.connect(name, tcp).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        }))
        .await
        .expect("connect over mutual TLS")
}

/// `req` with the build id metadata LLBBridge calls carry.
fn for_build<T>(msg: T, build: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.metadata_mut()
        .insert("buildkit-controlapi-buildid", build.parse().expect("ascii"));
    req
}

#[tokio::test]
async fn one_tenants_build_ref_is_not_reachable_from_another() {
    use kiln_proto::control::control_client::ControlClient;
    use kiln_proto::control::{SolveRequest, StatusRequest};
    use kiln_proto::gateway::llb_bridge_client::LlbBridgeClient;
    use kiln_proto::gateway::ReturnRequest;
    use std::time::Duration;

    let h = Harness::start().await.expect("containerd");
    let pki = Pki::new(h.state_dir().join("pki"));
    let config = write(
        h.state_dir(),
        "kilnd-refs.toml",
        "[[tenant]]\nname = \"alice\"\nnamespace = \"ref-alice\"\nmatch = { cn = \"alice\" }\n\
         [[tenant]]\nname = \"bob\"\nnamespace = \"ref-bob\"\nmatch = { cn = \"bob\" }\nmax-builds = 1\n"
            .to_string(),
    );
    let port = free_port();
    let addr = format!("tcp://127.0.0.1:{port}");
    let _k = h
        .start_kilnd_with(
            "refs-default",
            &[
                "--config",
                &config,
                "--addr",
                &addr,
                "--tlscert",
                &pki.server.0,
                "--tlskey",
                &pki.server.1,
                "--tlscacert",
                &pki.ca,
            ],
        )
        .await
        .expect("kilnd starts");
    let alice = tls_channel(port, &pki, &pki.client("alice")).await;
    let bob = tls_channel(port, &pki, &pki.client("bob")).await;

    // Alice opens a gateway build: it waits for her Return.
    let solve = |ch: tonic::transport::Channel| {
        tokio::spawn(async move {
            ControlClient::new(ch)
                .solve(SolveRequest {
                    r#ref: "shared-ref".into(),
                    ..Default::default()
                })
                .await
        })
    };
    let alices = solve(alice.clone());
    let mut status = ControlClient::new(alice.clone())
        .status(StatusRequest {
            r#ref: "shared-ref".into(),
        })
        .await
        .expect("alice sees her own build")
        .into_inner();

    // Bob cannot watch or end it by its ref.
    let e = ControlClient::new(bob.clone())
        .status(StatusRequest {
            r#ref: "shared-ref".into(),
        })
        .await
        .expect_err("bob watched alice's build");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    let e = LlbBridgeClient::new(bob.clone())
        .r#return(for_build(ReturnRequest::default(), "shared-ref"))
        .await
        .expect_err("bob returned alice's build");
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");

    // Bob's own build with the same ref is his, not merged with hers.
    let bobs = solve(bob.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    // His max-builds = 1 refuses a second build while it runs.
    let second = ControlClient::new(bob.clone())
        .solve(SolveRequest {
            r#ref: "bobs-second".into(),
            ..Default::default()
        })
        .await
        .expect_err("bob ran two builds");
    assert_eq!(second.code(), tonic::Code::ResourceExhausted, "{second:?}");
    assert!(second.message().contains("max-builds"), "{second:?}");
    LlbBridgeClient::new(bob.clone())
        .r#return(for_build(ReturnRequest::default(), "shared-ref"))
        .await
        .expect("bob returns his build");
    bobs.await
        .expect("task")
        .expect("bob's build ends with his Return");
    assert!(!alices.is_finished(), "bob's Return ended alice's build");
    // Once it ended, he may build again.
    let again = ControlClient::new(bob.clone());
    let third = tokio::spawn(async move {
        let mut c = again;
        c.solve(SolveRequest {
            r#ref: "bobs-third".into(),
            ..Default::default()
        })
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    LlbBridgeClient::new(bob.clone())
        .r#return(for_build(ReturnRequest::default(), "bobs-third"))
        .await
        .expect("bob returns his third build");
    third
        .await
        .expect("task")
        .expect("a build after the first ended is allowed");

    // Session ids are keyed by tenant too: alice's live session id does
    // not block bob's equal one, while her own second claim is refused.
    let open = |ch: tonic::transport::Channel, id: &'static str| async move {
        let (side, requests) = kiln_session::hijack::client_side();
        let mut req = tonic::Request::new(requests);
        req.metadata_mut()
            .insert("x-docker-expose-session-uuid", id.parse().expect("ascii"));
        ControlClient::new(ch)
            .session(req)
            .await
            .map(|s| (side, s.into_inner()))
    };
    let alices_session = open(alice.clone(), "shared-session")
        .await
        .expect("alice's session");
    let bobs_session = open(bob.clone(), "shared-session")
        .await
        .expect("bob's session with an equal id is his own");
    let e = open(alice.clone(), "shared-session")
        .await
        .expect_err("alice's live session id was claimed twice");
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
    drop((alices_session, bobs_session));

    // A local source names a session by the client's id, inside its own
    // tenant: bob naming alice's live session (as buildx's
    // `local-sessionid:` or a definition's `local.session` would) finds
    // nothing, while his own is read.
    use kiln_integration::clientsession::ClientSession;
    let alice_dir = h.context("alice-files", &[("a.txt", "alice's file\n")]);
    let bob_dir = h.context(
        "bob-files",
        &[
            ("a.txt", "bob's file\n"),
            ("Dockerfile", "FROM scratch\nCOPY a.txt /a.txt\n"),
        ],
    );
    let _alice_files = ClientSession::of_context(alice.clone(), "alices-files", &alice_dir).await;
    let bob_files = ClientSession::of_context(bob.clone(), "bobs-files", &bob_dir).await;
    let bob_build = {
        let ch = bob.clone();
        let session = bob_files.id.clone();
        tokio::spawn(async move {
            ControlClient::new(ch)
                .solve(SolveRequest {
                    r#ref: "bobs-files-build".into(),
                    session,
                    ..Default::default()
                })
                .await
        })
    };
    let solve_with = |session: &str| {
        for_build(
            kiln_proto::gateway::SolveRequest {
                frontend: "dockerfile.v0".into(),
                frontend_opt: std::collections::HashMap::from([(
                    "local-sessionid:context".to_string(),
                    session.to_string(),
                )]),
                allow_result_return: true,
                ..Default::default()
            },
            "bobs-files-build",
        )
    };
    for other in ["alices-files", "alice/alices-files"] {
        let e = LlbBridgeClient::new(bob.clone())
            .solve(solve_with(other))
            .await
            .expect_err("bob read alice's session");
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{other}: {e:?}");
        assert!(
            e.message()
                .contains(&format!("no active session for {other}")),
            "{e:?}"
        );
    }
    LlbBridgeClient::new(bob.clone())
        .solve(solve_with("bobs-files"))
        .await
        .expect("bob's own session by its id");
    LlbBridgeClient::new(bob.clone())
        .r#return(for_build(ReturnRequest::default(), "bobs-files-build"))
        .await
        .expect("bob returns");
    bob_build
        .await
        .expect("task")
        .expect("bob's files build ends");

    LlbBridgeClient::new(alice.clone())
        .r#return(for_build(ReturnRequest::default(), "shared-ref"))
        .await
        .expect("alice returns her build");
    alices
        .await
        .expect("task")
        .expect("alice's build ends with her Return");
    // Her status stream ends with her build.
    while let Some(_update) = status.message().await.expect("status stream") {}
}
