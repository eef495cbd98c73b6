//! Step networks and entitlements (issue 8, item 3) against real
//! containerd, runc and the CNI plugins (Debian's
//! containernetworking-plugins).
//!
//! Every test runs on a thread in a network namespace of its own, and
//! starts containerd, kilnd and kiln from that thread, so they all live in
//! it: the CNI bridge, veths, iptables rules and `ip_forward` the plugins
//! set up never touch the machine's network, and "the host's loopback" a
//! step must not reach is the test namespace's `127.0.0.1`, where the test
//! listens. So containerd is always the test's own (the first on `PATH`,
//! e.g. a 2.x build), even when `KILN_TEST_CONTAINERD` names a shared one
//! outside the namespace.

use crate::common;
use common::remote;

use kiln_integration::{step_printed, Harness, KilnOutput};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The default CNI subnet steps get addresses from.
const SUBNET_PREFIX: &str = "inet 10.231.";

/// Runs `body` on a current-thread runtime on a thread in a fresh network
/// namespace with `lo` up; everything it starts inherits the namespace.
fn in_private_netns<F, Fut>(body: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let t = std::thread::spawn(move || {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare netns");
        let up = Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()
            .expect("ip runs");
        assert!(up.success(), "lo up");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(body());
    });
    if let Err(p) = t.join() {
        std::panic::resume_unwind(p);
    }
}

/// A TCP service on this namespace's 127.0.0.1 that answers `host-secret`
/// and counts its connections.
struct Listener {
    port: u16,
    accepted: Arc<AtomicUsize>,
}

fn listen() -> Listener {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1");
    let port = l.local_addr().expect("addr").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            let _ = s.write_all(b"host-secret\n");
            let mut sink = [0u8; 64];
            let _ = s.read(&mut sink);
        }
    });
    Listener { port, accepted }
}

/// A RUN line that tries the listener at 127.0.0.1 and at the bridge's
/// gateway, printing `probe-reached` with what it read, or
/// `probe-isolated` when neither answered.
fn probe_run(flags: &str, port: u16) -> String {
    format!(
        "RUN {flags} out=$(nc -w 3 127.0.0.1 {port} </dev/null 2>&1; nc -w 3 10.231.0.1 {port} </dev/null 2>&1); \
         case \"$out\" in *host-secret*) echo probe-reached;; *) echo probe-isolated;; esac\n"
    )
}

fn links() -> String {
    let out = Command::new("ip")
        .args(["-o", "link"])
        .output()
        .expect("ip link");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Nothing of a step's network is left: no namespace or step directory
/// under `<root>/net/steps`, no host-local allocation, no veth, no
/// masquerade chain, and no containerd leftover.
fn assert_no_network_leftovers(h: &Harness, ns: &str, root: &Path) {
    let steps = root.join("net/steps");
    let left: Vec<_> = std::fs::read_dir(&steps)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "step networks left in {steps:?}: {left:?}");
    let ipam = root.join("net/ipam/kiln");
    let allocated: Vec<String> = std::fs::read_dir(&ipam)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.parse::<std::net::Ipv4Addr>().is_ok())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        allocated.is_empty(),
        "addresses still allocated: {allocated:?}"
    );
    assert!(!links().contains("veth"), "a veth is left:\n{}", links());
    // The bridge plugin's masquerading chains are per step.
    let nat = Command::new("iptables")
        .args(["-t", "nat", "-S"])
        .output()
        .expect("iptables");
    let nat = String::from_utf8_lossy(&nat.stdout);
    assert!(
        !nat.lines().any(|l| l.starts_with("-N CNI-")),
        "masquerade chains left:\n{nat}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let root_s = root.display().to_string();
    assert!(
        !mounts
            .lines()
            .any(|l| l.contains(&root_s) && l.contains("netns")),
        "a namespace is still mounted under {root_s}"
    );
    assert_eq!(
        h.leftovers(ns).expect("ctr"),
        Vec::<String>::new(),
        "containerd leftovers"
    );
}

fn embedded(h: &Harness, ns: &str, args: &[&str]) -> KilnOutput {
    let mut all = vec!["build", "--progress", "plain"];
    all.extend_from_slice(args);
    h.kiln(ns, &all).expect("kiln runs")
}

