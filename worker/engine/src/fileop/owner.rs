//! `--chown` resolution, as BuildKit's `readUser`
//! (solver/llbsolver/ops/user_linux.go), with the name lookups of
//! `kiln_shim::user`.

use kiln_shim::user::{lookup_group, lookup_user};
use kiln_solver::{ChownOpt, UserOpt};
use std::path::Path;

/// Resolves a chown option to `(uid, gid)` against the passwd and group
/// files of `owner_root`, as BuildKit's `readUser`:
/// - a user name gives its uid and primary gid, a numeric user gives
///   `uid:uid`, no user gives uid 0;
/// - a group, by name or number, then replaces the gid.
///
/// A name missing from the file (or a missing file) resolves to nothing:
/// an unknown user is 0:0, an unknown group keeps the user's gid.
pub(crate) fn resolve(owner_root: &Path, opt: Option<&ChownOpt>) -> Option<(u32, u32)> {
    let opt = opt?;
    if opt.user.is_none() && opt.group.is_none() {
        return None;
    }
    let (uid, mut gid) = match &opt.user {
        None => (0, 0),
        Some(UserOpt::ById(id)) => (*id, *id),
        Some(UserOpt::ByName(name)) => lookup_user(owner_root, name).unwrap_or((0, 0)),
    };
    match &opt.group {
        None => {}
        Some(UserOpt::ById(id)) => gid = *id,
        Some(UserOpt::ByName(name)) => {
            if let Ok(g) = lookup_group(owner_root, name) {
                gid = g;
            }
        }
    }
    Some((uid, gid))
}
