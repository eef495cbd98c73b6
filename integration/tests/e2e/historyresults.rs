//! A build record's result through kilnd (issue 12), as `docker buildx
//! history inspect` (its attachments), `history inspect attachment` and
//! `history export` read it: the descriptor of each image an exporter
//! made is in the record (`result.results` by exporter index, the first in
//! `resultDeprecated`, as BuildKit's), and kilnd's content service serves
//! what it reaches (the manifest, its config and layers) for as long as the
//! record is kept, even an archive's image that no image record names;
//! nothing else of the store, and nothing once the record is deleted.

use crate::common;
use common::remote;

use kiln_integration::{Harness, Kilnd};
use kiln_proto::content::content_client::ContentClient;
use kiln_proto::content::{InfoRequest, ReadContentRequest};
use kiln_proto::control::control_client::ControlClient;
use kiln_proto::control::{BuildHistoryRecord, Descriptor, UpdateBuildHistoryRequest};
use sha2::Digest as _;
use std::time::Duration;
use tonic::transport::Channel;

async fn channel(k: &Kilnd) -> Channel {
    containerd_client::connect(&k.socket)
        .await
        .expect("connect to kilnd")
}

/// The kept records, newest first, as `buildx history ls` reads them.
async fn records(k: &Kilnd) -> Vec<BuildHistoryRecord> {
    let mut out = common::build_records(channel(k).await).await;
    out.sort_by_key(|r| std::cmp::Reverse(r.created_at.as_ref().map(|t| (t.seconds, t.nanos))));
    out
}

/// A blob as buildx reads it from kilnd: Info, then Read of `[offset,
/// offset+size)` (size 0: to the end); `Err` with the gRPC code when
/// either fails.
async fn read(k: &Kilnd, digest: &str, offset: i64, size: i64) -> Result<Vec<u8>, tonic::Code> {
    let mut c = ContentClient::new(channel(k).await);
    c.info(InfoRequest {
        digest: digest.into(),
    })
    .await
    .map_err(|e| e.code())?;
    let mut s = c
        .read(ReadContentRequest {
            digest: digest.into(),
            offset,
            size,
        })
        .await
        .map_err(|e| e.code())?
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await.map_err(|e| e.code())? {
        assert_eq!(m.offset, offset + out.len() as i64, "chunks in order");
        out.extend_from_slice(&m.data);
    }
    Ok(out)
}

fn sha256(b: &[u8]) -> String {
    format!("sha256:{:x}", sha2::Sha256::digest(b))
}

/// The one result of `rec`, checked to be in both of BuildKit's fields.
fn result(rec: &BuildHistoryRecord) -> Descriptor {
    let r = rec
        .result
        .as_ref()
        .unwrap_or_else(|| panic!("no result in {rec:?}"));
    assert_eq!(r.results.len(), 1, "{r:?}");
    assert_eq!(r.result_deprecated.as_ref(), r.results.get(&0), "{r:?}");
    r.results[&0].clone()
}

