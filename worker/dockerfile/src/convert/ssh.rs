//! `RUN --mount=type=ssh`: a socket in the step that forwards to one of
//! the client's SSH agents (BuildKit's `dispatchSSH` and LLB's
//! `AddSSHSocket`). The graph holds the agent's id and the socket's owner
//! and mode, never a key or a host path.

use super::*;
use kiln_solver::SshMount;

/// Where the N-th ssh socket of a step goes without `target=`.
fn default_target(n: usize) -> String {
    format!("/run/buildkit/ssh_agent.{n}")
}

impl Converter<'_> {
    /// The mount for `m`, the `n`-th ssh mount of the step.
    pub(super) fn ssh_mount(
        &self,
        st: &StageState,
        cwd: &str,
        m: &MountSpec,
        n: usize,
        line: usize,
    ) -> Result<Mount> {
        let ex = |s: &Option<String>| -> Result<Option<String>> {
            s.as_deref()
                .map(|w| self.expand(w, &st.env, line))
                .transpose()
        };
        let err = |m: &str| self.file_err(line, m.to_string());
        if m.source.is_some() {
            return Err(err("ssh does not support source"));
        }
        if m.sharing.is_some() {
            return Err(err("invalid cache sharing set for ssh mount"));
        }
        // BuildKit parses these and then has no use for them; kiln says
        // so rather than drop them.
        for (set, key) in [
            (m.size.is_some(), "size"),
            (m.env.is_some(), "env"),
            (m.from.is_some(), "from"),
        ] {
            if set {
                return Err(err(&format!("unexpected key '{key}' for mount type 'ssh'")));
            }
        }
        let required = match ex(&m.required)? {
            None => false,
            Some(v) => super::gocompat::parse_bool(&v)
                .ok_or_else(|| err(&format!("invalid value for required: {v}")))?,
        };
        let number = |v: Option<String>, name: &str, radix: u32, default: u32| -> Result<u32> {
            match v {
                None => Ok(default),
                Some(v) => u32::from_str_radix(&v, radix)
                    .map_err(|_| err(&format!("invalid value {v} for {name}"))),
            }
        };
        let uid = number(ex(&m.uid)?, "uid", 10, 0)?;
        let gid = number(ex(&m.gid)?, "gid", 10, 0)?;
        let mode = number(ex(&m.mode)?, "mode", 8, 0o600)?;
        let id = ex(&m.id)?.unwrap_or_default();
        let dest = match ex(&m.target)?.filter(|t| !t.is_empty()) {
            None => default_target(n),
            Some(t) if t.starts_with('/') => clean(&t),
            Some(t) => clean(&format!("{cwd}/{t}")),
        };
        if dest == "/" {
            return Err(err("invalid mount target \"/\""));
        }
        Ok(Mount {
            input: None,
            selector: String::new(),
            dest,
            output: None,
            readonly: true,
            mount_type: MountType::Ssh(SshMount {
                id,
                optional: !required,
                uid,
                gid,
                mode,
            }),
        })
    }
}

/// The step's env with `SSH_AUTH_SOCK` pointing at its first ssh socket,
/// unless the step sets it itself (as LLB's exec does).
pub(super) fn with_auth_sock(mut env: Vec<String>, mounts: &[Mount]) -> Vec<String> {
    let first = mounts
        .iter()
        .find(|m| matches!(m.mount_type, MountType::Ssh(_)));
    if let Some(m) = first {
        if lookup(&env, "SSH_AUTH_SOCK").is_none() {
            env.push(format!("SSH_AUTH_SOCK={}", m.dest));
        }
    }
    env
}
