//! Issue 4's acceptance through kilnd: the kiln client, raw LLB over the
//! Control API, exporters, workers, load and disconnects.

use crate::common;
use common::remote;

use kiln_integration::llbdef::{op_bytes, shell_exec};
use kiln_integration::{step_printed, Harness, Kilnd};
use kiln_proto::control::control_client::ControlClient;
use kiln_proto::control::{Exporter, ListWorkersRequest, SolveRequest, StatusRequest};
use kiln_proto::llb;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

async fn setup(ns: &str) -> (Harness, Kilnd) {
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    (h, k)
}

async fn control(k: &Kilnd) -> ControlClient<tonic::transport::Channel> {
    let ch = containerd_client::connect(&k.socket)
        .await
        .expect("connect to kilnd");
    ControlClient::new(ch)
}

const DF: &str = "FROM busybox\nWORKDIR /app\nCOPY hello.txt .\nRUN echo built-remotely > built.txt && chmod 0750 built.txt\nCMD [\"cat\", \"/app/hello.txt\", \"/app/built.txt\"]\n";

#[tokio::test]
async fn the_kiln_client_builds_through_kilnd_like_embedded_mode() {
    let ns = "remote";
    let (h, k) = setup(ns).await;
    let ctx = h.context(
        "remote",
        &[("Dockerfile", DF), ("hello.txt", "hello via kilnd\n")],
    );
    let c = ctx.to_str().expect("utf8");
    let out = remote(&h, &k, ns, &["-t", "remote:1", c]).ok();
    assert_eq!(
        out.exported_manifests(),
        [h.image_digest(ns, "docker.io/library/remote:1")]
    );
    assert!(
        out.stderr.contains("RUN echo built-remotely"),
        "{}",
        out.stderr
    );
    let want = "hello via kilnd\nbuilt-remotely\n";
    let printed = h.run_image_expecting(ns, "docker.io/library/remote:1", "remote-run", &[], want);
    assert_eq!(printed, want);
    let check = h.ctr(ns, &["images", "check"]).expect("ctr");
    let line = check
        .lines()
        .find(|l| l.starts_with("docker.io/library/remote:1"))
        .expect("listed");
    assert!(line.contains("complete") && line.contains("true"), "{line}");
    // The cache is shared with embedded builds of the same namespace.
    let again = remote(&h, &k, ns, &["-t", "remote:2", c]).ok();
    assert_eq!(
        kiln_integration::cached_steps(&again.stderr),
        3,
        "{}",
        again.stderr
    );
    let embedded = h.build(ns, &["-t", "remote:3", c]).ok();
    assert_eq!(
        kiln_integration::cached_steps(&embedded.stderr),
        3,
        "{}",
        embedded.stderr
    );

    // A failing step names the line and the exit code.
    let bad = h.context(
        "remote-bad",
        &[("Dockerfile", "FROM busybox\nRUN echo doomed && exit 7\n")],
    );
    let out = remote(&h, &k, ns, &[bad.to_str().expect("utf8")]);
    assert!(!out.success);
    assert!(step_printed(&out.stderr, "doomed"), "{}", out.stderr);
    // As from buildkitd: the snippet from the error's source details
    // names the line, the error line the exit code.
    assert!(
        out.stderr.contains("\nDockerfile:2\n") && out.stderr.contains(" 2 | >>> RUN echo doomed"),
        "{}",
        out.stderr
    );
    let last = out.stderr.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("ERROR: failed to build: failed to solve: process ")
            && last.contains("exit code: 7"),
        "{last}"
    );
    assert_eq!(h.leftovers(ns).expect("ctr"), Vec::<String>::new());
}

