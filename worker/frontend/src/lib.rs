//! The Dockerfile frontend path, from "context + Dockerfile + options" to
//! the build graph, shared by the CLI's embedded mode and kilnd's
//! `dockerfile.v0` frontend.
//!
//! Both callers go through the same three steps, so the rules a user sees
//! (which options exist, which ignore file wins, which platform is built)
//! have one implementation:
//! 1. [`FrontendOptions::from_attrs`] reads BuildKit's frontend attributes
//!    (`filename`, `target`, `build-arg:K`, `label:K`, `no-cache`, ...). The
//!    CLI turns its flags into the same map buildctl would send, and an
//!    attribute kiln does not implement fails here, before anything runs.
//! 2. [`read_dockerfile`] reads the Dockerfile and its ignore file from
//!    directories: `<filename>.dockerignore` next to the Dockerfile first,
//!    else the context's `.dockerignore`. kilnd fetches exactly these files
//!    through the session into its job directories first.
//! 3. [`plan`] resolves the base images' configs through [`ImageConfigs`]
//!    (the engine, or a fake in tests) and emits the graph. Before it,
//!    [`epoch::resolve`] dates a `SOURCE_DATE_EPOCH` that names a source
//!    (it needs the engine to fetch that source).
//!
//! This crate exists because step 2 does file IO, which `kiln-dockerfile`
//! must not do; it holds no gRPC and no CLI flags.

use kiln_dockerfile::directives::CheckConfig;
use kiln_dockerfile::{BuildOptions, NamedContext, OciLayoutRef, ParseError};
use kiln_engine::resolve::ResolveMode;
use kiln_engine::WorkerError;
use kiln_solver::ImageConfig;
use kiln_types::process::{HostIp, Ulimit};
use kiln_types::ErrorKind;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};

/// The name of the main build context: the graph reads it as
/// `local://context`, and callers map it to the context directory.
pub const CONTEXT_NAME: &str = "context";
/// The Dockerfile's default name.
pub const DEFAULT_FILENAME: &str = "Dockerfile";
/// The context's ignore file, used when the Dockerfile has none of its own.
pub const CONTEXT_IGNORE_FILE: &str = ".dockerignore";

/// Errors of the frontend path. Base image failures keep the engine's
/// error (and its kind) unchanged.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// A frontend attribute kiln does not implement.
    #[error("frontend option {key:?} is not supported by kiln")]
    UnsupportedAttribute { key: String },
    /// `context:NAME` / `--build-context NAME=...` with a kind of value
    /// kiln does not implement (an OCI layout, a git or HTTP source, a
    /// gateway input, another target's result).
    #[error("named build context {name}={value:?} is not supported yet")]
    NamedContext { name: String, value: String },
    /// A valid option or build argument whose effect kiln does not
    /// implement yet (another platform, `BUILDKIT_MULTI_PLATFORM`, ...).
    #[error("{what} is not supported yet")]
    Unsupported { what: String },
    /// `BUILDKIT_DOCKERFILE_CHECK` does not parse (BuildKit's text).
    #[error("failed to parse build-arg:BUILDKIT_DOCKERFILE_CHECK: {message}")]
    CheckArg { message: String },
    /// One platform of the `platform` attribute does not parse (BuildKit's
    /// text, containerd's reason).
    #[error("failed to parse target platform {}: {reason}", reason.specifier())]
    TargetPlatform { reason: kiln_solver::PlatformError },
    /// A supported attribute with a value kiln cannot use.
    #[error("invalid frontend option {key}={value:?}: {reason}")]
    InvalidAttribute {
        key: String,
        value: String,
        reason: String,
    },
    /// A cgroup limit attribute (`memory`, `cpuquota`, ...) kiln cannot
    /// use (BuildKit's text).
    #[error(transparent)]
    Resource(#[from] kiln_types::process::ProcessOptError),
    /// The Dockerfile is not there.
    #[error("failed to read dockerfile: open {filename}: no such file or directory")]
    DockerfileNotFound { filename: String },
    /// The Dockerfile or an ignore file is not a regular file, or is
    /// larger than [`MAX_DEFINITION_FILE`].
    #[error("cannot read {name}: {reason}")]
    BadFile { name: String, reason: String },
    /// Reading the Dockerfile or an ignore file failed otherwise.
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The time of the source `SOURCE_DATE_EPOCH` names could not be read
    /// from what was fetched.
    #[error("{name}: {reason}")]
    SourceEpoch { name: String, reason: String },
    /// The Dockerfile does not parse or convert.
    #[error(transparent)]
    Dockerfile(#[from] ParseError),
    /// Loading an image failed.
    #[error(transparent)]
    Image(#[from] WorkerError),
    /// Resolving a base image failed, worded as BuildKit's; with BuildKit's
    /// "did you mean" hint when its name is close to a stage's (or a
    /// common image's).
    #[error(
        "{}failed to resolve source metadata for {image}: {error}{}",
        name.as_ref().map(|n| format!("{n}: ")).unwrap_or_default(),
        hint.as_ref().map(|h| format!(" (did you mean {h}?)")).unwrap_or_default()
    )]
    BaseImage {
        /// The `FROM` (or `--from`) word, when one names the image.
        name: Option<String>,
        /// The line of the instruction that names it.
        line: Option<usize>,
        image: String,
        error: Box<WorkerError>,
        hint: Option<String>,
    },
}

impl FrontendError {
    /// The Dockerfile line the error is about, if one: where BuildKit's
    /// error points (its source detail, the snippet clients print).
    pub fn line(&self) -> Option<usize> {
        match self {
            FrontendError::Dockerfile(p) => p.line(),
            FrontendError::BaseImage { line, .. } => *line,
            _ => None,
        }
    }

    /// The error's kind, for the daemon's gRPC status.
    pub fn kind(&self) -> ErrorKind {
        match self {
            FrontendError::UnsupportedAttribute { .. }
            | FrontendError::NamedContext { .. }
            | FrontendError::Unsupported { .. } => ErrorKind::Unimplemented,
            FrontendError::TargetPlatform {
                reason: kiln_solver::PlatformError::OsOptions { .. },
            } => ErrorKind::Unimplemented,
            FrontendError::InvalidAttribute { .. }
            | FrontendError::TargetPlatform { .. }
            | FrontendError::CheckArg { .. }
            | FrontendError::Resource(_)
            | FrontendError::Dockerfile(_) => ErrorKind::InvalidArgument,
            FrontendError::DockerfileNotFound { .. } => ErrorKind::NotFound,
            FrontendError::BadFile { .. } => ErrorKind::InvalidArgument,
            FrontendError::Io { .. } | FrontendError::SourceEpoch { .. } => ErrorKind::Internal,
            FrontendError::Image(e) => e.kind(),
            FrontendError::BaseImage { error, .. } => error.kind(),
        }
    }
}

pub type Result<T, E = FrontendError> = std::result::Result<T, E>;

