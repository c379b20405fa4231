import Foundation
import GRDB
import Logging
import MDEGateCore

/// The durable store: one SQLite database at `state.path`, in WAL mode, holding the queue and
/// finished requests, the ledger of attempt times and the pause.
///
/// It is an actor because the only state it shares across tasks is the list of batches waiting
/// for the next commit; the database work itself runs on GRDB's writer queue, off the actor,
/// so new batches keep arriving while a transaction is being written.
///
/// **Group commit.** A durable commit costs an fsync, milliseconds on real disks. One commit
/// per submission would cap admissions at a few hundred per second, so `apply` does not write:
/// it appends its batch to `pending` and waits. A single writer task takes everything pending,
/// writes it in one transaction, resumes every caller in it once the commit returned (or fails
/// them all if it did not), and loops while more arrived meanwhile. So the number of fsyncs
/// follows the disk's speed, not the number of callers, and no caller returns early.
///
/// **Durability.** WAL lets `load` and status reads run beside the writer. In WAL mode
/// `synchronous=NORMAL` syncs the log only at checkpoints: a commit survives a crash of the
/// process but can be lost with power, which would break "a 202 means stored" and could forget
/// spent quota. `synchronous=FULL` syncs the log at every commit, so a returned `apply` survives
/// power loss too; group commit is what makes that affordable.
public actor SQLiteStore: GatewayStore {
    /// Attempts older than this, counted from the newest one written, are deleted on write.
    /// The longest window is an hour; a day leaves room for any configuration.
    static let attemptRetention: Duration = .seconds(24 * 3600)
    /// `load` returns attempts this recent. More than `attemptRetention`, so a clock that is a
    /// little behind at start-up still sees everything kept.
    static let attemptHorizon: Duration = .seconds(25 * 3600)

    /// A batch waiting for the next transaction, and its caller.
    private struct Pending {
        var changes: [StoreChange]
        var continuation: CheckedContinuation<Void, any Error>
    }

    public nonisolated let path: String
    private let pool: DatabasePool
    private let logger: Logger
    private let now: @Sendable () -> Timestamp
    private var pending: [Pending] = []
    private var writing = false
    private var closed = false
    private var idleWaiters: [CheckedContinuation<Void, Never>] = []
    /// Transactions committed by `apply` since opening: how well group commit batches.
    private(set) var committedTransactions = 0

    /// Opens (or creates) the database at `path`, creating its directory if missing, and brings
    /// the schema up to date. Throws a `StoreError` naming `state.path` if that fails.
    ///
    /// - Parameter now: the wall clock, which decides which attempts `load` still returns.
    public init(
        path: String, logger: Logger, now: @escaping @Sendable () -> Timestamp = Gateway.wallClock
    ) throws {
        self.path = path
        self.logger = logger
        self.now = now
        try Self.createParentDirectory(of: path)
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

    /// Stores `changes`, together with whatever other batches are waiting, and returns once the
    /// transaction holding them has committed. Cancelling the caller does not cut the wait short:
    /// the answer must say what really happened to the batch.
    public func apply(_ changes: [StoreChange]) async throws {
        guard !changes.isEmpty else { return }
        guard !closed else { throw StoreError(path: path, "is closed; the daemon is stopping") }
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            pending.append(Pending(changes: changes, continuation: continuation))
            if !writing {
                writing = true
                Task { await self.writeWhilePending() }
            }
        }
    }

    /// The one writer: commits everything pending in one transaction, until nothing is left.
    private func writeWhilePending() async {
        while !pending.isEmpty {
            let batch = pending
            pending = []
            let changes = batch.flatMap(\.changes)
            do {
                try await pool.write { db in try Self.write(changes, to: db) }
                committedTransactions += 1
                for caller in batch { caller.continuation.resume() }
            } catch {
                logger.error(
                    "could not commit to the state database",
                    metadata: ["path": "\(path)", "batches": "\(batch.count)", "error": "\(error)"])
                let failure = StoreError(path: path, "could not commit \(changes.count) changes: \(error)")
                for caller in batch { caller.continuation.resume(throwing: failure) }
            }
        }
        writing = false
        for waiter in idleWaiters { waiter.resume() }
        idleWaiters = []
    }

    /// Every record (oldest first, ties in the order they were first stored), the attempts of
    /// the last 25 hours by the wall clock, and the pause.
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

    /// Refuses new batches, waits for the ones already handed over to commit, and closes the
    /// database, so the file is complete and checkpointed.
    public func close() async throws {
        closed = true
        if writing {
            await withCheckedContinuation { idleWaiters.append($0) }
        }
        try pool.close()
    }
}

// MARK: - Schema

