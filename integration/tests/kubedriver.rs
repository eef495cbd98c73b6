//! The kubernetes driver (issue 13). kiln reaches a kilnd in a pod
//! through `kilnd dial-stdio` run by a pod exec: gRPC over the exec's
//! stdin/stdout, no Service, no open port.
//!
//! The cluster is `kiln_integration::kubeapi`, a stand-in API server that
//! speaks the endpoints kube-rs calls and the exec WebSocket protocols,
//! and runs the real `kilnd dial-stdio` against real kilnds on private
//! containerds (its "nodes"). Not run here: a real cluster (scheduling,
//! the kubelet, the image, hostPath propagation).

use kiln::kubedriver::{manifest, opts::KubeOpts, route};
use kiln_integration::gitdaemon::GitDaemon;
use kiln_integration::kubeapi::{KubeApi, Setup, Tls};
use kiln_integration::{kilnd_binary, Harness, KilnOutput};
use kiln_proto::control::control_client::ControlClient;
use kiln_proto::control::ListWorkersRequest;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;

/// A gRPC channel whose every connection is a fresh `kilnd dial-stdio`
/// process: what the driver does with a pod exec, with a local process.
async fn channel_through_dial_stdio(addr: String) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_static("http://dial-stdio.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let addr = addr.clone();
            async move {
                let mut child = tokio::process::Command::new(kilnd_binary()?)
                    .args(["dial-stdio", "--addr", &addr])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()?;
                let stdin = child
                    .stdin
                    .take()
                    .ok_or_else(|| std::io::Error::other("stdin"))?;
                let stdout = child
                    .stdout
                    .take()
                    .ok_or_else(|| std::io::Error::other("stdout"))?;
                // Reaped in the background once the stream ends.
                tokio::spawn(async move { child.wait().await });
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper_util::rt::TokioIo::new(
                    tokio::io::join(stdout, stdin),
                ))
            }
        }))
        .await
        .expect("connect through dial-stdio")
}

#[tokio::test]
async fn grpc_reaches_kilnd_through_dial_stdio() {
    let ns = "kube-dial";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ch = channel_through_dial_stdio(k.addr()).await;
    let mut c = ControlClient::new(ch);
    for _ in 0..3 {
        let w = c
            .list_workers(ListWorkersRequest::default())
            .await
            .expect("ListWorkers through dial-stdio")
            .into_inner();
        assert_eq!(w.record.len(), 1);
        assert_eq!(
            w.record[0].labels["org.mobyproject.buildkit.worker.containerd.namespace"],
            ns
        );
    }

    // No daemon: dial-stdio says where it looked and fails.
    let out = std::process::Command::new(kilnd_binary().expect("kilnd"))
        .args(["dial-stdio", "--addr", "unix:///nonexistent/kilnd.sock"])
        .stdin(Stdio::null())
        .output()
        .expect("dial-stdio runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot connect to kilnd at unix:///nonexistent/kilnd.sock"),
        "{err}"
    );
    let out = std::process::Command::new(kilnd_binary().expect("kilnd"))
        .args(["dial-stdio", "--addr", "tcp://127.0.0.1:1"])
        .stdin(Stdio::null())
        .output()
        .expect("dial-stdio runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unix:///path"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn opts(name: &str, kv: &[(&str, &str)]) -> KubeOpts {
    let m: BTreeMap<String, String> = kv
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    KubeOpts::parse(name, &m).expect("driver options")
}

/// What the driver would apply, for defaults and for every option at
/// once, passes the Kubernetes schema strictly (unknown fields fail).
#[test]
fn generated_manifests_pass_strict_schema_validation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("defaults", opts("kube", &[])),
        (
            "all-options",
            opts(
                "kube_all",
                &[
                    ("namespace", "buildkit"),
                    ("replicas", "3"),
                    ("requests.cpu", "500m"),
                    ("requests.memory", "1Gi"),
                    ("requests.ephemeral-storage", "10G"),
                    ("limits.cpu", "2"),
                    ("limits.memory", "4Gi"),
                    ("limits.ephemeral-storage", "20Gi"),
                    ("nodeselector", "kubernetes.io/arch=amd64,disk=ssd"),
                    (
                        "tolerations",
                        "key=a,operator=Equal,value=b,effect=NoSchedule;key=c,operator=Exists,effect=NoExecute,tolerationSeconds=30",
                    ),
                    ("image", "registry.local/kilnd:1"),
                    ("serviceaccount", "builder"),
                    ("schedulername", "default-scheduler"),
                    ("annotations", "example.com/a=1,b=2"),
                    ("labels", "team=x"),
                    ("env.KILND_LOG", "debug"),
                    ("timeout", "5m"),
                    ("loadbalance", "random"),
                ],
            ),
        ),
    ];
    let mut files = Vec::new();
    for (name, o) in &cases {
        let docs: Vec<String> = manifest::manifests(o)
            .iter()
            .map(|m| serde_json::to_string_pretty(m).expect("json"))
            .collect();
        let f = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&f, docs.join("\n---\n")).expect("write");
        files.push(f);
    }
    let out = std::process::Command::new(kiln_integration::kubernetes_validator())
        .arg("--strict")
        .args(&files)
        .output()
        .expect("kubernetes-validate runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    for (name, _) in &cases {
        assert_eq!(
            text.matches(&format!("{name}.yaml passed")).count(),
            2,
            "{name}: both documents validated:\n{text}"
        );
    }
}

