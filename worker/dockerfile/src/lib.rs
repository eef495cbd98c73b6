//! The Dockerfile frontend: parser -> instructions -> build graph.
//!
//! A Dockerfile goes through three steps, one module each:
//! [`parser`] splits the text into logical lines (directives, comments,
//! continuations, flags), [`instructions`] turns those into typed
//! instructions grouped by stage, and [`convert`] walks the stages the
//! target needs and emits a [`kiln_solver::Graph`] shaped like the LLB that
//! BuildKit's `dockerfile2llb` emits, plus the image config of the result.
//! [`directives`] reads `# syntax=`/`# escape=`/`# check=`, [`heredoc`]
//! recognizes `<<EOF` words, [`suggest`] gives "did you mean" hints and
//! [`lint`] runs the build checks that need only the parse tree.
//! [`snippet`] prints BuildKit's source snippet of a line (`>>>`).
//! [`shell`] holds the word lexer (variable substitution) and
//! [`reference`](mod@reference) re-exports the image-name normalization of
//! `kiln_types::reference`, which the exporters and the registry share.
//! `testing` (feature `testing`) holds the bodies of the cargo-fuzz targets
//! in `benches/fuzz`, so their regression inputs replay as a unit test.
//!
//! Architecture invariant: this crate does no IO and names no containerd
//! type. Base image configs come in as data ([`to_graph`]'s `bases`, keyed by
//! the refs [`Dockerfile::base_images`] returns); files of the build context
//! are never read here, only named in `local://` sources.

pub mod convert;
pub mod directives;
pub mod heredoc;
pub mod instructions;
pub mod lint;
pub mod metadata;
pub mod parser;
pub mod shell;
pub mod snippet;
pub mod suggest;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

/// Image reference normalization; the rule lives in `kiln_types` so the
/// registry client and the exporters use the same one.
pub use kiln_types::reference;

use std::collections::BTreeMap;

pub use convert::epoch::{epoch_source, EpochSource, ResolvedEpoch};
pub use convert::gocompat::ram_in_bytes;
pub use convert::{checks_before_conversion, to_graph, Build, ContextRead};
pub use instructions::{parse, parse_warnings, parse_with, parse_with_check, Dockerfile};
pub use reference::RefError;

/// Errors of the Dockerfile frontend. Every message names the file, and the
/// line when one instruction is at fault (`Dockerfile:3: ...`).
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The file has no bytes at all.
    #[error("{file}: the Dockerfile cannot be empty")]
    EmptyFile { file: String },
    /// The file has no instruction at all (only blank lines or comments).
    #[error("{file}: file with no instructions")]
    Empty { file: String },
    /// The file has global `ARG`s but no `FROM`.
    #[error("{file}: dockerfile contains no stages to build")]
    NoStages { file: String },
    /// An instruction keyword that is not a Dockerfile instruction, as
    /// written, with a ` (did you mean X?)` hint when one is close.
    /// BuildKit's instruction parser refuses it, as all errors of that
    /// parser, with `dockerfile parse error on line N: ` before the message.
    #[error(
        "{file}:{line}: dockerfile parse error on line {line}: unknown instruction: {word}{hint}"
    )]
    UnknownInstruction {
        file: String,
        line: usize,
        word: String,
        hint: String,
    },
    /// A `--flag` the instruction does not take (`--name`), with a hint.
    #[error("{file}:{line}: dockerfile parse error on line {line}: unknown flag: {flag}{hint}")]
    UnknownFlag {
        file: String,
        line: usize,
        flag: String,
        hint: String,
    },
    /// A valid Dockerfile feature kiln does not implement yet.
    #[error("{file}:{line}: {feature} is not supported yet")]
    Unsupported {
        file: String,
        line: usize,
        feature: String,
    },
    /// An instruction BuildKit's instruction parser refuses (wrong
    /// number of arguments, a bad flag value, a bad `HEALTHCHECK` or
    /// `ONBUILD`, ...): the message follows BuildKit's, which puts
    /// `dockerfile parse error on line N: ` before each error of that
    /// parser (and only of that one).
    #[error("{file}:{line}: dockerfile parse error on line {line}: {message}")]
    Instruction {
        file: String,
        line: usize,
        message: String,
    },
    /// Any other malformed input about one line (BuildKit's line parser,
    /// a bad substitution, a value refused when the step is converted,
    /// ...); the message follows BuildKit's wording.
    #[error("{file}:{line}: {message}")]
    Invalid {
        file: String,
        line: usize,
        message: String,
    },
    /// An image reference (a `FROM`, `--from` or `from=` word after
    /// expansion) that does not parse: BuildKit resolves each as a stage's
    /// base image, and says so.
    #[error("{file}:{line}: failed to parse stage name {name:?}: {err}")]
    Reference {
        file: String,
        line: usize,
        name: String,
        err: RefError,
    },
    /// `--target` names no stage (with a hint when a stage name is close).
    #[error("target stage \"{target}\" could not be found{hint}")]
    TargetNotFound { target: String, hint: String },
    /// The caller did not pass the config of a base image that
    /// [`Dockerfile::base_images`] asked for.
    #[error("{file}:{line}: no image config for base image {reference}")]
    MissingBaseConfig {
        file: String,
        line: usize,
        reference: String,
    },
    /// `# check=error=true` and build checks warned.
    #[error("{file}: lint violation found for rules: {rules}")]
    Lint { file: String, rules: String },
    /// The emitted graph was refused by the solver (a bug in this crate).
    #[error("invalid build graph")]
    Graph(#[source] kiln_solver::SolveError),
    /// A conversion error (it reads as `error`) with the build check
    /// warnings found before it, which BuildKit prints above the error as
    /// it finds them ([`parse_warnings`] hands them out).
    #[error("{error}")]
    Checked {
        error: Box<ParseError>,
        warnings: Vec<parser::Warning>,
    },
}

