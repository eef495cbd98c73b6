//! The `moby.buildkit.v1.Control` service.

use crate::jobs::Job;
use crate::solve::{solve, Input};
use crate::state::Daemon;
use crate::tenants::Tenant;
use kiln_proto::control::control_server::Control;
use kiln_proto::control::{
    BuildHistoryEvent, BuildHistoryRequest, BytesMessage, DiskUsageRequest, DiskUsageResponse,
    Exporter, InfoRequest, InfoResponse, ListWorkersRequest, ListWorkersResponse, PruneRequest,
    SolveRequest, SolveResponse, StatusRequest, StatusResponse, UpdateBuildHistoryRequest,
    UpdateBuildHistoryResponse, UsageRecord,
};
use std::sync::Arc;
use std::time::Duration;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

/// How long Status waits for its build to be registered by Solve.
const STATUS_WAIT: Duration = Duration::from_secs(6);
/// How long a finished build stays visible to Status.
const FINISHED_JOB_GRACE: Duration = Duration::from_secs(10);
/// How long a build waits for its session to attach.
pub(crate) const SESSION_WAIT: Duration = Duration::from_secs(5);
/// How long a build's answer waits for its session's last bytes to leave
/// ([`kiln_session::hijack::Outbound::drained`]); they are usually gone
/// already, and a session whose client stopped reading does not hold the
/// answer back for longer.
const SESSION_DRAIN: Duration = Duration::from_millis(500);
/// After a refusal, how long kilnd lets a session that just attached
/// settle before answering: the client's HTTP/2 settings reach kilnd just
/// after it attaches, and kilnd's acknowledgement must leave before the
/// client closes. With the drain alone, 3-4 of 30 buildx builds refused
/// this way printed `PROTOCOL_ERROR`; with this pause, none of 80.
const SESSION_HANDSHAKE_QUIET: Duration = Duration::from_millis(25);

pub struct ControlService(pub Arc<Daemon>);

/// The exporters of a request: the list, or the deprecated single one.
fn exporters(r: &SolveRequest) -> Vec<Exporter> {
    if !r.exporters.is_empty() {
        return r.exporters.clone();
    }
    if r.exporter_deprecated.is_empty() {
        return Vec::new();
    }
    vec![Exporter {
        r#type: r.exporter_deprecated.clone(),
        attrs: r.exporter_attrs_deprecated.clone(),
    }]
}

/// [`exporters`] with the defaults of the request's compatibility
/// version: below BuildKit v0.31's (30), the image and docker exporters
/// write Docker's media types unless asked for OCI's (BuildKit's
/// `DefaultOCITypes`; kiln makes no attestations, which would need OCI's).
fn exporters_as_built(r: &SolveRequest) -> Vec<Exporter> {
    let mut out = exporters(r);
    if r.compatibility_version != 0 && r.compatibility_version < COMPATIBILITY_VERSION_CURRENT {
        for e in &mut out {
            if matches!(e.r#type.as_str(), "image" | "moby" | "docker") {
                e.attrs
                    .entry("oci-mediatypes".into())
                    .or_insert_with(|| "false".into());
            }
        }
    }
    out
}

