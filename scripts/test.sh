#!/usr/bin/env bash
# The whole test suite: unit and property tests of the core, configuration tests, and
# integration tests that run the real daemon and simulator over the real Unix socket.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh --tests
# The integration tests start the mdegate and mde-simulator binaries: build them first.
swift build
swift test "$@"
