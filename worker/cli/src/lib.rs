//! `kiln`, the build client. In this version it runs the engine in-process
//! against containerd (the embedded mode).
//!
//! It owns flags (turned into BuildKit frontend attributes, so both modes
//! share `kiln-frontend`'s path to the graph) and progress display; the
//! build itself is the engine's. The binary is a one-line
//! `main` over [`main`] so the end-to-end tests can build the same CLI.

mod cacheflags;
mod progress;
mod remote;
mod secrets;
mod ssh;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use kiln_engine::{BuildRequest, Engine};
use kiln_snapshot::containerd::ContainerdConfig;
use kiln_snapshot::diff::Compression;
use kiln_snapshot::Containerd;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "kiln",
    version = kiln_engine::VERSION,
    about = "containerd-native image builder"
)]
struct Cli {
    /// containerd's socket.
    #[arg(
        long,
        env = "CONTAINERD_ADDRESS",
        default_value = "/run/containerd/containerd.sock",
        global = true
    )]
    containerd_address: PathBuf,
    /// containerd namespace to build in and register images in.
    #[arg(
        long,
        env = "CONTAINERD_NAMESPACE",
        default_value = "default",
        global = true
    )]
    namespace: String,
    /// Snapshotter for build steps and the unpacked result.
    #[arg(
        long,
        env = "CONTAINERD_SNAPSHOTTER",
        default_value = "overlayfs",
        global = true
    )]
    snapshotter: String,
    /// A kilnd (or BuildKit) daemon to build with, `unix:///path` or
    /// `tcp://host:port`; without it the engine runs in this process.
    #[arg(long, env = "KILN_HOST", global = true)]
    addr: Option<String>,
    /// CA certificate to verify a tcp:// daemon with (enables TLS).
    #[arg(long, global = true)]
    tlscacert: Option<PathBuf>,
    /// Client certificate for a daemon that requires one.
    #[arg(long, global = true)]
    tlscert: Option<PathBuf>,
    /// Client key for --tlscert.
    #[arg(long, global = true)]
    tlskey: Option<PathBuf>,
    /// Server name to verify instead of the address's host.
    #[arg(long, global = true)]
    tlsservername: Option<String>,
    /// kilnd's configuration file, whose `[registry."HOST"]` tables
    /// (mirrors, http, insecure, ca, keypair) embedded builds use too
    /// [default: /etc/kiln/kilnd.toml if it exists].
    #[arg(long, env = "KILN_CONFIG", value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// kiln's state directory (mount points and FIFOs; no image data).
    #[arg(
        long,
        env = "KILN_ROOT",
        default_value = "/var/lib/kiln",
        global = true
    )]
    root: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Build an image from a Dockerfile into containerd.
    Build(Box<BuildArgs>),
    /// Show the build cache's records in containerd (with --addr, the
    /// daemon's records this client may see).
    Du {
        /// Show every record with its full lease ID.
        #[arg(long, short = 'v')]
        verbose: bool,
    },
    /// Remove build cache records (least recently used first) and run
    /// containerd's garbage collection.
    Prune {
        /// Remove all records, internal ones included.
        #[arg(long, short = 'a')]
        all: bool,
        /// Keep the most recently used records up to this size (e.g. 5GB).
        #[arg(long)]
        keep_storage: Option<String>,
        /// Keep records used within this long (e.g. 48h).
        #[arg(long)]
        keep_duration: Option<String>,
        /// Only records matching type=regular|exec.cachemount (repeatable).
        #[arg(long)]
        filter: Vec<String>,
    },
    /// Import a root filesystem directory as a one-layer image.
    ImportRootfs {
        /// Image name, e.g. busybox:latest.
        #[arg(long)]
        name: String,
        /// Default command of the image, one argument per flag
        /// (`--cmd sh --cmd -c --cmd 'echo hi'`).
        #[arg(long, allow_hyphen_values = true)]
        cmd: Vec<String>,
        dir: PathBuf,
    },
}

