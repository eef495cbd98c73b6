//! Typed instructions, grouped by stage. Arguments are kept as written:
//! variable substitution happens in [`crate::convert`], where the values of
//! `ARG` and `ENV` are known.

use crate::directives::{CheckConfig, Directive};
use crate::heredoc::{self, Heredoc};
use crate::parser::{self, extract_flags, Flag, Node, Warning};
use crate::shell::parse_words;
use crate::suggest;
use crate::{ParseError, Result};

/// A parsed Dockerfile: global `ARG`s and stages, with line numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dockerfile {
    /// The name given to [`parse`], used in its errors.
    pub filename: String,
    /// The escape character (`\` or the `# escape=` directive's).
    pub escape: char,
    /// `# syntax=`: always BuildKit's Dockerfile frontend (others fail
    /// in [`parse`]).
    pub syntax: Option<Directive>,
    /// `# check=`: which build checks run and whether they fail the build.
    pub check: CheckConfig,
    /// Build check warnings (see [`crate::lint`]), those `# check=` keeps.
    pub warnings: Vec<Warning>,
    /// `# check=` comments above instructions, for the checks the
    /// converter runs ([`Dockerfile::check_enabled`]).
    pub check_scopes: Vec<crate::lint::CheckScope>,
    /// `ARG`s before the first `FROM` (each a [`Instruction::Arg`]).
    pub global_args: Vec<Command>,
    pub stages: Vec<Stage>,
}

impl Dockerfile {
    /// Whether a build check warning of `rule` at `line` is reported
    /// (the `# check=` directive and comments, see [`crate::lint::enabled`]).
    pub fn check_enabled(&self, rule: &str, line: usize) -> bool {
        crate::lint::enabled(&self.check, &self.check_scopes, rule, line)
    }
}

/// `FROM ...` and the instructions up to the next `FROM`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stage {
    pub line: usize,
    /// The `FROM` instruction's last line.
    pub end_line: usize,
    /// `--platform`, unexpanded.
    pub platform: Option<String>,
    /// The base, unexpanded: an image, `scratch` or an earlier stage.
    pub base: String,
    /// `AS name`, lowercased.
    pub name: Option<String>,
    pub commands: Vec<Command>,
}

/// One instruction with its location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Command {
    pub line: usize,
    /// The last line of the instruction (continuations, heredoc bodies).
    pub end_line: usize,
    /// The logical line, keyword uppercased (`RUN echo hi`).
    pub original: String,
    /// The keyword as written (`run`), as BuildKit names a command.
    pub word: String,
    pub instruction: Instruction,
}

/// Exec form (JSON array) or shell form (one string for the shell).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CmdLine {
    Exec(Vec<String>),
    Shell(String),
}

/// `KEY=VALUE` of `ENV` and `LABEL`, unexpanded (quotes still in).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// `ARG name[=default]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArgDecl {
    pub key: String,
    pub default: Option<String>,
}

/// `RUN --mount` type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountKind {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

/// One `RUN --mount=...`, fields unexpanded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountSpec {
    pub kind: Option<MountKind>,
    pub target: Option<String>,
    pub source: Option<String>,
    /// Stage, image or context name; never expanded.
    pub from: Option<String>,
    pub id: Option<String>,
    pub sharing: Option<String>,
    pub readonly: Option<String>,
    pub readwrite: Option<String>,
    pub uid: Option<String>,
    pub gid: Option<String>,
    pub mode: Option<String>,
    pub size: Option<String>,
    /// Secret mounts: the env var to set to the secret.
    pub env: Option<String>,
    /// Secret and ssh mounts: fail when the client has no such secret
    /// or agent.
    pub required: Option<String>,
}

/// The values of `RUN --network`.
pub const NETWORK_MODES: [&str; 3] = ["default", "none", "host"];

/// The values of `RUN --security`.
pub const SECURITY_MODES: [&str; 2] = ["sandbox", "insecure"];

/// `RUN [--network=..] [--security=..] [--mount=..]... cmd`, `network`
/// and `security` among [`NETWORK_MODES`] and [`SECURITY_MODES`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub network: Option<String>,
    pub security: Option<String>,
    pub mounts: Vec<MountSpec>,
    pub cmd: CmdLine,
    /// The heredocs of a shell-form command, bodies as written (tabs of
    /// `<<-` not yet stripped).
    pub heredocs: Vec<Heredoc>,
}

/// A heredoc source of `COPY`/`ADD` (`COPY <<EOF /dst`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceContent {
    /// The delimiter word: the file's name.
    pub name: String,
    /// The body (tabs already stripped for `<<-`), unexpanded.
    pub data: String,
    /// Whether variables in `data` are expanded (delimiter not quoted).
    pub expand: bool,
}

/// `COPY` or `ADD`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copy {
    pub add: bool,
    /// `--from`, never expanded.
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    /// `--link`: copied onto an empty layer and merged onto the stage.
    pub link: bool,
    /// `COPY --parents`: sources keep their parent directories (below a
    /// `/./` pivot) under the destination.
    pub parents: bool,
    pub excludes: Vec<String>,
    /// ADD `--checksum` (a digest for a URL, a commit for a git source),
    /// never expanded here.
    pub checksum: Option<String>,
    /// ADD `--keep-git-dir`, when given.
    pub keep_git_dir: Option<bool>,
    /// ADD `--unpack`, when given.
    pub unpack: Option<bool>,
    pub srcs: Vec<String>,
    /// Heredoc sources, copied after `srcs`.
    pub contents: Vec<SourceContent>,
    pub dest: String,
}

