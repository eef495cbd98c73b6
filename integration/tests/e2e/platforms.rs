//! Foreign-platform and multi-platform builds (issue 11, platforms): a
//! two-platform `busybox` index (the host's static busybox and Debian's
//! arm64 one, which `.ci/install` unpacks), `--platform linux/arm64`
//! picking the arm64 manifest and running its steps under QEMU user
//! emulation (binfmt_misc, registered by `.ci/install`), `FROM
//! --platform=$BUILDPLATFORM` stages running natively, and
//! `--platform linux/amd64,linux/arm64` giving an image index.

use crate::common;

use common::image_config;
use kiln_integration::llbdef::{op_bytes, shell_exec};
use kiln_integration::Harness;

/// The `uname -m` of a platform.
fn machine(arch: &str) -> &'static str {
    match arch {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        other => panic!("no machine name for {other}"),
    }
}

fn host_arch() -> String {
    kiln_engine::oci::worker_platform().architecture
}

/// The architecture of the index's other half: arm64 on an amd64 host.
fn other_arch() -> &'static str {
    if host_arch() == "arm64" {
        "amd64"
    } else {
        "arm64"
    }
}

/// Imports `busybox` as an index of the host's busybox and the other
/// architecture's (each first imported as `busybox-<arch>`), so builds
/// pick a manifest by platform.
async fn import_two_platform_busybox(h: &Harness, ns: &str) {
    let ctrd = h.client(ns).await.expect("containerd");
    let svc = kiln_engine::Services::containerd(&ctrd);
    let mut manifests = Vec::new();
    for arch in [host_arch().as_str(), other_arch()] {
        let platform = kiln_solver::Platform::new("linux", arch, "");
        let name = format!("docker.io/library/busybox-{arch}:latest");
        let digest = h.import_busybox_for(ns, &name, arch).await.expect("import");
        let bytes = svc.content.read(&digest).await.expect("manifest blob");
        let desc = kiln_engine::oci::descriptor(
            kiln_engine::oci::MEDIA_OCI_MANIFEST,
            &digest,
            bytes.len() as i64,
        )
        .expect("descriptor");
        manifests.push((platform, desc));
    }
    let lease = kiln_snapshot::containerd::LeaseId::unique("test-index");
    svc.leases
        .create(
            &lease,
            "test",
            Some(std::time::Duration::from_secs(600)),
            Default::default(),
        )
        .await
        .expect("lease");
    kiln_engine::export::export_index(
        &svc,
        &manifests,
        &["docker.io/library/busybox:latest".to_string()],
        &Default::default(),
        Default::default(),
        &lease,
    )
    .await
    .expect("index");
    svc.leases.delete(&lease, false).await.expect("lease gone");
}

/// The file the steps write: what each stage's `uname -m` said and the
/// platform arguments.
const DOCKERFILE: &str = r#"FROM --platform=$BUILDPLATFORM busybox AS native
RUN uname -m > /native
FROM busybox
ARG TARGETPLATFORM TARGETARCH BUILDPLATFORM
COPY --from=native /native /native
RUN uname -m > /arch && echo "$TARGETPLATFORM $TARGETARCH $BUILDPLATFORM" > /args
"#;

/// `cat /arch /native /args` in image `name` run as `arch`.
fn printed(h: &Harness, ns: &str, name: &str, arch: &str, id: &str) -> String {
    let platform = format!("linux/{arch}");
    h.ctr(
        ns,
        &[
            "run",
            "--rm",
            "--platform",
            &platform,
            name,
            id,
            "cat",
            "/arch",
            "/native",
            "/args",
        ],
    )
    .expect("ctr run")
}

