//! Re-compressing an existing layer blob into another compression (a
//! "variant", as BuildKit calls it), checking its diffID on the way.

use super::compress::{Compressor, HashWriter};
use super::{Compression, DiffError, LayerDescriptor, Level};
use kiln_types::Digest;
use std::io::{self, Read, Write};

/// The compression a layer media type uses, if it is a layer type kiln
/// knows (OCI or Docker names).
pub fn compression_of(media_type: &str) -> Option<Compression> {
    match media_type {
        "application/vnd.oci.image.layer.v1.tar+gzip"
        | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Some(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd"
        | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
        "application/vnd.oci.image.layer.v1.tar"
        | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::Uncompressed),
        _ => None,
    }
}

/// Reads a layer compressed with `from` and writes it compressed with
/// `to` at its level: decompress -> sha256 (diffID) -> compress -> sha256
/// -> `out`.
pub fn recompress(
    input: &mut dyn Read,
    from: Compression,
    (to, level): (Compression, Level),
    out: &mut dyn Write,
) -> Result<LayerDescriptor, DiffError> {
    let mut reader = decompressor(input, from)?;
    let blob = HashWriter::new(out);
    let compressor =
        Compressor::at_level(to, level, blob).map_err(|e| DiffError::Output { source: e })?;
    let mut tar = HashWriter::new(compressor);
    io::copy(&mut reader, &mut tar).map_err(|e| DiffError::Output { source: e })?;
    let (compressor, diff_hash, uncompressed_size) = tar.finish();
    let blob = compressor
        .finish()
        .map_err(|e| DiffError::Output { source: e })?;
    let (out, blob_hash, size) = blob.finish();
    out.flush().map_err(|e| DiffError::Output { source: e })?;
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

/// A reader of the tar inside a layer compressed with `from`.
pub(super) fn decompressor<'a>(
    input: &'a mut dyn Read,
    from: Compression,
) -> Result<Box<dyn Read + 'a>, DiffError> {
    Ok(match from {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(input)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::new(input).map_err(|e| DiffError::Output { source: e })?,
        ),
        Compression::Uncompressed => Box::new(input),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_to_zstd_and_back_keeps_the_diff_id() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("f"), b"hello layer").expect("write");
        let mut gz = Vec::new();
        let orig = super::super::write_layer(
            super::super::DiffSource::Walk {
                lower: None,
                upper: dir.path(),
            },
            Compression::Gzip,
            &mut gz,
        )
        .expect("layer");
        let mut zst = Vec::new();
        let z = recompress(
            &mut &gz[..],
            Compression::Gzip,
            (Compression::Zstd, Level::default()),
            &mut zst,
        )
        .expect("zstd");
        assert_eq!(z.diff_id, orig.diff_id);
        assert_eq!(z.digest, Digest::of(&zst));
        let mut raw = Vec::new();
        let r = recompress(
            &mut &zst[..],
            Compression::Zstd,
            (Compression::Uncompressed, Level::default()),
            &mut raw,
        )
        .expect("raw");
        assert_eq!(r.diff_id, orig.diff_id);
        assert_eq!(r.digest, orig.diff_id);
        assert_eq!(compression_of(z.media_type), Some(Compression::Zstd));
    }
}
