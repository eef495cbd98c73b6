//! The kubernetes driver's API calls, with kube-rs against the cluster of
//! `KUBECONFIG` (or the pod's service account inside a cluster):
//! server-side apply of the ConfigMap and the Deployment (create or
//! update in one call), waiting for ready replicas, listing the running
//! pods, a pod exec of `kilnd dial-stdio` carrying gRPC, and deleting
//! exactly the two objects `create` made.

use super::manifest::{self, CONTAINER};
use super::opts::KubeOpts;
use super::retry;
use anyhow::{anyhow, bail, Context, Result};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, AttachParams, DeleteParams, ListParams, Patch, PatchParams};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncBufReadExt;

/// The field manager of kiln's server-side applies.
const FIELD_MANAGER: &str = "kiln";
/// How often `--bootstrap` asks for the Deployment's status.
const POLL: Duration = Duration::from_millis(500);

/// A connection to the cluster.
#[derive(Clone)]
pub struct Cluster {
    client: kube::Client,
    default_namespace: String,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("default_namespace", &self.default_namespace)
            .finish_non_exhaustive()
    }
}

/// How long a new exec connection waits for kilnd's first bytes before
/// it is used anyway.
const FIRST_BYTES: Duration = Duration::from_secs(10);
/// How long the last words of a dial-stdio that ended are waited for.
const STDERR_GRACE: Duration = Duration::from_secs(2);

/// A pod's `kilnd dial-stdio` ended before kilnd said anything; what it
/// printed (or the exec's status message).
#[derive(Debug, Clone)]
struct DialStdioEnded(String);

impl std::fmt::Display for DialStdioEnded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            write!(f, "kilnd dial-stdio ended before kilnd answered")
        } else {
            write!(
                f,
                "kilnd dial-stdio ended before kilnd answered: {}",
                self.0
            )
        }
    }
}

impl std::error::Error for DialStdioEnded {}

/// A pod exec that still failed for a transient reason after
/// [`retry::ATTEMPTS`] tries (buildx's message); the last error is part of
/// the message.
#[derive(Debug, Clone)]
struct ExecRetriesExhausted {
    target: String,
    attempts: u32,
    last: String,
}

impl std::fmt::Display for ExecRetriesExhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "failed to connect to pod {} after {} attempts: {}",
            self.target, self.attempts, self.last
        )
    }
}

impl std::error::Error for ExecRetriesExhausted {}

/// `e` and its causes, each said once.
fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let more = s.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cur = s.source();
    }
    text
}

/// Execs `kilnd dial-stdio` in `pod`, trying again after a transient
/// failure as buildx does ([`retry`]); each retry is announced on stderr.
/// A failure that is not transient is returned at once, as it is.
async fn exec_dial_stdio(
    api: &Api<Pod>,
    pod: &str,
    target: &str,
    ap: &AttachParams,
) -> Result<kube::api::AttachedProcess, Box<dyn std::error::Error + Send + Sync>> {
    let mut attempt = 0;
    loop {
        let e = match api.exec(pod, ["kilnd", "dial-stdio"], ap).await {
            Ok(p) => return Ok(p),
            Err(e) => e,
        };
        if !retry::is_transient(&e) {
            return Err(e.into());
        }
        attempt += 1;
        if attempt >= retry::ATTEMPTS {
            return Err(ExecRetriesExhausted {
                target: target.to_string(),
                attempts: attempt,
                last: error_text(&e),
            }
            .into());
        }
        let delay = retry::backoff(attempt - 1);
        eprintln!(
            "WARNING: transient connection error to pod {target} (attempt {attempt}/{}): {}; retrying in {delay:?}",
            retry::ATTEMPTS,
            error_text(&e)
        );
        tokio::time::sleep(delay).await;
    }
}

/// The stderr of an exec'd dial-stdio: kept while the connection is
/// being made (it is the error if the connection fails), printed as the
/// pod's once the connection is in use.
struct StderrRelay {
    /// `Some` until [`StderrRelay::hand_over`]: the lines so far.
    early: Arc<Mutex<Option<Vec<String>>>>,
    task: tokio::task::JoinHandle<()>,
    pod: String,
}

