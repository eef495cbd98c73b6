//! `StepSpec` -> OCI runtime spec, a pure function.
//!
//! The spec is containerd 1.6's default Unix spec (`oci/spec.go`
//! `populateDefaultUnixSpec`) adjusted the way BuildKit's executor adjusts
//! it: no `/run` tmpfs (it would hide the image's `/run`), a read-only
//! `/sys/fs/cgroup`, generated `/etc/hosts` and `/etc/resolv.conf` bound
//! read-only, `noNewPrivileges` off, and a network namespace only when the
//! step has no network.
//!
//! A sandboxed step (the default) further gets Docker's current masked and
//! read-only paths, kiln's default seccomp profile ([`crate::seccomp`]),
//! the capability set without `CAP_NET_RAW` and a pids limit. An insecure
//! step (`RUN --security=insecure`, granted by the daemon's entitlement
//! check, not here) gets what BuildKit's insecure mode gives: every
//! capability, no seccomp, nothing masked, writable `/sys` and cgroupfs, and
//! every device allowed by the device cgroup.

use crate::user::ResolvedUser;
use crate::{ExtraMount, HostIp, Network, Security, StepSpec, Ulimit, DEFAULT_HOSTNAME};
use oci_spec::runtime::{
    Capability, Linux, LinuxCapabilities, LinuxCpu, LinuxDevice, LinuxDeviceCgroup,
    LinuxDeviceType, LinuxMemory, LinuxNamespace, LinuxNamespaceType, LinuxPids, LinuxResources,
    Mount, PosixRlimit, PosixRlimitBuilder, PosixRlimitType, Process, Root, Spec, User,
};
use std::path::{Path, PathBuf};

/// `PATH` added when the step's environment has none (BuildKit's default).
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Parent of every step's cgroup: `linux.cgroupsPath` is `/kiln/<id>`.
pub const CGROUP_PARENT: &str = "/kiln";

/// The capabilities of a sandboxed step: containerd's and Docker's default
/// set (`oci/spec.go` `defaultUnixCaps`) without `CAP_NET_RAW`, so a step
/// cannot open raw sockets or forge packets.
pub const DEFAULT_CAPABILITIES: [Capability; 13] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// The capabilities of an insecure step: the list BuildKit's insecure mode
/// grants (`util/entitlements/security`).
pub const ALL_CAPABILITIES: [Capability; 38] = [
    Capability::Fsetid,
    Capability::Kill,
    Capability::Fowner,
    Capability::Mknod,
    Capability::Chown,
    Capability::DacOverride,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setpcap,
    Capability::Setfcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::AuditWrite,
    Capability::MacAdmin,
    Capability::MacOverride,
    Capability::DacReadSearch,
    Capability::SysPtrace,
    Capability::SysModule,
    Capability::Syslog,
    Capability::SysRawio,
    Capability::SysAdmin,
    Capability::LinuxImmutable,
    Capability::SysBoot,
    Capability::SysNice,
    Capability::SysPacct,
    Capability::SysTtyConfig,
    Capability::SysTime,
    Capability::WakeAlarm,
    Capability::AuditRead,
    Capability::AuditControl,
    Capability::SysResource,
    Capability::BlockSuspend,
    Capability::IpcLock,
    Capability::IpcOwner,
    Capability::Lease,
    Capability::NetAdmin,
    Capability::NetBroadcast,
];

/// Paths masked from a sandboxed step, as in Docker's current default spec
/// (moby `daemon/pkg/oci/defaults.go`).
pub const MASKED_PATHS: [&str; 12] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths made read-only in a sandboxed step, as in Docker's default spec.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// A capability's number in the kernel's capability sets.
pub fn cap_number(c: Capability) -> u32 {
    use Capability as C;
    match c {
        C::Chown => 0,
        C::DacOverride => 1,
        C::DacReadSearch => 2,
        C::Fowner => 3,
        C::Fsetid => 4,
        C::Kill => 5,
        C::Setgid => 6,
        C::Setuid => 7,
        C::Setpcap => 8,
        C::LinuxImmutable => 9,
        C::NetBindService => 10,
        C::NetBroadcast => 11,
        C::NetAdmin => 12,
        C::NetRaw => 13,
        C::IpcLock => 14,
        C::IpcOwner => 15,
        C::SysModule => 16,
        C::SysRawio => 17,
        C::SysChroot => 18,
        C::SysPtrace => 19,
        C::SysPacct => 20,
        C::SysAdmin => 21,
        C::SysBoot => 22,
        C::SysNice => 23,
        C::SysResource => 24,
        C::SysTime => 25,
        C::SysTtyConfig => 26,
        C::Mknod => 27,
        C::Lease => 28,
        C::AuditWrite => 29,
        C::AuditControl => 30,
        C::Setfcap => 31,
        C::MacOverride => 32,
        C::MacAdmin => 33,
        C::Syslog => 34,
        C::WakeAlarm => 35,
        C::BlockSuspend => 36,
        C::AuditRead => 37,
        C::Perfmon => 38,
        C::Bpf => 39,
        C::CheckpointRestore => 40,
    }
}

