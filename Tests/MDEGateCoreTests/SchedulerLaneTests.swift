import MDEGateCore
import Testing

private let isolateAPI = UpstreamAPI("isolate")
private let machineActionAPI = UpstreamAPI("get_machine_action")

/// Roomy enough that it never holds anything back in these tests.
private let roomy = [Limit(calls: 100, window: .seconds(60))]

/// A scheduler with a lane for each API in `limits`.
private func laneScheduler(
    _ limits: [UpstreamAPI: [Limit]],
    maxConcurrency: Int = 8
) -> Scheduler {
    Scheduler(
        ledgers: limits.mapValues { Ledger(limits: $0, guardBand: .zero) },
        retryPolicy: RetryPolicy(maxAttempts: 4, initialBackoff: .seconds(1), maxBackoff: .seconds(8)),
        maxConcurrency: maxConcurrency,
        maxPending: 1000)
}

private let answered200 = AttemptOutcome.answered(status: 200, retryAfter: nil)

@Suite("Scheduler: one lane per upstream API")
struct SchedulerLaneTests {
    @Test("a saturated API never delays a request for another API, even from the same client")
    func saturatedAPIDoesNotDelayAnother() {
        let oncePerMinute = Limit(calls: 1, window: .seconds(60))
        var scheduler = laneScheduler([.cancel: roomy, isolateAPI: [oncePerMinute]])
        for n in 0..<3 { _ = scheduler.submit("i\(n)", api: isolateAPI, target: guid(n), client: alice) }
        let first = scheduler.nextDispatch(at: at(0))
        #expect(first?.job == "i0" && first?.api == isolateAPI)
        let spent = scheduler.nextDispatch(at: at(1))
        #expect(spent == nil, "isolate's one call a minute is spent")
        #expect(scheduler.nextWakeup(after: at(1)) == at(60))

        _ = scheduler.submit("c0", api: .cancel, target: guid(100), client: alice)
        #expect(scheduler.nextWakeup(after: at(1)) == at(1), "cancel's own ledger has room now")
        let cancel = scheduler.nextDispatch(at: at(1))
        #expect(cancel?.job == "c0" && cancel?.api == .cancel)
        // Now isolate's turn comes first, and it still cannot go: cancel does not wait behind it.
        _ = scheduler.submit("c1", api: .cancel, target: guid(101), client: alice)
        let again = scheduler.nextDispatch(at: at(2))
        #expect(again?.job == "c1")
        #expect(scheduler.queuedJobs(isolateAPI) == 2 && scheduler.queuedJobs(.cancel) == 0)
        // Each ledger counts its own API's attempts only.
        #expect(scheduler.ledger(.cancel).used(roomy[0], at: at(2)) == 2)
        #expect(scheduler.ledger(isolateAPI).used(oncePerMinute, at: at(2)) == 1)
        #expect(scheduler.nextWakeup(after: at(2)) == at(60), "then only isolate waits, for its own slot")
    }

    @Test("a 429 pauses only the API that got it")
    func throttlePausesOneAPI() {
        var scheduler = laneScheduler([.cancel: roomy, isolateAPI: roomy])
        _ = scheduler.submit("i0", api: isolateAPI, target: guid(1), client: alice)
        _ = scheduler.nextDispatch(at: at(0))
        let resolution = scheduler.finish("i0", outcome: .answered(status: 429, retryAfter: .seconds(30)), at: at(1), jitter: 0)
        #expect(resolution == .throttled(until: at(31)))
        #expect(scheduler.pausedUntil(isolateAPI) == at(31))
        #expect(scheduler.pausedUntil(.cancel) == nil)

        _ = scheduler.submit("i1", api: isolateAPI, target: guid(2), client: bob)
        _ = scheduler.submit("c0", api: .cancel, target: guid(3), client: bob)
        let cancel = scheduler.nextDispatch(at: at(2))
        #expect(cancel?.job == "c0", "cancel goes on while isolate is paused")
        let paused = scheduler.nextDispatch(at: at(2))
        #expect(paused == nil)
        #expect(scheduler.nextWakeup(after: at(2)) == at(31))
        let again = scheduler.nextDispatch(at: at(31))
        #expect(again?.job == "i0" && again?.attempt == 2, "the throttled job is first in isolate's line")
    }

