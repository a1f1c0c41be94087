//! TLS for client connections (rustls): loading the configured certificate
//! and key into a server config.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Load a PEM certificate chain and private key. On error, returns which
/// config key is at fault ("cert" or "key") and why.
pub fn load_server_config(
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ServerConfig>, (&'static str, String)> {
    let cert_pem = std::fs::read(cert)
        .map_err(|e| ("cert", format!("cannot read {}: {e}", cert.display())))?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| {
            (
                "cert",
                format!("{} is not a valid PEM certificate: {e}", cert.display()),
            )
        })?;
    if certs.is_empty() {
        return Err((
            "cert",
            format!("{} contains no certificate", cert.display()),
        ));
    }
    let key_pem =
        std::fs::read(key).map_err(|e| ("key", format!("cannot read {}: {e}", key.display())))?;
    let key_der: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| {
            (
                "key",
                format!("{} is not a valid PEM key: {e}", key.display()),
            )
        })?
        .ok_or_else(|| ("key", format!("{} contains no private key", key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ("cert", e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| ("key", format!("does not match the certificate: {e}")))?;
    Ok(Arc::new(config))
}
