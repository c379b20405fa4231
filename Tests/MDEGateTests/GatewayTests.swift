import Foundation
import HTTPTypes
import Logging
import MDEGateCore
import MDEGateTransport
import NIOCore
import Testing

@testable import MDEGate

/// The gateway in process: a scripted upstream, a store the test controls, and the real
/// scheduler, event loop and commit cycle.
@Suite("The gateway in process", .timeLimit(.minutes(SuiteTime.minutes)))
struct GatewayTests {
    @Test("a request admitted while a slot is free is stored with its attempt in one commit, then sent")
    func admissionAndAttemptInOneCommit() async throws {
        let store = ControlledStore()
        let upstream = ScriptedUpstream()
        let gateway = scriptedGateway(.testing([Limit(calls: 10, window: .seconds(60))]), store: store, upstream: upstream)
        try await gateway.start()
        store.holdNextCommit()
        let answer = Task { try await gateway.submitted(actionID(1), waiting: .untilFinal(timeout: nil)) }
        let held = await store.heldCommit()
        #expect(held.contains { if case .attempt = $0 { true } else { false } }, "the attempt is in the admission's commit")
        #expect(held.contains { if case .record(let record) = $0 { record.state == .sending } else { false } })
        #expect(upstream.arrivals.isEmpty, "nothing leaves before the commit returned")
        store.release(failing: false)
        guard case .final(let record) = try await answer.value else {
            Issue.record("the synchronous caller gets the final record")
            return
        }
        #expect(record.response?.status == 200)
        #expect(upstream.arrivedIDs == [actionID(1)])
    }

    @Test("Prefer: respond-async is answered with the record (202) even when the upstream answered before that turn")
    func asyncAnswerIsTheRecordEvenWhenAlreadyFinal() async throws {
        let store = ControlledStore()
        // The scripted upstream answers inside `send`, on the thread the commit returned on:
        // its answer reaches the loop before the commit's own follow-ups do.
        let upstream = ScriptedUpstream()
        let gateway = scriptedGateway(.testing([Limit(calls: 10, window: .seconds(60))]), store: store, upstream: upstream)
        try await gateway.start()
        guard case .accepted(let document) = try await gateway.submitted(actionID(1), waiting: .untilStored) else {
            Issue.record("an asynchronous caller gets the record")
            return
        }
        #expect(document.state == .done, "the answer was back first, and the record says so")
        #expect(document.response?.status == 200)
        #expect(upstream.arrivals.count == 1)
    }

    @Test("a failed admission commit refuses the request, and nothing of it is sent, now or after a restart")
    func failedAdmissionIsNeverSent() async throws {
        let store = ControlledStore()
        let upstream = ScriptedUpstream()
        let settings = Gateway.Settings.testing([Limit(calls: 10, window: .seconds(60))])
        let gateway = scriptedGateway(settings, store: store, upstream: upstream)
        try await gateway.start()

        // The admission of the first request (with its attempt: a slot is free) is held open ...
        store.holdNextCommit()
        let refused = Task { try await gateway.submitted(actionID(1)) }
        _ = await store.heldCommit()
        // ... while more work arrives and asks for a pump: a second request for the same
        // machine action (it joins the job being committed) and one for another action.
        let joiner = Task { try await gateway.submitted(actionID(1)) }
        let other = Task { try await gateway.submitted(actionID(2), waiting: .untilFinal(timeout: nil)) }
        try await eventually("both queued behind the held commit") { await gateway.scheduler.pendingRequests == 3 }
        #expect(upstream.arrivals.isEmpty)

        // Then the held commit fails.
        store.release(failing: true)
        guard case .storeUnavailable = try await refused.value else {
            Issue.record("the caller whose admission failed hears so")
            return
        }
        guard case .final(let otherRecord) = try await other.value else {
            Issue.record("the other request is sent and answered")
            return
        }
        #expect(otherRecord.response?.status == 200)
        let joined = try #require(try await joiner.value.id, "the joiner was stored in a later commit and stays accepted")

        // The first request exists nowhere: not in memory, not in the store.
        let refusedID = try await store.load().records.map(\.id)
        #expect(await gateway.records.count == 2)
        #expect(refusedID.count == 2)
        // What was sent for action 1 was sent for the joiner, which was accepted, after the
        // store recovered; never before the failed commit was reconciled.
        try await eventually("the joiner's job sent after the pause") {
            await gateway.records[joined]?.state.isFinal == true
        }
        #expect(upstream.arrivedIDs.sorted() == [actionID(1), actionID(2)])

        // A restart on the same store (after a clean stop, which writes the outcomes) sends
        // nothing more.
        try await gateway.drain().get()
        let restarted = scriptedGateway(settings, store: store, upstream: upstream)
        try await restarted.start()
        #expect(await restarted.scheduler.pendingRequests == 0, "nothing unfinished is left to send")
        #expect(upstream.arrivals.count == 2)
    }

