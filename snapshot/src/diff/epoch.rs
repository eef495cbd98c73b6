//! Clamping the file times of a layer to `SOURCE_DATE_EPOCH`, the
//! `rewrite-timestamp=true` option of BuildKit's image exporter: every
//! modification, access and change time in the layer's tar headers that is
//! later than the epoch becomes the epoch; earlier times are kept.
//!
//! The tar stream is rewritten header by header without being re-encoded:
//! a ustar (or GNU) header gets the epoch in its octal time fields and a
//! new checksum, a PAX extended header gets its `mtime`, `atime` and
//! `ctime` records replaced; everything else (names, ids, modes, extended
//! attributes, data) is copied byte for byte. So two layers that differ
//! only in times later than the epoch come out identical, and a layer with
//! no such time comes out unchanged (the caller keeps its blob).

use super::compress::{Compressor, HashWriter};
use super::{Compression, DiffError, LayerDescriptor, Level};
use kiln_types::Digest;
use std::io::{self, Read, Write};

const BLOCK: usize = 512;
/// Byte ranges of the header fields this module reads or writes.
const SIZE: std::ops::Range<usize> = 124..136;
const MTIME: std::ops::Range<usize> = 136..148;
const CHKSUM: std::ops::Range<usize> = 148..156;
const TYPEFLAG: usize = 156;
const MAGIC: std::ops::Range<usize> = 257..265;
/// Only in the old GNU format (magic `ustar  \0`); the same bytes are the
/// path prefix in ustar and PAX headers.
const GNU_ATIME: std::ops::Range<usize> = 345..357;
const GNU_CTIME: std::ops::Range<usize> = 357..369;
const GNU_MAGIC: &[u8] = b"ustar  \0";

/// Reads a layer compressed with `from`, clamps its times to `epoch`
/// (seconds since 1970) and writes it compressed with `to` at its level;
/// the descriptor's diffID is the new tar's.
pub fn clamp_times(
    input: &mut dyn Read,
    from: Compression,
    (to, level): (Compression, Level),
    epoch: i64,
    out: &mut dyn Write,
) -> Result<LayerDescriptor, DiffError> {
    let mut reader = super::recompress::decompressor(input, from)?;
    let blob = HashWriter::new(out);
    let compressor = Compressor::at_level(to, level, blob).map_err(DiffError::output)?;
    let mut tar = HashWriter::new(compressor);
    clamp_tar(&mut reader, epoch, &mut tar).map_err(DiffError::output)?;
    let (compressor, diff_hash, uncompressed_size) = tar.finish();
    let blob = compressor.finish().map_err(DiffError::output)?;
    let (out, blob_hash, size) = blob.finish();
    out.flush().map_err(DiffError::output)?;
    let diff_id = Digest::from_sha256(&diff_hash);
    let digest = match to {
        Compression::Uncompressed => diff_id.clone(),
        _ => Digest::from_sha256(&blob_hash),
    };
    Ok(LayerDescriptor {
        diff_id,
        digest,
        size,
        uncompressed_size,
        entries: 0,
        media_type: to.media_type(),
    })
}

fn bad(reason: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, reason.into())
}