/// Keeps in `spec` only the capabilities in `bounding` (a kernel mask such
/// as kiln's own `CapBnd`): runc cannot grant a step what kiln does not
/// hold, and would fail the step instead. Returns what was removed, sorted
/// by number, for the caller to log.
pub fn restrict_capabilities(spec: &mut Spec, bounding: u64) -> Vec<Capability> {
    let held = |c: &Capability| cap_number(*c) < 64 && bounding & (1u64 << cap_number(*c)) != 0;
    let mut removed: Vec<Capability> = Vec::new();
    let Some(process) = spec.process_mut() else {
        return removed;
    };
    let Some(mut caps) = process.capabilities().clone() else {
        return removed;
    };
    let keep = |set: &Option<oci_spec::runtime::Capabilities>, removed: &mut Vec<Capability>| {
        set.as_ref().map(|set| {
            for c in set.iter().filter(|c| !held(c)) {
                if !removed.contains(c) {
                    removed.push(*c);
                }
            }
            set.iter().copied().filter(|c| held(c)).collect()
        })
    };
    let b = keep(caps.bounding(), &mut removed);
    let e = keep(caps.effective(), &mut removed);
    let p = keep(caps.permitted(), &mut removed);
    caps.set_bounding(b);
    caps.set_effective(e);
    caps.set_permitted(p);
    process.set_capabilities(Some(caps));
    removed.sort_by_key(|c| cap_number(*c));
    removed
}

/// The device nodes an insecure step gets besides runc's defaults, as in
/// BuildKit's insecure mode: `/dev/kmsg`, `cuse`, `fuse`, `kvm`, `net/tun`,
/// `loop-control` and `loop0`..`loop7` (BuildKit counts the loop devices
/// from the host's first free one; kiln keeps the spec a pure function).
pub fn insecure_devices() -> Vec<LinuxDevice> {
    let dev = |path: String, typ, major, minor| {
        let mut d = LinuxDevice::default();
        d.set_path(PathBuf::from(path));
        d.set_typ(typ);
        d.set_major(major);
        d.set_minor(minor);
        d
    };
    let c = LinuxDeviceType::C;
    let mut out = vec![
        dev("/dev/kmsg".into(), c, 1, 11),
        dev("/dev/cuse".into(), c, 10, 203),
        dev("/dev/fuse".into(), c, 10, 229),
        dev("/dev/kvm".into(), c, 10, 232),
        dev("/dev/net/tun".into(), c, 10, 200),
        dev("/dev/loop-control".into(), c, 10, 237),
    ];
    for i in 0..8 {
        out.push(dev(format!("/dev/loop{i}"), LinuxDeviceType::B, 7, i));
    }
    out
}

/// The hostname a step gets.
pub fn hostname(step: &StepSpec) -> &str {
    if step.hostname.is_empty() {
        DEFAULT_HOSTNAME
    } else {
        &step.hostname
    }
}

/// The `/etc/hosts` a step sees (BuildKit's, with the step's hostname and
/// its extra hosts after the default lines).
pub fn hosts_content(hostname: &str, extra: &[HostIp]) -> String {
    let mut s =
        format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    for h in extra {
        s.push_str(&format!("{h}\n"));
    }
    s
}