fn lease_of(r: &BuildHistoryRecord) -> String {
    format!(
        "kiln/history/{:x}",
        sha2::Sha256::digest(r.r#ref.as_bytes())
    )
}

#[tokio::test]
async fn a_records_images_are_its_result_and_served_while_it_is_kept() {
    let ns = "historyresults";
    let h = Harness::with_busybox(ns).await;
    let mut k = h.start_kilnd(ns).await.expect("kilnd starts");
    let df = "FROM busybox\nRUN echo results > /r\n";
    let ctx = h.context("historyresults", &[("Dockerfile", df)]);
    let c = ctx.to_str().expect("utf8");

    // The image exporter: the record's result is the image's manifest.
    remote(&h, &k, ns, &["-t", "hr:1", c]).ok();
    let recs = records(&k).await;
    let image = recs[0].clone();
    let desc = result(&image);
    assert_eq!(
        desc.digest,
        image.exporter_response["containerimage.digest"]
    );
    assert_eq!(
        desc.media_type,
        "application/vnd.oci.image.manifest.v1+json"
    );
    let manifest = read(&k, &desc.digest, 0, 0).await.expect("the manifest");
    assert_eq!(
        (sha256(&manifest), manifest.len() as i64),
        (desc.digest.clone(), desc.size)
    );
    // What it reaches is served too: the config, and a layer by window.
    let m: serde_json::Value = serde_json::from_slice(&manifest).expect("JSON");
    let config = m["config"]["digest"].as_str().expect("config digest");
    assert_eq!(
        config,
        image.exporter_response["containerimage.config.digest"]
    );
    let cfg = read(&k, config, 0, 0).await.expect("the config");
    assert_eq!(sha256(&cfg), config);
    let layer = m["layers"][0]["digest"].as_str().expect("a layer");
    let whole = read(&k, layer, 0, 0).await.expect("the layer");
    assert_eq!(sha256(&whole), layer);
    let part = read(&k, layer, 3, 10).await.expect("a window of it");
    assert_eq!(part, whole[3..13]);
    // Nothing else of the store: the base image's own manifest is no
    // record's.
    let base = h
        .ctr(ns, &["images", "ls"])
        .expect("ctr")
        .lines()
        .find(|l| l.contains("busybox"))
        .and_then(|l| l.split_whitespace().find(|w| w.starts_with("sha256:")))
        .expect("busybox's digest")
        .to_string();
    assert_eq!(read(&k, &base, 0, 0).await, Err(tonic::Code::NotFound));

    // An archive's image is in no image record, yet its record keeps it
    // (another image: the same one's manifest would be the kept one's).
    let tar = h.state_dir().join("historyresults.tar");
    let out = format!("type=oci,dest={}", tar.display());
    remote(&h, &k, ns, &["-o", &out, "--label", "archive=1", c]).ok();
    let recs = records(&k).await;
    let archive = recs[0].clone();
    assert_ne!(archive.r#ref, image.r#ref);
    let adesc = result(&archive);
    assert_eq!(
        adesc.digest,
        archive.exporter_response["containerimage.digest"]
    );
    assert_ne!(adesc.digest, desc.digest);
    // The build's own lease is gone; the record's lease holds the image.
    let leases = h.ctr(ns, &["leases", "ls"]).expect("ctr");
    assert!(leases.contains(&lease_of(&archive)), "{leases}");
    assert!(leases.contains(&lease_of(&image)), "{leases}");
    let amanifest = read(&k, &adesc.digest, 0, 0)
        .await
        .expect("the archive's manifest");
    assert_eq!(sha256(&amanifest), adesc.digest);

    // Deleting the record (`buildx history rm`) releases its results.
    let mut cc = ControlClient::new(channel(&k).await);
    cc.update_build_history(UpdateBuildHistoryRequest {
        r#ref: archive.r#ref.clone(),
        delete: true,
        ..Default::default()
    })
    .await
    .expect("delete the record");
    let leases = h.ctr(ns, &["leases", "ls"]).expect("ctr");
    assert!(!leases.contains(&lease_of(&archive)), "{leases}");
    assert!(leases.contains(&lease_of(&image)), "{leases}");
    assert_eq!(
        read(&k, &adesc.digest, 0, 0).await,
        Err(tonic::Code::NotFound)
    );
    // A failed build has no result.
    let bad = h.context(
        "historyresults-bad",
        &[("Dockerfile", "FROM busybox\nRUN exit 4\n")],
    );
    assert!(!remote(&h, &k, ns, &["-t", "hr:bad", bad.to_str().expect("utf8")]).success);
    let recs = records(&k).await;
    assert!(
        recs[0].error.is_some() && recs[0].result.is_none(),
        "{:?}",
        recs[0]
    );

    // A results lease whose record went while kilnd was stopped (killed
    // between removing a record and its lease) is released when kilnd
    // starts again; a kept record's stays.
    k.terminate().expect("kilnd stops");
    let stray = format!("kiln/history/{}", "0".repeat(64));
    h.ctr(
        ns,
        &[
            "leases",
            "create",
            "--id",
            &stray,
            "dev.kiln/owner=build history results",
        ],
    )
    .expect("a stray results lease");
    let k = h.start_kilnd(ns).await.expect("kilnd starts again");
    let leases = h.ctr(ns, &["leases", "ls"]).expect("ctr");
    assert!(!leases.contains(&stray), "{leases}");
    assert!(leases.contains(&lease_of(&image)), "{leases}");
    assert!(
        records(&k).await.iter().any(|r| r.r#ref == image.r#ref),
        "the record is still kept"
    );
    // Another kilnd with its own root on the same namespace keeps its
    // hands off this one's results: its records are elsewhere.
    let mut other = h
        .start_kilnd_named(ns, "historyresults-other")
        .await
        .expect("a second kilnd starts");
    let leases = h.ctr(ns, &["leases", "ls"]).expect("ctr");
    assert!(leases.contains(&lease_of(&image)), "{leases}");
    assert_eq!(
        read(&k, &result(&image).digest, 0, 0)
            .await
            .map(|b| sha256(&b)),
        Ok(result(&image).digest.clone())
    );
    other.terminate().expect("the second kilnd stops");

    // The kept lease is no leftover; nothing else is left.
    h.wait_no_leftovers(ns, &h.kilnd_root(ns), Duration::from_secs(10))
        .await
        .expect("nothing left");
}
