//! Gateway frontend images: `gateway.v0` with `source=IMAGE`, and what a
//! Dockerfile's `# syntax=IMAGE` (or `BUILDKIT_SYNTAX`) forwards to, as
//! BuildKit's gateway runs them. The image is solved like any source, then
//! run as a container (a writable copy of its rootfs, no network, its
//! config's Entrypoint/Env/WorkingDir, BuildKit's `BUILDKIT_*` variables)
//! whose stdin and stdout carry one HTTP/2 connection of the LLBBridge.
//! That bridge is kilnd's own (`crate::gateway`), scoped to the build that
//! runs the frontend (its job, session and tenant: [`Scope`]); the
//! frontend's Return is the solve's result. BuildKit's own Dockerfile
//! frontend (`docker/dockerfile:1`, …) is kiln's built-in one and never
//! runs as an image.

use crate::gateway::GatewayService;
use crate::jobs::Job;
use crate::sessions::SessionHandle;
use crate::solve::{solve_defined, Input};
use crate::state::{status_of, Daemon};
use crate::tenants::Tenant;
use kiln_engine::build::Solved;
use kiln_engine::OutputStream;
use kiln_proto::gateway::llb_bridge_server::LlbBridgeServer;
use kiln_proto::gateway::{result, ReturnRequest};
use kiln_proto::llb;
use kiln_snapshot::diff::Compression;
use kiln_solver::ImageConfig;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tonic::Status;

/// How much of a frontend's stderr a failure quotes (its end).
const STDERR_TAIL: usize = 4096;
/// How long the output pump may take after the frontend exited.
const DRAIN: Duration = Duration::from_secs(2);
/// How long a frontend may go on after its Return before it is stopped:
/// it has nothing left to do.
const RETURN_GRACE: Duration = Duration::from_secs(10);

/// The frontend attribute naming the frontend image (BuildKit's
/// `frontend.KeySource`).
pub const SOURCE: &str = "source";
/// The attribute BuildKit's Dockerfile frontend sets when it forwards: the
/// whole `syntax` value. A frontend that receives it does not forward again.
pub const CMDLINE: &str = "cmdline";
/// The build argument that chooses the frontend, over the `syntax`
/// directive.
const SYNTAX_ARG: &str = "build-arg:BUILDKIT_SYNTAX";

/// What a frontend image's bridge calls belong to, carried by each
/// request of its connection (`GatewayService::job` reads it).
#[derive(Clone)]
pub struct Scope {
    pub tenant: Arc<Tenant>,
    pub job: Arc<Job>,
    /// The frontend inputs it was given (`LLBBridge.Inputs`).
    pub inputs: Arc<HashMap<String, llb::Definition>>,
    /// Where its Return lands (not the job's: a client driving the build
    /// over LLBBridge returns there, and this frontend may be one of its
    /// solves).
    pub returned: Arc<watch::Sender<Option<ReturnRequest>>>,
}

/// How a `dockerfile.v0` or `gateway.v0` request is answered.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// kiln's own Dockerfile frontend.
    Dockerfile,
    /// A frontend image (`source` in the attributes).
    Image,
}

/// Routes `frontend` with `attrs`: `gateway.v0` of BuildKit's Dockerfile
/// frontend (`dockerfile.v0`, `docker/dockerfile:1`, …) is the built-in
/// one (its `source` attribute removed), of any other image an image;
/// `None` for other frontends.
pub fn route(frontend: &str, attrs: &mut HashMap<String, String>) -> Result<Option<Route>, Status> {
    match frontend {
        "dockerfile.v0" => Ok(Some(Route::Dockerfile)),
        "gateway.v0" => {
            let source = attrs.get(SOURCE).map(String::as_str).unwrap_or_default();
            if source.is_empty() {
                return Err(Status::invalid_argument("no source specified for gateway"));
            }
            if source == "dockerfile.v0"
                || kiln_dockerfile::directives::is_dockerfile_frontend(source)
            {
                attrs.remove(SOURCE);
                Ok(Some(Route::Dockerfile))
            } else {
                Ok(Some(Route::Image))
            }
        }
        _ => Ok(None),
    }
}

