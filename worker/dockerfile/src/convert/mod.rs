//! Instructions -> build graph and image config, after BuildKit's
//! `dockerfile2llb/convert.go`.
//!
//! Each stage the target needs is dispatched in file order. A stage's state
//! is an optional [`Edge`] (`None` is scratch) plus the image config, the
//! process env (config env plus `ARG` values, like an LLB state's env) and
//! the `ARG`s in scope. `RUN` becomes an exec, `COPY`/`ADD` and `WORKDIR`
//! become file ops; the other instructions only change the config and add a
//! history entry.
//!
//! The modules follow the conversion's seams: `plan` decides the stage
//! structure before any vertex exists (bases, target, needed stages,
//! `--from` resolution), `run` and `copy` emit the vertices of `RUN` and
//! `COPY`/`ADD`, and `gocompat` holds the helpers that reproduce Go's
//! (and BuildKit's) formatting and parsing rules where the output must match
//! byte for byte. Everything else (the converter, the per-stage dispatch and
//! the metadata instructions) is here.

use crate::heredoc;
use crate::instructions::{
    ArgDecl, CmdLine, Command, Copy, Dockerfile, Instruction, KeyValue, MountKind, MountSpec, Run,
    Stage,
};
use crate::reference::normalize;
use crate::shell::{add_env, lookup, Lex};
use crate::{context_key, BuildOptions, NamedContext, ParseError, Result};
use kiln_solver::{
    CacheSharing, ChownOpt, Edge, ExecOp, FileAction, FileActionKind, FileCopy, FileInput,
    FileMkDir, FileMkFile, FileOp, Graph, HistoryEntry, ImageConfig, MergeOp, Meta, Mount,
    MountType, NetMode, Op, ProxyEnv, SecurityMode, SourceLocation, SourceOp, UserOpt, Vertex,
    VertexId,
};
use std::cell::RefCell;
use std::collections::BTreeMap;

mod checks;
mod copy;
mod ctxpaths;
pub mod epoch;
pub(crate) mod gocompat;
mod plan;
mod run;
mod ssh;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_checks;
#[cfg(test)]
mod tests_epoch;
#[cfg(test)]
mod tests_metadata;

use gocompat::*;
use plan::*;

/// `PATH` given to images whose config has none (BuildKit, non-Windows).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// `comment` of every history entry the frontend writes.
pub const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";
const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];
/// Where a `RUN <<EOF` script starting with `#!` is mounted (BuildKit's
/// place for it).
const PIPES_DIR: &str = "/dev/pipes";

/// The result of [`to_graph`].
#[derive(Clone, Debug, PartialEq)]
pub struct Build {
    pub graph: Graph,
    /// The vertex whose output 0 is the target stage's filesystem.
    pub result: VertexId,
    /// The image config of the target stage.
    pub config: ImageConfig,
    /// Stages dispatched, in order: their name, or their index when unnamed.
    pub stages_built: Vec<String>,
    /// Build check warnings (the Dockerfile's, see [`crate::lint`]), for
    /// the frontend to report (`Rule: message (line N)`).
    pub warnings: Vec<crate::parser::Warning>,
    /// The main context's paths `COPY`/`ADD` read, as written (expanded),
    /// for the check that needs the context's ignore file
    /// (CopyIgnoredFile, run by the frontend).
    pub context_reads: Vec<ContextRead>,
}

/// One source path of a `COPY`/`ADD` from the main context.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContextRead {
    pub line: usize,
    /// `ADD` (else `COPY`).
    pub add: bool,
    pub path: String,
}

impl Dockerfile {
    /// The normalized base image refs (after `ARG` expansion) of the
    /// `FROM` lines of the stages the target needs, without `scratch` and
    /// stage names, then those the needed stages read with `COPY --from`
    /// or `RUN --mount from=`, each once. The caller resolves their configs
    /// (as BuildKit resolves an image a `--from` names, as a stage of its
    /// own: `[internal] load metadata for …`, and its errors) and passes
    /// them to [`to_graph`].
    pub fn base_images(&self, opts: &BuildOptions) -> Result<Vec<String>> {
        self.base_images_with(opts, &BTreeMap::new())
    }

    /// [`Dockerfile::base_images`] once the configs of `known` base images
    /// (keyed by [`crate::BaseRef::key`]) are resolved: their ONBUILD
    /// triggers may read other stages (`COPY --from=<stage>`), which are
    /// needed too, and so may be their bases. The caller resolves the new
    /// refs and asks again until nothing is new.
    pub fn base_images_with(
        &self,
        opts: &BuildOptions,
        known: &BTreeMap<String, ImageConfig>,
    ) -> Result<Vec<String>> {
        Ok(self
            .base_image_refs_with(opts, known)?
            .iter()
            .map(crate::BaseRef::key)
            .collect())
    }

    /// [`Dockerfile::base_images`] with the platform each is needed for;
    /// a config goes into the `bases` map of [`to_graph`] under
    /// [`crate::BaseRef::key`].
    pub fn base_image_refs(&self, opts: &BuildOptions) -> Result<Vec<crate::BaseRef>> {
        self.base_image_refs_with(opts, &BTreeMap::new())
    }

    /// [`Dockerfile::base_image_refs`] once the configs of `known` base
    /// images are resolved (see [`Dockerfile::base_images_with`]).
    pub fn base_image_refs_with(
        &self,
        opts: &BuildOptions,
        known: &BTreeMap<String, ImageConfig>,
    ) -> Result<Vec<crate::BaseRef>> {
        let plan = Plan::new(self, opts, known).map_err(|e| checked(self, opts, e, None))?;
        let mut out: Vec<crate::BaseRef> = Vec::new();
        for (i, s) in plan.stages.iter().enumerate() {
            if let Base::Image(r) = &s.base {
                let b = crate::BaseRef {
                    reference: r.clone(),
                    platform: plan.op_platform(i),
                };
                if plan.needed[i] && !out.contains(&b) {
                    out.push(b);
                }
            }
        }
        for (i, reads) in plan.image_reads.iter().enumerate() {
            for r in reads.iter().filter(|_| plan.needed[i]) {
                let b = crate::BaseRef {
                    reference: r.reference.clone(),
                    platform: plan.read_image_platform(i, r.named),
                };
                if !out.contains(&b) {
                    out.push(b);
                }
            }
        }
        Ok(out)
    }
}