/// The instructions kiln builds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Instruction {
    Run(Run),
    Cmd(CmdLine),
    Entrypoint(CmdLine),
    Shell(Vec<String>),
    Copy(Copy),
    Env(Vec<KeyValue>),
    Arg(Vec<ArgDecl>),
    Label(Vec<KeyValue>),
    Workdir(String),
    User(String),
    Expose(Vec<String>),
    Volume(Vec<String>),
    StopSignal(String),
    Maintainer(String),
    /// `HEALTHCHECK`, parsed and checked.
    Healthcheck(kiln_solver::Healthcheck),
    /// `ONBUILD`: the trigger as written after the keyword.
    Onbuild(String),
}

/// Parses a Dockerfile. `filename` names the file in errors.
pub fn parse(src: &str, filename: &str) -> Result<Dockerfile> {
    parse_with_check(src, filename, None)
}

/// [`parse`] with the build checks' configuration given by the caller
/// (the `BUILDKIT_DOCKERFILE_CHECK` build argument): when `Some`, it
/// replaces the file's `# check=` directive, which is then not read at
/// all, as BuildKit's frontend does.
pub fn parse_with_check(
    src: &str,
    filename: &str,
    check: Option<&CheckConfig>,
) -> Result<Dockerfile> {
    parse_with(src, filename, check, false)
}

/// [`parse_with_check`]; `syntax_arg` says the `BUILDKIT_SYNTAX` build
/// argument named the frontend (BuildKit's Dockerfile frontend, the
/// caller checked), which BuildKit uses in place of the `# syntax=`
/// directive: the directive's image is then not run, nor refused.
pub fn parse_with(
    src: &str,
    filename: &str,
    check: Option<&CheckConfig>,
    syntax_arg: bool,
) -> Result<Dockerfile> {
    if src.is_empty() {
        return Err(ParseError::EmptyFile {
            file: filename.to_string(),
        });
    }
    let lines = parser::split_with(src, filename, check, syntax_arg)?;
    let p = Parser {
        file: filename,
        escape: lines.escape,
    };
    let mut df = Dockerfile {
        filename: filename.to_string(),
        escape: lines.escape,
        syntax: lines.syntax.clone(),
        check: lines.check.clone(),
        warnings: crate::lint::run(&lines.nodes, &lines.warnings, &lines.check),
        check_scopes: crate::lint::scopes(&lines.nodes),
        global_args: Vec::new(),
        stages: Vec::new(),
    };
    if lines.nodes.is_empty() {
        return Err(ParseError::Empty {
            file: filename.to_string(),
        });
    }
    for node in &lines.nodes {
        if node.keyword == "from" {
            // A name used twice is a build check (DuplicateStageName), as
            // in BuildKit: a reference means the last stage of that name
            // defined before it (a `--from` or the target: the last one).
            let stage = p.from(node)?;
            df.stages.push(stage);
            continue;
        }
        let instruction = p.instruction(node)?;
        let command = Command {
            line: node.line,
            end_line: node.end_line,
            original: node.original.clone(),
            word: node.word.clone(),
            instruction,
        };
        match df.stages.last_mut() {
            Some(stage) => stage.commands.push(command),
            None if matches!(command.instruction, Instruction::Arg(_)) => {
                df.global_args.push(command)
            }
            None => return Err(p.plain(node.line, "no build stage in current context".into())),
        }
    }
    if df.stages.is_empty() {
        return Err(ParseError::NoStages {
            file: filename.to_string(),
        });
    }
    Ok(df)
}

/// The build check warnings BuildKit has reported by the time it fails
/// with `err`: those a conversion error carries ([`ParseError::Checked`]),
/// or for an error of [`parse_with`] on the same arguments, the parser's own (NoEmptyContinuation), and the
/// checks that parser runs on each instruction up to the failing one
/// ([`crate::lint::PARSE_TIME_RULES`]). The checks that run on a parsed
/// file (casing, stage names, ...) never ran; nor did any for an error
/// of another kind, which is found before those checks or after them.
pub fn parse_warnings(
    src: &str,
    filename: &str,
    check: Option<&CheckConfig>,
    syntax_arg: bool,
    err: &ParseError,
) -> Vec<Warning> {
    let failed_at = match err {
        // A conversion error carries what the checks found before it.
        ParseError::Checked { warnings, .. } => return warnings.clone(),
        ParseError::Instruction { line, .. }
        | ParseError::UnknownInstruction { line, .. }
        | ParseError::UnknownFlag { line, .. } => *line,
        _ => return Vec::new(),
    };
    let Ok(lines) = parser::split_with(src, filename, check, syntax_arg) else {
        return Vec::new();
    };
    crate::lint::run(&lines.nodes, &lines.warnings, &lines.check)
        .into_iter()
        .filter(|w| {
            w.rule == "NoEmptyContinuation"
                || (crate::lint::PARSE_TIME_RULES.contains(&w.rule.as_str()) && w.line <= failed_at)
        })
        .collect()
}

struct Parser<'a> {
    file: &'a str,
    escape: char,
}

