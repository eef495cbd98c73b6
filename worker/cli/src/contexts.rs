//! Where the build context and the Dockerfile come from, as `docker
//! build` reads its arguments: a directory; `-` (stdin: a tar, optionally
//! gzipped, of the context, or a Dockerfile with an empty context); a
//! local `.tar`/`.tar.gz` file; `-f -` (the Dockerfile from stdin). A
//! context from stdin or a tar is unpacked into a temporary directory that
//! lives as long as the build. A git repository or an http(s) URL is
//! not read here: it goes to the frontend as the `context` attribute, as
//! buildx sends it, and the engine (embedded or kilnd's) fetches it.

use anyhow::{anyhow, bail, Context, Result};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The context directory and the Dockerfile of a build, both absolute,
/// and the temporary directories that hold them when they came from
/// stdin or a tar (removed on drop).
#[derive(Debug)]
pub struct Prepared {
    pub context: PathBuf,
    pub dockerfile: PathBuf,
    /// A git or http(s) context, fetched by the engine; `context` is then
    /// an empty directory and `dockerfile` is not read unless
    /// `dockerfile_local`.
    pub remote: Option<String>,
    /// Beside a remote context, the Dockerfile is the client's (an
    /// absolute `-f`, or `-f -`), sent as buildx sends it
    /// (`dockerfilekey`).
    pub dockerfile_local: bool,
    _keep: Vec<tempfile::TempDir>,
}

/// Whether `arg` names a remote context docker would fetch (an HTTP(S)
/// URL, a git URL, git's scp-like `user@host:path` or `github.com/...`).
fn is_remote(arg: &str) -> bool {
    arg.contains("://") || kiln_solver::source::is_ssh_remote(arg) || arg.starts_with("github.com/")
}

/// A remote context: checked by the frontend's own rule (so a typo fails
/// here, before anything connects), with an empty directory in place of
/// the context. `-f` names a file in the fetched context or, when
/// absolute or `-` (stdin), the client's own file (as buildx reads it).
fn prepare_remote(arg: &str, file: Option<&Path>, stdin: &mut dyn Read) -> Result<Prepared> {
    if arg.starts_with("github.com/") {
        bail!("build context {arg}: the github.com/… short form is not supported yet (use https://{arg}.git)");
    }
    kiln_frontend::remote::RemoteContext::parse("context", arg)
        .with_context(|| format!("build context {arg}"))?;
    let empty = tempfile::Builder::new()
        .prefix("kiln-context-")
        .tempdir()
        .context("create an empty context")?;
    let context = empty.path().to_path_buf();
    let mut keep = vec![empty];
    let (dockerfile, dockerfile_local) = match file {
        Some(f) if f.as_os_str() == "-" => {
            let (dir, path) = temp_dockerfile(&read_stdin(stdin)?)?;
            keep.push(dir);
            (path, true)
        }
        Some(f) if f.is_absolute() => (f.to_path_buf(), true),
        f => (
            context.join(f.unwrap_or(Path::new(kiln_frontend::DEFAULT_FILENAME))),
            false,
        ),
    };
    Ok(Prepared {
        context,
        dockerfile,
        remote: Some(arg.to_string()),
        dockerfile_local,
        _keep: keep,
    })
}

fn is_gzip(data: &[u8]) -> bool {
    data.starts_with(&[0x1f, 0x8b])
}

/// A POSIX or GNU tar: `ustar` at offset 257 of the first header.
fn is_tar(data: &[u8]) -> bool {
    data.get(257..262) == Some(b"ustar")
}

/// Compressions `docker build -` takes that kiln does not read yet.
fn other_compression(data: &[u8]) -> Option<&'static str> {
    if data.starts_with(b"BZh") {
        Some("bzip2")
    } else if data.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Some("xz")
    } else if data.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some("zstd")
    } else {
        None
    }
}

