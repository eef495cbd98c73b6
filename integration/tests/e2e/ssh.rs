//! `RUN --mount=type=ssh` (issue 11/12), embedded and through kilnd: a
//! real `ssh-agent` holding a fresh ed25519 key is forwarded with
//! `--ssh default` ($SSH_AUTH_SOCK), and `ssh-add -l` inside the step (the
//! host's binary and its libraries copied into the context; busybox has no
//! ssh client) lists the key's fingerprint. The agent is read-only to the
//! step (`ssh-add -D` is refused), nothing of the socket is left in the
//! image, and a required agent the client does not forward fails the step
//! with BuildKit's words.

use kiln_integration::ssh::{need, run, Agent};
use kiln_integration::{Harness, KilnOutput};
use std::path::Path;
use std::process::Command;

const DOCKERFILE: &str = "FROM busybox\n\
COPY tools/ /\n\
RUN --mount=type=ssh ssh-add -l > /out && echo \"$SSH_AUTH_SOCK\" >> /out && \
(ssh-add -D > /dev/null 2>&1 || echo refused >> /out) && ssh-add -l >> /out\n";

/// Copies `/usr/bin/ssh-add` and the libraries `ldd` lists into `tools/`
/// of the context, at their own paths.
fn copy_ssh_add(ctx: &Path) {
    let tools = ctx.join("tools");
    let mut files = vec!["/usr/bin/ssh-add".to_string()];
    for line in run(Command::new("ldd").arg("/usr/bin/ssh-add")).lines() {
        let path = match line.split_once("=>") {
            Some((_, right)) => right.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            files.push(p.to_string());
        }
    }
    for f in files {
        let dest = tools.join(f.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().expect("a parent")).expect("mkdir");
        std::fs::copy(&f, &dest).unwrap_or_else(|e| panic!("copy {f}: {e}"));
    }
}

fn with_sock(h: &Harness, ns: &str, sock: &Path, args: &[&str]) -> KilnOutput {
    let out = h
        .kiln_command(ns)
        .expect("kiln command")
        .env("SSH_AUTH_SOCK", sock)
        .args(args)
        .output()
        .expect("kiln runs");
    KilnOutput {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test]
async fn a_step_lists_the_forwarded_agents_key() {
    need("ldd", "libc-bin");
    let ns = "ssh";
    let h = Harness::with_busybox(ns).await;
    let agent_dir = h.state_dir().join("agent");
    std::fs::create_dir_all(&agent_dir).expect("agent dir");
    let agent = Agent::with_key(&agent_dir);
    let listed = agent.listed.clone();
    let ctx = h.context("ssh", &[("Dockerfile", DOCKERFILE)]);
    copy_ssh_add(&ctx);
    let c = ctx.to_str().expect("utf8");
    let want = format!("{listed}/run/buildkit/ssh_agent.0\nrefused\n{listed}");
    let check = |image: &str, id: &str| {
        assert_eq!(
            h.run_image_expecting(ns, image, id, &["cat", "/out"], &want),
            want
        );
        assert_eq!(
            h.run_image_expecting(
                ns,
                image,
                &format!("{id}-stub"),
                &["sh", "-c", "test -e /run/buildkit || echo clean"],
                "clean\n"
            ),
            "clean\n"
        );
    };

    // Embedded.
    with_sock(
        &h,
        ns,
        &agent.socket,
        &[
            "build",
            "--progress",
            "plain",
            "--ssh",
            "default",
            "-t",
            "ssh:embedded",
            c,
        ],
    )
    .ok();
    check("docker.io/library/ssh:embedded", "ssh-e");

    // Through kilnd: the CLI serves the agent in its session.
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let addr = k.addr();
    let remote = |extra: &[&str]| {
        let mut all = vec!["--addr", addr.as_str(), "build", "--progress", "plain"];
        all.extend_from_slice(extra);
        with_sock(&h, ns, &agent.socket, &all)
    };
    remote(&["--no-cache", "--ssh", "default", "-t", "ssh:remote", c]).ok();
    check("docker.io/library/ssh:remote", "ssh-r");

    // A required agent the client does not forward: no --ssh at all, or
    // --ssh without that id.
    let required = "FROM busybox\nRUN --mount=type=ssh,id=gh,required true\n";
    let ctx2 = h.context("ssh-required", &[("Dockerfile", required)]);
    let c2 = ctx2.to_str().expect("utf8");
    let out = remote(&["--no-cache", c2]);
    assert!(!out.success, "built without the required agent");
    assert!(
        out.stderr
            .contains("no SSH key \"gh\" forwarded from the client"),
        "{}",
        out.stderr
    );
    let out = remote(&["--no-cache", "--ssh", "default", c2]);
    assert!(!out.success, "built without the required agent");
    assert!(
        out.stderr.contains("unset ssh forward key gh"),
        "{}",
        out.stderr
    );
    let out = with_sock(
        &h,
        ns,
        &agent.socket,
        &["build", "--progress", "plain", "--ssh", "default", c2],
    );
    assert!(
        !out.success && out.stderr.contains("unset ssh forward key gh"),
        "{}",
        out.stderr
    );
}