impl Dockerfile {
    /// The `FROM` word (else the `--from` or `from=` word) that gave base
    /// image `reference` (a normalized reference), as BuildKit names the
    /// image in its errors, and the line of its instruction (where
    /// BuildKit's error points).
    pub fn base_image_place(&self, reference: &str) -> Option<(&str, usize)> {
        let names = |w: &str| normalize(w).ok().as_deref() == Some(reference);
        self.stages
            .iter()
            .find(|s| names(&s.base))
            .map(|s| (s.base.as_str(), s.line))
            .or_else(|| {
                self.stages.iter().flat_map(|s| &s.commands).find_map(|c| {
                    plan::from_refs(c)
                        .into_iter()
                        .find(|w| names(w))
                        .map(|w| (w, c.line))
                })
            })
    }

    /// A "did you mean" for a base image that could not be resolved: the
    /// stage name (or common image name) closest to the `FROM` word that
    /// gave `reference`, as BuildKit suggests when a `FROM` names a stage
    /// that is spelt wrong.
    pub fn base_image_hint(&self, reference: &str) -> Option<String> {
        let names: Vec<&str> = self
            .stages
            .iter()
            .filter_map(|s| s.name.as_deref())
            .collect();
        let common: Vec<String> = [
            "alpine", "busybox", "centos", "debian", "golang", "ubuntu", "fedora",
        ]
        .iter()
        .flat_map(|n| [n.to_string(), format!("{n}:latest")])
        .collect();
        let mut options = names;
        options.extend(common.iter().map(String::as_str));
        self.stages
            .iter()
            .filter(|s| normalize(&s.base).ok().as_deref() == Some(reference))
            .find_map(|s| crate::suggest::search(&s.base, &options, true))
    }
}

/// The source op of base image `reference` (a normalized reference, or an
/// OCI layout's [`crate::OciLayoutRef::key`]) and its step name:
/// `FROM <ref>`, or BuildKit's `OCI load from client` for a layout; a
/// frontend input's placeholder ([`crate::INPUT_SCHEME`]) for an input.
fn image_op(reference: &str, platform: Option<kiln_solver::Platform>) -> (SourceOp, String) {
    if let Some(input) = reference.strip_prefix(crate::INPUT_SCHEME) {
        let op = SourceOp {
            identifier: reference.to_string(),
            attrs: BTreeMap::new(),
            platform,
        };
        return (op, format!("[input {input}]"));
    }
    match crate::OciLayoutRef::from_key(reference) {
        Some(l) => {
            let name = format!("[context {}] OCI load from client", l.name);
            (l.to_op(platform), name)
        }
        None => (
            SourceOp {
                identifier: format!("docker-image://{reference}"),
                attrs: BTreeMap::new(),
                platform,
            },
            format!("FROM {reference}"),
        ),
    }
}

/// Builds the graph for `opts.target` (or the last stage). `bases` maps the
/// refs of [`Dockerfile::base_images`] to their image configs.
///
/// An error comes with the build check warnings found before it
/// ([`ParseError::Checked`], when there are any): BuildKit prints each
/// as it finds it, so a failed build shows them above its error.
pub fn to_graph(
    df: &Dockerfile,
    opts: &BuildOptions,
    bases: &BTreeMap<String, ImageConfig>,
) -> Result<Build> {
    let mut found = None;
    convert(df, opts, bases, &mut found).map_err(|e| checked(df, opts, e, found))
}

/// `error` with the warnings BuildKit reports before it: `found` when
/// the converter failed (what [`warnings_until`] gave at the failing
/// line, or a lint failure's list), else, for a failure before any stage
/// was dispatched (a base name that does not expand), the checks of the
/// `FROM` lines and the parser's checks of the file.
fn checked(
    df: &Dockerfile,
    opts: &BuildOptions,
    error: ParseError,
    found: Option<Vec<crate::parser::Warning>>,
) -> ParseError {
    if matches!(error, ParseError::Graph(_) | ParseError::Checked { .. }) {
        return error;
    }
    let found = found.unwrap_or_else(|| checks_before_conversion(df, opts));
    if found.is_empty() {
        return error;
    }
    ParseError::Checked {
        error: Box::new(error),
        warnings: found,
    }
}

/// The build check warnings BuildKit has printed when a build fails
/// before any stage is converted (a base image that does not resolve):
/// the checks of every `FROM` line and the parser's checks of the file.
pub fn checks_before_conversion(
    df: &Dockerfile,
    opts: &BuildOptions,
) -> Vec<crate::parser::Warning> {
    warnings_until(df, opts, Vec::new(), 0, &|_| false)
}

/// `found` (else the `FROM` lines' checks), the parser's checks of the
/// file, and its dispatch-time checks up to line `failed_at` of the
/// stages the build `needed` (by line), as the `# check=` directive
/// keeps them, in line order.
fn warnings_until(
    df: &Dockerfile,
    opts: &BuildOptions,
    mut found: Vec<crate::parser::Warning>,
    failed_at: usize,
    needed: &dyn Fn(usize) -> bool,
) -> Vec<crate::parser::Warning> {
    if found.is_empty() {
        if let Ok(env) = global_env(df, opts, &opts.build_args) {
            found = checks::from_checks(df, opts, &env);
        }
    }
    found.extend(
        df.warnings
            .iter()
            .filter(|w| {
                !crate::lint::DISPATCH_RULES.contains(&w.rule.as_str())
                    || (w.line <= failed_at && needed(w.line))
            })
            .cloned(),
    );
    found.retain(|w| df.check_enabled(&w.rule, w.line));
    found.sort_by_key(|w| w.line);
    found.dedup();
    found
}

