//! A small stand-in for a Kubernetes API server: the endpoints kiln's
//! kubernetes driver calls, spoken over real HTTP/1.1 as kube-rs speaks
//! them, with pod exec over a real WebSocket in the
//! `v5.channel.k8s.io` / `v4.channel.k8s.io` framing (one channel byte,
//! then data; 255 closes a channel in v5; the status object on channel 3).
//!
//! It keeps the objects it is given (server-side apply of ConfigMaps and
//! Deployments), makes a Deployment's pods at once (all Running and
//! ready), lists them by label selector, and deletes on request. A pod is
//! bound to a "node": a real kilnd on a test's containerd, optionally in a
//! network namespace of its own (the pod's network). An exec of
//! `kilnd dial-stdio` in a pod runs the real `kilnd dial-stdio` against
//! that pod's kilnd, inside that namespace, so gRPC goes through the whole
//! exec path. A test can take a pod away as a cluster does: terminating
//! (a deletionTimestamp, still Running) and then gone. It can refuse the
//! first exec upgrades as an API server that cannot reach the node's
//! kubelet does (`Setup::refuse_execs`).
//!
//! What it does not do: authentication (a token is accepted unread),
//! watches, generations, resourceVersion conflicts, scheduling.

use crate::httpserver::{read_head, Head};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;

use crate::HarnessResult;

/// One request as the stand-in saw it.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    /// Path and query.
    pub target: String,
    pub content_type: String,
}

/// One exec as the stand-in ran it.
#[derive(Clone, Debug)]
pub struct Exec {
    pub namespace: String,
    pub pod: String,
    pub container: String,
    pub command: Vec<String>,
    /// The WebSocket subprotocol agreed on.
    pub protocol: String,
    /// The network namespace (inode) `kilnd dial-stdio` ran in; `None`
    /// when nothing ran or it was gone before it could be looked at.
    pub netns: Option<u64>,
}

/// A pod of a Deployment.
#[derive(Debug, Clone)]
struct Pod {
    labels: BTreeMap<String, String>,
    /// Index into `Setup::nodes`.
    node: usize,
    /// Being deleted: a deletionTimestamp, still Running.
    terminating: bool,
}

#[derive(Debug, Default)]
struct State {
    /// (kind, namespace, name) -> object.
    objects: BTreeMap<(String, String, String), Value>,
    /// (namespace, pod name) -> pod.
    pods: BTreeMap<(String, String), Pod>,
    requests: Vec<Request>,
    execs: Vec<Exec>,
    /// Exec upgrades refused so far ([`Setup::refuse_execs`]).
    refused_execs: usize,
}

/// The running stand-in; it stops with the test's runtime.
#[derive(Debug, Clone)]
pub struct KubeApi {
    pub url: String,
    ca: Option<PathBuf>,
    state: Arc<Mutex<State>>,
}

/// Where a pod runs: a kilnd, and the network it is in.
#[derive(Debug, Clone)]
pub struct Node {
    /// The kilnd address (`unix://…`).
    pub addr: String,
    /// The pod's network namespace (a /run/netns file), where an exec's
    /// `kilnd dial-stdio` runs; `None`: the test's own network.
    pub netns: Option<PathBuf>,
}

impl From<String> for Node {
    /// A kilnd on the test's own network.
    fn from(addr: String) -> Node {
        Node { addr, netns: None }
    }
}

/// How the stand-in is set up.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The nodes; pod `i` of a Deployment runs on node `i % nodes.len()`.
    pub nodes: Vec<Node>,
    /// `kilnd` to run for an exec.
    pub kilnd: PathBuf,
    /// Offer only `v4.channel.k8s.io` (as an older API server).
    pub v4_only: bool,
    /// Pods never start: Pending, and no ready replicas (an image that
    /// cannot be pulled, a node that cannot take them).
    pub pending: bool,
    /// Serve HTTPS with this certificate and key (PEM files, for
    /// `localhost`) and the CA that signed it, as a real API server does.
    pub tls: Option<Tls>,
    /// The first this many exec upgrades are refused as an API server
    /// refuses them when it cannot reach the node's kubelet: 500 with
    /// `error dialing backend: remote error: tls: internal error` (the
    /// transient failure buildx retries); `usize::MAX` refuses them all.
    pub refuse_execs: usize,
}

