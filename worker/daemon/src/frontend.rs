//! The built-in `dockerfile.v0` frontend: fetches the Dockerfile and its
//! ignore files through the client's session into the job's directories
//! and runs the shared frontend path (`kiln-frontend`) on them, as the
//! CLI's embedded mode does, in BuildKit's order: the definition, the
//! named contexts' ignore files, the base images' metadata, the context's
//! ignore file, then the graph. The contexts themselves are fetched by the
//! solve as the graph's sources ask (only the paths the build reads).

use crate::jobs::Job;
use crate::policy::Resolver;
use crate::sessions::SessionHandle;
use crate::state::Daemon;
use kiln_frontend::{FrontendError, FrontendOptions};
use std::collections::HashMap;
use std::path::PathBuf;
use tonic::Status;

/// The frontend's output: the graph and where the contexts landed.
pub struct Frontend {
    pub build: kiln_dockerfile::Build,
    /// The client's directory of the graph's `local://context` source
    /// (`contextkey`).
    pub context_key: String,
    /// `local-sessionid:DIR`: the session serving each directory that the
    /// build's own does not (`crate::solve::name_local_sessions`).
    pub local_sessions: std::collections::BTreeMap<String, String>,
    /// `image-resolve-mode`, for the build's source ops.
    pub resolve_mode: kiln_engine::resolve::ResolveMode,
    /// The base images the frontend resolved, for the source ops.
    pub pinned: kiln_engine::resolve::Pinned,
    /// The Dockerfile, for the source of a failed step's error.
    pub source: kiln_proto::llb::SourceInfo,
    /// A multi-platform build's platforms (`build` holds all their
    /// vertices); empty for one platform.
    pub targets: Vec<kiln_engine::build::PlatformTarget>,
    /// The copies of the client's OCI layouts the graph reads.
    pub layouts: crate::ocilayout::Layouts,
}

/// Copies the blobs describing the image of each `oci-layout://` named
/// context from the client's session, for the frontend to read configs.
async fn describe_layouts(
    d: &Daemon,
    job: &Job,
    session: &SessionHandle,
    opts: &FrontendOptions,
) -> Result<crate::ocilayout::Layouts, Status> {
    let mut layouts = crate::ocilayout::Layouts::new(&crate::solve::job_dir(d, job));
    // A named context's store is the build's session's.
    let from = job
        .session
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    for ctx in opts.named_contexts.values() {
        if let kiln_dockerfile::NamedContext::OciLayout(l) = ctx {
            layouts
                .describe(session, &from, &l.store, &l.digest)
                .await?;
        }
    }
    Ok(layouts)
}

/// The session serving the client's directory `key`: the one
/// `local-sessionid:KEY` names (buildx shares one between bake targets),
/// else the build's own.
async fn dir_session(
    d: &Daemon,
    job: &Job,
    session: &SessionHandle,
    opts: &FrontendOptions,
    key: &str,
) -> Result<SessionHandle, Status> {
    match opts.local_sessions.get(key) {
        Some(id) => {
            let own = job
                .session
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            crate::solve::local_session(d, session, &own, id).await
        }
        None => Ok(session.clone()),
    }
}

fn fetch_err(name: &str, e: kiln_session::SessionError) -> Status {
    Status::new(
        e.kind().code(),
        format!(
            "failed to read local {name:?}: {}",
            kiln_engine::error::error_chain(&e)
        ),
    )
}

/// A frontend error as a gRPC status, with its kind's code; but a
/// Dockerfile's own errors (parse, instructions, variables) carry no code,
/// as BuildKit's frontend sends them: clients print any other code's name
/// before the message (`failed to solve: InvalidArgument: Dockerfile:1:`).
fn frontend_status(e: &FrontendError) -> Status {
    let code = match e {
        FrontendError::Dockerfile(_) => tonic::Code::Unknown,
        _ => e.kind().code(),
    };
    Status::new(code, kiln_engine::error::error_chain(e))
}

/// An empty directory `name` under the job's directory.
fn fresh_dir(d: &Daemon, job: &Job, name: &str) -> Result<PathBuf, Status> {
    let dir = crate::solve::job_dir(d, job).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| Status::internal(e.to_string()))?;
    Ok(dir)
}

