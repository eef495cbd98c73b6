//! Resolving `USER` strings (`name`, `uid`, `name:group`, `uid:gid`) against
//! the `/etc/passwd` and `/etc/group` of a mounted root filesystem, the way
//! BuildKit's executor does before it starts a step.

use std::path::Path;

/// A user resolved to numeric ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups from `/etc/group` membership.
    pub additional_gids: Vec<u32>,
    /// Home directory from `/etc/passwd`, `/` when unknown.
    pub home: String,
}

/// Errors of user resolution.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The name is not in the rootfs' `/etc/passwd`.
    #[error("unable to find user {name}: no matching entries in passwd file")]
    UnknownUser { name: String },
    /// The name is not in the rootfs' `/etc/group`.
    #[error("unable to find group {name}: no matching entries in group file")]
    UnknownGroup { name: String },
    /// A numeric uid or gid outside 0..=2147483647 (moby/sys/user's
    /// `ErrRange`, which BuildKit's executor reports).
    #[error("uids and gids must be in range 0-2147483647")]
    Range,
}

/// moby/sys/user's `parseNumeric`: a value Go's `Atoi` reads (an optional
/// sign and digits) is an id, which must be in 0..=2147483647; anything
/// else is a name (`None`).
fn numeric_in_range(val: &str) -> Result<Option<u32>, UserError> {
    let digits = val.strip_prefix(['+', '-']).unwrap_or(val);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(None);
    }
    match val.parse::<i64>() {
        Ok(id) if (0..=2_147_483_647).contains(&id) => Ok(u32::try_from(id).ok()),
        _ => Err(UserError::Range),
    }
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// The most of `/etc/passwd` or `/etc/group` that is read.
const MAX_DB_FILE: u64 = 16 << 20;

