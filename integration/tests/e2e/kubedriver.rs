//! The kubernetes driver (issue 13). kiln reaches a kilnd in a pod
//! through `kilnd dial-stdio` run by a pod exec: gRPC over the exec's
//! stdin/stdout, no Service, no open port.
//!
//! The cluster is `kiln_integration::kubeapi`, a stand-in API server that
//! speaks the endpoints kube-rs calls and the exec WebSocket protocols,
//! and runs the real `kilnd dial-stdio` against real kilnds on private
//! containerds (its "nodes"). In the routing tests each pod is a
//! kilnd+containerd pair in a network namespace of its own, where the
//! exec's dial-stdio runs too. Not run here: a real cluster (scheduling,
//! the kubelet, the image, hostPath propagation).

use kiln::kubedriver::{manifest, opts::KubeOpts, route};
use kiln_integration::gitdaemon::{git, GitDaemon};
use kiln_integration::kubeapi::{Exec, KubeApi, Node, Setup, Tls};
use kiln_integration::netns::{self, NetNs};
use kiln_integration::{kilnd_binary, Harness, KilnOutput, Kilnd};
use kiln_proto::control::control_client::ControlClient;
use kiln_proto::control::ListWorkersRequest;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
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
        .args(["dial-stdio", "--addr", NO_KILND])
        .stdin(Stdio::null())
        .output()
        .expect("dial-stdio runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot connect to kilnd at {NO_KILND}")),
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
    let (passed, text) = kiln_integration::kubernetes_validate(&files);
    assert!(passed, "{text}");
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
    out.into()
}

fn images(h: &Harness, ns: &str) -> String {
    h.ctr(ns, &["images", "ls", "-q"]).expect("ctr images ls")
}

/// The stand-in API server with `setup`, and a kubeconfig for it (in
/// `h`'s state directory) whose context namespace is `context_ns`.
async fn standin(h: &Harness, setup: Setup, context_ns: &str) -> (KubeApi, PathBuf) {
    let api = KubeApi::start(setup).await.expect("stand-in starts");
    let kc = h.state_dir().join(format!("kubeconfig-{context_ns}"));
    std::fs::write(&kc, api.kubeconfig(context_ns)).expect("kubeconfig");
    (api, kc)
}

/// [`Setup::new`] for these nodes.
fn setup<N: Into<Node>>(nodes: impl IntoIterator<Item = N>) -> Setup {
    Setup::new(nodes).expect("stand-in setup")
}

/// `kiln builder create --name NAME --driver kubernetes FLAGS`.
fn create_args<'a>(name: &'a str, flags: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "builder",
        "create",
        "--name",
        name,
        "--driver",
        "kubernetes",
    ];
    args.extend_from_slice(flags);
    args
}

