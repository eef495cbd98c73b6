//! `kiln builder create|ls|use|rm|inspect`: buildx's builder commands
//! over [`crate::builders::Store`]. A builder's status comes from asking
//! it: containerd's version for the embedded engine, `ListWorkers` and
//! `Info` for a daemon (for a kubernetes builder, its first running pod,
//! through a pod exec). A kubernetes builder's objects are applied by
//! `create --bootstrap` (or at first use) and deleted by `rm`.

use crate::builders::{Builder, Driver, Store};
use crate::kubedriver::cluster::Cluster;
use crate::remote::{self, ClientTls};
use anyhow::{bail, Context, Result};
use clap::Subcommand;
use kiln_snapshot::containerd::ContainerdConfig;
use std::collections::BTreeMap;
use std::time::Duration;

/// How long `ls` and `inspect` wait for a builder to answer.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Subcommand)]
pub enum BuilderCommand {
    /// Create a builder (and, with --use, make it current).
    Create {
        /// The daemon's address for the remote driver (unix://… or tcp://…).
        endpoint: Option<String>,
        /// Builder name [default: a free `kilnN`].
        #[arg(long)]
        name: Option<String>,
        /// embedded (this process), remote (a kilnd or BuildKit daemon) or
        /// kubernetes (kilnd pods on KUBECONFIG's cluster).
        #[arg(long, default_value = "embedded")]
        driver: String,
        /// Driver option KEY=VALUE, comma-separated; quote an item holding
        /// commas (remote: cacert, cert, key, servername; kubernetes:
        /// namespace, replicas, requests.*, limits.*, nodeselector,
        /// tolerations, image, serviceaccount, schedulername, annotations,
        /// labels, env.*, timeout, loadbalance).
        #[arg(long = "driver-opt", value_name = "KEY=VALUE")]
        driver_opt: Vec<String>,
        /// Make the new builder the current one.
        #[arg(long = "use")]
        use_it: bool,
        /// Check the builder answers before storing it.
        #[arg(long)]
        bootstrap: bool,
    },
    /// List builders; `*` marks the current one.
    Ls,
    /// Make a builder the current one.
    Use { name: String },
    /// Remove a builder.
    Rm { name: String },
    /// Show a builder's driver, endpoint, status and platforms.
    Inspect {
        /// [default: the selected builder]
        name: Option<String>,
        /// Boot a kubernetes builder's Deployment; fail unless the
        /// builder answers.
        #[arg(long)]
        bootstrap: bool,
    },
}

/// What asking a builder told.
struct Probe {
    status: String,
    version: String,
    platforms: Vec<String>,
}

/// Each `--driver-opt` is a CSV line, as buildx reads it: commas inside
/// double quotes do not split (`"nodeselector=a=b,c=d"`,
/// `nodeselector="a=b,c=d"`), and quotes around a whole item go.
fn driver_opts(items: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for item in items {
        for kv in split_csv(item).iter().filter(|s| !s.is_empty()) {
            let kv = kv
                .strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .unwrap_or(kv);
            let Some((k, v)) = kv.split_once('=') else {
                bail!("invalid driver option {kv:?}: expected KEY=VALUE");
            };
            out.insert(k.trim().to_string(), v.to_string());
        }
    }
    Ok(out)
}

/// Splits on commas outside double quotes; the quotes stay.
fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            ',' if !quoted => out.push(std::mem::take(&mut field)),
            _ => {
                if c == '"' {
                    quoted = !quoted;
                }
                field.push(c);
            }
        }
    }
    out.push(field);
    out
}

pub fn tls_of(b: &Builder) -> ClientTls {
    ClientTls {
        ca: b.tls.ca.clone(),
        cert: b.tls.cert.clone(),
        key: b.tls.key.clone(),
        server_name: b.tls.server_name.clone(),
    }
}

async fn probe(b: &Builder, containerd: &ContainerdConfig) -> Probe {
    let r = tokio::time::timeout(PROBE_TIMEOUT, probe_inner(b, containerd)).await;
    match r {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => Probe {
            status: format!("error: {e:#}"),
            version: String::new(),
            platforms: Vec::new(),
        },
        Err(_) => Probe {
            status: format!("error: no answer in {}s", PROBE_TIMEOUT.as_secs()),
            version: String::new(),
            platforms: Vec::new(),
        },
    }
}

