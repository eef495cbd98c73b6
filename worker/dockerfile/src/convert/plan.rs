//! Stage planning: before any vertex is emitted, the global args, each
//! stage's base, the target, which stages it needs, and where `--from`
//! reads.

use super::*;

/// What a stage starts from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Base {
    Scratch,
    Stage(usize),
    /// A normalized image ref, or an OCI layout's image
    /// ([`crate::OciLayoutRef::key`]).
    Image(String),
    /// A named context's directory (`local://<local>`).
    Local {
        local: String,
        excludes: Vec<String>,
    },
    /// A named context that is a git or HTTP source.
    Remote {
        op: kiln_solver::SourceOp,
        name: String,
    },
}

impl Base {
    /// What a stage reading the named context `ctx` starts from.
    fn of_context(ctx: &NamedContext) -> Base {
        match ctx {
            NamedContext::Local { local, excludes } => Base::Local {
                local: local.clone(),
                excludes: excludes.clone(),
            },
            NamedContext::Image(r) => Base::Image(r.clone()),
            NamedContext::OciLayout(l) => Base::Image(l.key()),
            NamedContext::Scratch => Base::Scratch,
            NamedContext::Remote { op, name } => Base::Remote {
                op: op.clone(),
                name: name.clone(),
            },
        }
    }
}

#[derive(Clone, Debug)]
pub(super) struct StagePlan {
    pub(super) base: Base,
    /// A named context of the stage's name replaces it: the stage is the
    /// context (`base`), and its own `FROM` and commands are not used.
    pub(super) replaced: bool,
    /// The base is a named context (the stage's own name's, or its
    /// `FROM`'s): BuildKit checks no platform of those.
    pub(super) from_context: bool,
    /// The `FROM` name with its args expanded, as written otherwise.
    pub(super) base_name: String,
    /// The platform the stage's base is picked for and its `RUN` steps
    /// run as: `FROM --platform`, else the base stage's, else the target.
    pub(super) platform: kiln_solver::Platform,
}

/// An image a stage reads with `--from` / `from=`.
#[derive(Clone, Debug)]
pub(super) struct ImageRead {
    /// The normalized reference.
    pub(super) reference: String,
    /// It is a named context's, picked for the reading stage's platform.
    pub(super) named: bool,
}

/// Where `COPY --from` / `--mount from=` reads.
pub(super) enum Source {
    Stage(usize),
    Image(String),
    /// A named context's directory.
    Local {
        local: String,
        excludes: Vec<String>,
    },
    /// A named context that is `docker-image://scratch`.
    Scratch,
    /// A named context that is a git or HTTP source.
    Remote {
        op: kiln_solver::SourceOp,
        name: String,
    },
}

/// The platform of a stage on image `reference` when the build names no
/// target platform and the `FROM` none either (BuildKit's
/// `autoDetectPlatform`): the image's own platform, as its config (read
/// for `target`) names it, when the worker runs that platform; else
/// `target`.
fn auto_detect_platform(
    bases: &BTreeMap<String, ImageConfig>,
    reference: &str,
    target: kiln_solver::Platform,
    opts: &BuildOptions,
    build: &kiln_solver::Platform,
) -> kiln_solver::Platform {
    let key = crate::BaseRef {
        reference: reference.to_string(),
        platform: (target != *build).then(|| target.clone()),
    }
    .key();
    let Some(image) = bases.get(&key).and_then(|c| c.base_platform.as_ref()) else {
        return target;
    };
    let same = |p: &kiln_solver::Platform| p.os == image.os && p.architecture == image.architecture;
    if same(&target) {
        return target;
    }
    opts.worker_platforms
        .iter()
        .find(|p| same(p))
        .cloned()
        .unwrap_or(target)
}

/// The named context `name` refers to for a stage built for `platform`,
/// if any (see [`context_key`]): the one given for that platform
/// (`NAME::PLATFORM`) first, else the one of the plain name.
pub(super) fn named_context<'a>(
    opts: &'a BuildOptions,
    name: &str,
    platform: &kiln_solver::Platform,
) -> Option<&'a NamedContext> {
    if opts.named_contexts.is_empty() {
        return None;
    }
    let key = context_key(name)?;
    opts.named_contexts
        .get(&crate::platform_context_key(&key, platform))
        .or_else(|| opts.named_contexts.get(&key))
}

