//! `du` marks the cache records a running build holds as in use (not
//! reclaimable), as BuildKit's DiskUsage sets `InUse`: the records of the
//! steps it has answered and those below them, until its result is
//! released. A prune meanwhile leaves them alone. The mark lives in
//! containerd (the build's lease), so kilnd's `DiskUsage` and the embedded
//! `kiln du`/`kiln prune` on the same containerd agree, and a kilnd that
//! crashed holds nothing.

use kiln_integration::{Harness, KilnOutput, RunningKiln};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// Each record's description and whether it is reclaimable, from
/// `kiln [--addr ADDR] du --verbose` (embedded without `addr`).
fn reclaimable(h: &Harness, ns: &str, addr: Option<&str>) -> BTreeMap<String, bool> {
    let mut args = Vec::new();
    if let Some(a) = addr {
        args.extend(["--addr", a]);
    }
    args.extend(["du", "--verbose"]);
    let out: KilnOutput = h.kiln(ns, &args).expect("kiln du").ok();
    let mut records = BTreeMap::new();
    for block in out.stdout.split("\n\n") {
        let field = |k: &str| {
            block
                .lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
        };
        if let (Some(d), Some(r)) = (field("Description:"), field("Reclaimable:")) {
            records.insert(d, r == "true");
        }
    }
    records
}

/// A step that waits until the test answers on `listener` (steps of the
/// harness's kilnd run on the host's network).
struct Gate(TcpListener);

impl Gate {
    fn new() -> Gate {
        Gate(TcpListener::bind("127.0.0.1:0").expect("listen"))
    }

    /// A step (with a cache mount) that prints `started`, then waits.
    fn step(&self) -> String {
        let port = self.0.local_addr().expect("addr").port();
        format!(
            "RUN --mount=type=cache,target=/c echo started && wget -q -O /dev/null http://127.0.0.1:{port}/"
        )
    }

    /// Lets the waiting step finish.
    fn open(self) {
        self.0.set_nonblocking(true).expect("nonblocking");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut conn = loop {
            match self.0.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(Instant::now() < deadline, "the step never connected");
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        conn.set_nonblocking(false).expect("blocking");
        let mut req = [0u8; 1024];
        let _ = conn.read(&mut req);
        conn.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
            .expect("answer");
    }
}

/// An earlier build's record, which the running build does not hold.
const OTHER: &str = "[2/2] RUN echo other > /other";
/// The held build's steps: its cache mount makes BuildKit label the
/// stage, one stage as it is.
const ONE: &str = "[stage-0 2/4] RUN echo one > /one";
const TWO: &str = "[stage-0 3/4] RUN echo two > /two";
/// The held step's cache mount: its id is the target after the (empty)
/// cache namespace and a slash, as BuildKit's frontend makes it.
const MOUNT: &str = "cached mount //c";

/// Builds [`OTHER`]'s image through `addr`, then starts a build whose
/// last step waits on `gate`; returns once that step runs.
fn start_held_build(h: &Harness, ns: &str, addr: &str, gate: &Gate) -> RunningKiln {
    let other = h.context(
        &format!("{ns}-other"),
        &[("Dockerfile", "FROM busybox\nRUN echo other > /other\n")],
    );
    h.kiln(
        ns,
        &["--addr", addr, "build", other.to_str().expect("utf8")],
    )
    .expect("kiln runs")
    .ok();
    let df = format!(
        "FROM busybox\nRUN echo one > /one\nRUN echo two > /two\n{}\n",
        gate.step()
    );
    let ctx = h.context(&format!("{ns}-running"), &[("Dockerfile", &df)]);
    h.kiln_until(
        ns,
        &[
            "--addr",
            addr,
            "build",
            "--progress",
            "plain",
            ctx.to_str().expect("utf8"),
        ],
        "started",
    )
}

#[tokio::test]
async fn du_shows_a_running_builds_records_in_use_until_it_ends() {
    let ns = "du-inuse";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let addr = k.addr();
    let gate = Gate::new();
    let mut running = start_held_build(&h, ns, &addr, &gate);

    // While the last step waits, from kilnd and from an embedded kiln on
    // the same containerd: its parent record, the one below and its cache
    // mount are held; the other build's record is not.
    let mut want = BTreeMap::from([
        (OTHER.to_string(), true),
        (ONE.to_string(), false),
        (TWO.to_string(), false),
        (MOUNT.to_string(), false),
    ]);
    assert_eq!(reclaimable(&h, ns, Some(&addr)), want, "kilnd's DiskUsage");
    assert_eq!(reclaimable(&h, ns, None), want, "embedded kiln du");
    // An embedded prune meanwhile removes only what is not in use.
    h.kiln(ns, &["prune", "-f"]).expect("kiln prune").ok();
    want.remove(OTHER);
    assert_eq!(reclaimable(&h, ns, None), want);
    assert_eq!(reclaimable(&h, ns, Some(&addr)), want);

    let last = format!("[stage-0 4/4] {}", gate.step());
    gate.open();
    let rest: Vec<String> = running.rest.by_ref().map_while(Result::ok).collect();
    let status = running.child.wait().expect("kiln ends");
    assert!(status.success(), "{}", rest.join("\n"));
    // Once the build is over nothing is held: every record is reclaimable,
    // for both.
    want.insert(ONE.to_string(), true);
    want.insert(TWO.to_string(), true);
    want.insert(MOUNT.to_string(), true);
    want.insert(last, true);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = reclaimable(&h, ns, None);
        if got == want {
            break;
        }
        assert!(Instant::now() < deadline, "still in use: {got:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(reclaimable(&h, ns, Some(&addr)), want);
    h.kiln(ns, &["prune", "-f"]).expect("kiln prune").ok();
    assert_eq!(reclaimable(&h, ns, None), BTreeMap::new());
}

#[tokio::test]
async fn a_crashed_kilnd_holds_nothing_in_use() {
    let ns = "du-inuse-crash";
    let h = Harness::with_busybox(ns).await;
    let mut k = h.start_kilnd(ns).await.expect("kilnd starts");
    let addr = k.addr();
    let gate = Gate::new();
    let mut running = start_held_build(&h, ns, &addr, &gate);
    let held = reclaimable(&h, ns, None);
    assert_eq!(held.get(ONE), Some(&false), "{held:?}");

    // kilnd dies mid-build: its build lease stays in containerd (nothing
    // swept it yet), but its process is gone, so it holds nothing.
    k.kill();
    let _ = running.child.wait();
    let leases = h.ctr(ns, &["leases", "ls"]).expect("ctr leases ls");
    assert!(leases.contains("kiln/build/"), "{leases}");
    let got = reclaimable(&h, ns, None);
    assert_eq!(
        got,
        BTreeMap::from([
            (OTHER.to_string(), true),
            (ONE.to_string(), true),
            (TWO.to_string(), true),
            (MOUNT.to_string(), true),
        ])
    );
    h.kiln(ns, &["prune", "-f"]).expect("kiln prune").ok();
    assert_eq!(reclaimable(&h, ns, None), BTreeMap::new());
    drop(gate);
}
