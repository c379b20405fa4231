import MDEGateCore

/// One change to the gateway's durable state.
public enum StoreChange: Sendable {
    /// A request record, new or changed.
    case record(RequestRecord)
    /// An upstream attempt started at this instant (wall clock). Stored before it is sent.
    case attempt(Timestamp)
    /// The attempt stored at `recorded` left later, at `departed` (storing it took that long):
    /// the ledger counts it from its departure, so the slot it frees does not open early.
    case departure(recorded: Timestamp, departed: Timestamp)
    /// The pause after an upstream 429, or nil once it is over.
    case pause(until: Timestamp?)
    /// A finished record past its retention.
    case forget(RequestID)
}

/// What the gateway reloads at start-up.
public struct StoredState: Sendable {
    /// Oldest first (by `createdAt`, ties in the order first stored): the queue's order.
    public var records: [RequestRecord]
    public var attempts: [Timestamp]
    public var pausedUntil: Timestamp?

    public init(records: [RequestRecord] = [], attempts: [Timestamp] = [], pausedUntil: Timestamp? = nil) {
        self.records = records
        self.attempts = attempts
        self.pausedUntil = pausedUntil
    }
}

/// Where the queue, the ledger and the pause live between restarts.
///
/// The gateway hands over one batch of changes at a time and treats it as durable once
/// `commit`'s completion reports success: a 202 is answered, and an attempt is sent, only after
/// that. A callback, not an `async` function: the gateway lives on an event loop, and the
/// completion hops straight back to it, with no task in between.
public protocol GatewayStore: Sendable {
    /// Writes `changes` in one transaction (possibly together with other batches) and calls
    /// `completion` exactly once, on any thread, when it committed or failed.
    func commit(_ changes: [StoreChange], completion: @escaping @Sendable (Result<Void, any Error>) -> Void)
    func load() async throws -> StoredState
    /// The attempts stored at or after `since`, oldest first: what a reload that lengthens a
    /// window must count again.
    func attempts(since: Timestamp) async throws -> [Timestamp]
}

extension GatewayStore {
    /// `commit`, awaited: for tests and tools.
    nonisolated(nonsending) public func apply(_ changes: [StoreChange]) async throws {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            commit(changes) { continuation.resume(with: $0) }
        }
    }
}

/// Keeps state in memory only: a restart starts empty. For tests; `serve` uses `SQLiteStore`.
public final class InMemoryStore: GatewayStore {
    private struct State {
        var records: [RequestID: RequestRecord] = [:]
        var order: [RequestID: Int] = [:]
        var attempts: [Timestamp] = []
        var pausedUntil: Timestamp?
    }

    private let state = LockedState(State())

    public init() {}

    public func commit(_ changes: [StoreChange], completion: @escaping @Sendable (Result<Void, any Error>) -> Void) {
        state.withLock { state in
            for change in changes {
                switch change {
                case .record(let record):
                    if state.order[record.id] == nil { state.order[record.id] = state.order.count }
                    state.records[record.id] = record
                case .attempt(let time): Self.insert(time, into: &state.attempts)
                case .departure(let recorded, let departed):
                    if let index = state.attempts.firstIndex(of: recorded) {
                        state.attempts.remove(at: index)
                        Self.insert(departed, into: &state.attempts)
                    }
                case .pause(let until): state.pausedUntil = until
                case .forget(let id): state.records[id] = nil
                }
            }
            // Attempts older than any window are of no use; keep the last day at most. They are in
            // time order, so only a prefix can be old.
            if let newest = state.attempts.last {
                let horizon = newest - .seconds(86_400)
                let old = state.attempts.prefix { $0 < horizon }.count
                state.attempts.removeFirst(old)
            }
        }
        completion(.success(()))
    }

    private static func insert(_ time: Timestamp, into attempts: inout [Timestamp]) {
        let index = attempts.lastIndex { $0 <= time }.map { $0 + 1 } ?? 0
        attempts.insert(time, at: index)
    }

    public func attempts(since: Timestamp) async throws -> [Timestamp] {
        state.withLock { state in state.attempts.filter { $0 >= since } }
    }

    public func load() async throws -> StoredState {
        state.withLock { state in
            StoredState(
                records: state.records.values.sorted {
                    ($0.createdAt, state.order[$0.id] ?? 0) < ($1.createdAt, state.order[$1.id] ?? 0)
                },
                attempts: state.attempts, pausedUntil: state.pausedUntil)
        }
    }
}