impl StderrRelay {
    fn start(stderr: impl tokio::io::AsyncRead + Unpin + Send + 'static, pod: String) -> Self {
        let early = Arc::new(Mutex::new(Some(Vec::new())));
        let (kept, name) = (early.clone(), pod.clone());
        let task = tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stderr).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                match kept.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                    Some(v) => v.push(l),
                    None => eprintln!("kilnd dial-stdio in pod {name}: {l}"),
                }
            }
        });
        StderrRelay { early, task, pod }
    }

    /// The connection is in use: what was said so far is shown, and what
    /// comes later as it comes.
    fn hand_over(self) {
        let said = self.early.lock().unwrap_or_else(|p| p.into_inner()).take();
        for l in said.unwrap_or_default() {
            eprintln!("kilnd dial-stdio in pod {}: {l}", self.pod);
        }
    }

    /// Everything it said, once it has ended (or after a grace period).
    async fn said(self) -> String {
        let _ = tokio::time::timeout(STDERR_GRACE, self.task).await;
        let said = self.early.lock().unwrap_or_else(|p| p.into_inner()).take();
        said.unwrap_or_default().join("; ")
    }
}

/// Whether an API error is a 404.
fn not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(r) if r.code == 404)
}

impl Cluster {
    /// The cluster of `KUBECONFIG` (or `~/.kube/config`), else the
    /// in-cluster service account, as buildx finds it.
    pub async fn from_env() -> Result<Cluster> {
        let config = kube::Config::infer()
            .await
            .context("kubernetes driver requires kubernetes API access (KUBECONFIG, ~/.kube/config or a service account)")?;
        let default_namespace = config.default_namespace.clone();
        let client = kube::Client::try_from(config).context("kubernetes client")?;
        Ok(Cluster {
            client,
            default_namespace,
        })
    }

    /// The kubeconfig context's namespace (`default` when it names none).
    pub fn default_namespace(&self) -> &str {
        &self.default_namespace
    }

