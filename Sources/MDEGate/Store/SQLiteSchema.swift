import Foundation
import GRDB
import MDEGateCore

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
    static func write(_ changes: [StoreChange], to db: Database) throws {
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

    static func read(_ db: Database, attemptsSince since: Int64, path: String) throws -> StoredState {
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