/// Fetches the client's directory `key` through the session as a step
/// named `name`, shown as BuildKit's frontend shows it: the step, its
/// `transferring KEY:` item with the bytes on the wire, done (or failed).
async fn load_step(
    job: &Job,
    session: &SessionHandle,
    name: &str,
    key: &str,
    follow_paths: &[String],
    dir: &std::path::Path,
) -> Result<(), Status> {
    let started = std::time::SystemTime::now();
    crate::status::step(job, name, started, None, None);
    let fetched = kiln_session::filesync::fetch_dir(
        session.channel.clone(),
        key,
        &[],
        &[],
        follow_paths,
        dir,
        Default::default(),
    )
    .await
    .map_err(|e| fetch_err(key, e));
    let done = std::time::SystemTime::now();
    if let Ok(stats) = &fetched {
        crate::status::step_transfer(job, name, key, stats.wire_bytes, started, done);
    }
    let error = fetched.as_ref().err().map(|e| e.message().to_string());
    crate::status::step(job, name, started, Some(done), error);
    fetched.map(|_| ())
}

/// The Dockerfile read and which ignore file applies to its context.
struct Definition {
    source: kiln_frontend::DockerfileSource,
    /// The Dockerfile has no ignore file of its own: the context's
    /// `.dockerignore` is still to be fetched ([`context_ignore`]).
    context_ignore: bool,
}

/// Fetches the Dockerfile (with its own ignore file) as the step BuildKit's
/// frontend shows: `[internal] load build definition from NAME`.
async fn definition(
    d: &Daemon,
    job: &Job,
    session: &SessionHandle,
    opts: &FrontendOptions,
    policy: &Resolver<'_>,
) -> Result<Definition, Status> {
    let filename = opts.filename.clone();
    let own_ignore = kiln_frontend::dockerfile_ignore_name(&filename);
    let paths = [filename.clone(), own_ignore.clone()];
    crate::policy::check_local(d, job, policy, &opts.dockerfile_key, &paths)
        .await
        .map_err(|s| {
            Status::new(
                s.code(),
                format!("failed to read dockerfile: {}", s.message()),
            )
        })?;
    let session = &dir_session(d, job, session, opts, &opts.dockerfile_key).await?;
    let df_dir = fresh_dir(d, job, "dockerfile")?;
    load_step(
        job,
        session,
        &load_name(&filename),
        &opts.dockerfile_key,
        &paths,
        &df_dir,
    )
    .await?;
    // No context directory yet: the Dockerfile's own ignore file or none.
    let none = fresh_dir(d, job, "dockerignore")?;
    let source = kiln_frontend::read_dockerfile(&df_dir, &filename, &none)
        .map_err(|e| frontend_status(&e))?;
    let _ = std::fs::remove_dir_all(&none);
    Ok(Definition {
        source,
        context_ignore: !df_dir.join(&own_ignore).exists(),
    })
}

