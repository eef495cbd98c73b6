//! `du` through kilnd marks the cache records a running build holds as in
//! use (not reclaimable), as BuildKit's DiskUsage sets `InUse`: the
//! records of the steps it has answered and those below them, until its
//! result is released. A prune meanwhile leaves them alone.

use kiln_integration::{Harness, KilnOutput};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Each record's description and whether it is reclaimable, from
/// `kiln --addr ADDR du --verbose`.
fn reclaimable(h: &Harness, ns: &str, addr: &str) -> BTreeMap<String, bool> {
    let out: KilnOutput = h
        .kiln(ns, &["--addr", addr, "du", "--verbose"])
        .expect("kiln du")
        .ok();
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

#[tokio::test]
async fn du_shows_a_running_builds_records_in_use_until_it_ends() {
    let ns = "du-inuse";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let addr = k.addr();
    // An earlier build's record, which the running build does not hold.
    let other = h.context(
        "du-other",
        &[("Dockerfile", "FROM busybox\nRUN echo other > /other\n")],
    );
    h.kiln(
        ns,
        &["--addr", &addr, "build", other.to_str().expect("utf8")],
    )
    .expect("kiln runs")
    .ok();
    let df = "FROM busybox\nRUN echo one > /one\nRUN echo two > /two\n\
              RUN echo started && sleep 4\n";
    let ctx = h.context("du-running", &[("Dockerfile", df)]);
    let c = ctx.to_str().expect("utf8");
    let mut running = h.kiln_until(
        ns,
        &["--addr", &addr, "build", "--progress", "plain", c],
        "started",
    );

    // From another client, while the last step sleeps: its parent record
    // and the one below are held; the other build's is not.
    let one = "[2/4] RUN echo one > /one";
    let two = "[3/4] RUN echo two > /two";
    let mut want = BTreeMap::from([
        ("[2/2] RUN echo other > /other".to_string(), true),
        (one.to_string(), false),
        (two.to_string(), false),
    ]);
    assert_eq!(reclaimable(&h, ns, &addr), want);
    // A prune meanwhile removes only what is not in use.
    h.kiln(ns, &["--addr", &addr, "prune", "-f"])
        .expect("kiln prune")
        .ok();
    want.remove("[2/2] RUN echo other > /other");
    assert_eq!(reclaimable(&h, ns, &addr), want);

    let rest: Vec<String> = running.rest.by_ref().map_while(Result::ok).collect();
    let status = running.child.wait().expect("kiln ends");
    assert!(status.success(), "{}", rest.join("\n"));
    // Once the build is over nothing is held: every record is reclaimable.
    want.insert(one.to_string(), true);
    want.insert(two.to_string(), true);
    want.insert("[4/4] RUN echo started && sleep 4".to_string(), true);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = reclaimable(&h, ns, &addr);
        if got == want {
            break;
        }
        assert!(Instant::now() < deadline, "still in use: {got:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}
