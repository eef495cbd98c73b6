//! Where a gzip or zstd layer is cut into members, and the index that lets
//! a later blob reuse a member's compressed bytes.
//!
//! Both compressions concatenate: a series of gzip members is one gzip
//! stream (RFC 1952 §2.2) and a series of zstd frames is one zstd stream
//! (RFC 8878 §3.1), each decompressing to the concatenation of its parts;
//! "member" below means either.
//!
//! Members are cut at tar entry boundaries chosen by the tar bytes alone
//! (`Cutter`), so that a change in one file moves the cuts around it
//! only: the members before and after it hold the same bytes as before and
//! so compress to the same bytes (every member is a pure function of its
//! bytes, see `compress::MemberEncoder`). A blob's [`MemberIndex`] maps the
//! SHA-256 of each member's uncompressed bytes to where its compressed
//! bytes are in that blob; a new blob of a changed layer copies those bytes
//! instead of compressing again, and is byte for byte the blob a cold
//! build makes.
//!
//! The cut rule, the same for both compressions but for its sizes (gzip:
//! `MIN` 512 KiB, `MAX` 4 MiB, `BIG` 1 MiB; zstd, whose window is larger:
//! 4, 8 and 4 MiB). The blob's bytes depend on it, so changing it changes
//! every gzip or zstd digest; bump the versions in [`Codec::index_version`]
//! with it:
//! - a cut may only fall where a tar entry starts (before its PAX or GNU
//!   long-name headers, which belong to it), or inside a big file's data;
//! - an entry whose data is at least `BIG` starts a member, its data is
//!   cut every `BIG` bytes from where the data starts, and the entry after
//!   it starts a member;
//! - otherwise a member ends before an entry once it holds at least
//!   `MIN` bytes and the entry's name hashes to 0 modulo `SPREAD`, or
//!   once it holds at least `MAX` bytes. The name (not the position or
//!   size) picks the cuts, so an edit that changes a file's size leaves the
//!   same cuts after it as soon as one cut falls on the same entry;
//! - bytes that do not parse as a tar (a bad header checksum, an unknown
//!   size) are cut every `BIG` bytes from the last cut on.
//!
//! Only members worth copying (`worth_copying`) are indexed: copying
//! incompressible bytes out of the store costs more than compressing them
//! again, so those are neither hashed nor looked up.

use std::collections::HashMap;
use std::io::{self, Read};

use super::Compression;

/// gzip members end before an entry once they hold this much...
pub(crate) const MIN: u64 = 512 * 1024;
/// ...and its name hashes to 0 modulo this...
const SPREAD: u64 = 8;
/// ...or at the first entry once they hold this much.
pub(crate) const MAX: u64 = 4 << 20;
/// Files this big get gzip members of their own, cut every `BIG` bytes.
pub(crate) const BIG: u64 = 1 << 20;
/// zstd's `MIN`, `MAX` and `BIG`. Its level-3 window is 2 MiB (deflate's
/// is 32 KiB), so every frame start loses more: on a 200 MB tar of Rust
/// sources, frames of 0.7 MiB made the blob 12% larger than one frame,
/// frames of 4 MiB 1.6%, of 8 MiB 0.8%.
const ZSTD_SIZES: (u64, u64, u64) = (4 << 20, 8 << 20, 4 << 20);

const BLOCK: u64 = 512;

/// The compressions whose blobs are made of members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    /// gzip members (see `compress::GzipEncoder`).
    Gzip,
    /// zstd frames (see `compress::ZstdEncoder`).
    Zstd,
}

impl Codec {
    /// The codec of a compression; `None` for an uncompressed layer.
    pub fn of(compression: Compression) -> Option<Codec> {
        match compression {
            Compression::Gzip => Some(Codec::Gzip),
            Compression::Zstd => Some(Codec::Zstd),
            Compression::Uncompressed => None,
        }
    }

    /// The first line of an encoded [`MemberIndex`]: it names the
    /// compression, the cut rule and the member encoding, so an index made
    /// by another version (or for the other compression) is not used.
    pub fn index_version(self) -> &'static str {
        match self {
            Codec::Gzip => "kiln gzip members v2",
            Codec::Zstd => "kiln zstd frames v1",
        }
    }
}

