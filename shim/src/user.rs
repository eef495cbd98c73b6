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

/// Resolves a `USER` value. Empty means root. With an explicit group no
/// supplementary groups are added, as in BuildKit/runc.
pub fn resolve_user(rootfs: &Path, spec: &str) -> Result<ResolvedUser, UserError> {
    let spec = if spec.is_empty() { "0" } else { spec };
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let (uid, primary) = lookup_user(rootfs, user)?;
    let entries = passwd(rootfs);
    let entry = entries.iter().find(|e| e.uid == uid);
    let home = entry
        .map(|e| e.home.clone())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "/".to_string());
    let (gid, additional_gids) = match group {
        Some(g) => (lookup_group(rootfs, g)?, Vec::new()),
        None => {
            let name = entry.map(|e| e.name.as_str()).unwrap_or(user);
            let extra = groups(rootfs)
                .iter()
                .filter(|g| g.members.iter().any(|m| m == name) && g.gid != primary)
                .map(|g| g.gid)
                .collect();
            (primary, extra)
        }
    };
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("etc")).expect("mkdir");
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n",
        )
        .expect("write");
        std::fs::write(
            dir.path().join("etc/group"),
            "root:x:0:\napp:x:1000:\nwheel:x:10:app\n",
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
            (1000, 1000, vec![10])
        );
        assert_eq!(u.home, "/home/app");
        let u = resolve_user(r.path(), "app:wheel").expect("app:wheel");
        assert_eq!((u.uid, u.gid), (1000, 10));
        let u = resolve_user(r.path(), "4242:4243").expect("numeric");
        assert_eq!((u.uid, u.gid, u.home.as_str()), (4242, 4243, "/"));
        let u = resolve_user(r.path(), "").expect("root");
        assert_eq!((u.uid, u.gid), (0, 0));
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
