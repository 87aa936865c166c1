//! HTTPS: the certificate and key of `--tls-cert` and `--tls-key`, loaded once at start, and the
//! acceptor that runs each connection's handshake, offering HTTP/2 and HTTP/1.1 by ALPN.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};
pub use tokio_rustls::TlsAcceptor;

use crate::config::Config;

/// Longest time a client may take over its handshake: one that never finishes must not hold a
/// connection.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The protocols offered by ALPN, preferred first: HTTP/2 lets a client hold many streams on
/// one connection.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The acceptor the settings ask for: `None` for plain HTTP (neither flag).
///
/// # Errors
/// One line: only one of the two flags, a file that cannot be read or holds no PEM certificate
/// or key, or a key that does not match the certificate.
pub fn acceptor(config: &Config) -> Result<Option<TlsAcceptor>, String> {
    match (&config.tls_cert, &config.tls_key) {
        (None, None) => Ok(None),
        (Some(_), None) => {
            Err("--tls-cert needs --tls-key (the certificate's private key, PEM)".to_owned())
        }
        (None, Some(_)) => {
            Err("--tls-key needs --tls-cert (the certificate chain, PEM)".to_owned())
        }
        (Some(cert), Some(key)) => load(cert, key).map(Some),
    }
}

fn load(cert_path: &Path, key_path: &Path) -> Result<TlsAcceptor, String> {
    let cert_shown = cert_path.display();
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read the certificate --tls-cert {cert_shown}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("--tls-cert {cert_shown} holds no PEM certificate"));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
        format!(
            "cannot read the private key --tls-key {}: {e}",
            key_path.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("--tls-cert {cert_shown} and its --tls-key: {e}"))?;
    server.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(TlsAcceptor::from(Arc::new(server)))
}
