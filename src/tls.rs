//! rustls configuration shared by the proxy, the simulator and the gateway client.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::aws_lc_rs;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// ALPN ids offered by our listeners: h2 first, HTTP/1.1 for everything else.
const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificate found", path.display()));
    }
    Ok(certs)
}

/// The TLS private key, read under the secret-file rules (`secret_file`).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = crate::secret_file::read(path, "TLS key")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| format!("{}: no usable private key: {e}", path.display()))
}

/// The server's cipher suites, in its order of preference. AES-128-GCM with SHA-256 first: as
/// strong as needed (Mozilla "intermediate", BoringSSL's own first choice) and its SHA-256 key
/// schedule runs on the CPU's SHA extensions, while SHA-384 has no such path on x86. A
/// handshake profile showed SHA-512 (for SHA-384) at 14% of a new connection's CPU when
/// clients that list AES-256 first got their way.
fn server_provider() -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::crypto::aws_lc_rs::cipher_suite as cs;
    Arc::new(rustls::crypto::CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        ..aws_lc_rs::default_provider()
    })
}

/// Server config: TLS 1.2 and 1.3 (rustls offers nothing older), h2 and HTTP/1.1 by ALPN, the
/// server's cipher-suite order.
pub fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(server_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not match or are unusable: {e}"))?;
    cfg.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    cfg.ignore_client_order = true;
    Ok(Arc::new(cfg))
}

pub fn server_config_from_files(cert: &Path, key: &Path) -> Result<Arc<rustls::ServerConfig>, String> {
    server_config(load_certs(cert)?, load_key(key)?)
}

/// The server's certificate, swappable while serving: a reload or a renewed certificate file
/// changes what new handshakes get; connections already open keep theirs.
#[derive(Debug)]
pub struct CertResolver(arc_swap::ArcSwap<CertifiedKey>);

impl CertResolver {
    pub fn new(key: CertifiedKey) -> Arc<Self> {
        Arc::new(Self(arc_swap::ArcSwap::from_pointee(key)))
    }

    pub fn replace(&self, key: CertifiedKey) {
        self.0.store(Arc::new(key));
    }

    /// The certificate served now (its leaf, for tests and logs).
    pub fn current(&self) -> Arc<CertifiedKey> {
        self.0.load_full()
    }
}

impl rustls::server::ResolvesServerCert for CertResolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

/// Reads a certificate chain and its key, and checks that they belong together, as
/// `with_single_cert` would: the one loading path of start-up, reload and file watching.
pub fn certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, String> {
    let certs = load_certs(cert)?;
    let der = load_key(key)?;
    let signing = server_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| format!("{}: unusable private key: {e}", key.display()))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match().map_err(|e| format!("{} and {} do not match: {e}", cert.display(), key.display()))?;
    Ok(ck)
}

/// Server config (as [`server_config`]) whose certificate comes from `resolver`.
pub fn server_config_with_resolver(resolver: Arc<CertResolver>) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(server_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    cfg.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    cfg.ignore_client_order = true;
    Ok(Arc::new(cfg))
}

/// Client config trusting exactly the CAs in `ca_file`. There is no "insecure" mode: gateways
/// with self-signed certificates are trusted by naming their certificate as the CA.
pub fn client_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, String> {
    let ca_file =
        ca_file.ok_or("gateway.ca_file is required: name the CA bundle that signed the gateway's certificate")?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in load_certs(ca_file)? {
        roots.add(cert).map_err(|e| format!("{}: {e}", ca_file.display()))?;
    }
    client_config_with_roots(roots)
}

pub fn client_config_with_roots(roots: rustls::RootCertStore) -> Result<rustls::ClientConfig, String> {
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
