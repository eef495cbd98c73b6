//! Disk usage and pruning of cache records: LRU order, kiln's leases only,
//! then a synchronous containerd GC so the space really comes back. Images
//! keep what they reference through their own GC labels, so pruning never
//! touches what a user tagged.

use crate::cache::{self, RecordInfo};
use crate::error::Result;
use crate::services::Services;
use kiln_snapshot::containerd::LeaseId;
use std::collections::HashSet;
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
    /// When set, only these records (by lease ID): what a client's
    /// filters on other fields selected (kilnd's `id`, `description`,
    /// `inuse`, ... of BuildKit's prune filters).
    pub ids: Option<HashSet<String>>,
}

/// What a prune removed.
#[derive(Clone, Debug, Default)]
pub struct PruneReport {
    pub removed: Vec<RecordInfo>,
    pub reclaimed: u64,
}

/// Every cache record, most recently used first, those that running
/// builds use (of any process, [`crate::inuse`]) and the records below
/// them in use: a held record holds its parents, as a BuildKit ref holds
/// its parent refs.
pub async fn disk_usage(svc: &Services) -> Result<Vec<RecordInfo>> {
    let mut records = records_in_use(svc).await?;
    crate::shared::mark_shared(&mut records, &crate::shared::image_chains(svc).await?);
    records.sort_by_key(|r| std::cmp::Reverse(r.last_used));
    Ok(records)
}

/// Every cache record, with `in_use` set.
async fn records_in_use(svc: &Services) -> Result<Vec<RecordInfo>> {
    let all = svc.leases.list().await?;
    let mut records = cache::list_of(svc, &all).await?;
    let snapshots = crate::inuse::held_snapshots(&*svc.leases, &all).await?;
    let held = crate::inuse::records_holding(&records, &snapshots);
    mark_in_use(&mut records, &held);
    Ok(records)
}

/// Sets `in_use` on the records `held` names and on their parents, to
/// the bottom of each chain.
pub fn mark_in_use(records: &mut [RecordInfo], held: &HashSet<String>) {
    let mut todo: Vec<String> = held.iter().cloned().collect();
    while let Some(id) = todo.pop() {
        if let Some(r) = records.iter_mut().find(|r| r.lease.id == id && !r.in_use) {
            r.in_use = true;
            todo.extend(r.parents.iter().cloned());
        }
    }
}

/// Picks the records to remove, oldest use first (pure, for tests).
pub fn select(records: &[RecordInfo], opts: &PruneOptions, now: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..records.len())
        .filter(|&i| opts.types.is_empty() || opts.types.contains(&records[i].record_type))
        .filter(|&i| {
            opts.ids
                .as_ref()
                .is_none_or(|ids| ids.contains(&records[i].lease.id))
        })
        .collect();
    order.sort_by_key(|&i| records[i].last_used);
    let mut total: u64 = order.iter().map(|&i| records[i].size).sum();
    let mut out = Vec::new();
    for i in order {
        let r = &records[i];
        // A running build holds it: not BuildKit's to remove either.
        if r.in_use {
            continue;
        }
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

/// Removes records as `opts` says, leaving alone those in use (see
/// [`disk_usage`]), then runs containerd's GC.
pub async fn prune(svc: &Services, opts: &PruneOptions) -> Result<PruneReport> {
    let records = records_in_use(svc).await?;
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
    // Claims whose holder died hold nothing, but they are litter.
    crate::claim::sweep(&*svc.leases, &svc.leases.list().await?).await?;
    svc.leases.gc().await?;
    Ok(report)
}

/// Parses a size the way Docker's `--keep-storage` does (`RAMInBytes`):
/// a number with an optional unit `b`, `k`, `m`, `g`, `t` or `p`, with or
/// without `b`/`ib`, case-insensitive, always in binary multiples (`512MB`
/// is 512 MiB, `1.5g` is 1.5 GiB, `100` is bytes). `None` when malformed
/// or too large for a `u64`.
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let number = number.trim();
    if number.is_empty() || !number.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    let unit = unit.to_ascii_lowercase();
    let prefix = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let binary = match prefix {
        "" => "B",
        "k" => "KiB",
        "m" => "MiB",
        "g" => "GiB",
        "t" => "TiB",
        "p" => "PiB",
        _ => return None,
    };
    let size: bytesize::ByteSize = format!("{number} {binary}").parse().ok()?;
    // bytesize saturates instead of failing; 16 EiB is no real limit.
    Some(size.as_u64()).filter(|&n| n != u64::MAX)
}

/// Parses durations like `48h`, `30m`, `10s`, `7d`, `1h30m` (a unit is
/// required). `None` when malformed or too long.
pub fn parse_duration(s: &str) -> Option<Duration> {
    humantime::parse_duration(s.trim()).ok()
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
            usage_count: 0,
            parents: Vec::new(),
            snapshots: Vec::new(),
            in_use: false,
            shared: false,
        }
    }

    #[test]
    fn held_records_and_those_below_them_are_in_use_and_never_pruned() {
        let mut rs = vec![
            rec("base", 10, 100, "regular"),
            rec("mid", 10, 200, "regular"),
            rec("top", 10, 300, "regular"),
            rec("other", 10, 50, "regular"),
        ];
        rs[1].parents = vec!["base".into()];
        rs[2].parents = vec!["mid".into()];
        mark_in_use(&mut rs, &HashSet::from(["mid".to_string()]));
        let used: Vec<bool> = rs.iter().map(|r| r.in_use).collect();
        assert_eq!(used, [true, true, false, false]);
        assert_eq!(select(&rs, &PruneOptions::default(), 1000), vec![3, 2]);
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
        let picked = select(
            &rs,
            &PruneOptions {
                ids: Some(HashSet::from([
                    rs[0].lease.id.clone(),
                    rs[2].lease.id.clone(),
                ])),
                ..Default::default()
            },
            1000,
        );
        assert_eq!(picked, vec![2, 0], "only the records named, oldest first");
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
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("30m"), Some(Duration::from_secs(1800)));
    }

    #[test]
    fn sizes_keep_their_binary_meaning_in_every_spelling() {
        for (text, want) in [
            ("10GB", 10u64 << 30),
            ("512MiB", 512 << 20),
            ("512mb", 512 << 20),
            ("1.5g", 3 << 29),
            ("2 KiB", 2048),
            ("7b", 7),
            ("1P", 1 << 50),
            (" 42 ", 42),
        ] {
            assert_eq!(parse_size(text), Some(want), "{text}");
        }
        for bad in ["", "GB", "-5GB", "1.2.3g", "5 parsecs", "nan", "1e3"] {
            assert_eq!(parse_size(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn too_large_sizes_and_durations_are_refused_not_wrapped() {
        // Beyond u64: the hand-written parser saturated (sizes) or
        // overflowed (durations).
        assert_eq!(parse_size("99999999999999999999"), None);
        assert_eq!(parse_size("99999999999T"), None);
        assert_eq!(parse_size("20000000p"), None);
        assert_eq!(parse_duration("300000000000000d"), None);
        assert_eq!(parse_duration("99999999999999999999s"), None);
    }
}
