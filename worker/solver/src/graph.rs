//! The build graph: vertices holding LLB-shaped ops, joined by edges.
//!
//! The field names follow BuildKit's `solver/pb/ops.proto` so that a
//! `pb.Definition` converts to a [`Graph`] one to one.

use crate::digest::Digest;
use crate::{Result, SolveError};
pub use kiln_types::process::{HostIp, Resources, Ulimit};
use std::collections::{BTreeMap, HashMap};

/// Index of a vertex in [`Graph::vertices`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct VertexId(pub usize);

/// One output of one vertex: what another op reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub struct Edge {
    pub vertex: VertexId,
    /// Output index of that vertex's op (ExecOp mounts and FileOp actions may
    /// have several outputs; source and merge ops have one, index 0).
    pub output: usize,
}

/// Where in a build file a vertex came from, for error messages
/// (`Dockerfile:12`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SourceLocation {
    pub file: String,
    pub line: usize,
    /// The instruction's last line (its continuation lines and heredoc
    /// bodies included): BuildKit's source ranges, and so the `>>>` of an
    /// error's snippet, cover all of them. `line` for a one-line one.
    pub end_line: usize,
}

/// A node of the graph.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Vertex {
    pub op: Op,
    /// Inputs, addressed by position from op fields (`Mount::input`,
    /// `FileAction::input`, ...), like `pb.Op.inputs`.
    pub inputs: Vec<Edge>,
    /// Display name, e.g. `[build 2/4] RUN make`.
    pub name: String,
    pub location: Option<SourceLocation>,
    /// Never take this vertex from the cache (`--no-cache`, `--no-cache-filter`).
    pub ignore_cache: bool,
}

/// An LLB operation.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[allow(
    clippy::large_enum_variant,
    reason = "an exec carries its whole process; a graph holds a few hundred ops at most, \
              so boxing it would only add indirection to every pattern match"
)]
pub enum Op {
    Source(SourceOp),
    Exec(ExecOp),
    File(FileOp),
    Merge(MergeOp),
}

/// `pb.SourceOp`: an image, the local context, ...
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SourceOp {
    /// `docker-image://docker.io/library/busybox:latest`, `local://context`.
    pub identifier: String,
    /// `local.includepattern`, `local.excludepatterns`, ... as in LLB.
    pub attrs: BTreeMap<String, String>,
    /// The platform an image source picks from an index (LLB's
    /// `Op.platform`); `None` is the worker's own. Left out of the
    /// definition when unset, so keys of host builds stay what they were.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<crate::Platform>,
}

/// What a `local://` source asks of the client's directory, from its LLB
/// attributes (each a JSON list of strings; a missing or malformed one is
/// empty, as BuildKit reads them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalFilter {
    /// `local.includepattern` and `local.includepatterns`.
    pub includes: Vec<String>,
    /// `local.excludepatterns`.
    pub excludes: Vec<String>,
    /// `local.followpaths`.
    pub follow_paths: Vec<String>,
}

/// The attribute naming the client session a `local://` source reads
/// (BuildKit's `pb.AttrLocalSessionID`); without it, the build's own.
pub const ATTR_LOCAL_SESSION: &str = "local.session";

impl SourceOp {
    /// The client session a `local://` source reads, when it names one
    /// ([`ATTR_LOCAL_SESSION`]).
    pub fn local_session(&self) -> Option<&str> {
        self.attrs
            .get(ATTR_LOCAL_SESSION)
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    /// What a build's local directories are keyed by for this `local://`
    /// source (`None` for any other source): its name, and the session it
    /// names if any, so one name in two sessions is two directories.
    pub fn local_key(&self) -> Option<String> {
        let name = self.identifier.strip_prefix("local://")?;
        Some(match self.local_session() {
            Some(session) => format!("{name}\u{0}{session}"),
            None => name.to_string(),
        })
    }

    /// The filter of a `local://` source ([`LocalFilter`]).
    pub fn local_filter(&self) -> LocalFilter {
        let list = |key: &str| -> Vec<String> {
            self.attrs
                .get(key)
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or_default()
        };
        let mut includes = list("local.includepattern");
        includes.extend(list("local.includepatterns"));
        LocalFilter {
            includes,
            excludes: list("local.excludepatterns"),
            follow_paths: list("local.followpaths"),
        }
    }
}

/// `pb.NetMode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum NetMode {
    /// BuildKit's "sandbox" default: the worker's network mode decides
    /// (a fresh namespace on kiln's CNI bridge, or the host's network).
    #[default]
    Unset,
    Host,
    None,
}

