//! `kiln`, the build client. In this version it runs the engine in-process
//! against containerd (the embedded mode).
//!
//! It owns flags (turned into BuildKit frontend attributes, so both modes
//! share `kiln-frontend`'s path to the graph) and progress display; the
//! build itself is the engine's. The binary is a one-line
//! `main` over [`main`] so the end-to-end tests can build the same CLI.

mod builder_cmd;
mod builders;
mod cacheflags;
mod check;
mod contexts;
mod inspect;
pub mod kubedriver;
mod outputs;
mod progress;
mod remote;
mod results;
mod secrets;
mod ssh;
mod usage;

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
#[command(name = "kiln", about = "containerd-native image builder")]
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
    /// The builder to use (`kiln builder ls`) [env: KILN_BUILDER;
    /// default: the current builder].
    #[arg(long, global = true)]
    builder: Option<String>,
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
        /// Show every record with its full lease ID, type and description.
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
        /// Only records matching type=regular|exec.cachemount (or, through
        /// kilnd, source.local: the contexts it keeps), or unused for a
        /// while: until=DURATION (e.g. until=24h) (repeatable).
        #[arg(long)]
        filter: Vec<String>,
        /// Do not prompt for confirmation.
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// Manage builders: where builds run (this process or a daemon).
    #[command(subcommand)]
    Builder(builder_cmd::BuilderCommand),
    /// List the images of the containerd namespace kiln builds into:
    /// name, image ID, created, size.
    Images,
    /// Show an image in containerd's store: its config, layers and sizes.
    Inspect {
        /// Image name, e.g. busybox or registry/app:1.
        name: String,
    },
    /// Print kiln's version and the git commit it was built from.
    Version,
    /// Print a shell completion script (bash, zsh, fish, elvish or
    /// powershell) to stdout.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write kiln's man pages (kiln.1, kiln-build.1, ...) into DIR.
    Man { dir: PathBuf },
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
    /// Dockerfile path (default: CONTEXT/Dockerfile; `-` reads it from
    /// stdin).
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
    /// Extra named build context NAME=VALUE: a directory,
    /// docker-image://REF, a git or https URL, or
    /// oci-layout://DIR[:TAG][@DIGEST]; it replaces the stage, image or
    /// `--from` source called NAME (NAME::PLATFORM: only in stages built
    /// for that platform).
    #[arg(long = "build-context")]
    build_contexts: Vec<String>,
    /// Target platform(s), e.g. linux/arm64 or linux/amd64,linux/arm64 (an
    /// image index); foreign RUN steps run under QEMU user emulation.
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
    /// cgroup limits of RUN steps, KEY=VALUE: memory (e.g. 2g),
    /// memory-swap (-1 is unlimited), cpu-shares, cpu-period, cpu-quota,
    /// cpuset-cpus, cpuset-mems (repeatable; buildx's --resource).
    #[arg(long = "resource", value_name = "KEY=VALUE")]
    resources: Vec<String>,
    /// docker build's own spellings of --resource (hidden, as in buildx):
    /// -m/--memory, --memory-swap, -c/--cpu-shares, --cpu-period,
    /// --cpu-quota, --cpuset-cpus, --cpuset-mems.
    #[arg(short = 'm', long = "memory", hide = true)]
    memory: Option<String>,
    #[arg(long = "memory-swap", hide = true, allow_hyphen_values = true)]
    memory_swap: Option<String>,
    #[arg(short = 'c', long = "cpu-shares", hide = true)]
    cpu_shares: Option<String>,
    #[arg(long = "cpu-period", hide = true)]
    cpu_period: Option<String>,
    #[arg(long = "cpu-quota", hide = true)]
    cpu_quota: Option<String>,
    #[arg(long = "cpuset-cpus", hide = true)]
    cpuset_cpus: Option<String>,
    #[arg(long = "cpuset-mems", hide = true)]
    cpuset_mems: Option<String>,
    /// docker build's flags that buildx keeps hidden and that do nothing
    /// with BuildKit (nor with kiln): accepted, each with a warning.
    #[arg(long, hide = true, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    rm: Option<bool>,
    #[arg(long = "force-rm", hide = true, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    force_rm: Option<bool>,
    #[arg(long, hide = true, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    compress: Option<bool>,
    #[arg(long, hide = true, num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    squash: Option<bool>,
    #[arg(long, hide = true)]
    isolation: Option<String>,
    #[arg(long = "security-opt", hide = true)]
    security_opt: Vec<String>,
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
    /// Print nothing but the image ID when the build succeeds.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// Write the image ID to FILE.
    #[arg(long, value_name = "FILE")]
    iidfile: Option<PathBuf>,
    /// Write the build's result metadata (buildx's JSON keys) to FILE.
    #[arg(long, value_name = "FILE")]
    metadata_file: Option<PathBuf>,
    /// Put the image in the image store: kiln's image output always does
    /// (containerd's store, unpacked); the flag is buildx's spelling.
    #[arg(long)]
    load: bool,
    /// Add an annotation to the image outputs: KEY=VALUE (the manifest),
    /// or TYPE[,TYPE...]:KEY=VALUE with types manifest, index,
    /// manifest-descriptor, index-descriptor, each optionally narrowed to
    /// a platform (`manifest[linux/arm64]:KEY=VALUE`).
    #[arg(long, value_name = "KEY=VALUE")]
    annotation: Vec<String>,
    /// Run a frontend method instead of building: build (the default),
    /// check (the build checks only), outline (the build arguments,
    /// secrets and ssh the target takes) or targets (the stages); add
    /// `,format=json` for the answer's JSON.
    #[arg(long, value_name = "METHOD", alias = "print")]
    call: Option<String>,
    /// Shorthand for --call=check: run the build checks without building.
    #[arg(long)]
    check: bool,
    /// SBOM attestation: only false (none) is supported.
    #[arg(long, value_name = "VALUE")]
    sbom: Option<String>,
    /// Provenance attestation: only false (none) is supported.
    #[arg(long, value_name = "VALUE")]
    provenance: Option<String>,
    /// Attestation parameters (type=sbom|provenance,...): only
    /// disabled=true is supported.
    #[arg(long, value_name = "SPEC")]
    attest: Vec<String>,
    /// Build policy (buildx's --policy): only disabled=true is supported,
    /// which builds without the Dockerfile's `.rego` policy file.
    #[arg(long, value_name = "SPEC")]
    policy: Vec<String>,
    /// Networking mode of RUN steps without their own --network: default
    /// (kiln's), none, or host (which asks for the network.host
    /// entitlement, as buildx does).
    #[arg(long, value_name = "MODE")]
    network: Option<String>,
    /// Parent cgroup of RUN steps (not supported yet).
    #[arg(long, value_name = "PATH")]
    cgroup_parent: Option<String>,
    /// Build context: a directory, a .tar/.tar.gz file, or `-` (a tar or
    /// a Dockerfile on stdin).
    context: PathBuf,
}

/// The whole `kiln` command: parses the arguments and runs. Exit codes:
/// 0 success, 1 any failure (a flag or option that is not supported yet
/// included), 2 a command line clap cannot parse.
pub fn main() -> std::process::ExitCode {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().version(version()).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("KILN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    // Colour only for a terminal: logs piped to a file or CI stay plain.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = match kiln_engine::runtime::multi_thread() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        // The reader of our output went away (`kiln du | head -1`):
        // nothing more to say, and no one to say it to.
        Err(e) if is_broken_pipe(&e) => std::process::ExitCode::SUCCESS,
        // `--check` printed what it found; the status says the rest.
        Err(e) if e.downcast_ref::<check::ChecksFound>().is_some() => {
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            match e.downcast_ref::<progress::SolveFailed>() {
                Some(f) => f.print(&mut std::io::stderr()),
                None => eprintln!("error: {e:#}"),
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// kiln's version line (with the git commit, see build.rs).
fn version() -> &'static str {
    static V: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    V.get_or_init(|| kiln_engine::version_line(env!("KILN_GIT_COMMIT")))
}

/// Stdout's reader went away (`kiln du | head -1`). Only [`stdout`]
/// returns it: a broken pipe anywhere else (a daemon's TLS connection
/// reset, say) is an error like any other.
#[derive(Debug)]
struct StdoutClosed;

impl std::fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout closed")
    }
}

impl std::error::Error for StdoutClosed {}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<StdoutClosed>().is_some()
}