/// Copies the tar stream `input` to `out` with its times clamped to
/// `epoch`.
pub fn clamp_tar(input: &mut dyn Read, epoch: i64, out: &mut dyn Write) -> io::Result<()> {
    let octal = Octal::epoch(epoch)?;
    // The size a PAX header gave the next entry (over the ustar field).
    let mut pax_size: Option<u64> = None;
    let mut header = [0u8; BLOCK];
    loop {
        if !read_block(input, &mut header)? {
            // A stream without the end-of-archive marker ends here too.
            return Ok(());
        }
        if header.iter().all(|&b| b == 0) {
            out.write_all(&header)?;
            io::copy(input, out)?;
            return Ok(());
        }
        let kind = header[TYPEFLAG];
        let size = pax_size.take().map_or_else(|| number(&header[SIZE]), Ok)?;
        match kind {
            b'x' | b'g' => {
                let len = usize::try_from(size).map_err(|_| bad("PAX header too large"))?;
                if len > 1 << 20 {
                    return Err(bad(format!("PAX header of {len} bytes")));
                }
                let mut data = vec![0u8; len + super::tar::padding(size)];
                input.read_exact(&mut data)?;
                data.truncate(len);
                let (records, next_size) = clamp_pax(&data, epoch)?;
                if kind == b'x' {
                    pax_size = next_size;
                }
                let mut changed = false;
                if records != data {
                    octal.write(&mut header[SIZE], records.len() as u64)?;
                    changed = true;
                }
                changed |= clamp_field(&mut header, MTIME, epoch, &octal)?;
                if changed {
                    checksum(&mut header);
                }
                out.write_all(&header)?;
                out.write_all(&records)?;
                out.write_all(&[0u8; BLOCK][..super::tar::padding(records.len() as u64)])?;
            }
            b'S' => return Err(bad("GNU sparse entries are not supported")),
            _ => {
                let mut changed = clamp_field(&mut header, MTIME, epoch, &octal)?;
                if header[MAGIC] == *GNU_MAGIC {
                    changed |= clamp_field(&mut header, GNU_ATIME, epoch, &octal)?;
                    changed |= clamp_field(&mut header, GNU_CTIME, epoch, &octal)?;
                }
                if changed {
                    checksum(&mut header);
                }
                out.write_all(&header)?;
                // As Go's archive/tar: links, devices, directories and
                // fifos have no data whatever their size field says.
                let data = match kind {
                    b'1'..=b'6' => 0,
                    _ => size,
                };
                let padded = data + super::tar::padding(data) as u64;
                let copied = io::copy(&mut input.take(padded), out)?;
                if copied != padded {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
            }
        }
    }
}

/// Fills `block`; `false` at a clean end of the stream.
fn read_block(input: &mut dyn Read, block: &mut [u8; BLOCK]) -> io::Result<bool> {
    let mut n = 0;
    while n < BLOCK {
        match input.read(&mut block[n..]) {
            Ok(0) if n == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// A numeric header field: octal (NUL/space padded) or base-256.
fn number(field: &[u8]) -> io::Result<u64> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        if field[0] & 0x40 != 0 {
            return Err(bad("negative number in a tar header"));
        }
        let mut v: u64 = u64::from(field[0] & 0x3f);
        for &b in &field[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .ok_or_else(|| bad("number too large in a tar header"))?;
        }
        return Ok(v);
    }
    let s: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ' || b == 0)
        .take_while(|&b| b != b' ' && b != 0)
        .collect();
    if s.is_empty() {
        return Ok(0);
    }
    std::str::from_utf8(&s)
        .ok()
        .and_then(|s| u64::from_str_radix(s, 8).ok())
        .ok_or_else(|| bad("invalid number in a tar header"))
}

/// A time field later than the epoch becomes the epoch; `true` if it did.
fn clamp_field(
    header: &mut [u8; BLOCK],
    field: std::ops::Range<usize>,
    epoch: i64,
    octal: &Octal,
) -> io::Result<bool> {
    let t = number(&header[field.clone()])?;
    // `epoch` is not negative here (see `Octal::epoch`).
    if t <= epoch as u64 {
        return Ok(false);
    }
    octal.write(&mut header[field], epoch as u64)?;
    Ok(true)
}

/// Writes octal numbers into header fields (the epoch must fit one).
struct Octal;

impl Octal {
    fn epoch(epoch: i64) -> io::Result<Self> {
        // 11 octal digits: what every time field holds as text.
        if !(0..=0o77777777777).contains(&epoch) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("SOURCE_DATE_EPOCH {epoch} does not fit a tar header"),
            ));
        }
        Ok(Octal)
    }

    /// `value` as zero-padded octal digits and a NUL, as Go's tar writer
    /// formats a field.
    fn write(&self, field: &mut [u8], value: u64) -> io::Result<()> {
        let digits = field.len() - 1;
        let s = format!("{value:0digits$o}");
        if s.len() > digits {
            return Err(bad(format!("{value} does not fit a tar header field")));
        }
        field[..digits].copy_from_slice(s.as_bytes());
        field[digits] = 0;
        Ok(())
    }
}