/// Unpacks a (gzipped) tar into a new temporary directory, entry by
/// entry. An entry or hard link named with `..` fails naming it (the tar
/// reader would skip it silently); an absolute name lands inside, as
/// docker unpacks it; the reader refuses writes through a link out of the
/// directory, and the error names the entry.
fn unpack(data: &[u8], what: &str) -> Result<tempfile::TempDir> {
    let dir = tempfile::Builder::new()
        .prefix("kiln-context-")
        .tempdir()
        .context("create a directory for the context")?;
    let reader: Box<dyn Read + '_> = if is_gzip(data) {
        Box::new(flate2::read::GzDecoder::new(data))
    } else {
        Box::new(data)
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_overwrite(true);
    let climbs = |p: &Path| {
        p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    };
    let entries = archive
        .entries()
        .with_context(|| format!("unpack the build context from {what}"))?;
    let mut dirs = Vec::new();
    for entry in entries {
        let mut entry = entry.with_context(|| format!("unpack the build context from {what}"))?;
        let name = entry
            .path()
            .with_context(|| format!("unpack the build context from {what}"))?
            .into_owned();
        if climbs(&name) {
            bail!(
                "unpack the build context from {what}: entry {} is outside the context",
                name.display()
            );
        }
        if entry.header().entry_type().is_hard_link() {
            if let Some(target) = entry
                .link_name()
                .with_context(|| format!("unpack the build context from {what}"))?
            {
                if climbs(&target) {
                    bail!(
                        "unpack the build context from {what}: entry {} is a hard link to {}, outside the context",
                        name.display(),
                        target.display()
                    );
                }
            }
        }
        // Directories last, as the tar reader's own unpack does: their
        // modes and times then hold whatever is created below them.
        if entry.header().entry_type().is_dir() {
            dirs.push(entry);
            continue;
        }
        unpack_entry(&mut entry, &name, dir.path(), what)?;
    }
    for mut entry in dirs {
        let name = entry.path().map(|p| p.into_owned()).unwrap_or_default();
        unpack_entry(&mut entry, &name, dir.path(), what)?;
    }
    Ok(dir)
}

/// Unpacks one checked entry into `dir`; the error names it.
fn unpack_entry<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    name: &Path,
    dir: &Path,
    what: &str,
) -> Result<()> {
    let unpacked = entry.unpack_in(dir).with_context(|| {
        format!(
            "unpack the build context from {what}: entry {}",
            name.display()
        )
    })?;
    if !unpacked {
        bail!(
            "unpack the build context from {what}: entry {} is outside the context",
            name.display()
        );
    }
    Ok(())
}

fn temp_dockerfile(data: &[u8]) -> Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::Builder::new()
        .prefix("kiln-dockerfile-")
        .tempdir()
        .context("create a directory for the Dockerfile")?;
    let path = dir.path().join(kiln_frontend::DEFAULT_FILENAME);
    std::fs::write(&path, data).with_context(|| format!("write {}", path.display()))?;
    Ok((dir, path))
}

fn read_stdin(stdin: &mut dyn Read) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    stdin
        .read_to_end(&mut data)
        .context("read the build input from stdin")?;
    Ok(data)
}