/// Writes command output to stdout; a closed pipe is an error that
/// [`main`] ends quietly on (never a panic, as `println!` would).
pub(crate) fn stdout(text: &str) -> Result<()> {
    use std::io::Write;
    let closed = |e: std::io::Error| {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            anyhow::Error::new(StdoutClosed)
        } else {
            anyhow::Error::new(e).context("writing to stdout")
        }
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes()).map_err(closed)?;
    out.flush().map_err(closed)?;
    Ok(())
}

/// What every embedded command needs first: root (it mounts snapshots,
/// runs containers and opens containerd's socket).
const NOT_ROOT: &str = "kiln must run as root (or use kilnd via --addr)";

fn require_root() -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(anyhow!(NOT_ROOT))
    }
}

/// `--call` as buildx reads it: the method (`build` without the flag) and
/// whether the answer is printed as JSON (`outline,format=json`).
fn call(args: &BuildArgs) -> Result<(String, bool)> {
    let Some(c) = args.call.as_deref() else {
        return Ok(("build".to_string(), false));
    };
    let mut method = None;
    let mut json = false;
    for field in c.split(',') {
        match field.split_once('=') {
            None if method.is_none() => method = Some(field.to_string()),
            Some(("format", "json")) => json = true,
            Some(("format", "text" | "")) => json = false,
            _ => bail!("--call={c}: {field:?} is not supported (METHOD[,format=json|text])"),
        }
    }
    let method = method.unwrap_or_else(|| "build".to_string());
    if !matches!(
        method.as_str(),
        "build" | "check" | "outline" | "targets" | "subrequests.describe"
    ) {
        bail!("--call={method} is not supported yet (build, check, outline, targets, subrequests.describe)");
    }
    if json
        && !matches!(
            method.as_str(),
            "outline" | "targets" | "subrequests.describe"
        )
    {
        bail!("--call={c}: format=json is supported for outline, targets and subrequests.describe only");
    }
    Ok((method, json))
}

/// What `--call=outline|targets` prints, embedded or from a daemon's
/// `result.json`/`result.txt`: as buildx, the JSON and a newline with
/// `format=json`, else the text.
fn call_answer(json: bool, json_answer: String, text_answer: String) -> String {
    if json {
        json_answer + "\n"
    } else {
        text_answer
    }
}

/// The `--resource` entries with the legacy flags' first, as buildx
/// joins them.
fn resource_entries(args: &BuildArgs) -> Vec<String> {
    let legacy = [
        ("memory", &args.memory),
        ("memory-swap", &args.memory_swap),
        ("cpu-shares", &args.cpu_shares),
        ("cpu-period", &args.cpu_period),
        ("cpu-quota", &args.cpu_quota),
        ("cpuset-cpus", &args.cpuset_cpus),
        ("cpuset-mems", &args.cpuset_mems),
    ];
    legacy
        .into_iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}")))
        .chain(args.resources.iter().cloned())
        .collect()
}

/// Whether a `--policy` value turns policies off (buildx's
/// `disabled=true`).
fn policy_disabled(spec: &str) -> bool {
    matches!(spec, "disabled" | "disabled=true")
}

/// buildx enforces the policy file beside a local Dockerfile
/// (`Dockerfile.rego` for `Dockerfile`) unless `--policy disabled=true`;
/// kiln cannot enforce one yet, so it refuses to build past it rather than
/// build what the policy might deny.
fn refuse_policy_file(args: &BuildArgs, prepared: &contexts::Prepared) -> Result<()> {
    if prepared.remote.is_some() && !prepared.dockerfile_local
        || args.file.as_deref().is_some_and(|f| f.as_os_str() == "-")
        || args.policy.iter().any(|p| policy_disabled(p))
    {
        return Ok(());
    }
    let Some(name) = prepared.dockerfile.file_name().and_then(|n| n.to_str()) else {
        return Ok(());
    };
    let rego = prepared
        .dockerfile
        .with_file_name(kiln_frontend::policy_file_name(name));
    if rego.is_file() {
        return Err(policy_not_supported(&rego.display().to_string()));
    }
    Ok(())
}

/// A policy file kiln cannot enforce, and how to build without it.
fn policy_not_supported(file: &str) -> anyhow::Error {
    anyhow!(
        "{file}: build policies are not supported yet (--policy disabled=true builds without it)"
    )
}

/// The build flags buildx has and kiln does not implement yet, refused
/// by name before anything runs (never ignored).
fn refuse_unsupported(args: &BuildArgs) -> Result<()> {
    let not_yet = |flag: &str| Err(anyhow!("{flag} is not supported yet"));
    call(args)?;
    let off = |v: &str| matches!(v, "false" | "0");
    if let Some(v) = args.sbom.as_deref().filter(|v| !off(v)) {
        return not_yet(&format!("--sbom={v}"));
    }
    if let Some(v) = args.provenance.as_deref().filter(|v| !off(v)) {
        return not_yet(&format!("--provenance={v}"));
    }
    for a in &args.attest {
        let disabled = a
            .split(',')
            .any(|kv| kv == "disabled=true" || kv == "disabled");
        if !disabled {
            return not_yet(&format!("--attest {a}"));
        }
    }
    if args.cgroup_parent.is_some() {
        return not_yet("--cgroup-parent");
    }
    if let Some(p) = args.policy.iter().find(|p| !policy_disabled(p)) {
        return not_yet(&format!("--policy {p}"));
    }
    if let Some(p) = args
        .progress
        .as_deref()
        .filter(|p| args.quiet && !matches!(*p, "auto" | "quiet"))
    {
        bail!("progress={p} and quiet cannot be used together");
    }
    Ok(())
}

/// The warnings for docker build's legacy flags given (buildx accepts them
/// and builds as without them): buildx's own text where it warns, else
/// what the flag would have done and why nothing changes.
fn legacy_flag_warnings(args: &BuildArgs) -> Vec<&'static str> {
    let mut out = Vec::new();
    if args.rm.is_some() || args.force_rm.is_some() {
        out.push(
            "--rm and --force-rm have no effect: kiln removes each step's container when it ends",
        );
    }
    if args.compress.is_some() {
        out.push("--compress has no effect: the context is sent as kiln sends it");
    }
    if args.isolation.is_some() {
        out.push("isolation flag is deprecated with BuildKit.");
    }
    if !args.security_opt.is_empty() {
        out.push(
            "security-opt flag is deprecated. \"RUN --security=insecure\" should be used with BuildKit.",
        );
    }
    if args.squash.is_some() {
        out.push(
            "experimental flag squash is removed with BuildKit. You should squash inside build \
             using a multi-stage Dockerfile for efficiency.",
        );
    }
    out
}

/// The progress mode: nothing with `-q`, else `--progress`, else
/// `BUILDKIT_PROGRESS`, else auto.
fn progress_mode(args: &BuildArgs) -> Result<progress::Mode> {
    if args.quiet {
        return Ok(progress::Mode::Quiet);
    }
    progress::Mode::resolve(
        args.progress.as_deref(),
        std::env::var("BUILDKIT_PROGRESS").ok().as_deref(),
    )
}

fn reporting(args: &BuildArgs) -> results::Reporting {
    results::Reporting {
        quiet: args.quiet || args.progress.as_deref() == Some("quiet"),
        iidfile: args.iidfile.clone(),
        metadata_file: args.metadata_file.clone(),
    }
}