/// What the frontend attributes ask for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FrontendOptions {
    /// `filename`: the Dockerfile's name in its directory.
    pub filename: String,
    /// `dockerfilekey`: the session's local dir holding the Dockerfile.
    /// Named explicitly, it is read even beside a remote context
    /// (`dockerfile_local`), as BuildKit's dockerui does.
    pub dockerfile_key: String,
    /// `contextkey`: the session's local dir holding the context.
    pub context_key: String,
    /// `target`: the stage to build.
    pub target: Option<String>,
    /// `build-arg:K`.
    pub build_args: BTreeMap<String, String>,
    /// `label:K`.
    pub labels: BTreeMap<String, String>,
    /// `no-cache` with an empty value.
    pub no_cache: bool,
    /// `no-cache` with a list of stages.
    pub no_cache_filter: Vec<String>,
    /// `image-resolve-mode`: when base images are pulled
    /// ([`kiln_engine::resolve`]).
    pub resolve_mode: ResolveMode,
    /// `hostname`, or the `BUILDKIT_SANDBOX_HOSTNAME` build argument
    /// (which wins): the hostname of `RUN` steps.
    pub hostname: String,
    /// `add-hosts` (buildx `--add-host`): extra `/etc/hosts` entries of
    /// `RUN` steps.
    pub extra_hosts: Vec<HostIp>,
    /// `ulimit` (buildx `--ulimit`): resource limits of `RUN` steps.
    pub ulimits: Vec<Ulimit>,
    /// `memory`, `memswap`, `cpushares`, `cpuperiod`, `cpuquota`,
    /// `cpusetcpus`, `cpusetmems` (buildx `--resource`): cgroup limits of
    /// `RUN` steps.
    pub resources: kiln_types::process::Resources,
    /// `shm-size` (buildx `--shm-size`), in bytes; 0 is the default.
    pub shm_size: u64,
    /// `force-network-mode` (buildx's `--network`): `none` or `host`.
    pub force_network: Option<String>,
    /// `context:NAME`: named contexts, keyed by
    /// [`kiln_dockerfile::context_key`]. A `Local` one's `excludes` are
    /// empty until the caller reads its `.dockerignore`
    /// ([`read_context_ignore`]).
    pub named_contexts: BTreeMap<String, NamedContext>,
    /// `input-metadata:NAME`: the image config (JSON) of frontend input
    /// `NAME`, which an `input:NAME` named context starts from as from an
    /// image's (BuildKit's `containerimage.config` of the metadata).
    pub input_configs: BTreeMap<String, Vec<u8>>,
    /// `local-sessionid:NAME`: the client session that serves the local
    /// directory `NAME` when it is not the build's own (buildx shares one
    /// session between the bake targets that read one directory). The
    /// graph's local sources read from it (`local.session`).
    pub local_sessions: BTreeMap<String, String>,
    /// The `BUILDKIT_DOCKERFILE_CHECK` build argument, parsed: when set,
    /// the build checks' configuration instead of the `# check=` directive.
    pub check: Option<CheckConfig>,
    /// `platform`: the platforms to build for, in order; empty is the
    /// worker's own. More than one makes an image index.
    pub platforms: Vec<kiln_solver::Platform>,
    /// `multi-platform` / `BUILDKIT_MULTI_PLATFORM`: an image index even
    /// for one platform.
    pub multi_platform: bool,
    /// `context=<git or http(s) URL>`: the main context is fetched by the
    /// engine instead of read from the client ([`remote`]).
    pub remote_context: Option<remote::RemoteContext>,
    /// `contextsubdir`: the remote context is this directory of the
    /// fetched tree (the Dockerfile is still read from the whole tree), as
    /// BuildKit's dockerui scopes it.
    pub context_subdir: Option<String>,
    /// The Dockerfile comes from the client's `dockerfilekey` directory
    /// even when the context is remote (the attribute was given).
    pub dockerfile_local: bool,
    /// `requestid=frontend.lint`: run the build checks only
    /// ([`check::check`]), over every stage when no target is given.
    pub lint: bool,
    /// `requestid=frontend.targets`: list the stages only
    /// ([`targets::list`]).
    pub targets: bool,
    /// `requestid=frontend.outline`: what the target takes from its
    /// caller only ([`outline::outline`]).
    pub outline: bool,
    /// `requestid=frontend.subrequests.describe`: the subrequests this
    /// frontend answers ([`describe::answer`]).
    pub describe: bool,
    /// The time of the source `SOURCE_DATE_EPOCH` names, once
    /// [`epoch::resolve`] asked the engine for it.
    pub resolved_epoch: Option<kiln_dockerfile::ResolvedEpoch>,
}

impl Default for FrontendOptions {
    fn default() -> Self {
        FrontendOptions {
            filename: DEFAULT_FILENAME.to_string(),
            dockerfile_key: "dockerfile".to_string(),
            context_key: CONTEXT_NAME.to_string(),
            target: None,
            build_args: BTreeMap::new(),
            labels: BTreeMap::new(),
            no_cache: false,
            no_cache_filter: Vec::new(),
            resolve_mode: ResolveMode::Default,
            hostname: String::new(),
            extra_hosts: Vec::new(),
            ulimits: Vec::new(),
            resources: Default::default(),
            shm_size: 0,
            force_network: None,
            named_contexts: BTreeMap::new(),
            check: None,
            platforms: Vec::new(),
            multi_platform: false,
            remote_context: None,
            context_subdir: None,
            dockerfile_local: false,
            input_configs: BTreeMap::new(),
            local_sessions: BTreeMap::new(),
            lint: false,
            targets: false,
            outline: false,
            describe: false,
            resolved_epoch: None,
        }
    }
}

impl FrontendOptions {
    /// Whether the `BUILDKIT_SYNTAX` build argument names the frontend
    /// (only BuildKit's Dockerfile frontend gets this far, see
    /// `check_buildkit_args`): the file's `# syntax=` directive is then
    /// not used.
    pub fn syntax_arg(&self) -> bool {
        self.build_args
            .get("BUILDKIT_SYNTAX")
            .is_some_and(|v| !v.is_empty())
    }

