//! kiln's wire protocol: the BuildKit-compatible `.proto` definitions and
//! their generated code.
//!
//! The `.proto` files under `proto/` are kiln's own: written from the wire
//! facts (field numbers, types, package and service names) in the BuildKit
//! protocol notes (`buildkit-protocol.md` in the project's shared docs) and
//! trimmed to what kiln needs. `build.rs` compiles them
//! with protox, a protobuf compiler in Rust, so building needs no system
//! `protoc`; tonic-prost-build then writes messages, clients and servers into
//! `OUT_DIR`. [`wire`] nests the generated modules exactly as the protobuf
//! packages are named (cross-package references depend on that); the
//! re-exports below give each package a short name.
//!
//! Server traits come with default methods that answer `Unimplemented`, so a
//! server implements only the calls it serves. Clients are generic over the
//! channel: this crate does not enable tonic's transport.
//!
//! This crate holds no logic: it must not know about builds, snapshots or
//! containerd objects. The gRPC status <-> error-kind mapping lives in the
//! leaf crate `kiln-types` (re-exported here as [`ErrorKind`]), so crates
//! that need a kind do not compile the generated code.

pub mod wire;

/// `containerd.services.content.v1`: the content stores a client
/// attaches to its session (an OCI layout for `oci-layout://` contexts).
pub use wire::containerd::services::content::v1 as content;
/// `errdefs`: the typed details of a failed build's status (the failed
/// vertex, its source ranges).
pub use wire::errdefs;
/// `fsutil.types`: DiffCopy packets and file stats.
pub use wire::fsutil::types as fsutil;
/// `google.rpc`: the `Status` error model carried inside messages.
pub use wire::google::rpc;
/// `grpc.health.v1`: the health service every session serves.
pub use wire::grpc::health::v1 as health;
/// `moby.buildkit.secrets.v1`: the session's Secrets service.
pub use wire::moby::buildkit::secrets::v1 as secrets;
/// `moby.buildkit.v1`: the Control service (Solve, Status, Session,
/// ListWorkers, Info, DiskUsage, Prune, build history).
pub use wire::moby::buildkit::v1 as control;
/// `moby.buildkit.v1.apicaps`: the capability records Ping returns.
pub use wire::moby::buildkit::v1::apicaps;
/// `moby.buildkit.v1.frontend`: the LLBBridge gateway service.
pub use wire::moby::buildkit::v1::frontend as gateway;
/// `moby.buildkit.v1.sourcepolicy`: source policies in solve requests.
pub use wire::moby::buildkit::v1::sourcepolicy;
/// `moby.buildkit.v1.sourcepolicy.policysession`: the PolicyVerifier a
/// client serves in its session (buildx's build policies).
pub use wire::moby::buildkit::v1::sourcepolicy::policysession;
/// `moby.buildkit.v1.types`: worker records, GC policies, versions.
pub use wire::moby::buildkit::v1::types as worker;
/// `moby.filesync.v1`: the session's FileSync, FileSend and Auth services.
pub use wire::moby::filesync::v1 as filesync;
/// `moby.sshforward.v1`: the session's SSH agent forwarding.
pub use wire::moby::sshforward::v1 as sshforward;
/// `moby.upload.v1`: the session's uploads (a tar context on stdin).
pub use wire::moby::upload::v1 as upload;
/// `pb`: LLB, the build graph (`Definition`, `Op` and the op kinds).
pub use wire::pb as llb;

/// The errdefs kinds and their gRPC code mapping live in the leaf crate
/// `kiln-types`; re-exported so `kiln_proto::ErrorKind` keeps working.
pub use kiln_types::ErrorKind;

#[cfg(test)]
mod tests {
    use super::*;