impl Parser<'_> {
    /// An error of BuildKit's instruction parser (most of this module's):
    /// shown after `dockerfile parse error on line N: ` as BuildKit does.
    fn invalid(&self, line: usize, message: String) -> ParseError {
        ParseError::Instruction {
            file: self.file.to_string(),
            line,
            message,
        }
    }

    /// An error BuildKit gives elsewhere, without that prefix: its line
    /// parser's (`ENV`/`LABEL` pairs, JSON arrays), or the converter's
    /// (the fields of `--mount`, which BuildKit checks once expanded;
    /// `--device`; an instruction before any `FROM`).
    fn plain(&self, line: usize, message: String) -> ParseError {
        ParseError::Invalid {
            file: self.file.to_string(),
            line,
            message,
        }
    }

    fn from(&self, node: &Node) -> Result<Stage> {
        let (flags, rest) = extract_flags(&node.rest);
        let mut platform = None;
        self.check_flags(node, &flags)?;
        for f in flags {
            match f.name.as_str() {
                "platform" => platform = Some(self.flag_value(node, &f)?),
                _ => return Err(self.unknown_flag(node, &f)),
            }
        }
        let words: Vec<&str> = rest.split_whitespace().collect();
        let (base, name) = match words.as_slice() {
            [base] => (*base, None),
            [base, as_kw, name] if as_kw.eq_ignore_ascii_case("as") => {
                (*base, Some(name.to_lowercase()))
            }
            _ => {
                return Err(self.invalid(
                    node.line,
                    "FROM requires either one or three arguments".into(),
                ))
            }
        };
        if let Some(n) = &name {
            // The error shows the name as written.
            let written = words.get(2).copied().unwrap_or_default();
            let mut chars = n.chars();
            let ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
                && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
            if !ok {
                return Err(self.invalid(
                    node.line,
                    format!("invalid name for build stage: {written:?}, name can't start with a number or contain symbols"),
                ));
            }
        }
        Ok(Stage {
            line: node.line,
            end_line: node.end_line,
            platform,
            base: base.to_string(),
            name,
            commands: Vec::new(),
        })
    }

    fn unknown_flag(&self, node: &Node, f: &Flag) -> ParseError {
        let keyword = node.keyword.as_str();
        let taken: Vec<&str> = flags_of(keyword).iter().map(|(n, _)| *n).collect();
        let known: &[&str] = match keyword {
            "healthcheck" => &crate::metadata::HEALTHCHECK_FLAGS,
            _ => &taken,
        };
        ParseError::UnknownFlag {
            file: self.file.to_string(),
            line: node.line,
            flag: format!("--{}", f.name),
            hint: suggest::search(&f.name, known, true)
                .map(|m| format!(" (did you mean {m}?)"))
                .unwrap_or_default(),
        }
    }

    fn flag_value(&self, node: &Node, f: &Flag) -> Result<String> {
        f.value.clone().ok_or_else(|| {
            self.invalid(node.line, format!("missing a value on flag: --{}", f.name))
        })
    }

    /// A boolean flag as BuildKit's `BFlags` reads it: bare is true, a
    /// value is `true` or `false` in any case, `--flag=` has none.
    fn flag_bool(&self, node: &Node, f: &Flag) -> Result<bool> {
        match f.value.as_deref().map(str::to_lowercase).as_deref() {
            None | Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some("") => {
                Err(self.invalid(node.line, format!("missing a value on flag: --{}", f.name)))
            }
            Some(_) => Err(self.invalid(
                node.line,
                format!(
                    "expecting boolean value for flag --{}, not: {}",
                    f.name,
                    f.value.as_deref().unwrap_or_default()
                ),
            )),
        }
    }

    /// BuildKit's `BFlags.Parse` over all of an instruction's flags,
    /// before any value is looked at: an unknown flag, one given twice
    /// (only those taking several values may be), a missing value, a
    /// boolean that is neither true nor false, in the order they come.
    fn check_flags(&self, node: &Node, flags: &[Flag]) -> Result<()> {
        let mut seen: Vec<&str> = Vec::new();
        for f in flags {
            let Some((_, kind)) = flags_of(&node.keyword).iter().find(|(n, _)| *n == f.name) else {
                return Err(self.unknown_flag(node, f));
            };
            if seen.contains(&f.name.as_str()) && *kind != FlagKind::Strings {
                return Err(
                    self.invalid(node.line, format!("duplicate flag specified: --{}", f.name))
                );
            }
            seen.push(&f.name);
            match kind {
                FlagKind::Bool => self.flag_bool(node, f).map(drop)?,
                FlagKind::Str | FlagKind::Strings => self.flag_value(node, f).map(drop)?,
            }
        }
        Ok(())
    }

    /// Parses a non-`FROM` line.
    fn instruction(&self, node: &Node) -> Result<Instruction> {
        let (flags, rest) = extract_flags(&node.rest);
        let kw = node.keyword.as_str();
        if !matches!(kw, "run" | "copy" | "add" | "healthcheck") {
            if let Some(f) = flags.first() {
                if is_instruction(kw) {
                    return Err(self.unknown_flag(node, f));
                }
            }
        }
        let line = node.line;
        let need_args = |what: &str| -> Result<()> {
            if rest.trim().is_empty() {
                Err(self.invalid(line, format!("{what} requires at least one argument")))
            } else {
                Ok(())
            }
        };
        // WORKDIR, USER, STOPSIGNAL and MAINTAINER take the rest of the line
        // as their one argument.
        let need_one = |what: &str| -> Result<()> {
            if rest.trim().is_empty() {
                Err(self.invalid(line, format!("{what} requires exactly one argument")))
            } else {
                Ok(())
            }
        };
        // A JSON array with anything but strings is an error, not shell
        // form (BuildKit's parseJSON).
        let json_part = match kw {
            "healthcheck" => rest
                .trim_start()
                .split_once(char::is_whitespace)
                .map_or("", |(_, r)| r),
            _ => rest,
        };
        if matches!(
            kw,
            "run" | "cmd" | "entrypoint" | "shell" | "volume" | "copy" | "add" | "healthcheck"
        ) && json_not_strings(json_part)
        {
            return Err(self.plain(
                line,
                "when using JSON array syntax, arrays must be comprised of strings only".into(),
            ));
        }
        Ok(match kw {
            "run" => self.run(node, flags, rest)?,
            "copy" | "add" => self.copy(node, kw == "add", flags, rest)?,
            // Without arguments they are the shell form of an empty command.
            "cmd" => Instruction::Cmd(cmd_line(rest)),
            "entrypoint" => Instruction::Entrypoint(cmd_line(rest)),
            "shell" => match json_array(rest) {
                Some(v) if !v.is_empty() => Instruction::Shell(v),
                Some(_) => {
                    return Err(self.invalid(line, "SHELL requires at least one argument".into()))
                }
                None if rest.trim().is_empty() => {
                    return Err(self.invalid(line, "SHELL requires at least one argument".into()))
                }
                None => {
                    return Err(self.invalid(
                        line,
                        "SHELL requires the arguments to be in JSON form".into(),
                    ))
                }
            },
            "env" => Instruction::Env(self.name_val(node, "ENV", rest)?),
            "label" => Instruction::Label(self.name_val(node, "LABEL", rest)?),
            "arg" => {
                need_args("ARG")?;
                let mut args = Vec::new();
                for w in parse_words(rest, self.escape) {
                    let (key, default) = match w.split_once('=') {
                        Some((k, v)) => (k.to_string(), Some(v.to_string())),
                        None => (w, None),
                    };
                    if key.is_empty() {
                        return Err(self.invalid(line, "ARG names can not be blank".into()));
                    }
                    args.push(ArgDecl { key, default });
                }
                Instruction::Arg(args)
            }
            "workdir" => {
                need_one("WORKDIR")?;
                Instruction::Workdir(rest.to_string())
            }
            "user" => {
                need_one("USER")?;
                Instruction::User(rest.to_string())
            }
            "expose" => {
                need_args("EXPOSE")?;
                Instruction::Expose(rest.split_whitespace().map(str::to_string).collect())
            }
            "volume" => {
                need_args("VOLUME")?;
                let vols: Vec<String> = match json_array(rest) {
                    Some(v) => v.iter().map(|v| v.trim().to_string()).collect(),
                    None => rest.split_whitespace().map(str::to_string).collect(),
                };
                if vols.is_empty() {
                    return Err(self.invalid(line, "VOLUME requires at least one argument".into()));
                }
                if vols.iter().any(String::is_empty) {
                    return Err(
                        self.invalid(line, "VOLUME specified can not be an empty string".into())
                    );
                }
                Instruction::Volume(vols)
            }
            "stopsignal" => {
                need_one("STOPSIGNAL")?;
                Instruction::StopSignal(rest.to_string())
            }
            "maintainer" => {
                need_one("MAINTAINER")?;
                Instruction::Maintainer(rest.to_string())
            }
            "healthcheck" => {
                if let Some(f) = flags
                    .iter()
                    .find(|f| !crate::metadata::HEALTHCHECK_FLAGS.contains(&f.name.as_str()))
                {
                    return Err(self.unknown_flag(node, f));
                }
                Instruction::Healthcheck(
                    crate::metadata::healthcheck(&flags, rest)
                        .map_err(|m| self.invalid(line, m))?,
                )
            }
            // A trigger keeps its heredoc bodies (BuildKit appends each
            // body and terminator to the stored expression).
            "onbuild" => {
                let trigger = crate::metadata::onbuild(&node.with_heredocs(rest))
                    .map_err(|m| self.invalid(line, m))?;
                // The parser splits an ENV or LABEL trigger's words here,
                // with this file's escape (the child parses it again).
                let t = rest.trim_start();
                let (word, args) = t.split_once(char::is_whitespace).unwrap_or((t, ""));
                for what in ["ENV", "LABEL"] {
                    if word.eq_ignore_ascii_case(what) {
                        self.name_val_words(line, what, args.trim_start())?;
                    }
                }
                Instruction::Onbuild(trigger)
            }
            _ => {
                return Err(ParseError::UnknownInstruction {
                    file: self.file.to_string(),
                    line,
                    word: node.word.clone(),
                    hint: suggest::search(&node.word, INSTRUCTIONS, false)
                        .map(|m| format!(" (did you mean {m}?)"))
                        .unwrap_or_default(),
                });
            }
        })
    }

    fn run(&self, node: &Node, flags: Vec<Flag>, rest: &str) -> Result<Instruction> {
        let mut network = None;
        let mut security = None;
        let mut mounts = Vec::new();
        self.check_flags(node, &flags)?;
        for f in &flags {
            match f.name.as_str() {
                // Checked here, as BuildKit's instruction parser does (a
                // stage the target does not need fails the build too).
                "network" => {
                    let v = self.flag_value(node, f)?;
                    if !NETWORK_MODES.contains(&v.as_str()) {
                        return Err(self.invalid(node.line, format!("invalid network mode {v:?}")));
                    }
                    network = Some(v)
                }
                "security" => {
                    let v = self.flag_value(node, f)?;
                    if !SECURITY_MODES.contains(&v.as_str()) {
                        return Err(self.invalid(node.line, format!("security {v:?} is not valid")));
                    }
                    security = Some(v)
                }
                "mount" => mounts.push(self.mount(node, &self.flag_value(node, f)?)?),
                // BuildKit's stable frontend rejects it the same way.
                "device" => return Err(self.plain(
                    node.line,
                    "device feature is only supported in Dockerfile frontend 1.14.0-labs or later"
                        .into(),
                )),
                _ => return Err(self.unknown_flag(node, f)),
            }
        }
        // `RUN` alone runs the shell with an empty command, as BuildKit.
        let cmd = cmd_line(rest);
        Ok(Instruction::Run(Run {
            network,
            security,
            mounts,
            cmd,
            heredocs: node.heredocs.clone(),
        }))
    }

    fn mount(&self, node: &Node, spec: &str) -> Result<MountSpec> {
        let mut m = MountSpec::default();
        for field in spec.split(',').filter(|f| !f.is_empty()) {
            let (key, value) = match field.split_once('=') {
                Some((k, v)) => (k.trim().to_lowercase(), Some(v.trim().to_string())),
                None => (field.trim().to_lowercase(), None),
            };
            let need = |v: Option<String>| {
                v.ok_or_else(|| {
                    self.plain(
                        node.line,
                        format!("invalid field '{field}' must be a key=value pair"),
                    )
                })
            };
            match key.as_str() {
                "type" => {
                    m.kind = Some(match need(value)?.as_str() {
                        "bind" => MountKind::Bind,
                        "cache" => MountKind::Cache,
                        "tmpfs" => MountKind::Tmpfs,
                        "secret" => MountKind::Secret,
                        "ssh" => MountKind::Ssh,
                        t => {
                            return Err(
                                self.plain(node.line, format!("unsupported mount type {t:?}"))
                            )
                        }
                    })
                }
                "target" | "dst" | "destination" => m.target = Some(need(value)?),
                "source" | "src" => m.source = Some(need(value)?),
                "from" => m.from = Some(need(value)?),
                "id" => m.id = Some(need(value)?),
                "sharing" => m.sharing = Some(need(value)?),
                "ro" | "readonly" => m.readonly = Some(value.unwrap_or_else(|| "true".into())),
                "rw" | "readwrite" => m.readwrite = Some(value.unwrap_or_else(|| "true".into())),
                "uid" => m.uid = Some(need(value)?),
                "gid" => m.gid = Some(need(value)?),
                "mode" => m.mode = Some(need(value)?),
                "size" => m.size = Some(need(value)?),
                "env" => m.env = Some(need(value)?),
                "required" => m.required = Some(value.unwrap_or_else(|| "true".into())),
                _ => {
                    return Err(
                        self.plain(node.line, format!("unexpected key '{key}' in '{field}'"))
                    )
                }
            }
        }
        // A missing target is `/`, which the converter refuses as BuildKit.
        Ok(m)
    }

    fn copy(&self, node: &Node, add: bool, flags: Vec<Flag>, rest: &str) -> Result<Instruction> {
        let name = if add { "ADD" } else { "COPY" };
        let mut c = Copy {
            add,
            from: None,
            chown: None,
            chmod: None,
            link: false,
            parents: false,
            excludes: Vec::new(),
            checksum: None,
            keep_git_dir: None,
            unpack: None,
            srcs: Vec::new(),
            contents: Vec::new(),
            dest: String::new(),
        };
        self.check_flags(node, &flags)?;
        for f in &flags {
            match (f.name.as_str(), add) {
                ("from", false) => c.from = Some(self.flag_value(node, f)?),
                ("chown", _) => c.chown = Some(self.flag_value(node, f)?),
                ("chmod", _) => c.chmod = Some(self.flag_value(node, f)?),
                ("link", _) => c.link = self.flag_bool(node, f)?,
                ("parents", false) => c.parents = self.flag_bool(node, f)?,
                ("exclude", _) => c.excludes.push(self.flag_value(node, f)?),
                ("checksum", true) => c.checksum = Some(self.flag_value(node, f)?),
                ("keep-git-dir", true) => c.keep_git_dir = Some(self.flag_bool(node, f)?),
                ("unpack", true) => c.unpack = Some(self.flag_bool(node, f)?),
                _ => return Err(self.unknown_flag(node, f)),
            }
        }
        let mut words = match json_array(rest) {
            Some(v) => v,
            None => rest.split_whitespace().map(str::to_string).collect(),
        };
        // BuildKit's `errNoDestinationArgument`, for no argument too.
        if words.len() < 2 {
            return Err(self.invalid(
                node.line,
                format!("{name} requires at least two arguments, but only one was provided. Destination could not be determined"),
            ));
        }
        c.dest = words.pop().unwrap_or_default();
        if !node.heredocs.is_empty() {
            if heredoc::parse_word(&c.dest).is_some() {
                return Err(self.invalid(
                    node.line,
                    format!("{name} cannot accept a heredoc as a destination"),
                ));
            }
            for w in words {
                match heredoc::parse_word(&w) {
                    Some(h) => {
                        let body = node
                            .heredocs
                            .iter()
                            .find(|b| b.name == h.name)
                            .map(|b| b.content.as_str())
                            .unwrap_or_default();
                        c.contents.push(SourceContent {
                            data: if h.chomp {
                                heredoc::chomp(body)
                            } else {
                                body.to_string()
                            },
                            name: h.name,
                            expand: h.expand,
                        });
                    }
                    None => c.srcs.push(w),
                }
            }
        } else {
            c.srcs = words;
        }
        Ok(Instruction::Copy(c))
    }

    /// `ENV`/`LABEL`: `k=v k2=v2` or the legacy `k rest of line`.
    fn name_val(&self, node: &Node, what: &str, rest: &str) -> Result<Vec<KeyValue>> {
        let Some(pairs) = self.name_val_words(node.line, what, rest)? else {
            return Err(self.invalid(node.line, format!("{what} requires at least one argument")));
        };
        if pairs.iter().any(|p| p.key.is_empty()) {
            return Err(self.invalid(node.line, format!("{what} names can not be blank")));
        }
        Ok(pairs)
    }

    /// The parser's part of `ENV`/`LABEL` (BuildKit's `parseNameVal`,
    /// also run on an `ONBUILD ENV|LABEL` trigger with the file's escape):
    /// the pairs, `None` for no words; every word is `k=v` unless the first
    /// has no `=` (the legacy form).
    fn name_val_words(&self, line: usize, what: &str, rest: &str) -> Result<Option<Vec<KeyValue>>> {
        let words = parse_words(rest, self.escape);
        let Some(first) = words.first() else {
            return Ok(None);
        };
        if !first.contains('=') {
            let mut parts = rest.splitn(2, char::is_whitespace);
            let key = parts.next().unwrap_or_default().to_string();
            let value = parts.next().map(str::trim_start).unwrap_or_default();
            if value.is_empty() {
                return Err(self.plain(line, format!("{what} must have two arguments")));
            }
            return Ok(Some(vec![KeyValue {
                key,
                value: value.to_string(),
            }]));
        }
        let mut pairs = Vec::with_capacity(words.len());
        for w in &words {
            let Some((k, v)) = w.split_once('=') else {
                return Err(self.plain(
                    line,
                    format!(
                        "Syntax error - can't find = in {w:?}. Must be of the form: name=value"
                    ),
                ));
            };
            pairs.push(KeyValue {
                key: k.to_string(),
                value: v.to_string(),
            });
        }
        Ok(Some(pairs))
    }
}