/// A Dockerfile build that BuildKit's Dockerfile frontend forwards to
/// another frontend image: the `BUILDKIT_SYNTAX` build argument, else the
/// file's `syntax` directive (`dockerfile` is its text, when read), unless
/// it names the built-in frontend or the request was forwarded already
/// (`cmdline` set). The attributes to run the image with are returned.
pub fn forward(
    attrs: &HashMap<String, String>,
    dockerfile: Option<&str>,
) -> Option<HashMap<String, String>> {
    if attrs.contains_key(CMDLINE) {
        return None;
    }
    let (image, cmdline) = match attrs.get(SYNTAX_ARG).filter(|v| !v.trim().is_empty()) {
        Some(v) => {
            let v = v.trim();
            let image = v.split(' ').next().unwrap_or(v);
            (image.to_string(), v.to_string())
        }
        None => {
            // As BuildKit: the image is the first word, and the whole
            // line (its arguments too) is the image's `cmdline`.
            let d = kiln_dockerfile::directives::detect_syntax(dockerfile?)?;
            (d.value, d.cmdline)
        }
    };
    if kiln_dockerfile::directives::is_dockerfile_frontend(&image) {
        return None;
    }
    let mut forwarded = attrs.clone();
    forwarded.insert(CMDLINE.to_string(), cmdline);
    forwarded.insert(SOURCE.to_string(), image);
    Some(forwarded)
}

/// The attributes kiln's Dockerfile frontend reads: without the ones that
/// only choose the frontend (`source`, `cmdline`).
pub fn dockerfile_attrs(attrs: &HashMap<String, String>) -> HashMap<String, String> {
    let mut a = attrs.clone();
    a.remove(SOURCE);
    a.remove(CMDLINE);
    a
}

/// A failure of frontend image `image`, named in the message.
fn failed(image: &str, s: Status) -> Status {
    Status::with_details(
        s.code(),
        format!("frontend image {image}: {}", s.message()),
        s.details().to_vec().into(),
    )
}

/// Solves the image `attrs["source"]` names, runs it as a frontend with
/// `attrs` and `inputs`, and takes the result it returned out of the job's
/// results, with its image config and the definitions of its refs (see
/// [`solve_defined`]).
pub async fn solve(
    d: &Arc<Daemon>,
    job: &Arc<Job>,
    session: Option<&SessionHandle>,
    attrs: &HashMap<String, String>,
    inputs: &HashMap<String, llb::Definition>,
    compression: Compression,
) -> Result<(Solved, Option<ImageConfig>, Vec<llb::Definition>), Status> {
    let image = attrs
        .get(SOURCE)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Status::invalid_argument("no source specified for gateway"))?
        .clone();
    let name = kiln_dockerfile::reference::normalize(&image).map_err(|e| {
        Status::invalid_argument(format!(
            "frontend image {image:?} is not an image name: {e}"
        ))
    })?;
    let tenant_name = job.tenant.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let tenant = d.tenant_named(tenant_name.as_deref()).await?;
    let credentials: Arc<dyn kiln_registry::Credentials> =
        Arc::new(crate::registry::SessionCredentials::new(session));
    // The frontend image is a source of the build like any other: the
    // client's policy allows it before it is looked up.
    let engine = job.engine(&tenant.engine);
    let resolver = crate::policy::Resolver {
        engine: &engine,
        credentials: credentials.clone(),
    };
    crate::policy::check_image(d, job, &resolver, &name, None)
        .await
        .map_err(|s| failed(&image, s))?;
    let config = engine
        .base_images(kiln_engine::resolve::ResolveMode::Default, credentials)
        .image_config(&name, None, None)
        .await
        .map_err(|e| failed(&image, status_of(&e)))?;
    let (rootfs, _, _) = solve_defined(
        d,
        &tenant.engine,
        job,
        session,
        Input::Definition(&image_definition(&name)),
        compression,
        false,
    )
    .await
    .map_err(|s| failed(&image, s))?;
    let ran = run(d, &tenant, job, &image, &config, attrs, inputs, &rootfs).await;
    rootfs.release(false).await;
    let ret = ran?;
    if let Some(err) = ret.error.filter(|e| e.code != 0) {
        return Err(crate::control::returned_error(err));
    }
    let result = ret.result.unwrap_or_default();
    let Some(found) = crate::gateway::take_returned(job, &result)
        .await
        .map_err(|s| failed(&image, s))?
    else {
        return Err(Status::failed_precondition(format!(
            "frontend image {image} returned no result"
        )));
    };
    let defs = returned_definitions(&result, &found.platform_refs);
    let config = found
        .config
        .or_else(|| crate::gateway::config_from_metadata(&result.metadata));
    Ok((found.solved, config, defs))
}

