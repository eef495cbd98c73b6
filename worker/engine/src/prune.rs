//! Disk usage and pruning of cache records: LRU order, kiln's leases only,
//! then a synchronous containerd GC so the space really comes back. Images
//! keep what they reference through their own GC labels, so pruning never
//! touches what a user tagged.

use crate::cache::{self, RecordInfo};
use crate::error::Result;
use crate::services::Services;
use kiln_snapshot::containerd::LeaseId;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What to keep and what to remove.
#[derive(Clone, Debug, Default)]
pub struct PruneOptions {
    /// Also remove records kept by the defaults (none today besides the
    /// keep options; kept for `buildctl prune --all` parity).
    pub all: bool,
    /// Keep the most recently used records up to this many bytes.
    pub keep_storage: Option<u64>,
    /// Keep records used within this long.
    pub keep_duration: Option<Duration>,
    /// Only records of these types (`regular`, `exec.cachemount`).
    pub types: Vec<String>,
}

/// What a prune removed.
#[derive(Clone, Debug, Default)]
pub struct PruneReport {
    pub removed: Vec<RecordInfo>,
    pub reclaimed: u64,
}

/// Every cache record, most recently used first.
pub async fn disk_usage(svc: &Services) -> Result<Vec<RecordInfo>> {
    let mut records = cache::list(svc).await?;
    records.sort_by_key(|r| std::cmp::Reverse(r.last_used));
    Ok(records)
}

/// Picks the records to remove, oldest use first (pure, for tests).
pub fn select(records: &[RecordInfo], opts: &PruneOptions, now: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..records.len())
        .filter(|&i| opts.types.is_empty() || opts.types.contains(&records[i].record_type))
        .collect();
    order.sort_by_key(|&i| records[i].last_used);
    let mut total: u64 = order.iter().map(|&i| records[i].size).sum();
    let mut out = Vec::new();
    for i in order {
        let r = &records[i];
        if let Some(keep) = opts.keep_duration {
            if now.saturating_sub(r.last_used) < keep.as_secs() {
                continue;
            }
        }
        if let Some(limit) = opts.keep_storage {
            if total <= limit {
                break;
            }
        }
        total = total.saturating_sub(r.size);
        out.push(i);
    }
    out
}

/// Removes records as `opts` says, then runs containerd's GC.
pub async fn prune(svc: &Services, opts: &PruneOptions) -> Result<PruneReport> {
    let records = cache::list(svc).await?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut report = PruneReport::default();
    for i in select(&records, opts, now) {
        let r = &records[i];
        let Some(id) = LeaseId::from_kiln(&r.lease.id) else {
            continue;
        };
        svc.leases.delete(&id, false).await?;
        report.reclaimed += r.size;
        report.removed.push(r.clone());
    }
    svc.leases.gc().await?;
    Ok(report)
}

/// Parses sizes like `512MB`, `1.5g`, `1024` (bytes; binary multiples).
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult: f64 = match unit.trim_end_matches('b').trim_end_matches('i') {
        "" => 1.0,
        "k" => 1024.0,
        "m" => 1024.0 * 1024.0,
        "g" => 1024.0 * 1024.0 * 1024.0,
        "t" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some((n * mult) as u64)
}

/// Parses durations like `48h`, `30m`, `10s`, `7d`, `1h30m`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = 0u64;
    let mut num = String::new();
    let t = s.trim();
    if t.is_empty() {
        return None;
    }
    for c in t.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        total += n * match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return None,
        };
    }
    if !num.is_empty() {
        return None;
    }
    Some(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_snapshot::containerd::LeaseInfo;
    use std::collections::HashMap;

    fn rec(id: &str, size: u64, last_used: u64, t: &str) -> RecordInfo {
        RecordInfo {
            lease: LeaseInfo {
                id: id.into(),
                labels: HashMap::new(),
                created_secs: 0,
            },
            record_type: t.into(),
            size,
            description: String::new(),
            last_used,
        }
    }

    #[test]
    fn select_removes_least_recently_used_first() {
        let rs = vec![
            rec("new", 10, 300, "regular"),
            rec("old", 10, 100, "regular"),
            rec("mid", 10, 200, "exec.cachemount"),
        ];
        let all = select(&rs, &PruneOptions::default(), 1000);
        assert_eq!(all, vec![1, 2, 0]);
        let keep = select(
            &rs,
            &PruneOptions {
                keep_storage: Some(15),
                ..Default::default()
            },
            1000,
        );
        assert_eq!(keep, vec![1, 2], "keeps the newest within 15 bytes");
        let recent = select(
            &rs,
            &PruneOptions {
                keep_duration: Some(Duration::from_secs(750)),
                ..Default::default()
            },
            1000,
        );
        assert_eq!(recent, vec![1, 2], "keeps what was used in the last 750 s");
        let recent = select(
            &rs,
            &PruneOptions {
                keep_duration: Some(Duration::from_secs(850)),
                ..Default::default()
            },
            1000,
        );
        assert_eq!(recent, vec![1], "keeps what was used in the last 850 s");
        let typed = select(
            &rs,
            &PruneOptions {
                types: vec!["exec.cachemount".into()],
                ..Default::default()
            },
            1000,
        );
        assert_eq!(typed, vec![2]);
    }

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("512MB"), Some(512 << 20));
        assert_eq!(parse_size("1g"), Some(1 << 30));
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_duration("48h"), Some(Duration::from_secs(48 * 3600)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("10"), None);
    }
}
