//! The built-in `dockerfile.v0` frontend: reads the Dockerfile and
//! `.dockerignore` from the client's session, fetches the context with
//! those exclusions, and emits the graph.

use crate::jobs::Job;
use crate::sessions::SessionHandle;
use crate::state::{status_of, Daemon};
use kiln_dockerfile::BuildOptions;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use tonic::Status;

/// The frontend's output: the graph and where the context landed.
pub struct Frontend {
    pub build: kiln_dockerfile::Build,
    pub context: PathBuf,
}

fn fetch_err(name: &str, e: kiln_session::SessionError) -> Status {
    Status::new(
        e.kind().code(),
        format!("failed to read local {name:?}: {e}"),
    )
}

/// Runs the Dockerfile frontend with BuildKit's frontend attributes.
pub async fn dockerfile(
    d: &Daemon,
    job: &Job,
    session: &SessionHandle,
    attrs: &HashMap<String, String>,
) -> Result<Frontend, Status> {
    let filename = attrs
        .get("filename")
        .filter(|f| !f.is_empty())
        .cloned()
        .unwrap_or_else(|| "Dockerfile".into());
    let df_local = attrs
        .get("dockerfilekey")
        .cloned()
        .unwrap_or_else(|| "dockerfile".into());
    let ctx_local = attrs
        .get("contextkey")
        .cloned()
        .unwrap_or_else(|| "context".into());
    let base = crate::solve::job_dir(d, job);
    let df_dir = base.join("dockerfile");
    let ctx_dir = base.join("context");
    for dir in [&df_dir, &ctx_dir] {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).map_err(|e| Status::internal(e.to_string()))?;
    }
    let load_name = format!("[internal] load build definition from {filename}");
    let load_started = std::time::SystemTime::now();
    crate::status::step(job, &load_name, load_started, None, None);
    let ignore_name = format!("{filename}.dockerignore");
    kiln_session::filesync::fetch_dir(
        session.channel.clone(),
        &df_local,
        &[],
        &[],
        &[filename.clone(), ignore_name.clone()],
        &df_dir,
    )
    .await
    .map_err(|e| fetch_err(&df_local, e))?;
    let df_path = df_dir.join(&filename);
    let src = std::fs::read_to_string(&df_path).map_err(|_| {
        Status::not_found(format!(
            "failed to read dockerfile: open {filename}: no such file or directory"
        ))
    })?;
    crate::status::step(
        job,
        &load_name,
        load_started,
        Some(std::time::SystemTime::now()),
        None,
    );
    // .dockerignore: next to the Dockerfile (<name>.dockerignore) first,
    // then the context's.
    let mut ignore_text = std::fs::read_to_string(df_dir.join(&ignore_name)).ok();
    if ignore_text.is_none() {
        let probe = base.join("dockerignore");
        let _ = std::fs::remove_dir_all(&probe);
        std::fs::create_dir_all(&probe).map_err(|e| Status::internal(e.to_string()))?;
        kiln_session::filesync::fetch_dir(
            session.channel.clone(),
            &ctx_local,
            &[],
            &[],
            &[".dockerignore".to_string()],
            &probe,
        )
        .await
        .map_err(|e| fetch_err(&ctx_local, e))?;
        ignore_text = std::fs::read_to_string(probe.join(".dockerignore")).ok();
        let _ = std::fs::remove_dir_all(&probe);
    }
    let excludes = ignore_text
        .map(|t| kiln_worker::ignore::parse_dockerignore(&t))
        .unwrap_or_default();
    kiln_session::filesync::fetch_dir(
        session.channel.clone(),
        &ctx_local,
        &[],
        &excludes,
        &[],
        &ctx_dir,
    )
    .await
    .map_err(|e| fetch_err(&ctx_local, e))?;

    let mut build_args = BTreeMap::new();
    let mut labels = BTreeMap::new();
    for (k, v) in attrs {
        if let Some(a) = k.strip_prefix("build-arg:") {
            build_args.insert(a.to_string(), v.clone());
        } else if let Some(l) = k.strip_prefix("label:") {
            labels.insert(l.to_string(), v.clone());
        }
    }
    let (no_cache, no_cache_filter) = match attrs.get("no-cache") {
        None => (false, Vec::new()),
        Some(v) if v.is_empty() => (true, Vec::new()),
        Some(v) => (false, v.split(',').map(|s| s.trim().to_string()).collect()),
    };
    let platform = kiln_worker::oci::host_platform();
    let opts = BuildOptions {
        filename: filename.clone(),
        target: attrs.get("target").filter(|t| !t.is_empty()).cloned(),
        build_args,
        labels,
        excludes,
        context_name: "context".into(),
        no_cache,
        no_cache_filter,
        platform_os: platform.os,
        platform_arch: platform.architecture,
    };
    let df = kiln_dockerfile::parse(&src, &filename)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    let mut bases = BTreeMap::new();
    for image in df
        .base_images(&opts)
        .map_err(|e| Status::invalid_argument(e.to_string()))?
    {
        let cfg = d
            .engine
            .image_config(&image)
            .await
            .map_err(|e| status_of(&e))?;
        bases.insert(image, cfg);
    }
    let build = kiln_dockerfile::to_graph(&df, &opts, &bases)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    Ok(Frontend {
        build,
        context: ctx_dir,
    })
}