#[tokio::test]
async fn the_full_dockerfile_gives_the_same_image_through_kilnd() {
    let ns = "remote-full";
    let (h, k) = setup(ns).await;
    let ctx = common::full_context(&h, "remote-full");
    let mut args = vec!["-t", "full:remote"];
    args.extend_from_slice(common::FULL_ARGS);
    args.push(ctx.to_str().expect("utf8"));
    remote(&h, &k, ns, &args).ok();
    common::check_full_image(&h, ns, "docker.io/library/full:remote");
    // Multi-stage with --target through kilnd: only the needed stages run.
    let df = "FROM busybox AS unused\nRUN echo UNUSED-STAGE-RAN\n\
              FROM busybox AS builder\nRUN echo BUILDER-RAN && echo built > /artifact\n\
              FROM busybox AS final\nCOPY --from=builder /artifact /artifact\n";
    let multi = h.context("remote-multi", &[("Dockerfile", df)]);
    let out = remote(
        &h,
        &k,
        ns,
        &[
            "-t",
            "multi:remote",
            "--target",
            "final",
            multi.to_str().expect("utf8"),
        ],
    )
    .ok();
    assert!(step_printed(&out.stderr, "BUILDER-RAN"), "{}", out.stderr);
    assert!(!out.stderr.contains("UNUSED-STAGE-RAN"), "{}", out.stderr);
    let printed = h.run_image_expecting(
        ns,
        "docker.io/library/multi:remote",
        "multi-remote",
        &["cat", "/artifact"],
        "built\n",
    );
    assert_eq!(printed, "built\n");
}

