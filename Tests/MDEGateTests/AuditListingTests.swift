import Foundation
import MDEGateCore
import MDEGateWire
import Testing

@testable import MDEGate

/// The audit listing's filters and pages, on the SQLite store (with its indexes) and on the
/// in-memory one, which must agree.
@Suite("The audit listing", .timeLimit(.minutes(SuiteTime.minutes)))
struct AuditListingTests {
    enum Kind: String, CaseIterable, CustomTestStringConvertible {
        case sqlite, memory
        var testDescription: String { rawValue }
    }

    static let base = Gateway.wallClock()

    /// Twelve requests, one a minute: clients a, b and none (uid 1000, 1001, 1002 in turn),
    /// states cycling queued, done, failed, withdrawn; cancels and isolates.
    static let history: [RequestRecord] = (0..<12).map { index in
        let names: [String?] = ["a", "b", nil]
        let states: [RequestRecord.State] = [.queued, .done, .failed, .withdrawn]
        let target = String(format: "988cc94e-7a8f-4b28-ab65-%012d", index)
        let call: ActionCall = index % 4 == 3
            ? ActionCall(api: .isolate, target: String(repeating: "ab", count: 20), comment: "i", options: ["IsolationType": "Full"])
            : .cancel(target, comment: "c\(index)")
        return RequestRecord(
            id: "r\(index)", call: call,
            client: .init(uid: 1000 + UInt32(index % 3), pid: 40 + Int32(index), name: names[index % 3]),
            state: states[index % 4], attempts: index % 4 == 0 ? 0 : 1, joined: nil,
            createdAt: base - .seconds(60 * (12 - index)), completedAt: nil, response: nil, lastError: nil)
    }

    private func store(_ kind: Kind, _ scratch: SQLiteStoreTests.Scratch) async throws -> any GatewayStore {
        let store: any GatewayStore = kind == .sqlite ? try scratch.open() : InMemoryStore()
        try await store.apply(Self.history.map { .record($0) })
        return store
    }

    private func ids(_ store: any GatewayStore, _ configure: (inout RequestQuery) -> Void) async throws -> [String] {
        var query = RequestQuery()
        configure(&query)
        return try await store.requests(matching: query).records.map(\.id)
    }

    @Test("every filter narrows the listing, newest first", arguments: Kind.allCases)
    func filters(_ kind: Kind) async throws {
        let scratch = SQLiteStoreTests.Scratch()
        let store = try await store(kind, scratch)
        #expect(try await ids(store) { _ in } == (0..<12).reversed().map { "r\($0)" })
        #expect(try await ids(store) { $0.clientName = "a" } == ["r9", "r6", "r3", "r0"])
        #expect(try await ids(store) { $0.uid = 1001 } == ["r10", "r7", "r4", "r1"])
        #expect(try await ids(store) { $0.states = [.failed] } == ["r10", "r6", "r2"])
        #expect(try await ids(store) { $0.states = [.done, .withdrawn] } == ["r11", "r9", "r7", "r5", "r3", "r1"])
        #expect(try await ids(store) { $0.api = .isolate } == ["r11", "r7", "r3"])
        // Targets compare case-insensitively, as machine action ids do.
        #expect(try await ids(store) { $0.target = "988CC94E-7A8F-4B28-AB65-000000000005" } == ["r5"])
        #expect(try await ids(store) { $0.since = Self.base - .seconds(180) } == ["r11", "r10", "r9"])
        #expect(try await ids(store) { $0.until = Self.base - .seconds(600) } == ["r1", "r0"])
        #expect(try await ids(store) {
            $0.clientName = "b"
            $0.states = [.done, .failed]
            $0.since = Self.base - .seconds(660)
        } == ["r10", "r1"])
        #expect(try await ids(store) { $0.clientName = "nobody" } == [])
    }

    @Test("pages: limit and cursor walk the whole listing once, in order, and the last page has no next", arguments: Kind.allCases)
    func pages(_ kind: Kind) async throws {
        let scratch = SQLiteStoreTests.Scratch()
        let store = try await store(kind, scratch)
        var query = RequestQuery()
        query.limit = 5
        var seen: [String] = []
        var pages = 0
        while true {
            let page = try await store.requests(matching: query)
            pages += 1
            seen += page.records.map(\.id)
            guard let next = page.next else { break }
            #expect(page.records.count == 5)
            query.after = next
            #expect(RequestCursor(next.description) == next, "the cursor survives its text form")
        }
        #expect(pages == 3)
        #expect(seen == (0..<12).reversed().map { "r\($0)" })
    }

    @Test("records created at the same instant are told apart by the order they were stored", arguments: Kind.allCases)
    func ties(_ kind: Kind) async throws {
        let scratch = SQLiteStoreTests.Scratch()
        let store: any GatewayStore = kind == .sqlite ? try scratch.open() : InMemoryStore()
        let records = (0..<4).map { SQLiteStoreTests.record("t\($0)", createdAt: Self.base) }
        try await store.apply(records.map { .record($0) })
        var query = RequestQuery()
        query.limit = 1
        var seen: [String] = []
        for _ in 0..<4 {
            let page = try await store.requests(matching: query)
            seen += page.records.map(\.id)
            query.after = page.next
        }
        #expect(seen == ["t3", "t2", "t1", "t0"])
    }

    @Test("the query's parameters are checked, and a bad one is named")
    func parsing() throws {
        let now = Self.base
        let parsed = try RequestQuery.parse(
            "client=soar%20one&uid=1000&state=done,failed&api=isolate&machineActionId=988cc94e-7a8f-4b28-ab65-000000000001&since=1h&until=2026-12-03T04:00:00Z&limit=20&cursor=5.7",
            now: now
        ).get()
        #expect(parsed.clientName == "soar one")
        #expect(parsed.uid == 1000)
        #expect(parsed.states == [.done, .failed])
        #expect(parsed.api == .isolate)
        #expect(parsed.target == "988cc94e-7a8f-4b28-ab65-000000000001")
        #expect(parsed.since == now - .seconds(3600))
        #expect(parsed.until == JSON.timestamp(parsing: "2026-12-03T04:00:00Z"))
        #expect(parsed.limit == 20)
        #expect(parsed.after == RequestCursor(createdAt: 5, sequence: 7))
        for (query, mentions) in [
            ("uid=root", "uid \"root\""), ("state=lost", "state \"lost\""), ("api=reboot", "api \"reboot\""),
            ("since=yesterday", "since \"yesterday\""), ("until=0054-03-15T19:25:29.6114Z", "from 1678 to 2261"),
            ("since=9999-12-31T23:59:59Z", "since \"9999-12-31T23:59:59Z\""), ("limit=0", "from 1 to 1000"), ("limit=1001", "from 1 to 1000"),
            ("cursor=abc", "cursor \"abc\""), ("machineActionId=x%27%20OR%201", "not a machine action id"),
            ("colour=red", "\"colour\" is not a parameter"), ("uid=1&uid=2", "uid is given twice"),
        ] {
            guard case .failure(let problem) = RequestQuery.parse(Substring(query), now: now) else {
                Issue.record("\(query) was accepted")
                continue
            }
            #expect(problem.code == "InvalidQuery")
            #expect(problem.message.contains(mentions), "\(query): \(problem.message)")
        }
    }
}
