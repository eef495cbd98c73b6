//! The OCI layouts a client attaches to its session as content stores
//! (`oci-layout://NAME@DIGEST` named contexts and LLB `oci-layout://`
//! sources, read from the store `oci:NAME` as BuildKit reads them).
//!
//! kilnd copies what a build reads of such a layout into a layout
//! directory of the job, and the engine takes it from there as it takes
//! the embedded CLI's layouts (`kiln_engine::layout`, one set of rules
//! for both): first the blobs that describe the image (index, manifests,
//! configs: small, every platform), so the frontend can read configs for
//! whatever platform a stage asks for; then, once the graph is known, the
//! layers of the platform each source op imports, unless containerd has
//! them already. The engine copies them into containerd under the build's
//! lease and checks their digests there.

use crate::sessions::SessionHandle;
use kiln_engine::layout::{self, OciStores};
use kiln_session::content;
use kiln_solver::{Digest, Graph, Op};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use tonic::Status;

/// The most blobs describing one image (an index of indexes of manifests
/// and their configs).
const MAX_DESCRIBING: usize = 4096;

/// The client's layouts one build reads, copied below the job directory.
pub struct Layouts {
    root: PathBuf,
    /// Store name -> its copy.
    stores: OciStores,
    /// (store, digest) whose describing blobs are copied.
    described: Vec<(String, String)>,
}

impl Layouts {
    /// Copies go below `job_dir`.
    pub fn new(job_dir: &Path) -> Layouts {
        Layouts {
            root: job_dir.join("oci-layouts"),
            stores: HashMap::new(),
            described: Vec::new(),
        }
    }

    /// The copies, by store name, for the engine.
    pub fn stores(&self) -> OciStores {
        self.stores.clone()
    }

    /// The directory of the copy of store `store`, created; a
    /// client-chosen name reaches the file system only through its hash.
    fn dir(&mut self, store: &str) -> Result<PathBuf, Status> {
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
    /// `store` (an index, its manifests, their configs).
    pub async fn describe(
        &mut self,
        session: &SessionHandle,
        store: &str,
        digest: &str,
    ) -> Result<(), Status> {
        let key = (store.to_string(), digest.to_string());
        if self.described.contains(&key) {
            return Ok(());
        }
        if !session.exposes(content::READ_METHOD) {
            return Err(Status::failed_precondition(format!(
                "oci-layout://{store}@{digest}: the client's session serves no content store \
                 (the client must attach the OCI layout {store:?} to the session)"
            )));
        }
        let dir = self.dir(store)?;
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
        self.described.push(key);
        Ok(())
    }

    /// Copies what the `oci-layout://` sources of `graph` import: their
    /// describing blobs (for an LLB source, not copied yet) and the layers
    /// of each source's platform that containerd does not have.
    pub async fn fetch_layers(
        &mut self,
        engine: &kiln_engine::Engine,
        session: Option<&SessionHandle>,
        graph: &Graph,
    ) -> Result<(), Status> {
        for v in &graph.vertices {
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
            let session = session.ok_or_else(|| {
                Status::failed_precondition(format!(
                    "oci-layout://{reference}: an OCI layout source needs a session"
                ))
            })?;
            self.describe(session, store, digest).await?;
            let dir = self.dir(store)?;
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
                copy_layer(session, store, &b.digest, size, &path).await?;
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
