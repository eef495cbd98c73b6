//! The main build context from a URL (the `context` frontend attribute,
//! `kiln build <git URL | https URL>`), as BuildKit's dockerui reads it:
//! - a git reference (`https://host/repo.git#ref:subdir`, `git://…`,
//!   `?ref=&subdir=&keep-git-dir=`) is its checkout, and the Dockerfile
//!   is read from that checkout (the filename relative to the subdir);
//! - any other `http(s)://` URL is downloaded as the file `context`: a
//!   tar archive (plain, gzip, bzip2 or xz) is unpacked and is the
//!   context; anything else is the Dockerfile itself, with an empty
//!   context. `http://buildkit-session/<id>` is the client's upload (a
//!   tar context on stdin through buildx), read from its session.
//!
//! `contextsubdir` scopes the context to one of its directories (the
//! Dockerfile is still read from the whole tree); an explicit
//! `dockerfilekey` makes the Dockerfile the client's, and the context is
//! then fetched only to settle what it is ([`settle_context`]).
//!
//! No `.dockerignore` applies to a remote context (BuildKit reads ignore
//! files for local contexts only). The engine fetches the source more
//! than once in the same way, so later fetches are cache hits: the git
//! checkout is keyed by commit, the download by ETag or checksum, an
//! upload by its URL within the session.

use crate::{FrontendError, FrontendOptions, Result};
use kiln_solver::graph::{
    Edge, FileAction, FileActionKind, FileCopy, FileInput, FileOp, Op, SourceOp, Vertex,
};
use kiln_solver::source::{GitRef, GitSource, HttpSource};
use kiln_solver::{Graph, VertexId};
use std::sync::Arc;

/// The name of the downloaded file of an HTTP context (BuildKit's).
pub const HTTP_FILENAME: &str = "context";

/// A main context that is not a client directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteContext {
    /// The URL as given.
    pub url: String,
    pub kind: RemoteKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RemoteKind {
    /// A git checkout; `keep_git_dir` and `mtime` are settled by the
    /// build arguments after parsing (`apply_build_args`).
    Git(Box<GitSource>),
    /// An HTTP(S) download; `archive` is known once it is fetched
    /// ([`load_dockerfile`]).
    Http { archive: bool },
}

impl RemoteContext {
    /// Reads the `context` attribute: a git reference or an HTTP(S) URL.
    pub fn parse(key: &str, value: &str) -> Result<RemoteContext> {
        let invalid = |reason: String| FrontendError::InvalidAttribute {
            key: key.to_string(),
            value: value.to_string(),
            reason,
        };
        let git = GitRef::parse(value).map_err(|e| invalid(e.to_string()))?;
        let kind = match git {
            Some(g) => {
                let src = GitSource::from_ref(&g);
                // What the engine would refuse (an attribute it does not
                // handle) is refused before anything runs.
                GitSource::from_op(&src.to_op()).map_err(|e| match e {
                    kiln_solver::source::SourceError::Unsupported(what) => {
                        FrontendError::Unsupported {
                            what: format!("{what} as the build context ({value})"),
                        }
                    }
                    e => invalid(e.to_string()),
                })?;
                RemoteKind::Git(Box::new(src))
            }
            None if value.starts_with("http://") || value.starts_with("https://") => {
                RemoteKind::Http { archive: false }
            }
            None => {
                return Err(invalid(
                    "the build context must be a git repository or an http(s) URL".into(),
                ))
            }
        };
        Ok(RemoteContext {
            url: value.to_string(),
            kind,
        })
    }

    /// The source op that fetches it.
    pub fn source_op(&self) -> SourceOp {
        match &self.kind {
            RemoteKind::Git(g) => g.to_op(),
            RemoteKind::Http { .. } => HttpSource {
                url: self.url.clone(),
                filename: HTTP_FILENAME.into(),
                ..HttpSource::default()
            }
            .to_op(),
        }
    }

    /// The progress name of its source vertex, BuildKit's.
    pub fn vertex_name(&self) -> String {
        match &self.kind {
            RemoteKind::Git(_) => format!("[internal] load git source {}", self.url),
            RemoteKind::Http { .. } => "[internal] load remote build context".into(),
        }
    }

