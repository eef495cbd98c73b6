//! The objects the kubernetes driver creates: a ConfigMap holding
//! kilnd.toml and a Deployment of kilnd, as JSON in the shape the API
//! server takes (and `kubectl apply` would). buildx's driver
//! (`driver/kubernetes/manifest/manifest.go`) is the model; what differs
//! is what kilnd needs that buildkitd does not:
//!
//! - kilnd builds in a containerd; the pod uses its node's
//!   (`/run/containerd` and `/var/lib/containerd` from the host, in the
//!   containerd namespace `kiln`, not the kubelet's `k8s.io`), as the
//!   node-local DaemonSet in deploy/kubernetes does. So the pod is
//!   privileged and its state directory is on the host with bidirectional
//!   mount propagation: containerd and the runc shim on the node resolve
//!   the mounts kilnd hands them. Each pod has a state directory of its
//!   own (`/var/lib/kiln/pods/<pod>`), so replicas on one node do not
//!   share one.
//! - kilnd's socket is in an emptyDir at its default path: only
//!   `kilnd dial-stdio`, run by a pod exec, reaches it. No Service, no
//!   port.
//! - The probes run `kilnd dial-stdio` with an empty stdin: it succeeds
//!   when the daemon accepts a connection, and needs no shell in the image.
//!
//! buildx puts `requests.ephemeral-storage` among the limits (a bug);
//! kiln puts it among the requests.

use super::opts::{KubeOpts, LABEL_APP};
use serde_json::{json, Map, Value};

/// The container's name in the pod (the exec targets it).
pub const CONTAINER: &str = "kilnd";
/// Marks the objects kiln made (`app.kubernetes.io/managed-by`).
pub const MANAGED_BY: &str = "kiln";
/// The containerd namespace a driver's kilnd builds in.
pub const CONTAINERD_NAMESPACE: &str = "kiln";

const PROBE_COMMAND: [&str; 2] = ["kilnd", "dial-stdio"];

/// The ConfigMap, then the Deployment: the order they are created in.
pub fn manifests(o: &KubeOpts) -> [Value; 2] {
    [config_map(o), deployment(o)]
}

/// kilnd's configuration file.
pub fn kilnd_toml() -> String {
    format!(
        r#"# kilnd in a pod of kiln's kubernetes driver: the node's containerd,
# in a namespace of kiln's own; the socket is reached by pod exec of
# `kilnd dial-stdio`.
[grpc]
address = ["unix:///run/kiln/kilnd.sock"]

[containerd]
address = "/run/containerd/containerd.sock"
namespace = "{CONTAINERD_NAMESPACE}"

[worker]
# Steps share the pod's network namespace (the pod is their sandbox on
# the cluster network); the node's CNI setup is not kilnd's to change.
network = "host"
"#
    )
}

/// The labels on both objects and the pods: `app=<deployment>` (which the
/// selector and routing use), kiln's mark, then the user's `labels`.
pub fn labels(o: &KubeOpts) -> Map<String, Value> {
    let mut m = Map::new();
    for (k, v) in &o.labels {
        m.insert(k.clone(), json!(v));
    }
    m.insert(LABEL_APP.into(), json!(o.deployment));
    m.insert("app.kubernetes.io/managed-by".into(), json!(MANAGED_BY));
    m
}

/// The label selector of the builder's pods, as the API's query string
/// takes it.
pub fn selector(o: &KubeOpts) -> String {
    format!("{LABEL_APP}={}", o.deployment)
}

fn annotations(o: &KubeOpts) -> Map<String, Value> {
    o.annotations
        .iter()
        .map(|(k, v)| (k.clone(), json!(v)))
        .collect()
}

fn metadata(o: &KubeOpts, name: &str) -> Value {
    let mut m = json!({
        "name": name,
        "namespace": o.namespace(),
        "labels": labels(o),
    });
    if !o.annotations.is_empty() {
        m["annotations"] = Value::Object(annotations(o));
    }
    m
}

pub fn config_map(o: &KubeOpts) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata(o, &o.config_map_name()),
        "data": { "kilnd.toml": kilnd_toml() },
    })
}

fn probe() -> Value {
    // buildx's thresholds.
    json!({
        "exec": { "command": PROBE_COMMAND },
        "failureThreshold": 3,
        "initialDelaySeconds": 5,
        "periodSeconds": 30,
        "successThreshold": 1,
        "timeoutSeconds": 60,
    })
}

fn container(o: &KubeOpts) -> Value {
    let mut env = vec![json!({
        "name": "POD_NAME",
        "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } },
    })];
    env.extend(o.env.iter().map(|(k, v)| json!({ "name": k, "value": v })));
    let mut c = json!({
        "name": CONTAINER,
        "image": o.image,
        "args": [
            "--config", "/etc/kiln/kilnd.toml",
            // Kubernetes expands $(POD_NAME) from the env above.
            "--root", "/var/lib/kiln/pods/$(POD_NAME)",
        ],
        "env": env,
        "securityContext": { "privileged": true, "runAsUser": 0 },
        "readinessProbe": probe(),
        "livenessProbe": probe(),
        "volumeMounts": [
            { "name": "config", "mountPath": "/etc/kiln", "readOnly": true },
            { "name": "containerd-socket", "mountPath": "/run/containerd" },
            { "name": "containerd-root", "mountPath": "/var/lib/containerd",
              "mountPropagation": "Bidirectional" },
            { "name": "kiln-root", "mountPath": "/var/lib/kiln",
              "mountPropagation": "Bidirectional" },
            { "name": "kiln-run", "mountPath": "/run/kiln" },
        ],
    });
    let mut resources = Map::new();
    if !o.requests.is_empty() {
        resources.insert("requests".into(), json!(o.requests));
    }
    if !o.limits.is_empty() {
        resources.insert("limits".into(), json!(o.limits));
    }
    if !resources.is_empty() {
        c["resources"] = Value::Object(resources);
    }
    c
}