/// The process's resource limits: the given ones, else none, so the step
/// inherits the runtime's (as BuildKit resets containerd's default open
/// files limit of 1024: `s.Process.Rlimits = nil` without ulimits).
pub fn rlimits(ulimits: &[Ulimit]) -> Vec<PosixRlimit> {
    ulimits
        .iter()
        .filter_map(|u| {
            let typ = match u.name.as_str() {
                "core" => PosixRlimitType::RlimitCore,
                "cpu" => PosixRlimitType::RlimitCpu,
                "data" => PosixRlimitType::RlimitData,
                "fsize" => PosixRlimitType::RlimitFsize,
                "locks" => PosixRlimitType::RlimitLocks,
                "memlock" => PosixRlimitType::RlimitMemlock,
                "msgqueue" => PosixRlimitType::RlimitMsgqueue,
                "nice" => PosixRlimitType::RlimitNice,
                "nofile" => PosixRlimitType::RlimitNofile,
                "nproc" => PosixRlimitType::RlimitNproc,
                "rss" => PosixRlimitType::RlimitRss,
                "rtprio" => PosixRlimitType::RlimitRtprio,
                "rttime" => PosixRlimitType::RlimitRttime,
                "sigpending" => PosixRlimitType::RlimitSigpending,
                "stack" => PosixRlimitType::RlimitStack,
                // `Ulimit::new` admits only the names above.
                _ => return None,
            };
            Some(rlimit(typ, Ulimit::rlimit(u.soft), Ulimit::rlimit(u.hard)))
        })
        .collect()
}

fn rlimit(typ: PosixRlimitType, soft: u64, hard: u64) -> PosixRlimit {
    PosixRlimitBuilder::default()
        .typ(typ)
        .hard(hard)
        .soft(soft)
        .build()
        .expect("an rlimit builder with every field set cannot fail")
}

/// The `/etc/resolv.conf` a step sees: the host's, or public resolvers
/// when the host has none.
pub fn resolv_content(host: Option<&str>) -> String {
    match host {
        Some(s) if !s.trim().is_empty() => s.to_string(),
        _ => "nameserver 8.8.8.8\nnameserver 8.8.4.4\nnameserver 2001:4860:4860::8888\nnameserver 2001:4860:4860::8844\n"
            .to_string(),
    }
}

/// The step's environment with `PATH` (and `HOME`, as runc would) added
/// when missing.
pub fn step_env(env: &[String], home: &str) -> Vec<String> {
    let mut out = env.to_vec();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        out.push(DEFAULT_PATH.to_string());
    }
    if !env.iter().any(|e| e.starts_with("HOME=")) {
        out.push(format!("HOME={home}"));
    }
    out
}

fn mount(dest: &str, typ: &str, source: impl Into<PathBuf>, options: &[&str]) -> Mount {
    let mut m = Mount::default();
    m.set_destination(PathBuf::from(dest));
    m.set_typ(Some(typ.to_string()));
    m.set_source(Some(source.into()));
    m.set_options(Some(options.iter().map(|s| s.to_string()).collect()));
    m
}

/// The destinations of the standard mounts (`/proc`, `/dev`, `/sys` and
/// what is mounted below them), in [`step_mounts`]'s order. runc creates
/// those a rootfs lacks, and a RUN layer keeps them as BuildKit's does:
/// only the mount points of `/etc/hosts`, `/etc/resolv.conf` and the
/// step's own mounts are removed after the run.
pub const STANDARD_MOUNT_POINTS: [&str; 7] = [
    "/proc",
    "/dev",
    "/dev/pts",
    "/dev/shm",
    "/dev/mqueue",
    "/sys",
    "/sys/fs/cgroup",
];

/// Every mount of a step in order: the standard set, the generated
/// hosts/resolv.conf, then the step's own mounts.
pub fn step_mounts(step: &StepSpec, hosts: &Path, resolv: &Path) -> Vec<Mount> {
    // BuildKit's insecure mode makes sysfs and cgroupfs writable.
    let sys_mode = match step.security {
        Security::Sandbox => "ro",
        Security::Insecure => "rw",
    };
    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", sys_mode],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "cgroup",
            &["nosuid", "noexec", "nodev", "relatime", sys_mode],
        ),
        mount(
            "/etc/hosts",
            "bind",
            hosts,
            &["nosuid", "noexec", "nodev", "rbind", "ro"],
        ),
        mount(
            "/etc/resolv.conf",
            "bind",
            resolv,
            &["nosuid", "noexec", "nodev", "rbind", "ro"],
        ),
    ];
    for m in &step.mounts {
        mounts.push(match m {
            ExtraMount::Bind {
                source,
                dest,
                readonly,
            } => mount(
                dest,
                "bind",
                source.clone(),
                &["rbind", if *readonly { "ro" } else { "rw" }],
            ),
            ExtraMount::Tmpfs { dest, size } => {
                // BuildKit's tmpfs mount: only `nosuid` (a tmpfs is 1777
                // by default), so devices work on it as there.
                let mut opts = vec!["nosuid".to_string()];
                if let Some(size) = size {
                    opts.push(format!("size={size}"));
                }
                let mut t = mount(dest, "tmpfs", "tmpfs", &[]);
                t.set_options(Some(opts));
                t
            }
        });
    }
    mounts
}

