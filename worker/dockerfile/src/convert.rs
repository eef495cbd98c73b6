//! Instructions -> build graph and image config, after BuildKit's
//! `dockerfile2llb/convert.go`.
//!
//! Each stage the target needs is dispatched in file order. A stage's state
//! is an optional [`Edge`] (`None` is scratch) plus the image config, the
//! process env (config env plus `ARG` values, like an LLB state's env) and
//! the `ARG`s in scope. `RUN` becomes an exec, `COPY`/`ADD` and `WORKDIR`
//! become file ops; the other instructions only change the config and add a
//! history entry.

use crate::instructions::{
    ArgDecl, CmdLine, Command, Copy, Dockerfile, Instruction, KeyValue, MountKind, MountSpec, Run,
    Stage,
};
use crate::reference::normalize;
use crate::shell::{add_env, lookup, Lex};
use crate::{BuildOptions, ParseError, Result};
use kiln_solver::{
    CacheSharing, ChownOpt, Edge, ExecOp, FileAction, FileActionKind, FileCopy, FileInput,
    FileMkDir, FileOp, Graph, HistoryEntry, ImageConfig, MergeOp, Meta, Mount, MountType, NetMode,
    Op, SourceLocation, SourceOp, UserOpt, Vertex, VertexId,
};
use std::collections::BTreeMap;

/// `PATH` given to images whose config has none (BuildKit, non-Windows).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
/// `comment` of every history entry the frontend writes.
pub const HISTORY_COMMENT: &str = "buildkit.dockerfile.v0";
const DEFAULT_SHELL: [&str; 2] = ["/bin/sh", "-c"];

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
}

impl Dockerfile {
    /// The normalized base image refs (after `ARG` expansion) of the
    /// `FROM` lines of the stages the target needs, without `scratch` and
    /// stage names, each once. The caller resolves their configs and passes
    /// them to [`to_graph`]. Images used only by `COPY --from` or
    /// `RUN --mount=from=` are not listed: their config is not needed.
    pub fn base_images(&self, opts: &BuildOptions) -> Result<Vec<String>> {
        let plan = Plan::new(self, opts)?;
        let mut out: Vec<String> = Vec::new();
        for (i, s) in plan.stages.iter().enumerate() {
            if let Base::Image(r) = &s.base {
                if plan.needed[i] && !out.contains(r) {
                    out.push(r.clone());
                }
            }
        }
        Ok(out)
    }
}

/// Builds the graph for `opts.target` (or the last stage). `bases` maps the
/// refs of [`Dockerfile::base_images`] to their image configs.
pub fn to_graph(
    df: &Dockerfile,
    opts: &BuildOptions,
    bases: &BTreeMap<String, ImageConfig>,
) -> Result<Build> {
    let plan = Plan::new(df, opts)?;
    let mut conv = Converter {
        df,
        opts,
        bases,
        lex: Lex::new(df.escape),
        graph: Graph::default(),
        context: None,
        images: BTreeMap::new(),
        states: vec![None; df.stages.len()],
        stages_built: Vec::new(),
        plan,
    };
    for i in 0..df.stages.len() {
        if conv.plan.needed[i] {
            let st = conv.dispatch_stage(i)?;
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
    Ok(Build {
        graph: conv.graph,
        result,
        config: st.config,
        stages_built: conv.stages_built,
    })
}

/// What a stage starts from.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Base {
    Scratch,
    Stage(usize),
    /// A normalized image ref.
    Image(String),
}

#[derive(Clone, Debug)]
struct StagePlan {
    base: Base,
}

/// Where `COPY --from` / `--mount from=` reads.
enum Source {
    Stage(usize),
    Image(String),
}

/// The stage structure, computed before any vertex is emitted: global
/// args, each stage's base, the target and which stages it needs.
struct Plan {
    /// Global `ARG`s with values and the platform args, `K=V`.
    global_env: Vec<String>,
    stages: Vec<StagePlan>,
    target: usize,
    needed: Vec<bool>,
    /// Stage labels for vertex names (`build`, `stage-1`, or none when the
    /// build has a single stage).
    display: Vec<String>,
}

impl Plan {
    fn new(df: &Dockerfile, opts: &BuildOptions) -> Result<Plan> {
        let lex = Lex::new(df.escape);
        let file = &opts.filename;
        let invalid = |line: usize, message: String| ParseError::Invalid {
            file: file.clone(),
            line,
            message,
        };
        let platform = format!("{}/{}", opts.platform_os, opts.platform_arch);
        let target_name = opts.target.clone().unwrap_or_else(|| "default".into());
        let mut global_env: Vec<String> = Vec::new();
        for (k, v) in [
            ("TARGETPLATFORM", platform.as_str()),
            ("TARGETOS", &opts.platform_os),
            ("TARGETARCH", &opts.platform_arch),
            ("TARGETVARIANT", ""),
            ("BUILDPLATFORM", &platform),
            ("BUILDOS", &opts.platform_os),
            ("BUILDARCH", &opts.platform_arch),
            ("BUILDVARIANT", ""),
            ("TARGETSTAGE", &target_name),
        ] {
            let v = opts.build_args.get(k).map_or(v, String::as_str);
            add_env(&mut global_env, k, v);
        }
        for c in &df.global_args {
            if let Instruction::Arg(args) = &c.instruction {
                for a in args {
                    let value = match (opts.build_args.get(&a.key), &a.default) {
                        (Some(v), _) => Some(v.clone()),
                        (None, Some(d)) => Some(
                            lex.process_word(d, &global_env)
                                .map_err(|m| invalid(c.line, m))?,
                        ),
                        (None, None) => None,
                    };
                    if let Some(v) = value {
                        add_env(&mut global_env, &a.key, &v);
                    }
                }
            }
        }

        let mut stages: Vec<StagePlan> = Vec::new();
        for (i, s) in df.stages.iter().enumerate() {
            let base_name = lex
                .process_word(&s.base, &global_env)
                .map_err(|m| invalid(s.line, m))?;
            if base_name.is_empty() {
                return Err(invalid(
                    s.line,
                    format!("base name ({}) should not be blank", s.base),
                ));
            }
            if let Some(p) = &s.platform {
                let p = lex
                    .process_word(p, &global_env)
                    .map_err(|m| invalid(s.line, m))?;
                if p != platform {
                    return Err(ParseError::Unsupported {
                        file: file.clone(),
                        line: s.line,
                        feature: format!("FROM --platform={p} (building for {platform})"),
                    });
                }
            }
            let lower = base_name.to_lowercase();
            let base = if lower == "scratch" {
                Base::Scratch
            } else if let Some(j) = df.stages[..i]
                .iter()
                .position(|p| p.name.as_deref() == Some(&lower))
            {
                Base::Stage(j)
            } else if let Some(j) = lower.parse::<usize>().ok().filter(|j| *j < i) {
                Base::Stage(j)
            } else {
                Base::Image(normalize(&base_name).map_err(|err| ParseError::Reference {
                    file: file.clone(),
                    line: s.line,
                    err,
                })?)
            };
            stages.push(StagePlan { base });
        }

        let target = match &opts.target {
            None => df.stages.len() - 1,
            Some(t) => {
                let t = t.to_lowercase();
                df.stages
                    .iter()
                    .position(|s| s.name.as_deref() == Some(&t))
                    .ok_or_else(|| ParseError::TargetNotFound {
                        target: opts.target.clone().unwrap_or_default(),
                    })?
            }
        };

        // Dependencies, then the stages reachable from the target.
        let mut image_sources = 0;
        let mut deps: Vec<Vec<usize>> = Vec::new();
        for (i, s) in df.stages.iter().enumerate() {
            let mut d = Vec::new();
            if let Base::Stage(j) = stages[i].base {
                d.push(j);
            }
            for c in &s.commands {
                for from in from_refs(c) {
                    match resolve_source(df, from, i, file, c.line)? {
                        Source::Stage(j) => d.push(j),
                        Source::Image(_) => image_sources += 1,
                    }
                }
            }
            deps.push(d);
        }
        let mut needed = vec![false; df.stages.len()];
        let mut todo = vec![target];
        while let Some(i) = todo.pop() {
            if !needed[i] {
                needed[i] = true;
                todo.extend(deps[i].iter().copied());
            }
        }

        let single = df.stages.len() + image_sources == 1;
        let display = df
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| match &s.name {
                _ if single => String::new(),
                Some(n) => n.clone(),
                None => format!("stage-{i}"),
            })
            .collect();
        Ok(Plan {
            global_env,
            stages,
            target,
            needed,
            display,
        })
    }
}

