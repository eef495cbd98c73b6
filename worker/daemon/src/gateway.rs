//! The `moby.buildkit.v1.frontend.LLBBridge` service: the gateway flow that
//! buildctl ≥ 0.11 and buildx use. The client drives the frontend here
//! (Ping, Solve with `dockerfile.v0` or a definition, Return); the waiting
//! Control.Solve then exports the returned result.

use crate::jobs::{Found, GatewayResult, Job};
use crate::solve::{solve_defined, Input};
use crate::state::Daemon;
use crate::tenants::Tenant;
use kiln_proto::apicaps::ApiCap;
use kiln_proto::gateway::llb_bridge_server::LlbBridge;
use kiln_proto::gateway::{
    result, EvaluateRequest, EvaluateResponse, InputsRequest, InputsResponse, PingRequest,
    PongResponse, ReadDirRequest, ReadDirResponse, ReadFileRequest, ReadFileResponse, Ref, RefMap,
    ResolveImageConfigRequest, ResolveImageConfigResponse, Result as GwResult, ReturnRequest,
    ReturnResponse, SolveRequest, SolveResponse, StatFileRequest, StatFileResponse, WarnRequest,
    WarnResponse,
};
use kiln_snapshot::diff::Compression;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tonic::{Request, Response, Status};

/// How long a gateway call waits for Control.Solve to register its build.
const JOB_WAIT: Duration = Duration::from_secs(3);
/// How long it waits for the build's session.
const SESSION_WAIT: Duration = Duration::from_secs(5);

pub struct GatewayService(pub Arc<Daemon>);

impl GatewayService {
    /// The `frontend.lint` subrequest: the build checks' result as the
    /// metadata buildx reads (`result.json`, `result.txt`,
    /// `result.statuscode`), with no ref.
    async fn lint(
        &self,
        tenant: &Tenant,
        job: &Arc<Job>,
        session: Option<&crate::sessions::SessionHandle>,
        r: &SolveRequest,
    ) -> Result<Response<SolveResponse>, Status> {
        let (session, credentials) = frontend_session(session)?;
        let report = crate::frontend::lint(
            &self.0,
            &tenant.engine,
            job,
            session,
            &r.frontend_opt,
            credentials,
        )
        .await?;
        Ok(metadata_response(bytes(report.metadata())))
    }
}

impl GatewayService {
    /// The targets request (`buildx build --call=targets`): the stages
    /// as BuildKit's `targets.List` metadata.
    async fn targets(
        &self,
        tenant: &Tenant,
        job: &Arc<Job>,
        session: Option<&crate::sessions::SessionHandle>,
        r: &SolveRequest,
    ) -> Result<Response<SolveResponse>, Status> {
        let (session, credentials) = frontend_session(session)?;
        let list = crate::frontend::targets(
            &self.0,
            &tenant.engine,
            job,
            session,
            &r.frontend_opt,
            credentials,
        )
        .await?;
        Ok(metadata_response(bytes(
            kiln_frontend::check::answer_metadata(
                list.json(),
                list.text(),
                kiln_frontend::targets::TARGETS_VERSION,
                None,
            ),
        )))
    }
}

impl GatewayService {
    /// The outline request (`buildx build --call=outline`): what the
    /// target takes from its caller, as BuildKit's `outline.Outline`
    /// metadata.
    async fn outline(
        &self,
        tenant: &Tenant,
        job: &Arc<Job>,
        session: Option<&crate::sessions::SessionHandle>,
        r: &SolveRequest,
    ) -> Result<Response<SolveResponse>, Status> {
        let (session, credentials) = frontend_session(session)?;
        let o = crate::frontend::outline(
            &self.0,
            &tenant.engine,
            job,
            session,
            &r.frontend_opt,
            credentials,
        )
        .await?;
        Ok(metadata_response(bytes(
            kiln_frontend::check::answer_metadata(
                o.json(),
                o.text(),
                kiln_frontend::outline::OUTLINE_VERSION,
                None,
            ),
        )))
    }
}

/// The session a frontend subrequest reads the Dockerfile through, and
/// the registry credentials it lends.
fn frontend_session(
    session: Option<&crate::sessions::SessionHandle>,
) -> Result<
    (
        &crate::sessions::SessionHandle,
        Arc<dyn kiln_registry::Credentials>,
    ),
    Status,
> {
    let session = session
        .ok_or_else(|| Status::failed_precondition("the dockerfile frontend needs a session"))?;
    let credentials: Arc<dyn kiln_registry::Credentials> =
        Arc::new(crate::registry::SessionCredentials::new(Some(session)));
    Ok((session, credentials))
}

/// A subrequest's answer ([`kiln_frontend::check::answer_metadata`]) as
/// the result's metadata bytes.
fn bytes(m: std::collections::BTreeMap<String, String>) -> HashMap<String, Vec<u8>> {
    m.into_iter().map(|(k, v)| (k, v.into_bytes())).collect()
}

