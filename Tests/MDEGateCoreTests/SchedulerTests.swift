import MDEGateCore
import Testing

func makeScheduler(
    limits: [Limit] = [Limit(calls: 100, window: .seconds(60))],
    guardBand: Duration = .zero,
    maxAttempts: Int = 4,
    maxConcurrency: Int = 8,
    maxPending: Int = 1000
) -> Scheduler {
    Scheduler(
        ledgers: [.cancel: Ledger(limits: limits, guardBand: guardBand)],
        retryPolicy: RetryPolicy(maxAttempts: maxAttempts, initialBackoff: .seconds(1), maxBackoff: .seconds(8)),
        maxConcurrency: maxConcurrency,
        maxPending: maxPending)
}

/// A GUID for machine action number `n`.
func guid(_ n: Int) -> String {
    let hex = String(n, radix: 16)
    return "988cc94e-7a8f-4b28-ab65-" + String(repeating: "0", count: 12 - hex.count) + hex
}

let alice = ClientID(uid: 1000, name: "soar")
let bob = ClientID(uid: 1001)

@Suite("Scheduler: fairness, coalescing, retries and pauses")
struct SchedulerTests {
    @Test("clients are served round-robin, so a flood does not starve a small tool")
    func roundRobin() {
        var scheduler = makeScheduler(maxConcurrency: 100)
        for n in 0..<10 { let result1 = scheduler.submit("a\(n)", api: .cancel, target: guid(n), client: alice); #expect(result1 == .queued) }
        for n in 0..<3 { let result2 = scheduler.submit("b\(n)", api: .cancel, target: guid(100 + n), client: bob); #expect(result2 == .queued) }
        var order: [String] = []
        while let dispatch = scheduler.nextDispatch(at: at(0)) { order.append(dispatch.job) }
        #expect(order == ["a0", "b0", "a1", "b1", "a2", "b2", "a3", "a4", "a5", "a6", "a7", "a8", "a9"])
    }

    @Test("a cancel for an id already queued or being sent joins it, ids compared case-insensitively")
    func coalescing() {
        var scheduler = makeScheduler()
        let id = "988CC94E-7A8F-4B28-AB65-54970C5D5018"
        let result3 = scheduler.submit("r1", api: .cancel, target: id, client: alice)
        #expect(result3 == .queued)
        let result4 = scheduler.submit("r2", api: .cancel, target: id.lowercased(), client: bob)
        #expect(result4 == .joined(leader: "r1"))
        let dispatch = scheduler.nextDispatch(at: at(0))
        #expect(dispatch?.members == ["r1", "r2"])
        #expect(dispatch?.target == id)
        let result5 = scheduler.submit("r3", api: .cancel, target: id, client: bob)
        #expect(result5 == .joined(leader: "r1"))
        let result6 = scheduler.nextDispatch(at: at(0))
        #expect(result6 == nil)
        let resolution = scheduler.finish("r1", outcome: .answered(status: 200, retryAfter: nil), at: at(1), jitter: 0)
        #expect(resolution == .finished(members: ["r1", "r2", "r3"], attempts: 1))
        #expect(scheduler.pendingRequests == 0)
        // Once finished, the same id starts a new job.
        let result7 = scheduler.submit("r4", api: .cancel, target: id, client: alice)
        #expect(result7 == .queued)
    }

    @Test("a queued request can be withdrawn; once sent it cannot")
    func withdrawal() {
        var scheduler = makeScheduler()
        _ = scheduler.submit("r1", api: .cancel, target: guid(1), client: alice)
        _ = scheduler.submit("r2", api: .cancel, target: guid(1), client: bob)
        _ = scheduler.submit("r3", api: .cancel, target: guid(2), client: alice)
        let result8 = scheduler.withdraw("r1")
        #expect(result8 == .withdrawn(jobCancelled: false))
        let result9 = scheduler.withdraw("r1")
        #expect(result9 == .notPending)
        #expect(scheduler.job(of: "r1") == nil, "a withdrawn leader is no member of the job that keeps its id")
        #expect(scheduler.job(of: "r2")?.id == "r1")
        #expect(scheduler.job(of: "r3")?.id == "r3")
        let first = scheduler.nextDispatch(at: at(0))
        #expect(first?.members == ["r2"])
        let result10 = scheduler.withdraw("r2")
        #expect(result10 == .alreadySent)
        let result11 = scheduler.withdraw("r3")
        #expect(result11 == .withdrawn(jobCancelled: true))
        let result12 = scheduler.nextDispatch(at: at(0))
        #expect(result12 == nil)
        #expect(scheduler.depthByClient().isEmpty)
        let result13 = scheduler.withdraw("nope")
        #expect(result13 == .notPending)
    }

    @Test("running counts: queued and sending requests follow submit, join, dispatch, retract and finish")
    func runningCounts() {
        var scheduler = makeScheduler()
        let t = Timestamp(secondsSinceEpoch: 1_000)
        _ = scheduler.submit("a", api: .cancel, target: guid(1), client: alice)
        _ = scheduler.submit("b", api: .cancel, target: guid(2), client: bob)
        #expect((scheduler.queuedRequests, scheduler.sendingRequests) == (2, 0))
        let first = scheduler.nextDispatch(at: t)
        #expect(first?.job == "a")
        _ = scheduler.submit("a2", api: .cancel, target: guid(1).uppercased(), client: bob)
        #expect((scheduler.queuedRequests, scheduler.sendingRequests) == (1, 2), "a joiner of a job being sent is sending")
        let retracted = scheduler.retract("a2")
        #expect(retracted)
        #expect((scheduler.queuedRequests, scheduler.sendingRequests) == (1, 1))
        _ = scheduler.finish("a", outcome: .answered(status: 200, retryAfter: nil), at: t, jitter: 0)
        #expect((scheduler.queuedRequests, scheduler.sendingRequests) == (1, 0))
        #expect(scheduler.inFlight == 0)
    }

    @Test("retract takes back a request whatever its job's state, the job too when it was its last member")
    func retract() {
        var scheduler = makeScheduler()
        let t = Timestamp(secondsSinceEpoch: 1_000)
        _ = scheduler.submit("a", api: .cancel, target: guid(1), client: alice)
        _ = scheduler.submit("b", api: .cancel, target: guid(2), client: alice)
        // Dispatched in the commit that failed: the job goes with its only request.
        let dispatched = scheduler.nextDispatch(at: t)
        #expect(dispatched?.job == "a")
        var retracted = scheduler.retract("a")
        #expect(retracted)
        #expect(scheduler.inFlight == 0 && scheduler.job(id: "a") == nil)
        // Queued: it leaves the queue and the rotation.
        retracted = scheduler.retract("b")
        #expect(retracted)
        #expect(scheduler.depthByClient().isEmpty && scheduler.pendingRequests == 0)
        retracted = scheduler.retract("b")
        #expect(!retracted, "not pending any more")
        // The machine action ids are free again: a new request makes a new job.
        let admission = scheduler.submit("c", api: .cancel, target: guid(1), client: bob)
        #expect(admission == .queued)
        let next = scheduler.nextDispatch(at: t)
        #expect(next?.job == "c")
        // A leader taken back while a joiner rides on: the job keeps its id and the joiner.
        _ = scheduler.submit("d", api: .cancel, target: guid(3), client: bob)
        _ = scheduler.submit("e", api: .cancel, target: guid(3), client: alice)
        retracted = scheduler.retract("d")
        #expect(retracted)
        #expect(scheduler.job(of: "e")?.id == "d")
        #expect(scheduler.job(id: "d")?.members == ["e"])
        #expect(scheduler.job(of: "d") == nil)
    }

    @Test("a request whose only attempt could not be stored never left, so it can still be withdrawn")
    func withdrawAfterNotSent() {
        var scheduler = makeScheduler()
        _ = scheduler.submit("a", api: .cancel, target: guid(1), client: alice)
        _ = scheduler.nextDispatch(at: at(0))
        _ = scheduler.finish("a", outcome: .notSent, at: at(0), jitter: 0)
        let withdrawal = scheduler.withdraw("a")
        #expect(withdrawal == .withdrawn(jobCancelled: true))
        _ = scheduler.submit("b", api: .cancel, target: guid(2), client: alice)
        _ = scheduler.nextDispatch(at: at(2))
        _ = scheduler.finish("b", outcome: .answered(status: 503, retryAfter: nil), at: at(2), jitter: 0)
        let late = scheduler.withdraw("b")
        #expect(late == .alreadySent, "an attempt that got an answer left")
    }

    @Test("the queue is bounded, coalesced requests included")
    func boundedQueue() {
        var scheduler = makeScheduler(maxPending: 2)
        let result14 = scheduler.submit("r1", api: .cancel, target: guid(1), client: alice)
        #expect(result14 == .queued)
        let result15 = scheduler.submit("r2", api: .cancel, target: guid(1), client: alice)
        #expect(result15 == .joined(leader: "r1"))
        let result16 = scheduler.submit("r3", api: .cancel, target: guid(2), client: alice)
        #expect(result16 == .queueFull)
        _ = scheduler.withdraw("r2")
        let result17 = scheduler.submit("r3", api: .cancel, target: guid(2), client: alice)
        #expect(result17 == .queued)
    }

    @Test("a 429 pauses everything until Retry-After and puts the job back at the head, without using a retry")
    func throttling() {
        var scheduler = makeScheduler(maxAttempts: 1)
        _ = scheduler.submit("r1", api: .cancel, target: guid(1), client: alice)
        _ = scheduler.submit("r2", api: .cancel, target: guid(2), client: alice)
        let first = scheduler.nextDispatch(at: at(0))!
        #expect(first.job == "r1")
        let resolution = scheduler.finish("r1", outcome: .answered(status: 429, retryAfter: .seconds(5)), at: at(1), jitter: 0)
        #expect(resolution == .throttled(until: at(6)))
        let result18 = scheduler.nextDispatch(at: at(5.9))
        #expect(result18 == nil)
        #expect(scheduler.nextWakeup(after: at(2)) == at(6))
        let again = scheduler.nextDispatch(at: at(6))!
        #expect(again.job == "r1")
        #expect(again.attempt == 2)
        // max_attempts is 1, yet the throttled attempt did not use it up: a 503 now is final.
        let result19 = scheduler.finish("r1", outcome: .answered(status: 503, retryAfter: nil), at: at(7), jitter: 0)
        #expect(result19
            == .finished(members: ["r1"], attempts: 2))
    }

    @Test("a first 401 sends the job once more, first in line and without using a retry; a second 401 is final")
    func unauthorizedOnce() {
        var scheduler = makeScheduler(maxAttempts: 1)
        _ = scheduler.submit("r1", api: .cancel, target: guid(1), client: alice)
        _ = scheduler.submit("r2", api: .cancel, target: guid(2), client: alice)
        _ = scheduler.nextDispatch(at: at(0))
        let first = scheduler.finish("r1", outcome: .answered(status: 401, retryAfter: nil), at: at(1), jitter: 0)
        #expect(first == .reauthorizing)
        #expect(scheduler.pausedUntil(.cancel) == nil, "a refused token pauses nothing")
        let again = scheduler.nextDispatch(at: at(1))!
        #expect(again.job == "r1", "the job is back at the head of its queue")
        #expect(again.attempt == 2, "the refused attempt counts")
        let second = scheduler.finish("r1", outcome: .answered(status: 401, retryAfter: nil), at: at(2), jitter: 0)
        #expect(second == .finished(members: ["r1"], attempts: 2))
        #expect(scheduler.ledger(.cancel).used(Limit(calls: 100, window: .seconds(60)), at: at(2)) == 2)
    }

    @Test("an attempt that could not be recorded pauses dispatch a second and goes back first in line, without using a retry")
    func notSent() {
        var scheduler = makeScheduler(maxAttempts: 1)
        _ = scheduler.submit("r1", api: .cancel, target: guid(1), client: alice)
        _ = scheduler.submit("r2", api: .cancel, target: guid(2), client: alice)
        _ = scheduler.nextDispatch(at: at(0))
        let resolution = scheduler.finish("r1", outcome: .notSent, at: at(0), jitter: 0)
        #expect(resolution == .notSent(until: at(1)))
        let paused = scheduler.nextDispatch(at: at(0.5))
        #expect(paused == nil)
        let again = scheduler.nextDispatch(at: at(1))!
        #expect(again.job == "r1")
        #expect(again.attempt == 2, "the slot the unsent attempt took stays spent")
        // max_attempts is 1, and the unsent attempt did not use it: a 503 now is final.
        let final = scheduler.finish("r1", outcome: .answered(status: 503, retryAfter: nil), at: at(2), jitter: 0)
        #expect(final == .finished(members: ["r1"], attempts: 2))
    }

    @Test("a 429 without Retry-After pauses for 60 seconds")
    func throttlingDefault() {
        var scheduler = makeScheduler()
        _ = scheduler.submit("r1", api: .cancel, target: guid(1), client: alice)
        _ = scheduler.nextDispatch(at: at(0))
        let result20 = scheduler.finish("r1", outcome: .answered(status: 429, retryAfter: nil), at: at(0), jitter: 0)
        #expect(result20
            == .throttled(until: at(60)))
        #expect(scheduler.pausedUntil(.cancel) == at(60))
    }

