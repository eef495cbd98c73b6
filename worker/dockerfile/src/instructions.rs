//! Typed instructions, grouped by stage. Arguments are kept as written:
//! variable substitution happens in [`crate::convert`], where the values of
//! `ARG` and `ENV` are known.

use crate::parser::{self, extract_flags, Flag, Node};
use crate::shell::parse_words;
use crate::{ParseError, Result};

/// A parsed Dockerfile: global `ARG`s and stages, with line numbers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dockerfile {
    /// The name given to [`parse`], used in its errors.
    pub filename: String,
    /// The escape character (`\` or the `# escape=` directive's).
    pub escape: char,
    /// `ARG`s before the first `FROM` (each a [`Instruction::Arg`]).
    pub global_args: Vec<Command>,
    pub stages: Vec<Stage>,
}

/// `FROM ...` and the instructions up to the next `FROM`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stage {
    pub line: usize,
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
    /// The logical line, keyword uppercased (`RUN echo hi`).
    pub original: String,
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
}

/// `RUN [--network=..] [--security=..] [--mount=..]... cmd`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Run {
    pub network: Option<String>,
    pub security: Option<String>,
    pub mounts: Vec<MountSpec>,
    pub cmd: CmdLine,
}

/// `COPY` or `ADD`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copy {
    pub add: bool,
    /// `--from`, never expanded.
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    /// `--link`: accepted, built like a plain copy.
    pub link: bool,
    pub excludes: Vec<String>,
    pub srcs: Vec<String>,
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
}

/// Parses a Dockerfile. `filename` names the file in errors.
pub fn parse(src: &str, filename: &str) -> Result<Dockerfile> {
    let lines = parser::split(src, filename)?;
    let p = Parser {
        file: filename,
        escape: lines.escape,
    };
    let mut df = Dockerfile {
        filename: filename.to_string(),
        escape: lines.escape,
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
            let stage = p.from(node)?;
            if let Some(name) = &stage.name {
                if df.stages.iter().any(|s| s.name.as_ref() == Some(name)) {
                    return Err(p.invalid(node.line, format!("duplicate stage name {name:?}")));
                }
            }
            df.stages.push(stage);
            continue;
        }
        let instruction = p.instruction(node)?;
        let command = Command {
            line: node.line,
            original: node.original.clone(),
            instruction,
        };
        match df.stages.last_mut() {
            Some(stage) => stage.commands.push(command),
            None if matches!(command.instruction, Instruction::Arg(_)) => {
                df.global_args.push(command)
            }
            None => return Err(p.invalid(node.line, "no build stage in current context".into())),
        }
    }
    if df.stages.is_empty() {
        return Err(ParseError::NoStages {
            file: filename.to_string(),
        });
    }
    Ok(df)
}

struct Parser<'a> {
    file: &'a str,
    escape: char,
}

