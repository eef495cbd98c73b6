//! OCI image JSON: index, manifest, config, and the media types kiln reads
//! and writes.

use serde::{Deserialize, Serialize};

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const MEDIA_DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Whether `media_type` is an image index (OCI's, or Docker's manifest
/// list).
pub fn is_index(media_type: &str) -> bool {
    media_type == MEDIA_OCI_INDEX || media_type == MEDIA_DOCKER_LIST
}

/// The media types an image export writes: OCI's (BuildKit's default),
/// or Docker's schema 2 (the exporters' `oci-mediatypes=false`, for
/// registries and engines that predate OCI). The JSON is the same.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MediaTypes {
    #[default]
    Oci,
    Docker,
}

impl MediaTypes {
    pub fn index(self) -> &'static str {
        match self {
            MediaTypes::Oci => MEDIA_OCI_INDEX,
            MediaTypes::Docker => MEDIA_DOCKER_LIST,
        }
    }

    pub fn manifest(self) -> &'static str {
        match self {
            MediaTypes::Oci => MEDIA_OCI_MANIFEST,
            MediaTypes::Docker => MEDIA_DOCKER_MANIFEST,
        }
    }

    pub fn config(self) -> &'static str {
        match self {
            MediaTypes::Oci => MEDIA_OCI_CONFIG,
            MediaTypes::Docker => MEDIA_DOCKER_CONFIG,
        }
    }

    /// A layer of `media_type` (OCI's or Docker's name) as these types
    /// name it, as BuildKit converts them (a zstd layer kept by an export
    /// with Docker's types is `…rootfs.diff.tar.zstd`); a type kiln does
    /// not know (a foreign layer) is kept.
    pub fn layer(self, media_type: &str) -> String {
        match kiln_snapshot::diff::compression_of(media_type) {
            Some(c) if self == MediaTypes::Oci => c.media_type().to_string(),
            Some(c) => c.docker_media_type().to_string(),
            None => media_type.to_string(),
        }
    }
}

pub use oci_spec::image::{
    Arch, Config, Descriptor, Digest, History, ImageConfiguration, ImageIndex, ImageIndexBuilder,
    ImageManifest, ImageManifestBuilder, MediaType, Os, Platform, RootFs,
};

/// An image config: OCI's [`ImageConfiguration`] plus the Docker-only
/// fields of `config` that OCI's [`Config`] lacks ([`RunConfig`]).
///
/// `image.config` is always `None`: the runtime part lives in
/// [`ImageConfigJson::config`], which is what reads and writes the `config`
/// key (serde hands the flattened struct only the keys this one leaves).
///
/// Written as BuildKit's exporter writes it: a layerless image's
/// `rootfs.diff_ids` is `null` (Go's nil slice) and `created` is always
/// there, `null` when no history entry has a time.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(try_from = "serde_json::Value")]
pub struct ImageConfigJson {
    #[serde(flatten)]
    pub image: ImageConfiguration,
    /// `config`; a missing or `null` one reads as empty, and it is always
    /// written (as `{}` when empty), as before.
    #[serde(default, deserialize_with = "null_as_default")]
    pub config: RunConfig,
    /// BuildKit's inline cache (`moby.buildkit.cache.v0`, base64 JSON of
    /// cache records), written only when an inline cache is exported.
    #[serde(
        rename = "moby.buildkit.cache.v0",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub inline_cache: Option<String>,
}

/// [`ImageConfigJson`] as written, before the fix-ups of its `Serialize`.
#[derive(Serialize)]
struct ImageConfigJsonWrite<'a> {
    #[serde(flatten)]
    image: &'a ImageConfiguration,
    config: &'a RunConfig,
    #[serde(
        rename = "moby.buildkit.cache.v0",
        skip_serializing_if = "Option::is_none"
    )]
    inline_cache: Option<&'a String>,
}

