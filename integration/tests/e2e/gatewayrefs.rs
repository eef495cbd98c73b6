//! What a gateway client does with the refs kilnd's LLBBridge returns.
//!
//! - `reference.output`: every ref carries the LLB definition of what it
//!   holds, as buildx needs for bake's `target:` contexts (`ref.ToState()`
//!   then the state as another build's frontend input). Solving that
//!   definition again, alone or as a named context's input, answers from
//!   the cache: a step that writes a random stamp is not run again.
//! - Multi-platform results: each platform's ref reads that platform's
//!   files, and the refs returned together export an image index; a part
//!   of them is refused by name.
//! - Sessions: a definition's local sources name the session that served
//!   them, so built on in another build (another session) they still read
//!   the first build's files; buildx's `local-sessionid:NAME` names the
//!   session a build reads directory `NAME` from.
//!
//! The client here is what buildx's gateway client sends over the wire: a
//! session serving the context, Control.Solve without a frontend, then
//! LLBBridge calls tagged with the build's id.

use kiln_integration::clientsession::ClientSession as Session;
use kiln_integration::{Harness, Kilnd};
use kiln_proto::control::control_client::ControlClient;
use kiln_proto::control::{Exporter, SolveRequest, SolveResponse};
use kiln_proto::gateway::llb_bridge_client::LlbBridgeClient;
use kiln_proto::gateway::{
    result, PingRequest, ReadFileRequest, Ref, RefMap, Result as GwResult, ReturnRequest,
    SolveRequest as GwSolve,
};
use kiln_proto::llb;
use std::collections::HashMap;
use tonic::transport::Channel;
use tonic::Code;

/// A gateway request tagged with its build (`buildkit-controlapi-buildid`).
fn with_id<T>(id: &str, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.metadata_mut()
        .insert("buildkit-controlapi-buildid", id.parse().expect("ascii"));
    r
}

/// A build driven over LLBBridge; its Control answer comes after Return.
struct Build {
    id: &'static str,
    gw: LlbBridgeClient<Channel>,
    solve: tokio::task::JoinHandle<Result<tonic::Response<SolveResponse>, tonic::Status>>,
}

impl Build {
    async fn open(k: &Kilnd, id: &'static str, session: &Session, image: Option<&str>) -> Build {
        let channel = containerd_client::connect(&k.socket)
            .await
            .expect("connect to kilnd");
        let mut c = ControlClient::new(channel.clone());
        let exporters = image
            .map(|name| {
                vec![Exporter {
                    r#type: "image".into(),
                    attrs: HashMap::from([("name".to_string(), name.to_string())]),
                }]
            })
            .unwrap_or_default();
        let session = session.id.clone();
        let solve = tokio::spawn(async move {
            c.solve(SolveRequest {
                r#ref: id.into(),
                session,
                exporters,
                ..Default::default()
            })
            .await
        });
        Build {
            id,
            gw: LlbBridgeClient::new(channel),
            solve,
        }
    }

    async fn solve(&mut self, req: GwSolve) -> result::Result {
        let res = self
            .gw
            .solve(with_id(
                self.id,
                GwSolve {
                    allow_result_return: true,
                    ..req
                },
            ))
            .await
            .expect("gateway solve")
            .into_inner();
        res.result
            .and_then(|r| r.result)
            .expect("a result with refs")
    }

    /// A `dockerfile.v0` solve with these frontend options and inputs.
    async fn dockerfile(
        &mut self,
        opts: &[(&str, &str)],
        inputs: HashMap<String, llb::Definition>,
    ) -> result::Result {
        self.solve(GwSolve {
            frontend: "dockerfile.v0".into(),
            frontend_opt: opts
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            frontend_inputs: inputs,
            ..Default::default()
        })
        .await
    }

    async fn read(&mut self, r: &str, path: &str) -> Result<String, tonic::Status> {
        let req = ReadFileRequest {
            r#ref: r.into(),
            file_path: path.into(),
            range: None,
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

    /// Returns `result` and waits for the build's Control answer.
    async fn finish(
        mut self,
        result: Option<result::Result>,
    ) -> Result<tonic::Response<SolveResponse>, tonic::Status> {
        self.gw
            .r#return(with_id(
                self.id,
                ReturnRequest {
                    result: result.map(|r| GwResult {
                        result: Some(r),
                        ..Default::default()
                    }),
                    error: None,
                },
            ))
            .await
            .expect("return");
        self.solve.await.expect("task")
    }
}

fn single(r: result::Result) -> Ref {
    match r {
        result::Result::Ref(r) => r,
        other => panic!("not a single ref: {other:?}"),
    }
}

fn refs(r: result::Result) -> HashMap<String, Ref> {
    match r {
        result::Result::Refs(m) => m.refs,
        other => panic!("not a ref per platform: {other:?}"),
    }
}

