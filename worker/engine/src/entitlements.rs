//! Entitlements, as in BuildKit: what a build may do beyond the sandbox.
//!
//! `RUN --network=host` needs `network.host` and `RUN --security=insecure`
//! needs `security.insecure`. A build gets an entitlement only when the
//! daemon's configuration allows it (kilnd.toml `[worker] allow`, or
//! `--allow-insecure-entitlement`) *and* the client asks for it
//! (`SolveRequest.entitlements`: `buildctl --allow`, `buildx --allow`,
//! `kiln --allow`). As in BuildKit the check does not depend on the
//! daemon's network mode: a host-network daemon still wants `network.host`
//! for `RUN --network=host`. The graph is checked before anything runs, so
//! a build that needs more than it was granted fails before it starts.
//!
//! The texts are BuildKit's: `unknown entitlement X`, `granting entitlement
//! X is not allowed by build daemon configuration`, `X is not allowed`.

use kiln_solver::{ExecOp, Graph, NetMode, Op, SecurityMode};
use kiln_types::ErrorKind;
use std::collections::BTreeSet;
use std::str::FromStr;

/// One entitlement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Entitlement {
    /// `network.host`: steps on the host's network.
    NetworkHost,
    /// `security.insecure`: steps without the sandbox (all capabilities,
    /// no seccomp).
    SecurityInsecure,
}

impl Entitlement {
    /// BuildKit's name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Entitlement::NetworkHost => "network.host",
            Entitlement::SecurityInsecure => "security.insecure",
        }
    }
}

impl std::fmt::Display for Entitlement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Entitlement {
    type Err = EntitlementError;

    fn from_str(s: &str) -> Result<Entitlement, EntitlementError> {
        match s {
            "network.host" => Ok(Entitlement::NetworkHost),
            "security.insecure" => Ok(Entitlement::SecurityInsecure),
            _ => Err(EntitlementError::Unknown {
                name: s.to_string(),
            }),
        }
    }
}

/// Why a build may not have or use an entitlement.
#[derive(Debug, thiserror::Error)]
pub enum EntitlementError {
    /// A name kiln (and BuildKit) does not know.
    #[error("unknown entitlement {name}")]
    Unknown { name: String },
    /// The client asked for one the daemon's configuration does not allow.
    #[error("granting entitlement {entitlement} is not allowed by build daemon configuration")]
    NotGrantable { entitlement: Entitlement },
    /// A step needs one the build was not granted.
    #[error("{location}{entitlement} is not allowed")]
    NotAllowed {
        /// `Dockerfile:3: ` when the step has a location, else empty.
        location: String,
        entitlement: Entitlement,
    },
}

impl EntitlementError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            EntitlementError::Unknown { .. } => ErrorKind::InvalidArgument,
            EntitlementError::NotGrantable { .. } | EntitlementError::NotAllowed { .. } => {
                ErrorKind::FailedPrecondition
            }
        }
    }
}

/// What one exec op needs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Needs {
    pub network_host: bool,
    pub security_insecure: bool,
}

impl Needs {
    /// What `op` needs: `network.host` for the host network,
    /// `security.insecure` for the insecure security mode.
    pub fn of(op: &ExecOp) -> Needs {
        Needs {
            network_host: op.network == NetMode::Host,
            security_insecure: op.security == SecurityMode::Insecure,
        }
    }
}

/// A set of entitlements: what a daemon allows, or what a build was
/// granted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entitlements(BTreeSet<Entitlement>);