/// A result that is only metadata, with no ref.
fn metadata_response(metadata: HashMap<String, Vec<u8>>) -> Response<SolveResponse> {
    Response::new(SolveResponse {
        r#ref: String::new(),
        result: Some(GwResult {
            metadata,
            ..Default::default()
        }),
    })
}

/// The gateway API capabilities kiln implements (BuildKit's ids,
/// frontend/gateway/pb's caps). A solve is never lazy here, so a solve
/// that asks to be evaluated (`gateway.solve.evaluate`) and `Evaluate`
/// itself hold by construction. buildx reads a remote context's policy
/// file through `statfile` and `readfile`, and refuses without them.
/// A client's `Warn` becomes a warning of the build's status.
/// Every returned ref carries the LLB definition of what it holds
/// (`reference.output`, `crate::definition`), which buildx needs to turn a
/// bake target's result into another target's context.
/// Not listed, because kiln does not do them yet: containers
/// (`gateway.exec*`), the source meta resolver and cache imports.
const FRONTEND_CAPS: &[&str] = &[
    "solve.base",
    "return",
    "returnmap",
    "proto.refarray",
    "reference.output",
    "readfile",
    "readdir",
    "statfile",
    "gateway.evaluate",
    "gateway.solve.evaluate",
    "gateway.warnings",
    // For named contexts (`context:NAME=input:X`); a result as the main
    // context is refused by name (`context_from_inputs`).
    "frontend.inputs",
    // Base image configs for frontend images (`resolve_image_config`).
    "resolveimage",
    "resolveimage.resolvemode",
];

/// The LLB capabilities kiln can build: BuildKit's ids (solver/pb's
/// caps), each one only if `llb.rs` maps the feature and the engine runs
/// it. Clients gate features on these (buildx refuses a git context
/// unless `source.git` is listed), so a cap listed here and not
/// implemented would turn a clear refusal into a wrong build.
/// Not listed, because kiln does not do them yet: the http auth
/// secrets, git ssh known hosts and socket, signature checks, image blobs,
/// cgroup parents, CDI devices, linux resources,
/// `alwaysReplaceExistingDestPaths`, rm's `noFollowSymlink`, diff ops,
/// content-cached mounts and per-vertex cache export switches.
const LLB_CAPS: &[&str] = &[
    "source.image",
    "source.image.resolvemode",
    "source.local",
    "source.local.unique",
    "source.local.sessionid",
    "source.local.includepatterns",
    "source.local.excludepatterns",
    "source.local.followpaths",
    "source.local.sharedkeyhint",
    "source.local.differ",
    "source.git",
    "source.git.keepgitdir",
    "source.git.fullurl",
    // Token and header secrets (GIT_AUTH_TOKEN / GIT_AUTH_HEADER) from
    // the client's session.
    "source.git.httpauth",
    // Over ssh with the client's forwarded agent (git.mountsshsock), host
    // keys pinned by git.knownsshhosts.
    "source.git.knownsshhosts",
    "source.git.mountsshsock",
    "source.git.subdir",
    "source.git.checksum",
    "source.git.skipsubmodules",
    "source.git.mtime",
    "source.git.fetchbycommit",
    "source.http",
    "source.http.checksum",
    // From the client's session content store `oci:NAME` (`ocilayout.rs`).
    "source.ocilayout",
    "source.http.perm",
    // The client's build policy, asked about every source (`policy.rs`);
    // buildx's `--policy strict=true` needs it.
    "source.policy.session",
    // BuildKit's own spelling of this id.
    "soruce.http.uidgid",
    "exec.meta.base",
    "exec.meta.network",
    "exec.meta.proxyenv",
    "exec.meta.security",
    "exec.meta.ulimit",
    // cgroup limits of an exec (its metadata's `linux_resources`).
    "exec.meta.linux.resources",
    "exec.meta.removemountstubs.recursive",
    "exec.mount.bind",
    "exec.mount.selector",
    "exec.mount.cache",
    "exec.mount.cache.sharing",
    "exec.mount.tmpfs",
    "exec.mount.tmpfs.size",
    "exec.mount.secret",
    "exec.mount.ssh",
    "exec.secretenv",
    "exec.validexitcode",
    "file.base",
    "file.rm.wildcard",
    "file.copy.includeexcludepatterns",
    "file.copy.requiredpaths",
    "file.copy.modestring",
    "file.symlink.create",
    "constraints",
    "platform",
    "meta.ignorecache",
    "meta.description",
    "mergeop",
    "exporter.image.annotations",
    "exporter.multiple",
];

fn caps(ids: &[&str]) -> Vec<ApiCap> {
    ids.iter()
        .map(|id| ApiCap {
            id: id.to_string(),
            enabled: true,
            ..Default::default()
        })
        .collect()
}

