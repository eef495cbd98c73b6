//! What a build step's process gets beyond its command: extra `/etc/hosts`
//! entries ([`HostIp`], buildx `--add-host`, LLB `Meta.extraHosts`),
//! resource limits ([`Ulimit`], buildx `--ulimit`, LLB `Meta.ulimit`) and
//! cgroup limits ([`Resources`], buildx `--resource`, LLB
//! `OpMetadata.linux_resources`, which unlike the others is not part of
//! the definition: it never changes a cache key).
//!
//! The frontend parses them from its attributes, kilnd's LLB translation
//! checks them, the solver keeps them in the step's definition (so in its
//! cache key, as BuildKit's op digest has them) and the shim writes them
//! into the hosts file and the OCI spec. The rules of their text forms
//! live here, once.

use std::fmt;
use std::net::IpAddr;

/// One extra `/etc/hosts` entry: `IP<TAB>host`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct HostIp {
    pub host: String,
    pub ip: IpAddr,
}

/// A resource limit as docker spells it: `nofile=1024:2048`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Ulimit {
    /// Lower-case name without the `RLIMIT_` prefix (`nofile`, `nproc`, …).
    pub name: String,
    /// `-1` is unlimited.
    pub soft: i64,
    /// `-1` is unlimited.
    pub hard: i64,
}

/// An invalid `--add-host` or `--ulimit` value; the text is docker's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ProcessOptError(String);

/// The limits docker accepts (go-units' table; `as` is left out there too).
pub const ULIMIT_NAMES: [&str; 15] = [
    "core",
    "cpu",
    "data",
    "fsize",
    "locks",
    "memlock",
    "msgqueue",
    "nice",
    "nofile",
    "nproc",
    "rss",
    "rtprio",
    "rttime",
    "sigpending",
    "stack",
];

impl HostIp {
    /// BuildKit's `add-hosts` entry, `host=ip` (buildx also accepts
    /// `host:ip` on its command line and sends `host=ip`). The host name is
    /// lower-cased, as BuildKit does.
    pub fn parse(field: &str) -> Result<HostIp, ProcessOptError> {
        let lower = field.to_lowercase();
        let Some((host, ip)) = lower.split_once('=') else {
            return Err(ProcessOptError(format!("invalid key-value pair {field}")));
        };
        let ip: IpAddr = ip
            .parse()
            .map_err(|_| ProcessOptError(format!("failed to parse IP {ip}")))?;
        HostIp::new(host, ip)
    }

    /// An entry from parts (LLB's `HostIP`), checked: the name must be one
    /// word, so it cannot add lines or fields to the hosts file.
    pub fn new(host: &str, ip: IpAddr) -> Result<HostIp, ProcessOptError> {
        if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(ProcessOptError(format!("invalid host name {host:?}")));
        }
        Ok(HostIp {
            host: host.to_string(),
            ip,
        })
    }
}

impl fmt::Display for HostIp {
    /// The hosts file line, without its newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}\t{}", self.ip, self.host)
    }
}

impl Ulimit {
    /// docker's `name=soft[:hard]` (go-units `ParseUlimit`): a missing hard
    /// limit equals the soft one; `-1` is unlimited; soft may not exceed a
    /// finite hard limit.
    pub fn parse(val: &str) -> Result<Ulimit, ProcessOptError> {
        let Some((name, limits)) = val.split_once('=') else {
            return Err(ProcessOptError(format!("invalid ulimit argument: {val}")));
        };
        let parts: Vec<&str> = limits.split(':').collect();
        let num = |s: &str| {
            s.parse::<i64>().map_err(|_| {
                ProcessOptError(format!(
                    "strconv.ParseInt: parsing {s:?}: invalid syntax (ulimit {val})"
                ))
            })
        };
        let (soft, hard) = match parts.as_slice() {
            [soft] => (num(soft)?, num(soft)?),
            [soft, hard] => (num(soft)?, num(hard)?),
            _ => {
                return Err(ProcessOptError(format!(
                "too many limit value arguments - {limits}, can only have up to two, `soft[:hard]`"
            )))
            }
        };
        Ulimit::new(name, soft, hard)
    }

