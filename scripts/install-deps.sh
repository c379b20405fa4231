#!/usr/bin/env bash
# Installs the Debian packages mdegate builds against, if any is missing:
# libcurl (the upstream transport), SQLite (the state store), pkg-config (how SwiftPM finds them)
# the curl command (the quick start uses it to talk to the socket) and the openssl command (the
# tests make a CA, server and client certificates with it).
set -euo pipefail

packages=(libcurl4-openssl-dev libsqlite3-dev pkg-config curl openssl)
# --tests: also Debian's PostgreSQL server, which the shared-quota tests start a throwaway
# instance of (initdb + pg_ctl in a temporary directory; no system service is used), and
# Debian's Prometheus: the metrics test starts a server that scrapes the daemon, and promtool
# checks the exposition and tests contrib/'s alert rules. Then the tools the tests run besides
# Swift (schemathesis, httpx, Node.js: scripts/install-test-tools.sh).
tests=false
if [ "${1:-}" = "--tests" ]; then
    tests=true
    packages+=(postgresql prometheus)
fi
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "Installing ${missing[*]} ..." >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if $tests; then
    "$(dirname "$0")/install-test-tools.sh"
fi
