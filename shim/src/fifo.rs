//! Stdio FIFOs between the runc shim and kiln.
//!
//! Our read end is opened with a *blocking* `open(O_RDONLY)` on a blocking
//! thread that starts before `Tasks.Create`, and completes when the shim
//! opens the write end during Create (containerd/fifo does the same).
//! Reading then runs on that thread until EOF, forwarding each chunk as it
//! arrives. If the shim never opens the FIFO, [`FifoReader::unblock`]
//! opens the write end non-blocking so the pending open returns.

use crate::OutputStream;
use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc::Sender;
use tokio::task::JoinHandle;

/// Creates a FIFO readable and writable by its owner only.
pub(crate) fn mkfifo(path: &Path) -> io::Result<()> {
    nix::unistd::mkfifo(
        path,
        nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
    )
    .map_err(io::Error::from)
}

/// Opens the write end of a FIFO whose reader is open already (the shim's,
/// after `Tasks.Create`), without blocking, then makes writes blocking.
pub(crate) fn open_writer(path: &Path) -> io::Result<std::fs::File> {
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    let flags = nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_GETFL).map_err(io::Error::from)?;
    let mut flags = nix::fcntl::OFlag::from_bits_truncate(flags);
    flags.remove(nix::fcntl::OFlag::O_NONBLOCK);
    nix::fcntl::fcntl(&f, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(io::Error::from)?;
    Ok(f)
}

/// A blocking thread writing what `input` carries to a process's stdin
/// until the sender is dropped (then the process reads EOF) or the reader
/// goes away (EPIPE).
pub(crate) fn spawn_writer(
    id: String,
    mut file: std::fs::File,
    mut input: tokio::sync::mpsc::Receiver<Vec<u8>>,
) {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        while let Some(chunk) = input.blocking_recv() {
            if let Err(e) = file.write_all(&chunk) {
                tracing::debug!(id, error = %e, "stdin closed by the process");
                return;
            }
        }
    });
}

/// A blocking thread that opens one FIFO and forwards what it reads.
#[derive(Debug)]
pub(crate) struct FifoReader {
    pub(crate) path: PathBuf,
    handle: JoinHandle<io::Result<()>>,
}

impl FifoReader {
    /// Starts opening `path` for reading; does not wait for the open.
    pub(crate) fn spawn(
        path: PathBuf,
        stream: OutputStream,
        output: Sender<(OutputStream, Vec<u8>)>,
    ) -> Self {
        let p = path.clone();
        let handle = tokio::task::spawn_blocking(move || {
            let mut f = std::fs::File::open(&p)?;
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match f.read(&mut buf) {
                    Ok(0) => return Ok(()),
                    Ok(n) => {
                        // Waits while the receiver's queue is full (the
                        // step's writes then block on the pipe). A closed
                        // receiver drops output; the step goes on.
                        let _ = output.blocking_send((stream, buf[..n].to_vec()));
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        });
        FifoReader { path, handle }
    }

    /// Makes a pending open return by opening the write end non-blocking
    /// (and closing it at once, so the reader sees EOF). Harmless when the
    /// reader is already open or done.
    pub(crate) async fn unblock(&self) {
        for _ in 0..100 {
            if self.handle.is_finished() {
                return;
            }
            match OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(&self.path)
            {
                Ok(_) => return,
                // ENXIO: no reader yet; the blocking thread has not reached
                // open(2). Try again shortly.
                Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(_) => return,
            }
        }
    }

    /// Waits up to `limit` for EOF. On timeout the thread is left to finish
    /// on its own and the reader is handed back.
    pub(crate) async fn finish(mut self, limit: Duration) -> Result<io::Result<()>, Self> {
        match tokio::time::timeout(limit, &mut self.handle).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(join)) => Ok(Err(io::Error::other(join))),
            Err(_) => Err(self),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reads_until_eof_and_unblocks_without_writer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tx, mut rx) = tokio::sync::mpsc::channel(crate::OUTPUT_QUEUE);

        let path = dir.path().join("out");
        mkfifo(&path).expect("mkfifo");
        let r = FifoReader::spawn(path.clone(), OutputStream::Stdout, tx.clone());
        let writer = tokio::task::spawn_blocking(move || std::fs::write(&path, b"hello"));
        writer.await.expect("join").expect("write");
        r.finish(Duration::from_secs(5))
            .await
            .expect("eof")
            .expect("read");
        assert_eq!(
            rx.recv().await,
            Some((OutputStream::Stdout, b"hello".to_vec()))
        );

        let path = dir.path().join("err");
        mkfifo(&path).expect("mkfifo");
        let r = FifoReader::spawn(path, OutputStream::Stderr, tx);
        r.unblock().await;
        r.finish(Duration::from_secs(5))
            .await
            .expect("eof")
            .expect("read");
    }
}
