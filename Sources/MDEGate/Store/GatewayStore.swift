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
/// The gateway hands over changes in batches and treats a batch as durable once `apply`
/// returns: a 202 is answered, and an attempt is sent, only after that. A batch interface lets
/// a durable store commit many concurrent submissions in one transaction (group commit).
public protocol GatewayStore: Sendable {
    func apply(_ changes: [StoreChange]) async throws
    func load() async throws -> StoredState
}

/// Keeps state in memory only: a restart starts empty. For tests; `serve` uses `SQLiteStore`.
public actor InMemoryStore: GatewayStore {
    private var records: [RequestID: RequestRecord] = [:]
    private var attempts: [Timestamp] = []
    private var pausedUntil: Timestamp?

    public init() {}

    public func apply(_ changes: [StoreChange]) async throws {
        for change in changes {
            switch change {
            case .record(let record): records[record.id] = record
            case .attempt(let time): insert(time)
            case .departure(let recorded, let departed):
                if let index = attempts.firstIndex(of: recorded) {
                    attempts.remove(at: index)
                    insert(departed)
                }
            case .pause(let until): pausedUntil = until
            case .forget(let id): records[id] = nil
            }
        }
        // Attempts older than any window are of no use; keep the last day at most. They are in
        // time order, so only a prefix can be old.
        if let newest = attempts.last {
            let horizon = newest - .seconds(86_400)
            let old = attempts.prefix { $0 < horizon }.count
            attempts.removeFirst(old)
        }
    }

    private func insert(_ time: Timestamp) {
        let index = attempts.lastIndex { $0 <= time }.map { $0 + 1 } ?? 0
        attempts.insert(time, at: index)
    }

    public func load() async throws -> StoredState {
        StoredState(
            records: records.values.sorted { $0.createdAt < $1.createdAt },
            attempts: attempts, pausedUntil: pausedUntil)
    }
}
