//! What a transfer costs on the wire, as fsutil's progress counts it: the
//! encoded size of every packet the receiver gets (BuildKit's
//! `transferring NAME: 2B` for nothing sent is the end of the listing and
//! the sender's FIN). A receiver counts what arrives
//! ([`super::ReceiveStats::wire_bytes`]); [`wire_size`] tells what a
//! transfer into an empty directory takes without making it, for a client
//! that reads its files in place (kiln's embedded builds show the count
//! kilnd shows for the same directory).

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::send::{Listing, Walker};
use super::{packet, FsutilError, Packet, PacketType, SendOptions, MAX_DATA_CHUNK};

/// The field number of `Packet.data` (`wire.proto`).
const DATA_FIELD: u32 = 4;

/// The encoded size of one packet: what a receiver counts for it.
pub(super) fn packet_len(p: &Packet) -> u64 {
    u64::try_from(prost::Message::encoded_len(p)).unwrap_or(0)
}

/// The encoded size of a DATA packet of file `id` carrying `bytes` bytes,
/// without making one.
fn data_len(id: u32, bytes: u64) -> u64 {
    let empty = packet_len(&Packet {
        id,
        ..packet(PacketType::PacketData)
    });
    if bytes == 0 {
        return empty;
    }
    let field = prost::encoding::key_len(DATA_FIELD) + prost::encoding::encoded_len_varint(bytes);
    empty + field as u64 + bytes
}

/// What sending file `id` of `size` bytes takes: chunks of
/// [`MAX_DATA_CHUNK`] bytes, the rest, then the empty DATA that ends it
/// (the sender's `send_file`).
fn file_len(id: u32, size: u64) -> u64 {
    let chunk = MAX_DATA_CHUNK as u64;
    let (full, rest) = (size / chunk, size % chunk);
    let mut n = full * data_len(id, chunk) + data_len(id, 0);
    if rest > 0 {
        n += data_len(id, rest);
    }
    n
}

/// What sending the tree under `root` with `opts` to a receiver with an
/// empty destination takes on the wire, counted as the receiver counts it:
/// the sender's walk (the same STAT packets, the end of the listing), the
/// DATA of every file it offers (a receiver into an empty directory asks
/// for each), and its FIN. File content is not read: sizes come from the
/// listing. Blocking (file system).
pub fn wire_size(root: &Path, opts: &SendOptions) -> Result<u64, FsutilError> {
    let files = Arc::new(Mutex::new(HashMap::new()));
    let total = Arc::new(AtomicU64::new(0));
    let (offered, sum) = (files.clone(), total.clone());
    let mut next_id = 0u32;
    let listing: Listing = Box::new(move |p: Packet| {
        let mut n = packet_len(&p);
        if let Some(stat) = &p.stat {
            // The walker registers a file it offers before listing it.
            let id = next_id;
            next_id += 1;
            let offers = offered
                .lock()
                .map(|mut f| f.remove(&id).is_some())
                .unwrap_or(false);
            if offers {
                n += file_len(id, u64::try_from(stat.size).unwrap_or(0));
            }
        }
        sum.fetch_add(n, Ordering::Relaxed);
        Ok(())
    });
    Walker::new(root, opts, listing, files, Arc::new(AtomicBool::new(false)))?.run()?;
    Ok(total.load(Ordering::Relaxed) + packet_len(&packet(PacketType::PacketFin)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_lengths_are_the_encoded_packets() {
        for id in [0, 1, 127, 128, 70_000] {
            for bytes in [0usize, 1, 127, 128, 16_383, 16_384, MAX_DATA_CHUNK] {
                let real = Packet {
                    id,
                    data: vec![7; bytes],
                    ..packet(PacketType::PacketData)
                };
                assert_eq!(
                    data_len(id, bytes as u64),
                    packet_len(&real),
                    "{id} {bytes}"
                );
            }
        }
    }
}