/// `pb.SecurityMode`: the sandbox of an exec.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum SecurityMode {
    /// The default sandbox (seccomp, masked paths, reduced capabilities).
    #[default]
    Sandbox,
    /// `RUN --security=insecure`: needs the `security.insecure` entitlement.
    Insecure,
}

impl SecurityMode {
    /// Whether this is the default (left out of cache keys, so keys of
    /// sandboxed steps are what they were before the field existed).
    pub fn is_sandbox(&self) -> bool {
        *self == SecurityMode::Sandbox
    }
}

/// `pb.Meta`: the process of an exec.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Meta {
    pub args: Vec<String>,
    /// `K=V` entries.
    pub env: Vec<String>,
    pub cwd: String,
    /// `user`, `user:group`, `uid`, `uid:gid`; empty means root.
    pub user: String,
    pub hostname: String,
    /// Extra `/etc/hosts` entries (the `add-hosts` attribute, LLB
    /// `extraHosts`), after the default ones.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_hosts: Vec<HostIp>,
    /// Resource limits (the `ulimit` attribute, LLB `ulimit`); when any is
    /// given they replace the default open-files limit, as in BuildKit.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ulimits: Vec<Ulimit>,
    /// Exit codes that count as success (LLB `validExitCodes`); empty
    /// means 0 only.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub valid_exit_codes: Vec<i32>,
    /// Proxy variables given to the process on top of `env`. Like
    /// BuildKit's `ProxyEnv` they are not part of the definition, so they
    /// never change a cache key or the build history.
    #[serde(skip)]
    pub proxy_env: Option<Box<ProxyEnv>>,
    /// cgroup limits of the process (buildx `--resource`, LLB
    /// `OpMetadata.linux_resources`). Metadata in BuildKit, not part of
    /// the definition: they never change a cache key.
    #[serde(skip)]
    pub resources: Option<Box<Resources>>,
}

impl Meta {
    /// Whether the process's exit code means success: 0, or one of
    /// `valid_exit_codes` when there are any (BuildKit's rule).
    pub fn exit_ok(&self, code: u32) -> bool {
        if self.valid_exit_codes.is_empty() {
            code == 0
        } else {
            self.valid_exit_codes
                .iter()
                .any(|&c| i64::from(c) == i64::from(code))
        }
    }
}

/// `pb.ProxyEnv`: the proxy build arguments of a build.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyEnv {
    pub http_proxy: String,
    pub https_proxy: String,
    pub ftp_proxy: String,
    pub no_proxy: String,
    pub all_proxy: String,
}

impl ProxyEnv {
    /// The names of the proxy variables, upper case.
    pub const NAMES: [&'static str; 5] = [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "FTP_PROXY",
        "NO_PROXY",
        "ALL_PROXY",
    ];

    /// Sets the variable `name` (either case) when it is a proxy
    /// variable; returns whether it was one.
    pub fn set(&mut self, name: &str, value: &str) -> bool {
        let slot = match name.to_ascii_uppercase().as_str() {
            "HTTP_PROXY" => &mut self.http_proxy,
            "HTTPS_PROXY" => &mut self.https_proxy,
            "FTP_PROXY" => &mut self.ftp_proxy,
            "NO_PROXY" => &mut self.no_proxy,
            "ALL_PROXY" => &mut self.all_proxy,
            _ => return false,
        };
        *slot = value.to_string();
        true
    }

