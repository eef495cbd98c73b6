//! A probe run inside build steps by the sandbox tests: each command tries
//! one thing a sandboxed step must not be able to do (or, as a control,
//! one it may), and prints `probe <name>: ok` or `probe <name>: errno <n>`,
//! so a test can tell a refusal from a missing program or a typo.
//!
//! Commands: `keyctl`, `add-key`, `raw-socket`, `udp-socket`,
//! `unshare-user`, `euid`.

use std::process::ExitCode;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn report(name: &str, ret: libc::c_long) -> ExitCode {
    if ret < 0 {
        let e = errno();
        println!(
            "probe {name}: errno {e} ({})",
            std::io::Error::from_raw_os_error(e)
        );
        ExitCode::FAILURE
    } else {
        println!("probe {name}: ok");
        ExitCode::SUCCESS
    }
}

fn main() -> ExitCode {
    let Some(cmd) = std::env::args().nth(1) else {
        eprintln!("usage: kiln-probe keyctl|add-key|raw-socket|udp-socket|unshare-user|euid");
        return ExitCode::from(2);
    };
    match cmd.as_str() {
        "keyctl" => {
            // KEYCTL_GET_KEYRING_ID (0) of the session keyring (-3), creating it.
            // SAFETY: plain integer arguments; no memory is passed.
            let r = unsafe { libc::syscall(libc::SYS_keyctl, 0, -3, 1) };
            report("keyctl", r)
        }
        "add-key" => {
            let (typ, desc, data) = (c"user", c"kiln-probe", b"x");
            // SAFETY: NUL-terminated strings and a buffer with its length,
            // all alive for the call; -3 is the session keyring.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_add_key,
                    typ.as_ptr(),
                    desc.as_ptr(),
                    data.as_ptr(),
                    data.len(),
                    -3,
                )
            };
            report("add-key", r)
        }
        "raw-socket" | "udp-socket" => {
            let (typ, proto) = if cmd == "raw-socket" {
                (libc::SOCK_RAW, libc::IPPROTO_ICMP)
            } else {
                (libc::SOCK_DGRAM, libc::IPPROTO_UDP)
            };
            // SAFETY: socket(2) takes integers and returns an fd or -1.
            let fd = unsafe { libc::socket(libc::AF_INET, typ, proto) };
            if fd >= 0 {
                // SAFETY: fd was just returned by socket(2) and is owned here.
                unsafe { libc::close(fd) };
            }
            report(&cmd, fd.into())
        }
        "unshare-user" => {
            // SAFETY: unshare(2) takes flags only.
            let r = unsafe { libc::unshare(libc::CLONE_NEWUSER) };
            report("unshare-user", r.into())
        }
        "euid" => {
            // SAFETY: geteuid(2) cannot fail.
            println!("probe euid: {}", unsafe { libc::geteuid() });
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("kiln-probe: unknown command {other}");
            ExitCode::from(2)
        }
    }
}
