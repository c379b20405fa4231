import MDEGateCore
import Synchronization

/// One change to the gateway's durable state.
public enum StoreChange: Sendable {
    /// A request record, new or changed.
    case record(RequestRecord)
    /// An attempt of `api` started at this instant (wall clock). Stored before it is sent.
    case attempt(UpstreamAPI, Timestamp)
    /// The attempt of `api` stored at `recorded` left later, at `departed` (storing it took that
    /// long): the ledger counts it from its departure, so the slot it frees does not open early.
    case departure(UpstreamAPI, recorded: Timestamp, departed: Timestamp)
    /// The pause of `api` after an upstream 429, or nil once it is over.
    case pause(UpstreamAPI, until: Timestamp?)
    /// A finished record past its retention.
    case forget(RequestID)
}

/// What the gateway reloads at start-up.
public struct StoredState: Sendable {
    /// Oldest first (by `createdAt`, ties in the order first stored): the queue's order.
    public var records: [RequestRecord]
    /// Each API's attempts, oldest first.
    public var attempts: [UpstreamAPI: [Timestamp]]
    /// Each paused API's pause.
    public var pauses: [UpstreamAPI: Timestamp]

    public init(
        records: [RequestRecord] = [], attempts: [UpstreamAPI: [Timestamp]] = [:], pauses: [UpstreamAPI: Timestamp] = [:]
    ) {
        self.records = records
        self.attempts = attempts
        self.pauses = pauses
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
    /// Each API's attempts stored at or after `since`, oldest first: what a reload that
    /// lengthens a window must count again.
    func attempts(since: Timestamp) async throws -> [UpstreamAPI: [Timestamp]]
    /// A page of the audit listing: the records `query` matches, newest first. Read beside the
    /// writer; an outcome answered in the last few milliseconds may not be in it yet.
    func requests(matching query: RequestQuery) async throws -> RequestPage
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
        var attempts: [UpstreamAPI: [Timestamp]] = [:]
        var pauses: [UpstreamAPI: Timestamp] = [:]
    }

    private let state = Mutex(State())

    public init() {}

    public func commit(_ changes: [StoreChange], completion: @escaping @Sendable (Result<Void, any Error>) -> Void) {
        state.withLock { state in
            for change in changes {
                switch change {
                case .record(let record):
                    if state.order[record.id] == nil { state.order[record.id] = state.order.count }
                    state.records[record.id] = record
                case .attempt(let api, let time): Self.insert(time, into: &state.attempts[api, default: []])
                case .departure(let api, let recorded, let departed):
                    if let index = state.attempts[api]?.firstIndex(of: recorded) {
                        state.attempts[api]!.remove(at: index)
                        Self.insert(departed, into: &state.attempts[api]!)
                    }
                case .pause(let api, let until): state.pauses[api] = until
                case .forget(let id): state.records[id] = nil
                }
            }
            // Attempts older than any window are of no use; keep the last day at most. They are in
            // time order, so only a prefix can be old.
            for api in state.attempts.keys {
                guard let newest = state.attempts[api]!.last else { continue }
                let horizon = newest - .seconds(86_400)
                let old = state.attempts[api]!.prefix { $0 < horizon }.count
                state.attempts[api]!.removeFirst(old)
            }
        }
        completion(.success(()))
    }

    private static func insert(_ time: Timestamp, into attempts: inout [Timestamp]) {
        let index = attempts.lastIndex { $0 <= time }.map { $0 + 1 } ?? 0
        attempts.insert(time, at: index)
    }

    public func attempts(since: Timestamp) async throws -> [UpstreamAPI: [Timestamp]] {
        state.withLock { state in state.attempts.mapValues { $0.filter { $0 >= since } } }
    }

    public func requests(matching query: RequestQuery) async throws -> RequestPage {
        state.withLock { state in
            let ordered = state.records.values
                .map { (record: $0, sequence: Int64(state.order[$0.id] ?? 0)) }
                .filter { query.matches($0.record) }
                .filter { query.after?.precedes(createdAt: $0.record.createdAt.nanosecondsSinceEpoch, sequence: $0.sequence) ?? true }
                .sorted { ($0.record.createdAt, $0.sequence) > ($1.record.createdAt, $1.sequence) }
            let page = ordered.prefix(query.limit)
            let next = ordered.count > query.limit
                ? page.last.map { RequestCursor(createdAt: $0.record.createdAt.nanosecondsSinceEpoch, sequence: $0.sequence) }
                : nil
            return RequestPage(records: page.map(\.record), next: next)
        }
    }

    public func load() async throws -> StoredState {
        state.withLock { state in
            StoredState(
                records: state.records.values.sorted {
                    ($0.createdAt, state.order[$0.id] ?? 0) < ($1.createdAt, state.order[$1.id] ?? 0)
                },
                attempts: state.attempts, pauses: state.pauses)
        }
    }
}
