//! Builder management (issue 13): `kiln builder create|ls|use|rm|inspect`
//! against a real kilnd and containerd. A remote builder made current
//! sends `kiln build` to its daemon, `--builder default` brings it back to
//! the embedded engine, and concurrent `kiln` processes changing the
//! store leave every builder readable.

use kiln_integration::Harness;

fn images(h: &Harness, ns: &str) -> String {
    h.ctr(ns, &["images", "ls", "-q"]).expect("ctr images ls")
}

#[tokio::test]
async fn a_current_remote_builder_receives_the_builds() {
    // The CLI's namespace and kilnd's differ, so where an image lands
    // shows which engine built it.
    let ns = "builders";
    let dns = "builders-d";
    let h = Harness::with_busybox(ns).await;
    h.import_busybox(dns, "docker.io/library/busybox:latest")
        .await
        .expect("busybox for kilnd");
    let k = h.start_kilnd(dns).await.expect("kilnd starts");
    let addr = k.addr();
    let kiln = |args: &[&str]| h.kiln(ns, args).expect("kiln runs");

    let out = kiln(&["builder", "ls"]);
    assert!(out.success, "{}", out.stderr);
    let first = out.stdout.lines().nth(1).unwrap_or_default();
    assert!(
        first.starts_with("default*") && first.contains("embedded") && first.contains("running"),
        "{}",
        out.stdout
    );

    // A builder that does not answer is not stored with --bootstrap.
    let out = kiln(&[
        "builder",
        "create",
        "--name",
        "dead",
        "--driver",
        "remote",
        "--bootstrap",
        "unix:///nonexistent/kilnd.sock",
    ]);
    assert!(!out.success, "a dead builder was bootstrapped");
    assert!(out.stderr.contains("did not start"), "{}", out.stderr);

    let out = kiln(&[
        "builder",
        "create",
        "--name",
        "Remote1",
        "--driver",
        "remote",
        "--use",
        "--bootstrap",
        &addr,
    ]);
    assert!(out.success, "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "remote1");
    let out = kiln(&["builder", "ls"]);
    assert!(!out.stdout.contains("dead"), "{}", out.stdout);
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("remote1"))
        .unwrap_or_else(|| panic!("{}", out.stdout));
    assert!(line.starts_with("remote1*"), "not current: {}", out.stdout);
    assert!(line.contains(&addr) && line.contains("running"), "{line}");
    assert!(
        line.contains("linux/"),
        "no platform from ListWorkers: {line}"
    );

    let out = kiln(&["builder", "inspect"]);
    assert!(out.success, "{}", out.stderr);
    assert!(
        out.stdout.contains("Name:          remote1"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("Driver:        remote"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("Status:        running"),
        "{}",
        out.stdout
    );

    // The current builder takes the build: the image is kilnd's.
    let ctx = h.context(
        "builders",
        &[("Dockerfile", "FROM busybox\nRUN echo hi > /f\n")],
    );
    let c = ctx.to_str().expect("utf8");
    let out = kiln(&["build", "-t", "via:remote", c]);
    assert!(
        out.success,
        "{}\nkilnd: {}\n{}",
        out.stderr,
        std::fs::read_to_string(&k.log).unwrap_or_default(),
        images(&h, dns)
    );
    assert!(
        images(&h, dns).contains("via:remote"),
        "{}",
        images(&h, dns)
    );
    assert!(!images(&h, ns).contains("via:remote"));

    // --builder default: the embedded engine, in the CLI's namespace.
    let out = kiln(&["--builder", "default", "build", "-t", "via:embedded", c]);
    assert!(out.success, "{}", out.stderr);
    assert!(images(&h, ns).contains("via:embedded"));
    assert!(!images(&h, dns).contains("via:embedded"));

    // A builder named on purpose and an address conflict.
    let out = kiln(&["--builder", "remote1", "--addr", &addr, "du"]);
    assert!(!out.success);
    assert!(out.stderr.contains("give one"), "{}", out.stderr);

    // Unsupported drivers fail by name; rm deletes the record only.
    let out = kiln(&[
        "builder",
        "create",
        "--driver",
        "docker-container",
        "--name",
        "dc",
    ]);
    assert!(!out.success);
    assert!(
        out.stderr
            .contains("driver docker-container is not supported yet"),
        "{}",
        out.stderr
    );
    let out = kiln(&["builder", "rm", "remote1"]);
    assert!(out.success, "{}", out.stderr);
    let out = kiln(&["builder", "ls"]);
    assert_eq!(out.stdout.lines().count(), 2, "{}", out.stdout);
    assert!(out.stdout.contains("default*"), "{}", out.stdout);
    let out = kiln(&["builder", "rm", "default"]);
    assert!(!out.success);
    // kilnd itself is untouched by rm and still answers.
    let out = kiln(&["--addr", &addr, "du"]);
    assert!(out.success, "{}", out.stderr);
}

#[tokio::test]
async fn concurrent_kiln_processes_keep_the_store_whole() {
    let ns = "builders-concurrent";
    let h = Harness::start().await.expect("containerd");
    let children: Vec<_> = (0..8)
        .map(|i| {
            h.kiln_command(ns)
                .expect("kiln")
                .args([
                    "builder",
                    "create",
                    "--name",
                    &format!("c{i}"),
                    "--driver",
                    "remote",
                    "--use",
                    &format!("unix:///run/kilnd-{i}.sock"),
                ])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("kiln starts")
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().expect("kiln runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let dir = h.state_dir().join("kiln-config").join("builders");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).expect("store dir") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "json") {
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&p).expect("read")).expect("whole JSON");
            assert_eq!(v["driver"], "remote", "{}", p.display());
            n += 1;
        }
    }
    assert_eq!(n, 8);
    let current = std::fs::read_to_string(h.state_dir().join("kiln-config").join("current"))
        .expect("current");
    assert!(current.starts_with('c'), "{current}");
}
