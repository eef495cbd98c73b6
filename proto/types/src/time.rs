//! RFC 3339 timestamps, as containerd's lease expiry and OCI `created`
//! fields expect them (UTC, `Z` suffix): the one formatter kiln has (the
//! snapshot layer's leases, cache records, and the Dockerfile frontend's
//! `SOURCE_DATE_EPOCH` history dates).

use std::time::{SystemTime, UNIX_EPOCH};

/// Formats `t` as RFC 3339 UTC; with `nanos`, with nine fractional digits
/// as Go's `time.RFC3339Nano` writes image `created` fields.
pub fn rfc3339(t: SystemTime, nanos: bool) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let hms = format!("{:02}:{:02}:{:02}", rem / 3600, (rem / 60) % 60, rem % 60);
    if nanos {
        format!("{y:04}-{m:02}-{day:02}T{hms}.{:09}Z", d.subsec_nanos())
    } else {
        format!("{y:04}-{m:02}-{day:02}T{hms}Z")
    }
}

/// [`rfc3339`] of whole seconds since the epoch (`SOURCE_DATE_EPOCH`);
/// times before 1970 read as the epoch.
pub fn rfc3339_secs(secs: i64) -> String {
    let t = UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    rfc3339(t, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH, false), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::new(1_795_000_000, 5);
        assert_eq!(rfc3339(t, false), "2026-11-18T11:06:40Z");
        assert_eq!(rfc3339(t, true), "2026-11-18T11:06:40.000000005Z");
    }
}