/// Takes the main context of a `dockerfile.v0` solve back from its
/// frontend inputs. buildx sends a git context with a query
/// (`BUILDX_SEND_GIT_QUERY_AS_INPUT`) as the git state it made from the
/// URL, with the URL in `input:context` and no `context` attribute; kiln
/// fetches that URL itself, with the same build arguments, so the attribute
/// is put back. Inputs that named contexts read (`context:NAME=input:X`,
/// bake's `target:` contexts) stay for the frontend (`crate::inputs`);
/// any other input (a build result as the main context) is refused by
/// name.
pub fn context_from_inputs(
    frontend_opt: &mut HashMap<String, String>,
    frontend_inputs: &mut HashMap<String, kiln_proto::llb::Definition>,
) -> Result<(), Status> {
    if frontend_inputs.is_empty() {
        return Ok(());
    }
    let context = frontend_inputs.get("context");
    let git_state = context.is_some()
        && frontend_inputs.len() <= 2
        && frontend_inputs
            .iter()
            .all(|(k, v)| k == "context" || k == "dockerfile" && Some(v) == context)
        && !frontend_opt.contains_key("context");
    match frontend_opt.get("input:context").cloned() {
        Some(url) if git_state => {
            frontend_opt.remove("input:context");
            frontend_opt.insert("context".to_string(), url);
            frontend_inputs.clear();
            Ok(())
        }
        _ => {
            let read: Vec<&str> = frontend_opt
                .iter()
                .filter(|(k, _)| k.starts_with("context:"))
                .filter_map(|(_, v)| v.strip_prefix("input:"))
                .collect();
            let mut names: Vec<&str> = frontend_inputs
                .keys()
                .map(String::as_str)
                .filter(|n| !read.contains(n))
                .collect();
            if names.is_empty() {
                return Ok(());
            }
            names.sort_unstable();
            Err(Status::unimplemented(format!(
                "frontend inputs ({}) are not supported yet: a context is a URL or the \
                 client's files, not a build result",
                names.join(", ")
            )))
        }
    }
}

/// The ref ids a returned result points at (none for an empty result).
fn returned_refs(r: &GwResult) -> Vec<&str> {
    let ids: Vec<&str> = match r.result.as_ref() {
        None => Vec::new(),
        Some(result::Result::Ref(rf)) => vec![rf.id.as_str()],
        Some(result::Result::RefDeprecated(id)) => vec![id.as_str()],
        Some(result::Result::Refs(m)) => m.refs.values().map(|r| r.id.as_str()).collect(),
        Some(result::Result::RefsDeprecated(m)) => m.refs.values().map(String::as_str).collect(),
    };
    ids.into_iter().filter(|i| !i.is_empty()).collect()
}

/// Takes the held solve a client's returned result names out of the
/// job's results, for Control.Solve to export; `None` for an empty
/// result. A multi-platform result goes whole, named by all its
/// platforms' refs (BuildKit's `refs`) or by its own id, and exports an
/// index; a part of it, or refs of several solves, is refused by name.
pub async fn take_returned(job: &Job, r: &GwResult) -> Result<Option<GatewayResult>, Status> {
    let ids = returned_refs(r);
    if ids.is_empty() {
        return Ok(None);
    }
    let mut results = job.results.lock().await;
    let mut main: Option<String> = None;
    let mut whole = false;
    let mut parts = std::collections::BTreeSet::new();
    for id in &ids {
        let Some((found, _)) = results.find(id) else {
            return Err(Status::not_found(format!("no result {id:?} in this build")));
        };
        let m = match found {
            Found::Whole(m) => {
                whole = true;
                m
            }
            Found::Platform(m, i) => {
                parts.insert(i);
                m
            }
        };
        match &main {
            Some(first) if first != m => {
                return Err(Status::unimplemented(format!(
                    "a result of refs from several solves ({first}, {m}) is not supported yet"
                )))
            }
            Some(_) => {}
            None => main = Some(m.to_string()),
        }
    }
    let main = main.expect("at least one ref was found");
    let all = results.get(&main).map_or(0, |r| r.platform_refs.len());
    if !whole && parts.len() != all {
        let mut some: Vec<&str> = ids.clone();
        some.sort_unstable();
        return Err(Status::unimplemented(format!(
            "returning some platforms ({}) of a multi-platform result is not supported yet: \
             return the refs of all {all}",
            some.join(", ")
        )));
    }
    Ok(results.remove(&main))
}

/// The image config in a result's metadata (`containerimage.config`),
/// with the base's (`containerimage.base.config`) when it names one.
pub fn config_from_metadata(md: &HashMap<String, Vec<u8>>) -> Option<kiln_solver::ImageConfig> {
    let read = |key: &str| -> Option<kiln_engine::oci::ImageConfigJson> {
        serde_json::from_slice(md.get(key)?).ok()
    };
    let cfg = read("containerimage.config")?;
    Some(kiln_engine::base::client_config(
        &cfg,
        read("containerimage.base.config").as_ref(),
    ))
}