impl Entitlements {
    /// Parses names (a daemon's configuration); an unknown name is an
    /// error, never ignored.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<Entitlements, EntitlementError> {
        names
            .iter()
            .map(|n| n.as_ref().trim().parse())
            .collect::<Result<BTreeSet<_>, _>>()
            .map(Entitlements)
    }

    /// What a build gets: every entitlement the client `requested`, each of
    /// which must be known and in `allowed` (BuildKit's `WhiteList`).
    pub fn grant<S: AsRef<str>>(
        requested: &[S],
        allowed: &Entitlements,
    ) -> Result<Entitlements, EntitlementError> {
        let requested = Entitlements::parse(requested)?;
        for e in requested.iter() {
            if !allowed.contains(e) {
                return Err(EntitlementError::NotGrantable { entitlement: e });
            }
        }
        Ok(requested)
    }

    pub fn contains(&self, e: Entitlement) -> bool {
        self.0.contains(&e)
    }

    pub fn iter(&self) -> impl Iterator<Item = Entitlement> + '_ {
        self.0.iter().copied()
    }

    /// Whether a step needing `needs` may run (BuildKit's `Set.Check`);
    /// `location` prefixes the error (`Dockerfile:3: `).
    pub fn check(&self, needs: Needs, location: &str) -> Result<(), EntitlementError> {
        let missing = |entitlement| EntitlementError::NotAllowed {
            location: location.to_string(),
            entitlement,
        };
        if needs.network_host && !self.contains(Entitlement::NetworkHost) {
            return Err(missing(Entitlement::NetworkHost));
        }
        if needs.security_insecure && !self.contains(Entitlement::SecurityInsecure) {
            return Err(missing(Entitlement::SecurityInsecure));
        }
        Ok(())
    }

    /// Checks every exec op of `graph` before the build starts.
    pub fn check_graph(&self, graph: &Graph) -> Result<(), EntitlementError> {
        for v in &graph.vertices {
            if let Op::Exec(op) = &v.op {
                let location = v
                    .location
                    .as_ref()
                    .map(|l| format!("{}:{}: ", l.file, l.line))
                    .unwrap_or_default();
                self.check(Needs::of(op), &location)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(names: &[&str]) -> Entitlements {
        Entitlements::parse(names).expect("known names")
    }

    #[test]
    fn names_are_buildkits_and_unknown_ones_are_refused() {
        assert_eq!(
            allowed(&["network.host", "security.insecure"])
                .iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>(),
            ["network.host", "security.insecure"]
        );
        let err = Entitlements::parse(&["network.hots"]).expect_err("typo");
        assert_eq!(err.to_string(), "unknown entitlement network.hots");
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
    }

    #[test]
    fn a_build_gets_what_it_asks_for_and_the_daemon_allows() {
        let daemon = allowed(&["network.host"]);
        let granted = Entitlements::grant(&["network.host"], &daemon).expect("allowed");
        assert!(granted.contains(Entitlement::NetworkHost));
        // Allowed by the daemon but not asked for: not granted.
        let none = Entitlements::grant::<&str>(&[], &daemon).expect("nothing asked");
        assert!(!none.contains(Entitlement::NetworkHost));
        let err = Entitlements::grant(&["security.insecure"], &daemon).expect_err("not allowed");
        assert_eq!(
            err.to_string(),
            "granting entitlement security.insecure is not allowed by build daemon configuration"
        );
        let err = Entitlements::grant(&["device"], &daemon).expect_err("unknown");
        assert_eq!(err.to_string(), "unknown entitlement device");
    }

    #[test]
    fn each_need_is_checked_against_the_grant() {
        let host = Needs {
            network_host: true,
            security_insecure: false,
        };
        let insecure = Needs {
            network_host: false,
            security_insecure: true,
        };
        let none = Entitlements::default();
        assert!(none.check(Needs::default(), "").is_ok());
        assert_eq!(
            none.check(host, "Dockerfile:3: ")
                .expect_err("no grant")
                .to_string(),
            "Dockerfile:3: network.host is not allowed"
        );
        assert_eq!(
            none.check(insecure, "").expect_err("no grant").to_string(),
            "security.insecure is not allowed"
        );
        let net = allowed(&["network.host"]);
        assert!(net.check(host, "").is_ok());
        assert!(net.check(insecure, "").is_err());
        assert!(allowed(&["security.insecure"]).check(insecure, "").is_ok());
    }

    #[test]
    fn graphs_are_checked_per_exec_op_with_its_location() {
        use kiln_solver::{Meta, SourceLocation, Vertex};
        let exec = |network, security| {
            Op::Exec(ExecOp {
                meta: Meta {
                    args: vec!["true".into()],
                    ..Default::default()
                },
                mounts: vec![],
                network,
                security,
                secret_env: Vec::new(),
                platform: None,
            })
        };
        let vertex = |op, line| Vertex {
            op,
            inputs: vec![],
            name: "RUN true".into(),
            location: Some(SourceLocation {
                file: "Dockerfile".into(),
                line,
                end_line: line,
            }),
            ignore_cache: false,
        };
        let graph = Graph {
            vertices: vec![
                vertex(exec(NetMode::Unset, SecurityMode::Sandbox), 2),
                vertex(exec(NetMode::None, SecurityMode::Insecure), 3),
                vertex(exec(NetMode::Host, SecurityMode::Sandbox), 4),
            ],
        };
        let err = Entitlements::default()
            .check_graph(&graph)
            .expect_err("line 3 is insecure");
        assert_eq!(
            err.to_string(),
            "Dockerfile:3: security.insecure is not allowed"
        );
        let err = allowed(&["security.insecure"])
            .check_graph(&graph)
            .expect_err("line 4 needs network.host");
        assert_eq!(err.to_string(), "Dockerfile:4: network.host is not allowed");
        assert!(allowed(&["network.host", "security.insecure"])
            .check_graph(&graph)
            .is_ok());
        let err = allowed(&["network.host"])
            .check_graph(&graph)
            .expect_err("line 3 is insecure");
        assert_eq!(
            err.to_string(),
            "Dockerfile:3: security.insecure is not allowed"
        );
    }
}