    /// The vertices a fetch of the context shows, as the build's graph
    /// has them: (name, definition digest, input digests), the source and
    /// the unpacking copy an HTTP archive gets, so a client shows the
    /// fetch before planning and the build's own vertex as one.
    pub fn vertices(&self) -> Vec<(String, String, Vec<String>)> {
        let mut graph = Graph::default();
        let unpacked = match &self.kind {
            RemoteKind::Http { .. } => RemoteContext {
                kind: RemoteKind::Http { archive: true },
                ..self.clone()
            },
            RemoteKind::Git(_) => self.clone(),
        };
        if unpacked.add_to(&mut graph, false).is_err() {
            return Vec::new();
        }
        let digests = graph.definition_digests();
        graph
            .vertices
            .iter()
            .zip(&digests)
            .map(|(v, d)| {
                let inputs = v
                    .inputs
                    .iter()
                    .map(|e| digests[e.vertex.0].to_string())
                    .collect();
                (v.name.clone(), d.to_string(), inputs)
            })
            .collect()
    }

    /// Appends the vertices of the context to `graph`: the source, and for
    /// an archive the copy that unpacks it onto scratch. Returns the
    /// context's vertex.
    pub fn add_to(&self, graph: &mut Graph, ignore_cache: bool) -> Result<VertexId> {
        let graph_err = |e| FrontendError::Dockerfile(kiln_dockerfile::ParseError::Graph(e));
        let src = graph
            .add(Vertex {
                op: Op::Source(self.source_op()),
                inputs: Vec::new(),
                name: self.vertex_name(),
                location: None,
                ignore_cache,
            })
            .map_err(graph_err)?;
        if !matches!(self.kind, RemoteKind::Http { archive: true }) {
            return Ok(src);
        }
        copy_to_scratch(
            graph,
            src,
            FileCopy {
                src: format!("/{HTTP_FILENAME}"),
                dest: "/".into(),
                attempt_unpack_docker_compatibility: true,
                create_dest_path: true,
                ..FileCopy::default()
            },
            ignore_cache,
        )
    }
}

/// Appends `copy` from `from` onto scratch, named as BuildKit names an
/// unnamed copy (`copy SRC DEST`: dockerui names neither the unpacking
/// of an HTTP archive nor the scoping to a subdirectory), and returns it.
fn copy_to_scratch(
    graph: &mut Graph,
    from: VertexId,
    copy: FileCopy,
    ignore_cache: bool,
) -> Result<VertexId> {
    let name = format!("copy {} {}", copy.src, copy.dest);
    graph
        .add(Vertex {
            op: Op::File(FileOp {
                actions: vec![FileAction {
                    input: FileInput::Scratch,
                    secondary_input: Some(FileInput::Input(0)),
                    output: Some(0),
                    action: FileActionKind::Copy(copy),
                }],
            }),
            inputs: vec![Edge {
                vertex: from,
                output: 0,
            }],
            name,
            location: None,
            ignore_cache,
        })
        .map_err(|e| FrontendError::Dockerfile(kiln_dockerfile::ParseError::Graph(e)))
}

/// `BUILDKIT_CONTEXT_KEEP_GIT_DIR` (Go's boolean; anything else is no
/// choice) and a non-empty `SOURCE_DATE_EPOCH` (checkout times are the
/// commit's unless the URL says `?mtime=`), as BuildKit applies them to a
/// git context. Neither changes anything for other contexts.
pub(crate) fn apply_build_args(opts: &mut FrontendOptions) {
    let keep = opts
        .build_args
        .get("BUILDKIT_CONTEXT_KEEP_GIT_DIR")
        .and_then(|v| crate::parse_go_bool(v));
    let epoch = opts
        .build_args
        .get("SOURCE_DATE_EPOCH")
        .is_some_and(|v| !v.is_empty());
    let Some(RemoteContext {
        kind: RemoteKind::Git(g),
        url,
    }) = &mut opts.remote_context
    else {
        return;
    };
    if keep == Some(true) {
        g.keep_git_dir = true;
    }
    // The URL's own `?mtime=` wins, as it is applied after.
    let url_mtime = GitRef::parse(url)
        .ok()
        .flatten()
        .is_some_and(|r| !r.mtime.is_empty());
    if epoch && !url_mtime {
        g.mtime = "commit".into();
    }
}