/// Fetches the context's `.dockerignore` alone, as the step BuildKit's
/// frontend shows (`[internal] load .dockerignore`), and gives its
/// patterns to `source`: they decide what the context's transfer leaves
/// out.
async fn context_ignore(
    d: &Daemon,
    job: &Job,
    session: &SessionHandle,
    opts: &FrontendOptions,
    source: &mut kiln_frontend::DockerfileSource,
    policy: &Resolver<'_>,
) -> Result<(), Status> {
    let paths = [kiln_frontend::CONTEXT_IGNORE_FILE.to_string()];
    if !may_read_ignore_file(d, job, policy, &opts.context_key, &paths).await {
        return Ok(());
    }
    let session = &dir_session(d, job, session, opts, &opts.context_key).await?;
    let dir = fresh_dir(d, job, "dockerignore")?;
    load_step(
        job,
        session,
        "[internal] load .dockerignore",
        &opts.context_key,
        &paths,
        &dir,
    )
    .await?;
    source.excludes = kiln_frontend::read_context_ignore(&dir).map_err(|e| frontend_status(&e))?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Whether the client's policy lets the frontend read the `.dockerignore`
/// of the directory `name`. BuildKit's frontend reads it lazily and
/// ignores a failed read, so a denied directory has no ignore patterns:
/// the build fails only if the graph uses that directory, when it is
/// solved.
async fn may_read_ignore_file(
    d: &Daemon,
    job: &Job,
    policy: &Resolver<'_>,
    name: &str,
    paths: &[String],
) -> bool {
    match crate::policy::check_local(d, job, policy, name, paths).await {
        Ok(()) => true,
        Err(s) => {
            tracing::debug!(
                local = name,
                error = s.message(),
                "the .dockerignore is not read"
            );
            false
        }
    }
}

/// The step that loads the Dockerfile, as BuildKit names it.
fn load_name(filename: &str) -> String {
    format!("[internal] load build definition from {filename}")
}

/// Answers the `frontend.lint` request (buildx `--check`): the build
/// checks over the Dockerfile, nothing built, as BuildKit's lint result.
pub async fn lint(
    d: &Daemon,
    engine: &kiln_engine::Engine,
    job: &Job,
    session: &SessionHandle,
    attrs: &HashMap<String, String>,
    credentials: std::sync::Arc<dyn kiln_registry::Credentials>,
) -> Result<kiln_frontend::check::CheckReport, Status> {
    let mut opts = FrontendOptions::from_attrs(attrs).map_err(|e| frontend_status(&e))?;
    let policy_engine = job.engine(engine);
    let policy = || Resolver {
        engine: &policy_engine,
        credentials: credentials.clone(),
    };
    let source = if opts.remote_context.is_some() {
        remote_dockerfile(d, engine, job, session, &mut opts, credentials.clone()).await?
    } else {
        // The check of ignored files needs the patterns before planning;
        // as in BuildKit, a file that does not parse gets no further.
        let mut def = definition(d, job, session, &opts, &policy()).await?;
        if def.context_ignore && def.source.parse(&opts).is_ok() {
            context_ignore(d, job, session, &opts, &mut def.source, &policy()).await?;
        }
        def.source
    };
    let layouts = describe_layouts(d, job, session, &opts).await?;
    let images = crate::policy::CheckedImages::new(
        d,
        job,
        policy(),
        engine
            .base_images(opts.resolve_mode, credentials)
            .with_oci_stores(layouts.stores()),
    );
    // A base the policy denies is the report's error, as BuildKit's lint
    // reports a failed lookup (`busybox: failed to resolve source
    // metadata for …: could not resolve image due to policy: …`).
    Ok(kiln_frontend::check::check(&source, &opts, &images).await)
}

/// Answers the targets request (`buildx build --call=targets`): the
/// Dockerfile's stages, read as a build would read it.
pub async fn targets(
    d: &Daemon,
    engine: &kiln_engine::Engine,
    job: &Job,
    session: &SessionHandle,
    attrs: &HashMap<String, String>,
    credentials: std::sync::Arc<dyn kiln_registry::Credentials>,
) -> Result<kiln_frontend::targets::TargetList, Status> {
    let (_, source) = read_dockerfile(d, engine, job, session, attrs, credentials).await?;
    kiln_frontend::targets::list(&source).map_err(|e| frontend_status(&e))
}

/// Answers the outline request (`buildx build --call=outline`): what the
/// target takes from its caller, read as a build would read it.
pub async fn outline(
    d: &Daemon,
    engine: &kiln_engine::Engine,
    job: &Job,
    session: &SessionHandle,
    attrs: &HashMap<String, String>,
    credentials: std::sync::Arc<dyn kiln_registry::Credentials>,
) -> Result<kiln_frontend::outline::Outline, Status> {
    let (opts, source) = read_dockerfile(d, engine, job, session, attrs, credentials).await?;
    kiln_frontend::outline::outline(&source, opts.target.as_deref(), &opts.build_args)
        .map_err(|e| frontend_status(&e))
}

/// The answer to `frontend.subrequests.describe`: the Dockerfile is read
/// first, as BuildKit's frontend reads it before any subrequest (a
/// missing one fails the request).
pub async fn describe(
    d: &Daemon,
    engine: &kiln_engine::Engine,
    job: &Job,
    session: &SessionHandle,
    attrs: &HashMap<String, String>,
    credentials: std::sync::Arc<dyn kiln_registry::Credentials>,
) -> Result<std::collections::BTreeMap<String, String>, Status> {
    read_dockerfile(d, engine, job, session, attrs, credentials).await?;
    Ok(kiln_frontend::describe::answer())
}

/// The options of a `--call` request (targets, outline) and the
/// Dockerfile they name, read as a build would read it: from the remote
/// context when there is one, else from the client's dockerfile local.
async fn read_dockerfile(
    d: &Daemon,
    engine: &kiln_engine::Engine,
    job: &Job,
    session: &SessionHandle,
    attrs: &HashMap<String, String>,
    credentials: std::sync::Arc<dyn kiln_registry::Credentials>,
) -> Result<(FrontendOptions, kiln_frontend::DockerfileSource), Status> {
    let mut opts = FrontendOptions::from_attrs(attrs).map_err(|e| frontend_status(&e))?;
    let source = if opts.remote_context.is_some() {
        remote_dockerfile(d, engine, job, session, &mut opts, credentials).await?
    } else {
        let policy = Resolver {
            engine: &job.engine(engine),
            credentials,
        };
        definition(d, job, session, &opts, &policy).await?.source
    };
    Ok((opts, source))
}

/// What the Dockerfile frontend made of a request.
pub enum Planned {
    Graph(Box<Frontend>),
    /// A frontend image's build (`# syntax=IMAGE`, `BUILDKIT_SYNTAX`):
    /// the attributes to run it with (`crate::frontendimage::forward`).
    Forward(HashMap<String, String>),
}

/// Runs the Dockerfile frontend with BuildKit's frontend attributes.
pub async fn dockerfile(
    d: &Daemon,
    engine: &kiln_engine::Engine,
    job: &Job,
    session: &SessionHandle,
    attrs: &HashMap<String, String>,
    inputs: &HashMap<String, kiln_proto::llb::Definition>,
    credentials: std::sync::Arc<dyn kiln_registry::Credentials>,
) -> Result<Planned, Status> {
    if let Some(forwarded) = crate::frontendimage::forward(attrs, None) {
        return Ok(Planned::Forward(forwarded));
    }
    let original = attrs;
    let attrs = &crate::frontendimage::dockerfile_attrs(attrs);
    let mut opts = FrontendOptions::from_attrs(attrs).map_err(|e| frontend_status(&e))?;
    crate::inputs::check(attrs, inputs)?;
    if opts.lint || opts.targets || opts.outline || opts.describe {
        // Its result is metadata only a gateway client reads.
        let request = if opts.lint {
            kiln_frontend::check::LINT_REQUEST
        } else if opts.targets {
            kiln_frontend::targets::TARGETS_REQUEST
        } else if opts.outline {
            kiln_frontend::outline::OUTLINE_REQUEST
        } else {
            kiln_frontend::describe::DESCRIBE_REQUEST
        };
        return Err(Status::unimplemented(format!(
            "the {request} request outside the gateway API (buildx build --call uses the gateway) is not supported yet"
        )));
    }
    let policy_engine = job.engine(engine);
    let policy = Resolver {
        engine: &policy_engine,
        credentials: credentials.clone(),
    };
    if opts.remote_context.is_some() {
        let source =
            remote_dockerfile(d, engine, job, session, &mut opts, credentials.clone()).await?;
        if let Some(forwarded) = crate::frontendimage::forward(original, Some(&source.text)) {
            return Ok(Planned::Forward(forwarded));
        }
        return plan(
            d,
            engine,
            job,
            session,
            opts,
            source,
            false,
            inputs,
            credentials,
        )
        .await
        .map(|f| Planned::Graph(Box::new(f)));
    }
    let def = definition(d, job, session, &opts, &policy).await?;
    if let Some(forwarded) = crate::frontendimage::forward(original, Some(&def.source.text)) {
        return Ok(Planned::Forward(forwarded));
    }
    // A named local context is read with its own `.dockerignore`, fetched
    // alone first, as BuildKit does (and shows: `[context NAME] load
    // .dockerignore`).
    for local in kiln_frontend::local_contexts(&opts) {
        let paths = [kiln_frontend::CONTEXT_IGNORE_FILE.to_string()];
        if !may_read_ignore_file(d, job, &policy, &local, &paths).await {
            continue;
        }
        let dir = fresh_dir(d, job, "dockerignore")?;
        let from = dir_session(d, job, session, &opts, &local).await?;
        load_step(
            job,
            &from,
            &format!("[context {local}] load .dockerignore"),
            &local,
            &paths,
            &dir,
        )
        .await?;
        let excludes = kiln_frontend::read_context_ignore(&dir).map_err(|e| frontend_status(&e))?;
        let _ = std::fs::remove_dir_all(&dir);
        kiln_frontend::set_context_excludes(&mut opts, &local, &excludes);
    }
    plan(
        d,
        engine,
        job,
        session,
        opts,
        def.source,
        def.context_ignore,
        inputs,
        credentials,
    )
    .await
    .map(|f| Planned::Graph(Box::new(f)))
}

/// Fetches a git or HTTP main context with the engine (the client's
/// secrets carry its git credentials) once the client's policy allows it,
/// and reads the Dockerfile from it, or, when the client names its own
/// (`dockerfilekey`), reads that one; the fetch shows as the source's own
/// progress steps.
async fn remote_dockerfile(
    d: &Daemon,
    engine: &kiln_engine::Engine,
    job: &Job,
    session: &SessionHandle,
    opts: &mut FrontendOptions,
    credentials: std::sync::Arc<dyn kiln_registry::Credentials>,
) -> Result<kiln_frontend::DockerfileSource, Status> {
    let (tx, rx) = kiln_engine::progress::channel();
    let engine = &job.engine(engine);
    let policy = Resolver {
        engine,
        credentials: credentials.clone(),
    };
    // The context is the client's policy's to allow before anything of it
    // is fetched (for a build and for the lint, outline and targets
    // requests alike).
    if let Some(remote) = &opts.remote_context {
        let op = remote.source_op();
        crate::policy::check_sources(d, job, &policy, std::iter::once(&op)).await?;
    }
    let known = opts
        .remote_context
        .as_ref()
        .map(|r| r.vertices())
        .unwrap_or_default();
    let fetch = session_fetch(engine, job, session, credentials, tx);
    // The Dockerfile is the context's, or the client's (`dockerfilekey`):
    // then the context is fetched only to settle what it is.
    let local = opts.dockerfile_local;
    let read = async {
        let r = if local {
            kiln_frontend::remote::settle_context(&fetch, opts)
                .await
                .map(|()| None)
        } else {
            kiln_frontend::remote::load_dockerfile(&fetch, opts)
                .await
                .map(Some)
        };
        drop(fetch);
        r
    };
    let (read, ()) = tokio::join!(read, forward_steps_as(job, rx, &known));
    match read.map_err(|e| frontend_status(&e))? {
        Some(source) => Ok(source),
        None => {
            let source = definition(d, job, session, opts, &policy).await?.source;
            Ok(kiln_frontend::remote::without_excludes(source))
        }
    }
}

/// What the frontend's own fetches (a remote context, a dated source)
/// need from the client: its logins, secrets, SSH agents and uploads,
/// through its session; their progress goes to `progress`.
fn session_fetch<'a>(
    engine: &'a kiln_engine::Engine,
    job: &Job,
    session: &SessionHandle,
    credentials: std::sync::Arc<dyn kiln_registry::Credentials>,
    progress: kiln_engine::Progress,
) -> kiln_frontend::remote::Fetch<'a> {
    kiln_frontend::remote::Fetch {
        engine,
        credentials,
        secrets: std::sync::Arc::new(crate::secrets::SessionSecrets::new(Some(session))),
        ssh: std::sync::Arc::new(crate::ssh::SessionSsh::new(Some(session))),
        uploads: std::sync::Arc::new(crate::uploads::SessionUploads::new(Some(session))),
        progress,
        cancel: job.cancel.child_token(),
    }
}

