//! LLB (`pb.Definition`) from buildctl and other clients, translated to
//! kiln's build graph. Each op keeps the digest of its exact bytes (never
//! re-marshalled), which is what Status reports as the vertex digest.

use kiln_proto::llb;
use kiln_solver::{
    CacheSharing, ChownOpt, Digest, Edge, ExecOp, FileAction, FileActionKind, FileCopy, FileInput,
    FileMkDir, FileMkFile, FileOp, FileRm, FileSymlink, Graph, HostIp, MergeOp, Meta, Mount,
    MountType, NetMode, Op, ProxyEnv, SecretEnv, SecretMount, SecurityMode, SourceOp, SshMount,
    Ulimit, UserOpt, Vertex, VertexId,
};
use prost::Message;
use std::collections::HashMap;

/// Why a definition cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum LlbError {
    #[error("invalid LLB definition: op {index} does not decode: {source}")]
    Decode {
        index: usize,
        #[source]
        source: prost::DecodeError,
    },
    #[error("invalid LLB definition: {reason}")]
    Invalid { reason: String },
    #[error("LLB {what} is not supported by kiln yet")]
    Unsupported { what: String },
}

/// A translated definition.
#[derive(Debug)]
pub struct Translated {
    pub graph: Graph,
    pub result: Option<VertexId>,
    /// The LLB digest of each vertex, by vertex index.
    pub digests: Vec<Digest>,
}

fn invalid(reason: impl Into<String>) -> LlbError {
    LlbError::Invalid {
        reason: reason.into(),
    }
}

fn opt_index(v: i64) -> Option<usize> {
    usize::try_from(v).ok()
}

/// How many outputs an op has: an exec's and a file op's are numbered by
/// their mounts' and actions' `output` (-1 for none), every other op has
/// one.
fn outputs_of(op: &llb::Op) -> usize {
    let numbered = |outputs: &mut dyn Iterator<Item = i64>| {
        outputs
            .filter_map(opt_index)
            .max()
            .map_or(0, |m| m.saturating_add(1))
    };
    match op.op.as_ref() {
        Some(llb::op::Op::Exec(e)) => numbered(&mut e.mounts.iter().map(|m| m.output)),
        Some(llb::op::Op::File(f)) => numbered(&mut f.actions.iter().map(|a| a.output)),
        _ => 1,
    }
}

/// An edge's output index, checked against the outputs of the op it names.
fn output_index(input: &llb::Input, of: &llb::Op, op: &Digest) -> Result<usize, LlbError> {
    let outputs = outputs_of(of);
    usize::try_from(input.index)
        .ok()
        .filter(|&i| i < outputs)
        .ok_or_else(|| {
            invalid(format!(
                "op {op} reads output {} of {}, which has {outputs}",
                input.index, input.digest
            ))
        })
}

/// An input's digest; the error names the op that lists it.
fn input_digest(input: &llb::Input, op: &Digest) -> Result<Digest, LlbError> {
    Digest::parse(&input.digest).ok_or_else(|| {
        invalid(format!(
            "input {:?} of op {op} is not a digest",
            input.digest
        ))
    })
}

/// Checks that each file action reads an input of the op or an earlier
/// action (LLB numbers actions after the inputs).
fn check_file_actions(f: &llb::FileOp, inputs: usize) -> Result<(), LlbError> {
    for (index, a) in f.actions.iter().enumerate() {
        for (which, v) in [("input", a.input), ("secondary input", a.secondary_input)] {
            if let FileInput::Action(j) = file_input(v, inputs) {
                if j >= index {
                    return Err(invalid(format!(
                        "file action {index}'s {which} {v} is neither one of the op's {inputs} inputs nor an earlier action"
                    )));
                }
            }
        }
    }
    Ok(())
}

fn file_input(v: i64, inputs: usize) -> FileInput {
    match usize::try_from(v) {
        Err(_) => FileInput::Scratch,
        Ok(i) if i < inputs => FileInput::Input(i),
        Ok(i) => FileInput::Action(i - inputs),
    }
}

fn user_opt(u: &Option<llb::UserOpt>) -> Option<UserOpt> {
    match u.as_ref()?.user.as_ref()? {
        llb::user_opt::User::ByName(n) => Some(UserOpt::ByName(n.name.clone())),
        llb::user_opt::User::ById(id) => Some(UserOpt::ById(*id)),
    }
}

fn chown(o: &Option<llb::ChownOpt>) -> Option<ChownOpt> {
    let o = o.as_ref()?;
    Some(ChownOpt {
        user: user_opt(&o.user),
        group: user_opt(&o.group),
    })
}

fn timestamp(ns: i64) -> Option<i64> {
    (ns > 0).then_some(ns)
}