/// The `--from` / `from=` names a command reads from.
fn from_refs(c: &Command) -> Vec<&str> {
    match &c.instruction {
        Instruction::Copy(cp) => cp.from.iter().map(String::as_str).collect(),
        Instruction::Run(r) => r.mounts.iter().filter_map(|m| m.from.as_deref()).collect(),
        _ => Vec::new(),
    }
}

/// Resolves `--from=<name|index|image>` seen in stage `current`.
fn resolve_source(
    df: &Dockerfile,
    from: &str,
    current: usize,
    file: &str,
    line: usize,
) -> Result<Source> {
    let invalid = |message: String| ParseError::Invalid {
        file: file.to_string(),
        line,
        message,
    };
    if from.contains('$') {
        return Err(invalid(
            "variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround"
                .into(),
        ));
    }
    let stage_label = |i: usize| {
        df.stages[i]
            .name
            .clone()
            .unwrap_or_else(|| format!("stage-{i}"))
    };
    let lower = from.to_lowercase();
    let found = match from.parse::<usize>() {
        Ok(idx) if idx < df.stages.len() => Some(idx),
        Ok(idx) => return Err(invalid(format!("invalid stage index {idx}"))),
        Err(_) => df
            .stages
            .iter()
            .position(|s| s.name.as_deref() == Some(&lower)),
    };
    match found {
        Some(j) if j < current => Ok(Source::Stage(j)),
        Some(_) => Err(invalid(format!(
            "cannot copy from stage {from:?}, it needs to be defined before current stage {:?}",
            stage_label(current)
        ))),
        None => normalize(from)
            .map(Source::Image)
            .map_err(|err| ParseError::Reference {
                file: file.to_string(),
                line,
                err,
            }),
    }
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
}

struct Converter<'a> {
    df: &'a Dockerfile,
    opts: &'a BuildOptions,
    bases: &'a BTreeMap<String, ImageConfig>,
    lex: Lex,
    graph: Graph,
    plan: Plan,
    context: Option<VertexId>,
    images: BTreeMap<String, VertexId>,
    states: Vec<Option<StageState>>,
    stages_built: Vec<String>,
}

/// Vertex numbering within a stage (`[build 2/4]`).
struct Progress {
    label: String,
    index: usize,
    total: usize,
}

