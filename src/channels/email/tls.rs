//! TLS for the email channel: one rustls client configuration (public
//! roots from webpki-roots, plus an optional private CA file) for IMAP, and
//! the matching parameters for lettre's SMTP client.
//!
//! Owns which certificates are trusted. Must never turn verification off:
//! there is no "accept invalid certificates" switch; a self-hosted server
//! with a private CA is configured with `email.ca_file`. Called by
//! [`super::source`] and [`super::sink`].

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};

/// Why TLS could not be set up. The message names the file or host.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file could not be read or holds no PEM certificate. Check
    /// `email.ca_file`.
    #[error("CA file {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The host is not a valid TLS server name.
    #[error("{0:?} is not a valid TLS server name")]
    ServerName(String),
    /// rustls or lettre refused the configuration.
    #[error("TLS setup: {0}")]
    Setup(String),
}

/// Trusted roots for one channel: the public web PKI plus the PEM
/// certificates of `ca_file`.
#[derive(Clone, Debug, Default)]
pub struct Trust {
    /// Extra certificates, DER.
    extra: Vec<CertificateDer<'static>>,
    /// The PEM bytes of the CA file (lettre takes PEM).
    extra_pem: Vec<Vec<u8>>,
}

// === impl Trust ===

impl Trust {
    /// Public roots only.
    pub fn public() -> Self {
        Trust::default()
    }

    /// Public roots plus the certificates in `ca_file`, if given.
    pub fn load(ca_file: Option<&Path>) -> Result<Self, TlsError> {
        let Some(path) = ca_file else {
            return Ok(Trust::public());
        };
        let pem = std::fs::read(path).map_err(|e| TlsError::CaFile {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Trust::from_pem(&pem).map_err(|reason| TlsError::CaFile {
            path: path.display().to_string(),
            reason,
        })
    }

    /// Public roots plus the certificates in these PEM bytes.
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        let mut extra = Vec::new();
        let mut extra_pem = Vec::new();
        for cert in rustls_pemfile::certs(&mut &pem[..]) {
            let cert = cert.map_err(|e| format!("not PEM: {e}"))?;
            let mut block = b"-----BEGIN CERTIFICATE-----\n".to_vec();
            block.extend(wrap64(&base64_encode(&cert)));
            block.extend(b"-----END CERTIFICATE-----\n");
            extra_pem.push(block);
            extra.push(cert);
        }
        if extra.is_empty() {
            return Err("holds no PEM certificate".to_owned());
        }
        Ok(Trust { extra, extra_pem })
    }

    /// A rustls client configuration trusting these roots.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in &self.extra {
            roots
                .add(cert.clone())
                .map_err(|e| TlsError::Setup(format!("CA certificate refused: {e}")))?;
        }
        // ring, not aws-lc-rs: it builds without cmake and quickly on small
        // machines (the same provider lettre uses). Its lack of post-quantum
        // key exchange is why it is marked deprecated.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }

    /// lettre's TLS parameters for `host`, trusting these roots.
    pub fn smtp_parameters(
        &self,
        host: &str,
    ) -> Result<lettre::transport::smtp::client::TlsParameters, TlsError> {
        use lettre::transport::smtp::client::{Certificate, CertificateStore, TlsParameters};
        let mut builder = TlsParameters::builder(host.to_owned())
            .certificate_store(CertificateStore::WebpkiRoots);
        for pem in &self.extra_pem {
            let cert = Certificate::from_pem(pem).map_err(|e| TlsError::Setup(e.to_string()))?;
            builder = builder.add_root_certificate(cert);
        }
        builder
            .build_rustls()
            .map_err(|e| TlsError::Setup(e.to_string()))
    }
}

/// The TLS server name for `host` (a DNS name or an IP address).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
    )
    .map_err(|_| TlsError::ServerName(host.to_owned()))
}

fn base64_encode(data: &[u8]) -> Vec<u8> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]);
            } else {
                out.push(b'=');
            }
        }
    }
    out
}

fn wrap64(b64: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b64.len() + b64.len() / 64 + 1);
    for line in b64.chunks(64) {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_known_values() {
        assert_eq!(base64_encode(b""), b"");
        assert_eq!(base64_encode(b"f"), b"Zg==");
        assert_eq!(base64_encode(b"fo"), b"Zm8=");
        assert_eq!(base64_encode(b"foo"), b"Zm9v");
        assert_eq!(base64_encode(b"foobar"), b"Zm9vYmFy");
    }

    #[test]
    fn junk_ca_files_are_clear_errors() {
        assert!(Trust::from_pem(b"not a certificate").is_err());
        assert!(Trust::from_pem(b"").is_err());
        let dir = tempfile::tempdir().unwrap();
        let e = Trust::load(Some(&dir.path().join("missing.pem"))).unwrap_err();
        assert!(e.to_string().contains("missing.pem"), "{e}");
        assert!(Trust::public().client_config().is_ok());
    }
}
