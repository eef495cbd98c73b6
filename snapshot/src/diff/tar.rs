//! A small deterministic tar writer.
//!
//! Every entry gets a POSIX ustar header with numeric ids and empty user and
//! group names. Anything that does not fit a ustar field (names over 100
//! bytes, long link targets, large ids, sizes or times) and every extended
//! attribute goes into a PAX extended header (`x`) written just before the
//! entry, with its records sorted by key. The same input always gives the same
//! bytes, which is what makes diffIDs usable as cache keys.

use std::io::{self, Read, Write};

const BLOCK: usize = 512;

/// PAX extended header records, `(key, value)`.
type PaxRecords = Vec<(Vec<u8>, Vec<u8>)>;

/// What a tar entry is, with the type-specific payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EntryKind {
    Regular,
    Dir,
    Symlink(Vec<u8>),
    /// A hard link to an earlier entry of the same archive (its tar path).
    HardLink(Vec<u8>),
    Char {
        major: u64,
        minor: u64,
    },
    Block {
        major: u64,
        minor: u64,
    },
    Fifo,
}

impl EntryKind {
    fn typeflag(&self) -> u8 {
        match self {
            EntryKind::Regular => b'0',
            EntryKind::HardLink(_) => b'1',
            EntryKind::Symlink(_) => b'2',
            EntryKind::Char { .. } => b'3',
            EntryKind::Block { .. } => b'4',
            EntryKind::Dir => b'5',
            EntryKind::Fifo => b'6',
        }
    }
}

/// One tar entry's header. `size` is only meaningful for `Regular`.
#[derive(Debug, Clone)]
pub(crate) struct Entry<'a> {
    /// The tar path: relative, `/`-separated, directories end in `/`.
    pub path: &'a [u8],
    pub kind: EntryKind,
    /// Permission and set-id/sticky bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub size: u64,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// Extended attributes, sorted by name.
    pub xattrs: &'a [(Vec<u8>, Vec<u8>)],
}

/// Why copying an entry's data failed.
#[derive(Debug)]
pub(crate) enum CopyError {
    Read(io::Error),
    Write(io::Error),
    /// The source ended before the size recorded in the header.
    Short,
}

/// Writes tar entries to `W`. Call [`TarWriter::finish`] to write the
/// end-of-archive marker.
pub(crate) struct TarWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
}

impl<W: Write> TarWriter<W> {
    pub(crate) fn new(out: W) -> Self {
        TarWriter {
            out,
            buf: vec![0; 128 * 1024],
        }
    }

    /// Writes the header (and PAX header if needed) of `entry`. For a
    /// `Regular` entry with a non-zero size the caller must follow with
    /// [`TarWriter::copy_data`].
    pub(crate) fn append_header(&mut self, entry: &Entry<'_>) -> io::Result<()> {
        let (header, pax) = encode(entry);
        if !pax.is_empty() {
            let body = pax_body(&pax);
            let mut name = b"PaxHeaders.0/".to_vec();
            name.extend_from_slice(basename(entry.path));
            name.truncate(100);
            let pax_entry = Entry {
                path: &name,
                kind: EntryKind::Regular,
                mode: 0o644,
                uid: 0,
                gid: 0,
                size: body.len() as u64,
                mtime: 0,
                xattrs: &[],
            };
            let (mut pax_header, _) = encode(&pax_entry);
            pax_header[156] = b'x';
            set_checksum(&mut pax_header);
            self.out.write_all(&pax_header)?;
            self.out.write_all(&body)?;
            self.pad(body.len() as u64)?;
        }
        self.out.write_all(&header)
    }

    /// Copies exactly `size` bytes of `data` and pads to a block boundary.
    pub(crate) fn copy_data(&mut self, data: &mut dyn Read, size: u64) -> Result<(), CopyError> {
        let mut left = size;
        while left > 0 {
            let want = self
                .buf
                .len()
                .min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = match data.read(&mut self.buf[..want]) {
                Ok(0) => return Err(CopyError::Short),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CopyError::Read(e)),
            };
            self.out
                .write_all(&self.buf[..n])
                .map_err(CopyError::Write)?;
            left -= n as u64;
        }
        self.pad(size).map_err(CopyError::Write)
    }

    /// Writes the two zero blocks that end an archive and returns the sink.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0; 2 * BLOCK])?;
        Ok(self.out)
    }

    fn pad(&mut self, len: u64) -> io::Result<()> {
        let rem = (len % BLOCK as u64) as usize;
        if rem != 0 {
            self.out.write_all(&[0; BLOCK][..BLOCK - rem])?;
        }
        Ok(())
    }
}