pub type Result<T, E = ParseError> = std::result::Result<T, E>;

impl ParseError {
    /// The Dockerfile line the error is about, when it is about one (for
    /// the source snippet clients print).
    pub fn line(&self) -> Option<usize> {
        self.location().map(|(_, line)| line)
    }

    /// The file and line the error is about, when it is about one.
    fn location(&self) -> Option<(&str, usize)> {
        match self {
            ParseError::UnknownInstruction { file, line, .. }
            | ParseError::UnknownFlag { file, line, .. }
            | ParseError::Unsupported { file, line, .. }
            | ParseError::Instruction { file, line, .. }
            | ParseError::Invalid { file, line, .. }
            | ParseError::Reference { file, line, .. }
            | ParseError::MissingBaseConfig { file, line, .. } => Some((file, *line)),
            ParseError::Checked { error, .. } => error.location(),
            _ => None,
        }
    }

    /// The message as BuildKit words it, for where the line is given
    /// apart from it (a lint result's `buildError`, whose location is its
    /// own field): without the `FILE:LINE: ` that begins kiln's.
    pub fn unlocated(&self) -> String {
        let text = self.to_string();
        match self.location() {
            Some((file, line)) => text
                .strip_prefix(&format!("{file}:{line}: "))
                .map_or_else(|| text.clone(), str::to_string),
            None => text,
        }
    }
}

