//! A test PKI for kilnd's TLS tests: a CA, a server certificate for
//! localhost and client certificates by subject CN, as PEM files.

use std::path::{Path, PathBuf};

/// A test CA with a server certificate for localhost and client
/// certificates by subject CN, as PEM files.
pub struct Pki {
    dir: PathBuf,
    /// The CA certificate (PEM file path).
    pub ca: String,
    /// The server certificate and key for `localhost` (PEM file paths).
    pub server: (String, String),
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl Pki {
    /// A new CA and server certificate, written under `dir`.
    pub fn new(dir: PathBuf) -> Pki {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
        std::fs::create_dir_all(&dir).expect("mkdir");
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // Distinct subjects: with rcgen's default name on both, OpenSSL
        // (curl) takes the server certificate for a self-signed one.
        ca_params.distinguished_name = rcgen::DistinguishedName::new();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kiln test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().expect("key");
        let mut server = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        server.distinguished_name = rcgen::DistinguishedName::new();
        server
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        let server = server.signed_by(&key, &issuer).expect("server cert");
        let ca = write(&dir, "ca.pem", ca_cert.pem());
        let server = (
            write(&dir, "server.pem", server.pem()),
            write(&dir, "server-key.pem", key.serialize_pem()),
        );
        Pki {
            dir,
            ca,
            server,
            issuer,
        }
    }

    /// A client certificate with subject CN `cn` (its SAN is another name,
    /// so only the CN can match): (cert, key) paths.
    pub fn client(&self, cn: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec![format!("{cn}.clients.test")]).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).expect("client cert");
        (
            write(&self.dir, &format!("{cn}.pem"), cert.pem()),
            write(&self.dir, &format!("{cn}-key.pem"), key.serialize_pem()),
        )
    }
}

/// Writes `body` to `dir/name` and returns the path as text.
pub fn write(dir: &Path, name: &str, body: String) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write");
    p.to_str().expect("utf8").to_string()
}

/// A free loopback TCP port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port()
}
