//! The OCI layouts a client attaches to its session as content stores
//! (`oci-layout://NAME@DIGEST` named contexts and LLB `oci-layout://`
//! sources, read from the store `oci:NAME` as BuildKit reads them).
//!
//! A source's `oci.session` names the session that serves its store (one
//! of the same tenant's; BuildKit's `llb.OCISessionID`); without it the
//! build's own session does. kilnd copies what a build reads of such a
//! layout into a layout directory of the job, and the engine takes it from
//! there as it takes the embedded CLI's layouts (`kiln_engine::layout`,
//! one set of rules for both): first the blobs that describe the image
//! (index, manifests, configs: small, every platform), so the frontend can
//! read configs for whatever platform a stage asks for; then, once the
//! graph is known, the layers of the platform each source op imports,
//! unless containerd has them already. The engine copies them into
//! containerd under the build's lease and checks their digests there.
//!
//! The copies show on their source's vertex as BuildKit shows an
//! oci-layout pull: `resolve NAME@DIGEST`, then each layer copied, by
//! digest, with its bytes ([`Layouts::transfers`]).

use crate::sessions::{SessionHandle, Sessions};
use crate::status::Transfer;
use kiln_engine::layout::{self, OciStores};
use kiln_session::content;
use kiln_solver::{Digest, Graph, Op};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use tonic::Status;

/// The most blobs describing one image (an index of indexes of manifests
/// and their configs).
const MAX_DESCRIBING: usize = 4096;

/// How long a session a source names may take to attach (BuildKit waits
/// as long).
const SESSION_WAIT: Duration = Duration::from_secs(5);

/// The sessions a build may read layouts from: its own, or another of its
/// tenant's that a source names.
pub struct LayoutSessions<'a> {
    /// The build's session and its key (`Tenant::scoped` id).
    pub build: Option<(&'a SessionHandle, String)>,
    pub sessions: &'a Sessions,
    /// The build's tenant (`None`: the default tenant).
    pub tenant: Option<String>,
    /// How long a named session may take to attach.
    pub wait: Duration,
}

impl<'a> LayoutSessions<'a> {
    /// The sessions of `job` of daemon `d`, whose own is `session`.
    pub fn of(
        d: &'a crate::state::Daemon,
        job: &crate::jobs::Job,
        session: Option<&'a SessionHandle>,
    ) -> LayoutSessions<'a> {
        let key = job
            .session
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        LayoutSessions {
            build: session.map(|h| (h, key)),
            sessions: &d.sessions,
            tenant: job.tenant.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            wait: SESSION_WAIT,
        }
    }

    /// The session serving the store of source `reference` and its key:
    /// the one `named` (`oci.session`) if given, else the build's.
    async fn get(
        &self,
        reference: &str,
        named: Option<&str>,
    ) -> Result<(SessionHandle, String), Status> {
        let Some(id) = named.filter(|id| !id.is_empty()) else {
            return self
                .build
                .as_ref()
                .map(|(h, k)| ((*h).clone(), k.clone()))
                .ok_or_else(|| {
                    Status::failed_precondition(format!(
                        "oci-layout://{reference}: an OCI layout source needs a session"
                    ))
                });
        };
        let key = crate::tenants::scoped(self.tenant.as_deref(), id);
        if let Some((h, k)) = &self.build {
            if *k == key {
                return Ok(((*h).clone(), key));
            }
        }
        // Ids are keyed by tenant: another tenant's session is not found.
        match self.sessions.get(&key, self.wait).await {
            Some(h) => Ok((h, key)),
            None => Err(Status::failed_precondition(format!(
                "oci-layout://{reference}: {}={id:?}: no active session {id:?} of this client",
                kiln_solver::source::ATTR_OCI_SESSION
            ))),
        }
    }
}

/// The client's layouts one build reads, copied below the job directory.
pub struct Layouts {
    root: PathBuf,
    /// Store name -> its copy.
    stores: OciStores,
    /// Store name -> the key of the session it is read from: the engine
    /// finds a copy by store name, so one build reads a name from one
    /// session.
    from: HashMap<String, String>,
    /// (store, digest) whose describing blobs are copied, and when.
    described: Vec<((String, String), (SystemTime, SystemTime))>,
    /// What was copied for each source vertex, for its progress.
    copied: Vec<Transfer>,
}