/// The definitions of a returned result's refs, in the order of its
/// platforms (one for a single platform); empty where a ref has none.
fn returned_definitions(
    r: &kiln_proto::gateway::Result,
    platform_refs: &[String],
) -> Vec<llb::Definition> {
    match r.result.as_ref() {
        Some(result::Result::Ref(rf)) => rf.def.clone().into_iter().collect(),
        Some(result::Result::Refs(m)) => platform_refs
            .iter()
            .filter_map(|id| m.refs.values().find(|r| &r.id == id)?.def.clone())
            .collect(),
        _ => Vec::new(),
    }
}

/// A definition of image `name` alone.
fn image_definition(name: &str) -> llb::Definition {
    use prost::Message;
    let source = llb::Op {
        op: Some(llb::op::Op::Source(llb::SourceOp {
            identifier: format!("docker-image://{name}"),
            ..Default::default()
        })),
        ..Default::default()
    }
    .encode_to_vec();
    let digest = kiln_solver::Digest::of(&source).to_string();
    let last = llb::Op {
        inputs: vec![llb::Input { digest, index: 0 }],
        ..Default::default()
    }
    .encode_to_vec();
    llb::Definition {
        def: vec![source, last],
        ..Default::default()
    }
}

/// BuildKit's `BUILDKIT_WORKERS`: the workers as its Go client decodes
/// them (`[{"ID", "Labels", "Platforms"}]`).
async fn workers_json(d: &Daemon, tenant: &Tenant) -> Result<String, Status> {
    let workers = crate::workers::list_workers(d, tenant, Default::default())
        .await?
        .record;
    let list: Vec<serde_json::Value> = workers
        .into_iter()
        .map(|w| {
            let platforms: Vec<serde_json::Value> = w
                .platforms
                .iter()
                .map(|p| {
                    let mut v = serde_json::json!({"architecture": p.architecture, "os": p.os});
                    if !p.variant.is_empty() {
                        v["variant"] = serde_json::Value::from(p.variant.clone());
                    }
                    v
                })
                .collect();
            serde_json::json!({"ID": w.id, "Labels": w.labels, "Platforms": platforms})
        })
        .collect();
    Ok(serde_json::Value::from(list).to_string())
}

/// The process of a frontend image, as BuildKit's gateway starts it: its
/// Entrypoint (`/run` without one), its Env and WorkingDir, then one
/// `BUILDKIT_FRONTEND_OPT_<n>=KEY=VALUE` per attribute, the session id,
/// the workers and the product.
fn process(
    config: &ImageConfig,
    attrs: &HashMap<String, String>,
    session_id: &str,
    workers: &str,
) -> kiln_engine::build::Process {
    let mut env = config.env.clone();
    let mut sorted: Vec<(&String, &String)> = attrs.iter().collect();
    sorted.sort();
    for (i, (k, v)) in sorted.into_iter().enumerate() {
        env.push(format!("BUILDKIT_FRONTEND_OPT_{i}={k}={v}"));
    }
    env.push(format!("BUILDKIT_SESSION_ID={session_id}"));
    env.push(format!("BUILDKIT_WORKERS={workers}"));
    env.push("BUILDKIT_EXPORTEDPRODUCT=kiln".to_string());
    kiln_engine::build::Process {
        args: config
            .entrypoint
            .clone()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| vec!["/run".to_string()]),
        env,
        cwd: config.working_dir.clone(),
        user: String::new(),
    }
}

