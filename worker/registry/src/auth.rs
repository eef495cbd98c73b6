//! The registry auth protocol's pure parts: `WWW-Authenticate` challenges,
//! token scopes and token answers.

use std::collections::BTreeMap;

/// One challenge of a `WWW-Authenticate` header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// `Bearer realm="...",service="...",scope="..."`: get a token from
    /// the realm.
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    /// `Basic realm="..."`: send the credentials with every request.
    Basic,
}

/// Parses a `WWW-Authenticate` header value: one or more challenges, each
/// a scheme followed by `key=value` or `key="quoted value"` parameters.
/// Unknown schemes and a Bearer challenge without a realm are skipped.
pub(crate) fn parse_challenges(header: &str) -> Vec<Challenge> {
    let mut out = Vec::new();
    let mut rest = header.trim();
    while !rest.is_empty() {
        // The scheme: a token up to whitespace.
        let end = rest
            .find(|c: char| c.is_ascii_whitespace() || c == ',')
            .unwrap_or(rest.len());
        let scheme = rest[..end].to_ascii_lowercase();
        rest = rest[end..].trim_start_matches([' ', '\t', ',']);
        let mut params = BTreeMap::new();
        // Parameters until the next scheme (a token not followed by `=`).
        while let Some(eq) = rest.find('=') {
            let key = &rest[..eq];
            if key.is_empty() || key.contains(|c: char| c.is_ascii_whitespace() || c == ',') {
                break;
            }
            let after = &rest[eq + 1..];
            let (value, remaining) = if let Some(q) = after.strip_prefix('"') {
                let mut value = String::new();
                let mut chars = q.char_indices();
                let mut end = q.len();
                while let Some((i, c)) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some((_, n)) = chars.next() {
                                value.push(n);
                            }
                        }
                        '"' => {
                            end = i + 1;
                            break;
                        }
                        c => value.push(c),
                    }
                }
                (value, &q[end.min(q.len())..])
            } else {
                let end = after.find(',').unwrap_or(after.len());
                (after[..end].trim().to_string(), &after[end..])
            };
            params.insert(key.to_ascii_lowercase(), value);
            rest = remaining.trim_start_matches([' ', '\t', ',']);
        }
        match scheme.as_str() {
            "bearer" => {
                if let Some(realm) = params.remove("realm") {
                    out.push(Challenge::Bearer {
                        realm,
                        service: params.remove("service"),
                        scope: params.remove("scope"),
                    });
                }
            }
            "basic" => out.push(Challenge::Basic),
            _ => {}
        }
        if end == 0 {
            break; // nothing consumed: malformed
        }
    }
    out
}

/// The token scopes of a request: `repository:<path>:<actions>` each.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Scopes(Vec<String>);

impl Scopes {
    /// `repository:<path>:pull`.
    pub(crate) fn pull(path: &str) -> Scopes {
        Scopes(vec![format!("repository:{path}:pull")])
    }

    /// `repository:<path>:pull,push`.
    pub(crate) fn push(path: &str) -> Scopes {
        Scopes(vec![format!("repository:{path}:pull,push")])
    }

    /// Push to `path`, mounting from `from` (which needs pull there).
    pub(crate) fn mount(path: &str, from: &str) -> Scopes {
        let mut s = Scopes::push(path).0;
        if from != path {
            s.push(format!("repository:{from}:pull"));
        }
        Scopes(s)
    }

    pub(crate) fn as_slice(&self) -> &[String] {
        &self.0
    }

    /// The cache key: the scopes joined by spaces.
    pub(crate) fn key(&self) -> String {
        self.0.join(" ")
    }
}

/// A token server's answer (docker's token spec: `token`, or OAuth2's
/// `access_token`, and `expires_in` seconds).
#[derive(Debug, serde::Deserialize)]
pub(crate) struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl TokenAnswer {
    /// The token and its lifetime in seconds (docker's default 60 s when
    /// the server gives none).
    pub(crate) fn token(self) -> Option<(String, u64)> {
        let t = self
            .token
            .filter(|t| !t.is_empty())
            .or(self.access_token.filter(|t| !t.is_empty()))?;
        Some((t, self.expires_in.filter(|e| *e > 0).unwrap_or(60)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bearer(realm: &str, service: Option<&str>, scope: Option<&str>) -> Challenge {
        Challenge::Bearer {
            realm: realm.into(),
            service: service.map(Into::into),
            scope: scope.map(Into::into),
        }
    }

    #[test]
    fn docker_hub_challenge() {
        assert_eq!(
            parse_challenges(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#
            ),
            [bearer(
                "https://auth.docker.io/token",
                Some("registry.docker.io"),
                Some("repository:library/busybox:pull")
            )]
        );
    }

    #[test]
    fn scopes_with_commas_and_escapes_stay_whole() {
        assert_eq!(
            parse_challenges(
                r#"bearer realm="https://r/t", scope="repository:a/b:pull,push", service="x \"y\"""#
            ),
            [bearer(
                "https://r/t",
                Some("x \"y\""),
                Some("repository:a/b:pull,push")
            )]
        );
    }

    #[test]
    fn basic_and_several_challenges() {
        assert_eq!(
            parse_challenges(r#"Basic realm="Registry Realm""#),
            [Challenge::Basic]
        );
        assert_eq!(parse_challenges("Basic"), [Challenge::Basic]);
        assert_eq!(
            parse_challenges(
                r#"Negotiate, Basic realm="r", Bearer realm=https://t/token,service=s"#
            ),
            [Challenge::Basic, bearer("https://t/token", Some("s"), None)]
        );
    }

    #[test]
    fn malformed_challenges_are_skipped() {
        assert_eq!(parse_challenges(""), []);
        assert_eq!(parse_challenges("Bearer service=\"s\""), []);
        assert_eq!(
            parse_challenges("Bearer realm=\"unterminated"),
            [bearer("unterminated", None, None)]
        );
        assert_eq!(parse_challenges("==="), []);
    }

    #[test]
    fn scopes() {
        assert_eq!(Scopes::pull("a/b").key(), "repository:a/b:pull");
        assert_eq!(Scopes::push("a/b").key(), "repository:a/b:pull,push");
        assert_eq!(
            Scopes::mount("a/b", "c/d").as_slice(),
            ["repository:a/b:pull,push", "repository:c/d:pull"]
        );
        assert_eq!(Scopes::mount("a/b", "a/b"), Scopes::push("a/b"));
    }

    #[test]
    fn token_answers() {
        let t = |s: &str| {
            serde_json::from_str::<TokenAnswer>(s)
                .expect("json")
                .token()
        };
        assert_eq!(
            t(r#"{"token":"a","expires_in":300}"#),
            Some(("a".into(), 300))
        );
        assert_eq!(t(r#"{"access_token":"b"}"#), Some(("b".into(), 60)));
        assert_eq!(
            t(r#"{"token":"","access_token":"c"}"#),
            Some(("c".into(), 60))
        );
        assert_eq!(t(r#"{"issued_at":"x"}"#), None);
    }
}
