//! Hashing and compressing writers for the layer pipeline.
//!
//! gzip and zstd use every core the same way: the tar stream is cut into
//! members (at entry boundaries, see [`super::members`]) and each is
//! compressed on a worker thread as an independent gzip member or zstd
//! frame; the members are written in order. A member whose bytes an
//! earlier blob already holds compressed (its [`MemberIndex`]) is copied
//! from that blob instead. A concatenation of gzip members is one valid
//! gzip stream (RFC 1952 §2.2) that Go's `compress/gzip` (containerd),
//! `gzip -d` and flate2's `MultiGzDecoder` read in full; a concatenation of
//! zstd frames is one valid zstd stream (RFC 8878 §3.1) that containerd's
//! decoder, `zstd -d` and the `zstd` crate read in full. The cost is a
//! reset of the compression window every member: 0.3% larger than
//! `gzip -6` on a 110 MB source tree. A gzip block that does not compress
//! (see [`GzipEncoder`]) is written as stored deflate blocks, at copy
//! speed; zstd stores such blocks raw by itself. Every member depends only
//! on its block's bytes, so the blob digest is the same on every machine
//! and with any number of threads.
//! A crate such as `gzp` does the same for gzip (and primes each block
//! with the previous 32 KiB), but it is one more dependency for ~150 lines
//! of std and flate2 here. flate2 runs on zlib-rs (see the workspace
//! manifest).

use std::collections::VecDeque;
use std::io::{self, Write};
use std::num::NonZeroUsize;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use sha2::{Digest as _, Sha256};

use super::members::{worth_copying, BlobMembers, Codec, Cutter, MemberIndex, OldBlob, OldMembers};
use super::{Compression, Level};

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
    /// gzip members or zstd frames.
    Members(Box<ParMemberWriter<W>>),
    None(W),
}

impl<W: Write> Compressor<W> {
    /// A compressor whose members are compressed at `level`.
    pub(crate) fn at_level(compression: Compression, level: Level, out: W) -> io::Result<Self> {
        Self::reusing(compression, level, out, None)
    }

    /// A compressor that may copy members from an earlier blob of the same
    /// compression (ignored when uncompressed); the output is the same as
    /// without.
    pub(crate) fn reusing(
        compression: Compression,
        level: Level,
        out: W,
        reuse: Option<OldMembers>,
    ) -> io::Result<Self> {
        Ok(match (Codec::of(compression), reuse) {
            (Some(codec), Some(old)) => Compressor::Members(Box::new(
                ParMemberWriter::new(codec, out, parallelism())
                    .at_level(level)
                    .reusing(old),
            )),
            (Some(codec), None) => Compressor::Members(Box::new(
                ParMemberWriter::new(codec, out, parallelism()).at_level(level),
            )),
            (None, _) => Compressor::None(out),
        })
    }

    /// A compressor using `threads` worker threads; the output is the same
    /// for any number.
    #[cfg(test)]
    pub(crate) fn with_threads(
        compression: Compression,
        out: W,
        threads: usize,
    ) -> io::Result<Self> {
        Ok(match Codec::of(compression) {
            Some(codec) => Compressor::Members(Box::new(ParMemberWriter::new(codec, out, threads))),
            None => Compressor::None(out),
        })
    }

    pub(crate) fn finish(self) -> io::Result<W> {
        Ok(self.finish_indexed()?.0)
    }

    /// Ends the stream; when compressed also returns where its members are.
    pub(crate) fn finish_indexed(self) -> io::Result<(W, Option<BlobMembers>)> {
        match self {
            Compressor::Members(w) => w.finish().map(|(w, m)| (w, Some(m))),
            Compressor::None(w) => Ok((w, None)),
        }
    }
}

impl<W: Write> Write for Compressor<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Members(w) => w.write(buf),
            Compressor::None(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Members(w) => w.flush(),
            Compressor::None(w) => w.flush(),
        }
    }
}