pub fn deployment(o: &KubeOpts) -> Value {
    let mut pod_meta = json!({ "labels": labels(o) });
    if !o.annotations.is_empty() {
        pod_meta["annotations"] = Value::Object(annotations(o));
    }
    let mut spec = json!({
        "containers": [container(o)],
        // kilnd cancels and waits for running builds on SIGTERM.
        "terminationGracePeriodSeconds": 90,
        "volumes": [
            { "name": "config", "configMap": { "name": o.config_map_name() } },
            { "name": "containerd-socket",
              "hostPath": { "path": "/run/containerd", "type": "Directory" } },
            { "name": "containerd-root",
              "hostPath": { "path": "/var/lib/containerd", "type": "Directory" } },
            { "name": "kiln-root",
              "hostPath": { "path": "/var/lib/kiln", "type": "DirectoryOrCreate" } },
            { "name": "kiln-run", "emptyDir": {} },
        ],
    });
    if let Some(sa) = &o.service_account {
        spec["serviceAccountName"] = json!(sa);
    }
    if let Some(s) = &o.scheduler_name {
        spec["schedulerName"] = json!(s);
    }
    if !o.node_selector.is_empty() {
        spec["nodeSelector"] = json!(o.node_selector);
    }
    if !o.tolerations.is_empty() {
        spec["tolerations"] = Value::Array(
            o.tolerations
                .iter()
                .map(|t| {
                    let mut m = Map::new();
                    let mut put = |k: &str, v: &Option<String>| {
                        if let Some(v) = v {
                            m.insert(k.into(), json!(v));
                        }
                    };
                    put("key", &t.key);
                    put("operator", &t.operator);
                    put("value", &t.value);
                    put("effect", &t.effect);
                    if let Some(s) = t.toleration_seconds {
                        m.insert("tolerationSeconds".into(), json!(s));
                    }
                    Value::Object(m)
                })
                .collect(),
        );
    }
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata(o, &o.deployment),
        "spec": {
            "replicas": o.replicas,
            "selector": { "matchLabels": { LABEL_APP: o.deployment } },
            "template": { "metadata": pod_meta, "spec": spec },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn opts(kv: &[(&str, &str)]) -> KubeOpts {
        let m: BTreeMap<String, String> = kv
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        KubeOpts::parse("kube_1", &m).expect("options")
    }

    #[test]
    fn defaults_give_one_privileged_kilnd_on_the_nodes_containerd() {
        let o = opts(&[]);
        let [cm, d] = manifests(&o);
        assert_eq!(cm["metadata"]["name"], "kube-1-config");
        assert_eq!(cm["metadata"]["namespace"], "default");
        let toml = cm["data"]["kilnd.toml"].as_str().expect("toml");
        assert!(toml.contains("namespace = \"kiln\""), "{toml}");
        assert_eq!(d["metadata"]["name"], "kube-1");
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["selector"]["matchLabels"]["app"], "kube-1");
        assert_eq!(d["spec"]["template"]["metadata"]["labels"]["app"], "kube-1");
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["name"], CONTAINER);
        assert_eq!(c["image"], crate::kubedriver::opts::DEFAULT_IMAGE);
        assert_eq!(c["securityContext"]["privileged"], true);
        assert_eq!(c["readinessProbe"]["exec"]["command"][1], "dial-stdio");
        assert!(c.get("resources").is_none());
        let spec = &d["spec"]["template"]["spec"];
        assert_eq!(spec["volumes"][0]["configMap"]["name"], "kube-1-config");
        assert!(spec.get("nodeSelector").is_none());
    }

    #[test]
    fn options_reach_the_pod_template() {
        let o = opts(&[
            ("namespace", "buildkit"),
            ("replicas", "3"),
            ("requests.cpu", "500m"),
            ("limits.memory", "4Gi"),
            ("nodeselector", "disk=ssd"),
            ("tolerations", "key=a,operator=Exists,tolerationSeconds=9"),
            ("serviceaccount", "sa"),
            ("annotations", "x=1"),
            ("labels", "team=t"),
            ("env.KILND_LOG", "debug"),
        ]);
        let d = deployment(&o);
        assert_eq!(d["metadata"]["namespace"], "buildkit");
        assert_eq!(d["spec"]["replicas"], 3);
        let spec = &d["spec"]["template"]["spec"];
        let c = &spec["containers"][0];
        assert_eq!(c["resources"]["requests"]["cpu"], "500m");
        assert_eq!(c["resources"]["limits"]["memory"], "4Gi");
        assert_eq!(c["env"][1], json!({"name": "KILND_LOG", "value": "debug"}));
        assert_eq!(spec["nodeSelector"]["disk"], "ssd");
        assert_eq!(
            spec["tolerations"][0],
            json!({"key": "a", "operator": "Exists", "tolerationSeconds": 9})
        );
        assert_eq!(spec["serviceAccountName"], "sa");
        assert_eq!(d["metadata"]["annotations"]["x"], "1");
        assert_eq!(spec.get("schedulerName"), None);
        assert_eq!(d["spec"]["template"]["metadata"]["labels"]["team"], "t");
        assert_eq!(d["spec"]["template"]["metadata"]["annotations"]["x"], "1");
        assert_eq!(selector(&o), "app=kube-1");
    }
}