/// The instruction keywords, for "did you mean" hints.
const INSTRUCTIONS: &[&str] = &[
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

fn is_instruction(kw: &str) -> bool {
    matches!(
        kw,
        "from"
            | "run"
            | "cmd"
            | "entrypoint"
            | "shell"
            | "copy"
            | "add"
            | "env"
            | "arg"
            | "label"
            | "workdir"
            | "user"
            | "expose"
            | "volume"
            | "stopsignal"
            | "maintainer"
            | "healthcheck"
            | "onbuild"
    )
}

/// A JSON array of strings, or `None` (then the text is shell form).
fn json_array(rest: &str) -> Option<Vec<String>> {
    let t = rest.trim();
    if !t.starts_with('[') || !t.ends_with(']') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(t).ok()
}

/// Whether `rest` is a JSON array holding something other than strings.
fn json_not_strings(rest: &str) -> bool {
    let t = rest.trim();
    t.starts_with('[')
        && serde_json::from_str::<Vec<serde_json::Value>>(t)
            .is_ok_and(|v| v.iter().any(|e| !e.is_string()))
}

fn cmd_line(rest: &str) -> CmdLine {
    match json_array(rest) {
        Some(v) => CmdLine::Exec(v),
        None => CmdLine::Shell(rest.to_string()),
    }
}

/// How BuildKit's `BFlags` reads a flag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FlagKind {
    /// `--name=value`.
    Str,
    /// `--name`, `--name=true|false` (any case).
    Bool,
    /// `--name=value`, any number of times.
    Strings,
}

