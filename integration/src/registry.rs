//! A private OCI registry for the registry tests: Debian's
//! `docker-registry` (distribution 2.8) on a free loopback port, with
//! filesystem storage in a temporary directory, optionally htpasswd basic
//! auth, TLS with a server certificate from the test CA (`pki`) and
//! client-certificate verification. Its access log is a file the tests read
//! to check which requests were made (or that none were). Killed on drop.
//!
//! [`Registry::push_image`] fills it with the real `ctr images push` from a
//! harness containerd, so tests of kiln's pull never depend on kiln's push.

use crate::pki::{free_port, Pki};
use crate::{Harness, HarnessResult};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How to run a [`Registry`].
#[derive(Clone, Debug, Default)]
pub struct RegistryOptions {
    /// Require HTTP basic auth for this user and password (htpasswd file
    /// made with `htpasswd -Bbn`).
    pub basic_auth: Option<(String, String)>,
    /// Serve HTTPS with a certificate for `localhost` from a test CA; the
    /// registry is then addressed as `localhost:PORT`.
    pub tls: bool,
    /// With `tls`: require a client certificate signed by the test CA.
    pub client_certs: bool,
}

/// A running `docker-registry`.
#[derive(Debug)]
pub struct Registry {
    dir: tempfile::TempDir,
    child: Option<Child>,
    port: u16,
    host: String,
    options: RegistryOptions,
    pki: Option<Pki>,
}

/// One line of the registry's access log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoggedRequest {
    /// `GET`, `HEAD`, `PUT`, ...
    pub method: String,
    /// The request path with its query (`/v2/a/manifests/latest?ns=x`).
    pub path: String,
    /// The answer's status code.
    pub status: u16,
}

impl Registry {
    /// A plain-HTTP registry without auth on `127.0.0.1:PORT`.
    pub async fn start() -> HarnessResult<Registry> {
        Self::start_with(RegistryOptions::default()).await
    }