#[derive(clap::Args)]
struct BuildArgs {
    /// Name of the image (repeatable).
    #[arg(short = 't', long = "tag")]
    tags: Vec<String>,
    /// Dockerfile path (default: CONTEXT/Dockerfile).
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    /// Stage to build.
    #[arg(long)]
    target: Option<String>,
    /// Build-time variable K=V (K alone takes the environment's value).
    #[arg(long = "build-arg")]
    build_args: Vec<String>,
    /// Image label K=V.
    #[arg(long = "label")]
    labels: Vec<String>,
    /// Do not use cache.
    #[arg(long)]
    no_cache: bool,
    /// Do not use cache for these stages (repeatable or comma-separated).
    #[arg(long, value_delimiter = ',')]
    no_cache_filter: Vec<String>,
    /// Extra named build context NAME=VALUE: a directory, or
    /// docker-image://REF; it replaces the stage, image or `--from`
    /// source called NAME.
    #[arg(long = "build-context")]
    build_contexts: Vec<String>,
    /// Target platform; kiln builds for the host's only.
    #[arg(long)]
    platform: Option<String>,
    /// Add a line to RUN steps' /etc/hosts: HOST=IP or HOST:IP (an IP may
    /// be a comma list or [bracketed]; repeatable).
    #[arg(long = "add-host", value_name = "HOST=IP")]
    add_hosts: Vec<String>,
    /// A resource limit of RUN steps, NAME=SOFT[:HARD] (e.g.
    /// nofile=1024:2048; repeatable).
    #[arg(long = "ulimit", value_name = "NAME=SOFT[:HARD]")]
    ulimits: Vec<String>,
    /// Size of RUN steps' /dev/shm (e.g. 128m).
    #[arg(long = "shm-size", value_name = "SIZE")]
    shm_size: Option<String>,
    /// Ask the registry for every base image even if the image store has
    /// the tag, and pull what changed (image-resolve-mode=pull). Without
    /// it, a tag in the store is used as it is and a missing one pulled.
    #[arg(long)]
    pull: bool,
    /// Progress output: auto, plain, tty, rawjson or quiet (default:
    /// $BUILDKIT_PROGRESS, else auto).
    #[arg(long)]
    progress: Option<String>,
    /// Output: type=image[,name=N][,compression=gzip|zstd|uncompressed]
    /// [,push=true][,push-by-digest=true][,registry.insecure=true].
    #[arg(short = 'o', long = "output")]
    outputs: Vec<String>,
    /// Push the image to its registries (`-o type=image,push=true` for
    /// the -t names).
    #[arg(long)]
    push: bool,
    /// Allow an entitlement the build needs: network.host for RUN
    /// --network=host, security.insecure for RUN --security=insecure
    /// (repeatable; a daemon must also allow it).
    #[arg(long = "allow", value_name = "ENTITLEMENT")]
    allow: Vec<String>,
    /// Cache export: type=local,dest=DIR | type=registry,ref=R |
    /// type=inline, with mode=min|max (repeatable; a bare ref is
    /// type=registry,ref=REF).
    #[arg(long = "cache-to", value_name = "SPEC")]
    cache_to: Vec<String>,
    /// Cache import: type=local,src=DIR | type=registry,ref=R (repeatable;
    /// a bare ref is type=registry,ref=REF).
    #[arg(long = "cache-from", value_name = "SPEC")]
    cache_from: Vec<String>,
    /// Embedded mode: the network of RUN steps without --network: cni (a
    /// namespace of their own on the kiln0 bridge), host, or auto (cni when
    /// the CNI plugins are in /usr/lib/cni, else host) [default: auto].
    /// A daemon (--addr) uses its own setting. [env: KILN_NETWORK_MODE,
    /// read in embedded mode only]
    #[arg(long, value_name = "MODE")]
    network_mode: Option<String>,
    /// A secret for RUN --mount=type=secret: id=ID[,src=FILE|,env=VAR]
    /// [,type=file|env] (repeatable; `id=ID` alone reads the env var ID
    /// when set, else the file ID).
    #[arg(long = "secret", value_name = "SPEC")]
    secrets: Vec<String>,
    /// An SSH agent for RUN --mount=type=ssh: default|ID[=SOCKET]
    /// (repeatable; without a socket, $SSH_AUTH_SOCK). Key files are not
    /// supported yet.
    #[arg(long = "ssh", value_name = "SPEC")]
    ssh: Vec<String>,
    /// Build context directory.
    context: PathBuf,
}

