//! Source ops of remote sources: an HTTP(S) file or a git checkout put
//! into a fresh snapshot on scratch, kept as a cache record whose key is
//! what was fetched. The source op itself runs in every build (as an
//! image source does), but only to learn that key: the commit (`git
//! ls-remote`, nothing for a commit id), the checksum the op names, or the
//! server's `ETag` (one HEAD request); a record under it means nothing is
//! downloaded.

use super::{location, StepRunner};
use crate::error::{Result, WorkerError};
use crate::refs::{Layer, Ref};
use crate::sources::{git, http, SourceFailure};
use kiln_solver::source::{GitSource, HttpSource};
use kiln_solver::{Digest, Vertex};
use tokio_util::sync::CancellationToken;

impl StepRunner {
    fn source_err(v: &Vertex, e: SourceFailure) -> WorkerError {
        WorkerError::Source {
            location: location(v),
            message: e.0,
        }
    }

    /// The chain of the cache record `key`, if there is one and the
    /// vertex may use the cache (`--no-cache` fetches again).
    async fn recorded(&self, v: &Vertex, key: &Digest) -> Result<Option<Vec<Layer>>> {
        if v.ignore_cache {
            return Ok(None);
        }
        Ok(crate::cache::load(&self.svc, key, &self.lease)
            .await?
            .and_then(|mut outs| (outs.len() == 1).then(|| outs.remove(0))))
    }

    /// Saves `layers` under each of `keys` (a failure costs a later
    /// download, not this build) and returns the chain recorded under the
    /// last key: when an equal source of this or another build saved
    /// first, its chain, so every user of the key sees one checkout (a
    /// second checkout of a commit has other mtimes, and steps on it
    /// would miss the cache next time).
    async fn record(&self, v: &Vertex, keys: &[Digest], layers: Vec<Layer>) -> Result<Vec<Layer>> {
        self.save_records(v, keys, &layers).await;
        match keys.last() {
            Some(k) if !v.ignore_cache => Ok(self.recorded(v, k).await?.unwrap_or(layers)),
            _ => Ok(layers),
        }
    }

    async fn save_records(&self, v: &Vertex, keys: &[Digest], layers: &[Layer]) {
        for key in keys {
            if let Err(e) = crate::cache::save(
                &self.svc,
                key,
                &[layers.to_vec()],
                crate::cache::TYPE_REGULAR,
                &v.name,
            )
            .await
            {
                tracing::warn!(vertex = %v.name, error = %e, "cannot save a source's cache record");
            }
        }
    }

