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

/// Prints `report` as buildx does; `Err(ChecksFound)` when it holds
/// warnings or an error.
pub fn print(report: &CheckReport, w: &mut dyn Write) -> Result<(), ChecksFound> {
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
        let _ = writeln!(w, "{message}");
        if let Some(l) = line {
            let _ = write!(w, "{}", report.snippet(*l));
        }
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
        let mut out = Vec::new();
        let r = print(&report, &mut out);
        assert!(matches!(r, Err(ChecksFound(1))), "{r:?}");
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
            ..report
        };
        let mut out = Vec::new();
        assert!(print(&clean, &mut out).is_ok());
        assert_eq!(
            String::from_utf8_lossy(&out),
            "Check complete, no warnings found.\n"
        );
    }
}