/// The whole `kiln` command: parses the arguments and runs.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colour only for a terminal: logs piped to a file or CI stay plain.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            match e.downcast_ref::<progress::SolveFailed>() {
                Some(f) => f.print(&mut std::io::stderr()),
                None => eprintln!("error: {e:#}"),
            }
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let config = ContainerdConfig {
        address: cli.containerd_address.clone(),
        namespace: cli.namespace.clone(),
        snapshotter: cli.snapshotter.clone(),
    };
    let addr = cli.addr.clone().or_else(|| {
        std::env::var("BUILDKIT_HOST")
            .ok()
            .filter(|s| !s.is_empty())
    });
    let tls = remote::ClientTls {
        ca: cli.tlscacert.clone(),
        cert: cli.tlscert.clone(),
        key: cli.tlskey.clone(),
        server_name: cli.tlsservername.clone(),
    };
    match cli.command {
        Command::Build(args) => match addr {
            Some(addr) => {
                if args.network_mode.is_some() {
                    return Err(anyhow!(
                        "--network-mode configures the embedded engine; a daemon ({addr}) uses its own (kilnd --network-mode)"
                    ));
                }
                if let Some(c) = &cli.config {
                    return Err(anyhow!(
                        "--config/KILN_CONFIG ({}) configures the embedded engine's registries; a daemon ({addr}) uses its own kilnd.toml",
                        c.display()
                    ));
                }
                build_remote(&addr, &tls, *args).await
            }
            None => build(config, cli.root, cli.config, *args).await,
        },
        Command::Du { verbose } => {
            let records = match &addr {
                // The daemon's records, as far as this client may see them.
                Some(addr) => remote::disk_usage(remote::connect(addr, &tls).await?).await?,
                None => {
                    let ctrd = Containerd::connect(config).await?;
                    kiln_engine::prune::disk_usage(&kiln_engine::Services::containerd(&ctrd))
                        .await?
                        .into_iter()
                        .map(|r| remote::Record {
                            id: r.lease.id,
                            record_type: r.record_type,
                            size: r.size,
                            last_used: r.last_used,
                            description: r.description,
                        })
                        .collect()
                }
            };
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            println!(
                "{:<26} {:<16} {:>10} {:>14}  DESCRIPTION",
                "ID", "TYPE", "SIZE", "LAST USED"
            );
            let mut total = 0;
            for r in &records {
                total += r.size;
                let id = r.id.rsplit('/').next().unwrap_or_default();
                let id = if verbose {
                    r.id.as_str()
                } else {
                    &id[..id.len().min(25)]
                };
                let desc = if verbose {
                    r.description.clone()
                } else {
                    r.description.chars().take(60).collect()
                };
                println!(
                    "{:<26} {:<16} {:>10} {:>14}  {}",
                    id,
                    r.record_type,
                    human_size(r.size),
                    format!("{} ago", human_age(now.saturating_sub(r.last_used))),
                    desc
                );
            }
            println!("Total: {} in {} records", human_size(total), records.len());
            Ok(())
        }
        Command::Prune {
            all,
            keep_storage,
            keep_duration,
            filter,
        } => {
            let mut opts = kiln_engine::prune::PruneOptions {
                all,
                ..Default::default()
            };
            if let Some(s) = keep_storage {
                opts.keep_storage = Some(kiln_engine::prune::parse_size(&s).ok_or_else(|| {
                    anyhow!("invalid --keep-storage {s:?}: use e.g. 512MB or 5GB")
                })?);
            }
            if let Some(d) = keep_duration {
                opts.keep_duration =
                    Some(kiln_engine::prune::parse_duration(&d).ok_or_else(|| {
                        anyhow!("invalid --keep-duration {d:?}: use e.g. 48h or 30m")
                    })?);
            }
            for f in filter {
                match f.split_once('=') {
                    Some(("type", t)) => opts.types.push(t.to_string()),
                    _ => {
                        return Err(anyhow!(
                            "invalid --filter {f:?}: only type=TYPE is supported"
                        ))
                    }
                }
            }
            let removed: Vec<(String, String, u64)> = match &addr {
                Some(addr) => {
                    let nanos =
                        |d: std::time::Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
                    let req = kiln_proto::control::PruneRequest {
                        all: opts.all,
                        keep_duration: opts.keep_duration.map(nanos).unwrap_or(0),
                        max_used_space: opts
                            .keep_storage
                            .map(|b| i64::try_from(b).unwrap_or(i64::MAX))
                            .unwrap_or(0),
                        filter: opts.types.iter().map(|t| format!("type=={t}")).collect(),
                        ..Default::default()
                    };
                    remote::prune(remote::connect(addr, &tls).await?, req)
                        .await?
                        .into_iter()
                        .map(|r| (r.id, r.record_type, r.size))
                        .collect()
                }
                None => {
                    let ctrd = Containerd::connect(config).await?;
                    kiln_engine::prune::prune(&kiln_engine::Services::containerd(&ctrd), &opts)
                        .await?
                        .removed
                        .into_iter()
                        .map(|r| (r.lease.id, r.record_type, r.size))
                        .collect()
                }
            };
            for (id, record_type, size) in &removed {
                println!("{id}\t{record_type}\t{}", human_size(*size));
            }
            println!(
                "Total: {} in {} records",
                human_size(removed.iter().map(|r| r.2).sum()),
                removed.len()
            );
            Ok(())
        }
        Command::ImportRootfs { name, cmd, dir } => {
            let ctrd = Containerd::connect(config).await?;
            let name = kiln_dockerfile::reference::normalize(&name)?;
            let cfg = kiln_solver::ImageConfig {
                env: vec![
                    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_string(),
                ],
                cmd: if cmd.is_empty() { None } else { Some(cmd) },
                ..Default::default()
            };
            let digest = kiln_engine::import::import_rootfs(
                &kiln_engine::Services::containerd(&ctrd),
                &dir,
                &name,
                &cfg,
            )
            .await?;
            println!("{name} {digest}");
            Ok(())
        }
    }
}

/// Bytes with a binary unit, like buildctl du (`1.5 GiB`).
fn human_size(n: u64) -> String {
    bytesize::ByteSize(n).display().iec().to_string()
}

/// A rough age, its largest unit only: `5s`, `3m`, `2h`, `4days`.
fn human_age(secs: u64) -> String {
    let full = humantime::format_duration(std::time::Duration::from_secs(secs)).to_string();
    full.split(' ').next().unwrap_or("0s").to_string()
}

/// Splits `K=V`; `K` alone takes the environment's value when `from_env`.
fn key_values(items: &[String], from_env: bool, what: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for item in items {
        match item.split_once('=') {
            Some((k, v)) => {
                out.insert(k.to_string(), v.to_string());
            }
            None if from_env => {
                if let Ok(v) = std::env::var(item) {
                    out.insert(item.clone(), v);
                }
            }
            None => return Err(anyhow!("invalid {what} {item:?}: expected KEY=VALUE")),
        }
    }
    Ok(out)
}

/// The image exporter's settings from `-o` (only `type=image` here).
#[derive(Debug, Default, PartialEq, Eq)]
struct ImageOutput {
    names: Vec<String>,
    compression: Option<Compression>,
    /// `push=true`: push every name after the build.
    push: bool,
    /// `push-by-digest=true`: push without tags.
    push_by_digest: bool,
    /// `registry.insecure=true`: the push may use plain HTTP or skip TLS
    /// verification for the registries of its names.
    insecure: bool,
}

/// A boolean exporter attribute as BuildKit reads it (`push` alone is
/// `true`).
fn bool_attr(key: &str, value: &str) -> Result<bool> {
    match value {
        "" | "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(anyhow!("invalid {key}={value:?}: expected true or false")),
    }
}

