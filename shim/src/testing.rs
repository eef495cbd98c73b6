//! A scripted [`Executor`] for tests of the crates above this one.
//!
//! [`FakeExecutor`] records every [`StepSpec`] it is given and answers
//! from a script of outcomes, in order; with the script exhausted it
//! answers exit 0 with no output.

use crate::{Containers, ExecError, Executor, ExitStatus, OutputStream, StepIo, StepSpec};
use kiln_snapshot::containerd::LeaseId;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// One scripted answer.
#[derive(Clone, Debug)]
pub enum FakeOutcome {
    /// Writes `stdout` and `stderr`, then exits with `code`.
    Exit {
        code: u32,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    },
    /// Runs until cancelled, then answers [`ExecError::Cancelled`].
    Hang,
    /// Runs until `gate` is notified, then exits with `code` (or is
    /// cancelled, as [`FakeOutcome::Hang`]): a step a test finishes when
    /// it chooses.
    Gated {
        gate: Arc<tokio::sync::Notify>,
        code: u32,
    },
}

/// Records steps and answers from a script.
#[derive(Clone, Debug, Default)]
pub struct FakeExecutor {
    steps: Arc<Mutex<Vec<StepSpec>>>,
    script: Arc<Mutex<VecDeque<FakeOutcome>>>,
}

impl FakeExecutor {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an outcome to the script.
    pub fn push(&self, outcome: FakeOutcome) {
        self.script
            .lock()
            .expect("script lock poisoned")
            .push_back(outcome);
    }

    /// Every step run so far, in order.
    pub fn steps(&self) -> Vec<StepSpec> {
        self.steps.lock().expect("steps lock poisoned").clone()
    }
}

#[async_trait::async_trait]
impl Executor for FakeExecutor {
    async fn run(
        &self,
        step: StepSpec,
        io: StepIo,
        cancel: CancellationToken,
    ) -> Result<ExitStatus, ExecError> {
        let outcome = self
            .script
            .lock()
            .expect("script lock poisoned")
            .pop_front();
        let id = step.id.clone();
        self.steps.lock().expect("steps lock poisoned").push(step);
        {
            match outcome {
                None => Ok(ExitStatus { code: 0 }),
                Some(FakeOutcome::Exit {
                    code,
                    stdout,
                    stderr,
                }) => {
                    if !stdout.is_empty() {
                        let _ = io.output.send((OutputStream::Stdout, stdout)).await;
                    }
                    if !stderr.is_empty() {
                        let _ = io.output.send((OutputStream::Stderr, stderr)).await;
                    }
                    Ok(ExitStatus { code })
                }
                Some(FakeOutcome::Hang) => {
                    cancel.cancelled().await;
                    Err(ExecError::Cancelled { id })
                }
                Some(FakeOutcome::Gated { gate, code }) => tokio::select! {
                    _ = cancel.cancelled() => Err(ExecError::Cancelled { id }),
                    _ = gate.notified() => Ok(ExitStatus { code }),
                },
            }
        }
    }
}

/// A fake step leaves no container behind once `run` returns, so there is
/// never one to list or remove.
#[async_trait::async_trait]
impl Containers for FakeExecutor {
    async fn list(&self) -> Result<Vec<String>, ExecError> {
        Ok(Vec::new())
    }

    async fn list_of_lease(&self, _lease: &LeaseId) -> Result<Vec<String>, ExecError> {
        Ok(Vec::new())
    }

    async fn remove(&self, _id: &str) -> Result<(), ExecError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Network;

    fn step(id: &str) -> StepSpec {
        StepSpec {
            id: id.into(),
            rootfs: "/nonexistent".into(),
            args: vec!["true".into()],
            env: vec![],
            cwd: "/".into(),
            user: String::new(),
            hostname: String::new(),
            extra_hosts: Vec::new(),
            ulimits: Vec::new(),
            network: Network::Host,
            mounts: vec![],
            lease: LeaseId::named("build", "fake"),
            timeout: None,
            security: crate::Security::Sandbox,
            pids_limit: None,
            resources: None,
        }
    }

    #[tokio::test]
    async fn answers_from_script_and_records_steps() {
        let fake = FakeExecutor::new();
        fake.push(FakeOutcome::Exit {
            code: 3,
            stdout: b"out".to_vec(),
            stderr: vec![],
        });
        fake.push(FakeOutcome::Hang);
        let (tx, mut rx) = tokio::sync::mpsc::channel(crate::OUTPUT_QUEUE);
        let io = StepIo {
            output: tx,
            stdin: None,
        };
        let st = fake
            .run(step("a"), io.clone(), CancellationToken::new())
            .await
            .expect("exit is data");
        assert_eq!(st.code, 3);
        assert_eq!(
            rx.recv().await,
            Some((OutputStream::Stdout, b"out".to_vec()))
        );
        let cancel = CancellationToken::new();
        cancel.cancel();
        let err = fake
            .run(step("b"), io.clone(), cancel)
            .await
            .expect_err("cancelled");
        assert!(matches!(err, ExecError::Cancelled { .. }));
        assert_eq!(
            fake.run(step("c"), io, CancellationToken::new())
                .await
                .expect("default")
                .code,
            0
        );
        let ids: Vec<String> = fake.steps().into_iter().map(|s| s.id).collect();
        assert_eq!(ids, ["a", "b", "c"]);
    }
}