impl Setup {
    /// Plain HTTP, v5 offered, pods that start at once, the test's
    /// `kilnd` run for an exec; every exec upgraded.
    pub fn new<N: Into<Node>>(nodes: impl IntoIterator<Item = N>) -> HarnessResult<Setup> {
        Ok(Setup {
            nodes: nodes.into_iter().map(Into::into).collect(),
            kilnd: crate::kilnd_binary()?,
            v4_only: false,
            pending: false,
            tls: None,
            refuse_execs: 0,
        })
    }
}

/// The stand-in's TLS files.
#[derive(Debug, Clone)]
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

fn tls_acceptor(t: &Tls) -> std::io::Result<tokio_rustls::TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let bad = |e: String| std::io::Error::new(std::io::ErrorKind::InvalidData, e);
    let certs = CertificateDer::pem_file_iter(&t.cert)
        .map_err(|e| bad(format!("{}: {e}", t.cert.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(format!("{}: {e}", t.cert.display())))?;
    let key = PrivateKeyDer::from_pem_file(&t.key)
        .map_err(|e| bad(format!("{}: {e}", t.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| bad(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| bad(e.to_string()))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

impl KubeApi {
    /// Listens on a loopback port.
    pub async fn start(setup: Setup) -> std::io::Result<KubeApi> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let acceptor = setup.tls.as_ref().map(tls_acceptor).transpose()?;
        let url = match acceptor {
            // The certificate names localhost.
            Some(_) => format!("https://localhost:{port}"),
            None => format!("http://127.0.0.1:{port}"),
        };
        let state = Arc::new(Mutex::new(State::default()));
        let api = KubeApi {
            url,
            ca: setup.tls.as_ref().map(|t| t.ca.clone()),
            state: state.clone(),
        };
        let setup = Arc::new(setup);
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (state, setup, acceptor) = (state.clone(), setup.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let r = match acceptor {
                        Some(a) => match a.accept(conn).await {
                            Ok(tls) => serve(tls, state, setup).await,
                            Err(e) => Err(e.into()),
                        },
                        None => serve(conn, state, setup).await,
                    };
                    if let Err(e) = r {
                        eprintln!("kube stand-in: {e}");
                    }
                });
            }
        });
        Ok(api)
    }

    /// A kubeconfig for this server, context namespace `namespace`.
    pub fn kubeconfig(&self, namespace: &str) -> String {
        let ca = self
            .ca
            .as_ref()
            .map(|c| format!("    certificate-authority: {}\n", c.display()))
            .unwrap_or_default();
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: {}\n{ca}users:\n- name: tester\n  user:\n    token: standin-token\ncontexts:\n- name: standin\n  context:\n    cluster: standin\n    user: tester\n    namespace: {namespace}\ncurrent-context: standin\n",
            self.url
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }

    /// How many exec upgrades were refused ([`Setup::refuse_execs`]).
    pub fn refused_execs(&self) -> usize {
        self.lock().refused_execs
    }

    /// Every exec so far.
    pub fn execs(&self) -> Vec<Exec> {
        self.lock().execs.clone()
    }

    /// A stored object (`ConfigMap`, `Deployment`).
    pub fn object(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        self.lock()
            .objects
            .get(&(kind.to_string(), namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// (kind, namespace, name) of every stored object.
    pub fn objects(&self) -> Vec<(String, String, String)> {
        self.lock().objects.keys().cloned().collect()
    }

    /// The pods' names in `namespace`.
    pub fn pods(&self, namespace: &str) -> Vec<String> {
        self.lock()
            .pods
            .keys()
            .filter(|(ns, _)| ns == namespace)
            .map(|(_, n)| n.clone())
            .collect()
    }

    /// The node (index into `Setup::nodes`) of a pod.
    pub fn node_of(&self, namespace: &str, pod: &str) -> Option<usize> {
        self.lock()
            .pods
            .get(&(namespace.to_string(), pod.to_string()))
            .map(|p| p.node)
    }

    /// Starts deleting a pod as the API server does: it gets a
    /// deletionTimestamp and stays listed, Running, until it is gone.
    /// False when there is no such pod.
    pub fn terminate_pod(&self, namespace: &str, pod: &str) -> bool {
        self.lock()
            .pods
            .get_mut(&(namespace.to_string(), pod.to_string()))
            .map(|p| p.terminating = true)
            .is_some()
    }

    /// Removes a pod: no longer listed, an exec into it is a 404. False
    /// when there is no such pod.
    pub fn remove_pod(&self, namespace: &str, pod: &str) -> bool {
        self.lock()
            .pods
            .remove(&(namespace.to_string(), pod.to_string()))
            .is_some()
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A connection: plain TCP or TLS.
trait Conn: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static> Conn for T {}

async fn serve<S: Conn>(
    conn: S,
    state: Arc<Mutex<State>>,
    setup: Arc<Setup>,
) -> Result<(), BoxError> {
    let mut r = BufReader::new(conn);
    while let Some(head) = read_head(&mut r).await? {
        let len: usize = head
            .headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; len];
        r.read_exact(&mut body).await?;
        {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            s.requests.push(Request {
                method: head.method.clone(),
                target: head.target.clone(),
                content_type: head
                    .headers
                    .get("content-type")
                    .cloned()
                    .unwrap_or_default(),
            });
        }
        if head
            .headers
            .get("upgrade")
            .is_some_and(|u| u.eq_ignore_ascii_case("websocket"))
        {
            return exec(r, head, state, setup).await;
        }
        let (code, answer) = {
            let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
            route(&mut s, &setup, &head.method, &head.target, &body)
        };
        let text = answer.to_string();
        let reason = if code == 200 { "OK" } else { "Error" };
        let resp = format!(
            "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        r.get_mut().write_all(resp.as_bytes()).await?;
    }
    Ok(())
}

fn status(code: u16, reason: &str, message: &str) -> (u16, Value) {
    (
        code,
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": message, "reason": reason, "code": code,
        }),
    )
}

fn query(target: &str) -> (String, Vec<(String, String)>) {
    let (path, q) = target.split_once('?').unwrap_or((target, ""));
    let pairs = q
        .split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), percent_decode(v))
        })
        .collect();
    (path.to_string(), pairs)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The plain requests: apply, get, list, delete.
