//! `containerd.services.content.v1.Content` over the session: the content
//! stores a client attaches to it (BuildKit's `session/content`), such as
//! the OCI layout of an `oci-layout://` named context, which buildx and
//! buildctl serve as the store `oci:NAME`. Each call names its store in
//! the `buildkit-attachable-store-id` header; a client answers
//! `InvalidArgument` without one and `NotFound` for a store it does not
//! have, as BuildKit's does. kiln reads (`Info`, `Read`) and, for a
//! `type=local` cache export, writes (`Write`) the client's store
//! `local:DIR`.
//!
//! [`LayoutStores`] is the client half over OCI layout directories
//! (`blobs/<algorithm>/<hex>`; read only, or writable for a cache export:
//! a blob is hashed as it comes and renamed into place on a commit whose
//! digest matches); [`info`], [`copy`] and [`write()`] are the daemon's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::pin::Pin;

use kiln_proto::content::content_client::ContentClient;
use kiln_proto::content::content_server::{Content, ContentServer};
use kiln_proto::content::{
    Info, InfoRequest, InfoResponse, ReadContentRequest, ReadContentResponse, WriteAction,
    WriteContentRequest,
};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWrite, AsyncWriteExt};
use tokio_stream::{Stream, StreamExt};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::error::{Result, SessionError};

/// The request header naming the store a call is for.
pub const STORE_HEADER: &str = "buildkit-attachable-store-id";

/// The prefix of an OCI layout's store id: buildx and buildctl serve the
/// layout of `oci-layout://NAME@…` as `oci:NAME`.
pub const OCI_STORE_PREFIX: &str = "oci:";

pub const INFO_METHOD: &str = "/containerd.services.content.v1.Content/Info";
pub const READ_METHOD: &str = "/containerd.services.content.v1.Content/Read";
pub const WRITE_METHOD: &str = "/containerd.services.content.v1.Content/Write";

/// The prefix of a local cache directory's store id: buildctl and buildx
/// serve `--cache-to/--cache-from type=local` directories as `local:DIR`.
pub const LOCAL_STORE_PREFIX: &str = "local:";

/// The store id of the directory an `oci` or `docker` exporter with
/// `tar=false` writes into (buildctl's and buildx's `OutputDir` store).
pub const EXPORT_STORE: &str = "export";

/// How many bytes one `Read` answer carries.
const CHUNK: usize = 1 << 20;

/// The session store id of the OCI layout named `name`.
pub fn oci_store_id(name: &str) -> String {
    format!("{OCI_STORE_PREFIX}{name}")
}

/// The session store id of the local cache directory `dir` (the path as
/// the client wrote it).
pub fn local_store_id(dir: &str) -> String {
    format!("{LOCAL_STORE_PREFIX}{dir}")
}

/// The path of blob `digest` below the layout `dir`, for a well-formed
/// digest only (`sha256:` or `sha512:` and lowercase hex of its length),
/// so a digest from the wire never names another path.
pub fn layout_blob_path(dir: &Path, digest: &str) -> Option<PathBuf> {
    let (algorithm, hex) = digest.split_once(':')?;
    let len = match algorithm {
        "sha256" => 64,
        "sha512" => 128,
        _ => return None,
    };
    let hex_ok = hex.len() == len && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    hex_ok.then(|| dir.join("blobs").join(algorithm).join(hex))
}

/// The client's content stores: OCI layout directories by store id.
#[derive(Clone, Debug, Default)]
pub struct LayoutStores {
    stores: HashMap<String, PathBuf>,
    /// The ids of the stores the daemon may write (`local:DIR` of a
    /// `type=local` cache export).
    writable: std::collections::HashSet<String>,
}