impl Parser<'_> {
    fn invalid(&self, line: usize, message: String) -> ParseError {
        ParseError::Invalid {
            file: self.file.to_string(),
            line,
            message,
        }
    }

    fn unsupported(&self, line: usize, feature: &str) -> ParseError {
        ParseError::Unsupported {
            file: self.file.to_string(),
            line,
            feature: feature.to_string(),
        }
    }

    fn from(&self, node: &Node) -> Result<Stage> {
        let (flags, rest) = extract_flags(&node.rest);
        let mut platform = None;
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
            let mut chars = n.chars();
            let ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
                && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
            if !ok {
                return Err(self.invalid(
                    node.line,
                    format!("invalid name for build stage: {n:?}, name can't start with a number or contain symbols"),
                ));
            }
        }
        Ok(Stage {
            line: node.line,
            platform,
            base: base.to_string(),
            name,
            commands: Vec::new(),
        })
    }

    fn unknown_flag(&self, node: &Node, f: &Flag) -> ParseError {
        ParseError::UnknownFlag {
            file: self.file.to_string(),
            line: node.line,
            flag: f.name.clone(),
        }
    }

    fn flag_value(&self, node: &Node, f: &Flag) -> Result<String> {
        f.value
            .clone()
            .ok_or_else(|| self.invalid(node.line, format!("missing a value on flag: {}", f.name)))
    }

    fn flag_bool(&self, node: &Node, f: &Flag) -> Result<bool> {
        match f.value.as_deref() {
            None | Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(v) => Err(self.invalid(
                node.line,
                format!("expecting boolean value for flag {}, not: {v}", f.name),
            )),
        }
    }

    /// Parses a non-`FROM` line.
    fn instruction(&self, node: &Node) -> Result<Instruction> {
        let (flags, rest) = extract_flags(&node.rest);
        let kw = node.keyword.as_str();
        if !matches!(kw, "run" | "copy" | "add") {
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
        Ok(match kw {
            "run" => self.run(node, flags, rest)?,
            "copy" | "add" => self.copy(node, kw == "add", flags, rest)?,
            "cmd" => {
                need_args("CMD")?;
                Instruction::Cmd(cmd_line(rest))
            }
            "entrypoint" => {
                need_args("ENTRYPOINT")?;
                Instruction::Entrypoint(cmd_line(rest))
            }
            "shell" => match json_array(rest) {
                Some(v) if !v.is_empty() => Instruction::Shell(v),
                _ => {
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
                need_args("WORKDIR")?;
                Instruction::Workdir(rest.to_string())
            }
            "user" => {
                need_args("USER")?;
                Instruction::User(rest.to_string())
            }
            "expose" => {
                need_args("EXPOSE")?;
                Instruction::Expose(rest.split_whitespace().map(str::to_string).collect())
            }
            "volume" => {
                need_args("VOLUME")?;
                let vols = match json_array(rest) {
                    Some(v) => v,
                    None => rest.split_whitespace().map(str::to_string).collect(),
                };
                Instruction::Volume(vols)
            }
            "stopsignal" => {
                need_args("STOPSIGNAL")?;
                Instruction::StopSignal(rest.to_string())
            }
            "maintainer" => {
                need_args("MAINTAINER")?;
                Instruction::Maintainer(rest.to_string())
            }
            "healthcheck" => return Err(self.unsupported(line, "HEALTHCHECK")),
            "onbuild" => return Err(self.unsupported(line, "ONBUILD")),
            _ => {
                let word = node
                    .original
                    .split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string();
                return Err(ParseError::UnknownInstruction {
                    file: self.file.to_string(),
                    line,
                    word,
                });
            }
        })
    }

    fn run(&self, node: &Node, flags: Vec<Flag>, rest: &str) -> Result<Instruction> {
        let mut network = None;
        let mut security = None;
        let mut mounts = Vec::new();
        for f in &flags {
            match f.name.as_str() {
                "network" => network = Some(self.flag_value(node, f)?),
                "security" => security = Some(self.flag_value(node, f)?),
                "mount" => mounts.push(self.mount(node, &self.flag_value(node, f)?)?),
                // BuildKit's stable frontend rejects it the same way.
                "device" => return Err(self.invalid(
                    node.line,
                    "device feature is only supported in Dockerfile frontend 1.14.0-labs or later"
                        .into(),
                )),
                _ => return Err(self.unknown_flag(node, f)),
            }
        }
        if rest.trim().is_empty() {
            return Err(self.invalid(node.line, "RUN requires at least one argument".into()));
        }
        let cmd = cmd_line(rest);
        if let CmdLine::Shell(s) = &cmd {
            if has_heredoc(s) {
                return Err(ParseError::Heredoc {
                    file: self.file.to_string(),
                    line: node.line,
                });
            }
        }
        Ok(Instruction::Run(Run {
            network,
            security,
            mounts,
            cmd,
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
                    self.invalid(
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
                        t @ ("secret" | "ssh") => {
                            return Err(
                                self.unsupported(node.line, &format!("RUN --mount=type={t}"))
                            )
                        }
                        t => {
                            return Err(
                                self.invalid(node.line, format!("unsupported mount type {t:?}"))
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
                _ => {
                    return Err(
                        self.invalid(node.line, format!("unexpected key '{key}' in '{field}'"))
                    )
                }
            }
        }
        if m.target.is_none() {
            return Err(self.invalid(node.line, "mount target must be set".into()));
        }
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
            excludes: Vec::new(),
            srcs: Vec::new(),
            dest: String::new(),
        };
        for f in &flags {
            match (f.name.as_str(), add) {
                ("from", false) => c.from = Some(self.flag_value(node, f)?),
                ("chown", _) => c.chown = Some(self.flag_value(node, f)?),
                ("chmod", _) => c.chmod = Some(self.flag_value(node, f)?),
                ("link", _) => c.link = self.flag_bool(node, f)?,
                ("exclude", _) => c.excludes.push(self.flag_value(node, f)?),
                ("parents", false) | ("checksum" | "keep-git-dir" | "unpack", true) => {
                    return Err(self.unsupported(node.line, &format!("{name} --{}", f.name)))
                }
                _ => return Err(self.unknown_flag(node, f)),
            }
        }
        let mut words = match json_array(rest) {
            Some(v) => v,
            None => {
                if has_heredoc(rest) {
                    return Err(ParseError::Heredoc {
                        file: self.file.to_string(),
                        line: node.line,
                    });
                }
                rest.split_whitespace().map(str::to_string).collect()
            }
        };
        match words.len() {
            0 => return Err(self.invalid(node.line, format!("{name} requires at least two arguments"))),
            1 => {
                return Err(self.invalid(
                    node.line,
                    format!("{name} requires at least two arguments, but only one was provided. Destination could not be determined"),
                ))
            }
            _ => {}
        }
        c.dest = words.pop().unwrap_or_default();
        c.srcs = words;
        Ok(Instruction::Copy(c))
    }

    /// `ENV`/`LABEL`: `k=v k2=v2` or the legacy `k rest of line`.
    fn name_val(&self, node: &Node, what: &str, rest: &str) -> Result<Vec<KeyValue>> {
        let words = parse_words(rest, self.escape);
        let Some(first) = words.first() else {
            return Err(self.invalid(node.line, format!("{what} requires at least one argument")));
        };
        if !first.contains('=') {
            let mut parts = rest.splitn(2, char::is_whitespace);
            let key = parts.next().unwrap_or_default().to_string();
            let value = parts.next().map(str::trim_start).unwrap_or_default();
            if value.is_empty() {
                return Err(self.invalid(node.line, format!("{what} must have two arguments")));
            }
            return Ok(vec![KeyValue {
                key,
                value: value.to_string(),
            }]);
        }
        words
            .iter()
            .map(|w| match w.split_once('=') {
                Some((k, v)) if !k.is_empty() => Ok(KeyValue {
                    key: k.to_string(),
                    value: v.to_string(),
                }),
                _ => Err(self.invalid(
                    node.line,
                    format!(
                        "Syntax error - can't find = in {w:?}. Must be of the form: name=value"
                    ),
                )),
            })
            .collect()
    }
}

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

fn cmd_line(rest: &str) -> CmdLine {
    match json_array(rest) {
        Some(v) => CmdLine::Exec(v),
        None => CmdLine::Shell(rest.to_string()),
    }
}

/// `<<WORD`, `<<-WORD`, `<<"WORD"` as a word of its own or inside one.
fn has_heredoc(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    while let Some(p) = s[i..].find("<<") {
        let mut j = i + p + 2;
        if b.get(j) == Some(&b'-') {
            j += 1;
        }
        if matches!(b.get(j), Some(b'"' | b'\'')) {
            j += 1;
        }
        if b.get(j)
            .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
        {
            return true;
        }
        i = i + p + 2;
    }
    false
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
  2: Run(Run { network: None, security: None, mounts: [], cmd: Exec(["echo", "hi A"]) })
  3: Run(Run { network: None, security: None, mounts: [], cmd: Shell("[not json") })
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
  2: Copy(Copy { add: false, from: Some("b"), chown: Some("1:2"), chmod: Some("755"), link: true, excludes: [], srcs: ["x", "y"], dest: "/dst/" })
  3: Copy(Copy { add: true, from: None, chown: None, chmod: None, link: false, excludes: [], srcs: ["a b"], dest: "/c" })"#,
        );
    }

    #[test]
    fn run_mounts() {
        check(
            "FROM a\nRUN --network=none --mount=type=cache,target=/root/.cache,sharing=locked,id=x --mount=type=tmpfs,dst=/t make\n",
            r#"stage 0 1: base=a name=None platform=None
  2: Run(Run { network: Some("none"), security: None, mounts: [MountSpec { kind: Some(Cache), target: Some("/root/.cache"), source: None, from: None, id: Some("x"), sharing: Some("locked"), readonly: None, readwrite: None, uid: None, gid: None, mode: None, size: None }, MountSpec { kind: Some(Tmpfs), target: Some("/t"), source: None, from: None, id: None, sharing: None, readonly: None, readwrite: None, uid: None, gid: None, mode: None, size: None }], cmd: Shell("make") })"#,
        );
    }

    #[test]
    fn errors_name_file_and_line() {
        check("", "error: Dockerfile: file with no instructions");
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
            "error: Dockerfile:3: unknown instruction: FOO",
        );
        check(
            "FROM a\nfoo bar\n",
            "error: Dockerfile:2: unknown instruction: FOO",
        );
        check(
            "FROM a b\n",
            "error: Dockerfile:1: FROM requires either one or three arguments",
        );
        check(
            "FROM a AS 1x\n",
            "error: Dockerfile:1: invalid name for build stage: \"1x\", name can't start with a number or contain symbols",
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
            "error: Dockerfile:2: SHELL requires the arguments to be in JSON form",
        );
        check(
            "FROM a\nCOPY x\n",
            "error: Dockerfile:2: COPY requires at least two arguments, but only one was provided. Destination could not be determined",
        );
        check(
            "FROM a\nCOPY --nope x y\n",
            "error: Dockerfile:2: unknown flag: nope",
        );
        check(
            "FROM a\nADD --from=b x y\n",
            "error: Dockerfile:2: unknown flag: from",
        );
        check(
            "FROM a\nRUN <<EOF\necho\nEOF\n",
            "error: Dockerfile:2: heredocs are not supported yet",
        );
        check(
            "FROM a\nHEALTHCHECK CMD true\n",
            "error: Dockerfile:2: HEALTHCHECK is not supported yet",
        );
        check(
            "FROM a\nRUN --mount=type=secret,id=x,target=/s cat /s\n",
            "error: Dockerfile:2: RUN --mount=type=secret is not supported yet",
        );
        check(
            "FROM a AS x\nFROM b AS X\n",
            "error: Dockerfile:2: duplicate stage name \"x\"",
        );
        check(
            "FROM a\nARG =1\n",
            "error: Dockerfile:2: ARG names can not be blank",
        );
    }

    #[test]
    fn heredoc_detection() {
        assert!(has_heredoc("cat <<EOF"));
        assert!(has_heredoc("cat <<-\"EOF\""));
        assert!(!has_heredoc("echo $((1<<2))"));
        assert!(!has_heredoc("echo a << b"));
    }
}
