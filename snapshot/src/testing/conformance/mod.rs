//! The conformance suites: named cases, each in a fresh namespace, run on
//! anything that hands out namespaces of a containerd ([`Namespaces`]).

mod applier;
mod content;
mod images;
mod leases;
mod snapshots;

pub use applier::applier_conformance;
pub use content::content_conformance;
pub use images::images_conformance;
pub use leases::leases_conformance;
pub use snapshots::snapshotter_conformance;

use super::MemContainerd;
use crate::containerd::{Containerd, LeaseId};
use crate::error::Result;
use crate::services::{write_blob, Applier, Content, Images, Leases, Snapshots};
use async_trait::async_trait;
use kiln_types::Digest;
use kiln_types::ErrorKind;
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// The services of one namespace of the containerd under test.
#[derive(Clone)]
pub struct Subject {
    pub content: Arc<dyn Content>,
    pub leases: Arc<dyn Leases>,
    pub images: Arc<dyn Images>,
    pub snapshots: Arc<dyn Snapshots>,
    pub applier: Arc<dyn Applier>,
}

impl std::fmt::Debug for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subject")
            .field("snapshotter", &self.snapshots.snapshotter())
            .finish_non_exhaustive()
    }
}

impl Subject {
    /// Every service from one value that implements them all.
    pub fn of<T>(t: T) -> Self
    where
        T: Content + Leases + Images + Snapshots + Applier + 'static,
    {
        let t = Arc::new(t);
        Subject {
            content: t.clone(),
            leases: t.clone(),
            images: t.clone(),
            snapshots: t.clone(),
            applier: t,
        }
    }
}

/// A containerd (real or fake) that can be seen from any namespace: the
/// suites run every case in a namespace of its own.
#[async_trait]
pub trait Namespaces: Send + Sync {
    /// The services of `namespace`.
    async fn namespace(&self, namespace: &str) -> Result<Subject>;
}

#[async_trait]
impl Namespaces for MemContainerd {
    async fn namespace(&self, namespace: &str) -> Result<Subject> {
        Ok(Subject::of(self.with_namespace(namespace)))
    }
}

#[async_trait]
impl Namespaces for Containerd {
    async fn namespace(&self, namespace: &str) -> Result<Subject> {
        Ok(Subject::of(self.with_namespace(namespace)))
    }
}

/// What a case gets: its namespace's services, the containerd (for other
/// namespaces) and a scratch directory of its own.
pub(crate) struct Ctx {
    pub(crate) s: Subject,
    pub(crate) namespaces: Arc<dyn Namespaces>,
    pub(crate) namespace: String,
    pub(crate) scratch: PathBuf,
}

pub(crate) type CaseResult = std::result::Result<(), String>;
type CaseFuture = Pin<Box<dyn Future<Output = CaseResult> + Send>>;

/// One named case of a suite.
pub(crate) struct Case {
    pub(crate) name: &'static str,
    pub(crate) run: fn(Ctx) -> CaseFuture,
}

/// A list of cases named after their functions.
macro_rules! cases {
    ($($f:ident),* $(,)?) => {
        &[$($crate::testing::conformance::Case {
            name: stringify!($f),
            run: |c| Box::pin($f(c)),
        }),*]
    };
}
pub(crate) use cases;

/// The cases of a suite that passed.
#[derive(Debug)]
pub struct Report {
    pub suite: &'static str,
    pub passed: Vec<&'static str>,
}

/// One failed case.
#[derive(Debug)]
pub struct CaseFailure {
    pub case: &'static str,
    pub namespace: String,
    pub message: String,
}

/// The cases of a suite that failed (and how many passed).
#[derive(Debug)]
pub struct ConformanceError {
    pub suite: &'static str,
    pub passed: usize,
    pub failures: Vec<CaseFailure>,
}

