//! Response streams of server-side handlers that keep working after the
//! handler has returned its headers.

use std::future::Future;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// Spawns `work` with a sender for response messages and returns the
/// response stream; an error of `work` ends the stream with that status.
pub(crate) fn spawn_response<T, F, Fut>(work: F) -> ReceiverStream<Result<T, Status>>
where
    T: Send + 'static,
    F: FnOnce(mpsc::Sender<T>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), Status>> + Send + 'static,
{
    let (res_tx, res_rx) = mpsc::channel::<Result<T, Status>>(64);
    tokio::spawn(async move {
        let (tx, mut rx) = mpsc::channel::<T>(64);
        let forward = async {
            while let Some(m) = rx.recv().await {
                if res_tx.send(Ok(m)).await.is_err() {
                    break;
                }
            }
        };
        let (res, ()) = tokio::join!(work(tx), forward);
        if let Err(status) = res {
            let _ = res_tx.send(Err(status)).await;
        }
    });
    ReceiverStream::new(res_rx)
}

/// The status a handler answers for a failed transfer.
pub(crate) fn status_of(e: &crate::fsutil::FsutilError) -> Status {
    Status::new(e.kind().code(), e.wire_message())
}