/// `kiln` with this harness's store and the stand-in's kubeconfig.
fn kiln(h: &Harness, ns: &str, kubeconfig: &Path, args: &[&str]) -> KilnOutput {
    let out = h
        .kiln_command(ns)
        .expect("kiln command")
        .env("KUBECONFIG", kubeconfig)
        .args(args)
        .output()
        .expect("kiln runs");
    KilnOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn images(h: &Harness, ns: &str) -> String {
    h.ctr(ns, &["images", "ls", "-q"]).expect("ctr images ls")
}

/// The seed's flow against the stand-in: create --bootstrap (apply,
/// wait), use, build through a pod exec, ls, rm (delete exactly the two
/// objects).
// The stand-in serves on this runtime while `kiln` runs blocking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_use_build_rm_through_the_api_and_pod_exec() {
    let ns = "kube-e2e";
    let dns = "kube-e2e-d";
    let h = Harness::with_busybox(ns).await;
    h.import_busybox(dns, "docker.io/library/busybox:latest")
        .await
        .expect("busybox for kilnd");
    let k = h.start_kilnd(dns).await.expect("kilnd starts");
    let api = KubeApi::start(Setup {
        nodes: vec![k.addr()],
        kilnd: kilnd_binary().expect("kilnd"),
        v4_only: false,
        pending: false,
        tls: None,
    })
    .await
    .expect("stand-in starts");
    let kc = h.state_dir().join("kubeconfig-e2e");
    std::fs::write(&kc, api.kubeconfig("from-context")).expect("kubeconfig");
    let kiln = |args: &[&str]| kiln(&h, ns, &kc, args);

    // A bad option fails before any API call.
    let out = kiln(&[
        "builder",
        "create",
        "--name",
        "bad",
        "--driver",
        "kubernetes",
        "--driver-opt",
        "rootless=true",
    ]);
    assert!(!out.success);
    assert!(
        out.stderr.contains("rootless=true is not supported yet"),
        "{}",
        out.stderr
    );
    assert!(api.requests().is_empty(), "{:?}", api.requests());

    let out = kiln(&[
        "builder",
        "create",
        "--bootstrap",
        "--name",
        "kube",
        "--driver",
        "kubernetes",
        "--driver-opt",
        "namespace=buildkit,replicas=1",
    ]);
    assert!(
        out.success,
        "{}\n{}",
        out.stderr,
        std::fs::read_to_string(&k.log).unwrap_or_default()
    );
    assert_eq!(out.stdout.trim(), "kube");
    assert!(
        out.stderr.contains("waiting for 1 pods to be ready"),
        "{}",
        out.stderr
    );
    let d = api
        .object("Deployment", "buildkit", "kube")
        .expect("Deployment applied");
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["name"],
        "kilnd"
    );
    let cm = api
        .object("ConfigMap", "buildkit", "kube-config")
        .expect("ConfigMap applied");
    assert!(cm["data"]["kilnd.toml"]
        .as_str()
        .is_some_and(|t| t.contains("[containerd]")));
    let applies: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .collect();
    assert_eq!(applies.len(), 2, "{applies:?}");
    assert!(
        applies[0].target.contains("/configmaps/kube-config?"),
        "ConfigMap first: {applies:?}"
    );
    for a in &applies {
        assert_eq!(a.content_type, "application/apply-patch+yaml");
        assert!(a.target.contains("fieldManager=kiln"), "{a:?}");
    }
    // The bootstrap's probe went through an exec of dial-stdio.
    let execs = api.execs();
    assert!(!execs.is_empty());
    assert_eq!(execs[0].command, ["kilnd", "dial-stdio"]);
    assert_eq!(execs[0].container, "kilnd");
    assert_eq!(execs[0].protocol, "v5.channel.k8s.io");

    let out = kiln(&["builder", "use", "kube"]);
    assert!(out.success, "{}", out.stderr);
    let out = kiln(&["builder", "ls"]);
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("kube"))
        .unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(
        line.starts_with("kube*") && line.contains("kubernetes") && line.contains("running"),
        "{line}"
    );
    assert!(
        line.contains("namespace=buildkit") && line.contains("linux/"),
        "{line}"
    );

    let ctx = h.context(
        "kube-e2e",
        &[("Dockerfile", "FROM busybox\nRUN echo built > /f\n")],
    );
    let c = ctx.to_str().expect("utf8");
    let before = api.execs().len();
    let out = kiln(&["build", "--progress", "plain", "-t", "demo", c]);
    assert!(
        out.success,
        "{}\nkilnd: {}",
        out.stderr,
        std::fs::read_to_string(&k.log).unwrap_or_default()
    );
    assert!(
        images(&h, dns).contains("docker.io/library/demo:latest"),
        "{}",
        images(&h, dns)
    );
    assert!(
        !images(&h, ns).contains("demo"),
        "built by the embedded engine"
    );
    assert!(
        api.execs().len() > before,
        "the build did not go through an exec"
    );

    // The seed's third command: a git repository (here `git daemon` on
    // loopback), `#ref:subdir`, --no-cache, --builder; the pod's kilnd
    // fetches it.
    let base = h.state_dir().join("kube-git");
    let repo = base.join("repo.git");
    std::fs::create_dir_all(repo.join("docker_stuff")).expect("repo dir");
    std::fs::write(
        repo.join("docker_stuff/Dockerfile"),
        "FROM busybox\nCOPY hello /hello\n",
    )
    .expect("Dockerfile");
    std::fs::write(repo.join("docker_stuff/hello"), "from git\n").expect("file");
    let git_args: [&[&str]; 4] = [
        &["init", "-q", "-b", "main"],
        &["add", "-A"],
        &[
            "-c",
            "user.name=kiln",
            "-c",
            "user.email=kiln@example.invalid",
            "commit",
            "-q",
            "-m",
            "v1",
        ],
        &["checkout", "-q", "-b", "remotebuild"],
    ];
    for args in git_args {
        let st = std::process::Command::new("git")
            .current_dir(&repo)
            .args(args)
            .status()
            .expect("git runs");
        assert!(st.success(), "git {args:?}");
    }
    let daemon = GitDaemon::start(&base, h.state_dir().join("kube-git-daemon.log"));
    let url = format!("{}#remotebuild:docker_stuff", daemon.url("repo.git"));
    let out = kiln(&[
        "build",
        "--progress",
        "plain",
        "-t",
        "demo-git",
        &url,
        "--no-cache",
        "--builder",
        "kube",
    ]);
    assert!(
        out.success,
        "{}\nkilnd: {}",
        out.stderr,
        std::fs::read_to_string(&k.log).unwrap_or_default()
    );
    assert!(daemon.requests() > 0, "the git daemon served nothing");
    assert_eq!(
        h.run_image(
            dns,
            "docker.io/library/demo-git:latest",
            "kube-git",
            &["cat", "/hello"]
        ),
        "from git\n"
    );
    assert!(!images(&h, ns).contains("demo-git"), "built embedded");

    // rm deletes the Deployment and the ConfigMap, then the record.
    let out = kiln(&["builder", "rm", "kube"]);
    assert!(out.success, "{}", out.stderr);
    assert!(
        out.stderr.contains("deleted deployment buildkit/kube"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("deleted configmap buildkit/kube-config"),
        "{}",
        out.stderr
    );
    assert!(api.objects().is_empty(), "{:?}", api.objects());
    let deletes: Vec<_> = api
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE")
        .collect();
    assert_eq!(deletes.len(), 2, "{deletes:?}");
    let out = kiln(&["builder", "ls"]);
    assert!(!out.stdout.contains("kube"), "{}", out.stdout);
    assert!(out.stdout.contains("default*"), "{}", out.stdout);
}

