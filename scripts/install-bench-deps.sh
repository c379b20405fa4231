#!/usr/bin/env bash
# Installs what `make bench` needs: the build's Debian packages and PostgreSQL's server, which the
# `shared` scenario starts a throwaway instance of (scripts/install-deps.sh --tests), plus
# nginx-light, whose nginx is the latency scenario's anchor (proxy_pass on a Unix socket; the
# benchmark starts and stops its own nginx). Skipped when an nginx is already installed.
# Note: installing the package also enables Debian's own nginx service (port 80) where systemd runs.
set -euo pipefail

"$(dirname "$0")/install-deps.sh" --tests

if dpkg-query -W -f='${Status}' nginx-light 2>/dev/null | grep -q "install ok installed" \
    || command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ]; then
    exit 0
fi

echo "Installing nginx-light ..." >&2
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends nginx-light >/dev/null
