//! `ADD <git ref>` and git sources: the real `git` binary, as BuildKit
//! uses it. [`resolve`] turns the reference into a commit (`git
//! ls-remote`, nothing at all for a full commit id), which is the cache
//! key: a checkout of a commit already in containerd is reused without
//! touching the remote. [`checkout`] fetches that one commit (shallow)
//! into a git directory of its own and checks it out into a directory,
//! with submodules, `--keep-git-dir` and the subdir.
//!
//! Credentials: the caller reads the client's `GIT_AUTH_TOKEN` /
//! `GIT_AUTH_HEADER` secrets ([`auth_secret_names`]) into an
//! [`AuthHeader`], which every git command of the source gets as
//! `http.<remote>.extraheader` through git's environment configuration
//! (`GIT_CONFIG_COUNT`): never on a command line, in an error, a log or a
//! cache key. An ssh remote is reached as BuildKit reaches it: `ssh`
//! with no configuration file (`-F /dev/null`), the client's forwarded
//! agent as `SSH_AUTH_SOCK` and the source's known hosts, or no host key
//! check without them ([`ssh_command`]). Unlike BuildKit, the daemon's
//! own keys, agent and `~/.ssh/known_hosts` are never used or written.
//!
//! Limits: every command of a source runs in a process group of its own
//! under the source's [`Bounds`]: past the deadline, over the size bound
//! (the git directory and the checkout together, measured while the
//! command runs), idle for the idle timeout (a command that talks to the
//! remote, over any transport: nothing on its output, where fetches write
//! their own and the server's `--progress`, and no growth of the git
//! directory) or when the build is cancelled, the whole group (git, its
//! remote helper, `index-pack`, `ssh`) is killed and its status collected
//! before the failure is returned.

use super::limits::FetchLimits;
use super::SourceFailure;
use kiln_solver::source::{is_commit_id, GitSource};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::AsyncReadExt as _;
use tokio_util::sync::CancellationToken;

fn fail(m: impl Into<String>) -> SourceFailure {
    SourceFailure(m.into())
}

/// The `Authorization` header of a remote's HTTP requests, from the
/// client's secrets. Its `Debug` never shows the value.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthHeader {
    /// `http.<scope>.extraheader`: the remote (all of github.com for a
    /// github.com remote, as BuildKit and actions/checkout scope it).
    scope: String,
    value: String,
}

impl std::fmt::Debug for AuthHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthHeader")
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

impl AuthHeader {
    /// The header for `remote` from the secret `secret` (BuildKit's
    /// rule): a token becomes `basic base64("x-access-token:TOKEN")`, a
    /// header secret is the header's value as it is.
    pub fn new(remote: &str, secret: &[u8], token: bool) -> AuthHeader {
        use base64::Engine as _;
        let value = if token {
            let mut plain = b"x-access-token:".to_vec();
            plain.extend_from_slice(secret);
            format!(
                "basic {}",
                base64::engine::general_purpose::STANDARD.encode(plain)
            )
        } else {
            String::from_utf8_lossy(secret).trim_end().to_string()
        };
        let scope = ["https://github.com/", "https://www.github.com/"]
            .into_iter()
            .find(|p| remote.starts_with(p))
            .unwrap_or(remote)
            .to_string();
        AuthHeader { scope, value }
    }
}

/// How git reaches a remote: the `Authorization` header of an https
/// remote, the agent socket and known hosts file of an ssh one.
#[derive(Clone, Debug, Default)]
pub struct Access {
    pub header: Option<AuthHeader>,
    /// The socket of the client's agent (`SSH_AUTH_SOCK`); without it
    /// `ssh` has no key at all.
    pub agent_socket: Option<PathBuf>,
    /// A `known_hosts` file the server's key must be in; without it the
    /// key is not checked.
    pub known_hosts: Option<PathBuf>,
}