/// The stage structure, computed before any vertex is emitted: global
/// args, each stage's base, the target and which stages it needs.
pub(super) struct Plan {
    /// Global `ARG`s with values and the platform args, `K=V`.
    pub(super) global_env: Vec<String>,
    /// The proxy build arguments (`HTTP_PROXY`, ... in either case), given
    /// to every `RUN` without a declaration and kept out of the history
    /// and cache keys (BuildKit's `proxyEnvFromBuildArgs`).
    pub(super) proxy_env: Option<ProxyEnv>,
    pub(super) stages: Vec<StagePlan>,
    pub(super) target: usize,
    pub(super) needed: Vec<bool>,
    /// The images each stage reads (`COPY --from`, `RUN --mount from=`):
    /// BuildKit makes each a stage of its own and resolves its metadata
    /// with the bases'.
    pub(super) image_reads: Vec<Vec<ImageRead>>,
    /// Stage labels for vertex names (`build`, `stage-1`, or none when the
    /// build has a single stage).
    pub(super) display: Vec<String>,
    /// The platform the build runs on: ops for it carry no platform.
    pub(super) build_platform: kiln_solver::Platform,
    /// The platform the build is for (`TARGETPLATFORM`).
    pub(super) target_platform: kiln_solver::Platform,
}

impl Plan {
    /// The plan for `opts`; `bases` are the base image configs known so
    /// far, whose ONBUILD triggers may read other stages (`--from`).
    pub(super) fn new(
        df: &Dockerfile,
        opts: &BuildOptions,
        bases: &BTreeMap<String, ImageConfig>,
    ) -> Result<Plan> {
        let lex = Lex::new(df.escape);
        let file = &opts.filename;
        let invalid = |line: usize, message: String| ParseError::Invalid {
            file: file.clone(),
            line,
            message,
        };
        let build = opts.build_platform();
        let for_platform = opts.target_platform();
        let global_env = global_env(df, opts, &opts.build_args)?;

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
            // BuildKit names the flag's value as written, before expansion.
            let own_platform = match &s.platform {
                Some(raw) => {
                    let p = lex
                        .process_word(raw, &global_env)
                        .map_err(|m| invalid(s.line, m))?;
                    if p.is_empty() {
                        return Err(invalid(
                            s.line,
                            format!("empty platform value from expression {raw}"),
                        ));
                    }
                    Some(kiln_solver::Platform::parse(&p, &build).map_err(|e| {
                        invalid(s.line, format!("failed to parse platform {raw}: {e}"))
                    })?)
                }
                None => None,
            };
            let platform = own_platform.unwrap_or_else(|| for_platform.clone());
            if let Some(ctx) = s
                .name
                .as_deref()
                .and_then(|n| named_context(opts, n, &platform))
            {
                stages.push(StagePlan {
                    base: Base::of_context(ctx),
                    replaced: true,
                    from_context: true,
                    base_name,
                    platform,
                });
                continue;
            }
            // As BuildKit: `scratch` and an earlier stage's (lower case)
            // name match exactly, and a number is no stage index here.
            let mut from_context = false;
            let base = if base_name == "scratch" {
                Base::Scratch
            } else if let Some(j) = df.stages[..i]
                .iter()
                .rposition(|p| p.name.as_deref() == Some(base_name.as_str()))
            {
                Base::Stage(j)
            } else if let Some(ctx) = named_context(opts, &base_name, &platform) {
                from_context = true;
                Base::of_context(ctx)
            } else {
                Base::Image(normalize(&base_name).map_err(|err| ParseError::Reference {
                    file: file.clone(),
                    line: s.line,
                    name: base_name.clone(),
                    err,
                })?)
            };
            // A stage built on another runs as that one (BuildKit's rule).
            let platform = match &base {
                Base::Stage(j) => stages[*j].platform.clone(),
                Base::Image(r)
                    if !from_context && s.platform.is_none() && opts.target_platform.is_none() =>
                {
                    auto_detect_platform(bases, r, platform, opts, &build)
                }
                _ => platform,
            };
            stages.push(StagePlan {
                base,
                replaced: false,
                from_context,
                base_name,
                platform,
            });
        }