fn route(s: &mut State, setup: &Setup, method: &str, target: &str, body: &[u8]) -> (u16, Value) {
    let (path, q) = query(target);
    let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
    // /api/v1/namespaces/NS/{configmaps,pods}[/NAME]
    // /apis/apps/v1/namespaces/NS/deployments[/NAME]
    let (kind, ns, name) = match seg.as_slice() {
        ["api", "v1", "namespaces", ns, "configmaps", name] => ("ConfigMap", *ns, Some(*name)),
        ["api", "v1", "namespaces", ns, "pods"] => ("Pod", *ns, None),
        ["apis", "apps", "v1", "namespaces", ns, "deployments", name] => {
            ("Deployment", *ns, Some(*name))
        }
        _ => {
            return status(
                404,
                "NotFound",
                &format!("the stand-in does not serve {path}"),
            )
        }
    };
    let key = |n: &str| (kind.to_string(), ns.to_string(), n.to_string());
    match (method, kind, name) {
        ("GET", "Pod", None) => {
            let selector: BTreeMap<String, String> = q
                .iter()
                .filter(|(k, _)| k == "labelSelector")
                .flat_map(|(_, v)| v.split(',').map(str::to_string).collect::<Vec<_>>())
                .filter_map(|kv| {
                    kv.split_once('=')
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                })
                .collect();
            let items: Vec<Value> = s
                .pods
                .iter()
                .filter(|((pns, _), pod)| {
                    pns == ns && selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
                })
                .map(|((pns, pname), pod)| {
                    let mut metadata =
                        json!({ "name": pname, "namespace": pns, "labels": pod.labels });
                    if pod.terminating {
                        metadata["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
                        metadata["deletionGracePeriodSeconds"] = json!(30);
                    }
                    json!({
                        "apiVersion": "v1", "kind": "Pod",
                        "metadata": metadata,
                        "spec": { "containers": [{ "name": "kilnd", "image": "kilnd" }] },
                        "status": if setup.pending {
                            json!({ "phase": "Pending" })
                        } else {
                            json!({
                                "phase": "Running",
                                "conditions": [{ "type": "Ready", "status": "True" }],
                            })
                        },
                    })
                })
                .collect();
            (
                200,
                json!({ "apiVersion": "v1", "kind": "PodList", "metadata": { "resourceVersion": "1" }, "items": items }),
            )
        }
        ("PATCH", _, Some(name)) => {
            let Ok(mut obj) = serde_json::from_slice::<Value>(body) else {
                return status(400, "BadRequest", "the apply patch is not JSON");
            };
            if !q.iter().any(|(k, v)| k == "fieldManager" && !v.is_empty()) {
                return status(422, "Invalid", "fieldManager is required for apply patch");
            }
            if obj["kind"] != kind || obj["metadata"]["name"] != name {
                return status(400, "BadRequest", "kind or name does not match the path");
            }
            obj["metadata"]["uid"] = json!(format!("uid-{kind}-{name}"));
            obj["metadata"]["resourceVersion"] = json!("1");
            if kind == "Deployment" {
                let replicas = obj["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
                let labels: BTreeMap<String, String> =
                    serde_json::from_value(obj["spec"]["template"]["metadata"]["labels"].clone())
                        .unwrap_or_default();
                s.pods.retain(|(pns, pname), _| {
                    !(pns == ns && pname.starts_with(&format!("{name}-7c9d8-")))
                });
                for i in 0..replicas {
                    let node = if setup.nodes.is_empty() {
                        0
                    } else {
                        i % setup.nodes.len()
                    };
                    s.pods.insert(
                        (ns.to_string(), format!("{name}-7c9d8-{i}")),
                        Pod {
                            labels: labels.clone(),
                            node,
                            terminating: false,
                        },
                    );
                }
                let ready = if setup.pending { 0 } else { replicas };
                obj["status"] = json!({
                    "replicas": replicas, "readyReplicas": ready,
                    "availableReplicas": ready, "updatedReplicas": replicas,
                });
            }
            s.objects.insert(key(name), obj.clone());
            (200, obj)
        }
        ("GET", _, Some(name)) => match s.objects.get(&key(name)) {
            Some(o) => (200, o.clone()),
            None => status(404, "NotFound", &format!("{kind} {name:?} not found")),
        },
        ("DELETE", _, Some(name)) => match s.objects.remove(&key(name)) {
            Some(o) => {
                if kind == "Deployment" {
                    let prefix = format!("{name}-7c9d8-");
                    s.pods
                        .retain(|(pns, pname), _| !(pns == ns && pname.starts_with(&prefix)));
                }
                (200, o)
            }
            None => status(404, "NotFound", &format!("{kind} {name:?} not found")),
        },
        _ => status(405, "MethodNotAllowed", &format!("{method} {path}")),
    }
}

/// `GET …/pods/NAME/exec?command=…`: upgrades to a WebSocket and runs
/// the command (only `kilnd dial-stdio`) against the pod's node.
async fn exec<S: Conn>(
    mut r: BufReader<S>,
    head: Head,
    state: Arc<Mutex<State>>,
    setup: Arc<Setup>,
) -> Result<(), BoxError> {
    let (path, q) = query(&head.target);
    let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
    let ["api", "v1", "namespaces", ns, "pods", pod, "exec"] = seg.as_slice() else {
        return Err(format!("upgrade of {path}: not an exec").into());
    };
    let refuse = {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        let refuse = s.refused_execs < setup.refuse_execs;
        if refuse {
            s.refused_execs += 1;
        }
        refuse
    };
    if refuse {
        let text = status(
            500,
            "InternalError",
            "error dialing backend: remote error: tls: internal error",
        )
        .1
        .to_string();
        let resp = format!(
            "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        r.get_mut().write_all(resp.as_bytes()).await?;
        return Ok(());
    }
    let offered = head
        .headers
        .get("sec-websocket-protocol")
        .cloned()
        .unwrap_or_default();
    let offered: Vec<&str> = offered.split(',').map(str::trim).collect();
    let protocol = ["v5.channel.k8s.io", "v4.channel.k8s.io"]
        .into_iter()
        .filter(|p| !(setup.v4_only && *p == "v5.channel.k8s.io"))
        .find(|p| offered.contains(p))
        .ok_or("no channel protocol offered")?;
    let key = head
        .headers
        .get("sec-websocket-key")
        .ok_or("no Sec-WebSocket-Key")?;
    let command: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    let container = q
        .iter()
        .find(|(k, _)| k == "container")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let (node, exec_index) = {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        let exec_index = s.execs.len();
        s.execs.push(Exec {
            namespace: ns.to_string(),
            pod: pod.to_string(),
            container: container.clone(),
            command: command.clone(),
            protocol: protocol.to_string(),
            netns: None,
        });
        let node = s
            .pods
            .get(&(ns.to_string(), pod.to_string()))
            .map(|p| p.node);
        (node, exec_index)
    };
    let Some(node) = node else {
        let text = status(404, "NotFound", &format!("pods {pod:?} not found"))
            .1
            .to_string();
        let resp = format!(
            "HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        );
        r.get_mut().write_all(resp.as_bytes()).await?;
        return Ok(());
    };
    let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes());
    let resp = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n"
    );
    r.get_mut().write_all(resp.as_bytes()).await?;
    let ws = tokio_tungstenite::WebSocketStream::from_raw_socket(r, Role::Server, None).await;
    let (mut tx, mut rx) = ws.split();
    if command.first().map(String::as_str) != Some("kilnd")
        || command.get(1).map(String::as_str) != Some("dial-stdio")
        || container != "kilnd"
    {
        let st = json!({"metadata": {}, "status": "Failure",
            "message": format!("the stand-in runs only `kilnd dial-stdio` in container kilnd, not {command:?} in {container:?}"),
            "reason": "InternalError"});
        let mut m = vec![3u8];
        m.extend(st.to_string().as_bytes());
        tx.send(Message::binary(m)).await?;
        tx.close().await?;
        return Ok(());
    }
    let node = setup.nodes.get(node).ok_or("a pod on no node")?;
    let mut cmd = tokio::process::Command::new(&setup.kilnd);
    cmd.args(["dial-stdio", "--addr", &node.addr])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(netns) = &node.netns {
        crate::netns::enter_on_exec(cmd.as_std_mut(), netns)?;
    }
    let mut child = cmd.spawn()?;
    // Spawned means exec'd, so past the setns: where it runs now.
    let netns = child.id().and_then(|pid| crate::netns::of_pid(pid).ok());
    {
        let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = s.execs.get_mut(exec_index) {
            e.netns = netns;
        }
    }
    let mut stdin = child.stdin.take().ok_or("stdin")?;
    let stdout = child.stdout.take().ok_or("stdout")?;
    let stderr = child.stderr.take().ok_or("stderr")?;
    // The server speaks first: an empty frame on each output channel.
    tx.send(Message::binary(vec![1u8])).await?;
    tx.send(Message::binary(vec![2u8])).await?;
    let (frames_tx, mut frames_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let pump = |mut from: Box<dyn tokio::io::AsyncRead + Unpin + Send>, ch: u8| {
        let frames_tx = frames_tx.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 << 10];
            loop {
                let n = match from.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut m = Vec::with_capacity(n + 1);
                m.push(ch);
                m.extend_from_slice(&buf[..n]);
                if frames_tx.send(m).await.is_err() {
                    break;
                }
            }
        })
    };
    let out_task = pump(Box::new(stdout), 1);
    let err_task = pump(Box::new(stderr), 2);
    drop(frames_tx);
    let stdin_task = tokio::spawn(async move {
        while let Some(m) = rx.next().await {
            let Ok(Message::Binary(b)) = m else {
                // A close (v4's end of stdin) or an error.
                break;
            };
            let end = match b.first() {
                Some(0) => stdin.write_all(&b[1..]).await.is_err(),
                // v5: close channel 0 (stdin).
                Some(255) => b.get(1) == Some(&0),
                _ => false,
            };
            if end {
                break;
            }
        }
        drop(stdin);
    });
    while let Some(m) = frames_rx.recv().await {
        tx.send(Message::binary(m)).await?;
    }
    let _ = out_task.await;
    let _ = err_task.await;
    let code = child.wait().await?;
    stdin_task.abort();
    let st = if code.success() {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
            "message": format!("command terminated with {code}"),
            "details": {"causes": [{"reason": "ExitCode", "message": code.code().unwrap_or(-1).to_string()}]}})
    };
    let mut m = vec![3u8];
    m.extend(st.to_string().as_bytes());
    tx.send(Message::binary(m)).await?;
    let _ = tx.close().await;
    Ok(())
}
