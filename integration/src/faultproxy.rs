//! A fault-injecting TCP proxy for the pull tests: it sits between kiln
//! and a real `docker-registry` (plain HTTP/1.1) and misbehaves on the
//! responses to requests whose path contains a pattern (a layer's
//! `/blobs/sha256:...`): it cuts the connection after some body bytes,
//! stalls, or flips a body byte. Everything else passes through
//! untouched, so the registry on the other side is the real one.
//!
//! It understands just enough HTTP/1.1 to find response bodies: request
//! lines on the way in (method and path, in order, no pipelining needed),
//! and on the way out the status line and headers, `Content-Length`, and
//! that HEAD and 204/304 answers have no body. A chunked response stops
//! the parsing for that connection (it is passed on untouched).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// What to do to a matching response's body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Pass everything.
    None,
    /// Close the connection after `after` body bytes, for the first
    /// `times` matching responses (then pass them).
    Cut { after: u64, times: usize },
    /// Stop sending after `after` body bytes and keep the connection open
    /// until the client gives up.
    Stall { after: u64 },
    /// Flip every bit of the body byte at offset `at` (the length stays
    /// right, the digest does not).
    Flip { at: u64 },
}

#[derive(Debug)]
struct Rule {
    pattern: String,
    fault: Fault,
    /// Matching responses seen.
    hits: usize,
    /// Connections accepted.
    connections: usize,
    /// Matching requests that asked for a byte range (`Range:` header).
    ranged: usize,
}

/// A running proxy; it stops when dropped. It runs on a thread and
/// runtime of its own, so a test may block its own thread (waiting for a
/// `kiln` process) while the proxy serves.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    rule: Arc<Mutex<Rule>>,
    stop: CancellationToken,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `target`.
    pub fn start(target: SocketAddr) -> std::io::Result<FaultProxy> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let rule = Arc::new(Mutex::new(Rule {
            pattern: String::new(),
            fault: Fault::None,
            hits: 0,
            connections: 0,
            ranged: 0,
        }));
        let stop = CancellationToken::new();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let (r, token) = (rule.clone(), stop.clone());
        std::thread::spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = TcpListener::from_std(std_listener) else {
                    return;
                };
                loop {
                    let accepted = tokio::select! {
                        a = listener.accept() => a,
                        _ = token.cancelled() => return,
                    };
                    let Ok((client, _)) = accepted else { continue };
                    if let Ok(mut g) = r.lock() {
                        g.connections += 1;
                    }
                    let (r, token) = (r.clone(), token.clone());
                    tokio::spawn(async move {
                        if let Ok(server) = TcpStream::connect(target).await {
                            tokio::select! {
                                _ = relay(client, server, r) => {}
                                _ = token.cancelled() => {}
                            }
                        }
                    });
                }
            });
            // Dropping the runtime ends the connections still open.
        });
        Ok(FaultProxy { addr, rule, stop })
    }

    /// `127.0.0.1:PORT`, the registry address kiln is given.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// From now on, applies `fault` to responses to requests whose path
    /// contains `pattern`.
    pub fn set(&self, pattern: &str, fault: Fault) {
        if let Ok(mut g) = self.rule.lock() {
            g.pattern = pattern.to_string();
            g.fault = fault;
            g.hits = 0;
            g.ranged = 0;
        }
    }

    /// How many matching responses were seen since the last [`Self::set`].
    pub fn hits(&self) -> usize {
        self.rule.lock().map(|g| g.hits).unwrap_or(0)
    }

    /// How many matching requests since the last [`Self::set`] asked for a
    /// byte range (a resumed download).
    pub fn ranged(&self) -> usize {
        self.rule.lock().map(|g| g.ranged).unwrap_or(0)
    }

    /// How many connections were accepted in all.
    pub fn connections(&self) -> usize {
        self.rule.lock().map(|g| g.connections).unwrap_or(0)
    }
}

/// One request seen on the way in: is its response to be tampered with,
/// and does it have a body at all (not HEAD)?
#[derive(Clone, Copy, Debug)]
struct Pending {
    matches: bool,
    head: bool,
}

