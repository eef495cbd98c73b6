//! The default seccomp profile of a sandboxed step.
//!
//! The policy lives in `shim/data/seccomp.toml` (Docker's and containerd's
//! default profile written in kiln's own format, see the file's header);
//! this module turns it into the OCI `linux.seccomp` of one step, keeping
//! the rules whose conditions (host architecture, the step's
//! capabilities) hold, as moby does when it loads its profile.

use oci_spec::runtime::{
    Arch, Capability, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder,
    LinuxSeccompOperator, LinuxSyscall,
};
use std::collections::BTreeMap;
use std::sync::LazyLock;

/// The profile file, embedded.
const PROFILE_TOML: &str = include_str!("../data/seccomp.toml");

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Profile {
    default_errno: u32,
    arches: BTreeMap<String, Vec<Arch>>,
    rule: Vec<Rule>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    names: Vec<String>,
    #[serde(default)]
    action: Action,
    errno: Option<u32>,
    #[serde(default)]
    arch: Vec<String>,
    #[serde(default)]
    caps: Vec<Capability>,
    #[serde(default)]
    without_caps: Vec<Capability>,
    #[serde(default)]
    args: Vec<Arg>,
    #[serde(default, rename = "why")]
    _why: Option<String>,
}

#[derive(Debug, Default, Clone, Copy, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum Action {
    #[default]
    Allow,
    Errno,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Arg {
    index: usize,
    op: Op,
    value: u64,
    #[serde(default)]
    value_two: u64,
}

#[derive(Debug, Clone, Copy, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    MaskedEq,
}

impl From<Op> for LinuxSeccompOperator {
    fn from(op: Op) -> Self {
        match op {
            Op::Eq => LinuxSeccompOperator::ScmpCmpEq,
            Op::Ne => LinuxSeccompOperator::ScmpCmpNe,
            Op::Lt => LinuxSeccompOperator::ScmpCmpLt,
            Op::Le => LinuxSeccompOperator::ScmpCmpLe,
            Op::Gt => LinuxSeccompOperator::ScmpCmpGt,
            Op::Ge => LinuxSeccompOperator::ScmpCmpGe,
            Op::MaskedEq => LinuxSeccompOperator::ScmpCmpMaskedEq,
        }
    }
}

fn parse(text: &str) -> Result<Profile, toml::de::Error> {
    toml::from_str(text)
}

static PROFILE: LazyLock<Profile> = LazyLock::new(|| {
    parse(PROFILE_TOML).expect("the embedded seccomp profile is valid (checked by a unit test)")
});

/// The default profile for a step with capabilities `caps` on the host
/// architecture `arch` (Rust's name, `std::env::consts::ARCH`). On an
/// architecture the profile does not list, only the native ABI is allowed.
pub fn default_profile(caps: &[Capability], arch: &str) -> LinuxSeccomp {
    build(&PROFILE, caps, arch)
}