#[tokio::test]
async fn every_exporter_delivers() {
    let ns = "exporters";
    let (h, k) = setup(ns).await;
    let ctx = h.context("exp", &[("Dockerfile", DF), ("hello.txt", "exported\n")]);
    let c = ctx.to_str().expect("utf8");
    let dir = h.state_dir().join("exports");
    std::fs::create_dir_all(&dir).expect("mkdir");
    for (kind, ns2) in [("oci", "imported-oci"), ("docker", "imported-docker")] {
        let file = dir.join(format!("image-{kind}.tar"));
        let o = format!(
            "type={kind},dest={},name=docker.io/library/exp:{kind}",
            file.display()
        );
        remote(&h, &k, ns, &["-o", &o, c]).ok();
        h.ctr(ns2, &["images", "import", file.to_str().expect("utf8")])
            .expect("ctr import");
        let want = "exported\nbuilt-remotely\n";
        let printed = h.run_image_expecting(
            ns2,
            &format!("docker.io/library/exp:{kind}"),
            &format!("exp-{kind}"),
            &[],
            want,
        );
        assert_eq!(printed, want);
        // Only the archive: nothing was named in kilnd's namespace.
        assert!(!h
            .ctr(ns, &["images", "ls", "-q"])
            .expect("ctr")
            .contains(&format!("exp:{kind}")));
    }
    let local = dir.join("local");
    remote(
        &h,
        &k,
        ns,
        &["-o", &format!("type=local,dest={}", local.display()), c],
    )
    .ok();
    assert_eq!(
        std::fs::read_to_string(local.join("app/hello.txt")).expect("local file"),
        "exported\n"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(local.join("app/built.txt"))
            .expect("built.txt")
            .permissions(),
    );
    assert_eq!(mode & 0o7777, 0o750);
    assert!(local.join("bin/busybox").exists());
    let tarfile = dir.join("fs.tar");
    remote(
        &h,
        &k,
        ns,
        &["-o", &format!("type=tar,dest={}", tarfile.display()), c],
    )
    .ok();
    let mut a = tar::Archive::new(std::fs::File::open(&tarfile).expect("tar"));
    let names: HashSet<String> = a
        .entries()
        .expect("entries")
        .map(|e| {
            e.expect("entry")
                .path()
                .expect("path")
                .display()
                .to_string()
        })
        .collect();
    assert!(
        names.contains("app/built.txt") && names.contains("bin/busybox"),
        "{names:?}"
    );
    // buildx's `-o -`: the same tar on stdout.
    let out = h
        .kiln_command(ns)
        .expect("kiln")
        .args([
            "--addr",
            &k.addr(),
            "build",
            "--progress",
            "plain",
            "-o",
            "-",
            c,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("kiln runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut a = tar::Archive::new(&out.stdout[..]);
    let mut on_stdout = HashSet::new();
    for e in a.entries().expect("entries") {
        let mut e = e.expect("entry");
        let path = e.path().expect("path").display().to_string();
        if path == "app/hello.txt" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut e, &mut text).expect("read");
            assert_eq!(text, "exported\n");
        }
        on_stdout.insert(path);
    }
    assert_eq!(on_stdout, names);
    // `-o type=cacheonly`: nothing exported, `-t` names nothing.
    let out = remote(
        &h,
        &k,
        ns,
        &["-t", "exp:cacheonly", "-o", "type=cacheonly", c],
    )
    .ok();
    assert!(
        !out.stderr.contains("No output specified"),
        "{}",
        out.stderr
    );
    assert!(!h
        .ctr(ns, &["images", "ls", "-q"])
        .expect("ctr")
        .contains("exp:cacheonly"));
}

/// A definition: busybox, then `sh -c CMD` on it, then the terminal op.
/// Returns it with the source's and the exec's digests.
fn busybox_exec(cmd: &str) -> (llb::Definition, String, String) {
    busybox_exec_with(cmd, |_| {})
}

/// [`busybox_exec`] with the exec op changed by `edit` first.
fn busybox_exec_with(
    cmd: &str,
    edit: impl FnOnce(&mut llb::ExecOp),
) -> (llb::Definition, String, String) {
    let (src_b, src_d) = op_bytes(&llb::Op {
        op: Some(llb::op::Op::Source(llb::SourceOp {
            identifier: "docker-image://docker.io/library/busybox:latest".into(),
            attrs: HashMap::new(),
        })),
        ..Default::default()
    });
    let mut exec = shell_exec(cmd);
    edit(&mut exec);
    let (exec_b, exec_d) = op_bytes(&llb::Op {
        inputs: vec![llb::Input {
            digest: src_d.clone(),
            index: 0,
        }],
        op: Some(llb::op::Op::Exec(exec)),
        ..Default::default()
    });
    let (term_b, _) = op_bytes(&llb::Op {
        inputs: vec![llb::Input {
            digest: exec_d.clone(),
            index: 0,
        }],
        ..Default::default()
    });
    let def = llb::Definition {
        def: vec![src_b, exec_b, term_b],
        ..Default::default()
    };
    (def, src_d, exec_d)
}

#[tokio::test]
async fn raw_llb_builds_and_status_reports_its_digests() {
    let ns = "llb";
    let (h, k) = setup(ns).await;
    let (def, src_d, exec_d) = busybox_exec("echo from-llb > /x");
    let mut c = control(&k).await;
    let build_ref = "llbtest0000000000000000001".to_string();
    let mut sc = c.clone();
    let r2 = build_ref.clone();
    let status = tokio::spawn(async move {
        let mut s = sc
            .status(StatusRequest { r#ref: r2 })
            .await
            .expect("status")
            .into_inner();
        let mut digests = HashSet::new();
        let mut items = Vec::new();
        while let Some(m) = s.message().await.expect("status stream") {
            for v in m.vertexes {
                digests.insert(v.digest);
            }
            items.extend(m.statuses.into_iter().map(|st| st.id));
        }
        (digests, items)
    });
    // A name as a client gives it: buildkitd (73ed6825c) reports it and
    // names it in its progress as given; kiln stores it normalized.
    let resp = c
        .solve(SolveRequest {
            r#ref: build_ref,
            definition: Some(def),
            exporters: vec![Exporter {
                r#type: "image".into(),
                attrs: HashMap::from([("name".to_string(), "llb:1".to_string())]),
            }],
            ..Default::default()
        })
        .await
        .expect("solve")
        .into_inner();
    assert!(resp.exporter_response["containerimage.digest"].starts_with("sha256:"));
    assert_eq!(resp.exporter_response["image.name"], "llb:1");
    let (digests, items) = tokio::time::timeout(Duration::from_secs(20), status)
        .await
        .expect("status ends")
        .expect("task");
    assert!(
        digests.contains(&src_d) && digests.contains(&exec_d),
        "{digests:?}"
    );
    assert!(items.iter().any(|i| i == "naming to llb:1"), "{items:?}");
    let want = "from-llb\n";
    let printed = h.run_image_expecting(
        ns,
        "docker.io/library/llb:1",
        "llb-run",
        &["cat", "/x"],
        want,
    );
    assert_eq!(printed, want);
}

/// The exec fields a client may set beyond the command: extra hosts,
/// ulimits and valid exit codes reach the step; fields kiln does not
/// implement fail the solve before anything runs.
#[tokio::test]
async fn llb_exec_options_reach_the_step_or_fail_naming_them() {
    let ns = "llbexecopts";
    let (h, k) = setup(ns).await;
    let mut c = control(&k).await;
    let solve = |def: llb::Definition, name: &str| SolveRequest {
        r#ref: format!("llbopts{:0>19}", name.len()),
        definition: Some(def),
        exporters: vec![Exporter {
            r#type: "image".into(),
            attrs: HashMap::from([("name".to_string(), format!("docker.io/library/{name}:1"))]),
        }],
        ..Default::default()
    };
    let (def, _, _) = busybox_exec_with(
        "tail -n 1 /etc/hosts > /h; ulimit -Sn > /u; ulimit -Hn >> /u; exit 3",
        |e| {
            let m = e.meta.as_mut().expect("meta");
            m.extra_hosts = vec![llb::HostIp {
                host: "db".into(),
                ip: "10.9.8.7".into(),
            }];
            m.ulimit = vec![llb::Ulimit {
                name: "nofile".into(),
                soft: 300,
                hard: 400,
            }];
            m.valid_exit_codes = vec![0, 3];
        },
    );
    c.solve(solve(def, "execopts"))
        .await
        .expect("exit code 3 is valid for this step");
    let want = "10.9.8.7\tdb\n300\n400\n";
    let printed = h.run_image_expecting(
        ns,
        "docker.io/library/execopts:1",
        "execopts-run",
        &["cat", "/h", "/u"],
        want,
    );
    assert_eq!(printed, want);

    let (def, _, _) = busybox_exec_with("exit 3", |e| {
        e.meta.as_mut().expect("meta").valid_exit_codes = vec![0, 4];
    });
    let err = c
        .solve(solve(def, "badexit"))
        .await
        .expect_err("exit code 3 is not in the list");
    assert!(err.message().contains("exit code: 3"), "{}", err.message());

    let (def, _, _) = busybox_exec_with("touch /ran", |e| {
        e.meta.as_mut().expect("meta").cgroup_parent = "/kiln-test".into();
    });
    let err = c
        .solve(solve(def, "cgroup"))
        .await
        .expect_err("cgroup parent is not supported");
    assert!(
        err.message().contains("cgroup parent is not supported"),
        "{}",
        err.message()
    );
}

#[tokio::test]
async fn list_workers_shows_what_nerdctl_checks() {
    let ns = "workers";
    let (h, k) = setup(ns).await;
    let mut c = control(&k).await;
    let w = c
        .list_workers(ListWorkersRequest::default())
        .await
        .expect("list workers")
        .into_inner();
    assert_eq!(w.record.len(), 1);
    let l = &w.record[0].labels;
    assert_eq!(l["org.mobyproject.buildkit.worker.executor"], "containerd");
    assert_eq!(
        l["org.mobyproject.buildkit.worker.containerd.namespace"],
        ns
    );
    assert_eq!(
        l["org.mobyproject.buildkit.worker.snapshotter"],
        "overlayfs"
    );
    let uuid = h
        .client(ns)
        .await
        .expect("containerd")
        .server_uuid()
        .await
        .expect("uuid");
    assert_eq!(l["org.mobyproject.buildkit.worker.containerd.uuid"], uuid);
    assert!(!w.record[0].platforms.is_empty());
}

#[tokio::test]
async fn eight_clients_at_once_and_a_disconnect_cancels() {
    let ns = "load";
    let (h, mut k) = setup(ns).await;
    let ctxs: Vec<String> = (0..8)
        .map(|i| {
            let df = format!("FROM busybox\nRUN echo client-{i} > /who && sleep 1\n");
            h.context(&format!("load-{i}"), &[("Dockerfile", &df)])
                .to_str()
                .expect("utf8")
                .to_string()
        })
        .collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = ctxs
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let (h, k) = (&h, &k);
                s.spawn(move || remote(h, k, ns, &["-t", &format!("load:{i}"), c]).ok())
            })
            .collect();
        for hd in handles {
            hd.join().expect("thread");
        }
    });
    for i in 0..8 {
        let want = format!("client-{i}\n");
        let printed = h.run_image_expecting(
            ns,
            &format!("docker.io/library/load:{i}"),
            &format!("load-{i}"),
            &["cat", "/who"],
            &want,
        );
        assert_eq!(printed, want);
    }

    // A client that goes away mid-build cancels it and its lease goes.
    let slow = h.context(
        "slow",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo SLOW-STARTED && sleep 120\n",
        )],
    );
    let addr = k.addr();
    let mut child = h
        .kiln_until(
            ns,
            &[
                "--addr",
                &addr,
                "build",
                "--progress",
                "plain",
                slow.to_str().expect("utf8"),
            ],
            "SLOW-STARTED",
        )
        .child;
    child.kill().expect("SIGKILL the client");
    child.wait().expect("reaped");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = h.leftovers(ns).expect("ctr");
        let leases = h.ctr(ns, &["leases", "ls"]).expect("ctr");
        let build_leases = leases
            .lines()
            .filter(|l| l.starts_with("kiln/build/"))
            .count();
        if left.is_empty() && build_leases == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still there after 30 s: {left:?}\n{leases}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // SIGTERM: kilnd exits 0.
    let status = k.terminate().expect("kilnd stops");
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn tls_needs_a_client_certificate_when_a_ca_is_set() {
    let ns = "tls";
    let h = Harness::with_busybox(ns).await;
    let pki = kiln_integration::pki::Pki::new(h.state_dir().join("pki"));
    let ca = pki.ca.clone();
    let (scert, skey) = pki.server.clone();
    let (ccert, ckey) = pki.client("client");
    let port = kiln_integration::pki::free_port();
    let addr = format!("tcp://127.0.0.1:{port}");
    let _k = h
        .start_kilnd_with(
            ns,
            &[
                "--addr",
                &addr,
                "--tlscert",
                &scert,
                "--tlskey",
                &skey,
                "--tlscacert",
                &ca,
            ],
        )
        .await
        .expect("kilnd with TLS starts");
    let ctx = h.context(
        "tls",
        &[("Dockerfile", "FROM busybox\nRUN echo over-tls > /t\n")],
    );
    let c = ctx.to_str().expect("utf8");
    let common = [
        "--addr",
        addr.as_str(),
        "--tlscacert",
        ca.as_str(),
        "--tlsservername",
        "localhost",
    ];
    let mut args: Vec<&str> = common.to_vec();
    args.extend(["build", "--progress", "plain", "-t", "tls:no", c]);
    let refused = h.kiln(ns, &args).expect("kiln runs");
    assert!(
        !refused.success,
        "a client without a certificate built:\n{}",
        refused.stderr
    );
    let mut args: Vec<&str> = common.to_vec();
    args.extend([
        "--tlscert",
        ccert.as_str(),
        "--tlskey",
        ckey.as_str(),
        "build",
        "--progress",
        "plain",
        "-t",
        "tls:yes",
        c,
    ]);
    h.kiln(ns, &args).expect("kiln runs").ok();
    let want = "over-tls\n";
    assert_eq!(
        h.run_image_expecting(
            ns,
            "docker.io/library/tls:yes",
            "tls-run",
            &["cat", "/t"],
            want
        ),
        want
    );
}

