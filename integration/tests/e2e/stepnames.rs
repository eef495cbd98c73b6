//! Step names in progress (issue 12): a `RUN` shows the values of the
//! variables its step has set, its quotes and unset variables as written
//! and a secret's env var as `****`, as buildkitd names the same lines;
//! embedded and through kilnd alike. A `RUN --mount` gives the build a
//! source of its own in BuildKit, so even this one-stage build labels its
//! stage (`stage-0`).

use crate::common;

use common::remote;
use kiln_integration::Harness;

const DF: &str = r#"FROM busybox
ARG NAME=world
ENV DIR=/opt/$NAME
RUN echo $NAME ${DIR} "$NAME" '$NAME' $UNSET ${UNSET:-d} \$NAME
RUN --mount=type=secret,id=s,env=TOKEN test -n "$TOKEN" && echo $NAME
"#;

const RUN1: &str =
    r#"[stage-0 2/3] RUN echo world /opt/world "world" '$NAME' $UNSET ${UNSET:-d} $NAME"#;
const RUN2: &str =
    r#"[stage-0 3/3] RUN --mount=type=secret,id=s,env=TOKEN test -n "****" && echo world"#;

#[tokio::test]
async fn run_steps_are_named_as_buildkit_names_them() {
    let ns = "stepnames";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ctx = h.context("stepnames", &[("Dockerfile", DF), ("s", "hush\n")]);
    let c = ctx.to_str().expect("utf8");
    let secret = format!("id=s,src={}", ctx.join("s").display());
    let embedded = h.build(ns, &["--secret", &secret, c]).ok();
    let remote = remote(&h, &k, ns, &["--no-cache", "--secret", &secret, c]).ok();
    for out in [&embedded, &remote] {
        for name in [RUN1, RUN2] {
            assert!(
                out.stderr.lines().any(|l| l.ends_with(name)),
                "{name}\n{}",
                out.stderr
            );
        }
        assert!(!out.stderr.contains("hush"), "{}", out.stderr);
    }
}
