//! `oci-layout://` named contexts through kilnd: the client attaches its
//! OCI layout to the session as the content store `oci:NAME` (as buildx
//! does for `--build-context X=oci-layout://DIR` and buildctl for
//! `--oci-layout NAME=DIR`), the frontend attribute names the image
//! `oci-layout://NAME@DIGEST`, and kilnd reads the index, manifests and
//! config through the session, copies the layers containerd lacks and
//! builds on them.

use crate::common;
use kiln_integration::llbdef::{op_bytes, shell_exec};
use kiln_integration::{buildctl_like_binary, Harness, Kilnd};
use kiln_proto::control::control_client::ControlClient;
use kiln_proto::control::{Exporter, SolveRequest, StatusRequest};
use kiln_proto::llb;
use kiln_session::hijack::{client_side, serve_session, SessionServices};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use tokio_util::sync::CancellationToken;

/// An image with a file of its own and an ENV, exported by kilnd as an
/// OCI archive and unpacked into a layout directory; its index digest.
async fn layout(h: &Harness, ns: &str) -> (PathBuf, String) {
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let src = h.context(
        "oci-src",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo from the layout > /layout.txt\nENV FROM_LAYOUT=yes\n",
        )],
    );
    let tar_path = h.state_dir().join("oci-layout.tar");
    let out_arg = format!("type=oci,dest={},name=layout:v1", tar_path.display());
    let addr = k.addr();
    h.kiln(
        ns,
        &[
            "--addr",
            &addr,
            "build",
            "--progress",
            "plain",
            "-o",
            &out_arg,
            src.to_str().expect("utf8"),
        ],
    )
    .expect("kiln runs")
    .ok();
    drop(k);
    let dir = h.state_dir().join("oci-layout");
    let file = std::fs::File::open(&tar_path).expect("archive written");
    tar::Archive::new(file)
        .unpack(&dir)
        .expect("archive unpacks");
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("index.json"))
            .expect("index JSON");
    let digest = index["manifests"][0]["digest"]
        .as_str()
        .expect("a manifest digest")
        .to_string();
    (dir, digest)
}

/// `buildctl-like` against `k` with the context `ctx`, these frontend
/// options and OCI layouts, exporting `image`.
fn buildctl(k: &Kilnd, ctx: &Path, image: &str, opts: &str, layouts: Option<&str>) -> Output {
    let mut cmd = Command::new(buildctl_like_binary().expect("buildctl-like"));
    cmd.arg(k.addr())
        .arg(ctx)
        .arg(image)
        .env("BUILDCTL_LIKE_OPTS", opts);
    if let Some(l) = layouts {
        cmd.env("BUILDCTL_LIKE_OCI", l);
    }
    cmd.output().expect("buildctl-like runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oci_layout_of_the_session_is_a_named_context() {
    let ns = "ocilayout-src";
    let h = Harness::with_busybox(ns).await;
    let (dir, digest) = layout(&h, ns).await;

    // Another namespace: its content store has none of the layout's blobs.
    let other = "ocilayout-use";
    let k = h.start_kilnd(other).await.expect("kilnd starts");
    let ctx = h.context(
        "oci-use",
        &[(
            "Dockerfile",
            "FROM base\nCOPY --from=extra /layout.txt /copied.txt\n\
             CMD [\"sh\", \"-c\", \"cat /layout.txt /copied.txt; echo $FROM_LAYOUT\"]\n",
        )],
    );
    let stores = format!("lay={}", dir.display());
    let opts = format!(
        "context:base=oci-layout://lay@{digest},context:extra=oci-layout://lay:v1@{digest}"
    );
    let image = "docker.io/library/from-session-layout:1";
    let out = buildctl(&k, &ctx, image, &opts, Some(&stores));
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let want = "from the layout\nfrom the layout\nyes\n";
    let got = h.run_image_expecting(other, image, "oci-session-run", &[], want);
    assert_eq!(got, want);
    // The layout's layers are in this namespace's content store now,
    // referenced by the image.
    let manifest = h.manifest(other, image);
    let layers = manifest["layers"].as_array().expect("layers");
    let source_layers = {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(blob(&dir, &digest)).expect("index blob"))
                .expect("index");
        let m = match index["manifests"][0]["digest"].as_str() {
            // An index: its (only) manifest.
            Some(d) => d.to_string(),
            None => digest.clone(),
        };
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(blob(&dir, &m)).expect("manifest blob"))
                .expect("manifest");
        m["layers"].as_array().expect("layout layers").clone()
    };
    assert!(
        source_layers.iter().all(|l| layers.contains(l)),
        "the image is built on the layout's layers: {layers:?} vs {source_layers:?}"
    );

    // Errors, each before any step runs, naming what is wrong.
    let missing = format!("sha256:{}", "0".repeat(64));
    let cases = [
        (
            format!("context:base=oci-layout://lay@{missing}"),
            Some(stores.as_str()),
            format!("oci-layout store \"lay\": reading {missing} from the client"),
        ),
        (
            format!("context:base=oci-layout://nope@{digest}"),
            Some(stores.as_str()),
            "unknown store oci:nope".to_string(),
        ),
        (
            format!("context:base=oci-layout://lay@{digest}"),
            None,
            "the client's session serves no content store".to_string(),
        ),
    ];
    for (i, (opts, stores, want)) in cases.iter().enumerate() {
        let image = format!("docker.io/library/from-session-layout:bad{i}");
        let out = buildctl(&k, &ctx, &image, opts, *stores);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{opts}: {stderr}");
        assert!(
            stderr.contains(want.as_str()),
            "{opts}: want {want:?} in\n{stderr}"
        );
    }
}