#[test]
fn a_cni_step_has_its_own_address_and_cannot_reach_the_hosts_loopback() {
    in_private_netns(|| async {
        let ns = "net-cni";
        let h = Harness::with_busybox_private(ns).await;
        let root = h.state_dir().join("kiln-root");
        let l = listen();
        let df = format!(
            "FROM busybox\nRUN ip -o -4 addr show eth0 && echo lo-$(ip -o -4 addr show lo | grep -c 127.0.0.1)\n{}",
            probe_run("", l.port)
        );
        let ctx = h.context("cni", &[("Dockerfile", &df)]);
        let c = ctx.to_str().expect("utf8");
        let out = embedded(&h, ns, &["--network-mode", "cni", "--no-cache", c]).ok();
        assert!(
            out.stderr.contains(SUBNET_PREFIX) && out.stderr.contains("eth0"),
            "eth0 has an address from the subnet:\n{}",
            out.stderr
        );
        assert!(
            step_printed(&out.stderr, "lo-1"),
            "lo is up:\n{}",
            out.stderr
        );
        assert!(
            step_printed(&out.stderr, "probe-isolated"),
            "the host's 127.0.0.1 answered a cni step:\n{}",
            out.stderr
        );
        assert_eq!(
            l.accepted.load(Ordering::SeqCst),
            0,
            "no connection arrived"
        );
        assert_no_network_leftovers(&h, ns, &root);

        // The positive control: the same probe on the host's network, with
        // the entitlement, reaches the listener.
        let df = format!("FROM busybox\n{}", probe_run("--network=host", l.port));
        let ctx = h.context("cni-host", &[("Dockerfile", &df)]);
        let c = ctx.to_str().expect("utf8");
        let out = embedded(
            &h,
            ns,
            &["--network-mode", "cni", "--allow", "network.host", c],
        )
        .ok();
        assert!(
            step_printed(&out.stderr, "probe-reached"),
            "the probe works on the host's network:\n{}",
            out.stderr
        );
        assert!(l.accepted.load(Ordering::SeqCst) >= 1);

        // Without the entitlement the same build fails before any step.
        let out = embedded(&h, ns, &["--network-mode", "cni", "--no-cache", c]);
        assert!(!out.success);
        assert!(
            out.stderr
                .contains("Dockerfile:2: network.host is not allowed"),
            "{}",
            out.stderr
        );
        assert!(
            !out.stderr.contains("probe-"),
            "no step ran:\n{}",
            out.stderr
        );
        assert_no_network_leftovers(&h, ns, &root);
    });
}

#[test]
fn two_cni_steps_of_one_build_reach_each_other_over_the_bridge() {
    in_private_netns(|| async {
        let ns = "net-peers";
        let h = Harness::with_busybox_private(ns).await;
        let root = h.state_dir().join("kiln-root");
        // Stage `server` listens on its eth0 address and writes that
        // address where stage `client` can read it (a cache mount shared by
        // both); `client` connects to it. They run in parallel.
        let df = "FROM busybox AS server\n\
             RUN --mount=type=cache,id=peers,target=/x sh -c 'rm -f /x/*; a=$(ip -o -4 addr show eth0 | sed \"s/.*inet \\([0-9.]*\\).*/\\1/\"); \
             (echo peer-hello | timeout 30 nc -l -p 7777 >/dev/null) & sleep 1; echo $a > /x/addr; wait; echo served; touch /done'\n\
             FROM busybox AS client\n\
             RUN --mount=type=cache,id=peers,target=/x sh -c 'for i in $(seq 1 100); do [ -s /x/addr ] && break; sleep 0.2; done; \
             echo got-$(nc -w 5 $(cat /x/addr) 7777 </dev/null); touch /done'\n\
             FROM busybox\nCOPY --from=server /done /s\nCOPY --from=client /done /c\n";
        let ctx = h.context("peers", &[("Dockerfile", df)]);
        let c = ctx.to_str().expect("utf8");
        let out = embedded(&h, ns, &["--network-mode", "cni", c]).ok();
        assert!(
            step_printed(&out.stderr, "got-peer-hello"),
            "one step reached the other:\n{}",
            out.stderr
        );
        assert_no_network_leftovers(&h, ns, &root);
    });
}

#[test]
fn a_failed_cni_step_leaves_nothing() {
    in_private_netns(|| async {
        let ns = "net-fail";
        let h = Harness::with_busybox_private(ns).await;
        let root = h.state_dir().join("kiln-root");
        let ctx = h.context(
            "fail",
            &[(
                "Dockerfile",
                "FROM busybox\nRUN ip -o -4 addr show eth0; exit 3\n",
            )],
        );
        let out = embedded(
            &h,
            ns,
            &["--network-mode", "cni", ctx.to_str().expect("utf8")],
        );
        assert!(!out.success, "{}", out.stderr);
        assert!(out.stderr.contains(SUBNET_PREFIX), "{}", out.stderr);
        assert_no_network_leftovers(&h, ns, &root);
    });
}

