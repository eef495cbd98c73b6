//! `COPY` and `ADD`: the file op that copies from the context, a stage or
//! an image, with `--chown` and `--chmod`, and BuildKit's history text.

use super::*;
use kiln_solver::chmod::SymbolicMode;

impl Converter<'_> {
    pub(super) fn dispatch_copy(
        &mut self,
        stage: usize,
        st: &mut StageState,
        progress: &mut Progress,
        c: &Command,
        cp: &Copy,
    ) -> Result<()> {
        let line = c.line;
        let what = if cp.add { "ADD" } else { "COPY" };
        // A linked copy is made on an empty layer and merged, so it does
        // not see (or follow symlinks of) what is below it; a plain copy
        // would give another filesystem, so it is refused rather than
        // approximated.
        if cp.link {
            return Err(ParseError::Unsupported {
                file: self.opts.filename.clone(),
                line,
                feature: format!("{what} --link"),
            });
        }
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
        // BuildKit's rules: octal up to 07777, else a symbolic mode; a
        // value that starts like a number is reported as a bad octal one.
        let chmod = chmod.filter(|m| !m.is_empty());
        let (mode, mode_str) = match &chmod {
            None => (None, None),
            Some(m) => match u32::from_str_radix(m, 8) {
                Ok(v) if v <= 0o7777 => (Some(v), None),
                _ if m.starts_with(|c: char| c.is_ascii_digit()) => {
                    return Err(self.file_err(
                        line,
                        format!("invalid chmod parameter: '{m}'. it should be octal string and between 0 and 07777"),
                    ))
                }
                _ => match SymbolicMode::parse(m) {
                    Ok(_) => (None, Some(m.clone())),
                    Err(e) => return Err(self.file_err(line, e.to_string())),
                },
            },
        };
        let excludes = cp
            .excludes
            .iter()
            .map(|e| self.expand(e, &st.env, line))
            .collect::<Result<Vec<_>>>()?;
        let checksum = cp
            .checksum
            .as_ref()
            .map(|s| self.expand(s, &st.env, line))
            .transpose()?;
        let mut srcs = Vec::new();
        let mut remotes: Vec<Option<Remote>> = Vec::new();
        for s in &cp.srcs {
            let s = self.expand(s, &st.env, line)?;
            let remote = self.remote_source(&s, cp, checksum.as_deref(), line)?;
            if remote.is_none() && checksum.is_some() {
                return Err(self.file_err(line, "checksum requires HTTP(S) or Git sources".into()));
            }
            remotes.push(remote);
            srcs.push(s);
        }
        if checksum.is_some() && srcs.len() + cp.contents.len() != 1 {
            return Err(self.file_err(
                line,
                "checksum can't be specified for multiple sources".into(),
            ));
        }
        let dest_written = self.expand(&cp.dest, &st.env, line)?;
        let cwd = if st.config.working_dir.is_empty() {
            "/"
        } else {
            &st.config.working_dir
        };
        let mut dest = resolve_keep_slash(cwd, &dest_written);
        if srcs.len() + cp.contents.len() > 1 && !dest.ends_with('/') {
            dest.push('/');
        }

        let mut inputs = Inputs::default();
        let first_input = inputs.file_input(st.edge);
        // Only local sources read the context (or `--from`).
        let secondary = if remotes.iter().all(Option::is_some) {
            FileInput::Scratch
        } else {
            let source = match &cp.from {
                Some(from) => self.source_edge(from, stage, line)?,
                None => Some(self.context()?),
            };
            inputs.file_input(source)
        };
        let owner = chown.as_deref().map(chown_opt);
        let n = srcs.len() + cp.contents.len();
        let mut actions: Vec<FileAction> = Vec::with_capacity(n);
        for (k, (src, remote)) in srcs.iter().zip(&remotes).enumerate() {
            let input = if k == 0 {
                first_input
            } else {
                FileInput::Action(k - 1)
            };
            let copy = FileCopy {
                src: clean(&format!("/{src}")),
                dest: dest.clone(),
                owner: owner.clone(),
                mode,
                mode_str: mode_str.clone(),
                follow_symlink: true,
                dir_copy_contents: true,
                attempt_unpack_docker_compatibility: cp.unpack.unwrap_or(cp.add),
                create_dest_path: true,
                allow_wildcard: true,
                allow_empty_wildcard: true,
                include_patterns: Vec::new(),
                exclude_patterns: excludes.clone(),
                timestamp: None,
            };
            let (secondary, copy) = match remote {
                None => (secondary, copy),
                Some(r) => {
                    let edge = self.add(Vertex {
                        op: Op::Source(r.op.clone()),
                        inputs: Vec::new(),
                        name: self.display_name(c, &st.env),
                        location: self.location(line),
                        ignore_cache: self.opts.no_cache,
                    })?;
                    // A remote source is one file (HTTP) or a tree (git)
                    // at its root, never unpacked unless asked to.
                    let copy = FileCopy {
                        src: r.src.clone(),
                        follow_symlink: false,
                        dir_copy_contents: r.src == "/",
                        attempt_unpack_docker_compatibility: r.src != "/"
                            && cp.unpack.unwrap_or(false),
                        allow_wildcard: false,
                        allow_empty_wildcard: false,
                        ..copy
                    };
                    (inputs.file_input(Some(Self::edge(edge))), copy)
                }
            };
            actions.push(FileAction {
                input,
                secondary_input: Some(secondary),
                output: (k + 1 == n).then_some(0),
                action: FileActionKind::Copy(copy),
            });
        }
        // Heredoc sources: each body is written to a scratch file named
        // after its delimiter, then copied like a file of the context.
        for content in &cp.contents {
            let data = if content.expand {
                heredoc::expand(&content.data, &st.env).map_err(|m| self.file_err(line, m))?
            } else {
                content.data.clone()
            };
            let file = self.inline_document(&content.name, 0o644, data)?;
            let k = actions.len();
            let secondary = inputs.file_input(Some(file));
            actions.push(FileAction {
                input: if k == 0 {
                    first_input
                } else {
                    FileInput::Action(k - 1)
                },
                secondary_input: Some(secondary),
                output: (k + 1 == n).then_some(0),
                action: FileActionKind::Copy(FileCopy {
                    src: format!("/{}", content.name),
                    dest: dest.clone(),
                    owner: owner.clone(),
                    mode,
                    mode_str: mode_str.clone(),
                    follow_symlink: false,
                    dir_copy_contents: false,
                    attempt_unpack_docker_compatibility: false,
                    create_dest_path: true,
                    allow_wildcard: false,
                    allow_empty_wildcard: false,
                    include_patterns: Vec::new(),
                    exclude_patterns: excludes.clone(),
                    timestamp: None,
                }),
            });
        }
        self.add_step(st, progress, c, Op::File(FileOp { actions }), inputs)?;

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
        for content in &cp.contents {
            msg.push_str(&format!(" <<{}", content.name));
        }
        msg.push_str(&format!(" {dest_written} # buildkit"));
        st.config.history.push(history(msg, true));
        Ok(())
    }
}

