//! The connection to containerd and the thin proxies over its services.
//!
//! Proxies translate, never decide: they attach the namespace and lease
//! headers, call, map the status and convert the answer.

mod content;
mod diff;
mod images;
mod leases;
mod services;
mod snapshots;

pub use content::{BlobWriter, ContentInfo};
pub use images::ImageRecord;
pub use leases::{LeaseId, LeaseInfo, LEASE_OWNER_LABEL, LEASE_PREFIX};
#[cfg(any(test, feature = "testing"))]
pub(crate) use leases::{EXPIRE_LABEL, FLAT_LABEL};
pub use snapshots::{SnapshotInfo, SnapshotKind};

use crate::error::{Result, SnapshotError};
use containerd_client::tonic::transport::Channel;
use containerd_client::tonic::{metadata::MetadataValue, Request, Status};
use kiln_types::ErrorKind;
use std::path::{Path, PathBuf};

/// gRPC message limit, containerd's own default.
pub const MAX_MESSAGE: usize = 16 << 20;

/// Where and how to reach containerd: the settings ctr and nerdctl read
/// from `CONTAINERD_ADDRESS`, `CONTAINERD_NAMESPACE`, `CONTAINERD_SNAPSHOTTER`.
#[derive(Clone, Debug)]
pub struct ContainerdConfig {
    pub address: PathBuf,
    pub namespace: String,
    pub snapshotter: String,
}

impl Default for ContainerdConfig {
    fn default() -> Self {
        ContainerdConfig {
            address: PathBuf::from("/run/containerd/containerd.sock"),
            namespace: "default".into(),
            snapshotter: "overlayfs".into(),
        }
    }
}

/// A connection to one containerd namespace and snapshotter.
#[derive(Clone)]
pub struct Containerd {
    channel: Channel,
    config: ContainerdConfig,
    /// containerd's server UUID, asked once per connection (it names the
    /// daemon's state directory, so it does not change while it runs; as
    /// BuildKit, which reads it when its worker starts).
    uuid: std::sync::Arc<tokio::sync::OnceCell<String>>,
}

impl std::fmt::Debug for Containerd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Containerd")
            .field("config", &self.config)
            .finish()
    }
}

impl Containerd {
    /// Connects and checks that containerd answers `Version`. A missing
    /// socket or dead daemon gives one error that names the socket.
    pub async fn connect(config: ContainerdConfig) -> Result<Self> {
        let address = config.address.display().to_string();
        if !Path::new(&config.address).exists() {
            return Err(SnapshotError::Connect {
                address,
                reason: "no such socket".into(),
            });
        }
        let channel = containerd_client::connect(&config.address)
            .await
            .map_err(|e| SnapshotError::Connect {
                address: address.clone(),
                reason: error_chain(&e),
            })?;
        let this = Containerd {
            channel,
            config,
            uuid: Default::default(),
        };
        this.version().await.map_err(|e| SnapshotError::Connect {
            address,
            reason: e.to_string(),
        })?;
        Ok(this)
    }

    pub fn config(&self) -> &ContainerdConfig {
        &self.config
    }

    pub fn namespace(&self) -> &str {
        &self.config.namespace
    }

    pub fn snapshotter(&self) -> &str {
        &self.config.snapshotter
    }

    /// The same connection for another namespace (content can be shared
    /// across namespaces; snapshots cannot).
    pub fn with_namespace(&self, namespace: &str) -> Self {
        let mut c = self.clone();
        c.config.namespace = namespace.to_string();
        c
    }

    /// The underlying channel, for the proxies of other crates (tasks,
    /// containers). Wrap every message with [`Containerd::request`].
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Wraps a message with the namespace header and, if given, the lease
    /// header so that whatever the call creates belongs to that lease.
    pub fn request<T>(&self, msg: T, lease: Option<&LeaseId>) -> Request<T> {
        let mut req = Request::new(msg);
        let md = req.metadata_mut();
        if let Ok(v) = MetadataValue::try_from(self.config.namespace.as_str()) {
            md.insert("containerd-namespace", v);
        }
        if let Some(l) = lease {
            if let Ok(v) = MetadataValue::try_from(l.as_str()) {
                md.insert("containerd-lease", v);
            }
        }
        req
    }

    /// Maps a status from `method` about `object` to a typed error.
    pub fn status_error(
        &self,
        method: &'static str,
        object: &str,
        status: Status,
    ) -> SnapshotError {
        let kind = ErrorKind::from_code(status.code());
        if kind == ErrorKind::Unavailable || is_connection_lost(&status) {
            return SnapshotError::Unavailable {
                address: self.config.address.display().to_string(),
                method,
                message: status.message().to_string(),
            };
        }
        SnapshotError::Rpc {
            method,
            object: object.to_string(),
            kind,
            message: status.message().to_string(),
        }
    }

    /// containerd's version string.
    pub async fn version(&self) -> Result<String> {
        let mut c =
            containerd_client::services::v1::version_client::VersionClient::new(self.channel());
        let r = c
            .version(Request::new(()))
            .await
            .map_err(|s| self.status_error("Version", "", s))?;
        Ok(r.into_inner().version)
    }

    /// containerd's server UUID (Introspection.Server), asked the first
    /// time only.
    pub async fn server_uuid(&self) -> Result<String> {
        self.uuid
            .get_or_try_init(|| async {
                let mut c =
                    containerd_client::services::v1::introspection_client::IntrospectionClient::new(
                        self.channel(),
                    );
                let r = c
                    .server(Request::new(()))
                    .await
                    .map_err(|s| self.status_error("Introspection.Server", "", s))?;
                Ok(r.into_inner().uuid)
            })
            .await
            .cloned()
    }
}

/// Whether `status` is the client's own report of a broken connection
/// (tonic answers `Unknown: transport error` when the socket drops mid-call)
/// rather than an answer from containerd.
fn is_connection_lost(status: &Status) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = cur {
        if e.is::<containerd_client::tonic::transport::Error>() || e.is::<std::io::Error>() {
            return true;
        }
        cur = e.source();
    }
    false
}

/// The full cause chain of an error as one line (`a: b: c`), for
/// messages that must stand alone.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctrd() -> Containerd {
        let channel = containerd_client::tonic::transport::Endpoint::from_static("http://[::1]:1")
            .connect_lazy();
        Containerd {
            channel,
            config: ContainerdConfig {
                address: "/run/k/containerd.sock".into(),
                namespace: "ns".into(),
                snapshotter: "overlayfs".into(),
            },
            uuid: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_dropped_connection_names_containerd_and_the_socket() {
        let c = ctrd();
        // What tonic hands back when the socket breaks mid-call.
        let broken = Status::from_error(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset,
        )));
        assert_eq!(broken.code(), containerd_client::tonic::Code::Unknown);
        let e = c.status_error("Tasks.Start", "kiln-1", broken);
        assert_eq!(e.kind(), ErrorKind::Unavailable);
        let text = e.to_string();
        assert!(
            text.starts_with(
                "containerd connection lost (restarted?): Tasks.Start on /run/k/containerd.sock"
            ),
            "{text}"
        );
        let down = c.status_error("Leases.List", "", Status::unavailable("connection refused"));
        assert!(
            down.to_string().contains("connection lost (restarted?)"),
            "{down}"
        );

        // An answer from containerd keeps its own kind.
        let answer = c.status_error("Snapshots.Stat", "k", Status::unknown("odd"));
        assert_eq!(answer.kind(), ErrorKind::Internal);
        assert!(!answer.to_string().contains("connection lost"), "{answer}");
    }
}