#[tokio::test]
async fn sigterm_cancels_running_builds_releases_their_leases_and_exits_0() {
    let ns = "sigterm";
    let (h, mut k) = setup(ns).await;
    let slow = h.context(
        "term",
        &[(
            "Dockerfile",
            "FROM busybox\nRUN echo TERM-STARTED && sleep 120\n",
        )],
    );
    let addr = k.addr();
    let mut child = h
        .kiln_until(
            ns,
            &[
                "--addr",
                &addr,
                "build",
                "--progress",
                "plain",
                slow.to_str().expect("utf8"),
            ],
            "TERM-STARTED",
        )
        .child;
    let started = std::time::Instant::now();
    let status = k.terminate().expect("kilnd stops");
    assert!(status.success(), "{status:?}");
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "kilnd waited for the 120 s step"
    );
    let client = child.wait().expect("client exits");
    assert!(!client.success(), "the cancelled build reported success");
    assert_eq!(h.leftovers(ns).expect("ctr"), Vec::<String>::new());
    let leases = h.ctr(ns, &["leases", "ls"]).expect("ctr");
    assert!(
        !leases.lines().any(|l| l.starts_with("kiln/build/")),
        "{leases}"
    );
}

/// A gateway request tagged with its build (`buildkit-controlapi-buildid`).
fn with_id<T>(id: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("buildkit-controlapi-buildid", id.parse().expect("ascii"));
    r
}

