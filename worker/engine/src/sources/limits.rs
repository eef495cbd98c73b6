//! Bounds on one remote fetch (an HTTP(S) download, a git source): how
//! many bytes it may bring onto the node, how long it may go without
//! receiving anything, and how long it may take in all. kilnd is shared by
//! tenants, and a fetch without bounds lets one of them fill the disk
//! under containerd or hold a build (and its lease) forever.
//!
//! BuildKit has no size bound and no timeout of its own for either source
//! (Go's default transport only bounds connecting and the TLS handshake);
//! it stops a fetch when the build's context is cancelled, which kiln does
//! too. The limits here come on top: kilnd reads them from its `[fetch]`
//! section, embedded `kiln build` from `KILN_FETCH_*` variables
//! ([`FetchLimits::from_env`]).

use super::SourceFailure;
use std::time::Duration;

/// The bounds of each remote fetch; a zero value means no bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FetchLimits {
    /// Most bytes one fetch may write: an HTTP body, a git source's
    /// repository and checkout together (`max-size`).
    pub max_size: u64,
    /// Longest wait for anything from the server: connecting, the answer's
    /// headers, the next piece of the body (`idle-timeout`). For git, over
    /// every transport: a command that talks to the remote printing
    /// nothing (progress included) and writing nothing for that long.
    pub idle_timeout: Duration,
    /// Longest one fetch may take in all (`timeout`): an HTTP download, or
    /// a git source's `ls-remote` and its checkout, each.
    pub timeout: Duration,
}

impl Default for FetchLimits {
    /// 4 GiB, a minute without a byte, an hour in all: far beyond what a
    /// build context or an `ADD` needs, well short of filling a node.
    fn default() -> Self {
        FetchLimits {
            max_size: 4 << 30,
            idle_timeout: Duration::from_secs(60),
            timeout: Duration::from_secs(3600),
        }
    }
}

/// The variables embedded `kiln build` reads its limits from.
pub const ENV_MAX_SIZE: &str = "KILN_FETCH_MAX_SIZE";
pub const ENV_IDLE_TIMEOUT: &str = "KILN_FETCH_IDLE_TIMEOUT";
pub const ENV_TIMEOUT: &str = "KILN_FETCH_TIMEOUT";

/// A limit's value is not a size or a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value {value:?} for {key} (expected {expected})")]
pub struct LimitError {
    pub key: &'static str,
    pub value: String,
    pub expected: &'static str,
}

impl FetchLimits {
    /// The defaults with what `env` sets of [`ENV_MAX_SIZE`] (bytes or
    /// e.g. `512MB`), [`ENV_IDLE_TIMEOUT`] and [`ENV_TIMEOUT`] (seconds or
    /// e.g. `30s`, `1h`).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<FetchLimits, LimitError> {
        let mut l = FetchLimits::default();
        if let Some(v) = env(ENV_MAX_SIZE) {
            l.max_size = parse_size(ENV_MAX_SIZE, &v)?;
        }
        if let Some(v) = env(ENV_IDLE_TIMEOUT) {
            l.idle_timeout = parse_duration(ENV_IDLE_TIMEOUT, &v)?;
        }
        if let Some(v) = env(ENV_TIMEOUT) {
            l.timeout = parse_duration(ENV_TIMEOUT, &v)?;
        }
        Ok(l)
    }

    /// The idle timeout, `None` for no bound.
    pub fn idle(&self) -> Option<Duration> {
        (!self.idle_timeout.is_zero()).then_some(self.idle_timeout)
    }

    /// When a fetch starting now must be done by, `None` for no bound.
    pub fn deadline(&self) -> Option<tokio::time::Instant> {
        (!self.timeout.is_zero()).then(|| tokio::time::Instant::now() + self.timeout)
    }

    /// Whether `bytes` is over the size bound.
    pub fn too_large(&self, bytes: u64) -> bool {
        self.max_size != 0 && bytes > self.max_size
    }

    /// The failure of a fetch of `url` that went over the size bound.
    pub fn size_failure(&self, url: &str) -> SourceFailure {
        SourceFailure(format!(
            "fetching {url} exceeds the size limit of {} (max-size of kilnd's [fetch], {ENV_MAX_SIZE} of kiln build)",
            show_size(self.max_size)
        ))
    }

    /// The failure of a fetch of `url` that took longer than the timeout.
    pub fn timeout_failure(&self, url: &str) -> SourceFailure {
        SourceFailure(format!(
            "fetching {url} did not finish within the timeout of {} (timeout of kilnd's [fetch], {ENV_TIMEOUT} of kiln build)",
            humantime::format_duration(self.timeout)
        ))
    }

    /// The failure of a fetch of `url` that received nothing for the idle
    /// timeout.
    pub fn idle_failure(&self, url: &str) -> SourceFailure {
        SourceFailure(format!(
            "fetching {url} received nothing for {} (idle-timeout of kilnd's [fetch], {ENV_IDLE_TIMEOUT} of kiln build)",
            humantime::format_duration(self.idle_timeout)
        ))
    }
}

