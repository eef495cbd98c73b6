//! `RUN`: the exec vertex, its mounts (`--mount=type=bind|cache|tmpfs|
//! secret|ssh`), network mode and security mode.

use super::*;
use kiln_solver::{SecretEnv, SecretMount};

impl Converter<'_> {
    pub(super) fn dispatch_run(
        &mut self,
        stage: usize,
        st: &mut StageState,
        progress: &mut Progress,
        c: &Command,
        run: &Run,
    ) -> Result<()> {
        let line = c.line;
        let mut inputs = Inputs::default();
        // The root filesystem is the exec's first input.
        if let Some(e) = st.edge {
            inputs.index(e);
        }
        let mut pipes: Option<Mount> = None;
        let mut suffix = String::new();
        let cmd = match (&run.cmd, run.heredocs.first()) {
            (CmdLine::Shell(s), Some(first)) => match heredoc::parse_word(s) {
                // The whole command is one heredoc: its body is the script.
                Some(_) => {
                    suffix = format!(" ({})", heredoc::summarize(&first.content));
                    let data = if first.chomp {
                        heredoc::chomp(&first.content)
                    } else {
                        first.content.clone()
                    };
                    if data.starts_with("#!") {
                        let file = self.inline_document(&first.name, 0o755, data)?;
                        pipes = Some(Mount {
                            input: Some(inputs.index(file)),
                            selector: String::new(),
                            dest: PIPES_DIR.into(),
                            output: None,
                            readonly: true,
                            mount_type: MountType::Bind,
                        });
                        CmdLine::Shell(format!("{PIPES_DIR}/{}", first.name))
                    } else {
                        CmdLine::Shell(data)
                    }
                }
                // Anything else: the shell reads the heredocs itself.
                None => {
                    let mut script = s.clone();
                    for h in &run.heredocs {
                        script.push('\n');
                        script.push_str(&h.content);
                        script.push_str(&h.name);
                    }
                    CmdLine::Shell(script)
                }
            },
            (cmd, _) => cmd.clone(),
        };
        let args = with_shell(&st.config, &cmd);
        let cwd = if st.config.working_dir.is_empty() {
            "/".to_string()
        } else {
            st.config.working_dir.clone()
        };
        // `RUN --network` wins over the build's (BuildKit's
        // `force-network-mode` is the default of every RUN).
        let network = match run
            .network
            .as_deref()
            .or(self.opts.force_network.as_deref())
        {
            // The parser let only `default`, `none` and `host` through
            // (`instructions::NETWORK_MODES`), the frontend the same for
            // the build's `force-network-mode`.
            Some("none") => NetMode::None,
            Some("host") => NetMode::Host,
            _ => NetMode::Unset,
        };
        // Whether the build may use `insecure` is the entitlement check's
        // business (the daemon's), not the Dockerfile's; the parser let
        // only `sandbox` and `insecure` through.
        let security = match run.security.as_deref() {
            Some("insecure") => SecurityMode::Insecure,
            _ => SecurityMode::Sandbox,
        };
        let mut mounts = vec![Mount {
            input: st.edge.map(|e| inputs.index(e)),
            selector: String::new(),
            dest: "/".into(),
            output: Some(0),
            readonly: false,
            mount_type: MountType::Bind,
        }];
        mounts.extend(pipes);
        // `shm-size`: BuildKit gives every RUN a /dev/shm tmpfs of that
        // size, before the step's own mounts.
        if self.opts.shm_size > 0 {
            mounts.push(Mount {
                input: None,
                selector: String::new(),
                dest: "/dev/shm".to_string(),
                output: None,
                readonly: false,
                mount_type: MountType::Tmpfs {
                    size: self.opts.shm_size,
                },
            });
        }
        let mut secret_env = Vec::new();
        let mut ssh = 0;
        for m in &run.mounts {
            if m.kind == Some(MountKind::Ssh) {
                mounts.push(self.ssh_mount(st, &cwd, m, ssh, line)?);
                ssh += 1;
                continue;
            }
            if m.kind == Some(MountKind::Secret) {
                let (mount, env) = self.secret_mount(st, &cwd, m, line)?;
                mounts.extend(mount);
                secret_env.extend(env);
                continue;
            }
            mounts.push(self.run_mount(stage, st, &cwd, m, &mut inputs, line)?);
        }
        self.add_step_named(
            st,
            progress,
            c,
            &suffix,
            Op::Exec(ExecOp {
                meta: Meta {
                    args: args.clone(),
                    env: ssh::with_auth_sock(st.env.clone(), &mounts),
                    cwd,
                    user: st.config.user.clone(),
                    hostname: self.opts.hostname.clone(),
                    extra_hosts: self.opts.extra_hosts.clone(),
                    ulimits: self.opts.ulimits.clone(),
                    valid_exit_codes: Vec::new(),
                    proxy_env: self.plan.proxy_env.clone().map(Box::new),
                    resources: (!self.opts.resources.is_empty())
                        .then(|| Box::new(self.opts.resources.clone())),
                },
                mounts,
                network,
                security,
                secret_env,
                platform: st.platform.clone(),
            }),
            inputs,
        )?;

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
                Some(v) => parse_bool(v)
                    .ok_or_else(|| self.file_err(line, format!("invalid value for {name}: {v}"))),
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
        let number = |v: &Option<String>, name: &str, radix: u32| -> Result<Option<u32>> {
            match ex(v)? {
                None => Ok(None),
                Some(v) => u32::from_str_radix(&v, radix)
                    .map(Some)
                    .map_err(|_| self.file_err(line, format!("invalid value {v} for {name}"))),
            }
        };
        let uid = number(&m.uid, "uid", 10)?;
        let gid = number(&m.gid, "gid", 10)?;
        let mode = number(&m.mode, "mode", 8)?;
        let owner_mode = (uid.is_some() || gid.is_some() || mode.is_some())
            .then(|| (uid.unwrap_or(0), gid.unwrap_or(0), mode.unwrap_or(0o755)));
        if kind != MountKind::Cache {
            let kind_name = match kind {
                MountKind::Bind => "bind",
                MountKind::Tmpfs => "tmpfs",
                MountKind::Cache => "cache",
                MountKind::Secret => "secret",
                MountKind::Ssh => "ssh",
            };
            for (set, key) in [(mode, "mode"), (uid, "uid"), (gid, "gid")] {
                if set.is_some() {
                    return Err(self.file_err(
                        line,
                        format!("{key} not allowed for {kind_name:?} type mounts"),
                    ));
                }
            }
        }
        for (set, key) in [(m.required.is_some(), "required"), (m.env.is_some(), "env")] {
            if set {
                return Err(self.file_err(
                    line,
                    format!(
                        "unexpected key '{key}' for mount type '{}'",
                        kind_name(kind)
                    ),
                ));
            }
        }
        let readonly = flag(ex(&m.readonly)?, "readonly")?;
        match kind {
            MountKind::Cache => {
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
                // BuildKit's frontend always joins the namespace
                // (BUILDKIT_CACHE_MOUNT_NS, empty by default) and the id
                // with a slash, so its LLB and kiln's name one cache.
                let ns = self
                    .opts
                    .build_args
                    .get(CACHE_MOUNT_NS_ARG)
                    .map_or("", String::as_str);
                let id = format!("{ns}/{id}");
                // The cache starts as a copy of its base: `from=` (a
                // stage or image) or scratch, plus, with uid/gid/mode, a
                // `/cache` directory made with them to mount instead of
                // the root, as BuildKit's frontend does. The engine keeps
                // one cache per id and base.
                let source = ex(&m.source)?.map(|s| clean(&format!("/{s}")));
                let mut base = match &m.from {
                    Some(from) => self.source_edge(from, stage, line)?,
                    None => None,
                };
                let selector = match (source, owner_mode) {
                    (Some(s), _) if s != "/" => s,
                    (_, Some((uid, gid, mode))) => {
                        base = Some(self.cache_permissions(base, uid, gid, mode)?);
                        "/cache".to_string()
                    }
                    _ => String::new(),
                };
                Ok(Mount {
                    input: base.map(|e| inputs.index(e)),
                    selector,
                    dest,
                    output: None,
                    readonly,
                    mount_type: MountType::Cache { id, sharing },
                })
            }
            MountKind::Tmpfs => {
                let size = match ex(&m.size)? {
                    None => 0,
                    Some(s) => ram_in_bytes(&s).ok_or_else(|| {
                        self.file_err(line, format!("invalid value for size: {s}"))
                    })?,
                };
                let source = ex(&m.source)?.unwrap_or_default();
                // BuildKit counts a tmpfs mount as reading its source from
                // the context (the whole of it when, as always, it has
                // none); so its transfer does, and kiln's.
                if m.from.is_none() {
                    self.context_paths.read(&source);
                }
                Ok(Mount {
                    input: None,
                    selector: String::new(),
                    dest,
                    output: None,
                    readonly: false,
                    mount_type: MountType::Tmpfs { size },
                })
            }
            MountKind::Secret | MountKind::Ssh => {
                Err(self.file_err(line, format!("{} mount out of place", kind_name(kind))))
            }
            MountKind::Bind => {
                let rw = flag(ex(&m.readwrite)?, "readwrite")?;
                let selector = match ex(&m.source)? {
                    Some(s) if !s.is_empty() => clean(&format!("/{s}")),
                    _ => String::new(),
                };
                let src = match &m.from {
                    Some(from) => self.source_edge(from, stage, line)?,
                    None => {
                        self.context_paths.read(&selector);
                        Some(self.context()?)
                    }
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

    /// `[internal] setting cache mount permissions`: `/cache` made on
    /// `base` (scratch when `None`) with the mount's uid, gid and mode.
    fn cache_permissions(
        &mut self,
        base: Option<Edge>,
        uid: u32,
        gid: u32,
        mode: u32,
    ) -> Result<Edge> {
        let mut inputs = Inputs::default();
        let input = inputs.file_input(base);
        let id = |n: u32| Some(UserOpt::ById(n));
        let v = self.add(Vertex {
            op: Op::File(FileOp {
                actions: vec![FileAction {
                    input,
                    secondary_input: None,
                    output: Some(0),
                    action: FileActionKind::MkDir(FileMkDir {
                        path: "/cache".into(),
                        mode,
                        make_parents: false,
                        owner: Some(ChownOpt {
                            user: id(uid),
                            group: id(gid),
                        }),
                        timestamp: None,
                    }),
                }],
            }),
            inputs: inputs.0,
            name: "[internal] setting cache mount permissions".into(),
            location: None,
            ignore_cache: self.opts.no_cache,
        })?;
        Ok(Self::edge(v))
    }
}

/// The build argument that namespaces cache mount ids.
pub const CACHE_MOUNT_NS_ARG: &str = "BUILDKIT_CACHE_MOUNT_NS";

fn kind_name(kind: MountKind) -> &'static str {
    match kind {
        MountKind::Bind => "bind",
        MountKind::Cache => "cache",
        MountKind::Tmpfs => "tmpfs",
        MountKind::Secret => "secret",
        MountKind::Ssh => "ssh",
    }
}

impl Converter<'_> {
    /// `--mount=type=secret`: a file at the target (default
    /// `/run/secrets/<id>`), an env var (`env=`), or both (BuildKit's
    /// `dispatchSecret`). The id, never the value, is in the graph.
    fn secret_mount(
        &self,
        st: &StageState,
        cwd: &str,
        m: &MountSpec,
        line: usize,
    ) -> Result<(Option<Mount>, Option<SecretEnv>)> {
        let ex = |s: &Option<String>| -> Result<Option<String>> {
            s.as_deref()
                .map(|w| self.expand(w, &st.env, line))
                .transpose()
        };
        let err = |m: &str| self.file_err(line, m.to_string());
        if m.from.is_some() {
            return Err(err("secret mount should not have a from"));
        }
        if m.sharing.is_some() {
            return Err(err("secret mount should not define sharing"));
        }
        if m.size.is_some() {
            return Err(err("unexpected key 'size' for mount type 'secret'"));
        }
        let source = ex(&m.source)?.filter(|s| !s.is_empty());
        let id = ex(&m.id)?.filter(|s| !s.is_empty());
        let target = ex(&m.target)?.filter(|s| !s.is_empty());
        if source.is_none() && target.is_none() && id.is_none() {
            return Err(err("invalid secret mount. one of source, target required"));
        }
        if source.is_some() && id.is_some() {
            return Err(err("both source and id can't be set"));
        }
        let base = |p: &str| {
            p.trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string()
        };
        let id = match source.or(id) {
            Some(id) => id,
            None => base(target.as_deref().unwrap_or_default()),
        };
        let required = match ex(&m.required)? {
            None => false,
            Some(v) => parse_bool(&v)
                .ok_or_else(|| self.file_err(line, format!("invalid value for required: {v}")))?,
        };
        let number = |v: Option<String>, name: &str, radix: u32, default: u32| -> Result<u32> {
            match v {
                None => Ok(default),
                Some(v) => u32::from_str_radix(&v, radix)
                    .map_err(|_| self.file_err(line, format!("invalid value {v} for {name}"))),
            }
        };
        let uid = number(ex(&m.uid)?, "uid", 10, 0)?;
        let gid = number(ex(&m.gid)?, "gid", 10, 0)?;
        let mode = number(ex(&m.mode)?, "mode", 8, 0o400)?;
        let env = ex(&m.env)?;
        let dest = match (&target, &env) {
            (Some(t), _) => Some(t.clone()),
            (None, None) => Some(format!("/run/secrets/{}", base(&id))),
            (None, Some(_)) => None,
        };
        let mount = dest.map(|t| {
            let dest = if t.starts_with('/') {
                clean(&t)
            } else {
                clean(&format!("{cwd}/{t}"))
            };
            Mount {
                input: None,
                selector: String::new(),
                dest,
                output: None,
                readonly: true,
                mount_type: MountType::Secret(SecretMount {
                    id: id.clone(),
                    optional: !required,
                    uid,
                    gid,
                    mode,
                }),
            }
        });
        if let Some(Mount { dest, .. }) = &mount {
            if dest == "/" {
                return Err(err("invalid mount target \"/\""));
            }
        }
        let env = env.map(|name| SecretEnv {
            id: id.clone(),
            name,
            optional: !required,
        });
        Ok((mount, env))
    }
}
