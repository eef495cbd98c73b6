//! Git over ssh (issue 13): a git context (`root@127.0.0.1:/…` scp-like,
//! `ssh://root@127.0.0.1:2222/…`) and `ADD` of a repository over ssh,
//! fetched with the client's forwarded agent, embedded and through kilnd
//! (`kiln --addr`, and a buildctl-style client with `--ssh default`
//! and `--opt context=ssh://…`).
//!
//! The server is a private `sshd` (Debian's openssh-server) with its own
//! host key, configuration and `authorized_keys` (one key, running only
//! `git-shell`), on 127.0.0.1 ports 22 and 2222 of a network namespace the
//! test makes, so the scp-like form (always port 22) reaches it and no
//! system sshd is involved. The key lives only in a real `ssh-agent`.
//! Everything of a test (containerd, kilnd, sshd, kiln) runs in that
//! namespace.
//!
//! Checked, as BuildKit does it: an unknown host key is accepted without
//! known hosts and refused with known hosts that do not hold it
//! (`git.knownsshhosts` in raw LLB); the Dockerfile frontend pins the keys
//! of a scan of the host (`llb.Git`'s), so a key other than the scanned
//! one is refused; a build whose client forwards no
//! agent fails before anything is fetched with BuildKit's
//! `no SSH key "default" forwarded from the client`; a git context over
//! ssh forwards `$SSH_AUTH_SOCK` without `--ssh` (buildx's rule) and says
//! so when there is none; the daemon's own `~/.ssh` is never written.

use kiln_integration::gitdaemon::git;
use kiln_integration::netns::NetNs;
use kiln_integration::ssh::{Agent, Sshd};
use kiln_integration::{buildctl_like_binary, Harness, KilnOutput, Kilnd};
use kiln_proto::control::control_client::ControlClient;
use kiln_proto::control::SolveRequest;
use kiln_proto::llb;
use kiln_session::hijack::{client_side, serve_session, SessionServices};
use kiln_session::ssh::{ForwardedAgents, SshServerImpl};
use prost::Message as _;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use tokio_util::sync::CancellationToken;

const APP_DOCKERFILE: &str = "FROM busybox\nCOPY hello.txt /hello.txt\n";

/// The server, the agent and the repositories of one test.
struct Fixture {
    // Fields drop in order: the server before the agent.
    sshd: Sshd,
    agent: Agent,
    /// The bare repository of the app (a Dockerfile and hello.txt).
    app: PathBuf,
    /// The bare repository `ADD` fetches (lib.txt).
    lib: PathBuf,
    /// Where the daemon's user's `known_hosts` is, and what it held.
    daemon_known_hosts: (PathBuf, Option<Vec<u8>>),
}

/// A bare repository at `bare` with `files` committed on `main` and
/// tagged `v1`.
fn bare_repo(work: &Path, bare: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(work).expect("work dir");
    git(work, &["init", "-q"]);
    for (name, body) in files {
        std::fs::write(work.join(name), body).expect("write");
    }
    git(work, &["add", "."]);
    git(work, &["commit", "-q", "-m", "first"]);
    git(work, &["tag", "v1"]);
    let dest = bare.to_str().expect("utf8");
    git(work, &["clone", "-q", "--bare", ".", dest]);
}

impl Fixture {
    fn start(h: &Harness) -> Fixture {
        let dir = h.state_dir().join("gitssh");
        let agent = Agent::with_key(&dir.join("agent"));
        let sshd = Sshd::start(&dir.join("sshd"), &[22, 2222], &agent.public_key);
        let app = dir.join("srv/app.git");
        bare_repo(
            &dir.join("work/app"),
            &app,
            &[("Dockerfile", APP_DOCKERFILE), ("hello.txt", "over ssh\n")],
        );
        let lib = dir.join("srv/lib.git");
        bare_repo(&dir.join("work/lib"), &lib, &[("lib.txt", "lib v1\n")]);
        let home = nix::unistd::User::from_uid(nix::unistd::getuid())
            .expect("passwd")
            .expect("an entry")
            .dir;
        let known = home.join(".ssh/known_hosts");
        let before = std::fs::read(&known).ok();
        Fixture {
            sshd,
            agent,
            app,
            lib,
            daemon_known_hosts: (known, before),
        }
    }

    /// `root@127.0.0.1:/…/NAME.git`, git's scp-like form (port 22).
    fn scp(&self, repo: &Path) -> String {
        format!("root@127.0.0.1:{}", repo.display())
    }

