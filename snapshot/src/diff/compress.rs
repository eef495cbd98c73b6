//! Hashing and compressing writers for the layer pipeline.
//!
//! gzip uses every core by cutting the tar stream into fixed blocks and
//! compressing each block on a worker thread as an independent gzip member;
//! the members are written in order. A concatenation of gzip members is one
//! valid gzip stream (RFC 1952 §2.2) that Go's `compress/gzip` (containerd),
//! `gzip -d` and flate2's `MultiGzDecoder` read in full. The cost is a reset
//! of the deflate window every block: 0.3% larger than `gzip -6` on a
//! 110 MB source tree. A block that does not compress (see
//! [`MemberEncoder`]) is written as stored deflate blocks, at copy speed.
//! Every member depends only on its block's bytes, so the blob digest is
//! the same on every machine and with any number of threads.
//! A crate such as `gzp` does the same (and primes each block with the
//! previous 32 KiB), but it is one more dependency for ~150 lines of std and
//! flate2 here. flate2 runs on zlib-rs (see the workspace manifest).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::num::NonZeroUsize;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use sha2::{Digest as _, Sha256};

use super::Compression;

/// Size of the independent gzip members.
const GZIP_BLOCK: usize = 1 << 20;
/// zstd level, as BuildKit's default.
const ZSTD_LEVEL: i32 = 3;

pub(crate) fn parallelism() -> usize {
    std::thread::available_parallelism()
        .map(NonZeroUsize::get)
        .unwrap_or(1)
}

/// Passes bytes through to `W` while hashing and counting them.
pub(crate) struct HashWriter<W: Write> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Returns the sink, the SHA-256 and the byte count of everything written.
    pub(crate) fn finish(self) -> (W, [u8; 32], u64) {
        (self.inner, self.hasher.finalize().into(), self.count)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Passes bytes through to `W` while counting them: the blob end of a
/// layer whose store hashes what it receives (see
/// [`super::stream_layer`]).
pub(crate) struct CountWriter<W: Write> {
    inner: W,
    count: u64,
}

impl<W: Write> CountWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        CountWriter { inner, count: 0 }
    }

    /// Returns the sink and the byte count of everything written.
    pub(crate) fn finish(self) -> (W, u64) {
        (self.inner, self.count)
    }
}

impl<W: Write> Write for CountWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The compressor stage; `finish` must be called to end the stream.
pub(crate) enum Compressor<W: Write> {
    Gzip(ParGzWriter<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    None(W),
}

impl<W: Write> Compressor<W> {
    pub(crate) fn new(compression: Compression, out: W) -> io::Result<Self> {
        Self::with_threads(compression, out, parallelism())
    }

    /// A compressor using `threads` worker threads; the output is the same
    /// for any number.
    pub(crate) fn with_threads(
        compression: Compression,
        out: W,
        threads: usize,
    ) -> io::Result<Self> {
        Ok(match compression {
            Compression::Gzip => Compressor::Gzip(ParGzWriter::new(out, threads)),
            Compression::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(out, ZSTD_LEVEL)?;
                // Always multithreaded (even with one worker): zstd's output
                // then does not depend on the number of workers, so the blob
                // digest is the same on every machine. The calling thread
                // only hands over input; the workers compress jobs of
                // zstd's default size (4 windows: 8 MiB at level 3).
                let workers = u32::try_from(threads.max(1)).unwrap_or(u32::MAX);
                enc.multithread(workers)?;
                Compressor::Zstd(enc)
            }
            Compression::Uncompressed => Compressor::None(out),
        })
    }

    pub(crate) fn finish(self) -> io::Result<W> {
        match self {
            Compressor::Gzip(w) => w.finish(),
            Compressor::Zstd(w) => w.finish(),
            Compressor::None(w) => Ok(w),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Gzip(w) => w.write(buf),
            Compressor::Zstd(w) => w.write(buf),
            Compressor::None(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Gzip(w) => w.flush(),
            Compressor::Zstd(w) => w.flush(),
            Compressor::None(w) => w.flush(),
        }
    }
}

type GzResult = io::Result<Vec<u8>>;
type Job = (Vec<u8>, SyncSender<GzResult>);

/// Worker threads compressing gzip members. Threads are started lazily, up
/// to `max`, and joined on drop.
struct GzPool {
    max: usize,
    jobs: Option<Sender<Job>>,
    shared_rx: Arc<Mutex<Receiver<Job>>>,
    workers: Vec<JoinHandle<()>>,
}

impl GzPool {
    fn new(max: usize) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        GzPool {
            max: max.max(1),
            jobs: Some(tx),
            shared_rx: Arc::new(Mutex::new(rx)),
            workers: Vec::new(),
        }
    }

