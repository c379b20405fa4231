import MDEGateCore
import PropertyBased
import Testing

/// A stateful property test of `Scheduler`: random sequences of submissions, withdrawals, clock
/// advances, finished attempts (every outcome), reloads and crash recoveries are applied to a
/// scheduler and to a small reference model kept here, and the two are compared after every step.
///
/// The model knows jobs, their members, attempts, failures and states, the pause, what is in
/// flight and every dispatch instant; it does not know the queues' order beyond "a client's
/// never-sent jobs go in the order they were queued" (round-robin and put-backs are left to
/// `SchedulerTests`).
@Suite("Scheduler against a reference model, one random step at a time")
struct SchedulerModelTests {
    @Test(
        "whatever the sequence of submissions, withdrawals, answers, reloads and restarts, the quota, the concurrency cap, the pause and the books hold, and every wake-up is exact"
    )
    func randomSequences() async {
        var coverage = ModelCoverage()
        var diverged = false
        await propertyCheck(count: 200, input: Gen.int(in: 0...Int.max), modelCommandsGen) { seed, commands in
            var harness = ModelHarness(seed: seed)
            do {
                for command in commands { try harness.step(command) }
                try harness.settle()
            } catch {
                // `check` recorded the issue; the model has diverged, so the run stops there.
                diverged = true
            }
            coverage.merge(harness.coverage)
        }

        // The generator reaches every interesting case (skipped when a fixed seed runs one case,
        // or after a failure: the counts then include the shrinker's runs).
        guard coverage.runs >= 50, !diverged else { return }
        #expect(coverage.dispatches > coverage.runs * 20)
        #expect(coverage.joinedOtherSpelling > 0, "coalescing across letter case")
        #expect(coverage.joinedWhileSending > 0, "coalescing with a job being sent")
        #expect(coverage.queueFull > 0)
        #expect(coverage.withdrawnCancelled > 0 && coverage.withdrawnKept > 0)
        #expect(coverage.alreadySent > 0 && coverage.notPending > 0)
        #expect(coverage.throttled > 0 && coverage.throttledDefault > 0 && coverage.notSent > 0)
        #expect(coverage.reauthorizing > 0 && coverage.unauthorizedTwice > 0)
        #expect(coverage.retrying > 0 && coverage.retriesExhausted > 0)
        #expect(coverage.wokeOnTime > 0 && coverage.beforeWakeup > 0)
        #expect(coverage.limitRefused > 0 && coverage.pauseRefused > 0 && coverage.concurrencyRefused > 0)
        #expect(coverage.restoredInFlight > 0 && coverage.restoredBackingOff > 0)
        #expect(coverage.reconfigured > 0 && coverage.lengthened > 0)
    }

    /// The ledger forgets every attempt older than the longest window (plus guard) in force. A
    /// reload to a longer window must count them again: the gateway reads them back from the
    /// store and passes them as `earlierAttempts` (found by this model test: without them, the
    /// lengthened limit was overspent).
    @Test("a reload that lengthens a window still counts every attempt inside it")
    func reloadThatLengthensAWindow() {
        let policy = RetryPolicy(maxAttempts: 1, initialBackoff: .seconds(1), maxBackoff: .seconds(1))
        var scheduler = Scheduler(
            ledgers: [.cancel: Ledger(limits: [Limit(calls: 1, window: .seconds(1))], guardBand: .zero)],
            retryPolicy: policy, maxConcurrency: 10, maxPending: 10)
        for n in 0..<3 { _ = scheduler.submit("r\(n)", api: .cancel, target: "m\(n)", client: ClientID(uid: 1)) }
        let t0 = Timestamp(secondsSinceEpoch: 1_700_000_000)
        let first = scheduler.nextDispatch(at: t0)
        #expect(first?.job == "r0")
        // One window later: allowed, and recording it drops the attempt at t0 from the ledger.
        let second = scheduler.nextDispatch(at: t0 + .seconds(1))
        #expect(second?.job == "r1")
        // The upstream's limit is in fact 2 per 10 s, and the reload says so.
        #expect((scheduler.ledger(.cancel) as? Ledger)?.attempts.count == 1, "the attempt at t0 is out of every window in force")
        scheduler.reconfigure(
            limits: [.cancel: [Limit(calls: 2, window: .seconds(10))]], guardBand: .zero, retryPolicy: policy,
            maxConcurrency: 10, maxPending: 10, earlierAttempts: [.cancel: [t0, t0 + .seconds(1)]])
        // (t0 - 9 s, t0 + 1 s] already holds two attempts: a third must wait until t0 + 10 s.
        #expect(scheduler.nextWakeup(after: t0 + .seconds(1)) == t0 + .seconds(10))
        let third = scheduler.nextDispatch(at: t0 + .seconds(1))
        #expect(third == nil, "a third attempt within 10 s overspends 2/10s")
    }
}