/// What the caller of [`to_graph`] decides: file name, target, build args,
/// labels, context, cache and platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BuildOptions {
    /// Name used in error messages and source locations, e.g. `Dockerfile`.
    pub filename: String,
    /// `--target`: the stage to build; the last stage when `None`.
    pub target: Option<String>,
    /// `--build-arg` values; they override `ARG` defaults.
    pub build_args: BTreeMap<String, String>,
    /// `--label` values, added to the final image's labels.
    pub labels: BTreeMap<String, String>,
    /// `.dockerignore` patterns, passed to the local source as
    /// `local.excludepatterns`.
    pub excludes: Vec<String>,
    /// Name of the main context; the source is `local://<context_name>`.
    pub context_name: String,
    /// `--no-cache`: every vertex gets `ignore_cache`.
    pub no_cache: bool,
    /// `--no-cache-filter`: stages (by name, or index for unnamed ones)
    /// whose vertices ignore the cache.
    pub no_cache_filter: Vec<String>,
    /// Target OS, e.g. `linux` (feeds `TARGETOS`, `TARGETPLATFORM`, ...).
    pub platform_os: String,
    /// Target architecture, e.g. `amd64`.
    pub platform_arch: String,
    /// Target architecture variant, e.g. `v7` for `linux/arm/v7`; empty
    /// when the architecture has none (`TARGETVARIANT`).
    pub platform_variant: String,
    /// The platform to build for (`--platform`), when it is not the build
    /// platform above: `TARGETPLATFORM` and friends name it, base images
    /// are picked for it and `RUN` steps run as it (under emulation).
    pub target_platform: Option<kiln_solver::Platform>,
    /// The hostname of `RUN` steps (the `hostname` frontend attribute or
    /// `BUILDKIT_SANDBOX_HOSTNAME`); empty is the runtime's default,
    /// `buildkitsandbox`.
    pub hostname: String,
    /// Extra `/etc/hosts` entries of `RUN` steps (`add-hosts`).
    pub extra_hosts: Vec<kiln_types::process::HostIp>,
    /// Resource limits of `RUN` steps (`ulimit`).
    pub ulimits: Vec<kiln_types::process::Ulimit>,
    /// cgroup limits of `RUN` steps (`memory`, `cpuquota`, ...; buildx
    /// `--resource`); empty sets none.
    pub resources: kiln_types::process::Resources,
    /// Size in bytes of the `/dev/shm` tmpfs of `RUN` steps (`shm-size`);
    /// 0 leaves the runtime's default.
    pub shm_size: u64,
    /// The network of `RUN` steps without `--network`
    /// (`force-network-mode`, buildx's `--network`): `none`, `host`, or
    /// `None` for the default.
    pub force_network: Option<String>,
    /// Named contexts (`--build-context NAME=VALUE`, the `context:NAME`
    /// frontend attributes), keyed by [`context_key`] of their name: a
    /// stage of that name is replaced by the context, and a `FROM`,
    /// `COPY --from` or `RUN --mount=from=` naming it (as a stage or an
    /// image reference) reads it.
    pub named_contexts: BTreeMap<String, NamedContext>,
    /// Convert every stage, not only those the target needs, when no
    /// target is given: the build checks' `--check` (BuildKit's lint
    /// request checks all stages then).
    pub all_stages: bool,
    /// The platforms the worker runs steps of (its own and those it
    /// emulates): without a target platform, a stage whose base image is
    /// for one of them is built for it (BuildKit's `autoDetectPlatform`).
    pub worker_platforms: Vec<kiln_solver::Platform>,
    /// The time of the source `SOURCE_DATE_EPOCH` names (`context`, a named
    /// context, a source-only stage: [`convert::epoch::epoch_source`]), as
    /// the caller resolved it; `None` when it did not.
    pub resolved_epoch: Option<convert::epoch::ResolvedEpoch>,
    /// Name each step with its stage's platform, as BuildKit does when
    /// several platforms are built (its `MultiPlatformRequested`):
    /// `[linux/arm64 build 2/3] RUN …`, `[linux/amd64->arm64 build 3/3] …`
    /// for a step of a `$BUILDPLATFORM` stage that declares `TARGET*`
    /// arguments.
    pub prefix_platform: bool,
}

impl BuildOptions {
    /// The platform the build runs on (`BUILDPLATFORM`): the worker's.
    pub fn build_platform(&self) -> kiln_solver::Platform {
        kiln_solver::Platform::new(
            &self.platform_os,
            &self.platform_arch,
            &self.platform_variant,
        )
    }

    /// The platform the build is for (`TARGETPLATFORM`).
    pub fn target_platform(&self) -> kiln_solver::Platform {
        self.target_platform
            .clone()
            .unwrap_or_else(|| self.build_platform())
    }
}

/// A base image to resolve for [`to_graph`]: a normalized reference and
/// the platform to pick from its index (`None`: the build platform's).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct BaseRef {
    pub reference: String,
    pub platform: Option<kiln_solver::Platform>,
}

impl BaseRef {
    /// The key of its config in the `bases` map of [`to_graph`]: the
    /// reference alone for the build platform, else the reference and
    /// the platform separated by a space (which no reference contains).
    pub fn key(&self) -> String {
        match &self.platform {
            None => self.reference.clone(),
            Some(p) => format!("{} {p}", self.reference),
        }
    }
}

/// What a named context stands for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamedContext {
    /// A directory of the client, read as `local://<local>` with the
    /// patterns of its own `.dockerignore` (read by the caller).
    Local {
        local: String,
        excludes: Vec<String>,
    },
    /// An image (a normalized reference, maybe with a digest): its
    /// filesystem and its config, which replaces the base's.
    Image(String),
    /// `docker-image://scratch`: an empty filesystem.
    Scratch,
    /// A git repository or an HTTP(S) file (`git@…`, `git://…`,
    /// `https://…`): the source op the frontend made of it (a git checkout,
    /// or one file named `context`, as BuildKit's named contexts), named
    /// `name` in progress. Like a directory, it has no config.
    Remote {
        op: kiln_solver::SourceOp,
        name: String,
    },
    /// `oci-layout://`: an image in an OCI layout the client holds (its
    /// filesystem and its config, as [`NamedContext::Image`]).
    OciLayout(OciLayoutRef),
}

