//! The LLB definition (`pb.Definition`) of a vertex of kiln's build graph:
//! what LLBBridge returns as a result's `Ref.def` (BuildKit's
//! `reference.output` cap), so a gateway client can turn the result into
//! an LLB state (`ref.ToState()`) and build on it, as buildx bake does for
//! a `target:` context.
//!
//! The encoding is the inverse of [`crate::llb::translate`]: a definition
//! made here translates back to vertices with the same ops, hence the same
//! cache keys, so a later solve that reads it answers from the cache.
//! Sources' attributes are written in key order and every op in field
//! order, so one graph always gives the same bytes and op digests.

use kiln_proto::llb;
use kiln_solver::{
    CacheSharing, ChownOpt, Digest, FileActionKind, FileInput, Graph, MountType, NetMode, Op,
    SecurityMode, UserOpt, VertexId,
};
use prost::Message;
use std::collections::HashMap;

/// The definition of `result`'s output 0 and every vertex it needs, with
/// each vertex's name (`llb.customname`) and cache switch, and with
/// `source` (the Dockerfile) the source map of the vertices' lines, as
/// BuildKit's frontend gives one, so a step of it that fails in a later
/// solve still shows its line.
pub fn of_vertex(
    graph: &Graph,
    result: VertexId,
    source: Option<&llb::SourceInfo>,
) -> llb::Definition {
    let needed = graph.needed_for(result);
    let mut digests: HashMap<VertexId, String> = HashMap::with_capacity(needed.len());
    let mut def = Vec::with_capacity(needed.len() + 1);
    let mut metadata = HashMap::with_capacity(needed.len());
    let mut locations = HashMap::new();
    for id in needed {
        let v = graph.vertex(id);
        let inputs: Vec<llb::Input> = v
            .inputs
            .iter()
            .map(|e| llb::Input {
                digest: digests.get(&e.vertex).cloned().unwrap_or_default(),
                index: e.output as i64,
            })
            .collect();
        let bytes = op_bytes(&v.op, inputs);
        let digest = Digest::of(&bytes).to_string();
        let mut description = HashMap::new();
        if !v.name.is_empty() {
            description.insert("llb.customname".to_string(), v.name.clone());
        }
        metadata.insert(
            digest.clone(),
            llb::OpMetadata {
                ignore_cache: v.ignore_cache,
                description,
                linux_resources: linux_resources(&v.op),
                ..Default::default()
            },
        );
        if let Some(range) = v.location.as_ref().and_then(crate::errdetails::range_of) {
            locations.insert(
                digest.clone(),
                llb::Locations {
                    locations: vec![llb::Location {
                        source_index: 0,
                        ranges: vec![range],
                    }],
                },
            );
        }
        digests.insert(id, digest);
        def.push(bytes);
    }
    if let Some(d) = digests.get(&result) {
        let terminal = llb::Op {
            inputs: vec![llb::Input {
                digest: d.clone(),
                index: 0,
            }],
            ..Default::default()
        };
        def.push(terminal.encode_to_vec());
    }
    llb::Definition {
        def,
        metadata,
        source: source.map(|info| llb::Source {
            locations,
            infos: vec![info.clone()],
        }),
    }
}

/// The bytes of one op: its inputs, its kind and its platform, in field
/// order. A source's attributes (a map, which prost writes in hash order)
/// are written one entry at a time in key order.
fn op_bytes(op: &Op, inputs: Vec<llb::Input>) -> Vec<u8> {
    let platform = op_platform(op);
    let n_inputs = inputs.len();
    let mut buf = llb::Op {
        inputs,
        ..Default::default()
    }
    .encode_to_vec();
    let kind = match op {
        Op::Source(s) => {
            let mut source = llb::SourceOp {
                identifier: s.identifier.clone(),
                attrs: HashMap::new(),
            }
            .encode_to_vec();
            for (k, v) in &s.attrs {
                llb::SourceOp {
                    identifier: String::new(),
                    attrs: HashMap::from([(k.clone(), v.clone())]),
                }
                .encode(&mut source)
                .expect("a Vec grows as needed");
            }
            prost::encoding::bytes::encode(3, &source, &mut buf);
            None
        }
        Op::Exec(e) => Some(llb::op::Op::Exec(exec(e))),
        Op::File(f) => Some(llb::op::Op::File(file(f, n_inputs))),
        Op::Merge(m) => Some(llb::op::Op::Merge(llb::MergeOp {
            inputs: m
                .inputs
                .iter()
                .map(|i| llb::MergeInput { input: *i as i64 })
                .collect(),
        })),
    };
    if let Some(kind) = kind {
        llb::Op {
            op: Some(kind),
            ..Default::default()
        }
        .encode(&mut buf)
        .expect("a Vec grows as needed");
    }
    if let Some(p) = platform {
        llb::Op {
            platform: Some(p),
            ..Default::default()
        }
        .encode(&mut buf)
        .expect("a Vec grows as needed");
    }
    buf
}