    /// Makes a one-layer chain on scratch whose content `fill` writes into
    /// the directory it is given (the mounted snapshot). Returns the fill's
    /// value with the chain.
    async fn new_layer<T, F, Fut>(&self, name: &str, fill: F) -> Result<(T, Vec<Layer>)>
    where
        F: FnOnce(std::path::PathBuf) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let active = self.prepare(&[]).await?;
        let filled = match self.mount(
            &format!("{name}-{}", crate::base::rand_hex()),
            &active.mounts,
            false,
        ) {
            Ok(m) => {
                let r = fill(m.path().to_path_buf()).await;
                drop(m);
                r
            }
            Err(e) => Err(e),
        };
        match filled {
            Ok(t) => Ok((t, self.commit(active).await?)),
            Err(e) => {
                self.discard(active).await;
                Err(e)
            }
        }
    }

    pub(super) async fn git_source(
        &self,
        v: &Vertex,
        src: GitSource,
        cancel: &CancellationToken,
    ) -> Result<Vec<Ref>> {
        let auth = self.git_auth(v, &src).await?;
        let resolved = tokio::select! {
            r = git::resolve(&src, auth.as_ref()) => r.map_err(|e| Self::source_err(v, e))?,
            _ = cancel.cancelled() => return Err(WorkerError::Cancelled),
        };
        let key = Digest::of(
            serde_json::json!({
                "source": "git",
                "remote": src.host_path,
                "commit": resolved.commit,
                "subdir": src.subdir,
                "keep_git_dir": src.keep_git_dir,
                "skip_submodules": src.skip_submodules,
                "mtime": src.mtime,
            })
            .to_string()
            .as_bytes(),
        );
        if let Some(chain) = self.recorded(v, &key).await? {
            tracing::debug!(commit = %resolved.commit, "git checkout from the cache");
            return Ok(vec![Ref::Chain(chain)]);
        }
        let scratch = self
            .mount_dir
            .join(format!("git-{}", crate::base::rand_hex()));
        std::fs::create_dir_all(&scratch).map_err(|e| WorkerError::Io {
            path: scratch.display().to_string(),
            source: e,
        })?;
        let r = self
            .new_layer("git", |dir| {
                let (src, resolved, scratch) = (&src, &resolved, scratch.clone());
                let auth = auth.as_ref();
                async move {
                    tokio::select! {
                        r = git::checkout(src, auth, resolved, &scratch, &dir) => r.map_err(|e| Self::source_err(v, e)),
                        _ = cancel.cancelled() => Err(WorkerError::Cancelled),
                    }
                }
            })
            .await;
        if let Err(e) = std::fs::remove_dir_all(&scratch) {
            tracing::warn!(dir = %scratch.display(), error = %e, "cannot remove a git scratch directory");
        }
        let ((), layers) = r?;
        let layers = self.record(v, &[key], layers).await?;
        Ok(vec![Ref::Chain(layers)])
    }

    /// The remote's credentials from the client's secrets (the first of
    /// [`git::auth_secret_names`] the client has). ssh remotes never get
    /// here (`GitSource::from_op` refuses them before the build); this
    /// refuses one again rather than fetch with the daemon's own keys.
    async fn git_auth(&self, v: &Vertex, src: &GitSource) -> Result<Option<git::AuthHeader>> {
        let ssh = src.remote.starts_with("ssh://")
            || (!src.remote.contains("://") && src.remote.contains('@'));
        if ssh {
            return Err(WorkerError::Unsupported {
                location: location(v),
                what: "a git repository over ssh".into(),
            });
        }
        for (id, token) in git::auth_secret_names(src) {
            let got = self
                .secrets
                .get(&id)
                .await
                .map_err(|e| WorkerError::Secret {
                    location: location(v),
                    source: e,
                })?;
            if let Some(secret) = got {
                tracing::debug!(secret = %id, "git credentials from the client");
                return Ok(Some(git::AuthHeader::new(&src.remote, &secret, token)));
            }
        }
        Ok(None)
    }

    pub(super) async fn http_source(
        &self,
        v: &Vertex,
        src: HttpSource,
        cancel: &CancellationToken,
    ) -> Result<Vec<Ref>> {
        let key_of = |what: &str, value: &str| {
            Digest::of(
                serde_json::json!({
                    "source": "http",
                    "url": src.url,
                    "filename": src.filename,
                    "perm": src.perm,
                    "uid": src.uid,
                    "gid": src.gid,
                    what: value,
                })
                .to_string()
                .as_bytes(),
            )
        };
        let mut keys = Vec::new();
        if !src.checksum.is_empty() {
            let k = key_of("checksum", &src.checksum);
            if let Some(chain) = self.recorded(v, &k).await? {
                return Ok(vec![Ref::Chain(chain)]);
            }
            keys.push(k);
        }
        let client = self
            .registry
            .http_client(http::host_of(&src.url))
            .map_err(|e| WorkerError::Source {
                location: location(v),
                message: e.to_string(),
            })?;
        // With a checksum only content that was checked may be reused:
        // an ETag says nothing about it.
        let etag = if src.checksum.is_empty() {
            tokio::select! {
                e = http::head_etag(&client, &src.url) => e,
                _ = cancel.cancelled() => return Err(WorkerError::Cancelled),
            }
        } else {
            None
        };
        if let Some(etag) = &etag {
            let k = key_of("etag", etag);
            if let Some(chain) = self.recorded(v, &k).await? {
                tracing::debug!(url = %src.url, etag, "http source not modified");
                return Ok(vec![Ref::Chain(chain)]);
            }
            keys.push(k);
        }
        let (fetched, layers) = self
            .new_layer("http", |dir| {
                let (client, src) = (&client, &src);
                async move {
                    tokio::select! {
                        r = http::download(client, src, &dir) => r.map_err(|e| Self::source_err(v, e)),
                        _ = cancel.cancelled() => Err(WorkerError::Cancelled),
                    }
                }
            })
            .await?;
        // The same content under the same name and time is the same
        // source, whatever URL state led to it.
        let content = key_of(
            "content",
            &format!(
                "{} {} {}",
                fetched.digest,
                fetched.filename,
                fetched.last_modified.as_deref().unwrap_or("")
            ),
        );
        if src.checksum.is_empty() {
            if let Some(etag) = fetched
                .etag
                .as_deref()
                .filter(|e| Some(*e) != etag.as_deref())
            {
                keys.push(key_of("etag", etag));
            }
        }
        keys.push(content);
        let layers = self.record(v, &keys, layers).await?;
        Ok(vec![Ref::Chain(layers)])
    }
}