/// The `contextsubdir` attribute: a directory of the fetched context,
/// cleaned as BuildKit's copy cleans its source against `/` (`a/../b` is
/// `b`, `../up` is `up`); `None` for the whole context (empty, `.`, `/`).
pub fn context_subdir(value: &str) -> Option<String> {
    let mut parts = Vec::new();
    for part in value.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            p => parts.push(p),
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Appends the copy of `subdir`'s contents of `context` onto scratch
/// (BuildKit's `scopeToSubDir`) and returns it.
fn scope_to_subdir(
    graph: &mut Graph,
    context: VertexId,
    subdir: &str,
    ignore_cache: bool,
) -> Result<VertexId> {
    copy_to_scratch(
        graph,
        context,
        FileCopy {
            src: format!("/{subdir}"),
            dest: "/".into(),
            dir_copy_contents: true,
            ..FileCopy::default()
        },
        ignore_cache,
    )
}

/// Replaces the graph's `local://context` source with the remote
/// context's vertices (appended at its place, every later vertex moved),
/// scoped to `subdir` when one is given, and returns the moved `result`.
pub fn replace_context(
    graph: Graph,
    result: VertexId,
    remote: &RemoteContext,
    subdir: Option<&str>,
) -> Result<(Graph, VertexId)> {
    let local = format!("local://{}", crate::CONTEXT_NAME);
    let mut out = Graph::default();
    let mut moved = Vec::with_capacity(graph.vertices.len());
    for mut v in graph.vertices {
        let is_context = matches!(&v.op, Op::Source(s) if s.identifier == local);
        if is_context {
            let mut context = remote.add_to(&mut out, v.ignore_cache)?;
            if let Some(dir) = subdir {
                context = scope_to_subdir(&mut out, context, dir, v.ignore_cache)?;
            }
            moved.push(context);
            continue;
        }
        for e in &mut v.inputs {
            e.vertex = moved[e.vertex.0];
        }
        moved.push(
            out.add(v)
                .map_err(|e| FrontendError::Dockerfile(kiln_dockerfile::ParseError::Graph(e)))?,
        );
    }
    Ok((out, moved[result.0]))
}

/// What a fetch of the context needs from the caller: the engine and the
/// client's credentials (its secrets carry git tokens).
#[derive(Debug)]
pub struct Fetch<'a> {
    pub engine: &'a kiln_engine::Engine,
    pub credentials: Arc<dyn kiln_registry::Credentials>,
    pub secrets: Arc<dyn kiln_engine::secrets::SecretSource>,
    pub ssh: Arc<dyn kiln_engine::ssh::SshSource>,
    /// The client's uploads (a tar context on stdin through buildx).
    pub uploads: Arc<dyn kiln_engine::uploads::UploadSource>,
    pub progress: kiln_engine::Progress,
    pub cancel: tokio_util::sync::CancellationToken,
}

/// Fetches the remote context of `opts` and reads the Dockerfile from it
/// (for a plain HTTP file, the file itself, whose name becomes
/// `opts.filename`). Marks an HTTP archive so that the graph unpacks it.
pub async fn load_dockerfile(
    fetch: &Fetch<'_>,
    opts: &mut FrontendOptions,
) -> Result<crate::DockerfileSource> {
    let fetched = fetch_context(fetch, opts).await?;
    let r = crate::read_dockerfile(fetched.0.path(), &opts.filename, fetched.0.path());
    close(fetched).await;
    r.map(without_excludes)
}

/// For a build whose Dockerfile is the client's (`dockerfilekey`, as
/// buildx sends an absolute `-f` beside a URL context): fetches an HTTP
/// context of `opts` (and unpacks it when it is an archive) as the
/// Dockerfile's read would, only to settle what it is, as BuildKit does;
/// a git context needs nothing.
pub async fn settle_context(fetch: &Fetch<'_>, opts: &mut FrontendOptions) -> Result<()> {
    if matches!(
        opts.remote_context.as_ref().map(|r| &r.kind),
        Some(RemoteKind::Http { .. })
    ) {
        let filename = opts.filename.clone();
        close(fetch_context(fetch, opts).await?).await;
        opts.filename = filename;
    }
    Ok(())
}

