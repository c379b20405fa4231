#!/usr/bin/env bash
# Coverage-guided fuzzing with libFuzzer (`make fuzz`): builds the targets of the Fuzz/ package
# with -sanitize=fuzzer,address and runs each for a bounded time on a copy of its seed corpus.
#
#   FUZZ_SECONDS=120   seconds per target (libFuzzer's -max_total_time)
#   FUZZ_TARGETS="FuzzRequest FuzzConfig"
#   FUZZ_JOBS=1        parallel fuzzing processes per target (-fork=N when above 1)
#   FUZZ_WORK=.build-fuzz/runs  where corpora, logs and crash inputs go (git-ignored)
#   FUZZ_ARGS="..."    more libFuzzer flags, e.g. -runs=1000000
#   FUZZ_CONTINUE=1    start from the corpus the last run left in $FUZZ_WORK/<target>, not the seeds alone
#
# A crash, a hang (-timeout) or a leak stops the target; its input is saved under
# $FUZZ_WORK/<target>/ as crash-*, timeout-* or leak-*, and the script exits 1. Reproduce with
# `Fuzz/.build-fuzz/release/<target> <input>`. New corpus entries stay in $FUZZ_WORK; copy
# interesting ones to Fuzz/Corpus/<target>/ by hand. See docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-120}"
targets="${FUZZ_TARGETS:-FuzzRequest FuzzConfig}"
jobs="${FUZZ_JOBS:-1}"
work="${FUZZ_WORK:-Fuzz/.build-fuzz/runs}"
scratch="Fuzz/.build-fuzz"

scripts/install-deps.sh
for target in $targets; do
    swift build -c release --package-path Fuzz --scratch-path "$scratch" \
        -Xswiftc -sanitize=fuzzer,address -Xswiftc -use-ld=lld --product "$target"
done
bin="$(swift build -c release --package-path Fuzz --scratch-path "$scratch" --show-bin-path)"

status=0
summary=()
for target in $targets; do
    dir="$work/$target"
    # FUZZ_CONTINUE=1 goes on from the corpus a previous run left there (a long run in parts).
    if [ "${FUZZ_CONTINUE:-0}" != 1 ]; then rm -rf "$dir"; fi
    mkdir -p "$dir/corpus"
    cp -n Fuzz/Corpus/"$target"/* "$dir/corpus/"
    log="$dir/fuzz.log"
    echo "== $target: $seconds s (log: $log)"
    flags=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -max_len=70000
        -dict="Fuzz/Corpus/$target.dict" -artifact_prefix="$dir/" -print_final_stats=1)
    [ "$jobs" -gt 1 ] && flags+=(-fork="$jobs")
    # Leak checking is off: Swift's runtime keeps metadata caches that look like leaks to
    # LeakSanitizer. Swift's own backtracer is off too: libFuzzer reports a crash and saves its
    # input, and symbolicating an instrumented binary takes the backtracer minutes. Allocation
    # stacks are not recorded (malloc_context_size=0): a third of the time of an input otherwise.
    set +e
    SWIFT_BACKTRACE=enable=no ASAN_OPTIONS="detect_leaks=0:malloc_context_size=0:${ASAN_OPTIONS:-}" \
        "$bin/$target" "${flags[@]}" ${FUZZ_ARGS:-} "$dir/corpus" >"$log" 2>&1
    rc=$?
    set -e
    if [ "$jobs" -gt 1 ]; then
        # -fork: the parent prints the jobs' totals, "#<executions>: cov: … time: <s>s …" (its
        # exec/s is the last job's alone).
        totals="$(grep -E '^#[0-9]+: cov' "$log" | tail -1 || true)"
        executions="$(grep -oE '^#[0-9]+' <<<"$totals" | tr -d '#' || true)"
        elapsed="$(grep -oE 'time: [0-9]+s' <<<"$totals" | grep -oE '[0-9]+' || true)"
        speed="$([ -n "$executions" ] && [ "${elapsed:-0}" -gt 0 ] && echo $((executions / elapsed)) || true)"
    else
        # libFuzzer pads the values with spaces.
        executions="$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | tail -1 | grep -oE '[0-9]+$' || true)"
        speed="$(grep -oE 'stat::average_exec_per_sec: *[0-9]+' "$log" | tail -1 | grep -oE '[0-9]+$' || true)"
    fi
    coverage="$(grep -E '^#[0-9]+' "$log" | tail -1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9/a-zA-Z]+' || true)"
    line="$target: ${executions:-?} executions, ${speed:-?} exec/s, ${coverage:-no coverage line}, corpus $(ls "$dir/corpus" | wc -l) files"
    if [ "$rc" -ne 0 ]; then
        line="$line: FAILED (exit $rc); see $log and $(ls "$dir"/crash-* "$dir"/timeout-* "$dir"/oom-* "$dir"/leak-* 2>/dev/null | tr '\n' ' ')"
        status=1
        tail -40 "$log"
    fi
    summary+=("$line")
done

echo
printf '%s\n' "${summary[@]}"
exit $status