/// A compressed member, or one an earlier blob holds.
enum Member {
    Fresh {
        /// Computed only when the member may be worth copying later (see
        /// [`MemberIndex::add`]).
        digest: Option<[u8; 32]>,
        /// Uncompressed length.
        raw: u64,
        bytes: Vec<u8>,
        /// The member's input buffer, handed back for another member.
        spent: Vec<u8>,
    },
    /// At (offset, length) in the earlier blob; `data` is kept to compress
    /// it after all if those bytes cannot be read.
    Known {
        digest: [u8; 32],
        at: (u64, u64),
        /// The codec's [`Codec::check`] of `data`.
        check: u32,
        data: Vec<u8>,
        /// The output buffer the job brought, unused.
        spent: Vec<u8>,
    },
}

type MemberResult = io::Result<Member>;
/// A member's bytes, a buffer for its output, the earlier blob's index and
/// where the result goes.
type Job = (
    Vec<u8>,
    Vec<u8>,
    Option<Arc<MemberIndex>>,
    SyncSender<MemberResult>,
);

/// How many emptied member buffers a writer keeps for the next members.
/// Every member needs two (its bytes and its output); a fresh multi-MiB
/// buffer comes from the allocator as new pages that are faulted in, and
/// zeroed by the kernel, once per member, which costs about as much as
/// compressing incompressible bytes. Two members' worth covers the steady
/// state, in which each written member frees what the next one takes.
const SPARE_BUFFERS: usize = 4;

/// Worker threads compressing members. Threads are started lazily, up to
/// `max`, and joined on drop.
struct Pool {
    codec: Codec,
    level: Level,
    max: usize,
    jobs: Option<Sender<Job>>,
    shared_rx: Arc<Mutex<Receiver<Job>>>,
    workers: Vec<JoinHandle<()>>,
}

impl Pool {
    fn new(codec: Codec, max: usize) -> Self {
        let (tx, rx) = mpsc::channel::<Job>();
        Pool {
            codec,
            level: Level::default(),
            max: max.max(1),
            jobs: Some(tx),
            shared_rx: Arc::new(Mutex::new(rx)),
            workers: Vec::new(),
        }
    }

    /// Queues `data`; `busy` is the number of jobs not yet collected, used to
    /// start another worker only when all current ones have work.
    fn submit(
        &mut self,
        data: Vec<u8>,
        out: Vec<u8>,
        index: Option<Arc<MemberIndex>>,
        busy: usize,
    ) -> io::Result<Receiver<MemberResult>> {
        if self.workers.len() < self.max && self.workers.len() <= busy {
            let rx = Arc::clone(&self.shared_rx);
            let (codec, level) = (self.codec, self.level);
            let handle = std::thread::Builder::new()
                .name(format!("kiln-{}", codec.name()))
                .spawn(move || member_worker(codec, level, &rx))?;
            self.workers.push(handle);
        }
        let (done_tx, done_rx) = mpsc::sync_channel(1);
        let jobs = self
            .jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("compression pool already stopped"))?;
        jobs.send((data, out, index, done_tx))
            .map_err(|_| io::Error::other("compression workers exited"))?;
        Ok(done_rx)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Closing the job channel makes every worker's `recv` fail and return.
        self.jobs = None;
        for handle in self.workers.drain(..) {
            if handle.join().is_err() {
                tracing::warn!("compression worker thread panicked");
            }
        }
    }
}

/// Parallel writer of a multi-member gzip or multi-frame zstd stream.
pub(crate) struct ParMemberWriter<W: Write> {
    codec: Codec,
    out: W,
    /// The current member's bytes so far.
    buf: Vec<u8>,
    cutter: Cutter,
    /// Stream offset of `buf[0]`.
    member_start: u64,
    cuts: Vec<u64>,
    pool: Pool,
    pending: VecDeque<Receiver<MemberResult>>,
    /// Whether any member was submitted (an empty input still needs one).
    submitted: bool,
    /// The earlier blob's index (for the workers) and bytes.
    old: Option<(Arc<MemberIndex>, OldBlob)>,
    /// This blob's members so far.
    members: BlobMembers,
    written: u64,
    /// For a member the earlier blob was meant to give but did not.
    fallback: Option<MemberEncoder>,
    /// Emptied buffers of written members (see [`SPARE_BUFFERS`]).
    spare: Vec<Vec<u8>>,
}

