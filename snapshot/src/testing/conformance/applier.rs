//! The contract of [`crate::services::Applier`]: a layer blob unpacked
//! onto an active snapshot, whiteouts honoured, its diffID returned.

use super::{blob, cases, ensure, fails, lease, ok, run, CaseResult, Ctx};
use super::{ConformanceError, Namespaces, Report};
use crate::mount::{Mount, MountGuard};
use kiln_types::Digest;
use kiln_types::ErrorKind;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

const TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// Checks the diff service's Apply of `namespaces`, reading the results
/// under `scratch` (as the snapshotter suite does).
pub async fn applier_conformance(
    namespaces: Arc<dyn Namespaces>,
    scratch: &Path,
) -> Result<Report, ConformanceError> {
    run(
        "applier",
        cases![
            a_layer_applies_with_its_whiteouts_and_returns_its_diff_id,
            an_uncompressed_layer_applies,
            links_and_type_changes_apply_from_a_zstd_layer,
            applying_a_missing_blob_is_not_found,
        ],
        namespaces,
        scratch,
    )
    .await
}

/// A directory where `mounts` can be read: the source of a single bind
/// mount, or (as root) a mount under `target`.
fn open(mounts: &[Mount], target: &Path) -> Result<(Option<MountGuard>, PathBuf), String> {
    if let [m] = mounts {
        if m.mount_type == "bind" {
            return Ok((None, PathBuf::from(&m.source)));
        }
    }
    let g = MountGuard::mount(mounts, target.to_path_buf()).map_err(|e| format!("mount: {e}"))?;
    let p = g.path().to_path_buf();
    Ok((Some(g), p))
}

/// An entry of a test layer.
enum E<'a> {
    File(&'a str, &'a str),
    Dir(&'a str),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
}

/// A layer tar of `entries`, in order.
fn layer(entries: &[E]) -> Result<Vec<u8>, String> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1);
        h.set_size(0);
        let r = match e {
            E::File(path, body) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(body.len() as u64);
                b.append_data(&mut h, path, body.as_bytes())
            }
            E::Dir(path) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                b.append_data(&mut h, path, std::io::empty())
            }
            E::Symlink(path, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                b.append_link(&mut h, path, target)
            }
            E::Hardlink(path, target) => {
                h.set_entry_type(tar::EntryType::Link);
                h.set_mode(0o644);
                b.append_link(&mut h, path, target)
            }
        };
        r.map_err(|e| format!("tar: {e}"))?;
    }
    b.into_inner().map_err(|e| format!("tar: {e}"))
}

fn gzip(data: &[u8]) -> Result<Vec<u8>, String> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).map_err(|e| e.to_string())?;
    gz.finish().map_err(|e| e.to_string())
}

/// A committed base `c1` with `keep`, `gone` and `d/old`.
async fn base(c: &Ctx, lease: &crate::containerd::LeaseId) -> CaseResult {
    let s = &c.s;
    let base = layer(&[
        E::File("keep", "kept"),
        E::File("gone", "to be whited out"),
        E::Dir("d/"),
        E::File("d/old", "hidden by the opaque dir"),
        E::File("was-file", "becomes a directory"),
        E::Dir("was-dir/"),
        E::File("was-dir/f", "goes with its directory"),
    ])?;
    let d = blob(s, &base, &[], lease).await?;
    let m = ok(s.snapshots.prepare("a1", "", lease).await, "prepare")?;
    let applied = ok(
        s.applier
            .apply(TAR, d.as_str(), base.len() as i64, &m, lease)
            .await,
        "apply the base layer",
    )?;
    ensure(
        applied == d.as_str(),
        "an uncompressed layer's diffID is its digest",
    )?;
    ok(s.snapshots.commit("c1", "a1", lease).await, "commit")
}