impl LayoutStores {
    pub const METHODS: &'static [&'static str] = &["Info", "Read"];
    /// The methods when a store is writable.
    pub const WRITE_METHODS: &'static [&'static str] = &["Info", "Read", "Write"];

    /// Stores by id (`oci:NAME` for a layout named `NAME`), read only.
    pub fn new(stores: HashMap<String, PathBuf>) -> LayoutStores {
        LayoutStores {
            stores,
            writable: Default::default(),
        }
    }

    /// Adds the store `id` over the layout `dir`, which the daemon may
    /// write blobs into (`local:DIR` for a cache export).
    pub fn with_writable(mut self, id: String, dir: PathBuf) -> LayoutStores {
        self.writable.insert(id.clone());
        self.stores.insert(id, dir);
        self
    }

    /// The methods to announce for these stores.
    pub fn methods(&self) -> &'static [&'static str] {
        if self.writable.is_empty() {
            Self::METHODS
        } else {
            Self::WRITE_METHODS
        }
    }

    /// The service to add to the session's services.
    pub fn into_service(self) -> ContentServer<LayoutStores> {
        ContentServer::new(self)
    }

    /// The file of blob `digest` in the store the request names.
    fn blob<T>(&self, request: &Request<T>, digest: &str) -> Result<PathBuf, Status> {
        let id = request
            .metadata()
            .get(STORE_HEADER)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Status::invalid_argument(format!("request lacks metadata {STORE_HEADER:?}"))
            })?;
        let dir = self
            .stores
            .get(id)
            .ok_or_else(|| Status::not_found(format!("unknown store {id}")))?;
        layout_blob_path(dir, digest)
            .ok_or_else(|| Status::invalid_argument(format!("invalid digest {digest:?}")))
    }
}

fn io_status(path: &Path, digest: &str, e: std::io::Error) -> Status {
    if e.kind() == std::io::ErrorKind::NotFound {
        Status::not_found(format!("content {digest}: not found"))
    } else {
        Status::unavailable(format!("{}: {e}", path.display()))
    }
}

type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadContentResponse, Status>> + Send>>;
type WriteStream =
    Pin<Box<dyn Stream<Item = Result<kiln_proto::content::WriteContentResponse, Status>> + Send>>;

/// One write into a layout store: the blob goes to a file beside its final
/// place, hashed as it comes, and is renamed into place when the commit's
/// digest and size match.
struct Ingest {
    dir: PathBuf,
    file: Option<(PathBuf, tokio::fs::File)>,
    hasher: sha2::Sha256,
    offset: i64,
}

