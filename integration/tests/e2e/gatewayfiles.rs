//! Reading a gateway result's files through kilnd (issue 13): LLBBridge's
//! `ReadFile`, `ReadDir` and `StatFile` on a ref that `Solve` returned,
//! as buildx uses them on a remote (git URL) context: it solves the git
//! source in an internal gateway build and stats and reads its policy file
//! (`Dockerfile.rego`) there, a missing one being no error.
//!
//! Checked: caps, `Evaluate`, `Warn`, whole and ranged reads, listings with and without an
//! include pattern, stats, that symlinks and `..` climbing out of the
//! result (relative and absolute, with a file of the same name on the host)
//! stay inside it, missing paths (NotFound naming the path), unknown refs,
//! the git-source flow, and that what kilnd does not serve is refused by
//! name.

use kiln_integration::gitdaemon::{git, GitDaemon};
use kiln_integration::llbdef::{op_bytes, shell_exec};
use kiln_integration::{Harness, Kilnd};
use kiln_proto::control::control_client::ControlClient;
use kiln_proto::control::{SolveRequest, StatusRequest};
use kiln_proto::gateway::llb_bridge_client::LlbBridgeClient;
use kiln_proto::gateway::{
    result, EvaluateRequest, FileRange, PingRequest, ReadDirRequest, ReadFileRequest,
    ReturnRequest, SolveRequest as GwSolve, StatFileRequest, WarnRequest,
};
use kiln_proto::llb;
use std::collections::HashMap;
use tonic::transport::Channel;
use tonic::Code;

/// How long a finished build may take to remove what it made.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(30);

/// Go's `os.ModeDir` and `os.ModeSymlink` bits in `Stat.mode`.
const MODE_DIR: u32 = 1 << 31;
const MODE_SYMLINK: u32 = 1 << 27;

/// A gateway request tagged with its build (`buildkit-controlapi-buildid`).
fn with_id<T>(id: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("buildkit-controlapi-buildid", id.parse().expect("ascii"));
    r
}

/// A definition of `source` alone, or of `sh -c CMD` run on it.
fn definition(source: llb::SourceOp, cmd: Option<&str>) -> llb::Definition {
    let (src_b, src_d) = op_bytes(&llb::Op {
        op: Some(llb::op::Op::Source(source)),
        ..Default::default()
    });
    let mut def = vec![src_b];
    let mut last = src_d;
    if let Some(cmd) = cmd {
        let (exec_b, exec_d) = op_bytes(&llb::Op {
            inputs: vec![llb::Input {
                digest: last,
                index: 0,
            }],
            op: Some(llb::op::Op::Exec(shell_exec(cmd))),
            ..Default::default()
        });
        def.push(exec_b);
        last = exec_d;
    }
    let (term_b, _) = op_bytes(&llb::Op {
        inputs: vec![llb::Input {
            digest: last,
            index: 0,
        }],
        ..Default::default()
    });
    def.push(term_b);
    llb::Definition {
        def,
        ..Default::default()
    }
}

/// An internal build with no frontend, as buildx's and buildctl's gateway
/// clients open one; the gateway calls below belong to it. Its Control
/// answer comes once `Return` is called.
struct GatewayBuild {
    id: &'static str,
    gw: LlbBridgeClient<Channel>,
    solve: tokio::task::JoinHandle<
        Result<tonic::Response<kiln_proto::control::SolveResponse>, tonic::Status>,
    >,
}

impl GatewayBuild {
    async fn open(k: &Kilnd, id: &'static str) -> GatewayBuild {
        let channel = containerd_client::connect(&k.socket)
            .await
            .expect("connect to kilnd");
        let mut c = ControlClient::new(channel.clone());
        let solve = tokio::spawn(async move {
            c.solve(SolveRequest {
                r#ref: id.into(),
                internal: true,
                ..Default::default()
            })
            .await
        });
        GatewayBuild {
            id,
            gw: LlbBridgeClient::new(channel),
            solve,
        }
    }

    /// Solves `def` and returns its single ref.
    async fn solve(&mut self, def: llb::Definition) -> String {
        let res = self
            .gw
            .solve(with_id(
                self.id,
                GwSolve {
                    definition: Some(def),
                    allow_result_return: true,
                    ..Default::default()
                },
            ))
            .await
            .expect("gateway solve")
            .into_inner();
        match res.result.and_then(|r| r.result) {
            Some(result::Result::Ref(r)) => r.id,
            other => panic!("not a single ref: {other:?}"),
        }
    }

