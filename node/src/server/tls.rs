//! TLS on the node's own listener (rustls with the ring provider): when `--tls-cert` and `--tls-key` are set,
//! every connection must complete a TLS handshake (bounded by the handshake timeout) before HTTP is read, so REST
//! is `https://` and WebSockets are `wss://`; a plain-TCP client gets no HTTP answer.
//!
//! Only HTTP/1.1 is offered in ALPN: the WebSocket upgrade is an HTTP/1.1 mechanism and the node serves nothing
//! else.

use crate::error::Error;
use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Reads the PEM certificate chain and private key and builds the acceptor. The error names the file and the
/// problem, so a bad setting stops the node at start-up.
pub fn acceptor(cert_path: &Path, key_path: &Path) -> Result<TlsAcceptor, Error> {
    let cert_pem = std::fs::read(cert_path)
        .map_err(|e| Error::Config(format!("reading --tls-cert {}: {e}", cert_path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("parsing --tls-cert {}: {e}", cert_path.display())))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "--tls-cert {} holds no CERTIFICATE",
            cert_path.display()
        )));
    }
    let key_pem = std::fs::read(key_path)
        .map_err(|e| Error::Config(format!("reading --tls-key {}: {e}", key_path.display())))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| Error::Config(format!("parsing --tls-key {}: {e}", key_path.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS protocol versions: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            Error::Config(format!(
                "--tls-cert and --tls-key do not make a usable pair: {e}"
            ))
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
