//! Retrying a pod exec that failed for a passing reason, as buildx's
//! kubernetes driver does (`tryWithBackoff` in its `driver.go`, for the
//! window in which a node is Ready before its kubelet serving certificate
//! is approved and the API server cannot reach the kubelet): up to
//! [`ATTEMPTS`] tries, waiting 0.5 s, 1 s, 2 s, 4 s between them (doubling
//! from [`BASE_DELAY`], at most [`MAX_DELAY`]), only for the errors buildx
//! takes as transient; any other error fails at once.
//!
//! Which errors are transient: buildx's list is a timeout, a closed
//! connection, a refused or reset connection, and a message with `tls:
//! internal error`. The last one reaches buildx as the body of the API
//! server's answer to the exec (`error dialing backend: remote error: tls:
//! internal error`, status 500). kube-rs keeps only the status of an
//! upgrade the server refused, not its body, so kiln takes the statuses an
//! API server gives when it cannot reach or proxy to the kubelet (500,
//! 502, 503, 504) as transient; a 4xx (no such pod or container,
//! forbidden) is not.

use std::error::Error;
use std::time::Duration;

/// How many times an exec is tried.
pub const ATTEMPTS: u32 = 5;
/// The wait after the first failure; it doubles after each.
pub const BASE_DELAY: Duration = Duration::from_millis(500);
/// The longest wait between two tries.
pub const MAX_DELAY: Duration = Duration::from_secs(10);

/// The wait after failed attempt `attempt` (0-based).
pub fn backoff(attempt: u32) -> Duration {
    BASE_DELAY
        .checked_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
        .map_or(MAX_DELAY, |d| d.min(MAX_DELAY))
}

/// Whether `e` (or an error it wraps) is one buildx retries.
pub fn is_transient(e: &(dyn Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(e) = cur {
        if transient_here(e) {
            return true;
        }
        cur = e.source();
    }
    false
}

fn transient_here(e: &(dyn Error + 'static)) -> bool {
    if e.is::<tokio::time::error::Elapsed>() {
        return true;
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>() {
        use std::io::ErrorKind::*;
        if matches!(
            io.kind(),
            ConnectionRefused | ConnectionReset | TimedOut | NotConnected | BrokenPipe
        ) {
            return true;
        }
    }
    if let Some(kube::client::UpgradeConnectionError::ProtocolSwitch(status)) = e.downcast_ref() {
        return matches!(status.as_u16(), 500 | 502 | 503 | 504);
    }
    e.to_string().contains("tls: internal error")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_from_half_a_second_up_to_ten() {
        let waits: Vec<u64> = (0..ATTEMPTS + 2)
            .map(|a| backoff(a).as_millis() as u64)
            .collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 10000, 10000]);
        assert_eq!(backoff(40), MAX_DELAY);
    }

    /// An error whose cause is its field, as hyper's and kube-rs's are.
    #[derive(Debug)]
    struct Wrap(std::io::Error);

    impl std::fmt::Display for Wrap {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client error (Connect)")
        }
    }

    impl Error for Wrap {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn only_buildxs_transient_errors_are_retried() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert!(is_transient(&refused));
        let wrapped = Wrap(refused);
        assert!(is_transient(&wrapped), "a wrapped cause counts");
        let switch = |code: u16| {
            kube::Error::UpgradeConnection(kube::client::UpgradeConnectionError::ProtocolSwitch(
                http::StatusCode::from_u16(code).expect("status"),
            ))
        };
        assert!(is_transient(&switch(500)));
        assert!(is_transient(&switch(503)));
        assert!(!is_transient(&switch(404)), "no such pod");
        assert!(!is_transient(&switch(403)), "forbidden");
        let tls = std::io::Error::other("remote error: tls: internal error");
        assert!(is_transient(&tls));
        let other = std::io::Error::other("permission denied");
        assert!(!is_transient(&other));
    }
}
