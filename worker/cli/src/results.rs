//! What a build reports when it is done, as buildx does: `-q` prints the
//! image ID, `--iidfile` writes it, `--metadata-file` writes the exporter
//! response as JSON (`containerimage.digest`, `containerimage.config.digest`,
//! `containerimage.descriptor`, `image.name`, `buildx.build.ref`). The
//! embedded engine's result is turned into the same response kilnd sends.

use anyhow::{Context, Result};
use base64::Engine as _;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// What to do with a build's response (the `-q`, `--iidfile` and
/// `--metadata-file` flags).
#[derive(Debug, Default)]
pub struct Reporting {
    pub quiet: bool,
    pub iidfile: Option<PathBuf>,
    pub metadata_file: Option<PathBuf>,
}

/// The exporter response of an embedded build, keyed as BuildKit's image
/// exporter keys it.
pub fn embedded_response(r: &kiln_engine::build::BuildResult) -> BTreeMap<String, String> {
    let mut resp = BTreeMap::new();
    resp.insert("containerimage.digest".into(), r.manifest_digest.clone());
    resp.insert(
        "containerimage.config.digest".into(),
        r.config_digest.clone(),
    );
    let desc = serde_json::json!({
        "mediaType": r.manifest_media_type,
        "digest": r.manifest_digest,
        "size": r.manifest_size,
    });
    resp.insert(
        "containerimage.descriptor".into(),
        base64::engine::general_purpose::STANDARD.encode(desc.to_string()),
    );
    if !r.names.is_empty() {
        resp.insert("image.name".into(), r.names.join(","));
    }
    resp
}

/// The image ID buildx prints for `-q` and writes to `--iidfile`: the
/// config digest, else the manifest's.
pub fn image_id(resp: &BTreeMap<String, String>) -> String {
    resp.get("containerimage.config.digest")
        .or_else(|| resp.get("containerimage.digest"))
        .cloned()
        .unwrap_or_default()
}

/// The response as buildx writes `--metadata-file`: a value that is
/// base64 of a JSON object or list (or, for `result.json`, such JSON
/// itself) is written decoded; any other stays a string.
pub fn metadata(resp: &BTreeMap<String, String>) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (k, v) in resp {
        // A subrequest's `result.json` is JSON already, not base64.
        let bytes = if k == "result.json" {
            Some(v.as_bytes().to_vec())
        } else {
            base64::engine::general_purpose::STANDARD.decode(v).ok()
        };
        let decoded = bytes
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .filter(|j| match j {
                serde_json::Value::Object(m) => !m.is_empty(),
                serde_json::Value::Array(a) => !a.is_empty() && a.iter().all(|e| e.is_object()),
                _ => false,
            });
        out.insert(
            k.clone(),
            decoded.unwrap_or_else(|| serde_json::Value::String(v.clone())),
        );
    }
    serde_json::Value::Object(out)
}

/// Writes `data` to `path` through a temporary file in the same
/// directory, so a reader never sees half a file.
fn write_atomic(path: &std::path::Path, data: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("write {}", path.display()))?;
    std::io::Write::write_all(&mut tmp, data)
        .with_context(|| format!("write {}", path.display()))?;
    tmp.persist(path)
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

impl Reporting {
    /// After a successful build: the quiet ID line, the ID file and the
    /// metadata file. Nothing else goes to stdout, as with buildx: the
    /// manifest and the names are items of the export step's progress.
    pub fn report(&self, resp: &BTreeMap<String, String>) -> Result<()> {
        let mut out = String::new();
        if self.quiet {
            out.push_str(&image_id(resp));
            out.push('\n');
        }
        if let Some(p) = &self.iidfile {
            write_atomic(p, image_id(resp).as_bytes()).context("writing image ID file")?;
        }
        self.write_metadata(resp)?;
        crate::stdout(&out)
    }

    /// After `--call=check|outline|targets` (`--check`), before its answer
    /// is printed, as buildx: `--metadata-file` gets the answer's metadata
    /// (`result.json`, `result.txt`, `version`, and `result.statuscode`
    /// for a check) and `--iidfile` the image ID there is none of (an
    /// empty file); `-q` prints no ID.
    pub fn report_call(&self, resp: &BTreeMap<String, String>) -> Result<()> {
        if let Some(p) = &self.iidfile {
            write_atomic(p, image_id(resp).as_bytes()).context("writing image ID file")?;
        }
        self.write_metadata(resp)
    }

    fn write_metadata(&self, resp: &BTreeMap<String, String>) -> Result<()> {
        if let Some(p) = &self.metadata_file {
            let json = serde_json::to_vec_pretty(&metadata(resp))?;
            write_atomic(p, &json)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response() -> BTreeMap<String, String> {
        let r = kiln_engine::build::BuildResult {
            manifest_digest: "sha256:aa".into(),
            config_digest: "sha256:cc".into(),
            manifest_media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            manifest_size: 42,
            names: vec!["docker.io/library/x:1".into(), "docker.io/r/y:2".into()],
            children: Vec::new(),
        };
        embedded_response(&r)
    }

    #[test]
    fn metadata_has_buildx_keys_and_decodes_the_descriptor() {
        let mut resp = response();
        resp.insert("buildx.build.ref".into(), "kiln/unix:///s/abc".into());
        let md = metadata(&resp);
        assert_eq!(
            md,
            serde_json::json!({
                "buildx.build.ref": "kiln/unix:///s/abc",
                "containerimage.config.digest": "sha256:cc",
                "containerimage.digest": "sha256:aa",
                "containerimage.descriptor": {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": "sha256:aa",
                    "size": 42
                },
                "image.name": "docker.io/library/x:1,docker.io/r/y:2"
            })
        );
    }

    /// A `--call` answer as buildx writes it: `result.json` is JSON in the
    /// file, the other keys strings.
    #[test]
    fn a_call_answer_is_written_as_buildx_writes_it() {
        let answer = kiln_frontend::check::answer_metadata(
            r#"{"warnings": null, "sources": []}"#.into(),
            "\nWARNING: X\n".into(),
            "1.0.0",
            Some(1),
        );
        assert_eq!(
            metadata(&answer),
            serde_json::json!({
                "result.json": {"warnings": null, "sources": []},
                "result.statuscode": "1",
                "result.txt": "\nWARNING: X\n",
                "version": "1.0.0"
            })
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let r = Reporting {
            quiet: true,
            iidfile: Some(dir.path().join("iid")),
            metadata_file: Some(dir.path().join("md.json")),
        };
        r.report_call(&answer).expect("report");
        // buildx writes the ID of no image: an empty file.
        assert_eq!(
            std::fs::read_to_string(dir.path().join("iid")).expect("iid"),
            ""
        );
        let md: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("md.json")).expect("md"))
                .expect("json");
        assert_eq!(md, metadata(&answer));
    }

    #[test]
    fn the_image_id_is_the_config_digest() {
        let mut resp = response();
        assert_eq!(image_id(&resp), "sha256:cc");
        resp.remove("containerimage.config.digest");
        assert_eq!(image_id(&resp), "sha256:aa");
    }

    #[test]
    fn files_are_written_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let r = Reporting {
            quiet: true,
            iidfile: Some(dir.path().join("iid")),
            metadata_file: Some(dir.path().join("md.json")),
        };
        r.report(&response()).expect("report");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("iid")).expect("iid"),
            "sha256:cc"
        );
        let md: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("md.json")).expect("md"))
                .expect("json");
        assert_eq!(md["containerimage.descriptor"]["size"], 42);
    }
}
