#!/usr/bin/env bash
# The unit and integration suites on a sanitizer build: AddressSanitizer (with LeakSanitizer) by
# default, ThreadSanitizer with SANITIZER=thread. Arguments go to `swift test` (e.g. --filter).
#
# Every process built here reports to one directory instead of its stderr: the test runner, and
# the mdegate and mde-simulator children the integration tests start (the harness passes its
# environment on). A report in any of them fails the run, even when the test that started the
# process passed, e.g. a command expected to exit with status 1 that died of an ASan report.
set -euo pipefail
cd "$(dirname "$0")/.."

sanitizer="${SANITIZER:-address}"
case "$sanitizer" in
    address) scratch=.build-asan ;;
    thread) scratch=.build-tsan ;;
    *) echo "SANITIZER must be 'address' or 'thread', not '$sanitizer'" >&2; exit 64 ;;
esac
flags=(--sanitize="$sanitizer" --scratch-path "$scratch")

# The sanitizer runtimes ship with the Swift toolchain (lib/swift/clang/lib/linux); only the
# test suite's own Debian packages are needed.
scripts/install-deps.sh --tests
swift build --build-tests "${flags[@]}"
bin="$(swift build --show-bin-path "${flags[@]}")"

reports="$PWD/$scratch/sanitizer-reports"
rm -rf "$reports"
mkdir -p "$reports"

# The toolchain's symbolizer, so that reports carry function names and lines.
symbolizer="$(dirname "$(readlink -f "$(command -v swift)")")/llvm-symbolizer"
[ -x "$symbolizer" ] || symbolizer="$(command -v llvm-symbolizer || true)"

# The tests run the sanitizer build's daemon and simulator, never .build's.
export MDEGATE_BIN_DIR="$bin"
# The harness waits this many times longer for a line, an exit or a state, and each test's
# time limit grows as much (processes start and answer 2-5 times slower under ASan, more under
# TSan); no test judges a duration by it.
if [ "$sanitizer" = address ]; then default_scale=4; else default_scale=8; fi
export MDEGATE_TEST_TIME_SCALE="${MDEGATE_TEST_TIME_SCALE:-$default_scale}"
# The sanitizer prints the stacks. Swift's own backtracer would start on the abort that ends a
# report, and its memory server's reads are what ASan calls wild: a second, false report, and
# up to 30 s of waiting per process.
export SWIFT_BACKTRACE=enable=no

if [ "$sanitizer" = address ]; then
    # abort_on_error: a report ends the process with SIGABRT, which no test mistakes for an
    # expected exit status (`mdegate check-config` exits 1 on a bad file; so would ASan).
    # detect_leaks: LeakSanitizer runs when a process exits normally (the daemon on SIGTERM,
    # every command, the test runner); see docs/architecture.md, "Sanitizers".
    export ASAN_OPTIONS="log_path=$reports/asan:abort_on_error=1:halt_on_error=1:detect_leaks=1:detect_stack_use_after_return=1:malloc_context_size=60${symbolizer:+:external_symbolizer_path=$symbolizer}"
    export LSAN_OPTIONS="suppressions=$PWD/scripts/sanitizers/lsan.supp:print_suppressions=0"
else
    # halt_on_error=0: every race is reported, not only the first; a process that reported one
    # exits with status 66 at its end.
    export TSAN_OPTIONS="log_path=$reports/tsan:halt_on_error=0:second_deadlock_stack=1:history_size=4${symbolizer:+:external_symbolizer_path=$symbolizer}"
fi

status=0
swift test --skip-build "${flags[@]}" "$@" || status=$?

# One file per process that reported (<tool>.<pid>).
found=0
for report in "$reports"/*; do
    [ -e "$report" ] || continue
    found=$((found + 1))
    echo "=== $report" >&2
    swift demangle --simplified < "$report" >&2
done
if [ "$found" -gt 0 ]; then
    echo "test-sanitizers: $found process(es) reported under $sanitizer sanitizer; reports in $reports" >&2
    [ "$status" -ne 0 ] || status=1
elif [ "$status" -eq 0 ]; then
    echo "test-sanitizers: $sanitizer sanitizer: the suites passed and no process reported" >&2
fi
exit "$status"