/// Without `namespace=` the kubeconfig context's namespace is used and
/// stored; without --bootstrap the first build boots the Deployment; an
/// API server that speaks only v4.channel.k8s.io works too.
// The stand-in serves on this runtime while `kiln` runs blocking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_use_boots_in_the_context_namespace_over_v4() {
    let ns = "kube-v4";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let api = KubeApi::start(Setup {
        nodes: vec![k.addr()],
        kilnd: kilnd_binary().expect("kilnd"),
        v4_only: true,
        pending: false,
        tls: None,
    })
    .await
    .expect("stand-in starts");
    let kc = h.state_dir().join("kubeconfig-v4");
    std::fs::write(&kc, api.kubeconfig("ctxns")).expect("kubeconfig");
    let kiln = |args: &[&str]| kiln(&h, ns, &kc, args);
    let out = kiln(&[
        "builder",
        "create",
        "--name",
        "lazy",
        "--driver",
        "kubernetes",
        "--use",
    ]);
    assert!(out.success, "{}", out.stderr);
    assert!(api.objects().is_empty(), "created without --bootstrap");
    let out = kiln(&["builder", "inspect", "lazy"]);
    assert!(
        out.stdout.contains("Namespace:     ctxns"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("Status:        inactive"),
        "{}",
        out.stdout
    );

    let ctx = h.context(
        "kube-v4",
        &[("Dockerfile", "FROM busybox\nRUN echo v4 > /f\n")],
    );
    let out = kiln(&["build", "-t", "lazy:v4", ctx.to_str().expect("utf8")]);
    assert!(out.success, "{}", out.stderr);
    assert!(api.object("Deployment", "ctxns", "lazy").is_some());
    assert!(api
        .execs()
        .iter()
        .all(|e| e.protocol == "v4.channel.k8s.io"));
    assert!(images(&h, ns).contains("lazy:v4"));
    let out = kiln(&["builder", "rm", "lazy"]);
    assert!(out.success, "{}", out.stderr);
    assert!(api.objects().is_empty(), "{:?}", api.objects());

    // inspect --bootstrap boots a builder, as buildx's does.
    let out = kiln(&[
        "builder",
        "create",
        "--name",
        "later",
        "--driver",
        "kubernetes",
    ]);
    assert!(out.success, "{}", out.stderr);
    let out = kiln(&["builder", "inspect", "--bootstrap", "later"]);
    assert!(out.success, "{}", out.stderr);
    assert!(
        out.stdout.contains("Status:        running"),
        "{}",
        out.stdout
    );
    assert!(api.object("Deployment", "ctxns", "later").is_some());
    let out = kiln(&["builder", "rm", "later"]);
    assert!(out.success, "{}", out.stderr);
    assert!(api.objects().is_empty(), "{:?}", api.objects());
}