/// A node nothing listens on.
const NO_KILND: &str = "unix:///nonexistent/kilnd.sock";

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
    let (api, kc) = standin(&h, setup([k.addr()]), "from-context").await;
    let kiln = |args: &[&str]| kiln(&h, ns, &kc, args);

    // A bad option fails before any API call.
    let out = kiln(&create_args("bad", &["--driver-opt", "rootless=true"]));
    assert!(!out.success);
    assert!(
        out.stderr.contains("rootless=true is not supported yet"),
        "{}",
        out.stderr
    );
    assert!(api.requests().is_empty(), "{:?}", api.requests());

    let out = kiln(&create_args(
        "kube",
        &[
            "--bootstrap",
            "--driver-opt",
            "namespace=buildkit,replicas=1",
        ],
    ));
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
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "-A"]);
    git(&repo, &["commit", "-q", "-m", "v1"]);
    git(&repo, &["checkout", "-q", "-b", "remotebuild"]);
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
        h.run_image_expecting(
            dns,
            "docker.io/library/demo-git:latest",
            "kube-git",
            &["cat", "/hello"],
            "from git\n"
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
    let v4 = Setup {
        v4_only: true,
        ..setup([k.addr()])
    };
    let (api, kc) = standin(&h, v4, "ctxns").await;
    let kiln = |args: &[&str]| kiln(&h, ns, &kc, args);
    let out = kiln(&create_args("lazy", &["--use"]));
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
    let out = kiln(&create_args("later", &[]));
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

/// A stand-in pod's node: kilnd and its containerd in a network namespace
/// of their own (the pod's network), started from a thread inside it, so
/// the steps they run (host network mode) are in it too.
struct PodPair {
    // Fields drop in order: kilnd, containerd, then the namespace.
    kilnd: Option<Kilnd>,
    h: Option<Harness>,
    netns: NetNs,
    /// The namespace's inode: what a process inside shows as `net:[INODE]`.
    inode: u64,
}

impl PodPair {
    async fn start(ns: &str, tag: &str) -> PodPair {
        let netns = NetNs::create(tag).expect("network namespace");
        let cns = ns.to_string();
        let (h, kilnd) = netns
            .run(move || async move {
                let h = Harness::with_busybox_private(&cns).await;
                let k = h.start_kilnd(&cns).await.expect("kilnd starts");
                (h, k)
            })
            .await
            .expect("the pair starts in its namespace");
        let inode = netns.inode().expect("namespace inode");
        for (what, pid) in [("kilnd", kilnd.pid()), ("containerd", h.containerd_pid())] {
            let pid = pid.unwrap_or_else(|| panic!("{what} runs"));
            assert_eq!(
                netns::of_pid(pid),
                Ok(inode),
                "{what} is not in {}",
                netns.name()
            );
        }
        PodPair {
            kilnd: Some(kilnd),
            h: Some(h),
            netns,
            inode,
        }
    }

    fn h(&self) -> &Harness {
        self.h.as_ref().expect("the pair was stopped")
    }

    fn node(&self) -> Node {
        Node {
            addr: self.kilnd.as_ref().expect("the pair was stopped").addr(),
            netns: Some(self.netns.path().to_path_buf()),
        }
    }

    /// Whether this pair's containerd holds image `tag` in `ns`.
    fn has_image(&self, ns: &str, tag: &str) -> bool {
        let want = format!("docker.io/library/{tag}");
        images(self.h(), ns).lines().any(|l| l == want)
    }

    /// The network a build's `RUN readlink /proc/self/ns/net > /netns`
    /// ran in, read from the image it made.
    fn step_network(&self, ns: &str, tag: &str, id: &str) -> String {
        self.h()
            .run_image(
                ns,
                &format!("docker.io/library/{tag}"),
                id,
                &["cat", "/netns"],
            )
            .trim()
            .to_string()
    }

    /// Stops kilnd, then containerd (a node going down); the namespace
    /// stays until the pair drops.
    fn stop(&mut self) {
        self.kilnd = None;
        self.h = None;
    }
}

/// A Dockerfile whose step records the network it ran in.
fn network_witness(marker: &str) -> String {
    format!("FROM busybox\nRUN readlink /proc/self/ns/net > /netns && echo {marker} > /f\n")
}

/// Two pod pairs behind the stand-in. The CLI's own state (its builder
/// store) lives in the first pair's directory, with a containerd
/// namespace no pod uses, so a build that went embedded shows up nowhere
/// the assertions look.
struct Routed {
    /// The pods' containerd namespace.
    ns: String,
    /// The kubeconfig context's namespace, the builders' pods'.
    context_ns: String,
    pairs: [PodPair; 2],
    api: KubeApi,
    kc: PathBuf,
}

/// The containerd namespace of the CLI in [`Routed`].
const CLIENT_NS: &str = "kube-client";

impl Routed {
    async fn start(ns: &str, context_ns: &str) -> Routed {
        let (ta, tb) = (format!("{context_ns}-a"), format!("{context_ns}-b"));
        let (a, b) = tokio::join!(PodPair::start(ns, &ta), PodPair::start(ns, &tb));
        assert_ne!(a.inode, b.inode, "the pods share a network");
        assert_ne!(
            netns::of_pid(std::process::id()),
            Ok(a.inode),
            "the test runs in a pod's network"
        );
        let (api, kc) = standin(a.h(), setup([a.node(), b.node()]), context_ns).await;
        Routed {
            ns: ns.to_string(),
            context_ns: context_ns.to_string(),
            pairs: [a, b],
            api,
            kc,
        }
    }

    fn kiln(&self, args: &[&str]) -> KilnOutput {
        kiln(self.pairs[0].h(), CLIENT_NS, &self.kc, args)
    }

    /// `kiln build ARGS`, and the execs it made.
    fn build(&self, args: &[&str]) -> (KilnOutput, Vec<Exec>) {
        let before = self.api.execs().len();
        let mut all = vec!["build"];
        all.extend_from_slice(args);
        let out = self.kiln(&all);
        (out, self.api.execs().split_off(before))
    }

    /// A build of `tag` went only to `pod` on node `node`: every exec
    /// into that pod, its dial-stdio in that pod's network, the image in
    /// that pair's containerd and not in the other's.
    fn assert_built_on(&self, node: usize, pod: &str, tag: &str, execs: &[Exec]) {
        assert!(!execs.is_empty(), "{tag}: no exec");
        for e in execs {
            assert_eq!(e.pod, pod, "{tag}: {e:?}");
            assert_eq!(
                e.netns,
                Some(self.pairs[node].inode),
                "{tag}: dial-stdio outside the pod's network: {e:?}"
            );
        }
        assert!(
            self.pairs[node].has_image(&self.ns, tag),
            "{tag} not on node {node}"
        );
        let other = &self.pairs[1 - node];
        if other.h.is_some() {
            assert!(
                !other.has_image(&self.ns, tag),
                "{tag} also on node {}",
                1 - node
            );
        }
    }

    /// `kiln builder create --bootstrap` of a kubernetes builder with
    /// `driver_opts` (two replicas), made current with `use_it`; its two
    /// pods, sorted as the driver sorts them.
    fn create(&self, builder: &str, driver_opts: &str, use_it: bool) -> Vec<String> {
        let mut args = create_args(builder, &["--bootstrap", "--driver-opt", driver_opts]);
        if use_it {
            args.push("--use");
        }
        let out = self.kiln(&args);
        assert!(out.success, "{}", out.stderr);
        let mut pods: Vec<String> = self
            .api
            .pods(&self.context_ns)
            .into_iter()
            .filter(|p| p.starts_with(&format!("{builder}-")))
            .collect();
        pods.sort();
        assert_eq!(pods.len(), 2, "{pods:?}");
        pods
    }
}

/// Two pods, each a kilnd+containerd pair in a network namespace of its
/// own. Sticky (the default): a context is built on the pod the hash of
/// its normalized form over the pod names picks, every time and under
/// another spelling of the same directory; different contexts spread over
/// both pods. Each result is in its pod's containerd only, made by a step
/// that ran in the pod's network, through a dial-stdio in that network.
/// `loadbalance=random`: one context's builds reach both pods.
// The stand-in serves on this runtime while `kiln` runs blocking.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_route_to_pods_in_their_own_network_namespaces() {
    let ns = "kube-route";
    let r = Routed::start(ns, "route").await;
    let pods = r.create("pair", "replicas=2", true);

    let mut used = [false, false];
    for i in 0..8 {
        if used == [true, true] && i >= 4 {
            break;
        }
        let ctx = r.pairs[0].h().context(
            &format!("route-{i}"),
            &[("Dockerfile", &network_witness(&i.to_string()))],
        );
        let c = ctx.to_str().expect("utf8");
        let pod = route::sticky(&route::context_key(c), &pods).expect("a pod");
        let node = r.api.node_of("route", pod).expect("pod's node");
        used[node] = true;
        // The same directory twice as written, then as `DIR/.`.
        let spellings = [c.to_string(), c.to_string(), format!("{c}/.")];
        for (round, spelling) in spellings.iter().enumerate() {
            let tag = format!("route:{i}-{round}");
            let (out, execs) = r.build(&["-t", &tag, spelling]);
            assert!(out.success, "{tag}: {}", out.stderr);
            r.assert_built_on(node, pod, &tag, &execs);
        }
        assert_eq!(
            r.pairs[node].step_network(ns, &format!("route:{i}-0"), &format!("route-net-{i}")),
            format!("net:[{}]", r.pairs[node].inode),
            "context {i}'s step ran outside pod {pod}'s network"
        );
    }
    assert_eq!(used, [true, true], "one pod took every context");

    r.create("spread", "replicas=2,loadbalance=random", false);
    let ctx = r.pairs[0]
        .h()
        .context("spread", &[("Dockerfile", &network_witness("spread"))]);
    let c = ctx.to_str().expect("utf8");
    // Both pods by chance: a miss 40 times running is 2^-39.
    let mut hits = [0usize; 2];
    for n in 0..40 {
        if hits.iter().all(|h| *h > 0) {
            break;
        }
        let tag = format!("spread:{n}");
        let (out, execs) = r.build(&["--builder", "spread", "-t", &tag, c]);
        assert!(out.success, "{tag}: {}", out.stderr);
        let pod = execs.first().map(|e| e.pod.clone()).expect("an exec");
        assert!(pod.starts_with("spread-"), "{pod}");
        let node = r.api.node_of("route", &pod).expect("pod's node");
        r.assert_built_on(node, &pod, &tag, &execs);
        hits[node] += 1;
    }
    assert!(
        hits.iter().all(|h| *h > 0),
        "random routing used one pod: {hits:?}"
    );

    for b in ["pair", "spread"] {
        let out = r.kiln(&["builder", "rm", b]);
        assert!(out.success, "{}", out.stderr);
    }
    assert!(r.api.pods("route").is_empty(), "{:?}", r.api.pods("route"));
}