impl GatewayService {
    /// The build a gateway call belongs to (metadata
    /// `buildkit-controlapi-buildid`).
    async fn job<T>(&self, req: &Request<T>) -> Result<(Arc<Tenant>, Arc<Job>), Status> {
        // A frontend image's calls belong to the build that runs it.
        if let Some(s) = req.extensions().get::<crate::frontendimage::Scope>() {
            return Ok((s.tenant.clone(), s.job.clone()));
        }
        let tenant = self.0.tenant(req).await?;
        let id = req
            .metadata()
            .get("buildkit-controlapi-buildid")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if id.is_empty() {
            return Err(Status::invalid_argument("no buildkit-controlapi-buildid"));
        }
        // Another tenant's build id is not found: jobs are keyed by tenant.
        let job = self
            .0
            .jobs
            .wait_started(&tenant.scoped(&id), JOB_WAIT, &self.0.shutdown)
            .await
            .ok_or_else(|| Status::not_found(format!("no such job {id}")))?;
        Ok((tenant, job))
    }

    /// Runs `read` on the read-only root of result `id` of the request's
    /// build (a view mounted for this call and removed after it). The
    /// results stay locked meanwhile, so the build cannot release the
    /// result under the view.
    async fn read_result<T, R>(
        &self,
        req: Request<T>,
        id: impl FnOnce(&T) -> String,
        read: impl FnOnce(
                &std::path::Path,
                &kiln_snapshot::origin::LayerOrigin,
                T,
            ) -> Result<R, crate::resultfs::ResultFsError>
            + Send
            + 'static,
    ) -> Result<R, Status>
    where
        T: Send + 'static,
        R: Send + 'static,
    {
        let (_, job) = self.job(&req).await?;
        let msg = req.into_inner();
        let id = id(&msg);
        let results = job.results.lock().await;
        let Some((found, res)) = results.find(&id) else {
            return Err(Status::not_found(format!("no such ref: {id}")));
        };
        let view = match found {
            Found::Platform(_, n) => res.solved.platform_view(n).await,
            Found::Whole(_) if !res.platform_refs.is_empty() => {
                return Err(Status::invalid_argument(format!(
                    "{id} is a multi-platform result: read the ref of one of its platforms"
                )))
            }
            Found::Whole(_) => Some(res.solved.view().await),
        }
        .ok_or_else(|| Status::not_found(format!("no such ref: {id}")))?
        .map_err(|e| crate::state::status_of(&e))?;
        let root = view.path().to_path_buf();
        let origin = view.origin();
        let out = tokio::task::spawn_blocking(move || read(&root, &origin, msg)).await;
        view.close().await;
        drop(results);
        match out {
            Ok(r) => r.map_err(Status::from),
            Err(e) => Err(Status::internal(format!("file read task failed: {e}"))),
        }
    }
}

#[tonic::async_trait]
impl LlbBridge for GatewayService {
    async fn ping(&self, request: Request<PingRequest>) -> Result<Response<PongResponse>, Status> {
        let tenant = match request.extensions().get::<crate::frontendimage::Scope>() {
            Some(s) => s.tenant.clone(),
            None => self.0.tenant(&request).await?,
        };
        let workers = crate::workers::list_workers(&self.0, &tenant, Default::default())
            .await?
            .record;
        Ok(Response::new(PongResponse {
            frontend_api_caps: caps(FRONTEND_CAPS),
            llb_caps: caps(LLB_CAPS),
            workers,
        }))
    }

