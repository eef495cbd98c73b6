//! `ADD <url>`: one HTTP(S) file written into a directory, as BuildKit's
//! http source writes it: mode 0600 unless the op says otherwise, the
//! owner the op names, the mtime from `Last-Modified` (else the epoch),
//! its sha256 computed while it streams and checked against `--checksum`.
//! The download is bounded by the [`FetchLimits`]: a body over the size
//! bound (by its `Content-Length` or as it streams), a server silent for
//! the idle timeout, or a download longer than the timeout fails it.
//! An upload URL of the client's session (`http://buildkit-session/<id>`)
//! is read from the session instead, under the same limits.

use super::limits::FetchLimits;
use super::SourceFailure;
use crate::uploads::{UploadReader, UploadSource};
use kiln_solver::source::HttpSource;
use sha2::{Digest as _, Sha256};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};
use tokio::io::AsyncReadExt as _;

/// What a download gave.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fetched {
    /// `sha256:<hex>` of the content.
    pub digest: String,
    /// The file's name in the directory.
    pub filename: String,
    /// `Last-Modified`, as sent (it is part of the cache key).
    pub last_modified: Option<String>,
    pub etag: Option<String>,
}

/// An `ETag` without its weak prefix, as BuildKit compares them.
pub fn etag_value(v: &str) -> String {
    v.trim().trim_start_matches("W/").to_string()
}

/// The host of a URL (`host[:port]`), for the per-host HTTP client.
pub fn host_of(url: &str) -> &str {
    let after = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    let authority = after.split(['/', '?', '#']).next().unwrap_or(after);
    authority.rsplit('@').next().unwrap_or(authority)
}