        let target = match &opts.target {
            None => df.stages.len() - 1,
            Some(t) => {
                let t = t.to_lowercase();
                df.stages
                    .iter()
                    .rposition(|s| s.name.as_deref() == Some(&t))
                    .ok_or_else(|| {
                        let target = opts.target.clone().unwrap_or_default();
                        let names: Vec<&str> =
                            df.stages.iter().filter_map(|s| s.name.as_deref()).collect();
                        ParseError::TargetNotFound {
                            hint: crate::suggest::search(&target, &names, true)
                                .map(|m| format!(" (did you mean {m}?)"))
                                .unwrap_or_default(),
                            target,
                        }
                    })?
            }
        };

        // Dependencies, then the stages reachable from the target.
        let mut image_sources = 0;
        // The images each stage's commands read (`--from`, `from=`).
        let mut image_reads: Vec<Vec<ImageRead>> = vec![Vec::new(); df.stages.len()];
        let mut deps: Vec<Vec<usize>> = Vec::new();
        // The stages each stage's commands read, with the reading line.
        let mut reads: Vec<Vec<(usize, usize)>> = Vec::new();
        for (i, s) in df.stages.iter().enumerate() {
            let mut d = Vec::new();
            reads.push(Vec::new());
            if stages[i].replaced {
                // Nothing of the stage's own text is used.
                deps.push(d);
                continue;
            }
            // The base's ONBUILD triggers run here (the parent stage's
            // ONBUILD lines, or a base image's `OnBuild`): what they read
            // `--from` is resolved against this Dockerfile's stages, and
            // needed by this stage (BuildKit resolves them in the child).
            let triggers: Vec<&str> = match &stages[i].base {
                Base::Stage(j) => {
                    d.push(*j);
                    if stages[*j].replaced {
                        Vec::new()
                    } else {
                        df.stages[*j]
                            .commands
                            .iter()
                            .filter_map(|c| match &c.instruction {
                                Instruction::Onbuild(t) => Some(t.as_str()),
                                _ => None,
                            })
                            .collect()
                    }
                }
                Base::Image(r) => {
                    let p = &stages[i].platform;
                    let key = crate::BaseRef {
                        reference: r.clone(),
                        platform: (*p != build).then(|| p.clone()),
                    }
                    .key();
                    bases
                        .get(&key)
                        .map(|c| c.on_build.iter().map(String::as_str).collect())
                        .unwrap_or_default()
                }
                Base::Scratch | Base::Local { .. } | Base::Remote { .. } => Vec::new(),
            };
            for t in triggers {
                let trigger = super::parse_trigger(t, file, s.line)?;
                for from in from_refs(&trigger) {
                    match resolve_source(df, opts, from, &stages[i].platform, s.line)? {
                        Source::Stage(k) => {
                            d.push(k);
                            reads[i].push((k, s.line));
                        }
                        Source::Image(reference) => {
                            let named = named_context(opts, from, &stages[i].platform).is_some();
                            image_reads[i].push(ImageRead { reference, named });
                            image_sources += 1;
                        }
                        _ => image_sources += 1,
                    }
                }
            }
            for c in &s.commands {
                for from in from_refs(c) {
                    match resolve_source(df, opts, from, &stages[i].platform, c.line)? {
                        Source::Stage(j) => {
                            d.push(j);
                            reads[i].push((j, c.line));
                        }
                        Source::Image(reference) => {
                            let named = named_context(opts, from, &stages[i].platform).is_some();
                            image_reads[i].push(ImageRead { reference, named });
                            image_sources += 1;
                        }
                        _ => image_sources += 1,
                    }
                }
                // BuildKit gives a `RUN --mount` without `from` a source
                // of its own (scratch), so a build with one labels its
                // stage (`[stage-0 1/1] RUN --mount=...`) like a build
                // of several.
                if let Instruction::Run(r) = &c.instruction {
                    image_sources += r.mounts.iter().filter(|m| m.from.is_none()).count();
                }
            }
            deps.push(d);
        }
        if let Some((i, line)) = find_cycle(&reads) {
            return Err(ParseError::Invalid {
                file: file.to_string(),
                line,
                message: format!(
                    "circular dependency detected on stage: {}",
                    stage_label(df, i)
                ),
            });
        }
        // `all_stages` with no target: every stage (the build checks').
        let mut needed = vec![opts.all_stages && opts.target.is_none(); df.stages.len()];
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
        // In name order, so of `HTTP_PROXY` and `http_proxy` the lower
        // case one wins, as in BuildKit.
        let mut proxy = ProxyEnv::default();
        let mut any_proxy = false;
        for (k, v) in &opts.build_args {
            any_proxy |= proxy.set(k, v);
        }
        Ok(Plan {
            global_env,
            proxy_env: any_proxy.then_some(proxy),
            stages,
            target,
            needed,
            image_reads,
            display,
            build_platform: build,
            target_platform: for_platform,
        })
    }
}