    /// Reads BuildKit's `dockerfile.v0` frontend attributes. Every key
    /// must be one kiln implements: anything else fails naming the key,
    /// so no option is silently ignored.
    pub fn from_attrs(attrs: &HashMap<String, String>) -> Result<FrontendOptions> {
        let mut opts = FrontendOptions::default();
        // Sorted, so the first unsupported key reported does not depend on
        // hash order.
        let sorted: BTreeMap<&str, &str> = attrs
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        for (key, value) in sorted {
            if let Some(name) = key.strip_prefix("build-arg:") {
                opts.build_args.insert(name.to_string(), value.to_string());
            } else if let Some(name) = key.strip_prefix("label:") {
                opts.labels.insert(name.to_string(), value.to_string());
            } else if key.starts_with("vcs:") {
                // buildx sends the context's git source, revision and
                // directories (`vcs:source`, `vcs:revision`,
                // `vcs:localdir:NAME`) whenever the context is a git
                // checkout. BuildKit records them only in provenance
                // attestations, which kiln does not make and does not
                // advertise (so buildx never asks for one): they cannot
                // change the image, so accepting them ignores nothing.
            } else if key.starts_with("sharedkey:localdir:") {
                // buildx names the client directory behind each local
                // named context, so BuildKit can share its transfer cache
                // between builds; it cannot change the image.
            } else if let Some(name) = key.strip_prefix("context:") {
                let (key, ctx) = named_context(name, value)?;
                opts.named_contexts.insert(key, ctx);
            } else if let Some(name) = key.strip_prefix("local-sessionid:") {
                if !value.is_empty() {
                    opts.local_sessions
                        .insert(name.to_string(), value.to_string());
                }
            } else if let Some(name) = key.strip_prefix("input-metadata:") {
                if let Some(config) = input_config(key, value)? {
                    opts.input_configs.insert(name.to_string(), config);
                }
            } else {
                match key {
                    "filename" if !value.is_empty() => opts.filename = check_filename(value)?,
                    "dockerfilekey" if !value.is_empty() => {
                        opts.dockerfile_key = value.to_string();
                        opts.dockerfile_local = true;
                    }
                    "contextkey" if !value.is_empty() => opts.context_key = value.to_string(),
                    "filename" | "dockerfilekey" | "contextkey" => {}
                    "target" => {
                        opts.target = Some(value.to_string()).filter(|t| !t.is_empty());
                    }
                    "no-cache" if value.is_empty() => opts.no_cache = true,
                    "no-cache" => {
                        opts.no_cache_filter = value
                            .split(',')
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty())
                            .collect();
                    }
                    "platform" => opts.platforms = parse_platforms(value)?,
                    "hostname" => opts.hostname = value.to_string(),
                    "add-hosts" => {
                        opts.extra_hosts = csv_fields(value)
                            .map(|f| HostIp::parse(f).map_err(|e| invalid(key, value, e)))
                            .collect::<Result<_>>()?;
                    }
                    "ulimit" => {
                        opts.ulimits = csv_fields(value)
                            .map(|f| Ulimit::parse(f).map_err(|e| invalid(key, value, e)))
                            .collect::<Result<_>>()?;
                    }
                    // buildx's `--network`: BuildKit's modes for every RUN
                    // without `--network` (`sandbox` is the default).
                    "force-network-mode" => {
                        opts.force_network = match value {
                            "" | "sandbox" | "default" => None,
                            "none" | "host" => Some(value.to_string()),
                            _ => {
                                return Err(invalid(
                                    key,
                                    value,
                                    "expected none, host or sandbox".to_string(),
                                ))
                            }
                        }
                    }
                    _ if kiln_types::process::RESOURCE_ATTRS.contains(&key) => {
                        opts.resources.set_attr(key, value)?
                    }
                    "shm-size" if value.is_empty() => opts.shm_size = 0,
                    // Bytes, as Go's ParseInt reads them (BuildKit's text).
                    "shm-size" => {
                        opts.shm_size = value.parse::<i64>().ok().and_then(|n| u64::try_from(n.max(0)).ok()).ok_or_else(|| {
                            let why = match value.parse::<i64>().map_err(|e| *e.kind()) {
                                Err(std::num::IntErrorKind::PosOverflow | std::num::IntErrorKind::NegOverflow) => "value out of range",
                                _ => "invalid syntax",
                            };
                            invalid(
                                key,
                                value,
                                format!("failed to parse shm size: strconv.ParseInt: parsing {value:?}: {why}"),
                            )
                        })?;
                    }
                    "multi-platform" => opts.multi_platform = multi_platform(key, value)?,
                    "frontend.caps" => check_frontend_caps(value)?,
                    // The main context from a URL (buildctl `--opt
                    // context=…`, buildx and `kiln build <URL>`).
                    "context" => {
                        opts.remote_context = Some(remote::RemoteContext::parse(key, value)?)
                    }
                    "contextsubdir" => opts.context_subdir = remote::context_subdir(value),
                    // buildx's --check and --call: the lint, targets and
                    // outline subrequests instead of a build; others are
                    // refused by name.
                    "requestid" => match check::request(value)? {
                        check::Subrequest::Lint => opts.lint = true,
                        check::Subrequest::Targets => opts.targets = true,
                        check::Subrequest::Outline => opts.outline = true,
                        check::Subrequest::Describe => opts.describe = true,
                        check::Subrequest::None => {}
                    },
                    "image-resolve-mode" => opts.resolve_mode = resolve_mode(value)?,
                    // buildctl repeats the Solve request's cache imports
                    // here (JSON); kilnd reads and checks them with the
                    // request's (`cache` in kilnd's solve), so the frontend
                    // has nothing to do with them.
                    "cache-imports" => {}
                    _ => {
                        return Err(FrontendError::UnsupportedAttribute {
                            key: key.to_string(),
                        })
                    }
                }
            }
        }
        check_buildkit_args(&mut opts)?;
        remote::apply_build_args(&mut opts);
        // BuildKit scopes only a context it fetches (git, HTTP, a frontend
        // input) and passes the client's directory over it unscoped; kiln
        // says so instead.
        if opts.context_subdir.is_some() && opts.remote_context.is_none() {
            return Err(FrontendError::Unsupported {
                what: "contextsubdir with the client's directory as the context (it scopes a \
                       git or HTTP context)"
                    .into(),
            });
        }
        // An input with an image config starts from it, as an image.
        for ctx in opts.named_contexts.values_mut() {
            if let NamedContext::Remote { op, .. } = ctx {
                let with_config = op
                    .identifier
                    .strip_prefix(kiln_dockerfile::INPUT_SCHEME)
                    .is_some_and(|input| opts.input_configs.contains_key(input));
                if with_config {
                    *ctx = NamedContext::Image(op.identifier.clone());
                }
            }
        }
        Ok(opts)
    }
}

/// The image config in an `input-metadata:NAME` value: BuildKit's JSON
/// map of byte strings (base64, as Go encodes `[]byte`), whose
/// `containerimage.config` is the config; `None` without one.
fn input_config(key: &str, value: &str) -> Result<Option<Vec<u8>>> {
    use base64::Engine as _;
    let m: HashMap<String, String> = serde_json::from_str(value)
        .map_err(|e| invalid(key, value, format!("failed to parse input metadata: {e}")))?;
    let Some(b64) = m.get("containerimage.config") else {
        return Ok(None);
    };
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| invalid(key, value, format!("containerimage.config: {e}")))?;
    serde_json::from_slice::<kiln_engine::oci::ImageConfigJson>(&bytes)
        .map_err(|e| invalid(key, value, format!("containerimage.config: {e}")))?;
    Ok(Some(bytes))
}

/// The frontend capabilities kiln's Dockerfile frontend has, of those a
/// client may require with `frontend.caps` (BuildKit's
/// `frontend/dockerfile/builder/caps.go`): named contexts, subrequests
/// (buildx's `--check`; other requests are refused by name) and the git
/// query form (`?ref=&subdir=`, which buildx requires for a git URL with
/// a query).
const FRONTEND_CAPS: &[&str] = &[
    "moby.buildkit.frontend.contexts",
    "moby.buildkit.frontend.subrequests",
    "moby.buildkit.frontend.gitquerystring",
];