/// `-o` specs of the image exporter; `push` is `--push`.
fn parse_outputs(outputs: &[String], push: bool) -> Result<ImageOutput> {
    let mut out = ImageOutput {
        push,
        ..Default::default()
    };
    for o in outputs {
        let mut kind = None;
        for kv in o.split(',') {
            let (k, v) = match kv.split_once('=') {
                Some(kv) => kv,
                None if kv == "push" => (kv, ""),
                None => return Err(anyhow!("invalid output {o:?}: expected key=value pairs")),
            };
            match k {
                "type" => kind = Some(v.to_string()),
                "name" => out.names.extend(v.split(',').map(String::from)),
                "compression" => {
                    out.compression = Some(v.parse().map_err(|_| {
                        anyhow!("invalid compression {v:?}: use gzip, zstd or uncompressed")
                    })?)
                }
                "push" => out.push |= bool_attr(k, v)?,
                "push-by-digest" => out.push_by_digest = bool_attr(k, v)?,
                "registry.insecure" => out.insecure = bool_attr(k, v)?,
                "unpack" | "oci-mediatypes" => {}
                "rewrite-timestamp" if v != "false" => {
                    return Err(anyhow!(
                        "output option rewrite-timestamp is not supported yet"
                    ))
                }
                "rewrite-timestamp" => {}
                _ => return Err(anyhow!("unknown output option {k:?} in {o:?}")),
            }
        }
        match kind.as_deref() {
            Some("image") | None => {}
            Some(t) => {
                return Err(anyhow!(
                    "output type {t:?} is not supported yet (use type=image)"
                ))
            }
        }
    }
    if out.push_by_digest && !out.push {
        return Err(anyhow!("push-by-digest=true needs push=true (or --push)"));
    }
    if out.insecure && !out.push {
        return Err(anyhow!(
            "registry.insecure=true needs push=true (or --push)"
        ));
    }
    Ok(out)
}

/// The build context directory and the Dockerfile (`-f`, else
/// `CONTEXT/Dockerfile`), both absolute.
fn context_and_dockerfile(args: &BuildArgs) -> Result<(PathBuf, PathBuf)> {
    let context = args
        .context
        .canonicalize()
        .with_context(|| format!("build context {}", args.context.display()))?;
    if !context.is_dir() {
        return Err(anyhow!(
            "build context {} is not a directory",
            context.display()
        ));
    }
    let dockerfile = match &args.file {
        Some(f) => f
            .canonicalize()
            .with_context(|| format!("cannot read {}", f.display()))?,
        None => context.join(kiln_frontend::DEFAULT_FILENAME),
    };
    Ok((context, dockerfile))
}

/// The build flags as the frontend attributes buildctl would send, so
/// embedded and daemon builds have one parser of options
/// ([`kiln_frontend::FrontendOptions::from_attrs`]).
fn frontend_attrs(
    args: &BuildArgs,
    dockerfile: &std::path::Path,
) -> Result<HashMap<String, String>> {
    let mut attrs = HashMap::new();
    if let Some(f) = dockerfile.file_name() {
        attrs.insert("filename".into(), f.to_string_lossy().into_owned());
    }
    for (k, v) in key_values(&args.build_args, true, "build-arg")? {
        attrs.insert(format!("build-arg:{k}"), v);
    }
    // As buildx: SOURCE_DATE_EPOCH in the client's environment is a build
    // argument unless one is given.
    if let Ok(v) = std::env::var("SOURCE_DATE_EPOCH") {
        attrs
            .entry("build-arg:SOURCE_DATE_EPOCH".into())
            .or_insert(v);
    }
    for (k, v) in key_values(&args.labels, false, "label")? {
        attrs.insert(format!("label:{k}"), v);
    }
    for (k, v) in key_values(&args.build_contexts, false, "build-context")? {
        // As buildx: a directory is served under the context's name.
        let v = if is_context_dir(&v) {
            format!("local:{k}")
        } else {
            v
        };
        attrs.insert(format!("context:{k}"), v);
    }
    if let Some(t) = &args.target {
        attrs.insert("target".into(), t.clone());
    }
    if let Some(p) = &args.platform {
        attrs.insert("platform".into(), p.clone());
    }
    if !args.add_hosts.is_empty() {
        attrs.insert("add-hosts".into(), add_hosts_attr(&args.add_hosts)?);
    }
    if !args.ulimits.is_empty() {
        let list = args
            .ulimits
            .iter()
            .map(|u| {
                kiln_solver::Ulimit::parse(u)
                    .map(|u| u.to_string())
                    .map_err(|e| anyhow!("--ulimit {u}: {e}"))
            })
            .collect::<Result<Vec<_>>>()?;
        attrs.insert("ulimit".into(), list.join(","));
    }
    if let Some(s) = &args.shm_size {
        let bytes = kiln_dockerfile::ram_in_bytes(s)
            .ok_or_else(|| anyhow!("--shm-size {s}: invalid size"))?;
        if bytes > 0 {
            attrs.insert("shm-size".into(), bytes.to_string());
        }
    }
    if args.pull {
        attrs.insert(
            kiln_engine::resolve::FRONTEND_ATTR.into(),
            kiln_engine::resolve::ResolveMode::Pull.as_str().into(),
        );
    }
    if args.no_cache {
        attrs.insert("no-cache".into(), String::new());
    } else if !args.no_cache_filter.is_empty() {
        attrs.insert("no-cache".into(), args.no_cache_filter.join(","));
    }
    Ok(attrs)
}

