//! kiln's client of the OCI distribution protocol: what kiln says to a
//! registry, and nothing about what it does with the answers.
//!
//! This crate owns: the registry settings of kilnd.toml ([`HostsConfig`],
//! BuildKit's `[registry."host"]` keys `mirrors`, `http`, `insecure`, `ca`,
//! `keypair`), the one rule for which endpoint a request goes to
//! ([`hosts::endpoints`]: mirrors first with `?ns=`, docker.io as
//! `registry-1.docker.io`, plain HTTP only for `http = true` and for
//! loopback hosts without `http = false`), the TLS config of each host
//! (rustls with the ring provider, the system roots plus the host's CAs,
//! its client certificate, or no verification for `insecure`), the auth protocol (Bearer tokens from the
//! `WWW-Authenticate` realm, identity tokens as OAuth2 refresh tokens,
//! Basic), where credentials come from ([`Credentials`]: docker's
//! config.json through `docker_credential`, or whatever kilnd's session
//! provides), and the requests themselves ([`Client`]): manifests by tag or
//! digest with verification, blobs streamed with Range resume, HEAD,
//! cross-repository mount, monolithic and chunked uploads, manifest PUT.
//!
//! Why the protocol is written here rather than taken from `oci-client`:
//! that crate cannot present a client certificate (BuildKit's `keypair`)
//! and folds a refused login into an anonymous retry, so a wrong password
//! would not surface as the 401 the user must see. The protocol part is
//! small; HTTP and TLS are `reqwest` and `rustls`.
//!
//! Architecture invariant: this crate knows nothing of containerd (no
//! content store, leases, images or labels beyond naming
//! [`source_label`]) and nothing of builds, progress or caches; it never
//! writes to disk and never retries on its own (callers decide, with
//! [`RegistryError::is_transient`] and a resume offset). Digest
//! verification of blobs is the caller's, when it commits them to a
//! content store; manifests are verified here because they are returned
//! whole.

mod auth;
mod client;
mod credentials;
mod error;
pub mod hosts;
mod tls;

pub use client::{
    source_label, BlobReader, Client, Resolved, CHUNK_SIZE, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_READ_TIMEOUT, MANIFEST_MEDIA_TYPES, MAX_MANIFEST_SIZE, MONOLITHIC_MAX, TIMEOUT_ENV,
};
pub use credentials::{docker_config_key, Anonymous, Credential, Credentials, DockerConfig};
pub use error::{RegistryError, Result};
pub use hosts::{HostConfig, HostsConfig, KeyPair};
pub use kiln_types::reference::{RefError, Reference};
