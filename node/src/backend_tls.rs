//! TLS from the node to what it depends on — Postgres, Redis and the push webhook — with rustls (ring).
//!
//! One builder makes every client configuration: the trust anchors are the configured CA bundle (PEM) or, without
//! one, the system's trust store; a client certificate and key are presented when configured; and how much of the
//! server's certificate is checked is a `Verify` (Postgres' `sslmode` picks it; Redis and the webhook always check
//! everything). Every refused server certificate is logged with the backend's name and counted in
//! `im_backend_tls_failures_total{backend}`, so a wrong CA or an expired certificate is visible at once, also when
//! it happens on a reconnect long after start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// The PEM files of one backend's TLS settings.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// Trust anchors for the server's certificate; the system's trust store when unset.
    pub ca: Option<PathBuf>,
    /// A client certificate chain to present (mutual TLS), with `key`.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Nothing: the traffic is encrypted, the server is not authenticated (Postgres `prefer`/`require` without a
    /// CA file, as libpq does). The handshake's signatures are still checked.
    Nothing,
    /// The chain up to a trust anchor, validity dates included; not the host name (`verify-ca`).
    Chain,
    /// The chain and that the certificate names the host connected to (`verify-full`).
    Full,
}

/// Builds a client configuration for `backend` ("postgres", "redis", "push": the name in logs and the metric
/// label). The error names the backend, the setting's file and the problem.
pub fn client_config(
    backend: &'static str,
    files: &TlsFiles,
    verify: Verify,
) -> Result<rustls::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let inner = match verify {
        Verify::Nothing => None,
        Verify::Chain | Verify::Full => {
            let roots = Arc::new(roots(backend, files.ca.as_deref())?);
            let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| format!("{backend} TLS: no usable trust anchors: {e}"))?;
            Some(verifier)
        }
    };
    let verifier = Arc::new(CountingVerifier {
        backend,
        inner,
        provider: provider.clone(),
        verify,
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("{backend} TLS: protocol versions: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            let chain = certificates(backend, cert)?;
            let key_pem = std::fs::read(key).map_err(|e| {
                format!(
                    "{backend} TLS: reading the client key {}: {e}",
                    key.display()
                )
            })?;
            let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
                format!(
                    "{backend} TLS: parsing the client key {}: {e}",
                    key.display()
                )
            })?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("{backend} TLS: client certificate and key do not fit: {e}"))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(format!(
            "{backend} TLS: a client certificate and its key go together"
        )),
    }
}

/// The configured CA bundle, or the system's trust store.
fn roots(backend: &str, ca: Option<&Path>) -> Result<rustls::RootCertStore, String> {
    let mut store = rustls::RootCertStore::empty();
    match ca {
        Some(path) => {
            for cert in certificates(backend, path)? {
                store.add(cert).map_err(|e| {
                    format!(
                        "{backend} TLS: a certificate in {} is no CA: {e}",
                        path.display()
                    )
                })?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(format!(
                    "{backend} TLS: no CA file configured and no certificate in the system's trust store ({:?})",
                    found.errors
                ));
            }
        }
    }
    Ok(store)
}

/// Every CERTIFICATE of a PEM file; an error when there is none.
fn certificates(backend: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("{backend} TLS: reading {}: {e}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{backend} TLS: parsing {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{backend} TLS: {} holds no CERTIFICATE",
            path.display()
        ));
    }
    Ok(certs)
}

/// Whether an error (or anything in its source chain) is a failed TLS handshake, and if so its rustls reason.
/// rustls errors travel inside `std::io::Error`s, whose `source` skips the wrapped error, hence `get_ref`.
pub fn tls_failure(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(inner) = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(inner.to_string());
        }
        current = error.source();
    }
    None
}

/// webpki's verifier, relaxed as `verify` says, logging and counting every refusal.
#[derive(Debug)]
struct CountingVerifier {
    backend: &'static str,
    /// None with `Verify::Nothing`.
    inner: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
    verify: Verify,
}

impl ServerCertVerifier for CountingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(inner) = &self.inner else {
            return Ok(ServerCertVerified::assertion());
        };
        let result =
            inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        match result {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if self.verify == Verify::Chain => Ok(ServerCertVerified::assertion()),
            Err(error) => {
                ::metrics::counter!("im_backend_tls_failures_total", "backend" => self.backend)
                    .increment(1);
                tracing::error!(
                    backend = self.backend,
                    server = ?server_name,
                    %error,
                    "TLS: the server's certificate was refused"
                );
                Err(error)
            }
            ok => ok,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_are_named() {
        let files = TlsFiles {
            ca: Some("/nonexistent/ca.pem".into()),
            ..TlsFiles::default()
        };
        let error = client_config("postgres", &files, Verify::Full).unwrap_err();
        assert!(
            error.contains("postgres TLS") && error.contains("/nonexistent/ca.pem"),
            "{error}"
        );
        let half = TlsFiles {
            cert: Some("c.pem".into()),
            ..TlsFiles::default()
        };
        // The CA is read first; with the system store the half client pair is refused.
        if let Err(error) = client_config("redis", &half, Verify::Full) {
            assert!(error.contains("redis TLS"), "{error}");
        }
    }

    #[test]
    fn tls_failures_are_found_inside_io_errors() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer),
        );
        assert!(tls_failure(&io).is_some_and(|reason| reason.contains("UnknownIssuer")));
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(tls_failure(&plain), None);
    }
}