impl Layouts {
    /// Copies go below `job_dir`.
    pub fn new(job_dir: &Path) -> Layouts {
        Layouts {
            root: job_dir.join("oci-layouts"),
            stores: HashMap::new(),
            from: HashMap::new(),
            described: Vec::new(),
            copied: Vec::new(),
        }
    }

    /// The copies, by store name, for the engine.
    pub fn stores(&self) -> OciStores {
        self.stores.clone()
    }

    /// The copies' progress items: per source vertex, `resolve REF` and
    /// each layer copied from the client.
    pub fn transfers(&self) -> Vec<Transfer> {
        self.copied.clone()
    }

    /// The directory of the copy of store `store` read from session
    /// `from`, created; a client-chosen name reaches the file system only
    /// through its hash.
    fn dir(&mut self, store: &str, from: &str) -> Result<PathBuf, Status> {
        match self.from.get(store) {
            Some(f) if f != from => {
                return Err(Status::invalid_argument(format!(
                    "oci-layout store {store:?} is read from two different sessions in one \
                     build ({}): not supported, a store name must name one layout in a build",
                    kiln_solver::source::ATTR_OCI_SESSION
                )))
            }
            Some(_) => {}
            None => {
                self.from.insert(store.to_string(), from.to_string());
            }
        }
        if let Some(d) = self.stores.get(store) {
            return Ok(d.clone());
        }
        // Another solve of the same build may be reading a copy already:
        // blobs are named by digest and checked, so it is shared.
        let dir = self.root.join(Digest::of(store.as_bytes()).hex());
        std::fs::create_dir_all(dir.join("blobs/sha256"))
            .map_err(|e| Status::internal(format!("create {}: {e}", dir.display())))?;
        self.stores.insert(store.to_string(), dir.clone());
        Ok(dir)
    }

    /// Copies the blobs describing image `digest` of the client's layout
    /// `store` (an index, its manifests, their configs), served by
    /// `session` of key `from`; when that copy was made.
    pub async fn describe(
        &mut self,
        session: &SessionHandle,
        from: &str,
        store: &str,
        digest: &str,
    ) -> Result<(SystemTime, SystemTime), Status> {
        let key = (store.to_string(), digest.to_string());
        if let Some(span) = self
            .described
            .iter()
            .find_map(|(k, span)| (*k == key).then_some(*span))
        {
            // Checked again: the store may be asked of another session.
            self.dir(store, from)?;
            return Ok(span);
        }
        let started = SystemTime::now();
        if !session.exposes(content::READ_METHOD) {
            return Err(Status::failed_precondition(format!(
                "oci-layout://{store}@{digest}: the client's session serves no content store \
                 (the client must attach the OCI layout {store:?} to the session)"
            )));
        }
        let dir = self.dir(store, from)?;
        let mut queue = vec![digest.to_string()];
        let mut seen = 0usize;
        while let Some(d) = queue.pop() {
            seen += 1;
            if seen > MAX_DESCRIBING {
                return Err(Status::invalid_argument(format!(
                    "oci-layout://{store}@{digest}: more than {MAX_DESCRIBING} manifests and configs"
                )));
            }
            let path = blob_path(store, &dir, &d)?;
            // A copy an earlier solve of the build made was checked then.
            let bytes = match std::fs::read(&path) {
                Ok(b) => b,
                Err(_) => {
                    let b = read_json(session, store, &d).await?;
                    write_file(&path, &b)?;
                    b
                }
            };
            queue.extend(layout::described_by(&bytes));
        }
        let span = (started, SystemTime::now());
        self.described.push((key, span));
        Ok(span)
    }