impl<W: Write> ParMemberWriter<W> {
    pub(crate) fn new(codec: Codec, out: W, threads: usize) -> Self {
        Self::with_cutter(codec, out, threads, Cutter::new(codec))
    }

    fn with_cutter(codec: Codec, out: W, threads: usize, cutter: Cutter) -> Self {
        ParMemberWriter {
            codec,
            out,
            buf: Vec::new(),
            cutter,
            member_start: 0,
            cuts: Vec::new(),
            pool: Pool::new(codec, threads),
            pending: VecDeque::new(),
            submitted: false,
            old: None,
            members: BlobMembers::default(),
            written: 0,
            fallback: None,
            spare: Vec::with_capacity(SPARE_BUFFERS),
        }
    }

    /// Compresses new members at `level` (before anything is written).
    pub(crate) fn at_level(mut self, level: Level) -> Self {
        self.pool.level = level;
        self
    }

    /// Copies the members `old` holds instead of compressing them.
    pub(crate) fn reusing(mut self, old: OldMembers) -> Self {
        self.old = Some((Arc::new(old.index), OldBlob::new(old.blob)));
        self
    }

    /// Submits the first `len` bytes of `buf` as a member.
    fn submit(&mut self, len: usize) -> io::Result<()> {
        // Bound memory: one member per worker. Each member holds its input
        // and its output (1 MiB each for incompressible data) until it is
        // written, and the member being filled one more buffer. Writing
        // the oldest before queueing this one (not after) keeps five
        // buffers, not seven, and the oldest's buffers are the ones this
        // member takes.
        while self.pending.len() >= self.pool.max {
            self.write_oldest()?;
        }
        let mut rest = self.spare.pop().unwrap_or_default();
        rest.extend_from_slice(&self.buf[len..]);
        self.buf.truncate(len);
        let data = std::mem::replace(&mut self.buf, rest);
        self.member_start += len as u64;
        self.submitted = true;
        let index = self.old.as_ref().map(|(i, _)| Arc::clone(i));
        let out = self.spare.pop().unwrap_or_default();
        let rx = self.pool.submit(data, out, index, self.pending.len())?;
        self.pending.push_back(rx);
        Ok(())
    }

    fn write_oldest(&mut self) -> io::Result<()> {
        let Some(rx) = self.pending.pop_front() else {
            return Ok(());
        };
        let member = rx
            .recv()
            .map_err(|_| io::Error::other("compression worker exited without a result"))??;
        match member {
            Member::Fresh {
                digest,
                raw,
                bytes,
                spent,
            } => {
                self.emit(digest, raw, &bytes)?;
                self.recycle(bytes);
                self.recycle(spent);
                Ok(())
            }
            Member::Known {
                digest,
                at: (offset, len),
                check,
                data,
                spent,
            } => {
                self.recycle(spent);
                let raw = data.len() as u64;
                let codec = self.codec;
                let copied = self
                    .old
                    .as_mut()
                    .and_then(|(_, blob)| blob.range(offset, len))
                    .filter(|b| codec.is_member_of(b, check, data.len()));
                match copied {
                    Some(bytes) => {
                        self.members.reused += 1;
                        self.emit(Some(digest), raw, &bytes)?;
                    }
                    None => {
                        let encoder = match &mut self.fallback {
                            Some(e) => e,
                            empty => empty.insert(MemberEncoder::new(codec, self.pool.level)?),
                        };
                        let bytes = encoder.member(&data)?;
                        self.emit(Some(digest), raw, &bytes)?;
                    }
                }
                self.recycle(data);
                Ok(())
            }
        }
    }

    /// Keeps an emptied buffer for a later member, up to [`SPARE_BUFFERS`].
    fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < SPARE_BUFFERS {
            buf.clear();
            self.spare.push(buf);
        }
    }

    fn emit(&mut self, digest: Option<[u8; 32]>, raw: u64, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        let len = bytes.len() as u64;
        self.members.index.add(digest, self.written, len, raw);
        self.members.total += 1;
        self.written += len;
        Ok(())
    }

    pub(crate) fn finish(mut self) -> io::Result<(W, BlobMembers)> {
        if !self.buf.is_empty() || !self.submitted {
            self.submit(self.buf.len())?;
        }
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        self.out.flush()?;
        let members = std::mem::take(&mut self.members);
        // Dropping the pool joins the (now idle) workers.
        let ParMemberWriter { out, .. } = self;
        Ok((out, members))
    }
}