/// The header checksum: the sum of its bytes with the checksum field read
/// as spaces, six octal digits, a NUL and a space.
fn checksum(header: &mut [u8; BLOCK]) {
    header[CHKSUM].fill(b' ');
    let sum: u32 = header.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}");
    header[148..154].copy_from_slice(&s.as_bytes()[s.len() - 6..]);
    header[154] = 0;
    header[155] = b' ';
}

/// PAX records with the time records later than `epoch` replaced, and the
/// `size` record's value if there is one.
fn clamp_pax(data: &[u8], epoch: i64) -> io::Result<(Vec<u8>, Option<u64>)> {
    let mut out = Vec::with_capacity(data.len());
    let mut size = None;
    let mut rest = data;
    while !rest.is_empty() {
        let space = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("invalid PAX record"))?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|&l| l > space + 1 && l <= rest.len())
            .ok_or_else(|| bad("invalid PAX record length"))?;
        let record = &rest[..len];
        rest = &rest[len..];
        let body = &record[space + 1..];
        let Some(body) = body.strip_suffix(b"\n") else {
            return Err(bad("PAX record without a newline"));
        };
        let eq = body
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("PAX record without a key"))?;
        let (key, value) = (&body[..eq], &body[eq + 1..]);
        if key == b"size" {
            size = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
        }
        let is_time = matches!(key, b"mtime" | b"atime" | b"ctime");
        if is_time && later(value, epoch) {
            out.extend_from_slice(&pax_record(key, epoch.to_string().as_bytes()));
        } else {
            out.extend_from_slice(record);
        }
    }
    Ok((out, size))
}

/// Whether a PAX time (`seconds[.fraction]`) is later than `epoch`; one
/// that does not parse is left alone.
fn later(value: &[u8], epoch: i64) -> bool {
    let Ok(v) = std::str::from_utf8(value) else {
        return false;
    };
    let (secs, frac) = v.split_once('.').unwrap_or((v, ""));
    let Ok(secs) = secs.parse::<i64>() else {
        return false;
    };
    let fraction = frac.bytes().any(|b| b != b'0');
    secs > epoch || (secs == epoch && fraction && !v.starts_with('-'))
}

