//! A tar context on stdin through kilnd, as buildx sends it (`docker
//! buildx build - < context.tar`): the client serves the archive in its
//! session as an upload and names `http://buildkit-session/<id>` as the
//! `context` frontend option; kilnd pulls it with `Upload.Pull` (the
//! client serves it once), unpacks it and builds from it. A plain
//! Dockerfile on stdin is the Dockerfile, with an empty context.

use crate::common::{buildctl_like as buildctl, outputs as text};
use kiln_integration::Harness;
use std::path::Path;

/// A gzip tar of `files`.
fn tar_gz(path: &Path, files: &[(&str, &str)]) {
    let out = std::fs::File::create(path).expect("create the archive");
    let gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    for (name, body) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(body.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        tar.append_data(&mut header, name, body.as_bytes())
            .expect("append");
    }
    tar.into_inner()
        .expect("tar ends")
        .finish()
        .expect("gzip ends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tar_context_uploaded_in_the_session_is_built() {
    let ns = "upload-context";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    // The local context the client also offers is not the build's.
    let unused = h.context("upload-unused", &[("a.txt", "from the directory\n")]);
    let archive = h.state_dir().join("upload-context.tar.gz");
    tar_gz(
        &archive,
        &[
            (
                "Dockerfile",
                "FROM busybox\nCOPY a.txt /a.txt\nRUN echo ran-the-step && cat /a.txt > /b.txt\n",
            ),
            ("a.txt", "from the upload\n"),
        ],
    );
    let upload = archive.to_str().expect("utf-8 path");

    let built = buildctl(
        &k,
        &unused,
        "docker.io/library/upload:one",
        &[("BUILDCTL_LIKE_UPLOAD", upload)],
    );
    let (out, err) = text(&built);
    assert!(built.status.success(), "{out}\n{err}");
    assert!(out.contains("ran-the-step"), "{out}");
    let b = h.run_image(
        ns,
        "docker.io/library/upload:one",
        "upload-one",
        &["cat", "/b.txt"],
    );
    assert_eq!(b, "from the upload\n");

    // The URL is no secret (it is the build's `context` attribute, kept
    // in its history): another client naming it reads nothing.
    let url = out
        .lines()
        .find_map(|l| l.strip_prefix("buildctl-like: upload "))
        .expect("the upload's URL")
        .to_string();
    let replay = buildctl(
        &k,
        &unused,
        "docker.io/library/upload:replay",
        &[("BUILDCTL_LIKE_OPTS", &format!("context={url}"))],
    );
    let (rout, rerr) = text(&replay);
    assert!(
        !replay.status.success(),
        "another session read the upload:\n{rout}\n{rerr}"
    );
    assert!(
        rerr.contains(&format!("no upload {url} in the client's session")),
        "{rerr}"
    );

    // The same archive again (a new upload, under a new URL): the same
    // content, so the steps on it are cached.
    let again = buildctl(
        &k,
        &unused,
        "docker.io/library/upload:two",
        &[("BUILDCTL_LIKE_UPLOAD", upload)],
    );
    let (out, err) = text(&again);
    assert!(again.status.success(), "{out}\n{err}");
    assert!(!out.contains("ran-the-step"), "the step ran again:\n{out}");
    assert_eq!(
        h.image_digest(ns, "docker.io/library/upload:two"),
        h.image_digest(ns, "docker.io/library/upload:one")
    );

    // A Dockerfile that is not an archive is the Dockerfile itself.
    let plain = h.state_dir().join("upload-Dockerfile");
    std::fs::write(&plain, "FROM busybox\nRUN echo plain > /p.txt\n").expect("write");
    let built = buildctl(
        &k,
        &unused,
        "docker.io/library/upload:plain",
        &[("BUILDCTL_LIKE_UPLOAD", plain.to_str().expect("utf-8 path"))],
    );
    let (out, err) = text(&built);
    assert!(built.status.success(), "{out}\n{err}");
    let p = h.run_image(
        ns,
        "docker.io/library/upload:plain",
        "upload-plain",
        &["cat", "/p.txt"],
    );
    assert_eq!(p, "plain\n");

    // An upload URL fails, naming it, when the client serves no uploads
    // and when it serves others but not this one (BuildKit's client
    // answers that with "no http response from session").
    let missing = buildctl(
        &k,
        &unused,
        "docker.io/library/upload:missing",
        &[("BUILDCTL_LIKE_OPTS", "context=http://buildkit-session/nope")],
    );
    let (out, err) = text(&missing);
    assert!(!missing.status.success(), "{out}\n{err}");
    assert!(
        err.contains("no upload http://buildkit-session/nope in the client's session"),
        "{err}"
    );
    let other = buildctl(
        &k,
        &unused,
        "docker.io/library/upload:other",
        &[
            ("BUILDCTL_LIKE_UPLOAD", upload),
            ("BUILDCTL_LIKE_OPTS", "context=http://buildkit-session/nope"),
        ],
    );
    let (out, err) = text(&other);
    assert!(!other.status.success(), "{out}\n{err}");
    assert!(
        err.contains("upload http://buildkit-session/nope: ")
            && err.contains("no http response from session for nope"),
        "{err}"
    );
}

/// BuildKit's `testTarContextExternalDockerfile`: the context is an
/// uploaded archive scoped to one of its directories (`contextsubdir`),
/// and the Dockerfile is the client's (`dockerfilekey`), as buildx sends
/// an absolute `-f` beside a URL context.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subdir_of_an_uploaded_context_with_the_clients_dockerfile() {
    let ns = "upload-subdir";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let local = h.context(
        "upload-subdir",
        &[("Dockerfile", "FROM busybox\nCOPY foo /bar\n")],
    );
    let archive = h.state_dir().join("upload-subdir.tar.gz");
    tar_gz(
        &archive,
        &[
            ("sub/dir/foo", "contents\n"),
            ("foo", "the archive's root\n"),
            ("Dockerfile", "FROM busybox\nRUN false\n"),
        ],
    );
    let built = buildctl(
        &k,
        &local,
        "docker.io/library/upload:subdir",
        &[
            (
                "BUILDCTL_LIKE_UPLOAD",
                archive.to_str().expect("utf-8 path"),
            ),
            (
                "BUILDCTL_LIKE_OPTS",
                "dockerfilekey=dockerfile,contextsubdir=sub/dir",
            ),
        ],
    );
    let (out, err) = text(&built);
    assert!(built.status.success(), "{out}\n{err}");
    let bar = h.run_image(
        ns,
        "docker.io/library/upload:subdir",
        "upload-subdir",
        &["cat", "/bar"],
    );
    assert_eq!(bar, "contents\n");
}
