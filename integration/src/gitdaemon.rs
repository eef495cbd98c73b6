//! A `git daemon` on loopback for the git source and context tests
//! (`tests/e2e/addremote.rs`, `tests/e2e/gitcontext.rs`): the real server, its
//! verbose log counting the fetches it served.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// `git daemon` serving `base` on a loopback port, its log in a file.
#[derive(Debug)]
pub struct GitDaemon {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Drop for GitDaemon {
    /// `git daemon` runs `git-daemon` as its child: the whole process
    /// group goes, or the server outlives the test.
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.child.wait();
    }
}

impl GitDaemon {
    /// Starts it (Debian's `git` package), waiting until it listens.
    pub fn start(base: &Path, log: PathBuf) -> GitDaemon {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("bind")
            .local_addr()
            .expect("addr")
            .port();
        let mut child = Command::new("git")
            .args([
                "daemon",
                "--export-all",
                "--reuseaddr",
                "--verbose",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", base.display()),
            ])
            .arg(base)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .process_group(0)
            .spawn()
            .expect("git daemon starts (Debian package git)");
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return GitDaemon { child, port, log };
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = child.wait();
        panic!(
            "git daemon does not listen on {port}: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// How many fetches or ls-remotes the daemon has served.
    pub fn requests(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .matches("Request upload-pack")
            .count()
    }

    /// The `git://` URL of repository `repo` under the base path.
    pub fn url(&self, repo: &str) -> String {
        format!("git://127.0.0.1:{}/{repo}", self.port)
    }
}

/// Runs `git` in `dir` with a fixed identity, no system or user
/// configuration, `main` as the first branch and every protocol allowed
/// (submodules over file paths); its trimmed stdout.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .current_dir(dir)
        .args([
            "-c",
            "user.name=kiln",
            "-c",
            "user.email=kiln@example.invalid",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "protocol.allow=always",
        ])
        .args(args)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GIT_CONFIG_GLOBAL", "/dev/null")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}