/// Runs the frontend on `rootfs` with the bridge on its stdio until it
/// exits; its Return, or why there is none. A Return with an error wins
/// over the process's failure, which wins over a Return of a result (as
/// in BuildKit).
#[allow(
    clippy::too_many_arguments,
    reason = "the frontend's parts, passed through once"
)]
async fn run(
    d: &Arc<Daemon>,
    tenant: &Arc<Tenant>,
    job: &Arc<Job>,
    image: &str,
    config: &ImageConfig,
    attrs: &HashMap<String, String>,
    inputs: &HashMap<String, llb::Definition>,
    rootfs: &Solved,
) -> Result<ReturnRequest, Status> {
    let session_key = job
        .session
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let session_id = crate::tenants::unscoped(tenant.name.as_deref(), &session_key).to_string();
    let workers = workers_json(d, tenant).await?;
    let process = process(config, attrs, &session_id, &workers);

    let (returned_tx, returned_rx) = watch::channel(None);
    let scope = Scope {
        tenant: tenant.clone(),
        job: job.clone(),
        inputs: Arc::new(inputs.clone()),
        returned: Arc::new(returned_tx),
    };
    let bridge = tonic::service::interceptor::InterceptedService::new(
        LlbBridgeServer::new(GatewayService(d.clone()))
            .max_decoding_message_size(crate::MAX_MESSAGE)
            .max_encoding_message_size(crate::MAX_MESSAGE),
        move |mut req: tonic::Request<()>| {
            req.extensions_mut().insert(scope.clone());
            Ok(req)
        },
    );
    // One connection, over an in-memory pipe whose other end the pumps
    // below join to the frontend's stdio. The incoming stream never ends,
    // so the server never starts a graceful shutdown of that connection.
    let (server_io, pump_io) = tokio::io::duplex(64 * 1024);
    let incoming =
        tokio_stream::once(Ok::<_, std::io::Error>(server_io)).chain(tokio_stream::pending());
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(bridge)
            .serve_with_incoming(incoming),
    );

    let (stdin_tx, stdin_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let (out_tx, mut out_rx) =
        tokio::sync::mpsc::channel::<(OutputStream, Vec<u8>)>(kiln_engine::OUTPUT_QUEUE);
    let (mut from_bridge, mut to_bridge) = tokio::io::split(pump_io);
    let stderr = Arc::new(Mutex::new(Vec::<u8>::new()));
    let tail = stderr.clone();
    let frontend = image.to_string();
    let out_pump = tokio::spawn(async move {
        let mut open = true;
        while let Some((stream, data)) = out_rx.recv().await {
            match stream {
                OutputStream::Stdout if open => {
                    open = to_bridge.write_all(&data).await.is_ok();
                }
                OutputStream::Stdout => {}
                OutputStream::Stderr => {
                    tracing::debug!(frontend, stderr = %String::from_utf8_lossy(&data), "frontend output");
                    let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                    t.extend_from_slice(&data);
                    let over = t.len().saturating_sub(STDERR_TAIL);
                    t.drain(..over);
                }
            }
        }
        let _ = to_bridge.shutdown().await;
    });
    // The server closing the connection (the frontend's stdout ended, or
    // it spoke something that is not HTTP/2) closes the frontend's stdin.
    let closed = CancellationToken::new();
    let in_pump = {
        let closed = closed.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match from_bridge.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if stdin_tx.send(buf[..n].to_vec()).await.is_err() {
                            break;
                        }
                    }
                }
            }
            closed.cancel();
        })
    };
    // A connection that ends before the frontend returned ends the
    // frontend too: nothing can reach the build any more. One that
    // returned is stopped if it does not exit soon after.
    let stop = job.cancel.child_token();
    let watcher = {
        let (stop, mut returned) = (stop.clone(), returned_rx.clone());
        let seen = returned_rx.clone();
        tokio::spawn(async move {
            let did_return = tokio::select! {
                _ = closed.cancelled() => seen.borrow().is_some(),
                r = returned.wait_for(Option::is_some) => r.is_ok(),
            };
            if did_return {
                tokio::time::sleep(RETURN_GRACE).await;
                tracing::warn!(
                    "frontend image still running {RETURN_GRACE:?} after its Return; stopping it"
                );
            }
            stop.cancel();
        })
    };
    let io = kiln_engine::StepIo {
        output: out_tx,
        stdin: Some(kiln_engine::Stdin::new(stdin_rx)),
    };
    let status = rootfs.run_process(process, io, stop.clone()).await;
    watcher.abort();
    if tokio::time::timeout(DRAIN, out_pump).await.is_err() {
        tracing::warn!(image, "frontend output still pending; left behind");
    }
    in_pump.abort();
    server.abort();
    let returned = returned_rx.borrow().clone();
    let tail = String::from_utf8_lossy(&stderr.lock().unwrap_or_else(|p| p.into_inner()))
        .trim()
        .to_string();
    let with_output = |msg: String| {
        if tail.is_empty() {
            msg
        } else {
            format!("{msg}: {tail}")
        }
    };
    if let Some(ret) = &returned {
        if ret.error.as_ref().is_some_and(|e| e.code != 0) {
            return Ok(ret.clone());
        }
    }
    match status {
        Err(kiln_engine::WorkerError::Cancelled) if job.cancel.is_cancelled() => {
            Err(Status::cancelled("build cancelled"))
        }
        // Stopped after its Return (`RETURN_GRACE`).
        Err(kiln_engine::WorkerError::Cancelled) if returned.is_some() => {
            Ok(returned.unwrap_or_default())
        }
        Err(kiln_engine::WorkerError::Cancelled) => Err(Status::unavailable(with_output(format!(
            "frontend image {image} closed its LLBBridge connection (stdin/stdout) without returning a result"
        )))),
        Err(e) => Err(failed(image, status_of(&e))),
        Ok(st) if st.code != 0 => Err(Status::unknown(with_output(format!(
            "frontend image {image} exited with code {}{}",
            st.code,
            if returned.is_some() {
                ""
            } else {
                " without returning a result"
            }
        )))),
        Ok(_) => returned.ok_or_else(|| {
            Status::unavailable(with_output(format!(
                "frontend image {image} exited without returning a result"
            )))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn a_foreign_syntax_forwards_and_the_built_in_one_does_not() {
        let a = attrs(&[("filename", "Dockerfile")]);
        let f = forward(&a, Some("# syntax=example.com/fe:1 --flag\nFROM a\n")).expect("forwards");
        assert_eq!(f.get(SOURCE).map(String::as_str), Some("example.com/fe:1"));
        assert_eq!(
            f.get(CMDLINE).map(String::as_str),
            Some("example.com/fe:1 --flag")
        );
        assert_eq!(f.get("filename").map(String::as_str), Some("Dockerfile"));
        assert_eq!(
            forward(&a, Some("# syntax=docker/dockerfile:1.7\nFROM a\n")),
            None
        );
        assert_eq!(forward(&a, Some("FROM a\n")), None);
        assert_eq!(forward(&a, None), None);
        // Forwarded once already.
        let again = attrs(&[(CMDLINE, "example.com/fe:1")]);
        assert_eq!(forward(&again, Some("# syntax=example.com/fe:1\n")), None);
        // The build argument wins over the directive, either way.
        let arg = attrs(&[(SYNTAX_ARG, "other/fe:2 x")]);
        let f = forward(&arg, Some("# syntax=docker/dockerfile:1\n")).expect("forwards");
        assert_eq!(f.get(SOURCE).map(String::as_str), Some("other/fe:2"));
        assert_eq!(f.get(CMDLINE).map(String::as_str), Some("other/fe:2 x"));
        let builtin = attrs(&[(SYNTAX_ARG, "docker/dockerfile:1")]);
        assert_eq!(forward(&builtin, Some("# syntax=other/fe\n")), None);
    }

    #[test]
    fn gateway_of_the_dockerfile_frontend_is_the_built_in_one() {
        for source in [
            "dockerfile.v0",
            "docker/dockerfile:1",
            "docker/dockerfile:1.7-labs",
        ] {
            let mut a = attrs(&[(SOURCE, source)]);
            assert_eq!(
                route("gateway.v0", &mut a).expect("routed"),
                Some(Route::Dockerfile)
            );
            assert!(!a.contains_key(SOURCE));
        }
        let mut a = attrs(&[(SOURCE, "example.com/fe:1")]);
        assert_eq!(
            route("gateway.v0", &mut a).expect("routed"),
            Some(Route::Image)
        );
        assert_eq!(a.len(), 1);
        let e = route("gateway.v0", &mut attrs(&[])).expect_err("no source");
        assert_eq!(e.message(), "no source specified for gateway");
        assert_eq!(
            route("dockerfile.v0", &mut attrs(&[])).expect("routed"),
            Some(Route::Dockerfile)
        );
        assert_eq!(route("other.v0", &mut attrs(&[])).expect("routed"), None);
    }

    #[test]
    fn the_process_is_the_entrypoint_with_buildkits_variables() {
        let config = ImageConfig {
            env: vec!["PATH=/bin".into()],
            entrypoint: Some(vec!["/bin/fe".into(), "-v".into()]),
            cmd: Some(vec!["ignored".into()]),
            working_dir: "/work".into(),
            ..Default::default()
        };
        let p = process(&config, &attrs(&[("b", "2"), ("a", "1=x")]), "sess", "[]");
        assert_eq!(p.args, ["/bin/fe", "-v"]);
        assert_eq!(p.cwd, "/work");
        assert_eq!(
            p.env,
            [
                "PATH=/bin",
                "BUILDKIT_FRONTEND_OPT_0=a=1=x",
                "BUILDKIT_FRONTEND_OPT_1=b=2",
                "BUILDKIT_SESSION_ID=sess",
                "BUILDKIT_WORKERS=[]",
                "BUILDKIT_EXPORTEDPRODUCT=kiln",
            ]
        );
        let bare = process(&ImageConfig::default(), &HashMap::new(), "s", "[]");
        assert_eq!(bare.args, ["/run"]);
    }
}
