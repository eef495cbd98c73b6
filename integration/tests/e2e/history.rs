//! Build records through kilnd (issue 12): what `docker buildx history`
//! and `buildctl debug histories` read with `ListenBuildHistory`,
//! `UpdateBuildHistory` and `Status` of a finished ref, kept across a
//! restart of kilnd.

use crate::common;
use common::remote;

use kiln_integration::{Harness, Kilnd};
use kiln_proto::control::control_client::ControlClient;
use kiln_proto::control::{
    BuildHistoryEvent, BuildHistoryEventType, BuildHistoryRecord, BuildHistoryRequest,
    StatusRequest, UpdateBuildHistoryRequest,
};
use tonic::transport::Channel;

async fn control(k: &Kilnd) -> ControlClient<Channel> {
    let ch = containerd_client::connect(&k.socket)
        .await
        .expect("connect to kilnd");
    ControlClient::new(ch)
}

/// The events `buildx history ls` reads (EarlyExit) with these filters.
async fn history(c: &mut ControlClient<Channel>, filter: &[&str]) -> Vec<BuildHistoryEvent> {
    let resp = c
        .listen_build_history(BuildHistoryRequest {
            early_exit: true,
            filter: filter.iter().map(|f| f.to_string()).collect(),
            ..Default::default()
        })
        .await
        .expect("ListenBuildHistory");
    assert!(
        resp.metadata().get("buildkit-current-timestamp").is_some(),
        "{:?}",
        resp.metadata()
    );
    let mut s = resp.into_inner();
    let mut out = Vec::new();
    while let Some(e) = s.message().await.expect("event") {
        out.push(e);
    }
    out
}

fn record<'a>(events: &'a [BuildHistoryEvent], target: &str) -> &'a BuildHistoryRecord {
    events
        .iter()
        .filter_map(|e| e.record.as_ref())
        .find(|r| r.frontend_attrs.get("target").map(String::as_str) == Some(target))
        .unwrap_or_else(|| panic!("no record of target {target}: {events:?}"))
}

