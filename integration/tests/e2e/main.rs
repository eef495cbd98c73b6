//! The end-to-end tests, one test binary (`e2e`): each file beside this
//! one is a module of it.
//!
//! Why one binary: each test file used to link its own executable of
//! about 43 MB (the engine, kilnd and kiln's client code, half of it line
//! tables), 74 of them, and CI on a fresh machine ran out of disk while
//! linking them. One binary links once. Every test starts its own
//! containerd, kilnd and network namespace (`kiln_integration::Harness`,
//! `netns`), so tests of different files may run side by side as tests of
//! one file always did.
//!
//! A file here runs only when it is declared below; the test
//! `every_test_file_is_a_module` fails until it is. (A file directly in
//! `tests/` is still a test binary of its own, as Cargo finds it.)

mod common;

mod addremote;
mod annotations;
mod archive;
mod build;
mod builders;
mod buildxflows;
mod buildxuser;
mod bytenames;
mod cache;
mod checks;
mod claims;
mod cli;
mod clientlocalcache;
mod compressionlevel;
mod conformance;
mod contextlinks;
mod contextpaths;
mod contexts;
mod copyfromlinks;
mod daemon;
mod daemonops;
mod deeplayers;
mod deploy;
mod dockerfile;
mod duinuse;
mod executor;
mod exportlinks;
mod faults;
mod fetchlimits;
mod frontend;
mod frontendimage;
mod frontendinputs;
mod gatewayfiles;
mod gatewayrefs;
mod gitcontext;
mod gitssh;
mod history;
mod historyresults;
mod hostile;
mod hostile_context;
mod hostile_llb;
mod hostile_tar;
mod imagenames;
mod incremental;
mod kubedriver;
mod kubedriverretry;
mod lazyblob;
mod leftovers;
mod link;
mod localcache;
mod localmultiplatform;
mod localviews;
mod mediatypes;
mod members;
mod metadata;
mod namedcontext;
mod network;
mod ocilayout;
mod onbuild;
mod outline;
mod platforms;
mod policysession;
mod progress;
mod pull;
mod push;
mod recordmemo;
mod registry;
mod remotecache;
mod remotecontext;
mod resources;
mod sandbox;
mod secrets;
mod sourceepoch;
mod ssh;
mod stepnames;
mod tenants;
mod tidy;
mod timestamps;
mod uploadcontext;
mod version;

/// Every `.rs` file and directory module beside this one is declared
/// above, so none is silently left out of the run.
#[test]
fn every_test_file_is_a_module() {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e");
    let root = include_str!("main.rs");
    let mut missing = Vec::new();
    for entry in std::fs::read_dir(&here).expect("read tests/e2e/") {
        let path = entry.expect("tests/e2e/ entry").path();
        let name = match path.file_name().and_then(|n| n.to_str()) {
            Some("main.rs") => continue,
            Some(n) if path.is_dir() => n.to_string(),
            Some(n) => match n.strip_suffix(".rs") {
                Some(stem) => stem.to_string(),
                None => continue,
            },
            None => continue,
        };
        if !root.lines().any(|l| l == format!("mod {name};")) {
            missing.push(name);
        }
    }
    assert!(
        missing.is_empty(),
        "tests/e2e/ files not declared in tests/e2e/main.rs, so never run: {missing:?}"
    );
}
