//! Shared parts of the email network tests: a private Dovecot per test,
//! channel settings pointing at it, test certificates, and mail that
//! passes (or fails) authentication.
//!
//! Dovecot runs from its Debian package (`scripts/ensure-dovecot.sh`
//! installs it) with its own config (`-c`), directories in a temp dir, a
//! high port on 127.0.0.1, a passwd-file with `{PLAIN}` passwords and a
//! static userdb as the `dovecot` user. It never touches the system's
//! Dovecot.

// Helpers here are not `#[test]` functions, which `allow-unwrap-in-tests`
// does not cover; a failed unwrap is a failed test.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use airut::channels::email::config::{Credentials, EmailSettings};
use airut::channels::email::tls::Trust;
use airut::channels::email::{Allowlist, ParseContext, TrustConfig};
use airut::config::Secret;
use airut::config::email::{ImapConfig, ImapMode, Security, SmtpConfig};
use airut::events::RepoId;
use async_imap::Client;
use futures_util::StreamExt as _;
use tokio::net::TcpStream;

/// Generous bound on any single wait: a hang fails, slowness does not.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The IMAP user every test Dovecot knows.
pub const USER: &str = "airut";
/// Its password.
pub const PASSWORD: &str = "correct horse";

/// A test CA and a leaf certificate for `localhost` and 127.0.0.1 (PEM).
pub struct TestCerts {
    /// The CA certificate (what clients trust).
    pub ca_pem: String,
    /// The server certificate.
    pub cert_pem: String,
    /// The server key.
    pub key_pem: String,
}

/// Options for a private Dovecot.
#[derive(Default, Clone)]
pub struct DovecotOptions {
    /// Serve TLS (imaps port and STARTTLS) with these certificates.
    pub tls: Option<Arc<TestCerts>>,
    /// Accept XOAUTH2 tokens by asking this introspection URL.
    pub oauth2_introspection_url: Option<String>,
}

/// A private Dovecot. Killed (its whole process group) on drop.
pub struct Dovecot {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Plain/STARTTLS port.
    pub port: u16,
    /// Implicit-TLS port (when TLS is configured).
    pub tls_port: u16,
    options: DovecotOptions,
}

// === impl TestCerts ===

impl TestCerts {
    /// Makes a fresh CA and a leaf signed by it.
    pub fn new() -> Arc<Self> {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "airut test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, &ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap()
            .signed_by(&leaf_key, &issuer)
            .unwrap();
        Arc::new(TestCerts {
            ca_pem: ca_cert.pem(),
            cert_pem: leaf.pem(),
            key_pem: leaf_key.serialize_pem(),
        })
    }

    /// A trust store with the public roots and this CA.
    pub fn trust(&self) -> Trust {
        Trust::from_pem(self.ca_pem.as_bytes()).unwrap()
    }
}

// === impl Dovecot ===

