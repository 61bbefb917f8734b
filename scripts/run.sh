#!/usr/bin/env bash
# Builds airut (release) and runs the server on its built-in defaults
# (or on $XDG_CONFIG_HOME/airut/airut.yaml when it exists). Extra arguments
# go to `airut run`.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
cd "$repo_root"

ensure_rust
ensure_debs git ca-certificates
cargo build --locked --release --bin airut
# The sandbox init, linked statically, beside airut (where `airut run` looks
# for it; see doc/deployment.md).
cargo rustc --locked --release --bin airut-init -- -C target-feature=+crt-static
exec "$CARGO_TARGET_DIR/release/airut" run "$@"
