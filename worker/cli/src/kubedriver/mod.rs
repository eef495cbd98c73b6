//! The kubernetes driver (buildx's `--driver kubernetes`): kilnd as a
//! Deployment with its kilnd.toml in a ConfigMap, reached through a pod
//! exec of `kilnd dial-stdio` (gRPC over the exec's stdin/stdout: no
//! Service, no open port).
//!
//! - `opts`: the `--driver-opt`s, checked as buildx checks them, stored in
//!   the builder's JSON file.
//! - `manifest`: the ConfigMap and Deployment they give.
//! - `cluster`: the API calls (kube-rs).
//! - `route`: which pod takes a build (sticky by context, or random).
//!
//! The rest of the CLI sees a kubernetes builder as an address,
//! `kubernetes://<builder>[?context=<key>]`, which [`connect`] turns into
//! a gRPC channel like any daemon's.

pub mod cluster;
pub mod manifest;
pub mod opts;
pub mod retry;
pub mod route;

use crate::builders::Store;
use anyhow::{anyhow, Context, Result};
use opts::LoadBalance;
use std::path::Path;

/// The scheme of a kubernetes builder's address.
pub const SCHEME: &str = "kubernetes://";

/// The address of builder `name` for a build of `context` (the sticky
/// routing key travels in it), or for a command with no context.
pub fn address(name: &str, context: Option<&Path>) -> String {
    match context {
        Some(c) => format!(
            "{SCHEME}{name}?context={}",
            route::context_key(&c.to_string_lossy())
        ),
        None => format!("{SCHEME}{name}"),
    }
}

/// The builder's name and the routing key of an address.
fn parse_address(addr: &str) -> Result<(&str, &str)> {
    let rest = addr
        .strip_prefix(SCHEME)
        .ok_or_else(|| anyhow!("{addr:?} is not a kubernetes builder's address"))?;
    Ok(match rest.split_once("?context=") {
        Some((name, key)) => (name, key),
        None => (rest, ""),
    })
}

/// Connects to a kilnd pod of the builder named in `addr`: the one its
/// routing picks among the running pods. With no running pod the builder
/// is bootstrapped first (as buildx does on first use).
pub async fn connect(addr: &str) -> Result<tonic::transport::Channel> {
    let (name, key) = parse_address(addr)?;
    let b = Store::from_env()?.get(name)?;
    let o = b
        .kubernetes
        .ok_or_else(|| anyhow!("builder {name:?} is not a kubernetes builder"))?;
    let cluster = cluster::Cluster::from_env().await?;
    let mut pods = cluster.running_pods(&o).await?;
    if pods.is_empty() {
        if cluster.deployed(&o).await? {
            cluster.wait_ready(&o).await?;
        } else {
            cluster.bootstrap(&o).await?;
        }
        pods = cluster.running_pods(&o).await?;
    }
    let pod = match o.loadbalance {
        LoadBalance::Sticky => route::sticky(key, &pods),
        LoadBalance::Random => route::random(&pods),
    }
    .ok_or_else(|| {
        anyhow!(
            "no running kilnd pods found for builder {name} in namespace {}",
            o.namespace()
        )
    })?;
    cluster
        .channel(&o, pod)
        .await
        .with_context(|| format!("builder {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_carry_the_builder_and_the_routing_key() {
        let a = address("kube", Some(Path::new("https://h/r.git#main")));
        let (name, key) = parse_address(&a).expect("parse");
        assert_eq!(name, "kube");
        assert_eq!(key, route::context_key("https://h/r.git"));
        assert_eq!(
            parse_address("kubernetes://kube").expect("parse"),
            ("kube", "")
        );
        assert!(parse_address("unix:///x").is_err());
    }
}