fn namespace(typ: LinuxNamespaceType) -> LinuxNamespace {
    let mut ns = LinuxNamespace::default();
    ns.set_typ(typ);
    ns
}

/// The namespaces of a step: pid, ipc, uts and mount always; network
/// unless the step uses the host's (a sandbox's namespace is joined by path,
/// [`join_network_namespace`]; without a path runc makes an empty one).
pub fn step_namespaces(network: Network) -> Vec<LinuxNamespace> {
    let mut out = vec![
        namespace(LinuxNamespaceType::Pid),
        namespace(LinuxNamespaceType::Ipc),
        namespace(LinuxNamespaceType::Uts),
        namespace(LinuxNamespaceType::Mount),
    ];
    if network != Network::Host {
        out.push(namespace(LinuxNamespaceType::Network));
    }
    out
}

/// Makes the step join the network namespace at `path` (a CNI sandbox)
/// instead of a new one.
pub fn join_network_namespace(spec: &mut Spec, path: &Path) {
    let Some(linux) = spec.linux_mut() else {
        return;
    };
    let Some(namespaces) = linux.namespaces_mut() else {
        return;
    };
    for ns in namespaces.iter_mut() {
        if ns.typ() == LinuxNamespaceType::Network {
            ns.set_path(Some(path.to_path_buf()));
        }
    }
}

/// Builds the OCI runtime spec of `step` run as `user`, with the generated
/// `hosts` and `resolv` files bound over `/etc/hosts` and
/// `/etc/resolv.conf`. The root path is `rootfs`, relative to the bundle,
/// where containerd mounts the rootfs passed to `Tasks.Create`.
/// A step's memory and CPU limits in the spec's cgroup resources, as
/// BuildKit's executor writes them: only what is set.
pub fn cgroup_limits(resources: &mut LinuxResources, r: &kiln_types::process::Resources) {
    if r.memory > 0 || r.memory_swap != 0 {
        let mut memory = LinuxMemory::default();
        if r.memory > 0 {
            memory.set_limit(Some(r.memory));
        }
        if r.memory_swap != 0 {
            memory.set_swap(Some(r.memory_swap));
        }
        resources.set_memory(Some(memory));
    }
    let cpu_set = r.cpu_shares > 0
        || r.cpu_period > 0
        || r.cpu_quota > 0
        || !r.cpuset_cpus.is_empty()
        || !r.cpuset_mems.is_empty();
    if cpu_set {
        let mut cpu = LinuxCpu::default();
        if r.cpu_shares > 0 {
            cpu.set_shares(Some(r.cpu_shares));
        }
        if r.cpu_period > 0 {
            cpu.set_period(Some(r.cpu_period));
        }
        if r.cpu_quota > 0 {
            cpu.set_quota(Some(r.cpu_quota));
        }
        if !r.cpuset_cpus.is_empty() {
            cpu.set_cpus(Some(r.cpuset_cpus.clone()));
        }
        if !r.cpuset_mems.is_empty() {
            cpu.set_mems(Some(r.cpuset_mems.clone()));
        }
        resources.set_cpu(Some(cpu));
    }
}