/// A git, HTTP(S) or OCI layout source with an attribute kiln does not
/// handle fails here, before the build, naming the attribute.
fn check_remote_source(op: &SourceOp) -> Result<(), LlbError> {
    use kiln_solver::source::{
        GitSource, HttpSource, SourceError, ATTR_OCI_SESSION, ATTR_OCI_STORE,
    };
    if op.identifier.starts_with("oci-layout://") {
        if let Some(k) = op
            .attrs
            .keys()
            .find(|k| *k != ATTR_OCI_STORE && *k != ATTR_OCI_SESSION)
        {
            return Err(LlbError::Unsupported {
                what: format!("oci-layout source attribute {k}"),
            });
        }
    }
    let r = GitSource::from_op(op)
        .map(|_| ())
        .and_then(|()| HttpSource::from_op(op).map(|_| ()));
    match r {
        Ok(()) => Ok(()),
        Err(SourceError::Unsupported(what)) => Err(LlbError::Unsupported { what }),
        Err(e) => Err(invalid(format!("source {}: {e}", op.identifier))),
    }
}

fn convert_op(op: &llb::Op) -> Result<Op, LlbError> {
    let n_inputs = op.inputs.len();
    Ok(match op.op.as_ref() {
        Some(llb::op::Op::Source(s)) => {
            let op = SourceOp {
                identifier: s.identifier.clone(),
                attrs: s
                    .attrs
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                platform: op_platform(op.platform.as_ref())?,
            };
            check_remote_source(&op)?;
            Op::Source(op)
        }
        Some(llb::op::Op::Exec(e)) => {
            let meta = e.meta.clone().unwrap_or_default();
            if !meta.cgroup_parent.is_empty() {
                return Err(LlbError::Unsupported {
                    what: "an exec's cgroup parent".into(),
                });
            }
            if let Some(d) = e.cdi_devices.first() {
                return Err(LlbError::Unsupported {
                    what: format!("CDI device {:?} of an exec", d.name),
                });
            }
            // `removeMountStubsRecursive` is set by every current client
            // (client/llb and the gateway); kiln always removes the stubs
            // it created recursively (`kiln_shim`'s mount points), which
            // is that behaviour.
            let extra_hosts = meta
                .extra_hosts
                .iter()
                .map(|h| {
                    let ip = h.ip.parse().map_err(|_| {
                        invalid(format!("extra host {:?}: bad IP {:?}", h.host, h.ip))
                    })?;
                    HostIp::new(&h.host, ip).map_err(|e| invalid(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let ulimits = meta
                .ulimit
                .iter()
                .map(|u| {
                    Ulimit::new(&u.name.to_lowercase(), u.soft, u.hard)
                        .map_err(|e| invalid(e.to_string()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            let mut mounts = Vec::with_capacity(e.mounts.len());
            for m in &e.mounts {
                if !m.result_id.is_empty() {
                    return Err(LlbError::Unsupported {
                        what: "a mount of a gateway result id".into(),
                    });
                }
                let mount_type = match llb::MountType::try_from(m.mount_type) {
                    Ok(llb::MountType::Bind) => MountType::Bind,
                    Ok(llb::MountType::Cache) => {
                        let c = m.cache_opt.clone().unwrap_or_default();
                        MountType::Cache {
                            id: if c.id.is_empty() {
                                m.dest.clone()
                            } else {
                                c.id
                            },
                            sharing: match llb::CacheSharingOpt::try_from(c.sharing) {
                                Ok(llb::CacheSharingOpt::Private) => CacheSharing::Private,
                                Ok(llb::CacheSharingOpt::Locked) => CacheSharing::Locked,
                                _ => CacheSharing::Shared,
                            },
                        }
                    }
                    Ok(llb::MountType::Secret) => {
                        let o = m.secret_opt.clone().unwrap_or_default();
                        if o.id.is_empty() {
                            return Err(invalid("a secret mount without an id"));
                        }
                        MountType::Secret(SecretMount {
                            id: o.id,
                            optional: o.optional,
                            uid: o.uid,
                            gid: o.gid,
                            mode: o.mode,
                        })
                    }
                    Ok(llb::MountType::Ssh) => {
                        // An empty id is `default`, resolved where the
                        // agent is asked for, as BuildKit does.
                        let o = m.ssh_opt.clone().unwrap_or_default();
                        MountType::Ssh(SshMount {
                            id: o.id,
                            optional: o.optional,
                            uid: o.uid,
                            gid: o.gid,
                            mode: o.mode,
                        })
                    }
                    Ok(llb::MountType::Tmpfs) => MountType::Tmpfs {
                        size: m
                            .tmpfs_opt
                            .as_ref()
                            .map(|t| t.size.max(0) as u64)
                            .unwrap_or(0),
                    },
                    Err(_) => return Err(invalid(format!("unknown mount type {}", m.mount_type))),
                };
                if let Some(i) = opt_index(m.input) {
                    if i >= n_inputs {
                        return Err(invalid(format!("mount input {i} out of range")));
                    }
                }
                mounts.push(Mount {
                    input: opt_index(m.input),
                    selector: m.selector.clone(),
                    dest: m.dest.clone(),
                    output: opt_index(m.output),
                    readonly: m.readonly,
                    mount_type,
                });
            }
            Op::Exec(ExecOp {
                meta: Meta {
                    args: meta.args,
                    env: meta.env,
                    cwd: meta.cwd,
                    user: meta.user,
                    hostname: meta.hostname,
                    extra_hosts,
                    ulimits,
                    valid_exit_codes: meta.valid_exit_codes,
                    proxy_env: meta.proxy_env.map(|p| {
                        Box::new(ProxyEnv {
                            http_proxy: p.http_proxy,
                            https_proxy: p.https_proxy,
                            ftp_proxy: p.ftp_proxy,
                            no_proxy: p.no_proxy,
                            all_proxy: p.all_proxy,
                        })
                    }),
                    // From the op's metadata, below.
                    resources: None,
                },
                mounts,
                network: match llb::NetMode::try_from(e.network) {
                    Ok(llb::NetMode::Host) => NetMode::Host,
                    Ok(llb::NetMode::None) => NetMode::None,
                    Ok(llb::NetMode::Unset) => NetMode::Unset,
                    Err(_) => {
                        return Err(invalid(format!("unknown exec network mode {}", e.network)))
                    }
                },
                // The entitlement check (security.insecure granted and
                // requested) belongs to the solve, not to this translation.
                security: match llb::SecurityMode::try_from(e.security) {
                    Ok(llb::SecurityMode::Sandbox) => SecurityMode::Sandbox,
                    Ok(llb::SecurityMode::Insecure) => SecurityMode::Insecure,
                    Err(_) => {
                        return Err(invalid(format!(
                            "unknown exec security mode {}",
                            e.security
                        )))
                    }
                },
                secret_env: e
                    .secretenv
                    .iter()
                    .map(|s| SecretEnv {
                        id: s.id.clone(),
                        name: s.name.clone(),
                        optional: s.optional,
                    })
                    .collect(),
                platform: op_platform(op.platform.as_ref())?,
            })
        }
        Some(llb::op::Op::File(f)) => {
            check_file_actions(f, n_inputs)?;
            let mut actions = Vec::with_capacity(f.actions.len());
            for a in &f.actions {
                let action = match a.action.as_ref() {
                    Some(llb::file_action::Action::Copy(c))
                        if c.always_replace_existing_dest_paths =>
                    {
                        return Err(LlbError::Unsupported {
                            what: "copy with alwaysReplaceExistingDestPaths".into(),
                        })
                    }
                    Some(llb::file_action::Action::Copy(c)) => FileActionKind::Copy(FileCopy {
                        src: c.src.clone(),
                        dest: c.dest.clone(),
                        owner: chown(&c.owner),
                        mode: (c.mode >= 0).then_some(c.mode as u32),
                        mode_str: (!c.mode_str.is_empty()).then(|| c.mode_str.clone()),
                        follow_symlink: c.follow_symlink,
                        dir_copy_contents: c.dir_copy_contents,
                        attempt_unpack_docker_compatibility: c.attempt_unpack_docker_compatibility,
                        create_dest_path: c.create_dest_path,
                        allow_wildcard: c.allow_wildcard,
                        allow_empty_wildcard: c.allow_empty_wildcard,
                        include_patterns: c.include_patterns.clone(),
                        required_paths: c.required_paths.clone(),
                        exclude_patterns: c.exclude_patterns.clone(),
                        timestamp: timestamp(c.timestamp),
                    }),
                    Some(llb::file_action::Action::Mkdir(m)) => FileActionKind::MkDir(FileMkDir {
                        path: m.path.clone(),
                        mode: m.mode as u32,
                        make_parents: m.make_parents,
                        owner: chown(&m.owner),
                        timestamp: timestamp(m.timestamp),
                    }),
                    Some(llb::file_action::Action::Mkfile(m)) => {
                        FileActionKind::MkFile(FileMkFile {
                            path: m.path.clone(),
                            mode: m.mode as u32,
                            data: m.data.clone(),
                            owner: chown(&m.owner),
                            timestamp: timestamp(m.timestamp),
                        })
                    }
                    Some(llb::file_action::Action::Rm(r)) => FileActionKind::Rm(FileRm {
                        path: r.path.clone(),
                        allow_not_found: r.allow_not_found,
                        allow_wildcard: r.allow_wildcard,
                    }),
                    Some(llb::file_action::Action::Symlink(s)) => {
                        FileActionKind::Symlink(FileSymlink {
                            oldpath: s.oldpath.clone(),
                            newpath: s.newpath.clone(),
                        })
                    }
                    None => return Err(invalid("file action without an action")),
                };
                // A copy always reads something: its -1 is scratch (as
                // `llb.Scratch()` encodes), the other actions' is none.
                let is_copy = matches!(action, FileActionKind::Copy(_));
                actions.push(FileAction {
                    input: file_input(a.input, n_inputs),
                    secondary_input: (a.secondary_input >= 0 || is_copy)
                        .then(|| file_input(a.secondary_input, n_inputs)),
                    output: opt_index(a.output),
                    action,
                });
            }
            Op::File(FileOp { actions })
        }
        Some(llb::op::Op::Merge(m)) => Op::Merge(MergeOp {
            inputs: m
                .inputs
                .iter()
                .map(|i| {
                    opt_index(i.input)
                        .filter(|&i| i < n_inputs)
                        .ok_or_else(|| invalid(format!("merge input {} out of range", i.input)))
                })
                .collect::<Result<_, _>>()?,
        }),
        Some(llb::op::Op::Diff(_)) => {
            return Err(LlbError::Unsupported {
                what: "diff op".into(),
            })
        }
        Some(llb::op::Op::Build(_)) => {
            return Err(LlbError::Unsupported {
                what: "build op".into(),
            })
        }
        Some(llb::op::Op::Passthrough(_)) => {
            return Err(LlbError::Unsupported {
                what: "passthrough op".into(),
            })
        }
        None => return Err(invalid("an op without a kind that is not the terminal op")),
    })
}

/// The platform of an op as the graph holds it: `None` for the worker's
/// own (no op platform, or the host's), else the platform, which an image
/// source picks from an index and an exec runs as (under emulation). OS
/// versions and features (Windows) are not supported.
fn op_platform(p: Option<&llb::Platform>) -> Result<Option<kiln_solver::Platform>, LlbError> {
    let Some(p) = p else { return Ok(None) };
    let mut name = format!("{}/{}", p.os, p.architecture);
    if !p.variant.is_empty() {
        name = format!("{name}/{}", p.variant);
    }
    if !p.os_version.is_empty() || !p.os_features.is_empty() {
        return Err(LlbError::Unsupported {
            what: format!("an op for platform {name:?} with an OS version or features"),
        });
    }
    let want = kiln_solver::Platform::new(&p.os, &p.architecture, &p.variant);
    let host = kiln_engine::oci::worker_platform();
    // An op without a variant on a host with one (arm/v7) is the host's.
    let same = want == host || (p.variant.is_empty() && want.short() == host.short());
    Ok((!same).then_some(want))
}

/// A display name like BuildKit's when the client gave none.
fn default_name(op: &Op) -> String {
    match op {
        Op::Source(s) => s.identifier.clone(),
        Op::Exec(e) => e.meta.args.join(" "),
        Op::File(f) => f
            .actions
            .iter()
            .map(|a| match &a.action {
                FileActionKind::Copy(c) => format!("copy {} {}", c.src, c.dest),
                FileActionKind::MkDir(m) => format!("mkdir {}", m.path),
                FileActionKind::MkFile(m) => format!("mkfile {}", m.path),
                FileActionKind::Rm(r) => format!("rm {}", r.path),
                FileActionKind::Symlink(s) => format!("symlink {} -> {}", s.newpath, s.oldpath),
            })
            .collect::<Vec<_>>()
            .join(", "),
        Op::Merge(_) => "merge".into(),
    }
}

/// Translates a definition. An empty definition has no result (scratch).
pub fn translate(def: &llb::Definition) -> Result<Translated, LlbError> {
    let mut ops: HashMap<Digest, llb::Op> = HashMap::new();
    let mut order: Vec<Digest> = Vec::new();
    for (index, bytes) in def.def.iter().enumerate() {
        let op = llb::Op::decode(bytes.as_slice())
            .map_err(|source| LlbError::Decode { index, source })?;
        let d = Digest::of(bytes);
        if !ops.contains_key(&d) {
            order.push(d.clone());
        }
        ops.insert(d, op);
    }
    let Some(last) = order.last().cloned() else {
        return Ok(Translated {
            graph: Graph::default(),
            result: None,
            digests: Vec::new(),
        });
    };
    let terminal = &ops[&last];
    if terminal.op.is_some() || terminal.inputs.len() != 1 {
        return Err(invalid(
            "the last op must be a terminal op with exactly one input",
        ));
    }
    let result_input = terminal.inputs[0].clone();
    let result_digest = input_digest(&result_input, &last)?;
    let result_op = ops
        .get(&result_digest)
        .ok_or_else(|| invalid(format!("input {result_digest} is not in the definition")))?;
    // The graph's result is a vertex's first output.
    if output_index(&result_input, result_op, &last)? != 0 {
        return Err(LlbError::Unsupported {
            what: format!(
                "a result that is output {} of its op (only output 0)",
                result_input.index
            ),
        });
    }
    // Depth-first from the result so every vertex comes after its inputs.
    let mut graph = Graph::default();
    let mut ids: HashMap<Digest, VertexId> = HashMap::new();
    let mut digests = Vec::new();
    let mut stack: Vec<(Digest, bool)> = vec![(result_digest.clone(), false)];
    let mut visiting = std::collections::HashSet::new();
    while let Some((d, expanded)) = stack.pop() {
        if ids.contains_key(&d) {
            continue;
        }
        let op = ops
            .get(&d)
            .ok_or_else(|| invalid(format!("input {d} is not in the definition")))?;
        if !expanded {
            if !visiting.insert(d.clone()) {
                return Err(invalid(format!("cycle through {d}")));
            }
            stack.push((d.clone(), true));
            for i in op.inputs.iter().rev() {
                let id = input_digest(i, &d)?;
                if !ids.contains_key(&id) {
                    stack.push((id, false));
                }
            }
            continue;
        }
        let mut inputs = Vec::with_capacity(op.inputs.len());
        for i in &op.inputs {
            let id = input_digest(i, &d)?;
            let vertex = *ids
                .get(&id)
                .ok_or_else(|| invalid(format!("cycle through {id}")))?;
            let output = output_index(i, &ops[&id], &d)?;
            inputs.push(Edge { vertex, output });
        }
        let mut converted = convert_op(op)?;
        let meta = def.metadata.get(d.as_str());
        // cgroup limits are the exec's metadata, never its definition: they
        // do not change its cache key (BuildKit's rule).
        if let (Some(r), Op::Exec(e)) = (
            meta.and_then(|m| m.linux_resources.as_ref()),
            &mut converted,
        ) {
            let res = kiln_solver::graph::Resources {
                memory: r.memory,
                memory_swap: r.memory_swap,
                cpu_shares: r.cpu_shares,
                cpu_period: r.cpu_period,
                cpu_quota: r.cpu_quota,
                cpuset_cpus: r.cpuset_cpus.clone(),
                cpuset_mems: r.cpuset_mems.clone(),
            };
            e.meta.resources = (!res.is_empty()).then(|| Box::new(res));
        }
        let name = meta
            .and_then(|m| m.description.get("llb.customname").cloned())
            .unwrap_or_else(|| default_name(&converted));
        let v = graph
            .add(Vertex {
                op: converted,
                inputs,
                name,
                location: None,
                ignore_cache: meta.is_some_and(|m| m.ignore_cache),
            })
            .map_err(|e| invalid(e.to_string()))?;
        ids.insert(d.clone(), v);
        digests.push(d);
    }
    let result = ids[&result_digest];
    Ok(Translated {
        graph,
        result: Some(result),
        digests,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(op: &llb::Op) -> Vec<u8> {
        op.encode_to_vec()
    }

    #[test]
    fn translates_image_exec_and_terminal() {
        let src = llb::Op {
            op: Some(llb::op::Op::Source(llb::SourceOp {
                identifier: "docker-image://docker.io/library/busybox:latest".into(),
                attrs: Default::default(),
            })),
            ..Default::default()
        };
        let src_b = enc(&src);
        let src_d = Digest::of(&src_b);
        let exec = llb::Op {
            inputs: vec![llb::Input {
                digest: src_d.to_string(),
                index: 0,
            }],
            op: Some(llb::op::Op::Exec(llb::ExecOp {
                meta: Some(llb::Meta {
                    args: vec!["/bin/sh".into(), "-c".into(), "echo hi > /x".into()],
                    cwd: "/".into(),
                    ..Default::default()
                }),
                mounts: vec![llb::Mount {
                    input: 0,
                    dest: "/".into(),
                    output: 0,
                    ..Default::default()
                }],
                security: llb::SecurityMode::Insecure as i32,
                ..Default::default()
            })),
            ..Default::default()
        };
        let exec_b = enc(&exec);
        let exec_d = Digest::of(&exec_b);
        let term = llb::Op {
            inputs: vec![llb::Input {
                digest: exec_d.to_string(),
                index: 0,
            }],
            ..Default::default()
        };
        let mut metadata = HashMap::new();
        metadata.insert(
            exec_d.to_string(),
            llb::OpMetadata {
                ignore_cache: true,
                description: HashMap::from([("llb.customname".to_string(), "say hi".to_string())]),
                ..Default::default()
            },
        );
        let def = llb::Definition {
            def: vec![src_b, exec_b, enc(&term)],
            metadata,
            source: None,
        };
        let t = translate(&def).expect("translates");
        assert_eq!(t.digests, vec![src_d, exec_d]);
        assert_eq!(t.result, Some(VertexId(1)));
        let v = &t.graph.vertices[1];
        assert_eq!(v.name, "say hi");
        assert!(v.ignore_cache);
        assert_eq!(
            v.inputs,
            vec![Edge {
                vertex: VertexId(0),
                output: 0
            }]
        );
        match &v.op {
            Op::Exec(e) => {
                assert_eq!(e.mounts[0].input, Some(0));
                assert_eq!(e.mounts[0].output, Some(0));
                assert_eq!(e.meta.args[2], "echo hi > /x");
                assert_eq!(e.security, SecurityMode::Insecure);
            }
            other => panic!("not an exec: {other:?}"),
        }
    }

    #[test]
    fn ssh_mounts_keep_id_owner_mode_and_optional() {
        let exec = llb::Op {
            op: Some(llb::op::Op::Exec(llb::ExecOp {
                meta: Some(llb::Meta {
                    args: vec!["ssh-add".into(), "-l".into()],
                    ..Default::default()
                }),
                mounts: vec![
                    llb::Mount {
                        input: -1,
                        dest: "/".into(),
                        output: 0,
                        ..Default::default()
                    },
                    llb::Mount {
                        input: -1,
                        dest: "/run/buildkit/ssh_agent.0".into(),
                        output: -1,
                        mount_type: llb::MountType::Ssh as i32,
                        ssh_opt: Some(llb::SshOpt {
                            id: "gh".into(),
                            uid: 1,
                            gid: 2,
                            mode: 0o600,
                            optional: true,
                        }),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            })),
            ..Default::default()
        };
        let Op::Exec(e) = convert_op(&exec).expect("converts") else {
            panic!("an exec")
        };
        assert_eq!(e.mounts[1].dest, "/run/buildkit/ssh_agent.0");
        assert_eq!(
            e.mounts[1].mount_type,
            MountType::Ssh(SshMount {
                id: "gh".into(),
                optional: true,
                uid: 1,
                gid: 2,
                mode: 0o600,
            })
        );
    }

    #[test]
    fn proxy_env_and_mode_str_are_carried() {
        let exec = llb::Op {
            inputs: vec![llb::Input {
                digest: Digest::of(b"x").to_string(),
                index: 0,
            }],
            op: Some(llb::op::Op::Exec(llb::ExecOp {
                meta: Some(llb::Meta {
                    args: vec!["true".into()],
                    proxy_env: Some(llb::ProxyEnv {
                        http_proxy: "http://p:1".into(),
                        no_proxy: "local".into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                mounts: vec![llb::Mount {
                    input: 0,
                    dest: "/".into(),
                    output: 0,
                    ..Default::default()
                }],
                ..Default::default()
            })),
            ..Default::default()
        };
        let Op::Exec(e) = convert_op(&exec).expect("converts") else {
            panic!("an exec")
        };
        assert_eq!(
            e.meta.proxy_env.map(|p| p.env()),
            Some(vec![
                "HTTP_PROXY=http://p:1".to_string(),
                "http_proxy=http://p:1".to_string(),
                "NO_PROXY=local".to_string(),
                "no_proxy=local".to_string(),
            ])
        );
        let copy = llb::Op {
            inputs: vec![llb::Input {
                digest: Digest::of(b"x").to_string(),
                index: 0,
            }],
            op: Some(llb::op::Op::File(llb::FileOp {
                actions: vec![llb::FileAction {
                    input: 0,
                    secondary_input: 0,
                    output: 0,
                    action: Some(llb::file_action::Action::Copy(llb::FileActionCopy {
                        src: "/a".into(),
                        dest: "/b".into(),
                        mode: -1,
                        mode_str: "u=rwX".into(),
                        ..Default::default()
                    })),
                }],
            })),
            ..Default::default()
        };
        let Op::File(f) = convert_op(&copy).expect("converts") else {
            panic!("a file op")
        };
        let FileActionKind::Copy(c) = &f.actions[0].action else {
            panic!("a copy")
        };
        assert_eq!((c.mode, c.mode_str.as_deref()), (None, Some("u=rwX")));
    }

    #[test]
    fn rejects_bad_definitions() {
        let garbage = llb::Definition {
            def: vec![vec![0xff, 0xff, 0xff]],
            ..Default::default()
        };
        assert!(matches!(translate(&garbage), Err(LlbError::Decode { .. })));
        let dangling = llb::Op {
            inputs: vec![llb::Input {
                digest: Digest::of(b"missing").to_string(),
                index: 0,
            }],
            ..Default::default()
        };
        let def = llb::Definition {
            def: vec![enc(&dangling)],
            ..Default::default()
        };
        let err = translate(&def).expect_err("dangling input");
        assert!(
            err.to_string().contains("is not in the definition"),
            "{err}"
        );
        assert!(translate(&llb::Definition::default())
            .expect("empty")
            .result
            .is_none());
    }

    /// An exec on busybox, changed by `edit`, as a definition.
    fn exec_def(edit: impl FnOnce(&mut llb::Op)) -> llb::Definition {
        let src = enc(&llb::Op {
            op: Some(llb::op::Op::Source(llb::SourceOp {
                identifier: "docker-image://docker.io/library/busybox:latest".into(),
                attrs: Default::default(),
            })),
            ..Default::default()
        });
        let mut exec = llb::Op {
            inputs: vec![llb::Input {
                digest: Digest::of(&src).to_string(),
                index: 0,
            }],
            op: Some(llb::op::Op::Exec(llb::ExecOp {
                meta: Some(llb::Meta {
                    args: vec!["true".into()],
                    ..Default::default()
                }),
                mounts: vec![llb::Mount {
                    input: 0,
                    dest: "/".into(),
                    output: 0,
                    ..Default::default()
                }],
                ..Default::default()
            })),
            ..Default::default()
        };
        edit(&mut exec);
        let exec = enc(&exec);
        let term = enc(&llb::Op {
            inputs: vec![llb::Input {
                digest: Digest::of(&exec).to_string(),
                index: 0,
            }],
            ..Default::default()
        });
        llb::Definition {
            def: vec![src, exec, term],
            ..Default::default()
        }
    }

    fn exec_of(edit: impl FnOnce(&mut llb::ExecOp)) -> llb::Definition {
        exec_def(|op| {
            if let Some(llb::op::Op::Exec(e)) = op.op.as_mut() {
                edit(e);
            }
        })
    }

    #[test]
    fn exec_process_options_are_carried_and_checked() {
        let def = exec_of(|e| {
            let m = e.meta.as_mut().expect("meta");
            m.extra_hosts = vec![llb::HostIp {
                host: "db".into(),
                ip: "10.0.0.1".into(),
            }];
            m.ulimit = vec![llb::Ulimit {
                name: "NOFILE".into(),
                soft: 10,
                hard: 20,
            }];
            m.valid_exit_codes = vec![0, 1];
        });
        let t = translate(&def).expect("translates");
        let exec = t
            .graph
            .vertices
            .iter()
            .find_map(|v| match &v.op {
                Op::Exec(e) => Some(e.clone()),
                _ => None,
            })
            .expect("an exec");
        assert_eq!(exec.meta.extra_hosts[0].to_string(), "10.0.0.1\tdb");
        assert_eq!(exec.meta.ulimits[0].to_string(), "nofile=10:20");
        assert!(exec.meta.exit_ok(1) && !exec.meta.exit_ok(2));

        type Edit = Box<dyn Fn(&mut llb::ExecOp)>;
        let bad: [(Edit, &str); 6] = [
            (
                Box::new(|e| e.meta.as_mut().expect("meta").cgroup_parent = "/x".into()),
                "cgroup parent",
            ),
            (
                Box::new(|e| {
                    e.cdi_devices = vec![llb::CdiDevice {
                        name: "vendor.com/gpu=0".into(),
                        optional: true,
                    }]
                }),
                "CDI device",
            ),
            (
                Box::new(|e| e.mounts[0].result_id = "r1".into()),
                "result id",
            ),
            (
                Box::new(|e| {
                    e.meta.as_mut().expect("meta").extra_hosts = vec![llb::HostIp {
                        host: "a\nb".into(),
                        ip: "1.1.1.1".into(),
                    }]
                }),
                "invalid host name",
            ),
            (
                Box::new(|e| {
                    e.meta.as_mut().expect("meta").ulimit = vec![llb::Ulimit {
                        name: "as".into(),
                        soft: 1,
                        hard: 1,
                    }]
                }),
                "invalid ulimit type: as",
            ),
            (Box::new(|e| e.network = 7), "unknown exec network mode 7"),
        ];
        for (edit, text) in bad {
            let err = translate(&exec_of(edit)).expect_err(text);
            assert!(err.to_string().contains(text), "{text}: {err}");
        }
    }

    #[test]
    fn ops_for_another_platform_carry_it() {
        let host = kiln_engine::oci::host_platform();
        let ok = exec_def(|op| {
            op.platform = Some(llb::Platform {
                os: host.os().to_string(),
                architecture: host.architecture().to_string(),
                ..Default::default()
            })
        });
        let exec_platform = |g: &Graph| {
            g.vertices
                .iter()
                .find_map(|v| match &v.op {
                    Op::Exec(e) => Some(e.platform.clone()),
                    _ => None,
                })
                .expect("an exec")
        };
        let g = translate(&ok).expect("the host's platform").graph;
        assert_eq!(exec_platform(&g), None, "the host's is the worker's own");
        let other = if host.architecture().to_string() == "s390x" {
            "arm64"
        } else {
            "s390x"
        };
        let foreign = exec_def(|op| {
            op.platform = Some(llb::Platform {
                os: "linux".into(),
                architecture: other.into(),
                ..Default::default()
            })
        });
        let g = translate(&foreign).expect("a foreign platform").graph;
        assert_eq!(
            exec_platform(&g).map(|p| p.to_string()),
            Some(format!("linux/{other}"))
        );
        let windows = exec_def(|op| {
            op.platform = Some(llb::Platform {
                os: "windows".into(),
                architecture: "amd64".into(),
                os_version: "10.0.17763".into(),
                ..Default::default()
            })
        });
        let err = translate(&windows).expect_err("OS versions");
        assert!(
            err.to_string()
                .contains("platform \"windows/amd64\" with an OS version"),
            "{err}"
        );
    }

    /// A hostile client's chain of 20000 steps: translated without
    /// recursion (the walk is an explicit stack), on a thread with a small
    /// stack to prove it.
    #[test]
    fn a_deep_chain_does_not_recurse() {
        let mut def = Vec::new();
        let mut prev = enc(&llb::Op {
            op: Some(llb::op::Op::Source(llb::SourceOp {
                identifier: "docker-image://docker.io/library/busybox:latest".into(),
                attrs: Default::default(),
            })),
            ..Default::default()
        });
        for i in 0..20_000 {
            def.push(prev.clone());
            prev = enc(&llb::Op {
                inputs: vec![llb::Input {
                    digest: Digest::of(&prev).to_string(),
                    index: 0,
                }],
                op: Some(llb::op::Op::Exec(llb::ExecOp {
                    meta: Some(llb::Meta {
                        args: vec!["true".into(), i.to_string()],
                        cwd: "/".into(),
                        ..Default::default()
                    }),
                    mounts: vec![llb::Mount {
                        input: 0,
                        dest: "/".into(),
                        output: 0,
                        ..Default::default()
                    }],
                    ..Default::default()
                })),
                ..Default::default()
            });
        }
        def.push(prev.clone());
        def.push(enc(&llb::Op {
            inputs: vec![llb::Input {
                digest: Digest::of(&prev).to_string(),
                index: 0,
            }],
            ..Default::default()
        }));
        let def = llb::Definition {
            def,
            ..Default::default()
        };
        let t = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || translate(&def).map(|t| t.graph.vertices.len()))
            .expect("thread")
            .join()
            .expect("no stack overflow");
        assert_eq!(t.expect("translates"), 20_001);
    }

    #[test]
    fn remote_sources_refuse_unknown_attrs() {
        let source = |id: &str, attrs: &[(&str, &str)]| llb::Op {
            op: Some(llb::op::Op::Source(llb::SourceOp {
                identifier: id.into(),
                attrs: attrs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            })),
            ..Default::default()
        };
        let ok = source(
            "git://127.0.0.1:9418/repo#main",
            &[
                ("git.fullurl", "git://127.0.0.1:9418/repo"),
                ("git.keepgitdir", "true"),
            ],
        );
        assert!(convert_op(&ok).is_ok());
        let bad = source("git://h/r", &[("git.sig.pubkey", "k")]);
        assert_eq!(
            convert_op(&bad).expect_err("unknown attr").to_string(),
            "LLB git source attribute git.sig.pubkey is not supported by kiln yet"
        );
        let bad = source("https://h/f", &[("http.header.accept", "x")]);
        assert_eq!(
            convert_op(&bad).expect_err("unknown attr").to_string(),
            "LLB http source attribute http.header.accept is not supported by kiln yet"
        );
        assert!(convert_op(&source("https://h/f", &[("http.perm", "0644")])).is_ok());
        let layout = |attrs: &[(&str, &str)]| {
            source(
                &format!("oci-layout://lay@sha256:{}", "a".repeat(64)),
                attrs,
            )
        };
        convert_op(&layout(&[("oci.store", "lay"), ("oci.session", "s1")]))
            .expect("store and session are read");
        assert_eq!(
            convert_op(&layout(&[("oci.store", "lay"), ("oci.layerlimit", "1")]))
                .expect_err("unknown attr")
                .to_string(),
            "LLB oci-layout source attribute oci.layerlimit is not supported by kiln yet"
        );
    }
}