impl Plan {
    /// The platform an op of stage `i` carries: `None` when it is the
    /// build platform (so host builds keep their cache keys).
    pub(super) fn op_platform(&self, i: usize) -> Option<kiln_solver::Platform> {
        let p = &self.stages[i].platform;
        (*p != self.build_platform).then(|| p.clone())
    }

    /// The platform the op of an image stage `i` reads carries: BuildKit
    /// makes an image a `--from` names a stage of its own, with no `FROM
    /// --platform`, so it is the target's whatever stage reads it; a named
    /// context picked for the reading stage's platform is that stage's.
    pub(super) fn read_image_platform(
        &self,
        i: usize,
        named: bool,
    ) -> Option<kiln_solver::Platform> {
        match named {
            true => self.op_platform(i),
            false => {
                (self.target_platform != self.build_platform).then(|| self.target_platform.clone())
            }
        }
    }
}

/// The `--from` / `from=` names a command reads from.
pub(super) fn from_refs(c: &Command) -> Vec<&str> {
    match &c.instruction {
        Instruction::Copy(cp) => cp.from.iter().map(String::as_str).collect(),
        Instruction::Run(r) => r.mounts.iter().filter_map(|m| m.from.as_deref()).collect(),
        _ => Vec::new(),
    }
}

/// Resolves `--from=<name|index|named context|image>` seen in stage
/// `current`.
/// The error of a stage being built that reads stage `j` (named `from`)
/// defined after it (BuildKit's dispatch finds it not dispatched yet).
pub(super) fn defined_before(
    df: &Dockerfile,
    opts: &BuildOptions,
    from: &str,
    j: usize,
    current: usize,
    line: usize,
) -> Result<()> {
    if j < current {
        return Ok(());
    }
    Err(ParseError::Invalid {
        file: opts.filename.clone(),
        line,
        message: format!(
            "cannot copy from stage {from:?}, it needs to be defined before current stage {:?}",
            stage_label(df, current)
        ),
    })
}

/// A stage's name in errors: its `AS` name, else `stage-N`.
fn stage_label(df: &Dockerfile, i: usize) -> String {
    df.stages[i]
        .name
        .clone()
        .unwrap_or_else(|| format!("stage-{i}"))
}

/// BuildKit's `validateCircularDependency` over the stages' `--from`
/// reads: the first stage (in order) a cycle is reachable from, and the
/// line of the read that starts the path.
fn find_cycle(reads: &[Vec<(usize, usize)>]) -> Option<(usize, usize)> {
    fn visit(
        i: usize,
        reads: &[Vec<(usize, usize)>],
        visited: &mut [bool],
        path: &mut [bool],
    ) -> bool {
        if visited[i] {
            return false;
        }
        visited[i] = true;
        path[i] = true;
        for &(j, _) in &reads[i] {
            if path[j] || visit(j, reads, visited, path) {
                return true;
            }
        }
        path[i] = false;
        false
    }
    let mut visited = vec![false; reads.len()];
    let mut path = vec![false; reads.len()];
    (0..reads.len()).find_map(|i| {
        let first = reads[i].first().map(|&(_, line)| line);
        visit(i, reads, &mut visited, &mut path).then(|| (i, first.unwrap_or_default()))
    })
}

