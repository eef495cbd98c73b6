//! Clipping a step's output, as BuildKit does, so that a step printing
//! without end (`RUN yes`) costs neither the daemon's memory nor the
//! client's screen.
//!
//! Each stream of a step (stdout, stderr) may pass at most `max_size`
//! bytes in all, and at most `max_speed` bytes for every second (rounded
//! up) since the step started; what is over is dropped and replaced by one
//! visible line, `[output clipped, log limit 2MiB reached]` (or `200KiB/s`
//! when the rate was the tighter limit). Bytes that were dropped still
//! count, so a stream that keeps flooding stays clipped. The output is
//! still read to its end, so the step never blocks on a full pipe.
//!
//! The defaults are BuildKit's (2 MiB, 200 KiB/s), and so are the
//! variables that change them: `BUILDKIT_STEP_LOG_MAX_SIZE` and
//! `BUILDKIT_STEP_LOG_MAX_SPEED` in bytes, `-1` for no limit. They are
//! read from the environment of the process that runs the steps (kilnd,
//! or `kiln` in embedded mode).

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The variable for the per-stream size limit.
pub const MAX_SIZE_VAR: &str = "BUILDKIT_STEP_LOG_MAX_SIZE";
/// The variable for the per-stream rate limit.
pub const MAX_SPEED_VAR: &str = "BUILDKIT_STEP_LOG_MAX_SPEED";

/// A value of one of the variables that is not a number.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {var}={value:?}: expected a number of bytes, or -1 for no limit")]
pub struct InvalidLimit {
    pub var: &'static str,
    pub value: String,
}

/// How much of a step's output is kept (per stream). `None` is no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogLimits {
    pub max_size: Option<u64>,
    /// Bytes per second.
    pub max_speed: Option<u64>,
}

impl Default for LogLimits {
    fn default() -> Self {
        LogLimits {
            max_size: Some(2 << 20),
            max_speed: Some(200 << 10),
        }
    }
}

fn parse(
    var: &'static str,
    value: Option<String>,
    default: Option<u64>,
) -> Result<Option<u64>, InvalidLimit> {
    let Some(value) = value else {
        return Ok(default);
    };
    match value.trim().parse::<i64>() {
        Ok(-1) => Ok(None),
        Ok(n) if n >= 0 => Ok(Some(n as u64)),
        _ => Err(InvalidLimit { var, value }),
    }
}

impl LogLimits {
    /// The limits from two variable values (each `None` when unset).
    pub fn from_values(size: Option<String>, speed: Option<String>) -> Result<Self, InvalidLimit> {
        let d = LogLimits::default();
        Ok(LogLimits {
            max_size: parse(MAX_SIZE_VAR, size, d.max_size)?,
            max_speed: parse(MAX_SPEED_VAR, speed, d.max_speed)?,
        })
    }

    /// The limits of this process, read from its environment once.
    pub fn current() -> Result<Self, InvalidLimit> {
        static LIMITS: OnceLock<Result<LogLimits, InvalidLimit>> = OnceLock::new();
        LIMITS
            .get_or_init(|| {
                LogLimits::from_values(
                    std::env::var(MAX_SIZE_VAR).ok(),
                    std::env::var(MAX_SPEED_VAR).ok(),
                )
            })
            .clone()
    }
}

/// `2MiB`, `200KiB`, `1.5MiB`, `512B`: how the clip line names a limit.
fn human(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s}{}", UNITS[unit])
}

/// The clipping state of one output stream of one step.
#[derive(Debug)]
pub struct StreamClip {
    limits: LogLimits,
    started: Instant,
    /// Every byte the step wrote, kept or not.
    seen: u64,
    clipping: bool,
}

impl StreamClip {
    pub fn new(limits: LogLimits, started: Instant) -> Self {
        StreamClip {
            limits,
            started,
            seen: 0,
            clipping: false,
        }
    }

