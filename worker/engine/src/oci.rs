//! OCI image JSON: index, manifest, config, and the media types kiln reads
//! and writes.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub const MEDIA_OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const MEDIA_DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// A content descriptor.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub variant: String,
}

/// An image index (or Docker manifest list).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
}

/// An image manifest.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// The runtime part of an image config (`config`), with Docker's field
/// names.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    #[serde(rename = "User", default, skip_serializing_if = "String::is_empty")]
    pub user: String,
    #[serde(
        rename = "ExposedPorts",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub exposed_ports: BTreeMap<String, serde_json::Value>,
    #[serde(rename = "Env", default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(
        rename = "Entrypoint",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    #[serde(
        rename = "Volumes",
        default,
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub volumes: BTreeMap<String, serde_json::Value>,
    #[serde(
        rename = "WorkingDir",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub working_dir: String,
    #[serde(rename = "Labels", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(
        rename = "StopSignal",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub stop_signal: String,
    #[serde(rename = "Shell", default, skip_serializing_if = "Option::is_none")]
    pub shell: Option<Vec<String>>,
    #[serde(
        rename = "ArgsEscaped",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub args_escaped: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub fs_type: String,
    pub diff_ids: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub created_by: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comment: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub empty_layer: bool,
}

/// An image config.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ImageConfigJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub config: RunConfig,
    pub rootfs: RootFs,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<History>,
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
    Platform {
        architecture: architecture.into(),
        os: os.into(),
        variant: variant.into(),
    }
}

/// Current time as the image `created` field wants it.
pub fn now_rfc3339() -> String {
    kiln_snapshot::time::rfc3339(std::time::SystemTime::now(), true)
}

#[cfg(test)]
mod tests {
    use super::*;

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
                (p.os.as_str(), p.architecture.as_str(), p.variant.as_str()),
                ("linux", want_arch, want_variant),
                "{arch} little_endian={le}"
            );
        }
    }

    #[test]
    fn host_platform_is_the_running_one() {
        let p = host_platform();
        assert_eq!(p.os, std::env::consts::OS);
        assert_eq!(
            p,
            platform_of(
                std::env::consts::OS,
                std::env::consts::ARCH,
                cfg!(target_endian = "little")
            )
        );
        if cfg!(target_arch = "x86_64") {
            assert_eq!(p.architecture, "amd64");
        }
    }
}
