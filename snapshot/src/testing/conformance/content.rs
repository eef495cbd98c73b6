//! The contract of [`crate::services::Content`].

use super::{blob, cases, ensure, fails, has_blob, labels_of, lease, ok, run, CaseResult, Ctx};
use super::{ConformanceError, Namespaces, Report};
use crate::containerd::LeaseId;
use crate::services::write_blob;
use kiln_types::Digest;
use kiln_types::ErrorKind;
use std::sync::Arc;

/// Checks the content store of `namespaces` (no root needed).
pub async fn content_conformance(
    namespaces: Arc<dyn Namespaces>,
) -> Result<Report, ConformanceError> {
    let scratch = std::env::temp_dir();
    run(
        "content",
        cases![
            a_written_blob_reads_back_whole_and_streamed,
            a_missing_blob_is_not_found,
            a_commit_with_the_wrong_digest_is_failed_precondition,
            a_second_commit_of_a_blob_succeeds_and_adds_its_labels,
            set_labels_changes_only_the_given_keys_and_empty_removes,
            writing_under_a_missing_lease_is_not_found,
            a_blob_lives_as_long_as_the_lease_it_was_written_under,
            content_is_per_namespace,
            concurrent_writers_of_one_blob_both_succeed,
            hold_points_a_second_lease_at_an_existing_blob,
        ],
        namespaces,
        &scratch,
    )
    .await
}

/// Some bytes larger than one write or read chunk (1 MiB).
fn big(seed: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(3 << 20);
    let mut i: u64 = 0;
    while out.len() < (5 << 19) + 17 {
        out.extend_from_slice(format!("{seed}:{i};").as_bytes());
        i += 1;
    }
    out
}

async fn a_written_blob_reads_back_whole_and_streamed(c: Ctx) -> CaseResult {
    let s = &c.s;
    let l = lease(s).await?;
    let data = big(&c.namespace);
    let digest = Digest::of(&data);
    let mut w = ok(s.content.writer(&l).await, "writer")?;
    ok(w.write(&data[..1000]).await, "write")?;
    ensure(
        w.digest() == Some(Digest::of(&data[..1000])),
        "the writer reports the digest of the bytes written so far",
    )?;
    ok(w.write(&data[1000..]).await, "write")?;
    ensure(
        w.digest() == Some(digest.clone()),
        "the writer reports the digest of every byte written",
    )?;
    ok(
        w.commit(&digest, labels_of(&[("dev.kiln/test", "yes")]))
            .await,
        "commit",
    )?;
    let info = ok(s.content.info(digest.as_str()).await, "info")?;
    ensure(info.digest == digest.as_str(), "info names the digest")?;
    ensure(info.size == data.len() as i64, "info has the size")?;
    ensure(
        info.labels.get("dev.kiln/test").map(String::as_str) == Some("yes"),
        "labels given at commit are set",
    )?;
    let back = ok(s.content.read(digest.as_str()).await, "read")?;
    ensure(back == data, "read returns the bytes written")?;
    let mut rx = ok(s.content.read_stream(digest.as_str()).await, "read_stream")?;
    let mut streamed = Vec::new();
    while let Some(chunk) = rx.recv().await {
        streamed.extend(ok(chunk, "stream chunk")?);
    }
    ensure(streamed == data, "read_stream returns the bytes written")
}

async fn a_missing_blob_is_not_found(c: Ctx) -> CaseResult {
    let s = &c.s;
    let d = Digest::of(format!("never written in {}", c.namespace).as_bytes());
    fails(
        s.content.info(d.as_str()).await,
        ErrorKind::NotFound,
        "info",
    )?;
    fails(
        s.content.read(d.as_str()).await,
        ErrorKind::NotFound,
        "read",
    )?;
    fails(
        s.content.read_stream(d.as_str()).await,
        ErrorKind::NotFound,
        "read_stream",
    )?;
    fails(
        s.content
            .set_labels(d.as_str(), labels_of(&[("a", "b")]))
            .await,
        ErrorKind::NotFound,
        "set_labels",
    )
}

async fn a_commit_with_the_wrong_digest_is_failed_precondition(c: Ctx) -> CaseResult {
    let s = &c.s;
    let l = lease(s).await?;
    let claimed = Digest::of(b"what the writer claims");
    let mut w = ok(s.content.writer(&l).await, "writer")?;
    ok(w.write(b"what the writer wrote").await, "write")?;
    fails(
        w.commit(&claimed, Default::default()).await,
        ErrorKind::FailedPrecondition,
        "commit with a digest the bytes do not have",
    )?;
    ensure(
        !has_blob(s, &claimed).await?,
        "no blob exists under the claimed digest",
    )?;
    ensure(
        !has_blob(s, &Digest::of(b"what the writer wrote")).await?,
        "no blob exists under the real digest",
    )
}

async fn a_second_commit_of_a_blob_succeeds_and_adds_its_labels(c: Ctx) -> CaseResult {
    let s = &c.s;
    let (l1, l2) = (lease(s).await?, lease(s).await?);
    let d = blob(s, b"twice", &[("first", "1"), ("both", "a")], &l1).await?;
    let again = blob(s, b"twice", &[("second", "2"), ("both", "b")], &l2).await?;
    ensure(d == again, "both writes name the same digest")?;
    let info = ok(s.content.info(d.as_str()).await, "info")?;
    let get = |k: &str| info.labels.get(k).map(String::as_str);
    ensure(get("first") == Some("1"), "the first commit's labels stay")?;
    ensure(
        get("second") == Some("2"),
        "the second commit's labels are added",
    )?;
    ensure(get("both") == Some("b"), "the second commit's value wins")
}

