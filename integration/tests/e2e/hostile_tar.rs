//! A hostile build context given as a tar on stdin (`kiln build -`), as
//! docker and buildx take one: entries named with `..` or an absolute
//! path, writes through a symlink the tar made, hard links out of the
//! context, names longer than the file system takes. Each must fail with
//! an error naming the entry (or, where docker unpacks it inside the
//! context, build), write nothing outside the context, and leave nothing
//! behind: no unpacked directory, lease, snapshot or mount.

use kiln_integration::Harness;
use std::io::Write;
use std::path::Path;
use std::process::Stdio;

/// One raw tar entry: name, type flag, link name, content.
struct Entry<'a>(&'a str, u8, &'a str, &'a [u8]);

/// A tar written header by header, so names a careful writer refuses
/// (`..`, absolute) go in as they are; a name longer than 100 bytes gets
/// GNU's long-name entry first.
fn tar(entries: &[Entry]) -> Vec<u8> {
    fn header(name: &[u8], kind: u8, link: &[u8], size: usize) -> [u8; 512] {
        let mut h = [0u8; 512];
        h[..name.len().min(100)].copy_from_slice(&name[..name.len().min(100)]);
        let octal = |h: &mut [u8; 512], at: usize, width: usize, v: u64| {
            let s = format!("{v:0w$o}\0", w = width - 1);
            h[at..at + width].copy_from_slice(s.as_bytes());
        };
        let mode = if kind == b'5' { 0o755 } else { 0o644 };
        octal(&mut h, 100, 8, mode);
        octal(&mut h, 108, 8, 0);
        octal(&mut h, 116, 8, 0);
        octal(&mut h, 124, 12, size as u64);
        octal(&mut h, 136, 12, 1_700_000_000);
        h[156] = kind;
        h[157..157 + link.len()].copy_from_slice(link);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        octal(&mut h, 148, 7, u64::from(sum));
        h[155] = b' ';
        h
    }
    fn push(out: &mut Vec<u8>, h: [u8; 512], data: &[u8]) {
        out.extend_from_slice(&h);
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    let mut out = Vec::new();
    for Entry(name, kind, link, data) in entries {
        if name.len() > 100 {
            let mut long = name.as_bytes().to_vec();
            long.push(0);
            push(
                &mut out,
                header(b"././@LongLink", b'L', b"", long.len()),
                &long,
            );
        }
        push(
            &mut out,
            header(name.as_bytes(), *kind, link.as_bytes(), data.len()),
            data,
        );
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}

const DOCKERFILE: &[u8] = b"FROM busybox\nCOPY . /ctx\nRUN ls -la /ctx\n";

fn dockerfile() -> Entry<'static> {
    Entry("Dockerfile", b'0', "", DOCKERFILE)
}

/// Runs `kiln build -` with `input` on stdin; its exit success and stderr.
fn build_stdin(h: &Harness, ns: &str, tmp: &Path, input: &[u8]) -> (bool, String) {
    let mut child = h
        .kiln_command(ns)
        .expect("kiln")
        .args(["build", "--progress", "plain", "-"])
        // The unpacked context goes to a temporary directory: this test's
        // own, so what is left there is seen.
        .env("TMPDIR", tmp)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kiln starts");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input).expect("write the tar");
    drop(stdin);
    let out = child.wait_with_output().expect("kiln runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn hostile_context_tars_fail_clearly_and_write_nothing_outside() {
    let ns = "hostile-tar";
    let h = Harness::with_busybox(ns).await;
    let tmp = h.state_dir().join("tmp");
    std::fs::create_dir_all(&tmp).expect("tmp");
    let canary = h.state_dir().join("canary");
    std::fs::create_dir_all(&canary).expect("canary");
    let canary_s = canary.display().to_string();
    let outside = h.state_dir().join("outside-tar");
    let outside_s = outside.display().to_string();
    let dotdot = format!("../../{}", outside_s.trim_start_matches('/'));
    let long = "n".repeat(300);
    // (name, entries, Some(error text) or None for a build docker would
    // also make, with the file inside the context)
    let cases: Vec<(&str, Vec<Entry>, Option<String>)> = vec![
        (
            "dotdot entry",
            vec![
                dockerfile(),
                Entry("../../../../x-dotdot", b'0', "", b"evil"),
            ],
            Some("entry ../../../../x-dotdot is outside the context".into()),
        ),
        (
            "dotdot entry to a real place",
            vec![dockerfile(), Entry(&dotdot, b'0', "", b"evil")],
            Some(format!("entry {dotdot} is outside the context")),
        ),
        (
            "absolute entry lands inside",
            vec![dockerfile(), Entry(&outside_s, b'0', "", b"inside")],
            None,
        ),
        (
            "write through a symlink it made",
            vec![
                dockerfile(),
                Entry("evil", b'2', &canary_s, b""),
                Entry("evil/planted", b'0', "", b"evil"),
            ],
            Some("entry evil/planted: ".into()),
        ),
        (
            "hard link out of the context",
            vec![
                dockerfile(),
                Entry("h", b'1', "../../../../etc/passwd", b""),
            ],
            Some("entry h is a hard link to ../../../../etc/passwd, outside the context".into()),
        ),
        (
            "name longer than the file system takes",
            vec![dockerfile(), Entry(&long, b'0', "", b"x")],
            Some(format!("entry {long}: ")),
        ),
    ];
    let mut failures = Vec::new();
    for (name, entries, want) in cases {
        let (ok, stderr) = build_stdin(&h, ns, &tmp, &tar(&entries));
        let last = stderr.lines().last().unwrap_or_default().to_string();
        match (&want, ok) {
            (None, false) => failures.push(format!("{name}: failed: {last}")),
            (Some(w), true) => failures.push(format!("{name}: built, want {w:?}")),
            (Some(w), false) if !last.contains(w.as_str()) => {
                failures.push(format!("{name}: {last:?}, want {w:?}"))
            }
            _ => eprintln!("{name}: {last}"),
        }
        assert!(!outside.exists(), "{name} wrote {outside_s}");
        assert!(!Path::new("/x-dotdot").exists(), "{name} wrote /x-dotdot");
        assert!(
            std::fs::read_dir(&canary).expect("canary").next().is_none(),
            "{name} wrote into the canary"
        );
        let left: Vec<_> = std::fs::read_dir(&tmp)
            .expect("tmp")
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "{name} left {left:?}");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    let left = h
        .all_leftovers(ns, &h.state_dir().join("kiln-root"))
        .expect("leftovers");
    assert!(left.is_empty(), "{left:?}");
}