/// buildx's warning for a build whose result has nowhere to go, printed
/// as buildx prints it: after the progress (before a failure's snippet).
fn warn_no_output(args: &BuildArgs) {
    if args.tags.is_empty() && args.outputs.is_empty() && !args.push && !args.load {
        eprintln!(
            "WARNING: No output specified. Build result will only remain in the build cache. \
             To name the image use -t NAME, to push it into a registry use --push"
        );
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Asks `question` on a terminal; anything but y/yes is no.
fn confirm(question: &str) -> Result<bool> {
    use std::io::Write;
    let mut err = std::io::stderr();
    write!(err, "{question} [y/N] ")?;
    err.flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

async fn run(cli: Cli) -> Result<()> {
    let config = ContainerdConfig {
        address: cli.containerd_address.clone(),
        namespace: cli.namespace.clone(),
        snapshotter: cli.snapshotter.clone(),
    };
    let mut addr = cli.addr.clone().or_else(|| {
        std::env::var("BUILDKIT_HOST")
            .ok()
            .filter(|s| !s.is_empty())
    });
    let mut tls = remote::ClientTls {
        ca: cli.tlscacert.clone(),
        cert: cli.tlscert.clone(),
        key: cli.tlskey.clone(),
        server_name: cli.tlsservername.clone(),
    };
    // A remote builder supplies the address and TLS files; an explicit
    // address (--addr, KILN_HOST, BUILDKIT_HOST) wins over the current
    // builder but not over a builder named on purpose.
    let named = cli
        .builder
        .clone()
        .or_else(|| std::env::var("KILN_BUILDER").ok().filter(|s| !s.is_empty()));
    let builds = matches!(
        cli.command,
        Command::Build(_) | Command::Du { .. } | Command::Prune { .. }
    );
    if builds && (named.is_some() || addr.is_none()) {
        let chosen = match &named {
            Some(n) => Some(builders::Store::from_env()?.get(n)?),
            // Without a store (no HOME) the default builder is used.
            None => match builders::Store::from_env() {
                Ok(s) => match s.selected(None) {
                    Ok(b) => Some(b),
                    // Someone else's store (root's, read by another
                    // user): the embedded engine would need root anyway,
                    // which is the first thing to say.
                    Err(e) => {
                        require_root()?;
                        return Err(e);
                    }
                },
                Err(_) => None,
            },
        };
        if let Some(b) = chosen {
            if let (Some(a), Some(n)) = (&addr, &named) {
                bail!("--addr {a} and builder {n} both say where to build: give one");
            }
            if b.driver == builders::Driver::Remote {
                addr = b.endpoint.clone();
                tls = builder_cmd::tls_of(&b);
            }
            if b.driver == builders::Driver::Kubernetes {
                let context = match &cli.command {
                    Command::Build(a) => Some(a.context.as_path()),
                    _ => None,
                };
                addr = Some(kubedriver::address(&b.name, context));
            }
        }
    }
    let embedded = addr.is_none()
        && matches!(
            cli.command,
            Command::Build(_)
                | Command::Du { .. }
                | Command::Prune { .. }
                | Command::ImportRootfs { .. }
                | Command::Inspect { .. }
                | Command::Images
        );
    if embedded {
        require_root()?;
    }
    match cli.command {
        Command::Build(args) => {
            refuse_unsupported(&args)?;
            for w in legacy_flag_warnings(&args) {
                eprintln!("WARNING: {w}");
            }
            match addr {
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
            }
        }
        Command::Du { verbose } => {
            let records = match &addr {
                // The daemon's records, as far as this client may see them.
                Some(addr) => remote::disk_usage(remote::connect(addr, &tls).await?).await?,
                None => {
                    let ctrd = Containerd::connect(config).await?;
                    kiln_engine::prune::disk_usage(&kiln_engine::Services::containerd(&ctrd))
                        .await?
                        .into_iter()
                        .map(remote::Record::from)
                        .collect()
                }
            };
            stdout(&usage::disk_usage(&records, verbose, now_secs()))
        }
        Command::Prune {
            all,
            keep_storage,
            keep_duration,
            filter,
            force,
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
                    Some((key @ ("until" | "unused-for"), d)) => {
                        if opts.keep_duration.is_some() {
                            bail!("--filter {key}=... and --keep-duration set the same thing: use one");
                        }
                        opts.keep_duration =
                            Some(kiln_engine::prune::parse_duration(d).ok_or_else(|| {
                                anyhow!("{key:?} filter expects a duration (e.g., '24h')")
                            })?);
                    }
                    _ => {
                        return Err(anyhow!(
                        "invalid --filter {f:?}: only type=TYPE and until=DURATION are supported"
                    ))
                    }
                }
            }
            // As buildx: a terminal is asked first; a script passes -f
            // (without a terminal there is no one to ask).
            if !force
                && std::io::IsTerminal::is_terminal(&std::io::stdin())
                && !confirm(usage::prune_warning(all))?
            {
                return Ok(());
            }
            let removed: Vec<remote::Record> = match &addr {
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
                    remote::prune(remote::connect(addr, &tls).await?, req).await?
                }
                None => {
                    let ctrd = Containerd::connect(config).await?;
                    kiln_engine::prune::prune(&kiln_engine::Services::containerd(&ctrd), &opts)
                        .await?
                        .removed
                        .into_iter()
                        .map(remote::Record::from)
                        .collect()
                }
            };
            stdout(&usage::pruned(&removed, now_secs()))
        }
        Command::Inspect { name } => {
            let ctrd = Containerd::connect(config).await?;
            let name = kiln_dockerfile::reference::normalize(&name)?;
            let svc = kiln_engine::Services::containerd(&ctrd);
            stdout(&inspect::inspect(&svc, &name).await?)
        }
        Command::Images => {
            let ctrd = Containerd::connect(config).await?;
            let names: Vec<String> = ctrd
                .image_list()
                .await?
                .into_iter()
                .map(|r| r.name)
                .collect();
            let svc = kiln_engine::Services::containerd(&ctrd);
            stdout(&inspect::images(&svc, &names, std::time::SystemTime::now()).await?)
        }
        Command::Version => stdout(&format!("kiln {}\n", version())),
        Command::Completion { shell } => {
            use clap::CommandFactory;
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "kiln", &mut buf);
            stdout(&String::from_utf8_lossy(&buf))
        }
        Command::Man { dir } => {
            use clap::CommandFactory;
            let cmd = Cli::command().version(version());
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            clap_mangen::generate_to(cmd, &dir)
                .with_context(|| format!("write man pages to {}", dir.display()))?;
            Ok(())
        }
        Command::Builder(cmd) => builder_cmd::run(cmd, named.as_deref(), &config).await,
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
            stdout(&format!("{name} {digest}\n"))
        }
    }
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

/// The image exporter's settings from `-o` (embedded builds export
/// images only).
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
    /// `rewrite-timestamp=true`: layer file times are clamped to
    /// `SOURCE_DATE_EPOCH`.
    rewrite_timestamp: bool,
    /// The `annotation*` options, with `--annotation`'s.
    annotations: kiln_engine::annotations::ExportAnnotations,
    /// `-o type=cacheonly` and no image output: `-t` names nothing.
    cache_only: bool,
    /// `oci-mediatypes`: OCI's media types (the default) or Docker's.
    media_types: kiln_engine::oci::MediaTypes,
    /// `force-compression=true`: every layer in `compression`.
    force_compression: bool,
    /// `compression-level`: the level of the blobs made new.
    level: kiln_snapshot::diff::Level,
    /// `source-date-epoch`: the exporter's epoch, in place of the
    /// frontend's `SOURCE_DATE_EPOCH`.
    epoch: Option<i64>,
    /// `unpack=true` (what kiln does anyway, but not for layers
    /// `rewrite-timestamp` rewrote).
    unpack: bool,
}

