//! A hostile client's build context, sent to kilnd over its own session as
//! fsutil packets no honest sender writes: absolute paths, `..`, writes
//! through a symlink it sent, hard links out of the context, names longer
//! than the file system takes. kilnd must refuse each with an error naming
//! the path, create nothing outside the build's directories, stay up, and
//! leave nothing behind.
//!
//! Also here, through kilnd from an honest session: a 10 MB Dockerfile and
//! a RUN with thousands of heredocs.

use kiln_integration::clientsession::ClientSession;
use kiln_integration::{Harness, Kilnd};
use kiln_proto::control::control_client::ControlClient;
use kiln_proto::control::SolveRequest;
use kiln_proto::filesync::file_sync_server::{FileSync, FileSyncServer};
use kiln_proto::fsutil::{packet::PacketType, Packet, Stat};
use kiln_session::filesync::{FileSyncServerImpl, DIR_NAME_KEY};
use kiln_session::fsutil::mode;
use kiln_session::hijack::{client_side, serve_session, SessionServices};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tonic::codegen::BoxStream;
use tonic::{Request, Response, Status, Streaming};

const DIR: u32 = mode::DIR | 0o755;
const LINK: u32 = mode::SYMLINK | 0o777;
const FILE: u32 = 0o644;

fn stat(path: &str, mode: u32, linkname: &str) -> Packet {
    Packet {
        r#type: PacketType::PacketStat as i32,
        stat: Some(Stat {
            path: path.into(),
            mode,
            linkname: linkname.into(),
            ..Stat::default()
        }),
        ..Packet::default()
    }
}

/// A FileSync that serves `dockerfile` honestly and answers `context`
/// with `packets`, whatever the daemon asks.
#[derive(Clone)]
struct HostileSync {
    honest: FileSyncServerImpl,
    packets: Vec<Packet>,
}

#[tonic::async_trait]
impl FileSync for HostileSync {
    async fn diff_copy(
        &self,
        request: Request<Streaming<Packet>>,
    ) -> Result<Response<BoxStream<Packet>>, Status> {
        let name = request
            .metadata()
            .get(DIR_NAME_KEY)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if name != "context" {
            return self.honest.diff_copy(request).await;
        }
        let mut packets = self.packets.clone();
        // The end of the listing.
        packets.push(Packet {
            r#type: PacketType::PacketStat as i32,
            ..Packet::default()
        });
        Ok(Response::new(Box::pin(futures_util::stream::iter(
            packets.into_iter().map(Ok),
        ))))
    }
}

/// Attaches session `id` serving `HostileSync`; closed when the token is
/// cancelled.
async fn hostile_session(k: &Kilnd, id: &str, sync: HostileSync) -> CancellationToken {
    let mut services = SessionServices::new();
    services.add(FileSyncServer::new(sync), FileSyncServerImpl::METHODS);
    let (side, requests) = client_side();
    let req = kiln_session::hijack::session_request(id, "", &services, requests)
        .expect("session request");
    let ch = containerd_client::connect(&k.socket)
        .await
        .expect("connect to kilnd");
    let responses = ControlClient::new(ch)
        .session(req)
        .await
        .expect("session")
        .into_inner();
    let done = CancellationToken::new();
    tokio::spawn(serve_session(
        side.attach(responses),
        services,
        done.clone(),
    ));
    done
}

/// Builds the Dockerfile frontend over session `session` through kilnd.
async fn solve(k: &Kilnd, r: &str, session: &str) -> Result<(), Status> {
    let ch = containerd_client::connect(&k.socket)
        .await
        .expect("connect to kilnd");
    ControlClient::new(ch)
        .solve(SolveRequest {
            r#ref: r.into(),
            session: session.into(),
            frontend: "dockerfile.v0".into(),
            ..Default::default()
        })
        .await
        .map(|_| ())
}

/// Every path below `root` (not following links).
fn tree(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out.sort();
    out
}

fn kilnd_alive(k: &Kilnd) -> bool {
    k.pid()
        .is_some_and(|p| Path::new(&format!("/proc/{p}")).exists())
}

