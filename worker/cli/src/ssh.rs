//! `--ssh` (buildx's syntax): `default`, `ID`, or `ID=SOCKET`, the agent
//! a `RUN --mount=type=ssh,id=ID` step or a git remote over ssh talks to.
//! Without a path the agent is `$SSH_AUTH_SOCK`; a git context over ssh
//! with no `--ssh` forwards `default`, as buildx does
//! ([`Agents::for_build`]). The same agents serve the embedded engine
//! ([`kiln_engine::ssh::SshSource`]) and, through `--addr`, the daemon
//! over the session; either way they are read-only
//! ([`kiln_session::ssh::ForwardedAgents`]).

use kiln_engine::ssh::{AgentStream, SshError, SshSource};
use kiln_session::ssh::{AgentError, ForwardedAgents, DEFAULT_ID};
use std::collections::BTreeMap;
use std::os::unix::fs::FileTypeExt as _;
use std::path::PathBuf;

/// The agents of one `kiln build`.
#[derive(Clone, Debug, Default)]
pub struct Agents {
    agents: ForwardedAgents,
}

impl Agents {
    /// The agents of a build of `context`: the `--ssh` values, or
    /// `default` when there are none and the context is a git repository
    /// over ssh (buildx's rule: its checkout needs the agent). A malformed
    /// value, a missing socket or a key file (not supported yet) is an
    /// error naming it.
    pub fn for_build(specs: &[String], context: &std::path::Path) -> anyhow::Result<Agents> {
        Self::for_build_with(
            specs,
            context,
            std::env::var_os("SSH_AUTH_SOCK").map(PathBuf::from),
        )
    }

    fn for_build_with(
        specs: &[String],
        context: &std::path::Path,
        auth_sock: Option<PathBuf>,
    ) -> anyhow::Result<Agents> {
        let all = implied(specs, context);
        let implicit = all.len() != specs.len();
        Self::parse_with(&all, auth_sock).map_err(|e| match implicit {
            true => anyhow::anyhow!(
                "build context {} is a git repository over ssh, which is fetched with the ssh agent of --ssh default: {e}",
                context.display()
            ),
            false => e,
        })
    }

    fn parse_with(specs: &[String], auth_sock: Option<PathBuf>) -> anyhow::Result<Agents> {
        let mut by_id = BTreeMap::new();
        for spec in specs {
            let (id, paths) = match spec.split_once('=') {
                Some((id, paths)) => (id, paths.split(',').collect::<Vec<_>>()),
                None => (spec.as_str(), Vec::new()),
            };
            let id = if id.is_empty() { DEFAULT_ID } else { id };
            if by_id.contains_key(id) {
                anyhow::bail!("--ssh {spec}: duplicate agent ID {id:?}");
            }
            let path = match paths.as_slice() {
                [] | [""] => match auth_sock.clone().filter(|p| !p.as_os_str().is_empty()) {
                    Some(p) => p,
                    None => anyhow::bail!(
                        "--ssh {spec}: invalid empty ssh agent socket: make sure SSH_AUTH_SOCK is set"
                    ),
                },
                [one] => PathBuf::from(one),
                _ => anyhow::bail!(
                    "--ssh {spec}: several paths for one id (SSH key files) are not supported yet; give one agent socket"
                ),
            };
            let meta = std::fs::metadata(&path)
                .map_err(|e| anyhow::anyhow!("--ssh {spec}: {}: {e}", path.display()))?;
            if !meta.file_type().is_socket() {
                anyhow::bail!(
                    "--ssh {spec}: {} is not a socket: SSH key files are not supported yet; give an agent socket",
                    path.display()
                );
            }
            by_id.insert(id.to_string(), path);
        }
        Ok(Agents {
            agents: ForwardedAgents::new(by_id),
        })
    }

    /// What `kiln --addr` serves in its session; `None` without `--ssh`,
    /// as buildx then offers no SSH service.
    pub fn session(&self) -> Option<ForwardedAgents> {
        (!self.agents.is_empty()).then(|| self.agents.clone())
    }
}

/// `specs`, or `default` for a git context over ssh without any.
fn implied(specs: &[String], context: &std::path::Path) -> Vec<String> {
    let git_ssh = context.to_str().is_some_and(|c| {
        matches!(kiln_solver::source::GitRef::parse(c), Ok(Some(r)) if kiln_solver::source::is_ssh_remote(&r.remote))
    });
    match specs.is_empty() && git_ssh {
        true => vec![DEFAULT_ID.to_string()],
        false => specs.to_vec(),
    }
}