/// A frontend input (BuildKit's `input:NAME` named context: a build
/// result the client sends with the solve, as bake does for `target:`
/// contexts) stands in the graph as a source op `input://NAME`, which
/// the caller replaces with the input's own vertices. Without an image
/// config it is a [`NamedContext::Remote`] of that op (no config, like a
/// directory); with one (`input-metadata:NAME`) a [`NamedContext::Image`]
/// of the reference `input://NAME`, whose config the caller gives in
/// `bases` as an image's.
pub const INPUT_SCHEME: &str = "input://";

/// An image of an OCI layout store the client holds, pinned by digest
/// (BuildKit's `oci-layout://` named context): the store's id (the
/// client names its layouts), the context's name as given (for progress;
/// normalized, it names the image in the source op, as BuildKit's
/// "dummy" reference) and the digest of the index or manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OciLayoutRef {
    pub store: String,
    pub name: String,
    pub digest: String,
}

impl OciLayoutRef {
    const SCHEME: &'static str = "oci-layout://";

    /// The form a stage's base image takes for this image: the key of its
    /// config in [`to_graph`]'s `bases` (with [`BaseRef::key`]) and the
    /// reference [`Dockerfile::base_image_refs`] asks the caller to
    /// resolve: `oci-layout://NAME@DIGEST#STORE` (no image reference has
    /// a `#`).
    pub fn key(&self) -> String {
        format!(
            "{}{}@{}#{}",
            Self::SCHEME,
            self.name,
            self.digest,
            self.store
        )
    }

    /// The image a [`OciLayoutRef::key`] names; `None` for any other
    /// reference.
    pub fn from_key(key: &str) -> Option<OciLayoutRef> {
        let rest = key.strip_prefix(Self::SCHEME)?;
        let (reference, store) = rest.rsplit_once('#')?;
        let (name, digest) = reference.rsplit_once('@')?;
        Some(OciLayoutRef {
            store: store.to_string(),
            name: name.to_string(),
            digest: digest.to_string(),
        })
    }

    /// BuildKit's source op for it (`llb.OCILayout`): the identifier names
    /// the image by the context's name and digest, the store is an
    /// attribute.
    pub fn to_op(&self, platform: Option<kiln_solver::Platform>) -> kiln_solver::SourceOp {
        let name = reference::Reference::parse(&self.name)
            .map(|r| r.repository())
            .unwrap_or_else(|_| self.name.clone());
        kiln_solver::SourceOp {
            identifier: format!("{}{name}@{}", Self::SCHEME, self.digest),
            attrs: BTreeMap::from([(
                kiln_solver::source::ATTR_OCI_STORE.to_string(),
                self.store.clone(),
            )]),
            platform,
        }
    }
}

/// The key a name finds its named context under: the name normalized as
/// an image reference, so `busybox`, `busybox:latest` and
/// `docker.io/library/busybox:latest` are one (BuildKit compares familiar
/// names). `None` for `scratch` and `context`, which BuildKit never looks
/// up, and for a name that is not a reference.
pub fn context_key(name: &str) -> Option<String> {
    if name.eq_ignore_ascii_case("scratch") || name.eq_ignore_ascii_case("context") {
        return None;
    }
    reference::normalize(name).ok()
}

/// The key of a named context given for one platform only
/// (`context:NAME::PLATFORM`): [`context_key`] of the name, `::`, and the
/// normalized platform. A stage built for that platform finds it before
/// the context of the plain name, as in BuildKit.
pub fn platform_context_key(key: &str, platform: &kiln_solver::Platform) -> String {
    format!("{key}::{platform}")
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            filename: "Dockerfile".to_string(),
            target: None,
            build_args: BTreeMap::new(),
            labels: BTreeMap::new(),
            excludes: Vec::new(),
            context_name: "context".to_string(),
            no_cache: false,
            no_cache_filter: Vec::new(),
            platform_os: "linux".to_string(),
            platform_arch: "amd64".to_string(),
            platform_variant: String::new(),
            target_platform: None,
            hostname: String::new(),
            extra_hosts: Vec::new(),
            ulimits: Vec::new(),
            resources: Default::default(),
            shm_size: 0,
            force_network: None,
            named_contexts: BTreeMap::new(),
            all_stages: false,
            worker_platforms: Vec::new(),
            resolved_epoch: None,
            prefix_platform: false,
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn errors_about_a_line_name_it() {
        let e = crate::instructions::parse("FROM busybox\nRUNN x\n", "Dockerfile")
            .expect_err("unknown instruction");
        assert_eq!(e.line(), Some(2), "{e}");
        let e = crate::instructions::parse("", "Dockerfile").expect_err("empty");
        assert_eq!(e.line(), None, "{e}");
    }
}