// MARK: - Commands

/// One random step: `kind` picks the operation, `seed` every choice inside it, so dropping
/// commands (what the shrinker does) leaves the others meaningful.
struct ModelCommand: Sendable, CustomStringConvertible {
    var kind: Int
    var seed: Int
    var description: String { "\(kind):\(seed)" }
}

private let modelCommandsGen = zip(Gen.int(in: 0...99), Gen.int(in: 0...Int.max))
    .map { ModelCommand(kind: $0, seed: $1) }
    .array(of: 1...500)

/// SplitMix64: the choices inside one command, from its seed.
private struct Dice {
    private var state: UInt64
    init(_ seed: Int) { state = UInt64(truncatingIfNeeded: seed) }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    mutating func int(_ range: ClosedRange<Int>) -> Int {
        range.lowerBound + Int(next() % UInt64(range.upperBound - range.lowerBound + 1))
    }

    mutating func percent(_ chance: Int) -> Bool { int(0...99) < chance }
}

private let modelClients = [ClientID(uid: 1000, name: "soar"), ClientID(uid: 1000, name: "edr"), ClientID(uid: 1001)]
private let modelEpoch = Timestamp(secondsSinceEpoch: 1_700_000_000)

/// Machine action number `n` of the pool, spelled in lowercase, uppercase or mixed case.
private func modelMachineAction(_ n: Int, spelling: Int) -> String {
    let id = "5f2e9c1a-b7d3-4e8f-a0c6-0000000" + String(0xabcde + n, radix: 16)
    switch spelling {
    case 0: return id
    case 1: return id.uppercased()
    default: return String(id.enumerated().map { $0.offset % 2 == 0 ? Character($0.element.uppercased()) : $0.element })
    }
}

/// A timestamp relative to the start of a run, for traces.
private func rel(_ time: Timestamp) -> String { "+\((time - modelEpoch).seconds)s" }
private func rel(_ time: Timestamp?) -> String { time.map(rel) ?? "nil" }

// MARK: - Settings

private struct ModelSettings: CustomStringConvertible {
    var limits: [Limit]
    var guardBand: Duration
    var retryPolicy: RetryPolicy
    var maxConcurrency: Int
    var maxPending: Int

    static func random(_ dice: inout Dice) -> ModelSettings {
        var limits: [Limit] = []
        for _ in 0..<dice.int(1...3) {
            limits.append(Limit(calls: dice.int(1...6), window: .milliseconds(dice.int(20...3000))))
        }
        return ModelSettings(
            limits: limits, guardBand: .milliseconds(dice.int(0...50)), retryPolicy: randomPolicy(&dice),
            maxConcurrency: dice.int(1...4), maxPending: dice.int(2...30))
    }

    static func randomPolicy(_ dice: inout Dice) -> RetryPolicy {
        RetryPolicy(
            maxAttempts: dice.int(1...4), initialBackoff: .milliseconds(dice.int(10...500)),
            maxBackoff: .milliseconds(dice.int(500...4000)))
    }

    /// Settings after a reload: tighter (fewer calls, longer windows) or looser, or new altogether.
    func reloaded(_ dice: inout Dice) -> ModelSettings {
        var next = self
        switch dice.int(0...4) {
        case 0:
            next = .random(&dice)
        case 1:
            next.limits = limits.map { Limit(calls: max(1, $0.calls - dice.int(1...2)), window: $0.window) }
        case 2:
            next.limits = limits.map { Limit(calls: $0.calls, window: $0.window * dice.int(2...3)) }
        case 3:
            next.limits = limits.map {
                Limit(calls: $0.calls + dice.int(1...2), window: .nanoseconds(max(20_000_000, $0.window.nanoseconds / 2)))
            }
        default:
            next.limits.append(Limit(calls: dice.int(1...4), window: .milliseconds(dice.int(20...5000))))
            next.guardBand = .milliseconds(dice.int(0...80))
        }
        if dice.percent(30) { next.maxConcurrency = dice.int(1...4) }
        if dice.percent(30) { next.maxPending = dice.int(2...30) }
        if dice.percent(30) { next.retryPolicy = Self.randomPolicy(&dice) }
        return next
    }