    async fn read(
        &mut self,
        r: &str,
        path: &str,
        range: Option<(i64, i64)>,
    ) -> Result<String, tonic::Status> {
        let req = ReadFileRequest {
            r#ref: r.into(),
            file_path: path.into(),
            range: range.map(|(offset, length)| FileRange { offset, length }),
            mount_index: 0,
        };
        let data = self
            .gw
            .read_file(with_id(self.id, req))
            .await?
            .into_inner()
            .data;
        Ok(String::from_utf8_lossy(&data).into_owned())
    }

    async fn list(
        &mut self,
        r: &str,
        path: &str,
        include: &str,
    ) -> Result<Vec<kiln_proto::fsutil::Stat>, tonic::Status> {
        let req = ReadDirRequest {
            r#ref: r.into(),
            dir_path: path.into(),
            include_pattern: include.into(),
            mount_index: 0,
        };
        Ok(self
            .gw
            .read_dir(with_id(self.id, req))
            .await?
            .into_inner()
            .entries)
    }

    async fn stat(
        &mut self,
        r: &str,
        path: &str,
    ) -> Result<kiln_proto::fsutil::Stat, tonic::Status> {
        let req = StatFileRequest {
            r#ref: r.into(),
            path: path.into(),
            mount_index: 0,
        };
        Ok(self
            .gw
            .stat_file(with_id(self.id, req))
            .await?
            .into_inner()
            .stat
            .expect("a stat"))
    }

    /// Ends the build as buildx ends its internal one: the client goes
    /// away (its Control call is dropped).
    fn cancel(self) {
        self.solve.abort();
    }

    /// Ends the build with no result and waits for its Control answer.
    async fn finish(mut self) {
        self.gw
            .r#return(with_id(self.id, ReturnRequest::default()))
            .await
            .expect("return");
        self.solve.await.expect("task").expect("control solve");
    }
}

fn names(entries: &[kiln_proto::fsutil::Stat]) -> Vec<&str> {
    entries
        .iter()
        .map(|s| std::str::from_utf8(&s.path).expect("UTF-8 name"))
        .collect()
}

