//! `kiln du` and `kiln prune` output, laid out as buildx lays out
//! `docker buildx du` / `prune`: the `ID RECLAIMABLE SIZE LAST ACCESSED`
//! table, sizes in docker's decimal units (`12.3MB`), ages in words
//! (`2 hours ago`), and the Shared/Private/Reclaimable/Total summary.

use crate::remote::Record;

/// A size as docker's `units.HumanSize` writes it: decimal units, four
/// significant digits (`512B`, `1.5kB`, `12.35MB`).
pub fn human_size(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    format!("{}{}", four_digits(v), UNITS[i])
}

/// `%.4g` for the values `human_size` produces (0 <= v < 1000).
fn four_digits(v: f64) -> String {
    let decimals = if v >= 100.0 {
        1
    } else if v >= 10.0 {
        2
    } else {
        3
    };
    let s = format!("{v:.decimals$}");
    // A rounding to 1000.0 would be five digits; keep it as `%.4g` does.
    let s = if s.starts_with("1000") {
        "1000".to_string()
    } else {
        s
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// An age as docker's `units.HumanDuration` writes it (`About an hour`,
/// `3 days`).
pub fn human_duration(secs: u64) -> String {
    let plural = |n: u64, unit: &str| format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
    let hours = secs / 3600;
    match secs {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        s if s < 60 => plural(s, "second"),
        s if s / 60 == 1 => "About a minute".into(),
        s if s < 46 * 60 => plural(s / 60, "minute"),
        s if (s as f64 / 3600.0).round() == 1.0 => "About an hour".into(),
        _ if hours < 48 => plural(hours, "hour"),
        _ if hours < 24 * 7 * 2 => plural(hours / 24, "day"),
        _ if hours < 24 * 30 * 2 => plural(hours / 24 / 7, "week"),
        _ if hours < 24 * 365 * 2 => plural(hours / 24 / 30, "month"),
        _ => plural(hours / 24 / 365, "year"),
    }
}

/// Lays rows out in columns as Go's tabwriter does with tab padding: each
/// column as wide as its widest cell plus one, rounded up to a tab stop
/// (written with spaces, so the output does not depend on the terminal's
/// tab width).
pub fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            let w = rows
                .iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0);
            (w + 1).div_ceil(8) * 8
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}", width = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Lays rows out as docker's table formatter does (Go's tabwriter with
/// minimum width 10 and padding 3, in spaces): every column but the last
/// as wide as its widest cell plus three.
fn spaced_table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            let w = rows
                .iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0);
            (w + 3).max(10)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}", width = widths[c]));
            }
        }
        out.push('\n');
    }
    out
}

/// Lays rows out as Go's tabwriter does with tab padding (minimum width
/// 1, tab width 8, padding 1, as buildx's summaries and `prune` table):
/// each column as wide as its widest cell plus one, rounded up to a tab
/// stop, reached with tab characters.
fn tabbed_table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            let w = rows
                .iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0);
            (w + 1).div_ceil(8) * 8
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        for (c, cell) in r.iter().enumerate() {
            out.push_str(cell);
            if c + 1 < r.len() {
                let pad = widths[c] - cell.chars().count();
                out.push_str(&"\t".repeat(pad.div_ceil(8)));
            }
        }
        out.push('\n');
    }
    out
}

fn last_accessed(r: &Record, now: u64) -> String {
    if r.last_used == 0 {
        return String::new();
    }
    format!("{} ago", human_duration(now.saturating_sub(r.last_used)))
}

fn header() -> Vec<String> {
    ["ID", "RECLAIMABLE", "SIZE", "LAST ACCESSED"]
        .map(String::from)
        .to_vec()
}

/// A time as buildx's pretty `du` shows it (Go's `time.Time.String` of
/// a UTC time: `2006-01-02 15:04:05 +0000 UTC`).
fn go_time(secs: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    let rfc = humantime::format_rfc3339_seconds(t).to_string();
    format!(
        "{} +0000 UTC",
        rfc.trim_end_matches('Z').replacen('T', " ", 1)
    )
}