pub fn build_spec(step: &StepSpec, user: &ResolvedUser, hosts: &Path, resolv: &Path) -> Spec {
    let mut u = User::default();
    u.set_uid(user.uid);
    u.set_gid(user.gid);
    if !user.additional_gids.is_empty() {
        u.set_additional_gids(Some(user.additional_gids.clone()));
    }

    let cap_list: &[Capability] = match step.security {
        Security::Sandbox => &DEFAULT_CAPABILITIES,
        Security::Insecure => &ALL_CAPABILITIES,
    };
    let caps: oci_spec::runtime::Capabilities = cap_list.iter().copied().collect();
    let mut capabilities = LinuxCapabilities::default();
    capabilities.set_bounding(Some(caps.clone()));
    capabilities.set_effective(Some(caps.clone()));
    capabilities.set_permitted(Some(caps));
    capabilities.set_inheritable(None);
    capabilities.set_ambient(None);

    let mut process = Process::default();
    process.set_terminal(Some(false));
    process.set_user(u);
    process.set_args(Some(step.args.clone()));
    process.set_env(Some(step_env(&step.env, &user.home)));
    process.set_cwd(PathBuf::from(if step.cwd.is_empty() {
        "/"
    } else {
        step.cwd.as_str()
    }));
    process.set_capabilities(Some(capabilities));
    let limits = rlimits(&step.ulimits);
    process.set_rlimits((!limits.is_empty()).then_some(limits));
    process.set_no_new_privileges(Some(false));

    let mut root = Root::default();
    root.set_path(PathBuf::from("rootfs"));
    root.set_readonly(Some(false));

    let mut resources = LinuxResources::default();
    match step.security {
        Security::Sandbox => {
            let mut deny_all = LinuxDeviceCgroup::default();
            deny_all.set_allow(false);
            deny_all.set_access(Some("rwm".to_string()));
            resources.set_devices(Some(vec![deny_all]));
        }
        Security::Insecure => {
            let allow = |typ| {
                let mut d = LinuxDeviceCgroup::default();
                d.set_allow(true);
                d.set_typ(Some(typ));
                d.set_access(Some("rwm".to_string()));
                d
            };
            resources.set_devices(Some(vec![
                allow(LinuxDeviceType::C),
                allow(LinuxDeviceType::B),
            ]));
        }
    }
    if let Some(limit) = step.pids_limit {
        let mut pids = LinuxPids::default();
        pids.set_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        resources.set_pids(Some(pids));
    }
    if let Some(r) = &step.resources {
        cgroup_limits(&mut resources, r);
    }

    let mut linux = Linux::default();
    linux.set_resources(Some(resources));
    linux.set_cgroups_path(Some(PathBuf::from(format!("{CGROUP_PARENT}/{}", step.id))));
    linux.set_namespaces(Some(step_namespaces(step.network)));
    if step.security == Security::Sandbox {
        linux.set_masked_paths(Some(MASKED_PATHS.iter().map(|s| s.to_string()).collect()));
        linux.set_readonly_paths(Some(READONLY_PATHS.iter().map(|s| s.to_string()).collect()));
        linux.set_seccomp(Some(crate::seccomp::default_profile(
            cap_list,
            std::env::consts::ARCH,
        )));
    } else {
        linux.set_devices(Some(insecure_devices()));
        // oci-spec's default Linux section masks paths of its own.
        linux.set_masked_paths(Some(Vec::new()));
        linux.set_readonly_paths(Some(Vec::new()));
        linux.set_seccomp(None);
    }

    let mut spec = Spec::default();
    spec.set_version("1.0.2-dev".to_string());
    spec.set_root(Some(root));
    spec.set_hostname(Some(hostname(step).to_string()));
    spec.set_process(Some(process));
    spec.set_mounts(Some(step_mounts(step, hosts, resolv)));
    spec.set_annotations(None);
    spec.set_linux(Some(linux));
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_snapshot::containerd::LeaseId;

    fn step(network: Network) -> StepSpec {
        StepSpec {
            id: "kiln-abc".into(),
            rootfs: "/tmp/rootfs".into(),
            args: vec!["/bin/sh".into(), "-c".into(), "true".into()],
            env: vec!["FOO=bar".into()],
            cwd: "/work".into(),
            user: "app".into(),
            hostname: String::new(),
            extra_hosts: Vec::new(),
            ulimits: Vec::new(),
            network,
            mounts: vec![
                ExtraMount::Bind {
                    source: "/host/cache".into(),
                    dest: "/cache".into(),
                    readonly: true,
                },
                ExtraMount::Tmpfs {
                    dest: "/tmp".into(),
                    size: Some(1 << 20),
                },
            ],
            lease: LeaseId::named("build", "t"),
            timeout: None,
            security: Security::Sandbox,
            pids_limit: Some(crate::DEFAULT_PIDS_LIMIT),
            resources: None,
        }
    }

    fn user() -> ResolvedUser {
        ResolvedUser {
            uid: 1000,
            gid: 1001,
            additional_gids: vec![10, 20],
            home: "/home/app".into(),
        }
    }

    fn build(network: Network) -> Spec {
        build_spec(
            &step(network),
            &user(),
            Path::new("/state/kiln-abc/hosts"),
            Path::new("/state/kiln-abc/resolv.conf"),
        )
    }

    fn ns_types(spec: &Spec) -> Vec<LinuxNamespaceType> {
        let linux = spec.linux().as_ref().expect("linux section");
        let ns = linux.namespaces().as_ref().expect("namespaces");
        ns.iter().map(|n| n.typ()).collect()
    }

    #[test]
    fn capabilities_are_containerds_default_set_without_net_raw() {
        let spec = build(Network::Host);
        let process = spec.process().as_ref().expect("process");
        let caps = process.capabilities().as_ref().expect("capabilities");
        let want: oci_spec::runtime::Capabilities = DEFAULT_CAPABILITIES.into_iter().collect();
        assert_eq!(caps.bounding().as_ref(), Some(&want));
        assert_eq!(caps.effective().as_ref(), Some(&want));
        assert_eq!(caps.permitted().as_ref(), Some(&want));
        assert_eq!(caps.inheritable(), &None);
        assert_eq!(caps.ambient(), &None);
        assert_eq!(want.len(), 13);
        assert!(!want.contains(&Capability::NetRaw));
        assert_eq!(process.no_new_privileges(), Some(false));
        // No limits: the step inherits the runtime's, as in BuildKit.
        assert_eq!(process.rlimits(), &None);
    }

    #[test]
    fn mounts_in_order_with_generated_files_and_extras() {
        let spec = build(Network::Host);
        let mounts = spec.mounts().as_ref().expect("mounts");
        let got: Vec<(String, String, String)> = mounts
            .iter()
            .map(|m| {
                (
                    m.destination().display().to_string(),
                    m.typ().clone().unwrap_or_default(),
                    m.options().clone().unwrap_or_default().join(","),
                )
            })
            .collect();
        let want = [
            ("/proc", "proc", "nosuid,noexec,nodev"),
            ("/dev", "tmpfs", "nosuid,strictatime,mode=755,size=65536k"),
            (
                "/dev/pts",
                "devpts",
                "nosuid,noexec,newinstance,ptmxmode=0666,mode=0620,gid=5",
            ),
            (
                "/dev/shm",
                "tmpfs",
                "nosuid,noexec,nodev,mode=1777,size=65536k",
            ),
            ("/dev/mqueue", "mqueue", "nosuid,noexec,nodev"),
            ("/sys", "sysfs", "nosuid,noexec,nodev,ro"),
            (
                "/sys/fs/cgroup",
                "cgroup",
                "nosuid,noexec,nodev,relatime,ro",
            ),
            ("/etc/hosts", "bind", "nosuid,noexec,nodev,rbind,ro"),
            ("/etc/resolv.conf", "bind", "nosuid,noexec,nodev,rbind,ro"),
            ("/cache", "bind", "rbind,ro"),
            ("/tmp", "tmpfs", "nosuid,size=1048576"),
        ];
        let want: Vec<(String, String, String)> = want
            .iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect();
        assert_eq!(got, want);
        let standard: Vec<&str> = got[..STANDARD_MOUNT_POINTS.len()]
            .iter()
            .map(|(d, _, _)| d.as_str())
            .collect();
        assert_eq!(standard, STANDARD_MOUNT_POINTS);
        assert_eq!(
            mounts[7].source().as_deref(),
            Some(Path::new("/state/kiln-abc/hosts"))
        );
        assert_eq!(
            mounts[8].source().as_deref(),
            Some(Path::new("/state/kiln-abc/resolv.conf"))
        );
        assert_eq!(
            mounts[9].source().as_deref(),
            Some(Path::new("/host/cache"))
        );
    }

    #[test]
    fn namespaces_per_network_mode() {
        use LinuxNamespaceType as T;
        let base = vec![T::Pid, T::Ipc, T::Uts, T::Mount];
        assert_eq!(ns_types(&build(Network::Host)), base);
        let mut none = base.clone();
        none.push(T::Network);
        assert_eq!(ns_types(&build(Network::None)), none);
        assert_eq!(ns_types(&build(Network::Sandbox)), none);
    }

    #[test]
    fn a_sandbox_joins_its_namespace_by_path() {
        let mut spec = build(Network::Sandbox);
        join_network_namespace(&mut spec, Path::new("/state/net/steps/kiln-abc/netns"));
        let linux = spec.linux().as_ref().expect("linux section");
        let ns = linux.namespaces().as_ref().expect("namespaces");
        let paths: Vec<_> = ns.iter().map(|n| (n.typ(), n.path().clone())).collect();
        assert!(paths.contains(&(
            LinuxNamespaceType::Network,
            Some(PathBuf::from("/state/net/steps/kiln-abc/netns"))
        )));
        assert!(paths
            .iter()
            .filter(|(t, _)| *t != LinuxNamespaceType::Network)
            .all(|(_, p)| p.is_none()));
        // The host's network has no namespace entry to join.
        let mut host = build(Network::Host);
        join_network_namespace(&mut host, Path::new("/x"));
        assert!(!ns_types(&host).contains(&LinuxNamespaceType::Network));
    }

    #[test]
    fn user_ids_cwd_hostname_and_cgroup() {
        let spec = build(Network::Host);
        let process = spec.process().as_ref().expect("process");
        let u = process.user();
        assert_eq!((u.uid(), u.gid()), (1000, 1001));
        assert_eq!(u.additional_gids().as_ref(), Some(&vec![10, 20]));
        assert_eq!(process.cwd(), Path::new("/work"));
        assert_eq!(
            process.args().as_ref(),
            Some(&vec!["/bin/sh".to_string(), "-c".into(), "true".into()])
        );
        assert_eq!(spec.hostname().as_deref(), Some(DEFAULT_HOSTNAME));
        let root = spec.root().as_ref().expect("root");
        assert_eq!(
            (root.path().as_path(), root.readonly()),
            (Path::new("rootfs"), Some(false))
        );
        let linux = spec.linux().as_ref().expect("linux");
        assert_eq!(
            linux.cgroups_path().as_deref(),
            Some(Path::new("/kiln/kiln-abc"))
        );
        assert_eq!(
            linux.masked_paths().as_ref().map(Vec::len),
            Some(MASKED_PATHS.len())
        );
        assert_eq!(
            linux.readonly_paths().as_ref().map(Vec::len),
            Some(READONLY_PATHS.len())
        );
    }

    #[test]
    fn sandbox_has_seccomp_masks_and_a_pids_limit() {
        let spec = build(Network::Host);
        let linux = spec.linux().as_ref().expect("linux");
        let masked = linux.masked_paths().clone().expect("masked paths");
        for p in [
            "/proc/interrupts",
            "/sys/devices/virtual/powercap",
            "/proc/kcore",
        ] {
            assert!(masked.iter().any(|m| m == p), "{p} not masked");
        }
        let seccomp = linux.seccomp().as_ref().expect("seccomp");
        assert_eq!(
            seccomp.default_action(),
            oci_spec::runtime::LinuxSeccompAction::ScmpActErrno
        );
        let res = linux.resources().as_ref().expect("resources");
        assert_eq!(
            res.pids().as_ref().map(|p| p.limit()),
            Some(crate::DEFAULT_PIDS_LIMIT as i64)
        );
        let json = serde_json::to_value(&spec).expect("serialize");
        assert_eq!(json["linux"]["resources"]["pids"]["limit"], 4096);
        assert_eq!(json["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ERRNO");
        let mounts = spec.mounts().as_ref().expect("mounts");
        let sys = mounts
            .iter()
            .find(|m| m.destination() == Path::new("/sys"))
            .expect("/sys");
        assert!(sys.options().iter().flatten().any(|o| o == "ro"));
    }

    #[test]
    fn insecure_is_buildkits_insecure_mode() {
        let mut s = step(Network::Host);
        s.security = Security::Insecure;
        s.pids_limit = None;
        let spec = build_spec(
            &s,
            &user(),
            Path::new("/state/hosts"),
            Path::new("/state/resolv.conf"),
        );
        let caps = spec
            .process()
            .as_ref()
            .and_then(|p| p.capabilities().clone())
            .expect("capabilities");
        let bounding = caps.bounding().clone().expect("bounding");
        assert_eq!(bounding.len(), ALL_CAPABILITIES.len());
        assert!(bounding.contains(&Capability::SysAdmin));
        assert!(bounding.contains(&Capability::NetRaw));
        let linux = spec.linux().as_ref().expect("linux");
        assert!(linux.seccomp().is_none());
        assert_eq!(linux.masked_paths().as_deref(), Some(&[][..]));
        assert_eq!(linux.readonly_paths().as_deref(), Some(&[][..]));
        let res = linux.resources().as_ref().expect("resources");
        assert!(res.pids().is_none());
        let devices = res.devices().clone().expect("devices");
        assert!(devices.iter().all(|d| d.allow()));
        let nodes = linux.devices().clone().expect("device nodes");
        assert!(nodes
            .iter()
            .any(|d| d.path() == Path::new("/dev/fuse") && (d.major(), d.minor()) == (10, 229)));
        assert!(nodes
            .iter()
            .any(|d| d.path() == Path::new("/dev/loop7") && d.typ() == LinuxDeviceType::B));
        let mounts = spec.mounts().as_ref().expect("mounts");
        for dest in ["/sys", "/sys/fs/cgroup"] {
            let m = mounts
                .iter()
                .find(|m| m.destination() == Path::new(dest))
                .expect(dest);
            assert!(m.options().iter().flatten().any(|o| o == "rw"), "{dest}");
        }
    }

    #[test]
    fn capabilities_kiln_lacks_are_not_granted() {
        let mut s = step(Network::Host);
        s.security = Security::Insecure;
        let mut spec = build_spec(
            &s,
            &user(),
            Path::new("/state/hosts"),
            Path::new("/state/resolv.conf"),
        );
        // Every capability but CAP_SYS_RESOURCE (24) and CAP_SYS_MODULE (16).
        let mask: u64 = !((1 << 24) | (1 << 16));
        let removed = restrict_capabilities(&mut spec, mask);
        assert_eq!(removed, [Capability::SysModule, Capability::SysResource]);
        let caps = spec
            .process()
            .as_ref()
            .and_then(|p| p.capabilities().clone())
            .expect("capabilities");
        for set in [caps.bounding(), caps.effective(), caps.permitted()] {
            let set = set.clone().expect("set");
            assert_eq!(set.len(), ALL_CAPABILITIES.len() - 2);
            assert!(!set.contains(&Capability::SysResource));
        }
        assert!(restrict_capabilities(&mut spec, u64::MAX).is_empty());
    }

    #[test]
    fn env_gets_path_and_home_defaults_only_when_missing() {
        let spec = build(Network::Host);
        let env = spec.process().as_ref().and_then(|p| p.env().clone());
        assert_eq!(
            env,
            Some(vec![
                "FOO=bar".to_string(),
                DEFAULT_PATH.to_string(),
                "HOME=/home/app".into()
            ])
        );
        let kept = step_env(&["PATH=/x".into(), "HOME=/h".into()], "/home/app");
        assert_eq!(kept, vec!["PATH=/x".to_string(), "HOME=/h".into()]);
    }

    #[test]
    fn spec_serializes_with_oci_field_names() {
        let json = serde_json::to_value(build(Network::None)).expect("serialize");
        assert_eq!(json["root"]["path"], "rootfs");
        assert_eq!(json["linux"]["cgroupsPath"], "/kiln/kiln-abc");
        assert_eq!(json["process"]["user"]["additionalGids"][1], 20);
        assert_eq!(json["linux"]["namespaces"][4]["type"], "network");
        assert_eq!(json["linux"]["resources"]["devices"][0]["access"], "rwm");
        assert!(json["process"]["capabilities"]["bounding"]
            .as_array()
            .expect("bounding")
            .contains(&serde_json::json!("CAP_SYS_CHROOT")));
    }

    #[test]
    fn extra_hosts_and_ulimits_reach_the_spec() {
        let extra = [HostIp::parse("db=10.0.0.1").expect("valid")];
        assert!(hosts_content("h", &extra).ends_with("ip6-loopback\n10.0.0.1\tdb\n"));
        assert!(rlimits(&[]).is_empty());
        let given = rlimits(&[
            Ulimit::parse("nproc=5:6").expect("valid"),
            Ulimit::parse("core=-1").expect("valid"),
        ]);
        assert_eq!(given.len(), 2);
        assert_eq!(given[0].typ(), PosixRlimitType::RlimitNproc);
        assert_eq!((given[0].soft(), given[0].hard()), (5, 6));
        assert_eq!(given[1].soft(), u64::MAX);
    }

    #[test]
    fn hosts_and_resolv_contents() {
        assert_eq!(
            hosts_content(DEFAULT_HOSTNAME, &[]),
            "127.0.0.1\tlocalhost buildkitsandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n"
        );
        assert_eq!(
            resolv_content(Some("nameserver 1.1.1.1\n")),
            "nameserver 1.1.1.1\n"
        );
        assert!(resolv_content(None).starts_with("nameserver 8.8.8.8\n"));
    }
}
