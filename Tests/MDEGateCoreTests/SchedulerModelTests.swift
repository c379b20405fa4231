import MDEGateCore
import PropertyBased
import Testing

/// A stateful property test of `Scheduler`: random sequences of submissions, withdrawals, clock
/// advances, finished attempts (every outcome), reloads and crash recoveries are applied to a
/// scheduler with two or three upstream APIs and to a small reference model kept here, and the two
/// are compared after every step.
///
/// The model knows jobs (with their API), their members, attempts, failures and states, each
/// API's limits, pause and every dispatch instant, and what is in flight over all APIs; from
/// those it works out on its own when each API may next start an attempt. It does not know the
/// queues' order beyond "in one API, a client's never-sent jobs go in the order they were queued"
/// (round-robin, put-backs and the lanes' turns are left to `SchedulerTests` and
/// `SchedulerLaneTests`).
@Suite("Scheduler against a reference model, one random step at a time")
struct SchedulerModelTests {
    @Test(
        "whatever the sequence of submissions to several APIs, withdrawals, answers, reloads and restarts, each API's quota and pause, the concurrency cap and the books hold, and every wake-up is exact"
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
        // Several APIs.
        #expect(coverage.threeAPIs > 0 && coverage.threeAPIs < coverage.runs, "runs with two and with three APIs")
        #expect(coverage.dispatchWhileOtherPaused > 0, "an API dispatches while another one's work waits out its pause")
        #expect(coverage.dispatchWhileOtherFull > 0, "an API dispatches while another one's work waits for its full ledger")
        #expect(coverage.concurrentAcrossAPIs > 0, "attempts of two APIs in flight at once")
        #expect(coverage.sameTargetOtherAPI > 0, "the same target on another API is a new job")
        #expect(coverage.reloadLeftOut > 0, "a reload that changes one API's limits and leaves another out")
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
/// The APIs a run draws its two or three from.
private let modelAPIs = [UpstreamAPI("cancel"), UpstreamAPI("isolate"), UpstreamAPI("get_machine_action")]
private let modelEpoch = Timestamp(secondsSinceEpoch: 1_700_000_000)

/// Target number `n` of the pool (one pool for every API, so the same target comes up on several),
/// spelled in lowercase, uppercase or mixed case.
private func modelTarget(_ n: Int, spelling: Int) -> String {
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

/// One API's quota: its limits and guard band.
private struct APIQuota: CustomStringConvertible {
    var limits: [Limit]
    var guardBand: Duration

    static func random(_ dice: inout Dice) -> APIQuota {
        APIQuota(limits: randomLimits(&dice), guardBand: .milliseconds(dice.int(0...50)))
    }

    static func randomLimits(_ dice: inout Dice) -> [Limit] {
        var limits: [Limit] = []
        for _ in 0..<dice.int(1...3) {
            limits.append(Limit(calls: dice.int(1...6), window: .milliseconds(dice.int(20...3000))))
        }
        return limits
    }

    /// Limits after a reload: tighter (fewer calls, longer windows) or looser, or new altogether,
    /// or one more limit.
    func reloadedLimits(_ dice: inout Dice) -> [Limit] {
        switch dice.int(0...4) {
        case 0:
            return Self.randomLimits(&dice)
        case 1:
            return limits.map { Limit(calls: max(1, $0.calls - dice.int(1...2)), window: $0.window) }
        case 2:
            return limits.map { Limit(calls: $0.calls, window: $0.window * dice.int(2...3)) }
        case 3:
            return limits.map {
                Limit(calls: $0.calls + dice.int(1...2), window: .nanoseconds(max(20_000_000, $0.window.nanoseconds / 2)))
            }
        default:
            return limits + [Limit(calls: dice.int(1...4), window: .milliseconds(dice.int(20...5000)))]
        }
    }

    /// How far back the rule looks.
    var horizon: Duration { Ledger.horizon(limits: limits, guardBand: guardBand) }

    var description: String { "\(limits.map(\.spec).joined(separator: " + ")) guard \(guardBand.configString)" }
}

private struct ModelSettings: CustomStringConvertible {
    /// The APIs of the run, in the order they were drawn: the first one gets more submissions.
    let apis: [UpstreamAPI]
    var quota: [UpstreamAPI: APIQuota]
    var retryPolicy: RetryPolicy
    var maxConcurrency: Int
    var maxPending: Int

    static func random(_ dice: inout Dice) -> ModelSettings {
        var pool = modelAPIs
        var apis: [UpstreamAPI] = []
        for _ in 0..<dice.int(2...3) { apis.append(pool.remove(at: dice.int(0...pool.count - 1))) }
        var quota: [UpstreamAPI: APIQuota] = [:]
        for api in apis { quota[api] = .random(&dice) }
        return ModelSettings(
            apis: apis, quota: quota, retryPolicy: randomPolicy(&dice),
            maxConcurrency: dice.int(1...4), maxPending: dice.int(2...30))
    }

    static func randomPolicy(_ dice: inout Dice) -> RetryPolicy {
        RetryPolicy(
            maxAttempts: dice.int(1...4), initialBackoff: .milliseconds(dice.int(10...500)),
            maxBackoff: .milliseconds(dice.int(500...4000)))
    }

    /// Settings after a reload: each API's limits change, or it is left out of the reload and
    /// keeps its own. The one guard band of a reload applies to the APIs it names.
    func reloaded(_ dice: inout Dice) -> (settings: ModelSettings, limits: [UpstreamAPI: [Limit]], guardBand: Duration) {
        var next = self
        var limits: [UpstreamAPI: [Limit]] = [:]
        for api in apis where dice.percent(65) { limits[api] = quota[api]!.reloadedLimits(&dice) }
        let named = apis.filter { limits[$0] != nil }
        let guardBand: Duration =
            dice.percent(30) || named.isEmpty
            ? .milliseconds(dice.int(0...80)) : quota[named[dice.int(0...named.count - 1)]]!.guardBand
        for api in named { next.quota[api] = APIQuota(limits: limits[api]!, guardBand: guardBand) }
        if dice.percent(30) { next.maxConcurrency = dice.int(1...4) }
        if dice.percent(30) { next.maxPending = dice.int(2...30) }
        if dice.percent(30) { next.retryPolicy = Self.randomPolicy(&dice) }
        return (next, limits, guardBand)
    }

    var description: String {
        let retry = "\(retryPolicy.maxAttempts)x \(retryPolicy.initialBackoff.configString)..\(retryPolicy.maxBackoff.configString)"
        let quotas = apis.map { "\($0) \(quota[$0]!)" }.joined(separator: "; ")
        return "\(quotas); retries \(retry), concurrency \(maxConcurrency), pending \(maxPending)"
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
    // Several APIs.
    var threeAPIs = 0
    var dispatchWhileOtherPaused = 0, dispatchWhileOtherFull = 0, concurrentAcrossAPIs = 0
    var sameTargetOtherAPI = 0, reloadLeftOut = 0

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
        threeAPIs += other.threeAPIs
        dispatchWhileOtherPaused += other.dispatchWhileOtherPaused
        dispatchWhileOtherFull += other.dispatchWhileOtherFull
        concurrentAcrossAPIs += other.concurrentAcrossAPIs
        sameTargetOtherAPI += other.sameTargetOtherAPI
        reloadLeftOut += other.reloadLeftOut
    }
}

// MARK: - The model and the harness

/// What the model knows of a job.
private struct ModelJob {
    let id: RequestID
    let api: UpstreamAPI
    let target: String
    let client: ClientID
    var members: [RequestID]
    var state: Scheduler.Job.State = .queued
    var attempts = 0
    var failures = 0
    var reauthorized = false
    /// An attempt may have reached the upstream (every outcome but not sent).
    var left = false
}

/// What makes two requests one job: the same API and target, in any letter case.
private struct ModelKey: Hashable {
    let api: UpstreamAPI
    let target: String
    init(_ api: UpstreamAPI, _ target: String) {
        self.api = api
        self.target = target.lowercased()
    }
}

/// A client's queue in one API.
private struct ModelQueue: Hashable {
    let api: UpstreamAPI
    let client: ClientID
}

private struct ModelDiverged: Error {}

/// A scheduler, the reference model beside it, a virtual clock, and the checks.
private struct ModelHarness {
    var scheduler: Scheduler
    var settings: ModelSettings
    var now = modelEpoch
    /// How many targets this run draws from: few, so that requests coalesce.
    let pool: Int
    var apis: [UpstreamAPI] { settings.apis }

    // The model.
    var jobs: [RequestID: ModelJob] = [:]
    /// The job of each pending request (its own or the one it joined).
    var jobOfRequest: [RequestID: RequestID] = [:]
    /// The unfinished job of each API and target.
    var jobOfKey: [ModelKey: RequestID] = [:]
    /// Every request id used, in order, rejected ones included; ids are never reused.
    var submitted: [RequestID] = []
    var arrival: [RequestID: Int] = [:]
    var admitted = 0
    var finished: Set<RequestID> = []
    var withdrawn: Set<RequestID> = []
    /// Jobs being sent, over all APIs, in dispatch order.
    var inFlight: [RequestID] = []
    /// Each API's pause: nothing of that API starts before it.
    var pausedUntil: [UpstreamAPI: Timestamp] = [:]
    /// The instant of every attempt ever dispatched, per API (the clock never goes back, so in order).
    var dispatchTimes: [UpstreamAPI: [Timestamp]] = [:]
    /// Each client's never-sent jobs in each API, in the order they were queued.
    var fresh: [ModelQueue: [RequestID]] = [:]

    var trace: [String] = []
    var coverage = ModelCoverage()

    init(seed: Int) {
        var dice = Dice(seed)
        settings = .random(&dice)
        pool = dice.int(2...8)
        var ledgers: [UpstreamAPI: any QuotaLedger] = [:]
        for api in settings.apis {
            let quota = settings.quota[api]!
            ledgers[api] = Ledger(limits: quota.limits, guardBand: quota.guardBand)
            dispatchTimes[api] = []
        }
        scheduler = Scheduler(
            ledgers: ledgers, retryPolicy: settings.retryPolicy, maxConcurrency: settings.maxConcurrency,
            maxPending: settings.maxPending)
        coverage.runs = 1
        if settings.apis.count == 3 { coverage.threeAPIs = 1 }
        trace.append("start: \(settings), \(pool) targets")
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

    // MARK: The model's own view of each API

    /// `api` is paused now.
    func paused(_ api: UpstreamAPI) -> Bool {
        pausedUntil[api].map { now < $0 } ?? false
    }

    /// `api` has a job waiting to be sent now: queued, or done backing off.
    func waiting(_ api: UpstreamAPI) -> Bool {
        jobs.values.contains { job in
            guard job.api == api else { return false }
            switch job.state {
            case .queued: return true
            case .backingOff(let until): return until <= now
            case .sending: return false
            }
        }
    }

    /// How many of `api`'s attempts count against `limit` at `time`: those in `(time - W - guard, time]`.
    func used(_ api: UpstreamAPI, _ limit: Limit, at time: Timestamp) -> Int {
        used(dispatchTimes[api]!, span: limit.window + settings.quota[api]!.guardBand, at: time)
    }

    func used(_ times: [Timestamp], span: Duration, at time: Timestamp) -> Int {
        var inside = 0
        var index = times.count - 1
        while index >= 0, times[index] > time - span {
            if times[index] <= time { inside += 1 }
            index -= 1
        }
        return inside
    }

    /// The quota rule for `api`, from its dispatches: every limit in force has room at `time`.
    func allows(_ api: UpstreamAPI, at time: Timestamp) -> Bool {
        let quota = settings.quota[api]!
        let times = dispatchTimes[api]!
        return quota.limits.allSatisfy { used(times, span: $0.window + quota.guardBand, at: time) < $0.calls }
    }

    /// The first instant at or after `time` the rule allows an attempt of `api`, by search: it is
    /// `time` itself or the instant an attempt leaves some limit's window.
    func earliestSlot(_ api: UpstreamAPI, notBefore time: Timestamp) -> Timestamp {
        if allows(api, at: time) { return time }
        let quota = settings.quota[api]!
        var candidates: [Timestamp] = []
        for dispatched in dispatchTimes[api]!.reversed() {
            guard dispatched > time - quota.horizon else { break }
            for limit in quota.limits where dispatched + limit.window + quota.guardBand > time {
                candidates.append(dispatched + limit.window + quota.guardBand)
            }
        }
        return candidates.sorted().first { allows(api, at: $0) }!
    }

    /// When the scheduler may next start something: the soonest over the APIs of the first instant
    /// each has a job ready, is past its pause and has room; nil at the concurrency cap.
    func expectedWakeup() -> Timestamp? {
        guard inFlight.count < settings.maxConcurrency else { return nil }
        var readyAt: [UpstreamAPI: Timestamp] = [:]
        for job in jobs.values {
            switch job.state {
            case .queued: readyAt[job.api] = now
            case .backingOff(let until): readyAt[job.api] = min(readyAt[job.api] ?? until, until)
            case .sending: break
            }
        }
        var soonest: Timestamp?
        for api in apis {
            guard let readyAt = readyAt[api] else { continue }
            var wakeup = earliestSlot(api, notBefore: max(now, readyAt))
            if let pause = pausedUntil[api] { wakeup = max(wakeup, pause) }
            soonest = min(soonest ?? wakeup, wakeup)
        }
        return soonest
    }

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
        // The first API of the run gets more work, so that it fills its ledger while others go on.
        let api = dice.percent(40) ? apis[0] : apis[dice.int(0...apis.count - 1)]
        let target = modelTarget(dice.int(0...pool - 1), spelling: dice.int(0...2))
        let id = "r\(submitted.count)"
        arrival[id] = submitted.count
        submitted.append(id)
        let key = ModelKey(api, target)

        let expected: Scheduler.Admission
        if jobOfRequest.count >= settings.maxPending {
            expected = .queueFull
        } else if let leader = jobOfKey[key] {
            expected = .joined(leader: leader)
        } else {
            expected = .queued
        }
        let admission = scheduler.submit(id, api: api, target: target, client: client)
        log("submit \(id) \(client) \(api) \(target) → \(admission)")
        try check(admission == expected, "submit \(id) to \(api): the scheduler answered \(admission), the model \(expected)")

        switch expected {
        case .queueFull:
            coverage.queueFull += 1
            return
        case .joined(let leader):
            try check(jobs[leader]!.api == api, "\(id) for \(api) joined \(leader), a job of \(jobs[leader]!.api)")
            jobs[leader]!.members.append(id)
            jobOfRequest[id] = leader
            if jobs[leader]!.target != target { coverage.joinedOtherSpelling += 1 }
            if jobs[leader]!.state == .sending { coverage.joinedWhileSending += 1 }
        case .queued:
            if apis.contains(where: { $0 != api && jobOfKey[ModelKey($0, target)] != nil }) {
                coverage.sameTargetOtherAPI += 1
            }
            jobs[id] = ModelJob(id: id, api: api, target: target, client: client, members: [id])
            jobOfRequest[id] = id
            jobOfKey[key] = id
            fresh[ModelQueue(api: api, client: client), default: []].append(id)
        }
        admitted += 1

        // Its place in its API's line, if queued, is a real place no earlier than now or that
        // API's pause.
        let job = scheduler.job(of: id)
        let position = scheduler.position(of: id, at: now)
        if job?.state == .queued {
            let queued = scheduler.queuedJobs(api)
            try check(position != nil, "\(id) is queued but has no position")
            try check(
                position!.position >= 1 && position!.position <= queued,
                "\(id) is at position \(position!.position) of \(queued) queued jobs of \(api)")
            let pause = pausedUntil[api] ?? now
            try check(
                position!.estimatedDispatchAt >= max(now, pause),
                "\(id) is estimated to go at \(rel(position!.estimatedDispatchAt)), before now or \(api)'s pause")
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
                jobOfKey[ModelKey(job.api, job.target)] = nil
                fresh[ModelQueue(api: job.api, client: job.client)]?.removeAll { $0 == jobID }
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
        // Why it stopped: the cap, or else every API with work waits for its pause or its ledger.
        // A full or paused API holds back no other one.
        if inFlight.count >= settings.maxConcurrency {
            coverage.concurrencyRefused += 1
        } else {
            for api in apis where waiting(api) {
                try check(
                    paused(api) || !allows(api, at: now),
                    "\(api) has work, is not paused and has room, yet nothing was dispatched (\(inFlight.count) in flight)")
            }
        }
        if apis.contains(where: { paused($0) }) { coverage.pauseRefused += 1 }
        if apis.contains(where: { waiting($0) && !paused($0) && !allows($0, at: now) }) { coverage.limitRefused += 1 }
        // After a full drain, nothing is due now: a wake-up at `now` would spin.
        let wakeup = scheduler.nextWakeup(after: now)
        try check(wakeup == nil || wakeup! > now, "after draining, the wake-up is \(rel(wakeup)), not after now")
    }

    mutating func accept(_ dispatch: Scheduler.Dispatch) throws {
        log("dispatch \(dispatch.api) \(dispatch.job) attempt \(dispatch.attempt) members \(dispatch.members)")
        coverage.dispatches += 1
        let api = dispatch.api
        try check(apis.contains(api), "\(dispatch.job) dispatched to \(api), which is no API of this run")
        try check(
            !paused(api),
            "\(dispatch.job) dispatched to \(api) while it is paused until \(rel(pausedUntil[api]))")
        try check(
            inFlight.count < settings.maxConcurrency,
            "\(dispatch.job) dispatched with \(inFlight.count) in flight over all APIs, max \(settings.maxConcurrency)")
        // The quota rule, for every limit of this API in force now, over every attempt of this API
        // ever made: fewer than N in (now - W - guard, now] before this one.
        let quota = settings.quota[api]!
        for limit in quota.limits {
            let inside = used(api, limit, at: now)
            try check(
                inside < limit.calls,
                "\(dispatch.job) dispatched to \(api) with \(inside) attempts already in the last \((limit.window + quota.guardBand).configString) (limit \(limit), guard \(quota.guardBand.configString))"
            )
        }
        // What the other APIs are doing meanwhile.
        for other in apis where other != api && waiting(other) {
            if paused(other) { coverage.dispatchWhileOtherPaused += 1 }
            else if !allows(other, at: now) { coverage.dispatchWhileOtherFull += 1 }
        }
        if inFlight.contains(where: { jobs[$0]?.api != api }) { coverage.concurrentAcrossAPIs += 1 }

        try check(jobs[dispatch.job] != nil, "dispatched \(dispatch.job), which is no unfinished job")
        var job = jobs[dispatch.job]!
        switch job.state {
        case .queued: break
        case .backingOff(let until):
            try check(until <= now, "\(job.id) dispatched during its backoff (until \(rel(until)))")
        case .sending:
            try check(false, "\(job.id) dispatched while already being sent")
        }
        try check(api == job.api, "\(job.id) of \(job.api) dispatched to \(api)")
        try check(dispatch.members == job.members, "dispatch members \(dispatch.members), model \(job.members)")
        try check(
            dispatch.members.allSatisfy { !withdrawn.contains($0) && !finished.contains($0) },
            "dispatch members \(dispatch.members) include a withdrawn or finished request")
        try check(dispatch.attempt == job.attempts + 1, "attempt \(dispatch.attempt), model \(job.attempts + 1)")
        try check(dispatch.target == job.target, "sent as \(dispatch.target), first spelled \(job.target)")
        if job.attempts == 0 {
            let queue = ModelQueue(api: api, client: job.client)
            let next = fresh[queue]?.first
            try check(
                next == job.id,
                "\(job.id) is \(job.client)'s first attempt of \(api) out of turn: \(String(describing: next)) was queued before it")
            fresh[queue]!.removeFirst()
        }

        job.state = .sending
        job.attempts += 1
        jobs[job.id] = job
        inFlight.append(job.id)
        dispatchTimes[api]!.append(now)
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
            // The API that answered 429 pauses; no other one does.
            let until = now + (retryAfter ?? .seconds(60))
            pausedUntil[job.api] = max(pausedUntil[job.api] ?? until, until)
            job.state = .queued
            expected = .throttled(until: pausedUntil[job.api]!)
            coverage.throttled += 1
            if retryAfter == nil { coverage.throttledDefault += 1 }
        case .notSent:
            // The store failed: every API pauses.
            let until = now + .seconds(1)
            for api in apis { pausedUntil[api] = max(pausedUntil[api] ?? until, until) }
            job.state = .queued
            expected = .notSent(until: pausedUntil[job.api]!)
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
        log("finish \(job.api) \(jobID) \(outcome) → \(resolution)")
        try check(
            resolution == expected,
            "finish \(jobID) of \(job.api) \(outcome): the scheduler decided \(resolution), the model \(expected)")

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
            jobOfKey[ModelKey(job.api, job.target)] = nil
            for member in job.members {
                try check(scheduler.job(of: member) == nil, "finished \(member) still has a job")
            }
        } else {
            jobs[jobID] = job
        }
    }

    mutating func reconfigure(_ dice: inout Dice) throws {
        try checkLedgers()
        let (next, limits, guardBand) = settings.reloaded(&dice)
        // As the gateway does: a longer horizon reads the API's earlier attempts back from the
        // store, which keeps every one (here: every dispatch of that API ever made).
        var earlier: [UpstreamAPI: [Timestamp]] = [:]
        for api in apis where limits[api] != nil {
            if next.quota[api]!.horizon > scheduler.ledger(api).horizon {
                coverage.lengthened += 1
                earlier[api] = dispatchTimes[api]!
            }
        }
        if dice.percent(30), let other = apis.first(where: { limits[$0] == nil }) {
            // Earlier attempts of an API the reload leaves out change nothing.
            earlier[other] = dispatchTimes[other]!
        }
        if limits.count < apis.count && !limits.isEmpty { coverage.reloadLeftOut += 1 }
        settings = next
        scheduler.reconfigure(
            limits: limits, guardBand: guardBand, retryPolicy: settings.retryPolicy,
            maxConcurrency: settings.maxConcurrency, maxPending: settings.maxPending, earlierAttempts: earlier)
        coverage.reconfigured += 1
        log("reconfigure \(apis.filter { limits[$0] != nil }) guard \(guardBand.configString): \(settings)")
    }

    /// The process dies and starts again: a new scheduler from each API's ledger attempts and
    /// pause, and the unfinished jobs in their original order (that of their oldest member, as the
    /// store returns them). Attempts in flight are lost; their jobs come back queued.
    mutating func restore(_ dice: inout Dice) throws {
        try checkLedgers()
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
                    id: job.id, api: job.api, target: job.target, client: job.client, members: job.members,
                    state: state, attempts: job.attempts, failures: job.failures))
        }

        var ledgers: [UpstreamAPI: any QuotaLedger] = [:]
        for api in apis {
            let quota = settings.quota[api]!
            ledgers[api] = Ledger(limits: quota.limits, guardBand: quota.guardBand, attempts: Array(ledger(api).attempts))
        }
        let pauses = apis.compactMap { api in scheduler.pausedUntil(api).map { (api, $0) } }
        let pauseLater = dice.percent(30)
        // When every API is paused, sometimes the shortest pause is put back for all at once first.
        let pauseAllFirst = pauses.count == apis.count && dice.percent(30)
        let shortenAfter = dice.percent(20)
        scheduler = Scheduler(
            ledgers: ledgers, retryPolicy: settings.retryPolicy, maxConcurrency: settings.maxConcurrency,
            maxPending: settings.maxPending)
        func putBackPauses(_ scheduler: inout Scheduler) {
            if pauseAllFirst { scheduler.pauseAll(until: pauses.map(\.1).min()!) }
            for (api, until) in pauses { scheduler.pause(api, until: until) }
            // A shorter pause given later changes nothing.
            if shortenAfter { for (api, until) in pauses { scheduler.pause(api, until: until - .seconds(1)) } }
        }
        if !pauseLater { putBackPauses(&scheduler) }
        if dice.percent(50) {
            scheduler.restore(recovered)
        } else {
            for job in recovered { scheduler.restore(job) }
        }
        if pauseLater { putBackPauses(&scheduler) }

        inFlight = []
        fresh = [:]
        for job in order where job.attempts == 0 { fresh[ModelQueue(api: job.api, client: job.client), default: []].append(job.id) }
        log("restore \(recovered.count) jobs: \(recovered.map(\.id)); pauses \(pauses.map { "\($0.0) \(rel($0.1))" })")
    }

