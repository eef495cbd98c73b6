//! Named contexts that are remote sources (`--build-context
//! NAME=https://…`): BuildKit's frontend makes an HTTP(S) URL that is not
//! a git repository one file named `context`, which `COPY --from=NAME`
//! reads. A tiny HTTP server on loopback serves it.

use kiln_integration::Harness;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BODY: &str = "from a named context\n";

/// Answers every request with `BODY`.
async fn http_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let head = req.starts_with(b"HEAD ");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                    BODY.len(),
                    if head { "" } else { BODY }
                );
                let _ = conn.write_all(resp.as_bytes()).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    port
}

/// Multi-threaded: the server answers while the test blocks on `kiln`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_named_context_is_one_file_named_context() {
    let ns = "remote-context-http";
    let h = Harness::with_busybox(ns).await;
    let port = http_server().await;
    let ctx = h.context(
        "remote-context",
        &[(
            "Dockerfile",
            "FROM busybox\nCOPY --from=web /context /got\n",
        )],
    );
    let web = format!("web=http://127.0.0.1:{port}/some/file.txt");
    let out = h
        .build(
            ns,
            &[
                "--build-context",
                &web,
                "-t",
                "remote-ctx:1",
                ctx.to_str().expect("utf8"),
            ],
        )
        .ok();
    assert!(
        out.stderr.contains(&format!(
            "[context web] http://127.0.0.1:{port}/some/file.txt"
        )),
        "{}",
        out.stderr
    );
    let got = h.run_image_expecting(
        ns,
        "docker.io/library/remote-ctx:1",
        "remote-ctx-run",
        &["cat", "/got"],
        BODY,
    );
    assert_eq!(got, BODY);
}
