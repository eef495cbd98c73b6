//! The host keys of ssh git sources, pinned into the graph as BuildKit's
//! `llb.Git` pins them: a git source over ssh without known hosts gets
//! `git.knownsshhosts` from a key scan of its host made while the graph is
//! built (best effort: a host that does not answer gets none, and its
//! fetch then does not check the key). The engine then accepts only those
//! keys (`StrictHostKeyChecking=yes`), so the fetch talks to the server
//! the frontend saw. The scan is `ssh-keyscan` (Debian's
//! openssh-client, which git over ssh needs anyway), bounded by
//! [`SCAN_TIMEOUT`].

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use kiln_solver::source::{is_ssh_remote, ssh_host_port, GitSource, ATTR_KNOWN_SSH_HOSTS};
use kiln_solver::{Graph, Op};

/// How long one host's scan may take (`ssh-keyscan -T`, and the whole
/// command twice that).
pub const SCAN_TIMEOUT: Duration = Duration::from_secs(5);

/// Sets `git.knownsshhosts` on every ssh git source of `graph` that has
/// none, from one key scan per host and port.
pub async fn pin(graph: &mut Graph) {
    let mut scanned: HashMap<(String, Option<u16>), Option<String>> = HashMap::new();
    for v in &mut graph.vertices {
        let Op::Source(src) = &mut v.op else { continue };
        let Ok(Some(git)) = GitSource::from_op(src) else {
            continue;
        };
        if !is_ssh_remote(&git.remote) || !git.known_ssh_hosts.is_empty() {
            continue;
        }
        let Some(host) = ssh_host_port(&git.remote) else {
            continue;
        };
        if !scanned.contains_key(&host) {
            let keys = scan(&host.0, host.1).await;
            scanned.insert(host.clone(), keys);
        }
        if let Some(Some(keys)) = scanned.get(&host) {
            src.attrs
                .insert(ATTR_KNOWN_SSH_HOSTS.to_string(), keys.clone());
        }
    }
}

/// The `known_hosts` lines of `host`'s keys, or `None` when it could not
/// be scanned.
async fn scan(host: &str, port: Option<u16>) -> Option<String> {
    let mut cmd = tokio::process::Command::new("ssh-keyscan");
    cmd.arg("-T").arg(SCAN_TIMEOUT.as_secs().to_string());
    if let Some(p) = port {
        cmd.arg("-p").arg(p.to_string());
    }
    cmd.arg("--")
        .arg(host)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let out = match tokio::time::timeout(SCAN_TIMEOUT * 2, cmd.output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            tracing::warn!(host, error = %e, "cannot run ssh-keyscan; the host key will not be checked");
            return None;
        }
        Err(_) => {
            tracing::warn!(
                host,
                "ssh-keyscan timed out; the host key will not be checked"
            );
            return None;
        }
    };
    let keys = known_hosts_lines(&String::from_utf8_lossy(&out.stdout));
    if keys.is_empty() {
        tracing::warn!(
            host,
            "no host key scanned; the host key will not be checked"
        );
        return None;
    }
    Some(keys)
}

/// The key lines of `ssh-keyscan` output (comments and blank lines
/// dropped), each ending in a newline, sorted so the pinned source is the
/// same whatever order the server answered in.
fn known_hosts_lines(out: &str) -> String {
    let mut lines: Vec<&str> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    lines.sort_unstable();
    lines.dedup();
    lines.iter().map(|l| format!("{l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_solver::Vertex;

    #[test]
    fn scanned_keys_become_sorted_lines() {
        let out = "# 127.0.0.1:2222 SSH-2.0-OpenSSH_9.2\n\
                   [127.0.0.1]:2222 ssh-rsa AAAB\n\n\
                   [127.0.0.1]:2222 ssh-ed25519 AAAA\n";
        assert_eq!(
            known_hosts_lines(out),
            "[127.0.0.1]:2222 ssh-ed25519 AAAA\n[127.0.0.1]:2222 ssh-rsa AAAB\n"
        );
        assert_eq!(known_hosts_lines("# nothing\n"), "");
    }

    fn source(remote: &str, known: &str) -> Vertex {
        let g = GitSource {
            remote: remote.into(),
            host_path: "h/r.git".into(),
            known_ssh_hosts: known.into(),
            ..GitSource::default()
        };
        Vertex {
            op: Op::Source(g.to_op()),
            inputs: Vec::new(),
            name: String::new(),
            location: None,
            ignore_cache: false,
        }
    }

    /// Sources that are not over ssh, or already have known hosts, are
    /// left as they are, with no scan (a scan of these names would fail:
    /// nothing answers on port 1).
    #[tokio::test]
    async fn only_ssh_sources_without_known_hosts_are_scanned() {
        let mut graph = Graph::default();
        for v in [
            source("https://127.0.0.1:1/r.git", ""),
            source(
                "ssh://git@127.0.0.1:1/r.git",
                "[127.0.0.1]:1 ssh-ed25519 AAAA\n",
            ),
            source("ssh://git@127.0.0.1:1/r.git", ""),
        ] {
            graph.add(v).expect("vertex");
        }
        let before = graph.clone();
        pin(&mut graph).await;
        assert_eq!(graph.vertices, before.vertices, "nothing scanned answers");
    }
}
