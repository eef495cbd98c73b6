//! A build's uploads (`http://buildkit-session/<id>` sources, buildx's tar
//! context on stdin): pulled from the client's session (`Upload.Pull`)
//! when the source first runs; the engine keeps what it read for that
//! session only (scoped by the session's random nonce, which no client
//! sees).

use kiln_engine::uploads::{UploadError, UploadReader, UploadSource};
use tonic::transport::Channel;

/// The client's uploads, through its session. Without a session, or when
/// the client serves no Upload service, there are none.
#[derive(Clone, Debug)]
pub struct SessionUploads {
    channel: Option<Channel>,
    scope: String,
}

impl SessionUploads {
    pub fn new(session: Option<&crate::sessions::SessionHandle>) -> SessionUploads {
        SessionUploads {
            channel: session
                .filter(|s| s.exposes(kiln_session::upload::PULL_METHOD))
                .map(|s| s.channel.clone()),
            scope: session.map(|s| s.nonce.clone()).unwrap_or_default(),
        }
    }
}

#[async_trait::async_trait]
impl UploadSource for SessionUploads {
    async fn open(&self, url: &str) -> Result<UploadReader, UploadError> {
        let Some(channel) = self.channel.clone() else {
            return Err(UploadError::NoSession {
                url: url.to_string(),
            });
        };
        let reader = kiln_session::upload::pull(channel, url)
            .await
            .map_err(|e| UploadError::Client {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Box::new(reader))
    }

    fn scope(&self) -> &str {
        &self.scope
    }
}