/// `frontend.caps`: every capability the client requires must be one kiln
/// has. BuildKit forwards a `+forward` one it lacks to a newer frontend
/// image; kiln runs no frontend image, so that fails too, by name.
fn check_frontend_caps(value: &str) -> Result<()> {
    for cap in csv_fields(value) {
        let name = cap.split('+').next().unwrap_or(cap);
        if !FRONTEND_CAPS.contains(&name) {
            return Err(FrontendError::Unsupported {
                what: format!("frontend capability {name}"),
            });
        }
    }
    Ok(())
}

/// The comma-separated fields of a list attribute (`add-hosts`, `ulimit`).
fn csv_fields(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').filter(|f| !f.is_empty())
}

fn invalid(key: &str, value: &str, reason: impl ToString) -> FrontendError {
    FrontendError::InvalidAttribute {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.to_string(),
    }
}

/// Whether a named context's value is a frontend input (`input:NAME`),
/// which only a client that sends inputs with its solve can use (bake
/// through buildx); a client that sends none refuses it by name with
/// [`FrontendError::NamedContext`] before anything is planned.
pub fn is_input_context(value: &str) -> bool {
    value
        .split_once(':')
        .is_some_and(|(scheme, rest)| scheme == "input" && !rest.is_empty())
}

/// One `context:NAME=VALUE` attribute, as BuildKit's frontend reads it:
/// `local:DIR` (a directory the client serves under that local name),
/// `docker-image://REF` (an image, whose config replaces the base's), a
/// git repository (`git@…`, `git://…`, `https://….git#ref:dir`: its
/// checkout), another `http(s)://` URL (the file alone, named
/// `context`), `oci-layout://STORE@DIGEST` (an image of an OCI layout
/// the client gives the build) or `input:NAME` (a frontend input, which
/// the caller splices in; only kilnd has inputs).
/// `NAME` may end in `::PLATFORM`: the context then stands for the name
/// only in stages built for that platform. The result is keyed by
/// [`kiln_dockerfile::context_key`] (and
/// [`kiln_dockerfile::platform_context_key`]).
fn named_context(name: &str, value: &str) -> Result<(String, NamedContext)> {
    let invalid = |reason: String| FrontendError::InvalidAttribute {
        key: format!("context:{name}"),
        value: value.to_string(),
        reason,
    };
    let unsupported = || FrontendError::NamedContext {
        name: name.to_string(),
        value: value.to_string(),
    };
    let (plain, platform) = match name.split_once("::") {
        Some((n, platform)) => (n, Some(context_platform(platform)?)),
        None => (name, None),
    };
    let Some(key) = kiln_dockerfile::context_key(plain) else {
        return Err(invalid(format!(
            "invalid context name {plain} (a stage name or an image reference, not scratch or context)"
        )));
    };
    let key = match &platform {
        Some(p) => kiln_dockerfile::platform_context_key(&key, p),
        None => key,
    };
    let Some((kind, rest)) = value.split_once(':') else {
        return Err(invalid(format!(
            "invalid context specifier {value} for {name}"
        )));
    };
    // As BuildKit: `git@host:repo` is a git context without a scheme.
    let kind = if kind.starts_with("git@") {
        "git"
    } else {
        kind
    };
    let ctx = match kind {
        "git" | "http" | "https" => remote_context(plain, value).map_err(|e| match e {
            RemoteContext::Invalid(reason) => invalid(reason),
            RemoteContext::Unsupported => unsupported(),
        })?,
        "local" if !rest.is_empty() => NamedContext::Local {
            local: rest.to_string(),
            excludes: Vec::new(),
        },
        "docker-image" => {
            let r = rest.strip_prefix("//").unwrap_or(rest);
            if r == "scratch" {
                NamedContext::Scratch
            } else {
                NamedContext::Image(
                    kiln_dockerfile::reference::normalize(r).map_err(|e| invalid(e.to_string()))?,
                )
            }
        }
        "oci-layout" => NamedContext::OciLayout(oci_layout_context(plain, rest).map_err(invalid)?),
        // A frontend input: its graph replaces the placeholder op
        // (`kiln_dockerfile::INPUT_SCHEME`); with an image config it
        // becomes an image (`FrontendOptions::from_attrs`).
        "input" if !rest.is_empty() => NamedContext::Remote {
            op: kiln_solver::SourceOp {
                identifier: format!("{}{rest}", kiln_dockerfile::INPUT_SCHEME),
                attrs: BTreeMap::new(),
                platform: None,
            },
            name: plain.to_string(),
        },
        _ => return Err(unsupported()),
    };
    Ok((key, ctx))
}

/// The image of an `oci-layout://STORE[:TAG]@DIGEST` named context, as
/// BuildKit's frontend reads it: `STORE` names an OCI layout store the
/// client gives the build (buildx and kiln's CLI resolve a tag to the
/// digest first), and the digest is required.
fn oci_layout_context(name: &str, rest: &str) -> std::result::Result<OciLayoutRef, String> {
    let spec = rest.strip_prefix("//").unwrap_or(rest);
    let (named, digest) = match spec.rsplit_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (spec, None),
    };
    // A `:` after the last `/` is a tag, which the digest makes moot.
    let last_slash = named.rfind('/').map_or(0, |i| i + 1);
    let store = match named[last_slash..].rfind(':') {
        Some(i) => &named[..last_slash + i],
        None => named,
    };
    kiln_dockerfile::reference::normalize(spec)
        .map_err(|e| format!("could not parse oci-layout reference {spec:?}: {e}"))?;
    let Some(digest) = digest else {
        return Err(format!("oci-layout reference {named:?} has no digest"));
    };
    kiln_dockerfile::reference::Reference::parse(name)
        .map_err(|e| format!("could not parse oci-layout reference {name:?}: {e}"))?;
    Ok(OciLayoutRef {
        store: store.to_string(),
        name: name.to_string(),
        digest: digest.to_string(),
    })
}

/// Why a git or HTTP named context cannot be used.
enum RemoteContext {
    Invalid(String),
    /// A git source the engine cannot fetch (it would fail after steps ran).
    Unsupported,
}

/// The source of a git or HTTP named context, as BuildKit's frontend makes
/// it: a git reference is a checkout; another HTTP(S) URL is one file,
/// `context`.
fn remote_context(name: &str, value: &str) -> std::result::Result<NamedContext, RemoteContext> {
    use kiln_solver::source::{GitRef, GitSource, HttpSource};
    let git = GitRef::parse(value).map_err(|e| RemoteContext::Invalid(e.to_string()))?;
    let op = match git {
        Some(g) => {
            let op = GitSource::from_ref(&g).to_op();
            // What the engine would refuse is refused now, before any step.
            GitSource::from_op(&op).map_err(|_| RemoteContext::Unsupported)?;
            op
        }
        None if value.starts_with("http://") || value.starts_with("https://") => HttpSource {
            url: value.to_string(),
            filename: "context".into(),
            ..HttpSource::default()
        }
        .to_op(),
        None => {
            return Err(RemoteContext::Invalid(format!(
                "invalid git context {value}"
            )))
        }
    };
    Ok(NamedContext::Remote {
        op,
        name: name.to_string(),
    })
}