/// The other architecture of a two-platform build (no step runs, so no
/// emulation is needed).
fn foreign_arch() -> &'static str {
    if kiln_engine::oci::worker_platform().architecture == "arm64" {
        "amd64"
    } else {
        "arm64"
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refs_definition_is_built_on_from_the_cache() {
    let ns = "gatewayrefs";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ctx = h.context(
        "gatewayrefs",
        &[
            ("a.txt", "from the context\n"),
            (
                "Dockerfile",
                "FROM busybox\nCOPY a.txt /a.txt\n\
                 RUN cat /proc/sys/kernel/random/uuid > /stamp\n",
            ),
            (
                "Dockerfile.child",
                "FROM base\nRUN cat /stamp /a.txt > /copied && \
                 cat /proc/sys/kernel/random/uuid > /child\n",
            ),
        ],
    );
    let channel = containerd_client::connect(&k.socket)
        .await
        .expect("connect to kilnd");
    let session = Session::of_context(channel, "gatewayrefssession000001", &ctx).await;
    let mut b = Build::open(&k, "gatewayrefs0000000000001", &session, None).await;

    let pong =
        b.gw.ping(with_id(b.id, PingRequest {}))
            .await
            .expect("ping")
            .into_inner();
    assert!(
        pong.frontend_api_caps
            .iter()
            .any(|c| c.id == "reference.output" && c.enabled),
        "reference.output not advertised"
    );

    // A Dockerfile solve: the ref carries the LLB the frontend planned.
    let parent = single(b.dockerfile(&[], HashMap::new()).await);
    let def = parent.def.clone().expect("the ref's definition");
    assert!(def.def.len() >= 4, "image, context, copy, run, terminal");
    let stamp = b.read(&parent.id, "/stamp").await.expect("stamp");
    assert_eq!(stamp.len(), 37, "{stamp:?}");

    // That definition solved on its own: the same files, the step not run
    // again (a new run would write another stamp).
    let again = single(
        b.solve(GwSolve {
            definition: Some(def.clone()),
            ..Default::default()
        })
        .await,
    );
    assert_ne!(again.id, parent.id);
    assert_eq!(b.read(&again.id, "/stamp").await.expect("stamp"), stamp);
    assert_eq!(
        b.read(&again.id, "/a.txt").await.expect("a.txt"),
        "from the context\n"
    );
    // An LLB solve's ref carries the client's own definition.
    assert_eq!(again.def.as_ref().map(|d| &d.def), Some(&def.def));

    // As bake passes a `target:` context: the definition as the frontend
    // input a named context reads. The parent's steps come from the cache.
    let child = single(
        b.dockerfile(
            &[
                ("filename", "Dockerfile.child"),
                ("context:base", "input:base"),
            ],
            HashMap::from([("base".to_string(), def)]),
        )
        .await,
    );
    assert_eq!(
        b.read(&child.id, "/copied").await.expect("copied"),
        format!("{stamp}from the context\n")
    );
    let child_def = child.def.expect("the child's definition");
    // The child's own definition holds its parent's steps: built on again,
    // nothing runs.
    let child_stamp = b.read(&child.id, "/child").await.expect("child");
    let grandchild = single(
        b.solve(GwSolve {
            definition: Some(child_def),
            ..Default::default()
        })
        .await,
    );
    assert_eq!(
        b.read(&grandchild.id, "/child").await.expect("child"),
        child_stamp
    );
    b.finish(None).await.expect("the build ends");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_platforms_ref_reads_its_own_files() {
    let ns = "gatewayplatforms";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let host_platform = kiln_engine::oci::worker_platform();
    let host = host_platform.architecture.as_str();
    let other = foreign_arch();
    let ctx = h.context(
        "gatewayplatforms",
        &[
            (&format!("{host}.txt"), &format!("built for {host}\n")),
            (&format!("{other}.txt"), &format!("built for {other}\n")),
            (
                "Dockerfile",
                "FROM scratch\nARG TARGETARCH\nCOPY ${TARGETARCH}.txt /arch.txt\n",
            ),
        ],
    );
    let platforms = format!("linux/{host},linux/{other}");
    let opts = [("platform", platforms.as_str())];
    let channel = containerd_client::connect(&k.socket)
        .await
        .expect("connect to kilnd");
    let session = Session::of_context(channel, "gatewayplatformsession01", &ctx).await;
    let image = "docker.io/library/gatewayplatforms:1";
    let mut b = Build::open(&k, "gatewayplatforms00000001", &session, Some(image)).await;

    let result = b.dockerfile(&opts, HashMap::new()).await;
    let by_platform = refs(result.clone());
    assert_eq!(by_platform.len(), 2, "{by_platform:?}");
    let host_ref = &by_platform[&format!("linux/{host}")];
    let other_ref = &by_platform[&format!("linux/{other}")];
    assert_ne!(host_ref.id, other_ref.id, "a ref per platform");
    for (arch, r) in [(host, host_ref), (other, other_ref)] {
        assert_eq!(
            b.read(&r.id, "/arch.txt").await.expect("read"),
            format!("built for {arch}\n")
        );
        // Each platform's definition is its own.
        let def = r.def.as_ref().expect("a definition per platform");
        assert!(!def.def.is_empty());
    }
    assert_ne!(host_ref.def, other_ref.def);

    // All platforms returned: the exported image is an index of both.
    let resp = b.finish(Some(result)).await.expect("exported");
    assert!(
        resp.get_ref()
            .exporter_response
            .contains_key("containerimage.digest"),
        "{:?}",
        resp.get_ref()
    );
    let index = h.manifest(ns, image);
    let mut archs: Vec<&str> = index["manifests"]
        .as_array()
        .expect("an index")
        .iter()
        .filter_map(|m| m["platform"]["architecture"].as_str())
        .collect();
    archs.sort_unstable();
    let mut want = vec![host, other];
    want.sort_unstable();
    assert_eq!(archs, want);

    // One platform returned alone is refused by name, not exported as the
    // whole index.
    let mut b = Build::open(&k, "gatewayplatforms00000002", &session, Some(image)).await;
    let by_platform = refs(b.dockerfile(&opts, HashMap::new()).await);
    let one = by_platform[&format!("linux/{other}")].clone();
    let e = b
        .finish(Some(result::Result::Refs(RefMap {
            refs: HashMap::from([(format!("linux/{other}"), one.clone())]),
        })))
        .await
        .expect_err("a part of the result");
    // The build's answer: Unknown, as BuildKit's failed builds.
    assert_eq!(e.code(), Code::Unknown, "{e:?}");
    assert_eq!(
        e.message(),
        format!(
            "returning some platforms ({}) of a multi-platform result is not supported yet: \
             return the refs of all 2",
            one.id
        )
    );
}

/// bake's `target:` context when the targets read different directories:
/// the parent's definition, built on in another build with another
/// session, reads the parent's files from the parent's session, not the
/// child's directory of the same name. And buildx's `local-sessionid:NAME`
/// (one session shared by targets reading one directory) is where the
/// build reads that directory from.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_definition_reads_the_files_of_the_session_it_names() {
    let ns = "gatewaysessions";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let parent_dir = h.context(
        "gatewaysessions-parent",
        &[
            ("a.txt", "the parent's a.txt\n"),
            ("Dockerfile", "FROM scratch\nCOPY a.txt /a.txt\n"),
        ],
    );
    let child_dir = h.context(
        "gatewaysessions-child",
        &[
            ("a.txt", "the child's a.txt\n"),
            ("b.txt", "the child's b.txt\n"),
            ("Dockerfile", "FROM base\nCOPY b.txt /b.txt\n"),
            ("Dockerfile.own", "FROM scratch\nCOPY a.txt /a.txt\n"),
        ],
    );
    let channel = containerd_client::connect(&k.socket)
        .await
        .expect("connect to kilnd");
    let parent_session =
        Session::of_context(channel.clone(), "gatewaysessionsparent001", &parent_dir).await;
    let child_session = Session::of_context(channel, "gatewaysessionschild0001", &child_dir).await;

    // The parent's build stays open while the child builds on it, as
    // buildx keeps a linked target's build.
    let mut parent = Build::open(&k, "gatewaysessions000000001", &parent_session, None).await;
    let base = single(parent.dockerfile(&[], HashMap::new()).await);
    let def = base.def.expect("a definition");

    let mut child = Build::open(&k, "gatewaysessions000000002", &child_session, None).await;
    let built = single(
        child
            .dockerfile(
                &[("context:base", "input:base")],
                HashMap::from([("base".to_string(), def)]),
            )
            .await,
    );
    assert_eq!(
        child.read(&built.id, "/a.txt").await.expect("a.txt"),
        "the parent's a.txt\n"
    );
    assert_eq!(
        child.read(&built.id, "/b.txt").await.expect("b.txt"),
        "the child's b.txt\n"
    );

    // `local-sessionid:`: the child's build reads `context` and its
    // Dockerfile from the parent's session.
    let shared = single(
        child
            .dockerfile(
                &[
                    ("local-sessionid:context", "gatewaysessionsparent001"),
                    ("local-sessionid:dockerfile", "gatewaysessionsparent001"),
                ],
                HashMap::new(),
            )
            .await,
    );
    assert_eq!(
        child.read(&shared.id, "/a.txt").await.expect("a.txt"),
        "the parent's a.txt\n"
    );
    // Without it, its own.
    let own = single(
        child
            .dockerfile(&[("filename", "Dockerfile.own")], HashMap::new())
            .await,
    );
    assert_eq!(
        child.read(&own.id, "/a.txt").await.expect("a.txt"),
        "the child's a.txt\n"
    );
    // A session that is not attached fails the solve, naming it.
    let e = child
        .gw
        .solve(with_id(
            child.id,
            GwSolve {
                frontend: "dockerfile.v0".into(),
                frontend_opt: HashMap::from([
                    ("filename".to_string(), "Dockerfile.own".to_string()),
                    (
                        "local-sessionid:context".to_string(),
                        "nosuchsession".to_string(),
                    ),
                ]),
                allow_result_return: true,
                ..Default::default()
            },
        ))
        .await
        .expect_err("no such session");
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(
        e.message().contains("no active session for nosuchsession"),
        "{e:?}"
    );
    child.finish(None).await.expect("the child ends");
    parent.finish(None).await.expect("the parent ends");
}
