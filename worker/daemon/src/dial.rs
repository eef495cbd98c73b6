//! `kilnd dial-stdio`: connects to a running kilnd's unix socket and
//! copies stdin to it and its answers to stdout, as `buildctl dial-stdio`
//! does. A client that can only start a process somewhere (a pod exec, an
//! ssh command) speaks gRPC to the daemon through that process's stdio:
//! the kubernetes driver needs no Service and no open port.
//!
//! Like buildctl: only `unix://` addresses; the end of stdin half-closes
//! the connection and the copy to stdout is waited for; the daemon
//! closing its side ends the command at once (stdin may never close).

use std::path::PathBuf;
use thiserror::Error;
use tokio::io::{AsyncWriteExt, BufWriter};
use tokio::net::UnixStream;

/// Why `kilnd dial-stdio` stopped.
#[derive(Debug, Error)]
pub enum DialError {
    /// The address is not `unix:///path`.
    #[error("invalid address {addr:?} (dial-stdio connects to unix:///path addresses)")]
    Addr { addr: String },
    /// The daemon's socket does not answer.
    #[error("cannot connect to kilnd at {addr}")]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// A copy failed half-way.
    #[error("error while copying {direction}")]
    Copy {
        direction: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// The socket path of a `unix://` address.
pub fn socket_path(addr: &str) -> Result<PathBuf, DialError> {
    match addr.strip_prefix("unix://") {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => Err(DialError::Addr {
            addr: addr.to_string(),
        }),
    }
}

/// Copies `input` to the daemon at `addr` and the daemon's bytes to
/// `output` until the daemon closes its side, or until `input` ends and
/// the daemon has answered everything.
pub async fn dial<R, W>(addr: &str, input: R, output: W) -> Result<(), DialError>
where
    R: tokio::io::AsyncRead + Unpin + Send + 'static,
    W: tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let path = socket_path(addr)?;
    let conn = UnixStream::connect(&path)
        .await
        .map_err(|source| DialError::Connect {
            addr: addr.to_string(),
            source,
        })?;
    let (mut from_daemon, mut to_daemon) = conn.into_split();
    let mut input = input;
    let up = tokio::spawn(async move {
        let r = tokio::io::copy(&mut input, &mut to_daemon).await;
        // The daemon sees the end of the request stream; its answers
        // still come back.
        let _ = to_daemon.shutdown().await;
        r.map(|_| ()).map_err(|source| DialError::Copy {
            direction: "stdin to stream",
            source,
        })
    });
    let down = async move {
        let mut out = BufWriter::new(output);
        let mut buf = vec![0u8; 64 << 10];
        loop {
            use tokio::io::AsyncReadExt;
            let n = from_daemon.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).await?;
            // gRPC frames are small and interactive: never hold one back.
            out.flush().await?;
        }
        out.shutdown().await
    };
    let down = async move {
        down.await.map_err(|source| DialError::Copy {
            direction: "stream to stdout",
            source,
        })
    };
    tokio::pin!(down);
    let mut up = up;
    tokio::select! {
        r = &mut up => {
            match r {
                Ok(Ok(())) => down.await,
                Ok(Err(e)) => Err(e),
                Err(_) => down.await,
            }
        }
        // The daemon closed: done, whether or not stdin ever ends.
        r = &mut down => {
            up.abort();
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn only_unix_addresses_are_dialled() {
        assert_eq!(
            socket_path("unix:///run/kiln/kilnd.sock").expect("unix"),
            PathBuf::from("/run/kiln/kilnd.sock")
        );
        for bad in ["tcp://127.0.0.1:1234", "unix://", "/run/kiln/kilnd.sock"] {
            let e = socket_path(bad).expect_err("not unix").to_string();
            assert!(e.contains(bad) && e.contains("unix:///path"), "{e}");
        }
    }

    /// An echo daemon that answers after the request half-closes: the
    /// whole request arrives, the whole answer comes back, and the end of
    /// stdin does not cut the answer short.
    #[tokio::test]
    async fn bytes_go_both_ways_and_stdin_eof_half_closes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("d.sock");
        let listener = tokio::net::UnixListener::bind(&sock).expect("bind");
        let server = tokio::spawn(async move {
            let (mut c, _) = listener.accept().await.expect("accept");
            let mut got = Vec::new();
            c.read_to_end(&mut got).await.expect("read request");
            got.reverse();
            c.write_all(&got).await.expect("answer");
            got.len()
        });
        let (mut client_in, dial_in) = tokio::io::duplex(1 << 16);
        let (dial_out, mut client_out) = tokio::io::duplex(1 << 16);
        let addr = format!("unix://{}", sock.display());
        let d = tokio::spawn(async move { dial(&addr, dial_in, dial_out).await });
        let request: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let writer = {
            let request = request.clone();
            tokio::spawn(async move {
                client_in.write_all(&request).await.expect("write");
                client_in.shutdown().await.expect("eof");
            })
        };
        let mut answer = Vec::new();
        client_out
            .read_to_end(&mut answer)
            .await
            .expect("read answer");
        writer.await.expect("writer");
        d.await.expect("join").expect("dial succeeds");
        assert_eq!(server.await.expect("server"), request.len());
        let mut expect = request;
        expect.reverse();
        assert!(answer == expect, "answer differs ({} bytes)", answer.len());
    }

    /// The daemon closing first ends dial-stdio although stdin stays open.
    #[tokio::test]
    async fn the_daemon_closing_ends_the_copy_with_stdin_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sock = dir.path().join("d.sock");
        let listener = tokio::net::UnixListener::bind(&sock).expect("bind");
        tokio::spawn(async move {
            let (mut c, _) = listener.accept().await.expect("accept");
            c.write_all(b"bye").await.expect("write");
        });
        let (_client_in, dial_in) = tokio::io::duplex(64);
        let (dial_out, mut client_out) = tokio::io::duplex(64);
        let addr = format!("unix://{}", sock.display());
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            dial(&addr, dial_in, dial_out),
        )
        .await
        .expect("dial-stdio ends")
        .expect("dial succeeds");
        let mut got = Vec::new();
        client_out.read_to_end(&mut got).await.expect("read");
        assert_eq!(got, b"bye");
    }

    #[tokio::test]
    async fn a_missing_socket_names_the_address() {
        let e = dial(
            "unix:///nonexistent/kilnd.sock",
            tokio::io::empty(),
            tokio::io::sink(),
        )
        .await
        .expect_err("no daemon")
        .to_string();
        assert_eq!(
            e,
            "cannot connect to kilnd at unix:///nonexistent/kilnd.sock"
        );
    }
}