    /// A limit from parts (LLB's `Ulimit`), checked as `parse` checks.
    pub fn new(name: &str, soft: i64, hard: i64) -> Result<Ulimit, ProcessOptError> {
        if !ULIMIT_NAMES.contains(&name) {
            return Err(ProcessOptError(format!("invalid ulimit type: {name}")));
        }
        if hard != -1 {
            if soft == -1 {
                return Err(ProcessOptError(format!(
                    "ulimit soft limit must be less than or equal to hard limit: soft: -1 (unlimited), hard: {hard}"
                )));
            }
            if soft > hard {
                return Err(ProcessOptError(format!(
                    "ulimit soft limit must be less than or equal to hard limit: {soft} > {hard}"
                )));
            }
        }
        if soft < -1 || hard < -1 {
            return Err(ProcessOptError(format!(
                "invalid ulimit value: {name}={soft}:{hard}"
            )));
        }
        Ok(Ulimit {
            name: name.to_string(),
            soft,
            hard,
        })
    }

    /// The value for the OCI spec: `-1` (unlimited) is `RLIM_INFINITY`,
    /// all bits set, as BuildKit's `uint64(-1)` gives.
    pub fn rlimit(value: i64) -> u64 {
        if value < 0 {
            u64::MAX
        } else {
            value as u64
        }
    }
}

impl fmt::Display for Ulimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}:{}", self.name, self.soft, self.hard)
    }
}

/// A step's cgroup limits (buildx `--resource`, the frontend attributes
/// `memory`, `memswap`, `cpushares`, `cpuperiod`, `cpuquota`,
/// `cpusetcpus`, `cpusetmems`, LLB `LinuxResources`). Zero or empty is
/// unset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resources {
    /// Bytes.
    pub memory: i64,
    /// Memory plus swap, bytes; `-1` is unlimited swap.
    pub memory_swap: i64,
    pub cpu_shares: u64,
    /// Microseconds.
    pub cpu_period: u64,
    /// Microseconds per period.
    pub cpu_quota: i64,
    pub cpuset_cpus: String,
    pub cpuset_mems: String,
}

/// The frontend attributes of [`Resources`], as buildx sends them and
/// BuildKit's Dockerfile frontend reads them.
pub const RESOURCE_ATTRS: [&str; 7] = [
    "memory",
    "memswap",
    "cpushares",
    "cpuperiod",
    "cpuquota",
    "cpusetcpus",
    "cpusetmems",
];

