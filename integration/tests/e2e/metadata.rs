//! Issue 11's image-config slice end to end: an image kiln builds with
//! HEALTHCHECK, ONBUILD, MAINTAINER and CMD carries them in its config, and
//! a build FROM that image (embedded and through kilnd) keeps every field
//! of the base and runs its ONBUILD triggers right after FROM.

use crate::common;
use common::remote;

use common::image_config;
use kiln_integration::Harness;
use serde_json::json;

const BASE: &str = "FROM busybox\n\
MAINTAINER Jane Doe <jane@example.com>\n\
HEALTHCHECK --interval=30s --timeout=5s --start-period=1s --start-interval=100ms --retries=4 CMD wget -q -O- localhost || exit 1\n\
ONBUILD RUN echo \"trigger saw $FROM_CHILD\" > /trigger.txt\n\
ONBUILD ENV TRIGGERED=yes\n\
CMD echo base\n";

/// The child sets `FROM_CHILD` only after FROM: a trigger runs before it,
/// so it sees the variable empty.
const CHILD: &str = "FROM meta-base:1\n\
ENV FROM_CHILD=late\n\
RUN echo \"$TRIGGERED\" > /env.txt\n";

fn created_by(cfg: &serde_json::Value) -> Vec<String> {
    cfg["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|e| e["created_by"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test]
async fn base_healthcheck_and_onbuild_reach_and_run_in_the_child() {
    let ns = "meta-onbuild";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let base_ctx = h.context("meta-base", &[("Dockerfile", BASE)]);
    h.build(ns, &["-t", "meta-base:1", base_ctx.to_str().expect("utf8")])
        .ok();

    let base = image_config(&h, ns, "docker.io/library/meta-base:1");
    let healthcheck = json!({
        "Test": ["CMD-SHELL", "wget -q -O- localhost || exit 1"],
        "Interval": 30_000_000_000i64,
        "Timeout": 5_000_000_000i64,
        "StartPeriod": 1_000_000_000i64,
        "StartInterval": 100_000_000i64,
        "Retries": 4
    });
    assert_eq!(base["config"]["Healthcheck"], healthcheck);
    assert_eq!(
        base["config"]["OnBuild"],
        json!([
            "RUN echo \"trigger saw $FROM_CHILD\" > /trigger.txt",
            "ENV TRIGGERED=yes"
        ])
    );
    assert_eq!(base["author"], "Jane Doe <jane@example.com>");
    assert_eq!(base["config"]["ArgsEscaped"], true);
    assert_eq!(base["config"]["Cmd"], json!(["/bin/sh", "-c", "echo base"]));
    let history = created_by(&base);
    assert!(
        history.ends_with(&[
            "MAINTAINER Jane Doe <jane@example.com>".to_string(),
            "HEALTHCHECK {Test:[CMD-SHELL wget -q -O- localhost || exit 1] Interval:30s Timeout:5s StartPeriod:1s StartInterval:100ms Retries:4}".to_string(),
            "CMD [\"/bin/sh\" \"-c\" \"echo base\"]".to_string(),
        ]),
        "{history:?}"
    );

    // The same child built embedded and through kilnd.
    let child_ctx = h.context("meta-child", &[("Dockerfile", CHILD)]);
    let c = child_ctx.to_str().expect("utf8");
    let out = h.build(ns, &["-t", "meta-child:embedded", c]).ok();
    assert!(
        out.stderr.contains("ONBUILD RUN echo"),
        "the trigger step is named ONBUILD: {}",
        out.stderr
    );
    remote(&h, &k, ns, &["-t", "meta-child:kilnd", c]).ok();
    for tag in ["embedded", "kilnd"] {
        let name = format!("docker.io/library/meta-child:{tag}");
        let want = "trigger saw \nyes\n";
        let printed = h.run_image_expecting(
            ns,
            &name,
            &format!("meta-child-{tag}"),
            &["cat", "/trigger.txt", "/env.txt"],
            want,
        );
        assert_eq!(printed, want, "{tag}");
        let cfg = image_config(&h, ns, &name);
        assert_eq!(cfg["config"]["Healthcheck"], healthcheck, "{tag}");
        assert_eq!(cfg["author"], base["author"], "{tag}");
        assert_eq!(cfg["config"]["ArgsEscaped"], true, "{tag}");
        assert_eq!(cfg["config"]["Cmd"], base["config"]["Cmd"], "{tag}");
        // Triggers run once: the child does not pass them on.
        assert!(cfg["config"].get("OnBuild").is_none(), "{tag}: {cfg}");
        let history = created_by(&cfg);
        assert!(
            history.ends_with(&[
                "RUN /bin/sh -c echo \"trigger saw $FROM_CHILD\" > /trigger.txt # buildkit"
                    .to_string(),
                "ENV TRIGGERED=yes".to_string(),
                "ENV FROM_CHILD=late".to_string(),
                "RUN /bin/sh -c echo \"$TRIGGERED\" > /env.txt # buildkit".to_string(),
            ]),
            "{tag}: {history:?}"
        );
    }
}

/// SOURCE_DATE_EPOCH dates the image and this build's history, so two
/// builds of the same inputs (even without the cache) give the same
/// manifest; the base's history keeps its own times.
#[tokio::test]
async fn source_date_epoch_makes_rebuilds_identical() {
    let ns = "meta-sde";
    let h = Harness::with_busybox(ns).await;
    let ctx = h.context(
        "meta-sde",
        &[
            (
                "Dockerfile",
                "FROM busybox\nENV A=1\nCOPY f.txt /f.txt\nCMD [\"cat\", \"/f.txt\"]\n",
            ),
            ("f.txt", "same\n"),
        ],
    );
    let c = ctx.to_str().expect("utf8");
    let mut manifests = Vec::new();
    for tag in ["sde:1", "sde:2"] {
        h.build(
            ns,
            &[
                "--no-cache",
                "--build-arg",
                "SOURCE_DATE_EPOCH=1700000000",
                "-t",
                tag,
                c,
            ],
        )
        .ok();
        manifests.push(h.manifest(ns, &format!("docker.io/library/{tag}")));
    }
    assert_eq!(manifests[0], manifests[1]);
    let cfg = image_config(&h, ns, "docker.io/library/sde:1");
    assert_eq!(cfg["created"], "2023-11-14T22:13:20Z");
    let history = cfg["history"].as_array().expect("history");
    assert_ne!(history[0]["created"], "2023-11-14T22:13:20Z", "base entry");
    for e in &history[1..] {
        assert_eq!(e["created"], "2023-11-14T22:13:20Z", "{e}");
    }
}
