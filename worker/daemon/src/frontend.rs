//! The built-in `dockerfile.v0` frontend: fetches the Dockerfile, its
//! ignore files and then the context (with those exclusions) through the
//! client's session into the job's directories, and runs the shared
//! frontend path (`kiln-frontend`) on them, as the CLI's embedded mode does.

use crate::jobs::Job;
use crate::sessions::SessionHandle;
use crate::state::Daemon;
use kiln_frontend::{FrontendError, FrontendOptions};
use std::collections::HashMap;
use std::path::PathBuf;
use tonic::Status;

/// The frontend's output: the graph and where the contexts landed.
pub struct Frontend {
    pub build: kiln_dockerfile::Build,
    /// The kept context the build reads (`crate::contexts`); `None` when
    /// the main context is a git or HTTP source the engine fetches.
    pub context: Option<crate::contexts::Held>,
    /// The named local contexts the graph reads, by local name, and the
    /// slots holding them.
    pub named: Vec<(String, crate::contexts::Held)>,
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
    for ctx in opts.named_contexts.values() {
        if let kiln_dockerfile::NamedContext::OciLayout(l) = ctx {
            layouts.describe(session, &l.store, &l.digest).await?;
        }
    }
    Ok(layouts)
}

fn fetch_err(name: &str, e: kiln_session::SessionError) -> Status {
    Status::new(
        e.kind().code(),
        format!("failed to read local {name:?}: {e}"),
    )
}