/// Two kilnd+containerd pairs behind a two-replica builder: with sticky
/// routing each context is built where the hash of its path says, every
/// time; both pods take work.
// The stand-in serves on this runtime while `kiln` runs blocking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_routing_sends_a_context_to_the_same_pod() {
    let ns = "kube-route";
    let h1 = Harness::with_busybox_private(ns).await;
    let h2 = Harness::with_busybox_private(ns).await;
    let k1 = h1.start_kilnd(ns).await.expect("kilnd 1");
    let k2 = h2.start_kilnd(ns).await.expect("kilnd 2");
    let api = KubeApi::start(Setup {
        nodes: vec![k1.addr(), k2.addr()],
        kilnd: kilnd_binary().expect("kilnd"),
        v4_only: false,
        pending: false,
        tls: None,
    })
    .await
    .expect("stand-in starts");
    let kc = h1.state_dir().join("kubeconfig-route");
    std::fs::write(&kc, api.kubeconfig("route")).expect("kubeconfig");
    let kiln = |args: &[&str]| kiln(&h1, ns, &kc, args);
    let out = kiln(&[
        "builder",
        "create",
        "--bootstrap",
        "--use",
        "--name",
        "pair",
        "--driver",
        "kubernetes",
        "--driver-opt",
        "replicas=2",
    ]);
    assert!(out.success, "{}", out.stderr);
    let mut pods = api.pods("route");
    pods.sort();
    assert_eq!(pods.len(), 2);
    let hs = [&h1, &h2];
    let mut used = [false, false];
    for i in 0..8 {
        if used == [true, true] && i >= 4 {
            break;
        }
        let ctx = h1.context(
            &format!("route-{i}"),
            &[("Dockerfile", &format!("FROM busybox\nRUN echo {i} > /f\n"))],
        );
        let c = ctx.to_str().expect("utf8");
        let key = route::context_key(c);
        let pod = route::sticky(&key, &pods).expect("a pod");
        let node = api.node_of("route", pod).expect("pod's node");
        used[node] = true;
        for round in 0..2 {
            let tag = format!("route:{i}-{round}");
            let out = kiln(&["build", "-t", &tag, c]);
            assert!(out.success, "{}", out.stderr);
            assert!(
                images(hs[node], ns).contains(&tag),
                "{tag} not on node {node}"
            );
            assert!(
                !images(hs[1 - node], ns).contains(&tag),
                "{tag} on node {}",
                1 - node
            );
        }
    }
    assert_eq!(used, [true, true], "one pod took every context");
    let out = kiln(&["builder", "rm", "pair"]);
    assert!(out.success, "{}", out.stderr);
    assert!(api.pods("route").is_empty());
}