/// kiln's own CLI against kilnd (`kiln --addr … build --build-context
/// base=oci-layout://DIR:TAG`): it resolves the tag in the layout's
/// `index.json`, names the layout by a store id in the frontend
/// attribute and serves it in its session as `oci:ID`, as buildx does;
/// kilnd, whose namespace has none of the layout's blobs, builds on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kiln_cli_serves_its_oci_layout_to_kilnd() {
    let ns = "ocilayout-cli-src";
    let h = Harness::with_busybox(ns).await;
    let (dir, _) = layout(&h, ns).await;
    let other = "ocilayout-cli-use";
    let k = h.start_kilnd(other).await.expect("kilnd starts");
    let ctx = h.context(
        "oci-cli-use",
        &[(
            "Dockerfile",
            "FROM base\nCMD [\"sh\", \"-c\", \"cat /layout.txt; echo $FROM_LAYOUT\"]\n",
        )],
    );
    let base = format!("base=oci-layout://{}:v1", dir.display());
    let addr = k.addr();
    let image = "from-cli-layout:1";
    let out = h
        .kiln(
            other,
            &[
                "--addr",
                &addr,
                "build",
                "--progress",
                "plain",
                "--build-context",
                &base,
                "-t",
                image,
                ctx.to_str().expect("utf8"),
            ],
        )
        .expect("kiln runs")
        .ok();
    assert!(
        !out.stderr.contains("serves no content store"),
        "{}",
        out.stderr
    );
    let want = "from the layout\nyes\n";
    let got = h.run_image_expecting(
        other,
        &format!("docker.io/library/{image}"),
        "oci-cli-run",
        &[],
        want,
    );
    assert_eq!(got, want);
}

fn blob(dir: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').expect("a digest");
    dir.join("blobs").join(alg).join(hex)
}

