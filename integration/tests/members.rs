//! A gzip layer blob made after one file of a big `COPY .` changed copies
//! the unchanged compressed members from the previous blob, and is byte
//! for byte the blob a cold build of the changed context gives in a fresh
//! namespace.

mod common;

use kiln_integration::Harness;
use std::fmt::Write as _;

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

#[tokio::test]
async fn a_rebuild_copies_unchanged_members_and_gives_the_cold_blob() {
    let (warm, cold) = ("members-warm", "members-cold");
    let h = Harness::with_busybox_private(warm).await;
    common::copy_busybox(&h, warm, cold);

    // 400 files of 20 KB: 8 MB of text, many members.
    let bodies: Vec<(String, String)> = (0..400u64)
        .map(|i| (format!("src/d{}/f{i:03}.txt", i % 4), text(i)))
        .collect();
    let mut files: Vec<(&str, &str)> = vec![("Dockerfile", DF)];
    files.extend(bodies.iter().map(|(p, b)| (p.as_str(), b.as_str())));
    let ctx = h.context("members", &files);
    let c = ctx.to_str().expect("utf8");
    h.build(warm, &["-t", "v1", c]).ok();

    // One file in the middle grows.
    let changed = ctx.join("src/d2/f202.txt");
    let mut body = text(202);
    body.push_str(&"// an edit that makes the file longer\n".repeat(40));
    std::fs::write(&changed, body).expect("change");
    let out = h
        .kiln_command(warm)
        .expect("kiln")
        .env("KILN_LOG", "kiln_engine::blobs=debug")
        .args(["build", "--progress", "plain", "-t", "v2", c])
        .output()
        .expect("kiln runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "kiln failed:\n{stderr}");
    let reused: usize = stderr
        .lines()
        .find(|l| l.contains("gzip members copied from an earlier blob"))
        .and_then(|l| l.split("reused=").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no members were copied:\n{stderr}"));
    assert!(reused >= 5, "only {reused} members copied");

    h.build(cold, &["-t", "v2", c]).ok();
    let warm_layers = common::layers(&h, warm, "docker.io/library/v2:latest").0;
    assert_eq!(
        warm_layers,
        common::layers(&h, cold, "docker.io/library/v2:latest").0
    );
    assert_ne!(
        warm_layers,
        common::layers(&h, warm, "docker.io/library/v1:latest").0
    );
    assert_eq!(
        h.run_image(
            warm,
            "docker.io/library/v2:latest",
            "members-v2",
            &["md5sum", "/app/src/d2/f202.txt", "/app/src/d1/f001.txt"],
        ),
        h.run_image(
            cold,
            "docker.io/library/v2:latest",
            "members-v2c",
            &["md5sum", "/app/src/d2/f202.txt", "/app/src/d1/f001.txt"],
        )
    );
}
