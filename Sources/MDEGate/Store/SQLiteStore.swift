import Foundation
import GRDB
import Logging
import MDEGateCore
import Synchronization

/// The durable store: one SQLite database at `state.path`, in WAL mode, holding the queue and
/// finished requests, the ledger of attempt times and the pause.
///
/// **A simple writer.** `commit` hands its changes to GRDB's own serial writer with
/// `asyncWrite`, and GRDB calls back on its writer queue once the transaction committed. No
/// actor and no task sits in between: the only state shared across threads is the list of
/// batches waiting for the next transaction, behind a mutex.
///
/// **Group commit.** A durable commit costs an fsync (0.2–0.4 ms here, milliseconds on slower
/// disks). While one transaction is being written, new batches wait; when it is done, all of
/// them are written in the next transaction and every caller in it is called back once that
/// committed (or failed). So the number of fsyncs follows the disk's speed, not the number of
/// callers, and no caller hears "stored" early. The gateway already hands over one batch at a
/// time; other callers (tools, tests) get the same grouping.
///
/// **Durability.** `synchronous=FULL`: in WAL mode SQLite then syncs the log at every commit, so
/// a commit that was reported survives power loss too (with NORMAL it would survive a crash of
/// the process but not of the machine).
///
/// **One daemon per file.** The store holds `<state.path>.lock` with an exclusive POSIX record
/// lock for as long as it is open (`StateFileLock`); the kernel releases it when the process
/// ends, however it ends. A second daemon on the same file refuses to start instead of spending
/// the quota from a copy of the ledger of its own.
public final class SQLiteStore: GatewayStore {
    /// Attempts older than this, counted from the newest one written, are deleted on write.
    /// The longest window is an hour; a day leaves room for any configuration.
    static let attemptRetention: Duration = .seconds(24 * 3600)
    /// `load` returns attempts this recent. More than `attemptRetention`, so a clock that is a
    /// little behind at start-up still sees everything kept.
    static let attemptHorizon: Duration = .seconds(25 * 3600)

    public typealias Completion = @Sendable (Result<Void, any Error>) -> Void

    /// Batches waiting for the next transaction, and whether one is being written.
    private struct Queue {
        var waiting: [(changes: [StoreChange], completion: Completion)] = []
        var writing = false
        var closed = false
        var idle: [@Sendable () -> Void] = []
        /// Transactions committed since opening: how well group commit batches.
        var committed = 0
    }

    public let path: String
    private let pool: DatabasePool
    private let lock: StateFileLock
    private let logger: Logger
    private let now: @Sendable () -> Timestamp
    private let queue = Mutex(Queue())

    /// Opens (or creates) the database at `path`, creating its directory if missing, takes the
    /// file for this process alone, and brings the schema up to date. Throws a `StoreError`
    /// naming `state.path` if any of that fails (another daemon holding it included).
    ///
    /// - Parameter now: the wall clock, which decides which attempts `load` still returns.
    public init(
        path: String, logger: Logger, now: @escaping @Sendable () -> Timestamp = Gateway.wallClock
    ) throws {
        self.path = path
        self.logger = logger
        self.now = now
        try Self.createParentDirectory(of: path)
        lock = try StateFileLock(statePath: path)
        var configuration = Configuration()
        configuration.label = "mdegate.state"
        do {
            pool = try DatabasePool(path: path, configuration: configuration)
            // After opening, not in `prepareDatabase`: GRDB sets NORMAL on the writer when it
            // switches to WAL. Only the writer's level matters, and that connection lives as long
            // as the pool. See the type's comment for why FULL.
            try pool.writeWithoutTransaction { db in try db.execute(sql: "PRAGMA synchronous = FULL") }
            try pool.read { db in
                if try Self.migrator.hasBeenSuperseded(db) {
                    throw StoreError(
                        path: path,
                        "was written by a newer mdegate (unknown schema version); run that version, "
                            + "or set state.path to a new file")
                }
            }
            try Self.migrator.migrate(pool)
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError(opening: path, error)
        }
        logger.info(
            "opened the state database", metadata: ["path": "\(path)", "journal": "wal", "synchronous": "full"])
    }

