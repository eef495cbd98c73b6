//! What a `docker buildx` user meets against kilnd (issue 12), asked as
//! buildx asks it, without buildx: `buildx du --filter` and `buildx prune
//! --filter` send BuildKit's cache filters (containerd's syntax: `id~=`,
//! `description~=`, `type==`, flags such as `inuse`), and a build's
//! check warnings carry BuildKit's short text (`Rule: message (line N)`),
//! which buildx prints and writes to `--metadata-file` as they are.

use base64::Engine as _;
use kiln_integration::{Harness, KilnOutput, Kilnd};
use kiln_proto::control::control_client::ControlClient;
use kiln_proto::control::{DiskUsageRequest, PruneRequest, UsageRecord};
use tonic::transport::Channel;

fn remote(h: &Harness, k: &Kilnd, ns: &str, args: &[&str]) -> KilnOutput {
    let addr = k.addr();
    let mut all = vec!["--addr", addr.as_str(), "build"];
    all.extend_from_slice(args);
    h.kiln(ns, &all).expect("kiln runs")
}

async fn control(k: &Kilnd) -> ControlClient<Channel> {
    let ch = containerd_client::connect(&k.socket)
        .await
        .expect("connect to kilnd");
    ControlClient::new(ch)
}

/// `DiskUsage` with these filters: the records' descriptions, or the error.
async fn du(
    c: &mut ControlClient<Channel>,
    filter: &[&str],
) -> Result<Vec<UsageRecord>, tonic::Status> {
    du_aged(c, filter, 0).await
}

/// [`du`] with BuildKit's `ageLimit` (nanoseconds).
async fn du_aged(
    c: &mut ControlClient<Channel>,
    filter: &[&str],
    age_limit: i64,
) -> Result<Vec<UsageRecord>, tonic::Status> {
    Ok(c.disk_usage(DiskUsageRequest {
        filter: filter.iter().map(|f| f.to_string()).collect(),
        age_limit,
    })
    .await?
    .into_inner()
    .record)
}