    /// Queues `data`; `busy` is the number of jobs not yet collected, used to
    /// start another worker only when all current ones have work.
    fn submit(&mut self, data: Vec<u8>, busy: usize) -> io::Result<Receiver<GzResult>> {
        if self.workers.len() < self.max && self.workers.len() <= busy {
            let rx = Arc::clone(&self.shared_rx);
            let handle = std::thread::Builder::new()
                .name("kiln-gzip".into())
                .spawn(move || gzip_worker(&rx))?;
            self.workers.push(handle);
        }
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("gzip pool already stopped"))?;
        jobs.send((data, done_tx))
            .map_err(|_| io::Error::other("gzip workers exited"))?;
        Ok(done_rx)
    }
}

impl Drop for GzPool {
    fn drop(&mut self) {
        // Closing the job channel makes every worker's `recv` fail and return.
        self.jobs = None;
        for handle in self.workers.drain(..) {
            if handle.join().is_err() {
                tracing::warn!("gzip worker thread panicked");
            }
        }
    }
}

/// Parallel multi-member gzip writer.
pub(crate) struct ParGzWriter<W: Write> {
    out: W,
    block: usize,
    buf: Vec<u8>,
    pool: GzPool,
    pending: VecDeque<Receiver<GzResult>>,
    /// Whether any member was submitted (an empty input still needs one).
    submitted: bool,
}

impl<W: Write> ParGzWriter<W> {
    pub(crate) fn new(out: W, threads: usize) -> Self {
        Self::with_block(out, threads, GZIP_BLOCK)
    }

    pub(crate) fn with_block(out: W, threads: usize, block: usize) -> Self {
        let block = block.max(1);
        ParGzWriter {
            out,
            block,
            buf: Vec::with_capacity(block),
            pool: GzPool::new(threads),
            pending: VecDeque::new(),
            submitted: false,
        }
    }

    fn submit(&mut self) -> io::Result<()> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(self.block));
        self.submitted = true;
        let rx = self.pool.submit(data, self.pending.len())?;
        self.pending.push_back(rx);
        // Bound memory: at most two blocks in flight per worker.
        while self.pending.len() > 2 * self.pool.max {
            self.write_oldest()?;
        }
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        if let Some(rx) = self.pending.pop_front() {
            let member = rx
                .recv()
                .map_err(|_| io::Error::other("gzip worker exited without a result"))??;
            self.out.write_all(&member)?;
        }
        Ok(())
    }

    pub(crate) fn finish(mut self) -> io::Result<W> {
        if !self.buf.is_empty() || !self.submitted {
            self.submit()?;
        }
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        self.out.flush()?;
        // Dropping the pool joins the (now idle) workers.
        Ok(self.out)
    }
}

impl<W: Write> Write for ParGzWriter<W> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let total = data.len();
        while !data.is_empty() {
            let room = self.block - self.buf.len();
            let n = room.min(data.len());
            self.buf.extend_from_slice(&data[..n]);
            data = &data[n..];
            if self.buf.len() == self.block {
                self.submit()?;
            }
        }
        Ok(total)
    }

    /// Only flushes what is already compressed; a partial block stays
    /// buffered so that member boundaries do not depend on flush calls.
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn gzip_worker(rx: &Mutex<Receiver<Job>>) {
    // One encoder per thread: its deflate state is reset, not reallocated,
    // for every member.
    let mut encoder = MemberEncoder::new();
    loop {
        let job = match rx.lock() {
            Ok(guard) => guard.recv(),
            Err(_) => return,
        };
        let Ok((data, done)) = job else { return };
        // The receiver may be gone if the writer was dropped; that is fine.
        let _ = done.send(encoder.member(&data));
    }
}

/// The fixed header of every member: deflate, no flags, mtime 0, no extra
/// flags, OS unknown (what flate2's `GzBuilder` writes at level 6 with
/// mtime 0).
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
/// Level of the members' deflate streams (gzip's and BuildKit's default).
const GZIP_LEVEL: u32 = 6;
/// The incompressibility probe: this many slices of `PROBE_SLICE` bytes,
/// evenly spaced over a member, each deflated at `PROBE_LEVEL` (zlib-rs'
/// `deflate_fast`: no lazy matching, dynamic Huffman codes).
const PROBE_SLICES: usize = 4;
const PROBE_SLICE: usize = 16 * 1024;
const PROBE_LEVEL: u32 = 2;
/// Largest payload of one stored deflate block.
const STORED_MAX: usize = 0xffff;