/// Raw LLB through `Control.Solve` (buildctl with `--oci-layout
/// lay=DIR` and a definition of `llb.OCILayout`): an `oci-layout://`
/// source with `oci.store` and a step on it, in a session serving the
/// layout as `oci:lay`; the image the step made has the layout's file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_llb_oci_layout_source_reads_the_session_store() {
    let ns = "ocilayout-llb-src";
    let h = Harness::with_busybox(ns).await;
    let (dir, digest) = layout(&h, ns).await;
    let other = "ocilayout-llb-use";
    // The layout's image is busybox-based (the step's shell comes from
    // it); this namespace has none of its layers.
    let k = h.start_kilnd(other).await.expect("kilnd starts");
    let ch = containerd_client::connect(&k.socket)
        .await
        .expect("connect to kilnd");
    let mut control = ControlClient::new(ch);

    let id = format!("ocilayoutllb{}", std::process::id());
    let mut services = SessionServices::new();
    services.add(
        kiln_session::content::LayoutStores::new(HashMap::from([(
            kiln_session::content::oci_store_id("lay"),
            dir.clone(),
        )]))
        .into_service(),
        kiln_session::content::LayoutStores::METHODS,
    );
    let (side, requests) = client_side();
    let req = kiln_session::hijack::session_request(&id, "", &services, requests).expect("ascii");
    let responses = control.session(req).await.expect("session").into_inner();
    let done = CancellationToken::new();
    let served = tokio::spawn(serve_session(
        side.attach(responses),
        services,
        done.clone(),
    ));

    let (src_b, src_d) = op_bytes(&llb::Op {
        op: Some(llb::op::Op::Source(llb::SourceOp {
            identifier: format!("oci-layout://lay@{digest}"),
            attrs: HashMap::from([("oci.store".to_string(), "lay".to_string())]),
        })),
        ..Default::default()
    });
    let (exec_b, exec_d) = op_bytes(&llb::Op {
        inputs: vec![llb::Input {
            digest: src_d,
            index: 0,
        }],
        op: Some(llb::op::Op::Exec(shell_exec("cat /layout.txt > /step.txt"))),
        ..Default::default()
    });
    let (term_b, _) = op_bytes(&llb::Op {
        inputs: vec![llb::Input {
            digest: exec_d,
            index: 0,
        }],
        ..Default::default()
    });
    let image = "docker.io/library/llb-session-layout:1";
    let r = control
        .solve(SolveRequest {
            r#ref: format!("ocilayoutllbbuild{}", std::process::id()),
            definition: Some(llb::Definition {
                def: vec![src_b, exec_b, term_b],
                ..Default::default()
            }),
            session: id,
            exporters: vec![Exporter {
                r#type: "image".into(),
                attrs: HashMap::from([("name".to_string(), image.to_string())]),
            }],
            ..Default::default()
        })
        .await;
    done.cancel();
    let _ = served.await;
    r.expect("the solve succeeds");
    let want = "from the layout\n";
    let got = h.run_image_expecting(other, image, "oci-llb-run", &["cat", "/step.txt"], want);
    assert_eq!(got, want);
}

/// A session on `control` with id `id`, serving these OCI layouts as
/// content stores (none: a session without a content store); cancel the
/// token to end it.
async fn open_session(
    control: &mut ControlClient<tonic::transport::Channel>,
    id: &str,
    layouts: &[(&str, &Path)],
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let mut services = SessionServices::new();
    if !layouts.is_empty() {
        services.add(
            kiln_session::content::LayoutStores::new(
                layouts
                    .iter()
                    .map(|(name, dir)| {
                        (kiln_session::content::oci_store_id(name), dir.to_path_buf())
                    })
                    .collect(),
            )
            .into_service(),
            kiln_session::content::LayoutStores::METHODS,
        );
    }
    let (side, requests) = client_side();
    let req = kiln_session::hijack::session_request(id, "", &services, requests).expect("ascii");
    let responses = control.session(req).await.expect("session").into_inner();
    let done = CancellationToken::new();
    let served = tokio::spawn({
        let done = done.clone();
        async move {
            let _ = serve_session(side.attach(responses), services, done).await;
        }
    });
    (done, served)
}

/// An `oci-layout://` source with these attributes and a step on it.
fn layout_step(reference: &str, attrs: &[(&str, &str)]) -> llb::Definition {
    let (src_b, src_d) = op_bytes(&llb::Op {
        op: Some(llb::op::Op::Source(llb::SourceOp {
            identifier: format!("oci-layout://{reference}"),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })),
        ..Default::default()
    });
    let (exec_b, exec_d) = op_bytes(&llb::Op {
        inputs: vec![llb::Input {
            digest: src_d,
            index: 0,
        }],
        op: Some(llb::op::Op::Exec(shell_exec("cat /layout.txt > /step.txt"))),
        ..Default::default()
    });
    let (term_b, _) = op_bytes(&llb::Op {
        inputs: vec![llb::Input {
            digest: exec_d,
            index: 0,
        }],
        ..Default::default()
    });
    llb::Definition {
        def: vec![src_b, exec_b, term_b],
        ..Default::default()
    }
}