/// `image-resolve-mode` (buildx and nerdctl `--pull`, `--pull=false`):
/// `default`, `pull` or `local`, applied by the engine's one rule.
fn resolve_mode(value: &str) -> Result<ResolveMode> {
    ResolveMode::parse(value).map_err(|_| FrontendError::InvalidAttribute {
        key: kiln_engine::resolve::FRONTEND_ATTR.to_string(),
        value: value.to_string(),
        reason: "expected default, pull or local".to_string(),
    })
}

/// `platform`: a comma-separated list (buildx sends one for a
/// multi-platform build), each parsed and normalized as containerd does.
fn parse_platforms(value: &str) -> Result<Vec<kiln_solver::Platform>> {
    kiln_solver::Platform::parse_list(value, &kiln_engine::oci::worker_platform())
        .map_err(|reason| FrontendError::TargetPlatform { reason })
}

/// The platform of a named context (`context:NAME::PLATFORM`): kiln
/// reads named contexts for the worker's platform only.
/// The platform of a `context:NAME::PLATFORM` attribute, normalized.
fn context_platform(value: &str) -> Result<kiln_solver::Platform> {
    let host = kiln_engine::oci::worker_platform();
    kiln_solver::Platform::parse(value, &host).map_err(|e| FrontendError::InvalidAttribute {
        key: "context".to_string(),
        value: value.to_string(),
        reason: e.to_string(),
    })
}

/// Go's `strconv.ParseBool`, which BuildKit uses for boolean options.
pub(crate) fn parse_go_bool(value: &str) -> Option<bool> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `multi-platform` / `BUILDKIT_MULTI_PLATFORM`: an index even for one
/// platform.
fn multi_platform(key: &str, value: &str) -> Result<bool> {
    parse_go_bool(value).ok_or_else(|| FrontendError::InvalidAttribute {
        key: key.to_string(),
        value: value.to_string(),
        reason: format!("invalid boolean value for multi-platform: {value}"),
    })
}

/// The `BUILDKIT_*` build arguments BuildKit reads as options. The ones
/// kiln implements are used (`BUILDKIT_CACHE_MOUNT_NS` by the converter,
/// `BUILDKIT_SANDBOX_HOSTNAME` here); the ones that only matter to a
/// client (`BUILDKIT_INLINE_CACHE`, read by the CLI) or only name the
/// build (`BUILDKIT_BUILD_NAME`) change nothing; the others would change
/// the result and fail until kiln implements them.
fn check_buildkit_args(opts: &mut FrontendOptions) -> Result<()> {
    let unsupported = |what: String| Err(FrontendError::Unsupported { what });
    let mut hostname = None;
    let mut check = None;
    let mut multi = false;
    for (key, value) in &opts.build_args {
        let on = || parse_go_bool(value).unwrap_or(!value.is_empty());
        match key.as_str() {
            "BUILDKIT_SANDBOX_HOSTNAME" if !value.is_empty() => hostname = Some(value.clone()),
            "BUILDKIT_MULTI_PLATFORM" => {
                multi |= multi_platform(key, value)?;
            }
            "BUILDKIT_SBOM_SCAN_CONTEXT" | "BUILDKIT_SBOM_SCAN_STAGE" if on() => {
                return unsupported(format!("{key}={value} (SBOM attestations)"))
            }
            // BuildKit's own Dockerfile frontend is the language kiln
            // speaks; kilnd runs any other frontend image before this
            // (`frontendimage.rs`), the embedded CLI cannot.
            "BUILDKIT_SYNTAX"
                if !value.is_empty()
                    && !kiln_dockerfile::directives::is_dockerfile_frontend(value) =>
            {
                return unsupported(format!(
                    "{key}={value} (a frontend image) without kilnd (frontend images run only through kilnd: kiln build --addr)"
                ))
            }
            // Replaces the file's `# check=` directive, as in BuildKit.
            "BUILDKIT_DOCKERFILE_CHECK" => {
                check = Some(
                    CheckConfig::parse(value)
                        .map_err(|message| FrontendError::CheckArg { message })?,
                )
            }
            "BUILDKIT_DISABLE_FILEOP" if on() => return Err(FrontendError::InvalidAttribute {
                key: format!("build-arg:{key}"),
                value: value.clone(),
                reason:
                    "support for \"BUILDKIT_DISABLE_FILEOP\" build-arg was removed in BuildKit 0.11"
                        .into(),
            }),
            _ => {}
        }
    }
    if let Some(h) = hostname {
        opts.hostname = h;
    }
    opts.check = check;
    opts.multi_platform |= multi;
    Ok(())
}

/// The Dockerfile's own ignore file: `<filename>.dockerignore`, in the
/// Dockerfile's directory.
pub fn dockerfile_ignore_name(filename: &str) -> String {
    format!("{filename}.dockerignore")
}

/// A Dockerfile and the ignore patterns that apply to its context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DockerfileSource {
    /// The name errors and source locations use.
    pub filename: String,
    pub text: String,
    /// Ignore patterns, as `local.excludepatterns` wants them.
    pub excludes: Vec<String>,
    /// The build policy file beside the Dockerfile
    /// ([`policy_file_name`]), when there is one.
    pub policy_file: Option<String>,
}

/// The build policy buildx enforces by default for the Dockerfile
/// `dockerfile` (a path relative to its directory): `Dockerfile.rego`
/// beside `Dockerfile`.
pub fn policy_file_name(dockerfile: &str) -> String {
    format!("{dockerfile}.rego")
}

impl DockerfileSource {
    /// The Dockerfile parsed as `opts` ask: `BUILDKIT_DOCKERFILE_CHECK` in
    /// place of its `# check=`, and its `# syntax=` unused when
    /// `BUILDKIT_SYNTAX` names the frontend.
    pub fn parse(&self, opts: &FrontendOptions) -> Result<kiln_dockerfile::Dockerfile> {
        Ok(kiln_dockerfile::parse_with(
            &self.text,
            &self.filename,
            opts.check.as_ref(),
            opts.syntax_arg(),
        )?)
    }

    /// The build check warnings BuildKit reports beside `err`, an error
    /// of [`DockerfileSource::parse`] with the same `opts`
    /// ([`kiln_dockerfile::parse_warnings`]).
    pub fn parse_warnings(
        &self,
        opts: &FrontendOptions,
        err: &ParseError,
    ) -> Vec<kiln_dockerfile::parser::Warning> {
        kiln_dockerfile::parse_warnings(
            &self.text,
            &self.filename,
            opts.check.as_ref(),
            opts.syntax_arg(),
            err,
        )
    }
}

