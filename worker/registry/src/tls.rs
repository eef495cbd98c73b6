//! The rustls client config of one registry host: the system roots plus
//! the host's `ca` files, its client `keypair`, or no verification at all
//! for `insecure = true`. Built here (ring provider) and handed to reqwest,
//! so kiln decides what is trusted, not a TLS backend's defaults.

use crate::error::{RegistryError, Result};
use crate::hosts::HostsConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::Path;
use std::sync::{Arc, OnceLock};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The system's trust roots, read once per process (they are files under
/// /etc/ssl; unreadable ones are skipped, as Go's `SystemCertPool` does).
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!(error = %e, "skipping a system trust root");
        }
        found.certs
    })
}

/// The TLS config for requests to `host` (as contacted, `host[:port]`).
pub(crate) fn client_config(hosts: &HostsConfig, host: &str) -> Result<ClientConfig> {
    let cfg = hosts.settings(host);
    let file_err = |what: &'static str, path: &Path, message: String| RegistryError::TlsFile {
        host: host.to_string(),
        what,
        path: path.to_path_buf(),
        message,
    };
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| RegistryError::Tls {
            host: host.to_string(),
            detail: e.to_string(),
        })?;
    let builder = if cfg.is_some_and(|c| c.insecure) {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
    } else {
        let mut roots = RootCertStore::empty();
        let (_added, _ignored) = roots.add_parsable_certificates(system_roots().iter().cloned());
        for ca in cfg.map(|c| c.ca.as_slice()).unwrap_or(&[]) {
            let certs = CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| file_err("ca", ca, e.to_string()))?;
            if certs.is_empty() {
                return Err(file_err("ca", ca, "no PEM certificate in the file".into()));
            }
            for c in certs {
                roots
                    .add(c)
                    .map_err(|e| file_err("ca", ca, format!("not a usable CA certificate: {e}")))?;
            }
        }
        builder.with_root_certificates(roots)
    };
    let mut config = match cfg.and_then(|c| c.keypair.first()) {
        Some(kp) => {
            let certs = CertificateDer::pem_file_iter(&kp.cert)
                .and_then(|it| it.collect::<std::result::Result<Vec<_>, _>>())
                .map_err(|e| file_err("keypair cert", &kp.cert, e.to_string()))?;
            if certs.is_empty() {
                return Err(file_err(
                    "keypair cert",
                    &kp.cert,
                    "no PEM certificate in the file".into(),
                ));
            }
            let key = PrivateKeyDer::from_pem_file(&kp.key)
                .map_err(|e| file_err("keypair key", &kp.key, e.to_string()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| file_err("keypair", &kp.cert, e.to_string()))?
        }
        None => builder.with_no_client_auth(),
    };
    // HTTP/1.1 only: one connection per transfer, as BuildKit does for
    // registries (HTTP/2 flow control limits single-stream throughput).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// `insecure = true`: any certificate is accepted (signatures are still
/// checked so the handshake is well-formed).
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hosts::{HostConfig, KeyPair};

    fn hosts(host: &str, cfg: HostConfig) -> HostsConfig {
        HostsConfig {
            hosts: [(host.to_string(), cfg)].into_iter().collect(),
        }
    }

    #[test]
    fn bad_files_name_the_key_and_host() {
        let dir = std::env::temp_dir().join(format!("kiln-registry-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tempdir");
        let junk = dir.join("junk.pem");
        std::fs::write(&junk, "not pem\n").expect("write");
        let err = client_config(
            &hosts(
                "r:5000",
                HostConfig {
                    ca: vec![junk.clone()],
                    ..Default::default()
                },
            ),
            "r:5000",
        )
        .expect_err("no cert");
        assert_eq!(
            err.to_string(),
            format!(
                "{}: ca of [registry.\"r:5000\"]: no PEM certificate in the file",
                junk.display()
            )
        );
        let missing = dir.join("missing.pem");
        let err = client_config(
            &hosts(
                "r:5000",
                HostConfig {
                    keypair: vec![KeyPair {
                        key: missing.clone(),
                        cert: missing.clone(),
                    }],
                    ..Default::default()
                },
            ),
            "r:5000",
        )
        .expect_err("missing");
        assert!(
            err.to_string().starts_with(&format!(
                "{}: keypair cert of [registry.\"r:5000\"]",
                missing.display()
            )),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn defaults_build_and_speak_http1() {
        let cfg = client_config(&HostsConfig::default(), "example.com").expect("builds");
        assert_eq!(cfg.alpn_protocols, [b"http/1.1".to_vec()]);
    }
}