/// A remote source of `ADD`: its source op and what to copy from it.
struct Remote {
    op: SourceOp,
    /// `/<file name>` of an HTTP source, `/` of a git checkout.
    src: String,
}

impl Converter<'_> {
    /// The source op of `src` when it is a URL or a git reference, with
    /// BuildKit's checks of `--checksum` and `--keep-git-dir`.
    fn remote_source(
        &self,
        src: &str,
        cp: &Copy,
        checksum: Option<&str>,
        line: usize,
    ) -> Result<Option<Remote>> {
        use kiln_solver::source::{self as remote, GitRef, GitSource, HttpSource};
        let git = GitRef::parse(src).map_err(|e| self.file_err(line, e.to_string()))?;
        if let Some(g) = git {
            if !cp.add {
                return Err(self.file_err(line, "source can't be a git ref for COPY".into()));
            }
            if let (Some(flag), Some(q)) = (cp.keep_git_dir, g.keep_git_dir) {
                if flag != q {
                    return Err(
                        self.file_err(line, "inconsistent keep-git-dir configuration".into())
                    );
                }
            }
            let mut s = GitSource::from_ref(&g);
            s.keep_git_dir = g.keep_git_dir.or(cp.keep_git_dir).unwrap_or(false);
            if let Some(c) = checksum {
                if !g.checksum.is_empty() && g.checksum != c {
                    return Err(
                        self.file_err(line, format!("checksum mismatch {c:?} != {:?}", g.checksum))
                    );
                }
                s.checksum = c.to_string();
            }
            // What the engine will refuse is refused now, before any step.
            let op = s.to_op();
            GitSource::from_op(&op).map_err(|e| match e {
                remote::SourceError::Unsupported(what) => ParseError::Unsupported {
                    file: self.opts.filename.clone(),
                    line,
                    feature: format!("ADD of {what}"),
                },
                e => self.file_err(line, e.to_string()),
            })?;
            return Ok(Some(Remote {
                op,
                src: "/".into(),
            }));
        }
        if !(src.starts_with("http://") || src.starts_with("https://")) {
            if cp.keep_git_dir.is_some() {
                // BuildKit ignores the flag here; kiln says so instead.
                return Err(ParseError::Unsupported {
                    file: self.opts.filename.clone(),
                    line,
                    feature: "ADD --keep-git-dir for a source that is not a git repository".into(),
                });
            }
            return Ok(None);
        }
        if !cp.add {
            return Err(self.file_err(line, "source can't be a URL for COPY".into()));
        }
        if cp.keep_git_dir.is_some() {
            return Err(ParseError::Unsupported {
                file: self.opts.filename.clone(),
                line,
                feature: "ADD --keep-git-dir for a source that is not a git repository".into(),
            });
        }
        if let Some(c) = checksum {
            remote::parse_sha256(c).map_err(|e| self.file_err(line, e.to_string()))?;
        }
        let filename = remote::url_file_name(src);
        let s = HttpSource {
            url: src.to_string(),
            filename: filename.clone(),
            checksum: checksum.unwrap_or_default().to_string(),
            ..HttpSource::default()
        };
        Ok(Some(Remote {
            op: s.to_op(),
            src: format!("/{filename}"),
        }))
    }
}