    /// `ssh://root@127.0.0.1:2222/…/NAME.git`.
    fn url(&self, repo: &Path) -> String {
        format!("ssh://root@127.0.0.1:2222{}", repo.display())
    }

    /// The daemon's `~/.ssh/known_hosts` (ssh's, from the passwd entry,
    /// whatever `HOME` says) is as it was.
    fn check_daemon_ssh_untouched(&self) {
        let (path, before) = &self.daemon_known_hosts;
        assert_eq!(
            &std::fs::read(path).ok(),
            before,
            "{} was written",
            path.display()
        );
    }
}

/// `kiln [--addr ADDR] build --progress plain ARGS` with `SSH_AUTH_SOCK`
/// set to `sock` (or unset) and a `HOME` of the test's.
fn build(
    h: &Harness,
    ns: &str,
    addr: Option<&str>,
    sock: Option<&Path>,
    args: &[&str],
) -> KilnOutput {
    let mut cmd = h.kiln_command(ns).expect("kiln command");
    cmd.env("HOME", h.state_dir().join("home"));
    match sock {
        Some(s) => cmd.env("SSH_AUTH_SOCK", s),
        None => cmd.env_remove("SSH_AUTH_SOCK"),
    };
    if let Some(a) = addr {
        cmd.args(["--addr", a]);
    }
    cmd.args(["build", "--progress", "plain"])
        .args(args)
        .output()
        .expect("kiln runs")
        .into()
}

/// Asserts that `cat FILES` in image `docker.io/library/TAG` prints `want`.
#[track_caller]
fn cat_is(h: &Harness, ns: &str, tag: &str, files: &[&str], want: &str) {
    let mut cmd = vec!["cat"];
    cmd.extend_from_slice(files);
    let id = tag.replace(':', "-");
    let image = format!("docker.io/library/{tag}");
    assert_eq!(h.run_image_expecting(ns, &image, &id, &cmd, want), want);
}

fn failed_with(out: &KilnOutput, text: &str) {
    assert!(!out.success, "built, expected {text:?}: {}", out.stderr);
    assert!(
        out.stderr.contains(text),
        "expected {text:?}: {}",
        out.stderr
    );
}

/// Runs `body` with a harness, everything in a network namespace of its
/// own (see the module's doc).
async fn in_netns<F, Fut>(tag: &str, body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let netns = NetNs::create(tag).expect("network namespace");
    netns
        .run(body)
        .await
        .expect("the test runs in its namespace");
}