impl<W: Write> Write for ParMemberWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut cuts = std::mem::take(&mut self.cuts);
        self.cutter.scan(data, &mut cuts);
        self.buf.extend_from_slice(data);
        for &cut in &cuts {
            let len = usize::try_from(cut - self.member_start)
                .map_err(|_| io::Error::other("compressed member too large"))?;
            self.submit(len)?;
        }
        cuts.clear();
        self.cuts = cuts;
        Ok(data.len())
    }

    /// Only flushes what is already compressed; a partial member stays
    /// buffered so that member boundaries do not depend on flush calls.
    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl Codec {
    /// The name of the compression (and of its worker threads).
    fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
        }
    }

    /// What [`Codec::is_member_of`] checks a copied member against, from
    /// its uncompressed bytes: gzip's CRC-32; nothing for zstd, whose
    /// frames say their content size and are walked block by block.
    fn check(self, data: &[u8]) -> u32 {
        match self {
            Codec::Gzip => {
                let mut crc = flate2::Crc::new();
                crc.update(data);
                crc.sum()
            }
            Codec::Zstd => 0,
        }
    }

    /// Whether `bytes` look like the member of `len` bytes (with `check`)
    /// that [`MemberEncoder`] writes: a cheap check that the earlier blob's
    /// index pointed at the right bytes. gzip: the header and the trailer
    /// (CRC-32 and length); zstd: one whole frame (magic number, block
    /// headers and checksum field spanning exactly `bytes`) whose header
    /// states `len` as its content size.
    fn is_member_of(self, bytes: &[u8], check: u32, len: usize) -> bool {
        let n = bytes.len();
        match self {
            Codec::Gzip => {
                n >= GZIP_HEADER.len() + 8
                    && bytes[..GZIP_HEADER.len()] == GZIP_HEADER
                    && bytes[n - 8..n - 4] == check.to_le_bytes()
                    && bytes[n - 4..] == (len as u32).to_le_bytes()
            }
            Codec::Zstd => {
                bytes.starts_with(&ZSTD_MAGIC)
                    && matches!(zstd::zstd_safe::get_frame_content_size(bytes), Ok(Some(l)) if l == len as u64)
                    && zstd::zstd_safe::find_frame_compressed_size(bytes) == Ok(n)
            }
        }
    }
}

fn member_worker(codec: Codec, level: Level, rx: &Mutex<Receiver<Job>>) {
    // One encoder per thread: its state is reset, not reallocated, for
    // every member. Made on the first job, which gets the error if it
    // cannot be.
    let mut encoder: Option<MemberEncoder> = None;
    loop {
        let job = match rx.lock() {
            Ok(guard) => guard.recv(),
            Err(_) => return,
        };
        let Ok((data, out, index, done)) = job else {
            return;
        };
        // Looked up only in an index worth copying from (see
        // `layer::old_members`); its entries are all worth copying.
        let digest = index
            .as_ref()
            .map(|_| -> [u8; 32] { Sha256::digest(&data).into() });
        let known = index.zip(digest).and_then(|(i, d)| {
            i.members
                .get(&d)
                .map(|&(offset, len, _)| (d, (offset, len)))
        });
        let result = match known {
            Some((digest, at)) => Ok(Member::Known {
                digest,
                at,
                check: codec.check(&data),
                data,
                spent: out,
            }),
            None => fresh((codec, level), &mut encoder, data, out, digest),
        };
        // The receiver may be gone if the writer was dropped; that is fine.
        let _ = done.send(result);
    }
}