    var description: String {
        let retry = "\(retryPolicy.maxAttempts)x \(retryPolicy.initialBackoff.configString)..\(retryPolicy.maxBackoff.configString)"
        return "limits \(limits.map(\.spec).joined(separator: " + ")), guard \(guardBand.configString), "
            + "retries \(retry), concurrency \(maxConcurrency), pending \(maxPending)"
    }
}

// MARK: - Coverage

/// How often each interesting case came up, over all runs.
private struct ModelCoverage {
    var runs = 0, steps = 0, dispatches = 0
    var joinedOtherSpelling = 0, joinedWhileSending = 0, queueFull = 0
    var withdrawnCancelled = 0, withdrawnKept = 0, alreadySent = 0, notPending = 0
    var throttled = 0, throttledDefault = 0, notSent = 0, reauthorizing = 0, unauthorizedTwice = 0
    var retrying = 0, retriesExhausted = 0, finished = 0
    var wokeOnTime = 0, beforeWakeup = 0
    var limitRefused = 0, pauseRefused = 0, concurrencyRefused = 0
    var restoredInFlight = 0, restoredBackingOff = 0, reconfigured = 0
    var lengthened = 0

    mutating func merge(_ other: ModelCoverage) {
        runs += other.runs; steps += other.steps; dispatches += other.dispatches
        joinedOtherSpelling += other.joinedOtherSpelling; joinedWhileSending += other.joinedWhileSending
        queueFull += other.queueFull
        withdrawnCancelled += other.withdrawnCancelled; withdrawnKept += other.withdrawnKept
        alreadySent += other.alreadySent; notPending += other.notPending
        throttled += other.throttled; throttledDefault += other.throttledDefault; notSent += other.notSent
        reauthorizing += other.reauthorizing; unauthorizedTwice += other.unauthorizedTwice
        retrying += other.retrying; retriesExhausted += other.retriesExhausted; finished += other.finished
        wokeOnTime += other.wokeOnTime; beforeWakeup += other.beforeWakeup
        limitRefused += other.limitRefused; pauseRefused += other.pauseRefused
        concurrencyRefused += other.concurrencyRefused
        restoredInFlight += other.restoredInFlight; restoredBackingOff += other.restoredBackingOff
        reconfigured += other.reconfigured
        lengthened += other.lengthened
    }
}

// MARK: - The model and the harness

/// What the model knows of a job.
private struct ModelJob {
    let id: RequestID
    let machineActionID: String
    let client: ClientID
    var members: [RequestID]
    var state: Scheduler.Job.State = .queued
    var attempts = 0
    var failures = 0
    var reauthorized = false
    /// An attempt may have reached the upstream (every outcome but not sent).
    var left = false
}

private struct ModelDiverged: Error {}

/// A scheduler, the reference model beside it, a virtual clock, and the checks.
private struct ModelHarness {
    var scheduler: Scheduler
    var settings: ModelSettings
    var now = modelEpoch
    /// How many machine action ids this run draws from: few, so that requests coalesce.
    let pool: Int

    // The model.
    var jobs: [RequestID: ModelJob] = [:]
    /// The job of each pending request (its own or the one it joined).
    var jobOfRequest: [RequestID: RequestID] = [:]
    /// The unfinished job of each machine action id, lowercased.
    var jobOfKey: [String: RequestID] = [:]
    /// Every request id used, in order, rejected ones included; ids are never reused.
    var submitted: [RequestID] = []
    var arrival: [RequestID: Int] = [:]
    var admitted = 0
    var finished: Set<RequestID> = []
    var withdrawn: Set<RequestID> = []
    /// Jobs being sent, in dispatch order.
    var inFlight: [RequestID] = []
    var pausedUntil: Timestamp?
    /// The instant of every attempt ever dispatched (the clock never goes back, so in order).
    var dispatchTimes: [Timestamp] = []
    /// Each client's never-sent jobs, in the order they were queued.
    var fresh: [ClientID: [RequestID]] = [:]

    var trace: [String] = []
    var coverage = ModelCoverage()

    init(seed: Int) {
        var dice = Dice(seed)
        settings = .random(&dice)
        pool = dice.int(2...8)
        scheduler = Scheduler(
            ledgers: [.cancel: Ledger(limits: settings.limits, guardBand: settings.guardBand)],
            retryPolicy: settings.retryPolicy, maxConcurrency: settings.maxConcurrency,
            maxPending: settings.maxPending)
        coverage.runs = 1
        trace.append("start: \(settings), \(pool) machine actions")
    }