    /// The process environment entries: each set variable in upper and
    /// lower case, as BuildKit's executor adds them.
    pub fn env(&self) -> Vec<String> {
        let values = [
            &self.http_proxy,
            &self.https_proxy,
            &self.ftp_proxy,
            &self.no_proxy,
            &self.all_proxy,
        ];
        let mut out = Vec::new();
        for (name, value) in Self::NAMES.iter().zip(values) {
            if !value.is_empty() {
                out.push(format!("{name}={value}"));
                out.push(format!("{}={value}", name.to_ascii_lowercase()));
            }
        }
        out
    }
}

/// `pb.CacheSharingOpt`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum CacheSharing {
    #[default]
    Shared,
    Private,
    Locked,
}

/// `pb.MountType` with its options.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub enum MountType {
    #[default]
    Bind,
    Cache {
        id: String,
        sharing: CacheSharing,
    },
    Tmpfs {
        size: u64,
    },
    /// A secret of the client's, as a read-only file (`pb.SecretOpt`):
    /// its id (never its value) is all the graph and the cache key hold.
    Secret(SecretMount),
    /// A socket forwarding to one of the client's SSH agents
    /// (`pb.SSHOpt`): its id and the socket's owner and mode are all the
    /// graph and the cache key hold, never which agent or key answers.
    Ssh(SshMount),
}

/// `pb.SSHOpt`: which agent, and the socket's owner and mode.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SshMount {
    /// The agent's id as written; empty means `default`, as in LLB.
    pub id: String,
    /// An agent the client does not forward skips the mount instead of
    /// failing the step.
    pub optional: bool,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

impl SshMount {
    /// The id the client knows the agent by (`default` when unnamed).
    pub fn agent_id(&self) -> &str {
        if self.id.is_empty() {
            "default"
        } else {
            &self.id
        }
    }
}

/// `pb.SecretOpt`: which secret, and the file's owner and mode.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SecretMount {
    pub id: String,
    /// A missing secret skips the mount instead of failing the step.
    pub optional: bool,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// `pb.SecretEnv`: a secret of the client's as an environment variable of
/// the step (not part of the cache key, never in the image).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct SecretEnv {
    pub id: String,
    pub name: String,
    pub optional: bool,
}

/// `pb.Mount`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Mount {
    /// Index into the vertex's inputs; `None` is scratch (LLB's -1).
    pub input: Option<usize>,
    /// Subpath of the input to mount.
    pub selector: String,
    /// Mount point; the root mount is `/`.
    pub dest: String,
    /// Output index this mount produces; `None` is not exported (LLB's -1).
    pub output: Option<usize>,
    pub readonly: bool,
    pub mount_type: MountType,
}

/// `pb.ExecOp`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ExecOp {
    pub meta: Meta,
    pub mounts: Vec<Mount>,
    pub network: NetMode,
    #[serde(skip_serializing_if = "SecurityMode::is_sandbox")]
    pub security: SecurityMode,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub secret_env: Vec<SecretEnv>,
    /// The platform the process runs as (LLB's `Op.platform`); `None` is
    /// the worker's own. Part of the cache key when set: a step of another
    /// platform is never answered by the host's record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<crate::Platform>,
}

/// Where a file action reads from (`pb.FileAction.input` / `secondaryInput`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum FileInput {
    /// Scratch (LLB's -1).
    Scratch,
    /// An input of the vertex (LLB's value < len(inputs)).
    Input(usize),
    /// The result of an earlier action of the same op (LLB's value - len(inputs)).
    Action(usize),
}

/// `pb.UserOpt`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub enum UserOpt {
    /// A name looked up in `/etc/passwd` or `/etc/group` of the action's
    /// destination (LLB's `NamedUserOpt` with its input).
    ByName(String),
    ById(u32),
}

