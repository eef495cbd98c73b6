//! The one tar writer of kiln, for layers and image archives alike.
//!
//! Headers and PAX extended headers are built by the `tar` crate
//! ([`tar::Header`], [`tar::Builder::append_pax_extensions`]); this module
//! only decides what goes in them, the way containerd's archive writer does
//! (Go's `archive/tar` in PAX format):
//! - a POSIX ustar header with numeric ids, empty user and group names and
//!   the mtime in whole seconds;
//! - anything that does not fit its ustar field (a path or link target over
//!   100 bytes, an id over 7 octal digits, a size over 11, a negative or huge
//!   mtime) leaves a zero (or the first 100 bytes) in the field and goes into
//!   a PAX record instead, and every extended attribute becomes a
//!   `SCHILY.xattr.<name>` record; the records are sorted by key and written
//!   as one `x` entry just before the entry they describe.
//!
//! The same input always gives the same bytes, which is what makes diffIDs
//! usable as cache keys.
//!
//! [`TarWriter`] writes to any [`Write`]. An async caller (the image archive
//! writer) uses a `TarWriter<Vec<u8>>` as its header encoder: it appends a
//! header, [`TarWriter::take`]s the bytes and writes them itself, streams the
//! entry's data and pads it with [`padding`].

use std::io::{self, Read, Write};

/// PAX extended header records, `(key, value)`.
type PaxRecords = Vec<(String, Vec<u8>)>;

/// The size of a tar block.
pub const BLOCK: usize = 512;

/// The widest value of a ustar numeric field of `len` bytes: `len - 1`
/// octal digits and a NUL.
const fn octal_max(len: u32) -> u64 {
    (1 << (3 * (len - 1))) - 1
}

/// What a tar entry is, with the type-specific payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file; its data follows the header.
    Regular,
    /// A directory; its path ends in `/`.
    Dir,
    /// A symbolic link to the target.
    Symlink(Vec<u8>),
    /// A hard link to an earlier entry of the same archive (its tar path).
    HardLink(Vec<u8>),
    /// A character device.
    Char {
        /// The device's major number.
        major: u64,
        /// The device's minor number.
        minor: u64,
    },
    /// A block device.
    Block {
        /// The device's major number.
        major: u64,
        /// The device's minor number.
        minor: u64,
    },
    /// A named pipe.
    Fifo,
}

impl EntryKind {
    fn entry_type(&self) -> tar::EntryType {
        match self {
            EntryKind::Regular => tar::EntryType::Regular,
            EntryKind::HardLink(_) => tar::EntryType::Link,
            EntryKind::Symlink(_) => tar::EntryType::Symlink,
            EntryKind::Char { .. } => tar::EntryType::Char,
            EntryKind::Block { .. } => tar::EntryType::Block,
            EntryKind::Dir => tar::EntryType::Directory,
            EntryKind::Fifo => tar::EntryType::Fifo,
        }
    }
}

/// One tar entry's header. `size` is only meaningful for `Regular`.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    /// The tar path: relative, `/`-separated, directories end in `/`.
    pub path: &'a [u8],
    /// The entry type, with the link target or device numbers.
    pub kind: EntryKind,
    /// Permission and set-id/sticky bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// The owner's numeric user id.
    pub uid: u64,
    /// The owner's numeric group id.
    pub gid: u64,
    /// Bytes of data that follow a `Regular` entry.
    pub size: u64,
    /// Seconds since the epoch.
    pub mtime: i64,
    /// Extended attributes, sorted by name.
    pub xattrs: &'a [(Vec<u8>, Vec<u8>)],
}

impl<'a> Entry<'a> {
    /// An entry with fixed metadata, as image archives hold them: owned by
    /// 0:0, mtime 0, mode 0644 for files and 0755 for directories, no
    /// extended attributes.
    pub fn fixed(path: &'a [u8], kind: EntryKind, size: u64) -> Self {
        let mode = if kind == EntryKind::Dir { 0o755 } else { 0o644 };
        Entry {
            path,
            kind,
            mode,
            uid: 0,
            gid: 0,
            size,
            mtime: 0,
            xattrs: &[],
        }
    }
}