    /// Records a failure, with the settings and the last steps, and stops the run.
    func check(
        _ condition: Bool, _ message: @autoclosure () -> String,
        sourceLocation: SourceLocation = #_sourceLocation
    ) throws {
        if condition { return }
        let recent = trace.suffix(80).joined(separator: "\n")
        Issue.record(
            "\(message())\nat \(rel(now)); settings now: \(settings)\nlast steps:\n\(recent)",
            sourceLocation: sourceLocation)
        throw ModelDiverged()
    }

    mutating func log(_ line: String) { trace.append("[\(rel(now))] \(line)") }

    // MARK: Steps

    mutating func step(_ command: ModelCommand) throws {
        var dice = Dice(command.seed)
        coverage.steps += 1
        switch command.kind {
        case 0..<30: try submit(&dice)
        case 30..<40: try withdraw(&dice)
        case 40..<65: try advance(&dice)
        case 65..<93: try finish(&dice)
        case 93..<97: try reconfigure(&dice)
        default: try restore(&dice)
        }
        // The daemon pumps after every event; sometimes let events pile up before it does.
        if !(40..<65).contains(command.kind), dice.percent(70) { try drain(expectingDispatch: nil) }
        try checkConsistency()
    }

    mutating func submit(_ dice: inout Dice) throws {
        let client = modelClients[dice.int(0...2)]
        let machineActionID = modelMachineAction(dice.int(0...pool - 1), spelling: dice.int(0...2))
        let id = "r\(submitted.count)"
        arrival[id] = submitted.count
        submitted.append(id)
        let key = machineActionID.lowercased()

        let expected: Scheduler.Admission
        if jobOfRequest.count >= settings.maxPending {
            expected = .queueFull
        } else if let leader = jobOfKey[key] {
            expected = .joined(leader: leader)
        } else {
            expected = .queued
        }
        let admission = scheduler.submit(id, api: .cancel, target: machineActionID, client: client)
        log("submit \(id) \(client) \(machineActionID) → \(admission)")
        try check(admission == expected, "submit \(id): the scheduler answered \(admission), the model \(expected)")

        switch expected {
        case .queueFull:
            coverage.queueFull += 1
            return
        case .joined(let leader):
            jobs[leader]!.members.append(id)
            jobOfRequest[id] = leader
            if jobs[leader]!.machineActionID != machineActionID { coverage.joinedOtherSpelling += 1 }
            if jobs[leader]!.state == .sending { coverage.joinedWhileSending += 1 }
        case .queued:
            jobs[id] = ModelJob(id: id, machineActionID: machineActionID, client: client, members: [id])
            jobOfRequest[id] = id
            jobOfKey[key] = id
            fresh[client, default: []].append(id)
        }
        admitted += 1

        // Its place in line, if queued, is a real place no earlier than now or the pause.
        let job = scheduler.job(of: id)
        let position = scheduler.position(of: id, at: now)
        if job?.state == .queued {
            let queued = scheduler.depthByClient().reduce(0) { $0 + $1.depth }
            try check(position != nil, "\(id) is queued but has no position")
            try check(
                position!.position >= 1 && position!.position <= queued,
                "\(id) is at position \(position!.position) of \(queued) queued jobs")
            try check(
                position!.estimatedDispatchAt >= max(now, pausedUntil ?? now),
                "\(id) is estimated to go at \(rel(position!.estimatedDispatchAt)), before now or the pause")
        } else {
            try check(position == nil, "\(id) is not queued (\(String(describing: job?.state))) yet has a position")
        }
    }

    mutating func withdraw(_ dice: inout Dice) throws {
        let id: RequestID
        let pending = submitted.filter { jobOfRequest[$0] != nil }
        switch dice.int(0...9) {
        case 0: id = "ghost\(dice.int(0...99))"
        case 1...5 where !pending.isEmpty: id = pending[dice.int(0...pending.count - 1)]
        default: id = submitted.isEmpty ? "ghost" : submitted[dice.int(0...submitted.count - 1)]
        }

        let expected: Scheduler.Withdrawal
        if let jobID = jobOfRequest[id], let job = jobs[jobID] {
            expected = !job.left && job.state == .queued ? .withdrawn(jobCancelled: job.members == [id]) : .alreadySent
        } else {
            expected = .notPending
        }
        let answer = scheduler.withdraw(id)
        log("withdraw \(id) → \(answer)")
        try check(answer == expected, "withdraw \(id): the scheduler answered \(answer), the model \(expected)")

        switch expected {
        case .withdrawn(let cancelled):
            let jobID = jobOfRequest[id]!
            jobs[jobID]!.members.removeAll { $0 == id }
            jobOfRequest[id] = nil
            withdrawn.insert(id)
            if cancelled {
                coverage.withdrawnCancelled += 1
                let job = jobs.removeValue(forKey: jobID)!
                jobOfKey[job.machineActionID.lowercased()] = nil
                fresh[job.client]?.removeAll { $0 == jobID }
            } else {
                coverage.withdrawnKept += 1
            }
            try check(scheduler.job(of: id) == nil, "withdrawn \(id) still has a job")
        case .alreadySent: coverage.alreadySent += 1
        case .notPending: coverage.notPending += 1
        }
    }

