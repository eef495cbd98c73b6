//! Turning what a client asked for (an LLB definition or the Dockerfile
//! frontend) into a solved result held under a build lease.

use crate::jobs::Job;
use crate::sessions::SessionHandle;
use crate::state::{status_of, Daemon};
use kiln_engine::build::{BuildRequest, Solved};
use kiln_proto::llb;
use kiln_snapshot::diff::Compression;
use kiln_solver::{Digest, Graph, ImageConfig, Op};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use tonic::Status;

/// What to solve.
pub enum Input<'a> {
    Definition(&'a llb::Definition),
    /// The frontend attributes and the frontend inputs (`crate::inputs`).
    Dockerfile(
        &'a HashMap<String, String>,
        &'a HashMap<String, llb::Definition>,
    ),
    /// A frontend image (`gateway.v0`, `source` in the attributes:
    /// `crate::frontendimage`), with its attributes and inputs.
    Gateway(
        &'a HashMap<String, String>,
        &'a HashMap<String, llb::Definition>,
    ),
}

/// The directory where a job's local sources land:
/// `<root>/sessions/<this process>/<sha256 of the ref>`. Refs are strings a
/// client chooses, so they never become a path component themselves (two
/// refs cannot collide and none can climb out); the process level lets the
/// startup sweep of a later kilnd remove what a dead one left.
pub fn job_dir(d: &Daemon, job: &Job) -> PathBuf {
    d.config
        .root
        .join(kiln_engine::sweep::SESSIONS_DIR)
        .join(kiln_engine::sweep::owner_dir_name())
        .join(Digest::of(job.id.as_bytes()).hex())
}

/// Input digests of each vertex (for Status).
fn vertex_inputs(graph: &Graph, digests: &[Digest]) -> Vec<Vec<String>> {
    graph
        .vertices
        .iter()
        .map(|v| {
            v.inputs
                .iter()
                .map(|e| digests[e.vertex.0].to_string())
                .collect()
        })
        .collect()
}

/// The client's local directory `name` to read, where its files went.
pub struct Fetch<'a> {
    pub name: &'a str,
    /// The source's `local.sharedkeyhint` (part of the kept context's key).
    pub hint: &'a str,
    pub includes: &'a [String],
    pub excludes: &'a [String],
    pub follow_paths: &'a [String],
}

/// Receives the client's local directory into its kept context (see
/// `crate::contexts`): only what changed since the last build of the same
/// tenant, session shared key and name is transferred. The context is the
/// caller's until the returned slot is dropped.
pub async fn fetch_local(
    d: &Daemon,
    engine: &kiln_engine::Engine,
    session: &SessionHandle,
    f: &Fetch<'_>,
) -> Result<crate::contexts::Held, Status> {
    let contexts = d.contexts.clone();
    let (tenant, shared_key, hint, name) = (
        session.tenant.clone(),
        session.shared_key.clone(),
        f.hint.to_string(),
        f.name.to_string(),
    );
    let mut held = tokio::task::spawn_blocking(move || {
        // Old and surplus contexts go as builds start.
        contexts.prune();
        contexts.acquire(&crate::contexts::ContextKey {
            tenant: tenant.as_deref(),
            shared_key: &shared_key,
            hint: &hint,
            name: &name,
        })
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))?
    .map_err(|e| Status::internal(format!("cannot prepare the context for {:?}: {e}", f.name)))?;
    let opts = kiln_session::fsutil::ReceiveOptions {
        incremental: held.incremental(),
        digests: true,
        ..Default::default()
    };
    let started = std::time::SystemTime::now();
    let mut stats = kiln_session::filesync::fetch_dir(
        session.channel.clone(),
        f.name,
        f.includes,
        f.excludes,
        f.follow_paths,
        &held.tree(),
        opts,
    )
    .await
    .map_err(|e| {
        Status::new(
            e.kind().code(),
            format!(
                "failed to read local {:?}: {}",
                f.name,
                kiln_engine::error::error_chain(&e)
            ),
        )
    })?;
    held.received(&stats, started)
        .map_err(|e| Status::internal(format!("cannot record the context {:?}: {e}", f.name)))?;
    // The receiver hashed what arrived: the context's hash cache takes
    // those digests instead of reading the files again.
    let (hashes, tree, digests) = (
        engine.hash_cache().clone(),
        held.tree(),
        std::mem::take(&mut stats.digests),
    );
    let _ = tokio::task::spawn_blocking(move || hashes.record_received(&tree, &digests)).await;
    // The transfer's counts, at info: what a rebuild cost is visible (and
    // tests read `files`, the files whose content was sent).
    tracing::info!(
        local = f.name,
        incremental = opts.incremental,
        entries = stats.entries,
        files = stats.files,
        bytes = stats.bytes,
        kept = stats.kept,
        removed = stats.removed,
        "received local directory"
    );
    Ok(held)
}

