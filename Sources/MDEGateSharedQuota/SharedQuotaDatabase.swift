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
        /// Recorded at `serverTime`: the attempt may leave now.
        case granted(serverTime: Date)
        /// Not recorded: the earliest slot (or the end of a pause) is `after` from `serverTime`.
        case wait(after: Duration, serverTime: Date)
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
            SELECT granted, server_time, wait_ms
            FROM mdegate_take_slot(\(key), \(api.name), \(host), \(calls), \(windows), \(guardMs))
            """, logger: logger)
        for try await (granted, serverTime, waitMs) in rows.decode((Bool, Date, Int64).self) {
            return granted ? .granted(serverTime: serverTime) : .wait(after: .milliseconds(waitMs), serverTime: serverTime)
        }
        throw SharedQuotaError("the shared quota database returned no slot decision")
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