#[tokio::test]
async fn a_foreign_build_picks_its_manifest_and_runs_under_emulation() {
    let ns = "platforms-foreign";
    let h = Harness::start().await.expect("containerd");
    import_two_platform_busybox(&h, ns).await;
    let ctx = h.context(ns, &[("Dockerfile", DOCKERFILE)]);
    let ctx = ctx.to_str().expect("utf8");
    let (host, other) = (host_arch(), other_arch());
    let host_platform = format!("linux/{host}");

    let other_platform = format!("linux/{other}");
    h.build(ns, &["--platform", &other_platform, "-t", "foreign:1", ctx])
        .ok();
    let cfg = image_config(&h, ns, "docker.io/library/foreign:1");
    assert_eq!(cfg["architecture"], other);
    assert_eq!(cfg["os"], "linux");
    assert_eq!(
        printed(&h, ns, "docker.io/library/foreign:1", other, "foreign-run"),
        format!(
            "{}\n{}\nlinux/{other} {other} {host_platform}\n",
            machine(other),
            machine(&host)
        )
    );

    // The same Dockerfile for the host: the native stage is the same
    // step (from the cache), the final RUN is not the arm64 one's.
    let out = h
        .build(ns, &["--platform", &host_platform, "-t", "native:1", ctx])
        .ok();
    assert!(
        out.stderr.contains("CACHED"),
        "the $BUILDPLATFORM stage is shared:\n{}",
        out.stderr
    );
    let cfg = image_config(&h, ns, "docker.io/library/native:1");
    assert_eq!(cfg["architecture"], host.as_str());
    assert_eq!(
        printed(&h, ns, "docker.io/library/native:1", &host, "native-run"),
        format!(
            "{}\n{}\n{host_platform} {host} {host_platform}\n",
            machine(&host),
            machine(&host)
        )
    );
    assert!(h.leftovers(ns).expect("leftovers").is_empty());
}

/// Without `--platform`, a stage on an image of another platform the
/// worker emulates is built for that platform (BuildKit's
/// autoDetectPlatform): its RUN runs under emulation, the image is for
/// it, and no InvalidBaseImagePlatform warning is given.
#[tokio::test]
async fn without_a_platform_an_images_own_platform_is_built_when_emulated() {
    let ns = "platforms-auto";
    let h = Harness::start().await.expect("containerd");
    import_two_platform_busybox(&h, ns).await;
    let other = other_arch();
    let df = format!("FROM busybox-{other}\nRUN uname -m > /m\n");
    let ctx = h.context(ns, &[("Dockerfile", df.as_str())]);
    let out = h
        .build(ns, &["-t", "auto:1", ctx.to_str().expect("utf8")])
        .ok();
    assert!(
        !out.stderr.contains("InvalidBaseImagePlatform"),
        "{}",
        out.stderr
    );
    let cfg = image_config(&h, ns, "docker.io/library/auto:1");
    assert_eq!(cfg["architecture"], other);
    let platform = format!("linux/{other}");
    let m = h
        .ctr(
            ns,
            &[
                "run",
                "--rm",
                "--platform",
                &platform,
                "docker.io/library/auto:1",
                "auto-run",
                "cat",
                "/m",
            ],
        )
        .expect("ctr run");
    assert_eq!(m, format!("{}\n", machine(other)));
}

