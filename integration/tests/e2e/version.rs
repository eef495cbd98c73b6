//! Both binaries print the one kiln version line for `--version`: kiln's
//! version (`kiln_engine::VERSION`, which kilnd also reports to BuildKit
//! clients) and the git commit they were built from.

use kiln_integration::{kiln_binary, kilnd_binary};

/// The commit the binaries were built from: what their build script
/// reads (`KILN_GIT_COMMIT`, else `git rev-parse HEAD`; none outside git).
fn commit() -> String {
    if let Ok(c) = std::env::var("KILN_GIT_COMMIT") {
        return c;
    }
    std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[test]
fn both_binaries_print_the_one_kiln_version() {
    let line = kiln_engine::version_line(&commit());
    for (name, binary) in [
        ("kiln", kiln_binary().expect("kiln")),
        ("kilnd", kilnd_binary().expect("kilnd")),
    ] {
        let out = std::process::Command::new(&binary)
            .arg("--version")
            .output()
            .expect("run --version");
        assert!(out.status.success(), "{name} --version failed");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{name} {line}\n"),
            "{name}"
        );
    }
}