impl std::fmt::Display for ConformanceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} conformance: {} of {} cases failed",
            self.suite,
            self.failures.len(),
            self.failures.len() + self.passed
        )?;
        for c in &self.failures {
            write!(
                f,
                "\n  case {} (namespace {}): {}",
                c.case, c.namespace, c.message
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ConformanceError {}

/// Runs every case of `suite`, each in a fresh namespace and a scratch
/// directory of its own under `scratch`, and reports every failure.
pub(crate) async fn run(
    suite: &'static str,
    cases: &[Case],
    namespaces: Arc<dyn Namespaces>,
    scratch: &Path,
) -> std::result::Result<Report, ConformanceError> {
    let run_id = {
        use rand::RngCore;
        let mut b = [0u8; 4];
        rand::thread_rng().fill_bytes(&mut b);
        hex::encode(b)
    };
    let mut passed = Vec::new();
    let mut failures = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let namespace = format!("{suite}-{run_id}-{i}");
        let outcome = match namespaces.namespace(&namespace).await {
            Ok(s) => {
                let ctx = Ctx {
                    s,
                    namespaces: namespaces.clone(),
                    namespace: namespace.clone(),
                    scratch: scratch.join(&namespace),
                };
                (case.run)(ctx).await
            }
            Err(e) => Err(format!("namespace: {e}")),
        };
        match outcome {
            Ok(()) => passed.push(case.name),
            Err(message) => failures.push(CaseFailure {
                case: case.name,
                namespace,
                message,
            }),
        }
    }
    if failures.is_empty() {
        Ok(Report { suite, passed })
    } else {
        Err(ConformanceError {
            suite,
            passed: passed.len(),
            failures,
        })
    }
}

/// `Err(what)` unless `ok`.
pub(crate) fn ensure(ok: bool, what: &str) -> CaseResult {
    if ok {
        Ok(())
    } else {
        Err(what.to_string())
    }
}

/// The value of a call that must succeed, or why it did not.
pub(crate) fn ok<T>(r: Result<T>, what: &str) -> std::result::Result<T, String> {
    r.map_err(|e| format!("{what}: {e} ({:?})", e.kind()))
}

/// A call that must fail with `kind`.
pub(crate) fn fails<T>(r: Result<T>, kind: ErrorKind, what: &str) -> CaseResult {
    match r {
        Ok(_) => Err(format!("{what}: succeeded, expected {kind:?}")),
        Err(e) if e.kind() == kind => Ok(()),
        Err(e) => Err(format!("{what}: {e} ({:?}), expected {kind:?}", e.kind())),
    }
}

/// A fresh kiln lease (an hour's expiry, so a crashed run leaks nothing).
pub(crate) async fn lease(s: &Subject) -> std::result::Result<LeaseId, String> {
    let id = LeaseId::unique("conformance");
    ok(
        s.leases
            .create(
                &id,
                "conformance",
                Some(Duration::from_secs(3600)),
                HashMap::new(),
            )
            .await,
        "create lease",
    )?;
    Ok(id)
}

/// Writes `data` with `labels` under `lease`.
pub(crate) async fn blob(
    s: &Subject,
    data: &[u8],
    labels: &[(&str, &str)],
    lease: &LeaseId,
) -> std::result::Result<Digest, String> {
    ok(
        write_blob(&*s.content, data, labels_of(labels), lease).await,
        "write blob",
    )
}

/// Whether blob `digest` exists in the subject's namespace.
pub(crate) async fn has_blob(s: &Subject, digest: &Digest) -> std::result::Result<bool, String> {
    match s.content.info(digest.as_str()).await {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(format!("info {digest}: {e}")),
    }
}

/// Whether snapshot `key` exists in the subject's namespace.
pub(crate) async fn has_snapshot(s: &Subject, key: &str) -> std::result::Result<bool, String> {
    ok(
        crate::services::snapshot_exists(&*s.snapshots, key).await,
        "stat snapshot",
    )
}

pub(crate) fn labels_of(labels: &[(&str, &str)]) -> HashMap<String, String> {
    labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