/// An op's own platform; none is the worker's, as `translate` reads it.
fn op_platform(op: &Op) -> Option<llb::Platform> {
    let p = match op {
        Op::Source(s) => s.platform.as_ref(),
        Op::Exec(e) => e.platform.as_ref(),
        Op::File(_) | Op::Merge(_) => None,
    }?;
    Some(llb_platform(p))
}

/// A platform as LLB writes it.
pub(crate) fn llb_platform(p: &kiln_solver::Platform) -> llb::Platform {
    llb::Platform {
        architecture: p.architecture.clone(),
        os: p.os.clone(),
        variant: p.variant.clone(),
        ..Default::default()
    }
}

/// A source op as LLB carries it in a message (a policy check).
pub(crate) fn llb_source(s: &kiln_solver::SourceOp) -> llb::SourceOp {
    llb::SourceOp {
        identifier: s.identifier.clone(),
        attrs: s
            .attrs
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

fn index(i: Option<usize>) -> i64 {
    i.map_or(-1, |i| i as i64)
}

/// An exec's cgroup limits, which LLB keeps in the op's metadata.
fn linux_resources(op: &Op) -> Option<llb::LinuxResources> {
    let Op::Exec(e) = op else { return None };
    let r = e.meta.resources.as_deref()?;
    Some(llb::LinuxResources {
        memory: r.memory,
        memory_swap: r.memory_swap,
        cpu_shares: r.cpu_shares,
        cpu_period: r.cpu_period,
        cpu_quota: r.cpu_quota,
        cpuset_cpus: r.cpuset_cpus.clone(),
        cpuset_mems: r.cpuset_mems.clone(),
    })
}

fn exec(e: &kiln_solver::ExecOp) -> llb::ExecOp {
    let m = &e.meta;
    llb::ExecOp {
        meta: Some(llb::Meta {
            args: m.args.clone(),
            env: m.env.clone(),
            cwd: m.cwd.clone(),
            user: m.user.clone(),
            proxy_env: m.proxy_env.as_ref().map(|p| llb::ProxyEnv {
                http_proxy: p.http_proxy.clone(),
                https_proxy: p.https_proxy.clone(),
                ftp_proxy: p.ftp_proxy.clone(),
                no_proxy: p.no_proxy.clone(),
                all_proxy: p.all_proxy.clone(),
            }),
            extra_hosts: m
                .extra_hosts
                .iter()
                .map(|h| llb::HostIp {
                    host: h.host.clone(),
                    ip: h.ip.to_string(),
                })
                .collect(),
            hostname: m.hostname.clone(),
            ulimit: m
                .ulimits
                .iter()
                .map(|u| llb::Ulimit {
                    name: u.name.clone(),
                    soft: u.soft,
                    hard: u.hard,
                })
                .collect(),
            cgroup_parent: String::new(),
            // kiln removes the stubs it made recursively, as every current
            // client asks.
            remove_mount_stubs_recursive: true,
            valid_exit_codes: m.valid_exit_codes.clone(),
        }),
        mounts: e.mounts.iter().map(mount).collect(),
        network: match e.network {
            NetMode::Unset => llb::NetMode::Unset,
            NetMode::Host => llb::NetMode::Host,
            NetMode::None => llb::NetMode::None,
        } as i32,
        security: match e.security {
            SecurityMode::Sandbox => llb::SecurityMode::Sandbox,
            SecurityMode::Insecure => llb::SecurityMode::Insecure,
        } as i32,
        secretenv: e
            .secret_env
            .iter()
            .map(|s| llb::SecretEnv {
                id: s.id.clone(),
                name: s.name.clone(),
                optional: s.optional,
            })
            .collect(),
        cdi_devices: Vec::new(),
    }
}

fn mount(m: &kiln_solver::Mount) -> llb::Mount {
    let mut out = llb::Mount {
        input: index(m.input),
        selector: m.selector.clone(),
        dest: m.dest.clone(),
        output: index(m.output),
        readonly: m.readonly,
        ..Default::default()
    };
    match &m.mount_type {
        MountType::Bind => out.mount_type = llb::MountType::Bind as i32,
        MountType::Cache { id, sharing } => {
            out.mount_type = llb::MountType::Cache as i32;
            out.cache_opt = Some(llb::CacheOpt {
                id: id.clone(),
                sharing: match sharing {
                    CacheSharing::Shared => llb::CacheSharingOpt::Shared,
                    CacheSharing::Private => llb::CacheSharingOpt::Private,
                    CacheSharing::Locked => llb::CacheSharingOpt::Locked,
                } as i32,
            });
        }
        MountType::Tmpfs { size } => {
            out.mount_type = llb::MountType::Tmpfs as i32;
            out.tmpfs_opt = Some(llb::TmpfsOpt {
                size: i64::try_from(*size).unwrap_or(i64::MAX),
            });
        }
        MountType::Secret(s) => {
            out.mount_type = llb::MountType::Secret as i32;
            out.secret_opt = Some(llb::SecretOpt {
                id: s.id.clone(),
                uid: s.uid,
                gid: s.gid,
                mode: s.mode,
                optional: s.optional,
            });
        }
        MountType::Ssh(s) => {
            out.mount_type = llb::MountType::Ssh as i32;
            out.ssh_opt = Some(llb::SshOpt {
                id: s.id.clone(),
                uid: s.uid,
                gid: s.gid,
                mode: s.mode,
                optional: s.optional,
            });
        }
    }
    out
}

/// A file action's input as LLB numbers them: -1 scratch, then the op's
/// inputs, then earlier actions.
fn file_input(i: FileInput, inputs: usize) -> i64 {
    match i {
        FileInput::Scratch => -1,
        FileInput::Input(i) => i as i64,
        FileInput::Action(a) => (a + inputs) as i64,
    }
}

fn user(u: &Option<UserOpt>, input: i64) -> Option<llb::UserOpt> {
    Some(llb::UserOpt {
        user: Some(match u.as_ref()? {
            UserOpt::ByName(name) => llb::user_opt::User::ByName(llb::NamedUserOpt {
                name: name.clone(),
                input,
            }),
            UserOpt::ById(id) => llb::user_opt::User::ById(*id),
        }),
    })
}

fn chown(o: &Option<ChownOpt>, input: i64) -> Option<llb::ChownOpt> {
    let o = o.as_ref()?;
    Some(llb::ChownOpt {
        user: user(&o.user, input),
        group: user(&o.group, input),
    })
}

/// A time as LLB holds it: -1 for none.
fn time(t: Option<i64>) -> i64 {
    t.unwrap_or(-1)
}

/// A file op of a vertex with `inputs` inputs.
fn file(f: &kiln_solver::FileOp, inputs: usize) -> llb::FileOp {
    llb::FileOp {
        actions: f
            .actions
            .iter()
            .map(|a| {
                let input = file_input(a.input, inputs);
                let action = match &a.action {
                    FileActionKind::Copy(c) => {
                        llb::file_action::Action::Copy(llb::FileActionCopy {
                            src: c.src.clone(),
                            dest: c.dest.clone(),
                            owner: chown(&c.owner, input),
                            mode: c.mode.map_or(-1, |m| m as i32),
                            follow_symlink: c.follow_symlink,
                            dir_copy_contents: c.dir_copy_contents,
                            attempt_unpack_docker_compatibility: c
                                .attempt_unpack_docker_compatibility,
                            create_dest_path: c.create_dest_path,
                            allow_wildcard: c.allow_wildcard,
                            allow_empty_wildcard: c.allow_empty_wildcard,
                            timestamp: time(c.timestamp),
                            include_patterns: c.include_patterns.clone(),
                            exclude_patterns: c.exclude_patterns.clone(),
                            always_replace_existing_dest_paths: false,
                            mode_str: c.mode_str.clone().unwrap_or_default(),
                            required_paths: c.required_paths.clone(),
                        })
                    }
                    FileActionKind::MkDir(m) => {
                        llb::file_action::Action::Mkdir(llb::FileActionMkDir {
                            path: m.path.clone(),
                            mode: m.mode as i32,
                            make_parents: m.make_parents,
                            owner: chown(&m.owner, input),
                            timestamp: time(m.timestamp),
                        })
                    }
                    FileActionKind::MkFile(m) => {
                        llb::file_action::Action::Mkfile(llb::FileActionMkFile {
                            path: m.path.clone(),
                            mode: m.mode as i32,
                            data: m.data.clone(),
                            owner: chown(&m.owner, input),
                            timestamp: time(m.timestamp),
                        })
                    }
                    FileActionKind::Rm(r) => llb::file_action::Action::Rm(llb::FileActionRm {
                        path: r.path.clone(),
                        allow_not_found: r.allow_not_found,
                        allow_wildcard: r.allow_wildcard,
                    }),
                    FileActionKind::Symlink(s) => {
                        llb::file_action::Action::Symlink(llb::FileActionSymlink {
                            oldpath: s.oldpath.clone(),
                            newpath: s.newpath.clone(),
                            owner: None,
                            timestamp: -1,
                        })
                    }
                };
                llb::FileAction {
                    input,
                    secondary_input: a.secondary_input.map_or(-1, |i| file_input(i, inputs)),
                    output: index(a.output),
                    action: Some(action),
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Each needed vertex of `graph` by its definition digest (op and
    /// inputs, recursively) with its name and cache switch.
    fn shape(graph: &Graph, result: VertexId) -> BTreeMap<String, (String, bool)> {
        let digests = graph.definition_digests();
        graph
            .needed_for(result)
            .into_iter()
            .map(|v| {
                let x = graph.vertex(v);
                (digests[v.0].to_string(), (x.name.clone(), x.ignore_cache))
            })
            .collect()
    }

    /// `graph` encoded and translated back has the same vertices (ops,
    /// inputs, names) and result, and encoding again gives the same bytes.
    fn check_round_trip(case: &str, graph: &Graph, result: VertexId) {
        let def = of_vertex(graph, result, None);
        let back = crate::llb::translate(&def).unwrap_or_else(|e| panic!("{case}: {e}"));
        let back_result = back.result.expect("a result");
        assert_eq!(
            shape(&back.graph, back_result),
            shape(graph, result),
            "{case}"
        );
        assert_eq!(
            back.graph.definition_digests()[back_result.0],
            graph.definition_digests()[result.0],
            "{case}: the result"
        );
        assert_eq!(
            of_vertex(graph, result, None).def,
            def.def,
            "{case}: stable bytes"
        );
        // The digests a client sees are those of the bytes.
        assert_eq!(
            back.digests.last().map(|d| d.to_string()),
            def.def
                .len()
                .checked_sub(2)
                .map(|i| Digest::of(&def.def[i]).to_string()),
            "{case}"
        );
    }

    /// Every Dockerfile of the conformance cases that converts (bases with
    /// an empty config) survives the round trip: the ops the Dockerfile
    /// frontend makes all have an LLB form that reads back the same.
    #[test]
    fn dockerfile_graphs_survive_the_round_trip() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/dockerfile");
        let mut checked = 0;
        for e in std::fs::read_dir(&dir).expect("testdata") {
            let path = e.expect("entry").path().join("Dockerfile");
            let Ok(text) = std::fs::read_to_string(&path) else {
                continue;
            };
            let case = path.display().to_string();
            let Ok(df) = kiln_dockerfile::parse(&text, "Dockerfile") else {
                continue;
            };
            let opts = kiln_dockerfile::BuildOptions::default();
            let Ok(images) = df.base_images(&opts) else {
                continue;
            };
            let bases = images
                .into_iter()
                .map(|r| (r, kiln_solver::ImageConfig::default()))
                .collect();
            let Ok(build) = kiln_dockerfile::to_graph(&df, &opts, &bases) else {
                continue;
            };
            check_round_trip(&case, &build.graph, build.result);
            checked += 1;
        }
        assert!(checked > 100, "only {checked} cases converted");
    }

    /// Ops and fields no Dockerfile case may reach: every mount type,
    /// platforms, process options, file actions reading earlier actions.
    #[test]
    fn every_op_field_survives_the_round_trip() {
        use kiln_solver::{
            Edge, ExecOp, FileAction, FileCopy, FileMkDir, FileOp, FileRm, FileSymlink, MergeOp,
            Meta, Mount, Platform, ProxyEnv, SecretEnv, SecretMount, SourceOp, SshMount, Vertex,
        };
        let other = if kiln_engine::oci::worker_platform().architecture == "arm64" {
            Platform::new("linux", "amd64", "")
        } else {
            Platform::new("linux", "arm64", "")
        };
        let vertex = |op, inputs: &[(usize, usize)], name: &str| Vertex {
            op,
            inputs: inputs
                .iter()
                .map(|&(v, o)| Edge {
                    vertex: VertexId(v),
                    output: o,
                })
                .collect(),
            name: name.into(),
            location: None,
            ignore_cache: name == "uncached",
        };
        let mut g = Graph::default();
        let img = g
            .add(vertex(
                Op::Source(SourceOp {
                    identifier: "docker-image://docker.io/library/busybox:latest".into(),
                    attrs: BTreeMap::new(),
                    platform: Some(other.clone()),
                }),
                &[],
                "[internal] load metadata",
            ))
            .expect("add");
        let local = g
            .add(vertex(
                Op::Source(SourceOp {
                    identifier: "local://context".into(),
                    attrs: (0..8)
                        .map(|i| (format!("local.attr{i}"), format!("[\"{i}\"]")))
                        .collect(),
                    platform: None,
                }),
                &[],
                "[internal] load build context",
            ))
            .expect("add");
        let mount = |input, dest: &str, output, mount_type| Mount {
            input,
            selector: String::new(),
            dest: dest.into(),
            output,
            readonly: false,
            mount_type,
        };
        let exec = g
            .add(vertex(
                Op::Exec(ExecOp {
                    meta: Meta {
                        args: vec!["sh".into(), "-c".into(), "true".into()],
                        env: vec!["A=1".into()],
                        cwd: "/w".into(),
                        user: "1:2".into(),
                        hostname: "h".into(),
                        extra_hosts: vec![kiln_solver::HostIp::parse("a=10.0.0.1").expect("host")],
                        ulimits: vec![kiln_solver::Ulimit::parse("nofile=1:2").expect("ulimit")],
                        valid_exit_codes: vec![0, 3],
                        proxy_env: Some(Box::new(ProxyEnv {
                            http_proxy: "http://p".into(),
                            ..Default::default()
                        })),
                        resources: Some(Box::new(kiln_solver::Resources {
                            memory: 64 << 20,
                            cpuset_cpus: "0".into(),
                            ..Default::default()
                        })),
                    },
                    mounts: vec![
                        mount(Some(0), "/", Some(0), MountType::Bind),
                        Mount {
                            selector: "/sub".into(),
                            readonly: true,
                            ..mount(Some(1), "/ctx", None, MountType::Bind)
                        },
                        mount(
                            None,
                            "/cache",
                            None,
                            MountType::Cache {
                                id: "c".into(),
                                sharing: CacheSharing::Locked,
                            },
                        ),
                        mount(None, "/tmp", None, MountType::Tmpfs { size: 1 << 20 }),
                        mount(
                            None,
                            "/run/secrets/s",
                            None,
                            MountType::Secret(SecretMount {
                                id: "s".into(),
                                optional: true,
                                uid: 1,
                                gid: 2,
                                mode: 0o400,
                            }),
                        ),
                        mount(
                            None,
                            "/run/ssh",
                            None,
                            MountType::Ssh(SshMount {
                                id: String::new(),
                                optional: false,
                                uid: 0,
                                gid: 0,
                                mode: 0o600,
                            }),
                        ),
                        mount(Some(1), "/out", Some(1), MountType::Bind),
                    ],
                    network: NetMode::None,
                    security: SecurityMode::Insecure,
                    secret_env: vec![SecretEnv {
                        id: "tok".into(),
                        name: "TOKEN".into(),
                        optional: false,
                    }],
                    platform: Some(other.clone()),
                }),
                &[(img.0, 0), (local.0, 0)],
                "uncached",
            ))
            .expect("add");
        let file = g
            .add(vertex(
                Op::File(FileOp {
                    actions: vec![
                        FileAction {
                            input: FileInput::Input(0),
                            secondary_input: None,
                            output: None,
                            action: FileActionKind::MkDir(FileMkDir {
                                path: "/d".into(),
                                mode: 0o755,
                                make_parents: true,
                                owner: Some(ChownOpt {
                                    user: Some(UserOpt::ByName("app".into())),
                                    group: Some(UserOpt::ById(7)),
                                }),
                                timestamp: Some(5),
                            }),
                        },
                        FileAction {
                            input: FileInput::Action(0),
                            secondary_input: Some(FileInput::Input(1)),
                            output: None,
                            action: FileActionKind::Copy(FileCopy {
                                src: "/a".into(),
                                dest: "/d/".into(),
                                mode_str: Some("u=rwX".into()),
                                allow_wildcard: true,
                                include_patterns: vec!["*.txt".into()],
                                required_paths: vec!["/a".into()],
                                ..Default::default()
                            }),
                        },
                        FileAction {
                            input: FileInput::Action(1),
                            secondary_input: None,
                            output: None,
                            action: FileActionKind::Symlink(FileSymlink {
                                oldpath: "/d".into(),
                                newpath: "/l".into(),
                            }),
                        },
                        FileAction {
                            input: FileInput::Action(2),
                            secondary_input: None,
                            output: Some(0),
                            action: FileActionKind::Rm(FileRm {
                                path: "/x*".into(),
                                allow_not_found: true,
                                allow_wildcard: true,
                            }),
                        },
                    ],
                }),
                &[(exec.0, 0), (exec.0, 1)],
                "file",
            ))
            .expect("add");
        let merge = g
            .add(vertex(
                Op::Merge(MergeOp { inputs: vec![0, 1] }),
                &[(img.0, 0), (file.0, 0)],
                "merge",
            ))
            .expect("add");
        check_round_trip("every field", &g, merge);
        // A vertex the result does not need is left out.
        let def = of_vertex(&g, exec, None);
        assert_eq!(def.def.len(), 4, "two sources, the exec, the terminal");
    }

    /// With the Dockerfile, each vertex with a line points at it in the
    /// definition's source map, which the error details of a later solve
    /// of the definition read.
    #[test]
    fn the_dockerfile_lines_go_with_the_definition() {
        let text = "FROM busybox\nRUN false\n";
        let df = kiln_dockerfile::parse(text, "Dockerfile").expect("parse");
        let opts = kiln_dockerfile::BuildOptions::default();
        let bases = df
            .base_images(&opts)
            .expect("bases")
            .into_iter()
            .map(|r| (r, kiln_solver::ImageConfig::default()))
            .collect();
        let build = kiln_dockerfile::to_graph(&df, &opts, &bases).expect("graph");
        let info = llb::SourceInfo {
            filename: "Dockerfile".into(),
            data: text.as_bytes().to_vec(),
            definition: None,
            language: "Dockerfile".into(),
        };
        let def = of_vertex(&build.graph, build.result, Some(&info));
        let source = def.source.as_ref().expect("a source map");
        assert_eq!(source.infos, vec![info]);
        let back = crate::llb::translate(&def).expect("translate");
        let map = crate::errdetails::SourceMap::definition(&def, &back.digests);
        let run = back.result.expect("a result").0;
        let sources = map.sources(run);
        assert_eq!(sources.len(), 1, "{sources:?}");
        let line = |s: &kiln_proto::errdefs::Source| {
            s.ranges
                .first()
                .and_then(|r| r.start.as_ref())
                .map(|p| p.line)
        };
        assert_eq!(line(&sources[0]), Some(2), "the RUN line");
        // Without it, no map.
        assert!(of_vertex(&build.graph, build.result, None).source.is_none());
    }
}
