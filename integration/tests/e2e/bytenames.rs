//! File names that are not UTF-8 (a Latin-1 `café`, say) are bytes on
//! Linux and in fsutil's protocol, and BuildKit copies them as they are.
//! So does kiln: a context holding such a file, directory and symlink
//! builds embedded and through kilnd (the CLI sends the names, kilnd
//! receives them), a step sees every name byte for byte, and kilnd sends
//! them back in a local export, with one a step made.

use crate::common;

use kiln_integration::Harness;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

fn name(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

/// The step's checks, in octal escapes busybox's `printf` understands:
/// `caf\351` (é in Latin-1), `d\376/x`, `l\375 -> caf\351`.
const DOCKERFILE: &str = r#"FROM busybox
COPY . /ctx/
RUN f="$(printf 'caf\351')" && d="$(printf 'd\376')" && l="$(printf 'l\375')" \
 && test "$(cat "/ctx/$f")" = latin \
 && test "$(cat "/ctx/$d/x")" = inside \
 && test "$(readlink "/ctx/$l")" = "$f" \
 && touch "/ctx/$(printf 'made\377')" \
 && echo byte-names-ok
"#;

fn context(dir: &Path) {
    std::fs::create_dir_all(dir.join(name(b"d\xfe"))).expect("mkdir");
    std::fs::write(dir.join("Dockerfile"), DOCKERFILE).expect("write");
    std::fs::write(dir.join(name(b"caf\xe9")), "latin").expect("write");
    std::fs::write(dir.join(name(b"d\xfe")).join("x"), "inside").expect("write");
    std::os::unix::fs::symlink(name(b"caf\xe9"), dir.join(name(b"l\xfd"))).expect("symlink");
}

#[tokio::test]
async fn names_that_are_not_utf8_build_and_come_back_byte_for_byte() {
    let ns = "bytenames";
    let h = Harness::with_busybox(ns).await;
    let k = h.start_kilnd(ns).await.expect("kilnd starts");
    let ctx = h.state_dir().join("ctx-bytenames");
    context(&ctx);
    let c = ctx.to_str().expect("utf-8 path");

    let out = h
        .kiln(ns, &["build", "--no-cache", "--progress", "plain", c])
        .expect("kiln runs");
    assert!(out.success, "embedded: {}", out.stderr);
    assert!(out.stderr.contains("byte-names-ok"), "{}", out.stderr);

    let dest = h.state_dir().join("out-bytenames");
    let o = format!("type=local,dest={}", dest.display());
    let out = common::remote(&h, &k, ns, &["--no-cache", "-o", &o, c]);
    assert!(out.success, "through kilnd: {}", out.stderr);
    assert!(out.stderr.contains("byte-names-ok"), "{}", out.stderr);
    let got = dest.join("ctx");
    assert_eq!(
        std::fs::read(got.join(name(b"caf\xe9"))).expect("file"),
        b"latin"
    );
    assert_eq!(
        std::fs::read(got.join(name(b"d\xfe")).join("x")).expect("file in dir"),
        b"inside"
    );
    assert_eq!(
        std::fs::read_link(got.join(name(b"l\xfd"))).expect("symlink"),
        name(b"caf\xe9")
    );
    assert!(
        got.join(name(b"made\xff")).is_file(),
        "the step's own name is exported"
    );
}
