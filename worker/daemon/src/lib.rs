//! `kilnd`, kiln's BuildKit-compatible daemon: buildctl, nerdctl and the
//! buildx remote driver talk to it as they would to buildkitd.
//!
//! This file is wiring only: flags and configuration (`config`), the
//! tracing subscriber, the daemon state, one gRPC server per listening
//! address (`listen`) and an orderly shutdown on SIGTERM/SIGINT: stop
//! accepting, cancel, wait for running builds, exit 0.

mod cache;
mod config;
mod contexts;
mod control;
mod export;
mod frontend;
mod gateway;
mod jobs;
mod listen;
mod llb;
mod push;
mod registry;
mod secrets;
mod sessions;
mod solve;
mod ssh;
mod state;
mod status;
mod tenants;
mod trace;
mod workers;

use anyhow::{anyhow, Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser};
use kiln_proto::control::control_server::ControlServer;
use kiln_proto::gateway::llb_bridge_server::LlbBridgeServer;
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
struct Cli {
    #[command(flatten)]
    flags: config::Flags,
}

/// The whole `kilnd` command: parses the arguments and serves until a
/// signal.
pub fn main() -> ExitCode {
    tune_malloc();
    // The version line names the commit (build.rs), so it is set here.
    let version: &'static str =
        Box::leak(kiln_engine::version_line(env!("KILN_GIT_COMMIT")).into_boxed_str());
    let matches = Cli::command().version(version).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let config = match config::Config::load(&cli.flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("kilnd: {}", error_line(&anyhow::Error::new(e)));
            return ExitCode::FAILURE;
        }
    };
    init_tracing(config.debug);
    // Before the runtime: a few small file operations need no blocking
    // thread (one would linger, 10 s and its memory, after start).
    let worker_id = match prepare_root(&config.root) {
        Ok(id) => id,
        Err(e) => {
            eprintln!("kilnd: {}", error_line(&e));
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kilnd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(config, worker_id));
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

/// An error and its causes on one line.
fn error_line(e: &anyhow::Error) -> String {
    format!("{e:#}")
}

/// Logs to stderr (journald picks it up); `KILND_LOG` overrides the level.
fn init_tracing(debug: bool) {
    let default = if debug {
        "debug,h2=info,hyper=info,hyper_util=info,tower=info,rustls=info"
    } else {
        "info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILND_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
        listeners.push(listen::bind(addr, tls).await?);
    }
    Ok(listeners)
}

async fn run(config: config::Config, worker_id: String) -> Result<()> {
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
    let mut servers = JoinSet::new();
    for listener in listeners {
        let router = Server::builder()
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
            .add_service(trace::TraceService);
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
    tokio::select! {
        _ = sigterm.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = sigint.recv() => tracing::info!("SIGINT: shutting down"),
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