/// [`to_graph`]'s work; on an error once stages are dispatched, `found`
/// holds the warnings the converter had found.
fn convert(
    df: &Dockerfile,
    opts: &BuildOptions,
    bases: &BTreeMap<String, ImageConfig>,
    found: &mut Option<Vec<crate::parser::Warning>>,
) -> Result<Build> {
    let mut plan = Plan::new(df, opts, bases)?;
    let (epoch_set, epoch) = epoch::resolve(df, opts, &plan.global_env)?;
    // The resolved value stands in for the one given, from here on.
    let with_epoch;
    let opts = if epoch_set {
        let mut o = opts.clone();
        epoch::apply(&mut o.build_args, &mut plan.global_env, epoch).map_err(|m| {
            ParseError::Invalid {
                file: opts.filename.clone(),
                line: 1,
                message: format!("build argument {}: {m}", epoch::KEY),
            }
        })?;
        with_epoch = o;
        &with_epoch
    } else {
        opts
    };
    let mut conv = Converter {
        epoch,
        df,
        opts,
        bases,
        lex: Lex::new(df.escape),
        graph: Graph::default(),
        context: None,
        images: BTreeMap::new(),
        locals: BTreeMap::new(),
        states: vec![None; df.stages.len()],
        stages_built: Vec::new(),
        plan,
        graph_bytes: 0,
        unmatched: RefCell::default(),
        warnings: Vec::new(),
        context_reads: Vec::new(),
        context_paths: ctxpaths::ContextPaths::default(),
    };
    conv.warnings = checks::from_checks(df, opts, &conv.plan.global_env);
    for i in 0..df.stages.len() {
        if conv.plan.needed[i] {
            let st = match conv.dispatch_stage(i) {
                Ok(st) => st,
                Err(e) => {
                    let plan = &conv.plan;
                    let needed = |line: usize| {
                        df.stages
                            .iter()
                            .rposition(|s| s.line <= line)
                            .is_none_or(|i| plan.needed[i])
                    };
                    *found = Some(warnings_until(
                        df,
                        opts,
                        std::mem::take(&mut conv.warnings),
                        e.line().unwrap_or(usize::MAX),
                        &needed,
                    ));
                    return Err(e);
                }
            };
            conv.states[i] = Some(st);
            let s = &df.stages[i];
            conv.stages_built
                .push(s.name.clone().unwrap_or_else(|| i.to_string()));
        }
    }
    let target = conv.plan.target;
    let Some(mut st) = conv.states[target].take() else {
        return Err(conv.file_err(df.stages[target].line, "target stage was not built".into()));
    };
    for (k, v) in &opts.labels {
        st.config.labels.insert(k.clone(), v.clone());
    }
    // As BuildKit: an explicit target platform is the image's; else the
    // target stage's (its base image's) platform.
    st.config.platform = match &opts.target_platform {
        Some(p) if *p != conv.plan.build_platform => Some(p.clone()),
        Some(_) => None,
        None => conv.plan.op_platform(target),
    };
    // SOURCE_DATE_EPOCH dates this build's history entries (base entries
    // keep theirs), so the exporter's `created` is the epoch too.
    st.config.source_date_epoch = epoch;
    if let Some(e) = epoch {
        let t = kiln_types::time::rfc3339_secs(e);
        for h in st.config.history.iter_mut().filter(|h| h.created.is_none()) {
            h.created = Some(t.clone());
        }
    }
    let result = match st.edge {
        Some(e) => e.vertex,
        // An empty stage: a merge of nothing is scratch.
        None => conv.add(Vertex {
            op: Op::Merge(MergeOp { inputs: Vec::new() }),
            inputs: Vec::new(),
            name: "[internal] scratch".into(),
            location: None,
            ignore_cache: opts.no_cache,
        })?,
    };
    // The contexts' sources are limited to the paths the build reads, now
    // that every stage is dispatched (BuildKit's `FollowPaths`).
    let mut follow: Vec<(VertexId, Vec<String>)> = Vec::new();
    if let (Some(v), Some(paths)) = (conv.context, conv.context_paths.follow_paths()) {
        follow.push((v, paths));
    }
    for &v in conv.locals.values() {
        if let Some(paths) = ctxpaths::read_by_graph(&conv.graph, result, v) {
            follow.push((v, paths));
        }
    }
    for (v, paths) in follow {
        if let Op::Source(s) = &mut conv.graph.vertices[v.0].op {
            let json = serde_json::to_string(&paths).expect("a list of strings serializes to JSON");
            s.attrs
                .insert(ctxpaths::FOLLOW_PATHS_ATTR.to_string(), json);
        }
    }
    let mut warnings = conv.warnings;
    warnings.retain(|w| df.check_enabled(&w.rule, w.line));
    // The rules BuildKit runs while dispatching a stage report nothing for
    // a stage the build does not need.
    let needed = |line: usize| {
        df.stages
            .iter()
            .rposition(|s| s.line <= line)
            .is_none_or(|i| conv.plan.needed[i])
    };
    warnings.extend(
        df.warnings
            .iter()
            .filter(|w| !crate::lint::DISPATCH_RULES.contains(&w.rule.as_str()) || needed(w.line))
            .cloned(),
    );
    warnings.sort_by_key(|w| w.line);
    if df.check.error && !warnings.is_empty() {
        let mut rules: Vec<&str> = Vec::new();
        for w in &warnings {
            if !rules.contains(&w.rule.as_str()) {
                rules.push(&w.rule);
            }
        }
        *found = Some(warnings.clone());
        return Err(ParseError::Lint {
            file: opts.filename.clone(),
            rules: rules.join(", "),
        });
    }
    // Equal steps (two stages `FROM` one image) are one vertex, named as
    // BuildKit names it.
    let (graph, result) = conv.graph.merge_equal(result).map_err(ParseError::Graph)?;
    Ok(Build {
        graph,
        result,
        config: st.config,
        stages_built: conv.stages_built,
        warnings,
        context_reads: conv.context_reads,
    })
}

/// A stage's state while (and after) it is dispatched.
#[derive(Clone, Debug)]
struct StageState {
    /// The filesystem; `None` is scratch.
    edge: Option<Edge>,
    config: ImageConfig,
    /// The process env: config env plus `ARG` values (BuildKit's state env).
    env: Vec<String>,
    /// `ARG`s in scope with their values, in declaration order.
    args: Vec<(String, Option<String>)>,
    /// `CMD` was set in this stage (then `ENTRYPOINT` keeps it).
    cmd_set: bool,
    /// A `WORKDIR` was set in this stage or an in-file parent (for
    /// WorkdirRelativePath).
    workdir_set: bool,
    /// The platform of the stage's ops (`None`: the build platform).
    platform: Option<kiln_solver::Platform>,
}

