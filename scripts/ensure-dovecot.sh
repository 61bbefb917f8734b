#!/usr/bin/env bash
# Installs Dovecot's IMAP server (Debian's dovecot-imapd) for the email tests.
# Idempotent. The tests start a private Dovecot per test with its own config
# (-c), so the system service is not needed: it is stopped and disabled when
# this script installs the package, and left as it is otherwise.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

if [ -x /usr/sbin/dovecot ] && id dovecot >/dev/null 2>&1 && id dovenull >/dev/null 2>&1; then
    exit 0
fi
ensure_debs dovecot-imapd
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet dovecot 2>/dev/null; then
    systemctl disable --now dovecot >/dev/null 2>&1 || true
fi
say "dovecot $(/usr/sbin/dovecot --version) installed"
