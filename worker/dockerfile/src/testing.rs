//! The fuzz harness: what each cargo-fuzz target in `benches/fuzz` does
//! with its input, kept here so the regression test that replays
//! `testdata/fuzz/<target>/` runs exactly the same code as the fuzzer.
//!
//! Each entry point must return for every input without panicking; what
//! it returns is not checked (errors are fine, only panics, hangs and
//! runaway memory are bugs).

use crate::shell::Lex;
use crate::{parse, to_graph, BuildOptions};
use std::collections::BTreeMap;

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// The fuzz targets, by the name of their directory in `testdata/fuzz`.
pub const TARGETS: [(&str, Target); 2] =
    [("dockerfile_parse", dockerfile_parse), ("expand", expand)];

/// `dockerfile_parse`: the bytes as a Dockerfile (lossy UTF-8, as a
/// client would have to send text), parsed, then converted for the last
/// stage with an empty config for every base image it names.
pub fn dockerfile_parse(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(df) = parse(&text, "Dockerfile") else {
        return;
    };
    let opts = BuildOptions::default();
    let Ok(images) = df.base_images(&opts) else {
        return;
    };
    let bases = images
        .into_iter()
        .map(|r| (r, kiln_solver::ImageConfig::default()))
        .collect::<BTreeMap<_, _>>();
    let _ = to_graph(&df, &opts, &bases);
}

/// `expand`: the first byte picks the escape character (odd: backtick),
/// the rest (lossy UTF-8) is one word expanded against a few variables,
/// as a word and as the word list `EXPOSE` reads.
pub fn expand(data: &[u8]) {
    let Some((first, rest)) = data.split_first() else {
        return;
    };
    let lex = Lex::new(if first & 1 == 1 { '`' } else { '\\' });
    let word = String::from_utf8_lossy(rest);
    let env: Vec<String> = [
        "A=a",
        "EMPTY=",
        "PATHS=/usr/local/bin:/usr/bin",
        "SPACED=one two  three",
        "NESTED=${A}",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let _ = lex.process_word(&word, &env);
    let _ = lex.process_words(&word, &env);
}

#[cfg(test)]
mod tests {
    use super::TARGETS;

    /// Every input the fuzzers ever crashed on (`testdata/fuzz/<target>/`,
    /// copied there by `benches/fuzz/run`) is replayed: it must no longer
    /// panic.
    #[test]
    fn fuzz_regressions_replay_without_panicking() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/fuzz");
        let mut replayed = 0;
        for (target, run) in TARGETS {
            let dir = root.join(target);
            let entries =
                std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
            for entry in entries {
                let path = entry.expect("directory entry").path();
                if path.file_name().is_some_and(|n| n == ".gitkeep") {
                    continue;
                }
                let data =
                    std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
                let outcome = std::panic::catch_unwind(|| run(&data));
                assert!(outcome.is_ok(), "{target}: {} panics", path.display());
                replayed += 1;
            }
        }
        // The directories hold at least the seeds kept with the targets.
        assert!(
            replayed > 0,
            "no fuzz regression inputs under {}",
            root.display()
        );
    }
}