#[tokio::test]
async fn the_gateway_flow_builds_and_an_empty_return_is_an_empty_result() {
    use kiln_proto::gateway::llb_bridge_client::LlbBridgeClient;
    use kiln_proto::gateway::{result, PingRequest, ReturnRequest, SolveRequest as GwSolve};
    let ns = "gateway";
    let (h, k) = setup(ns).await;
    let channel = containerd_client::connect(&k.socket)
        .await
        .expect("connect");

    // buildx's preflight: Solve with no frontend, Ping, Return with nothing.
    let id = "gatewaypreflight000000001";
    let mut c = ControlClient::new(channel.clone());
    let solve = tokio::spawn(async move {
        c.solve(SolveRequest {
            r#ref: id.into(),
            internal: true,
            ..Default::default()
        })
        .await
    });
    let mut gw = LlbBridgeClient::new(channel.clone());
    let pong = gw
        .ping(with_id(id, PingRequest {}))
        .await
        .expect("ping")
        .into_inner();
    let caps: HashSet<String> = pong
        .frontend_api_caps
        .iter()
        .map(|c| c.id.clone())
        .collect();
    assert!(
        caps.contains("solve.base") && caps.contains("return"),
        "{caps:?}"
    );
    gw.r#return(with_id(id, ReturnRequest::default()))
        .await
        .expect("return");
    let resp = solve.await.expect("task").expect("solve").into_inner();
    assert!(resp.exporter_response.is_empty());

    // A real gateway build from a definition, exported as an image.
    let (def, _, _) = busybox_exec("echo via-gateway > /g");
    let id = "gatewaybuild0000000000001";
    let mut c = ControlClient::new(channel.clone());
    let solve = tokio::spawn(async move {
        c.solve(SolveRequest {
            r#ref: id.into(),
            exporters: vec![Exporter {
                r#type: "image".into(),
                attrs: HashMap::from([("name".to_string(), "docker.io/library/gw:1".to_string())]),
            }],
            ..Default::default()
        })
        .await
    });
    let res = gw
        .solve(with_id(
            id,
            GwSolve {
                definition: Some(def),
                allow_result_return: true,
                ..Default::default()
            },
        ))
        .await
        .expect("gateway solve")
        .into_inner();
    let result = res.result.expect("a result");
    assert!(matches!(result.result, Some(result::Result::Ref(_))));
    gw.r#return(with_id(
        id,
        ReturnRequest {
            result: Some(result),
            error: None,
        },
    ))
    .await
    .expect("return");
    let resp = solve.await.expect("task").expect("solve").into_inner();
    assert_eq!(
        resp.exporter_response["image.name"],
        "docker.io/library/gw:1"
    );
    let want = "via-gateway\n";
    assert_eq!(
        h.run_image_expecting(ns, "docker.io/library/gw:1", "gw-run", &["cat", "/g"], want),
        want
    );
}

