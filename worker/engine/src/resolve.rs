//! The resolve rule for base images: when a `FROM` (or `COPY --from=`)
//! image is taken from the namespace's image store and when the registry
//! is asked. One rule for the frontend's config lookup and the source op,
//! for the CLI and kilnd alike.
//!
//! - [`ResolveMode::Default`] (kiln's default): a name already in the store
//!   is used without any network request; a missing one is pulled.
//! - [`ResolveMode::Pull`] (`--pull`, `image-resolve-mode=pull`): a tag is
//!   always resolved at the registry and what changed is pulled. A
//!   `name@sha256:` reference present locally is still used as it is: a
//!   digest cannot change.
//! - [`ResolveMode::Local`] (`image-resolve-mode=local`): BuildKit's
//!   "prefer local": the store's image if it has one, else a pull, which
//!   is kiln's default rule already.
//!
//! BuildKit's own default asks the registry for every tag on every build;
//! kiln's does not, so a second build of an unchanged Dockerfile makes no
//! registry request at all (docs/REGISTRY.md).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

/// How base images are resolved (BuildKit's `image-resolve-mode` values,
/// also the LLB source attribute [`LLB_ATTR`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResolveMode {
    #[default]
    Default,
    Pull,
    Local,
}

/// The source op attribute carrying a per-image mode in LLB
/// (`pb.AttrImageResolveMode`).
pub const LLB_ATTR: &str = "image.resolvemode";

/// The frontend attribute (`dockerfile.v0`).
pub const FRONTEND_ATTR: &str = "image-resolve-mode";

/// An unknown resolve mode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown image resolve mode {0:?}: expected default, pull or local")]
pub struct UnknownMode(pub String);

impl ResolveMode {
    /// Parses BuildKit's spelling (the same in frontend attributes and
    /// LLB); empty is `default`.
    pub fn parse(s: &str) -> Result<ResolveMode, UnknownMode> {
        match s {
            "" | "default" => Ok(ResolveMode::Default),
            "pull" => Ok(ResolveMode::Pull),
            "local" => Ok(ResolveMode::Local),
            other => Err(UnknownMode(other.to_string())),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ResolveMode::Default => "default",
            ResolveMode::Pull => "pull",
            ResolveMode::Local => "local",
        }
    }

    /// What to do with `name` given whether it is in the image store:
    /// the rule itself.
    pub fn decide(self, pinned_by_digest: bool, present: bool) -> Decision {
        match (self, present) {
            (ResolveMode::Local, true) => Decision::UseLocal,
            (ResolveMode::Local, false) => Decision::PullMissing,
            (ResolveMode::Default, true) => Decision::UseLocal,
            (ResolveMode::Default, false) => Decision::PullMissing,
            (ResolveMode::Pull, true) if pinned_by_digest => Decision::UseLocal,
            (ResolveMode::Pull, _) => Decision::AskRegistry,
        }
    }
}

impl fmt::Display for ResolveMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The index or manifest digest each base image resolved to in one
/// build, by name. The frontend pins the image whose config it read, and
/// the source op uses exactly that image, as BuildKit pins the digest into
/// the LLB: a tag that moves between the two cannot mix one image's config
/// with another's layers, and `pull` asks the registry once per build.
#[derive(Clone, Debug, Default)]
pub struct Pinned(Arc<Mutex<BTreeMap<String, String>>>);

impl Pinned {
    /// The key of base image `name` for `platform` (`None`: the
    /// worker's): the name, or the name and the platform.
    pub fn key(name: &str, platform: Option<&kiln_solver::Platform>) -> String {
        match platform {
            None => name.to_string(),
            Some(p) => format!("{name} {p}"),
        }
    }

    /// The digest `name` was pinned to, if any.
    pub fn get(&self, name: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
    }

    /// Pins `name` to `digest`.
    pub fn insert(&self, name: &str, digest: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), digest.to_string());
    }
}

/// The outcome of the rule for one image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Use the image store's record; no network.
    UseLocal,
    /// Not in the store: pull it.
    PullMissing,
    /// Ask the registry what the tag points at; pull if it differs.
    AskRegistry,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule() {
        use Decision::{AskRegistry, PullMissing, UseLocal};
        use ResolveMode::{Default, Local, Pull};
        // (mode, digest?, present?) -> decision
        let table = [
            (Default, false, true, UseLocal),
            (Default, false, false, PullMissing),
            (Default, true, true, UseLocal),
            (Default, true, false, PullMissing),
            (Pull, false, true, AskRegistry),
            (Pull, false, false, AskRegistry),
            (Pull, true, true, UseLocal),
            (Pull, true, false, AskRegistry),
            (Local, false, true, UseLocal),
            (Local, true, true, UseLocal),
            (Local, false, false, PullMissing),
            (Local, true, false, PullMissing),
        ];
        for (mode, digest, present, want) in table {
            assert_eq!(
                mode.decide(digest, present),
                want,
                "{mode} digest={digest} present={present}"
            );
        }
    }

    #[test]
    fn buildkit_spellings_parse_and_others_do_not() {
        assert_eq!(ResolveMode::parse(""), Ok(ResolveMode::Default));
        assert_eq!(ResolveMode::parse("default"), Ok(ResolveMode::Default));
        assert_eq!(ResolveMode::parse("pull"), Ok(ResolveMode::Pull));
        assert_eq!(ResolveMode::parse("local"), Ok(ResolveMode::Local));
        let e = ResolveMode::parse("sometimes").expect_err("unknown");
        assert_eq!(
            e.to_string(),
            "unknown image resolve mode \"sometimes\": expected default, pull or local"
        );
    }
}