    @Test("a store failure (notSent) pauses every API, and leaves a longer pause as it was")
    func notSentPausesEveryAPI() {
        var scheduler = laneScheduler([.cancel: roomy, isolateAPI: roomy, machineActionAPI: roomy])
        scheduler.pause(machineActionAPI, until: at(30))
        _ = scheduler.submit("c0", api: .cancel, target: guid(1), client: alice)
        _ = scheduler.nextDispatch(at: at(0))
        let resolution = scheduler.finish("c0", outcome: .notSent, at: at(0), jitter: 0)
        #expect(resolution == .notSent(until: at(1)))
        #expect(scheduler.pausedUntil(.cancel) == at(1))
        #expect(scheduler.pausedUntil(isolateAPI) == at(1), "isolate did nothing wrong, yet the store is down for it too")
        #expect(scheduler.pausedUntil(machineActionAPI) == at(30))

        _ = scheduler.submit("i0", api: isolateAPI, target: guid(2), client: bob)
        let during = scheduler.nextDispatch(at: at(0.5))
        #expect(during == nil)
        #expect(scheduler.nextWakeup(after: at(0.5)) == at(1))
        var sent: [UpstreamAPI] = []
        while let dispatch = scheduler.nextDispatch(at: at(1)) { sent.append(dispatch.api) }
        #expect(Set(sent) == [.cancel, isolateAPI])
        #expect(sent.count == 2)
    }

    @Test("the same target on two APIs is two upstream calls; on one API, one call")
    func sameTargetOnTwoAPIs() {
        var scheduler = laneScheduler([.cancel: roomy, isolateAPI: roomy])
        let target = guid(7)
        let cancel = scheduler.submit("r1", api: .cancel, target: target, client: alice)
        #expect(cancel == .queued)
        let isolate = scheduler.submit("r2", api: isolateAPI, target: target.uppercased(), client: alice)
        #expect(isolate == .queued, "not joined: isolating a machine is not cancelling an action")
        let sameIsolate = scheduler.submit("r3", api: isolateAPI, target: target, client: bob)
        #expect(sameIsolate == .joined(leader: "r2"))
        let sameCancel = scheduler.submit("r4", api: .cancel, target: target.uppercased(), client: bob)
        #expect(sameCancel == .joined(leader: "r1"))

        var dispatches: [Scheduler.Dispatch] = []
        while let dispatch = scheduler.nextDispatch(at: at(0)) { dispatches.append(dispatch) }
        #expect(dispatches.map(\.api) == [.cancel, isolateAPI])
        #expect(dispatches.map(\.members) == [["r1", "r4"], ["r2", "r3"]])

        let finished = scheduler.finish("r1", outcome: answered200, at: at(1), jitter: 0)
        #expect(finished == .finished(members: ["r1", "r4"], attempts: 1))
        #expect(scheduler.job(of: "r3")?.api == isolateAPI, "the isolate call is still out")
        let newCancel = scheduler.submit("r5", api: .cancel, target: target, client: alice)
        #expect(newCancel == .queued)
        let stillIsolating = scheduler.submit("r6", api: isolateAPI, target: target, client: alice)
        #expect(stillIsolating == .joined(leader: "r2"))
    }

    @Test("under the concurrency cap, APIs take turns, whichever filled its queue first")
    func lanesTakeTurns() {
        var scheduler = laneScheduler([.cancel: roomy, isolateAPI: roomy, machineActionAPI: roomy], maxConcurrency: 1)
        for n in 0..<4 { _ = scheduler.submit("i\(n)", api: isolateAPI, target: guid(n), client: alice) }
        for n in 0..<2 { _ = scheduler.submit("c\(n)", api: .cancel, target: guid(n), client: alice) }
        for n in 0..<2 { _ = scheduler.submit("g\(n)", api: machineActionAPI, target: guid(n), client: alice) }
        var order: [String] = []
        for _ in 0..<8 {
            guard let dispatch = scheduler.nextDispatch(at: at(0)) else { break }
            let capped = scheduler.nextDispatch(at: at(0))
            #expect(capped == nil, "one attempt in flight at most, over all APIs")
            order.append(dispatch.job)
            _ = scheduler.finish(dispatch.job, outcome: answered200, at: at(0), jitter: 0)
        }
        #expect(order == ["c0", "g0", "i0", "c1", "g1", "i1", "i2", "i3"])
    }