impl DockerfileSource {
    /// The build check warnings BuildKit has printed by the time a build
    /// of this Dockerfile fails with `err`: those of the parse or the
    /// conversion that failed ([`DockerfileSource::parse_warnings`]), or,
    /// for a base image that does not resolve, the checks that come
    /// before any stage is converted (for the first target platform).
    pub fn failure_warnings(
        &self,
        opts: &FrontendOptions,
        err: &FrontendError,
    ) -> Vec<kiln_dockerfile::parser::Warning> {
        match err {
            FrontendError::Dockerfile(p) => self.parse_warnings(opts, p),
            FrontendError::BaseImage { .. } => {
                let Ok(df) = self.parse(opts) else {
                    return Vec::new();
                };
                let first = target_platforms(opts).swap_remove(0);
                kiln_dockerfile::checks_before_conversion(
                    &df,
                    &build_options_for(self, opts, &first),
                )
            }
            _ => Vec::new(),
        }
    }
}

/// The largest Dockerfile or ignore file kiln reads: these files come
/// from clients, and a larger one is almost surely not a build definition.
pub const MAX_DEFINITION_FILE: u64 = 16 << 20;

/// `filename` names a file inside the Dockerfile's directory: relative,
/// and no `..` climbs above that directory (`sub/../Dockerfile` is
/// inside, as BuildKit reads it). The name is kept lexically clean
/// (`Dockerfile` for `sub/../Dockerfile`): the client sends the files its
/// follow paths name cleaned, so that is where they are.
fn check_filename(value: &str) -> Result<String> {
    let p = Path::new(value);
    let mut parts: Vec<&std::ffi::OsStr> = Vec::new();
    let mut escapes = p.is_absolute();
    for c in p.components() {
        match c {
            std::path::Component::ParentDir => escapes |= parts.pop().is_none(),
            std::path::Component::Normal(n) => parts.push(n),
            _ => {}
        }
    }
    if escapes || parts.is_empty() {
        return Err(FrontendError::InvalidAttribute {
            key: "filename".to_string(),
            value: value.to_string(),
            reason: "must be a path inside the Dockerfile's directory".to_string(),
        });
    }
    Ok(parts
        .iter()
        .map(|n| n.to_string_lossy())
        .collect::<Vec<_>>()
        .join("/"))
}

/// Reads `filename` from `dockerfile_dir` and the ignore file that applies:
/// `<filename>.dockerignore` next to it if present, else `.dockerignore`
/// in `context_dir`, else none. Every name is resolved beneath its
/// directory with kiln's one clamping resolver (a symlink cannot reach a
/// host file), must be a regular file and at most
/// [`MAX_DEFINITION_FILE`] bytes.
pub fn read_dockerfile(
    dockerfile_dir: &Path,
    filename: &str,
    context_dir: &Path,
) -> Result<DockerfileSource> {
    let text = read_beneath(dockerfile_dir, filename)?.ok_or_else(|| {
        FrontendError::DockerfileNotFound {
            filename: filename.to_string(),
        }
    })?;
    let own = dockerfile_ignore_name(filename);
    let ignore = match read_beneath(dockerfile_dir, &own)? {
        Some(t) => Some((own, t)),
        None => read_beneath(context_dir, CONTEXT_IGNORE_FILE)?
            .map(|t| (CONTEXT_IGNORE_FILE.to_string(), t)),
    };
    let excludes = match ignore {
        None => Vec::new(),
        Some((name, t)) => ignore_patterns(name, &t)?,
    };
    let policy = policy_file_name(filename);
    let policy_file = is_file_beneath(dockerfile_dir, &policy).then_some(policy);
    Ok(DockerfileSource {
        filename: filename.to_string(),
        text,
        excludes,
        policy_file,
    })
}

/// The ignore patterns of a named local context: its own `.dockerignore`
/// (at the top of `dir`), as BuildKit reads it; neither the main
/// context's nor the Dockerfile's ignore file applies to it.
pub fn read_context_ignore(dir: &Path) -> Result<Vec<String>> {
    match read_beneath(dir, CONTEXT_IGNORE_FILE)? {
        Some(text) => ignore_patterns(CONTEXT_IGNORE_FILE.to_string(), &text),
        None => Ok(Vec::new()),
    }
}

/// The patterns of the ignore file `name`, checked: unusable ones are
/// refused here, naming the file, rather than by whichever sender or
/// matcher meets them later.
fn ignore_patterns(name: String, text: &str) -> Result<Vec<String>> {
    let excludes = kiln_context::ignore::parse_dockerignore(text);
    kiln_context::ignore::PatternMatcher::new(&excludes).map_err(|e| FrontendError::BadFile {
        name,
        reason: e.to_string(),
    })?;
    Ok(excludes)
}

/// The local names of the named contexts that are directories, whose
/// `.dockerignore` the caller reads ([`read_context_ignore`]) and whose
/// files it serves to the build under that name.
pub fn local_contexts(opts: &FrontendOptions) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for ctx in opts.named_contexts.values() {
        if let NamedContext::Local { local, .. } = ctx {
            if !out.contains(local) {
                out.push(local.clone());
            }
        }
    }
    out
}

/// Sets the exclude patterns of every named context read from the local
/// directory `local`.
pub fn set_context_excludes(opts: &mut FrontendOptions, local: &str, patterns: &[String]) {
    for ctx in opts.named_contexts.values_mut() {
        if let NamedContext::Local { local: l, excludes } = ctx {
            if l == local {
                *excludes = patterns.to_vec();
            }
        }
    }
}

/// Whether `name` is a regular file beneath `root` (symlinks resolved
/// inside it); only looked at, never read.
fn is_file_beneath(root: &Path, name: &str) -> bool {
    kiln_context::path::resolve(root, Path::new(name), true, None)
        .ok()
        .and_then(|r| std::fs::symlink_metadata(r.host).ok())
        .is_some_and(|md| md.file_type().is_file())
}

