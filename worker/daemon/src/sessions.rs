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
    /// The tenant the session belongs to (`None`: the default tenant).
    pub tenant: Option<String>,
    /// `x-docker-expose-session-sharedkey`: with the local name, which kept
    /// context (`crate::contexts`) the session's local sources update.
    pub shared_key: String,
    /// A random value of the daemon's for this session, never sent to a
    /// client: what the session alone may read back (its uploads).
    pub nonce: String,
    /// What kilnd wrote to the session and its connection has not taken
    /// yet: a build's answer waits for it.
    pub outbound: kiln_session::hijack::Outbound,
}

/// A new session nonce ([`SessionHandle::nonce`]).
pub fn nonce() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl SessionHandle {
    pub fn exposes(&self, method: &str) -> bool {
        self.methods.iter().any(|m| m.eq_ignore_ascii_case(method))
    }
}

/// One session id: reserved when Control.Session opens, attached once the
/// daemon's gRPC channel into it is up.
struct Entry {
    generation: u64,
    handle: Option<SessionHandle>,
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Entry>>,
    next: std::sync::atomic::AtomicU64,
    changed: Notify,
}

impl Sessions {
    /// Claims `id` for a new Control.Session call. An id that is already
    /// live (from this or another connection) is `AlreadyExists`: two
    /// clients must never share, or take over, one session.
    pub fn reserve(&self, id: &str) -> Result<u64, tonic::Status> {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if m.contains_key(id) {
            return Err(tonic::Status::already_exists(format!(
                "session {id:?} is already attached by another client"
            )));
        }
        let generation = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        m.insert(
            id.to_string(),
            Entry {
                generation,
                handle: None,
            },
        );
        Ok(generation)
    }

    /// Makes the reserved session `id` usable (if it has not ended yet).
    pub fn attach(&self, id: &str, generation: u64, h: SessionHandle) {
        if let Some(e) = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(id)
            .filter(|e| e.generation == generation)
        {
            e.handle = Some(h);
        }
        self.changed.notify_waiters();
    }

    /// Forgets the session `id` of `generation` (it ended).
    pub fn remove(&self, id: &str, generation: u64) {
        let mut m = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if m.get(id).is_some_and(|e| e.generation == generation) {
            m.remove(id);
        }
    }

    /// The session `id`, waiting up to `wait` for it to attach.
    pub async fn get(&self, id: &str, wait: Duration) -> Option<SessionHandle> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.changed.notified();
            if let Some(h) = self
                .map
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get(id)
                .and_then(|e| e.handle.clone())
            {
                return Some(h);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_live_session_id_is_refused_and_free_again_after_it_ends() {
        let s = Sessions::default();
        let first = s.reserve("abc").expect("first");
        let dup = s.reserve("abc").expect_err("a second session with the id");
        assert_eq!(dup.code(), tonic::Code::AlreadyExists);
        assert!(dup.message().contains("\"abc\""), "{}", dup.message());
        // A stale end of another generation does not free it.
        s.remove("abc", first + 1);
        assert!(s.reserve("abc").is_err());
        s.remove("abc", first);
        s.reserve("abc").expect("free once the first ended");
    }
}