/// Finds the member cuts of a tar stream fed to it in pieces.
#[derive(Debug)]
pub(crate) struct Cutter {
    /// Bytes seen.
    pos: u64,
    /// Where the current member starts.
    last_cut: u64,
    state: State,
    /// A header block being collected.
    header: Vec<u8>,
    /// Where the current entry's first (PAX or long-name) header started.
    group_start: Option<u64>,
    /// `size` from the entry's PAX header.
    pax_size: Option<u64>,
    /// The previous entry was big: the next one starts a member.
    after_big: bool,
    /// The codec's `MIN` and `MAX`.
    min: u64,
    max: u64,
    /// The codec's `BIG` (smaller in tests).
    step: u64,
}

#[derive(Debug)]
enum State {
    Header,
    /// Data (with padding) to pass over; inside a big file's data, the
    /// next cut and where the data ends.
    Skip {
        left: u64,
        next_cut: Option<(u64, u64)>,
    },
    /// A PAX header's records being collected, then padding.
    Pax {
        data: Vec<u8>,
        size: u64,
        pad: u64,
    },
    /// Not a tar (any more): fixed cuts.
    Opaque,
}

fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK) * BLOCK
}

impl Codec {
    /// `MIN`, `MAX` and `BIG` of this codec's members.
    fn cut_sizes(self) -> (u64, u64, u64) {
        match self {
            Codec::Gzip => (MIN, MAX, BIG),
            Codec::Zstd => ZSTD_SIZES,
        }
    }
}

impl Cutter {
    /// A cutter for `codec`'s member sizes.
    pub(crate) fn new(codec: Codec) -> Self {
        let (min, max, step) = codec.cut_sizes();
        Cutter {
            pos: 0,
            last_cut: 0,
            state: State::Header,
            header: Vec::with_capacity(BLOCK as usize),
            group_start: None,
            pax_size: None,
            after_big: false,
            min,
            max,
            step,
        }
    }

    /// A gzip cutter whose fixed cuts (and big files) use `step`, not
    /// [`BIG`].
    #[cfg(test)]
    pub(crate) fn with_step(step: u64) -> Self {
        Cutter {
            step: step.max(1),
            ..Cutter::new(Codec::Gzip)
        }
    }

    /// Feeds the next bytes of the stream and appends the cuts they settle
    /// (stream offsets, increasing, each past the previous cut and at most
    /// the offset after `data`).
    pub(crate) fn scan(&mut self, mut data: &[u8], cuts: &mut Vec<u64>) {
        while !data.is_empty() {
            match &mut self.state {
                State::Header => {
                    let want = BLOCK as usize - self.header.len();
                    let n = want.min(data.len());
                    self.header.extend_from_slice(&data[..n]);
                    data = &data[n..];
                    self.pos += n as u64;
                    if self.header.len() == BLOCK as usize {
                        let header = std::mem::take(&mut self.header);
                        self.on_header(&header, cuts);
                        self.header = header;
                        self.header.clear();
                    }
                }
                State::Skip { left, next_cut } => {
                    let n = (*left).min(data.len() as u64);
                    *left -= n;
                    data = &data[n as usize..];
                    self.pos += n;
                    while let Some((at, end)) = *next_cut {
                        if at > self.pos {
                            break;
                        }
                        if at < end && at > self.last_cut {
                            cuts.push(at);
                            self.last_cut = at;
                        }
                        *next_cut = (at + self.step < end).then_some((at + self.step, end));
                    }
                    if *left == 0 {
                        self.state = State::Header;
                    }
                }
                State::Pax {
                    data: pax,
                    size,
                    pad,
                } => {
                    if (pax.len() as u64) < *size {
                        let n = ((*size - pax.len() as u64) as usize).min(data.len());
                        pax.extend_from_slice(&data[..n]);
                        data = &data[n..];
                        self.pos += n as u64;
                        if pax.len() as u64 == *size {
                            self.pax_size = pax_record_size(pax);
                        }
                    } else {
                        let n = (*pad).min(data.len() as u64);
                        *pad -= n;
                        data = &data[n as usize..];
                        self.pos += n;
                    }
                    if pax.len() as u64 == *size && *pad == 0 {
                        self.state = State::Header;
                    }
                }
                State::Opaque => {
                    self.pos += data.len() as u64;
                    data = &[];
                    while self.last_cut + self.step <= self.pos {
                        self.last_cut += self.step;
                        cuts.push(self.last_cut);
                    }
                }
            }
        }
    }

