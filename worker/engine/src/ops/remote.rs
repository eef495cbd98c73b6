//! Source ops of remote sources: an HTTP(S) file or a git checkout put
//! into a fresh snapshot on scratch, kept as a cache record whose key is
//! what was fetched. The source op itself runs in every build (as an
//! image source does), but only to learn that key: the commit (`git
//! ls-remote`, nothing for a commit id), the checksum the op names, or the
//! server's `ETag` (one HEAD request); a record under it means nothing is
//! downloaded. An upload of the client's session is read once, and kept
//! for that session only.

use super::{location, StepRunner};
use crate::error::{Result, WorkerError};
use crate::refs::{Layer, Ref};
use crate::sources::{git, http, SourceFailure};
use crate::ssh::AgentSocket;
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
        self.load_record(key).await
    }

    /// The one chain of the cache record `key`, if there is one.
    async fn load_record(&self, key: &Digest) -> Result<Option<Vec<Layer>>> {
        Ok(
            crate::cache::load(&self.svc, key, &self.lease, &self.added, &self.uses)
                .await?
                .and_then(|mut outs| (outs.len() == 1).then(|| outs.remove(0))),
        )
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
            // A source's layer is copied by a file op, never exported as it is.
            Ok(t) => Ok((t, self.commit(active, None).await?)),
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
        let access = self.git_access(v, &src).await?;
        // The bounded commands stop on cancellation themselves (their
        // process group killed and collected), so they are not raced.
        let failed = |e: SourceFailure| {
            if cancel.is_cancelled() {
                WorkerError::Cancelled
            } else {
                Self::source_err(v, e)
            }
        };
        let bounds = git::Bounds::new(self.fetch_limits, &src.remote, Vec::new(), cancel.clone());
        let resolved = git::resolve(&src, &access.access, &bounds)
            .await
            .map_err(failed)?;
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
                let access = &access.access;
                let limits = self.fetch_limits;
                async move {
                    let bounds = git::Bounds::new(
                        limits,
                        &src.remote,
                        vec![scratch.clone(), dir.clone()],
                        cancel.clone(),
                    );
                    git::checkout(src, access, &bounds, resolved, &scratch, &dir)
                        .await
                        .map_err(failed)
                }
            })
            .await;
        if let Err(e) = std::fs::remove_dir_all(&scratch) {
            tracing::warn!(dir = %scratch.display(), error = %e, "cannot remove a git scratch directory");
        }
        drop(access);
        let ((), layers) = r?;
        let layers = self.record(v, &[key], layers).await?;
        Ok(vec![Ref::Chain(layers)])
    }

    /// How git reaches `src`'s remote: the credentials from the client's
    /// secrets (the first of [`git::auth_secret_names`] the client has),
    /// and with `git.mountsshsock` the client's agent on a socket of this
    /// fetch (`no SSH key "ID" forwarded from the client` when it does not
    /// forward that agent) and the source's known hosts in a file.
    async fn git_access(&self, v: &Vertex, src: &GitSource) -> Result<GitAccess> {
        let mut access = GitAccess::default();
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
                access.access.header = Some(git::AuthHeader::new(&src.remote, &secret, token));
                break;
            }
        }
        if src.mount_ssh_sock.is_empty() && src.known_ssh_hosts.is_empty() {
            return Ok(access);
        }
        if !src.mount_ssh_sock.is_empty() {
            self.ssh
                .check(&src.mount_ssh_sock)
                .await
                .map_err(|source| WorkerError::Ssh {
                    location: location(v),
                    source,
                })?;
        }
        // Below the system's temporary directory, as BuildKit's: the
        // socket's path must stay short enough for `ssh` to connect.
        let dir = std::env::temp_dir().join(format!("kiln-git-ssh-{}", crate::base::rand_hex()));
        let io = |e: std::io::Error| WorkerError::Io {
            path: format!("{}{}", location(v), dir.display()),
            source: e,
        };
        std::fs::create_dir(&dir).map_err(io)?;
        access.dir = Some(dir.clone());
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(io)?;
        if !src.known_ssh_hosts.is_empty() {
            let file = dir.join("known_hosts");
            std::fs::write(&file, format!("{}\n", src.known_ssh_hosts.trim_end())).map_err(io)?;
            access.access.known_hosts = Some(file);
        }
        if !src.mount_ssh_sock.is_empty() {
            let socket = AgentSocket::listen(
                dir.join("agent"),
                self.ssh.clone(),
                &src.mount_ssh_sock,
                (
                    nix::unistd::getuid().as_raw(),
                    nix::unistd::getgid().as_raw(),
                    0o600,
                ),
            )
            .map_err(io)?;
            access.access.agent_socket = Some(socket.path().to_path_buf());
            access.socket = Some(socket);
        }
        Ok(access)
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
        if crate::uploads::is_session_url(&src.url) {
            // Only the session that served an upload reads it back.
            let scope = format!("{} {}", self.uploads.scope(), src.url);
            return self
                .upload_source(v, &src, key_of("upload", &scope), cancel)
                .await;
        }
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
                e = http::head_etag(&client, &src.url, &self.fetch_limits) => e,
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
                        r = http::download(http::Origin::Http(client), src, &dir, &self.fetch_limits) => r.map_err(|e| Self::source_err(v, e)),
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

