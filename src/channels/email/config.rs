//! The email channel's runtime settings, made once from a repo's resolved
//! `email:` config ([`crate::config::email::EmailConfig`]): TLS trust,
//! credentials (password or an OAuth2 token source), the trust and
//! allowlist rules, and the parse context.
//!
//! Owns the step from "what the operator wrote" to "what the source and
//! sink need"; reads the CA file, nothing else. Called by [`super::spawn`]
//! (and by tests, which build settings for a private Dovecot directly).

use std::sync::Arc;

use super::oauth::TokenSource;
use super::tls::{TlsError, Trust};
use super::{Allowlist, ParseContext, TrustConfig};
use crate::config::Secret;
use crate::config::email::{EmailConfig, ImapConfig, SmtpConfig};
use crate::events::RepoId;

/// How airut logs in to IMAP and SMTP.
#[derive(Clone, Debug)]
pub enum Credentials {
    /// LOGIN (IMAP) / PLAIN or LOGIN (SMTP) with a password.
    Password {
        /// The login name.
        username: String,
        /// The password.
        password: Secret,
    },
    /// XOAUTH2 with a client-credentials token (Microsoft 365).
    OAuth2 {
        /// The mailbox's user name.
        username: String,
        /// Where tokens come from.
        tokens: TokenSource,
    },
}

/// Everything the email source and sink of one repo need.
#[derive(Clone, Debug)]
pub struct EmailSettings {
    /// The repo.
    pub repo: RepoId,
    /// airut's own address (lowercased).
    pub address: String,
    /// `From` of replies.
    pub from: String,
    /// The inbox.
    pub imap: ImapConfig,
    /// The outgoing server.
    pub smtp: SmtpConfig,
    /// Login.
    pub credentials: Credentials,
    /// Trusted certificates.
    pub trust: Trust,
    /// Authentication rules.
    pub trust_config: TrustConfig,
    /// Who may write.
    pub allowlist: Allowlist,
    /// Parsing limits and context.
    pub parse: ParseContext,
    /// Dashboard base URL, for links in acknowledgements.
    pub dashboard_url: Option<String>,
}

/// Why the channel could not be set up from its config.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// TLS trust could not be loaded (the CA file).
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The allowlist is unusable.
    #[error("authorized_senders: {0}")]
    Allowlist(String),
}

// === impl EmailSettings ===

impl EmailSettings {
    /// Settings for `repo` from its resolved config. `models` are the model
    /// names a sender may ask for by plus-addressing.
    pub fn from_config(
        repo: RepoId,
        config: &EmailConfig,
        models: Vec<String>,
        dashboard_url: Option<String>,
    ) -> Result<Arc<Self>, SetupError> {
        let trust = Trust::load(config.ca_file.as_deref())?;
        let credentials = match (&config.oauth2, &config.password) {
            (Some(o), _) => Credentials::OAuth2 {
                username: config.username.clone(),
                tokens: TokenSource::new(o.clone(), trust.clone()),
            },
            (None, Some(p)) => Credentials::Password {
                username: config.username.clone(),
                password: p.clone(),
            },
            (None, None) => Credentials::Password {
                username: config.username.clone(),
                password: Secret::new(""),
            },
        };
        let allowlist = Allowlist::new(&config.auth.authorized_senders)
            .map_err(|e| SetupError::Allowlist(e.to_string()))?;
        let domain = config
            .address
            .rsplit_once('@')
            .map(|(_, d)| d.to_owned())
            .unwrap_or_default();
        Ok(Arc::new(EmailSettings {
            repo,
            address: config.address.clone(),
            from: config.from.clone(),
            imap: config.imap.clone(),
            smtp: config.smtp.clone(),
            credentials,
            trust,
            trust_config: TrustConfig {
                trusted_authserv_id: config.auth.trusted_authserv_id.clone(),
                microsoft_internal_fallback: config.auth.microsoft_internal_fallback,
            },
            allowlist,
            parse: ParseContext {
                message_id_domain: domain,
                own_address: config.address.clone(),
                models,
                max_attachment_bytes: config.max_attachment_bytes,
                max_total_attachment_bytes: config.max_total_attachment_bytes,
                max_message_bytes: config.max_message_bytes,
            },
            dashboard_url,
        }))
    }

    /// The domain of our Message-IDs (that of the address).
    pub fn message_id_domain(&self) -> &str {
        &self.parse.message_id_domain
    }
}

// === impl Credentials ===

impl Credentials {
    /// The login name.
    pub fn username(&self) -> &str {
        match self {
            Credentials::Password { username, .. } | Credentials::OAuth2 { username, .. } => {
                username
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> EmailConfig {
        let text = format!(
            "config_version: 1\nrepos:\n  r:\n    repo_url: x\n    email:\n      address: airut@example.net\n      username: u\n      password: p\n      imap: {{host: imap.example.net}}\n      smtp: {{host: smtp.example.net}}\n      auth: {{trusted_authserv_id: mx.example.net, authorized_senders: [\"*@example.com\"]}}\n{extra}"
        );
        let loaded = crate::config::load_bytes(text.as_bytes(), "t.yaml", &|_| None).unwrap();
        loaded.config.repos["r"].email.clone().unwrap()
    }

    #[test]
    fn settings_from_config() {
        let s = EmailSettings::from_config(
            RepoId("r".to_owned()),
            &config(""),
            vec!["opus".to_owned()],
            None,
        )
        .unwrap();
        assert_eq!(s.message_id_domain(), "example.net");
        assert_eq!(s.parse.own_address, "airut@example.net");
        assert_eq!(s.parse.models, ["opus"]);
        assert!(
            matches!(&s.credentials, Credentials::Password { username, .. } if username == "u")
        );
        assert_eq!(s.credentials.username(), "u");
        assert_eq!(s.trust_config.trusted_authserv_id, "mx.example.net");

        let oauth =
            config("      microsoft_oauth2: {tenant_id: t, client_id: c, client_secret: s}\n");
        let s = EmailSettings::from_config(RepoId("r".to_owned()), &oauth, vec![], None).unwrap();
        assert!(matches!(s.credentials, Credentials::OAuth2 { .. }));
        let shown = format!("{s:?}");
        assert!(!shown.contains("client_secret: \"s\""), "{shown}");
    }

    #[test]
    fn a_missing_ca_file_is_a_setup_error() {
        let c = config("      ca_file: /nonexistent/ca.pem\n");
        let e = EmailSettings::from_config(RepoId("r".to_owned()), &c, vec![], None).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
    }
}