/// buildctl's `--oci-layout` with `llb.OCISessionID`: the source's
/// `oci.session` names the session serving its store, not the build's
/// (which serves none here); kilnd reads the layout from it and shows the
/// copy on the source's vertex as BuildKit does (`resolve REF`, then each
/// layer by digest with its bytes). A session the source names that this
/// client does not have fails the build, naming it; without
/// `oci.session` the build's own session is asked (and serves nothing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_llb_oci_layout_source_reads_the_session_it_names() {
    let ns = "ocilayout-named-src";
    let h = Harness::with_busybox(ns).await;
    let (dir, digest) = layout(&h, ns).await;
    let other = "ocilayout-named-use";
    let k = h.start_kilnd(other).await.expect("kilnd starts");
    let ch = containerd_client::connect(&k.socket)
        .await
        .expect("connect to kilnd");
    let mut control = ControlClient::new(ch);

    let pid = std::process::id();
    let build_session = format!("ocilayoutbuild{pid}");
    let store_session = format!("ocilayoutstore{pid}");
    let (build_done, build_served) = open_session(&mut control, &build_session, &[]).await;
    let (store_done, store_served) =
        open_session(&mut control, &store_session, &[("lay", dir.as_path())]).await;

    let reference = format!("lay@{digest}");
    let solve = |control: &mut ControlClient<tonic::transport::Channel>,
                 r: String,
                 attrs: &[(&str, &str)],
                 image: Option<&str>| {
        let req = SolveRequest {
            r#ref: r,
            definition: Some(layout_step(&reference, attrs)),
            session: build_session.clone(),
            exporters: image
                .map(|i| Exporter {
                    r#type: "image".into(),
                    attrs: HashMap::from([("name".to_string(), i.to_string())]),
                })
                .into_iter()
                .collect(),
            ..Default::default()
        };
        let mut control = control.clone();
        async move { control.solve(req).await }
    };

    // Its progress, read while it runs.
    let build_ref = format!("ocilayoutnamed{pid}");
    let mut sc = control.clone();
    let status_ref = build_ref.clone();
    let statuses = tokio::spawn(async move {
        let mut s = sc
            .status(StatusRequest { r#ref: status_ref })
            .await
            .expect("status")
            .into_inner();
        let mut all = Vec::new();
        while let Ok(Some(m)) = s.message().await {
            all.extend(m.statuses);
        }
        all
    });
    let image = "docker.io/library/llb-named-session-layout:1";
    let r = solve(
        &mut control,
        build_ref,
        &[("oci.store", "lay"), ("oci.session", &store_session)],
        Some(image),
    )
    .await;
    r.expect("the solve succeeds");
    let want = "from the layout\n";
    let got = h.run_image_expecting(other, image, "oci-named-run", &["cat", "/step.txt"], want);
    assert_eq!(got, want);

    let statuses = statuses.await.expect("status task");
    let resolve = format!("resolve {reference}");
    assert!(
        statuses
            .iter()
            .any(|s| s.id == resolve && s.completed.is_some()),
        "want {resolve:?} in {statuses:?}"
    );
    let layers: Vec<(String, i64)> = {
        let m = {
            let index: serde_json::Value =
                serde_json::from_slice(&std::fs::read(blob(&dir, &digest)).expect("index blob"))
                    .expect("index");
            match index["manifests"][0]["digest"].as_str() {
                Some(d) => d.to_string(),
                None => digest.clone(),
            }
        };
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(blob(&dir, &m)).expect("manifest blob"))
                .expect("manifest");
        m["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .map(|l| {
                (
                    l["digest"].as_str().expect("digest").to_string(),
                    l["size"].as_i64().expect("size"),
                )
            })
            .collect()
    };
    assert!(!layers.is_empty());
    for (d, size) in &layers {
        assert!(
            statuses.iter().any(|s| s.id == *d
                && s.current == *size
                && s.total == *size
                && s.completed.is_some()),
            "want the copy of layer {d} ({size} bytes) in {statuses:?}"
        );
    }

    // Errors, each naming what is wrong.
    let cases = [
        (
            vec![("oci.store", "lay"), ("oci.session", "no-such-session")],
            "oci.session=\"no-such-session\": no active session \"no-such-session\"",
        ),
        (
            vec![("oci.store", "lay")],
            "the client's session serves no content store",
        ),
    ];
    for (i, (attrs, want)) in cases.iter().enumerate() {
        let e = solve(
            &mut control,
            format!("ocilayoutnamedbad{i}{pid}"),
            attrs,
            None,
        )
        .await
        .expect_err("the solve fails");
        assert!(
            e.message().contains(want),
            "{attrs:?}: want {want:?} in {:?}",
            e.message()
        );
    }

    build_done.cancel();
    store_done.cancel();
    let _ = build_served.await;
    let _ = store_served.await;
}