async fn probe_inner(b: &Builder, containerd: &ContainerdConfig) -> Result<Probe> {
    match b.driver {
        Driver::Embedded => {
            let c = kiln_snapshot::Containerd::connect(containerd.clone())
                .await
                .with_context(|| format!("containerd at {}", containerd.address.display()))?;
            let v = c.version().await.context("containerd's version")?;
            Ok(Probe {
                status: "running".into(),
                version: format!("kiln {} (containerd {v})", kiln_engine::VERSION),
                platforms: vec![platform_text(&kiln_engine::oci::host_platform())],
            })
        }
        Driver::Remote => {
            let endpoint = b.endpoint.as_deref().unwrap_or_default();
            let ch = remote::connect(endpoint, &tls_of(b)).await?;
            let (version, platforms) = describe(ch).await?;
            Ok(Probe {
                status: "running".into(),
                version,
                platforms,
            })
        }
        Driver::Kubernetes => {
            let o = kube_opts(b)?;
            let cluster = Cluster::from_env().await?;
            let pods = cluster.running_pods(o).await?;
            let Some(first) = pods.first() else {
                // buildx's word for a builder not booted yet.
                return Ok(Probe {
                    status: "inactive".into(),
                    version: String::new(),
                    platforms: Vec::new(),
                });
            };
            let (version, platforms) = describe(cluster.channel(o, first).await?).await?;
            Ok(Probe {
                status: "running".into(),
                version,
                platforms,
            })
        }
    }
}

fn kube_opts(b: &Builder) -> Result<&crate::kubedriver::opts::KubeOpts> {
    b.kubernetes
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("builder {} has no kubernetes settings", b.name))
}

fn platform_text(p: &oci_spec::image::Platform) -> String {
    match p.variant() {
        Some(v) if !v.is_empty() => format!("{}/{}/{v}", p.os(), p.architecture()),
        _ => format!("{}/{}", p.os(), p.architecture()),
    }
}

/// A daemon's version (`Info`) and its workers' platforms
/// (`ListWorkers`), as buildx shows them.
async fn describe(ch: tonic::transport::Channel) -> Result<(String, Vec<String>)> {
    use kiln_proto::control::control_client::ControlClient;
    use kiln_proto::control::{InfoRequest, ListWorkersRequest};
    let mut c = ControlClient::new(ch);
    let workers = c
        .list_workers(ListWorkersRequest::default())
        .await
        .context("ListWorkers")?
        .into_inner();
    let version = c
        .info(InfoRequest {})
        .await
        .ok()
        .and_then(|i| i.into_inner().buildkit_version)
        .map(|v| v.version)
        .unwrap_or_default();
    let mut platforms = Vec::new();
    for w in workers.record {
        for p in w.platforms {
            let text = if p.variant.is_empty() {
                format!("{}/{}", p.os, p.architecture)
            } else {
                format!("{}/{}/{}", p.os, p.architecture, p.variant)
            };
            if !platforms.contains(&text) {
                platforms.push(text);
            }
        }
    }
    Ok((version, platforms))
}

fn endpoint_of(b: &Builder, containerd: &ContainerdConfig) -> String {
    match b.driver {
        Driver::Embedded => format!("unix://{}", containerd.address.display()),
        Driver::Remote => b.endpoint.clone().unwrap_or_default(),
        // As buildx shows it.
        Driver::Kubernetes => match &b.kubernetes {
            Some(o) => format!(
                "kubernetes:///{}?deployment={}&namespace={}",
                b.name,
                o.deployment,
                o.namespace()
            ),
            None => String::new(),
        },
    }
}

fn free_name(store: &Store) -> Result<String> {
    let taken: Vec<String> = store.list()?.into_iter().map(|b| b.name).collect();
    Ok((0..)
        .map(|i| format!("kiln{i}"))
        .find(|n| !taken.contains(n))
        .unwrap_or_else(|| "kiln".into()))
}