impl Resources {
    /// Whether no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == Resources::default()
    }

    /// Sets the limit of frontend attribute `key` (one of
    /// [`RESOURCE_ATTRS`]) from `value`, with the checks and texts of
    /// BuildKit's Dockerfile frontend; an empty value sets nothing.
    pub fn set_attr(&mut self, key: &str, value: &str) -> Result<(), ProcessOptError> {
        if value.is_empty() {
            return Ok(());
        }
        let bad = |why: &str| ProcessOptError(format!("invalid {key} value: {value}{why}"));
        let int = || {
            value.parse::<i64>().map_err(|_| {
                bad(&format!(
                    ": strconv.ParseInt: parsing {value:?}: invalid syntax"
                ))
            })
        };
        let uint = || {
            value.parse::<u64>().map_err(|_| {
                bad(&format!(
                    ": strconv.ParseUint: parsing {value:?}: invalid syntax"
                ))
            })
        };
        match key {
            "memory" => {
                self.memory = int()?;
                if self.memory <= 0 {
                    return Err(bad(": must be > 0"));
                }
            }
            "memswap" => {
                self.memory_swap = int()?;
                if self.memory_swap < -1 || self.memory_swap == 0 {
                    return Err(bad(": must be -1 (unlimited) or > 0"));
                }
            }
            "cpushares" | "cpuperiod" => {
                let n = uint()?;
                if n == 0 {
                    return Err(bad(": must be > 0"));
                }
                if key == "cpushares" {
                    self.cpu_shares = n;
                } else {
                    self.cpu_period = n;
                }
            }
            "cpuquota" => {
                self.cpu_quota = int()?;
                if self.cpu_quota <= 0 {
                    return Err(bad(": must be > 0"));
                }
            }
            "cpusetcpus" | "cpusetmems" => {
                if !valid_cpuset(value) {
                    return Err(bad(&format!(": invalid format: {value}")));
                }
                if key == "cpusetcpus" {
                    self.cpuset_cpus = value.to_string();
                } else {
                    self.cpuset_mems = value.to_string();
                }
            }
            _ => {
                return Err(ProcessOptError(format!(
                    "unknown resource attribute {key:?}"
                )))
            }
        }
        Ok(())
    }

    /// buildx's `--resource KEY=VALUE` entries (`memory=2g`,
    /// `memory-swap=-1`, `cpu-shares`, `cpu-period`, `cpu-quota`,
    /// `cpuset-cpus`, `cpuset-mems`) as the frontend attributes buildx
    /// sends for them, with buildx's error texts.
    pub fn buildx_attrs(entries: &[String]) -> Result<Vec<(String, String)>, ProcessOptError> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut set = |attr: &str, v: String| {
            out.retain(|(k, _)| k != attr);
            out.push((attr.to_string(), v));
        };
        let size = |v: &str| {
            ram_in_bytes(v)
                .and_then(|n| i64::try_from(n).ok())
                .ok_or_else(|| format!("invalid size: '{v}'"))
        };
        for entry in entries {
            let Some((k, v)) = entry.split_once('=') else {
                return Err(ProcessOptError(format!(
                    "invalid resource {entry:?}, expected key=value"
                )));
            };
            let (k, v) = (k.trim(), v.trim());
            let bad = |why: String| {
                ProcessOptError(format!("invalid value {v:?} for resource {k}: {why}"))
            };
            match k {
                "memory" => {
                    let n = size(v).map_err(bad)?;
                    if n > 0 {
                        set("memory", n.to_string());
                    }
                }
                "memory-swap" => {
                    let n = if v == "-1" { -1 } else { size(v).map_err(bad)? };
                    if n != 0 {
                        set("memswap", n.to_string());
                    }
                }
                "cpu-shares" | "cpu-period" | "cpu-quota" => {
                    let n: i64 = v.parse().map_err(|_| {
                        bad(format!("strconv.ParseInt: parsing {v:?}: invalid syntax"))
                    })?;
                    if n > 0 {
                        set(&k.replace('-', ""), n.to_string());
                    }
                }
                "cpuset-cpus" | "cpuset-mems" => {
                    if !v.is_empty() {
                        set(&k.replace('-', ""), v.to_string());
                    }
                }
                _ => return Err(ProcessOptError(format!("unknown resource {k:?}"))),
            }
        }
        Ok(out)
    }
}

/// A cpuset list as the kernel takes it: `0-3`, `0,2`, `1-2,4`.
fn valid_cpuset(v: &str) -> bool {
    let num = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    v.split(',').all(|part| match part.split_once('-') {
        Some((a, b)) => num(a) && num(b) && a.parse::<u64>().ok() <= b.parse::<u64>().ok(),
        None => num(part),
    })
}