/// A `du` row as buildx's formatter fills it (`*` after a mutable
/// record's ID and after a shared size).
fn row(r: &Record, now: u64) -> Vec<String> {
    let mut size = human_size(r.size);
    if r.shared {
        size.push('*');
    }
    let mut id = r.id.clone();
    if r.mutable {
        id.push('*');
    }
    vec![id, (!r.in_use).to_string(), size, last_accessed(r, now)]
}

/// `kiln du`: the table (or, verbose, buildx's pretty block per record)
/// and the summary. Records are in the order BuildKit's client sorts
/// them: by size, then ID.
pub fn disk_usage(records: &[Record], verbose: bool, now: u64) -> String {
    let mut sorted: Vec<&Record> = records.iter().collect();
    sorted.sort_by(|a, b| a.size.cmp(&b.size).then_with(|| a.id.cmp(&b.id)));
    let mut out = String::new();
    if verbose {
        // buildx's pretty template.
        for r in &sorted {
            out.push_str(&format!("ID:           {}\n", r.id));
            if !r.parents.is_empty() {
                out.push_str("Parents:\n");
                for p in &r.parents {
                    out.push_str(&format!(" - {p}\n"));
                }
            }
            out.push_str(&format!("Created at:   {}\n", go_time(r.created)));
            out.push_str(&format!("Mutable:      {}\n", r.mutable));
            out.push_str(&format!("Reclaimable:  {}\n", !r.in_use));
            out.push_str(&format!("Shared:       {}\n", r.shared));
            out.push_str(&format!("Size:         {}\n", human_size(r.size)));
            if !r.description.is_empty() {
                out.push_str(&format!("Description:  {}\n", r.description));
            }
            out.push_str(&format!("Usage count:  {}\n", r.usage_count));
            if r.last_used != 0 {
                out.push_str(&format!("Last used:    {}\n", last_accessed(r, now)));
            }
            if !r.record_type.is_empty() {
                out.push_str(&format!("Type:         {}\n", r.record_type));
            }
            out.push('\n');
        }
    } else {
        let mut rows = vec![header()];
        rows.extend(sorted.iter().map(|r| row(r, now)));
        out.push_str(&spaced_table(&rows));
    }
    let total: u64 = records.iter().map(|r| r.size).sum();
    let shared: u64 = records.iter().filter(|r| r.shared).map(|r| r.size).sum();
    let reclaimable: u64 = records.iter().filter(|r| !r.in_use).map(|r| r.size).sum();
    let mut summary = Vec::new();
    if shared > 0 {
        summary.push(vec!["Shared:".to_string(), human_size(shared)]);
        summary.push(vec!["Private:".to_string(), human_size(total - shared)]);
    }
    summary.push(vec!["Reclaimable:".to_string(), human_size(reclaimable)]);
    summary.push(vec!["Total:".to_string(), human_size(total)]);
    out.push_str(&tabbed_table(&summary));
    out
}

/// A `prune` row as buildx prints it (`%-40s\t%-5v\t%-10s\t%s`).
fn pruned_row(r: &Record, now: u64) -> Vec<String> {
    let mut size = human_size(r.size);
    if r.shared {
        size.push('*');
    }
    vec![
        format!("{:<40}", r.id),
        format!("{:<5}", !r.in_use),
        format!("{size:<10}"),
        last_accessed(r, now),
    ]
}

/// `kiln prune`: the removed records under the table header (none: no
/// header), then the total. buildx flushes its table after each row, so
/// the header is aligned with the first row only.
pub fn pruned(records: &[Record], now: u64) -> String {
    let mut out = String::new();
    let mut rows = records.iter().map(|r| pruned_row(r, now));
    if let Some(first) = rows.next() {
        out.push_str(&tabbed_table(&[header(), first]));
    }
    for r in rows {
        out.push_str(&tabbed_table(&[r]));
    }
    let total: u64 = records.iter().map(|r| r.size).sum();
    out.push_str(&tabbed_table(&[vec![
        "Total:".to_string(),
        human_size(total),
    ]]));
    out
}

