//! A base image's ONBUILD `COPY --from=<stage>` reads the stage of the
//! Dockerfile that builds FROM the image (BuildKit resolves a trigger in
//! the child): the stage is built although nothing else in the child
//! needs it.

use kiln_integration::Harness;

#[tokio::test]
async fn a_base_images_trigger_copies_from_the_childs_stage() {
    let ns = "onb-image-from";
    let h = Harness::with_busybox(ns).await;
    let base = h.context(
        "onb-base",
        &[(
            "Dockerfile",
            "FROM busybox\nONBUILD COPY --from=tools /tool /tool\n",
        )],
    );
    h.build(ns, &["-t", "onb-base:1", base.to_str().expect("utf8")])
        .ok();
    let child = h.context(
        "onb-child",
        &[(
            "Dockerfile",
            "FROM busybox AS tools\nRUN echo tool > /tool\n\
             FROM onb-base:1\nRUN cat /tool > /seen\n",
        )],
    );
    let out = h
        .build(ns, &["-t", "onb-child:1", child.to_str().expect("utf8")])
        .ok();
    assert!(
        out.stderr.contains("ONBUILD COPY --from=tools /tool /tool"),
        "{}",
        out.stderr
    );
    let seen = h.run_image_expecting(
        ns,
        "docker.io/library/onb-child:1",
        "onb-run",
        &["cat", "/seen"],
        "tool\n",
    );
    assert_eq!(seen, "tool\n");
}
