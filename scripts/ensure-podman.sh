#!/usr/bin/env bash
# Sets up what the sandbox tests need, idempotently, on Debian 12 as root:
#  * Podman with runc and the cgroupfs manager, configured by a project-owned
#    containers.conf (passed through CONTAINERS_CONF, /etc is not edited);
#  * Podman's Docker-compatible API on a unix socket under the cache dir
#    (`podman system service --time=0`), for bollard;
#  * a Debian bookworm base image built with debootstrap and imported as
#    docker.io/library/debian:bookworm-slim (no registry is reachable);
#  * the real Claude Code CLI from npm, in the cache dir;
#  * $cache_root/sandbox.env, which the tests read.
# Called from scripts/test.sh; can be run on its own. Nothing goes inside the
# clone.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

claude_version=2.1.332
podman_dir=$cache_root/podman
socket=$podman_dir/podman.sock
conf=$podman_dir/containers.conf
claude_dir=$cache_root/claude-code/$claude_version
base_image=docker.io/library/debian:bookworm-slim

mkdir -p "$podman_dir"
# One setup at a time (several test runs may start together).
exec 9>"$podman_dir/setup.lock"
flock 9

ensure_debs podman runc slirp4netns debootstrap busybox-static curl openssl
# npm may come from elsewhere (e.g. NodeSource); install Debian's only when absent.
command -v npm >/dev/null 2>&1 || ensure_debs npm

cat >"$conf.tmp" <<'EOF'
# Written by airut's scripts/ensure-podman.sh; passed through CONTAINERS_CONF.
# runc: crun refuses hybrid cgroup v1/v2 machines. cgroupfs: no systemd
# scopes needed. ulimits: stay within the hard limits the machine allows.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
mv "$conf.tmp" "$conf"
export CONTAINERS_CONF=$conf

# The API service: start it unless one answers on the socket.
if ! curl -fsS --max-time 5 --unix-socket "$socket" http://d/_ping >/dev/null 2>&1; then
    say "starting podman system service on $socket"
    rm -f "$socket"
    # 9>&-: the service (and the conmon of every container it starts) must
    # not inherit the setup lock, or the next setup waits for ever.
    nohup podman system service --time=0 "unix://$socket" >"$podman_dir/service.log" 2>&1 9>&- &
    for _ in $(seq 1 100); do
        curl -fsS --max-time 2 --unix-socket "$socket" http://d/_ping >/dev/null 2>&1 && break
        sleep 0.2
    done
    curl -fsS --max-time 5 --unix-socket "$socket" http://d/_ping >/dev/null \
        || { say "podman service did not come up; see $podman_dir/service.log"; exit 1; }
fi

# The Debian base image, from the machine's own apt mirror.
if ! podman image exists "$base_image"; then
    mirror=$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' \
        | grep -v security | head -n1 || true)
    if [ -z "$mirror" ]; then
        mirror=$(grep -hsE '^deb ' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
            | grep -v security | awk '{print $2}' | head -n1 || true)
    fi
    [ -n "$mirror" ] || { say "no Debian mirror found in the apt sources"; exit 1; }
    say "building $base_image with debootstrap from $mirror"
    rootfs=$(mktemp -d "$podman_dir/rootfs.XXXXXX")
    debootstrap --variant=minbase --include=ca-certificates,curl,git bookworm "$rootfs" "$mirror" \
        >"$podman_dir/debootstrap.log" 2>&1 \
        || { say "debootstrap failed; see $podman_dir/debootstrap.log"; rm -rf "$rootfs"; exit 1; }
    tar -C "$rootfs" -c . | podman import - "$base_image" >/dev/null
    rm -rf "$rootfs"
fi

# The real Claude Code CLI (a native binary shipped in an npm package).
claude_bin=$claude_dir/node_modules/@anthropic-ai/claude-code-linux-x64/claude
if [ ! -x "$claude_bin" ]; then
    say "installing @anthropic-ai/claude-code@$claude_version from npm"
    mkdir -p "$claude_dir"
    npm install --silent --no-audit --no-fund --prefix "$claude_dir" \
        "@anthropic-ai/claude-code@$claude_version" >/dev/null
    [ -x "$claude_bin" ] || { say "npm did not install $claude_bin"; exit 1; }
fi

cat >"$cache_root/sandbox.env.tmp" <<EOF
DOCKER_HOST=unix://$socket
CONTAINERS_CONF=$conf
AIRUT_TEST_CLAUDE=$claude_bin
AIRUT_TEST_BUSYBOX=$(command -v busybox)
AIRUT_TEST_BASE_IMAGE=$base_image
EOF
mv "$cache_root/sandbox.env.tmp" "$cache_root/sandbox.env"
say "sandbox test setup ready ($cache_root/sandbox.env)"
