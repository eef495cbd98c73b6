//! `kilnd`, kiln's BuildKit-compatible daemon: buildctl, nerdctl and the
//! buildx remote driver talk to it as they would to buildkitd.
//!
//! This file is wiring only: flags and configuration (`config`), the
//! tracing subscriber (text or JSON lines), the daemon state, one gRPC
//! server per listening address (`listen`, systemd's sockets included) with
//! the health service (`health`), the optional metrics endpoint
//! (`metrics`), readiness for systemd (`notify`), SIGHUP (the
//! configuration is read again; the log level and `[fetch]` are applied,
//! the rest at the next start) and an orderly shutdown on SIGTERM/SIGINT:
//! stop accepting, cancel, wait for running builds, exit 0.

mod cache;
mod config;
mod contexts;
mod control;
mod definition;
mod dial;
mod errdetails;
mod export;
mod frontend;
mod frontendimage;
mod gateway;
mod health;
mod history;
mod historycontent;
mod historyresults;
mod inputs;
mod jobs;
mod listen;
mod llb;
mod metrics;
mod notify;
mod ocilayout;
mod policy;
mod push;
mod registry;
mod resultfs;
mod secrets;
mod sessions;
mod solve;
mod ssh;
mod state;
mod status;
mod tenants;
mod trace;
mod uploads;
mod usagefilter;
mod workers;

use anyhow::{anyhow, Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser};
use kiln_proto::control::control_server::ControlServer;
use kiln_proto::gateway::llb_bridge_server::LlbBridgeServer;
use kiln_proto::health::health_server::HealthServer;
use std::process::ExitCode;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

/// gRPC message limit in both directions (LLB definitions can be large).
const MAX_MESSAGE: usize = 16 << 20;
/// How long connections may stay open once builds are done.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(
    name = "kilnd",
    about = "kiln's BuildKit-compatible build daemon (buildctl, nerdctl build, buildx remote driver)"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(flatten)]
    flags: config::Flags,
    #[command(subcommand)]
    command: Option<Sub>,
}

#[derive(clap::Subcommand)]
enum Sub {
    /// Proxy stdin/stdout to a running kilnd's socket (as `buildctl
    /// dial-stdio`): gRPC over a pod exec or ssh stream.
    DialStdio {
        /// The daemon's address, unix:///path [default:
        /// unix:///run/kiln/kilnd.sock].
        #[arg(long, value_name = "ADDR")]
        addr: Option<String>,
    },
}

/// The whole `kilnd` command: parses the arguments and serves until a
/// signal.
pub fn main() -> ExitCode {
    tune_malloc();
    // First, while kilnd is one thread: it changes the environment.
    listen::take_activation();
    // The version line names the commit (build.rs), so it is set here.
    let version: &'static str =
        Box::leak(kiln_engine::version_line(env!("KILN_GIT_COMMIT")).into_boxed_str());
    let matches = Cli::command().version(version).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    if let Some(Sub::DialStdio { addr }) = cli.command {
        return dial_stdio(addr.as_deref().unwrap_or(config::DEFAULT_ADDR));
    }
    let config = match config::Config::load(&cli.flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kilnd: {}", error_line(&anyhow::Error::new(e)));
            return ExitCode::FAILURE;
        }
    };
    let log = init_tracing(config.log_format, config.debug);
    if let Some(path) = &config.missing_file {
        tracing::warn!(path = %path.display(), "config file does not exist: using the defaults");
    }
    // Before the runtime: a few small file operations need no blocking
    // thread (one would linger, 10 s and its memory, after start).
    let worker_id = match prepare_root(&config.root) {
        Ok(id) => id,
        Err(e) => {
            eprintln!("kilnd: {}", error_line(&e));
            return ExitCode::FAILURE;
        }
    };
    let rt = match kiln_engine::runtime::multi_thread() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kilnd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(config, worker_id, cli.flags, log));
    // Connections still draining after the timeout are dropped here.
    rt.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kilnd: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// `kilnd dial-stdio`: no configuration, no logging to stdout (stdout is
/// the stream), errors on stderr.
fn dial_stdio(addr: &str) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kilnd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let r = rt.block_on(dial::dial(addr, tokio::io::stdin(), tokio::io::stdout()));
    // A read of stdin may still be blocked in its thread: do not wait.
    rt.shutdown_timeout(Duration::ZERO);
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kilnd: {}", error_line(&anyhow::Error::new(e)));
            ExitCode::FAILURE
        }
    }
}

