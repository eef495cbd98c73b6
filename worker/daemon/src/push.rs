//! The image exporter's `push=true`: the exported image pushed by the
//! engine (`kiln_engine::push`) with the client's credentials (through its
//! session, [`crate::registry::SessionCredentials`]), its progress shown as
//! BuildKit shows it (`pushing layers`, `pushing manifest for NAME`).

use crate::jobs::Job;
use crate::sessions::SessionHandle;
use crate::state::status_of;
use kiln_engine::build::Solved;
use kiln_engine::export::Exported;
use kiln_engine::push::PushOptions;
use kiln_engine::ProgressEvent;
use std::collections::HashMap;
use std::sync::Arc;
use tonic::Status;

/// A boolean exporter attribute as BuildKit reads it (`push` with an
/// empty value is `true`; absent is `false`).
fn bool_attr(attrs: &HashMap<String, String>, key: &str) -> Result<bool, Status> {
    match attrs.get(key) {
        None => Ok(false),
        Some(v) => kiln_engine::exporter_options::bool_option(key, v)
            .map_err(|e| Status::invalid_argument(e.to_string())),
    }
}

/// The push an image exporter's attributes ask for (`push`,
/// `push-by-digest`, `registry.insecure`), or `None`. The two modifiers
/// without `push=true` are refused rather than ignored.
pub fn options(attrs: &HashMap<String, String>) -> Result<Option<PushOptions>, Status> {
    let push = bool_attr(attrs, "push")?;
    let by_digest = bool_attr(attrs, "push-by-digest")?;
    let insecure = bool_attr(attrs, "registry.insecure")?;
    if !push {
        for (set, key) in [
            (by_digest, "push-by-digest"),
            (insecure, "registry.insecure"),
        ] {
            if set {
                return Err(Status::invalid_argument(format!(
                    "{key}=true needs push=true"
                )));
            }
        }
        return Ok(None);
    }
    Ok(Some(PushOptions {
        by_digest,
        insecure,
        ..Default::default()
    }))
}

/// Pushes `exported` to every name, reporting to `job`'s Status as items
/// of the exporter's vertex `vertex`, as BuildKit's image exporter does:
/// `pushing layers`, then `pushing manifest for NAME@DIGEST`.
pub async fn run(
    job: &Arc<Job>,
    vertex: &str,
    session: Option<&SessionHandle>,
    solved: &Solved,
    exported: &Exported,
    names: &[String],
    opts: &PushOptions,
) -> Result<(), Status> {
    if names.is_empty() {
        return Err(Status::invalid_argument(
            "push=true needs a name to push to (name=REGISTRY/REPOSITORY:TAG)",
        ));
    }
    let (progress, mut rx) = kiln_engine::progress::channel();
    let digest = exported.manifest.digest().to_string();
    let (job2, vertex) = (job.clone(), vertex.to_string());
    let forward = tokio::spawn(async move {
        let mut started: HashMap<usize, std::time::SystemTime> = HashMap::new();
        // The engine's steps of the push become the vertex's items; the
        // bytes of each blob and the registry's answers are not shown, as
        // BuildKit does not show them.
        let item = |name: &str| match name.strip_prefix("pushing manifest for ") {
            Some(n) => format!("pushing manifest for {n}@{digest}"),
            None => name.to_string(),
        };
        while let Some(e) = rx.recv().await {
            match e {
                ProgressEvent::Started {
                    vertex: v,
                    name,
                    at,
                } => {
                    started.insert(v, at);
                    crate::status::step_item(&job2, &vertex, &item(&name), at, None);
                }
                ProgressEvent::Completed {
                    vertex: v,
                    name,
                    at,
                    ..
                } => {
                    let from = started.get(&v).copied().unwrap_or(at);
                    crate::status::step_item(&job2, &vertex, &item(&name), from, Some(at));
                }
                _ => {}
            }
        }
    });
    let creds = Arc::new(crate::registry::SessionCredentials::new(session));
    let pushed = solved
        .push(exported, names, opts, creds, &progress, 0)
        .await;
    drop(progress);
    let _ = forward.await;
    pushed.map(|_| ()).map_err(|e| status_of(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn push_attributes_as_buildkit_reads_them() {
        assert_eq!(options(&attrs(&[])).expect("none"), None);
        assert_eq!(options(&attrs(&[("push", "false")])).expect("off"), None);
        assert_eq!(
            options(&attrs(&[("push", "")])).expect("bare push"),
            Some(PushOptions::default())
        );
        assert_eq!(
            options(&attrs(&[
                ("push", "true"),
                ("push-by-digest", "true"),
                ("registry.insecure", "true")
            ]))
            .expect("all"),
            Some(PushOptions {
                by_digest: true,
                insecure: true,
                ..Default::default()
            })
        );
        let e = options(&attrs(&[("push", "yes")])).expect_err("bad bool");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            e.message(),
            "non-bool value specified for push: strconv.ParseBool: parsing \"yes\": invalid syntax"
        );
        let e = options(&attrs(&[("push-by-digest", "true")])).expect_err("no push");
        assert_eq!(e.message(), "push-by-digest=true needs push=true");
    }
}