/// Encodes gzip members; every member is a pure function of its bytes.
///
/// Most of a level-6 deflate's time on data that does not compress (media,
/// archives, random bytes) is spent searching for matches that are not
/// there, to end up emitting stored blocks anyway. So each member is first
/// probed: a few slices spread over it are deflated at a fast level, and
/// when together they shrink by less than 1/32 the member is written as
/// stored deflate blocks (a plain copy plus the CRC) instead. The probe
/// only looks at the member's bytes, so the choice, like the output, is the
/// same on every machine and with any number of threads.
pub(crate) struct MemberEncoder {
    deflate: flate2::Compress,
    probe: flate2::Compress,
    probe_out: Vec<u8>,
}

impl MemberEncoder {
    pub(crate) fn new() -> Self {
        MemberEncoder {
            deflate: flate2::Compress::new(flate2::Compression::new(GZIP_LEVEL), false),
            probe: flate2::Compress::new(flate2::Compression::new(PROBE_LEVEL), false),
            probe_out: Vec::with_capacity(PROBE_SLICE + PROBE_SLICE / 8 + 256),
        }
    }

    /// One complete gzip member holding `data`.
    pub(crate) fn member(&mut self, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(GZIP_HEADER.len() + data.len() + data.len() / 64 + 256);
        out.extend_from_slice(&GZIP_HEADER);
        if self.incompressible(data)? {
            stored_blocks(data, &mut out);
        } else {
            self.deflate(data, &mut out)?;
        }
        let mut crc = flate2::Crc::new();
        crc.update(data);
        out.extend_from_slice(&crc.sum().to_le_bytes());
        // ISIZE is the length modulo 2^32 (RFC 1952).
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        Ok(out)
    }

    /// Whether the probe slices of `data` shrink by less than 1/32. Members
    /// too small to hold the slices are always deflated.
    fn incompressible(&mut self, data: &[u8]) -> io::Result<bool> {
        if data.len() < PROBE_SLICES * PROBE_SLICE {
            return Ok(false);
        }
        let stride = data.len() / PROBE_SLICES;
        let (mut read, mut written) = (0u64, 0u64);
        for i in 0..PROBE_SLICES {
            let slice = &data[i * stride..i * stride + PROBE_SLICE];
            self.probe.reset();
            self.probe_out.clear();
            let status = self.probe.compress_vec(
                slice,
                &mut self.probe_out,
                flate2::FlushCompress::Finish,
            )?;
            // Output that does not fit the buffer is incompressible anyway.
            if status != flate2::Status::StreamEnd {
                written += slice.len() as u64;
            } else {
                written += self.probe.total_out();
            }
            read += slice.len() as u64;
        }
        Ok(written * 32 >= read * 31)
    }

    /// Appends the raw level-6 deflate stream of `data` to `out`.
    fn deflate(&mut self, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        self.deflate.reset();
        loop {
            let consumed = usize::try_from(self.deflate.total_in()).unwrap_or(usize::MAX);
            let rest = data.get(consumed..).unwrap_or_default();
            let status = self
                .deflate
                .compress_vec(rest, out, flate2::FlushCompress::Finish)?;
            if status == flate2::Status::StreamEnd {
                return Ok(());
            }
            out.reserve(64 * 1024);
        }
    }
}