/// A `SOURCE_DATE_EPOCH` naming a source: its time, fetched with the
/// engine as the frontend's own step (BuildKit's `[internal] resolve …`).
async fn resolve_epoch(
    engine: &kiln_engine::Engine,
    job: &Job,
    session: &SessionHandle,
    opts: &mut FrontendOptions,
    source: &kiln_frontend::DockerfileSource,
    credentials: std::sync::Arc<dyn kiln_registry::Credentials>,
) -> Result<(), FrontendError> {
    let (tx, rx) = kiln_engine::progress::channel();
    let fetch = session_fetch(engine, job, session, credentials, tx);
    let resolve = async {
        let r = kiln_frontend::epoch::resolve(&fetch, source, opts).await;
        drop(fetch);
        r
    };
    let (r, ()) = tokio::join!(resolve, forward_steps(job, rx));
    r
}

/// Shows the engine's steps of the frontend's own work (registry lookups,
/// fetching a remote context) as job steps, by name.
async fn forward_steps(job: &Job, rx: tokio::sync::mpsc::Receiver<kiln_engine::ProgressEvent>) {
    forward_steps_as(job, rx, &[]).await
}

/// [`forward_steps`], with the steps named in `known` published as those
/// vertices of the build's graph (name, digest, input digests).
async fn forward_steps_as(
    job: &Job,
    mut rx: tokio::sync::mpsc::Receiver<kiln_engine::ProgressEvent>,
    known: &[(String, String, Vec<String>)],
) {
    let mut started = HashMap::new();
    let publish = |name: &str, from, to, error| match known.iter().find(|(n, ..)| n == name) {
        Some((_, digest, inputs)) => {
            crate::status::step_as(job, digest, inputs, name, from, to, error)
        }
        None => crate::status::step(job, name, from, to, error),
    };
    while let Some(e) = rx.recv().await {
        match e {
            kiln_engine::ProgressEvent::Started { name, at, .. } => {
                publish(&name, at, None, None);
                started.insert(name, at);
            }
            kiln_engine::ProgressEvent::Completed {
                name, at, error, ..
            } => {
                let from = started.get(&name).copied().unwrap_or(at);
                publish(&name, from, Some(at), error);
            }
            _ => {}
        }
    }
}

