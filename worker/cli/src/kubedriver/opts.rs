//! The kubernetes driver's options (`--driver-opt`), with buildx's names,
//! defaults and errors (buildx `driver/kubernetes/factory.go`). They are
//! checked when the builder is created and stored in its JSON file, so
//! every later command deploys and reaches the same thing.

use anyhow::{anyhow, bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// kilnd's image when `image=` is not given: the image deploy/Dockerfile
/// builds (docs/KUBERNETES.md).
pub const DEFAULT_IMAGE: &str = "ghcr.io/kiln-build/kilnd:latest";
/// buildx's default for `timeout`.
pub const DEFAULT_TIMEOUT_SECS: u64 = 120;
/// The label that selects a builder's pods; reserved, as in buildx.
pub const LABEL_APP: &str = "app";

/// How a build picks one of the builder's pods.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadBalance {
    /// The same context goes to the same pod (its cache is there).
    #[default]
    Sticky,
    /// Any running pod.
    Random,
}

/// One toleration (`tolerations=key=k,operator=Equal,value=v,effect=NoSchedule;…`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toleration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toleration_seconds: Option<i64>,
}

/// A kubernetes builder's settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeOpts {
    /// The Deployment's (and ConfigMap's prefix) name: the builder's name
    /// with `_` as `-`, as buildx names it.
    pub deployment: String,
    /// `namespace`; when not given, the kubeconfig context's namespace,
    /// filled in at create time so `rm` deletes where `create` made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub image: String,
    pub replicas: i32,
    /// `requests.cpu`, `requests.memory`, `requests.ephemeral-storage`,
    /// keyed `cpu`, `memory`, `ephemeral-storage`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, String>,
    /// `limits.*`, keyed as `requests`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduler_name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// `env.NAME=value`: kilnd's environment.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// How long `--bootstrap` waits for ready pods, in seconds.
    pub timeout_secs: u64,
    #[serde(default)]
    pub loadbalance: LoadBalance,
}

/// buildx options kiln knows and does not implement: they fail by name.
const NOT_YET: &[&str] = &[
    "qemu.install",
    "qemu.image",
    "buildkit-root-volume-memory",
    "persistent-volume-claim.requests.storage",
    "default-load",
];

impl KubeOpts {
    /// Parses `--driver-opt`s for the builder `name`.
    pub fn parse(name: &str, opts: &BTreeMap<String, String>) -> Result<KubeOpts> {
        let deployment = deployment_name(name)?;
        let mut o = KubeOpts {
            deployment,
            namespace: None,
            image: DEFAULT_IMAGE.to_string(),
            replicas: 1,
            requests: BTreeMap::new(),
            limits: BTreeMap::new(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            service_account: None,
            scheduler_name: None,
            annotations: BTreeMap::new(),
            labels: BTreeMap::new(),
            env: BTreeMap::new(),
            timeout_secs: DEFAULT_TIMEOUT_SECS,
            loadbalance: LoadBalance::Sticky,
        };
        for (k, v) in opts {
            match k.as_str() {
                "image" => {
                    if !v.is_empty() {
                        o.image = v.clone();
                    }
                }
                "namespace" => {
                    check_dns_label(v, "namespace")?;
                    o.namespace = Some(v.clone());
                }
                "replicas" => {
                    let r: i32 = v
                        .parse()
                        .map_err(|e| anyhow!("strconv.ParseInt: parsing {v:?}: {e}"))?;
                    if r < 1 {
                        bail!("replicas must be at least 1 (got {r})");
                    }
                    o.replicas = r;
                }
                "requests.cpu" | "requests.memory" | "requests.ephemeral-storage" => {
                    check_quantity(k, v)?;
                    o.requests
                        .insert(k["requests.".len()..].to_string(), v.clone());
                }
                "limits.cpu" | "limits.memory" | "limits.ephemeral-storage" => {
                    check_quantity(k, v)?;
                    o.limits.insert(k["limits.".len()..].to_string(), v.clone());
                }
                "rootless" => {
                    if parse_bool(k, v)? {
                        bail!("driver option rootless=true is not supported yet: kilnd runs privileged, as root");
                    }
                }
                "schedulername" => o.scheduler_name = Some(v.clone()),
                "serviceaccount" => o.service_account = Some(v.clone()),
                "nodeselector" => {
                    o.node_selector = split_multi_values(v).context("cannot parse node selector")?
                }
                "annotations" => {
                    o.annotations = split_multi_values(v).context("cannot parse annotations")?
                }
                "labels" => {
                    o.labels = split_multi_values(v).context("cannot parse labels")?;
                    if o.labels.contains_key(LABEL_APP) {
                        bail!("the label {LABEL_APP:?} is reserved and cannot be customized");
                    }
                }
                "tolerations" => o.tolerations = parse_tolerations(v)?,
                "loadbalance" => {
                    o.loadbalance = match v.as_str() {
                        "sticky" => LoadBalance::Sticky,
                        "random" => LoadBalance::Random,
                        _ => bail!("invalid loadbalance {v:?}"),
                    }
                }
                "timeout" => {
                    let d = humantime::parse_duration(v)
                        .with_context(|| format!("cannot parse timeout {v:?}"))?;
                    o.timeout_secs = d.as_secs().max(1);
                }
                _ if k.starts_with("env.") => {
                    let name = &k["env.".len()..];
                    if name.is_empty() {
                        bail!("invalid env option {k:?}, expecting env.FOO=bar");
                    }
                    o.env.insert(name.to_string(), v.clone());
                }
                _ if NOT_YET.contains(&k.as_str()) => {
                    bail!("driver option {k} is not supported yet by the kubernetes driver")
                }
                _ => bail!("invalid driver option {k} for driver kubernetes"),
            }
        }
        Ok(o)
    }

    /// The namespace the objects live in (filled at create time).
    pub fn namespace(&self) -> &str {
        self.namespace.as_deref().unwrap_or("default")
    }

    /// The ConfigMap holding kilnd.toml.
    pub fn config_map_name(&self) -> String {
        format!("{}-config", self.deployment)
    }
}

/// buildx's `buildxNameToDeploymentName` (`_` becomes `-`), checked as a
/// Kubernetes object name: the Deployment's name is also the `app` label's
/// value and, with `-config`, the ConfigMap's name.
fn deployment_name(builder: &str) -> Result<String> {
    let name = builder.replace('_', "-");
    // Room for the ConfigMap's "-config" within a label's 63 characters.
    if name.len() > 63 - "-config".len() {
        bail!("builder name {builder:?} is too long for a Kubernetes object name (at most 56 characters)");
    }
    check_dns_label(&name, "builder name")
        .with_context(|| format!("builder name {builder:?} cannot name a Kubernetes Deployment"))?;
    Ok(name)
}

/// RFC 1123 label: lower-case alphanumerics and `-`, alphanumeric at both
/// ends, at most 63 characters.
fn check_dns_label(s: &str, what: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if !ok {
        bail!("invalid {what} {s:?}: lower-case letters, digits and '-', starting and ending with a letter or digit, at most 63 characters");
    }
    Ok(())
}

fn parse_bool(k: &str, v: &str) -> Result<bool> {
    // Go's strconv.ParseBool.
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => bail!("invalid value {v:?} for {k}: expected true or false"),
    }
}

