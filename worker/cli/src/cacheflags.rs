//! `--cache-to` / `--cache-from` (buildx's syntax) and
//! `--build-arg BUILDKIT_INLINE_CACHE=1` (docker's and nerdctl's spelling
//! of `--cache-to type=inline`): parsed here into (type, attributes)
//! entries, checked by the engine's one parser before anything else runs,
//! in embedded and daemon mode alike.

use anyhow::Result;
use kiln_engine::remotecache::options::split_specs;
use kiln_engine::remotecache::{CacheExport, CacheImport};
use std::collections::BTreeMap;

/// One entry as a Solve request carries it.
pub use kiln_engine::remotecache::options::Entry;

/// The build arg that asks for an inline cache.
pub const INLINE_CACHE_ARG: &str = "BUILDKIT_INLINE_CACHE";

/// The cache entries of the flags: (exports, imports). A local path is
/// made absolute (it names a directory of this machine). Each entry is
/// checked by the engine's parser, so a bad one fails here.
pub fn entries(
    cache_to: &[String],
    cache_from: &[String],
    build_args: &BTreeMap<String, String>,
) -> Result<(Vec<Entry>, Vec<Entry>)> {
    let mut exports = Vec::new();
    for spec in cache_to {
        for (ty, mut attrs) in split_specs("--cache-to", spec)? {
            absolute(&ty, &mut attrs, "dest")?;
            CacheExport::parse(&ty, &attrs)?;
            exports.push((ty, attrs));
        }
    }
    let inline_arg = build_args
        .get(INLINE_CACHE_ARG)
        .is_some_and(|v| matches!(v.as_str(), "1" | "true"));
    if inline_arg && !exports.iter().any(|(t, _)| t == "inline") {
        exports.push(("inline".to_string(), BTreeMap::new()));
    }
    let mut imports = Vec::new();
    for spec in cache_from {
        for (ty, mut attrs) in split_specs("--cache-from", spec)? {
            absolute(&ty, &mut attrs, "src")?;
            CacheImport::parse(&ty, &attrs)?;
            imports.push((ty, attrs));
        }
    }
    Ok((exports, imports))
}

fn absolute(ty: &str, attrs: &mut BTreeMap<String, String>, key: &str) -> Result<()> {
    if ty != "local" {
        return Ok(());
    }
    if let Some(p) = attrs.get_mut(key) {
        if !p.is_empty() {
            *p = std::path::absolute(&*p)?.display().to_string();
        }
    }
    Ok(())
}

/// The engine's options for an embedded build.
pub fn parsed(
    exports: &[Entry],
    imports: &[Entry],
) -> Result<(Vec<CacheExport>, Vec<CacheImport>)> {
    let e = exports
        .iter()
        .map(|(t, a)| CacheExport::parse(t, a))
        .collect::<Result<Vec<_>, _>>()?;
    let i = imports
        .iter()
        .map(|(t, a)| CacheImport::parse(t, a))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((e, i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_checked_entries() {
        let (e, i) = entries(
            &["type=local,dest=rel/dir,mode=max".into()],
            &["localhost:5000/c:1,localhost:5000/c:2".into()],
            &BTreeMap::from([(INLINE_CACHE_ARG.to_string(), "1".to_string())]),
        )
        .expect("valid");
        assert_eq!(e.len(), 2, "local plus inline from the build arg");
        assert_eq!(e[1].0, "inline");
        let dest = std::path::PathBuf::from(&e[0].1["dest"]);
        assert!(dest.is_absolute() && dest.ends_with("rel/dir"), "{dest:?}");
        assert_eq!(i[0].0, "registry");
        assert_eq!(i[0].1["ref"], "localhost:5000/c:1");
        assert_eq!(
            i[1].1["ref"], "localhost:5000/c:2",
            "a bare list is one entry each"
        );
        let err = entries(&["type=s3,bucket=b".into()], &[], &BTreeMap::new()).expect_err("s3");
        assert!(err.to_string().contains("\"s3\" is not supported"), "{err}");
        let err = entries(&[], &["type=local,src=x,mode=max".into()], &BTreeMap::new())
            .expect_err("attr");
        assert!(
            err.to_string().contains("unsupported attribute mode"),
            "{err}"
        );
    }
}