extension SQLiteStore {
    /// Schema versions, never edited once released: a new version is a new migration.
    static let migrator: DatabaseMigrator = {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            // STRICT: a value of the wrong type is refused on write instead of read back wrong.
            // `seq` is the order in which requests were first stored (an upsert keeps it), the
            // tie-break among equal `created_at_ns`. A response exists iff its status is set;
            // SQLite stores an empty body as NULL.
            try db.execute(
                sql: """
                    CREATE TABLE requests (
                        seq INTEGER PRIMARY KEY,
                        id TEXT NOT NULL UNIQUE,
                        machine_action_id TEXT NOT NULL,
                        comment TEXT NOT NULL,
                        client_uid INTEGER NOT NULL,
                        client_pid INTEGER NOT NULL,
                        client_name TEXT,
                        state TEXT NOT NULL,
                        attempts INTEGER NOT NULL,
                        joined TEXT,
                        created_at_ns INTEGER NOT NULL,
                        completed_at_ns INTEGER,
                        response_status INTEGER,
                        response_body BLOB,
                        response_content_type TEXT,
                        last_error TEXT
                    ) STRICT;
                    CREATE INDEX requests_state ON requests(state);
                    CREATE INDEX requests_created_at ON requests(created_at_ns);
                    CREATE INDEX requests_completed_at ON requests(completed_at_ns);

                    CREATE TABLE attempts (time_ns INTEGER NOT NULL) STRICT;
                    CREATE INDEX attempts_time ON attempts(time_ns);

                    CREATE TABLE pause (
                        id INTEGER PRIMARY KEY CHECK (id = 1),
                        until_ns INTEGER
                    ) STRICT;
                    INSERT INTO pause (id, until_ns) VALUES (1, NULL);
                    """)
        }
        return migrator
    }()

    private static let columns = """
        id, machine_action_id, comment, client_uid, client_pid, client_name, state, attempts, joined, \
        created_at_ns, completed_at_ns, response_status, response_body, response_content_type, last_error
        """

    private static let upsertSQL = """
        INSERT INTO requests (\(columns)) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
        ON CONFLICT(id) DO UPDATE SET
            machine_action_id = excluded.machine_action_id, comment = excluded.comment,
            client_uid = excluded.client_uid, client_pid = excluded.client_pid,
            client_name = excluded.client_name, state = excluded.state, attempts = excluded.attempts,
            joined = excluded.joined, created_at_ns = excluded.created_at_ns,
            completed_at_ns = excluded.completed_at_ns, response_status = excluded.response_status,
            response_body = excluded.response_body, response_content_type = excluded.response_content_type,
            last_error = excluded.last_error
        """

    /// Writes one transaction's changes in order, so a later change to the same record wins.
    private static func write(_ changes: [StoreChange], to db: Database) throws {
        var newestAttempt: Int64?
        for change in changes {
            switch change {
            case .record(let record):
                try db.cachedStatement(sql: upsertSQL).execute(arguments: arguments(of: record))
            case .attempt(let time):
                let ns = time.nanosecondsSinceEpoch
                try db.cachedStatement(sql: "INSERT INTO attempts (time_ns) VALUES (?)").execute(arguments: [ns])
                newestAttempt = max(newestAttempt ?? ns, ns)
            case .departure(let recorded, let departed):
                // Equal times are interchangeable: moving any one of them is the same ledger.
                try db.cachedStatement(
                    sql: "UPDATE attempts SET time_ns = ? WHERE rowid = (SELECT rowid FROM attempts WHERE time_ns = ? LIMIT 1)"
                ).execute(arguments: [departed.nanosecondsSinceEpoch, recorded.nanosecondsSinceEpoch])
            case .pause(let until):
                try db.cachedStatement(sql: "UPDATE pause SET until_ns = ? WHERE id = 1")
                    .execute(arguments: [until?.nanosecondsSinceEpoch])
            case .forget(let id):
                try db.cachedStatement(sql: "DELETE FROM requests WHERE id = ?").execute(arguments: [id])
            }
        }
        if let newestAttempt {
            try db.cachedStatement(sql: "DELETE FROM attempts WHERE time_ns < ?")
                .execute(arguments: [newestAttempt - attemptRetention.nanoseconds])
        }
    }

    private static func arguments(of record: RequestRecord) -> StatementArguments {
        let values: [(any DatabaseValueConvertible)?] = [
            record.id, record.machineActionID, record.comment,
            Int64(record.client.uid), Int64(record.client.pid), record.client.name,
            record.state.rawValue, record.attempts, record.joined,
            record.createdAt.nanosecondsSinceEpoch, record.completedAt?.nanosecondsSinceEpoch,
            record.response?.status, record.response.map { Data($0.body) }, record.response?.contentType,
            record.lastError,
        ]
        return StatementArguments(values)
    }

    private static func read(_ db: Database, attemptsSince since: Int64, path: String) throws -> StoredState {
        var records: [RequestRecord] = []
        let rows = try Row.fetchCursor(db, sql: "SELECT \(columns) FROM requests ORDER BY created_at_ns, seq")
        while let row = try rows.next() {
            records.append(try record(from: row, path: path))
        }
        let attempts = try Int64.fetchAll(
            db, sql: "SELECT time_ns FROM attempts WHERE time_ns >= ? ORDER BY time_ns", arguments: [since])
        let pausedUntil = try Int64?.fetchOne(db, sql: "SELECT until_ns FROM pause WHERE id = 1") ?? nil
        return StoredState(
            records: records,
            attempts: attempts.map(Timestamp.init(nanosecondsSinceEpoch:)),
            pausedUntil: pausedUntil.map(Timestamp.init(nanosecondsSinceEpoch:)))
    }

    private static func record(from row: Row, path: String) throws -> RequestRecord {
        let id: String = try row.decode(atIndex: 0)
        let stateName: String = try row.decode(atIndex: 6)
        guard let state = RequestRecord.State(rawValue: stateName) else {
            throw StoreError(
                path: path, "holds request \(id) in an unknown state \"\(stateName)\"; was it written by a newer mdegate?")
        }
        let uid: Int64 = try row.decode(atIndex: 3)
        let pid: Int64 = try row.decode(atIndex: 4)
        guard let clientUID = UInt32(exactly: uid), let clientPID = Int32(exactly: pid) else {
            throw StoreError(path: path, "holds request \(id) with an impossible client uid \(uid) or pid \(pid)")
        }
        let status: Int? = try row.decode(atIndex: 11)
        let response: RequestRecord.Response? =
            if let status {
                RequestRecord.Response(
                    status: status, body: [UInt8](try row.decode(Data?.self, atIndex: 12) ?? Data()),
                    contentType: try row.decode(atIndex: 13))
            } else {
                nil
            }
        let completedAt: Int64? = try row.decode(atIndex: 10)
        return RequestRecord(
            id: id, machineActionID: try row.decode(atIndex: 1), comment: try row.decode(atIndex: 2),
            client: RequestRecord.Client(uid: clientUID, pid: clientPID, name: try row.decode(atIndex: 5)),
            state: state, attempts: try row.decode(atIndex: 7), joined: try row.decode(atIndex: 8),
            createdAt: Timestamp(nanosecondsSinceEpoch: try row.decode(atIndex: 9)),
            completedAt: completedAt.map(Timestamp.init(nanosecondsSinceEpoch:)),
            response: response, lastError: try row.decode(atIndex: 14))
    }
}

