//! A gzip or zstd layer blob made after one file of a big `COPY .` changed
//! copies the unchanged compressed members from the previous blob, is byte
//! for byte the blob a cold build of the changed context gives in a fresh
//! namespace, and the `gzip` / `zstd` tools decompress it to its diffID.

use crate::common;

use kiln_integration::Harness;
use std::fmt::Write as _;
use std::process::Command;

const DF: &str = "FROM busybox\nCOPY . /app\n";

/// About 20 KB of text, different for every `n`.
fn text(n: u64) -> String {
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut s = String::with_capacity(21 * 1024);
    while s.len() < 20 * 1024 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let _ = writeln!(s, "let v{} = {};", x % 1000, x >> 40);
    }
    s
}

/// The SHA-256 of blob `digest` of namespace `ns` as `tool -dc` (the
/// command line tool, as another reader than kiln) decompresses it.
fn decompressed_sha256(h: &Harness, ns: &str, digest: &str, tool: &str) -> String {
    let script = format!(
        "set -o pipefail; ctr --address \"$1\" --namespace \"$2\" content get \"$3\" | {tool} -dc | sha256sum"
    );
    let out = Command::new("bash")
        .args(["-c", &script, "sh"])
        .arg(h.socket())
        .args([ns, digest])
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "{tool} -d of {digest} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sum = String::from_utf8_lossy(&out.stdout);
    format!("sha256:{}", sum.split_whitespace().next().expect("a sum"))
}

/// The `kiln build` arguments exporting `ctx` as `out` (an `-o` value).
fn args<'a>(out: &'a str, ctx: &'a str) -> [&'a str; 3] {
    ["-o", out, ctx]
}

async fn rebuild_copies_unchanged_members(compression: &str) {
    let (warm, cold) = (
        format!("members-{compression}-warm"),
        format!("members-{compression}-cold"),
    );
    let (warm, cold) = (warm.as_str(), cold.as_str());
    let h = Harness::with_busybox_private(warm).await;
    common::copy_busybox(&h, warm, cold);

    // Files of 20 KB of text, many members: 400 (8 MB) for gzip, 1,600
    // (32 MB) for zstd, whose members are 4 to 8 MiB.
    let n = if compression == "zstd" { 1600 } else { 400 };
    let bodies: Vec<(String, String)> = (0..n)
        .map(|i| (format!("src/d{}/f{i:04}.txt", i % 4), text(i)))
        .collect();
    let mut files: Vec<(&str, &str)> = vec![("Dockerfile", DF)];
    files.extend(bodies.iter().map(|(p, b)| (p.as_str(), b.as_str())));
    let ctx = h.context(&format!("members-{compression}"), &files);
    let c = ctx.to_str().expect("utf8");
    let v1 = format!("type=image,name=v1,compression={compression}");
    let v2 = format!("type=image,name=v2,compression={compression}");
    h.build(warm, &args(&v1, c)).ok();

    // One file in the middle grows.
    let changed = ctx.join(format!("src/d2/f{:04}.txt", n / 2 + 2));
    let mut body = text(n / 2 + 2);
    body.push_str(&"// an edit that makes the file longer\n".repeat(40));
    std::fs::write(&changed, body).expect("change");
    let out = h
        .kiln_command(warm)
        .expect("kiln")
        .env("KILN_LOG", "kiln_engine::blobs=debug")
        .args(["build", "--progress", "plain"])
        .args(args(&v2, c))
        .output()
        .expect("kiln runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kiln failed:\n{stderr}");
    let reused: usize = stderr
        .lines()
        .find(|l| l.contains("compressed members copied from an earlier blob"))
        .and_then(|l| l.split("reused=").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no members were copied:\n{stderr}"));
    assert!(reused >= 3, "only {reused} members copied");

    h.build(cold, &args(&v2, c)).ok();
    let image = "docker.io/library/v2:latest";
    let (warm_layers, diff_ids) = common::layers(&h, warm, image);
    assert_eq!(warm_layers, common::layers(&h, cold, image).0);
    assert_ne!(
        warm_layers,
        common::layers(&h, warm, "docker.io/library/v1:latest").0
    );
    let manifest = h.manifest(warm, image);
    let media = manifest["layers"][warm_layers.len() - 1]["mediaType"]
        .as_str()
        .expect("media type")
        .to_string();
    assert!(media.ends_with(&format!("+{compression}")), "{media}");
    // The layer that reused members reads back, with another reader, as
    // the tar its diffID names.
    let top = warm_layers.last().expect("a layer");
    assert_eq!(
        decompressed_sha256(&h, warm, top, compression),
        *diff_ids.last().expect("a diffID")
    );
    let edited = format!("/app/src/d2/f{:04}.txt", n / 2 + 2);
    let md5 = ["md5sum", edited.as_str(), "/app/src/d1/f0001.txt"];
    assert_eq!(
        h.run_image(warm, image, &format!("members-{compression}-v2"), &md5),
        h.run_image(cold, image, &format!("members-{compression}-v2c"), &md5)
    );
}

#[tokio::test]
async fn a_gzip_rebuild_copies_unchanged_members_and_gives_the_cold_blob() {
    rebuild_copies_unchanged_members("gzip").await;
}

#[tokio::test]
async fn a_zstd_rebuild_copies_unchanged_frames_and_gives_the_cold_blob() {
    rebuild_copies_unchanged_members("zstd").await;
}