fn basename(path: &[u8]) -> &[u8] {
    let trimmed = path.strip_suffix(b"/").unwrap_or(path);
    match trimmed.iter().rposition(|&b| b == b'/') {
        Some(i) => &trimmed[i + 1..],
        None => trimmed,
    }
}

/// Builds the ustar header block and the PAX records it needs.
fn encode(e: &Entry<'_>) -> ([u8; BLOCK], PaxRecords) {
    let mut h = [0u8; BLOCK];
    let mut pax = PaxRecords::new();

    if e.path.len() <= 100 {
        h[..e.path.len()].copy_from_slice(e.path);
    } else {
        h[..100].copy_from_slice(&e.path[..100]);
        pax.push((b"path".to_vec(), e.path.to_vec()));
    }
    put_octal(&mut h[100..108], u64::from(e.mode & 0o7777));
    if !put_octal(&mut h[108..116], e.uid) {
        put_octal(&mut h[108..116], 0);
        pax.push((b"uid".to_vec(), e.uid.to_string().into_bytes()));
    }
    if !put_octal(&mut h[116..124], e.gid) {
        put_octal(&mut h[116..124], 0);
        pax.push((b"gid".to_vec(), e.gid.to_string().into_bytes()));
    }
    let size = if e.kind == EntryKind::Regular {
        e.size
    } else {
        0
    };
    if !put_octal(&mut h[124..136], size) {
        put_octal(&mut h[124..136], 0);
        pax.push((b"size".to_vec(), size.to_string().into_bytes()));
    }
    let mtime_fits = u64::try_from(e.mtime).is_ok_and(|t| put_octal(&mut h[136..148], t));
    if !mtime_fits {
        put_octal(&mut h[136..148], 0);
        pax.push((b"mtime".to_vec(), e.mtime.to_string().into_bytes()));
    }
    h[148..156].copy_from_slice(b"        ");
    h[156] = e.kind.typeflag();
    match &e.kind {
        EntryKind::Symlink(target) | EntryKind::HardLink(target) => {
            if target.len() <= 100 {
                h[157..157 + target.len()].copy_from_slice(target);
            } else {
                h[157..257].copy_from_slice(&target[..100]);
                pax.push((b"linkpath".to_vec(), target.clone()));
            }
        }
        _ => {}
    }
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let (major, minor) = match e.kind {
        EntryKind::Char { major, minor } | EntryKind::Block { major, minor } => (major, minor),
        _ => (0, 0),
    };
    put_numeric(&mut h[329..337], major);
    put_numeric(&mut h[337..345], minor);
    for (name, value) in e.xattrs {
        let mut key = b"SCHILY.xattr.".to_vec();
        key.extend_from_slice(name);
        pax.push((key, value.clone()));
    }
    pax.sort();
    set_checksum(&mut h);
    (h, pax)
}

/// Writes `v` as zero-padded octal with a trailing NUL; false if it does not fit.
fn put_octal(field: &mut [u8], v: u64) -> bool {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    if s.len() > digits {
        return false;
    }
    field[..digits].copy_from_slice(s.as_bytes());
    field[digits] = 0;
    true
}

/// Octal if it fits, else GNU base-256 (only used for device numbers, which
/// PAX cannot carry).
fn put_numeric(field: &mut [u8], v: u64) {
    if !put_octal(field, v) {
        field.fill(0);
        let bytes = v.to_be_bytes();
        let n = field.len();
        field[n - bytes.len()..].copy_from_slice(&bytes);
        field[0] |= 0x80;
    }
}

fn set_checksum(h: &mut [u8; BLOCK]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
}