    @Test("a failed admission commit of a request nobody else rides on: zero arrivals, no record, nothing after a restart")
    func failedAdmissionAloneIsNeverSent() async throws {
        let store = ControlledStore()
        let upstream = ScriptedUpstream()
        // The only slot of the hour is taken: the request is admitted first, dispatched later.
        try await store.apply([.attempt(.cancel, Gateway.wallClock())])
        let settings = Gateway.Settings.testing([Limit(calls: 1, window: .seconds(3600))])
        let gateway = scriptedGateway(settings, store: store, upstream: upstream)
        try await gateway.start()
        store.holdNextCommit()
        let refused = Task { try await gateway.submitted(actionID(1)) }
        _ = await store.heldCommit()
        // A slot frees (a reload) while the admission is still being written: the pump waits.
        try await gateway.loosen(to: [Limit(calls: 2, window: .seconds(3600))])
        #expect(await gateway.pumpWanted, "the pump waits for the commit being written")
        #expect(upstream.arrivals.isEmpty)
        store.release(failing: true)
        guard case .storeUnavailable = try await refused.value else {
            Issue.record("the caller whose admission failed hears so")
            return
        }
        // The gateway settles: the failed changes are written again a second later.
        try await eventually("the store up to date") { await gateway.unsaved.isEmpty && store.commits >= 2 }
        #expect(upstream.arrivals.isEmpty, "nothing was sent")
        #expect(await gateway.status().limits[0].used == 1, "no slot was spent on it")
        #expect(try await store.load().records.isEmpty, "no record of the refused request")
        let restarted = scriptedGateway(settings, store: store, upstream: upstream)
        try await restarted.start()
        #expect(await restarted.status().queue.depth == 0)
        #expect(upstream.arrivals.isEmpty, "nothing is sent after a restart either")
    }

    @Test("a caller answered during the reconciliation of a failed commit cannot make a batch be cut before it is done")
    func noCutDuringReconciliation() async throws {
        let store = ControlledStore()
        let upstream = ScriptedUpstream()
        try await store.apply([.attempt(.cancel, Gateway.wallClock())])
        let gateway = scriptedGateway(.testing([Limit(calls: 1, window: .seconds(3600))]), store: store, upstream: upstream)
        try await gateway.start()
        // A commit in progress, so that the next two admissions share the commit that will fail.
        store.holdNextCommit()
        let zeroth = Task { try await gateway.submitted(actionID(10)) }
        _ = await store.heldCommit()
        // Two admissions in the commit that will fail. The first one's caller, once answered,
        // submits again at once, on the loop, as a pipelined request would.
        let third = gateway.eventLoop.makePromise(of: Gateway.Answer.self)
        let first = try await gateway.submit(.cancel(actionID(1), comment: "c"), client: testClient, waiting: .untilStored)
        first.whenComplete { _ in
            gateway.assumeIsolated { gateway in
                third.completeWith(
                    gateway.submit(.cancel(actionID(3), comment: "c"), client: testClient, waiting: .untilStored))
            }
        }
        let second = try await gateway.submit(.cancel(actionID(2), comment: "c"), client: testClient, waiting: .untilStored)
        store.holdNextCommit()
        store.release(failing: false)
        let held = await store.heldCommit()
        #expect(held.count == 2, "the two admissions, in one commit")
        store.release(failing: true)
        guard case .storeUnavailable = try await first.get(), case .storeUnavailable = try await second.get() else {
            Issue.record("both admissions of the failed commit are refused")
            return
        }
        guard case .accepted(let accepted) = try await third.futureResult.get() else {
            Issue.record("the request submitted meanwhile is accepted in a later commit")
            return
        }
        let zerothID = try #require(try await zeroth.value.id)
        try await gateway.drain().get()
        #expect(try await store.load().records.map(\.id) == [zerothID, accepted.id], "neither refused request was ever stored")
    }

