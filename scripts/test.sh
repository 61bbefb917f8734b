#!/usr/bin/env bash
# The whole test suite: installs what the tests need (Debian 12, as root),
# then lints and runs every test. This is what .ci/run calls.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$repo_root"

ensure_rust
ensure_debs git ca-certificates
bash "$repo_root/scripts/ensure-dovecot.sh"
# Podman, its API socket, the Debian base image and Claude Code for the
# sandbox tests (idempotent).
"$repo_root/scripts/ensure-podman.sh"
# The dashboard's browser test drives Debian's Chromium over WebDriver.
ensure_debs chromium chromium-driver

say "cargo fmt --check"
cargo fmt --all -- --check
say "cargo clippy (target dir: $CARGO_TARGET_DIR)"
cargo clippy --locked --all-targets -- -D warnings
say "cargo test"
cargo test --locked -- --test-threads=2