/// Why copying an entry's data failed.
#[derive(Debug)]
pub enum CopyError {
    /// Reading the source failed.
    Read(io::Error),
    /// Writing the archive failed.
    Write(io::Error),
    /// The source ended before the size recorded in the header.
    Short,
}

/// Zero bytes that pad an entry of `size` bytes to a whole block.
pub fn padding(size: u64) -> usize {
    match (size % BLOCK as u64) as usize {
        0 => 0,
        rem => BLOCK - rem,
    }
}

/// Writes tar entries to `W` through a [`tar::Builder`]. Call
/// [`TarWriter::finish`] to write the end-of-archive marker and get `W`
/// back.
pub struct TarWriter<W: Write> {
    builder: tar::Builder<W>,
    buf: Vec<u8>,
}

impl<W: Write> std::fmt::Debug for TarWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TarWriter").finish_non_exhaustive()
    }
}

impl<W: Write> TarWriter<W> {
    /// A writer of a new archive into `out`.
    pub fn new(out: W) -> Self {
        TarWriter {
            builder: tar::Builder::new(out),
            buf: vec![0; 128 * 1024],
        }
    }

    /// Writes the header (and PAX header if needed) of `entry`. For a
    /// `Regular` entry with a non-zero size the caller must follow with
    /// [`TarWriter::copy_data`] (or write the data and its [`padding`]
    /// itself).
    pub fn append_header(&mut self, entry: &Entry<'_>) -> io::Result<()> {
        let (header, pax) = encode(entry)?;
        self.builder
            .append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
        // No data: the builder writes the header block alone.
        self.builder.append(&header, io::empty())
    }

    /// Copies exactly `size` bytes of `data` and pads to a block boundary.
    pub fn copy_data(&mut self, data: &mut dyn Read, size: u64) -> Result<(), CopyError> {
        let out = self.builder.get_mut();
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
            out.write_all(&self.buf[..n]).map_err(CopyError::Write)?;
            left -= n as u64;
        }
        out.write_all(&[0; BLOCK][..padding(size)])
            .map_err(CopyError::Write)
    }

    /// Writes the two zero blocks that end an archive and returns the sink.
    pub fn finish(self) -> io::Result<W> {
        self.builder.into_inner()
    }
}

impl<W: Write + Default> TarWriter<W> {
    /// Hands over what was written so far and leaves an empty sink, for a
    /// caller that moves the bytes on itself.
    pub fn take(&mut self) -> W {
        std::mem::take(self.builder.get_mut())
    }
}