/// A Kubernetes resource quantity (`500m`, `1.5`, `2Gi`, `1e3`), as
/// `resource.ParseQuantity` accepts it.
fn check_quantity(k: &str, v: &str) -> Result<()> {
    let bad = || {
        anyhow!("invalid quantity {v:?} for {k}: expected a number with an optional suffix (m, k, M, G, Ki, Mi, Gi, ...)")
    };
    let s = v.strip_prefix(['+', '-']).unwrap_or(v);
    let digits_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(digits_end);
    if num.is_empty() || num == "." || num.matches('.').count() > 1 {
        return Err(bad());
    }
    let suffix_ok = matches!(
        suffix,
        "" | "n"
            | "u"
            | "m"
            | "k"
            | "M"
            | "G"
            | "T"
            | "P"
            | "E"
            | "Ki"
            | "Mi"
            | "Gi"
            | "Ti"
            | "Pi"
            | "Ei"
    ) || suffix.strip_prefix(['e', 'E']).is_some_and(|e| {
        let e = e.strip_prefix(['+', '-']).unwrap_or(e);
        !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit())
    });
    if !suffix_ok {
        return Err(bad());
    }
    Ok(())
}

/// buildx's `splitMultiValues(v, ",", "=")`: `k=v,k2=v2`, the whole value
/// possibly in double quotes.
fn split_multi_values(v: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for kv in v.trim_matches('"').split(',') {
        let parts: Vec<&str> = kv.split('=').collect();
        if parts.len() != 2 {
            bail!("invalid key-value pair: {kv}");
        }
        out.insert(parts[0].to_string(), parts[1].to_string());
    }
    Ok(out)
}