    /// A whole header block has been read; it started at `pos - 512`.
    fn on_header(&mut self, h: &[u8], cuts: &mut Vec<u64>) {
        let start = self.pos - BLOCK;
        if h.iter().all(|&b| b == 0) {
            // End-of-archive blocks: no entry, no cut.
            return;
        }
        let Some(size) = header_ok(h).then(|| header_size(h)).flatten() else {
            self.state = State::Opaque;
            // The bytes already seen count from the last cut.
            while self.last_cut + self.step <= self.pos {
                self.last_cut += self.step;
                cuts.push(self.last_cut);
            }
            return;
        };
        match h[156] {
            b'x' | b'g' | b'L' | b'K' => {
                self.group_start.get_or_insert(start);
                let pad = padded(size) - size;
                self.state = if h[156] == b'x' && size <= BIG {
                    State::Pax {
                        data: Vec::with_capacity(size as usize),
                        size,
                        pad,
                    }
                } else {
                    State::Skip {
                        left: size + pad,
                        next_cut: None,
                    }
                };
                if self.state_is_done() {
                    self.state = State::Header;
                }
            }
            kind => {
                let begin = self.group_start.take().unwrap_or(start);
                let pax_size = self.pax_size.take();
                // Go's archive/tar: these types never have data.
                let size = if matches!(kind, b'1'..=b'6') {
                    0
                } else {
                    pax_size.unwrap_or(size)
                };
                let len = begin - self.last_cut;
                let big = size >= self.step;
                let cut = begin > self.last_cut
                    && (self.after_big
                        || big
                        || len >= self.max
                        || (len >= self.min && name_hash(&h[..100]) % SPREAD == 0));
                if cut {
                    cuts.push(begin);
                    self.last_cut = begin;
                }
                self.after_big = big;
                let data_start = self.pos;
                let next_cut = big.then_some((data_start + self.step, data_start + size));
                self.state = match padded(size) {
                    0 => State::Header,
                    left => State::Skip { left, next_cut },
                };
            }
        }
    }

    fn state_is_done(&self) -> bool {
        match &self.state {
            State::Skip { left, .. } => *left == 0,
            State::Pax { size, pad, .. } => *size == 0 && *pad == 0,
            _ => false,
        }
    }
}

/// Whether the header's checksum is right (the unsigned sum of the block
/// with the checksum field read as spaces).
fn header_ok(h: &[u8]) -> bool {
    let sum: u64 = h
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u64::from(b)
            }
        })
        .sum();
    parse_octal(&h[148..156]) == Some(sum)
}

/// The size field: octal, or base-256 with the high bit set.
fn header_size(h: &[u8]) -> Option<u64> {
    let f = &h[124..136];
    if f[0] & 0x80 != 0 {
        if f[0] != 0x80 || f[1..4].iter().any(|&b| b != 0) {
            return None;
        }
        return Some(f[4..].iter().fold(0u64, |a, &b| (a << 8) | u64::from(b)));
    }
    parse_octal(f)
}