fn engine_error(e: AgentError) -> SshError {
    match e {
        AgentError::Unset { id } => SshError::Unset { id },
        AgentError::Connect { path, source } => SshError::Agent {
            id: String::new(),
            reason: format!("failed to connect to {}: {source}", path.display()),
        },
    }
}

#[async_trait::async_trait]
impl SshSource for Agents {
    async fn check(&self, id: &str) -> Result<(), SshError> {
        // No --ssh is a client without the SSH service (BuildKit's
        // wording for that case).
        if self.agents.is_empty() {
            return Err(SshError::NotForwarded { id: id.to_string() });
        }
        self.agents.check(id).map_err(engine_error)
    }

    async fn connect(&self, id: &str) -> Result<Box<dyn AgentStream>, SshError> {
        match self.agents.connect(id).await {
            Ok(c) => Ok(Box::new(c)),
            Err(e) => Err(match engine_error(e) {
                SshError::Agent { reason, .. } => SshError::Agent {
                    id: id.to_string(),
                    reason,
                },
                other => other,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(specs: &[&str], auth: Option<&std::path::Path>) -> anyhow::Result<Agents> {
        let specs: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
        Agents::parse_with(&specs, auth.map(|p| p.to_path_buf()))
    }

    #[tokio::test]
    async fn buildx_forms_parse() {
        let d = tempfile::tempdir().expect("tempdir");
        let sock = d.path().join("agent.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        let key = d.path().join("id_ed25519");
        std::fs::write(&key, "not a socket").expect("write");

        let a =
            parse(&["default", &format!("gh={}", sock.display())], Some(&sock)).expect("parses");
        assert!(a.check("").await.is_ok());
        assert!(a.check("gh").await.is_ok());
        assert_eq!(
            a.check("other").await.expect_err("unset").to_string(),
            "unset ssh forward key other"
        );
        let none = parse(&[], Some(&sock)).expect("parses");
        assert!(none.session().is_none());
        assert_eq!(
            none.check("").await.expect_err("none").to_string(),
            "no SSH key \"\" forwarded from the client"
        );

        let err = |specs: &[&str], auth: Option<&std::path::Path>| {
            parse(specs, auth).expect_err("refused").to_string()
        };
        assert_eq!(
            err(&["default"], None),
            "--ssh default: invalid empty ssh agent socket: make sure SSH_AUTH_SOCK is set"
        );
        assert_eq!(
            err(&["default", "default"], Some(&sock)),
            "--ssh default: duplicate agent ID \"default\""
        );
        let k = format!("default={}", key.display());
        assert!(err(&[&k], None).contains("SSH key files are not supported yet"));
        let two = format!("default={},{}", key.display(), key.display());
        assert!(err(&[&two], None).contains("not supported yet"));
        let missing = format!("x={}", d.path().join("nope").display());
        assert!(err(&[&missing], None).contains("No such file"));
    }

    /// buildx's rule: a git context over ssh forwards `default` unless
    /// `--ssh` says otherwise; no other context does.
    #[tokio::test]
    async fn a_git_context_over_ssh_forwards_the_default_agent() {
        let d = tempfile::tempdir().expect("tempdir");
        let sock = d.path().join("agent.sock");
        let _l = std::os::unix::net::UnixListener::bind(&sock).expect("bind");
        let build = |ctx: &str, specs: &[&str], auth: Option<&std::path::Path>| {
            let specs: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
            Agents::for_build_with(
                &specs,
                std::path::Path::new(ctx),
                auth.map(|p| p.to_path_buf()),
            )
        };
        for ctx in ["git@h:r.git", "ssh://git@h:2222/r.git#main"] {
            let a = build(ctx, &[], Some(&sock)).expect("parses");
            assert!(a.check("default").await.is_ok(), "{ctx}");
            assert!(a.session().is_some(), "{ctx}");
            let only =
                build(ctx, &[&format!("gh={}", sock.display())], Some(&sock)).expect("parses");
            assert!(only.check("default").await.is_err(), "{ctx}");
        }
        for ctx in [".", "https://h/r.git", "git://h/r.git"] {
            let a = build(ctx, &[], Some(&sock)).expect("parses");
            assert!(a.session().is_none(), "{ctx}");
        }
        assert_eq!(
            build("git@h:r.git", &[], None)
                .expect_err("no agent")
                .to_string(),
            "build context git@h:r.git is a git repository over ssh, which is fetched with \
             the ssh agent of --ssh default: --ssh default: invalid empty ssh agent socket: \
             make sure SSH_AUTH_SOCK is set"
        );
    }
}