/// deploy/Dockerfile, kilnd's image, builds with kiln from a context
/// holding the kilnd binary, which lands executable on PATH. Offline
/// here: the busybox base and no packages (the apt-get step is not run).
#[tokio::test]
async fn kilnds_image_builds_from_the_deploy_dockerfile() {
    let ns = "kube-image";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.state_dir().join("kilnd-image-ctx");
    std::fs::create_dir_all(&ctx).expect("mkdir");
    let bin = kilnd_binary().expect("kilnd");
    std::fs::copy(&bin, ctx.join("kilnd")).expect("copy kilnd");
    let dockerfile = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/Dockerfile");
    let out = h.build(
        ns,
        &[
            "-f",
            dockerfile.to_str().expect("utf8"),
            "--build-arg",
            "BASE=busybox",
            "--build-arg",
            "INSTALL_PACKAGES=0",
            "-t",
            "kilnd:test",
            ctx.to_str().expect("utf8"),
        ],
    );
    assert!(out.success, "{}", out.stderr);
    let listing = h.run_image(
        ns,
        "docker.io/library/kilnd:test",
        "kilnd-img-ls",
        &["ls", "-l", "/usr/local/bin/kilnd"],
    );
    assert!(listing.starts_with("-rwxr-xr-x"), "{listing}");
    let sum = h.run_image(
        ns,
        "docker.io/library/kilnd:test",
        "kilnd-img-sum",
        &["sha256sum", "/usr/local/bin/kilnd"],
    );
    let want = std::process::Command::new("sha256sum")
        .arg(&bin)
        .output()
        .expect("sha256sum");
    let want = String::from_utf8_lossy(&want.stdout);
    assert_eq!(
        sum.split_whitespace().next(),
        want.split_whitespace().next(),
        "the image's kilnd is not the context's"
    );
    std::fs::remove_dir_all(&ctx).expect("remove the copied binary");
}

/// A pod whose kilnd does not answer: the bootstrap fails saying why
/// (dial-stdio's own message, from the exec's stderr), the builder stays
/// stored, and rm still deletes what was applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_kilnd_fails_the_bootstrap_and_rm_still_cleans_up() {
    let ns = "kube-dead";
    let h = Harness::start().await.expect("containerd");
    let api = KubeApi::start(Setup {
        nodes: vec!["unix:///nonexistent/kilnd.sock".into()],
        kilnd: kilnd_binary().expect("kilnd"),
        v4_only: false,
        pending: false,
        tls: None,
    })
    .await
    .expect("stand-in starts");
    let kc = h.state_dir().join("kubeconfig-dead");
    std::fs::write(&kc, api.kubeconfig("dead")).expect("kubeconfig");
    let kiln = |args: &[&str]| kiln(&h, ns, &kc, args);
    let out = kiln(&[
        "builder",
        "create",
        "--bootstrap",
        "--name",
        "dead",
        "--driver",
        "kubernetes",
    ]);
    assert!(!out.success, "{}", out.stdout);
    assert!(
        out.stderr
            .contains("builder dead was created but did not start"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("cannot connect to kilnd at unix:///nonexistent/kilnd.sock"),
        "{}",
        out.stderr
    );
    assert_eq!(api.objects().len(), 2, "{:?}", api.objects());
    let out = kiln(&["builder", "ls"]);
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("dead") && l.contains("error")),
        "{}",
        out.stdout
    );
    let out = kiln(&["builder", "rm", "dead"]);
    assert!(out.success, "{}", out.stderr);
    assert!(api.objects().is_empty(), "{:?}", api.objects());
}

