//! Email channel: IMAP in, SMTP out, DMARC-trusted senders. Filled by the email issue.