/// Plans the build from the read Dockerfile: the base images' metadata,
/// then (with `context_ignore`) the context's `.dockerignore`, as
/// BuildKit's frontend reads it, then the graph.
#[allow(clippy::too_many_arguments)]
async fn plan(
    d: &Daemon,
    engine: &kiln_engine::Engine,
    job: &Job,
    session: &SessionHandle,
    mut opts: FrontendOptions,
    mut source: kiln_frontend::DockerfileSource,
    context_ignore: bool,
    inputs: &HashMap<String, kiln_proto::llb::Definition>,
    credentials: std::sync::Arc<dyn kiln_registry::Credentials>,
) -> Result<Frontend, Status> {
    let filename = opts.filename.clone();
    let load_name = load_name(&filename);
    let policy_engine = job.engine(engine);
    let policy = || Resolver {
        engine: &policy_engine,
        credentials: credentials.clone(),
    };
    let mut layouts = describe_layouts(d, job, session, &opts).await?;
    let epoch = resolve_epoch(
        engine,
        job,
        session,
        &mut opts,
        &source,
        credentials.clone(),
    )
    .await;
    let planned = async {
        epoch.map_err(Planning::Frontend)?;
        // Registry lookups show as `[internal] load metadata for <name>`
        // steps, as BuildKit's frontend shows them.
        let (tx, rx) = kiln_engine::progress::channel();
        let images = crate::policy::CheckedImages::new(
            d,
            job,
            policy(),
            engine
                .base_images(opts.resolve_mode, credentials.clone())
                .with_oci_stores(layouts.stores())
                .with_progress(tx),
        );
        let pinned = images.inner().pinned();
        let resolve = async {
            let r = kiln_frontend::resolve_all(&source, &opts, &images).await;
            let denied = images.take_denied();
            drop(images);
            (r, denied)
        };
        let ((bases, denied), ()) = tokio::join!(resolve, forward_steps(job, rx));
        let bases = match (bases, denied) {
            // The frontend's words (`FROM` name, image), the policy's code.
            (Err(e), Some(denied)) => {
                return Err(Planning::Policy(Status::new(
                    denied,
                    kiln_engine::error::error_chain(&e),
                )))
            }
            (bases, _) => bases.map_err(Planning::Frontend)?,
        };
        if context_ignore {
            self::context_ignore(d, job, session, &opts, &mut source, &policy())
                .await
                .map_err(Planning::Fetch)?;
        }
        let mut build = plan_platforms(&source, &opts, &bases).map_err(Planning::Frontend)?;
        kiln_frontend::knownhosts::pin(&mut build.0.graph).await;
        Ok::<_, Planning>((build, pinned))
    };
    let ((mut build, mut targets), pinned) = match planned.await {
        Ok(p) => p,
        Err(Planning::Fetch(s) | Planning::Policy(s)) => return Err(s),
        Err(Planning::Frontend(e)) => {
            // A Dockerfile error about a line (a bad instruction, a base
            // image that does not resolve) carries it as BuildKit's source
            // detail, so clients print the snippet.
            // The checks BuildKit ran before it failed.
            let ran = source.failure_warnings(&opts, &e);
            crate::status::warnings(job, &load_name, &filename, &source.text, &ran);
            let line = e.line();
            return Err(crate::errdetails::with_line(
                frontend_status(&e),
                &filename,
                source.text.as_bytes(),
                line,
            ));
        }
    };
    crate::status::warnings(job, &load_name, &filename, &source.text, &build.warnings);
    // The frontend inputs' vertices in place of their placeholders, before
    // the local sources and layouts the graph reads are fetched.
    if !inputs.is_empty() {
        let (graph, moved) = crate::inputs::splice(std::mem::take(&mut build.graph), inputs)?;
        build.graph = graph;
        build.result = moved[build.result.0];
        for t in &mut targets {
            t.result = moved[t.result.0];
        }
    }
    layouts
        .fetch_layers(
            engine,
            &crate::ocilayout::LayoutSessions::of(d, job, Some(session)),
            &build.graph,
        )
        .await?;
    Ok(Frontend {
        build,
        context_key: opts.context_key.clone(),
        local_sessions: opts.local_sessions.clone(),
        resolve_mode: opts.resolve_mode,
        pinned,
        source: kiln_proto::llb::SourceInfo {
            filename,
            data: source.text.into_bytes(),
            definition: None,
            language: "Dockerfile".into(),
        },
        targets,
        layouts,
    })
}

