import Foundation
import GRDB
import Logging
import MDEGateCore
import Testing

@testable import MDEGate

@Suite("The SQLite store", .timeLimit(.minutes(SuiteTime.minutes)))
struct SQLiteStoreTests {
    /// A fresh directory per test, removed afterwards.
    final class Scratch {
        let directory: String
        var database: String { directory + "/state/state.sqlite" }

        init() {
            directory = FileManager.default.temporaryDirectory
                .appendingPathComponent("mdegate-store-\(UUID().uuidString)").path
        }

        deinit { try? FileManager.default.removeItem(atPath: directory) }

        func open(now: @escaping @Sendable () -> Timestamp = Gateway.wallClock) throws -> SQLiteStore {
            try SQLiteStore(path: database, logger: SQLiteStoreTests.logger, now: now)
        }
    }

    static let logger = {
        var logger = Logger(label: "test")
        logger.logLevel = .warning
        return logger
    }()

    static let now = Gateway.wallClock()

    static func record(
        _ id: String, createdAt: Timestamp = now, state: RequestRecord.State = .queued, comment: String = "c"
    ) -> RequestRecord {
        RequestRecord(
            id: id, call: .cancel("988cc94e-7a8f-4b28-ab65-\(id)", comment: comment),
            client: .init(uid: 1000, pid: 42, name: nil), state: state, attempts: 0, joined: nil,
            createdAt: createdAt, completedAt: nil, response: nil, lastError: nil)
    }

    /// Every field set, with extremes: a long comment with emoji, a body that is not UTF-8.
    static let full = RequestRecord(
        id: "full",
        call: .cancel("988cc94e-7a8f-4b28-ab65-000000000001", comment: String(repeating: "a🛡️é", count: 333) + "!"),
        client: .init(uid: UInt32.max, pid: Int32.max, name: "soar-playbook"), state: .done, attempts: 3,
        joined: "leader", createdAt: now - .seconds(60), completedAt: now,
        response: .init(status: 201, body: [0xFF, 0xFE, 0x00, 0x80, 0xC3, 0x28, 0x7B], contentType: "application/json"),
        lastError: "timed out after 30 s", sentAt: now - .seconds(59))
    /// Every optional field nil.
    static let bare = RequestRecord(
        id: "bare", call: .cancel("m", comment: ""), client: .init(uid: 0, pid: 1, name: nil), state: .queued,
        attempts: 0, joined: nil, createdAt: now - .seconds(30), completedAt: nil, response: nil, lastError: nil)
    /// A response without a body or content type.
    static let emptyBody = RequestRecord(
        id: "empty", call: .cancel("m2", comment: "x"), client: .init(uid: 7, pid: -1, name: ""), state: .failed,
        attempts: 1, joined: nil, createdAt: now - .seconds(10), completedAt: now - .seconds(5),
        response: .init(status: 204, body: [], contentType: nil), lastError: nil)

    @Test("every field of a record comes back as it was stored, nil ones and binary bodies included")
    func roundTrip() async throws {
        #expect(Self.full.call.comment?.count == 1000)
        let scratch = Scratch()
        let store = try scratch.open()
        try await store.apply([.record(Self.full), .record(Self.bare), .record(Self.emptyBody)])
        let state = try await store.load()
        #expect(state.records == [Self.full, Self.bare, Self.emptyBody])
    }

    @Test("closing and reopening reproduces records, attempts and the pause")
    func reopen() async throws {
        let scratch = Scratch()
        let attempts = [Self.now - .seconds(3600), Self.now - .seconds(2), Self.now - .seconds(1)]
        let pause = Self.now + .seconds(90)
        let store = try scratch.open()
        try await store.apply([.record(Self.full), .record(Self.bare)] + attempts.map { .attempt(.cancel, $0) })
        try await store.apply([.pause(.cancel, until: pause), .record(Self.emptyBody)])
        let before = try await store.load()
        try await store.close()

        let reopened = try await scratch.open().load()
        #expect(reopened.records == [Self.full, Self.bare, Self.emptyBody])
        #expect(reopened.records == before.records)
        #expect(reopened.attempts == [.cancel: attempts])
        #expect(reopened.pauses[.cancel] == pause)
    }

    @Test("commits are durable across power loss: WAL with synchronous=FULL on the writer")
    func durabilitySettings() async throws {
        let store = try Scratch().open()
        let (journal, synchronous) = try await store.writerSettings()
        #expect(journal == "wal")
        #expect(synchronous == 2)  // FULL
    }

    @Test("records come back by creation time, ties in the order first stored, even after an update")
    func order() async throws {
        let scratch = Scratch()
        let store = try scratch.open()
        let t = Self.now
        try await store.apply([.record(Self.record("b", createdAt: t)), .record(Self.record("late", createdAt: t + .seconds(1)))])
        try await store.apply([.record(Self.record("a", createdAt: t)), .record(Self.record("early", createdAt: t - .seconds(1)))])
        // Updating "b" must not move it behind "a".
        try await store.apply([.record(Self.record("b", createdAt: t, state: .sending))])
        let state = try await store.load()
        #expect(state.records.map(\.id) == ["early", "b", "a", "late"])
        #expect(state.records[1].state == .sending)
    }

