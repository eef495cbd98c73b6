//! A gateway frontend for tests/e2e/frontendimage.rs, run by kilnd as a
//! frontend image (`# syntax=IMAGE`, `gateway.v0` with `source=IMAGE`): it
//! speaks LLBBridge over its stdin and stdout as BuildKit's Go frontends
//! do. `Ping`, `ResolveImageConfig` of busybox, then it reads the
//! Dockerfile through the `dockerfile` local of the build's session
//! (`BUILDKIT_SESSION_ID`), solves a file op on busybox (pinned by the
//! resolved digest) that writes `/hello` (a greeting and the Dockerfile's
//! last line) and `/opts` (the `BUILDKIT_FRONTEND_OPT_*` it was given,
//! `key=value` lines, sorted), and returns that result with an image
//! config (busybox's Env and `MADE_BY`).
//!
//! `KILN_TEST_FRONTEND` (from the image config) picks a misbehaviour
//! instead: `exit` exits 3 without a word on the bridge, `garbage` writes
//! text that is not HTTP/2 and waits for stdin to close, `error` returns
//! an error.

use hyper_util::rt::TokioIo;
use kiln_proto::gateway::llb_bridge_client::LlbBridgeClient;
use kiln_proto::gateway::{self, result, PingRequest, ReadFileRequest, ReturnRequest};
use kiln_proto::llb;
use prost::Message;
use std::collections::BTreeMap;
use std::os::fd::FromRawFd;
use std::process::ExitCode;
use tonic::transport::{Channel, Endpoint, Uri};

