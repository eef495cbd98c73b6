//! Where registry credentials come from: a trait, so the embedded CLI can
//! read `~/.docker/config.json` ([`DockerConfig`]) while kilnd asks the
//! client's session (its Auth service) and never holds them.

use crate::error::{RegistryError, Result};
use async_trait::async_trait;

/// A credential for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// A user name and password (or personal access token), sent as basic
    /// auth to the registry or its token server.
    Basic { username: String, password: String },
    /// An identity (refresh) token, exchanged at the token server with an
    /// OAuth2 `refresh_token` grant.
    IdentityToken(String),
}

impl std::fmt::Debug for Credential {
    // Secrets never reach a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { username, .. } => f
                .debug_struct("Basic")
                .field("username", username)
                .field("password", &"<redacted>")
                .finish(),
            Credential::IdentityToken(_) => f.write_str("IdentityToken(<redacted>)"),
        }
    }
}

/// A source of registry credentials, asked only when a registry demands
/// authentication.
#[async_trait]
pub trait Credentials: Send + Sync + std::fmt::Debug {
    /// The credential for `host`, the registry host contacted
    /// (`host[:port]`; docker.io is contacted as `registry-1.docker.io`,
    /// as BuildKit's session Auth asks). Mapping it to the key docker's
    /// config.json uses (`https://index.docker.io/v1/` for Docker Hub) is
    /// the implementation's job. `None`: no credential, go anonymous.
    async fn get(&self, host: &str) -> Result<Option<Credential>, RegistryError>;
}

/// No credentials: anonymous pulls only.
#[derive(Clone, Copy, Debug, Default)]
pub struct Anonymous;

#[async_trait]
impl Credentials for Anonymous {
    async fn get(&self, _host: &str) -> Result<Option<Credential>> {
        Ok(None)
    }
}

/// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`:
/// `auths`, `credHelpers` and `credsStore` (through `docker-credential-*`
/// helpers), as `docker login` leaves them.
#[derive(Clone, Copy, Debug, Default)]
pub struct DockerConfig;

/// The key docker's config.json uses for a registry host.
pub fn docker_config_key(host: &str) -> String {
    match host {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => {
            "https://index.docker.io/v1/".to_string()
        }
        h => h.to_string(),
    }
}

#[async_trait]
impl Credentials for DockerConfig {
    async fn get(&self, host: &str) -> Result<Option<Credential>> {
        let owned = host.to_string();
        tokio::task::spawn_blocking(move || match config_path() {
            Some(path) => lookup(&path, &owned),
            None => Ok(None),
        })
        .await
        .map_err(|e| RegistryError::Credentials {
            host: host.to_string(),
            message: format!("the lookup task failed: {e}"),
        })?
    }
}

/// `$DOCKER_CONFIG/config.json`, else `$HOME/.docker/config.json`.
fn config_path() -> Option<std::path::PathBuf> {
    let dir = match std::env::var_os("DOCKER_CONFIG") {
        Some(d) => std::path::PathBuf::from(d),
        None => std::path::PathBuf::from(std::env::var_os("HOME")?).join(".docker"),
    };
    Some(dir.join("config.json"))
}

/// The blocking lookup: the config file at `path` (missing: anonymous),
/// then the helper it names.
fn lookup(path: &std::path::Path, host: &str) -> Result<Option<Credential>> {
    use docker_credential::{CredentialRetrievalError as E, DockerCredential};
    let key = docker_config_key(host);
    // docker also accepts `https://host` keys written by older clients.
    let mut keys = vec![key.clone()];
    if key == host {
        keys.push(format!("https://{host}"));
        keys.push(format!("http://{host}"));
    }
    let cred_err = |message: String| RegistryError::Credentials {
        host: host.to_string(),
        message,
    };
    for k in &keys {
        let file = match std::fs::File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(cred_err(format!("{}: {e}", path.display()))),
        };
        match docker_credential::get_credential_from_reader(std::io::BufReader::new(file), k) {
            Ok(DockerCredential::UsernamePassword(username, password)) => {
                return Ok(Some(Credential::Basic { username, password }))
            }
            Ok(DockerCredential::IdentityToken(t)) => {
                return Ok(Some(Credential::IdentityToken(t)))
            }
            // Nothing for this host: anonymous.
            Err(E::NoCredentialConfigured) => {}
            Err(E::ConfigReadError | E::ConfigNotFound) => {
                return Err(cred_err(format!(
                    "{}: not a docker config file",
                    path.display()
                )))
            }
            // A helper that has nothing for the host says so on stdout.
            Err(E::HelperFailure { stdout, .. }) if stdout.contains("credentials not found") => {
                // Only the first key is asked of a credsStore helper.
                return Ok(None);
            }
            Err(e) => return Err(cred_err(e.to_string().trim_end().to_string())),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_uses_the_index_key() {
        for h in ["docker.io", "registry-1.docker.io", "index.docker.io"] {
            assert_eq!(docker_config_key(h), "https://index.docker.io/v1/");
        }
        assert_eq!(docker_config_key("127.0.0.1:5000"), "127.0.0.1:5000");
    }

    #[test]
    fn config_file_auths() {
        let dir = std::env::temp_dir().join(format!("kiln-registry-creds-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tempdir");
        let path = dir.join("config.json");
        // "dTpw" is base64 of "u:p".
        std::fs::write(
            &path,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dTpw"},
                "https://reg.example.com":{"identitytoken":"tok"}}}"#,
        )
        .expect("write");
        assert_eq!(
            lookup(&path, "registry-1.docker.io").expect("ok"),
            Some(Credential::Basic {
                username: "u".into(),
                password: "p".into()
            })
        );
        assert_eq!(
            lookup(&path, "reg.example.com").expect("ok"),
            Some(Credential::IdentityToken("tok".into()))
        );
        assert_eq!(lookup(&path, "other.example.com").expect("ok"), None);
        assert_eq!(
            lookup(&dir.join("missing.json"), "docker.io").expect("ok"),
            None
        );
        std::fs::write(&path, "{not json").expect("write");
        let err = lookup(&path, "docker.io").expect_err("bad file");
        assert_eq!(
            err.to_string(),
            format!(
                "docker.io: reading credentials: {}: not a docker config file",
                path.display()
            )
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn secrets_are_not_printed() {
        let c = Credential::Basic {
            username: "u".into(),
            password: "hunter2".into(),
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{:?}", Credential::IdentityToken("tok".into())).contains("tok"));
    }
}
