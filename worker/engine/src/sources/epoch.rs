//! The time a fetched remote source gives `SOURCE_DATE_EPOCH` when the
//! Dockerfile names it (BuildKit's source metadata as its frontend reads
//! it): a git checkout's commit time, an HTTP download's `Last-Modified`,
//! else the latest regular file of the archive the download is.
//!
//! Both read what the source op left: a checkout fetched with
//! `git.mtime=commit` has the committer's time on every entry, the root
//! too ([`git::checkout`](super::git::checkout)); a download has
//! `Last-Modified` as its mtime, or 0 when the server sent none
//! ([`http::download`](super::http::download)).

use super::SourceFailure;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The commit time of a checkout fetched with `git.mtime=commit`, whose
/// root is `dir`.
pub fn checkout_time(dir: &Path) -> Result<i64, SourceFailure> {
    std::fs::symlink_metadata(dir)
        .map(|m| m.mtime())
        .map_err(|e| SourceFailure(format!("{}: {e}", dir.display())))
}

/// The time of the downloaded `file`: its `Last-Modified` (its mtime),
/// else the latest regular file in it when it is an archive, else none.
/// A `Last-Modified` of exactly 1970-01-01T00:00:00Z reads as none.
pub fn download_time(file: &Path) -> Result<Option<i64>, SourceFailure> {
    let md = std::fs::symlink_metadata(file)
        .map_err(|e| SourceFailure(format!("{}: {e}", file.display())))?;
    if md.mtime() != 0 {
        return Ok(Some(md.mtime()));
    }
    if !md.file_type().is_file() {
        return Ok(None);
    }
    Ok(crate::fileop::unpack::latest_file_time(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_with(files: &[(&str, u64)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, mtime) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(3);
            h.set_mode(0o644);
            h.set_mtime(*mtime);
            h.set_cksum();
            b.append_data(&mut h, name, &b"bar"[..]).expect("append");
        }
        let mut dir = tar::Header::new_gnu();
        dir.set_entry_type(tar::EntryType::Directory);
        dir.set_size(0);
        dir.set_mode(0o755);
        dir.set_mtime(2_000_000_000);
        dir.set_cksum();
        b.append_data(&mut dir, "d/", &b""[..]).expect("append");
        b.into_inner().expect("tar")
    }

    fn set_mtime(path: &Path, secs: i64) {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs as u64);
        std::fs::File::options()
            .write(true)
            .open(path)
            .expect("open")
            .set_modified(t)
            .expect("mtime");
    }

    #[test]
    fn last_modified_wins_over_the_archive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("src.tar");
        std::fs::write(&f, tar_with(&[("a", 1_700_000_402)])).expect("write");
        set_mtime(&f, 1_700_000_201);
        assert_eq!(download_time(&f).expect("time"), Some(1_700_000_201));
    }

    #[test]
    fn without_last_modified_the_latest_regular_file_of_an_archive() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("src.tar");
        let tar = tar_with(&[("a", 1_700_000_100), ("b", 1_700_000_402), ("c", 5)]);
        std::fs::write(&f, &tar).expect("write");
        set_mtime(&f, 0);
        // The directory's later time does not count.
        assert_eq!(download_time(&f).expect("time"), Some(1_700_000_402));
        // Compressed the same.
        let gz = dir.path().join("src.tar.gz");
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, &tar).expect("gzip");
        std::fs::write(&gz, enc.finish().expect("gzip")).expect("write");
        set_mtime(&gz, 0);
        assert_eq!(download_time(&gz).expect("time"), Some(1_700_000_402));
    }

    #[test]
    fn a_plain_file_without_last_modified_has_no_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("file");
        std::fs::write(&f, b"not an archive").expect("write");
        set_mtime(&f, 0);
        assert_eq!(download_time(&f).expect("time"), None);
        assert!(download_time(&dir.path().join("missing")).is_err());
    }

    #[test]
    fn a_checkout_has_its_roots_time() {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_101);
        std::fs::File::open(dir.path())
            .expect("open dir")
            .set_modified(t)
            .expect("mtime");
        assert_eq!(checkout_time(dir.path()).expect("time"), 1_700_000_101);
    }
}
