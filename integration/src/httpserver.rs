//! Test HTTP/1.1 on loopback, for servers a test controls byte by byte
//! (what `ADD <url>` downloads, servers that stall or trickle for the
//! fetch bounds, the fake Kubernetes API): one reading of a request's
//! head ([`read_head`]), a server that hands each request with its
//! connection to the test ([`serve`]), and a plain answer ([`respond`]).

use std::collections::BTreeMap;
use std::future::Future;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A request's line and headers (the body, if any, is still to be read).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    /// The request target as sent: `/path?query`.
    pub target: String,
    /// By lowercase name.
    pub headers: BTreeMap<String, String>,
}

/// Reads a request's head from `r`; `None` when the connection closes
/// before a request starts.
pub async fn read_head<R: AsyncBufRead + Unpin>(r: &mut R) -> std::io::Result<Option<Head>> {
    let mut line = String::new();
    if r.read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed in headers",
            ));
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    Ok(Some(Head {
        method,
        target,
        headers,
    }))
}

/// A connection of [`serve`], its request head read.
pub type Conn = BufReader<TcpStream>;

/// Serves HTTP on a free loopback port (returned) until the runtime ends:
/// each connection's first request head is read and given, with the
/// connection, to `handler`, which answers as it likes (or never); the
/// connection closes when the handler returns.
pub async fn serve<H, F>(handler: H) -> u16
where
    H: Fn(Head, Conn) -> F + Send + Sync + 'static,
    F: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let port = listener.local_addr().expect("addr").port();
    let handler = std::sync::Arc::new(handler);
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let handler = handler.clone();
            tokio::spawn(async move {
                let mut conn = BufReader::new(conn);
                if let Ok(Some(head)) = read_head(&mut conn).await {
                    handler(head, conn).await;
                }
            });
        }
    });
    port
}

/// Writes a whole answer and closes the connection: `status` (e.g.
/// `200 OK`), `headers`, `Content-Length` (the body's, unless `headers`
/// have one: a HEAD answer) and `Connection: close`, then `body`. A
/// client gone meanwhile is no error of the test's.
pub async fn respond<W: AsyncWrite + Unpin>(
    conn: &mut W,
    status: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    let mut head = format!("HTTP/1.1 {status}\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut all = head.into_bytes();
    all.extend_from_slice(body);
    let _ = conn.write_all(&all).await;
    let _ = conn.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn heads_are_read_and_answers_written() {
        let port = serve(|head, mut conn| async move {
            let body = format!("{} {} {:?}", head.method, head.target, head.headers);
            respond(&mut conn, "200 OK", &[("X-Test", "1")], body.as_bytes()).await;
        })
        .await;
        let mut c = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        c.write_all(b"GET /a?b HTTP/1.1\r\nHost: x\r\nX-Some:  v \r\n\r\n")
            .await
            .expect("write");
        let mut got = String::new();
        tokio::io::AsyncReadExt::read_to_string(&mut c, &mut got)
            .await
            .expect("read");
        let body = r#"GET /a?b {"host": "x", "x-some": "v"}"#;
        assert_eq!(
            got,
            format!(
                "HTTP/1.1 200 OK\r\nX-Test: 1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        );
        let mut short = BufReader::new(&b"GET / HTTP/1.1\r\nHost"[..]);
        assert!(read_head(&mut short).await.is_err(), "cut in the headers");
        let mut none = BufReader::new(&b""[..]);
        assert_eq!(read_head(&mut none).await.expect("closed"), None);
    }
}
