//! Whether this machine can run a step of another architecture: the
//! kernel's binfmt_misc handlers (QEMU user emulation, as Debian's
//! `qemu-user-static` registers them) run a foreign ELF binary
//! transparently, so a step needs nothing from the shim but a handler
//! that works inside a container (the `F` flag: the interpreter was
//! opened when it was registered, so the container's root need not hold
//! it).
//!
//! A handler is found by what it matches, not by its name: the ELF header
//! of a static executable of the architecture, tested against each
//! enabled entry's magic and mask, as the kernel does.

use std::path::Path;

/// Where the kernel lists its binfmt_misc handlers.
pub const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";

/// How a step of one architecture runs here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Support {
    /// The CPU runs it.
    Native,
    /// An enabled binfmt_misc handler (its name) runs it, from inside a
    /// container too.
    Emulated { handler: String },
    /// A handler matches but lacks the `F` flag: its interpreter path is
    /// looked up inside the step's root, where it is not.
    NotFixed { handler: String },
    /// Nothing runs it.
    Missing,
}

/// The ELF `e_machine`, class (64-bit) and byte order (little endian)
/// of an OCI architecture (Linux only); `None` for one kiln does not know.
fn elf_machine(arch: &str) -> Option<(u16, bool, bool)> {
    Some(match arch {
        "amd64" => (62, true, true),
        "386" => (3, false, true),
        "arm64" => (183, true, true),
        "arm" => (40, false, true),
        "ppc64le" => (21, true, true),
        "ppc64" => (21, true, false),
        "s390x" => (22, true, false),
        "riscv64" => (243, true, true),
        "mips64le" => (8, true, true),
        "mips64" => (8, true, false),
        "mipsle" => (8, false, true),
        "mips" => (8, false, false),
        "loong64" => (258, true, true),
        _ => return None,
    })
}

/// The first 20 bytes of a static executable for `arch`.
fn elf_header(arch: &str) -> Option<[u8; 20]> {
    let (machine, wide, little) = elf_machine(arch)?;
    let mut h = [0u8; 20];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = if wide { 2 } else { 1 };
    h[5] = if little { 1 } else { 2 };
    h[6] = 1;
    let (t, m) = if little {
        (2u16.to_le_bytes(), machine.to_le_bytes())
    } else {
        (2u16.to_be_bytes(), machine.to_be_bytes())
    };
    h[16..18].copy_from_slice(&t);
    h[18..20].copy_from_slice(&m);
    Some(h)
}

/// Architectures a CPU of `host` also runs natively.
fn native(host: &str, arch: &str) -> bool {
    host == arch || matches!((host, arch), ("amd64", "386"))
}

/// One handler as `/proc/sys/fs/binfmt_misc/<name>` describes it.
#[derive(Debug, Default)]
struct Entry {
    enabled: bool,
    flags: String,
    offset: usize,
    magic: Vec<u8>,
    mask: Vec<u8>,
}

fn parse_entry(text: &str) -> Option<Entry> {
    let mut e = Entry::default();
    let mut has_magic = false;
    for line in text.lines() {
        let line = line.trim();
        if line == "enabled" {
            e.enabled = true;
        } else if let Some(f) = line.strip_prefix("flags:") {
            e.flags = f.trim().to_string();
        } else if let Some(o) = line.strip_prefix("offset ") {
            e.offset = o.trim().parse().ok()?;
        } else if let Some(m) = line.strip_prefix("magic ") {
            e.magic = hex_bytes(m.trim())?;
            has_magic = true;
        } else if let Some(m) = line.strip_prefix("mask ") {
            e.mask = hex_bytes(m.trim())?;
        }
    }
    has_magic.then_some(e)
}

fn hex_bytes(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Entry {
    fn matches(&self, header: &[u8]) -> bool {
        if self.magic.is_empty() || self.offset + self.magic.len() > header.len() {
            return false;
        }
        self.magic.iter().enumerate().all(|(i, m)| {
            let mask = self.mask.get(i).copied().unwrap_or(0xff);
            header[self.offset + i] & mask == m & mask
        })
    }
}

/// The enabled-or-not handlers of one binfmt_misc directory, read once
/// (each is a file the kernel formats on every read), in name order.
#[derive(Debug, Default)]
struct Handlers(Vec<(String, Entry)>);

impl Handlers {
    /// The handlers in `dir`; none when it cannot be read.
    fn read(dir: &Path) -> Handlers {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Handlers::default();
        };
        let mut names: Vec<String> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != "register" && n != "status")
            .collect();
        names.sort();
        Handlers(
            names
                .into_iter()
                .filter_map(|name| {
                    let text = std::fs::read_to_string(dir.join(&name)).ok()?;
                    parse_entry(&text).map(|e| (name, e))
                })
                .collect(),
        )
    }

    /// How a step for `os/arch` runs on a `host_arch` machine with these
    /// handlers: the first enabled `F` handler matching the
    /// architecture's ELF header, else the first enabled one without `F`.
    fn support(&self, host_arch: &str, os: &str, arch: &str) -> Support {
        if os != "linux" {
            return Support::Missing;
        }
        if native(host_arch, arch) {
            return Support::Native;
        }
        let Some(header) = elf_header(arch) else {
            return Support::Missing;
        };
        let mut not_fixed = None;
        for (name, e) in &self.0 {
            if !e.enabled || !e.matches(&header) {
                continue;
            }
            if e.flags.contains('F') {
                return Support::Emulated {
                    handler: name.clone(),
                };
            }
            not_fixed.get_or_insert(name);
        }
        match not_fixed {
            Some(handler) => Support::NotFixed {
                handler: handler.clone(),
            },
            None => Support::Missing,
        }
    }
}