/// `--add-host` values as the `add-hosts` attribute, as buildx sends it:
/// `HOST=IP` or `HOST:IP`, an IP list split into one entry each, brackets
/// around an address dropped. The frontend checks the addresses again.
fn add_hosts_attr(hosts: &[String]) -> Result<String> {
    let mut out = Vec::new();
    for h in hosts {
        let (host, ips) = h
            .split_once('=')
            .or_else(|| h.split_once(':'))
            .filter(|(host, ip)| !host.is_empty() && !ip.is_empty())
            .ok_or_else(|| anyhow!("invalid host {h}"))?;
        if ips == "host-gateway" {
            bail!("--add-host {h}: host-gateway is not supported yet");
        }
        for ip in ips.split(',') {
            let ip = ip
                .strip_prefix('[')
                .and_then(|v| v.strip_suffix(']'))
                .unwrap_or(ip);
            if ip.parse::<std::net::IpAddr>().is_err() {
                bail!("invalid host {h}: failed to parse IP {ip}");
            }
            out.push(format!("{host}={ip}"));
        }
    }
    Ok(out.join(","))
}

/// Whether a `--build-context` value names a directory (as buildx tells
/// them apart): anything that is not `SCHEME://...`, `git@...`, or one of
/// the `target:`/`input:`/`local:` forms the frontend reads itself.
fn is_context_dir(value: &str) -> bool {
    !(value.contains("://")
        || value.starts_with("git@")
        || ["target:", "input:", "local:"]
            .iter()
            .any(|p| value.starts_with(p)))
}

/// The directories of `--build-context NAME=DIR`, by name, absolute.
fn context_dirs(args: &BuildArgs) -> Result<HashMap<String, PathBuf>> {
    let mut dirs = HashMap::new();
    for (k, v) in key_values(&args.build_contexts, false, "build-context")? {
        if !is_context_dir(&v) {
            continue;
        }
        // The session serves the main context and the Dockerfile's
        // directory under these names.
        if k == "context" || k == "dockerfile" {
            return Err(anyhow!(
                "build context {k}={v}: {k:?} cannot name a directory context"
            ));
        }
        let dir = std::path::Path::new(&v)
            .canonicalize()
            .with_context(|| format!("build context {k}={v}"))?;
        if !dir.is_dir() {
            return Err(anyhow!("build context {k}={v} is not a directory"));
        }
        dirs.insert(k, dir);
    }
    Ok(dirs)
}

/// The `--cache-to`/`--cache-from` entries of the flags (and of
/// `--build-arg BUILDKIT_INLINE_CACHE=1`), checked.
fn cache_entries(args: &BuildArgs) -> Result<(Vec<cacheflags::Entry>, Vec<cacheflags::Entry>)> {
    let build_args = key_values(&args.build_args, true, "build-arg")?;
    cacheflags::entries(&args.cache_to, &args.cache_from, &build_args)
}

/// `-o` specs as the exporter attribute maps sent to a daemon; `--push`
/// (`push`) sets `push=true` on the image output, adding one if there is
/// none.
fn remote_outputs(specs: &[String], push: bool) -> Result<Vec<HashMap<String, String>>> {
    let mut outputs = Vec::new();
    for o in specs {
        let mut m = HashMap::new();
        for kv in o.split(',') {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| anyhow!("invalid output {o:?}: expected key=value pairs"))?;
            m.insert(k.to_string(), v.to_string());
        }
        outputs.push(m);
    }
    if push {
        let is_image = |m: &HashMap<String, String>| m.get("type").is_none_or(|t| t == "image");
        if !outputs.iter().any(is_image) {
            outputs.push(HashMap::from([("type".to_string(), "image".to_string())]));
        }
        for m in outputs.iter_mut().filter(|m| is_image(m)) {
            m.insert("push".into(), "true".into());
        }
    }
    Ok(outputs)
}

/// `kiln build` against a daemon.
async fn build_remote(addr: &str, tls: &remote::ClientTls, args: BuildArgs) -> Result<()> {
    let (context, dockerfile) = context_and_dockerfile(&args)?;
    // The daemon parses (and refuses) them, as any BuildKit client's.
    let attrs = frontend_attrs(&args, &dockerfile)?;
    let named_dirs = context_dirs(&args)?;
    let (cache_exports, cache_imports) = cache_entries(&args)?;
    let outputs = remote_outputs(&args.outputs, args.push)?;
    let secrets = secrets::Secrets::parse(&args.secrets)?;
    let ssh = ssh::Agents::parse(&args.ssh)?.session();
    let tags = args
        .tags
        .iter()
        .map(|n| kiln_dockerfile::reference::normalize(n).map_err(anyhow::Error::from))
        .collect::<Result<Vec<_>>>()?;
    let channel = remote::connect(addr, tls).await?;
    let (tx, rx) = progress::channel();
    let display = tokio::spawn(progress::render(rx, progress_mode(&args)?));
    let resp = remote::build(
        channel,
        remote::RemoteBuild {
            context,
            dockerfile,
            attrs,
            named_dirs,
            outputs,
            tags,
            entitlements: args.allow.clone(),
            cache_exports,
            cache_imports,
            secrets,
            ssh,
        },
        tx,
    )
    .await;
    let _ = display.await;
    let resp = resp?;
    if let Some(n) = resp.get("image.name") {
        for name in n.split(',') {
            println!("naming to {name}");
        }
    }
    if let Some(d) = resp.get("containerimage.digest") {
        println!("manifest {d}");
    }
    Ok(())
}

