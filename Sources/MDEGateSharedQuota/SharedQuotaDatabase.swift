import Foundation
import Logging
import MDEGateCore
import PostgresNIO

/// The ledger that several hosts share, in PostgreSQL: one quota key (an app registration) and,
/// under it, one ledger and one pause per upstream API.
///
/// Every slot decision is one round trip (`mdegate_take_slot`, see `SharedQuotaSchema`): the
/// server locks the key and API, reads its own clock, counts every limit and records the attempt
/// only if all allow. The hosts' clocks never enter the count, so hosts whose clocks disagree by
/// seconds still never put more than N attempts into any window of the server's clock.
public struct SharedQuotaDatabase: Sendable {
    /// What the server decided about one attempt.
    public enum Slot: Sendable, Equatable {
        /// Recorded at `serverTime` as `attempt`: the attempt may leave now.
        case granted(serverTime: Date, attempt: Int64)
        /// Not recorded: the earliest slot (or the end of a pause) is `after` from `serverTime`.
        /// `paused`: how much of that is a 429 pause some host reported.
        case wait(after: Duration, serverTime: Date, paused: Duration? = nil)
    }

    /// How much of one limit the hosts spent, for status.
    public struct Usage: Sendable, Equatable {
        public var api: String
        public var limit: Limit
        /// Attempts in the window (plus guard band) per host, by host name.
        public var byHost: [String: Int]
        public var total: Int { byHost.values.reduce(0, +) }
    }

    /// One attempt in the shared ledger, for status and tests.
    public struct Attempt: Sendable, Equatable {
        public var host: String
        public var at: Date
    }

    public let client: PostgresClient
    /// The quota's name: every host of one app registration uses the same key.
    public let key: String
    /// This host, as the ledger and status name it.
    public let host: String
    let logger: Logger

    public init(client: PostgresClient, key: String, host: String, logger: Logger) {
        self.client = client
        self.key = key
        self.host = host
        self.logger = logger
    }

    /// Takes a slot of `api` under `limits` and `guardBand`, or says how long until one frees.
    public func takeSlot(api: UpstreamAPI, limits: [Limit], guardBand: Duration) async throws -> Slot {
        let calls = limits.map { Int32(clamping: $0.calls) }
        let windows = limits.map { Int64($0.window.nanoseconds / 1_000_000) }
        let guardMs = Int64(guardBand.nanoseconds / 1_000_000)
        let rows = try await client.query(
            """
            SELECT granted, server_time, wait_ms, paused_until, attempt_id
            FROM mdegate_take_slot(\(key), \(api.name), \(host), \(calls), \(windows), \(guardMs))
            """, logger: logger)
        for try await (granted, serverTime, waitMs, pausedUntil, attempt) in rows.decode(
            (Bool, Date, Int64, Date?, Int64?).self)
        {
            if granted, let attempt { return .granted(serverTime: serverTime, attempt: attempt) }
            let paused = pausedUntil.map { Duration.milliseconds(Int64(($0.timeIntervalSince(serverTime) * 1000).rounded(.up))) }
            return .wait(after: .milliseconds(waitMs), serverTime: serverTime, paused: paused)
        }
        throw SharedQuotaError("the shared quota database returned no slot decision")
    }

    /// Moves a granted attempt `delay` later: it left that much after its grant was asked for (a
    /// slow answer or local commit), and the upstream counts it from when it arrives, not from
    /// the grant. Moving an attempt later only ever delays later slots.
    public func delay(attempt: Int64, by delay: Duration) async throws {
        let milliseconds = Double(delay.nanoseconds) / 1e6
        try await client.query(
            "UPDATE mdegate_attempts SET at = at + \(milliseconds) * interval '1 millisecond' WHERE id = \(attempt)",
            logger: logger)
    }

    /// Pauses `api` for every host for `duration` from the server's now (an upstream 429), and
    /// returns when the pause ends; a longer pause already in force stays.
    @discardableResult
    public func pause(api: UpstreamAPI, for duration: Duration) async throws -> Date {
        let milliseconds = Int64(duration.nanoseconds / 1_000_000)
        let rows = try await client.query(
            "SELECT mdegate_pause(\(key), \(api.name), \(host), \(milliseconds))", logger: logger)
        for try await until in rows.decode(Date.self) { return until }
        throw SharedQuotaError("the shared quota database returned no pause")
    }

    /// Every host's attempts in each limit's window (plus `guardBand`) on the server's clock, for
    /// the APIs and limits given: one query.
    public func usage(_ limits: [(api: String, limits: [Limit])], guardBand: Duration) async throws -> [Usage] {
        let pairs = limits.flatMap { entry in entry.limits.map { (entry.api, $0) } }
        let apis = pairs.map(\.0)
        let spans = pairs.map { Int64(($0.1.window + guardBand).nanoseconds / 1_000_000) }
        let indexes = pairs.indices.map { Int32($0) }
        let rows = try await client.query(
            """
            SELECT l.i, a.host, count(*)::bigint
            FROM unnest(\(indexes), \(apis), \(spans)) AS l(i, api, span_ms)
            JOIN mdegate_attempts a ON a.quota_key = \(key) AND a.api = l.api
                AND a.at > clock_timestamp() - l.span_ms * interval '1 millisecond'
            GROUP BY l.i, a.host
            """, logger: logger)
        var usage = pairs.map { Usage(api: $0.0, limit: $0.1, byHost: [:]) }
        for try await (index, host, count) in rows.decode((Int32, String, Int64).self) {
            usage[Int(index)].byHost[host] = Int(count)
        }
        return usage
    }

    /// The attempts of `api` still in the ledger, oldest first.
    public func attempts(api: UpstreamAPI) async throws -> [Attempt] {
        let rows = try await client.query(
            "SELECT host, at FROM mdegate_attempts WHERE quota_key = \(key) AND api = \(api.name) ORDER BY at",
            logger: logger)
        var attempts: [Attempt] = []
        for try await (host, at) in rows.decode((String, Date).self) { attempts.append(Attempt(host: host, at: at)) }
        return attempts
    }
}