/// Resolves the CONTEXT argument and `-f` into directories, reading
/// `stdin` when either is `-`.
pub fn prepare(context: &Path, file: Option<&Path>, stdin: &mut dyn Read) -> Result<Prepared> {
    let arg = context.to_string_lossy();
    let file_stdin = file.is_some_and(|f| f.as_os_str() == "-");
    let mut keep = Vec::new();
    if is_remote(&arg) {
        return prepare_remote(&arg, file, stdin);
    }
    let (dir, stdin_dockerfile) = if arg == "-" {
        if file_stdin {
            bail!("invalid argument: can't use stdin for both build context and dockerfile");
        }
        let data = read_stdin(stdin)?;
        if let Some(c) = other_compression(&data) {
            bail!("build context from stdin: {c}-compressed archives are not supported yet (use tar or tar.gz)");
        }
        if is_gzip(&data) || is_tar(&data) {
            let d = unpack(&data, "stdin")?;
            let path = d.path().to_path_buf();
            keep.push(d);
            (path, None)
        } else {
            // A Dockerfile on stdin builds with an empty context.
            if file.is_some() {
                bail!("-f cannot name a Dockerfile when the Dockerfile comes from stdin (`-`)");
            }
            let empty = tempfile::Builder::new()
                .prefix("kiln-context-")
                .tempdir()
                .context("create an empty context")?;
            let path = empty.path().to_path_buf();
            keep.push(empty);
            let (d, df) = temp_dockerfile(&data)?;
            keep.push(d);
            (path, Some(df))
        }
    } else if context.is_file() {
        let data = std::fs::read(context)
            .with_context(|| format!("read build context {}", context.display()))?;
        if let Some(c) = other_compression(&data) {
            bail!(
                "build context {}: {c}-compressed archives are not supported yet (use tar or tar.gz)",
                context.display()
            );
        }
        if !(is_gzip(&data) || is_tar(&data)) {
            bail!(
                "build context {} is neither a directory nor a tar archive",
                context.display()
            );
        }
        let d = unpack(&data, &context.display().to_string())?;
        let path = d.path().to_path_buf();
        keep.push(d);
        (path, None)
    } else {
        let dir = context
            .canonicalize()
            .with_context(|| format!("build context {}", context.display()))?;
        if !dir.is_dir() {
            return Err(anyhow!(
                "build context {} is not a directory",
                dir.display()
            ));
        }
        (dir, None)
    };
    let dir = dir
        .canonicalize()
        .with_context(|| format!("build context {}", dir.display()))?;
    let unpacked = !keep.is_empty();
    let dockerfile = match (stdin_dockerfile, file) {
        (Some(df), _) => df,
        (None, Some(_)) if file_stdin => {
            let (d, df) = temp_dockerfile(&read_stdin(stdin)?)?;
            keep.push(d);
            df
        }
        // In an unpacked archive, -f names a file inside it, as docker
        // reads it.
        (None, Some(f)) if unpacked && f.is_relative() => {
            let p = dir.join(f);
            if !p.is_file() {
                bail!(
                    "cannot read {}: no such file in the build context archive",
                    f.display()
                );
            }
            p
        }
        (None, Some(f)) => f
            .canonicalize()
            .with_context(|| format!("cannot read {}", f.display()))?,
        (None, None) => dir.join(kiln_frontend::DEFAULT_FILENAME),
    };
    Ok(Prepared {
        context: dir,
        dockerfile,
        remote: None,
        dockerfile_local: false,
        _keep: keep,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &str)], gzip: bool) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, body) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, body.as_bytes())
                .expect("append");
        }
        let data = b.into_inner().expect("tar");
        if !gzip {
            return data;
        }
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut gz, &data).expect("gzip");
        gz.finish().expect("gzip")
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).expect("read")
    }

    #[test]
    fn a_tar_on_stdin_is_the_context() {
        for gzip in [false, true] {
            let data = tar_of(&[("Dockerfile", "FROM busybox\n"), ("a/b.txt", "hi")], gzip);
            let p = prepare(Path::new("-"), None, &mut data.as_slice()).expect("prepare");
            assert_eq!(read(&p.dockerfile), "FROM busybox\n");
            assert_eq!(read(&p.context.join("a/b.txt")), "hi");
            let ctx = p.context.clone();
            drop(p);
            assert!(!ctx.exists(), "the unpacked context is removed");
        }
    }

    #[test]
    fn a_dockerfile_on_stdin_builds_an_empty_context() {
        let p = prepare(Path::new("-"), None, &mut &b"FROM scratch\n"[..]).expect("prepare");
        assert_eq!(read(&p.dockerfile), "FROM scratch\n");
        assert_eq!(std::fs::read_dir(&p.context).expect("dir").count(), 0);
        let e = prepare(
            Path::new("-"),
            Some(Path::new("x")),
            &mut &b"FROM scratch\n"[..],
        )
        .expect_err("-f with a stdin Dockerfile");
        assert!(e.to_string().contains("-f cannot name"), "{e}");
    }

    #[test]
    fn dash_f_dash_reads_the_dockerfile_from_stdin() {
        let ctx = tempfile::tempdir().expect("ctx");
        std::fs::write(ctx.path().join("Dockerfile"), "FROM wrong\n").expect("write");
        let p =
            prepare(ctx.path(), Some(Path::new("-")), &mut &b"FROM right\n"[..]).expect("prepare");
        assert_eq!(read(&p.dockerfile), "FROM right\n");
        assert_eq!(p.context, ctx.path().canonicalize().expect("canon"));
        let e = prepare(Path::new("-"), Some(Path::new("-")), &mut &b""[..]).expect_err("both");
        assert_eq!(
            e.to_string(),
            "invalid argument: can't use stdin for both build context and dockerfile"
        );
    }

    #[test]
    fn a_tar_file_is_unpacked_and_f_names_a_file_inside_it() {
        let dir = tempfile::tempdir().expect("dir");
        let t = dir.path().join("ctx.tar.gz");
        std::fs::write(&t, tar_of(&[("sub/app.Dockerfile", "FROM app\n")], true)).expect("w");
        let p = prepare(&t, Some(Path::new("sub/app.Dockerfile")), &mut &b""[..]).expect("tar");
        assert_eq!(read(&p.dockerfile), "FROM app\n");
        let junk = dir.path().join("notes.txt");
        std::fs::write(&junk, "not a tar").expect("w");
        let e = prepare(&junk, None, &mut &b""[..]).expect_err("not a tar");
        assert!(
            e.to_string()
                .ends_with("is neither a directory nor a tar archive"),
            "{e}"
        );
    }

    #[test]
    fn remote_contexts_go_to_the_frontend() {
        for url in [
            "https://example.com/ctx.tar.gz",
            "git://example.com/r#v1:sub",
            "https://example.com/r.git?ref=main&subdir=app",
            "git@github.com:o/r.git#main",
            "root@127.0.0.1:/srv/r.git",
            "ssh://git@example.com:2222/r.git",
        ] {
            let p = prepare(
                Path::new(url),
                Some(Path::new("app.Dockerfile")),
                &mut &b""[..],
            )
            .expect(url);
            assert_eq!(p.remote.as_deref(), Some(url));
            assert_eq!(std::fs::read_dir(&p.context).expect("dir").count(), 0);
            assert_eq!(p.dockerfile, p.context.join("app.Dockerfile"));
        }
    }

    #[test]
    fn remote_contexts_kiln_cannot_fetch_fail_by_name() {
        for (url, msg) in [
            (
                "github.com/o/r",
                "the github.com/… short form is not supported yet",
            ),
            (
                "ftp://example.com/r",
                "must be a git repository or an http(s) URL",
            ),
        ] {
            let e = prepare(Path::new(url), None, &mut &b""[..]).expect_err(url);
            assert!(format!("{e:#}").contains(msg), "{url}: {e:#}");
        }
    }

    #[test]
    fn a_dockerfile_from_stdin_or_an_absolute_path_beside_a_remote_context_is_local() {
        let p = prepare(
            Path::new("git://example.com/r"),
            Some(Path::new("-")),
            &mut &b"FROM scratch\n"[..],
        )
        .expect("-f -");
        assert!(p.dockerfile_local);
        assert_eq!(
            std::fs::read_to_string(&p.dockerfile).expect("written"),
            "FROM scratch\n"
        );
        let p = prepare(
            Path::new("git://example.com/r"),
            Some(Path::new("/abs/Dockerfile.x")),
            &mut &b""[..],
        )
        .expect("absolute");
        assert!(p.dockerfile_local);
        assert_eq!(p.dockerfile, Path::new("/abs/Dockerfile.x"));
        let p = prepare(
            Path::new("git://example.com/r"),
            Some(Path::new("sub/Dockerfile")),
            &mut &b""[..],
        )
        .expect("in the context");
        assert!(!p.dockerfile_local);
    }

    #[test]
    fn a_tar_without_owners_or_times_unpacks() {
        // The tar crate's fresh header leaves uid, gid and mtime all NULs.
        let mut h = tar::Header::new_gnu();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(&mut h, "Dockerfile", &b"FROM "[..])
            .expect("append");
        let data = b.into_inner().expect("tar");
        let p = prepare(Path::new("-"), None, &mut data.as_slice()).expect("unpacked");
        assert_eq!(
            std::fs::read_to_string(&p.dockerfile).expect("read"),
            "FROM "
        );
    }

    #[test]
    fn a_tar_cannot_write_outside_the_context() {
        // A hand-made header with `../escape` (the builder refuses it).
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().expect("gnu").name[..9].copy_from_slice(b"../escape");
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        let mut data = h.as_bytes().to_vec();
        data.extend_from_slice(&[b'x'; 512]);
        data.extend_from_slice(&[0; 1024]);
        let parent = std::env::temp_dir().join("escape");
        let before = parent.exists();
        let r = prepare(Path::new("-"), None, &mut data.as_slice());
        if !before {
            assert!(!parent.exists(), "wrote outside: {r:?}");
        }
    }
}