    /// Moves the clock (to the wake-up, just before it, or anywhere), then dispatches all it can.
    /// Nothing else happens between asking for the wake-up and dispatching, so the wake-up must
    /// be exact: something starts if and only if the clock reached it.
    mutating func advance(_ dice: inout Dice) throws {
        let wakeup = scheduler.nextWakeup(after: now)
        try check(wakeup == nil || wakeup! >= now, "nextWakeup(after: now) is \(rel(wakeup)), before now")
        let choice = dice.int(0...99)
        if choice < 35, let wakeup {
            now = wakeup
            coverage.wokeOnTime += 1
        } else if choice < 50, let wakeup, wakeup > now {
            now = now + .nanoseconds(Int64(dice.int(0...Int((wakeup - now).nanoseconds) - 1)))
            coverage.beforeWakeup += 1
        } else if choice < 88 {
            now = now + .milliseconds(dice.int(0...1500))
        } else if choice < 96 {
            now = now + .milliseconds(dice.int(0...65_000))
        }
        log("advance (wake-up was \(rel(wakeup)))")
        try drain(expectingDispatch: wakeup.map { now >= $0 } ?? false)
    }

    /// Calls `nextDispatch` until nil, checking every attempt it starts.
    mutating func drain(expectingDispatch expected: Bool?) throws {
        var first = true
        while true {
            let dispatch = scheduler.nextDispatch(at: now)
            if first, let expected {
                try check(
                    (dispatch != nil) == expected,
                    expected
                        ? "the clock reached the wake-up, but nothing was dispatched (a wake-up for nothing)"
                        : "something was dispatched before the wake-up: \(String(describing: dispatch))")
            }
            first = false
            guard let dispatch else { break }
            try accept(dispatch)
        }
        // Why it stopped, for coverage.
        if let pausedUntil, now < pausedUntil {
            coverage.pauseRefused += 1
        } else if inFlight.count >= settings.maxConcurrency {
            coverage.concurrencyRefused += 1
        } else if scheduler.ledger(.cancel).earliestSlot(notBefore: now) > now, !scheduler.depthByClient().isEmpty {
            coverage.limitRefused += 1
        }
        // After a full drain, nothing is due now: a wake-up at `now` would spin.
        let wakeup = scheduler.nextWakeup(after: now)
        try check(wakeup == nil || wakeup! > now, "after draining, the wake-up is \(rel(wakeup)), not after now")
    }

    mutating func accept(_ dispatch: Scheduler.Dispatch) throws {
        log("dispatch \(dispatch.job) attempt \(dispatch.attempt) members \(dispatch.members)")
        coverage.dispatches += 1
        try check(
            pausedUntil == nil || now >= pausedUntil!,
            "\(dispatch.job) dispatched while paused until \(rel(pausedUntil))")
        try check(
            inFlight.count < settings.maxConcurrency,
            "\(dispatch.job) dispatched with \(inFlight.count) in flight, max \(settings.maxConcurrency)")
        // The quota rule, for every limit in force now, over every attempt ever made: fewer than
        // N in (now - W - guard, now] before this one.
        for limit in settings.limits {
            let span = limit.window + settings.guardBand
            var inside = 0
            var index = dispatchTimes.count - 1
            while index >= 0, dispatchTimes[index] > now - span {
                inside += 1
                index -= 1
            }
            try check(
                inside < limit.calls,
                "\(dispatch.job) dispatched with \(inside) attempts already in the last \(span.configString) (limit \(limit), guard \(settings.guardBand.configString))"
            )
        }

        try check(jobs[dispatch.job] != nil, "dispatched \(dispatch.job), which is no unfinished job")
        var job = jobs[dispatch.job]!
        switch job.state {
        case .queued: break
        case .backingOff(let until):
            try check(until <= now, "\(job.id) dispatched during its backoff (until \(rel(until)))")
        case .sending:
            try check(false, "\(job.id) dispatched while already being sent")
        }
        try check(dispatch.members == job.members, "dispatch members \(dispatch.members), model \(job.members)")
        try check(
            dispatch.members.allSatisfy { !withdrawn.contains($0) && !finished.contains($0) },
            "dispatch members \(dispatch.members) include a withdrawn or finished request")
        try check(dispatch.attempt == job.attempts + 1, "attempt \(dispatch.attempt), model \(job.attempts + 1)")
        try check(
            dispatch.target == job.machineActionID,
            "sent as \(dispatch.target), first spelled \(job.machineActionID)")
        if job.attempts == 0 {
            let next = fresh[job.client]?.first
            try check(
                next == job.id,
                "\(job.id) is \(job.client)'s first attempt out of turn: \(String(describing: next)) was queued before it")
            fresh[job.client]!.removeFirst()
        }

        job.state = .sending
        job.attempts += 1
        jobs[job.id] = job
        inFlight.append(job.id)
        dispatchTimes.append(now)
        try check(scheduler.inFlight == inFlight.count, "inFlight \(scheduler.inFlight), model \(inFlight.count)")
    }

