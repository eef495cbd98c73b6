//! Symbolic file modes (`COPY --chmod=u=rwX,go=rX`): the `chmod(1)`
//! syntax LLB carries as `FileActionCopy.modeStr`. It lives here, beside
//! the graph type that holds it, because both the Dockerfile frontend
//! (which rejects bad values before a build) and the engine (which applies
//! the mode to each copied entry) need the one parser.
//!
//! A mode is comma-separated clauses `[ugoa]*([-+=]([rwxXst]*|[ugo]))+`.
//! With no `who` the clause applies to all classes (kiln applies no
//! umask, as BuildKit). `X` adds execute only to directories and to files
//! that already have an execute bit.

/// Why a symbolic mode does not parse. BuildKit reports the parser's
/// `invalid syntax` as is.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid syntax")]
pub struct ModeSyntaxError;

/// A parsed symbolic mode.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SymbolicMode(Vec<Action>);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Action {
    /// The bits the clause may touch (`u` is `0o4700`, ...); 0 for none
    /// given, which means every class.
    who: u32,
    op: u8,
    perm: Perm,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Perm {
    /// `r`, `w`, `x`, `s`, `t` as bits for every class; `cond_x` for `X`.
    Bits { bits: u32, cond_x: bool },
    /// `u`, `g` or `o`: that class's current bits (the shift of its rwx).
    CopyFrom(u32),
}

const USER: u32 = 0o4700;
const GROUP: u32 = 0o2070;
const OTHER: u32 = 0o0007;
const ALL: u32 = 0o7777;

impl SymbolicMode {
    /// Parses `s`; an octal number is not a symbolic mode.
    pub fn parse(s: &str) -> Result<SymbolicMode, ModeSyntaxError> {
        if s.is_empty() || s.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(ModeSyntaxError);
        }
        let mut actions = Vec::new();
        for clause in s.split(',') {
            let mut chars = clause.chars().peekable();
            let mut who = 0;
            while let Some(c) = chars.peek().copied() {
                who |= match c {
                    'u' => USER,
                    'g' => GROUP,
                    'o' => OTHER,
                    'a' => ALL,
                    _ => break,
                };
                chars.next();
            }
            let mut ops = 0;
            while let Some(op) = chars.next() {
                if !matches!(op, '+' | '-' | '=') {
                    return Err(ModeSyntaxError);
                }
                ops += 1;
                let op = op as u8;
                let mut bits = 0;
                let mut cond_x = false;
                let mut copied = false;
                while let Some(c) = chars.peek().copied() {
                    // A copied class stands alone (`g=u`, not `g=ux`).
                    if copied && !matches!(c, '+' | '-' | '=') {
                        return Err(ModeSyntaxError);
                    }
                    match c {
                        'r' => bits |= 0o444,
                        'w' => bits |= 0o222,
                        'x' => bits |= 0o111,
                        // Removing X removes x, as chmod(1) does.
                        'X' if op == b'-' => bits |= 0o111,
                        'X' => cond_x = true,
                        's' => bits |= 0o6000,
                        't' => bits |= 0o1000,
                        'u' | 'g' | 'o' if bits == 0 && !cond_x && !copied => {
                            let shift = match c {
                                'u' => 6,
                                'g' => 3,
                                _ => 0,
                            };
                            actions.push(Action {
                                who,
                                op,
                                perm: Perm::CopyFrom(shift),
                            });
                            copied = true;
                        }
                        '+' | '-' | '=' => break,
                        _ => return Err(ModeSyntaxError),
                    }
                    chars.next();
                }
                if !copied {
                    actions.push(Action {
                        who,
                        op,
                        perm: Perm::Bits { bits, cond_x },
                    });
                }
            }
            if ops == 0 {
                return Err(ModeSyntaxError);
            }
        }
        Ok(SymbolicMode(actions))
    }

    /// The permission bits (`0o7777`) of an entry with `mode` after the
    /// change.
    pub fn apply(&self, mode: u32, is_dir: bool) -> u32 {
        let original = mode & ALL;
        let mut m = original;
        for a in &self.0 {
            let perm = match a.perm {
                Perm::CopyFrom(shift) => ((m >> shift) & 0o7) * 0o111,
                Perm::Bits { bits, cond_x } => {
                    let x = cond_x && (is_dir || original & 0o111 != 0);
                    bits | if x { 0o111 } else { 0 }
                }
            };
            // The sticky bit belongs to no class: `t` sets it unless the
            // clause names only `o`.
            let who = match a.who {
                0 => ALL,
                w if w & !OTHER != 0 && perm & 0o1000 != 0 => w | 0o1000,
                w => w,
            };
            match a.op {
                b'+' => m |= perm & who,
                b'-' => m &= !(perm & who),
                _ => m = (m & !who) | (perm & who),
            }
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn apply(s: &str, mode: u32, is_dir: bool) -> u32 {
        SymbolicMode::parse(s)
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .apply(mode, is_dir)
    }

    #[test]
    fn classes_and_operators() {
        assert_eq!(apply("+x", 0o644, false), 0o755);
        assert_eq!(apply("a+x", 0o600, false), 0o711);
        assert_eq!(apply("u+x", 0o644, false), 0o744);
        assert_eq!(apply("go-w", 0o666, false), 0o644);
        assert_eq!(apply("u=rw,go=r", 0o777, false), 0o644);
        assert_eq!(apply("o=", 0o777, false), 0o770);
        assert_eq!(apply("u=rwx,g=u,o=g", 0o700, false), 0o777);
        assert_eq!(apply("g=u-w", 0o750, false), 0o750);
        assert_eq!(apply("u+s,g+s", 0o755, false), 0o6755);
        assert_eq!(apply("+t", 0o755, true), 0o1755);
        assert_eq!(apply("o+t", 0o755, true), 0o755);
        assert_eq!(apply("u+r-w+x", 0o200, false), 0o500);
    }

    #[test]
    fn capital_x_is_for_directories_and_executables() {
        assert_eq!(apply("u=rwX,go=rX", 0o600, false), 0o644);
        assert_eq!(apply("u=rwX,go=rX", 0o700, false), 0o755);
        assert_eq!(apply("u=rwX,go=rX", 0o700, true), 0o755);
        assert_eq!(apply("u=rwX,go=rX", 0o600, true), 0o755);
        assert_eq!(apply("a-X", 0o755, true), 0o644);
    }

    #[test]
    fn bad_modes_are_syntax_errors() {
        for bad in [
            "", "u", "u+q", "x+", "+x,", ",+x", "ugo", "u+x,g", "644", "u+ux", "v=r",
        ] {
            assert_eq!(SymbolicMode::parse(bad), Err(ModeSyntaxError), "{bad:?}");
        }
        assert_eq!(ModeSyntaxError.to_string(), "invalid syntax");
    }
}