/// A pod whose kilnd+containerd pair stopped, as buildx's driver treats
/// it: while the API still lists it Running (a crashed container is
/// restarted in place; the phase stays Running), the builds routed to it
/// fail naming the pod and what dial-stdio found, and nothing is built
/// elsewhere instead; the other pod's contexts still build. Once it is
/// terminating (a deletionTimestamp) and once it is gone, its contexts go
/// to the pod that is left, as buildx lists only Running pods not being
/// deleted; the other pod's contexts never moved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_pod_fails_its_builds_until_the_api_drops_it() {
    let ns = "kube-gone";
    let mut r = Routed::start(ns, "gone").await;
    let pods = r.create("gone", "replicas=2", true);

    // A context for each pod.
    let mut ctxs: [Option<(String, String)>; 2] = [None, None];
    for i in 0..32 {
        let ctx = r.pairs[0].h().context(
            &format!("gone-{i}"),
            &[("Dockerfile", &network_witness(&i.to_string()))],
        );
        let c = ctx.to_str().expect("utf8").to_string();
        let pod = route::sticky(&route::context_key(&c), &pods).expect("a pod");
        let node = r.api.node_of("gone", pod).expect("pod's node");
        ctxs[node].get_or_insert((c, pod.clone()));
        if ctxs.iter().all(Option::is_some) {
            break;
        }
    }
    let [Some((kept, kept_pod)), Some((lost, lost_pod))] = ctxs else {
        panic!("no context for one of {pods:?} in 32 tries");
    };
    for (node, c, pod) in [(0, &kept, &kept_pod), (1, &lost, &lost_pod)] {
        let tag = format!("gone:{node}-up");
        let (out, execs) = r.build(&["-t", &tag, c]);
        assert!(out.success, "{}", out.stderr);
        r.assert_built_on(node, pod, &tag, &execs);
    }

    let lost_addr = r.pairs[1].node().addr;
    r.pairs[1].stop();
    // Still listed Running: its builds fail, saying where and why.
    let (out, execs) = r.build(&["-t", "gone:1-stopped", &lost]);
    assert!(
        !out.success,
        "built with the pod's pair stopped: {}",
        out.stdout
    );
    // One line says which pod and why, as the error.
    let said = format!("cannot reach kilnd in pod gone/{lost_pod} (exec kilnd dial-stdio): kilnd dial-stdio ended before kilnd answered: kilnd: cannot connect to kilnd at {lost_addr}");
    assert!(
        out.stderr
            .lines()
            .any(|l| l.starts_with("error: ") && l.contains(&said)),
        "{}",
        out.stderr
    );
    assert!(execs.iter().all(|e| e.pod == *lost_pod), "{execs:?}");
    assert!(
        !r.pairs[0].has_image(ns, "gone:1-stopped"),
        "rerouted silently"
    );
    let (out, execs) = r.build(&["-t", "gone:0-while-1-stopped", &kept]);
    assert!(out.success, "{}", out.stderr);
    r.assert_built_on(0, &kept_pod, "gone:0-while-1-stopped", &execs);

    // Terminating, then gone: its contexts move to the pod that is left.
    assert!(r.api.terminate_pod("gone", &lost_pod));
    let (out, execs) = r.build(&["-t", "gone:1-terminating", &lost]);
    assert!(out.success, "{}", out.stderr);
    r.assert_built_on(0, &kept_pod, "gone:1-terminating", &execs);
    assert!(r.api.remove_pod("gone", &lost_pod));
    for (c, tag) in [(&lost, "gone:1-removed"), (&kept, "gone:0-removed")] {
        let (out, execs) = r.build(&["-t", tag, c]);
        assert!(out.success, "{}", out.stderr);
        r.assert_built_on(0, &kept_pod, tag, &execs);
    }

    let out = r.kiln(&["builder", "rm", "gone"]);
    assert!(out.success, "{}", out.stderr);
    assert!(r.api.objects().is_empty(), "{:?}", r.api.objects());
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
    let (api, kc) = standin(&h, setup([NO_KILND.to_string()]), "dead").await;
    let kiln = |args: &[&str]| kiln(&h, ns, &kc, args);
    let out = kiln(&create_args("dead", &["--bootstrap"]));
    assert!(!out.success, "{}", out.stdout);
    assert!(
        out.stderr
            .contains("builder dead was created but did not start"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains(&format!("cannot connect to kilnd at {NO_KILND}")),
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
    let tls = Setup {
        tls: Some(Tls {
            cert: pki.server.0.clone().into(),
            key: pki.server.1.clone().into(),
            ca: pki.ca.clone().into(),
        }),
        ..setup([k.addr()])
    };
    let (api, kc) = standin(&h, tls, "tls").await;
    assert!(api.url.starts_with("https://localhost:"), "{}", api.url);
    let kiln = |args: &[&str]| kiln(&h, ns, &kc, args);
    let out = kiln(&create_args("secure", &["--bootstrap"]));
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
    let out = self::kiln(&h, ns, &bad, &create_args("untrusted", &["--bootstrap"]));
    assert!(!out.success, "an untrusted API server was used");
    assert!(api.objects().is_empty(), "{:?}", api.objects());
}

/// Pods that never become ready: --bootstrap gives up after `timeout`
/// saying how many were ready, and a build finds no running pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_that_never_start_time_the_bootstrap_out() {
    let ns = "kube-pending";
    let h = Harness::start().await.expect("containerd");
    let pending = Setup {
        pending: true,
        ..setup([NO_KILND.to_string()])
    };
    let (api, kc) = standin(&h, pending, "pending").await;
    let kiln = |args: &[&str]| kiln(&h, ns, &kc, args);
    let start = std::time::Instant::now();
    let out = kiln(&create_args(
        "slow",
        &["--bootstrap", "--driver-opt", "replicas=2,timeout=2s"],
    ));
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