    mutating func finish(_ dice: inout Dice) throws {
        guard !inFlight.isEmpty else {
            log("finish: nothing in flight")
            return
        }
        let jobID = inFlight[dice.int(0...inFlight.count - 1)]
        let outcome: AttemptOutcome
        switch dice.int(0...15) {
        case 0...2: outcome = .answered(status: 200, retryAfter: nil)
        case 3: outcome = .answered(status: 201, retryAfter: nil)
        case 4: outcome = .answered(status: 404, retryAfter: nil)
        case 5: outcome = .answered(status: 400, retryAfter: nil)
        case 6:
            outcome = .answered(
                status: 429, retryAfter: dice.percent(15) ? nil : .milliseconds(dice.int(0...4000)))
        case 7, 8: outcome = .answered(status: dice.percent(50) ? 500 : 502, retryAfter: nil)
        case 9: outcome = .answered(status: 503, retryAfter: dice.percent(50) ? nil : .seconds(dice.int(0...30)))
        case 10, 11: outcome = .unanswered
        case 12: outcome = .notSent
        default: outcome = .answered(status: 401, retryAfter: nil)
        }
        try finish(jobID, outcome: outcome, jitter: Double(dice.int(0...999)) / 1000)
    }

    /// Finishes the attempt of `jobID` in flight, checking the resolution against the model's.
    mutating func finish(_ jobID: RequestID, outcome: AttemptOutcome, jitter: Double) throws {
        inFlight.removeAll { $0 == jobID }
        var job = jobs[jobID]!
        try check(job.state == .sending, "finishing \(jobID), which the model has as \(job.state)")

        let expected: Scheduler.Resolution
        var finishes = false
        if outcome != .notSent { job.left = true }
        switch outcome {
        case .answered(status: 429, let retryAfter):
            let until = now + (retryAfter ?? .seconds(60))
            pausedUntil = max(pausedUntil ?? until, until)
            job.state = .queued
            expected = .throttled(until: pausedUntil!)
            coverage.throttled += 1
            if retryAfter == nil { coverage.throttledDefault += 1 }
        case .notSent:
            let until = now + .seconds(1)
            pausedUntil = max(pausedUntil ?? until, until)
            job.state = .queued
            expected = .notSent(until: pausedUntil!)
            coverage.notSent += 1
        case .answered(status: 401, _) where !job.reauthorized:
            job.reauthorized = true
            job.state = .queued
            expected = .reauthorizing
            coverage.reauthorizing += 1
        case .answered(let status, _) where status < 500:
            if status == 401 { coverage.unauthorizedTwice += 1 }
            expected = .finished(members: job.members, attempts: job.attempts)
            finishes = true
        case .answered, .unanswered:
            job.failures += 1
            if job.failures >= settings.retryPolicy.maxAttempts {
                expected = .finished(members: job.members, attempts: job.attempts)
                finishes = true
                coverage.retriesExhausted += 1
            } else {
                let due = now + settings.retryPolicy.backoff(afterFailures: job.failures, jitter: jitter)
                job.state = .backingOff(until: due)
                expected = .retrying(at: due, attempts: job.attempts)
                coverage.retrying += 1
            }
        }

        let resolution = scheduler.finish(jobID, outcome: outcome, at: now, jitter: jitter)
        log("finish \(jobID) \(outcome) → \(resolution)")
        try check(resolution == expected, "finish \(jobID) \(outcome): the scheduler decided \(resolution), the model \(expected)")

        if finishes {
            coverage.finished += 1
            for member in job.members {
                try check(
                    !finished.contains(member) && !withdrawn.contains(member),
                    "\(member) finished a second time, or after it was withdrawn")
                finished.insert(member)
                jobOfRequest[member] = nil
            }
            jobs[jobID] = nil
            jobOfKey[job.machineActionID.lowercased()] = nil
            for member in job.members {
                try check(scheduler.job(of: member) == nil, "finished \(member) still has a job")
            }
        } else {
            jobs[jobID] = job
        }
    }