/// Why planning stopped: the frontend's error (with a Dockerfile line), a
/// fetch through the session, or the client's policy on a base image.
enum Planning {
    Frontend(FrontendError),
    Fetch(Status),
    Policy(Status),
}

/// Every platform the attributes ask for, as one build: a multi-platform
/// build's graphs merged, with each platform's result and config.
fn plan_platforms(
    source: &kiln_frontend::DockerfileSource,
    opts: &FrontendOptions,
    bases: &kiln_frontend::BaseConfigs,
) -> Result<
    (
        kiln_dockerfile::Build,
        Vec<kiln_engine::build::PlatformTarget>,
    ),
    FrontendError,
> {
    let mut all = kiln_frontend::convert_all(source, opts, bases)?;
    if !kiln_frontend::is_multi_platform(opts) {
        return Ok((all.swap_remove(0).1, Vec::new()));
    }
    let warnings = all
        .first()
        .map(|(_, b)| b.warnings.clone())
        .unwrap_or_default();
    let stages_built = all
        .first()
        .map(|(_, b)| b.stages_built.clone())
        .unwrap_or_default();
    let (graph, targets) = kiln_frontend::merge_platforms(all)?;
    let build = kiln_dockerfile::Build {
        graph,
        result: targets[0].result,
        config: targets[0].config.clone(),
        stages_built,
        warnings,
        // Checked per platform, before the merge.
        context_reads: Vec::new(),
    };
    Ok((build, targets))
}