struct Converter<'a> {
    /// `SOURCE_DATE_EPOCH` in seconds, when set.
    epoch: Option<i64>,
    df: &'a Dockerfile,
    opts: &'a BuildOptions,
    bases: &'a BTreeMap<String, ImageConfig>,
    lex: Lex,
    graph: Graph,
    plan: Plan,
    context: Option<VertexId>,
    images: BTreeMap<(String, Option<kiln_solver::Platform>), VertexId>,
    /// The sources of named local contexts, by local name and excludes.
    locals: BTreeMap<(String, Vec<String>), VertexId>,
    states: Vec<Option<StageState>>,
    stages_built: Vec<String>,
    /// Bytes of step definitions emitted so far (see [`MAX_GRAPH_BYTES`]).
    graph_bytes: usize,
    /// Variables the current instruction's expansions did not find, once
    /// per word that used them (for the UndefinedVar check: BuildKit warns
    /// for each word).
    unmatched: RefCell<Vec<String>>,
    /// Build check warnings found while converting (see [`checks`]).
    warnings: Vec<crate::parser::Warning>,
    /// See [`Build::context_reads`].
    context_reads: Vec<ContextRead>,
    /// The main context's paths the stages read (see [`ctxpaths`]).
    context_paths: ctxpaths::ContextPaths,
}

/// The most bytes of step definitions (each step's environment, arguments
/// and name) one conversion may emit. Every `RUN` carries a copy of its
/// stage's environment, so a few kilobytes of Dockerfile repeating `RUN`
/// after a large `ENV` would otherwise multiply into gigabytes of graph;
/// real builds stay far below this (100 steps with 4 KiB environments are
/// 400 KiB).
pub const MAX_GRAPH_BYTES: usize = 64 << 20;

/// Vertex numbering within a stage (`[build 2/4]`).
struct Progress {
    label: String,
    index: usize,
    total: usize,
    /// The stage's platform, named in each step's name when several
    /// platforms are built ([`BuildOptions::prefix_platform`]).
    platform: Option<kiln_solver::Platform>,
}

impl Progress {
    /// The next step's name: `text` under the stage's label and number;
    /// `env` is the step's environment (BuildKit names a `TARGET*`
    /// argument's platform in it), empty for a FROM.
    fn name(&mut self, text: &str, env: &[String]) -> String {
        if self.total == 0 {
            return text.to_string();
        }
        self.index += 1;
        let width = self.total.to_string().len();
        let mut label = match &self.platform {
            Some(p) => format!("{} ", gocompat::platform_prefix(p, env)),
            None => String::new(),
        };
        if !self.label.is_empty() {
            label.push_str(&self.label);
            label.push(' ');
        }
        format!("[{label}{:>width$}/{}] {text}", self.index, self.total)
    }

    /// A name under the step number [`Self::name`] gave last (a step of
    /// two vertices, such as a linked copy and its merge).
    fn same(&mut self, text: &str, env: &[String]) -> String {
        if self.total == 0 {
            return text.to_string();
        }
        self.index = self.index.saturating_sub(1);
        self.name(text, env)
    }
}

/// The inputs of one vertex, deduplicated.
#[derive(Default)]
struct Inputs(Vec<Edge>);

impl Inputs {
    fn index(&mut self, e: Edge) -> usize {
        match self.0.iter().position(|x| *x == e) {
            Some(i) => i,
            None => {
                self.0.push(e);
                self.0.len() - 1
            }
        }
    }

    fn file_input(&mut self, e: Option<Edge>) -> FileInput {
        e.map_or(FileInput::Scratch, |e| FileInput::Input(self.index(e)))
    }
}

fn history(created_by: String, layer: bool) -> HistoryEntry {
    HistoryEntry {
        created: None,
        created_by,
        comment: HISTORY_COMMENT.to_string(),
        empty_layer: !layer,
    }
}