/// The flags an instruction takes, as BuildKit's stable frontend defines
/// them (HEALTHCHECK's are read apart: [`crate::metadata`]).
fn flags_of(keyword: &str) -> &'static [(&'static str, FlagKind)] {
    use FlagKind::{Bool, Str, Strings};
    match keyword {
        "from" => &[("platform", Str)],
        "run" => &[
            ("mount", Strings),
            ("network", Str),
            ("security", Str),
            ("device", Strings),
        ],
        "copy" => &[
            ("from", Str),
            ("chown", Str),
            ("chmod", Str),
            ("link", Bool),
            ("parents", Bool),
            ("exclude", Strings),
        ],
        "add" => &[
            ("chown", Str),
            ("chmod", Str),
            ("link", Bool),
            ("keep-git-dir", Bool),
            ("checksum", Str),
            ("unpack", Bool),
            ("exclude", Strings),
        ],
        _ => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Renders what [`parse`] made of `src`, one line per instruction,
    /// or `error: ...`.
    fn check(src: &str, expect: &str) {
        let got = match parse(src, "Dockerfile") {
            Ok(df) => {
                let mut out = String::new();
                for c in &df.global_args {
                    out.push_str(&format!("global {}: {:?}\n", c.line, c.instruction));
                }
                for (i, s) in df.stages.iter().enumerate() {
                    out.push_str(&format!(
                        "stage {i} {}: base={} name={:?} platform={:?}\n",
                        s.line, s.base, s.name, s.platform
                    ));
                    for c in &s.commands {
                        out.push_str(&format!("  {}: {:?}\n", c.line, c.instruction));
                    }
                }
                out
            }
            Err(e) => format!("error: {e}\n"),
        };
        assert_eq!(got.trim_end(), expect.trim_end(), "source:\n{src}");
    }

    #[test]
    fn exec_and_shell_forms() {
        check(
            r#"FROM a
RUN ["echo", "hi \u0041"]
RUN [not json
CMD echo "$HOME"
ENTRYPOINT ["/bin/app"]
SHELL ["/bin/bash", "-c"]
"#,
            r#"stage 0 1: base=a name=None platform=None
  2: Run(Run { network: None, security: None, mounts: [], cmd: Exec(["echo", "hi A"]), heredocs: [] })
  3: Run(Run { network: None, security: None, mounts: [], cmd: Shell("[not json"), heredocs: [] })
  4: Cmd(Shell("echo \"$HOME\""))
  5: Entrypoint(Exec(["/bin/app"]))
  6: Shell(["/bin/bash", "-c"])"#,
        );
    }

    #[test]
    fn env_label_arg_forms() {
        check(
            r#"ARG V=1
FROM a AS Build
ENV A=1 B="two words" C=x\ y
ENV LEGACY some value = here
LABEL "k"=v
ARG X Y=2
"#,
            r#"global 1: Arg([ArgDecl { key: "V", default: Some("1") }])
stage 0 2: base=a name=Some("build") platform=None
  3: Env([KeyValue { key: "A", value: "1" }, KeyValue { key: "B", value: "\"two words\"" }, KeyValue { key: "C", value: "x\\ y" }])
  4: Env([KeyValue { key: "LEGACY", value: "some value = here" }])
  5: Label([KeyValue { key: "\"k\"", value: "v" }])
  6: Arg([ArgDecl { key: "X", default: None }, ArgDecl { key: "Y", default: Some("2") }])"#,
        );
    }

    #[test]
    fn copy_flags_and_json() {
        check(
            r#"FROM --platform=$BUILDPLATFORM a AS b
COPY --from=b --chown=1:2 --chmod=755 --link x y /dst/
ADD ["a b", "/c"]
"#,
            r#"stage 0 1: base=a name=Some("b") platform=Some("$BUILDPLATFORM")
  2: Copy(Copy { add: false, from: Some("b"), chown: Some("1:2"), chmod: Some("755"), link: true, parents: false, excludes: [], checksum: None, keep_git_dir: None, unpack: None, srcs: ["x", "y"], contents: [], dest: "/dst/" })
  3: Copy(Copy { add: true, from: None, chown: None, chmod: None, link: false, parents: false, excludes: [], checksum: None, keep_git_dir: None, unpack: None, srcs: ["a b"], contents: [], dest: "/c" })"#,
        );
    }

    #[test]
    fn heredoc_sources_and_errors() {
        check(
            "FROM a\nCOPY x <<-A <<'B' /d/\n\t\ta $X\n\tA\nb $X\nB\n",
            r#"stage 0 1: base=a name=None platform=None
  2: Copy(Copy { add: false, from: None, chown: None, chmod: None, link: false, parents: false, excludes: [], checksum: None, keep_git_dir: None, unpack: None, srcs: ["x"], contents: [SourceContent { name: "A", data: "a $X\n", expand: true }, SourceContent { name: "B", data: "b $X\n", expand: false }], dest: "/d/" })"#,
        );
        check(
            "FROM a\nCOPY <<A <<B\na\nA\nb\nB\n",
            "error: Dockerfile:2: dockerfile parse error on line 2: COPY cannot accept a heredoc as a destination",
        );
        check(
            "FROM a\nADD <<A\na\nA\n",
            "error: Dockerfile:2: dockerfile parse error on line 2: ADD requires at least two arguments, but only one was provided. Destination could not be determined",
        );
        check(
            "FROM a\nRUN echo $((1<<4)) \"a<<b\"\n",
            r#"stage 0 1: base=a name=None platform=None
  2: Run(Run { network: None, security: None, mounts: [], cmd: Shell("echo $((1<<4)) \"a<<b\""), heredocs: [] })"#,
        );
    }

    /// Random mixes of the characters the parser treats specially never
    /// make it panic, and every error names the file.
    #[test]
    fn arbitrary_input_never_panics() {
        const PIECES: &[&str] = &[
            "FROM a\n",
            "RUN ",
            "COPY ",
            "ADD ",
            "ONBUILD ",
            "<<",
            "<<-",
            "EOF",
            "\"EOF\"",
            "'E'",
            "\n",
            "\r\n",
            "\t",
            " ",
            "\\",
            "`",
            "#",
            "# escape=`\n",
            "# syntax=x\n",
            "# check=error=true\n",
            "$",
            "${",
            "}",
            "((",
            "1",
            "-",
            "--",
            "=",
            "[",
            "]",
            "\"",
            "é",
            "\u{feff}",
            "as",
            "AS b",
            "/d/",
            "x",
        ];
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..3000 {
            let mut src = String::new();
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let len = (seed >> 33) % 40;
            for _ in 0..len {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                src.push_str(PIECES[((seed >> 33) as usize) % PIECES.len()]);
            }
            if let Err(e) = parse(&src, "Dockerfile") {
                assert!(e.to_string().starts_with("Dockerfile"), "{e} for {src:?}");
            }
        }
    }

    #[test]
    fn did_you_mean() {
        check(
            "FROM a\nFNTRYPOINT [\"x\"]\n",
            "error: Dockerfile:2: dockerfile parse error on line 2: unknown instruction: FNTRYPOINT (did you mean ENTRYPOINT?)",
        );
        check(
            "FROM a\ncopu x y\n",
            "error: Dockerfile:2: dockerfile parse error on line 2: unknown instruction: copu (did you mean copy?)",
        );
        check(
            "FROM a\nRUN --mont=type=cache,target=/x true\n",
            "error: Dockerfile:2: dockerfile parse error on line 2: unknown flag: --mont (did you mean mount?)",
        );
        check(
            "FROM a\nCOPY --chmown=1 x y\n",
            "error: Dockerfile:2: dockerfile parse error on line 2: unknown flag: --chmown (did you mean chown?)",
        );
        check(
            "FROM --platfrom=linux/amd64 a\n",
            "error: Dockerfile:1: dockerfile parse error on line 1: unknown flag: --platfrom (did you mean platform?)",
        );
    }

    #[test]
    fn run_mounts() {
        check(
            "FROM a\nRUN --network=none --mount=type=cache,target=/root/.cache,sharing=locked,id=x --mount=type=tmpfs,dst=/t make\n",
            r#"stage 0 1: base=a name=None platform=None
  2: Run(Run { network: Some("none"), security: None, mounts: [MountSpec { kind: Some(Cache), target: Some("/root/.cache"), source: None, from: None, id: Some("x"), sharing: Some("locked"), readonly: None, readwrite: None, uid: None, gid: None, mode: None, size: None, env: None, required: None }, MountSpec { kind: Some(Tmpfs), target: Some("/t"), source: None, from: None, id: None, sharing: None, readonly: None, readwrite: None, uid: None, gid: None, mode: None, size: None, env: None, required: None }], cmd: Shell("make"), heredocs: [] })"#,
        );
    }

    /// BuildKit's instruction parser runs some checks on each instruction
    /// before parsing it; when one fails, those that ran are reported with
    /// the error, and no other.
    #[test]
    fn a_parse_error_keeps_the_checks_run_before_it() {
        let rules = |src: &str| {
            let err = parse(src, "Dockerfile").expect_err("does not parse");
            parse_warnings(src, "Dockerfile", None, false, &err)
                .into_iter()
                .map(|w| format!("{} {}", w.line, w.rule))
                .collect::<Vec<_>>()
        };
        // An empty continuation line (the parser's), the casing checks of
        // the FROM before the error and of the failing FROM itself; not the
        // later MAINTAINER's, not ConsistentInstructionCasing (run on the
        // whole file once parsed).
        let src = "FROM busybox as Build\nRUN echo \\\n\n  x\nrun true\nfrom --nope busybox AS Other\nMAINTAINER me\n";
        assert_eq!(
            rules(src),
            [
                "1 StageNameCasing",
                "1 FromAsCasing",
                "4 NoEmptyContinuation",
                "6 StageNameCasing",
                "6 FromAsCasing",
            ]
        );
        // A failing MAINTAINER was checked first.
        assert_eq!(
            rules("FROM busybox\nMAINTAINER\n"),
            ["2 MaintainerDeprecated"]
        );
        // An error of BuildKit's line parser comes before any check.
        let src = "FROM busybox AS Build\nENV x\n";
        let err = parse(src, "Dockerfile").expect_err("does not parse");
        assert!(parse_warnings(src, "Dockerfile", None, false, &err).is_empty());
    }

    #[test]
    fn errors_name_file_and_line() {
        check("", "error: Dockerfile: the Dockerfile cannot be empty");
        check(
            "# just a comment\n\n",
            "error: Dockerfile: file with no instructions",
        );
        check(
            "ARG A=1\n",
            "error: Dockerfile: dockerfile contains no stages to build",
        );
        check(
            "RUN x\n",
            "error: Dockerfile:1: no build stage in current context",
        );
        check(
            "FROM a\n\nFOO bar\n",
            "error: Dockerfile:3: dockerfile parse error on line 3: unknown instruction: FOO (did you mean FROM?)",
        );
        check(
            "FROM a\nxyzzy bar\n",
            "error: Dockerfile:2: dockerfile parse error on line 2: unknown instruction: xyzzy",
        );
        check(
            "FROM a b\n",
            "error: Dockerfile:1: dockerfile parse error on line 1: FROM requires either one or three arguments",
        );
        check(
            "FROM a AS 1x\n",
            "error: Dockerfile:1: dockerfile parse error on line 1: invalid name for build stage: \"1x\", name can't start with a number or contain symbols",
        );
        check(
            "FROM a\nENV A\n",
            "error: Dockerfile:2: ENV must have two arguments",
        );
        check(
            "FROM a\nENV A=1 B\n",
            "error: Dockerfile:2: Syntax error - can't find = in \"B\". Must be of the form: name=value",
        );
        check(
            "FROM a\nSHELL /bin/sh\n",
            "error: Dockerfile:2: dockerfile parse error on line 2: SHELL requires the arguments to be in JSON form",
        );
        check(
            "FROM a\nCOPY x\n",
            "error: Dockerfile:2: dockerfile parse error on line 2: COPY requires at least two arguments, but only one was provided. Destination could not be determined",
        );
        check(
            "FROM a\nCOPY --nope x y\n",
            "error: Dockerfile:2: dockerfile parse error on line 2: unknown flag: --nope",
        );
        check(
            "FROM a\nADD --from=b x y\n",
            "error: Dockerfile:2: dockerfile parse error on line 2: unknown flag: --from",
        );
        check(
            "FROM a\nHEALTHCHECK --interval=1s --retry=2 CMD true\n",
            "error: Dockerfile:2: dockerfile parse error on line 2: unknown flag: --retry",
        );
        check(
            "FROM a\nHEALTHCHECK --timeout=500us CMD true\n",
            "error: Dockerfile:2: dockerfile parse error on line 2: Interval \"timeout\" cannot be less than 1ms",
        );
        check(
            "FROM a\nONBUILD ONBUILD RUN true\n",
            "error: Dockerfile:2: dockerfile parse error on line 2: Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
        );
        check(
            "FROM a\nONBUILD --x RUN true\n",
            "error: Dockerfile:2: dockerfile parse error on line 2: unknown flag: --x",
        );
        check(
            "FROM a\nRUN --mount=type=ssh,agent=x cat /s\n",
            "error: Dockerfile:2: unexpected key 'agent' in 'agent=x'",
        );
        check(
            "FROM a\nARG =1\n",
            "error: Dockerfile:2: dockerfile parse error on line 2: ARG names can not be blank",
        );
    }
}
