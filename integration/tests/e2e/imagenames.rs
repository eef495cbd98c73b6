//! How kilnd's image exporter names a result in containerd's store, as
//! BuildKit's does: `dangling-name-prefix` (nerdctl's `<none>` for a build
//! without `-t`) adds `PREFIX@DIGEST`, with or without other names unless
//! `danging-name-empty-only` (BuildKit's spelling); `name-canonical` adds
//! `NAME@DIGEST` for each name; `store=false` names nothing and only
//! pushes.

use crate::common;
use common::remote;

use kiln_integration::registry::Registry;
use kiln_integration::Harness;

const DF: &str = "FROM busybox\nRUN echo named > /named.txt\n";

/// Every image name in `ns` that points at `digest`.
fn names_of(h: &Harness, ns: &str, digest: &str) -> Vec<String> {
    let images = h.ctr(ns, &["images", "ls"]).expect("ctr images ls");
    let mut names: Vec<String> = images
        .lines()
        .skip(1)
        .filter(|l| l.split_whitespace().nth(2) == Some(digest))
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect();
    names.sort();
    names
}

/// The `containerimage.digest` and `image.name` a build's
/// `--metadata-file` says.
fn metadata(path: &std::path::Path) -> (String, String) {
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("metadata file")).expect("JSON");
    let s = |k: &str| m[k].as_str().unwrap_or_default().to_string();
    (s("containerimage.digest"), s("image.name"))
}

#[tokio::test]
async fn kilnd_names_images_as_buildkits_image_exporter() {
    let ns = "imagenames";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ctx = h.context("names", &[("Dockerfile", DF)]);
    let c = ctx.to_str().expect("utf8");
    let md = h.state_dir().join("names-metadata.json");
    let m = md.to_str().expect("utf8");

    // nerdctl's build without -t: the dangling name only.
    remote(
        &h,
        &k,
        ns,
        &[
            "--metadata-file",
            m,
            "-o",
            "type=image,unpack=true,dangling-name-prefix=<none>",
            c,
        ],
    )
    .ok();
    let (digest, reported) = metadata(&md);
    assert!(digest.starts_with("sha256:"), "{digest}");
    assert_eq!(reported, format!("<none>@{digest}"));
    assert_eq!(names_of(&h, ns, &digest), [format!("<none>@{digest}")]);

    // A name, its canonical name, and the dangling name beside them.
    let name = "docker.io/library/names:a";
    remote(
        &h,
        &k,
        ns,
        &[
            "--metadata-file",
            m,
            "-o",
            &format!("type=image,name={name},name-canonical=true,dangling-name-prefix=dang"),
            c,
        ],
    )
    .ok();
    let (same, reported) = metadata(&md);
    assert_eq!(same, digest, "the same image");
    assert_eq!(reported, format!("{name},dang@{digest}"));
    let mut want = vec![
        format!("<none>@{digest}"),
        format!("dang@{digest}"),
        name.to_string(),
        format!("{name}@{digest}"),
    ];
    want.sort();
    assert_eq!(names_of(&h, ns, &digest), want);

    // `danging-name-empty-only`: no dangling name beside a name.
    let other = "docker.io/library/names:b";
    remote(
        &h,
        &k,
        ns,
        &[
            "-o",
            &format!(
                "type=image,name={other},dangling-name-prefix=only,danging-name-empty-only=true"
            ),
            c,
        ],
    )
    .ok();
    let listed = names_of(&h, ns, &digest);
    assert!(listed.contains(&other.to_string()), "{listed:?}");
    assert!(!listed.iter().any(|n| n.starts_with("only@")), "{listed:?}");

    // `store=false`: pushed, named nowhere in the store.
    let reg = Registry::start().await.expect("registry starts");
    let pushed = reg.reference("kiln/nostore:v1");
    remote(
        &h,
        &k,
        ns,
        &[
            "-o",
            &format!("type=image,name={pushed},push=true,store=false"),
            c,
        ],
    )
    .ok();
    assert!(!h
        .ctr(ns, &["images", "ls", "-q"])
        .expect("ctr")
        .contains("nostore"));
    let fresh = Harness::start_private()
        .await
        .expect("fresh containerd starts");
    fresh
        .ctr("pulled", &["images", "pull", "--plain-http", &pushed])
        .expect("the pushed image pulls");
    assert_eq!(fresh.image_digest("pulled", &pushed), digest);
}