/// The limits of the builds yet to start, shared by the engines of one
/// kilnd and changed when it reads its configuration again (SIGHUP). A
/// build reads them once, when it starts, and keeps them to its end.
#[derive(Clone, Debug, Default)]
pub struct SharedLimits(std::sync::Arc<std::sync::RwLock<FetchLimits>>);

impl SharedLimits {
    /// What a build starting now gets.
    pub fn current(&self) -> FetchLimits {
        *self
            .0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sets the limits of the builds that start from now on.
    pub fn set(&self, limits: FetchLimits) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = limits;
    }
}

impl From<FetchLimits> for SharedLimits {
    /// Limits of their own, shared with nothing yet.
    fn from(limits: FetchLimits) -> Self {
        SharedLimits(std::sync::Arc::new(std::sync::RwLock::new(limits)))
    }
}

/// A byte count as people read it: `1048576 bytes (1.0 MiB)`.
fn show_size(bytes: u64) -> String {
    format!(
        "{bytes} bytes ({})",
        bytesize::ByteSize::b(bytes).display().iec()
    )
}

fn parse_size(key: &'static str, v: &str) -> Result<u64, LimitError> {
    crate::prune::parse_size(v).ok_or_else(|| LimitError {
        key,
        value: v.to_string(),
        expected: "bytes or e.g. 512MB, 4GB; 0 for no limit",
    })
}

fn parse_duration(key: &'static str, v: &str) -> Result<Duration, LimitError> {
    let t = v.trim();
    t.parse::<u64>()
        .map(Duration::from_secs)
        .ok()
        .or_else(|| crate::prune::parse_duration(t))
        .ok_or_else(|| LimitError {
            key,
            value: v.to_string(),
            expected: "seconds or e.g. 30s, 1h; 0 for no limit",
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_come_from_the_environment_over_the_defaults() {
        let env = |k: &str| match k {
            ENV_MAX_SIZE => Some("1MB".to_string()),
            ENV_TIMEOUT => Some("90".to_string()),
            _ => None,
        };
        let l = FetchLimits::from_env(env).expect("valid");
        assert_eq!(l.timeout, Duration::from_secs(90));
        assert_eq!(l.idle_timeout, FetchLimits::default().idle_timeout);
        assert!(l.too_large(l.max_size + 1));
        assert!(!l.too_large(l.max_size));
        let bad = FetchLimits::from_env(|k| (k == ENV_IDLE_TIMEOUT).then(|| "soon".to_string()));
        assert_eq!(
            bad.expect_err("invalid").to_string(),
            "invalid value \"soon\" for KILN_FETCH_IDLE_TIMEOUT (expected seconds or e.g. 30s, 1h; 0 for no limit)"
        );
        let none = FetchLimits {
            max_size: 0,
            idle_timeout: Duration::ZERO,
            timeout: Duration::ZERO,
        };
        assert!(!none.too_large(u64::MAX));
        assert_eq!((none.idle(), none.deadline()), (None, None));
    }

    #[test]
    fn shared_limits_change_for_every_holder() {
        let shared = SharedLimits::from(FetchLimits::default());
        let other = shared.clone();
        let small = FetchLimits {
            max_size: 1,
            ..FetchLimits::default()
        };
        other.set(small);
        assert_eq!(shared.current(), small);
        let taken = shared.current();
        shared.set(FetchLimits::default());
        assert_eq!(taken, small, "a copy taken before keeps its limits");
    }

    #[test]
    fn failures_name_the_url_and_the_limit() {
        let l = FetchLimits {
            max_size: 1024,
            idle_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
        };
        assert_eq!(
            l.size_failure("http://h/big").0,
            "fetching http://h/big exceeds the size limit of 1024 bytes (1.0 KiB) \
             (max-size of kilnd's [fetch], KILN_FETCH_MAX_SIZE of kiln build)"
        );
        assert_eq!(
            l.timeout_failure("git://h/r").0,
            "fetching git://h/r did not finish within the timeout of 5s \
             (timeout of kilnd's [fetch], KILN_FETCH_TIMEOUT of kiln build)"
        );
        assert_eq!(
            l.idle_failure("http://h/slow").0,
            "fetching http://h/slow received nothing for 2s \
             (idle-timeout of kilnd's [fetch], KILN_FETCH_IDLE_TIMEOUT of kiln build)"
        );
    }
}
