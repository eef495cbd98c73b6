//! `kiln build --check` (`--call=check`) in embedded mode: the build
//! checks without a build, printed as buildx prints BuildKit's lint
//! result (`Check complete, …`, then each warning with its source lines).

use kiln_frontend::check::CheckReport;
use std::io::Write;

/// The checks found something and it was printed: the command fails
/// (exit status 1, as buildx's) with nothing more to say.
#[derive(Debug)]
pub struct ChecksFound(pub usize);

impl std::fmt::Display for ChecksFound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "build checks found {} problem(s)", self.0)
    }
}

impl std::error::Error for ChecksFound {}

/// Prints `report` as buildx does: the warnings to `w`, the error that
/// stopped the checks to `err` (buildx returns it as the command's error:
/// `ERROR: ` and the message, then its snippet); `Err(ChecksFound)` when
/// it holds warnings or an error.
pub fn print(
    report: &CheckReport,
    w: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), ChecksFound> {
    let n = report.warnings.len();
    match n {
        0 if report.error.is_none() => {
            let _ = writeln!(w, "Check complete, no warnings found.");
            return Ok(());
        }
        0 => {}
        1 => {
            let _ = writeln!(w, "Check complete, 1 warning has been found!");
        }
        _ => {
            let _ = writeln!(w, "Check complete, {n} warnings have been found!");
        }
    }
    // The warnings as BuildKit's lint result prints them.
    let _ = write!(w, "{}", report.text());
    if let Some((message, line)) = &report.error {
        if n > 0 {
            let _ = writeln!(w);
        }
        let _ = w.flush();
        let _ = writeln!(err, "ERROR: {message}");
        if let Some(l) = line {
            let _ = write!(err, "{}", report.snippet(*l));
        }
        // The docker CLI's line end after the error's own.
        let _ = writeln!(err);
    }
    Err(ChecksFound(n + usize::from(report.error.is_some())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_dockerfile::parser::Warning;

    #[test]
    fn printed_as_buildx_prints_a_lint_result() {
        let report = CheckReport {
            filename: "Dockerfile".into(),
            source: "FROM busybox AS Build\nCMD echo hi\n".into(),
            warnings: vec![Warning {
                rule: "StageNameCasing".into(),
                message: "Stage name 'Build' should be lowercase".into(),
                line: 1,
            }],
            error: None,
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let r = print(&report, &mut out, &mut err);
        assert!(matches!(r, Err(ChecksFound(1))), "{r:?}");
        assert!(err.is_empty());
        assert_eq!(
            String::from_utf8_lossy(&out),
            "Check complete, 1 warning has been found!\n\
             \n\
             WARNING: StageNameCasing - https://docs.docker.com/go/dockerfile/rule/stage-name-casing/\n\
             Stage name 'Build' should be lowercase\n\
             Dockerfile:1\n\
             --------------------\n   \
             1 | >>> FROM busybox AS Build\n   \
             2 |     CMD echo hi\n   \
             3 |     \n\
             --------------------\n"
        );
        let clean = CheckReport {
            warnings: Vec::new(),
            ..report.clone()
        };
        let mut out = Vec::new();
        assert!(print(&clean, &mut out, &mut Vec::new()).is_ok());
        assert_eq!(
            String::from_utf8_lossy(&out),
            "Check complete, no warnings found.\n"
        );
        // The error goes where buildx's goes (checked against buildx v0.36
        // and buildkitd 73ed6825c).
        let broken = CheckReport {
            source: "FROM busybox AS Build\nFOO bar\n".into(),
            error: Some((
                "dockerfile parse error on line 2: unknown instruction: FOO".into(),
                Some(2),
            )),
            ..report
        };
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let r = print(&broken, &mut out, &mut err);
        assert!(matches!(r, Err(ChecksFound(2))), "{r:?}");
        assert!(String::from_utf8_lossy(&out).ends_with("--------------------\n\n"));
        assert_eq!(
            String::from_utf8_lossy(&err),
            "ERROR: dockerfile parse error on line 2: unknown instruction: FOO\n\
             Dockerfile:2\n\
             --------------------\n   \
             1 |     FROM busybox AS Build\n   \
             2 | >>> FOO bar\n   \
             3 |     \n\
             --------------------\n\n"
        );
    }
}