/// `data` compressed into `out`, with its digest if it is worth indexing
/// (computed here unless the lookup did already).
fn fresh(
    (codec, level): (Codec, Level),
    encoder: &mut Option<MemberEncoder>,
    data: Vec<u8>,
    mut out: Vec<u8>,
    digest: Option<[u8; 32]>,
) -> MemberResult {
    let encoder = match encoder {
        Some(e) => e,
        empty => empty.insert(MemberEncoder::new(codec, level)?),
    };
    encoder.member_into(&data, &mut out)?;
    let raw = data.len() as u64;
    let digest = worth_copying(out.len() as u64, raw)
        .then(|| digest.unwrap_or_else(|| Sha256::digest(&data).into()));
    Ok(Member::Fresh {
        digest,
        raw,
        bytes: out,
        spent: data,
    })
}

/// Encodes members of one codec; every member is a pure function of its
/// bytes.
pub(crate) enum MemberEncoder {
    Gzip(Box<GzipEncoder>),
    Zstd(ZstdEncoder),
}

impl MemberEncoder {
    pub(crate) fn new(codec: Codec, level: Level) -> io::Result<Self> {
        Ok(match codec {
            Codec::Gzip => MemberEncoder::Gzip(Box::new(GzipEncoder::with_level(level))),
            Codec::Zstd => MemberEncoder::Zstd(ZstdEncoder::with_level(level)?),
        })
    }

    /// One complete member holding `data`.
    pub(crate) fn member(&mut self, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.member_into(data, &mut out)?;
        Ok(out)
    }

    /// One complete member holding `data`, in place of what `out` held.
    pub(crate) fn member_into(&mut self, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        out.clear();
        match self {
            MemberEncoder::Gzip(e) => e.member_into(data, out),
            MemberEncoder::Zstd(e) => e.member_into(data, out),
        }
    }
}

/// The magic number every zstd frame starts with (RFC 8878 §3.1.1).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Encodes zstd frames (at level 3 unless asked: [`Level`]) with the content size and a
/// content checksum in every frame (as the `zstd` tool and containerd's
/// encoder write them). A frame is one single-threaded `ZSTD_compress2` of
/// the member's bytes, so it depends only on them (and the zstd version
/// built in, which `Cargo.lock` pins); zstd already stores incompressible
/// blocks raw, at about 2 GB/s per core here.
pub(crate) struct ZstdEncoder {
    cctx: zstd::bulk::Compressor<'static>,
}

impl ZstdEncoder {
    pub(crate) fn with_level(level: Level) -> io::Result<Self> {
        let mut cctx = zstd::bulk::Compressor::new(level.zstd())?;
        cctx.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
        cctx.set_parameter(zstd::zstd_safe::CParameter::ContentSizeFlag(true))?;
        Ok(ZstdEncoder { cctx })
    }

    /// One complete zstd frame holding `data`, in place of what `out` held.
    fn member_into(&mut self, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        out.clear();
        out.reserve(zstd::zstd_safe::compress_bound(data.len()));
        self.cctx.compress_to_buffer(data, out)?;
        Ok(())
    }
}

/// The fixed header of every member: deflate, no flags, mtime 0, no extra
/// flags, OS unknown (what flate2's `GzBuilder` writes at level 6 with
/// mtime 0).
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
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
pub(crate) struct GzipEncoder {
    deflate: flate2::Compress,
    probe: flate2::Compress,
    probe_out: Vec<u8>,
}

impl GzipEncoder {
    #[cfg(test)]
    pub(crate) fn new() -> Self {
        Self::with_level(Level::default())
    }

    /// Deflates at `level` (6, gzip's and BuildKit's default, unless
    /// asked); level 0 stores every member.
    pub(crate) fn with_level(level: Level) -> Self {
        GzipEncoder {
            deflate: flate2::Compress::new(flate2::Compression::new(level.gzip()), false),
            probe: flate2::Compress::new(flate2::Compression::new(PROBE_LEVEL), false),
            probe_out: Vec::with_capacity(PROBE_SLICE + PROBE_SLICE / 8 + 256),
        }
    }

    /// One complete gzip member holding `data`.
    #[cfg(test)]
    pub(crate) fn member(&mut self, data: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        self.member_into(data, &mut out)?;
        Ok(out)
    }

