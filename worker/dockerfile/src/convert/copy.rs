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
        // `--link`: the copy runs on an empty filesystem and its layer is
        // merged onto the stage (so it neither sees nor follows anything
        // below it, and its layer does not depend on the base). As in
        // BuildKit, `--chmod` turns it back into a plain copy.
        let linked = cp.link && chmod.is_none();
        if linked {
            if let Some(c) = &chown {
                link_chown_check(c).map_err(|m| self.file_err(line, m))?;
            }
        }
        let excludes = cp
            .excludes
            .iter()
            .map(|e| self.expand_unchecked(e, &st.env, line))
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
            // A path of the main context: the CopyIgnoredFile check reads
            // it (against the context's ignore file, in the frontend).
            if cp.from.is_none() && remote.is_none() {
                self.context_paths.read(&s);
                self.context_reads.push(ContextRead {
                    line,
                    add: cp.add,
                    path: s.clone(),
                });
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
        // Several sources are copied onto `dest` in turn (BuildKit adds no
        // `/`): without one, the last file stays.
        let dest = resolve_keep_slash(cwd, &dest_written);

        let mut inputs = Inputs::default();
        let first_input = if linked {
            FileInput::Scratch
        } else {
            inputs.file_input(st.edge)
        };
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
        let owner = chown.as_deref().map(|c| {
            let mut o = chown_opt(c);
            if linked {
                // Nothing to look a name up in: `root` is uid/gid 0.
                for u in [&mut o.user, &mut o.group].into_iter().flatten() {
                    if *u == UserOpt::ByName("root".into()) {
                        *u = UserOpt::ById(0);
                    }
                }
            }
            o
        });
        let n = srcs.len() + cp.contents.len();
        let mut actions: Vec<FileAction> = Vec::with_capacity(n);
        for (k, (src, remote)) in srcs.iter().zip(&remotes).enumerate() {
            let input = if k == 0 {
                first_input
            } else {
                FileInput::Action(k - 1)
            };
            let sel = if cp.parents {
                parents_selection(src)
            } else {
                Selection {
                    src: clean(&format!("/{src}")),
                    include: Vec::new(),
                    required: Vec::new(),
                }
            };
            let copy = FileCopy {
                src: sel.src,
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
                include_patterns: sel.include,
                exclude_patterns: excludes.clone(),
                timestamp: None,
                required_paths: sel.required,
            };
            let (secondary, copy) = match remote {
                None => (secondary, copy),
                Some(r) => {
                    let edge = self.add(Vertex {
                        op: Op::Source(r.op.clone()),
                        inputs: Vec::new(),
                        name: self.display_name(c, "", &st.env),
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
                let (data, m) = heredoc::expand(&content.data, &st.env);
                self.unmatched.borrow_mut().extend(m.unmatched);
                data.map_err(|m| self.file_err(line, m))?
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
                    required_paths: Vec::new(),
                }),
            });
        }
        let op = Op::File(FileOp { actions });
        match (linked, st.edge) {
            (true, Some(base)) => self.add_linked(st, progress, c, op, inputs, base)?,
            // On scratch the merge would be the copy itself.
            _ => self.add_step(st, progress, c, op, inputs)?,
        }

        let mut msg = String::from(what);
        if cp.parents {
            msg.push_str(" --parents");
        }
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

impl Converter<'_> {
    /// A linked copy: `op` (on scratch) and a merge of the stage's `base`
    /// with its result, shown as `LINK <instruction>` under the same step
    /// number, as BuildKit names them.
    fn add_linked(
        &mut self,
        st: &mut StageState,
        progress: &mut Progress,
        c: &Command,
        op: Op,
        inputs: Inputs,
        base: Edge,
    ) -> Result<()> {
        let display = self.display_name(c, "", &st.env);
        let name = progress.name(&display, &st.env);
        let copy = self.add(Vertex {
            op,
            inputs: inputs.0,
            name,
            location: self.location(c.line),
            ignore_cache: self.opts.no_cache,
        })?;
        let merged = self.add(Vertex {
            op: Op::Merge(MergeOp { inputs: vec![0, 1] }),
            inputs: vec![base, Self::edge(copy)],
            name: progress.same(&format!("LINK {display}"), &st.env),
            location: self.location(c.line),
            ignore_cache: self.opts.no_cache,
        })?;
        st.edge = Some(Self::edge(merged));
        Ok(())
    }
}

/// A `--chown` a linked copy can apply: ids, or `root`. A name would have
/// to be looked up in the stage's `/etc/passwd`, which a copy made on an
/// empty filesystem does not have. BuildKit fails such a build too, late,
/// with "invalid user index: -1" (its lookup input is the empty
/// filesystem's index); kiln fails before the build, with BuildKit's words
/// and what they mean.
fn link_chown_check(spec: &str) -> std::result::Result<(), String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    for name in std::iter::once(user).chain(group) {
        if !name.is_empty() && name != "root" && name.parse::<u32>().is_err() {
            return Err(format!(
                "invalid user index: -1: --chown={spec} with --link: the name {name:?} cannot be resolved on the empty filesystem a linked copy is made on; use a numeric UID[:GID]"
            ));
        }
    }
    Ok(())
}

/// What one source of a copy selects from its source tree.
struct Selection {
    src: String,
    include: Vec<String>,
    required: Vec<String>,
}

/// `COPY --parents`: the source tree below the `/./` pivot (or the whole
/// tree) is copied with the rest of the path as an include pattern, so the
/// matched paths keep their parent directories under the destination. A
/// path without wildcards must exist.
fn parents_selection(src: &str) -> Selection {
    let (root, pattern) = match src.split_once("/./") {
        Some((root, pattern)) => (root, pattern),
        None => ("/", src),
    };
    let pattern = clean(&format!("/{pattern}"));
    let required = if has_wildcards(root) || has_wildcards(&pattern) {
        Vec::new()
    } else {
        vec![clean(&format!("/{root}/{pattern}"))]
    };
    Selection {
        src: clean(&format!("/{root}")),
        include: vec![pattern.trim_start_matches('/').to_string()],
        required,
    }
}

/// Whether a path has a wildcard character that is not escaped.
fn has_wildcards(p: &str) -> bool {
    let mut chars = p.chars();
    while let Some(c) = chars.next() {
        match c {
            '*' | '?' | '[' => return true,
            '\\' => {
                chars.next();
            }
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_pivot_splits_root_and_pattern() {
        let s = parents_selection("x/./y/z.txt");
        assert_eq!(s.src, "/x");
        assert_eq!(s.include, ["y/z.txt"]);
        assert_eq!(s.required, ["/x/y/z.txt"]);
    }

    #[test]
    fn parents_without_pivot_copies_from_the_root() {
        let s = parents_selection("./a/b");
        assert_eq!(s.src, "/");
        assert_eq!(s.include, ["a/b"]);
        assert_eq!(s.required, ["/a/b"]);
    }

    #[test]
    fn parents_with_wildcards_require_nothing() {
        let s = parents_selection("a/*/c.txt");
        assert_eq!(s.include, ["a/*/c.txt"]);
        assert!(s.required.is_empty());
        let s = parents_selection("a\\*b");
        assert_eq!(s.required.len(), 1, "an escaped star is literal");
    }

    #[test]
    fn link_chown_takes_ids_and_root_only() {
        assert!(link_chown_check("1000:1000").is_ok());
        assert!(link_chown_check("root").is_ok());
        assert!(link_chown_check("1:root").is_ok());
        let e = link_chown_check("app:1").expect_err("a name");
        assert!(e.contains("\"app\""), "{e}");
        assert!(link_chown_check("1:staff").is_err());
    }
}