impl Ingest {
    async fn handle(
        &mut self,
        req: WriteContentRequest,
    ) -> Result<kiln_proto::content::WriteContentResponse, Status> {
        use sha2::Digest as _;
        let mut answer = kiln_proto::content::WriteContentResponse {
            action: req.action,
            offset: self.offset,
            total: req.total,
            ..Default::default()
        };
        let action = WriteAction::try_from(req.action).map_err(|_| {
            Status::invalid_argument(format!("unknown write action {}", req.action))
        })?;
        let blob = |digest: &str| {
            layout_blob_path(&self.dir, digest)
                .ok_or_else(|| Status::invalid_argument(format!("invalid digest {digest:?}")))
        };
        match action {
            WriteAction::Stat => {
                if !req.expected.is_empty()
                    && tokio::fs::metadata(blob(&req.expected)?).await.is_ok()
                {
                    return Err(Status::already_exists(format!(
                        "content {}: already exists",
                        req.expected
                    )));
                }
            }
            WriteAction::Write | WriteAction::Commit => {
                if action == WriteAction::Write && req.offset != self.offset {
                    // Offset 0 starts over; anything else must continue.
                    if req.offset != 0 {
                        return Err(Status::invalid_argument(format!(
                            "write at offset {}, {} bytes written",
                            req.offset, self.offset
                        )));
                    }
                    self.file = None;
                    self.hasher = sha2::Sha256::new();
                    self.offset = 0;
                }
                if !req.data.is_empty() {
                    if self.file.is_none() {
                        let blobs = self.dir.join("blobs").join("sha256");
                        tokio::fs::create_dir_all(&blobs)
                            .await
                            .map_err(|e| io_status(&blobs, &req.expected, e))?;
                        let name = format!(
                            ".ingest-{}-{}",
                            std::process::id(),
                            INGESTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        );
                        let path = blobs.join(name);
                        let f = tokio::fs::File::create(&path)
                            .await
                            .map_err(|e| io_status(&path, &req.expected, e))?;
                        self.file = Some((path, f));
                    }
                    let (path, f) = self.file.as_mut().expect("created above");
                    f.write_all(&req.data)
                        .await
                        .map_err(|e| io_status(path, &req.expected, e))?;
                    self.hasher.update(&req.data);
                    self.offset += req.data.len() as i64;
                }
                answer.offset = self.offset;
                if action == WriteAction::Commit {
                    let got = format!("sha256:{:x}", self.hasher.clone().finalize());
                    if got != req.expected || (req.total > 0 && req.total != self.offset) {
                        // Gone before the client hears of it.
                        if let Some((path, f)) = self.file.take() {
                            drop(f);
                            let _ = tokio::fs::remove_file(&path).await;
                        }
                        return Err(Status::failed_precondition(format!(
                            "unexpected commit digest {got} of {} bytes, expected {} of {}",
                            self.offset, req.expected, req.total
                        )));
                    }
                    let dest = blob(&got)?;
                    match self.file.take() {
                        Some((path, mut f)) => {
                            f.flush().await.map_err(|e| io_status(&path, &got, e))?;
                            drop(f);
                            tokio::fs::rename(&path, &dest)
                                .await
                                .map_err(|e| io_status(&dest, &got, e))?;
                        }
                        // An empty blob.
                        None => tokio::fs::write(&dest, b"")
                            .await
                            .map_err(|e| io_status(&dest, &got, e))?,
                    }
                    answer.digest = got;
                }
            }
        }
        Ok(answer)
    }
}