/// kilnd is long-lived and its large buffers are short-lived (1 MiB
/// context chunks, layer blocks on their way to containerd). By default
/// glibc gives each thread that allocates an arena of its own (up to 8 per
/// core) and, once such a buffer is freed, raises its mmap threshold, so
/// later buffers come from those arenas and stay there after the build:
/// resident memory grows with the number of threads a build touched. Two
/// arenas and a fixed 128 KiB threshold (which turns the raising off) give
/// every large buffer back when it is freed.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called first
    // thing in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Gives the allocator's free pages back to the system. A build's
/// transient buffers (the context's receive, a layer's chunks on their way
/// to containerd) are freed when it ends, but glibc returns only the free
/// top of a heap: what was freed below a live allocation stays resident
/// (~8 MiB after W3's cold build). Called when the last running build ends
/// ([`jobs::ActiveGuard`]); it takes the arenas' locks like any `malloc`.
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory of the allocator's
    // own heaps; it is thread-safe like malloc and free.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// An error and its causes on one line.
fn error_line(e: &anyhow::Error) -> String {
    format!("{e:#}")
}

/// The handle that changes the log level on SIGHUP.
type LogHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

/// The log filter for `debug`; `KILND_LOG` overrides it.
fn log_filter(debug: bool) -> tracing_subscriber::EnvFilter {
    let default = if debug {
        "debug,h2=info,hyper=info,hyper_util=info,tower=info,rustls=info"
    } else {
        "info"
    };
    tracing_subscriber::EnvFilter::try_from_env("KILND_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default))
}

/// Logs to stderr (journald picks it up), one line per event: text, or a
/// JSON object with the event's fields at the top level.
fn init_tracing(format: config::LogFormat, debug: bool) -> LogHandle {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(log_filter(debug));
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        config::LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
            )
            .init(),
        config::LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(std::io::stderr),
            )
            .init(),
    }
    handle
}

/// SIGHUP: reads the configuration again. A valid one applies its log
/// level now and its `[fetch]` bounds to the builds that start from now on
/// (running builds keep theirs); settings that need new sockets, a new
/// containerd connection or new engines are logged as waiting for the
/// next start. An invalid one is logged with the file's name and changes
/// nothing, `[fetch]` included. Never fatal.
fn reload(flags: &config::Flags, d: &state::Daemon, log: &LogHandle) {
    notify::notify_logged(notify::RELOADING);
    let current = &d.config;
    match config::Config::load(flags) {
        Ok(new) => {
            if let Some(path) = &new.missing_file {
                // As at startup: a missing file gives the defaults.
                tracing::warn!(path = %path.display(), "SIGHUP: config file does not exist: using the defaults");
            }
            d.fetch.set(new.fetch);
            let level = match log.modify(|f| *f = log_filter(new.debug)) {
                Ok(()) => "applied",
                Err(e) => {
                    tracing::warn!(error = %e, "cannot change the log level");
                    "unchanged"
                }
            };
            let mut restart = Vec::new();
            if new.addrs != current.addrs {
                restart.push("addresses");
            }
            if new.root != current.root {
                restart.push("root");
            }
            if new.log_format != current.log_format {
                restart.push("log format");
            }
            if new.group != current.group {
                restart.push("socket group");
            }
            if new.metrics_addr != current.metrics_addr {
                restart.push("metrics address");
            }
            tracing::info!(
                file = %new.file.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
                debug = new.debug,
                log_level = level,
                fetch_max_size = new.fetch.max_size,
                fetch_idle_timeout = ?new.fetch.idle_timeout,
                fetch_timeout = ?new.fetch.timeout,
                needs_restart = %restart.join(", "),
                "SIGHUP: configuration read again; the log level and [fetch] apply to what starts now"
            );
        }
        Err(e) => tracing::error!(
            file = %flags.config_file().display(),
            error = %error_line(&anyhow::Error::new(e)),
            "SIGHUP: the configuration is invalid; keeping the running one"
        ),
    }
    notify::notify_logged(notify::READY);
}

/// Makes kiln's state directory private and returns the worker id kept
/// in it.
fn prepare_root(root: &std::path::Path) -> Result<String> {
    // kiln's state (received contexts, step files, mount points) is for
    // root only: created 0700, an existing directory tightened.
    kiln_engine::sweep::private_state_dir(root)
        .with_context(|| format!("cannot make {} private", root.display()))?;
    workers::worker_id(root)
        .with_context(|| format!("cannot create the worker id under {}", root.display()))
}

