//! A client that talks to kilnd exactly as `buildctl build --frontend
//! dockerfile.v0` (v0.11 and later) does, for the fault tests: a session
//! serving the context over FileSync, `Control.Solve` without a frontend
//! (the gateway flow), `Control.Status`, and `LLBBridge.Solve` with the
//! Dockerfile frontend followed by `Return`, all at once. Like buildctl, a
//! SIGINT cancels the Solve calls and closes the session; SIGKILL just
//! drops the connection.
//!
//! Usage: `buildctl-like unix:///path/kilnd.sock CONTEXT_DIR [IMAGE_NAME]`.
//! With `BUILDCTL_LIKE_PUSH=1` the image exporter gets `push=true`, and
//! with `BUILDCTL_LIKE_AUTH=user:password` the session serves
//! `Auth.Credentials` with that login for every registry (buildctl's
//! auth provider answers from the docker config the same way).
//! `BUILDCTL_LIKE_SSH=ID=SOCKET,ID=SOCKET` are the SSH agents the session
//! forwards, as `buildctl --ssh ID=SOCKET`.
//! `BUILDCTL_LIKE_OCI=NAME=DIR,NAME=DIR` are OCI layouts the session
//! serves as the content stores `oci:NAME`, as `buildctl --oci-layout
//! NAME=DIR` (and buildx for `--build-context X=oci-layout://DIR`) do.
//! `BUILDCTL_LIKE_INPUTS=NAME=FILE,NAME=FILE` are frontend inputs, each an
//! encoded LLB `Definition` (as buildx sends bake's `target:` contexts).
//! `BUILDCTL_LIKE_OPTS=k=v,k=v` are frontend options, as `buildctl --opt`;
//! `BUILDCTL_LIKE_EXPORT=k=v,k=v` are more attributes of the image exporter
//! (e.g. `compression=zstd`, as in `buildctl --output type=image,...`).
//! `BUILDCTL_LIKE_POLICY=allow`, `deny=MESSAGE`, `deny-prefix=PREFIX`,
//! `config` or `attest` serves a build policy in the session and names it
//! in `SourcePolicySession`, as buildx does for a `Dockerfile.rego`:
//! `allow` lets every source through, `deny` denies image sources with
//! MESSAGE, `deny-prefix` the sources whose identifier starts with PREFIX,
//! `config` first asks for an image's digest and config (then allows it),
//! `attest` asks for its attestation chain; each source asked about is
//! printed as `buildctl-like: policy IDENTIFIER`, and a resolved image as
//! `buildctl-like: policy IDENTIFIER digest DIGEST os OS`.
//! `BUILDCTL_LIKE_UPLOAD=FILE` serves FILE in the session as an upload
//! and names its `http://buildkit-session/<id>` URL as the `context`
//! frontend option, as buildx does for a tar context on stdin
//! (`docker buildx build - < context.tar`); the URL is printed as
//! `buildctl-like: upload URL`.
//! `BUILDCTL_LIKE_REQUEST=compat=N|proxy-network|session-exporter` sets
//! that option of the Solve request.
//! Every status log line is printed to stdout as it arrives, so a test can
//! wait for a step's output before it interrupts the client; a vertex that
//! ends in error is printed as `buildctl-like: vertex NAME error ERROR`. A failed
//! build prints its error and then each typed detail of the error's status
//! (`buildctl-like: detail TYPE_URL VALUE`). The frontend result's
//! `result.*` metadata (a subrequest's answer, such as the lint request's)
//! and its `version` are printed as `buildctl-like: metadata KEY` and the value's lines.

use kiln_proto::control::control_client::ControlClient;
use kiln_proto::control::{Exporter, SolveRequest, StatusRequest};
use kiln_proto::gateway::llb_bridge_client::LlbBridgeClient;
use kiln_proto::gateway::{self, ReturnRequest};
use kiln_session::auth::{AuthServerImpl, CredentialSource, HostCredentials, SourceError};
use kiln_session::filesync::FileSyncServerImpl;
use kiln_session::hijack::{client_side, serve_session, SessionServices};
use kiln_session::ssh::{ForwardedAgents, SshServerImpl};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

type Error = Box<dyn std::error::Error + Send + Sync>;