/// The vertex names and log text `buildx history logs` prints for `r`.
async fn logs(c: &mut ControlClient<Channel>, r: &str) -> (Vec<String>, String) {
    let mut s = c
        .status(StatusRequest { r#ref: r.into() })
        .await
        .expect("Status")
        .into_inner();
    let (mut names, mut text) = (Vec::new(), String::new());
    while let Some(m) = s.message().await.expect("status") {
        for v in m.vertexes {
            if !names.contains(&v.name) {
                names.push(v.name);
            }
        }
        for l in m.logs {
            text.push_str(&String::from_utf8_lossy(&l.msg));
        }
    }
    (names, text)
}

/// Whether the replay of `r` sends the log `text` of the step `name`
/// after the step's start and before its completion, as the build did
/// (`buildx history logs` prints it under the step).
async fn logged_while_running(
    c: &mut ControlClient<Channel>,
    r: &str,
    name: &str,
    text: &str,
) -> bool {
    let mut s = c
        .status(StatusRequest { r#ref: r.into() })
        .await
        .expect("Status")
        .into_inner();
    let (mut digest, mut started, mut logged) = (None, false, false);
    while let Some(m) = s.message().await.expect("status") {
        for v in m.vertexes.iter().filter(|v| v.name == name) {
            digest = Some(v.digest.clone());
            if v.completed.is_some() {
                return started && logged;
            }
            started = true;
        }
        logged |= m.logs.iter().any(|l| {
            Some(&l.vertex) == digest.as_ref() && String::from_utf8_lossy(&l.msg).contains(text)
        });
    }
    false
}

/// A blob of kilnd's content service as buildx reads it (Info, then Read
/// from offset 0).
async fn read_blob(k: &Kilnd, digest: &str) -> Vec<u8> {
    use kiln_proto::content::content_client::ContentClient;
    use kiln_proto::content::{InfoRequest, ReadContentRequest};
    let ch = containerd_client::connect(&k.socket)
        .await
        .expect("connect to kilnd");
    let mut c = ContentClient::new(ch);
    let info = c
        .info(InfoRequest {
            digest: digest.into(),
        })
        .await
        .expect("Info")
        .into_inner()
        .info
        .expect("info");
    let mut s = c
        .read(ReadContentRequest {
            digest: digest.into(),
            offset: 0,
            size: info.size,
        })
        .await
        .expect("Read")
        .into_inner();
    let mut out = Vec::new();
    while let Some(m) = s.message().await.expect("read") {
        out.extend_from_slice(&m.data);
    }
    out
}

#[tokio::test]
async fn kilnd_keeps_build_records_as_buildkit_does() {
    let ns = "history";
    let h = Harness::with_busybox(ns).await;
    let mut k = h.start_kilnd(ns).await.expect("kilnd starts");
    let df = "FROM busybox AS ok\nRUN echo history-step-ran\n\
              FROM busybox AS bad\nRUN echo doomed && exit 3\n";
    let ctx = h.context("history", &[("Dockerfile", df)]);
    let c = ctx.to_str().expect("utf8");
    let mut cc = control(&k).await;

    // A listener that stays sees the build start and complete.
    let mut live = cc
        .listen_build_history(BuildHistoryRequest::default())
        .await
        .expect("listen")
        .into_inner();
    remote(&h, &k, ns, &["--target", "ok", "-t", "hist:1", c]).ok();
    let started = live.message().await.expect("event").expect("started");
    assert_eq!(started.r#type, BuildHistoryEventType::Started as i32);
    let rec = started.record.expect("record");
    assert!(rec.created_at.is_some() && rec.completed_at.is_none());
    let completed = live.message().await.expect("event").expect("completed");
    assert_eq!(completed.r#type, BuildHistoryEventType::Complete as i32);
    assert_eq!(completed.record.expect("record").r#ref, rec.r#ref);
    drop(live);

    remote(&h, &k, ns, &["--target", "ok", "-t", "hist:2", c]).ok();
    assert!(!remote(&h, &k, ns, &["--target", "bad", c]).success);

    let all = history(&mut cc, &[]).await;
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(all
        .iter()
        .all(|e| e.r#type == BuildHistoryEventType::Complete as i32));
    let bad = record(&all, "bad").clone();
    let err = bad.error.as_ref().expect("the failed build's error");
    assert!(err.message.contains("exit code: 3"), "{err:?}");
    // As BuildKit's: the record's error is code and message; the whole
    // error (the step, the Dockerfile lines) is the blob `externalError`
    // names, which `buildx history inspect` reads from kilnd's content
    // service.
    assert!(err.details.is_empty(), "{err:?}");
    let ext = bad.external_error.as_ref().expect("external error");
    assert_eq!(
        ext.media_type,
        "application/vnd.googeapis.google.rpc.status+proto"
    );
    let blob = read_blob(&k, &ext.digest).await;
    assert_eq!(blob.len() as i64, ext.size);
    let full = <kiln_proto::rpc::Status as prost::Message>::decode(blob.as_slice())
        .expect("a google.rpc.Status");
    assert_eq!(full.message, err.message);
    let source = full
        .details
        .iter()
        .find(|d| d.type_url == "github.com/moby/buildkit/errdefs.Source+json")
        .unwrap_or_else(|| panic!("no source detail in {full:?}"));
    // BuildKit's errdefs.Source: the Dockerfile (Go's base64 of its
    // bytes) and the failed step's line.
    let source: serde_json::Value = serde_json::from_slice(&source.value).expect("JSON");
    assert_eq!(source["info"]["filename"], "Dockerfile", "{source}");
    assert_eq!(source["ranges"][0]["start"]["line"], 4, "{source}");
    let data = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        source["info"]["data"].as_str().unwrap_or_default(),
    )
    .expect("base64");
    assert_eq!(String::from_utf8_lossy(&data), df);
    assert!(full
        .details
        .iter()
        .any(|d| d.type_url == "github.com/moby/buildkit/errdefs.Vertex+json"));
    assert!(bad.completed_at.is_some() && bad.exporter_response.is_empty());
    let oks: Vec<&BuildHistoryRecord> = all
        .iter()
        .filter_map(|e| e.record.as_ref())
        .filter(|r| r.error.is_none())
        .collect();
    assert_eq!(oks.len(), 2);
    for r in &oks {
        assert_eq!(r.frontend, "dockerfile.v0");
        assert_eq!(r.exporters.len(), 1, "{r:?}");
        assert_eq!(r.exporters[0].r#type, "image");
        assert!(
            r.exporter_response
                .get("containerimage.digest")
                .is_some_and(|d| d.starts_with("sha256:")),
            "{r:?}"
        );
        assert!(r.num_total_steps >= 3 && r.num_completed_steps == r.num_total_steps);
        let logs = r.logs.as_ref().expect("logs descriptor");
        assert_eq!(logs.media_type, "application/vnd.buildkit.status.v0");
        assert!(logs.size > 0);
    }
    // The rebuild ran nothing: its RUN step is cached; its base is DONE,
    // not cached, as nothing loaded it (buildkitd 73ed6825c counts a
    // `FROM` + `RUN` rebuild 1 cached of 5, 20%). The first build cached
    // nothing: the harness's base was not unpacked yet.
    let mut cached: Vec<i32> = oks.iter().map(|r| r.num_cached_steps).collect();
    cached.sort();
    assert_eq!(cached, [0, 1]);

    // Status of a finished build replays its progress.
    let first = oks
        .iter()
        .min_by_key(|r| r.created_at.as_ref().map(|t| (t.seconds, t.nanos)))
        .expect("first");
    let (names, text) = logs(&mut cc, &first.r#ref).await;
    assert!(
        names
            .iter()
            .any(|n| n == "[ok 2/2] RUN echo history-step-ran"),
        "{names:?}"
    );
    assert!(text.contains("history-step-ran"), "{text}");
    assert!(
        logged_while_running(
            &mut cc,
            &first.r#ref,
            "[ok 2/2] RUN echo history-step-ran",
            "history-step-ran"
        )
        .await,
        "the step's log is replayed between its start and its end"
    );

    // buildx's filters.
    let errors = history(&mut cc, &["status==error"]).await;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].record.as_ref().expect("record").r#ref, bad.r#ref);
    let unsupported = cc
        .listen_build_history(BuildHistoryRequest {
            early_exit: true,
            filter: vec!["platform==linux".into()],
            ..Default::default()
        })
        .await
        .expect_err("unsupported filter");
    assert_eq!(unsupported.code(), tonic::Code::InvalidArgument);

    // Pinning counts a generation; records survive a restart.
    cc.update_build_history(UpdateBuildHistoryRequest {
        r#ref: first.r#ref.clone(),
        pinned: true,
        ..Default::default()
    })
    .await
    .expect("pin");
    k.terminate().expect("kilnd stops");
    let k = h.start_kilnd(ns).await.expect("kilnd restarts");
    let mut cc = control(&k).await;
    let after = history(&mut cc, &[]).await;
    assert_eq!(after.len(), 3, "{after:?}");
    let pinned = after
        .iter()
        .filter_map(|e| e.record.as_ref())
        .find(|r| r.r#ref == first.r#ref)
        .expect("kept");
    assert!(pinned.pinned && pinned.generation == 1, "{pinned:?}");
    let (names_again, _) = logs(&mut cc, &first.r#ref).await;
    assert_eq!(names_again, names);

    // `buildx history rm`.
    cc.update_build_history(UpdateBuildHistoryRequest {
        r#ref: bad.r#ref.clone(),
        delete: true,
        ..Default::default()
    })
    .await
    .expect("delete");
    assert_eq!(history(&mut cc, &[]).await.len(), 2);
    let gone = cc
        .update_build_history(UpdateBuildHistoryRequest {
            r#ref: bad.r#ref.clone(),
            delete: true,
            ..Default::default()
        })
        .await
        .expect_err("deleted already");
    assert_eq!(gone.code(), tonic::Code::NotFound);
}
