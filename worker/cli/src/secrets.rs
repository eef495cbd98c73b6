//! `--secret` (buildx's syntax): `id=X,src=FILE`, `id=X,env=VAR`,
//! `type=env|file`, or `id=X` alone (the env var X when it is set, else
//! the file X). The same specs serve the embedded engine
//! ([`kiln_engine::secrets::SecretSource`]) and, through `--addr`, the
//! daemon asking over the session.

use kiln_engine::secrets::{SecretError, SecretSource, MAX_SECRET_SIZE};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where one secret's value is read.
#[derive(Clone, Debug, PartialEq, Eq)]
enum From {
    File(PathBuf),
    Env(String),
}

/// The secrets of one `kiln build`, by id.
#[derive(Clone, Debug, Default)]
pub struct Secrets {
    by_id: BTreeMap<String, From>,
}

impl Secrets {
    /// Parses the `--secret` values; a malformed one is an error naming it.
    pub fn parse(specs: &[String]) -> anyhow::Result<Secrets> {
        let mut by_id = BTreeMap::new();
        for spec in specs.iter().filter(|s| !s.is_empty()) {
            let (id, from) = parse_one(spec)?;
            if let From::File(p) = &from {
                let meta = std::fs::metadata(p).map_err(|e| {
                    anyhow::anyhow!("--secret {spec}: failed to stat {}: {e}", p.display())
                })?;
                if meta.len() > MAX_SECRET_SIZE as u64 {
                    anyhow::bail!("--secret {spec}: secret {id} too big. max size 500KB");
                }
            }
            by_id.insert(id, from);
        }
        Ok(Secrets { by_id })
    }

    /// The secret `id`'s bytes, `None` when no `--secret` named it.
    pub fn read(&self, id: &str) -> std::io::Result<Option<Vec<u8>>> {
        match self.by_id.get(id) {
            None => Ok(None),
            Some(From::Env(v)) => {
                Ok(Some(std::env::var_os(v).map_or_else(Vec::new, |s| {
                    std::os::unix::ffi::OsStringExt::into_vec(s)
                })))
            }
            Some(From::File(p)) => std::fs::read(p).map(Some),
        }
    }
}

fn parse_one(spec: &str) -> anyhow::Result<(String, From)> {
    let (mut id, mut src, mut env, mut typ) = (None, None, None, None);
    for field in spec.split(',') {
        let Some((key, value)) = field.split_once('=') else {
            anyhow::bail!("--secret {spec}: invalid field '{field}' must be a key=value pair");
        };
        match key.to_lowercase().as_str() {
            "type" => match value {
                "file" | "env" => typ = Some(value.to_string()),
                _ => anyhow::bail!("--secret {spec}: unsupported secret type {value:?}"),
            },
            "id" => id = Some(value.to_string()),
            "source" | "src" => src = Some(value.to_string()),
            "env" => env = Some(value.to_string()),
            _ => anyhow::bail!("--secret {spec}: unexpected key '{key}' in '{field}'"),
        }
    }
    let Some(id) = id.filter(|i| !i.is_empty()) else {
        anyhow::bail!("--secret {spec}: secret missing ID");
    };
    if typ.as_deref() == Some("env") && env.is_none() {
        env = src.take();
    }
    let from = match (src, env) {
        (Some(_), Some(_)) => {
            anyhow::bail!(
                "--secret {spec}: a secret reads a file (src) or an env var (env), not both"
            )
        }
        (Some(f), None) => From::File(PathBuf::from(f)),
        (None, Some(e)) => From::Env(e),
        (None, None) if typ.as_deref() == Some("env") || std::env::var_os(&id).is_some() => {
            From::Env(id.clone())
        }
        (None, None) => From::File(PathBuf::from(&id)),
    };
    Ok((id, from))
}

impl kiln_session::secrets::SecretStore for Secrets {
    fn secret(&self, id: &str) -> std::io::Result<Option<Vec<u8>>> {
        self.read(id)
    }
}

#[async_trait::async_trait]
impl SecretSource for Secrets {
    async fn get(&self, id: &str) -> Result<Option<Vec<u8>>, SecretError> {
        self.read(id).map_err(|e| SecretError {
            id: id.to_string(),
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildx_forms_parse() {
        let d = tempfile::tempdir().expect("tempdir");
        let f = d.path().join("tok");
        std::fs::write(&f, "s3cret").expect("write");
        let file = format!("id=tok,src={}", f.display());
        let s = Secrets::parse(&[file, "id=e,env=KILN_TEST_SECRET_ENV".into()]).expect("parse");
        assert_eq!(s.read("tok").expect("read"), Some(b"s3cret".to_vec()));
        assert_eq!(s.read("nope").expect("read"), None);
        assert_eq!(
            parse_one("id=a,type=env,src=VAR").expect("parse").1,
            From::Env("VAR".into())
        );
        assert_eq!(
            parse_one("type=file,id=a").expect("parse").1,
            From::File("a".into())
        );
    }

    #[test]
    fn bad_specs_are_named() {
        for (spec, want) in [
            ("src=x", "secret missing ID"),
            ("id=a,type=ssh", "unsupported secret type \"ssh\""),
            ("id=a,bogus=1", "unexpected key 'bogus' in 'bogus=1'"),
            ("id=a,src", "invalid field 'src' must be a key=value pair"),
            (
                "id=a,src=/nonexistent/kiln-secret",
                "failed to stat /nonexistent/kiln-secret",
            ),
        ] {
            let e = Secrets::parse(&[spec.to_string()])
                .expect_err(spec)
                .to_string();
            assert!(e.contains(want), "{spec}: {e}");
            assert!(e.contains(spec), "{spec}: the error names the flag: {e}");
        }
    }
}