    /// Copies what the `oci-layout://` sources of `graph` import: their
    /// describing blobs (for an LLB source, not copied yet) and the layers
    /// of each source's platform that containerd does not have, each from
    /// the session the source names.
    pub async fn fetch_layers(
        &mut self,
        engine: &kiln_engine::Engine,
        sessions: &LayoutSessions<'_>,
        graph: &Graph,
    ) -> Result<(), Status> {
        for (vertex, v) in graph.vertices.iter().enumerate() {
            let Op::Source(s) = &v.op else { continue };
            let Some(reference) = s.identifier.strip_prefix("oci-layout://") else {
                continue;
            };
            // Without either, the source op fails with the engine's error.
            let (Some(store), Some((_, digest))) = (
                s.attrs.get(kiln_solver::source::ATTR_OCI_STORE),
                reference.rsplit_once('@'),
            ) else {
                continue;
            };
            let named = s
                .attrs
                .get(kiln_solver::source::ATTR_OCI_SESSION)
                .map(String::as_str);
            let (session, from) = sessions.get(reference, named).await?;
            let resolved = self.describe(&session, &from, store, digest).await?;
            self.copied.push(Transfer {
                vertex,
                id: format!("resolve {reference}"),
                bytes: 0,
                total: 0,
                span: Some(resolved),
            });
            let dir = self.dir(store, &from)?;
            let blobs = {
                let (dir, digest, platform) = (dir.clone(), digest.to_string(), s.platform.clone());
                tokio::task::spawn_blocking(move || {
                    layout::layer_blobs(&dir, &digest, platform.as_ref())
                })
                .await
                .map_err(|e| Status::internal(e.to_string()))?
                .map_err(|e| Status::new(e.kind().code(), e.to_string()))?
            };
            for b in blobs {
                let path = blob_path(store, &dir, &b.digest)?;
                if path.exists() {
                    continue;
                }
                match engine.services().content.info(&b.digest).await {
                    Ok(_) => continue,
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(Status::new(e.kind().code(), e.to_string())),
                }
                let size = u64::try_from(b.size).unwrap_or(0);
                let started = SystemTime::now();
                copy_layer(&session, store, &b.digest, size, &path).await?;
                self.copied.push(Transfer {
                    vertex,
                    id: b.digest.clone(),
                    bytes: size,
                    total: size,
                    span: Some((started, SystemTime::now())),
                });
            }
        }
        Ok(())
    }
}

/// The path of blob `digest` in the copy `dir`; only sha256 digests,
/// which is what the engine reads.
fn blob_path(store: &str, dir: &Path, digest: &str) -> Result<PathBuf, Status> {
    Digest::parse(digest)
        .and_then(|_| content::layout_blob_path(dir, digest))
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "oci-layout store {store:?}: invalid digest {digest:?}"
            ))
        })
}

fn session_status(store: &str, digest: &str, e: kiln_session::SessionError) -> Status {
    Status::new(
        e.kind().code(),
        format!("oci-layout store {store:?}: reading {digest} from the client: {e}"),
    )
}

/// An index, manifest or config of the client's store, checked against
/// its digest.
async fn read_json(session: &SessionHandle, store: &str, digest: &str) -> Result<Vec<u8>, Status> {
    let id = content::oci_store_id(store);
    let mut bytes = Vec::new();
    content::copy(
        session.channel.clone(),
        &id,
        digest,
        layout::MAX_JSON,
        &mut bytes,
    )
    .await
    .map_err(|e| session_status(store, digest, e))?;
    let got = Digest::of(&bytes);
    if got.as_str() != digest {
        return Err(Status::invalid_argument(format!(
            "oci-layout store {store:?}: blob {digest} hashes to {got}"
        )));
    }
    Ok(bytes)
}

/// Writes a checked blob through a temporary name, so a concurrent
/// reader never sees half of it.
fn write_file(path: &Path, bytes: &[u8]) -> Result<(), Status> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("json-{n}"));
    let err = |e: std::io::Error| Status::internal(format!("write {}: {e}", path.display()));
    std::fs::write(&tmp, bytes).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}