    @Test("drain stops dispatching and commits everything pending, outcomes included")
    func drainStopsDispatch() async throws {
        let store = ControlledStore()
        let upstream = ScriptedUpstream()
        let gateway = scriptedGateway(.testing([Limit(calls: 10, window: .seconds(60))]), store: store, upstream: upstream)
        try await gateway.start()
        guard case .final = try await gateway.submitted(actionID(1), waiting: .untilFinal(timeout: nil)) else {
            Issue.record("sent and answered")
            return
        }
        try await gateway.drain().get()
        #expect(try await store.load().records.map(\.state) == [.done], "the outcome is stored")
        _ = try await gateway.submitted(actionID(2))
        #expect(upstream.arrivals.count == 1, "nothing new leaves once stopping")
        #expect(await gateway.status().queue.depth == 1)
    }

    @Test("an attempt whose commit fails is not sent, its slot stays spent, and the job is sent exactly once after the store recovers")
    func failedAttemptIsSentOnceLater() async throws {
        let store = ControlledStore()
        let upstream = ScriptedUpstream()
        try await store.apply([.attempt(.cancel, Gateway.wallClock())])
        let gateway = scriptedGateway(.testing([Limit(calls: 1, window: .seconds(3600))]), store: store, upstream: upstream)
        try await gateway.start()
        guard let id = try await gateway.submitted(actionID(1)).id else {
            Issue.record("accepted while the slot is taken")
            return
        }
        // A slot frees (a reload); the commit of its attempt is held, then fails.
        store.holdNextCommit()
        try await gateway.loosen(to: [Limit(calls: 2, window: .seconds(3600))])
        let held = await store.heldCommit()
        #expect(held.contains { if case .attempt = $0 { true } else { false } })
        store.setFailing(true)
        store.release(failing: true)
        try await eventually("the job back in line, paused") {
            let scheduler = await gateway.scheduler
            return scheduler.job(of: id)?.state == .queued && scheduler.pausedUntil(.cancel) != nil
        }
        #expect(upstream.arrivals.isEmpty, "the attempt that could not be stored did not leave")
        #expect(await gateway.status().limits[0].used == 2, "its slot stays spent")
        #expect(await gateway.records[id]?.lastError?.contains("not sent") == true)

        // The store recovers and one more slot frees: sent once, after the second's pause.
        store.setFailing(false)
        try await gateway.loosen(to: [Limit(calls: 3, window: .seconds(3600))])
        await upstream.arrived(1)
        try await eventually("done") { await gateway.records[id]?.state == .done }
        #expect(upstream.arrivedIDs == [actionID(1)], "sent exactly once")
        #expect(await gateway.records[id]?.attempts == 2, "the attempt that was not sent still counts")
    }