impl Drop for Ingest {
    fn drop(&mut self) {
        // A write that never committed leaves nothing behind.
        if let Some((path, _)) = self.file.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Names of ingest files, unique within the process.
static INGESTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[tonic::async_trait]
impl Content for LayoutStores {
    async fn info(
        &self,
        request: Request<InfoRequest>,
    ) -> std::result::Result<Response<InfoResponse>, Status> {
        let digest = request.get_ref().digest.clone();
        let path = self.blob(&request, &digest)?;
        let meta = tokio::fs::metadata(&path)
            .await
            .map_err(|e| io_status(&path, &digest, e))?;
        Ok(Response::new(InfoResponse {
            info: Some(Info {
                digest,
                size: i64::try_from(meta.len()).unwrap_or(i64::MAX),
                ..Default::default()
            }),
        }))
    }

    async fn read(
        &self,
        request: Request<ReadContentRequest>,
    ) -> std::result::Result<Response<ReadStream>, Status> {
        let r = request.get_ref().clone();
        let path = self.blob(&request, &r.digest)?;
        let mut f = tokio::fs::File::open(&path)
            .await
            .map_err(|e| io_status(&path, &r.digest, e))?;
        let offset = u64::try_from(r.offset)
            .map_err(|_| Status::invalid_argument(format!("negative offset {}", r.offset)))?;
        f.seek(std::io::SeekFrom::Start(offset))
            .await
            .map_err(|e| io_status(&path, &r.digest, e))?;
        // As containerd: size 0 reads to the end.
        let limit = u64::try_from(r.size).ok().filter(|s| *s > 0);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            let mut at = offset;
            let mut left = limit;
            let mut buf = vec![0u8; CHUNK];
            loop {
                let want = left.map_or(CHUNK, |l| CHUNK.min(usize::try_from(l).unwrap_or(CHUNK)));
                if want == 0 {
                    break;
                }
                let n = match f.read(&mut buf[..want]).await {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.send(Err(io_status(&path, &r.digest, e))).await;
                        break;
                    }
                };
                let msg = ReadContentResponse {
                    offset: i64::try_from(at).unwrap_or(i64::MAX),
                    data: buf[..n].to_vec(),
                };
                if tx.send(Ok(msg)).await.is_err() {
                    break;
                }
                at += n as u64;
                left = left.map(|l| l - n as u64);
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    /// Writes a blob into a writable store (containerd's protocol: STAT,
    /// WRITE chunks, COMMIT with the expected digest; one answer each).
    async fn write(
        &self,
        request: Request<tonic::Streaming<WriteContentRequest>>,
    ) -> std::result::Result<Response<WriteStream>, Status> {
        let id = request
            .metadata()
            .get(STORE_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        // Checks the header and the store as a read does.
        self.blob(
            &request,
            "sha256:0000000000000000000000000000000000000000000000000000000000000000",
        )?;
        if !self.writable.contains(&id) {
            return Err(Status::permission_denied(format!(
                "store {id} is read only"
            )));
        }
        let dir = self.stores.get(&id).cloned().unwrap_or_default();
        let mut requests = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            use sha2::Digest as _;
            let mut ingest = Ingest {
                dir,
                file: None,
                hasher: sha2::Sha256::new(),
                offset: 0,
            };
            while let Some(req) = requests.next().await {
                let answer = match req {
                    Ok(req) => ingest.handle(req).await,
                    Err(e) => Err(e),
                };
                let end = answer.is_err() || answer.as_ref().is_ok_and(|a| !a.digest.is_empty());
                if tx.send(answer).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// A request for store `store`.
fn for_store<T>(msg: T, store: &str) -> Result<Request<T>> {
    let mut r = Request::new(msg);
    let value = store.parse().map_err(|_| SessionError::Metadata {
        key: STORE_HEADER.to_string(),
    })?;
    r.metadata_mut().insert(STORE_HEADER, value);
    Ok(r)
}

/// The daemon side: the size of blob `digest` in the client's store
/// `store`.
pub async fn info(channel: Channel, store: &str, digest: &str) -> Result<u64> {
    let req = for_store(
        InfoRequest {
            digest: digest.to_string(),
        },
        store,
    )?;
    let info = ContentClient::new(channel)
        .info(req)
        .await
        .map_err(|status| SessionError::Call {
            method: INFO_METHOD,
            status,
        })?
        .into_inner()
        .info
        .unwrap_or_default();
    Ok(u64::try_from(info.size).unwrap_or(0))
}

/// The daemon side: copies blob `digest` of the client's store `store`
/// into `w`, failing once more than `limit` bytes arrive. Returns the
/// number of bytes copied; the caller checks them against the digest.
pub async fn copy<W: AsyncWrite + Unpin>(
    channel: Channel,
    store: &str,
    digest: &str,
    limit: u64,
    w: &mut W,
) -> Result<u64> {
    let req = for_store(
        ReadContentRequest {
            digest: digest.to_string(),
            offset: 0,
            size: 0,
        },
        store,
    )?;
    let call = |status| SessionError::Call {
        method: READ_METHOD,
        status,
    };
    let mut stream = ContentClient::new(channel)
        .read(req)
        .await
        .map_err(call)?
        .into_inner();
    let mut n = 0u64;
    while let Some(msg) = stream.next().await {
        let msg = msg.map_err(call)?;
        if msg.offset != i64::try_from(n).unwrap_or(i64::MAX) {
            return Err(SessionError::Content {
                digest: digest.to_string(),
                reason: format!("data at offset {} where {n} was next", msg.offset),
            });
        }
        n += msg.data.len() as u64;
        if n > limit {
            return Err(SessionError::Content {
                digest: digest.to_string(),
                reason: format!("more than the {limit} bytes expected"),
            });
        }
        w.write_all(&msg.data)
            .await
            .map_err(|source| SessionError::Read { source })?;
    }
    w.flush()
        .await
        .map_err(|source| SessionError::Read { source })?;
    Ok(n)
}

/// The answer to one write request; `true`: another writer committed the
/// blob meanwhile (the store answers AlreadyExists), so it is there.
async fn answered(
    answers: &mut tonic::Streaming<kiln_proto::content::WriteContentResponse>,
    digest: &str,
) -> Result<bool> {
    match answers.next().await {
        Some(Ok(_)) => Ok(false),
        Some(Err(s)) if s.code() == tonic::Code::AlreadyExists => Ok(true),
        Some(Err(status)) => Err(SessionError::Call {
            method: WRITE_METHOD,
            status,
        }),
        None => Err(SessionError::Content {
            digest: digest.to_string(),
            reason: "the client's store closed the write".into(),
        }),
    }
}

/// Whether the client's store `store` has blob `digest`.
pub async fn has(channel: Channel, store: &str, digest: &str) -> Result<bool> {
    match info(channel, store, digest).await {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == kiln_proto::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The daemon side: writes blob `digest` of `size` bytes, read from `r`,
/// into the client's store `store` as containerd's content API does (STAT,
/// WRITE chunks, COMMIT with the expected digest and size, one answer per
/// request), under the ingest ref `reference`. A blob the store has
/// already is not sent again. The store checks the digest on commit.
pub async fn write<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    channel: Channel,
    store: &str,
    reference: &str,
    digest: &str,
    size: u64,
    r: R,
) -> Result<()> {
    if has(channel.clone(), store, digest).await? {
        return Ok(());
    }
    write_missing(channel, store, reference, digest, size, r).await
}

/// [`write()`] of a blob the store was found not to have ([`has`]), for a
/// caller that asks before it opens `r`.
pub async fn write_missing<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    channel: Channel,
    store: &str,
    reference: &str,
    digest: &str,
    size: u64,
    mut r: R,
) -> Result<()> {
    let total = i64::try_from(size).unwrap_or(i64::MAX);
    let (tx, rx) = tokio::sync::mpsc::channel::<WriteContentRequest>(2);
    let req = for_store(tokio_stream::wrappers::ReceiverStream::new(rx), store)?;
    let call = |status| SessionError::Call {
        method: WRITE_METHOD,
        status,
    };
    let first = WriteContentRequest {
        action: WriteAction::Stat as i32,
        r#ref: reference.to_string(),
        total,
        expected: digest.to_string(),
        ..Default::default()
    };
    let closed = || SessionError::Content {
        digest: digest.to_string(),
        reason: "the client's store closed the write".into(),
    };
    tx.send(first).await.map_err(|_| closed())?;
    let mut answers = ContentClient::new(channel)
        .write(req)
        .await
        .map_err(call)?
        .into_inner();
    if answered(&mut answers, digest).await? {
        return Ok(());
    }
    // A write the store had begun under this ref starts over: offset 0
    // truncates it.
    let mut offset = 0i64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = tokio::io::AsyncReadExt::read(&mut r, &mut buf)
            .await
            .map_err(|source| SessionError::Read { source })?;
        if n == 0 {
            break;
        }
        let msg = WriteContentRequest {
            action: WriteAction::Write as i32,
            r#ref: reference.to_string(),
            offset,
            data: buf[..n].to_vec(),
            ..Default::default()
        };
        tx.send(msg).await.map_err(|_| closed())?;
        if answered(&mut answers, digest).await? {
            return Ok(());
        }
        offset += n as i64;
    }
    if offset != total {
        return Err(SessionError::Content {
            digest: digest.to_string(),
            reason: format!("{offset} bytes to write, its descriptor says {size}"),
        });
    }
    let commit = WriteContentRequest {
        action: WriteAction::Commit as i32,
        r#ref: reference.to_string(),
        total,
        expected: digest.to_string(),
        offset,
        ..Default::default()
    };
    tx.send(commit).await.map_err(|_| closed())?;
    answered(&mut answers, digest).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hijack::{connect_session, loopback, serve_session, SessionServices};
    use tokio_util::sync::CancellationToken;

    const BLOB: &[u8] = b"hello";
    /// sha256 of "hello".
    const DIGEST: &str = "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824";

    #[tokio::test]
    async fn the_daemon_reads_a_layout_blob_through_the_session() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = layout_blob_path(dir.path(), DIGEST).expect("valid digest");
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&path, BLOB).expect("write blob");

        let (daemon, client) = loopback();
        let mut services = SessionServices::new();
        services.add(
            LayoutStores::new(HashMap::from([(
                oci_store_id("base"),
                dir.path().to_path_buf(),
            )]))
            .into_service(),
            LayoutStores::METHODS,
        );
        let cancel = CancellationToken::new();
        let served = tokio::spawn(serve_session(client, services, cancel.clone()));
        let channel = connect_session(daemon).await.expect("session connects");

        assert_eq!(
            info(channel.clone(), "oci:base", DIGEST)
                .await
                .expect("info"),
            5
        );
        let mut out = Vec::new();
        let n = copy(channel.clone(), "oci:base", DIGEST, 5, &mut out)
            .await
            .expect("read");
        assert_eq!((n, out.as_slice()), (5, BLOB));

        let e = copy(channel.clone(), "oci:base", DIGEST, 4, &mut Vec::new())
            .await
            .expect_err("over the limit");
        assert!(e.to_string().contains("more than the 4 bytes"), "{e}");
        let e = info(channel.clone(), "oci:other", DIGEST)
            .await
            .expect_err("unknown store");
        assert_eq!(e.kind(), kiln_proto::ErrorKind::NotFound);
        assert!(e.to_string().contains("unknown store oci:other"), "{e}");
        let missing = DIGEST.replace("2cf2", "0000");
        let e = info(channel.clone(), "oci:base", &missing)
            .await
            .expect_err("missing blob");
        assert_eq!(e.kind(), kiln_proto::ErrorKind::NotFound);
        let e = info(channel, "oci:base", "sha256:../../etc")
            .await
            .expect_err("not a digest");
        assert_eq!(e.kind(), kiln_proto::ErrorKind::InvalidArgument);
        cancel.cancel();
        let _ = served.await;
    }

    #[tokio::test]
    async fn the_daemon_writes_into_a_writable_store_only() {
        let ro = tempfile::tempdir().expect("tempdir");
        let rw = tempfile::tempdir().expect("tempdir");
        let (daemon, client) = loopback();
        let stores = LayoutStores::new(HashMap::from([(
            oci_store_id("base"),
            ro.path().to_path_buf(),
        )]))
        .with_writable(local_store_id("/c"), rw.path().to_path_buf());
        let mut services = SessionServices::new();
        let methods = stores.methods();
        assert!(methods.contains(&"Write"));
        services.add(stores.into_service(), methods);
        let cancel = CancellationToken::new();
        let served = tokio::spawn(serve_session(client, services, cancel.clone()));
        let channel = connect_session(daemon).await.expect("session connects");

        write(channel.clone(), "local:/c", "r1", DIGEST, 5, BLOB)
            .await
            .expect("written");
        let path = layout_blob_path(rw.path(), DIGEST).expect("path");
        assert_eq!(std::fs::read(&path).expect("blob"), BLOB);
        // Again: the store has it, nothing is sent.
        write(channel.clone(), "local:/c", "r2", DIGEST, 5, BLOB)
            .await
            .expect("already there");
        // Bytes that are not the digest's are refused, and leave nothing.
        let other = DIGEST.replace("2cf2", "0000");
        let e = write(channel.clone(), "local:/c", "r3", &other, 5, BLOB)
            .await
            .expect_err("wrong digest");
        assert!(e.to_string().contains("unexpected commit digest"), "{e}");
        let names: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("blobs")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        let e = write(channel, "oci:base", "r4", DIGEST, 5, BLOB)
            .await
            .expect_err("read only");
        assert!(e.to_string().contains("read only"), "{e}");
        cancel.cancel();
        let _ = served.await;
    }
}
