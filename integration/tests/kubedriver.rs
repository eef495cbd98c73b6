//! The kubernetes driver (issue 13). kiln reaches a kilnd in a pod
//! through `kilnd dial-stdio` run by a pod exec: gRPC over the exec's
//! stdin/stdout, no Service, no open port.

use kiln_integration::{kilnd_binary, Harness};
use kiln_proto::control::control_client::ControlClient;
use kiln_proto::control::ListWorkersRequest;
use std::process::Stdio;

/// A gRPC channel whose every connection is a fresh `kilnd dial-stdio`
/// process: what the driver does with a pod exec, with a local process.
async fn channel_through_dial_stdio(addr: String) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_static("http://dial-stdio.invalid")
        .connect_with_connector(tower::service_fn(move |_| {
            let addr = addr.clone();
            async move {
                let mut child = tokio::process::Command::new(kilnd_binary()?)
                    .args(["dial-stdio", "--addr", &addr])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()?;
                let stdin = child
                    .stdin
                    .take()
                    .ok_or_else(|| std::io::Error::other("stdin"))?;
                let stdout = child
                    .stdout
                    .take()
                    .ok_or_else(|| std::io::Error::other("stdout"))?;
                // Reaped in the background once the stream ends.
                tokio::spawn(async move { child.wait().await });
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(hyper_util::rt::TokioIo::new(
                    tokio::io::join(stdout, stdin),
                ))
            }
        }))
        .await
        .expect("connect through dial-stdio")
}

#[tokio::test]
async fn grpc_reaches_kilnd_through_dial_stdio() {
    let ns = "kube-dial";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ch = channel_through_dial_stdio(k.addr()).await;
    let mut c = ControlClient::new(ch);
    for _ in 0..3 {
        let w = c
            .list_workers(ListWorkersRequest::default())
            .await
            .expect("ListWorkers through dial-stdio")
            .into_inner();
        assert_eq!(w.record.len(), 1);
        assert_eq!(
            w.record[0].labels["org.mobyproject.buildkit.worker.containerd.namespace"],
            ns
        );
    }

    // No daemon: dial-stdio says where it looked and fails.
    let out = std::process::Command::new(kilnd_binary().expect("kilnd"))
        .args(["dial-stdio", "--addr", "unix:///nonexistent/kilnd.sock"])
        .stdin(Stdio::null())
        .output()
        .expect("dial-stdio runs");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot connect to kilnd at unix:///nonexistent/kilnd.sock"),
        "{err}"
    );
    let out = std::process::Command::new(kilnd_binary().expect("kilnd"))
        .args(["dial-stdio", "--addr", "tcp://127.0.0.1:1"])
        .stdin(Stdio::null())
        .output()
        .expect("dial-stdio runs");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unix:///path"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
