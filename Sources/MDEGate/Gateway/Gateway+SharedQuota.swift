import Foundation
import Logging
import MDEGateCore
import MDEGateSharedQuota
import MDEGateWire
import NIOConcurrencyHelpers

/// The gateway's way to the ledger it shares with other hosts (`shared_quota`): the database,
/// and the schema made current once, before the first slot is asked for.
public final class SharedQuotaLink: Sendable {
    public let database: SharedQuotaDatabase
    public let connection: SharedQuotaConnection
    private let schemaReady = NIOLockedValueBox(false)
    private let logger: Logger

    public init(database: SharedQuotaDatabase, connection: SharedQuotaConnection, logger: Logger) {
        self.database = database
        self.connection = connection
        self.logger = logger
    }

    /// Bounds every round trip: a database that went silent is "unreachable", not a hang.
    var deadline: Duration { connection.timeout }

    /// Creates or upgrades the schema if this link has not yet; throws when it cannot.
    func ensureSchema() async throws {
        guard !schemaReady.withLockedValue({ $0 }) else { return }
        let applied = try await SharedQuotaSchema.migrate(database.client, logger: logger)
        if !applied.isEmpty {
            logger.notice("shared quota: created the schema in the database", metadata: ["versions": "\(applied)"])
        }
        schemaReady.withLockedValue { $0 = true }
    }

    func takeSlot(api: UpstreamAPI, limits: [Limit], guardBand: Duration) async -> Result<SharedQuotaDatabase.Slot, any Error> {
        await withDeadline(deadline) {
            try await self.ensureSchema()
            return try await self.database.takeSlot(api: api, limits: limits, guardBand: guardBand)
        }
    }
}

/// The last slot requests' round trips, for status (and the benchmark).
struct RoundTripLog {
    private var nanoseconds: [Int64] = []
    private var next = 0
    static let capacity = 1000

    mutating func record(_ duration: Duration) {
        if nanoseconds.count < Self.capacity {
            nanoseconds.append(duration.nanoseconds)
        } else {
            nanoseconds[next] = duration.nanoseconds
            next = (next + 1) % Self.capacity
        }
    }

    var summary: StatusDocument.SharedQuota.RoundTrips? {
        guard !nanoseconds.isEmpty else { return nil }
        let sorted = nanoseconds.sorted()
        func ms(_ quantile: Double) -> Double {
            Double(sorted[min(sorted.count - 1, Int((Double(sorted.count) * quantile).rounded(.up)) - 1)]) / 1e6
        }
        return .init(samples: sorted.count, p50Ms: ms(0.5), p99Ms: ms(0.99), maxMs: Double(sorted.last!) / 1e6)
    }
}

/// What the gateway knows of the shared ledger's database, for status and logs.
struct SharedQuotaHealth {
    var reachable = true
    var lastError: String?
    var unreachableSince: Timestamp?
    /// Slot requests that failed in a row: how long to wait before the next one.
    var failures = 0
    /// A connection of its own is being tried, to learn why the pool gets none.
    var probing = false

    /// The wait before asking again after `failures` failures in a row: 250 ms doubling to 5 s.
    var retryDelay: Duration {
        .milliseconds(min(5_000, 250 << min(failures - 1, 5)))
    }
}

/// The shared quota: slots are asked for from the database whenever a lane has work and no
/// grant, and the answers (a grant, a wait, a shared 429 pause, or no answer) come back to the
/// lane's `SharedLedger`. Nothing is sent without a grant, so a database that cannot be reached
/// stops dispatch (fail closed) while admissions go on.
extension Gateway {
    /// Asks the database for a slot for every lane that could start an attempt now and holds
    /// no grant for it; one request per lane at a time. Runs at the end of every pump.
    func askSharedSlots(at time: Timestamp) {
        guard let shared = sharedQuota, !stopping else { return }
        for api in scheduler.apis {
            let wanted = scheduler.startableAttempts(api, at: time)
            guard wanted > 0, let ledger = scheduler.ledger(api) as? SharedLedger,
                ledger.needsAsk(wanted: wanted, at: time)
            else { continue }
            scheduler.updateLedger(api, as: SharedLedger.self) { $0.startAsking() }
            let limits = ledger.limits
            let guardBand = ledger.guardBand
            // The grant is reckoned from when it was asked for: the server records the attempt
            // after that, so an attempt's delay measured from here is never too short.
            let askedAt = now()
            let clock = now
            Task {
                let answer = await shared.takeSlot(api: api, limits: limits, guardBand: guardBand)
                let answeredAt = clock()
                self.slotAnswered(api, answer, askedAt: askedAt, answeredAt: answeredAt)
            }
        }
    }