impl Dovecot {
    /// Starts a Dovecot with `options`; waits until it accepts connections.
    pub async fn start(options: DovecotOptions) -> Dovecot {
        assert!(
            Path::new("/usr/sbin/dovecot").exists(),
            "dovecot is not installed: run scripts/ensure-dovecot.sh (as root)"
        );
        let dir = tempfile::Builder::new()
            .prefix("airut-dovecot-")
            .tempdir()
            .unwrap();
        let mut d = Dovecot {
            dir,
            child: None,
            port: free_port(),
            tls_port: free_port(),
            options,
        };
        d.write_config();
        d.spawn().await;
        d
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write_config(&self) {
        use std::os::unix::fs::PermissionsExt;
        let root = self.dir.path();
        std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mail = self.path("mail");
        std::fs::create_dir_all(&mail).unwrap();
        let (uid, gid) = dovecot_ids();
        std::os::unix::fs::chown(&mail, Some(uid), Some(gid)).unwrap();
        std::fs::write(
            self.path("passwd"),
            format!("{USER}:{{PLAIN}}{PASSWORD}::::::\n"),
        )
        .unwrap();
        let r = root.display();
        let mut conf = format!(
            "base_dir = {r}/run\n\
             state_dir = {r}/state\n\
             log_path = {r}/dovecot.log\n\
             listen = 127.0.0.1\n\
             protocols = imap\n\
             disable_plaintext_auth = no\n\
             first_valid_uid = 100\n\
             default_login_user = dovenull\n\
             default_internal_user = dovecot\n\
             mail_location = maildir:{r}/mail/%u\n\
             passdb {{\n  driver = passwd-file\n  args = scheme=PLAIN username_format=%u {r}/passwd\n}}\n\
             userdb {{\n  driver = static\n  args = uid=dovecot gid=dovecot home={r}/mail/%u\n}}\n"
        );
        let mut mechanisms = "plain login".to_owned();
        if let Some(url) = &self.options.oauth2_introspection_url {
            mechanisms.push_str(" xoauth2 oauthbearer");
            std::fs::write(
                self.path("oauth2.conf"),
                format!(
                    "introspection_mode = post\n\
                     introspection_url = {url}\n\
                     username_attribute = username\n\
                     active_attribute = active\n\
                     active_value = true\n"
                ),
            )
            .unwrap();
            conf.push_str(&format!(
                "passdb {{\n  driver = oauth2\n  mechanisms = xoauth2 oauthbearer\n  args = {r}/oauth2.conf\n}}\n"
            ));
        }
        conf.push_str(&format!("auth_mechanisms = {mechanisms}\n"));
        match &self.options.tls {
            Some(certs) => {
                std::fs::write(self.path("cert.pem"), &certs.cert_pem).unwrap();
                std::fs::write(self.path("key.pem"), &certs.key_pem).unwrap();
                conf.push_str(&format!(
                    "ssl = yes\nssl_cert = <{r}/cert.pem\nssl_key = <{r}/key.pem\n\
                     service imap-login {{\n  inet_listener imap {{\n    address = 127.0.0.1\n    port = {}\n  }}\n  \
                     inet_listener imaps {{\n    address = 127.0.0.1\n    port = {}\n    ssl = yes\n  }}\n}}\n",
                    self.port, self.tls_port
                ));
            }
            None => conf.push_str(&format!(
                "ssl = no\n\
                 service imap-login {{\n  inet_listener imap {{\n    address = 127.0.0.1\n    port = {}\n  }}\n  \
                 inet_listener imaps {{\n    port = 0\n  }}\n}}\n",
                self.port
            )),
        }
        std::fs::write(self.path("dovecot.conf"), conf).unwrap();
    }

    async fn spawn(&mut self) {
        use std::os::unix::process::CommandExt;
        let child = Command::new("/usr/sbin/dovecot")
            .arg("-F")
            .arg("-c")
            .arg(self.path("dovecot.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.path("stderr.log")).unwrap())
            .process_group(0)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).await.is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("dovecot exited with {status}:\n{}", self.logs());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "dovecot did not listen on {}:\n{}",
                self.port,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its logs, for failure messages.
    pub fn logs(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.path(n)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("dovecot.log"))
    }

    /// SIGKILLs Dovecot and every process it started (its process group).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pgid = child.id();
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pgid}")])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same ports and mail store.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// A logged-in test client (plain, on the plain port).
    pub async fn client(&self) -> async_imap::Session<TcpStream> {
        let tcp = TcpStream::connect(("127.0.0.1", self.port)).await.unwrap();
        let mut client = Client::new(tcp);
        client.read_response().await.unwrap();
        client
            .login(USER, PASSWORD)
            .await
            .map_err(|(e, _)| e)
            .unwrap()
    }

    /// Delivers `raw` by IMAP APPEND, with `flags` (e.g. `(\Seen)`).
    pub async fn deliver(&self, raw: &[u8], flags: Option<&str>) {
        let mut s = self.client().await;
        s.append("INBOX", flags, None, raw).await.unwrap();
        s.logout().await.unwrap();
    }

    /// How many mails are in INBOX (deleted-but-not-expunged ones count).
    pub async fn count(&self) -> u32 {
        let mut s = self.client().await;
        let mailbox = s.examine("INBOX").await.unwrap();
        let _ = s.logout().await;
        mailbox.exists
    }

    /// Waits until INBOX is empty.
    pub async fn wait_empty(&self) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.count().await > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "INBOX was not emptied"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// UIDs currently in INBOX.
    pub async fn uids(&self) -> Vec<u32> {
        let mut s = self.client().await;
        s.examine("INBOX").await.unwrap();
        let mut uids: Vec<u32> = s.uid_search("ALL").await.unwrap().into_iter().collect();
        uids.sort_unstable();
        let mut fetched = s.uid_fetch("1:*", "UID").await.unwrap();
        while fetched.next().await.is_some() {}
        drop(fetched);
        let _ = s.logout().await;
        uids
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The uid and gid of the `dovecot` user.
fn dovecot_ids() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("dovecot:"))
        .expect("a dovecot user (installed with dovecot-core)");
    let fields: Vec<&str> = line.split(':').collect();
    (fields[2].parse().unwrap(), fields[3].parse().unwrap())
}

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Settings for a channel reading `imap` and sending through `smtp`.
pub fn settings(imap: ImapConfig, smtp: SmtpConfig, trust: Trust) -> Arc<EmailSettings> {
    Arc::new(EmailSettings {
        repo: RepoId("widgets".to_owned()),
        address: "airut@example.net".to_owned(),
        from: "Airut <airut@example.net>".to_owned(),
        imap,
        smtp,
        credentials: Credentials::Password {
            username: USER.to_owned(),
            password: Secret::new(PASSWORD),
        },
        trust,
        trust_config: TrustConfig {
            trusted_authserv_id: "mx.example.net".to_owned(),
            microsoft_internal_fallback: false,
        },
        allowlist: Allowlist::new(&["alice@example.com", "*@example.org"]).unwrap(),
        parse: ParseContext::for_test(),
        dashboard_url: Some("https://airut.example".to_owned()),
    })
}

/// IMAP settings for a test Dovecot.
pub fn imap(port: u16, security: Security, mode: ImapMode) -> ImapConfig {
    ImapConfig {
        host: if security == Security::Plain {
            "127.0.0.1".to_owned()
        } else {
            "localhost".to_owned()
        },
        port,
        security,
        mode,
        poll_interval: Duration::from_millis(500),
        idle_timeout: Duration::from_secs(25 * 60),
        mailbox: "INBOX".to_owned(),
    }
}

/// SMTP settings for a test receiver.
pub fn smtp(port: u16, security: Security) -> SmtpConfig {
    SmtpConfig {
        host: if security == Security::Plain {
            "127.0.0.1".to_owned()
        } else {
            "localhost".to_owned()
        },
        port,
        security,
    }
}

/// A mail from `from` that passes authentication at mx.example.net.
pub fn mail(from: &str, message_id: &str, subject: &str, body: &str) -> Vec<u8> {
    let domain = from.rsplit_once('@').map(|(_, d)| d).unwrap_or("");
    format!(
        "Authentication-Results: mx.example.net;\r\n dkim=pass header.i=@{domain};\r\n dmarc=pass header.from={domain}\r\n\
         From: Alice <{from}>\r\n\
         To: airut@example.net\r\n\
         Subject: {subject}\r\n\
         Message-ID: <{message_id}>\r\n\
         Date: Mon, 2 Mar 2026 10:15:00 -0800\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         {body}\r\n"
    )
    .into_bytes()
}
