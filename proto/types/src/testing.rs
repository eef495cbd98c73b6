//! Helpers for kiln's own tests, behind the `testing` feature (crates use
//! it from their dev-dependencies).
//!
//! [`needs_root`] is the one rule for tests that need root (chown to other
//! users, device nodes, `trusted.*` xattrs, mounts): as root they run;
//! without root they say `skipped: <reason> (needs root)` locally, and fail
//! when `CI` is set, because CI runs as root and a test that silently
//! stopped running there would hide a regression.

/// Whether a test that needs root may run here: true as root. Without root
/// it panics with `this test needs root: <reason>` when the `CI`
/// environment variable is set (to anything), and otherwise prints
/// `skipped: <reason> (needs root)` to stderr and returns false, so the
/// test can return early. Call it first in such a test:
///
/// ```text
/// if !kiln_types::testing::needs_root("chown to uid 1000") {
///     return;
/// }
/// ```
pub fn needs_root(reason: &str) -> bool {
    match check(is_root(), std::env::var_os("CI").is_some(), reason) {
        RootCheck::Run => true,
        RootCheck::Skip(msg) => {
            eprintln!("{msg}");
            false
        }
        RootCheck::Fail(msg) => panic!("{msg}"),
    }
}

/// Whether the effective uid is 0.
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions, touches no memory and cannot
    // fail.
    unsafe { libc::geteuid() == 0 }
}

/// What [`needs_root`] does, decided without touching the process.
#[derive(Debug, PartialEq, Eq)]
enum RootCheck {
    Run,
    Skip(String),
    Fail(String),
}

fn check(root: bool, ci: bool, reason: &str) -> RootCheck {
    match (root, ci) {
        (true, _) => RootCheck::Run,
        (false, true) => RootCheck::Fail(format!("this test needs root: {reason}")),
        (false, false) => RootCheck::Skip(format!("skipped: {reason} (needs root)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_runs_the_test_in_ci_and_out() {
        assert_eq!(check(true, false, "mknod"), RootCheck::Run);
        assert_eq!(check(true, true, "mknod"), RootCheck::Run);
    }

    #[test]
    fn without_root_ci_fails_and_a_local_run_skips() {
        assert_eq!(
            check(false, true, "chown to uid 1000"),
            RootCheck::Fail("this test needs root: chown to uid 1000".to_string())
        );
        assert_eq!(
            check(false, false, "chown to uid 1000"),
            RootCheck::Skip("skipped: chown to uid 1000 (needs root)".to_string())
        );
    }

    /// The real helper, against whatever this process is: as root it
    /// answers true; without root it panics in CI and answers false
    /// elsewhere.
    #[test]
    fn needs_root_follows_the_effective_uid_and_ci() {
        let got = std::panic::catch_unwind(|| {
            needs_root("the helper's own test, which passes either way")
        });
        match (is_root(), std::env::var_os("CI").is_some()) {
            (true, _) => assert!(matches!(got, Ok(true)), "root must run"),
            (false, false) => assert!(matches!(got, Ok(false)), "local skip"),
            (false, true) => {
                let payload = got.expect_err("CI without root must fail");
                let msg = payload
                    .downcast_ref::<String>()
                    .expect("panic message is a String");
                assert_eq!(
                    msg,
                    "this test needs root: the helper's own test, which passes either way"
                );
            }
        }
    }
}
