//! The client's secrets for `RUN --mount=type=secret` and secret env
//! vars: the engine asks a [`SecretSource`] for a secret's bytes by id
//! when the step runs. Embedded kiln reads the `--secret` files and env
//! vars; kilnd asks the client through its session. A value never enters
//! the graph, a cache key, a layer, the history or a log: the step sees it
//! as a file on a tmpfs bound read-only, or in its environment.

/// Where a build's secrets come from.
#[async_trait::async_trait]
pub trait SecretSource: Send + Sync + std::fmt::Debug {
    /// The secret `id`'s bytes; `Ok(None)` when the client has no such
    /// secret.
    async fn get(&self, id: &str) -> Result<Option<Vec<u8>>, SecretError>;
}

/// Why a secret could not be had (other than not existing).
#[derive(Debug, thiserror::Error)]
#[error("secret {id}: {reason}")]
pub struct SecretError {
    pub id: String,
    pub reason: String,
}

/// A build without secrets.
#[derive(Debug, Default)]
pub struct NoSecrets;

#[async_trait::async_trait]
impl SecretSource for NoSecrets {
    async fn get(&self, _id: &str) -> Result<Option<Vec<u8>>, SecretError> {
        Ok(None)
    }
}

/// BuildKit's limit on one secret.
pub const MAX_SECRET_SIZE: usize = 500 * 1024;

/// The secrets of a build that has none.
pub fn none() -> std::sync::Arc<dyn SecretSource> {
    std::sync::Arc::new(NoSecrets)
}