impl Converter<'_> {
    fn file_err(&self, line: usize, message: String) -> ParseError {
        ParseError::Invalid {
            file: self.opts.filename.clone(),
            line,
            message,
        }
    }

    fn add(&mut self, vertex: Vertex) -> Result<VertexId> {
        let mut size = vertex.name.len();
        if let Op::Exec(e) = &vertex.op {
            size += e
                .meta
                .env
                .iter()
                .chain(&e.meta.args)
                .map(String::len)
                .sum::<usize>();
        }
        self.graph_bytes = self.graph_bytes.saturating_add(size);
        if self.graph_bytes > MAX_GRAPH_BYTES {
            let line = vertex.location.as_ref().map_or(0, |l| l.line);
            return Err(self.file_err(
                line,
                format!(
                    "the build's steps exceed {MAX_GRAPH_BYTES} bytes of environment and arguments"
                ),
            ));
        }
        self.graph.add(vertex).map_err(ParseError::Graph)
    }

    /// Emits one step of a stage (`RUN`, `COPY`/`ADD`, `WORKDIR`): a vertex
    /// named `[stage n/N] <instruction>` at the command's line, whose
    /// output 0 becomes the stage's filesystem.
    fn add_step(
        &mut self,
        st: &mut StageState,
        progress: &mut Progress,
        c: &Command,
        op: Op,
        inputs: Inputs,
    ) -> Result<()> {
        self.add_step_named(st, progress, c, "", op, inputs)
    }

    /// [`Self::add_step`] with `suffix` after the instruction in the
    /// vertex name (a heredoc's summary: `RUN <<EOF (echo hi...)`).
    fn add_step_named(
        &mut self,
        st: &mut StageState,
        progress: &mut Progress,
        c: &Command,
        suffix: &str,
        op: Op,
        inputs: Inputs,
    ) -> Result<()> {
        let name = progress.name(&self.display_name(c, suffix, &st.env), &st.env);
        let v = self.add(Vertex {
            op,
            inputs: inputs.0,
            name,
            location: self.location(c.line),
            ignore_cache: self.opts.no_cache,
        })?;
        st.edge = Some(Self::edge(v));
        Ok(())
    }

    /// The place of the instruction (or `FROM`) starting at `line`, to
    /// its last line.
    fn location(&self, line: usize) -> Option<SourceLocation> {
        let end_line = self
            .df
            .stages
            .iter()
            .flat_map(|s| {
                std::iter::once((s.line, s.end_line))
                    .chain(s.commands.iter().map(|c| (c.line, c.end_line)))
            })
            .find(|(l, _)| *l == line)
            .map_or(line, |(_, end)| end.max(line));
        Some(SourceLocation {
            file: self.opts.filename.clone(),
            line,
            end_line,
        })
    }

    /// Expands one word of an instruction; the names it does not find
    /// are kept for the UndefinedVar check.
    fn expand(&self, word: &str, env: &[String], line: usize) -> Result<String> {
        let (out, m) = self.lex.process_word_matches(word, env);
        self.unmatched.borrow_mut().extend(m.unmatched);
        out.map_err(|m| self.file_err(line, m))
    }

    /// [`Self::expand`] for a word BuildKit does not expand (so it does
    /// not check it either).
    fn expand_unchecked(&self, word: &str, env: &[String], line: usize) -> Result<String> {
        self.lex
            .process_word(word, env)
            .map_err(|m| self.file_err(line, m))
    }

    fn edge(v: VertexId) -> Edge {
        Edge {
            vertex: v,
            output: 0,
        }
    }

    /// A file op on scratch writing one heredoc body to `/<name>`
    /// (`[internal] preparing inline document`).
    fn inline_document(&mut self, name: &str, mode: u32, data: String) -> Result<Edge> {
        let v = self.add(Vertex {
            op: Op::File(FileOp {
                actions: vec![FileAction {
                    input: FileInput::Scratch,
                    secondary_input: None,
                    output: Some(0),
                    action: FileActionKind::MkFile(FileMkFile {
                        path: format!("/{name}"),
                        mode,
                        data: data.into_bytes(),
                        owner: None,
                        timestamp: None,
                    }),
                }],
            }),
            inputs: Vec::new(),
            name: "[internal] preparing inline document".into(),
            location: None,
            ignore_cache: self.opts.no_cache,
        })?;
        Ok(Self::edge(v))
    }

    /// The shared `local://<context>` source.
    fn context(&mut self) -> Result<Edge> {
        if let Some(v) = self.context {
            return Ok(Self::edge(v));
        }
        let mut attrs = BTreeMap::new();
        if !self.opts.excludes.is_empty() {
            let json = serde_json::to_string(&self.opts.excludes)
                .expect("a list of strings serializes to JSON");
            attrs.insert("local.excludepatterns".to_string(), json);
        }
        let v = self.add(Vertex {
            op: Op::Source(SourceOp {
                identifier: format!("local://{}", self.opts.context_name),
                attrs,
                platform: None,
            }),
            inputs: Vec::new(),
            name: "[internal] load build context".into(),
            location: None,
            ignore_cache: self.opts.no_cache,
        })?;
        self.context = Some(v);
        Ok(Self::edge(v))
    }

    /// The `local://<local>` source of a named context, one per local
    /// name and exclude patterns.
    fn local_source(&mut self, local: &str, excludes: &[String]) -> Result<Edge> {
        let key = (local.to_string(), excludes.to_vec());
        if let Some(v) = self.locals.get(&key) {
            return Ok(Self::edge(*v));
        }
        let mut attrs = BTreeMap::new();
        if !excludes.is_empty() {
            let json =
                serde_json::to_string(excludes).expect("a list of strings serializes to JSON");
            attrs.insert("local.excludepatterns".to_string(), json);
        }
        let v = self.add(Vertex {
            op: Op::Source(SourceOp {
                identifier: format!("local://{local}"),
                attrs,
                platform: None,
            }),
            inputs: Vec::new(),
            name: format!("[context {local}] load from client"),
            location: None,
            ignore_cache: self.opts.no_cache,
        })?;
        self.locals.insert(key, v);
        Ok(Self::edge(v))
    }

    /// The source vertex of a git or HTTP named context (the solver runs
    /// equal vertices once).
    fn remote_context(&mut self, op: SourceOp, name: &str) -> Result<Edge> {
        let v = self.add(Vertex {
            name: format!("[context {name}] {}", op.identifier),
            op: Op::Source(op),
            inputs: Vec::new(),
            location: None,
            ignore_cache: self.opts.no_cache,
        })?;
        Ok(Self::edge(v))
    }

    /// A `docker-image://` source for `--from=<image>`, one per ref.
    fn image_source(
        &mut self,
        reference: &str,
        platform: Option<kiln_solver::Platform>,
        line: usize,
    ) -> Result<Edge> {
        let key = (reference.to_string(), platform);
        if let Some(v) = self.images.get(&key) {
            return Ok(Self::edge(*v));
        }
        let (op, name) = image_op(reference, key.1.clone());
        let v = self.add(Vertex {
            op: Op::Source(op),
            inputs: Vec::new(),
            name,
            location: self.location(line),
            ignore_cache: self.opts.no_cache,
        })?;
        self.images.insert(key, v);
        Ok(Self::edge(v))
    }

    /// The filesystem `--from` names: a stage's state or an image.
    fn source_edge(&mut self, from: &str, current: usize, line: usize) -> Result<Option<Edge>> {
        let platform = self.plan.stages[current].platform.clone();
        match resolve_source(self.df, self.opts, from, &platform, line)? {
            Source::Stage(j) => match &self.states[j] {
                _ if j >= current => {
                    plan::defined_before(self.df, self.opts, from, j, current, line).map(|()| None)
                }
                Some(st) => Ok(st.edge),
                None => Err(self.file_err(line, format!("stage {from:?} was not built"))),
            },
            Source::Image(r) => {
                let named = plan::named_context(self.opts, from, &platform).is_some();
                let platform = self.plan.read_image_platform(current, named);
                self.image_source(&r, platform, line).map(Some)
            }
            Source::Local { local, excludes } => self.local_source(&local, &excludes).map(Some),
            Source::Remote { op, name } => self.remote_context(op, &name).map(Some),
            Source::Scratch => Ok(None),
        }
    }

    /// Emits stage `i`; with `--no-cache-filter` naming it, every vertex
    /// it adds ignores the cache.
    fn dispatch_stage(&mut self, i: usize) -> Result<StageState> {
        let first = self.graph.vertices.len();
        let st = self.dispatch_stage_inner(i)?;
        let name = self.df.stages[i]
            .name
            .clone()
            .unwrap_or_else(|| i.to_string());
        if self
            .opts
            .no_cache_filter
            .iter()
            .any(|f| f.eq_ignore_ascii_case(&name))
        {
            for v in &mut self.graph.vertices[first..] {
                v.ignore_cache = true;
            }
        }
        Ok(st)
    }

    fn dispatch_stage_inner(&mut self, i: usize) -> Result<StageState> {
        let df = self.df;
        let stage: &Stage = &df.stages[i];
        // A stage a named context replaces is that context alone.
        let replaced = self.plan.stages[i].replaced;
        let commands: &[Command] = if replaced { &[] } else { &stage.commands };
        // ONBUILD triggers of the base (an image's `OnBuild`, or the
        // parent stage's own ONBUILD lines) run first, in order.
        let triggers = match &self.plan.stages[i].base {
            _ if replaced => Vec::new(),
            Base::Stage(j) => self.states[*j]
                .as_ref()
                .map(|s| s.config.on_build.clone())
                .unwrap_or_default(),
            Base::Image(r) => self
                .bases
                .get(&self.base_key(i, r))
                .map(|c| c.on_build.clone())
                .unwrap_or_default(),
            Base::Scratch | Base::Local { .. } | Base::Remote { .. } => Vec::new(),
        };
        let triggers = self.onbuild_commands(&triggers, stage.line)?;
        let total = triggers
            .iter()
            .chain(commands)
            .filter(|c| {
                matches!(
                    c.instruction,
                    Instruction::Run(_) | Instruction::Copy(_) | Instruction::Workdir(_)
                )
            })
            .count()
            + usize::from(matches!(
                self.plan.stages[i].base,
                Base::Image(_) | Base::Local { .. } | Base::Remote { .. }
            ));
        let mut progress = Progress {
            label: self.plan.display[i].clone(),
            index: 0,
            total,
            platform: self
                .opts
                .prefix_platform
                .then(|| self.plan.stages[i].platform.clone()),
        };
        let mut st = match self.plan.stages[i].base.clone() {
            Base::Stage(j) => {
                let Some(parent) = self.states[j].clone() else {
                    return Err(self.file_err(stage.line, format!("stage {j} was not built")));
                };
                StageState {
                    cmd_set: false,
                    ..parent
                }
            }
            Base::Scratch => self.new_state(i, None, scratch_config()),
            // A directory has no config: the stage starts as on scratch.
            Base::Remote { op, name } => {
                let edge = self.remote_context(op, &name)?;
                let _ = progress.name("", &[]);
                self.new_state(i, Some(edge), scratch_config())
            }
            Base::Local { local, excludes } => {
                let edge = self.local_source(&local, &excludes)?;
                // The source counts in the stage's steps but is named
                // after the context, as in BuildKit.
                let _ = progress.name("", &[]);
                self.new_state(i, Some(edge), scratch_config())
            }
            Base::Image(r) => {
                let Some(mut config) = self.bases.get(&self.base_key(i, &r)).cloned() else {
                    return Err(ParseError::MissingBaseConfig {
                        file: self.opts.filename.clone(),
                        line: stage.line,
                        reference: r,
                    });
                };
                let sp = &self.plan.stages[i];
                if self.plan.needed[i] && !sp.from_context {
                    self.warnings.extend(checks::base_image_platform(
                        &sp.base_name,
                        &sp.platform,
                        &config,
                        stage.line,
                    ));
                }
                config.base_platform = None;
                let (op, name) = image_op(&r, self.plan.op_platform(i));
                // A layout's load counts in the stage's steps but is named
                // after the context, as a directory's.
                let name = if crate::OciLayoutRef::from_key(&r).is_some() {
                    let _ = progress.name("", &[]);
                    name
                } else {
                    progress.name(&name, &[])
                };
                let v = self.add(Vertex {
                    op: Op::Source(op),
                    inputs: Vec::new(),
                    name,
                    location: self.location(stage.line),
                    ignore_cache: self.opts.no_cache,
                })?;
                self.new_state(i, Some(Self::edge(v)), config)
            }
        };
        // The triggers are consumed: the result keeps only this stage's
        // own ONBUILD lines (a replacing image keeps its own, as BuildKit).
        if !replaced {
            st.config.on_build.clear();
        }
        for c in triggers.iter().chain(commands) {
            self.unmatched.borrow_mut().clear();
            // The env's names before the instruction (for the hints):
            // `add_env` replaces in place and appends new names, so they
            // are the first `before` entries' (no copy per instruction).
            let before = st.env.len();
            let dispatched = self.dispatch(i, &mut st, &mut progress, c);
            // Also for an instruction that fails: BuildKit reports what it
            // looked up before the error (`${u:?unset}`).
            let unmatched = self.unmatched.take();
            if !unmatched.is_empty() {
                let env = &st.env[..before.min(st.env.len())];
                self.warnings
                    .extend(checks::undefined_vars(&unmatched, &st.args, env, c.line));
            }
            dispatched?;
        }
        Ok(st)
    }

    /// Parses ONBUILD triggers (see [`parse_trigger`]).
    fn onbuild_commands(&self, triggers: &[String], line: usize) -> Result<Vec<Command>> {
        triggers
            .iter()
            .map(|t| parse_trigger(t, &self.opts.filename, line))
            .collect()
    }

    /// The `bases` key of stage `i`'s base image `reference`.
    fn base_key(&self, i: usize, reference: &str) -> String {
        crate::BaseRef {
            reference: reference.to_string(),
            platform: self.plan.op_platform(i),
        }
        .key()
    }

    fn new_state(&self, i: usize, edge: Option<Edge>, mut config: ImageConfig) -> StageState {
        if lookup(&config.env, "PATH").is_none() {
            config.env.push(format!("PATH={DEFAULT_PATH}"));
        }
        StageState {
            edge,
            env: config.env.clone(),
            config,
            args: Vec::new(),
            cmd_set: false,
            workdir_set: false,
            platform: self.plan.op_platform(i),
        }
    }

    fn dispatch(
        &mut self,
        stage: usize,
        st: &mut StageState,
        progress: &mut Progress,
        c: &Command,
    ) -> Result<()> {
        let line = c.line;
        match &c.instruction {
            Instruction::Env(kvs) => {
                let kvs = self.expand_kvs(kvs, &st.env, line)?;
                let mut msg = String::from("ENV");
                for (k, v) in kvs {
                    self.warnings.extend(checks::secret_key("ENV", &k, line));
                    msg.push_str(&format!(" {k}={v}"));
                    add_env(&mut st.env, &k, &v).map_err(|m| self.file_err(line, m))?;
                    add_env(&mut st.config.env, &k, &v).map_err(|m| self.file_err(line, m))?;
                }
                st.config.history.push(history(msg, false));
            }
            Instruction::Label(kvs) => {
                let kvs = self.expand_kvs(kvs, &st.env, line)?;
                let mut msg = String::from("LABEL");
                for (k, v) in kvs {
                    msg.push_str(&format!(" {k}={v}"));
                    st.config.labels.insert(k, v);
                }
                st.config.history.push(history(msg, false));
            }
            Instruction::Arg(args) => {
                for a in args {
                    self.warnings
                        .extend(checks::secret_key("ARG", &a.key, line));
                }
                self.dispatch_arg(st, args, line)?;
            }
            Instruction::User(u) => {
                let u = self.expand(u, &st.env, line)?;
                st.config.history.push(history(format!("USER {u}"), false));
                st.config.user = u;
            }
            Instruction::Workdir(p) => {
                let p = self.expand(p, &st.env, line)?;
                if !st.workdir_set {
                    self.warnings.extend(checks::workdir_relative(&p, line));
                }
                st.workdir_set = true;
                // BuildKit's NormalizeWorkdir: an absolute path is kept as
                // written (`//x//y`, `/a/b/` stay so in the config and the
                // history), a relative one is joined to the current workdir
                // and cleaned, an empty one keeps the current workdir.
                let base = match st.config.working_dir.as_str() {
                    "" => "/".to_string(),
                    cur if cur.starts_with('/') => cur.to_string(),
                    cur => clean(&format!("/{cur}")),
                };
                let wd = if p.is_empty() {
                    base
                } else if p.starts_with('/') {
                    p
                } else {
                    clean(&format!("{base}/{p}"))
                };
                st.config.working_dir = wd.clone();
                let layer = wd != "/";
                if layer {
                    let owner = (!st.config.user.is_empty()).then(|| chown_opt(&st.config.user));
                    let mut inputs = Inputs::default();
                    let input = inputs.file_input(st.edge);
                    self.add_step(
                        st,
                        progress,
                        c,
                        Op::File(FileOp {
                            actions: vec![FileAction {
                                input,
                                secondary_input: None,
                                output: Some(0),
                                action: FileActionKind::MkDir(FileMkDir {
                                    path: clean(&wd),
                                    mode: 0o755,
                                    make_parents: true,
                                    owner,
                                    // As BuildKit 1.16: the epoch dates
                                    // the directories WORKDIR creates.
                                    timestamp: self.epoch.map(|e| e.saturating_mul(1_000_000_000)),
                                }),
                            }],
                        }),
                        inputs,
                    )?;
                }
                st.config
                    .history
                    .push(history(format!("WORKDIR {wd}"), layer));
            }
            Instruction::Expose(ports) => {
                // BuildKit sorts the words as written, then expands and
                // parses them in that order; its history lists every port
                // of that walk, duplicates included.
                let mut raw: Vec<&String> = ports.iter().collect();
                raw.sort();
                let mut specs = Vec::new();
                for p in raw {
                    let words = self
                        .lex
                        .process_words(p, &st.env)
                        .map_err(|m| self.file_err(line, m))?;
                    for w in words {
                        self.warnings.extend(checks::expose_checks(&w, line));
                        specs.extend(parse_ports(&w).map_err(|m| self.file_err(line, m))?);
                    }
                }
                // Current BuildKit prints the parsed port list (a Go slice).
                st.config
                    .history
                    .push(history(format!("EXPOSE [{}]", specs.join(" ")), false));
                st.config.exposed_ports.extend(specs);
                st.config.exposed_ports.sort();
                st.config.exposed_ports.dedup();
            }
            Instruction::Volume(vols) => {
                let mut out = Vec::new();
                for v in vols {
                    let v = self.expand(v, &st.env, line)?;
                    if v.is_empty() {
                        return Err(self
                            .file_err(line, "VOLUME specified can not be an empty string".into()));
                    }
                    out.push(v);
                }
                st.config
                    .history
                    .push(history(format!("VOLUME [{}]", out.join(" ")), false));
                st.config.volumes.extend(out);
                st.config.volumes.sort();
                st.config.volumes.dedup();
            }
            Instruction::StopSignal(s) => {
                let s = self.expand(s, &st.env, line)?;
                if !valid_signal(&s) {
                    return Err(self.file_err(line, format!("invalid signal: {s}")));
                }
                st.config
                    .history
                    .push(history(format!("STOPSIGNAL {s}"), false));
                st.config.stop_signal = Some(s);
            }
            Instruction::Shell(sh) => {
                st.config
                    .history
                    .push(history(format!("SHELL [{}]", sh.join(" ")), false));
                st.config.shell = Some(sh.clone());
            }
            Instruction::Cmd(cmd) => {
                let args = with_shell(&st.config, cmd);
                st.config
                    .history
                    .push(history(format!("CMD {}", go_quote_list(&args)), false));
                // `CMD []` leaves no Cmd (a nil slice in BuildKit).
                st.config.cmd = (!args.is_empty()).then_some(args);
                // As BuildKit, whatever the form.
                st.config.args_escaped = true;
                st.cmd_set = true;
            }
            Instruction::Entrypoint(cmd) => {
                let args = with_shell(&st.config, cmd);
                st.config.history.push(history(
                    format!("ENTRYPOINT {}", go_quote_list(&args)),
                    false,
                ));
                st.config.entrypoint = (!args.is_empty()).then_some(args);
                if !st.cmd_set {
                    st.config.cmd = None;
                }
            }
            Instruction::Maintainer(m) => {
                st.config
                    .history
                    .push(history(format!("MAINTAINER {m}"), false));
                st.config.author = m.clone();
            }
            Instruction::Healthcheck(h) => {
                st.config
                    .history
                    .push(history(crate::metadata::healthcheck_history(h), false));
                st.config.healthcheck = Some(h.clone());
            }
            // BuildKit writes no history entry for ONBUILD.
            Instruction::Onbuild(trigger) => st.config.on_build.push(trigger.clone()),
            Instruction::Run(run) => self.dispatch_run(stage, st, progress, c, run)?,
            Instruction::Copy(cp) => self.dispatch_copy(stage, st, progress, c, cp)?,
        }
        Ok(())
    }

    /// The vertex name: the instruction as written with `suffix` (a
    /// heredoc `RUN`'s summary of its script), variables expanded where
    /// the builder expands them. A `RUN` shows the values of the variables
    /// the step's env has (a secret's env var as `****`), its quotes and
    /// unset variables as written, as BuildKit names it (its summary too).
    fn display_name(&self, c: &Command, suffix: &str, env: &[String]) -> String {
        let text = format!("{}{suffix}", c.original);
        if let Instruction::Run(run) = &c.instruction {
            let mut env = env.to_vec();
            for m in &run.mounts {
                if let (Some(crate::instructions::MountKind::Secret), Some(var)) = (m.kind, &m.env)
                {
                    let _ = crate::shell::add_env(&mut env, var, "****");
                }
            }
            return self.lex.process_name(&text, &env).unwrap_or(text);
        }
        self.lex.process_word(&text, env).unwrap_or(text)
    }

    /// Expands keys and values; every value sees the env from before the
    /// instruction.
    fn expand_kvs(
        &self,
        kvs: &[KeyValue],
        env: &[String],
        line: usize,
    ) -> Result<Vec<(String, String)>> {
        kvs.iter()
            .map(|kv| {
                Ok((
                    self.expand(&kv.key, env, line)?,
                    self.expand(&kv.value, env, line)?,
                ))
            })
            .collect()
    }

    fn dispatch_arg(&self, st: &mut StageState, args: &[ArgDecl], line: usize) -> Result<()> {
        let mut shown = Vec::new();
        for a in args {
            let override_value = self.opts.build_args.get(&a.key);
            let value = match (override_value, &a.default) {
                (Some(v), _) => Some(v.clone()),
                (None, Some(d)) => Some(self.expand(d, &st.env, line)?),
                // `ARG X` imports the global value.
                (None, None) => lookup(&self.plan.global_env, &a.key).map(str::to_string),
            };
            if let Some(v) = &value {
                // BuildKit reads these itself and never exports them.
                if !NON_ENV_ARGS.contains(&a.key.as_str()) {
                    add_env(&mut st.env, &a.key, v).map_err(|m| self.file_err(line, m))?;
                }
                shown.push(format!("{}={v}", a.key));
            } else {
                shown.push(a.key.clone());
            }
            st.args.push((a.key.clone(), value));
        }
        st.config
            .history
            .push(history(format!("ARG {}", shown.join(" ")), false));
        Ok(())
    }
}