/// `pb.ChownOpt`.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ChownOpt {
    pub user: Option<UserOpt>,
    pub group: Option<UserOpt>,
}

/// `pb.FileActionCopy`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct FileCopy {
    pub src: String,
    pub dest: String,
    pub owner: Option<ChownOpt>,
    /// Octal mode to force (`--chmod`); `None` keeps the source's.
    pub mode: Option<u32>,
    /// A symbolic mode (`--chmod=u=rwX,go=rX`, LLB's `modeStr`) applied
    /// to each entry's own mode; used when `mode` is `None`. Left out of
    /// the definition when unset, so older cache keys stay valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode_str: Option<String>,
    pub follow_symlink: bool,
    /// Copy a directory's contents rather than the directory itself.
    pub dir_copy_contents: bool,
    /// ADD: extract a local tar archive at the destination.
    pub attempt_unpack_docker_compatibility: bool,
    pub create_dest_path: bool,
    pub allow_wildcard: bool,
    pub allow_empty_wildcard: bool,
    pub include_patterns: Vec<String>,
    pub exclude_patterns: Vec<String>,
    /// Modification time to set, nanoseconds since the epoch.
    pub timestamp: Option<i64>,
    /// Paths of the source (absolute, cleaned) that must exist and be
    /// selected, else the copy fails as not found (`COPY --parents` of a
    /// path without wildcards, LLB's `required_paths`). Left out of the
    /// definition when empty, so older cache keys stay valid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_paths: Vec<String>,
}

/// `pb.FileActionMkDir`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FileMkDir {
    pub path: String,
    pub mode: u32,
    pub make_parents: bool,
    pub owner: Option<ChownOpt>,
    pub timestamp: Option<i64>,
}

/// `pb.FileActionMkFile`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FileMkFile {
    pub path: String,
    pub mode: u32,
    pub data: Vec<u8>,
    pub owner: Option<ChownOpt>,
    pub timestamp: Option<i64>,
}

/// `pb.FileActionRm`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FileRm {
    pub path: String,
    pub allow_not_found: bool,
    pub allow_wildcard: bool,
}

/// `pb.FileActionSymlink`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FileSymlink {
    pub oldpath: String,
    pub newpath: String,
}

/// The action of a [`FileAction`].
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub enum FileActionKind {
    Copy(FileCopy),
    MkDir(FileMkDir),
    MkFile(FileMkFile),
    Rm(FileRm),
    Symlink(FileSymlink),
}

/// `pb.FileAction`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FileAction {
    /// The tree the action modifies.
    pub input: FileInput,
    /// The copy source (only for `Copy`).
    pub secondary_input: Option<FileInput>,
    /// FileOp output index this action produces; `None` = intermediate.
    pub output: Option<usize>,
    pub action: FileActionKind,
}

/// `pb.FileOp`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct FileOp {
    pub actions: Vec<FileAction>,
}

/// `pb.MergeOp`: layers of the inputs applied in order.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct MergeOp {
    /// Indexes into the vertex's inputs.
    pub inputs: Vec<usize>,
}