#[tokio::test]
async fn a_results_files_are_read_inside_its_root() {
    let ns = "gatewayfiles";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    // A file on the host that a link escaping the result would reach; the
    // result holds its own file at the same absolute path.
    let host_dir = h.state_dir().join("outside");
    std::fs::create_dir_all(&host_dir).expect("mkdir");
    let host_secret = host_dir.join("secret");
    std::fs::write(&host_secret, "host file\n").expect("write");
    let hs = host_secret.to_str().expect("utf8");
    let hd = host_dir.to_str().expect("utf8");
    let cmd = format!(
        "mkdir -p /data/sub {hd} && echo image file > {hs} && \
         echo 0123456789 > /data/digits.txt && echo deep > /data/sub/deep.txt && \
         echo b > /data/b.bin && \
         ln -s {hs} /data/abs && ln -s ../../../../../../../..{hs} /data/up && \
         ln -s .. /data/parent && ln -s /data/missing /data/dangling"
    );
    let def = definition(
        llb::SourceOp {
            identifier: "docker-image://docker.io/library/busybox:latest".into(),
            attrs: HashMap::new(),
        },
        Some(&cmd),
    );

    let mut b = GatewayBuild::open(&k, "gatewayfiles000000000001").await;
    let pong =
        b.gw.ping(with_id(b.id, PingRequest {}))
            .await
            .expect("ping")
            .into_inner();
    let caps: Vec<&str> = pong
        .frontend_api_caps
        .iter()
        .map(|c| c.id.as_str())
        .collect();
    for cap in [
        "readfile",
        "readdir",
        "statfile",
        "gateway.evaluate",
        "gateway.warnings",
    ] {
        assert!(caps.contains(&cap), "{cap} not advertised: {caps:?}");
    }
    let status = {
        let channel = containerd_client::connect(&k.socket)
            .await
            .expect("connect to kilnd");
        let mut c = ControlClient::new(channel);
        tokio::spawn(async move {
            let mut s = c
                .status(StatusRequest {
                    r#ref: "gatewayfiles000000000001".into(),
                })
                .await
                .expect("status")
                .into_inner();
            let mut warnings = Vec::new();
            while let Some(m) = s.message().await.expect("status stream") {
                warnings.extend(m.warnings);
            }
            warnings
        })
    };
    let r = b.solve(def).await;
    // A frontend's warning reaches the build's status.
    b.gw.warn(with_id(
        b.id,
        WarnRequest {
            digest: "sha256:0123".into(),
            level: 1,
            short: b"from the gateway client".to_vec(),
            url: "https://example.invalid/rule".into(),
            ..Default::default()
        },
    ))
    .await
    .expect("warn");
    b.gw.evaluate(with_id(b.id, EvaluateRequest { r#ref: r.clone() }))
        .await
        .expect("a solved ref evaluates");

    // Whole and ranged reads.
    assert_eq!(
        b.read(&r, "/data/digits.txt", None).await.expect("read"),
        "0123456789\n"
    );
    assert_eq!(
        b.read(&r, "data/digits.txt", Some((3, 4)))
            .await
            .expect("range"),
        "3456"
    );
    assert_eq!(
        b.read(&r, "data/digits.txt", Some((8, 100)))
            .await
            .expect("tail"),
        "89\n"
    );
    // Links and `..` that climb out land inside the result.
    for path in [
        "data/abs",
        "data/up",
        "data/parent/data/parent/data/up",
        hs,
        &format!("../../../..{hs}"),
    ] {
        assert_eq!(
            b.read(&r, path, None).await.expect(path),
            "image file\n",
            "{path}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&host_secret).expect("host"),
        "host file\n"
    );

    // Missing paths are NotFound and name the path as asked.
    for path in [
        "data/nope.rego",
        "data/dangling",
        "data/parent/../../../nope",
    ] {
        let e = b.read(&r, path, None).await.expect_err(path);
        assert_eq!(e.code(), Code::NotFound, "{path}: {e:?}");
        assert_eq!(
            e.message(),
            format!("open {path}: no such file or directory")
        );
        let e = b.stat(&r, path).await.expect_err(path);
        assert_eq!(e.code(), Code::NotFound, "{path}: {e:?}");
        assert_eq!(
            e.message(),
            format!("lstat {path}: no such file or directory")
        );
    }
    let e = b.list(&r, "nope", "").await.expect_err("missing dir");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    let e = b.read(&r, "data", None).await.expect_err("a directory");
    assert_eq!(e.message(), "data is not a regular file");

    // Listings: one level, sorted, links not followed.
    let all = b.list(&r, "data", "").await.expect("list");
    assert_eq!(
        names(&all),
        [
            "abs",
            "b.bin",
            "dangling",
            "digits.txt",
            "parent",
            "sub",
            "up"
        ]
    );
    let up = &all[6];
    assert_ne!(up.mode & MODE_SYMLINK, 0, "{up:?}");
    assert_eq!(
        up.linkname,
        format!("../../../../../../../..{hs}").into_bytes()
    );
    assert_ne!(all[5].mode & MODE_DIR, 0);
    assert_eq!(all[3].size, 11);
    assert_eq!(
        names(&b.list(&r, "data", "*.txt").await.expect("txt")),
        ["digits.txt"]
    );
    assert_eq!(
        names(&b.list(&r, "/data/", "sub/*.txt").await.expect("sub")),
        ["sub"]
    );
    // The result's root, reached by climbing out through a link.
    let root = b
        .list(&r, "data/parent/data/parent", "")
        .await
        .expect("root");
    for n in ["bin", "data", "etc"] {
        assert!(names(&root).contains(&n), "{n} missing: {:?}", names(&root));
    }

    // Stats follow the final link and use the resolved base name.
    let st = b.stat(&r, "data/up").await.expect("stat");
    assert_eq!((st.path.as_slice(), st.size), (b"secret".as_slice(), 11));
    assert_eq!(st.mode & (MODE_DIR | MODE_SYMLINK), 0);
    let st = b.stat(&r, "data/sub").await.expect("stat dir");
    assert_ne!(st.mode & MODE_DIR, 0);
    assert!(
        b.stat(&r, ".").await.is_ok(),
        "BuildKit's evaluate fallback stats \".\""
    );

    // An unknown ref.
    let e = b
        .read("ref-nope", "data/digits.txt", None)
        .await
        .expect_err("unknown ref");
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(e.message(), "no such ref: ref-nope");

    b.finish().await;
    let warnings = status.await.expect("status task");
    assert!(
        warnings
            .iter()
            .any(|w| w.short == b"from the gateway client" && w.vertex == "sha256:0123"),
        "{warnings:?}"
    );
    // No view of the result (a mount, a snapshot) outlives the calls.
    h.wait_no_leftovers(ns, &h.kilnd_root(ns), SETTLE)
        .await
        .expect("nothing left");
}

/// buildx's remote-context policy lookup, with the calls its gateway
/// client makes: the git source solved in an internal build, then
/// `StatFile` and `ReadFile` of `Dockerfile.rego` on that ref.
#[tokio::test]
async fn a_git_sources_files_are_read_as_buildx_reads_a_remote_context() {
    let ns = "gatewaygit";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let base = h.state_dir().join("git");
    let repo = base.join("repo");
    std::fs::create_dir_all(&repo).expect("mkdir");
    std::fs::write(repo.join("Dockerfile"), "FROM busybox\nCOPY . /ctx\n").expect("write");
    git(&repo, &["init", "-q"]);
    git(&repo, &["add", "."]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    let daemon = GitDaemon::start(&base, h.state_dir().join("git-daemon.log"));
    let url = daemon.url("repo");
    let def = definition(
        llb::SourceOp {
            identifier: format!("{url}#main"),
            attrs: HashMap::from([("git.fullurl".to_string(), url.clone())]),
        },
        None,
    );

    let mut b = GatewayBuild::open(&k, "gatewaygit00000000000001").await;
    let r = b.solve(def).await;
    let e = b
        .stat(&r, "Dockerfile.rego")
        .await
        .expect_err("no policy file");
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(
        e.message().contains("no such file"),
        "buildx's not-found test: {e:?}"
    );
    let st = b.stat(&r, "Dockerfile").await.expect("stat");
    assert_eq!(st.size, 25);
    assert_eq!(
        b.read(&r, "Dockerfile", None).await.expect("read"),
        "FROM busybox\nCOPY . /ctx\n"
    );
    assert_eq!(
        names(&b.list(&r, "", "").await.expect("list")),
        ["Dockerfile"]
    );
    // buildx ends this build by cancelling it, not by Return.
    b.cancel();
    h.wait_no_leftovers(ns, &h.kilnd_root(ns), SETTLE)
        .await
        .expect("nothing left");
}

/// What kilnd does not serve on this path fails by name instead of being
/// ignored: source policies (in Control.Solve and in a gateway solve) and
/// `Inputs`.
#[tokio::test]
async fn unserved_gateway_requests_are_refused_by_name() {
    use kiln_proto::gateway::InputsRequest;
    use kiln_proto::sourcepolicy::{Policy, Rule, Selector};
    let ns = "gatewayrefuse";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let policy = Policy {
        version: 1,
        rules: vec![Rule {
            selector: Some(Selector {
                identifier: "docker-image://*".into(),
                ..Default::default()
            }),
            ..Default::default()
        }],
    };
    let channel = containerd_client::connect(&k.socket)
        .await
        .expect("connect to kilnd");
    let e = ControlClient::new(channel)
        .solve(SolveRequest {
            r#ref: "gatewayrefuse00000000001".into(),
            source_policy: Some(policy.clone()),
            ..Default::default()
        })
        .await
        .expect_err("a source policy");
    // A refused build answers Unknown, as BuildKit's failed builds do.
    assert_eq!(e.code(), Code::Unknown, "{e:?}");
    assert_eq!(
        e.message(),
        "source policies (EXPERIMENTAL_BUILDKIT_SOURCE_POLICY) are not supported yet"
    );

    let mut b = GatewayBuild::open(&k, "gatewayrefuse00000000002").await;
    let def = definition(
        llb::SourceOp {
            identifier: "docker-image://docker.io/library/busybox:latest".into(),
            attrs: HashMap::new(),
        },
        None,
    );
    let e =
        b.gw.solve(with_id(
            b.id,
            GwSolve {
                definition: Some(def),
                allow_result_return: true,
                source_policies: vec![policy],
                ..Default::default()
            },
        ))
        .await
        .expect_err("a source policy");
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
    assert_eq!(
        e.message(),
        "source policies on a gateway solve are not supported yet"
    );
    let e =
        b.gw.inputs(with_id(b.id, InputsRequest {}))
            .await
            .expect_err("inputs");
    assert_eq!(e.code(), Code::Unimplemented, "{e:?}");
    assert!(e.message().contains("Inputs"), "{e:?}");
    b.finish().await;
}