/// Parses an ONBUILD trigger as a Dockerfile line (with the default
/// escape, as BuildKit does), located at `line` (the `FROM` that runs it)
/// and named `ONBUILD <trigger>` in progress.
pub(super) fn parse_trigger(trigger: &str, file: &str, line: usize) -> Result<Command> {
    let invalid = |message: &str| ParseError::Invalid {
        file: file.to_string(),
        line,
        message: message.into(),
    };
    let df = crate::instructions::parse(&format!("FROM scratch\n{trigger}\n"), file)
        .map_err(|e| at_line(e, line))?;
    // BuildKit's order: the parser counts the trigger's instructions (none,
    // or more than one, is an error), then a lone FROM parses as a stage,
    // which is no command (an image's trigger; the ONBUILD line refuses it).
    let instructions =
        df.stages.len() - 1 + df.stages.iter().map(|s| s.commands.len()).sum::<usize>();
    match instructions {
        0 => return Err(invalid("file with no instructions")),
        1 => {}
        _ => return Err(invalid("onbuild trigger should be a single expression")),
    }
    let [stage] = df.stages.as_slice() else {
        return Err(invalid("*instructions.Stage is not a command type"));
    };
    let [c] = stage.commands.as_slice() else {
        return Err(invalid("onbuild trigger should be a single expression"));
    };
    Ok(Command {
        line,
        end_line: line,
        original: format!("ONBUILD {}", c.original),
        word: c.word.clone(),
        instruction: c.instruction.clone(),
    })
}