/// The text of `name` beneath `root`, `None` if there is no such file.
fn read_beneath(root: &Path, name: &str) -> Result<Option<String>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let bad = |reason: String| FrontendError::BadFile {
        name: name.to_string(),
        reason,
    };
    let resolved = kiln_context::path::resolve(root, Path::new(name), true, None)
        .map_err(|e| bad(e.to_string()))?;
    let path = resolved.host;
    let io = |source| FrontendError::Io {
        path: path.clone(),
        source,
    };
    // Opened without following a last-moment symlink and without blocking
    // on a FIFO; what is checked is what was opened.
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            return Err(bad("not a regular file".to_string()))
        }
        Err(source) => return Err(io(source)),
    };
    let md = file.metadata().map_err(io)?;
    if !md.file_type().is_file() {
        return Err(bad("not a regular file".to_string()));
    }
    if md.len() > MAX_DEFINITION_FILE {
        return Err(bad(format!(
            "{} bytes, more than the {MAX_DEFINITION_FILE} kiln reads",
            md.len()
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_DEFINITION_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_DEFINITION_FILE {
        return Err(bad(format!(
            "more than the {MAX_DEFINITION_FILE} bytes kiln reads"
        )));
    }
    // BuildKit reads the file as bytes: a Latin-1 comment or label builds,
    // its bad bytes becoming U+FFFD in the image's JSON, as here. (In a
    // RUN argument or an ignore pattern BuildKit keeps the raw byte; kiln
    // has U+FFFD there too.)
    Ok(Some(match String::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }))
}

/// Where base image configs come from: the engine reads them from the
/// containerd image store or a registry; tests answer from a table.
pub trait ImageConfigs {
    /// The frontend-relevant config of the image `reference` (normalized)
    /// for `platform` (`None`: the worker's). A lookup shown as a progress
    /// step names platform `shown`, if any (BuildKit's `LogName`).
    fn image_config(
        &self,
        reference: &str,
        platform: Option<&kiln_solver::Platform>,
        shown: Option<&kiln_solver::Platform>,
    ) -> impl Future<Output = Result<ImageConfig, WorkerError>> + Send;

    /// The digest (of an index or a manifest) the image `reference` for
    /// `platform` was resolved to by [`ImageConfigs::image_config`], when
    /// it was pinned to one: BuildKit names the `FROM` step by it.
    fn pinned_digest(
        &self,
        _reference: &str,
        _platform: Option<&kiln_solver::Platform>,
    ) -> Option<String> {
        None
    }
}

/// The engine's base images, resolved with one build's mode and
/// credentials (`Engine::base_images`).
impl ImageConfigs for kiln_engine::build::BaseImages {
    async fn image_config(
        &self,
        reference: &str,
        platform: Option<&kiln_solver::Platform>,
        shown: Option<&kiln_solver::Platform>,
    ) -> Result<ImageConfig, WorkerError> {
        match OciLayoutRef::from_key(reference) {
            Some(l) => self.layout_config(&l.store, &l.digest, platform).await,
            None => {
                kiln_engine::build::BaseImages::image_config(self, reference, platform, shown).await
            }
        }
    }

    fn pinned_digest(
        &self,
        reference: &str,
        platform: Option<&kiln_solver::Platform>,
    ) -> Option<String> {
        self.pinned()
            .get(&kiln_engine::resolve::Pinned::key(reference, platform))
    }
}

/// The platforms `opts` builds for: its `platform` list, else the
/// worker's own.
pub fn target_platforms(opts: &FrontendOptions) -> Vec<kiln_solver::Platform> {
    if opts.platforms.is_empty() {
        vec![kiln_engine::oci::worker_platform()]
    } else {
        opts.platforms.clone()
    }
}

/// Whether the result is an image index: more than one platform, or
/// `multi-platform` asked for one.
pub fn is_multi_platform(opts: &FrontendOptions) -> bool {
    opts.multi_platform || opts.platforms.len() > 1
}

/// The Dockerfile's build options for the first target platform.
pub fn build_options(source: &DockerfileSource, opts: &FrontendOptions) -> BuildOptions {
    let first = target_platforms(opts).swap_remove(0);
    build_options_for(source, opts, &first)
}

/// The Dockerfile's build options for building `target` on this worker.
pub fn build_options_for(
    source: &DockerfileSource,
    opts: &FrontendOptions,
    target: &kiln_solver::Platform,
) -> BuildOptions {
    let platform = kiln_engine::oci::worker_platform();
    BuildOptions {
        filename: source.filename.clone(),
        target: opts.target.clone(),
        build_args: opts.build_args.clone(),
        labels: opts.labels.clone(),
        excludes: source.excludes.clone(),
        context_name: CONTEXT_NAME.to_string(),
        no_cache: opts.no_cache,
        no_cache_filter: opts.no_cache_filter.clone(),
        platform_os: platform.os.clone(),
        platform_arch: platform.architecture.clone(),
        platform_variant: platform.variant.clone(),
        // An explicit `--platform`, even the worker's, sets the image's
        // platform (BuildKit's explicit target).
        target_platform: (!opts.platforms.is_empty()).then(|| target.clone()),
        hostname: opts.hostname.clone(),
        extra_hosts: opts.extra_hosts.clone(),
        ulimits: opts.ulimits.clone(),
        resources: opts.resources.clone(),
        shm_size: opts.shm_size,
        force_network: opts.force_network.clone(),
        named_contexts: opts.named_contexts.clone(),
        all_stages: opts.lint,
        worker_platforms: kiln_engine::oci::runnable_platforms(),
        resolved_epoch: opts.resolved_epoch,
        prefix_platform: is_multi_platform(opts),
    }
}

/// Parses the Dockerfile, resolves the configs of the base images the
/// target needs, and emits the graph and the result's image config, for
/// the first target platform. The graph reads the context as
/// `local://`[`CONTEXT_NAME`].
pub async fn plan<I: ImageConfigs>(
    source: &DockerfileSource,
    opts: &FrontendOptions,
    images: &I,
) -> Result<kiln_dockerfile::Build> {
    let first = target_platforms(opts).swap_remove(0);
    plan_for(source, opts, &first, images).await
}

/// [`plan`] for every target platform, in order.
pub async fn plan_all<I: ImageConfigs>(
    source: &DockerfileSource,
    opts: &FrontendOptions,
    images: &I,
) -> Result<Vec<(kiln_solver::Platform, kiln_dockerfile::Build)>> {
    let bases = resolve_all(source, opts, images).await?;
    finish_all(source, opts, &bases).await
}

/// The second half of [`plan_all`], after [`resolve_all`]: each
/// platform's graph ([`convert_all`]) with the known hosts of its ssh git
/// sources pinned.
pub async fn finish_all(
    source: &DockerfileSource,
    opts: &FrontendOptions,
    bases: &BaseConfigs,
) -> Result<Vec<(kiln_solver::Platform, kiln_dockerfile::Build)>> {
    let mut all = convert_all(source, opts, bases)?;
    for (_, build) in &mut all {
        knownhosts::pin(&mut build.graph).await;
    }
    Ok(all)
}

/// The base image configs every target platform's build needs, resolved:
/// the first half of [`plan_all`] (BuildKit's `load metadata` steps),
/// which reads nothing of the context, not even its ignore file.
#[derive(Clone, Debug)]
pub struct BaseConfigs {
    df: kiln_dockerfile::Dockerfile,
    /// Per target platform, the configs under [`kiln_dockerfile::BaseRef::key`].
    platforms: Vec<(kiln_solver::Platform, Resolved)>,
}

/// The base images of one platform's build, resolved.
#[derive(Clone, Debug, Default)]
struct Resolved {
    /// Their configs, under [`kiln_dockerfile::BaseRef::key`].
    configs: BTreeMap<String, ImageConfig>,
    /// By reference, the digest each was pinned to (`None`: two
    /// platforms' lookups of one reference gave two digests).
    pins: BTreeMap<String, Option<String>>,
}

/// Parses the Dockerfile and resolves the base images of every target
/// platform's build; [`convert_all`] then emits the graphs.
pub async fn resolve_all<I: ImageConfigs>(
    source: &DockerfileSource,
    opts: &FrontendOptions,
    images: &I,
) -> Result<BaseConfigs> {
    let df = source.parse(opts)?;
    let mut platforms = Vec::new();
    for p in target_platforms(opts) {
        let bases = resolve_for(&df, source, opts, &p, images).await?;
        platforms.push((p, bases));
    }
    Ok(BaseConfigs { df, platforms })
}

/// The second half of [`plan_all`]: each platform's graph from its
/// resolved base images, with `source`'s ignore patterns (which may be
/// read after the base images were resolved, as BuildKit reads them).
pub fn convert_all(
    source: &DockerfileSource,
    opts: &FrontendOptions,
    bases: &BaseConfigs,
) -> Result<Vec<(kiln_solver::Platform, kiln_dockerfile::Build)>> {
    bases
        .platforms
        .iter()
        .map(|(p, b)| Ok((p.clone(), convert_for(&bases.df, source, opts, p, b)?)))
        .collect()
}

/// One graph for the builds of [`plan_all`] (whose steps are named with
/// their stage's platform, as BuildKit names the steps of a multi-platform
/// build: `[linux/arm64 2/3] RUN ...`), and where each platform's result
/// is. A vertex equal to one of an earlier platform's (a `FROM
/// --platform=$BUILDPLATFORM` stage, the build context) is that vertex,
/// with the earlier platform's name ([`kiln_solver::Graph::append`]).
pub fn merge_platforms(
    builds: Vec<(kiln_solver::Platform, kiln_dockerfile::Build)>,
) -> Result<(kiln_solver::Graph, Vec<kiln_engine::build::PlatformTarget>)> {
    let mut graph = kiln_solver::Graph::default();
    let mut seen = kiln_solver::Seen::default();
    let mut targets = Vec::with_capacity(builds.len());
    for (platform, b) in builds {
        let graph_err = |e| FrontendError::Dockerfile(ParseError::Graph(e));
        let ids = graph.append(&b.graph, &mut seen).map_err(graph_err)?;
        let result = *ids.get(b.result.0).ok_or_else(|| {
            graph_err(kiln_solver::SolveError::BadInput {
                vertex: ids.len(),
                input: b.result.0,
            })
        })?;
        targets.push(kiln_engine::build::PlatformTarget {
            platform,
            result,
            config: b.config,
        });
    }
    Ok((graph, targets))
}

/// [`plan`] for the target platform `target`.
pub async fn plan_for<I: ImageConfigs>(
    source: &DockerfileSource,
    opts: &FrontendOptions,
    target: &kiln_solver::Platform,
    images: &I,
) -> Result<kiln_dockerfile::Build> {
    let df = source.parse(opts)?;
    let bases = resolve_for(&df, source, opts, target, images).await?;
    convert_for(&df, source, opts, target, &bases)
}

/// The configs of the base images the build for `target` needs.
async fn resolve_for<I: ImageConfigs>(
    df: &kiln_dockerfile::Dockerfile,
    source: &DockerfileSource,
    opts: &FrontendOptions,
    target: &kiln_solver::Platform,
    images: &I,
) -> Result<Resolved> {
    let build_opts = build_options_for(source, opts, target);
    let mut bases = Resolved::default();
    // A base image's ONBUILD trigger may copy from a stage whose base is
    // another image: resolve until no new base appears (each round adds at
    // least one ref of the Dockerfile's finite set, or ends).
    loop {
        let new: Vec<kiln_dockerfile::BaseRef> = df
            .base_image_refs_with(&build_opts, &bases.configs)?
            .into_iter()
            .filter(|b| !bases.configs.contains_key(&b.key()))
            .collect();
        if new.is_empty() {
            break;
        }
        resolve_bases(df, opts, images, new, &mut bases).await?;
    }
    Ok(bases)
}

/// The graph of the build for `target` from its resolved base images.
fn convert_for(
    df: &kiln_dockerfile::Dockerfile,
    source: &DockerfileSource,
    opts: &FrontendOptions,
    target: &kiln_solver::Platform,
    bases: &Resolved,
) -> Result<kiln_dockerfile::Build> {
    let build_opts = build_options_for(source, opts, target);
    let mut build = kiln_dockerfile::to_graph(df, &build_opts, &bases.configs)?;
    name_pinned(&mut build.graph, &bases.pins);
    check::copy_ignored(df, &build_opts, &mut build)?;
    if let Some(remote) = &opts.remote_context {
        let (graph, result) = remote::replace_context(
            build.graph,
            build.result,
            remote,
            opts.context_subdir.as_deref(),
        )?;
        build.graph = graph;
        build.result = result;
    }
    Ok(build)
}

/// Resolves the configs of `refs` into `bases`, under their keys.
async fn resolve_bases<I: ImageConfigs>(
    df: &kiln_dockerfile::Dockerfile,
    opts: &FrontendOptions,
    images: &I,
    refs: Vec<kiln_dockerfile::BaseRef>,
    bases: &mut Resolved,
) -> Result<()> {
    // BuildKit names a lookup's platform only in a multi-platform build:
    // `[linux/arm64 internal] load metadata for …`.
    let multi = is_multi_platform(opts);
    for base in refs {
        let image = &base.reference;
        // A frontend input's config came with the request.
        let input = image
            .strip_prefix(kiln_dockerfile::INPUT_SCHEME)
            .and_then(|i| opts.input_configs.get(i));
        if let Some(bytes) = input {
            let cfg: kiln_engine::oci::ImageConfigJson = serde_json::from_slice(bytes)
                .map_err(|e| invalid(&format!("input-metadata:{image}"), "", e))?;
            bases
                .configs
                .insert(base.key(), kiln_engine::base::frontend_config(&cfg));
            continue;
        }
        let shown = multi.then(|| {
            base.platform
                .clone()
                .unwrap_or_else(kiln_engine::oci::worker_platform)
        });
        let cfg = match images
            .image_config(image, base.platform.as_ref(), shown.as_ref())
            .await
        {
            Ok(cfg) => cfg,
            Err(source) => {
                let place = df.base_image_place(image);
                return Err(FrontendError::BaseImage {
                    name: place.map(|(word, _)| word.to_string()),
                    line: place.map(|(_, line)| line),
                    image: image.clone(),
                    error: Box::new(source),
                    hint: df.base_image_hint(image),
                });
            }
        };
        if let Some(digest) = images.pinned_digest(image, base.platform.as_ref()) {
            let pin = bases
                .pins
                .entry(image.clone())
                .or_insert(Some(digest.clone()));
            if pin.as_ref() != Some(&digest) {
                *pin = None;
            }
        }
        bases.configs.insert(base.key(), cfg);
    }
    Ok(())
}

/// Names each image's `FROM` step with the digest the image was pinned
/// to, as BuildKit does (`[1/2] FROM docker.io/library/busybox:latest@sha256:...`).
fn name_pinned(graph: &mut kiln_solver::Graph, pins: &BTreeMap<String, Option<String>>) {
    for v in &mut graph.vertices {
        let kiln_solver::Op::Source(op) = &v.op else {
            continue;
        };
        let Some(reference) = op.identifier.strip_prefix("docker-image://") else {
            continue;
        };
        if reference.contains('@') {
            continue;
        }
        if let Some(Some(digest)) = pins.get(reference) {
            if v.name.ends_with(&format!("FROM {reference}")) {
                v.name = format!("{}@{digest}", v.name);
            }
        }
    }
}

pub mod check;
pub mod describe;
pub mod epoch;
pub mod knownhosts;
pub mod outline;
pub mod remote;
pub mod targets;

#[cfg(test)]
mod tests;