pub async fn run(
    cmd: BuilderCommand,
    selected: Option<&str>,
    containerd: &ContainerdConfig,
) -> Result<()> {
    let store = Store::from_env()?;
    match cmd {
        BuilderCommand::Create {
            endpoint,
            name,
            driver,
            driver_opt,
            use_it,
            bootstrap,
        } => {
            let driver = Driver::parse(&driver)?;
            let name = match name {
                Some(n) => n,
                None => free_name(&store)?,
            };
            let mut b = Builder::new(
                &name,
                driver,
                endpoint.as_deref(),
                &driver_opts(&driver_opt)?,
            )?;
            if let Some(o) = b.kubernetes.as_mut() {
                // Stored first, so `rm` can delete whatever a failed
                // bootstrap left on the cluster.
                let cluster = Cluster::from_env().await?;
                if o.namespace.is_none() {
                    o.namespace = Some(cluster.default_namespace().to_string());
                }
                let o = o.clone();
                store.create(&b, use_it)?;
                if bootstrap {
                    let started = async {
                        cluster.bootstrap(&o).await?;
                        let p = probe(&b, containerd).await;
                        if p.status != "running" {
                            bail!("{}", p.status);
                        }
                        Ok(())
                    };
                    if let Err(e) = started.await {
                        bail!(
                            "builder {} was created but did not start: {e:#} (`kiln builder rm {}` deletes its objects)",
                            b.name,
                            b.name
                        );
                    }
                }
                println!("{}", b.name);
                return Ok(());
            }
            if bootstrap {
                let p = probe(&b, containerd).await;
                if p.status != "running" {
                    bail!("builder {} did not start: {}", b.name, p.status);
                }
            }
            store.create(&b, use_it)?;
            println!("{}", b.name);
            Ok(())
        }
        BuilderCommand::Ls => {
            let current = store.current()?;
            let chosen = store.selected(selected).map(|b| b.name).unwrap_or(current);
            let builders = store.list()?;
            let mut rows = vec![[
                "NAME".to_string(),
                "DRIVER".into(),
                "ENDPOINT".into(),
                "STATUS".into(),
                "BUILDKIT".into(),
                "PLATFORMS".into(),
            ]];
            for b in &builders {
                let p = probe(b, containerd).await;
                let mark = if b.name == chosen { "*" } else { "" };
                rows.push([
                    format!("{}{mark}", b.name),
                    b.driver.as_str().into(),
                    endpoint_of(b, containerd),
                    p.status,
                    p.version,
                    p.platforms.join(", "),
                ]);
            }
            print!("{}", table(&rows));
            Ok(())
        }
        BuilderCommand::Use { name } => store.use_builder(&name),
        BuilderCommand::Rm { name } => {
            let b = store.get(&name)?;
            if b.driver == Driver::Kubernetes {
                let o = kube_opts(&b)?;
                let gone = Cluster::from_env().await?.delete(o).await?;
                for g in gone {
                    eprintln!("deleted {g}");
                }
            }
            store.remove(&name)?;
            println!("{name} removed");
            Ok(())
        }
        BuilderCommand::Inspect { name, bootstrap } => {
            let b = match name {
                Some(n) => store.get(&n)?,
                None => store.selected(selected)?,
            };
            // As buildx: --bootstrap boots a builder that is not running.
            if bootstrap && b.driver == Driver::Kubernetes {
                Cluster::from_env().await?.bootstrap(kube_opts(&b)?).await?;
            }
            let p = probe(&b, containerd).await;
            println!("Name:          {}", b.name);
            println!("Driver:        {}", b.driver.as_str());
            println!("Endpoint:      {}", endpoint_of(&b, containerd));
            if let Some(o) = &b.kubernetes {
                println!("Namespace:     {}", o.namespace());
                println!("Deployment:    {}", o.deployment);
                println!("Replicas:      {}", o.replicas);
                println!("Image:         {}", o.image);
                println!(
                    "Load balance:  {}",
                    match o.loadbalance {
                        crate::kubedriver::opts::LoadBalance::Sticky => "sticky",
                        crate::kubedriver::opts::LoadBalance::Random => "random",
                    }
                );
            }
            if let Some(ca) = &b.tls.ca {
                println!("TLS CA:        {}", ca.display());
            }
            println!("Status:        {}", p.status);
            if !p.version.is_empty() {
                println!("BuildKit:      {}", p.version);
            }
            println!("Platforms:     {}", p.platforms.join(", "));
            if bootstrap && p.status != "running" {
                bail!("builder {} is not running: {}", b.name, p.status);
            }
            Ok(())
        }
    }
}

/// Left-aligned columns, three spaces apart.
fn table(rows: &[[String; 6]]) -> String {
    let mut widths = [0usize; 6];
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(line.join("   ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_opts_split_on_commas_and_repeats() {
        let o = driver_opts(&["cacert=/a,cert=/b".into(), "key=/c".into()]).expect("must succeed");
        assert_eq!(o.len(), 3);
        assert_eq!(o["key"], "/c");
        assert!(driver_opts(&["nokey".into()]).is_err());
        let o = driver_opts(&[
            "\"nodeselector=a=b,c=d\",replicas=2".into(),
            "annotations=\"x=1,y=2\"".into(),
            "\"tolerations=key=k,operator=Exists;key=j,operator=Exists\"".into(),
        ])
        .expect("quoted items");
        assert_eq!(o["nodeselector"], "a=b,c=d");
        assert_eq!(o["replicas"], "2");
        assert_eq!(o["annotations"], "\"x=1,y=2\"");
        assert_eq!(
            o["tolerations"],
            "key=k,operator=Exists;key=j,operator=Exists"
        );
    }

    #[test]
    fn table_aligns_columns() {
        let row = |a: &str, b: &str| [a, b, "", "", "", ""].map(str::to_string);
        let t = table(&[row("NAME", "DRIVER"), row("default*", "embedded")]);
        assert_eq!(t, "NAME       DRIVER\ndefault*   embedded\n");
    }
}