/// Copies a layer of the client's store to `path` (through a temporary
/// name, so a half copy is never taken for the blob); containerd checks
/// its digest when the engine imports it.
async fn copy_layer(
    session: &SessionHandle,
    store: &str,
    digest: &str,
    size: u64,
    path: &Path,
) -> Result<(), Status> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let partial = path.with_extension(format!("partial-{n}"));
    let io = |e: std::io::Error| Status::internal(format!("write {}: {e}", partial.display()));
    let mut f = tokio::fs::File::create(&partial).await.map_err(io)?;
    let id = content::oci_store_id(store);
    let copied = content::copy(session.channel.clone(), &id, digest, size, &mut f).await;
    drop(f);
    let n = match copied {
        Ok(n) => n,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(session_status(store, digest, e));
        }
    };
    if n != size {
        let _ = std::fs::remove_file(&partial);
        return Err(Status::invalid_argument(format!(
            "oci-layout store {store:?}: blob {digest} has {n} bytes, its descriptor says {size}"
        )));
    }
    tracing::debug!(
        store,
        digest,
        bytes = n,
        "copied a layer of the client's OCI layout"
    );
    std::fs::rename(&partial, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(tenant: Option<&str>) -> SessionHandle {
        SessionHandle {
            channel: tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy(),
            methods: vec![content::READ_METHOD.to_string()],
            tenant: tenant.map(String::from),
            shared_key: String::new(),
            nonce: String::new(),
            outbound: Default::default(),
        }
    }

    fn attach(sessions: &Sessions, tenant: Option<&str>, id: &str) {
        let key = crate::tenants::scoped(tenant, id);
        let generation = sessions.reserve(&key).expect("reserve");
        sessions.attach(&key, generation, handle(tenant));
    }

    #[tokio::test]
    async fn a_source_reads_the_named_session_of_its_tenant_only() {
        let sessions = Sessions::default();
        attach(&sessions, Some("alice"), "store");
        attach(&sessions, Some("bob"), "bobs");
        let build = handle(Some("bob"));
        let of = |tenant: &str| LayoutSessions {
            build: Some((&build, crate::tenants::scoped(Some(tenant), "main"))),
            sessions: &sessions,
            tenant: Some(tenant.to_string()),
            wait: Duration::from_millis(10),
        };
        // Without oci.session: the build's own.
        let (_, key) = of("bob").get("lay@x", None).await.expect("the build's");
        assert_eq!(key, "bob/main");
        let (_, key) = of("bob").get("lay@x", Some("")).await.expect("the build's");
        assert_eq!(key, "bob/main");
        // Its tenant's session by the client's id.
        let (_, key) = of("bob").get("lay@x", Some("bobs")).await.expect("named");
        assert_eq!(key, "bob/bobs");
        let (_, key) = of("alice")
            .get("lay@x", Some("store"))
            .await
            .expect("named");
        assert_eq!(key, "alice/store");
        // Another tenant's session, and one nobody has, are not found and
        // named in the error.
        for id in ["store", "nobody"] {
            let e = of("bob")
                .get("lay@x", Some(id))
                .await
                .err()
                .expect("not this client's");
            assert_eq!(e.code(), tonic::Code::FailedPrecondition);
            assert!(
                e.message()
                    .contains(&format!("oci.session=\"{id}\": no active session \"{id}\"")),
                "{}",
                e.message()
            );
        }
        // Without any session.
        let none = LayoutSessions {
            build: None,
            sessions: &sessions,
            tenant: None,
            wait: Duration::from_millis(10),
        };
        let e = none.get("lay@x", None).await.err().expect("no session");
        assert!(e.message().contains("needs a session"), "{}", e.message());
    }

    #[test]
    fn one_store_name_is_read_from_one_session_in_a_build() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let mut l = Layouts::new(tmp.path());
        let a = l.dir("lay", "s1").expect("first");
        assert_eq!(l.dir("lay", "s1").expect("again"), a);
        let e = l.dir("lay", "s2").expect_err("another session");
        assert!(
            e.message()
                .contains("\"lay\" is read from two different sessions"),
            "{}",
            e.message()
        );
        l.dir("other", "s2").expect("another store");
    }
}