    @Test("a later change to the same record in one batch wins")
    func lastChangeWins() async throws {
        let scratch = Scratch()
        let store = try scratch.open()
        try await store.apply([.record(Self.record("r", comment: "first")), .record(Self.record("r", comment: "second"))])
        #expect(try await store.load().records.map(\.call.comment) == ["second"])
    }

    @Test("forget removes the record, for good")
    func forget() async throws {
        let scratch = Scratch()
        let store = try scratch.open()
        try await store.apply([.record(Self.full), .record(Self.bare)])
        try await store.apply([.forget(Self.full.id), .forget("never-stored")])
        #expect(try await store.load().records.map(\.id) == [Self.bare.id])
        try await store.close()
        #expect(try await scratch.open().load().records.map(\.id) == [Self.bare.id])
    }

    @Test("the pause is set, survives a restart, and is cleared")
    func pause() async throws {
        let scratch = Scratch()
        let until = Self.now + .seconds(30)
        var store = try scratch.open()
        #expect(try await store.load().pauses[.cancel] == nil)
        try await store.apply([.pause(.cancel, until: until)])
        try await store.close()
        store = try scratch.open()
        #expect(try await store.load().pauses[.cancel] == until)
        try await store.apply([.pause(.cancel, until: nil)])
        try await store.close()
        #expect(try await scratch.open().load().pauses[.cancel] == nil)
    }

    @Test("attempts a day older than the newest are deleted on write; load returns the last 25 hours")
    func attemptRetention() async throws {
        let scratch = Scratch()
        let t = Self.now
        let store = try scratch.open()
        try await store.apply([.attempt(.cancel, t - .seconds(30 * 3600)), .attempt(.cancel, t - .seconds(26 * 3600))])
        // Nothing newer yet: both are kept, but load leaves out what is older than 25 h.
        #expect(try await store.load().attempts.isEmpty)
        try await store.apply([.attempt(.cancel, t - .seconds(3600))])
        try await store.close()
        // A clock 30 h behind would load everything kept: only attempts within 24 h of the newest are.
        let behind = try scratch.open(now: { t - .seconds(30 * 3600) })
        #expect(try await behind.load().attempts == [.cancel: [t - .seconds(3600)]])
    }

    @Test("a departure moves one attempt at the recorded time to the later departure, in both stores")
    func departure() async throws {
        let t = Self.now
        let scratch = Scratch()
        let sqlite = try scratch.open()
        for store in [sqlite, InMemoryStore()] as [any GatewayStore] {
            // Two attempts share a time (one dispatch round); only one of them is moved.
            try await store.apply([.attempt(.cancel, t - .seconds(2)), .attempt(.cancel, t), .attempt(.cancel, t)])
            try await store.apply([.departure(.cancel, recorded: t, departed: t + .milliseconds(40))])
            // A departure of a time that was never stored changes nothing.
            try await store.apply([.departure(.cancel, recorded: t - .seconds(9), departed: t + .seconds(1))])
            #expect(try await store.load().attempts == [.cancel: [t - .seconds(2), t, t + .milliseconds(40)]], "\(type(of: store))")
        }
        try await sqlite.close()
        #expect(try await scratch.open().load().attempts == [.cancel: [t - .seconds(2), t, t + .milliseconds(40)]])
    }

    @Test("pruning deletes records finished before the horizon and keeps the rest and every attempt")
    func pruneFinished() async throws {
        let scratch = Scratch()
        let store = try scratch.open()
        // full completed at `now`, emptyBody 5 s earlier; bare is not finished.
        try await store.apply([.record(Self.full), .record(Self.bare), .record(Self.emptyBody), .attempt(.cancel, Self.now - .seconds(7))])
        let removed = try await store.pruneFinished(before: Self.now - .seconds(1))
        let state = try await store.load()
        #expect(removed == 1)
        #expect(state.records.map(\.id) == [Self.full.id, Self.bare.id])
        #expect(state.attempts == [.cancel: [Self.now - .seconds(7)]])
    }

    @Test("2,000 concurrent submissions all commit, in far fewer transactions, and survive reopening")
    func groupCommit() async throws {
        let scratch = Scratch()
        let store = try scratch.open()
        let count = 2_000
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<count {
                group.addTask {
                    try await store.apply([.record(Self.record("r\(index)")), .attempt(.cancel, Self.now + .nanoseconds(index))])
                }
            }
            try await group.waitForAll()
        }
        let transactions = store.committedTransactions
        #expect(transactions >= 1)
        #expect(transactions < count / 2)
        try await store.close()