    /// What of `data`, written at `now`, is passed on (with the clip line
    /// when this chunk starts a clip); `None` when nothing is.
    pub fn pass(&mut self, data: &[u8], now: Instant) -> Option<Vec<u8>> {
        let before = self.seen;
        self.seen = self.seen.saturating_add(data.len() as u64);
        // The tighter of the two limits at this moment, and its name.
        let by_speed = self.limits.max_speed.map(|s| {
            let secs = now
                .saturating_duration_since(self.started)
                .max(Duration::from_secs(1))
                .as_secs_f64()
                .ceil() as u64;
            (secs.saturating_mul(s), format!("{}/s", human(s)))
        });
        let by_size = self.limits.max_size.map(|s| (s, human(s)));
        let limit = match (by_speed, by_size) {
            (Some(a), Some(b)) => Some(if a.0 < b.0 { a } else { b }),
            (a, b) => a.or(b),
        };
        let keep = match &limit {
            None => data.len(),
            Some((max, _)) => max.saturating_sub(before).min(data.len() as u64) as usize,
        };
        let mut out = data[..keep].to_vec();
        if keep == data.len() {
            self.clipping = false;
        } else if !self.clipping {
            self.clipping = true;
            let name = limit.map(|l| l.1).unwrap_or_default();
            out.extend_from_slice(
                format!("\n[output clipped, log limit {name} reached]\n").as_bytes(),
            );
        }
        (!out.is_empty()).then_some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_limits_as_buildkit_does() {
        assert_eq!(human(2 << 20), "2MiB");
        assert_eq!(human(200 << 10), "200KiB");
        assert_eq!(human(1536 << 10), "1.5MiB");
        assert_eq!(human(512), "512B");
    }

    #[test]
    fn clips_at_the_size_limit_once_and_keeps_counting() {
        let t0 = Instant::now();
        let limits = LogLimits {
            max_size: Some(10),
            max_speed: None,
        };
        let mut c = StreamClip::new(limits, t0);
        assert_eq!(c.pass(b"12345678", t0).as_deref(), Some(&b"12345678"[..]));
        assert_eq!(
            c.pass(b"abcd", t0).as_deref(),
            Some(&b"ab\n[output clipped, log limit 10B reached]\n"[..])
        );
        assert_eq!(c.pass(b"more", t0 + Duration::from_secs(60)), None);
    }

    #[test]
    fn the_rate_limit_grows_with_time_and_clips_again() {
        let t0 = Instant::now();
        let limits = LogLimits {
            max_size: Some(1000),
            max_speed: Some(4),
        };
        let mut c = StreamClip::new(limits, t0);
        let line = |s: &str| format!("\n[output clipped, log limit 4B/s reached]\n{s}");
        assert_eq!(
            c.pass(b"123456", t0),
            Some(format!("1234{}", line("")).into_bytes())
        );
        // Two seconds in: 8 bytes allowed, 6 seen; the next two pass and
        // the clip line is shown again for the rest.
        assert_eq!(
            c.pass(b"ab", t0 + Duration::from_millis(1500)),
            Some(b"ab".to_vec())
        );
        assert_eq!(
            c.pass(b"cd", t0 + Duration::from_millis(1600)),
            Some(line("").into_bytes())
        );
    }

    #[test]
    fn no_limit_passes_everything() {
        let t0 = Instant::now();
        let limits = LogLimits {
            max_size: None,
            max_speed: None,
        };
        let mut c = StreamClip::new(limits, t0);
        let big = vec![b'y'; 10 << 20];
        assert_eq!(c.pass(&big, t0).map(|v| v.len()), Some(10 << 20));
        assert_eq!(c.pass(b"", t0), None);
    }

    #[test]
    fn reads_buildkits_variables() {
        assert_eq!(LogLimits::from_values(None, None), Ok(LogLimits::default()));
        assert_eq!(
            LogLimits::from_values(Some("-1".into()), Some("1024".into())),
            Ok(LogLimits {
                max_size: None,
                max_speed: Some(1024)
            })
        );
        assert_eq!(
            LogLimits::from_values(Some("2M".into()), None)
                .expect_err("not a number")
                .to_string(),
            "invalid BUILDKIT_STEP_LOG_MAX_SIZE=\"2M\": expected a number of bytes, or -1 for no limit"
        );
    }
}