#[tokio::test]
async fn embedded_builds_fetch_over_ssh_with_the_forwarded_agent() {
    in_netns("gitssh-e", || async {
        let ns = "gitssh-embedded";
        let h = Harness::with_busybox_private(ns).await;
        let f = Fixture::start(&h);
        let sock = Some(f.agent.socket.as_path());

        // The main context, scp-like, with --ssh default.
        let ctx = format!("{}#main", f.scp(&f.app));
        build(
            &h,
            ns,
            None,
            sock,
            &["--ssh", "default", "-t", "gitssh:scp", &ctx],
        )
        .ok();
        cat_is(&h, ns, "gitssh:scp", &["/hello.txt"], "over ssh\n");
        // ssh:// on another port, without --ssh: $SSH_AUTH_SOCK is
        // forwarded as buildx forwards it; the host key is the one the
        // frontend's key scan pinned, as `llb.Git` pins it.
        let logins = f.sshd.logins();
        let ctx = format!("{}#v1", f.url(&f.app));
        build(&h, ns, None, sock, &["-t", "gitssh:url", &ctx]).ok();
        cat_is(&h, ns, "gitssh:url", &["/hello.txt"], "over ssh\n");
        assert!(f.sshd.logins() > logins, "{}", f.sshd.log_text());
        // No agent at all.
        let out = build(&h, ns, None, None, &[&ctx]);
        failed_with(&out, "is a git repository over ssh");
        failed_with(&out, "make sure SSH_AUTH_SOCK is set");

        // ADD of repositories over ssh, both forms.
        let df = format!(
            "FROM busybox\nADD {}#v1 /lib\nADD {} /lib2\n",
            f.url(&f.lib),
            f.scp(&f.lib)
        );
        let local = h.context("gitssh-add", &[("Dockerfile", &df)]);
        let c = local.to_str().expect("utf8");
        build(
            &h,
            ns,
            None,
            sock,
            &["--ssh", "default", "-t", "gitssh:add", c],
        )
        .ok();
        cat_is(
            &h,
            ns,
            "gitssh:add",
            &["/lib/lib.txt", "/lib2/lib.txt"],
            "lib v1\nlib v1\n",
        );
        // The frontend pins the host keys it scanned (BuildKit's
        // `llb.Git`), and the fetch accepts only those: a scan that saw
        // another key (here a stand-in `ssh-keyscan` first on PATH, as if
        // someone else had answered it) fails the fetch.
        let scanner = h.state_dir().join("other-keyscan");
        std::fs::create_dir_all(&scanner).expect("mkdir");
        let client_key = std::fs::read_to_string(&f.agent.public_key).expect("public key");
        let other: Vec<&str> = client_key.split_whitespace().take(2).collect();
        let script = format!(
            "#!/bin/sh\necho '127.0.0.1 {k}'\necho '[127.0.0.1]:2222 {k}'\n",
            k = other.join(" ")
        );
        let fake = scanner.join("ssh-keyscan");
        std::fs::write(&fake, script).expect("write the stand-in");
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let path = format!(
            "{}:{}",
            scanner.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out: KilnOutput = h
            .kiln_command(ns)
            .expect("kiln command")
            .env("HOME", h.state_dir().join("home"))
            .env("SSH_AUTH_SOCK", &f.agent.socket)
            .env("PATH", path)
            .args([
                "build",
                "--progress",
                "plain",
                "--no-cache",
                "--ssh",
                "default",
                c,
            ])
            .output()
            .expect("kiln runs")
            .into();
        failed_with(&out, "Host key verification failed");
        // Without --ssh, BuildKit's words, before anything is fetched
        // (either ADD may be the first to fail).
        let logins = f.sshd.logins();
        let out = build(&h, ns, None, sock, &["--no-cache", c]);
        failed_with(&out, "no SSH key \"default\" forwarded from the client");
        assert_eq!(f.sshd.logins(), logins, "fetched without an agent");
        // An agent under another id is not `default`.
        let other = format!("other={}", f.agent.socket.display());
        let out = build(&h, ns, None, sock, &["--no-cache", "--ssh", &other, c]);
        failed_with(&out, "unset ssh forward key default");
        f.check_daemon_ssh_untouched();
    })
    .await;
}

/// `PREFIX<pid>x<n>`: a new id for each call.
fn unique(prefix: &str) -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}{}x{n}", std::process::id())
}

/// A session serving the agent at `sock` as `default` (or no SSH service
/// without one), for a raw `Control.Solve`; its id and what stops it.
async fn session(
    control: &mut ControlClient<tonic::transport::Channel>,
    sock: Option<&Path>,
) -> (
    String,
    CancellationToken,
    tokio::task::JoinHandle<Result<(), kiln_session::SessionError>>,
) {
    let id = unique("gitsshsession");
    let mut services = SessionServices::new();
    if let Some(sock) = sock {
        services.add(
            SshServerImpl::new(ForwardedAgents::new(BTreeMap::from([(
                "default".to_string(),
                sock.to_path_buf(),
            )])))
            .into_service(),
            SshServerImpl::METHODS,
        );
    }
    let (side, requests) = client_side();
    let req = kiln_session::hijack::session_request(&id, "", &services, requests).expect("ascii");
    let responses = control.session(req).await.expect("session").into_inner();
    let done = CancellationToken::new();
    let served = tokio::spawn(serve_session(
        side.attach(responses),
        services,
        done.clone(),
    ));
    (id, done, served)
}