/// Image configuration carried alongside the graph's result, as the
/// Dockerfile frontend computes it (what the exporter writes into the OCI
/// config).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ImageConfig {
    pub env: Vec<String>,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub working_dir: String,
    pub user: String,
    pub labels: BTreeMap<String, String>,
    pub exposed_ports: Vec<String>,
    pub shell: Option<Vec<String>>,
    pub stop_signal: Option<String>,
    pub volumes: Vec<String>,
    /// History entries: `created_by` text and whether the step made a layer.
    pub history: Vec<HistoryEntry>,
    /// `HEALTHCHECK` (Docker's `Healthcheck`).
    #[serde(default)]
    pub healthcheck: Option<Healthcheck>,
    /// `ONBUILD` triggers, as written after the keyword (Docker's `OnBuild`).
    #[serde(default)]
    pub on_build: Vec<String>,
    /// Docker's `ArgsEscaped` (BuildKit sets it on `CMD`).
    #[serde(default)]
    pub args_escaped: bool,
    /// The top-level `author` (`MAINTAINER`).
    #[serde(default)]
    pub author: String,
    /// Platform details of the base image the result keeps: `variant`,
    /// `os.version`, `os.features`.
    #[serde(default)]
    pub variant: String,
    #[serde(default)]
    pub os_version: String,
    #[serde(default)]
    pub os_features: Vec<String>,
    /// `SOURCE_DATE_EPOCH` in seconds as the frontend resolved it (BuildKit's
    /// `source.date.epoch` result metadata): the exporter's
    /// `rewrite-timestamp` clamps layer file times to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_date_epoch: Option<i64>,
    /// The diffIDs of the base image's layers (BuildKit's base image config
    /// metadata): `rewrite-timestamp` leaves the layers the result shares
    /// with its base as they are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub base_diff_ids: Vec<String>,
    /// How many of `history`'s first entries are the base image's own: an
    /// exporter's epoch leaves their times as they are.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub base_history: usize,
    /// The platform the image is for (its `os`, `architecture` and
    /// `variant`): `--platform`, else the target stage's when it is not
    /// the worker's; `None` is the worker's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<crate::Platform>,
    /// The platform a base image's own config names (its `os`,
    /// `architecture` and `variant`), as the frontend read it: what the
    /// `InvalidBaseImagePlatform` check compares with the stage's
    /// platform. Not carried into a result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_platform: Option<crate::Platform>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Docker's `HealthcheckConfig`: durations in nanoseconds, 0 = inherit.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", args...]` or `["CMD-SHELL", command]`.
    pub test: Vec<String>,
    pub interval: i64,
    pub timeout: i64,
    pub start_period: i64,
    pub start_interval: i64,
    pub retries: i64,
}

/// One `history` entry of an image config.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HistoryEntry {
    /// RFC 3339 time; `None` for entries this build creates (the exporter
    /// fills in the build time), base images' entries keep theirs.
    #[serde(default)]
    pub created: Option<String>,
    pub created_by: String,
    pub comment: String,
    pub empty_layer: bool,
}

/// A build graph. Vertices are in topological order: a vertex's inputs
/// always point at earlier vertices.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Graph {
    pub vertices: Vec<Vertex>,
}

impl Graph {
    /// Appends a vertex after checking its inputs point backwards.
    pub fn add(&mut self, vertex: Vertex) -> Result<VertexId> {
        let id = self.vertices.len();
        for e in &vertex.inputs {
            if e.vertex.0 >= id {
                return Err(SolveError::BadInput {
                    vertex: id,
                    input: e.vertex.0,
                });
            }
        }
        self.vertices.push(vertex);
        Ok(VertexId(id))
    }

    pub fn vertex(&self, id: VertexId) -> &Vertex {
        &self.vertices[id.0]
    }

    /// The vertices `target` depends on (itself included), in topological
    /// order. Vertices not needed for `target` are not returned, so stages a
    /// target does not need are never built.
    pub fn needed_for(&self, target: VertexId) -> Vec<VertexId> {
        let mut needed = vec![false; self.vertices.len()];
        if target.0 >= needed.len() {
            return Vec::new();
        }
        needed[target.0] = true;
        for i in (0..=target.0).rev() {
            if needed[i] {
                for e in &self.vertices[i].inputs {
                    needed[e.vertex.0] = true;
                }
            }
        }
        (0..needed.len())
            .filter(|&i| needed[i])
            .map(VertexId)
            .collect()
    }

    /// The digest of an op's own definition (not its inputs, name or
    /// location): the op part of a cache key.
    pub fn op_digest(op: &Op) -> Digest {
        let bytes = serde_json::to_vec(op).expect("graph types serialize to JSON infallibly");
        Digest::of(&bytes)
    }