pub(super) fn resolve_source(
    df: &Dockerfile,
    opts: &BuildOptions,
    from: &str,
    platform: &kiln_solver::Platform,
    line: usize,
) -> Result<Source> {
    let file = opts.filename.as_str();
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
    let lower = from.to_lowercase();
    let found = match from.parse::<usize>() {
        Ok(idx) if idx < df.stages.len() => Some(idx),
        Ok(idx) => return Err(invalid(format!("invalid stage index {idx}"))),
        Err(_) => df
            .stages
            .iter()
            .rposition(|s| s.name.as_deref() == Some(&lower)),
    };
    match found {
        // A later stage (or this one) is refused when this stage is built
        // ([`defined_before`]) or as a cycle ([`Plan::new`]), as BuildKit:
        // a stage no one needs may name one.
        Some(j) => Ok(Source::Stage(j)),
        None => match named_context(opts, from, platform) {
            Some(NamedContext::Local { local, excludes }) => Ok(Source::Local {
                local: local.clone(),
                excludes: excludes.clone(),
            }),
            Some(NamedContext::Image(r)) => Ok(Source::Image(r.clone())),
            Some(NamedContext::OciLayout(l)) => Ok(Source::Image(l.key())),
            Some(NamedContext::Scratch) => Ok(Source::Scratch),
            Some(NamedContext::Remote { op, name }) => Ok(Source::Remote {
                op: op.clone(),
                name: name.clone(),
            }),
            // BuildKit makes an unnamed stage of it, and such a stage on
            // `scratch` is the empty filesystem, never an image.
            None if from == "scratch" => Ok(Source::Scratch),
            None => normalize(from)
                .map(Source::Image)
                .map_err(|err| ParseError::Reference {
                    file: file.to_string(),
                    line,
                    name: from.to_string(),
                    err,
                }),
        },
    }
}

/// BuildKit's global scope: the platform args (`defaultArgs`) and the
/// global `ARG`s with a value, as `K=V`; `build_args` override defaults
/// (the build checks pass none, to see the defaults alone).
pub(super) fn global_env(
    df: &Dockerfile,
    opts: &BuildOptions,
    build_args: &BTreeMap<String, String>,
) -> Result<Vec<String>> {
    let lex = Lex::new(df.escape);
    let invalid = |line: usize, message: String| ParseError::Invalid {
        file: opts.filename.clone(),
        line,
        message,
    };
    let build = opts.build_platform();
    let for_platform = opts.target_platform();
    let (build_text, target_text) = (build.to_string(), for_platform.to_string());
    // BuildKit's: the target asked for, else the last stage's name, else
    // "default" (an unnamed last stage).
    let target_name = opts
        .target
        .clone()
        .filter(|t| !t.is_empty())
        .or_else(|| df.stages.last().and_then(|s| s.name.clone()))
        .unwrap_or_else(|| "default".into());
    let mut global_env: Vec<String> = Vec::new();
    // BuildKit's `defaultArgs`: the platform the build runs on and the
    // one it is for.
    for (k, v) in [
        ("BUILDPLATFORM", build_text.as_str()),
        ("BUILDOS", &build.os),
        ("BUILDOSVERSION", ""),
        ("BUILDARCH", &build.architecture),
        ("BUILDVARIANT", &build.variant),
        ("TARGETPLATFORM", &target_text),
        ("TARGETOS", &for_platform.os),
        ("TARGETOSVERSION", ""),
        ("TARGETARCH", &for_platform.architecture),
        ("TARGETVARIANT", &for_platform.variant),
        ("TARGETSTAGE", &target_name),
    ] {
        let v = build_args.get(k).map_or(v, String::as_str);
        // Only a client's --build-arg can make these large; the
        // Dockerfile has no line for them yet.
        add_env(&mut global_env, k, v)
            .map_err(|m| invalid(1, format!("build argument {k}: {m}")))?;
    }
    for c in &df.global_args {
        if let Instruction::Arg(args) = &c.instruction {
            for a in args {
                let value = match (build_args.get(&a.key), &a.default) {
                    (Some(v), _) => Some(v.clone()),
                    (None, Some(d)) => Some(
                        lex.process_word(d, &global_env)
                            .map_err(|m| invalid(c.line, m))?,
                    ),
                    (None, None) => None,
                };
                if let Some(v) = value {
                    add_env(&mut global_env, &a.key, &v).map_err(|m| invalid(c.line, m))?;
                }
            }
        }
    }
    Ok(global_env)
}