/// Quotes `s` for the shell git runs `GIT_SSH_COMMAND` with.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// `GIT_SSH_COMMAND`: BuildKit's `ssh -F /dev/null` with the known hosts
/// file and strict checking, or no check at all without one; never a
/// prompt, never one of the daemon's own key files, and never its
/// `~/.ssh/known_hosts` (read or written).
pub fn ssh_command(known_hosts: Option<&Path>) -> String {
    let mut cmd = "ssh -F /dev/null -o BatchMode=yes -o IdentityFile=none".to_string();
    match known_hosts {
        Some(file) => {
            cmd.push_str(" -o StrictHostKeyChecking=yes -o UserKnownHostsFile=");
            cmd.push_str(&shell_quote(&file.display().to_string()));
        }
        None => cmd.push_str(" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"),
    }
    cmd
}

/// The host (with port, without user) of a URL remote; empty for another
/// form.
pub fn remote_host(remote: &str) -> &str {
    let Some((_, rest)) = remote.split_once("://") else {
        return "";
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority.rsplit('@').next().unwrap_or_default()
}

/// The secrets that may hold a remote's credentials, in BuildKit's order
/// (host-scoped first, a header before a token), each with whether it is
/// a token.
pub fn auth_secret_names(src: &GitSource) -> Vec<(String, bool)> {
    let host = remote_host(&src.remote);
    let mut out = Vec::new();
    for scoped in [true, false] {
        for (name, token) in [
            (&src.auth_header_secret, false),
            (&src.auth_token_secret, true),
        ] {
            if name.is_empty() || (scoped && host.is_empty()) {
                continue;
            }
            let id = if scoped {
                format!("{name}.{host}")
            } else {
                name.clone()
            };
            out.push((id, token));
        }
    }
    out
}

/// What bounds the commands of one git fetch: its [`FetchLimits`], the
/// deadline they give, the directories whose size counts, and the build's
/// cancellation.
#[derive(Debug)]
pub struct Bounds<'a> {
    limits: FetchLimits,
    /// The remote, named in a limit's failure.
    url: &'a str,
    deadline: Option<tokio::time::Instant>,
    /// What the fetch writes: their size counts against `max_size`.
    dirs: Vec<PathBuf>,
    cancel: CancellationToken,
    /// Set once a command was stopped by a bound or the cancellation:
    /// every later step fails with that, never falls back.
    halted: std::sync::atomic::AtomicBool,
}