/// Where the embedded CLI reads `[registry."HOST"]` tables: kilnd's own
/// default configuration file (`kilnd --config`'s default), so one file
/// configures registries for both.
const DEFAULT_KILND_CONFIG: &str = "/etc/kiln/kilnd.toml";

/// The registry configuration of embedded builds: the `[registry]` tables
/// of `--config`/`KILN_CONFIG` (which must exist), else of
/// [`DEFAULT_KILND_CONFIG`] if it exists.
fn registry_hosts(config: Option<&std::path::Path>) -> Result<kiln_registry::HostsConfig> {
    let path = match config {
        Some(p) => {
            if !p.is_file() {
                return Err(anyhow!(
                    "configuration file {} (--config/KILN_CONFIG) does not exist",
                    p.display()
                ));
            }
            p
        }
        None => std::path::Path::new(DEFAULT_KILND_CONFIG),
    };
    Ok(kiln_registry::HostsConfig::from_kilnd_toml(path)?)
}

async fn build(
    config: ContainerdConfig,
    root: PathBuf,
    config_file: Option<PathBuf>,
    args: BuildArgs,
) -> Result<()> {
    let (context, dockerfile) = context_and_dockerfile(&args)?;
    let mut opts =
        kiln_frontend::FrontendOptions::from_attrs(&frontend_attrs(&args, &dockerfile)?)?;
    // Each named directory is read with its own `.dockerignore`.
    let named_dirs = context_dirs(&args)?;
    for local in kiln_frontend::local_contexts(&opts) {
        let dir = named_dirs
            .get(&local)
            .ok_or_else(|| anyhow!("build context {local:?}: no such directory given"))?;
        let excludes = kiln_frontend::read_context_ignore(dir)?;
        kiln_frontend::set_context_excludes(&mut opts, &local, &excludes);
    }
    let (cache_exports, cache_imports) = cache_entries(&args)?;
    let (cache_exports, cache_imports) = cacheflags::parsed(&cache_exports, &cache_imports)?;
    let secrets: std::sync::Arc<dyn kiln_engine::secrets::SecretSource> =
        std::sync::Arc::new(secrets::Secrets::parse(&args.secrets)?);
    let ssh: std::sync::Arc<dyn kiln_engine::ssh::SshSource> =
        std::sync::Arc::new(ssh::Agents::parse(&args.ssh)?);
    let shown_as = progress_mode(&args)?;
    let df_dir = dockerfile.parent().unwrap_or(&context);
    let source = kiln_frontend::read_dockerfile(df_dir, &opts.filename, &context)?;
    let out = parse_outputs(&args.outputs, args.push)?;
    let compression = out.compression.unwrap_or(Compression::Gzip);
    let mut names = out.names.clone();
    names.extend(args.tags.iter().cloned());
    let names = names
        .iter()
        .map(|n| kiln_dockerfile::reference::normalize(n).map_err(anyhow::Error::from))
        .collect::<Result<Vec<_>>>()?;

    // In embedded mode this process is the daemon too: what the user
    // allows is both what is allowed and what is asked for.
    let granted = kiln_engine::entitlements::Entitlements::parse(&args.allow)?;
    let mode = args.network_mode.clone().or_else(|| {
        std::env::var("KILN_NETWORK_MODE")
            .ok()
            .filter(|s| !s.is_empty())
    });
    let mode: kiln_engine::network::NetworkMode = match mode {
        Some(m) => m.parse()?,
        None => Default::default(),
    };
    let cni = mode.resolve(
        kiln_engine::network::CniConfig::default(),
        kiln_engine::build::network_dir(&root),
    )?;

    let push = out.push.then(|| kiln_engine::push::PushOptions {
        by_digest: out.push_by_digest,
        insecure: out.insecure,
        ..Default::default()
    });
    if push.is_some() && names.is_empty() {
        return Err(anyhow!(
            "--push needs a name to push to (-t REGISTRY/REPOSITORY:TAG)"
        ));
    }
    let hosts = registry_hosts(config_file.as_deref())?;
    // Embedded, this process is the client: the user's own logins.
    let credentials: std::sync::Arc<dyn kiln_registry::Credentials> =
        std::sync::Arc::new(kiln_registry::DockerConfig);

    let ctrd = Containerd::connect(config).await?;
    let engine = Engine::with_network(ctrd, root, cni).with_registry(std::sync::Arc::new(hosts));
    engine.sweep().await?;
    // Progress starts before the frontend, which shows its registry
    // lookups, after `load build definition` as in BuildKit.
    let (shown, rx) = progress::channel();
    let display = tokio::spawn(progress::render(rx, shown_as));
    let embedded = std::sync::Arc::new(std::sync::Mutex::new(progress::model::Embedded::default()));
    let (tx, engine_rx) = kiln_engine::progress::channel();
    let forward = tokio::spawn(progress::forward_engine(
        engine_rx,
        embedded.clone(),
        shown.clone(),
    ));
    let definition = {
        let now = std::time::SystemTime::now();
        let mut e = embedded.lock().unwrap_or_else(|p| p.into_inner());
        let name = format!("[internal] load build definition from {}", opts.filename);
        let size = i64::try_from(source.text.len()).unwrap_or(i64::MAX);
        [
            e.begin(&name, now),
            e.item("transferring dockerfile:", size, now, now),
            e.close(std::time::SystemTime::now(), None),
        ]
    };
    for u in definition {
        let _ = shown.send(u).await;
    }
    let images = engine
        .base_images(opts.resolve_mode, credentials.clone())
        .with_progress(tx.clone());
    let planned = kiln_frontend::plan(&source, &opts, &images).await;
    let pinned = images.pinned();
    drop(images);
    // The exec op carries no security mode, so none asks for
    // security.insecure.
    let checked = planned.map_err(anyhow::Error::from).and_then(|b| {
        granted.check_graph(&b.graph)?;
        Ok(b)
    });
    let built = match checked {
        Ok(b) => b,
        Err(e) => {
            drop(tx);
            let _ = forward.await;
            drop(shown);
            let _ = display.await;
            return Err(e);
        }
    };
    let digests: Vec<String> = built
        .graph
        .definition_digests()
        .iter()
        .map(|d| d.to_string())
        .collect();
    let inputs = built
        .graph
        .vertices
        .iter()
        .map(|v| {
            v.inputs
                .iter()
                .filter_map(|e| digests.get(e.vertex.0).cloned())
                .collect()
        })
        .collect();
    let locations: Vec<Option<kiln_solver::SourceLocation>> = built
        .graph
        .vertices
        .iter()
        .map(|v| v.location.clone())
        .collect();
    embedded
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .set_graph(digests.clone(), inputs);
    let warnings: Vec<String> = built.warnings.iter().map(|w| w.to_string()).collect();
    let mut locals = named_dirs;
    locals.insert(kiln_frontend::CONTEXT_NAME.to_string(), context.clone());
    let req = BuildRequest {
        graph: built.graph,
        result: built.result,
        config: built.config,
        locals,
        names,
        compression,
        cache_imports,
        cache_exports,
        credentials,
        resolve_mode: opts.resolve_mode,
        pinned,
        push,
        secrets,
        ssh,
    };

    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\ncancelling build...");
            on_signal.cancel();
        }
    });
    let result = engine.build(req, tx.clone(), cancel).await;
    drop(tx);
    // The engine's last events, then the export's items and its end, as
    // BuildKit's exporter reports them.
    let _ = forward.await;
    let finals = {
        let mut e = embedded.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::SystemTime::now();
        let exporting = e.open().is_some_and(|v| v.name.starts_with("exporting"));
        match &result {
            Ok(r) => {
                let since = e.open().and_then(|v| v.started).unwrap_or(now);
                let mut u = vec![
                    e.item("exporting layers", 0, since, now),
                    e.item(
                        &format!("exporting manifest {}", r.manifest_digest),
                        0,
                        now,
                        now,
                    ),
                ];
                for n in &r.names {
                    u.push(e.item(&format!("naming to {n}"), 0, now, now));
                }
                u.push(e.close(now, None));
                u
            }
            Err(err) => vec![e.close(now, exporting.then(|| err.to_string()))],
        }
    };
    for u in finals {
        let _ = shown.send(u).await;
    }
    drop(shown);
    let mut trace = display.await.unwrap_or_default();
    print_warnings(&warnings);
    let result = match result {
        Ok(r) => r,
        Err(e) => {
            // The failed steps' Dockerfile lines, for the snippet.
            let sources = trace
                .failed()
                .iter()
                .filter_map(|v| digests.iter().position(|d| *d == v.vertex.digest))
                .filter_map(|i| locations.get(i).cloned().flatten())
                .map(|l| {
                    let line = i32::try_from(l.line).unwrap_or(i32::MAX);
                    progress::model::Source {
                        filename: l.file,
                        data: source.text.clone().into_bytes(),
                        language: "Dockerfile".into(),
                        ranges: vec![progress::model::Range {
                            start: (line, 0),
                            end: (line, 0),
                        }],
                    }
                })
                .collect();
            trace.updated.clear();
            return Err(progress::SolveFailed {
                message: e.to_string(),
                sources,
            }
            .into());
        }
    };
    for n in &result.names {
        println!("naming to {n}");
    }
    println!("manifest {}", result.manifest_digest);
    Ok(())
}

