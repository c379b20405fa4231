import ProcessHarness

/// How many times longer than written the harness waits (`MDEGATE_TEST_TIME_SCALE`): ProcessHarness
/// owns it, since its process waits scale too.
typealias HarnessTime = ProcessHarness.HarnessTime

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