fn parse_octal(f: &[u8]) -> Option<u64> {
    let s: Vec<u8> = f
        .iter()
        .copied()
        .skip_while(|&b| b == b' ' || b == 0)
        .take_while(|&b| b != b' ' && b != 0)
        .collect();
    if s.is_empty() {
        return Some(0);
    }
    let mut v: u64 = 0;
    for b in s {
        if !(b'0'..=b'7').contains(&b) {
            return None;
        }
        v = v.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// The `size` record of PAX header data (`<len> <key>=<value>\n` records).
fn pax_record_size(mut data: &[u8]) -> Option<u64> {
    let mut found = None;
    while !data.is_empty() {
        let sp = data.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&data[..sp]).ok()?.parse().ok()?;
        if len <= sp || len > data.len() {
            return None;
        }
        let record = &data[sp + 1..len];
        let record = record.strip_suffix(b"\n")?;
        if let Some(v) = record.strip_prefix(b"size=") {
            found = std::str::from_utf8(v).ok()?.parse().ok();
        }
        data = &data[len..];
    }
    found
}

/// FNV-1a of the name field up to its first NUL.
fn name_hash(name: &[u8]) -> u64 {
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    name[..end].iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Where each member of a blob worth copying is: the SHA-256 of its
/// uncompressed bytes -> (offset, length) of its compressed bytes in the
/// blob and the length of its uncompressed bytes; and the compressed and
/// uncompressed bytes of all its members.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberIndex {
    pub members: HashMap<[u8; 32], (u64, u64, u64)>,
    /// Compressed bytes of every member, indexed or not.
    pub len: u64,
    /// Uncompressed bytes of every member, indexed or not.
    pub raw: u64,
}

impl MemberIndex {
    /// The index as a small blob: `codec`'s [`Codec::index_version`], a
    /// `total <length> <uncompressed length>` line, then one
    /// `<hex sha256> <offset> <length> <uncompressed length>` line per
    /// member, by offset.
    pub fn encode(&self, codec: Codec) -> Vec<u8> {
        let mut rows: Vec<_> = self.members.iter().collect();
        rows.sort_by_key(|(_, at)| **at);
        let mut out = format!(
            "{}\ntotal {} {}\n",
            codec.index_version(),
            self.len,
            self.raw
        )
        .into_bytes();
        for (digest, (offset, len, raw)) in rows {
            let line = format!("{} {offset} {len} {raw}\n", hex::encode(digest));
            out.extend_from_slice(line.as_bytes());
        }
        out
    }

    /// Reads [`MemberIndex::encode`]'s form; `None` for another version or
    /// codec, or anything malformed (the blob is then made without reuse).
    pub fn decode(data: &[u8], codec: Codec) -> Option<Self> {
        let text = std::str::from_utf8(data).ok()?;
        let mut lines = text.lines();
        if lines.next()? != codec.index_version() {
            return None;
        }
        let mut total = lines.next()?.strip_prefix("total ")?.split(' ');
        let (len, raw) = (total.next()?.parse().ok()?, total.next()?.parse().ok()?);
        if total.next().is_some() {
            return None;
        }
        let mut members = HashMap::new();
        for l in lines {
            let mut f = l.split(' ');
            let (d, o, n, r) = (f.next()?, f.next()?, f.next()?, f.next()?);
            let digest: [u8; 32] = hex::decode(d).ok()?.try_into().ok()?;
            let at = (o.parse().ok()?, n.parse().ok()?, r.parse().ok()?);
            members.insert(digest, at);
        }
        Some(MemberIndex { members, len, raw })
    }

    /// Whether the blob compresses at all: copying a member of stored
    /// (incompressible) bytes from the store costs more than storing it
    /// again, so a blob whose members together shrink by less than 1/8
    /// is not worth reading for the few that do.
    pub fn worth_copying(&self) -> bool {
        !self.members.is_empty() && worth_copying(self.len, self.raw)
    }

    /// Counts a member of `raw` bytes written as `len` bytes at `offset`;
    /// indexes it under `digest` when it is worth copying (the first of
    /// equal members is kept).
    pub(crate) fn add(&mut self, digest: Option<[u8; 32]>, offset: u64, len: u64, raw: u64) {
        self.len += len;
        self.raw += raw;
        if let Some(d) = digest.filter(|_| worth_copying(len, raw)) {
            self.members.entry(d).or_insert((offset, len, raw));
        }
    }
}

/// Whether a member of `raw` bytes that compressed to `len` is worth
/// copying rather than compressing again (see
/// [`MemberIndex::worth_copying`]).
pub(crate) fn worth_copying(len: u64, raw: u64) -> bool {
    len.saturating_mul(8) < raw.saturating_mul(7)
}

/// What a gzip or zstd blob's members were.
#[derive(Debug, Clone, Default)]
pub struct BlobMembers {
    pub index: MemberIndex,
    /// Members written.
    pub total: usize,
    /// Of those, copied from an earlier blob.
    pub reused: usize,
}

/// The members of an earlier blob a new one may copy.
pub struct OldMembers {
    pub index: MemberIndex,
    /// The earlier blob's bytes, read front to back.
    pub blob: Box<dyn Read + Send>,
}

impl std::fmt::Debug for OldMembers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OldMembers")
            .field("members", &self.index.members.len())
            .finish_non_exhaustive()
    }
}

