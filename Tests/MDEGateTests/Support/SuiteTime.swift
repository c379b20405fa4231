import ProcessHarness

/// Each in-process suite's time limit, a guard against hangs: 1 minute, times
/// `MDEGATE_TEST_TIME_SCALE` (a sanitizer build runs several times slower; scripts/test-sanitizers.sh
/// sets it). No test judges a duration by it.
enum SuiteTime {
    static var minutes: Int { HarnessTime.scale }
}