/// One login for every registry.
#[derive(Debug)]
struct FixedLogin(HostCredentials);

#[tonic::async_trait]
impl CredentialSource for FixedLogin {
    async fn credentials(&self, _host: &str) -> Result<Option<HostCredentials>, SourceError> {
        Ok(Some(self.0.clone()))
    }
}

fn random_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("bc{}x{nanos}", std::process::id())
}

fn with_build_id<T>(msg: T, id: &str) -> Result<tonic::Request<T>, Error> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("buildkit-controlapi-buildid", id.parse()?);
    Ok(r)
}

/// The policy of `BUILDCTL_LIKE_POLICY`.
#[derive(Debug)]
struct FixedPolicy {
    deny: Option<String>,
    /// Denies the sources whose identifier starts with this.
    deny_prefix: Option<String>,
    /// Ask for an image's metadata first: `Some(true)` with its
    /// attestation chain.
    ask: Option<bool>,
}

impl kiln_session::policy::Policy for FixedPolicy {
    fn check(
        &self,
        req: &kiln_proto::policysession::CheckPolicyRequest,
    ) -> Result<kiln_proto::policysession::CheckPolicyResponse, String> {
        use kiln_proto::policysession::{check_policy_response, DecisionResponse, DenyMessage};
        use kiln_proto::sourcepolicy::PolicyAction;
        let id = req
            .source
            .as_ref()
            .and_then(|s| s.source.as_ref())
            .map(|s| s.identifier.clone())
            .ok_or("no source in the policy request")?;
        let resolved = req.source.as_ref().and_then(|s| s.image.as_ref());
        if let Some(image) = resolved {
            let os = serde_json::from_slice::<serde_json::Value>(&image.config)
                .ok()
                .and_then(|c| c["os"].as_str().map(str::to_string))
                .unwrap_or_default();
            println!("buildctl-like: policy {id} digest {} os {os}", image.digest);
        } else {
            println!("buildctl-like: policy {id}");
        }
        if let (Some(attest), None, true) = (self.ask, resolved, id.starts_with("docker-image://"))
        {
            let source = req.source.as_ref().and_then(|s| s.source.clone());
            return Ok(kiln_proto::policysession::CheckPolicyResponse {
                result: Some(check_policy_response::Result::Request(
                    kiln_proto::gateway::ResolveSourceMetaRequest {
                        source,
                        platform: req.platform.clone(),
                        image: Some(kiln_proto::gateway::ResolveSourceImageRequest {
                            attestation_chain: attest,
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )),
            });
        }
        let by_prefix = self
            .deny_prefix
            .as_ref()
            .filter(|p| id.starts_with(p.as_str()))
            .map(|p| format!("{p} sources are not allowed"));
        let deny = self
            .deny
            .clone()
            .filter(|_| id.starts_with("docker-image://"))
            .or(by_prefix);
        let deny = deny.as_ref();
        let decision = DecisionResponse {
            action: if deny.is_some() {
                PolicyAction::Deny as i32
            } else {
                PolicyAction::Allow as i32
            },
            deny_messages: deny
                .map(|m| DenyMessage { message: m.clone() })
                .into_iter()
                .collect(),
            update: None,
        };
        Ok(kiln_proto::policysession::CheckPolicyResponse {
            result: Some(check_policy_response::Result::Decision(decision)),
        })
    }
}

/// `k=v,k=v` pairs of the environment variable `var`.
fn env_pairs(var: &str) -> HashMap<String, String> {
    std::env::var(var)
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The frontend inputs of `BUILDCTL_LIKE_INPUTS`.
fn frontend_inputs() -> Result<HashMap<String, kiln_proto::llb::Definition>, Error> {
    env_pairs("BUILDCTL_LIKE_INPUTS")
        .into_iter()
        .map(|(name, file)| {
            let bytes = std::fs::read(&file)?;
            let def = <kiln_proto::llb::Definition as prost::Message>::decode(bytes.as_slice())?;
            Ok((name, def))
        })
        .collect()
}

/// The frontend half: LLBBridge.Solve with dockerfile.v0, then Return.
async fn gateway(
    channel: Channel,
    build: String,
    mut frontend_opt: HashMap<String, String>,
) -> Result<(), Error> {
    let mut bridge = LlbBridgeClient::new(channel);
    let frontend_inputs = frontend_inputs()?;
    frontend_opt.extend(env_pairs("BUILDCTL_LIKE_OPTS"));
    let solved = bridge
        .solve(with_build_id(
            gateway::SolveRequest {
                frontend: "dockerfile.v0".into(),
                frontend_opt,
                frontend_inputs,
                allow_result_return: true,
                ..Default::default()
            },
            &build,
        )?)
        .await;
    let ret = match solved {
        Ok(r) => {
            let result = r.into_inner().result;
            let mut metadata: Vec<_> = result
                .iter()
                .flat_map(|r| r.metadata.iter())
                .filter(|(k, _)| k.starts_with("result.") || *k == "version")
                .collect();
            metadata.sort();
            let mut out = std::io::stdout().lock();
            for (k, v) in metadata {
                let _ = writeln!(out, "buildctl-like: metadata {k}");
                let _ = writeln!(out, "{}", String::from_utf8_lossy(v));
            }
            ReturnRequest {
                result,
                error: None,
            }
        }
        // As buildctl, the error goes back with its typed details.
        Err(s) => ReturnRequest {
            result: None,
            error: Some(kiln_proto::rpc::Status {
                code: s.code() as i32,
                message: s.message().to_string(),
                details: <kiln_proto::rpc::Status as prost::Message>::decode(s.details())
                    .map(|st| st.details)
                    .unwrap_or_default(),
            }),
        },
    };
    bridge.r#return(with_build_id(ret, &build)?).await?;
    Ok(())
}

async fn run(addr: &str, context: PathBuf, name: Option<String>) -> Result<bool, Error> {
    let path = addr
        .strip_prefix("unix://")
        .ok_or("the address must be unix:///path")?;
    let channel = containerd_client::connect(path).await?;
    let mut control = ControlClient::new(channel.clone());

    let session_id = random_id();
    let build = random_id();
    let mut services = SessionServices::new();
    services.add(
        FileSyncServerImpl::new(HashMap::from([
            ("context".to_string(), context.clone()),
            ("dockerfile".to_string(), context),
        ]))
        .into_service(),
        FileSyncServerImpl::METHODS,
    );
    if let Some((user, password)) = std::env::var("BUILDCTL_LIKE_AUTH").ok().and_then(|v| {
        v.split_once(':')
            .map(|(u, p)| (u.to_string(), p.to_string()))
    }) {
        services.add(
            AuthServerImpl::new(std::sync::Arc::new(FixedLogin(HostCredentials {
                username: user,
                secret: password,
            })))
            .into_service(),
            AuthServerImpl::METHODS,
        );
    }
    let layouts = env_pairs("BUILDCTL_LIKE_OCI");
    if !layouts.is_empty() {
        let stores = layouts
            .into_iter()
            .map(|(name, dir)| {
                (
                    kiln_session::content::oci_store_id(&name),
                    PathBuf::from(dir),
                )
            })
            .collect();
        services.add(
            kiln_session::content::LayoutStores::new(stores).into_service(),
            kiln_session::content::LayoutStores::METHODS,
        );
    }
    let agents = env_pairs("BUILDCTL_LIKE_SSH");
    if !agents.is_empty() {
        let agents = ForwardedAgents::new(
            agents
                .into_iter()
                .map(|(id, sock)| (id, PathBuf::from(sock)))
                .collect(),
        );
        services.add(
            SshServerImpl::new(agents).into_service(),
            SshServerImpl::METHODS,
        );
    }
    let mut frontend_opt = HashMap::new();
    if let Ok(file) = std::env::var("BUILDCTL_LIKE_UPLOAD") {
        let uploads = kiln_session::upload::UploadServerImpl::new();
        let body = tokio::fs::File::open(&file).await?;
        let url = uploads.add(Box::new(body))?;
        println!("buildctl-like: upload {url}");
        frontend_opt.insert("context".to_string(), url);
        services.add(
            uploads.into_service(),
            kiln_session::upload::UploadServerImpl::METHODS,
        );
    }
    let policy = std::env::var("BUILDCTL_LIKE_POLICY").ok();
    if let Some(p) = &policy {
        let deny = p.strip_prefix("deny=").map(str::to_string);
        let ask = match p.as_str() {
            "config" => Some(false),
            "attest" => Some(true),
            _ => None,
        };
        services.add(
            kiln_session::policy::PolicyServerImpl::new(std::sync::Arc::new(FixedPolicy {
                deny,
                deny_prefix: p.strip_prefix("deny-prefix=").map(str::to_string),
                ask,
            }))
            .into_service(),
            kiln_session::policy::PolicyServerImpl::METHODS,
        );
    }
    let (side, requests) = client_side();
    let req = kiln_session::hijack::session_request(&session_id, "", &services, requests)?;
    let responses = control.session(req).await?.into_inner();
    let session_done = CancellationToken::new();
    let session = tokio::spawn(serve_session(
        side.attach(responses),
        services,
        session_done.clone(),
    ));

    let mut status_client = control.clone();
    let status_ref = build.clone();
    let status = tokio::spawn(async move {
        let Ok(s) = status_client
            .status(StatusRequest { r#ref: status_ref })
            .await
        else {
            return;
        };
        let mut stream = s.into_inner();
        while let Ok(Some(msg)) = stream.message().await {
            let mut out = std::io::stdout().lock();
            // A vertex that ended in error, as buildctl shows it (`ERROR:`,
            // or `CANCELED` for `context canceled`).
            for v in msg.vertexes.iter().filter(|v| !v.error.is_empty()) {
                let _ = writeln!(out, "buildctl-like: vertex {} error {}", v.name, v.error);
            }
            for l in msg.logs {
                for line in String::from_utf8_lossy(&l.msg).lines() {
                    let _ = writeln!(out, "{line}");
                }
            }
            let _ = out.flush();
        }
    });
    let frontend = tokio::spawn(gateway(channel.clone(), build.clone(), frontend_opt));
    let push = std::env::var("BUILDCTL_LIKE_PUSH").is_ok_and(|v| v == "1");
    let exporters = name
        .map(|n| {
            let mut attrs = env_pairs("BUILDCTL_LIKE_EXPORT");
            attrs.insert("name".to_string(), n);
            if push {
                attrs.insert("push".to_string(), "true".to_string());
            }
            vec![Exporter {
                r#type: "image".into(),
                attrs,
            }]
        })
        .unwrap_or_default();
    let request = std::env::var("BUILDCTL_LIKE_REQUEST").unwrap_or_default();
    let solve = control.solve(SolveRequest {
        r#ref: build,
        source_policy_session: if policy.is_some() {
            session_id.clone()
        } else {
            String::new()
        },
        session: session_id,
        exporters,
        compatibility_version: request
            .strip_prefix("compat=")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        proxy_network: request == "proxy-network",
        enable_session_exporter: request == "session-exporter",
        ..Default::default()
    });

    let mut sigint = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let ok = tokio::select! {
        r = solve => {
            if let Err(e) = &r {
                eprintln!("buildctl-like: solve: {}", e.message());
                // The code apart: BuildKit's clients print any code but
                // Unknown before the message.
                eprintln!("buildctl-like: code {:?}", e.code());
                // Each typed detail on its own line, as
                // `detail TYPE_URL VALUE` (buildctl prints the
                // errdefs.Source ones as the `>>>` snippet).
                if let Ok(st) = <kiln_proto::rpc::Status as prost::Message>::decode(e.details()) {
                    for d in st.details {
                        eprintln!(
                            "buildctl-like: detail {} {}",
                            d.type_url,
                            String::from_utf8_lossy(&d.value)
                        );
                    }
                }
            }
            r.is_ok()
        }
        _ = sigint.recv() => {
            // As buildctl: the Solve calls are cancelled at once; the
            // session and Status wind down right after.
            eprintln!("buildctl-like: interrupted");
            frontend.abort();
            false
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), status).await;
    session_done.cancel();
    let _ = session.await;
    Ok(ok)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(addr), Some(context)) = (args.first(), args.get(1)) else {
        eprintln!("usage: buildctl-like unix:///path CONTEXT_DIR [IMAGE_NAME]");
        return ExitCode::from(2);
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("buildctl-like: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(addr, PathBuf::from(context), args.get(2).cloned())) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("buildctl-like: {e}");
            ExitCode::FAILURE
        }
    }
}
