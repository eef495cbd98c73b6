//! Both binaries print the one kiln version (`kiln_engine::VERSION`, which
//! kilnd also reports to BuildKit clients) for `--version`.

use kiln_integration::{kiln_binary, kilnd_binary};

#[test]
fn both_binaries_print_the_one_kiln_version() {
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
            format!("{name} {}\n", kiln_engine::VERSION),
            "{name}"
        );
    }
}