/// The ustar header of `e` and the PAX records (sorted by key) it needs.
fn encode(e: &Entry<'_>) -> io::Result<(tar::Header, PaxRecords)> {
    let mut h = tar::Header::new_ustar();
    let mut pax = PaxRecords::new();

    // The name is written as is (the `tar` crate's `set_path` would
    // normalise it, drop a directory's trailing `/` and split long paths
    // into ustar's prefix, which containerd's PAX writer does not do).
    let name = &mut h.as_old_mut().name;
    let n = e.path.len().min(name.len());
    name[..n].copy_from_slice(&e.path[..n]);
    if e.path.len() > n {
        pax.push(("path".into(), e.path.to_vec()));
    }
    h.set_mode(e.mode & 0o7777);
    for (key, value, set) in [
        (
            "uid",
            e.uid,
            tar::Header::set_uid as fn(&mut tar::Header, u64),
        ),
        ("gid", e.gid, tar::Header::set_gid),
    ] {
        if value <= octal_max(8) {
            set(&mut h, value);
        } else {
            set(&mut h, 0);
            pax.push((key.into(), value.to_string().into_bytes()));
        }
    }
    let size = if e.kind == EntryKind::Regular {
        e.size
    } else {
        0
    };
    if size <= octal_max(12) {
        h.set_size(size);
    } else {
        h.set_size(0);
        pax.push(("size".into(), size.to_string().into_bytes()));
    }
    match u64::try_from(e.mtime) {
        Ok(t) if t <= octal_max(12) => h.set_mtime(t),
        _ => {
            h.set_mtime(0);
            pax.push(("mtime".into(), e.mtime.to_string().into_bytes()));
        }
    }
    h.set_entry_type(e.kind.entry_type());
    if let EntryKind::Symlink(target) | EntryKind::HardLink(target) = &e.kind {
        let field_len = h.as_old().linkname.len();
        h.set_link_name_literal(&target[..target.len().min(field_len)])?;
        if target.len() > field_len {
            pax.push(("linkpath".into(), target.clone()));
        }
    }
    let (major, minor) = match e.kind {
        EntryKind::Char { major, minor } | EntryKind::Block { major, minor } => (major, minor),
        _ => (0, 0),
    };
    h.set_device_major(device_number(major, e.path)?)?;
    h.set_device_minor(device_number(minor, e.path)?)?;
    for (name, value) in e.xattrs {
        let name = std::str::from_utf8(name).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "extended attribute {:?} of {:?} is not UTF-8",
                    String::from_utf8_lossy(name),
                    String::from_utf8_lossy(e.path)
                ),
            )
        })?;
        pax.push((format!("SCHILY.xattr.{name}"), value.clone()));
    }
    pax.sort();
    h.set_cksum();
    Ok((h, pax))
}