/// Reads a file inside `rootfs`, following symlinks as the container would
/// (never out of it); a missing, unreadable or non-regular file reads as
/// empty, as in BuildKit.
fn read_in_root(rootfs: &Path, rel: &str) -> String {
    let Ok(root) = crate::rootfs::RootDir::open(rootfs) else {
        return String::new();
    };
    match root.read_file(rel, MAX_DB_FILE) {
        Ok(Some(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        _ => String::new(),
    }
}

fn passwd(rootfs: &Path) -> Vec<PasswdEntry> {
    read_in_root(rootfs, "etc/passwd")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 4 || l.starts_with('#') {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f.get(5).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect()
}

fn groups(rootfs: &Path) -> Vec<GroupEntry> {
    read_in_root(rootfs, "etc/group")
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            if f.len() < 3 || l.starts_with('#') {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect()
}

/// Looks up a user name or numeric uid; returns (uid, primary gid).
pub fn lookup_user(rootfs: &Path, user: &str) -> Result<(u32, u32), UserError> {
    let entries = passwd(rootfs);
    if let Ok(uid) = user.parse::<u32>() {
        let gid = entries
            .iter()
            .find(|e| e.uid == uid)
            .map(|e| e.gid)
            .unwrap_or(0);
        return Ok((uid, gid));
    }
    entries
        .iter()
        .find(|e| e.name == user)
        .map(|e| (e.uid, e.gid))
        .ok_or_else(|| UserError::UnknownUser {
            name: user.to_string(),
        })
}

/// Looks up a group name or numeric gid.
pub fn lookup_group(rootfs: &Path, group: &str) -> Result<u32, UserError> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    groups(rootfs)
        .iter()
        .find(|e| e.name == group)
        .map(|e| e.gid)
        .ok_or_else(|| UserError::UnknownGroup {
            name: group.to_string(),
        })
}

/// A uid or gid of a `uid:gid` pair: a number, or `root`.
fn numeric_id(s: &str) -> Option<u32> {
    if s == "root" {
        Some(0)
    } else {
        s.parse().ok()
    }
}

/// Resolves a `USER` value as BuildKit's executor does (runc's
/// `GetExecUser`, then containerd's rule that the primary gid is one of the
/// supplementary groups):
/// - empty means root, and a root missing from `/etc/passwd` is uid 0, gid 0;
/// - `uid:gid` (numbers or `root`) is taken as is, without reading a file;
/// - a user found by name or uid takes its passwd gid and, without an
///   explicit group, every `/etc/group` entry listing its name (in file
///   order); a numeric uid not in passwd has gid 0 and no groups;
/// - `user:group` takes only that group.
///
/// `additional_gids` always starts with the primary gid unless the groups
/// already hold it, so `id` prints the same `groups=` as under BuildKit.
pub fn resolve_user(rootfs: &Path, spec: &str) -> Result<ResolvedUser, UserError> {
    let is_default = spec.is_empty();
    let spec = if is_default { "0" } else { spec };
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entries = passwd(rootfs);
    let home_of = |uid: u32| {
        entries
            .iter()
            .find(|e| e.uid == uid)
            .map(|e| e.home.clone())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "/".to_string())
    };
    let with_primary = |uid: u32, gid: u32, mut groups: Vec<u32>| {
        if !groups.contains(&gid) {
            groups.insert(0, gid);
        }
        ResolvedUser {
            uid,
            gid,
            additional_gids: groups,
            home: home_of(uid),
        }
    };
    // BuildKit's fast path (`ParseUIDGID`): `uid:gid` as 32-bit numbers,
    // no range check.
    if let (Some(u), Some(g)) = (numeric_id(user), group.and_then(numeric_id)) {
        return Ok(with_primary(u, g, Vec::new()));
    }
    // Then moby/sys/user's: a number (Go's Atoi) must be in range.
    let numeric_user = numeric_in_range(user)?;
    if let Some(g) = group {
        numeric_in_range(g)?;
    }
    let found = entries.iter().find(|e| match numeric_user {
        Some(uid) => e.uid == uid,
        None => e.name == user,
    });
    let (uid, mut gid, matched) = match (found, numeric_user) {
        (Some(e), _) => (e.uid, e.gid, Some(e.name.as_str())),
        (None, Some(uid)) => (uid, 0, None),
        (None, None) if is_default => return Ok(with_primary(0, 0, Vec::new())),
        (None, None) => {
            return Err(UserError::UnknownUser {
                name: user.to_string(),
            })
        }
    };
    let mut extra = Vec::new();
    match group.filter(|g| !g.is_empty()) {
        Some(g) => gid = lookup_group(rootfs, g)?,
        None => {
            if let Some(name) = matched {
                extra = groups(rootfs)
                    .iter()
                    .filter(|g| g.members.iter().any(|m| m == name))
                    .map(|g| g.gid)
                    .collect();
            }
        }
    }
    Ok(with_primary(uid, gid, extra))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("etc")).expect("mkdir");
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nbob:x:1001:1001::/b:/bin/sh\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\napp:x:1000:app\nwheel:x:10:app,root,bob\n",
        )
        .expect("write");
        dir
    }

    #[test]
    fn resolves_names_ids_and_groups() {
        let r = rootfs();
        let u = resolve_user(r.path(), "app").expect("app");
        assert_eq!(
            (u.uid, u.gid, u.additional_gids.clone()),
            (1000, 1000, vec![1000, 10])
        );
        assert_eq!(u.home, "/home/app");
        // By uid, the passwd entry's name finds the same groups.
        let u = resolve_user(r.path(), "1000").expect("uid");
        assert_eq!((u.gid, u.additional_gids.clone()), (1000, vec![1000, 10]));
        let u = resolve_user(r.path(), "app:wheel").expect("app:wheel");
        assert_eq!(
            (u.uid, u.gid, u.additional_gids.clone()),
            (1000, 10, vec![10])
        );
        let u = resolve_user(r.path(), "4242:4243").expect("numeric");
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 4243, "/"));
        assert_eq!(u.additional_gids, [4243]);
        // A uid not in passwd: gid 0, no groups.
        let u = resolve_user(r.path(), "4242").expect("unknown uid");
        assert_eq!(
            (u.uid, u.gid, u.additional_gids.clone()),
            (4242, 0, vec![0])
        );
        // The primary gid goes first when no group entry lists it.
        let u = resolve_user(r.path(), "bob").expect("bob");
        assert_eq!((u.gid, u.additional_gids.clone()), (1001, vec![1001, 10]));
        let u = resolve_user(r.path(), "").expect("root");
        assert_eq!(
            (u.uid, u.gid, u.additional_gids.clone()),
            (0, 0, vec![0, 10])
        );
        // Without a passwd file the default user is still root.
        let empty = tempfile::tempdir().expect("tempdir");
        let u = resolve_user(empty.path(), "").expect("root without passwd");
        assert_eq!((u.uid, u.gid, u.additional_gids.clone()), (0, 0, vec![0]));
        let u = resolve_user(r.path(), "root:1000").expect("root:gid");
        assert_eq!((u.uid, u.gid), (0, 1000));
    }

    #[test]
    fn unknown_names_are_errors() {
        let r = rootfs();
        let e = resolve_user(r.path(), "nobody").expect_err("unknown");
        assert_eq!(
            e.to_string(),
            "unable to find user nobody: no matching entries in passwd file"
        );
        assert!(resolve_user(r.path(), "app:nogroup").is_err());
    }

    /// Numeric ids past 2147483647 or below 0 fail with BuildKit's text
    /// (moby/sys/user's range), not as an unknown name or a runtime error.
    #[test]
    fn ids_out_of_range_are_refused_with_buildkits_text() {
        let r = rootfs();
        for spec in [
            "4294967296",
            "4294967295",
            "-1",
            "2147483648",
            "app:-5",
            "1:99999999999999999999",
        ] {
            let e = resolve_user(r.path(), spec).expect_err(spec);
            assert_eq!(
                e.to_string(),
                "uids and gids must be in range 0-2147483647",
                "{spec}"
            );
        }
        let u = resolve_user(r.path(), "2147483647").expect("the largest id");
        assert_eq!(u.uid, 2_147_483_647);
        // `uid:gid` as 32-bit numbers needs no range (BuildKit's fast path).
        let u = resolve_user(r.path(), "3000000000:3000000000").expect("fast path");
        assert_eq!((u.uid, u.gid), (3_000_000_000, 3_000_000_000));
        // Go's Atoi reads "-0" as 0: root.
        let u = resolve_user(r.path(), "-0").expect("-0");
        assert_eq!(u.uid, 0);
    }

    /// An image whose `/etc` is an absolute link must not make kiln read
    /// the host's `/etc/passwd` (or whatever the link names on the host).
    #[test]
    fn passwd_is_read_inside_the_rootfs_only() {
        let host = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            host.path().join("passwd"),
            "hostonly:x:4711:4711::/h:/bin/sh\n",
        )
        .expect("write");
        let dir = tempfile::tempdir().expect("tempdir");
        std::os::unix::fs::symlink(host.path(), dir.path().join("etc")).expect("symlink");
        let e = resolve_user(dir.path(), "hostonly").expect_err("a host user");
        assert!(matches!(e, UserError::UnknownUser { .. }), "{e}");
        // The link is followed inside the rootfs, as the container sees it.
        let inside = dir
            .path()
            .join(host.path().strip_prefix("/").expect("absolute"));
        std::fs::create_dir_all(&inside).expect("mkdir");
        std::fs::write(inside.join("passwd"), "img:x:7:7::/i:/bin/sh\n").expect("write");
        let u = resolve_user(dir.path(), "img").expect("the image's user");
        assert_eq!((u.uid, u.gid), (7, 7));
    }
}
