//! Layer compression throughput on this machine, for docs/PERFORMANCE.md:
//! `cargo run --release -p kiln-snapshot --example compress_throughput --
//! FILE...` reads each file into memory and pushes it through the layer
//! pipeline's compressors (sha256 of the input, compression, sha256 of the
//! output) as gzip, zstd and uncompressed, printing MB/s of input and the
//! compressed size. A directory argument is written as a layer instead
//! (walk + tar + the same pipeline), read from the page cache. For a file,
//! `zstd-1frame` is the zstd layers kiln made before they were cut into
//! frames (one multithreaded frame per layer, level 3), for comparison.

use kiln_snapshot::diff::{recompress, write_layer, Compression, DiffSource, Level};
use std::path::Path;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() {
        eprintln!("usage: compress_throughput FILE_OR_DIR...");
        std::process::exit(2);
    }
    for arg in &args {
        let path = Path::new(arg);
        let data = if path.is_dir() {
            None
        } else {
            match std::fs::read(path) {
                Ok(d) => Some(d),
                Err(e) => {
                    eprintln!("{arg}: {e}");
                    std::process::exit(1);
                }
            }
        };
        for compression in [
            Compression::Gzip,
            Compression::Zstd,
            Compression::Uncompressed,
        ] {
            let start = Instant::now();
            let result = match &data {
                Some(d) => recompress(
                    &mut d.as_slice(),
                    Compression::Uncompressed,
                    (compression, Level::default()),
                    &mut std::io::sink(),
                ),
                None => write_layer(
                    DiffSource::Walk {
                        lower: None,
                        upper: path,
                    },
                    compression,
                    &mut std::io::sink(),
                ),
            };
            let took = start.elapsed().as_secs_f64();
            if let (Some(d), Compression::Uncompressed) = (&data, compression) {
                one_frame(arg, d);
            }
            match result {
                Ok(desc) => println!(
                    "{arg} {:<12} {:>8.1} MB/s  {:>6.1}% of {} MB  {}",
                    compression.as_str(),
                    desc.uncompressed_size as f64 / took / 1e6,
                    100.0 * desc.size as f64 / desc.uncompressed_size.max(1) as f64,
                    desc.uncompressed_size / 1_000_000,
                    desc.digest,
                ),
                Err(e) => {
                    eprintln!("{arg}: {e}");
                    std::process::exit(1);
                }
            }
        }
    }
}

/// `data` as one multithreaded zstd frame at level 3 (the zstd layers of
/// kiln before frames), hashed before and after as above.
fn one_frame(arg: &str, data: &[u8]) {
    use sha2::Digest as _;
    use std::io::Write;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u32;
    let start = Instant::now();
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("zstd encoder");
    enc.multithread(threads).expect("zstd threads");
    let diff_id = sha2::Sha256::digest(data);
    enc.write_all(data).expect("compress");
    let out = enc.finish().expect("finish");
    let digest = sha2::Sha256::digest(&out);
    let took = start.elapsed().as_secs_f64();
    println!(
        "{arg} {:<12} {:>8.1} MB/s  {:>6.1}% of {} MB  sha256:{:x} of sha256:{:x}",
        "zstd-1frame",
        data.len() as f64 / took / 1e6,
        100.0 * out.len() as f64 / data.len().max(1) as f64,
        data.len() / 1_000_000,
        digest,
        diff_id,
    );
}