fn build(p: &Profile, caps: &[Capability], arch: &str) -> LinuxSeccomp {
    let mut syscalls = Vec::new();
    for r in &p.rule {
        if !r.arch.is_empty() && !r.arch.iter().any(|a| a == arch) {
            continue;
        }
        if !r.caps.iter().all(|c| caps.contains(c)) {
            continue;
        }
        if r.without_caps.iter().any(|c| caps.contains(c)) {
            continue;
        }
        let mut s = LinuxSyscall::default();
        s.set_names(r.names.clone());
        match r.action {
            Action::Allow => {
                s.set_action(LinuxSeccompAction::ScmpActAllow);
            }
            Action::Errno => {
                s.set_action(LinuxSeccompAction::ScmpActErrno);
                s.set_errno_ret(Some(r.errno.unwrap_or(p.default_errno)));
            }
        }
        if !r.args.is_empty() {
            let args = r
                .args
                .iter()
                .map(|a| {
                    LinuxSeccompArgBuilder::default()
                        .index(a.index)
                        .value(a.value)
                        .value_two(a.value_two)
                        .op(LinuxSeccompOperator::from(a.op))
                        .build()
                        .expect("a seccomp arg with every field set cannot fail to build")
                })
                .collect();
            s.set_args(Some(args));
        }
        syscalls.push(s);
    }
    let mut out = LinuxSeccomp::default();
    out.set_default_action(LinuxSeccompAction::ScmpActErrno);
    out.set_default_errno_ret(Some(p.default_errno));
    out.set_architectures(p.arches.get(arch).cloned());
    out.set_syscalls(Some(syscalls));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::DEFAULT_CAPABILITIES;

    /// The rules that would let `name` through, for a step with `caps`.
    fn rules_for(caps: &[Capability], arch: &str, name: &str) -> Vec<LinuxSyscall> {
        default_profile(caps, arch)
            .syscalls()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|s| s.names().iter().any(|n| n == name))
            .collect()
    }

    #[test]
    fn embedded_profile_parses_and_denies_by_default_with_eperm() {
        let p = parse(PROFILE_TOML).expect("profile parses");
        assert!(p.rule.len() > 20);
        let s = default_profile(&DEFAULT_CAPABILITIES, "x86_64");
        assert_eq!(s.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(s.default_errno_ret(), Some(libc::EPERM as u32));
        assert_eq!(
            s.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86, Arch::ScmpArchX32][..])
        );
        assert_eq!(
            default_profile(&DEFAULT_CAPABILITIES, "aarch64")
                .architectures()
                .as_deref(),
            Some(&[Arch::ScmpArchAarch64, Arch::ScmpArchArm][..])
        );
    }

    #[test]
    fn the_keyring_is_never_allowed() {
        let all: Vec<Capability> = crate::spec::ALL_CAPABILITIES.to_vec();
        for name in ["keyctl", "add_key", "request_key"] {
            assert!(rules_for(&all, "x86_64", name).is_empty(), "{name}");
        }
    }

    #[test]
    fn namespaces_need_cap_sys_admin() {
        let caps = DEFAULT_CAPABILITIES.to_vec();
        assert!(rules_for(&caps, "x86_64", "unshare").is_empty());
        assert!(rules_for(&caps, "x86_64", "setns").is_empty());
        assert!(rules_for(&caps, "x86_64", "mount").is_empty());
        let clone = rules_for(&caps, "x86_64", "clone");
        assert_eq!(clone.len(), 1);
        let args = clone[0].args().clone().expect("clone is conditional");
        assert_eq!(
            (
                args[0].index(),
                args[0].value(),
                args[0].value_two(),
                args[0].op()
            ),
            (
                0,
                0x7E02_0000,
                Some(0),
                LinuxSeccompOperator::ScmpCmpMaskedEq
            )
        );
        let clone3 = rules_for(&caps, "x86_64", "clone3");
        assert_eq!(clone3.len(), 1);
        assert_eq!(clone3[0].action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(clone3[0].errno_ret(), Some(libc::ENOSYS as u32));

        let mut admin = caps.clone();
        admin.push(Capability::SysAdmin);
        let unshare = rules_for(&admin, "x86_64", "unshare");
        assert_eq!(unshare.len(), 1);
        assert_eq!(unshare[0].args(), &None);
        assert!(rules_for(&admin, "x86_64", "clone")
            .iter()
            .any(|r| r.args().is_none()));
        assert!(rules_for(&admin, "x86_64", "clone3")
            .iter()
            .all(|r| r.action() == LinuxSeccompAction::ScmpActAllow));
    }

    #[test]
    fn arch_and_argument_rules() {
        let caps = DEFAULT_CAPABILITIES.to_vec();
        assert_eq!(rules_for(&caps, "x86_64", "arch_prctl").len(), 1);
        assert!(rules_for(&caps, "aarch64", "arch_prctl").is_empty());
        assert_eq!(rules_for(&caps, "aarch64", "set_tls").len(), 1);
        assert_eq!(rules_for(&caps, "x86_64", "personality").len(), 5);
        let socket = rules_for(&caps, "x86_64", "socket");
        let args = socket[0].args().clone().expect("socket is conditional");
        assert_eq!(
            (args[0].value(), args[0].op()),
            (40, LinuxSeccompOperator::ScmpCmpNe)
        );
        // chroot comes with CAP_SYS_CHROOT, which steps have.
        assert_eq!(rules_for(&caps, "x86_64", "chroot").len(), 1);
        assert!(rules_for(&caps, "x86_64", "reboot").is_empty());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = parse("default_errno = 1\n[arches]\n[[rule]]\nnames = []\nallow = true\n")
            .expect_err("unknown field");
        assert!(e.to_string().contains("allow"), "{e}");
    }
}
