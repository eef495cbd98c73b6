//! `kiln --addr … build --cache-to type=local,dest=DIR` and
//! `--cache-from type=local,src=DIR` (issue 12): kiln's own client attaches
//! the directory to its session as the content store `local:DIR`, as
//! buildctl does: kilnd writes the cache's blobs into it and kiln tags the
//! answered `cache.manifest` in its `index.json`; for an import kiln
//! resolves the tag to the `digest` kilnd reads.

use crate::common;
use common::remote;

use kiln_integration::Harness;
use std::path::Path;

fn index(cache: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(cache.join("index.json")).expect("index.json"))
        .expect("index JSON")
}

/// The manifests of `index.json` by tag.
fn tags(cache: &Path) -> Vec<(String, String)> {
    index(cache)["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| {
            (
                m["annotations"]["org.opencontainers.image.ref.name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                m["digest"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kilns_client_sends_and_receives_a_local_cache() {
    let (a, b) = ("clientcache-a", "clientcache-b");
    let h = Harness::with_busybox(a).await;
    common::copy_busybox(&h, a, b);
    let ctx = h.context(
        "clientcache",
        &[
            ("f", "from the context\n"),
            (
                "Dockerfile",
                "FROM busybox\nCOPY f /f\nRUN cat /proc/sys/kernel/random/uuid > /stamp\n",
            ),
        ],
    );
    let c = ctx.to_str().expect("utf8");
    let cache = h.state_dir().join("client-local-cache");
    let dest = format!("type=local,dest={},mode=max", cache.display());

    let ka = h.start_kilnd(a).await.expect("kilnd a starts");
    let out = remote(&h, &ka, a, &["--cache-to", &dest, "-t", "cc:a", c]).ok();
    assert!(
        out.stderr.contains(&format!(
            "exporting cache to local cache {}",
            cache.display()
        )),
        "{}",
        out.stderr
    );
    let tagged = tags(&cache);
    assert_eq!(tagged.len(), 1, "{tagged:?}");
    assert_eq!(tagged[0].0, "latest");
    let manifest = &tagged[0].1;
    let hex = manifest.strip_prefix("sha256:").expect("sha256");
    assert!(cache.join("blobs/sha256").join(hex).exists());
    assert!(cache.join("oci-layout").exists());
    // Only committed blobs, no ingest files.
    for e in std::fs::read_dir(cache.join("blobs/sha256")).expect("blobs") {
        let name = e.expect("entry").file_name();
        assert!(!name.to_string_lossy().starts_with('.'), "{name:?}");
    }

    // Another daemon on another namespace builds from it: the RUN step is
    // not run again, its layer is the same.
    let kb = h.start_kilnd(b).await.expect("kilnd b starts");
    let src = format!("type=local,src={}", cache.display());
    let out = remote(&h, &kb, b, &["--cache-from", &src, "-t", "cc:b", c]).ok();
    assert!(
        out.stderr
            .lines()
            .any(|l| l.ends_with(" CACHED") && !l.contains("FROM")),
        "{}",
        out.stderr
    );
    let stamp_a = h.run_image(a, "docker.io/library/cc:a", "cc-a", &["cat", "/stamp"]);
    let stamp_b = h.run_image(b, "docker.io/library/cc:b", "cc-b", &["cat", "/stamp"]);
    assert_eq!(stamp_a, stamp_b);

    // A second tag adds an entry; the first stays.
    let tagged_dest = format!("type=local,dest={},tag=v2", cache.display());
    remote(&h, &kb, b, &["--cache-to", &tagged_dest, c]).ok();
    let names: Vec<String> = tags(&cache).into_iter().map(|(t, _)| t).collect();
    assert_eq!(names, ["latest", "v2"]);

    // A cache whose tag names nothing is skipped with a warning, as
    // buildctl does; the build goes on.
    let empty = h.state_dir().join("client-empty-cache");
    std::fs::create_dir_all(&empty).expect("mkdir");
    let missing = format!("type=local,src={}", empty.display());
    let out = remote(&h, &kb, b, &["--cache-from", &missing, c]).ok();
    assert!(
        out.stderr.contains(&format!(
            "WARNING: local cache import at {} skipped",
            empty.display()
        )),
        "{}",
        out.stderr
    );
}
