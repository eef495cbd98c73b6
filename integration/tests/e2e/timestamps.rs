//! `rewrite-timestamp=true` with `SOURCE_DATE_EPOCH`: the exporter clamps
//! every file time in the layers it builds to the epoch, embedded and
//! through kilnd, so builds at different times give the same layers; the
//! base image's layers are kept as they are.

use crate::common;

use common::{image_config, layers};
use kiln_integration::{Harness, KilnOutput};

const EPOCH: u64 = 1_700_000_000;

/// Every build stamps `/f` with a time after the epoch that differs per
/// build (`--build-arg N=...`), as a build at another time would, and
/// `/old` with one before it.
const DOCKERFILE: &str = "FROM busybox\n\
ARG N\n\
RUN touch -d @$((2000000000 + N)) /f && touch -d @1000 /old\n";

fn build(h: &Harness, ns: &str, ctx: &str, tag: &str, n: &str, rewrite: bool) -> KilnOutput {
    let arg = format!("N={n}");
    let epoch = format!("SOURCE_DATE_EPOCH={EPOCH}");
    let mut args = vec![
        "--no-cache",
        "--build-arg",
        arg.as_str(),
        "--build-arg",
        epoch.as_str(),
        "-t",
        tag,
    ];
    if rewrite {
        args.extend(["-o", "type=image,rewrite-timestamp=true"]);
    }
    args.push(ctx);
    h.build(ns, &args)
}

/// (path, mtime) of every entry of the gzip layer blob `digest`.
fn layer_times(h: &Harness, ns: &str, digest: &str) -> Vec<(String, u64)> {
    let blob = common::blob(h, ns, digest);
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(&blob[..]));
    a.entries()
        .expect("tar")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.path().expect("path").display().to_string(),
                e.header().mtime().expect("mtime"),
            )
        })
        .collect()
}

#[tokio::test]
async fn rewrite_timestamp_clamps_layer_times_to_the_epoch() {
    let ns = "ts-rewrite";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.context("ts-rewrite", &[("Dockerfile", DOCKERFILE)]);
    let c = ctx.to_str().expect("utf8");
    let busybox = layers(&h, ns, "docker.io/library/busybox:latest");

    // Without the option the two builds' layers differ (the file times).
    build(&h, ns, c, "plain:1", "1", false).ok();
    build(&h, ns, c, "plain:2", "2", false).ok();
    let plain = (
        layers(&h, ns, "docker.io/library/plain:1"),
        layers(&h, ns, "docker.io/library/plain:2"),
    );
    assert_ne!(plain.0 .0[1], plain.1 .0[1]);

    let one = build(&h, ns, c, "ts:1", "1", true).ok();
    let two = build(&h, ns, c, "ts:2", "2", true).ok();
    let ts1 = layers(&h, ns, "docker.io/library/ts:1");
    let ts2 = layers(&h, ns, "docker.io/library/ts:2");
    assert_eq!(ts1, ts2, "{}\n{}", one.stderr, two.stderr);
    // The base layer is the busybox one, untouched; the step's layer is
    // new (its diffID is the clamped tar's).
    assert_eq!(ts1.0[0], busybox.0[0]);
    assert_eq!(ts1.1[0], busybox.1[0]);
    assert_ne!(ts1.1[1], plain.0 .1[1]);
    let times = layer_times(&h, ns, &ts1.0[1]);
    assert!(times.contains(&("f".to_string(), EPOCH)), "{times:?}");
    assert!(times.contains(&("old".to_string(), 1000)), "{times:?}");
    assert!(times.iter().all(|(_, t)| *t <= EPOCH), "{times:?}");
    let cfg = image_config(&h, ns, "docker.io/library/ts:1");
    assert_eq!(cfg["rootfs"]["diff_ids"][1], ts1.1[1].as_str());
    // containerd unpacks the rewritten layers to run the image.
    let want = format!("{EPOCH}\n1000\n");
    let out = h.run_image_expecting(
        ns,
        "docker.io/library/ts:1",
        "ts-run",
        &["stat", "-c", "%Y", "/f", "/old"],
        &want,
    );
    assert_eq!(out, want);

    // Through kilnd the same layers come out.
    let k = h.start_kilnd(ns).await.expect("kilnd");
    let addr = k.addr();
    let out = h
        .kiln(
            ns,
            &[
                "--addr",
                addr.as_str(),
                "build",
                "--progress",
                "plain",
                "--no-cache",
                "--build-arg",
                "N=3",
                "--build-arg",
                "SOURCE_DATE_EPOCH=1700000000",
                "-o",
                "type=image,name=docker.io/library/ts:3,rewrite-timestamp=true",
                c,
            ],
        )
        .expect("kiln runs");
    assert!(out.success, "{}", out.stderr);
    assert_eq!(layers(&h, ns, "docker.io/library/ts:3"), ts1);
}

/// The image exporter's own `source-date-epoch` (no `SOURCE_DATE_EPOCH`
/// build argument), through kilnd: as BuildKit's exporter, the history
/// entries but the base image's and the image's `created` take the epoch;
/// without `rewrite-timestamp` the layers are the build's own.
#[tokio::test]
async fn the_exporters_epoch_dates_the_history_but_the_bases() {
    let ns = "ts-exporter";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.context("ts-exporter", &[("Dockerfile", DOCKERFILE)]);
    let c = ctx.to_str().expect("utf8");
    let base = image_config(&h, ns, "docker.io/library/busybox:latest");
    let base_history = base["history"].as_array().expect("base history").clone();
    let k = h.start_kilnd(ns).await.expect("kilnd");
    let name = "docker.io/library/ts:exporter";
    common::remote(
        &h,
        &k,
        ns,
        &[
            "--build-arg",
            "N=1",
            "-o",
            &format!("type=image,name={name},source-date-epoch={EPOCH}"),
            c,
        ],
    )
    .ok();
    let cfg = image_config(&h, ns, name);
    let at = "2023-11-14T22:13:20Z";
    assert_eq!(cfg["created"], at, "{cfg}");
    let history = cfg["history"].as_array().expect("history");
    assert!(history.len() > base_history.len(), "{cfg}");
    assert_eq!(history[..base_history.len()], base_history[..]);
    for h in &history[base_history.len()..] {
        assert_eq!(h["created"], at, "{cfg}");
    }
    // Embedded, the same option gives the same config (the step is the
    // cached one).
    let embedded = "docker.io/library/ts:exporter-embedded";
    h.build(
        ns,
        &[
            "--build-arg",
            "N=1",
            "-o",
            &format!("type=image,name={embedded},source-date-epoch={EPOCH}"),
            c,
        ],
    )
    .ok();
    assert_eq!(image_config(&h, ns, embedded), cfg);
    // The file times in the layer are the step's own.
    let built = layers(&h, ns, name);
    let times = layer_times(&h, ns, &built.0[1]);
    assert!(
        times.contains(&("f".to_string(), 2_000_000_001)),
        "{times:?}"
    );
}