/// A frontend error as a gRPC status, with its kind's code.
fn frontend_status(e: &FrontendError) -> Status {
    Status::new(e.kind().code(), kiln_engine::error::error_chain(e))
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

/// Fetches the Dockerfile (with its own ignore file), then, unless that
/// was there, the context's `.dockerignore`, as the steps BuildKit's
/// frontend shows: `[internal] load build definition from NAME` and
/// `[internal] load .dockerignore`.
async fn definition(
    d: &Daemon,
    job: &Job,
    session: &SessionHandle,
    opts: &FrontendOptions,
) -> Result<kiln_frontend::DockerfileSource, Status> {
    let filename = opts.filename.clone();
    let df_dir = fresh_dir(d, job, "dockerfile")?;
    let ignore_dir = fresh_dir(d, job, "dockerignore")?;
    let own_ignore = kiln_frontend::dockerfile_ignore_name(&filename);
    load_step(
        job,
        session,
        &load_name(&filename),
        &opts.dockerfile_key,
        &[filename.clone(), own_ignore.clone()],
        &df_dir,
    )
    .await?;
    // Only the context's ignore file, before the context itself: its
    // patterns (or the Dockerfile's own) decide what to fetch.
    if !df_dir.join(&own_ignore).exists() {
        load_step(
            job,
            session,
            "[internal] load .dockerignore",
            &opts.context_key,
            &[kiln_frontend::CONTEXT_IGNORE_FILE.to_string()],
            &ignore_dir,
        )
        .await?;
    }
    let source = kiln_frontend::read_dockerfile(&df_dir, &filename, &ignore_dir)
        .map_err(|e| frontend_status(&e))?;
    let _ = std::fs::remove_dir_all(&ignore_dir);
    Ok(source)
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
    let source = if opts.remote_context.is_some() {
        remote_dockerfile(engine, job, session, &mut opts, credentials.clone()).await?
    } else {
        definition(d, job, session, &opts).await?
    };
    let layouts = describe_layouts(d, job, session, &opts).await?;
    let images = engine
        .base_images(opts.resolve_mode, credentials)
        .with_oci_stores(layouts.stores());
    Ok(kiln_frontend::check::check(&source, &opts, &images).await)
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
) -> Result<Frontend, Status> {
    let mut opts = FrontendOptions::from_attrs(attrs).map_err(|e| frontend_status(&e))?;
    crate::inputs::check(attrs, inputs)?;
    if opts.lint {
        // Its result is metadata only a gateway client reads.
        return Err(Status::unimplemented(
            "the frontend.lint request outside the gateway API (buildx build --check uses the gateway) is not supported yet",
        ));
    }
    if opts.remote_context.is_some() {
        let source =
            remote_dockerfile(engine, job, session, &mut opts, credentials.clone()).await?;
        return plan(
            d,
            engine,
            job,
            session,
            opts,
            source,
            None,
            inputs,
            credentials,
        )
        .await;
    }
    let source = definition(d, job, session, &opts).await?;
    // A named local context is read with its own `.dockerignore`, fetched
    // alone first, as BuildKit does.
    for local in kiln_frontend::local_contexts(&opts) {
        let dir = fresh_dir(d, job, "dockerignore")?;
        kiln_session::filesync::fetch_dir(
            session.channel.clone(),
            &local,
            &[],
            &[],
            &[kiln_frontend::CONTEXT_IGNORE_FILE.to_string()],
            &dir,
            Default::default(),
        )
        .await
        .map_err(|e| fetch_err(&local, e))?;
        let excludes = kiln_frontend::read_context_ignore(&dir).map_err(|e| frontend_status(&e))?;
        let _ = std::fs::remove_dir_all(&dir);
        kiln_frontend::set_context_excludes(&mut opts, &local, &excludes);
    }
    let context = crate::solve::fetch_local(
        d,
        session,
        &crate::solve::Fetch {
            name: &opts.context_key,
            hint: "",
            includes: &[],
            excludes: &source.excludes,
            follow_paths: &[],
        },
    )
    .await?;
    plan(
        d,
        engine,
        job,
        session,
        opts,
        source,
        Some(context),
        inputs,
        credentials,
    )
    .await
}

/// Fetches a git or HTTP main context with the engine (the client's
/// secrets carry its git credentials) and reads the Dockerfile from it;
/// the fetch shows as the source's own progress steps.
async fn remote_dockerfile(
    engine: &kiln_engine::Engine,
    job: &Job,
    session: &SessionHandle,
    opts: &mut FrontendOptions,
    credentials: std::sync::Arc<dyn kiln_registry::Credentials>,
) -> Result<kiln_frontend::DockerfileSource, Status> {
    let (tx, rx) = kiln_engine::progress::channel();
    let fetch = kiln_frontend::remote::Fetch {
        engine,
        credentials,
        secrets: std::sync::Arc::new(crate::secrets::SessionSecrets::new(Some(session))),
        ssh: std::sync::Arc::new(crate::ssh::SessionSsh::new(Some(session))),
        progress: tx,
        cancel: job.cancel.child_token(),
    };
    let load = async {
        let r = kiln_frontend::remote::load_dockerfile(&fetch, opts).await;
        drop(fetch);
        r
    };
    let (source, ()) = tokio::join!(load, forward_steps(job, rx));
    source.map_err(|e| frontend_status(&e))
}

/// Shows the engine's steps of the frontend's own work (registry lookups,
/// fetching a remote context) as job steps, by name.
async fn forward_steps(job: &Job, mut rx: tokio::sync::mpsc::Receiver<kiln_engine::ProgressEvent>) {
    let mut started = HashMap::new();
    while let Some(e) = rx.recv().await {
        match e {
            kiln_engine::ProgressEvent::Started { name, at, .. } => {
                crate::status::step(job, &name, at, None, None);
                started.insert(name, at);
            }
            kiln_engine::ProgressEvent::Completed {
                name, at, error, ..
            } => {
                let from = started.get(&name).copied().unwrap_or(at);
                crate::status::step(job, &name, from, Some(at), error);
            }
            _ => {}
        }
    }
}

/// Plans the build from the read Dockerfile and fetches the named
/// contexts its graph reads.
#[allow(clippy::too_many_arguments)]
async fn plan(
    d: &Daemon,
    engine: &kiln_engine::Engine,
    job: &Job,
    session: &SessionHandle,
    opts: FrontendOptions,
    source: kiln_frontend::DockerfileSource,
    context: Option<crate::contexts::Held>,
    inputs: &HashMap<String, kiln_proto::llb::Definition>,
    credentials: std::sync::Arc<dyn kiln_registry::Credentials>,
) -> Result<Frontend, Status> {
    let filename = opts.filename.clone();
    let load_name = load_name(&filename);
    let mut layouts = describe_layouts(d, job, session, &opts).await?;
    // Registry lookups show as `[internal] load metadata for <name>`
    // steps, as BuildKit's frontend shows them.
    let (tx, rx) = kiln_engine::progress::channel();
    let images = engine
        .base_images(opts.resolve_mode, credentials)
        .with_oci_stores(layouts.stores())
        .with_progress(tx);
    let pinned = images.pinned();
    let plan = async {
        let r = plan_platforms(&source, &opts, &images).await;
        drop(images);
        r
    };
    let (build, ()) = tokio::join!(plan, forward_steps(job, rx));
    let (mut build, mut targets) = build.map_err(|e| {
        // A Dockerfile error about a line carries it as BuildKit's source
        // detail, so clients print the snippet.
        let line = match &e {
            FrontendError::Dockerfile(p) => p.line(),
            _ => None,
        };
        crate::errdetails::with_line(frontend_status(&e), &filename, source.text.as_bytes(), line)
    })?;
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
    let named = fetch_named(d, session, &build.graph).await?;
    layouts
        .fetch_layers(engine, Some(session), &build.graph)
        .await?;
    Ok(Frontend {
        build,
        context,
        named,
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

/// Every platform the attributes ask for, as one build: a multi-platform
/// build's graphs merged, with each platform's result and config.
async fn plan_platforms(
    source: &kiln_frontend::DockerfileSource,
    opts: &FrontendOptions,
    images: &kiln_engine::build::BaseImages,
) -> Result<
    (
        kiln_dockerfile::Build,
        Vec<kiln_engine::build::PlatformTarget>,
    ),
    FrontendError,
> {
    let mut all = kiln_frontend::plan_all(source, opts, images).await?;
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

/// Fetches the named local contexts the graph reads (every `local://`
/// source but the main context's), each with the exclude patterns the
/// frontend gave its source.
async fn fetch_named(
    d: &Daemon,
    session: &SessionHandle,
    graph: &kiln_solver::Graph,
) -> Result<Vec<(String, crate::contexts::Held)>, Status> {
    let mut named: Vec<(String, crate::contexts::Held)> = Vec::new();
    for v in &graph.vertices {
        let kiln_solver::Op::Source(s) = &v.op else {
            continue;
        };
        let Some(name) = s.identifier.strip_prefix("local://") else {
            continue;
        };
        if name == kiln_frontend::CONTEXT_NAME || named.iter().any(|(n, _)| n == name) {
            continue;
        }
        let excludes: Vec<String> = s
            .attrs
            .get("local.excludepatterns")
            .and_then(|j| serde_json::from_str(j).ok())
            .unwrap_or_default();
        let held = crate::solve::fetch_local(
            d,
            session,
            &crate::solve::Fetch {
                name,
                hint: "",
                includes: &[],
                excludes: &excludes,
                follow_paths: &[],
            },
        )
        .await?;
        named.push((name.to_string(), held));
    }
    Ok(named)
}
