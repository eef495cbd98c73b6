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
use kiln_solver::Digest;
use std::collections::HashMap;
use std::sync::Arc;
use tonic::Status;

/// A boolean exporter attribute as BuildKit reads it (`push` with an
/// empty value is `true`).
fn bool_attr(attrs: &HashMap<String, String>, key: &str) -> Result<bool, Status> {
    match attrs.get(key).map(String::as_str) {
        None | Some("false") | Some("0") => Ok(false),
        Some("" | "true" | "1") => Ok(true),
        Some(v) => Err(Status::invalid_argument(format!(
            "invalid {key}={v:?}: expected true or false"
        ))),
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

/// Pushes `exported` to every name, reporting to `job`'s Status.
pub async fn run(
    job: &Arc<Job>,
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
    // The push's vertices, numbered from 0 as the engine reports them.
    let digests: Vec<Digest> = (0..2 * names.len())
        .map(|i| Digest::of(format!("kiln-push:{}:{i}", job.id).as_bytes()))
        .collect();
    let inputs = vec![Vec::new(); digests.len()];
    let (progress, rx) = kiln_engine::progress::channel();
    let forward = tokio::spawn(crate::status::forward(
        rx,
        digests,
        inputs,
        Vec::new(),
        job.clone(),
    ));
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
        assert_eq!(e.message(), "invalid push=\"yes\": expected true or false");
        let e = options(&attrs(&[("push-by-digest", "true")])).expect_err("no push");
        assert_eq!(e.message(), "push-by-digest=true needs push=true");
    }
}