/// The transfer of each `local://NAME` source of `graph` that `held`
/// received (`locals` names their trees), for its vertex's progress.
fn transfers(
    graph: &Graph,
    locals: &HashMap<String, PathBuf>,
    held: &[crate::contexts::Held],
) -> Vec<crate::status::Transfer> {
    graph
        .vertices
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let Op::Source(s) = &v.op else { return None };
            let name = s.identifier.strip_prefix("local://")?;
            let tree = locals.get(&s.local_key()?)?;
            let h = held.iter().find(|h| h.tree() == *tree)?;
            Some(crate::status::Transfer::new(
                i,
                name,
                h.transferred(),
                h.span(),
            ))
        })
        .collect()
}

/// What the local sources of a graph named `name` ask of the client's
/// directory, from their attributes (`local.followpaths`,
/// `local.includepatterns`, `local.excludepatterns`,
/// `local.sharedkeyhint`). A graph may hold several sources of one name
/// (a multi-platform build's, one per platform, may read different
/// paths): one transfer serves them all, so it sends what any of them
/// reads, and everything when one of them is not limited.
#[derive(Debug, Default, PartialEq)]
struct LocalRequest {
    hint: String,
    includes: Vec<String>,
    excludes: Vec<String>,
    follow_paths: Vec<String>,
}

impl LocalRequest {
    fn of(s: &kiln_solver::SourceOp) -> LocalRequest {
        let filter = s.local_filter();
        LocalRequest {
            hint: s
                .attrs
                .get("local.sharedkeyhint")
                .cloned()
                .unwrap_or_default(),
            includes: filter.includes,
            excludes: filter.excludes,
            follow_paths: filter.follow_paths,
        }
    }

    /// Whether the whole directory (less its excludes) is asked for.
    fn is_whole(&self) -> bool {
        self.includes.is_empty() && self.follow_paths.is_empty()
    }

    /// This request widened to serve `other` too.
    fn merge(&mut self, other: LocalRequest) {
        if self.is_whole() || other.is_whole() {
            self.includes.clear();
            self.follow_paths.clear();
        } else {
            for p in other.includes {
                if !self.includes.contains(&p) {
                    self.includes.push(p);
                }
            }
            for p in other.follow_paths {
                if !self.follow_paths.contains(&p) {
                    self.follow_paths.push(p);
                }
            }
        }
        // Each source filters its own excludes again when read
        // (`Ref::Local`); the transfer excludes only what all exclude.
        if self.excludes != other.excludes {
            self.excludes.clear();
        }
    }
}

/// The local sources of `graph` by [`kiln_solver::SourceOp::local_key`]
/// (a name, and the session it names), in the order they first appear,
/// each with its name, its session and what its sources ask for.
fn local_requests(graph: &Graph) -> Vec<(String, LocalSource)> {
    let mut out: Vec<(String, LocalSource)> = Vec::new();
    for v in &graph.vertices {
        let Op::Source(s) = &v.op else { continue };
        let (Some(name), Some(key)) = (s.identifier.strip_prefix("local://"), s.local_key()) else {
            continue;
        };
        let req = LocalRequest::of(s);
        match out.iter_mut().find(|(k, _)| *k == key) {
            Some((_, r)) => r.request.merge(req),
            None => out.push((
                key,
                LocalSource {
                    name: name.to_string(),
                    session: s.local_session().map(str::to_string),
                    request: req,
                },
            )),
        }
    }
    out
}

/// One client directory a graph reads: its name, the session that serves
/// it (`None`: the build's own) and what its sources ask of it.
#[derive(Debug, PartialEq)]
struct LocalSource {
    name: String,
    session: Option<String>,
    request: LocalRequest,
}

