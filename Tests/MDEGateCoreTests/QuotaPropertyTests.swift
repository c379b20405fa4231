import MDEGateCore
import PropertyBased
import Testing

/// Drives a scheduler with a virtual clock: requests arrive at given instants, every attempt
/// completes after `serviceTime` with the outcome `outcome` picks, and the scheduler is woken
/// exactly when it asks to be. `outcome` gets the number of attempts finished before this one. Returns each attempt's start time and request, in order.
func simulate(
    limits: [Limit],
    guardBand: Duration,
    arrivals: [(time: Timestamp, client: ClientID)],
    maxConcurrency: Int = 1_000_000,
    serviceTime: Duration = .zero,
    outcome: (Int) -> AttemptOutcome = { _ in .answered(status: 200, retryAfter: nil) }
) -> [(time: Timestamp, job: RequestID)] {
    var scheduler = Scheduler(
        ledgers: [.cancel: Ledger(limits: limits, guardBand: guardBand)],
        retryPolicy: RetryPolicy(maxAttempts: 3, initialBackoff: .milliseconds(100), maxBackoff: .seconds(1)),
        maxConcurrency: maxConcurrency, maxPending: 1_000_000)
    var pending = arrivals.enumerated().map { (index: $0.offset, time: $0.element.time, client: $0.element.client) }
    pending.sort { ($0.time, $0.index) < ($1.time, $1.index) }
    var completions: [(time: Timestamp, job: RequestID)] = []
    var attempts: [(time: Timestamp, job: RequestID)] = []
    var now = pending.first?.time ?? .zero
    var steps = 0
    var finished = 0
    while steps < 100_000 {
        steps += 1
        while let next = pending.first, next.time <= now {
            pending.removeFirst()
            _ = scheduler.submit("r\(next.index)", api: .cancel, target: "m\(next.index)", client: next.client)
        }
        completions.sort { $0.time < $1.time }
        while let done = completions.first, done.time <= now {
            completions.removeFirst()
            _ = scheduler.finish(done.job, outcome: outcome(finished), at: now, jitter: 0.5)
            finished += 1
        }
        while let dispatch = scheduler.nextDispatch(at: now) {
            attempts.append((now, dispatch.job))
            completions.append((now + serviceTime, dispatch.job))
        }
        let candidates = [pending.first?.time, completions.map(\.time).min(), scheduler.nextWakeup(after: now)]
            .compactMap { $0 }
        guard let next = candidates.min() else { break }
        #expect(next >= now, "time never runs backwards")
        now = max(next, now)
    }
    return attempts
}

/// The most attempts any window of `limit` (plus guard) holds. Counts only rise at an attempt's
/// start, so checking the windows that end at each attempt covers every window.
func busiestWindow(_ times: [Timestamp], _ limit: Limit, _ guardBand: Duration) -> Int {
    let span = limit.window + guardBand
    return times.map { end in times.filter { $0 > end - span && $0 <= end }.count }.max() ?? 0
}

let limitGen = zip(Gen.int(in: 1...6), Gen.int(in: 20...3000)).map { Limit(calls: $0, window: .milliseconds($1)) }
let limitsGen = limitGen.array(of: 1...3)
let arrivalsGen = zip(Gen.int(in: 0...400), Gen.int(in: 0...3)).array(of: 1...60)

/// Turns gaps in milliseconds into arrival instants.
func arrivalTimes(_ raw: [(Int, Int)]) -> [(time: Timestamp, client: ClientID)] {
    var clock = 1_700_000_000_000
    return raw.map { gap, client in
        clock += gap
        return (Timestamp(nanosecondsSinceEpoch: Int64(clock) * 1_000_000), ClientID(uid: UInt32(client)))
    }
}

@Suite("The quota promise, for random limits and arrivals")
struct QuotaPropertyTests {
    @Test("no window ever holds more than N attempts, whatever the outcomes, durations and concurrency")
    func neverOverspends() async {
        await propertyCheck(
            count: 300,
            input: limitsGen, Gen.int(in: 0...50), arrivalsGen, zip(Gen.int(in: 1...8), Gen.int(in: 0...500))
        ) { limits, guardMs, raw, transport in
            let guardBand = Duration.milliseconds(guardMs)
            let outcomes: [AttemptOutcome] = [
                .answered(status: 200, retryAfter: nil), .answered(status: 503, retryAfter: nil),
                .unanswered, .answered(status: 429, retryAfter: .milliseconds(300)), .answered(status: 404, retryAfter: nil),
            ]
            let attempts = simulate(
                limits: limits, guardBand: guardBand, arrivals: arrivalTimes(raw),
                maxConcurrency: transport.0, serviceTime: .milliseconds(transport.1),
                outcome: { outcomes[($0 * 7 + guardMs) % outcomes.count] })
            let times = attempts.map(\.time)
            for limit in limits {
                #expect(busiestWindow(times, limit, guardBand) <= limit.calls, "limit \(limit) overspent")
            }
            #expect(attempts.count >= raw.count, "every request got at least one attempt")
        }
    }

    @Test("each attempt starts at the earliest instant the rule allows: the schedule is optimal")
    func optimalSchedule() async {
        await propertyCheck(count: 300, input: limitsGen, Gen.int(in: 0...50), arrivalsGen) { limits, guardMs, raw in
            let guardBand = Duration.milliseconds(guardMs)
            let arrivals = arrivalTimes(raw)
            let attempts = simulate(limits: limits, guardBand: guardBand, arrivals: arrivals)
            try #require(attempts.count == arrivals.count)
            let times = attempts.map(\.time)
            for k in times.indices {
                // The k-th attempt can start neither before the k-th arrival, nor before the rule
                // lets a (k+1)-th attempt in after the k earlier ones.
                var earliest = arrivals[k].time
                for limit in limits where k >= limit.calls {
                    earliest = max(earliest, times[k - limit.calls] + limit.window + guardBand)
                }
                #expect(times[k] == earliest, "attempt \(k) started at \(times[k]), the rule allowed \(earliest)")
            }
        }
    }

    @Test("each client's requests go upstream in the order they arrived")
    func perClientFIFO() async {
        await propertyCheck(count: 200, input: limitsGen, arrivalsGen) { limits, raw in
            let arrivals = arrivalTimes(raw)
            let attempts = simulate(limits: limits, guardBand: .zero, arrivals: arrivals)
            for client in Set(arrivals.map(\.client)) {
                let sent = attempts.map(\.job).filter { arrivals[Int($0.dropFirst())!].client == client }
                let indices = sent.map { Int($0.dropFirst())! }
                #expect(indices == indices.sorted())
            }
        }
    }
}
