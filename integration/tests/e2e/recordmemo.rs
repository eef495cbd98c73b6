//! kilnd keeps the small blobs it read (cache records, base images'
//! manifests and configs) in memory by digest. What names them is read
//! from containerd on every build, so a record another process removed is
//! never served from memory.

use crate::common;
use common::remote;

use kiln_integration::{step_printed, Harness, Kilnd};

const DF: &str = "FROM busybox\nRUN echo memo-step-ran\n";

async fn setup(ns: &str) -> (Harness, Kilnd, String) {
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ctx = h.context(ns, &[("Dockerfile", DF)]);
    let c = ctx.to_str().expect("utf8").to_string();
    (h, k, c)
}

/// Builds `ctx` through kilnd; whether its `RUN` ran (else it was a hit).
fn ran(h: &Harness, k: &Kilnd, ns: &str, ctx: &str) -> bool {
    let out = remote(h, k, ns, &[ctx]);
    assert!(out.success, "{}", out.stderr);
    step_printed(&out.stderr, "memo-step-ran")
}

#[tokio::test]
async fn a_record_pruned_by_another_process_is_not_served_from_kilnds_memory() {
    let ns = "memo-pruned";
    let (h, k, ctx) = setup(ns).await;
    assert!(ran(&h, &k, ns, &ctx));
    // kilnd has read the record now.
    assert!(!ran(&h, &k, ns, &ctx));
    let out = h.kiln(ns, &["prune", "--all"]).expect("kiln prune");
    assert!(out.success, "{}", out.stderr);
    assert!(ran(&h, &k, ns, &ctx), "the pruned record was a hit");
    assert!(!ran(&h, &k, ns, &ctx));
}

#[tokio::test]
async fn a_record_whose_blob_was_removed_behind_kilnds_back_misses() {
    let ns = "memo-blob";
    let (h, k, ctx) = setup(ns).await;
    assert!(ran(&h, &k, ns, &ctx));
    assert!(!ran(&h, &k, ns, &ctx));
    // The record blobs are the blobs with a usage count.
    let listing = h.ctr(ns, &["content", "ls"]).expect("ctr content ls");
    let records: Vec<&str> = listing
        .lines()
        .filter(|l| l.contains("dev.kiln/cache.usagecount"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(!records.is_empty(), "{listing}");
    for d in &records {
        h.ctr(ns, &["content", "rm", d]).expect("ctr content rm");
    }
    // The lease still names the blob; kilnd read its bytes before, but
    // containerd has it no more: a miss, twice (the young broken record
    // stays, as one another process may still be writing).
    assert!(ran(&h, &k, ns, &ctx), "a record without its blob was a hit");
    assert!(ran(&h, &k, ns, &ctx), "a record without its blob was a hit");
}