/// One PAX record: `"<len> <key>=<value>\n"`, `len` counting itself.
fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut r = format!("{len} ").into_bytes();
    r.extend_from_slice(key);
    r.push(b'=');
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar with one directory, one file with a PAX mtime and one file
    /// dated `t` in its ustar header.
    fn archive(t: u64, pax_mtime: &str) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_path("d/").expect("path");
        h.set_mode(0o755);
        h.set_mtime(t);
        h.set_size(0);
        h.set_cksum();
        b.append(&h, io::empty()).expect("dir");
        b.append_pax_extensions([("mtime", pax_mtime.as_bytes()), ("atime", b"5".as_slice())])
            .expect("pax");
        let mut h = tar::Header::new_ustar();
        h.set_path("d/pax").expect("path");
        h.set_mode(0o644);
        h.set_mtime(t);
        h.set_size(3);
        h.set_cksum();
        b.append(&h, &b"abc"[..]).expect("file");
        let mut h = tar::Header::new_gnu();
        h.set_path("d/old").expect("path");
        h.set_mode(0o600);
        h.set_mtime(10);
        h.set_size(1);
        h.set_cksum();
        b.append(&h, &b"x"[..]).expect("file");
        b.into_inner().expect("tar")
    }

    /// (path, mtime, PAX mtime, PAX atime, data) of every entry.
    type Seen = (String, u64, Option<String>, Option<String>, Vec<u8>);

    fn entries(tar_bytes: &[u8]) -> Vec<Seen> {
        let mut a = tar::Archive::new(tar_bytes);
        let mut out = Vec::new();
        for e in a.entries().expect("entries") {
            let mut e = e.expect("entry");
            let mut pax = (None, None);
            if let Some(ext) = e.pax_extensions().expect("pax") {
                for r in ext {
                    let r = r.expect("record");
                    let v = r.value().expect("utf8").to_string();
                    match r.key().expect("utf8") {
                        "mtime" => pax.0 = Some(v),
                        "atime" => pax.1 = Some(v),
                        _ => {}
                    }
                }
            }
            let path = e.path().expect("path").display().to_string();
            let mtime = e.header().mtime().expect("mtime");
            let mut data = Vec::new();
            e.read_to_end(&mut data).expect("data");
            out.push((path, mtime, pax.0, pax.1, data));
        }
        out
    }

    fn clamp(input: &[u8], epoch: i64) -> Vec<u8> {
        let mut out = Vec::new();
        clamp_tar(&mut &input[..], epoch, &mut out).expect("clamps");
        out
    }

    #[test]
    fn later_times_become_the_epoch_and_earlier_ones_stay() {
        let out = clamp(&archive(2_000_000_000, "2000000000.25"), 1_700_000_000);
        let e = entries(&out);
        assert_eq!(e.len(), 3);
        assert_eq!((e[0].0.as_str(), e[0].1), ("d/", 1_700_000_000));
        assert_eq!(e[1].0, "d/pax");
        assert_eq!(e[1].1, 1_700_000_000);
        assert_eq!(e[1].2.as_deref(), Some("1700000000"));
        assert_eq!(e[1].3.as_deref(), Some("5"), "an earlier atime is kept");
        assert_eq!(e[1].4, b"abc");
        assert_eq!((e[2].1, e[2].4.as_slice()), (10, &b"x"[..]));
        // Every header still passes the tar reader's checksum test, and
        // the archive is whole blocks.
        assert_eq!(out.len() % BLOCK, 0);
    }

    #[test]
    fn builds_at_different_times_give_the_same_tar() {
        let a = clamp(&archive(1_800_000_000, "1800000000.5"), 1_700_000_000);
        let b = clamp(&archive(1_900_000_000, "1900000001"), 1_700_000_000);
        assert_eq!(a, b);
    }

    #[test]
    fn a_tar_without_later_times_is_unchanged() {
        let t = archive(1_000, "1000.5");
        assert_eq!(clamp(&t, 1_700_000_000), t);
        // The same second with a fraction is later than the epoch.
        let t = archive(1_000, "1700000000.5");
        assert_ne!(clamp(&t, 1_700_000_000), t);
    }

    #[test]
    fn pax_records_count_their_own_length() {
        assert_eq!(pax_record(b"mtime", b"1"), b"11 mtime=1\n");
        assert_eq!(
            pax_record(b"mtime", b"1700000000"),
            b"20 mtime=1700000000\n"
        );
        let long = vec![b'a'; 95];
        let r = pax_record(b"k", &long);
        assert_eq!(r.len().to_string().len() + 1 + 1 + 1 + 95 + 1, r.len());
        assert!(r.starts_with(format!("{} ", r.len()).as_bytes()));
    }

    #[test]
    fn a_negative_epoch_is_refused() {
        let mut out = Vec::new();
        let err = clamp_tar(&mut &archive(1, "1")[..], -1, &mut out).expect_err("refused");
        assert_eq!(
            err.to_string(),
            "SOURCE_DATE_EPOCH -1 does not fit a tar header"
        );
    }

    #[test]
    fn a_compressed_layer_gets_its_new_diff_id() {
        let tar_bytes = archive(2_000_000_000, "2000000000");
        let mut gz = Vec::new();
        let mut enc = flate2::write::GzEncoder::new(&mut gz, flate2::Compression::fast());
        enc.write_all(&tar_bytes).expect("gzip");
        enc.finish().expect("gzip");
        let mut blob = Vec::new();
        let d = clamp_times(
            &mut &gz[..],
            Compression::Gzip,
            (Compression::Uncompressed, Level::default()),
            1_700_000_000,
            &mut blob,
        )
        .expect("clamps");
        assert_eq!(blob, clamp(&tar_bytes, 1_700_000_000));
        assert_eq!(d.diff_id, Digest::of(&blob));
        assert_eq!(d.digest, d.diff_id);
    }
}