/// A device number as the ustar field holds it (PAX has no record for one).
fn device_number(n: u64, path: &[u8]) -> io::Result<u32> {
    u32::try_from(n)
        .ok()
        .filter(|&n| u64::from(n) <= octal_max(8))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "device number {n} of {:?} does not fit a tar header",
                    String::from_utf8_lossy(path)
                ),
            )
        })
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

    /// The PAX records of the next entry of `it`, as `(key, value)`.
    fn pax_of<R: Read>(e: &mut tar::Entry<'_, R>) -> Vec<(String, Vec<u8>)> {
        match e.pax_extensions().expect("pax") {
            None => Vec::new(),
            Some(records) => records
                .map(|r| {
                    let r = r.expect("record");
                    (r.key().expect("key").to_string(), r.value_bytes().to_vec())
                })
                .collect(),
        }
    }

    #[test]
    fn long_names_links_ids_and_xattrs_round_trip_through_tar_rs() {
        let long = [b"d/".as_slice(), &[b'n'; 200]].concat();
        let target = vec![b't'; 150];
        let xattrs = vec![
            (b"user.z".to_vec(), b"last".to_vec()),
            (b"security.capability".to_vec(), vec![1, 0, 0, 2]),
        ];
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
        w.append_header(&entry(b"dir/", EntryKind::Dir))
            .expect("vec write");
        let bytes = w.finish().expect("vec write");
        assert_eq!(bytes.len() % BLOCK, 0);
        assert!(bytes[bytes.len() - 2 * BLOCK..].iter().all(|&b| b == 0));

        // The PAX header comes first, then the ustar header whose overflowing
        // fields hold zero (as Go's PAX writer leaves them).
        assert_eq!(bytes[156], b'x');
        let pax_len = u64::from_str_radix(
            std::str::from_utf8(&bytes[124..135]).expect("octal size"),
            8,
        )
        .expect("octal size");
        let ustar = BLOCK * (1 + (pax_len as usize).div_ceil(BLOCK));
        assert_eq!(bytes[ustar + 156], b'0');
        assert_eq!(&bytes[ustar..ustar + 100], &long[..100]);
        assert_eq!(&bytes[ustar + 108..ustar + 116], b"0000000\0", "uid");
        assert_eq!(&bytes[ustar + 116..ustar + 124], b"0000007\0", "gid");
        assert_eq!(&bytes[ustar + 136..ustar + 148], b"00000000000\0", "mtime");
        assert_eq!(&bytes[ustar + 257..ustar + 265], b"ustar\x0000");
        assert_eq!(
            &bytes[ustar + 265..ustar + 329],
            &[0u8; 64][..],
            "no user/group names"
        );

        let mut ar = tar::Archive::new(&bytes[..]);
        let mut it = ar.entries().expect("entries");
        let mut first = it.next().expect("first").expect("first ok");
        assert_eq!(&*first.path_bytes(), long.as_slice());
        // tar-rs applies the PAX uid over the ustar field.
        assert_eq!(first.header().uid().expect("uid"), 5_000_000);
        let pax = pax_of(&mut first);
        assert_eq!(
            pax.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            [
                "SCHILY.xattr.security.capability",
                "SCHILY.xattr.user.z",
                "mtime",
                "path",
                "uid"
            ],
            "sorted by key"
        );
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
        let mut third = it.next().expect("third").expect("third ok");
        assert_eq!(third.header().device_major().expect("major"), Some(1));
        assert_eq!(third.header().device_minor().expect("minor"), Some(3));
        assert_eq!(third.header().mtime().expect("mtime"), 1_700_000_000);
        assert!(pax_of(&mut third).is_empty(), "everything fits ustar");
        let fourth = it.next().expect("fourth").expect("fourth ok");
        assert_eq!(
            &*fourth.path_bytes(),
            b"dir/",
            "a directory keeps its slash"
        );
        assert_eq!(fourth.header().entry_type(), tar::EntryType::Directory);
        assert!(it.next().is_none());
    }

    #[test]
    fn short_data_and_odd_inputs_are_errors() {
        let mut w = TarWriter::new(Vec::new());
        let mut e = entry(b"f", EntryKind::Regular);
        e.size = 4;
        w.append_header(&e).expect("vec write");
        assert!(matches!(
            w.copy_data(&mut &b"abc"[..], 4),
            Err(CopyError::Short)
        ));

        let mut w = TarWriter::new(Vec::new());
        let dev = entry(
            b"d",
            EntryKind::Block {
                major: 1 << 40,
                minor: 0,
            },
        );
        assert!(w.append_header(&dev).is_err(), "major too big for ustar");
        let xattrs = vec![(vec![0xff, 0xfe], b"v".to_vec())];
        let mut e = entry(b"x", EntryKind::Regular);
        e.xattrs = &xattrs;
        assert!(w.append_header(&e).is_err(), "xattr name not UTF-8");
    }

    #[test]
    fn take_hands_over_header_bytes_for_an_async_writer() {
        let mut w = TarWriter::new(Vec::new());
        w.append_header(&Entry::fixed(b"blobs/", EntryKind::Dir, 0))
            .expect("vec write");
        let dir = w.take();
        assert_eq!(dir.len(), BLOCK);
        assert_eq!(&dir[..7], b"blobs/\0");
        w.append_header(&Entry::fixed(b"f", EntryKind::Regular, 700))
            .expect("vec write");
        let file = w.take();
        assert_eq!(file.len(), BLOCK);
        assert_eq!(padding(700), 2 * BLOCK - 700);
        assert_eq!(padding(0), 0);
        assert_eq!(padding(512), 0);
        let end = w.finish().expect("vec write");
        assert_eq!(end, vec![0u8; 2 * BLOCK]);

        let all = [dir, file, vec![7u8; 700], vec![0; padding(700)], end].concat();
        let mut ar = tar::Archive::new(&all[..]);
        let got: Vec<(String, u32, u64)> = ar
            .entries()
            .expect("entries")
            .map(|e| {
                let e = e.expect("entry");
                let h = e.header();
                (
                    String::from_utf8_lossy(&e.path_bytes()).into_owned(),
                    h.mode().expect("mode"),
                    h.size().expect("size"),
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("blobs/".to_string(), 0o755, 0),
                ("f".to_string(), 0o644, 700)
            ]
        );
    }
}
