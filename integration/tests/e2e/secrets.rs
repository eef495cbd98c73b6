//! `RUN --mount=type=secret` (issue 11), embedded and through kilnd: the
//! `--secret` value reaches the step (as a file and as an env var), and
//! nowhere else: not in a layer, the image config or history, the build
//! output or kilnd's log. Through kilnd the CLI lends it over its session
//! (`Secrets.GetSecret`); a required secret the client lacks fails the
//! step with BuildKit's `secret ID: not found`.

use flate2::read::GzDecoder;
use kiln_integration::{Harness, KilnOutput};
use kiln_snapshot::services::Content;
use sha2::{Digest as _, Sha256};
use std::io::Read as _;

const VALUE: &str = "kiln-secret-value-7f3a9c";

const DOCKERFILE: &str = "FROM busybox\n\
RUN --mount=type=secret,id=tok --mount=type=secret,id=tok,env=TOK,target=/t \
sha256sum /run/secrets/tok | cut -d' ' -f1 > /hash && echo \"${#TOK}\" > /len\n";

/// Every byte the image `name` stores: its config and its layers, unpacked.
async fn image_bytes(h: &Harness, ns: &str, name: &str) -> Vec<u8> {
    let client = h.client(ns).await.expect("containerd client");
    let manifest = h.manifest(ns, name);
    let mut all = Vec::new();
    let config = manifest["config"]["digest"]
        .as_str()
        .expect("config digest");
    all.extend(client.read(config).await.expect("config blob"));
    for layer in manifest["layers"].as_array().expect("layers") {
        let digest = layer["digest"].as_str().expect("layer digest");
        let blob = client.read(digest).await.expect("layer blob");
        let mut tar = Vec::new();
        GzDecoder::new(blob.as_slice())
            .read_to_end(&mut tar)
            .expect("gzip layer");
        all.extend(tar);
    }
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

fn check_output(out: &KilnOutput) {
    assert!(
        !out.stdout.contains(VALUE) && !out.stderr.contains(VALUE),
        "the secret is in the build output:\n{}\n{}",
        out.stdout,
        out.stderr
    );
}

#[tokio::test]
async fn a_secret_reaches_the_step_and_nothing_else() {
    let ns = "secrets";
    let h = Harness::with_busybox(ns).await;
    let file = h.state_dir().join("tok.secret");
    std::fs::write(&file, VALUE).expect("secret file");
    let spec = format!("id=tok,src={}", file.display());
    let ctx = h.context("secrets", &[("Dockerfile", DOCKERFILE)]);
    let c = ctx.to_str().expect("utf8");
    let want_hash = format!("{:x}\n", Sha256::digest(VALUE.as_bytes()));

    // Embedded.
    let out = h.build(ns, &["--secret", &spec, "-t", "secret:embedded", c]);
    check_output(&out);
    let out = out.ok();
    check_output(&out);
    let image = "docker.io/library/secret:embedded";
    assert_eq!(
        h.run_image_expecting(ns, image, "secret-e", &["cat", "/hash"], &want_hash),
        want_hash
    );
    let want_len = format!("{}\n", VALUE.len());
    assert_eq!(
        h.run_image_expecting(ns, image, "secret-e-len", &["cat", "/len"], &want_len),
        want_len
    );
    assert!(!contains(&image_bytes(&h, ns, image).await, VALUE));

    // Through kilnd, with no cache so the step runs again and asks the
    // client's session.
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let addr = k.addr();
    let remote = |extra: &[&str]| {
        let mut all = vec!["--addr", addr.as_str(), "build", "--progress", "plain"];
        all.extend_from_slice(extra);
        h.kiln(ns, &all).expect("kiln runs")
    };
    let out = remote(&["--no-cache", "--secret", &spec, "-t", "secret:remote", c]);
    check_output(&out);
    let out = out.ok();
    check_output(&out);
    let image = "docker.io/library/secret:remote";
    assert_eq!(
        h.run_image_expecting(ns, image, "secret-r", &["cat", "/hash"], &want_hash),
        want_hash
    );
    assert!(!contains(&image_bytes(&h, ns, image).await, VALUE));

    // A required secret the client does not have.
    let required = "FROM busybox\nRUN --mount=type=secret,id=absent,required=true true\n";
    let ctx2 = h.context("secrets-required", &[("Dockerfile", required)]);
    let out = remote(&["--no-cache", ctx2.to_str().expect("utf8")]);
    assert!(!out.success, "built without the required secret");
    assert!(
        out.stderr.contains("secret absent: not found"),
        "{}",
        out.stderr
    );
    let log = std::fs::read_to_string(&k.log).expect("kilnd log");
    assert!(!log.contains(VALUE), "the secret is in kilnd's log");
}