/// `-o` specs of an embedded build (checked by [`outputs::parse`]);
/// `push` is `--push`, `load` is `--load`, `annotations` are
/// `--annotation`'s values.
fn parse_outputs(
    specs: &[String],
    push: bool,
    load: bool,
    annotations: &[String],
) -> Result<ImageOutput> {
    let mut out = ImageOutput::default();
    let mut parsed = outputs::parse(specs, push, load, true)?;
    outputs::annotate(&mut parsed, &outputs::annotation_options(annotations)?)?;
    out.cache_only = parsed.iter().any(outputs::Output::is_cache_only)
        && !parsed.iter().any(outputs::Output::is_image);
    let mut annotation_options = Vec::new();
    // The options [`kiln_engine::exporter_options::media_types`] and
    // [`kiln_engine::exporter_options::compression_level`] read.
    let mut media_options: HashMap<String, String> = HashMap::new();
    for o in parsed {
        for (k, v) in &o.attrs {
            if kiln_engine::annotations::is_annotation(k) {
                annotation_options.push((k.clone(), v.clone()));
                continue;
            }
            match k.as_str() {
                "name" => out
                    .names
                    .extend(v.split(',').filter(|n| !n.is_empty()).map(String::from)),
                "compression" => {
                    out.compression = Some(v.parse().map_err(|_| {
                        anyhow!("invalid compression {v:?}: use gzip, zstd or uncompressed")
                    })?);
                    media_options.insert(k.clone(), v.clone());
                }
                "push" => out.push |= outputs::bool_attr(k, v)?,
                "push-by-digest" => out.push_by_digest = outputs::bool_attr(k, v)?,
                "registry.insecure" => out.insecure = outputs::bool_attr(k, v)?,
                "rewrite-timestamp" => out.rewrite_timestamp = outputs::bool_attr(k, v)?,
                "oci-mediatypes" | "oci-artifact" => {
                    media_options.insert(k.clone(), v.clone());
                }
                "force-compression" => out.force_compression = outputs::bool_attr(k, v)?,
                "compression-level" => {
                    media_options.insert(k.clone(), v.clone());
                }
                "unpack" => out.unpack = outputs::bool_attr(k, v)?,
                "source-date-epoch" => {
                    out.epoch = kiln_engine::exporter_options::source_date_epoch(v)?;
                }
                // What kiln always does (checked by outputs::parse).
                _ => {}
            }
        }
    }
    out.annotations = kiln_engine::annotations::ExportAnnotations::from_options(
        annotation_options
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    )?;
    out.media_types = kiln_engine::exporter_options::media_types(
        |k| media_options.get(k).map(String::as_str),
        out.annotations.beyond_manifests(),
    )?;
    out.level = kiln_engine::exporter_options::compression_level(
        |k| media_options.get(k).map(String::as_str),
        out.compression.unwrap_or(Compression::Gzip),
    )?;
    Ok(out)
}

/// The entitlements a build asks for: `--allow`, and network.host for
/// `--network host` (as buildx adds it).
fn entitlements(args: &BuildArgs) -> Vec<String> {
    let mut e = args.allow.clone();
    if args.network.as_deref() == Some("host") && !e.iter().any(|a| a == "network.host") {
        e.push("network.host".into());
    }
    e
}