/// The whole build of one Solve call, run in its own task so that a client
/// that goes away cancels it rather than dropping it halfway.
async fn run_solve(
    d: Arc<Daemon>,
    tenant: Arc<Tenant>,
    job: Arc<Job>,
    mut r: SolveRequest,
) -> Result<Finished, Status> {
    if r.source_policy
        .as_ref()
        .is_some_and(|p| !p.rules.is_empty())
    {
        return Err(Status::unimplemented(
            "source policies (EXPERIMENTAL_BUILDKIT_SOURCE_POLICY) are not supported yet",
        ));
    }
    let session = if r.session.is_empty() {
        None
    } else {
        d.sessions
            .get(&tenant.scoped(&r.session), SESSION_WAIT)
            .await
    };
    if !r.session.is_empty() && session.is_none() {
        tracing::warn!(session = %r.session, "session did not attach; building without it");
    }
    let exporters = exporters_as_built(&r);
    let compression = crate::export::compression(&exporters)?;
    let has_definition = r.definition.as_ref().is_some_and(|d| !d.def.is_empty());
    let (solved, config) = if has_definition {
        let def = r.definition.as_ref().expect("checked above");
        let (s, c) = solve(
            &d,
            &tenant.engine,
            &job,
            session.as_ref(),
            Input::Definition(def),
            compression,
        )
        .await?;
        (s, c.or_else(|| config_from_attrs(&exporters)))
    } else if let Some(route) = crate::frontendimage::route(&r.frontend, &mut r.frontend_attrs)? {
        let input = match route {
            crate::frontendimage::Route::Dockerfile => {
                crate::gateway::context_from_inputs(&mut r.frontend_attrs, &mut r.frontend_inputs)?;
                Input::Dockerfile(&r.frontend_attrs, &r.frontend_inputs)
            }
            crate::frontendimage::Route::Image => {
                Input::Gateway(&r.frontend_attrs, &r.frontend_inputs)
            }
        };
        solve(
            &d,
            &tenant.engine,
            &job,
            session.as_ref(),
            input,
            compression,
        )
        .await?
    } else if r.frontend.is_empty() {
        // The gateway flow: the client drives a frontend over LLBBridge and
        // ends it with Return.
        let Some(ret) = job.wait_returned().await else {
            return Err(Status::cancelled("build cancelled"));
        };
        if let Some(err) = ret.error.filter(|e| e.code != 0) {
            return Err(returned_error(err));
        }
        let Some(result) = ret.result else {
            return Ok(Finished::default());
        };
        let Some(found) = crate::gateway::take_returned(&job, &result).await? else {
            // An empty result (buildx's preflight).
            return Ok(Finished::default());
        };
        let config = found
            .config
            .or_else(|| crate::gateway::config_from_metadata(&result.metadata));
        (found.solved, config)
    } else {
        return Err(Status::invalid_argument(format!(
            "frontend {:?} is not supported (dockerfile.v0, gateway.v0, or LLB)",
            r.frontend
        )));
    };
    let config = config.unwrap_or_default();
    let started = std::time::SystemTime::now();
    let kind = exporters.first().map(|e| e.r#type.as_str());
    let export_name = crate::export::vertex_name(kind.unwrap_or("image"));
    if !exporters.is_empty() {
        crate::status::step(&job, &export_name, started, None, None);
    }
    let exported = crate::export::run(
        &tenant.engine,
        &job,
        session.as_ref(),
        &solved,
        &config,
        &exporters,
        compression,
    )
    .await;
    if !exporters.is_empty() {
        crate::status::step(
            &job,
            &export_name,
            started,
            Some(std::time::SystemTime::now()),
            exported.as_ref().err().map(|e| e.message().to_string()),
        );
    }
    let exported = match exported {
        Ok(mut ex) => crate::cache::export(
            &job,
            &solved,
            session.as_ref(),
            &crate::solve::job_dir(&d, &job),
        )
        .await
        .map(|cache| {
            ex.response.extend(cache);
            ex
        }),
        Err(e) => Err(e),
    };
    let exported = match exported {
        Ok(ex) => ex,
        Err(e) => {
            solved.release(true).await;
            return Err(e);
        }
    };
    Ok(Finished {
        response: SolveResponse {
            exporter_response: exported.response,
        },
        results: exported.results,
        // The build's lease goes once the client has its answer.
        release: Some(Box::pin(solved.release(false))),
    })
}

/// What a finished Solve answers, and what its record keeps of it.
#[derive(Default)]
struct Finished {
    response: SolveResponse,
    results: std::collections::HashMap<i64, kiln_proto::control::Descriptor>,
    /// Letting go of the build's lease: after the answer and the record
    /// ([`crate::jobs::Jobs::after`]), so its containerd writes wait for
    /// nothing the client waits for; before the answer for a tenant with
    /// `cache-max`, whose prune after each build must find this build's
    /// records free.
    release: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
}

/// Who sent a request, for the log: the identity its connection proves,
/// else its TCP peer address, else "unknown".
fn client_of<T>(request: &Request<T>) -> String {
    let info = request.extensions().get::<crate::listen::ConnInfo>();
    match info {
        Some(crate::listen::ConnInfo {
            identity: Some(id), ..
        }) => id.to_string(),
        Some(crate::listen::ConnInfo {
            remote_addr: Some(a),
            ..
        }) => a.to_string(),
        _ => "unknown".to_string(),
    }
}

/// The fields of a build's log lines.
struct BuildLog {
    r#ref: String,
    session: String,
    tenant: String,
    client: String,
    frontend: String,
}

impl BuildLog {
    fn started(&self) {
        tracing::info!(
            "ref" = %self.r#ref,
            session = %self.session,
            tenant = %self.tenant,
            client = %self.client,
            frontend = %self.frontend,
            "build started"
        );
    }

    fn finished(&self, took: std::time::Duration, error: Option<&Status>) {
        let result = match error {
            None => "ok",
            Some(e) if e.code() == tonic::Code::Cancelled => "cancelled",
            Some(_) => "failed",
        };
        tracing::info!(
            "ref" = %self.r#ref,
            session = %self.session,
            tenant = %self.tenant,
            client = %self.client,
            frontend = %self.frontend,
            result,
            duration_ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            error = error.map(Status::message).unwrap_or(""),
            "build finished"
        );
    }
}

/// The error a frontend returned, as the build's status: its code, its
/// message and its typed details (BuildKit's errdefs.Source of the failed
/// step among them), so clients print the same source snippet.
pub(crate) fn returned_error(err: kiln_proto::rpc::Status) -> Status {
    let code = tonic::Code::from(err.code);
    let message = strip_code_prefix(&err.message);
    if err.details.is_empty() {
        return Status::new(code, message);
    }
    let details = prost::Message::encode_to_vec(&kiln_proto::rpc::Status {
        code: err.code,
        message: message.clone(),
        details: err.details,
    });
    Status::with_details(code, message, details.into())
}

/// A returned error's message without the `NotFound: ` style prefixes Go
/// clients put in front (the code travels separately; clients print it).
fn strip_code_prefix(message: &str) -> String {
    const NAMES: &[&str] = &[
        "Canceled",
        "Unknown",
        "InvalidArgument",
        "DeadlineExceeded",
        "NotFound",
        "AlreadyExists",
        "PermissionDenied",
        "ResourceExhausted",
        "FailedPrecondition",
        "Aborted",
        "OutOfRange",
        "Unimplemented",
        "Internal",
        "Unavailable",
        "DataLoss",
        "Unauthenticated",
    ];
    let mut m = message;
    while let Some(rest) = NAMES
        .iter()
        .find_map(|n| m.strip_prefix(n).and_then(|r| r.strip_prefix(": ")))
    {
        m = rest;
    }
    m.to_string()
}

/// BuildKit's current solve compatibility version (`CompatibilityVersion`
/// 0 means it): what kiln builds.
const COMPATIBILITY_VERSION_CURRENT: i64 = 30;
/// BuildKit v0.15's version: as the current one, but with Docker's media
/// types by default ([`exporters_as_built`]).
const COMPATIBILITY_VERSION_015: i64 = 20;
/// The older versions BuildKit can still build as that kiln cannot yet
/// (v0.13's resets git checkouts' file modes and refuses zstd images).
const COMPATIBILITY_VERSIONS_OLDER: [i64; 1] = [10];

/// The request's options that change how BuildKit builds, checked before
/// the build exists: what kiln cannot do yet fails here, never ignored.
/// (`SourcePolicySession` is served: `crate::policy`.)
fn request_options(r: &SolveRequest) -> Result<(), Status> {
    let v = r.compatibility_version;
    if v != 0 && v != COMPATIBILITY_VERSION_CURRENT && v != COMPATIBILITY_VERSION_015 {
        // As Go prints BuildKit's list.
        let supported = format!("[10 20 {COMPATIBILITY_VERSION_CURRENT}]");
        return Err(if COMPATIBILITY_VERSIONS_OLDER.contains(&v) {
            Status::unimplemented(format!(
                "compatibility-version {v} is not supported yet (kiln builds as {COMPATIBILITY_VERSION_CURRENT})"
            ))
        } else if v > COMPATIBILITY_VERSION_CURRENT {
            Status::invalid_argument(format!(
                "unsupported compatibility-version {v}: upgrade buildkit (max supported: {COMPATIBILITY_VERSION_CURRENT})"
            ))
        } else {
            Status::invalid_argument(format!(
                "unsupported compatibility-version {v} (supported: {supported})"
            ))
        });
    }
    if r.enable_session_exporter {
        return Err(Status::unimplemented(
            "exporters chosen through the session (EnableSessionExporter) are not supported yet",
        ));
    }
    if r.proxy_network {
        return Err(Status::unimplemented(
            "the policy's network proxy for steps (ProxyNetwork) is not supported yet",
        ));
    }
    Ok(())
}

/// An image config passed as exporter attribute `containerimage.config`
/// (with its base's, `containerimage.base.config`, when given).
fn config_from_attrs(exporters: &[Exporter]) -> Option<kiln_solver::ImageConfig> {
    exporters.iter().find_map(|e| {
        let read = |key: &str| -> Option<kiln_engine::oci::ImageConfigJson> {
            serde_json::from_str(e.attrs.get(key)?).ok()
        };
        let cfg = read("containerimage.config")?;
        Some(kiln_engine::base::client_config(
            &cfg,
            read("containerimage.base.config").as_ref(),
        ))
    })
}

/// Waits, bounded, until what kilnd wrote to the client's session `id`
/// has left for the connection, so that the client, which closes the
/// session on a build's answer, reads all of it
/// ([`kiln_session::hijack::Outbound::drained`]). `attach`: how long to
/// wait for a session still attaching; `quiet`: a pause after which what
/// kilnd wrote meanwhile (its acknowledgement of the client's HTTP/2
/// settings, for a session that just attached) is waited for too.
async fn settle_session(d: &Daemon, id: &str, attach: Duration, quiet: Duration) {
    let Some(s) = d.sessions.get(id, attach).await else {
        return;
    };
    s.outbound.drained(SESSION_DRAIN).await;
    if !quiet.is_zero() {
        tokio::time::sleep(quiet).await;
        s.outbound.drained(SESSION_DRAIN).await;
    }
}

impl ControlService {
    /// Solve's work; its error is answered as BuildKit answers a failed
    /// build ([`crate::errdetails::build_failure`]).
    async fn build(
        &self,
        tenant: Arc<Tenant>,
        request: Request<SolveRequest>,
    ) -> Result<Response<SolveResponse>, Status> {
        let d = self.0.clone();
        let client = client_of(&request);
        let r = request.into_inner();
        if r.r#ref.is_empty() {
            return Err(Status::invalid_argument("solve request without a ref"));
        }
        if d.shutdown.is_cancelled() {
            return Err(Status::unavailable("kilnd is shutting down"));
        }
        // Entitlements the client asks for must be known and allowed by
        // this daemon, before anything of the build exists.
        let granted =
            kiln_engine::entitlements::Entitlements::grant(&r.entitlements, &d.config.worker.allow)
                .map_err(|e| Status::new(e.kind().code(), e.to_string()))?;
        // Cache exports and imports are checked before the build too.
        let cache = crate::cache::CacheOptions::from_request(&r)?;
        request_options(&r)?;
        // And the exporters with every option: a client driving its own
        // frontend (buildctl, buildx) has already started it, and a
        // refusal that waited for the job would cut its transfers.
        crate::export::compression(&exporters_as_built(&r))?;
        let build_permit = tenant.start_build()?;
        let session = if r.session.is_empty() {
            String::new()
        } else {
            tenant.scoped(&r.session)
        };
        let opts = crate::jobs::JobOptions {
            entitlements: granted,
            cache,
            export_blobs: crate::export::export_blobs(&exporters_as_built(&r)),
            fetch: Some(d.fetch.current()),
            tenant: tenant.name.clone(),
            policy_session: (!r.source_policy_session.is_empty())
                .then(|| tenant.scoped(&r.source_policy_session)),
        };
        let job = d
            .jobs
            .start(&tenant.scoped(&r.r#ref), &session, opts, &d.shutdown)?;
        let active = d.jobs.enter();
        tenant.history.started(&r, &exporters(&r));
        let history_ref = (!r.internal).then(|| r.r#ref.clone());
        // One line when a build starts and one when it ends (with its
        // result and duration), at info: who built what, and how it went.
        let log = BuildLog {
            r#ref: r.r#ref.clone(),
            session: r.session.clone(),
            tenant: tenant.name.clone().unwrap_or_default(),
            client,
            // Without a frontend, the client sent LLB or drives its
            // frontend over LLBBridge (buildctl, buildx).
            frontend: match (r.frontend.is_empty(), r.definition.is_some()) {
                (true, true) => "llb".to_string(),
                (true, false) => "gateway".to_string(),
                (false, _) => r.frontend.clone(),
            },
        };
        log.started();
        let mut counted = crate::metrics::METRICS.build_started();
        let since = std::time::Instant::now();
        // If this handler is dropped (the client went away), the build is
        // cancelled; the task below still cleans up and releases leases.
        let guard = job.cancel.clone().drop_guard();
        let (d2, job2) = (d.clone(), job.clone());
        let task = tokio::spawn(async move {
            let r = run_solve(d2.clone(), tenant.clone(), job2.clone(), r).await;
            if r.is_ok() {
                counted.succeeded();
            }
            log.finished(since.elapsed(), r.as_ref().err());
            drop(counted);
            job2.cancel.cancel();
            // LLBBridge solves of this job run in tasks of their own: let
            // them end (they were just cancelled) before releasing, so a
            // result that lands late is not kept by nobody.
            job2.wait_solves().await;
            job2.release_results(true).await;
            if let Some(id) = history_ref {
                // The record is written before Solve answers, as BuildKit
                // does: `buildx history` right after the build finds it.
                let (history, progress) = (tenant.history.clone(), job2.subscribe().0);
                let results = r.as_ref().map(|f| f.results.clone()).unwrap_or_default();
                let outcome = crate::history::Outcome {
                    exporter_response: r
                        .as_ref()
                        .ok()
                        .map(|f| f.response.exporter_response.clone()),
                    results: results.clone(),
                    error: r.as_ref().err().cloned(),
                    progress,
                };
                // The record's results are held before the build's lease
                // goes, beside the record's write (its fsyncs).
                let key = id.clone();
                let held = crate::historyresults::hold(
                    tenant.engine.services(),
                    &tenant.owner,
                    &key,
                    &results,
                );
                let written = tokio::task::spawn_blocking(move || history.completed(&id, outcome));
                let (written, ()) = tokio::join!(written, held);
                let gone = written.unwrap_or_default();
                // Results of records the limits just removed go with them.
                crate::historyresults::release(tenant.engine.services(), &gone).await;
            }
            let mut r = r;
            if let Some(release) = r.as_mut().ok().and_then(|f| f.release.take()) {
                if tenant.cache_max.is_some() {
                    // The prune to cache-max below comes before the answer
                    // and must not find this build's records in use.
                    release.await;
                } else {
                    d2.jobs.after(release);
                }
            }
            tenant.enforce_cache_max().await;
            drop(build_permit);
            let _ = std::fs::remove_dir_all(crate::solve::job_dir(&d2, &job2));
            job2.mark_done();
            // Keep the finished job a little so a Status call that arrives
            // after a fast (all cached) build still gets its history.
            d2.jobs.forget_after(&job2, FINISHED_JOB_GRACE);
            drop(active);
            r
        });
        let r = task.await.map_err(|e| Status::internal(e.to_string()))?;
        guard.disarm();
        settle_session(&d, &session, Duration::ZERO, Duration::ZERO).await;
        r.map(|f| Response::new(f.response))
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn solve(
        &self,
        request: Request<SolveRequest>,
    ) -> Result<Response<SolveResponse>, Status> {
        let d = &self.0;
        let tenant = d
            .tenant(&request)
            .await
            .map_err(crate::errdetails::build_failure)?;
        let scoped = |name: &str| (!name.is_empty()).then(|| tenant.scoped(name));
        let (key, session) = (
            scoped(&request.get_ref().r#ref),
            scoped(&request.get_ref().session),
        );
        let answer = self.build(tenant.clone(), request).await;
        if answer.is_err() {
            // Refused before any job (a build that ran has its own): a
            // client's Status of this ref ends at once, empty, instead of
            // waiting for a build that will never start (buildctl and
            // buildx waited 6 s for it, BuildKit's clients 5 s).
            if let Some(job) = key.and_then(|k| d.jobs.refused(&k, &d.shutdown)) {
                d.jobs.forget_after(&job, FINISHED_JOB_GRACE);
            }
            // The client opened its session beside this call and closes
            // it on the answer; kilnd's side of it may still be starting
            // (HTTP/2's preface and settings). Answered now, those bytes
            // meet the client's closing, which reads them as a bad frame
            // (buildx printed "http2: server connection error ...
            // PROTOCOL_ERROR"). Let it attach and settle first, briefly
            // (a build that ran settled it in `build`).
            if let Some(id) = session {
                settle_session(d, &id, SESSION_DRAIN, SESSION_HANDSHAKE_QUIET).await;
            }
        }
        answer.map_err(crate::errdetails::build_failure)
    }

    async fn status(
        &self,
        request: Request<StatusRequest>,
    ) -> Result<Response<BoxStream<StatusResponse>>, Status> {
        let d = self.0.clone();
        let tenant = d.tenant(&request).await?;
        let id = request.into_inner().r#ref;
        // A finished build's progress comes from its record, as BuildKit
        // reads its history first (`buildx history logs`).
        let history = tenant.history.clone();
        let hid = id.clone();
        let kept = tokio::task::spawn_blocking(move || history.progress(&hid))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| e.status())?;
        if let Some(kept) = kept {
            let mut resp = Response::new(async_stream(kept, |_| async {}));
            timestamp_header(&mut resp);
            return Ok(resp);
        }
        let key = tenant.scoped(&id);
        let Some(job) = d.jobs.wait_started(&key, STATUS_WAIT, &d.shutdown).await else {
            return Err(Status::not_found(format!("no such job {id}")));
        };
        let (history, mut updates, mut done) = job.subscribe();
        // A receiver starts with the current value seen: a build that was
        // already done (a fast failure, an all-cached build) would never
        // change again and the stream would never end. Make the first
        // `changed` look at the value.
        done.mark_changed();
        let stream = async_stream(history, move |tx| async move {
            loop {
                tokio::select! {
                    u = updates.recv() => match u {
                        Ok(s) => if tx.send(Ok(s)).await.is_err() { return },
                        // Fell behind: what was missed is gone (logs
                        // included), but every vertex's newest state is
                        // sent so no step looks stuck.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            if tx.send(Ok(job.state())).await.is_err() { return }
                        }
                        Err(_) => return,
                    },
                    c = done.changed() => {
                        if c.is_err() || *done.borrow() {
                            // Drain what is left, then end the stream OK.
                            while let Ok(s) = updates.try_recv() {
                                if tx.send(Ok(s)).await.is_err() { return }
                            }
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(stream))
    }

    async fn session(
        &self,
        request: Request<Streaming<BytesMessage>>,
    ) -> Result<Response<BoxStream<BytesMessage>>, Status> {
        let tenant = self.0.tenant(&request).await?;
        let md = request.metadata();
        let id = md
            .get(kiln_session::hijack::SESSION_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if id.is_empty() {
            return Err(Status::invalid_argument(
                "session without x-docker-expose-session-uuid",
            ));
        }
        let methods: Vec<String> = md
            .get_all(kiln_session::hijack::SESSION_METHOD_HEADER)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|s| s.trim().to_string()))
            .collect();
        let shared_key = md
            .get(kiln_session::hijack::SESSION_SHARED_KEY_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let tenant_name = tenant.name.clone();
        // Session ids are keyed by tenant: a build finds only its own
        // tenant's sessions.
        let id = tenant.scoped(&id);
        // One live session per id: a second connection claiming an id in
        // use is refused, never merged with (or allowed to replace) it.
        let generation = self.0.sessions.reserve(&id)?;
        let (conn, outbound) = kiln_session::hijack::daemon_side(request.into_inner());
        let written = conn.outbound();
        let d = self.0.clone();
        let sid = id.clone();
        tokio::spawn(async move {
            match kiln_session::hijack::connect_session(conn).await {
                Ok(channel) => d.sessions.attach(
                    &sid,
                    generation,
                    crate::sessions::SessionHandle {
                        channel,
                        methods,
                        tenant: tenant_name,
                        shared_key,
                        nonce: crate::sessions::nonce(),
                        outbound: written,
                    },
                ),
                Err(e) => tracing::warn!(session = %sid, error = %e, "cannot talk to the session"),
            }
        });
        let d = self.0.clone();
        // The session's end (client closed it, or its connection died) ends
        // its builds: they cannot export to a client that is gone, and their
        // steps, containers, mounts and leases are released by cancelling.
        let out = crate::sessions::on_end(Box::pin(outbound), move || {
            d.sessions.remove(&id, generation);
            d.jobs.cancel_session(&id);
        });
        Ok(Response::new(out))
    }

    async fn list_workers(
        &self,
        request: Request<ListWorkersRequest>,
    ) -> Result<Response<ListWorkersResponse>, Status> {
        let tenant = self.0.tenant(&request).await?;
        crate::workers::list_workers(&self.0, &tenant, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn info(&self, request: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        // Only known clients learn anything, even the version.
        self.0.tenant(&request).await?;
        crate::workers::info(&self.0).await.map(Response::new)
    }

    async fn disk_usage(
        &self,
        request: Request<DiskUsageRequest>,
    ) -> Result<Response<DiskUsageResponse>, Status> {
        let tenant = self.0.tenant(&request).await?;
        self.0.jobs.settled().await;
        crate::workers::disk_usage(&tenant, &self.0.contexts, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn listen_build_history(
        &self,
        request: Request<BuildHistoryRequest>,
    ) -> Result<Response<BoxStream<BuildHistoryEvent>>, Status> {
        let tenant = self.0.tenant(&request).await?;
        let req = request.into_inner();
        // Subscribe before listing, so nothing between the two is missed.
        let mut events = tenant.history.subscribe();
        let history = tenant.history.clone();
        let list_req = req.clone();
        let first = tokio::task::spawn_blocking(move || history.list(&list_req))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(|e| e.status())?;
        let shutdown = self.0.shutdown.clone();
        let early_exit = req.early_exit;
        let stream = async_stream(first, move |tx| async move {
            if early_exit {
                return;
            }
            loop {
                tokio::select! {
                    e = events.recv() => match e {
                        Ok(e) => {
                            let theirs = req.r#ref.is_empty()
                                || e.record.as_ref().is_some_and(|r| r.r#ref == req.r#ref);
                            let wanted = !req.active_only
                                || e.r#type == kiln_proto::control::BuildHistoryEventType::Started as i32;
                            if theirs && wanted && tx.send(Ok(e)).await.is_err() {
                                return;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            tracing::debug!(missed = n, "a build history listener fell behind");
                        }
                        Err(_) => return,
                    },
                    _ = shutdown.cancelled() => return,
                    _ = tx.closed() => return,
                }
            }
        });
        let mut resp = Response::new(stream);
        timestamp_header(&mut resp);
        Ok(resp)
    }

    async fn update_build_history(
        &self,
        request: Request<UpdateBuildHistoryRequest>,
    ) -> Result<Response<UpdateBuildHistoryResponse>, Status> {
        let tenant = self.0.tenant(&request).await?;
        let req = request.into_inner();
        let deleted = req.delete.then(|| req.r#ref.clone());
        let history = tenant.history.clone();
        let done = tokio::task::spawn_blocking(move || {
            if req.delete {
                history.delete(&req.r#ref)
            } else if req.finalize {
                // Records are final when written: kilnd adds no trace
                // later (BuildKit answers OK for a ref without a pending
                // trace too).
                Ok(())
            } else {
                history.set_pinned(&req.r#ref, req.pinned)
            }
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
        done.map_err(|e| e.status())?;
        if let Some(r) = deleted {
            crate::historyresults::release(tenant.engine.services(), &[r]).await;
        }
        Ok(Response::new(UpdateBuildHistoryResponse {}))
    }

    async fn prune(
        &self,
        request: Request<PruneRequest>,
    ) -> Result<Response<BoxStream<UsageRecord>>, Status> {
        let tenant = self.0.tenant(&request).await?;
        self.0.jobs.settled().await;
        let records =
            crate::workers::prune(&tenant, &self.0.contexts, request.into_inner()).await?;
        let s = tokio_stream::iter(records.into_iter().map(Ok));
        Ok(Response::new(Box::pin(s)))
    }
}

/// BuildKit's `buildkit-current-timestamp` header of Status and
/// ListenBuildHistory (buildx's `history ls` computes running builds'
/// durations from it).
fn timestamp_header<T>(resp: &mut Response<T>) {
    let now = crate::history::rfc3339_nanos(std::time::SystemTime::now());
    if let Ok(v) = now.parse() {
        resp.metadata_mut().insert("buildkit-current-timestamp", v);
    }
}

/// A boxed stream fed by `history` first, then by `f`.
fn async_stream<T, F, Fut>(history: Vec<T>, f: F) -> BoxStream<T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T, Status>>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        for h in history {
            if tx.send(Ok(h)).await.is_err() {
                return;
            }
        }
        f(tx).await;
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_returned_error_keeps_its_details() {
        let detail = prost_types::Any {
            type_url: crate::errdetails::SOURCE_TYPE_URL.into(),
            value: br#"{"ranges":[{"start":{"line":2}}]}"#.to_vec(),
        };
        let st = returned_error(kiln_proto::rpc::Status {
            code: tonic::Code::FailedPrecondition as i32,
            message: "FailedPrecondition: Dockerfile:2: failed".into(),
            details: vec![detail.clone()],
        });
        assert_eq!(st.code(), tonic::Code::FailedPrecondition);
        assert_eq!(st.message(), "Dockerfile:2: failed");
        let rpc: kiln_proto::rpc::Status =
            prost::Message::decode(st.details()).expect("google.rpc.Status");
        assert_eq!(rpc.details, vec![detail]);
        let plain = returned_error(kiln_proto::rpc::Status {
            code: tonic::Code::Internal as i32,
            message: "boom".into(),
            details: Vec::new(),
        });
        assert!(plain.details().is_empty());
    }

    #[test]
    fn code_prefixes_are_stripped() {
        assert_eq!(strip_code_prefix("NotFound: NotFound: gone"), "gone");
        assert_eq!(strip_code_prefix("Dockerfile:2: bad"), "Dockerfile:2: bad");
        assert_eq!(strip_code_prefix("InvalidArgument: x: y"), "x: y");
    }
}