    async fn solve(
        &self,
        request: Request<SolveRequest>,
    ) -> Result<Response<SolveResponse>, Status> {
        let (tenant, job) = self.job(&request).await?;
        let mut r = request.into_inner();
        let sid = job
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let session = if sid.is_empty() {
            None
        } else {
            self.0.sessions.get(&sid, SESSION_WAIT).await
        };
        if r.source_policies.iter().any(|p| !p.rules.is_empty()) {
            return Err(Status::unimplemented(
                "source policies on a gateway solve are not supported yet",
            ));
        }
        let has_definition = r.definition.as_ref().is_some_and(|d| !d.def.is_empty());
        let route = if has_definition {
            None
        } else {
            crate::frontendimage::route(&r.frontend, &mut r.frontend_opt)?
        };
        if route == Some(crate::frontendimage::Route::Dockerfile) {
            context_from_inputs(&mut r.frontend_opt, &mut r.frontend_inputs)?;
        }
        let input = if has_definition {
            Input::Definition(r.definition.as_ref().expect("checked above"))
        } else if route == Some(crate::frontendimage::Route::Dockerfile) {
            Input::Dockerfile(&r.frontend_opt, &r.frontend_inputs)
        } else if route == Some(crate::frontendimage::Route::Image) {
            Input::Gateway(&r.frontend_opt, &r.frontend_inputs)
        } else if r.frontend.is_empty() {
            // Nothing to solve: an empty result.
            return Ok(Response::new(SolveResponse {
                r#ref: String::new(),
                result: Some(GwResult::default()),
            }));
        } else {
            return Err(Status::invalid_argument(format!(
                "frontend {:?} is not supported (dockerfile.v0, gateway.v0, or LLB)",
                r.frontend
            )));
        };
        let lint = matches!(input, Input::Dockerfile(..))
            && r.frontend_opt.get("requestid").map(String::as_str)
                == Some(kiln_frontend::check::LINT_REQUEST);
        if lint {
            return self.lint(&tenant, &job, session.as_ref(), &r).await;
        }
        let targets = matches!(input, Input::Dockerfile(..))
            && r.frontend_opt.get("requestid").map(String::as_str)
                == Some(kiln_frontend::targets::TARGETS_REQUEST);
        if targets {
            return self.targets(&tenant, &job, session.as_ref(), &r).await;
        }
        let outline = matches!(input, Input::Dockerfile(..))
            && r.frontend_opt.get("requestid").map(String::as_str)
                == Some(kiln_frontend::outline::OUTLINE_REQUEST);
        if outline {
            return self.outline(&tenant, &job, session.as_ref(), &r).await;
        }
        let describe = matches!(input, Input::Dockerfile(..))
            && r.frontend_opt.get("requestid").map(String::as_str)
                == Some(kiln_frontend::describe::DESCRIBE_REQUEST);
        if describe {
            let (session, credentials) = frontend_session(session.as_ref())?;
            let answer = crate::frontend::describe(
                &self.0,
                &tenant.engine,
                &job,
                session,
                &r.frontend_opt,
                credentials,
            )
            .await?;
            return Ok(metadata_response(bytes(answer)));
        }
        let compression = r
            .frontend_opt
            .get("compression")
            .and_then(|c| c.parse().ok())
            .unwrap_or(Compression::Gzip);
        let (solved, config, definitions) = solve_defined(
            &self.0,
            &tenant.engine,
            &job,
            session.as_ref(),
            input,
            compression,
            true,
        )
        .await?;
        let id = format!(
            "ref-{}",
            kiln_solver::Digest::of(solved.lease().as_str().as_bytes()).hex()
        );
        let mut metadata = HashMap::new();
        // A multi-platform result as BuildKit's gateway gives one: a ref per
        // platform (`refs`, keyed by the platform) with `refs.platforms`
        // and a `containerimage.config/<platform>` each. Each platform's
        // ref reads that platform's files; returned together they export
        // the held solve as an index (`take_returned`).
        let parts = solved.platform_results();
        let multi = !parts.is_empty();
        let mut platform_ids = Vec::new();
        let mut platform_refs = Vec::new();
        for (n, (p, cfg, layers)) in parts.into_iter().enumerate() {
            let key = p.to_string();
            let json = kiln_engine::export::image_config(layers, cfg);
            if let Ok(bytes) = serde_json::to_vec(&json) {
                metadata.insert(format!("containerimage.config/{key}"), bytes);
            }
            let mut platform = serde_json::json!({"os": p.os, "architecture": p.architecture});
            if !p.variant.is_empty() {
                platform["variant"] = serde_json::Value::from(p.variant.clone());
            }
            platform_ids.push(serde_json::json!({"id": key, "platform": platform}));
            platform_refs.push((key, format!("{id}-{n}")));
        }
        if multi {
            if let Ok(bytes) = serde_json::to_vec(&serde_json::json!({ "platforms": platform_ids }))
            {
                metadata.insert("refs.platforms".to_string(), bytes);
            }
        }
        if let (false, Some(cfg)) = (multi, &config) {
            let json = kiln_engine::export::image_config(&solved.layers, cfg);
            if let Ok(bytes) = serde_json::to_vec(&json) {
                metadata.insert("containerimage.config".to_string(), bytes);
            }
        }
        job.results.lock().await.insert(
            id.clone(),
            GatewayResult {
                solved,
                config,
                platform_refs: platform_refs.iter().map(|(_, r)| r.clone()).collect(),
            },
        );
        // Each ref carries the LLB of what it holds (`reference.output`),
        // which a client builds on (`ref.ToState()`).
        let one = |id: &str, n: usize| Ref {
            id: id.to_string(),
            def: definitions.get(n).cloned(),
        };
        let result = GwResult {
            metadata,
            result: Some(if multi {
                result::Result::Refs(RefMap {
                    refs: platform_refs
                        .iter()
                        .enumerate()
                        .map(|(n, (key, r))| (key.clone(), one(r, n)))
                        .collect(),
                })
            } else {
                result::Result::Ref(one(&id, 0))
            }),
            ..Default::default()
        };
        Ok(Response::new(if r.allow_result_return {
            SolveResponse {
                r#ref: String::new(),
                result: Some(result),
            }
        } else {
            SolveResponse {
                r#ref: id,
                result: None,
            }
        }))
    }

    #[tracing::instrument(skip_all, fields(r#ref = %request.get_ref().r#ref, path = %request.get_ref().file_path))]
    async fn read_file(
        &self,
        request: Request<ReadFileRequest>,
    ) -> Result<Response<ReadFileResponse>, Status> {
        let data = self
            .read_result(
                request,
                |r| r.r#ref.clone(),
                |root, _, r| {
                    let range = r.range.map(|g| crate::resultfs::FileRange {
                        offset: g.offset,
                        length: g.length,
                    });
                    crate::resultfs::read_file(root, &r.file_path, range)
                },
            )
            .await?;
        Ok(Response::new(ReadFileResponse { data }))
    }

