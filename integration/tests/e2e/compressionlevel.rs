//! `compression-level` of the image exporters, as BuildKit's: the blobs an
//! export makes take the level (the same level gives the same blob,
//! embedded and through kilnd; another level another blob of the same
//! layer), and a level the compression does not take fails before the
//! build.

use crate::common;
use common::remote;

use kiln_integration::Harness;

const DF: &str = "FROM busybox\nCOPY t.txt f /\n";

/// The context: a text that compresses, so levels differ.
fn context(h: &Harness, name: &str) -> std::path::PathBuf {
    let text: String = (0..40_000)
        .map(|i| format!("line {i}: {}\n", i * 7919 % 10_007))
        .collect();
    h.context(
        name,
        &[("Dockerfile", DF), ("t.txt", &text), ("f", "levelled\n")],
    )
}

/// The top layer of image `name`: (digest, size).
fn top_layer(h: &Harness, ns: &str, name: &str) -> (String, u64) {
    let m = h.manifest(ns, name);
    let layers = m["layers"].as_array().expect("layers");
    let top = layers.last().expect("a layer");
    (
        top["digest"].as_str().expect("digest").to_string(),
        top["size"].as_u64().expect("size"),
    )
}

#[tokio::test]
async fn an_exports_new_blobs_take_its_level() {
    let (fast_ns, best_ns, daemon_ns) = ("level-fast", "level-best", "level-kilnd");
    let h = Harness::with_busybox(fast_ns).await;
    for ns in [best_ns, daemon_ns] {
        h.import_busybox(ns, "docker.io/library/busybox:latest")
            .await
            .expect("busybox");
    }
    let ctx = context(&h, "level");
    let c = ctx.to_str().expect("utf8");
    let image = |level: u8| {
        format!("type=image,name=docker.io/library/lvl:{level},compression-level={level}")
    };

    h.build(fast_ns, &["-o", &image(1), c]).ok();
    h.build(best_ns, &["-o", &image(9), c]).ok();
    let k = h.start_kilnd(daemon_ns).await.expect("kilnd starts");
    remote(&h, &k, daemon_ns, &["-o", &image(1), c]).ok();

    let fast = top_layer(&h, fast_ns, "docker.io/library/lvl:1");
    let best = top_layer(&h, best_ns, "docker.io/library/lvl:9");
    let daemon = top_layer(&h, daemon_ns, "docker.io/library/lvl:1");
    assert_eq!(
        fast, daemon,
        "one level, one blob, embedded or through kilnd"
    );
    assert_ne!(fast.0, best.0);
    assert!(fast.1 > best.1, "level 1 {fast:?}, level 9 {best:?}");
    for (ns, level) in [(fast_ns, 1), (best_ns, 9)] {
        let printed = h.run_image_expecting(
            ns,
            &format!("docker.io/library/lvl:{level}"),
            &format!("lvl-{level}"),
            &["cat", "/f"],
            "levelled\n",
        );
        assert_eq!(printed, "levelled\n");
    }
}

/// A `COPY --link` layer is applied through a blob of kiln's own (the
/// merge needs one); its export still makes the layer's blob at the level
/// asked for, as BuildKit's (which has none before the export) does.
#[tokio::test]
async fn a_linked_copys_layer_takes_the_level_too() {
    let (fast_ns, best_ns) = ("level-link-fast", "level-link-best");
    let h = Harness::with_busybox(fast_ns).await;
    h.import_busybox(best_ns, "docker.io/library/busybox:latest")
        .await
        .expect("busybox");
    let text: String = (0..40_000)
        .map(|i| format!("line {i}: {}\n", i * 7919 % 10_007))
        .collect();
    let ctx = h.context(
        "level-link",
        &[
            ("Dockerfile", "FROM busybox\nCOPY --link t.txt /\n"),
            ("t.txt", &text),
        ],
    );
    let c = ctx.to_str().expect("utf8");
    let image = |level: u8| {
        format!("type=image,name=docker.io/library/lvl:{level},compression-level={level}")
    };
    h.build(fast_ns, &["-o", &image(1), c]).ok();
    h.build(best_ns, &["-o", &image(9), c]).ok();
    let fast = top_layer(&h, fast_ns, "docker.io/library/lvl:1");
    let best = top_layer(&h, best_ns, "docker.io/library/lvl:9");
    assert!(fast.1 > best.1, "level 1 {fast:?}, level 9 {best:?}");
}

#[tokio::test]
async fn a_level_the_compression_does_not_take_fails_before_the_build() {
    let ns = "level-refused";
    let h = Harness::with_busybox(ns).await;
    let ctx = context(&h, "level-refused");
    let c = ctx.to_str().expect("utf8");
    let out = h.build(
        ns,
        &[
            "-o",
            "type=image,name=docker.io/library/lvl:bad,compression-level=10",
            c,
        ],
    );
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("gzip: invalid compression level: 10 (gzip takes -1 to 9)"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("COPY"), "nothing ran: {}", out.stderr);
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let addr = k.addr();
    let out = h
        .kiln(
            ns,
            &[
                "--addr",
                &addr,
                "build",
                "-o",
                "type=image,name=docker.io/library/lvl:bad,compression=gzip,compression-level=x",
                c,
            ],
        )
        .expect("kiln runs");
    assert!(!out.success);
    assert!(
        out.stderr.contains(
            "non-integer value x specified for compression-level: strconv.ParseInt: parsing \"x\": invalid syntax"
        ),
        "{}",
        out.stderr
    );
    assert!(!h
        .ctr(ns, &["images", "ls", "-q"])
        .expect("ctr")
        .contains("lvl:bad"));
}
