//! `--chown` resolution, as BuildKit's `readUser`
//! (solver/llbsolver/ops/user_linux.go), with the name lookups of
//! `kiln_shim::user`.

use super::{FileOpError, Result};
use kiln_shim::user::{lookup_group, lookup_user};
use kiln_solver::{ChownOpt, UserOpt};
use std::path::Path;

/// Resolves a chown option to `(uid, gid)` against the passwd and group
/// files of `owner_root`:
/// - a user name gives its uid and primary gid, a numeric user gives
///   `uid:uid` (BuildKit), no user gives uid 0;
/// - a group, by name or number, then replaces the gid.
///
/// Unknown names are errors (docker's documented behaviour; BuildKit's code
/// silently uses 0 instead).
pub(crate) fn resolve(owner_root: &Path, opt: Option<&ChownOpt>) -> Result<Option<(u32, u32)>> {
    let Some(opt) = opt else {
        return Ok(None);
    };
    if opt.user.is_none() && opt.group.is_none() {
        return Ok(None);
    }
    let (uid, mut gid) = match &opt.user {
        None => (0, 0),
        Some(UserOpt::ById(id)) => (*id, *id),
        Some(UserOpt::ByName(name)) => {
            lookup_user(owner_root, name).map_err(|source| FileOpError::Owner { source })?
        }
    };
    match &opt.group {
        None => {}
        Some(UserOpt::ById(id)) => gid = *id,
        Some(UserOpt::ByName(name)) => {
            gid = lookup_group(owner_root, name).map_err(|source| FileOpError::Owner { source })?
        }
    }
    Ok(Some((uid, gid)))
}