    fn api<K>(&self, o: &KubeOpts) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), o.namespace())
    }

    /// Creates or updates the ConfigMap, then the Deployment.
    pub async fn apply(&self, o: &KubeOpts) -> Result<()> {
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let [cm, d] = manifest::manifests(o);
        let name = o.config_map_name();
        self.api::<ConfigMap>(o)
            .patch(&name, &pp, &Patch::Apply(&cm))
            .await
            .with_context(|| format!("cannot apply ConfigMap {}/{name}", o.namespace()))?;
        self.api::<Deployment>(o)
            .patch(&o.deployment, &pp, &Patch::Apply(&d))
            .await
            .with_context(|| {
                format!("cannot apply Deployment {}/{}", o.namespace(), o.deployment)
            })?;
        Ok(())
    }

    /// Waits until the Deployment has `replicas` ready pods, reporting on
    /// stderr as buildx's bootstrap does; fails after the timeout.
    pub async fn wait_ready(&self, o: &KubeOpts) -> Result<()> {
        let timeout = Duration::from_secs(o.timeout_secs);
        eprintln!(
            "#1 waiting for {} pods to be ready, timeout: {}",
            o.replicas,
            humantime::format_duration(timeout)
        );
        let start = Instant::now();
        let api = self.api::<Deployment>(o);
        let mut last = None;
        loop {
            let d = api.get(&o.deployment).await.with_context(|| {
                format!("cannot get Deployment {}/{}", o.namespace(), o.deployment)
            })?;
            let ready = d
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0);
            if last != Some(ready) {
                eprintln!("#1 {ready}/{} pods ready", o.replicas);
                last = Some(ready);
            }
            if ready >= o.replicas {
                eprintln!("#1 DONE {:.1}s", start.elapsed().as_secs_f64());
                return Ok(());
            }
            if start.elapsed() >= timeout {
                bail!(
                    "expected {} replicas to be ready, got {ready} (timeout {})",
                    o.replicas,
                    humantime::format_duration(timeout)
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `--bootstrap`: apply, then wait.
    pub async fn bootstrap(&self, o: &KubeOpts) -> Result<()> {
        eprintln!(
            "#1 [internal] booting kilnd: Deployment {}/{}",
            o.namespace(),
            o.deployment
        );
        self.apply(o).await?;
        self.wait_ready(o).await
    }

    /// The names of the builder's running pods (not terminating), sorted.
    pub async fn running_pods(&self, o: &KubeOpts) -> Result<Vec<String>> {
        let list = self
            .api::<Pod>(o)
            .list(&ListParams::default().labels(&manifest::selector(o)))
            .await
            .with_context(|| format!("cannot list pods in {}", o.namespace()))?;
        let mut names: Vec<String> = list
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .filter_map(|p| p.metadata.name)
            .collect();
        names.sort();
        Ok(names)
    }

    /// Whether the Deployment exists.
    pub async fn deployed(&self, o: &KubeOpts) -> Result<bool> {
        match self.api::<Deployment>(o).get_opt(&o.deployment).await {
            Ok(d) => Ok(d.is_some()),
            Err(e) => Err(anyhow!(e)).with_context(|| {
                format!("cannot get Deployment {}/{}", o.namespace(), o.deployment)
            }),
        }
    }

    /// A gRPC channel to kilnd in `pod`: every connection is a pod exec
    /// of `kilnd dial-stdio`, its stdin and stdout the HTTP/2 stream.
    ///
    /// kilnd speaks first (its HTTP/2 settings, as soon as it accepts), so
    /// a connection waits for its first bytes: a dial-stdio that ends
    /// before any (the pod's kilnd is down) fails the connection with what
    /// it said, which is then the error, naming the pod. What dial-stdio
    /// prints on a working connection is shown as the pod's.
    pub async fn channel(&self, o: &KubeOpts, pod: &str) -> Result<tonic::transport::Channel> {
        let api = self.api::<Pod>(o);
        let pod = pod.to_string();
        let ns = o.namespace().to_string();
        let target = format!("{ns}/{pod}");
        tonic::transport::Endpoint::from_static("http://kilnd.invalid")
            .connect_with_connector(tower::service_fn(move |_| {
                let (api, pod, ns) = (api.clone(), pod.clone(), ns.clone());
                async move {
                    let ap = AttachParams::default()
                        .container(CONTAINER)
                        .stdin(true)
                        .stdout(true)
                        .stderr(true);
                    let mut p = exec_dial_stdio(&api, &pod, &format!("{ns}/{pod}"), &ap).await?;
                    let (Some(stdin), Some(stdout), Some(stderr)) =
                        (p.stdin(), p.stdout(), p.stderr())
                    else {
                        return Err("the exec stream has no stdin/stdout".into());
                    };
                    let status = p.take_status();
                    let stderr = StderrRelay::start(stderr, format!("{ns}/{pod}"));
                    // The exec's message loop runs until the stream ends.
                    tokio::spawn(async move { p.join().await });
                    let mut stdout = tokio::io::BufReader::new(stdout);
                    let ended = match tokio::time::timeout(FIRST_BYTES, stdout.fill_buf()).await {
                        Ok(Ok(first)) => first.is_empty(),
                        Ok(Err(e)) => return Err(e.into()),
                        // A slow kilnd: the connection is used as it is.
                        Err(_) => false,
                    };
                    if ended {
                        let mut why = stderr.said().await;
                        if why.is_empty() {
                            if let Some(status) = status {
                                why = tokio::time::timeout(STDERR_GRACE, status)
                                    .await
                                    .ok()
                                    .flatten()
                                    .and_then(|s| s.message)
                                    .unwrap_or_default();
                            }
                        }
                        return Err(DialStdioEnded(why).into());
                    }
                    stderr.hand_over();
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper_util::rt::TokioIo::new(
                        tokio::io::join(stdout, stdin),
                    ))
                }
            }))
            .await
            .map_err(|e| {
                // tonic's message repeats its source's: a dial-stdio that
                // ended is said once, alone.
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    if let Some(ended) = s.downcast_ref::<DialStdioEnded>() {
                        return anyhow::Error::new(ended.clone());
                    }
                    if let Some(tries) = s.downcast_ref::<ExecRetriesExhausted>() {
                        return anyhow::Error::new(tries.clone());
                    }
                    source = s.source();
                }
                anyhow::Error::new(e)
            })
            .with_context(|| format!("cannot reach kilnd in pod {target} (exec kilnd dial-stdio)"))
    }

    /// Deletes the Deployment (its pods with it) and the ConfigMap, by
    /// name: what `create` made, nothing else. One that is already gone
    /// is reported, not an error.
    pub async fn delete(&self, o: &KubeOpts) -> Result<Vec<String>> {
        let dp = DeleteParams::background();
        let mut gone = Vec::new();
        let ns = o.namespace();
        match self.api::<Deployment>(o).delete(&o.deployment, &dp).await {
            Ok(_) => gone.push(format!("deployment {ns}/{}", o.deployment)),
            Err(e) if not_found(&e) => {}
            Err(e) => {
                return Err(anyhow!(e))
                    .with_context(|| format!("cannot delete Deployment {ns}/{}", o.deployment))
            }
        }
        let cm = o.config_map_name();
        match self.api::<ConfigMap>(o).delete(&cm, &dp).await {
            Ok(_) => gone.push(format!("configmap {ns}/{cm}")),
            Err(e) if not_found(&e) => {}
            Err(e) => {
                return Err(anyhow!(e))
                    .with_context(|| format!("cannot delete ConfigMap {ns}/{cm}"))
            }
        }
        Ok(gone)
    }
}
