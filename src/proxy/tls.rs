//! TLS termination with a per-task CA.
//!
//! Each task gets a fresh CA (ECDSA P-256, made with rcgen when the task's
//! proxy starts). Only its certificate leaves the server (mounted into the
//! container and installed by the init); the key stays in this struct and
//! dies with the task. Leaf certificates are minted on the first ClientHello
//! naming a host (SNI) and cached; one leaf key per task is reused for all
//! leaves, so minting is one signature.
//!
//! A ClientHello without SNI (a client dialling an IP address) gets no
//! certificate: the handshake fails, and `accept.rs` records it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// Most leaf certificates cached per task (a hostile agent could ask for
/// endless names; past this, leaves are minted but not kept).
const MAX_CACHED_LEAVES: usize = 4096;

/// The rustls crypto provider of the proxy (both sides): *ring*.
///
/// Chosen over aws-lc-rs for its small, quick build; rustls marks it
/// deprecated only because it lacks post-quantum key exchange, which
/// neither the loopback leg nor today's upstreams need (doc/security.md).
#[allow(deprecated)]
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: std::sync::OnceLock<Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

/// Why the task CA could not be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot create the task CA: {0}")]
pub struct CaError(String);

/// A task's CA and its leaf cache. Implements rustls's certificate resolver.
pub struct TaskCa {
    ca_params: CertificateParams,
    ca_key: KeyPair,
    ca_der: CertificateDer<'static>,
    ca_pem: String,
    leaf_key: KeyPair,
    signing_key: Arc<dyn rustls::sign::SigningKey>,
    leaves: Mutex<HashMap<String, Arc<CertifiedKey>>>,
}

impl std::fmt::Debug for TaskCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskCa").finish_non_exhaustive()
    }
}

// === impl TaskCa ===

impl TaskCa {
    /// Makes a new CA named after the task.
    pub fn new(label: &str) -> Result<TaskCa, CaError> {
        let err = |e: rcgen::Error| CaError(e.to_string());
        let ca_key = KeyPair::generate().map_err(err)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params
            .distinguished_name
            .push(DnType::CommonName, format!("airut task CA {label}"));
        ca_params
            .distinguished_name
            .push(DnType::OrganizationName, "airut network sandbox");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        ca_params.not_before = now - time::Duration::days(1);
        ca_params.not_after = now + time::Duration::days(30);
        let ca_cert = ca_params.self_signed(&ca_key).map_err(err)?;
        let leaf_key = KeyPair::generate().map_err(err)?;
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let signing_key = rustls::crypto::ring::sign::any_supported_type(&der)
            .map_err(|e| CaError(e.to_string()))?;
        Ok(TaskCa {
            ca_pem: ca_cert.pem(),
            ca_der: ca_cert.der().clone(),
            ca_params,
            ca_key,
            leaf_key,
            signing_key,
            leaves: Mutex::new(HashMap::new()),
        })
    }

    /// The CA certificate (PEM), for the container's trust store.
    pub fn certificate_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate (DER).
    pub fn certificate_der(&self) -> &CertificateDer<'static> {
        &self.ca_der
    }

    /// The leaf for `name`, from the cache or freshly minted.
    fn leaf(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.to_ascii_lowercase();
        if let Some(hit) = self.leaves.lock().ok()?.get(&name) {
            return Some(Arc::clone(hit));
        }
        let minted = match self.mint(&name) {
            Ok(k) => Arc::new(k),
            Err(e) => {
                tracing::warn!(host = %name, error = %e, "cannot mint a leaf certificate");
                return None;
            }
        };
        let mut leaves = self.leaves.lock().ok()?;
        if leaves.len() < MAX_CACHED_LEAVES {
            leaves.insert(name, Arc::clone(&minted));
        }
        Some(minted)
    }

    fn mint(&self, name: &str) -> Result<CertifiedKey, rcgen::Error> {
        let mut params = CertificateParams::new(vec![name.to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1);
        params.not_after = now + time::Duration::days(30);
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&self.leaf_key, &issuer)?;
        Ok(CertifiedKey::new(
            vec![cert.der().clone(), self.ca_der.clone()],
            Arc::clone(&self.signing_key),
        ))
    }

    /// A rustls server config presenting this CA's leaves, offering h2 and
    /// HTTP/1.1.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, CaError> {
        let provider = crypto_provider();
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| CaError(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}

impl ResolvesServerCert for TaskCa {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.leaf(hello.server_name()?)
    }
}