    @Test("a flood on one API does not take every slot in flight")
    func floodDoesNotTakeEverySlot() {
        var scheduler = laneScheduler([.cancel: roomy, isolateAPI: roomy], maxConcurrency: 2)
        for n in 0..<10 { _ = scheduler.submit("i\(n)", api: isolateAPI, target: guid(n), client: alice) }
        let first = scheduler.nextDispatch(at: at(0))
        #expect(first?.job == "i0")
        _ = scheduler.submit("c0", api: .cancel, target: guid(100), client: bob)
        let second = scheduler.nextDispatch(at: at(0))
        #expect(second?.job == "c0", "cancel's turn comes before isolate's second slot")
        #expect(scheduler.inFlight == 2)
        let capped = scheduler.nextDispatch(at: at(0))
        #expect(capped == nil)
        #expect(scheduler.nextWakeup(after: at(0)) == nil, "at the cap only a finishing attempt changes anything")
    }

    @Test("a reload that leaves an API out keeps its limits and guard band")
    func reloadLeavesAnAPIOut() {
        let isolateLimit = Limit(calls: 2, window: .seconds(10))
        var scheduler = laneScheduler([.cancel: [Limit(calls: 1, window: .seconds(60))], isolateAPI: [isolateLimit]])
        scheduler.reconfigure(
            limits: [.cancel: [Limit(calls: 5, window: .seconds(60))]], guardBand: .seconds(1),
            retryPolicy: scheduler.retryPolicy, maxConcurrency: 8, maxPending: 1000,
            earlierAttempts: [isolateAPI: [at(-1), at(-2)]])
        #expect(scheduler.ledger(.cancel).limits == [Limit(calls: 5, window: .seconds(60))])
        #expect(scheduler.ledger(.cancel).guardBand == .seconds(1))
        #expect(scheduler.ledger(isolateAPI).limits == [isolateLimit])
        #expect(scheduler.ledger(isolateAPI).guardBand == .zero)
        #expect(scheduler.ledger(isolateAPI).used(isolateLimit, at: at(0)) == 0, "earlier attempts of an API left out are not taken")

        for n in 0..<3 { _ = scheduler.submit("i\(n)", api: isolateAPI, target: guid(n), client: alice) }
        var sent = 0
        while scheduler.nextDispatch(at: at(0)) != nil { sent += 1 }
        #expect(sent == 2, "isolate still allows 2 per 10 s")
        #expect(scheduler.nextWakeup(after: at(0)) == at(10), "with no guard band")
    }

    @Test("a reload that lengthens one API's window counts that API's earlier attempts, and no other's")
    func reloadLengthensOneAPI() {
        let oncePerSecond = [Limit(calls: 1, window: .seconds(1))]
        var scheduler = laneScheduler([.cancel: oncePerSecond, isolateAPI: oncePerSecond])
        for n in 0..<4 {
            _ = scheduler.submit("c\(n)", api: .cancel, target: guid(n), client: alice)
            _ = scheduler.submit("i\(n)", api: isolateAPI, target: guid(n), client: alice)
        }
        var sent: [String] = []
        for second in [0.0, 1.0] {
            while let dispatch = scheduler.nextDispatch(at: at(second)) {
                _ = scheduler.finish(dispatch.job, outcome: answered200, at: at(second), jitter: 0)
                sent.append(dispatch.job)
            }
        }
        #expect(sent == ["c0", "i0", "c1", "i1"], "one of each API a second")
        // Cancel's upstream limit is in fact 3 per 10 s: its attempts at 0 s (which its ledger let
        // go of) and 1 s count. Isolate's earlier attempts are isolate's business.
        scheduler.reconfigure(
            limits: [.cancel: [Limit(calls: 3, window: .seconds(10))]], guardBand: .zero,
            retryPolicy: scheduler.retryPolicy, maxConcurrency: 8, maxPending: 1000,
            earlierAttempts: [.cancel: [at(0), at(1)], isolateAPI: [at(-3), at(-2), at(0), at(1)]])
        var atTwo: [String] = []
        while let dispatch = scheduler.nextDispatch(at: at(2)) { atTwo.append(dispatch.job) }
        #expect(atTwo == ["c2", "i2"], "a third cancel in 10 s is allowed, a fourth is not; isolate goes on at its pace")
        #expect(scheduler.ledger(.cancel).earliestSlot(notBefore: at(2)) == at(10))
        #expect(scheduler.nextWakeup(after: at(2)) == at(3), "isolate's next slot")
    }