    #[tracing::instrument(skip_all, fields(r#ref = %request.get_ref().r#ref, path = %request.get_ref().dir_path))]
    async fn read_dir(
        &self,
        request: Request<ReadDirRequest>,
    ) -> Result<Response<ReadDirResponse>, Status> {
        let entries = self
            .read_result(
                request,
                |r| r.r#ref.clone(),
                |root, origin, r| {
                    crate::resultfs::read_dir(root, origin, &r.dir_path, &r.include_pattern)
                },
            )
            .await?;
        Ok(Response::new(ReadDirResponse { entries }))
    }

    #[tracing::instrument(skip_all, fields(r#ref = %request.get_ref().r#ref, path = %request.get_ref().path))]
    async fn stat_file(
        &self,
        request: Request<StatFileRequest>,
    ) -> Result<Response<StatFileResponse>, Status> {
        let stat = self
            .read_result(
                request,
                |r| r.r#ref.clone(),
                |root, _, r| crate::resultfs::stat_file(root, &r.path),
            )
            .await?;
        Ok(Response::new(StatFileResponse { stat: Some(stat) }))
    }

    /// Results are solved before `Solve` answers, so a known ref is
    /// evaluated already.
    async fn evaluate(
        &self,
        request: Request<EvaluateRequest>,
    ) -> Result<Response<EvaluateResponse>, Status> {
        let (_, job) = self.job(&request).await?;
        let id = &request.get_ref().r#ref;
        if job.results.lock().await.find(id).is_none() {
            return Err(Status::not_found(format!("no such ref: {id}")));
        }
        Ok(Response::new(EvaluateResponse {}))
    }

    /// A warning the client reports on one of its vertices, passed on in
    /// the build's status as BuildKit does (buildx and buildctl print it).
    async fn warn(&self, request: Request<WarnRequest>) -> Result<Response<WarnResponse>, Status> {
        let (_, job) = self.job(&request).await?;
        let w = request.into_inner();
        job.publish(kiln_proto::control::StatusResponse {
            warnings: vec![kiln_proto::control::VertexWarning {
                vertex: w.digest,
                level: w.level,
                short: w.short,
                detail: w.detail,
                url: w.url,
                info: w.info,
                ranges: w.ranges,
            }],
            ..Default::default()
        });
        Ok(Response::new(WarnResponse {}))
    }

    /// The frontend inputs of a frontend image (`crate::frontendimage`);
    /// a client driving the build has none to ask for.
    async fn inputs(
        &self,
        request: Request<InputsRequest>,
    ) -> Result<Response<InputsResponse>, Status> {
        if let Some(s) = request.extensions().get::<crate::frontendimage::Scope>() {
            return Ok(Response::new(InputsResponse {
                definitions: (*s.inputs).clone(),
            }));
        }
        self.job(&request).await?;
        Err(Status::unimplemented(
            "LLBBridge.Inputs outside a frontend image (a client holds its own inputs) is not supported",
        ))
    }