    /// The definition digest of a vertex: its op, its inputs' definition
    /// digests and output indexes. Equal digests mean equal work.
    pub fn definition_digests(&self) -> Vec<Digest> {
        let mut out: Vec<Digest> = Vec::with_capacity(self.vertices.len());
        for v in &self.vertices {
            #[derive(serde::Serialize)]
            struct Def<'a> {
                op: &'a Op,
                inputs: Vec<(&'a str, usize)>,
            }
            let def = Def {
                op: &v.op,
                inputs: v
                    .inputs
                    .iter()
                    .map(|e| (out[e.vertex.0].as_str(), e.output))
                    .collect(),
            };
            let bytes = serde_json::to_vec(&def).expect("graph types serialize to JSON infallibly");
            out.push(Digest::of(&bytes));
        }
        out
    }

    /// Appends `other`'s vertices, each one equal to a vertex `seen`
    /// already (the same op on the same inputs, by
    /// [`Graph::definition_digests`], under the same cache rule) being
    /// that vertex, as equal LLB ops are one vertex in BuildKit; returns
    /// where each of `other`'s vertices is in this graph. A merged vertex
    /// keeps the name it had.
    pub fn append(&mut self, other: &Graph, seen: &mut Seen) -> Result<Vec<VertexId>> {
        let digests = other.definition_digests();
        let mut ids: Vec<VertexId> = Vec::with_capacity(other.vertices.len());
        for (v, digest) in other.vertices.iter().zip(digests) {
            let key = (digest, v.ignore_cache);
            if let Some(&id) = seen.0.get(&key) {
                ids.push(id);
                continue;
            }
            let mut v = v.clone();
            for e in &mut v.inputs {
                // `other` was built by `add`: inputs point backwards.
                e.vertex = ids[e.vertex.0];
            }
            let id = self.add(v)?;
            seen.0.insert(key, id);
            ids.push(id);
        }
        Ok(ids)
    }

    /// This graph with equal vertices made one ([`Graph::append`]), each
    /// named (and located) as the last of its copies in the order BuildKit
    /// marshals a definition (from `result`, each vertex once, after its
    /// inputs, in input order), whose metadata overwrites the earlier
    /// ones'; a vertex `result` does not reach keeps its own. Returns the
    /// graph and `result`'s id in it.
    pub fn merge_equal(self, result: VertexId) -> Result<(Graph, VertexId)> {
        let mut merged = Graph::default();
        let ids = merged.append(&self, &mut Seen::default())?;
        let Some(&new_result) = ids.get(result.0) else {
            return Err(SolveError::BadInput {
                vertex: self.vertices.len(),
                input: result.0,
            });
        };
        // The marshal order without recursion: a vertex is finished once
        // all its inputs are.
        let mut done = vec![false; self.vertices.len()];
        let mut stack = vec![(result.0, 0usize)];
        while let Some((i, next)) = stack.pop() {
            if done[i] {
                continue;
            }
            match self.vertices[i].inputs.get(next) {
                Some(e) => {
                    stack.push((i, next + 1));
                    if !done[e.vertex.0] {
                        stack.push((e.vertex.0, 0));
                    }
                }
                None => {
                    done[i] = true;
                    let to = &mut merged.vertices[ids[i].0];
                    to.name.clone_from(&self.vertices[i].name);
                    to.location.clone_from(&self.vertices[i].location);
                }
            }
        }
        Ok((merged, new_result))
    }
}

/// The vertices a graph holds by what makes them equal, for
/// [`Graph::append`].
#[derive(Debug, Default)]
pub struct Seen(HashMap<(Digest, bool), VertexId>);

#[cfg(test)]
mod tests {
    use super::*;

    fn source(id: &str) -> Vertex {
        Vertex {
            op: Op::Source(SourceOp {
                identifier: id.into(),
                attrs: BTreeMap::new(),
                platform: None,
            }),
            inputs: vec![],
            name: id.into(),
            location: None,
            ignore_cache: false,
        }
    }