impl<'a> Bounds<'a> {
    /// Bounds starting now for a fetch from `url` that writes below `dirs`.
    pub fn new(
        limits: FetchLimits,
        url: &'a str,
        dirs: Vec<PathBuf>,
        cancel: CancellationToken,
    ) -> Bounds<'a> {
        Bounds {
            deadline: limits.deadline(),
            limits,
            url,
            dirs,
            cancel,
            halted: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The bytes the fetch wrote so far, measured only when something
    /// needs them: the size bound, or (`idle`) the idle bound, for which
    /// growth is activity. `None` when nothing is measured.
    async fn written(&self, idle: bool) -> Option<u64> {
        let wanted = self.limits.max_size != 0 || (idle && self.limits.idle().is_some());
        if !wanted || self.dirs.is_empty() {
            return None;
        }
        let dirs = self.dirs.clone();
        Some(
            tokio::task::spawn_blocking(move || disk_usage(&dirs))
                .await
                .unwrap_or(0),
        )
    }

    /// Whether a command was stopped by a bound or the cancellation.
    pub fn halted(&self) -> bool {
        self.halted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// `e` as it is when the fetch was halted (a limit's message stands
    /// alone), else what `wrap` makes of its message.
    fn unless_halted(
        &self,
        e: SourceFailure,
        wrap: impl FnOnce(String) -> SourceFailure,
    ) -> SourceFailure {
        if self.halted() {
            e
        } else {
            wrap(e.0)
        }
    }

    /// `Ok(true)` for a command that succeeded, `Ok(false)` for one that
    /// failed and may be retried another way, the failure of a halted one.
    fn tolerate<T>(&self, r: Result<T, SourceFailure>) -> Result<bool, SourceFailure> {
        match r {
            Ok(_) => Ok(true),
            Err(e) if self.halted() => Err(e),
            Err(_) => Ok(false),
        }
    }
}

/// How often a running fetch is measured (its size) and checked for
/// activity.
const POLL: Duration = Duration::from_millis(500);

/// How long a killed command's group gets to go away before kiln stops
/// waiting for its status (and logs that).
const KILL_WAIT: Duration = Duration::from_secs(10);

/// The bytes of the files below `dirs` (links and directories count
/// nothing; what cannot be read counts nothing).
fn disk_usage(dirs: &[PathBuf]) -> u64 {
    dirs.iter()
        .flat_map(|d| walkdir::WalkDir::new(d).into_iter().flatten())
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Reads `pipe` to its end, counting each piece read in `seen` (a
/// command's output is activity for the idle bound).
async fn read_all(
    pipe: Option<impl tokio::io::AsyncRead + Unpin>,
    seen: &std::sync::atomic::AtomicU64,
) -> Vec<u8> {
    let mut buf = Vec::new();
    if let Some(mut p) = pipe {
        let mut chunk = [0u8; 8192];
        // A read error ends the output; the status still says how it went.
        while let Ok(n @ 1..) = p.read(&mut chunk).await {
            buf.extend_from_slice(&chunk[..n]);
            seen.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
    buf
}

async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// When a command is idle: nothing on its stdout or stderr (where git
/// writes its and the server's `--progress`) and no growth of what the
/// fetch wrote, over one poll.
#[derive(Debug)]
struct Activity {
    pieces: u64,
    written: Option<u64>,
    since: tokio::time::Instant,
}

impl Activity {
    /// Notes what a poll saw; returns how long nothing happened.
    fn poll(&mut self, pieces: u64, written: Option<u64>) -> Duration {
        let now = tokio::time::Instant::now();
        if pieces != self.pieces || written != self.written {
            (self.pieces, self.written, self.since) = (pieces, written, now);
        }
        now - self.since
    }
}

/// Runs `cmd` in a process group of its own within `bounds`; `spawn_err`
/// says why it could not start. With `remote` (a command that talks to
/// the remote) the idle bound applies too: git's output and the growth of
/// the fetch's directories are its activity, whatever the transport
/// (`git://`, ssh, http(s), a local path). When a bound is crossed or the
/// build is cancelled the group is killed, its status collected, and the
/// failure returned (`cancelled` for a cancelled build: the caller
/// reports that).
async fn run_bounded(
    mut cmd: tokio::process::Command,
    bounds: &Bounds<'_>,
    remote: bool,
    spawn_err: impl FnOnce(std::io::Error) -> SourceFailure,
) -> Result<std::process::Output, SourceFailure> {
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(spawn_err)?;
    let group = child
        .id()
        .and_then(|p| i32::try_from(p).ok())
        .map(nix::unistd::Pid::from_raw);
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let pieces = std::sync::atomic::AtomicU64::new(0);
    let run = async {
        let (status, stdout, stderr) =
            tokio::join!(child.wait(), read_all(out, &pieces), read_all(err, &pieces));
        status.map(|status| std::process::Output {
            status,
            stdout,
            stderr,
        })
    };
    tokio::pin!(run);
    let idle = bounds.limits.idle().filter(|_| remote);
    let mut activity = Activity {
        pieces: 0,
        written: None,
        since: tokio::time::Instant::now(),
    };
    // What was there before the command was measured when the last one
    // ended; a walk that takes long delays the next rather than bunching.
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + POLL, POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop = loop {
        tokio::select! {
            r = &mut run => {
                let out = r.map_err(|e| fail(format!("waiting for {}: {e}", bounds.url)))?;
                // A command quicker than a poll is measured when it ends.
                if bounds.written(false).await.is_some_and(|n| bounds.limits.too_large(n)) {
                    bounds.halted.store(true, std::sync::atomic::Ordering::SeqCst);
                    return Err(bounds.limits.size_failure(bounds.url));
                }
                return Ok(out);
            }
            () = until(bounds.deadline) => break bounds.limits.timeout_failure(bounds.url),
            () = bounds.cancel.cancelled() => break fail("cancelled"),
            _ = tick.tick() => {
                let written = bounds.written(idle.is_some()).await;
                if written.is_some_and(|n| bounds.limits.too_large(n)) {
                    break bounds.limits.size_failure(bounds.url);
                }
                let quiet = activity.poll(pieces.load(std::sync::atomic::Ordering::Relaxed), written);
                if idle.is_some_and(|idle| quiet >= idle) {
                    break bounds.limits.idle_failure(bounds.url);
                }
            }
        }
    };
    bounds
        .halted
        .store(true, std::sync::atomic::Ordering::SeqCst);
    if let Some(pg) = group {
        if let Err(e) = nix::sys::signal::killpg(pg, nix::sys::signal::Signal::SIGKILL) {
            tracing::warn!(pgid = %pg, error = %e, "cannot kill a git fetch's process group");
        }
    }
    // The group's pipes close as it dies; its status is collected.
    if tokio::time::timeout(KILL_WAIT, &mut run).await.is_err() {
        tracing::warn!(
            url = bounds.url,
            "a killed git fetch did not exit within 10 s"
        );
    }
    tracing::debug!(url = bounds.url, reason = %stop, "git fetch stopped");
    Err(stop)
}

/// Whether `args` make git talk to the remote (the commands the idle
/// bound watches).
fn reaches_remote(args: &[&str]) -> bool {
    args.iter()
        .any(|a| matches!(*a, "ls-remote" | "fetch" | "submodule"))
}

/// git's standard error without its progress lines (what a terminal
/// would show last on each line, less the lines of `--progress`, git's
/// and the server's): what is left explains a failure.
fn without_progress(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let is_progress = |line: &str| {
        let l = line.strip_prefix("remote: ").unwrap_or(line).trim();
        if let Some(total) = l.strip_prefix("Total ") {
            return total.starts_with(|c: char| c.is_ascii_digit());
        }
        let Some((title, rest)) = l.split_once(": ") else {
            return false;
        };
        title.starts_with(|c: char| c.is_ascii_uppercase())
            && title.chars().all(|c| c.is_ascii_alphabetic() || c == ' ')
            && rest.trim_start().starts_with(|c: char| c.is_ascii_digit())
    };
    text.lines()
        .map(|l| l.rsplit('\r').next().unwrap_or(l))
        .filter(|l| !l.trim().is_empty() && !is_progress(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `git args…` with no terminal prompts and no user or system
/// config that could change what is fetched, and with the remote's
/// credentials when there are some, within `bounds`; returns stdout.
async fn git(
    dir: Option<&Path>,
    access: &Access,
    bounds: &Bounds<'_>,
    args: &[&str],
) -> Result<String, SourceFailure> {
    let mut cmd = tokio::process::Command::new("git");
    if let Some(d) = dir {
        cmd.current_dir(d);
    }
    cmd.env(
        "GIT_SSH_COMMAND",
        ssh_command(access.known_hosts.as_deref()),
    )
    .env_remove("GIT_SSH")
    .env_remove("GIT_SSH_VARIANT");
    match &access.agent_socket {
        Some(sock) => cmd.env("SSH_AUTH_SOCK", sock),
        // Never the agent of whoever started kiln.
        None => cmd.env_remove("SSH_AUTH_SOCK"),
    };
    let mut config = Vec::new();
    if let Some(a) = &access.header {
        config.push((
            format!("http.{}.extraheader", a.scope),
            format!("Authorization: {}", a.value),
        ));
    }
    if !config.is_empty() {
        cmd.env("GIT_CONFIG_COUNT", config.len().to_string());
    }
    for (i, (k, v)) in config.into_iter().enumerate() {
        cmd.env(format!("GIT_CONFIG_KEY_{i}"), k)
            .env(format!("GIT_CONFIG_VALUE_{i}"), v);
    }
    cmd.args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_ASKPASS", "/bin/false")
        .env("SSH_ASKPASS", "/bin/false")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE");
    let out = run_bounded(cmd, bounds, reaches_remote(args), |e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            fail("git source needs the git binary, which is not installed (Debian package git)")
        } else {
            fail(format!("git {}: {e}", args.first().copied().unwrap_or("")))
        }
    })
    .await?;
    if !out.status.success() {
        return Err(fail(format!(
            "git {}: {}",
            args.iter()
                .take_while(|a| !a.starts_with("--"))
                .copied()
                .collect::<Vec<_>>()
                .join(" "),
            without_progress(&out.stderr)
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A resolved reference: the commit and the remote ref it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub commit: String,
    /// `refs/heads/main`, `refs/tags/v1`, `HEAD`; empty for a commit id.
    pub remote_ref: String,
}

/// Picks the commit for `reference` out of `git ls-remote` output,
/// BuildKit's order: an exact `refs/…` name, a branch, then a tag (an
/// annotated tag's peeled commit).
pub fn pick(reference: &str, listing: &str) -> Option<Resolved> {
    let bare = reference.trim_start_matches("refs/");
    let partial = format!("refs/{bare}");
    let head = format!("refs/heads/{}", reference.trim_start_matches("refs/heads/"));
    let tag = format!("refs/tags/{}", reference.trim_start_matches("refs/tags/"));
    let peeled = format!("{tag}^{{}}");
    let (mut exact, mut branch, mut tagged, mut peeled_sha) = (None, None, None, None);
    for line in listing.lines() {
        let Some((sha, name)) = line.split_once('\t') else {
            continue;
        };
        if (reference == "HEAD" && name == "HEAD") || name == partial {
            exact = Some((sha, name));
        } else if name == head {
            branch = Some((sha, name));
        } else if name == tag {
            tagged = Some((sha, name));
        } else if name == peeled {
            peeled_sha = Some(sha);
        }
    }
    // A tag's commit is its peeled object when it is annotated.
    let (sha, name) = match exact.or(branch) {
        Some((sha, name)) if name == tag => (peeled_sha.unwrap_or(sha), name),
        Some(x) => x,
        None => {
            let (sha, name) = tagged?;
            (peeled_sha.unwrap_or(sha), name)
        }
    };
    Some(Resolved {
        commit: sha.to_string(),
        remote_ref: name.to_string(),
    })
}

/// The commit `src` names: its full commit id (or `--checksum` with
/// fetch-by-commit) without asking the remote, else `git ls-remote`.
/// `--checksum` must be a prefix of the commit.
pub async fn resolve(
    src: &GitSource,
    access: &Access,
    bounds: &Bounds<'_>,
) -> Result<Resolved, SourceFailure> {
    if !src.checksum.is_empty() && !src.checksum.bytes().all(|c| c.is_ascii_hexdigit()) {
        return Err(fail(format!(
            "invalid checksum {} for Git URL, expected hex commit hash",
            src.checksum
        )));
    }
    let check = |r: Resolved| -> Result<Resolved, SourceFailure> {
        if !src.checksum.is_empty() && !r.commit.starts_with(&src.checksum.to_ascii_lowercase()) {
            return Err(fail(format!(
                "expected checksum to match {}, got {}",
                src.checksum, r.commit
            )));
        }
        Ok(r)
    };
    if is_commit_id(&src.reference) {
        return check(Resolved {
            commit: src.reference.clone(),
            remote_ref: String::new(),
        });
    }
    if src.fetch_by_commit {
        return Ok(Resolved {
            commit: src.checksum.clone(),
            remote_ref: String::new(),
        });
    }
    let reference = if src.reference.is_empty() {
        "HEAD".to_string()
    } else {
        src.reference.clone()
    };
    let peeled = format!("{reference}^{{}}");
    let listing = git(
        None,
        access,
        bounds,
        &["ls-remote", "--", &src.remote, &reference, &peeled],
    )
    .await
    .map_err(|e| {
        bounds.unless_halted(e, |m| {
            fail(format!("failed to fetch remote {}: {m}", src.remote))
        })
    })?;
    let r = pick(&reference, &listing).ok_or_else(|| {
        fail(format!(
            "repository does not contain ref {reference}, output: {listing:?}"
        ))
    })?;
    if !is_commit_id(&r.commit) {
        return Err(fail(format!("invalid commit sha {:?}", r.commit)));
    }
    check(r)
}

/// Fetches `resolved` from `src.remote` into a git directory below
/// `scratch` and checks it out into `dest` (an empty directory): the
/// whole tree or `src.subdir`, submodules unless skipped, `.git` only
/// with `keep_git_dir`. `bounds` should count `scratch` and `dest`.
pub async fn checkout(
    src: &GitSource,
    access: &Access,
    bounds: &Bounds<'_>,
    resolved: &Resolved,
    scratch: &Path,
    dest: &Path,
) -> Result<(), SourceFailure> {
    let work = scratch.join("work");
    let p = |p: &Path| p.display().to_string();
    git(None, access, bounds, &["init", "-q", &p(&work)]).await?;
    let w = Some(work.as_path());
    git(w, access, bounds, &["remote", "add", "origin", &src.remote]).await?;
    // The ref by name when there is one (any server serves that), the
    // commit itself otherwise; a server that refuses an unadvertised
    // commit gets a full fetch. `--progress` (the server's counting and
    // compressing, git's receiving) is what shows a slow fetch alive to
    // the idle bound; failures are reported without it.
    let mut fetched = false;
    if !resolved.remote_ref.is_empty() {
        let spec = format!("+{}:refs/kiln/fetched", resolved.remote_ref);
        fetched = bounds.tolerate(
            git(
                w,
                access,
                bounds,
                &[
                    "fetch",
                    "-q",
                    "--progress",
                    "--depth=1",
                    "--no-tags",
                    "origin",
                    &spec,
                ],
            )
            .await,
        )?;
    }
    if !fetched {
        let spec = format!("+{}:refs/kiln/fetched", resolved.commit);
        let by_commit = git(
            w,
            access,
            bounds,
            &[
                "fetch",
                "-q",
                "--progress",
                "--depth=1",
                "--no-tags",
                "origin",
                &spec,
            ],
        )
        .await;
        if !bounds.tolerate(by_commit)? {
            git(
                w,
                access,
                bounds,
                &[
                    "fetch",
                    "-q",
                    "--progress",
                    "origin",
                    "+refs/heads/*:refs/remotes/origin/*",
                    "+refs/tags/*:refs/tags/*",
                ],
            )
            .await
            .map_err(|e| {
                bounds.unless_halted(e, |m| {
                    fail(format!("failed to fetch remote {}: {m}", src.remote))
                })
            })?;
        }
    }
    let commit_ref = format!("{}^{{commit}}", resolved.commit);
    let have = git(w, access, bounds, &["rev-parse", "--verify", "-q", &commit_ref])
        .await
        .map_err(|e| {
            bounds.unless_halted(e, |_| fail(format!(
                "fetched ref {} does not match expected commit {} and commit can not be found in the repository",
                resolved.remote_ref, resolved.commit
            )))
        })?;
    if have.trim() != resolved.commit {
        return Err(fail(format!(
            "expected commit {}, fetched {}",
            resolved.commit,
            have.trim()
        )));
    }
    // A branch keeps its name in a kept .git, as BuildKit's checkout does.
    match resolved.remote_ref.strip_prefix("refs/heads/") {
        Some(branch) if src.keep_git_dir => {
            git(
                w,
                access,
                bounds,
                &["checkout", "-q", "-B", branch, &resolved.commit],
            )
            .await?
        }
        _ => {
            git(
                w,
                access,
                bounds,
                &["checkout", "-q", "--detach", &resolved.commit],
            )
            .await?
        }
    };
    if !src.skip_submodules && work.join(".gitmodules").exists() {
        git(
            w,
            access,
            bounds,
            &[
                "-c",
                "protocol.file.allow=never",
                "submodule",
                "update",
                "--init",
                "--recursive",
                "--progress",
                "--depth=1",
            ],
        )
        .await
        .map_err(|e| {
            bounds.unless_halted(e, |m| {
                fail(format!(
                    "failed to update submodules for {}: {m}",
                    src.remote
                ))
            })
        })?;
    }
    git(
        w,
        access,
        bounds,
        &["update-ref", "-d", "refs/kiln/fetched"],
    )
    .await?;
    let commit_time = if src.mtime == "commit" {
        let t = git(
            w,
            access,
            bounds,
            &["log", "-1", "--format=%ct", &resolved.commit],
        )
        .await?;
        Some(
            t.trim()
                .parse::<i64>()
                .map_err(|_| fail(format!("commit time {:?} of {}", t.trim(), resolved.commit)))?,
        )
    } else {
        None
    };
    if !src.keep_git_dir {
        remove_git_links(&work)?;
    }
    let from = if src.subdir.is_empty() {
        work.clone()
    } else {
        let sub = work.join(&src.subdir);
        let md = std::fs::symlink_metadata(&sub).map_err(|_| {
            fail(format!(
                "git subpath {:?} does not exist in {}",
                src.subdir, src.remote
            ))
        })?;
        if !md.is_dir() {
            return Err(fail(format!(
                "git subpath {:?} contains non-directory {:?}",
                src.subdir, src.subdir
            )));
        }
        sub
    };
    // `cp -a` keeps modes, links and times; the .git directory comes
    // along only with keep_git_dir (it was removed otherwise).
    let mut cp = tokio::process::Command::new("cp");
    cp.arg("-a")
        .arg("--")
        .arg(format!("{}/.", from.display()))
        .arg(dest);
    let out = run_bounded(cp, bounds, false, |e| fail(format!("cp: {e}"))).await?;
    if !out.status.success() {
        return Err(fail(format!(
            "copying the checkout: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    if let Some(secs) = commit_time {
        set_all_mtimes(dest, secs)?;
    }
    Ok(())
}

/// `?mtime=commit`: `dest` and every entry below it (links themselves,
/// not their targets) take the commit's time, as BuildKit's
/// `resetSnapshotMtimes` (the root too: `COPY . /dir` copies its time).
/// Setting a child's times does not touch its directory's.
fn set_all_mtimes(dest: &Path, secs: i64) -> Result<(), SourceFailure> {
    use nix::sys::stat::{utimensat, UtimensatFlags};
    let ts = nix::sys::time::TimeSpec::new(secs, 0);
    for entry in walkdir::WalkDir::new(dest) {
        let entry = entry.map_err(|e| fail(format!("walking the checkout: {e}")))?;
        utimensat(
            nix::fcntl::AT_FDCWD,
            entry.path(),
            &ts,
            &ts,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| fail(format!("{}: {e}", entry.path().display())))?;
    }
    Ok(())
}

/// Removes `.git` (the directory at the top, the link files of
/// submodules) from a checkout.
fn remove_git_links(work: &Path) -> Result<(), SourceFailure> {
    let mut it = walkdir::WalkDir::new(work).into_iter();
    while let Some(entry) = it.next() {
        let entry = entry.map_err(|e| fail(format!("walking the checkout: {e}")))?;
        if entry.file_name() != ".git" || entry.depth() == 0 {
            continue;
        }
        let path = entry.path().to_path_buf();
        let r = if entry.file_type().is_dir() {
            it.skip_current_dir();
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        };
        r.map_err(|e| fail(format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "1111111111111111111111111111111111111111\trefs/heads/v1\n\
2222222222222222222222222222222222222222\trefs/tags/v1\n\
3333333333333333333333333333333333333333\trefs/tags/v1^{}\n\
4444444444444444444444444444444444444444\trefs/tags/only\n\
5555555555555555555555555555555555555555\trefs/tags/only^{}\n\
6666666666666666666666666666666666666666\tHEAD\n";

    #[test]
    fn credentials_come_from_buildkits_secrets_in_its_order() {
        let src = GitSource {
            remote: "https://user@git.example:8443/o/r.git".into(),
            auth_token_secret: "GIT_AUTH_TOKEN".into(),
            auth_header_secret: "GIT_AUTH_HEADER".into(),
            ..GitSource::default()
        };
        assert_eq!(remote_host(&src.remote), "git.example:8443");
        assert_eq!(
            auth_secret_names(&src),
            [
                ("GIT_AUTH_HEADER.git.example:8443".to_string(), false),
                ("GIT_AUTH_TOKEN.git.example:8443".to_string(), true),
                ("GIT_AUTH_HEADER".to_string(), false),
                ("GIT_AUTH_TOKEN".to_string(), true),
            ]
        );
        let a = AuthHeader::new(&src.remote, b"tok", true);
        // base64("x-access-token:tok")
        assert_eq!(a.value, "basic eC1hY2Nlc3MtdG9rZW46dG9r");
        assert_eq!(a.scope, src.remote);
        assert!(!format!("{a:?}").contains("eC1h"), "Debug shows no secret");
        let gh = AuthHeader::new("https://github.com/o/r.git", b"bearer x\n", false);
        assert_eq!(
            (gh.scope.as_str(), gh.value.as_str()),
            ("https://github.com/", "bearer x")
        );
    }

    #[test]
    fn ssh_checks_the_host_key_only_against_the_sources_known_hosts() {
        assert_eq!(
            ssh_command(None),
            "ssh -F /dev/null -o BatchMode=yes -o IdentityFile=none \
             -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
        );
        assert_eq!(
            ssh_command(Some(Path::new("/tmp/it's/known_hosts"))),
            "ssh -F /dev/null -o BatchMode=yes -o IdentityFile=none \
             -o StrictHostKeyChecking=yes -o UserKnownHostsFile='/tmp/it'\\''s/known_hosts'"
        );
    }

    #[test]
    fn failures_are_reported_without_gits_progress() {
        let stderr = b"remote: Enumerating objects: 5, done.        \n\
remote: Counting objects:  50% (1/2)        \rremote: Counting objects: 100% (2/2), done.        \n\
remote: Total 3 (delta 0), reused 0 (delta 0), pack-reused 0 (from 0)        \n\
Receiving objects:  33% (1/3)\rfatal: early EOF\n\
fatal: fetch-pack: invalid index-pack output\n";
        assert_eq!(
            without_progress(stderr),
            "fatal: early EOF\nfatal: fetch-pack: invalid index-pack output"
        );
        assert_eq!(
            without_progress(b"fatal: 1 is not a ref\nerror: Total: 2\n"),
            "fatal: 1 is not a ref\nerror: Total: 2"
        );
        assert!(reaches_remote(&["ls-remote", "--", "git://h/r"]));
        assert!(reaches_remote(&["-c", "x=y", "submodule", "update"]));
        assert!(!reaches_remote(&["checkout", "-q", "--detach", "abc"]));
    }

    #[test]
    fn output_or_growth_is_activity() {
        let long_ago = |secs| {
            tokio::time::Instant::now()
                .checked_sub(Duration::from_secs(secs))
                .expect("the clock is past that")
        };
        let mut a = Activity {
            pieces: 1,
            written: Some(10),
            since: long_ago(5),
        };
        assert!(a.poll(1, Some(10)) >= Duration::from_secs(5), "quiet");
        assert!(a.poll(2, Some(10)) < Duration::from_secs(1), "output");
        a.since = long_ago(5);
        assert!(a.poll(2, Some(11)) < Duration::from_secs(1), "growth");
        a.since = long_ago(5);
        assert!(a.poll(2, Some(11)) >= Duration::from_secs(5), "quiet again");
    }

    #[test]
    fn branches_win_then_peeled_tags() {
        let r = pick("v1", LISTING).expect("found");
        assert_eq!(r.commit, "1".repeat(40));
        assert_eq!(r.remote_ref, "refs/heads/v1");
        let r = pick("only", LISTING).expect("found");
        assert_eq!(r.commit, "5".repeat(40));
        let r = pick("refs/tags/v1", LISTING).expect("found");
        assert_eq!(r.commit, "3".repeat(40));
        assert_eq!(pick("HEAD", LISTING).expect("found").commit, "6".repeat(40));
        assert_eq!(pick("nope", LISTING), None);
    }
}