/// Over HTTPS, as a real API server: kube-rs's rustls path (ring, the
/// kubeconfig's certificate-authority) works for the API calls and the
/// exec WebSocket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_is_reached_over_tls() {
    let ns = "kube-tls";
    let h = Harness::start().await.expect("containerd");
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let pki = kiln_integration::pki::Pki::new(h.state_dir().join("kube-pki"));
    let api = KubeApi::start(Setup {
        nodes: vec![k.addr()],
        kilnd: kilnd_binary().expect("kilnd"),
        v4_only: false,
        pending: false,
        tls: Some(Tls {
            cert: pki.server.0.clone().into(),
            key: pki.server.1.clone().into(),
            ca: pki.ca.clone().into(),
        }),
    })
    .await
    .expect("stand-in starts");
    assert!(api.url.starts_with("https://localhost:"), "{}", api.url);
    let kc = h.state_dir().join("kubeconfig-tls");
    std::fs::write(&kc, api.kubeconfig("tls")).expect("kubeconfig");
    let kiln = |args: &[&str]| kiln(&h, ns, &kc, args);
    let out = kiln(&[
        "builder",
        "create",
        "--bootstrap",
        "--name",
        "secure",
        "--driver",
        "kubernetes",
    ]);
    assert!(out.success, "{}", out.stderr);
    assert!(!api.execs().is_empty());
    let out = kiln(&["builder", "inspect", "secure"]);
    assert!(
        out.stdout.contains("Status:        running"),
        "{}",
        out.stdout
    );
    let out = kiln(&["builder", "rm", "secure"]);
    assert!(out.success, "{}", out.stderr);
    assert!(api.objects().is_empty(), "{:?}", api.objects());

    // A server the kubeconfig's CA did not sign is refused.
    let other = kiln_integration::pki::Pki::new(h.state_dir().join("other-pki"));
    let bad = h.state_dir().join("kubeconfig-bad-ca");
    std::fs::write(&bad, api.kubeconfig("tls").replace(&pki.ca, &other.ca)).expect("kubeconfig");
    let out = self::kiln(
        &h,
        ns,
        &bad,
        &[
            "builder",
            "create",
            "--bootstrap",
            "--name",
            "untrusted",
            "--driver",
            "kubernetes",
        ],
    );
    assert!(!out.success, "an untrusted API server was used");
    assert!(api.objects().is_empty(), "{:?}", api.objects());
}

/// Pods that never become ready: --bootstrap gives up after `timeout`
/// saying how many were ready, and a build finds no running pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_that_never_start_time_the_bootstrap_out() {
    let ns = "kube-pending";
    let h = Harness::start().await.expect("containerd");
    let api = KubeApi::start(Setup {
        nodes: vec!["unix:///nonexistent/kilnd.sock".into()],
        kilnd: kilnd_binary().expect("kilnd"),
        v4_only: false,
        pending: true,
        tls: None,
    })
    .await
    .expect("stand-in starts");
    let kc = h.state_dir().join("kubeconfig-pending");
    std::fs::write(&kc, api.kubeconfig("pending")).expect("kubeconfig");
    let kiln = |args: &[&str]| kiln(&h, ns, &kc, args);
    let start = std::time::Instant::now();
    let out = kiln(&[
        "builder",
        "create",
        "--bootstrap",
        "--name",
        "slow",
        "--driver",
        "kubernetes",
        "--driver-opt",
        "replicas=2,timeout=2s",
    ]);
    assert!(!out.success, "{}", out.stdout);
    assert!(
        out.stderr
            .contains("expected 2 replicas to be ready, got 0 (timeout 2s)"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("waiting for 2 pods to be ready, timeout: 2s"),
        "{}",
        out.stderr
    );
    assert!(start.elapsed() < std::time::Duration::from_secs(30));
    assert!(api.execs().is_empty(), "a pending pod was exec'd into");
    let out = kiln(&["builder", "inspect", "slow"]);
    assert!(
        out.stdout.contains("Status:        inactive"),
        "{}",
        out.stdout
    );
    let out = kiln(&["builder", "rm", "slow"]);
    assert!(out.success, "{}", out.stderr);
    assert!(api.objects().is_empty(), "{:?}", api.objects());
}