    use prost::Message;
    use std::future::Future;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    #[test]
    fn llb_field_numbers_match_the_wire() {
        // Op{inputs: [Input{digest: "sha256:ab", index: 1}],
        //    exec: ExecOp{meta: Meta{args: ["sh"]},
        //                 mounts: [Mount{dest: "/", output: 2, readonly,
        //                                mountType: CACHE,
        //                                cacheOpt: {ID: "c", sharing: LOCKED}}],
        //                 network: HOST}}
        #[rustfmt::skip]
        let bytes: &[u8] = &[
            0x0a, 0x0d,                         // Op.inputs = 1, LEN 13
              0x0a, 0x09, b's', b'h', b'a', b'2', b'5', b'6', b':', b'a', b'b', // Input.digest = 1
              0x10, 0x01,                       // Input.index = 2
            0x12, 0x1b,                         // Op.exec = 2, LEN 27
              0x0a, 0x04,                       // ExecOp.meta = 1
                0x0a, 0x02, b's', b'h',         // Meta.args = 1
              0x12, 0x11,                       // ExecOp.mounts = 2, LEN 17
                0x1a, 0x01, b'/',               // Mount.dest = 3
                0x20, 0x02,                     // Mount.output = 4
                0x28, 0x01,                     // Mount.readonly = 5
                0x30, 0x03,                     // Mount.mountType = 6 (CACHE)
                0xa2, 0x01, 0x05,               // Mount.cacheOpt = 20
                  0x0a, 0x01, b'c',             // CacheOpt.ID = 1
                  0x10, 0x02,                   // CacheOpt.sharing = 2 (LOCKED)
              0x18, 0x01,                       // ExecOp.network = 3 (HOST)
        ];
        let op = llb::Op::decode(bytes).expect("valid exec op");
        assert_eq!(
            op.inputs,
            vec![llb::Input {
                digest: "sha256:ab".into(),
                index: 1
            }]
        );
        let Some(llb::op::Op::Exec(exec)) = &op.op else {
            panic!("expected an exec op, got {:?}", op.op);
        };
        assert_eq!(
            exec.meta.as_ref().map(|m| m.args.clone()),
            Some(vec!["sh".to_owned()])
        );
        assert_eq!(exec.network(), llb::NetMode::Host);
        let mount = &exec.mounts[0];
        assert_eq!(
            (mount.input, mount.dest.as_str(), mount.output),
            (0, "/", 2)
        );
        assert!(mount.readonly);
        assert_eq!(mount.mount_type(), llb::MountType::Cache);
        let cache = mount.cache_opt.as_ref().expect("cache opt");
        assert_eq!(
            (cache.id.as_str(), cache.sharing()),
            ("c", llb::CacheSharingOpt::Locked)
        );
        // Encoding gives the same bytes back (fields in number order).
        assert_eq!(op.encode_to_vec(), bytes);

        // Op.source = 3, SourceOp.identifier = 1.
        let op = llb::Op::decode(&[0x1a, 0x03, 0x0a, 0x01, b'x'][..]).expect("source op");
        assert!(matches!(op.op, Some(llb::op::Op::Source(ref s)) if s.identifier == "x"));
        // Op.file = 4, FileOp.actions = 2, FileAction.mkdir = 6, MkDir.path = 1.
        #[rustfmt::skip]
        let file: &[u8] = &[0x22, 0x08, 0x12, 0x06, 0x32, 0x04, 0x0a, 0x02, b'/', b'a'];
        let op = llb::Op::decode(file).expect("file op");
        let Some(llb::op::Op::File(f)) = op.op else {
            panic!("expected a file op");
        };
        assert!(matches!(
            &f.actions[0].action,
            Some(llb::file_action::Action::Mkdir(m)) if m.path == "/a"
        ));
        // Op.platform = 10, Platform.OS = 2.
        let op = llb::Op::decode(&[0x52, 0x07, 0x12, 0x05, b'l', b'i', b'n', b'u', b'x'][..])
            .expect("platform");
        assert_eq!(op.platform.map(|p| p.os), Some("linux".to_owned()));
        // Definition.def = 1 (bytes), Definition.metadata = 2.
        #[rustfmt::skip]
        let def: &[u8] = &[
            0x0a, 0x02, 0x1a, 0x00,             // def[0] = Op{source: {}}
            0x12, 0x07,                         // metadata entry
              0x0a, 0x01, b'd',                 // key
              0x12, 0x02, 0x08, 0x01,           // OpMetadata{ignore_cache = 1}
        ];
        let def = llb::Definition::decode(def).expect("definition");
        assert_eq!(def.def, vec![vec![0x1a, 0x00]]);
        assert!(def.metadata["d"].ignore_cache);
    }

