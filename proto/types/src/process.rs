//! What a build step's process gets beyond its command: extra `/etc/hosts`
//! entries ([`HostIp`], buildx `--add-host`, LLB `Meta.extraHosts`) and
//! resource limits ([`Ulimit`], buildx `--ulimit`, LLB `Meta.ulimit`).
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
}