impl Serialize for ImageConfigJson {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut v = serde_json::to_value(ImageConfigJsonWrite {
            image: &self.image,
            config: &self.config,
            inline_cache: self.inline_cache.as_ref(),
        })
        .map_err(serde::ser::Error::custom)?;
        if let Some(d) = v
            .pointer_mut("/rootfs/diff_ids")
            .filter(|d| d.as_array().is_some_and(Vec::is_empty))
        {
            *d = serde_json::Value::Null;
        }
        if let Some(o) = v.as_object_mut() {
            o.entry("created").or_insert(serde_json::Value::Null);
        }
        v.serialize(s)
    }
}

/// [`ImageConfigJson`] as read, before the fix-ups of its `TryFrom`.
#[derive(Deserialize)]
struct ImageConfigJsonRead {
    #[serde(flatten)]
    image: ImageConfiguration,
    #[serde(default, deserialize_with = "null_as_default")]
    config: RunConfig,
    #[serde(rename = "moby.buildkit.cache.v0", default)]
    inline_cache: Option<String>,
}

impl TryFrom<serde_json::Value> for ImageConfigJson {
    type Error = serde_json::Error;

    /// Reads a config; BuildKit writes a layerless image's
    /// `rootfs.diff_ids` as `null`, read as no layers.
    fn try_from(mut v: serde_json::Value) -> Result<Self, Self::Error> {
        if let Some(d) = v.pointer_mut("/rootfs/diff_ids").filter(|d| d.is_null()) {
            *d = serde_json::Value::Array(Vec::new());
        }
        let read: ImageConfigJsonRead = serde_json::from_value(v)?;
        Ok(ImageConfigJson {
            image: read.image,
            config: read.config,
            inline_cache: read.inline_cache,
        })
    }
}

/// The runtime part of an image config (`config`): OCI's fields plus the
/// Docker-only ones kiln carries from a base image into the result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(flatten)]
    pub oci: Config,
    #[serde(rename = "Shell", default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    #[serde(
        rename = "ArgsEscaped",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub args_escaped: bool,
    #[serde(
        rename = "Healthcheck",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub healthcheck: Option<HealthcheckJson>,
    #[serde(rename = "OnBuild", default, skip_serializing_if = "Option::is_none")]
    pub on_build: Option<Vec<String>>,
}

/// Docker's `HealthcheckConfig`: durations are integer nanoseconds, and
/// zero values are left out (Go's `omitempty`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthcheckJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub interval: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub timeout: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_period: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub start_interval: i64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: i64,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

impl From<&kiln_solver::Healthcheck> for HealthcheckJson {
    fn from(h: &kiln_solver::Healthcheck) -> Self {
        HealthcheckJson {
            test: (!h.test.is_empty()).then(|| h.test.clone()),
            interval: h.interval,
            timeout: h.timeout,
            start_period: h.start_period,
            start_interval: h.start_interval,
            retries: h.retries,
        }
    }
}