    /// Stores `changes` with whatever other batches are waiting, and calls `completion` once the
    /// transaction holding them committed, or failed, on GRDB's writer queue (at once, on the
    /// caller's thread, for an empty batch or a closed store).
    public func commit(_ changes: [StoreChange], completion: @escaping Completion) {
        guard !changes.isEmpty else { return completion(.success(())) }
        enum Next { case refuse, wait, write }
        let next: Next = queue.withLock { queue in
            guard !queue.closed else { return .refuse }
            queue.waiting.append((changes, completion))
            if queue.writing { return .wait }
            queue.writing = true
            return .write
        }
        switch next {
        case .refuse: completion(.failure(StoreError(path: path, "is closed; the daemon is stopping")))
        case .wait: break
        case .write: writeWaiting()
        }
    }

    /// Writes everything waiting in one transaction; when it is done, the next.
    private func writeWaiting() {
        let batch: [(changes: [StoreChange], completion: Completion)] = queue.withLock { queue in
            defer { queue.waiting = [] }
            return queue.waiting
        }
        let changes = batch.count == 1 ? batch[0].changes : batch.flatMap(\.changes)
        pool.asyncWrite({ db in try Self.write(changes, to: db) }) { [self] _, result in
            if case .failure(let error) = result {
                logger.error(
                    "could not commit to the state database",
                    metadata: ["path": "\(path)", "batches": "\(batch.count)", "error": "\(error)"])
            }
            let answer = result.mapError { error -> any Error in
                StoreError(path: path, "could not commit \(changes.count) changes: \(error)")
            }
            for caller in batch { caller.completion(answer) }
            let (more, idle): (Bool, [@Sendable () -> Void]) = queue.withLock { queue in
                if case .success = result { queue.committed += 1 }
                guard queue.waiting.isEmpty else { return (true, []) }
                queue.writing = false
                defer { queue.idle = [] }
                return (false, queue.idle)
            }
            if more { writeWaiting() }
            for wake in idle { wake() }
        }
    }

    /// Every record (oldest first, ties in the order they were first stored), the attempts of
    /// the last 25 hours by the wall clock, and the pauses.
    public func load() async throws -> StoredState {
        let since = (now() - Self.attemptHorizon).nanosecondsSinceEpoch
        let path = self.path
        do {
            return try await pool.read { db in try Self.read(db, attemptsSince: since, path: path) }
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError(path: path, "could not be read: \(error)")
        }
    }

    public func attempts(since: Timestamp) async throws -> [UpstreamAPI: [Timestamp]] {
        let since = since.nanosecondsSinceEpoch
        do {
            return try await pool.read { db in try Self.attempts(db, since: since) }
        } catch {
            throw StoreError(path: path, "could not be read: \(error)")
        }
    }

    public func requests(matching query: RequestQuery) async throws -> RequestPage {
        let path = self.path
        do {
            return try await pool.read { db in try Self.requests(db, matching: query, path: path) }
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError(path: path, "could not be read: \(error)")
        }
    }

    /// Deletes records completed before `horizon`, for callers that do not track records
    /// themselves (the gateway sends `.forget` instead), and returns how many went. Attempts are
    /// not touched: writes already keep only the last day of them, and deleting one that still
    /// counts would let the quota be overspent.
    @discardableResult
    public func pruneFinished(before horizon: Timestamp) async throws -> Int {
        let limit = horizon.nanosecondsSinceEpoch
        return try await pool.write { db in
            try db.execute(sql: "DELETE FROM requests WHERE completed_at_ns < ?", arguments: [limit])
            return db.changesCount
        }
    }

    /// Transactions committed since opening, for tests of group commit.
    var committedTransactions: Int { queue.withLock { $0.committed } }

    /// The writer connection's journal mode and `synchronous` level (2 is FULL), for tests.
    func writerSettings() async throws -> (journalMode: String?, synchronous: Int?) {
        try await pool.write { db in
            (try String.fetchOne(db, sql: "PRAGMA journal_mode"), try Int.fetchOne(db, sql: "PRAGMA synchronous"))
        }
    }

    /// Runs `sql` on the writer, for tests that need the database to misbehave.
    func executeForTesting(_ sql: String) async throws {
        try await pool.write { db in try db.execute(sql: sql) }
    }

    /// Refuses new batches, waits for the ones already handed over to commit, closes the
    /// database (so the file is complete and checkpointed) and lets go of the file.
    public func close() async throws {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let writing = queue.withLock { queue in
                queue.closed = true
                if queue.writing { queue.idle.append { continuation.resume() } }
                return queue.writing
            }
            if !writing { continuation.resume() }
        }
        try pool.close()
        lock.release()
    }
}