/// Reads ranges of an earlier blob in increasing order.
pub(crate) struct OldBlob {
    blob: Box<dyn Read + Send>,
    pos: u64,
    broken: bool,
}

impl OldBlob {
    pub(crate) fn new(blob: Box<dyn Read + Send>) -> Self {
        OldBlob {
            blob,
            pos: 0,
            broken: false,
        }
    }

    /// The `len` bytes at `offset`, or `None` when they are behind what was
    /// read already or the blob cannot be read (the member is then
    /// compressed instead).
    pub(crate) fn range(&mut self, offset: u64, len: u64) -> Option<Vec<u8>> {
        if self.broken || offset < self.pos {
            return None;
        }
        let skip = offset - self.pos;
        let r = (|| {
            let skipped = io::copy(&mut (&mut self.blob).take(skip), &mut io::sink())?;
            if skipped != skip {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            let mut buf = vec![0; usize::try_from(len).map_err(io::Error::other)?];
            self.blob.read_exact(&mut buf)?;
            Ok::<_, io::Error>(buf)
        })();
        match r {
            Ok(buf) => {
                self.pos = offset + len;
                Some(buf)
            }
            Err(e) => {
                tracing::debug!(error = %e, "earlier layer blob unreadable; compressing instead");
                self.broken = true;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diff::tar::{Entry, EntryKind, TarWriter};

    /// A tar of `files` (name, size) with PAX headers for long names, and
    /// the offset where each entry (its first header) starts.
    fn tar_of(files: &[(String, usize)]) -> (Vec<u8>, Vec<u64>) {
        let mut w = TarWriter::new(Vec::new());
        let mut starts = Vec::new();
        let mut out = Vec::new();
        for (name, size) in files {
            starts.push(out.len() as u64);
            let e = Entry::fixed(name.as_bytes(), EntryKind::Regular, *size as u64);
            w.append_header(&e).expect("header");
            let data = vec![b'a'; *size];
            w.copy_data(&mut &data[..], *size as u64).expect("data");
            out.extend(w.take());
        }
        out.extend(w.finish().expect("finish"));
        (out, starts)
    }

    fn cuts_of(tar: &[u8], piece: usize) -> Vec<u64> {
        let mut c = Cutter::new(Codec::Gzip);
        let mut cuts = Vec::new();
        for p in tar.chunks(piece) {
            c.scan(p, &mut cuts);
        }
        cuts
    }

    fn small_files(n: usize, size: usize) -> Vec<(String, usize)> {
        (0..n).map(|i| (format!("d/file-{i:05}"), size)).collect()
    }

    #[test]
    fn cuts_fall_on_entry_starts_and_do_not_depend_on_the_pieces() {
        let mut files = small_files(300, 20 * 1024);
        files.insert(7, ("x".repeat(150), 3000));
        let (tar, starts) = tar_of(&files);
        let cuts = cuts_of(&tar, 4096);
        assert!(cuts.len() >= 3, "{cuts:?}");
        for c in &cuts {
            assert!(starts.contains(c), "cut {c} is not an entry start");
        }
        assert_eq!(cuts, cuts_of(&tar, 777));
        assert_eq!(cuts, cuts_of(&tar, 1));
        let sizes: Vec<u64> = cuts.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            sizes.iter().all(|&s| (MIN..=MAX + BIG).contains(&s)),
            "{sizes:?}"
        );
    }

    #[test]
    fn zstd_members_are_bigger() {
        let mut files = small_files(1000, 20 * 1024);
        files.insert(500, ("big".into(), 9 << 20));
        let (tar, starts) = tar_of(&files);
        let mut c = Cutter::new(Codec::Zstd);
        let mut cuts = Vec::new();
        for p in tar.chunks(65536) {
            c.scan(p, &mut cuts);
        }
        let (min, max, big) = ZSTD_SIZES;
        let big_data = starts[500] + BLOCK;
        // The big file starts a member, is cut every 4 MiB of its data,
        // and the entry after it starts one.
        for at in [starts[500], big_data + big, big_data + 2 * big, starts[501]] {
            assert!(cuts.contains(&at), "no cut at {at}: {cuts:?}");
        }
        let mut from = 0;
        for &cut in &cuts {
            let len = cut - from;
            let forced = [starts[500], starts[501], big_data + big, big_data + 2 * big];
            if !forced.contains(&cut) && from != starts[501] {
                assert!(
                    (min..=max + big).contains(&len),
                    "member of {len} at {from}"
                );
            }
            from = cut;
        }
    }

    #[test]
    fn a_big_file_has_members_of_its_own_cut_every_big_bytes() {
        let mut files = small_files(10, 1000);
        files.push(("big".into(), 3 * BIG as usize + 10));
        files.extend(small_files(3, 1000).into_iter().map(|(n, s)| (n + "z", s)));
        let (tar, starts) = tar_of(&files);
        let cuts = cuts_of(&tar, 10_000);
        let big = starts[10];
        let data = big + BLOCK;
        assert_eq!(
            cuts,
            vec![big, data + BIG, data + 2 * BIG, data + 3 * BIG, starts[11]]
        );
    }

    /// A file that grows moves the bytes after it; the cuts after it are
    /// the same entries' starts again soon after.
    #[test]
    fn cuts_resynchronise_after_a_file_grows() {
        let files = small_files(1000, 20 * 1024);
        let (tar, starts) = tar_of(&files);
        let mut grown = files.clone();
        grown[100].1 += 5000;
        let (tar2, starts2) = tar_of(&grown);
        let entry = |cuts: Vec<u64>, starts: &[u64]| -> Vec<usize> {
            cuts.iter()
                .map(|c| starts.iter().position(|s| s == c).expect("entry start"))
                .collect()
        };
        let a = entry(cuts_of(&tar, 65536), &starts);
        let b = entry(cuts_of(&tar2, 65536), &starts2);
        let tail = |v: &[usize]| v.iter().copied().filter(|&i| i > 300).collect::<Vec<_>>();
        assert!(!tail(&a).is_empty());
        assert_eq!(tail(&a), tail(&b));
    }

    #[test]
    fn bytes_that_are_not_a_tar_are_cut_at_fixed_sizes() {
        let data = vec![7u8; 3 * BIG as usize + 5];
        assert_eq!(cuts_of(&data, 1000), vec![BIG, 2 * BIG, 3 * BIG]);
    }

    #[test]
    fn pax_size_records_are_read() {
        assert_eq!(
            pax_record_size(b"20 size=12345678901\n"),
            Some(12_345_678_901)
        );
        assert_eq!(pax_record_size(b"12 path=abc\n"), None);
        assert_eq!(pax_record_size(b"99 size=1\n"), None);
    }

    #[test]
    fn the_index_round_trips_and_rejects_other_versions() {
        let mut index = MemberIndex::default();
        index.add(Some([1; 32]), 0, 100, 900);
        index.add(Some([2; 32]), 100, 7, 70);
        assert!(index.worth_copying());
        // Stored bytes are counted, not indexed.
        index.add(Some([3; 32]), 107, 10_000, 9_990);
        index.add(None, 10_107, 5, 50);
        assert_eq!(index.members.len(), 2);
        assert_eq!((index.len, index.raw), (10_112, 11_010));
        assert!(!index.worth_copying());
        for codec in [Codec::Gzip, Codec::Zstd] {
            let data = index.encode(codec);
            assert_eq!(MemberIndex::decode(&data, codec), Some(index.clone()));
        }
        let gzip = index.encode(Codec::Gzip);
        assert_eq!(MemberIndex::decode(&gzip, Codec::Zstd), None);
        assert_eq!(
            MemberIndex::decode(b"kiln gzip members v1\n", Codec::Gzip),
            None
        );
        assert_eq!(
            MemberIndex::decode(b"kiln gzip members v2\ntotal 1 2\nzz 1 2 3\n", Codec::Gzip),
            None
        );
        assert!(!MemberIndex::default().worth_copying());
    }

    #[test]
    fn old_blob_ranges_are_read_forward_only() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut b = OldBlob::new(Box::new(io::Cursor::new(data)));
        assert_eq!(b.range(10, 3), Some(vec![10, 11, 12]));
        assert_eq!(b.range(5, 1), None);
        assert_eq!(b.range(13, 2), Some(vec![13, 14]));
        assert_eq!(b.range(99, 5), None);
        assert_eq!(b.range(100, 0), None, "a failed read ends the reuse");
    }
}