impl StepRunner {
    /// An upload of the client's session (`http://buildkit-session/<id>`):
    /// the client serves it once, so it is read once and kept under its
    /// URL scoped to the session (`url_key`: the URL is no secret, it is
    /// in the build's history, but the scope is the daemon's own for that
    /// session), which every later use of the URL by the session reads
    /// (the frontend's fetches, then the build's source), even under
    /// `--no-cache`. Its content key makes equal uploads one record, so
    /// the steps on it hit the cache in later builds.
    async fn upload_source(
        &self,
        v: &Vertex,
        src: &HttpSource,
        url_key: Digest,
        cancel: &CancellationToken,
    ) -> Result<Vec<Ref>> {
        if let Some(chain) = self.load_record(&url_key).await? {
            return Ok(vec![Ref::Chain(chain)]);
        }
        let (fetched, layers) = self
            .new_layer("upload", |dir| async move {
                let origin = http::Origin::Upload(self.uploads.as_ref());
                tokio::select! {
                    r = http::download(origin, src, &dir, &self.fetch_limits) => r.map_err(|e| Self::source_err(v, e)),
                    _ = cancel.cancelled() => Err(WorkerError::Cancelled),
                }
            })
            .await?;
        let content = Digest::of(
            serde_json::json!({
                "source": "upload",
                "filename": fetched.filename,
                "perm": src.perm,
                "uid": src.uid,
                "gid": src.gid,
                "content": fetched.digest,
            })
            .to_string()
            .as_bytes(),
        );
        let layers = self.record(v, &[content], layers).await?;
        // Unlike a download's, this record cannot be fetched again if it
        // is lost: its failure fails the build.
        crate::cache::save(
            &self.svc,
            &url_key,
            std::slice::from_ref(&layers),
            crate::cache::TYPE_REGULAR,
            &v.name,
        )
        .await?;
        Ok(vec![Ref::Chain(layers)])
    }
}

/// A git fetch's [`git::Access`] and what backs it: the agent socket and
/// the private directory of it and the known hosts file, both removed on
/// drop.
#[derive(Debug, Default)]
struct GitAccess {
    access: git::Access,
    socket: Option<AgentSocket>,
    dir: Option<std::path::PathBuf>,
}

impl Drop for GitAccess {
    fn drop(&mut self) {
        drop(self.socket.take());
        if let Some(dir) = self.dir.take() {
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a git fetch's ssh directory");
            }
        }
    }
}