impl From<&HealthcheckJson> for kiln_solver::Healthcheck {
    fn from(h: &HealthcheckJson) -> Self {
        kiln_solver::Healthcheck {
            test: h.test.clone().unwrap_or_default(),
            interval: h.interval,
            timeout: h.timeout,
            start_period: h.start_period,
            start_interval: h.start_interval,
            retries: h.retries,
        }
    }
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Reads an image manifest. BuildKit writes a layerless image's `layers`
/// as `null` (Go's nil slice), read as no layers.
pub fn manifest_from_slice(bytes: &[u8]) -> serde_json::Result<ImageManifest> {
    let mut v: serde_json::Value = serde_json::from_slice(bytes)?;
    if let Some(l) = v.get_mut("layers").filter(|l| l.is_null()) {
        *l = serde_json::Value::Array(Vec::new());
    }
    serde_json::from_value(v)
}

/// An image manifest's JSON as [`to_json`] writes it, except that a
/// layerless image's `layers` is `null`, as BuildKit's exporter writes it
/// (Go's nil slice); [`manifest_from_slice`] reads it back.
pub fn manifest_to_json(manifest: &ImageManifest) -> serde_json::Result<Vec<u8>> {
    let mut v = serde_json::to_value(manifest)?;
    if let Some(l) = v
        .get_mut("layers")
        .filter(|l| l.as_array().is_some_and(Vec::is_empty))
    {
        *l = serde_json::Value::Null;
    }
    serde_json::to_vec(&v)
}

/// The JSON kiln writes for configs, manifests and indexes: compact, with
/// every object's keys sorted. oci-spec keeps labels, annotations and
/// exposed ports in `HashMap`s, so serializing its types directly would
/// give a different byte string (and digest) for the same image on every
/// run; going through [`serde_json::Value`] (a sorted map) makes it
/// deterministic.
pub fn to_json<T: Serialize>(value: &T) -> serde_json::Result<Vec<u8>> {
    serde_json::to_vec(&serde_json::to_value(value)?)
}

/// A descriptor from the strings and sizes kiln keeps in its records;
/// `None` when `digest` is not a well-formed digest or `size` is negative.
pub fn descriptor(media_type: &str, digest: &str, size: i64) -> Option<Descriptor> {
    let digest: Digest = digest.parse().ok()?;
    let size = u64::try_from(size).ok()?;
    Some(Descriptor::new(MediaType::from(media_type), size, digest))
}

/// A descriptor's size as the content store's records hold it.
pub fn size_of(d: &Descriptor) -> i64 {
    i64::try_from(d.size()).unwrap_or(i64::MAX)
}

/// The platform kiln builds for: the host's, in Go/OCI naming (what
/// `runtime.GOARCH` and containerd's `platforms.DefaultSpec` report). The
/// one implementation: the frontend's `TARGETPLATFORM`, base image
/// selection, the exported config and kilnd's ListWorkers all use it.
pub fn host_platform() -> Platform {
    platform_of(
        std::env::consts::OS,
        std::env::consts::ARCH,
        cfg!(target_endian = "little"),
    )
}

/// [`host_platform`] as the graph names platforms: what an op without a
/// platform runs as.
pub fn worker_platform() -> kiln_solver::Platform {
    from_oci(&host_platform())
}

/// The platforms this worker runs steps of, its own first: the host's,
/// and every Linux architecture a binfmt_misc emulator runs here
/// ([`kiln_shim::emulation`]). What kilnd's ListWorkers advertises.
pub fn runnable_platforms() -> Vec<kiln_solver::Platform> {
    let host = worker_platform();
    let mut out = vec![host.clone()];
    for arch in kiln_shim::emulation::runnable(&host.architecture) {
        let p = kiln_solver::Platform::new("linux", arch, "");
        if p.short() != host.short() {
            out.push(p);
        }
    }
    out
}

/// An OCI platform as the graph names it (normalized).
pub fn from_oci(p: &Platform) -> kiln_solver::Platform {
    kiln_solver::Platform::new(
        &p.os().to_string(),
        &p.architecture().to_string(),
        p.variant().as_deref().unwrap_or_default(),
    )
}

/// A graph platform as an OCI one.
/// The platform an image config is for (architecture, os, variant), as
/// a manifest's descriptor names it.
pub fn config_platform(config: &ImageConfiguration) -> Platform {
    let mut o = Platform::default();
    o.set_architecture(config.architecture().clone());
    o.set_os(config.os().clone());
    o.set_variant(config.variant().clone().filter(|v| !v.is_empty()));
    o
}

pub fn to_oci(p: &kiln_solver::Platform) -> Platform {
    let mut o = Platform::default();
    o.set_architecture(Arch::from(p.architecture.as_str()));
    o.set_os(Os::from(p.os.as_str()));
    o.set_variant((!p.variant.is_empty()).then(|| p.variant.clone()));
    o
}

/// Maps Rust's `std::env::consts::{OS, ARCH}` (and the byte order, which
/// Rust's ARCH leaves out for ppc64 and mips) to OCI's os, architecture and
/// variant.
pub fn platform_of(os: &str, arch: &str, little_endian: bool) -> Platform {
    let (architecture, variant) = match (arch, little_endian) {
        ("x86_64", _) => ("amd64", ""),
        ("x86", _) => ("386", ""),
        ("aarch64", _) => ("arm64", ""),
        // Rust's `arm` targets kiln runs on are ARMv7 (armv7-unknown-linux-*);
        // containerd's default spec names it arm/v7 too.
        ("arm", _) => ("arm", "v7"),
        ("powerpc64", true) => ("ppc64le", ""),
        ("powerpc64", false) => ("ppc64", ""),
        ("mips64", true) => ("mips64le", ""),
        ("mips", true) => ("mipsle", ""),
        ("loongarch64", _) => ("loong64", ""),
        (other, _) => (other, ""),
    };
    let mut p = Platform::default();
    p.set_architecture(Arch::from(architecture));
    p.set_os(Os::from(os));
    p.set_variant((!variant.is_empty()).then(|| variant.to_string()));
    p
}

/// Current time as the image `created` field wants it.
pub fn now_rfc3339() -> String {
    kiln_snapshot::time::rfc3339(std::time::SystemTime::now(), true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::refs::Layer;
    use kiln_solver::Digest as KilnDigest;
    use serde_json::{json, Value};

    #[test]
    fn docker_media_types_name_what_docker_has() {
        let d = MediaTypes::Docker;
        assert_eq!(d.manifest(), MEDIA_DOCKER_MANIFEST);
        assert_eq!(d.config(), MEDIA_DOCKER_CONFIG);
        assert_eq!(d.index(), MEDIA_DOCKER_LIST);
        let layer = |m: MediaTypes, t: &str| m.layer(t);
        assert_eq!(
            layer(d, "application/vnd.oci.image.layer.v1.tar+gzip"),
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
        assert_eq!(
            layer(d, "application/vnd.oci.image.layer.v1.tar"),
            "application/vnd.docker.image.rootfs.diff.tar"
        );
        assert_eq!(
            layer(d, "application/vnd.oci.image.layer.v1.tar+zstd"),
            "application/vnd.docker.image.rootfs.diff.tar.zstd"
        );
        assert_eq!(
            layer(
                MediaTypes::Oci,
                "application/vnd.docker.image.rootfs.diff.tar.zstd"
            ),
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
        let foreign = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
        assert_eq!(layer(d, foreign), foreign);
    }

    fn keys(v: &Value) -> Vec<&str> {
        let mut k: Vec<&str> = v
            .as_object()
            .expect("object")
            .keys()
            .map(String::as_str)
            .collect();
        k.sort();
        k
    }

    fn no_nulls(v: &Value) -> bool {
        match v {
            Value::Null => false,
            Value::Array(a) => a.iter().all(no_nulls),
            Value::Object(o) => o.values().all(no_nulls),
            _ => true,
        }
    }

    /// The config kiln exports keeps Docker's key names, the Docker-only
    /// `Shell`, no nulls and no keys it did not write before.
    #[test]
    fn exported_config_json_has_the_docker_keys() {
        let layer = Layer::with_blob(
            KilnDigest::of(b"layer"),
            "application/vnd.oci.image.layer.v1.tar+gzip",
            KilnDigest::of(b"blob").to_string(),
            4,
            Some("2024-05-01T10:00:00Z".into()),
        );
        let cfg = kiln_solver::ImageConfig {
            env: vec!["PATH=/bin".into()],
            cmd: Some(vec!["sh".into()]),
            entrypoint: Some(vec!["/e".into()]),
            working_dir: "/w".into(),
            user: "app".into(),
            labels: [("b".to_string(), "2".to_string()), ("a".into(), "1".into())].into(),
            exposed_ports: vec!["80/tcp".into(), "443/tcp".into()],
            shell: Some(vec!["/bin/bash".into(), "-c".into()]),
            stop_signal: Some("SIGTERM".into()),
            volumes: vec!["/data".into()],
            history: vec![kiln_solver::HistoryEntry {
                created: None,
                created_by: "RUN x".into(),
                comment: String::new(),
                empty_layer: false,
            }],
            healthcheck: Some(kiln_solver::Healthcheck {
                test: vec!["CMD-SHELL".into(), "true".into()],
                interval: 30_000_000_000,
                retries: 3,
                ..Default::default()
            }),
            on_build: vec!["RUN echo hi".into()],
            args_escaped: true,
            author: "me".into(),
            variant: String::new(),
            os_version: "10.0".into(),
            os_features: vec!["f1".into()],
            // Exporter inputs: none is written into the config.
            source_date_epoch: Some(1),
            base_diff_ids: vec![KilnDigest::of(b"base").to_string()],
            base_history: 0,
            platform: None,
            base_platform: Some(kiln_solver::Platform::new("plan9", "mips", "")),
        };
        let config = crate::export::image_config(&[layer], &cfg);
        let bytes = to_json(&config).expect("json");
        let v: Value = serde_json::from_slice(&bytes).expect("parse");
        assert!(no_nulls(&v), "{v}");
        assert_eq!(
            keys(&v),
            [
                "architecture",
                "author",
                "config",
                "created",
                "history",
                "os",
                "os.features",
                "os.version",
                "rootfs"
            ]
        );
        assert_eq!(
            keys(&v["config"]),
            [
                "ArgsEscaped",
                "Cmd",
                "Entrypoint",
                "Env",
                "ExposedPorts",
                "Healthcheck",
                "Labels",
                "OnBuild",
                "Shell",
                "StopSignal",
                "User",
                "Volumes",
                "WorkingDir"
            ]
        );
        assert_eq!(
            v["config"]["ExposedPorts"],
            json!({"443/tcp": {}, "80/tcp": {}})
        );
        assert_eq!(v["config"]["Volumes"], json!({"/data": {}}));
        assert_eq!(v["config"]["Shell"], json!(["/bin/bash", "-c"]));
        // Docker's names; zero durations are left out as Go's omitempty does.
        assert_eq!(
            v["config"]["Healthcheck"],
            json!({"Test": ["CMD-SHELL", "true"], "Interval": 30_000_000_000i64, "Retries": 3})
        );
        assert_eq!(v["config"]["OnBuild"], json!(["RUN echo hi"]));
        assert_eq!(v["config"]["ArgsEscaped"], json!(true));
        assert_eq!(v["author"], "me");
        assert_eq!(v["os.version"], "10.0");
        assert_eq!(v["os.features"], json!(["f1"]));
        assert_eq!(v["rootfs"]["type"], "layers");
        assert_eq!(keys(&v["rootfs"]), ["diff_ids", "type"]);
        assert_eq!(keys(&v["history"][0]), ["created", "created_by"]);
        // Deterministic bytes: the same config serializes the same way
        // whatever order oci-spec's HashMaps iterate in.
        let again: ImageConfigJson = serde_json::from_slice(&bytes).expect("read back");
        assert_eq!(to_json(&again).expect("json"), bytes);
        assert_eq!(crate::base::frontend_config(&again), {
            let mut c = cfg.clone();
            c.exposed_ports.sort();
            c.history[0].created = v["created"].as_str().map(String::from);
            // Read back, the exporter inputs are the image's own: no epoch,
            // and its layers and history are the next build's base ones.
            c.source_date_epoch = None;
            c.base_history = c.history.len();
            c.base_diff_ids =
                serde_json::from_value(v["rootfs"]["diff_ids"].clone()).expect("diff_ids");
            // ... and its platform is the one the exporter wrote.
            c.base_platform = Some(host_platform()).as_ref().map(from_oci);
            c
        });
    }

    /// A layerless image's manifest as BuildKit 73ed6825c wrote it
    /// (`"layers": null`) reads as one of no layers; a manifest without
    /// a config still fails.
    #[test]
    fn null_manifest_layers_read_as_none() {
        let bk = br#"{
  "schemaVersion": 2,
  "mediaType": "application/vnd.oci.image.manifest.v1+json",
  "config": {
    "mediaType": "application/vnd.oci.image.config.v1+json",
    "digest": "sha256:f218b8e7950ebd5864cf96e22976765f39c048cdbab45f9de162e75a648738a9",
    "size": 311
  },
  "layers": null
}"#;
        let m = manifest_from_slice(bk).expect("reads");
        assert!(m.layers().is_empty());
        assert_eq!(m.config().size(), 311);
        assert!(manifest_from_slice(br#"{"schemaVersion": 2, "layers": null}"#).is_err());
    }

    /// A layerless image without times (`FROM scratch` and `LABEL`) is
    /// written as BuildKit 73ed6825c's exporter wrote it: `"diff_ids":
    /// null` and `"created": null`; it reads back as no layers.
    #[test]
    fn layerless_manifest_is_written_as_buildkits() {
        let config = descriptor(MEDIA_OCI_CONFIG, &format!("sha256:{}", "a".repeat(64)), 2)
            .expect("descriptor");
        let build = |layers: Vec<Descriptor>| {
            ImageManifestBuilder::default()
                .schema_version(2u32)
                .media_type(MediaType::from(MEDIA_OCI_MANIFEST))
                .config(config.clone())
                .layers(layers)
                .build()
                .expect("manifest")
        };
        let empty = build(Vec::new());
        let bytes = manifest_to_json(&empty).expect("json");
        let v: Value = serde_json::from_slice(&bytes).expect("parse");
        assert_eq!(v.get("layers"), Some(&Value::Null), "{v}");
        assert_eq!(manifest_from_slice(&bytes).expect("reads back"), empty);
        let one = build(vec![config.clone()]);
        let v: Value =
            serde_json::from_slice(&manifest_to_json(&one).expect("json")).expect("parse");
        assert_eq!(v["layers"].as_array().map(Vec::len), Some(1), "{v}");
        assert_eq!(
            to_json(&one).expect("json"),
            manifest_to_json(&one).expect("json")
        );
    }

    #[test]
    fn layerless_config_is_written_as_buildkits() {
        let cfg = kiln_solver::ImageConfig {
            labels: [("a".to_string(), "b".to_string())].into(),
            history: vec![kiln_solver::HistoryEntry {
                created: None,
                created_by: "LABEL a=b".into(),
                comment: "buildkit.dockerfile.v0".into(),
                empty_layer: true,
            }],
            ..Default::default()
        };
        let config = crate::export::image_config(&[], &cfg);
        let bytes = to_json(&config).expect("json");
        let v: Value = serde_json::from_slice(&bytes).expect("parse");
        assert_eq!(
            v["rootfs"],
            json!({"type": "layers", "diff_ids": null}),
            "{v}"
        );
        assert_eq!(v.get("created"), Some(&Value::Null), "{v}");
        let back: ImageConfigJson = serde_json::from_slice(&bytes).expect("reads back");
        assert_eq!(back, config);
    }

    /// A layerless image as BuildKit writes it (`"diff_ids": null`) reads
    /// as one of no layers; a missing `config` still reads as empty.
    #[test]
    fn null_diff_ids_read_as_no_layers() {
        let c: ImageConfigJson = serde_json::from_value(json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["A=1"], "OnBuild": ["ENV B=2"]},
            "rootfs": {"type": "layers", "diff_ids": null},
        }))
        .expect("config");
        assert!(c.image.rootfs().diff_ids().is_empty());
        assert_eq!(c.config.on_build, Some(vec!["ENV B=2".to_string()]));
        let bad = serde_json::from_value::<ImageConfigJson>(json!({"rootfs": {"diff_ids": 3}}));
        assert!(bad.is_err());
    }

    /// An empty run config is still written as `"config": {}`, and a
    /// `null` or missing one reads as empty; Docker-only fields of a base
    /// image survive a read and write. Nothing dates an image without
    /// layers or history, so its `created` is `null` (never "now").
    #[test]
    fn config_json_round_trips_docker_fields() {
        let empty = crate::export::image_config(&[], &kiln_solver::ImageConfig::default());
        let v: Value = serde_json::from_slice(&to_json(&empty).expect("json")).expect("parse");
        assert_eq!(v["config"], json!({}));
        assert_eq!(
            keys(&v),
            ["architecture", "config", "created", "os", "rootfs"]
        );
        assert_eq!(v["created"], Value::Null);
        for base in [
            json!({"architecture": "amd64", "os": "linux", "config": null, "rootfs": {"type": "layers", "diff_ids": []}}),
            json!({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}}),
        ] {
            let c: ImageConfigJson = serde_json::from_value(base).expect("config");
            assert_eq!(c.config, RunConfig::default());
        }
        let base = json!({
            "architecture": "arm64", "os": "linux", "variant": "v8",
            "author": "a <a@example.com>", "os.version": "1.2", "os.features": ["x"],
            "config": {"User": "u", "Shell": ["/bin/ash", "-c"], "ArgsEscaped": true, "Env": ["A=1"],
                       "Healthcheck": {"Test": ["CMD", "true"], "Timeout": 5, "StartPeriod": 6, "StartInterval": 7},
                       "OnBuild": ["RUN a", "COPY b c"]},
            "rootfs": {"type": "layers", "diff_ids": []},
            "history": [{"created_by": "x", "empty_layer": true}]
        });
        let c: ImageConfigJson = serde_json::from_value(base.clone()).expect("config");
        assert_eq!(c.config.shell, Some(vec!["/bin/ash".into(), "-c".into()]));
        assert!(c.config.args_escaped);
        assert_eq!(c.config.oci.user().as_deref(), Some("u"));
        assert_eq!(c.image.config(), &None);
        assert_eq!(c.image.architecture(), &Arch::ARM64);
        let out: Value = serde_json::from_slice(&to_json(&c).expect("json")).expect("parse");
        // Written back in BuildKit's layerless form.
        let mut expect = base.clone();
        expect["rootfs"]["diff_ids"] = Value::Null;
        expect["created"] = Value::Null;
        assert_eq!(out, expect);
        // The frontend's view keeps all of it, and exporting that view
        // writes it back.
        let f = crate::base::frontend_config(&c);
        assert_eq!(f.on_build, ["RUN a", "COPY b c"]);
        assert_eq!(
            f.healthcheck,
            Some(kiln_solver::Healthcheck {
                test: vec!["CMD".into(), "true".into()],
                timeout: 5,
                start_period: 6,
                start_interval: 7,
                ..Default::default()
            })
        );
        assert!(f.args_escaped);
        assert_eq!(
            (f.author.as_str(), f.variant.as_str(), f.os_version.as_str()),
            ("a <a@example.com>", "v8", "1.2")
        );
        let again: Value =
            serde_json::from_slice(&to_json(&crate::export::image_config(&[], &f)).expect("json"))
                .expect("parse");
        for key in ["author", "os.version", "os.features"] {
            assert_eq!(again[key], base[key], "{key}");
        }
        for key in [
            "Healthcheck",
            "OnBuild",
            "ArgsEscaped",
            "Shell",
            "User",
            "Env",
        ] {
            assert_eq!(again["config"][key], base["config"][key], "{key}");
        }
    }

    /// Manifests and indexes keep `schemaVersion: 2`, the OCI media types
    /// and only the descriptor keys kiln wrote before.
    #[test]
    fn manifest_and_index_json_keys() {
        let d = |m: &str, data: &[u8]| {
            descriptor(m, &KilnDigest::of(data).to_string(), data.len() as i64).expect("descriptor")
        };
        let m = ImageManifestBuilder::default()
            .schema_version(2u32)
            .media_type(MediaType::from(MEDIA_OCI_MANIFEST))
            .config(d(MEDIA_OCI_CONFIG, b"c"))
            .layers(vec![d("application/vnd.oci.image.layer.v1.tar+gzip", b"l")])
            .build()
            .expect("manifest");
        let v: Value = serde_json::from_slice(&to_json(&m).expect("json")).expect("parse");
        assert_eq!(keys(&v), ["config", "layers", "mediaType", "schemaVersion"]);
        assert_eq!(v["schemaVersion"], 2);
        assert_eq!(v["mediaType"], MEDIA_OCI_MANIFEST);
        assert_eq!(keys(&v["config"]), ["digest", "mediaType", "size"]);
        assert_eq!(v["config"]["mediaType"], MEDIA_OCI_CONFIG);
        assert_eq!(v["config"]["size"], 1);
        assert_eq!(keys(&v["layers"][0]), ["digest", "mediaType", "size"]);
        // A Docker manifest list's media type reads and writes unchanged.
        let list = json!({"schemaVersion": 2, "mediaType": MEDIA_DOCKER_LIST, "manifests": [
            {"mediaType": MEDIA_DOCKER_MANIFEST, "digest": KilnDigest::of(b"m").to_string(), "size": 1,
             "platform": {"architecture": "amd64", "os": "linux"}}]});
        let i: ImageIndex = serde_json::from_value(list.clone()).expect("index");
        assert_eq!(
            i.media_type().as_ref().map(ToString::to_string).as_deref(),
            Some(MEDIA_DOCKER_LIST)
        );
        let out: Value = serde_json::from_slice(&to_json(&i).expect("json")).expect("parse");
        assert_eq!(out, list);
        assert!(descriptor(MEDIA_OCI_CONFIG, "sha256:zz", 1).is_none());
        assert!(descriptor(MEDIA_OCI_CONFIG, &KilnDigest::of(b"x").to_string(), -1).is_none());
    }

    #[test]
    fn the_config_is_for_the_frontends_platform() {
        let for_arm = |variant: &str, base_variant: &str| {
            let cfg = kiln_solver::ImageConfig {
                platform: Some(kiln_solver::Platform::new("linux", "arm", variant)),
                variant: base_variant.into(),
                ..Default::default()
            };
            let v: Value = serde_json::from_slice(
                &to_json(&crate::export::image_config(&[], &cfg)).expect("json"),
            )
            .expect("parse");
            (
                v["architecture"].clone(),
                v["os"].clone(),
                v["variant"].clone(),
            )
        };
        assert_eq!(
            for_arm("v6", "v7"),
            (json!("arm"), json!("linux"), json!("v6"))
        );
        let host = crate::export::image_config(&[], &kiln_solver::ImageConfig::default());
        assert_eq!(
            host.image.architecture().to_string(),
            host_platform().architecture().to_string()
        );
        // The graph's platform and OCI's convert both ways.
        let p = kiln_solver::Platform::new("linux", "arm64", "");
        assert_eq!(from_oci(&to_oci(&p)), p);
        assert!(runnable_platforms()[0] == worker_platform());
    }

    #[test]
    fn platform_names_follow_go() {
        let cases = [
            ("x86_64", true, "amd64", ""),
            ("x86", true, "386", ""),
            ("aarch64", true, "arm64", ""),
            ("arm", true, "arm", "v7"),
            ("powerpc64", true, "ppc64le", ""),
            ("powerpc64", false, "ppc64", ""),
            ("s390x", false, "s390x", ""),
            ("riscv64", true, "riscv64", ""),
            ("mips64", true, "mips64le", ""),
            ("mips64", false, "mips64", ""),
            ("loongarch64", true, "loong64", ""),
        ];
        for (arch, le, want_arch, want_variant) in cases {
            let p = platform_of("linux", arch, le);
            assert_eq!(
                (
                    p.os().to_string(),
                    p.architecture().to_string(),
                    p.variant().clone().unwrap_or_default()
                ),
                ("linux".into(), want_arch.into(), want_variant.into()),
                "{arch} little_endian={le}"
            );
        }
    }

    #[test]
    fn host_platform_is_the_running_one() {
        let p = host_platform();
        assert_eq!(p.os().to_string(), std::env::consts::OS);
        assert_eq!(
            p,
            platform_of(
                std::env::consts::OS,
                std::env::consts::ARCH,
                cfg!(target_endian = "little")
            )
        );
        if cfg!(target_arch = "x86_64") {
            assert_eq!(p.architecture().to_string(), "amd64");
        }
    }
}
