//! A client session as buildx and buildctl attach one over
//! `Control.Session`: it serves directories over FileSync by name, for the
//! tests that drive kilnd's gateway themselves.

use kiln_proto::control::control_client::ControlClient;
use kiln_session::filesync::FileSyncServerImpl;
use kiln_session::hijack::{client_side, serve_session, SessionServices};
use std::collections::HashMap;
use std::path::PathBuf;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// An attached session; closed when dropped.
#[derive(Debug)]
pub struct ClientSession {
    pub id: String,
    done: CancellationToken,
}

impl ClientSession {
    /// Attaches session `id` over `channel`, serving each `(name, dir)`.
    pub async fn open(channel: Channel, id: &str, dirs: &[(&str, PathBuf)]) -> ClientSession {
        let mut services = SessionServices::new();
        services.add(
            FileSyncServerImpl::new(
                dirs.iter()
                    .map(|(n, d)| (n.to_string(), d.clone()))
                    .collect::<HashMap<_, _>>(),
            )
            .into_service(),
            FileSyncServerImpl::METHODS,
        );
        let (side, requests) = client_side();
        let req = kiln_session::hijack::session_request(id, "", &services, requests)
            .expect("session request");
        let responses = ControlClient::new(channel)
            .session(req)
            .await
            .expect("session")
            .into_inner();
        let done = CancellationToken::new();
        tokio::spawn(serve_session(
            side.attach(responses),
            services,
            done.clone(),
        ));
        ClientSession {
            id: id.to_string(),
            done,
        }
    }

    /// A session serving `dir` as both `context` and `dockerfile`.
    pub async fn of_context(channel: Channel, id: &str, dir: &std::path::Path) -> ClientSession {
        ClientSession::open(
            channel,
            id,
            &[
                ("context", dir.to_path_buf()),
                ("dockerfile", dir.to_path_buf()),
            ],
        )
        .await
    }
}

impl Drop for ClientSession {
    fn drop(&mut self) {
        self.done.cancel();
    }
}