/// PAX records: `"<len> <key>=<value>\n"` where `<len>` counts the whole record.
fn pax_body(records: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (key, value) in records {
        let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
        let mut len = rest + 1;
        while rest + len.to_string().len() != len {
            len = rest + len.to_string().len();
        }
        body.extend_from_slice(len.to_string().as_bytes());
        body.push(b' ');
        body.extend_from_slice(key);
        body.push(b'=');
        body.extend_from_slice(value);
        body.push(b'\n');
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &[u8], kind: EntryKind) -> Entry<'_> {
        Entry {
            path,
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 1_700_000_000,
            xattrs: &[],
        }
    }

    #[test]
    fn pax_record_lengths_count_themselves() {
        let body = pax_body(&[(b"path".to_vec(), vec![b'a'; 3])]);
        assert_eq!(body, b"12 path=aaa\n");
        // 9 + 1 digit would be 10, which needs 2 digits: the length is 11.
        let body = pax_body(&[(b"k".to_vec(), vec![b'v'; 5])]);
        assert_eq!(body, b"11 k=vvvvv\n");
        let body = pax_body(&[(b"k".to_vec(), vec![b'v'; 94])]);
        assert_eq!(body.len(), 101);
        assert!(body.starts_with(b"101 "));
    }

    #[test]
    fn long_names_links_ids_and_xattrs_round_trip_through_tar_rs() {
        let long = [b"d/".as_slice(), &[b'n'; 200]].concat();
        let target = vec![b't'; 150];
        let xattrs = vec![(b"security.capability".to_vec(), vec![1, 0, 0, 2])];
        let mut w = TarWriter::new(Vec::new());
        let mut e = entry(&long, EntryKind::Regular);
        e.size = 3;
        e.uid = 5_000_000;
        e.gid = 7;
        e.mtime = -5;
        e.xattrs = &xattrs;
        w.append_header(&e).expect("vec write");
        w.copy_data(&mut &b"abc"[..], 3).expect("vec write");
        w.append_header(&entry(b"l", EntryKind::Symlink(target.clone())))
            .expect("vec write");
        w.append_header(&entry(b"c", EntryKind::Char { major: 1, minor: 3 }))
            .expect("vec write");
        let bytes = w.finish().expect("vec write");
        assert_eq!(bytes.len() % BLOCK, 0);

        let mut ar = tar::Archive::new(&bytes[..]);
        let mut it = ar.entries().expect("entries");
        let mut first = it.next().expect("first").expect("first ok");
        assert_eq!(&*first.path_bytes(), long.as_slice());
        // tar-rs applies the PAX uid over the ustar field, which we wrote as 0.
        assert_eq!(first.header().uid().expect("uid"), 5_000_000);
        assert_eq!(bytes[156], b'x');
        let pax_len = u64::from_str_radix(
            std::str::from_utf8(&bytes[124..135]).expect("octal size"),
            8,
        )
        .expect("octal size");
        let ustar = BLOCK * (1 + (pax_len as usize).div_ceil(BLOCK));
        assert_eq!(bytes[ustar + 156], b'0');
        assert_eq!(&bytes[ustar + 108..ustar + 116], b"0000000\0");
        assert_eq!(
            &bytes[ustar + 265..ustar + 329],
            &[0u8; 64][..],
            "no user/group names"
        );
        let pax: Vec<(String, Vec<u8>)> = first
            .pax_extensions()
            .expect("pax")
            .expect("has pax")
            .map(|r| {
                let r = r.expect("record");
                (r.key().expect("key").to_string(), r.value_bytes().to_vec())
            })
            .collect();
        assert!(pax.contains(&("uid".to_string(), b"5000000".to_vec())));
        assert!(pax.contains(&("mtime".to_string(), b"-5".to_vec())));
        assert!(pax.contains(&(
            "SCHILY.xattr.security.capability".to_string(),
            vec![1, 0, 0, 2]
        )));
        let mut data = Vec::new();
        first.read_to_end(&mut data).expect("data");
        assert_eq!(data, b"abc");
        let second = it.next().expect("second").expect("second ok");
        assert_eq!(
            &*second.link_name_bytes().expect("link name"),
            target.as_slice()
        );
        let third = it.next().expect("third").expect("third ok");
        assert_eq!(third.header().device_minor().expect("minor"), Some(3));
        assert!(it.next().is_none());
    }
}