    @Test("the local API answers 503 StoreUnavailable with Retry-After when an admission or a withdrawal cannot be stored")
    func storeFailuresAreMappedTo503() async throws {
        let store = ControlledStore()
        let upstream = ScriptedUpstream()
        try await store.apply([.attempt(.cancel, Gateway.wallClock())])
        let gateway = scriptedGateway(.testing([Limit(calls: 1, window: .seconds(3600))]), store: store, upstream: upstream)
        try await gateway.start()
        let api = LocalAPI(gateway: gateway, logger: Logger(label: "test"))
        func post(_ id: String, prefer: String? = nil) -> LocalRequest {
            LocalRequest(
                method: "POST", uri: "/api/machineactions/\(id)/cancel",
                headers: prefer.map { [.prefer: $0] } ?? [:], body: Array(#"{"Comment":"c"}"#.utf8),
                bodyTooLarge: false, peer: PeerCredentials(pid: 42, uid: 1000, gid: 1000))
        }
        let accepted = await api.handle(post(actionID(1), prefer: "respond-async"))
        #expect(accepted.status == 202)
        let id = try #require(accepted.headers[.mdegateRequestID])

        store.setFailing(true)
        let refused = await api.handle(post(actionID(2), prefer: "respond-async"))
        #expect(refused.status == 503)
        #expect(String(decoding: refused.body, as: UTF8.self).contains(#""code":"StoreUnavailable""#))
        #expect(refused.headers[.retryAfter] != nil)
        let synchronous = await api.handle(post(actionID(3)))
        #expect(synchronous.status == 503, "a synchronous caller hears it too, at once")

        let withdrawal = await api.handle(
            LocalRequest(
                method: "DELETE", uri: "/v1/requests/\(id)", headers: [:], body: [], bodyTooLarge: false,
                peer: PeerCredentials(pid: 42, uid: 1000, gid: 1000)))
        #expect(withdrawal.status == 503)
        #expect(String(decoding: withdrawal.body, as: UTF8.self).contains(#""code":"StoreUnavailable""#))
        #expect(withdrawal.headers[.retryAfter] != nil)
        #expect(upstream.arrivals.isEmpty)

        // A gateway whose store keeps failing writes again every second for as long as the
        // test process lives: let the store recover and the gateway settle.
        store.setFailing(false)
        try await gateway.drain().get()
    }

    @Test("a reload that lengthens a window counts again, from the store, the attempts the ledger had let go of")
    func reloadToLongerWindowReadsHistory() async throws {
        let store = ControlledStore()
        let upstream = ScriptedUpstream()
        let now = Gateway.wallClock()
        try await store.apply([.attempt(.cancel, now - .seconds(30)), .attempt(.cancel, now - .seconds(20))])
        let gateway = scriptedGateway(.testing([Limit(calls: 1, window: .seconds(1))]), store: store, upstream: upstream)
        try await gateway.start()
        guard case .final = try await gateway.submitted(actionID(1), waiting: .untilFinal(timeout: nil)) else {
            Issue.record("sent at once under 1/1s")
            return
        }
        #expect(await (gateway.scheduler.ledger(.cancel) as? Ledger)?.attempts.count == 1, "the two older attempts left the ledger")
        try await gateway.loosen(to: [Limit(calls: 3, window: .seconds(60))])
        #expect(await gateway.status().limits[0].used == 3, "all three attempts of the last minute count")
        _ = try await gateway.submitted(actionID(2))
        #expect(upstream.arrivals.count == 1, "the minute is spent: the next request waits")
    }

    @Test("status counts queued requests without reading them, coalesced and in-flight ones told apart")
    func statusFromRunningCounts() async throws {
        let store = ControlledStore()
        let upstream = ScriptedUpstream()
        try await store.apply([.attempt(.cancel, Gateway.wallClock())])
        let gateway = scriptedGateway(.testing([Limit(calls: 1, window: .seconds(3600))]), store: store, upstream: upstream)
        try await gateway.start()
        for number in 1...5 { _ = try await gateway.submitted(actionID(number)) }
        _ = try await gateway.submitted(actionID(1).uppercased())
        let status = await gateway.status()
        #expect(status.queue.depth == 6, "five jobs, six requests")
        #expect(status.queue.clients.map(\.depth) == [5])
        #expect(status.inFlight == 0)
    }
}

/// Polls `condition` (every 10 ms, for at most 10 s): for states a test cannot await directly.
func eventually(_ what: String, _ condition: () async throws -> Bool) async throws {
    for _ in 0..<1000 {
        if try await condition() { return }
        try await Task.sleep(for: .milliseconds(10))
    }
    Issue.record("gave up waiting for \(what)")
    throw CancellationError()
}
