import Foundation

/// How many times longer than written the harness waits before it gives up:
/// `MDEGATE_TEST_TIME_SCALE` (a whole number, at least 1), else 1. A sanitizer build runs the
/// daemon and the simulator several times slower, so `scripts/test-sanitizers.sh` sets it; the
/// limits stay as written for everyone else. Only the bounds of waits grow: no test judges a
/// duration by them.
enum HarnessTime {
    static let scale: Int = {
        guard let text = ProcessInfo.processInfo.environment["MDEGATE_TEST_TIME_SCALE"], !text.isEmpty else { return 1 }
        guard let scale = Int(text), scale >= 1 else {
            fatalError("MDEGATE_TEST_TIME_SCALE must be a whole number of at least 1, not '\(text)'")
        }
        return scale
    }()

    static func scaled(_ limit: Duration) -> Duration {
        limit * scale
    }

    /// Each integration test's time limit (`.timeLimit`), which includes waiting for its share
    /// of the machine: 5 minutes, times `scale`.
    static var suiteMinutes: Int { 5 * scale }
}

/// Runs `operation` and fails with a `HarnessError` naming `what` when it takes longer than
/// `limit` (times `HarnessTime.scale`): a broken daemon fails the test instead of hanging the
/// suite. `operation` must end when its task is cancelled (task sleeps, `CurlTransport.send`
/// and the harness's waits do).
func withTimeout<T: Sendable>(
    _ limit: Duration,
    _ what: String,
    _ operation: @escaping @Sendable () async throws -> T
) async throws -> T {
    let limit = HarnessTime.scaled(limit)
    return try await withThrowingTaskGroup(of: T?.self) { group in
        group.addTask { try await operation() }
        group.addTask {
            try await Task.sleep(for: limit)
            return nil
        }
        defer { group.cancelAll() }
        guard let first = try await group.next(), let value = first else {
            throw HarnessError("timed out after \(limit) waiting for \(what)")
        }
        return value
    }
}

/// Re-evaluates `condition` every `interval` until it holds, for states the harness can only
/// observe by asking (a record's state, the simulator's counters). Bounded in time (`timeout`
/// times `HarnessTime.scale`) and count; returns the last value that satisfied `condition`.
func eventually<T: Sendable>(
    _ what: String,
    timeout: Duration = .seconds(30),
    interval: Duration = .milliseconds(20),
    _ probe: @escaping @Sendable () async throws -> T,
    until condition: @escaping @Sendable (T) -> Bool
) async throws -> T {
    let probeLimit = timeout
    let timeout = HarnessTime.scaled(timeout)
    let clock = ContinuousClock()
    let deadline = clock.now.advanced(by: timeout)
    var last: T?
    // The count bound backs up the time bound should the clock misbehave.
    let maximumProbes = max(1, Int(timeout / interval) + 1)
    for _ in 0..<maximumProbes {
        let value = try await withTimeout(probeLimit, what, probe)
        if condition(value) { return value }
        last = value
        guard clock.now < deadline else { break }
        try await Task.sleep(for: interval)
    }
    throw HarnessError("gave up after \(timeout) waiting for \(what); last seen: \(last.map { "\($0)" } ?? "nothing")")
}
