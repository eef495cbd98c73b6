//! `FileSync.DiffCopy`: the daemon pulls a local directory (build context,
//! Dockerfile) from the client (buildkit-protocol.md §4.1). The client is
//! the fsutil sender, the daemon the receiver.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kiln_proto::filesync::file_sync_client::FileSyncClient;
use kiln_proto::filesync::file_sync_server::{FileSync, FileSyncServer};
use kiln_proto::fsutil::Packet;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::BoxStream;
use tonic::transport::Channel;
use tonic::{Request, Response, Status, Streaming};

use crate::error::{Result, SessionError};
use crate::fsutil::{receive_dir, send_dir, ReceiveOptions, ReceiveStats, SendOptions};
use crate::metadata::{append_values, values};
use crate::respond::{spawn_response, status_of};

/// Metadata naming the directory to send.
pub const DIR_NAME_KEY: &str = "dir-name";
/// Metadata with include patterns, one per value.
pub const INCLUDE_PATTERNS_KEY: &str = "include-patterns";
/// Metadata with exclude patterns, one per value.
pub const EXCLUDE_PATTERNS_KEY: &str = "exclude-patterns";
/// Metadata with follow paths, one per value.
pub const FOLLOW_PATHS_KEY: &str = "followpaths";
/// The full method path the daemon calls.
pub const DIFF_COPY_METHOD: &str = "/moby.filesync.v1.FileSync/DiffCopy";

/// BuildKit's name of the progress item of a transfer of the local
/// directory `name` (`transferring context:`), which carries its bytes on
/// the wire ([`crate::fsutil::ReceiveStats::wire_bytes`]).
pub fn transfer_id(name: &str) -> String {
    format!("transferring {name}:")
}

/// The largest message either side accepts (upstream's session limit).
const MAX_MESSAGE: usize = 16 << 20;

/// The client's FileSync service: sends the named local directories when
/// the daemon asks, filtered by the patterns the daemon passes, with uid
/// and gid reset to 0 as buildctl does.
#[derive(Clone, Debug, Default)]
pub struct FileSyncServerImpl {
    /// Directory names (`context`, `dockerfile`, named contexts) -> paths.
    pub dirs: HashMap<String, PathBuf>,
}

impl FileSyncServerImpl {
    /// The methods to announce for this service.
    pub const METHODS: &'static [&'static str] = &["DiffCopy"];

    /// Serves `dirs`.
    pub fn new(dirs: HashMap<String, PathBuf>) -> FileSyncServerImpl {
        FileSyncServerImpl { dirs }
    }

    /// The service to add to the session's services.
    pub fn into_service(self) -> FileSyncServer<FileSyncServerImpl> {
        FileSyncServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }
}

#[tonic::async_trait]
impl FileSync for FileSyncServerImpl {
    async fn diff_copy(
        &self,
        request: Request<Streaming<Packet>>,
    ) -> Result<Response<BoxStream<Packet>>, Status> {
        let md = request.metadata();
        let name = values(md, DIR_NAME_KEY)?
            .into_iter()
            .next()
            .unwrap_or_default();
        let Some(root) = self.dirs.get(&name).cloned() else {
            return Err(Status::not_found(format!(
                "no access allowed to dir {name:?}"
            )));
        };
        let opts = SendOptions {
            include_patterns: values(md, INCLUDE_PATTERNS_KEY)?,
            exclude_patterns: values(md, EXCLUDE_PATTERNS_KEY)?,
            follow_paths: values(md, FOLLOW_PATHS_KEY)?,
            reset_owner: true,
            ..Default::default()
        };
        tracing::debug!(dir = %name, path = %root.display(), "sending local directory");
        let inbound = request.into_inner();
        let stream = spawn_response(move |tx| async move {
            send_dir(&root, &opts, inbound, tx)
                .await
                .map_err(|e| status_of(&e))
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The daemon side: pulls the client's directory `name` into `dest` (an
/// existing directory), asking the client to filter with `includes`,
/// `excludes` and `follow_paths`. With `opts.incremental`, `dest` holds an
/// earlier pull of the same directory and only what changed is sent.
pub async fn fetch_dir(
    channel: Channel,
    name: &str,
    includes: &[String],
    excludes: &[String],
    follow_paths: &[String],
    dest: &Path,
    opts: ReceiveOptions,
) -> Result<ReceiveStats> {
    let mut client = FileSyncClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE);
    let (tx, rx) = mpsc::channel::<Packet>(64);
    let mut req = Request::new(ReceiverStream::new(rx));
    let md = req.metadata_mut();
    append_values(md, DIR_NAME_KEY, &[name.to_string()])?;
    append_values(md, INCLUDE_PATTERNS_KEY, includes)?;
    append_values(md, EXCLUDE_PATTERNS_KEY, excludes)?;
    append_values(md, FOLLOW_PATHS_KEY, follow_paths)?;
    let inbound = client
        .diff_copy(req)
        .await
        .map_err(|status| SessionError::Call {
            method: DIFF_COPY_METHOD,
            status,
        })?
        .into_inner();
    receive_dir(dest, inbound, tx, opts)
        .await
        .map_err(|source| SessionError::Transfer {
            name: name.to_string(),
            source,
        })
}