/// buildx's confirmation question before a prune.
pub fn prune_warning(all: bool) -> &'static str {
    if all {
        "WARNING! This will remove all build cache. Are you sure you want to continue?"
    } else {
        "WARNING! This will remove all dangling build cache. Are you sure you want to continue?"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, size: u64, last_used: u64, shared: bool, in_use: bool) -> Record {
        Record {
            id: id.into(),
            record_type: "regular".into(),
            size,
            created: 0,
            last_used,
            usage_count: 1,
            description: "RUN true".into(),
            mutable: false,
            in_use,
            shared,
            parents: Vec::new(),
        }
    }

    #[test]
    fn sizes_use_dockers_decimal_units() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(1500), "1.5kB");
        assert_eq!(human_size(12_345_678), "12.35MB");
        assert_eq!(human_size(999_999), "1000kB");
        assert_eq!(human_size(10_000_000_000), "10GB");
        assert_eq!(human_size(u64::MAX), "18.45EB");
    }

    #[test]
    fn ages_read_as_docker_writes_them() {
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(1), "1 second");
        assert_eq!(human_duration(59), "59 seconds");
        assert_eq!(human_duration(90), "About a minute");
        assert_eq!(human_duration(5 * 60), "5 minutes");
        assert_eq!(human_duration(3600), "About an hour");
        assert_eq!(human_duration(3 * 3600), "3 hours");
        assert_eq!(human_duration(3 * 86_400), "3 days");
        assert_eq!(human_duration(20 * 86_400), "2 weeks");
        assert_eq!(human_duration(90 * 86_400), "3 months");
        assert_eq!(human_duration(800 * 86_400), "2 years");
    }

    #[test]
    fn du_has_buildx_columns_and_summary() {
        let now = 10_000;
        let mut records = [
            rec("kiln/cache/abc", 1_500_000, now - 7200, false, false),
            rec("kiln/cache/def", 2_000, now - 5, true, true),
            rec("kiln/cache/mount-1", 0, now - 60, false, false),
        ];
        records[2].mutable = true;
        records[2].record_type = "exec.cachemount".into();
        let out = disk_usage(&records, false, now);
        // Byte for byte what buildx prints for these records: the smaller
        // first, the whole ID (`*` after a mutable one's), columns padded
        // with three spaces, the summary with tabs.
        assert_eq!(
            out,
            "ID                    RECLAIMABLE   SIZE      LAST ACCESSED\n\
             kiln/cache/mount-1*   true          0B        About a minute ago\n\
             kiln/cache/def        false         2kB*      5 seconds ago\n\
             kiln/cache/abc        true          1.5MB     2 hours ago\n\
             Shared:\t\t2kB\n\
             Private:\t1.5MB\n\
             Reclaimable:\t1.5MB\n\
             Total:\t\t1.502MB\n"
        );
        assert_eq!(
            disk_usage(&[], false, now),
            "ID        RECLAIMABLE   SIZE      LAST ACCESSED\nReclaimable:\t0B\nTotal:\t\t0B\n"
        );
        // buildx's pretty template, every field.
        records[0].created = 1_764_679_762;
        records[0].parents = vec!["kiln/cache/p".into()];
        let v = disk_usage(&records[..1], true, now);
        assert_eq!(
            v,
            "ID:           kiln/cache/abc\nParents:\n - kiln/cache/p\n\
             Created at:   2025-12-02 12:49:22 +0000 UTC\nMutable:      false\n\
             Reclaimable:  true\nShared:       false\n\
             Size:         1.5MB\nDescription:  RUN true\nUsage count:  1\n\
             Last used:    2 hours ago\n\
             Type:         regular\n\nReclaimable:\t1.5MB\nTotal:\t\t1.5MB\n"
        );
    }

    #[test]
    fn prune_prints_a_header_only_when_something_went() {
        assert_eq!(pruned(&[], 0), "Total:\t0B\n");
        let out = pruned(
            &[
                rec("kiln/cache/abc", 1000, 0, false, false),
                rec("kiln/cache/de", 20, 40, false, false),
            ],
            50,
        );
        let id = |s: &str| format!("{s:<40}");
        assert_eq!(
            out,
            format!(
                "ID\t\t\t\t\t\tRECLAIMABLE\tSIZE\t\tLAST ACCESSED\n\
                 {}\ttrue \t\t1kB       \t\n\
                 {}\ttrue \t20B       \t10 seconds ago\n\
                 Total:\t1.02kB\n",
                id("kiln/cache/abc"),
                id("kiln/cache/de")
            )
        );
    }
}