    mutating func reconfigure(_ dice: inout Dice) throws {
        try checkLedger()
        let horizon = scheduler.ledger(.cancel).horizon
        settings = settings.reloaded(&dice)
        // As the gateway does: a longer horizon reads the earlier attempts back from the store,
        // which keeps every one (here: every dispatch ever made).
        let lengthens = Ledger.horizon(limits: settings.limits, guardBand: settings.guardBand) > horizon
        if lengthens { coverage.lengthened += 1 }
        scheduler.reconfigure(
            limits: [.cancel: settings.limits], guardBand: settings.guardBand, retryPolicy: settings.retryPolicy,
            maxConcurrency: settings.maxConcurrency, maxPending: settings.maxPending,
            earlierAttempts: lengthens ? [.cancel: dispatchTimes] : [:])
        coverage.reconfigured += 1
        log("reconfigure: \(settings)")
    }

    /// The process dies and starts again: a new scheduler from the ledger's attempts, the pause,
    /// and the unfinished jobs in their original order (that of their oldest member, as the store
    /// returns them). Attempts in flight are lost; their jobs come back queued.
    mutating func restore(_ dice: inout Dice) throws {
        try checkLedger()
        let order = jobs.values.sorted {
            $0.members.map { arrival[$0]! }.min()! < $1.members.map { arrival[$0]! }.min()!
        }
        var recovered: [Scheduler.Job] = []
        for var job in order {
            var state = job.state
            switch job.state {
            case .queued:
                break
            case .sending:
                coverage.restoredInFlight += 1
                // Either spelling: `restore` queues an interrupted send again.
                if dice.percent(50) { state = .queued }
                job.state = .queued
            case .backingOff:
                // The daemon does not store backoffs (it restores them queued); try both.
                if dice.percent(50) {
                    state = .queued
                    job.state = .queued
                } else {
                    coverage.restoredBackingOff += 1
                }
            }
            // Not part of durable state: a restarted job may be refused once more, and counts as
            // having left once it made an attempt.
            job.reauthorized = false
            job.left = job.attempts > 0
            jobs[job.id] = job
            recovered.append(
                Scheduler.Job(
                    id: job.id, api: .cancel, target: job.machineActionID, client: job.client, members: job.members,
                    state: state, attempts: job.attempts, failures: job.failures))
        }

        let ledger = Ledger(
            limits: settings.limits, guardBand: settings.guardBand, attempts: Array(cancelLedger.attempts))
        let pause = scheduler.pausedUntil(.cancel)
        let pauseLater = dice.percent(30)
        scheduler = Scheduler(
            ledgers: [.cancel: ledger], retryPolicy: settings.retryPolicy, maxConcurrency: settings.maxConcurrency,
            maxPending: settings.maxPending)
        if !pauseLater, let pause { scheduler.pause(.cancel, until: pause) }
        if dice.percent(50) {
            scheduler.restore(recovered)
        } else {
            for job in recovered { scheduler.restore(job) }
        }
        if pauseLater, let pause { scheduler.pause(.cancel, until: pause) }

        inFlight = []
        fresh = [:]
        for job in order where job.attempts == 0 { fresh[job.client, default: []].append(job.id) }
        log("restore \(recovered.count) jobs: \(recovered.map(\.id))")
    }

    /// Everything left is answered 200, and the queue must drain to nothing.
    mutating func settle() throws {
        log("settle: everything is answered 200 from now on")
        var rounds = 0
        while !jobs.isEmpty {
            rounds += 1
            try check(rounds < 10_000, "the queue never drained")
            if let jobID = inFlight.first {
                try finish(jobID, outcome: .answered(status: 200, retryAfter: nil), jitter: 0.5)
            } else {
                let wakeup = scheduler.nextWakeup(after: now)
                try check(wakeup != nil, "\(jobs.count) jobs left, nothing in flight, and no wake-up")
                now = wakeup!
                try drain(expectingDispatch: true)
            }
            try checkConsistency()
        }
        try check(scheduler.pendingRequests == 0, "nothing left, yet \(scheduler.pendingRequests) pending")
        try check(scheduler.depthByClient().isEmpty, "nothing left, yet queues: \(scheduler.depthByClient())")
        try check(scheduler.nextWakeup(after: now) == nil, "nothing left, yet a wake-up")
        for id in submitted {
            try check(scheduler.job(of: id) == nil, "\(id) still has a job after everything finished")
        }
        try check(
            admitted == finished.count + withdrawn.count,
            "\(admitted) admitted, \(finished.count) finished, \(withdrawn.count) withdrawn")
        try checkLedger()
    }

