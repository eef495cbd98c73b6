//! The client's uploads: bytes a client serves once in its session for an
//! `http://buildkit-session/<id>` URL, as buildx sends a tar context read
//! from stdin (`docker buildx build - < context.tar`). An HTTP source of
//! such a URL reads the upload instead of the network, as BuildKit's http
//! source does (it looks at the host alone, so `https://` is one too).
//! kilnd pulls it from the client's session (`Upload.Pull`); a build
//! without a session has no uploads.

use tokio::io::AsyncRead;

/// The host of an upload URL (BuildKit's).
pub const SESSION_HOST: &str = "buildkit-session";

/// Whether `url` names an upload of the client's session: its host is
/// `buildkit-session` (`http://buildkit-session/<id>`).
pub fn is_session_url(url: &str) -> bool {
    url.strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .and_then(|rest| rest.split(['/', '?', '#']).next())
        .is_some_and(|host| host == SESSION_HOST)
}

/// An upload's bytes, as they arrive.
pub type UploadReader = Box<dyn AsyncRead + Send + Unpin>;

/// Where a build's uploads come from.
#[async_trait::async_trait]
pub trait UploadSource: Send + Sync + std::fmt::Debug {
    /// The bytes of the upload `url` names. A client serves each upload
    /// once: a second open of the same URL fails.
    async fn open(&self, url: &str) -> Result<UploadReader, UploadError>;

    /// What only this source's session shares, unguessable by other
    /// clients: an upload read once is kept under its URL in this scope.
    fn scope(&self) -> &str;
}

/// Why an upload cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The build has no client session to pull from (embedded kiln, or a
    /// client that serves no Upload service).
    #[error("no upload {url} in the client's session (the client serves no uploads)")]
    NoSession { url: String },
    /// The client's session answered with an error.
    #[error("upload {url}: {reason}")]
    Client { url: String, reason: String },
}

/// A build without uploads.
#[derive(Debug, Default)]
pub struct NoUploads;

#[async_trait::async_trait]
impl UploadSource for NoUploads {
    async fn open(&self, url: &str) -> Result<UploadReader, UploadError> {
        Err(UploadError::NoSession {
            url: url.to_string(),
        })
    }

    fn scope(&self) -> &str {
        ""
    }
}

/// The uploads of a build that has none.
pub fn none() -> std::sync::Arc<dyn UploadSource> {
    std::sync::Arc::new(NoUploads)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_session_host_is_an_upload() {
        assert!(is_session_url("http://buildkit-session/abc123"));
        assert!(is_session_url("https://buildkit-session/abc123"));
        assert!(!is_session_url("http://buildkit-session.example.com/x"));
        assert!(!is_session_url("http://example.com/buildkit-session/x"));
    }
}
