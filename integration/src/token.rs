//! A token server for `docker-registry`'s token auth (docker's token
//! spec): the registry is real and verifies every token itself (an ES256
//! JWT whose `x5c` certificate chains to the test CA it trusts); this
//! server only decides who gets which access, as Docker Hub's auth service
//! does. GET with basic credentials, or POST with an OAuth2
//! `refresh_token` grant (identity tokens); no credentials get a token
//! with no access.

use crate::HarnessResult;
use base64::Engine as _;
use rcgen::SigningKey as _;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The `service` (token audience) the registry is configured with.
pub const SERVICE: &str = "kiln-test-registry";
/// The token issuer the registry trusts.
pub const ISSUER: &str = "kiln-test-issuer";

/// A running token server.
#[derive(Debug)]
pub struct TokenServer {
    port: u16,
    state: Arc<State>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct State {
    user: String,
    password: String,
    refresh_token: String,
    cert_der: Vec<u8>,
    key: rcgen::KeyPair,
    /// `METHOD query-or-form` of every token request, oldest first.
    log: Mutex<Vec<String>>,
    serial: AtomicU64,
    stop: AtomicBool,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl TokenServer {
    /// Starts a token server on a free loopback port that signs with
    /// `(cert, key)` (PEM paths; the cert must chain to the registry's
    /// `rootcertbundle`) and grants what is asked to `user`/`password` and
    /// to the identity token `refresh_token`.
    pub fn start(
        cert: &str,
        key: &str,
        user: &str,
        password: &str,
        refresh_token: &str,
    ) -> HarnessResult<TokenServer> {
        let read = |p: &str| std::fs::read_to_string(p).map_err(|e| format!("{p}: {e}"));
        let cert_pem = read(cert)?;
        let b64: String = cert_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        let cert_der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| format!("{cert}: {e}"))?;
        let key = rcgen::KeyPair::from_pem(&read(key)?).map_err(|e| format!("{key}: {e}"))?;
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("bind: {e}"))?;
        let port = listener
            .local_addr()
            .map_err(|e| format!("local_addr: {e}"))?
            .port();
        let state = Arc::new(State {
            user: user.to_string(),
            password: password.to_string(),
            refresh_token: refresh_token.to_string(),
            cert_der,
            key,
            log: Mutex::new(Vec::new()),
            serial: AtomicU64::new(0),
            stop: AtomicBool::new(false),
        });
        let st = state.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(conn) = conn {
                    let st = st.clone();
                    std::thread::spawn(move || {
                        let _ = serve(&st, conn);
                    });
                }
            }
        });
        Ok(TokenServer {
            port,
            state,
            thread: Some(thread),
        })
    }

    /// The realm URL the registry sends clients to.
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// `METHOD query-or-form` of every token request so far.
    pub fn requests(&self) -> Vec<String> {
        self.state
            .log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request on `conn` (answered with `Connection: close`).
fn serve(st: &State, conn: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut authorization = None;
    let mut length = 0usize;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "authorization" => authorization = Some(v.trim().to_string()),
                "content-length" => length = v.trim().parse().unwrap_or(0),
                _ => {}
            }
        }
    }
    let mut body = vec![0; length.min(1 << 16)];
    reader.read_exact(&mut body)?;
    let query = target.split_once('?').map_or("", |(_, q)| q).to_string();
    let params_text = if method == "POST" {
        String::from_utf8_lossy(&body).into_owned()
    } else {
        query
    };
    st.log
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(format!("{method} {params_text}"));
    let params = form_pairs(&params_text);
    let get = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let scopes: Vec<String> = params
        .iter()
        .filter(|(n, _)| n == "scope")
        .flat_map(|(_, v)| v.split(' ').map(str::to_string).collect::<Vec<_>>())
        .collect();
    let subject = if method == "POST" {
        match (get("grant_type").as_deref(), get("refresh_token")) {
            (Some("refresh_token"), Some(t)) if t == st.refresh_token => Some(st.user.clone()),
            _ => return answer(conn, 401, "{\"error\":\"invalid_grant\"}"),
        }
    } else {
        match authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Basic "))
        {
            Some(b64) => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .unwrap_or_default();
                if decoded == format!("{}:{}", st.user, st.password).as_bytes() {
                    Some(st.user.clone())
                } else {
                    return answer(
                        conn,
                        401,
                        "{\"details\":\"incorrect username or password\"}",
                    );
                }
            }
            None => None,
        }
    };
    let token = match sign(st, subject.as_deref(), &scopes) {
        Ok(t) => t,
        Err(e) => return answer(conn, 500, &format!("{{\"error\":{e:?}}}")),
    };
    answer(
        conn,
        200,
        &serde_json::json!({"token": token, "access_token": token, "expires_in": 300}).to_string(),
    )
}

