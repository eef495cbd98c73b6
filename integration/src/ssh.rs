//! ssh for the tests: a real `ssh-agent` holding a fresh key
//! (`tests/e2e/ssh.rs`, `tests/e2e/gitssh.rs`) and a private `sshd` serving git
//! repositories through `git-shell` (`tests/e2e/gitssh.rs`). Nothing here
//! reads or writes a user's `~/.ssh` or the system's sshd configuration:
//! keys, configuration and logs live in the directory the test gives.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Fails (never skips) when `tool` is not on `PATH`: `.ci/install`
/// provides it from Debian package `package`.
pub fn need(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(found, "{tool} is needed (Debian package {package})");
}

/// Runs `cmd`, failing the test on a non-zero exit; its stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("runs");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Makes an ed25519 key pair without a passphrase at `path` (and
/// `path.pub`).
fn keygen(path: &Path, comment: &str) {
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path));
}

/// An `ssh-agent -D` on a socket of its own holding one fresh key; killed
/// on drop.
#[derive(Debug)]
pub struct Agent {
    child: Child,
    /// The agent's socket (`SSH_AUTH_SOCK`).
    pub socket: PathBuf,
    /// The key's public half (`id_ed25519.pub`).
    pub public_key: PathBuf,
    /// The key as `ssh-add -l` lists it.
    pub listed: String,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Agent {
    /// Starts an agent in `dir` and adds a new key (comment
    /// `kiln-ssh-test`) to it.
    pub fn with_key(dir: &Path) -> Agent {
        for tool in ["ssh-agent", "ssh-keygen", "ssh-add"] {
            need(tool, "openssh-client");
        }
        std::fs::create_dir_all(dir).expect("agent dir");
        let socket = dir.join("agent.sock");
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&socket)
            .stdout(Stdio::null())
            .spawn()
            .expect("ssh-agent starts");
        let mut agent = Agent {
            child,
            socket,
            public_key: dir.join("id_ed25519.pub"),
            listed: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !agent.socket.exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let key = dir.join("id_ed25519");
        keygen(&key, "kiln-ssh-test");
        run(Command::new("ssh-add")
            .env("SSH_AUTH_SOCK", &agent.socket)
            .arg(&key));
        agent.listed = run(Command::new("ssh-add")
            .env("SSH_AUTH_SOCK", &agent.socket)
            .arg("-l"));
        assert!(agent.listed.contains("kiln-ssh-test"), "{}", agent.listed);
        agent
    }
}

/// A private `sshd` (Debian's openssh-server) on loopback: its own host
/// key, configuration and `authorized_keys` in a directory of the test,
/// one key allowed, and only as `root` running `git-shell` (so only git
/// fetches and pushes), with a `HOME` of its own. Killed on drop.
#[derive(Debug)]
pub struct Sshd {
    child: Child,
    log: PathBuf,
    /// The host key's public half, `TYPE BASE64`.
    pub host_key: String,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sshd {
    /// Starts sshd in `dir` listening on `127.0.0.1:PORT` for each of
    /// `ports`, letting in the key `public_key`; waits until it listens.
    /// Its process is in the caller's network namespace.
    pub fn start(dir: &Path, ports: &[u16], public_key: &Path) -> Sshd {
        need("/usr/sbin/sshd", "openssh-server");
        need("git-shell", "git");
        std::fs::create_dir_all(dir.join("home")).expect("sshd dir");
        // sshd's privilege separation directory, made by the Debian
        // service before it starts the system's sshd (which is not used).
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let host_key = dir.join("ssh_host_ed25519_key");
        keygen(&host_key, "kiln-sshd-test");
        let git_shell = run(Command::new("sh").args(["-c", "command -v git-shell"]));
        let key = std::fs::read_to_string(public_key).expect("public key");
        let authorized = dir.join("authorized_keys");
        std::fs::write(
            &authorized,
            format!(
                "command=\"env HOME={} GIT_CONFIG_NOSYSTEM=1 {} -c \\\"$SSH_ORIGINAL_COMMAND\\\"\",restrict {}",
                dir.join("home").display(),
                git_shell.trim(),
                key.trim()
            ),
        )
        .expect("authorized_keys");
        let mut config = String::new();
        for port in ports {
            config.push_str(&format!("ListenAddress 127.0.0.1:{port}\n"));
        }
        config.push_str(&format!(
            "HostKey {}\nAuthorizedKeysFile {}\nPidFile none\nStrictModes no\n\
             AllowUsers root\nPermitRootLogin prohibit-password\nPubkeyAuthentication yes\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
             PrintMotd no\nPrintLastLog no\nLogLevel VERBOSE\n",
            host_key.display(),
            authorized.display()
        ));
        let config_file = dir.join("sshd_config");
        std::fs::write(&config_file, config).expect("sshd_config");
        let log = dir.join("sshd.log");
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config_file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("sshd log"))
            .spawn()
            .expect("sshd starts");
        let pub_line = std::fs::read_to_string(host_key.with_extension("pub")).expect("host key");
        let host_key = pub_line
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let sshd = Sshd {
            child,
            log,
            host_key,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let text = sshd.log_text();
            if ports
                .iter()
                .all(|p| text.contains(&format!("Server listening on 127.0.0.1 port {p}.")))
            {
                return sshd;
            }
            assert!(
                Instant::now() < deadline,
                "sshd does not listen on {ports:?}: {text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What sshd logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// How many connections authenticated with the test's key.
    pub fn logins(&self) -> usize {
        self.log_text()
            .matches("Accepted publickey for root")
            .count()
    }

    /// The `known_hosts` line of this server on `port`, as `ssh-keyscan`
    /// writes it (`[127.0.0.1]:PORT` for a port other than 22).
    pub fn known_hosts_line(&self, port: u16) -> String {
        match port {
            22 => format!("127.0.0.1 {}", self.host_key),
            p => format!("[127.0.0.1]:{p} {}", self.host_key),
        }
    }
}