#[test]
fn kilnd_grants_network_host_only_when_allowed_and_asked() {
    in_private_netns(|| async {
        let ns = "net-ent";
        let h = Harness::with_busybox_private(ns).await;
        let root = h.state_dir().join(format!("kilnd-root-{ns}"));
        let l = listen();
        let df = format!("FROM busybox\n{}", probe_run("--network=host", l.port));
        let ctx = h.context("ent", &[("Dockerfile", &df)]);
        let c = ctx.to_str().expect("utf8");

        {
            // A daemon in host mode still wants the entitlement, as
            // BuildKit's does.
            let k = h
                .start_kilnd_with(ns, &["--network-mode", "host"])
                .await
                .expect("kilnd starts");
            let out = remote(&h, &k, ns, &[c]);
            assert!(!out.success);
            assert!(
                out.stderr.contains("network.host is not allowed"),
                "{}",
                out.stderr
            );
            assert!(
                !out.stderr.contains("probe-"),
                "no step ran:\n{}",
                out.stderr
            );
            // Asking is not enough when the daemon does not allow it.
            let out = remote(&h, &k, ns, &["--allow", "network.host", c]);
            assert!(!out.success);
            assert!(
                out.stderr.contains(
                    "granting entitlement network.host is not allowed by build daemon configuration"
                ),
                "{}",
                out.stderr
            );
            let out = remote(&h, &k, ns, &["--allow", "network.hots", c]);
            assert!(!out.success);
            assert!(
                out.stderr.contains("unknown entitlement network.hots"),
                "{}",
                out.stderr
            );
        }
        assert_eq!(l.accepted.load(Ordering::SeqCst), 0);

        let k = h
            .start_kilnd_with(
                ns,
                &[
                    "--network-mode",
                    "cni",
                    "--allow-insecure-entitlement",
                    "network.host",
                ],
            )
            .await
            .expect("kilnd starts");
        // Allowed but not asked for: refused, with BuildKit's text.
        let out = remote(&h, &k, ns, &[c]);
        assert!(!out.success);
        assert!(
            out.stderr
                .contains("failed to solve: failed to load LLB: network.host is not allowed"),
            "{}",
            out.stderr
        );
        // Allowed and asked for: the step is on the host's network.
        let out = remote(&h, &k, ns, &["--allow", "network.host", c]).ok();
        assert!(step_printed(&out.stderr, "probe-reached"), "{}", out.stderr);
        assert!(l.accepted.load(Ordering::SeqCst) >= 1);

        // And a sandboxed step of the same daemon is isolated.
        let df = format!("FROM busybox\n{}", probe_run("", l.port));
        let ctx = h.context("ent-sandbox", &[("Dockerfile", &df)]);
        let before = l.accepted.load(Ordering::SeqCst);
        let out = remote(&h, &k, ns, &[ctx.to_str().expect("utf8")]).ok();
        assert!(
            step_printed(&out.stderr, "probe-isolated"),
            "{}",
            out.stderr
        );
        assert_eq!(l.accepted.load(Ordering::SeqCst), before);
        assert_no_network_leftovers(&h, ns, &root);
    });
}

#[test]
fn a_killed_kilnd_leaves_no_step_network_after_restart() {
    in_private_netns(|| async {
        let ns = "net-kill";
        let h = Harness::with_busybox_private(ns).await;
        let root = h.state_dir().join(format!("kilnd-root-{ns}"));
        let ctx = h.context(
            "kill",
            &[(
                "Dockerfile",
                "FROM busybox\nRUN echo net-step-running; sleep 60\n",
            )],
        );
        let mut k = h
            .start_kilnd_with(ns, &["--network-mode", "cni"])
            .await
            .expect("kilnd starts");
        let addr = k.addr();
        let mut running = h.kiln_until(
            ns,
            &[
                "--addr",
                &addr,
                "build",
                "--progress",
                "plain",
                ctx.to_str().expect("utf8"),
            ],
            "net-step-running",
        );
        let steps = root.join("net/steps");
        let attached = std::fs::read_dir(&steps).expect("steps dir").count();
        assert_eq!(attached, 1, "the running step is attached");
        k.kill();
        let _ = running.child.kill();
        let _ = running.child.wait();

        // The restarted daemon's sweep removes the dead step's container
        // and then its network.
        let k2 = h
            .start_kilnd_with(ns, &["--network-mode", "cni"])
            .await
            .expect("kilnd restarts");
        assert_no_network_leftovers(&h, ns, &root);
        drop(k2);
    });
}