/// The frontend options BuildKit's gateway passes as
/// `BUILDKIT_FRONTEND_OPT_<n>=KEY=VALUE`.
fn frontend_opts() -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("BUILDKIT_FRONTEND_OPT_"))
        .filter_map(|(_, v)| {
            let (k, v) = v.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// An op's bytes and their digest.
fn op_bytes(op: &llb::Op) -> (Vec<u8>, String) {
    let b = op.encode_to_vec();
    let d = kiln_solver::Digest::of(&b).to_string();
    (b, d)
}

/// A definition of `op` (with no inputs) as the result.
fn definition(op: llb::op::Op) -> llb::Definition {
    let (b, d) = op_bytes(&llb::Op {
        op: Some(op),
        ..Default::default()
    });
    let (last, _) = op_bytes(&llb::Op {
        inputs: vec![llb::Input {
            digest: d,
            index: 0,
        }],
        ..Default::default()
    });
    llb::Definition {
        def: vec![b, last],
        ..Default::default()
    }
}

/// A definition of `image` with a file op writing each `(path, data)`
/// on it.
fn files_on(image: &str, list: &[(&str, Vec<u8>)]) -> llb::Definition {
    let (src, src_digest) = op_bytes(&llb::Op {
        op: Some(llb::op::Op::Source(llb::SourceOp {
            identifier: format!("docker-image://{image}"),
            ..Default::default()
        })),
        ..Default::default()
    });
    let n = list.len() as i64;
    let file = llb::op::Op::File(llb::FileOp {
        actions: list
            .iter()
            .enumerate()
            .map(|(i, (path, data))| {
                let i = i as i64;
                llb::FileAction {
                    // The first acts on the op's input 0, each other on
                    // the one before (BuildKit numbers intermediate
                    // results after the op's inputs).
                    input: i,
                    secondary_input: -1,
                    output: if i == n - 1 { 0 } else { -1 },
                    action: Some(llb::file_action::Action::Mkfile(llb::FileActionMkFile {
                        path: path.to_string(),
                        mode: 0o644,
                        data: data.clone(),
                        owner: None,
                        timestamp: -1,
                    })),
                }
            })
            .collect(),
    });
    let (file, file_digest) = op_bytes(&llb::Op {
        inputs: vec![llb::Input {
            digest: src_digest,
            index: 0,
        }],
        op: Some(file),
        ..Default::default()
    });
    let (last, _) = op_bytes(&llb::Op {
        inputs: vec![llb::Input {
            digest: file_digest,
            index: 0,
        }],
        ..Default::default()
    });
    llb::Definition {
        def: vec![src, file, last],
        ..Default::default()
    }
}

/// A channel over this process's stdin and stdout (BuildKit's
/// `grpcclient` stdio connection).
async fn stdio_channel() -> Result<Channel, String> {
    // SAFETY: fds 0 and 1 are this process's stdin and stdout, open for
    // its whole life and used by nothing else here.
    let (stdin, stdout) = unsafe { (std::fs::File::from_raw_fd(0), std::fs::File::from_raw_fd(1)) };
    let io = tokio::io::join(
        tokio::fs::File::from_std(stdin),
        tokio::fs::File::from_std(stdout),
    );
    let io = std::sync::Mutex::new(Some(io));
    Endpoint::from_static("http://stdio")
        .connect_with_connector(tower_service_fn(move |_: Uri| {
            let io = io.lock().ok().and_then(|mut g| g.take());
            async move {
                io.map(TokioIo::new)
                    .ok_or_else(|| std::io::Error::other("stdio is connected once"))
            }
        }))
        .await
        .map_err(|e| format!("connect over stdio: {e}"))
}

/// `tower::service_fn` without tower: a connector from a closure.
fn tower_service_fn<F>(f: F) -> ServiceFn<F> {
    ServiceFn(f)
}

struct ServiceFn<F>(F);

impl<F, Fut, R> tonic::codegen::Service<Uri> for ServiceFn<F>
where
    F: FnMut(Uri) -> Fut,
    Fut: std::future::Future<Output = Result<R, std::io::Error>>,
{
    type Response = R;
    type Error = std::io::Error;
    type Future = Fut;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Fut {
        (self.0)(uri)
    }
}

async fn run() -> Result<(), String> {
    let mode = std::env::var("KILN_TEST_FRONTEND").unwrap_or_default();
    match mode.as_str() {
        "exit" => {
            eprintln!("the test frontend gives up");
            std::process::exit(3);
        }
        "garbage" => {
            use std::io::{Read, Write};
            let mut out = std::io::stdout();
            for _ in 0..100 {
                let _ = out.write_all(b"this is not HTTP/2\n");
            }
            let _ = out.flush();
            // Until kilnd closes our stdin (or kills us).
            let mut buf = [0u8; 4096];
            while std::io::stdin().read(&mut buf).is_ok_and(|n| n > 0) {}
            return Ok(());
        }
        _ => {}
    }
    let opts = frontend_opts();
    let session = std::env::var("BUILDKIT_SESSION_ID").unwrap_or_default();
    let mut c = LlbBridgeClient::new(stdio_channel().await?);
    let pong = c
        .ping(PingRequest {})
        .await
        .map_err(|e| format!("ping: {e}"))?
        .into_inner();
    if !pong.llb_caps.iter().any(|cap| cap.id == "file.base") {
        return Err("no file.base cap".into());
    }
    if mode == "error" {
        c.r#return(ReturnRequest {
            result: None,
            error: Some(kiln_proto::rpc::Status {
                code: tonic::Code::InvalidArgument as i32,
                message: "the test frontend refuses this Dockerfile".into(),
                details: Vec::new(),
            }),
        })
        .await
        .map_err(|e| format!("return: {e}"))?;
        return Ok(());
    }

    // The Dockerfile, from the client's `dockerfile` directory.
    let filename = opts
        .get("filename")
        .cloned()
        .unwrap_or_else(|| "Dockerfile".into());
    let local = llb::op::Op::Source(llb::SourceOp {
        identifier: "local://dockerfile".into(),
        attrs: [
            ("local.session".to_string(), session),
            ("local.sharedkeyhint".to_string(), "dockerfile".to_string()),
            (
                "local.followpaths".to_string(),
                serde_json::json!([filename]).to_string(),
            ),
        ]
        .into_iter()
        .collect(),
    });
    let solved = c
        .solve(gateway::SolveRequest {
            definition: Some(definition(local)),
            allow_result_return: true,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("solve the dockerfile local: {e}"))?
        .into_inner();
    let df_ref = match solved.result.and_then(|r| r.result) {
        Some(result::Result::Ref(r)) => r.id,
        other => return Err(format!("unexpected dockerfile result: {other:?}")),
    };
    let dockerfile = c
        .read_file(ReadFileRequest {
            r#ref: df_ref,
            file_path: filename,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("read the Dockerfile: {e}"))?
        .into_inner()
        .data;
    let dockerfile = String::from_utf8_lossy(&dockerfile);
    let last = dockerfile.lines().last().unwrap_or_default();

    // The base, resolved as BuildKit's Dockerfile frontend resolves FROM:
    // its config (whose Env the result keeps) and the digest to pin.
    let base = c
        .resolve_image_config(gateway::ResolveImageConfigRequest {
            r#ref: "busybox".into(),
            // The step BuildKit's Dockerfile frontend names its lookups.
            log_name: "[internal] load metadata for docker.io/library/busybox:latest".into(),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("resolve busybox: {e}"))?
        .into_inner();
    let base_config: serde_json::Value =
        serde_json::from_slice(&base.config).map_err(|e| format!("busybox config: {e}"))?;
    let mut env: Vec<serde_json::Value> = base_config["config"]["Env"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    env.push("MADE_BY=kiln-test-frontend".into());
    let hello = format!("hello from a frontend image\n{last}\n").into_bytes();
    let listed: String = opts.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    let solved = c
        .solve(gateway::SolveRequest {
            definition: Some(files_on(
                &format!("{}@{}", base.r#ref, base.digest),
                &[("/hello", hello), ("/opts", listed.into_bytes())],
            )),
            allow_result_return: true,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("solve the files: {e}"))?
        .into_inner();
    let r = match solved.result.and_then(|r| r.result) {
        Some(result::Result::Ref(r)) => r,
        other => return Err(format!("unexpected result: {other:?}")),
    };
    let arch = pong
        .workers
        .first()
        .and_then(|w| w.platforms.first())
        .map(|p| p.architecture.clone())
        .unwrap_or_default();
    let config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": env, "Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": []},
    });
    c.r#return(ReturnRequest {
        result: Some(gateway::Result {
            result: Some(result::Result::Ref(r)),
            metadata: [(
                "containerimage.config".to_string(),
                config.to_string().into_bytes(),
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        }),
        error: None,
    })
    .await
    .map_err(|e| format!("return: {e}"))?;
    Ok(())
}

fn main() -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kiln-test-frontend: runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let done = rt.block_on(run());
    // The reads of stdin run on a blocking thread that waits for kilnd,
    // which waits for this process to exit: do not wait for it.
    rt.shutdown_background();
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kiln-test-frontend: {e}");
            ExitCode::from(1)
        }
    }
}