// MARK: - Files and errors

extension SQLiteStore {
    private static func createParentDirectory(of path: String) throws {
        let parent = URL(fileURLWithPath: path).deletingLastPathComponent().path
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: parent, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else {
                throw StoreError(
                    path: path,
                    "cannot be created: \(parent) is a file, not a directory; set state.path to a file in a "
                        + "writable directory (the default is /var/lib/mdegate/state.sqlite)")
            }
            return
        }
        do {
            // Private: the state holds who asked for what.
            try FileManager.default.createDirectory(
                atPath: parent, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw StoreError(
                path: path,
                "cannot be created: its directory \(parent) could not be made (\(error)); create it writable "
                    + "for the mdegate user (systemd: StateDirectory=mdegate) or set state.path elsewhere")
        }
    }
}

/// Why the state database could not be opened, read or written. It names `state.path`, says
/// what went wrong and what to do, because an operator reads it at start-up.
public struct StoreError: Error, Sendable, CustomStringConvertible {
    public var description: String

    init(path: String, _ problem: String) {
        description = "state.path \"\(path)\" \(problem)"
    }

    /// Translates SQLite's result code at open/migration time into advice.
    init(opening path: String, _ error: any Error) {
        guard let error = error as? DatabaseError else {
            self.init(path: path, "could not be opened: \(error)")
            return
        }
        let sqlite = error.message ?? "\(error.resultCode)"
        switch error.resultCode {
        case .SQLITE_NOTADB, .SQLITE_CORRUPT:
            self.init(
                path: path,
                "is not an SQLite database or is damaged (\(sqlite)); move it away (mdegate then starts with an "
                    + "empty queue and ledger) or set state.path to another file")
        case .SQLITE_CANTOPEN:
            self.init(
                path: path,
                "cannot be opened (\(sqlite)); check that it is a file in a directory the mdegate user can "
                    + "write, or set state.path elsewhere")
        case .SQLITE_READONLY, .SQLITE_PERM, .SQLITE_AUTH:
            self.init(
                path: path,
                "is not writable (\(sqlite)); give the mdegate user write access to the file, its -wal and "
                    + "-shm companions and their directory")
        case .SQLITE_BUSY, .SQLITE_LOCKED:
            self.init(
                path: path, "is locked by another process (\(sqlite)); is another mdegate running with this state.path?")
        case .SQLITE_FULL:
            self.init(path: path, "cannot grow: the disk is full (\(sqlite)); free some space")
        default:
            self.init(path: path, "could not be opened: \(sqlite) (\(error.resultCode))")
        }
    }
}