async fn set_labels_changes_only_the_given_keys_and_empty_removes(c: Ctx) -> CaseResult {
    let s = &c.s;
    let l = lease(s).await?;
    let d = blob(s, b"labelled", &[("a", "1"), ("b", "2")], &l).await?;
    ok(
        s.content
            .set_labels(d.as_str(), labels_of(&[("b", "3"), ("c", "4")]))
            .await,
        "set_labels",
    )?;
    let info = ok(s.content.info(d.as_str()).await, "info")?;
    let get = |k: &str| info.labels.get(k).cloned();
    ensure(get("a").as_deref() == Some("1"), "an untouched label stays")?;
    ensure(get("b").as_deref() == Some("3"), "a given label changes")?;
    ensure(get("c").as_deref() == Some("4"), "a new label is added")?;
    ok(
        s.content
            .set_labels(d.as_str(), labels_of(&[("a", "")]))
            .await,
        "set_labels with an empty value",
    )?;
    let info = ok(s.content.info(d.as_str()).await, "info")?;
    ensure(
        !info.labels.contains_key("a"),
        "an empty value removes the label",
    )?;
    ensure(
        info.labels.get("b").map(String::as_str) == Some("3"),
        "other labels stay",
    )
}

async fn writing_under_a_missing_lease_is_not_found(c: Ctx) -> CaseResult {
    let s = &c.s;
    let missing = LeaseId::unique("missing");
    let data = format!("unleased in {}", c.namespace);
    fails(
        write_blob(&*s.content, data.as_bytes(), Default::default(), &missing).await,
        ErrorKind::NotFound,
        "write under a lease that does not exist",
    )?;
    ensure(
        !has_blob(s, &Digest::of(data.as_bytes())).await?,
        "nothing was written",
    )
}

async fn a_blob_lives_as_long_as_the_lease_it_was_written_under(c: Ctx) -> CaseResult {
    let s = &c.s;
    let l = lease(s).await?;
    let d = blob(s, b"held", &[], &l).await?;
    ok(s.leases.gc().await, "gc")?;
    ensure(has_blob(s, &d).await?, "a leased blob survives gc")?;
    ok(s.leases.delete(&l, true).await, "delete lease")?;
    ensure(
        !has_blob(s, &d).await?,
        "the blob is gone once its lease is deleted with sync",
    )
}

async fn content_is_per_namespace(c: Ctx) -> CaseResult {
    let s = &c.s;
    let other = ok(
        c.namespaces
            .namespace(&format!("{}-other", c.namespace))
            .await,
        "other namespace",
    )?;
    let l = lease(s).await?;
    let d = blob(s, b"per namespace", &[("here", "1")], &l).await?;
    ensure(
        !has_blob(&other, &d).await?,
        "a blob of one namespace is absent from another",
    )?;
    let lo = lease(&other).await?;
    blob(&other, b"per namespace", &[("there", "1")], &lo).await?;
    let here = ok(s.content.info(d.as_str()).await, "info here")?;
    let there = ok(other.content.info(d.as_str()).await, "info there")?;
    ensure(
        here.labels.contains_key("here") && !here.labels.contains_key("there"),
        "labels are per namespace (here)",
    )?;
    ensure(
        there.labels.contains_key("there") && !there.labels.contains_key("here"),
        "labels are per namespace (there)",
    )
}

async fn concurrent_writers_of_one_blob_both_succeed(c: Ctx) -> CaseResult {
    let s = &c.s;
    let (l1, l2) = (lease(s).await?, lease(s).await?);
    let data = big(&c.namespace);
    let (a, b) = tokio::join!(
        write_blob(&*s.content, &data, labels_of(&[("one", "1")]), &l1),
        write_blob(&*s.content, &data, labels_of(&[("two", "2")]), &l2),
    );
    let (a, b) = (ok(a, "first writer")?, ok(b, "second writer")?);
    ensure(a == b, "both name the same digest")?;
    let info = ok(s.content.info(a.as_str()).await, "info")?;
    ensure(
        info.labels.contains_key("one") && info.labels.contains_key("two"),
        "both writers' labels are set",
    )?;
    ok(s.leases.delete(&l1, true).await, "release one")?;
    ensure(has_blob(s, &a).await?, "the other writer's lease holds it")
}

async fn hold_points_a_second_lease_at_an_existing_blob(c: Ctx) -> CaseResult {
    let s = &c.s;
    let first = lease(s).await?;
    let second = lease(s).await?;
    let d = blob(s, b"held twice", &[("k", "v")], &first).await?;
    ok(s.content.hold(d.as_str(), &second).await, "hold")?;
    fails(
        s.content
            .hold(Digest::of(b"never written").as_str(), &second)
            .await,
        ErrorKind::NotFound,
        "hold of a missing blob",
    )?;
    fails(
        s.content
            .hold(d.as_str(), &LeaseId::unique("missing"))
            .await,
        ErrorKind::NotFound,
        "hold under a missing lease",
    )?;
    // Writing it again with labels it has is a hold: it stays whole.
    let again = ok(
        write_blob(&*s.content, b"held twice", labels_of(&[("k", "v")]), &first).await,
        "write again",
    )?;
    ensure(again == d, "the same digest")?;
    ok(
        s.leases.delete(&first, true).await,
        "delete the first lease",
    )?;
    ensure(has_blob(s, &d).await?, "the second lease holds the blob")?;
    let read = ok(s.content.read(d.as_str()).await, "read")?;
    ensure(read == b"held twice", "the blob reads back whole")?;
    ok(
        s.leases.delete(&second, true).await,
        "delete the second lease",
    )?;
    ensure(!has_blob(s, &d).await?, "gone with its last lease")
}
