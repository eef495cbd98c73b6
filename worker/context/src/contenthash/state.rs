//! The stat cache of one context directory and its state file: which
//! (dev, ino, size, mtime, ctime, mode) each path had when its content and
//! xattr digests were recorded.

use super::{HashError, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fs::Metadata;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Version of the state file; a file with another version is ignored.
const STATE_VERSION: u32 = 1;

/// One remembered entry: the stat tuple it was recorded with and what was
/// derived from the entry's data.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct StatEntry {
    #[serde(rename = "d")]
    pub(super) dev: u64,
    #[serde(rename = "i")]
    pub(super) ino: u64,
    #[serde(rename = "s")]
    pub(super) size: u64,
    #[serde(rename = "m")]
    pub(super) mtime_ns: i64,
    #[serde(rename = "c")]
    pub(super) ctime_ns: i64,
    /// The full `st_mode`, type bits included.
    #[serde(rename = "o")]
    pub(super) mode: u32,
    /// Wall-clock time (ns) of the call that recorded the entry.
    #[serde(rename = "r")]
    pub(super) recorded_ns: i64,
    /// SHA-256 of the content, for regular files.
    #[serde(rename = "h", default, skip_serializing_if = "Option::is_none")]
    pub(super) content: Option<Sha>,
    /// SHA-256 of the xattrs, when the entry has any: boxed, as few
    /// entries have xattrs and an inline `Option<Sha>` made every entry
    /// of a 20,000-file context's record 24 bytes larger.
    #[serde(rename = "x", default, skip_serializing_if = "Option::is_none")]
    pub(super) xattrs: Option<Box<Sha>>,
    /// Generation of the last call that visited the entry (not persisted).
    #[serde(skip)]
    pub(super) seen: u64,
}

impl StatEntry {
    pub(super) fn same_stat(&self, md: &Metadata) -> bool {
        self.dev == md.dev()
            && self.ino == md.ino()
            && self.size == md.size()
            && self.mtime_ns == mtime_ns(md)
            && self.ctime_ns == ctime_ns(md)
            && self.mode == md.mode()
    }

    /// Whether the entry was recorded long enough after the file's last
    /// change that a later change must have moved mtime or ctime.
    pub(super) fn trusted(&self, window_ns: i64) -> bool {
        self.recorded_ns
            .saturating_sub(self.mtime_ns.max(self.ctime_ns))
            >= window_ns
    }
}

/// A SHA-256 kept as its 32 bytes (a record of a 20,000-file context is
/// ~1.5 MiB smaller than with hex strings) and written in the state file
/// as 64 lowercase hex digits; anything else there makes the file
/// malformed (it is then rebuilt).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Sha(pub(super) [u8; 32]);

impl Sha {
    /// The digest in lowercase hex, as the context digest covers it.
    pub(super) fn hex(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        hex::encode_to_slice(self.0, &mut out).expect("64 bytes hold 32 bytes in hex");
        out
    }

    pub(super) fn to_hex_string(self) -> String {
        hex::encode(self.0)
    }
}

impl Serialize for Sha {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let hex = self.hex();
        s.serialize_str(std::str::from_utf8(&hex).expect("hex digits are ASCII"))
    }
}

impl<'de> Deserialize<'de> for Sha {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        let lower_hex = s.len() == 64
            && s.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
        let mut out = [0u8; 32];
        if lower_hex && hex::decode_to_slice(s.as_bytes(), &mut out).is_ok() {
            Ok(Sha(out))
        } else {
            Err(serde::de::Error::custom("not a lowercase hex SHA-256"))
        }
    }
}

pub(super) fn mtime_ns(md: &Metadata) -> i64 {
    md.mtime()
        .saturating_mul(1_000_000_000)
        .saturating_add(md.mtime_nsec())
}

pub(super) fn ctime_ns(md: &Metadata) -> i64 {
    md.ctime()
        .saturating_mul(1_000_000_000)
        .saturating_add(md.ctime_nsec())
}

/// The on-disk form of one context's stat cache.
#[derive(Serialize, Deserialize)]
pub(super) struct StateFile {
    pub(super) version: u32,
    pub(super) context: PathBuf,
    pub(super) entries: BTreeMap<String, StatEntry>,
}

/// [`StateFile`] borrowed, for writing.
#[derive(Serialize)]
struct StateFileRef<'a> {
    version: u32,
    context: &'a Path,
    entries: &'a BTreeMap<String, StatEntry>,
}

/// The stat cache of one context directory.
pub(super) struct ContextCache {
    context: PathBuf,
    file: PathBuf,
    loaded: bool,
    pub(super) dirty: bool,
    pub(super) generation: u64,
    /// Keyed by the `/`-separated path relative to the context (`""` is
    /// the context itself). Entries with non-UTF-8 paths are not cached.
    pub(super) entries: BTreeMap<String, StatEntry>,
}

impl ContextCache {
    /// An empty, not yet loaded cache of `context` kept in `file`.
    pub(super) fn new(context: &Path, file: PathBuf) -> Self {
        ContextCache {
            context: context.to_path_buf(),
            file,
            loaded: false,
            dirty: false,
            generation: 0,
            entries: BTreeMap::new(),
        }
    }

    pub(super) fn load(&mut self) {
        if self.loaded {
            return;
        }
        self.loaded = true;
        let bytes = match std::fs::read(&self.file) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
            Err(e) => {
                tracing::warn!(path = %self.file.display(), error = %e, "stat cache unreadable, rebuilding");
                return;
            }
        };
        match serde_json::from_slice::<StateFile>(&bytes) {
            Ok(state) if state.version == STATE_VERSION && state.context == self.context => {
                self.entries = state.entries;
            }
            Ok(_) => {
                tracing::warn!(path = %self.file.display(), "stat cache is stale, rebuilding");
            }
            Err(e) => {
                tracing::warn!(path = %self.file.display(), error = %e, "stat cache is corrupt, rebuilding");
            }
        }
    }

    pub(super) fn save(&mut self) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let save_err = |source| HashError::Save {
            path: self.file.clone(),
            source,
        };
        if let Some(dir) = self.file.parent() {
            std::fs::create_dir_all(dir).map_err(save_err)?;
        }
        static TMP_SEQ: AtomicU64 = AtomicU64::new(0);
        let mut tmp = self.file.clone().into_os_string();
        tmp.push(format!(
            ".tmp.{}.{}",
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let tmp = PathBuf::from(tmp);
        // Streamed, not encoded whole first: the records of a 20,000-file
        // context are ~4 MiB of JSON.
        let state = StateFileRef {
            version: STATE_VERSION,
            context: &self.context,
            entries: &self.entries,
        };
        let written = (|| {
            let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
            serde_json::to_writer(&mut w, &state).map_err(std::io::Error::from)?;
            w.flush()?;
            let f = w
                .into_inner()
                .map_err(std::io::IntoInnerError::into_error)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.file)
        })();
        if let Err(e) = written {
            // Best effort: the temp file is garbage either way.
            let _ = std::fs::remove_file(&tmp);
            return Err(save_err(e));
        }
        self.dirty = false;
        Ok(())
    }
}
