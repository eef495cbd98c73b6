//! fsutil's DiffCopy protocol (buildkit-protocol.md §5): a sender lists a
//! directory as STAT packets and streams the files the receiver asks for.
//!
//! Both halves work over any packet transport: the peer's packets come in as
//! a stream of `Result<Packet, Status>` (what a tonic `Streaming` yields) and
//! this side's packets go out through a tokio `mpsc::Sender<Packet>` (which a
//! `ReceiverStream` turns into a request or response stream).
//!
//! The receiver treats the sender as hostile: every path is checked before
//! it is touched, parents must be directories created by the same transfer,
//! and all file system calls are relative to directory descriptors opened
//! without following symlinks, so nothing outside the destination is ever
//! written.

mod error;
mod receive;
mod send;
mod stat;
#[cfg(test)]
pub(crate) mod tests;
mod wire;

pub use error::FsutilError;
pub use kiln_proto::fsutil::packet::PacketType;
pub use kiln_proto::fsutil::{Packet, Stat};
pub use receive::{
    receive_dir, ReceiveOptions, ReceiveStats, MAX_ENTRIES, MAX_PATH_BYTES, MAX_TOTAL_BYTES,
};
pub use send::{send_dir, LinkGroups, SendOptions};
pub use stat::stat_of;
pub use wire::wire_size;

/// Go `os.FileMode` bits as they travel in `Stat.mode`.
pub mod mode {
    /// A directory.
    pub const DIR: u32 = 1 << 31;
    /// A symbolic link.
    pub const SYMLINK: u32 = 1 << 27;
    /// A device (a block device unless [`CHAR_DEVICE`] is also set).
    pub const DEVICE: u32 = 1 << 26;
    /// A named pipe.
    pub const NAMED_PIPE: u32 = 1 << 25;
    /// A Unix socket; senders skip sockets.
    pub const SOCKET: u32 = 1 << 24;
    /// Set-user-id.
    pub const SETUID: u32 = 1 << 23;
    /// Set-group-id.
    pub const SETGID: u32 = 1 << 22;
    /// A character device, always with [`DEVICE`].
    pub const CHAR_DEVICE: u32 = 1 << 21;
    /// Sticky.
    pub const STICKY: u32 = 1 << 20;
    /// A non-regular file of no other kind.
    pub const IRREGULAR: u32 = 1 << 19;
    /// Permission bits.
    pub const PERM: u32 = 0o777;
    /// Every type bit: an entry with none of them is a regular file.
    pub const TYPE: u32 = DIR | SYMLINK | NAMED_PIPE | SOCKET | DEVICE | CHAR_DEVICE | IRREGULAR;
}

/// The largest DATA chunk a sender writes.
pub const MAX_DATA_CHUNK: usize = 32 * 1024;

/// Converts a POSIX `st_mode` to Go `os.FileMode` bits.
pub fn go_mode(st_mode: u32) -> u32 {
    let mut m = st_mode & mode::PERM;
    match st_mode & libc::S_IFMT {
        libc::S_IFDIR => m |= mode::DIR,
        libc::S_IFLNK => m |= mode::SYMLINK,
        libc::S_IFIFO => m |= mode::NAMED_PIPE,
        libc::S_IFSOCK => m |= mode::SOCKET,
        libc::S_IFBLK => m |= mode::DEVICE,
        libc::S_IFCHR => m |= mode::DEVICE | mode::CHAR_DEVICE,
        libc::S_IFREG => {}
        _ => m |= mode::IRREGULAR,
    }
    if st_mode & libc::S_ISUID != 0 {
        m |= mode::SETUID;
    }
    if st_mode & libc::S_ISGID != 0 {
        m |= mode::SETGID;
    }
    if st_mode & libc::S_ISVTX != 0 {
        m |= mode::STICKY;
    }
    m
}

/// The permission and set-id/sticky bits of Go mode bits as POSIX bits
/// (without the file type).
pub fn posix_perm(go: u32) -> u32 {
    let mut m = go & mode::PERM;
    if go & mode::SETUID != 0 {
        m |= libc::S_ISUID;
    }
    if go & mode::SETGID != 0 {
        m |= libc::S_ISGID;
    }
    if go & mode::STICKY != 0 {
        m |= libc::S_ISVTX;
    }
    m
}

/// Whether a wire path is relative, clean and inside the root: non-empty,
/// no leading or trailing `/`, no empty, `.` or `..` element, no NUL. A
/// path is bytes, as in Go's fsutil (a name need not be UTF-8).
pub fn is_valid_path(p: &[u8]) -> bool {
    !p.is_empty()
        && !p.contains(&0)
        && p.split(|&c| c == b'/')
            .all(|c| !c.is_empty() && c != b"." && c != b"..")
}

/// Orders wire paths as the sender's walk does: element by element, each
/// compared byte-wise, a directory before what it contains.
pub fn compare_paths(a: &[u8], b: &[u8]) -> std::cmp::Ordering {
    a.split(|&c| c == b'/').cmp(b.split(|&c| c == b'/'))
}

/// A wire path (or a link target) as a host path relative to the root,
/// byte for byte.
pub fn wire_path(p: &[u8]) -> &std::path::Path {
    use std::os::unix::ffi::OsStrExt;
    std::path::Path::new(std::ffi::OsStr::from_bytes(p))
}

/// A packet of `kind` with no payload.
fn packet(kind: PacketType) -> Packet {
    Packet {
        r#type: kind as i32,
        ..Packet::default()
    }
}
