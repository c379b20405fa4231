import Foundation

/// Each in-process suite's time limit, a guard against hangs: 1 minute, times
/// `MDEGATE_TEST_TIME_SCALE` (a sanitizer build runs several times slower; scripts/test-sanitizers.sh
/// sets it, as the integration tests' `HarnessTime` reads it). No test judges a duration by it.
enum SuiteTime {
    static var minutes: Int {
        guard let text = ProcessInfo.processInfo.environment["MDEGATE_TEST_TIME_SCALE"], let scale = Int(text) else { return 1 }
        return max(1, scale)
    }
}