/// Asks for the resource's `ETag` with a HEAD request; `None` when the
/// server sends none, refuses HEAD or answers nothing within the idle
/// timeout (the caller then downloads, under all the limits).
pub async fn head_etag(
    client: &reqwest::Client,
    url: &str,
    limits: &FetchLimits,
) -> Option<String> {
    let head = client.head(url).send();
    let resp = match limits.idle() {
        Some(idle) => tokio::time::timeout(idle, head).await.ok()?.ok()?,
        None => head.await.ok()?,
    };
    if !resp.status().is_success() {
        return None;
    }
    resp.headers()
        .get(reqwest::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(etag_value)
        .filter(|e| !e.is_empty())
}

/// The file name from a `Content-Disposition` header, BuildKit's rule:
/// its `filename` parameter's last path element.
fn disposition_name(v: &str) -> Option<String> {
    v.split(';').skip(1).find_map(|p| {
        let (k, val) = p.trim().split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("filename") {
            return None;
        }
        let val = val.trim().trim_matches('"');
        if val.is_empty() || val.ends_with('/') {
            return None;
        }
        let base = val.rsplit(['/', '\\']).next()?;
        safe_name(base)
    })
}

/// A name usable as one path element, else `None`.
fn safe_name(n: &str) -> Option<String> {
    (!n.is_empty() && n != "." && n != ".." && !n.contains('/') && !n.contains('\0'))
        .then(|| n.to_string())
}

/// Where a download's bytes come from: the network, or the client's
/// session for an upload URL ([`crate::uploads::is_session_url`]).
#[derive(Clone, Copy, Debug)]
pub enum Origin<'a> {
    Http(&'a reqwest::Client),
    Upload(&'a dyn UploadSource),
}

/// A body being read, chunk by chunk.
enum Body {
    Http(reqwest::Response),
    Upload(UploadReader),
}

impl Body {
    async fn chunk(&mut self, url: &str) -> Result<Option<bytes::Bytes>, SourceFailure> {
        match self {
            Body::Http(resp) => resp
                .chunk()
                .await
                .map_err(|e| SourceFailure(format!("failed to fetch {url}: {}", chain(&e)))),
            Body::Upload(reader) => {
                // Read into spare capacity: no zeroing of a buffer per chunk.
                let mut buf = bytes::BytesMut::with_capacity(256 * 1024);
                let n = reader
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| SourceFailure(format!("failed to read {url}: {e}")))?;
                Ok((n > 0).then(|| buf.freeze()))
            }
        }
    }
}

/// Downloads `src` into `dir` (a fresh, empty directory), checking
/// `src.checksum`, within `limits`. Blocking file writes run on the
/// blocking pool. On failure the partial file stays in `dir`: the caller
/// discards the directory (the op's snapshot).
pub async fn download(
    origin: Origin<'_>,
    src: &HttpSource,
    dir: &Path,
    limits: &FetchLimits,
) -> Result<Fetched, SourceFailure> {
    let whole = download_unbounded(origin, src, dir, limits);
    match limits.deadline() {
        Some(at) => tokio::time::timeout_at(at, whole)
            .await
            .map_err(|_| limits.timeout_failure(&src.url))?,
        None => whole.await,
    }
}

/// Waits for `step` at most the idle timeout.
async fn idle_bounded<T>(
    limits: &FetchLimits,
    url: &str,
    step: impl std::future::Future<Output = T>,
) -> Result<T, SourceFailure> {
    match limits.idle() {
        Some(idle) => tokio::time::timeout(idle, step)
            .await
            .map_err(|_| limits.idle_failure(url)),
        None => Ok(step.await),
    }
}

async fn download_unbounded(
    origin: Origin<'_>,
    src: &HttpSource,
    dir: &Path,
    limits: &FetchLimits,
) -> Result<Fetched, SourceFailure> {
    let (mut body, headers) = match origin {
        Origin::Http(client) => {
            let resp = idle_bounded(limits, &src.url, client.get(&src.url).send())
                .await?
                .map_err(|e| {
                    SourceFailure(format!("failed to fetch {}: {}", src.url, chain(&e)))
                })?;
            if !resp.status().is_success() {
                return Err(SourceFailure(format!(
                    "invalid response status {}",
                    resp.status().as_u16()
                )));
            }
            // A body announced over the bound is refused before a byte
            // is written.
            if resp.content_length().is_some_and(|n| limits.too_large(n)) {
                return Err(limits.size_failure(&src.url));
            }
            let headers = resp.headers().clone();
            (Body::Http(resp), headers)
        }
        // An upload has no headers: no name, no time, no ETag.
        Origin::Upload(uploads) => {
            let reader = idle_bounded(limits, &src.url, uploads.open(&src.url))
                .await?
                .map_err(|e| SourceFailure(e.to_string()))?;
            (Body::Upload(reader), reqwest::header::HeaderMap::new())
        }
    };
    let header = |name: reqwest::header::HeaderName| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let filename = safe_name(&src.filename)
        .or_else(|| header(reqwest::header::CONTENT_DISPOSITION).and_then(|v| disposition_name(&v)))
        .or_else(|| safe_name(&kiln_solver::source::url_file_name(&src.url)))
        .unwrap_or_else(|| "__unnamed__".to_string());
    let path = dir.join(&filename);
    let perm = if src.perm == 0 { 0o600 } else { src.perm };
    let mut file = open_new(&path, perm)?;
    let mut hasher = Sha256::new();
    let mut written: u64 = 0;
    loop {
        let chunk = idle_bounded(limits, &src.url, body.chunk(&src.url)).await??;
        let Some(chunk) = chunk else { break };
        written = written.saturating_add(chunk.len() as u64);
        if limits.too_large(written) {
            return Err(limits.size_failure(&src.url));
        }
        hasher.update(&chunk);
        file = tokio::task::spawn_blocking(move || file.write_all(&chunk).map(|()| file))
            .await
            .map_err(|e| SourceFailure(e.to_string()))?
            .map_err(|e| io_failure(&path, e))?;
    }
    let digest = format!("sha256:{}", hex::encode(hasher.finalize()));
    if !src.checksum.is_empty() && src.checksum != digest {
        return Err(SourceFailure(format!(
            "digest mismatch for {}: {digest} (expected: {})",
            src.url, src.checksum
        )));
    }
    let last_modified = header(reqwest::header::LAST_MODIFIED);
    let mtime = last_modified
        .as_deref()
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .unwrap_or(UNIX_EPOCH);
    file.set_times(
        std::fs::FileTimes::new()
            .set_modified(mtime)
            .set_accessed(mtime),
    )
    .map_err(|e| io_failure(&path, e))?;
    drop(file);
    if src.uid != 0 || src.gid != 0 {
        std::os::unix::fs::lchown(&path, Some(src.uid), Some(src.gid))
            .map_err(|e| io_failure(&path, e))?;
    }
    Ok(Fetched {
        digest,
        filename,
        last_modified,
        etag: header(reqwest::header::ETAG).map(|e| etag_value(&e)),
    })
}

fn open_new(path: &Path, perm: u32) -> Result<std::fs::File, SourceFailure> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(perm)
        .open(path)
        .map_err(|e| io_failure(path, e))?;
    // The umask must not narrow the mode the op asks for.
    f.set_permissions(std::fs::Permissions::from_mode(perm))
        .map_err(|e| io_failure(path, e))?;
    Ok(f)
}

fn io_failure(path: &Path, e: std::io::Error) -> SourceFailure {
    SourceFailure(format!("{}: {e}", path.display()))
}

fn chain(e: &reqwest::Error) -> String {
    crate::error::error_chain(e)
}

/// Seconds since the epoch of an HTTP date, for tests and keys.
pub fn http_date_secs(v: &str) -> Option<u64> {
    httpdate::parse_http_date(v)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d: Duration| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_hosts() {
        assert_eq!(
            disposition_name("attachment; filename=\"../x/y.tgz\""),
            Some("y.tgz".into())
        );
        assert_eq!(disposition_name("attachment; filename=\"dir/\""), None);
        assert_eq!(
            host_of("https://u:p@h.example:8443/a?b#c"),
            "h.example:8443"
        );
        assert_eq!(etag_value("W/\"abc\""), "\"abc\"");
        assert_eq!(http_date_secs("Thu, 01 Jan 1970 00:00:10 GMT"), Some(10));
    }
}