    /// A base image's config as a frontend resolves it (BuildKit's
    /// `ResolveImageConfig`): by kiln's resolve rule, with the session's
    /// registry logins. OCI layout stores are not read here yet.
    async fn resolve_image_config(
        &self,
        request: Request<ResolveImageConfigRequest>,
    ) -> Result<Response<ResolveImageConfigResponse>, Status> {
        let (tenant, job) = self.job(&request).await?;
        let r = request.into_inner();
        if r.resolver_type != 0 {
            return Err(Status::unimplemented(format!(
                "ResolveImageConfig of {:?} from an OCI layout store is not supported yet",
                r.r#ref
            )));
        }
        let name = kiln_dockerfile::reference::normalize(&r.r#ref)
            .map_err(|e| Status::invalid_argument(format!("{:?}: {e}", r.r#ref)))?;
        let mode = resolve_mode(&r.resolve_mode)?;
        let platform = r
            .platform
            .map(|p| kiln_solver::Platform::new(&p.os, &p.architecture, &p.variant));
        let sid = job
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let session = if sid.is_empty() {
            None
        } else {
            self.0.sessions.get(&sid, SESSION_WAIT).await
        };
        let credentials: Arc<dyn kiln_registry::Credentials> =
            Arc::new(crate::registry::SessionCredentials::new(session.as_ref()));
        let engine = job.engine(&tenant.engine);
        let resolver = crate::policy::Resolver {
            engine: &engine,
            credentials: credentials.clone(),
        };
        crate::policy::check_image(&self.0, &job, &resolver, &name, platform.as_ref()).await?;
        // A step in the build's progress, as BuildKit shows every lookup:
        // named by the client (`[internal] load metadata for …`), else
        // after the image.
        let step = if r.log_name.is_empty() {
            format!("resolve image config for docker-image://{name}")
        } else {
            r.log_name.clone()
        };
        let started = std::time::SystemTime::now();
        crate::status::step(&job, &step, started, None, None);
        let resolved = engine
            .base_images(mode, credentials)
            .image_config_json(&name, platform.as_ref())
            .await
            .map_err(|e| crate::state::status_of(&e));
        crate::status::step(
            &job,
            &step,
            started,
            Some(std::time::SystemTime::now()),
            resolved.as_ref().err().map(|e| e.message().to_string()),
        );
        let (config, digest) = resolved?;
        Ok(Response::new(ResolveImageConfigResponse {
            r#ref: name,
            digest,
            config,
        }))
    }

    async fn r#return(
        &self,
        request: Request<ReturnRequest>,
    ) -> Result<Response<ReturnResponse>, Status> {
        if let Some(s) = request.extensions().get::<crate::frontendimage::Scope>() {
            let returned = s.returned.clone();
            returned.send_replace(Some(request.into_inner()));
            return Ok(Response::new(ReturnResponse {}));
        }
        let (_, job) = self.job(&request).await?;
        job.set_returned(request.into_inner());
        Ok(Response::new(ReturnResponse {}))
    }
}

/// A resolve mode a client asks for (`ResolveImageConfig`, a policy's
/// metadata request): empty is the default.
pub(crate) fn resolve_mode(mode: &str) -> Result<kiln_engine::resolve::ResolveMode, Status> {
    if mode.is_empty() {
        return Ok(kiln_engine::resolve::ResolveMode::Default);
    }
    kiln_engine::resolve::ResolveMode::parse(mode).map_err(|_| {
        Status::invalid_argument(format!(
            "resolve mode {mode:?}: expected default, pull or local"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// BuildKit's LLB capability ids (solver/pb/caps.go), the vocabulary
    /// clients check against; an id outside it is a typo no client reads.
    const BUILDKIT_LLB_CAPS: &[&str] = &[
        "source.image",
        "source.image.resolvemode",
        "source.image.layerlimit",
        "source.image.checksum",
        "source.local",
        "source.local.unique",
        "source.local.sessionid",
        "source.local.includepatterns",
        "source.local.followpaths",
        "source.local.excludepatterns",
        "source.local.sharedkeyhint",
        "source.local.differ",
        "source.local.metadatatransfer",
        "source.git",
        "source.git.keepgitdir",
        "source.git.fullurl",
        "source.git.httpauth",
        "source.git.knownsshhosts",
        "source.git.mountsshsock",
        "source.git.subdir",
        "source.git.checksum",
        "source.git.skipsubmodules",
        "source.git.signatureverify",
        "source.git.mtime",
        "source.git.fetchbycommit",
        "source.git.bundle",
        "source.git.checkoutbundle",
        "source.http",
        "source.http.auth",
        "source.http.checksum",
        "source.http.perm",
        "soruce.http.uidgid",
        "source.http.header",
        "source.http.signatureverify",
        "source.imageblob",
        "source.ocilayout",
        "source.buildop.llbfilename",
        "exec.meta.base",
        "exec.meta.cgroup.parent",
        "exec.meta.network",
        "exec.meta.network.proxy",
        "exec.meta.proxyenv",
        "exec.meta.security",
        "exec.meta.security.devices.v1",
        "exec.meta.setsdefaultpath",
        "exec.meta.ulimit",
        "exec.meta.cdi",
        "exec.meta.removemountstubs.recursive",
        "exec.meta.linux.resources",
        "exec.mount.bind",
        "exec.mount.bind.readwrite-nooutput",
        "exec.mount.cache",
        "exec.mount.cache.sharing",
        "exec.mount.selector",
        "exec.mount.tmpfs",
        "exec.mount.tmpfs.size",
        "exec.mount.secret",
        "exec.mount.ssh",
        "exec.mount.cache.content",
        "exec.cgroup",
        "exec.secretenv",
        "exec.validexitcode",
        "file.base",
        "file.rm.wildcard",
        "file.copy.includeexcludepatterns",
        "file.copy.requiredpaths",
        "file.rm.nofollowsymlink",
        "file.copy.alwaysreplaceexistingdestpaths",
        "file.copy.modestring",
        "file.symlink.create",
        "constraints",
        "platform",
        "meta.ignorecache",
        "meta.description",
        "meta.exportcache",
        "cache.gha",
        "cache.s3",
        "cache.azblob",
        "mergeop",
        "diffop",
        "passthroughop",
        "exporter.image.annotations",
        "exporter.image.attestations",
        "exporter.sourcedateepoch",
        "exporter.multiple",
        "exporter.session",
        "source.policy",
        "source.policy.session",
        "gc.freespacefilter",
        "history.filter",
    ];

    /// BuildKit's gateway API capability ids (frontend/gateway/pb's caps).
    const BUILDKIT_FRONTEND_CAPS: &[&str] = &[
        "solve.base",
        "solve.inlinereturn",
        "resolveimage",
        "resolveimage.resolvemode",
        "readfile",
        "return",
        "returnmap",
        "readdir",
        "statfile",
        "importcaches",
        "proto.refarray",
        "reference.output",
        "frontend.inputs",
        "gateway.solve.metadata",
        "gateway.exec",
        "gateway.exec.extrahosts",
        "gateway.exec.secretenv",
        "gateway.exec.signals",
        "gateway.exec.filesystem",
        "frontend.caps",
        "gateway.solve.evaluate",
        "gateway.evaluate",
        "gateway.warnings",
        "reference.attestations",
        "source.metaresolver",
        "source.metaresolver.image.attestations",
        "source.metaresolver.http.checksumrequest",
    ];

    #[test]
    fn frontend_caps_are_buildkit_ids_listed_once() {
        let mut seen = std::collections::HashSet::new();
        for id in FRONTEND_CAPS {
            assert!(
                BUILDKIT_FRONTEND_CAPS.contains(id),
                "{id} is not a BuildKit gateway cap"
            );
            assert!(seen.insert(id), "{id} is listed twice");
        }
        // What buildx needs to read a remote context's files, and what kiln
        // does not serve.
        // And what buildx needs to build on a result (bake's `target:`).
        for id in ["readfile", "readdir", "statfile", "reference.output"] {
            assert!(FRONTEND_CAPS.contains(&id), "{id} missing");
        }
        for id in ["gateway.exec", "source.metaresolver"] {
            assert!(!FRONTEND_CAPS.contains(&id), "{id} advertised");
        }
    }

    fn dockerfile_solve(opts: &[(&str, &str)], inputs: &[(&str, u8)]) -> SolveRequest {
        let def = |n: u8| kiln_proto::llb::Definition {
            def: vec![vec![n]],
            ..Default::default()
        };
        SolveRequest {
            frontend: "dockerfile.v0".into(),
            frontend_opt: opts
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            frontend_inputs: inputs
                .iter()
                .map(|(k, n)| (k.to_string(), def(*n)))
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn a_git_context_sent_as_an_input_becomes_the_context_attribute_again() {
        let url = "git://127.0.0.1/repo?ref=main";
        let mut r = dockerfile_solve(
            &[("input:context", url), ("filename", "Dockerfile")],
            &[("context", 1), ("dockerfile", 1)],
        );
        context_from_inputs(&mut r.frontend_opt, &mut r.frontend_inputs)
            .expect("buildx's git query form");
        assert_eq!(r.frontend_opt.get("context").map(String::as_str), Some(url));
        assert!(!r.frontend_opt.contains_key("input:context"));
        assert!(r.frontend_inputs.is_empty());
        // Without inputs nothing changes.
        let mut plain = dockerfile_solve(&[("context", url)], &[]);
        context_from_inputs(&mut plain.frontend_opt, &mut plain.frontend_inputs)
            .expect("no inputs");
        assert_eq!(plain.frontend_opt.len(), 1);

        for (opts, inputs) in [
            // A build result as the context (bake's `target:`).
            (
                vec![("filename", "Dockerfile")],
                vec![("context", 1), ("dockerfile", 1)],
            ),
            // A Dockerfile from elsewhere than the context.
            (
                vec![("input:context", url)],
                vec![("context", 1), ("dockerfile", 2)],
            ),
            // A named context from a result, and the main context too.
            (
                vec![("input:context", url), ("context:base", "input:base")],
                vec![("context", 1), ("base", 3)],
            ),
        ] {
            let mut r = dockerfile_solve(&opts, &inputs);
            let e = context_from_inputs(&mut r.frontend_opt, &mut r.frontend_inputs)
                .expect_err("refused");
            assert_eq!(e.code(), tonic::Code::Unimplemented);
            assert!(
                e.message().starts_with("frontend inputs ("),
                "{}",
                e.message()
            );
        }
        let mut r = dockerfile_solve(&[], &[("context", 1), ("base", 3)]);
        let e =
            context_from_inputs(&mut r.frontend_opt, &mut r.frontend_inputs).expect_err("refused");
        assert_eq!(
            e.message(),
            "frontend inputs (base, context) are not supported yet: a context is a URL or \
             the client's files, not a build result"
        );
        // Inputs that named contexts read stay for the frontend.
        let mut r = dockerfile_solve(&[("context:base", "input:base")], &[("base", 3)]);
        context_from_inputs(&mut r.frontend_opt, &mut r.frontend_inputs)
            .expect("a named context's input");
        assert_eq!(r.frontend_inputs.len(), 1);
    }

    #[test]
    fn llb_caps_are_buildkit_ids_listed_once() {
        let mut seen = std::collections::HashSet::new();
        for id in LLB_CAPS {
            assert!(
                BUILDKIT_LLB_CAPS.contains(id),
                "{id} is not a BuildKit LLB cap"
            );
            assert!(seen.insert(id), "{id} is listed twice");
        }
    }

    /// The sources kiln builds are advertised, so buildx and buildctl do
    /// not refuse them client-side; the ones it refuses are not.
    #[test]
    fn implemented_sources_are_advertised_and_refused_ones_are_not() {
        let has = |id: &str| caps(LLB_CAPS).iter().any(|c| c.id == id && c.enabled);
        for id in [
            "source.git",
            "source.git.keepgitdir",
            "source.git.httpauth",
            "source.git.knownsshhosts",
            "source.git.mountsshsock",
            "source.http",
            "source.ocilayout",
            "exec.mount.ssh",
        ] {
            assert!(has(id), "{id} missing");
        }
        for id in ["diffop", "exec.meta.cdi"] {
            assert!(!has(id), "{id} advertised but not implemented");
        }
    }
}
