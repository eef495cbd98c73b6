// Records the git commit the binary is built from as `KILN_GIT_COMMIT`
// (empty outside a git checkout, or without git), for the version line.
// kilnd's build script includes this file, so both binaries name the
// commit by one rule. `KILN_GIT_COMMIT` in the environment wins (for
// builds from a source tarball that know their commit).

use std::path::PathBuf;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=KILN_GIT_COMMIT");
    let commit = match std::env::var("KILN_GIT_COMMIT") {
        Ok(c) => c,
        Err(_) => {
            // A new commit or checkout changes HEAD (or the branch it
            // names): rebuild then, and only then.
            if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
                let dir = PathBuf::from(dir);
                println!("cargo:rerun-if-changed={}", dir.join("HEAD").display());
                if let (Some(common), Some(head)) = (
                    git(&["rev-parse", "--git-common-dir"]),
                    git(&["symbolic-ref", "-q", "HEAD"]),
                ) {
                    let common = PathBuf::from(common);
                    // Only files that exist: cargo reruns a script whose
                    // watched file is missing on every build.
                    for file in [common.join(&head), common.join("packed-refs")] {
                        if file.exists() {
                            println!("cargo:rerun-if-changed={}", file.display());
                        }
                    }
                }
            }
            git(&["rev-parse", "HEAD"]).unwrap_or_default()
        }
    };
    println!("cargo:rustc-env=KILN_GIT_COMMIT={commit}");
}
