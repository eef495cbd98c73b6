//! `COPY --link` against real containerd: the linked copy is made on an
//! empty filesystem and merged onto the stage, so a change of the base
//! (an earlier RUN) neither runs the copy again nor changes its layer:
//! the same blob, by digest and diffID, sits on both bases.

use crate::common;

use kiln_integration::llbdef::op_bytes;
use kiln_integration::{step_printed, Harness, KilnOutput};
use kiln_proto::control::control_client::ControlClient;
use kiln_proto::control::{Exporter, SolveRequest};
use kiln_proto::llb;
use std::collections::HashMap;

const DF: &str =
    "FROM busybox\nARG B\nRUN echo BASE-RAN && echo $B > /base\nCOPY --link big /app/big\n";

/// `kiln build` that must succeed.
fn build(h: &Harness, ns: &str, args: &[&str]) -> KilnOutput {
    h.build(ns, args).ok()
}

/// The progress number (`#N`) of the vertex named exactly `name`.
fn vertex_number(stderr: &str, name: &str) -> String {
    stderr
        .lines()
        .find_map(|l| {
            let (n, rest) = l.split_once(' ')?;
            (n.starts_with('#') && rest == name).then(|| n.to_string())
        })
        .unwrap_or_else(|| panic!("no vertex {name:?} in\n{stderr}"))
}

#[tokio::test]
async fn a_linked_copy_survives_a_base_change_with_the_same_layer() {
    let ns = "link";
    let h = Harness::with_busybox(ns).await;
    let big = "linked content\n".repeat(1000);
    let ctx = h.context("link", &[("Dockerfile", DF), ("big", &big)]);
    let c = ctx.to_str().expect("utf8");

    let one = build(&h, ns, &["--build-arg", "B=one", "-t", "link:one", c]);
    assert!(step_printed(&one.stderr, "BASE-RAN"), "{}", one.stderr);
    let copy = "[3/3] COPY --link big /app/big";
    let n = vertex_number(&one.stderr, copy);
    assert!(
        !one.stderr.contains(&format!("{n} CACHED")),
        "the first build copies:\n{}",
        one.stderr
    );

    // Another base: the RUN runs again, the linked copy is a cache hit.
    let two = build(&h, ns, &["--build-arg", "B=two", "-t", "link:two", c]);
    assert!(step_printed(&two.stderr, "BASE-RAN"), "{}", two.stderr);
    let n = vertex_number(&two.stderr, copy);
    assert!(
        two.stderr.contains(&format!("{n} CACHED")),
        "the linked copy is not run again:\n{}",
        two.stderr
    );

    let (d1, i1) = common::layers(&h, ns, "docker.io/library/link:one");
    let (d2, i2) = common::layers(&h, ns, "docker.io/library/link:two");
    assert_eq!(d1.len(), 3, "busybox, RUN, linked COPY: {d1:?}");
    assert_eq!(d2.len(), 3, "{d2:?}");
    assert_ne!(d1[1], d2[1], "the RUN layers differ");
    assert_eq!(d1[2], d2[2], "the linked layer is the same blob");
    assert_eq!(i1[2], i2[2], "and the same diffID");

    // Each image holds its own base and the linked file.
    for (tag, base) in [("one", "one"), ("two", "two")] {
        let expected = format!("{base}\n{}\n", big.len());
        let out = h.run_image_expecting(
            ns,
            &format!("docker.io/library/link:{tag}"),
            &format!("link-{tag}"),
            &["sh", "-c", "cat /base; wc -c < /app/big"],
            &expected,
        );
        assert_eq!(out, expected);
    }
}

#[tokio::test]
async fn a_plain_copy_runs_again_on_a_new_base() {
    // Without --link the copy is made on the base: a base change runs it
    // again (the cache key depends on the base). This is the contrast the
    // linked case above is measured against.
    let ns = "link-plain";
    let h = Harness::with_busybox(ns).await;
    let df = DF.replace("COPY --link", "COPY");
    let ctx = h.context("link-plain", &[("Dockerfile", &df), ("big", "x\n")]);
    let c = ctx.to_str().expect("utf8");
    build(&h, ns, &["--build-arg", "B=one", c]);
    let two = build(&h, ns, &["--build-arg", "B=two", c]);
    let n = vertex_number(&two.stderr, "[3/3] COPY big /app/big");
    assert!(
        !two.stderr.contains(&format!("{n} CACHED")),
        "a plain copy runs again on a new base:\n{}",
        two.stderr
    );
}

/// LLB as buildctl sends it for `COPY --link`: busybox and a file op on
/// scratch, merged.
fn merge_definition() -> llb::Definition {
    let (src_b, src_d) = op_bytes(&llb::Op {
        op: Some(llb::op::Op::Source(llb::SourceOp {
            identifier: "docker-image://docker.io/library/busybox:latest".into(),
            attrs: HashMap::new(),
        })),
        ..Default::default()
    });
    let (file_b, file_d) = op_bytes(&llb::Op {
        op: Some(llb::op::Op::File(llb::FileOp {
            actions: vec![llb::FileAction {
                input: -1,
                secondary_input: -1,
                output: 0,
                action: Some(llb::file_action::Action::Mkfile(llb::FileActionMkFile {
                    path: "/m".into(),
                    mode: 0o640,
                    data: b"merged\n".to_vec(),
                    ..Default::default()
                })),
            }],
        })),
        ..Default::default()
    });
    let input = |digest: &str| llb::Input {
        digest: digest.to_string(),
        index: 0,
    };
    let (merge_b, merge_d) = op_bytes(&llb::Op {
        inputs: vec![input(&src_d), input(&file_d)],
        op: Some(llb::op::Op::Merge(llb::MergeOp {
            inputs: vec![llb::MergeInput { input: 0 }, llb::MergeInput { input: 1 }],
        })),
        ..Default::default()
    });
    let (term_b, _) = op_bytes(&llb::Op {
        inputs: vec![input(&merge_d)],
        ..Default::default()
    });
    llb::Definition {
        def: vec![src_b, file_b, merge_b, term_b],
        ..Default::default()
    }
}

#[tokio::test]
async fn kilnd_runs_an_llb_merge_op() {
    let ns = "link-llb";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ch = containerd_client::connect(&k.socket)
        .await
        .expect("connect to kilnd");
    let name = "docker.io/library/merged:1";
    ControlClient::new(ch)
        .solve(SolveRequest {
            r#ref: "linkmerge0000000000000001".into(),
            definition: Some(merge_definition()),
            exporters: vec![Exporter {
                r#type: "image".into(),
                attrs: HashMap::from([("name".to_string(), name.to_string())]),
            }],
            ..Default::default()
        })
        .await
        .expect("solve");
    let want = "merged\n640\nbase\n";
    let out = h.run_image_expecting(
        ns,
        name,
        "merged-run",
        &[
            "sh",
            "-c",
            "cat /m; stat -c '%a' /m; test -x /bin/busybox && echo base",
        ],
        want,
    );
    assert_eq!(out, want);
    let layers = h.manifest(ns, name)["layers"]
        .as_array()
        .expect("layers")
        .len();
    assert_eq!(layers, 2, "busybox's layer and the merged one");
}