async fn a_layer_applies_with_its_whiteouts_and_returns_its_diff_id(c: Ctx) -> CaseResult {
    let s = &c.s;
    let l = lease(s).await?;
    base(&c, &l).await?;
    let tar = layer(&[
        E::Dir("d/"),
        E::File("d/.wh..wh..opq", ""),
        E::File("d/fresh", "new in d"),
        E::File(".wh.gone", ""),
        E::File("new", "added"),
    ])?;
    let gz = gzip(&tar)?;
    let d = blob(s, &gz, &[], &l).await?;
    let m = ok(s.snapshots.prepare("a2", "c1", &l).await, "prepare")?;
    let applied = ok(
        s.applier
            .apply(TAR_GZIP, d.as_str(), gz.len() as i64, &m, &l)
            .await,
        "apply",
    )?;
    ensure(
        applied == Digest::of(&tar).as_str(),
        "apply returns the uncompressed digest",
    )?;
    let (_guard, root) = open(&m, &c.scratch.join("mnt"))?;
    let read = |p: &str| std::fs::read_to_string(root.join(p)).ok();
    ensure(read("keep").as_deref() == Some("kept"), "lower files stay")?;
    ensure(read("new").as_deref() == Some("added"), "new files appear")?;
    ensure(read("gone").is_none(), "a whiteout removes a lower file")?;
    ensure(
        !root.join(".wh.gone").exists(),
        "the whiteout itself is not a file",
    )?;
    ensure(
        read("d/old").is_none(),
        "an opaque directory hides the lower contents",
    )?;
    ensure(
        read("d/fresh").as_deref() == Some("new in d"),
        "an opaque directory keeps the layer's own contents",
    )
}

async fn an_uncompressed_layer_applies(c: Ctx) -> CaseResult {
    let l = lease(&c.s).await?;
    base(&c, &l).await?;
    let m = ok(c.s.snapshots.view("v", "c1", &l).await, "view")?;
    let (_guard, root) = open(&m, &c.scratch.join("mnt"))?;
    ensure(
        std::fs::read_to_string(root.join("d/old")).ok().as_deref()
            == Some("hidden by the opaque dir"),
        "the base layer's files are there",
    )
}

async fn links_and_type_changes_apply_from_a_zstd_layer(c: Ctx) -> CaseResult {
    let s = &c.s;
    let l = lease(s).await?;
    base(&c, &l).await?;
    let tar = layer(&[
        E::Dir("was-file/"),
        E::File("was-file/inner", "inside"),
        E::File("was-dir", "now a file"),
        E::File("new", "added"),
        E::Symlink("link", "keep"),
        E::Hardlink("hard", "new"),
    ])?;
    let zst = zstd::encode_all(&tar[..], 1).map_err(|e| format!("zstd: {e}"))?;
    let d = blob(s, &zst, &[], &l).await?;
    let m = ok(s.snapshots.prepare("a2", "c1", &l).await, "prepare")?;
    let applied = ok(
        s.applier
            .apply(TAR_ZSTD, d.as_str(), zst.len() as i64, &m, &l)
            .await,
        "apply",
    )?;
    ensure(
        applied == Digest::of(&tar).as_str(),
        "apply returns the uncompressed digest",
    )?;
    let (_guard, root) = open(&m, &c.scratch.join("mnt"))?;
    let read = |p: &str| std::fs::read_to_string(root.join(p)).ok();
    ensure(
        read("was-file/inner").as_deref() == Some("inside"),
        "a directory replaces a file",
    )?;
    ensure(
        read("was-dir").as_deref() == Some("now a file") && read("was-dir/f").is_none(),
        "a file replaces a directory and its contents",
    )?;
    ensure(
        std::fs::read_link(root.join("link")).ok() == Some(PathBuf::from("keep")),
        "a symlink keeps its target text",
    )?;
    ensure(
        read("hard").as_deref() == Some("added"),
        "a hard link has its target's contents",
    )
}

async fn applying_a_missing_blob_is_not_found(c: Ctx) -> CaseResult {
    let s = &c.s;
    let l = lease(s).await?;
    let m = ok(s.snapshots.prepare("a1", "", &l).await, "prepare")?;
    let d = Digest::of(b"no such layer");
    fails(
        s.applier.apply(TAR_GZIP, d.as_str(), 13, &m, &l).await,
        ErrorKind::NotFound,
        "apply of a missing blob",
    )
}