/// The session `id` (the client's id) a local source names
/// (`local.session`; buildx's `local-sessionid:NAME`): the build's own
/// (`own`, keyed `own_key`), or another attached one of the same tenant
/// (buildx shares one between bake targets). Ids are the tenant's own:
/// another tenant's session is never found.
pub async fn local_session(
    d: &Daemon,
    own: &SessionHandle,
    own_key: &str,
    id: &str,
) -> Result<SessionHandle, Status> {
    let key = crate::tenants::scoped(own.tenant.as_deref(), id);
    if key == own_key {
        return Ok(own.clone());
    }
    match d.sessions.get(&key, SESSION_WAIT).await {
        Some(s) if s.tenant == own.tenant => Ok(s),
        // Another tenant's session is not found, as its builds are not.
        _ => Err(Status::failed_precondition(format!(
            "no active session for {id}: the session a local source names is not attached"
        ))),
    }
}

/// How long a build waits for a session its local sources name.
const SESSION_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Fetches every `local://NAME` source of `graph` through the session it
/// names (`own`, keyed `own_key`, unless `local.session` names another
/// one), each as its attributes ask (see [`LocalRequest`]); `main_context`
/// names the client's directory of `local://context` when it is not
/// `context` (the Dockerfile frontend's `contextkey`). The directories are
/// keyed by [`kiln_solver::SourceOp::local_key`]; the slots hold the kept
/// contexts until the build no longer reads them.
pub async fn fetch_locals(
    d: &Daemon,
    engine: &kiln_engine::Engine,
    session: Option<&SessionHandle>,
    own_key: &str,
    graph: &Graph,
    main_context: Option<&str>,
) -> Result<(HashMap<String, PathBuf>, Vec<crate::contexts::Held>), Status> {
    let mut locals = HashMap::new();
    let mut held = Vec::new();
    for (key, src) in local_requests(graph) {
        let name = src.name.as_str();
        let own = session.ok_or_else(|| {
            Status::failed_precondition(format!("local source {name:?} needs a session"))
        })?;
        let from = match &src.session {
            Some(id) => local_session(d, own, own_key, id).await?,
            None => own.clone(),
        };
        let dir = match main_context {
            Some(key) if name == kiln_frontend::CONTEXT_NAME => key,
            _ => name,
        };
        let req = &src.request;
        let slot = fetch_local(
            d,
            engine,
            &from,
            &Fetch {
                name: dir,
                hint: &req.hint,
                includes: &req.includes,
                excludes: &req.excludes,
                follow_paths: &req.follow_paths,
            },
        )
        .await?;
        locals.insert(key, slot.tree());
        held.push(slot);
    }
    Ok((locals, held))
}

/// Names the client session of each of the Dockerfile frontend's local
/// sources, as BuildKit's frontend does (`local.session`): the one
/// `local-sessionid:DIR` gives for its directory, else the build's own
/// (`own_id`, the client's id of it). The main context's source is renamed after its directory
/// (`contextkey`), so the graph's definition (`Ref.def`) names what it
/// reads. Sources that name a session already (a frontend input's) keep it.
pub fn name_local_sessions(
    graph: &mut Graph,
    own_id: &str,
    named: &std::collections::BTreeMap<String, String>,
    context_key: &str,
) {
    for v in &mut graph.vertices {
        let Op::Source(s) = &mut v.op else { continue };
        let Some(name) = s.identifier.strip_prefix("local://") else {
            continue;
        };
        if s.local_session().is_some() {
            continue;
        }
        let dir = if name == kiln_frontend::CONTEXT_NAME {
            context_key.to_string()
        } else {
            name.to_string()
        };
        let session = named.get(&dir).map_or(own_id, String::as_str);
        if session.is_empty() {
            continue;
        }
        s.attrs.insert(
            kiln_solver::ATTR_LOCAL_SESSION.to_string(),
            session.to_string(),
        );
        s.identifier = format!("local://{dir}");
    }
}

/// Solves `input` for `job`, forwarding progress to the job's Status.
pub async fn solve(
    d: &Arc<Daemon>,
    engine: &kiln_engine::Engine,
    job: &Arc<Job>,
    session: Option<&SessionHandle>,
    input: Input<'_>,
    compression: Compression,
) -> Result<(Solved, Option<ImageConfig>), Status> {
    let (solved, config, _) =
        solve_defined(d, engine, job, session, input, compression, false).await?;
    Ok((solved, config))
}