/// The build flags as the frontend attributes buildctl would send, so
/// embedded and daemon builds have one parser of options
/// ([`kiln_frontend::FrontendOptions::from_attrs`]).
fn frontend_attrs(
    args: &BuildArgs,
    dockerfile: &std::path::Path,
    remote: Option<&str>,
    dockerfile_local: bool,
) -> Result<HashMap<String, String>> {
    let mut attrs = HashMap::new();
    // buildx's `--network`, as it sends it (and with its text for others).
    match args.network.as_deref() {
        None | Some("" | "default") => {}
        Some(n @ ("none" | "host")) => {
            attrs.insert("force-network-mode".into(), n.to_string());
        }
        Some(n) => bail!("network mode {n:?} not supported by kiln (default, none or host)"),
    }
    let request = match call(args)?.0.as_str() {
        _ if args.check => Some(kiln_frontend::check::LINT_REQUEST),
        "check" => Some(kiln_frontend::check::LINT_REQUEST),
        "outline" => Some(kiln_frontend::outline::OUTLINE_REQUEST),
        "targets" => Some(kiln_frontend::targets::TARGETS_REQUEST),
        "subrequests.describe" => Some(kiln_frontend::describe::DESCRIBE_REQUEST),
        _ => None,
    };
    if let Some(request) = request {
        attrs.insert("requestid".into(), request.to_string());
    }
    match remote {
        // As buildx: the URL is the `context` attribute and `-f` a path
        // in the fetched context, or, when absolute, the client's own
        // file (the `dockerfile` directory, named by `dockerfilekey`).
        Some(url) => {
            attrs.insert("context".into(), url.to_string());
            match &args.file {
                _ if dockerfile_local => {
                    if let Some(name) = dockerfile.file_name() {
                        attrs.insert("filename".into(), name.to_string_lossy().into_owned());
                    }
                    attrs.insert("dockerfilekey".into(), "dockerfile".into());
                }
                Some(f) => {
                    attrs.insert("filename".into(), f.to_string_lossy().into_owned());
                }
                None => {}
            }
        }
        None => {
            if let Some(f) = dockerfile.file_name() {
                attrs.insert("filename".into(), f.to_string_lossy().into_owned());
            }
        }
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
        // kiln sends no frontend inputs, embedded or through kilnd.
        if kiln_frontend::is_input_context(&v) {
            return Err(kiln_frontend::FrontendError::NamedContext { name: k, value: v }.into());
        }
        // As buildx: a directory is served under the context's name, an
        // OCI layout as a store named by an id, its tag resolved.
        let v = if let Some(layout) = oci_layout(&k, &v)? {
            layout.attr
        } else if is_context_dir(&v) {
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
    for (k, v) in kiln_solver::Resources::buildx_attrs(&resource_entries(args))? {
        attrs.insert(k, v);
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

/// A `--build-context NAME=oci-layout://PATH[:TAG][@DIGEST]`, as buildx
/// reads it: the layout directory (absolute), a store id naming it, and
/// the `context:NAME` value the frontend reads,
/// `oci-layout://STORE[:TAG]@DIGEST` (a missing digest is the tag's
/// entry in `index.json`, `latest` without either).
struct OciLayoutContext {
    store: String,
    dir: PathBuf,
    attr: String,
}

/// The [`OciLayoutContext`] of a `--build-context` value, `None` when it
/// is not `oci-layout://`.
fn oci_layout(name: &str, value: &str) -> Result<Option<OciLayoutContext>> {
    let Some(spec) = value.strip_prefix("oci-layout://") else {
        return Ok(None);
    };
    let what = || format!("build context {name}={value}");
    let is_digest = |d: &str| kiln_solver::Digest::parse(d).is_some();
    let (path, digest) = match spec.rsplit_once('@') {
        Some((p, d)) if is_digest(d) => (p, Some(d.to_string())),
        _ => (spec, None),
    };
    let is_tag = |t: &str| {
        !t.is_empty()
            && t.len() <= 128
            && !t.starts_with(['.', '-'])
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    };
    let (path, tag) = match path.rsplit_once(':') {
        Some((p, t)) if is_tag(t) => (p, Some(t)),
        _ => (path, None),
    };
    let tag = match (tag, &digest) {
        (None, None) => Some("latest"),
        (t, _) => t,
    };
    let dir = std::path::Path::new(path)
        .canonicalize()
        .with_context(what)?;
    if !dir.is_dir() {
        bail!("{}: not a directory", what());
    }
    let digest = match digest {
        Some(d) => d,
        None => {
            let tag = tag.unwrap_or("latest");
            // buildx's words.
            kiln_engine::layout::resolve_tag(&dir, tag)
                .with_context(|| format!("oci-layout reference {value:?} could not be resolved"))?
        }
    };
    // The store is named after the directory, so the same layout gives
    // the same build definition on every run.
    let hashed = kiln_solver::Digest::of(dir.as_os_str().as_encoded_bytes());
    let store = format!("kiln{}", &hashed.hex()[..24]);
    let attr = match tag {
        Some(t) => format!("oci-layout://{store}:{t}@{digest}"),
        None => format!("oci-layout://{store}@{digest}"),
    };
    Ok(Some(OciLayoutContext { store, dir, attr }))
}

/// The OCI layouts of `--build-context NAME=oci-layout://...`, by store id.
fn oci_stores(args: &BuildArgs) -> Result<kiln_engine::layout::OciStores> {
    let mut stores = kiln_engine::layout::OciStores::new();
    for (k, v) in key_values(&args.build_contexts, false, "build-context")? {
        if let Some(l) = oci_layout(&k, &v)? {
            stores.insert(l.store, l.dir);
        }
    }
    Ok(stores)
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

/// `-o` specs as the exporter attribute maps sent to a daemon (checked
/// by [`outputs::parse`]); `--push` sets `push=true` on the image output,
/// adding one if there is none.
fn remote_outputs(
    specs: &[String],
    push: bool,
    load: bool,
    annotations: &[String],
) -> Result<Vec<HashMap<String, String>>> {
    let mut parsed = outputs::parse(specs, push, load, false)?;
    outputs::annotate(&mut parsed, &outputs::annotation_options(annotations)?)?;
    Ok(parsed
        .into_iter()
        .map(|o| {
            let mut m: HashMap<String, String> = o.attrs.into_iter().collect();
            m.insert("type".into(), o.kind);
            m
        })
        .collect())
}

/// `kiln build` against a daemon.
async fn build_remote(addr: &str, tls: &remote::ClientTls, args: BuildArgs) -> Result<()> {
    let outputs = remote_outputs(&args.outputs, args.push, args.load, &args.annotation)?;
    let prepared = contexts::prepare(&args.context, args.file.as_deref(), &mut std::io::stdin())?;
    refuse_policy_file(&args, &prepared)?;
    let (context, dockerfile) = (prepared.context.clone(), prepared.dockerfile.clone());
    // The daemon parses (and refuses) them, as any BuildKit client's.
    let attrs = frontend_attrs(
        &args,
        &prepared.dockerfile,
        prepared.remote.as_deref(),
        prepared.dockerfile_local,
    )?;
    let named_dirs = context_dirs(&args)?;
    let oci_stores = oci_stores(&args)?;
    let (cache_exports, cache_imports) = cache_entries(&args)?;
    let secrets = secrets::Secrets::parse(&args.secrets)?;
    let ssh = ssh::Agents::for_build(&args.ssh, &args.context)?.session();
    let tags = args
        .tags
        .iter()
        .map(|n| kiln_dockerfile::reference::normalize(n).map_err(anyhow::Error::from))
        .collect::<Result<Vec<_>>>()?;
    let mode = progress_mode(&args)?;
    let report = reporting(&args);
    let channel = remote::connect(addr, tls).await?;
    let (tx, rx) = progress::channel();
    let display = tokio::spawn(progress::render(rx, mode));
    let resp = remote::build(
        channel,
        remote::RemoteBuild {
            context,
            dockerfile,
            attrs,
            named_dirs,
            oci_stores,
            outputs,
            tags,
            entitlements: entitlements(&args),
            cache_exports,
            cache_imports,
            secrets,
            ssh,
            quiet: report.quiet,
        },
        tx,
    )
    .await;
    let _ = display.await;
    drop(prepared);
    let (method, json) = call(&args)?;
    if args.check || method != "build" {
        // The daemon's answer, printed as the embedded one is.
        let resp = resp?;
        report.report_call(&resp.iter().map(|(k, v)| (k.clone(), v.clone())).collect())?;
        let field = |key: &str| {
            resp.get(key)
                .ok_or_else(|| anyhow!("the daemon answered no {key} for --call={method}"))
        };
        if args.check || method == "check" {
            let json = field("result.json")?;
            let report = kiln_frontend::check::CheckReport::from_json(json)
                .with_context(|| format!("the daemon's lint result {json:?}"))?;
            check::print(
                &report,
                &mut std::io::stdout().lock(),
                &mut std::io::stderr().lock(),
            )?;
            return Ok(());
        }
        return stdout(&call_answer(
            json,
            field("result.json")?.clone(),
            field("result.txt")?.clone(),
        ));
    }
    warn_no_output(&args);
    let mut resp: BTreeMap<String, String> = resp?.into_iter().collect();
    // As buildx names it: builder/node/ref.
    if let Some(r) = resp.remove(remote::BUILD_REF_KEY) {
        resp.insert(remote::BUILD_REF_KEY.into(), format!("kiln/{addr}/{r}"));
    }
    report.report(&resp)
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
    let out = parse_outputs(&args.outputs, args.push, args.load, &args.annotation)?;
    let prepared = contexts::prepare(&args.context, args.file.as_deref(), &mut std::io::stdin())?;
    refuse_policy_file(&args, &prepared)?;
    let (context, dockerfile) = (prepared.context.clone(), prepared.dockerfile.clone());
    let mut opts = kiln_frontend::FrontendOptions::from_attrs(&frontend_attrs(
        &args,
        &prepared.dockerfile,
        prepared.remote.as_deref(),
        prepared.dockerfile_local,
    )?)?;
    // Each named directory is read with its own `.dockerignore`.
    let named_dirs = context_dirs(&args)?;
    let mut named_ignores = Vec::new();
    for local in kiln_frontend::local_contexts(&opts) {
        let dir = named_dirs
            .get(&local)
            .ok_or_else(|| anyhow!("build context {local:?}: no such directory given"))?;
        let excludes = kiln_frontend::read_context_ignore(dir)?;
        kiln_frontend::set_context_excludes(&mut opts, &local, &excludes);
        named_ignores.push((local.clone(), dir.clone()));
    }
    let (cache_exports, cache_imports) = cache_entries(&args)?;
    let (cache_exports, cache_imports) = cacheflags::parsed(&cache_exports, &cache_imports)?;
    let secrets: std::sync::Arc<dyn kiln_engine::secrets::SecretSource> =
        std::sync::Arc::new(secrets::Secrets::parse(&args.secrets)?);
    let ssh: std::sync::Arc<dyn kiln_engine::ssh::SshSource> =
        std::sync::Arc::new(ssh::Agents::for_build(&args.ssh, &args.context)?);
    let shown_as = progress_mode(&args)?;
    let df_dir = dockerfile.parent().unwrap_or(&context);
    // A remote context's Dockerfile is read once the engine fetched it,
    // unless it is the client's (an absolute `-f`); `context` is then an
    // empty directory: no ignore file applies to a remote context.
    let local_source = match &prepared.remote {
        Some(_) if !opts.dockerfile_local => None,
        Some(_) => Some(kiln_frontend::remote::without_excludes(
            kiln_frontend::read_dockerfile(df_dir, &opts.filename, &context)?,
        )),
        None => Some(kiln_frontend::read_dockerfile(
            df_dir,
            &opts.filename,
            &context,
        )?),
    };
    if opts.describe {
        // The frontend's own list (the Dockerfile was read, as BuildKit's
        // frontend reads it first).
        let (_, json) = call(&args)?;
        let answer = kiln_frontend::describe::answer();
        reporting(&args).report_call(&answer)?;
        return stdout(&call_answer(
            json,
            answer["result.json"].clone(),
            answer["result.txt"].clone(),
        ));
    }
    if opts.outline || opts.targets {
        // Answered from the Dockerfile alone, as BuildKit's frontend does.
        let (method, json) = call(&args)?;
        let Some(source) = &local_source else {
            bail!("--call={method} of a remote (git or URL) context is not supported yet in embedded builds");
        };
        let (json_answer, text_answer) = if opts.outline {
            let o =
                kiln_frontend::outline::outline(source, opts.target.as_deref(), &opts.build_args)?;
            (o.json(), o.text())
        } else {
            let l = kiln_frontend::targets::list(source)?;
            (l.json(), l.text())
        };
        let version = if opts.outline {
            kiln_frontend::outline::OUTLINE_VERSION
        } else {
            kiln_frontend::targets::TARGETS_VERSION
        };
        reporting(&args).report_call(&kiln_frontend::check::answer_metadata(
            json_answer.clone(),
            text_answer.clone(),
            version,
            None,
        ))?;
        return stdout(&call_answer(json, json_answer, text_answer));
    }
    let compression = out.compression.unwrap_or(Compression::Gzip);
    let mut names = out.names.clone();
    if !out.cache_only {
        names.extend(args.tags.iter().cloned());
    }
    // `-t` names the image output too (buildx's `name`), so the options
    // are checked together again with them.
    let joined = names.join(",");
    kiln_engine::exporter_options::check_together("image", |k| match k {
        "name" => Some(joined.as_str()),
        "unpack" => Some(if out.unpack { "true" } else { "false" }),
        "rewrite-timestamp" => Some(if out.rewrite_timestamp {
            "true"
        } else {
            "false"
        }),
        _ => None,
    })?;
    let names = names
        .iter()
        .map(|n| kiln_dockerfile::reference::normalize(n).map_err(anyhow::Error::from))
        .collect::<Result<Vec<_>>>()?;

    // In embedded mode this process is the daemon too: what the user
    // allows is both what is allowed and what is asked for.
    let granted = kiln_engine::entitlements::Entitlements::parse(&entitlements(&args))?;
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
    let fetch = kiln_engine::sources::limits::FetchLimits::from_env(|k| {
        std::env::var(k).ok().filter(|v| !v.is_empty())
    })?;
    let engine = Engine::with_network(ctrd, root, cni)
        .with_registry(std::sync::Arc::new(hosts))
        .with_fetch_limits(fetch);
    engine.sweep().await?;
    if opts.lint {
        let Some(source) = &local_source else {
            bail!(
                "--check of a remote (git or URL) context is not supported yet in embedded builds"
            );
        };
        let images = engine
            .base_images(opts.resolve_mode, credentials.clone())
            .with_oci_stores(oci_stores(&args)?);
        let report = kiln_frontend::check::check(source, &opts, &images).await;
        reporting(&args).report_call(&report.metadata())?;
        check::print(
            &report,
            &mut std::io::stdout().lock(),
            &mut std::io::stderr().lock(),
        )?;
        return Ok(());
    }
    // Progress starts before the frontend, which shows its registry
    // lookups, after `load build definition` as in BuildKit.
    let report = reporting(&args);
    let (shown, rx) = progress::channel();
    let display = tokio::spawn(progress::render(rx, shown_as));
    let embedded = std::sync::Arc::new(std::sync::Mutex::new(progress::model::Embedded::default()));
    let (tx, engine_rx) = kiln_engine::progress::channel();
    let transfers = std::sync::Arc::new(progress::internal::Transfers::default());
    let forward = tokio::spawn(progress::forward_engine(
        engine_rx,
        embedded.clone(),
        transfers.clone(),
        shown.clone(),
    ));
    let local_context = local_source.is_some() && prepared.remote.is_none();
    let source = match local_source {
        // kilnd's steps before it plans, with what its fetches of the
        // same files from this client would take. A remote context's
        // Dockerfile comes with the context's own step instead.
        Some(s) => {
            let steps = progress::internal::definition_step(
                &mut embedded.lock().unwrap_or_else(|p| p.into_inner()),
                &opts,
                df_dir,
            );
            for u in steps {
                let _ = shown.send(u).await;
            }
            // The client's Dockerfile beside a remote context: the
            // context is fetched only to learn whether it is an archive.
            if prepared.remote.is_some() {
                let settled = remote_step(
                    &engine,
                    &mut opts,
                    &embedded,
                    &shown,
                    credentials.clone(),
                    secrets.clone(),
                    ssh.clone(),
                    None,
                )
                .await;
                if let Err(e) = settled {
                    drop(tx);
                    let _ = forward.await;
                    drop(shown);
                    let _ = display.await;
                    return Err(e.into());
                }
            }
            s
        }
        None => {
            let fetched = remote_dockerfile(
                &engine,
                &mut opts,
                &embedded,
                &shown,
                credentials.clone(),
                secrets.clone(),
                ssh.clone(),
            )
            .await;
            // A policy file in the fetched context, as buildx reads one.
            let fetched =
                fetched
                    .map_err(anyhow::Error::from)
                    .and_then(|s| match s.policy_file.as_deref() {
                        Some(f) if !args.policy.iter().any(|p| policy_disabled(p)) => Err(
                            policy_not_supported(&format!("{}: {f}", args.context.display())),
                        ),
                        _ => Ok(s),
                    });
            match fetched {
                Ok(s) => s,
                Err(e) => {
                    drop(tx);
                    let _ = forward.await;
                    drop(shown);
                    let _ = display.await;
                    return Err(e);
                }
            }
        }
    };
    // Named contexts' ignore files are read before anything is planned,
    // as kilnd reads them.
    for e in progress::internal::named_ignore_steps(&named_ignores) {
        tx.send(e).await;
    }
    // A SOURCE_DATE_EPOCH naming a source: its time, fetched first.
    let epoch = {
        let fetch = kiln_frontend::remote::Fetch {
            engine: &engine,
            credentials: credentials.clone(),
            secrets: secrets.clone(),
            ssh: ssh.clone(),
            uploads: kiln_engine::uploads::none(),
            progress: tx.clone(),
            cancel: CancellationToken::new(),
        };
        kiln_frontend::epoch::resolve(&fetch, &source, &mut opts).await
    };
    let oci_stores = oci_stores(&args)?;
    let images = engine
        .base_images(opts.resolve_mode, credentials.clone())
        .with_oci_stores(oci_stores.clone())
        .with_progress(tx.clone());
    // Every platform of `--platform a,b` is planned; one graph holds them.
    let multi = kiln_frontend::is_multi_platform(&opts);
    let resolved = match epoch {
        Ok(()) => kiln_frontend::resolve_all(&source, &opts, &images).await,
        Err(e) => Err(e),
    };
    let all = match resolved {
        Ok(bases) => {
            // A remote context's ignore file came with the context.
            if local_context {
                for e in progress::internal::ignore_step(&opts, df_dir, &context) {
                    tx.send(e).await;
                }
            }
            kiln_frontend::finish_all(&source, &opts, &bases).await
        }
        Err(e) => Err(e),
    };
    let planned = match all {
        Ok(all) if multi => {
            let warnings = all.first().map(|(_, b)| b.warnings.clone());
            kiln_frontend::merge_platforms(all).map(|(graph, targets)| {
                let first = &targets[0];
                let built = kiln_dockerfile::Build {
                    graph,
                    result: first.result,
                    config: first.config.clone(),
                    stages_built: Vec::new(),
                    warnings: warnings.unwrap_or_default(),
                    // Checked per platform, before the merge.
                    context_reads: Vec::new(),
                };
                (built, targets)
            })
        }
        Ok(mut all) => Ok((all.swap_remove(0).1, Vec::new())),
        Err(e) => Err(e),
    };
    let pinned = images.pinned();
    drop(images);
    let namespace = engine.services().namespace.clone();
    // The build checks BuildKit's parser ran before a Dockerfile failed to
    // parse, printed with the failure.
    let mut failed_warnings = Vec::new();
    let checked = match planned {
        // The exec op carries no security mode, so none asks for
        // security.insecure.
        Ok((b, targets)) => granted
            .check_graph(&b.graph)
            .map(|()| (b, targets))
            .map_err(anyhow::Error::from),
        Err(e) => {
            let hint = base_image_hint(&e, &namespace);
            // A Dockerfile error about one line gets buildx's snippet of it.
            failed_warnings = source.failure_warnings(&opts, &e);
            let at = e.line();
            let e = anyhow::Error::from(e);
            let e = match hint {
                Some(h) => e.context(h),
                None => e,
            };
            Err(match at {
                Some(line) => progress::SolveFailed {
                    message: format!("{e:#}"),
                    sources: vec![line_source(
                        &source,
                        kiln_dockerfile::snippet::instruction_lines(&source.text, line),
                    )],
                }
                .into(),
                None => e,
            })
        }
    };
    let (mut built, mut targets) = match checked {
        Ok(b) => b,
        Err(e) => {
            drop(tx);
            let _ = forward.await;
            drop(shown);
            let _ = display.await;
            if !report.quiet {
                let shown: Vec<String> = failed_warnings.iter().map(|w| w.to_string()).collect();
                print_warnings(&shown);
            }
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
    transfers.start(&built.graph, &locals);
    // The exporter's own epoch, in place of the frontend's (as kilnd's
    // `export::image_format`).
    if let Some(epoch) = out.epoch {
        built.config.source_date_epoch = Some(epoch);
        for t in &mut targets {
            t.config.source_date_epoch = Some(epoch);
        }
    }
    let req = BuildRequest {
        graph: built.graph,
        result: built.result,
        config: built.config,
        locals,
        oci_stores,
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
        uploads: kiln_engine::uploads::none(),
        rewrite_timestamp: out.rewrite_timestamp,
        // Embedded builds always export an image.
        export_blobs: !out.rewrite_timestamp,
        annotations: out.annotations.clone(),
        media_types: out.media_types,
        force_compression: out.force_compression,
        compression_level: out.level,
    };

    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("\ncancelling build...");
            on_signal.cancel();
        }
    });
    let result = if multi {
        engine.build_index(req, targets, tx.clone(), cancel).await
    } else {
        engine.build(req, tx.clone(), cancel).await
    };
    drop(tx);
    // Once more at the end: a kiln killed while its lease request was in
    // flight leaves a lease that containerd may commit only after this
    // build's first sweep (seen on a loaded machine: a kill 30 ms after
    // start). What such a sweep cannot do costs nothing but a warning.
    if let Err(e) = engine.sweep().await {
        tracing::warn!(error = %e, "cannot clean up after dead builds");
    }
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
                let names: Vec<&str> = r.names.iter().map(String::as_str).collect();
                let mut u = vec![e.item("exporting layers", 0, since, now)];
                for i in kiln_engine::progress::image_export_items(
                    &r.manifest_digest,
                    Some(&r.config_digest),
                    &r.children,
                    &names,
                ) {
                    u.push(e.item(&i, 0, now, now));
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
    warn_no_output(&args);
    drop(prepared);
    if !report.quiet {
        print_warnings(&warnings);
    }
    let result = match result {
        Ok(r) => r,
        Err(e) => {
            // The failed steps' Dockerfile lines, for the snippet.
            let sources = trace
                .failed()
                .iter()
                .filter_map(|v| digests.iter().position(|d| *d == v.vertex.digest))
                .filter_map(|i| locations.get(i).cloned().flatten())
                .map(|l| line_source(&source, (l.line, l.end_line)))
                .collect();
            trace.updated.clear();
            return Err(progress::SolveFailed {
                message: e.to_string(),
                sources,
            }
            .into());
        }
    };
    report.report(&results::embedded_response(&result))
}

/// Lines of the Dockerfile (first and last) as the source of an error,
/// for its snippet.
fn line_source(
    source: &kiln_frontend::DockerfileSource,
    (line, end_line): (usize, usize),
) -> progress::model::Source {
    let line = i32::try_from(line).unwrap_or(i32::MAX);
    let end_line = i32::try_from(end_line).unwrap_or(line).max(line);
    progress::model::Source {
        filename: source.filename.clone(),
        data: source.text.clone().into_bytes(),
        language: "Dockerfile".into(),
        ranges: vec![progress::model::Range {
            start: (line, 0),
            end: (end_line, 0),
        }],
    }
}

/// Fetches a git or HTTP main context with the engine and reads the
/// Dockerfile from it, shown as one step named as BuildKit names the
/// context's source.
async fn remote_dockerfile(
    engine: &Engine,
    opts: &mut kiln_frontend::FrontendOptions,
    embedded: &std::sync::Mutex<progress::model::Embedded>,
    shown: &tokio::sync::mpsc::Sender<progress::model::SolveStatus>,
    credentials: std::sync::Arc<dyn kiln_registry::Credentials>,
    secrets: std::sync::Arc<dyn kiln_engine::secrets::SecretSource>,
    ssh: std::sync::Arc<dyn kiln_engine::ssh::SshSource>,
) -> std::result::Result<kiln_frontend::DockerfileSource, kiln_frontend::FrontendError> {
    let mut source = None;
    remote_step(
        engine,
        opts,
        embedded,
        shown,
        credentials,
        secrets,
        ssh,
        Some(&mut source),
    )
    .await?;
    source.ok_or_else(|| kiln_frontend::FrontendError::Unsupported {
        what: "a remote context without a Dockerfile read".into(),
    })
}

/// The fetch of a remote main context as one step: with `read`, the
/// Dockerfile read from it; without, only whether an HTTP context is an
/// archive (the Dockerfile is the client's).
#[allow(clippy::too_many_arguments)]
async fn remote_step(
    engine: &Engine,
    opts: &mut kiln_frontend::FrontendOptions,
    embedded: &std::sync::Mutex<progress::model::Embedded>,
    shown: &tokio::sync::mpsc::Sender<progress::model::SolveStatus>,
    credentials: std::sync::Arc<dyn kiln_registry::Credentials>,
    secrets: std::sync::Arc<dyn kiln_engine::secrets::SecretSource>,
    ssh: std::sync::Arc<dyn kiln_engine::ssh::SshSource>,
    read: Option<&mut Option<kiln_frontend::DockerfileSource>>,
) -> std::result::Result<(), kiln_frontend::FrontendError> {
    let name = opts
        .remote_context
        .as_ref()
        .map(|r| r.vertex_name())
        .unwrap_or_default();
    let begin = embedded
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .begin(&name, std::time::SystemTime::now());
    let _ = shown.send(begin).await;
    let (tx, mut rx) = kiln_engine::progress::channel();
    // The fetch's own events are summed up in the one step.
    let drain = tokio::spawn(async move { while rx.recv().await.is_some() {} });
    let fetch = kiln_frontend::remote::Fetch {
        engine,
        credentials,
        secrets,
        ssh,
        uploads: kiln_engine::uploads::none(),
        progress: tx,
        cancel: CancellationToken::new(),
    };
    let r = match read {
        Some(out) => kiln_frontend::remote::load_dockerfile(&fetch, opts)
            .await
            .map(|s| *out = Some(s)),
        None => kiln_frontend::remote::settle_context(&fetch, opts).await,
    };
    drop(fetch);
    let _ = drain.await;
    let end = embedded.lock().unwrap_or_else(|p| p.into_inner()).close(
        std::time::SystemTime::now(),
        r.as_ref().err().map(|e| e.to_string()),
    );
    let _ = shown.send(end).await;
    r
}

/// What to do when a base image can be neither found in the store nor
/// pulled: put it there first (kiln never needs a registry for an image
/// the store has).
fn base_image_hint(e: &kiln_frontend::FrontendError, namespace: &str) -> Option<String> {
    use kiln_engine::WorkerError as W;
    let w = match e {
        kiln_frontend::FrontendError::Image(w) => w,
        kiln_frontend::FrontendError::BaseImage { error, .. } => error.as_ref(),
        _ => return None,
    };
    let image = match w {
        W::ImageNotFound { image, .. }
        | W::Registry { image, .. }
        | W::ManifestUnknown { image, .. }
        | W::Pull { image, .. } => image,
        _ => return None,
    };
    Some(format!(
        "base image {image} is not in containerd namespace {namespace:?} and could not be pulled; \
         pull it (`ctr -n {namespace} images pull {image}`), import it \
         (`ctr -n {namespace} images import IMAGE.tar`) or make one from a directory \
         (`kiln --namespace {namespace} import-rootfs --name {image} DIR`), then build again"
    ))
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
        let attrs = frontend_attrs(
            &args,
            std::path::Path::new("/abs/ctx/app.Dockerfile"),
            None,
            false,
        )
        .expect("attrs");
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
        let attrs = frontend_attrs(&all, std::path::Path::new("/c/Dockerfile"), None, false)
            .expect("attrs");
        assert_eq!(attrs.get("no-cache").map(String::as_str), Some(""));
        let bad = build_args(&["--label", "novalue", "ctx"]);
        let e = frontend_attrs(&bad, std::path::Path::new("/c/Dockerfile"), None, false)
            .expect_err("bad label");
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
                false,
                &[],
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
        assert!(
            out(&["type=image,rewrite-timestamp=true"], false)
                .expect("rewrite")
                .rewrite_timestamp
        );
        assert!(
            !out(&["type=image,rewrite-timestamp=false"], false)
                .expect("no rewrite")
                .rewrite_timestamp
        );
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
            "non-bool value specified for push: strconv.ParseBool: parsing \"maybe\": invalid syntax"
        );
        assert!(build_args(&["--push", "-t", "r/x:1", "ctx"]).push);
    }

    #[test]
    fn push_flag_marks_the_image_output_for_a_daemon() {
        let specs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let get = |m: &HashMap<String, String>, k: &str| m.get(k).cloned();
        // No output: an image output that pushes.
        let o = remote_outputs(&[], true, false, &[]).expect("outputs");
        assert_eq!(o.len(), 1);
        assert_eq!(get(&o[0], "type").as_deref(), Some("image"));
        assert_eq!(get(&o[0], "push").as_deref(), Some("true"));
        // A local output alone gets an image output besides it.
        let o =
            remote_outputs(&specs(&["type=local,dest=out"]), true, false, &[]).expect("outputs");
        assert_eq!(o.len(), 2);
        assert_eq!(get(&o[0], "push"), None);
        assert_eq!(get(&o[1], "push").as_deref(), Some("true"));
        // An image output is marked, not duplicated.
        let o =
            remote_outputs(&specs(&["type=image,name=r/x:1"]), true, false, &[]).expect("outputs");
        assert_eq!(o.len(), 1);
        assert_eq!(get(&o[0], "push").as_deref(), Some("true"));
        assert_eq!(get(&o[0], "name").as_deref(), Some("r/x:1"));
        let o =
            remote_outputs(&specs(&["type=image,name=r/x:1"]), false, false, &[]).expect("outputs");
        assert_eq!(get(&o[0], "push"), None);
    }

    #[test]
    fn docker_builds_resource_flags_join_the_resource_entries() {
        let args = build_args(&[
            "-m",
            "64m",
            "--memory-swap",
            "-1",
            "-c",
            "512",
            "--resource",
            "cpu-quota=50000",
            "ctx",
        ]);
        assert_eq!(
            resource_entries(&args),
            [
                "memory=64m",
                "memory-swap=-1",
                "cpu-shares=512",
                "cpu-quota=50000"
            ]
        );
    }

    #[test]
    fn a_policy_file_beside_the_dockerfile_is_refused_unless_disabled() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").expect("write");
        std::fs::write(dir.path().join("other.Dockerfile"), "FROM scratch\n").expect("write");
        let ctx = dir.path().to_str().expect("utf-8");
        let prepare = |args: &BuildArgs| {
            contexts::prepare(&args.context, args.file.as_deref(), &mut std::io::empty())
                .expect("prepare")
        };
        let plain = build_args(&[ctx]);
        refuse_policy_file(&plain, &prepare(&plain)).expect("no policy file yet");
        std::fs::write(dir.path().join("Dockerfile.rego"), "package docker\n").expect("write");
        let e = refuse_policy_file(&plain, &prepare(&plain)).expect_err("a policy file");
        assert_eq!(
            e.to_string(),
            format!(
                "{}: build policies are not supported yet (--policy disabled=true builds without it)",
                dir.path().join("Dockerfile.rego").display()
            )
        );
        let off = build_args(&["--policy", "disabled=true", ctx]);
        refuse_policy_file(&off, &prepare(&off)).expect("disabled");
        // The file goes with the Dockerfile's own name.
        let other_file = dir.path().join("other.Dockerfile");
        let other_path = other_file.to_str().expect("utf-8");
        let other = build_args(&["-f", other_path, ctx]);
        refuse_policy_file(&other, &prepare(&other)).expect("other.Dockerfile has none");
        std::fs::write(dir.path().join("other.Dockerfile.rego"), "package docker\n")
            .expect("write");
        assert!(refuse_policy_file(&other, &prepare(&other)).is_err());
    }

    #[test]
    fn buildx_flags_not_built_yet_are_refused_by_name() {
        let refused = [
            (
                vec!["--call", "describe"],
                "--call=describe is not supported yet (build, check, outline, targets, subrequests.describe)",
            ),
            (vec!["--sbom", "true"], "--sbom=true is not supported yet"),
            (
                vec!["--provenance", "mode=max"],
                "--provenance=mode=max is not supported yet",
            ),
            (
                vec!["--attest", "type=sbom"],
                "--attest type=sbom is not supported yet",
            ),
            (
                vec!["--cgroup-parent", "x"],
                "--cgroup-parent is not supported yet",
            ),
            (
                vec!["--policy", "filename=p.rego"],
                "--policy filename=p.rego is not supported yet",
            ),
            (
                vec!["-q", "--progress", "plain"],
                "progress=plain and quiet cannot be used together",
            ),
        ];
        for (flags, want) in refused {
            let mut argv = flags.clone();
            argv.push("ctx");
            let e = refuse_unsupported(&build_args(&argv)).expect_err(want);
            assert_eq!(e.to_string(), want, "{flags:?}");
        }
        // Embedded and through a daemon alike.
        let accepted: [&[&str]; 13] = [
            &["--call", "build"],
            &["--policy", "disabled=true"],
            &["--call", "check"],
            &["--check"],
            &["--call", "outline,format=json"],
            &["--call", "targets"],
            &["--sbom", "false"],
            &["--provenance", "0"],
            &["--attest", "type=provenance,disabled=true"],
            &["--network", "default"],
            &["--load"],
            &["-q", "--iidfile", "id", "--metadata-file", "md.json"],
            &["--progress", "quiet"],
        ];
        for flags in accepted {
            let mut argv = flags.to_vec();
            argv.push("ctx");
            refuse_unsupported(&build_args(&argv)).unwrap_or_else(|e| panic!("{flags:?}: {e}"));
        }
        let q = build_args(&["--progress", "quiet", "ctx"]);
        assert!(reporting(&q).quiet);
        assert_eq!(progress_mode(&q).expect("mode"), progress::Mode::Quiet);
        let q = build_args(&["-q", "ctx"]);
        assert!(reporting(&q).quiet);
        assert_eq!(progress_mode(&q).expect("mode"), progress::Mode::Quiet);
    }

    /// docker build's legacy flags parse as buildx parses them (hidden,
    /// `--rm=false` too) and each is warned about; `--print` is `--call`.
    #[test]
    fn docker_builds_legacy_flags_are_accepted_with_a_warning() {
        let none = build_args(&["ctx"]);
        assert!(legacy_flag_warnings(&none).is_empty());
        for (flags, want) in [
            (&["--rm"][..], "--rm and --force-rm have no effect"),
            (&["--rm=false"], "--rm and --force-rm have no effect"),
            (&["--force-rm"], "--rm and --force-rm have no effect"),
            (&["--compress"], "--compress has no effect"),
            (&["--isolation", "default"], "isolation flag is deprecated"),
            (
                &["--security-opt", "seccomp=unconfined"],
                "security-opt flag is deprecated",
            ),
            (&["--squash"], "experimental flag squash is removed"),
        ] {
            let mut argv = flags.to_vec();
            argv.push("ctx");
            let args = build_args(&argv);
            refuse_unsupported(&args).unwrap_or_else(|e| panic!("{flags:?}: {e}"));
            let warned = legacy_flag_warnings(&args);
            assert!(
                warned.len() == 1 && warned[0].starts_with(want),
                "{flags:?}: {warned:?}"
            );
        }
        let printed = build_args(&["--print", "targets", "ctx"]);
        assert_eq!(
            call(&printed).expect("call"),
            ("targets".to_string(), false)
        );
        let help = {
            use clap::CommandFactory;
            Cli::command()
                .find_subcommand_mut("build")
                .expect("build")
                .render_help()
                .to_string()
        };
        assert!(
            !help.contains("--squash") && !help.contains("--rm"),
            "{help}"
        );
    }

    #[test]
    fn completion_and_man_pages_come_from_the_flags() {
        use clap::CommandFactory;
        let mut buf = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "kiln",
            &mut buf,
        );
        let bash = String::from_utf8(buf).expect("utf8");
        assert!(bash.contains("--metadata-file") && bash.contains("--iidfile"));
        let dir = tempfile::tempdir().expect("dir");
        clap_mangen::generate_to(Cli::command(), dir.path()).expect("man");
        let page = std::fs::read_to_string(dir.path().join("kiln-build.1")).expect("kiln-build.1");
        assert!(page.contains("iidfile"), "{page}");
    }

    #[test]
    fn an_oci_layout_context_is_a_store_with_its_tag_resolved_as_buildx_does() {
        let dir = tempfile::tempdir().expect("tempdir");
        let digest = format!("sha256:{}", "c".repeat(64));
        std::fs::write(
            dir.path().join("index.json"),
            format!(r#"{{"manifests":[{{"digest":"{digest}","annotations":{{"org.opencontainers.image.ref.name":"v1"}}}}]}}"#),
        )
        .expect("index.json");
        let path = dir.path().display().to_string();
        let l = oci_layout("base", &format!("oci-layout://{path}:v1"))
            .expect("resolves")
            .expect("a layout");
        assert_eq!(l.dir, dir.path().canonicalize().expect("canonical"));
        assert_eq!(l.attr, format!("oci-layout://{}:v1@{digest}", l.store));
        // The same directory is the same store; a digest needs no lookup.
        let pinned = format!("sha256:{}", "d".repeat(64));
        let p = oci_layout("base", &format!("oci-layout://{path}@{pinned}"))
            .expect("pinned")
            .expect("a layout");
        assert_eq!(p.attr, format!("oci-layout://{}@{pinned}", l.store));
        assert!(oci_layout("base", "docker-image://busybox")
            .expect("not a layout")
            .is_none());
        let e = oci_layout("base", "oci-layout:///nonexistent/layout")
            .err()
            .expect("missing");
        assert!(
            e.to_string()
                .contains("build context base=oci-layout:///nonexistent/layout"),
            "{e}"
        );
    }
}