#[tokio::test]
async fn a_multi_platform_build_is_an_index_of_both() {
    let ns = "platforms-multi";
    let h = Harness::start().await.expect("containerd");
    import_two_platform_busybox(&h, ns).await;
    let ctx = h.context(ns, &[("Dockerfile", DOCKERFILE)]);
    let ctx = ctx.to_str().expect("utf8");
    let (host, other) = (host_arch(), other_arch());
    let list = format!("linux/{host},linux/{other}");
    let out = h
        .build(ns, &["--platform", &list, "-t", "multi:1", ctx])
        .ok();
    // One lookup per image and platform, named with its platform as
    // BuildKit names them in a multi-platform build: the host's serves
    // the `$BUILDPLATFORM` stage of both platforms and the host's image.
    let mut lookups: Vec<&str> = out
        .stderr
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(_, rest)| rest))
        .filter(|l| l.contains("load metadata for"))
        .collect();
    lookups.sort_unstable();
    let mut expected = vec![
        format!("[linux/{host} internal] load metadata for docker.io/library/busybox:latest"),
        format!("[linux/{other} internal] load metadata for docker.io/library/busybox:latest"),
    ];
    expected.sort_unstable();
    assert_eq!(lookups, expected, "{}", out.stderr);
    // Steps are named with their stage's platform; the `$BUILDPLATFORM`
    // stage's step is one vertex for both platforms, as in BuildKit.
    // A vertex interrupted by another (`#N ...`) is named again when it
    // resumes, as BuildKit's plain printer does, so vertexes are counted
    // by their `#N`, not by lines.
    let named = |step: &str| {
        out.stderr
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, rest)| *rest == step)
            .map(|(n, _)| n)
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    assert_eq!(
        named(&format!("[linux/{host} native 2/2] RUN uname -m > /native")),
        1,
        "{}",
        out.stderr
    );
    for arch in [host.as_str(), other] {
        let copy = format!("[linux/{arch} stage-1 2/3] COPY --from=native /native /native");
        assert_eq!(named(&copy), 1, "{copy}:\n{}", out.stderr);
    }
    // The export lists each platform's manifest and config, then the
    // index, as BuildKit's exporter does.
    let index_digest = h.image_digest(ns, "docker.io/library/multi:1");
    let exported: Vec<&str> = out
        .stderr
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(_, rest)| rest))
        .filter(|l| l.starts_with("exporting "))
        .collect();
    let kinds: Vec<String> = exported
        .iter()
        .map(|l| l.split(" sha256:").next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(
        kinds[kinds.len() - 5..],
        [
            "exporting manifest",
            "exporting config",
            "exporting manifest",
            "exporting config",
            "exporting manifest list"
        ],
        "{}",
        out.stderr
    );
    assert!(
        exported
            .iter()
            .any(|l| *l == format!("exporting manifest list {index_digest} done")),
        "{}",
        out.stderr
    );

    let index = h.manifest(ns, "docker.io/library/multi:1");
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let manifests = index["manifests"].as_array().expect("manifests");
    let archs: Vec<&str> = manifests
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().expect("arch"))
        .collect();
    assert_eq!(archs, [host.as_str(), other]);
    // Each manifest's config says its platform, and each image runs.
    for m in manifests {
        let digest = m["digest"].as_str().expect("digest");
        let manifest: serde_json::Value =
            serde_json::from_str(&h.ctr(ns, &["content", "get", digest]).expect("manifest"))
                .expect("json");
        let cfg: serde_json::Value = serde_json::from_str(
            &h.ctr(
                ns,
                &[
                    "content",
                    "get",
                    manifest["config"]["digest"].as_str().expect("config"),
                ],
            )
            .expect("config"),
        )
        .expect("json");
        assert_eq!(cfg["architecture"], m["platform"]["architecture"]);
    }
    for arch in [host.as_str(), other] {
        assert_eq!(
            printed(
                &h,
                ns,
                "docker.io/library/multi:1",
                arch,
                &format!("multi-{arch}")
            ),
            format!(
                "{}\n{}\nlinux/{arch} {arch} linux/{host}\n",
                machine(arch),
                machine(&host)
            )
        );
    }
    assert!(h.leftovers(ns).expect("leftovers").is_empty());

    // One platform with multi-platform=true (BUILDKIT_MULTI_PLATFORM) is
    // an index of one.
    h.build(
        ns,
        &[
            "--build-arg",
            "BUILDKIT_MULTI_PLATFORM=1",
            "-t",
            "one:1",
            ctx,
        ],
    )
    .ok();
    let one = h.manifest(ns, "docker.io/library/one:1");
    assert_eq!(one["mediaType"], "application/vnd.oci.image.index.v1+json");
    assert_eq!(one["manifests"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn a_step_nothing_can_run_fails_before_it_runs_naming_qemu() {
    let ns = "platforms-missing";
    let h = Harness::start().await.expect("containerd");
    // An architecture this machine has no handler for (Debian's
    // qemu-user-static registers many once systemd runs; sparc64 it has
    // none for in kiln's table, so some candidate is always missing).
    let arch = ["s390x", "ppc64", "mips64", "riscv64", "sparc64"]
        .into_iter()
        .find(|a| {
            kiln_shim::emulation::support(&host_arch(), "linux", a)
                == kiln_shim::emulation::Support::Missing
        })
        .expect("sparc64 is never runnable");
    let ctx = h.context(
        ns,
        &[(
            "Dockerfile",
            &format!("FROM --platform=linux/{arch} scratch\nRUN echo ran\n"),
        )],
    );
    let out = h.build(ns, &["-t", "never:1", ctx.to_str().expect("utf8")]);
    assert!(!out.success, "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "Dockerfile:2: cannot run a step for platform linux/{arch} on this linux/{} machine: \
             no binfmt_misc handler for it is registered (QEMU user emulation: install \
             Debian's qemu-user-static package",
            host_arch()
        )),
        "{}",
        out.stderr
    );
    assert!(
        !kiln_integration::step_printed(&out.stderr, "ran"),
        "{}",
        out.stderr
    );
}

/// One op of a definition, encoded, with its digest.
/// buildctl-shaped LLB: busybox and `uname -m > /m` on it, both ops for
/// `linux/<arch>` (as buildctl's `llb.Image(..., llb.Platform(p))` sets
/// `Op.platform`).
fn uname_for(arch: &str) -> kiln_proto::llb::Definition {
    use kiln_proto::llb;
    let platform = Some(llb::Platform {
        os: "linux".into(),
        architecture: arch.into(),
        ..Default::default()
    });
    let (src_b, src_d) = op_bytes(&llb::Op {
        op: Some(llb::op::Op::Source(llb::SourceOp {
            identifier: "docker-image://docker.io/library/busybox:latest".into(),
            attrs: Default::default(),
        })),
        platform: platform.clone(),
        ..Default::default()
    });
    let (exec_b, exec_d) = op_bytes(&llb::Op {
        inputs: vec![llb::Input {
            digest: src_d,
            index: 0,
        }],
        op: Some(llb::op::Op::Exec(shell_exec("uname -m > /m"))),
        platform,
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

#[tokio::test]
async fn kilnd_builds_foreign_llb_and_multi_platform_dockerfiles() {
    use kiln_proto::control::control_client::ControlClient;
    use kiln_proto::control::{Exporter, ListWorkersRequest, SolveRequest};
    let ns = "platforms-kilnd";
    let h = Harness::start().await.expect("containerd");
    import_two_platform_busybox(&h, ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let (host, other) = (host_arch(), other_arch());
    let ch = containerd_client::connect(&k.socket)
        .await
        .expect("connect to kilnd");
    let mut c = ControlClient::new(ch);

    // The worker offers the platform emulation runs here.
    let workers = c
        .list_workers(ListWorkersRequest::default())
        .await
        .expect("workers")
        .into_inner();
    let offered: Vec<String> = workers.record[0]
        .platforms
        .iter()
        .map(|p| format!("{}/{}", p.os, p.architecture))
        .collect();
    assert_eq!(offered[0], format!("linux/{host}"));
    assert!(offered.contains(&format!("linux/{other}")), "{offered:?}");

    // LLB for the other platform picks its manifest and runs emulated.
    c.solve(SolveRequest {
        r#ref: "platformsllb000000000000001".into(),
        definition: Some(uname_for(other)),
        exporters: vec![Exporter {
            r#type: "image".into(),
            attrs: [(
                "name".to_string(),
                "docker.io/library/llb-other:1".to_string(),
            )]
            .into(),
        }],
        ..Default::default()
    })
    .await
    .expect("solve");
    let platform = format!("linux/{other}");
    let printed = h
        .ctr(
            ns,
            &[
                "run",
                "--rm",
                "--platform",
                &platform,
                "docker.io/library/llb-other:1",
                "llb-other-run",
                "cat",
                "/m",
            ],
        )
        .expect("ctr run");
    assert_eq!(printed, format!("{}\n", machine(other)));

    // The Dockerfile frontend through kilnd with two platforms (the
    // `platform` attribute buildctl --opt and buildx send): an index.
    let ctx = h.context(ns, &[("Dockerfile", DOCKERFILE)]);
    let list = format!("linux/{host},linux/{other}");
    let addr = k.addr();
    h.kiln(
        ns,
        &[
            "--addr",
            &addr,
            "build",
            "--progress",
            "plain",
            "--platform",
            &list,
            "-t",
            "remote-multi:1",
            ctx.to_str().expect("utf8"),
        ],
    )
    .expect("kiln runs")
    .ok();
    let index = h.manifest(ns, "docker.io/library/remote-multi:1");
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let archs: Vec<&str> = index["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().expect("arch"))
        .collect();
    assert_eq!(archs, [host.as_str(), other]);
    assert_eq!(
        printed_via(&h, ns, "docker.io/library/remote-multi:1", other),
        format!(
            "{}\n{}\nlinux/{other} {other} linux/{host}\n",
            machine(other),
            machine(&host)
        )
    );
}

fn printed_via(h: &Harness, ns: &str, name: &str, arch: &str) -> String {
    printed(h, ns, name, arch, &format!("via-{arch}"))
}