/// [`solve`], and with `definitions` the LLB definition of what was
/// solved (`crate::definition`): the client's own definition, or one per
/// platform of what the frontend planned, in the order of the result's
/// platforms (one for a single platform).
pub async fn solve_defined(
    d: &Arc<Daemon>,
    engine: &kiln_engine::Engine,
    job: &Arc<Job>,
    session: Option<&SessionHandle>,
    input: Input<'_>,
    compression: Compression,
    definitions: bool,
) -> Result<(Solved, Option<ImageConfig>, Vec<llb::Definition>), Status> {
    if let Input::Gateway(attrs, inputs) = input {
        return Box::pin(crate::frontendimage::solve(
            d,
            job,
            session,
            attrs,
            inputs,
            compression,
        ))
        .await;
    }
    let mut defined = Vec::new();
    // The build's session as sessions are keyed, and as its client knows
    // it (what a definition's `local.session` holds).
    let own_key = job
        .session
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let own_id =
        crate::tenants::unscoped(session.and_then(|s| s.tenant.as_deref()), &own_key).to_string();
    let dir = job_dir(d, job);
    kiln_engine::sweep::create_private_dir(&dir)
        .map_err(|e| Status::internal(format!("create {}: {e}", dir.display())))?;
    // The client's registry logins, asked through its session when a
    // registry wants them (anonymous without an Auth service).
    let credentials: Arc<dyn kiln_registry::Credentials> =
        Arc::new(crate::registry::SessionCredentials::new(session));
    // The client's policy, if it serves one, resolves what it asks to see
    // of a source as the build would.
    let policy_engine = job.engine(engine);
    let policy = crate::policy::Resolver {
        engine: &policy_engine,
        credentials: credentials.clone(),
    };
    let mut resolve_mode = kiln_engine::resolve::ResolveMode::Default;
    let mut pinned = kiln_engine::resolve::Pinned::default();
    let mut targets = Vec::new();
    let (graph, result, digests, config, locals, held, sources, layouts) = match input {
        Input::Definition(def) => {
            let t =
                crate::llb::translate(def).map_err(|e| Status::invalid_argument(e.to_string()))?;
            let Some(result) = t.result else {
                return Err(Status::invalid_argument("the definition has no result"));
            };
            crate::policy::check(d, job, &policy, &t.graph).await?;
            let (locals, held) = fetch_locals(d, engine, session, &own_key, &t.graph, None).await?;
            let mut layouts = crate::ocilayout::Layouts::new(&dir);
            layouts
                .fetch_layers(
                    engine,
                    &crate::ocilayout::LayoutSessions::of(d, job, session),
                    &t.graph,
                )
                .await?;
            let sources = crate::errdetails::SourceMap::definition(def, &t.digests);
            if definitions {
                defined.push(def.clone());
            }
            (
                t.graph, result, t.digests, None, locals, held, sources, layouts,
            )
        }
        Input::Gateway(..) => unreachable!("answered above"),
        Input::Dockerfile(attrs, inputs) => {
            let session = session.ok_or_else(|| {
                Status::failed_precondition("the dockerfile frontend needs a session")
            })?;
            let planned = crate::frontend::dockerfile(
                d,
                engine,
                job,
                session,
                attrs,
                inputs,
                credentials.clone(),
            )
            .await?;
            let mut f = match planned {
                crate::frontend::Planned::Graph(f) => *f,
                // `# syntax=IMAGE`: BuildKit's Dockerfile frontend hands
                // the build to that image.
                crate::frontend::Planned::Forward(attrs) => {
                    return Box::pin(crate::frontendimage::solve(
                        d,
                        job,
                        Some(session),
                        &attrs,
                        inputs,
                        compression,
                    ))
                    .await;
                }
            };
            resolve_mode = f.resolve_mode;
            pinned = f.pinned;
            targets = f.targets;
            name_local_sessions(
                &mut f.build.graph,
                &own_id,
                &f.local_sessions,
                &f.context_key,
            );
            crate::policy::check(d, job, &policy, &f.build.graph).await?;
            let digests = f.build.graph.definition_digests();
            // The contexts as the graph reads them: only the paths its
            // sources follow (BuildKit's frontend asks the same). A remote
            // main context is a source op of the graph instead.
            let (locals, held) = fetch_locals(
                d,
                engine,
                Some(session),
                &own_key,
                &f.build.graph,
                Some(&f.context_key),
            )
            .await?;
            if definitions {
                let results: Vec<_> = if targets.is_empty() {
                    vec![f.build.result]
                } else {
                    targets.iter().map(|t| t.result).collect()
                };
                defined = results
                    .into_iter()
                    .map(|r| crate::definition::of_vertex(&f.build.graph, r, Some(&f.source)))
                    .collect();
            }
            let sources = crate::errdetails::SourceMap::dockerfile(f.source, &f.build.graph);
            (
                f.build.graph,
                f.build.result,
                digests,
                Some(f.build.config),
                locals,
                held,
                sources,
                f.layouts,
            )
        }
    };
    // A step needing an entitlement the build was not granted fails the
    // build here, before any step runs (host network, insecure mode), with
    // BuildKit's text (its LLB loader's, with no place in the file).
    job.entitlements
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .check_graph(&graph)
        .map_err(|e| match e {
            kiln_engine::entitlements::EntitlementError::NotAllowed { entitlement, .. } => {
                Status::unknown(format!("failed to load LLB: {entitlement} is not allowed"))
            }
            e => Status::new(e.kind().code(), e.to_string()),
        })?;
    let inputs = vertex_inputs(&graph, &digests);
    // Announce every vertex the result needs up front, as BuildKit does, so
    // clients know the total before steps start (every platform's).
    let mut needed = graph.needed_for(result);
    for t in &targets {
        needed.extend(graph.needed_for(t.result));
    }
    needed.sort();
    needed.dedup();
    job.publish(kiln_proto::control::StatusResponse {
        vertexes: needed
            .into_iter()
            .map(|v| kiln_proto::control::Vertex {
                digest: digests[v.0].to_string(),
                inputs: inputs[v.0].clone(),
                name: graph.vertex(v).name.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    });
    // Bounded: the forwarder only records into the job (never waits on a
    // client), so the engine is slowed only by a stuck daemon, not a slow
    // Status reader.
    let mut transfers = transfers(&graph, &locals, &held);
    transfers.extend(layouts.transfers());
    let (progress, rx) = kiln_engine::progress::channel();
    let forward = tokio::spawn(crate::status::forward(
        rx,
        digests.clone(),
        inputs,
        transfers,
        job.clone(),
    ));
    let cache = job.cache.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // The client's local cache directories, staged below the job's.
    let cache = crate::cache::stage(cache, engine, session, &dir).await?;
    let req = BuildRequest {
        graph,
        result,
        config: config.clone().unwrap_or_default(),
        locals,
        // The copies of the client's OCI layouts (`crate::ocilayout`).
        oci_stores: layouts.stores(),
        names: Vec::new(),
        compression,
        cache_imports: cache.imports,
        cache_exports: cache.exports,
        credentials,
        resolve_mode,
        pinned,
        // kilnd pushes from its exporter (`push.rs`), with the session's
        // credentials; the engine's own push is for the embedded CLI.
        push: None,
        secrets: Arc::new(crate::secrets::SessionSecrets::new(session)),
        ssh: Arc::new(crate::ssh::SessionSsh::new(session)),
        uploads: Arc::new(crate::uploads::SessionUploads::new(session)),
        // kilnd's exporters clamp layer times themselves (`export.rs`).
        rewrite_timestamp: false,
        export_blobs: *job.export_blobs.lock().unwrap_or_else(|p| p.into_inner())
            == Some(compression),
        annotations: Default::default(),
        media_types: Default::default(),
        force_compression: false,
        // kilnd's exporters take their level themselves (`export.rs`).
        compression_level: Default::default(),
    };
    // The engine runs in a task of its own: the caller (a Control.Solve or
    // LLBBridge.Solve handler) is dropped when its client goes away, and a
    // dropped engine future would leave the running step's task, container,
    // mounts and build lease behind. Dropping the caller cancels the solve
    // instead, and a result nobody waits for any more is released.
    let cancel = job.cancel.child_token();
    let stop_on_drop = cancel.clone().drop_guard();
    let (done_tx, done_rx) = tokio::sync::oneshot::channel();
    let engine = job.engine(engine);
    let counted = job.solving();
    tokio::spawn(async move {
        let solved = if targets.is_empty() {
            engine.solve(&req, progress, cancel).await
        } else {
            engine.solve_index(&req, targets, progress, cancel).await
        };
        // The steps have read the contexts: another build may update them.
        drop(held);
        let failed = forward.await.ok().flatten();
        if let Err((Ok(orphan), _)) = done_tx.send((solved, failed)) {
            orphan.release(true).await;
        }
        drop(counted);
    });
    let (solved, failed) = done_rx
        .await
        .map_err(|_| Status::internal("the build task ended without an answer"))?;
    stop_on_drop.disarm();
    match solved {
        Ok(s) => Ok((s, config, defined)),
        // The failed step's digest and source ranges go with the error, so
        // buildctl and buildx print its Dockerfile lines.
        Err(e) => Err(match failed {
            Some(v) => crate::errdetails::with_details(
                status_of(&e),
                digests
                    .get(v)
                    .map(|d| kiln_proto::errdefs::Vertex {
                        digest: d.to_string(),
                    })
                    .as_ref(),
                &sources.sources(v),
            ),
            None => status_of(&e),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_solver::{SourceOp, Vertex};

    fn local(name: &str, attrs: &[(&str, &str)]) -> Vertex {
        Vertex {
            op: Op::Source(SourceOp {
                identifier: format!("local://{name}"),
                attrs: attrs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                platform: None,
            }),
            inputs: Vec::new(),
            name: String::new(),
            location: None,
            ignore_cache: false,
        }
    }

    fn requests(vertices: Vec<Vertex>) -> Vec<(String, LocalRequest)> {
        let mut g = Graph::default();
        for v in vertices {
            g.add(v).expect("no inputs");
        }
        local_requests(&g)
            .into_iter()
            .map(|(k, s)| (k, s.request))
            .collect()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn one_transfer_per_name_sends_what_any_of_its_sources_reads() {
        let ex = ("local.excludepatterns", r#"["*.md"]"#);
        let got = requests(vec![
            local("context", &[("local.followpaths", r#"["a","b"]"#), ex]),
            local("other", &[("local.includepatterns", r#"["x/*"]"#)]),
            local("context", &[("local.followpaths", r#"["b","c"]"#), ex]),
        ]);
        assert_eq!(
            got,
            vec![
                (
                    "context".to_string(),
                    LocalRequest {
                        follow_paths: strings(&["a", "b", "c"]),
                        excludes: strings(&["*.md"]),
                        ..Default::default()
                    }
                ),
                (
                    "other".to_string(),
                    LocalRequest {
                        includes: strings(&["x/*"]),
                        ..Default::default()
                    }
                ),
            ]
        );
    }

    #[test]
    fn a_source_reading_everything_or_other_excludes_widens_the_transfer() {
        let got = requests(vec![
            local(
                "context",
                &[
                    ("local.followpaths", r#"["a"]"#),
                    ("local.excludepatterns", r#"["*.md"]"#),
                ],
            ),
            local("context", &[]),
        ]);
        assert_eq!(got, vec![("context".to_string(), LocalRequest::default())]);
    }

    /// One name in two sessions is two directories; sources naming one
    /// session share its transfer.
    #[test]
    fn a_local_source_is_keyed_by_its_name_and_session() {
        let mut g = Graph::default();
        for v in [
            local("context", &[("local.session", "s1")]),
            local("context", &[("local.session", "s2")]),
            local("context", &[("local.session", "s1")]),
            local("context", &[]),
        ] {
            g.add(v).expect("no inputs");
        }
        let got: Vec<(String, String, Option<String>)> = local_requests(&g)
            .into_iter()
            .map(|(k, s)| (k, s.name, s.session))
            .collect();
        let some = |s: &str| Some(s.to_string());
        assert_eq!(
            got,
            vec![
                ("context\u{0}s1".into(), "context".into(), some("s1")),
                ("context\u{0}s2".into(), "context".into(), some("s2")),
                ("context".into(), "context".into(), None),
            ]
        );
    }

    /// The frontend's local sources name the session of their directory
    /// (`local-sessionid:DIR`, else the build's own); the main context is
    /// named after its directory; a source naming a session keeps it.
    #[test]
    fn the_frontends_local_sources_name_their_session() {
        let mut g = Graph::default();
        for v in [
            local("context", &[]),
            local("shared", &[]),
            local("other", &[("local.session", "input")]),
        ] {
            g.add(v).expect("no inputs");
        }
        let named = std::collections::BTreeMap::from([("shared".to_string(), "s9".to_string())]);
        name_local_sessions(&mut g, "own", &named, "ctxdir");
        let got: Vec<(String, Option<&str>)> = g
            .vertices
            .iter()
            .map(|v| match &v.op {
                Op::Source(s) => (s.identifier.clone(), s.local_session()),
                _ => unreachable!("sources only"),
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("local://ctxdir".to_string(), Some("own")),
                ("local://shared".to_string(), Some("s9")),
                ("local://other".to_string(), Some("input")),
            ]
        );
    }
}