    #[test]
    fn control_and_session_field_numbers_match_the_wire() {
        #[rustfmt::skip]
        let solve: &[u8] = &[
            0x0a, 0x01, b'r',                   // Ref = 1
            0x12, 0x00,                         // Definition = 2 (present, empty)
            0x1a, 0x01, b'x',                   // ExporterDeprecated = 3
            0x2a, 0x01, b's',                   // Session = 5
            0x32, 0x01, b'f',                   // Frontend = 6
            0x4a, 0x0c, b'n', b'e', b't', b'w', b'o', b'r', b'k', b'.', b'h', b'o', b's', b't', // Entitlements = 9
            0x58, 0x01,                         // Internal = 11
            0x6a, 0x07, 0x0a, 0x05, b'i', b'm', b'a', b'g', b'e', // Exporters = 13, Exporter.Type = 1
            0x80, 0x01, 0x01,                   // CompatibilityVersion = 16
        ];
        let req = control::SolveRequest::decode(solve).expect("solve request");
        assert_eq!(req.r#ref, "r");
        assert_eq!(req.definition, Some(llb::Definition::default()));
        assert_eq!(req.exporter_deprecated, "x");
        assert_eq!((req.session.as_str(), req.frontend.as_str()), ("s", "f"));
        assert_eq!(req.entitlements, vec!["network.host".to_owned()]);
        assert!(req.internal);
        assert_eq!(req.exporters[0].r#type, "image");
        assert_eq!(req.compatibility_version, 1);

        #[rustfmt::skip]
        let status: &[u8] = &[
            0x0a, 0x0c,                         // vertexes = 1
              0x0a, 0x01, b'd',                 // Vertex.digest = 1
              0x1a, 0x01, b'n',                 // Vertex.name = 3
              0x20, 0x01,                       // Vertex.cached = 4
              0x2a, 0x02, 0x08, 0x01,           // Vertex.started = 5 (1 s)
            0x1a, 0x09,                         // logs = 3
              0x0a, 0x01, b'd',                 // VertexLog.vertex = 1
              0x18, 0x02,                       // VertexLog.stream = 3 (stderr)
              0x22, 0x02, b'h', b'i',           // VertexLog.msg = 4
        ];
        let st = control::StatusResponse::decode(status).expect("status response");
        let v = &st.vertexes[0];
        assert_eq!(
            (v.digest.as_str(), v.name.as_str(), v.cached),
            ("d", "n", true)
        );
        assert_eq!(v.started.map(|t| t.seconds), Some(1));
        assert_eq!(
            (st.logs[0].stream, st.logs[0].msg.as_slice()),
            (2, &b"hi"[..])
        );

        // fsutil Packet{type: DATA, stat: {path: "a", mode: 0o644,
        // xattrs: {k: v}}, ID: 7, data: "z"}.
        #[rustfmt::skip]
        let packet: &[u8] = &[
            0x08, 0x02,                         // type = 1 (PACKET_DATA)
            0x12, 0x0e,                         // stat = 2
              0x0a, 0x01, b'a',                 // Stat.path = 1
              0x10, 0xa4, 0x03,                 // Stat.mode = 2 (0o644)
              0x52, 0x06, 0x0a, 0x01, b'k', 0x12, 0x01, b'v', // Stat.xattrs = 10
            0x18, 0x07,                         // ID = 3
            0x22, 0x01, b'z',                   // data = 4
        ];
        let p = fsutil::Packet::decode(packet).expect("packet");
        assert_eq!(p.r#type(), fsutil::packet::PacketType::PacketData);
        let stat = p.stat.as_ref().expect("stat");
        assert_eq!((stat.path.as_slice(), stat.mode), (&b"a"[..], 0o644));
        assert_eq!(stat.xattrs["k"], b"v".to_vec());
        assert_eq!((p.id, p.data.as_slice()), (7, &b"z"[..]));

        // LLBBridge: Return{result: Result{ref: Ref{id: "r"},
        // metadata: {m: "1"}}} and Pong{FrontendAPICaps: [{ID: "return",
        // Enabled}]}.
        #[rustfmt::skip]
        let ret: &[u8] = &[
            0x0a, 0x0e,                         // ReturnRequest.result = 1
              0x1a, 0x03, 0x0a, 0x01, b'r',     // Result.ref = 3, Ref.id = 1
              0x52, 0x07, 0x0a, 0x01, b'm', 0x12, 0x02, b'1', b'0', // Result.metadata = 10
        ];
        let ret = gateway::ReturnRequest::decode(ret).expect("return request");
        let result = ret.result.expect("result");
        assert!(matches!(&result.result, Some(gateway::result::Result::Ref(r)) if r.id == "r"));
        assert_eq!(result.metadata["m"], b"10".to_vec());
        #[rustfmt::skip]
        let pong: &[u8] = &[
            0x0a, 0x0a, 0x0a, 0x06, b'r', b'e', b't', b'u', b'r', b'n', 0x10, 0x01,
        ];
        let pong = gateway::PongResponse::decode(pong).expect("pong");
        assert_eq!(
            pong.frontend_api_caps,
            vec![apicaps::ApiCap {
                id: "return".into(),
                enabled: true,
                ..Default::default()
            }]
        );
    }

    /// A channel that records the path of each request and answers with an
    /// empty HTTP response.
    #[derive(Clone, Default)]
    struct PathRecorder(Arc<Mutex<Vec<String>>>);

    impl tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>> for PathRecorder {
        type Response = tonic::codegen::http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, req: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
            self.0
                .lock()
                .expect("recorder lock")
                .push(req.uri().path().to_owned());
            std::future::ready(Ok(tonic::codegen::http::Response::new(
                tonic::body::Body::default(),
            )))
        }
    }

    /// Drives a future that never waits on IO (the recorder answers at once).
    fn run<F: Future>(fut: F) -> F::Output {
        let mut fut = std::pin::pin!(fut);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        for _ in 0..1000 {
            if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
                return out;
            }
        }
        panic!("future did not complete");
    }

    #[test]
    fn service_names_and_method_paths_match_the_wire() {
        use tonic::server::NamedService;

        /// Relies on the default methods, which answer Unimplemented.
        struct Stub;
        impl control::control_server::Control for Stub {}
        impl gateway::llb_bridge_server::LlbBridge for Stub {}
        impl filesync::file_sync_server::FileSync for Stub {}
        impl filesync::file_send_server::FileSend for Stub {}
        impl health::health_server::Health for Stub {}

        assert_eq!(
            <control::control_server::ControlServer<Stub> as NamedService>::NAME,
            "moby.buildkit.v1.Control"
        );
        assert_eq!(
            <gateway::llb_bridge_server::LlbBridgeServer<Stub> as NamedService>::NAME,
            "moby.buildkit.v1.frontend.LLBBridge"
        );
        assert_eq!(
            <filesync::file_sync_server::FileSyncServer<Stub> as NamedService>::NAME,
            "moby.filesync.v1.FileSync"
        );
        assert_eq!(
            <filesync::file_send_server::FileSendServer<Stub> as NamedService>::NAME,
            "moby.filesync.v1.FileSend"
        );
        assert_eq!(
            <health::health_server::HealthServer<Stub> as NamedService>::NAME,
            "grpc.health.v1.Health"
        );
        assert_eq!(filesync::auth_server::SERVICE_NAME, "moby.filesync.v1.Auth");
        assert_eq!(
            secrets::secrets_server::SERVICE_NAME,
            "moby.buildkit.secrets.v1.Secrets"
        );
        assert_eq!(
            sshforward::ssh_server::SERVICE_NAME,
            "moby.sshforward.v1.SSH"
        );
        assert_eq!(upload::upload_server::SERVICE_NAME, "moby.upload.v1.Upload");

        let rec = PathRecorder::default();
        let mut c = control::control_client::ControlClient::new(rec.clone());
        let _ = run(c.solve(control::SolveRequest::default()));
        let _ = run(c.status(control::StatusRequest::default()));
        let _ = run(c.list_workers(control::ListWorkersRequest::default()));
        let _ = run(c.session(tonic::codegen::tokio_stream::empty()));
        let mut g = gateway::llb_bridge_client::LlbBridgeClient::new(rec.clone());
        let _ = run(g.ping(gateway::PingRequest::default()));
        let _ = run(g.r#return(gateway::ReturnRequest::default()));
        let mut f = filesync::file_sync_client::FileSyncClient::new(rec.clone());
        let _ = run(f.diff_copy(tonic::codegen::tokio_stream::empty()));
        let mut s = filesync::file_send_client::FileSendClient::new(rec.clone());
        let _ = run(s.diff_copy(tonic::codegen::tokio_stream::empty()));
        let mut h = health::health_client::HealthClient::new(rec.clone());
        let _ = run(h.check(health::HealthCheckRequest::default()));
        assert_eq!(
            *rec.0.lock().expect("recorder lock"),
            [
                "/moby.buildkit.v1.Control/Solve",
                "/moby.buildkit.v1.Control/Status",
                "/moby.buildkit.v1.Control/ListWorkers",
                "/moby.buildkit.v1.Control/Session",
                "/moby.buildkit.v1.frontend.LLBBridge/Ping",
                "/moby.buildkit.v1.frontend.LLBBridge/Return",
                "/moby.filesync.v1.FileSync/DiffCopy",
                "/moby.filesync.v1.FileSend/DiffCopy",
                "/grpc.health.v1.Health/Check",
            ]
        );
    }
}