        let state = try await scratch.open().load()
        #expect(Set(state.records.map(\.id)) == Set((0..<count).map { "r\($0)" }))
        #expect(state.attempts[.cancel]?.count == count)
    }

    @Test("a caller waits for a commit that started after it arrived, never an earlier one")
    func everyCallerIsCommitted() async throws {
        let scratch = Scratch()
        let store = try scratch.open()
        // Each apply returns only once its own record is readable: load after each one sees it.
        try await withThrowingTaskGroup(of: Bool.self) { group in
            for index in 0..<200 {
                group.addTask {
                    try await store.apply([.record(Self.record("r\(index)"))])
                    return try await store.load().records.contains { $0.id == "r\(index)" }
                }
            }
            for try await seen in group { #expect(seen) }
        }
    }

    @Test("a failed transaction fails every caller in it, and only callers whose changes were stored succeed")
    func failedTransaction() async throws {
        let scratch = Scratch()
        let store = try scratch.open()
        try await store.executeForTesting(
            "CREATE TRIGGER poison BEFORE INSERT ON requests WHEN NEW.id = 'poison' BEGIN SELECT RAISE(ABORT, 'poisoned'); END")
        let ids = (0..<500).map { $0 == 250 ? "poison" : "r\($0)" }
        let outcomes = await withTaskGroup(of: (String, Bool).self) { group in
            for id in ids {
                group.addTask { (id, (try? await store.apply([.record(Self.record(id))])) != nil) }
            }
            return await group.reduce(into: [String: Bool]()) { $0[$1.0] = $1.1 }
        }
        try await store.close()
        let stored = Set(try await scratch.open().load().records.map(\.id))
        #expect(outcomes["poison"] == false)
        for (id, succeeded) in outcomes {
            #expect(succeeded == stored.contains(id), "\(id)")
        }
    }

    @Test("a state.path whose directory is a regular file is refused with an error naming the path")
    func parentIsAFile() throws {
        let scratch = Scratch()
        try FileManager.default.createDirectory(atPath: scratch.directory, withIntermediateDirectories: true)
        let blocker = scratch.directory + "/blocker"
        #expect(FileManager.default.createFile(atPath: blocker, contents: Data("x".utf8)))
        let path = blocker + "/state.sqlite"
        let error = #expect(throws: StoreError.self) { try SQLiteStore(path: path, logger: Self.logger) }
        let message = error?.description ?? ""
        #expect(message.contains("state.path \"\(path)\""))
        #expect(message.contains("is a file, not a directory"))
    }

    @Test("a file that is not a database is refused with an error naming the path and what to do")
    func notADatabase() throws {
        let scratch = Scratch()
        try FileManager.default.createDirectory(atPath: scratch.directory + "/state", withIntermediateDirectories: true)
        let text = Data(String(repeating: "not sqlite at all\n", count: 100).utf8)
        #expect(FileManager.default.createFile(atPath: scratch.database, contents: text))
        let error = #expect(throws: StoreError.self) { try scratch.open() }
        let message = error?.description ?? ""
        #expect(message.contains("state.path \"\(scratch.database)\""))
        #expect(message.contains("not an SQLite database"))
    }

    @Test("the missing directory is created, private to the daemon's user")
    func createsDirectory() async throws {
        let scratch = Scratch()
        let store = try scratch.open()
        try await store.apply([.record(Self.bare)])
        let attributes = try FileManager.default.attributesOfItem(atPath: scratch.directory + "/state")
        #expect((attributes[.posixPermissions] as? NSNumber)?.intValue == 0o700)
        #expect(FileManager.default.fileExists(atPath: scratch.database))
    }

    @Test("after close, apply is refused instead of pretending to store")
    func closedRefuses() async throws {
        let scratch = Scratch()
        let store = try scratch.open()
        try await store.close()
        await #expect(throws: StoreError.self) { try await store.apply([.record(Self.bare)]) }
    }

    @Test("a state file of the cancel-only schema (v1) opens with its queue, attempts and pause as cancel's")
    func migratesFromV1() async throws {
        let scratch = Scratch()
        try FileManager.default.createDirectory(
            atPath: (scratch.database as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        let t = Self.now
        let queue = try DatabaseQueue(path: scratch.database)
        try SQLiteStore.migrator.migrate(queue, upTo: "v1")
        try await queue.write { db in
            try db.execute(
                sql: """
                    INSERT INTO requests (id, machine_action_id, comment, client_uid, client_pid, client_name, state,
                        attempts, joined, created_at_ns)
                    VALUES ('old', '988cc94e-7a8f-4b28-ab65-000000000001', 'from v1', 1000, 42, NULL, 'queued', 1, NULL, ?)
                    """, arguments: [t.nanosecondsSinceEpoch])
            try db.execute(sql: "INSERT INTO attempts (time_ns) VALUES (?)", arguments: [t.nanosecondsSinceEpoch])
            try db.execute(sql: "UPDATE pause SET until_ns = ? WHERE id = 1", arguments: [(t + .seconds(60)).nanosecondsSinceEpoch])
        }
        try queue.close()

        let store = try scratch.open()
        let state = try await store.load()
        #expect(state.records.map(\.call) == [.cancel("988cc94e-7a8f-4b28-ab65-000000000001", comment: "from v1")])
        #expect(state.attempts == [.cancel: [t]])
        #expect(state.pauses == [.cancel: t + .seconds(60)])
        try await store.close()
    }
}
