//! Client sessions attached over Control.Session, by session ID: the gRPC
//! channel the daemon uses to call the client's FileSync/FileSend.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::Notify;
use tonic::transport::Channel;

/// An attached session.
#[derive(Clone)]
pub struct SessionHandle {
    pub channel: Channel,
    /// The methods the client exposes (`/moby.filesync.v1.FileSync/DiffCopy`).
    pub methods: Vec<String>,
}

impl SessionHandle {
    pub fn exposes(&self, method: &str) -> bool {
        self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
    }
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, SessionHandle>>,
    changed: Notify,
}

impl Sessions {
    pub fn insert(&self, id: &str, h: SessionHandle) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), h);
        self.changed.notify_waiters();
    }

    pub fn remove(&self, id: &str) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// The session `id`, waiting up to `wait` for it to attach.
    pub async fn get(&self, id: &str, wait: Duration) -> Option<SessionHandle> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            if let Some(h) = self.map.lock().unwrap_or_else(|p| p.into_inner()).get(id) {
                return Some(h.clone());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return None;
            }
        }
    }
}

/// Wraps a stream so `f` runs when it is dropped (the session ended).
pub fn on_end<T: Send + 'static>(
    inner: tonic::codegen::BoxStream<T>,
    f: impl FnOnce() + Send + 'static,
) -> tonic::codegen::BoxStream<T> {
    struct OnEnd<T> {
        inner: tonic::codegen::BoxStream<T>,
        f: Option<Box<dyn FnOnce() + Send>>,
    }
    impl<T> tokio_stream::Stream for OnEnd<T> {
        type Item = Result<T, tonic::Status>;
        fn poll_next(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Self::Item>> {
            self.inner.as_mut().poll_next(cx)
        }
    }
    impl<T> Drop for OnEnd<T> {
        fn drop(&mut self) {
            if let Some(f) = self.f.take() {
                f();
            }
        }
    }
    Box::pin(OnEnd {
        inner,
        f: Some(Box::new(f)),
    })
}