    /// A registry with `options`.
    pub async fn start_with(options: RegistryOptions) -> HarnessResult<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("kiln-registry-")
            .tempdir_in("/tmp")
            .map_err(|e| format!("tempdir: {e}"))?;
        let port = free_port();
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: kiln-test-secret\n",
            dir.path().join("data").display()
        );
        let pki = options.tls.then(|| Pki::new(dir.path().join("pki")));
        if let Some(pki) = &pki {
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                pki.server.0, pki.server.1
            ));
            if options.client_certs {
                config.push_str(&format!("    clientcas:\n      - {}\n", pki.ca));
            }
        }
        if let Some((user, password)) = &options.basic_auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .map_err(|e| format!("htpasswd (install apache2-utils): {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "htpasswd failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout).map_err(|e| format!("htpasswd file: {e}"))?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                file.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).map_err(|e| format!("config.yml: {e}"))?;
        let file = |name: &str| {
            std::fs::File::create(dir.path().join(name)).map_err(|e| format!("{name}: {e}"))
        };
        // distribution writes the access log to stdout, its own log to stderr.
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(file("access.log")?)
            .stderr(file("registry.log")?)
            .spawn()
            .map_err(|e| format!("cannot start docker-registry (install it: .ci/install): {e}"))?;
        let host = if options.tls {
            format!("localhost:{port}")
        } else {
            format!("127.0.0.1:{port}")
        };
        let mut registry = Registry {
            dir,
            child: Some(child),
            port,
            host,
            options,
            pki,
        };
        registry.wait_answering().await?;
        Ok(registry)
    }

    /// Waits until `/v2/` answers (any HTTP status: 200, or 401 with auth).
    async fn wait_answering(&mut self) -> HarnessResult<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(format!(
                        "docker-registry exited ({status}): {}",
                        self.registry_log()
                    ));
                }
            }
            if self.probe() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "docker-registry did not answer in 30s: {}",
                    self.registry_log()
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// One GET /v2/ with curl (it speaks TLS; with a client cert if needed).
    fn probe(&self) -> bool {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "2",
        ]);
        if let Some(pki) = &self.pki {
            cmd.arg("--cacert").arg(&pki.ca);
            if self.options.client_certs {
                let (cert, key) = self.client_cert();
                cmd.arg("--cert").arg(cert).arg("--key").arg(key);
            }
        }
        cmd.arg(format!("{}://{}/v2/", self.scheme(), self.host));
        cmd.output().is_ok_and(|o| {
            let code = String::from_utf8_lossy(&o.stdout);
            code == "200" || code == "401"
        })
    }

    fn scheme(&self) -> &'static str {
        if self.options.tls {
            "https"
        } else {
            "http"
        }
    }

    /// `127.0.0.1:PORT`, or `localhost:PORT` with TLS (the certificate's
    /// name): the domain of references to this registry.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `host/repo` (`repo` may carry `:tag`).
    pub fn reference(&self, repo: &str) -> String {
        format!("{}/{repo}", self.host)
    }

    /// The test CA's certificate (PEM path), with TLS.
    pub fn ca(&self) -> Option<&str> {
        self.pki.as_ref().map(|p| p.ca.as_str())
    }

    /// A client certificate the registry accepts (cert, key), with TLS.
    pub fn client_cert(&self) -> (String, String) {
        let pki = self.pki.as_ref().expect("client certificates need tls");
        let cert = self.dir.path().join("pki/kiln-client.pem");
        let key = self.dir.path().join("pki/kiln-client-key.pem");
        if cert.exists() && key.exists() {
            return (cert.display().to_string(), key.display().to_string());
        }
        pki.client("kiln-client")
    }

    /// The `[registry."HOST"]` table of kilnd.toml that reaches this
    /// registry: `http = false` and `ca` with TLS (plus `keypair` when
    /// client certificates are required).
    pub fn kilnd_toml(&self) -> String {
        let mut t = format!("[registry.\"{}\"]\n", self.host);
        if let Some(ca) = self.ca() {
            t.push_str(&format!("http = false\nca = [\"{ca}\"]\n"));
            if self.options.client_certs {
                let (cert, key) = self.client_cert();
                t.push_str(&format!(
                    "[[registry.\"{}\".keypair]]\nkey = \"{key}\"\ncert = \"{cert}\"\n",
                    self.host
                ));
            }
        }
        t
    }

    /// The access log so far.
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// The registry's own log (errors, startup), for failure messages.
    pub fn registry_log(&self) -> String {
        let s = std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The requests of the access log so far, oldest first.
    pub fn requests(&self) -> Vec<LoggedRequest> {
        self.access_log()
            .lines()
            .filter_map(parse_access_line)
            .collect()
    }

    /// How many logged requests have `needle` in their path (for example
    /// `"/manifests/"` or `"/blobs/"`), any method.
    pub fn count_requests(&self, needle: &str) -> usize {
        self.requests()
            .iter()
            .filter(|r| r.path.contains(needle))
            .count()
    }

    /// The path of the registry's data (to break or inspect storage).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Pushes image `local` of `namespace` in `harness`'s containerd to
    /// `repo` (`name:tag`) in this registry with the real `ctr images
    /// push`, with whatever plain-HTTP, credentials and certificates it
    /// needs. Returns the full reference pushed.
    pub fn push_image(
        &self,
        harness: &Harness,
        namespace: &str,
        local: &str,
        repo: &str,
    ) -> HarnessResult<String> {
        let remote = self.reference(repo);
        let user = self
            .options
            .basic_auth
            .as_ref()
            .map(|(u, p)| format!("{u}:{p}"));
        let cert = self.options.client_certs.then(|| self.client_cert());
        let mut args = vec!["images", "push"];
        if !self.options.tls {
            args.push("--plain-http");
        }
        if let Some(u) = &user {
            args.extend(["--user", u.as_str()]);
        }
        if let Some(ca) = self.ca() {
            args.extend(["--tlscacert", ca]);
        }
        if let Some((c, k)) = &cert {
            args.extend(["--tlscert", c.as_str(), "--tlskey", k.as_str()]);
        }
        args.extend([remote.as_str(), local]);
        harness.ctr(namespace, &args)?;
        Ok(remote)
    }

    /// Freezes the registry (SIGSTOP): connections are still accepted by
    /// the kernel but nothing answers, as with a hung registry.
    pub fn pause(&self) -> HarnessResult<()> {
        self.signal(nix::sys::signal::Signal::SIGSTOP)
    }

    /// Lets a paused registry run again (SIGCONT).
    pub fn resume(&self) -> HarnessResult<()> {
        self.signal(nix::sys::signal::Signal::SIGCONT)
    }

    fn signal(&self, sig: nix::sys::signal::Signal) -> HarnessResult<()> {
        let child = self.child.as_ref().ok_or("the registry is not running")?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, sig).map_err(|e| format!("kill -{sig} {pid}: {e}"))
    }

    /// Stops the registry (for "registry went away" faults); the data stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Continue a paused registry first, so it is never left
            // stopped should the kill fail.
            let pid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT);
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The directory everything of this registry lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `127.0.0.1 - - [date] "GET /v2/ HTTP/1.1" 200 2 "" "ua"` (combined log
/// format) -> the request.
fn parse_access_line(line: &str) -> Option<LoggedRequest> {
    let (_, rest) = line.split_once('"')?;
    let (request, rest) = rest.split_once('"')?;
    let mut parts = request.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let status = rest.split_whitespace().next()?.parse().ok()?;
    Some(LoggedRequest {
        method,
        path,
        status,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_lines_parse() {
        assert_eq!(
            parse_access_line(
                r#"127.0.0.1 - - [01/Dec/2026:20:00:00 +0000] "HEAD /v2/a/b/blobs/sha256:ab HTTP/1.1" 404 157 "" "kiln/0.1.0""#
            ),
            Some(LoggedRequest {
                method: "HEAD".into(),
                path: "/v2/a/b/blobs/sha256:ab".into(),
                status: 404
            })
        );
        assert_eq!(parse_access_line("time=... level=info msg=listening"), None);
    }
}