/// Binds every address of `addrs` (none is served yet).
async fn bind_all(
    d: &state::Daemon,
    addrs: &[String],
    tls: Option<&config::TlsConfig>,
) -> Result<Vec<listen::Listener>> {
    let mut listeners = Vec::new();
    for addr in addrs {
        let authenticated = !addr.starts_with("tcp://") || tls.is_some_and(|t| t.ca.is_some());
        if !d.config.tenants.is_empty() && !authenticated {
            tracing::warn!(
                addr,
                "tenants are configured but clients on this address prove no identity: \
                 every request there is refused"
            );
        }
        listeners.push(listen::bind(addr, tls, d.config.group).await?);
    }
    Ok(listeners)
}

async fn run(
    config: config::Config,
    worker_id: String,
    flags: config::Flags,
    log: LogHandle,
) -> Result<()> {
    let addrs = config.addrs.clone();
    let tls = config.tls.clone();

    let d = state::Daemon::new(config, worker_id).await?;
    let worker_id = &d.worker_id;
    // Connecting checked containerd answers; its version is for the log
    // only, asked while the listeners are bound.
    let (version, listeners) = tokio::join!(d.ctrd.version(), bind_all(&d, &addrs, tls.as_ref()));
    match version {
        Ok(v) => tracing::info!(
            version = kiln_engine::VERSION,
            worker = %worker_id,
            containerd = %v,
            namespace = d.ctrd.namespace(),
            snapshotter = d.ctrd.snapshotter(),
            max_parallelism = ?d.config.max_parallelism,
            tenants = d.config.tenants.len(),
            insecure_tcp = d.config.insecure_tcp,
            "kilnd starting"
        ),
        Err(e) => tracing::warn!(error = %e, "containerd version unavailable"),
    }

    // Every address is bound before any is served: a bad one fails the
    // start instead of leaving a half-listening daemon.
    let listeners = listeners?;
    for l in &listeners {
        tracing::info!(addr = l.addr(), local = ?l.local_addr(), tls = tls.is_some() && l.addr().starts_with("tcp://"), "listening");
    }

    let stop_accepting = CancellationToken::new();
    if let Some(addr) = &d.config.metrics_addr {
        let l = metrics::bind(addr)
            .await
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        tracing::info!(addr, local = ?l.local_addr().ok(), "serving metrics on /metrics");
        tokio::spawn(metrics::serve(l, d.clone(), stop_accepting.clone()));
    }
    let mut servers = JoinSet::new();
    for listener in listeners {
        let router = Server::builder()
            .initial_connection_window_size(kiln_session::hijack::CONNECTION_WINDOW)
            .add_service(
                ControlServer::new(control::ControlService(d.clone()))
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
            )
            .add_service(
                LlbBridgeServer::new(gateway::GatewayService(d.clone()))
                    .max_decoding_message_size(MAX_MESSAGE)
                    .max_encoding_message_size(MAX_MESSAGE),
            )
            .add_service(kiln_proto::content::content_server::ContentServer::new(
                historycontent::HistoryContent(d.clone()),
            ))
            .add_service(trace::TraceService)
            .add_service(HealthServer::new(health::HealthService {
                shutdown: d.shutdown.clone(),
            }));
        let stop = stop_accepting.clone();
        servers.spawn(async move {
            let addr = listener.addr().to_string();
            router
                .serve_with_incoming_shutdown(listener, stop.cancelled_owned())
                .await
                .with_context(|| format!("serving {addr}"))
        });
    }

    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut sighup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    // Every address listens: a Type=notify unit is started.
    notify::notify_logged(notify::READY);
    loop {
        tokio::select! {
            _ = sigterm.recv() => {
                tracing::info!("SIGTERM: shutting down");
                break;
            }
            _ = sigint.recv() => {
                tracing::info!("SIGINT: shutting down");
                break;
            }
            _ = sighup.recv() => reload(&flags, &d, &log),
            Some(done) = servers.join_next() => {
                stop_accepting.cancel();
                d.shutdown.cancel();
                return match done {
                    Ok(Ok(())) => Err(anyhow!("a listener stopped unexpectedly")),
                    Ok(Err(e)) => Err(e),
                    Err(e) => Err(anyhow!("a server task failed: {e}")),
                };
            }
        }
    }

    notify::notify_logged(notify::STOPPING);
    stop_accepting.cancel();
    d.shutdown.cancel();
    tokio::select! {
        _ = d.wait_idle() => tracing::info!("builds finished"),
        _ = sigterm.recv() => tracing::warn!("second SIGTERM: not waiting for builds"),
        _ = sigint.recv() => tracing::warn!("second SIGINT: not waiting for builds"),
    }
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(done) = servers.join_next().await {
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %format!("{e:#}"), "server shutdown"),
                Err(e) => tracing::warn!(error = %e, "server task"),
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::info!("closing connections still open");
    }
    tracing::info!("kilnd stopped");
    Ok(())
}
