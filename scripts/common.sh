# Shared by scripts/test.sh and scripts/run.sh: find the toolchain, install
# Debian packages the project needs, keep build caches outside the clone.
# Idempotent: a second run installs nothing.

set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache_root=${AIRUT_CACHE_DIR:-$HOME/.cache/airut-ci}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$cache_root/target}
mkdir -p "$cache_root"

say() { printf '==> %s\n' "$*" >&2; }

ensure_rust() {
    if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if ! command -v cargo >/dev/null 2>&1; then
        say "cargo not found: install Rust 1.95 or newer with rustup (Debian's rustc is too old)"
        exit 1
    fi
}

# ensure_debs PKG...: installs the Debian packages that are missing (as root).
ensure_debs() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        say "missing Debian packages: ${missing[*]} (run as root, or install them)"
        exit 1
    fi
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -qq
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}" >/dev/null
}