async fn relay(client: TcpStream, server: TcpStream, rule: Arc<Mutex<Rule>>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let pending: Arc<Mutex<VecDeque<Pending>>> = Arc::default();

    // Client -> server: pass on, noting each request line.
    let p = pending.clone();
    let r = rule.clone();
    let upstream = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        let mut line = Vec::new();
        let mut in_headers = false;
        let mut current_matches = false;
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Request lines: the first line after a blank line (request
            // bodies are not sent by a pulling client).
            for &b in &buf[..n] {
                line.push(b);
                if b != b'\n' {
                    continue;
                }
                let text = String::from_utf8_lossy(&line).trim_end().to_string();
                line.clear();
                if !in_headers && !text.is_empty() {
                    let mut parts = text.split(' ');
                    let method = parts.next().unwrap_or_default().to_string();
                    let path = parts.next().unwrap_or_default().to_string();
                    let matches = r
                        .lock()
                        .map(|g| !g.pattern.is_empty() && path.contains(&g.pattern))
                        .unwrap_or(false);
                    if let Ok(mut q) = p.lock() {
                        q.push_back(Pending {
                            matches,
                            head: method == "HEAD",
                        });
                    }
                    current_matches = matches;
                    in_headers = true;
                } else if in_headers && text.is_empty() {
                    in_headers = false;
                } else if in_headers
                    && current_matches
                    && text.to_ascii_lowercase().starts_with("range:")
                {
                    if let Ok(mut g) = r.lock() {
                        g.ranged += 1;
                    }
                }
            }
            if sw.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    });

    // Server -> client: find each response's body and apply the fault.
    let mut buf = vec![0u8; 64 << 10];
    let mut head = Vec::new();
    let mut state = Out::Headers;
    'conn: loop {
        let n = match sr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut out = Vec::with_capacity(n);
        let mut i = 0;
        while i < n {
            match &mut state {
                Out::Passthrough => {
                    out.extend_from_slice(&buf[i..n]);
                    i = n;
                }
                Out::Headers => {
                    head.push(buf[i]);
                    out.push(buf[i]);
                    i += 1;
                    if head.ends_with(b"\r\n\r\n") {
                        let req = pending.lock().ok().and_then(|mut q| q.pop_front());
                        state = body_state(&head, req, &rule);
                        head.clear();
                    }
                }
                Out::Body {
                    left,
                    offset,
                    fault,
                } => {
                    let take = (n - i).min(usize::try_from(*left).unwrap_or(usize::MAX));
                    let chunk = &buf[i..i + take];
                    match fault {
                        Fault::None => out.extend_from_slice(chunk),
                        Fault::Flip { at } => {
                            for (k, &b) in chunk.iter().enumerate() {
                                let pos = *offset + k as u64;
                                out.push(if pos == *at { !b } else { b });
                            }
                        }
                        Fault::Cut { after, .. } | Fault::Stall { after } => {
                            let keep = after.saturating_sub(*offset).min(take as u64) as usize;
                            out.extend_from_slice(&chunk[..keep]);
                            if keep < take {
                                let stall = matches!(fault, Fault::Stall { .. });
                                let _ = cw.write_all(&out).await;
                                let _ = cw.flush().await;
                                if stall {
                                    // Hold the connection open, silent.
                                    std::future::pending::<()>().await;
                                }
                                break 'conn;
                            }
                        }
                    }
                    *offset += take as u64;
                    *left -= take as u64;
                    i += take;
                    if *left == 0 {
                        state = Out::Headers;
                    }
                }
            }
        }
        if cw.write_all(&out).await.is_err() {
            break;
        }
    }
    upstream.abort();
    // Dropping both halves closes the client's connection (a cut).
}

enum Out {
    Headers,
    Body {
        left: u64,
        offset: u64,
        fault: Fault,
    },
    /// A response whose body length is unknown: pass the rest on.
    Passthrough,
}

/// The state after a response's headers: its body (with the fault when it
/// answers a matching request), none, or unknown.
fn body_state(head: &[u8], req: Option<Pending>, rule: &Arc<Mutex<Rule>>) -> Out {
    let text = String::from_utf8_lossy(head).to_ascii_lowercase();
    let status: u16 = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let req = req.unwrap_or(Pending {
        matches: false,
        head: false,
    });
    if req.head || status == 204 || status == 304 || (100..200).contains(&status) {
        return Out::Headers;
    }
    let length = text.lines().find_map(|l| {
        l.strip_prefix("content-length:")
            .and_then(|v| v.trim().parse::<u64>().ok())
    });
    let Some(left) = length else {
        return Out::Passthrough;
    };
    if left == 0 {
        return Out::Headers;
    }
    let mut fault = Fault::None;
    if req.matches && (200..300).contains(&status) {
        if let Ok(mut g) = rule.lock() {
            g.hits += 1;
            fault = match g.fault.clone() {
                Fault::Cut { after, times } if g.hits <= times => Fault::Cut { after, times },
                Fault::Cut { .. } => Fault::None,
                f => f,
            };
        }
    }
    Out::Body {
        left,
        offset: 0,
        fault,
    }
}