/// The progress mode: `--progress`, else `BUILDKIT_PROGRESS`, else auto.
fn progress_mode(args: &BuildArgs) -> Result<progress::Mode> {
    progress::Mode::resolve(
        args.progress.as_deref(),
        std::env::var("BUILDKIT_PROGRESS").ok().as_deref(),
    )
}

/// The build checks' warnings (`Rule: message (line N)`) after the
/// build, as buildx prints them.
fn print_warnings(warnings: &[String]) {
    if warnings.is_empty() {
        return;
    }
    let n = warnings.len();
    eprintln!(" {n} warning{} found:", if n == 1 { "" } else { "s" });
    for w in warnings {
        eprintln!(" - {w}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build_args(argv: &[&str]) -> BuildArgs {
        let mut all = vec!["kiln", "build"];
        all.extend_from_slice(argv);
        match Cli::try_parse_from(all).expect("flags parse").command {
            Command::Build(b) => *b,
            _ => panic!("not a build"),
        }
    }

    #[test]
    fn allow_and_network_mode_are_build_flags() {
        let args = build_args(&[
            "--allow",
            "network.host",
            "--allow",
            "security.insecure",
            "--network-mode",
            "cni",
            "ctx",
        ]);
        assert_eq!(args.allow, ["network.host", "security.insecure"]);
        assert_eq!(args.network_mode.as_deref(), Some("cni"));
        let none = build_args(&["ctx"]);
        assert!(none.allow.is_empty());
        assert_eq!(none.network_mode, None);
    }

    #[test]
    fn build_flags_become_buildctls_frontend_attributes() {
        let args = build_args(&[
            "-f",
            "ctx/app.Dockerfile",
            "--target",
            "final",
            "--build-arg",
            "A=1",
            "--label",
            "team=infra",
            "--no-cache-filter",
            "deps,final",
            "--platform",
            "linux/amd64",
            "--build-context",
            "base=docker-image://alpine",
            "--build-context",
            "deps=./vendor",
            "--pull",
            "ctx",
        ]);
        let attrs =
            frontend_attrs(&args, std::path::Path::new("/abs/ctx/app.Dockerfile")).expect("attrs");
        let want: HashMap<String, String> = [
            ("filename", "app.Dockerfile"),
            ("target", "final"),
            ("build-arg:A", "1"),
            ("label:team", "infra"),
            ("no-cache", "deps,final"),
            ("platform", "linux/amd64"),
            ("context:base", "docker-image://alpine"),
            // A directory goes by its name, as buildx sends it.
            ("context:deps", "local:deps"),
            ("image-resolve-mode", "pull"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(attrs, want);

        let all = build_args(&["--no-cache", "--no-cache-filter", "x", "ctx"]);
        let attrs = frontend_attrs(&all, std::path::Path::new("/c/Dockerfile")).expect("attrs");
        assert_eq!(attrs.get("no-cache").map(String::as_str), Some(""));
        let bad = build_args(&["--label", "novalue", "ctx"]);
        let e = frontend_attrs(&bad, std::path::Path::new("/c/Dockerfile")).expect_err("bad label");
        assert_eq!(
            e.to_string(),
            "invalid label \"novalue\": expected KEY=VALUE"
        );
    }

    #[test]
    fn push_options_as_buildx_spells_them() {
        let out = |specs: &[&str], push: bool| {
            parse_outputs(
                &specs.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
                push,
            )
        };
        let plain = out(&["type=image,name=r/x:1"], false).expect("plain");
        assert_eq!(plain.names, ["r/x:1"]);
        assert!(!plain.push);
        assert!(out(&[], true).expect("--push").push);
        let all = out(
            &["type=image,name=r/x:1,push=true,push-by-digest=true,registry.insecure=true"],
            false,
        )
        .expect("all");
        assert!(all.push && all.push_by_digest && all.insecure);
        assert!(out(&["type=image,push"], false).expect("bare push").push);
        let e = out(&["type=image,rewrite-timestamp=true"], false).expect_err("not supported");
        assert_eq!(
            e.to_string(),
            "output option rewrite-timestamp is not supported yet"
        );
        assert!(out(&["type=image,rewrite-timestamp=false"], false).is_ok());
        // --push with -o push-by-digest: the flag is push=true.
        assert!(
            out(&["type=image,push-by-digest=true"], true)
                .expect("flag and option")
                .push_by_digest
        );
        assert_eq!(
            out(&["type=image,push-by-digest=true"], false)
                .expect_err("modifier alone")
                .to_string(),
            "push-by-digest=true needs push=true (or --push)"
        );
        assert_eq!(
            out(&["type=image,push=maybe"], false)
                .expect_err("bad bool")
                .to_string(),
            "invalid push=\"maybe\": expected true or false"
        );
        assert!(build_args(&["--push", "-t", "r/x:1", "ctx"]).push);
    }

    #[test]
    fn push_flag_marks_the_image_output_for_a_daemon() {
        let specs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let get = |m: &HashMap<String, String>, k: &str| m.get(k).cloned();
        // No output: an image output that pushes.
        let o = remote_outputs(&[], true).expect("outputs");
        assert_eq!(o.len(), 1);
        assert_eq!(get(&o[0], "type").as_deref(), Some("image"));
        assert_eq!(get(&o[0], "push").as_deref(), Some("true"));
        // A local output alone gets an image output besides it.
        let o = remote_outputs(&specs(&["type=local,dest=out"]), true).expect("outputs");
        assert_eq!(o.len(), 2);
        assert_eq!(get(&o[0], "push"), None);
        assert_eq!(get(&o[1], "push").as_deref(), Some("true"));
        // An image output is marked, not duplicated.
        let o = remote_outputs(&specs(&["type=image,name=r/x:1"]), true).expect("outputs");
        assert_eq!(o.len(), 1);
        assert_eq!(get(&o[0], "push").as_deref(), Some("true"));
        assert_eq!(get(&o[0], "name").as_deref(), Some("r/x:1"));
        let o = remote_outputs(&specs(&["type=image,name=r/x:1"]), false).expect("outputs");
        assert_eq!(get(&o[0], "push"), None);
    }

    #[test]
    fn sizes_print_with_binary_units() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(10 << 30), "10.0 GiB");
        assert_eq!(human_size(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn ages_print_their_largest_unit() {
        assert_eq!(human_age(0), "0s");
        assert_eq!(human_age(59), "59s");
        assert_eq!(human_age(3 * 60 + 5), "3m");
        assert_eq!(human_age(2 * 3600 + 61), "2h");
        assert_eq!(human_age(4 * 86_400 + 3600), "4days");
        // No overflow on absurd ages.
        assert!(
            human_age(u64::MAX).ends_with("years"),
            "{}",
            human_age(u64::MAX)
        );
    }
}