    private func slotAnswered(
        _ api: UpstreamAPI, _ answer: Result<SharedQuotaDatabase.Slot, any Error>, askedAt: Timestamp, answeredAt: Timestamp
    ) {
        let time = now()
        if case .success = answer { slotRoundTrips.record(answeredAt - askedAt) }
        switch answer {
        case .success(.granted(_, let attempt)):
            scheduler.updateLedger(api, as: SharedLedger.self) {
                $0.granted(attempt: attempt, askedAt: askedAt, answeredAt: answeredAt)
            }
            sharedQuotaAnswered()
        case .success(.wait(let after, _, let paused)):
            // From when the answer came, which is after the server's instant: never early.
            scheduler.updateLedger(api, as: SharedLedger.self) { $0.wait(until: answeredAt + after) }
            sharedQuotaAnswered()
            if let paused { pauseShared(api, until: answeredAt + paused) }
        case .failure(let error):
            sharedHealth.failures += 1
            let retryAt = time + sharedHealth.retryDelay
            scheduler.updateLedger(api, as: SharedLedger.self) { $0.unreachable(retryAt: retryAt) }
            sharedQuotaFailed(SharedQuotaConnection.describe(error), at: time)
            probeSharedQuota()
        }
        requestPump()
    }

    /// Another host saw a 429: this host pauses the API as well, and keeps the pause across a
    /// restart like its own.
    private func pauseShared(_ api: UpstreamAPI, until: Timestamp) {
        guard (scheduler.pausedUntil(api) ?? .zero) < until else { return }
        scheduler.pause(api, until: until)
        pending.append(.pause(api, until: until))
        logger.warning(
            "another host saw a 429: pausing this API until the shared pause ends",
            metadata: ["api": "\(api)", "pausedUntil": "\(JSON.timestamp(until))"])
    }

    /// The pool often says no more than "no connection in time"; one connection of its own says
    /// why (refused, a password or a certificate the server rejects), for status and the log.
    /// One probe at a time, so at most one per retry while the database stays away.
    private func probeSharedQuota() {
        guard let shared = sharedQuota, !sharedHealth.probing else { return }
        sharedHealth.probing = true
        let logger = self.logger
        Task {
            let probe = await shared.connection.probe(logger: logger)
            self.probed(probe)
        }
    }

    private func probed(_ probe: SharedQuotaConnection.Probe) {
        sharedHealth.probing = false
        guard !sharedHealth.reachable, case .unreachable(let reason) = probe, reason != sharedHealth.lastError else { return }
        sharedHealth.lastError = reason
        logger.error("shared quota database unavailable", metadata: ["database": "\(sharedQuota!.connection)", "error": "\(reason)"])
    }

    private func sharedQuotaAnswered() {
        if !sharedHealth.reachable {
            logger.notice(
                "shared quota database reachable again; dispatch resumes",
                metadata: ["database": "\(sharedQuota!.connection)"])
        }
        sharedHealth = SharedQuotaHealth()
    }

    private func sharedQuotaFailed(_ reason: String, at time: Timestamp) {
        let wasReachable = sharedHealth.reachable
        sharedHealth.reachable = false
        sharedHealth.lastError = reason
        if wasReachable {
            sharedHealth.unreachableSince = time
            logger.error(
                "shared quota database unavailable: nothing is sent upstream until it answers again (requests are still admitted and kept)",
                metadata: ["database": "\(sharedQuota!.connection)", "error": "\(reason)"])
        } else {
            logger.debug("shared quota database still unavailable", metadata: ["error": "\(reason)"])
        }
    }