/// Fetches the remote context of `opts` and mounts the tree the Dockerfile
/// is read from: the checkout, the unpacked archive, or the directory
/// holding a plain HTTP file (whose name becomes `opts.filename`).
async fn fetch_context(fetch: &Fetch<'_>, opts: &mut FrontendOptions) -> Result<Fetched> {
    let Some(remote) = opts.remote_context.clone() else {
        return Err(FrontendError::Unsupported {
            what: "reading a Dockerfile of a local context here".into(),
        });
    };
    let fetched = solve_view(fetch, &remote, opts.no_cache).await?;
    if !matches!(remote.kind, RemoteKind::Http { .. }) {
        return Ok(fetched);
    }
    let archive = match read_head(&fetched, HTTP_FILENAME, 1024) {
        Ok(h) => is_archive(&h),
        Err(e) => {
            close(fetched).await;
            return Err(e);
        }
    };
    if !archive {
        opts.filename = HTTP_FILENAME.to_string();
        return Ok(fetched);
    }
    close(fetched).await;
    let unpacked = RemoteContext {
        kind: RemoteKind::Http { archive: true },
        ..remote
    };
    opts.remote_context = Some(unpacked.clone());
    solve_view(fetch, &unpacked, opts.no_cache).await
}

/// No ignore file applies to a remote context, whether the Dockerfile
/// came with it or is the client's (BuildKit reads ignore files for a
/// local context only).
pub fn without_excludes(mut s: crate::DockerfileSource) -> crate::DockerfileSource {
    s.excludes.clear();
    s
}

pub(crate) type Fetched = (kiln_engine::build::ResultView, kiln_engine::build::Solved);

pub(crate) async fn close((view, solved): Fetched) {
    view.close().await;
    solved.release(false).await;
}

/// Solves the context's vertices alone and mounts the result.
async fn solve_view(fetch: &Fetch<'_>, remote: &RemoteContext, no_cache: bool) -> Result<Fetched> {
    let mut graph = Graph::default();
    let result = remote.add_to(&mut graph, no_cache)?;
    solve_graph(fetch, graph, result).await
}

/// Solves `graph` (sources only: no local context, no image, no secret
/// of its own) and mounts its `result` read-only.
pub(crate) async fn solve_graph(
    fetch: &Fetch<'_>,
    mut graph: Graph,
    result: VertexId,
) -> Result<Fetched> {
    crate::knownhosts::pin(&mut graph).await;
    let req = kiln_engine::BuildRequest {
        graph,
        result,
        config: Default::default(),
        locals: Default::default(),
        oci_stores: Default::default(),
        names: Vec::new(),
        compression: kiln_snapshot::diff::Compression::Gzip,
        cache_imports: Vec::new(),
        cache_exports: Vec::new(),
        credentials: fetch.credentials.clone(),
        resolve_mode: Default::default(),
        pinned: Default::default(),
        push: None,
        secrets: fetch.secrets.clone(),
        ssh: fetch.ssh.clone(),
        uploads: fetch.uploads.clone(),
        rewrite_timestamp: false,
        export_blobs: false,
        annotations: Default::default(),
        media_types: Default::default(),
        force_compression: false,
        compression_level: Default::default(),
    };
    let solved = fetch
        .engine
        .solve(&req, fetch.progress.clone(), fetch.cancel.clone())
        .await?;
    match solved.view().await {
        Ok(view) => Ok((view, solved)),
        Err(e) => {
            solved.release(false).await;
            Err(e.into())
        }
    }
}

/// The first `n` bytes of `name` in the fetched tree.
fn read_head(fetched: &Fetched, name: &str, n: u64) -> Result<Vec<u8>> {
    use std::io::Read;
    let path = fetched.0.path().join(name);
    let io = |source| FrontendError::Io {
        path: path.clone(),
        source,
    };
    let mut out = Vec::new();
    std::fs::File::open(&path)
        .map_err(io)?
        .take(n)
        .read_to_end(&mut out)
        .map_err(io)?;
    Ok(out)
}

/// BuildKit's `isArchive`: a bzip2, gzip or xz stream, or a tar header.
pub fn is_archive(head: &[u8]) -> bool {
    let magic: [&[u8]; 3] = [
        &[0x42, 0x5A, 0x68],
        &[0x1F, 0x8B, 0x08],
        &[0xFD, 0x37, 0x7A, 0x58, 0x5A, 0x00],
    ];
    if magic.iter().any(|m| head.starts_with(m)) {
        return true;
    }
    tar_header(head)
}

/// Whether `head` starts with a tar header whose checksum is right (what
/// Go's tar reader checks first; also old v7 tars without `ustar`).
fn tar_header(head: &[u8]) -> bool {
    let Some(h) = head.get(..512) else {
        return false;
    };
    let field = &h[148..156];
    let text: String = field
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as char)
        .collect();
    let Ok(want) = u32::from_str_radix(text.trim(), 8) else {
        return false;
    };
    let sum: u32 = h
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(c)
            }
        })
        .sum();
    sum == want
}