/// buildx's tolerations: `;` between tolerations, `,` between fields.
fn parse_tolerations(v: &str) -> Result<Vec<Toleration>> {
    let mut out = Vec::new();
    for t in v.split(';') {
        let mut tol = Toleration::default();
        for kv in t.split(',') {
            let parts: Vec<&str> = kv.split('=').collect();
            // buildx ignores an item that is not `key=value`.
            let [k, val] = parts[..] else { continue };
            match k {
                "key" => tol.key = Some(val.to_string()),
                "operator" => tol.operator = Some(val.to_string()),
                "value" => tol.value = Some(val.to_string()),
                "effect" => tol.effect = Some(val.to_string()),
                "tolerationSeconds" => {
                    tol.toleration_seconds = Some(val.parse().map_err(|e| {
                        anyhow!("invalid tolerationSeconds {val:?} in tolerations: {e}")
                    })?)
                }
                _ => bail!("invalid tolaration {v:?}"),
            }
        }
        out.push(tol);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(kv: &[(&str, &str)]) -> Result<KubeOpts> {
        let m = kv
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        KubeOpts::parse("kube", &m)
    }

    fn err(kv: &[(&str, &str)]) -> String {
        format!("{:#}", parse(kv).expect_err("must fail"))
    }

    #[test]
    fn defaults_are_buildx_defaults() {
        let o = parse(&[]).expect("defaults");
        assert_eq!(o.deployment, "kube");
        assert_eq!(o.replicas, 1);
        assert_eq!(o.image, DEFAULT_IMAGE);
        assert_eq!(o.timeout_secs, 120);
        assert_eq!(o.loadbalance, LoadBalance::Sticky);
        assert_eq!(o.namespace, None);
        assert_eq!(o.config_map_name(), "kube-config");
    }

    #[test]
    fn every_option_lands_where_the_manifests_read_it() {
        let o = parse(&[
            ("namespace", "buildkit"),
            ("replicas", "2"),
            ("requests.cpu", "500m"),
            ("requests.memory", "1Gi"),
            ("requests.ephemeral-storage", "10G"),
            ("limits.cpu", "2"),
            ("limits.memory", "4Gi"),
            ("limits.ephemeral-storage", "20Gi"),
            ("nodeselector", "kubernetes.io/arch=amd64,disk=ssd"),
            (
                "tolerations",
                "key=a,operator=Equal,value=b,effect=NoSchedule;key=c,operator=Exists,tolerationSeconds=30",
            ),
            ("image", "registry.local/kilnd:1"),
            ("serviceaccount", "builder"),
            ("schedulername", "sched"),
            ("annotations", "\"a=1,b=2\""),
            ("labels", "team=x"),
            ("timeout", "5m"),
            ("loadbalance", "random"),
            ("rootless", "false"),
            ("env.KILND_LOG", "debug"),
        ])
        .expect("all options");
        assert_eq!(o.namespace(), "buildkit");
        assert_eq!(o.replicas, 2);
        assert_eq!(o.requests["cpu"], "500m");
        assert_eq!(o.requests["ephemeral-storage"], "10G");
        assert_eq!(o.limits["memory"], "4Gi");
        assert_eq!(o.node_selector["disk"], "ssd");
        assert_eq!(o.tolerations.len(), 2);
        assert_eq!(o.tolerations[0].effect.as_deref(), Some("NoSchedule"));
        assert_eq!(o.tolerations[1].toleration_seconds, Some(30));
        assert_eq!(o.image, "registry.local/kilnd:1");
        assert_eq!(o.service_account.as_deref(), Some("builder"));
        assert_eq!(o.annotations["b"], "2");
        assert_eq!(o.labels["team"], "x");
        assert_eq!(o.timeout_secs, 300);
        assert_eq!(o.loadbalance, LoadBalance::Random);
        assert_eq!(o.env["KILND_LOG"], "debug");
        // The stored form reads back the same.
        let json = serde_json::to_string(&o).expect("serialize");
        let back: KubeOpts = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, o);
    }

    #[test]
    fn bad_and_unsupported_options_fail_by_name() {
        assert!(err(&[("replicas", "two")]).contains("parsing \"two\""));
        assert!(err(&[("replicas", "0")]).contains("at least 1"));
        assert!(
            err(&[("requests.cpu", "lots")]).contains("invalid quantity \"lots\" for requests.cpu")
        );
        assert!(err(&[("limits.memory", "1Gb")]).contains("limits.memory"));
        assert_eq!(
            err(&[("loadbalance", "round")]),
            "invalid loadbalance \"round\""
        );
        assert!(err(&[("rootless", "true")]).contains("rootless=true is not supported yet"));
        assert!(err(&[("rootless", "maybe")]).contains("expected true or false"));
        assert!(err(&[("nodeselector", "a")])
            .contains("cannot parse node selector: invalid key-value pair: a"));
        assert!(err(&[("labels", "app=x")]).contains("\"app\" is reserved"));
        assert!(err(&[("tolerations", "color=red")]).contains("invalid tolaration"));
        assert!(err(&[("timeout", "soon")]).contains("cannot parse timeout"));
        assert!(err(&[("env.", "x")]).contains("expecting env.FOO=bar"));
        assert!(err(&[("namespace", "Build_Kit")]).contains("invalid namespace"));
        for k in NOT_YET {
            assert_eq!(
                err(&[(k, "1")]),
                format!("driver option {k} is not supported yet by the kubernetes driver")
            );
        }
        assert_eq!(
            err(&[("foo", "1")]),
            "invalid driver option foo for driver kubernetes"
        );
    }

    #[test]
    fn builder_names_become_deployment_names() {
        assert_eq!(deployment_name("my_builder").expect("ok"), "my-builder");
        assert!(deployment_name("a.b").is_err());
        assert!(deployment_name("x_").is_err());
        assert!(deployment_name(&"a".repeat(57)).is_err());
        assert!(deployment_name(&"a".repeat(56)).is_ok());
    }

    #[test]
    fn quantities_follow_kubernetes_syntax() {
        for ok in [
            "1",
            "0.5",
            "500m",
            "2Gi",
            "10G",
            "1e3",
            "+1",
            ".5",
            "128974848",
        ] {
            check_quantity("q", ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in ["", "Gi", "1.2.3", "1gb", "1 Gi", "e3", "1e"] {
            assert!(check_quantity("q", bad).is_err(), "{bad} accepted");
        }
    }
}