    @Test("5xx and missing answers are retried with growing backoff until max_attempts")
    func retries() {
        var scheduler = makeScheduler(maxAttempts: 3)
        _ = scheduler.submit("r1", api: .cancel, target: guid(1), client: alice)
        _ = scheduler.nextDispatch(at: at(0))
        let result21 = scheduler.finish("r1", outcome: .answered(status: 503, retryAfter: nil), at: at(0), jitter: 0.999_999_999)
        #expect(result21
            == .retrying(at: Timestamp(nanosecondsSinceEpoch: 999_999_999), attempts: 1))
        let result22 = scheduler.withdraw("r1")
        #expect(result22 == .alreadySent)
        let result23 = scheduler.nextDispatch(at: at(0.5))
        #expect(result23 == nil)
        #expect(scheduler.nextWakeup(after: at(0.5)) == Timestamp(nanosecondsSinceEpoch: 999_999_999))
        let result24 = scheduler.nextDispatch(at: at(1))
        #expect(result24?.attempt == 2)
        // Equal jitter: the second backoff is between 1 s and 2 s.
        let result25 = scheduler.finish("r1", outcome: .unanswered, at: at(1), jitter: 0)
        #expect(result25 == .retrying(at: at(2), attempts: 2))
        let result26 = scheduler.nextDispatch(at: at(2))
        #expect(result26?.attempt == 3)
        let result27 = scheduler.finish("r1", outcome: .answered(status: 500, retryAfter: nil), at: at(3), jitter: 0)
        #expect(result27
            == .finished(members: ["r1"], attempts: 3))
    }

    @Test("4xx answers other than 429 are final")
    func clientErrorsAreFinal() {
        var scheduler = makeScheduler()
        _ = scheduler.submit("r1", api: .cancel, target: guid(1), client: alice)
        _ = scheduler.nextDispatch(at: at(0))
        let result28 = scheduler.finish("r1", outcome: .answered(status: 404, retryAfter: nil), at: at(0), jitter: 0)
        #expect(result28
            == .finished(members: ["r1"], attempts: 1))
    }

    @Test("no more than max_concurrency attempts are in flight")
    func concurrencyCap() {
        var scheduler = makeScheduler(maxConcurrency: 2)
        for n in 0..<4 { _ = scheduler.submit("r\(n)", api: .cancel, target: guid(n), client: alice) }
        let result29 = scheduler.nextDispatch(at: at(0))
        #expect(result29 != nil)
        let result30 = scheduler.nextDispatch(at: at(0))
        #expect(result30 != nil)
        let result31 = scheduler.nextDispatch(at: at(0))
        #expect(result31 == nil)
        #expect(scheduler.nextWakeup(after: at(0)) == nil)
        _ = scheduler.finish("r0", outcome: .answered(status: 200, retryAfter: nil), at: at(0), jitter: 0)
        let result32 = scheduler.nextDispatch(at: at(0))
        #expect(result32?.job == "r2")
    }

    @Test("a queued request knows its place in line and when its slot opens")
    func positions() {
        var scheduler = makeScheduler(limits: [Limit(calls: 2, window: .seconds(1))], maxConcurrency: 100)
        for n in 0..<4 { _ = scheduler.submit("a\(n)", api: .cancel, target: guid(n), client: alice) }
        _ = scheduler.submit("b0", api: .cancel, target: guid(10), client: bob)
        // Order of dispatch: a0 b0 a1 a2 a3, two per second.
        #expect(scheduler.position(of: "a0", at: at(0))! == (1, at(0)))
        #expect(scheduler.position(of: "b0", at: at(0))! == (2, at(0)))
        #expect(scheduler.position(of: "a1", at: at(0))! == (3, at(1)))
        #expect(scheduler.position(of: "a3", at: at(0))! == (5, at(2)))
        #expect(scheduler.depthByClient().map(\.depth) == [4, 1])

        // The estimate follows the ledger: after two dispatches and a late departure, the next
        // slots are where the new attempts put them, not where the cached projection had them.
        _ = scheduler.nextDispatch(at: at(0))
        _ = scheduler.nextDispatch(at: at(0))
        #expect(scheduler.position(of: "a1", at: at(0))! == (1, at(1)))
        scheduler.attemptDeparted(.cancel, dispatchedAt: at(0), at: at(0.25))
        #expect(scheduler.position(of: "a1", at: at(0))! == (1, at(1)), "one of the two attempts still frees its slot at 1 s")
        #expect(scheduler.position(of: "a2", at: at(0))! == (2, at(1.25)), "the other one left at 0.25 s")
        scheduler.reconfigure(
            limits: [.cancel: [Limit(calls: 1, window: .seconds(2))]], guardBand: .zero, retryPolicy: scheduler.retryPolicy,
            maxConcurrency: 100, maxPending: 1000)
        #expect(scheduler.position(of: "a1", at: at(0))! == (1, at(2.25)), "a reload moves the estimate too")
    }

    @Test("recovered jobs keep their attempts and an interrupted send is queued again")
    func restore() {
        var scheduler = makeScheduler()
        _ = scheduler.submit("r1", api: .cancel, target: guid(1), client: alice)
        _ = scheduler.nextDispatch(at: at(0))
        let interrupted = scheduler.job(of: "r1")!
        var recovered = makeScheduler()
        recovered.restore(interrupted)
        #expect(recovered.job(of: "r1")?.state == .queued)
        let result33 = recovered.withdraw("r1")
        #expect(result33 == .alreadySent)
        let result34 = recovered.nextDispatch(at: at(1))
        #expect(result34?.attempt == 2)
        let result35 = recovered.submit("r2", api: .cancel, target: guid(1).uppercased(), client: bob)
        #expect(result35 == .joined(leader: "r1"))
    }
}
