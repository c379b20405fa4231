#!/usr/bin/env bash
# Installs the tools the tests run besides Swift, if missing or not at the pinned versions:
# the Python packages of scripts/test-requirements.txt (schemathesis, openapi-spec-validator,
# httpx) in a virtual environment of the checkout's own, .build/test-python (Debian's Python
# refuses pip installs into the system, PEP 668), and Node.js from Debian when no `node` is on
# PATH (the README's Node example). Quick when everything is there: it compares the requirements
# with those the environment was made from.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
apt_install() {
    echo "Installing $* ..." >&2
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

command -v node >/dev/null || apt_install nodejs

requirements=scripts/test-requirements.txt
environment=.build/test-python
stamp="$environment/requirements.installed"
if [ -x "$environment/bin/python" ] && cmp -s "$requirements" "$stamp"; then
    exit 0
fi
python=/usr/bin/python3
if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
    apt_install python3 python3-venv
fi
echo "Installing $(grep -v '^#' "$requirements" | xargs) into $environment ..." >&2
rm -rf "$environment"
mkdir -p .build
"$python" -m venv "$environment"
"$environment/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
cp "$requirements" "$stamp"