/// docker's memory sizes (go-units `RAMInBytes`): `64m`, `1g`, `512k`,
/// `100`, binary multiples, any case, an optional `i` and `b`.
pub fn ram_in_bytes(s: &str) -> Option<u64> {
    let lower = s.trim().to_lowercase();
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(digits_end);
    let n: f64 = num.parse().ok()?;
    let mult: u64 = match unit
        .trim_start()
        .trim_end_matches('b')
        .trim_end_matches('i')
    {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        "p" => 1 << 50,
        _ => return None,
    };
    Some((n * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_parse_like_buildkit() {
        let h = HostIp::parse("MyHost=10.0.0.1").expect("valid");
        assert_eq!(h.host, "myhost");
        assert_eq!(h.to_string(), "10.0.0.1\tmyhost");
        assert_eq!(
            HostIp::parse("v6=::1").expect("valid").to_string(),
            "::1\tv6"
        );
        assert_eq!(
            HostIp::parse("nohost").expect_err("invalid").to_string(),
            "invalid key-value pair nohost"
        );
        assert_eq!(
            HostIp::parse("a=1.2.3").expect_err("invalid").to_string(),
            "failed to parse IP 1.2.3"
        );
        assert!(HostIp::new("a b", "1.1.1.1".parse().expect("valid")).is_err());
        assert!(HostIp::new("a\nb", "1.1.1.1".parse().expect("valid")).is_err());
    }

    #[test]
    fn ulimits_parse_like_go_units() {
        assert_eq!(
            Ulimit::parse("nofile=1024:2048").expect("valid"),
            Ulimit {
                name: "nofile".into(),
                soft: 1024,
                hard: 2048
            }
        );
        let u = Ulimit::parse("nproc=100").expect("valid");
        assert_eq!((u.soft, u.hard), (100, 100));
        let u = Ulimit::parse("core=-1").expect("valid");
        assert_eq!(Ulimit::rlimit(u.soft), u64::MAX);
        assert_eq!(
            Ulimit::parse("as=1").expect_err("invalid").to_string(),
            "invalid ulimit type: as"
        );
        assert_eq!(
            Ulimit::parse("nofile=2:1")
                .expect_err("invalid")
                .to_string(),
            "ulimit soft limit must be less than or equal to hard limit: 2 > 1"
        );
        assert_eq!(
            Ulimit::parse("nofile=1:2:3")
                .expect_err("invalid")
                .to_string(),
            "too many limit value arguments - 1:2:3, can only have up to two, `soft[:hard]`"
        );
        assert!(Ulimit::parse("nofile").is_err());
        assert!(Ulimit::parse("nofile=x").is_err());
        assert!(Ulimit::new("nofile", -5, -1).is_err());
    }

    #[test]
    fn resources_read_as_buildkit_and_buildx_read_them() {
        let mut r = Resources::default();
        assert!(r.is_empty());
        r.set_attr("memory", "67108864").expect("memory");
        r.set_attr("memswap", "-1").expect("memswap");
        r.set_attr("cpushares", "512").expect("shares");
        r.set_attr("cpuperiod", "100000").expect("period");
        r.set_attr("cpuquota", "50000").expect("quota");
        r.set_attr("cpusetcpus", "0-1").expect("cpus");
        r.set_attr("cpusetmems", "0").expect("mems");
        r.set_attr("cpusetmems", "").expect("empty is unset");
        assert_eq!(r.memory, 64 << 20);
        assert_eq!(
            (r.memory_swap, r.cpu_shares, r.cpu_period, r.cpu_quota),
            (-1, 512, 100_000, 50_000)
        );
        assert_eq!(
            (r.cpuset_cpus.as_str(), r.cpuset_mems.as_str()),
            ("0-1", "0")
        );
        let err = |k: &str, v: &str| {
            Resources::default()
                .set_attr(k, v)
                .expect_err(v)
                .to_string()
        };
        assert_eq!(err("memory", "0"), "invalid memory value: 0: must be > 0");
        assert_eq!(
            err("memory", "2g"),
            "invalid memory value: 2g: strconv.ParseInt: parsing \"2g\": invalid syntax"
        );
        assert_eq!(
            err("memswap", "0"),
            "invalid memswap value: 0: must be -1 (unlimited) or > 0"
        );
        assert_eq!(
            err("cpushares", "0"),
            "invalid cpushares value: 0: must be > 0"
        );
        assert_eq!(
            err("cpusetcpus", "a"),
            "invalid cpusetcpus value: a: invalid format: a"
        );
        assert_eq!(
            err("cpusetcpus", "3-1"),
            "invalid cpusetcpus value: 3-1: invalid format: 3-1"
        );

        let attrs = |e: &[&str]| {
            Resources::buildx_attrs(&e.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(
            attrs(&[
                "memory=2g",
                "memory-swap=-1",
                "cpu-quota=50000",
                "cpuset-cpus=0"
            ])
            .expect("attrs"),
            [
                ("memory".to_string(), (2_i64 << 30).to_string()),
                ("memswap".to_string(), "-1".to_string()),
                ("cpuquota".to_string(), "50000".to_string()),
                ("cpusetcpus".to_string(), "0".to_string()),
            ]
        );
        assert_eq!(
            attrs(&["memory=512m"]).expect("m")[0].1,
            (512_i64 << 20).to_string()
        );
        assert_eq!(
            attrs(&["memory=1.5GiB"]).expect("gib")[0].1,
            (3_i64 << 29).to_string()
        );
        assert_eq!(
            attrs(&["memory"]).expect_err("no value").to_string(),
            "invalid resource \"memory\", expected key=value"
        );
        assert_eq!(
            attrs(&["disk=1g"]).expect_err("unknown").to_string(),
            "unknown resource \"disk\""
        );
        assert_eq!(
            attrs(&["memory=lots"]).expect_err("bad size").to_string(),
            "invalid value \"lots\" for resource memory: invalid size: 'lots'"
        );
    }
}