impl Progress {
    fn name(&mut self, text: &str) -> String {
        if self.total == 0 {
            return text.to_string();
        }
        self.index += 1;
        let width = self.total.to_string().len();
        let label = if self.label.is_empty() {
            String::new()
        } else {
            format!("{} ", self.label)
        };
        format!("[{label}{:>width$}/{}] {text}", self.index, self.total)
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

/// Go's `%q` of a `[]string`: `["a" "b"]`.
fn go_quote_list(v: &[String]) -> String {
    let items: Vec<String> = v.iter().map(|s| go_quote(s)).collect();
    format!("[{}]", items.join(" "))
}

fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `path.Clean` for absolute slash paths.
fn clean(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in p.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    format!("/{}", parts.join("/"))
}

/// `p` against directory `dir`, cleaned; a trailing `/` or `/.` of `p` is
/// kept (BuildKit's `NormalizePath(dir, p, keepSlash=true)`).
fn resolve_keep_slash(dir: &str, p: &str) -> String {
    let p = if p.is_empty() || p == "." { "./" } else { p };
    let joined = if p.starts_with('/') {
        p.to_string()
    } else {
        format!("{dir}/{p}")
    };
    let mut out = clean(&joined);
    if p.ends_with('/') && !out.ends_with('/') {
        out.push('/');
    } else if p.ends_with("/.") {
        if out != "/" {
            out.push('/');
        }
        out.push('.');
    }
    out
}

/// `user[:group]` as an LLB chown (numbers by id, others by name).
fn chown_opt(spec: &str) -> ChownOpt {
    let one = |s: &str| match s.parse::<u32>() {
        Ok(id) => UserOpt::ById(id),
        Err(_) => UserOpt::ByName(s.to_string()),
    };
    match spec.split_once(':') {
        Some((u, "")) => ChownOpt {
            user: Some(one(u)),
            group: Some(UserOpt::ById(0)),
        },
        Some((u, g)) => ChownOpt {
            user: Some(one(u)),
            group: Some(one(g)),
        },
        None => ChownOpt {
            user: Some(one(spec)),
            group: None,
        },
    }
}

/// `units.RAMInBytes`: `64m`, `1g`, `512k`, `100` (binary multiples).
fn ram_in_bytes(s: &str) -> Option<u64> {
    let lower = s.trim().to_lowercase();
    let digits_end = lower
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(lower.len());
    let (num, unit) = lower.split_at(digits_end);
    let n: f64 = num.parse().ok()?;
    let mult: u64 = match unit.trim_end_matches('b').trim_end_matches('i') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return None,
    };
    Some((n * mult as f64) as u64)
}

fn valid_signal(s: &str) -> bool {
    const SIGNALS: &[&str] = &[
        "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
        "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
        "TRAP", "TSTP", "TTIN", "TTOU", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU", "XFSZ",
    ];
    if let Ok(n) = s.parse::<u32>() {
        return n > 0 && n < 65;
    }
    let upper = s.to_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    if SIGNALS.contains(&name) {
        return true;
    }
    // RTMIN, RTMIN+3, RTMAX-2
    ["RTMIN", "RTMAX"].iter().any(|rt| {
        name.strip_prefix(rt).is_some_and(|tail| {
            tail.is_empty()
                || (tail.starts_with(['+', '-'])
                    && tail.len() > 1
                    && tail[1..].bytes().all(|b| b.is_ascii_digit()))
        })
    })
}

/// `nat.ParsePortSpecs` for one spec: `80`, `80/udp`, `8000-8002`,
/// `ip:host:ctr` (only the container port counts).
fn parse_ports(spec: &str) -> std::result::Result<Vec<String>, String> {
    let (port, proto) = match spec.rsplit_once('/') {
        Some((p, proto)) => (p, proto.to_lowercase()),
        None => (spec, "tcp".to_string()),
    };
    let port = port.rsplit(':').next().unwrap_or(port);
    let parse = |s: &str| {
        s.parse::<u16>()
            .map_err(|_| format!("invalid containerPort: {s}"))
    };
    let (lo, hi) = match port.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => (parse(port)?, parse(port)?),
    };
    if hi < lo {
        return Err(format!("invalid range specified for container: {port}"));
    }
    Ok((lo..=hi).map(|p| format!("{p}/{proto}")).collect())
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
        self.graph.add(vertex).map_err(ParseError::Graph)
    }

    fn location(&self, line: usize) -> Option<SourceLocation> {
        Some(SourceLocation {
            file: self.opts.filename.clone(),
            line,
        })
    }

    fn expand(&self, word: &str, env: &[String], line: usize) -> Result<String> {
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
            }),
            inputs: Vec::new(),
            name: "[internal] load build context".into(),
            location: None,
            ignore_cache: self.opts.no_cache,
        })?;
        self.context = Some(v);
        Ok(Self::edge(v))
    }

    /// A `docker-image://` source for `--from=<image>`, one per ref.
    fn image_source(&mut self, reference: &str, line: usize) -> Result<Edge> {
        if let Some(v) = self.images.get(reference) {
            return Ok(Self::edge(*v));
        }
        let v = self.add(Vertex {
            op: Op::Source(SourceOp {
                identifier: format!("docker-image://{reference}"),
                attrs: BTreeMap::new(),
            }),
            inputs: Vec::new(),
            name: format!("FROM {reference}"),
            location: self.location(line),
            ignore_cache: self.opts.no_cache,
        })?;
        self.images.insert(reference.to_string(), v);
        Ok(Self::edge(v))
    }

    /// The filesystem `--from` names: a stage's state or an image.
    fn source_edge(&mut self, from: &str, current: usize, line: usize) -> Result<Option<Edge>> {
        match resolve_source(self.df, from, current, &self.opts.filename, line)? {
            Source::Stage(j) => match &self.states[j] {
                Some(st) => Ok(st.edge),
                None => Err(self.file_err(line, format!("stage {from:?} was not built"))),
            },
            Source::Image(r) => self.image_source(&r, line).map(Some),
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
        let total = stage
            .commands
            .iter()
            .filter(|c| {
                matches!(
                    c.instruction,
                    Instruction::Run(_) | Instruction::Copy(_) | Instruction::Workdir(_)
                )
            })
            .count()
            + usize::from(matches!(self.plan.stages[i].base, Base::Image(_)));
        let mut progress = Progress {
            label: self.plan.display[i].clone(),
            index: 0,
            total,
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
            Base::Scratch => {
                let config = ImageConfig {
                    working_dir: "/".into(),
                    ..ImageConfig::default()
                };
                self.new_state(None, config)
            }
            Base::Image(r) => {
                let Some(config) = self.bases.get(&r).cloned() else {
                    return Err(ParseError::MissingBaseConfig {
                        file: self.opts.filename.clone(),
                        line: stage.line,
                        reference: r,
                    });
                };
                let v = self.add(Vertex {
                    op: Op::Source(SourceOp {
                        identifier: format!("docker-image://{r}"),
                        attrs: BTreeMap::new(),
                    }),
                    inputs: Vec::new(),
                    name: progress.name(&format!("FROM {r}")),
                    location: self.location(stage.line),
                    ignore_cache: self.opts.no_cache,
                })?;
                self.new_state(Some(Self::edge(v)), config)
            }
        };
        for c in &stage.commands {
            self.dispatch(i, &mut st, &mut progress, c)?;
        }
        Ok(st)
    }

    fn new_state(&self, edge: Option<Edge>, mut config: ImageConfig) -> StageState {
        if lookup(&config.env, "PATH").is_none() {
            config.env.push(format!("PATH={DEFAULT_PATH}"));
        }
        StageState {
            edge,
            env: config.env.clone(),
            config,
            args: Vec::new(),
            cmd_set: false,
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
                    msg.push_str(&format!(" {k}={v}"));
                    add_env(&mut st.env, &k, &v);
                    add_env(&mut st.config.env, &k, &v);
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
            Instruction::Arg(args) => self.dispatch_arg(st, args, line)?,
            Instruction::User(u) => {
                let u = self.expand(u, &st.env, line)?;
                st.config.history.push(history(format!("USER {u}"), false));
                st.config.user = u;
            }
            Instruction::Workdir(p) => {
                let p = self.expand(p, &st.env, line)?;
                let base = if st.config.working_dir.is_empty() {
                    "/"
                } else {
                    &st.config.working_dir
                };
                let wd = if p.starts_with('/') {
                    clean(&p)
                } else {
                    clean(&format!("{base}/{p}"))
                };
                st.config.working_dir = wd.clone();
                let layer = wd != "/";
                if layer {
                    let owner = (!st.config.user.is_empty()).then(|| chown_opt(&st.config.user));
                    let mut inputs = Inputs::default();
                    let input = inputs.file_input(st.edge);
                    let name = progress.name(&self.display_name(c, &st.env));
                    let v = self.add(Vertex {
                        op: Op::File(FileOp {
                            actions: vec![FileAction {
                                input,
                                secondary_input: None,
                                output: Some(0),
                                action: FileActionKind::MkDir(FileMkDir {
                                    path: wd.clone(),
                                    mode: 0o755,
                                    make_parents: true,
                                    owner,
                                    timestamp: None,
                                }),
                            }],
                        }),
                        inputs: inputs.0,
                        name,
                        location: self.location(line),
                        ignore_cache: self.opts.no_cache,
                    })?;
                    st.edge = Some(Self::edge(v));
                }
                st.config
                    .history
                    .push(history(format!("WORKDIR {wd}"), layer));
            }
            Instruction::Expose(ports) => {
                let mut specs = Vec::new();
                for p in ports {
                    let words = self
                        .lex
                        .process_words(p, &st.env)
                        .map_err(|m| self.file_err(line, m))?;
                    for w in words {
                        specs.extend(parse_ports(&w).map_err(|m| self.file_err(line, m))?);
                    }
                }
                specs.sort();
                specs.dedup();
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
                    return Err(self.file_err(line, format!("Invalid signal: {s}")));
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
                st.config.cmd = Some(args);
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
            }
            Instruction::Run(run) => self.dispatch_run(stage, st, progress, c, run)?,
            Instruction::Copy(cp) => self.dispatch_copy(stage, st, progress, c, cp)?,
        }
        Ok(())
    }

    /// The vertex name: the instruction as written, variables expanded
    /// where the builder expands them.
    fn display_name(&self, c: &Command, env: &[String]) -> String {
        if matches!(c.instruction, Instruction::Run(_)) {
            return c.original.clone();
        }
        self.lex
            .process_word(&c.original, env)
            .unwrap_or_else(|_| c.original.clone())
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
                add_env(&mut st.env, &a.key, v);
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

    fn dispatch_run(
        &mut self,
        stage: usize,
        st: &mut StageState,
        progress: &mut Progress,
        c: &Command,
        run: &Run,
    ) -> Result<()> {
        let line = c.line;
        let args = with_shell(&st.config, &run.cmd);
        let cwd = if st.config.working_dir.is_empty() {
            "/".to_string()
        } else {
            st.config.working_dir.clone()
        };
        let network = match run.network.as_deref() {
            None | Some("default") => NetMode::Unset,
            Some("none") => NetMode::None,
            Some("host") => NetMode::Host,
            Some(n) => return Err(self.file_err(line, format!("unsupported network mode: {n}"))),
        };
        let mut inputs = Inputs::default();
        let mut mounts = vec![Mount {
            input: st.edge.map(|e| inputs.index(e)),
            selector: String::new(),
            dest: "/".into(),
            output: Some(0),
            readonly: false,
            mount_type: MountType::Bind,
        }];
        for m in &run.mounts {
            mounts.push(self.run_mount(stage, st, &cwd, m, &mut inputs, line)?);
        }
        let name = progress.name(&self.display_name(c, &st.env));
        let v = self.add(Vertex {
            op: Op::Exec(ExecOp {
                meta: Meta {
                    args: args.clone(),
                    env: st.env.clone(),
                    cwd,
                    user: st.config.user.clone(),
                    hostname: String::new(),
                },
                mounts,
                network,
            }),
            inputs: inputs.0,
            name,
            location: self.location(line),
            ignore_cache: self.opts.no_cache,
        })?;
        st.edge = Some(Self::edge(v));

        // `RUN |N K=V ... cmd`: the args in scope, with their current
        // value, each once in first-seen order.
        let mut build_env: Vec<(String, String)> = Vec::new();
        for (k, v) in &st.args {
            let value = lookup(&st.env, k)
                .map(str::to_string)
                .unwrap_or_else(|| v.clone().unwrap_or_default());
            match build_env.iter_mut().find(|(key, _)| key == k) {
                Some(slot) => slot.1 = value,
                None => build_env.push((k.clone(), value)),
            }
        }
        let mut words: Vec<String> = Vec::new();
        if !build_env.is_empty() {
            words.push(format!("|{}", build_env.len()));
            words.extend(build_env.iter().map(|(k, v)| format!("{k}={v}")));
        }
        words.extend(args);
        st.config
            .history
            .push(history(format!("RUN {} # buildkit", words.join(" ")), true));
        Ok(())
    }

    fn run_mount(
        &mut self,
        stage: usize,
        st: &StageState,
        cwd: &str,
        m: &MountSpec,
        inputs: &mut Inputs,
        line: usize,
    ) -> Result<Mount> {
        let ex = |s: &Option<String>| -> Result<Option<String>> {
            s.as_deref()
                .map(|w| self.expand(w, &st.env, line))
                .transpose()
        };
        let flag = |s: Option<String>, name: &str| -> Result<bool> {
            match s.as_deref() {
                None => Ok(false),
                Some("true" | "1") => Ok(true),
                Some("false" | "0") => Ok(false),
                Some(v) => Err(self.file_err(line, format!("invalid value for {name}: {v}"))),
            }
        };
        let kind = m.kind.unwrap_or(MountKind::Bind);
        let target = ex(&m.target)?.unwrap_or_default();
        let dest = if target.starts_with('/') {
            clean(&target)
        } else {
            clean(&format!("{cwd}/{target}"))
        };
        if dest == "/" {
            return Err(self.file_err(line, "invalid mount target \"/\"".into()));
        }
        for (v, name) in [(&m.uid, "uid"), (&m.gid, "gid")] {
            if let Some(v) = ex(v)? {
                if v.parse::<u32>().is_err() {
                    return Err(self.file_err(line, format!("invalid value for {name}: {v}")));
                }
            }
        }
        if let Some(mode) = ex(&m.mode)? {
            if u32::from_str_radix(&mode, 8).is_err() {
                return Err(self.file_err(line, format!("invalid value for mode: {mode}")));
            }
        }
        if kind != MountKind::Cache && (m.uid.is_some() || m.gid.is_some() || m.mode.is_some()) {
            return Err(self.file_err(
                line,
                "mode/uid/gid are only supported for cache, secret and ssh mounts".into(),
            ));
        }
        let readonly = flag(ex(&m.readonly)?, "readonly")?;
        match kind {
            MountKind::Cache => {
                if m.from.is_some() || m.source.is_some() {
                    return Err(ParseError::Unsupported {
                        file: self.opts.filename.clone(),
                        line,
                        feature: "RUN --mount=type=cache with from or source".into(),
                    });
                }
                let sharing = match ex(&m.sharing)?.as_deref() {
                    None | Some("shared") => CacheSharing::Shared,
                    Some("private") => CacheSharing::Private,
                    Some("locked") => CacheSharing::Locked,
                    Some(s) => {
                        return Err(self.file_err(line, format!("unsupported sharing value {s:?}")))
                    }
                };
                let id = ex(&m.id)?
                    .filter(|s| !s.is_empty())
                    .unwrap_or_else(|| dest.clone());
                Ok(Mount {
                    input: None,
                    selector: String::new(),
                    dest,
                    output: None,
                    readonly,
                    mount_type: MountType::Cache { id, sharing },
                })
            }
            MountKind::Tmpfs => {
                let size = match ex(&m.size)? {
                    None => 0,
                    Some(s) => ram_in_bytes(&s)
                        .ok_or_else(|| self.file_err(line, format!("invalid size: {s}")))?,
                };
                Ok(Mount {
                    input: None,
                    selector: String::new(),
                    dest,
                    output: None,
                    readonly: false,
                    mount_type: MountType::Tmpfs { size },
                })
            }
            MountKind::Bind => {
                let rw = flag(ex(&m.readwrite)?, "readwrite")?;
                let selector = match ex(&m.source)? {
                    Some(s) if !s.is_empty() => clean(&format!("/{s}")),
                    _ => String::new(),
                };
                let src = match &m.from {
                    Some(from) => self.source_edge(from, stage, line)?,
                    None => Some(self.context()?),
                };
                Ok(Mount {
                    input: src.map(|e| inputs.index(e)),
                    selector,
                    dest,
                    output: None,
                    readonly: !rw,
                    mount_type: MountType::Bind,
                })
            }
        }
    }

    fn dispatch_copy(
        &mut self,
        stage: usize,
        st: &mut StageState,
        progress: &mut Progress,
        c: &Command,
        cp: &Copy,
    ) -> Result<()> {
        let line = c.line;
        let what = if cp.add { "ADD" } else { "COPY" };
        let chown = cp
            .chown
            .as_ref()
            .map(|s| self.expand(s, &st.env, line))
            .transpose()?;
        let chmod = cp
            .chmod
            .as_ref()
            .map(|s| self.expand(s, &st.env, line))
            .transpose()?;
        let mode = match &chmod {
            None => None,
            Some(m) => match u32::from_str_radix(m, 8) {
                Ok(v) if v <= 0o7777 => Some(v),
                _ => {
                    return Err(self.file_err(
                        line,
                        format!("invalid chmod parameter: '{m}'. it should be octal string and between 0 and 07777"),
                    ))
                }
            },
        };
        let excludes = cp
            .excludes
            .iter()
            .map(|e| self.expand(e, &st.env, line))
            .collect::<Result<Vec<_>>>()?;
        let mut srcs = Vec::new();
        for s in &cp.srcs {
            let s = self.expand(s, &st.env, line)?;
            let is_url = s.starts_with("http://") || s.starts_with("https://");
            let is_git =
                s.starts_with("git@") || s.starts_with("git://") || s.starts_with("ssh://");
            match (cp.add, is_url, is_git) {
                (false, true, _) => {
                    return Err(self.file_err(line, "source can't be a URL for COPY".into()))
                }
                (false, _, true) => {
                    return Err(self.file_err(line, "source can't be a git ref for COPY".into()))
                }
                (true, true, _) | (true, _, true) => {
                    return Err(ParseError::Unsupported {
                        file: self.opts.filename.clone(),
                        line,
                        feature: if is_url {
                            "ADD from a URL".into()
                        } else {
                            "ADD from a git repository".into()
                        },
                    })
                }
                _ => {}
            }
            srcs.push(s);
        }
        let dest_written = self.expand(&cp.dest, &st.env, line)?;
        let cwd = if st.config.working_dir.is_empty() {
            "/"
        } else {
            &st.config.working_dir
        };
        let mut dest = resolve_keep_slash(cwd, &dest_written);
        if srcs.len() > 1 && !dest.ends_with('/') {
            dest.push('/');
        }

        let source = match &cp.from {
            Some(from) => self.source_edge(from, stage, line)?,
            None => Some(self.context()?),
        };
        let mut inputs = Inputs::default();
        let first_input = inputs.file_input(st.edge);
        let secondary = inputs.file_input(source);
        let owner = chown.as_deref().map(chown_opt);
        let n = srcs.len();
        let actions = srcs
            .iter()
            .enumerate()
            .map(|(k, src)| FileAction {
                input: if k == 0 {
                    first_input
                } else {
                    FileInput::Action(k - 1)
                },
                secondary_input: Some(secondary),
                output: (k + 1 == n).then_some(0),
                action: FileActionKind::Copy(FileCopy {
                    src: clean(&format!("/{src}")),
                    dest: dest.clone(),
                    owner: owner.clone(),
                    mode,
                    follow_symlink: true,
                    dir_copy_contents: true,
                    attempt_unpack_docker_compatibility: cp.add,
                    create_dest_path: true,
                    allow_wildcard: true,
                    allow_empty_wildcard: true,
                    include_patterns: Vec::new(),
                    exclude_patterns: excludes.clone(),
                    timestamp: None,
                }),
            })
            .collect();
        let name = progress.name(&self.display_name(c, &st.env));
        let v = self.add(Vertex {
            op: Op::File(FileOp { actions }),
            inputs: inputs.0,
            name,
            location: self.location(line),
            ignore_cache: self.opts.no_cache,
        })?;
        st.edge = Some(Self::edge(v));

        let mut msg = String::from(what);
        if let Some(c) = &chown {
            msg.push_str(&format!(" --chown={c}"));
        }
        if let Some(m) = &chmod {
            msg.push_str(&format!(" --chmod={m}"));
        }
        for s in &srcs {
            msg.push(' ');
            msg.push_str(s);
        }
        msg.push_str(&format!(" {dest_written} # buildkit"));
        st.config.history.push(history(msg, true));
        Ok(())
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse;
    use std::fmt::Write as _;

    /// The config test base images have: PATH set, a CMD, one layer.
    fn base_config(reference: &str) -> ImageConfig {
        ImageConfig {
            env: vec!["PATH=/usr/bin:/bin".into(), "HOME=/root".into()],
            cmd: Some(vec!["sh".into()]),
            working_dir: String::new(),
            labels: BTreeMap::from([("base".to_string(), reference.to_string())]),
            history: vec![HistoryEntry {
                created: Some("2024-01-01T00:00:00Z".into()),
                created_by: format!("ADD rootfs.tar / # {reference}"),
                comment: String::new(),
                empty_layer: false,
            }],
            ..ImageConfig::default()
        }
    }

    /// Parses and converts `src` with `opts`, giving every base image
    /// [`base_config`].
    fn build(src: &str, opts: &BuildOptions) -> Result<Build> {
        let df = parse(src, &opts.filename)?;
        let bases = df
            .base_images(opts)?
            .into_iter()
            .map(|r| {
                let c = base_config(&r);
                (r, c)
            })
            .collect();
        to_graph(&df, opts, &bases)
    }

    fn input(i: &FileInput) -> String {
        match i {
            FileInput::Scratch => "scratch".into(),
            FileInput::Input(n) => format!("in{n}"),
            FileInput::Action(n) => format!("act{n}"),
        }
    }

    fn owner(o: &Option<ChownOpt>) -> String {
        let one = |u: &Option<UserOpt>| match u {
            None => "-".to_string(),
            Some(UserOpt::ById(n)) => n.to_string(),
            Some(UserOpt::ByName(s)) => s.clone(),
        };
        match o {
            None => String::new(),
            Some(c) => format!(" owner={}:{}", one(&c.user), one(&c.group)),
        }
    }

    /// The vertices the result needs, then the image config.
    fn render(b: &Build) -> String {
        let mut out = String::new();
        let needed = b.graph.needed_for(b.result);
        for id in &needed {
            let v = b.graph.vertex(*id);
            let loc = v
                .location
                .as_ref()
                .map(|l| format!(" @{}:{}", l.file, l.line))
                .unwrap_or_default();
            let ins: Vec<String> = v
                .inputs
                .iter()
                .map(|e| format!("v{}", e.vertex.0))
                .collect();
            let ins = if ins.is_empty() {
                String::new()
            } else {
                format!(" <- [{}]", ins.join(" "))
            };
            let nc = if v.ignore_cache { " no-cache" } else { "" };
            let _ = writeln!(out, "v{} {:?}{loc}{ins}{nc}", id.0, v.name);
            match &v.op {
                Op::Source(s) => {
                    let _ = writeln!(out, "  source {} {:?}", s.identifier, s.attrs);
                }
                Op::Exec(e) => {
                    let _ = writeln!(
                        out,
                        "  exec {:?} cwd={} user={:?} net={:?}\n  env {:?}",
                        e.meta.args, e.meta.cwd, e.meta.user, e.network, e.meta.env
                    );
                    for m in &e.mounts {
                        let src = m.input.map_or("scratch".to_string(), |i| format!("in{i}"));
                        let _ = writeln!(
                            out,
                            "  mount {} <- {src}{:?} out={:?} ro={} {:?}",
                            m.dest, m.selector, m.output, m.readonly, m.mount_type
                        );
                    }
                }
                Op::File(f) => {
                    for a in &f.actions {
                        let sec = a
                            .secondary_input
                            .as_ref()
                            .map(|s| format!(" from {}", input(s)))
                            .unwrap_or_default();
                        let what = match &a.action {
                            FileActionKind::Copy(c) => format!(
                                "copy {} -> {} mode={:?}{} unpack={} excl={:?}",
                                c.src,
                                c.dest,
                                c.mode,
                                owner(&c.owner),
                                c.attempt_unpack_docker_compatibility,
                                c.exclude_patterns
                            ),
                            FileActionKind::MkDir(m) => {
                                format!(
                                    "mkdir {} {:o} parents={}{}",
                                    m.path,
                                    m.mode,
                                    m.make_parents,
                                    owner(&m.owner)
                                )
                            }
                            other => format!("{other:?}"),
                        };
                        let _ = writeln!(
                            out,
                            "  {} on {}{sec} out={:?}",
                            what,
                            input(&a.input),
                            a.output
                        );
                    }
                }
                Op::Merge(m) => {
                    let _ = writeln!(out, "  merge {:?}", m.inputs);
                }
            }
        }
        let c = &b.config;
        let _ = writeln!(out, "env {:?}", c.env);
        let _ = writeln!(
            out,
            "cmd {:?} entrypoint {:?} workdir {:?} user {:?} shell {:?} stop {:?}",
            c.cmd, c.entrypoint, c.working_dir, c.user, c.shell, c.stop_signal
        );
        let _ = writeln!(
            out,
            "labels {:?} ports {:?} volumes {:?}",
            c.labels, c.exposed_ports, c.volumes
        );
        for h in &c.history {
            let layer = if h.empty_layer { "empty" } else { "layer" };
            let _ = writeln!(out, "history {layer} {:?}", h.created_by);
        }
        let _ = writeln!(out, "built {:?}", b.stages_built);
        out
    }

    fn check_with(src: &str, opts: &BuildOptions, expect: &str) {
        let got = match build(src, opts) {
            Ok(b) => render(&b),
            Err(e) => format!("error: {e}\n"),
        };
        if got.trim() != expect.trim() {
            panic!("source:\n{src}\n--- got:\n{got}\n--- expected:\n{expect}\n");
        }
    }

    fn check(src: &str, expect: &str) {
        check_with(src, &BuildOptions::default(), expect);
    }

    fn opts() -> BuildOptions {
        BuildOptions::default()
    }

    fn vertex_names(b: &Build) -> Vec<String> {
        b.graph
            .needed_for(b.result)
            .iter()
            .map(|id| b.graph.vertex(*id).name.clone())
            .collect()
    }

    fn sources(b: &Build) -> Vec<String> {
        b.graph
            .needed_for(b.result)
            .iter()
            .filter_map(|id| match &b.graph.vertex(*id).op {
                Op::Source(s) => Some(s.identifier.clone()),
                _ => None,
            })
            .collect()
    }

    fn execs(b: &Build) -> Vec<&ExecOp> {
        b.graph
            .needed_for(b.result)
            .iter()
            .filter_map(|id| match &b.graph.vertex(*id).op {
                Op::Exec(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn single_stage_copy_run_cmd() {
        check(
            "FROM busybox\nCOPY hello.txt /hello.txt\nRUN echo hi\nCMD [\"cat\", \"/hello.txt\"]\n",
            r#"
v0 "[1/3] FROM docker.io/library/busybox:latest" @Dockerfile:1
  source docker-image://docker.io/library/busybox:latest {}
v1 "[internal] load build context"
  source local://context {}
v2 "[2/3] COPY hello.txt /hello.txt" @Dockerfile:2 <- [v0 v1]
  copy /hello.txt -> /hello.txt mode=None unpack=false excl=[] on in0 from in1 out=Some(0)
v3 "[3/3] RUN echo hi" @Dockerfile:3 <- [v2]
  exec ["/bin/sh", "-c", "echo hi"] cwd=/ user="" net=Unset
  env ["PATH=/usr/bin:/bin", "HOME=/root"]
  mount / <- in0"" out=Some(0) ro=false Bind
env ["PATH=/usr/bin:/bin", "HOME=/root"]
cmd Some(["cat", "/hello.txt"]) entrypoint None workdir "" user "" shell None stop None
labels {"base": "docker.io/library/busybox:latest"} ports [] volumes []
history layer "ADD rootfs.tar / # docker.io/library/busybox:latest"
history layer "COPY hello.txt /hello.txt # buildkit"
history layer "RUN /bin/sh -c echo hi # buildkit"
history empty "CMD [\"cat\" \"/hello.txt\"]"
built ["0"]
"#,
        );
    }

    const MULTI: &str = r#"FROM golang:1.22 AS build
WORKDIR /src
COPY . .
RUN go build -o /out/app
FROM alpine AS test
RUN echo test
FROM scratch
COPY --from=build /out/app /app
ENTRYPOINT ["/app"]
"#;

    #[test]
    fn multi_stage_prunes_unneeded_stages() {
        let df = parse(MULTI, "Dockerfile").expect("parses");
        assert_eq!(
            df.base_images(&opts()).expect("plans"),
            vec!["docker.io/library/golang:1.22".to_string()]
        );
        let b = build(MULTI, &opts()).expect("builds");
        assert_eq!(b.stages_built, vec!["build", "2"]);
        assert_eq!(
            sources(&b),
            vec![
                "docker-image://docker.io/library/golang:1.22",
                "local://context"
            ]
        );
        let args: Vec<&Vec<String>> = execs(&b).iter().map(|e| &e.meta.args).collect();
        assert_eq!(
            args,
            vec![&vec![
                "/bin/sh".to_string(),
                "-c".into(),
                "go build -o /out/app".into()
            ]]
        );
        assert_eq!(
            vertex_names(&b),
            vec![
                "[build 1/4] FROM docker.io/library/golang:1.22",
                "[build 2/4] WORKDIR /src",
                "[internal] load build context",
                "[build 3/4] COPY . .",
                "[build 4/4] RUN go build -o /out/app",
                "[stage-2 1/1] COPY --from=build /out/app /app",
            ]
        );
        // The final stage is FROM scratch: no base history, default PATH.
        assert_eq!(b.config.env, vec![format!("PATH={DEFAULT_PATH}")]);
        assert_eq!(b.config.working_dir, "/");
        assert_eq!(b.config.entrypoint, Some(vec!["/app".to_string()]));
        let hist: Vec<&str> = b
            .config
            .history
            .iter()
            .map(|h| h.created_by.as_str())
            .collect();
        assert_eq!(
            hist,
            vec!["COPY /out/app /app # buildkit", "ENTRYPOINT [\"/app\"]"]
        );
    }

    #[test]
    fn copy_from_stage_onto_scratch() {
        check(
            "FROM busybox AS b\nRUN make\nFROM scratch\nCOPY --from=b --chown=app:1 --chmod=0755 /x /y/ \n",
            r#"
v0 "[b 1/2] FROM docker.io/library/busybox:latest" @Dockerfile:1
  source docker-image://docker.io/library/busybox:latest {}
v1 "[b 2/2] RUN make" @Dockerfile:2 <- [v0]
  exec ["/bin/sh", "-c", "make"] cwd=/ user="" net=Unset
  env ["PATH=/usr/bin:/bin", "HOME=/root"]
  mount / <- in0"" out=Some(0) ro=false Bind
v2 "[stage-1 1/1] COPY --from=b --chown=app:1 --chmod=0755 /x /y/" @Dockerfile:4 <- [v1]
  copy /x -> /y/ mode=Some(493) owner=app:1 unpack=false excl=[] on scratch from in0 out=Some(0)
env ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
cmd None entrypoint None workdir "/" user "" shell None stop None
labels {} ports [] volumes []
history layer "COPY --chown=app:1 --chmod=0755 /x /y/ # buildkit"
built ["b", "1"]
"#,
        );
    }

    #[test]
    fn target_selects_stage_and_its_deps_only() {
        let o = BuildOptions {
            target: Some("TEST".into()),
            ..opts()
        };
        let df = parse(MULTI, "Dockerfile").expect("parses");
        assert_eq!(
            df.base_images(&o).expect("plans"),
            vec!["docker.io/library/alpine:latest".to_string()]
        );
        let b = build(MULTI, &o).expect("builds");
        assert_eq!(b.stages_built, vec!["test"]);
        assert_eq!(
            sources(&b),
            vec!["docker-image://docker.io/library/alpine:latest"]
        );
        assert_eq!(execs(&b).len(), 1);
        assert_eq!(execs(&b)[0].meta.args[2], "echo test");

        let o = BuildOptions {
            target: Some("bulid".into()),
            ..opts()
        };
        check_with(
            MULTI,
            &o,
            "error: target stage \"bulid\" could not be found",
        );
    }

    #[test]
    fn build_args_reach_run_env_and_change_the_key() {
        let src = "FROM busybox\nARG V=1\nARG UNSET\nRUN echo $V\n";
        let b1 = build(src, &opts()).expect("builds");
        let e = execs(&b1)[0];
        assert_eq!(e.meta.env, vec!["PATH=/usr/bin:/bin", "HOME=/root", "V=1"]);
        assert_eq!(e.meta.args, vec!["/bin/sh", "-c", "echo $V"]);
        // ARG values never reach the image config.
        assert_eq!(b1.config.env, vec!["PATH=/usr/bin:/bin", "HOME=/root"]);
        let hist: Vec<&str> = b1
            .config
            .history
            .iter()
            .skip(1)
            .map(|h| h.created_by.as_str())
            .collect();
        assert_eq!(
            hist,
            vec![
                "ARG V=1",
                "ARG UNSET",
                "RUN |2 V=1 UNSET= /bin/sh -c echo $V # buildkit"
            ]
        );

        let o = BuildOptions {
            build_args: BTreeMap::from([("V".to_string(), "2".to_string())]),
            ..opts()
        };
        let b2 = build(src, &o).expect("builds");
        assert_eq!(
            execs(&b2)[0].meta.env,
            vec!["PATH=/usr/bin:/bin", "HOME=/root", "V=2"]
        );
        let d1 = b1.graph.definition_digests();
        let d2 = b2.graph.definition_digests();
        assert_eq!(d1[0], d2[0], "the base is unchanged");
        assert_ne!(d1[b1.result.0], d2[b2.result.0], "the RUN is invalidated");
    }

    #[test]
    fn global_args_and_platform_args() {
        let src = r#"ARG TAG=1.36
ARG IMG=busybox
FROM --platform=$BUILDPLATFORM ${IMG}:${TAG}
ARG TAG
ARG TARGETARCH
ARG IMG=other
RUN echo $TAG $TARGETARCH
"#;
        let df = parse(src, "Dockerfile").expect("parses");
        assert_eq!(
            df.base_images(&opts()).expect("plans"),
            vec!["docker.io/library/busybox:1.36".to_string()]
        );
        let b = build(src, &opts()).expect("builds");
        assert_eq!(
            execs(&b)[0].meta.env,
            vec![
                "PATH=/usr/bin:/bin",
                "HOME=/root",
                "TAG=1.36",
                "TARGETARCH=amd64",
                "IMG=other"
            ]
        );
        assert_eq!(
            b.config.history.last().map(|h| h.created_by.as_str()),
            Some("RUN |3 TAG=1.36 TARGETARCH=amd64 IMG=other /bin/sh -c echo $TAG $TARGETARCH # buildkit")
        );
        let o = BuildOptions {
            build_args: BTreeMap::from([("TAG".to_string(), "musl".to_string())]),
            ..opts()
        };
        assert_eq!(
            df.base_images(&o).expect("plans"),
            vec!["docker.io/library/busybox:musl".to_string()]
        );
        check(
            "FROM --platform=linux/arm64 busybox\n",
            "error: Dockerfile:1: FROM --platform=linux/arm64 (building for linux/amd64) is not supported yet",
        );
    }

    #[test]
    fn env_inherits_base_and_metadata_history() {
        check(
            r#"FROM busybox
ENV HOME=/home/app NEW=$HOME/x
ENV LEGACY a b
LABEL a=b "c d"="e f"
USER app:app
WORKDIR app
WORKDIR ../srv
WORKDIR /
EXPOSE 8080 53/UDP 7000-7001
VOLUME ["/data", "/logs"]
STOPSIGNAL SIGKILL
SHELL ["/bin/bash", "-c"]
ENTRYPOINT exec server
MAINTAINER someone
"#,
            r#"
v0 "[1/4] FROM docker.io/library/busybox:latest" @Dockerfile:1
  source docker-image://docker.io/library/busybox:latest {}
v1 "[2/4] WORKDIR app" @Dockerfile:6 <- [v0]
  mkdir /app 755 parents=true owner=app:app on in0 out=Some(0)
v2 "[3/4] WORKDIR ../srv" @Dockerfile:7 <- [v1]
  mkdir /srv 755 parents=true owner=app:app on in0 out=Some(0)
env ["PATH=/usr/bin:/bin", "HOME=/home/app", "NEW=/root/x", "LEGACY=a b"]
cmd None entrypoint Some(["/bin/bash", "-c", "exec server"]) workdir "/" user "app:app" shell Some(["/bin/bash", "-c"]) stop Some("SIGKILL")
labels {"a": "b", "base": "docker.io/library/busybox:latest", "c d": "e f"} ports ["53/udp", "7000/tcp", "7001/tcp", "8080/tcp"] volumes ["/data", "/logs"]
history layer "ADD rootfs.tar / # docker.io/library/busybox:latest"
history empty "ENV HOME=/home/app NEW=/root/x"
history empty "ENV LEGACY=a b"
history empty "LABEL a=b c d=e f"
history empty "USER app:app"
history layer "WORKDIR /app"
history layer "WORKDIR /srv"
history empty "WORKDIR /"
history empty "EXPOSE [53/udp 7000/tcp 7001/tcp 8080/tcp]"
history empty "VOLUME [/data /logs]"
history empty "STOPSIGNAL SIGKILL"
history empty "SHELL [/bin/bash -c]"
history empty "ENTRYPOINT [\"/bin/bash\" \"-c\" \"exec server\"]"
history empty "MAINTAINER someone"
built ["0"]
"#,
        );
    }

    #[test]
    fn entrypoint_resets_inherited_cmd_only() {
        let b = build("FROM busybox\nENTRYPOINT [\"/e\"]\n", &opts()).expect("builds");
        assert_eq!(b.config.cmd, None, "CMD from the base is dropped");
        let b = build("FROM busybox\nCMD [\"c\"]\nENTRYPOINT [\"/e\"]\n", &opts()).expect("builds");
        assert_eq!(b.config.cmd, Some(vec!["c".to_string()]));
        let b = build(
            "FROM busybox AS a\nCMD [\"c\"]\nFROM a\nENTRYPOINT [\"/e\"]\n",
            &opts(),
        )
        .expect("builds");
        assert_eq!(b.config.cmd, None, "CMD from the parent stage is dropped");
        let b = build(
            "FROM busybox\nSHELL [\"/bin/bash\", \"-c\"]\nCMD echo $HOME\nRUN echo\n",
            &opts(),
        )
        .expect("builds");
        assert_eq!(
            b.config.cmd,
            Some(vec![
                "/bin/bash".to_string(),
                "-c".into(),
                "echo $HOME".into()
            ])
        );
        assert_eq!(execs(&b)[0].meta.args, vec!["/bin/bash", "-c", "echo"]);
    }

    #[test]
    fn copy_paths_against_workdir() {
        check(
            r#"FROM busybox
WORKDIR /app
COPY a.txt .
COPY ["x", "y", "dir"]
ADD --chown=1000 archive.tar sub/
COPY --exclude=*.md docs ./docs/.
"#,
            r#"
v0 "[1/6] FROM docker.io/library/busybox:latest" @Dockerfile:1
  source docker-image://docker.io/library/busybox:latest {}
v1 "[2/6] WORKDIR /app" @Dockerfile:2 <- [v0]
  mkdir /app 755 parents=true on in0 out=Some(0)
v2 "[internal] load build context"
  source local://context {}
v3 "[3/6] COPY a.txt ." @Dockerfile:3 <- [v1 v2]
  copy /a.txt -> /app/ mode=None unpack=false excl=[] on in0 from in1 out=Some(0)
v4 "[4/6] COPY [x, y, dir]" @Dockerfile:4 <- [v3 v2]
  copy /x -> /app/dir/ mode=None unpack=false excl=[] on in0 from in1 out=None
  copy /y -> /app/dir/ mode=None unpack=false excl=[] on act0 from in1 out=Some(0)
v5 "[5/6] ADD --chown=1000 archive.tar sub/" @Dockerfile:5 <- [v4 v2]
  copy /archive.tar -> /app/sub/ mode=None owner=1000:- unpack=true excl=[] on in0 from in1 out=Some(0)
v6 "[6/6] COPY --exclude=*.md docs ./docs/." @Dockerfile:6 <- [v5 v2]
  copy /docs -> /app/docs/. mode=None unpack=false excl=["*.md"] on in0 from in1 out=Some(0)
env ["PATH=/usr/bin:/bin", "HOME=/root"]
cmd Some(["sh"]) entrypoint None workdir "/app" user "" shell None stop None
labels {"base": "docker.io/library/busybox:latest"} ports [] volumes []
history layer "ADD rootfs.tar / # docker.io/library/busybox:latest"
history layer "WORKDIR /app"
history layer "COPY a.txt . # buildkit"
history layer "COPY x y dir # buildkit"
history layer "ADD --chown=1000 archive.tar sub/ # buildkit"
history layer "COPY docs ./docs/. # buildkit"
built ["0"]
"#,
        );
    }

    #[test]
    fn run_mounts_and_network() {
        check(
            r#"FROM busybox AS deps
RUN fetch
FROM busybox
WORKDIR /w
RUN --network=none --mount=type=cache,target=/root/.cache,sharing=locked \
    --mount=type=cache,target=cache,id=shared \
    --mount=type=tmpfs,target=/tmp,size=64m \
    --mount=type=bind,from=deps,source=/out,target=/deps \
    --mount=target=src,rw \
    make
"#,
            r#"
v0 "[deps 1/2] FROM docker.io/library/busybox:latest" @Dockerfile:1
  source docker-image://docker.io/library/busybox:latest {}
v1 "[deps 2/2] RUN fetch" @Dockerfile:2 <- [v0]
  exec ["/bin/sh", "-c", "fetch"] cwd=/ user="" net=Unset
  env ["PATH=/usr/bin:/bin", "HOME=/root"]
  mount / <- in0"" out=Some(0) ro=false Bind
v2 "[stage-1 1/3] FROM docker.io/library/busybox:latest" @Dockerfile:3
  source docker-image://docker.io/library/busybox:latest {}
v3 "[stage-1 2/3] WORKDIR /w" @Dockerfile:4 <- [v2]
  mkdir /w 755 parents=true on in0 out=Some(0)
v4 "[internal] load build context"
  source local://context {}
v5 "[stage-1 3/3] RUN --network=none --mount=type=cache,target=/root/.cache,sharing=locked     --mount=type=cache,target=cache,id=shared     --mount=type=tmpfs,target=/tmp,size=64m     --mount=type=bind,from=deps,source=/out,target=/deps     --mount=target=src,rw     make" @Dockerfile:5 <- [v3 v1 v4]
  exec ["/bin/sh", "-c", "make"] cwd=/w user="" net=None
  env ["PATH=/usr/bin:/bin", "HOME=/root"]
  mount / <- in0"" out=Some(0) ro=false Bind
  mount /root/.cache <- scratch"" out=None ro=false Cache { id: "/root/.cache", sharing: Locked }
  mount /w/cache <- scratch"" out=None ro=false Cache { id: "shared", sharing: Shared }
  mount /tmp <- scratch"" out=None ro=false Tmpfs { size: 67108864 }
  mount /deps <- in1"/out" out=None ro=true Bind
  mount /w/src <- in2"" out=None ro=false Bind
env ["PATH=/usr/bin:/bin", "HOME=/root"]
cmd Some(["sh"]) entrypoint None workdir "/w" user "" shell None stop None
labels {"base": "docker.io/library/busybox:latest"} ports [] volumes []
history layer "ADD rootfs.tar / # docker.io/library/busybox:latest"
history layer "WORKDIR /w"
history layer "RUN /bin/sh -c make # buildkit"
built ["deps", "1"]
"#,
        );
    }

    #[test]
    fn no_cache_filter_marks_only_the_named_stages() {
        let o = BuildOptions {
            no_cache_filter: vec!["deps".into()],
            ..opts()
        };
        check_with(
            "FROM scratch AS deps\nCOPY a /a\nFROM scratch\nCOPY --from=deps /a /b\nCOPY c /c\n",
            &o,
            r#"
v0 "[internal] load build context" no-cache
  source local://context {}
v1 "[deps 1/1] COPY a /a" @Dockerfile:2 <- [v0] no-cache
  copy /a -> /a mode=None unpack=false excl=[] on scratch from in0 out=Some(0)
v2 "[stage-1 1/2] COPY --from=deps /a /b" @Dockerfile:4 <- [v1]
  copy /a -> /b mode=None unpack=false excl=[] on scratch from in0 out=Some(0)
v3 "[stage-1 2/2] COPY c /c" @Dockerfile:5 <- [v2 v0]
  copy /c -> /c mode=None unpack=false excl=[] on in0 from in1 out=Some(0)
env ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
cmd None entrypoint None workdir "/" user "" shell None stop None
labels {} ports [] volumes []
history layer "COPY /a /b # buildkit"
history layer "COPY c /c # buildkit"
built ["deps", "1"]
"#,
        );
    }

    #[test]
    fn options_no_cache_excludes_labels() {
        let o = BuildOptions {
            no_cache: true,
            excludes: vec!["*.md".into(), "!README.md".into()],
            labels: BTreeMap::from([("org.example".to_string(), "yes".to_string())]),
            context_name: "ctx".into(),
            ..opts()
        };
        check_with(
            "FROM scratch\nLABEL a=1\nCOPY x /\n",
            &o,
            r#"
v0 "[internal] load build context" no-cache
  source local://ctx {"local.excludepatterns": "[\"*.md\",\"!README.md\"]"}
v1 "[1/1] COPY x /" @Dockerfile:3 <- [v0] no-cache
  copy /x -> / mode=None unpack=false excl=[] on scratch from in0 out=Some(0)
env ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
cmd None entrypoint None workdir "/" user "" shell None stop None
labels {"a": "1", "org.example": "yes"} ports [] volumes []
history empty "LABEL a=1"
history layer "COPY x / # buildkit"
built ["0"]
"#,
        );
        // A stage with no filesystem change is scratch: an empty merge.
        check(
            "FROM scratch\nCMD [\"x\"]\n",
            r#"
v0 "[internal] scratch"
  merge []
env ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
cmd Some(["x"]) entrypoint None workdir "/" user "" shell None stop None
labels {} ports [] volumes []
history empty "CMD [\"x\"]"
built ["0"]
"#,
        );
    }

    #[test]
    fn copy_from_image_and_index() {
        let b = build(
            "FROM busybox\nCOPY --from=nginx:1 /etc/nginx /etc/nginx\nFROM scratch\nCOPY --from=0 /bin/sh /sh\n",
            &opts(),
        )
        .expect("builds");
        assert_eq!(
            sources(&b),
            vec![
                "docker-image://docker.io/library/busybox:latest",
                "docker-image://docker.io/library/nginx:1",
            ]
        );
        assert_eq!(
            vertex_names(&b),
            vec![
                "[stage-0 1/2] FROM docker.io/library/busybox:latest",
                "FROM docker.io/library/nginx:1",
                "[stage-0 2/2] COPY --from=nginx:1 /etc/nginx /etc/nginx",
                "[stage-1 1/1] COPY --from=0 /bin/sh /sh",
            ]
        );
        // A single stage that copies from an image still gets a stage label
        // (BuildKit counts the image as a stage).
        let b = build("FROM busybox\nCOPY --from=nginx /a /a\n", &opts()).expect("builds");
        assert_eq!(
            vertex_names(&b)[0],
            "[stage-0 1/2] FROM docker.io/library/busybox:latest"
        );
    }

    #[test]
    fn escape_directive_in_a_build() {
        check(
            "# escape=`\nFROM busybox\nRUN echo a `\n  b\nCOPY C:\\x.txt `\n  /x\n",
            r#"
v0 "[1/3] FROM docker.io/library/busybox:latest" @Dockerfile:2
  source docker-image://docker.io/library/busybox:latest {}
v1 "[2/3] RUN echo a   b" @Dockerfile:3 <- [v0]
  exec ["/bin/sh", "-c", "echo a   b"] cwd=/ user="" net=Unset
  env ["PATH=/usr/bin:/bin", "HOME=/root"]
  mount / <- in0"" out=Some(0) ro=false Bind
v2 "[internal] load build context"
  source local://context {}
v3 "[3/3] COPY C:\\x.txt   /x" @Dockerfile:5 <- [v1 v2]
  copy /C:\x.txt -> /x mode=None unpack=false excl=[] on in0 from in1 out=Some(0)
env ["PATH=/usr/bin:/bin", "HOME=/root"]
cmd Some(["sh"]) entrypoint None workdir "" user "" shell None stop None
labels {"base": "docker.io/library/busybox:latest"} ports [] volumes []
history layer "ADD rootfs.tar / # docker.io/library/busybox:latest"
history layer "RUN /bin/sh -c echo a   b # buildkit"
history layer "COPY C:\\x.txt /x # buildkit"
built ["0"]
"#,
        );
    }

    #[test]
    fn conversion_errors_name_the_line() {
        check("FROM busybox\nCOPY --chmod=64a a b\n", "error: Dockerfile:2: invalid chmod parameter: '64a'. it should be octal string and between 0 and 07777");
        check(
            "FROM busybox AS a\nCOPY --from=b x y\nFROM busybox AS b\n",
            "error: Dockerfile:2: cannot copy from stage \"b\", it needs to be defined before current stage \"a\"",
        );
        check(
            "FROM busybox\nCOPY --from=$X a b\n",
            "error: Dockerfile:2: variable expansion is not supported for --from, define a new stage with FROM using ARG from global scope as a workaround",
        );
        check(
            "FROM busybox\nADD https://example.com/a.tgz /\n",
            "error: Dockerfile:2: ADD from a URL is not supported yet",
        );
        check(
            "FROM busybox\nCOPY https://example.com/a.tgz /\n",
            "error: Dockerfile:2: source can't be a URL for COPY",
        );
        check(
            "FROM busybox\nRUN --network=bridge x\n",
            "error: Dockerfile:2: unsupported network mode: bridge",
        );
        check(
            "FROM busybox\nENV A=\"${B:?must be set}\"\n",
            "error: Dockerfile:2: B: must be set",
        );
        check("FROM Busybox\n", "error: Dockerfile:1: invalid reference format: repository name (library/Busybox) must be lowercase");
        check(
            "ARG IMG\nFROM $IMG\n",
            "error: Dockerfile:2: base name ($IMG) should not be blank",
        );
        check(
            "FROM busybox\nSTOPSIGNAL SIGNOPE\n",
            "error: Dockerfile:2: Invalid signal: SIGNOPE",
        );
        check(
            "FROM busybox\nEXPOSE 80/tcp abc\n",
            "error: Dockerfile:2: invalid containerPort: abc",
        );
        let df = parse("FROM busybox\n", "Dockerfile").expect("parses");
        let err = to_graph(&df, &opts(), &BTreeMap::new())
            .map(|_| ())
            .map_err(|e| e.to_string());
        assert_eq!(
            err,
            Err(
                "Dockerfile:1: no image config for base image docker.io/library/busybox:latest"
                    .to_string()
            )
        );
    }

    /// `testdata/<case>/{Dockerfile,expected}`: `expected` is the
    /// [`render`]ing of the build, or `error: <message>` for invalid input.
    #[test]
    fn testdata_cases() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
        let mut dirs: Vec<_> = std::fs::read_dir(&root)
            .expect("testdata exists")
            .map(|e| e.expect("readable testdata").path())
            .collect();
        dirs.sort();
        let mut ran = 0;
        for dir in dirs {
            let src =
                std::fs::read_to_string(dir.join("Dockerfile")).expect("case has a Dockerfile");
            let expect =
                std::fs::read_to_string(dir.join("expected")).expect("case has an expected file");
            check(&src, &expect);
            ran += 1;
        }
        assert!(ran >= 5, "only {ran} testdata cases found");
    }
}