    /// One complete gzip member holding `data`, in place of what `out` held.
    fn member_into(&mut self, data: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
        out.clear();
        out.reserve(GZIP_HEADER.len() + data.len() + data.len() / 64 + 256);
        out.extend_from_slice(&GZIP_HEADER);
        if self.incompressible(data)? {
            stored_blocks(data, out);
        } else {
            self.deflate(data, out)?;
        }
        let mut crc = flate2::Crc::new();
        crc.update(data);
        out.extend_from_slice(&crc.sum().to_le_bytes());
        // ISIZE is the length modulo 2^32 (RFC 1952).
        out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        Ok(())
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
        let mut w = ParMemberWriter::with_cutter(
            Codec::Gzip,
            Vec::new(),
            threads,
            Cutter::with_step(block as u64),
        );
        for chunk in data.chunks(1000) {
            w.write_all(chunk).expect("vec write");
        }
        w.finish().expect("finish").0
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
        let mut enc = GzipEncoder::new();
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
            GzipEncoder::new().member(&source).expect("member"),
            deflated
        );
    }

    /// Half incompressible, half text: one probe slice in two compresses,
    /// so the member is deflated (the text must not be stored).
    #[test]
    fn a_member_with_compressible_parts_is_deflated() {
        let mut data = incompressible(512 * 1024);
        data.extend(text(512 * 1024));
        let member = GzipEncoder::new().member(&data).expect("member");
        assert!(member.len() < data.len() * 2 / 3, "{}", member.len());
        assert_eq!(gunzip(&member), data);
    }

    #[test]
    fn gzip_tool_reads_stored_and_deflated_members() {
        let mut data = incompressible(3 * 200 * 1024 + 5);
        data.extend(text(300 * 1024));
        let gz = par_gzip(&data, 2, 200 * 1024);
        assert_eq!(tool_decompress(Codec::Gzip, gz), data);
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

    /// A tar of `n` text files of about 20 KB whose words depend on
    /// `seed` and the file, and the same tar with file `edit` grown.
    fn text_tar(n: usize, edit: Option<usize>) -> Vec<u8> {
        use crate::diff::tar::{Entry, EntryKind, TarWriter};
        let mut w = TarWriter::new(Vec::new());
        for i in 0..n {
            let mut body = Vec::new();
            let mut x = i as u64 * 7919 + 1;
            while body.len() < 20 * 1024 {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                body.extend_from_slice(format!("word{} ", x >> 52).as_bytes());
            }
            if edit == Some(i) {
                body.extend_from_slice(&b"an edit that makes the file longer\n".repeat(90));
            }
            let path = format!("src/mod-{i:04}.rs");
            let e = Entry::fixed(path.as_bytes(), EntryKind::Regular, body.len() as u64);
            w.append_header(&e).expect("header");
            w.copy_data(&mut &body[..], body.len() as u64)
                .expect("data");
        }
        w.finish().expect("finish")
    }

    /// `data` as `codec` members, cut at gzip's sizes (so that a small tar
    /// has many members whatever the codec).
    fn members_of(codec: Codec, data: &[u8], old: Option<OldMembers>) -> (Vec<u8>, BlobMembers) {
        let mut w = ParMemberWriter::with_cutter(codec, Vec::new(), 2, Cutter::new(Codec::Gzip));
        if let Some(old) = old {
            w = w.reusing(old);
        }
        for chunk in data.chunks(100_000) {
            w.write_all(chunk).expect("vec write");
        }
        w.finish().expect("finish")
    }

    /// `data` through `gzip -dc` or `zstd -dc`.
    fn tool_decompress(codec: Codec, data: Vec<u8>) -> Vec<u8> {
        let mut child = std::process::Command::new(codec.name())
            .args(["-d", "-c"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{} runs: {e}", codec.name()));
        let mut stdin = child.stdin.take().expect("stdin");
        let writer = std::thread::spawn(move || stdin.write_all(&data).expect("feed the tool"));
        let out = child.wait_with_output().expect("tool output");
        writer.join().expect("writer");
        assert!(out.status.success(), "{} -d failed", codec.name());
        out.stdout
    }

    /// A file edited in the middle of a layer: the blob made from the
    /// earlier blob's members is the cold blob, byte for byte, copies all
    /// but the members around the edit, and `gzip -d` / `zstd -d` read it.
    #[test]
    fn reusing_members_gives_the_cold_blob() {
        let before = text_tar(600, None);
        let after = text_tar(600, Some(300));
        for codec in [Codec::Gzip, Codec::Zstd] {
            let (old_blob, old) = members_of(codec, &before, None);
            let (cold, cold_members) = members_of(codec, &after, None);
            let (warm, warm_members) = members_of(
                codec,
                &after,
                Some(OldMembers {
                    index: old.index.clone(),
                    blob: Box::new(io::Cursor::new(old_blob.clone())),
                }),
            );
            assert_eq!(warm, cold, "{codec:?}");
            assert_eq!(warm_members.index, cold_members.index);
            let total = cold_members.total;
            assert!(total >= 10, "{total} members");
            assert_eq!(cold_members.index.members.len(), total, "{codec:?}");
            assert!(
                warm_members.reused > 0 && warm_members.reused + 3 >= total,
                "{codec:?}: {} of {total} reused",
                warm_members.reused
            );
            assert_eq!(cold_members.reused, 0);
            assert_eq!(tool_decompress(codec, warm), after, "{codec:?}");
        }
    }

    /// zstd frames carry their content size and checksum, and the stream
    /// is as many frames as members.
    #[test]
    fn zstd_members_are_checksummed_frames() {
        let data = text_tar(200, None);
        let (blob, m) = members_of(Codec::Zstd, &data, None);
        assert_eq!(zstd::decode_all(&blob[..]).expect("zstd decode"), data);
        let mut rest = &blob[..];
        let mut frames = 0;
        while !rest.is_empty() {
            let n = zstd::zstd_safe::find_frame_compressed_size(rest).expect("a frame");
            assert!(zstd::zstd_safe::get_frame_content_size(rest)
                .expect("header")
                .is_some());
            // Frame header descriptor: bit 2 is the content checksum flag.
            assert_eq!(rest[4] & 0b100, 0b100, "frame {frames} has no checksum");
            rest = &rest[n..];
            frames += 1;
        }
        assert_eq!(frames, m.total);
        assert!(frames > 1);
    }

    /// Incompressible members are counted but neither hashed nor indexed,
    /// so a blob of them is not read again for reuse.
    #[test]
    fn incompressible_members_are_not_indexed() {
        let mut data = incompressible(3 * 1024 * 1024);
        data.extend(text_tar(100, None));
        for codec in [Codec::Gzip, Codec::Zstd] {
            let (blob, m) = members_of(codec, &data, None);
            assert_eq!(m.index.len, blob.len() as u64);
            assert_eq!(m.index.raw, data.len() as u64);
            assert!(m.total > m.index.members.len(), "{codec:?}");
            assert!(!m.index.members.is_empty(), "{codec:?}");
            let (random, m) = members_of(codec, &incompressible(3 << 20), None);
            assert!(m.index.members.is_empty(), "{codec:?}");
            assert!(!m.index.worth_copying());
            assert_eq!(m.index.len, random.len() as u64);
        }
    }

    /// An earlier blob whose bytes are not what its index says (here all
    /// zeros) is not copied from: its members are compressed again.
    #[test]
    fn members_that_do_not_check_out_are_compressed_again() {
        let before = text_tar(200, None);
        for codec in [Codec::Gzip, Codec::Zstd] {
            let (old_blob, old) = members_of(codec, &before, None);
            let (cold, _) = members_of(codec, &before, None);
            let (warm, m) = members_of(
                codec,
                &before,
                Some(OldMembers {
                    index: old.index,
                    blob: Box::new(io::Cursor::new(vec![0u8; old_blob.len()])),
                }),
            );
            assert_eq!(m.reused, 0, "{codec:?}");
            assert_eq!(warm, cold, "{codec:?}");
        }
    }

    #[test]
    fn empty_input_is_a_valid_stream() {
        let out = ParMemberWriter::new(Codec::Gzip, Vec::new(), 2)
            .finish()
            .expect("finish")
            .0;
        assert!(gunzip(&out).is_empty());
        let out = ParMemberWriter::new(Codec::Zstd, Vec::new(), 2)
            .finish()
            .expect("finish")
            .0;
        assert!(!out.is_empty());
        assert!(zstd::decode_all(&out[..]).expect("zstd").is_empty());
    }
}
