//! HTTPS: which certificate authorities a client trusts, and how a failed TLS handshake is told
//! apart from a failure that may pass.
//!
//! By default a client trusts the system's CA certificates (Debian's `ca-certificates`, as curl
//! does). A server whose certificate a private CA signed is reached by giving that CA as PEM
//! ([`trust`]): it is then trusted instead of the system's, so a private deployment is not also
//! open to any certificate a public CA would sign for the name.
//!
//! A handshake that fails (a certificate this client does not trust, a name it does not cover,
//! a port that does not speak TLS) fails the same way every time: the request is refused at
//! once ([`crate::Refusal::Tls`]) rather than retried until the attempts run out.

use std::error::Error as StdError;

use reqwest::{Certificate, ClientBuilder};

use crate::error::Error;

/// `builder`, trusting the CA certificates in `ca_pem` (one or more PEM certificates) instead of
/// the system's; `None` leaves the system's.
///
/// # Errors
/// [`Error::Invalid`] when `ca_pem` holds no PEM certificate, or one that cannot be read.
pub fn trust(builder: ClientBuilder, ca_pem: Option<&[u8]>) -> Result<ClientBuilder, Error> {
    let Some(pem) = ca_pem else {
        return Ok(builder);
    };
    let certificates = Certificate::from_pem_bundle(pem)
        .map_err(|e| Error::Invalid(format!("the CA is not PEM certificates: {e}")))?;
    if certificates.is_empty() {
        return Err(Error::Invalid(
            "the CA holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into(),
        ));
    }
    Ok(certificates
        .into_iter()
        .fold(builder.tls_built_in_root_certs(false), |builder, ca| {
            builder.add_root_certificate(ca)
        }))
}

/// Reads a CA file for [`trust`] (the tools' `--ca FILE`).
///
/// # Errors
/// A one-line message naming the file when it cannot be read or holds no PEM certificate.
pub fn read_ca(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("cannot read the CA file {}: {e}", path.display()))?;
    match Certificate::from_pem_bundle(&pem) {
        Ok(certificates) if !certificates.is_empty() => Ok(pem),
        _ => Err(format!(
            "the CA file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )),
    }
}

/// Whether `err` is a TLS handshake that failed: rustls's error somewhere in its causes.
pub(crate) fn is_handshake_failure(err: &reqwest::Error) -> bool {
    holds_rustls_error(err)
}

/// Whether `err` or one of its causes is rustls's error. hyper wraps it in `io::Error`s (two
/// deep), whose `source()` skips the error each holds, so those are looked into as well.
fn holds_rustls_error(err: &(dyn StdError + 'static)) -> bool {
    if err.is::<rustls::Error>() {
        return true;
    }
    let held = err
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::get_ref);
    if held.is_some_and(|held| holds_rustls_error(held)) {
        return true;
    }
    err.source().is_some_and(holds_rustls_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_must_hold_a_certificate() {
        let empty = trust(reqwest::Client::builder(), Some(b"not a certificate"));
        assert!(matches!(empty, Err(Error::Invalid(why)) if why.contains("no PEM certificate")));
        let broken = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        assert!(matches!(
            trust(reqwest::Client::builder(), Some(broken)),
            Err(Error::Invalid(_))
        ));
        assert!(trust(reqwest::Client::builder(), None).is_ok());
    }

    #[tokio::test]
    async fn a_port_that_does_not_speak_tls_fails_the_handshake() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let plain = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut hello = [0u8; 512];
            let _ = socket.read(&mut hello).await;
            // A plain HTTP server's answer to a ClientHello.
            let _ = socket
                .write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                .await;
        });
        let err = reqwest::Client::new()
            .get(format!("https://127.0.0.1:{port}/"))
            .send()
            .await
            .expect_err("no TLS on that port");
        assert!(is_handshake_failure(&err), "{err:?}");
        plain.await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_connection_is_no_handshake_failure() {
        // A port that was just free: nothing listens on it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = reqwest::Client::new()
            .get(format!("https://127.0.0.1:{port}/"))
            .send()
            .await
            .expect_err("nothing listens");
        assert!(!is_handshake_failure(&err), "{err:?}");
    }
}