/// How a step for `os/arch` runs on a `host_arch` machine, reading the
/// handlers in `dir` (normally [`BINFMT_DIR`]).
pub fn support_in(dir: &Path, host_arch: &str, os: &str, arch: &str) -> Support {
    // Neither a foreign OS nor the CPU's own architectures read anything.
    if os != "linux" || native(host_arch, arch) {
        return Handlers::default().support(host_arch, os, arch);
    }
    Handlers::read(dir).support(host_arch, os, arch)
}

/// This machine's handlers, or none when binfmt_misc as a whole is
/// switched off.
fn machine_handlers() -> Handlers {
    let on = std::fs::read_to_string(Path::new(BINFMT_DIR).join("status"))
        .map(|s| s.trim() == "enabled")
        .unwrap_or(false);
    if on {
        Handlers::read(Path::new(BINFMT_DIR))
    } else {
        Handlers::default()
    }
}

/// [`support_in`] on this machine's handlers.
pub fn support(host_arch: &str, os: &str, arch: &str) -> Support {
    if os != "linux" || native(host_arch, arch) {
        return Handlers::default().support(host_arch, os, arch);
    }
    machine_handlers().support(host_arch, os, arch)
}

/// The Linux architectures (OCI names) this machine runs, natively or
/// under emulation, the host's first; what a worker advertises. The
/// handlers are read once for all of them.
pub fn runnable(host_arch: &str) -> Vec<&'static str> {
    const ALL: &[&str] = &[
        "amd64", "arm64", "386", "arm", "ppc64le", "s390x", "riscv64", "mips64le", "mips64",
        "loong64", "ppc64", "mipsle", "mips",
    ];
    let handlers = machine_handlers();
    let mut out: Vec<&'static str> = ALL.iter().copied().filter(|a| *a == host_arch).collect();
    for a in ALL {
        if *a != host_arch
            && matches!(
                handlers.support(host_arch, "linux", a),
                Support::Native | Support::Emulated { .. }
            )
        {
            out.push(a);
        }
    }
    out
}

/// The QEMU name Debian's `qemu-user-static` registers a handler of
/// `arch` under (`qemu-<name>`).
pub fn qemu_name(arch: &str) -> &str {
    match arch {
        "arm64" => "aarch64",
        "386" => "i386",
        "amd64" => "x86_64",
        "mips64le" => "mips64el",
        "mipsle" => "mipsel",
        "loong64" => "loongarch64",
        a => a,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Debian's qemu-aarch64 handler as the kernel lists it.
    const AARCH64: &str = "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POF\noffset 0\nmagic 7f454c460201010000000000000000000200b700\nmask ffffffffffffff00fffffffffffffffffeffffff\n";

    fn dir_with(entries: &[(&str, &str)]) -> std::path::PathBuf {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("kiln-binfmt-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("dir");
        std::fs::write(d.join("status"), "enabled\n").expect("status");
        for (n, t) in entries {
            std::fs::write(d.join(n), t).expect("entry");
        }
        d
    }

    #[test]
    fn a_handler_is_found_by_what_it_matches() {
        let d = dir_with(&[("whatever-name", AARCH64)]);
        assert_eq!(
            support_in(&d, "amd64", "linux", "arm64"),
            Support::Emulated {
                handler: "whatever-name".into()
            }
        );
        assert_eq!(support_in(&d, "amd64", "linux", "arm"), Support::Missing);
        assert_eq!(support_in(&d, "amd64", "linux", "amd64"), Support::Native);
        assert_eq!(support_in(&d, "amd64", "linux", "386"), Support::Native);
        assert_eq!(
            support_in(&d, "amd64", "windows", "arm64"),
            Support::Missing
        );
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn disabled_or_unfixed_handlers_do_not_run_steps() {
        let d = dir_with(&[("qemu-aarch64", &AARCH64.replace("enabled\n", "disabled\n"))]);
        assert_eq!(support_in(&d, "amd64", "linux", "arm64"), Support::Missing);
        let d2 = dir_with(&[
            ("a", "enabled\nflags: \noffset 0\nmagic 7f454c46\n"),
            ("qemu-aarch64", &AARCH64.replace("flags: POF", "flags: OC")),
        ]);
        // The first entry has no arch in its magic: it matches any ELF, but
        // it is not fixed either.
        assert_eq!(
            support_in(&d2, "amd64", "linux", "arm64"),
            Support::NotFixed {
                handler: "a".into()
            }
        );
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::remove_dir_all(&d2);
    }

    #[test]
    fn headers_follow_the_elf_layout() {
        let h = elf_header("arm64").expect("known");
        assert_eq!(
            hex_bytes("7f454c460201010000000000000000000200b700").expect("hex"),
            h.to_vec()
        );
        let s = elf_header("s390x").expect("known");
        assert_eq!(&s[4..6], &[2, 2]);
        assert_eq!(&s[18..20], &[0, 22]);
        assert!(elf_header("sparc").is_none());
    }
}