    // MARK: Invariants after every step

    var cancelLedger: Ledger { scheduler.ledger(.cancel) as! Ledger }

    /// The ledger holds the latest attempts dispatched, exactly.
    func checkLedger() throws {
        let kept = Array(cancelLedger.attempts)
        try check(
            kept == Array(dispatchTimes.suffix(kept.count)),
            "the ledger holds \(kept.map(rel)), not the last \(kept.count) dispatches")
    }

    func checkConsistency() throws {
        // The books.
        try check(
            scheduler.pendingRequests == jobOfRequest.count,
            "pendingRequests \(scheduler.pendingRequests), model \(jobOfRequest.count)")
        try check(
            jobOfRequest.count == admitted - finished.count - withdrawn.count,
            "model: \(jobOfRequest.count) pending, \(admitted) admitted - \(finished.count) finished - \(withdrawn.count) withdrawn")
        try check(scheduler.inFlight == inFlight.count, "inFlight \(scheduler.inFlight), model \(inFlight.count)")
        try check(
            pausedUntil == scheduler.pausedUntil(.cancel),
            "paused until \(rel(scheduler.pausedUntil(.cancel))), model \(rel(pausedUntil))")

        // Every unfinished job, as the scheduler has it.
        for job in jobs.values {
            if !job.members.contains(job.id) {
                try check(scheduler.job(of: job.id) == nil, "withdrawn leader \(job.id) still has a job")
            }
            for member in job.members {
                guard let actual = scheduler.job(of: member) else {
                    try check(false, "pending \(member) has no job (model: \(job.id))")
                    return
                }
                try check(actual.id == job.id, "\(member) is in job \(actual.id), model \(job.id)")
                try check(actual.members == job.members, "job \(job.id) members \(actual.members), model \(job.members)")
                try check(
                    actual.attempts == job.attempts && actual.failures == job.failures,
                    "job \(job.id) attempts/failures \(actual.attempts)/\(actual.failures), model \(job.attempts)/\(job.failures)")
                try check(actual.reauthorized == job.reauthorized, "job \(job.id) reauthorized \(actual.reauthorized)")
                try check(
                    actual.client == job.client && actual.target == job.machineActionID,
                    "job \(job.id) is \(actual.client) \(actual.target), model \(job.client) \(job.machineActionID)")
                let stateAgrees: Bool
                switch (job.state, actual.state) {
                case (.queued, .queued), (.sending, .sending): stateAgrees = true
                case (.backingOff(let until), .backingOff(let actualUntil)): stateAgrees = until == actualUntil
                // A due backoff rejoins the queue at the next dispatch call.
                case (.backingOff(let until), .queued): stateAgrees = until <= now
                default: stateAgrees = false
                }
                try check(stateAgrees, "job \(job.id) is \(actual.state), model \(job.state)")
            }
        }

        // Queue depths: only clients with queued jobs, each once.
        var queued: [ClientID: Int] = [:]
        var due: [ClientID: Int] = [:]
        for job in jobs.values {
            switch job.state {
            case .queued: queued[job.client, default: 0] += 1
            case .backingOff(let until) where until <= now: due[job.client, default: 0] += 1
            default: break
            }
        }
        let depths = scheduler.depthByClient()
        try check(Set(depths.map(\.client)).count == depths.count, "a client listed twice: \(depths)")
        for (client, depth) in depths {
            let low = queued[client, default: 0]
            let high = low + due[client, default: 0]
            try check(depth > 0 && low <= depth && depth <= high, "\(client) has depth \(depth), model \(low)...\(high)")
        }
        for (client, count) in queued where count > 0 {
            try check(depths.contains { $0.client == client }, "\(client) has \(count) queued jobs but no depth")
        }

        // No wake-up means nothing is waiting, unless the concurrency cap holds everything back.
        let wakeup = scheduler.nextWakeup(after: now)
        try check(wakeup == nil || wakeup! >= now, "nextWakeup(after: now) is \(rel(wakeup)), before now")
        if wakeup == nil, inFlight.count < settings.maxConcurrency {
            let waiting = jobs.values.filter { $0.state != .sending }.map(\.id)
            try check(waiting.isEmpty, "no wake-up, \(inFlight.count) in flight, yet \(waiting) wait")
        }
    }
}