fn answer(mut conn: TcpStream, status: u16, body: &str) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        401 => "Unauthorized",
        _ => "Error",
    };
    write!(
        conn,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    )
}

/// `a=b&c=d` with `+` and `%XX` decoded.
fn form_pairs(s: &str) -> Vec<(String, String)> {
    let decode = |v: &str| {
        let bytes = v.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                    match u8::from_str_radix(hex, 16) {
                        Ok(b) => {
                            out.push(b);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    };
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

/// An ES256 JWT granting `scopes` (`repository:name:actions`) to
/// `subject`; no subject, no access.
fn sign(st: &State, subject: Option<&str>, scopes: &[String]) -> Result<String, String> {
    let b64url = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let access: Vec<serde_json::Value> = match subject {
        Some(_) => scopes
            .iter()
            .filter_map(|s| {
                let mut p = s.splitn(3, ':');
                let (kind, name, actions) = (p.next()?, p.next()?, p.next()?);
                Some(serde_json::json!({
                    "type": kind, "name": name,
                    "actions": actions.split(',').collect::<Vec<_>>(),
                }))
            })
            .collect(),
        None => Vec::new(),
    };
    let header = serde_json::json!({
        "typ": "JWT", "alg": "ES256",
        "x5c": [base64::engine::general_purpose::STANDARD.encode(&st.cert_der)],
    });
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": subject.unwrap_or(""), "aud": SERVICE,
        "exp": now + 300, "nbf": now.saturating_sub(10), "iat": now,
        "jti": format!("kiln-{}", st.serial.fetch_add(1, Ordering::SeqCst)),
        "access": access,
    });
    let input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let der = st.key.sign(input.as_bytes()).map_err(|e| e.to_string())?;
    let raw = ecdsa_der_to_raw(&der).ok_or("unexpected ECDSA signature encoding")?;
    Ok(format!("{input}.{}", b64url(&raw)))
}

/// An ASN.1 `SEQUENCE { INTEGER r, INTEGER s }` as JWS's 64-byte `r || s`.
fn ecdsa_der_to_raw(der: &[u8]) -> Option<Vec<u8>> {
    let body = der.strip_prefix(&[0x30])?;
    let (&len, rest) = body.split_first()?;
    let rest = rest.get(..len as usize)?;
    let mut out = Vec::with_capacity(64);
    let mut cur = rest;
    for _ in 0..2 {
        let (&tag, r) = cur.split_first()?;
        if tag != 0x02 {
            return None;
        }
        let (&n, r) = r.split_first()?;
        let int = r.get(..n as usize)?;
        cur = &r[n as usize..];
        let trimmed: &[u8] = {
            let mut i = int;
            while i.len() > 32 && i.first() == Some(&0) {
                i = &i[1..];
            }
            i
        };
        if trimmed.len() > 32 {
            return None;
        }
        out.extend(std::iter::repeat_n(0u8, 32 - trimmed.len()));
        out.extend_from_slice(trimmed);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_pairs_decode() {
        assert_eq!(
            form_pairs("scope=repository%3Aa%2Fb%3Apull+repository:c:pull&service=s"),
            [
                (
                    "scope".to_string(),
                    "repository:a/b:pull repository:c:pull".to_string()
                ),
                ("service".to_string(), "s".to_string())
            ]
        );
    }

    #[test]
    fn signatures_convert_to_fixed_width() {
        // r = 0x00ff.. (33 bytes with the sign pad), s = 0x01 (1 byte).
        let mut der = vec![0x30, 0x26, 0x02, 0x21, 0x00];
        der.extend([0xff; 32]);
        der.extend([0x02, 0x01, 0x01]);
        let raw = ecdsa_der_to_raw(&der).expect("converts");
        assert_eq!(raw.len(), 64);
        assert_eq!(raw[..32], [0xff; 32]);
        assert_eq!(raw[32..63], [0; 31]);
        assert_eq!(raw[63], 1);
    }
}
