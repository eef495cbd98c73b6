//! `RUN --mount=type=ssh` on the fakes: the step's socket reaches the
//! client's agent, a missing required agent fails before the step, a
//! missing optional one is skipped, and the socket is gone afterwards.

use super::*;
use crate::ssh::{AgentStream, SshError, SshSource};
use kiln_shim::{ExecError, ExitStatus, ExtraMount, StepIo, StepSpec};
use kiln_solver::SshMount;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::sync::Mutex;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// An agent `gh` that answers each message with its bytes reversed.
#[derive(Debug, Default)]
struct Mirror {
    connects: Mutex<Vec<String>>,
}

#[async_trait::async_trait]
impl SshSource for Mirror {
    async fn check(&self, id: &str) -> Result<(), SshError> {
        match id {
            "gh" => Ok(()),
            _ => Err(SshError::Unset { id: id.into() }),
        }
    }

    async fn connect(&self, id: &str) -> Result<Box<dyn AgentStream>, SshError> {
        self.connects.lock().expect("lock").push(id.to_string());
        let (ours, theirs) = tokio::io::duplex(64);
        tokio::spawn(async move {
            let mut ours = ours;
            let mut buf = [0u8; 4];
            if ours.read_exact(&mut buf).await.is_ok() {
                buf.reverse();
                let _ = ours.write_all(&buf).await;
            }
        });
        Ok(Box::new(theirs))
    }
}

/// What a step saw of one socket: target, the agent's answer, uid, gid
/// and mode.
type Seen = (String, String, u32, u32, u32);

/// A step that talks to its ssh socket and records what it saw.
#[derive(Clone, Default)]
struct Talker {
    seen: Arc<Mutex<Vec<Seen>>>,
    sockets: Arc<Mutex<Vec<std::path::PathBuf>>>,
}

#[async_trait::async_trait]
impl kiln_shim::Executor for Talker {
    async fn run(
        &self,
        step: StepSpec,
        _io: StepIo,
        _cancel: CancellationToken,
    ) -> Result<ExitStatus, ExecError> {
        for m in &step.mounts {
            let ExtraMount::Bind { source, dest, .. } = m else {
                continue;
            };
            let meta = std::fs::metadata(source).expect("socket exists during the step");
            // The path is too long to connect to directly; a step sees it
            // at its short target.
            let dir = std::fs::File::open(source.parent().expect("a dir")).expect("open dir");
            let short = format!(
                "/proc/self/fd/{}/ssh_auth_sock",
                std::os::fd::AsRawFd::as_raw_fd(&dir)
            );
            let mut conn = tokio::net::UnixStream::connect(&short)
                .await
                .expect("connect to the step's socket");
            conn.write_all(b"ping").await.expect("write");
            let mut answer = [0u8; 4];
            conn.read_exact(&mut answer).await.expect("read");
            self.seen.lock().expect("lock").push((
                dest.clone(),
                String::from_utf8_lossy(&answer).into_owned(),
                meta.uid(),
                meta.gid(),
                meta.permissions().mode() & 0o7777,
            ));
            self.sockets.lock().expect("lock").push(source.clone());
        }
        Ok(ExitStatus { code: 0 })
    }
}

fn ssh_request(ssh: Arc<dyn SshSource>, mounts: Vec<(&str, &str, bool)>) -> BuildRequest {
    let mut req = request(&["true"], &[]);
    req.ssh = ssh;
    let Op::Exec(e) = &mut req.graph.vertices[req.result.0].op else {
        panic!("the result is the run");
    };
    for (id, dest, optional) in mounts {
        e.mounts.push(Mount {
            input: None,
            selector: String::new(),
            dest: dest.into(),
            output: None,
            readonly: true,
            mount_type: MountType::Ssh(SshMount {
                id: id.into(),
                optional,
                uid: 12,
                gid: 34,
                mode: 0o640,
            }),
        });
    }
    req
}

fn engine_with(fx: &Fixture, exec: Arc<dyn kiln_shim::Executor>) -> Engine {
    Engine::with_services(
        fx.svc.clone(),
        exec,
        Arc::new(FakeExecutor::new()),
        // Deeper than a socket path may be: the socket is bound anyway.
        fx.dir.path().join("s".repeat(120)),
    )
}

#[tokio::test]
async fn a_step_reaches_the_agent_through_its_socket() {
    if !kiln_types::testing::needs_root("chown of the socket to uid 12") {
        return;
    }
    let fx = fixture();
    let talker = Talker::default();
    let engine = engine_with(&fx, Arc::new(talker.clone()));
    let agent = Arc::new(Mirror::default());
    let req = ssh_request(
        agent.clone(),
        vec![("gh", "/run/a", false), ("other", "/run/b", true)],
    );
    build(&engine, req).await.expect("builds");
    // The optional agent the client does not forward is not mounted.
    assert_eq!(
        *talker.seen.lock().expect("lock"),
        vec![("/run/a".to_string(), "gnip".to_string(), 12, 34, 0o640)]
    );
    assert_eq!(
        *agent.connects.lock().expect("lock"),
        vec!["gh".to_string()]
    );
    for s in talker.sockets.lock().expect("lock").iter() {
        assert!(!s.exists(), "{} outlives its step", s.display());
    }
}

#[tokio::test]
async fn a_required_agent_not_forwarded_fails_before_the_step() {
    let fx = fixture();
    let exec = FakeExecutor::new();
    let engine = fx.engine("a", &exec);
    let req = ssh_request(Arc::new(Mirror::default()), vec![("nope", "/run/a", false)]);
    let err = build(&engine, req).await.expect_err("fails");
    assert_eq!(err.to_string(), "unset ssh forward key nope");
    let req = ssh_request(crate::ssh::none(), vec![("", "/run/a", false)]);
    let err = build(&engine, req).await.expect_err("fails");
    assert_eq!(err.to_string(), "no SSH key \"\" forwarded from the client");
    assert!(exec.steps().is_empty());
}