/// An error of a parsed ONBUILD trigger, moved to the line of the `FROM`
/// that ran it. BuildKit parses a trigger with `ParseCommand`, not with
/// the whole file's parser: its errors come without the
/// `dockerfile parse error on line N: ` of the latter.
fn at_line(e: ParseError, at: usize) -> ParseError {
    let plain = |file, message| ParseError::Invalid {
        file,
        line: at,
        message,
    };
    match e {
        ParseError::UnknownInstruction {
            file, word, hint, ..
        } => plain(file, format!("unknown instruction: {word}{hint}")),
        ParseError::UnknownFlag {
            file, flag, hint, ..
        } => plain(file, format!("unknown flag: {flag}{hint}")),
        ParseError::Unsupported { file, feature, .. } => ParseError::Unsupported {
            file,
            line: at,
            feature,
        },
        ParseError::Instruction { file, message, .. }
        | ParseError::Invalid { file, message, .. } => plain(file, message),
        ParseError::Reference {
            file, name, err, ..
        } => ParseError::Reference {
            file,
            line: at,
            name,
            err,
        },
        other => other,
    }
}

/// The config of a stage on scratch (or on a named context's directory).
fn scratch_config() -> ImageConfig {
    ImageConfig {
        working_dir: "/".into(),
        ..ImageConfig::default()
    }
}

/// `ARG`s that are never in a step's environment (BuildKit's
/// `nonEnvArgs`).
const NON_ENV_ARGS: [&str; 2] = ["BUILDKIT_SBOM_SCAN_CONTEXT", "BUILDKIT_SBOM_SCAN_STAGE"];

/// Exec form as is; shell form prefixed with `SHELL` or `/bin/sh -c`.
fn with_shell(config: &ImageConfig, cmd: &CmdLine) -> Vec<String> {
    match cmd {
        CmdLine::Exec(v) => v.clone(),
        CmdLine::Shell(s) => {
            let mut args: Vec<String> = match &config.shell {
                Some(sh) if !sh.is_empty() => sh.clone(),
                _ => DEFAULT_SHELL.iter().map(|s| s.to_string()).collect(),
            };
            args.push(s.clone());
            args
        }
    }
}