#[tokio::test]
async fn hostile_context_streams_are_refused_naming_the_path() {
    let ns = "hostile-ctx";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let df = h.context(
        "hostile-ctx-df",
        &[(
            "Dockerfile",
            "FROM busybox\nCOPY . /ctx\nRUN ls -laR /ctx\n",
        )],
    );
    // A canary next to kilnd's root that escapes would reach first.
    let canary = h.state_dir().join("canary");
    std::fs::create_dir_all(canary.join("sub")).expect("canary");
    let canary_s = canary.display().to_string();
    let outside = |name: &str| format!("/tmp/kiln-hostile-{name}");
    let long_name = "n".repeat(300);
    let deep = vec!["d".repeat(200); 25].join("/");
    let cases: Vec<(&str, Vec<Packet>, String)> = vec![
        (
            "absolute path",
            vec![stat(&outside("abs"), FILE, "")],
            format!("invalid path {:?}", outside("abs")),
        ),
        (
            "dotdot",
            vec![stat("../../../../tmp/kiln-hostile-dotdot", FILE, "")],
            "invalid path \"../../../../tmp/kiln-hostile-dotdot\"".into(),
        ),
        (
            "inner dotdot",
            vec![stat("a", DIR, ""), stat("a/../../kiln-hostile-x", FILE, "")],
            "invalid path \"a/../../kiln-hostile-x\"".into(),
        ),
        (
            "write through a symlink it sent",
            vec![
                stat("evil", LINK, &canary_s),
                stat("evil/sub", DIR, ""),
                stat("evil/sub/planted", FILE, ""),
            ],
            "parent of \"evil/sub\" is not a directory of this transfer".into(),
        ),
        (
            "hard link out of the context",
            vec![stat("h", FILE, "../../../../etc/passwd")],
            "invalid hard link \"h\" to \"../../../../etc/passwd\"".into(),
        ),
        (
            "hard link to an absolute path",
            vec![stat("h", FILE, "/etc/passwd")],
            "invalid hard link \"h\" to \"/etc/passwd\"".into(),
        ),
        (
            "name longer than the file system takes",
            vec![stat(&long_name, FILE, "")],
            format!("{long_name:?} failed: File name too long"),
        ),
        (
            "path longer than PATH_MAX",
            vec![stat(&deep, FILE, "")],
            "the path length exceeds the limit of 4096".into(),
        ),
        (
            "unknown packet type",
            vec![Packet {
                r#type: 42,
                ..Packet::default()
            }],
            "invalid packet type 42".into(),
        ),
    ];
    let before = tree(h.state_dir());
    let mut failures = Vec::new();
    for (i, (name, packets, want)) in cases.into_iter().enumerate() {
        let id = format!("hostilectx{i:015}");
        let done = hostile_session(
            &k,
            &id,
            HostileSync {
                honest: FileSyncServerImpl::new(HashMap::from([(
                    "dockerfile".to_string(),
                    df.clone(),
                )])),
                packets,
            },
        )
        .await;
        let r = solve(&k, &format!("hostilectxbuild{i:010}"), &id).await;
        done.cancel();
        match r {
            Ok(()) => failures.push(format!("{name}: built")),
            Err(e) if !e.message().contains(&want) => {
                failures.push(format!("{name}: {:?}, want {want:?}", e.message()))
            }
            Err(e) => eprintln!("{name}: {}", e.message()),
        }
        assert!(kilnd_alive(&k), "kilnd died on {name}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    for p in ["abs", "dotdot", "x"] {
        assert!(
            !Path::new(&outside(p)).exists(),
            "{} was written",
            outside(p)
        );
    }
    assert!(!canary.join("sub/planted").exists());
    h.wait_no_leftovers(ns, &h.kilnd_root(ns), Duration::from_secs(20))
        .await
        .expect("refused contexts leave nothing");
    // Nothing new in the test's state dir outside kilnd's root and
    // containerd's own directories.
    let root = h.kilnd_root(ns);
    let new: Vec<_> = tree(h.state_dir())
        .into_iter()
        .filter(|p| !before.contains(p))
        .filter(|p| !p.starts_with(&root))
        .filter(|p| !p.starts_with(h.state_dir().join("root")))
        .filter(|p| !p.starts_with(h.state_dir().join("state")))
        .collect();
    assert!(new.is_empty(), "written outside kilnd's root: {new:?}");

    // kilnd still builds an honest context.
    let good = h.context(
        "hostile-ctx-good",
        &[
            ("Dockerfile", "FROM busybox\nCOPY f /f\nRUN cat /f\n"),
            ("f", "fine\n"),
        ],
    );
    let ch = containerd_client::connect(&k.socket)
        .await
        .expect("connect to kilnd");
    let session = ClientSession::of_context(ch, "hostilectxgood00000001", &good).await;
    solve(&k, "hostilectxgoodbuild001", &session.id)
        .await
        .expect("an honest context builds");
}

/// Builds the context `files` through kilnd over an honest session.
async fn build_files(
    h: &Harness,
    k: &Kilnd,
    name: &str,
    files: &[(&str, &str)],
) -> Result<(), Status> {
    let dir = h.context(name, files);
    let ch = containerd_client::connect(&k.socket)
        .await
        .expect("connect to kilnd");
    let session = ClientSession::of_context(ch, &format!("{name}-session"), &dir).await;
    solve(k, &format!("{name}-build"), &session.id).await
}

#[tokio::test]
async fn hostile_dockerfiles_through_kilnd_build_or_fail_clearly() {
    let ns = "hostile-df";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");

    // 10 MB of comments and labels around two real instructions.
    let mut big = String::from("FROM busybox\n");
    let mut i = 0;
    while big.len() < 10 << 20 {
        big.push_str(&format!("# filler comment {i:08} {}\n", "c".repeat(60)));
        if i % 1000 == 0 {
            big.push_str(&format!("LABEL l{i}=v{i}\n"));
        }
        i += 1;
    }
    big.push_str("RUN echo big-dockerfile-ok\n");
    build_files(&h, &k, "hostile-df-10mb", &[("Dockerfile", &big)])
        .await
        .expect("a 10 MB Dockerfile builds");

    // One RUN with 2,000 heredocs, each one's body naming the next.
    let mut heredocs = String::from("FROM busybox\nRUN cat");
    let mut bodies = String::new();
    for i in 0..2000 {
        heredocs.push_str(&format!(" <<E{i}"));
        bodies.push_str(&format!("<<E{}\nE{i}\n", i + 1));
    }
    heredocs.push('\n');
    heredocs.push_str(&bodies);
    build_files(&h, &k, "hostile-df-heredocs", &[("Dockerfile", &heredocs)])
        .await
        .expect("2,000 heredocs build");

    // A context symlink to a host directory, followed by COPY: resolved
    // inside the context, where the directory does not exist.
    let secret_dir = h.state_dir().join("host-secrets");
    std::fs::create_dir_all(&secret_dir).expect("secrets dir");
    std::fs::write(secret_dir.join("secret"), "host secret\n").expect("secret");
    let dir = h.context(
        "hostile-df-symlink",
        &[(
            "Dockerfile",
            "FROM busybox\nCOPY evil/secret /x\nRUN cat /x\n",
        )],
    );
    std::os::unix::fs::symlink(&secret_dir, dir.join("evil")).expect("symlink");
    let ch = containerd_client::connect(&k.socket)
        .await
        .expect("connect to kilnd");
    let session = ClientSession::of_context(ch, "hostile-df-symlink-session", &dir).await;
    let err = solve(&k, "hostile-df-symlink-build", &session.id)
        .await
        .expect_err("the host's directory is not in the context");
    assert!(
        err.message().contains("\"/evil/secret\": not found"),
        "{}",
        err.message()
    );

    assert!(kilnd_alive(&k));
    h.wait_no_leftovers(ns, &h.kilnd_root(ns), Duration::from_secs(20))
        .await
        .expect("the builds leave nothing");
}
