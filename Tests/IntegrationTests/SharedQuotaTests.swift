import Foundation
import Logging
import MDEGateCore
import MDEGateSharedQuota
import PostgresNIO
import Testing

/// The shared ledger against a real PostgreSQL server (started per test, see `TestPostgres`).
/// One test at a time: five `initdb`s at once load 2 cores enough to starve other suites' tests
/// that watch for a short state (a 2 s pause after a 429).
@Suite("Shared quota in PostgreSQL: one ledger for several hosts", .serialized, .timeLimit(.minutes(HarnessTime.suiteMinutes)))
struct SharedQuotaTests {
    static let logger: Logger = {
        var logger = Logger(label: "test")
        logger.logLevel = .warning
        return logger
    }()

    static func host(_ client: PostgresClient, _ name: String, key: String = "tenant/app") -> SharedQuotaDatabase {
        SharedQuotaDatabase(client: client, key: key, host: name, logger: logger)
    }

    /// For every attempt, how many attempts lie in the window ending at it: the most any window
    /// of the server's clock held.
    static func fullestWindow(_ attempts: [Date], _ limit: Limit, guardBand: Duration) -> Int {
        let span = Double((limit.window + guardBand).nanoseconds) / 1e9
        return attempts.map { end in attempts.filter { $0 > end.addingTimeInterval(-span) && $0 <= end }.count }.max() ?? 0
    }

    @Test("the schema is created on first use, and migrating again changes nothing")
    func schema() async throws {
        try await withPostgres { client in
            #expect(try await SharedQuotaSchema.migrate(client, logger: Self.logger) == [1])
            #expect(try await SharedQuotaSchema.migrate(client, logger: Self.logger) == [])
            let slot = try await Self.host(client, "a").takeSlot(api: .cancel, limits: [Limit(calls: 1, window: .seconds(1))], guardBand: .zero)
            guard case .granted = slot else {
                Issue.record("the first slot of a fresh ledger is free, got \(slot)")
                return
            }
        }
    }

    @Test("a database at a newer schema version than this mdegate knows is refused with a message saying so")
    func newerSchemaIsRefused() async throws {
        try await withPostgres { client in
            try await SharedQuotaSchema.migrate(client, logger: Self.logger)
            try await client.query("INSERT INTO mdegate_schema (version, name) VALUES (99, 'from the future')")
            let error = await #expect(throws: SharedQuotaError.self) {
                try await SharedQuotaSchema.migrate(client, logger: Self.logger)
            }
            #expect(error?.description.contains("schema version 99") == true)
        }
    }

    @Test("N slots are granted at once; the next waits exactly until the first leaves its window plus the guard band")
    func slotRule() async throws {
        try await withPostgres { client in
            try await SharedQuotaSchema.migrate(client, logger: Self.logger)
            let host = Self.host(client, "a")
            let limits = [Limit(calls: 3, window: .seconds(60)), Limit(calls: 5, window: .seconds(3600))]
            var granted: [Date] = []
            for _ in 0..<3 {
                guard case .granted(let at, _) = try await host.takeSlot(api: .cancel, limits: limits, guardBand: .milliseconds(250)) else {
                    Issue.record("three of 3/1m are free")
                    return
                }
                granted.append(at)
            }
            guard case .wait(let after, let now, _) = try await host.takeSlot(api: .cancel, limits: limits, guardBand: .milliseconds(250))
            else {
                Issue.record("a fourth within the minute must wait")
                return
            }
            // The first grant leaves (t - 60.25 s, t] at first + 60.25 s; the wait is rounded up to ms.
            let expected = granted[0].addingTimeInterval(60.25).timeIntervalSince(now)
            let waited = Double(after.nanoseconds) / 1e9
            #expect(waited >= expected && waited < expected + 0.002, "waited \(waited) s, expected \(expected) s")
            #expect(try await host.attempts(api: .cancel).map(\.at) == granted, "a refused slot is not recorded")
        }
    }

    @Test("three hosts taking slots at once never put more than N into any window of the server's clock, and the quota is spent")
    func hostsShareOneLedger() async throws {
        try await withPostgres { client in
            try await SharedQuotaSchema.migrate(client, logger: Self.logger)
            let limits = [Limit(calls: 3, window: .milliseconds(200)), Limit(calls: 6, window: .seconds(1))]
            let guardBand = Duration.milliseconds(20)
            let perHost = 5
            let grants = try await withThrowingTaskGroup(of: [(host: String, at: Date)].self) { group in
                for name in ["a", "b", "c"] {
                    group.addTask {
                        let host = Self.host(client, name)
                        var granted: [(host: String, at: Date)] = []
                        // Bounded: each host needs 5 grants; every refusal waits for the freed slot.
                        for _ in 0..<200 where granted.count < perHost {
                            switch try await host.takeSlot(api: .isolate, limits: limits, guardBand: guardBand) {
                            case .granted(let at, _): granted.append((name, at))
                            case .wait(let after, _, _): try await Task.sleep(for: after)
                            }
                        }
                        return granted
                    }
                }
                return try await group.reduce(into: []) { $0 += $1 }
            }
            #expect(grants.count == 3 * perHost)
            #expect(Set(grants.map(\.host)) == ["a", "b", "c"])
            let times = grants.map(\.at)
            for limit in limits {
                #expect(Self.fullestWindow(times, limit, guardBand: guardBand) == limit.calls, "\(limit): full, never over")
            }
            // Every attempt stays in the ledger (a day), whatever window the caller's limits have.
            let kept = try await Self.host(client, "a").attempts(api: .isolate)
            #expect(kept.map(\.at) == times.sorted())
        }
    }

    @Test("a pause stops the API for every host until it ends; a shorter one never cuts it short; other APIs and keys go on")
    func pauseIsShared() async throws {
        try await withPostgres { client in
            try await SharedQuotaSchema.migrate(client, logger: Self.logger)
            let limits = [Limit(calls: 100, window: .seconds(60))]
            let until = try await Self.host(client, "a").pause(api: .isolate, for: .seconds(30))
            #expect(try await Self.host(client, "b").pause(api: .isolate, for: .seconds(5)) == until)
            guard case .wait(let after, let now, let paused) = try await Self.host(client, "c").takeSlot(api: .isolate, limits: limits, guardBand: .zero)
            else {
                Issue.record("a paused API grants nothing")
                return
            }
            let expected = until.timeIntervalSince(now)
            #expect(abs(Double(after.nanoseconds) / 1e9 - expected) < 0.002, "waits for the pause: \(after) vs \(expected) s")
            #expect(paused.map { abs(Double($0.nanoseconds) / 1e9 - expected) < 0.002 } == true, "says it is a pause: \(String(describing: paused))")
            guard case .granted = try await Self.host(client, "c").takeSlot(api: .cancel, limits: limits, guardBand: .zero) else {
                Issue.record("another API is not paused")
                return
            }
            guard case .granted = try await Self.host(client, "c", key: "other/app").takeSlot(api: .isolate, limits: limits, guardBand: .zero)
            else {
                Issue.record("another quota key is not paused")
                return
            }
        }
    }
}

extension UpstreamAPI {
    static let isolate = UpstreamAPI("isolate")
}