/// `Prune` as `buildx prune -f --filter ...` sends it (one filter, the
/// terms joined by commas): what it removed, or the error.
async fn prune(
    c: &mut ControlClient<Channel>,
    filter: &str,
) -> Result<Vec<UsageRecord>, tonic::Status> {
    let mut s = c
        .prune(PruneRequest {
            filter: vec![filter.to_string()],
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(r) = s.message().await? {
        out.push(r);
    }
    Ok(out)
}

fn descriptions(records: &[UsageRecord]) -> Vec<String> {
    let mut d: Vec<String> = records.iter().map(|r| r.description.clone()).collect();
    d.sort();
    d
}

#[tokio::test]
async fn buildx_cache_filters_select_records_and_unknown_keys_are_refused() {
    let ns = "buildxuser-filters";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let df = "FROM busybox\nRUN echo one > /one\nRUN echo two > /two\n\
              RUN --mount=type=cache,target=/c echo cached > /c/x\n";
    let ctx = h.context("buildxuser-filters", &[("Dockerfile", df)]);
    remote(
        &h,
        &k,
        ns,
        &["-t", "filters:1", ctx.to_str().expect("utf8")],
    )
    .ok();
    let mut c = control(&k).await;

    let all = du(&mut c, &[]).await.expect("du");
    assert!(all.len() >= 4, "{all:?}");
    // `ageLimit`: records used within the last hour (all of this build's
    // that were used) are left out; records never used stay.
    let hour = 3_600 * 1_000_000_000_i64;
    let aged = du_aged(&mut c, &[], hour).await.expect("du");
    let never_used: Vec<&UsageRecord> = all.iter().filter(|r| r.last_used_at.is_none()).collect();
    assert!(never_used.len() < all.len(), "no record was used: {all:?}");
    assert_eq!(
        aged.iter().map(|r| &r.id).collect::<Vec<_>>(),
        never_used.iter().map(|r| &r.id).collect::<Vec<_>>()
    );
    // The image filters:1 has the steps' layers: their records are shared
    // with it (BuildKit's `Shared`, buildx's `*` and `Shared:` total); the
    // cache mount's is not.
    let shared = du(&mut c, &["shared"]).await.expect("du");
    assert_eq!(
        descriptions(&shared),
        [
            "[stage-0 2/4] RUN echo one > /one",
            "[stage-0 3/4] RUN echo two > /two",
            "[stage-0 4/4] RUN --mount=type=cache,target=/c echo cached > /c/x",
        ]
    );
    let private = du(&mut c, &["private"]).await.expect("du");
    assert_eq!(private.len(), all.len() - 3, "{private:?}");
    assert!(private.iter().all(|r| !r.shared));
    // `buildx du --filter description~=…`, a regular expression.
    let runs = du(&mut c, &["description~=RUN echo (one|two)"])
        .await
        .expect("du");
    assert_eq!(
        descriptions(&runs),
        [
            "[stage-0 2/4] RUN echo one > /one",
            "[stage-0 3/4] RUN echo two > /two"
        ]
    );
    // Terms of one filter all hold; filters select alone.
    let mounts = du(&mut c, &["type==exec.cachemount,mutable"])
        .await
        .expect("du");
    assert_eq!(mounts.len(), 1, "{mounts:?}");
    assert!(mounts[0].mutable, "{mounts:?}");
    assert!(du(&mut c, &["type==exec.cachemount,immutable"])
        .await
        .expect("du")
        .is_empty());
    let either = du(&mut c, &["type==exec.cachemount", "description~=echo two"])
        .await
        .expect("du");
    assert_eq!(either.len(), 2, "{either:?}");
    // A record's parent is named by its id.
    let two = &runs
        .iter()
        .find(|r| r.description.contains("two"))
        .expect("two")
        .clone();
    let one = &runs
        .iter()
        .find(|r| r.description.contains("one"))
        .expect("one")
        .clone();
    assert_eq!(two.parents, std::slice::from_ref(&one.id));
    let children = du(&mut c, &[&format!("parents=={}", one.id)])
        .await
        .expect("du");
    assert!(children.iter().any(|r| r.id == two.id), "{children:?}");

    // An unknown key is refused by name, before anything is removed.
    let err = prune(&mut c, "until=24h").await.expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("\"until\""), "{}", err.message());
    let err = du(&mut c, &["size>10"]).await.expect_err("refused");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert_eq!(du(&mut c, &[]).await.expect("du").len(), all.len());

    // `buildx prune --filter id=ID` sends `id~=ID`: only that record goes
    // (the one on top, which nothing sits on).
    let top = du(&mut c, &["description~=cached"]).await.expect("du");
    let top: Vec<&UsageRecord> = top.iter().filter(|r| !r.mutable).collect();
    assert_eq!(top.len(), 1, "{top:?}");
    let removed = prune(&mut c, &format!("id~={}", top[0].id))
        .await
        .expect("prune");
    assert_eq!(
        removed.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        [top[0].id.clone()]
    );
    let left = du(&mut c, &[]).await.expect("du");
    assert_eq!(left.len(), all.len() - 1);
    assert!(left.iter().all(|r| r.id != top[0].id));
    // `buildx prune --filter type=exec.cachemount` sends `type==…`.
    let removed = prune(&mut c, "type==exec.cachemount").await.expect("prune");
    assert_eq!(removed.len(), 1, "{removed:?}");
    assert!(removed[0].mutable);
    assert_eq!(du(&mut c, &[]).await.expect("du").len(), all.len() - 2);
}

#[tokio::test]
async fn check_warnings_carry_buildkits_short_text_with_the_line() {
    let ns = "buildxuser-warnings";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let df = "FROM busybox AS base\nrun echo lower\nRUN echo upper\nRUN echo again\n";
    let ctx = h.context("buildxuser-warnings", &[("Dockerfile", df)]);
    let out = remote(
        &h,
        &k,
        ns,
        &[
            "--progress",
            "rawjson",
            "-t",
            "warnings:1",
            ctx.to_str().expect("utf8"),
        ],
    )
    .ok();
    let mut shorts = Vec::new();
    for line in out.stderr.lines().filter(|l| l.starts_with('{')) {
        let v: serde_json::Value = serde_json::from_str(line).expect("JSON");
        for w in v["warnings"].as_array().into_iter().flatten() {
            let short = base64::engine::general_purpose::STANDARD
                .decode(w["short"].as_str().expect("short"))
                .expect("base64");
            shorts.push(String::from_utf8(short).expect("utf8"));
            assert_eq!(w["range"][0]["start"]["line"], 2, "{w}");
        }
    }
    // As BuildKit's `LintFormatShort`; buildx prints it as it is.
    assert_eq!(
        shorts,
        ["ConsistentInstructionCasing: Command 'run' should match the case of the command majority (uppercase) (line 2)"]
    );
    // kiln's own summary does not repeat the line.
    assert!(
        out.stderr.contains(
            " - ConsistentInstructionCasing: Command 'run' should match the case of the command majority (uppercase) (line 2)\n"
        ),
        "{}",
        out.stderr
    );
}