/// Appends `data` as stored (uncompressed) deflate blocks (RFC 1951
/// §3.2.4): a header byte with BFINAL on the last block and BTYPE 00, LEN
/// and its complement NLEN, then the bytes.
fn stored_blocks(data: &[u8], out: &mut Vec<u8>) {
    let mut chunks = data.chunks(STORED_MAX).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        // A chunk is at most STORED_MAX = u16::MAX bytes.
        let len = chunk.len() as u16;
        out.push(u8::from(last));
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn pseudo_random(len: usize) -> Vec<u8> {
        let mut x: u32 = 0x1234_5678;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                if i % 3 == 0 {
                    b'a'
                } else {
                    (x & 0xff) as u8
                }
            })
            .collect()
    }

    /// Bytes no deflate level can shrink.
    fn incompressible(len: usize) -> Vec<u8> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.truncate(len);
        out
    }

    fn text(len: usize) -> Vec<u8> {
        let line = b"fn main() { println!(\"hello, layer\"); } // a line of source\n";
        line.iter().copied().cycle().take(len).collect()
    }

    fn gunzip(gz: &[u8]) -> Vec<u8> {
        let mut back = Vec::new();
        flate2::read::MultiGzDecoder::new(gz)
            .read_to_end(&mut back)
            .expect("decode");
        back
    }

    fn par_gzip(data: &[u8], threads: usize, block: usize) -> Vec<u8> {
        let mut w = ParGzWriter::with_block(Vec::new(), threads, block);
        for chunk in data.chunks(1000) {
            w.write_all(chunk).expect("vec write");
        }
        w.finish().expect("finish")
    }

    #[test]
    fn multi_member_gzip_round_trips_and_is_deterministic() {
        let data = pseudo_random(10 * 4096 + 17);
        let one = par_gzip(&data, 1, 4096);
        let many = par_gzip(&data, 4, 4096);
        assert_eq!(one, many, "output must not depend on the thread count");
        assert_eq!(gunzip(&many), data);
    }

    /// Members big enough to be probed, mixing data that is stored with
    /// data that is deflated: the same bytes with 1, 2 or 5 threads.
    #[test]
    fn probed_members_do_not_depend_on_the_thread_count() {
        let block = 64 * 1024;
        let mut data = Vec::new();
        for i in 0..9 {
            if i % 3 == 1 {
                data.extend(text(block));
            } else {
                data.extend(incompressible(block + i));
            }
        }
        let one = par_gzip(&data, 1, block);
        assert_eq!(one, par_gzip(&data, 2, block));
        assert_eq!(one, par_gzip(&data, 5, block));
        assert_eq!(gunzip(&one), data);
    }

    #[test]
    fn incompressible_members_are_stored_and_others_deflated() {
        let mut enc = MemberEncoder::new();
        let random = incompressible(1 << 20);
        let stored = enc.member(&random).expect("member");
        // Header, 17 stored blocks of 5 bytes overhead each, trailer.
        assert_eq!(stored.len(), 10 + random.len() + 17 * 5 + 8);
        // The first block is a non-final stored block of 65535 bytes.
        assert_eq!(
            stored[..15],
            [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff, 0, 0xff, 0xff, 0, 0]
        );
        assert_eq!(gunzip(&stored), random);

        let source = text(1 << 20);
        let deflated = enc.member(&source).expect("member");
        assert!(deflated.len() < source.len() / 10, "{}", deflated.len());
        assert_eq!(gunzip(&deflated), source);
        // The encoder is reused: the same input gives the same member.
        assert_eq!(enc.member(&random).expect("member"), stored);
        assert_eq!(
            MemberEncoder::new().member(&source).expect("member"),
            deflated
        );
    }

    /// Half incompressible, half text: one probe slice in two compresses,
    /// so the member is deflated (the text must not be stored).
    #[test]
    fn a_member_with_compressible_parts_is_deflated() {
        let mut data = incompressible(512 * 1024);
        data.extend(text(512 * 1024));
        let member = MemberEncoder::new().member(&data).expect("member");
        assert!(member.len() < data.len() * 2 / 3, "{}", member.len());
        assert_eq!(gunzip(&member), data);
    }

    #[test]
    fn gzip_tool_reads_stored_and_deflated_members() {
        let mut data = incompressible(3 * 200 * 1024 + 5);
        data.extend(text(300 * 1024));
        let gz = par_gzip(&data, 2, 200 * 1024);
        let mut child = std::process::Command::new("gzip")
            .arg("-dc")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("gzip runs");
        let mut stdin = child.stdin.take().expect("stdin");
        let writer = std::thread::spawn(move || stdin.write_all(&gz).expect("feed gzip"));
        let out = child.wait_with_output().expect("gzip output");
        writer.join().expect("writer");
        assert!(out.status.success(), "gzip -d failed");
        assert_eq!(out.stdout, data);
    }

    #[test]
    fn stored_blocks_of_empty_and_exact_sizes_decode() {
        for len in [0, 1, STORED_MAX, STORED_MAX + 1, 2 * STORED_MAX] {
            let data = incompressible(len);
            let mut raw = Vec::new();
            stored_blocks(&data, &mut raw);
            let mut back = Vec::new();
            flate2::read::DeflateDecoder::new(&raw[..])
                .read_to_end(&mut back)
                .expect("inflate");
            assert_eq!(back, data, "length {len}");
        }
    }

    #[test]
    fn zstd_output_does_not_depend_on_the_thread_count() {
        let mut data = incompressible(3 << 20);
        data.extend(text(6 << 20));
        let run = |threads| {
            let mut c =
                Compressor::with_threads(Compression::Zstd, Vec::new(), threads).expect("zstd");
            c.write_all(&data).expect("write");
            c.finish().expect("finish")
        };
        let one = run(1);
        assert_eq!(one, run(3));
        let back = zstd::decode_all(&one[..]).expect("zstd decode");
        assert_eq!(back, data);
    }

    #[test]
    fn empty_input_is_a_valid_gzip() {
        let out = ParGzWriter::new(Vec::new(), 2).finish().expect("finish");
        assert!(gunzip(&out).is_empty());
    }
}