    /// At start-up, in the background: opens a pooled connection and makes the schema current,
    /// so the first slot request does not pay for either. A failure here is only logged; the
    /// slot requests report and retry it.
    func warmUpSharedQuota() {
        guard let shared = sharedQuota else { return }
        let logger = self.logger
        Task {
            let result = await withDeadline(shared.deadline * 5) { try await shared.ensureSchema() }
            switch result {
            case .success: logger.info("shared quota database reachable, schema current", metadata: ["database": "\(shared.connection)"])
            case .failure(let error):
                logger.warning(
                    "shared quota database not reachable at start-up; requests are admitted and wait for it",
                    metadata: ["database": "\(shared.connection)", "error": "\(SharedQuotaConnection.describe(error))"])
            }
        }
    }

    /// Attempts of `api` that left late after their grant are moved that much later in the
    /// database (see `SharedLedger`); called when attempts depart.
    func delayLateAttempts(_ api: UpstreamAPI) {
        guard let shared = sharedQuota else { return }
        var late: [(attempt: Int64, delay: Duration)] = []
        scheduler.updateLedger(api, as: SharedLedger.self) { late = $0.takeLateAttempts() }
        guard !late.isEmpty else { return }
        let logger = self.logger
        Task {
            for (attempt, delay) in late {
                let result = await withDeadline(shared.deadline) { try await shared.database.delay(attempt: attempt, by: delay) }
                if case .failure(let error) = result {
                    logger.warning(
                        "could not move a late attempt in the shared ledger; the guard band may not cover it",
                        metadata: ["api": "\(api)", "delay": "\(delay)", "error": "\(SharedQuotaConnection.describe(error))"])
                }
            }
        }
    }

    /// A 429 seen here pauses the API for every host: the pause goes to the database too.
    func shareThrottle(_ api: UpstreamAPI, for duration: Duration) {
        guard let shared = sharedQuota else { return }
        let logger = self.logger
        Task {
            let result = await withDeadline(shared.deadline) {
                try await shared.database.pause(api: api, for: duration)
            }
            if case .failure(let error) = result {
                logger.warning(
                    "could not share a 429 pause with the other hosts; they pause when they see their own 429",
                    metadata: ["api": "\(api)", "error": "\(SharedQuotaConnection.describe(error))"])
            }
        }
    }

    /// The shared ledger's part of status: the database's health as last seen, and every host's
    /// use read fresh from the database (nil when it did not answer in time).
    func sharedQuotaStatus(usage: [SharedQuotaDatabase.Usage]?) -> StatusDocument.SharedQuota? {
        guard let shared = sharedQuota else { return nil }
        let documents = usage?.filter { $0.total > 0 }.map { use in
            StatusDocument.SharedQuota.Usage(
                api: use.api, spec: use.limit.spec, used: use.total,
                hosts: use.byHost.sorted { $0.key < $1.key }.map { .init(host: $0.key, used: $0.value) })
        }
        return StatusDocument.SharedQuota(
            database: "\(shared.connection)", key: shared.database.key, host: shared.database.host,
            reachable: sharedHealth.reachable, lastError: sharedHealth.lastError,
            unreachableSince: sharedHealth.unreachableSince.map(JSON.timestamp), usage: documents,
            slotRequests: slotRoundTrips.summary)
    }

    /// Status with every host's use of the shared quota, read from the database (bounded by the
    /// database's timeout); without a shared quota, the same as `status()`.
    public func statusWithSharedUsage() async -> StatusDocument {
        guard let shared = sharedQuota else { return status() }
        let limits = Route.apis.map { (api: $0.name, limits: scheduler.ledger($0).limits) }
        let guardBand = settings.guardBand
        let usage = await withDeadline(shared.deadline) {
            try await shared.ensureSchema()
            return try await shared.database.usage(limits, guardBand: guardBand)
        }
        var document = status()
        document.sharedQuota = sharedQuotaStatus(usage: try? usage.get())
        return document
    }
}
