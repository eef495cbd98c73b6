//! The tokio runtime the engine runs on, in `kiln` and `kilnd` alike.

/// The stack of each runtime thread (workers and the blocking pool). The
/// walks of a tree (the layer differ, the copy, the context hash and the
/// fsutil sender) go one call deeper per directory level, and a build may
/// meet a tree as deep as its paths allow: host paths stop at `PATH_MAX`
/// (4096 bytes, about 2,000 levels of one-letter names). tokio's default
/// 2 MiB overflows at about 270 levels in a debug build, which aborts the
/// whole daemon; this is address space, only touched when used.
pub const THREAD_STACK: usize = 64 << 20;

/// A multi-threaded runtime with every driver and [`THREAD_STACK`].
pub fn multi_thread() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(THREAD_STACK)
        .build()
}