    /// A vertex named `name` doing `op` (a source identifier) on `inputs`.
    fn named(op: &str, name: &str, inputs: &[VertexId]) -> Vertex {
        Vertex {
            inputs: inputs
                .iter()
                .map(|&vertex| Edge { vertex, output: 0 })
                .collect(),
            name: name.into(),
            ..source(op)
        }
    }

    /// Equal vertices become one named as BuildKit's marshal leaves it:
    /// the last copy reached from the result, inputs first, in order.
    #[test]
    fn merge_equal_keeps_one_vertex_named_by_the_last_copy_marshalled() {
        let mut g = Graph::default();
        let a1 = g.add(named("img", "[a 1/2] FROM img", &[])).expect("valid");
        let a2 = g.add(named("run", "[a 2/2] RUN x", &[a1])).expect("valid");
        let b1 = g.add(named("img", "[b 1/2] FROM img", &[])).expect("valid");
        let b2 = g.add(named("run", "[b 2/2] RUN x", &[b1])).expect("valid");
        let _unused = g.add(named("img", "[c 1/1] FROM img", &[])).expect("valid");
        let mut no_cache = named("img", "[d 1/1] FROM img", &[]);
        no_cache.ignore_cache = true;
        let d = g.add(no_cache).expect("valid");
        let top = g
            .add(named("copy", "[s 2/2] COPY", &[b2, a2, d]))
            .expect("valid");
        let (m, result) = g.merge_equal(top).expect("merges");
        let names: Vec<&str> = m.vertices.iter().map(|v| v.name.as_str()).collect();
        // `img` and `run` once each (named by the copies under input 1,
        // marshalled last); the uncached `img` stays apart.
        assert_eq!(
            names,
            [
                "[a 1/2] FROM img",
                "[a 2/2] RUN x",
                "[d 1/1] FROM img",
                "[s 2/2] COPY"
            ]
        );
        assert_eq!(result, VertexId(3));
        let inputs: Vec<usize> = m.vertices[3].inputs.iter().map(|e| e.vertex.0).collect();
        assert_eq!(inputs, [1, 1, 2]);
        assert_eq!(m.vertices[1].inputs[0].vertex, VertexId(0));
        // Nothing reaches a copy from a result it does not lead to.
        let mut g = Graph::default();
        let first = g.add(named("img", "first", &[])).expect("valid");
        let _second = g.add(named("img", "second", &[])).expect("valid");
        let (m, result) = g.merge_equal(first).expect("merges");
        assert_eq!((m.vertices.len(), result), (1, VertexId(0)));
        assert_eq!(m.vertices[0].name, "first");
        assert!(Graph::default().merge_equal(VertexId(0)).is_err());
    }

    #[test]
    fn add_refuses_forward_edges() {
        let mut g = Graph::default();
        let mut v = source("a");
        v.inputs.push(Edge {
            vertex: VertexId(0),
            output: 0,
        });
        assert!(matches!(g.add(v), Err(SolveError::BadInput { .. })));
    }

    #[test]
    fn needed_for_skips_unrelated_vertices() {
        let mut g = Graph::default();
        let a = g.add(source("a")).expect("valid");
        let _b = g.add(source("b")).expect("valid");
        let mut c = source("c");
        c.inputs.push(Edge {
            vertex: a,
            output: 0,
        });
        let c = g.add(c).expect("valid");
        assert_eq!(g.needed_for(c), vec![a, c]);
    }

    #[test]
    fn equal_ops_have_equal_digests() {
        let mut g = Graph::default();
        g.add(source("x")).expect("valid");
        g.add(source("x")).expect("valid");
        g.add(source("y")).expect("valid");
        let d = g.definition_digests();
        assert_eq!(d[0], d[1]);
        assert_ne!(d[0], d[2]);
    }
}