    /// Everything left is answered 200, and the queues must drain to nothing.
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
        for api in apis {
            try check(scheduler.queuedJobs(api) == 0, "nothing left, yet \(scheduler.queuedJobs(api)) queued for \(api)")
        }
        try check(scheduler.nextWakeup(after: now) == nil, "nothing left, yet a wake-up")
        for id in submitted {
            try check(scheduler.job(of: id) == nil, "\(id) still has a job after everything finished")
        }
        try check(
            admitted == finished.count + withdrawn.count,
            "\(admitted) admitted, \(finished.count) finished, \(withdrawn.count) withdrawn")
        try checkLedgers()
    }

    // MARK: Invariants after every step

    func ledger(_ api: UpstreamAPI) -> Ledger { scheduler.ledger(api) as! Ledger }

    /// Each API's ledger has that API's limits (a reload that left it out kept them), holds
    /// exactly that API's latest dispatches, and counts in each window what the model does.
    func checkLedgers() throws {
        for api in apis {
            let ledger = ledger(api)
            let quota = settings.quota[api]!
            try check(
                ledger.limits == quota.limits && ledger.guardBand == quota.guardBand,
                "\(api)'s ledger has \(ledger.limits.map(\.spec)) guard \(ledger.guardBand.configString), model \(quota)")
            let kept = ledger.attempts
            let times = dispatchTimes[api]!
            try check(
                kept.elementsEqual(times.suffix(kept.count)),
                "\(api)'s ledger holds \(kept.map(rel)), not its last \(kept.count) dispatches \(times.suffix(kept.count).map(rel))")
            for limit in quota.limits {
                let counted = ledger.used(limit, at: now)
                let expected = used(times, span: limit.window + quota.guardBand, at: now)
                try check(counted == expected, "\(api)'s ledger counts \(counted) against \(limit), model \(expected)")
            }
        }
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
        try check(scheduler.apis == apis.sorted(), "the scheduler has lanes \(scheduler.apis), model \(apis.sorted())")
        for api in apis {
            try check(
                pausedUntil[api] == scheduler.pausedUntil(api),
                "\(api) paused until \(rel(scheduler.pausedUntil(api))), model \(rel(pausedUntil[api]))")
        }
        try checkLedgers()

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
                    actual.api == job.api && actual.client == job.client && actual.target == job.target,
                    "job \(job.id) is \(actual.api) \(actual.client) \(actual.target), model \(job.api) \(job.client) \(job.target)")
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

        // Queue depths: per client summed over the APIs, only clients with queued jobs, each once;
        // and per API.
        var queued: [ClientID: Int] = [:]
        var due: [ClientID: Int] = [:]
        var queuedOfAPI: [UpstreamAPI: Int] = [:]
        var dueOfAPI: [UpstreamAPI: Int] = [:]
        for job in jobs.values {
            switch job.state {
            case .queued:
                queued[job.client, default: 0] += 1
                queuedOfAPI[job.api, default: 0] += 1
            case .backingOff(let until) where until <= now:
                due[job.client, default: 0] += 1
                dueOfAPI[job.api, default: 0] += 1
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
        for api in apis {
            let depth = scheduler.queuedJobs(api)
            let low = queuedOfAPI[api, default: 0]
            let high = low + dueOfAPI[api, default: 0]
            try check(low <= depth && depth <= high, "\(api) has \(depth) queued jobs, model \(low)...\(high)")
        }

        // The wake-up is exactly the model's: the soonest over the APIs, each after its own pause
        // and by its own ledger; none at the concurrency cap or with nothing waiting.
        let wakeup = scheduler.nextWakeup(after: now)
        try check(wakeup == nil || wakeup! >= now, "nextWakeup(after: now) is \(rel(wakeup)), before now")
        let expected = expectedWakeup()
        try check(wakeup == expected, "nextWakeup(after: now) is \(rel(wakeup)), model \(rel(expected))")
        if wakeup == nil, inFlight.count < settings.maxConcurrency {
            let waiting = jobs.values.filter { $0.state != .sending }.map(\.id)
            try check(waiting.isEmpty, "no wake-up, \(inFlight.count) in flight, yet \(waiting) wait")
        }
    }
}