/// buildctl's path (raw LLB with the client's `containerimage.config` and
/// the base's `containerimage.base.config`) with the exporter's
/// `source-date-epoch`: as BuildKit's exporter patches the config, the
/// entries shared with the base keep their times, every later one and
/// `created` take the epoch.
#[tokio::test]
async fn a_clients_config_is_dated_by_the_exporters_epoch_but_its_bases_entries() {
    let ns = "llb-epoch";
    let (h, k) = setup(ns).await;
    let (def, _, _) = busybox_exec("echo dated > /x");
    let base_entry = serde_json::json!({"created": "2030-01-01T00:00:00Z", "created_by": "base"});
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["cat", "/x"]},
        "created": "2031-01-01T00:00:00Z",
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [base_entry, {"created": "2031-01-01T00:00:00Z", "created_by": "step"}],
    });
    let base = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [base_entry],
    });
    let mut c = control(&k).await;
    c.solve(SolveRequest {
        r#ref: "llbepoch00000000000000001".into(),
        definition: Some(def),
        exporters: vec![Exporter {
            r#type: "image".into(),
            attrs: HashMap::from([
                ("name".to_string(), "llb:epoch".to_string()),
                ("containerimage.config".into(), config.to_string()),
                ("containerimage.base.config".into(), base.to_string()),
                ("source-date-epoch".into(), "1700000000".into()),
            ]),
        }],
        ..Default::default()
    })
    .await
    .expect("solve");
    let cfg = common::image_config(&h, ns, "docker.io/library/llb:epoch");
    let at = "2023-11-14T22:13:20Z";
    assert_eq!(cfg["created"], at, "{cfg}");
    let times: Vec<&str> = cfg["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|e| e["created"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(times, ["2030-01-01T00:00:00Z", at], "{cfg}");
}