    @Test("status depth sums a client's queues over APIs")
    func depthSumsOverAPIs() {
        var scheduler = laneScheduler([.cancel: roomy, isolateAPI: roomy, machineActionAPI: roomy])
        _ = scheduler.submit("b0", api: isolateAPI, target: guid(0), client: bob)
        _ = scheduler.submit("b1", api: machineActionAPI, target: guid(1), client: bob)
        for n in 0..<2 { _ = scheduler.submit("ac\(n)", api: .cancel, target: guid(10 + n), client: alice) }
        for n in 0..<3 { _ = scheduler.submit("ai\(n)", api: isolateAPI, target: guid(20 + n), client: alice) }
        let depths = scheduler.depthByClient()
        #expect(depths.map(\.client) == [alice, bob])
        #expect(depths.map(\.depth) == [5, 2])
        #expect(scheduler.queuedJobs(.cancel) == 2)
        #expect(scheduler.queuedJobs(isolateAPI) == 4)
        #expect(scheduler.queuedJobs(machineActionAPI) == 1)
        #expect(scheduler.queuedRequests == 7)
    }

    @Test("a request's place in line counts only its own API's queue")
    func positionIsPerAPI() {
        let twicePerSecond = [Limit(calls: 2, window: .seconds(1))]
        var scheduler = laneScheduler([.cancel: twicePerSecond, isolateAPI: twicePerSecond])
        for n in 0..<10 { _ = scheduler.submit("i\(n)", api: isolateAPI, target: guid(n), client: alice) }
        _ = scheduler.submit("c0", api: .cancel, target: guid(0), client: alice)
        #expect(scheduler.position(of: "c0", at: at(0))! == (1, at(0)))
        #expect(scheduler.position(of: "i9", at: at(0))! == (10, at(4)))
    }

    @Test("a recovered job goes back to its own API's lane")
    func restoreIntoItsLane() {
        var scheduler = laneScheduler([.cancel: roomy, isolateAPI: roomy])
        scheduler.restore([
            Scheduler.Job(id: "i0", api: isolateAPI, target: guid(1), client: alice, members: ["i0"], attempts: 1)
        ])
        #expect(scheduler.queuedJobs(isolateAPI) == 1 && scheduler.queuedJobs(.cancel) == 0)
        let cancel = scheduler.submit("c0", api: .cancel, target: guid(1), client: bob)
        #expect(cancel == .queued)
        let isolate = scheduler.submit("i1", api: isolateAPI, target: guid(1), client: bob)
        #expect(isolate == .joined(leader: "i0"))
        scheduler.pause(isolateAPI, until: at(5))
        let first = scheduler.nextDispatch(at: at(0))
        #expect(first?.job == "c0")
        let paused = scheduler.nextDispatch(at: at(0))
        #expect(paused == nil)
        let resumed = scheduler.nextDispatch(at: at(5))
        #expect(resumed?.job == "i0" && resumed?.attempt == 2 && resumed?.members == ["i0", "i1"])
    }

    @Test("submitting to an API the scheduler has no lane for is a programming error")
    func unknownAPI() async {
        await #expect(processExitsWith: .failure) {
            var scheduler = laneScheduler([.cancel: roomy])
            _ = scheduler.submit("x", api: UpstreamAPI("offboard"), target: guid(1), client: alice)
        }
    }
}