/// Solves raw LLB: the git source of `url` (`git.mountsshsock=default`,
/// `git.knownsshhosts` when given) as the result, in a session that
/// forwards the agent at `sock`. The error's message on failure.
async fn solve_git(
    k: &Kilnd,
    url: &str,
    known_hosts: Option<&str>,
    sock: Option<&Path>,
) -> Result<(), String> {
    let ch = containerd_client::connect(&k.socket)
        .await
        .expect("connect to kilnd");
    let mut control = ControlClient::new(ch);
    let (session_id, done, served) = session(&mut control, sock).await;
    let host_path = url.trim_start_matches("ssh://root@");
    let mut attrs = HashMap::from([
        ("git.fullurl".to_string(), url.to_string()),
        ("git.mountsshsock".to_string(), "default".to_string()),
    ]);
    if let Some(k) = known_hosts {
        attrs.insert("git.knownsshhosts".to_string(), k.to_string());
    }
    let src = llb::Op {
        op: Some(llb::op::Op::Source(llb::SourceOp {
            identifier: format!("git://{host_path}#v1"),
            attrs,
        })),
        ..Default::default()
    }
    .encode_to_vec();
    let src_digest = kiln_solver::Digest::of(&src).to_string();
    let term = llb::Op {
        inputs: vec![llb::Input {
            digest: src_digest,
            index: 0,
        }],
        ..Default::default()
    }
    .encode_to_vec();
    let r = control
        .solve(SolveRequest {
            r#ref: unique("gitsshbuild"),
            definition: Some(llb::Definition {
                def: vec![src, term],
                ..Default::default()
            }),
            session: session_id,
            ..Default::default()
        })
        .await;
    done.cancel();
    let _ = served.await;
    r.map(|_| ()).map_err(|s| s.message().to_string())
}

#[tokio::test]
async fn kilnd_fetches_over_ssh_with_the_clients_agent() {
    in_netns("gitssh-d", || async {
        let ns = "gitssh-kilnd";
        let h = Harness::with_busybox_private(ns).await;
        let f = Fixture::start(&h);
        let sock = Some(f.agent.socket.as_path());
        let k = h.start_kilnd(ns).await.expect("kilnd starts");
        let addr = k.addr();

        // kiln --addr: the context scp-like; the CLI's session forwards
        // the agent, kilnd fetches.
        let ctx = format!("{}#main", f.scp(&f.app));
        let remote = Some(addr.as_str());
        build(
            &h,
            ns,
            remote,
            sock,
            &["--ssh", "default", "-t", "gitssh:remote", &ctx],
        )
        .ok();
        cat_is(&h, ns, "gitssh:remote", &["/hello.txt"], "over ssh\n");

        // buildctl --ssh default --opt context=ssh://…
        let empty = h.context("gitssh-empty", &[]);
        std::fs::create_dir_all(&empty).expect("empty context");
        let buildctl = |ssh: bool| {
            let mut cmd = Command::new(buildctl_like_binary().expect("buildctl-like"));
            cmd.arg(&addr)
                .arg(&empty)
                .arg("docker.io/library/gitssh:buildctl")
                .env(
                    "BUILDCTL_LIKE_OPTS",
                    format!("context={}#v1", f.url(&f.app)),
                );
            if ssh {
                cmd.env(
                    "BUILDCTL_LIKE_SSH",
                    format!("default={}", f.agent.socket.display()),
                );
            }
            KilnOutput::from(cmd.output().expect("buildctl-like runs"))
        };
        buildctl(true).ok();
        cat_is(&h, ns, "gitssh:buildctl", &["/hello.txt"], "over ssh\n");
        let logins = f.sshd.logins();
        failed_with(
            &buildctl(false),
            "no SSH key \"default\" forwarded from the client",
        );
        assert_eq!(f.sshd.logins(), logins, "fetched without an agent");

        // ADD over ssh through kilnd.
        let df = format!("FROM busybox\nADD {} /lib\n", f.scp(&f.lib));
        let local = h.context("gitssh-add-remote", &[("Dockerfile", &df)]);
        let c = local.to_str().expect("utf8");
        build(
            &h,
            ns,
            remote,
            sock,
            &["--ssh", "default", "-t", "gitssh:addremote", c],
        )
        .ok();
        cat_is(&h, ns, "gitssh:addremote", &["/lib/lib.txt"], "lib v1\n");

        // Known hosts (raw LLB, as `llb.KnownSSHHosts` sends them): the
        // server's key is checked against them.
        let url = f.url(&f.lib);
        // Another key (the client's own) under this host's name.
        let client_key = std::fs::read_to_string(&f.agent.public_key).expect("public key");
        let other = client_key
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let err = solve_git(&k, &url, Some(&format!("[127.0.0.1]:2222 {other}")), sock)
            .await
            .expect_err("another host key");
        assert!(err.contains("Host key verification failed"), "{err}");
        solve_git(&k, &url, Some(&f.sshd.known_hosts_line(2222)), sock)
            .await
            .expect("the server's key");
        // No agent in the session.
        let err = solve_git(&k, &url, None, None).await.expect_err("no agent");
        assert!(
            err.contains("no SSH key \"default\" forwarded from the client"),
            "{err}"
        );
        f.check_daemon_ssh_untouched();
    })
    .await;
}