/// `-o type=oci,dest=DIR,tar=false` through kilnd (buildctl's and buildx's
/// directory export): kilnd copies the image's blobs into the session's
/// export store, the client puts it into `DIR/index.json` under each
/// name (an entry of the same name replaced, others kept), and the
/// directory is a layout another build takes as `oci-layout://DIR:TAG`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oci_export_with_tar_false_fills_a_layout_directory() {
    use sha2::Digest as _;
    let ns = "ocilayout-export";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let dir = h.state_dir().join("exported-layout");
    let build = |content: &str, tag: &str| {
        let ctx = h.context(
            &format!("oci-export-{tag}"),
            &[
                ("Dockerfile", "FROM busybox\nCOPY f /exported.txt\n"),
                ("f", content),
            ],
        );
        let o = format!(
            "type=oci,dest={},tar=false,name=docker.io/library/exp:{tag}",
            dir.display()
        );
        common::remote(&h, &k, ns, &["-o", &o, ctx.to_str().expect("utf8")]).ok()
    };
    let index = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("index.json"))
            .expect("JSON")
    };
    let entry = |tag: &str| -> serde_json::Value {
        index()["manifests"]
            .as_array()
            .expect("manifests")
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .cloned()
            .unwrap_or_else(|| panic!("no {tag} in {}", index()))
    };
    let out = build("first\n", "v1");
    assert!(!out.stderr.contains("sending tarball"), "{}", out.stderr);
    build("second\n", "v2");
    let v1 = entry("v1");
    assert_eq!(
        v1["annotations"]["io.containerd.image.name"],
        "docker.io/library/exp:v1"
    );
    assert_eq!(
        entry("v2")["annotations"]["io.containerd.image.name"],
        "docker.io/library/exp:v2"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("oci-layout")).expect("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#
    );
    // Every blob the manifest names is there, with its digest.
    let check = |digest: &str| -> Vec<u8> {
        let bytes = std::fs::read(blob(&dir, digest)).unwrap_or_else(|e| panic!("{digest}: {e}"));
        let hex = format!("{:x}", sha2::Sha256::digest(&bytes));
        assert_eq!(format!("sha256:{hex}"), digest);
        bytes
    };
    let manifest: serde_json::Value =
        serde_json::from_slice(&check(v1["digest"].as_str().expect("digest"))).expect("manifest");
    check(manifest["config"]["digest"].as_str().expect("config"));
    for l in manifest["layers"].as_array().expect("layers") {
        check(l["digest"].as_str().expect("layer"));
    }
    // The same name again replaces its entry.
    build("third\n", "v1");
    let tags: Vec<String> = index()["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| m["annotations"]["org.opencontainers.image.ref.name"].to_string())
        .collect();
    assert_eq!(tags, ["\"v2\"", "\"v1\""]);
    assert_ne!(entry("v1")["digest"], v1["digest"]);

    // Another namespace builds on the directory as a layout.
    let other = "ocilayout-export-use";
    let k2 = h.start_kilnd(other).await.expect("kilnd starts");
    let ctx = h.context(
        "oci-export-use",
        &[(
            "Dockerfile",
            "FROM base\nCMD [\"cat\", \"/exported.txt\"]\n",
        )],
    );
    let base = format!("base=oci-layout://{}:v1", dir.display());
    common::remote(
        &h,
        &k2,
        other,
        &[
            "--build-context",
            &base,
            "-t",
            "from-export:1",
            ctx.to_str().expect("utf8"),
        ],
    )
    .ok();
    let want = "third\n";
    let got = h.run_image_expecting(
        other,
        "docker.io/library/from-export:1",
        "oci-export-run",
        &[],
        want,
    );
    assert_eq!(got, want);

    // The docker exporter has no manifest lists, whatever `tar` says
    // (BuildKit's text), before anything is written.
    let multi = h.context(
        "oci-export-multi",
        &[("Dockerfile", "FROM scratch\nCOPY f /f\n"), ("f", "x\n")],
    );
    let dest = h.state_dir().join("docker-multi");
    let out = h
        .kiln(
            ns,
            &[
                "--addr",
                &k.addr(),
                "build",
                "--progress=plain",
                "--platform",
                "linux/amd64,linux/arm64",
                "-o",
                &format!("type=docker,dest={},tar=false", dest.display()),
                multi.to_str().expect("utf8"),
            ],
        )
        .expect("kiln runs");
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("docker exporter does not currently support exporting manifest lists"),
        "{}",
        out.stderr
    );
    assert!(!dest.join("index.json").exists());
}
