import Logging
import MDEGateCore
import MDEGateTransport
import NIOPosix
import Testing

@testable import MDEGate

/// A gateway with one call an hour, an upstream nobody listens on and no token: whatever it is
/// asked to do, it sends nothing, so a test sees only what it stores and answers.
func offlineGateway(store: any GatewayStore, transport: CurlTransport) -> Gateway {
    Gateway(
        settings: .init(
            limits: [Limit(calls: 1, window: .seconds(3600))], guardBand: .zero,
            retryPolicy: RetryPolicy(maxAttempts: 4, initialBackoff: .seconds(1), maxBackoff: .seconds(1)),
            maxConcurrency: 1, maxPending: 10),
        store: store, upstream: CurlUpstream(transport: transport, baseURL: "http://127.0.0.1:9"),
        tokens: TokenFileProvider(path: "/nonexistent"), eventLoop: MultiThreadedEventLoopGroup.singleton.any(),
        logger: Logger(label: "test"))
}

@Suite("Start-up from stored state", .timeLimit(.minutes(SuiteTime.minutes)))
struct RecoveryTests {
    @Test("queued and interrupted requests come back in order, coalesced ones with their job, and the ledger stays spent")
    func restoresUnfinishedWork() async throws {
        let now = Gateway.wallClock()
        let client = RequestRecord.Client(uid: 1000, pid: 42, name: "soar")
        func record(_ id: String, _ machineAction: String, _ state: RequestRecord.State, joined: String? = nil, attempts: Int = 0, age: Double)
            -> RequestRecord
        {
            RequestRecord(
                id: id, call: .cancel(machineAction, comment: "c"), client: client, state: state, attempts: attempts,
                joined: joined, createdAt: now - .milliseconds(Int64(age * 1000)), completedAt: nil, response: nil,
                lastError: nil)
        }
        let first = "988cc94e-7a8f-4b28-ab65-000000000001"
        let second = "988cc94e-7a8f-4b28-ab65-000000000002"
        let store = InMemoryStore()
        try await store.apply([
            .record(record("r1", first, .sending, attempts: 1, age: 30)),
            .record(record("r2", second, .queued, age: 20)),
            .record(record("r3", first.uppercased(), .queued, joined: "r1", age: 10)),
            .attempt(.cancel, now - .seconds(30)),
        ])
        // The simulator is not running: nothing may be sent, and the one-per-hour limit is spent.
        let transport = try CurlTransport(configuration: .init(connectTimeout: .milliseconds(200)))
        defer { transport.shutdown() }
        let gateway = offlineGateway(store: store, transport: transport)
        try await gateway.start()

        let status = await gateway.status()
        #expect(status.limits.first?.used == 1)
        #expect(status.queue.depth == 3)
        let interrupted = try #require(await gateway.document("r1"))
        #expect(interrupted.state == .queued)
        #expect(interrupted.position == 1)
        #expect(await gateway.document("r3")?.position == 1, "r3 rides on r1's job")
        #expect(await gateway.document("r2")?.position == 2)
        let withdrawal = try await gateway.withdraw("r1").get()
        guard case .alreadySent = withdrawal else {
            Issue.record("an interrupted send already counts as sent, got \(withdrawal)")
            return
        }
        let admission = try await gateway.submit(.cancel(first, comment: "again"), client: client, waiting: .untilStored).get()
        guard case .accepted(let joined) = admission else {
            Issue.record("expected the new request to be accepted")
            return
        }
        #expect(joined.joined == "r1")
    }
}

/// Polls `condition` every 50 ms for up to 10 s.
func eventuallyTrue(_ what: String, _ condition: () async throws -> Bool) async throws -> Bool {
    for _ in 0..<200 {
        if try await condition() { return true }
        try await Task.sleep(for: .milliseconds(50))
    }
    Issue.record("gave up waiting for \(what)")
    return false
}

@Suite("Writes that fail", .timeLimit(.minutes(SuiteTime.minutes)))
struct FailedWriteTests {
    @Test("a change whose write failed is written with the next batch, in its newest state, and a failed admission is refused")
    func failedWritesAreWrittenLater() async throws {
        let store = ControlledStore()
        // The hourly call is spent, so nothing is sent while the test looks at the store.
        try await store.apply([.attempt(.cancel, Gateway.wallClock())])
        let transport = try CurlTransport(configuration: .init(connectTimeout: .milliseconds(200)))
        defer { transport.shutdown() }
        let gateway = offlineGateway(store: store, transport: transport)
        try await gateway.start()
        let client = RequestRecord.Client(uid: 1000, pid: 42, name: nil)
        guard let first = try await gateway.submitted(actionID(1), client: client).id else {
            Issue.record("the first request was not accepted")
            return
        }

        // A synchronous caller waiting for the first request.
        let waiter = Task { () async throws -> RequestRecord? in
            guard case .final(let record) = try await gateway.wait(for: first, timeout: nil).get() else { return nil }
            return record
        }
        _ = try await eventuallyTrue("the caller waiting") { await gateway.waiterCount(for: first) == 1 }
        store.setFailing(true)
        await #expect(throws: StoreError.self) { try await gateway.withdraw(first).get() }
        #expect(try await waiter.value?.state == .withdrawn, "the waiter is answered although the write failed")
        guard case .storeUnavailable = try await gateway.submitted(actionID(2), client: client) else {
            Issue.record("an admission that cannot be stored is refused")
            return
        }
        #expect(await gateway.status().queue.depth == 0, "the refused admission is not queued")
        #expect(try await store.load().records.map(\.state) == [.queued], "nothing was written while failing")

        store.setFailing(false)
        // Written again on its own a second later, with no other change to carry it.
        _ = try await eventuallyTrue("the withdrawal written") { try await store.load().records.first?.state == .withdrawn }
        guard let third = try await gateway.submitted(actionID(3), client: client).id else {
            Issue.record("the third request was not accepted")
            return
        }
        let stored = try await store.load().records
        #expect(stored.map(\.id) == [first, third], "the refused admission never reaches the store")
        #expect(stored.first?.state == .withdrawn, "the withdrawal was written with the next batch")
    }
}
